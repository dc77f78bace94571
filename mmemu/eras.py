"""Per-kernel-version policy: which rules a machine runs with.

The core never sees a version string: it reads the integer knobs of a
Policy. A version's policy is the 5.7 baseline plus every Change whose
version is <= it; `backports=[commit]` applies single Changes on top, so a
stable kernel with a fix (or a distro kernel with a revert) is expressible.

A stable point release ("6.1.176") is its base version ("6.1", the .0
release) plus the Changes that branch took: each Change's `stable` names, per
branch, the backport's commit in linux-X.Y.y and the first point release that
has it. STABLE_RESEARCHED records how far each branch's history was read; a
point release past it, or of a branch never read, is refused (ValueError),
never guessed.

Sources: ../shared/reference/semantics.md section 0 (eras) and section 18
(bug index). Commit ids marked [~] there are approximate; they are still the
keys users pass to `backports=`. A change whose id we have not confirmed is
keyed by a name instead of a made-up id.
"""
from __future__ import annotations

from typing import Iterable, NamedTuple

import os
import platform
import re
from dataclasses import dataclass, field

# Reuse rule of do_wp_page() for a private anon page (semantics.md 3.2).
WP_REUSE_MAPCOUNT = 0        # E0/E1: reuse_swap_page(): mapcount (+swapcount) == 1
WP_REUSE_REFCOUNT = 1        # E2/E2b: 09854ba94c6a: page_count == 1, no LRU drain
WP_REUSE_REFCOUNT_DRAIN = 2  # E3: d4c470970d45 + 53a05ad9f21d: drain local LRU batch, free swap
WP_REUSE_ANON_EXCLUSIVE = 3  # E4+: PageAnonExclusive first, else the E3 rule

# "May GUP follow a R/O pte for writing?" (semantics.md 4.3).
FOLL_COW_FORCE_DIRTY = 0     # FOLL_FORCE && FOLL_COW && pte_dirty (4.9-5.7, 5.9-5.19)
FOLL_COW_DIRTY = 1           # FOLL_COW && pte_dirty (5.8, 17839856fd58)
FOLL_FORCE_ANON_EXCLUSIVE = 2  # 6.0+ 5535be309971: anon && PageAnonExclusive

# Zone masks of the long-term pin knobs (bit 1 << MM_ZONE_* of core/mm_types.h).
ZONES_MOVABLE = 1 << 1       # ZONE_MOVABLE (movablecore=)
ZONES_CMA = 1 << 2           # the CMA area's MIGRATE_CMA pageblocks (cma=)

# Which GUPs 5.8's forced COW applies to.
FORCED_COW_NONE = 0
FORCED_COW_GET_AND_PIN = 1   # 17839856fd58 as merged in 5.8
FORCED_COW_GET_ONLY = 2      # the stable backports [~]

VERSIONS = (["5.%d" % m for m in range(7, 20)] +
            ["6.%d" % m for m in range(0, 19)])

