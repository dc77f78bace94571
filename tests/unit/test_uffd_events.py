"""Non-cooperative events as the 6.18 host sends them (each case was first
seen on the host with a C monitor thread; tests/host/test_host_uffd.py runs
the served ones against the host directly)."""
import pytest

import mmemu
from mmemu import MAP_ANONYMOUS, MAP_FIXED, MAP_PRIVATE, PAGE_SIZE as PG
from mmemu.errors import WouldBlock
from mmemu.uffd import (O_NONBLOCK, UFFD_EVENT_REMAP, UFFD_EVENT_REMOVE, UFFD_EVENT_UNMAP,
                        UFFD_FEATURE_EVENT_REMAP, UFFD_FEATURE_EVENT_REMOVE,
                        UFFD_FEATURE_EVENT_UNMAP, UffdError, UFFDIO_REGISTER_MODE_MISSING,
                        UFFDIO_REGISTER_MODE_WP)

PRIV = MAP_PRIVATE | MAP_ANONYMOUS
MREMAP_MAYMOVE, MREMAP_FIXED = 1, 2


def setup(features, npages=8):
    m = mmemu.Machine(memory=32 << 20)
    p = m.spawn()
    a = p.mmap(0, npages * PG, 3, PRIV)
    u = p.userfaultfd(O_NONBLOCK)
    u.api(features)
    return m, p, a, u


def served(u):
    log = []
    u.serve(lambda uf, msg: log.append(msg))
    return log


