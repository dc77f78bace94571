/*
 * mmemu core: bit layouts and state structs.
 *
 * The Cython core declares these with `cdef extern from "mm_types.h"`
 * (core/defs.pxi); the C ABI under bindings/ will expose the same structs, so
 * this header is the one place both agree on. Keep them in sync.
 */
#ifndef MMEMU_MM_TYPES_H
#define MMEMU_MM_TYPES_H

#include <stdint.h>

#define MM_PAGE_SHIFT 12
#define MM_PAGE_SIZE 4096ULL
#define MM_PTRS 512              /* entries per page-table page, every level */
#define MM_POOL_CHUNK_SHIFT 9    /* page-table pages per pool chunk: 512 */
#define MM_BYTES_CHUNK_SHIFT 6   /* byte-exact pages per store chunk: 64 */
#define MM_TLB_ENTRIES 1024      /* per CPU, direct mapped */
#define MM_MAX_MM 65535          /* mm ids are 16 bits in TLB tags */
#define MM_USER_TOP (1ULL << 47) /* end of user space: 4-level x86_64 */
/* A frame's file index is 32 bits: files end at 2^32 pages (16 TiB, ext4's
 * limit with 4 KiB blocks); beyond, writes are EFBIG and maps EOVERFLOW. */
#define MM_MAX_FILE_PAGES (1ULL << 32)

/* Present pte. x86 keeps soft-dirty and uffd-wp in software bits too. */
#define PTE_PRESENT    (1ULL << 0)
#define PTE_WRITE      (1ULL << 1)
#define PTE_DIRTY      (1ULL << 2)
#define PTE_YOUNG      (1ULL << 3)
#define PTE_SOFT_DIRTY (1ULL << 4)
#define PTE_UFFD_WP    (1ULL << 5)
#define PTE_SPECIAL    (1ULL << 6)   /* zero page / pfnmap: no struct page refs */
#define PTE_PROTNONE   (1ULL << 7)   /* present to the kernel, not to the MMU */
#define PTE_PFN_SHIFT  12
#define PTE_PFN_MASK   (((1ULL << 40) - 1) << PTE_PFN_SHIFT)

/* A pmd entry (a directory slot: pte-page index + 1) with this bit maps a
 * PMD leaf: a 2 MiB THP or the huge zero page. The pte page beneath is the
 * leaf's expansion (what a split would install), kept uniform while the
 * leaf lives, so readers walk it like any pte page (once written out: see
 * PMD_LEAF_UNEXPANDED); only code that knows PMDs changes it. The kernel deposits a page table with each anon PMD
 * (pgtable_trans_huge_deposit): this page is that deposit. */
#define PMD_HUGE       (1 << 30)
/* A PMD leaf's table may be left unexpanded when the leaf is installed
 * (a fault maps 2 MiB without writing 4 KiB of ptes): entry 0 holds the
 * leaf's first pte and entry 1 this value, which no pte can be (not
 * present, swap type 0, not none); the other entries are then meaningless
 * and entry i stands for entry 0 plus i pages. The one accessor every
 * reader goes through (pmd_leaf_table) expands it on first use; the MMU's
 * walk reads it unexpanded (core/huge.pxi). */
#define PMD_LEAF_UNEXPANDED 0x4C415A5900000000ULL
#define HPAGE_PMD_ORDER 9
#define HPAGE_PMD_NR   512
/* Multi-size THP (6.8): anon large folios of orders MTHP_MIN_ORDER..PMD
 * order (THP_ORDERS_ALL_ANON: not order 0 or 1), naturally aligned. */
#define MTHP_MIN_ORDER 2
/* shmem's large folios go down to order 1 (THP_ORDERS_ALL_FILE_DEFAULT). */
#define SHMEM_MIN_ORDER 1

/* Non-present, non-none pte (bit 0 clear, type != 0): swap-like entries. */
#define SWP_TYPE_SHIFT 1
#define SWP_TYPE_MASK  (7ULL << SWP_TYPE_SHIFT)
#define SWP_SWAP            1ULL
#define SWP_MIGRATION_READ  2ULL
#define SWP_MIGRATION_RX    3ULL   /* readable_exclusive (5.19+) */
#define SWP_MIGRATION_WRITE 4ULL
#define SWP_MARKER          5ULL
#define SWP_SOFT_DIRTY PTE_SOFT_DIRTY  /* same positions as the present bits */
#define SWP_UFFD_WP    PTE_UFFD_WP
#define SWP_EXCLUSIVE  (1ULL << 6)     /* 1493a1913e34, 5.19 */
#define SWP_OFFSET_SHIFT 12
#define PTE_MARKER_UFFD_WP  1ULL
#define PTE_MARKER_POISONED 2ULL
#define PTE_MARKER_GUARD    4ULL