# Baseline: the rules of 5.7 (era E0).
BASELINE = {
    "wp_reuse": WP_REUSE_MAPCOUNT,
    "foll_cow_rule": FOLL_COW_FORCE_DIRTY,
    "gup_forced_cow": FORCED_COW_NONE,
    "anon_exclusive": 0,          # PageAnonExclusive tracked (5.19)
    "gup_unshare_anon": 0,        # R/O FOLL_PIN unshares non-exclusive anon (5.19)
    "gup_unshare_nonanon": 0,     # ... and pagecache/zero page for FOLL_LONGTERM (6.2)
    "fork_early_cow": 0,          # copy maybe-pinned pages at fork (5.9)
    "mm_has_pinned": 0,           # per-mm "has pinned" flag exists (5.9)
    "clear_refs_skip_pinned": 0,  # clear_refs leaves maybe-pinned ptes alone (5.11)
    "mprotect_upgrade": 0,        # mprotect maps exclusive anon ptes writable (6.0)
    "pm_uffd_wp": 0,              # pagemap bit 57 (5.14)
    "madv_populate": 0,           # MADV_POPULATE_READ/WRITE (5.14)
    "madv_dontneed_locked": 0,    # MADV_DONTNEED_LOCKED (5.18)
    "soft_dirty": 1,              # CONFIG_MEM_SOFT_DIRTY (the host has it off)
    "memory_failure": 1,          # CONFIG_MEMORY_FAILURE: poison SIGBUS is BUS_MCEERR_AR (the host has it off)
    "lru_batch": 15,              # per-CPU LRU add batch size (PAGEVEC_SIZE)
    "fault_around_uffd": 0,       # fault-around skipped for uffd VMAs: 1 MINOR (5.14), 2 WP|MINOR (5.19)
    "swapout_skip_pinned": 0,     # maybe-pinned pages stay out of the swapcache (5.11)
    "free_swapcache_after_cow": 0,  # free the old page's idle swapcache after COW (5.14)
    "fault_around_pages": 16,     # fault_around_bytes 64 KiB
    # userfaultfd (semantics.md 8, 9; bug index B12-B15)
    "uffd_features": 0x1FF,       # 5.7: PAGEFAULT_FLAG_WP, EVENT_*, MISSING_HUGETLBFS/SHMEM, SIGBUS, THREAD_ID
    "uffd_user_mode_only": 0,     # UFFD_USER_MODE_ONLY (5.11)
    "uffd_wp_file": 0,            # uffd-wp on shmem with pte markers (5.19)
    "fork_uffd_child_vma": 0,     # uffd-wp kept iff the CHILD vma is wp (5.14, 8f34f1eac382): B12, B13
    "fork_marker_child_wp": 0,    # markers copied only to a wp child vma (6.2): B14
    "uffd_wp_writenotify": 0,     # wp shmem vmas get writenotify; mkuffd_wp implies R/O (6.2): B15
    "uffd_unprotect_writable": 0, # unprotect maps exclusive anon / dirty shared writable (6.3)
    "uffd_wp_flush_pending": 0,   # do_wp_page flushes first in a uffd-wp VMA with a flush pending (5.12): B11
    "clear_refs_flush": 0,        # clear_refs(4) flushes the TLB after its walk (5.12): B10
    "gup_fast_seq": 0,            # GUP-fast pins re-check fork's write_protect_seq (5.11): B17
    "mprotect_gather": 0,         # protection changes flush only ptes that lost rights (6.0)
    "tlb_flush_nested": 1,        # tlb_finish_mmu flushes when another batch overlapped (4.13): B18
    "uffd_wp_multi_vma": 0,       # UFFDIO_WRITEPROTECT walks several VMAs (6.4)
    "uffd_move_zeropage": 0,      # UFFDIO_MOVE moves zero-page ptes (~6.9)
    "uffd_release_resets_wp": 0,  # closing a userfaultfd resets its uffd-wp ptes and markers (6.9)
    "uffd_eagain_result": 0,      # an mmap_changing EAGAIN writes -EAGAIN to the result field (~6.15)
    "uffd_vma_lock": 0,           # fill/MOVE look up dst with find_vma_and_prepare_anon() (6.9)
    "uffd_mremap_clear_wp": 0,    # mremap without EVENT_REMAP drops uffd-wp bits and markers (6.13)
    "uffd_unregister_own_only": 0,  # UNREGISTER of another context's VMA is EINVAL (~6.13)
    "mremap_multi_vma": 0,        # a FIXED, same-size mremap may move several VMAs (6.17)
    "swapin_read_writable": 0,    # an exclusive swap-in maps writable on a read fault too (6.11)
    "pm_marker_swp_type": 31,     # pagemap's swap type for a pte marker (SWP_PTE_MARKER)
    "mremap_checks_first": 0,     # the new range is validated before the old VMA's lookup (6.17)
    "kpf_ksm_all_anon": 0,        # /proc/kpageflags shows KSM on every anon page (6.10 .. 81401cebfc15)
    "memfd_noexec": 0,            # memfd_create's MFD_NOEXEC_SEAL / MFD_EXEC (6.3)
    "pagemap_scan_guard": 0,      # PAGEMAP_SCAN's PAGE_IS_GUARD category (6.16)
    "madv_collapse": 0,           # MADV_COLLAPSE (6.1)
    "madv_guard": 0,              # MADV_GUARD_INSTALL / REMOVE (6.13)
    "madv_guard_file": 0,         # guard regions in file-backed and read-only mappings (6.15)
    "pm_guard_region": 0,         # pagemap bit 58 on a guard marker (6.15)
    "mremap_dontunmap": 1,        # MREMAP_DONTUNMAP, private anonymous (e346b3813067, 5.7)
    "mremap_dontunmap_any": 0,    # ... of shared and file mappings too (5.13)
    "pagemap_scan_none_written": 0,  # PAGEMAP_SCAN's generic path counts an empty pte or PMD hole WRITTEN (7.2): B21
    "pagemap_scan_hugetlb_psize": 0,  # PAGEMAP_SCAN's whole-huge-page test uses the hstate's size, not 2 MiB (7.1)
    "pagemap_scan_hugetlb_hole_wp": 0,  # ... and marks a hugetlb page with no table; before: self-deadlock (7.1)
    "numa_hint_upgrade": 0,       # do_numa_page: can_change_pte_writable instead of savedwrite (6.2)
    "numa_large_folio": 0,        # do_numa_page: a pte-mapped large folio may migrate, all its hints rebuilt (6.10)
    # KSM (semantics.md 3.5, 13)
    "ksm_reuse": 1,               # a write fault may reuse a KSM page: reuse_ksm_page() (52d1e606ee73, 5.1) until 5.9
    "ksm_break_unshare": 0,       # break_ksm() (MADV_UNMERGEABLE) unshares rather than write-faults (6.2)
    "ksm_checksum_first": 0,      # the checksum gate comes before the stable tree search (6.11)
    # FOLL_LONGTERM and ZONE_MOVABLE / CMA (semantics.md 4.1, 14; core/zones.pxi)
    # A long-term pin migrates CMA pages first (9a4e9f3b2d73, 5.1); ZONE_MOVABLE ones too (5.13).
    "longterm_unpinnable": ZONES_CMA,
    # Faults inside a long-term GUP avoid CMA (memalloc_nocma); ZONE_MOVABLE too (5.13).
    "longterm_alloc_exclude": ZONES_CMA,
    # The migration target is GFP_USER, in neither zone (5.9-5.12: ZONE_MOVABLE allowed).
    "longterm_target_exclude": ZONES_CMA | ZONES_MOVABLE,
    "longterm_migrate_fail": 0,   # a failed migration fails the pin, ENOMEM (5.13); before: pinned in place
    # Transparent huge pages (semantics.md 3.2, 6.9)
    "thp_cow_whole": 1,           # a PMD COW copies the whole THP (until 3917c80280c9, 5.8)
    "thp_wp_refcount": 0,         # a write-protected PMD THP is reused by refcount, not mapcount (5.18): B2a
    "large_reuse": 0,             # COW of a PTE-mapped large folio's page: 0 by the small-page rule, 1 never (6.9), 2 if this mm owns it (6.15)
    "thp_zero_wp_thp": 1,         # a write to the huge zero page gets a whole THP (until 5.8; again from 6.13)
    "pm_thp_excl_per_page": 0,    # pagemap's exclusive bit per page of a PMD THP (6.11 .. 6.15), else the head's
    "split_remap_zero": 0,        # splitting an anon folio maps its all-zero pages to the zero page (6.12)
    "collapse_none_ebusy": 0,     # MADV_COLLAPSE on a uffd-armed block with empty ptes: EBUSY (6.4), before EINVAL
    "hugetlb_fork_copy_pinned": 0,  # fork copies a maybe-pinned hugetlb page of a COW mapping (5.12)
    "hugetlb_dontneed": 0,        # MADV_DONTNEED on hugetlb VMAs (5.18); EINVAL before
    "hugetlb_mremap": 0,          # mremap of hugetlb VMAs (5.16); EINVAL before
    "hugetlb_punch_zero_partial": 0,  # a hugetlbfs hole punch zeroes the partial huge pages at its edges (5.19)
    "hugetlb_fork_swp_uffd_wp": 0,  # fork and a hugetlb migration entry's uffd-wp for a child without WP: 0 untouched,
                                    # 1 cleared with the present-pte accessor (5.19: B22), 2 cleared right (7.2)
    "hugetlb_zap_restore_reserve": 0,  # an owner's zap of an anon hugetlb page gives its reservation back: 1 always
                                       # (6.8), 2 only when no other mapping is left (6.12.110)
    "collapse_ro": 0,             # a collapse without any writable pte (6.18); before: SCAN_PAGE_RO, EINVAL
    "thp_mmap_align": 0,          # private anon mmap aligned to 2 MiB: 1 when >= 2 MiB (6.7), 2 when a multiple (6.12)
    # Swap of large folios (core/swap.pxi; semantics.md 12.4). A PMD-mapped
    # THP goes to swap whole (CONFIG_THP_SWAP, 4.14) when the swap area is a
    # block device that gives it a cluster; these say which others do.
    "swapout_large_ptes": 0,      # a PTE-mapped large folio (mTHP) goes whole too (6.10); before: split
    "swap_large_rotational": 0,   # a rotational swap partition gives large entries too (6.14); before: SSDs only
    "swapin_large_sync": 0,       # an mTHP-sized folio swapped in from a SWP_SYNCHRONOUS_IO device (6.12)
    "swapin_large_swapcache": 0,  # a large folio found in the swapcache is mapped whole (6.11); before: the page
    "mthp": 0,                    # multi-size THP for anon memory: hugepages-<size>kB/enabled (6.8)
    "shmem_mthp": 0,              # anon shmem's huge orders from hugepages-<size>kB/shmem_enabled (6.11)
    "finish_fault_large": 0,      # finish_fault maps a whole large anon-shmem folio by ptes (6.11)
    "shmem_file_orders": 0,       # hugepages-8kB/shmem_enabled: order-1 shmem folios (6.12)
    "shmem_within_size_fix": 0,   # per-size within_size checks round_up(index + 1, 1 << order) (6.13, 6.12.9)
}


