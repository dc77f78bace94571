"""HostProcess: memfd files, the fault and RSS counters, threads, reclaim.

What scenarios use and Linux exposes, checked on the real kernel; each test
says what a failure would mean for the oracle.
"""
import errno
import os

import pytest

from mmemu.constants import (FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, MADV_FREE, MADV_PAGEOUT,
                             MADV_REMOVE, MAP_ANONYMOUS, MAP_PRIVATE, MAP_SHARED, PAGE_SIZE,
                             PROT_READ, PROT_WRITE)
from mmemu.errors import Sigbus, Sigsegv
from mmemu.host import HostMachine, Unsupported

pytestmark = pytest.mark.host

RW = PROT_READ | PROT_WRITE
PA = MAP_PRIVATE | MAP_ANONYMOUS
PUNCH = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE


def test_memfd_calls(host):
    """The file syscalls act on the server's real memfd: a mapping sees
    pwrite, pread sees a store through the mapping, a punched hole reads
    zeros through both, and EOF is SIGBUS."""
    p = host.spawn()
    fd = p.memfd_create("t")
    p.ftruncate(fd, 2 * PAGE_SIZE)
    assert p.fstat_size(fd) == 2 * PAGE_SIZE
    assert p.pwrite(fd, b"hello", PAGE_SIZE - 2) == 5          # straddles two pages
    s = p.mmap(0, 3 * PAGE_SIZE, RW, MAP_SHARED, fd, 0)
    assert p.read(s + PAGE_SIZE - 2, 5) == b"hello"
    p.write(s + 10, b"via-map")
    assert p.pread(fd, 7, 10) == b"via-map"
    p.fallocate(fd, PUNCH, 0, PAGE_SIZE)
    assert p.read(s + PAGE_SIZE - 2, 5) == b"\0\0llo" and p.pread(fd, 7, 10) == bytes(7)
    p.madvise(s + PAGE_SIZE, PAGE_SIZE, MADV_REMOVE)
    assert p.pread(fd, 3, PAGE_SIZE) == bytes(3)
    with pytest.raises(Sigbus):
        p.read(s + 2 * PAGE_SIZE, 1)
    p.fallocate(fd, 0, 0, 3 * PAGE_SIZE)                           # allocation grows i_size
    assert p.fstat_size(fd) == 3 * PAGE_SIZE and p.read(s + 2 * PAGE_SIZE, 1) == b"\0"
    assert p.pread(fd, 4, 100 * PAGE_SIZE) == b""


def test_fds_are_inherited_and_only_the_programs(host):
    """fork duplicates the fd table (the child reads and closes the parent's
    memfd without affecting the parent); the server's own descriptors are
    not the program's: the engine's fd table has only the program's files."""
    p = host.spawn()
    fd = p.memfd_create("t")
    p.pwrite(fd, b"x", 0)
    c = p.fork()
    assert c.pread(fd, 1, 0) == b"x"
    c.close(fd)
    with pytest.raises(OSError) as e:
        c.pread(fd, 1, 0)
    assert e.value.errno == errno.EBADF
    assert p.pread(fd, 1, 0) == b"x"
    for bad in (0, 1, 2, fd + 100):
        with pytest.raises(OSError) as e:
            p.close(bad)
        assert e.value.errno == errno.EBADF
        with pytest.raises(OSError) as e:
            p.mmap(0, PAGE_SIZE, RW, MAP_SHARED, bad, 0)
        assert e.value.errno == errno.EBADF
    p.close(fd)
    with pytest.raises(OSError) as e:
        p.ftruncate(fd, 0)
    assert e.value.errno == errno.EBADF


def test_minflt_counts_the_programs_faults_exactly(host):
    """One fault per first touch and per COW, none for a re-touch, even in a
    freshly forked server whose runtime faults on every heap page it writes
    (/proc/pid/stat field 10 alone counts those too: minflt_total)."""
    p = host.spawn()
    a = p.mmap(0, 4 * PAGE_SIZE, RW, PA)
    f0, t0 = p.minflt, p.minflt_total
    p.write(a, b"x")
    assert p.minflt - f0 == 1
    assert p.minflt_total - t0 >= 1
    f0 = p.minflt
    p.write(a + 1, b"y")
    p.read(a, 1)
    assert p.minflt == f0
    c = p.fork()
    assert c.minflt == 0                      # a new task starts at 0 (copy_process)
    f0, g0 = p.minflt, c.minflt
    p.write(a, b"z")                          # COW in the parent
    c.write(a + PAGE_SIZE, b"n")              # a new page in the child
    c.read(a + 2 * PAGE_SIZE, 1)              # the zero page
    assert (p.minflt - f0, c.minflt - g0) == (1, 2)
    f0 = p.minflt
    with pytest.raises(Sigsegv):
        p.read(a + 8 * PAGE_SIZE + (1 << 30), 1)   # a failed fault is not counted
    assert p.minflt == f0


