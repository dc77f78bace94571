"""A service handler's fault served in place: the core hands the fault to the
handler without leaving the access (mmemu.uffd.serve_in_place), and the
handler's usual ioctls take their one-VMA path in the core (Uffd._fast).
Each case runs both ways - in place, and with both shortcuts turned off - and
must be indistinguishable."""
import pytest

import mmemu
from mmemu import MAP_ANONYMOUS, MAP_PRIVATE, PAGE_SIZE as PAGE
from mmemu.errors import Deadlock, MmemuError
from mmemu.uffd import (UFFD_FEATURE_PAGEFAULT_FLAG_WP, UFFD_FEATURE_THREAD_ID, Uffd, UffdError,
                        UFFDIO_COPY_MODE_DONTWAKE, UFFDIO_REGISTER_MODE_MISSING,
                        UFFDIO_REGISTER_MODE_WP, UFFDIO_WRITEPROTECT_MODE_WP)

PRIV = MAP_PRIVATE | MAP_ANONYMOUS


@pytest.fixture(params=["in place", "general"])
def way(request, monkeypatch):
    if request.param == "general":
        monkeypatch.setattr(mmemu.uffd, "serve_in_place", lambda *a: False)
        monkeypatch.setattr(Uffd, "_fast", lambda *a: False)
    return request.param


def setup(npages=8, mode=UFFDIO_REGISTER_MODE_MISSING, kernel="6.18"):
    m = mmemu.Machine(kernel=kernel, memory=32 << 20)
    p = m.spawn()
    P = p.mmap(0, npages * PAGE, 3, PRIV)
    if mode & UFFDIO_REGISTER_MODE_WP:
        p.touch(P, npages, write=True, value=1)
    u = p.userfaultfd()
    u.api(UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_THREAD_ID)
    u.register(P, npages * PAGE, mode)
    return m, p, P, u


def test_missing_faults_of_every_access_kind(way):
    m, p, P, u = setup()
    seen = []

    def handler(uf, msg):
        seen.append((msg.address, msg.flags, msg.ptid))
        uf.copy(msg.address, bytes([len(seen)]) * PAGE)
    u.serve(handler)
    assert p.touch(P, 2) == 2
    assert p.read(P + 2 * PAGE + 5, 3) == b"\x03" * 3
    p.write(P + 4 * PAGE - 2, b"abcd")              # two pages, two faults
    assert p.read(P + 4 * PAGE - 2, 4) == b"abcd"
    assert seen == [(P, 0, p.main.tid), (P + PAGE, 0, p.main.tid), (P + 2 * PAGE, 0, p.main.tid),
                    (P + 3 * PAGE, 1, p.main.tid), (P + 4 * PAGE, 1, p.main.tid)]
    assert p.read(P + 3 * PAGE, 1) == b"\x04" and p.read(P + 4 * PAGE + 2, 1) == b"\x05"
    assert u.pending() == 0 and not u.waiting and p.main.blocked is None
    m.check()


def test_wp_faults_unprotected_by_the_handler(way):
    m, p, P, u = setup(mode=UFFDIO_REGISTER_MODE_WP)
    u.writeprotect(P, 8 * PAGE, UFFDIO_WRITEPROTECT_MODE_WP)
    seen = []
    u.serve(lambda uf, msg: (seen.append(msg.flags), uf.writeprotect(msg.address, PAGE, 0)))
    assert p.touch(P, 8, write=True, value=9) == 8
    assert seen == [3] * 8 and list(p.versions(P, 8)) == [9] * 8
    assert not any(p.pagemap(P + i * PAGE).uffd_wp for i in range(8))
    m.check()


def test_a_handler_that_does_not_wake_deadlocks_and_the_thread_stays_blocked(way):
    m, p, P, u = setup()
    u.serve(lambda uf, msg: uf.copy(msg.address, b"\x01" * PAGE, mode=UFFDIO_COPY_MODE_DONTWAKE)
            if msg.address == P + 2 * PAGE else uf.zeropage(msg.address, PAGE))
    with pytest.raises(Deadlock) as e:
        p.touch(P, 4, write=True, value=4)          # pages 0, 1 go; page 2 is never woken
    assert "without resolving" in str(e.value) and e.value.waits[0][1] == P + 2 * PAGE
    assert p.main.blocked is not None and list(p.versions(P, 2)) == [4, 4]
    with pytest.raises(MmemuError):
        p.main.touch(P, 1)
    u.wake(P + 2 * PAGE, PAGE)
    assert p.main.resume() == 4 and p.main.blocked is None
    assert list(p.versions(P, 4)) == [4, 4, 4, 4]
    m.check()


