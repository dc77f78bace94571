"""Migration scenarios: S77 (migration with exclusivity and pins; S77d, S77e:
FOLL_LONGTERM and ZONE_MOVABLE / CMA) and the
migration and NUMA-hinting paths of S57 (B15), scenarios.md; rules in
semantics.md section 14.

Each case runs on a two-node copy of the harness's machine (same kernel,
backports, memory and swap): the harness's machines have one node.
"""
from .. import constants as C
from .. import uffd as U
from ..eras import ZONES_MOVABLE
from ..machine import Machine
from . import ScenarioSkip, check, scenario
from .uffd_cases import (F_WP, FLAG_WP, FLAG_WRITE, PAGE, PRIV, PROTECT, RO, RW, WP, _area,
                         _one_fault, _try, _uffd, needs, uffd_scenario)

MOVE = C.MPOL_MF_MOVE


def _numa(m):
    """The harness's machine, with two NUMA nodes (CPU 0 on node 0, CPU 1 on node 1)."""
    if not isinstance(m, Machine):
        if getattr(m, "nodes", 1) >= 2:
            return m
        raise ScenarioSkip("needs two NUMA nodes; this machine has one")
    return Machine(kernel=m.kernel, backports=m.policy.backports, memory=m.memory, swap=m.swap,
                   seed=m.seed, tlb=m.tlb, nodes=2)


def _moved(p, addr, node, what):
    st = p.move_pages([addr], [node], MOVE)
    check(st == [node] and st.not_migrated == 0, f"{what}: move_pages gave {st} "
          f"(not migrated: {st.not_migrated}), expected [{node}]")


def _exclusive(m, pfn):
    return "anon_exclusive" in m.frame(pfn).flags


@scenario("S77", "migrate-exclusive", "migration keeps an exclusive page exclusive (S77)")
def migrate_exclusive(m):
    """A written page made R/O by mprotect migrates: new frame, same data. In
    5.19+ its migration entry is readable-exclusive, so the new page is
    PageAnonExclusive; mprotect(RW) then maps it writable at once (6.0+) and
    the write reuses it in every era. If the RX entry were lost, the page
    would come back shared: no upgrade in 6.0+ and a refcount decision on
    the write."""
    m = _numa(m)
    p = m.spawn()
    P = p.mmap(0, PAGE, RW, PRIV)
    p.write(P, b"mig")
    p.mprotect(P, PAGE, RO)
    pfn0 = p.pagemap(P).pfn
    check(m.node_of(pfn0) == 0, "a fresh page is allocated on node 0")
    _moved(p, P, 1, "an exclusive R/O page")
    pfn1 = p.pagemap(P).pfn
    check(pfn1 != pfn0 and m.node_of(pfn1) == 1, f"the page must move to node 1 (pfn {pfn0} -> {pfn1})")
    check(p.read(P, 3) == b"mig", "migration must keep the data")
    check(_exclusive(m, pfn1) == bool(m.policy.anon_exclusive),
          "5.19+: the readable-exclusive entry makes the new page PageAnonExclusive (and only then)")
    check(p.move_pages([P]) == [1], "move_pages(nodes=NULL) reports the new node")
    p.mprotect(P, PAGE, RW)
    f0 = p.minflt
    p.write(P, b"W")
    check(p.minflt - f0 == (0 if m.policy.mprotect_upgrade else 1),
          f"mprotect(RW) of the migrated exclusive page: {p.minflt - f0} write faults")
    check(p.pagemap(P).pfn == pfn1, "the write must reuse the migrated page, not copy it")
    m.check()


