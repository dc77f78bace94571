"""userfaultfd API rules the scenario tables do not pin down: the errno of
each ioctl (semantics.md 9), the features UFFDIO_API reports and the ioctls
UFFDIO_REGISTER advertises, per era.

A failure here means a program written against Linux would take another
branch on the emulator: an ioctl that should fail succeeds, or fails with
another errno, or a feature appears in the wrong release.
"""
import errno

import pytest

import mmemu
from mmemu import constants as C
from mmemu import uffd as U
from mmemu.eras import VERSIONS, _key
from mmemu.errors import WouldBlock
from mmemu.vma import VM_MAYWRITE

PAGE = C.PAGE_SIZE
RW = C.PROT_READ | C.PROT_WRITE
PRIV = C.MAP_PRIVATE | C.MAP_ANONYMOUS
MISSING, WP, MINOR = U.UFFDIO_REGISTER_MODE_MISSING, U.UFFDIO_REGISTER_MODE_WP, U.UFFDIO_REGISTER_MODE_MINOR
NONBLOCK = U.O_CLOEXEC | U.O_NONBLOCK

# UFFD_API_FEATURES by release (include/uapi/linux/userfaultfd.h), written out
# here independently of eras.py.
FEATURES_SINCE = (
    ("5.7", 0x1FF),                                   # PAGEFAULT_FLAG_WP ... THREAD_ID
    ("5.13", U.UFFD_FEATURE_MINOR_HUGETLBFS),
    ("5.14", U.UFFD_FEATURE_MINOR_SHMEM),
    ("5.18", U.UFFD_FEATURE_EXACT_ADDRESS),
    ("5.19", U.UFFD_FEATURE_WP_HUGETLBFS_SHMEM),
    ("6.4", U.UFFD_FEATURE_WP_UNPOPULATED),
    ("6.6", U.UFFD_FEATURE_POISON),
    ("6.7", U.UFFD_FEATURE_WP_ASYNC),
    ("6.8", U.UFFD_FEATURE_MOVE),
)


def at_least(version, since):
    return _key(version) >= _key(since)


def features_of(version):
    out = 0
    for since, bits in FEATURES_SINCE:
        if at_least(version, since):
            out |= bits
    return out


def bit(nr):
    return 1 << nr


def machine(version="6.18"):
    return mmemu.Machine(kernel=version, memory=32 << 20)


def ctx(p, features=0, flags=NONBLOCK):
    u = p.userfaultfd(flags)
    u.api(features)
    return u


def anon(p, npages=1):
    return p.mmap(0, npages * PAGE, RW, PRIV)


def shmem(p, npages=1, shared=True, fill=None):
    fd = p.memfd_create("t")
    p.ftruncate(fd, npages * PAGE)
    if fill is not None:
        p.pwrite(fd, fill, 0)
    return p.mmap(0, npages * PAGE, RW, C.MAP_SHARED if shared else C.MAP_PRIVATE, fd, 0)


def expect(err, call, result="unchecked"):
    with pytest.raises(OSError) as e:
        call()
    got = errno.errorcode.get(e.value.errno)
    assert e.value.errno == err, f"errno {got}, expected {errno.errorcode[err]}"
    if result != "unchecked":
        assert e.value.result == result
    return e.value


def blocked_on_remove(p, u, addr):
    """A thread waits in MADV_DONTNEED until the REMOVE event is read:
    mmap_changing is raised meanwhile."""
    with pytest.raises(WouldBlock) as wb:
        p.madvise(addr, PAGE, C.MADV_DONTNEED)
    return wb.value


# ---- userfaultfd(2) and UFFDIO_API --------------------------------------------------------

