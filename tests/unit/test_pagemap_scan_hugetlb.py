"""PAGEMAP_SCAN over hugetlb memory (fs/proc/task_mmu.c, 6.12 unless a test
names an era): pagemap_scan_hugetlb_entry with pagemap_hugetlb_category and
make_uffd_wp_huge_pte, walk_hugetlb_range's pte_hole for a huge page whose
table is missing, and the two fixes of May 2026 (the whole-page test by
huge_page_size(), the self-deadlock of a hole's write-protect).

A failure means a snapshot or dirty-tracking tool (CRIU, a live-migration
helper) that scans hugetlb memory sees other categories than on Linux, loses
a write because a huge page was not protected, or resumes from the wrong
walk_end after the kernel backed out a partial huge page.

The host oracle ran the same kinds of scans (categories; partial huge pages
cut by start, end and max_pages, with and without an output vector; none
entries, markers, WP_ASYNC writes; a 1 GiB page) on 6.18.44 and agreed on
all of them; see the commit message.
"""
import pytest

import mmemu
import mmemu.constants as C
from mmemu import uffd as U
from mmemu.errors import Deadlock

PAGE = C.PAGE_SIZE
H2M = 2 << 20
H1G = 1 << 30
RW = C.PROT_READ | C.PROT_WRITE
HUGE = C.MAP_PRIVATE | C.MAP_ANONYMOUS | C.MAP_HUGETLB
WPM = C.PM_SCAN_WP_MATCHING
W = C.PAGE_IS_WRITTEN
ALL = 0xFF
WPA, WR, FILE, PRES, SWP, ZERO, HUGEC, SD = (C.PAGE_IS_WPALLOWED, C.PAGE_IS_WRITTEN, C.PAGE_IS_FILE,
                                             C.PAGE_IS_PRESENT, C.PAGE_IS_SWAPPED, C.PAGE_IS_PFNZERO,
                                             C.PAGE_IS_HUGE, C.PAGE_IS_SOFT_DIRTY)
FIXED = "6.18.44"       # both May 2026 fixes (and B21's)
BEFORE = "6.18"         # neither


def machine(kernel=FIXED, n2m=8, n1g=0):
    memory = (3 << 30) if n1g else 128 << 20
    return mmemu.Machine(kernel=kernel, memory=memory, hugepages={H2M: n2m, H1G: n1g})


def wp_async(p, *ranges, mode=U.UFFDIO_REGISTER_MODE_WP):
    u = p.userfaultfd(U.O_CLOEXEC | U.O_NONBLOCK)
    u.api(U.UFFD_FEATURE_WP_ASYNC | U.UFFD_FEATURE_WP_UNPOPULATED | U.UFFD_FEATURE_WP_HUGETLBFS_SHMEM
          | U.UFFD_FEATURE_POISON)
    for a, n in ranges:
        u.register(a, n, mode)
    return u


def cats(p, a, n):
    """The categories of every huge page of [a, a + n), one scan."""
    regions, _ = p.pagemap_scan(a, a + n, 0, 0, 0, 0, ALL)
    out = {}
    for s, e, c in regions:
        for x in range(s, e, H2M):
            out[x - a] = c
    return out


def rel(res, base):
    regions, walk_end = res
    return [(s - base, e - base, c) for s, e, c in regions], walk_end - base


# ---- categories --------------------------------------------------------------------------

