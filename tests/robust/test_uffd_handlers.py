"""Misbehaving userfaultfd service handlers. Whatever a handler does, the
faulting call ends with an acceptable outcome (harness.classify; the
handler's own exception may propagate), the machine passes check(), and no
store lands anywhere but in the faulting process's own memory.

Item 3 of issue 9: a handler that makes the faulting process exit and a new
process map the same address - the interrupted write must not land in the
new process (Linux: the faulting task is gone; its store never happens)."""
import pytest

import mmemu
from mmemu import MAP_ANONYMOUS, MAP_FIXED, MAP_PRIVATE, PAGE_SIZE as PAGE
from mmemu.uffd import UFFD_EVENT_PAGEFAULT, UFFDIO_REGISTER_MODE_MISSING

from .harness import classify, verify

RW = mmemu.PROT_READ | mmemu.PROT_WRITE


class HandlerBug(Exception):
    pass


def _setup(kernel):
    m = mmemu.Machine(kernel=kernel, memory=128 * PAGE)
    p = m.spawn()
    a = p.mmap(0, 4 * PAGE, RW, MAP_PRIVATE | MAP_ANONYMOUS)
    u = p.userfaultfd()
    u.api()
    u.register(a, 4 * PAGE, UFFDIO_REGISTER_MODE_MISSING)
    return m, p, a, u


def _raise(ctx, u, msg):
    raise HandlerBug()


def _noop(ctx, u, msg):
    pass


def _unmap(ctx, u, msg):
    u.process.munmap(msg.address & ~(PAGE - 1), PAGE)


def _twice(ctx, u, msg):
    page = msg.address & ~(PAGE - 1)
    u.zeropage(page, PAGE)
    try:
        u.zeropage(page, PAGE)
    except OSError:
        pass                    # EEXIST, as Linux


def _reregister(ctx, u, msg):
    page = msg.address & ~(PAGE - 1)
    u.unregister(page, PAGE)
    u.register(page, PAGE, UFFDIO_REGISTER_MODE_MISSING)
    u.zeropage(page, PAGE)


def _close(ctx, u, msg):
    u.close()


def _exit(ctx, u, msg):
    u.process.exit()


HANDLERS = {"raise": _raise, "noop": _noop, "unmap": _unmap, "resolve-twice": _twice,
            "reregister": _reregister, "close": _close, "exit": _exit}


@pytest.mark.parametrize("kernel", ["5.8", "6.18"])
@pytest.mark.parametrize("name", sorted(HANDLERS))
@pytest.mark.parametrize("access", ["write", "read", "touch", "gup", "proc_mem_write"])
def test_misbehaving_handler(name, access, kernel):
    m, p, a, u = _setup(kernel)
    ctx = {}
    u.serve(lambda uu, msg: HANDLERS[name](ctx, uu, msg) if msg.event == UFFD_EVENT_PAGEFAULT else None)
    calls = {"write": lambda: p.write(a + 10, b"w" * 20), "read": lambda: p.read(a, 10),
             "touch": lambda: p.touch(a, 2, write=True),
             "gup": lambda: p.get_user_pages(a, 2, mmemu.FOLL_WRITE).release(),
             "proc_mem_write": lambda: p.proc_mem_write(a, b"x")}
    try:
        calls[access]()
    except HandlerBug:
        pass
    except Exception as e:
        d = classify(e, f"{access} with handler {name}", wrong_type=False)
        assert d is None, str(d)
    verify(m, f"{access} with handler {name}")


@pytest.mark.parametrize("kernel", ["5.8", "6.18"])
def test_exit_and_reuse_address(kernel):
    """The handler exits the faulting process, and a new process maps the
    same address: the interrupted write must not appear there."""
    m, p, a, u = _setup(kernel)
    new = {}

    def handler(uu, msg):
        if msg.event != UFFD_EVENT_PAGEFAULT:
            return
        uu.process.exit()
        q = m.spawn()
        q.mmap(a, 4 * PAGE, RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED)
        q.write(a, b"\0" * 64)
        new["q"] = q
    u.serve(handler)
    try:
        p.write(a + 10, b"SECRET")
    except Exception as e:
        assert classify(e, "write", wrong_type=False) is None, f"{type(e).__name__}: {e}"
    q = new["q"]
    assert q.read(a, 64) == b"\0" * 64, "the exited process's store landed in another process"
    verify(m, "write")
