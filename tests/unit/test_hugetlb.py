"""hugetlb (core/hugetlb.pxi, mm/hugetlb.c 6.12 unless a test says an era):
the boot-time pool, MAP_HUGETLB and MFD_HUGETLB memory, reservations,
faults, COW by mapcount (B2b), fork, the owner taking a page back, zap,
madvise/mprotect/mremap rules, GUP and what /proc shows.

Each rule is checked by a case that fails without it; the era knobs
(hugetlb_fork_copy_pinned 5.12, hugetlb_mremap 5.16, hugetlb_dontneed 5.18)
are checked on both sides of their release.
"""
import errno

import pytest

import mmemu
import mmemu.constants as C
from mmemu.errors import Sigbus, Sigsegv

PAGE = C.PAGE_SIZE
H2M = 2 << 20
H1G = 1 << 30
RW = C.PROT_READ | C.PROT_WRITE
PRIV = C.MAP_PRIVATE | C.MAP_ANONYMOUS
HUGE = PRIV | C.MAP_HUGETLB
SHARED_HUGE = C.MAP_SHARED | C.MAP_ANONYMOUS | C.MAP_HUGETLB


def machine(kernel="6.18", n2m=4, n1g=0, memory=None, **kw):
    memory = memory or ((3 << 30) if n1g else 64 << 20)
    return mmemu.Machine(kernel=kernel, memory=memory, hugepages={H2M: n2m, H1G: n1g}, **kw)


def pool(m, size=H2M):
    h = m.hugepages[size]
    return h["nr_hugepages"], h["free_hugepages"], h["resv_hugepages"]


# ---- the pool --------------------------------------------------------------

