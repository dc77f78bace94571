"""THP and mTHP on NUMA nodes and zones, and THP migration (core/zones.pxi,
core/huge.pxi, core/mthp.pxi, core/migrate.pxi; semantics.md sections 4.1,
10 and 14).

A zoned machine (nodes=, movablecore=, cma=) keeps free order-9 blocks per
node and zone: a THP fault takes one on the local node only (__GFP_THISNODE,
alloc_pages_mpol) unless the THP gfp may reclaim directly (defrag=always, or
madvise/defer+madvise in a MADV_HUGEPAGE VMA), an mTHP along the zonelist
like a base page. move_pages/mbind/a NUMA-hinting fault move a THP or mTHP
whole (set_pmd_migration_entry / remove_migration_pmd); with no block on the
target node migrate_pages splits it and moves the pages (not for a NUMA
fault). Each test says what a failure would mean."""
import copy
import errno

import pytest

import mmemu
from mmemu import (FOLL_LONGTERM, FOLL_WRITE, MADV_HUGEPAGE, MADV_NOHUGEPAGE, MAP_ANONYMOUS, MAP_PRIVATE,
                   MPOL_BIND, MPOL_MF_MOVE, PAGE_SIZE as PAGE, PROT_READ, PROT_WRITE)
from migration_window import during_migration
from anon_region import aligned_anon

RW = PROT_READ | PROT_WRITE
PRIV = MAP_PRIVATE | MAP_ANONYMOUS
HPAGE = 2 << 20
NR = 512
PTE_WRITE, PTE_PROTNONE = 1 << 1, 1 << 7
SWP_MIGRATION_READ, SWP_MIGRATION_RX, SWP_MIGRATION_WRITE = 2, 3, 4
SP_MIGRATION_UNMAPPED = 11


def machine(kernel="6.12", nodes=2, **kw):
    kw.setdefault("memory", 4096 * PAGE)            # 2 nodes of 2048 frames: 4 blocks each
    m = mmemu.Machine(kernel=kernel, nodes=nodes, **kw)
    m.thp.enabled = "always"
    return m


def thp(m, p=None, data=b"T"):
    """A process with one PMD-mapped THP at an aligned address, its first
    and last pages written."""
    p = p or m.spawn()
    a = p.mmap(0, 2 * HPAGE, RW, PRIV)
    a = (a + HPAGE - 1) & ~(HPAGE - 1)
    p.write(a, data)
    p.write(a + HPAGE - PAGE, data + b"end")
    assert m.folio_order(p.pagemap(a).pfn) == 9 and pmd_mapped(m, p, a)
    return p, a


def aligned(p, length):
    """A private anon range of length at a 2 MiB-aligned address."""
    return aligned_anon(p, length, HPAGE)


def fill(m, p, npages):
    """npages written base pages (MADV_NOHUGEPAGE), from node 0 first."""
    b = p.mmap(0, npages * PAGE, RW, PRIV)
    p.madvise(b, npages * PAGE, MADV_NOHUGEPAGE)
    p.populate(b, npages * PAGE, write=True)
    return b


def nodes_of(m, p, a, n):
    return {m.node_of(p.pagemap(a + i * PAGE).pfn) for i in range(n)}


def pmd_mapped(m, p, a):
    """The THP at a is mapped by a PMD leaf (its entire mapcount)."""
    return m._engine.thp_info(p.pagemap(a).pfn)[1] >= 1


def thp_mig(m):
    s = m.stats()
    return {k: s["thp_migration_" + k] for k in ("success", "fail", "split")}


def swp_type(raw_pte):
    return (raw_pte >> 1) & 7 if not raw_pte & 1 else None


# ---- allocation on nodes and zones ------------------------------------------------

