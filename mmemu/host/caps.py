"""What this host lets the oracle observe, probed once per driver process.

Tests skip, with the reason, where a capability is missing; they never fail
for it.
"""
import ctypes
import functools
import mmap
import os
import struct

from .. import constants as C


class Capabilities:
    __slots__ = ("pfns", "kpage", "io_uring", "vmsplice", "soft_dirty", "thp", "reasons")

    def __init__(self):
        self.reasons = {}

    def why_not(self, name):
        return self.reasons.get(name, f"host lacks {name}")

    def __repr__(self):
        return "Capabilities(" + ", ".join(
            f"{n}={getattr(self, n)}" for n in self.__slots__ if n != "reasons") + ")"


def _probe_page():
    """A fresh written page of this process: (its pagemap entry, the mapping)."""
    m = mmap.mmap(-1, C.PAGE_SIZE)
    m[0:1] = b"\1"
    addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
    fd = os.open("/proc/self/pagemap", os.O_RDONLY)
    try:
        raw = struct.unpack("<Q", os.pread(fd, 8, (addr >> C.PAGE_SHIFT) * 8))[0]
    finally:
        os.close(fd)
    return raw, m


@functools.lru_cache(maxsize=None)
def capabilities():
    caps = Capabilities()
    raw, m = _probe_page()
    caps.pfns = bool(raw & C.PM_PRESENT) and (raw & C.PM_PFRAME_MASK) != 0
    if not caps.pfns:
        caps.reasons["pfns"] = ("/proc/self/pagemap shows no PFNs (needs CAP_SYS_ADMIN "
                                "since 4.2)")
    # A new anon page is soft-dirty when CONFIG_MEM_SOFT_DIRTY is on (pte_mkdirty
    # sets both bits on x86); never otherwise.
    caps.soft_dirty = bool(raw & C.PM_SOFT_DIRTY)
    if not caps.soft_dirty:
        caps.reasons["soft_dirty"] = ("pagemap bit 55 stays 0 on a freshly written page: "
                                      "CONFIG_MEM_SOFT_DIRTY is off")
    try:
        with open("/proc/kpagecount", "rb") as f:
            f.read(8)
        caps.kpage = True
    except OSError as e:
        caps.kpage = False
        caps.reasons["kpage"] = f"/proc/kpagecount unreadable: {e}"
    caps.thp = _probe_thp(caps)
    caps.io_uring = _probe_io_uring(caps)
    caps.vmsplice = _probe_vmsplice(caps, m)
    del m
    return caps


def _probe_thp(caps):
    """The transparent_hugepage "enabled" setting in force ("always",
    "madvise" or "never"): the engine takes the same, and programs use THP
    regions where it is not "never"."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            words = f.read().split()
    except OSError as e:
        caps.reasons["thp"] = f"no THP sysfs: {e}"
        return "never"
    chosen = [w[1:-1] for w in words if w.startswith("[")]
    if not chosen or chosen[0] == "never":
        caps.reasons["thp"] = "transparent_hugepage/enabled is never"
    return chosen[0] if chosen else "never"


def _probe_io_uring(caps):
    from . import syscalls as sc
    from .uring import _Params
    try:
        with open("/proc/sys/kernel/io_uring_disabled") as f:
            if f.read().strip() not in ("0", ""):
                caps.reasons["io_uring"] = "kernel.io_uring_disabled is set"
                return False
    except OSError:
        pass
    params = _Params()
    try:
        fd = sc.syscall(sc.SYS_io_uring_setup, 2, ctypes.byref(params), call="io_uring_setup")
    except OSError as e:
        caps.reasons["io_uring"] = f"io_uring_setup failed: {e}"
        return False
    os.close(fd)
    return True


def _probe_vmsplice(caps, m):
    from . import syscalls as sc
    addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
    rfd, wfd = os.pipe()
    try:
        sc.vmsplice(wfd, addr, 1)
        return True
    except OSError as e:
        caps.reasons["vmsplice"] = f"vmsplice failed: {e}"
        return False
    finally:
        os.close(rfd)
        os.close(wfd)