def test_categories_of_hugetlb_entries():
    # pagemap_hugetlb_category(): HUGE on every entry; a present one PRESENT,
    # WRITTEN unless uffd-wp, FILE unless its page is anon (a private
    # mapping's own page is; a shared memfd's is not), never PFNZERO (no
    # zero page in hugetlb); a none entry HUGE alone - not WRITTEN, on the
    # B21-fixed 6.18.44 too, whose none-pte rule is the pte path's only.
    # Without the hugetlb path the engine reported 4 KiB-pte categories:
    # no HUGE, and an empty entry WRITTEN once B21 is fixed.
    m = machine(kernel="host")          # no soft-dirty: the categories alone
    p = m.spawn()
    a = p.mmap(0, 3 * H2M, RW, HUGE)
    fd = p.memfd_create("h", C.MFD_HUGETLB)
    p.ftruncate(fd, H2M)
    b = p.mmap(a - H2M, H2M, RW, C.MAP_SHARED | C.MAP_FIXED_NOREPLACE, fd, 0)
    p.write(a, b"x")
    p.read(a + H2M, 1)
    p.write(b, b"s")
    assert cats(p, a, 3 * H2M) == {0: HUGEC | PRES | WR, H2M: HUGEC | PRES | WR, 2 * H2M: HUGEC}
    assert cats(p, b, H2M) == {0: HUGEC | PRES | WR | FILE}
    u = wp_async(p, (a, 3 * H2M))
    assert cats(p, a, 3 * H2M)[2 * H2M] == WPA | HUGEC
    u.writeprotect(a, H2M, U.UFFDIO_WRITEPROTECT_MODE_WP)
    u.writeprotect(a + 2 * H2M, H2M, U.UFFDIO_WRITEPROTECT_MODE_WP)     # a marker on the none entry
    got = cats(p, a, 3 * H2M)
    assert got[0] == WPA | HUGEC | PRES
    assert got[2 * H2M] == WPA | HUGEC | SWP                            # a marker: swapped, not written
    # The WRITTEN-only fast path of the pmd walk is not hugetlb's: the none
    # entry is not reported.
    regions, _ = p.pagemap_scan(a, a + 3 * H2M, 0, W, 0, 0, W)
    assert [(s - a, e - a) for s, e, _ in regions] == [(H2M, 2 * H2M)]
    assert not any(c & ZERO for c in got.values())


def test_a_poison_marker_reads_swapped_and_written_and_wp_matching_leaves_it():
    # pagemap_hugetlb_category(): a marker without the uffd-wp bit is
    # WRITTEN (pte_swp_uffd_wp_any is false); make_uffd_wp_huge_pte() returns
    # at any marker, so the poison stays as it is.
    m = machine()
    p = m.spawn()
    a = p.mmap(0, H2M, RW, HUGE)
    u = wp_async(p, (a, H2M), mode=U.UFFDIO_REGISTER_MODE_WP | U.UFFDIO_REGISTER_MODE_MISSING)
    assert u.poison(a, H2M) == H2M
    assert cats(p, a, H2M) == {0: WPA | HUGEC | SWP | WR | SD}
    assert rel(p.pagemap_scan(a, a + H2M, WPM, W, 0, 0, W), a) == ([(0, H2M, W)], H2M)
    assert cats(p, a, H2M) == {0: WPA | HUGEC | SWP | WR | SD}
    with pytest.raises(mmemu.errors.Sigbus):
        p.read(a, 1)


def test_a_huge_page_without_a_table_is_a_hole_with_the_vma_categories_only():
    # walk_hugetlb_range() hands a huge page to pte_hole when
    # huge_pte_offset() finds no PMD table (a fresh process has none): the
    # VMA's categories only (WPALLOWED, SOFT_DIRTY from VM_SOFTDIRTY), no
    # HUGE - and no WRITTEN for hugetlb, even with B21's fix. Once a fault
    # allocated the table, the other huge pages there are none entries: HUGE.
    m = machine()
    p = m.spawn()
    a = p.mmap(0, 2 * H2M, RW, HUGE)
    wp_async(p, (a, 2 * H2M))
    assert cats(p, a, 2 * H2M) == {0: WPA | SD, H2M: WPA | SD}
    p.write(a, b"x")
    assert cats(p, a, 2 * H2M) == {0: WPA | SD | HUGEC | PRES | WR, H2M: WPA | SD | HUGEC}


def test_soft_dirty_of_hugetlb_entries_survives_clear_refs():
    # x86's pte_mkdirty sets the soft-dirty bit with the dirty one, and
    # make_huge_pte() makes an entry dirty when it maps it writable (a
    # write fault; a read one too in a shared writable mapping); clear_refs'
    # walk has no hugetlb_entry, so only the VMA's VM_SOFTDIRTY goes: such a
    # page stays SOFT_DIRTY, a private read one (clean) and a none entry
    # lose it.
    m = machine()
    p = m.spawn()
    fd = p.memfd_create("h", C.MFD_HUGETLB)
    p.ftruncate(fd, H2M)
    b = p.mmap(0, H2M, RW, C.MAP_SHARED, fd, 0)
    a = p.mmap(0, 3 * H2M, RW, HUGE)
    p.write(a, b"x")
    p.read(a + H2M, 1)
    p.read(b, 1)
    assert cats(p, a, 3 * H2M) == {0: HUGEC | PRES | WR | SD, H2M: HUGEC | PRES | WR | SD, 2 * H2M: HUGEC | SD}
    p.clear_refs(C.CLEAR_REFS_SOFT_DIRTY)
    assert cats(p, a, 3 * H2M) == {0: HUGEC | PRES | WR | SD, H2M: HUGEC | PRES | WR, 2 * H2M: HUGEC}
    assert cats(p, b, H2M) == {0: HUGEC | PRES | WR | FILE | SD}


