# Declarations of core/mm_types.h (the C contract shared with bindings/).

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t, int64_t, INT64_MAX

cdef extern from "mm_types.h" nogil:
    uint64_t MM_PAGE_SHIFT, MM_PAGE_SIZE
    int MM_PTRS, MM_POOL_CHUNK_SHIFT, MM_BYTES_CHUNK_SHIFT, MM_TLB_ENTRIES, MM_MAX_MM
    uint64_t MM_USER_TOP, MM_MAX_FILE_PAGES

    uint64_t PTE_PRESENT, PTE_WRITE, PTE_DIRTY, PTE_YOUNG, PTE_SOFT_DIRTY
    uint64_t PTE_UFFD_WP, PTE_SPECIAL, PTE_PROTNONE, PTE_PFN_SHIFT, PTE_PFN_MASK
    uint64_t SWP_TYPE_SHIFT, SWP_TYPE_MASK, SWP_SWAP, SWP_MARKER, SWP_EXCLUSIVE
    uint64_t SWP_OFFSET_SHIFT, SWP_MIGRATION_READ, SWP_MIGRATION_RX, SWP_MIGRATION_WRITE

    uint32_t PG_ANON, PG_ANON_EXCLUSIVE, PG_KSM, PG_SWAPCACHE, PG_ZERO, PG_LRU
    uint32_t PG_DIRTY, PG_UPTODATE, PG_RESERVED, PG_BYTES, PG_FILE, PG_USED, PG_LAZYFREE, PG_ISOLATED
    uint32_t PG_HEAD, PG_TAIL
    int32_t PMD_HUGE
    uint64_t PMD_LEAF_UNEXPANDED
    int HPAGE_PMD_ORDER, HPAGE_PMD_NR, HPAGE_PUD_ORDER, HPAGE_PUD_NR, MTHP_MIN_ORDER, SHMEM_MIN_ORDER
    int MM_HSTATE_2M, MM_HSTATE_1G, MM_NR_HSTATES
    int MM_MAX_NODES

    uint64_t VM_READ, VM_WRITE, VM_EXEC, VM_SHARED, VM_MAYREAD, VM_MAYWRITE
    uint64_t VM_MAYEXEC, VM_MAYSHARE, VM_UFFD_MISSING, VM_PFNMAP, VM_UFFD_WP
    uint64_t VM_LOCKED, VM_IO, VM_DONTCOPY, VM_WIPEONFORK, VM_SOFTDIRTY
    uint64_t VM_MIXEDMAP, VM_HUGETLB, VM_UFFD_MINOR, VM_ANON, VM_ANON_VMA, VM_MERGEABLE
    uint64_t VM_HUGEPAGE, VM_NOHUGEPAGE, VM_RESV_UNMAPPED, VM_NORESERVE

    uint64_t MMF_HAS_PINNED, MMF_TLB_STALE

    int FAULT_FLAG_WRITE, FAULT_FLAG_USER, FAULT_FLAG_REMOTE, FAULT_FLAG_UNSHARE, FAULT_FLAG_NO_RETRY
    int FAULT_FLAG_ARCH
    int FAULT_FLAG_BATCH
    int VM_FAULT_OOM, VM_FAULT_SIGBUS, VM_FAULT_WRITE, VM_FAULT_SIGSEGV
    int VM_FAULT_ACCERR, VM_FAULT_NOMEM, VM_FAULT_ERROR, VM_FAULT_HWPOISON, VM_FAULT_UFFD, VM_FAULT_FALLBACK
    int VM_FAULT_LIVELOCK
    int VM_FAULT_REWALK
    uint64_t PTE_MARKER_UFFD_WP, PTE_MARKER_POISONED, PTE_MARKER_GUARD

    ctypedef struct mm_vma_t:
        uint64_t start, end, flags, pgoff
        int32_t file, uffd
        uint64_t anon_vma
        int32_t avc_single, resv

    ctypedef struct mm_t:
        int32_t id, pgd, nvma, alive
        uint64_t flags
        int64_t minflt, rss_anon, nr_ptes, serial
        int32_t tlb_flush_pending
        int64_t write_protect_seq
        int64_t hugetlb_usage
        mm_vma_t *vmas
        uint64_t walk_key
        int32_t walk_dir

    ctypedef struct mm_policy_t:
        int32_t wp_reuse, foll_cow_rule, gup_forced_cow, anon_exclusive
        int32_t gup_unshare_anon, gup_unshare_nonanon, fork_early_cow
        int32_t mm_has_pinned, clear_refs_skip_pinned, mprotect_upgrade
        int32_t pm_uffd_wp, soft_dirty, lru_batch
        int32_t fault_around_uffd, swapout_skip_pinned, free_swapcache_after_cow
        int32_t fault_around_pages, uffd_wp_file, fork_uffd_child_vma, fork_marker_child_wp
        int32_t uffd_wp_writenotify, uffd_unprotect_writable, uffd_wp_flush_pending
        int32_t gup_fast_seq, mprotect_gather, tlb_flush_nested
        int32_t pm_marker_swp_type, swapin_read_writable, pm_guard_region, numa_hint_upgrade
        int32_t numa_large_folio
        int32_t ksm_reuse, ksm_break_unshare, ksm_checksum_first
        int32_t longterm_unpinnable, longterm_alloc_exclude, longterm_target_exclude, longterm_migrate_fail
        int32_t thp_wp_refcount, thp_cow_whole, large_reuse, thp_zero_wp_thp, pm_thp_excl_per_page
        int32_t split_remap_zero, collapse_ro
        int32_t hugetlb_fork_copy_pinned, hugetlb_dontneed, hugetlb_mremap, hugetlb_zap_restore_reserve
        int32_t hugetlb_fork_swp_uffd_wp
        int32_t swapout_large_ptes, swap_large_rotational, swapin_large_sync, swapin_large_swapcache
        int32_t shmem_mthp
        int32_t finish_fault_large, shmem_file_orders, shmem_within_size_fix

    enum:
        MM_ZONE_NORMAL, MM_ZONE_MOVABLE, MM_ZONE_CMA, MM_NR_ZONE_LISTS, MM_ZONES_MOVABLE, MM_ZONES_CMA

    ctypedef struct mm_file_t:
        int32_t id, root, alive, shmem
        int64_t size, nrpages, nr_leaves, falloc_start, falloc_end
        int32_t hstate, pad

    uint32_t SWAP_HAS_CACHE, SWAP_COUNT_MASK, SWAP_DATA_BYTES

    enum:
        MM_STAT_FAULT, MM_STAT_ANON_FAULT, MM_STAT_ZERO_FAULT, MM_STAT_WP_FAULT
        MM_STAT_COW, MM_STAT_REUSE, MM_STAT_UNSHARE, MM_STAT_EARLY_COW
        MM_STAT_TLB_HIT, MM_STAT_TLB_MISS, MM_STAT_TLB_FLUSH, MM_STAT_LRU_DRAIN
        MM_STAT_GUP, MM_STAT_FILE_FAULT, MM_STAT_FAULT_AROUND, MM_STAT_SWPOUT
        MM_STAT_SWPIN, MM_STAT_UFFD, MM_STAT_UFFD_CORE, MM_STAT_THP_FAULT_ALLOC
        MM_STAT_THP_FAULT_FALLBACK, MM_STAT_THP_SPLIT_PMD, MM_STAT_THP_ZERO_ALLOC, MM_STAT_THP_SPLIT_PAGE
        MM_STAT_THP_FILE_ALLOC, MM_STAT_THP_FILE_MAPPED
        MM_STAT_NR