class TestApi:
    @pytest.mark.parametrize("version", VERSIONS)
    def test_features_per_era(self, version):
        # The kernel reports every feature it supports, whatever was asked.
        u = machine(version).spawn().userfaultfd(NONBLOCK)
        assert u.api(0) == features_of(version)
        assert u.ioctls == bit(U._UFFDIO_REGISTER) | bit(U._UFFDIO_UNREGISTER) | bit(U._UFFDIO_API)

    @pytest.mark.parametrize("version", ["5.12", "5.13", "6.6", "6.7"])
    def test_feature_of_a_later_release_is_einval(self, version):
        u = machine(version).spawn().userfaultfd(NONBLOCK)
        later = [bits for since, bits in FEATURES_SINCE if not at_least(version, since)]
        expect(errno.EINVAL, lambda: u.api(later[0]))
        u.api(0)                       # a failed UFFDIO_API leaves the context uninitialised

    def test_bad_api_and_unknown_bit(self):
        u = machine().spawn().userfaultfd(NONBLOCK)
        expect(errno.EINVAL, lambda: u.api(0, api=0xAB))
        expect(errno.EINVAL, lambda: u.api(1 << 63))

    def test_second_api_is_einval(self):
        u = ctx(machine().spawn())
        expect(errno.EINVAL, lambda: u.api(0))

    def test_wp_async_implies_wp_unpopulated(self):
        u = ctx(machine("6.7").spawn(), U.UFFD_FEATURE_PAGEFAULT_FLAG_WP | U.UFFD_FEATURE_WP_ASYNC)
        assert u.features & U.UFFD_FEATURE_WP_UNPOPULATED

    @pytest.mark.parametrize("version,ok", [("5.10", False), ("5.11", True), ("6.18", True)])
    def test_user_mode_only_flag_is_5_11(self, version, ok):
        p = machine(version).spawn()
        if ok:
            p.userfaultfd(U.UFFD_USER_MODE_ONLY)
        else:
            expect(errno.EINVAL, lambda: p.userfaultfd(U.UFFD_USER_MODE_ONLY))

    def test_unknown_flag(self):
        expect(errno.EINVAL, lambda: machine().spawn().userfaultfd(0o100))

    def test_closed_context_is_ebadf(self):
        u = ctx(machine().spawn())
        u.close()
        expect(errno.EBADF, lambda: u.read())
        expect(errno.EBADF, lambda: u.wake(0x10000, PAGE))


class TestBeforeApi:
    """Every ioctl but UFFDIO_API, and read(2), is EINVAL before UFFDIO_API
    (userfaultfd_is_initialized)."""

    CALLS = {
        "register": lambda u, a: u.register(a, PAGE, MISSING),
        "unregister": lambda u, a: u.unregister(a, PAGE),
        "wake": lambda u, a: u.wake(a, PAGE),
        "copy": lambda u, a: u.copy(a, bytes(PAGE)),
        "zeropage": lambda u, a: u.zeropage(a, PAGE),
        "writeprotect": lambda u, a: u.writeprotect(a, PAGE, U.UFFDIO_WRITEPROTECT_MODE_WP),
        "continue": lambda u, a: u.continue_(a, PAGE),
        "poison": lambda u, a: u.poison(a, PAGE),
        "move": lambda u, a: u.move(a, a, PAGE),
        "read": lambda u, a: u.read(),
    }

    @pytest.mark.parametrize("call", list(CALLS))
    def test_einval(self, call):
        p = machine().spawn()
        a = anon(p)
        u = p.userfaultfd(NONBLOCK)
        expect(errno.EINVAL, lambda: self.CALLS[call](u, a))


# ---- UFFDIO_REGISTER ------------------------------------------------------------------------

def expected_ioctls(version, mode, anon_memory=True):
    """UFFD_API_RANGE_IOCTLS of the release, minus WRITEPROTECT without WP and
    CONTINUE without MINOR (userfaultfd_register)."""
    out = bit(U._UFFDIO_WAKE) | bit(U._UFFDIO_COPY) | bit(U._UFFDIO_ZEROPAGE)
    if mode & WP:
        out |= bit(U._UFFDIO_WRITEPROTECT)
    if mode & MINOR:
        out |= bit(U._UFFDIO_CONTINUE)
    if at_least(version, "6.6"):
        out |= bit(U._UFFDIO_POISON)
    if at_least(version, "6.8"):
        out |= bit(U._UFFDIO_MOVE)
    return out


