"""The same operations on the real kernel, for figures measured in the same
run as the engine's. Each returns seconds for the whole operation over
npages pages (minimum of `rounds`; freshly allocated guest memory can take a
hypervisor fault, so the minimum is the kernel's own cost: host-notes.md)."""
import ctypes
import ctypes.util
import mmap
import os
import time

import numpy as np

PAGE = 4096
libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 1, 2
MADV_DONTNEED, MADV_PAGEOUT = 4, 21


def _touch(buf, npages):
    # One byte per page, read in C (numpy strided view): fault cost, not Python's.
    view = np.frombuffer(buf, np.uint8)[::PAGE]
    return int(view.sum())


def _addr(buf):
    return ctypes.addressof(ctypes.c_char.from_buffer(buf))


def shmem_read_fault(npages, rounds=3):
    """Read faults over a MAP_SHARED memfd whose pages are all cached:
    fault-around maps 16 pages per fault."""
    best = float("inf")
    fd = os.memfd_create("bench")
    try:
        os.ftruncate(fd, npages * PAGE)
        os.posix_fallocate(fd, 0, npages * PAGE)
        warm = mmap.mmap(fd, npages * PAGE, mmap.MAP_SHARED, mmap.PROT_READ)
        _touch(warm, npages)                 # fallocate'd folios become uptodate
        warm.close()
        for _ in range(rounds):
            buf = mmap.mmap(fd, npages * PAGE, mmap.MAP_SHARED, mmap.PROT_READ)
            t0 = time.perf_counter()
            _touch(buf, npages)
            best = min(best, time.perf_counter() - t0)
            buf.close()
    finally:
        os.close(fd)
    return best


def shmem_punch_hole(npages, rounds=3):
    """fallocate(PUNCH_HOLE) of a cached, mapped memfd range."""
    best = float("inf")
    for _ in range(rounds):
        fd = os.memfd_create("bench")
        os.ftruncate(fd, npages * PAGE)
        os.posix_fallocate(fd, 0, npages * PAGE)
        buf = mmap.mmap(fd, npages * PAGE, mmap.MAP_SHARED, mmap.PROT_READ)
        _touch(buf, npages)
        t0 = time.perf_counter()
        if libc.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, npages * PAGE):
            raise OSError(ctypes.get_errno(), "fallocate")
        best = min(best, time.perf_counter() - t0)
        buf.close()
        os.close(fd)
    return best


def swap_enabled():
    with open("/proc/swaps") as f:
        return len(f.read().strip().splitlines()) > 1


class temporary_swap:
    """A swap file for the measurement (fallocate + mkswap + swapon), removed
    afterwards even on failure; a no-op when swap is already on or when this
    process may not (not root, no mkswap): the figure is then reported missing."""

    def __init__(self, nbytes, path="/var/tmp/mmemu-bench.swap"):
        self.nbytes, self.path, self.active = nbytes, path, False

    def __enter__(self):
        import shutil
        import subprocess
        if swap_enabled() or os.geteuid() != 0 or not shutil.which("mkswap"):
            return self
        try:
            with open(self.path, "wb") as f:
                os.posix_fallocate(f.fileno(), 0, self.nbytes)
            os.chmod(self.path, 0o600)
            subprocess.run(["mkswap", self.path], check=True, capture_output=True, timeout=60)
            subprocess.run(["swapon", self.path], check=True, capture_output=True, timeout=60)
            self.active = True
        except (OSError, subprocess.SubprocessError):
            self._cleanup()
        return self

    def _cleanup(self):
        import subprocess
        if self.active:
            subprocess.run(["swapoff", self.path], capture_output=True, timeout=300)
            self.active = False
        if os.path.exists(self.path):
            os.unlink(self.path)

    def __exit__(self, *exc):
        self._cleanup()


def anon_swap_out_in(npages, rounds=2):
    """(MADV_PAGEOUT of written anon pages, read faults swapping them back in)."""
    with temporary_swap(npages * PAGE * 2):
        if not swap_enabled():
            return None
        return _swap_out_in(npages, rounds)