def test_an_empty_pte_of_a_soft_dirty_vma_reads_soft_dirty():
    # pagemap_scan_pmd_entry ORs the VMA's category into every pte, an empty
    # one too: a new VMA (VM_SOFTDIRTY) reads SOFT_DIRTY on every page until
    # clear_refs. Without it the engine gave empty ptes no SOFT_DIRTY.
    m = mmemu.Machine(kernel="6.12", memory=64 << 20)
    p = m.spawn()
    a = p.mmap(0, 4 * PAGE, RW, C.MAP_PRIVATE | C.MAP_ANONYMOUS)
    p.write(a, b"x")
    regions, _ = p.pagemap_scan(a, a + 4 * PAGE, 0, 0, 0, 0, SD | PRES)
    assert rel((regions, a), a)[0] == [(0, PAGE, SD | PRES), (PAGE, 4 * PAGE, SD)]
    p.clear_refs(C.CLEAR_REFS_SOFT_DIRTY)
    regions, _ = p.pagemap_scan(a, a + 4 * PAGE, 0, SD, 0, 0, SD)
    assert regions == []


# ---- write-protect -----------------------------------------------------------------------

def test_wp_matching_protects_a_whole_written_huge_page_and_wp_async_takes_it_back():
    # make_uffd_wp_huge_pte(): the present entry becomes uffd-wp (read-only);
    # a later write resolves in place under WP_ASYNC and reads WRITTEN again.
    m = machine()
    p = m.spawn()
    a = p.mmap(0, 2 * H2M, RW, HUGE)
    p.write(a, b"x")
    p.write(a + H2M, b"y")
    wp_async(p, (a, 2 * H2M))
    assert rel(p.pagemap_scan(a, a + 2 * H2M, WPM, W, 0, 0, W), a) == ([(0, 2 * H2M, W)], 2 * H2M)
    assert p.pagemap(a).uffd_wp and p.pagemap(a + H2M + 7 * PAGE).uffd_wp
    assert p.pagemap_scan(a, a + 2 * H2M, 0, W, 0, 0, W)[0] == []
    p.write(a + H2M + 5, b"z")
    assert rel(p.pagemap_scan(a, a + 2 * H2M, 0, W, 0, 0, W), a) == ([(H2M, 2 * H2M, W)], 2 * H2M)
    m.check()


def test_a_huge_page_cut_by_start_is_backed_out_and_walk_end_is_its_start():
    # pagemap_scan_hugetlb_entry(): "partial HugeTLB page WP isn't
    # possible" - the output is taken back (pagemap_scan_backout_range),
    # walk_end becomes the cut page's start and the walk goes on: the next
    # huge page is reported and protected.
    m = machine()
    p = m.spawn()
    a = p.mmap(0, 2 * H2M, RW, HUGE)
    p.write(a, b"x")
    p.write(a + H2M, b"y")
    wp_async(p, (a, 2 * H2M))
    assert rel(p.pagemap_scan(a + PAGE, a + 2 * H2M, WPM, W, 0, 0, W), a) == ([(H2M, 2 * H2M, W)], PAGE)
    assert not p.pagemap(a).uffd_wp and p.pagemap(a + H2M).uffd_wp


def test_a_cut_at_the_end_leaves_walk_end_at_that_page_though_the_walk_completed():
    # do_pagemap_scan() writes walk_end back only if still 0: the backout's
    # walk_end stands even when the walk went to the end and returned
    # regions (seen on the 6.18.44 host).
    m = machine()
    p = m.spawn()
    a = p.mmap(0, 2 * H2M, RW, HUGE)
    p.write(a, b"x")
    p.write(a + H2M, b"y")
    wp_async(p, (a, 2 * H2M))
    assert rel(p.pagemap_scan(a, a + H2M + PAGE, WPM, W, 0, 0, W), a) == ([(0, H2M, W)], H2M)
    assert p.pagemap(a).uffd_wp and not p.pagemap(a + H2M).uffd_wp
    # Without WP_MATCHING nothing is backed out: the cut page is reported.
    assert rel(p.pagemap_scan(a, a + H2M + PAGE, 0, W, 0, 0, W), a) == ([(H2M, H2M + PAGE, W)], H2M + PAGE)


