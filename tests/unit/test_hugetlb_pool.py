"""The hugetlb pool at run time (mm/hugetlb.c, 6.12): writes of nr_hugepages
(set_max_huge_pages: surplus pages made persistent first, fresh pages from
free 2 MiB blocks on the nodes in turn, free pages released but never below
the pages in use or reserved, pages in use beyond the count made surplus),
nr_overcommit_hugepages and surplus pages (alloc_surplus_hugetlb_folio at a
fault, gather_surplus_pages at a reservation, return_unused_surplus_pages
when reservations go, free_huge_folio giving a surplus page back to the page
allocator), and a node's own nr_hugepages file.
"""
import errno

import pytest

import mmemu
import mmemu.constants as C
from mmemu.errors import Sigbus

H2M = 2 << 20
H1G = 1 << 30
RW = C.PROT_READ | C.PROT_WRITE
HUGE = C.MAP_PRIVATE | C.MAP_ANONYMOUS | C.MAP_HUGETLB


def pool(m, size=H2M):
    return m.hugepages[size]


def used(m):
    return m.memory_usage()["frames_used"]


def test_nr_hugepages_takes_free_blocks_and_gives_them_back():
    m = mmemu.Machine(memory=64 << 20)
    base = used(m)
    assert m.set_hugepages(H2M, 4) == 4
    assert pool(m) == {"nr_hugepages": 4, "free_hugepages": 4, "resv_hugepages": 0,
                       "surplus_hugepages": 0, "nr_overcommit_hugepages": 0}
    assert used(m) == base + 4 * 512                    # the pool's blocks left the page allocator
    m.check()
    p = m.spawn()
    a = p.mmap(0, H2M, RW, HUGE)
    p.write(a + 5, b"h")
    assert m.frame(p.pagemap(a).pfn).flags >= {"huge", "compound_head"}
    assert pool(m)["free_hugepages"] == 3
    # Down to one: the three free pages go back; the one in use stays.
    assert m.set_hugepages(H2M, 1) == 1
    assert pool(m)["free_hugepages"] == 0 and pool(m)["surplus_hugepages"] == 0
    m.check()
    # Down to none: the page in use cannot go, so it becomes surplus ...
    assert m.set_hugepages(H2M, 0) == 1
    assert pool(m)["surplus_hugepages"] == 1 and p.read(a + 5, 1) == b"h"
    m.check()
    # ... and leaves the pool when it is freed.
    p.munmap(a, H2M)
    assert pool(m)["nr_hugepages"] == 0 and pool(m)["surplus_hugepages"] == 0
    assert used(m) == base                              # every block back with the page allocator
    m.check()


def test_the_pool_never_drops_below_the_pages_reserved_or_in_use():
    m = mmemu.Machine(memory=64 << 20, hugepages={H2M: 4})
    p = m.spawn()
    a = p.mmap(0, 3 * H2M, RW, HUGE)                    # 3 reserved
    p.write(a, b"x")                                    # 1 in use, 2 reserved
    assert m.set_hugepages(H2M, 0) == 3                 # min_count: resv + in use
    assert pool(m) == {"nr_hugepages": 3, "free_hugepages": 2, "resv_hugepages": 2,
                       "surplus_hugepages": 3, "nr_overcommit_hugepages": 0}
    p.write(a + H2M, b"y")                              # a reserved page is still there for it
    m.check()
    p.munmap(a, 3 * H2M)                                # surplus pages all leave
    assert pool(m)["nr_hugepages"] == 0 and pool(m)["surplus_hugepages"] == 0
    m.check()


def test_asking_for_more_than_memory_holds_gives_what_fits():
    m = mmemu.Machine(memory=64 << 20)
    got = m.set_hugepages(H2M, 10**9)
    assert 0 < got < 32 and pool(m)["nr_hugepages"] == got
    p = m.spawn()                                       # base pages are still to be had for tables
    a = p.mmap(0, 4096, RW, C.MAP_PRIVATE | C.MAP_ANONYMOUS)
    p.write(a, b"s")
    m.check()
    assert m.set_hugepages(H2M, 0) == 0
    m.check()


