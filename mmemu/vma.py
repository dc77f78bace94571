"""VMAs: the Python side decides the layout (split, merge, placement) and
hands the core a sorted table after each change (Engine.set_vmas). What
faults change on a VMA (its anon_vma) lives only in the core's table: each
Vma here names the core entry it descends from (`origin`), so a relayout
carries the core's state over without reading it back."""
from dataclasses import dataclass

import numpy as np

# Linux VM_* values (include/linux/mm.h); core/mm_types.h has the same.
VM_READ = 0x00000001
VM_WRITE = 0x00000002
VM_EXEC = 0x00000004
VM_SHARED = 0x00000008
VM_MAYREAD = 0x00000010
VM_MAYWRITE = 0x00000020
VM_MAYEXEC = 0x00000040
VM_MAYSHARE = 0x00000080
VM_GROWSDOWN = 0x00000100
VM_UFFD_MISSING = 0x00000200
VM_PFNMAP = 0x00000400
VM_UFFD_WP = 0x00001000
VM_LOCKED = 0x00002000
VM_IO = 0x00004000
VM_SEQ_READ = 0x00008000
VM_RAND_READ = 0x00010000
VM_DONTCOPY = 0x00020000
VM_DONTEXPAND = 0x00040000
VM_ACCOUNT = 0x00100000
VM_NORESERVE = 0x00200000
VM_HUGETLB = 0x00400000
VM_WIPEONFORK = 0x02000000
VM_DONTDUMP = 0x04000000
VM_SOFTDIRTY = 0x08000000
VM_MIXEDMAP = 0x10000000
VM_HUGEPAGE = 0x20000000
VM_NOHUGEPAGE = 0x40000000
VM_MERGEABLE = 0x80000000
VM_UFFD_MINOR = 1 << 41
VM_ANON = 1 << 48            # emulator: no backing file
VM_ANON_VMA = 1 << 49        # emulator, core-owned: vma->anon_vma is set (Engine.vma_table shows it)
VM_RESV_UNMAPPED = 1 << 50   # emulator, core-owned: HPAGE_RESV_UNMAPPED (core/hugetlb.pxi)

VM_ACCESS_FLAGS = VM_READ | VM_WRITE | VM_EXEC
VM_SPECIAL = VM_IO | VM_DONTEXPAND | VM_PFNMAP | VM_MIXEDMAP


@dataclass
class Vma:
    start: int
    end: int
    flags: int
    pgoff: int = 0
    file: int = 0
    uffd: int = 0           # userfaultfd context id (vma->vm_userfaultfd_ctx)
    origin: int = -1        # index of the core's VMA this one descends from (-1: new)

    def split(self, at):
        """Split at `at`; self keeps [start, at), the new VMA gets [at, end)."""
        right = Vma(at, self.end, self.flags, self.pgoff + ((at - self.start) >> 12), self.file,
                    self.uffd, self.origin)   # both halves share the anon_vma
        self.end = at
        return right

    def mergeable_with(self, nxt, anon):
        # vma_merge(): adjacent, same flags (soft-dirty does not matter),
        # anonymous, or the same file at contiguous offsets; two different
        # anon_vmas never merge. A NULL one merges with the other's unless
        # that VMA was cloned by fork (is_mergeable_anon_vma: its chain is
        # not singular, 965f55dea0e3; vma_had_uncowed_parents in 6.16+,
        # 879bca0a2c4f). anon: the core's (ids, chain singular) by origin.
        if self.end != nxt.start or (self.flags & ~VM_SOFTDIRTY) != (nxt.flags & ~VM_SOFTDIRTY):
            return False
        if self.flags & VM_SPECIAL:
            return False                # vma_merge() never merges VM_SPECIAL (hugetlb has DONTEXPAND)
        if self.file != nxt.file or self.uffd != nxt.uffd:
            return False
        a, b = anon_of(self, anon), anon_of(nxt, anon)
        if a and b and a != b:
            return False
        if bool(a) != bool(b) and not anon[1][(self if a else nxt).origin]:
            return False
        return self.file == 0 or self.pgoff + ((self.end - self.start) >> 12) == nxt.pgoff