def test_pool_is_set_aside_at_boot_and_never_used_for_small_pages():
    m = machine(n2m=8)
    assert pool(m) == (8, 8, 0)
    assert m.hugepages[H1G]["nr_hugepages"] == 0
    p = m.spawn()
    # Fill the rest of memory with small pages: the pool's frames stay out of it.
    A = p.mmap(0, 64 << 20, RW, PRIV)
    with pytest.raises(mmemu.OutOfMemory):
        p.touch(A, (64 << 20) // PAGE, write=True)
    assert pool(m) == (8, 8, 0)
    for pfn in p.pagemap_range(A, (48 << 20) // PAGE) & ((1 << 55) - 1):
        assert pfn == 0 or m._engine.hugetlb_page(int(pfn)) is None
    m.check()


def test_free_pool_pages_read_as_huge_not_buddy():
    m = machine(n2m=1)
    p = m.spawn()
    A = p.mmap(0, H2M, RW, HUGE)
    p.write(A, b"x")
    pfn = p.pagemap(A).pfn
    p.munmap(A, H2M)
    f = m.frame(pfn)
    assert "huge" in f.flags and "compound_head" in f.flags and "buddy" not in f.flags
    assert "compound_tail" in m.frame(pfn + 1).flags and "huge" in m.frame(pfn + 511).flags


@pytest.mark.parametrize("bad", [{H2M: -1}, {4096: 1}, {3 << 20: 1}, {H2M: 1 << 20}, {H2M: 1 << 70}])
def test_bad_pools_are_value_errors(bad):
    with pytest.raises(ValueError):
        mmemu.Machine(memory=64 << 20, hugepages=bad)


def test_pool_with_zone_movable_is_refused_clearly():
    with pytest.raises(ValueError, match="not modelled"):
        mmemu.Machine(memory=64 << 20, movablecore=16 << 20, hugepages={H2M: 1})


# ---- MAP_HUGETLB: layout and reservations ----------------------------------

def test_map_hugetlb_rounds_the_length_and_aligns_the_address():
    m = machine()
    p = m.spawn()
    A = p.mmap(0, 3 * PAGE, RW, HUGE)
    assert A % H2M == 0
    v = p.vmas.find(A)
    assert v.end - v.start == H2M and v.flags & mmemu.vma.VM_HUGETLB and v.flags & mmemu.vma.VM_DONTEXPAND
    assert pool(m) == (4, 4, 1)           # one page reserved, none taken yet
    hint = p.mmap(A + H2M + PAGE, H2M, RW, HUGE)
    assert hint % H2M == 0


@pytest.mark.parametrize("flags,err", [
    (HUGE | (22 << C.MAP_HUGE_SHIFT), errno.EINVAL),        # no 4 MiB hstate
    (HUGE | C.MAP_FIXED, errno.EINVAL),                     # MAP_FIXED not huge-page aligned
])
def test_map_hugetlb_bad_requests(flags, err):
    p = machine().spawn()
    with pytest.raises(OSError) as e:
        p.mmap(0x7f0000000000 + PAGE if flags & C.MAP_FIXED else 0, H2M, RW, flags)
    assert e.value.errno == err


def test_map_hugetlb_of_a_shmem_fd_is_einval():
    p = machine().spawn()
    fd = p.memfd_create("x")
    p.ftruncate(fd, H2M)
    with pytest.raises(OSError) as e:
        p.mmap(0, H2M, RW, C.MAP_SHARED | C.MAP_HUGETLB, fd)
    assert e.value.errno == errno.EINVAL


def test_reservation_fails_at_mmap_not_at_fault():
    m = machine(n2m=2)
    p = m.spawn()
    A = p.mmap(0, 2 * H2M, RW, HUGE)
    with pytest.raises(OSError) as e:
        p.mmap(0, H2M, RW, HUGE)            # hugetlb_reserve_pages: nothing left to promise
    assert e.value.errno == errno.ENOMEM
    assert pool(m) == (2, 2, 2)
    p.write(A, b"a")
    p.write(A + H2M, b"b")                  # both faults use their reservations
    assert pool(m) == (2, 0, 0)
    m.check()


def test_noreserve_maps_and_then_sigbus_when_the_pool_is_empty():
    m = machine(n2m=1)
    p = m.spawn()
    A = p.mmap(0, H2M, RW, HUGE)
    B = p.mmap(0, H2M, RW, HUGE | C.MAP_NORESERVE)
    assert pool(m) == (1, 1, 1)
    with pytest.raises(Sigbus):
        p.write(B, b"b")                    # the only free page is A's reservation
    p.write(A, b"a")
    assert p.read(A, 1) == b"a"
    m.check()


def test_munmap_and_exit_give_unconsumed_reservations_back():
    m = machine(n2m=4)
    p = m.spawn()
    A = p.mmap(0, 4 * H2M, RW, HUGE)
    p.write(A + H2M, b"x")
    assert pool(m) == (4, 3, 3)
    p.munmap(A + 2 * H2M, 2 * H2M)          # two unconsumed reservations go back
    assert pool(m) == (4, 3, 1)
    p.munmap(A + H2M, H2M)                  # the page goes back; its reservation was consumed
    assert pool(m) == (4, 4, 1)
    q = m.spawn()
    q.mmap(0, 2 * H2M, RW, HUGE)
    q.exit()
    p.exit()
    assert pool(m) == (4, 4, 0)
    m.check()


def test_munmap_or_mprotect_inside_a_huge_page_is_einval():
    p = machine().spawn()
    A = p.mmap(0, 2 * H2M, RW, HUGE)
    for call in (lambda: p.munmap(A + PAGE, PAGE), lambda: p.munmap(A, PAGE),
                 lambda: p.mprotect(A, H2M + PAGE, C.PROT_READ)):
        with pytest.raises(OSError) as e:
            call()
        assert e.value.errno == errno.EINVAL
    p.mprotect(A, H2M, C.PROT_READ)         # on a huge-page boundary: fine
    p.munmap(A + H2M, H2M)


def test_hugetlb_vmas_never_merge():
    p = machine().spawn()
    A = p.mmap(0, 2 * H2M, RW, HUGE)
    p.mprotect(A, H2M, C.PROT_READ)
    p.mprotect(A, H2M, RW)
    assert len(list(p.vmas.overlapping(A, A + 2 * H2M))) == 2    # VM_DONTEXPAND: VM_SPECIAL


# ---- faults ----------------------------------------------------------------

def test_read_fault_allocates_a_private_page_not_a_zero_page():
    m = machine()
    p = m.spawn()
    A = p.mmap(0, H2M, RW, HUGE)
    assert p.read(A + 5 * PAGE, 3) == bytes(3)
    e = p.pagemap(A)
    assert e.present and e.exclusive and not e.file_shared
    assert p.pagemap(A + 511 * PAGE).pfn == e.pfn + 511
    assert pool(m) == (4, 3, 0)
    assert p.hugetlb_usage == H2M and p.rss_anon == 0      # hugetlb is not RSS
    f = m.frame(e.pfn)
    assert {"huge", "anon", "compound_head", "mmap"} <= f.flags and "thp" not in f.flags
    assert f.kpagecount == 1 and f.refcount == 1
    p.write(A, b"w")                        # exclusive: no copy
    assert p.pagemap(A).pfn == e.pfn
    m.check()


def test_gigantic_page_is_one_folio():
    m = machine(n2m=0, n1g=2)
    p = m.spawn()
    G = p.mmap(0, H1G, RW, HUGE | C.MAP_HUGE_1GB)
    assert G % H1G == 0
    p.write(G + 300 * H2M + 3 * PAGE, b"deep")
    head = p.pagemap(G).pfn
    assert head % (H1G // PAGE) == 0
    assert p.pagemap(G + 300 * H2M + 3 * PAGE).pfn == head + 300 * 512 + 3
    tail = m.frame(head + 300 * 512 + 3)
    assert "compound_tail" in tail.flags and tail.kpagecount == 1 and tail.refcount == 1
    pin = p.pin_user_pages(G + 300 * H2M, 2, C.FOLL_WRITE)
    assert m.frame(head).refcount == 1 + 2 * C.GUP_PIN_COUNTING_BIAS   # pins go to the head
    pin.release()
    assert p.hugetlb_usage == H1G
    m.check()
    p.exit()
    assert pool(m, H1G) == (2, 2, 0)
    m.check()


# ---- COW, fork, B2b --------------------------------------------------------

@pytest.mark.parametrize("kernel", ["5.7", "5.18", "6.18"])
def test_cow_reuses_by_mapcount_even_with_gup_references(kernel):
    """hugetlb_wp() reuses a page mapped once whatever else references it:
    a pipe's page sees the parent's later write once the child unmapped
    (B2b, every era; base pages stopped leaking in 5.9 / 5.18)."""
    m = machine(kernel)
    p = m.spawn()
    A = p.mmap(0, H2M, RW, HUGE)
    p.write(A, b"old")
    c = p.fork()
    pipe = c.vmsplice(A, PAGE)
    c.munmap(A, H2M)
    pfn = p.pagemap(A).pfn
    p.write(A, b"new")
    assert p.pagemap(A).pfn == pfn          # reused, not copied
    assert pipe.read(3) == b"new"           # the leak cow.c marks XFAIL
    m.check()


def test_cow_copies_a_page_still_mapped_twice():
    m = machine()
    p = m.spawn()
    A = p.mmap(0, H2M, RW, HUGE)
    p.write(A, b"1" * PAGE)
    c = p.fork()
    assert c.pagemap(A).pfn == p.pagemap(A).pfn and not p.pagemap(A).exclusive
    p.write(A, b"2")
    assert c.read(A, 1) == b"1" and p.read(A, 2) == b"21"
    assert p.pagemap(A).pfn != c.pagemap(A).pfn and p.pagemap(A).exclusive and c.pagemap(A).exclusive
    m.check()


@pytest.mark.parametrize("kernel,copied", [("5.11", False), ("5.12", True), ("6.18", True)])
def test_fork_copies_a_pinned_page_from_5_12(kernel, copied):
    """4eae4efa2c29 (5.12): a maybe-pinned anon hugetlb page of a COW
    mapping is copied for the child at fork; before, the parent's next
    write copied it away from the pin (B6 on hugetlb)."""
    m = machine(kernel)
    p = m.spawn()
    A = p.mmap(0, H2M, RW, HUGE)
    p.write(A, b"1")
    pin = p.pin_user_pages(A, 1, C.FOLL_WRITE | C.FOLL_LONGTERM)
    pfn = p.pagemap(A).pfn
    c = p.fork()
    assert (c.pagemap(A).pfn != pfn) == copied
    p.write(A, b"2")
    assert (p.pagemap(A).pfn == pfn) == copied
    assert (pin.read(0, 1) == b"2") == copied
    assert c.read(A, 1) == b"1"
    pin.release()
    m.check()


def test_owner_takes_the_page_back_and_the_child_gets_sigbus():
    """unmap_ref_private(): the creator of a private mapping that cannot get
    a page for its COW unmaps the page from the children (HPAGE_RESV_UNMAPPED)
    and reuses it; the child's next fault there is SIGBUS."""
    m = machine(n2m=1)
    p = m.spawn()
    A = p.mmap(0, H2M, RW, HUGE)
    p.write(A, b"P")
    c = p.fork()
    pfn = p.pagemap(A).pfn
    p.write(A, b"Q")
    assert p.pagemap(A).pfn == pfn and p.read(A, 1) == b"Q"
    assert not c.pagemap(A).present
    with pytest.raises(Sigbus):
        c.read(A, 1)
    m.check()


def test_a_child_without_a_page_for_its_copy_gets_sigbus():
    m = machine(n2m=1)
    p = m.spawn()
    A = p.mmap(0, H2M, RW, HUGE)
    p.write(A, b"P")
    c = p.fork()
    with pytest.raises(Sigbus):
        c.write(A, b"C")                    # not the owner: no reservation, no free page
    assert p.read(A, 1) == b"P"
    m.check()


@pytest.mark.parametrize("kernel,unshared", [("5.18", False), ("5.19", True)])
def test_ro_pin_of_a_shared_hugetlb_page_unshares_from_5_19(kernel, unshared):
    """a7f226604170 (5.19): a R/O FOLL_PIN of a possibly shared anon page
    (hugetlb too) unshares it first, so the owner's write keeps the pin
    coherent; before, the write copied the page away from the pin (B5)."""
    m = machine(kernel)
    p = m.spawn()
    A = p.mmap(0, H2M, RW, HUGE)
    p.write(A, b"1")
    c = p.fork()
    pin = p.pin_user_pages(A, 1, C.FOLL_LONGTERM)
    assert (p.pagemap(A).pfn != c.pagemap(A).pfn) == unshared
    p.write(A, b"2")
    assert (pin.read(0, 1) == b"2") == unshared
    assert c.read(A, 1) == b"1"
    pin.release()
    m.check()


def test_foll_force_write_into_read_only_hugetlb_fails():
    """check_vma_flags(): FOLL_FORCE may not write into a hugetlb VMA (GUP's
    EFAULT, which /proc/pid/mem reports as EIO, nothing copied)."""
    p = machine().spawn()
    A = p.mmap(0, H2M, C.PROT_READ, HUGE)
    p.read(A, 1)
    with pytest.raises(OSError) as e:
        p.proc_mem_write(A, b"x")
    assert e.value.errno == errno.EIO
    with pytest.raises(Sigsegv):
        p.write(A, b"x")


# ---- memfd (hugetlbfs files) -----------------------------------------------

def test_memfd_hugetlb_shares_pages_and_reserves_once():
    m = machine()
    p = m.spawn()
    with pytest.raises(OSError) as e:
        p.memfd_create("h", C.MFD_HUGETLB | (22 << C.MFD_HUGE_SHIFT))
    assert e.value.errno == errno.EINVAL
    with pytest.raises(OSError) as e:
        p.memfd_create("h", C.MFD_HUGE_2MB)     # size bits without MFD_HUGETLB
    assert e.value.errno == errno.EINVAL
    fd = p.memfd_create("h", C.MFD_HUGETLB | C.MFD_HUGE_2MB)
    with pytest.raises(OSError) as e:
        p.ftruncate(fd, H2M + PAGE)
    assert e.value.errno == errno.EINVAL
    p.ftruncate(fd, 2 * H2M)
    S = p.mmap(0, 2 * H2M, RW, C.MAP_SHARED, fd)
    S2 = p.mmap(0, 2 * H2M, RW, C.MAP_SHARED, fd)
    assert pool(m) == (4, 4, 2)             # the second mapping found them reserved
    p.write(S + 10, b"shared")
    assert p.read(S2 + 10, 6) == b"shared" and p.pread(fd, 6, 10) == b"shared"
    assert p.pagemap(S).file_shared and not p.pagemap(S).exclusive
    with pytest.raises(OSError) as e:
        p.pwrite(fd, b"x", 0)               # hugetlbfs has no write_iter
    assert e.value.errno == errno.EINVAL
    f0 = p.minflt
    p.write(S2 + 20, b"!")                  # the read fault mapped it writable: no write fault
    assert p.minflt == f0
    m.check()
    p.munmap(S, 2 * H2M)
    p.munmap(S2, 2 * H2M)
    assert pool(m) == (4, 3, 1)             # the file keeps its page and reservation
    p.close(fd)
    assert pool(m) == (4, 4, 0)
    m.check()


def test_private_mapping_of_a_hugetlb_file_copies_on_write():
    m = machine()
    p = m.spawn()
    fd = p.memfd_create("h", C.MFD_HUGETLB)
    p.ftruncate(fd, H2M)
    S = p.mmap(0, H2M, RW, C.MAP_SHARED, fd)
    P = p.mmap(0, H2M, RW, C.MAP_PRIVATE, fd)
    p.write(S, b"file")
    assert p.read(P, 4) == b"file" and p.pagemap(P).pfn == p.pagemap(S).pfn and p.pagemap(P).file_shared
    p.write(P, b"PRIV")
    assert p.read(S, 4) == b"file" and p.read(P, 4) == b"PRIV"
    assert not p.pagemap(P).file_shared and p.pagemap(P).exclusive
    # Truncation takes the private copy too (hugetlb_vmdelete_list), then SIGBUS past EOF.
    p.ftruncate(fd, 0)
    with pytest.raises(Sigbus):
        p.read(P, 1)
    with pytest.raises(Sigbus):
        p.read(S, 1)
    m.check()


def test_punch_hole_and_madv_remove_drop_whole_huge_pages():
    m = machine()
    p = m.spawn()
    fd = p.memfd_create("h", C.MFD_HUGETLB)
    p.ftruncate(fd, 2 * H2M)
    S = p.mmap(0, 2 * H2M, RW, C.MAP_SHARED, fd)
    p.write(S, b"a")
    p.write(S + H2M, b"b")
    p.fallocate(fd, C.FALLOC_FL_PUNCH_HOLE | C.FALLOC_FL_KEEP_SIZE, PAGE, H2M)   # no whole page inside
    assert p.read(S, 1) == b"a"
    p.fallocate(fd, C.FALLOC_FL_PUNCH_HOLE | C.FALLOC_FL_KEEP_SIZE, 0, H2M)
    assert not p.pagemap(S).present and p.read(S, 1) == b"\0"
    p.madvise(S + H2M, H2M, C.MADV_REMOVE)
    assert p.read(S + H2M, 1) == b"\0"
    m.check()


# ---- madvise, mprotect, mremap, clear_refs ---------------------------------

@pytest.mark.parametrize("kernel,works", [("5.17", False), ("5.18", True)])
def test_madv_dontneed_on_hugetlb_from_5_18(kernel, works):
    m = machine(kernel)
    p = m.spawn()
    A = p.mmap(0, 2 * H2M, RW, HUGE)
    p.write(A, b"x")
    p.write(A + H2M, b"y")
    if not works:
        with pytest.raises(OSError) as e:
            p.madvise(A, H2M, C.MADV_DONTNEED)
        assert e.value.errno == errno.EINVAL
        return
    with pytest.raises(OSError) as e:
        p.madvise(A + PAGE, H2M, C.MADV_DONTNEED)      # start inside a huge page
    assert e.value.errno == errno.EINVAL
    p.madvise(A, H2M + PAGE, C.MADV_DONTNEED)          # the end rounds down
    assert p.read(A, 1) == b"\0" and p.read(A + H2M, 1) == b"y"
    m.check()


@pytest.mark.parametrize("advice", ["MADV_FREE", "MADV_PAGEOUT", "MADV_COLD"])
def test_lru_and_free_advice_on_hugetlb_is_einval(advice):
    p = machine().spawn()
    A = p.mmap(0, H2M, RW, HUGE)
    p.write(A, b"x")
    with pytest.raises(OSError) as e:
        p.madvise(A, H2M, getattr(C, advice))
    assert e.value.errno == errno.EINVAL


def test_mprotect_never_makes_private_hugetlb_writable_but_shared_yes():
    m = machine()
    p = m.spawn()
    A = p.mmap(0, H2M, RW, HUGE)
    S = p.mmap(0, H2M, RW, SHARED_HUGE)
    p.write(A, b"x")
    p.write(S, b"x")
    for addr, faults in ((A, 1), (S, 0)):
        p.mprotect(addr, H2M, C.PROT_READ)
        p.mprotect(addr, H2M, RW)
        f0 = p.minflt
        p.write(addr, b"y")
        assert p.minflt - f0 == faults
    m.check()


@pytest.mark.parametrize("kernel,works", [("5.15", False), ("5.16", True)])
def test_mremap_of_hugetlb_from_5_16(kernel, works):
    m = machine(kernel)
    p = m.spawn()
    A = p.mmap(0, 2 * H2M, RW, HUGE)
    p.write(A + H2M, b"moved")
    T = p.mmap(0, 4 * H2M, C.PROT_NONE, PRIV)
    T = (T + H2M - 1) & ~(H2M - 1)
    if not works:
        with pytest.raises(OSError) as e:
            p.mremap(A, 2 * H2M, 2 * H2M, C.MREMAP_MAYMOVE | C.MREMAP_FIXED, T)
        assert e.value.errno == errno.EINVAL
        return
    for bad in ((A, 2 * H2M, 3 * H2M, C.MREMAP_MAYMOVE, 0),                   # growing
                (A, 2 * H2M, 2 * H2M, C.MREMAP_MAYMOVE | C.MREMAP_FIXED, T + PAGE),
                (A, 2 * H2M, 2 * H2M, C.MREMAP_MAYMOVE | C.MREMAP_DONTUNMAP, 0)):
        with pytest.raises(OSError) as e:
            p.mremap(*bad)
        assert e.value.errno == errno.EINVAL
    assert pool(m) == (4, 3, 1)
    N = p.mremap(A, 2 * H2M, 2 * H2M, C.MREMAP_MAYMOVE | C.MREMAP_FIXED, T)
    assert p.read(N + H2M, 5) == b"moved" and pool(m) == (4, 3, 1)     # reservation follows
    m.check()
    p.munmap(N, 2 * H2M)
    assert pool(m) == (4, 4, 0)
    m.check()


def _aligned_target(p, n):
    T = p.mmap(0, (n + 1) * H2M, C.PROT_NONE, PRIV)
    return (T + H2M - 1) & ~(H2M - 1)


def test_moving_part_of_a_private_mapping_leaks_what_stays_reservations():
    """move_vma() calls clear_vma_resv_huge_pages() on the whole VMA it moves
    from (550a7d60bd5e, 5.16; unchanged in 6.12.118, and so on the 6.18.44
    host): what stays of it is no longer the owner, so its write takes an
    unreserved page and its reservation is never given back. Host, the same
    steps (HugePages_Free/Rsvd): 6/2, 6/2, 5/2, 4/1, 5/1, 6/1. Keeping the
    reservation with what stays would read 5/1 after the first write and
    give everything back (0 at the end)."""
    m = machine(n2m=6)
    p = m.spawn()
    A = p.mmap(0, 2 * H2M, RW, HUGE)
    T = _aligned_target(p, 1)
    assert pool(m) == (6, 6, 2)
    assert p.mremap(A + H2M, H2M, H2M, C.MREMAP_MAYMOVE | C.MREMAP_FIXED, T) == T
    assert pool(m) == (6, 6, 2)
    p.write(A, b"stays")
    assert pool(m) == (6, 5, 2)                 # not from its reservation
    p.write(T, b"moved")
    assert pool(m) == (6, 4, 1)                 # the moved part owns its own
    p.munmap(A, H2M)
    assert pool(m) == (6, 5, 1)
    p.munmap(T, H2M)
    assert pool(m) == (6, 6, 1)                 # leaked for good
    p.exit()
    assert pool(m) == (6, 6, 1)
    m.check()


def test_what_stays_of_a_partly_moved_mapping_gets_sigbus_on_a_reserved_pool():
    """With every free page reserved, what stays of a partly moved private
    mapping has no reservation left, so its first write finds no page:
    SIGBUS (the 6.18.44 host: signal 7). The moved part still writes."""
    m = machine(n2m=5)
    p = m.spawn()
    A = p.mmap(0, 5 * H2M, RW, HUGE)
    T = _aligned_target(p, 1)
    p.mremap(A + 4 * H2M, H2M, H2M, C.MREMAP_MAYMOVE | C.MREMAP_FIXED, T)
    assert pool(m) == (5, 5, 5)
    with pytest.raises(Sigbus):
        p.write(A, b"x")
    p.write(T, b"moved")
    assert pool(m) == (5, 4, 4)
    p.munmap(A, 4 * H2M)
    p.munmap(T, H2M)
    assert pool(m) == (5, 5, 4)
    m.check()


def test_moving_the_middle_leaks_both_sides_and_a_whole_move_nothing():
    """Both VMAs left of a middle move lose the map (host: Rsvd 3, 3, 3, 3,
    then 2 once the moved page is unmapped). A move of the whole VMA leaves
    nothing behind to leak."""
    m = machine(n2m=6)
    p = m.spawn()
    A = p.mmap(0, 3 * H2M, RW, HUGE)
    T = _aligned_target(p, 1)
    p.mremap(A + H2M, H2M, H2M, C.MREMAP_MAYMOVE | C.MREMAP_FIXED, T)
    p.write(A + 2 * H2M, b"x")
    assert pool(m) == (6, 5, 3)
    p.munmap(A, H2M)
    p.munmap(A + 2 * H2M, H2M)
    assert pool(m) == (6, 6, 3)
    p.munmap(T, H2M)
    assert pool(m) == (6, 6, 2)
    B = p.mmap(0, 2 * H2M, RW, HUGE)
    U = _aligned_target(p, 2)
    p.mremap(B, 2 * H2M, 2 * H2M, C.MREMAP_MAYMOVE | C.MREMAP_FIXED, U)
    p.munmap(U, 2 * H2M)
    assert pool(m) == (6, 6, 2)
    m.check()


def test_clear_refs_skips_hugetlb():
    m = machine()
    p = m.spawn()
    A = p.mmap(0, H2M, RW, HUGE)
    p.write(A, b"x")
    p.clear_refs(C.CLEAR_REFS_SOFT_DIRTY)
    f0 = p.minflt
    p.write(A, b"y")                        # still writable: no soft-dirty fault
    assert p.minflt == f0
    assert not p.pagemap(A).soft_dirty      # pagemap_hugetlb_range: the VMA's bit only
    m.check()


def test_ksm_and_numa_scan_leave_hugetlb_alone():
    m = machine()
    p = m.spawn()
    A = p.mmap(0, 2 * H2M, RW, HUGE)
    p.write(A, b"same")
    p.write(A + H2M, b"same")
    p.madvise(A, 2 * H2M, C.MADV_MERGEABLE)
    assert not p.vmas.find(A).flags & mmemu.vma.VM_MERGEABLE
    m.ksm_scan()
    assert p.pagemap(A).pfn != p.pagemap(A + H2M).pfn
    assert m.numa_scan(p, A, 2 * H2M) == 0
    m.check()


# ---- state -----------------------------------------------------------------

def test_save_and_load_keep_the_pool_and_reservations(tmp_path):
    m = machine(n2m=4)
    p = m.spawn()
    A = p.mmap(0, 2 * H2M, RW, HUGE)
    p.write(A, b"kept")
    c = p.fork()
    path = tmp_path / "m.mmemu"
    m.save(path)
    m2 = mmemu.Machine.load(path)
    assert m2.hugepages == m.hugepages
    p2, c2 = (m2.processes[0], m2.processes[1])
    assert p2.read(A, 4) == b"kept"
    p2.write(A, b"new!")                     # COW as before the save
    assert c2.read(A, 4) == b"kept"
    m2.check()
    p2.exit()
    c2.exit()
    assert pool(m2) == (4, 4, 0)
    m2.check()


def test_fallocate_preallocates_whole_pages_from_reservations_first():
    m = machine(n2m=3)
    p = m.spawn()
    fd = p.memfd_create("h", C.MFD_HUGETLB)
    p.ftruncate(fd, H2M)
    S = p.mmap(0, H2M, RW, C.MAP_SHARED, fd)        # reserves page 0
    assert pool(m) == (3, 3, 1)
    p.fallocate(fd, C.FALLOC_FL_KEEP_SIZE, PAGE, H2M + PAGE)   # touches pages 0 and 1
    assert pool(m) == (3, 1, 0)             # page 0 from its reservation, page 1 unreserved
    assert p.fstat_size(fd) == H2M          # KEEP_SIZE
    assert p.pagemap(S).present is False    # in the cache, not mapped yet
    p.read(S, 1)
    assert p.pagemap(S).file_shared
    p.fallocate(fd, 0, 0, 3 * H2M)          # page 2 added, i_size grows
    assert pool(m) == (3, 0, 0) and p.fstat_size(fd) == 3 * H2M
    with pytest.raises(OSError) as e:
        p.fallocate(fd, 0, 0, 4 * H2M)
    assert e.value.errno == errno.ENOSPC and p.fstat_size(fd) == 3 * H2M
    m.check()
    p.munmap(S, H2M)
    p.close(fd)
    assert pool(m) == (3, 3, 0)
    m.check()