class Stable(NamedTuple):
    """A Change as one stable branch took it."""
    commit: str     # the backport's id in linux-X.Y.y (12 hex digits), or UNCONFIRMED
    release: int    # first point release of the branch that has it: X.Y.<release>


# The point release is established (Debian's changelog of the stable updates it
# absorbed lists the subject under that release) but the backport's own commit
# id in linux-X.Y.y was not found: never a made-up id.
UNCONFIRMED = ""

# How far each stable branch's history was read for the Changes below: X.Y.y is
# placed from X.Y.1 up to X.Y.<n>. Sources: the changelogs of Debian's kernel
# packages, which list every upstream stable release they absorb with the
# subject of each of its commits (5.10.y: bullseye's 5.10.262-1, complete from
# 5.10.2; 5.19.y: the 5.19.2-5.19.11 uploads to unstable, kept in bookworm's
# changelog; 6.1.y: bookworm's 6.1.176-1, complete from 6.1.2; 6.12.y:
# 6.12.118-1~deb12u1, complete from 6.12.4), cross-checked and given commit ids
# from kernel.org's post-receive mails of linux-stable; 6.18.y: those mails
# (the push that tags 6.18.44). A Change whose `stable` has no entry for a
# researched branch was not backported to it up to that release.
STABLE_RESEARCHED = {"5.10": 262, "5.19": 11, "6.1": 176, "6.12": 118, "6.18": 44}


@dataclass(frozen=True)
class Change:
    commit: str
    version: str
    title: str
    knobs: dict
    bug: str = ""        # bug index row of semantics.md section 18 it opens/closes
    # Stable branch "X.Y" -> Stable(commit, first point release); see STABLE_RESEARCHED.
    stable: dict = field(default_factory=dict)
    # Other names backports= accepts for it (the names used before the id was confirmed).
    aliases: tuple = ()


