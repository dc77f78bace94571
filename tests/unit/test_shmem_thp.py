"""Huge pages in shmem: PMD-sized folios in the page cache of a memfd or of
a MAP_SHARED|MAP_ANONYMOUS mapping (mm/shmem.c shmem_get_folio_gfp,
shmem_allowable_huge_orders / shmem_huge_global_enabled, 6.12;
shmem_is_huge before), mapped by a PMD where the VMA allows
(finish_fault -> do_set_pmd), and what the rest of mm does with them:
a split PMD of a file folio is simply cleared, fork does not copy it,
a private write splits it and copies one page, a hole punch or a
truncation splits the folio (truncate_inode_partial_folio), a pinned
one stays whole. The per-size hugepages-2048kB/shmem_enabled of anon
shmem arrives with e7a2ab7b3bb5 (6.11)."""
import errno

import pytest

import mmemu
import mmemu.constants as C
from mmemu.errors import Sigsegv, WouldBlock
from mmemu.uffd import O_NONBLOCK, UFFD_PAGEFAULT_FLAG_MINOR, UFFDIO_REGISTER_MODE_MINOR, \
    UFFDIO_REGISTER_MODE_MISSING

PAGE = C.PAGE_SIZE
PMD = 2 << 20
RW = C.PROT_READ | C.PROT_WRITE
VALUES = ("always", "within_size", "advise", "never", "deny", "force")


def machine(kernel="6.12", shmem="never", memory=64 << 20, **kw):
    m = mmemu.Machine(kernel=kernel, memory=memory, **kw)
    m.thp.shmem_enabled = shmem
    return m


def aligned_hole(p, length):
    """A free, 2 MiB-aligned address range of `length`."""
    raw = p.mmap(0, length + PMD, RW, C.MAP_PRIVATE | C.MAP_ANONYMOUS)
    p.munmap(raw, length + PMD)
    return (raw + PMD - 1) & ~(PMD - 1)


def memfd_map(p, size=4 << 20, length=None, flags=C.MAP_SHARED, offset=0, misalign=0):
    fd = p.memfd_create("thp")
    p.ftruncate(fd, size)
    length = size if length is None else length
    a = aligned_hole(p, length + PMD) + misalign
    return fd, p.mmap(a, length, RW, flags | C.MAP_FIXED, fd, offset)


def anon_shared_map(p, length=4 << 20):
    a = aligned_hole(p, length)
    return p.mmap(a, length, RW, C.MAP_SHARED | C.MAP_ANONYMOUS | C.MAP_FIXED)


def order_at(m, p, addr):
    e = p.pagemap(addr)
    assert e.present
    return m.folio_order(e.pfn)


def pmd_mapped(m, p, addr):
    """addr is mapped by a PMD of a THP: the folio's entire mapcount counts
    it (each test's other processes say where they map it too)."""
    e = p.pagemap(addr)
    return e.present and m.folio_order(e.pfn) == 9 and m._engine.thp_info(e.pfn)[1] > 0


# ---- settings -----------------------------------------------------------------

def test_default_is_never_and_base_pages_stay():
    # Debian and the kernel default: shmem_enabled=never; nothing changes.
    m = mmemu.Machine(kernel="6.12", memory=64 << 20)
    assert m.thp.shmem_enabled == "never"
    p = m.spawn()
    fd, a = memfd_map(p)
    p.write(a, b"x" * (3 * PAGE))
    assert all(order_at(m, p, a + i * PAGE) == 0 for i in range(3))
    assert m.stats()["thp_file_alloc"] == 0
    m.check()


@pytest.mark.parametrize("value", VALUES)
def test_every_value_reads_back(value):
    m = machine(shmem=value)
    assert m.thp.shmem_enabled == value
    assert f"shmem_enabled={value!r}" in repr(m.thp)


def test_bad_values_are_refused():
    m = machine()
    with pytest.raises(ValueError):
        m.thp.shmem_enabled = "sometimes"
    with pytest.raises(ValueError):
        m.thp.shmem_sizes[PMD] = "force"       # not a per-size value
    with pytest.raises(FileNotFoundError):
        m.thp.shmem_sizes[3 * PAGE]
    with pytest.raises(TypeError):
        m.thp.shmem_sizes["2M"]
    with pytest.raises(ValueError):
        m.thp.shmem_sizes[64 << 10] = "force"   # no force/deny per size
    assert m.thp.shmem_sizes[64 << 10] == "never"


