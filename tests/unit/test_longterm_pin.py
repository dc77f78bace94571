"""ZONE_MOVABLE, CMA and FOLL_LONGTERM (core/zones.pxi; semantics.md 4.1, 14).

A machine may have a ZONE_MOVABLE (movablecore= / kernelcore=) and a CMA area
(cma=). User pages come from ZONE_MOVABLE first, then ZONE_NORMAL (the CMA
area first while it holds over half of the zone's free memory); page tables
only from ZONE_NORMAL. A long-term pin must not hold a page in CMA (every
modelled version: 9a4e9f3b2d73, 5.1) or in ZONE_MOVABLE (d1e153fea2a8, 5.13):
GUP migrates such a page first, so the pagemap pfn changes and the contents
stay. Faults inside the GUP avoid those zones (CMA always; ZONE_MOVABLE since
8e3560d963d2, 5.13). A page that cannot be migrated fails the pin with
ENOMEM since f0f4463837da (5.13; 5.10.38), and before is pinned where it is.
The migration target avoids both zones (GFP_USER), except in 5.9-5.12, where
it may be ZONE_MOVABLE (41b4dc14ee80 until c991ffef7bce).

Each test says what a failure means.
"""
import errno
import pickle

import pytest

import mmemu
from mmemu import constants as C

PAGE = C.PAGE_SIZE
RW = C.PROT_READ | C.PROT_WRITE
ANON = C.MAP_PRIVATE | C.MAP_ANONYMOUS
LT_W = C.FOLL_WRITE | C.FOLL_LONGTERM


def _movable(kernel, memory=4 << 20, movablecore=2 << 20, **kw):
    return mmemu.Machine(kernel=kernel, memory=memory, movablecore=movablecore, **kw)


def _written(p, npages, tag=b"page"):
    a = p.mmap(0, npages * PAGE, RW, ANON)
    for i in range(npages):
        p.write(a + i * PAGE, tag + b"%d" % i)
    return a


def _zones(m, p, a, npages):
    return [m.zone_of(p.pagemap(a + i * PAGE).pfn) for i in range(npages)]


# ---- the zones ---------------------------------------------------------------------

def test_zone_follows_from_the_pfn_top_of_each_node():
    """ZONE_MOVABLE is the top of every node, the CMA area the top of node 0's
    ZONE_NORMAL; pfn 0 (the zero page) is ZONE_NORMAL. If not, zone_of
    disagrees with the boot layout movablecore= describes."""
    m = mmemu.Machine(memory=8 << 20, nodes=2, movablecore=2 << 20, cma=1 << 20)
    frames, span = 2048, 1024
    per_node = (2 << 20) // PAGE // 2
    for n in range(2):
        top = (n + 1) * span
        assert m.zone_of(top - 1) == "Movable" and m.zone_of(top - per_node) == "Movable"
        assert m.zone_of(top - per_node - 1) == ("CMA" if n == 0 else "Normal")
    assert m.zone_of(span - per_node - 256) == "CMA" and m.zone_of(span - per_node - 257) == "Normal"
    assert m.zone_of(0) == "Normal" and m.zone_of(span) == "Normal"
    assert m.zone_free("Movable", 0) == m.zone_free("Movable", 1) == per_node
    assert m.zone_free("CMA", 0) == 256 and m.zone_free("CMA", 1) == 0
    assert m.movablecore == 2 << 20 and m.cma == 1 << 20 and frames == m._engine.nframes
    m.check()


def test_user_pages_come_from_zone_movable_first_page_tables_never():
    """GFP_HIGHUSER_MOVABLE: anon and shmem pages take ZONE_MOVABLE first;
    page tables (GFP_KERNEL) are charged to ZONE_NORMAL only. If page tables
    could use ZONE_MOVABLE, filling it would not leave ZONE_NORMAL's frames
    for them; if user pages went to ZONE_NORMAL first, the zones would mean
    nothing."""
    m = _movable("6.18")
    p = m.spawn()
    normal0 = m.zone_free("Normal")
    a = _written(p, 123)
    assert set(_zones(m, p, a, 123)) == {"Movable"}
    fd = p.memfd_create("z")
    p.ftruncate(fd, 4 * PAGE)
    s = p.mmap(0, 4 * PAGE, RW, C.MAP_SHARED, fd, 0)
    p.write(s, b"shmem")
    assert m.zone_of(p.pagemap(s).pfn) == "Movable"
    assert m.zone_free("Normal") == normal0, "no user page took a ZONE_NORMAL frame"
    # ZONE_MOVABLE full: user pages spill into ZONE_NORMAL up to the frames
    # its page tables hold (charged there, never to ZONE_MOVABLE).
    b = p.mmap(0, 1024 * PAGE, RW, ANON)
    with pytest.raises(mmemu.OutOfMemory):
        p.touch(b, 1024, write=True)
    pgtables = m.memory_usage()["pgtable_pages"]
    assert pgtables > 0 and m.zone_free("Movable") == 0 and m.zone_free("Normal") == pgtables
    m.check()


