"""Page migration and NUMA hinting (core/migrate.pxi, mmemu/numa.py):
move_pages(2)'s statuses and call errors, try_to_migrate_one's entry types,
remove_migration_pte's rebuilt pte, pins, shared pages, shmem, the swapcache,
the wait on a migration entry, NUMA hinting per era, and save/load.
Rules: semantics.md section 14; mm/migrate.c, mm/rmap.c, mm/memory.c."""
import errno

import numpy as np
import pytest

import mmemu
from mmemu import (FOLL_GET, FOLL_LONGTERM, FOLL_WRITE, MAP_ANONYMOUS, MAP_PRIVATE, MAP_SHARED,
                   MPOL_BIND, MPOL_MF_MOVE, MPOL_MF_MOVE_ALL, MPOL_MF_STRICT, MPOL_INTERLEAVE,
                   PAGE_SIZE as PAGE, PROT_READ, PROT_WRITE)
from mmemu import constants as C
from mmemu.sched import Scheduler, preempt_at
from migration_window import during_migration

RW = PROT_READ | PROT_WRITE
PRIV = MAP_PRIVATE | MAP_ANONYMOUS
PTE_WRITE, PTE_SOFT_DIRTY, PTE_UFFD_WP, PTE_PROTNONE = 1 << 1, 1 << 4, 1 << 5, 1 << 7
SWP_MIGRATION_READ, SWP_MIGRATION_RX, SWP_MIGRATION_WRITE = 2, 3, 4


def machine(kernel="6.18", **kw):
    kw.setdefault("memory", 4096 * PAGE)
    return mmemu.Machine(kernel=kernel, nodes=kw.pop("nodes", 2), **kw)


def anon(m, n=1, data=b"d"):
    p = m.spawn()
    a = p.mmap(0, n * PAGE, RW, PRIV)
    for i in range(n):
        p.write(a + i * PAGE, data)
    return p, a


def entries_at_unmap(m, call):
    """The ptes (mm, va) -> value seen at SP_MIGRATION_UNMAPPED, while call() runs."""
    eng, seen = m._engine, {}

    def hook(point, mm, va, aux):
        if point == 11:                    # SP_MIGRATION_UNMAPPED
            for p in m.processes:
                for v in p.vmas:
                    for a in range(v.start, v.end, PAGE):
                        seen[(p.mm, a)] = eng.pte(p.mm, a)
    eng.set_sched_hook(hook)
    try:
        out = call()
    finally:
        eng.set_sched_hook(None)
    return out, seen


def swp_type(pte):
    return (pte >> 1) & 7 if not pte & 1 else None


# ---- nodes ------------------------------------------------------------------

def test_nodes_split_the_frames_and_cost_no_engine_state():
    m1, m4 = mmemu.Machine(memory=4096 * PAGE), mmemu.Machine(memory=4096 * PAGE, nodes=4)
    assert m1.memory_usage()["frames"] == m4.memory_usage()["frames"]
    assert [m4.node_of(pfn) for pfn in (0, 1023, 1024, 4095)] == [0, 0, 1, 3]
    assert [m4._engine.cpu_node(c) for c in range(2)] == [0, 2]
    with pytest.raises(ValueError):
        mmemu.Machine(memory=40 * PAGE, nodes=4)          # nodes of fewer than 16 frames
    with pytest.raises(ValueError):
        mmemu.Machine(nodes=0)


def test_a_node_runs_out_alone_and_default_allocations_fall_back_to_the_next():
    m = machine(memory=64 * PAGE)                           # 32 frames a node
    p, a = anon(m, 40)
    nodes = [m.node_of(p.pagemap(a + i * PAGE).pfn) for i in range(40)]
    assert nodes[0] == 0 and nodes[-1] == 1 and nodes == sorted(nodes)
    b = p.mmap(0, PAGE, RW, PRIV)
    p.write(b, b"x")
    assert p.move_pages([b], [1], MPOL_MF_MOVE) == [1]      # node 0 is full: b is on node 1 already
    # node 1 has room, node 0 has none: a move to node 0 is ENOMEM for the call
    assert m._engine.node_free(0) == 0
    with pytest.raises(OSError) as ei:
        p.move_pages([b], [0], MPOL_MF_MOVE)
    assert ei.value.errno == errno.ENOMEM
    assert p.read(b, 1) == b"x" and m.node_of(p.pagemap(b).pfn) == 1
    m.check()


