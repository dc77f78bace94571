"""hugetlb on NUMA nodes and hugetlb page migration (mm/hugetlb.c
hugetlb_hstate_alloc_pages / dequeue_hugetlb_folio_nodemask /
alloc_hugetlb_folio_nodemask / copy_hugetlb_page_range, mm/migrate.c
add_folio_for_migration / unmap_and_move_huge_page / remove_migration_pte,
mm/rmap.c try_to_migrate_one; 6.12 unless a test names an era), and B22:
fork during a hugetlb migration corrupts the child's migration entry when
it clears uffd-wp (bc70fbf269fd 5.19 .. 83abe2fd5b3a 7.2; 6.12.103).
"""
import errno

import pytest

import mmemu
import mmemu.constants as C
from mmemu import uffd as U
from mmemu.sched import Scheduler, preempt_at

PAGE = C.PAGE_SIZE
H2M = 2 << 20
H1G = 1 << 30
RW = C.PROT_READ | C.PROT_WRITE
HUGE = C.MAP_PRIVATE | C.MAP_ANONYMOUS | C.MAP_HUGETLB
PM_UFFD_WP = 1 << 57
SP_MIGRATION_UNMAPPED = 11


def machine(kernel="6.18.44", n2m=5, n1g=0, nodes=2, **kw):
    memory = (4 << 30) if n1g else 64 << 20
    return mmemu.Machine(kernel=kernel, memory=memory, nodes=nodes, hugepages={H2M: n2m, H1G: n1g}, **kw)


def node_of_va(m, p, va):
    return m.node_of(p.pagemap(va).pfn)


# ---- the pool over nodes ---------------------------------------------------------

def test_the_boot_pool_is_spread_over_the_nodes_in_turn_from_node_0():
    m = machine(n2m=5, nodes=2)
    assert m.node_hugepages(0)[H2M]["nr_hugepages"] == 3
    assert m.node_hugepages(1)[H2M]["nr_hugepages"] == 2
    assert m.hugepages[H2M]["nr_hugepages"] == 5
    m3 = machine(n2m=4, nodes=3)
    assert [m3.node_hugepages(n)[H2M]["nr_hugepages"] for n in range(3)] == [2, 1, 1]
    for mm in (m, m3):
        mm.check()
    with pytest.raises(ValueError):
        m.node_hugepages(2)
    # a node too small for its share is a ValueError naming the pool
    with pytest.raises(ValueError, match="do not fit"):
        mmemu.Machine(memory=16 << 20, nodes=2, hugepages={H2M: 8})