/* Frame flags (a subset of page flags, plus emulator bookkeeping). */
#define PG_ANON           (1u << 0)
#define PG_ANON_EXCLUSIVE (1u << 1)
#define PG_KSM            (1u << 2)
#define PG_SWAPCACHE      (1u << 3)
#define PG_ZERO           (1u << 4)
#define PG_LRU            (1u << 5)   /* drained from the per-CPU add batch */
#define PG_DIRTY          (1u << 6)
#define PG_UPTODATE       (1u << 7)
#define PG_RESERVED       (1u << 8)
#define PG_BYTES          (1u << 9)   /* `version` holds a byte-store slot */
#define PG_FILE           (1u << 10)  /* page-cache page of mapping/index */
#define PG_LAZYFREE       (1u << 11)  /* MADV_FREE'd: !PG_swapbacked, discardable if clean */
#define PG_HEAD           (1u << 12)  /* first page of a large folio (order HPAGE_PMD_ORDER, or forder[] for an mTHP) */
#define PG_TAIL           (1u << 13)  /* another page of it: the folio is pfn & ~(HPAGE_PMD_NR - 1) (mTHP: forder[]) */
#define PG_ISOLATED       (1u << 14)  /* emulator: taken off the LRU for migration (folio_isolate_lru) */
#define PG_USED           (1u << 15)  /* allocated (not on the free list) */

/* VMA flags: Linux's VM_* values where Linux has them. */
#define VM_READ        0x00000001ULL
#define VM_WRITE       0x00000002ULL
#define VM_EXEC        0x00000004ULL
#define VM_SHARED      0x00000008ULL
#define VM_MAYREAD     0x00000010ULL
#define VM_MAYWRITE    0x00000020ULL
#define VM_MAYEXEC     0x00000040ULL
#define VM_MAYSHARE    0x00000080ULL
#define VM_GROWSDOWN   0x00000100ULL
#define VM_UFFD_MISSING 0x00000200ULL
#define VM_PFNMAP      0x00000400ULL
#define VM_UFFD_WP     0x00001000ULL
#define VM_LOCKED      0x00002000ULL
#define VM_IO          0x00004000ULL
#define VM_DONTCOPY    0x00020000ULL
#define VM_DONTEXPAND  0x00040000ULL
#define VM_ACCOUNT     0x00100000ULL
#define VM_NORESERVE   0x00200000ULL
#define VM_HUGETLB     0x00400000ULL
#define VM_WIPEONFORK  0x02000000ULL
#define VM_DONTDUMP    0x04000000ULL
#define VM_SOFTDIRTY   0x08000000ULL
#define VM_MIXEDMAP    0x10000000ULL
#define VM_HUGEPAGE    0x20000000ULL
#define VM_NOHUGEPAGE  0x40000000ULL
#define VM_MERGEABLE   0x80000000ULL
#define VM_UFFD_MINOR  (1ULL << 41)
#define VM_ANON        (1ULL << 48)   /* emulator: no backing file */
#define VM_ANON_VMA    (1ULL << 49)   /* emulator: vma->anon_vma is set */
#define VM_RESV_UNMAPPED (1ULL << 50) /* emulator: HPAGE_RESV_UNMAPPED, the owner took a page back (unmap_ref_private) */

/* hugetlb (core/hugetlb.pxi): a boot-time pool of 2 MiB and 1 GiB pages.
 * A hugetlb page is a naturally aligned large folio of the pool's pfn range,
 * mapped by PMD leaves (a 1 GiB page by 512 of them): its head holds the
 * references and entire_map[head >> 9] the leaves mapping it. */
#define MM_HSTATE_2M 0
#define MM_HSTATE_1G 1
#define MM_NR_HSTATES 2
#define HPAGE_PUD_ORDER 18
#define HPAGE_PUD_NR (1 << 18)

/* mm flags */
#define MMF_HAS_PINNED (1ULL << 0)
#define MMF_TLB_STALE  (1ULL << 1)  /* emulator: an era's path left TLB entries stale on purpose (B10) */

