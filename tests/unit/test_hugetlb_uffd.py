"""userfaultfd on hugetlb (fs/userfaultfd.c, mm/userfaultfd.c
mfill_atomic_hugetlb, mm/hugetlb.c hugetlb_no_page / hugetlb_fault /
hugetlb_mfill_atomic_pte / hugetlb_change_protection /
copy_hugetlb_page_range / __unmap_hugepage_range; 6.12 unless a test names
an era).

Each rule is checked by a case that fails without it; the era gates
(MINOR_HUGETLBFS 5.13, EXACT_ADDRESS 5.18, uffd-wp on hugetlb 5.19,
uffd_wp_writenotify 6.2, uffd_unprotect_writable 6.3, POISON 6.6, WP_ASYNC
6.7, uffd_release_resets_wp 6.9, uffd_mremap_clear_wp 6.13) are checked on
both sides of their release. A failure means a program written against
Linux takes another branch on the emulator: a fault that should reach the
monitor does not (or at the wrong address), an ioctl succeeds that Linux
refuses, or a protection is silently lost.
"""
import errno

import pytest

import mmemu
import mmemu.constants as C
from mmemu import uffd as U
from mmemu.errors import Sigbus, WouldBlock

PAGE = C.PAGE_SIZE
H2M = 2 << 20
H1G = 1 << 30
RW = C.PROT_READ | C.PROT_WRITE
HUGE = C.MAP_PRIVATE | C.MAP_ANONYMOUS | C.MAP_HUGETLB
MISSING, WP, MINOR = U.UFFDIO_REGISTER_MODE_MISSING, U.UFFDIO_REGISTER_MODE_WP, U.UFFDIO_REGISTER_MODE_MINOR
PROTECT = U.UFFDIO_WRITEPROTECT_MODE_WP
F_WP = U.UFFD_FEATURE_PAGEFAULT_FLAG_WP
FLAG_WRITE, FLAG_WP, FLAG_MINOR = U.UFFD_PAGEFAULT_FLAG_WRITE, U.UFFD_PAGEFAULT_FLAG_WP, U.UFFD_PAGEFAULT_FLAG_MINOR


def machine(kernel="6.18", n2m=8, n1g=0):
    memory = (3 << 30) if n1g else 128 << 20
    return mmemu.Machine(kernel=kernel, memory=memory, hugepages={H2M: n2m, H1G: n1g})


def ctx(p, features=0):
    u = p.userfaultfd(U.O_CLOEXEC | U.O_NONBLOCK)
    u.api(features)
    return u


def hugetlb_file(p, npages):
    fd = p.memfd_create("h", C.MFD_HUGETLB)
    p.ftruncate(fd, npages * H2M)
    return fd


def shared(p, npages=2, fd=None):
    """A MAP_SHARED mapping of a hugetlb memfd (uffd-unit-tests' hugetlb), and its fd."""
    fd = hugetlb_file(p, npages) if fd is None else fd
    return p.mmap(0, npages * H2M, RW, C.MAP_SHARED, fd, 0), fd


def private(p, npages=2):
    """MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB."""
    return p.mmap(0, npages * H2M, RW, HUGE)


def resv(m, size=H2M):
    return m.hugepages[size]["resv_hugepages"]


def one_fault(u):
    msgs = u.read()
    assert len(msgs) == 1, msgs
    return msgs[0]


def expect(err, call, result="unchecked"):
    with pytest.raises(OSError) as e:
        call()
    assert e.value.errno == err, (errno.errorcode.get(e.value.errno), errno.errorcode[err])
    if result != "unchecked":
        assert getattr(e.value, "result", None) == result
    return e.value


# ---- registration ------------------------------------------------------------

@pytest.mark.parametrize("kind", ["private", "shared"])
def test_missing_registers_on_hugetlb_in_every_era_with_the_basic_ioctls(kind):
    # vma_can_userfault() takes hugetlb since 5.7's baseline
    # (MISSING_HUGETLBFS); the reply is UFFD_API_RANGE_IOCTLS_BASIC: no
    # ZEROPAGE, no MOVE.
    for kernel in ("5.7", "6.18"):
        m = machine(kernel)
        p = m.spawn()
        A = private(p) if kind == "private" else shared(p)[0]
        u = ctx(p)
        ioctls = u.register(A, 2 * H2M, MISSING)
        assert ioctls & 1 << U._UFFDIO_COPY and ioctls & 1 << U._UFFDIO_WAKE
        assert not ioctls & (1 << U._UFFDIO_ZEROPAGE | 1 << U._UFFDIO_MOVE | 1 << U._UFFDIO_WRITEPROTECT)