CHANGES = (
    Change("17839856fd58", "5.8", "gup: document and work around 'COW can break either way' issue",
           {"gup_forced_cow": FORCED_COW_GET_AND_PIN, "foll_cow_rule": FOLL_COW_DIRTY},
           bug="B2 fixed; B3, B4 introduced"),
    Change("3917c80280c9", "5.8", "thp: change CoW semantics for anon-THP",
           {"thp_cow_whole": 0, "thp_zero_wp_thp": 0}),
    Change("a308c71bf1e6", "5.9", "mm/gup: Remove enfornced COW mechanism",
           {"gup_forced_cow": FORCED_COW_NONE, "foll_cow_rule": FOLL_COW_FORCE_DIRTY},
           bug="B3, B4 fixed"),
    # It also stops reusing KSM pages (reuse_ksm_page() itself goes in 1a0cf26323c8).
    Change("09854ba94c6a", "5.9", "mm: do_wp_page() simplification",
           {"wp_reuse": WP_REUSE_REFCOUNT, "ksm_reuse": 0}, bug="B2 fixed for good; B7, B19 introduced"),
    Change("008cfe4418b3", "5.9", "mm: Introduce mm_struct.has_pinned",
           {"mm_has_pinned": 1}),
    Change("70e806e4e645", "5.9", "mm: Do early cow for pinned pages during fork() for ptes",
           {"fork_early_cow": 1}, bug="B6 fixed"),
    # 5.10.9 took it with feb889fb40fa; the clear_refs trigger of B7 (S48c) ends there.
    Change("9348b73c2e1b", "5.11", "mm: don't play games with pinned pages in clear_page_refs",
           {"clear_refs_skip_pinned": 1}, bug="B7 mitigated (the clear_refs trigger)",
           stable={"5.10": Stable(UNCONFIRMED, 9)}),
    Change("912efa17e512", "5.12", "mm: proc: Invalidate TLB after clearing soft-dirty page state",
           {"clear_refs_flush": 1}, bug="B10 fixed",
           stable={"5.10": Stable(UNCONFIRMED, 20)}),
    # Fixes 292924b26024; Cc stable 5.9+, of which 5.10.y and 5.11.y were alive.
    Change("6ce64428d620", "5.12", "mm/userfaultfd: fix memory corruption due to writeprotect",
           {"uffd_wp_flush_pending": 1}, bug="B11 fixed",
           stable={"5.10": Stable(UNCONFIRMED, 24)}),
    Change("57efa1fe5957", "5.11", "mm/gup: prevent gup_fast from racing with COW during fork",
           {"gup_fast_seq": 1}, bug="B17 fixed",
           stable={"5.10": Stable(UNCONFIRMED, 4)}),
    Change("37cd0575b851", "5.11", "userfaultfd: add UFFD_USER_MODE_ONLY",
           {"uffd_user_mode_only": 1}, aliases=("uffd-user-mode-only",)),
    Change("feb889fb40fa", "5.11", "mm: don't put pinned pages into the swap cache",
           {"swapout_skip_pinned": 1}, bug="B9 mitigated",
           stable={"5.10": Stable(UNCONFIRMED, 9)}),
    Change("a4609387859f", "5.13", "mm/mremap: allow arbitrary anonymous and file mappings "
           "with MREMAP_DONTUNMAP", {"mremap_dontunmap_any": 1}),
    # Joonsoo Kim's migration-target rework (with ed03d924587e): the target
    # gfp gets __GFP_MOVABLE back and CMA is kept out by memalloc_nocma, so
    # a page leaving CMA for a long-term pin may land in ZONE_MOVABLE.
    # Merged in the 5.9 window with the standard migration-target series
    # (release inferred from the merge window; c991ffef7bce names it).
    Change("41b4dc14ee80", "5.9", "mm/gup: restrict CMA region by using allocation scope API "
           "(release inferred)", {"longterm_target_exclude": ZONES_CMA}),
    # Pavel Tatashin's "prohibit pinning pages in ZONE_MOVABLE" series, all in
    # the akpm batch of the 5.13 merge window (torvalds/linux, early May 2021).
    # 5.10.y took the two error fixes (552253fbb100, d04cbbb19aa7) in the
    # linux-stable-rc push of 2021-05-17, i.e. 5.10.38.
    Change("c991ffef7bce", "5.13", "mm/gup: don't pin migrated cma pages in movable zone",
           {"longterm_target_exclude": ZONES_CMA | ZONES_MOVABLE}),
    Change("f0f4463837da", "5.13", "mm/gup: return an error on migration failure "
           "(with 6e7f34ebb8d2 'mm/gup: check for isolation errors')",
           {"longterm_migrate_fail": 1},
           stable={"5.10": Stable("552253fbb100", 38)}, aliases=("6e7f34ebb8d2",)),
    Change("8e3560d963d2", "5.13", "mm: honor PF_MEMALLOC_PIN for all movable pages",
           {"longterm_alloc_exclude": ZONES_CMA | ZONES_MOVABLE}),
    Change("d1e153fea2a8", "5.13", "mm/gup: migrate pinned pages out of movable zone",
           {"longterm_unpinnable": ZONES_CMA | ZONES_MOVABLE}),
    Change("c949b097ef2e", "5.14", "userfaultfd/shmem: support minor fault registration for shmem (no fault-around for MINOR)",
           {"fault_around_uffd": 1}),
    Change("f4c4a3f48480", "5.14", "mm: free idle swap cache page after COW",
           {"free_swapcache_after_cow": 1}),
    Change("8f34f1eac382", "5.14", "mm/userfaultfd: fix uffd-wp special cases for fork()",
           {"fork_uffd_child_vma": 1}, bug="B12, B13 fixed",
           stable={"5.10": Stable(UNCONFIRMED, 53)}),
    Change("7677f7fd8be7", "5.13", "userfaultfd: add minor fault registration mode (hugetlbfs; "
           "UFFDIO_CONTINUE in f619147104c8)",
           {"uffd_features": 0x3ff}, aliases=("uffd-minor-hugetlbfs",)),
    # The MINOR_SHMEM bit; UFFDIO_CONTINUE on shmem came with it (153132571f02),
    # so before 5.14 CONTINUE into a shmem VMA is EINVAL (uffd.py reads the bit).
    Change("964ab0040ff9", "5.14", "userfaultfd/shmem: advertise shmem minor fault support",
           {"uffd_features": 0x7ff}, aliases=("uffd-minor-shmem",)),   # + MINOR_SHMEM
    Change("4ca9b3859dac", "5.14", "mm/madvise: introduce MADV_POPULATE_(READ|WRITE)",
           {"madv_populate": 1}),
    Change("fb8e37f35a2f", "5.14", "mm/pagemap: export uffd-wp protection information",
           {"pm_uffd_wp": 1}, aliases=("pagemap-uffd-wp",)),
    Change("d4c470970d45", "5.18", "mm: optimize do_wp_page() for fresh pages in local LRU pagevecs",
           {"wp_reuse": WP_REUSE_REFCOUNT_DRAIN}, bug="B19 fixed"),
    Change("3bff7e3f1f16", "5.18", "mm/huge_memory: streamline COW logic in do_huge_pmd_wp_page()",
           {"thp_wp_refcount": 1}, bug="B2a fixed"),
    Change("4eae4efa2c29", "5.12", "hugetlb: do early cow when page pinned on src mm",
           {"hugetlb_fork_copy_pinned": 1}, bug="B6 fixed on hugetlb"),
    Change("550a7d60bd5e", "5.16", "mm, hugepages: add mremap() support for hugepage backed vma",
           {"hugetlb_mremap": 1}),
    Change("90e7e7f5ef3f", "5.18", "mm: enable MADV_DONTNEED for hugetlb mappings",
           {"hugetlb_dontneed": 1}),
    # (Mainline id read from mainline shortlogs next to 034e5afad921, both in
    # the 5.19-rc hotfixes of June 2022; present in 6.1.176's source.)
    Change("bc70fbf269fd", "5.19", "mm/hugetlb: handle uffd-wp during fork()",
           {"hugetlb_fork_swp_uffd_wp": 1}, bug="B22 introduced"),
    Change("68d32527d340", "5.19", "hugetlbfs: zero partial pages during fallocate hole punch",
           {"hugetlb_punch_zero_partial": 1}),
    # Not in 6.1.y (absent from 6.1.176's source). 6.18.44 restores even
    # while a child still maps the page (measured); 6.12.118's source does
    # it only for the last mapping, by a change not identified (not modelled).
    Change("df7a6d1f6405", "6.8", "mm/hugetlb: restore the reservation if needed",
           {"hugetlb_zap_restore_reserve": 1}),
    Change("9457056ac426", "5.18", "mm: madvise: MADV_DONTNEED_LOCKED",
           {"madv_dontneed_locked": 1}, aliases=("madv-dontneed-locked",)),
    Change("6c287605fd56", "5.19", "mm: remember exclusively mapped anonymous pages with PG_anon_exclusive",
           {"anon_exclusive": 1, "wp_reuse": WP_REUSE_ANON_EXCLUSIVE}, bug="B7 fixed"),
    Change("a7f226604170", "5.19", "mm/gup: trigger FAULT_FLAG_UNSHARE when R/O-pinning a possibly shared anonymous page",
           {"gup_unshare_anon": 1}, bug="B5 fixed"),
    Change("824ddc601adc", "5.18", "userfaultfd: provide unmasked address on page-fault",
           {"uffd_features": 0xfff}, aliases=("uffd-exact-address",)),      # + EXACT_ADDRESS
    Change("1db9dbc2ef05", "5.19", "mm: introduce PTE_MARKER_UFFD_WP (uffd-wp on shmem)",
           {"uffd_wp_file": 1, "uffd_features": 0x1fff},   # + WP_HUGETLBFS_SHMEM
           bug="B14, B15 introduced"),
    # 5.19's SWP_SWAPIN_ERROR took the top swap type, so the pte marker
    # (SWP_PTE_MARKER, 5.19) sits one below it: pagemap shows a marker as
    # type 30 (seen on Debian's 6.1.176; config without DEVICE_PRIVATE, as
    # the engine) until 6.2 folds swapin errors into markers.
    Change("9f186f9e5fa9", "5.19", "mm/swapfile: unuse_pte can map random data if swap read fails "
           "(adds SWP_SWAPIN_ERROR; release inferred)", {"pm_marker_swp_type": 30}),
    Change("9c28a205c061", "5.19", "mm/shmem: handle uffd-wp special pte in page fault handler (uffd_disable_fault_around)",
           {"fault_around_uffd": 2}),
    # CVE-2022-2590; 5.19.y only (5.15.y and older have no PageAnonExclusive to rely on).
    Change("5535be309971", "6.0", "mm/gup: fix FOLL_FORCE COW security issue and remove FOLL_COW",
           {"foll_cow_rule": FOLL_FORCE_ANON_EXCLUSIVE}, bug="B16 fixed",
           stable={"5.19": Stable(UNCONFIRMED, 6)}),
    Change("4a18419f71cd", "6.0", "mm/mprotect: use mmu_gather (with x86's pte_needs_flush: only "
           "ptes that lost rights are flushed)", {"mprotect_gather": 1}),
    Change("64fe24a3e05e", "6.0", "mm/mprotect: try avoiding write faults for exclusive anonymous pages when changing protection",
           {"mprotect_upgrade": 1}),
    Change("7d8faaf15545", "6.1", "mm/madvise: introduce MADV_COLLAPSE sync hugepage collapse",
           {"madv_collapse": 1}),
    Change("84209e87c696", "6.2", "mm/gup: reliable R/O long-term pinning in COW mappings",
           {"gup_unshare_nonanon": 1}, bug="B20 fixed"),
    # Cc stable 5.19+, but 5.19.y and 6.0.y had ended by January 2023: 6.1.y only.
    Change("49d6d7fb6313", "6.2", "mm/uffd: fix pte marker when fork() without fork event",
           {"fork_marker_child_wp": 1}, bug="B14 fixed",
           stable={"6.1": Stable("2d11727655bf", 11)}, aliases=("uffd-fork-marker-fix",)),
    Change("51d3d5eb74ff", "6.2", "mm/userfaultfd: enable writenotify while userfaultfd-wp is enabled for a VMA",
           {"uffd_wp_writenotify": 1}, bug="B15 fixed",
           stable={"6.1": Stable("bcde505af166", 8)}, aliases=("uffd-wp-writenotify",)),
    # The hint no longer keeps the pte's write bit (x86 savedwrite,
    # b191f9b106ea); the fault maps writable what vm_page_prot or
    # can_change_pte_writable() allows, as mprotect does (id from the ppc64
    # follow-up's text; release inferred from the mm-unstable id cdb205f9e220
    # Peter Xu cites in the 6.2 "always wr-protect pte in pte_mkuffd_wp" thread).
    Change("6a56ccbcf6c6", "6.2", "mm/autonuma: use can_change_(pte|pmd)_writable() to replace savedwrite",
           {"numa_hint_upgrade": 1}),
    Change("15520a3f0469", "6.2", "mm: use pte markers for swap errors (SWP_SWAPIN_ERROR goes; "
           "the marker takes type 31, seen on 6.12.118 and 6.18)", {"pm_marker_swp_type": 31}),
    Change("6cce3314b928", "6.2", "mm/ksm: fix KSM COW breaking with userfaultfd-wp via FAULT_FLAG_UNSHARE",
           {"ksm_break_unshare": 1}),
    Change("931298e103c2", "6.3", "mm/userfaultfd: rely on vma->vm_page_prot in uffd_wp_range()",
           {"uffd_unprotect_writable": 1}),
    Change("105ff5339f49", "6.3", "mm/memfd: add MFD_NOEXEC_SEAL and MFD_EXEC",
           {"memfd_noexec": 1}),
    Change("2bad466cc9d9", "6.4", "mm/uffd: UFFD_FEATURE_WP_UNPOPULATED",
           {"uffd_features": 0x3fff}),
    Change("a1b92a3f1498", "6.4", "mm/userfaultfd: support WP on multiple VMAs",
           {"uffd_wp_multi_vma": 1}, aliases=("uffd-wp-multi-vma",)),
    Change("fc71884a5f59", "6.6", "mm: userfaultfd: add new UFFDIO_POISON ioctl",
           {"uffd_features": 0x7fff}),
    Change("d61ea1cb0095", "6.7", "userfaultfd: UFFD_FEATURE_WP_ASYNC",
           {"uffd_features": 0xffff}),
    Change("efa7df3e3bb5", "6.7", "mm: align larger anonymous mappings on THP boundaries",
           {"thp_mmap_align": 1}),
    Change("9cecde80aae0", "6.9", "mm: increase folio batch size (PAGEVEC_SIZE 15 -> 31; "
           "mm-hotfixes-stable-2024-03-27, 6.9-rc2; 15 in Debian's 6.1.176, 31 in 6.12.118)",
           {"lru_batch": 31}),
    Change("781a3ca5c345", "6.9", "mm: prohibit the last subpage from reusing the entire large folio "
           "(id from mm-stable's log; in MM updates for 6.9-rc1)", {"large_reuse": 1}),
    Change("2c1f057e5be6", "6.11", "fs/proc/task_mmu: properly detect PM_MMAP_EXCLUSIVE per page of PMD-mapped THPs",
           {"pm_thp_excl_per_page": 1}),
    # Ryan Roberts' series (v6.9-rc4-254): shrink_folio_list stops splitting
    # a folio without a PMD mapping (5ed890ce5147), the walker stops splitting
    # one MADV_PAGEOUT covers whole (3931b871c493), and the swap allocator
    # gives clusters to every mTHP order (845982eb264b).
    Change("845982eb264b", "6.10", "mm: swap: allow storage of all mTHP orders (with 5ed890ce5147 "
           "\"mm: vmscan: avoid split during shrink_folio_list()\")", {"swapout_large_ptes": 1},
           aliases=("5ed890ce5147",)),
    # Before it do_numa_page left a pte-mapped large folio where it was ("TODO:
    # handle PTE-mapped THP") and restored the faulting pte alone.
    Change("d2136d749d76", "6.10", "mm: support multi-size THP numa balancing (with 6b0ed7b3c775 "
           "\"mm: factor out the numa mapping rebuilding into a new helper\")", {"numa_large_folio": 1},
           aliases=("6b0ed7b3c775",)),
    Change("242d12c98174", "6.12", "mm: support large folios swap-in for sync io devices",
           {"swapin_large_sync": 1}),
    # Barry Song / Chuanhua Han's series: do_swap_page maps a large folio it
    # finds in the swapcache whole when every pte of it is its swap entry,
    # and should_try_to_free_swap counts the folio's nr references. Still in
    # mm-unstable in late June 2024, in 6.12's mm/memory.c: 6.11. The
    # mainline id was not confirmed (508758960b8d is unverified): a name.
    Change("swapin-map-large-swapcache", "6.11", "mm: swap: entirely map large folios found in swapcache "
           "(with \"mm: swap: make should_try_to_free_swap() support large-folio\"; mainline id not confirmed)",
           {"swapin_large_swapcache": 1}),
    # Kairui Song's swap allocator rework (6.14): cluster info for every
    # device, so scan_swap_map_slots' large-entry test keeps SWP_BLKDEV only.
    Change("swap-cluster-lock-hdd", "6.14", "mm, swap: use cluster lock for HDD (rework of swap "
           "allocator locks, v6.14; id not confirmed)", {"swap_large_rotational": 1}),
    Change("b1f202060afe", "6.12", "mm: remap unused subpages to shared zeropage when splitting isolated thp",
           {"split_remap_zero": 1}),
    Change("d4148aeab412", "6.12", "mm, mmap: limit THP alignment of anonymous mappings to PMD-aligned sizes",
           {"thp_mmap_align": 2}),
    Change("khugepaged-skip-shmem-uffd", "6.4", "mm/khugepaged: skip shmem with userfaultfd (v6 posted "
           "2023-04-04 against mm-unstable, so 6.4; id not confirmed): madvise_collapse_errno() maps "
           "SCAN_EXCEED_NONE_PTE to EBUSY", {"collapse_none_ebusy": 1}),
    Change("adef440691ba", "6.8", "userfaultfd: UFFDIO_MOVE uABI",
           {"uffd_features": 0x1ffff}),
    # The per-size sysfs files come with it (same series, 6.8); before, the
    # directories do not exist (Machine.thp.sizes is empty, writes ENOENT).
    Change("19eaf44954df", "6.8", "mm: thp: support allocation of anonymous multi-size THP",
           {"mthp": 1}),
    # (7fb1b252afb5 is its id in the mm tree; e7a2ab7b3bb5 the mainline one
    # that Fixes: tags and the 6.12 stable backports cite.)
    Change("e7a2ab7b3bb5", "6.11", "mm: shmem: add mTHP support for anonymous shmem "
           "(shmem_allowable_huge_orders: the per-size shmem_enabled decides for MAP_SHARED|MAP_ANONYMOUS)",
           {"shmem_mthp": 1}, aliases=("7fb1b252afb5",)),
    # The series' first patch (same merge, 6.11): the ptes of a shmem mTHP
    # (or a PMD THP a VMA can only map by ptes) go in at once.
    Change("43e027e41423", "6.11", "mm: memory: extend finish_fault() to support large folio",
           {"finish_fault_large": 1}),
    # Ryan Roberts' tidy-up (6.12 mm merge; only mm-tree ids were found):
    # a per-size directory for every THP_ORDERS_ALL_FILE_DEFAULT order, so
    # shmem gets hugepages-8kB (order 1), which anon memory never has.
    # 6.11 - 6.12.8 rounded the index to `order` pages, cumulatively from
    # one size to the next: a small within_size size could be refused. The
    # 6.12.y backport is in the 2025-01-06 review series (6.12 141/156).
    Change("d0e6983a6d17", "6.13", "mm: shmem: fix incorrect index alignment for within_size policy",
           {"shmem_within_size_fix": 1}, stable={"6.12": Stable(UNCONFIRMED, 9)}),
    Change("shmem-mthp-file-orders", "6.12", "mm: tidy up shmem mTHP controls and stats (id not confirmed)",
           {"shmem_file_orders": 1}),
    Change("ea4df6a5ea81", "6.9", "userfaultfd: handle zeropage moves by UFFDIO_MOVE (release inferred)",
           {"uffd_move_zeropage": 1}, aliases=("uffd-move-zeropage",)),
    Change("867a43a34ff8", "6.9", "userfaultfd: use per-vma locks in userfaultfd operations "
           "(dst's anon_vma prepared before the checks; MOVE without a VMA is ENOENT)",
           {"uffd_vma_lock": 1}),
    Change("662df3e5c376", "6.13", "mm: madvise: implement lightweight guard page mechanism",
           {"madv_guard": 1}),
    # A January 2025 mm-hotfix in 6.13 (Greg's 6.6.y "failed to apply" mail
    # names it in Linus's tree on the day after 6.13); not in 6.1.y or 6.6.y.
    Change("0cef0bb836e3", "6.13", "mm: clear uffd-wp PTE/PMD state on mremap()",
           {"uffd_mremap_clear_wp": 1},
           stable={"6.12": Stable(UNCONFIRMED, 11)}, aliases=("mm-clear-uffd-wp-on-mremap",)),
    # In mm-unstable in July 2025, so merged for 6.17 (6.12.118's
    # userfaultfd_unregister() still lets any context unregister); upstream id
    # unconfirmed among the tree copies seen.
    Change("uffd-unregister-own-ctx", "6.17", "userfaultfd: prevent unregistering VMAs through a "
           "different userfaultfd (host-proven on 6.18; id unconfirmed)",
           {"uffd_unregister_own_only": 1}),
    # Found by `mmemu diff --against vm:6.1 --uffd`: 6.1.176 (and 6.12's source)
    # answer a FIXED move from an unmapped address onto an overlapping range
    # EFAULT, the 6.18 host EINVAL. Same series as d23cb648e365 (v4 06/10).
    Change("b9f85966d1be", "6.18", "mm: enable khugepaged anonymous collapse on non-writable regions "
           "(release inferred: posted 2025-09-03, after the 6.17 merge window; the 6.18.44 host "
           "collapses a fully COW-shared range)", {"collapse_ro": 1}),
    Change("mremap-check-conditions-earlier", "6.17", "mm/mremap: check remap conditions earlier "
           "(id unconfirmed; release inferred from its series)", {"mremap_checks_first": 1}),
    Change("d23cb648e365", "6.17", "mm/mremap: permit mremap() move of multiple VMAs "
           "(not of uffd-registered ones; host-proven on 6.18; release inferred)",
           {"mremap_multi_vma": 1}, aliases=("mremap-multi-vma",)),
    # Both posted in February 2025 and in mainline by the end of April 2025
    # (CRIU's MADV_GUARD_INSTALL support, reviewed 2025-04-29, meets file-
    # backed guards and reads PM_GUARD_REGION): 6.15, inferred.
    Change("f807123d578d", "6.15", "mm: allow guard regions in file-backed and read-only mappings "
           "(release inferred)", {"madv_guard_file": 1}),
    Change("8e2f2aeb8b48", "6.15", "fs/proc/task_mmu: add guard region bit to pagemap "
           "(release inferred)", {"pm_guard_region": 1}),
    Change("1ced09e0331f", "6.13", "mm: allocate THP on hugezeropage wp-fault (release inferred: "
           "posted against 6.11-rc5, absent from 6.12's source)", {"thp_zero_wp_thp": 1}),
    Change("pagemap-pmd-exclusive-head", "6.15", "fs/proc/task_mmu: remove per-page mapcount dependency "
           "for PM_MMAP_EXCLUSIVE (CONFIG_NO_PAGE_MAPCOUNT): in MM updates for 6.15-rc1; its PMD path "
           "tests the head page for every subpage again (seen on the 6.18.44 host); id not confirmed",
           {"pm_thp_excl_per_page": 0}),
    Change("1da190f4d0a6", "6.15", "mm: Copy-on-Write (COW) reuse support for PTE-mapped THP "
           "(release inferred from the series' posting and the Fixes: tags naming it)", {"large_reuse": 2}),
    Change("a516403787e0", "6.16", "fs/proc: extend the PAGEMAP_SCAN ioctl to report guard regions "
           "(release inferred)", {"pagemap_scan_guard": 1}),
    Change("dee3d0bef2b0", "6.10", "proc: rewrite stable_page_flags() (its KSM test matches every "
           "anonymous page)", {"kpf_ksm_all_anon": 1}, bug="KPF_KSM on every anon page introduced"),
    # Found by `mmemu scenarios --on vm:6.1` (S78): 6.1.176 faults on the write
    # after a read swap-in; 6.12's do_swap_page maps an exclusive page writable.
    Change("c18160dba5ff", "6.11", "mm: swap: reuse exclusive folio directly instead of wp page "
           "faults (with 20dfa5b7adc5's soft-dirty test; release inferred from June 2024)",
           {"swapin_read_writable": 1}),
    Change("d58a361b0350", "6.11", "mm/ksm: don't waste time searching stable tree for fast changing page",
           {"ksm_checksum_first": 1}),
    # Found by `mmemu diff --against vm:6.1 --uffd --programs 2000 --seed 8`:
    # on 6.1.176 a child's shmem marker stays after its fork context closes.
    Change("c88033efe9a3", "6.9", "mm/userfaultfd: reset ptes when close() for wr-protected ones "
           "(a syzbot fix of April 2024; release inferred)", {"uffd_release_resets_wp": 1}),
    Change("95567729173e", "6.15", "mm/userfaultfd: fix uninitialized output field for -EAGAIN race",
           {"uffd_eagain_result": 1},
           stable={"6.12": Stable(UNCONFIRMED, 29)}, aliases=("uffd-eagain-output-field",)),
    # Two fixes of one May 2026 hotfix series (Kiryl Shutsemau, "[PATCH 2/6]" and
    # "[PATCH 3/6]", Cc: stable, Fixes: 52526ca7fdb9), mainline ids not
    # established, so keyed by name; release inferred. In linux-stable-rc's
    # 6.18.y pushes of 2026-07-21/22 beside 81401cebfc15 (seen in 6.18.44);
    # in Debian's 6.12.118 source but not in 6.12.103 (the 6.12.y point release
    # between is not established: 118 is the first one known to have them).
    Change("pagemap-scan-hugetlb-huge-page-size", "7.1",
           "fs/proc/task_mmu: use huge_page_size() in pagemap_scan_hugetlb_entry() (release inferred; "
           "before it a 1 GiB page is never write-protected)",
           {"pagemap_scan_hugetlb_psize": 1},
           stable={"6.12": Stable(UNCONFIRMED, 118), "6.18": Stable(UNCONFIRMED, 44)}),
    Change("pagemap-scan-hugetlb-hole-deadlock", "7.1",
           "fs/proc/task_mmu: fix hugetlb self-deadlock in pagemap_scan_pte_hole() (release inferred)",
           {"pagemap_scan_hugetlb_hole_wp": 1},
           stable={"6.12": Stable(UNCONFIRMED, 118), "6.18": Stable(UNCONFIRMED, 44)}),
    # B21: a July 2026 mm-hotfix pair merged for 7.2-rc (after the modelled
    # versions, so only stable kernels and backports= reach it). The engine has
    # no page-table hole apart from an empty pte, so 40de8160ca7f ("... for PMD
    # holes"; 6.12.y 777d8400abd4, 6.18.y 7d3e1d3a0dce, same releases) is this
    # one knob too and backports= accepts its id.
    Change("07b4377bdbe7", "7.2", "fs/proc/task_mmu: fix PAGEMAP_SCAN written state for unpopulated ptes",
           {"pagemap_scan_none_written": 1}, bug="B21 fixed",
           stable={"6.12": Stable("f25834c60f49", 103), "6.18": Stable("be11b4bf498a", 44)},
           aliases=("40de8160ca7f",)),
    # Found by `mmemu diff --against vm:6.12` (6.12.118 shows KSM on every anon
    # page; the 6.18.44 host does not). Merged after 7.2-rc2 from the same July
    # 2026 mm-hotfixes batch as B21's fix, and in linux-stable-rc's 6.18.y push
    # of 2026-07-22 beside it; 6.18.44 is where it is seen, the stable id is
    # not established.
    # B22: the same July 2026 mm-hotfixes batch as B21's fix; Debian's
    # 6.12.118 changelog lists it under 6.12.103 beside B21's, and its
    # source has it (copy_hugetlb_page_range clears a migration entry's
    # swp uffd-wp bit, and leaves a hwpoison entry alone). Debian's 6.1.192
    # lists it under 6.1.183: past the researched 6.1.176, so not recorded
    # (what else 6.1.177-192 took is not researched).
    Change("83abe2fd5b3a", "7.2", "mm/hugetlb: fix swap entry corruption when clearing uffd-wp at fork()",
           {"hugetlb_fork_swp_uffd_wp": 2}, bug="B22 fixed",
           stable={"6.12": Stable(UNCONFIRMED, 103), "6.18": Stable(UNCONFIRMED, 44)}),
    # 6.12.118's __unmap_hugepage_range() restores the owner's reservation
    # only when the folio is no longer mapped; Debian's changelog lists the
    # change under 6.12.110 (linux-6.12.y's stable push of 2026-09-09); the
    # 6.18.44 host still restores while a child maps the page.
    Change("hugetlb-resv-adjust-unmapped", "7.3", "hugetlb: only adjust reservation during unmapping "
           "if mapcount is 0 (mainline id and release unconfirmed: after 6.18.44, in 6.12.110)",
           {"hugetlb_zap_restore_reserve": 2}, stable={"6.12": Stable(UNCONFIRMED, 110)}),
    Change("81401cebfc15", "7.2", "fs/proc: fix KPF_KSM reported for all anonymous pages",
           {"kpf_ksm_all_anon": 0}, bug="KPF_KSM on every anon page fixed",
           stable={"6.18": Stable(UNCONFIRMED, 44)}),
)

