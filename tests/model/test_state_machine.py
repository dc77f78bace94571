"""Model-based test: random mmap/munmap/mprotect/madvise/write/read/fork/
vmsplice/pin/move_pages sequences on the engine (kernel 6.18) and on a small pure-Python
reference model, compared after every step, with Machine.check() each time.

The model states modern anonymous-memory semantics at page granularity,
without page tables or refcount arithmetic:
  * a page is an object mapped by some processes, with `exclusive` (PAE),
    `gets` (FOLL_GET refs: pipes) and `pins`;
  * a write reuses the page if it is exclusive or nobody else holds it,
    otherwise copies (do_wp_page, 5.19+);
  * fork shares pages and clears exclusivity, except a pinned exclusive page
    of a process that has pinned, which the child gets a copy of;
  * a R/O long-term pin unshares a non-exclusive page (reuse or copy) and
    replaces the zero page by a private copy (6.2);
  * reads of untouched memory map the shared zero page;
  * ksm_scan (ksmd) may only merge pages whose contents are equal, never a
    pinned one; a KSM page is never reused by a write or an unshare (always
    copied), and MADV_UNMERGEABLE gives each mapping its own copy. What the
    scan merged is read back from the engine and checked against that;
  * fork copies the page tables of a VMA only if it has an anon_vma, which
    the first fault that puts an anon page in the VMA creates
    (vma_needs_copy); a VMA is a maximal run of contiguous pages with equal
    attributes, as Linux (and the engine) merge them;
  * a guard (MADV_GUARD_INSTALL, 6.13) drops the page and faults SIGSEGV,
    GUP included; DONTNEED and mprotect keep it, fork copies it (the install
    gave the VMA an anon_vma) unless the VMA is wiped on fork, munmap and
    MADV_GUARD_REMOVE clear it;
  * the machine has two NUMA nodes and every new page lands on node 0;
    move_pages(2) moves a page mapped once (or, with MPOL_MF_MOVE_ALL, a
    shared one) unless a pipe or a pin holds it, keeping its data, sharing
    and exclusivity; a batch with a page that stayed ends the call, which
    returns the count not migrated (do_pages_move).
"""
import errno
import itertools

import hypothesis.strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import mmemu
from mmemu import (FOLL_LONGTERM, FOLL_WRITE, MPOL_MF_MOVE, MPOL_MF_MOVE_ALL, MADV_DONTFORK, MADV_DONTNEED,
                   MADV_DOFORK, MADV_GUARD_INSTALL, MADV_GUARD_REMOVE, MADV_KEEPONFORK, MADV_MERGEABLE,
                   MADV_UNMERGEABLE, MADV_WIPEONFORK, MAP_ANONYMOUS, MAP_PRIVATE,
                   PAGE_SIZE as PAGE, PROT_NONE, PROT_READ, PROT_WRITE)

RW = PROT_READ | PROT_WRITE
PROTS = [RW, PROT_READ, PROT_NONE]
ZERO = "zero-page"


class Segv(Exception):
    pass


class Obj:
    """One physical page of the model."""

    def __init__(self, data=None):
        self.data = bytearray(data if data is not None else bytes(PAGE))
        self.exclusive = True
        self.mapcount = 1
        self.gets = 0
        self.pins = 0
        self.node = 0
        self.ksm = False

    def sole_user(self):
        return self.mapcount == 1 and self.gets == 0 and self.pins == 0 and not self.ksm