def test_a_range_with_a_hugetlb_vma_loses_zeropage_even_if_it_starts_in_anon_memory():
    m = machine()
    p = m.spawn()
    A = p.mmap(0, 4 * H2M, RW, C.MAP_PRIVATE | C.MAP_ANONYMOUS)
    p.munmap(A + 2 * H2M, 2 * H2M)
    B = p.mmap(A + 2 * H2M, H2M, RW, HUGE | C.MAP_FIXED)
    u = ctx(p)
    ioctls = u.register(A, 3 * H2M, MISSING)
    assert not ioctls & 1 << U._UFFDIO_ZEROPAGE
    u.unregister(A, 2 * H2M)
    assert u.register(A, 2 * H2M, MISSING) & 1 << U._UFFDIO_ZEROPAGE
    assert B == A + 2 * H2M


def test_register_and_unregister_want_huge_page_boundaries():
    # userfaultfd_register(): the first VMA's start and the end inside a
    # hugetlb VMA aligned to its page size; unregister checks the start.
    m = machine()
    p = m.spawn()
    A = private(p)
    u = ctx(p)
    expect(errno.EINVAL, lambda: u.register(A + PAGE, H2M - PAGE, MISSING))
    expect(errno.EINVAL, lambda: u.register(A, H2M + PAGE, MISSING))
    u.register(A, 2 * H2M, MISSING)
    expect(errno.EINVAL, lambda: u.unregister(A + PAGE, H2M))
    expect(errno.EINVAL, lambda: u.unregister(A, PAGE))
    u.unregister(A, 2 * H2M)
    assert not p.vmas.find(A).uffd


@pytest.mark.parametrize("kernel,ok", [("5.12", False), ("5.13", True)])
def test_minor_on_hugetlb_arrives_in_5_13_before_shmem(kernel, ok):
    # 7677f7fd8be7 (5.13): MINOR mode, hugetlbfs only; shmem in 5.14.
    m = machine(kernel)
    p = m.spawn()
    A, fd = shared(p)
    u = ctx(p)
    if not ok:
        expect(errno.EINVAL, lambda: u.register(A, 2 * H2M, MINOR))
        return
    ioctls = u.register(A, 2 * H2M, MINOR)
    assert ioctls & 1 << U._UFFDIO_CONTINUE
    S = p.mmap(0, PAGE, RW, C.MAP_SHARED | C.MAP_ANONYMOUS)
    expect(errno.EINVAL, lambda: u.register(S, PAGE, MINOR))      # shmem: 5.14


@pytest.mark.parametrize("kernel,ok", [("5.18", False), ("5.19", True)])
def test_wp_on_hugetlb_arrives_with_pte_markers_in_5_19(kernel, ok):
    # b1f9e876862d / 1db9dbc2ef05 (5.19): WP on shmem and hugetlb.
    m = machine(kernel)
    p = m.spawn()
    A = private(p)
    u = ctx(p, F_WP)
    if not ok:
        expect(errno.EINVAL, lambda: u.register(A, 2 * H2M, WP))
        return
    assert u.register(A, 2 * H2M, WP) & 1 << U._UFFDIO_WRITEPROTECT


# ---- MISSING -------------------------------------------------------------------

@pytest.mark.parametrize("kernel,exact", [("5.17", False), ("5.18", True)])
def test_a_missing_fault_reports_the_huge_page_unless_exact_address(kernel, exact):
    # hugetlb_handle_userfault(): vmf->address is the huge page's;
    # EXACT_ADDRESS (824ddc601adc, 5.18) gives the faulting address.
    m = machine(kernel)
    p = m.spawn()
    A = private(p)
    if not exact:
        expect(errno.EINVAL, lambda: p.userfaultfd(U.O_NONBLOCK).api(U.UFFD_FEATURE_EXACT_ADDRESS))
    u = ctx(p, U.UFFD_FEATURE_EXACT_ADDRESS if exact else 0)
    u.register(A, 2 * H2M, MISSING)
    with pytest.raises(WouldBlock) as wb:
        p.write(A + H2M + 12345, b"w")
    msg = one_fault(u)
    assert msg.flags == FLAG_WRITE
    assert msg.address == (A + H2M + 12345 if exact else A + H2M)
    assert u.copy(A + H2M, b"c" * H2M) == H2M
    wb.value.thread.resume()
    assert p.read(A + H2M + 12344, 3) == b"cwc"
    m.check()