# ---- move_pages(2): statuses and call errors --------------------------------

def test_status_of_each_kind_of_page():
    m = machine()
    p, a = anon(m, 2)
    z = p.mmap(0, 2 * PAGE, RW, PRIV)
    p.read(z, 1)                                            # the zero page
    st = p.move_pages([a, z, z + PAGE, 0x10000])
    assert st == [0, -errno.EFAULT, -errno.ENOENT, -errno.EFAULT]
    st = p.move_pages([a, z, z + PAGE, 0x10000, a + PAGE], [1] * 5, MPOL_MF_MOVE)
    assert st == [1, -errno.EFAULT, -errno.ENOENT, -errno.EFAULT, 1] and st.not_migrated == 0
    assert p.move_pages([a, a + PAGE]) == [1, 1]
    m.check()


def test_a_page_listed_twice_is_busy_the_second_time():
    m = machine()
    p, a = anon(m)
    assert p.move_pages([a, a], [1, 1], MPOL_MF_MOVE) == [1, -errno.EBUSY]


def test_bad_node_and_flags_fail_the_call_after_the_pages_before_it():
    m = machine()
    p, a = anon(m, 3)
    with pytest.raises(OSError) as ei:
        p.move_pages([a, a + PAGE, a + 2 * PAGE], [1, 2, 1], MPOL_MF_MOVE)
    assert ei.value.errno == errno.ENODEV
    assert ei.value.status[0] == 1 and p.move_pages([a, a + 2 * PAGE]) == [1, 0]
    with pytest.raises(OSError) as ei:
        p.move_pages([a], [-1], MPOL_MF_MOVE)
    assert ei.value.errno == errno.ENODEV
    with pytest.raises(OSError) as ei:
        p.move_pages([a], [1], 8)
    assert ei.value.errno == errno.EINVAL
    with pytest.raises(ValueError):
        p.move_pages([a, a], [1], MPOL_MF_MOVE)
    with pytest.raises(TypeError):
        p.move_pages(["x"])
    m.check()


def test_a_failed_batch_ends_the_call_and_counts_the_rest():
    """do_pages_move: a batch with a page that could not move returns the
    pages not migrated, those never tried included, and stops."""
    m = machine()
    p, a = anon(m, 4)
    pin = p.pin_user_pages(a + PAGE, 1, FOLL_WRITE)
    st = p.move_pages([a + i * PAGE for i in range(4)], [1, 1, 0, 1], MPOL_MF_MOVE)
    # batch [a, a+P] to node 1: a+P fails; a+2P (node 0, already there) and a+3P never tried
    assert st.not_migrated == 3
    assert st[0] == 1 and st[1] == -errno.EAGAIN and st[3] == -errno.EAGAIN
    assert p.move_pages([a + i * PAGE for i in range(4)]) == [1, 0, 0, 0]
    pin.release()
    m.check()


# ---- the entry types and the rebuilt pte -------------------------------------

@pytest.mark.parametrize("kernel", ["5.18", "5.19", "6.18"])
def test_entry_type_follows_write_and_exclusivity(kernel):
    """try_to_migrate_one: writable if the pte was; else readable-exclusive
    for a PageAnonExclusive page (5.19+); else readable. The soft-dirty and
    uffd-wp bits ride along."""
    m = machine(kernel)
    p, a = anon(m, 3)
    p.mprotect(a + PAGE, PAGE, PROT_READ)                   # R/O, exclusive
    st, seen = entries_at_unmap(m, lambda: p.move_pages([a, a + PAGE], [1, 1], MPOL_MF_MOVE))
    assert st == [1, 1]
    pae = m.policy.anon_exclusive
    assert swp_type(seen[(p.mm, a)]) == SWP_MIGRATION_WRITE
    assert swp_type(seen[(p.mm, a + PAGE)]) == (SWP_MIGRATION_RX if pae else SWP_MIGRATION_READ)
    assert seen[(p.mm, a)] & PTE_SOFT_DIRTY
    for va in (a, a + PAGE):
        assert ("anon_exclusive" in m.frame(p.pagemap(va).pfn).flags) == bool(pae)
    # rebuilt: writable only from the writable entry
    assert m._engine.pte(p.mm, a) & PTE_WRITE and not m._engine.pte(p.mm, a + PAGE) & PTE_WRITE
    # a page once shared by fork (R/O, not exclusive since): readable in
    # every era, and it stays not exclusive
    p.fork().exit()
    st, seen = entries_at_unmap(m, lambda: p.move_pages([a + 2 * PAGE], [1], MPOL_MF_MOVE))
    assert st == [1]
    assert swp_type(seen[(p.mm, a + 2 * PAGE)]) == SWP_MIGRATION_READ
    assert "anon_exclusive" not in m.frame(p.pagemap(a + 2 * PAGE).pfn).flags
    m.check()


