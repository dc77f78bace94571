"""anon_vma identity decides whether neighbouring VMAs merge again
(is_mergeable_anon_vma, find_mergeable_anon_vma; checked on the 6.18 host
with /proc/self/maps)."""
import pytest

import mmemu
from mmemu import MAP_ANONYMOUS, MAP_PRIVATE, PAGE_SIZE as PAGE
from mmemu import constants as C
from mmemu.errors import WouldBlock
from mmemu.uffd import O_NONBLOCK, UFFDIO_REGISTER_MODE_MISSING

PRIV = MAP_PRIVATE | MAP_ANONYMOUS
RW = C.PROT_READ | C.PROT_WRITE


def vmas_of(p, a, npages):
    return [(v.start, v.end) for v in p.vmas if v.start < a + npages * PAGE and v.end > a]


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_access_flag_split_reuses_the_neighbours_anon_vma(order):
    # Halves that differ only in access bits are anon_vma-compatible: the
    # second write fault reuses the first one's anon_vma, so they merge back.
    p = mmemu.Machine(memory=16 << 20).spawn()
    a = p.mmap(0, 2 * PAGE, RW, PRIV)
    p.mprotect(a + PAGE, PAGE, RW | C.PROT_EXEC)
    for i in order:
        p.write(a + i * PAGE, b"x")
    p.mprotect(a + PAGE, PAGE, RW)
    assert vmas_of(p, a, 2) == [(a, a + 2 * PAGE)]


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_halves_with_their_own_anon_vmas_stay_apart(order):
    # MADV_DONTFORK is not an access bit: each half gets its own anon_vma,
    # and after MADV_DOFORK the flags match but the VMAs do not merge.
    p = mmemu.Machine(memory=16 << 20).spawn()
    a = p.mmap(0, 2 * PAGE, RW, PRIV)
    p.madvise(a + PAGE, PAGE, C.MADV_DONTFORK)
    for i in order:
        p.write(a + i * PAGE, b"x")
    p.madvise(a + PAGE, PAGE, C.MADV_DOFORK)
    assert vmas_of(p, a, 2) == [(a, a + PAGE), (a + PAGE, a + 2 * PAGE)]


def test_blocked_missing_write_fault_prepares_the_anon_vma():
    # do_anonymous_page prepares the anon_vma before handing a write fault
    # to userspace, so the registered page keeps a VMA of its own.
    p = mmemu.Machine(memory=16 << 20).spawn()
    a = p.mmap(0, 2 * PAGE, RW, PRIV)
    u = p.userfaultfd(O_NONBLOCK)
    u.api()
    u.register(a + PAGE, PAGE, UFFDIO_REGISTER_MODE_MISSING)
    p.write(a, b"x")
    with pytest.raises(WouldBlock):
        p.write(a + PAGE, b"y")
    u.register(a, PAGE, UFFDIO_REGISTER_MODE_MISSING)
    assert vmas_of(p, a, 2) == [(a, a + PAGE), (a + PAGE, a + 2 * PAGE)]


def test_a_read_fault_takes_no_anon_vma():
    p = mmemu.Machine(memory=16 << 20).spawn()
    a = p.mmap(0, 2 * PAGE, RW, PRIV)
    p.madvise(a + PAGE, PAGE, C.MADV_DONTFORK)
    p.write(a, b"x")
    p.read(a + PAGE, 1)                       # zero page: no anon_vma
    p.madvise(a + PAGE, PAGE, C.MADV_DOFORK)
    assert vmas_of(p, a, 2) == [(a, a + 2 * PAGE)]


def test_fork_gives_each_child_vma_its_own_anon_vma():
    # anon_vma_fork(): the child's halves get distinct anon_vmas even though
    # the parent's share one, so only the parent merges them back.
    p = mmemu.Machine(memory=16 << 20).spawn()
    a = p.mmap(0, 2 * PAGE, RW, PRIV)
    p.write(a, b"x")
    p.write(a + PAGE, b"x")
    p.mprotect(a + PAGE, PAGE, C.PROT_READ)
    c = p.fork()
    for q in (p, c):
        q.mprotect(a + PAGE, PAGE, RW)
    assert vmas_of(p, a, 2) == [(a, a + 2 * PAGE)]
    assert vmas_of(c, a, 2) == [(a, a + PAGE), (a + PAGE, a + 2 * PAGE)]


def _table(p):
    return [(v.start, v.end) for v in p.vmas], p.machine._engine.vma_anon(p.mm)[0].tolist()


def test_the_anon_vma_lives_in_the_core_and_relayouts_carry_it():
    # One owner: a fault sets the anon_vma in the core's table at fault time
    # (not on a later read-back), and a split made afterwards hands both
    # halves that same anon_vma through their origin.
    p = mmemu.Machine(memory=16 << 20).spawn()
    a = p.mmap(0, 3 * PAGE, RW, PRIV)
    assert _table(p)[1] == [0]
    p.write(a, b"x")
    (ident,) = _table(p)[1]
    assert ident and all(v.flags & mmemu.vma.VM_ANON_VMA == 0 for v in p.vmas)
    p.mprotect(a + PAGE, PAGE, C.PROT_READ)
    assert _table(p)[1] == [ident, ident, ident]
    c = p.fork()
    child = _table(c)[1]
    assert len(set(child)) == 3 and ident not in child    # anon_vma_fork: one each


def test_set_vmas_refuses_an_origin_outside_the_table():
    m = mmemu.Machine(memory=16 << 20)
    p = m.spawn()
    p.mmap(0, PAGE, RW, PRIV)
    import numpy as np
    arrays = p.vmas.arrays()
    with pytest.raises(ValueError, match="origin"):
        m._engine.set_vmas(p.mm, *arrays, p.vmas.uffd_array(), np.array([5], np.int32))
    m.check()


def test_a_new_vma_does_not_merge_into_one_cloned_by_fork():
    # is_mergeable_anon_vma(): a NULL anon_vma merges with a neighbour's only
    # when that neighbour was not cloned from a parent (its anon_vma_chain
    # is singular). The child's new mapping stays a VMA of its own, with no
    # anon_vma after a read fault, so the next fork copies no pte of it
    # (`mmemu diff` found this against the 6.18 host).
    p = mmemu.Machine(memory=16 << 20).spawn()
    a = p.mmap(0, PAGE, RW, PRIV)
    b = p.mmap(0, PAGE, RW, PRIV)                 # just below a: one VMA with it
    p.write(a, b"w001")
    c1 = p.fork()
    c1.mmap(a, PAGE, RW, PRIV | C.MAP_FIXED)
    assert vmas_of(c1, b, 2) == [(b, a), (a, a + PAGE)]
    c1.read(a, 4)
    c2 = c1.fork()
    assert not c2.pagemap(a).present
    p.mmap(a, PAGE, RW, PRIV | C.MAP_FIXED)       # the parent's own anon_vma: merges again
    assert vmas_of(p, b, 2) == [(b, a + PAGE)]
