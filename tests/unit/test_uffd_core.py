"""In-core uffd resolvers and blocked-thread semantics."""
import numpy as np
import pytest

import mmemu
from mmemu import MAP_ANONYMOUS, MAP_PRIVATE, PAGE_SIZE as PAGE
from mmemu.errors import WouldBlock
from mmemu.uffd import (O_NONBLOCK, UFFD_FEATURE_PAGEFAULT_FLAG_WP, UFFDIO_REGISTER_MODE_MISSING,
                        UFFDIO_REGISTER_MODE_WP, UFFDIO_WRITEPROTECT_MODE_WP)

PRIV = MAP_PRIVATE | MAP_ANONYMOUS


def setup(npages, mode, populate=False):
    m = mmemu.Machine(memory=32 << 20)
    p = m.spawn()
    P = p.mmap(0, npages * PAGE, 3, PRIV)
    if populate:
        p.touch(P, npages, write=True, value=1)
    u = p.userfaultfd(O_NONBLOCK)
    u.api(UFFD_FEATURE_PAGEFAULT_FLAG_WP)
    u.register(P, npages * PAGE, mode)
    return m, p, P, u


def test_core_copy_resolver_fills_from_versions_and_falls_back_outside():
    m, p, P, u = setup(8, UFFDIO_REGISTER_MODE_MISSING)
    u.serve_core("copy", base=P, versions=np.array([11, 12, 13, 14], np.uint64))
    assert p.touch(P, 4) == 4                       # resolved in the core: no message
    assert list(p.versions(P, 4)) == [11, 12, 13, 14]
    assert u.core_log()[0] == 4 and u.pending() == 0
    with pytest.raises(WouldBlock) as e:            # beyond the source array: the queue
        p.read(P + 5 * PAGE, 1)
    assert e.value.msg.address == P + 5 * PAGE
    m.check()


def test_core_zeropage_resolver():
    m, p, P, u = setup(4, UFFDIO_REGISTER_MODE_MISSING)
    u.serve_core("zeropage")
    assert p.read(P + PAGE, 4) == bytes(4)
    assert p.pagemap(P + PAGE).pfn == 0
    m.check()


def test_core_unprotect_resolver_logs_written_pages_in_order():
    m, p, P, u = setup(6, UFFDIO_REGISTER_MODE_WP, populate=True)
    u.writeprotect(P, 6 * PAGE, UFFDIO_WRITEPROTECT_MODE_WP)
    u.serve_core("unprotect")
    for i in (4, 1, 4):
        p.write(P + i * PAGE, b"w")
    count, log = u.core_log()
    assert count == 2 and list(log) == [P + 4 * PAGE, P + PAGE]
    assert not p.pagemap(P + PAGE).uffd_wp and p.pagemap(P).uffd_wp
    m.check()


def test_resume_before_the_wake_stays_blocked():
    m, p, P, u = setup(2, UFFDIO_REGISTER_MODE_MISSING)
    with pytest.raises(WouldBlock):
        p.write(P, b"data")
    (msg,) = u.read()
    u.copy(P, b"\x07" * PAGE, mode=1)               # COPY_MODE_DONTWAKE: still asleep
    with pytest.raises(WouldBlock):
        p.main.resume()
    u.wake(P, PAGE)
    p.main.resume()                                  # the write completes over the copy
    assert p.read(P, 5) == b"data\x07"
    with pytest.raises(mmemu.MmemuError):
        p.main.resume()                              # nothing left to resume
    m.check()


def test_blocked_gup_holds_its_references():
    # A pin blocked on its second page holds the first page's pin: check()
    # counts it, and the completed pin covers both pages.
    m, p, P, u = setup(2, UFFDIO_REGISTER_MODE_MISSING)
    u.copy(P, b"a" * PAGE)
    with pytest.raises(WouldBlock):
        p.pin_user_pages(P, 2, mmemu.FOLL_WRITE)
    m.check()
    u.read()
    u.copy(P + PAGE, b"b" * PAGE)
    pin = p.main.resume()
    assert pin.npages == 2 and pin.read(PAGE - 1, 2) == b"ab"
    pin.release()
    m.check()


def test_short_odirect_write_releases_its_references_once():
    # The GUP stops at an unmapped page: the write fails with EFAULT and the
    # references taken for the first page are dropped exactly once.
    m = mmemu.Machine(memory=32 << 20)
    p = m.spawn()
    fd = p.memfd_create("f")
    a = p.mmap(0, 2 * PAGE, 3, PRIV)
    p.write(a, b"x")
    p.munmap(a + PAGE, PAGE)
    with pytest.raises(OSError):
        p.pwrite_from(fd, a, 2 * PAGE, 0, direct=True)
    m.check()
    assert m.frame(p.pagemap(a).pfn).refcount >= 1


def test_reregister_with_a_subset_mode_keeps_the_vma_as_it_is():
    # userfaultfd_register_range(): same context and every requested bit
    # already set -> the VMA is skipped, so WP stays armed.
    m, p, P, u = setup(2, UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP, populate=True)
    nvmas = len(p.vmas)
    u.register(P, PAGE, UFFDIO_REGISTER_MODE_MISSING)
    assert len(p.vmas) == nvmas                     # not split either
    u.writeprotect(P, 2 * PAGE, UFFDIO_WRITEPROTECT_MODE_WP)
    with pytest.raises(WouldBlock):
        p.write(P, b"x")
    # a mode that is not a subset replaces the bits (WP dropped here)
    u2 = setup(2, UFFDIO_REGISTER_MODE_WP)
    u2[3].register(u2[2], PAGE, UFFDIO_REGISTER_MODE_MISSING)
    with pytest.raises(OSError) as e:
        u2[3].writeprotect(u2[2], PAGE, UFFDIO_WRITEPROTECT_MODE_WP)
    assert e.value.errno == 2


@pytest.mark.parametrize("kernel,protected", [("6.3", False), ("6.4", True)])
def test_writeprotect_across_an_unregistered_vma(kernel, protected):
    # mwriteprotect_range(): 6.4+ protects the WP VMAs before the first
    # unregistered one and then fails ENOENT; before, nothing changes.
    m = mmemu.Machine(memory=32 << 20, kernel=kernel)
    p = m.spawn()
    P = p.mmap(0, 2 * PAGE, 3, PRIV)
    p.touch(P, 2, write=True, value=1)
    u = p.userfaultfd(O_NONBLOCK)
    u.api(UFFD_FEATURE_PAGEFAULT_FLAG_WP)
    u.register(P, PAGE, UFFDIO_REGISTER_MODE_WP)
    with pytest.raises(OSError) as e:
        u.writeprotect(P, 2 * PAGE, UFFDIO_WRITEPROTECT_MODE_WP)
    assert e.value.errno == 2
    assert p.pagemap(P).uffd_wp is protected
    m.check()
