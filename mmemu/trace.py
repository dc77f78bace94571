"""Memory-access traces: what Thread.replay runs.

A Trace is two numpy arrays, `addrs` (uint64, one per access) and `writes`
(bool). Formats read:

  * lackey: `valgrind --tool=lackey --trace-mem=yes` output. "I" (instruction
    fetch) and "L" lines are reads, "S" and "M" (modify) stores; an access
    that crosses a page boundary touches both pages; valgrind's own "==pid=="
    lines are skipped.
  * csv: `addr[,op]` per line; addr in hex (0x...) or decimal; op R/W, r/w,
    0/1 or L/S (default R); an optional header line starting with a letter.
  * npz: arrays `addrs` and, optionally, `writes`.

A lackey or csv file may be gzip-compressed (name ending in .gz).

A malformed line is a TraceError naming the file and the line.
"""
from __future__ import annotations

import gzip
import os
import re
from dataclasses import dataclass

import numpy as np

from .constants import PAGE_SIZE, TASK_SIZE

__all__ = ["Trace", "TraceError", "load", "detect_format"]


class TraceError(ValueError):
    """A trace that cannot be read: names the file and line."""


@dataclass
class Trace:
    addrs: np.ndarray            # uint64
    writes: np.ndarray           # bool
    source: str = ""

    def __post_init__(self):
        self.addrs = np.ascontiguousarray(self.addrs, np.uint64)
        self.writes = np.ascontiguousarray(self.writes, bool)
        if self.addrs.shape != self.writes.shape or self.addrs.ndim != 1:
            raise TraceError(f"{self.source or 'trace'}: addrs and writes must be 1-D and of one length")

    def __len__(self) -> int:
        return len(self.addrs)

    def head(self, n: int) -> Trace:
        return Trace(self.addrs[:n], self.writes[:n], self.source)

    def pages(self) -> np.ndarray:
        """The distinct pages touched, sorted (page-aligned addresses)."""
        return np.unique(self.addrs & ~np.uint64(PAGE_SIZE - 1))

    def runs(self) -> list[tuple[int, int]]:
        """The touched pages as [start, end) runs of contiguous pages."""
        pages = self.pages()
        if not len(pages):
            return []
        cut = np.flatnonzero(np.diff(pages) != PAGE_SIZE) + 1
        starts = np.r_[0, cut]
        ends = np.r_[cut, len(pages)]
        return [(int(pages[s]), int(pages[e - 1]) + PAGE_SIZE) for s, e in zip(starts, ends)]


_LACKEY = re.compile(r"^(I |\s[LSM]) ([0-9a-fA-F]+),(\d+)\s*$")


def _open(path, mode="rb", **kw):
    return gzip.open(path, mode, **kw) if str(path).endswith(".gz") else open(path, mode, **kw)


def detect_format(path: str) -> str:
    """lackey, csv or npz, from the file's name and first lines."""
    if str(path).endswith(".npz"):
        return "npz"
    try:
        with _open(path, "rb") as f:
            head = f.read(4096)
    except (OSError, EOFError) as e:
        raise TraceError(f"{path}: cannot read ({e})") from None
    if head.startswith(b"PK"):
        return "npz"
    for line in head.decode("latin-1").splitlines():
        if line.startswith("=="):
            return "lackey"
        if _LACKEY.match(line):
            return "lackey"
        if line.strip():
            return "csv"
    return "csv"