@scenario("S77b", "migrate-pinned", "a pinned page refuses to migrate (S77)")
def migrate_pinned(m):
    """A FOLL_PIN'd page cannot move: 5.19+ try_to_migrate refuses to share a
    maybe-pinned exclusive page; before, the unmap happens and the reference
    count check fails (-EAGAIN), and the old page is mapped back. Either way
    the pin and the process keep one page: a write through the mapping shows
    in the pinned frame. If it moved, the pin would hold a stale copy."""
    m = _numa(m)
    p = m.spawn()
    P = p.mmap(0, 2 * PAGE, RW, PRIV)
    p.write(P, b"a")
    p.write(P + PAGE, b"b")
    pin = p.pin_user_pages(P, 1, C.FOLL_WRITE | C.FOLL_LONGTERM)
    pfn0 = p.pagemap(P).pfn
    st = p.move_pages([P, P + PAGE], [1, 1], MOVE)
    check(st.not_migrated == 1 and st[0] == -C_EAGAIN and st[1] == 1,
          f"the pinned page must not migrate, the other must (status {st}, not migrated "
          f"{st.not_migrated})")
    check(p.pagemap(P).pfn == pfn0 and m.node_of(pfn0) == 0, "the pinned page stays where it was")
    p.write(P, b"X")
    check(pin.read(0, 1) == b"X", "the pin must see the process's write (same page)")
    check(_exclusive(m, pfn0) == bool(m.policy.anon_exclusive),
          "a page that failed to migrate keeps PageAnonExclusive (5.19+)")
    pin.release()
    _moved(p, P, 1, "the page once unpinned")
    m.check()


@scenario("S77c", "migrate-shared", "a page shared after fork needs MPOL_MF_MOVE_ALL (S77)")
def migrate_shared(m):
    """A page both parent and child map is -EACCES without MOVE_ALL; with it,
    both ptes move to the new frame (the rmap walk finds the child's), read
    only, and the next write still breaks COW."""
    m = _numa(m)
    p = m.spawn()
    P = p.mmap(0, PAGE, RW, PRIV)
    p.write(P, b"s")
    c = p.fork()
    st = p.move_pages([P], [1], MOVE)
    check(st == [-C_EACCES], f"a COW-shared page without MOVE_ALL: status {st}")
    st = p.move_pages([P], [1], C.MPOL_MF_MOVE_ALL)
    check(st == [1], f"MPOL_MF_MOVE_ALL moves it: status {st}")
    pfn = p.pagemap(P).pfn
    check(c.pagemap(P).pfn == pfn and m.node_of(pfn) == 1, "parent and child map the migrated page")
    check(not _exclusive(m, pfn), "a shared page is never PageAnonExclusive")
    c.write(P, b"c")
    check(p.read(P, 1) == b"s" and c.read(P, 1) == b"c", "COW still separates the two")
    m.check()


def _zoned(m, **zones):
    """The harness's machine with a ZONE_MOVABLE or a CMA area of its own."""
    if not isinstance(m, Machine):
        raise ScenarioSkip("needs a ZONE_MOVABLE / CMA area the run lays out (movablecore=, cma=); "
                           "the host's zones are fixed at boot")
    return Machine(kernel=m.kernel, backports=m.policy.backports, memory=4 << 20, swap=m.swap,
                   seed=m.seed, tlb=m.tlb, **zones)


@scenario("S77f", "migrate-thp", "a PMD-mapped THP migrates whole, keeps exclusivity, refuses when pinned (S77)")
def migrate_thp(m):
    """S77 with a THP backing: an exclusive R/O PMD-mapped THP moves whole
    (set_pmd_migration_entry / remove_migration_pmd): every page on the new
    node, still one PMD-mapped folio, PageAnonExclusive in 5.19+ (the PMD
    entry was readable-exclusive). Pinned, it stays. If it moved per page,
    the folio would be split; if the RX entry were lost, it would come back
    shared."""
    m = _numa(m)
    if m.memory < 8 << 20:
        raise ScenarioSkip("needs a free 2 MiB block on each of two nodes")
    m.thp.enabled = "always"
    p = m.spawn()
    P = p.mmap(0, 4 << 20, RW, PRIV)
    P = (P + (2 << 20) - 1) & ~((2 << 20) - 1)
    p.write(P, b"thp")
    p.write(P + (2 << 20) - PAGE, b"end")
    head0 = p.pagemap(P).pfn
    if m.folio_order(head0) != 9:
        raise ScenarioSkip("no THP on this machine (no free aligned block)")
    p.mprotect(P, 2 << 20, RO)
    _moved(p, P + 7 * PAGE, 1, "an exclusive R/O THP (by a tail page)")
    head1 = p.pagemap(P).pfn
    check(m.node_of(head1) == 1 and m.folio_order(head1) == 9, "the THP must move whole to node 1")
    check(p.pagemap(P + (2 << 20) - PAGE).pfn == head1 + 511, "its last page with it")
    check(p.read(P, 3) == b"thp" and p.read(P + (2 << 20) - PAGE, 3) == b"end", "migration keeps the data")
    check(_exclusive(m, head1) == bool(m.policy.anon_exclusive),
          "5.19+: the readable-exclusive PMD entry makes the new THP PageAnonExclusive (and only then)")
    p.mprotect(P, 2 << 20, RW)
    pin = p.pin_user_pages(P, 1, C.FOLL_WRITE)
    st = p.move_pages([P], [0], MOVE)
    check(st == [-C_EAGAIN], f"a pinned THP must not migrate (status {st})")
    check(p.pagemap(P).pfn == pin.pfns[0] and m.node_of(p.pagemap(P).pfn) == 1, "the pinned THP stays")
    pin.release()
    m.check()