def test_missing_fires_only_for_a_page_not_in_the_file():
    # hugetlb_no_page(): MISSING means "not in the page cache": a shared
    # mapping of a page another mapping created faults in silently, a
    # private mapping of a file page too (and COWs it on write).
    m = machine()
    p = m.spawn()
    fd = hugetlb_file(p, 2)
    A, _ = shared(p, fd=fd)
    p.write(A, b"cached")
    B = p.mmap(0, 2 * H2M, RW, C.MAP_SHARED, fd, 0)
    R = p.mmap(0, 2 * H2M, RW, C.MAP_PRIVATE, fd, 0)
    u = ctx(p)
    u.register(B, 2 * H2M, MISSING)
    u.register(R, 2 * H2M, MISSING)
    assert p.read(B, 6) == b"cached" and p.read(R, 6) == b"cached"
    p.write(R, b"private")
    assert p.read(B, 7) == b"cached\x00"
    assert u.pending() == 0
    with pytest.raises(WouldBlock):
        p.read(B + H2M, 1)
    assert one_fault(u).address == B + H2M
    with pytest.raises(WouldBlock):
        p.thread().read(R + H2M, 1)
    assert one_fault(u).address == R + H2M


def test_a_fault_past_eof_is_sigbus_not_a_userfault():
    # hugetlb_no_page() checks i_size before userfaultfd_missing().
    m = machine()
    p = m.spawn()
    A, fd = shared(p)
    p.ftruncate(fd, H2M)
    u = ctx(p)
    u.register(A, 2 * H2M, MISSING)
    with pytest.raises(Sigbus):
        p.read(A + H2M, 1)
    assert u.pending() == 0


def test_sigbus_feature_and_in_core_resolvers_leave_hugetlb_faults_to_the_queue():
    m = machine()
    p = m.spawn()
    A = private(p)
    u = ctx(p, U.UFFD_FEATURE_SIGBUS)
    u.register(A, 2 * H2M, MISSING)
    with pytest.raises(Sigbus):
        p.read(A, 1)
    v = ctx(p)
    B = private(p)
    v.register(B, 2 * H2M, MISSING)
    v.serve_core("zeropage", B)          # base-page resolvers: not for hugetlb
    with pytest.raises(WouldBlock):
        p.read(B, 1)
    assert v.core_log()[0] == 0 and one_fault(v).address == B


# ---- UFFDIO_COPY -----------------------------------------------------------------

def test_copy_wants_whole_huge_pages():
    # mfill_atomic_hugetlb(): dst and len aligned to the huge page, else EINVAL.
    m = machine()
    p = m.spawn()
    A = private(p)
    u = ctx(p)
    u.register(A, 2 * H2M, MISSING)
    expect(errno.EINVAL, lambda: u.copy(A, b"x" * PAGE), -errno.EINVAL)
    expect(errno.EINVAL, lambda: u.copy(A + PAGE, b"x" * H2M), -errno.EINVAL)
    assert not p.pagemap(A).present


def test_zeropage_is_einval_on_hugetlb():
    m = machine()
    p = m.spawn()
    A = private(p)
    u = ctx(p)
    u.register(A, 2 * H2M, MISSING)
    expect(errno.EINVAL, lambda: u.zeropage(A, H2M), -errno.EINVAL)
    assert not p.pagemap(A).present


def test_private_copy_is_an_anon_page_from_the_reservation():
    m = machine(n2m=4)
    p = m.spawn()
    A = private(p)
    assert resv(m) == 2
    u = ctx(p)
    u.register(A, 2 * H2M, MISSING)
    assert u.copy(A, b"a" * H2M + b"b" * H2M) == 2 * H2M
    assert resv(m) == 0                          # both reservations consumed
    e = p.pagemap(A + H2M)
    assert e.present and not e.file_shared and e.exclusive
    assert p.read(A + H2M - 1, 2) == b"ab"
    p.write(A, b"W")                             # writable: no fault
    assert u.pending() == 0 and p.hugetlb_usage == 2 * H2M
    m.check()


