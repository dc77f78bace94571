"""Random sequences on a run-time hugetlb pool (tests/unit/test_hugetlb_pool.py
states the rules one by one): nr_hugepages and nr_overcommit_hugepages
writes, global and per node, reserved and MAP_NORESERVE mappings, faults,
munmap of part or all of a mapping, fork and move_pages, on two nodes.

After every step: Machine.check() (the pool's stacks, counts per node, block
map and the page allocator's free counts agree), the sysfs identities
(surplus <= nr, free <= nr, resv <= free), and conservation: the frames
the page allocator has given out are the pool's pages plus what the
processes hold besides, so a page that leaves the pool without going back
(or the other way) shows. At the end, everything unmapped and the pool
set to 0, the machine is as it started.
"""
import errno

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import mmemu
import mmemu.constants as C
from mmemu.errors import Sigbus

H2M = 2 << 20
RW = C.PROT_READ | C.PROT_WRITE
HUGE = C.MAP_PRIVATE | C.MAP_ANONYMOUS | C.MAP_HUGETLB
SHARED = C.MAP_SHARED | C.MAP_ANONYMOUS | C.MAP_HUGETLB


class HugetlbPool(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.m = mmemu.Machine(kernel="6.18", memory=96 << 20, nodes=2)
        self.procs = [self.m.spawn()]
        self.maps = []                  # (process, address, pages)
        self.base = self.used()

    def used(self):
        return self.m.memory_usage()["frames_used"] - 512 * self.m.hugepages[H2M]["nr_hugepages"]

    @rule(n=st.integers(0, 8), node=st.sampled_from([None, None, 0, 1]))
    def set_nr(self, n, node):
        got = self.m.set_hugepages(H2M, n, node=node)
        assert got == self.m.hugepages[H2M]["nr_hugepages"]

    @rule(n=st.integers(0, 4))
    def set_overcommit(self, n):
        self.m.set_overcommit_hugepages(H2M, n)

    @rule(k=st.integers(0, 7), pages=st.integers(1, 3), kind=st.sampled_from(["private", "noreserve", "shared"]))
    def mmap(self, k, pages, kind):
        p = self.procs[k % len(self.procs)]
        flags = {"private": HUGE, "noreserve": HUGE | C.MAP_NORESERVE, "shared": SHARED}[kind]
        try:
            a = p.mmap(0, pages * H2M, RW, flags)
        except OSError as e:
            assert e.errno == errno.ENOMEM
            return
        self.maps.append((p, a, pages))

    @precondition(lambda self: self.maps)
    @rule(k=st.integers(0, 63), page=st.integers(0, 2))
    def write(self, k, page):
        p, a, pages = self.maps[k % len(self.maps)]
        try:
            p.write(a + (page % pages) * H2M, b"w")
        except Sigbus:
            pass                        # no page to be had (no reservation, no overcommit left)

    @precondition(lambda self: self.maps)
    @rule(k=st.integers(0, 63), first=st.integers(0, 2), whole=st.booleans())
    def munmap(self, k, first, whole):
        i = k % len(self.maps)
        p, a, pages = self.maps[i]
        if whole or pages == 1:
            p.munmap(a, pages * H2M)
            del self.maps[i]
        else:
            first %= pages
            p.munmap(a + first * H2M, H2M)
            del self.maps[i]
            if first:
                self.maps.append((p, a, first))
            if first + 1 < pages:
                self.maps.append((p, a + (first + 1) * H2M, pages - first - 1))

    @precondition(lambda self: len(self.procs) < 3)
    @rule()
    def fork(self):
        parent = self.procs[0]
        child = parent.fork()
        self.procs.append(child)
        self.maps += [(child, a, n) for (q, a, n) in self.maps if q is parent]

    @precondition(lambda self: len(self.procs) > 1)
    @rule(k=st.integers(1, 2))
    def exit(self, k):
        c = self.procs.pop(k % (len(self.procs) - 1) + 1)
        c.exit()
        self.maps = [t for t in self.maps if t[0] is not c]

    @precondition(lambda self: self.maps)
    @rule(k=st.integers(0, 63), node=st.integers(0, 1))
    def move(self, k, node):
        p, a, pages = self.maps[k % len(self.maps)]
        try:
            p.move_pages([a], [node], C.MPOL_MF_MOVE_ALL)
        except OSError as e:
            assert e.errno in (errno.ENOMEM, errno.EACCES, errno.EPERM)

    @invariant()
    def consistent(self):
        self.m.check()
        c = self.m.hugepages[H2M]
        assert c["surplus_hugepages"] <= c["nr_hugepages"] and c["free_hugepages"] <= c["nr_hugepages"]
        # resv_huge_pages may go below zero for a while (README: a zap restores
        # the reservation of a page another mapping still holds; its free
        # gives it back): sysfs prints it as an unsigned long.
        resv = c["resv_hugepages"] - (1 << 64 if c["resv_hugepages"] >= 1 << 63 else 0)
        assert resv <= c["free_hugepages"]
        per_node = [self.m.node_hugepages(n)[H2M] for n in (0, 1)]
        for key in ("nr_hugepages", "free_hugepages", "surplus_hugepages"):
            assert sum(d[key] for d in per_node) == c[key]
        assert self.used() >= self.base

    def teardown(self):
        for p, a, pages in self.maps:
            if p.alive:
                p.munmap(a, pages * H2M)
        for c in self.procs[1:]:
            c.exit()
        self.m.set_hugepages(H2M, 0)
        c = self.m.hugepages[H2M]
        # Nothing persistent, nothing in use or reserved. A free page may stay
        # surplus (set_max_huge_pages turns a free page surplus when pages are
        # reserved, and only a reservation's return frees surplus pages).
        assert c["nr_hugepages"] == c["surplus_hugepages"] == c["free_hugepages"] and c["resv_hugepages"] == 0
        assert self.used() == self.base
        self.m.check()


TestHugetlbPool = HugetlbPool.TestCase