# Selected only through backports=: the stable-kernel flavour of 17839856fd58,
# which forced COW for FOLL_GET only (semantics.md section 0, E1 [~]). Its
# branches (4.19.y, 5.4.y) are older than the modelled versions, so no point
# release reaches it; their history is not researched here.
BACKPORT_ONLY = (
    Change("17839856fd58-stable", "5.8", "gup: 'COW can break either way' workaround, stable flavour (FOLL_GET only)",
           {"gup_forced_cow": FORCED_COW_GET_ONLY, "foll_cow_rule": FOLL_COW_DIRTY}),
)

# Selected only through backports=: B18's fix undone, to study a race whose
# fix predates the modelled versions (S60).
REVERTS = (
    Change("99baac21e458-revert", "4.12", "without 'mm: fix MADV_[FREE|DONTNEED] TLB flush miss "
           "problem' (99baac21e458, 4.13): a zap that found nothing to flush returns at once",
           {"tlb_flush_nested": 0}, bug="B18 introduced"),
)

CHANGES_BY_COMMIT = {name: c for c in CHANGES + BACKPORT_ONLY + REVERTS
                     for name in (c.commit,) + c.aliases}

# Era labels of semantics.md section 0, by first version.
ERA_STARTS = (("5.7", "E0"), ("5.8", "E1"), ("5.9", "E2"), ("5.12", "E2b"), ("5.18", "E3"),
              ("5.19", "E4"), ("6.2", "E5"), ("6.4", "E6"), ("6.13", "E7"))