def test_shared_copy_goes_into_the_file_and_eexists_on_a_cached_page():
    # hugetlb_mfill_atomic_pte(): a shared mapping's page is added to the
    # cache; a page the file already has is EEXIST although this mapping
    # has no entry for it.
    m = machine(n2m=4)
    p = m.spawn()
    A, fd = shared(p)
    B = p.mmap(0, 2 * H2M, RW, C.MAP_SHARED, fd, 0)
    u = ctx(p)
    u.register(A, 2 * H2M, MISSING)
    assert u.copy(A, b"s" * H2M) == H2M
    assert p.pagemap(A).file_shared
    assert p.read(B, 1) == b"s"                  # the other mapping sees the cache page
    assert p.pread(fd, 1, 0) == b"s"
    p.write(B + H2M, b"t")                       # page 1 into the cache through B
    expect(errno.EEXIST, lambda: u.copy(A + H2M, b"x" * H2M), -errno.EEXIST)
    expect(errno.EEXIST, lambda: u.copy(A, b"x" * H2M), -errno.EEXIST)
    m.check()


def test_copy_partial_progress_is_eagain_with_the_bytes_done():
    m = machine()
    p = m.spawn()
    A = private(p, 3)
    u = ctx(p)
    u.register(A, 3 * H2M, MISSING)
    u.copy(A + H2M, b"m" * H2M)
    e = expect(errno.EAGAIN, lambda: u.copy(A, b"x" * (3 * H2M)))
    assert e.result == H2M
    assert p.read(A, 1) == b"x" and p.read(A + H2M, 1) == b"m"


def test_copy_from_user_memory_copies_the_whole_huge_page():
    m = machine()
    p = m.spawn()
    src = p.mmap(0, H2M, RW, C.MAP_PRIVATE | C.MAP_ANONYMOUS)
    p.write(src, b"head")
    p.write(src + H2M - 4, b"tail")
    A = private(p)
    u = ctx(p)
    u.register(A, 2 * H2M, MISSING)
    assert u.copy(A, src, H2M) == H2M
    assert p.read(A, 4) == b"head" and p.read(A + H2M - 4, 4) == b"tail"
    m.check()


def test_copy_mode_wp_maps_protected_and_a_write_is_a_wp_fault():
    m = machine()
    p = m.spawn()
    A = private(p)
    u = ctx(p, F_WP)
    u.register(A, 2 * H2M, MISSING | WP)
    u.copy(A, b"p" * H2M, mode=U.UFFDIO_COPY_MODE_WP)
    assert p.pagemap(A + 5 * PAGE).uffd_wp
    with pytest.raises(WouldBlock) as wb:
        p.write(A + 5 * PAGE, b"q")
    msg = one_fault(u)
    assert msg.flags == FLAG_WRITE | FLAG_WP and msg.address == A
    expect(errno.EINVAL, lambda: u.writeprotect(A, PAGE, 0))      # mwriteprotect_range: whole huge pages
    u.writeprotect(A, H2M, 0)
    wb.value.thread.resume()
    assert p.read(A + 5 * PAGE, 1) == b"q" and not p.pagemap(A).uffd_wp
    m.check()


def test_move_refuses_hugetlb():
    # validate_move_areas(): vma_move_compatible() excludes VM_HUGETLB.
    m = machine("6.8")
    p = m.spawn()
    A = private(p)
    src = private(p, 1)
    p.write(src, b"s")
    u = ctx(p, U.UFFD_FEATURE_MOVE)
    u.register(A, 2 * H2M, MISSING)
    expect(errno.EINVAL, lambda: u.move(A, src, H2M))
    assert p.read(src, 1) == b"s"


# ---- MINOR and UFFDIO_CONTINUE -----------------------------------------------------