# eras.py values of the policy enums (kept equal by tests/unit/test_eras.py).
cdef enum:
    WP_REUSE_MAPCOUNT = 0
    WP_REUSE_REFCOUNT = 1
    WP_REUSE_REFCOUNT_DRAIN = 2
    WP_REUSE_ANON_EXCLUSIVE = 3
    FOLL_COW_FORCE_DIRTY = 0
    FOLL_COW_DIRTY = 1
    FOLL_FORCE_ANON_EXCLUSIVE = 2
    FORCED_COW_NONE = 0
    FORCED_COW_GET_AND_PIN = 1
    FORCED_COW_GET_ONLY = 2

# GUP flags (FOLL_*) and GUP_PIN_COUNTING_BIAS: core/uapi.pxi, generated.
cdef enum:
    LRU_BATCH_MAX = 64
    # errno values returned by the core (Linux's numbers)
    CORE_EFAULT = 14
    CORE_ENOMEM = 12
    CORE_EINVAL = 22
    CORE_EHWPOISON = 133

# Called at each step boundary of a kernel operation (core/sched.pxi): the
# scheduler may run other threads before it returns.
ctypedef void (*sched_hook_t)(void *arg, int point, int32_t mm, uint64_t va, uint64_t aux) noexcept nogil

# The whole machine: frames (numpy-owned, fixed size), page-table pools
# (chunked, so a page-table page never moves once allocated), the byte store,
# per-CPU TLBs and LRU add batches, and the mm table.
# A private hugetlb mapping's reservation map (vma_resv_map): which of the
# huge pages [first, first + n) (file offsets in huge pages) its creator has
# faulted in, i.e. consumed the reservation of (region_count / region_add).
ctypedef struct resv_map_t:
    int32_t alive, hstate
    int64_t first, n
    uint8_t *consumed