def test_data_and_flags_move_and_the_old_frame_is_freed():
    m = machine()
    p, a = anon(m)
    blob = bytes(range(256)) * 16
    p.write(a, blob)
    old = p.pagemap(a).pfn
    free0, free1 = m._engine.node_free(0), m._engine.node_free(1)
    assert p.move_pages([a], [1], MPOL_MF_MOVE) == [1]
    new = p.pagemap(a).pfn
    assert p.read(a, PAGE) == blob and new != old
    assert (m._engine.node_free(0), m._engine.node_free(1)) == (free0 + 1, free1 - 1)
    assert "anon" in m.frame(new).flags and m.frame(new).mapcount == 1 and m.frame(new).refcount == 1
    assert not m._engine.frame_info(old)[3]                 # free
    m.check()


def test_soft_dirty_survives_and_stays_clear_when_cleared():
    m = machine()
    p, a = anon(m, 2)
    p.clear_refs(4)
    p.write(a, b"w")                                        # soft-dirty again
    assert p.move_pages([a, a + PAGE], [1, 1], MPOL_MF_MOVE) == [1, 1]
    assert p.pagemap(a).soft_dirty and not p.pagemap(a + PAGE).soft_dirty


@pytest.mark.parametrize("kernel", ["5.18", "6.18"])
def test_pinned_and_referenced_pages_do_not_move(kernel):
    """A pin (5.19+: refused at the unmap; before: the refcount check) and a
    plain GUP reference (the refcount check, every era) keep the page; the
    page comes back as it was, exclusive if it was."""
    m = machine(kernel)
    p, a = anon(m, 2)
    pin = p.pin_user_pages(a, 1, FOLL_WRITE | FOLL_LONGTERM)
    ref = p.get_user_pages(a + PAGE, 1, FOLL_GET)
    pfns = [p.pagemap(a).pfn, p.pagemap(a + PAGE).pfn]
    st = p.move_pages([a, a + PAGE], [1, 1], MPOL_MF_MOVE)
    assert st.not_migrated == 2 and list(st) == [-errno.EAGAIN] * 2
    assert [p.pagemap(a).pfn, p.pagemap(a + PAGE).pfn] == pfns
    for pfn in pfns:
        assert ("anon_exclusive" in m.frame(pfn).flags) == bool(m.policy.anon_exclusive)
    assert m._engine.pte(p.mm, a) & PTE_WRITE                # mapped back writable
    p.write(a, b"P")
    assert pin.read(0, 1) == b"P"
    pin.release()
    ref.release()
    assert p.move_pages([a, a + PAGE], [1, 1], MPOL_MF_MOVE) == [1, 1]
    m.check()


def test_a_fresh_page_in_a_per_cpu_batch_moves_because_move_pages_drains_them():
    m = machine("5.10")
    p, a = anon(m)
    assert p.move_pages([a], [1], MPOL_MF_MOVE) == [1]
    m.check()


def test_shared_page_needs_move_all_and_both_mappers_follow():
    m = machine()
    p, a = anon(m)
    c = p.fork()
    assert p.move_pages([a], [1], MPOL_MF_MOVE) == [-errno.EACCES]
    assert c.move_pages([a], [1], MPOL_MF_MOVE_ALL) == [1]
    assert p.pagemap(a).pfn == c.pagemap(a).pfn and m.node_of(p.pagemap(a).pfn) == 1
    p.write(a, b"p")
    assert c.read(a, 1) == b"d"
    m.check()