class TestRegister:
    @pytest.mark.parametrize("version", VERSIONS)
    @pytest.mark.parametrize("mode", [MISSING, WP, MISSING | WP])
    def test_anon_ioctls_per_era(self, version, mode):
        p = machine(version).spawn()
        u = ctx(p)
        assert u.register(anon(p), PAGE, mode) == expected_ioctls(version, mode)

    @pytest.mark.parametrize("version", [v for v in VERSIONS if at_least(v, "5.14")])
    def test_shmem_minor_ioctls_per_era(self, version):
        # (MOVE left out: see test_shmem_advertises_move.)
        p = machine(version).spawn()
        u = ctx(p)
        got = u.register(shmem(p), PAGE, MISSING | MINOR)
        assert got & ~bit(U._UFFDIO_MOVE) == expected_ioctls(version, MISSING | MINOR) & ~bit(U._UFFDIO_MOVE)

    def test_shmem_advertises_move(self):
        # UFFD_API_RANGE_IOCTLS has MOVE for every non-hugetlb range (6.8+).
        p = machine("6.8").spawn()
        u = ctx(p)
        assert u.register(shmem(p), PAGE, MISSING) & bit(U._UFFDIO_MOVE)

    @pytest.mark.parametrize("mode", [0, 1 << 3])
    def test_bad_mode(self, mode):
        p = machine().spawn()
        u = ctx(p)
        expect(errno.EINVAL, lambda: u.register(anon(p), PAGE, mode))

    def test_unaligned_and_empty(self):
        p = machine().spawn()
        u = ctx(p)
        a = anon(p, 2)
        expect(errno.EINVAL, lambda: u.register(a + 1, PAGE, MISSING))
        expect(errno.EINVAL, lambda: u.register(a, PAGE + 1, MISSING))
        expect(errno.EINVAL, lambda: u.register(a, 0, MISSING))

    def test_range_with_a_hole(self):
        # userfaultfd_register(): holes are skipped, only a range with no VMA
        # at all is EINVAL (the 6.18 host agrees; every era has this loop).
        p = machine().spawn()
        u = ctx(p)
        a = anon(p, 3)
        p.munmap(a + PAGE, PAGE)
        expect(errno.EINVAL, lambda: u.register(a + PAGE, PAGE, MISSING))
        assert u.register(a, 3 * PAGE, MISSING)
        assert p.vmas.find(a).uffd == u.ctx and p.vmas.find(a + 2 * PAGE).uffd == u.ctx
        u.unregister(a, 3 * PAGE)
        expect(errno.EINVAL, lambda: u.unregister(a + PAGE, PAGE))

    def test_minor_on_anon(self):
        p = machine().spawn()
        u = ctx(p)
        expect(errno.EINVAL, lambda: u.register(anon(p), PAGE, MINOR))

    @pytest.mark.parametrize("version,ok", [("5.13", False), ("5.14", True)])
    def test_minor_on_shmem_is_5_14(self, version, ok):
        p = machine(version).spawn()
        u = ctx(p)
        S = shmem(p)
        if ok:
            u.register(S, PAGE, MINOR)
        else:
            expect(errno.EINVAL, lambda: u.register(S, PAGE, MINOR))

    @pytest.mark.parametrize("version,ok", [("5.18", False), ("5.19", True)])
    @pytest.mark.parametrize("shared", [True, False])
    def test_wp_on_shmem_is_5_19(self, version, ok, shared):
        p = machine(version).spawn()
        u = ctx(p)
        S = shmem(p, shared=shared)
        if ok:
            u.register(S, PAGE, WP)
        else:
            expect(errno.EINVAL, lambda: u.register(S, PAGE, WP))

    def test_ebusy_on_another_context(self):
        p = machine().spawn()
        a = anon(p)
        ctx(p).register(a, PAGE, MISSING)
        expect(errno.EBUSY, lambda: ctx(p).register(a, PAGE, MISSING))

    def test_same_context_replaces_the_mode(self):
        p = machine().spawn()
        u = ctx(p)
        a = anon(p)
        u.register(a, PAGE, MISSING)
        assert u.register(a, PAGE, WP) & bit(U._UFFDIO_WRITEPROTECT)
        p.read(a, 1)                   # no longer MISSING: no fault

    def test_eperm_without_vm_maywrite(self):
        # No public call makes a VMA without VM_MAYWRITE yet (read-only file
        # opens and write seals are not modelled): clear the flag directly.
        p = machine().spawn()
        u = ctx(p)
        S = shmem(p)
        p.vmas.find(S).flags &= ~VM_MAYWRITE
        p._push_vmas()
        expect(errno.EPERM, lambda: u.register(S, PAGE, MISSING))


# ---- fill ioctls ----------------------------------------------------------------------------

