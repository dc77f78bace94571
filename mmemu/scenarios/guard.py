"""Guard regions: S79 (semantics.md 6.10; MADV_GUARD_INSTALL / REMOVE,
662df3e5c376, 6.13).

A guard marker is a pte marker that faults with SIGSEGV. It survives what
zaps a range without unmapping it (DONTNEED, FREE, a hole punch), is copied
by fork and moved by mremap, and only MADV_GUARD_REMOVE or munmap clear it.
File-backed and read-only mappings take guards from 6.15 (f807123d578d),
pagemap shows bit 58 from 6.15 (8e2f2aeb8b48).
"""
import errno

from .. import constants as C
from .. import uffd as U
from ..errors import Sigsegv
from . import absent, check, scenario

PAGE = C.PAGE_SIZE
RW = C.PROT_READ | C.PROT_WRITE
PRIV = C.MAP_PRIVATE | C.MAP_ANONYMOUS
ONES = b"\x01" * PAGE


def _needs_guard(policy):
    return None if policy.madv_guard else absent("MADV_GUARD_INSTALL arrives in 6.13")


def _needs_file_guard(policy):
    if not policy.madv_guard:
        return absent("MADV_GUARD_INSTALL arrives in 6.13")
    return None if policy.madv_guard_file else absent("file-backed guard regions arrive in 6.15")


def _segv(f, what):
    try:
        f()
    except Sigsegv:
        return
    check(False, f"{what}: no SIGSEGV")


def _oserror(f, err, what):
    try:
        f()
    except OSError as e:
        check(e.errno == err, f"{what}: {errno.errorcode.get(e.errno)} instead of {errno.errorcode[err]}")
        return
    check(False, f"{what}: no error")


@scenario("S79", "guard-region", "Guard regions: SIGSEGV, EFAULT, survive DONTNEED and fork",
          needs=_needs_guard)
def guard_region(m):
    """A guard faults, fails GUP, survives DONTNEED and fork, and REMOVE gives zeroes."""
    p = m.spawn()
    P = p.mmap(0, 4 * PAGE, RW, PRIV)
    p.write(P, ONES * 4)
    p.madvise(P + PAGE, PAGE, C.MADV_GUARD_INSTALL)
    _segv(lambda: p.read(P + PAGE, 1), "a read of the guard")
    _segv(lambda: p.write(P + PAGE, b"x"), "a write to the guard")
    fd = p.memfd_create("sink")
    _oserror(lambda: p.pwrite_from(fd, P + PAGE, 1, 0), errno.EFAULT, "write() from the guard")
    check(p.read(P, PAGE) == ONES and p.read(P + 2 * PAGE, PAGE) == ONES, "the pages beside the guard")
    e = p.pagemap(P + PAGE)
    check(not e.present and e.guard == bool(m.policy.pm_guard_region),
          "pagemap bit 58 (PM_GUARD_REGION) is shown from 6.15 only")
    p.madvise(P, 4 * PAGE, C.MADV_DONTNEED)
    check(p.read(P, 1) == b"\x00", "DONTNEED drops the pages")
    _segv(lambda: p.read(P + PAGE, 1), "the guard after MADV_DONTNEED")
    c = p.fork()
    _segv(lambda: c.read(P + PAGE, 1), "the child's guard (markers are always copied)")
    p.madvise(P + PAGE, PAGE, C.MADV_GUARD_REMOVE)
    check(p.read(P + PAGE, 1) == b"\x00", "after GUARD_REMOVE the page reads zero")
    _segv(lambda: c.read(P + PAGE, 1), "the child keeps its own guard")


@scenario("S79b", "guard-region-move-unmap", "Guard regions: moved by mremap, dropped by munmap, "
          "not by MADV_FREE", needs=_needs_guard)
def guard_region_move(m):
    """mremap moves a guard with its ptes; munmap and a new mapping clear it."""
    p = m.spawn()
    P = p.mmap(0, 4 * PAGE, RW, PRIV)
    p.write(P, ONES * 4)
    p.madvise(P + PAGE, PAGE, C.MADV_GUARD_INSTALL)
    p.madvise(P, 4 * PAGE, C.MADV_FREE)
    _segv(lambda: p.read(P + PAGE, 1), "the guard after MADV_FREE")
    Q = p.mmap(0, 4 * PAGE, C.PROT_READ, PRIV)
    Q = p.mremap(P, 4 * PAGE, 4 * PAGE, C.MREMAP_MAYMOVE | C.MREMAP_FIXED, Q)
    _segv(lambda: p.read(Q + PAGE, 1), "the guard moved by mremap")
    check(p.read(Q + 2 * PAGE, 1) in (b"\x00", b"\x01"), "the page beside the moved guard")
    p.munmap(Q, 4 * PAGE)
    R = p.mmap(Q, 4 * PAGE, RW, PRIV | C.MAP_FIXED)
    check(p.read(R + PAGE, 1) == b"\x00", "munmap drops the guard marker")


