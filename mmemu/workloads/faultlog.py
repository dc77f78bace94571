"""The faults an in-core resolver served, by thread: read after each slice
of a TimedRun (Uffd.core_stats(since=...)), kept as (vcpu, start, end, page)
rows for metrics (blocktime) and plots."""
from __future__ import annotations

import numpy as np


class FaultLog:
    def __init__(self, uffd, nthreads, progress=None):
        self.uffd = uffd
        self.seen = 0
        self.wait = [0] * nthreads          # ns each thread waited on faults
        self.rows = []
        self.progress = progress

    def on_slice(self, i, counts):
        ev = self.uffd.core_stats(since=self.seen)["events"]
        if len(ev):
            self.seen += len(ev)
            self.wait[i] += int(ev[:, 1].sum())
            self.rows.append(np.stack([np.full(len(ev), i, np.int64), ev[:, 0], ev[:, 0] + ev[:, 1], ev[:, 2]], 1))
        if self.progress:
            self.progress(counts["accesses"])

    def intervals(self):
        return np.concatenate(self.rows) if self.rows else np.zeros((0, 4), np.int64)