def test_shmem_folio_moves_in_the_cache_and_in_every_mapping():
    m = machine()
    p = m.spawn()
    fd = p.memfd_create("m")
    p.ftruncate(fd, 2 * PAGE)
    s1 = p.mmap(0, 2 * PAGE, RW, MAP_SHARED, fd, 0)
    p.write(s1, b"shm")
    c = p.fork()                                # fork copies no shared-file ptes
    s2 = c.mmap(0, 2 * PAGE, PROT_READ, MAP_SHARED, fd, 0)
    assert c.read(s2, 3) == b"shm" and c.read(s1, 3) == b"shm"
    assert p.move_pages([s1], [1], MPOL_MF_MOVE) == [-errno.EACCES]       # three mappings
    assert p.move_pages([s1], [1], MPOL_MF_MOVE_ALL) == [1]
    pfn = p.pagemap(s1).pfn
    assert c.pagemap(s1).pfn == pfn == c.pagemap(s2).pfn and m.node_of(pfn) == 1
    assert "file" in m.frame(pfn).flags and m.frame(pfn).mapcount == 3
    assert p.pread(fd, 3, 0) == b"shm"
    c.write(s1, b"X")                                       # shared: writable again (vm_page_prot)
    assert p.read(s1, 1) == b"X" and c.read(s2, 1) == b"X"
    m.check()


def test_a_swapcache_page_moves_with_its_swap_slot():
    m = machine(swap=64 * PAGE)
    p, a = anon(m)
    p.madvise(a, PAGE, mmemu.MADV_PAGEOUT)
    p.read(a, 1)                                            # back from swap, still in the swapcache
    pfn = p.pagemap(a).pfn
    assert "swapcache" in m.frame(pfn).flags
    assert p.move_pages([a], [1], MPOL_MF_MOVE) == [1]
    new = p.pagemap(a).pfn
    assert "swapcache" in m.frame(new).flags and m.frame(new).refcount == 2
    m.check()                                               # the swapcache names the new frame
    p.write(a, b"w")
    assert p.read(a, 1) == b"w"
    m.check()


def test_uffd_wp_shmem_page_comes_back_writable_only_in_b15s_era():
    """remove_migration_pte rebuilds from vm_page_prot: 5.19-6.1 shmem has
    write there and pte_mkuffd_wp leaves it (B15); 6.2 (51d3d5eb74ff) not."""
    for kernel, writable in (("6.1", True), ("6.2", False), ("6.1.176", False)):
        m = machine(kernel)
        p = m.spawn()
        fd = p.memfd_create("m")
        p.ftruncate(fd, PAGE)
        s = p.mmap(0, PAGE, RW, MAP_SHARED, fd, 0)
        u = p.userfaultfd(mmemu.uffd.O_NONBLOCK)
        u.api(mmemu.uffd.UFFD_FEATURE_PAGEFAULT_FLAG_WP | mmemu.uffd.UFFD_FEATURE_WP_HUGETLBFS_SHMEM)
        u.register(s, PAGE, mmemu.uffd.UFFDIO_REGISTER_MODE_WP)
        p.write(s, b"1")
        u.writeprotect(s, PAGE, mmemu.uffd.UFFDIO_WRITEPROTECT_MODE_WP)
        assert p.move_pages([s], [1], MPOL_MF_MOVE) == [1]
        pte = m._engine.pte(p.mm, s)
        assert pte & PTE_UFFD_WP and bool(pte & PTE_WRITE) == writable, kernel
        m.check()


# ---- mbind ---------------------------------------------------------------------

def test_mbind_bind_moves_exclusive_pages_and_strict_reports_the_rest():
    m = machine()
    p, a = anon(m, 4)
    c = p.fork()
    p.write(a, b"x")                                        # a: exclusive again (COW)
    with pytest.raises(OSError) as ei:
        p.mbind(a, 4 * PAGE, MPOL_BIND, 0b10, MPOL_MF_MOVE | MPOL_MF_STRICT)
    assert ei.value.errno == errno.EIO                      # three pages shared with the child
    assert p.move_pages([a + i * PAGE for i in range(4)]) == [1, 0, 0, 0]
    p.mbind(a, 4 * PAGE, MPOL_BIND, 0b10, MPOL_MF_MOVE_ALL | MPOL_MF_STRICT)
    assert p.move_pages([a + i * PAGE for i in range(4)]) == [1, 1, 1, 1]
    assert c.read(a, 1) == b"d" and p.read(a, 1) == b"x"
    p.mbind(a, 4 * PAGE, MPOL_BIND, 0b11, MPOL_MF_STRICT)   # every page on the mask
    with pytest.raises(OSError) as ei:
        p.mbind(a, 4 * PAGE, MPOL_BIND, 0b01, MPOL_MF_STRICT)
    assert ei.value.errno == errno.EIO                      # STRICT without MOVE: misplaced pages
    m.check()


