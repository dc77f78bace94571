"""Process and Thread: the Linux user API over one mm.

Each call validates its arguments the way the syscall does (same errno),
updates the VMA layout, then makes one core call for the page-level work.
"""
from collections import namedtuple

import numpy as np

from . import constants as C
from .errors import (EACCES, EBADF, EEXIST, EFAULT, EINVAL, ENOMEM, EOVERFLOW, EPERM, ESRCH,
                     oserror)
from .gup import Pin, Pipe
from .shmem import FileOps, ShmemFile
from .vma import (VM_ACCESS_FLAGS, VM_ANON, VM_DONTCOPY, VM_GROWSDOWN, VM_EXEC, VM_HUGEPAGE, VM_IO,
                  VM_LOCKED, VM_MAYEXEC, VM_MAYREAD, VM_MAYSHARE, VM_MAYWRITE, VM_MERGEABLE,
                  VM_NOHUGEPAGE, VM_PFNMAP, VM_READ, VM_SHARED, VM_SOFTDIRTY, VM_WIPEONFORK,
                  VM_WRITE, VM_DONTDUMP, VM_SEQ_READ, VM_RAND_READ, VM_ANON_VMA, Vma, VmaList)

PAGE = C.PAGE_SIZE
MAX_MAP_COUNT = 65530          # vm.max_map_count default

PagemapEntry = namedtuple(
    "PagemapEntry", "present swapped file_shared exclusive soft_dirty uffd_wp guard pfn raw")


def pagemap_decode(raw):
    raw = int(raw)
    present = bool(raw & C.PM_PRESENT)
    return PagemapEntry(
        present=present, swapped=bool(raw & C.PM_SWAP), file_shared=bool(raw & C.PM_FILE),
        exclusive=bool(raw & C.PM_MMAP_EXCLUSIVE), soft_dirty=bool(raw & C.PM_SOFT_DIRTY),
        uffd_wp=bool(raw & C.PM_UFFD_WP), guard=bool(raw & C.PM_GUARD_REGION),
        pfn=(raw & C.PM_PFRAME_MASK) if present else None, raw=raw)


def _page_align(n):
    return (n + PAGE - 1) & ~(PAGE - 1)


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
               C.MADV_COLLAPSE, C.MADV_GUARD_INSTALL, C.MADV_GUARD_REMOVE}

# Advice the engine does not model yet: Linux accepts it, so refusing with an
# errno would lie. What brings each one is named.
_MADV_LATER = {
    C.MADV_COLLAPSE: "THP modelling",
    C.MADV_GUARD_INSTALL: "guard regions (E7)",
    C.MADV_GUARD_REMOVE: "guard regions (E7)",
}


class Thread:
    """A thread of a process, running on one CPU (and that CPU's TLB)."""

    def __init__(self, process, cpu):
        self.process = process
        self.cpu = cpu

    def read(self, addr, n):
        return self.process._read(addr, n, self.cpu)

    def write(self, addr, data):
        self.process._write(addr, data, self.cpu)

    def touch(self, addr, npages, write=False, value=0):
        return self.process.touch(addr, npages, write, value, cpu=self.cpu)