def test_minor_fault_and_continue_on_shared_hugetlb():
    # hugetlb_no_page(): a page in the cache is a MINOR fault in a
    # MINOR-registered VMA; CONTINUE maps it (EFAULT without one, EEXIST
    # once mapped).
    m = machine("5.13")
    p = m.spawn()
    fd = hugetlb_file(p, 2)
    A, _ = shared(p, fd=fd)
    alias = p.mmap(0, 2 * H2M, RW, C.MAP_SHARED, fd, 0)
    p.write(alias, b"old")
    u = ctx(p, U.UFFD_FEATURE_MINOR_HUGETLBFS)
    u.register(A, 2 * H2M, MINOR)
    with pytest.raises(WouldBlock) as wb:
        p.thread().read(A + 7, 1)
    msg = one_fault(u)
    assert msg.flags == FLAG_MINOR and msg.address == A
    p.write(alias, b"new")
    assert u.continue_(A, H2M) == H2M
    assert wb.value.thread.resume() == b"\x00"
    assert p.read(A, 3) == b"new"
    expect(errno.EEXIST, lambda: u.continue_(A, H2M), -errno.EEXIST)
    expect(errno.EFAULT, lambda: u.continue_(A + H2M, H2M), -errno.EFAULT)   # not in the cache
    p.write(A, b"W")                              # shared + VM_WRITE: mapped writable
    assert u.pending() == 0 and p.pread(fd, 1, 0) == b"W"
    m.check()


def test_a_hole_in_a_minor_only_range_faults_in_silently():
    m = machine()
    p = m.spawn()
    A, fd = shared(p)
    u = ctx(p, U.UFFD_FEATURE_MINOR_HUGETLBFS)
    u.register(A, 2 * H2M, MINOR)
    assert p.read(A, 1) == b"\x00" and u.pending() == 0


def test_continue_into_a_private_mapping_is_read_only():
    # hugetlb_mfill_atomic_pte(): CONTINUE on a non-shared VMA maps the cache
    # page without write; a write then COWs it privately.
    m = machine()
    p = m.spawn()
    fd = hugetlb_file(p, 1)
    S, _ = shared(p, 1, fd)
    p.write(S, b"file")
    R = p.mmap(0, H2M, RW, C.MAP_PRIVATE, fd, 0)
    u = ctx(p, U.UFFD_FEATURE_MINOR_HUGETLBFS)
    u.register(R, H2M, MINOR)
    with pytest.raises(WouldBlock) as wb:
        p.read(R, 1)
    one_fault(u)
    u.continue_(R, H2M)
    assert wb.value.thread.resume() == b"f"
    e = p.pagemap(R)
    assert e.present and e.file_shared
    p.write(R, b"mine")
    assert not p.pagemap(R).file_shared and p.read(S, 4) == b"file"
    m.check()


# ---- uffd-wp -------------------------------------------------------------------------

def test_writeprotect_installs_markers_on_none_entries_and_unprotect_drops_them():
    # hugetlb_change_protection(MM_CP_UFFD_WP): markers on none entries
    # (60dfaad65aa9, 5.19), every era: hugetlb is file memory.
    m = machine("5.19")
    p = m.spawn()
    A = private(p)
    u = ctx(p, F_WP)
    u.register(A, 2 * H2M, WP)
    u.writeprotect(A, 2 * H2M, PROTECT)
    e = p.pagemap(A + H2M)
    assert e.uffd_wp and not e.present and not e.swapped      # pagemap_hugetlb_range: no PM_SWAP
    m.check()
    # A read fault over the marker maps the page uffd-wp; the write reports.
    assert p.read(A, 1) == b"\x00" and u.pending() == 0
    assert p.pagemap(A).present and p.pagemap(A).uffd_wp
    with pytest.raises(WouldBlock) as wb:
        p.write(A + 3, b"x")
    assert one_fault(u).flags == FLAG_WRITE | FLAG_WP
    u.writeprotect(A, 2 * H2M, 0)
    wb.value.thread.resume()
    assert not p.pagemap(A + H2M).uffd_wp
    m.check()


def test_a_write_to_a_marker_maps_the_page_then_reports_wp():
    m = machine()
    p = m.spawn()
    A = private(p)
    u = ctx(p, F_WP)
    u.register(A, 2 * H2M, WP)
    u.writeprotect(A, H2M, PROTECT)
    with pytest.raises(WouldBlock) as wb:
        p.write(A, b"x")
    assert one_fault(u).flags == FLAG_WRITE | FLAG_WP
    assert p.pagemap(A).present and p.pagemap(A).uffd_wp
    u.writeprotect(A, H2M, 0)
    wb.value.thread.resume()
    assert p.read(A, 1) == b"x"


