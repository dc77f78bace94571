"""Machine: one emulated computer (frames, CPUs, the kernel's rules)."""
from __future__ import annotations

import heapq
import operator
from typing import Any, Iterable, SupportsIndex


import numpy as np

from . import args as A
from . import constants as C
from ._core import Engine
from .eras import policy_for
from .pageinfo import FrameInfo
from .process import Process
from .serialise import new_lock, serialised
from .shmem import HSTATE_SIZE, hugepage_counts
from .thp import ThpSettings
from .vma import VM_ANON_VMA, VM_RESV_UNMAPPED

# The core's frame flags that /proc/kpageflags shows, by bit; the core's
# others (anon_exclusive, lazyfree, file, reserved, bytes) go into
# FrameInfo.flags by name.
# Machine(swap_device=) names, in the core's SWAP_DEV_* order (core/swap.pxi).
SWAP_DEVICES = ("file", "hdd", "ssd", "zram")

_KPF = {"anon": C.KPF_ANON, "ksm": C.KPF_KSM, "swapcache": C.KPF_SWAPCACHE, "zero": C.KPF_ZERO_PAGE,
        "lru": C.KPF_LRU, "dirty": C.KPF_DIRTY, "uptodate": C.KPF_UPTODATE}


@serialised
class Machine:
    """An emulated machine running the memory-management rules of `kernel`.

    kernel: "5.7" ... "6.18", a researched stable point release ("6.1.176":
    the base version plus that branch's backports), or "host" for the running
    kernel's full version and config. backports: commit ids (see
    mmemu.eras.CHANGES) applied on top.
    memory: bytes of RAM (frames). swap: bytes of the swap device (0: none).
    swap_device: what that swap area is, which decides how large folios
    (THP, mTHP) go to it and come back (core/swap.pxi):
      "file": a swap file, as on the host (the default). Never gives a
        large folio a cluster (scan_swap_map_slots wants SWP_BLKDEV), so
        MADV_PAGEOUT splits it first (thp_swpout_fallback).
      "hdd": a rotational swap partition: clusters only from 6.14.
      "ssd": a non-rotational partition (SWP_SOLIDSTATE): a PMD-mapped THP
        goes out whole to one cluster of 512 consecutive slots in every
        version (THP_SWAP), a PTE-mapped one and an mTHP from 6.10.
      "zram": an SSD-like device that is also SWP_SYNCHRONOUS_IO: writes
        are done at once (a paged-out folio leaves the swapcache at once),
        a swap-in of an entry nobody else references skips the swapcache,
        and from 6.12 swaps an mTHP-sized folio back in whole.
    seed: the same seed and inputs give the same results, bit for bit.
    nodes: NUMA nodes, memory split evenly, CPUs spread over them in order
    (mmemu.numa: move_pages, mbind, numa_scan).
    movablecore / kernelcore: bytes of ZONE_MOVABLE, or of memory kept out
    of it, as the boot parameters say (kernelcore wins when it leaves more
    to the kernel); spread evenly over the nodes, at the top of each. User
    pages (anon, page cache, shmem) come from ZONE_MOVABLE first, as
    GFP_HIGHUSER_MOVABLE does; page tables never do. cma: bytes of a CMA
    area (cma=) at the top of node 0's ZONE_NORMAL, used by user pages only.
    A FOLL_LONGTERM pin migrates its pages out of CMA (all modelled
    versions) and out of ZONE_MOVABLE (5.13+) first (core/zones.pxi).
    tlb: "x86" (a cached writable entry with dirty clear re-walks the page
    table on a write, so it cannot write a page whose pte lost write), or
    "stale-writes" (every stale writable entry takes writes: the worst case
    of semantics.md §17, for hardware that does not re-walk).
    thp: the transparent_hugepage "enabled" setting (never / madvise /
    always; Machine.thp holds all the sysfs knobs, mmemu.thp).
    hugepages: the boot-time hugetlb pool, {page size: count} for 2 MiB and
    1 GiB pages (hugepagesz=/hugepages=), taken out of `memory`; what
    MAP_HUGETLB and MFD_HUGETLB memory comes from (Machine.hugepages reads
    the pool's counters). With nodes, the pool is spread over them in turn
    from node 0 (Machine.node_hugepages); not with ZONE_MOVABLE or CMA.

    One Machine may be shared by host threads: each public call holds the
    machine's (re-entrant) lock, so calls serialise (mmemu.serialise).
    """

    @property
    def swap_device(self) -> str:
        """What the swap area is: "file", "hdd", "ssd" or "zram" (Machine(swap_device=))."""
        return SWAP_DEVICES[self._engine.swap_device]

    MAX_MEMORY = 1 << 44        # 16 TiB of frames: 2^32 frames, 96 GiB of frame table

    def __init__(self, kernel: str = "6.18", ncpus: int = 2, memory: int = 256 << 20, swap: int = 0,
                 seed: int = 0, backports: Iterable[str] = (), tlb: str = "x86", nodes: int = 1,
                 movablecore: int = 0, kernelcore: int | None = None, cma: int = 0,
                 thp: str = "madvise", hugepages: dict[int, int] | None = None,
                 swap_device: str = "file") -> None:
        if isinstance(backports, (str, bytes)):
            raise TypeError("backports must be a sequence of commit ids, not a string")
        self.policy = policy_for(kernel, tuple(backports))
        memory, swap = self._bytes(memory, "memory"), self._bytes(swap, "swap")
        ncpus, seed = operator.index(ncpus), operator.index(seed)
        if memory < 16 * C.PAGE_SIZE:
            raise ValueError("memory must hold at least 16 pages")
        if memory > self.MAX_MEMORY or swap > self.MAX_MEMORY:
            raise ValueError(f"memory and swap are limited to {self.MAX_MEMORY >> 40} TiB each")
        if not 1 <= ncpus <= 256:
            raise ValueError("ncpus must be in 1..256")
        if seed < 0:
            raise ValueError("seed must be >= 0")
        self.kernel = kernel
        self.ncpus = ncpus
        self.memory = memory
        self.seed = seed
        self.swap = swap
        try:
            self._engine = Engine(memory // C.PAGE_SIZE, ncpus, dict(self.policy.knobs),
                                  swap // C.PAGE_SIZE)
        except MemoryError as e:
            # A size this host cannot back is a bad argument here, not a
            # shortage inside the machine (that is OutOfMemory).
            raise ValueError(f"Machine(memory={memory}, swap={swap}): too large for this host, "
                             f"which cannot allocate the frame and swap tables ({e})") from None
        if not isinstance(swap_device, str):
            raise TypeError(f"swap_device must be a str, not {type(swap_device).__name__}")
        if swap_device not in SWAP_DEVICES:
            raise ValueError(f"swap_device must be one of {', '.join(SWAP_DEVICES)}, not {swap_device!r}")
        self._engine.swap_device = SWAP_DEVICES.index(swap_device)
        nodes = operator.index(nodes)
        if not 1 <= nodes <= 64:
            raise ValueError("nodes must be in 1..64")
        frames = memory // C.PAGE_SIZE
        if nodes > 1 and frames - (frames + nodes - 1) // nodes * (nodes - 1) < 16:
            raise ValueError(f"memory of {frames} pages makes no {nodes} nodes of at least 16 pages")
        movable_span, cma_pages = self._zones(memory, nodes, movablecore, kernelcore, cma)
        if nodes > 1 or movable_span or cma_pages:
            try:
                self._engine.zones_init(nodes, movable_span, cma_pages)
            except ValueError as e:
                raise ValueError(f"Machine(memory={memory}, nodes={nodes}, movablecore={movablecore}, "
                                 f"kernelcore={kernelcore}, cma={cma}): {e}") from None
        self.nodes = nodes
        self.movablecore = movable_span * nodes * C.PAGE_SIZE
        self.cma = cma_pages * C.PAGE_SIZE
        if tlb not in ("x86", "stale-writes"):
            raise ValueError(f"tlb must be 'x86' or 'stale-writes', not {tlb!r}")
        self.tlb = tlb
        self._engine.tlb_stale_writes = tlb == "stale-writes"
        self.thp = ThpSettings(self._engine, thp, mthp=self.policy.mthp, shmem_mthp=self.policy.shmem_mthp,
                               shmem_file_orders=self.policy.shmem_file_orders)
        self._hugetlb_init(hugepages, memory)
        self._lock = new_lock()
        self._files = {}            # mapping id -> ShmemFile
        self._procs = {}
        self._pid = 0
        self._holders = set()       # live Pins and Pipes (references outside page tables)
        self._uffds = {}            # context id -> Uffd
        self._uffd_free = []        # ids of released contexts, reused lowest first
        self._serving = []          # contexts whose service handler is running
        self._tid = 0
        # Deterministic "ASLR": the top of the mmap area depends on the seed only.
        rng = np.random.default_rng(seed)
        self._mmap_base = 0x7F0000000000 - int(rng.integers(0, 1 << 28)) * C.PAGE_SIZE

    @classmethod
    def _zones(cls, memory, nodes, movablecore, kernelcore, cma):
        """(ZONE_MOVABLE frames per node, CMA area frames) for the boot
        parameters (find_zone_movable_pfns_for_nodes: kernelcore, when
        given, wins if it leaves the kernel more; sizes round up to pages)."""
        movablecore, cma = cls._bytes(movablecore, "movablecore"), cls._bytes(cma, "cma")
        page = C.PAGE_SIZE
        if movablecore > memory:
            raise ValueError(f"movablecore={movablecore} is larger than memory ({memory})")
        if cma > memory:
            raise ValueError(f"cma={cma} is larger than memory ({memory})")
        movable = -(-movablecore // page)
        frames = memory // page
        if kernelcore is not None:
            kernelcore = cls._bytes(kernelcore, "kernelcore")
            if kernelcore > memory:
                raise ValueError(f"kernelcore={kernelcore} is larger than memory ({memory})")
            core = -(-kernelcore // page)
            if not movablecore or core > frames - movable:
                movable = frames - core
        return -(-movable // nodes), -(-cma // page)

    def _hugetlb_init(self, hugepages, memory):
        sizes = hugepage_counts(hugepages)
        if not any(sizes.values()):
            return
        counts = [sizes.get(size, 0) for size in HSTATE_SIZE]
        if self.movablecore or self.cma:
            raise ValueError("hugepages on a machine with ZONE_MOVABLE or CMA are not modelled yet")
        try:
            self._engine.hugetlb_init(counts[0], counts[1])
        except ValueError as e:
            raise ValueError(f"Machine(memory={memory}, hugepages={hugepages}): {e}") from None

    @property
    def hugepages(self) -> dict[int, dict[str, int]]:
        """The hugetlb pool per page size, as /sys/kernel/mm/hugepages/
        hugepages-<size>kB/ shows it."""
        # resv_huge_pages is an unsigned long: sysfs prints a count that went
        # below zero (a pinned page's restored reservation, handed back by
        # hugetlb_vm_op_close before the page is freed) as 2**64 - n.
        return {HSTATE_SIZE[h]: {"nr_hugepages": t, "free_hugepages": f,
                                 "resv_hugepages": r & 0xFFFFFFFFFFFFFFFF, "surplus_hugepages": s,
                                 "nr_overcommit_hugepages": o}
                for h, (t, f, r, s, o) in enumerate(self._engine.hugetlb_pool())}

    def node_hugepages(self, node: SupportsIndex) -> dict[int, dict[str, int]]:
        """One node's share of the hugetlb pool per page size, as
        /sys/devices/system/node/node<N>/hugepages/hugepages-<size>kB/ shows
        it. The boot-time pool is spread over the nodes in turn from node 0."""
        node = operator.index(node)
        if not 0 <= node < self.nodes:
            raise ValueError(f"no node {node} (the machine has {self.nodes})")
        counts = self._engine.hugetlb_node_pool(node)
        return {HSTATE_SIZE[h]: {"nr_hugepages": t, "free_hugepages": f, "surplus_hugepages": s}
                for h, (t, f, s) in enumerate(counts)}

    def set_hugepages(self, size: SupportsIndex, nr_hugepages: SupportsIndex,
                      node: SupportsIndex | None = None) -> int:
        """Write nr_hugepages of the 2 MiB pool (set_max_huge_pages, 6.12):
        /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages, or node
        <node>'s file. Surplus pages become persistent first; fresh pages
        come from free 2 MiB blocks, on the nodes in turn, as far as there
        are any; free pages leave, but never below the pages in use or
        reserved; pages in use beyond the count become surplus, freed to the
        page allocator when released. Returns nr_hugepages after (what a
        read of the file shows: fewer than asked when memory ran out). 1 GiB
        pages stay as booted (their run-time allocation is not modelled)."""
        h = self._hstate_of(size, "nr_hugepages")
        count = self._count(nr_hugepages, "nr_hugepages")
        if node is not None:
            node = operator.index(node)
            if not 0 <= node < self.nodes:
                raise ValueError(f"no node {node} (the machine has {self.nodes})")
        if h != 0:
            raise ValueError("changing the 1 GiB pool at run time is not modelled (boot-time hugepages= only)")
        if count > self._engine.nframes:
            count = self._engine.nframes            # more than memory holds: as many as fit
        return self._engine.hugetlb_set_max(count, -1 if node is None else node)

    def set_overcommit_hugepages(self, size: SupportsIndex, nr_overcommit_hugepages: SupportsIndex) -> None:
        """Write nr_overcommit_hugepages of the 2 MiB pool: how many surplus
        pages a fault or a reservation may make beyond the pool when it has
        none free (alloc_surplus_hugetlb_folio, gather_surplus_pages). The
        kernel refuses it for gigantic pages (EINVAL): ValueError here."""
        h = self._hstate_of(size, "nr_overcommit_hugepages")
        count = self._count(nr_overcommit_hugepages, "nr_overcommit_hugepages")
        if h != 0:
            raise ValueError("1 GiB pages cannot be overcommitted (nr_overcommit_hugepages: EINVAL)")
        self._engine.hugetlb_set_overcommit(count)

    @staticmethod
    def _int(v, what):
        try:
            return operator.index(v)
        except TypeError:
            raise TypeError(f"{what} must be an integer, not {type(v).__name__}") from None

    @staticmethod
    def _hstate_of(size, name):
        size = Machine._int(size, f"{name}: the page size")
        if size not in HSTATE_SIZE:
            raise ValueError(f"{name}: no hugetlb page size {size} (one of {', '.join(map(str, HSTATE_SIZE))})")
        return HSTATE_SIZE.index(size)

    @staticmethod
    def _count(v, name):
        v = Machine._int(v, name)
        if not 0 <= v < 1 << 64:
            raise ValueError(f"{name} must be in 0 .. 2**64 - 1 (an unsigned long)")
        return min(v, (1 << 63) - 1)

    @staticmethod
    def _bytes(v, name):
        v = Machine._int(v, f"{name} (a number of bytes)")
        if v < 0:
            raise ValueError(f"{name} must be >= 0")
        return v

    def _next_pid(self):
        self._pid += 1
        return self._pid

    def _next_tid(self):
        self._tid += 1
        return self._tid

    def _new_uffd(self, uffd):
        ctx = heapq.heappop(self._uffd_free) if self._uffd_free else len(self._uffds) + 1
        self._uffds[ctx] = uffd
        return ctx

    def _free_uffd(self, uffd):
        """A context released for good: its id (and the core's slot, once
        cleared) serve the next userfaultfd(); no VMA names it any more."""
        if self._uffds.get(uffd.ctx) is not uffd:
            return
        if uffd.features is not None:
            self._engine.uffd_resolver(uffd.ctx, 0)
            self._engine.uffd_set(uffd.ctx, 0, 0)
        del self._uffds[uffd.ctx]
        heapq.heappush(self._uffd_free, uffd.ctx)

    def spawn(self, cpu: int = 0) -> Process:
        """A new process with an empty address space, running on `cpu`."""
        cpu = operator.index(cpu)
        if not 0 <= cpu < self.ncpus:
            raise ValueError(f"cpu {cpu} out of range 0..{self.ncpus - 1}")
        p = Process(self, self._next_pid(), self._engine.mm_new(), cpu)
        self._procs[p.pid] = p
        return p

    def _reap_files(self, fids):
        for fid in fids:
            f = self._files.get(fid)
            if f is not None:
                f.maybe_destroy()

    @property
    def processes(self) -> list[Process]:
        return list(self._procs.values())

    def folio_order(self, pfn: int) -> int:
        """folio_order() of the folio frame pfn is a page of: 0 for a small
        page, 2..8 for a multi-size THP (6.8+), 9 for a PMD-sized THP or a
        2 MiB hugetlb page, 18 for a 1 GiB one."""
        pfn = operator.index(pfn)
        if not 0 <= pfn < self._engine.nframes:
            raise ValueError(f"pfn {pfn} out of range 0..{self._engine.nframes - 1}")
        return self._engine.folio_order(pfn)

    def frame(self, pfn: int) -> FrameInfo:
        """What /proc/kpagecount and /proc/kpageflags show, plus refcount and pincount."""
        pfn = operator.index(pfn)
        if not 0 <= pfn < self._engine.nframes:
            raise ValueError(f"pfn {pfn} out of range 0..{self._engine.nframes - 1}")
        refcount, mapcount, flags, used, _, _ = self._engine.frame_info(pfn)
        head, entire = self._engine.thp_info(pfn)
        huge = self._engine.hugetlb_page(pfn)
        if huge is not None:
            return self._hugetlb_frame(pfn, huge, flags)
        if head >= 0:
            # A large folio's page: page_count is the folio's, kpagecount the
            # page's pte mappings plus the folio's PMD mappings
            # (folio_precise_page_mapcount, 6.12).
            refcount = self._engine.frame_info(head)[0]
            mapcount += entire
        pincount = 0
        for h in self._holders:
            if getattr(h, "gup_flags", 0) & C.FOLL_PIN and not h.released:
                pincount += int(np.count_nonzero(h.pfns == pfn))
        kpf = 0
        if not used:
            kpf |= 1 << C.KPF_BUDDY
        for name, bit in _KPF.items():
            if name in flags:
                kpf |= 1 << bit
        if "anon" in flags:
            kpf |= 1 << C.KPF_SWAPBACKED
            if self.policy.kpf_ksm_all_anon:
                # stable_page_flags() from dee3d0bef2b0 on tests the folio's
                # mapping against both anon-mapping bits, so any anon page reads
                # as KSM, until 81401cebfc15 (seen on Debian's 6.12.118).
                kpf |= 1 << C.KPF_KSM
        if mapcount > 0:
            kpf |= 1 << C.KPF_MMAP
        if head >= 0:
            # stable_page_flags(): KPF_THP on every page of an anon large
            # folio (and of the huge zero page), head and tail marked.
            kpf |= 1 << C.KPF_THP | 1 << (C.KPF_COMPOUND_HEAD if head == pfn else C.KPF_COMPOUND_TAIL)
        return FrameInfo(pfn, mapcount, kpf, refcount=refcount, pincount=pincount,
                         extra=set(flags) - set(_KPF))

    def _hugetlb_frame(self, pfn, huge, flags):
        # stable_page_flags() for a hugetlb page, free in the pool or not:
        # KPF_HUGE and the compound bits, never buddy, LRU or THP;
        # kpagecount is the folio's mapcount (its mappings).
        h, head, mapcount = huge
        kpf = 1 << C.KPF_HUGE | 1 << (C.KPF_COMPOUND_HEAD if head == pfn else C.KPF_COMPOUND_TAIL)
        if mapcount < 0:
            return FrameInfo(pfn, 0, kpf, refcount=0, pincount=0)
        if "anon" in flags:
            kpf |= 1 << C.KPF_ANON
            if self.policy.kpf_ksm_all_anon:
                # The same stable_page_flags() test as for a small page: a
                # hugetlb folio's anon mapping matches it too (6.12.118).
                kpf |= 1 << C.KPF_KSM
        for name in ("dirty", "uptodate"):
            if name in flags:
                kpf |= 1 << _KPF[name]
        if mapcount > 0:
            kpf |= 1 << C.KPF_MMAP
        pincount = sum(int(np.count_nonzero(h.pfns == pfn)) for h in self._holders
                       if getattr(h, "gup_flags", 0) & C.FOLL_PIN and not h.released)
        # The core counts a reference per PMD leaf: a 1 GiB mapping holds
        # 512 of them where the kernel's PUD entry holds one.
        refcount = self._engine.frame_info(head)[0] - mapcount * ((HSTATE_SIZE[h] >> 21) - 1)
        return FrameInfo(pfn, mapcount, kpf, refcount=refcount, pincount=pincount,
                         extra=set(flags) - set(_KPF))

    def numa_scan(self, process: Process, addr: int, length: int) -> int:
        """One pass of NUMA balancing's scanner (task_numa_work ->
        change_prot_numa) over [addr, addr + length) of process: present
        ptes become PROT_NONE hints; the next access takes a hinting fault
        (do_numa_page) that maps the page again and may move it to the
        faulting CPU's node. Returns ptes hinted."""
        if not isinstance(process, Process) or process.machine is not self:
            raise ValueError("numa_scan: process must be a Process of this machine")
        process._live("numa_scan")
        addr, length = A.size(addr, "numa_scan", "addr"), A.size(length, "numa_scan", "length")
        if addr & (C.PAGE_SIZE - 1):
            raise ValueError(f"numa_scan: address {addr:#x} not page aligned")
        end = min(A.page_align(addr + length), C.TASK_SIZE)
        if addr >= end:
            return 0
        return self._engine.change_prot_numa(process.mm, addr, end)

    ZONE_NAMES = ("Normal", "Movable", "CMA")

    def zone_of(self, pfn: int) -> str:
        """The zone of frame pfn as /proc/zoneinfo names it ("Normal",
        "Movable"), or "CMA" for ZONE_NORMAL's CMA area: derived from the
        pfn (page_zonenum, get_pageblock_migratetype)."""
        pfn = operator.index(pfn)
        if not 0 <= pfn < self._engine.nframes:
            raise ValueError(f"pfn {pfn} out of range 0..{self._engine.nframes - 1}")
        return self.ZONE_NAMES[self._engine.pfn_zone(pfn)]

    def zone_free(self, zone: str, node: int = 0) -> int:
        """Free frames of a zone ("Normal", "Movable", "CMA") of a node."""
        if not isinstance(zone, str):
            raise TypeError(f"zone must be a str, not {type(zone).__name__}")
        if zone not in self.ZONE_NAMES:
            raise ValueError(f"zone must be one of {self.ZONE_NAMES}, not {zone!r}")
        node = operator.index(node)
        if not 0 <= node < self.nodes:
            raise ValueError(f"node {node} out of range 0..{self.nodes - 1}")
        return self._engine.zone_free(node, self.ZONE_NAMES.index(zone))

    def node_of(self, pfn: int) -> int:
        """The NUMA node of frame pfn (page_to_nid)."""
        pfn = operator.index(pfn)
        if not 0 <= pfn < self._engine.nframes:
            raise ValueError(f"pfn {pfn} out of range 0..{self._engine.nframes - 1}")
        return self._engine.pfn_node(pfn)

    def reclaim(self, npages: int = 1 << 62, cpu: int = 0) -> int:
        """Memory pressure, as an explicit event: reclaim up to npages (pages
        mapped once go to swap, clean MADV_FREE'd pages are dropped, unmapped
        shmem goes to swap). Large anon folios go whole where the era and the
        swap device allow, else split; one left in the swapcache by an
        earlier write (MADV_PAGEOUT on an SSD) is freed first. Returns frames
        freed."""
        npages, cpu = min(A.size(npages, "reclaim", "npages"), 1 << 62), operator.index(cpu)
        if not 0 <= cpu < self.ncpus:
            raise ValueError(f"cpu {cpu} out of range 0..{self.ncpus - 1}")
        return self._engine.reclaim(cpu, npages)

    def khugepaged_scan(self, pages: int | None = None, cpu: int = 0) -> int:
        """One wake-up of khugepaged (khugepaged_do_scan, 6.12): from where
        the last one stopped, walk the processes in pid order and their
        VMAs in address order, and try to collapse each aligned 2 MiB of a
        VMA THP may use (enabled=always, or madvise with MADV_HUGEPAGE; from
        6.8 the 2 MiB size's own setting, Machine.thp.pmd_allowed; not
        VM_NOHUGEPAGE; private anon) with khugepaged's rules
        (Machine.thp.khugepaged: max_ptes_none/swap/shared, a young pte
        needed). `pages` ptes of progress (pages_to_scan by default): 512
        per 2 MiB looked at, 1 per VMA skipped. Returns THPs made."""
        from .vma import VM_HUGETLB, VM_IO, VM_MIXEDMAP, VM_PFNMAP, VM_SHARED, VM_HUGEPAGE, VM_NOHUGEPAGE
        k = self.thp.khugepaged
        budget = k.pages_to_scan if pages is None else A.size(pages, "khugepaged_scan", "pages")
        cpu = self._cpu_arg(cpu, "khugepaged_scan")
        THP = C.PMD_SIZE
        made = progress = 0
        through_head = 0
        pid, addr = k.cursor
        while progress < budget:
            if (pid, addr) == (0, 0):
                through_head += 1           # pass_through_head: at most one full pass from the head
                if through_head >= 2:
                    break
            procs = sorted((p for p in self._procs.values() if p.alive and p.pid >= pid), key=lambda p: p.pid)
            if not procs:
                k.full_scans += 1           # khugepaged_scan_mm_slot: past the last mm
                pid, addr = 0, 0
                continue
            p = procs[0]
            if p.pid != pid:
                pid, addr = p.pid, 0
            stopped = False
            for v in list(p.vmas):
                if v.end <= addr:
                    continue
                if progress >= budget:
                    stopped = True
                    break
                eligible = self.thp.pmd_allowed(bool(v.flags & VM_HUGEPAGE)) \
                    and not v.flags & (VM_NOHUGEPAGE | VM_HUGETLB | VM_PFNMAP | VM_IO | VM_MIXEDMAP | VM_SHARED) \
                    and not v.file
                hstart, hend = max(-(-v.start // THP) * THP, -(-addr // THP) * THP), v.end // THP * THP
                if not eligible or hstart >= hend:
                    progress += 1
                    addr = v.end
                    continue
                a = hstart
                while a < hend and progress < budget:
                    r = self._engine.collapse(p.mm, cpu, a, True, k.max_ptes_none, k.max_ptes_swap,
                                              k.max_ptes_shared)
                    if r == 0:
                        made += 1
                        k.pages_collapsed += 1
                    progress += THP // C.PAGE_SIZE
                    a += THP
                if a < hend:
                    addr, stopped = a, True
                    break
                addr = v.end
            if stopped:
                break
            pid, addr = p.pid + 1, 0            # this mm is done: the next one
        k.cursor = (pid, addr)
        return made

    def ksm_scan(self, pages: int | None = None, cpu: int = 0) -> int:
        """Run ksmd (mm/ksm.c ksm_do_scan) on `cpu`: look at up to `pages`
        anonymous pages of MADV_MERGEABLE VMAs, or with None at every page
        left in the current full scan. A scan always stops where a full scan
        ends, as ksmd's does. Returns the pages merged: each a mapping that
        now shares a KSM page with another (what pages_sharing counts; two
        identical pages merging count 1).

        Deterministic: VMAs are walked in mm id, then address order, and a
        page joins the unstable tree only once its checksum held over one
        full scan, so two identical pages merge on the second full scan
        (ksm_scan(); ksm_scan()). Modelled and not: mmemu/core/ksm.pxi."""
        cpu = self._cpu_arg(cpu, "ksm_scan")
        if pages is None:
            budget = -1
        else:
            budget = A.size(pages, "ksm_scan", "pages")
            if budget >= 1 << 62:
                raise ValueError("ksm_scan: pages beyond 2^62")
        return self._engine.ksm_scan(cpu, budget)[1]

    def ksm_stats(self) -> dict[str, int]:
        """What /sys/kernel/mm/ksm shows: pages_shared (KSM pages in use),
        pages_sharing (further mappings of them), full_scans, pages_scanned,
        max_page_sharing. Kept as the kernel keeps them: a KSM mapping that
        was COWed away stops counting when ksmd next visits its address (or
        its process exits)."""
        st = self._engine.ksm_stats()
        st.pop("stable_node_chains_dups")
        return st

    def _digest_into(self, h) -> None:
        """Feed the whole machine state into hash h (the explorer's state
        key): the core's arrays but its counters, and the Python tables."""
        st = self._engine.get_state()
        for k in sorted(st):
            if k == "stats":
                continue
            v = st[k]
            h.update(k.encode())
            h.update(v.tobytes() if isinstance(v, np.ndarray) else repr(v).encode())
        for p in self._procs.values():
            h.update(repr((p.pid, p.alive, [(v.start, v.end, v.flags, v.uffd) for v in p.vmas])).encode())
        for u in self._uffds.values():
            h.update(repr((u.ctx, u.released, u.features, [w.start for w in u.faults], len(u.events),
                           [(w.start, w.woken) for w in u.waiting])).encode())

    # ---- emulated time (mmemu.cost) -----------------------------------------

    @property
    def costs(self) -> dict:
        """ns charged per counted event (Engine.stats() names; all 0 until set)."""
        return self._engine.costs

    @costs.setter
    def costs(self, model: Any) -> None:
        from .cost import CostModel
        ns = model.ns if isinstance(model, CostModel) else CostModel(dict(model)).ns
        self._engine.costs = ns

    def _cpu_arg(self, cpu, call):
        cpu = A.size(cpu, call, "cpu")
        if cpu >= self.ncpus:
            raise ValueError(f"{call}: cpu {cpu} out of range 0..{self.ncpus - 1}")
        return cpu

    def clock(self, cpu: int) -> int:
        """A CPU's emulated time in ns: Thread.replay advances it by the cost
        of what the CPU did."""
        return self._engine.clock(self._cpu_arg(cpu, "clock"))

    def set_clock(self, cpu: int, ns: int) -> None:
        cpu, ns = self._cpu_arg(cpu, "set_clock"), A.size(ns, "set_clock", "ns")
        if ns >= 1 << 63:
            raise ValueError("set_clock: ns beyond 2^63")
        self._engine.set_clock(cpu, ns)

    def check(self) -> None:
        """Verify every invariant of the machine; raise mmemu.InvariantError."""
        pfns, refs = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
        for h in self._holders:
            p, r = h.held_refs()
            pfns.append(np.asarray(p, np.int64))
            refs.append(r)
        self._engine.check(np.concatenate(pfns), np.concatenate(refs))
        for p in self._procs.values():
            self._check_vmas(p)

    def _check_vmas(self, p):
        """The Python VMA list and the core's table describe one layout:
        same VMAs in the same order, each non-empty, aligned, in user space,
        without overlap; flags equal but for the anon_vma bit, which only
        the core holds; each Python VMA names its own core entry as origin."""
        from .errors import InvariantError
        starts, ends, flags, pgoffs, files, uffds = (a.tolist() for a in self._engine.vma_table(p.mm))
        vmas = list(p.vmas)
        if len(vmas) != len(starts):
            raise InvariantError("VMA tables differ", None,
                                 f"pid {p.pid}: {len(vmas)} VMAs in Python, {len(starts)} in the core")
        # (Python ints and one loop: a process has a handful of VMAs, where
        # numpy's per-call cost would dominate; check() runs after every step
        # of the random runner.)
        core = list(zip(starts, ends, pgoffs, files, uffds))
        prev, top, page_mask = 0, C.TASK_SIZE + C.PAGE_SIZE, C.PAGE_SIZE - 1
        for i, (v, f) in enumerate(zip(vmas, flags)):
            if not prev <= v.start < v.end <= top or (v.start | v.end) & page_mask \
                    or (v.start, v.end, v.pgoff, v.file, v.uffd) != core[i] \
                    or (f & ~(VM_ANON_VMA | VM_RESV_UNMAPPED)) != v.flags or v.origin != i \
                    or (v.uffd and v.uffd not in self._uffds):
                raise InvariantError("VMA empty, misaligned, overlapping, registered with a released "
                                     "userfaultfd or not as in the core", None,
                                     f"pid {p.pid} VMA {v.start:#x}-{v.end:#x} flags {v.flags:#x} "
                                     f"uffd {v.uffd}: the core has {core[i]} flags {f:#x}")
            prev = v.end

    # ---- save / load ------------------------------------------------------------

    def save(self, path):
        """Write the whole machine to `path` (str or path-like), atomically;
        Machine.load(path) gives it back exactly (mmemu.snapshot)."""
        from . import snapshot
        snapshot.save(self, path)

    @staticmethod
    def load(path):
        """A machine saved by Machine.save()."""
        from . import snapshot
        return snapshot.load(path)

    def __reduce__(self):
        from . import snapshot
        return (snapshot.loads, (snapshot.dumps(self),))

    def __deepcopy__(self, memo):
        from . import snapshot
        return snapshot.loads(snapshot.dumps(self))

    # A shallow copy would share the engine but not the Python state around
    # it (two processes with one pid): a copy of a machine is a whole one.
    __copy__ = lambda self: self.__deepcopy__({})      # noqa: E731

    def _after_load(self):
        """Re-attach what the core points at outside its own tables."""
        for u in self._uffds.values():
            versions = getattr(u, "_versions", None)
            if versions is not None and u.features is not None:
                self._engine.uffd_resolver_source(u.ctx, versions, getattr(u, "_ring", None))
                link = getattr(u, "_link", None)
                if link is not None:            # its fault log and channel state start afresh
                    self._engine.uffd_resolver_link(u.ctx, u._arrival, link.latency_ns, link.page_ns,
                                                    link.queue_ns, int(u._arrival.max()), link.preempt)

    def stats(self) -> dict[str, int]:
        return self._engine.stats()

    def memory_usage(self) -> dict[str, int]:
        return self._engine.memory_usage()

    def __repr__(self) -> str:
        return (f"<Machine kernel={self.kernel} ({self.policy.version}, {self.policy.era}) "
                f"ncpus={self.ncpus} frames={self._engine.nframes}"
                + (f" nodes={self.nodes}" if getattr(self, "nodes", 1) > 1 else "")
                + (f" movablecore={self.movablecore}" if getattr(self, "movablecore", 0) else "")
                + (f" cma={self.cma}" if getattr(self, "cma", 0) else "") + ">")