ctypedef struct engine_t:
    int64_t nframes
    int64_t next_unused        # frames in [next_unused, unused_end) were never used: free implicitly
    int64_t unused_end         # nframes, or where the hugetlb pool begins
    int64_t free_head          # free list linked through `version` (pfn + 1)
    int64_t nr_free
    int64_t nr_pgtable         # page-table and page-cache tree pages: charged as frames
    int32_t pgtable_refused    # the last table allocation failed for want of a frame
    int32_t *refcount
    int32_t *mapcount
    uint64_t *version          # content version, byte slot (PG_BYTES) or free link
    uint16_t *fflags
    uint16_t *mapping
    uint8_t *forder            # a shmem mTHP's order on each of its pages (core/shmem.pxi), else 0
    uint32_t *index

    int32_t **dir_chunks       # directory pages (pgd/pud/pmd): int32 entries, idx+1
    int64_t ndir_chunks, ndir_used
    int32_t *dir_free
    int64_t ndir_free, dir_free_cap

    uint64_t **pte_chunks      # pte pages
    int64_t npte_chunks, npte_used
    int64_t npte_resident      # pool pages faulted in on the host ahead of use
    int32_t *pte_free
    int64_t npte_free, pte_free_cap

    uint8_t **byte_chunks      # byte-exact page contents
    int64_t nbyte_chunks, nbytes_used
    int64_t *bytes_free
    int64_t nbytes_free, bytes_free_cap

    int32_t ncpus
    uint64_t *tlb_tag          # ncpus * MM_TLB_ENTRIES; 0 = invalid
    uint64_t *tlb_pte          # cached translation: pfn | write | dirty
    uint64_t *tlb_mm_seen      # per CPU, a bit per mm id that may have entries there (TLB_MM_WORDS each)
    int64_t *lru               # ncpus * LRU_BATCH_MAX
    int32_t *lru_n
    int64_t *lru_rot           # ncpus * LRU_BATCH_MAX: the rotate batch (lru_move_tail)
    int32_t *lru_rot_n

    mm_t *mms
    int32_t nmm, mm_cap
    int64_t mm_serial          # last mm serial handed out
    int64_t anon_vma_seq       # last anon_vma identity handed out

    mm_file_t *files           # page caches, by mapping id (0 unused: anon)
    int32_t nfile, file_cap

    int64_t nswap              # swap slots (0: no swap device)
    int64_t swap_used
    int64_t swap_cursor        # next slot to try (cluster-less, lowest-free scan)
    uint16_t *swap_map         # per slot: references | SWAP_HAS_CACHE
    int64_t *swap_cache        # per slot: swapcache folio pfn + 1, 0 none
    uint64_t *swap_data        # per slot: content version, or byte slot
    uint8_t *swap_flags        # per slot: SWAP_DATA_BYTES
    int32_t swap_device        # SWAP_DEV_*: what the swap area is (Machine(swap_device=))

    mm_policy_t pol
    uint64_t stamp             # last content version handed out
    int32_t reclaim_mm         # the reclaim clock hand: mm and address
    uint64_t reclaim_va

    uint64_t *uffd_feat        # per userfaultfd context: features (UFFD_FEATURE_*)
    uffd_resolver_t *uffd_res  # per context: an in-core resolver (none by default)
    uint32_t *uffd_cflags      # per context: UFFD_USER_MODE_ONLY
    int32_t nuffd
    int32_t uf_ctx             # the last handle_userfault(): context, mm, address,
    int32_t uf_mm              # message flags and reason
    uint64_t uf_addr
    uint32_t uf_flags, uf_reason
    uint64_t fault_addr        # address of the last failed access
    int64_t stats[26]
    sched_hook_t sched_hook    # the scheduler's hand at each step boundary (NULL: none)
    void *sched_arg
    int32_t tlb_stale_writes   # 1: a clean writable TLB entry takes writes too (worst case, not x86)
    # Emulated time (mmemu.cost): each counted event costs cost[stat] ns on
    # the clock of the CPU running: clock_now() = now + sum(stats * cost);
    # replay keeps each CPU's clock. Last in the struct: the fields above
    # keep their places (and cache lines).
    int64_t now
    int64_t cost[26]
    int64_t clock[256]
    # NUMA nodes (core/migrate.pxi). Node n owns pfns [n * node_span,
    # (n + 1) * node_span): a frame's node is derived, never stored. With
    # more than one node each keeps its own free list and high-water mark
    # (numpy-owned, nnodes entries) and the global ones above stay unused.
    int32_t nnodes
    int32_t alloc_node         # __GFP_THISNODE target of the next frame_alloc; -1: any, node 0 first
    int64_t node_span
    int64_t *node_free         # per node and zone list (n * MM_NR_ZONE_LISTS + z): free list
                               # head (pfn + 1), linked through `version`
    int64_t *node_next         # per node and zone list: frames >= this were never used
    # Zones (core/zones.pxi): ZONE_MOVABLE is the top movable_span pfns of
    # each node, the CMA area [cma_start, cma_end) of node 0: derived from
    # the pfn, never stored per frame. `zoned`: frames come from the per-node,
    # per-zone lists above (several nodes, or a movable zone or CMA area).
    int32_t zoned
    int32_t alloc_exclude      # MM_ZONES_* the next frame_alloc may not use (PF_MEMALLOC_PIN scope, GFP_USER)
    int32_t alloc_pref_node    # with alloc_node < 0: the first node of the zonelist walk
    int64_t movable_span
    int64_t cma_start, cma_end
    int64_t nr_free_movable    # free frames kernel allocations cannot use (ZONE_MOVABLE, CMA)
    int64_t *zone_end          # per node and zone list: end of its pfn range
    int64_t *zone_nr_free      # per node and zone list: free frames
    # Transparent huge pages (core/huge.pxi). Large folios are order 9 and
    # naturally aligned, so a folio is named by pfn >> 9: entire_map holds
    # each one's PMD mappings (folio->_entire_mapcount), one int32 per 512
    # frames. Free aligned blocks wait on hfree (heads) for the next THP.
    int32_t thp_enabled        # sysfs enabled: 0 never, 1 madvise, 2 always
    int32_t thp_use_zero_page  # sysfs use_zero_page
    int32_t thp_defrag         # sysfs defrag (recorded; allocation never stalls here)
    int64_t huge_zero_pfn      # the huge zero folio's head; -1 until first use
    int64_t nr_huge_pmd        # PMD leaves mapped, all mms (0: no walk needs to look)
    int64_t nr_large           # large folios allocated (the huge zero page included)
    int32_t *entire_map
    # Each large folio's pins, exactly (folio->_pincount, 47e29d32afba,
    # 5.7): its refcount also holds pipes' references and one per mapping,
    # so GUP_PIN_COUNTING_BIAS there is no pin test for 512 pages. (An
    # mTHP's is in its second page: folio_pincount.)
    int32_t *large_pincount
    int64_t *hfree
    int64_t nhfree, hfree_cap
    # THPs of anon PMD faults whose 511 tail flags are not written yet, as
    # head << 16 | tail flags (at most one per block: hfree_cap entries).
    # thp_tails() writes them out before anything else may read a tail.
    int64_t *thp_lazy
    int64_t nthp_lazy
    # The deferred split queue (deferred_split_folio): large anon folios
    # partially unmapped, as (head, mm, address of the folio) triples; a
    # folio's entry is live while its flag is set (folio_deferred: dsq_on[head >> 9],
    # an mTHP's in its third page).
    int64_t *dsq
    int64_t ndsq, dsq_cap
    uint8_t *dsq_on
    # hugetlb (core/hugetlb.pxi): each node's share of the pool sits at the
    # top of the node, its 1 GiB pages in [hp_gig[n], + hp_n1g[n] pages), its
    # 2 MiB pages below from hp_base[n]. [hugetlb_base, hugetlb_end) and
    # [gig_base, gig_end) bound them all (hugetlb_end 0: no pool). Per
    # hstate: pages, free pages, reserved ones (global, as the kernel keeps
    # them), and a stack of the free heads in one segment per node
    # (h_seg[h][n], h_nfree[h][n] of them free). Private mappings'
    # reservation maps live in resv_maps.
    int64_t hugetlb_base, gig_base, gig_end, hugetlb_end
    # Migration entries of base pages fork has copied or mremap has moved
    # (core/migrate.pxi): a migration that sees it change looks for them
    # by an rmap walk when it remaps, as remove_migration_ptes() does.
    int64_t mig_copies
    int64_t h_nr[2]
    int64_t h_free[2]
    int64_t h_resv[2]
    int64_t *h_stack[2]
    int64_t hp_base[64]
    int64_t hp_n2m[64]
    int64_t hp_gig[64]
    int64_t hp_n1g[64]
    int64_t h_seg[2][64]
    int64_t h_nfree[2][64]
    # What each 2 MiB block of frames is to hugetlb (HBLK_*), so that pages
    # can join and leave the pool at run time (set_max_huge_pages, surplus
    # pages): NULL until a pool exists. hp_n2m[n] counts node n's 2 MiB
    # pages, boot-time or not; surplus pages per hstate and node
    # (surplus_huge_pages_node), nr_overcommit_huge_pages, and the next
    # nodes to allocate on and free from (next_nid_to_alloc / _to_free).
    uint8_t *hblk
    int64_t h_surplus[2]
    int64_t h_node_surplus[2][64]
    int64_t h_overcommit[2]
    int32_t h_next_alloc[2]
    int32_t h_next_free[2]
    resv_map_t *resv_maps
    int32_t nresv, resv_cap
    # Multi-size THP for anon memory (core/mthp.pxi; 19eaf44954df, 6.8).
    # An mTHP's order (2..8) is in `mapping` of each of its pages
    # (mthp_order; an anon page has no file), its pincount and deferred
    # split flag in `index` of its second and third pages, as the kernel
    # keeps folio fields in tail pages: no byte per frame. The per-size sysfs settings
    # (hugepages-<size>kB/enabled) as order masks, bit 9 the PMD size:
    # huge_anon_orders_always / _madvise / _inherit. mTHPs are carved from
    # one 2 MiB block at a time, [mcarve, mcarve_end) still free in it.
    uint32_t mthp_always, mthp_madvise, mthp_inherit
    int64_t mcarve, mcarve_end
    int64_t mthp_alloc[10]     # per order: stats/anon_fault_alloc of hugepages-<size>kB
    int64_t mthp_fallback[10]  # per order: stats/anon_fault_fallback
    # Per order (9: the PMD size, vmstat thp_swpout / thp_swpout_fallback):
    # stats/swpout and stats/swpout_fallback of hugepages-<size>kB (6.10).
    int64_t swpout[10]
    int64_t swpout_fallback[10]
    int64_t swpin_large[10]    # per order: stats/swpin (6.12), large folios swapped in
    # Huge pages in shmem (core/shmem.pxi): shmem_enabled as the kernel's
    # shmem_huge (SHMEM_HUGE_*: 0 never, 1 always, 2 within_size, 3 advise,
    # -1 deny, -2 force), which is also shm_mnt's huge= (memfd, MAP_SHARED
    # anon); the PMD size's hugepages-2048kB/shmem_enabled for anon shmem
    # (6.11: SHMEM_PMD_*); shmem_thp_on: some shmem fault may get a THP.
    int32_t shmem_huge, shmem_pmd, shmem_thp_on, shmem_mthp_on
    # Anon shmem mTHP (e7a2ab7b3bb5, 6.11): hugepages-<size>kB/shmem_enabled
    # of the orders below the PMD's (SHMEM_PMD_* codes, 4 inherit), the
    # per-order stats/shmem_alloc, shmem_fallback (9: the PMD size too) and
    # the pincount of a shmem mTHP by head >> SHMEM_MIN_ORDER (its tails'
    # `index` is the file's, unlike an anon mTHP's).
    int32_t shmem_orders[9]
    int64_t shmem_alloc[10]
    int64_t shmem_fallback[10]
    int32_t *file_pincount
    # Zoned machines' free order-9 blocks (core/zones.pxi): per node and zone
    # list a stack of block heads (pfn + 1), linked through the head's
    # `version` as the order-0 lists are (numpy-owned, like node_free).
    int64_t *zone_hfree
    # THP migration events (mm/migrate.c migrate_pages: THP_MIGRATION_SUCCESS,
    # _FAIL, _SPLIT; 1a5bae25e3cf, 5.9): PMD-sized folios only.
    int64_t thp_mig[3]
    int32_t mig_nosplit        # the running migration may not split a large folio (MR_NUMA_MISPLACED)
    int32_t swapcache_large    # a large folio may sit in the swapcache (core/swap.pxi swapcache_reclaim_large)

