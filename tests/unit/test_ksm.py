"""KSM (mm/ksm.c; semantics.md 3.5 and 13): each rule has a test that fails
if the engine broke it. Era gates are tested at their boundary versions."""
import copy
import errno

import numpy as np
import pytest

from mmemu import Machine
from mmemu import constants as C
from mmemu import uffd as U
from mmemu.vma import VM_MERGEABLE

PAGE = C.PAGE_SIZE
RW = C.PROT_READ | C.PROT_WRITE
PRIV = C.MAP_PRIVATE | C.MAP_ANONYMOUS
SAME = b"\x5a" * 100 + b"\x01" * (PAGE - 100)


def _setup(kernel="6.18", npages=2, content=SAME, advise=True):
    m = Machine(kernel=kernel, memory=16 << 20)
    p = m.spawn()
    a = p.mmap(0, npages * PAGE, RW, PRIV)
    if advise:
        p.madvise(a, npages * PAGE, C.MADV_MERGEABLE)
    for i in range(npages):
        p.write(a + i * PAGE, content)
    return m, p, a


def _pfns(p, a, n):
    return [p.pagemap(a + i * PAGE).pfn for i in range(n)]


def _ksm(m, pfn):
    # The page's own PG_KSM (kpageflags shows KSM on every anon page 6.10 .. 81401cebfc15).
    return "ksm" in m._engine.frame_info(pfn)[2]


def _settle(m):
    return m.ksm_scan() + m.ksm_scan()


def test_identical_pages_merge_on_the_second_full_scan_and_report_ksm():
    m, p, a = _setup()
    assert m.ksm_scan() == 0                    # checksums recorded only
    assert len(set(_pfns(p, a, 2))) == 2
    assert m.ksm_scan() == 1
    pa, pb = _pfns(p, a, 2)
    assert pa == pb
    f = m.frame(pa)
    assert _ksm(m, pa) and f.kpagecount == 2 and f.kpageflags & (1 << C.KPF_KSM)
    assert not p.pagemap(a).exclusive
    assert m.ksm_stats()["pages_shared"] == 1 and m.ksm_stats()["pages_sharing"] == 1
    assert m.ksm_stats()["full_scans"] == 2
    m.check()


def test_unadvised_or_different_pages_never_merge():
    m, p, a = _setup(advise=False)
    _settle(m)
    assert len(set(_pfns(p, a, 2))) == 2
    m, p, a = _setup()
    p.write(a + PAGE + 4000, b"\x02")            # one byte differs
    _settle(m)
    assert len(set(_pfns(p, a, 2))) == 2


def test_byte_exact_page_equal_to_a_pattern_page_merges():
    # Contents compare exactly whatever the engine's storage (bytes vs version).
    m, p, a = _setup(content=b"\x07" * PAGE)
    p.write(a + PAGE, b"\x00")                  # a partial write: byte-exact storage
    p.write(a + PAGE, b"\x07")
    _settle(m)
    assert len(set(_pfns(p, a, 2))) == 1


def test_checksum_gate_a_page_changing_between_scans_is_not_merged():
    m, p, a = _setup()
    m.ksm_scan()
    p.write(a, b"\x03")
    p.write(a, b"\x5a")                          # the same contents, but written between scans
    p.write(a + PAGE, b"\x04")
    m.ksm_scan()
    assert len(set(_pfns(p, a, 2))) == 2         # b's checksum moved
    p.write(a + PAGE, b"\x5a")
    m.ksm_scan()
    assert len(set(_pfns(p, a, 2))) == 2
    m.ksm_scan()
    assert len(set(_pfns(p, a, 2))) == 1


@pytest.mark.parametrize("kernel", ["5.7", "5.18", "5.19", "6.18"])
@pytest.mark.parametrize("how", ["pin", "pin_ro", "get"])
def test_a_page_with_a_gup_reference_or_pin_is_never_merged(kernel, how):
    # write_protect_page(): refcount != mapcount (+ swapcache) aborts; 5.19+
    # an exclusive page must also be shareable (folio_try_share_anon_rmap_pte).
    # The held page is the last one scanned: the first two merge, it never does.
    m, p, a = _setup(kernel, 3)
    c = a + 2 * PAGE
    if how == "pin":
        h = p.pin_user_pages(c, 1, C.FOLL_WRITE | C.FOLL_LONGTERM)
    elif how == "pin_ro":
        h = p.pin_user_pages(c, 1, C.FOLL_LONGTERM)   # a PAE page in 5.19+: no unshare
    else:
        h = p.get_user_pages(c, 1)
    _settle(m)
    _settle(m)
    pa, pb, pc = _pfns(p, a, 3)
    assert pc == h.pfns[0] and pa == pb and pc != pb
    assert not _ksm(m, pc) and _ksm(m, pa)
    m.check()
    h.release()
    _settle(m)
    assert len(set(_pfns(p, a, 3))) == 1