def test_max_pages_inside_a_huge_page_backs_it_out_and_the_walk_goes_on():
    # The max_pages cut is a partial page too: backed out with ret 0, so the
    # walk goes on and backs out every later written page the same way;
    # walk_end is the last one's start (the 6.18.44 host: no regions,
    # walk_end at the second page). A page that is not written keeps its cut
    # output and stops the walk.
    m = machine()
    p = m.spawn()
    a = p.mmap(0, 3 * H2M, RW, HUGE)
    for i in range(2):
        p.write(a + i * H2M, b"x")
    wp_async(p, (a, 3 * H2M))
    assert rel(p.pagemap_scan(a, a + 2 * H2M, WPM, W, 0, 0, W, max_pages=100), a) == ([], H2M)
    assert rel(p.pagemap_scan(a, a + 2 * H2M, WPM, W, 0, 0, W, max_pages=600), a) == ([(0, H2M, W)], H2M)
    assert p.pagemap(a).uffd_wp and not p.pagemap(a + H2M).uffd_wp
    # (a + H2M is written, a is protected now) both pages match category 0
    assert rel(p.pagemap_scan(a, a + 2 * H2M, WPM, 0, 0, 0, W, max_pages=100), a) == ([(0, 100 * PAGE, 0)],
                                                                                       100 * PAGE)


def test_without_an_output_vector_a_cut_huge_page_still_sets_walk_end():
    # vec_len 0: nothing is output, but the backout's walk_end is written
    # back (the engine's pte path returns `end`); the cut page stays
    # unprotected, the whole one is protected.
    m = machine()
    p = m.spawn()
    a = p.mmap(0, 2 * H2M, RW, HUGE)
    p.write(a, b"x")
    p.write(a + H2M, b"y")
    wp_async(p, (a, 2 * H2M))
    assert rel(p.pagemap_scan(a, a + H2M + PAGE, WPM, W, 0, 0, W, vec_len=0), a) == ([], H2M)
    assert p.pagemap(a).uffd_wp and not p.pagemap(a + H2M).uffd_wp


def test_wp_matching_never_protects_a_none_entry():
    # A none entry is not WRITTEN, and pagemap_scan_hugetlb_entry protects
    # only written entries: it matches category 0 and is reported, but no
    # marker appears (the pte path's exclusive-WP would arm one).
    m = machine()
    p = m.spawn()
    a = p.mmap(0, 2 * H2M, RW, HUGE)
    p.write(a, b"x")
    wp_async(p, (a, 2 * H2M))
    for vec_len in (1 << 30, 0):
        p.pagemap_scan(a + H2M, a + 2 * H2M, WPM, 0, 0, 0, ALL, vec_len=vec_len)
        assert cats(p, a + H2M, H2M) == {0: WPA | HUGEC | SD}


# ---- holes: pagemap_scan_pte_hole --------------------------------------------------------

@pytest.mark.parametrize("vec_len", [1 << 30, 0])
def test_a_hole_matching_under_wp_matching_gets_markers_on_whole_huge_pages(vec_len):
    # pagemap_scan_hugetlb_hole_wp() (the self-deadlock fix): markers
    # installed inline, from the huge page holding the cut start on - the
    # whole huge page even where the range cut it. The hole matches
    # "not present" (no HUGE, no WRITTEN: its categories are the VMA's).
    m = machine()
    p = m.spawn()
    a = p.mmap(0, 2 * H2M, RW, HUGE)
    wp_async(p, (a, 2 * H2M))
    res = p.pagemap_scan(a + PAGE, a + 2 * PAGE, WPM, PRES, 0, PRES, ALL, vec_len=vec_len)
    assert rel(res, a) == (([(PAGE, 2 * PAGE, WPA | SD)] if vec_len else []), 2 * PAGE)
    assert cats(p, a, 2 * H2M) == {0: WPA | SD | HUGEC | SWP, H2M: WPA | SD | HUGEC}
    p.write(a + 3, b"w")                        # WP_ASYNC: the marker goes, the write lands
    assert p.read(a, 4) == b"\0\0\0w"
    m.check()