def test_minflt_counts_gup_faults(host):
    """Faults GUP takes on the program's behalf (MADV_POPULATE_WRITE,
    /proc/pid/mem) are the task's too (mm_account_fault with regs NULL)."""
    from mmemu.constants import MADV_POPULATE_WRITE
    p = host.spawn()
    a = p.mmap(0, 3 * PAGE_SIZE, RW, PA)
    f0 = p.minflt
    p.madvise(a, 2 * PAGE_SIZE, MADV_POPULATE_WRITE)
    assert p.minflt - f0 == 2
    f0 = p.minflt
    p.proc_mem_write(a + 2 * PAGE_SIZE, b"q")
    assert p.minflt - f0 == 1 and p.read(a + 2 * PAGE_SIZE, 1) == b"q"


def test_rss_anon_is_the_programs(host):
    """RssAnon of the program's mappings, in bytes: anon pages count; the zero
    page, shmem and page-cache pages do not; a private COW of a file page
    does. The runtime's heap (rss_anon_total) is left out."""
    p = host.spawn()
    assert p.rss_anon == 0
    a = p.mmap(0, 4 * PAGE_SIZE, RW, PA)
    p.write(a, b"x" * (3 * PAGE_SIZE))
    p.read(a + 3 * PAGE_SIZE, 1)
    assert p.rss_anon == 3 * PAGE_SIZE
    s = p.mmap(0, PAGE_SIZE, RW, MAP_SHARED | MAP_ANONYMOUS)
    p.write(s, b"s")
    fd = p.memfd_create("t")
    p.ftruncate(fd, PAGE_SIZE)
    v = p.mmap(0, PAGE_SIZE, RW, MAP_PRIVATE, fd, 0)
    p.read(v, 1)
    assert p.rss_anon == 3 * PAGE_SIZE
    p.write(v, b"v")
    assert p.rss_anon == 4 * PAGE_SIZE
    assert p.rss_anon_total > p.rss_anon
    c = p.fork()
    assert c.rss_anon == 4 * PAGE_SIZE        # shared with the parent, counted in both


def test_thread_accesses_share_the_mm(host):
    """A thread is another CPU on the same page tables: its stores are the
    process's, its faults raise in the caller, and fork copies only the
    calling thread."""
    p = host.spawn()
    a = p.mmap(0, 2 * PAGE_SIZE, RW, PA)
    t = p.thread(0)
    t.write(a, b"T")
    assert p.read(a, 1) == b"T" and t.read(a, 1) == b"T"
    with pytest.raises(Sigsegv) as e:
        t.read(a + 64 * PAGE_SIZE, 1)
    assert e.value.addr == a + 64 * PAGE_SIZE
    f0 = p.minflt
    p.thread().write(a + PAGE_SIZE, b"U")     # faults on another thread count too
    assert p.minflt - f0 == 1
    c = p.fork()
    assert c.read(a + PAGE_SIZE, 1) == b"U"
    with pytest.raises(ValueError):
        p.thread(host.ncpus)


def test_engine_only_calls_are_unsupported(host):
    p = host.spawn()
    a = p.mmap(0, PAGE_SIZE, RW, PA)
    for call in (lambda: p.touch(a, 1), lambda: p.versions(a, 1), lambda: p.has_pinned,
                 lambda: host.memory, lambda: host.reclaim(10)):
        with pytest.raises(Unsupported):
            call()
    assert p.pin_user_pages_fast.__func__ is not None


def test_reclaim_drops_clean_lazyfree_pages(host):
    """Machine.reclaim on the host (MADV_PAGEOUT of all program memory):
    clean MADV_FREE'd pages are dropped, a page written after MADV_FREE
    keeps its data. No swap is needed for that."""
    p = host.spawn()
    b = p.mmap(0, 3 * PAGE_SIZE, RW, PA)
    p.write(b, b"x" * (3 * PAGE_SIZE))
    p.madvise(b, 3 * PAGE_SIZE, MADV_FREE)
    p.write(b + PAGE_SIZE, b"y")
    try:
        host.reclaim()
    except Unsupported as e:               # another run has swap on: pageout is not ours
        pytest.skip(str(e))
    assert p.read(b + PAGE_SIZE, 2) == b"yx"
    assert p.read(b, 1) == b"\0" and p.read(b + 2 * PAGE_SIZE, 1) == b"\0"


def test_pageout_without_swap_keeps_anon(host):
    """Without swap, MADV_PAGEOUT cannot take anon pages: they stay mapped.
    (A dirty shmem page is unmapped and stays cached; a clean one is
    dropped: see the vs-engine cases.)"""
    from mmemu.host.swap import active_swaps
    if active_swaps():
        pytest.skip("swap is on on this host: the no-swap case cannot be observed")
    p = host.spawn()
    a = p.mmap(0, PAGE_SIZE, RW, PA)
    p.write(a, b"a")
    pfn = p.pagemap(a).pfn
    p.madvise(a, PAGE_SIZE, MADV_PAGEOUT)
    e = p.pagemap(a)
    assert e.present and e.pfn == pfn and p.read(a, 1) == b"a"