def test_missing_and_wp_copy_over_a_marker():
    # "We allow to overwrite a pte marker" (hugetlb_mfill_atomic_pte):
    # MISSING|WP, protect an empty page, then the access is MISSING.
    m = machine()
    p = m.spawn()
    A = private(p)
    u = ctx(p, F_WP)
    u.register(A, 2 * H2M, MISSING | WP)
    u.writeprotect(A, H2M, PROTECT)
    with pytest.raises(WouldBlock) as wb:
        p.read(A, 1)
    assert one_fault(u).flags == 0
    assert u.copy(A, b"c" * H2M) == H2M
    wb.value.thread.resume()
    assert p.pagemap(A).present and not p.pagemap(A).uffd_wp
    m.check()


def test_dontneed_keeps_uffd_wp_as_a_marker_munmap_and_punch_drop_it():
    # __unmap_hugepage_range(): a uffd-wp entry leaves a marker unless the
    # zap passes ZAP_FLAG_DROP_MARKER (munmap, exit, hugetlbfs truncation
    # and hole punching), whether the VMA is still registered or not.
    m = machine()
    p = m.spawn()
    A, fd = shared(p, 3)
    u = ctx(p, F_WP)
    u.register(A, 3 * H2M, WP)
    p.write(A, b"a")
    p.write(A + H2M, b"b")
    u.writeprotect(A, 3 * H2M, PROTECT)
    p.madvise(A, H2M, C.MADV_DONTNEED)
    e = p.pagemap(A)
    assert e.uffd_wp and not e.present
    assert p.read(A, 1) == b"a" and p.pagemap(A).uffd_wp      # the cache page back, protected
    p.madvise(A + H2M, H2M, C.MADV_REMOVE)                    # hole punch: marker dropped
    assert not p.pagemap(A + H2M).uffd_wp
    m.check()
    p.munmap(A, 3 * H2M)
    A2 = p.mmap(A, 3 * H2M, RW, C.MAP_SHARED | C.MAP_FIXED, fd, 0)
    assert not p.pagemap(A2 + 2 * H2M).uffd_wp
    m.check()


def test_dontneed_drops_a_poison_marker():
    m = machine("6.6")
    p = m.spawn()
    A = private(p)
    u = ctx(p, U.UFFD_FEATURE_POISON)
    u.register(A, 2 * H2M, MISSING)
    u.poison(A, H2M)
    p.madvise(A, H2M, C.MADV_DONTNEED)
    with pytest.raises(WouldBlock):
        p.read(A, 1)                              # a none entry again: MISSING


@pytest.mark.parametrize("event", [False, True])
def test_fork_copies_uffd_wp_only_into_a_wp_child(event):
    # copy_hugetlb_page_range() (c56d1b62cce8, 5.19): present entries keep
    # uffd-wp and markers are copied only if the child VMA is
    # WP-registered, i.e. with EVENT_FORK (no B12/B14 window on hugetlb).
    m = machine("5.19")
    p = m.spawn()
    A = private(p)
    u = ctx(p, F_WP | (U.UFFD_FEATURE_EVENT_FORK if event else 0))
    u.register(A, 2 * H2M, WP)
    p.write(A, b"x")
    u.writeprotect(A, 2 * H2M, PROTECT)
    if event:
        with pytest.raises(WouldBlock) as wb:
            p.fork()
        [ev] = u.read()
        c = wb.value.thread.resume()
    else:
        c = p.fork()
    assert c.pagemap(A).uffd_wp == event
    assert c.pagemap(A + H2M).uffd_wp == event and not c.pagemap(A + H2M).present
    m.check()


def test_unshare_of_a_uffd_wp_page_keeps_the_protection():
    # hugetlb_wp(): the copy made for an unshare (R/O pin of a COW-shared
    # page, 5.19) is mapped uffd-wp like the original.
    m = machine()
    p = m.spawn()
    A = private(p, 1)
    u = ctx(p, F_WP | U.UFFD_FEATURE_EVENT_FORK)
    u.register(A, H2M, WP)
    p.write(A, b"x")
    u.writeprotect(A, H2M, PROTECT)
    with pytest.raises(WouldBlock) as wb:
        p.fork()
    u.read()
    c = wb.value.thread.resume()
    before = c.pagemap(A).pfn
    pin = c.pin_user_pages(A, 1, C.FOLL_LONGTERM)
    assert c.pagemap(A).pfn != before and c.pagemap(A).uffd_wp
    pin.release()
    m.check()