def test_a_hole_cut_at_the_end_of_a_one_gib_page_marks_the_whole_page():
    # The same for a 1 GiB page, whose hole is a missing PUD table: the
    # marker covers the page from its start, not from the cut.
    m = machine(n2m=0, n1g=1)
    p = m.spawn()
    a = p.mmap(0, H1G, RW, HUGE | C.MAP_HUGE_1GB)
    wp_async(p, (a, H1G))
    assert cats(p, a, H1G) == {x: WPA | SD for x in range(0, H1G, H2M)}
    cut = a + H1G - 2 * PAGE
    assert rel(p.pagemap_scan(cut, cut + PAGE, WPM, PRES, 0, PRES, ALL), a) == \
        ([(H1G - 2 * PAGE, H1G - PAGE, WPA | SD)], H1G - PAGE)
    assert cats(p, a, H1G) == {x: WPA | SD | HUGEC | SWP for x in range(0, H1G, H2M)}
    m.check()


def test_a_one_gib_page_under_an_existing_pud_table_is_a_none_entry():
    # For a 1 GiB page huge_pte_offset() returns the PUD entry once the PUD
    # table exists (here for a small page in the same 512 GiB): an empty
    # one is a none entry, HUGE, not a hole.
    m = machine(n2m=0, n1g=1)
    p = m.spawn()
    a = p.mmap(0, H1G, RW, HUGE | C.MAP_HUGE_1GB)
    s = p.mmap(0, PAGE, RW, C.MAP_PRIVATE | C.MAP_ANONYMOUS)
    assert s >> 39 == a >> 39
    assert cats(p, a, H2M) == {0: SD}
    p.write(s, b"x")
    assert cats(p, a, H2M) == {0: SD | HUGEC}


def test_before_the_fix_a_hole_under_wp_matching_deadlocks_the_scan():
    # Before the fix pagemap_scan_pte_hole() called uffd_wp_range(), whose
    # hugetlb_change_protection() takes the VMA's hugetlb lock for write
    # while walk_hugetlb_range() holds it for read: the ioctl never returns.
    # What the walk protected before the hole stays protected.
    m = machine(BEFORE)
    p = m.spawn()
    b = p.mmap(0, H2M, RW, HUGE)
    a = p.mmap(b - H1G, H2M, RW, C.MAP_PRIVATE | C.MAP_ANONYMOUS | C.MAP_FIXED_NOREPLACE)
    p.write(a, b"x")                            # a page table a GiB below: b's has none
    wp_async(p, (a, H2M), (b, H2M))
    lo, hi = a, b + H2M
    with pytest.raises(Deadlock):
        p.pagemap_scan(lo, hi, WPM, 0, 0, 0, ALL)                 # every page matches
    assert cats(p, b, H2M) == {0: WPA | SD}                       # no marker
    assert p.pagemap(a).uffd_wp                                   # the anon page before it was done
    # Matching only written pages, the hole is not interesting: no deadlock.
    p.pagemap_scan(lo, hi, WPM, W, 0, 0, W)
    with pytest.raises(Deadlock):
        p.pagemap_scan(b, b + H2M, WPM, PRES, 0, PRES, ALL, vec_len=0)


# ---- 1 GiB pages -------------------------------------------------------------------------

@pytest.mark.parametrize("kernel", [FIXED, BEFORE])
def test_a_one_gib_page_is_protected_whole_only_with_huge_page_size(kernel):
    # The whole-page test compared the output with HPAGE_SIZE (2 MiB) until
    # the fix: a 1 GiB page is then always "partial" - backed out, never
    # protected - except when the range is exactly its last 2 MiB, which
    # protects the whole 1 GiB entry. With huge_page_size() it is the
    # other way round (the 6.18.44 host agrees on the fixed side).
    m = machine(kernel, n2m=0, n1g=1)
    p = m.spawn()
    a = p.mmap(0, H1G, RW, HUGE | C.MAP_HUGE_1GB)
    p.write(a, b"x")
    u = wp_async(p, (a, H1G))
    assert cats(p, a, H1G)[0] & (HUGEC | PRES | WR) == HUGEC | PRES | WR
    tail = rel(p.pagemap_scan(a + H1G - H2M, a + H1G, WPM, W, 0, 0, W), a)
    if kernel == FIXED:
        assert tail == ([], H1G - H2M) and not p.pagemap(a).uffd_wp
        assert rel(p.pagemap_scan(a, a + H1G, WPM, W, 0, 0, W), a) == ([(0, H1G, W)], H1G)
        assert p.pagemap(a + H1G - PAGE).uffd_wp
    else:
        assert tail == ([(H1G - H2M, H1G, W)], H1G) and p.pagemap(a).uffd_wp
        u.writeprotect(a, H1G, 0)
        assert rel(p.pagemap_scan(a, a + H1G, WPM, W, 0, 0, W), a) == ([], 0)
        assert not p.pagemap(a).uffd_wp
    m.check()