_VERSION = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?\Z")


def _parse(version):
    """"6.1" -> (6, 1, None); "6.1.176" -> (6, 1, 176); anything else is a ValueError."""
    m = _VERSION.match(str(version))
    if not m:
        raise ValueError(f"bad kernel version {version!r}: expected X.Y or X.Y.Z, e.g. 6.1 or 6.1.176")
    major, minor, point = m.groups()
    return int(major), int(minor), None if point is None else int(point)


def _key(version):
    """Order of versions: "6.1" is the .0 release, before "6.1.1"."""
    major, minor, point = _parse(version)
    return major, minor, point or 0


def base_version(version: str) -> str:
    """The mainline release a version builds on: "6.1.176" -> "6.1"."""
    major, minor, _ = _parse(version)
    return f"{major}.{minor}"


def stable_backports(version: str) -> tuple:
    """The Changes a stable point release took on top of its base version, in
    CHANGES order; () for an X.Y (.0) version. ValueError where the record
    cannot place the version (see place())."""
    base, point = place(version)
    if not point:
        return ()
    return tuple(c for c in CHANGES if base in c.stable and c.stable[base].release <= point)


def place(version: str):
    """(base, point release or 0) of a version the era table can place, else
    a ValueError that says why."""
    major, minor, point = _parse(version)
    base = f"{major}.{minor}"
    if base not in VERSIONS:
        raise _unknown(version)
    if point and base not in STABLE_RESEARCHED:
        raise ValueError(f"cannot place {version}: the stable history of {base}.y is not "
                         f"researched, so its backports are unknown (researched: {_researched()}; "
                         f"or pass kernel={base!r} with backports=[...])")
    if point and point > STABLE_RESEARCHED[base]:
        raise ValueError(f"cannot place {version}: the stable history of {base}.y is researched "
                         f"only up to {base}.{STABLE_RESEARCHED[base]}, so what {version} took "
                         "after it is unknown")
    return base, point or 0