def anon_of(vma, anon):
    return int(anon[0][vma.origin]) if vma.origin >= 0 else 0


class VmaList:
    """Sorted, non-overlapping VMAs of one mm."""

    def __init__(self, vmas=()):
        self.vmas = list(vmas)

    def __iter__(self):
        return iter(self.vmas)

    def __len__(self):
        return len(self.vmas)

    def find(self, addr):
        for v in self.vmas:
            if v.start <= addr < v.end:
                return v
            if v.start > addr:
                return None
        return None

    def overlapping(self, start, end):
        return [v for v in self.vmas if v.start < end and v.end > start]

    def isolate(self, start, end):
        """Split VMAs at start and end; return those inside [start, end)."""
        out = []
        new = []
        for v in self.vmas:
            if v.end <= start or v.start >= end:
                new.append(v)
                continue
            if v.start < start:
                right = v.split(start)
                new.append(v)
                v = right
            if v.end > end:
                right = v.split(end)
                new.append(v)
                new.append(right)
                out.append(v)
                continue
            new.append(v)
            out.append(v)
        self.vmas = new
        return out

    def remove(self, start, end):
        inside = self.isolate(start, end)
        self.vmas = [v for v in self.vmas if v not in inside]
        return inside

    def insert(self, vma):
        self.vmas.append(vma)
        self.vmas.sort(key=lambda v: v.start)

    def merge(self, anon):
        """vma_merge() over the whole list; anon: the core's anon_vma ids by
        origin (Engine.vma_anon). A merged VMA keeps whichever anon_vma its
        parts had."""
        out = []
        for v in self.vmas:
            if out and out[-1].mergeable_with(v, anon):
                out[-1].end = v.end
                out[-1].flags |= v.flags & VM_SOFTDIRTY
                if not anon_of(out[-1], anon):
                    out[-1].origin = v.origin
            else:
                out.append(v)
        self.vmas = out

    def holes(self, start, end):
        """Parts of [start, end) covered by no VMA."""
        holes, cur = [], start
        for v in self.vmas:
            if v.end <= cur:
                continue
            if v.start >= end:
                break
            if v.start > cur:
                holes.append((cur, v.start))
            cur = max(cur, v.end)
        if cur < end:
            holes.append((cur, end))
        return holes

    def mapped_end(self, addr):
        """End of the run of VMAs that maps addr without a hole (addr if unmapped)."""
        end = addr
        v = self.find(addr)
        while v is not None:
            end = v.end
            v = self.find(end)
        return end

    def free_area(self, length, top, bottom):
        """Highest gap of `length` below `top` (unmapped_area_topdown)."""
        ceiling = top
        for v in reversed(self.vmas):
            if v.start >= ceiling:
                continue
            if v.end <= ceiling and ceiling - v.end >= length:
                return ceiling - length
            ceiling = min(ceiling, v.start)
        if ceiling - bottom >= length:
            return ceiling - length
        return None

    def arrays(self):
        n = len(self.vmas)
        starts = np.fromiter((v.start for v in self.vmas), np.uint64, n)
        ends = np.fromiter((v.end for v in self.vmas), np.uint64, n)
        flags = np.fromiter((v.flags for v in self.vmas), np.uint64, n)
        pgoffs = np.fromiter((v.pgoff for v in self.vmas), np.uint64, n)
        files = np.fromiter((v.file for v in self.vmas), np.int32, n)
        return starts, ends, flags, pgoffs, files

    def copy(self):
        return VmaList(Vma(v.start, v.end, v.flags, v.pgoff, v.file, v.uffd, v.origin)
                       for v in self.vmas)

    def uffd_array(self):
        return np.fromiter((v.uffd for v in self.vmas), np.int32, len(self.vmas))

    def origin_array(self):
        return np.fromiter((v.origin for v in self.vmas), np.int32, len(self.vmas))

    def renumber(self):
        """After the core took this layout: each VMA is its own origin."""
        for i, v in enumerate(self.vmas):
            v.origin = i
