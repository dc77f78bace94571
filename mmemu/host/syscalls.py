"""Raw Linux calls the host servers make, through ctypes.

Each wrapper returns the kernel's result or raises OSError with the errno
Linux returned (mmemu.errors.oserror). Only what Python's os module lacks is
here: mmap at a chosen address with any flags, munmap, mprotect, madvise,
vmsplice, tee, io_uring_setup/enter/register.
"""
import ctypes
import os

from ..errors import oserror

_libc = ctypes.CDLL(None, use_errno=True)

_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
for _name in ("munmap", "mprotect", "madvise"):
    getattr(_libc, _name).restype = ctypes.c_int
    getattr(_libc, _name).argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.syscall.restype = ctypes.c_long

MAP_FAILED = ctypes.c_void_p(-1).value
U64 = (1 << 64) - 1

# x86_64 syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl)
SYS_vmsplice = 278
SYS_tee = 276
SYS_io_uring_setup = 425
SYS_io_uring_enter = 426
SYS_io_uring_register = 427

SPLICE_F_NONBLOCK = 0x02
F_SETPIPE_SZ = 1031
F_GETPIPE_SZ = 1032


class Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


def _check(ret, call):
    if ret == -1:
        raise oserror(ctypes.get_errno(), call)
    return ret


def _u64(x):
    # The kernel sees unsigned longs: -1 and 2**64-1 are the same argument.
    return int(x) & U64


def mmap(addr, length, prot, flags, fd=-1, offset=0):
    ret = _libc.mmap(_u64(addr) or None, _u64(length), prot, flags, fd, offset)
    if ret is None or ret == MAP_FAILED:   # NULL is never a success: mmap_min_addr
        raise oserror(ctypes.get_errno(), "mmap")
    return ret


def munmap(addr, length):
    return _check(_libc.munmap(_u64(addr) or None, _u64(length)), "munmap")


def mprotect(addr, length, prot):
    return _check(_libc.mprotect(_u64(addr) or None, _u64(length), prot), "mprotect")


def madvise(addr, length, advice):
    return _check(_libc.madvise(_u64(addr) or None, _u64(length), advice), "madvise")


def syscall(nr, *args, call):
    ret = _libc.syscall(ctypes.c_long(nr), *[ctypes.c_ulong(_u64(a)) if isinstance(a, int)
                                              else a for a in args])
    return _check(ret, call)


def vmsplice(fd, addr, length, flags=0):
    iov = Iovec(_u64(addr), _u64(length))
    return syscall(SYS_vmsplice, fd, ctypes.byref(iov), 1, flags, call="vmsplice")


def tee(fd_in, fd_out, length, flags=0):
    return syscall(SYS_tee, fd_in, fd_out, length, flags, call="tee")


def pipe_with_capacity(nbytes):
    """A non-blocking pipe that holds at least nbytes (F_SETPIPE_SZ rounds up
    to a power of two pages); non-blocking so a full or empty pipe is EAGAIN,
    never a hang."""
    import fcntl
    rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if nbytes > fcntl.fcntl(wfd, F_GETPIPE_SZ):
            fcntl.fcntl(wfd, F_SETPIPE_SZ, nbytes)
    except OSError:
        os.close(rfd)
        os.close(wfd)
        raise
    return rfd, wfd


def write_proc_file(path, text):
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
