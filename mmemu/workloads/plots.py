"""PNG plots of a workload's faults (matplotlib, Agg: no display needed):
the latency CDF, the fault timeline and a heatmap of faults per guest
region over time. `faults` is an (n, 4) array of (vcpu, start, end, page)
rows: times in emulated ns, or access indices (by="access": no latency, so
no CDF)."""
from __future__ import annotations

import os

import numpy as np


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def write(outdir, name, faults, npages, title, by="time"):
    """Write <name>-latency-cdf.png (by time only), <name>-fault-timeline.png
    and <name>-region-heatmap.png into outdir; returns their paths."""
    plt = _plt()
    os.makedirs(outdir, exist_ok=True)
    faults = np.asarray(faults, np.int64).reshape(-1, 4)
    pages = faults[:, 3]
    lat_us = (faults[:, 2] - faults[:, 1]) / 1e3
    start_ms = faults[:, 1] / (1e6 if by == "time" else 1.0)
    xlabel = "emulated time (ms)" if by == "time" else "access"
    paths = []
    if by == "time":
        paths.append(_cdf(plt, outdir, name, title, lat_us))
    paths.append(_timeline(plt, outdir, name, title, faults, start_ms, lat_us, xlabel, by))
    paths.append(_heatmap(plt, outdir, name, title, start_ms, pages, npages, xlabel))
    return paths


def _cdf(plt, outdir, name, title, lat_us):
    fig, ax = plt.subplots(figsize=(6, 4))
    if len(lat_us):
        x = np.sort(lat_us)
        ax.plot(x, np.arange(1, len(x) + 1) / len(x))
        ax.set_xscale("log")
    ax.set_xlabel("remote fault latency (us)")
    ax.set_ylabel("fraction of faults")
    ax.set_title(f"{title}: latency CDF ({len(lat_us)} faults)")
    ax.grid(True, which="both", alpha=0.3)
    return _save(fig, plt, outdir, f"{name}-latency-cdf.png")


def _timeline(plt, outdir, name, title, faults, start_ms, lat_us, xlabel, by):
    fig, ax = plt.subplots(figsize=(7, 4))
    if len(start_ms) and by == "time":
        for v in np.unique(faults[:, 0]):
            sel = faults[:, 0] == v
            ax.scatter(start_ms[sel], lat_us[sel], s=2, label=f"vCPU {v}")
        ax.set_yscale("log")
        ax.legend(markerscale=4, fontsize="small")
        ax.set_ylabel("latency (us)")
    elif len(start_ms):
        ax.plot(np.sort(start_ms), np.arange(1, len(start_ms) + 1))
        ax.set_ylabel("faults so far")
    ax.set_xlabel(xlabel)
    ax.set_title(f"{title}: fault timeline")
    return _save(fig, plt, outdir, f"{name}-fault-timeline.png")


def _heatmap(plt, outdir, name, title, start_ms, pages, npages, xlabel):
    fig, ax = plt.subplots(figsize=(7, 4))
    if len(start_ms):
        rows = min(64, max(1, npages))
        cols = 100
        h, _, _ = np.histogram2d(pages * rows // max(npages, 1), start_ms, bins=[rows, cols],
                                 range=[[0, rows], [0, max(float(start_ms.max()), 1e-9)]])
        im = ax.imshow(h, aspect="auto", origin="lower", interpolation="nearest",
                       extent=[0, float(start_ms.max()), 0, npages])
        fig.colorbar(im, ax=ax, label="faults")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("page")
    ax.set_title(f"{title}: faults per region")
    return _save(fig, plt, outdir, f"{name}-region-heatmap.png")


def _save(fig, plt, outdir, fname):
    path = os.path.join(outdir, fname)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