def test_thp_and_its_block_on_a_two_node_machine():
    """Before, a zoned machine never made a THP. The fault takes an aligned
    block of node 0 (the task's node); freeing it gives the block back
    whole, so the next THP gets the same block."""
    m = machine()
    p, a = thp(m)
    pfn = p.pagemap(a).pfn
    assert pfn % NR == 0 and m.node_of(pfn) == 0
    assert "thp" in m.frame(pfn + 7).flags and "thp" in m.frame(pfn).flags
    free0 = m._engine.node_free(0)
    p.munmap(a, HPAGE)
    assert m._engine.node_free(0) == free0 + NR
    _, b = thp(m, p)
    assert p.pagemap(b).pfn == pfn
    m.check()


def test_mthp_fault_on_a_two_node_machine():
    """An mTHP (6.8+) is carved from a node-0 block on a zoned machine, as
    on one node; several share one block."""
    m = machine()
    m.thp.enabled = "never"
    m.thp.sizes[64 << 10] = "always"
    p = m.spawn()
    a = aligned(p, 64 * PAGE)
    p.populate(a, 64 * PAGE, write=True)
    pfns = [p.pagemap(a + i * PAGE).pfn for i in range(0, 64, 16)]
    assert all(m.folio_order(f) == 4 and m.node_of(f) == 0 for f in pfns)
    assert len({f // NR for f in pfns}) == 1
    p.munmap(a, 64 * PAGE)
    m.check()


@pytest.mark.parametrize("defrag,madvised,thp_on_node1", [
    ("madvise", False, False), ("madvise", True, True), ("always", False, True),
    ("never", True, False), ("defer", True, False), ("defer+madvise", True, True)])
def test_thp_fault_goes_remote_only_when_its_gfp_may_reclaim(defrag, madvised, thp_on_node1):
    """alloc_pages_mpol (6.12; 76e654cc91bb): a THP comes from the local
    node only (__GFP_THISNODE | __GFP_NORETRY); another node only with
    __GFP_DIRECT_RECLAIM in vma_thp_gfp_mask. Else the fault falls back to
    base pages, local first. If THISNODE were ignored, the light cases
    would map a remote THP."""
    m = machine()
    m.thp.defrag = defrag
    p = m.spawn()
    fill(m, p, 1800)                                   # node 0: no free block left
    a = p.mmap(0, 2 * HPAGE, RW, PRIV)
    a = (a + HPAGE - 1) & ~(HPAGE - 1)
    if madvised:
        p.madvise(a, HPAGE, MADV_HUGEPAGE)
    p.write(a, b"x")
    pfn = p.pagemap(a).pfn
    assert (m.folio_order(pfn) == 9) == thp_on_node1
    assert m.node_of(pfn) == (1 if thp_on_node1 else 0)
    m.check()


def test_mthp_falls_back_to_the_next_node_like_a_base_page():
    """vma_alloc_folio for an order below the PMD's has no __GFP_THISNODE
    step: with node 0 out of blocks an mTHP comes from node 1."""
    m = machine()
    m.thp.enabled = "never"
    m.thp.sizes[64 << 10] = "always"
    p = m.spawn()
    fill(m, p, 1800)
    a = aligned(p, 16 * PAGE)
    p.write(a, b"x")
    pfn = p.pagemap(a).pfn
    assert m.folio_order(pfn) == 4 and m.node_of(pfn) == 1
    m.check()


def test_thp_comes_from_zone_movable_first_and_the_huge_zero_page_never():
    """GFP_TRANSHUGE is movable: ZONE_MOVABLE first, as for base pages. The
    huge zero folio is a kernel allocation (~__GFP_MOVABLE): ZONE_NORMAL.
    If not, pins of THPs would never need to migrate, or the zero folio
    would sit in ZONE_MOVABLE."""
    m = mmemu.Machine(kernel="6.12", memory=8 << 20, movablecore=4 << 20)
    m.thp.enabled = "always"
    p, a = thp(m)
    assert m.zone_of(p.pagemap(a).pfn) == "Movable"
    z = p.mmap(0, 2 * HPAGE, RW, PRIV)
    z = (z + HPAGE - 1) & ~(HPAGE - 1)
    p.read(z, 1)
    zpfn = p.pagemap(z).pfn
    assert m.folio_order(zpfn) == 9 and "zero_page" in m.frame(zpfn).flags and m.zone_of(zpfn) == "Normal"
    m.check()


def test_thp_takes_the_cma_area_while_it_holds_over_half_the_free_memory():
    """__rmqueue() (6.12): the CMA rule holds for any order; ZONE_NORMAL
    has free blocks too, so without the rule the THP would land there."""
    m = mmemu.Machine(kernel="6.12", memory=16 << 20, cma=9 << 20)
    m.thp.enabled = "always"
    zones = []
    for _ in range(3):                                # 2304 CMA / 1791 Normal free, then 1792, 1280
        p, a = thp(m, m.spawn())
        zones.append(m.zone_of(p.pagemap(a).pfn))
    assert zones == ["CMA", "CMA", "Normal"]
    m.check()


def test_a_longterm_pin_moves_a_movable_thp_whole_out_of_zone_movable():
    """check_and_migrate_movable_pages works on folios: the THP in
    ZONE_MOVABLE moves whole to ZONE_NORMAL (a PMD-mapped THP again), its
    contents kept. Per page, the pin would isolate tails."""
    m = mmemu.Machine(kernel="6.12", memory=16 << 20, movablecore=6 << 20)
    m.thp.enabled = "always"
    p, a = thp(m)
    assert m.zone_of(p.pagemap(a).pfn) == "Movable"
    pin = p.pin_user_pages(a, 4, FOLL_WRITE | FOLL_LONGTERM)
    pfn = p.pagemap(a).pfn
    assert m.zone_of(pfn) == "Normal" and m.folio_order(pfn) == 9 and pmd_mapped(m, p, a)
    assert p.read(a, 1) == b"T" and p.read(a + HPAGE - PAGE, 4) == b"Tend"
    pin.release()
    m.check()


def test_free_thp_blocks_survive_save_and_load():
    """zone_hfree is engine state: a copy allocates the same blocks."""
    m = machine()
    p, a = thp(m)
    p.munmap(a, HPAGE)
    m2 = copy.deepcopy(m)
    for mm_ in (m, m2):
        _, b = thp(mm_, mm_.processes[0])
    assert m.processes[0].pagemap(b).pfn == m2.processes[0].pagemap(b).pfn
    m2.check()


# ---- THP migration -------------------------------------------------------------

def test_move_pages_moves_a_thp_whole_and_reports_each_page():
    """6.12 do_pages_move: any page of a THP queues the folio; a second page
    of a folio already queued is -EBUSY; a page of one moved already reads
    its node. The THP arrives PMD-mapped on node 1, contents kept, its old
    block free. If the THP moved per page, the tail status and the order
    would differ."""
    m = machine()
    p, a = thp(m)
    old = p.pagemap(a).pfn
    st = p.move_pages([a + 5 * PAGE, a, a + 7 * PAGE], [1, 1, 1], MPOL_MF_MOVE)
    assert st == [1, -errno.EBUSY, 1] and st.not_migrated == 0
    new = p.pagemap(a).pfn
    assert m.node_of(new) == 1 and m.folio_order(new) == 9 and pmd_mapped(m, p, a)
    assert nodes_of(m, p, a, NR) == {1}
    assert p.read(a, 1) == b"T" and p.read(a + HPAGE - PAGE, 4) == b"Tend"
    assert "buddy" in m.frame(old).flags and "buddy" in m.frame(old + NR - 1).flags
    assert thp_mig(m) == {"success": 1, "fail": 0, "split": 0}
    m.check()


def test_mbind_moves_a_thp_whole():
    m = machine()
    p, a = thp(m)
    p.mbind(a, HPAGE, MPOL_BIND, 1 << 1, MPOL_MF_MOVE)
    assert m.folio_order(p.pagemap(a).pfn) == 9 and nodes_of(m, p, a, NR) == {1}
    m.check()


@pytest.mark.parametrize("kernel", ["6.11", "6.12"])
def test_with_no_block_on_the_target_the_thp_is_split_and_its_pages_move(kernel):
    """migrate_pages_batch on -ENOMEM for a large folio: try_split_folio,
    then the pages migrate as base pages; all moved is success for the
    call (rc 0). THP_MIGRATION_FAIL and _SPLIT count it. From 6.12 the
    split maps the all-zero pages to the shared zero page (b1f202060afe),
    so only the written ones move. Without the split the call would fail
    ENOMEM and the THP stay on node 0."""
    m = machine(kernel)
    p, a = thp(m)
    q = m.spawn()
    fill(m, q, 1800)                                  # node 0 ...
    b = fill(m, q, m._engine.node_free(1) - 40)       # ... and node 1 lose their free blocks,
    for i in range(0, 1400, 2):                       # node 1 keeps 700 scattered frames
        q.munmap(b + i * PAGE, PAGE)
    assert m._engine.node_free(1) >= NR + 100
    st = p.move_pages([a], [1], MPOL_MF_MOVE)
    assert st == [1] and st.not_migrated == 0
    written = (a, a + HPAGE - PAGE)
    assert nodes_of(m, p, written[0], 1) == nodes_of(m, p, written[1], 1) == {1}
    pfns = [p.pagemap(a + i * PAGE).pfn for i in range(NR)]
    assert all(m.folio_order(f) == 0 for f in pfns)
    if kernel == "6.12":
        assert pfns.count(0) == NR - 2
    else:
        assert nodes_of(m, p, a, NR) == {1}
    assert p.read(a, 1) == b"T" and p.read(a + HPAGE - PAGE, 4) == b"Tend" and p.read(a + PAGE, 1) == b"\0"
    assert thp_mig(m) == {"success": 0, "fail": 1, "split": 1}
    m.check()


def test_a_pinned_thp_stays(kernel="6.12"):
    """A pinned exclusive THP cannot become a migration entry
    (folio_try_share_anon_rmap_pmd); before 5.19 it is unmapped but its
    extra references fail the move: -EAGAIN either way, still on node 0."""
    for kernel in ("5.18", "6.12"):
        m = machine(kernel)
        p, a = thp(m)
        pin = p.pin_user_pages(a, 1, FOLL_WRITE)
        st, seen = entries_at_unmap(m, p, a, lambda: p.move_pages([a], [1], MPOL_MF_MOVE))
        assert st == [-errno.EAGAIN] and st.not_migrated == 1, kernel
        # 5.19+: never unmapped (no window); before, unmapped and mapped back.
        assert (seen == {}) == (kernel == "6.12"), kernel
        assert nodes_of(m, p, a, NR) == {0} and pmd_mapped(m, p, a), kernel
        pin.release()
        assert p.move_pages([a], [1], MPOL_MF_MOVE) == [1]
        m.check()


def test_an_mthp_moves_whole():
    """6.12: a pte-mapped large folio migrates whole to a new folio of its
    order; if moved per page the order would be 0."""
    m = machine()
    m.thp.enabled = "never"
    m.thp.sizes[64 << 10] = "always"
    p = m.spawn()
    a = aligned(p, 32 * PAGE)
    p.populate(a, 32 * PAGE, write=True)
    p.write(a + 3 * PAGE, b"m")
    st = p.move_pages([a + 3 * PAGE], [1], MPOL_MF_MOVE)
    assert st == [1]
    new = p.pagemap(a).pfn
    assert m.node_of(new) == 1 and m.folio_order(new) == 4 and nodes_of(m, p, a, 16) == {1}
    assert nodes_of(m, p, a + 16 * PAGE, 16) == {0} and p.read(a + 3 * PAGE, 1) == b"m"
    assert thp_mig(m)["success"] == 0            # not PMD-sized: no THP event
    m.check()


# ---- the window between unmap and remap -------------------------------------------

def entries_at_unmap(m, p, a, call):
    eng, seen = m._engine, {}

    def hook(point, mm, va, aux):
        if point == SP_MIGRATION_UNMAPPED:
            seen["pte"] = [eng.pte(p.mm, a + i * PAGE) for i in (0, 1, NR - 1)]
            seen["pm"] = p.pagemap(a)
    eng.set_sched_hook(hook)
    try:
        out = call()
    finally:
        eng.set_sched_hook(None)
    return out, seen


@pytest.mark.parametrize("kernel,ro_kind", [("5.18", SWP_MIGRATION_READ), ("6.12", SWP_MIGRATION_RX)])
def test_the_pmd_migration_entry_names_each_page_and_keeps_its_kind(kernel, ro_kind):
    """set_pmd_migration_entry: writable if the PMD was, else
    readable_exclusive for an exclusive anon THP (5.19+), else readable;
    pagemap shows a swap-like entry (not present) for each page."""
    m = machine(kernel)
    p, a = thp(m)
    head = p.pagemap(a).pfn
    _, seen = entries_at_unmap(m, p, a, lambda: p.move_pages([a], [1], MPOL_MF_MOVE))
    assert [swp_type(x) for x in seen["pte"]] == [SWP_MIGRATION_WRITE] * 3
    assert [x >> 12 for x in seen["pte"]] == [head, head + 1, head + NR - 1]
    assert not seen["pm"].present and seen["pm"].raw >> 62 & 1
    m2 = machine(kernel)
    p2, b = thp(m2)
    p2.mprotect(b, HPAGE, PROT_READ)
    _, seen = entries_at_unmap(m2, p2, b, lambda: p2.move_pages([b], [1], MPOL_MF_MOVE))
    assert swp_type(seen["pte"][0]) == ro_kind
    assert not m2._engine.pte(p2.mm, b) & PTE_WRITE and pmd_mapped(m2, p2, b)
    # remove_migration_pmd: RMAP_EXCLUSIVE from a readable_exclusive entry (5.19+)
    new = p2.pagemap(b).pfn
    assert ("anon_exclusive" in m2.frame(new).flags) == (ro_kind == SWP_MIGRATION_RX)
    assert ("anon_exclusive" in m2.frame(new + 9).flags) == (ro_kind == SWP_MIGRATION_RX)
    m2.check()


def test_a_fault_on_a_pmd_migration_entry_waits_for_the_migration():
    """pmd_migration_entry_wait: a second thread's write in the window
    sleeps until remove_migration_pmd, then writes the new THP."""
    m = machine(ncpus=2)
    p, a = thp(m)
    t = p.thread(cpu=1)
    got, labels = during_migration(m, p, a, lambda: t.write(a + PAGE, b"W"))
    assert not got["pm"].present and got["st"] == [1]
    assert any("migration_entry_wait" in lab for lab in labels), labels
    assert nodes_of(m, p, a, NR) == {1} and p.read(a + PAGE, 1) == b"W" and pmd_mapped(m, p, a)
    m.check()


def test_a_fork_in_the_window_copies_the_pmd_entry_and_both_map_the_new_thp():
    """copy_huge_pmd on a PMD migration entry: readable in parent and child;
    remove_migration_pmd finds the child's copy (rmap walk), so both map
    the new THP read-only and the next writes COW. Missing the copy would
    leave the child with a dangling entry (check() fails)."""
    m = machine(ncpus=2)
    p, a = thp(m)
    got, _ = during_migration(m, p, a, p.fork)
    c = got["other"]
    assert not got["pm"].present and got["st"] == [1]
    for proc in (p, c):
        pfn = proc.pagemap(a).pfn
        assert m.node_of(pfn) == 1 and pmd_mapped(m, proc, a)
        assert not m._engine.pte(proc.mm, a) & PTE_WRITE
    assert p.pagemap(a).pfn == c.pagemap(a).pfn
    m.check()
    c.write(a, b"C")
    assert p.read(a, 1) == b"T" and c.read(a, 1) == b"C"
    m.check()


def test_munmap_in_the_window_leaves_nothing_and_frees_the_new_thp():
    """zap_huge_pmd on a PMD migration entry: no reference held, the table
    goes; the migration finds nothing to remap and frees its target."""
    m = machine(ncpus=2)
    p, a = thp(m)
    free1, ptes = m._engine.node_free(1), m._engine.mm_info(p.mm)["nr_ptes"]
    got, _ = during_migration(m, p, a, lambda: p.munmap(a, HPAGE))
    assert not got["pm"].present
    assert m._engine.node_free(1) == free1
    assert m._engine.mm_info(p.mm)["nr_ptes"] == ptes - 1     # the deposited table withdrawn
    m.check()


def test_a_partial_munmap_in_the_window_splits_the_entry():
    """__split_huge_pmd_locked on a PMD migration entry: pte migration
    entries of each page; the remap maps the rest of the new folio by ptes."""
    m = machine(ncpus=2)
    p, a = thp(m)
    got, _ = during_migration(m, p, a, lambda: p.munmap(a + HPAGE // 2, HPAGE // 2))
    assert not got["pm"].present and got["st"] == [1]
    assert not pmd_mapped(m, p, a) and nodes_of(m, p, a, NR // 2) == {1}
    assert p.read(a, 1) == b"T"
    m.check()


def test_mprotect_in_the_window_makes_the_entry_readable():
    """change_huge_pmd on a migration entry: a writable one becomes readable
    (exclusive for anon), so the remapped THP is not writable."""
    m = machine(ncpus=2)
    p, a = thp(m)
    got, _ = during_migration(m, p, a, lambda: p.mprotect(a, HPAGE, PROT_READ))
    assert got["st"] == [1] and pmd_mapped(m, p, a)
    assert not m._engine.pte(p.mm, a) & PTE_WRITE
    p.mprotect(a, HPAGE, RW)
    p.write(a, b"w")
    m.check()


# ---- NUMA hinting ------------------------------------------------------------------

def test_numa_hint_fault_on_a_pmd_moves_the_thp_whole():
    """do_huge_pmd_numa_page: a THP elsewhere than the faulting CPU's node
    migrates whole and stays PMD-mapped; before, the PMD was split and
    only the page touched moved."""
    m = machine(ncpus=2)
    p, a = thp(m)
    splits = m.stats()["thp_split_pmd"]
    assert m.numa_scan(p, a, HPAGE) == NR
    assert m._engine.pte(p.mm, a) & PTE_PROTNONE
    p.thread(cpu=1).read(a + PAGE, 1)
    assert pmd_mapped(m, p, a) and nodes_of(m, p, a, NR) == {1}
    assert not m._engine.pte(p.mm, a) & PTE_PROTNONE
    assert m.stats()["thp_split_pmd"] == splits
    p.write(a, b"w")
    m.check()


def test_numa_hint_fault_never_splits_a_thp_with_no_room():
    """MR_NUMA_MISPLACED never splits (nosplit): with no block on the CPU's
    node the THP stays, its PMD rebuilt, still huge."""
    m = machine(ncpus=2)
    p, a = thp(m)
    q = m.spawn()
    fill(m, q, 1800)
    fill(m, q, m._engine.node_free(1) - 40)
    assert m.numa_scan(p, a, HPAGE) == NR
    p.thread(cpu=1).read(a, 1)
    assert pmd_mapped(m, p, a) and nodes_of(m, p, a, NR) == {0}
    assert not m._engine.pte(p.mm, a) & PTE_PROTNONE
    assert thp_mig(m) == {"success": 0, "fail": 1, "split": 0}
    m.check()


def test_numa_hint_fault_on_an_mthp_pte_moves_the_folio_whole():
    """do_numa_page (6.12) migrates the folio of the faulting pte: an mTHP
    moves whole (a new folio of its order on the CPU's node). Per page, the
    engine would isolate a tail page (check() fails) or move one page."""
    m = machine(ncpus=2)
    m.thp.enabled = "never"
    m.thp.sizes[64 << 10] = "always"
    p = m.spawn()
    a = aligned(p, 16 * PAGE)
    p.populate(a, 16 * PAGE, write=True)
    p.write(a + 5 * PAGE, b"h")
    assert m.numa_scan(p, a, 16 * PAGE) == 16
    p.thread(cpu=1).read(a + 5 * PAGE, 1)
    new = p.pagemap(a).pfn
    assert m.folio_order(new) == 4 and nodes_of(m, p, a, 16) == {1} and p.read(a + 5 * PAGE, 1) == b"h"
    assert not m._engine.pte(p.mm, a + 9 * PAGE) & PTE_PROTNONE        # every pte remapped fresh
    m.check()


def _written_mthp(m):
    """A 64 KiB mTHP (THP off), each page written with its number: (p, a)."""
    m.thp.enabled = "never"
    m.thp.sizes[64 << 10] = "always"
    p = m.spawn()
    a = aligned(p, 16 * PAGE)
    for i in range(16):
        p.write(a + i * PAGE, b"%d" % i)
    assert m.folio_order(p.pagemap(a).pfn) == 4
    return p, a


def _hinted_mthp(kernel):
    """A 64 KiB mTHP on node 0, each page written, every pte a NUMA hint;
    (m, p, a)."""
    m = machine(kernel, ncpus=2)
    p, a = _written_mthp(m)
    assert nodes_of(m, p, a, 16) == {0}
    assert m.numa_scan(p, a, 16 * PAGE) == 16
    return m, p, a


def _hinted(m, p, a, n):
    return [bool(m._engine.pte(p.mm, a + i * PAGE) & PTE_PROTNONE) for i in range(n)]


@pytest.mark.parametrize("kernel", ["6.9", "6.10"])
def test_numa_hint_on_a_pte_mapped_large_folio_migrates_it_only_from_6_10(kernel):
    """do_numa_page: before d2136d749d76 (6.10) a large folio is left where
    it is ("TODO: handle PTE-mapped THP") and only the faulting pte is
    rebuilt; from 6.10 it moves whole to the faulting CPU's node."""
    m, p, a = _hinted_mthp(kernel)
    p.thread(cpu=1).read(a + 5 * PAGE, 1)
    if kernel == "6.9":
        assert nodes_of(m, p, a, 16) == {0} and m.folio_order(p.pagemap(a).pfn) == 4
        assert _hinted(m, p, a, 16) == [i != 5 for i in range(16)]
    else:
        assert nodes_of(m, p, a, 16) == {1} and m.folio_order(p.pagemap(a).pfn) == 4
        assert not any(_hinted(m, p, a, 16))
    assert [p.read(a + i * PAGE, 2).rstrip(b"\0") for i in range(16)] == [b"%d" % i for i in range(16)]
    m.check()


@pytest.mark.parametrize("kernel", ["6.9", "6.10", "6.18"])
def test_a_local_large_folio_has_all_its_hints_rebuilt_by_one_fault_from_6_10(kernel):
    """numa_rebuild_large_mapping (6.10): a fault on a hint of a large folio
    that does not move (already on the CPU's node) restores every hinted
    pte of the folio, writable as an exclusive anon page may be; before,
    the faulting pte alone."""
    m, p, a = _hinted_mthp(kernel)
    faults = m.stats()["faults"]
    p.thread(cpu=0).read(a + 3 * PAGE, 1)
    assert nodes_of(m, p, a, 16) == {0}
    if kernel == "6.9":
        assert _hinted(m, p, a, 16) == [i != 3 for i in range(16)]
    else:
        assert not any(_hinted(m, p, a, 16))
        assert all(m._engine.pte(p.mm, a + i * PAGE) & PTE_WRITE for i in range(16))
        p.thread(cpu=0).touch(a, 16, write=True)
        assert m.stats()["faults"] == faults + 1        # one hint fault for the folio
    m.check()


def test_the_rebuild_stays_within_the_vma():
    """numa_rebuild_large_mapping clamps to the VMA: a folio straddling an
    mprotect boundary gets only this VMA's ptes back."""
    m, p, a = _hinted_mthp("6.18")
    p.mprotect(a + 8 * PAGE, 8 * PAGE, PROT_READ)       # splits the VMA, keeps the folio; un-hints
    assert m.folio_order(p.pagemap(a).pfn) == 4 and _hinted(m, p, a, 16) == [i < 8 for i in range(16)]
    assert m.numa_scan(p, a, 16 * PAGE) == 8
    p.thread(cpu=0).read(a + 2 * PAGE, 1)
    assert _hinted(m, p, a, 16) == [i >= 8 for i in range(16)]
    p.thread(cpu=0).read(a + 12 * PAGE, 1)
    assert not any(_hinted(m, p, a, 16))
    assert not m._engine.pte(p.mm, a + 12 * PAGE) & PTE_WRITE
    m.check()


def test_a_failed_large_migration_rebuilds_every_hint_without_write():
    """After migrate_misplaced_folio() failed (no room on the CPU's node:
    MR_NUMA_MISPLACED never splits) do_numa_page rebuilds with
    ignore_writable: each pte as vm_page_prot makes it, so a private one is
    read-only and the next write takes a (reuse) fault."""
    m, p, a = _hinted_mthp("6.18")
    q = m.spawn()
    fill(m, q, 1800)
    fill(m, q, m._engine.node_free(1) - 4)
    p.thread(cpu=1).read(a + 5 * PAGE, 1)
    assert nodes_of(m, p, a, 16) == {0} and not any(_hinted(m, p, a, 16))
    assert not any(m._engine.pte(p.mm, a + i * PAGE) & PTE_WRITE for i in range(16))
    p.write(a, b"w")
    assert m._engine.pte(p.mm, a) & PTE_WRITE and nodes_of(m, p, a, 16) == {0}
    m.check()


def test_an_mthp_with_no_room_on_the_target_is_split_and_its_pages_move():
    """The same -ENOMEM rule for a pte-mapped large folio (6.12
    migrate_pages_batch: is_large, not only PMD-sized), without THP events."""
    m = machine()
    p, a = _written_mthp(m)
    q = m.spawn()
    fill(m, q, 1800)
    b = fill(m, q, m._engine.node_free(1) - 40)
    for i in range(0, 200, 2):
        q.munmap(b + i * PAGE, PAGE)
    st = p.move_pages([a], [1], MPOL_MF_MOVE)
    assert st == [1] and nodes_of(m, p, a, 16) == {1} and m.folio_order(p.pagemap(a).pfn) == 0
    assert [p.read(a + i * PAGE, 2).rstrip(b"\0") for i in range(16)] == [b"%d" % i for i in range(16)]
    assert thp_mig(m) == {"success": 0, "fail": 0, "split": 0}
    m.check()


def test_an_mremap_in_the_window_moves_the_pmd_entry_and_the_remap_finds_it():
    """move_huge_pmd moves the PMD migration entry whole; remove_migration_ptes'
    rmap walk finds it at its new address. Looking only where it was found,
    the entry would dangle (check() fails, the read never returns)."""
    m = machine(ncpus=2)
    p, a = thp(m)
    dst = aligned(p, HPAGE)
    got, _ = during_migration(
        m, p, a, lambda: p.mremap(a, HPAGE, HPAGE, mmemu.MREMAP_MAYMOVE | mmemu.MREMAP_FIXED, dst))
    assert not got["pm"].present and got["st"] == [1]
    assert pmd_mapped(m, p, dst) and nodes_of(m, p, dst, NR) == {1} and p.read(dst, 1) == b"T"
    m.check()