@scenario("S77d", "longterm-pin-movable", "a long-term pin migrates its page out of ZONE_MOVABLE "
          "(5.13+) (S77)")
def longterm_pin_movable(m):
    """io_uring registers a buffer (FOLL_WRITE|FOLL_LONGTERM) whose first page
    sits in ZONE_MOVABLE and whose second is not faulted yet. 5.13+
    (d1e153fea2a8) migrates the first page out before pinning: the pagemap
    PFN changes at pin time, the data stays, and the pin and the mapping
    share the new page; the second is faulted outside ZONE_MOVABLE at once
    (8e3560d963d2). 5.7-5.12 pin both in ZONE_MOVABLE. If 5.13+ kept the
    movable page, memory offlining would be blocked by the pin; if the
    migration lost the mapping, the pin would not see the process's writes."""
    m = _zoned(m, movablecore=2 << 20)
    p = m.spawn()
    P = p.mmap(0, 2 * PAGE, RW, PRIV)
    p.write(P, b"lt")
    pfn0 = p.pagemap(P).pfn
    check(m.zone_of(pfn0) == "Movable", "a user page is allocated from ZONE_MOVABLE first")
    moves = bool(m.policy.longterm_unpinnable & ZONES_MOVABLE)
    pin = p.pin_user_pages(P, 2, C.FOLL_WRITE | C.FOLL_LONGTERM)
    pfn1 = p.pagemap(P).pfn
    zone = "Normal" if moves else "Movable"
    check((pfn1 != pfn0) == moves and m.zone_of(pfn1) == zone,
          f"the pinned page: pfn {pfn0} -> {pfn1} ({m.zone_of(pfn1)}), expected {zone}")
    check(int(pin.pfns[0]) == pfn1 and p.read(P, 2) == b"lt", "the pin holds the mapped page, data kept")
    check(m.zone_of(p.pagemap(P + PAGE).pfn) == zone, "the page faulted in by the pin")
    p.write(P, b"X")
    check(pin.read(0, 1) == b"X", "the pin must see the process's write (one page)")
    pin.release()
    m.check()


@scenario("S77e", "longterm-pin-cma-busy", "a long-term pin of a CMA page that cannot migrate: "
          "pinned in place before 5.13, ENOMEM since (S77)")
def longterm_pin_cma_busy(m):
    """A CMA page another reference holds (a vmsplice pipe) cannot be
    migrated. Before f0f4463837da (5.13; 5.10.38) GUP then pinned it where it
    was, a long-term pin inside CMA; since, the pin fails with ENOMEM and no
    reference is left behind. The pipe reads the page either way."""
    m = _zoned(m, cma=3 << 20)
    p = m.spawn()
    P = p.mmap(0, PAGE, RW, PRIV)
    p.write(P, b"cma")
    pfn0 = p.pagemap(P).pfn
    check(m.zone_of(pfn0) == "CMA", "CMA holds most free memory, so user pages take it first")
    pipe = p.vmsplice(P, PAGE)
    pin = err = None
    try:
        pin = p.pin_user_pages(P, 1, C.FOLL_WRITE | C.FOLL_LONGTERM)
    except OSError as e:
        err = e
    if m.policy.longterm_migrate_fail:
        check(isinstance(err, OSError) and err.errno == C_ENOMEM, f"expected ENOMEM, got {pin or err!r}")
    else:
        check(err is None and int(pin.pfns[0]) == pfn0, f"expected a pin of the CMA page, got {err!r}")
        pin.release()
    check(p.pagemap(P).pfn == pfn0 and pipe.read(3) == b"cma", "the page stays, the pipe reads it")
    m.check()


