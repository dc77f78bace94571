"""What the robustness harness accepts as an outcome, and what it verifies
after every call (shared by the argument fuzzer and the random runner).

Outcome rules (issue 9, "Keep it so"). A call may:
  * return normally;
  * raise OSError (UffdError included) whose errno is one Linux uses for
    these calls (LINUX_ERRNOS); an OSError without an errno is a defect;
  * raise one of mmemu's own exceptions: Sigsegv, Sigbus, OutOfMemory,
    WouldBlock, Deadlock, MmemuError - but never InvariantError (a broken
    invariant is corrupted state, whoever notices it);
  * raise NotImplementedError naming a feature that is not modelled;
  * raise TypeError only when the call was given a value of the wrong type
    (a float, str, None, bytes, an object of the wrong class where an
    integer is required; an int where bytes are). Python ints of any size
    and numpy integers are integers: a TypeError (or OverflowError) for one
    of them is a defect - Linux takes any 64-bit value and answers EINVAL,
    ENOMEM or EFAULT;
  * raise ValueError from mmemu's own Python code (pure-Python arguments
    such as cpu=, a Pin's offsets, Resolver(missing=)). A ValueError from
    numpy or from the compiled core ("VMAs overlap or are unsorted" is a
    corrupted layout) is a defect.
Everything else - OverflowError, AttributeError, KeyError, IndexError,
ZeroDivisionError, SystemError, RecursionError, a plain MemoryError (a host
allocation sized by the caller's count: the machine's own shortage is
OutOfMemory), a crash - is a defect.

After every call the machine must pass check(), which also requires each
live process's Python VMA list to be well formed (start < end, page
aligned, end <= TASK_SIZE, sorted and disjoint) and equal to the core's
table.
"""
import errno
import os
import re
import traceback

import numpy as np

import mmemu
from mmemu.errors import InvariantError, MmemuError

# Errnos the modelled syscalls (mm, memfd, uffd ioctls, /proc files, pipes) return on Linux.
LINUX_ERRNOS = frozenset({
    errno.EPERM, errno.ENOENT, errno.ESRCH, errno.EINTR, errno.EIO, errno.EBADF, errno.EAGAIN,
    errno.ENOMEM, errno.EACCES, errno.EFAULT, errno.EBUSY, errno.EEXIST, errno.ENODEV,
    errno.EINVAL, errno.ENFILE, errno.EMFILE, errno.ENOTTY, errno.EFBIG, errno.ENOSPC,
    errno.ESPIPE, errno.EROFS, errno.EOVERFLOW, errno.EOPNOTSUPP, errno.ENOSYS, 133,   # 133: EHWPOISON
})

_MMEMU_DIR = os.path.dirname(mmemu.__file__)



class Defect(Exception):
    """A call's outcome or the state it left is not acceptable."""

    def __init__(self, kind, method, detail, exc=None):
        self.kind, self.method, self.detail, self.exc = kind, method, detail, exc
        self.frame = top_frame(exc) if exc is not None else ""
        super().__init__(f"{kind} in {method}: {detail}" + (f" [{self.frame}]" if self.frame else ""))

    @property
    def key(self):
        """Dedupe key: for an error, its kind + exception type + top mmemu
        frame + method; for corrupted state, the broken rule (numbers
        stripped: the call that reveals it is often not the one that caused it)."""
        et = type(self.exc).__name__ if self.exc is not None else ""
        if self.kind == "corrupted":
            return (self.kind, et, re.sub(r"0x[0-9a-f]+|\d+", "N", self.detail), "")
        return (self.kind, et, self.frame, self.method)


def top_frame(exc):
    """The innermost frame of the traceback inside the mmemu package
    ("file:line:function"), else the innermost frame."""
    tb = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ else []
    inside = [f for f in tb if f.filename.startswith(_MMEMU_DIR) or "_core" in f.filename]
    f = (inside or tb or [None])[-1]
    if f is None:
        return ""
    return f"{os.path.relpath(f.filename, os.path.dirname(_MMEMU_DIR))}:{f.lineno}:{f.name}"


# The core's own range checks of Python-only arguments (a CPU number, a pfn
# for Machine.frame, the machine's CPU count): deliberate ValueErrors.
_CORE_RANGE_CHECK = re.compile(r"^(cpu -?\d+ out of range|pfn -?\d+ out of range|ncpus must be)")


def _raised_in_mmemu_python(exc):
    tb = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ else []
    if not tb:
        return False
    last = tb[-1]
    return last.filename.startswith(_MMEMU_DIR) and last.filename.endswith(".py")


def classify(exc, method, wrong_type):
    """None if `exc` is an acceptable outcome of `method`, else a Defect.
    wrong_type: the call was given at least one value of the wrong type."""
    if isinstance(exc, InvariantError):
        return Defect("corrupted", method, str(exc), exc)
    if isinstance(exc, OSError) and not isinstance(exc, MemoryError):
        if exc.errno in LINUX_ERRNOS:
            return None
        return Defect("bad-errno", method, f"OSError errno={exc.errno!r}: {exc}", exc)
    if isinstance(exc, MmemuError):
        return None
    if isinstance(exc, NotImplementedError):
        return None if str(exc) else Defect("error", method, "NotImplementedError naming nothing", exc)
    if isinstance(exc, TypeError):
        if wrong_type:
            return None
        return Defect("error", method, f"TypeError for well-typed arguments: {exc}", exc)
    if type(exc) is ValueError or isinstance(exc, UnicodeError):
        if _raised_in_mmemu_python(exc) or _CORE_RANGE_CHECK.match(str(exc)):
            return None
        return Defect("error", method, f"ValueError from numpy or the core: {exc}", exc)
    return Defect("error", method, f"{type(exc).__name__}: {exc}", exc)


# ---- state verification ------------------------------------------------------



def verify(m, method="(after call)"):
    """check() plus the VMA tables of every live process; raises Defect."""
    try:
        m.check()
    except InvariantError as e:
        raise Defect("corrupted", method, f"check(): {e}", e) from None
    except Exception as e:                      # check() itself must not fail otherwise
        raise Defect("corrupted", method, f"check() raised {type(e).__name__}: {e}", e) from None
    # (check() compares the Python and core VMA tables exactly.)


def is_int(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)
