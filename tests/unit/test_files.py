"""File syscalls, mremap and swap: errno and mechanics."""
import errno

import pytest

import mmemu
from mmemu import (FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, MADV_FREE, MADV_PAGEOUT, MADV_REMOVE,
                   MAP_ANONYMOUS, MAP_PRIVATE, MAP_SHARED, MREMAP_DONTUNMAP, MREMAP_FIXED,
                   MREMAP_MAYMOVE, PAGE_SIZE as PAGE, PROT_READ, PROT_WRITE)

RW = PROT_READ | PROT_WRITE
PRIV = MAP_PRIVATE | MAP_ANONYMOUS


@pytest.fixture
def m():
    return mmemu.Machine(memory=32 << 20, swap=8 << 20)


@pytest.fixture
def p(m):
    return m.spawn()


def err(e):
    return e.value.errno


class TestFileErrno:
    def test_bad_fd(self, p):
        for call in (lambda: p.ftruncate(42, PAGE), lambda: p.pread(42, 1, 0),
                     lambda: p.pwrite(42, b"x", 0), lambda: p.close(42),
                     lambda: p.mmap(0, PAGE, RW, MAP_SHARED, 42, 0)):
            with pytest.raises(OSError) as e:
                call()
            assert err(e) == errno.EBADF

    def test_memfd_bad_flags(self, p):
        with pytest.raises(OSError) as e:
            p.memfd_create("x", 0x80)
        assert err(e) == errno.EINVAL

    def test_ftruncate_negative(self, p):
        fd = p.memfd_create("x")
        with pytest.raises(OSError) as e:
            p.ftruncate(fd, -1)
        assert err(e) == errno.EINVAL

    def test_punch_without_keep_size(self, p):
        fd = p.memfd_create("x")
        p.ftruncate(fd, PAGE)
        with pytest.raises(OSError) as e:
            p.fallocate(fd, FALLOC_FL_PUNCH_HOLE, 0, PAGE)
        assert err(e) == errno.EOPNOTSUPP

    def test_fallocate_bad_length(self, p):
        fd = p.memfd_create("x")
        with pytest.raises(OSError) as e:
            p.fallocate(fd, 0, 0, 0)
        assert err(e) == errno.EINVAL

    def test_fallocate_extends_and_keep_size(self, p):
        fd = p.memfd_create("x")
        p.fallocate(fd, 0, 0, 3 * PAGE)
        assert p.fstat_size(fd) == 3 * PAGE
        p.fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, 8 * PAGE)
        assert p.fstat_size(fd) == 3 * PAGE

    def test_keep_size_preallocates_past_eof_and_a_second_fallocate_makes_it_uptodate(self, m, p):
        # shmem_fallocate(): KEEP_SIZE puts pages past EOF in the cache (not
        # uptodate); a later SGP_FALLOC of an existing folio clears it and
        # marks it uptodate, so fault-around maps it. Truncation drops what
        # lay past EOF. Found by `mmemu diff --programs 2000 --seed 3` (host).
        fd = p.memfd_create("x")
        p.ftruncate(fd, PAGE)
        a = p.mmap(0, 2 * PAGE, RW, MAP_SHARED, fd, 0)
        p.fallocate(fd, FALLOC_FL_KEEP_SIZE, PAGE, PAGE)
        assert p.fstat_size(fd) == PAGE
        p.fallocate(fd, 0, PAGE, PAGE)                # EOF moves over the page
        assert p.fstat_size(fd) == 2 * PAGE
        p.read(a, 1)
        assert p.pagemap(a + PAGE).present            # fault-around took it
        p.munmap(a, 2 * PAGE)
        p.fallocate(fd, FALLOC_FL_KEEP_SIZE, 2 * PAGE, 4 * PAGE)
        before = m._engine.file_info(p._file(fd, "t").fid)["nrpages"]
        p.ftruncate(fd, PAGE)
        after = m._engine.file_info(p._file(fd, "t").fid)["nrpages"]
        assert (before, after) == (6, 1)

    def test_partial_punch_zeroes_bytes(self, p):
        fd = p.memfd_create("x")
        p.pwrite(fd, b"a" * (2 * PAGE), 0)
        p.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 100, 200)
        data = p.pread(fd, 400, 0)
        assert data[:100] == b"a" * 100 and data[100:300] == bytes(200) and data[300:] == b"a" * 100

    def test_madv_remove_errno(self, p):
        # madvise_remove(), host-checked: a private file mapping is EACCES (not
        # shared), a read-only shared mapping of a writable file is allowed
        # (VM_MAYWRITE is what matters), anonymous memory is EINVAL.
        fd = p.memfd_create("x")
        p.pwrite(fd, b"data", 0)
        V = p.mmap(0, PAGE, RW, MAP_PRIVATE, fd, 0)
        with pytest.raises(OSError) as e:
            p.madvise(V, PAGE, MADV_REMOVE)
        assert err(e) == errno.EACCES
        R = p.mmap(0, PAGE, PROT_READ, MAP_SHARED, fd, 0)
        p.madvise(R, PAGE, MADV_REMOVE)
        assert p.pread(fd, 4, 0) == bytes(4)
        A = p.mmap(0, PAGE, RW, PRIV)
        with pytest.raises(OSError) as e:
            p.madvise(A, PAGE, MADV_REMOVE)
        assert err(e) == errno.EINVAL

    def test_madv_free_on_shared_is_einval(self, p):
        S = p.mmap(0, PAGE, RW, MAP_SHARED | MAP_ANONYMOUS)
        with pytest.raises(OSError) as e:
            p.madvise(S, PAGE, MADV_FREE)
        assert err(e) == errno.EINVAL

    def test_pread_past_eof_and_holes(self, p):
        fd = p.memfd_create("x")
        p.ftruncate(fd, 2 * PAGE)
        assert p.pread(fd, 10, 5 * PAGE) == b""
        assert p.pread(fd, 10, PAGE) == bytes(10)
        assert p.machine._engine.file_info(p.fds[fd].fid)["nrpages"] == 0   # no allocation


