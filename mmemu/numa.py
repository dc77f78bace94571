"""NUMA: move_pages(2) and mbind(2) of a Process (mm/migrate.c, mm/mempolicy.c).

A Machine(nodes=N) splits its frames into N equal nodes; CPUs spread over
them in order (Engine.cpu_node). Allocations without a policy fill node 0
first, then the next (a task on node 0 falling back along its zonelist):
mmemu keeps no per-task or per-VMA memory policy. Page migration itself
is the core's (core/migrate.pxi): unmap into migration entries, copy,
remap; a THP or mTHP moves whole (a PMD migration entry for a PMD
mapping), split into base pages when the target node has no free folio of
its order; see semantics.md section 14.

Privilege: MPOL_MF_MOVE_ALL needs CAP_SYS_NICE; mmemu models no credentials,
and its processes run as root, so it is always allowed.
"""
from __future__ import annotations

import errno
from typing import Iterable, SupportsIndex

import numpy as np

from . import args as A
from . import constants as C
from .errors import EAGAIN, EFAULT, EINVAL, EIO, oserror

_PAGE = C.PAGE_SIZE


class MoveStatus(list):
    """move_pages(2)'s status array, one int per page: the page's node, or a
    negative errno (-EFAULT: no VMA or the zero page; -ENOENT: nothing
    present; -EACCES: mapped more than once, without MPOL_MF_MOVE_ALL;
    -EBUSY: listed twice in one call; -EAGAIN: not migrated).

    `not_migrated` is the syscall's return value: 0, or the number of pages
    not migrated when a batch failed (Linux then stops; the pages after
    that batch were never tried and read -EAGAIN here; Linux leaves the
    failed batch's and their slots as the caller filled them)."""

    not_migrated: int = 0


def _addresses(pages, call):
    if isinstance(pages, np.ndarray):
        if pages.ndim != 1 or pages.dtype.kind not in "iu":
            raise TypeError(f"{call}: pages must be a 1-D integer array")
        return np.ascontiguousarray(pages.astype(np.uint64, copy=False))
    return np.array([A.ulong(p, call, "page") for p in pages], np.uint64)


def _nodes(nodes, n, call):
    arr = np.asarray(nodes if isinstance(nodes, np.ndarray) else [A._int(x, call, "node") for x in nodes])
    if arr.ndim != 1 or len(arr) != n:
        raise ValueError(f"{call}: nodes must have one entry per page ({n})")
    if len(arr) and (arr.dtype.kind not in "iu" or arr.min() < -(1 << 31) or arr.max() >= 1 << 31):
        raise ValueError(f"{call}: each node must be a C int")
    return np.ascontiguousarray(arr.astype(np.int32))