def test_mbind_argument_errors():
    m = machine()
    p, a = anon(m)
    for args, err in (((a + 1, PAGE, MPOL_BIND, 1, MPOL_MF_MOVE), errno.EINVAL),
                      ((a, PAGE, MPOL_BIND, 0, MPOL_MF_MOVE), errno.EINVAL),
                      ((a, PAGE, MPOL_BIND, 0b100, MPOL_MF_MOVE), errno.EINVAL),   # no such node
                      ((a, PAGE, MPOL_BIND, 1, 1 << 5), errno.EINVAL),
                      ((a, PAGE, 9, 1, 0), errno.EINVAL),
                      ((a, 2 * PAGE, MPOL_BIND, 1, MPOL_MF_MOVE), errno.EFAULT)):
        with pytest.raises(OSError) as ei:
            p.mbind(*args)
        assert ei.value.errno == err, args
    with pytest.raises(NotImplementedError):
        p.mbind(a, PAGE, MPOL_INTERLEAVE, 3, 0)
    p.mbind(a, 0, MPOL_BIND, 1, MPOL_MF_MOVE)               # empty range: nothing


# ---- waiting on a migration entry ------------------------------------------------

def test_a_fault_on_a_migration_entry_waits_for_the_migration():
    """migration_entry_wait: another thread's access between the unmap and
    the remap sleeps until the entry is gone, then reads the migrated page."""
    m = machine(ncpus=2)
    p, a = anon(m, 1, b"Q")
    t = p.thread(cpu=1)
    got = {}

    def mover():
        got["st"] = p.move_pages([a], [1], MPOL_MF_MOVE)

    def reader():
        got["data"] = t.read(a, 1)

    s = Scheduler(m, preempt_at("migrate_pages", "reader"), record=True)
    s.run([mover, reader], ["mover", "reader"])
    labels = [st.label for st in s.trace]
    assert any("migration_entry_wait" in lab for lab in labels), labels
    assert got["st"] == [1] and got["data"] == b"Q"
    assert m.node_of(p.pagemap(a).pfn) == 1
    m.check()


# ---- NUMA hinting -------------------------------------------------------------------

@pytest.mark.parametrize("kernel,savedwrite", [("6.1", True), ("6.2", False)])
def test_numa_scan_makes_hints_and_the_fault_restores_them(kernel, savedwrite):
    m = machine(kernel, ncpus=2)
    p, a = anon(m, 2)
    m._engine.lru_drain(0)
    assert m.numa_scan(p, a, 2 * PAGE) == 2
    pte = m._engine.pte(p.mm, a)
    assert pte & PTE_PROTNONE and bool(pte & PTE_WRITE) == savedwrite     # x86 savedwrite before 6.2
    assert p.pagemap(a).present
    f0 = p.minflt
    p.write(a, b"w")                        # the hint fault (same node) restores a writable pte
    assert p.minflt - f0 == 1 and m._engine.pte(p.mm, a) & PTE_WRITE
    assert not m._engine.pte(p.mm, a) & PTE_PROTNONE and m.node_of(p.pagemap(a).pfn) == 0
    p.thread(cpu=1).read(a + PAGE, 1)       # from node 1: the page moves there
    assert m.node_of(p.pagemap(a + PAGE).pfn) == 1 and p.read(a + PAGE, 1) == b"d"
    assert m.numa_scan(p, a, 2 * PAGE) == 2 and m.numa_scan(p, a, 2 * PAGE) == 0
    m.check()


def test_numa_hint_upgrades_an_exclusive_readonly_pte_only_from_6_2():
    """6a56ccbcf6c6: can_change_pte_writable() maps an exclusive anon page
    writable on the hint fault; before, only a pte that was writable was
    (savedwrite). A read-faulted swap-in (before 6.11) is R/O and exclusive."""
    for kernel, upgrade in (("6.1", False), ("6.2", True)):
        m = machine(kernel, swap=64 * PAGE)
        p, a = anon(m)
        p.madvise(a, PAGE, mmemu.MADV_PAGEOUT)
        p.read(a, 1)
        assert not m._engine.pte(p.mm, a) & PTE_WRITE
        m.numa_scan(p, a, PAGE)
        p.read(a, 1)
        assert bool(m._engine.pte(p.mm, a) & PTE_WRITE) == upgrade, kernel
        m.check()


