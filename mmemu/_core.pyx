# mmemu._core: the compiled engine. Mechanism only: bits, arrays and
# transitions. Which rules apply comes from the policy struct (eras.py).
#
# Layout (one extension, sources split with include, as uvloop does):
#   core/defs.pxi     declarations of core/mm_types.h, engine_t, gather_t
#   core/frames.pxi   frame allocation, references, contents, LRU add batch
#   core/pgtable.pxi  page-table pools, walks, VMA lookup
#   core/tlb.pxi      per-CPU TLBs, flushes, mmu_gather
#   core/fault.pxi    handle_mm_fault, do_anonymous_page, do_wp_page, user access
#   core/gup.pxi      get_user_pages / pin_user_pages
#   core/range.pxi    zap, change_protection, fork copy, clear_refs, touch, pagemap

cimport cython
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE

import numpy as np

from mmemu.errors import InvariantError, OutOfMemory, Sigbus, Sigsegv, UserFault, oserror
from mmemu.constants import SEGV_ACCERR, SEGV_MAPERR, BUS_ADRERR, BUS_MCEERR_AR

include "core/defs.pxi"
include "core/frames.pxi"
include "core/pgtable.pxi"
include "core/tlb.pxi"
include "core/uffd.pxi"
include "core/fault.pxi"
include "core/gup.pxi"
include "core/swap.pxi"
include "core/shmem.pxi"
include "core/range.pxi"
include "core/state.pxi"

POLICY_FIELDS = ("wp_reuse", "foll_cow_rule", "gup_forced_cow", "anon_exclusive",
                 "gup_unshare_anon", "gup_unshare_nonanon", "fork_early_cow",
                 "mm_has_pinned", "clear_refs_skip_pinned", "mprotect_upgrade",
                 "pm_uffd_wp", "soft_dirty", "lru_batch", "fault_around_uffd",
                 "swapout_skip_pinned", "free_swapcache_after_cow", "fault_around_pages",
                 "uffd_wp_file", "fork_uffd_child_vma", "fork_marker_child_wp", "uffd_wp_writenotify",
                 "uffd_unprotect_writable")

STAT_NAMES = ("faults", "anon_faults", "zero_faults", "wp_faults", "cow", "reuse", "unshare",
              "early_cow", "tlb_hits", "tlb_misses", "tlb_flushes", "lru_drains", "gup_pages",
              "file_faults", "fault_around_pages", "swap_out", "swap_in")

FRAME_FLAG_NAMES = {
    "anon": PG_ANON, "anon_exclusive": PG_ANON_EXCLUSIVE, "ksm": PG_KSM,
    "swapcache": PG_SWAPCACHE, "zero": PG_ZERO, "lru": PG_LRU, "dirty": PG_DIRTY,
    "uptodate": PG_UPTODATE, "reserved": PG_RESERVED, "bytes": PG_BYTES, "file": PG_FILE,
    "lazyfree": PG_LAZYFREE,
}


cdef object fault_exception(int ret, uint64_t addr, int hwpoison_code=BUS_MCEERR_AR):
    if ret & VM_FAULT_HWPOISON:
        return Sigbus(addr, hwpoison_code, "poisoned page")
    if ret & VM_FAULT_SIGSEGV:
        return Sigsegv(addr, SEGV_ACCERR if ret & VM_FAULT_ACCERR else SEGV_MAPERR)
    if ret & VM_FAULT_SIGBUS:
        return Sigbus(addr, BUS_ADRERR)
    if ret & VM_FAULT_OOM:
        return OutOfMemory(addr)
    return MemoryError(f"host allocation failed at {addr:#x}")


