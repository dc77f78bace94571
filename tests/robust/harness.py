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

After every call the machine must pass check(), and each live process's
Python VMA list must be well formed (start < end, page aligned, end <=
TASK_SIZE, sorted and disjoint) and equal to the core's table.
"""
import errno
import os
import re
import traceback
import weakref

import numpy as np

import mmemu
from mmemu import PAGE_SIZE as PAGE, TASK_SIZE
from mmemu.errors import InvariantError, MmemuError

# Errnos the modelled syscalls (mm, memfd, uffd ioctls, /proc files, pipes) return on Linux.
LINUX_ERRNOS = frozenset({
    errno.EPERM, errno.ENOENT, errno.ESRCH, errno.EINTR, errno.EIO, errno.EBADF, errno.EAGAIN,
    errno.ENOMEM, errno.EACCES, errno.EFAULT, errno.EBUSY, errno.EEXIST, errno.ENODEV,
    errno.EINVAL, errno.ENFILE, errno.EMFILE, errno.ENOTTY, errno.EFBIG, errno.ENOSPC,
    errno.ESPIPE, errno.EROFS, errno.EOVERFLOW, errno.EOPNOTSUPP, errno.ENOSYS, 133,   # 133: EHWPOISON
})

_MMEMU_DIR = os.path.dirname(mmemu.__file__)

# Flags the core sets on its own table and the Python list reads back lazily (_pull).
_CORE_OWNED = mmemu.process.VM_ANON_VMA


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

_probed = weakref.WeakKeyDictionary()      # Process -> bounds last found equal to the core's


def core_vma_problem(p):
    """Why process p's Python VMA list is malformed or differs from the
    core's table, or None.

    The core has no getter for its VMA starts/ends (only Engine.vma_flags):
    the count and flags are compared directly and the bounds by probing
    Engine.pagemap_categories (0xFFFF outside every VMA) at each boundary.
    A getter (Engine.vma_table(mm) -> starts, ends, flags) would make this
    exact; with it present, it is used."""
    vmas = list(p.vmas)
    prev_end = 0
    for v in vmas:
        s, e = v.start, v.end
        if not (isinstance(s, int) and isinstance(e, int)) or type(s) is bool:
            return f"VMA bounds are not Python ints: {type(s).__name__}, {type(e).__name__}"
        if not s < e:
            return f"VMA [{s:#x}, {e:#x}) has start >= end"
        if s & (PAGE - 1) or e & (PAGE - 1):
            return f"VMA [{s:#x}, {e:#x}) not page aligned"
        if s < 0 or e > TASK_SIZE:
            return f"VMA [{s:#x}, {e:#x}) outside [0, TASK_SIZE]"
        if s < prev_end:
            return f"VMA [{s:#x}, {e:#x}) overlaps or is out of order"
        prev_end = e
    eng = p.machine._engine
    table = getattr(eng, "vma_table", None)
    if table is not None:
        starts, ends, flags = table(p.mm)[:3]
        got = [(int(a), int(b), int(f) & ~_CORE_OWNED) for a, b, f in zip(starts, ends, flags)]
        want = [(v.start, v.end, v.flags & ~_CORE_OWNED) for v in vmas]
        return None if got == want else f"core VMA table {got} != Python {want}"
    flags = eng.vma_flags(p.mm)
    if len(flags) != len(vmas):
        return f"core has {len(flags)} VMAs, Python {len(vmas)}"
    for v, f in zip(vmas, flags):
        if (int(f) & ~_CORE_OWNED) != (v.flags & ~_CORE_OWNED):
            return f"VMA [{v.start:#x}, {v.end:#x}) flags {v.flags:#x} in Python, {int(f):#x} in the core"
    # Bounds are probed again only when the Python layout changed since the
    # last probe that found the two equal (the core never moves a bound itself).
    bounds = tuple((v.start, v.end) for v in vmas)
    if _probed.get(p) == bounds:
        return None
    probes = []
    for i, v in enumerate(vmas):
        probes.append((v.start, True))
        probes.append((v.end - PAGE, True))
        if v.start >= PAGE and not (i and vmas[i - 1].end == v.start):
            probes.append((v.start - PAGE, False))
        if v.end < TASK_SIZE and not (i + 1 < len(vmas) and vmas[i + 1].start == v.end):
            probes.append((v.end, False))
    for addr, inside in probes:
        got = eng.pagemap_categories(p.mm, addr, 1, False)[0] != 0xFFFF
        if got != inside:
            return (f"page {addr:#x} is {'inside' if got else 'outside'} a VMA in the core, "
                    f"{'inside' if inside else 'outside'} in Python")
    _probed[p] = bounds
    return None


def verify(m, method="(after call)"):
    """check() plus the VMA tables of every live process; raises Defect."""
    try:
        m.check()
    except InvariantError as e:
        raise Defect("corrupted", method, f"check(): {e}", e) from None
    except Exception as e:                      # check() itself must not fail otherwise
        raise Defect("corrupted", method, f"check() raised {type(e).__name__}: {e}", e) from None
    if hasattr(m._engine, "vma_table"):
        return              # check() compared the Python and core VMA tables exactly
    for p in list(m._procs.values()):
        if not p.alive:
            continue
        why = core_vma_problem(p)
        if why:
            raise Defect("corrupted", method, f"pid {p.pid}: {why}")


def is_int(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)
