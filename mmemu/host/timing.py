"""The host kernel's costs, measured (mmemu calibrate; the benchmarks'
host figures). Every function returns seconds for the whole operation over
npages pages, the minimum of its rounds: freshly allocated guest memory can
take a hypervisor fault, so the minimum is the kernel's own cost
(host-notes.md)."""
import ctypes
import ctypes.util
import fcntl
import mmap
import os
import struct
import threading
import time

import numpy as np

PAGE = 4096
libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
libc.syscall.restype = ctypes.c_long
libc.memcmp.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
libc.memcpy.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]


def _touch(buf, npages):
    # One byte per page, read in C (numpy strided view): fault cost, not Python's.
    view = np.frombuffer(buf, np.uint8)[::PAGE]
    return int(view.sum())


def _addr(buf):
    return ctypes.addressof(ctypes.c_char.from_buffer(buf))


def anon_faults(npages, write=True, rounds=3):
    """First touches of a private anonymous mapping: write faults allocate
    and zero a page each; read faults map the shared zero page."""
    best = float("inf")
    for _ in range(rounds):
        buf = mmap.mmap(-1, npages * PAGE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        a = _addr(buf)
        t0 = time.perf_counter()
        if write:
            libc.memset(a, 1, npages * PAGE)        # ctypes drops the GIL: faults in C
        else:
            _touch(buf, npages)
        elapsed = time.perf_counter() - t0
        if write:
            t0 = time.perf_counter()
            libc.memset(a, 2, npages * PAGE)        # the same stores without faults
            elapsed -= time.perf_counter() - t0
        best = min(best, elapsed)
        buf.close()
    return best


def cow_faults(npages, rounds=3):
    """Write faults on pages shared with a forked child (wp_page_copy)."""
    best = float("inf")
    for _ in range(rounds):
        buf = mmap.mmap(-1, npages * PAGE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        a = _addr(buf)
        libc.memset(a, 1, npages * PAGE)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:                                # the child holds the pages until told
            os.close(w)
            os.read(r, 1)
            os._exit(0)
        os.close(r)
        t0 = time.perf_counter()
        libc.memset(a, 2, npages * PAGE)
        elapsed = time.perf_counter() - t0
        t0 = time.perf_counter()
        libc.memset(a, 3, npages * PAGE)
        elapsed -= time.perf_counter() - t0
        os.write(w, b"x")
        os.close(w)
        os.waitpid(pid, 0)
        best = min(best, elapsed)
        buf.close()
    return best


def memcpy_pages(npages, rounds=5):
    """Copying npages pages between two populated buffers."""
    src = mmap.mmap(-1, npages * PAGE)
    dst = mmap.mmap(-1, npages * PAGE)
    libc.memset(_addr(src), 1, npages * PAGE)
    libc.memset(_addr(dst), 1, npages * PAGE)
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        libc.memcpy(_addr(dst), _addr(src), npages * PAGE)
        best = min(best, time.perf_counter() - t0)
    src.close()
    dst.close()
    return best


def random_accesses(npages, accesses, rounds=3, seed=0):
    """(loads spread at random over npages populated pages, the same
    number of loads over one page): the difference is the TLB misses' cost
    (with cache misses: an upper bound on a page walk)."""
    buf = mmap.mmap(-1, npages * PAGE)
    libc.memset(_addr(buf), 1, npages * PAGE)
    view = np.frombuffer(buf, np.uint8)
    rng = np.random.default_rng(seed)
    far = rng.integers(0, npages, accesses) * PAGE
    near = rng.integers(0, PAGE, accesses)
    best_far = best_near = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        view[far].sum()
        best_far = min(best_far, time.perf_counter() - t0)
        t0 = time.perf_counter()
        view[near].sum()
        best_near = min(best_near, time.perf_counter() - t0)
    del view
    buf.close()
    return best_far, best_near


# ---- userfaultfd on the host (raw syscall and ioctls) -------------------------

SYS_userfaultfd = 323
UFFD_API = 0xAA


def _iowr(nr, size):
    return (3 << 30) | (size << 16) | (0xAA << 8) | nr


UFFDIO_API = _iowr(0x3F, 24)
UFFDIO_REGISTER = _iowr(0x00, 32)
UFFDIO_COPY = _iowr(0x03, 40)
UFFDIO_ZEROPAGE = _iowr(0x04, 32)
UFFDIO_WRITEPROTECT = _iowr(0x06, 24)


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
    from . import _service
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