def test_numa_scan_leaves_the_zero_page_and_checks_arguments():
    m = machine()
    p = m.spawn()
    z = p.mmap(0, PAGE, RW, PRIV)
    p.read(z, 1)
    assert m.numa_scan(p, z, PAGE) == 0
    with pytest.raises(ValueError):
        m.numa_scan(p, z + 1, PAGE)
    with pytest.raises(ValueError):
        machine().numa_scan(p, z, PAGE)


# ---- save / load ---------------------------------------------------------------------

def test_nodes_survive_save_and_load():
    import copy
    m = machine()
    p, a = anon(m, 3)
    p.move_pages([a], [1], MPOL_MF_MOVE)
    p.munmap(a + PAGE, PAGE)                    # a free frame on node 0's list
    m2 = copy.deepcopy(m)
    assert m2.nodes == 2 and m2._engine.nnodes == 2
    for mm_ in (m, m2):
        q = mm_.processes[0]
        b = q.mmap(0, PAGE, RW, PRIV)
        q.write(b, b"n")
        assert q.move_pages([a, b]) == [1, 0]
    assert m.processes[0].pagemap(b).pfn == m2.processes[0].pagemap(b).pfn
    m2.check()


# ---- fork and munmap while a migration runs (no mmap_lock held) ------------------

@pytest.mark.parametrize("kernel", ["5.18", "6.18"])
def test_a_fork_between_unmap_and_remap_copies_the_entry_and_the_remap_finds_it(kernel):
    """copy_nonpresent_pte: a writable migration entry of a COW mapping
    becomes readable in parent and child; remove_migration_ptes() finds the
    child's copy by the rmap walk, so both map the new page, shared and
    read-only, and the next writes COW."""
    m = machine(kernel, ncpus=2)
    p, a = anon(m, 1, b"F")
    got, labels = during_migration(m, p, a, p.fork)
    c = got["other"]
    assert not got["pm"].present and got["st"] == [1]
    pfn = p.pagemap(a).pfn
    assert c.pagemap(a).pfn == pfn and m.node_of(pfn) == 1
    assert m.frame(pfn).mapcount == 2 and "anon_exclusive" not in m.frame(pfn).flags
    assert not m._engine.pte(p.mm, a) & PTE_WRITE and not m._engine.pte(c.mm, a) & PTE_WRITE
    c.write(a, b"c")
    assert p.read(a, 1) == b"F" and c.read(a, 1) == b"c"
    p.write(a, b"p")
    assert p.pagemap(a).pfn == pfn                      # mapped once again: reused
    m.check()


def test_a_fork_in_the_window_of_a_batch_gets_each_copy_its_own_new_page():
    """The remap's rmap walk for the child's copies serves the whole batch:
    pages moved in a shuffled order, each with its own content, each copy
    restored to its own page's new frame. A pinned page is not migrated
    and fork gives the child a copy of it (copy_present_page)."""
    m = machine(ncpus=2)
    n = 24
    p = m.spawn()
    a = p.mmap(0, n * PAGE, RW, PRIV)
    for i in range(n):
        p.write(a + i * PAGE, bytes([65 + i]))
    pin = p.pin_user_pages(a + 5 * PAGE, 1, FOLL_WRITE | FOLL_LONGTERM)
    order = [(7 * i) % n for i in range(n)]             # not address order
    got, _ = during_migration(m, p, [a + i * PAGE for i in order], p.fork)
    c = got["other"]
    for i in range(n):
        pfn = p.pagemap(a + i * PAGE).pfn
        assert (c.pagemap(a + i * PAGE).pfn == pfn) == (i != 5), i
        assert m.node_of(pfn) == (0 if i == 5 else 1), i
        assert c.read(a + i * PAGE, 1) == bytes([65 + i])
    assert [st == 1 for st in got["st"]] == [i != 5 for i in order]
    pin.release()
    m.check()


def test_a_munmap_between_unmap_and_remap_leaves_nothing_behind():
    m = machine(ncpus=2)
    p, a = anon(m, 1, b"U")
    before = m.stats()

    def unmap():
        p.munmap(a, PAGE)
    got, _ = during_migration(m, p, a, unmap)
    assert not got["pm"].present and got["st"] == [1]
    assert not p.pagemap(a).present and not p.vmas
    assert m.stats()["faults"] == before["faults"]
    m.check()