class MProc:
    def __init__(self, eng):
        self.eng = eng          # the engine's Process
        self.vmas = {}          # vpn -> {"prot", "dontfork", "wipe"}
        self.pages = {}         # vpn -> ZERO | Obj
        self.guards = set()     # vpns holding a guard marker
        self.has_pinned = False

    # -- faults --
    def fault_read(self, vpn):
        vma = self.vmas.get(vpn)
        if vma is None or vma["prot"] == PROT_NONE or vpn in self.guards:
            raise Segv()
        if vpn not in self.pages:
            self.pages[vpn] = ZERO
        return self.pages[vpn]

    def runs(self):
        """The VMAs: maximal runs of contiguous vpns with equal attributes
        and compatible anon_vmas (is_mergeable_anon_vma: two different ones
        never merge; none merges with one whose chain is singular, i.e. not
        inherited through fork)."""
        runs, run, prev = [], [], None
        for vpn in sorted(self.vmas):
            v = self.vmas[vpn]
            key = (v["prot"], v["dontfork"], v["wipe"], v["mergeable"])
            if prev is not None and vpn == prev[0] + 1 and key == prev[1] \
                    and _anon_mergeable(self.vmas[prev[0]], v):
                run.append(vpn)
            else:
                if run:
                    runs.append(run)
                run = [vpn]
            prev = (vpn, key)
        if run:
            runs.append(run)
        return runs

    def normalize(self):
        # A merged VMA keeps the anon_vma one of its parts had.
        for run in self.runs():
            owner = next((self.vmas[v] for v in run if self.vmas[v]["anon_vma"]), None)
            if owner is not None:
                for v in run:
                    self.vmas[v].update(anon_vma=owner["anon_vma"], single=owner["single"])

    def mark_anon_vma(self, vpn):
        """anon_vma_prepare(): find_mergeable_anon_vma() takes the next VMA's,
        then the previous one's, if compatible (the same flags but for the
        access bits) and not inherited through fork; else a new one."""
        runs = self.runs()
        k = next(k for k, run in enumerate(runs) if vpn in run)
        run = runs[k]
        if self.vmas[run[0]]["anon_vma"]:
            return
        anon = None
        for j, touches in ((k + 1, lambda r: r[0] == run[-1] + 1), (k - 1, lambda r: r[-1] == run[0] - 1)):
            if 0 <= j < len(runs) and touches(runs[j]):
                w = self.vmas[runs[j][0]]
                mine = self.vmas[run[0]]
                if w["anon_vma"] and w["single"] and all(w[k] == mine[k] for k in ("dontfork", "wipe", "mergeable")):
                    anon = w["anon_vma"]
                    break
        anon = anon or next(_ANON_IDS)
        for v in run:
            self.vmas[v].update(anon_vma=anon, single=True)

    def make_exclusive(self, vpn):
        """Write fault semantics: the page this vpn maps, exclusive."""
        page = self.pages.get(vpn)
        if page is None or page is ZERO:
            page = Obj()
            self.mark_anon_vma(vpn)
        elif not page.exclusive:
            if page.sole_user():
                page.exclusive = True
            else:
                page.mapcount -= 1
                page = Obj(page.data)
                self.mark_anon_vma(vpn)
        self.pages[vpn] = page
        return page

    def fault_write(self, vpn):
        vma = self.vmas.get(vpn)
        if vma is None or not vma["prot"] & PROT_WRITE or vpn in self.guards:
            raise Segv()
        return self.make_exclusive(vpn)

    def drop(self, vpn):
        page = self.pages.pop(vpn, None)
        if isinstance(page, Obj):
            page.mapcount -= 1


_ANON_IDS = itertools.count(1)


def _anon_mergeable(a, b):
    x, y = a["anon_vma"], b["anon_vma"]
    if x and y:
        return x == y
    if x or y:
        return (a if x else b)["single"]
    return True


def _chunks(addr, n):
    while n > 0:
        off = addr % PAGE
        k = min(n, PAGE - off)
        yield addr // PAGE, off, k
        addr += k
        n -= k


