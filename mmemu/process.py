"""Process and Thread: the Linux user API over one mm.

Each call validates its arguments the way the syscall does (same errno),
updates the VMA layout, then makes one core call for the page-level work.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, SupportsInt

if TYPE_CHECKING:
    import numpy.typing as npt
    from typing_extensions import Buffer

    from .machine import Machine
    from .uffd import Uffd

from functools import partial

import numpy as np

from . import args as A
from . import constants as C
from .errors import (EACCES, EAGAIN, EBADF, EBUSY, EEXIST, EFAULT, EFBIG, EINVAL, ENOMEM, EOVERFLOW, EPERM, ESRCH,
                     Deadlock, MmemuError, Sigbus, Sigsegv, UserFault, oserror)
from .gup import Pin, Pipe
from . import sched
from . import uffd as _uffd
from .sched import Thread
from .serialise import serialised
from ._core import STAT_NAMES
from .pageinfo import PagemapEntry
from .numa import NumaOps
from .shmem import HSTATE_BY_LOG, FileOps, HugetlbFile, ShmemFile
from .vma import (VM_ACCESS_FLAGS, VM_ANON, VM_DONTCOPY, VM_DONTEXPAND, VM_GROWSDOWN, VM_HUGETLB,
                  VM_MIXEDMAP, VM_EXEC, VM_HUGEPAGE, VM_IO,
                  VM_LOCKED, VM_MAYEXEC, VM_MAYREAD, VM_MAYSHARE, VM_MAYWRITE, VM_MERGEABLE,
                  VM_NOHUGEPAGE, VM_NORESERVE, VM_PFNMAP, VM_READ, VM_SHARED, VM_SOFTDIRTY, VM_WIPEONFORK,
                  VM_WRITE, VM_DONTDUMP, VM_SEQ_READ, VM_RAND_READ, VM_UFFD_MINOR,
                  VM_UFFD_MISSING, VM_UFFD_WP, Vma, VmaList)

PAGE = C.PAGE_SIZE
MAX_MAP_COUNT = 65530          # vm.max_map_count default
USER_TOP = 1 << 47             # end of the 4-level user address space (MM_USER_TOP)
MAX_FILE_PAGES = 1 << 32      # the core keeps a frame's file index in 32 bits (mm_types.h)
# What a caller of get_user_pages/pin_user_pages may pass, plus what those
# two add themselves (FOLL_GET or FOLL_PIN, FOLL_TOUCH).
_GUP_ALLOWED = (C.FOLL_WRITE | C.FOLL_GET | C.FOLL_DUMP | C.FOLL_FORCE | C.FOLL_NOWAIT | C.FOLL_NOFAULT
                | C.FOLL_HWPOISON | C.FOLL_ANON | C.FOLL_LONGTERM | C.FOLL_SPLIT_PMD | C.FOLL_PCI_P2PDMA
                | C.FOLL_INTERRUPTIBLE | C.FOLL_HONOR_NUMA_FAULT | C.FOLL_TOUCH | C.FOLL_PIN)
# /proc/pid/mem: access_remote_vm()'s GUP of one page, with no `locked`
# pointer, so a userfault there fails (EIO) instead of waiting.
_PROC_MEM_GUP = C.FOLL_FORCE | C.FOLL_GET | C.FOLL_TOUCH | C.FOLL_REMOTE

def pagemap_decode(raw: SupportsInt) -> PagemapEntry:
    return PagemapEntry(raw)


_page_align = A.page_align         # PAGE_ALIGN on an unsigned long (wraps to 0)
_INSPECT_ALWAYS = 1 << 20
_BIG_ACCESS = 1 << 16              # accesses longer than this look for the first hole first


def _raise(err):
    """Raise err from a lambda (a syscall failing after its events)."""
    raise err


def _inspect_pages(vmas, addr, npages):
    """How many entries an inspection (pagemap, versions) returns: all that
    were asked up to 2^20, beyond that only up to the end of the last VMA
    (every later entry would read as zero), so a huge count costs no host
    memory the mappings do not justify."""
    npages = _clamp_pages(addr, npages)
    if npages <= _INSPECT_ALWAYS:
        return npages
    first = addr & ~(PAGE - 1)
    inside = [v for v in vmas if v.start < first + npages * PAGE and v.end > first]
    if not inside:
        return _INSPECT_ALWAYS
    npages = min(npages, (inside[-1].end - first) >> C.PAGE_SHIFT)
    mapped = sum((min(v.end, first + npages * PAGE) - max(v.start, first)) >> C.PAGE_SHIFT for v in inside)
    if npages > max(_INSPECT_ALWAYS, 4 * mapped):
        # Mostly holes: an array that large is host memory the mappings
        # do not justify; the caller reads the mapped parts instead.
        raise oserror(ENOMEM, "pagemap", f"{npages} entries for {mapped} mapped pages: read in pieces")
    return max(_INSPECT_ALWAYS, npages)


def _clamp_pages(addr, npages):
    """npages from addr, cut at the end of user space (nothing is mapped
    there: the walk stops at that hole whatever count was asked)."""
    if addr >= USER_TOP:
        return 0
    return min(npages, (USER_TOP - (addr & ~(PAGE - 1))) >> C.PAGE_SHIFT)


def _prot_to_vm(prot):
    f = 0
    if prot & C.PROT_READ:
        f |= VM_READ
    if prot & C.PROT_WRITE:
        f |= VM_WRITE
    if prot & C.PROT_EXEC:
        f |= VM_EXEC
    return f


_MADV_KNOWN = {C.MADV_NORMAL, C.MADV_RANDOM, C.MADV_SEQUENTIAL, C.MADV_WILLNEED, C.MADV_DONTNEED,
               C.MADV_FREE, C.MADV_REMOVE, C.MADV_DONTFORK, C.MADV_DOFORK, C.MADV_MERGEABLE,
               C.MADV_UNMERGEABLE, C.MADV_HUGEPAGE, C.MADV_NOHUGEPAGE, C.MADV_DONTDUMP,
               C.MADV_DODUMP, C.MADV_WIPEONFORK, C.MADV_KEEPONFORK, C.MADV_COLD, C.MADV_PAGEOUT,
               C.MADV_POPULATE_READ, C.MADV_POPULATE_WRITE, C.MADV_DONTNEED_LOCKED,
               C.MADV_COLLAPSE, C.MADV_GUARD_INSTALL, C.MADV_GUARD_REMOVE, C.MADV_HWPOISON,
               C.MADV_SOFT_OFFLINE}

# Advice the engine does not model yet: Linux accepts it, so refusing with an
# errno would lie. What brings each one is named.
_MADV_LATER: dict[int, str] = {
    C.MADV_HWPOISON: "memory-failure handling (madvise_inject_error: hwpoison entries, SIGBUS BUS_MCEERR_AR)",
    C.MADV_SOFT_OFFLINE: "soft offlining (soft_offline_page: a page migrated off and taken out of use)",
}

# Engine.collapse's results (core/huge.pxi COLLAPSE_*): (errno, go on with the
# next 2 MiB) as madvise_collapse() / madvise_collapse_errno() treat them.
_COLLAPSE_OK = (0, 1)
_COLLAPSE_FAIL = {2: (EINVAL, False), 3: (None, False), 4: (EINVAL, True), 5: (EINVAL, True),
                  6: (EINVAL, True), 7: (EAGAIN, True), 8: (ENOMEM, False), 9: (EINVAL, False)}


# Advice that only sets or clears VMA flags: (set, clear). MADV_MERGEABLE only
# marks the VMA (Machine.ksm_scan is ksmd); MADV_UNMERGEABLE breaks the KSM
# pages first (ksm_madvise).
_MADV_ZAP = (C.MADV_DONTNEED, C.MADV_DONTNEED_LOCKED, C.MADV_FREE, C.MADV_REMOVE)
_FLAG_ADVICE = {
    C.MADV_DONTFORK: (VM_DONTCOPY, 0), C.MADV_DOFORK: (0, VM_DONTCOPY),
    C.MADV_WIPEONFORK: (VM_WIPEONFORK, 0), C.MADV_KEEPONFORK: (0, VM_WIPEONFORK),
    C.MADV_HUGEPAGE: (VM_HUGEPAGE, VM_NOHUGEPAGE), C.MADV_NOHUGEPAGE: (VM_NOHUGEPAGE, VM_HUGEPAGE),
    C.MADV_MERGEABLE: (VM_MERGEABLE, 0), C.MADV_UNMERGEABLE: (0, VM_MERGEABLE),
    C.MADV_DONTDUMP: (VM_DONTDUMP, 0), C.MADV_DODUMP: (0, VM_DONTDUMP),
    C.MADV_SEQUENTIAL: (VM_SEQ_READ, VM_RAND_READ), C.MADV_RANDOM: (VM_RAND_READ, VM_SEQ_READ),
    C.MADV_NORMAL: (0, VM_SEQ_READ | VM_RAND_READ),
}


# ksm_madvise(): MADV_MERGEABLE is silently ignored (returns 0) on these VMAs,
# in every modelled era (vma_ksm_compatible(), 6.4+; the same list inline
# before; VM_DROPPABLE from 6.11 has no counterpart here).
# Flags the core adds to a hugetlb page's PAGEMAP_SCAN categories
# (PM_SCAN_HUGETLB_ENTRY / _HOLE of core/uffd.pxi): the walk's hugetlb_entry
# sees it, or its pte_hole does (no table for the huge page).
_HUGETLB_ENTRY, _HUGETLB_HOLE = 0x1000, 0x2000
HPAGE_PMD = 2 << 20             # HPAGE_SIZE on x86

_KSM_INCOMPATIBLE = (VM_SHARED | VM_MAYSHARE | VM_PFNMAP | VM_IO | VM_DONTEXPAND | VM_HUGETLB
                     | VM_MIXEDMAP)


class _HeldRefs:
    """References a GUP took before it blocked on a userfault: the blocked
    syscall holds them (Machine.check() counts them)."""

    def __init__(self, machine, flags):
        self.machine, self.flags, self.parts = machine, flags, []
        self.count = 0              # pages done (pfns are kept only when referenced)
        machine._holders.add(self)

    def held_refs(self):
        pfns = np.concatenate(self.parts) if self.parts else np.zeros(0, np.int64)
        per = C.GUP_PIN_COUNTING_BIAS if self.flags & C.FOLL_PIN else 1
        return pfns, np.full(len(pfns), per if self.flags & (C.FOLL_PIN | C.FOLL_GET) else 0, np.int64)

    def done(self):
        """Hand the references over (once): the caller now owns them."""
        self.machine._holders.discard(self)
        pfns = np.concatenate(self.parts) if self.parts else np.zeros(0, np.int64)
        self.parts = []
        return pfns


_U64, _U8 = np.dtype(np.uint64), np.dtype(np.uint8)


def _replay_trace(addrs, writes):
    """replay()'s addresses and store flags as the core takes them (a
    C-contiguous uint64 array, and uint8 flags or None), from a trace
    object or any 1-D integer array-like; bad input is refused here."""
    if hasattr(addrs, "addrs"):                 # a trace object
        writes = getattr(addrs, "writes", None) if writes is None else writes
        addrs = addrs.addrs
    a = np.asarray(addrs)
    if a.dtype == object and a.ndim == 1 and all(type(x) is int for x in a.tolist()):
        raise ValueError("replay: an address wider than 64 bits")     # no register holds it
    if a.ndim != 1 or not (a.dtype.kind in "iu" or a.size == 0):
        raise TypeError("replay: addrs must be a 1-D array of integers")
    if a.dtype.kind == "i" and a.size and a.min() < 0:
        raise ValueError("replay: negative address")
    a = np.ascontiguousarray(a, np.uint64)
    w = None
    if writes is not None:
        w = np.asarray(writes)
        if w.shape != a.shape or w.dtype.kind not in "biu":
            raise ValueError("replay: writes must be bool or uint8 flags, one per address")
        w = np.ascontiguousarray(w != 0, np.uint8) if w.dtype != np.uint8 else np.ascontiguousarray(w)
    return a, w


def _replay_stops(uf, state, stop_on):
    """A replay's userfault: note the index reached in state[0]; True when
    stop_on asks the batch to stop there (state[1] says where), False when
    the thread is to wait for it."""
    state[0] = uf.done
    if stop_on and "userfault" in stop_on and uf.waiter is None:
        state[1] = {"index": int(uf.done), "address": int(uf.address), "reason": "userfault"}
        return True
    return False


@serialised
class Process(FileOps, NumaOps):
    """One process (one mm) of a Machine."""

    def __init__(self, machine: Machine, pid: int, mm: int, cpu: int,
                 vmas: VmaList | None = None) -> None:
        self.machine = machine
        self._lock = machine._lock
        self.pid = pid
        self.mm = mm
        self.cpu = cpu
        self.vmas = vmas if vmas is not None else VmaList()
        self.alive = True
        self.children = []
        self.fds = {}
        self.uffds = []
        self._mmap_top = machine._mmap_base
        self._next_thread_cpu = cpu
        self.main = Thread(self, cpu)
        self.uffd_monitor = None        # the thread making uffd ioctls while main is blocked

    # ---- helpers -------------------------------------------------------------

    @property
    def _engine(self):
        return self.machine._engine

    def _live(self, call):
        if not self.alive:
            raise oserror(ESRCH, call, f"process {self.pid} has exited")

    def _push_vmas(self, src_mm=-1):
        self._engine.set_vmas(self.mm, *self.vmas.arrays(), self.vmas.uffd_array(),
                              self.vmas.origin_array(), src_mm)
        self.vmas.renumber()

    def _sync(self):
        self.vmas.merge(self._engine.vma_anon(self.mm))
        self._push_vmas()

    def _policy(self):
        return self.machine.policy

    # ---- mmap / munmap / mprotect / madvise ----------------------------------

    def mmap(self, addr: int, length: int, prot: int, flags: int, fd: int = -1,
             offset: int = 0) -> int:
        addr, length = A.ulong(addr, "mmap", "addr"), A.ulong(length, "mmap", "length")
        prot, flags = A.ulong(prot, "mmap", "prot"), A.ulong(flags, "mmap", "flags")
        fd, offset = A.ulong(fd, "mmap", "fd", EBADF), A.ulong(offset, "mmap", "offset")
        fd = fd - (1 << 64) if fd >= 1 << 63 else fd      # the fd table is keyed by int
        self._live("mmap")
        if offset & (PAGE - 1):
            raise oserror(EINVAL, "mmap", "offset not page aligned")
        if length == 0:
            raise oserror(EINVAL, "mmap", "zero length")
        map_type = flags & C.MAP_TYPE
        if map_type not in (C.MAP_SHARED, C.MAP_PRIVATE, C.MAP_SHARED_VALIDATE):
            raise oserror(EINVAL, "mmap", "neither MAP_SHARED nor MAP_PRIVATE")
        length = _page_align(length)
        if length == 0 or length > C.TASK_SIZE:
            raise oserror(ENOMEM, "mmap", "length overflows the address space")
        shared = map_type != C.MAP_PRIVATE
        backing = None
        if not flags & C.MAP_ANONYMOUS:
            backing = self.fds.get(fd)
            if backing is None:
                raise oserror(EBADF, "mmap", "no open file descriptor for a file mapping")
            if (offset >> C.PAGE_SHIFT) + (length >> C.PAGE_SHIFT) > MAX_FILE_PAGES:
                raise oserror(EOVERFLOW, "mmap", "offset beyond the page cache index range")
        hsize = None
        if isinstance(backing, HugetlbFile):
            hsize = backing.hsize               # ksys_mmap_pgoff: len aligned to the file's pages
        elif flags & C.MAP_HUGETLB:
            if backing is not None:
                raise oserror(EINVAL, "mmap", "MAP_HUGETLB of a file not on hugetlbfs")
            hstate = HSTATE_BY_LOG.get((flags >> C.MAP_HUGE_SHIFT) & C.MAP_HUGE_MASK)
            if hstate is None:
                raise oserror(EINVAL, "mmap", "no hugetlb page size of those MAP_HUGE_* bits")
            hsize = HugetlbFile.size_of(hstate)
        if hsize is not None:
            length = -(-length // hsize) * hsize
            if length > C.TASK_SIZE:
                raise oserror(ENOMEM, "mmap", "length overflows the address space")
            if offset % hsize:
                raise oserror(EINVAL, "mmap", "hugetlbfs offset not huge-page aligned")
        fixed = flags & (C.MAP_FIXED | C.MAP_FIXED_NOREPLACE)
        if fixed:
            if addr & (PAGE - 1) or (hsize is not None and addr % hsize):
                # prepare_hugepage_range(): a hugetlb range is huge-page aligned
                raise oserror(EINVAL, "mmap", "MAP_FIXED address not page aligned")
            if addr + length > C.TASK_SIZE:
                raise oserror(ENOMEM, "mmap", "range beyond TASK_SIZE")
            if addr < C.MMAP_MIN_ADDR:
                raise oserror(EPERM, "mmap", "below vm.mmap_min_addr")
            if flags & C.MAP_FIXED_NOREPLACE and not flags & C.MAP_FIXED \
                    and self.vmas.overlapping(addr, addr + length):
                raise oserror(EEXIST, "mmap", "MAP_FIXED_NOREPLACE range in use")
            start = addr
        else:
            start = None
            hint = addr & ~(PAGE - 1)
            if hsize is not None:
                hint = -(-addr // hsize) * hsize        # hugetlb_get_unmapped_area aligns the hint up
            if hint >= C.MMAP_MIN_ADDR and hint + length <= C.TASK_SIZE \
                    and not self.vmas.overlapping(hint, hint + length):
                start = hint
            if start is None and hsize is not None:
                start = self._aligned_area(length, hsize)
                if start is None:
                    raise oserror(ENOMEM, "mmap", "no free virtual range")
            if start is None and not shared and flags & C.MAP_ANONYMOUS:
                start = self._thp_area(length)
            if start is None:
                start = self.vmas.free_area(length, self._mmap_top, C.MMAP_MIN_ADDR)
                if start is None:
                    raise oserror(ENOMEM, "mmap", "no free virtual range")
        vmflags = _prot_to_vm(prot) | VM_MAYREAD | VM_MAYWRITE | VM_MAYEXEC
        if shared:
            vmflags |= VM_SHARED | VM_MAYSHARE
        if backing is None and not shared:
            vmflags |= VM_ANON
        if self._policy().soft_dirty:
            vmflags |= VM_SOFTDIRTY       # a new VMA reads soft-dirty until cleared
        if flags & C.MAP_LOCKED:
            vmflags |= VM_LOCKED
        if hsize is not None:
            vmflags = (vmflags & ~VM_ANON) | VM_HUGETLB | VM_DONTEXPAND
            if flags & C.MAP_NORESERVE:
                vmflags |= VM_NORESERVE         # hugetlb honours it whatever the overcommit mode
        if len(self.vmas) + 2 > MAX_MAP_COUNT:
            raise oserror(ENOMEM, "mmap", "vm.max_map_count reached")
        unmap_events = []
        if fixed:
            self._hugetlb_split_check(start, start + length, "mmap")
            unmap_events = self._unmap_events(start, start + length)
            self._unmap(start, start + length)
        if hsize is not None:
            return self._mmap_hugetlb(start, length, vmflags, offset, backing, hsize, flags, unmap_events)
        if backing is None and shared:
            # shmem_zero_setup(): shared anonymous memory is a shmem file.
            backing = ShmemFile(self.machine, "dev/zero (deleted)", anon=True)
            self.machine._engine.file_set_size(backing.fid, length)
            pgoff = 0
        else:
            pgoff = (offset >> C.PAGE_SHIFT) if backing is not None else start >> C.PAGE_SHIFT
        self.vmas.insert(Vma(start, start + length, vmflags, pgoff,
                             backing.fid if backing is not None else 0))
        self._sync()
        if flags & (C.MAP_POPULATE | C.MAP_LOCKED):
            # mm_populate(): write faults for private writable VMAs.
            self._populate(start, start + length, bool(vmflags & VM_WRITE), "mmap")
        # MAP_FIXED over a registered range: UNMAP after the fact, as munmap.
        return self._events(unmap_events, lambda: start)

    def _mmap_hugetlb(self, start, length, vmflags, offset, backing, hsize, flags, unmap_events):
        """The hugetlbfs half of mmap: the file (hugetlb_file_setup() for
        MAP_HUGETLB, sized to the mapping), then hugetlbfs_file_mmap()'s
        reservation of every huge page the mapping covers unless
        VM_NORESERVE (ENOMEM if the pool cannot promise them), then the VMA;
        a private mapping's creator owns its reservations (HPAGE_RESV_OWNER)."""
        eng = self.machine._engine
        if backing is None:
            backing = HugetlbFile(self.machine, "anon_hugepage (deleted)", HugetlbFile.hstate_of(hsize), anon=True)
            eng.file_set_size(backing.fid, length)
        first, n = offset // hsize, length // hsize
        rid = 0
        if not vmflags & VM_NORESERVE:
            try:
                rid = eng.hugetlb_reserve(backing.fid, first, n, bool(vmflags & VM_MAYSHARE))
            except OSError:
                backing.maybe_destroy()
                raise
        self.vmas.insert(Vma(start, start + length, vmflags, offset >> C.PAGE_SHIFT, backing.fid))
        self._sync()
        if rid:
            eng.hugetlb_set_owner(self.mm, start, rid)
        if flags & (C.MAP_POPULATE | C.MAP_LOCKED):
            self._populate(start, start + length, bool(vmflags & VM_WRITE and not vmflags & VM_SHARED), "mmap")
        return self._events(unmap_events, lambda: start)

    def _hugetlb_split_check(self, start, end, call):
        """hugetlb_vm_op_split(): a hugetlb VMA splits only on a boundary of
        its huge pages; an operation that would cut one elsewhere is EINVAL."""
        for v in self.vmas.overlapping(start, end):
            if v.flags & VM_HUGETLB:
                hsize = self.machine._files[v.file].hsize
                if (v.start < start < v.end and start % hsize) or (v.start < end < v.end and end % hsize):
                    raise oserror(EINVAL, call, "range cuts a hugetlb page")

    def _aligned_area(self, length, align):
        """A free range of length bytes aligned to `align`, top-down
        (hugetlb_get_unmapped_area's align_mask); None if there is none."""
        ret = self.vmas.free_area(length + align, self._mmap_top, C.MMAP_MIN_ADDR)
        if ret is None:
            return None
        return -(-ret // align) * align

    def _thp_area(self, length):
        """thp_get_unmapped_area_vmflags() for a private anonymous mmap
        without a usable hint: search length + 2 MiB top-down, then align
        the start to 2 MiB (an already aligned gap is taken 2 MiB higher,
        as the top-down rule of 6.8 does). From efa7df3e3bb5 (6.7) for any
        length of at least 2 MiB; from d4148aeab412 (6.12) only for lengths
        that are multiples of 2 MiB. None: no alignment applies."""
        rule = self._policy().thp_mmap_align
        size = C.PMD_SIZE
        if rule == 0 or length < size or (rule == 2 and length % size):
            return None
        ret = self.vmas.free_area(length + size, self._mmap_top, C.MMAP_MIN_ADDR)
        if ret is None:
            return None
        off_sub = -ret & (size - 1)
        return ret + size if off_sub == 0 else ret + off_sub

    def _unmap(self, start, end):
        # unmap_region() zaps while the VMAs are still there, remove_vma()
        # closes them after: __unmap_hugepage_range's restored reservation
        # (hugetlb_zap_restore_reserve) is then handed back by
        # hugetlb_vm_op_close (6.12.118, 6.18.44: resv_hugepages reads -1
        # while a pin keeps the unmapped page).
        if not any(True for _v in self.vmas.overlapping(start, end)):
            return
        self._sync()
        self._engine.zap(self.mm, self.cpu, start, end, True)
        removed = self.vmas.remove(start, end)
        self._sync()
        self.machine._reap_files({v.file for v in removed if v.file})

    def munmap(self, addr: int, length: int) -> None:
        addr, length = A.ulong(addr, "munmap", "addr"), A.ulong(length, "munmap", "length")
        self._live("munmap")
        # do_vmi_munmap(): alignment and the range against TASK_SIZE before
        # PAGE_ALIGN, then an empty range is EINVAL.
        if addr & (PAGE - 1) or addr > C.TASK_SIZE or length > C.TASK_SIZE - addr:
            raise oserror(EINVAL, "munmap", "misaligned address or range beyond TASK_SIZE")
        length = _page_align(length)
        if length == 0 or addr + length > C.TASK_SIZE:
            raise oserror(EINVAL, "munmap", "empty range or beyond TASK_SIZE")
        self._hugetlb_split_check(addr, addr + length, "munmap")
        events = self._unmap_events(addr, addr + length)
        self._unmap(addr, addr + length)
        # userfaultfd_unmap_complete(): the monitor is told after the unmap.
        self._events(events, lambda: None)

    def mprotect(self, addr: int, length: int, prot: int) -> None:
        addr, length = A.ulong(addr, "mprotect", "addr"), A.ulong(length, "mprotect", "length")
        prot = A.ulong(prot, "mprotect", "prot")
        self._live("mprotect")
        if addr & (PAGE - 1):
            raise oserror(EINVAL, "mprotect", "address not page aligned")
        if prot & ~(C.PROT_READ | C.PROT_WRITE | C.PROT_EXEC | C.PROT_SEM
                    | C.PROT_GROWSDOWN | C.PROT_GROWSUP):
            raise oserror(EINVAL, "mprotect", "unknown prot bits")
        if length == 0:
            return
        length = _page_align(length)
        end = addr + length
        if length == 0 or end > C.TASK_SIZE:
            raise oserror(ENOMEM, "mprotect", "range overflows")
        first = self.vmas.find(addr)
        if first is None:
            raise oserror(ENOMEM, "mprotect", "start not mapped")
        newbits = _prot_to_vm(prot)
        start, stop = addr, end
        for v in self.vmas.overlapping(addr, end):
            if v.flags & VM_HUGETLB:
                if (v.flags & ~VM_ACCESS_FLAGS) | newbits != v.flags:
                    self._hugetlb_split_check(max(addr, v.start), min(end, v.end), "mprotect")
                else:
                    # mprotect_fixup() returns before splitting a VMA whose
                    # flags stay: a hugetlb VMA is not cut (nor its
                    # reservations) by a protection it already has.
                    start, stop = min(start, v.start), max(stop, v.end)
        # do_mprotect_pkey walks VMAs in order and stops at the first hole:
        # the VMAs before it keep their new protection, as on Linux.
        cur = addr
        error = None
        for vma in self.vmas.isolate(start, stop):
            if vma.start > cur:
                error = oserror(ENOMEM, "mprotect", "range has a hole")
                break
            if prot & (C.PROT_GROWSDOWN | C.PROT_GROWSUP) and not vma.flags & VM_GROWSDOWN:
                error = oserror(EINVAL, "mprotect", "PROT_GROWSDOWN/UP on a VMA that does not grow")
                break
            newflags = (vma.flags & ~VM_ACCESS_FLAGS) | newbits
            # A request the VMA may not grant (VM_MAY* missing) is EACCES.
            if (newflags & ~(newflags >> 4)) & VM_ACCESS_FLAGS:
                error = oserror(EACCES, "mprotect", "protection not allowed on this mapping")
                break
            cur = vma.end
            if newflags == vma.flags:
                continue                     # mprotect_fixup: nothing to do
            vma.flags = newflags
            self._push_vmas()
            self._engine.change_protection(self.mm, vma.start, vma.end, newflags)
        if error is None and cur < end:
            error = oserror(ENOMEM, "mprotect", "range has a hole")
        self._sync()
        if error is not None:
            raise error

    def madvise(self, addr: int, length: int, advice: int) -> None:
        addr, length = A.ulong(addr, "madvise", "addr"), A.ulong(length, "madvise", "length")
        advice = A.sint(advice, "madvise", "advice")
        self._live("madvise")
        pol = self._policy()
        if advice not in _MADV_KNOWN \
                or (advice in (C.MADV_POPULATE_READ, C.MADV_POPULATE_WRITE) and not pol.madv_populate) \
                or (advice == C.MADV_DONTNEED_LOCKED and not pol.madv_dontneed_locked) \
                or (advice == C.MADV_COLLAPSE and not pol.madv_collapse) \
                or (advice in (C.MADV_GUARD_INSTALL, C.MADV_GUARD_REMOVE) and not pol.madv_guard) \
                or (advice in (C.MADV_HWPOISON, C.MADV_SOFT_OFFLINE) and not pol.memory_failure):
            raise oserror(EINVAL, "madvise", f"advice {advice} unknown to {pol.version}")
        if addr & (PAGE - 1):
            raise oserror(EINVAL, "madvise", "address not page aligned")
        alen = _page_align(length)
        if length and alen == 0:
            raise oserror(EINVAL, "madvise", "length overflows")
        end = addr + alen
        if end >= 1 << 64:
            raise oserror(EINVAL, "madvise", "range wraps around")
        if end == addr:
            return
        if advice in _MADV_LATER:
            raise NotImplementedError(f"MADV {advice} needs {_MADV_LATER[advice]}")
        holes = self.vmas.holes(addr, end)
        if advice in (C.MADV_GUARD_INSTALL, C.MADV_GUARD_REMOVE):
            return self._madvise_guard(addr, end, advice, holes)
        if advice == C.MADV_COLLAPSE:
            return self._madvise_collapse(addr, end, holes)
        if advice in _MADV_ZAP:
            return self._madvise_walk(addr, end, advice, holes)
        return self._madvise_work(addr, end, advice, holes)

    def _madvise_walk(self, addr, end, advice, holes):
        """madvise_walk_vmas() for the advice that drops pages (DONTNEED,
        DONTNEED_LOCKED, FREE, REMOVE): VMA by VMA, its check, then its REMOVE
        event (userfaultfd_remove(), the range cut to the VMA; the caller
        waits until the monitor read it), then its work. A VMA that fails
        stops the walk with the VMAs before it done."""
        from .uffd import UFFD_EVENT_REMOVE, UFFD_FEATURE_EVENT_REMOVE, UffdMsg
        spans = [(max(addr, v.start), min(end, v.end)) for v in self.vmas.overlapping(addr, end)]

        def step(i):
            if i == len(spans):
                if holes:
                    raise oserror(ENOMEM, "madvise", "range has unmapped parts")
                return None
            s, e = spans[i]
            vma = self.vmas.find(s)
            if vma is None:                        # unmapped while a monitor read an event
                return step(i + 1)
            e = min(e, vma.end)
            err = self._madvise_invalid(vma, advice, s)
            if err is not None:
                raise err
            u = self.machine._uffds.get(vma.uffd) if vma.uffd else None
            work = lambda: (self._madvise_zap(vma, s, e, advice), step(i + 1))[1]  # noqa: E731
            if u is not None and not u.released and (u.features or 0) & UFFD_FEATURE_EVENT_REMOVE:
                return self._events([(u, UffdMsg(UFFD_EVENT_REMOVE, start=s, end=e), s, e)], work)
            return work()
        return step(0)

    def _madvise_collapse(self, addr, end, holes):
        """MADV_COLLAPSE (7d8faaf15545, 6.1), VMA by VMA: madvise_collapse()
        checks the VMA with thp_vma_allowable_order() without the sysfs
        setting (not VM_NOHUGEPAGE, not special or hugetlb, room for an
        aligned 2 MiB), then collapses each aligned 2 MiB of the range in the
        core (Engine.collapse). It succeeds only if every block ends up a PMD
        THP; otherwise the errno of the last failure, some of which end the
        walk (madvise_collapse_errno). A uffd-armed block with empty ptes
        is EINVAL until the khugepaged uffd fix of 6.4, EBUSY after."""
        THP = C.PMD_SIZE
        for vma in list(self.vmas.overlapping(addr, end)):
            s, e = max(addr, vma.start), min(end, vma.end)
            if vma.flags & (VM_NOHUGEPAGE | VM_HUGETLB | VM_PFNMAP | VM_IO | VM_MIXEDMAP) \
                    or ((vma.end & ~(THP - 1)) - THP) < vma.start:
                raise oserror(EINVAL, "madvise", "MADV_COLLAPSE: no THP allowed in this VMA")
            if vma.file or vma.flags & VM_SHARED:
                raise NotImplementedError("MADV_COLLAPSE of file and shmem memory (collapse_file) "
                                          "is not modelled yet")
            hstart, hend = (s + THP - 1) & ~(THP - 1), e & ~(THP - 1)
            done, last = 0, None
            for a in range(hstart, hend, THP):
                r = self._engine.collapse(self.mm, self.cpu, a)
                if r in _COLLAPSE_OK:
                    done += 1
                    continue
                last, go_on = _COLLAPSE_FAIL[r]
                if last is None:
                    last = EBUSY if self._policy().collapse_none_ebusy else EINVAL
                if not go_on:
                    break
            if hstart < hend and done != (hend - hstart) // THP:
                raise oserror(last, "madvise", "MADV_COLLAPSE could not collapse the range")
        if holes:
            raise oserror(ENOMEM, "madvise", "range has unmapped parts")

    def _madvise_guard(self, addr, end, advice, holes):
        """MADV_GUARD_INSTALL / REMOVE (662df3e5c376, 6.13), VMA by VMA as
        madvise_walk_vmas() goes: a VMA that fails stops the walk with those
        before it done, and unmapped parts are ENOMEM at the end. No uffd
        event: the install's zap is zap_page_range_single() alone."""
        pol = self._policy()
        install = advice == C.MADV_GUARD_INSTALL
        for vma in list(self.vmas.overlapping(addr, end)):
            s, e = max(addr, vma.start), min(end, vma.end)
            # is_valid_guard_vma(): never VM_SPECIAL or hugetlb; mlocked only
            # for REMOVE (an install would zap locked pages). Until 6.15
            # (f807123d578d) also private anonymous and may-write only.
            bad = VM_IO | VM_DONTEXPAND | VM_PFNMAP | VM_MIXEDMAP | VM_HUGETLB | (VM_LOCKED if install else 0)
            if vma.flags & bad or not pol.madv_guard_file and (
                    vma.file or vma.flags & VM_SHARED or not vma.flags & VM_MAYWRITE):
                raise oserror(EINVAL, "madvise", "no guard regions in this mapping")
            if not install:
                self._engine.guard_remove(self.mm, s, e)
                continue
            # anon_vma_prepare(): with the markers in place the range is not
            # empty, and fork must copy its page tables (vma_needs_copy).
            self._engine.anon_vma_prepare(self.mm, s)
            # guard_install_pte_entry() finds populated ptes: zap them
            # (zap_page_range_single, no details: guard markers stay, a
            # file-backed uffd-wp VMA keeps its protection as markers).
            markers = bool(vma.file and vma.flags & VM_UFFD_WP and pol.uffd_wp_file)
            self._engine.zap(self.mm, self.cpu, s, e, False, markers)
            if self._engine.guard_install(self.mm, s, e):
                # Only uffd-wp markers survive the zap; the kernel's walk then
                # never succeeds and the call restarts for ever (-ERESTARTNOINTR
                # after MAX_MADVISE_GUARD_RETRIES), which the engine does not
                # imitate.
                raise NotImplementedError("MADV_GUARD_INSTALL over uffd-wp markers: Linux "
                                          "restarts the call for ever")
        if holes:
            raise oserror(ENOMEM, "madvise", "range has unmapped parts")

    def _madvise_invalid(self, vma, advice, start=None):
        """The per-VMA check of madvise_vma_behavior(), as an OSError or None
        (checks that Linux makes after the REMOVE event are in _madvise_zap)."""
        if vma.flags & VM_HUGETLB and advice in (C.MADV_DONTNEED, C.MADV_DONTNEED_LOCKED, C.MADV_FREE):
            # madvise_dontneed_free_valid_vma(): DONTNEED from 90e7e7f5ef3f
            # (5.18), from a huge-page boundary (the end rounds down); never FREE.
            if advice == C.MADV_FREE or not self._policy().hugetlb_dontneed \
                    or (start is not None and start % self.machine._files[vma.file].hsize):
                return oserror(EINVAL, "madvise", "dropping hugetlb pages: FREE, before 5.18 or misaligned")
            return None
        if vma.flags & VM_HUGETLB and advice in (C.MADV_PAGEOUT, C.MADV_COLD):
            return oserror(EINVAL, "madvise", "PAGEOUT/COLD of hugetlb memory (can_madv_lru_vma)")
        if advice in (C.MADV_DONTNEED, C.MADV_DONTNEED_LOCKED, C.MADV_FREE):
            # madvise_dontneed_free_valid_vma(): no PFN maps; no mlocked VMA
            # except for DONTNEED_LOCKED.
            if vma.flags & VM_PFNMAP or (vma.flags & VM_LOCKED and advice != C.MADV_DONTNEED_LOCKED):
                return oserror(EINVAL, "madvise", "dropping pages of a locked or PFN mapping")
        elif advice == C.MADV_REMOVE:
            # madvise_remove(): EINVAL without a file or on a locked VMA; EACCES
            # unless shared and may-write (VM_WRITE itself does not matter).
            if not vma.file or vma.flags & VM_LOCKED:
                return oserror(EINVAL, "madvise", "MADV_REMOVE needs a file mapping")
            if not (vma.flags & VM_SHARED and vma.flags & VM_MAYWRITE):
                return oserror(EACCES, "madvise", "MADV_REMOVE needs a shared may-write mapping")
        elif advice == C.MADV_WIPEONFORK:
            # (KEEPONFORK checks nothing of the kind: madvise_vma_behavior.)
            if vma.file or vma.flags & VM_SHARED:
                return oserror(EINVAL, "madvise", "WIPEONFORK applies to private anon memory")
        elif advice in (C.MADV_PAGEOUT, C.MADV_COLD):
            if vma.flags & (VM_LOCKED | VM_PFNMAP):
                return oserror(EINVAL, "madvise", "PAGEOUT/COLD of a locked or PFN mapping")
        elif advice == C.MADV_DOFORK and vma.flags & VM_IO:
            return oserror(EINVAL, "madvise", "MADV_DOFORK on VM_IO")
        return None

    def _madvise_zap(self, vma, s, e, advice):
        if vma.flags & VM_HUGETLB:
            f = self.machine._files[vma.file]
            if advice == C.MADV_REMOVE:
                # vfs_fallocate(PUNCH_HOLE) on hugetlbfs: whole huge pages inside.
                off = vma.pgoff * PAGE + (s - vma.start)
                first, last = -(-off // f.hsize), (off + e - s) // f.hsize
                if first < last:
                    f.punch_hole(first, last)
                return
            e = s + (e - s) // f.hsize * f.hsize
            if e > s:
                # zap_page_range_single() passes no ZAP_FLAG_DROP_MARKER: an
                # entry with uffd-wp leaves a uffd-wp marker (5.19).
                self._engine.zap(self.mm, self.cpu, s, e, False, True)
            return
        if advice == C.MADV_REMOVE:
            first = vma.pgoff + ((s - vma.start) >> C.PAGE_SHIFT)
            last = vma.pgoff + ((e - vma.start) >> C.PAGE_SHIFT)
            self.machine._files[vma.file].punch_hole(first, last)
        elif advice == C.MADV_FREE:
            # madvise_free_single_vma(): anon only, checked after the event.
            if vma.file or vma.flags & VM_SHARED:
                raise oserror(EINVAL, "madvise", "MADV_FREE applies to private anon memory")
            self._engine.madvise_free(self.mm, self.cpu, s, e)
        else:
            # A file-backed uffd-wp VMA keeps its protection as markers (5.19+).
            markers = bool(vma.file and vma.flags & VM_UFFD_WP and self._policy().uffd_wp_file)
            self._engine.zap(self.mm, self.cpu, s, e, False, markers)

    def _madvise_work(self, addr, end, advice, holes):
        if advice in (C.MADV_POPULATE_READ, C.MADV_POPULATE_WRITE):
            self._populate(addr, end, advice == C.MADV_POPULATE_WRITE, "madvise")
            return
        start, stop = addr, end
        for v in self.vmas.overlapping(addr, end):
            if not v.flags & VM_HUGETLB:
                continue
            if advice in _FLAG_ADVICE and advice != C.MADV_MERGEABLE \
                    and (v.flags | _FLAG_ADVICE[advice][0]) & ~_FLAG_ADVICE[advice][1] != v.flags:
                self._hugetlb_split_check(max(addr, v.start), min(end, v.end), "madvise")
            else:
                # madvise_update_vma() leaves a VMA whose flags stay the same
                # unsplit, and WILLNEED/COLD/PAGEOUT never split: a hugetlb
                # VMA is not cut (nor its reservations) by advice that does
                # not change it, wherever the range ends.
                start, stop = min(start, v.start), max(stop, v.end)
        targets = self.vmas.isolate(start, stop)
        err, done_end = None, addr
        for vma in targets:
            # madvise_walk_vmas(): each VMA is checked and changed in turn.
            err = self._madvise_invalid(vma, advice)
            if err is not None:
                break
            if advice == C.MADV_MERGEABLE and vma.flags & _KSM_INCOMPATIBLE:
                done_end = vma.end      # vma_ksm_compatible(): the advice is ignored, no error
                continue
            if advice == C.MADV_UNMERGEABLE and vma.flags & VM_MERGEABLE:
                # unmerge_ksm_pages() before the flag goes (ENOMEM stops the walk)
                self._engine.ksm_unmerge(self.mm, self.cpu, vma.start, vma.end)
            if advice in _FLAG_ADVICE:
                set_bits, clear_bits = _FLAG_ADVICE[advice]
                vma.flags = (vma.flags | set_bits) & ~clear_bits
            done_end = vma.end
        self._sync()
        if advice == C.MADV_COLD and done_end > addr:
            self._engine.split_large_partly(self.mm, addr, done_end)
        if advice == C.MADV_PAGEOUT and done_end > addr:
            # After _sync() the isolated VMAs may have merged back: the range
            # is [addr, done_end), not any VMA's bounds. (COLD: deactivation
            # only, nothing observable.)
            self._engine.pageout(self.mm, self.cpu, addr, done_end)
        if err is not None:
            raise err
        if holes:
            # madvise applies to the mapped parts and then reports the hole.
            raise oserror(ENOMEM, "madvise", "range has unmapped parts")

    def mremap(self, old_addr: int, old_size: int, new_size: int, flags: int = 0,
               new_addr: int = 0) -> int:
        """mremap(2): grow in place, shrink, or move (MAYMOVE / FIXED /
        DONTUNMAP) by moving ptes, never copying pages."""
        old_addr, old_size = A.ulong(old_addr, "mremap", "old_addr"), A.ulong(old_size, "mremap", "old_size")
        new_size, flags = A.ulong(new_size, "mremap", "new_size"), A.ulong(flags, "mremap", "flags")
        new_addr = A.ulong(new_addr, "mremap", "new_addr")
        self._live("mremap")
        pol = self._policy()
        known = C.MREMAP_MAYMOVE | C.MREMAP_FIXED | (C.MREMAP_DONTUNMAP if pol.mremap_dontunmap else 0)
        if flags & ~known or old_addr & (PAGE - 1):
            raise oserror(EINVAL, "mremap", "bad flags or misaligned address")
        if flags & (C.MREMAP_FIXED | C.MREMAP_DONTUNMAP) and not flags & C.MREMAP_MAYMOVE:
            raise oserror(EINVAL, "mremap", "FIXED/DONTUNMAP need MAYMOVE")
        old_size, new_size = _page_align(old_size), _page_align(new_size)
        if new_size == 0:
            raise oserror(EINVAL, "mremap", "zero new size")
        if flags & C.MREMAP_DONTUNMAP and old_size != new_size:
            raise oserror(EINVAL, "mremap", "DONTUNMAP needs equal sizes")
        if not pol.mremap_checks_first and self.vmas.find(old_addr) is None:
            # Up to 6.16 the syscall looks the old VMA up (EFAULT) before
            # mremap_to() validates the new range (6.12's SYSCALL_DEFINE5).
            raise oserror(EFAULT, "mremap", "nothing mapped at the old address")
        if flags & C.MREMAP_FIXED:
            if new_addr & (PAGE - 1) or new_size > C.TASK_SIZE or new_addr > C.TASK_SIZE - new_size:
                raise oserror(EINVAL, "mremap", "bad new address")
            if new_addr < old_addr + old_size and old_addr < new_addr + new_size:
                raise oserror(EINVAL, "mremap", "old and new ranges overlap")
            if new_addr < C.MMAP_MIN_ADDR:
                # get_unmapped_area() -> security_mmap_addr(): below
                # vm.mmap_min_addr needs CAP_SYS_RAWIO, as for mmap.
                raise oserror(EPERM, "mremap", "below vm.mmap_min_addr")
        if old_size > C.TASK_SIZE or old_addr > C.TASK_SIZE - old_size:
            raise oserror(EFAULT, "mremap", "old range beyond TASK_SIZE")
        vma = self.vmas.find(old_addr)
        if vma is None:
            raise oserror(EFAULT, "mremap", "nothing mapped at the old address")
        if vma.flags & VM_HUGETLB:
            # 550a7d60bd5e (5.16): sizes round up to huge pages, both
            # addresses aligned, never growing (the reservation cannot
            # follow); DONTUNMAP refuses VM_DONTEXPAND. Before: EINVAL.
            hsize = self.machine._files[vma.file].hsize
            old_size, new_size = -(-old_size // hsize) * hsize, -(-new_size // hsize) * hsize
            if not pol.hugetlb_mremap or old_addr % hsize or new_size > old_size \
                    or (flags & C.MREMAP_FIXED and new_addr % hsize) or flags & C.MREMAP_DONTUNMAP:
                raise oserror(EINVAL, "mremap", "hugetlb mapping: misaligned, growing or before 5.16")
        if old_size == 0:
            raise oserror(EINVAL, "mremap", "duplicating a mapping (old_size 0) is not modelled")
        if flags & C.MREMAP_DONTUNMAP and (vma.file or vma.flags & VM_SHARED) and not pol.mremap_dontunmap_any:
            raise oserror(EINVAL, "mremap", "DONTUNMAP of a non-anonymous mapping needs 5.13")
        if flags & (C.MREMAP_FIXED | C.MREMAP_DONTUNMAP):
            # mremap_to(): always a move, to new_addr or to a fresh range. What
            # stays of the old range, [old, old + min(old, new size)), must lie
            # in one VMA. From 6.17 that is checked before anything is
            # unmapped (the 6.18 host: a same-size move across two VMAs is
            # EFAULT with the target intact); up to 6.16 mremap_to() unmaps
            # the FIXED target and the shrunk tail first, and vma_to_resize()
            # fails only then, with both gone (6.12.118 under QEMU).
            if pol.mremap_checks_first and old_addr + min(old_size, new_size) > vma.end:
                if pol.mremap_multi_vma and flags & C.MREMAP_FIXED and old_size == new_size:
                    return self._move_multi(old_addr, old_size, new_addr, flags)
                raise oserror(EFAULT, "mremap", "old range not inside one mapping")
            early, late = [], []
            if flags & C.MREMAP_FIXED:
                early = self._unmap_events(new_addr, new_addr + new_size)    # uf_unmap_early
                self._unmap(new_addr, new_addr + new_size)
            if new_size < old_size:
                late = self._unmap_events(old_addr + new_size, old_addr + old_size)
                self._unmap(old_addr + new_size, old_addr + old_size)
                old_size = new_size
            if old_addr + old_size > self.vmas.find(old_addr).end:
                # vma_to_resize() after the unmaps; the events of what was
                # unmapped are still delivered (the syscall's out: path).
                return self._events(early + late, lambda: _raise(
                    oserror(EFAULT, "mremap", "old range not inside one mapping")))
            if not flags & C.MREMAP_FIXED:
                new_addr = self.vmas.free_area(new_size, self._mmap_top, C.MMAP_MIN_ADDR) \
                    if not vma.flags & VM_HUGETLB else self._aligned_area(new_size, hsize)
                if new_addr is None:
                    return self._events(early + late, lambda: _raise(
                        oserror(ENOMEM, "mremap", "no free virtual range")))
            return self._move(old_addr, old_size, new_addr, new_size, flags, early, late)
        if new_size <= old_size:
            events = []
            if new_size < old_size:
                events = self._unmap_events(old_addr + new_size, old_addr + old_size)
                self._unmap(old_addr + new_size, old_addr + old_size)
            return self._events(events, lambda: old_addr)
        if old_addr + old_size > vma.end:
            raise oserror(EFAULT, "mremap", "old range not inside one mapping")
        # Grow: in place if this is the VMA's end and the space after is free.
        grow_end = old_addr + new_size
        if old_addr + old_size == vma.end and grow_end <= C.TASK_SIZE \
                and not self.vmas.overlapping(vma.end, grow_end):
            vma.end = grow_end
            self._sync()
            return old_addr
        if not flags & C.MREMAP_MAYMOVE:
            raise oserror(ENOMEM, "mremap", "cannot grow in place")
        dst = self.vmas.free_area(new_size, self._mmap_top, C.MMAP_MIN_ADDR)
        if dst is None:
            raise oserror(ENOMEM, "mremap", "no free virtual range")
        return self._move(old_addr, old_size, dst, new_size, flags)

    def _move_multi(self, old_addr, size, new_addr, flags):
        """6.17+ remap_move(): a MREMAP_FIXED move without resize may span
        several VMAs and gaps; VMA by VMA, each part is moved to the same
        offset (its own share of the target unmapped first). A VMA that may
        not take part (userfaultfd-armed: vma_multi_allowed) fails the call
        with EFAULT: at once if it is the first and more follow, else after
        the VMAs before it have moved (the 6.18.44 host leaves them moved)."""
        parts = self.vmas.overlapping(old_addr, old_addr + size)
        spans = [(max(v.start, old_addr), min(v.end, old_addr + size)) for v in parts]
        movable = len(parts)
        for i, v in enumerate(parts):
            if v.uffd:
                movable = i
                break
        if movable == 0:
            raise oserror(EFAULT, "mremap", "a multi-VMA move starting at a userfaultfd-registered VMA")
        for s, e in spans[:movable]:
            t = new_addr + (s - old_addr)
            early = self._unmap_events(t, t + (e - s))
            self._unmap(t, t + (e - s))
            self._move(s, e - s, t, e - s, flags, early)
        if movable < len(parts):
            raise oserror(EFAULT, "mremap", "a userfaultfd-registered VMA in a multi-VMA move "
                          "(the VMAs before it were moved)")
        return new_addr

    def _move(self, old_addr, old_size, new_addr, new_size, flags, early=(), late=()):
        """move_vma(). The monitor then hears, in notify_uffd()'s order: the
        UNMAP of a FIXED destination (`early`), the REMAP, and the UNMAPs of
        a shrunk tail (`late`) and of the source left behind."""
        late = list(late)
        if not flags & C.MREMAP_DONTUNMAP:
            late += self._unmap_events(old_addr, old_addr + old_size)
        whole = self.vmas.find(old_addr)
        vs, ve = whole.start, whole.end
        (vma,) = self.vmas.isolate(old_addr, old_addr + old_size)
        moved = Vma(new_addr, new_addr + new_size, vma.flags, vma.pgoff, vma.file, vma.uffd,
                    vma.origin)
        if self._policy().soft_dirty:
            moved.flags |= VM_SOFTDIRTY           # the new range is new memory to trackers
        self.vmas.insert(moved)
        self._push_vmas()
        if vma.flags & VM_HUGETLB:
            # clear_vma_resv_huge_pages(): a private VMA moved from, what
            # stays of it too, drops its reservation map; the moved part
            # keeps it (the core leaves shared VMAs alone).
            for a, b in ((vs, old_addr), (old_addr + old_size, ve)):
                if a < b:
                    self._engine.hugetlb_clear_vma_resv(self.mm, a, b)
        self._engine.move_ptes(self.mm, old_addr, new_addr, old_size)
        if flags & C.MREMAP_DONTUNMAP:
            self._sync()                          # the old VMA stays, now empty
        else:
            self.vmas.remove(old_addr, old_addr + old_size)
            self._sync()
            self._engine.zap(self.mm, self.cpu, old_addr, old_addr + old_size, True)
        uffd = self.machine._uffds.get(moved.uffd) if moved.uffd else None
        remap = []
        if uffd is not None:
            from .uffd import UFFD_EVENT_REMAP, UFFD_FEATURE_EVENT_REMAP, UffdMsg
            if (uffd.features or 0) & UFFD_FEATURE_EVENT_REMAP:
                msg = UffdMsg(UFFD_EVENT_REMAP, from_=old_addr, to=new_addr, len=old_size)
                remap = [(uffd, msg, new_addr, new_addr + new_size)]
            else:
                # mremap_userfaultfd_prep(): without EVENT_REMAP the moved VMA is
                # unregistered; since 6.13 move_ptes() also drops the uffd-wp
                # bits and markers it carried (vma_has_uffd_without_event_remap).
                if self._policy().uffd_mremap_clear_wp:
                    self._engine.uffd_writeprotect(self.mm, new_addr, new_addr + old_size, False,
                                                   False, moved.flags & ~VM_WRITE)
                for v in self.vmas.isolate(new_addr, new_addr + new_size):
                    v.flags &= ~(VM_UFFD_MISSING | VM_UFFD_WP | VM_UFFD_MINOR)
                    v.uffd = 0
                self._sync()
        return self._events(list(early) + remap + late, lambda: new_addr)

    def _uffds_with(self, feature, start, end):
        """Contexts with `feature` registered on VMAs overlapping [start, end)."""
        seen = []
        for v in self.vmas.overlapping(start, end):
            u = self.machine._uffds.get(v.uffd) if v.uffd else None
            if u is not None and not u.released and (u.features or 0) & feature and u not in seen:
                seen.append(u)
        return seen

    def _unmap_events(self, start, end):
        """UNMAP messages owed for [start, end) (userfaultfd_unmap_prep)."""
        from .uffd import UFFD_EVENT_UNMAP, UFFD_FEATURE_EVENT_UNMAP, UffdMsg
        return [(u, UffdMsg(UFFD_EVENT_UNMAP, start=start, end=end), start, end)
                for u in self._uffds_with(UFFD_FEATURE_EVENT_UNMAP, start, end)]

    def _events(self, events, rest):
        """Deliver non-cooperative events one after another, then rest()."""
        thread = self._current()
        if thread.blocked is not None:
            # The thread that would make the call sleeps in a userfault: the
            # call (munmap, mremap, madvise) is another thread's of the
            # process, and that one waits for the monitor to read the events.
            thread = Thread(self, thread.cpu)
        for uffd, msg, s, e in reversed(events):
            rest = (lambda u, m, s_, e_, r: (lambda: _uffd.event(self.machine, thread, u, m, s_, e_, r)))(
                uffd, msg, s, e, rest)
        return thread._call(rest) if events else rest()

    def _populate(self, start, end, write, call, thread=None):
        flags = C.FOLL_MADV_POPULATE | C.FOLL_TOUCH | (C.FOLL_WRITE if write else 0)
        npages = (end - start) >> C.PAGE_SHIFT

        def finish(pfns, err):
            if err and call == "madvise":
                raise oserror(err, "madvise", "populate failed")
        self._gup_run(start, npages, flags, thread=thread, finish=finish)

    def populate(self, addr: int, length: int, write: bool = False) -> None:
        """MADV_POPULATE_READ/WRITE semantics regardless of era (batch API)."""
        addr, length = A.ulong(addr, "populate", "addr"), A.ulong(length, "populate", "length")
        self._live("populate")
        if addr & (PAGE - 1) or (length and not _page_align(length)) or addr + _page_align(length) > C.TASK_SIZE:
            raise oserror(EINVAL if addr & (PAGE - 1) else ENOMEM, "populate", "bad range")
        self._populate(addr, addr + _page_align(length), write, "madvise")

    # ---- accesses ------------------------------------------------------------

    def _current(self):
        """The thread making a call: a running service handler of this
        process, else the main thread."""
        serving = self.machine._serving
        if serving:
            for u in reversed(serving):
                if u.process is self and u.service_thread is not None:
                    return u.service_thread
        s = self._lock.sched
        if s is not None:
            me = s._me()
            if me is not None:
                return me.thread_for(self)      # a body's calls run on its own thread
        return self.main

    def _serve_fault(self, thread, ctx, address, flags):
        return _uffd.serve_in_place(self.machine, thread, ctx, address, flags)

    def _userfault(self, thread, uf, rest):
        """Delivery of a thread's userfault (mmemu.uffd); the wait is the thread's."""
        _uffd.userfault(self.machine, thread, uf, rest)

    def _read(self, addr, n, thread, kernel=False):
        # (Plain ints in range, the common case, skip the conversion calls.)
        if type(addr) is not int or not 0 <= addr <= A.U64_MASK:
            addr = A.uaddr(addr)
        if type(n) is not int or n < 0:
            n = A.size(n, "read", "length")
        if not self.alive:
            self._live("read")
        if n > _BIG_ACCESS:
            # The access faults at the first hole: never allocate beyond it.
            end = self.vmas.mapped_end(addr)
            if addr + n > end:
                self._read(addr, end - addr, thread, kernel)
                raise Sigsegv(end, C.SEGV_MAPERR)
        if thread.blocked is None:
            try:                                  # the common case: no userfault
                return self._engine.read(self.mm, thread.cpu, addr, n, kernel, thread.serve_fault)
            except UserFault as uf:
                op = partial(self._read_op, addr, n, thread, kernel)
                _uffd.userfault(self.machine, thread, uf, op)      # waits (or raises WouldBlock)
                return thread._call(op)
        return thread._call(partial(self._read_op, addr, n, thread, kernel))

    def _read_op(self, addr, n, thread, kernel):
        return self._engine.read(self.mm, thread.cpu, addr, n, kernel, thread.serve_fault)

    def _write(self, addr, data, thread, kernel=False):
        if type(addr) is not int or not 0 <= addr <= A.U64_MASK:
            addr = A.uaddr(addr)
        if not self.alive:
            self._live("write")
        done = 0
        if thread.blocked is None:
            try:                                  # the common case: no userfault
                return self._engine.write(self.mm, thread.cpu, addr, data, kernel, thread.serve_fault)
            except UserFault as uf:
                done = uf.done                    # the bytes before the fault are written
                data = bytes(data)
                op = partial(self._write_op, addr, data, thread, kernel, [done])
                _uffd.userfault(self.machine, thread, uf, op)      # waits (or raises WouldBlock)
                return thread._call(op)
        thread._call(partial(self._write_op, addr, bytes(data), thread, kernel, [done]))

    def _write_op(self, addr, data, thread, kernel, state):
        """The rest of a write from state[0] bytes on (a resumed access)."""
        try:
            self._engine.write(self.mm, thread.cpu, addr + state[0], data[state[0]:], kernel,
                               thread.serve_fault)
        except UserFault as uf:
            state[0] += uf.done          # the bytes before the fault are written
            raise

    # The hottest calls take the machine's lock themselves (one frame less
    # than serialise's wrapper).
    def read(self, addr: int, n: int) -> bytes:
        lock = self._lock
        if lock.sched is not None:
            return lock.sched.call(self, "read", Process._read_current, (addr, n), {})
        with lock:
            return self._read(addr, n, self._current())
    read.__mmemu_locked__ = True        # type: ignore[attr-defined]

    def write(self, addr: int, data: Buffer) -> None:
        lock = self._lock
        if lock.sched is not None:
            return lock.sched.call(self, "write", Process._write_current, (addr, data), {})
        with lock:
            self._write(addr, data, self._current())
    write.__mmemu_locked__ = True       # type: ignore[attr-defined]

    def _read_current(self, addr, n):
        return self._read(addr, n, self._current())

    def _write_current(self, addr, data):
        self._write(addr, data, self._current())

    def _touch(self, addr, npages, write, value, thread):
        addr, npages = A.uaddr(addr), A.size(npages, "touch", "npages")
        value = A.ulong(value, "touch", "value")
        self._live("touch")
        if npages and addr >= USER_TOP:
            raise Sigsegv(addr, C.SEGV_MAPERR)
        npages = _clamp_pages(addr, npages)     # past user space is a hole (SIGSEGV)
        if npages == 0:
            return 0
        state = [0]

        def op():
            try:
                return state[0] + self._engine.touch(self.mm, thread.cpu, addr + state[0] * PAGE,
                                                     npages - state[0], bool(write), value,
                                                     thread.serve_fault)
            except UserFault as uf:
                state[0] += uf.done
                raise
        return thread._call(op)

    # replay()'s counts: (its name, the index of the engine counter in
    # STAT_NAMES), diffed from two Engine.stat_values() snapshots.
    _REPLAY_COUNTS = tuple((name, STAT_NAMES.index(key)) for name, key in (
        ("tlb_hits", "tlb_hits"), ("tlb_misses", "tlb_misses"), ("faults", "faults"),
        ("anon_faults", "anon_faults"), ("zero_faults", "zero_faults"),
        ("wp_faults", "wp_faults"), ("file_faults", "file_faults"), ("swap_ins", "swap_in"),
        ("cow", "cow"), ("reuse", "reuse"), ("uffd_faults", "uffd_faults"),
        ("uffd_resolved_in_core", "uffd_resolved_in_core")))

    def _replay(self, thread, addrs, writes, stop_on, start=0, until=None):
        a, w = addrs, writes
        # The usual trace (C-contiguous native uint64 addresses, uint8 flags
        # or none) goes to the core as it is; anything else is checked and
        # converted first.
        if not (type(a) is np.ndarray and a.dtype is _U64 and a.ndim == 1 and a.flags.c_contiguous
                and (w is None or type(w) is np.ndarray and w.dtype is _U8 and w.shape == a.shape
                     and w.flags.c_contiguous)):
            a, w = _replay_trace(addrs, writes)
        if stop_on:
            stop_on = {stop_on} if isinstance(stop_on, str) else set(stop_on)
            if stop_on - {"userfault"}:
                raise ValueError(f"replay: stop_on takes 'userfault' only, not {sorted(stop_on - {'userfault'})}")
        if type(start) is not int or start:
            start = A.sint(start, "replay", "start")
            if not 0 <= start <= len(a):
                raise ValueError(f"replay: start {start} outside the trace of {len(a)} accesses")
        limit = (1 << 63) - 1 if until is None else min(A.ulong(until, "replay", "until"), (1 << 63) - 1)
        self._live("replay")
        eng = self.machine._engine
        before = eng.stat_values()
        state = [start, None]           # the index reached, and where a userfault stopped it

        def op():
            try:
                state[0] = eng.replay(self.mm, thread.cpu, a, w, state[0], thread.serve_fault, limit)
            except UserFault as uf:
                if not _replay_stops(uf, state, stop_on):
                    raise
        if thread.blocked is None:
            try:                        # the common case: no userfault
                state[0] = eng.replay(self.mm, thread.cpu, a, w, start, thread.serve_fault, limit)
            except UserFault as uf:
                if not _replay_stops(uf, state, stop_on):
                    _uffd.userfault(self.machine, thread, uf, op)      # waits (or raises WouldBlock)
                    thread._call(op)
        else:
            thread._call(op)
        out = eng.stat_delta(before, self._REPLAY_COUNTS)
        done = int(state[0])
        out["accesses"] = done - start
        out["end"] = done
        out["clock"] = eng.clock(thread.cpu)
        out["stopped"] = state[1]
        return out

    def touch(self, addr: int, npages: int, write: bool = False, value: int = 0,
              cpu: int | None = None) -> int:
        """Access each of npages pages once (write: store content `value`, or
        a fresh version stamp when 0), entirely in the core."""
        if cpu is not None:
            cpu = A.sint(cpu, "touch", "cpu")
            if not 0 <= cpu < self.machine.ncpus:
                raise ValueError(f"cpu {cpu} out of range 0..{self.machine.ncpus - 1}")
        thread = self._current() if cpu is None else Thread(self, cpu)
        return self._touch(addr, npages, write, value, thread)

    def _gup_run(self, addr, npages, flags, thread=None, finish=None):
        """__get_user_pages() for a syscall: (pfns, errno), or finish(pfns,
        errno) - the rest of the syscall, which a resume() after a userfault
        runs too. A userfault waits like a user access while the references
        already taken are held."""
        thread = thread or self._current()
        if addr >= USER_TOP:
            # No VMA beyond user space: the walk fails on its first page.
            pfns, err = np.zeros(0, np.int64), (ENOMEM if flags & C.FOLL_MADV_POPULATE else EFAULT)
            return finish(pfns, err) if finish else (pfns, err)
        npages = _clamp_pages(addr, npages)
        held = _HeldRefs(self.machine, flags)

        def op():
            done = held.count
            try:
                pfns, err, n = self._engine.gup(self.mm, thread.cpu, addr + done * PAGE, npages - done, flags)
            except UserFault as uf:
                held.count += uf.done
                if uf.partial is not None and len(uf.partial):
                    held.parts.append(uf.partial)
                raise
            held.count += n
            held.parts.append(pfns)
            pfns = held.done()
            return finish(pfns, err) if finish else (pfns, err)
        try:
            return thread._call(op)
        except BaseException:
            if thread.blocked is None:
                pfns = held.done()
                if len(pfns) and flags & (C.FOLL_GET | C.FOLL_PIN):
                    self._engine.put_pages(pfns, C.GUP_PIN_COUNTING_BIAS if flags & C.FOLL_PIN else 1)
            raise

    def versions(self, addr: int, npages: int) -> npt.NDArray[np.uint64]:
        """Content version per page (numpy uint64): see Engine.versions."""
        addr, npages = A.uaddr(addr), A.size(npages, "versions", "npages")
        self._live("versions")
        if addr >= USER_TOP:
            return np.zeros(min(npages, _INSPECT_ALWAYS), np.uint64)   # nothing mapped there
        return self._engine.versions(self.mm, addr, _inspect_pages(self.vmas, addr, npages))

    def userfaultfd(self, flags: int = 0) -> Uffd:
        """userfaultfd(2): O_CLOEXEC, O_NONBLOCK, UFFD_USER_MODE_ONLY (5.11)."""
        from .uffd import O_CLOEXEC, O_NONBLOCK, UFFD_USER_MODE_ONLY, Uffd
        flags = A.sint(flags, "userfaultfd", "flags")
        self._live("userfaultfd")
        allowed = O_CLOEXEC | O_NONBLOCK
        if self._policy().uffd_user_mode_only:
            allowed |= UFFD_USER_MODE_ONLY
        if flags & ~allowed:
            raise oserror(EINVAL, "userfaultfd", "unknown flags")
        u = Uffd(self, flags)
        self.uffds.append(u)
        return u

    def pwrite_from(self, fd: int, addr: int, n: int, offset: int, direct: bool = False) -> int:
        """write(2) of user memory to a file at offset. Buffered: the kernel
        copies from user memory (kernel-mode faults). O_DIRECT: it takes the
        pages with a read GUP (FOLL_GET) for the I/O."""
        fd, addr, n, offset = self._rw_args("pwrite", fd, addr, n, offset)
        self._live("pwrite")
        f = self._file(fd, "pwrite")
        if offset + n > MAX_FILE_PAGES * PAGE:
            raise oserror(EFBIG, "pwrite", "beyond the maximum file size")
        if n == 0:
            return 0
        if direct:
            first = addr & ~(PAGE - 1)
            npages = (_page_align(addr + n) - first) >> C.PAGE_SHIFT

            def finish(pfns, err):
                try:
                    if len(pfns) < npages:
                        raise oserror(err or EFAULT, "pwrite")
                    data = b"".join(self._engine.frame_read(int(x), 0, PAGE) for x in pfns)
                finally:
                    if len(pfns):
                        self._engine.put_pages(pfns, 1)
                data = data[addr - first:addr - first + n]
                return self._engine.file_pwrite(f.fid, self.cpu, offset, data)
            return self._gup_run(first, npages, C.FOLL_GET, finish=finish)
        try:
            data = self._read(addr, n, self._current(), kernel=True)
        except Sigbus:
            raise oserror(EFAULT, "pwrite", "copy_from_user faulted")
        except Sigsegv:
            raise oserror(EFAULT, "pwrite", "bad user address")
        return self._engine.file_pwrite(f.fid, self.cpu, offset, data)

    @staticmethod
    def _rw_args(call, fd, addr, n, offset):
        """pread64/pwrite64: a negative position is EINVAL before the fd is
        looked at; a count beyond SSIZE_MAX is EINVAL (rw_verify_area) and
        one beyond MAX_RW_COUNT is cut to it."""
        offset = A.loff(offset, call, "offset")
        fd = A.sint(fd, call, "fd", EBADF)
        addr, n = A.ulong(addr, call, "buf", EFAULT), A.rw_count(n, call)
        return fd, addr, n, offset

    def pread_into(self, fd: int, addr: int, n: int, offset: int) -> int:
        """read(2) from a file into user memory (copy_to_user: kernel-mode write faults)."""
        fd, addr, n, offset = self._rw_args("pread", fd, addr, n, offset)
        self._live("pread")
        f = self._file(fd, "pread")
        data = self._engine.file_pread(f.fid, self.cpu, offset, n)
        try:
            self._write(addr, data, self._current(), kernel=True)
        except (Sigbus, Sigsegv):
            raise oserror(EFAULT, "pread", "copy_to_user faulted")
        return len(data)

    def thread(self, cpu: int | None = None) -> Thread:
        self._live("clone")
        cpu = None if cpu is None else A.sint(cpu, "clone", "cpu")
        if cpu is None:
            self._next_thread_cpu = (self._next_thread_cpu + 1) % self.machine.ncpus
            cpu = self._next_thread_cpu
        if not 0 <= cpu < self.machine.ncpus:
            raise ValueError(f"cpu {cpu} out of range")
        return Thread(self, cpu)

    # ---- fork / exit ---------------------------------------------------------

    def fork(self) -> Process:
        self._live("fork")
        m = self.machine
        from .uffd import UFFD_EVENT_FORK, UFFD_FEATURE_EVENT_FORK, Uffd, UffdMsg
        child_vmas = VmaList()
        parent_flags = {}
        dup = {}                             # parent context -> child context (dup_userfaultfd)
        for v in self.vmas:
            if v.flags & VM_DONTCOPY:
                continue
            flags, ctx = v.flags, v.uffd
            # anon_vma_fork(): each child VMA gets an anon_vma of its own,
            # chained to the parent's (so not reusable by its neighbours):
            # the core does it for a VMA whose origin had one. dup_mmap: a
            # wiped VMA starts with none.
            origin = -1 if flags & VM_WIPEONFORK else v.origin
            if ctx:
                u = m._uffds[ctx]
                if not u.released and (u.features or 0) & UFFD_FEATURE_EVENT_FORK:
                    dup.setdefault(ctx, None)
                else:
                    # userfaultfd_reset_ctx(): the child VMA is not registered.
                    flags &= ~(VM_UFFD_MISSING | VM_UFFD_WP | VM_UFFD_MINOR)
                    ctx = 0
            child_vmas.insert(Vma(v.start, v.end, flags, v.pgoff, v.file, ctx, origin))
            parent_flags[v.start] = v.flags
        child_mm = self._engine.mm_new()
        child = Process(m, m._next_pid(), child_mm, self.cpu, child_vmas)
        child._mmap_top = self._mmap_top
        child.fds = dict(self.fds)                  # the fd table is duplicated
        for f in child.fds.values():
            f.nfds += 1
        for ctx in dup:
            u = m._uffds[ctx]
            dup[ctx] = Uffd(child, u.flags, features=u.features)
            child.uffds.append(dup[ctx])
        for v in child_vmas:
            if v.uffd in dup:
                v.uffd = dup[v.uffd].ctx
        child._push_vmas(src_mm=self.mm)
        anon = self._engine.vma_anon(child_mm)[0]
        wrprotected = 0
        try:
            for v, has_anon_vma in zip(child_vmas, anon):
                # vma_needs_copy(): VMAs with an anon_vma (or PFN maps, or since
                # 5.19 a uffd-wp child VMA, c56d1b62cce8) get their ptes
                # copied; the rest refault.
                if not (has_anon_vma or
                        (v.flags & VM_UFFD_WP and self._policy().uffd_wp_file)):
                    continue
                wrprotected += self._engine.fork_range(self.mm, child_mm, self.cpu, v.start, v.end,
                                                       parent_flags[v.start], v.flags)
        except BaseException:
            # dup_mmap(): flush_tlb_mm(oldmm) runs on the error path too; the
            # VMAs copied before the failure stay write-protected.
            if wrprotected:
                self._engine.flush_mm(self.mm)
            self._engine.mm_destroy(child_mm, self.cpu)
            raise
        if wrprotected:
            # Until dup_mmap's final flush_tlb_mm other CPUs still write the
            # pages fork now shares, through their writable entries (§5.4).
            sched.step(m, "dup_mmap: flush_tlb_mm, returns", self.mm)
            self._engine.flush_mm(self.mm)
        m._procs[child.pid] = child
        self.children.append(child)
        # dup_userfaultfd_complete(): fork waits until each FORK event is read.
        return self._events([(m._uffds[ctx], UffdMsg(UFFD_EVENT_FORK, ufd=dup[ctx]), 0, 0) for ctx in dup],
                            lambda: child)

    def exit(self) -> None:
        if not self.alive:
            return
        files = {v.file for v in self.vmas if v.file}
        for u in self.uffds:
            u.close()
        self._engine.mm_destroy(self.mm, self.cpu)
        self.alive = False
        self.machine._procs.pop(self.pid, None)
        for fd in list(self.fds):
            f = self.fds.pop(fd)
            f.nfds -= 1
            files.add(f.fid)
        self.machine._reap_files(files)

    # ---- GUP users -----------------------------------------------------------

    def _gup(self, addr, npages, gup_flags, call, wrap):
        self._live(call)
        if gup_flags & ~_GUP_ALLOWED:
            # is_valid_gup_args(): internal FOLL_* flags from a caller are
            # refused (with a WARN); bits no FOLL_* names are not modelled.
            raise oserror(EINVAL, call, f"gup_flags {gup_flags:#x} has internal or unknown bits")
        if gup_flags & C.FOLL_GET and gup_flags & C.FOLL_PIN:
            raise oserror(EINVAL, call, "FOLL_GET and FOLL_PIN are exclusive")
        if npages <= 0:
            raise oserror(EINVAL, call, "no pages")
        if addr >= USER_TOP:
            raise oserror(EFAULT, call, "address outside user space")
        npages = _clamp_pages(addr, npages)     # the walk stops at the first hole anyway
        def finish(pfns, err):
            if len(pfns) == 0:
                raise oserror(err or EFAULT, call)
            return wrap(pfns)
        first = addr & ~(PAGE - 1)
        if gup_flags & C.FOLL_LONGTERM and gup_flags & (C.FOLL_PIN | C.FOLL_GET) \
                and self._engine.longterm_migrates:
            finish = self._longterm(first, npages, gup_flags, call, finish)
        return self._gup_run(first, npages, gup_flags, finish=finish)

    _LONGTERM_ROUNDS = 64

    def _longterm(self, first, npages, flags, call, finish, migrate=True, rounds=0):
        """__gup_longterm_locked(): once the pages are pinned, the core's
        check_and_migrate_movable_pages() either keeps the pins or drops
        them after migrating the pages a long-term pin may not hold
        (core/zones.pxi), and the GUP runs again. Before 5.13 a failed
        migration pins again without migrating (the page stays in CMA);
        since, the call fails with ENOMEM."""
        def check(pfns, err):
            if not len(pfns) or not migrate:
                return finish(pfns, err)
            rc = self._engine.gup_longterm(self.mm, first, pfns, flags)
            if rc == 0:
                return finish(pfns, err)
            if rc < 0 and rc != -EAGAIN:
                raise oserror(-rc, call, "a page could not be migrated out of ZONE_MOVABLE / CMA")
            if rounds >= self._LONGTERM_ROUNDS:
                raise MmemuError(f"{call}: FOLL_LONGTERM migration did not settle in {rounds} rounds")
            again = self._longterm(first, npages, flags, call, finish, migrate=rc == -EAGAIN,
                                   rounds=rounds + 1)
            return self._gup_run(first, npages, flags, finish=again)
        return check

    def get_user_pages(self, addr: int, npages: int, gup_flags: int = 0) -> Pin:
        """FOLL_GET references (as get_user_pages): a Pin whose release() puts them.
        Fewer than npages pages are taken when GUP stops early, as in Linux.
        FOLL_PIN is EINVAL: only pin_user_pages may pin (is_valid_gup_args)."""
        addr, npages = A.ulong(addr, "get_user_pages", "addr", EFAULT), A.ulong(npages, "get_user_pages", "npages")
        gup_flags = A.uint(gup_flags, "get_user_pages", "gup_flags")
        if gup_flags & C.FOLL_PIN:
            self._live("get_user_pages")
            raise oserror(EINVAL, "get_user_pages", "FOLL_PIN: use pin_user_pages")
        flags = gup_flags | C.FOLL_GET | C.FOLL_TOUCH
        return self._gup(addr, npages, flags, "get_user_pages", lambda pfns: Pin(self.machine, pfns, flags))

    def pin_user_pages(self, addr: int, npages: int, gup_flags: int = 0) -> Pin:
        """FOLL_PIN references (as pin_user_pages); FOLL_LONGTERM as passed."""
        addr, npages = A.ulong(addr, "pin_user_pages", "addr", EFAULT), A.ulong(npages, "pin_user_pages", "npages")
        gup_flags = A.uint(gup_flags, "pin_user_pages", "gup_flags")
        if gup_flags & C.FOLL_GET:
            raise oserror(EINVAL, "pin_user_pages", "FOLL_GET with FOLL_PIN")
        flags = gup_flags | C.FOLL_PIN | C.FOLL_TOUCH
        return self._gup(addr, npages, flags, "pin_user_pages", lambda pfns: Pin(self.machine, pfns, flags))

    def pin_user_pages_fast(self, addr: int, npages: int, gup_flags: int = 0) -> Pin:
        """pin_user_pages_fast (internal_get_user_pages_fast): a lockless
        walk pins the pages it may use as mapped; the rest goes the slow way
        (mmap_lock for read, faults). Since 5.11 (57efa1fe5957) a walk that
        overlapped fork's write-protection (write_protect_seq odd or moved)
        unpins what it took and goes slow for everything (B17, S61)."""
        addr, npages = A.ulong(addr, "pin_user_pages_fast", "addr", EFAULT), A.ulong(npages, "pin_user_pages_fast", "npages")
        gup_flags = A.uint(gup_flags, "pin_user_pages_fast", "gup_flags")
        if gup_flags & C.FOLL_GET or gup_flags & ~_GUP_ALLOWED or npages <= 0 or addr >= USER_TOP:
            return self.pin_user_pages(addr, npages, gup_flags)     # the slow path's errors
        self._live("pin_user_pages_fast")
        flags = gup_flags | C.FOLL_PIN
        first = addr & ~(PAGE - 1)
        eng, seq_rule = self._engine, self._policy().gup_fast_seq
        seq = eng.write_protect_seq(self.mm)
        fast = np.zeros(0, np.int64)
        if not (seq_rule and seq & 1):
            fast = eng.gup_fast(self.mm, self._current().cpu, first, _clamp_pages(first, npages), flags)
            if seq_rule and len(fast) and eng.write_protect_seq(self.mm) != seq:
                eng.put_pages(fast, C.GUP_PIN_COUNTING_BIAS)    # raced with fork: unpin, go slow
                fast = np.zeros(0, np.int64)
        if len(fast) == npages:
            return Pin(self.machine, fast, flags | C.FOLL_TOUCH)
        try:
            with sched.mmap_read(self.machine, self.mm):
                rest = self.pin_user_pages(first + len(fast) * PAGE, npages - len(fast), gup_flags)
        except OSError:
            if len(fast):
                return Pin(self.machine, fast, flags | C.FOLL_TOUCH)
            raise
        pfns = np.concatenate([fast, rest.pfns])
        rest._forget()
        return Pin(self.machine, pfns, flags | C.FOLL_TOUCH)

    def vmsplice(self, addr: int, length: int) -> Pipe:
        """vmsplice(2) of user memory into a new pipe: FOLL_GET references
        (read-only GUP) that the pipe holds until read."""
        addr, length = A.ulong(addr, "vmsplice", "addr", EFAULT), A.ulong(length, "vmsplice", "length")
        self._live("vmsplice")
        if length >= 1 << 63:
            raise oserror(EINVAL, "vmsplice", "negative length")     # iov_len > SSIZE_MAX
        if length == 0:
            return Pipe(self.machine, [], 0, 0)      # Linux returns 0, any address
        if addr >= USER_TOP or length > USER_TOP - addr:
            raise oserror(EFAULT, "vmsplice", "range outside user space")
        first = addr & ~(PAGE - 1)
        npages = (_page_align(addr + length) - first) >> C.PAGE_SHIFT
        def finish(pfns, err):
            if len(pfns) == 0:
                raise oserror(err or EFAULT, "vmsplice")
            nbytes = min(length, len(pfns) * PAGE - (addr - first))
            return Pipe(self.machine, pfns, addr - first, nbytes)
        return self._gup_run(first, npages, C.FOLL_GET, finish=finish)

    def proc_mem_write(self, addr: int, data: Buffer) -> int:
        """A write through /proc/pid/mem (ptrace): FOLL_FORCE|FOLL_WRITE GUP,
        then the write into the page GUP returned."""
        addr = A.ulong(addr, "write /proc/pid/mem", "offset", 5)
        self._live("write /proc/pid/mem")
        data = bytes(data)
        done = 0
        while done < len(data):
            a = addr + done
            off = a & (PAGE - 1)
            k = min(len(data) - done, PAGE - off)
            pfns, err = self._gup_run(a - off, 1, _PROC_MEM_GUP | C.FOLL_WRITE)
            if len(pfns) == 0:
                if done:
                    return done
                raise oserror(5, "write /proc/pid/mem")      # EIO, as mem_rw returns
            self._engine.frame_write(int(pfns[0]), off, data[done:done + k])
            self._engine.put_pages(pfns, 1)
            done += k
        return done

    def proc_mem_read(self, addr: int, n: int) -> bytes:
        addr = A.ulong(addr, "read /proc/pid/mem", "offset", 5)
        n = A.size(n, "read /proc/pid/mem", "count")
        self._live("read /proc/pid/mem")
        out = []
        done = 0
        while done < n:
            a = addr + done
            off = a & (PAGE - 1)
            k = min(n - done, PAGE - off)
            pfns, err = self._gup_run(a - off, 1, _PROC_MEM_GUP)
            if len(pfns) == 0:
                if done:
                    break
                raise oserror(5, "read /proc/pid/mem")
            out.append(self._engine.frame_read(int(pfns[0]), off, k))
            self._engine.put_pages(pfns, 1)
            done += k
        return b"".join(out)

    # ---- /proc ---------------------------------------------------------------

    def pagemap(self, addr: int) -> PagemapEntry:
        raw = self.pagemap_range(addr, 1)
        return pagemap_decode(raw[0] if len(raw) else 0)

    def pagemap_range(self, addr: int, npages: int) -> npt.NDArray[np.uint64]:
        """Raw 64-bit pagemap entries (numpy uint64), as read from
        /proc/pid/pagemap; pagemap_read() stops at the end of user space."""
        addr, npages = A.ulong(addr, "pagemap", "offset"), A.size(npages, "pagemap", "npages")
        self._live("pagemap")
        if addr >= USER_TOP:
            return np.zeros(0, np.uint64)
        return self._engine.pagemap(self.mm, addr & ~(PAGE - 1), _inspect_pages(self.vmas, addr, npages))

    def pagemap_scan(self, start: int, end: int, flags: int = 0, category_mask: int = 0,
                     category_anyof_mask: int = 0, category_inverted: int = 0, return_mask: int = 0,
                     max_pages: int = 0, vec_len: int = 1 << 30
                     ) -> tuple[list[tuple[int, int, int]], int]:
        """ioctl(PAGEMAP_SCAN) on /proc/pid/pagemap (6.7+): (regions, walk_end),
        regions being (start, end, categories & return_mask) of the matching
        pages; PM_SCAN_WP_MATCHING write-protects what matched (empty slots
        become uffd-wp markers). vec_len=0 asks for no output: the whole range
        is walked (and write-protected with WP_MATCHING), max_pages is not
        counted, and walk_end is `end`. hugetlb memory goes a huge page at a
        time: with WP_MATCHING a written huge page cut by the range or by
        max_pages is left out and walk_end is its start (whatever vec_len);
        a none entry is never protected. Before the hugetlb self-deadlock
        fix, protecting a hugetlb huge page without a page table raises
        Deadlock (the ioctl never returns)."""
        from .uffd import UFFD_FEATURE_WP_ASYNC
        # struct pm_scan_arg: every field a __u64.
        start, end, flags, category_mask, category_anyof_mask, category_inverted, return_mask, \
            max_pages, vec_len = (A.ulong(v, "PAGEMAP_SCAN", n) for n, v in (
                ("start", start), ("end", end), ("flags", flags), ("category_mask", category_mask),
                ("category_anyof_mask", category_anyof_mask), ("category_inverted", category_inverted),
                ("return_mask", return_mask), ("max_pages", max_pages), ("vec_len", vec_len)))
        self._live("pagemap_scan")
        if not self._policy().uffd_features & UFFD_FEATURE_WP_ASYNC:
            raise oserror(25, "PAGEMAP_SCAN", "ioctl unknown to this kernel")      # ENOTTY
        u64 = (1 << 64) - 1
        flags, max_pages, vec_len = flags & u64, max_pages & u64, vec_len & u64
        # PAGE_IS_GUARD (bit 8) is a category from a516403787e0 on; before it the
        # mask of known categories ends at PAGE_IS_SOFT_DIRTY.
        allc = (1 << 9) - 1 if self._policy().pagemap_scan_guard else C.PAGE_IS_GUARD - 1
        # pagemap_scan_get_args (6.12): flags and masks, then start's alignment,
        # then access_ok of [start, end) (EFAULT, also when end < start). An
        # empty return_mask is allowed: matching regions come back with no
        # categories.
        if flags & ~(C.PM_SCAN_WP_MATCHING | C.PM_SCAN_CHECK_WPASYNC) \
                or (category_mask | category_anyof_mask | category_inverted | return_mask) & ~allc:
            raise oserror(EINVAL, "PAGEMAP_SCAN", "unknown flags or categories")
        if start & (PAGE - 1):
            raise oserror(EINVAL, "PAGEMAP_SCAN", "start not page aligned")
        if end < start or end > C.TASK_SIZE:
            raise oserror(EFAULT, "PAGEMAP_SCAN", "range outside user space")
        end = _page_align(end)
        max_pages = max_pages or u64
        if start == end:
            return [], start
        # The walk enters only VMAs and a hole never matches: the arrays span
        # the first to the last VMA of the range, not the range (a scan of
        # [0, TASK_SIZE) costs the mapped span). walk_end still defaults to
        # `end`.
        span = self.vmas.overlapping(start, end)
        if span:
            start = max(start, span[0].start)
        npages = (min(end, span[-1].end) - start) // PAGE if span else 0
        if npages > max(1 << 20, 4 * sum(min(v.end, end) - max(v.start, start) for v in span) // PAGE):
            raise oserror(ENOMEM, "PAGEMAP_SCAN",
                          f"a span of {npages} pages, mostly holes: the engine scans arrays of the "
                          "span; scan the mapped parts separately")
        wp_match = bool(flags & C.PM_SCAN_WP_MATCHING)

        # pagemap_scan_test_walk: which VMAs the walk enters, in address order.
        # A VMA without async uffd-wp fails CHECK_WPASYNC with EPERM when the
        # walk reaches it, and is skipped under WP_MATCHING.
        walked = np.zeros(npages, bool)
        bad = None
        for v in self.vmas.overlapping(start, end):
            u = self.machine._uffds.get(v.uffd) if v.uffd else None
            wp_allowed = bool(v.flags & VM_UFFD_WP) and u is not None \
                and bool((u.features or 0) & UFFD_FEATURE_WP_ASYNC)
            if not wp_allowed and flags & C.PM_SCAN_CHECK_WPASYNC:
                bad = v
                break
            if (not wp_allowed and wp_match) or v.flags & VM_PFNMAP:
                continue
            required = category_mask & C.PAGE_IS_WPALLOWED          # pagemap_scan_is_interesting_vma
            if ((C.PAGE_IS_WPALLOWED if wp_allowed else 0) ^ category_inverted) & required != required:
                continue
            a, b = (max(v.start, start) - start) // PAGE, (min(v.end, end) - start) // PAGE
            walked[a:b] = True

        # pagemap_scan_pmd_entry's PAGE_IS_WRITTEN fast path counts an empty
        # pte as written; its generic path does so only with the B21 fix
        # (knob pagemap_scan_none_written: 07b4377bdbe7 with 40de8160ca7f, 7.2;
        # 6.12.103, 6.18.44), which also counts a PMD hole: the engine has no
        # hole apart from empty ptes. hugetlb takes neither path.
        fast = not category_anyof_mask and not category_inverted and \
            category_mask == C.PAGE_IS_WRITTEN and return_mask == C.PAGE_IS_WRITTEN
        none_written = fast or bool(self._policy().pagemap_scan_none_written)
        cats = self._engine.pagemap_categories(self.mm, start, npages, none_written).astype(np.int64)
        # hugetlb (pagemap_scan_hugetlb_entry / pte_hole): one walk step per
        # huge page, clipped to the range; its pages carry the core's flags.
        huge = walked & ((cats & (_HUGETLB_ENTRY | _HUGETLB_HOLE)) != 0)
        units = self._scan_hugetlb_units(start, end, huge, cats) if huge.any() else []
        cats &= ~(_HUGETLB_ENTRY | _HUGETLB_HOLE)
        c = cats ^ category_inverted
        match = walked & ((c & category_mask) == category_mask)
        if category_anyof_mask:
            match &= (c & category_anyof_mask) != 0
        written = (cats & C.PAGE_IS_WRITTEN) != 0
        # pagemap_scan_hugetlb_entry's whole-page test: huge_page_size() of
        # the VMA's hstate, HPAGE_SIZE (2 MiB) before its fix.
        psize = bool(self._policy().pagemap_scan_hugetlb_psize)
        hole_wp = bool(self._policy().pagemap_scan_hugetlb_hole_wp)

        regions, walk_end = [], 0       # walk_end: pm_scan_arg's, 0 until set
        protect = np.zeros(npages, bool)        # pte-mapped pages to write-protect
        huge_wp, markers = [], []       # hugetlb entries to protect; hugetlb holes to mark
        deadlock = None
        stopped = False
        if vec_len == 0:
            # No output buffer (pagemap_scan_init_bounce_buffer leaves none):
            # pagemap_scan_output records and counts nothing, so the walk
            # never stops early. With WP_MATCHING the pmd entry's exclusive-WP
            # path protects every pte not yet protected in a populated table,
            # whatever the masks; a hole (pte_hole) only if it matches. The
            # engine cannot tell an empty pte from a hole, so an empty slot is
            # protected when it matches, any other when it is not protected.
            if wp_match:
                none_cats = self._engine.pagemap_categories(self.mm, start, npages, True).astype(np.int64)
                populated = (cats & (C.PAGE_IS_PRESENT | C.PAGE_IS_SWAPPED)) != 0
                none_written_ = (none_cats & C.PAGE_IS_WRITTEN) != 0
                protect = walked & ~huge & none_written_ & (populated | match)
                for k, n, size, hole in units:
                    if not match[k]:
                        continue
                    if hole:
                        if not hole_wp:
                            deadlock = start + k * PAGE
                            break
                        markers.append((start + k * PAGE, start + (k + n) * PAGE, size))
                    elif written[k]:
                        if n * PAGE != (size if psize else HPAGE_PMD):
                            walk_end = start + k * PAGE         # backed out, the walk goes on
                        else:
                            huge_wp.append((start + k * PAGE, size))
        else:
            # pagemap_scan_output / pagemap_scan_push_range: runs of matching
            # pages with equal returned categories become regions; the walk
            # stops at the first page that would pass max_pages or does not
            # fit in vec_len regions, and walk_end is that page (or `end`
            # when nothing more matched, as when max_pages is reached exactly).
            # A hugetlb step is one unit: under WP_MATCHING a written huge
            # page output only in part (the range or max_pages cuts it) is
            # taken back out of the regions (pagemap_scan_backout_range),
            # walk_end becomes its start and the walk goes on.
            ret = np.where(match, cats & return_mask, -1)
            steps = []
            idx = np.flatnonzero(match & ~huge)
            if len(idx):
                vals = ret[idx]
                cut = np.flatnonzero((np.diff(idx) != 1) | (np.diff(vals) != 0)) + 1
                steps = [(int(idx[a]), int(b - a), 0, False) for a, b in zip(np.r_[0, cut], np.r_[cut, len(idx)])]
            steps += [u for u in units if match[u[0]]]
            steps.sort()
            pages = 0
            for k, n, size, hole in steps:
                addr, val = start + k * PAGE, int(ret[k])
                over = pages + n > max_pages
                if over:
                    n = max_pages - pages
                merge = bool(regions) and regions[-1][1] == addr and regions[-1][2] == val
                if n <= 0 or (not merge and len(regions) == vec_len):
                    walk_end, stopped = addr, True
                    break
                if merge:
                    regions[-1][1] += n * PAGE
                else:
                    regions.append([addr, addr + n * PAGE, val])
                pages += n
                if size and not hole and wp_match and written[k] \
                        and n * PAGE != (size if psize else HPAGE_PMD):
                    if merge:
                        regions[-1][1] -= n * PAGE
                    else:
                        regions.pop()
                    pages -= n
                    walk_end = addr
                    continue
                if wp_match:
                    if hole:
                        if not hole_wp:
                            deadlock = addr
                            break
                        markers.append((addr, addr + n * PAGE, size))
                    elif size:
                        if written[k]:
                            huge_wp.append((addr, size))
                    else:
                        protect[k:k + n] = written[k:k + n]
                if over:
                    walk_end, stopped = addr + n * PAGE, True
                    break
            regions = [(a, b, v) for a, b, v in regions]
        if deadlock is not None:
            # Until the May 2026 fix (knob pagemap_scan_hugetlb_hole_wp) the
            # hugetlb hole goes to uffd_wp_range(), whose
            # hugetlb_change_protection() takes the VMA's hugetlb lock for
            # write while walk_hugetlb_range() holds it for read: the ioctl
            # never returns. What the walk protected before stays protected.
            protect[(deadlock - start) // PAGE:] = False
            self._scan_protect(start, protect, huge_wp, markers)
            raise Deadlock("PAGEMAP_SCAN write-protecting a hugetlb range without a page table "
                           "(pagemap_scan_pte_hole before its self-deadlock fix)",
                           [(f"pid {self.pid}", deadlock, "its own hugetlb VMA lock (held for read by its walk)")])
        self._scan_protect(start, protect, huge_wp, markers)
        if stopped:
            bad = None                      # the walk stopped before reaching it
        if bad is not None:
            raise oserror(EPERM, "PAGEMAP_SCAN", "a VMA without async uffd-wp")
        return regions, walk_end or end

    def _scan_hugetlb_units(self, start, end, huge, cats):
        """The walk's hugetlb steps in [start, end): (first page index, pages,
        huge page size, a hole without a table), one per huge page, clipped
        to the range (walk_hugetlb_range, hugetlb_entry_end)."""
        units = []
        for v in self.vmas.overlapping(start, end):
            if not v.flags & VM_HUGETLB:
                continue
            size = self.machine._files[v.file].hsize
            a = max(v.start, start)
            while a < min(v.end, end):
                b = min((a // size + 1) * size, v.end, end)
                k = (a - start) // PAGE
                if huge[k]:
                    units.append((k, (b - a) // PAGE, size, bool(cats[k] & _HUGETLB_HOLE)))
                a = b
        return units

    def _scan_protect(self, start, pages, huge_wp=(), markers=()):
        """PAGEMAP_SCAN's write-protect of the flagged pages (make_uffd_wp_pte,
        uffd_wp_range): empty slots get uffd-wp markers. Whole hugetlb
        entries (make_uffd_wp_huge_pte: a present one becomes uffd-wp, a
        migration entry takes the swp uffd-wp bit and keeps its kind, a
        marker stays as it is), and every huge page a hugetlb hole touches
        (pagemap_scan_hugetlb_hole_wp: a uffd-wp marker, even where the
        range cut the huge page)."""
        idx = np.flatnonzero(pages)
        runs = []
        if len(idx):
            cut = np.flatnonzero(np.diff(idx) != 1) + 1
            runs = [(start + int(idx[a]) * PAGE, start + (int(idx[b - 1]) + 1) * PAGE)
                    for a, b in zip(np.r_[0, cut], np.r_[cut, len(idx)])]
        runs += [(a // size * size, a // size * size + size) for a, size in huge_wp]
        runs += [(a // size * size, -(-b // size) * size) for a, b, size in markers]
        for s, e in sorted(runs):
            for v in self.vmas.overlapping(s, e):
                if v.flags & VM_HUGETLB:
                    self._engine.pagemap_scan_wp_huge(self.mm, max(s, v.start), min(e, v.end), v.flags)
                else:
                    self._engine.uffd_writeprotect(self.mm, max(s, v.start), min(e, v.end), True, True, v.flags,
                                                   scan=True)

    def clear_refs(self, value: int) -> None:
        """echo value > /proc/pid/clear_refs."""
        self._live("clear_refs")
        if value not in (C.CLEAR_REFS_ALL, C.CLEAR_REFS_ANON, C.CLEAR_REFS_MAPPED,
                         C.CLEAR_REFS_SOFT_DIRTY, C.CLEAR_REFS_MM_HIWATER_RSS):
            raise oserror(EINVAL, "clear_refs", f"value {value}")
        if value != C.CLEAR_REFS_SOFT_DIRTY or not self._policy().soft_dirty:
            # Referenced bits are not observable here; without
            # CONFIG_MEM_SOFT_DIRTY, clear_soft_dirty() is an empty stub.
            return
        lost = 0
        for v in self.vmas:
            v.flags &= ~VM_SOFTDIRTY
        self._push_vmas()
        flush = self._policy().clear_refs_flush
        if flush:
            self._engine.tlb_flush_pending(self.mm, 1)      # 912efa17e512: inc_tlb_flush_pending
        for v in self.vmas:
            if v.flags & VM_HUGETLB:
                continue            # the clear_refs walk has no hugetlb_entry: hugetlb is skipped
            lost += self._engine.clear_soft_dirty(self.mm, v.start, v.end, v.flags)
        if flush:
            if lost:
                sched.step(self.machine, "clear_refs: flush_tlb_mm pending", self.mm)
                self._engine.flush_mm(self.mm)      # ... flush_tlb_mm after the walk
            self._engine.tlb_flush_pending(self.mm, -1)
        elif lost:
            self._engine.mark_tlb_stale(self.mm)
        # Before 5.12 nothing flushes: the mmu_gather saw no pte recorded
        # (0758cd830494 skips an empty batch's flush), so CPUs keep writable,
        # dirty entries and write on without faulting or marking soft-dirty (B10).

    @property
    def minflt(self) -> int:
        return self._engine.mm_info(self.mm)["minflt"]

    @property
    def rss_anon(self) -> int:
        return self._engine.mm_info(self.mm)["rss_anon"] * PAGE

    @property
    def hugetlb_usage(self) -> int:
        """Bytes of hugetlb memory mapped (HugetlbPages in /proc/pid/status;
        hugetlb pages are not in RSS)."""
        return self._engine.mm_info(self.mm)["hugetlb_usage"] * PAGE

    @property
    def has_pinned(self) -> bool:
        return self._engine.mm_info(self.mm)["has_pinned"]

    def __repr__(self) -> str:
        return f"<Process pid={self.pid} mm={self.mm}{'' if self.alive else ' exited'}>"
