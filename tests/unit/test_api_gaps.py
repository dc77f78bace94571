"""Small API gaps of issue 10: errors a caller can catch by class, calls
Linux rejects, and what is promised as NotImplementedError.

A failure means the emulated API lets through (or raises differently) what
the kernel's would not."""
import errno

import pytest

import mmemu
from mmemu import constants as C
from mmemu import uffd as U

PAGE = C.PAGE_SIZE
RW = C.PROT_READ | C.PROT_WRITE
PRIV = C.MAP_PRIVATE | C.MAP_ANONYMOUS


def _ctx(p, features=U.UFFD_FEATURE_PAGEFAULT_FLAG_WP):
    u = p.userfaultfd(U.O_CLOEXEC | U.O_NONBLOCK)
    u.api(features)
    return u


def uffd_failures(p, u, P):
    """Each failing uffd ioctl, as (what, errno, call)."""
    return [
        ("REGISTER unaligned", errno.EINVAL, lambda: u.register(P + 1, PAGE, U.UFFDIO_REGISTER_MODE_MISSING)),
        ("REGISTER bad mode", errno.EINVAL, lambda: u.register(P, PAGE, 0)),
        ("REGISTER hole", errno.EINVAL, lambda: u.register(P + 64 * PAGE, PAGE, U.UFFDIO_REGISTER_MODE_MISSING)),
        ("UNREGISTER unaligned", errno.EINVAL, lambda: u.unregister(P, PAGE + 1)),
        ("WRITEPROTECT unregistered", errno.ENOENT,
         lambda: u.writeprotect(P + PAGE, PAGE, U.UFFDIO_WRITEPROTECT_MODE_WP)),
        ("WRITEPROTECT empty", errno.EINVAL, lambda: u.writeprotect(P, 0, U.UFFDIO_WRITEPROTECT_MODE_WP)),
        ("WAKE unaligned", errno.EINVAL, lambda: u.wake(P + 1, PAGE)),
        ("ZEROPAGE unaligned", errno.EINVAL, lambda: u.zeropage(P + 1, PAGE)),
        ("COPY onto a populated page", errno.EEXIST, lambda: u.copy(P, bytes(PAGE))),
        ("API twice", errno.EINVAL, lambda: u.api(0)),
    ]


def _setup(p):
    P = p.mmap(0, 8 * PAGE, RW, PRIV)
    p.write(P, b"x")
    u = _ctx(p)
    u.register(P, PAGE, U.UFFDIO_REGISTER_MODE_MISSING)
    return u, P


def test_every_failing_uffd_ioctl_is_a_uffd_error():
    """`except mmemu.UffdError` catches range errors as well as EEXIST."""
    p = mmemu.Machine(kernel="6.18").spawn()
    u, P = _setup(p)
    for what, err, call in uffd_failures(p, u, P):
        with pytest.raises(mmemu.UffdError) as e:
            call()
        assert e.value.errno == err, what
    u.close()
    with pytest.raises(mmemu.UffdError) as e:
        u.wake(P, PAGE)
    assert e.value.errno == errno.EBADF


def test_get_user_pages_rejects_foll_pin():
    """is_valid_gup_args: FOLL_PIN is for pin_user_pages only (WARN, -EINVAL)."""
    p = mmemu.Machine(kernel="6.18").spawn()
    P = p.mmap(0, PAGE, RW, PRIV)
    p.write(P, b"x")
    with pytest.raises(OSError) as e:
        p.get_user_pages(P, 1, C.FOLL_PIN)
    assert e.value.errno == errno.EINVAL
    assert not p.has_pinned
    p.get_user_pages(P, 1, C.FOLL_WRITE).release()


def test_machine_docstring_does_not_deny_swap():
    assert "not modelled" not in mmemu.Machine.__doc__.split("swap:")[1].split(".")[0]


@pytest.mark.parametrize("advice", [C.MADV_HWPOISON, C.MADV_SOFT_OFFLINE])
def test_memory_failure_advice_is_not_modelled_but_is_not_unknown_either(advice):
    # madvise_inject_error(): Linux with CONFIG_MEMORY_FAILURE takes the
    # advice after the range checks; the engine says what it lacks instead of
    # an EINVAL that would claim the kernel does not know it. Without
    # CONFIG_MEMORY_FAILURE it is EINVAL (madvise_behavior_valid).
    p = mmemu.Machine(memory=16 * PAGE).spawn()
    a = p.mmap(0, PAGE, RW, PRIV)
    assert p.madvise(a, 0, advice) is None                     # empty range: 0, as Linux
    with pytest.raises(OSError) as ei:
        p.madvise(a + 1, PAGE, advice)
    assert ei.value.errno == errno.EINVAL
    with pytest.raises(NotImplementedError, match="memory-failure|soft offlining"):
        p.madvise(a, PAGE, advice)
    # kernel="host" follows this host's CONFIG_MEMORY_FAILURE (eras.py).
    h = mmemu.Machine(kernel="host", memory=16 * PAGE)
    b = h.spawn().mmap(0, PAGE, RW, PRIV)
    with pytest.raises(NotImplementedError if h.policy.memory_failure else OSError):
        h.processes[0].madvise(b, PAGE, advice)