def test_a_reservation_beyond_the_pool_makes_surplus_pages_within_overcommit():
    m = mmemu.Machine(memory=64 << 20)
    p = m.spawn()
    with pytest.raises(OSError) as ei:                  # no pool, no overcommit
        p.mmap(0, H2M, RW, HUGE)
    assert ei.value.errno == errno.ENOMEM
    m.set_overcommit_hugepages(H2M, 2)
    with pytest.raises(OSError) as ei:                  # gather_surplus_pages: all or nothing
        p.mmap(0, 3 * H2M, RW, HUGE)
    assert ei.value.errno == errno.ENOMEM and pool(m)["nr_hugepages"] == 0
    a = p.mmap(0, 2 * H2M, RW, HUGE)
    assert pool(m) == {"nr_hugepages": 2, "free_hugepages": 2, "resv_hugepages": 2,
                       "surplus_hugepages": 2, "nr_overcommit_hugepages": 2}
    p.write(a, b"s")
    assert pool(m)["free_hugepages"] == 1 and pool(m)["resv_hugepages"] == 1
    m.check()
    p.munmap(a + H2M, H2M)                              # its unused reservation: the free surplus page goes
    assert pool(m) == {"nr_hugepages": 1, "free_hugepages": 0, "resv_hugepages": 0,
                       "surplus_hugepages": 1, "nr_overcommit_hugepages": 2}
    m.check()
    p.munmap(a, H2M)
    assert pool(m)["nr_hugepages"] == 0 and pool(m)["surplus_hugepages"] == 0
    m.check()


def test_a_noreserve_fault_takes_a_surplus_page_or_sigbus():
    m = mmemu.Machine(memory=64 << 20)
    m.set_overcommit_hugepages(H2M, 1)
    p = m.spawn()
    a = p.mmap(0, 2 * H2M, RW, HUGE | C.MAP_NORESERVE)
    assert pool(m)["nr_hugepages"] == 0
    p.write(a, b"1")                                    # alloc_surplus_hugetlb_folio
    assert pool(m) == {"nr_hugepages": 1, "free_hugepages": 0, "resv_hugepages": 0,
                       "surplus_hugepages": 1, "nr_overcommit_hugepages": 1}
    with pytest.raises(Sigbus):
        p.write(a + H2M, b"2")                          # surplus == overcommit
    m.check()
    p.munmap(a, 2 * H2M)
    assert pool(m)["nr_hugepages"] == 0
    m.check()


def test_surplus_pages_become_persistent_before_fresh_ones_are_made():
    m = mmemu.Machine(memory=64 << 20)
    m.set_overcommit_hugepages(H2M, 2)
    p = m.spawn()
    a = p.mmap(0, 2 * H2M, RW, HUGE)                    # two surplus pages
    before = used(m)
    assert m.set_hugepages(H2M, 2) == 2
    assert pool(m)["surplus_hugepages"] == 0 and used(m) == before     # the same two pages
    p.munmap(a, 2 * H2M)
    assert pool(m)["nr_hugepages"] == 2 and pool(m)["free_hugepages"] == 2   # persistent now: kept
    m.check()


def test_a_nodes_file_counts_on_that_node_and_the_global_one_goes_on_from_it():
    m = mmemu.Machine(memory=128 << 20, nodes=2)

    def per_node():
        return [m.node_hugepages(n)[H2M]["nr_hugepages"] for n in (0, 1)]
    assert m.set_hugepages(H2M, 1) == 1 and per_node() == [1, 0]   # next_nid_to_alloc: 0, then 1
    assert m.set_hugepages(H2M, 2, node=0) == 2 and per_node() == [2, 0]
    # hstate_next_node_to_alloc() over a one-node mask leaves next_nid_to_alloc
    # on that node: the next global page is node 0's again.
    assert m.set_hugepages(H2M, 3) == 3 and per_node() == [3, 0]
    assert m.set_hugepages(H2M, 5) == 5 and per_node() == [4, 1]
    # Node 1's file to 0: only its own pages go.
    assert m.set_hugepages(H2M, 0, node=1) == 4 and per_node() == [4, 0]
    m.check()


def test_the_run_time_pool_survives_save_and_load(tmp_path):
    m = mmemu.Machine(memory=64 << 20, nodes=2)
    m.set_hugepages(H2M, 3)
    m.set_overcommit_hugepages(H2M, 4)
    p = m.spawn()
    a = p.mmap(0, 5 * H2M, RW, HUGE)                    # 2 surplus pages gathered
    p.write(a + 4 * H2M, b"z")
    m.save(tmp_path / "m.npz")
    m2 = mmemu.Machine.load(tmp_path / "m.npz")
    m2.check()
    assert m2.hugepages == m.hugepages
    assert [m2.node_hugepages(n) for n in (0, 1)] == [m.node_hugepages(n) for n in (0, 1)]
    q = m2.processes[0]
    assert q.read(a + 4 * H2M, 1) == b"z"
    q.munmap(a, 5 * H2M)
    assert m2.hugepages[H2M]["nr_hugepages"] == 3 and m2.hugepages[H2M]["surplus_hugepages"] == 0
    m2.check()


