"""Workloads at VM scale (issue 12): trace replay as postcopy serves it
(replay) and synthetic access patterns (patterns). Postcopy, snapshot and
umap workloads, and the cost model, are still to come."""
