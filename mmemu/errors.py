"""Errors: errno -> OSError, emulated signals, broken invariants.

Syscall-like calls raise OSError with the errno Linux returns (Python maps
the errno to the matching subclass, e.g. ENOMEM stays OSError, ENOENT becomes
FileNotFoundError). A user access Linux would kill raises Sigsegv / Sigbus.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .process import Thread
    from .uffd import Uffd, UffdMsg

import errno as _errno
import os

from .constants import BUS_ADRERR, SEGV_MAPERR, SIGBUS, SIGSEGV


def oserror(err: int, call: str, detail: str | None = None) -> OSError:
    """OSError for `call` failing with `err`, with Linux's message text."""
    msg = os.strerror(err)
    if detail:
        msg = f"{msg} ({detail})"
    return OSError(err, f"{call}: {msg}")


class MmemuError(Exception):
    """Base class of mmemu's own exceptions."""


class EmulatedSignal(MmemuError):
    """A signal the emulated kernel delivers to the accessing thread."""

    signo = 0

    def __init__(self, addr: int, si_code: int, detail: str = "") -> None:
        self.addr = addr
        self.si_code = si_code
        self.detail = detail
        super().__init__(f"{type(self).__name__} at {addr:#x} (si_code={si_code})"
                         + (f": {detail}" if detail else ""))


class Sigsegv(EmulatedSignal):
    signo = SIGSEGV

    def __init__(self, addr: int, si_code: int = SEGV_MAPERR, detail: str = "") -> None:
        super().__init__(addr, si_code, detail)


class Sigbus(EmulatedSignal):
    signo = SIGBUS

    def __init__(self, addr: int, si_code: int = BUS_ADRERR, detail: str = "") -> None:
        super().__init__(addr, si_code, detail)


class OutOfMemory(MmemuError, MemoryError):
    """The machine ran out of frames and had nothing to reclaim: Linux would
    OOM-kill. Carries the address of the fault that could not be served."""

    def __init__(self, addr: int, detail: str = "no free frame") -> None:
        self.addr = addr
        super().__init__(f"out of memory at {addr:#x}: {detail}")


class UserFault(Exception):
    """Internal: a core call stopped on a userfaultfd fault (handle_userfault
    queued a message). The Python layer turns it into waiting, a handler
    call, WouldBlock or Deadlock; users never see it."""

    def __init__(self, ctx, mm, address, flags, reason, done, partial=None, waiter=None):
        # (Raised once per fault on the hot path: no message formatting here.)
        self.ctx, self.mm, self.address, self.flags, self.reason = ctx, mm, address, flags, reason
        self.done = done            # bytes or pages completed before the fault
        self.partial = partial      # GUP: pfns taken before the fault (references held)
        self.waiter = waiter        # set when a service handler already ran and left it unresolved

    def __str__(self) -> str:
        return f"userfault ctx {self.ctx} at {self.address:#x} flags {self.flags:#x}"


class WouldBlock(MmemuError):
    """The thread's access hit a userfaultfd fault with no service thread:
    it stays blocked; read the uffd, resolve, then Thread.resume()."""

    def __init__(self, thread: Thread, uffd: Uffd, msg: UffdMsg) -> None:
        self.thread, self.uffd, self.msg = thread, uffd, msg
        super().__init__(f"thread {thread.tid} blocked: {msg}")


class Deadlock(MmemuError):
    """Every thread that could resolve a userfaultfd wait is itself waiting."""

    def __init__(self, reason: str, waits: list[tuple[str, int, str]]) -> None:
        self.reason = reason
        self.waits = waits          # [(thread description, address, what it waits for)]
        lines = "; ".join(f"{t} waits at {a:#x} for {w}" for t, a, w in waits)
        super().__init__(f"deadlock: {reason}: {lines}")


class Livelock(MmemuError):
    """An access whose fault is handled without error yet leaves a pte that
    still refuses it: Linux would take the same fault for ever, and the
    thread would spin there (killable, never done). Raised instead of
    looping; carries the address."""

    def __init__(self, addr: int) -> None:
        self.addr = addr
        super().__init__(f"livelock at {addr:#x}: the access faults again at once, for ever")


class InvariantError(MmemuError, AssertionError):
    """Machine.check() found state that no kernel would reach."""

    def __init__(self, rule: str, pfn: int | None = None, detail: str = "") -> None:
        self.rule = rule
        self.pfn = pfn
        where = f"frame {pfn}: " if pfn is not None else ""
        super().__init__(f"{where}{rule}" + (f" ({detail})" if detail else ""))


EPERM = _errno.EPERM
ENOENT = _errno.ENOENT
EINTR = _errno.EINTR
EIO = _errno.EIO
EBADF = _errno.EBADF
EAGAIN = _errno.EAGAIN
ENOMEM = _errno.ENOMEM
EACCES = _errno.EACCES
EFAULT = _errno.EFAULT
EBUSY = _errno.EBUSY
EEXIST = _errno.EEXIST
EINVAL = _errno.EINVAL
ENFILE = _errno.ENFILE
ENOSPC = _errno.ENOSPC
ESRCH = _errno.ESRCH
ENOTTY = _errno.ENOTTY
EOVERFLOW = _errno.EOVERFLOW
EFBIG = _errno.EFBIG
EOPNOTSUPP = _errno.EOPNOTSUPP
