"""Races: multi-threaded programs whose cells come from the explorer.

Each race is a setup, thread bodies and a check (mmemu.explore). Its cell in
the matrix runs the explorer on a fresh machine of the version: in the
buggy versions it must find a wrong interleaving within the budget (the cell
"fails", which is the bug reproducing); in the others exhaustive exploration
must complete and find none. `mmemu explore ID --kernel V` prints the
shortest wrong interleaving as a timeline.

Steps follow the kernel's lock and flush boundaries (mmemu.sched,
core/sched.pxi); the losing interleavings are those of
reference/scenarios.md S50-S52 and seed 002.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .. import constants as C
from ..uffd import UFFDIO_REGISTER_MODE_WP
from . import ScenarioFailure, ScenarioSkip, absent, parse_versions, scenario

PAGE = C.PAGE_SIZE
RW = C.PROT_READ | C.PROT_WRITE
PRIV = C.MAP_PRIVATE | C.MAP_ANONYMOUS


@dataclass
class Race:
    id: str
    name: str
    title: str
    bug: str
    fails: str                  # versions where a wrong interleaving exists
    setup: object
    threads: list
    check: object = None        # None: Machine.check() and no lost write
    options: dict = field(default_factory=dict)
    budget: int = 20_000
    why: str = ""

    def explore(self, kernel, strategy="exhaustive", budget=None, seed=0, backports=(), **kw):
        from ..explore import explore
        opts = dict(self.options)
        if backports:
            opts["backports"] = tuple(backports)
        return explore(self.setup, self.threads, kernel=kernel, check=self.check, strategy=strategy,
                       budget=budget or self.budget, seed=seed, **opts, **kw)


RACES = []


def race(id, name, title, bug, fails, threads, check=None, options=None, budget=20_000, needs=None):
    def register(setup):
        r = Race(id, name, title, bug, fails, setup, threads, check,
                 dict(options or {"ncpus": 3, "memory": 64 * PAGE}), budget,
                 (setup.__doc__ or "").strip())
        RACES.append(r)

        def cell(machine, r=r):
            from ..machine import Machine
            if type(machine) is not Machine:
                raise ScenarioSkip("a race runs on the explorer's engine machines only")
            res = r.explore(machine.kernel, backports=machine.policy.backports)
            if res.counterexamples:
                c = res.counterexamples[0]
                raise ScenarioFailure(f"{c.reason} ({res.explored} interleavings explored)\n{c.timeline()}")
            if not res.complete:
                raise RuntimeError(f"exploration did not complete within {r.budget} interleavings")
        cell.__doc__ = r.why
        scenario(id, name, title, bug=bug, fails=fails, backing="race", needs=needs)(cell)
        return setup
    return register


def find(key):
    """A race by id (S51) or name."""
    for r in RACES:
        if key in (r.id, r.name):
            return r
    return None


# ---- B11: uffd-wp with a deferred flush, a COW, a store through a stale entry ----

def monitor(m, ctx):
    ctx["u"].writeprotect(ctx["a"], PAGE, 0)


def cow_writer(m, ctx):
    ctx["b"].write(ctx["a"], b"b")


def stale_writer(m, ctx):
    ctx["c"].write(ctx["a"] + 8, b"c")


def _uffd_wp_page(m, cpus):
    p = m.spawn()
    a = p.mmap(0, PAGE, RW, PRIV)
    u = p.userfaultfd()
    u.api()
    u.register(a, PAGE, UFFDIO_REGISTER_MODE_WP)
    c = p.thread(cpu=cpus["c"])
    # A fresh page: writable and dirty in C's TLB, and still in C's CPU's LRU
    # add batch (page_count 2 in 5.9-5.17: do_wp_page copies it).
    c.write(a, b"0")
    return {"p": p, "a": a, "u": u, "b": p.thread(cpu=cpus["b"]), "c": c}


@race("S51", "uffd-wp-deferred-flush-3cpu",
      "uffd-wp unprotect with a deferred flush, a COW on CPU1, a store through CPU2's stale entry "
      "(seed 002; Nadav Amit's interleaving)",
      "B11", "5.9-5.11", [monitor, cow_writer, stale_writer])
def s51_setup(m):
    """CPU0 unprotects (5.7-6.2: the pte goes read-only, its flush waits for
    the end of the range); CPU1's store takes do_wp_page, which copies (page
    count 2); CPU2 stores through its stale writable entry after the copy and
    before the pte switch: its byte is lost. 5.12 (6ce64428d620) flushes in
    do_wp_page when a uffd-wp VMA has a flush pending; 5.7-5.8 reuse by
    mapcount, so there is no copy to lose it."""
    return _uffd_wp_page(m, {"b": 1, "c": 2})


@race("S52", "uffd-wp-deferred-flush-2cpu",
      "the same race on two CPUs: the monitor is preempted inside its deferred-flush window "
      "and a worker on its CPU copies the page",
      "B11", "5.9-5.11", [monitor, cow_writer, stale_writer],
      options={"ncpus": 2, "memory": 64 * PAGE})
def s52_setup(m):
    """Monitor and worker share CPU0, the storing thread runs on CPU1."""
    return _uffd_wp_page(m, {"b": 0, "c": 1})


# ---- B10: clear_refs leaves stale writable entries: soft-dirty misses writes ----

def clear_refs(m, ctx):
    ctx["p"].clear_refs(C.CLEAR_REFS_SOFT_DIRTY)
    ctx["cleared"] = True


def writer(m, ctx):
    ctx["w"].read(ctx["a"], 1)          # (a first step: bodies run alone up to their first call)
    after = ctx.get("cleared", False)
    ctx["w"].write(ctx["a"], b"w")
    if after:
        ctx["written_after"] = True


def _soft_dirty_seen(m, ctx):
    m.check()
    if ctx.get("written_after") and not ctx["p"].pagemap(ctx["a"]).soft_dirty:
        return "a store that began after clear_refs returned left the page clean (soft-dirty missed)"
    return True


@race("S50", "clear-refs-stale-tlb", "clear_refs(4) leaves a writable TLB entry: a later store "
      "is not marked soft-dirty", "B10", "5.7-5.11", [clear_refs, writer], check=_soft_dirty_seen,
      options={"ncpus": 2, "memory": 64 * PAGE})
def s50_setup(m):
    """A writer on CPU1 holds a writable, dirty TLB entry. Before 5.12
    clear_refs flushes nothing (the gather recorded no pte), so a store that
    starts after clear_refs returned completes through the stale entry and
    the pte stays clean; 912efa17e512 flushes the mm after the walk."""
    p = m.spawn()
    a = p.mmap(0, PAGE, RW, PRIV)
    w = p.thread(cpu=1)
    w.write(a, b"0")
    return {"p": p, "a": a, "w": w}


def clear_refs_only(m, ctx):
    ctx["p"].clear_refs(C.CLEAR_REFS_SOFT_DIRTY)


@race("S50b", "clear-refs-stale-tlb-lost-write",
      "clear_refs(4) leaves a writable TLB entry on CPU2; CPU1's write fault copies the page and "
      "CPU2's store through the stale entry is lost", "B10", "5.9-5.11",
      [clear_refs_only, cow_writer, stale_writer])
def s50b_setup(m):
    """B10's lost-write form (docs/reference-errata.md 6): the shape of B11
    without uffd-wp. 912efa17e512 (5.12) flushes before mmap_lock is
    released, so the fault that copies comes after the flush; 5.7-5.8
    reuse by mapcount."""
    p = m.spawn()
    a = p.mmap(0, PAGE, RW, PRIV)
    c = p.thread(cpu=2)
    c.write(a, b"0")
    return {"p": p, "a": a, "b": p.thread(cpu=1), "c": c}


# ---- B17: a GUP-fast pin racing with fork's early COW ----------------------------

def fork_parent(m, ctx):
    ctx["child"] = ctx["p"].fork()


def fast_pinner(m, ctx):
    ctx["pin"] = ctx["t"].process.pin_user_pages_fast(ctx["a"], 1, C.FOLL_WRITE | C.FOLL_LONGTERM)


def _pin_coherent(m, ctx):
    """After fork and the pin, the parent writes its page: a R/W long-term
    pin must see it (the pin and the parent's pte name one page)."""
    p, pin = ctx["p"], ctx.get("pin")
    if pin is None:
        return "no pin was taken"
    p.write(ctx["a"], b"P")
    m.check()
    if pin.read(0, 1) != b"P":
        return ("the pin and the parent's page differ: fork shared the page the pin holds and the "
                "parent's write copied it away")
    return True


@race("S61", "gup-fast-pin-vs-fork", "pin_user_pages_fast(FOLL_WRITE|FOLL_LONGTERM) on CPU1 while "
      "fork copies the parent's page tables on CPU0", "B17", "5.7-5.10", [fork_parent, fast_pinner],
      check=_pin_coherent, options={"ncpus": 2, "memory": 64 * PAGE})
def s61_setup(m):
    """fork decides a pte is not pinned, then shares it and write-protects
    the parent's pte; GUP-fast takes no lock and can pin in between. The
    parent's next write copies the page away from the pin. 57efa1fe5957
    (5.11): fork bumps write_protect_seq and GUP-fast re-checks it, unpins
    and takes the slow path (which waits for mmap_lock, then COWs first).
    5.7-5.8 never copy a pinned page at fork (B6), so every order fails."""
    p = m.spawn()
    a = p.mmap(0, PAGE, RW, PRIV)
    p.write(a, b"0")
    p.pin_user_pages(a, 1, C.FOLL_WRITE).release()      # mm has pinned (5.9's has_pinned)
    return {"p": p, "a": a, "t": p.thread(cpu=1)}


# ---- B16: a FOLL_FORCE write reaches the shmem page cache (CVE-2022-2590) -------

def forced_writer(m, ctx):
    try:
        ctx["p"].proc_mem_write(ctx["a"], b"X")
    except OSError as e:
        # Found the slot empty (after the zap, before CONTINUE): a MINOR fault
        # a remote GUP cannot wait for, EIO (the exploit just loops).
        if e.errno != 5:
            raise


def zap_and_continue(m, ctx):
    ctx["p"].madvise(ctx["a"], PAGE, C.MADV_DONTNEED)
    ctx["u"].continue_(ctx["a"], PAGE)


def _file_untouched(m, ctx):
    m.check()
    got = ctx["p"].pread(ctx["fd"], 4, 0)
    if got != b"AAAA":
        return f"the memfd's page cache reads {got!r}: a write through a private read-only mapping reached it"
    return True


def _needs_minor_shmem(policy):
    from ..uffd import UFFD_FEATURE_MINOR_SHMEM
    return None if policy.uffd_features & UFFD_FEATURE_MINOR_SHMEM else \
        absent("MINOR faults on shmem and UFFDIO_CONTINUE (5.14)")


@race("S47", "shm-dirty-cow", "a /proc/pid/mem write into a private read-only memfd mapping races "
      "MADV_DONTNEED + UFFDIO_CONTINUE (CVE-2022-2590)", "B16", "5.14-5.19",
      [forced_writer, zap_and_continue], check=_file_untouched,
      options={"ncpus": 2, "memory": 64 * PAGE}, needs=_needs_minor_shmem)
def s47_setup(m):
    """The forced write COWs the cache page into an anon copy (R/O, dirty:
    no VM_WRITE) and sets FOLL_COW; before its retry, DONTNEED zaps the copy
    and CONTINUE maps the page-cache page R/O and dirty; the retry trusts a
    dirty pte under FOLL_COW and writes the file. 5535be309971 (6.0) follows
    a R/O pte for a forced write only to an exclusive anon page. (The engine
    installs CONTINUE's pte dirty from 5.14; the notes date that ~5.16.)"""
    from ..uffd import UFFD_FEATURE_MINOR_SHMEM, UFFDIO_REGISTER_MODE_MINOR
    p = m.spawn()
    fd = p.memfd_create("victim")
    p.pwrite(fd, b"AAAA", 0)
    a = p.mmap(0, PAGE, C.PROT_READ, C.MAP_PRIVATE, fd, 0)
    u = p.userfaultfd()
    u.api(UFFD_FEATURE_MINOR_SHMEM)
    u.register(a, PAGE, UFFDIO_REGISTER_MODE_MINOR)
    u.continue_(a, PAGE)            # the cache page mapped: R/O, dirty
    return {"p": p, "a": a, "u": u, "fd": fd}


# ---- B23: uffd-wp lost for shmem when a punch's second pass finds the folio mapped ----

def puncher(m, ctx):
    ctx["p"].fallocate(ctx["fd"], C.FALLOC_FL_PUNCH_HOLE | C.FALLOC_FL_KEEP_SIZE, 5 * PAGE, PAGE)


def alias_reader(m, ctx):
    ctx["r"].read(ctx["alias"] + 4 * PAGE, 1)       # fault-around covers index 5


def _stays_protected(m, ctx):
    """A write to the punched page of the registered mapping must still be
    reported (the page was write-protected before the punch)."""
    from ..errors import WouldBlock
    m.check()
    try:
        ctx["p"].thread(cpu=0).write(ctx["S"] + 5 * PAGE, b"w")
    except WouldBlock:
        return True
    return "a write to the punched page went unreported: its uffd-wp marker was dropped"


def _needs_wp_shmem(policy):
    return None if policy.uffd_wp_file else absent("uffd-wp on shmem needs PTE markers (5.19, 1db9dbc2ef05)")


@race("S58b", "uffd-wp-hole-punch-race", "shmem hole punch with uffd-wp (case B, the race): fault-around "
      "through an unregistered alias maps the punched folio between the two passes",
      "B23", ">=5.19", [puncher, alias_reader], check=_stays_protected,
      options={"ncpus": 2, "memory": 256 * PAGE}, needs=_needs_wp_shmem)
def s58b_setup(m):
    """Pass 1 (unmap_mapping_range) keeps the uffd-wp marker of the
    registered mapping S; a read of the unregistered alias A outside the
    hole passes shmem_falloc_wait, and its fault-around maps the old folio
    into A's empty slot; pass 2 finds the folio mapped and unmaps it with
    ZAP_FLAG_DROP_MARKER in every VMA of the file, dropping S's marker. The
    next write to S is not reported. By design upstream (999dad824c39); as
    scenarios.md writes it (a read of S between the passes) it cannot
    happen: that read waits for the punch (docs/reference-errata.md 4)."""
    from .. import uffd as U
    p = m.spawn()
    n = 16
    fd = p.memfd_create("uffd-test")
    p.ftruncate(fd, n * PAGE)
    S = p.mmap(0, n * PAGE, RW, C.MAP_SHARED, fd, 0)
    alias = p.mmap(0, n * PAGE, C.PROT_READ, C.MAP_SHARED, fd, 0)
    u = p.userfaultfd(U.O_CLOEXEC | U.O_NONBLOCK)
    u.api(U.UFFD_FEATURE_PAGEFAULT_FLAG_WP | U.UFFD_FEATURE_WP_HUGETLBFS_SHMEM)
    u.register(S, n * PAGE, U.UFFDIO_REGISTER_MODE_WP)
    for i in range(n):
        p.write(S + i * PAGE, bytes([i + 1]) * 8)
    u.writeprotect(S, n * PAGE, U.UFFDIO_WRITEPROTECT_MODE_WP)
    return {"p": p, "fd": fd, "S": S, "alias": alias, "u": u, "r": p.thread(cpu=1),
            "watch": [(p, S + 5 * PAGE), (p, alias + 5 * PAGE)]}


def all_races():
    return list(RACES)