def test_a_page_in_a_cpu_lru_batch_merges_after_the_scan_start_drain():
    # lru_add_drain_all() at each full scan's start: the batch reference would fail the check.
    m, p, a = _setup()
    m.ksm_scan()
    b = p.mmap(0, PAGE, RW, PRIV)
    p.madvise(b, PAGE, C.MADV_MERGEABLE)
    p.write(b, SAME)                            # now in cpu 0's batch, refcount 2
    assert m.frame(p.pagemap(b).pfn).refcount == 2
    m.ksm_scan()
    m.ksm_scan()
    assert p.pagemap(b).pfn == p.pagemap(a).pfn


@pytest.mark.parametrize("kernel", ["5.7", "5.9", "6.18"])
def test_write_after_merge_cows_to_a_new_pfn(kernel):
    m, p, a = _setup(kernel)
    _settle(m)
    kpfn = p.pagemap(a).pfn
    f0 = p.minflt
    p.write(a, b"\x09")
    assert p.minflt == f0 + 1
    assert p.pagemap(a).pfn != kpfn and p.pagemap(a + PAGE).pfn == kpfn
    assert p.read(a + PAGE, 1) == b"\x5a" and p.read(a, 1) == b"\x09"
    m.check()


@pytest.mark.parametrize("kernel, reused", [("5.8", True), ("5.9", False)])
def test_reuse_ksm_page_until_5_9(kernel, reused):
    # reuse_ksm_page(): the only mapping (refcount 1) may reuse; 09854ba94c6a always copies.
    m, p, a = _setup(kernel)
    _settle(m)
    p.write(a, b"\x09")
    kpfn = p.pagemap(a + PAGE).pfn
    p.write(a + PAGE, b"\x08")
    assert (p.pagemap(a + PAGE).pfn == kpfn) == reused
    if reused:
        assert not _ksm(m, kpfn)                    # an ordinary anon page again
    m.check()


@pytest.mark.parametrize("kernel, unshare", [("6.1", False), ("6.2", True)])
def test_unmergeable_gives_each_mapping_its_own_copy(kernel, unshare):
    m, p, a = _setup(kernel, 3)
    _settle(m)
    kpfn = p.pagemap(a).pfn
    p.madvise(a, 3 * PAGE, C.MADV_UNMERGEABLE)
    pfns = _pfns(p, a, 3)
    assert kpfn not in pfns and len(set(pfns)) == 3
    assert all(p.read(a + i * PAGE, PAGE) == SAME for i in range(3))
    assert not any(v.flags & VM_MERGEABLE for v in p.vmas)
    f0 = p.minflt
    p.write(a, b"\x01")
    # 6cce3314b928 (6.2): an unshare fault maps the copy R/O; before, a write fault mapped it writable.
    assert p.minflt == f0 + (1 if unshare else 0)
    m.check()
    _settle(m)
    assert m.ksm_stats()["pages_shared"] == 0 and m.ksm_stats()["pages_sharing"] == 0


def test_unmergeable_before_6_2_leaves_a_uffd_wp_protected_ksm_page_merged():
    # A write-fault break_ksm() reaches handle_userfault() without ALLOW_RETRY:
    # SIGBUS, the page stays KSM (the bug 6cce3314b928 fixed).
    for kernel, stays in (("6.1", True), ("6.2", False)):
        m = Machine(kernel=kernel, memory=16 << 20)
        p = m.spawn()
        a = p.mmap(0, 2 * PAGE, RW, PRIV)
        p.madvise(a, 2 * PAGE, C.MADV_MERGEABLE)
        u = p.userfaultfd()
        u.api(0)
        u.register(a, 2 * PAGE, U.UFFDIO_REGISTER_MODE_WP)
        p.write(a, SAME)
        p.write(a + PAGE, SAME)
        _settle(m)
        kpfn = p.pagemap(a).pfn
        assert p.pagemap(a + PAGE).pfn == kpfn
        u.writeprotect(a, 2 * PAGE, U.UFFDIO_WRITEPROTECT_MODE_WP)
        p.madvise(a, 2 * PAGE, C.MADV_UNMERGEABLE)
        assert (p.pagemap(a).pfn == kpfn) == stays
        m.check()


