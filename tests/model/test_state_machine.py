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
    copied), and MADV_UNMERGEABLE gives each mapping its own copy; KSM
    migrates nothing (the merged frame is one of the merged pages', on its
    node). What the scan merged is read back from the engine and checked
    against that; ksm_candidates fills pages of a mergeable region with one
    of two patterns and scans twice so that merges happen, and ksm_break
    writes to or unmerges a page the model knows is KSM;
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

ThpEngineVsModel runs the same rules on a machine with THP (enabled=madvise)
over 2 MiB-aligned regions, most given MADV_HUGEPAGE, and states (6.18):
  * a fault on an empty pmd of a block that lies whole in a VM_HUGEPAGE VMA
    maps a PMD THP (a write) or the huge zero page (a read); anywhere else,
    or once a pte table is there, faults map small pages. A pte table goes
    only with a munmap of its whole 2 MiB; a zap of a whole leaf empties
    the pmd; fork gives the child a table where the parent has one under
    a VMA it copies;
  * a THP's 512 pages are one naturally aligned block of frames, page i on
    frame head + i (kpageflags THP), whether PMD- or pte-mapped; PMD
    mappings show in every page's kpagecount; the folio's refcount is its
    mappings plus pipes' references plus GUP_PIN_COUNTING_BIAS per pin;
    the huge zero page reads as zeros, PM_FILE, never exclusive; rss_anon
    counts the anon pages each process maps;
  * PM_MMAP_EXCLUSIVE of a PMD-mapped page is its head page's (6.15+);
  * a leaf is split (its pages stay one folio, keep data, sharing and
    exclusivity) by an operation that covers it in part: munmap, DONTNEED,
    guard install, and any change of VMA attributes (mprotect, DONTFORK,
    WIPEONFORK, MERGEABLE, ...) that leaves a VMA boundary inside it;
  * fork shares a PMD leaf (not exclusive in either); a pinned exclusive
    THP of a process that has pinned is split and copied page by page;
  * a write to a shared PMD leaf reuses it only if nothing else references
    the folio, else splits it and copies the one page; a pte-mapped page of
    a large folio is reused only if all the folio's references are more
    than one mapping, all in this mm (6.15); a write to the huge zero page
    maps a fresh THP (6.13), a R/O pin splits it and unshares one page;
  * MADV_COLD splits a folio it covers in part that only this mm maps and
    nothing else references; its all-zero pages then map the zero page (6.12);
  * MADV_COLLAPSE of a block makes a fresh exclusive THP holding a copy
    (EINVAL with no page table or over a guard, EAGAIN over a page a pipe
    or a pin holds); KSM splits a THP (as split_folio above, only one
    that one mm maps and nothing else references) before merging its page.