@pytest.mark.parametrize("kernel,async_", [("6.6", False), ("6.7", True)])
def test_wp_async_resolves_a_hugetlb_write_in_place(kernel, async_):
    # hugetlb_fault(): with WP_ASYNC (d61ea1cb0095, 6.7) a write to a uffd-wp
    # entry loses the bit and goes on; without it the monitor hears of it.
    m = machine(kernel)
    p = m.spawn()
    A = private(p)
    if not async_:
        expect(errno.EINVAL, lambda: p.userfaultfd(U.O_NONBLOCK).api(U.UFFD_FEATURE_WP_ASYNC))
    u = ctx(p, F_WP | (U.UFFD_FEATURE_WP_ASYNC if async_ else 0))
    u.register(A, 2 * H2M, WP)
    p.write(A, b"x")
    u.writeprotect(A, H2M, PROTECT)
    if async_:
        p.write(A, b"y")
        assert not p.pagemap(A).uffd_wp and u.pending() == 0
    else:
        with pytest.raises(WouldBlock):
            p.write(A, b"y")
        assert one_fault(u).flags == FLAG_WRITE | FLAG_WP


@pytest.mark.parametrize("kernel,writable", [("6.2", True), ("6.3", False)])
def test_unprotect_of_shared_hugetlb_takes_the_vma_protection(kernel, writable):
    # uffd_wp_range(): vm_get_page_prot(vm_flags) until 6.3 - writable in a
    # shared writable mapping - then vm_page_prot (931298e103c2), read-only
    # with uffd-wp write-notify; hugetlb_change_protection() never upgrades.
    m = machine(kernel)
    p = m.spawn()
    A, fd = shared(p, 1)
    u = ctx(p, F_WP)
    u.register(A, H2M, WP)
    p.write(A, b"x")
    u.writeprotect(A, H2M, PROTECT)
    u.writeprotect(A, H2M, 0)
    assert bool(p._engine.pte(p.mm, A) & 2) == writable        # the pte's write bit
    before = m.stats()["wp_faults"]
    p.write(A, b"y")
    assert (m.stats()["wp_faults"] == before) == writable
    assert p.pread(fd, 1, 0) == b"y" and u.pending() == 0


@pytest.mark.parametrize("kernel,lost", [("6.1", True), ("6.2", False)])
def test_mprotect_loses_shared_hugetlb_uffd_wp_until_writenotify(kernel, lost):
    # B15 on hugetlb: 5.19-6.1's shared writable VMA rebuilds the entries
    # writable in mprotect (hugetlb_change_protection keeps the bit, not
    # the protection); 51d3d5eb74ff (6.2) turns write-notify on.
    m = machine(kernel)
    p = m.spawn()
    A, fd = shared(p, 1)
    u = ctx(p, F_WP)
    u.register(A, H2M, WP)
    p.write(A, b"x")
    u.writeprotect(A, H2M, PROTECT)
    p.mprotect(A, H2M, C.PROT_READ)
    p.mprotect(A, H2M, RW)
    if lost:
        p.write(A, b"y")
        assert u.pending() == 0
    else:
        with pytest.raises(WouldBlock):
            p.write(A, b"y")
        assert one_fault(u).flags == FLAG_WRITE | FLAG_WP


@pytest.mark.parametrize("kernel,reset", [("6.8", False), ("6.9", True)])
def test_close_resets_hugetlb_markers_from_6_9(kernel, reset):
    m = machine(kernel)
    p = m.spawn()
    A = private(p)
    u = ctx(p, F_WP)
    u.register(A, 2 * H2M, WP)
    p.write(A, b"x")
    u.writeprotect(A, 2 * H2M, PROTECT)
    u.close()
    assert p.pagemap(A).uffd_wp != reset and p.pagemap(A + H2M).uffd_wp != reset
    m.check()