def _researched():
    return ", ".join(f"{b}.y up to {b}.{n}" for b, n in STABLE_RESEARCHED.items())


def _unknown(kernel):
    return ValueError(f"unknown kernel version {kernel!r}; choices: host, " + ", ".join(VERSIONS)
                      + ", or a point release of a researched stable branch (" + _researched() + ")")


def era_of(version: str) -> str | None:
    label = None
    for start, name in ERA_STARTS:
        if _key(version) >= _key(start):
            label = name
    return label


@dataclass
class Policy:
    """The rules one machine runs with. `knobs` go to the core as integers.
    `version` is the full version ("6.1.176" for a point release)."""
    version: str
    era: str
    knobs: dict
    backports: tuple = ()
    host: bool = False
    changes: list = field(default_factory=list)

    def __getattr__(self, name: str) -> int:
        knobs = self.__dict__.get("knobs", {})
        if name in knobs:
            return knobs[name]
        raise AttributeError(name)

    @property
    def base(self) -> str:
        """The mainline release the version builds on ("6.1" for "6.1.176")."""
        return base_version(self.version)

    def at_least(self, version: str) -> bool:
        return _key(self.version) >= _key(version)


def _debian_version(release, build):
    """Debian names its kernels by ABI ("6.1.0-50-amd64") and puts the stable
    release in `uname -v` ("... Debian 6.1.176-1 (2026-...)")."""
    m = re.search(r"Debian (\d+\.\d+\.\d+)", build)
    if m and base_version(m.group(1)) == base_version(release):
        return m.group(1)
    return release