def spans(log, a):
    out = []
    for msg in log:
        if msg.event == UFFD_EVENT_REMAP:
            out.append(("REMAP", (msg.from_ - a) // PG, (msg.to - a) // PG, msg.len // PG))
        else:
            out.append(({UFFD_EVENT_REMOVE: "REMOVE", UFFD_EVENT_UNMAP: "UNMAP"}[msg.event],
                        (msg.start - a) // PG, (msg.end - a) // PG))
    return out


def test_remove_is_sent_per_vma_with_the_range_cut_to_it():
    m, p, a, u = setup(UFFD_FEATURE_EVENT_REMOVE)
    u.register(a, 4 * PG, UFFDIO_REGISTER_MODE_MISSING)
    u.register(a + 4 * PG, 2 * PG, UFFDIO_REGISTER_MODE_WP)     # [6, 8) unregistered
    log = served(u)
    p.madvise(a + 2 * PG, 6 * PG, mmemu.MADV_DONTNEED)
    assert spans(log, a) == [("REMOVE", 2, 4), ("REMOVE", 4, 6)]
    m.check()


def test_no_remove_when_the_vma_check_fails_first():
    m, p, a, u = setup(UFFD_FEATURE_EVENT_REMOVE)
    u.register(a, 8 * PG, UFFDIO_REGISTER_MODE_MISSING)
    log = served(u)
    with pytest.raises(OSError) as e:
        p.madvise(a, 2 * PG, mmemu.MADV_REMOVE)     # no file: EINVAL before userfaultfd_remove
    assert e.value.errno == 22 and log == []
    p.mmap(a + 4 * PG, 4 * PG, 3, PRIV | MAP_FIXED | mmemu.MAP_LOCKED)
    u.register(a + 4 * PG, 4 * PG, UFFDIO_REGISTER_MODE_MISSING)
    with pytest.raises(OSError) as e:
        p.madvise(a + 2 * PG, 4 * PG, mmemu.MADV_DONTNEED)   # [2,4) goes, the locked VMA stops it
    assert e.value.errno == 22 and spans(log, a) == [("REMOVE", 2, 4)]


def test_mremap_sends_unmap_for_the_fixed_target_and_the_source():
    m, p, a, u = setup(UFFD_FEATURE_EVENT_REMAP | UFFD_FEATURE_EVENT_UNMAP)
    u.register(a, 8 * PG, UFFDIO_REGISTER_MODE_MISSING)
    log = served(u)
    p.mremap(a, 2 * PG, 2 * PG, MREMAP_MAYMOVE | MREMAP_FIXED, a + 4 * PG)
    assert spans(log, a) == [("UNMAP", 4, 6), ("REMAP", 0, 4, 2), ("UNMAP", 0, 2)]
    log.clear()
    p.mremap(a + 4 * PG, 4 * PG, PG, MREMAP_MAYMOVE | MREMAP_FIXED, a)   # move and shrink
    assert spans(log, a) == [("REMAP", 4, 0, 1), ("UNMAP", 5, 8), ("UNMAP", 4, 5)]
    m.check()


def test_mremap_with_unmap_events_only():
    m, p, a, u = setup(UFFD_FEATURE_EVENT_UNMAP)
    u.register(a, 4 * PG, UFFDIO_REGISTER_MODE_MISSING)
    log = served(u)
    p.mremap(a, 2 * PG, 2 * PG, MREMAP_MAYMOVE | MREMAP_FIXED, a + 4 * PG)
    assert spans(log, a) == [("UNMAP", 0, 2)]       # the moved VMA is unregistered: no REMAP
    m.check()


def test_mmap_changing_lasts_until_the_waiting_thread_runs_again():
    m, p, a, u = setup(UFFD_FEATURE_EVENT_REMOVE)
    u.register(a, 2 * PG, UFFDIO_REGISTER_MODE_MISSING)
    with pytest.raises(WouldBlock):
        p.madvise(a, 2 * PG, mmemu.MADV_DONTNEED)
    assert [msg.event for msg in u.read()] == [UFFD_EVENT_REMOVE]
    with pytest.raises(UffdError) as e:             # read, but madvise has not returned yet
        u.copy(a, b"x" * PG)
    assert e.value.errno == 11
    p.main.resume()
    assert u.copy(a, b"x" * PG) == PG
    m.check()


def test_close_while_fork_waits_for_its_fork_event_releases_nothing():
    # The child being forked already holds the fd: the close is not the last
    # reference, the FORK event can never be read, and fork waits for good.
    from mmemu.uffd import UFFD_FEATURE_EVENT_FORK
    m, p, a, u = setup(UFFD_FEATURE_EVENT_FORK)
    u.register(a, PG, UFFDIO_REGISTER_MODE_MISSING)
    with pytest.raises(WouldBlock):
        p.fork()
    u.close()
    with pytest.raises(WouldBlock):
        p.main.resume()
    assert p.vmas.find(a).uffd == u.ctx                 # still registered: no release ran


def test_close_wakes_blocked_wp_waiters():
    """userfaultfd_release wakes every waiter, read or not: a thread blocked
    on a write-protect fault then completes, its fault retried without the
    (now unregistered) context, so the write lands. If close() stopped waking
    them, resume() would raise WouldBlock forever (a hung process)."""
    m = mmemu.Machine(kernel="6.18")
    p = m.spawn()
    P = p.mmap(0, 2 * PG, mmemu.PROT_READ | mmemu.PROT_WRITE, PRIV)
    p.write(P, b"a" * (2 * PG))
    u = p.userfaultfd(mmemu.uffd.O_CLOEXEC | mmemu.uffd.O_NONBLOCK)
    u.api(mmemu.uffd.UFFD_FEATURE_PAGEFAULT_FLAG_WP)
    u.register(P, 2 * PG, mmemu.uffd.UFFDIO_REGISTER_MODE_WP)
    u.writeprotect(P, 2 * PG, mmemu.uffd.UFFDIO_WRITEPROTECT_MODE_WP)
    t1, t2 = p.thread(), p.thread()
    with pytest.raises(mmemu.WouldBlock):
        t1.write(P, b"1")
    assert len(u.read()) == 1                    # t1's message read: it waits in `waiting`
    with pytest.raises(mmemu.WouldBlock):
        t2.write(P + PG, b"2")                 # t2's is still queued
    u.close()
    t1.resume()
    t2.resume()
    assert p.read(P, 1) == b"1" and p.read(P + PG, 1) == b"2"
    assert not p.pagemap(P).uffd_wp and not p.pagemap(P + PG).uffd_wp
    m.check()


def test_munmap_while_the_main_thread_sleeps_in_a_userfault_is_another_threads_call():
    # Linux: the main thread sleeps in a MISSING fault; another thread's
    # munmap sends its UNMAP event and returns once the monitor read it.
    # The engine used to make the call on the sleeping thread and fail
    # (MmemuError) - found by `mmemu diff --against vm:6.12 --uffd --seed 8`.
    m, p, a, u = setup(UFFD_FEATURE_EVENT_UNMAP)
    u.register(a, 4 * PG, UFFDIO_REGISTER_MODE_MISSING)
    with pytest.raises(WouldBlock):
        p.read(a, 1)
    log = served(u)
    log.clear()                                   # the fault's own message
    p.munmap(a + 2 * PG, PG)
    assert spans(log, a) == [("UNMAP", 2, 3)]