@pytest.mark.parametrize("kernel,clear", [("6.12", False), ("6.13", True)])
def test_mremap_without_event_remap_clears_hugetlb_uffd_wp_from_6_13(kernel, clear):
    m = machine(kernel)
    p = m.spawn()
    A = private(p)
    u = ctx(p, F_WP)
    u.register(A, 2 * H2M, WP)
    p.write(A, b"x")
    u.writeprotect(A, 2 * H2M, PROTECT)
    T = private(p)
    B = p.mremap(A, 2 * H2M, 2 * H2M, C.MREMAP_MAYMOVE | C.MREMAP_FIXED, T)
    assert p.pagemap(B).uffd_wp != clear and p.pagemap(B + H2M).uffd_wp != clear
    m.check()


# ---- UFFDIO_POISON ---------------------------------------------------------------------

@pytest.mark.parametrize("kernel,has", [("6.5", False), ("6.6", True)])
def test_poison_on_hugetlb(kernel, has):
    # hugetlb_mfill_atomic_pte(MFILL_ATOMIC_POISON) (fc71884a5f59, 6.6): a
    # poisoned marker on a strictly none entry; an access is SIGBUS.
    m = machine(kernel)
    p = m.spawn()
    A = private(p)
    u = ctx(p, F_WP | (U.UFFD_FEATURE_POISON if has else 0))
    ioctls = u.register(A, 2 * H2M, MISSING | WP)
    assert bool(ioctls & 1 << U._UFFDIO_POISON) == has
    if not has:
        expect(errno.EINVAL, lambda: u.poison(A, H2M))
        return
    expect(errno.EINVAL, lambda: u.poison(A, PAGE), -errno.EINVAL)
    assert u.poison(A, H2M) == H2M
    with pytest.raises(Sigbus):
        p.read(A + 9, 1)
    u.writeprotect(A + H2M, H2M, PROTECT)
    expect(errno.EEXIST, lambda: u.poison(A + H2M, H2M), -errno.EEXIST)   # over a marker too
    c = p.fork()
    with pytest.raises(Sigbus):
        c.read(A, 1)                              # copy_pte_marker: poison always copied
    m.check()


# ---- 1 GiB pages -------------------------------------------------------------------------

def test_one_gib_page_faults_copy_and_protect_as_one_entry():
    m = machine(n2m=0, n1g=2)
    p = m.spawn()
    src = p.mmap(0, H1G, RW, HUGE | C.MAP_HUGE_1GB)
    p.write(src + H1G - 3, b"end")
    A = p.mmap(0, H1G, RW, HUGE | C.MAP_HUGE_1GB)
    u = ctx(p, F_WP)
    u.register(A, H1G, MISSING | WP)
    expect(errno.EINVAL, lambda: u.copy(A, src, H2M))
    with pytest.raises(WouldBlock) as wb:
        p.read(A + 300 * H2M + 5, 1)
    assert one_fault(u).address == A
    assert u.copy(A, src, H1G, mode=U.UFFDIO_COPY_MODE_WP) == H1G
    wb.value.thread.resume()
    assert p.read(A + H1G - 3, 3) == b"end"
    assert p.pagemap(A + 300 * H2M).uffd_wp
    with pytest.raises(WouldBlock) as wb:
        p.write(A + 300 * H2M, b"w")
    assert one_fault(u).address == A
    u.writeprotect(A, H1G, 0)
    wb.value.thread.resume()
    assert not p.pagemap(A + 511 * H2M).uffd_wp
    p.madvise(A, H1G, C.MADV_DONTNEED)
    u.writeprotect(A, H1G, PROTECT)               # 512 leaves of markers
    assert p.pagemap(A + 511 * H2M).uffd_wp and not p.pagemap(A).present
    m.check()


# ---- state ---------------------------------------------------------------------------

def test_save_and_load_keep_markers_protection_and_a_blocked_fault(tmp_path):
    m = machine()
    p = m.spawn()
    A = private(p)
    u = ctx(p, F_WP)
    u.register(A, 2 * H2M, MISSING | WP)
    u.writeprotect(A + H2M, H2M, PROTECT)
    with pytest.raises(WouldBlock):
        p.read(A, 1)
    path = tmp_path / "m.mmemu"
    m.save(path)
    m2 = mmemu.Machine.load(path)
    m2.check()
    p2 = m2.processes[0]
    u2 = p2.uffds[0]
    assert p2.pagemap(A + H2M).uffd_wp
    assert one_fault(u2).address == A
    u2.copy(A, b"k" * H2M)
    assert p2.main.resume() == b"k"
    m2.check()
