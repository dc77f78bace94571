"""Raw Linux calls the host servers make, through ctypes.

Each wrapper returns the kernel's result or raises OSError with the errno
Linux returned (mmemu.errors.oserror). Only what Python's os module lacks is
here: mmap at a chosen address with any flags, munmap, mprotect, madvise,
vmsplice, tee, io_uring_setup/enter/register, fallocate with a mode,
swapon/swapoff.

Calls that may fault program memory in (mmap, madvise, vmsplice, buffer
registration, /proc/self/mem) go through _access.syscall_counted, so the
faults they take count as the program's (see _access.c, "Fault accounting").
"""
import ctypes
import functools
import os

from ..errors import oserror
from ..constants import PAGE_SIZE
from ..constants import PAGEMAP_SCAN  # _IOWR('f', 16, struct pm_scan_arg)

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
SYS_pread64 = 17
SYS_pwrite64 = 18
SYS_mmap = 9
SYS_mremap = 25
SYS_madvise = 28
SYS_swapon = 167
SYS_swapoff = 168
SYS_fallocate = 285
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


def counted(nr, *args, call):
    from . import _access
    try:
        return _access.syscall_counted(nr, *[_u64(a) for a in args])
    except OSError as e:
        raise oserror(e.errno, call) from None


def mmap_internal(addr, length, prot, flags, fd=-1, offset=0):
    """mmap for the oracle's own use (rings): its faults are not the program's."""
    ret = _libc.mmap(_u64(addr) or None, _u64(length), prot, flags, fd, offset)
    if ret is None or ret == MAP_FAILED:   # NULL is never a success: mmap_min_addr
        raise oserror(ctypes.get_errno(), "mmap")
    return ret


def mmap(addr, length, prot, flags, fd=-1, offset=0):
    # MAP_POPULATE faults pages in: counted.
    return counted(SYS_mmap, addr, length, prot, flags, fd, offset, call="mmap")


def munmap(addr, length):
    return _check(_libc.munmap(_u64(addr) or None, _u64(length)), "munmap")


def mprotect(addr, length, prot):
    return _check(_libc.mprotect(_u64(addr) or None, _u64(length), prot), "mprotect")


def madvise(addr, length, advice):
    # MADV_POPULATE_* fault pages in; MADV_PAGEOUT's swap-in is not a fault.
    return counted(SYS_madvise, addr, length, advice, call="madvise")


def syscall(nr, *args, call):
    ret = _libc.syscall(ctypes.c_long(nr), *[ctypes.c_ulong(_u64(a)) if isinstance(a, int)
                                              else a for a in args])
    return _check(ret, call)


def vmsplice(fd, addr, length, flags=0):
    iov = Iovec(_u64(addr), _u64(length))
    return counted(SYS_vmsplice, fd, ctypes.addressof(iov), 1, flags, call="vmsplice")


def mremap(old_addr, old_size, new_size, flags=0, new_addr=0):
    return counted(SYS_mremap, old_addr, old_size, new_size, flags, new_addr, call="mremap")


def fallocate(fd, mode, offset, length):
    return _check(_libc.syscall(ctypes.c_long(SYS_fallocate), ctypes.c_long(fd),
                                ctypes.c_long(mode), ctypes.c_long(offset),
                                ctypes.c_long(length)), "fallocate")


def proc_mem_pread(fd, n, addr):
    """pread(2) of /proc/self/mem: FOLL_FORCE GUP faults, counted."""
    buf = ctypes.create_string_buffer(max(n, 1))   # zero-filled: touched before the call
    got = counted(SYS_pread64, fd, ctypes.addressof(buf), n, addr, call="read /proc/pid/mem")
    return buf.raw[:got]


def proc_mem_pwrite(fd, data, addr):
    buf = ctypes.create_string_buffer(bytes(data), max(len(data), 1))
    return counted(SYS_pwrite64, fd, ctypes.addressof(buf), len(data), addr,
                    call="write /proc/pid/mem")


SYS_ioctl = 16


class PmScanArg(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in
                ("size", "flags", "start", "end", "walk_end", "vec", "vec_len", "max_pages",
                 "category_inverted", "category_mask", "category_anyof_mask", "return_mask")]


class PageRegion(ctypes.Structure):
    _fields_ = [("start", ctypes.c_uint64), ("end", ctypes.c_uint64),
                ("categories", ctypes.c_uint64)]


assert ctypes.sizeof(PmScanArg) == 96   # include/uapi/linux/fs.h struct pm_scan_arg


def pagemap_scan(start, end, flags, category_mask, category_anyof_mask, category_inverted,
                 return_mask, max_pages, vec_len):
    """ioctl(PAGEMAP_SCAN) on this process's pagemap: ([(start, end,
    categories)], walk_end). The region buffer is as long as vec_len asks,
    capped at one region per page of the range (more can never be filled)."""
    cap = max(1, min(int(vec_len), ((int(end) - int(start)) >> 12) + 1))
    vec = (PageRegion * cap)()
    arg = PmScanArg(size=ctypes.sizeof(PmScanArg), flags=flags, start=_u64(start),
                    end=_u64(end), vec=ctypes.addressof(vec), vec_len=min(int(vec_len), cap),
                    max_pages=max_pages, category_inverted=category_inverted,
                    category_mask=category_mask, category_anyof_mask=category_anyof_mask,
                    return_mask=return_mask)
    fd = os.open("/proc/self/pagemap", os.O_RDONLY)
    try:
        n = counted(SYS_ioctl, fd, PAGEMAP_SCAN, ctypes.addressof(arg), call="PAGEMAP_SCAN")
    finally:
        os.close(fd)
    return [(vec[i].start, vec[i].end, vec[i].categories) for i in range(n)], arg.walk_end


def swapon(path, flags=0):
    return syscall(SYS_swapon, ctypes.c_char_p(os.fsencode(path)), flags, call="swapon")


def swapoff(path):
    return syscall(SYS_swapoff, ctypes.c_char_p(os.fsencode(path)), call="swapoff")


def tee(fd_in, fd_out, length, flags=0):
    return syscall(SYS_tee, fd_in, fd_out, length, flags, call="tee")


@functools.lru_cache(maxsize=None)
def pipe_max_size():
    """/proc/sys/fs/pipe-max-size: the most F_SETPIPE_SZ gives without
    CAP_SYS_RESOURCE (1 MiB by default); 64 KiB (the default pipe) if
    unreadable."""
    try:
        with open("/proc/sys/fs/pipe-max-size") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 16 * PAGE_SIZE


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