@scenario("S79c", "guard-region-refused", "Guard regions: refused on mlocked mappings; "
          "anonymous private only until 6.15", needs=_needs_guard)
def guard_region_refused(m):
    """INSTALL refuses a locked VMA (REMOVE does not); shared and read-only mappings wait for 6.15."""
    p = m.spawn()
    L = p.mmap(0, PAGE, RW, PRIV | C.MAP_LOCKED)
    _oserror(lambda: p.madvise(L, PAGE, C.MADV_GUARD_INSTALL), errno.EINVAL, "INSTALL on an mlocked VMA")
    p.madvise(L, PAGE, C.MADV_GUARD_REMOVE)
    S = p.mmap(0, PAGE, RW, C.MAP_SHARED | C.MAP_ANONYMOUS)
    fd = p.memfd_create("ro")
    p.ftruncate(fd, PAGE)
    R = p.mmap(0, PAGE, C.PROT_READ, C.MAP_SHARED, fd, 0)
    for addr, what in ((S, "shared anonymous"), (R, "a read-only shared file mapping")):
        if m.policy.madv_guard_file:
            p.madvise(addr, PAGE, C.MADV_GUARD_INSTALL)
            _segv(lambda: p.read(addr, 1), f"a guard in {what}")
        else:
            _oserror(lambda: p.madvise(addr, PAGE, C.MADV_GUARD_INSTALL), errno.EINVAL,
                     f"6.13-6.14: INSTALL on {what}")


@scenario("S79d", "guard-region-file", "Guard regions on shmem: a hole punch keeps them, "
          "fork copies them (6.15+)", needs=_needs_file_guard)
def guard_region_file(m):
    """A file-backed guard survives MADV_REMOVE and is copied by fork (anon_vma_prepare)."""
    p = m.spawn()
    fd = p.memfd_create("guard")
    p.ftruncate(fd, 2 * PAGE)
    F = p.mmap(0, 2 * PAGE, RW, C.MAP_SHARED, fd, 0)
    p.write(F, ONES * 2)
    p.madvise(F, PAGE, C.MADV_GUARD_INSTALL)
    _segv(lambda: p.read(F, 1), "the shmem guard")
    p.madvise(F, 2 * PAGE, C.MADV_REMOVE)
    _segv(lambda: p.read(F, 1), "the guard after a hole punch")
    check(p.read(F + PAGE, 1) == b"\x00", "the punched page reads zero")
    c = p.fork()
    _segv(lambda: c.read(F, 1), "the child's shmem guard")


@scenario("S79e", "guard-region-uffd-copy", "UFFDIO_COPY replaces a guard marker "
          "(pte_none_mostly, 6.13-6.18); ZEROPAGE does not", needs=_needs_guard)
def guard_region_uffd_copy(m):
    """A guard in a MISSING-registered range: a fault is SIGSEGV, yet UFFDIO_COPY installs over it."""
    p = m.spawn()
    B = p.mmap(0, 2 * PAGE, RW, PRIV)
    p.madvise(B, 2 * PAGE, C.MADV_GUARD_INSTALL)
    u = p.userfaultfd(0)
    u.api(0)
    u.register(B, 2 * PAGE, U.UFFDIO_REGISTER_MODE_MISSING)
    _segv(lambda: p.read(B, 1), "a fault on the guard is SIGSEGV before any userfault")
    try:
        u.zeropage(B + PAGE, PAGE)
        check(False, "UFFDIO_ZEROPAGE wants a strictly empty pte")
    except U.UffdError as e:
        check(e.errno == errno.EEXIST, "UFFDIO_ZEROPAGE over a guard: EEXIST")
    src = p.mmap(0, PAGE, RW, PRIV)
    p.write(src, b"\x07" * PAGE)
    check(u.copy(B, src, PAGE) == PAGE, "UFFDIO_COPY over the guard")
    check(p.read(B, 1) == b"\x07", "the copied page replaced the guard")