class TestFill:
    def test_copy_eexist_enoent(self):
        p = machine().spawn()
        u = ctx(p)
        a = anon(p)
        u.register(a, PAGE, MISSING)
        assert u.copy(a, bytes(PAGE)) == PAGE
        expect(errno.EEXIST, lambda: u.copy(a, bytes(PAGE)), result=-errno.EEXIST)
        b = anon(p)
        expect(errno.ENOENT, lambda: u.copy(b, bytes(PAGE)), result=-errno.ENOENT)
        expect(errno.ENOENT, lambda: u.zeropage(b, PAGE), result=-errno.ENOENT)

    def test_copy_across_two_vmas_is_enoent(self):
        # The dst range must lie in one registered VMA of this context.
        p = machine().spawn()
        u = ctx(p)
        a = anon(p)
        b = p.mmap(a + PAGE, PAGE, C.PROT_READ, PRIV | C.MAP_FIXED)
        u.register(a, PAGE, MISSING)
        u.register(b, PAGE, MISSING)
        expect(errno.ENOENT, lambda: u.copy(a, bytes(2 * PAGE)), result=-errno.ENOENT)

    def test_copy_bad_mode_and_alignment(self):
        p = machine().spawn()
        u = ctx(p)
        a = anon(p)
        u.register(a, PAGE, MISSING)
        expect(errno.EINVAL, lambda: u.copy(a, bytes(PAGE), mode=1 << 5))
        expect(errno.EINVAL, lambda: u.copy(a + 1, bytes(PAGE)))
        expect(errno.EINVAL, lambda: u.zeropage(a, PAGE, mode=U.UFFDIO_COPY_MODE_WP))

    def test_copy_mode_wp_needs_a_wp_vma(self):
        p = machine().spawn()
        u = ctx(p)
        a = anon(p)
        u.register(a, PAGE, MISSING)
        expect(errno.EINVAL, lambda: u.copy(a, bytes(PAGE), mode=U.UFFDIO_COPY_MODE_WP), result=-errno.EINVAL)

    def test_shmem_copy_beyond_eof_is_efault(self):
        p = machine().spawn()
        u = ctx(p)
        fd = p.memfd_create("t")
        p.ftruncate(fd, 2 * PAGE)
        S = p.mmap(0, 2 * PAGE, RW, C.MAP_SHARED, fd, 0)
        u.register(S, 2 * PAGE, MISSING)
        p.ftruncate(fd, PAGE)
        expect(errno.EFAULT, lambda: u.copy(S + PAGE, bytes(PAGE)), result=-errno.EFAULT)

    @pytest.mark.parametrize("version,ok", [("5.12", False), ("5.13", True)])
    def test_continue_exists_since_5_13(self, version, ok):
        p = machine(version).spawn()
        u = ctx(p)
        a = anon(p)
        u.register(a, PAGE, MISSING)
        # 5.13 knows the ioctl (anon is EINVAL all the same, with the field set).
        e = expect(errno.EINVAL, lambda: u.continue_(a, PAGE))
        assert getattr(e, "result", None) == (-errno.EINVAL if ok else None)

    def test_continue_errors(self):
        p = machine("5.14").spawn()
        u = ctx(p)
        S = shmem(p, 2, fill=b"x" * PAGE)
        u.register(S, 2 * PAGE, MINOR)
        assert u.continue_(S, PAGE) == PAGE
        expect(errno.EEXIST, lambda: u.continue_(S, PAGE), result=-errno.EEXIST)
        expect(errno.EFAULT, lambda: u.continue_(S + PAGE, PAGE), result=-errno.EFAULT)

    @pytest.mark.parametrize("version,ok", [("6.3", False), ("6.4", True)])
    def test_continue_mode_wp_is_6_4(self, version, ok):
        p = machine(version).spawn()
        u = ctx(p, U.UFFD_FEATURE_PAGEFAULT_FLAG_WP)
        S = shmem(p, fill=b"x" * PAGE)
        u.register(S, PAGE, MINOR | WP)
        if ok:
            u.continue_(S, PAGE, U.UFFDIO_CONTINUE_MODE_WP)
            assert p.pagemap(S).uffd_wp
        else:
            expect(errno.EINVAL, lambda: u.continue_(S, PAGE, U.UFFDIO_CONTINUE_MODE_WP))

    def test_continue_on_a_missing_only_shmem_vma(self):
        # mfill_atomic only requires shmem for CONTINUE (no MINOR check, 5.14+).
        p = machine().spawn()
        u = ctx(p)
        S = shmem(p, fill=b"x" * PAGE)
        u.register(S, PAGE, MISSING)
        assert u.continue_(S, PAGE) == PAGE
        assert p.read(S, 1) == b"x"

    @pytest.mark.parametrize("version,ok", [("6.5", False), ("6.6", True)])
    def test_poison_is_6_6(self, version, ok):
        p = machine(version).spawn()
        u = ctx(p)
        a = anon(p)
        u.register(a, PAGE, MISSING)
        if ok:
            assert u.poison(a, PAGE) == PAGE
            expect(errno.EEXIST, lambda: u.poison(a, PAGE), result=-errno.EEXIST)
        else:
            expect(errno.EINVAL, lambda: u.poison(a, PAGE))

    @pytest.mark.parametrize("version,ok", [("6.7", False), ("6.8", True)])
    def test_move_is_6_8(self, version, ok):
        p = machine(version).spawn()
        u = ctx(p)
        src, dst = anon(p), anon(p)
        p.write(src, b"m")
        u.register(dst, PAGE, MISSING)
        if ok:
            assert u.move(dst, src, PAGE) == PAGE
        else:
            expect(errno.EINVAL, lambda: u.move(dst, src, PAGE))

    def test_move_bad_mode(self):
        p = machine().spawn()
        u = ctx(p)
        src, dst = anon(p), anon(p)
        u.register(dst, PAGE, MISSING)
        expect(errno.EINVAL, lambda: u.move(dst, src, PAGE, mode=1 << 4))