def _swap_out_in(npages, rounds):
    best_out = best_in = float("inf")
    for _ in range(rounds):
        buf = mmap.mmap(-1, npages * PAGE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        np.frombuffer(buf, np.uint8)[::PAGE] = 1
        addr = _addr(buf)
        t0 = time.perf_counter()
        if libc.madvise(addr, npages * PAGE, MADV_PAGEOUT):
            raise OSError(ctypes.get_errno(), "madvise")
        t1 = time.perf_counter()
        _touch(buf, npages)
        t2 = time.perf_counter()
        best_out, best_in = min(best_out, t1 - t0), min(best_in, t2 - t1)
        buf.close()
    return best_out, best_in


# ---- userfaultfd on the host (raw syscall and ioctls) -------------------------
import fcntl
import struct
import threading

SYS_userfaultfd = 323
UFFD_API = 0xAA


def _iowr(nr, size):
    return (3 << 30) | (size << 16) | (0xAA << 8) | nr


UFFDIO_API = _iowr(0x3F, 24)
UFFDIO_REGISTER = _iowr(0x00, 32)
UFFDIO_COPY = _iowr(0x03, 40)
UFFDIO_ZEROPAGE = _iowr(0x04, 32)
UFFDIO_WRITEPROTECT = _iowr(0x06, 24)
libc.syscall.restype = ctypes.c_long
libc.memcmp.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]


def _uffd(features=0):
    fd = libc.syscall(SYS_userfaultfd, os.O_CLOEXEC)
    if fd < 0:
        return None
    fcntl.ioctl(fd, UFFDIO_API, bytearray(struct.pack("QQQ", UFFD_API, features, 0)))
    return fd


def _register(fd, addr, length, mode):
    fcntl.ioctl(fd, UFFDIO_REGISTER, bytearray(struct.pack("QQQQ", addr, length, mode, 0)))


