"""When each version-gated interface reached mainline Linux: a table written
from the kernel's own history, independently of mmemu/eras.py.

tests/unit/test_era_gates.py probes every entry on every modelled version
through the public API and checks that the engine refuses the interface
exactly before `release` and accepts it from `release` on. If a gate in
eras.py moves, that test fails against this table; so this table must never
be written from eras.py's claims.

How each row was established (issue 14):
- `commit` is the upstream commit that added the interface, 12 hex digits,
  taken from the kernel's own record: Fixes: tags of later mainline commits,
  "commit ... upstream" lines of stable backports, kernel.org post-receive
  logs of torvalds/linux and of trees that pull it, syzbot bisections, and
  man-pages patches that name the commit. None is "unconfirmed" when only
  an mm-unstable (rebased) id was found, or none at all.
- `release` is the first mainline tag that has it: from a torvalds/linux
  push or commit date inside that release's merge window, a maintainer's
  "part of vX-rc1", the man page's "since Linux X", and the Debian source
  of 6.12 (/usr/src/linux-source-6.12, 6.12.118) for present/absent in 6.12.
- `evidence` says which of these were found; `confidence` is "confirmed"
  (id and release both from the kernel's record) or "inferred" (one of them
  rests on dates or secondary sources; the note says which).

Releases before 5.7 mean "in every modelled version". Entries with
`modelled=False` are interfaces the engine does not offer at all; the test
checks they are still absent, so a new API cannot arrive ungated.
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class Feature:
    key: str             # the probe that tries it (test_era_gates.PROBES)
    what: str            # the interface, in Linux's spelling
    release: str         # first mainline release that has it ("5.14")
    commit: str | None   # upstream commit that added it; None when not confirmed
    title: str           # that commit's subject
    evidence: str
    confidence: str = "confirmed"
    modelled: bool = True


HISTORY = (
    # ---- madvise(2) advice (include/uapi/asm-generic/mman-common.h) ----------------
    Feature("madv_wipeonfork", "MADV_WIPEONFORK, MADV_KEEPONFORK", "4.14", "d2cd9ede6e19",
            "mm,fork: introduce MADV_WIPEONFORK",
            "id and 4.14 from a madvise(2) history table that links the torvalds/linux commit "
            "(martins3.github.io); present in the 6.12 uapi header", "inferred"),
    Feature("madv_cold", "MADV_COLD", "5.4", "9c276cc65a58", "mm: introduce MADV_COLD",
            "Fixes: tags of later mainline fixes; man-pages patch naming the commit (since 5.4)"),
    Feature("madv_pageout", "MADV_PAGEOUT", "5.4", "1a4e58cce84e", "mm: introduce MADV_PAGEOUT",
            "id and 5.4 from the same madvise(2) history table (full id linked to torvalds/linux); "
            "present in the 6.12 uapi header", "inferred"),
    Feature("madv_populate_read", "MADV_POPULATE_READ", "5.14", "4ca9b3859dac",
            "mm/madvise: introduce MADV_POPULATE_(READ|WRITE) to prefault page tables",
            "Fixes: 4ca9b3859dac in a 2024 mainline fix; the author's man-pages patch: "
            "'merged ... part of v5.14-rc1'"),
    Feature("madv_populate_write", "MADV_POPULATE_WRITE", "5.14", "4ca9b3859dac",
            "mm/madvise: introduce MADV_POPULATE_(READ|WRITE) to prefault page tables",
            "as MADV_POPULATE_READ (one commit)"),
    Feature("madv_dontneed_locked", "MADV_DONTNEED_LOCKED", "5.18", "9457056ac426",
            "mm: madvise: MADV_DONTNEED_LOCKED",
            "commit dated 2022-03-24 (quoted in a linux-mm thread), i.e. the 5.18 merge window "
            "after 5.17 (2022-03-20); perf tools uapi sync 'to pick the changes from' it"),
    Feature("madv_collapse", "MADV_COLLAPSE", "6.1", "7d8faaf15545",
            "mm/madvise: introduce MADV_COLLAPSE sync hugepage collapse",
            "Fixes: tags; man-pages patch by its author: 'Linux 6.1 introduced MADV_COLLAPSE in "
            "upstream commit 7d8faaf15545'"),
    Feature("madv_guard_install", "MADV_GUARD_INSTALL", "6.13", "662df3e5c376",
            "mm: madvise: implement lightweight guard page mechanism",
            "Fixes: 662df3e5c376 (cc stable); LTP madvise12 cites it; absent from the 6.12 uapi "
            "header, listed as Linux 6.13"),
    Feature("madv_guard_remove", "MADV_GUARD_REMOVE", "6.13", "662df3e5c376",
            "mm: madvise: implement lightweight guard page mechanism",
            "as MADV_GUARD_INSTALL (one commit)"),
    Feature("guard_file_backed", "MADV_GUARD_INSTALL in file-backed and read-only mappings", "6.15",
            "f807123d578d", "mm: allow guard regions in file-backed and read-only mappings",
            "series posted 2025-02-13 (after the 6.14 merge window); CRIU's review of 2025-04-29 "
            "finds it in torvalds/linux (github.com/torvalds/linux/commit/f807123d578d) while "
            "6.15-rc was open; 6.12's is_valid_guard_vma() (in 662df3e5c376) wants "
            "vma_is_anonymous() and VM_MAYWRITE", "inferred"),

    # ---- mremap(2) --------------------------------------------------------------------
    Feature("mremap_dontunmap", "MREMAP_DONTUNMAP (private anonymous)", "5.7", "e346b3813067",
            "mm/mremap: add MREMAP_DONTUNMAP to mremap()",
            "Fixes: tags; man-pages mremap(2): 'MREMAP_DONTUNMAP (since Linux 5.7)' with this commit"),
    Feature("mremap_dontunmap_shared", "MREMAP_DONTUNMAP of a shared or file mapping", "5.13",
            "a4609387859f", "mm: extend MREMAP_DONTUNMAP to non-anonymous mappings",
            "kernel.org push logs of mid-2021 trees; GraalVM's comment: 'kernel version 5.13 "
            "onwards, and fails with EINVAL otherwise'; man-pages patch linking the commit"),
    Feature("mremap_multi_vma", "mremap(MREMAP_MAYMOVE|MREMAP_FIXED) of a same-size range over "
            "several VMAs", "6.17", "d23cb648e365", "mm/mremap: permit mremap() move of multiple VMAs",
            "committer date 2025-07-25 in mm-stable (git.kernel.dk mirror of mainline), i.e. merged "
            "for 6.17 after 6.16 (2025-07-27)", "inferred"),

    # ---- memfd_create(2) flags (include/uapi/linux/memfd.h) --------------------------
    Feature("mfd_noexec_seal", "MFD_NOEXEC_SEAL", "6.3", "105ff5339f49", "mm/memfd: add MFD_NOEXEC_SEAL and MFD_EXEC",
            "Fixes: 105ff5339f49 with 'Cc: stable # v6.3+'; runc: EINVAL means the kernel "
            "'precedes 105ff5339f498 ... Linux 6.3+'"),
    Feature("mfd_exec", "MFD_EXEC", "6.3", "105ff5339f49", "mm/memfd: add MFD_NOEXEC_SEAL and MFD_EXEC",
            "as MFD_NOEXEC_SEAL (one commit)"),

    # ---- userfaultfd(2) flags -------------------------------------------------------
    Feature("uffd_user_mode_only", "userfaultfd(UFFD_USER_MODE_ONLY)", "5.11", "37cd0575b851",
            "userfaultfd: add UFFD_USER_MODE_ONLY",
            "committer date 2020-12-16 (5.11 merge window, after 5.10 on 2020-12-13); QEMU: "
            "'after upstream commit 37cd0575b8510159 - ... newer than 5.11'"),

    # ---- UFFDIO_API feature bits (include/uapi/linux/userfaultfd.h) ---------------
    Feature("feature_pagefault_flag_wp", "UFFD_FEATURE_PAGEFAULT_FLAG_WP", "5.7", "e06f1e1dd499",
            "userfaultfd: wp: enabled write protection in userfaultfd API",
            "the patch adds the bit to UFFD_API_FEATURES together with _UFFDIO_WRITEPROTECT; "
            "Fixes: e06f1e1dd499 in 2023/2024 mainline fixes; merged with the uffd-wp series "
            "(63b2d4174c4a, 'introduced in version v5.7'); QEMU's header sync carries it together "
            "with MREMAP_DONTUNMAP (5.7). ioctl_userfaultfd(2) says 'since Linux 5.10': that is "
            "the man page's error"),
    Feature("feature_event_fork", "UFFD_FEATURE_EVENT_FORK", "4.11", "893e26e61d04",
            "userfaultfd: non-cooperative: Add fork() event",
            "Fixes: tags; ioctl_userfaultfd(2): since 4.11"),
    Feature("feature_event_remap", "UFFD_FEATURE_EVENT_REMAP", "4.11", "72f87654c696",
            "userfaultfd: non-cooperative: add mremap() event",
            "stable-bot dependency lists; ioctl_userfaultfd(2): since 4.11"),
    Feature("feature_event_remove", "UFFD_FEATURE_EVENT_REMOVE", "4.11", "05ce77249d50",
            "userfaultfd: non-cooperative: add madvise() event for MADV_DONTNEED request",
            "stable-bot dependency lists (the event, first named EVENT_MADVDONTNEED, renamed "
            "to EVENT_REMOVE within 4.11); ioctl_userfaultfd(2): since 4.11"),
    Feature("feature_missing_hugetlbfs", "UFFD_FEATURE_MISSING_HUGETLBFS", "4.11", "163e11bc4f6e",
            "userfaultfd: hugetlbfs: UFFD_FEATURE_MISSING_HUGETLBFS",
            "stable-bot dependency list; patch 26/42 of the December 2016 series; "
            "ioctl_userfaultfd(2): since 4.11"),
    Feature("feature_missing_shmem", "UFFD_FEATURE_MISSING_SHMEM", "4.11", "47dd924508f5",
            "userfaultfd: hugetlbfs: UFFD_FEATURE_MISSING_SHMEM",
            "id from NVIDIA's linux-5.10 gitiles (mainline history below 5.10); "
            "ioctl_userfaultfd(2): since 4.11", "inferred"),
    Feature("feature_event_unmap", "UFFD_FEATURE_EVENT_UNMAP", "4.11", "897ab3e0c49e",
            "userfaultfd: non-cooperative: add event for memory unmaps",
            "stable-bot dependency lists; ioctl_userfaultfd(2): since 4.11"),
    Feature("feature_sigbus", "UFFD_FEATURE_SIGBUS", "4.14", "2d6d6f5a09a9",
            "mm: userfaultfd: add feature to request for a signal delivery",
            "man-pages patch: 'Documents the following commit: 2d6d6f5a09a9 ... available in "
            "Linux 4.14'"),
    Feature("feature_thread_id", "UFFD_FEATURE_THREAD_ID", "4.14", "9d4ac934829a",
            "(subject not seen)",
            "man-pages userfaultfd(2) source comment names the commit, 'Since Linux 4.14'; "
            "the subject was not found, only the id"),
    Feature("feature_minor_hugetlbfs", "UFFD_FEATURE_MINOR_HUGETLBFS", "5.13", "7677f7fd8be7",
            "userfaultfd: add minor fault registration mode",
            "Fixes: tags; git blame date 2021-05 (5.13 merge window); ioctl_userfaultfd(2): since 5.13"),
    Feature("feature_minor_shmem", "UFFD_FEATURE_MINOR_SHMEM", "5.14", "964ab0040ff9",
            "userfaultfd/shmem: advertise shmem minor fault support",
            "torvalds/linux master as pulled on 2021-07-02 (5.14 merge window); stable-bot "
            "dependency list; ioctl_userfaultfd(2): since 5.14"),
    Feature("feature_exact_address", "UFFD_FEATURE_EXACT_ADDRESS", "5.18", "824ddc601adc",
            "userfaultfd: provide unmasked address on page-fault",
            "'Commit 824ddc601adc ... was introduced' (a 2022 mainline fix); pushed with "
            "9457056ac426 (5.18); ioctl_userfaultfd(2): since 5.18"),
    Feature("feature_wp_hugetlbfs_shmem", "UFFD_FEATURE_WP_HUGETLBFS_SHMEM", "5.19", "b1f9e876862d",
            "mm/uffd: enable write protection for shmem & hugetlbfs",
            "Fixes: tags; syzbot bisection shows the commit dated 2022-05-13 (5.19 merge window); "
            "ioctl_userfaultfd(2): since 5.19"),
    Feature("feature_wp_unpopulated", "UFFD_FEATURE_WP_UNPOPULATED", "6.4", "2bad466cc9d9",
            "mm/uffd: UFFD_FEATURE_WP_UNPOPULATED",
            "torvalds/linux post-receive of 2023-04-28 (6.4 merge window); Fixes: tags; "
            "ioctl_userfaultfd(2): since 6.4"),
    Feature("feature_poison", "UFFD_FEATURE_POISON", "6.6", "fc71884a5f59",
            "mm: userfaultfd: add new UFFDIO_POISON ioctl",
            "Fixes: fc71884a5f59 in a 2025 mainline fix; ioctl_userfaultfd(2): since 6.6. The bit "
            "itself is advertised by the series' 'document and enable new UFFDIO_POISON feature' "
            "(only an mm-unstable id, f442ab50f5fb, was found)"),
    Feature("feature_wp_async", "UFFD_FEATURE_WP_ASYNC", "6.7", "d61ea1cb0095",
            "userfaultfd: UFFD_FEATURE_WP_ASYNC",
            "syzbot bisection names it with 52526ca7fdb9; ioctl_userfaultfd(2): since 6.7"),
    Feature("feature_move", "UFFD_FEATURE_MOVE", "6.8", "adef440691ba", "userfaultfd: UFFDIO_MOVE uABI",
            "Fixes: adef440691ba in several mainline fixes; the zeropage follow-up (2024-01) calls "
            "6.8's version the first; a uffd history table gives v6.8-rc1", "inferred"),

    # ---- userfaultfd ioctls and modes --------------------------------------------------
    Feature("uffdio_writeprotect", "UFFDIO_WRITEPROTECT on a private anonymous range", "5.7",
            "63b2d4174c4a", "userfaultfd: wp: add the writeprotect API to userfaultfd ioctl",
            "linux-yocto mirror of the commit (Link: 20200220, merged 2020-04); GSD advisory: "
            "'introduced in version v5.7 by commit 63b2d4174c4a'"),
    Feature("uffdio_continue", "UFFDIO_CONTINUE (the ioctl)", "5.13", "f619147104c8",
            "userfaultfd: add UFFDIO_CONTINUE ioctl",
            "Fixes: tags; git blame date 2021-05-04; pushed with 7677f7fd8be7"),
    Feature("uffdio_continue_shmem", "UFFDIO_CONTINUE on shmem", "5.14", "153132571f02",
            "userfaultfd/shmem: support UFFDIO_CONTINUE for shmem",
            "Fixes: 153132571f02 (2022); the patch lifts 5.13's refusal (EINVAL) of CONTINUE on "
            "any non-hugetlb VMA; same 5.14 series as 964ab0040ff9"),
    Feature("uffd_register_minor_shmem", "UFFDIO_REGISTER_MODE_MINOR on shmem", "5.14", "c949b097ef2e",
            "userfaultfd/shmem: support minor fault registration for shmem",
            "torvalds/linux master as pulled on 2021-07-02; stable-bot dependency list; "
            "ioctl_userfaultfd(2): 'Since Linux 5.14, compatibility with shmem ranges'"),
    Feature("uffd_register_wp_shmem", "UFFDIO_REGISTER_MODE_WP on shmem", "5.19", "b1f9e876862d",
            "mm/uffd: enable write protection for shmem & hugetlbfs",
            "as UFFD_FEATURE_WP_HUGETLBFS_SHMEM (one commit)"),
    Feature("uffdio_continue_mode_wp", "UFFDIO_CONTINUE_MODE_WP", "6.4", "0289184476c8",
            "mm: userfaultfd: add UFFDIO_CONTINUE_MODE_WP to install WP PTEs",
            "torvalds/linux post-receive of 2023-04-28 (6.4 merge window)"),
    Feature("uffdio_writeprotect_multi_vma", "UFFDIO_WRITEPROTECT over several registered VMAs",
            "6.4", "a1b92a3f1498", "mm/userfaultfd: support WP on multiple VMAs",
            "torvalds/linux post-receive of 2023-04-28; syzbot bisection"),
    Feature("uffdio_poison", "UFFDIO_POISON", "6.6", "fc71884a5f59", "mm: userfaultfd: add new UFFDIO_POISON ioctl",
            "as UFFD_FEATURE_POISON"),
    Feature("uffdio_move", "UFFDIO_MOVE", "6.8", "adef440691ba", "userfaultfd: UFFDIO_MOVE uABI",
            "as UFFD_FEATURE_MOVE", "inferred"),
    Feature("thpsize_shmem_enabled", "/sys/kernel/mm/transparent_hugepage/hugepages-<size>kB/shmem_enabled",
            "6.11", "4b98995530b7", "mm: shmem: add multi-size THP sysfs interface for anonymous shmem",
            "mainline ids from a mainline log that lists 4b98995530b7 and e7a2ab7b3bb5 ('add mTHP "
            "support for anonymous shmem', cited by later Fixes: tags) side by side; 61a57f1b1da9 and "
            "7fb1b252afb5 are their mm-tree ids (a July 2024 linux-mm thread); 6.12's "
            "source (Debian 6.12.118) has thpsize_shmem_enabled_store; 6.11 from the merge window",
            "inferred"),
    Feature("uffdio_move_zeropage", "UFFDIO_MOVE of a zero-page pte", "6.9", "ea4df6a5ea81",
            "userfaultfd: handle zeropage moves by UFFDIO_MOVE",
            "v2 posted 2024-01-31; the id appears, with stable neighbours, in two kernel.org "
            "push logs next to 6.9 mm work; present in 6.12", "inferred"),
    Feature("uffdio_unregister_own_ctx", "UFFDIO_UNREGISTER refuses a VMA of another context",
            "6.17", None, "userfaultfd: prevent unregistering VMAs through a different userfaultfd",
            "series v1 posted 2025-06-03; in mm-unstable on 2025-06-10, after the 6.16 merge "
            "window closed, next to 6.17 work ('mm: use per_vma lock for MADV_DONTNEED'); absent "
            "from Debian's 6.12.118 fs/userfaultfd.c. Only mm-unstable (rebased) ids were found",
            "inferred"),

    # ---- /proc/pid/pagemap (fs/proc/task_mmu.c, include/uapi/linux/fs.h) ---------------
    Feature("pm_uffd_wp", "PM_UFFD_WP (pagemap bit 57)", "5.14", "fb8e37f35a2f",
            "mm/pagemap: export uffd-wp protection information",
            "Fixes: fb8e37f35a2fe1 in a stable backport; man-pages patch: 'Bit 57 was introduced "
            "in Linux v5.14 ... (commit fb8e37f35a2f...)'; torvalds/linux master pulled 2021-07-02"),
    Feature("pagemap_scan", "ioctl(PAGEMAP_SCAN)", "6.7", "52526ca7fdb9",
            "fs/proc/task_mmu: implement IOCTL to get and optionally clear info about PTEs",
            "Fixes: tags; a 2026 fix note: 'Introduced by 52526ca7fdb9 ... (v6.7-rc1)'"),
    Feature("page_is_guard", "PAGEMAP_SCAN category PAGE_IS_GUARD", "6.16", "a516403787e0",
            "fs/proc: extend the PAGEMAP_SCAN ioctl to report guard regions",
            "committer date 2025-05-12 (mm-stable; git.kernel.dk mirror), i.e. merged after 6.15 "
            "(2025-05-25); perf's uapi sync picks it up with 6.16's statx change; absent in 6.12",
            "inferred"),
    Feature("pm_guard_region", "PM_GUARD_REGION (pagemap bit 58)", "6.15", "8e2f2aeb8b48",
            "fs/proc/task_mmu: add guard region bit to pagemap",
            "id from later mainline commit messages; series posted 2025-02-21 (cover.1740139449); "
            "CRIU's MADV_GUARD_INSTALL support (reviewed 2025-04-29, during 6.15-rc) reads it from "
            "mainline; absent in 6.12; the 6.18.44 host sets it", "inferred"),

    # ---- FOLL_LONGTERM and ZONE_MOVABLE / CMA (behaviour, not an interface) --------------
    Feature("longterm_pin_movable", "pin_user_pages(FOLL_LONGTERM) migrates a ZONE_MOVABLE page "
            "out before pinning", "5.13", "d1e153fea2a8", "mm/gup: migrate pinned pages out of movable zone",
            "linux-next/mainline merge logs list it with the rest of Pavel Tatashin's v11 series in the "
            "akpm batch of the 5.13 merge window (beside 'Merge tag ...-5.13-rc1' pulls); later Fixes: "
            "d1e153fea2a8 tags; present (folio_is_longterm_pinnable tests folio_is_zone_movable) in "
            "the 6.1.192 and 6.12.118 Debian sources"),
    Feature("longterm_pin_fails", "pin_user_pages(FOLL_LONGTERM) fails with ENOMEM when a CMA page "
            "cannot be migrated (before: pinned where it is)", "5.13", "f0f4463837da",
            "mm/gup: return an error on migration failure",
            "same 5.13 merge-window batch; the 5.12.5 stable review mail quotes its upstream id and the "
            "removed 'Do get_user_pages without migration' fallback; 5.10.y took it as 552253fbb100 "
            "(linux-stable-rc push tagged 5.10.38-rc1); 6.1.192 and 6.12.118 return -ENOMEM"),

    # ---- system calls the engine does not offer -----------------------------------------
    Feature("memfd_secret", "memfd_secret(2)", "5.14", "1507f51255c9",
            "mm: introduce memfd_secret system call to create \"secret\" memory areas",
            "Fixes: tags; mingo/tip pull of torvalds/linux on 2021-07-12 (5.14 merge window)",
            modelled=False),
    Feature("process_madvise", "process_madvise(2)", "5.10", "ecb8ac8b1f14",
            "mm/madvise: introduce process_madvise() syscall: an external memory hinting API",
            "Fixes: tags with 'Cc: stable # 5.10+'; process_madvise(2): 'first appeared in Linux 5.10'",
            modelled=False),
)

# Not a monotonic gate, so not a row: UFFDIO_API stopped refusing unknown
# feature bits (and a wrong api) in 914eedcb9ba0 "userfaultfd: don't fail on
# unrecognized features" (mm-stable July 2022, so 6.0) until 2ff559f31a5d
# (after 6.3-rc7, so 6.3; backported to stable). Mainline 6.0-6.2 accept,
# silently, bits they do not support; the engine refuses them in every
# version, as those stable kernels do.
