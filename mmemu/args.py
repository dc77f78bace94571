"""Syscall arguments as the kernel receives them.

Every syscall-like call converts its arguments here, once, before it looks
at any state: Python ints of any size and numpy integers become the values a
64-bit register would carry (unsigned long wraps a negative value to its
two's complement, as a C caller's -4096 reaches the kernel as
0xfffffffffffff000), so the syscall's own checks then see what Linux sees.
A value no register can hold is refused with the errno the syscall gives for
an out-of-range argument; a non-integer is a TypeError (no C caller can pass
one). Nothing here touches a Machine.
"""
import operator

from .errors import EINVAL, oserror

U64 = 1 << 64
U64_MASK = U64 - 1
MAX_RW_COUNT = 0x7FFFF000     # INT_MAX & PAGE_MASK: one read/write moves at most this


def _int(x, call, name):
    try:
        return operator.index(x)
    except TypeError:
        raise TypeError(f"{call}: {name} must be an integer, not {type(x).__name__}") from None


def ulong(x, call, name, err=EINVAL):
    """unsigned long (addresses, lengths, flags of most mm syscalls)."""
    v = _int(x, call, name)
    if v < 0:
        if v < -(1 << 63):
            raise oserror(err, call, f"{name} {v} does not fit in 64 bits")
        return v + U64
    if v >= U64:
        raise oserror(err, call, f"{name} {v:#x} does not fit in 64 bits")
    return v


def uint(x, call, name, err=EINVAL):
    """unsigned int (gup_flags, memfd flags, ioctl modes)."""
    v = _int(x, call, name)
    if not -(1 << 31) <= v < (1 << 32):
        raise oserror(err, call, f"{name} {v:#x} does not fit in 32 bits")
    return v & 0xFFFFFFFF


def sint(x, call, name, err=EINVAL):
    """int (madvise advice, fallocate mode, file descriptors)."""
    v = _int(x, call, name)
    if not -(1 << 31) <= v < (1 << 31):
        raise oserror(err, call, f"{name} {v} does not fit in an int")
    return v


def loff(x, call, name, err=EINVAL):
    """loff_t (file offsets): signed 64 bits; a negative offset is EINVAL
    for pread/pwrite/fallocate (rw_verify_area, vfs_fallocate)."""
    v = _int(x, call, name)
    if not 0 <= v < (1 << 63):
        raise oserror(err, call, f"{name} {v} is not a valid file offset")
    return v


def rw_count(x, call, name="count"):
    """A read/write byte count (rw_verify_area, fs/read_write.c): size_t;
    beyond SSIZE_MAX is EINVAL, beyond MAX_RW_COUNT is cut to it."""
    v = ulong(x, call, name)
    if v >= 1 << 63:
        raise oserror(EINVAL, call, f"{name} beyond SSIZE_MAX")
    return min(v, MAX_RW_COUNT)


def size(x, call, name):
    """A byte or page count of the engine's own API (read/write lengths,
    touch counts): a non-negative int; negative is a ValueError, as for
    Python's own read(n)."""
    v = _int(x, call, name)
    if v < 0:
        raise ValueError(f"{call}: negative {name} {v}")
    return v


def uaddr(x):
    """A user pointer of the access API: cast to 64 bits, as C would; an
    address outside user space then faults like any unmapped one."""
    return _int(x, "access", "address") & U64_MASK


def page_align(n):
    """PAGE_ALIGN() on an unsigned long: wraps to 0 at the top."""
    return ((n + 4095) & ~4095) & U64_MASK