# ---- eras ----------------------------------------------------------------------------------

def test_the_fixes_reach_their_stable_releases():
    from mmemu.eras import policy_for
    for knob in ("pagemap_scan_hugetlb_psize", "pagemap_scan_hugetlb_hole_wp"):
        assert getattr(policy_for("6.18"), knob) == 0 and getattr(policy_for("6.18.43"), knob) == 0
        assert getattr(policy_for("6.18.44"), knob) == 1 and getattr(policy_for("6.12.118"), knob) == 1
        assert getattr(policy_for("6.12.117"), knob) == 0
    assert policy_for("6.12", ["pagemap-scan-hugetlb-hole-deadlock"]).pagemap_scan_hugetlb_hole_wp == 1


# ---- a migration entry ------------------------------------------------------------------

def scan_during_migration(how):
    """A written private hugetlb page (WP_ASYNC-registered) migrates to node
    1; between its unmap and its remap another thread scans it and, with
    `how`, write-protects it: "scan" by PAGEMAP_SCAN's WP_MATCHING, "ioctl"
    by UFFDIO_WRITEPROTECT. Returns (machine, process, address, what the
    thread saw)."""
    from mmemu.sched import Scheduler, preempt_at
    m = mmemu.Machine(kernel=FIXED, memory=64 << 20, nodes=2, ncpus=2, hugepages={H2M: 4})
    p = m.spawn()
    a = p.mmap(0, H2M, RW, HUGE)
    p.write(a, b"M")
    u = wp_async(p, (a, H2M))
    t = p.thread(cpu=1)
    got = {}

    def mover():
        got["st"] = p.move_pages([a], [1], C.MPOL_MF_MOVE)

    def scanner():
        got["before"] = cats(p, a, H2M)
        if how == "scan":
            got["wp"] = rel(t.process.pagemap_scan(a, a + H2M, WPM, W, 0, 0, W), a)
        else:
            u.writeprotect(a, H2M, U.UFFDIO_WRITEPROTECT_MODE_WP)
        got["after"] = cats(p, a, H2M)

    Scheduler(m, preempt_at("unmap_and_move_huge_page", "scanner")).run([mover, scanner], ["mover", "scanner"])
    assert got["st"] == [1] and m.node_of(p.pagemap(a).pfn) == 1
    return m, p, a, got


def test_a_migration_entry_reads_swapped_and_scan_wp_keeps_it_writable():
    # pagemap_hugetlb_category() on a migration entry: SWAPPED (not
    # PRESENT), WRITTEN unless it has the swp uffd-wp bit, no FILE test.
    # make_uffd_wp_huge_pte() only sets that bit and keeps a writable
    # entry writable, so remove_migration_pte() maps the page writable and
    # without uffd-wp: after the migration the page reads WRITTEN again
    # and the write-protect is gone (hugetlb_change_protection, the
    # UFFDIO_WRITEPROTECT path, makes the entry readable: it comes back
    # uffd-wp).
    m, p, a, got = scan_during_migration("scan")
    assert got["before"] == {0: WPA | SD | HUGEC | SWP | WR}
    assert got["wp"] == ([(0, H2M, W)], H2M)
    assert got["after"] == {0: WPA | SD | HUGEC | SWP}
    assert cats(p, a, H2M)[0] & (PRES | WR) == PRES | WR and not p.pagemap(a).uffd_wp
    m.check()
    m, p, a, got = scan_during_migration("ioctl")
    assert got["after"] == {0: WPA | SD | HUGEC | SWP}
    assert cats(p, a, H2M)[0] & (PRES | WR) == PRES and p.pagemap(a).uffd_wp
    m.check()