# Which values give a memfd / a shared anon mapping a THP on a write fault,
# without and with MADV_HUGEPAGE, the file 4 MiB (within_size holds).
EXPECT = {"always": (True, True), "within_size": (True, True), "advise": (False, True),
          "never": (False, False), "deny": (False, False), "force": (True, True)}


@pytest.mark.parametrize("kernel", ["5.7", "6.12", "6.18"])
@pytest.mark.parametrize("backing", ["memfd", "anon"])
@pytest.mark.parametrize("value", VALUES)
def test_each_value_on_memfd_and_shared_anon(kernel, backing, value):
    # shmem_huge_global_enabled: always and force map a THP; within_size when
    # the 2 MiB lies inside i_size; advise only under MADV_HUGEPAGE; never and
    # deny never. If a value is misread, the order seen differs.
    for madv, want in zip((False, True), EXPECT[value]):
        m = machine(kernel, value)
        p = m.spawn()
        a = memfd_map(p)[1] if backing == "memfd" else anon_shared_map(p)
        if madv:
            p.madvise(a, 4 << 20, C.MADV_HUGEPAGE)
        p.write(a + 5 * PAGE, b"data")
        assert order_at(m, p, a + 5 * PAGE) == (9 if want else 0), (value, madv)
        assert pmd_mapped(m, p, a) == want
        assert p.read(a + 5 * PAGE, 4) == b"data"
        assert m.stats()["thp_file_alloc"] == int(want)
        assert m.stats()["thp_file_mapped"] == int(want)
        m.check()


def test_madv_nohugepage_wins_over_always_and_force():
    # vma_thp_disabled: VM_NOHUGEPAGE refuses even force (shmem_allowable_huge_orders).
    for value in ("always", "force"):
        m = machine(shmem=value)
        p = m.spawn()
        fd, a = memfd_map(p)
        p.madvise(a, 4 << 20, C.MADV_NOHUGEPAGE)
        p.write(a, b"x")
        assert order_at(m, p, a) == 0
        m.check()


def test_within_size_follows_i_size():
    # round_up(index + 1, 512) pages must lie inside i_size: with a file of
    # 2 MiB + 1 page, index 0's 2 MiB is inside, index 512's is not.
    m = machine(shmem="within_size")
    p = m.spawn()
    fd, a = memfd_map(p, size=PMD + PAGE, length=4 << 20)
    p.write(a + PAGE, b"x")
    assert order_at(m, p, a + PAGE) == 9
    p.write(a + PMD, b"y")
    assert order_at(m, p, a + PMD) == 0
    # Growing the file makes the next hole eligible.
    p.ftruncate(fd, 4 << 20)
    p.write(a + PMD + 7 * PAGE, b"z")
    assert order_at(m, p, a + PMD + 7 * PAGE) == 0       # index 512 is cached small: no THP over it
    fd2, b = memfd_map(p, size=PAGE, length=4 << 20)
    p.pwrite(fd2, b"w" * 10, PMD - 10)                    # write_end covers the 2 MiB: huge
    assert p.read(b + PMD - 1, 1) == b"w"
    assert order_at(m, p, b) == 9 and pmd_mapped(m, p, b)
    fd3, c = memfd_map(p, size=PAGE, length=4 << 20)
    p.pwrite(fd3, b"w" * 10, PMD - PAGE - 10)             # i_size a page short (rounded up): small
    assert p.read(c, 1) == b"\0" and order_at(m, p, c) == 0
    m.check()


def test_a_write_makes_a_thp_in_the_cache_and_a_fault_maps_it_by_pmd():
    # write(2) allocates with no VMA (shmem_write_begin); the later read
    # fault maps the cached THP whole (fault-around's filemap_map_pmd /
    # finish_fault's do_set_pmd), even after shmem_enabled went back to never.
    m = machine(shmem="always")
    p = m.spawn()
    fd, a = memfd_map(p)
    p.pwrite(fd, b"abc", 100 * PAGE)
    m.thp.shmem_enabled = "never"
    assert p.read(a + 100 * PAGE, 3) == b"abc"
    assert pmd_mapped(m, p, a)
    m.check()