def host_version() -> str:
    """The running kernel's full version ("6.18.44" for "6.18.44-fc-v1294"); a
    base newer than the newest modelled version is clamped to that version's
    .0 release. ValueError when the era table cannot place it."""
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", platform.release())
    if not m:
        raise ValueError(f"cannot parse the host kernel release {platform.release()!r}")
    v = m.group(0)
    if m.group(3) == "0":
        v = _debian_version(v, platform.version())
    if _key(v) < _key(VERSIONS[0]):
        raise ValueError(f"host kernel {v} predates the oldest modelled version {VERSIONS[0]}")
    if _key(base_version(v)) > _key(VERSIONS[-1]):
        return VERSIONS[-1]
    base, point = place(v)
    return f"{base}.{point}" if point else base


def _host_soft_dirty():
    """CONFIG_MEM_SOFT_DIRTY probe: a freshly written anon page of a new VMA
    reads soft-dirty in /proc/self/pagemap iff the kernel has it."""
    import ctypes
    import mmap
    try:
        buf = mmap.mmap(-1, 4096)
        buf[0:1] = b"x"
        addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
        with open("/proc/self/pagemap", "rb") as f:
            f.seek((addr // 4096) * 8)
            entry = int.from_bytes(f.read(8), "little")
        return 1 if entry & (1 << 55) else 0
    except OSError:
        return 0


def policy_for(kernel: str = "6.18", backports: Iterable[str] = ()) -> Policy:
    """Policy for a version ("5.7" ... "6.18", a researched stable point
    release such as "6.1.176", or "host")."""
    host = kernel == "host"
    version = host_version() if host else str(kernel)
    if not host and not _VERSION.match(version):
        raise _unknown(kernel)
    base, point = place(version)
    version = f"{base}.{point}" if point else base       # "6.1.0" is the .0 release, "6.1"
    knobs = dict(BASELINE)
    applied = []
    for change in CHANGES:
        if _key(change.version) <= _key(base):
            knobs.update(change.knobs)
            applied.append(change.commit)
    for change in stable_backports(version):
        knobs.update(change.knobs)
        applied.append(change.commit)
    for commit in backports:
        change = CHANGES_BY_COMMIT.get(commit)
        if change is None:
            raise ValueError(f"unknown backport {commit!r}; known commits: "
                             + ", ".join(sorted(CHANGES_BY_COMMIT)))
        knobs.update(change.knobs)
        applied.append(change.commit)
    if host:
        knobs["soft_dirty"] = _host_soft_dirty() if os.path.exists("/proc/self/pagemap") else 0
        # mm/memory-failure.c registers this sysctl: present iff CONFIG_MEMORY_FAILURE.
        knobs["memory_failure"] = int(os.path.exists("/proc/sys/vm/memory_failure_early_kill"))
    return Policy(version=version, era=era_of(version), knobs=knobs,
                  backports=tuple(backports), host=host, changes=applied)