@cython.final
cdef class Engine:
    """One emulated machine's memory: frames, page tables, TLBs, mms.

    Frame state lives in numpy arrays owned here (readable by C through the
    same pointers); page tables live in chunked pools that never move.
    """
    cdef engine_t e
    cdef readonly object refcount, mapcount, version, fflags, mapping, index
    cdef object _tlb_tag, _tlb_pte, _lru, _lru_n
    cdef readonly object swap_map, swap_cache, swap_data, swap_flags
    cdef int hwpoison_code       # si_code of a poisoned-page SIGBUS (era/config table)
    cdef int32_t file_hint       # no free mapping id below this one
    cdef readonly dict knobs     # the policy this engine was made with

    def __cinit__(self, int64_t nframes, int ncpus, dict knobs, int64_t nswap=0):
        cdef mm_policy_t *p
        memset(&self.e, 0, sizeof(engine_t))
        self.knobs = dict(knobs)
        if nframes < 16:
            raise ValueError("a machine needs at least 16 frames")
        if ncpus < 1 or ncpus > 256:
            raise ValueError("ncpus must be in 1..256")
        missing = [k for k in POLICY_FIELDS if k not in knobs]
        if missing:
            raise ValueError(f"policy lacks knobs: {missing}")
        if not 1 <= knobs["lru_batch"] <= LRU_BATCH_MAX:
            raise ValueError(f"lru_batch must be in 1..{LRU_BATCH_MAX}")
        # Written, not just allocated: like the kernel initialising struct
        # pages at boot, the frame table is resident before the first fault,
        # so a fault's cost is the engine's and not the host's first touch.
        self.refcount = np.full(nframes, 0, np.int32)
        self.mapcount = np.full(nframes, 0, np.int32)
        self.version = np.full(nframes, 0, np.uint64)
        self.fflags = np.full(nframes, 0, np.uint16)
        self.mapping = np.full(nframes, 0, np.uint16)
        self.index = np.full(nframes, 0, np.uint32)
        self._tlb_tag = np.zeros(ncpus * MM_TLB_ENTRIES, np.uint64)
        self._tlb_pte = np.zeros(ncpus * MM_TLB_ENTRIES, np.uint64)
        self._lru = np.zeros(ncpus * LRU_BATCH_MAX, np.int64)
        self._lru_n = np.zeros(ncpus, np.int32)
        self.e.refcount = <int32_t *>cnp_data(self.refcount)
        self.e.mapcount = <int32_t *>cnp_data(self.mapcount)
        self.e.version = <uint64_t *>cnp_data(self.version)
        self.e.fflags = <uint16_t *>cnp_data(self.fflags)
        self.e.mapping = <uint16_t *>cnp_data(self.mapping)
        self.e.index = <uint32_t *>cnp_data(self.index)
        self.e.tlb_tag = <uint64_t *>cnp_data(self._tlb_tag)
        self.e.tlb_pte = <uint64_t *>cnp_data(self._tlb_pte)
        self.e.lru = <int64_t *>cnp_data(self._lru)
        self.e.lru_n = <int32_t *>cnp_data(self._lru_n)
        self.e.nframes = nframes
        self.e.ncpus = ncpus
        # pfn 0 is the shared zero page.
        self.e.fflags[0] = PG_USED | PG_ZERO | PG_RESERVED | PG_UPTODATE
        self.e.refcount[0] = 1
        self.e.next_unused = 1
        self.e.nr_free = nframes - 1
        self.e.mm_cap = 16
        self.e.mms = <mm_t *>calloc(self.e.mm_cap, sizeof(mm_t))
        if self.e.mms == NULL:
            raise MemoryError()
        p = &self.e.pol
        p.wp_reuse = knobs["wp_reuse"]
        p.foll_cow_rule = knobs["foll_cow_rule"]
        p.gup_forced_cow = knobs["gup_forced_cow"]
        p.anon_exclusive = knobs["anon_exclusive"]
        p.gup_unshare_anon = knobs["gup_unshare_anon"]
        p.gup_unshare_nonanon = knobs["gup_unshare_nonanon"]
        p.fork_early_cow = knobs["fork_early_cow"]
        p.mm_has_pinned = knobs["mm_has_pinned"]
        p.clear_refs_skip_pinned = knobs["clear_refs_skip_pinned"]
        p.mprotect_upgrade = knobs["mprotect_upgrade"]
        p.pm_uffd_wp = knobs["pm_uffd_wp"]
        p.soft_dirty = knobs["soft_dirty"]
        # x86 do_sigbus(): BUS_MCEERR_AR with CONFIG_MEMORY_FAILURE, else BUS_ADRERR.
        self.hwpoison_code = BUS_MCEERR_AR if knobs.get("memory_failure", 1) else BUS_ADRERR
        p.lru_batch = knobs["lru_batch"]
        p.fault_around_uffd = knobs["fault_around_uffd"]
        p.swapout_skip_pinned = knobs["swapout_skip_pinned"]
        p.free_swapcache_after_cow = knobs["free_swapcache_after_cow"]
        p.fault_around_pages = knobs["fault_around_pages"]
        p.uffd_wp_file = knobs["uffd_wp_file"]
        p.fork_uffd_child_vma = knobs["fork_uffd_child_vma"]
        p.fork_marker_child_wp = knobs["fork_marker_child_wp"]
        p.uffd_wp_writenotify = knobs["uffd_wp_writenotify"]
        p.uffd_unprotect_writable = knobs["uffd_unprotect_writable"]
        if not 1 <= p.fault_around_pages <= MM_PTRS:
            raise ValueError("fault_around_pages must be in 1..512")
        # The swap device (numpy-owned; one entry per slot).
        if nswap < 0:
            raise ValueError("negative swap size")
        self.swap_map = np.zeros(max(nswap, 1), np.uint16)
        self.swap_cache = np.zeros(max(nswap, 1), np.int64)
        self.swap_data = np.zeros(max(nswap, 1), np.uint64)
        self.swap_flags = np.zeros(max(nswap, 1), np.uint8)
        self.e.nswap = nswap
        self.e.swap_map = <uint16_t *>cnp_data(self.swap_map)
        self.e.swap_cache = <int64_t *>cnp_data(self.swap_cache)
        self.e.swap_data = <uint64_t *>cnp_data(self.swap_data)
        self.e.swap_flags = <uint8_t *>cnp_data(self.swap_flags)
        self.e.file_cap = 16
        self.e.nfile = 1                # mapping id 0 means anonymous
        self.e.files = <mm_file_t *>calloc(self.e.file_cap, sizeof(mm_file_t))
        if self.e.files == NULL:
            raise MemoryError()

    def __dealloc__(self):
        cdef int64_t i
        for i in range(self.e.nbyte_chunks):
            free(self.e.byte_chunks[i])
        free(self.e.byte_chunks)
        free(self.e.bytes_free)
        for i in range(self.e.ndir_chunks):
            free(self.e.dir_chunks[i])
        free(self.e.dir_chunks)
        free(self.e.dir_free)
        for i in range(self.e.npte_chunks):
            free(self.e.pte_chunks[i])
        free(self.e.pte_chunks)
        free(self.e.pte_free)
        if self.e.mms != NULL:
            for i in range(self.e.nmm):
                free(self.e.mms[i].vmas)
            free(self.e.mms)
        free(self.e.files)
        free(self.e.uffd_feat)
        free(self.e.uffd_cflags)
        if self.e.uffd_res != NULL:
            for i in range(self.e.nuffd):
                free(self.e.uffd_res[i].log)
            free(self.e.uffd_res)

    # ---- state (save / load) -------------------------------------------------

    def __reduce__(self):
        return (engine_from_state, (self.knobs, self.e.nframes, self.e.ncpus, self.e.nswap,
                                    self.get_state()))

    def get_state(self):
        """Every table of the engine, as a dict of numpy arrays and ints."""
        cdef int64_t i
        cdef int32_t j
        cdef mm_t *m
        cdef mm_file_t *f
        cdef uffd_resolver_t *r
        st = {k: getattr(self, k).copy() for k in ("refcount", "mapcount", "version", "fflags",
                                                  "mapping", "index", "swap_map", "swap_cache",
                                                  "swap_data", "swap_flags")}
        st.update(tlb_tag=self._tlb_tag.copy(), tlb_pte=self._tlb_pte.copy(), lru=self._lru.copy(),
                  lru_n=self._lru_n.copy())
        sc = {"next_unused": self.e.next_unused, "free_head": self.e.free_head,
              "nr_free": self.e.nr_free, "ndir_used": self.e.ndir_used, "npte_used": self.e.npte_used,
              "nbytes_used": self.e.nbytes_used, "nmm": self.e.nmm, "nfile": self.e.nfile,
              "nuffd": self.e.nuffd, "swap_used": self.e.swap_used, "swap_cursor": self.e.swap_cursor,
              "stamp": self.e.stamp, "reclaim_mm": self.e.reclaim_mm, "reclaim_va": self.e.reclaim_va,
              "uf_ctx": self.e.uf_ctx, "uf_mm": self.e.uf_mm, "uf_addr": self.e.uf_addr,
              "uf_flags": self.e.uf_flags, "uf_reason": self.e.uf_reason,
              "fault_addr": self.e.fault_addr, "mm_serial": self.e.mm_serial,
              "nr_pgtable": self.e.nr_pgtable}
        st["scalars"] = sc
        st["file_hint"] = self.file_hint
        st["stats"] = np.array([self.e.stats[i] for i in range(24)], np.int64)
        st["dir"] = pool_export(<void **>self.e.dir_chunks, self.e.ndir_used, MM_PTRS * 4, 9)
        st["pte"] = pool_export(<void **>self.e.pte_chunks, self.e.npte_used, MM_PTRS * 8, 9)
        st["bytes"] = pool_export(<void **>self.e.byte_chunks, self.e.nbytes_used, MM_PAGE_SIZE,
                                  MM_BYTES_CHUNK_SHIFT)
        st["dir_free"] = stack_export(self.e.dir_free, self.e.ndir_free, np.int32)
        st["pte_free"] = stack_export(self.e.pte_free, self.e.npte_free, np.int32)
        st["bytes_free"] = stack_export(self.e.bytes_free, self.e.nbytes_free, np.int64)
        mms = np.zeros((self.e.nmm, len(MM_FIELDS)), np.int64)
        vmas = []
        for j in range(self.e.nmm):
            m = &self.e.mms[j]
            mms[j] = (m.id, m.pgd, m.nvma, m.alive, <int64_t>m.flags, m.minflt, m.rss_anon,
                      m.nr_ptes, m.serial)
            vmas.append(stack_export(m.vmas, m.nvma * sizeof(mm_vma_t), np.uint8) if m.vmas != NULL
                        else np.zeros(0, np.uint8))
        st["mms"], st["vmas"] = mms, vmas
        files = np.zeros((self.e.nfile, len(FILE_FIELDS)), np.int64)
        for j in range(self.e.nfile):
            f = &self.e.files[j]
            files[j] = (f.id, f.root, f.alive, f.shmem, f.size, f.nrpages, f.nr_leaves)
        st["files"] = files
        st["uffd_feat"] = stack_export(self.e.uffd_feat, self.e.nuffd, np.uint64)
        st["uffd_cflags"] = stack_export(self.e.uffd_cflags, self.e.nuffd, np.uint32)
        res = np.zeros((self.e.nuffd, 3), np.int64)
        logs = []
        for j in range(self.e.nuffd):
            r = &self.e.uffd_res[j]
            res[j] = (r.kind, <int64_t>r.base, r.count)
            logs.append(stack_export(r.log, r.nlog, np.int64))
        st["uffd_res"], st["uffd_logs"] = res, logs
        return st

    def set_state(self, dict st):
        """Load what get_state() returned into this new, unused engine (same
        frames, CPUs, swap and policy). In-core resolvers come back without
        their source array: the owner re-installs it (uffd_resolver_source)."""
        cdef int64_t i, n
        cdef int32_t j
        cdef mm_t *m
        cdef mm_file_t *f
        cdef uffd_resolver_t *r
        cdef const uint8_t[::1] raw
        if self.e.nmm or self.e.ndir_used or self.e.nfile != 1:
            raise ValueError("set_state needs a fresh engine")
        for k in ("refcount", "mapcount", "version", "fflags", "mapping", "index", "swap_map",
                  "swap_cache", "swap_data", "swap_flags"):
            np.copyto(getattr(self, k), st[k], casting="no")
        np.copyto(self._tlb_tag, st["tlb_tag"], casting="no")
        np.copyto(self._tlb_pte, st["tlb_pte"], casting="no")
        np.copyto(self._lru, st["lru"], casting="no")
        np.copyto(self._lru_n, st["lru_n"], casting="no")
        sc = st["scalars"]
        self.e.next_unused, self.e.free_head, self.e.nr_free = sc["next_unused"], sc["free_head"], sc["nr_free"]
        self.e.swap_used, self.e.swap_cursor, self.e.stamp = sc["swap_used"], sc["swap_cursor"], sc["stamp"]
        self.e.reclaim_mm, self.e.reclaim_va = sc["reclaim_mm"], sc["reclaim_va"]
        self.e.uf_ctx, self.e.uf_mm, self.e.uf_addr = sc["uf_ctx"], sc["uf_mm"], sc["uf_addr"]
        self.e.uf_flags, self.e.uf_reason, self.e.fault_addr = sc["uf_flags"], sc["uf_reason"], sc["fault_addr"]
        self.e.mm_serial, self.e.nr_pgtable = sc["mm_serial"], sc["nr_pgtable"]
        self.file_hint = st["file_hint"]
        for i in range(24):
            self.e.stats[i] = st["stats"][i]
        # Pools and their free stacks.
        self.e.ndir_used = sc["ndir_used"]
        raw = st["dir"]
        self.e.dir_chunks = <int32_t **>pool_import(raw, self.e.ndir_used, MM_PTRS * 4, 9, &self.e.ndir_chunks)
        self.e.npte_used = sc["npte_used"]
        raw = st["pte"]
        self.e.pte_chunks = <uint64_t **>pool_import(raw, self.e.npte_used, MM_PTRS * 8, 9, &self.e.npte_chunks)
        self.e.nbytes_used = sc["nbytes_used"]
        raw = st["bytes"]
        self.e.byte_chunks = <uint8_t **>pool_import(raw, self.e.nbytes_used, MM_PAGE_SIZE,
                                                     MM_BYTES_CHUNK_SHIFT, &self.e.nbyte_chunks)
        n = len(st["dir_free"])
        self.e.dir_free = <int32_t *>stack_import(st["dir_free"], n + 64, 4)
        self.e.ndir_free, self.e.dir_free_cap = n, n + 64
        n = len(st["pte_free"])
        self.e.pte_free = <int32_t *>stack_import(st["pte_free"], n + 64, 4)
        self.e.npte_free, self.e.pte_free_cap = n, n + 64
        n = len(st["bytes_free"])
        self.e.bytes_free = <int64_t *>stack_import(st["bytes_free"], self.e.nbytes_used + 1, 8)
        self.e.nbytes_free, self.e.bytes_free_cap = n, self.e.nbytes_used + 1
        # mms and their VMA tables.
        n = sc["nmm"]
        free(self.e.mms)
        self.e.mm_cap = max(16, n)
        self.e.mms = <mm_t *>calloc(self.e.mm_cap, sizeof(mm_t))
        if self.e.mms == NULL:
            raise MemoryError()
        self.e.nmm = <int32_t>n
        for j in range(n):
            m = &self.e.mms[j]
            row = st["mms"][j]
            m.id, m.pgd, m.nvma, m.alive = row[0], row[1], row[2], row[3]
            m.flags, m.minflt, m.rss_anon, m.nr_ptes, m.serial = row[4], row[5], row[6], row[7], row[8]
            if len(st["vmas"][j]) != m.nvma * sizeof(mm_vma_t):
                raise ValueError("VMA table of the wrong size")
            m.vmas = <mm_vma_t *>stack_import(st["vmas"][j], m.nvma, sizeof(mm_vma_t)) if m.nvma else NULL
        # Page caches.
        n = sc["nfile"]
        free(self.e.files)
        self.e.file_cap = max(16, n)
        self.e.files = <mm_file_t *>calloc(self.e.file_cap, sizeof(mm_file_t))
        if self.e.files == NULL:
            raise MemoryError()
        self.e.nfile = <int32_t>n
        for j in range(n):
            row = st["files"][j]
            f = &self.e.files[j]
            f.id, f.root, f.alive, f.shmem = row[0], row[1], row[2], row[3]
            f.size, f.nrpages, f.nr_leaves = row[4], row[5], row[6]
        # userfaultfd contexts.
        n = sc["nuffd"]
        if n:
            self.e.uffd_feat = <uint64_t *>stack_import(st["uffd_feat"], n, 8)
            self.e.uffd_cflags = <uint32_t *>stack_import(st["uffd_cflags"], n, 4)
            self.e.uffd_res = <uffd_resolver_t *>calloc(n, sizeof(uffd_resolver_t))
            if self.e.uffd_res == NULL:
                raise MemoryError()
            self.e.nuffd = <int32_t>n
            for j in range(n):
                r = &self.e.uffd_res[j]
                r.kind, r.base, r.count = st["uffd_res"][j][0], <uint64_t>st["uffd_res"][j][1], st["uffd_res"][j][2]
                r.nlog = r.caplog = len(st["uffd_logs"][j])
                r.log = <int64_t *>stack_import(st["uffd_logs"][j], r.nlog, 8) if r.nlog else NULL

    def uffd_resolver_source(self, int32_t ctx, object versions):
        """Point a loaded in-core COPY resolver at its source array again."""
        cdef uint64_t[::1] v
        if ctx <= 0 or ctx >= self.e.nuffd:
            raise ValueError("no such context")
        r = &self.e.uffd_res[ctx]
        r.src, r.nsrc = NULL, 0
        if versions is not None and len(versions):
            v = versions
            r.src, r.nsrc = &v[0], v.shape[0]

    # ---- mms ---------------------------------------------------------------

    cdef mm_t *_mm(self, int32_t mm) except NULL:
        if mm < 0 or mm >= self.e.nmm or not self.e.mms[mm].alive:
            raise oserror(3, "mm", f"no live mm {mm}")      # ESRCH
        return &self.e.mms[mm]

    cdef int _span(self, uint64_t start, uint64_t end) except -1:
        """Entry check of an address range: page aligned, ordered, user space."""
        if (start | end) & (MM_PAGE_SIZE - 1) or start > end or end > MM_USER_TOP:
            raise ValueError(f"bad range [{start:#x}, {end:#x})")
        return 0

    cdef int _pages(self, uint64_t start, int64_t npages) except -1:
        if npages < 0 or start > MM_USER_TOP \
                or <uint64_t>npages > (MM_USER_TOP - start) >> MM_PAGE_SHIFT:
            raise ValueError(f"bad page range {start:#x} + {npages} pages")
        return 0

    cdef int _index_span(self, uint64_t first, uint64_t last) except -1:
        if first > last or last > MM_MAX_FILE_PAGES:
            raise ValueError(f"bad file index range [{first}, {last})")
        return 0

    cdef int _cpu(self, int cpu) except -1:
        if cpu < 0 or cpu >= self.e.ncpus:
            raise ValueError(f"cpu {cpu} out of range 0..{self.e.ncpus - 1}")
        return cpu

    def mm_new(self):
        cdef int32_t i, slot = -1
        cdef mm_t *ms
        cdef mm_t *m
        for i in range(self.e.nmm):
            if not self.e.mms[i].alive:
                slot = i
                break
        if slot < 0:
            if self.e.nmm >= MM_MAX_MM:
                raise oserror(12, "fork", "too many address spaces")
            if self.e.nmm == self.e.mm_cap:
                ms = <mm_t *>realloc(self.e.mms, self.e.mm_cap * 2 * sizeof(mm_t))
                if ms == NULL:
                    raise MemoryError()
                memset(ms + self.e.mm_cap, 0, self.e.mm_cap * sizeof(mm_t))
                self.e.mms = ms
                self.e.mm_cap *= 2
            slot = self.e.nmm
            self.e.nmm += 1
        m = &self.e.mms[slot]
        free(m.vmas)
        memset(m, 0, sizeof(mm_t))
        m.id = slot
        self.e.mm_serial += 1
        m.serial = self.e.mm_serial
        m.pgd = dir_alloc(&self.e)
        if m.pgd < 0:
            if self.e.pgtable_refused:
                raise oserror(12, "fork", "no memory for the new page tables")    # ENOMEM
            raise MemoryError()
        m.alive = 1
        return slot

    def mm_destroy(self, int32_t mm, int cpu):
        """exit_mmap: zap everything, flush, free the page tables."""
        cdef mm_t *m = self._mm(mm)
        cdef gather_t g
        self._cpu(cpu)
        lru_drain(&self.e, cpu)
        gather_init(&g, mm, 0, 1ULL << 47)
        zap_range(&self.e, m, 0, 1ULL << 47, &g, False)
        tlb_flush_mm(&self.e, mm)
        g.need_flush = 0
        gather_finish(&self.e, &g)
        free_dir_tree(&self.e, m.pgd, 0)
        free(m.vmas)
        m.vmas = NULL
        m.nvma = 0
        m.alive = 0

    def set_vmas(self, int32_t mm, const uint64_t[::1] starts, const uint64_t[::1] ends,
                 const uint64_t[::1] flags, const uint64_t[::1] pgoffs, const int32_t[::1] files):
        """Replace the mm's VMA table (the Python side owns VMA layout)."""
        cdef mm_t *m = self._mm(mm)
        cdef Py_ssize_t n = starts.shape[0], i
        cdef mm_vma_t *v
        if not (ends.shape[0] == flags.shape[0] == pgoffs.shape[0] == files.shape[0] == n):
            raise ValueError("VMA arrays differ in length")
        # Checked before anything changes: every VMA non-empty, aligned, in
        # user space, sorted without overlap, naming a live file or none.
        for i in range(n):
            self._span(starts[i], ends[i])
            if starts[i] == ends[i] or (i and starts[i] < ends[i - 1]):
                raise ValueError("VMAs empty, overlapping or unsorted")
            if files[i]:
                self._file(files[i])
                if pgoffs[i] + ((ends[i] - starts[i]) >> MM_PAGE_SHIFT) > MM_MAX_FILE_PAGES:
                    raise ValueError("file VMA beyond the page-cache index")
        v = <mm_vma_t *>malloc((n if n else 1) * sizeof(mm_vma_t))
        if v == NULL:
            raise MemoryError()
        for i in range(n):
            v[i].start = starts[i]
            v[i].end = ends[i]
            v[i].flags = flags[i]
            v[i].pgoff = pgoffs[i]
            v[i].file = files[i]
            v[i].uffd = 0
        free(m.vmas)
        m.vmas = v
        m.nvma = <int32_t>n

    def vma_flags(self, int32_t mm):
        """The flags of the mm's VMA table, in order: the core sets some
        (VM_ANON_VMA) and the Python side reads them back before relayouts."""
        cdef mm_t *m = self._mm(mm)
        out = np.zeros(m.nvma, np.uint64)
        cdef uint64_t[::1] o = out
        cdef int32_t i
        for i in range(m.nvma):
            o[i] = m.vmas[i].flags
        return out

    def vma_table(self, int32_t mm):
        """The core's VMA table: (starts, ends, flags, pgoffs, files, uffds)."""
        cdef mm_t *m = self._mm(mm)
        cdef int32_t i, n = m.nvma
        out = (np.zeros(n, np.uint64), np.zeros(n, np.uint64), np.zeros(n, np.uint64),
               np.zeros(n, np.uint64), np.zeros(n, np.int32), np.zeros(n, np.int32))
        cdef uint64_t[::1] s = out[0], e = out[1], f = out[2], o = out[3]
        cdef int32_t[::1] fi = out[4], u = out[5]
        for i in range(n):
            s[i], e[i], f[i], o[i] = m.vmas[i].start, m.vmas[i].end, m.vmas[i].flags, m.vmas[i].pgoff
            fi[i], u[i] = m.vmas[i].file, m.vmas[i].uffd
        return out

    def mm_info(self, int32_t mm):
        cdef mm_t *m = self._mm(mm)
        return {"minflt": m.minflt, "rss_anon": m.rss_anon, "nr_ptes": m.nr_ptes,
                "has_pinned": bool(m.flags & MMF_HAS_PINNED)}

    # ---- user accesses -----------------------------------------------------

    def read(self, int32_t mm, int cpu, uint64_t va, Py_ssize_t n, bint kernel=False, object hook=None):
        """Read n bytes at va. hook(ctx, address, flags), when given, serves a
        userfault in place: None means resolved and woken (the access goes
        on), anything else stops the access with UserFault."""
        cdef mm_t *m = self._mm(mm)
        cdef bytes out = PyBytes_FromStringAndSize(NULL, n)
        cdef uint8_t *buf = <uint8_t *>PyBytes_AS_STRING(out)
        cdef int64_t done = 0
        cdef int ret
        self._cpu(cpu)
        while True:
            with nogil:
                ret = user_copy_range(&self.e, m, cpu, va, buf, n, False, kernel, &done)
            if not ret:
                return out
            m = self._serve_userfault(ret, hook, mm, done)

    cdef int _raise(self, int ret, int64_t done, object waiter=None) except -1:
        if ret & VM_FAULT_UFFD:
            raise UserFault(self.e.uf_ctx, self.e.uf_mm, self.e.uf_addr, self.e.uf_flags,
                            self.e.uf_reason, done, waiter=waiter)
        raise fault_exception(ret, self.e.fault_addr, self.hwpoison_code)

    cdef mm_t *_serve_userfault(self, int ret, object hook, int32_t mm, int64_t done) except NULL:
        """An access stopped with `ret`: a userfault goes to `hook` (the
        faulting thread's service path) without leaving this call; when it
        comes back resolved the access retries the same address (the mm is
        looked up again: the handler may have changed the address space).
        Otherwise raise what stopped it."""
        cdef object w = False
        cdef int64_t serial = self.e.mms[mm].serial
        if ret & VM_FAULT_UFFD and hook is not None:
            w = hook(self.e.uf_ctx, self.e.uf_addr, self.e.uf_flags)
            if w is None:
                # The handler may have ended the process and a new one taken
                # its mm id: never retry the access into another address space.
                if not self.e.mms[mm].alive or self.e.mms[mm].serial != serial:
                    raise oserror(3, "access", "the process exited while its access waited on a userfault")
                return self._mm(mm)
        self._raise(ret, done, w if w is not False else None)
        return NULL

    def write(self, int32_t mm, int cpu, uint64_t va, const uint8_t[::1] data, bint kernel=False,
              object hook=None):
        """Write data at va (hook: as for read)."""
        cdef mm_t *m = self._mm(mm)
        cdef int64_t done = 0
        cdef int ret
        self._cpu(cpu)
        if data.shape[0] == 0:
            return
        while True:
            with nogil:
                ret = user_copy_range(&self.e, m, cpu, va, <uint8_t *>&data[0], data.shape[0], True,
                                      kernel, &done)
            if not ret:
                return
            m = self._serve_userfault(ret, hook, mm, done)

    def touch(self, int32_t mm, int cpu, uint64_t start, int64_t npages, bint write, uint64_t value=0,
              object hook=None):
        """The batch access path: one access per page, staying in the core
        (hook: as for read; a served userfault never leaves this call)."""
        self._pages(start, npages)
        cdef mm_t *m = self._mm(mm)
        cdef int64_t done = 0, d
        cdef int ret
        self._cpu(cpu)
        while True:
            with nogil:
                ret = touch_range(&self.e, m, cpu, start + (<uint64_t>done << MM_PAGE_SHIFT),
                                  npages - done, write, value, &d)
            done += d
            if not ret:
                return done
            m = self._serve_userfault(ret, hook, mm, done)

    # ---- GUP ---------------------------------------------------------------

    def gup(self, int32_t mm, int cpu, uint64_t start, int64_t npages, int gup_flags):
        """(pfns, errno): pfns of the pages done; errno of what stopped it."""
        self._pages(start, npages)
        cdef mm_t *m = self._mm(mm)
        # GUP stops at the first hole: the array need not be longer than the
        # VMAs mapped from start, whatever count the caller asked for.
        pfns = np.zeros(max(min(npages, mapped_pages(m, start, npages)), 1), np.int64)
        cdef int64_t[::1] pv = pfns
        cdef int err = 0
        cdef int64_t done
        self._cpu(cpu)
        with nogil:
            done = gup_range(&self.e, m, cpu, start, npages, gup_flags, &pv[0], &err)
        if err == -1:
            # A uffd fault inside GUP: the syscall waits like a user access.
            raise UserFault(self.e.uf_ctx, self.e.uf_mm, self.e.uf_addr, self.e.uf_flags,
                            self.e.uf_reason, done, pfns[:done].copy())
        return pfns[:done].copy(), err

    def put_pages(self, const int64_t[::1] pfns, int32_t nr):
        """Drop `nr` references from each frame (put_page / unpin_user_page)."""
        cdef Py_ssize_t i
        for i in range(pfns.shape[0]):
            if pfns[i] < 0 or pfns[i] >= self.e.nframes or not (self.e.fflags[pfns[i]] & PG_USED):
                raise InvariantError("reference dropped on a free frame", pfns[i])
        if pfns.shape[0]:
            unpin_pages(&self.e, &pfns[0], pfns.shape[0], nr)

    def frame_read(self, int64_t pfn, int64_t off, int64_t n):
        cdef bytes out = PyBytes_FromStringAndSize(NULL, n)
        self._frame(pfn, off, n)
        frame_read(&self.e, pfn, off, n, <uint8_t *>PyBytes_AS_STRING(out))
        return out

    def frame_write(self, int64_t pfn, int64_t off, const uint8_t[::1] data):
        self._frame(pfn, off, data.shape[0])
        if pfn == ZERO_PFN:
            raise InvariantError("write into the shared zero page", pfn)
        if data.shape[0] and frame_write(&self.e, pfn, off, data.shape[0], &data[0]) < 0:
            raise MemoryError()

    cdef int _frame(self, int64_t pfn, int64_t off, int64_t n) except -1:
        if pfn < 0 or pfn >= self.e.nframes or not (self.e.fflags[pfn] & PG_USED):
            raise InvariantError("access to a free frame", pfn)
        if off < 0 or n < 0 or off + n > <int64_t>MM_PAGE_SIZE:
            raise ValueError("offset/length outside the page")
        return 0

    # ---- range operations --------------------------------------------------

    def zap(self, int32_t mm, int cpu, uint64_t start, uint64_t end, bint free_tables=False,
            bint wp_markers=False):
        """Unmap [start, end): zap, flush, release (zap_page_range / unmap_region).
        wp_markers: keep uffd-wp as markers (DONTNEED of a file-backed wp VMA)."""
        self._span(start, end)
        cdef mm_t *m = self._mm(mm)
        cdef gather_t g
        self._cpu(cpu)
        with nogil:
            lru_drain(&self.e, cpu)
            gather_init(&g, mm, start, end)
            zap_range(&self.e, m, start, end, &g, wp_markers)
            gather_finish(&self.e, &g)
            if free_tables:
                free_pte_tables(&self.e, m, start, end)

    def change_protection(self, int32_t mm, uint64_t start, uint64_t end, uint64_t newflags):
        self._span(start, end)
        cdef mm_t *m = self._mm(mm)
        cdef int64_t lost
        with nogil:
            lost = change_protection(&self.e, m, start, end, newflags)
            if lost:
                tlb_flush_range(&self.e, mm, start, end)
        return lost

    def move_ptes(self, int32_t mm, uint64_t old, uint64_t new, uint64_t length):
        """mremap's move of page-table entries from old to new (same mm)."""
        self._pages(old, <int64_t>(length >> MM_PAGE_SHIFT))
        self._pages(new, <int64_t>(length >> MM_PAGE_SHIFT))
        cdef mm_t *m = self._mm(mm)
        cdef int64_t ret
        with nogil:
            ret = move_ptes(&self.e, m, old, new, length, self.e.pol.soft_dirty != 0)
        if ret < 0:
            # (move_ptes moved what it had back: the old range is whole.)
            if self.e.pgtable_refused:
                raise oserror(12, "mremap", "no memory for the new page tables")
            raise MemoryError()

    def clear_soft_dirty(self, int32_t mm, uint64_t start, uint64_t end, uint64_t vma_flags):
        self._span(start, end)
        cdef mm_t *m = self._mm(mm)
        cdef int64_t lost
        with nogil:
            lost = clear_soft_dirty_range(&self.e, m, start, end, vma_flags)
        return lost

    def flush_mm(self, int32_t mm):
        self._mm(mm)
        tlb_flush_mm(&self.e, mm)

    def fork_range(self, int32_t src, int32_t dst, int cpu, uint64_t start, uint64_t end,
                   uint64_t src_flags, uint64_t dst_flags):
        """Copy one VMA's page tables; returns how many parent ptes were write-protected."""
        self._span(start, end)
        cdef mm_t *s = self._mm(src)
        cdef mm_t *d = self._mm(dst)
        cdef int64_t wp = 0
        cdef int ret
        self._cpu(cpu)
        with nogil:
            ret = copy_range(&self.e, s, d, cpu, start, end, src_flags, dst_flags, &wp)
        if ret < 0:
            if wp:
                tlb_flush_mm(&self.e, src)
            raise oserror(12, "fork")
        return wp

    def lru_drain(self, int cpu):
        self._cpu(cpu)
        lru_drain(&self.e, cpu)

    # ---- inspection --------------------------------------------------------

    def pagemap(self, int32_t mm, uint64_t start, int64_t npages):
        self._pages(start, npages)
        cdef mm_t *m = self._mm(mm)
        out = np.zeros(npages, np.uint64)
        cdef uint64_t[::1] o = out
        cdef int64_t i
        for i in range(npages):
            o[i] = pagemap_entry(&self.e, m, start + (<uint64_t>i << MM_PAGE_SHIFT))
        return out

    def versions(self, int32_t mm, uint64_t start, int64_t npages):
        """Content version of the page mapped at each address (0: none or zeros;
        all ones: byte-exact contents)."""
        self._pages(start, npages)
        cdef mm_t *m = self._mm(mm)
        out = np.zeros(npages, np.uint64)
        cdef uint64_t[::1] o = out
        cdef uint64_t *ptep
        cdef int64_t i
        for i in range(npages):
            ptep = pte_offset(&self.e, m, start + (<uint64_t>i << MM_PAGE_SHIFT), False)
            if ptep != NULL and ptep[0] & PTE_PRESENT:
                o[i] = frame_content_version(&self.e, <int64_t>pte_pfn(ptep[0]))
        return out

    def pte(self, int32_t mm, uint64_t va):
        """The raw pte value at va (0 if none)."""
        cdef mm_t *m = self._mm(mm)
        cdef uint64_t *ptep = pte_offset(&self.e, m, va, False)
        return ptep[0] if ptep != NULL else 0

    def frame_info(self, int64_t pfn):
        if pfn < 0 or pfn >= self.e.nframes:
            raise ValueError(f"pfn {pfn} out of range 0..{self.e.nframes - 1}")
        f = self.e.fflags[pfn]
        return (int(self.e.refcount[pfn]), int(self.e.mapcount[pfn]),
                {name for name, bit in FRAME_FLAG_NAMES.items() if f & bit},
                bool(f & PG_USED), int(self.e.mapping[pfn]), int(self.e.index[pfn]))

    def stats(self):
        return {name: int(self.e.stats[i]) for i, name in enumerate(STAT_NAMES)}

    def memory_usage(self):
        """Bytes of engine state: frame table, page-table pools, byte store."""
        frames = self.e.nframes * (4 + 4 + 8 + 2 + 2 + 4)
        return {
            "frames": frames,
            "frames_used": self.e.nframes - self.e.nr_free,
            "pgtable_pages": self.e.nr_pgtable,     # charged against the frames too
            "pte_pages": self.e.npte_used - self.e.npte_free,
            "page_tables": (self.e.npte_used - self.e.npte_free) * MM_PTRS * 8
            + (self.e.ndir_used - self.e.ndir_free) * MM_PTRS * 4,
            "byte_pages": self.e.nbytes_used - self.e.nbytes_free,
        }

    @property
    def nframes(self):
        return self.e.nframes

    @property
    def nr_free(self):
        return self.e.nr_free

    # ---- files (page caches) -----------------------------------------------

    cdef mm_file_t *_file(self, int32_t fid) except NULL:
        if fid <= 0 or fid >= self.e.nfile or not self.e.files[fid].alive:
            raise oserror(9, "file", f"no live file {fid}")      # EBADF
        return &self.e.files[fid]

    def file_new(self, bint shmem=True):
        """A new, empty shmem file; returns its mapping id (1..65535)."""
        cdef int32_t i, fid = -1
        cdef mm_file_t *fs
        # Lowest free id from a hint (file_destroy lowers it): linear over
        # a run of creations rather than a rescan each time.
        for i in range(max(self.file_hint, 1), self.e.nfile):
            if not self.e.files[i].alive:
                fid = i
                break
        if fid < 0:
            if self.e.nfile > 65535:
                raise oserror(23, "memfd_create", "mapping ids exhausted")   # ENFILE
            if self.e.nfile == self.e.file_cap:
                fs = <mm_file_t *>realloc(self.e.files, self.e.file_cap * 2 * sizeof(mm_file_t))
                if fs == NULL:
                    raise MemoryError()
                memset(fs + self.e.file_cap, 0, self.e.file_cap * sizeof(mm_file_t))
                self.e.files = fs
                self.e.file_cap *= 2
            fid = self.e.nfile
            self.e.nfile += 1
        f = &self.e.files[fid]
        memset(f, 0, sizeof(mm_file_t))
        f.id = fid
        f.root = dir_alloc(&self.e)
        if f.root < 0:
            if self.e.pgtable_refused:
                raise oserror(12, "memfd_create", "no memory for the page cache")  # ENOMEM
            raise MemoryError()
        f.alive = 1
        f.shmem = shmem
        self.file_hint = fid + 1
        return fid

    def file_destroy(self, int32_t fid):
        """The last reference went (no fd, no mapping): drop the whole cache."""
        cdef mm_file_t *f = self._file(fid)
        cache_truncate(&self.e, f, 0, 1ULL << 35)
        free_dir_tree(&self.e, f.root, 0)
        f.alive = 0
        self.file_hint = min(self.file_hint, fid)

    def file_info(self, int32_t fid):
        cdef mm_file_t *f = self._file(fid)
        return {"size": f.size, "nrpages": f.nrpages}

    def file_set_size(self, int32_t fid, int64_t size):
        """Set i_size. Shrinking expects the caller to have unmapped past EOF
        and truncated the cache (shmem_setattr order)."""
        cdef mm_file_t *f = self._file(fid)
        if size < 0 or <uint64_t>size > MM_MAX_FILE_PAGES << MM_PAGE_SHIFT:
            raise ValueError(f"file size {size} beyond the page-cache index")
        if size < f.size:
            cache_zero_tail(&self.e, f, size)
        f.size = size

    def file_fallocate(self, int32_t fid, int cpu, uint64_t first, uint64_t last):
        """shmem_fallocate() without PUNCH_HOLE: every page of [first, last)
        enters the cache (zeroed if new). Returns pages allocated."""
        self._index_span(first, last)
        cdef mm_file_t *f = self._file(fid)
        cdef uint64_t i
        cdef int64_t pfn, n = 0, before
        cdef int ret = 0
        self._cpu(cpu)
        with nogil:
            for i in range(first, last):
                before = f.nrpages
                pfn = shmem_get_folio(&self.e, f, i, True, cpu, &ret)
                if ret & VM_FAULT_OOM and reclaim_pages(&self.e, cpu, RECLAIM_BATCH) > 0:
                    pfn = shmem_get_folio(&self.e, f, i, True, cpu, &ret)
                if ret:
                    break
                # shmem_fallocate(): new folios are dirty but not uptodate
                # (fault-around skips them); existing ones become uptodate.
                if f.nrpages > before:
                    self.e.fflags[pfn] = (self.e.fflags[pfn] | PG_DIRTY) & ~PG_UPTODATE
                else:
                    self.e.fflags[pfn] |= PG_DIRTY | PG_UPTODATE
                n += f.nrpages - before
        if ret:
            raise oserror(28, "fallocate", "no space (out of memory and swap)")   # ENOSPC
        return n

    def file_mapped_indices(self, int32_t fid, uint64_t first, uint64_t last):
        """Indices in [first, last) whose cache folio is mapped somewhere."""
        self._index_span(first, last)
        cdef mm_file_t *f = self._file(fid)
        cdef uint64_t i
        cdef uint64_t *cs
        out = []
        for i in range(first, min(last, file_pages(f))):
            cs = cache_slot(&self.e, f, i, False)
            if cs != NULL and cs[0] & PTE_PRESENT and self.e.mapcount[pte_pfn(cs[0])] > 0:
                out.append(i)
        return out

    def file_truncate_cache(self, int32_t fid, uint64_t first, uint64_t last):
        """Remove indices [first, last) from the cache; returns folios that
        were still mapped when removed."""
        self._index_span(first, last)
        cdef mm_file_t *f = self._file(fid)
        return cache_truncate(&self.e, f, first, last)

    def file_pread(self, int32_t fid, int cpu, int64_t off, int64_t n):
        cdef mm_file_t *f = self._file(fid)
        cdef int ret = 0
        cdef int64_t done
        if off < 0 or n < 0:
            raise ValueError("negative file offset or count")
        if off >= f.size:
            return b""
        n = min(n, f.size - off)        # never a buffer beyond EOF, whatever was asked
        buf = bytearray(n)
        cdef uint8_t[::1] b = buf
        self._cpu(cpu)
        if n <= 0:
            return b""
        done = file_rw(&self.e, f, off, n, &b[0], False, cpu, &ret)
        if ret:
            raise fault_exception(ret, 0, self.hwpoison_code)
        return bytes(buf[:done])

    def file_pwrite(self, int32_t fid, int cpu, int64_t off, const uint8_t[::1] data):
        cdef mm_file_t *f = self._file(fid)
        cdef int ret = 0
        cdef int64_t done
        self._cpu(cpu)
        if off < 0 or <uint64_t>(off + data.shape[0]) > MM_MAX_FILE_PAGES << MM_PAGE_SHIFT:
            raise ValueError("write outside the page-cache index range")
        if data.shape[0] == 0:
            return 0
        done = file_rw(&self.e, f, off, data.shape[0], <uint8_t *>&data[0], True, cpu, &ret)
        if ret:
            raise fault_exception(ret, 0, self.hwpoison_code)
        return done

    def unmap_file(self, int32_t mm, int cpu, uint64_t vma_start, uint64_t first, uint64_t last,
                   bint even_cows, bint drop_markers=False):
        """unmap_mapping_range() over one VMA: ptes of file indices [first, last)."""
        self._index_span(first, last)
        cdef mm_t *m = self._mm(mm)
        cdef int32_t vi = find_vma(m, vma_start)
        cdef gather_t g
        self._cpu(cpu)
        if vi < 0 or not m.vmas[vi].file:
            raise ValueError("no file VMA there")
        gather_init(&g, mm, m.vmas[vi].start, m.vmas[vi].end)
        unmap_file_range(&self.e, m, &m.vmas[vi], first, last, even_cows, drop_markers, &g)
        gather_finish(&self.e, &g)

    # ---- userfaultfd ----------------------------------------------------------

    def uffd_set(self, int32_t ctx, uint64_t features, uint32_t cflags):
        """Tell the core a context's features and flags (ids from 1)."""
        cdef uint64_t *f
        cdef uint32_t *fl
        cdef uffd_resolver_t *rs
        cdef int32_t n
        if ctx <= 0:
            raise ValueError("context ids start at 1")
        if ctx >= self.e.nuffd:
            n = ctx * 2 + 8
            f = <uint64_t *>realloc(self.e.uffd_feat, n * sizeof(uint64_t))
            if f == NULL:
                raise MemoryError()
            self.e.uffd_feat = f
            fl = <uint32_t *>realloc(self.e.uffd_cflags, n * sizeof(uint32_t))
            if fl == NULL:
                raise MemoryError()
            self.e.uffd_cflags = fl
            rs = <uffd_resolver_t *>realloc(self.e.uffd_res, n * sizeof(uffd_resolver_t))
            if rs == NULL:
                raise MemoryError()
            self.e.uffd_res = rs
            memset(self.e.uffd_feat + self.e.nuffd, 0, (n - self.e.nuffd) * sizeof(uint64_t))
            memset(self.e.uffd_cflags + self.e.nuffd, 0, (n - self.e.nuffd) * sizeof(uint32_t))
            memset(self.e.uffd_res + self.e.nuffd, 0, (n - self.e.nuffd) * sizeof(uffd_resolver_t))
            self.e.nuffd = n
        self.e.uffd_feat[ctx] = features
        self.e.uffd_cflags[ctx] = cflags

    def uffd_resolver(self, int32_t ctx, int kind, uint64_t base=0, object versions=None):
        """Install (kind != 0) or remove an in-core resolver. `versions` is a
        numpy uint64 array the caller keeps alive while installed."""
        cdef uint64_t[::1] v
        if ctx <= 0 or ctx >= self.e.nuffd:
            raise ValueError("no such context")
        r = &self.e.uffd_res[ctx]
        r.kind = kind
        r.base = base
        r.src = NULL
        r.nsrc = 0
        if versions is not None and len(versions):
            v = versions
            r.src = &v[0]
            r.nsrc = v.shape[0]
        r.nlog = 0
        r.count = 0

    def uffd_resolver_log(self, int32_t ctx):
        """(faults resolved, numpy array of logged addresses)."""
        if ctx <= 0 or ctx >= self.e.nuffd:
            raise ValueError("no such context")
        r = &self.e.uffd_res[ctx]
        out = np.zeros(r.nlog, np.int64)
        cdef int64_t[::1] o = out
        cdef int64_t i
        for i in range(r.nlog):
            o[i] = r.log[i]
        return r.count, out

    def pagemap_categories(self, int32_t mm, uint64_t start, int64_t npages, bint none_written):
        """PAGEMAP_SCAN categories per page (0xFFFF outside any VMA)."""
        self._pages(start, npages)
        cdef mm_t *m = self._mm(mm)
        out = np.full(npages, 0xFFFF, np.uint16)
        cdef uint16_t[::1] o = out
        cdef int64_t i
        cdef int32_t vi
        cdef uint64_t va
        cdef uint64_t *ptep
        with nogil:
            for i in range(npages):
                va = start + (<uint64_t>i << MM_PAGE_SHIFT)
                vi = find_vma(m, va)
                if vi < 0:
                    continue
                ptep = pte_offset(&self.e, m, va, False)
                o[i] = pagemap_category(&self.e, &m.vmas[vi], ptep[0] if ptep != NULL else 0, none_written)
        return out

    def set_vma_uffd(self, int32_t mm, const int32_t[::1] ctxs):
        """The uffd context of each VMA, in table order."""
        cdef mm_t *m = self._mm(mm)
        cdef int32_t i
        if ctxs.shape[0] != m.nvma:
            raise ValueError("one context per VMA")
        for i in range(m.nvma):
            if ctxs[i] < 0 or (ctxs[i] and ctxs[i] >= self.e.nuffd):
                raise ValueError(f"no userfaultfd context {ctxs[i]}")
        for i in range(m.nvma):
            m.vmas[i].uffd = ctxs[i]

    def uffd_writeprotect(self, int32_t mm, uint64_t start, uint64_t end, bint protect,
                          bint use_markers, uint64_t vmflags):
        self._span(start, end)
        cdef mm_t *m = self._mm(mm)
        cdef int64_t lost
        with nogil:
            lost = uffd_wp_range(&self.e, m, start, end, protect, use_markers, vmflags)
            if lost > 0:
                tlb_flush_range(&self.e, mm, start, end)
        if lost < 0:
            raise MemoryError()
        return lost

    def uffd_fill(self, int32_t mm, int cpu, uint64_t dst, int64_t npages, int kind,
                  object src_bytes=None, int32_t src_mm=-1, uint64_t src=0, bint wp=False):
        """COPY/ZEROPAGE/CONTINUE/POISON over npages: (pages done, errno).
        COPY takes src_bytes (npages * 4 KiB) or the frames mapped at src in
        src_mm (faulted in by the caller first, as copy_from_user would)."""
        self._pages(dst, npages)
        cdef mm_t *m = self._mm(mm)
        cdef mm_t *sm = NULL
        cdef const uint8_t[::1] sb
        cdef const uint8_t *sp = NULL
        cdef int64_t i, spfn = -1
        cdef int32_t vi
        cdef int rc = 0
        cdef uint64_t va
        cdef uint64_t *sptep
        cdef const uint8_t *base = NULL
        self._cpu(cpu)
        if src_bytes is not None:
            # bytes (the usual handler argument) are read in place, which
            # skips building a typed memoryview on every call.
            if type(src_bytes) is bytes:
                if PyBytes_GET_SIZE(src_bytes) < npages * <int64_t>MM_PAGE_SIZE:
                    raise ValueError("source shorter than the range")
                base = <const uint8_t *>PyBytes_AS_STRING(src_bytes)
            else:
                sb = src_bytes
                if sb.shape[0] < npages * <int64_t>MM_PAGE_SIZE:
                    raise ValueError("source shorter than the range")
                if npages > 0:
                    base = &sb[0]
        if src_mm >= 0:
            sm = self._mm(src_mm)
        for i in range(npages):
            va = dst + (<uint64_t>i << MM_PAGE_SHIFT)
            vi = find_vma(m, va)
            if vi < 0:
                return i, CORE_ENOENT
            if base != NULL:
                sp = base + (i << MM_PAGE_SHIFT)
            elif sm != NULL:
                sptep = pte_offset(&self.e, sm, src + (<uint64_t>i << MM_PAGE_SHIFT), False)
                if sptep == NULL or not (sptep[0] & PTE_PRESENT):
                    return i, CORE_EFAULT
                spfn = <int64_t>pte_pfn(sptep[0])
            rc = uffd_fill(&self.e, m, cpu, &m.vmas[vi], va, kind, sp, spfn, wp)
            if rc == -CORE_ENOMEM and reclaim_pages(&self.e, cpu, RECLAIM_BATCH) > 0:
                rc = uffd_fill(&self.e, m, cpu, &m.vmas[vi], va, kind, sp, spfn, wp)
            if rc < 0:
                return i, -rc
        return npages, 0

    def uffd_fill_one(self, int32_t mm, int cpu, int32_t ctx, uint64_t dst, uint64_t length, int kind,
                      bytes src=None):
        """COPY (from `src`, whole pages) or ZEROPAGE without mode bits, a
        handler's usual call: (pages done, errno) when [dst, dst + length) is
        page aligned and inside one VMA registered to ctx; None, with nothing
        done, when not: the caller then takes the checked path and its errors."""
        cdef mm_t *m = self._mm(mm)
        cdef const uint8_t *base = NULL
        cdef const uint8_t *sp = NULL
        cdef int64_t i, npages
        cdef int32_t vi
        cdef int rc
        cdef uint64_t va
        self._cpu(cpu)
        if length == 0 or (dst | length) & (MM_PAGE_SIZE - 1) or dst + length < dst:
            return None
        if kind == FILL_COPY:
            if src is None or <uint64_t>PyBytes_GET_SIZE(src) < length:
                return None
            base = <const uint8_t *>PyBytes_AS_STRING(src)
        elif kind != FILL_ZEROPAGE:
            return None
        vi = find_vma(m, dst)
        if vi < 0 or m.vmas[vi].uffd != ctx or m.vmas[vi].end < dst + length:
            return None
        npages = <int64_t>(length >> MM_PAGE_SHIFT)
        for i in range(npages):
            va = dst + (<uint64_t>i << MM_PAGE_SHIFT)
            if base != NULL:
                sp = base + (i << MM_PAGE_SHIFT)
            rc = uffd_fill(&self.e, m, cpu, &m.vmas[vi], va, kind, sp, -1, False)
            if rc == -CORE_ENOMEM and reclaim_pages(&self.e, cpu, RECLAIM_BATCH) > 0:
                rc = uffd_fill(&self.e, m, cpu, &m.vmas[vi], va, kind, sp, -1, False)
            if rc < 0:
                return i, -rc
        return npages, 0

    def uffd_writeprotect_one(self, int32_t mm, int32_t ctx, uint64_t start, uint64_t end,
                              bint protect):
        """UFFDIO_WRITEPROTECT of a range inside one WP-registered VMA (the
        handler's usual call; every era accepts it): True when done, False,
        with nothing done, when the range is not of that shape. Markers as
        userfaultfd_wp_use_markers(): file memory, or anon with WP_UNPOPULATED."""
        cdef mm_t *m = self._mm(mm)
        cdef int32_t vi
        cdef int64_t lost
        cdef bint markers
        if start >= end or (start | end) & (MM_PAGE_SIZE - 1):
            return False
        vi = find_vma(m, start)
        if vi < 0 or m.vmas[vi].end < end or not (m.vmas[vi].flags & VM_UFFD_WP) \
                or m.vmas[vi].uffd != ctx or ctx <= 0 or ctx >= self.e.nuffd:
            return False
        markers = m.vmas[vi].file != 0 or (self.e.uffd_feat[ctx] & UFFD_FEATURE_WP_UNPOPULATED) != 0
        with nogil:
            lost = uffd_wp_range(&self.e, m, start, end, protect, markers, m.vmas[vi].flags)
            if lost > 0:
                tlb_flush_range(&self.e, mm, start, end)
        if lost < 0:
            raise MemoryError()
        return True

    def uffd_move(self, int32_t mm, uint64_t dst, uint64_t src, int64_t npages, bint allow_holes,
                  bint move_zeropage=False):
        self._pages(dst, npages)
        self._pages(src, npages)
        cdef mm_t *m = self._mm(mm)
        cdef int64_t i
        cdef int32_t vi
        cdef int rc
        for i in range(npages):
            vi = find_vma(m, dst + (<uint64_t>i << MM_PAGE_SHIFT))
            if vi < 0:
                return i, CORE_ENOENT
            rc = uffd_move_page(&self.e, m, &m.vmas[vi], dst + (<uint64_t>i << MM_PAGE_SHIFT),
                                src + (<uint64_t>i << MM_PAGE_SHIFT), allow_holes, move_zeropage)
            if rc < 0:
                return i, -rc
        return npages, 0

    # ---- swap --------------------------------------------------------------

    def pageout(self, int32_t mm, int cpu, uint64_t start, uint64_t end):
        self._span(start, end)
        cdef mm_t *m = self._mm(mm)
        cdef int64_t n
        cdef uint64_t stopped
        self._cpu(cpu)
        with nogil:
            n = pageout_range(&self.e, m, cpu, start, end, 1LL << 62, &stopped, False)
        return n

    def reclaim(self, int cpu, int64_t want):
        """Run reclaim for up to `want` pages; returns frames freed."""
        cdef int64_t n
        self._cpu(cpu)
        with nogil:
            n = reclaim_pages(&self.e, cpu, want)
        return n

    def madvise_free(self, int32_t mm, int cpu, uint64_t start, uint64_t end):
        self._span(start, end)
        cdef mm_t *m = self._mm(mm)
        cdef int64_t n
        self._cpu(cpu)
        with nogil:
            n = madvise_free_range(&self.e, m, cpu, start, end)
        return n

    def swap_info(self):
        return {"slots": self.e.nswap, "used": self.e.swap_used}

    # ---- test-only hooks: plant states no kernel path produces -------------

    def _test_pte_set_bits(self, int32_t mm, uint64_t va, uint64_t bits):
        cdef uint64_t *ptep = pte_offset(&self.e, self._mm(mm), va, False)
        if ptep == NULL:
            raise ValueError("no pte there")
        ptep[0] |= bits

    def _test_tlb_fill(self, int cpu, int32_t mm, uint64_t va, uint64_t pfn, bint writable):
        cdef uint64_t vpn = va >> MM_PAGE_SHIFT
        cdef int64_t s = tlb_slot(self._cpu(cpu), mm, vpn)
        self.e.tlb_tag[s] = tlb_tag_of(mm, vpn)
        self.e.tlb_pte[s] = pfn_pte(<int64_t>pfn) | (PTE_WRITE | PTE_DIRTY if writable else 0)

    # ---- invariants --------------------------------------------------------

    def check(self, const int64_t[::1] ext_pfns, const int64_t[::1] ext_refs):
        """Verify every invariant; raise InvariantError naming the frame and rule.

        ext_pfns/ext_refs: references held outside page tables (GUP, pins,
        pipes), one entry per reference holder and frame.
        """
        cdef int64_t n = self.e.nframes, pfn, i, cpu, s
        exp_ref_a = np.zeros(n, np.int64)
        exp_map_a = np.zeros(n, np.int64)
        cdef int64_t[::1] exp_ref = exp_ref_a
        cdef int64_t[::1] exp_map = exp_map_a
        cdef int32_t mmi
        cdef mm_t *m
        cdef int64_t rss, used
        cdef uint16_t f
        if self.e.nr_pgtable != (self.e.ndir_used - self.e.ndir_free) + (self.e.npte_used - self.e.npte_free) \
                or self.e.nr_pgtable > self.e.nr_free:
            raise InvariantError("page-table pages not charged as frames", None,
                                 f"{self.e.nr_pgtable} charged, {self.e.ndir_used - self.e.ndir_free} "
                                 f"directory and {self.e.npte_used - self.e.npte_free} pte pages, "
                                 f"{self.e.nr_free} frames free")
        for i in range(ext_pfns.shape[0]):
            if ext_pfns[i] != ZERO_PFN:
                exp_ref[ext_pfns[i]] += ext_refs[i]
        for cpu in range(self.e.ncpus):
            for i in range(self.e.lru_n[cpu]):
                exp_ref[self.e.lru[cpu * LRU_BATCH_MAX + i]] += 1
        swap_refs_a = np.zeros(max(self.e.nswap, 1), np.int64)
        cdef int64_t[::1] swap_refs = swap_refs_a
        cdef int32_t fid
        for fid in range(1, self.e.nfile):
            if self.e.files[fid].alive:
                self._check_cache(&self.e.files[fid], exp_ref, swap_refs)
        for s in range(self.e.nswap):
            if self.e.swap_cache[s]:
                pfn = self.e.swap_cache[s] - 1
                exp_ref[pfn] += 1
                if not (self.e.fflags[pfn] & PG_SWAPCACHE) or self.e.index[pfn] != s \
                        or not (self.e.swap_map[s] & SWAP_HAS_CACHE):
                    raise InvariantError("swapcache entry and folio disagree", pfn, f"slot {s}")
        for mmi in range(self.e.nmm):
            m = &self.e.mms[mmi]
            if not m.alive:
                continue
            rss = self._check_tree(m, m.pgd, 0, 0, exp_ref, exp_map, swap_refs)
            if rss != m.rss_anon:
                raise InvariantError("rss_anon differs from the anon ptes mapped", None,
                                     f"mm {mmi}: counter {m.rss_anon}, ptes {rss}")
        for pfn in range(1, n):
            f = self.e.fflags[pfn]
            if not (f & PG_USED):
                if self.e.refcount[pfn] != 0 or exp_ref[pfn] != 0:
                    raise InvariantError("free frame is referenced", pfn)
                continue
            if self.e.mapcount[pfn] != exp_map[pfn]:
                raise InvariantError("mapcount differs from the ptes mapping the frame", pfn,
                                     f"mapcount {self.e.mapcount[pfn]}, ptes {exp_map[pfn]}")
            if self.e.refcount[pfn] != exp_ref[pfn]:
                raise InvariantError("refcount differs from the references held", pfn,
                                     f"refcount {self.e.refcount[pfn]}, held {exp_ref[pfn]}")
            if f & PG_ANON_EXCLUSIVE and exp_map[pfn] > 1:
                raise InvariantError("PageAnonExclusive page mapped more than once", pfn)
        for s in range(<int64_t>self.e.ncpus * MM_TLB_ENTRIES):
            self._check_tlb(s)
        used = 0
        for s in range(self.e.nswap):
            if self.e.swap_map[s]:
                used += 1
            if (self.e.swap_map[s] & SWAP_COUNT_MASK) != swap_refs[s]:
                raise InvariantError("swap count differs from the entries referencing the slot", None,
                                     f"slot {s}: count {self.e.swap_map[s] & SWAP_COUNT_MASK}, entries {swap_refs[s]}")
            if bool(self.e.swap_map[s] & SWAP_HAS_CACHE) != bool(self.e.swap_cache[s]):
                raise InvariantError("SWAP_HAS_CACHE without a swapcache folio", None, f"slot {s}")
        if used != self.e.swap_used:
            raise InvariantError("swap slots in use differ from the counter", None,
                                 f"{used} != {self.e.swap_used}")

    cdef int _check_cache(self, mm_file_t *f, int64_t[::1] exp_ref, int64_t[::1] swap_refs) except -1:
        cdef uint64_t index, ent
        cdef uint64_t *t
        cdef int64_t pfn, npages = 0
        cdef int i
        index = 0
        while index < (1ULL << 35):
            t = table_leaf(&self.e, f.root, index << MM_PAGE_SHIFT, False, &f.nr_leaves)
            if t == NULL:
                # skip to the next populated leaf quickly: caches are small in tests
                index += 512
                if index > file_pages(f) + 512:
                    break
                continue
            for i in range(MM_PTRS):
                ent = t[i]
                if ent == 0:
                    continue
                if ent & PTE_PRESENT:
                    pfn = <int64_t>pte_pfn(ent)
                    npages += 1
                    exp_ref[pfn] += 1
                    if not (self.e.fflags[pfn] & PG_FILE) or self.e.mapping[pfn] != f.id \
                            or self.e.index[pfn] != index + i:
                        raise InvariantError("page-cache folio does not name its file and index", pfn,
                                             f"file {f.id} index {index + i}")
                elif is_swap_pte(ent):
                    swap_refs[swp_offset(ent)] += 1
            index += 512
            if index > file_pages(f) + 512:
                break
        if npages != f.nrpages:
            raise InvariantError("nrpages differs from the cache", None, f"file {f.id}: {f.nrpages} != {npages}")
        return 0

    cdef int64_t _check_tree(self, mm_t *m, int32_t d, int level, uint64_t base,
                             int64_t[::1] exp_ref, int64_t[::1] exp_map, int64_t[::1] swap_refs) except -1:
        cdef int32_t *page = dir_page(&self.e, d)
        cdef uint64_t *t
        cdef int32_t i, j
        cdef uint64_t va, pte
        cdef int64_t pfn, rss = 0
        cdef int32_t vi
        for i in range(MM_PTRS):
            if page[i] == 0:
                continue
            va = base | (<uint64_t>i << (PGDIR_SHIFT - 9 * level))
            if level < 2:
                rss += self._check_tree(m, page[i] - 1, level + 1, va, exp_ref, exp_map, swap_refs)
                continue
            t = pte_page(&self.e, page[i] - 1)
            for j in range(MM_PTRS):
                pte = t[j]
                if pte == 0:
                    continue
                va = (base | (<uint64_t>i << PMD_SHIFT)) + (<uint64_t>j << MM_PAGE_SHIFT)
                vi = find_vma(m, va)
                if vi < 0:
                    raise InvariantError("pte outside any VMA", None, f"mm {m.id} va {va:#x}")
                if not (pte & PTE_PRESENT):
                    if is_swap_pte(pte):
                        if swp_offset(pte) >= self.e.nswap:
                            raise InvariantError("swap pte beyond the swap device", None, f"va {va:#x}")
                        swap_refs[swp_offset(pte)] += 1
                    continue
                pfn = <int64_t>pte_pfn(pte)
                if pfn >= self.e.nframes or not (self.e.fflags[pfn] & PG_USED):
                    raise InvariantError("pte points at a free frame", pfn, f"mm {m.id} va {va:#x}")
                if pte & PTE_SPECIAL:
                    if pfn != ZERO_PFN or pte & PTE_WRITE:
                        raise InvariantError("special pte is not a read-only zero-page mapping", pfn)
                    continue
                if pfn == ZERO_PFN:
                    raise InvariantError("zero page mapped without the special bit", pfn)
                exp_map[pfn] += 1
                exp_ref[pfn] += 1
                if self.e.fflags[pfn] & PG_ANON:
                    rss += 1
                    if pte & PTE_WRITE and self.e.mapcount[pfn] > 1 and is_cow_mapping(m.vmas[vi].flags):
                        raise InvariantError("writable pte maps a COW-shared page", pfn,
                                             f"mm {m.id} va {va:#x} mapcount {self.e.mapcount[pfn]}")
                if pte & PTE_WRITE and not (m.vmas[vi].flags & VM_WRITE):
                    raise InvariantError("writable pte in a VMA without VM_WRITE", pfn,
                                         f"mm {m.id} va {va:#x}")
        return rss

    cdef int _check_tlb(self, int64_t s) except -1:
        cdef uint64_t tag = self.e.tlb_tag[s], ent, vpn
        cdef uint64_t *ptep
        cdef int32_t mmi
        if tag == 0:
            return 0
        mmi = <int32_t>(tag & 0xFFFF)
        vpn = (tag & ~(1ULL << TLB_VALID_SHIFT)) >> 16
        ent = self.e.tlb_pte[s]
        if mmi >= self.e.nmm or not self.e.mms[mmi].alive:
            raise InvariantError("TLB entry of a dead mm", <int64_t>pte_pfn(ent))
        ptep = pte_offset(&self.e, &self.e.mms[mmi], vpn << MM_PAGE_SHIFT, False)
        if ptep == NULL or (ptep[0] & (PTE_PRESENT | PTE_PROTNONE)) != PTE_PRESENT \
                or pte_pfn(ptep[0]) != pte_pfn(ent) or (ent & PTE_WRITE and not (ptep[0] & PTE_WRITE)):
            raise InvariantError("TLB entry grants more than the pte", <int64_t>pte_pfn(ent),
                                 f"cpu {s // MM_TLB_ENTRIES} mm {mmi} va {vpn << MM_PAGE_SHIFT:#x}")
        return 0


cdef void *cnp_data(object arr) except NULL:
    cdef Py_ssize_t addr = arr.ctypes.data
    return <void *>addr


def engine_from_state(dict knobs, int64_t nframes, int ncpus, int64_t nswap, dict state):
    """Unpickling: a fresh Engine, then its saved tables."""
    cdef Engine e = Engine(nframes, ncpus, knobs, nswap)
    e.set_state(state)
    return e