def test_a_handler_that_raises_leaves_the_thread_blocked(way):
    m, p, P, u = setup()

    def handler(uf, msg):
        uf.copy(msg.address, b"\x02" * PAGE)
        raise RuntimeError("handler failed")
    u.serve(handler)
    with pytest.raises(RuntimeError):
        p.write(P + 10, b"xy")
    assert p.main.blocked is not None           # resolved and woken, but not yet resumed
    p.main.resume()
    assert p.read(P + 9, 4) == b"\x02xy\x02"
    m.check()


def test_the_handler_faulting_on_its_own_range_is_a_deadlock(way):
    m, p, P, u = setup()
    u.serve(lambda uf, msg: p.read(P + 7 * PAGE, 1))
    with pytest.raises(Deadlock) as e:
        p.read(P, 1)
    assert "only it serves" in str(e.value)
    with pytest.raises(MmemuError):
        p.main.read(P, 1)                        # still blocked on the first fault


@pytest.mark.parametrize("kernel", ["5.19", "6.18"])
def test_fast_ioctls_fail_as_the_checked_path_does(way, kernel):
    m, p, P, u = setup(mode=UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP, kernel=kernel)
    Q = p.mmap(P + 8 * PAGE, 2 * PAGE, 3, PRIV | mmemu.MAP_FIXED)     # unregistered, adjacent
    cases = [
        lambda: u.copy(P, b"\x01" * PAGE),                          # EEXIST: populated
        lambda: u.copy(Q, b"\x01" * PAGE),                          # ENOENT: not registered
        lambda: u.copy(P + 7 * PAGE, b"\x01" * 2 * PAGE),           # ENOENT: crosses the VMA end
        lambda: u.copy(P + 1, b"\x01" * PAGE),                      # EINVAL: misaligned
        lambda: u.copy(-PAGE, b"\x01" * PAGE),                      # EINVAL
        lambda: u.zeropage(P, 0),                                   # EINVAL: empty
        lambda: u.zeropage(P, 1 << 64),                             # EINVAL
        lambda: u.zeropage(Q, PAGE),                                # ENOENT
        lambda: u.writeprotect(P + 7 * PAGE, 2 * PAGE, UFFDIO_WRITEPROTECT_MODE_WP),  # ENOENT
        lambda: u.writeprotect(Q, PAGE, 0),                         # ENOENT
        lambda: u.writeprotect(P, PAGE + 1, 0),                     # EINVAL
    ]
    out = []
    for call in cases:
        with pytest.raises(OSError) as e:
            call()
        out.append((e.value.errno, getattr(e.value, "result", None)))
    assert out == [(17, -17), (2, -2), (2, -2), (22, None), (22, None), (22, None), (22, None),
                   (2, -2), (2, None), (2, None), (22, None)]
    # 6.4+ protects the registered VMA's part before stopping at Q; 5.19 checks first.
    assert p.pagemap(P + 7 * PAGE).uffd_wp is (kernel == "6.18") and p.pagemap(P).uffd_wp is False
    m.check()


def test_copy_that_runs_out_midway_reports_partial_progress(way):
    m, p, P, u = setup()
    u.zeropage(P + 2 * PAGE, PAGE)            # page 2 is populated: COPY stops there
    with pytest.raises(UffdError) as e:
        u.copy(P, b"\x05" * 4 * PAGE)
    assert e.value.errno == 11 and e.value.result == 2 * PAGE
    assert p.read(P + PAGE, 1) == b"\x05" and p.pagemap(P + 3 * PAGE).present is False
    m.check()


def test_pages_repeating_eight_bytes_are_stored_as_versions():
    m = mmemu.Machine(memory=32 << 20)
    p = m.spawn()
    P = p.mmap(0, 4 * PAGE, 3, PRIV)
    pattern = bytes(range(1, 9)) * (PAGE // 8)
    other = bytearray(pattern)
    other[PAGE - 1] ^= 0xFF                         # differs in the last byte only
    p.write(P, pattern)
    p.write(P + PAGE, bytes(other))
    p.write(P + 2 * PAGE, bytes(PAGE))
    assert list(p.versions(P, 3)) == [0x0807060504030201, 2**64 - 1, 0]
    assert m.memory_usage()["byte_pages"] == 1
    assert p.read(P, PAGE) == pattern and p.read(P + PAGE, PAGE) == bytes(other)
    p.write(P + PAGE, pattern)                      # a byte-exact page becomes a version again
    assert m.memory_usage()["byte_pages"] == 0 and p.read(P + PAGE, PAGE) == pattern
    c = p.fork()
    p.write(P + 8, b"Z")                            # COW: the child keeps the pattern
    assert c.read(P, PAGE) == pattern and p.read(P + 6, 4) == b"\x07\x08Z\x02"
    m.check()