/* Fault flags (enum fault_flag) and results (vm_fault_t). */
#define FAULT_FLAG_WRITE   (1 << 0)
#define FAULT_FLAG_USER    (1 << 6)
#define FAULT_FLAG_REMOTE  (1 << 7)
#define FAULT_FLAG_UNSHARE (1 << 10)
#define FAULT_FLAG_NO_RETRY (1 << 20) /* emulator: FAULT_FLAG_ALLOW_RETRY absent */
#define FAULT_FLAG_ARCH    (1 << 21) /* emulator: a CPU access, user or kernel mode (not GUP) */
#define FAULT_FLAG_BATCH   (1 << 22) /* emulator: an access of replay/touch, which only stores a version (core/huge.pxi thp_tails) */
#define VM_FAULT_OOM       0x000001
#define VM_FAULT_SIGBUS    0x000002
#define VM_FAULT_WRITE     0x000008   /* 4.9-5.19: tells GUP a COW happened */
#define VM_FAULT_SIGSEGV   0x000040
#define VM_FAULT_ACCERR    0x100000   /* emulator: SIGSEGV is SEGV_ACCERR */
#define VM_FAULT_NOMEM     0x200000   /* emulator: host allocation failed */
#define VM_FAULT_HWPOISON  0x000010
#define VM_FAULT_FALLBACK  0x000800   /* a huge fault gives way to the pte path */
#define VM_FAULT_UFFD      0x400000   /* emulator: handle_userfault queued a message */
#define VM_FAULT_LIVELOCK  0x800000   /* emulator: the access faults again at once, for ever */
#define VM_FAULT_REWALK    0x1000000  /* emulator: a split freed the pte page of the caller's pointer */
#define VM_FAULT_ERROR (VM_FAULT_OOM | VM_FAULT_SIGBUS | VM_FAULT_SIGSEGV | VM_FAULT_NOMEM | VM_FAULT_UFFD \
                        | VM_FAULT_LIVELOCK)

typedef struct {
    uint64_t start, end;      /* [start, end) */
    uint64_t flags;           /* VM_* */
    uint64_t pgoff;
    int32_t file;             /* mapping id; 0 = anonymous */
    int32_t uffd;             /* userfaultfd context id; 0 = none */
    uint64_t anon_vma;        /* identity of vma->anon_vma; 0 = none (VM_ANON_VMA mirrors it) */
    int32_t avc_single;       /* its anon_vma_chain has one entry (not inherited through fork) */
    int32_t resv;             /* hugetlb: the private reservation map (core/hugetlb.pxi) of the
                                 mapping's creator (HPAGE_RESV_OWNER); 0: none */
} mm_vma_t;

typedef struct {
    int32_t id;
    int32_t pgd;              /* root directory page */
    int32_t nvma;
    int32_t alive;
    uint64_t flags;           /* MMF_* */
    int64_t minflt;
    int64_t rss_anon;
    int64_t nr_ptes;          /* page-table pages held */
    int64_t serial;           /* unique per mm_new(): a reused id is a new mm */
    int32_t tlb_flush_pending; /* batches whose TLB flush is still to come (inc/dec_tlb_flush_pending) */
    int64_t write_protect_seq; /* odd while fork write-protects this mm's COW ptes (57efa1fe5957) */
    int64_t hugetlb_usage;    /* base pages of hugetlb mapped (mm->hugetlb_usage: HugetlbPages) */
    mm_vma_t *vmas;           /* sorted by start, owned by the core */
    uint64_t walk_key;        /* (va >> PUD_SHIFT) + 1 of the 1 GiB walk_dir maps; 0: none (core/pgtable.pxi pmd_dir) */
    int32_t walk_dir;         /* the PMD directory a walk last reached */
} mm_t;

/* A file's page cache (memfd / shmem / shared anon): a radix tree of the
 * page-table layout keyed by index; entries are present ptes naming the
 * cache folio, or swap entries for swapped-out shmem pages. */
typedef struct {
    int32_t id;
    int32_t root;             /* directory page of the cache tree */
    int32_t alive;
    int32_t shmem;            /* swap-backed */
    int64_t size;             /* i_size, bytes */
    int64_t nrpages;          /* folios in the cache */
    int64_t nr_leaves;        /* leaf pages of the cache tree */
    int64_t falloc_start;     /* a hole being punched: [start, end) indices (inode->i_private); */
    int64_t falloc_end;       /* start == end: none */
    int32_t hstate;           /* hugetlbfs: 1 + the hstate (MM_HSTATE_*) of its pages; 0: shmem */
    int32_t pad;
} mm_file_t;

#define MM_MAX_NODES 64         /* NUMA nodes of a machine (a nodemask is one unsigned long) */

