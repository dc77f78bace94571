"""Emulated time: what each counted event costs (a CostModel, in ns, keyed
by Engine.stats() names) and the network a postcopy migration runs over (a
Link). The core charges an event's cost to the clock of the CPU it runs on
as it counts it (core/frames.pxi stat_add), so replay advances each CPU's
clock by exactly the work it did; every cost is 0 until a model is set.

`mmemu calibrate` measures the host kernel's own costs on this machine
(mmemu.host.timing) and stores them; workloads use the stored model when
there is one, else DEFAULT, which holds figures measured the same way on the
machine mmemu is developed on (2 vCPUs of an AMD EPYC under KVM, kernel
6.18, 2026-12-05)."""
from __future__ import annotations

import json
import math
import operator
import os
from dataclasses import dataclass, field

from . import constants as C

# What a cost is charged for (the Engine.stats() name): an access that hits
# the TLB, the page walk of one that misses, the base cost of any fault
# (entry, walk, mapping: a read fault on the zero page costs that alone),
# and what each kind adds: allocating and zeroing an anon page, copying one
# on COW, a userfaultfd round trip (message read by the handler thread, the
# resolving ioctl, the wake-up).
EVENTS = ("tlb_hits", "tlb_misses", "faults", "anon_faults", "zero_faults", "wp_faults", "cow",
          "file_faults", "swap_in", "uffd_faults")

DEFAULT_NS = {"tlb_hits": 2, "tlb_misses": 34, "faults": 778, "anon_faults": 569, "zero_faults": 0,
              "wp_faults": 0, "cow": 1382, "file_faults": 0, "swap_in": 0, "uffd_faults": 27_461}


@dataclass(frozen=True)
class CostModel:
    ns: dict = field(default_factory=lambda: dict(DEFAULT_NS))
    source: str = "default (measured on the development machine, 2026-12-05)"

    def __post_init__(self):
        for k, v in list(self.ns.items()):
            if k not in EVENTS:
                raise ValueError(f"no event {k!r} to cost (one of {', '.join(EVENTS)})")
            try:
                n = operator.index(v)           # numpy integers too
            except TypeError:
                n = None
            if n is None or isinstance(v, bool) or not 0 <= n < 1 << 40:
                raise ValueError(f"cost of {k} must be an integer number of ns in 0 .. 2^40")
            self.ns[k] = int(n)

    def to_json(self):
        return {"ns": dict(self.ns), "source": self.source}

    @classmethod
    def from_json(cls, d, where="costs"):
        try:
            return cls(dict(d["ns"]), str(d.get("source", where)))
        except (KeyError, TypeError) as e:
            raise ValueError(f"{where}: not a cost model ({e})") from None


DEFAULT = CostModel()


def stored_path():
    """Where mmemu calibrate stores the model ($MMEMU_COSTS, else the user's cache)."""
    if os.environ.get("MMEMU_COSTS"):
        return os.environ["MMEMU_COSTS"]
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "mmemu", "costs.json")


def load(path=None):
    """A cost model file; with no path, the stored calibration, or DEFAULT
    when there is none (a path given must exist)."""
    if path is None:
        path = stored_path()
        if not os.path.exists(path):
            return DEFAULT
    try:
        with open(path) as f:
            return CostModel.from_json(json.load(f), path)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable cost model ({e})") from None


def calibrate(npages=20_000, progress=None):
    """Measure this machine's kernel: returns a CostModel (mmemu calibrate)."""
    import datetime
    import platform

    from .host import timing as T
    def note(what):
        if progress:
            progress(what)
    note("anonymous write faults")
    anon = T.anon_faults(npages) / npages
    note("read faults on the zero page")
    zero = T.anon_faults(npages, write=False) / npages
    note("COW faults after fork")
    cow = T.cow_faults(npages) / npages
    note("random accesses (TLB misses)")
    far, near = T.random_accesses(1 << 16, 2_000_000)
    note("userfaultfd round trips (C service thread, UFFDIO_COPY)")
    rt = T.uffd_round_trip_c(500)
    ns = dict(DEFAULT_NS)
    ns.update(tlb_hits=max(1, round(near / 2e6 * 1e9)), tlb_misses=max(0, round((far - near) / 2e6 * 1e9)),
              faults=round(zero * 1e9), anon_faults=max(0, round((anon - zero) * 1e9)),
              cow=max(0, round((cow - zero) * 1e9)))
    if rt is not None:
        ns["uffd_faults"] = max(0, round(rt / 500 * 1e9 - ns["faults"]))
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    return CostModel(ns, f"calibrated on {platform.node()} (kernel {platform.release()}), {when}")


def save(model, path=None):
    path = path or stored_path()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(model.to_json(), f, indent=1, sort_keys=True)
    os.replace(tmp, path)
    return path


@dataclass(frozen=True)
class Link:
    """The migration network: bandwidth, one-way latency (the wire plus the
    source QEMU's handling of a request), the stream data queued ahead of a
    page request on the main channel (socket buffers), and whether page
    requests have a channel of their own (QEMU's postcopy-preempt). The
    defaults put a 4 KiB request at about 10.6 ms without preempt and 0.5 ms
    with it on a 10 Gbps link, as QEMU measured (postcopy-preempt cover
    letter, 2022)."""
    gbps: float = 10.0
    latency_us: float = 250.0
    queue_bytes: int = 12 << 20
    preempt: bool = False

    def __post_init__(self):
        # Bounded so every time the core derives stays far inside int64 ns.
        if not (0 < self.gbps < 1e6 and 0 <= self.latency_us < 1e9 and 0 <= self.queue_bytes < 1 << 40) \
                or not all(map(math.isfinite, (self.gbps, self.latency_us))):
            raise ValueError("a link needs 0 < gbps < 10^6, 0 <= latency_us < 10^9 and "
                             "0 <= queue_bytes < 2^40")

    @property
    def page_ns(self):
        return int(round(C.PAGE_SIZE * 8 / self.gbps))

    @property
    def latency_ns(self):
        return int(round(self.latency_us * 1000))

    @property
    def queue_ns(self):
        return int(round(self.queue_bytes * 8 / self.gbps))
