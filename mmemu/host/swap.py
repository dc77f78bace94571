"""A swap device for the host oracle: a swap file enabled while a
HostMachine(swap=N) lives.

MADV_PAGEOUT moves anon pages to swap only when swap is on (without it,
shrink_folio_list keeps them), so comparing the engine's Machine(swap=N)
needs the host to have swap too. The file is made with fallocate + mkswap
and enabled with swapon(2); swapoff(2) and unlink when the last machine
using it closes, on interpreter exit, and (for a run that was killed) by the
next run, which removes the files of dead owners first.

Sizes agree with the engine: a file of N + one page (mkswap's header page)
gives N / PAGE_SIZE usable slots, as Machine(swap=N) has (vm_swap_full and
"swap full" depend on the count).

Swap is global to the host: while on, any process may use it. The oracle
refuses to compare pageout against swap it does not own (see
foreign_swap()).
"""
import atexit
import functools
import os
import re
import shutil
import subprocess
import threading

from .. import constants as C
from . import syscalls as sc

SWAP_DIRS = ("/var/tmp", "/tmp")       # /tmp may be tmpfs, which has no swap_activate
FILE_PREFIX = "mmemu-swap-"
MKSWAP_TIMEOUT = 20.0
_lock = threading.Lock()
_active = {}          # path -> HostSwap, enabled by this process


class SwapUnavailable(Exception):
    """Swap cannot be enabled here; the message says why."""


def active_swaps():
    """The host's swap devices: [(path, size in bytes)] from /proc/swaps."""
    try:
        with open("/proc/swaps") as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return []
    out = []
    for line in lines:
        parts = line.split()
        if len(parts) >= 3:
            # /proc/swaps escapes spaces etc. as \\040 (seq_file_path).
            path = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), parts[0])
            out.append((path, int(parts[2]) * 1024))
    return out


def foreign_swap():
    """Swap devices on the host that this process did not enable (another
    run's, or the machine's own), as a list of paths."""
    with _lock:
        ours = set(_active)
    return [p for p, _n in active_swaps() if p not in ours]


def _owner_alive(path):
    m = re.match(re.escape(FILE_PREFIX) + r"(\d+)-", os.path.basename(path))
    if not m:
        return True
    pid = int(m.group(1))
    if pid == os.getpid():
        return path in _active
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def remove_stale():
    """swapoff and delete the swap files of oracle runs that died without
    cleaning up (killed by a timeout, say)."""
    enabled = {p for p, _n in active_swaps()}
    for d in SWAP_DIRS:
        try:
            names = os.listdir(d)
        except OSError:
            continue
        for name in names:
            path = os.path.join(d, name)
            if not name.startswith(FILE_PREFIX) or _owner_alive(path):
                continue
            if path in enabled:
                try:
                    sc.swapoff(path)
                except OSError:
                    continue      # still in use: leave it
            try:
                os.unlink(path)
            except OSError:
                pass


class HostSwap:
    """One swap file of `nbytes` usable bytes, enabled by enable() and
    removed by disable() (idempotent)."""

    _serial = 0

    def __init__(self, nbytes):
        if nbytes <= 0 or nbytes % C.PAGE_SIZE:
            raise ValueError("swap size must be a positive multiple of the page size")
        if nbytes < 9 * C.PAGE_SIZE:
            raise ValueError("mkswap needs at least 10 pages (one is the header)")
        self.nbytes = nbytes
        self.path = None
        self.enabled = False
        self.users = 0

    def enable(self):
        mkswap = shutil.which("mkswap") or next(
            (p for p in ("/usr/sbin/mkswap", "/sbin/mkswap") if os.path.exists(p)), None)
        if mkswap is None:
            raise SwapUnavailable("mkswap is not installed (util-linux)")
        remove_stale()
        errors = []
        for d in SWAP_DIRS:
            with _lock:
                HostSwap._serial += 1
                path = os.path.join(d, f"{FILE_PREFIX}{os.getpid()}-{HostSwap._serial}")
            try:
                self._make(path, mkswap)
            except (OSError, SwapUnavailable, subprocess.SubprocessError) as e:
                errors.append(f"{d}: {e}")
                self._remove(path)
                continue
            return self
        raise SwapUnavailable("; ".join(errors))

    def _make(self, path, mkswap):
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o600)
        self.path = path
        with _lock:
            _active[path] = self        # from now on disable() or atexit removes it
        try:
            # Real blocks (no holes): swapon refuses a sparse file.
            os.posix_fallocate(fd, 0, self.nbytes + C.PAGE_SIZE)
        finally:
            os.close(fd)
        r = subprocess.run([mkswap, path], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=MKSWAP_TIMEOUT)
        if r.returncode:
            raise SwapUnavailable(f"mkswap failed: {r.stdout.decode(errors='replace').strip()}")
        try:
            sc.swapon(path)
        except OSError as e:
            raise SwapUnavailable(f"swapon({path}) failed: {e}") from e
        self.enabled = True

    def disable(self):
        if self.path is None:
            return
        self._remove(self.path)

    def _remove(self, path):
        if self.enabled and path == self.path:
            try:
                sc.swapoff(path)
            except OSError:
                pass
            self.enabled = False
        try:
            os.unlink(path)
        except OSError:
            pass
        with _lock:
            _active.pop(path, None)
        if path == self.path:
            self.path = None

    def __repr__(self):
        return f"<HostSwap {self.nbytes >> 10} KiB {self.path or 'off'}>"


_shared = {}       # nbytes -> HostSwap in use by live machines of this process


def acquire(nbytes):
    """The swap of this size that this process has on, enabled if need be;
    machines of one process share it. Raises SwapUnavailable."""
    with _lock:
        swap = _shared.get(nbytes)
        other = [s for n, s in _shared.items() if n != nbytes and s.users]
    if other:
        raise SwapUnavailable(f"swap of {other[0].nbytes} bytes is on for another machine; "
                              f"the host cannot have two sizes at once")
    if swap is None or not swap.enabled:
        swap = HostSwap(nbytes).enable()
        with _lock:
            _shared[nbytes] = swap
    swap.users += 1
    return swap


def release(swap):
    swap.users -= 1
    if swap.users <= 0:
        swap.disable()
        with _lock:
            if _shared.get(swap.nbytes) is swap:
                del _shared[swap.nbytes]


@functools.lru_cache(maxsize=None)
def why_no_swap():
    """None if this host lets the oracle enable swap, else the reason
    (tried once per process, with a 40 KiB file, and removed at once)."""
    if os.geteuid() != 0:
        return "swapon needs root (CAP_SYS_ADMIN)"
    try:
        s = HostSwap(10 * C.PAGE_SIZE).enable()
    except SwapUnavailable as e:
        return str(e)
    s.disable()
    return None


@atexit.register
def _disable_all():
    with _lock:
        swaps = list(_active.values())
    for s in swaps:
        try:
            s.disable()
        except Exception:
            pass