"""
import errno
import itertools

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import mmemu
from mmemu.process import pagemap_decode
from mmemu import (FOLL_LONGTERM, FOLL_WRITE, MPOL_MF_MOVE, MPOL_MF_MOVE_ALL, MADV_COLD, MADV_COLLAPSE,
                   MADV_DONTFORK, MADV_DONTNEED, MADV_HUGEPAGE,
                   MADV_DOFORK, MADV_GUARD_INSTALL, MADV_GUARD_REMOVE, MADV_KEEPONFORK, MADV_MERGEABLE,
                   MADV_UNMERGEABLE, MADV_WIPEONFORK, MAP_ANONYMOUS, MAP_PRIVATE,
                   PAGE_SIZE as PAGE, PMD_SIZE, PROT_NONE, PROT_READ, PROT_WRITE)

RW = PROT_READ | PROT_WRITE
PROTS = [RW, PROT_READ, PROT_NONE]
ZERO = "zero-page"
HZERO = "huge-zero-page"        # a page of the huge zero folio, mapped by a PMD
NR = PMD_SIZE // PAGE           # pages per THP (HPAGE_PMD_NR)
PIN_BIAS = 1024                 # GUP_PIN_COUNTING_BIAS


ADVICE = [MADV_DONTNEED, MADV_DONTFORK, MADV_DOFORK, MADV_WIPEONFORK, MADV_KEEPONFORK, MADV_GUARD_INSTALL,
          MADV_GUARD_REMOVE, MADV_MERGEABLE, MADV_UNMERGEABLE]


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
        self.folio = None       # the Folio (THP) this page belongs to, or None: a small page
        self.index = 0          # its index in that folio

    def sole_user(self):
        return self.mapcount == 1 and self.gets == 0 and self.pins == 0 and not self.ksm

    def pinned(self):
        """folio_maybe_dma_pinned(): a pin on any page pins the folio."""
        return self.folio.pins() > 0 if self.folio else self.pins > 0


class Folio:
    """An order-9 anon folio (a THP): 512 pages of contiguous, aligned
    frames, one folio until split_folio. Each page's `mapcount` counts every
    mapping of it (a PMD mapping maps all 512); `pmd_maps` counts the PMD
    mappings."""

    def __init__(self, datas=None):
        self.pages = []
        for i in range(NR):
            pg = Obj(datas[i] if datas else None)
            pg.folio, pg.index, pg.mapcount = self, i, 0
            self.pages.append(pg)
        self.pmd_maps = 0

    def mappings(self):
        """folio_large_mapcount(): PMD mappings count once, ptes each."""
        return sum(pg.mapcount for pg in self.pages) - self.pmd_maps * (NR - 1)

    def pins(self):
        return sum(pg.pins for pg in self.pages)

    def refs(self):
        """The folio's refcount as the reuse tests see it: its mappings,
        pipes' references and pins (GUP_PIN_COUNTING_BIAS each)."""
        return self.mappings() + sum(pg.gets for pg in self.pages) + PIN_BIAS * self.pins()

    def split(self):
        """split_folio(): every page a small folio of its own."""
        for pg in self.pages:
            pg.folio = None