def test_misaligned_mapping_gets_ptes_of_the_thp():
    # thp_vma_suitable_order: address and file offset must agree modulo 2 MiB;
    # here they do not, so the folio is allocated small (shmem_suitable_orders
    # checks the VMA) and mapped by a pte.
    m = machine(shmem="always")
    p = m.spawn()
    fd, a = memfd_map(p, length=2 << 20, misalign=PAGE)
    p.write(a, b"x")
    assert order_at(m, p, a) == 0
    # A THP already cached (written through the fd) is mapped by ptes here.
    fd2, b = memfd_map(p, length=2 << 20, misalign=PAGE)
    p.pwrite(fd2, b"y", 0)
    assert p.read(b, 1) == b"y"
    assert order_at(m, p, b) == 9 and not pmd_mapped(m, p, b)
    m.check()


# ---- pagemap and kpageflags -------------------------------------------------

def test_pagemap_and_kpageflags_of_a_pmd_mapped_shmem_thp():
    # pagemap: every page present, pfns contiguous, not anon (PM_FILE),
    # mapped once (exclusive). kpageflags: THP and compound head/tail on each
    # page (stable_page_flags: a large folio on the LRU), no anon bit;
    # kpagecount the PMD mapping; the folio holds 512 cache references + 1.
    m = machine(shmem="always")
    p = m.spawn()
    fd, a = memfd_map(p)
    p.write(a, b"x")
    e0 = p.pagemap(a)
    assert e0.present and e0.file_shared and e0.exclusive
    for i in (1, 123, 511):
        e = p.pagemap(a + i * PAGE)
        assert e.present and e.pfn == e0.pfn + i
    head = m.frame(e0.pfn)
    tail = m.frame(e0.pfn + 123)
    assert {"thp", "compound_head", "file", "mmap"} <= head.flags and "anon" not in head.flags
    assert {"thp", "compound_tail", "file", "mmap"} <= tail.flags
    assert head.kpagecount == tail.kpagecount == 1
    assert head.refcount == 513
    assert not p.pagemap(a + PMD).present                # the next 2 MiB is untouched
    m.check()


# ---- COW, fork, zap ------------------------------------------------------------

def test_private_mapping_reads_by_pmd_and_a_write_splits_and_copies_one_page():
    # do_set_pmd maps a private file PMD read-only; a write goes to
    # wp_huge_pmd, which splits a file PMD (clears it: no ->huge_fault for
    # shmem) and do_cow_fault copies the written page only. If the split
    # were missing, the write would land in the page cache.
    m = machine(shmem="always")
    p = m.spawn()
    fd, a = memfd_map(p, flags=C.MAP_PRIVATE)
    p.pwrite(fd, b"file" * 2048, 0)
    assert p.read(a + 3, 1) == b"e"
    assert pmd_mapped(m, p, a)
    assert not p.pagemap(a).exclusive or True
    p.write(a + PAGE, b"mine")
    e = p.pagemap(a + PAGE)
    assert e.present and not e.file_shared and m.folio_order(e.pfn) == 0
    assert not p.pagemap(a).present                     # the PMD went whole
    assert p.pread(fd, 4, PAGE) == b"file"
    assert p.read(a + PAGE, 4) == b"mine"
    assert p.read(a, 4) == b"file"                       # refaults ptes of the THP
    assert order_at(m, p, a) == 9 and not pmd_mapped(m, p, a)
    m.check()


def test_private_write_to_a_hole_fills_the_cache_with_a_thp_and_maps_an_anon_copy():
    # do_cow_fault: ->fault (shmem_fault) allocates the cache folio - a THP
    # under always - and the write lands in an anon copy of one page; no
    # PMD maps the private range. If the PMD were mapped, the write would
    # reach the file.
    m = machine(shmem="always")
    p = m.spawn()
    fd, a = memfd_map(p, flags=C.MAP_PRIVATE)
    p.write(a + 2 * PAGE, b"cow")
    e = p.pagemap(a + 2 * PAGE)
    assert e.present and not e.file_shared and m.folio_order(e.pfn) == 0
    assert m.stats()["thp_file_alloc"] == 1 and m.stats()["thp_file_mapped"] == 0
    assert p.pread(fd, 3, 2 * PAGE) == b"\0\0\0"
    assert m._engine.file_info(p.fds[fd].fid)["nrpages"] == 512
    m.check()