def test_pagemap_swap_entries(need):
    """With swap on, MADV_PAGEOUT writes anon pages out: pagemap bit 62 with
    swap type 0 and the slot offset (<< 5), as the engine encodes it; the
    contents come back on access."""
    need("pfns")
    from mmemu.host import swap
    reason = swap.why_no_swap()
    if reason:
        pytest.skip(reason)
    try:
        m = HostMachine(swap=1 << 20)
    except Unsupported as e:
        pytest.skip(str(e))
    with m:
        p = m.spawn()
        a = p.mmap(0, 2 * PAGE_SIZE, RW, PA)
        p.write(a, b"1" * PAGE_SIZE + b"2" * PAGE_SIZE)
        try:
            p.madvise(a, 2 * PAGE_SIZE, MADV_PAGEOUT)
        except Unsupported as e:
            pytest.skip(str(e))
        e0, e1 = p.pagemap(a), p.pagemap(a + PAGE_SIZE)
        assert e0.swapped and e1.swapped and not e0.present
        assert e0.swap_type == 0 == e1.swap_type
        assert e0.swap_offset != e1.swap_offset and 0 < e0.swap_offset < 256
        assert p.read(a, PAGE_SIZE) == b"1" * PAGE_SIZE
        assert p.read(a + PAGE_SIZE, 1) == b"2" and p.rss_anon == 2 * PAGE_SIZE


def test_server_fds_do_not_leak_into_files_of_the_child(host):
    """A descriptor number the program got from memfd_create names that file
    in a forked child too (the number is what the program language maps a
    symbolic name to)."""
    p = host.spawn()
    fd = p.memfd_create("t")
    c = p.fork()
    g = c.fork()
    g.pwrite(fd, b"g", 0)
    assert p.pread(fd, 1, 0) == b"g"
    assert os.path.exists(f"/proc/{g.pid}/fd/{fd}")


def test_file_io_through_program_memory(host):
    """write(2)/read(2) with a buffer in program memory: the kernel's
    copy_from_user / copy_to_user fault like the program would (counted as
    its faults), and an unmapped buffer is EFAULT, not a signal."""
    p = host.spawn()
    a = p.mmap(0, 4 * PAGE_SIZE, RW, PA)
    p.write(a, b"abc")
    fd = p.memfd_create("t")
    assert p.pwrite_from(fd, a, 3, 10) == 3 and p.pread(fd, 3, 10) == b"abc"
    f0 = p.minflt
    assert p.pread_into(fd, a + 2 * PAGE_SIZE, 3, 10) == 3
    assert p.minflt - f0 == 1 and p.read(a + 2 * PAGE_SIZE, 3) == b"abc"
    for call in (lambda: p.pwrite_from(fd, a + 64 * PAGE_SIZE, 1, 0),
                 lambda: p.pread_into(fd, a + 64 * PAGE_SIZE, 1, 10)):
        with pytest.raises(OSError) as e:
            call()
        assert e.value.errno == errno.EFAULT
    with pytest.raises(Unsupported):
        p.pwrite_from(fd, a, 1, 0, direct=True)
    with pytest.raises(Unsupported):
        p.userfaultfd()


def test_pagemap_scan_agrees_with_the_engine(host):
    """PAGEMAP_SCAN categories (present, zero pfn, file, swapped) and the
    max_pages / vec_len limits, on the host and on the engine alike."""
    from mmemu.constants import (PAGE_IS_FILE, PAGE_IS_PFNZERO, PAGE_IS_PRESENT,
                                 PAGE_IS_SWAPPED)
    try:
        from mmemu import Machine
    except ImportError as e:
        pytest.skip(f"the engine is not built: {e}")
    cats = PAGE_IS_PRESENT | PAGE_IS_PFNZERO | PAGE_IS_FILE | PAGE_IS_SWAPPED

    def scan(m):
        p = m.spawn()
        a = p.mmap(0, 8 * PAGE_SIZE, RW, PA)
        p.write(a, b"x")
        p.write(a + PAGE_SIZE, b"y")
        p.read(a + 3 * PAGE_SIZE, 1)
        fd = p.memfd_create("t")
        p.ftruncate(fd, PAGE_SIZE)
        s = p.mmap(a + 8 * PAGE_SIZE, PAGE_SIZE, RW, MAP_SHARED, fd, 0)
        assert s == a + 8 * PAGE_SIZE
        p.read(s, 1)
        rel = lambda rs: [(r[0] - a, r[1] - a, r[2]) for r in rs]   # noqa: E731
        full, end = p.pagemap_scan(a, a + 9 * PAGE_SIZE, return_mask=cats)
        some, end2 = p.pagemap_scan(a, a + 9 * PAGE_SIZE, category_mask=PAGE_IS_PRESENT,
                                    return_mask=cats, max_pages=1)
        few, end3 = p.pagemap_scan(a, a + 9 * PAGE_SIZE, return_mask=cats, vec_len=2)
        return rel(full), end - a, rel(some), end2 - a, rel(few), end3 - a

    got = scan(host)
    assert got[0][0] == (0, 2 * PAGE_SIZE, PAGE_IS_PRESENT)
    assert got == scan(Machine(kernel="host", seed=0))