class Process(FileOps):
    """One process (one mm) of a Machine."""

    def __init__(self, machine, pid, mm, cpu, vmas=None):
        self.machine = machine
        self.pid = pid
        self.mm = mm
        self.cpu = cpu
        self.vmas = vmas if vmas is not None else VmaList()
        self.alive = True
        self.children = []
        self.fds = {}
        self._mmap_top = machine._mmap_base
        self._next_thread_cpu = cpu

    # ---- helpers -------------------------------------------------------------

    @property
    def _engine(self):
        return self.machine._engine

    def _live(self, call):
        if not self.alive:
            raise oserror(ESRCH, call, f"process {self.pid} has exited")

    def _pull(self):
        """Read back the flags the core sets on VMAs (anon_vma) before the
        layout changes; the core's table has the Python list's order."""
        flags = self._engine.vma_flags(self.mm)
        for v, f in zip(self.vmas, flags):
            v.flags = int(f)

    def _sync(self):
        self.vmas.merge()
        self._engine.set_vmas(self.mm, *self.vmas.arrays())

    def _policy(self):
        return self.machine.policy

    # ---- mmap / munmap / mprotect / madvise ----------------------------------

    def mmap(self, addr, length, prot, flags, fd=-1, offset=0):
        self._live("mmap")
        self._pull()
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
            if (offset >> C.PAGE_SHIFT) + (length >> C.PAGE_SHIFT) > (1 << 35):
                raise oserror(EOVERFLOW, "mmap", "offset beyond the page cache index range")
        if flags & C.MAP_HUGETLB:
            raise NotImplementedError("hugetlb mappings are not modelled yet")
        fixed = flags & (C.MAP_FIXED | C.MAP_FIXED_NOREPLACE)
        if fixed:
            if addr & (PAGE - 1):
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
            if hint >= C.MMAP_MIN_ADDR and hint + length <= C.TASK_SIZE \
                    and not self.vmas.overlapping(hint, hint + length):
                start = hint
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
        if len(self.vmas) + 2 > MAX_MAP_COUNT:
            raise oserror(ENOMEM, "mmap", "vm.max_map_count reached")
        if fixed:
            self._unmap(start, start + length)
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
        return start

    def _unmap(self, start, end):
        removed = self.vmas.remove(start, end)
        if removed:
            self._sync()
            self._engine.zap(self.mm, self.cpu, start, end, True)
            self.machine._reap_files({v.file for v in removed if v.file})

    def munmap(self, addr, length):
        self._live("munmap")
        self._pull()
        if addr & (PAGE - 1) or length == 0:
            raise oserror(EINVAL, "munmap", "misaligned address or zero length")
        length = _page_align(length)
        if length == 0 or addr + length > C.TASK_SIZE:
            raise oserror(EINVAL, "munmap", "range beyond TASK_SIZE")
        self._unmap(addr, addr + length)

    def mprotect(self, addr, length, prot):
        self._live("mprotect")
        self._pull()
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
        # do_mprotect_pkey walks VMAs in order and stops at the first hole:
        # the VMAs before it keep their new protection, as on Linux.
        cur = addr
        error = None
        for vma in self.vmas.isolate(addr, end):
            if vma.start != cur:
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
            self._engine.set_vmas(self.mm, *self.vmas.arrays())
            self._engine.change_protection(self.mm, vma.start, vma.end, newflags)
        if error is None and cur < end:
            error = oserror(ENOMEM, "mprotect", "range has a hole")
        self._sync()
        if error is not None:
            raise error

    def madvise(self, addr, length, advice):
        self._live("madvise")
        self._pull()
        pol = self._policy()
        if advice not in _MADV_KNOWN \
                or (advice in (C.MADV_POPULATE_READ, C.MADV_POPULATE_WRITE) and not pol.madv_populate) \
                or (advice == C.MADV_DONTNEED_LOCKED and not pol.madv_dontneed_locked) \
                or (advice == C.MADV_COLLAPSE and not pol.at_least("6.1")) \
                or (advice in (C.MADV_GUARD_INSTALL, C.MADV_GUARD_REMOVE) and not pol.at_least("6.13")):
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
        if advice == C.MADV_REMOVE:
            self._madv_remove(addr, end)
            if holes:
                raise oserror(ENOMEM, "madvise", "range has unmapped parts")
            return
        if advice in (C.MADV_POPULATE_READ, C.MADV_POPULATE_WRITE):
            self._populate(addr, end, advice == C.MADV_POPULATE_WRITE, "madvise")
            return
        targets = self.vmas.isolate(addr, end)
        for vma in targets:
            if advice in (C.MADV_DONTNEED, C.MADV_DONTNEED_LOCKED):
                if vma.flags & (VM_PFNMAP) or (vma.flags & VM_LOCKED and advice == C.MADV_DONTNEED):
                    self._sync()
                    raise oserror(EINVAL, "madvise", "MADV_DONTNEED on a locked or PFN mapping")
            elif advice in (C.MADV_WIPEONFORK, C.MADV_KEEPONFORK):
                if vma.file or vma.flags & VM_SHARED:
                    self._sync()
                    raise oserror(EINVAL, "madvise", "WIPEONFORK applies to private anon memory")
            elif advice == C.MADV_FREE:
                if vma.file or vma.flags & VM_SHARED:
                    self._sync()
                    raise oserror(EINVAL, "madvise", "MADV_FREE applies to private anon memory")
            elif advice in (C.MADV_PAGEOUT, C.MADV_COLD):
                if vma.flags & (VM_LOCKED | VM_PFNMAP):
                    self._sync()
                    raise oserror(EINVAL, "madvise", "PAGEOUT/COLD of a locked or PFN mapping")
            elif advice == C.MADV_DOFORK and vma.flags & VM_IO:
                self._sync()
                raise oserror(EINVAL, "madvise", "MADV_DOFORK on VM_IO")
        for vma in targets:
            if advice in (C.MADV_DONTNEED, C.MADV_DONTNEED_LOCKED):
                self._engine.zap(self.mm, self.cpu, vma.start, vma.end, False)
            elif advice == C.MADV_PAGEOUT:
                self._sync()
                self._engine.pageout(self.mm, self.cpu, vma.start, vma.end)
            elif advice == C.MADV_COLD:
                pass                            # deactivation only: nothing observable
            elif advice == C.MADV_FREE:
                self._engine.madvise_free(self.mm, self.cpu, vma.start, vma.end)
            elif advice == C.MADV_DONTFORK:
                vma.flags |= VM_DONTCOPY
            elif advice == C.MADV_DOFORK:
                vma.flags &= ~VM_DONTCOPY
            elif advice == C.MADV_WIPEONFORK:
                vma.flags |= VM_WIPEONFORK
            elif advice == C.MADV_KEEPONFORK:
                vma.flags &= ~VM_WIPEONFORK
            elif advice == C.MADV_HUGEPAGE:
                vma.flags = (vma.flags | VM_HUGEPAGE) & ~VM_NOHUGEPAGE
            elif advice == C.MADV_NOHUGEPAGE:
                vma.flags = (vma.flags | VM_NOHUGEPAGE) & ~VM_HUGEPAGE
            elif advice == C.MADV_MERGEABLE:
                vma.flags |= VM_MERGEABLE       # ksmd is not modelled: nothing merges
            elif advice == C.MADV_UNMERGEABLE:
                vma.flags &= ~VM_MERGEABLE
            elif advice == C.MADV_DONTDUMP:
                vma.flags |= VM_DONTDUMP
            elif advice == C.MADV_DODUMP:
                vma.flags &= ~VM_DONTDUMP
            elif advice == C.MADV_SEQUENTIAL:
                vma.flags = (vma.flags | VM_SEQ_READ) & ~VM_RAND_READ
            elif advice == C.MADV_RANDOM:
                vma.flags = (vma.flags | VM_RAND_READ) & ~VM_SEQ_READ
            elif advice == C.MADV_NORMAL:
                vma.flags &= ~(VM_SEQ_READ | VM_RAND_READ)
        self._sync()
        if holes:
            # madvise applies to the mapped parts and then reports the hole.
            raise oserror(ENOMEM, "madvise", "range has unmapped parts")

    def mremap(self, old_addr, old_size, new_size, flags=0, new_addr=0):
        """mremap(2): grow in place, shrink, or move (MAYMOVE / FIXED /
        DONTUNMAP) by moving ptes, never copying pages."""
        self._live("mremap")
        self._pull()
        pol = self._policy()
        known = C.MREMAP_MAYMOVE | C.MREMAP_FIXED | (C.MREMAP_DONTUNMAP if pol.at_least("5.7") else 0)
        if flags & ~known or old_addr & (PAGE - 1):
            raise oserror(EINVAL, "mremap", "bad flags or misaligned address")
        if flags & (C.MREMAP_FIXED | C.MREMAP_DONTUNMAP) and not flags & C.MREMAP_MAYMOVE:
            raise oserror(EINVAL, "mremap", "FIXED/DONTUNMAP need MAYMOVE")
        old_size, new_size = _page_align(old_size), _page_align(new_size)
        if new_size == 0:
            raise oserror(EINVAL, "mremap", "zero new size")
        if flags & C.MREMAP_DONTUNMAP and old_size != new_size:
            raise oserror(EINVAL, "mremap", "DONTUNMAP needs equal sizes")
        if flags & C.MREMAP_FIXED:
            if new_addr & (PAGE - 1) or new_addr + new_size > C.TASK_SIZE:
                raise oserror(EINVAL, "mremap", "bad new address")
            if new_addr < old_addr + old_size and old_addr < new_addr + new_size:
                raise oserror(EINVAL, "mremap", "old and new ranges overlap")
        vma = self.vmas.find(old_addr)
        if vma is None or old_addr + old_size > vma.end:
            raise oserror(EFAULT, "mremap", "old range not inside one mapping")
        if old_size == 0:
            raise oserror(EINVAL, "mremap", "duplicating a mapping (old_size 0) is not modelled")
        if flags & C.MREMAP_DONTUNMAP and (vma.file or vma.flags & VM_SHARED) and not pol.at_least("5.13"):
            raise oserror(EINVAL, "mremap", "DONTUNMAP of a non-anonymous mapping needs 5.13")
        if flags & (C.MREMAP_FIXED | C.MREMAP_DONTUNMAP):
            # mremap_to(): always a move, to new_addr or to a fresh range.
            if flags & C.MREMAP_FIXED:
                self._unmap(new_addr, new_addr + new_size)
            else:
                new_addr = self.vmas.free_area(new_size, self._mmap_top, C.MMAP_MIN_ADDR)
                if new_addr is None:
                    raise oserror(ENOMEM, "mremap", "no free virtual range")
            if new_size < old_size:
                self._unmap(old_addr + new_size, old_addr + old_size)
                old_size = new_size
            return self._move(old_addr, old_size, new_addr, new_size, flags)
        if new_size <= old_size:
            if new_size < old_size:
                self._unmap(old_addr + new_size, old_addr + old_size)
            return old_addr
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

    def _move(self, old_addr, old_size, new_addr, new_size, flags):
        (vma,) = self.vmas.isolate(old_addr, old_addr + old_size)
        moved = Vma(new_addr, new_addr + new_size, vma.flags, vma.pgoff, vma.file)
        if self._policy().soft_dirty:
            moved.flags |= VM_SOFTDIRTY           # the new range is new memory to trackers
        self.vmas.insert(moved)
        self._engine.set_vmas(self.mm, *self.vmas.arrays())
        self._engine.move_ptes(self.mm, old_addr, new_addr, old_size)
        if flags & C.MREMAP_DONTUNMAP:
            self._sync()                          # the old VMA stays, now empty
        else:
            self.vmas.remove(old_addr, old_addr + old_size)
            self._sync()
            self._engine.zap(self.mm, self.cpu, old_addr, old_addr + old_size, True)
        return new_addr

    def _madv_remove(self, start, end):
        """MADV_REMOVE: punch the hole in the file behind a shared mapping."""
        for vma in self.vmas.overlapping(start, end):
            if not vma.flags & VM_SHARED or not vma.file:
                raise oserror(EINVAL, "madvise", "MADV_REMOVE needs a shared file mapping")
            if not vma.flags & VM_WRITE:
                raise oserror(EACCES, "madvise", "MADV_REMOVE needs a writable mapping")
        for vma in self.vmas.overlapping(start, end):
            s, e = max(start, vma.start), min(end, vma.end)
            first = vma.pgoff + ((s - vma.start) >> C.PAGE_SHIFT)
            last = vma.pgoff + ((e - vma.start) >> C.PAGE_SHIFT)
            self.machine._files[vma.file].punch_hole(first, last)

    def _populate(self, start, end, write, call):
        flags = C.FOLL_MADV_POPULATE | C.FOLL_TOUCH | (C.FOLL_WRITE if write else 0)
        npages = (end - start) >> C.PAGE_SHIFT
        pfns, err = self._engine.gup(self.mm, self.cpu, start, npages, flags)
        if err and call == "madvise":
            raise oserror(err, "madvise", "populate failed")

    def populate(self, addr, length, write=False):
        """MADV_POPULATE_READ/WRITE semantics regardless of era (batch API)."""
        self._live("populate")
        self._populate(addr, addr + _page_align(length), write, "madvise")

    # ---- accesses ------------------------------------------------------------

    def _read(self, addr, n, cpu):
        self._live("read")
        if n < 0:
            raise ValueError("negative length")
        return self._engine.read(self.mm, cpu, addr, n)

    def _write(self, addr, data, cpu):
        self._live("write")
        self._engine.write(self.mm, cpu, addr, data)

    def read(self, addr, n):
        return self._read(addr, n, self.cpu)

    def write(self, addr, data):
        self._write(addr, data, self.cpu)

    def touch(self, addr, npages, write=False, value=0, cpu=None):
        """Access each of npages pages once (write: store content `value`, or
        a fresh version stamp when 0), entirely in the core."""
        self._live("touch")
        return self._engine.touch(self.mm, self.cpu if cpu is None else cpu, addr, npages,
                                  bool(write), value)

    def versions(self, addr, npages):
        """Content version per page (numpy uint64): see Engine.versions."""
        return self._engine.versions(self.mm, addr, npages)

    def thread(self, cpu=None):
        self._live("clone")
        if cpu is None:
            self._next_thread_cpu = (self._next_thread_cpu + 1) % self.machine.ncpus
            cpu = self._next_thread_cpu
        if not 0 <= cpu < self.machine.ncpus:
            raise ValueError(f"cpu {cpu} out of range")
        return Thread(self, cpu)

    # ---- fork / exit ---------------------------------------------------------

    def fork(self):
        self._live("fork")
        self._pull()
        m = self.machine
        child_vmas = VmaList()
        for v in self.vmas:
            if v.flags & VM_DONTCOPY:
                continue
            flags = v.flags
            if flags & VM_WIPEONFORK:
                flags &= ~VM_ANON_VMA        # dup_mmap: a wiped VMA starts with no anon_vma
            child_vmas.insert(Vma(v.start, v.end, flags, v.pgoff, v.file))
        child_mm = self._engine.mm_new()
        child = Process(m, m._next_pid(), child_mm, self.cpu, child_vmas)
        child._mmap_top = self._mmap_top
        child.fds = dict(self.fds)                  # the fd table is duplicated
        for f in child.fds.values():
            f.nfds += 1
        self._engine.set_vmas(child_mm, *child_vmas.arrays())
        wrprotected = 0
        try:
            for v in child_vmas:
                # vma_needs_copy(): only VMAs with an anon_vma (or PFN maps, or
                # a uffd-wp child) get their ptes copied; the rest refault.
                if not v.flags & VM_ANON_VMA:
                    continue
                wrprotected += self._engine.fork_range(self.mm, child_mm, self.cpu,
                                                       v.start, v.end, v.flags, v.flags)
        except BaseException:
            self._engine.mm_destroy(child_mm, self.cpu)
            raise
        if wrprotected:
            self._engine.flush_mm(self.mm)      # dup_mmap's final flush_tlb_mm
        m._procs[child.pid] = child
        self.children.append(child)
        return child

    def exit(self):
        if not self.alive:
            return
        files = {v.file for v in self.vmas if v.file}
        self._engine.mm_destroy(self.mm, self.cpu)
        self.alive = False
        self.machine._procs.pop(self.pid, None)
        for fd in list(self.fds):
            f = self.fds.pop(fd)
            f.nfds -= 1
            files.add(f.fid)
        self.machine._reap_files(files)

    # ---- GUP users -----------------------------------------------------------

    def _gup(self, addr, npages, gup_flags, call):
        self._live(call)
        if gup_flags & C.FOLL_GET and gup_flags & C.FOLL_PIN:
            raise oserror(EINVAL, call, "FOLL_GET and FOLL_PIN are exclusive")
        if npages <= 0:
            raise oserror(EINVAL, call, "no pages")
        pfns, err = self._engine.gup(self.mm, self.cpu, addr & ~(PAGE - 1), npages, gup_flags)
        if len(pfns) == 0:
            raise oserror(err or EFAULT, call)
        return pfns

    def get_user_pages(self, addr, npages, gup_flags=0):
        """FOLL_GET references (as get_user_pages): a Pin whose release() puts them.
        Fewer than npages pages are taken when GUP stops early, as in Linux."""
        flags = (gup_flags | C.FOLL_GET | C.FOLL_TOUCH) & ~C.FOLL_PIN
        return Pin(self.machine, self._gup(addr, npages, flags, "get_user_pages"), flags)

    def pin_user_pages(self, addr, npages, gup_flags=0):
        """FOLL_PIN references (as pin_user_pages); FOLL_LONGTERM as passed."""
        if gup_flags & C.FOLL_GET:
            raise oserror(EINVAL, "pin_user_pages", "FOLL_GET with FOLL_PIN")
        flags = gup_flags | C.FOLL_PIN | C.FOLL_TOUCH
        return Pin(self.machine, self._gup(addr, npages, flags, "pin_user_pages"), flags)

    def pin_user_pages_fast(self, addr, npages, gup_flags=0):
        """pin_user_pages_fast: the lockless walk takes only pages it may use
        as mapped; anything that needs a fault or an unshare (and, without a
        VMA, every long-term pin of a non-anon page) falls back to the slow
        path, so the outcome is the slow path's. The race it has with fork
        (B17, S61) needs the SMP scheduler."""
        return self.pin_user_pages(addr, npages, gup_flags)

    def vmsplice(self, addr, length):
        """vmsplice(2) of user memory into a new pipe: FOLL_GET references
        (read-only GUP) that the pipe holds until read."""
        self._live("vmsplice")
        if length < 0:
            raise oserror(EINVAL, "vmsplice", "negative length")
        if length == 0:
            return Pipe(self.machine, [], 0, 0)      # Linux returns 0, any address
        first = addr & ~(PAGE - 1)
        npages = (_page_align(addr + length) - first) >> C.PAGE_SHIFT
        pfns, err = self._engine.gup(self.mm, self.cpu, first, npages, C.FOLL_GET)
        if len(pfns) == 0:
            raise oserror(err or EFAULT, "vmsplice")
        nbytes = min(length, len(pfns) * PAGE - (addr - first))
        return Pipe(self.machine, pfns, addr - first, nbytes)

    def proc_mem_write(self, addr, data):
        """A write through /proc/pid/mem (ptrace): FOLL_FORCE|FOLL_WRITE GUP,
        then the write into the page GUP returned."""
        data = bytes(data)
        done = 0
        while done < len(data):
            a = addr + done
            off = a & (PAGE - 1)
            k = min(len(data) - done, PAGE - off)
            pfns, err = self._engine.gup(self.mm, self.cpu, a - off, 1,
                                         C.FOLL_FORCE | C.FOLL_WRITE | C.FOLL_GET | C.FOLL_TOUCH)
            if len(pfns) == 0:
                if done:
                    return done
                raise oserror(5, "write /proc/pid/mem")      # EIO, as mem_rw returns
            self._engine.frame_write(int(pfns[0]), off, data[done:done + k])
            self._engine.put_pages(pfns, 1)
            done += k
        return done

    def proc_mem_read(self, addr, n):
        out = []
        done = 0
        while done < n:
            a = addr + done
            off = a & (PAGE - 1)
            k = min(n - done, PAGE - off)
            pfns, err = self._engine.gup(self.mm, self.cpu, a - off, 1,
                                         C.FOLL_FORCE | C.FOLL_GET | C.FOLL_TOUCH)
            if len(pfns) == 0:
                if done:
                    break
                raise oserror(5, "read /proc/pid/mem")
            out.append(self._engine.frame_read(int(pfns[0]), off, k))
            self._engine.put_pages(pfns, 1)
            done += k
        return b"".join(out)

    # ---- /proc ---------------------------------------------------------------

    def pagemap(self, addr):
        self._live("pagemap")
        return pagemap_decode(self._engine.pagemap(self.mm, addr & ~(PAGE - 1), 1)[0])

    def pagemap_range(self, addr, npages):
        """Raw 64-bit pagemap entries (numpy uint64), as read from /proc/pid/pagemap."""
        self._live("pagemap")
        return self._engine.pagemap(self.mm, addr & ~(PAGE - 1), npages)

    def clear_refs(self, value):
        """echo value > /proc/pid/clear_refs."""
        self._live("clear_refs")
        self._pull()
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
        self._engine.set_vmas(self.mm, *self.vmas.arrays())
        for v in self.vmas:
            lost += self._engine.clear_soft_dirty(self.mm, v.start, v.end, v.flags)
        if lost:
            self._engine.flush_mm(self.mm)   # 912efa17e512: flush_tlb_mm after the walk

    @property
    def minflt(self):
        return self._engine.mm_info(self.mm)["minflt"]

    @property
    def rss_anon(self):
        return self._engine.mm_info(self.mm)["rss_anon"] * PAGE

    @property
    def has_pinned(self):
        return self._engine.mm_info(self.mm)["has_pinned"]

    def __repr__(self):
        return f"<Process pid={self.pid} mm={self.mm}{'' if self.alive else ' exited'}>"