class EngineVsModel(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.m = mmemu.Machine(kernel="6.18", memory=16 << 20, nodes=2)
        self.procs = [MProc(self.m.spawn())]
        self.regions = []       # (addr, npages), shared by all processes
        self.pipes = []         # (engine Pipe, [(obj or ZERO, off, len)])
        self.pins = []          # (engine Pin, obj, writable)

    # ---- helpers ----
    def proc(self, i):
        return self.procs[i % len(self.procs)]

    def span(self, r, first, count):
        addr, npages = self.regions[r % len(self.regions)]
        first %= npages
        count = 1 + count % (npages - first)
        return addr + first * PAGE, count

    def expect(self, engine_call, model_call, project=lambda got: got):
        """Run both; they must agree on success (project(engine result) ==
        model result) or on the error."""
        try:
            got = engine_call()
            eng_err = None
        except mmemu.Sigsegv:
            got, eng_err = None, "SIGSEGV"
        except OSError as e:
            got, eng_err = None, e.errno
        try:
            want = model_call()
            mod_err = None
        except Segv:
            want, mod_err = None, "SIGSEGV"
        except OSError as e:
            want, mod_err = None, e.errno
        assert eng_err == mod_err, f"engine: {eng_err}, model: {mod_err}"
        if eng_err is None:
            assert project(got) == want, "engine and model returned different values"
        return got

    # ---- rules ----
    @precondition(lambda self: len(self.regions) < 6)
    @rule(npages=st.integers(1, 4), prot=st.sampled_from(PROTS))
    def mmap(self, npages, prot):
        p = self.procs[0]
        addr = p.eng.mmap(0, npages * PAGE, prot, MAP_PRIVATE | MAP_ANONYMOUS)
        for vpn in range(addr // PAGE, addr // PAGE + npages):
            assert vpn not in p.vmas
            p.vmas[vpn] = {"prot": prot, "dontfork": False, "wipe": False, "anon_vma": 0, "single": True,
                           "mergeable": False}
        self.regions.append((addr, npages))

    @precondition(lambda self: self.regions)
    @rule(i=st.integers(0, 7), r=st.integers(0, 7), first=st.integers(0, 3), count=st.integers(0, 3))
    def munmap(self, i, r, first, count):
        p = self.proc(i)
        addr, n = self.span(r, first, count)

        def model():
            for vpn in range(addr // PAGE, addr // PAGE + n):
                p.drop(vpn)
                p.vmas.pop(vpn, None)
                p.guards.discard(vpn)
        self.expect(lambda: p.eng.munmap(addr, n * PAGE), model)

    @precondition(lambda self: self.regions)
    @rule(i=st.integers(0, 7), r=st.integers(0, 7), first=st.integers(0, 3), count=st.integers(0, 3),
          prot=st.sampled_from(PROTS))
    def mprotect(self, i, r, first, count, prot):
        p = self.proc(i)
        addr, n = self.span(r, first, count)

        def model():
            # Applied up to the first hole, which is ENOMEM (do_mprotect_pkey).
            for vpn in range(addr // PAGE, addr // PAGE + n):
                if vpn not in p.vmas:
                    raise OSError(errno.ENOMEM, "hole")
                p.vmas[vpn]["prot"] = prot
        self.expect(lambda: p.eng.mprotect(addr, n * PAGE, prot), model)

    @precondition(lambda self: self.regions)
    @rule(i=st.integers(0, 7), r=st.integers(0, 7), first=st.integers(0, 3), count=st.integers(0, 3),
          advice=st.sampled_from([MADV_DONTNEED, MADV_DONTFORK, MADV_DOFORK, MADV_WIPEONFORK,
                                  MADV_KEEPONFORK, MADV_GUARD_INSTALL, MADV_GUARD_REMOVE, MADV_MERGEABLE,
                                  MADV_UNMERGEABLE]))
    def madvise(self, i, r, first, count, advice):
        p = self.proc(i)
        addr, n = self.span(r, first, count)

        def model():
            hole = False
            for vpn in range(addr // PAGE, addr // PAGE + n):
                vma = p.vmas.get(vpn)
                if vma is None:
                    hole = True
                    continue
                if advice == MADV_DONTNEED:
                    p.drop(vpn)
                elif advice == MADV_GUARD_INSTALL:
                    p.drop(vpn)
                    p.guards.add(vpn)
                    p.mark_anon_vma(vpn)
                elif advice == MADV_GUARD_REMOVE:
                    p.guards.discard(vpn)
                elif advice in (MADV_DONTFORK, MADV_DOFORK):
                    vma["dontfork"] = advice == MADV_DONTFORK
                elif advice == MADV_UNMERGEABLE:
                    page = p.pages.get(vpn)
                    if vma["mergeable"] and isinstance(page, Obj) and page.ksm:
                        page.mapcount -= 1              # break_ksm(): an unshared copy
                        p.pages[vpn] = Obj(page.data)
                    vma["mergeable"] = False
                elif advice == MADV_MERGEABLE:
                    vma["mergeable"] = True
                else:
                    vma["wipe"] = advice == MADV_WIPEONFORK
            if hole:
                raise OSError(errno.ENOMEM, "hole")
        self.expect(lambda: p.eng.madvise(addr, n * PAGE, advice), model)

    @precondition(lambda self: self.regions)
    @rule(i=st.integers(0, 7), r=st.integers(0, 7), first=st.integers(0, 3),
          off=st.integers(0, PAGE - 1), length=st.integers(1, PAGE + 64), value=st.integers(1, 255))
    def write(self, i, r, first, off, length, value):
        p = self.proc(i)
        addr, _ = self.span(r, first, 0)
        addr += off
        data = bytes([value]) * length

        def model():
            done = 0
            for vpn, o, k in _chunks(addr, length):
                page = p.fault_write(vpn)
                page.data[o:o + k] = data[done:done + k]
                done += k
        self.expect(lambda: p.eng.write(addr, data), model)

    @precondition(lambda self: self.regions)
    @rule(i=st.integers(0, 7), r=st.integers(0, 7), first=st.integers(0, 3),
          off=st.integers(0, PAGE - 1), length=st.integers(1, PAGE + 64))
    def read(self, i, r, first, off, length):
        p = self.proc(i)
        addr, _ = self.span(r, first, 0)
        addr += off

        def model():
            out = []
            for vpn, o, k in _chunks(addr, length):
                page = p.fault_read(vpn)
                out.append(bytes(k) if page is ZERO else bytes(page.data[o:o + k]))
            return b"".join(out)
        self.expect(lambda: p.eng.read(addr, length), model)

    @precondition(lambda self: self.regions)
    @rule(pages=st.sampled_from([None, 1, 5]))
    def ksm_scan(self, pages):
        """ksmd: read back which mappings now share a frame and check that
        only equal contents merged and that no pinned page lost its mapping."""
        self.m.ksm_scan(pages)
        groups = {}
        for p in self.procs:
            for vpn, page in p.pages.items():
                if isinstance(page, Obj):
                    groups.setdefault(p.eng.pagemap(vpn * PAGE).pfn, []).append((p, vpn, page))
        eng = self.m._engine
        for pfn, group in groups.items():
            objs = {id(o): o for _, _, o in group}
            ksm = "ksm" in eng.frame_info(pfn)[2]
            data = bytes(group[0][2].data)
            assert all(bytes(o.data) == data for o in objs.values()), "KSM merged different contents"
            if len(objs) == 1 and len(group) == group[0][2].mapcount:
                obj = group[0][2]
                obj.ksm = ksm
                obj.exclusive = obj.exclusive and not ksm
                continue
            assert not any(o.pins for o in objs.values()), "a pinned page lost a mapping to KSM"
            new = Obj(data)
            new.mapcount, new.ksm, new.exclusive = len(group), ksm, not ksm and len(group) == 1
            for p, vpn, o in group:
                o.mapcount -= 1
                p.pages[vpn] = new

    @precondition(lambda self: len(self.procs) < 4)
    @rule(i=st.integers(0, 7))
    def fork(self, i):
        p = self.proc(i)
        child = MProc(p.eng.fork())
        # anon_vma_fork(): each child VMA gets an anon_vma of its own, chained
        # to the parent's (so not singular); a wiped VMA gets none.
        child_anon = {}
        for run in p.runs():
            v = p.vmas[run[0]]
            fresh = next(_ANON_IDS) if v["anon_vma"] and not v["wipe"] else 0
            child_anon.update((vpn, fresh) for vpn in run)
        for vpn, vma in p.vmas.items():
            if vma["dontfork"]:
                continue
            child.vmas[vpn] = dict(vma, anon_vma=child_anon[vpn], single=not child_anon[vpn])
            if vpn in p.guards and vma["anon_vma"] and not vma["wipe"]:
                child.guards.add(vpn)
            page = p.pages.get(vpn)
            if vma["wipe"] or page is None or not vma["anon_vma"]:
                continue
            if page is ZERO:
                child.pages[vpn] = ZERO
            elif page.exclusive and page.pins and p.has_pinned:
                child.pages[vpn] = Obj(page.data)        # early COW (copy_present_page)
            else:
                page.mapcount += 1
                page.exclusive = False
                child.pages[vpn] = page
        self.procs.append(child)

    @precondition(lambda self: len(self.procs) > 1)
    @rule(i=st.integers(1, 7))
    def exit(self, i):
        p = self.procs.pop(1 + i % (len(self.procs) - 1))
        p.eng.exit()
        for vpn in list(p.pages):
            p.drop(vpn)

    @precondition(lambda self: self.regions and len(self.pipes) < 4)
    @rule(i=st.integers(0, 7), r=st.integers(0, 7), first=st.integers(0, 3), count=st.integers(0, 3))
    def vmsplice(self, i, r, first, count):
        p = self.proc(i)
        addr, n = self.span(r, first, count)
        held = []

        def model():
            for vpn in range(addr // PAGE, addr // PAGE + n):
                vma = p.vmas.get(vpn)
                if vma is None or not vma["prot"] & PROT_READ or vpn in p.guards:
                    break                    # GUP stops: check_vma_flags / no VMA / a guard
                page = p.fault_read(vpn)
                if isinstance(page, Obj):
                    page.gets += 1
                held.append(page)
            if not held:
                raise OSError(errno.EFAULT, "vmsplice")
            return len(held) * PAGE

        pipe = self.expect(lambda: p.eng.vmsplice(addr, n * PAGE), model, lambda pp: pp.nbytes)
        if pipe is not None:
            self.pipes.append((pipe, held))

    @precondition(lambda self: self.pipes)
    @rule(k=st.integers(0, 7))
    def pipe_read(self, k):
        pipe, held = self.pipes.pop(k % len(self.pipes))
        got = pipe.read(len(held) * PAGE)
        want = b"".join(bytes(PAGE) if pg is ZERO else bytes(pg.data) for pg in held)
        assert got == want, "the pipe read different bytes than the model"
        for pg in held:
            if isinstance(pg, Obj):
                pg.gets -= 1

    @precondition(lambda self: self.regions and len(self.pins) < 4)
    @rule(i=st.integers(0, 7), r=st.integers(0, 7), first=st.integers(0, 3), writable=st.booleans())
    def pin(self, i, r, first, writable):
        p = self.proc(i)
        addr, _ = self.span(r, first, 0)
        vpn = addr // PAGE
        flags = FOLL_LONGTERM | (FOLL_WRITE if writable else 0)
        result = {}

        def model():
            vma = p.vmas.get(vpn)
            need = PROT_WRITE if writable else PROT_READ
            if vma is None or not vma["prot"] & need or vpn in p.guards:
                raise OSError(errno.EFAULT, "pin")
            # Write pins fault for write; R/O long-term pins unshare anything
            # not exclusive, the zero page included (5.19 / 6.2).
            page = p.make_exclusive(vpn)
            page.pins += 1
            p.has_pinned = True
            result["obj"] = page
            return 1

        pin = self.expect(lambda: p.eng.pin_user_pages(addr, 1, flags), model, lambda pn: pn.npages)
        if pin is not None:
            assert pin.npages == 1
            self.pins.append((pin, result["obj"], writable))

    @precondition(lambda self: self.pins)
    @rule(k=st.integers(0, 7))
    def unpin(self, k):
        pin, obj, _ = self.pins.pop(k % len(self.pins))
        pin.release()
        obj.pins -= 1

    @precondition(lambda self: any(w for _, _, w in self.pins))
    @rule(k=st.integers(0, 7), off=st.integers(0, PAGE - 16), value=st.integers(1, 255))
    def device_write(self, k, off, value):
        writable = [x for x in self.pins if x[2]]
        pin, obj, _ = writable[k % len(writable)]
        pin.write(off, bytes([value]) * 16)
        obj.data[off:off + 16] = bytes([value]) * 16

    @precondition(lambda self: self.regions)
    @rule(i=st.integers(0, 7), r=st.integers(0, 7), first=st.integers(0, 3), count=st.integers(0, 3),
          node=st.integers(0, 1), move_all=st.booleans())
    def move_pages(self, i, r, first, count, node, move_all):
        p = self.proc(i)
        addr, n = self.span(r, first, count)
        vpns = range(addr // PAGE, addr // PAGE + n)

        def model():
            status, queue = [-errno.EAGAIN] * n, []

            def flush(i):
                stuck = 0
                for k, obj in queue:
                    if obj.gets or obj.pins:
                        stuck += 1
                    else:
                        obj.node = node
                        status[k] = node
                queue.clear()
                return stuck + (n - i) if stuck else 0

            for k, vpn in enumerate(vpns):
                page = p.pages.get(vpn)
                if vpn not in p.vmas or page is ZERO:
                    st_ = -errno.EFAULT
                elif page is None:
                    st_ = -errno.ENOENT
                elif page.node == node:
                    st_ = 0
                elif page.mapcount > 1 and not move_all:
                    st_ = -errno.EACCES
                else:
                    queue.append((k, page))
                    continue
                status[k] = st_ if st_ else node
                err = flush(k)
                if err:
                    return status, err - 1
            return status, flush(n)

        flags = MPOL_MF_MOVE_ALL if move_all else MPOL_MF_MOVE
        self.expect(lambda: p.eng.move_pages([v * PAGE for v in vpns], [node] * n, flags), model,
                    lambda got: (list(got), got.not_migrated))

    # ---- comparison after every step ----
    @invariant()
    def same_state(self):
        for p in self.procs:
            p.normalize()
        self.m.check()
        eng = self.m._engine
        identity = {}
        for p in self.procs:
            for vpn in sorted(p.vmas):
                e = p.eng.pagemap(vpn * PAGE)
                page = p.pages.get(vpn)
                assert e.present == (page is not None), f"presence differs at {vpn * PAGE:#x}"
                assert e.guard == (vpn in p.guards), f"guard marker differs at {vpn * PAGE:#x}"
                if page is None:
                    continue
                if page is ZERO:
                    assert e.pfn == 0 and not e.exclusive, "expected the zero page"
                    continue
                assert e.exclusive == (page.mapcount == 1), f"exclusive bit differs at {vpn * PAGE:#x}"
                assert self.m.node_of(e.pfn) == page.node, f"node differs at {vpn * PAGE:#x}"
                assert eng.frame_read(e.pfn, 0, PAGE) == bytes(page.data), "contents differ"
                assert identity.setdefault(e.pfn, id(page)) == id(page), "frame sharing differs"
        assert len(set(identity.values())) == len(identity), "one model page on two frames"
        for pin, obj, _ in self.pins:
            assert pin.read(0, PAGE) == bytes(obj.data), "pinned page contents differ"

    def teardown(self):
        for pipe, _ in self.pipes:
            pipe.close()
        for pin, _, _ in self.pins:
            pin.release()
        self.m.check()


TestEngineVsModel = EngineVsModel.TestCase