@pytest.mark.parametrize("backing", ["memfd", "anon"])
def test_fork_does_not_copy_a_shared_pmd_the_child_refaults(backing):
    # copy_huge_pmd skips a file PMD (and fork copies no shared file VMA's
    # tables at all): the child faults it in, by a PMD of the same folio.
    m = machine(shmem="always")
    p = m.spawn()
    a = memfd_map(p)[1] if backing == "memfd" else anon_shared_map(p)
    p.write(a, b"parent")
    q = p.fork()
    assert not q.pagemap(a).present
    assert q.read(a, 6) == b"parent"
    assert pmd_mapped(m, q, a) and q.pagemap(a).pfn == p.pagemap(a).pfn
    assert m._engine.thp_info(p.pagemap(a).pfn)[1] == 2
    q.write(a, b"child!")
    assert p.read(a, 6) == b"child!"
    m.check()


def test_private_file_pmd_with_an_anon_vma_is_not_copied_at_fork():
    # A private file VMA that has anon pages is copied at fork; its file
    # PMD still is not (copy_huge_pmd: !vma_is_anonymous).
    m = machine(shmem="always")
    p = m.spawn()
    fd, a = memfd_map(p, size=8 << 20, flags=C.MAP_PRIVATE)
    p.read(a, 1)
    p.write(a + PMD, b"anon")                            # an anon_vma, ptes in the 2nd 2 MiB
    q = p.fork()
    assert pmd_mapped(m, p, a) and not q.pagemap(a).present
    assert q.read(a + PMD, 4) == b"anon"
    m.check()


def test_partial_munmap_and_dontneed_clear_the_whole_pmd():
    # zap_pmd_range: a range covering part of a file PMD splits it, which
    # clears it; the folio stays whole in the cache.
    m = machine(shmem="always")
    p = m.spawn()
    fd, a = memfd_map(p)
    p.write(a + 10 * PAGE, b"keep")
    p.madvise(a, PAGE, C.MADV_DONTNEED)
    assert not p.pagemap(a + 10 * PAGE).present
    assert p.read(a + 10 * PAGE, 4) == b"keep"
    p.munmap(a + 300 * PAGE, PAGE)
    assert p.read(a + 10 * PAGE, 4) == b"keep"
    assert order_at(m, p, a + 10 * PAGE) == 9
    m.check()
    p.munmap(a, 4 << 20)
    p.close(fd)
    m.check()
    assert m._engine.thp_info(0)[0] == -1 or True


def test_mprotect_of_the_whole_pmd_keeps_it():
    m = machine(shmem="always")
    p = m.spawn()
    fd, a = memfd_map(p)
    p.write(a, b"x")
    p.mprotect(a, PMD, C.PROT_READ)
    assert pmd_mapped(m, p, a)
    with pytest.raises(Sigsegv):
        p.write(a, b"y")
    p.mprotect(a, PMD, RW)
    p.write(a, b"y")
    assert p.pread(fd, 1, 0) == b"y"
    m.check()


# ---- hole punch and truncate -------------------------------------------------

def test_punch_hole_in_a_thp_splits_it():
    # shmem_undo_range -> truncate_inode_partial_folio -> split_folio: the
    # folio's mappings go (unmap_folio: a file folio is unmapped, not
    # remapped), each page becomes a folio of its own, the hole's pages leave
    # the cache. If the split were skipped, the punched page would keep its data.
    m = machine(shmem="always")
    p = m.spawn()
    fd, a = memfd_map(p)
    p.write(a, b"A" * PMD)
    before = m.stats()["thp_split_page"]
    p.fallocate(fd, C.FALLOC_FL_PUNCH_HOLE | C.FALLOC_FL_KEEP_SIZE, 7 * PAGE, 2 * PAGE)
    assert m.stats()["thp_split_page"] == before + 1
    assert not p.pagemap(a).present
    assert p.read(a + 6 * PAGE, PAGE) == b"A" * PAGE
    assert p.read(a + 7 * PAGE, 2 * PAGE) == bytes(2 * PAGE)
    assert p.read(a + 9 * PAGE, 1) == b"A"
    assert order_at(m, p, a + 6 * PAGE) == 0
    assert m._engine.file_info(p.fds[fd].fid)["nrpages"] == 512 - 2 + 2   # the punched pages refaulted
    m.check()


