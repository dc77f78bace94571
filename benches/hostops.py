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


# ---- userfaultfd on the host: the same measurements mmemu calibrate makes ----
from mmemu.host.timing import (uffd_bulk, uffd_missing_round_trip, uffd_round_trip_c,  # noqa: E402,F401
                               uffd_wp_round_trip)


THP = 2 << 20
MADV_HUGEPAGE, MADV_NOHUGEPAGE, MADV_COLLAPSE = 14, 15, 25


def _thp_area(n):
    """n aligned 2 MiB blocks of a fresh private anon mapping: (mmap, offset)."""
    buf = mmap.mmap(-1, (n + 1) * THP, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    off = -_addr(buf) % THP
    return buf, off


def _thp_addrs(buf, off, n):
    return [_addr(buf) + off + i * THP for i in range(n)]


def thp_fault(n, rounds=3):
    """One write per MADV_HUGEPAGE'd 2 MiB: a PMD THP fault each (the host
    also clears the 2 MiB; the engine's content version needs no clearing).
    None when the host gave no THP (THP disabled)."""
    best = float("inf")
    for _ in range(rounds):
        buf, off = _thp_area(n)
        libc.madvise(_addr(buf) + off, n * THP, MADV_HUGEPAGE)
        view = np.frombuffer(buf, np.uint8)[off:off + n * THP:THP]
        t0 = time.perf_counter()
        view[:] = 1
        best = min(best, time.perf_counter() - t0)
        del view                                       # (numpy's export of the buffer)
        if not _is_thp(_addr(buf) + off):
            buf.close()
            return None
        buf.close()
    return best


def _is_thp(addr):
    # /proc/self/smaps' AnonHugePages of the VMA would do too; kpageflags
    # needs the pfn: read pagemap, then kpageflags bit 22 (KPF_THP).
    with open("/proc/self/pagemap", "rb") as f:
        f.seek(addr // PAGE * 8)
        ent = int.from_bytes(f.read(8), "little")
    pfn = ent & ((1 << 55) - 1)
    if not ent >> 63 or not pfn:
        return False
    with open("/proc/kpageflags", "rb") as f:
        f.seek(pfn * 8)
        return bool(int.from_bytes(f.read(8), "little") >> 22 & 1)


def thp_cow_after_fork(n, rounds=3):
    """The parent's first write to each of n THPs a child shares (5.8+:
    the PMD split and one page copied). None without THP."""
    best = float("inf")
    for _ in range(rounds):
        buf, off = _thp_area(n)
        libc.madvise(_addr(buf) + off, n * THP, MADV_HUGEPAGE)
        view = np.frombuffer(buf, np.uint8)[off:off + n * THP:THP]
        view[:] = 1
        if not _is_thp(_addr(buf) + off):
            del view
            buf.close()
            return None
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:                                   # the child holds the mapping until told
            os.read(r, 1)
            os._exit(0)
        t0 = time.perf_counter()
        view[:] = 2
        best = min(best, time.perf_counter() - t0)
        os.write(w, b"x")
        os.waitpid(pid, 0)
        os.close(r)
        os.close(w)
        del view
        buf.close()
    return best


def thp_collapse(n, rounds=3):
    """MADV_COLLAPSE of n fully populated, PTE-mapped 2 MiB blocks. None
    when the host refuses it (before 6.1, or THP off)."""
    best = float("inf")
    for _ in range(rounds):
        buf, off = _thp_area(n)
        a = _addr(buf) + off
        libc.madvise(a, n * THP, MADV_NOHUGEPAGE)
        np.frombuffer(buf, np.uint8)[off:off + n * THP:PAGE][:] = 1
        libc.madvise(a, n * THP, MADV_HUGEPAGE)
        t0 = time.perf_counter()
        rc = libc.madvise(a, n * THP, MADV_COLLAPSE)
        dt = time.perf_counter() - t0
        ok = rc == 0 and _is_thp(a)
        buf.close()
        if not ok:
            return None
        best = min(best, dt)
    return best


KSM = "/sys/kernel/mm/ksm/"
MADV_MERGEABLE, MADV_UNMERGEABLE = 12, 13
KSM_HOST_PAGES = 1 << 18        # 1 GiB of real memory at most


def _ksm(name, value=None):
    with open(KSM + name, "r" if value is None else "w") as f:
        if value is None:
            return int(f.read())
        f.write(str(value))
        return value


def ksm_full_scan(npages, identical, scan, rounds=3, timeout=120.0):
    """Seconds of ksmd's full scan number `scan` over npages MADV_MERGEABLE
    pages, each holding the same contents (identical) or its own: scan 2 is
    the one after the checksums were taken (distinct pages go into the
    unstable tree, identical ones merge), scan 3 the steady one after. ksmd
    runs without sleeping, in batches of npages // 16, and the ends of full
    scans are seen by polling full_scans every 0.5 ms; in a VM one scan's
    time varies several-fold from round to round. The kernel hashes and compares
    4 KiB contents where the engine compares versions. None without root or
    KSM (the settings are put back after)."""
    if not os.access(KSM + "run", os.W_OK):
        return None
    saved = {k: _ksm(k) for k in ("pages_to_scan", "sleep_millisecs", "run")}
    best = float("inf")
    try:
        _ksm("run", 0)
        _ksm("pages_to_scan", max(100, npages // 16))
        _ksm("sleep_millisecs", 0)
        for _ in range(rounds):
            buf = mmap.mmap(-1, npages * PAGE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            words = np.frombuffer(buf, np.uint64).reshape(npages, PAGE // 8)
            words[:, 0] = 7 if identical else np.arange(1, npages + 1, dtype=np.uint64)
            del words
            if libc.madvise(_addr(buf), npages * PAGE, MADV_MERGEABLE) != 0:
                buf.close()
                return None
            s0 = _ksm("full_scans")
            ends = {}
            _ksm("run", 1)
            deadline = time.perf_counter() + timeout
            while len(ends) < scan and time.perf_counter() < deadline:
                time.sleep(0.0005)          # leave the CPU to ksmd
                s = _ksm("full_scans") - s0
                if s > len(ends):
                    now = time.perf_counter()
                    for k in range(len(ends) + 1, s + 1):
                        ends[k] = now
            _ksm("run", 0)
            libc.madvise(_addr(buf), npages * PAGE, MADV_UNMERGEABLE)
            buf.close()
            if len(ends) < scan or ends[scan] == ends[scan - 1]:
                continue            # timed out, or two scans ended between two polls
            best = min(best, ends[scan] - ends[scan - 1])
    finally:
        for k in ("pages_to_scan", "sleep_millisecs", "run"):
            _ksm(k, saved[k])
    return None if best == float("inf") else best