#define SWAP_HAS_CACHE 0x4000  /* swap_map: the slot's folio is in the swapcache */
#define SWAP_COUNT_MASK 0x3fff
#define SWAP_DATA_BYTES 1      /* swap_flags: swap_data is a byte-store slot */

/* Rules of one kernel version, filled from eras.py. Never a version string. */
typedef struct {
    int32_t wp_reuse;
    int32_t foll_cow_rule;
    int32_t gup_forced_cow;
    int32_t anon_exclusive;
    int32_t gup_unshare_anon;
    int32_t gup_unshare_nonanon;
    int32_t fork_early_cow;
    int32_t mm_has_pinned;
    int32_t clear_refs_skip_pinned;
    int32_t mprotect_upgrade;
    int32_t pm_uffd_wp;
    int32_t soft_dirty;
    int32_t lru_batch;
    int32_t fault_around_uffd;     /* 0: none, 1: MINOR (5.14), 2: WP|MINOR (5.19) */
    int32_t swapout_skip_pinned;   /* 5.11 */
    int32_t free_swapcache_after_cow; /* 5.14 f4c4a3f48480 */
    int32_t fault_around_pages;
    int32_t uffd_wp_file;
    int32_t fork_uffd_child_vma;
    int32_t fork_marker_child_wp;
    int32_t uffd_wp_writenotify;
    int32_t uffd_unprotect_writable;
    int32_t uffd_wp_flush_pending;  /* 6ce64428d620 (5.12): do_wp_page flushes a pending uffd-wp batch */
    int32_t gup_fast_seq;           /* 57efa1fe5957 (5.11): GUP-fast pins re-check write_protect_seq */
    int32_t mprotect_gather;        /* 4a18419f71cd (6.0): protection changes flush only ptes that need it */
    int32_t tlb_flush_nested;       /* 99baac21e458 (4.13): a batch that overlapped another flushes anyway */
    int32_t pm_marker_swp_type;     /* swap type pagemap shows for a pte marker: 30 5.19-6.1, then 31 */
    int32_t swapin_read_writable;   /* c18160dba5ff (6.11): an exclusive swap-in is writable on a read fault */
    int32_t pm_guard_region;        /* 8e2f2aeb8b48 (6.15): pagemap shows a guard marker as bit 58 */
    int32_t numa_hint_upgrade;      /* 6a56ccbcf6c6 (6.2): do_numa_page upgrades with can_change_pte_writable, not savedwrite */
    int32_t numa_large_folio;       /* d2136d749d76 (6.10): do_numa_page migrates a pte-mapped large folio and rebuilds all its hinted ptes */
    int32_t ksm_reuse;              /* reuse_ksm_page(): a write may reuse a KSM page (until 09854ba94c6a, 5.9) */
    int32_t ksm_break_unshare;      /* 6cce3314b928 (6.2): break_ksm() unshares instead of write-faulting */
    int32_t ksm_checksum_first;     /* d58a361b0350 (6.11): the checksum gate precedes the stable tree search */
    /* Long-term pins (core/zones.pxi). Each is a mask of MM_ZONES_* bits. */
    int32_t longterm_unpinnable;    /* zones a FOLL_LONGTERM pin must not hold: CMA (9a4e9f3b2d73, 5.1), + MOVABLE (d1e153fea2a8, 5.13) */
    int32_t longterm_alloc_exclude; /* zones a fault inside a FOLL_LONGTERM GUP avoids: CMA (memalloc_nocma), + MOVABLE (8e3560d963d2, 5.13) */
    int32_t longterm_target_exclude;/* zones the pin's migration target avoids: both (GFP_USER), CMA only 5.9-5.12 (41b4dc14ee80 .. c991ffef7bce) */
    int32_t longterm_migrate_fail;  /* f0f4463837da (5.13): a failed migration fails the pin (-ENOMEM); before, the page is pinned where it is */
    int32_t thp_wp_refcount;        /* 3bff7e3f1f16 (5.18): a write-protected PMD THP is reused by refcount, not mapcount */
    int32_t thp_cow_whole;          /* until 3917c80280c9 (5.8): PMD COW copies the whole THP instead of splitting */
    int32_t large_reuse;            /* a PTE-mapped large folio's page on COW: 0 small rule, 1 never (6.9), 2 mm-exclusive (6.15) */
    int32_t thp_zero_wp_thp;        /* a write to the huge zero page gets a THP: until 3917c80280c9 (5.8), again from 1ced09e0331f (6.13) */
    int32_t collapse_ro;            /* b9f85966d1be (6.18): a collapse no longer needs a writable pte */
    int32_t split_remap_zero;       /* b1f202060afe (6.12): splitting an anon folio maps its all-zero pages to the zero page */
    int32_t pm_thp_excl_per_page;   /* 2c1f057e5be6 (6.11): pagemap's exclusive bit per page of a PMD, not the head's; 6.15 reverts to the head's */
    int32_t hugetlb_fork_copy_pinned; /* 4eae4efa2c29 (5.12): fork copies a maybe-pinned hugetlb page of a COW mapping */
    int32_t hugetlb_dontneed;       /* 90e7e7f5ef3f (5.18): MADV_DONTNEED works on hugetlb VMAs (EINVAL before) */
    int32_t hugetlb_mremap;         /* 550a7d60bd5e (5.16): mremap moves hugetlb VMAs (EINVAL before) */
    int32_t hugetlb_zap_restore_reserve; /* an owner's zap of an anon hugetlb page restores its reservation: 1 df7a6d1f6405 (6.8), 2 only if unmapped (6.12.110) */
    int32_t hugetlb_fork_swp_uffd_wp; /* fork and a hugetlb migration entry's uffd-wp: 0 untouched, 1 B22 (bc70fbf269fd 5.19), 2 fixed (83abe2fd5b3a 7.2; 6.12.103) */
    int32_t swapout_large_ptes;     /* 845982eb264b + 5ed890ce5147 (6.10): a PTE-mapped large folio (mTHP) goes to swap whole */
    int32_t swap_large_rotational;  /* "mm, swap: use cluster lock for HDD" (6.14): a rotational swap partition gives large entries too */
    int32_t swapin_large_sync;      /* 242d12c98174 (6.12): an mTHP-sized swap-in from a SWP_SYNCHRONOUS_IO device (zram) */
    int32_t swapin_large_swapcache; /* "mm: swap: entirely map large folios found in swapcache" (6.11): do_swap_page maps the whole folio */
    int32_t shmem_mthp;             /* e7a2ab7b3bb5 (6.11): anon shmem's huge orders come from hugepages-<size>kB/shmem_enabled ("inherit" follows shmem_enabled) */
    int32_t shmem_file_orders;      /* "mm: tidy up shmem mTHP controls and stats" (6.12): hugepages-8kB/shmem_enabled, order-1 shmem folios */
    int32_t shmem_within_size_fix;  /* d0e6983a6d17 (6.13, 6.12.9): within_size sizes rounded to 1 << order, not order */
    int32_t finish_fault_large;     /* 43e027e41423 (6.11): finish_fault maps a whole large anon-shmem folio with one set_pte_range */
} mm_policy_t;