def test_punch_hole_over_the_whole_thp_frees_it_without_a_split():
    m = machine(shmem="always")
    p = m.spawn()
    fd, a = memfd_map(p)
    p.write(a, b"A")
    used = m.memory_usage()["frames_used"]
    p.fallocate(fd, C.FALLOC_FL_PUNCH_HOLE | C.FALLOC_FL_KEEP_SIZE, 0, PMD)
    assert m.stats()["thp_split_page"] == 0
    assert m.memory_usage()["frames_used"] <= used - 512
    assert p.read(a, 1) == b"\0"
    m.check()


def test_pinned_thp_is_not_split_by_a_punch_its_range_reads_zero():
    # can_split_folio fails with a pin: the folio stays whole in the cache,
    # the part in the hole is zeroed (folio_zero_range), the pages stay.
    m = machine(shmem="always")
    p = m.spawn()
    fd, a = memfd_map(p)
    p.write(a, b"B" * (4 * PAGE))
    pin = p.pin_user_pages(a + 3 * PAGE, 1, C.FOLL_WRITE | C.FOLL_LONGTERM)
    p.fallocate(fd, C.FALLOC_FL_PUNCH_HOLE | C.FALLOC_FL_KEEP_SIZE, PAGE, PAGE)
    assert m.stats()["thp_split_page"] == 0
    assert p.pread(fd, 2, PAGE) == b"\0\0"
    assert p.pread(fd, 1, 2 * PAGE) == b"B"
    assert m.folio_order(int(pin.pfns[0])) == 9
    assert m._engine.file_info(p.fds[fd].fid)["nrpages"] == 512
    m.check()
    pin.release()
    p.fallocate(fd, C.FALLOC_FL_PUNCH_HOLE | C.FALLOC_FL_KEEP_SIZE, PAGE, PAGE)
    assert m.stats()["thp_split_page"] == 1            # unpinned: now it splits
    m.check()


def test_truncate_into_a_thp_splits_it_and_drops_the_pages_past_eof():
    # shmem_setattr -> shmem_truncate_range(newsize, -1): the pages past the
    # new EOF go, up to the THP's end (it held pages past the old EOF too).
    m = machine(shmem="always")
    p = m.spawn()
    fd, a = memfd_map(p, size=PAGE, length=PMD)
    p.write(a, b"C" * 100)
    info = m._engine.file_info(p.fds[fd].fid)
    assert info["nrpages"] == 512                       # always: 2 MiB for a 4 KiB file
    p.ftruncate(fd, 10)
    assert m._engine.file_info(p.fds[fd].fid)["nrpages"] == 1
    assert p.pread(fd, 20, 0) == b"C" * 10
    m.check()


# ---- userfaultfd ------------------------------------------------------------------

def test_uffd_minor_on_a_cached_thp_and_continue_maps_a_pte():
    # shmem_get_folio_gfp: a cached folio in a MINOR-registered VMA raises a
    # minor fault before anything is mapped; UFFDIO_CONTINUE installs a pte
    # of the THP's page (mfill_atomic_install_pte), never a PMD.
    m = machine(shmem="always")
    p = m.spawn()
    fd, a = memfd_map(p)
    p.pwrite(fd, b"minor", 0)
    u = p.userfaultfd(O_NONBLOCK)
    u.api(0)
    u.register(a, 4 << 20, UFFDIO_REGISTER_MODE_MINOR)
    with pytest.raises(WouldBlock) as wb:
        p.read(a, 5)
    assert wb.value.msg.flags & UFFD_PAGEFAULT_FLAG_MINOR
    u.continue_(a, PAGE)
    assert wb.value.thread.resume() == b"minor"
    assert order_at(m, p, a) == 9 and not pmd_mapped(m, p, a)
    m.check()


def test_uffd_missing_on_a_hole_allocates_nothing_huge():
    # A MISSING-registered hole raises the userfault before any allocation;
    # UFFDIO_COPY fills one small page (shmem_mfill_atomic_pte).
    m = machine(shmem="always")
    p = m.spawn()
    fd, a = memfd_map(p)
    u = p.userfaultfd(O_NONBLOCK)
    u.api(0)
    u.register(a, 4 << 20, UFFDIO_REGISTER_MODE_MISSING)
    with pytest.raises(WouldBlock) as wb:
        p.read(a, 1)
    assert not wb.value.msg.flags & UFFD_PAGEFAULT_FLAG_MINOR
    assert m.stats()["thp_file_alloc"] == 0
    u.copy(a, b"z" * PAGE)
    assert wb.value.thread.resume() == b"z" and order_at(m, p, a) == 0
    m.check()