C_EAGAIN, C_EACCES, C_ENOMEM = 11, 13, 12


def _settle(p):
    """Other allocations push the fresh page out of CPU 0's per-CPU LRU add
    batch (a page still there holds an extra reference and cannot be
    isolated: the NUMA hint leaves it in place)."""
    n = p.machine.policy.lru_batch
    p.populate(p.mmap(0, n * PAGE, RW, PRIV), n * PAGE, write=True)


def _wp_migrate(m, backing, how):
    """(shared body) S57 (b) migration / (c) a NUMA hinting cycle of a uffd-wp
    protected page, then a write that must be reported."""
    m = _numa(m)
    p = m.spawn()
    A = _area(p, backing, 1)
    S = A.addr
    u = _uffd(p, F_WP | (U.UFFD_FEATURE_WP_HUGETLBFS_SHMEM if backing != "anon" else 0))
    u.register(S, PAGE, WP)
    p.write(S, b"\x01")
    _settle(p)
    u.writeprotect(S, PAGE, PROTECT)
    wp_bit = bool(m.policy.pm_uffd_wp)        # pagemap shows uffd-wp from 5.14
    check(p.pagemap(S).uffd_wp == wp_bit, "the pte must read uffd-wp")
    pfn0 = p.pagemap(S).pfn
    if how == "migrate":
        _moved(p, S, 1, "the protected page")
    else:
        check(m.numa_scan(p, S, PAGE) == 1, "the scan must hint the page")
        cpu = 1 if how == "numa-remote" else 0
        p.thread(cpu).read(S, 1)        # the hinting fault (on node 1: migrates the page)
    pfn1 = p.pagemap(S).pfn
    check((pfn1 != pfn0) == (how != "numa-local"), f"{how}: pfn {pfn0} -> {pfn1}")
    check(p.pagemap(S).uffd_wp == wp_bit, f"{how}: the pte must still read uffd-wp")
    _, wb = _try(lambda: p.write(S, b"\x02"))
    check(wb is not None, f"the write to a uffd-wp page was not reported after {how}")
    _one_fault(u, S, FLAG_WRITE | FLAG_WP, f"write after {how}")
    u.writeprotect(S, PAGE, 0)
    wb.thread.resume()
    check(p.read(S, 1) == b"\x02", "the write lands once unprotected")


for _how, _sid, _title in (("migrate", "S57b", "migration (move_pages)"),
                           ("numa-local", "S57c", "a NUMA hinting fault on the page's node"),
                           ("numa-remote", "S57c", "a NUMA hinting fault that migrates the page")):
    def _case(m, backing, how=_how):
        _wp_migrate(m, backing, how)
    _case.__doc__ = (f"{_title} rebuilds the pte from vm_page_prot: 5.19-6.1's shmem VMA has "
                     "write there (no writenotify) and pte_mkuffd_wp does not write-protect, so "
                     "the protected pte comes back writable and the write is not reported (B15). "
                     "Anon is unaffected (a private vm_page_prot is R/O).")
    uffd_scenario(_sid, f"uffd-wp-{_how}", f"uffd-wp kept through {_title}", backings=("anon", "shmem"),
                  bug="B15", fails={"shmem": "5.19-6.1"}, needs=needs(wp=True))(_case)


# ---- hugetlb ---------------------------------------------------------------------

H2M = 2 << 20
HUGE = C.MAP_PRIVATE | C.MAP_ANONYMOUS | C.MAP_HUGETLB


def _hugetlb_numa(m):
    """The harness's kernel on two nodes with four 2 MiB pages (two a node)."""
    if not isinstance(m, Machine):
        raise ScenarioSkip("needs hugetlb pools on two NUMA nodes; the host has one node")
    return Machine(kernel=m.kernel, backports=m.policy.backports, memory=64 << 20, swap=m.swap,
                   seed=m.seed, tlb=m.tlb, nodes=2, ncpus=2, hugepages={H2M: 4})