class MProc:
    def __init__(self, eng):
        self.eng = eng          # the engine's Process
        self.vmas = {}          # vpn -> {"prot", "dontfork", "wipe", "mergeable", "huge", "anon_vma", "single"}
        self.pages = {}         # vpn -> ZERO | HZERO | Obj
        self.guards = set()     # vpns holding a guard marker
        self.has_pinned = False
        self.pmd = {}           # block (vpn // NR) -> "thp" | "hzero": a PMD leaf maps it
        self.tables = set()     # blocks whose pmd holds a pte table

    # -- THP: which 2 MiB blocks a fault may map with a PMD --
    def eligible(self, vpn):
        """thp_vma_allowable_order(): VM_HUGEPAGE (enabled=madvise) and the
        aligned 2 MiB around vpn inside one VMA."""
        vma = self.vmas.get(vpn)
        if vma is None or not vma["huge"]:
            return False
        first = vpn - vpn % NR
        run = next(r for r in self.runs() if vpn in r)
        return run[0] <= first and first + NR - 1 <= run[-1]

    def split_pmd(self, block):
        """__split_huge_pmd: the leaf becomes a pte table mapping the same
        pages (the huge zero page: small zero pages); the pages keep their
        data, sharing and exclusivity, and stay one folio."""
        kind = self.pmd.pop(block, None)
        if kind is None:
            return
        self.tables.add(block)
        if kind == "hzero":
            for v in range(block * NR, block * NR + NR):
                self.pages[v] = ZERO
        else:
            self.pages[block * NR].folio.pmd_maps -= 1

    def split_straddling(self):
        """vma_adjust_trans_huge(): a PMD leaf never straddles a VMA boundary."""
        for block in list(self.pmd):
            run = next(r for r in self.runs() if block * NR in r)
            if run[-1] < block * NR + NR - 1:
                self.split_pmd(block)

    def map_new_thp(self, block, datas=None):
        """A fresh THP, PMD-mapped, exclusive (do_huge_pmd_anonymous_page)."""
        folio = Folio(datas)
        folio.pmd_maps = 1
        self.mark_anon_vma(block * NR)
        for pg in folio.pages:
            pg.mapcount = 1
            self.pages[block * NR + pg.index] = pg
        self.pmd[block] = "thp"
        self.tables.discard(block)
        return folio

    def zap(self, vpns):
        """zap_page_range over a sorted vpn range: a leaf covered whole goes
        and its pmd is empty again (a later fault may map a THP there); one
        covered in part is split first."""
        vpns = list(vpns)
        span = set(vpns)
        for block in {v // NR for v in vpns}:
            if block in self.pmd:
                if all(v in span for v in range(block * NR, block * NR + NR)):
                    if self.pmd.pop(block) == "thp":
                        self.pages[block * NR].folio.pmd_maps -= 1
                else:
                    self.split_pmd(block)
        for v in vpns:
            self.drop(v)

    # -- faults --
    def fault_read(self, vpn):
        vma = self.vmas.get(vpn)
        if vma is None or vma["prot"] == PROT_NONE or vpn in self.guards:
            raise Segv()
        if vpn not in self.pages:
            block = vpn // NR
            if block not in self.tables and self.eligible(vpn):
                # use_zero_page: a read maps the huge zero page (and prepares the anon_vma).
                self.mark_anon_vma(vpn)
                self.pmd[block] = "hzero"
                for v in range(block * NR, block * NR + NR):
                    self.pages[v] = HZERO
            else:
                self.tables.add(block)
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
            key = (v["prot"], v["dontfork"], v["wipe"], v["mergeable"], v["huge"])
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
                if w["anon_vma"] and w["single"] and all(w[k] == mine[k] for k in
                                                         ("dontfork", "wipe", "mergeable", "huge")):
                    anon = w["anon_vma"]
                    break
        anon = anon or next(_ANON_IDS)
        for v in run:
            self.vmas[v].update(anon_vma=anon, single=True)

    def maps_of(self, folio):
        """How many of this mm's entries map the folio (a PMD counts once)."""
        n = sum(1 for b, kind in self.pmd.items() if kind == "thp" and self.pages[b * NR].folio is folio)
        return n + sum(1 for v, pg in self.pages.items()
                       if isinstance(pg, Obj) and pg.folio is folio and v // NR not in self.pmd)

    def can_reuse_large(self, page):
        """wp_can_reuse_anon_folio for a pte-mapped page of a large folio
        (1da190f4d0a6, 6.15): every reference is a mapping, there is more
        than one, none is a PMD or maps a page twice, and all are this mm's."""
        f = page.folio
        n = f.mappings()
        return n > 1 and f.refs() == n and f.pmd_maps == 0 and all(pg.mapcount <= 1 for pg in f.pages) \
            and self.maps_of(f) == n

    def make_exclusive(self, vpn, unshare=False):
        """Write fault semantics (unshare: a R/O long-term pin's
        FAULT_FLAG_UNSHARE): the page this vpn maps, exclusive."""
        page = self.pages.get(vpn)
        block = vpn // NR
        kind = self.pmd.get(block)
        if kind == "hzero":
            if not unshare:
                # do_huge_zero_wp_pmd (6.13): a whole fresh THP.
                self.pmd.pop(block)
                return self.map_new_thp(block).pages[vpn % NR]
            self.split_pmd(block)
            page = ZERO
        elif kind == "thp" and not page.exclusive:
            if page.folio.refs() == 1:
                # do_huge_pmd_wp_page: nothing but this PMD references it (5.18): reuse.
                for pg in page.folio.pages:
                    pg.exclusive = True
                return page
            self.split_pmd(block)           # then COW of the one page, on ptes
        if page is None and not unshare and block not in self.tables and self.eligible(vpn):
            return self.map_new_thp(block).pages[vpn % NR]
        if page is None or page is ZERO:
            self.tables.add(block)
            page = Obj()
            self.mark_anon_vma(vpn)
        elif not page.exclusive:
            if page.folio is None and page.sole_user() or page.folio is not None and self.can_reuse_large(page):
                page.exclusive = True
            else:
                page.mapcount -= 1
                page = Obj(page.data)
                self.mark_anon_vma(vpn)
        self.pages[vpn] = page
        return page

    def cold(self, start, end):
        """madvise_cold_or_pageout_pte_range (6.12): a large folio the range
        covers in part is split if this mm alone maps it and nothing else
        references it (split_folio); then its mapped pages that are all
        zeros map the shared zero page (b1f202060afe, 6.12)."""
        seen = set()
        for block in sorted({v // NR for v in range(start, end)}):
            window = range(block * NR, block * NR + NR)
            for v in window:
                pg = self.pages.get(v)
                if not isinstance(pg, Obj) or pg.folio is None or id(pg.folio) in seen:
                    continue
                f = pg.folio
                seen.add(id(f))
                mine = [w for w in window if isinstance(self.pages.get(w), Obj) and self.pages[w].folio is f]
                if not all(start <= w < end for w in mine) and self.can_split(f):
                    self.split_folio(f)

    def can_split(self, f):
        """split_folio_here's test: this mm alone maps the folio and nothing
        but its mappings references it (can_split_folio)."""
        n = f.mappings()
        return f.refs() == n and self.maps_of(f) == n

    def split_folio(self, f):
        """split_folio() of a folio only this mm maps: its PMD, if any, is
        split, each page becomes a small folio, and the mapped pages that
        are all zeros map the shared zero page (b1f202060afe, 6.12)."""
        block = next(v // NR for v, pg in self.pages.items() if isinstance(pg, Obj) and pg.folio is f)
        self.split_pmd(block)
        f.split()
        for w in range(block * NR, block * NR + NR):
            pg = self.pages.get(w)
            if isinstance(pg, Obj) and f.pages[pg.index] is pg and not any(pg.data):
                pg.mapcount -= 1
                self.pages[w] = ZERO

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


def pagemap_of(p):
    """vpn -> PagemapEntry for every vpn the model maps, one pagemap read per VMA."""
    out = {}
    for run in p.runs():
        raw = p.eng.pagemap_range(run[0] * PAGE, len(run))
        out.update(zip(run, map(pagemap_decode, raw.tolist())))
    return out


def _chunks(addr, n):
    while n > 0:
        off = addr % PAGE
        k = min(n, PAGE - off)
        yield addr // PAGE, off, k
        addr += k
        n -= k


class EngineVsModel(RuleBasedStateMachine):
    MAX_PROCS = 4

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
                           "mergeable": False, "huge": False}
        self.regions.append((addr, npages))

    @precondition(lambda self: self.regions)
    @rule(i=st.integers(0, 7), r=st.integers(0, 7), first=st.integers(0, 3), count=st.integers(0, 3))
    def munmap(self, i, r, first, count):
        p = self.proc(i)
        addr, n = self.span(r, first, count)

        def model():
            vpns = range(addr // PAGE, addr // PAGE + n)
            p.zap(vpns)
            for vpn in vpns:
                p.vmas.pop(vpn, None)
                p.guards.discard(vpn)
            # free_pgtables: a pte table whose whole 2 MiB was unmapped goes.
            for block in {v // NR for v in vpns}:
                if vpns[0] <= block * NR and block * NR + NR <= vpns[-1] + 1:
                    p.tables.discard(block)
        self.expect(lambda: p.eng.munmap(addr, n * PAGE), model)

    @precondition(lambda self: self.regions)
    @rule(i=st.integers(0, 7), r=st.integers(0, 7), first=st.integers(0, 3), count=st.integers(0, 3),
          prot=st.sampled_from(PROTS))
    def mprotect(self, i, r, first, count, prot):
        p = self.proc(i)
        addr, n = self.span(r, first, count)

        def model():
            # Applied up to the first hole, which is ENOMEM (do_mprotect_pkey).
            try:
                for vpn in range(addr // PAGE, addr // PAGE + n):
                    if vpn not in p.vmas:
                        raise OSError(errno.ENOMEM, "hole")
                    p.vmas[vpn]["prot"] = prot
            finally:
                p.split_straddling()
        self.expect(lambda: p.eng.mprotect(addr, n * PAGE, prot), model)

    @precondition(lambda self: self.regions)
    @rule(i=st.integers(0, 7), r=st.integers(0, 7), first=st.integers(0, 3), count=st.integers(0, 3),
          advice=st.sampled_from(ADVICE))
    def madvise(self, i, r, first, count, advice):
        self.do_madvise(i, r, first, count, advice)

    def do_madvise(self, i, r, first, count, advice):
        addr, n = self.span(r, first, count)
        self.madvise_range(self.proc(i), addr, n, advice)

    def madvise_range(self, p, addr, n, advice):
        def model():
            vpns = [v for v in range(addr // PAGE, addr // PAGE + n) if v in p.vmas]
            try:
                if advice in (MADV_DONTNEED, MADV_GUARD_INSTALL):
                    p.zap(vpns)
                for vpn in vpns:
                    vma = p.vmas[vpn]
                    if advice == MADV_GUARD_INSTALL:
                        p.guards.add(vpn)
                        p.tables.add(vpn // NR)
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
                    elif advice in (MADV_WIPEONFORK, MADV_KEEPONFORK):
                        vma["wipe"] = advice == MADV_WIPEONFORK
                if advice == MADV_COLD and vpns:
                    p.cold(vpns[0], vpns[-1] + 1)
            finally:
                p.split_straddling()
            if len(vpns) < n:
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
    @rule(i=st.integers(0, 7), r=st.integers(0, 7), value=st.sampled_from([0x5a, 0xa5]))
    def ksm_candidates(self, i, r, value):
        """MADV_MERGEABLE over a region, then its first two pages filled
        with one of two patterns, then two full scans: equal pages, in this
        process and in the others that fill the same way, merge."""
        self.do_madvise(i, r, 0, 3, MADV_MERGEABLE)
        for first in (0, 1):
            self.write(i, r, first, 0, PAGE, value)
        self.ksm_scan(None, 2)

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
                out.append(bytes(page.data[o:o + k]) if isinstance(page, Obj) else bytes(k))
            return b"".join(out)
        self.expect(lambda: p.eng.read(addr, length), model)

    @precondition(lambda self: self.regions)
    @rule(pages=st.sampled_from([None, 1, 5]), rounds=st.integers(1, 2))
    def ksm_scan(self, pages, rounds):
        """ksmd (two rounds of full scans merge pages that were equal over
        both): read back which mappings now share a frame and check that
        only equal contents merged and that no pinned page lost its mapping."""
        for _ in range(rounds):
            self.m.ksm_scan(pages)
        eng = self.m._engine
        # try_to_merge_one_page() splits a THP before merging a page of it
        # (split_huge_page): read back which folios KSM split; only one that
        # a single mm maps and nothing else references may be.
        for p in self.procs:
            entries = pagemap_of(p)
            for vpn, page in list(p.pages.items()):
                if isinstance(page, Obj) and page.folio is not None and eng.thp_info(entries[vpn].pfn)[0] < 0:
                    assert p.can_split(page.folio), "KSM split a THP that is shared or referenced"
                    p.split_folio(page.folio)
        groups = {}
        for p in self.procs:
            entries = pagemap_of(p)
            for vpn, page in p.pages.items():
                if isinstance(page, Obj):
                    groups.setdefault(entries[vpn].pfn, []).append((p, vpn, page))
        for pfn, group in groups.items():
            objs = {id(o): o for _, _, o in group}
            ksm = "ksm" in eng.frame_info(pfn)[2]
            data = bytes(group[0][2].data)
            assert all(bytes(o.data) == data for o in objs.values()), "KSM merged different contents"
            assert not (ksm or len(objs) > 1) or all(o.folio is None for o in objs.values()), \
                "KSM merged a page of a THP it did not split"
            if len(objs) == 1 and len(group) == group[0][2].mapcount:
                obj = group[0][2]
                obj.ksm = ksm
                obj.exclusive = obj.exclusive and not ksm
                continue
            assert not any(o.pins for o in objs.values()), "a pinned page lost a mapping to KSM"
            # KSM migrates nothing: the frame kept is one of the merged pages'.
            # A page a pipe holds (gets) may be the one kept - write_protect_page
            # counts references only for a writable, dirty or exclusive pte -
            # and its references stay with the KSM page: that page's object
            # goes on (a fresh one would lose them, and a later collapse would
            # expect no EAGAIN).
            f = self.m.frame(pfn)
            extra = f.refcount - f.kpagecount
            kept = [o for o in objs.values() if o.gets and o.gets == extra]
            new = kept[0] if kept else Obj(data)
            if not kept:
                new.node = self.m.node_of(pfn)
                assert new.node in {o.node for o in objs.values()}, "KSM merged onto a frame of another node"
            for p, vpn, o in group:
                if o is not new:
                    o.mapcount -= 1
                p.pages[vpn] = new
            new.mapcount, new.ksm, new.exclusive = len(group), ksm, not ksm and len(group) == 1

    @precondition(lambda self: any(isinstance(pg, Obj) and pg.ksm for p in self.procs for pg in p.pages.values()))
    @rule(k=st.integers(0, 63), unmerge=st.booleans())
    def ksm_break(self, k, unmerge):
        """A write to a KSM page (always a copy) or MADV_UNMERGEABLE of it."""
        ksm = [(p, v) for p in self.procs for v, pg in sorted(p.pages.items()) if isinstance(pg, Obj) and pg.ksm]
        p, vpn = ksm[k % len(ksm)]
        if unmerge:
            self.madvise_range(p, vpn * PAGE, 1, MADV_UNMERGEABLE)
            return

        def model():
            p.fault_write(vpn).data[:8] = b"\x01" * 8
        self.expect(lambda: p.eng.write(vpn * PAGE, b"\x01" * 8), model)

    @precondition(lambda self: len(self.procs) < self.MAX_PROCS)
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
        copied = {vpn for vpn, vma in p.vmas.items()
                  if not vma["dontfork"] and vma["anon_vma"] and not vma["wipe"]}
        # copy_huge_pmd: the child shares a PMD leaf, write-protected in both;
        # a maybe-pinned exclusive THP of a process that has pinned is split
        # in the parent instead and its pages copied below (5.9).
        for block, kind in list(p.pmd.items()):
            if block * NR not in copied:
                continue
            folio = p.pages[block * NR].folio if kind == "thp" else None
            if folio is not None and p.has_pinned and folio.pins() and folio.pages[0].exclusive:
                p.split_pmd(block)
                continue
            child.pmd[block] = kind
            if folio is not None:
                folio.pmd_maps += 1
        # copy_pte_range: the child gets a pte table wherever the parent has
        # one under a VMA it copies.
        child.tables = {b for b in p.tables if any(v in copied for v in range(b * NR, b * NR + NR))}
        for vpn, vma in p.vmas.items():
            if vma["dontfork"]:
                continue
            child.vmas[vpn] = dict(vma, anon_vma=child_anon[vpn], single=not child_anon[vpn])
            if vpn in p.guards and vpn in copied:
                child.guards.add(vpn)
            page = p.pages.get(vpn)
            if vpn not in copied or page is None:
                continue
            if not isinstance(page, Obj):
                child.pages[vpn] = page
            elif page.exclusive and page.pinned() and p.has_pinned and vpn // NR not in child.pmd:
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
        p.zap(sorted(p.pages))

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
        want = b"".join(bytes(pg.data) if isinstance(pg, Obj) else bytes(PAGE) for pg in held)
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
            # Write pins fault for write; R/O long-term pins fault for read,
            # then unshare anything not exclusive, the zero page included
            # (5.19 / 6.2).
            if not writable:
                p.fault_read(vpn)
            page = p.make_exclusive(vpn, unshare=not writable)
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
        identity = {}           # pfn -> id of the model page
        folio_head = {}         # id(Folio) -> pfn of its head
        checked = set()
        huge_zero = None
        for p in self.procs:
            entries = pagemap_of(p)
            rss = 0
            for vpn in sorted(p.vmas):
                e = entries[vpn]
                page = p.pages.get(vpn)
                where = f"{vpn * PAGE:#x} of process {p.eng.pid}"
                assert e.present == (page is not None), f"presence differs at {where}"
                assert e.guard == (vpn in p.guards), f"guard marker differs at {where}"
                if page is None:
                    continue
                if page is ZERO:
                    assert e.pfn == 0 and not e.exclusive, f"expected the zero page at {where}"
                    continue
                if page is HZERO:
                    # The huge zero folio: PM_FILE (not anon), never exclusive,
                    # page i of the block on its frame i.
                    base = e.pfn - vpn % NR
                    assert huge_zero in (None, base) and base % NR == 0 and e.file_shared \
                        and not e.exclusive, f"expected the huge zero page at {where}"
                    if huge_zero is None:
                        assert "zero" in eng.frame_info(base)[2], "the huge zero page is not a zero page"
                        huge_zero = base
                    continue
                rss += 1
                # PM_MMAP_EXCLUSIVE: the page mapped once; for a PMD-mapped
                # THP the head page's count stands for every page (6.15+).
                counted = page.folio.pages[0] if vpn // NR in p.pmd else page
                assert e.exclusive == (counted.mapcount == 1), f"exclusive bit differs at {where}"
                assert not e.file_shared, f"an anon page reads as PM_FILE at {where}"
                assert self.m.node_of(e.pfn) == page.node, f"node differs at {where}"
                assert identity.setdefault(e.pfn, id(page)) == id(page), f"frame sharing differs at {where}"
                if e.pfn in checked:
                    continue
                checked.add(e.pfn)
                assert eng.frame_read(e.pfn, 0, PAGE) == page.data, f"contents differ at {where}"
                head, entire = eng.thp_info(e.pfn)
                refcount, mapcount = eng.frame_info(e.pfn)[:2]
                if page.folio is None:
                    assert head < 0, f"a small page of the model is part of a large folio at {where}"
                    assert mapcount == page.mapcount, f"mapcount differs at {where}"
                    continue
                # A THP's pages are one naturally aligned block of frames, in
                # order; its PMD mappings count for every page (kpagecount).
                f = page.folio
                want_head = folio_head.setdefault(id(f), e.pfn - page.index)
                assert head == want_head == e.pfn - page.index and head % NR == 0, \
                    f"a THP's page is not on its folio's frame at {where}"
                assert entire == f.pmd_maps and mapcount + entire == page.mapcount, \
                    f"THP mapcounts differ at {where}"
                if page.index == 0 or vpn % NR == 0:
                    assert eng.frame_info(head)[0] == f.refs(), f"THP refcount differs at {where}"
            assert eng.mm_info(p.eng.mm)["rss_anon"] == rss, f"rss differs in process {p.eng.pid}"
            for block, kind in p.pmd.items():
                assert eng.pte(p.eng.mm, block * NR * PAGE) and \
                    entries[block * NR].pfn % NR == 0, f"no PMD leaf at {block * NR * PAGE:#x}"
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


class ThpEngineVsModel(EngineVsModel):
    """The same model and rules over 2 MiB-aligned regions on a machine with
    THP (enabled=madvise, one NUMA node: THPs come from one zone), each
    region MADV_HUGEPAGE or not, spans picked at the block's edges and
    middle so that operations cover a PMD leaf whole or in part."""
    MAX_PROCS = 3
    mmap = None                 # small regions: EngineVsModel covers them
    move_pages = None           # needs NUMA nodes, which THP allocation does not use

    def __init__(self):
        RuleBasedStateMachine.__init__(self)
        self.m = mmemu.Machine(kernel="6.18", memory=96 << 20, thp="madvise")
        self.procs = [MProc(self.m.spawn())]
        self.regions = []
        self.pipes = []
        self.pins = []

    def span(self, r, first, count):
        addr, npages = self.regions[r % len(self.regions)]
        first = min((0, 1, NR // 2, NR - 1)[first], npages - 1)
        count = min((1, 2, NR // 2 - 1, npages)[count], npages - first)
        return addr + first * PAGE, count

    @precondition(lambda self: len(self.regions) < 2)
    @rule(huge=st.sampled_from([True, True, True, False]))
    def mmap_thp(self, huge):
        p = self.procs[0]
        addr = p.eng.mmap(0, PMD_SIZE, RW, MAP_PRIVATE | MAP_ANONYMOUS)
        assert addr % PMD_SIZE == 0, "an anonymous 2 MiB mmap is THP-aligned (6.7+)"
        if huge:
            p.eng.madvise(addr, PMD_SIZE, MADV_HUGEPAGE)
        for vpn in range(addr // PAGE, addr // PAGE + NR):
            p.vmas[vpn] = {"prot": RW, "dontfork": False, "wipe": False, "anon_vma": 0, "single": True,
                           "mergeable": False, "huge": False}
        # The new VMA may merge with a neighbour (and take its anon_vma)
        # before MADV_HUGEPAGE splits it off again, keeping that anon_vma.
        p.normalize()
        for vpn in range(addr // PAGE, addr // PAGE + NR):
            p.vmas[vpn]["huge"] = huge
        self.regions.append((addr, NR))

    @precondition(lambda self: self.regions)
    @rule(i=st.integers(0, 7), r=st.integers(0, 7), first=st.integers(0, 3), count=st.integers(0, 3),
          advice=st.sampled_from(ADVICE + [MADV_COLD, MADV_COLD]))
    def madvise(self, i, r, first, count, advice):
        self.do_madvise(i, r, first, count, advice)

    @precondition(lambda self: self.regions)
    @rule(i=st.integers(0, 7), r=st.integers(0, 7))
    def collapse(self, i, r):
        """MADV_COLLAPSE of a whole block inside one VMA (6.18: read-only
        ptes are no obstacle): a fresh exclusive THP holding a copy, empty
        ptes reading zeros; EINVAL without a page table or over a guard
        marker, EAGAIN if a page is referenced beyond its mappings (a pipe,
        a pin); the old pages lose this mapping."""
        p = self.proc(i)
        addr, _ = self.regions[r % len(self.regions)]
        block = addr // PMD_SIZE
        vpns = range(block * NR, block * NR + NR)
        if not any(vpns[0] in run and vpns[-1] in run for run in p.runs()):
            return

        def model():
            if block in p.pmd:
                return None                         # already PMD-mapped: done
            if block not in p.tables:
                raise OSError(errno.EINVAL, "SCAN_PMD_NONE")
            for v in vpns:
                pg = p.pages.get(v)
                if v in p.guards:
                    raise OSError(errno.EINVAL, "SCAN_PTE_NON_PRESENT")
                if isinstance(pg, Obj) and (pg.folio.refs() != pg.folio.mappings() if pg.folio
                                            else pg.gets or pg.pins):
                    raise OSError(errno.EAGAIN, "SCAN_PAGE_COUNT")
            datas = [p.pages[v].data if isinstance(p.pages.get(v), Obj) else None for v in vpns]
            for v in vpns:
                p.drop(v)
            p.map_new_thp(block, datas)
        self.expect(lambda: p.eng.madvise(block * PMD_SIZE, PMD_SIZE, MADV_COLLAPSE), model)

    @invariant()
    def memory_suffices(self):
        # The model assumes every THP allocation succeeds.
        assert self.m.stats()["thp_fault_fallback"] == 0


TestThpEngineVsModel = ThpEngineVsModel.TestCase
# A THP step checks 512 pages a block: two thirds of the profile's examples
# keep this test near 30 s in CI (60 examples take ~45 s).
TestThpEngineVsModel.settings = settings(max_examples=max(1, settings.default.max_examples * 2 // 3))
