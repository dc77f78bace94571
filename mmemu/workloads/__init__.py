"""Workloads at VM scale (issue 12), on the batch access path and emulated
time (mmemu.cost): trace replay as postcopy serves it (replay), postcopy
live migration over a modelled link (postcopy), a live snapshot under
uffd-wp or WP_ASYNC (snapshot), a umap-style user-level pager (umap),
synthetic access patterns (patterns) and their plots (plots)."""


def peak_rss_kib():
    """This process's peak resident set (VmHWM: its own memory's high-water
    mark; ru_maxrss would carry a parent's across exec)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