# ---- mmap_changing --------------------------------------------------------------------------

class TestMmapChanging:
    """While a non-cooperative event is unread every range ioctl is EAGAIN,
    checked before its arguments (the output field holds -EAGAIN only since
    95567729173e, 6.15: the scenario S42 covers that split)."""

    CALLS = {
        "copy": lambda u, a: u.copy(a, bytes(PAGE)),
        "zeropage": lambda u, a: u.zeropage(a, PAGE),
        "writeprotect": lambda u, a: u.writeprotect(a, PAGE, U.UFFDIO_WRITEPROTECT_MODE_WP),
        "continue": lambda u, a: u.continue_(a, PAGE),
        "poison": lambda u, a: u.poison(a, PAGE),
        "move": lambda u, a: u.move(a, a + PAGE, PAGE),
    }

    @pytest.mark.parametrize("call", list(CALLS))
    def test_eagain(self, call):
        p = machine().spawn()
        u = ctx(p, U.UFFD_FEATURE_EVENT_REMOVE | U.UFFD_FEATURE_PAGEFAULT_FLAG_WP)
        a = anon(p, 2)
        u.register(a, 2 * PAGE, MISSING | WP)
        wb = blocked_on_remove(p, u, a)
        assert u.mmap_changing
        e = expect(errno.EAGAIN, lambda: self.CALLS[call](u, a))
        if call != "writeprotect":
            assert e.result == -errno.EAGAIN
        assert [m.event for m in u.read()] == [U.UFFD_EVENT_REMOVE]
        wb.thread.resume()
        assert not u.mmap_changing

    def test_unregister_and_wake_do_not_care(self):
        p = machine().spawn()
        u = ctx(p, U.UFFD_FEATURE_EVENT_REMOVE)
        a = anon(p, 2)
        u.register(a, 2 * PAGE, MISSING)
        blocked_on_remove(p, u, a)
        u.wake(a, PAGE)
        u.unregister(a + PAGE, PAGE)


# ---- UFFDIO_WRITEPROTECT, WAKE, read(2) ----------------------------------------------------

