"""Workloads at VM scale (issue 12), on the batch access path and emulated
time (mmemu.cost): trace replay as postcopy serves it (replay), postcopy
live migration over a modelled link (postcopy), a live snapshot under
uffd-wp or WP_ASYNC (snapshot), a umap-style user-level pager (umap),
synthetic access patterns (patterns) and their plots (plots)."""
