"""shmem files: memfd_create, shared anonymous memory, truncation and hole
punching (mm/shmem.c shmem_fallocate / shmem_setattr, mm/truncate.c).

The page cache lives in the core; this module keeps the file objects, the
per-process fd tables and the orchestration across every VMA that maps a
file (the kernel's i_mmap walk).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing_extensions import Buffer

from . import args as A
from . import sched
from . import constants as C
from .errors import EBADF, EFAULT, EINVAL, EFBIG, oserror

EOPNOTSUPP = 95
MAX_FILE_SIZE = (1 << 32) * C.PAGE_SIZE       # a frame's file index is 32 bits (mm_types.h)


class ShmemFile:
    """An inode of shmem: a page cache in the core, plus what Python tracks."""

    # One past the last page fallocate(FALLOC_FL_KEEP_SIZE) put in the cache
    # beyond EOF: truncation must drop those too (shmem_truncate_range to -1).
    prealloc_end = 0

    def __init__(self, machine, name, anon=False, shmem=True):
        self.machine = machine
        # The core's kind: 1 shmem, 2 the file of a shared anon mapping
        # (vma_is_anon_shmem: the per-size shmem_enabled applies, 6.11+), 0 hugetlbfs.
        self.fid = machine._engine.file_new((2 if anon else 1) if shmem else 0)
        self.name = name
        self.anon = anon            # backs MAP_SHARED|MAP_ANONYMOUS: no fd, dies with its VMAs
        self.nfds = 0
        self.alive = True
        machine._files[self.fid] = self

    @property
    def size(self):
        return self.machine._engine.file_info(self.fid)["size"]

    def mappers(self):
        """(process, vma) pairs mapping this file (the i_mmap tree)."""
        for p in self.machine.processes:
            for v in p.vmas:
                if v.file == self.fid:
                    yield p, v

    def unmap_range(self, first, last, even_cows, drop_markers=False):
        """unmap_mapping_range(): every VMA's ptes of indices [first, last)."""
        eng = self.machine._engine
        for p, v in list(self.mappers()):
            eng.unmap_file(p.mm, p.cpu, v.start, first, last, even_cows, drop_markers)

    def punch_hole(self, first, last):
        """shmem_fallocate(PUNCH_HOLE): unmap (private COW copies survive),
        then truncate the cache range; a folio re-faulted in between is
        unmapped again, without keeping markers, before it leaves the cache."""
        eng = self.machine._engine
        # i_private: faults on the hole wait until the punch is over
        # (shmem_falloc_wait); fault-around does not look.
        eng.file_falloc(self.fid, first, last)
        try:
            self.unmap_range(first, last, even_cows=False)
            sched.step(self.machine, "shmem_fallocate: pass 2 (truncate, DROP_MARKER)")
            # Second pass (truncate_cleanup_folio): only a folio still mapped -
            # mapped again since the first pass - is unmapped again, with
            # ZAP_FLAG_DROP_MARKER in every VMA of the file, so uffd-wp at
            # that index is lost (B23, S58).
            for index in eng.file_mapped_indices(self.fid, first, last):
                self.unmap_range(index, index + 1, even_cows=False, drop_markers=True)
            eng.file_truncate_cache(self.fid, first, last)
        finally:
            eng.file_falloc(self.fid, 0, 0)

    def truncate(self, size):
        """shmem_setattr(): shrinking zaps private COW copies past EOF too."""
        eng = self.machine._engine
        if size < self.size:
            first = (size + C.PAGE_SIZE - 1) // C.PAGE_SIZE
            last = (self.size + C.PAGE_SIZE - 1) // C.PAGE_SIZE
            self.unmap_range(first, last, even_cows=True)
            # shmem_truncate_range(newsize, -1): a shmem THP may hold pages
            # past the old EOF too, up to its 2 MiB end.
            last = -(-max(last, self.prealloc_end) // 512) * 512
            eng.file_truncate_cache(self.fid, first, last)
            self.prealloc_end = 0
        eng.file_set_size(self.fid, size)

    def maybe_destroy(self):
        if self.alive and self.nfds == 0 and not any(True for _ in self.mappers()):
            self.machine._engine.file_destroy(self.fid)
            self.alive = False
            del self.machine._files[self.fid]


# hugetlb page sizes by log2 (MAP_HUGE_* / MFD_HUGE_* size bits) -> hstate
# index of the core (0: 2 MiB, 1: 1 GiB); 0 means the default size, 2 MiB.
HSTATE_BY_LOG = {0: 0, 21: 0, 30: 1}
HSTATE_SIZE = (C.PMD_SIZE, 1 << 30)


def hugepage_counts(hugepages):
    """Machine(hugepages=)'s argument, checked: {page size: count} for the
    2 MiB and 1 GiB pages (None: no pool)."""
    import operator
    if hugepages is None:
        return {}
    if not isinstance(hugepages, dict):
        raise TypeError("hugepages must be a dict {page size: count}")
    counts = {}
    for size, n in hugepages.items():
        size, n = operator.index(size), operator.index(n)
        if size not in HSTATE_SIZE:
            raise ValueError(f"hugepages: no hugetlb page size {size} (2 MiB and 1 GiB exist)")
        if not 0 <= n <= 1 << 32:
            raise ValueError(f"hugepages: {n} pages of {size} bytes is not a count this machine can have")
        counts[size] = n
    return counts


class HugetlbFile(ShmemFile):
    """An inode of hugetlbfs (mm/hugetlb.c, fs/hugetlbfs/inode.c): a memfd
    with MFD_HUGETLB or the file behind a MAP_HUGETLB mapping. Its page
    cache holds whole huge pages from the machine's pool; reservations and
    faults are the core's (core/hugetlb.pxi)."""

    def __init__(self, machine, name, hstate, anon=False):
        super().__init__(machine, name, anon, shmem=False)
        machine._engine.file_set_hstate(self.fid, hstate)
        self.hstate = hstate
        self.hsize = HSTATE_SIZE[hstate]

    @staticmethod
    def size_of(hstate):
        return HSTATE_SIZE[hstate]

    @staticmethod
    def hstate_of(size):
        return HSTATE_SIZE.index(size)

    def _zap_indices(self, first, last):
        """hugetlb_vmdelete_list(): every mapping - shared or private, COW
        copies included - of huge pages [first, last) goes."""
        per = self.hsize // C.PAGE_SIZE
        for p, v in list(self.mappers()):
            v0 = v.pgoff // per
            n = (v.end - v.start) // self.hsize
            a, b = max(first, v0), min(last, v0 + n)
            if a < b:
                p._engine.zap(p.mm, p.cpu, v.start + (a - v0) * self.hsize, v.start + (b - v0) * self.hsize)

    def punch_hole(self, first, last):
        """hugetlbfs_punch_hole() over huge pages [first, last): unmapped
        everywhere, then out of the cache, reservations with them."""
        per = self.hsize // C.PAGE_SIZE
        self._zap_indices(first, last)
        self.machine._engine.file_truncate_cache(self.fid, first * per, last * per)

    def truncate(self, size):
        """hugetlb_vmtruncate(): size in whole huge pages (the caller checked)."""
        per = self.hsize // C.PAGE_SIZE
        eng = self.machine._engine
        if size < self.size:
            first = size // self.hsize
            self._zap_indices(first, 1 << 40)
            eng.file_truncate_cache(self.fid, first * per, (self.size // self.hsize + 1) * per)
        eng.file_set_size(self.fid, size)


class FileOps:
    """The file syscalls of a Process (mixed into Process)."""

    def _file(self, fd, call):
        f = self.fds.get(fd)
        if f is None:
            raise oserror(EBADF, call, f"fd {fd} is not open")
        return f

    def _new_fd(self, f):
        # The lowest free descriptor (alloc_fd); the hint keeps a long run of
        # opens linear instead of rescanning the table each time.
        fd = max(3, getattr(self, "_fd_hint", 3))
        while fd in self.fds:
            fd += 1
        self._fd_hint = fd + 1
        self.fds[fd] = f
        f.nfds += 1
        return fd

    def memfd_create(self, name: str, flags: int = 0) -> int:
        """memfd_create(2): a new shmem file, opened read-write."""
        if name is None:
            raise oserror(EFAULT, "memfd_create", "name is NULL")
        if isinstance(name, (bytes, bytearray)):
            name = bytes(name).decode(errors="surrogateescape")
        if not isinstance(name, str):
            raise TypeError(f"memfd_create: name must be str or bytes, not {type(name).__name__}")
        flags = A.uint(flags, "memfd_create", "flags")
        self._live("memfd_create")
        known = C.MFD_CLOEXEC | C.MFD_ALLOW_SEALING | C.MFD_HUGETLB
        if self._policy().memfd_noexec:          # 105ff5339f49 (6.3)
            known |= C.MFD_NOEXEC_SEAL | C.MFD_EXEC
        if flags & C.MFD_HUGETLB:
            # memfd_create: with MFD_HUGETLB the page-size bits (MFD_HUGE_*) are valid too.
            known |= C.MFD_HUGE_MASK << C.MFD_HUGE_SHIFT
        if flags & ~known:
            raise oserror(EINVAL, "memfd_create", "unknown flags")
        hstate = None
        if flags & C.MFD_HUGETLB:
            # memfd_create() -> hugetlb_file_setup(): the size bits name an
            # hstate the kernel has, else EINVAL (ENODEV inside, turned EINVAL).
            hstate = HSTATE_BY_LOG.get((flags >> C.MFD_HUGE_SHIFT) & C.MFD_HUGE_MASK)
            if hstate is None:
                raise oserror(EINVAL, "memfd_create", "no hugetlb page size of those size bits")
        if "\0" in name:
            name = name[:name.index("\0")]        # strncpy_from_user stops at the NUL
        if len(name.encode(errors="surrogateescape")) > 249:
            raise oserror(EINVAL, "memfd_create", "name too long")
        if hstate is not None:
            return self._new_fd(HugetlbFile(self.machine, "memfd:" + name, hstate))
        return self._new_fd(ShmemFile(self.machine, name))

    def close(self, fd: int) -> None:
        fd = A.sint(fd, "close", "fd", EBADF)
        self._live("close")
        f = self._file(fd, "close")
        del self.fds[fd]
        self._fd_hint = min(getattr(self, "_fd_hint", 3), fd)
        f.nfds -= 1
        f.maybe_destroy()

    def ftruncate(self, fd: int, length: int) -> None:
        fd, length = A.sint(fd, "ftruncate", "fd", EBADF), A.ulong(length, "ftruncate", "length")
        length = length - (1 << 64) if length >= 1 << 63 else length      # loff_t
        self._live("ftruncate")
        f = self._file(fd, "ftruncate")
        if length < 0:
            raise oserror(EINVAL, "ftruncate", "negative length")
        if length > MAX_FILE_SIZE:
            raise oserror(EFBIG, "ftruncate", "file too large")
        if isinstance(f, HugetlbFile) and length % f.hsize:
            raise oserror(EINVAL, "ftruncate", "hugetlbfs sizes are whole huge pages")
        f.truncate(length)

    def fallocate(self, fd: int, mode: int, offset: int, length: int) -> None:
        """fallocate(2) on shmem: allocation, or PUNCH_HOLE|KEEP_SIZE."""
        fd, mode = A.sint(fd, "fallocate", "fd", EBADF), A.sint(mode, "fallocate", "mode")
        offset, length = A.ulong(offset, "fallocate", "offset"), A.ulong(length, "fallocate", "length")
        offset = offset - (1 << 64) if offset >= 1 << 63 else offset         # loff_t
        length = length - (1 << 64) if length >= 1 << 63 else length
        self._live("fallocate")
        f = self._file(fd, "fallocate")
        if offset < 0 or length <= 0:
            raise oserror(EINVAL, "fallocate", "bad offset or length")
        if offset + length > MAX_FILE_SIZE:
            raise oserror(EFBIG, "fallocate", "range too large")
        if isinstance(f, HugetlbFile):
            return self._hugetlb_fallocate(f, mode, offset, length)
        if mode & C.FALLOC_FL_PUNCH_HOLE:
            if not mode & C.FALLOC_FL_KEEP_SIZE or mode & ~(C.FALLOC_FL_PUNCH_HOLE | C.FALLOC_FL_KEEP_SIZE):
                raise oserror(EOPNOTSUPP, "fallocate", "PUNCH_HOLE needs KEEP_SIZE alone")
            # Whole pages only; partial pages at the edges are zeroed in place.
            first = (offset + C.PAGE_SIZE - 1) // C.PAGE_SIZE
            last = (offset + length) // C.PAGE_SIZE
            eng = self.machine._engine
            head_end = min(first * C.PAGE_SIZE, offset + length)
            if offset < head_end:
                self._zero_file_range(f, offset, head_end)
            tail_start = max(last * C.PAGE_SIZE, head_end)
            if tail_start < offset + length:
                self._zero_file_range(f, tail_start, offset + length)
            if first < last:
                f.punch_hole(first, last)
            elif offset + length < C.PAGE_SIZE:
                # shmem_fallocate(): unmap_end = round_down(off + len) - 1 is -1
                # here, and (u64)-1 > unmap_start, so unmap_mapping_range()
                # gets a hole length <= 0, meaning "to EOF" (host-checked).
                f.unmap_range(first, (f.size + C.PAGE_SIZE - 1) // C.PAGE_SIZE + 1, even_cows=False)
            return
        if mode & ~C.FALLOC_FL_KEEP_SIZE:
            raise oserror(EOPNOTSUPP, "fallocate", f"mode {mode:#x}")
        # Preallocation: every page of the range enters the cache (new ones
        # dirty, not uptodate), past EOF too with KEEP_SIZE (shmem_fallocate).
        eng = self.machine._engine
        size = f.size
        first = offset // C.PAGE_SIZE
        last = (offset + length + C.PAGE_SIZE - 1) // C.PAGE_SIZE
        if not mode & C.FALLOC_FL_KEEP_SIZE and offset + length > size:
            eng.file_set_size(f.fid, offset + length)
        elif last > (size + C.PAGE_SIZE - 1) // C.PAGE_SIZE:
            f.prealloc_end = max(f.prealloc_end, last)
        eng.file_fallocate(f.fid, self.cpu, first, last)

    def _hugetlb_fallocate(self, f, mode, offset, length):
        """hugetlbfs_fallocate(): preallocation, or PUNCH_HOLE|KEEP_SIZE
        (hugetlbfs_punch_hole) dropping the whole huge pages inside the range;
        the bytes it covers of a partial huge page at either edge are zeroed
        in the page cache (hugetlbfs_zero_partial_page, 68d32527d340 5.19;
        before, they stayed)."""
        if mode & ~(C.FALLOC_FL_KEEP_SIZE | C.FALLOC_FL_PUNCH_HOLE):
            raise oserror(EOPNOTSUPP, "fallocate", f"mode {mode:#x}")
        if not mode & C.FALLOC_FL_PUNCH_HOLE:
            # Preallocation: every huge page the range touches enters the
            # cache, reserved ones from their reservation; then i_size grows
            # unless KEEP_SIZE. ENOSPC part way keeps the pages added and the size.
            first, last = offset // f.hsize, -(-(offset + length) // f.hsize)
            self.machine._engine.hugetlb_fallocate(f.fid, first, last)
            if not mode & C.FALLOC_FL_KEEP_SIZE and offset + length > f.size:
                self.machine._engine.file_set_size(f.fid, offset + length)
            return
        if mode != C.FALLOC_FL_PUNCH_HOLE | C.FALLOC_FL_KEEP_SIZE:
            raise oserror(EOPNOTSUPP, "fallocate", "PUNCH_HOLE needs KEEP_SIZE")
        first = -(-offset // f.hsize)
        last = (offset + length) // f.hsize
        end = offset + length
        if self._policy().hugetlb_punch_zero_partial:
            if offset < first * f.hsize:
                self._zero_file_range(f, offset, min(end, first * f.hsize))
            if end > last * f.hsize and end > first * f.hsize:
                self._zero_file_range(f, last * f.hsize, end)
        if first < last:
            f.punch_hole(first, last)

    def _zero_file_range(self, f, start, end):
        # Only bytes below EOF that are in the cache change (a hole reads zero).
        end = min(end, f.size)
        if start < end and any(self.machine._engine.file_pread(f.fid, self.cpu, start, end - start)):
            self.machine._engine.file_pwrite(f.fid, self.cpu, start, bytes(end - start))

    def pread(self, fd: int, n: int, offset: int) -> bytes:
        offset = A.loff(offset, "pread", "offset")
        fd, n = A.sint(fd, "pread", "fd", EBADF), A.rw_count(n, "pread")
        self._live("pread")
        f = self._file(fd, "pread")
        if offset < 0 or n < 0:
            raise oserror(EINVAL, "pread", "negative offset or count")
        return self.machine._engine.file_pread(f.fid, self.cpu, offset, n)

    def pwrite(self, fd: int, data: Buffer, offset: int) -> int:
        offset = A.loff(offset, "pwrite", "offset")
        fd = A.sint(fd, "pwrite", "fd", EBADF)
        data = bytes(data)
        self._live("pwrite")
        f = self._file(fd, "pwrite")
        if offset < 0:
            raise oserror(EINVAL, "pwrite", "negative offset")
        if len(data) > A.MAX_RW_COUNT:
            data = data[:A.MAX_RW_COUNT]           # rw_verify_area cuts the count
        if offset + len(data) > MAX_FILE_SIZE:
            raise oserror(EFBIG, "pwrite", "beyond the maximum file size")
        if isinstance(f, HugetlbFile):
            # hugetlbfs has no write_iter: vfs_write() refuses the file.
            raise oserror(EINVAL, "pwrite", "hugetlbfs files cannot be written with write(2)")
        return self.machine._engine.file_pwrite(f.fid, self.cpu, offset, bytes(data))

    def fstat_size(self, fd: int) -> int:
        fd = A.sint(fd, "fstat", "fd", EBADF)
        return self._file(fd, "fstat").size