class TestWriteprotect:
    def test_wp_and_dontwake_is_einval(self):
        p = machine().spawn()
        u = ctx(p, U.UFFD_FEATURE_PAGEFAULT_FLAG_WP)
        a = anon(p)
        u.register(a, PAGE, WP)
        expect(errno.EINVAL, lambda: u.writeprotect(
            a, PAGE, U.UFFDIO_WRITEPROTECT_MODE_WP | U.UFFDIO_WRITEPROTECT_MODE_DONTWAKE))
        expect(errno.EINVAL, lambda: u.writeprotect(a, PAGE, 1 << 2))

    def test_not_wp_registered_is_enoent(self):
        p = machine().spawn()
        u = ctx(p)
        a, b = anon(p), anon(p)
        u.register(a, PAGE, MISSING)
        expect(errno.ENOENT, lambda: u.writeprotect(a, PAGE, U.UFFDIO_WRITEPROTECT_MODE_WP))
        expect(errno.ENOENT, lambda: u.writeprotect(b, PAGE, U.UFFDIO_WRITEPROTECT_MODE_WP))

    def test_protect_never_wakes_unprotect_does(self):
        p = machine().spawn()
        u = ctx(p, U.UFFD_FEATURE_PAGEFAULT_FLAG_WP)
        a = anon(p)
        u.register(a, PAGE, WP)
        p.write(a, b"1")
        u.writeprotect(a, PAGE, U.UFFDIO_WRITEPROTECT_MODE_WP)
        t = p.thread()
        with pytest.raises(WouldBlock):
            t.write(a, b"2")
        u.writeprotect(a, PAGE, U.UFFDIO_WRITEPROTECT_MODE_WP)
        with pytest.raises(WouldBlock):
            t.resume()
        u.writeprotect(a, PAGE, U.UFFDIO_WRITEPROTECT_MODE_DONTWAKE)
        with pytest.raises(WouldBlock):
            t.resume()
        u.wake(a, PAGE)
        t.resume()
        assert p.read(a, 1) == b"2"


class TestRead:
    def test_nonblocking_empty_is_eagain(self):
        u = ctx(machine().spawn())
        expect(errno.EAGAIN, u.read)

    def test_faults_come_before_events(self):
        p = machine().spawn()
        u = ctx(p, U.UFFD_FEATURE_EVENT_REMOVE)
        a = anon(p, 2)
        u.register(a, 2 * PAGE, MISSING)
        t = p.thread()
        with pytest.raises(WouldBlock):
            t.read(a + PAGE, 1)
        blocked_on_remove(p, u, a)
        # The event was queued last but page faults are read first; and a
        # partial read leaves the rest queued.
        first = u.read(max_msgs=1)
        assert [m.event for m in first] == [U.UFFD_EVENT_PAGEFAULT]
        assert [m.event for m in u.read()] == [U.UFFD_EVENT_REMOVE]

    def test_woken_unread_message_is_withdrawn(self):
        p = machine().spawn()
        u = ctx(p)
        a = anon(p)
        u.register(a, PAGE, MISSING)
        t = p.thread()
        with pytest.raises(WouldBlock):
            t.read(a, 1)
        u.zeropage(a, PAGE)
        expect(errno.EAGAIN, u.read)
        assert t.resume() == b"\x00"

    def test_wake_unaligned_is_einval(self):
        u = ctx(machine().spawn())
        expect(errno.EINVAL, lambda: u.wake(0x10001, PAGE))
        expect(errno.EINVAL, lambda: u.wake(0x10000, 0))


# ---- UFFD_EVENT_UNMAP ------------------------------------------------------------------------

class TestUnmapEvent:
    """With EVENT_UNMAP every unmap of a registered range is reported after the
    unmap, and the unmapping call waits until the event is read
    (userfaultfd_unmap_prep/complete): munmap, mmap(MAP_FIXED) over the range
    (vm_mmap_pgoff), and mremap shrinking it."""

    UNMAPS = {
        "munmap": lambda p, a: p.munmap(a + PAGE, PAGE),
        "map_fixed": lambda p, a: p.mmap(a + PAGE, PAGE, RW, PRIV | C.MAP_FIXED),
        "mremap_shrink": lambda p, a: p.mremap(a, 2 * PAGE, PAGE),
    }

    @pytest.mark.parametrize("how", ["munmap", "map_fixed", "mremap_shrink"])
    def test_unmap_event(self, how):
        p = machine().spawn()
        u = ctx(p, U.UFFD_FEATURE_EVENT_UNMAP)
        a = anon(p, 2)
        u.register(a, 2 * PAGE, MISSING)
        with pytest.raises(WouldBlock) as wb:
            self.UNMAPS[how](p, a)
        (msg,) = u.read()
        assert (msg.event, msg.start, msg.end) == (U.UFFD_EVENT_UNMAP, a + PAGE, a + 2 * PAGE)
        wb.value.thread.resume()

    def test_no_event_without_the_feature(self):
        p = machine().spawn()
        u = ctx(p)
        a = anon(p, 2)
        u.register(a, 2 * PAGE, MISSING)
        p.munmap(a + PAGE, PAGE)
        assert u.pending() == 0