def test_what_the_files_refuse():
    m = mmemu.Machine(memory=64 << 20)
    for size in (4096, 3 << 20):
        with pytest.raises(ValueError, match="page size"):
            m.set_hugepages(size, 1)
    with pytest.raises(ValueError, match="1 GiB"):
        m.set_hugepages(H1G, 1)
    with pytest.raises(ValueError, match="1 GiB"):
        m.set_overcommit_hugepages(H1G, 1)              # EINVAL for gigantic pages
    for bad in (-1, 1 << 64):
        with pytest.raises(ValueError):
            m.set_hugepages(H2M, bad)
        with pytest.raises(ValueError):
            m.set_overcommit_hugepages(H2M, bad)
    with pytest.raises(TypeError):
        m.set_hugepages(H2M, 1.5)
    with pytest.raises(ValueError, match="no node"):
        m.set_hugepages(H2M, 1, node=1)
    with pytest.raises(ValueError, match="ZONE_MOVABLE"):
        mmemu.Machine(memory=64 << 20, movablecore=16 << 20).set_hugepages(H2M, 1)
    assert pool(m)["nr_hugepages"] == 0
    m.check()


def test_a_zap_restores_no_reservation_while_the_pool_has_surplus_pages():
    # __unmap_hugepage_range (6.8+) gives the owner's reservation back with
    # the freed page (restore_reserve) only while surplus_huge_pages is 0:
    # here the freed page is a surplus one, and goes back to the page
    # allocator without touching the other mapping's reservation.
    m = mmemu.Machine(kernel="6.18", memory=64 << 20)
    m.set_overcommit_hugepages(H2M, 2)
    p = m.spawn()
    a = p.mmap(0, H2M, RW, HUGE)
    p.write(a, b"a")
    b = p.mmap(0, H2M, RW, HUGE)                        # a second surplus page, reserved
    p.munmap(a, H2M)
    assert pool(m) == {"nr_hugepages": 1, "free_hugepages": 1, "resv_hugepages": 1,
                       "surplus_hugepages": 1, "nr_overcommit_hugepages": 2}
    m.check()
    p.write(b, b"b")                                    # its reservation still holds a page
    m.check()


def test_a_saved_pool_that_disagrees_with_itself_is_refused():
    """The core takes a page's size and head from the block map and pops
    free heads from the stacks: a snapshot whose map or stacks do not match
    its counts is a clear error at load, not a machine that corrupts itself."""
    m = mmemu.Machine(memory=64 << 20, nodes=2)
    m.set_hugepages(H2M, 3)
    fn, args = m._engine.__reduce__()
    good = args[-1]
    assert fn(*args[:-1], good).hugetlb_pool() == m._engine.hugetlb_pool()

    def corrupt(change):
        st = {k: (v.copy() if hasattr(v, "copy") else list(v) if isinstance(v, list) else v) for k, v in good.items()}
        st["hugetlb_stacks"] = [s.copy() for s in good["hugetlb_stacks"]]
        change(st)
        with pytest.raises(ValueError, match="hugetlb"):
            fn(*args[:-1], st)

    first = int(good["hugetlb_blocks"].nonzero()[0][0])
    corrupt(lambda st: st["hugetlb_blocks"].__setitem__(first, 0))                  # a page unmarked
    corrupt(lambda st: st["hugetlb_blocks"].__setitem__(first + 5, 1))              # one marked too many
    corrupt(lambda st: st["hugetlb_blocks"].__setitem__(first, 2))                  # a 2 MiB page called 1 GiB
    corrupt(lambda st: st["hugetlb_stacks"][0].__setitem__(0, 4096 + 512))          # a free head not in the pool
    corrupt(lambda st: st["hugetlb_stacks"][0].__setitem__(0, good["hugetlb_stacks"][0][0] + 1))   # not a head
    corrupt(lambda st: st["hugetlb_surplus"].__setitem__(0, -1))