def test_kernelcore_and_movablecore():
    """kernelcore= gives the rest to ZONE_MOVABLE; with both, kernelcore wins
    when it leaves the kernel more (find_zone_movable_pfns_for_nodes)."""
    assert mmemu.Machine(memory=4 << 20, kernelcore=1 << 20).movablecore == 3 << 20
    assert mmemu.Machine(memory=4 << 20, kernelcore=3 << 20, movablecore=3 << 20).movablecore == 1 << 20
    assert mmemu.Machine(memory=4 << 20, kernelcore=1 << 20, movablecore=1 << 20).movablecore == 1 << 20
    assert mmemu.Machine(memory=4 << 20, movablecore=1).movablecore == PAGE     # rounded up to a page
    assert mmemu.Machine(memory=4 << 20).movablecore == 0


@pytest.mark.parametrize("kw, exc, text", [
    ({"movablecore": (4 << 20) + PAGE}, ValueError, "larger than memory"),
    ({"movablecore": 4 << 20}, ValueError, "ZONE_NORMAL"),
    ({"movablecore": (4 << 20) - 8 * PAGE}, ValueError, "fewer than 16"),
    ({"kernelcore": 5 << 20}, ValueError, "larger than memory"),
    ({"kernelcore": 0}, ValueError, "ZONE_NORMAL"),
    ({"cma": 5 << 20}, ValueError, "larger than memory"),
    ({"cma": 3 << 20, "movablecore": 1 << 20}, ValueError, "ZONE_NORMAL"),
    ({"movablecore": -1}, ValueError, ">= 0"),
    ({"cma": -PAGE}, ValueError, ">= 0"),
    ({"movablecore": "1M"}, TypeError, "integer"),
    ({"kernelcore": 1.5}, TypeError, "integer"),
])
def test_bad_zone_sizes_are_clear_errors(kw, exc, text):
    """A zone layout the machine cannot have is refused at construction with
    a message naming the parameter (the kernel would ignore it silently)."""
    with pytest.raises(exc, match=text):
        mmemu.Machine(memory=4 << 20, **kw)


def test_zoned_machine_saves_and_loads():
    """The per-zone free lists survive pickle: the copy hands out the same
    frames, in the same zones, as the original, and passes check()."""
    m = _movable("6.18", cma=512 << 10)
    p = m.spawn()
    a = _written(p, 40)
    p.munmap(a + 10 * PAGE, 5 * PAGE)
    m2 = pickle.loads(pickle.dumps(m))
    m2.check()
    assert {z: m.zone_free(z) for z in m.ZONE_NAMES} == {z: m2.zone_free(z) for z in m2.ZONE_NAMES}
    got = []
    for mm in (m, m2):
        q = mm.spawn()
        b = _written(q, 8)
        got.append([q.pagemap(b + i * PAGE).pfn for i in range(8)])
    assert got[0] == got[1]
    m2.check()


def test_frame_table_budget_unchanged():
    """Zones are derived from the pfn: the frame table stays at 24 bytes a
    frame whatever the layout (the budget is 32 per resident base page)."""
    plain = mmemu.Machine(memory=4 << 20).memory_usage()["frames"]
    zoned = mmemu.Machine(memory=4 << 20, movablecore=2 << 20, cma=1 << 20).memory_usage()["frames"]
    assert plain == zoned == 1024 * 24


# ---- FOLL_LONGTERM -----------------------------------------------------------------

@pytest.mark.parametrize("kernel, moves", [("5.7", False), ("5.12", False), ("5.10.38", False),
                                           ("5.13", True), ("6.1", True), ("6.18", True)])