def test_an_mremap_between_unmap_and_remap_moves_the_entry_and_the_remap_finds_it():
    """move_ptes() moves a migration entry like any other; the remap's rmap
    walk (remove_migration_ptes) finds it at its new address. Remapping
    only where the unmap recorded it would leave the entry behind, and every
    later access would wait for a migration that is over."""
    m = machine(ncpus=2)
    p, a = anon(m, 2, b"R")
    b = p.mmap(0, 2 * PAGE, PROT_READ, PRIV)

    def move():
        return p.mremap(a, 2 * PAGE, 2 * PAGE, C.MREMAP_MAYMOVE | C.MREMAP_FIXED, b)
    got, _ = during_migration(m, p, a, move)
    assert not got["pm"].present and got["st"] == [1] and got["other"] == b
    assert p.pagemap(b).present and m.node_of(p.pagemap(b).pfn) == 1
    assert p.read(b, 1) == b"R" and p.read(b + PAGE, 1) == b"R"
    p.write(b, b"w")                                    # still exclusive: written in place
    assert m.node_of(p.pagemap(b).pfn) == 1
    m.check()


@pytest.mark.parametrize("kernel", ["6.8", "6.18"])
def test_uffdio_move_of_a_page_under_migration_waits_and_moves_it(kernel):
    """move_pages_pte() (6.8+): a migration entry at src waits for the
    migration (migration_entry_wait), then -EAGAIN, which move_pages()
    retries: the migrated page moves. EBUSY here would fail a call Linux
    completes."""
    from mmemu import uffd as U
    m = machine(kernel, ncpus=2)
    p, a = anon(m, 1, b"M")
    d = p.mmap(0, PAGE, RW, PRIV)
    u = p.userfaultfd(U.O_NONBLOCK)
    u.api(0)
    u.register(d, PAGE, U.UFFDIO_REGISTER_MODE_MISSING)

    def move():
        return u.move(d, a, PAGE)
    got, labels = during_migration(m, p, a, move)
    assert not got["pm"].present and got["st"] == [1] and got["other"] == PAGE
    assert any("migration" in lab for lab in labels)
    assert p.read(d, 1) == b"M" and m.node_of(p.pagemap(d).pfn) == 1
    assert not p.pagemap(a).present
    m.check()


def test_uffdio_move_of_a_marker_is_efault():
    """move_pages_pte() (6.8+): a non-swap entry other than a migration entry
    (a pte marker) is -EFAULT, not -EBUSY."""
    from mmemu import uffd as U
    m = mmemu.Machine(kernel="6.18")
    p = m.spawn()
    a = p.mmap(0, PAGE, RW, PRIV)
    p.madvise(a, PAGE, C.MADV_GUARD_INSTALL)
    d = p.mmap(0, PAGE, RW, PRIV)
    u = p.userfaultfd(U.O_NONBLOCK)
    u.api(0)
    u.register(d, PAGE, U.UFFDIO_REGISTER_MODE_MISSING)
    with pytest.raises(OSError) as ei:
        u.move(d, a, PAGE)
    assert ei.value.errno == errno.EFAULT
    m.check()


def test_writeprotect_between_unmap_and_remap_makes_the_entry_readable():
    """change_pte_range() with MM_CP_UFFD_WP on a writable migration entry:
    readable (exclusive: an anon page) with the swp uffd-wp bit, so the
    remap maps the page write-protected and the next write is a WP fault.
    Setting the bit alone would leave a writable entry, remapped writable."""
    from mmemu import uffd as U
    m = machine(ncpus=2)
    p, a = anon(m, 1, b"W")
    u = p.userfaultfd(U.O_NONBLOCK)
    u.api(U.UFFD_FEATURE_PAGEFAULT_FLAG_WP)
    u.register(a, PAGE, U.UFFDIO_REGISTER_MODE_WP)

    def protect():
        u.writeprotect(a, PAGE, U.UFFDIO_WRITEPROTECT_MODE_WP)
    got, _ = during_migration(m, p, a, protect)
    assert not got["pm"].present and got["st"] == [1] and m.node_of(p.pagemap(a).pfn) == 1
    assert p.pagemap(a).uffd_wp and not m._engine.pte(p.mm, a) & PTE_WRITE
    assert "anon_exclusive" in m.frame(p.pagemap(a).pfn).flags
    with pytest.raises(mmemu.WouldBlock):
        p.write(a, b"x")
    m.check()