def load(path: str, format: str | None = None) -> Trace:
    """Read a trace file (format: lackey, csv, npz, or None to detect)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise TraceError(f"{path}: no such file")
    fmt = format or detect_format(path)
    if fmt == "lackey":
        return _load_lackey(path)
    if fmt == "csv":
        return _load_csv(path)
    if fmt == "npz":
        return _load_npz(path)
    raise TraceError(f"{path}: unknown trace format {fmt!r} (lackey, csv or npz)")


def _split_crossing(addrs, sizes, writes):
    """An access of `size` bytes that crosses into the next page touches it too."""
    end = addrs + np.maximum(sizes, 1).astype(np.uint64) - np.uint64(1)
    cross = (end // np.uint64(PAGE_SIZE)) != (addrs // np.uint64(PAGE_SIZE))
    if not cross.any():
        return addrs, writes
    idx = np.flatnonzero(cross)
    extra_a = (end[idx] // np.uint64(PAGE_SIZE)) * np.uint64(PAGE_SIZE)
    out_a = np.insert(addrs, idx + 1, extra_a)
    out_w = np.insert(writes, idx + 1, writes[idx])
    return out_a, out_w


def _load_lackey(path):
    addrs, sizes, writes = [], [], []
    with _open(path, "rt", encoding="latin-1") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip() or line.startswith("=="):
                continue
            m = _LACKEY.match(line)
            if m is None:
                raise TraceError(f"{path}:{lineno}: not a lackey access line: {line.rstrip()[:60]!r}")
            op, a, n = m.group(1).strip(), int(m.group(2), 16), int(m.group(3))
            if a >= 1 << 64:
                raise TraceError(f"{path}:{lineno}: address {m.group(2)} wider than 64 bits")
            addrs.append(a)
            sizes.append(n)
            writes.append(op in ("S", "M"))
    a, w = _split_crossing(np.array(addrs, np.uint64), np.array(sizes, np.int64), np.array(writes, bool))
    return Trace(a, w, path)


_OPS = {"r": False, "w": True, "0": False, "1": True, "l": False, "s": True, "read": False, "write": True}


def _load_csv(path):
    addrs, writes = [], []
    with _open(path, "rt", encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            cols = [c.strip() for c in text.split(",")]
            if lineno == 1 and cols[0][:1].isalpha() and not cols[0].lower().startswith("0x"):
                continue                                   # a header
            try:
                a = int(cols[0], 0)
            except ValueError:
                raise TraceError(f"{path}:{lineno}: bad address {cols[0][:40]!r}") from None
            if not 0 <= a < 1 << 64:
                raise TraceError(f"{path}:{lineno}: address {cols[0][:40]} out of range")
            w = False
            if len(cols) > 1 and cols[1]:
                op = cols[1].lower()
                if op not in _OPS:
                    raise TraceError(f"{path}:{lineno}: bad operation {cols[1][:20]!r} (R or W)")
                w = _OPS[op]
            addrs.append(a)
            writes.append(w)
    return Trace(np.array(addrs, np.uint64), np.array(writes, bool), path)


def _load_npz(path):
    try:
        with np.load(path, allow_pickle=False) as z:
            if "addrs" not in z:
                raise TraceError(f"{path}: an npz trace needs an 'addrs' array")
            a = np.asarray(z["addrs"])
            w = np.asarray(z["writes"]) if "writes" in z else np.zeros(len(a), bool)
    except TraceError:
        raise
    except Exception as e:
        raise TraceError(f"{path}: not a readable npz trace ({e})") from None
    if a.dtype.kind not in "iu" or (a.dtype.kind == "i" and len(a) and a.min() < 0):
        raise TraceError(f"{path}: 'addrs' must hold non-negative integers")
    return Trace(a.astype(np.uint64), w.astype(bool), path)


def user_part(trace: Trace) -> tuple[Trace, int]:
    """The accesses below TASK_SIZE, and how many were dropped (vsyscall)."""
    keep = trace.addrs < np.uint64(TASK_SIZE)
    dropped = int(len(keep) - keep.sum())
    return Trace(trace.addrs[keep], trace.writes[keep], trace.source), dropped


def record(cmd: list[str], out: str, timeout: float | None = None) -> Trace:
    """Run cmd under valgrind's lackey (--trace-mem=yes) and write its trace
    to `out` (gzipped when the name ends in .gz); returns the trace read back."""
    import shutil
    import subprocess
    import tempfile
    if not cmd:
        raise TraceError("trace record: a command to run is required")
    vg = shutil.which("valgrind")
    if vg is None:
        raise TraceError("trace record needs valgrind (Debian package valgrind: apt-get install valgrind)")
    with tempfile.TemporaryDirectory() as d:
        log = os.path.join(d, "lackey.out")
        r = subprocess.run([vg, "--tool=lackey", "--trace-mem=yes", f"--log-file={log}", *cmd],
                           timeout=timeout)
        if not os.path.exists(log):
            raise TraceError(f"trace record: valgrind wrote no trace (exit status {r.returncode})")
        with open(log, "rb") as src, _open(out, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return load(out, "lackey")