# A resolver that stays in the core: handle_userfault() resolves the fault
# itself (no message, no return to Python) and the access retries.
ctypedef struct uffd_resolver_t:
    int32_t kind               # RESOLVE_*; 0: none
    uint64_t base              # COPY: address of source index 0
    uint64_t *src              # COPY: content version per page
    int64_t nsrc
    int64_t *log               # UNPROTECT: addresses resolved, in order
    int64_t nlog, caplog
    int64_t count              # faults resolved
    # COPY over a modelled link (postcopy): the source sends pages over a
    # link; a fault on a page not yet arrived is a remote page request.
    int64_t *arrival           # per source page: when it is at the destination (ns)
    int64_t lat                # one-way latency (ns)
    int64_t page_ns            # transfer time of one page
    int64_t queue_ns           # no preempt channel: wait behind queued stream data
    int64_t stream_end         # the background stream is done at this time
    int64_t chan_free          # preempt channel: free from this time
    int32_t preempt
    int64_t arrived            # faults on pages already arrived (installed then)
    # Every fault served (with a link: the remote ones), as fault_log keeps them.
    int64_t logged
    int64_t lat_sum            # sum of the faulting threads' waits (ns)
    int64_t hist[24]           # waits, log2 microsecond buckets
    int64_t *ev                # per fault: start time, wait, page index
    int64_t nev, capev
    # PAGER: at most ring_cap pages resident, evicted oldest first (a ring
    # of page indices the owner allocates); src is the backing store.
    int64_t *ring
    int64_t ring_cap, ring_head, ring_n
    int64_t evictions, writebacks
    int32_t log_events         # fault_log each fault served (a link always does)


# An mmu_gather: pages to release once the TLB flush is done.
ctypedef struct gather_t:
    int64_t *pfns
    int64_t n, cap
    uint64_t start, end
    int32_t mm
    int32_t need_flush
    int32_t failed