def uffd_bulk(npages, rounds=3):
    """(UFFDIO_COPY of the whole range, ZEROPAGE, WRITEPROTECT on, off): seconds."""
    if _uffd() is None:
        return None
    best = [float("inf")] * 4
    src = mmap.mmap(-1, npages * PAGE)
    np.frombuffer(src, np.uint8)[::PAGE] = 7
    for _ in range(rounds):
        for which in (0, 1):
            fd = _uffd()
            buf = mmap.mmap(-1, npages * PAGE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            a = _addr(buf)
            _register(fd, a, npages * PAGE, 1)
            t0 = time.perf_counter()
            if which == 0:
                fcntl.ioctl(fd, UFFDIO_COPY, bytearray(struct.pack("QQQQq", a, _addr(src), npages * PAGE, 0, 0)))
            else:
                fcntl.ioctl(fd, UFFDIO_ZEROPAGE, bytearray(struct.pack("QQQq", a, npages * PAGE, 0, 0)))
            best[which] = min(best[which], time.perf_counter() - t0)
            buf.close()
            os.close(fd)
        fd = _uffd(1)                    # PAGEFAULT_FLAG_WP
        buf = mmap.mmap(-1, npages * PAGE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        np.frombuffer(buf, np.uint8)[::PAGE] = 1
        a = _addr(buf)
        _register(fd, a, npages * PAGE, 2)
        t0 = time.perf_counter()
        fcntl.ioctl(fd, UFFDIO_WRITEPROTECT, bytearray(struct.pack("QQQ", a, npages * PAGE, 1)))
        t1 = time.perf_counter()
        fcntl.ioctl(fd, UFFDIO_WRITEPROTECT, bytearray(struct.pack("QQQ", a, npages * PAGE, 0)))
        t2 = time.perf_counter()
        best[2], best[3] = min(best[2], t1 - t0), min(best[3], t2 - t1)
        buf.close()
        os.close(fd)
    src.close()
    return best


def uffd_wp_round_trip(npages):
    """WP faults each resolved by a service thread that unprotects the page
    (WRITEPROTECT off, waking); seconds for writing the whole range."""
    fd = _uffd(1)                        # PAGEFAULT_FLAG_WP
    if fd is None:
        return None
    buf = mmap.mmap(-1, npages * PAGE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    np.frombuffer(buf, np.uint8)[::PAGE] = 1
    a = _addr(buf)
    _register(fd, a, npages * PAGE, 2)
    fcntl.ioctl(fd, UFFDIO_WRITEPROTECT, bytearray(struct.pack("QQQ", a, npages * PAGE, 1)))
    done = threading.Event()

    def serve():
        req = bytearray(24)
        for _ in range(npages):
            msg = os.read(fd, 32)
            addr = struct.unpack_from("Q", msg, 16)[0] & ~(PAGE - 1)
            struct.pack_into("QQQ", req, 0, addr, PAGE, 0)
            fcntl.ioctl(fd, UFFDIO_WRITEPROTECT, req)
        done.set()
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    t0 = time.perf_counter()
    libc.memset(a, 3, npages * PAGE)                # ctypes drops the GIL: faults in C
    elapsed = time.perf_counter() - t0
    done.wait(10)
    buf.close()
    os.close(fd)
    return elapsed


def uffd_round_trip_c(npages, wp=False):
    """MISSING (or, with wp, WP) faults resolved by a service thread written
    in C (the host oracle's, mmemu/host/_service.c: poll, read, one-page
    COPY or unprotect): the nearest host analogue of a resolver that never
    returns to Python. Its log pipe holds 64 KiB (80 B a fault): keep
    npages under 800. Seconds."""
    from mmemu.host import _service
    fd = libc.syscall(SYS_userfaultfd, os.O_CLOEXEC | os.O_NONBLOCK)
    if fd < 0:
        return None
    fcntl.ioctl(fd, UFFDIO_API, bytearray(struct.pack("QQQ", UFFD_API, 1 if wp else 0, 0)))
    buf = mmap.mmap(-1, npages * PAGE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    zero = mmap.mmap(-1, npages * PAGE)
    a = _addr(buf)
    if wp:
        np.frombuffer(buf, np.uint8)[::PAGE] = 1
    _register(fd, a, npages * PAGE, 2 if wp else 1)
    if wp:
        fcntl.ioctl(fd, UFFDIO_WRITEPROTECT, bytearray(struct.pack("QQQ", a, npages * PAGE, 1)))
    handle, _log = _service.start(fd, True, 0)
    t0 = time.perf_counter()
    if wp:
        libc.memset(a, 3, npages * PAGE)
    else:
        libc.memcmp(a, _addr(zero), npages * PAGE)    # zeros: it runs through every page
    elapsed = time.perf_counter() - t0
    _service.stop(handle)
    buf.close()
    zero.close()
    os.close(fd)
    return elapsed


def uffd_missing_round_trip(npages):
    """MISSING faults each resolved by a service thread with a 1-page COPY
    (the thread blocks in read(2)); seconds for the whole range."""
    fd = _uffd()
    if fd is None:
        return None
    buf = mmap.mmap(-1, npages * PAGE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    zero = mmap.mmap(-1, npages * PAGE)
    a = _addr(buf)
    _register(fd, a, npages * PAGE, 1)
    page = mmap.mmap(-1, PAGE)
    done = threading.Event()

    def serve():
        req = bytearray(40)
        for _ in range(npages):
            msg = os.read(fd, 32)
            addr = struct.unpack_from("Q", msg, 16)[0] & ~(PAGE - 1)
            struct.pack_into("QQQQq", req, 0, addr, _addr(page), PAGE, 0, 0)
            fcntl.ioctl(fd, UFFDIO_COPY, req)
        done.set()
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    t0 = time.perf_counter()
    libc.memcmp(a, _addr(zero), npages * PAGE)     # ctypes drops the GIL: faults in C
    elapsed = time.perf_counter() - t0
    done.wait(10)
    buf.close()
    zero.close()
    os.close(fd)
    return elapsed