@scenario("S77f", "migrate-hugetlb", "a hugetlb page migrates whole, to its node's pool (S77)",
          backing="hugetlb-private")
def migrate_hugetlb(m):
    """move_pages of any page of a private hugetlb page moves the whole huge
    page (unmap_and_move_huge_page) to a free page of the target node's
    share of the pool; the old page goes back to its node's free pages.
    Data, exclusivity and the mapping's write permission come back."""
    m = _hugetlb_numa(m)
    p = m.spawn()
    P = p.mmap(0, H2M, RW, HUGE)
    p.write(P, b"huge")
    p.write(P + H2M - PAGE, b"end")
    pfn0 = p.pagemap(P).pfn
    check(m.node_of(pfn0) == 0, "the page comes from node 0 first")
    _moved(p, P + 7 * PAGE, 1, "a hugetlb page")
    pfn1 = p.pagemap(P).pfn
    check(m.node_of(pfn1) == 1 and p.pagemap(P + H2M - PAGE).pfn == pfn1 + 511,
          f"the whole huge page must move to node 1 (head {pfn0} -> {pfn1})")
    check(p.read(P, 4) == b"huge" and p.read(P + H2M - PAGE, 3) == b"end", "migration must keep the data")
    check(m.node_hugepages(0)[H2M]["free_hugepages"] == 2 and m.node_hugepages(1)[H2M]["free_hugepages"] == 1,
          f"pool per node after the move: {m.node_hugepages(0)[H2M]}, {m.node_hugepages(1)[H2M]}")
    f0 = p.minflt
    p.write(P, b"W")
    check(p.minflt == f0 and p.pagemap(P).pfn == pfn1, "the writable entry maps the new page writable")
    m.check()


@scenario("S77g", "hugetlb-fork-during-migration", "fork during a hugetlb migration: the child "
          "keeps no uffd-wp it did not ask for (B22)", bug="B22", fails="5.19-6.18",
          backing="hugetlb-private",
          needs=lambda pol: needs(wp=True)(pol, "hugetlb-private"))
def hugetlb_fork_during_migration(m):
    """A private hugetlb page, uffd-wp protected in a WP-registered VMA (no
    EVENT_FORK), migrates; migrate_pages holds no mmap_lock, so another
    thread forks between its unmap and its remap and the child copies the
    migration entry. The child's VMA is not registered: fork must drop the
    entry's uffd-wp bit. From bc70fbf269fd (5.19) it used the present-pte
    accessor on the swap entry: the pfn moves by two pages (still inside
    the folio, so the remap finds it) and the bit stays, so the child's page
    comes back uffd-wp and its writes refault for ever (the engine raises
    Livelock after its bounded retry). Fixed by 83abe2fd5b3a (7.2; 6.12.103, 6.18.44)."""
    from ..errors import EmulatedSignal, Livelock
    from ..sched import Scheduler, preempt_at
    m = _hugetlb_numa(m)
    p = m.spawn()
    P = p.mmap(0, H2M, RW, HUGE)
    p.write(P, b"B22")
    u = _uffd(p, F_WP)
    u.register(P, H2M, WP)
    u.writeprotect(P, H2M, PROTECT)
    got = {}

    def mover():
        got["st"] = p.move_pages([P], [1], MOVE)

    def forker():
        got["child"] = p.fork()

    Scheduler(m, preempt_at("unmap_and_move_huge_page", "forker")).run([mover, forker], ["mover", "forker"])
    c = got.get("child")
    check(got.get("st") == [1] and c is not None, f"the migration and the fork ran ({got})")
    check(m.node_of(c.pagemap(P).pfn) == 1 and c.read(P, 3) == b"B22",
          "the child maps the migrated page (the remap found its entry)")
    check(not c.pagemap(P).uffd_wp, "the child's VMA is not registered for WP, yet its page is uffd-wp")
    try:
        c.write(P, b"c")
    except (EmulatedSignal, Livelock) as e:
        check(False, f"the child's write never completes: {e}")
    check(p.read(P, 3) == b"B22" and c.read(P, 1) == b"c", "the child's write COWs away from the parent")
    m.check()