# ---- era gates ------------------------------------------------------------------------

@pytest.mark.parametrize("kernel,present", [("6.10", False), ("6.11", True), ("6.18", True)])
def test_per_size_shmem_enabled_arrives_in_6_11(kernel, present):
    # e7a2ab7b3bb5 (6.11): anon shmem's huge orders come from
    # hugepages-<size>kB/shmem_enabled; the PMD size inherits by default, so
    # nothing changes until it is set.
    m = machine(kernel)
    if not present:
        with pytest.raises(FileNotFoundError):
            m.thp.shmem_sizes[PMD] = "always"
        assert list(m.thp.shmem_sizes) == []
        return
    assert m.thp.shmem_sizes[PMD] == "inherit"
    assert all(m.thp.shmem_sizes[s] == "never" for s in m.thp.shmem_sizes if s < PMD)
    m.thp.shmem_sizes[PMD] = "always"
    p = m.spawn()
    a = anon_shared_map(p)
    p.write(a, b"x")
    assert pmd_mapped(m, p, a)                          # anon shmem: the size's own "always"
    fd, b = memfd_map(p)
    p.write(b, b"x")
    assert order_at(m, p, b) == 0                        # a memfd follows shmem_enabled (never)
    m.check()


@pytest.mark.parametrize("kernel", ["6.10", "6.11"])
def test_per_size_never_and_advise_for_anon_shmem(kernel):
    # 6.11: shmem_enabled=always but the size at never: anon shmem gets no
    # THP (the top level only counts through "inherit"); before, it does.
    m = machine(kernel, shmem="always")
    new = m.policy.shmem_mthp
    assert bool(new) == (kernel == "6.11")
    if new:
        m.thp.shmem_sizes[PMD] = "never"
    p = m.spawn()
    a = anon_shared_map(p)
    p.write(a, b"x")
    assert pmd_mapped(m, p, a) == (not new)
    if new:
        m.thp.shmem_enabled = "never"
        m.thp.shmem_sizes[PMD] = "advise"
        b = anon_shared_map(p)
        p.write(b, b"x")
        assert not pmd_mapped(m, p, b)
        p.madvise(b + PMD, PMD, C.MADV_HUGEPAGE)
        p.write(b + PMD, b"x")
        assert pmd_mapped(m, p, b + PMD)
        m.thp.shmem_sizes[PMD] = "within_size"
        c = anon_shared_map(p)
        p.write(c, b"x")
        assert pmd_mapped(m, p, c)                       # a shared anon file is its mapping's size
        # deny still wins over the size's own setting.
        m.thp.shmem_enabled = "deny"
        m.thp.shmem_sizes[PMD] = "always"
        d = anon_shared_map(p)
        p.write(d, b"x")
        assert not pmd_mapped(m, p, d)
    m.check()


@pytest.mark.parametrize("kernel,refused", [("6.10", False), ("6.11", True)])
def test_force_needs_the_pmd_size_at_inherit_from_6_11(kernel, refused):
    # shmem_enabled_store (6.11): force is EINVAL unless only the PMD size inherits.
    m = machine(kernel)
    if refused:
        m.thp.shmem_sizes[PMD] = "always"
        with pytest.raises(OSError) as e:
            m.thp.shmem_enabled = "force"
        assert e.value.errno == errno.EINVAL
        assert m.thp.shmem_enabled == "never"
        m.thp.shmem_sizes[PMD] = "inherit"
    m.thp.shmem_enabled = "force"
    assert m.thp.shmem_enabled == "force"


def test_force_with_inherit_gives_anon_shmem_a_thp_on_6_11():
    m = machine("6.11", shmem="force")
    p = m.spawn()
    a = anon_shared_map(p)
    p.write(a, b"x")
    assert pmd_mapped(m, p, a)
    m.check()


# ---- save / load -------------------------------------------------------------------