def test_mergeable_is_ignored_on_shared_mappings():
    # ksm_madvise(): vma_ksm_compatible() refuses silently (return 0), never EINVAL.
    m = Machine(memory=16 << 20)
    p = m.spawn()
    s = p.mmap(0, 2 * PAGE, RW, C.MAP_SHARED | C.MAP_ANONYMOUS)
    p.madvise(s, 2 * PAGE, C.MADV_MERGEABLE)
    assert not any(v.flags & VM_MERGEABLE for v in p.vmas)
    p.write(s, SAME)
    p.write(s + PAGE, SAME)
    _settle(m)
    assert p.pagemap(s).pfn != p.pagemap(s + PAGE).pfn
    with pytest.raises(OSError) as e:
        p.madvise(s + 1, PAGE, C.MADV_MERGEABLE)
    assert e.value.errno == errno.EINVAL


@pytest.mark.parametrize("kernel, first_scan_merges", [("6.10", True), ("6.11", False)])
def test_checksum_before_stable_search_from_6_11(kernel, first_scan_merges):
    m, p, a = _setup(kernel, 3)
    p.write(a + 2 * PAGE, b"\x00")
    _settle(m)
    p.write(a + 2 * PAGE, b"\x5a")
    m.ksm_scan()
    assert (p.pagemap(a + 2 * PAGE).pfn == p.pagemap(a).pfn) == first_scan_merges


def test_fork_shares_the_ksm_page_and_ksmd_counts_the_child():
    m, p, a = _setup()
    _settle(m)
    kpfn = p.pagemap(a).pfn
    c = p.fork()
    assert c.pagemap(a).pfn == kpfn and m.frame(kpfn).kpagecount == 4
    m.ksm_scan()
    assert m.ksm_stats()["pages_shared"] == 1 and m.ksm_stats()["pages_sharing"] == 3
    c.write(a, b"\x01")
    assert c.pagemap(a).pfn != kpfn and p.pagemap(a).pfn == kpfn
    c.exit()
    assert m.ksm_stats()["pages_sharing"] == 1    # __ksm_exit drops the child's items at once
    m.check()


def test_uffdio_move_refuses_a_ksm_page():
    m, p, a = _setup("6.8")
    _settle(m)
    dst = p.mmap(0, PAGE, RW, PRIV)
    u = p.userfaultfd()
    u.api(0)
    u.register(dst, PAGE, U.UFFDIO_REGISTER_MODE_MISSING)
    with pytest.raises(OSError) as e:
        u.move(dst, a, PAGE)
    assert e.value.errno == errno.EBUSY
    m.check()


def test_max_page_sharing_starts_a_second_ksm_page():
    m, p, a = _setup(npages=300, content=b"\x33" * PAGE)
    _settle(m)
    _settle(m)
    pfns = _pfns(p, a, 300)
    assert len(set(pfns)) == 2
    st = m.ksm_stats()
    assert st["pages_shared"] == 2 and st["pages_sharing"] == 298
    assert max(pfns.count(x) for x in set(pfns)) == 256
    m.check()


def _workload(m, chunks):
    p = m.spawn()
    a = p.mmap(0, 64 * PAGE, RW, PRIV)
    p.madvise(a, 64 * PAGE, C.MADV_MERGEABLE)
    for i in range(64):
        p.write(a + i * PAGE, bytes([i % 5]) * 50 + SAME[50:])
    q = p.fork()
    q.write(a + 3 * PAGE, SAME)
    merged = 0
    for _ in range(3):
        if chunks:
            for _ in range(200):
                merged += m.ksm_scan(pages=7)
        else:
            merged += m.ksm_scan()
    return merged, _pfns(p, a, 64) + _pfns(q, a, 64), m.ksm_stats()