@pytest.mark.parametrize("npages", [1, 123, 512])
def test_longterm_pin_migrates_out_of_zone_movable_from_5_13(kernel, moves, npages):
    """d1e153fea2a8 (5.13): pin_user_pages(FOLL_LONGTERM) first migrates the
    pages it would pin out of ZONE_MOVABLE; the pagemap pfn is the pinned
    one, the contents are kept. Before 5.13 the pin holds the movable page.
    If this fails on 5.13+, a long-term pin blocks memory offlining (the
    kernel's reason for the rule); on 5.7-5.12, the rule arrived too early."""
    m = _movable(kernel, memory=8 << 20, movablecore=4 << 20)
    p = m.spawn()
    a = _written(p, npages)
    before = [p.pagemap(a + i * PAGE).pfn for i in range(npages)]
    assert set(m.zone_of(x) for x in before) == {"Movable"}
    pin = p.pin_user_pages(a, npages, LT_W)
    after = [p.pagemap(a + i * PAGE).pfn for i in range(npages)]
    assert list(pin.pfns) == after, "the pin holds what the process maps"
    assert set(m.zone_of(x) for x in after) == ({"Normal"} if moves else {"Movable"})
    assert (after != before) == moves
    for i in (0, npages // 2, npages - 1):
        assert p.read(a + i * PAGE, 8).rstrip(b"\0") == b"page%d" % i
        assert pin.read(i * PAGE, 8).rstrip(b"\0") == b"page%d" % i
    p.write(a, b"X")
    assert pin.read(0, 1) == b"X", "after the migration the pin and the mapping share one page"
    m.check()
    pin.release()
    m.check()


@pytest.mark.parametrize("kernel", ["5.12", "5.13", "6.18"])
def test_plain_pins_and_gets_keep_the_movable_page(kernel):
    """Only FOLL_LONGTERM migrates: a short-term pin or a FOLL_GET leaves the
    page in ZONE_MOVABLE in every era."""
    m = _movable(kernel)
    p = m.spawn()
    a = _written(p, 2)
    pfn = p.pagemap(a).pfn
    pin = p.pin_user_pages(a, 1, C.FOLL_WRITE)
    get = p.get_user_pages(a + PAGE, 1)
    assert pin.pfns[0] == pfn and m.zone_of(int(get.pfns[0])) == "Movable"
    pin.release()
    get.release()
    m.check()


@pytest.mark.parametrize("kernel, zone", [("5.12", "Movable"), ("5.13", "Normal"), ("6.18", "Normal")])
def test_faults_inside_a_longterm_gup_avoid_zone_movable_from_5_13(kernel, zone):
    """8e3560d963d2 (5.13): memalloc_pin_save() makes the pages a FOLL_LONGTERM
    GUP faults in come from outside ZONE_MOVABLE at once (no migration
    needed); before, only CMA is avoided (memalloc_nocma). The scope is the
    task's: allocations after the pin take ZONE_MOVABLE again."""
    m = _movable(kernel)
    p = m.spawn()
    a = p.mmap(0, 3 * PAGE, RW, ANON)
    pin = p.pin_user_pages(a, 3, LT_W)
    assert _zones(m, p, a, 3) == [zone] * 3
    b = _written(p, 1)
    assert m.zone_of(p.pagemap(b).pfn) == "Movable", "the scope ends with the GUP"
    pin.release()
    m.check()


@pytest.mark.parametrize("kernel", ["5.13", "6.18"])
def test_pin_user_pages_fast_leaves_unpinnable_pages_to_the_slow_path(kernel):
    """try_grab_folio() refuses a long-term pin of a ZONE_MOVABLE page in the
    lockless walk; the slow path migrates it. Pages already outside stay
    pinned from the fast walk."""
    m = _movable(kernel)
    p = m.spawn()
    a = p.mmap(0, 4 * PAGE, RW, ANON)
    pin0 = p.pin_user_pages(a, 2, LT_W)        # faulted in ZONE_NORMAL (5.13+)
    pin0.release()
    for i in (2, 3):
        p.write(a + i * PAGE, b"m%d" % i)      # ZONE_MOVABLE
    pin = p.pin_user_pages_fast(a, 4, LT_W)
    assert [m.zone_of(int(x)) for x in pin.pfns] == ["Normal"] * 4
    assert p.read(a + 3 * PAGE, 2) == b"m3"
    pin.release()
    m.check()


@pytest.mark.parametrize("kernel", ["5.13", "6.18"])
def test_longterm_pin_of_shmem_and_get_user_pages_longterm(kernel):
    """A shmem page-cache page is migrated with its cache slot: the file and
    every mapping see the new frame. FOLL_GET|FOLL_LONGTERM (get_user_pages)
    takes the same path with plain references."""
    m = _movable(kernel)
    p = m.spawn()
    fd = p.memfd_create("lt")
    p.ftruncate(fd, 2 * PAGE)
    s = p.mmap(0, 2 * PAGE, RW, C.MAP_SHARED, fd, 0)
    s2 = p.mmap(0, 2 * PAGE, RW, C.MAP_SHARED, fd, 0)
    p.write(s, b"cache")
    p.write(s + PAGE, b"two")
    assert m.zone_of(p.pagemap(s).pfn) == "Movable"
    pin = p.pin_user_pages(s, 1, LT_W)
    assert m.zone_of(int(pin.pfns[0])) == "Normal" and p.pagemap(s).pfn == pin.pfns[0]
    assert p.read(s2, 5) == b"cache" and p.pread(fd, 5, 0) == b"cache"
    get = p.get_user_pages(s + PAGE, 1, C.FOLL_LONGTERM)
    assert m.zone_of(int(get.pfns[0])) == "Normal" and p.read(s2 + PAGE, 3) == b"two"
    pin.release()
    get.release()
    m.check()


@pytest.mark.parametrize("kernel, outcome", [("5.12", "Movable"), ("5.13", errno.ENOMEM),
                                             ("6.18", errno.ENOMEM)])
def test_busy_movable_page_fails_the_pin_with_enomem(kernel, outcome):
    """A page another reference holds (a vmsplice pipe) cannot be migrated:
    migrate_pages() fails and since f0f4463837da (5.13) the pin fails with
    ENOMEM, no reference left behind, the page still mapped. (5.12 does not
    migrate ZONE_MOVABLE pages at all.)"""
    m = _movable(kernel)
    p = m.spawn()
    a = _written(p, 2)
    pfn = p.pagemap(a).pfn
    pipe = p.vmsplice(a, PAGE)
    if isinstance(outcome, int):
        with pytest.raises(OSError) as e:
            p.pin_user_pages(a, 2, LT_W)
        assert e.value.errno == outcome
        assert p.pagemap(a).pfn == pfn and p.read(a, 5) == b"page0"
        assert m.zone_of(p.pagemap(a + PAGE).pfn) == "Normal", "the other page did migrate"
        m.check()
    else:
        pin = p.pin_user_pages(a, 2, LT_W)
        assert m.zone_of(int(pin.pfns[0])) == outcome
        pin.release()
    assert pipe.read(5) == b"page0"
    m.check()


@pytest.mark.parametrize("kernel", ["5.13", "6.18"])
def test_no_normal_frame_fails_the_pin_with_enomem(kernel):
    """alloc_migration_target() with GFP_USER finds no ZONE_NORMAL frame (the
    last ones hold page tables): ENOMEM, and the page stays where it was."""
    m = _movable(kernel)
    p = m.spawn()
    a = _written(p, 1)
    pfn = p.pagemap(a).pfn
    b = p.mmap(0, 2048 * PAGE, RW, ANON)
    with pytest.raises(mmemu.OutOfMemory):
        p.touch(b, 2048, write=True)
    with pytest.raises(OSError) as e:
        p.pin_user_pages(a, 1, LT_W)
    assert e.value.errno == errno.ENOMEM
    assert p.pagemap(a).pfn == pfn and p.read(a, 5) == b"page0"
    m.check()


def _cma_page(kernel, **kw):
    """A machine whose CMA area holds most free memory (so user pages take it
    first), and one written page there."""
    m = mmemu.Machine(kernel=kernel, memory=4 << 20, cma=3 << 20, **kw)
    p = m.spawn()
    a = _written(p, 1)
    assert m.zone_of(p.pagemap(a).pfn) == "CMA"
    return m, p, a


@pytest.mark.parametrize("kernel", ["5.7", "5.12", "5.13", "6.18"])
def test_cma_pages_are_migrated_in_every_era(kernel):
    """9a4e9f3b2d73 (5.1) predates every modelled version: a long-term pin of
    a CMA page migrates it out of the CMA area first."""
    m, p, a = _cma_page(kernel)
    pin = p.pin_user_pages(a, 1, LT_W)
    assert m.zone_of(int(pin.pfns[0])) == "Normal" and p.read(a, 5) == b"page0"
    pin.release()
    m.check()


@pytest.mark.parametrize("kernel, outcome", [("5.7", "CMA"), ("5.12", "CMA"), ("5.10.37", "CMA"),
                                             ("5.10.38", errno.ENOMEM), ("5.13", errno.ENOMEM),
                                             ("6.18", errno.ENOMEM)])
def test_failed_cma_migration_pins_in_place_before_f0f4463837da(kernel, outcome):
    """Before f0f4463837da (5.13; 5.10.y from 5.10.38) a failed migration
    made GUP pin without migrating: the long-term pin holds a CMA page (what
    the fix calls 'pin CMA movable pages which should never be the case').
    Since, the pin fails with ENOMEM."""
    m, p, a = _cma_page(kernel)
    pipe = p.vmsplice(a, PAGE)
    if isinstance(outcome, int):
        with pytest.raises(OSError) as e:
            p.pin_user_pages(a, 1, LT_W)
        assert e.value.errno == outcome
    else:
        pin = p.pin_user_pages(a, 1, LT_W)
        assert m.zone_of(int(pin.pfns[0])) == outcome
        m.check()
        pin.release()
    pipe.close()
    m.check()


@pytest.mark.parametrize("kernel, zone", [("5.8", "Normal"), ("5.9", "Movable"), ("5.12", "Movable"),
                                          ("5.13", "Normal"), ("6.18", "Normal")])
def test_cma_migration_target_may_be_zone_movable_in_5_9_to_5_12(kernel, zone):
    """41b4dc14ee80 (5.9) gave the CMA migration target __GFP_MOVABLE back
    (CMA kept out by memalloc_nocma), so a page leaving CMA could land in
    ZONE_MOVABLE; c991ffef7bce (5.13) removed it again."""
    m = mmemu.Machine(kernel=kernel, memory=4 << 20, movablecore=1 << 20, cma=2 << 20)
    p = m.spawn()
    fill = p.mmap(0, 256 * PAGE, RW, ANON)
    p.touch(fill, 256, write=True)                 # ZONE_MOVABLE is full
    a = _written(p, 1)
    assert m.zone_of(p.pagemap(a).pfn) == "CMA"
    p.munmap(fill, 16 * PAGE)                      # room in ZONE_MOVABLE again
    pin = p.pin_user_pages(a, 1, LT_W)
    assert m.zone_of(int(pin.pfns[0])) == zone and p.read(a, 5) == b"page0"
    pin.release()
    m.check()


def test_longterm_pin_prefers_the_pages_node():
    """alloc_migration_target(): the source folio's node first, then the
    others (no __GFP_THISNODE)."""
    m = mmemu.Machine(kernel="6.18", memory=8 << 20, nodes=2, movablecore=4 << 20)
    p = m.spawn()
    a = _written(p, 1)
    pfn = p.pagemap(a).pfn
    st = p.move_pages([a], [1], C.MPOL_MF_MOVE)
    assert st == [1]
    assert m.zone_of(p.pagemap(a).pfn) == "Movable" and m.node_of(p.pagemap(a).pfn) == 1 != m.node_of(pfn)
    pin = p.pin_user_pages(a, 1, LT_W)
    assert m.zone_of(int(pin.pfns[0])) == "Normal" and m.node_of(int(pin.pfns[0])) == 1
    pin.release()
    m.check()


def test_a_machine_without_zones_never_migrates_for_a_pin():
    """No ZONE_MOVABLE, no CMA: FOLL_LONGTERM is a plain pin (the page stays)."""
    m = mmemu.Machine(kernel="6.18", memory=4 << 20)
    p = m.spawn()
    a = _written(p, 1)
    pfn = p.pagemap(a).pfn
    assert m.zone_of(pfn) == "Normal" and not m._engine.longterm_migrates
    pin = p.pin_user_pages(a, 1, LT_W)
    assert pin.pfns[0] == pfn
    pin.release()
    m.check()