def test_save_and_load_keep_the_settings_and_the_thp(tmp_path):
    m = machine("6.12", shmem="within_size")
    m.thp.shmem_sizes[PMD] = "advise"
    p = m.spawn()
    fd, a = memfd_map(p)
    p.write(a, b"saved")
    path = tmp_path / "m.mmemu"
    m.save(str(path))
    m2 = mmemu.Machine.load(str(path))
    assert m2.thp.shmem_enabled == "within_size" and m2.thp.shmem_sizes[PMD] == "advise"
    p2 = m2.processes[0]
    assert p2.read(a, 5) == b"saved" and pmd_mapped(m2, p2, a)
    m2.check()


# ---- swap-out -------------------------------------------------------------------------

def test_pageout_splits_a_shmem_thp_and_swaps_its_pages_out():
    # MADV_PAGEOUT of a shmem THP this mm alone maps: unmapped, split by
    # shmem_writepage (a swap file has no cluster for a whole THP), each page
    # written to swap as a small folio; reads bring small pages back. If the
    # THP were skipped, nothing would reach swap.
    m = machine(shmem="always", swap=16 << 20)
    p = m.spawn()
    fd, a = memfd_map(p)
    p.write(a, b"S" * PMD)
    assert pmd_mapped(m, p, a)
    p.madvise(a, PMD, C.MADV_PAGEOUT)
    assert m.stats()["swap_out"] == 512 and m.stats()["thp_split_page"] == 1
    assert not p.pagemap(a).present
    assert m._engine.file_info(p.fds[fd].fid)["nrpages"] == 0
    m.check()
    assert p.read(a + 77 * PAGE, 3) == b"SSS"
    assert order_at(m, p, a + 77 * PAGE) == 0
    m.check()


def test_pageout_leaves_a_thp_mapped_elsewhere_or_covered_in_part():
    m = machine(shmem="always", swap=16 << 20)
    p = m.spawn()
    a = anon_shared_map(p)
    p.write(a, b"T")
    q = p.fork()
    q.read(a, 1)                                        # mapped by the child too
    p.madvise(a, PMD, C.MADV_PAGEOUT)
    assert m.stats()["swap_out"] == 0 and pmd_mapped(m, p, a)
    m.check()
    m2 = machine(shmem="always", swap=16 << 20)
    p2 = m2.spawn()
    fd, b = memfd_map(p2)
    p2.write(b, b"U")
    p2.madvise(b, PAGE, C.MADV_PAGEOUT)                 # part of it: split, nothing goes
    assert m2.stats()["swap_out"] == 0 and m2.stats()["thp_split_page"] == 1
    assert p2.read(b, 1) == b"U" and order_at(m2, p2, b) == 0
    m2.check()


def test_pageout_without_swap_keeps_the_thp():
    m = machine(shmem="always")
    p = m.spawn()
    fd, a = memfd_map(p)
    p.write(a, b"V")
    p.madvise(a, PMD, C.MADV_PAGEOUT)
    assert pmd_mapped(m, p, a) and m.stats()["thp_split_page"] == 0
    m.check()


def test_uffd_wp_protect_of_a_shmem_thp_splits_the_pmd_and_leaves_markers():
    # change_pmd_range: pgtable_split_needed() (uffd-wp on a file VMA) splits
    # - clears - the PMD, and the none ptes get uffd-wp markers
    # (change_pmd_prepare + change_pte_range, 6.12). If the PMD were simply
    # dropped, the next write would map the page writable unseen.
    from mmemu.uffd import UFFD_PAGEFAULT_FLAG_WP, UFFDIO_REGISTER_MODE_WP, UFFDIO_WRITEPROTECT_MODE_WP
    m = machine(shmem="always")
    p = m.spawn()
    fd, a = memfd_map(p)
    p.write(a, b"w")
    assert pmd_mapped(m, p, a)
    u = p.userfaultfd(O_NONBLOCK)
    u.api(0)
    u.register(a, PMD, UFFDIO_REGISTER_MODE_WP)
    u.writeprotect(a, PMD, UFFDIO_WRITEPROTECT_MODE_WP)
    assert not pmd_mapped(m, p, a) and p.pagemap(a + 9 * PAGE).uffd_wp
    with pytest.raises(WouldBlock) as wb:
        p.write(a + 9 * PAGE, b"x")
    assert wb.value.msg.flags & UFFD_PAGEFAULT_FLAG_WP
    m.check()
