"""Workloads that run on a Machine at VM scale (issue 12): trace replay so far."""