class NumaOps:
    """The NUMA syscalls of a Process (mixed into Process)."""

    def move_pages(self, pages: Iterable[SupportsIndex], nodes: Iterable[SupportsIndex] | None = None,
                   flags: int = 0) -> MoveStatus:
        """move_pages(2) on this process (pid 0): with nodes=None report
        each page's node; else migrate page i to nodes[i]. Call errors are
        OSError with Linux's errno: EINVAL for unknown flags, ENODEV for a
        node the machine does not have (the pages before it are done, and
        the exception's `status` says how), ENOMEM when the target node has
        no free frame."""
        flags = A.sint(flags, "move_pages", "flags")
        self._live("move_pages")
        if flags & ~(C.MPOL_MF_MOVE | C.MPOL_MF_MOVE_ALL):
            raise oserror(EINVAL, "move_pages", f"flags {flags:#x}")
        addrs = _addresses(pages, "move_pages")
        status = np.full(len(addrs), -EAGAIN, np.int32)
        eng = self._engine
        if nodes is None:
            eng.move_pages(self.mm, addrs, None, status, False)
            return MoveStatus(status.tolist())
        nd = _nodes(nodes, len(addrs), "move_pages")
        err = eng.move_pages(self.mm, addrs, nd, status, bool(flags & C.MPOL_MF_MOVE_ALL))
        if err < 0:
            e = oserror(-err, "move_pages", "no such node" if err == -errno.ENODEV else None)
            e.status = status.tolist()
            raise e
        out = MoveStatus(status.tolist())
        out.not_migrated = int(err)
        return out

    def mbind(self, addr: int, length: int, mode: int, nodemask: int, flags: int = 0) -> None:
        """mbind(2) with MPOL_BIND (and MPOL_DEFAULT without moving):
        MPOL_MF_MOVE migrates the range's pages mapped only here onto the
        nodemask (bit n: node n), MPOL_MF_MOVE_ALL shared ones too;
        MPOL_MF_STRICT makes a page left elsewhere EIO. The policy itself
        is not kept: later faults allocate as before."""
        addr, length = A.ulong(addr, "mbind", "addr"), A.ulong(length, "mbind", "len")
        mode, flags = A.ulong(mode, "mbind", "mode"), A.uint(flags, "mbind", "flags")
        nodemask = A._int(nodemask, "mbind", "nodemask")
        self._live("mbind")
        # kernel_mbind(): the mode is an int; sanitize_mpol_flags(): its top
        # bits are mode flags, the rest must be below MPOL_MAX (unsigned).
        mode &= 0xFFFFFFFF
        mode_flags = mode & (C.MPOL_F_STATIC_NODES | C.MPOL_F_RELATIVE_NODES | C.MPOL_F_NUMA_BALANCING)
        mode &= ~mode_flags
        if mode > C.MPOL_PREFERRED_MANY or nodemask < 0 \
                or mode_flags & C.MPOL_F_STATIC_NODES and mode_flags & C.MPOL_F_RELATIVE_NODES:
            raise oserror(EINVAL, "mbind", "bad mode, mode flags or nodemask")
        if mode_flags & C.MPOL_F_NUMA_BALANCING and mode not in (C.MPOL_BIND, C.MPOL_PREFERRED_MANY):
            raise oserror(EINVAL, "mbind", "MPOL_F_NUMA_BALANCING needs MPOL_BIND or MPOL_PREFERRED_MANY")
        # do_mbind()
        if flags & ~C.MPOL_MF_VALID:
            raise oserror(EINVAL, "mbind", f"flags {flags:#x}")
        if addr & (_PAGE - 1):
            raise oserror(EINVAL, "mbind", "address not page aligned")
        if mode == C.MPOL_DEFAULT:
            flags &= ~C.MPOL_MF_STRICT
        end = addr + A.page_align(length)
        if length and end == addr or end >= 1 << 64:
            raise oserror(EINVAL, "mbind", "range wraps around")
        if end == addr:
            return
        # mpol_new() / mpol_set_nodemask(): nodes without memory drop out.
        mask = nodemask & ((1 << self._engine.nnodes) - 1)
        if mode == C.MPOL_DEFAULT:
            if nodemask:
                raise oserror(EINVAL, "mbind", "MPOL_DEFAULT takes an empty nodemask")
            if flags & (C.MPOL_MF_MOVE | C.MPOL_MF_MOVE_ALL):
                raise NotImplementedError("mbind(MPOL_DEFAULT, MPOL_MF_MOVE): no per-task policy is modelled")
            return
        if mode != C.MPOL_BIND:
            raise NotImplementedError(f"mbind mode {mode}: only MPOL_BIND and MPOL_DEFAULT are modelled")
        if not mask:
            raise oserror(EINVAL, "mbind", "empty nodemask (no node of the machine in it)")
        # queue_pages_range(): an unmapped part of the range is EFAULT.
        if self.vmas.holes(addr, end):
            raise oserror(EFAULT, "mbind", "range not fully mapped")
        if flags & (C.MPOL_MF_MOVE | C.MPOL_MF_MOVE_ALL):
            _, failed = self._engine.mbind_move(self.mm, self.cpu, addr, end, mask,
                                                bool(flags & C.MPOL_MF_MOVE_ALL))
        else:
            addrs = np.arange(addr, end, _PAGE, dtype=np.uint64)
            st = np.zeros(len(addrs), np.int32)
            self._engine.move_pages(self.mm, addrs, None, st, False)
            failed = int(np.count_nonzero((st >= 0) & ((mask >> np.maximum(st, 0)) & 1 == 0)))
        if failed and flags & C.MPOL_MF_STRICT:
            raise oserror(EIO, "mbind", f"{failed} pages stay off the nodemask")