def test_ksm_scan_is_deterministic_and_resumes_where_it_stopped():
    r1 = _workload(Machine(memory=16 << 20), False)
    r2 = _workload(Machine(memory=16 << 20), False)
    assert r1 == r2 and r1[0] > 0
    # pages=N scans stop where a full scan ends, so small steps reach the same state.
    r3 = _workload(Machine(memory=16 << 20), True)
    assert r3[1] == r1[1] and r3[2]["pages_shared"] == r1[2]["pages_shared"]


def test_state_survives_a_copy_of_the_machine():
    m, p, a = _setup(npages=4)
    m.ksm_scan()
    m2 = copy.deepcopy(m)
    for mm in (m, m2):
        mm.ksm_scan()
    p2 = m2.processes[0]
    assert _pfns(p, a, 4) == _pfns(p2, a, 4) and m.ksm_stats() == m2.ksm_stats()
    assert len(set(_pfns(p2, a, 4))) == 1
    m2.check()


def test_ksm_scan_arguments():
    m = Machine(memory=16 << 20)
    with pytest.raises(ValueError):
        m.ksm_scan(pages=-1)
    with pytest.raises(ValueError):
        m.ksm_scan(cpu=5)
    with pytest.raises(TypeError):
        m.ksm_scan(pages="3")
    assert m.ksm_scan() == 0 and m.ksm_stats()["full_scans"] == 1


# ---- the tables (core/ksm.pxi) ----------------------------------------------

def _map_at(p, addr, npages, value):
    a = p.mmap(addr, npages * PAGE, RW, PRIV | C.MAP_FIXED)
    p.madvise(a, npages * PAGE, C.MADV_MERGEABLE)
    p.touch(a, npages, write=True, value=value)
    return a


def test_new_rmap_items_among_the_last_scans_keep_their_checksums():
    # This scan's items and the last scan's share one array: new pages met
    # before old ones make the old ones move. If an old item were lost or
    # overwritten, its page would start over (checksum 0) and not merge now.
    m = Machine(memory=64 << 20)
    p = m.spawn()
    for addr in (0x20000000, 0x40000000):
        _map_at(p, addr, 200, 0x5EED5EED5EED)   # 400 identical pages (no fresh version's value)
    assert m.ksm_scan() == 0
    for addr in (0x10000000, 0x30000000, 0x50000000):
        _map_at(p, addr, 300, 0)                # distinct pages, met first on the next scan
    mid = copy.deepcopy(m)
    assert m.ksm_scan(pages=650) == 199 and mid.ksm_scan(pages=650) == 199
    mid = copy.deepcopy(mid)                    # saved and loaded partway through a scan
    assert m.ksm_scan() == 199 and mid.ksm_scan() == 199
    for mm in (m, mid):
        st = mm.ksm_stats()
        assert st["pages_shared"] == 2 and st["pages_sharing"] == 398    # max_page_sharing 256
        assert len(mm._engine.get_state()["ksm_prev"]) == 1300 * 32
        assert mm.ksm_scan() == 0 and mm.ksm_stats()["pages_sharing"] == 398
        mm.check()


def _unstable_entries_of_scan(m, seqnr):
    # ksm_unstable_t: item u32, tag u16, gen u16 == seqnr % 65535 + 1 of the scan that made it
    gen = m._engine.get_state()["ksm_unstable"].view(np.uint16).reshape(-1, 4)[:, 3]
    return int((gen == seqnr % 65535 + 1).sum())


def test_unstable_tree_generations_wrap_without_reviving_old_entries():
    # The unstable tree empties at a scan's end by its 16-bit generation: when
    # that comes round again, an entry left 65535 scans ago must not count.
    m = Machine(memory=16 << 20)
    p = m.spawn()
    a = _map_at(p, 0x10000000, 4, 0)
    m.ksm_scan()
    m.ksm_scan()                                # scan 1 puts the 4 pages in the unstable tree
    assert _unstable_entries_of_scan(m, 1) == 4
    p.munmap(a, 4 * PAGE)                       # their entries stay behind, stale
    for _ in range(65535 - 1):
        m.ksm_scan()
    assert m.ksm_stats()["full_scans"] == 65536   # the next scan has scan 1's generation
    assert _unstable_entries_of_scan(m, 65536) == 0
    m.check()