def test_gigantic_pages_sit_on_their_node_and_their_tails_find_them():
    m = machine(n2m=2, n1g=2)
    assert m.node_hugepages(0)[H1G]["nr_hugepages"] == 1 == m.node_hugepages(1)[H1G]["nr_hugepages"]
    p = m.spawn()
    a = p.mmap(0, 2 * H1G, RW, HUGE | C.MAP_HUGE_1GB)
    p.write(a, b"0")
    p.write(a + H1G + 5 * PAGE, b"1")
    heads = [p.pagemap(a).pfn, p.pagemap(a + H1G).pfn]
    assert [m.node_of(h) for h in heads] == [0, 1]
    assert all(h % (H1G // PAGE) == 0 for h in heads)
    assert m.frame(heads[1] + 5).refcount == m.frame(heads[1]).refcount   # a tail counts on its head
    m.check()


def test_faults_take_node_0_first_then_fall_back_to_the_next_node():
    m = machine(n2m=4)                                  # 2 on each node
    p = m.spawn()
    a = p.mmap(0, 4 * H2M, RW, HUGE)
    for i in range(4):
        p.write(a + i * H2M, bytes([i]))
    assert [node_of_va(m, p, a + i * H2M) for i in range(4)] == [0, 0, 1, 1]
    assert m.node_hugepages(0)[H2M]["free_hugepages"] == 0 == m.node_hugepages(1)[H2M]["free_hugepages"]
    p.munmap(a, H2M)
    assert m.node_hugepages(0)[H2M]["free_hugepages"] == 1
    m.check()


def test_a_pool_survives_save_and_load(tmp_path):
    m = machine(n2m=4)
    p = m.spawn()
    a = p.mmap(0, 3 * H2M, RW, HUGE)
    p.write(a + 2 * H2M, b"z")
    path = tmp_path / "m.npz"
    m.save(path)
    m2 = mmemu.Machine.load(path)
    m2.check()
    q = m2.processes[0]
    assert q.read(a + 2 * H2M, 1) == b"z" and m2.node_of(q.pagemap(a + 2 * H2M).pfn) == 0
    assert m2.node_hugepages(1)[H2M]["free_hugepages"] == 2
    q.write(a, b"y")
    q.write(a + H2M, b"x")                              # node 0 full: node 1
    assert m2.node_of(q.pagemap(a + H2M).pfn) == 1
    m2.check()


# ---- move_pages of hugetlb pages -------------------------------------------------

@pytest.mark.parametrize("size", [H2M, H1G])
def test_move_pages_moves_a_whole_huge_page_with_its_data(size):
    m = machine(n2m=2, n1g=2) if size == H1G else machine(n2m=4)
    p = m.spawn()
    a = p.mmap(0, size, RW, HUGE | (C.MAP_HUGE_1GB if size == H1G else 0))
    p.write(a, b"head")
    p.write(a + size - PAGE, b"tail")
    old = p.pagemap(a).pfn
    assert m.node_of(old) == 0
    st = p.move_pages([a + 3 * PAGE], [1], C.MPOL_MF_MOVE)
    assert st == [1] and st.not_migrated == 0
    new = p.pagemap(a).pfn
    assert m.node_of(new) == 1 and p.pagemap(a + size - PAGE).pfn == new + size // PAGE - 1
    assert p.read(a, 4) == b"head" and p.read(a + size - PAGE, 4) == b"tail"
    assert p.pagemap(a).exclusive and p.pagemap(a).present
    assert m.node_hugepages(0)[size]["free_hugepages"] == m.node_hugepages(0)[size]["nr_hugepages"]
    assert "buddy" not in m.frame(old).flags and m.frame(old).refcount == 0    # back in node 0's pool
    assert p.move_pages([a]) == [1]                     # the status query
    assert p.hugetlb_usage == size
    p.write(a, b"W")                                    # still writable: the entry was
    assert p.pagemap(a).pfn == new
    m.check()


def test_move_pages_to_a_node_without_a_free_page_takes_a_temporary_one():
    """alloc_hugetlb_folio_nodemask() finds no free page on node 1, so
    alloc_migrate_hugetlb_folio() makes one there from the buddy allocator
    (HPG_temporary: in the pool's count while it lives, beyond any
    overcommit); move_hugetlb_state() hands the mark to the old page, which
    goes back to the page allocator when freed. The pool keeps its size and
    one page moved from node 0 to node 1."""
    m = machine(n2m=3)                                  # 2 on node 0, 1 on node 1
    p = m.spawn()
    a = p.mmap(0, 3 * H2M, RW, HUGE)
    for i in range(3):
        p.write(a + i * H2M, b"d")
    old = p.pagemap(a).pfn
    used = m.memory_usage()["frames_used"]
    assert node_of_va(m, p, a) == 0 and m.hugepages[H2M]["free_hugepages"] == 0
    assert p.move_pages([a], [1], C.MPOL_MF_MOVE) == [1]
    assert p.read(a, 1) == b"d" and node_of_va(m, p, a) == 1
    assert m.hugepages[H2M]["nr_hugepages"] == 3 and m.hugepages[H2M]["free_hugepages"] == 0
    assert [m.node_hugepages(n)[H2M]["nr_hugepages"] for n in (0, 1)] == [1, 2]
    assert "buddy" in m.frame(old).flags                 # the old page is the page allocator's again
    assert m.memory_usage()["frames_used"] == used
    m.check()
    p.munmap(a, 3 * H2M)                                 # the new page is an ordinary pool page now
    assert m.hugepages[H2M]["free_hugepages"] == 3
    m.check()


def test_a_reserved_free_page_is_not_a_migration_target():
    # available_huge_pages(): free pages minus reserved ones. Node 1's free
    # page is reserved, so the move takes a temporary page, and the reserved
    # one stays free.
    m = machine(n2m=4)
    p = m.spawn()
    a = p.mmap(0, H2M, RW, HUGE)
    p.write(a, b"d")
    p.mmap(0, 3 * H2M, RW, HUGE)                        # reserves the other three
    assert p.move_pages([a], [1], C.MPOL_MF_MOVE) == [1]
    assert node_of_va(m, p, a) == 1
    assert m.hugepages[H2M] == {"nr_hugepages": 4, "free_hugepages": 3, "resv_hugepages": 3,
                                "surplus_hugepages": 0, "nr_overcommit_hugepages": 0}
    assert m.node_hugepages(1)[H2M] == {"nr_hugepages": 3, "free_hugepages": 2, "surplus_hugepages": 0}
    m.check()


def test_move_pages_of_a_gigantic_page_to_a_node_without_a_free_one_is_enomem():
    # No temporary gigantic pages (alloc_migrate_hugetlb_folio gives up on them).
    m = machine(n2m=0, n1g=1)                           # on node 0
    p = m.spawn()
    a = p.mmap(0, H1G, RW, HUGE | C.MAP_HUGE_1GB)
    p.write(a, b"g")
    with pytest.raises(OSError) as ei:
        p.move_pages([a], [1], C.MPOL_MF_MOVE)
    assert ei.value.errno == errno.ENOMEM
    assert p.read(a, 1) == b"g" and node_of_va(m, p, a) == 0
    m.check()


def test_a_shared_hugetlb_page_needs_move_all_and_its_cache_follows():
    m = machine(n2m=4)
    p = m.spawn()
    fd = p.memfd_create("h", C.MFD_HUGETLB)
    p.ftruncate(fd, H2M)
    a = p.mmap(0, H2M, RW, C.MAP_SHARED, fd, 0)
    p.write(a, b"S")
    c = p.fork()
    assert c.read(a, 1) == b"S"
    assert p.move_pages([a], [1], C.MPOL_MF_MOVE) == [-errno.EACCES]
    assert p.move_pages([a], [1], C.MPOL_MF_MOVE_ALL) == [1]
    assert node_of_va(m, c, a) == 1 and c.pagemap(a).pfn == p.pagemap(a).pfn
    b = c.mmap(0, H2M, C.PROT_READ, C.MAP_SHARED, fd, 0)
    assert c.read(b, 1) == b"S" and c.pagemap(b).pfn == p.pagemap(a).pfn   # from the cache
    c.write(a, b"T")
    assert p.read(a, 1) == b"T"
    m.check()


def test_a_pinned_exclusive_page_does_not_move():
    m = machine(n2m=4)
    p = m.spawn()
    a = p.mmap(0, H2M, RW, HUGE)
    p.write(a, b"P")
    pin = p.pin_user_pages(a, 1, C.FOLL_WRITE | C.FOLL_LONGTERM)
    assert p.move_pages([a], [1], C.MPOL_MF_MOVE) == [-errno.EAGAIN]
    assert node_of_va(m, p, a) == 0 and p.pagemap(a).exclusive
    pin.release()
    assert p.move_pages([a], [1], C.MPOL_MF_MOVE) == [1]
    m.check()


def test_a_fault_on_a_hugetlb_migration_entry_waits():
    m = machine(n2m=4, ncpus=2)
    p = m.spawn()
    a = p.mmap(0, H2M, RW, HUGE)
    p.write(a + PAGE, b"Q")
    t = p.thread(cpu=1)
    got = {}

    def mover():
        got["st"] = p.move_pages([a], [1], C.MPOL_MF_MOVE)

    def reader():
        got["data"] = t.read(a + PAGE, 1)

    s = Scheduler(m, preempt_at("unmap_and_move_huge_page", "reader"), record=True)
    s.run([mover, reader], ["mover", "reader"])
    assert any("migration_entry_wait" in st.label for st in s.trace)
    assert got["st"] == [1] and got["data"] == b"Q" and node_of_va(m, p, a) == 1
    m.check()


# ---- B22: fork during a hugetlb migration ------------------------------------------

def fork_during_migration(kernel, backports=()):
    """A uffd-wp-protected private hugetlb page (the parent's VMA registered
    for WP, no EVENT_FORK) migrates; between its unmap and its remap another
    thread forks. Returns (machine, parent, child, address, child's pagemap
    entry seen while the migration was on)."""
    m = machine(kernel=kernel, n2m=4, ncpus=2, backports=backports)
    p = m.spawn()
    a = p.mmap(0, H2M, RW, HUGE)
    p.write(a, b"B22")
    u = p.userfaultfd(U.O_CLOEXEC | U.O_NONBLOCK)
    u.api(U.UFFD_FEATURE_PAGEFAULT_FLAG_WP)
    u.register(a, H2M, U.UFFDIO_REGISTER_MODE_WP)
    u.writeprotect(a, H2M, U.UFFDIO_WRITEPROTECT_MODE_WP)
    t = p.thread(cpu=1)
    got = {}

    def mover():
        got["st"] = p.move_pages([a], [1], C.MPOL_MF_MOVE)

    def forker():
        got["child"] = c = p.fork()
        got["during"] = c.pagemap(a)

    s = Scheduler(m, preempt_at("unmap_and_move_huge_page", "forker"))
    s.run([mover, forker], ["mover", "forker"])
    assert got["st"] == [1]
    return m, p, got["child"], a, got["during"]


@pytest.mark.parametrize("kernel,backports,bug", [
    ("5.19", (), True), ("6.12", (), True), ("6.12.102", (), True), ("6.12.103", (), False),
    ("6.18", (), True), ("6.18.43", (), True), ("6.18.44", (), False),
    ("6.18", ("83abe2fd5b3a",), False)])            # the mainline fix (7.2) as a backport
def test_b22_the_child_of_a_fork_during_migration_keeps_uffd_wp(kernel, backports, bug):
    m, p, c, a, during = fork_during_migration(kernel, backports)
    assert not during.present                           # the child copied the migration entry
    assert bool(during.raw & PM_UFFD_WP) == bug
    # remove_migration_ptes() found the child's entry either way (its pfn,
    # two pages off with B22, is still inside the folio): both map the new page.
    assert c.pagemap(a).present and m.node_of(c.pagemap(a).pfn) == 1
    assert c.pagemap(a).pfn == p.pagemap(a).pfn
    assert c.read(a, 3) == b"B22"
    assert bool(c.pagemap(a).raw & PM_UFFD_WP) == bug   # the bit comes back on the child's page
    assert p.pagemap(a).raw & PM_UFFD_WP                 # the parent's VMA is registered: it keeps it
    if bug:
        # hugetlb_wp() never COWs a uffd-wp entry, and the child's VMA is
        # not registered, so no WP fault resolves it: Linux refaults for
        # ever; the engine's bounded retry ends it as Livelock.
        with pytest.raises(mmemu.Livelock):
            c.write(a, b"c")
    else:
        c.write(a, b"c")
        assert c.read(a, 1) == b"c" and p.read(a, 3) == b"B22"
    m.check()


def test_a_written_page_migrates_with_a_soft_dirty_entry():
    """try_to_migrate_one carries pte_soft_dirty into the entry; a hugetlb pte
    is made dirty only by huge_pte_mkdirty, which sets soft-dirty on x86."""
    m = machine(n2m=4, ncpus=2)
    p = m.spawn()
    a = p.mmap(0, H2M, RW, HUGE)
    p.write(a, b"d")
    seen = {}

    def hook(point, mm, va, aux):
        if point == 13:                                 # SP_HUGETLB_MIGRATION_UNMAPPED
            seen["pte"] = m._engine.pte(p.mm, a)
    m._engine.set_sched_hook(hook)
    try:
        assert p.move_pages([a], [1], C.MPOL_MF_MOVE) == [1]
    finally:
        m._engine.set_sched_hook(None)
    assert not seen["pte"] & 1 and (seen["pte"] >> 1) & 7 == 4     # a writable migration entry
    assert seen["pte"] & (1 << 4)                       # PTE_SOFT_DIRTY
    m.check()


def test_the_core_refuses_a_hugetlb_writeprotect_range_it_cannot_walk():
    m = machine(n2m=2, n1g=2)
    p = m.spawn()
    a = p.mmap(0, H1G, RW, HUGE | C.MAP_HUGE_1GB)
    flags = [v for v in p.vmas if v.start == a][0].flags
    for start, end in ((a + H2M, a + H1G), (a, a + H1G + H2M), (a, a + H2M)):
        with pytest.raises(ValueError):
            m._engine.uffd_writeprotect(p.mm, start, end, True, True, flags)
    m.check()


def test_mbind_moves_each_huge_page_once_and_leaves_shared_ones_without_failing():
    """queue_folios_hugetlb(): one queue entry per huge page (not one per base
    page), a page another process maps is left without MOVE_ALL and not
    counted failed (so MPOL_MF_STRICT does not fail), the target is a free
    page of a bound node's share of the pool."""
    m = machine(n2m=4)
    p = m.spawn()
    a = p.mmap(0, 2 * H2M, RW, HUGE)
    p.write(a, b"x")
    p.write(a + H2M, b"y")
    p.mbind(a, 2 * H2M, C.MPOL_BIND, 1 << 1, C.MPOL_MF_MOVE)
    assert [node_of_va(m, p, a + i * H2M) for i in range(2)] == [1, 1]
    assert p.read(a, 1) == b"x" and p.read(a + H2M, 1) == b"y"
    m.check()
    c = p.fork()
    p.mbind(a, 2 * H2M, C.MPOL_BIND, 1 << 0, C.MPOL_MF_MOVE | C.MPOL_MF_STRICT)
    assert [node_of_va(m, p, a + i * H2M) for i in range(2)] == [1, 1]
    p.mbind(a, 2 * H2M, C.MPOL_BIND, 1 << 0, C.MPOL_MF_MOVE_ALL)
    assert [node_of_va(m, c, a + i * H2M) for i in range(2)] == [0, 0]
    assert c.pagemap(a).pfn == p.pagemap(a).pfn
    m.check()


def test_a_tail_between_two_nodes_gigantic_pages_finds_its_own_head():
    """With a 1 GiB page on each node, the frames between them (node 1's
    2 MiB pages, its THPs) are not 1 GiB tails: folio_of must ask the node."""
    m = machine(n2m=2, n1g=2, thp="always")
    p = m.spawn()
    a = p.mmap(0, 2 * H2M, RW, HUGE)
    p.write(a, b"0")
    p.write(a + H2M + 7 * PAGE, b"1")                   # node 1's 2 MiB page
    head = p.pagemap(a + H2M).pfn
    assert m.node_of(head) == 1 and head % 512 == 0
    assert m.frame(head + 7).refcount == m.frame(head).refcount == 1
    b = p.mmap(0, 4 * H2M, RW, C.MAP_PRIVATE | C.MAP_ANONYMOUS)
    p.madvise(b, 4 * H2M, C.MADV_HUGEPAGE)
    for i in range(4):
        p.write(b + i * H2M + 3 * PAGE, b"t")
    m.check()
    assert m.folio_order(head + 7) == 9
    p.munmap(a, 2 * H2M)
    m.check()


def test_folio_order_of_each_kind_of_page_on_two_nodes():
    m = machine(n2m=2, n1g=2)
    p = m.spawn()
    g = p.mmap(0, 2 * H1G, RW, HUGE | C.MAP_HUGE_1GB)
    p.write(g + H1G + 9 * PAGE, b"g")
    h = p.mmap(0, 2 * H2M, RW, HUGE)
    p.write(h + H2M + PAGE, b"h")
    s = p.mmap(0, PAGE, RW, C.MAP_PRIVATE | C.MAP_ANONYMOUS)
    p.write(s, b"s")
    assert m.folio_order(p.pagemap(g + H1G + 9 * PAGE).pfn) == 18
    assert m.folio_order(p.pagemap(h + H2M + PAGE).pfn) == 9
    assert m.folio_order(p.pagemap(s).pfn) == 0
    m.check()