class TestFileLifetime:
    def test_file_outlives_its_fd_while_mapped(self, m, p):
        fd = p.memfd_create("x")
        p.pwrite(fd, b"keep", 0)
        S = p.mmap(0, PAGE, RW, MAP_SHARED, fd, 0)
        p.close(fd)
        assert p.read(S, 4) == b"keep"
        free = m._engine.nr_free
        p.munmap(S, PAGE)
        m._engine.lru_drain(0)
        assert m._engine.nr_free == free + 1 and not m._files   # the cache went with the last user
        m.check()

    def test_fork_shares_fds_and_shared_anon(self, m, p):
        S = p.mmap(0, PAGE, RW, MAP_SHARED | MAP_ANONYMOUS)
        fd = p.memfd_create("x")
        c = p.fork()
        c.write(S, b"child")
        c.pwrite(fd, b"via-fd", 0)
        assert p.read(S, 5) == b"child" and p.pread(fd, 6, 0) == b"via-fd"
        c.exit()
        p.exit()
        assert not m._files
        m.check()


class TestMremap:
    def test_errors(self, p):
        a = p.mmap(0, 2 * PAGE, RW, PRIV)
        cases = [((a + 1, PAGE, PAGE, 0), errno.EINVAL), ((a, PAGE, 0, 0), errno.EINVAL),
                 ((a, PAGE, PAGE, MREMAP_FIXED, a + 8 * PAGE), errno.EINVAL),
                 ((a, PAGE, 2 * PAGE, MREMAP_MAYMOVE | MREMAP_DONTUNMAP), errno.EINVAL),
                 ((a, 4 * PAGE, 5 * PAGE, 0), errno.EFAULT), ((0x20000000, PAGE, PAGE, 0), errno.EFAULT),
                 ((a, PAGE, PAGE, 0x100), errno.EINVAL)]
        for args, want in cases:
            with pytest.raises(OSError) as e:
                p.mremap(*args)
            assert err(e) == want, args
        # As on the 6.18 host: the same size is a no-op, and a shrink only
        # unmaps the tail, whatever the old range covers.
        assert p.mremap(a, 4 * PAGE, 4 * PAGE, 0) == a
        assert p.mremap(a, 4 * PAGE, PAGE, 0) == a and p.vmas.find(a + PAGE) is None

    @pytest.mark.parametrize("kernel", ["6.16", "6.18"])
    def test_a_fixed_move_across_vmas(self, kernel):
        # 6.17+ moves several VMAs (and the gaps between them) when the size
        # does not change, but not uffd-registered ones; before, and for any
        # resize, what stays of the old range must lie in one VMA.
        m = mmemu.Machine(kernel=kernel, memory=32 << 20)
        p = m.spawn()
        b = p.mmap(0, 8 * PAGE, RW, PRIV)
        p.mprotect(b + 3 * PAGE, PAGE, mmemu.PROT_READ)     # [b+2, b+3) and [b+3, b+4) differ
        p.write(b, b"keep")
        p.write(b + 2 * PAGE, b"two")
        fixed = MREMAP_MAYMOVE | MREMAP_FIXED
        with pytest.raises(OSError) as e:
            p.mremap(b + 2 * PAGE, 2 * PAGE, 3 * PAGE, fixed, b + 5 * PAGE)
        assert err(e) == errno.EFAULT
        if kernel == "6.16":
            with pytest.raises(OSError) as e:
                p.mremap(b + 2 * PAGE, 2 * PAGE, 2 * PAGE, fixed, b + 5 * PAGE)
            assert err(e) == errno.EFAULT and p.read(b + 2 * PAGE, 3) == b"two"
        else:
            assert p.mremap(b + 2 * PAGE, 2 * PAGE, 2 * PAGE, fixed, b + 5 * PAGE) == b + 5 * PAGE
            assert p.read(b + 5 * PAGE, 3) == b"two" and p.vmas.find(b + 2 * PAGE) is None
            assert not p.vmas.find(b + 6 * PAGE).flags & 2           # still read-only
            u = p.userfaultfd()
            u.api(0)
            u.register(b + 5 * PAGE, PAGE, 1)
            with pytest.raises(OSError) as e:
                p.mremap(b + 5 * PAGE, 2 * PAGE, 2 * PAGE, fixed, b)
            assert err(e) == errno.EFAULT and p.read(b, 4) == b"keep"   # the target is intact
        assert p.mremap(b + 1 * PAGE, 2 * PAGE, PAGE, fixed, b) == b    # shrink: tail first
        m.check()

    def test_grow_in_place_and_move(self, m, p):
        a = p.mmap(0, 2 * PAGE, RW, PRIV)
        p.write(a, b"A")
        b = p.mmap(0, PAGE, RW, PRIV)                # placed right below a: a cannot grow down
        assert p.mremap(a, 2 * PAGE, 3 * PAGE) == a  # grows up into free space
        pfn = p.pagemap(a).pfn
        q = p.mremap(a, 3 * PAGE, 3 * PAGE, MREMAP_MAYMOVE | MREMAP_FIXED, a + 64 * PAGE)
        assert q == a + 64 * PAGE and p.read(q, 1) == b"A" and p.pagemap(q).pfn == pfn
        with pytest.raises(mmemu.Sigsegv):
            p.read(a, 1)
        assert p.mremap(q, 3 * PAGE, PAGE) == q
        with pytest.raises(mmemu.Sigsegv):
            p.read(q + PAGE, 1)
        m.check()

    def test_dontunmap_leaves_an_empty_vma(self, m, p):
        a = p.mmap(0, PAGE, RW, PRIV)
        p.write(a, b"A")
        q = p.mremap(a, PAGE, PAGE, MREMAP_MAYMOVE | MREMAP_DONTUNMAP)
        assert p.read(q, 1) == b"A" and p.read(a, 1) == b"\0"
        m.check()

    def test_swapped_pages_move_too(self, m, p):
        a = p.mmap(0, 2 * PAGE, RW, PRIV)
        p.write(a, b"S" * 2 * PAGE)
        p.madvise(a, 2 * PAGE, MADV_PAGEOUT)
        q = p.mremap(a, 2 * PAGE, 2 * PAGE, MREMAP_MAYMOVE | MREMAP_FIXED, a + 32 * PAGE)
        assert p.pagemap(q).swapped and p.read(q + PAGE, 1) == b"S"
        m.check()


def test_swap_full_keeps_pages_and_oom_without_swap():
    m = mmemu.Machine(memory=64 * PAGE, swap=4 * PAGE)
    p = m.spawn()
    a = p.mmap(0, 16 * PAGE, RW, PRIV)
    p.touch(a, 16, write=True, value=5)
    p.madvise(a, 16 * PAGE, MADV_PAGEOUT)
    swapped = sum(p.pagemap(a + i * PAGE).swapped for i in range(16))
    assert swapped == 4                              # the device is full: the rest stay
    assert all(v == 5 for v in p.versions(a, 16) if v)
    m.check()
    b = p.mmap(0, 200 * PAGE, RW, PRIV)
    with pytest.raises(mmemu.OutOfMemory):
        p.touch(b, 200, write=True)
    m.check()
