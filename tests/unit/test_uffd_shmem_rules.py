"""userfaultfd on shmem where an earlier engine disagreed with the 6.18 host
(each found by probing the host with C programs; tests/host runs them on
the host where the oracle can)."""
import pytest

import mmemu
from mmemu import MADV_PAGEOUT, MAP_SHARED, PAGE_SIZE as PG
from mmemu.errors import WouldBlock
from mmemu.uffd import (O_NONBLOCK, UFFD_PAGEFAULT_FLAG_WP, UffdError, UFFDIO_REGISTER_MODE_MINOR,
                        UFFDIO_REGISTER_MODE_MISSING, UFFDIO_REGISTER_MODE_WP,
                        UFFDIO_WRITEPROTECT_MODE_WP)


def shmem(kernel="6.18", mode=UFFDIO_REGISTER_MODE_WP):
    m = mmemu.Machine(kernel=kernel, memory=32 << 20, swap=16 << 20)
    p = m.spawn()
    fd = p.memfd_create("x", 0)
    p.ftruncate(fd, PG)
    s = p.mmap(0, PG, 3, MAP_SHARED, fd, 0)
    p.write(s, b"a")
    u = p.userfaultfd(O_NONBLOCK)
    u.api(0)
    u.register(s, PG, mode)
    return m, p, s, u


@pytest.mark.parametrize("kernel,faults", [("6.1", 0), ("6.18", 1)])
def test_unprotect_leaves_a_shared_pte_read_only(kernel, faults):
    # uffd_wp_range() 6.3+: vma_wants_manual_pte_write_upgrade() says no for a
    # shared VMA whose vm_page_prot is write-notify read-only, so the next
    # write takes a (write-notify) fault. Before 6.3 unprotect restored write.
    m, p, s, u = shmem(kernel)
    u.writeprotect(s, PG, UFFDIO_WRITEPROTECT_MODE_WP)
    u.writeprotect(s, PG, 0)
    before = p.minflt
    p.write(s, b"b")
    assert p.minflt - before == faults
    m.check()


def test_continue_swaps_a_swapped_out_page_in():
    m, p, s, u = shmem(mode=UFFDIO_REGISTER_MODE_MINOR)
    p.madvise(s, PG, MADV_PAGEOUT)
    assert p.pagemap(s).present is False
    assert u.continue_(s, PG) == PG
    assert p.read(s, 1) == b"a" and p.pagemap(s).present
    m.check()


def test_continue_past_eof_is_einval():
    m = mmemu.Machine(memory=32 << 20)
    p = m.spawn()
    fd = p.memfd_create("x", 0)
    p.ftruncate(fd, PG)
    s = p.mmap(0, 2 * PG, 3, MAP_SHARED, fd, 0)      # page 1 lies past EOF
    u = p.userfaultfd(O_NONBLOCK)
    u.api(0)
    u.register(s, 2 * PG, UFFDIO_REGISTER_MODE_MINOR)
    with pytest.raises(UffdError) as e:
        u.continue_(s + PG, PG)                       # shmem_get_folio(SGP_NOALLOC) past i_size
    assert e.value.errno == 22 and e.value.result == -22
    with pytest.raises(UffdError) as e:
        u.continue_(s, PG)                            # a hole within the file
    assert e.value.errno == 14 and e.value.result == -14


def test_pageout_of_a_protected_page_leaves_a_wp_marker():
    m, p, s, u = shmem()
    u.writeprotect(s, PG, UFFDIO_WRITEPROTECT_MODE_WP)
    p.madvise(s, PG, MADV_PAGEOUT)
    e = p.pagemap(s)
    assert e.present is False and e.uffd_wp
    assert p.read(s, 1) == b"a"                       # swapped in, still protected
    with pytest.raises(WouldBlock) as wb:
        p.write(s, b"z")
    assert wb.value.msg.flags & UFFD_PAGEFAULT_FLAG_WP
    m.check()


@pytest.mark.parametrize("kernel,err", [("6.12", None), ("6.18", 22)])
def test_unregister_through_another_context(kernel, err):
    m, p, s, u = shmem(kernel, mode=UFFDIO_REGISTER_MODE_MISSING)
    u2 = p.userfaultfd(O_NONBLOCK)
    u2.api(0)
    if err is None:
        u2.unregister(s, PG)                          # silently skipped
        assert p.vmas.find(s).uffd == u.ctx
    else:
        with pytest.raises(OSError) as e:
            u2.unregister(s, PG)
        assert e.value.errno == err


def test_continue_looks_the_cache_up_before_the_pte():
    # mfill_atomic_pte_continue() takes the cache folio first: a hole is
    # EFAULT even where a private COW page is mapped; a cached page where
    # the pte is taken is EEXIST (found by `mmemu diff --uffd` on 6.18).
    import errno

    from mmemu import MAP_PRIVATE
    m = mmemu.Machine(memory=32 << 20)
    p = m.spawn()
    fd = p.memfd_create("x", 0)
    p.ftruncate(fd, 4 * PG)
    p.pwrite(fd, b"cached", 0)                        # page 0 cached, page 1 a hole
    a = p.mmap(0, 2 * PG, 3, MAP_PRIVATE, fd, 0)
    p.write(a, b"x")                                  # a private COW copy of the cached page
    u = p.userfaultfd(O_NONBLOCK)
    u.api(0)
    u.register(a, 2 * PG, UFFDIO_REGISTER_MODE_MISSING)
    u.serve_core("zeropage")
    p.write(a + PG, b"y")             # MISSING: the zero page, then COW: anon, the hole stays
    assert p.pread(fd, 1, PG) == b"\0" and p.pagemap(a + PG).present
    with pytest.raises(UffdError) as hole:
        u.continue_(a + PG, PG)
    with pytest.raises(UffdError) as taken:
        u.continue_(a, PG)
    assert hole.value.errno == errno.EFAULT and taken.value.errno == errno.EEXIST
    m.check()