/* Zones (core/zones.pxi): a frame's zone follows from its pfn. ZONE_MOVABLE
 * is the top of each node (movablecore=); the CMA area is ZONE_NORMAL
 * pageblocks of MIGRATE_CMA at the top of node 0's normal part (cma=).
 * Each node keeps one free list per class below. */
#define MM_ZONE_NORMAL  0
#define MM_ZONE_MOVABLE 1
#define MM_ZONE_CMA     2       /* ZONE_NORMAL, MIGRATE_CMA pageblocks */
#define MM_NR_ZONE_LISTS 3
#define MM_ZONES_MOVABLE (1 << MM_ZONE_MOVABLE)
#define MM_ZONES_CMA     (1 << MM_ZONE_CMA)

/* Counters, indexed by MM_STAT_*. */
enum {
    MM_STAT_FAULT, MM_STAT_ANON_FAULT, MM_STAT_ZERO_FAULT, MM_STAT_WP_FAULT,
    MM_STAT_COW, MM_STAT_REUSE, MM_STAT_UNSHARE, MM_STAT_EARLY_COW,
    MM_STAT_TLB_HIT, MM_STAT_TLB_MISS, MM_STAT_TLB_FLUSH, MM_STAT_LRU_DRAIN,
    MM_STAT_GUP, MM_STAT_FILE_FAULT, MM_STAT_FAULT_AROUND, MM_STAT_SWPOUT, MM_STAT_SWPIN,
    MM_STAT_UFFD, MM_STAT_UFFD_CORE,
    MM_STAT_THP_FAULT_ALLOC, MM_STAT_THP_FAULT_FALLBACK, MM_STAT_THP_SPLIT_PMD,
    MM_STAT_THP_ZERO_ALLOC, MM_STAT_THP_SPLIT_PAGE,
    MM_STAT_THP_FILE_ALLOC, MM_STAT_THP_FILE_MAPPED,
    MM_STAT_NR
};

#endif
