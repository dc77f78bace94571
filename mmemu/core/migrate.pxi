# NUMA nodes, page migration and NUMA-hinting faults: mm/migrate.c
# (do_pages_move, migrate_pages, remove_migration_pte), mm/rmap.c
# (try_to_migrate_one), mm/mempolicy.c (do_mbind's queue), mm/mprotect.c
# (change_prot_numa) and mm/memory.c (do_numa_page). Semantics: semantics.md
# section 14; scenario S77, B15 (S57 b, c).
#
# A migration runs in two steps, as migrate_pages_batch does: every page of a
# batch is unmapped (its ptes become migration entries), then each is copied
# and its entries replaced (or, on failure, put back). Between the two the
# scheduler may run other threads (SP_MIGRATION_UNMAPPED); a fault on a
# migration entry waits there until the entry is gone (SP_MIGRATION_WAIT).

cdef enum:
    CORE_EAGAIN = 11
    CORE_EACCES = 13
    CORE_ENODEV = 19
    MIG_RC_NONE = 1             # a queued page not yet migrated


ctypedef struct mig_page_t:
    int64_t old                 # the isolated folio
    int64_t new                 # its target frame, -1 none yet
    int32_t mm                  # where the caller found it (the anon rmap walk starts there)
    int32_t rc                  # 0 migrated, MIG_RC_NONE pending, or a negative errno
    uint64_t va


ctypedef struct mig_map_t:      # one pte turned into a migration entry
    int64_t page                # index into the batch
    int32_t mm
    int32_t pad
    uint64_t va


# ---- nodes -----------------------------------------------------------------

cdef inline int32_t node_of(engine_t *e, int64_t pfn) noexcept nogil:
    # page_to_nid(): nodes own contiguous pfn ranges, so no per-frame field.
    if e.nnodes <= 1:
        return 0
    return <int32_t>(pfn // e.node_span)


cdef inline int32_t cpu_node(engine_t *e, int cpu) noexcept nogil:
    # cpu_to_node(): CPUs spread evenly over the nodes, in order.
    if e.nnodes <= 1:
        return 0
    return <int32_t>((<int64_t>cpu * e.nnodes) // e.ncpus)


cdef inline int64_t node_end(engine_t *e, int32_t n) noexcept nogil:
    cdef int64_t end = (n + 1) * e.node_span
    return end if end < e.nframes else e.nframes


# Free frames live in per-node, per-zone lists: core/zones.pxi.


cdef int64_t frame_alloc_on(engine_t *e, int32_t node) noexcept nogil:
    """alloc_migration_target() with __GFP_THISNODE: a frame of `node` or -1
    (node < 0: any, along the nodes from e.alloc_pref_node)."""
    cdef int64_t pfn
    e.alloc_node = node if e.nnodes > 1 else -1
    pfn = frame_alloc(e)
    e.alloc_node = -1
    return pfn


# ---- migration entries -----------------------------------------------------

cdef inline uint64_t swp_type_of(uint64_t pte) noexcept nogil:
    return (pte & SWP_TYPE_MASK) >> SWP_TYPE_SHIFT


cdef inline bint is_migration_entry(uint64_t pte) noexcept nogil:
    cdef uint64_t t = swp_type_of(pte)
    return pte != 0 and not (pte & PTE_PRESENT) and SWP_MIGRATION_READ <= t <= SWP_MIGRATION_WRITE


cdef inline uint64_t make_migration_entry(int64_t pfn, uint64_t kind) noexcept nogil:
    return (kind << SWP_TYPE_SHIFT) | (<uint64_t>pfn << SWP_OFFSET_SHIFT)


cdef inline uint64_t migration_entry_wrprotect(engine_t *e, uint64_t pte) noexcept nogil:
    """change_pte_range() / hugetlb_change_protection() on a migration entry
    (mprotect, UFFDIO_WRITEPROTECT): a writable one becomes readable -
    readable_exclusive for an anon page (5.19+) - keeping its swp bits."""
    if swp_type_of(pte) != SWP_MIGRATION_WRITE:
        return pte
    return (pte & ~SWP_TYPE_MASK) | ((SWP_MIGRATION_RX if e.pol.anon_exclusive and
                                      e.fflags[folio_of(e, swp_offset(pte))] & PG_ANON
                                      else SWP_MIGRATION_READ) << SWP_TYPE_SHIFT)


cdef inline bint vm_page_prot_writable(engine_t *e, uint64_t flags) noexcept nogil:
    # vm_page_prot has write only for a shared writable VMA without
    # writenotify (shmem: no soft-dirty tracking and, before 6.2, uffd-wp
    # does not count): the root of B15.
    return (flags & (VM_SHARED | VM_WRITE)) == (VM_SHARED | VM_WRITE) \
        and (flags & (VM_READ | VM_WRITE | VM_EXEC)) != 0 and not flags_want_writenotify(e, flags)


cdef int migrate_unmap_pte(engine_t *e, mm_t *mm, uint64_t va, int64_t pfn) noexcept nogil:
    """try_to_migrate_one() for one pte: 1 when it became a migration entry,
    0 when the page stays mapped (an exclusive anon page that may be
    pinned cannot be made shared, 5.19+ 6c287605fd56)."""
    cdef uint64_t *ptep = pte_offset(e, mm, va, False)
    cdef uint64_t pte, kind
    cdef bint anon_exclusive
    if ptep == NULL or not (ptep[0] & PTE_PRESENT) or <int64_t>pte_pfn(ptep[0]) != pfn:
        return 0
    pte = ptep[0]
    anon_exclusive = e.pol.anon_exclusive != 0 and \
        (e.fflags[pfn] & (PG_ANON | PG_ANON_EXCLUSIVE)) == (PG_ANON | PG_ANON_EXCLUSIVE)
    # ptep_clear_flush(): no CPU writes the old page once the entry is in.
    ptep[0] = 0
    tlb_flush_page(e, mm.id, va)
    if pte & PTE_DIRTY:
        e.fflags[folio_of(e, pfn)] |= PG_DIRTY     # the dirty state moves to the folio
    if anon_exclusive:
        # folio_try_share_anon_rmap_pte(): refused for a maybe-pinned folio
        # (folio_maybe_dma_pinned: the bias on a small page's refcount, a
        # large folio's exact pincount).
        if folio_maybe_dma_pinned(e, pfn):
            ptep[0] = pte
            return 0
        e.fflags[pfn] &= ~PG_ANON_EXCLUSIVE
    # Writable if the pte was; readable_exclusive for a PAE page (5.19+);
    # else readable. Soft-dirty and uffd-wp ride along in the swp bits.
    if pte & PTE_WRITE:
        kind = SWP_MIGRATION_WRITE
    elif anon_exclusive:
        kind = SWP_MIGRATION_RX
    else:
        kind = SWP_MIGRATION_READ
    ptep[0] = make_migration_entry(pfn, kind) | (pte & (PTE_SOFT_DIRTY | PTE_UFFD_WP))
    e.mapcount[pfn] -= 1
    if e.fflags[pfn] & PG_ANON:
        mm.rss_anon -= 1
    put_page(e, pfn, 1)                     # the mapping's reference; the isolation one stays
    return 1


cdef void migrate_restore_pte(engine_t *e, mm_t *mm, uint64_t va, int64_t old, int64_t new) noexcept nogil:
    """remove_migration_pte(): the entry for `old` at va maps `new` (which is
    `old` itself when the migration failed). An entry zapped meanwhile
    (MADV_DONTNEED) is left alone."""
    cdef uint64_t *ptep = pte_offset(e, mm, va, False)
    cdef uint64_t ent, kind, pte
    cdef int32_t vi
    cdef mm_vma_t *vma
    if ptep == NULL or not is_migration_entry(ptep[0]) or swp_offset(ptep[0]) != old:
        return
    ent = ptep[0]
    vi = find_vma(mm, va)
    if vi < 0:
        ptep[0] = 0
        return
    vma = &mm.vmas[vi]
    kind = swp_type_of(ent)
    # A new pte from vm_page_prot; writable only if the entry was (and the
    # VMA still is: maybe_mkwrite, 5.x); soft-dirty from the entry; the
    # dirty state from the folio.
    pte = pfn_pte(new) | PTE_PRESENT | PTE_YOUNG | vma_prot_bits(vma.flags)
    if vm_page_prot_writable(e, vma.flags):
        pte |= PTE_WRITE
    if ent & PTE_SOFT_DIRTY:
        pte |= PTE_SOFT_DIRTY
    if e.fflags[folio_of(e, new)] & PG_DIRTY:
        pte |= PTE_DIRTY
    if kind == SWP_MIGRATION_WRITE:
        if vma.flags & VM_WRITE:
            pte |= PTE_WRITE
    elif ent & PTE_UFFD_WP:
        # pte_mkuffd_wp() write-protects since 6.2; before, a shmem pte keeps
        # vm_page_prot's write next to its uffd-wp bit: B15.
        pte |= PTE_UFFD_WP
        if e.pol.uffd_wp_writenotify:
            pte &= ~PTE_WRITE
    if e.fflags[new] & PG_ANON:
        # RMAP_EXCLUSIVE unless the entry was merely readable (5.19+).
        if e.pol.anon_exclusive and kind != SWP_MIGRATION_READ:
            e.fflags[new] |= PG_ANON_EXCLUSIVE
        mm.rss_anon += 1
    e.mapcount[new] += 1
    get_page(e, new, 1)                     # a large folio's references are its head's
    ptep[0] = pte


cdef int cmp_mig_key(const void *a, const void *b) noexcept nogil:
    cdef int64_t x = (<const int64_t *>a)[0], y = (<const int64_t *>b)[0]
    return (x > y) - (x < y)


cdef void migrate_restore_copies(engine_t *e, mig_page_t *pages, uint8_t *skip, int64_t n) noexcept nogil:
    """remove_migration_ptes()'s rmap walk for the entries naming a page of
    the batch that were not recorded at the unmap: a fork copied them into
    a child, or an mremap moved them (the migration holds no mmap_lock
    between unmap and remap). One walk of every mm's VMAs that can map such
    a page (its file's, or any with an anon_vma) serves the whole batch:
    the old pfns, sorted, are looked up by bisection (a walk per page was
    pages x mapped space)."""
    cdef int32_t mi, vi
    cdef mm_t *m
    cdef mm_vma_t *v
    cdef uint64_t va, stop, off
    cdef uint64_t *t
    cdef int64_t i, i0, i1, k, nk = 0, lo, hi, mid, old, target
    cdef int64_t *keys = <int64_t *>malloc((2 * n + 2) * sizeof(int64_t))    # (old, k) pairs
    # Without that host memory each entry is looked for in the batch itself
    # (slower, but no entry may stay: its accesses would wait for ever).
    if keys != NULL:
        for k in range(n):
            if not skip[k]:
                keys[2 * nk] = pages[k].old
                keys[2 * nk + 1] = k
                nk += 1
        qsort(keys, nk, 2 * sizeof(int64_t), cmp_mig_key)
    for mi in range(e.nmm):
        m = &e.mms[mi]
        if not m.alive:
            continue
        for vi in range(m.nvma):
            v = &m.vmas[vi]
            if v.flags & VM_HUGETLB or not (v.file or v.anon_vma):
                continue
            va = v.start
            while va < v.end:
                t = leaf_or_skip(e, m.pgd, va, &stop)
                if t == NULL:
                    va = stop
                    continue
                stop = block_end(va, v.end)
                i0 = <int64_t>((va >> MM_PAGE_SHIFT) & 511)
                i1 = i0 + <int64_t>((stop - va) >> MM_PAGE_SHIFT)
                for i in range(i0, i1):
                    if not is_migration_entry(t[i]):
                        continue
                    off = swp_offset(t[i])
                    if keys == NULL:
                        k = 0
                        while k < n and (skip[k] or <uint64_t>pages[k].old != off):
                            k += 1
                        if k == n:
                            continue
                    else:
                        lo, hi = 0, nk
                        while lo < hi:
                            mid = (lo + hi) >> 1
                            if <uint64_t>keys[2 * mid] < off:
                                lo = mid + 1
                            else:
                                hi = mid
                        if lo == nk or <uint64_t>keys[2 * lo] != off:
                            continue
                        k = keys[2 * lo + 1]
                    old = pages[k].old
                    target = pages[k].new if pages[k].rc == 0 else old
                    if (e.fflags[target] & PG_FILE and v.file != e.mapping[target]) \
                            or (not (e.fflags[target] & PG_FILE) and not v.anon_vma):
                        continue
                    migrate_restore_pte(e, m, va + (<uint64_t>(i - i0) << MM_PAGE_SHIFT), old, target)
                va = stop
    free(keys)


cdef int rmap_add(mig_map_t **maps, int64_t *n, int64_t *cap, int64_t page, int32_t mm,
                  uint64_t va) noexcept nogil:
    if array_grow(<void **>maps, cap, n[0] + 1, sizeof(mig_map_t), 16, False) < 0:
        return -1
    maps[0][n[0]].page = page
    maps[0][n[0]].mm = mm
    maps[0][n[0]].va = va
    n[0] += 1
    return 0


cdef int rmap_collect(engine_t *e, mig_page_t *pg, int64_t page, mig_map_t **maps, int64_t *n,
                      int64_t *cap) noexcept nogil:
    """The ptes mapping pg.old (rmap_walk): a page-cache folio through each
    VMA of its file at its index; an anon one at the address it was found,
    then, if mapcount says there are more (fork, MPOL_MF_MOVE_ALL), by a walk
    of every mm's anon VMAs. -1 if the host is out of memory."""
    cdef int64_t pfn = pg.old, found = 0, i, i0, i1
    cdef int32_t mi, vi
    cdef mm_t *m
    cdef mm_vma_t *v
    cdef uint64_t va, index, stop
    cdef uint64_t *ptep
    cdef uint64_t *t
    if e.fflags[pfn] & PG_FILE:
        index = e.index[pfn]
        for mi in range(e.nmm):
            m = &e.mms[mi]
            if not m.alive:
                continue
            for vi in range(m.nvma):
                v = &m.vmas[vi]
                if v.file != e.mapping[pfn] or index < v.pgoff \
                        or index >= v.pgoff + ((v.end - v.start) >> MM_PAGE_SHIFT):
                    continue
                va = v.start + ((index - v.pgoff) << MM_PAGE_SHIFT)
                ptep = pte_offset(e, m, va, False)
                if ptep != NULL and ptep[0] & PTE_PRESENT and not (ptep[0] & PTE_SPECIAL) \
                        and <int64_t>pte_pfn(ptep[0]) == pfn:
                    if rmap_add(maps, n, cap, page, m.id, va) < 0:
                        return -1
        return 0
    m = &e.mms[pg.mm]
    ptep = pte_offset(e, m, pg.va, False)
    if ptep != NULL and ptep[0] & PTE_PRESENT and <int64_t>pte_pfn(ptep[0]) == pfn:
        if rmap_add(maps, n, cap, page, m.id, pg.va) < 0:
            return -1
        found = 1
    if found >= e.mapcount[pfn]:
        return 0
    for mi in range(e.nmm):
        m = &e.mms[mi]
        if not m.alive:
            continue
        for vi in range(m.nvma):
            v = &m.vmas[vi]
            if not v.anon_vma:
                continue
            va = v.start
            while va < v.end:
                t = leaf_or_skip(e, m.pgd, va, &stop)
                if t == NULL:
                    va = stop
                    continue
                stop = block_end(va, v.end)
                i0 = <int64_t>((va >> MM_PAGE_SHIFT) & 511)
                i1 = i0 + <int64_t>((stop - va) >> MM_PAGE_SHIFT)
                for i in range(i0, i1):
                    if t[i] & PTE_PRESENT and not (t[i] & PTE_SPECIAL) and <int64_t>pte_pfn(t[i]) == pfn \
                            and not (mi == pg.mm and va + (<uint64_t>(i - i0) << MM_PAGE_SHIFT) == pg.va):
                        if rmap_add(maps, n, cap, page, m.id, va + (<uint64_t>(i - i0) << MM_PAGE_SHIFT)) < 0:
                            return -1
                va = stop
    return 0


cdef int migrate_move(engine_t *e, int64_t old, int64_t new) noexcept nogil:
    """move_to_new_folio(): after the unmap the folio may hold only the
    isolation reference and its cache's (folio_migrate_mapping's expected
    count); anything else (a GUP reference or pin, a per-CPU LRU batch) is
    -EAGAIN. The contents and the folio's state move to `new`."""
    cdef int32_t cache_refs = 1 if e.fflags[old] & (PG_SWAPCACHE | PG_FILE) else 0
    if e.mapcount[old] != 0 or e.refcount[old] != 1 + cache_refs:
        return -CORE_EAGAIN
    migrate_folio_state(e, old, new, 1, PG_ANON | PG_DIRTY | PG_UPTODATE | PG_SWAPCACHE | PG_FILE
                        | PG_LAZYFREE | PG_KSM | PG_LRU | PG_BYTES)
    return 0


cdef void migrate_folio_state(engine_t *e, int64_t old, int64_t new, int64_t nr, uint16_t moved) noexcept nogil:
    """folio_migrate_mapping() + folio_migrate_flags() once the move may go
    ahead: each of the nr pages' byte store slot changes hands (no copy: the
    old folio is freed) with the `moved` flags; the head's mapping and index,
    its swapcache or page-cache slot and the cache's reference follow."""
    cdef uint16_t ff = e.fflags[old]
    cdef int32_t cache_refs = 1 if ff & (PG_SWAPCACHE | PG_FILE) else 0
    cdef int64_t p
    cdef uint64_t *cs
    for p in range(nr):
        e.version[new + p] = e.version[old + p]
        e.version[old + p] = 0
        e.fflags[new + p] |= e.fflags[old + p] & moved
        e.fflags[old + p] &= ~moved
    e.mapping[new] = e.mapping[old]
    e.index[new] = e.index[old]
    if ff & PG_SWAPCACHE:
        e.swap_cache[e.index[old]] = new + 1
    if ff & PG_FILE:
        cs = cache_slot(e, file_of(e, e.mapping[old]), e.index[old], False)
        if cs != NULL:
            cs[0] = pfn_pte(new) | PTE_PRESENT
    e.mapping[old] = 0
    e.index[old] = 0
    e.refcount[new] += cache_refs
    e.refcount[old] -= cache_refs


cdef int64_t migrate_batch(engine_t *e, mig_page_t *pages, int64_t n, int32_t node, int32_t caller,
                           int *nomem) noexcept nogil:
    """migrate_pages() of isolated folios to `node`: each page's rc becomes 0
    or a negative errno; returns how many failed. *nomem when a target frame
    could not be had (the rest is put back, and the call fails ENOMEM)."""
    cdef mig_map_t *maps = NULL
    cdef int64_t nmaps = 0, cap = 0, k, j, j0, failed = 0, target, copies
    cdef bint local = True
    cdef mig_page_t *pg
    cdef mm_t *m
    cdef int64_t *first = <int64_t *>malloc((n + 1) * sizeof(int64_t))
    cdef uint8_t *huge = <uint8_t *>malloc(n + 1)
    if first == NULL or huge == NULL:
        free(first)
        free(huge)
        nomem[0] = 1
        for k in range(n):
            pages[k].rc = -CORE_ENOMEM
            e.fflags[pages[k].old] &= ~PG_ISOLATED
            put_page(e, pages[k].old, 1)
        return n
    # migrate_hugetlbs() first, one folio at a time; -ENOMEM ends the call
    # (the folios after it are put back below, as the rest are).
    # Large anon folios (THP, mTHP) likewise, each alone (large_migrate_folio).
    for k in range(n):
        pg = &pages[k]
        huge[k] = (pfn_is_hugetlb(e, pg.old) or folio_is_large_anon(e, pg.old)) and not nomem[0]
        if huge[k]:
            if pfn_is_hugetlb(e, pg.old):
                if hugetlb_migrate_folio(e, pg, node, caller) == -CORE_ENOMEM:
                    nomem[0] = 1
            elif large_migrate_folio(e, pg, node, caller, nomem) == -CORE_ENOMEM:
                nomem[0] = 1
            if pg.rc != 0:
                failed += 1
    # 1. migrate_folio_unmap(): a target frame, then every pte an entry.
    for k in range(n):
        pg = &pages[k]
        first[k] = nmaps
        if huge[k]:
            continue                        # done above
        if nomem[0]:
            pg.rc = -CORE_ENOMEM
            continue
        pg.new = frame_alloc_on(e, node)
        if pg.new < 0 or rmap_collect(e, pg, k, &maps, &nmaps, &cap) < 0:
            nomem[0] = 1
            pg.rc = -CORE_ENOMEM
            nmaps = first[k]
            continue
        for j in range(first[k], nmaps):
            m = &e.mms[maps[j].mm]
            if maps[j].mm != caller:
                local = False
            if not migrate_unmap_pte(e, m, maps[j].va, pg.old):
                pg.rc = -CORE_EAGAIN        # try_to_migrate() left it mapped
        if pg.rc == MIG_RC_NONE and e.mapcount[pg.old] != 0:
            pg.rc = -CORE_EAGAIN
    first[n] = nmaps
    copies = e.mig_copies
    if nmaps and local:
        # Between unmap and move, without mmap_lock (move_pages and mbind
        # drop it before migrate_pages): a fault on an entry waits; a fork
        # copies the entries (found again by migrate_restore_copies), a
        # munmap zaps them.
        sched_point(e, SP_MIGRATION_UNMAPPED, caller, pages[0].va, <uint64_t>node)
    # 2. move_to_new_folio() + remove_migration_ptes().
    for k in range(n):
        pg = &pages[k]
        if huge[k]:
            continue                        # a hugetlb folio, done above
        if pg.rc == MIG_RC_NONE:
            pg.rc = migrate_move(e, pg.old, pg.new)
        target = pg.new if pg.rc == 0 else pg.old
        for j in range(first[k], first[k + 1]):
            migrate_restore_pte(e, &e.mms[maps[j].mm], maps[j].va, pg.old, target)
    if e.mig_copies != copies:
        migrate_restore_copies(e, pages, huge, n)      # what a fork or mremap did meanwhile
    # 3. Put back: the old folios (freed when migrated), the new ones' allocation references.
    for k in range(n):
        pg = &pages[k]
        if huge[k]:
            continue
        if pg.rc != 0:
            failed += 1
            if pg.new >= 0:
                put_page(e, pg.new, 1)
                pg.new = -1
        else:
            e.fflags[pg.new] &= ~PG_ISOLATED
            put_page(e, pg.new, 1)          # the allocation's reference: putback
        e.fflags[pg.old] &= ~PG_ISOLATED
        put_page(e, pg.old, 1)              # the isolation reference (frees a migrated folio)
    free(maps)
    free(first)
    free(huge)
    return failed


# ---- large folios: PMD-mapped THPs and mTHPs ---------------------------------
#
# A THP migrates whole (ARCH_ENABLE_THP_MIGRATION, x86 since 4.14): its PMD
# mapping becomes a PMD migration entry - a PMD_HUGE slot whose table holds,
# for each base page, a migration entry naming that page, as a hugetlb one
# does (core/hugetlb.pxi) - and its pte mappings, if any, pte migration
# entries. An mTHP (a pte-mapped large folio) migrates whole too (6.12).

cdef inline bint folio_is_large_anon(engine_t *e, int64_t head) noexcept nogil:
    # A THP or mTHP migrate_batch moves as one (not hugetlb, not the huge zero page).
    return (e.fflags[head] & (PG_HEAD | PG_ANON)) == (PG_HEAD | PG_ANON) and not pfn_is_hugetlb(e, head) \
        and not is_huge_zero_pfn(e, head)


cdef inline bint pmd_is_thp_migration(engine_t *e, int32_t ent) noexcept nogil:
    """A PMD migration entry of a THP (is_pmd_migration_entry), not hugetlb's."""
    cdef uint64_t pte
    if not pmd_trans_huge(ent):
        return False
    pte = pmd_leaf_pte0(e, ent)         # entry 0 alone: never fills an unexpanded leaf
    return is_migration_entry(pte) and not pfn_is_hugetlb(e, swp_offset(pte))


cdef bint folio_likely_mapped_shared(engine_t *e, int64_t head) noexcept nogil:
    """folio_likely_mapped_shared() of a large anon folio (6.12
    include/linux/mm.h): mapped more than once, and either PMD-mapped, or
    mapped more often than it has pages, or its first page mapped twice."""
    cdef int64_t total = folio_mapcount_total(e, head)
    if total <= 1:
        return False
    if entire_mapcount(e, head)[0] or total > folio_nr(e, head):
        return True
    return e.mapcount[head] > 1


cdef int set_pmd_migration_entry(engine_t *e, mm_t *mm, int32_t *slot, uint64_t haddr,
                                 int64_t head) noexcept nogil:
    """set_pmd_migration_entry() (mm/huge_memory.c, 6.12): 1 when the PMD
    leaf became a migration entry, 0 when an exclusive anon THP that may be
    pinned stays mapped (folio_try_share_anon_rmap_pmd). Writable if the
    leaf was, readable_exclusive for an exclusive anon THP (5.19+), else
    readable; soft-dirty and uffd-wp ride along (pmd_swp_mksoft_dirty,
    pmd_swp_mkuffd_wp); the leaf's dirty goes to the folio."""
    cdef uint64_t *t = pmd_leaf_table(e, slot[0])
    cdef uint64_t pte0 = t[0], acc = 0, kind, bits
    cdef int64_t i
    cdef bint excl = e.pol.anon_exclusive != 0 and \
        (e.fflags[head] & (PG_ANON | PG_ANON_EXCLUSIVE)) == (PG_ANON | PG_ANON_EXCLUSIVE)
    if excl:
        if folio_maybe_dma_pinned(e, head):
            return 0
        folio_set_flags(e, head, 0, PG_ANON_EXCLUSIVE)
    pmd_flush(e, mm, haddr)             # pmdp_invalidate
    for i in range(HPAGE_PMD_NR):
        acc |= t[i]
    if acc & PTE_DIRTY:
        e.fflags[head] |= PG_DIRTY      # folio_mark_dirty
    if pte0 & PTE_WRITE:
        kind = SWP_MIGRATION_WRITE
    elif excl:
        kind = SWP_MIGRATION_RX
    else:
        kind = SWP_MIGRATION_READ
    bits = pte0 & (PTE_SOFT_DIRTY | PTE_UFFD_WP)
    for i in range(HPAGE_PMD_NR):
        t[i] = make_migration_entry(head + i, kind) | bits
    entire_mapcount(e, head)[0] -= 1    # folio_remove_rmap_pmd
    mm.rss_anon -= HPAGE_PMD_NR
    put_page(e, head, 1)
    return 1


cdef void remove_migration_pmd(engine_t *e, mm_t *mm, int32_t *slot, uint64_t haddr,
                               int64_t target) noexcept nogil:
    """remove_migration_pmd() (6.12): the entry maps the THP at `target`
    (the new folio, or the old one when the migration failed) from
    vm_page_prot: soft-dirty and uffd-wp from the entry, write from a
    writable entry (if the VMA still may be written), dirty from the
    folio; an anon folio mapped from an entry that was not merely readable
    is exclusive (RMAP_EXCLUSIVE). A VMA gone meanwhile leaves nothing."""
    cdef uint64_t *t = pmd_leaf_table(e, slot[0])
    cdef uint64_t ent = t[0], kind = swp_type_of(ent), pte
    cdef int32_t vi = find_vma(mm, haddr)
    cdef mm_vma_t *vma
    cdef int64_t i
    if vi < 0:
        withdraw_pmd_leaf(e, mm, slot)
        return
    vma = &mm.vmas[vi]
    pte = pfn_pte(target) | PTE_PRESENT | PTE_YOUNG | vma_prot_bits(vma.flags)
    if ent & PTE_SOFT_DIRTY:
        pte |= PTE_SOFT_DIRTY
    if e.fflags[target] & PG_DIRTY:
        pte |= PTE_DIRTY
    if kind == SWP_MIGRATION_WRITE:
        if vma.flags & VM_WRITE:
            pte |= PTE_WRITE
    elif ent & PTE_UFFD_WP:
        pte |= PTE_UFFD_WP
    for i in range(HPAGE_PMD_NR):
        t[i] = pte + pfn_pte(i)
    if e.pol.anon_exclusive and kind != SWP_MIGRATION_READ:
        folio_set_flags(e, target, PG_ANON_EXCLUSIVE, 0)
    entire_mapcount(e, target)[0] += 1
    e.refcount[target] += 1
    mm.rss_anon += HPAGE_PMD_NR


cdef int64_t large_rmap_block(engine_t *e, mm_t *m, uint64_t blk, int64_t old, int64_t nr, bint restore,
                              int64_t target, int32_t caller, bint *local, int64_t *done) noexcept nogil:
    """try_to_migrate() / remove_migration_ptes() over one 2 MiB block of an
    mm: a PMD leaf of the THP at old becomes a PMD migration entry, or a
    PMD migration entry naming it maps `target` again; else each pte
    mapping (or migration entry naming) a page of the folio. Returns the
    mappings left in place (refused: maybe pinned); *done counts the
    entries made or replaced."""
    cdef int32_t *slot = pmd_slot(e, m, blk, False)
    cdef uint64_t *t
    cdef uint64_t pte
    cdef int64_t i, pfn, left = 0
    if slot == NULL or slot[0] == 0:
        return 0
    t = pmd_leaf_table(e, slot[0])
    if pmd_trans_huge(slot[0]):
        pte = t[0]
        if not restore:
            if pte & PTE_PRESENT and <int64_t>pte_pfn(pte) == old and nr == HPAGE_PMD_NR:
                if m.id != caller:
                    local[0] = False
                if not set_pmd_migration_entry(e, m, slot, blk, old):
                    left += 1
                else:
                    done[0] += 1
        elif is_migration_entry(pte) and swp_offset(pte) == old:
            remove_migration_pmd(e, m, slot, blk, target)
            done[0] += 1
        return left
    for i in range(HPAGE_PMD_NR):
        pte = t[i]
        if not restore:
            if pte & PTE_PRESENT and not (pte & PTE_SPECIAL) and in_folio(<int64_t>pte_pfn(pte), old, nr):
                if m.id != caller:
                    local[0] = False
                if not migrate_unmap_pte(e, m, blk + (<uint64_t>i << MM_PAGE_SHIFT), <int64_t>pte_pfn(pte)):
                    left += 1
                else:
                    done[0] += 1
        elif is_migration_entry(pte) and in_folio(swp_offset(pte), old, nr):
            pfn = swp_offset(pte)
            migrate_restore_pte(e, m, blk + (<uint64_t>i << MM_PAGE_SHIFT), pfn, target + (pfn - old))
            done[0] += 1
    return left


cdef int64_t large_rmap_walk(engine_t *e, mig_page_t *pg, int64_t nr, bint restore, bint everywhere,
                             int64_t target, int32_t caller, bint *local, bint *went,
                             int64_t *done) noexcept nogil:
    """The rmap walk of an anon large folio: the 2 MiB around where the
    caller found it, then - `everywhere`, or while some mapping is left
    (unmapping) or fewer entries than were made are found (remapping: an
    mremap in the window moved them) - every block of every mm's anon VMAs
    (fork shares the folio); *went says whether it did, *done counts."""
    cdef int32_t mi, vi
    cdef mm_t *m
    cdef mm_vma_t *v
    cdef uint64_t blk
    cdef int64_t left
    cdef int64_t want = done[0]
    done[0] = 0
    left = large_rmap_block(e, &e.mms[pg.mm], pg.va & ~(<uint64_t>PMD_SPAN - 1), pg.old, nr, restore,
                            target, caller, local, done)
    went[0] = False
    if not everywhere and (done[0] >= want if restore else folio_mapcount_total(e, pg.old) == left):
        return left
    went[0] = True
    left = 0
    for mi in range(e.nmm):
        m = &e.mms[mi]
        if not m.alive:
            continue
        for vi in range(m.nvma):
            v = &m.vmas[vi]
            if not v.anon_vma or v.flags & VM_HUGETLB:
                continue
            blk = v.start & ~(<uint64_t>PMD_SPAN - 1)
            while blk < v.end:
                left += large_rmap_block(e, m, blk, pg.old, nr, restore, target, caller, local, done)
                blk += PMD_SPAN
    return left


cdef void migrate_large_state(engine_t *e, int64_t old, int64_t new, int64_t nr) noexcept nogil:
    """folio_migrate_flags() + the copy for an anon large folio: each page's
    content (version or byte slot) and page flags change hands; `mapping`
    and the tails' `index`, which hold an mTHP's order, pincount and
    deferred flag, stay (the new folio has its own). A folio in the
    swapcache hands over its slots as __folio_migrate_mapping() does (6.12):
    the new head takes folio->swap, each slot names the new page, and the
    cache's reference per page moves with them."""
    cdef uint16_t moved = PG_ANON | PG_DIRTY | PG_UPTODATE | PG_LRU | PG_BYTES | PG_SWAPCACHE
    cdef int64_t p, slot0
    if e.fflags[old] & PG_SWAPCACHE:
        slot0 = <int64_t>e.index[old]
        e.index[new] = e.index[old]
        e.index[old] = 0
        for p in range(nr):
            e.swap_cache[slot0 + p] = new + p + 1
        e.refcount[new] += <int32_t>nr
        e.refcount[old] -= <int32_t>nr
    for p in range(nr):
        e.version[new + p] = e.version[old + p]
        e.version[old + p] = 0
        e.fflags[new + p] = (e.fflags[new + p] & ~moved) | (e.fflags[old + p] & moved)
        e.fflags[old + p] &= ~moved


cdef int large_split_and_migrate(engine_t *e, mig_page_t *pg, int32_t node, int32_t caller,
                                 int *nomem) noexcept nogil:
    """try_split_folio() onto split_folios, then migrate_pages_batch() of
    those (6.12 migrate_pages: 0 when every page moved). The folio is
    isolated (+1); split_folio_here wants its references to be its
    mappings. 0 all moved, -EAGAIN some did not, -ENOMEM no split (the
    folio stays large, put back) or no frame for a page."""
    cdef int64_t old = pg.old, nr = folio_nr(e, old), p, k, n = 0, failed
    cdef int64_t pfn0 = -1
    cdef uint64_t *ptep = pte_offset(e, &e.mms[pg.mm], pg.va, False)
    cdef uint64_t base
    cdef uint16_t lru = e.fflags[old] & PG_LRU
    cdef mig_page_t *q
    if ptep != NULL and ptep[0] & PTE_PRESENT and in_folio(<int64_t>pte_pfn(ptep[0]), old, nr):
        pfn0 = <int64_t>pte_pfn(ptep[0])
    base = pg.va - (<uint64_t>(pfn0 - old if pfn0 >= 0 else 0) << MM_PAGE_SHIFT)
    e.refcount[old] -= 1                # the isolation reference, back below if the split fails
    # (A folio in the swapcache is not split here: its unmapped pages would
    # lose the cache's reference with the isolation one. Not modelled: -ENOMEM.)
    if e.fflags[old] & PG_SWAPCACHE or split_folio_here(e, &e.mms[pg.mm], old, pg.va, True, True) < 0:
        e.refcount[old] += 1
        e.fflags[old] &= ~PG_ISOLATED
        put_page(e, old, 1)
        return -CORE_ENOMEM
    if nr == HPAGE_PMD_NR:
        e.thp_mig[2] += 1               # THP_MIGRATION_SPLIT
    q = <mig_page_t *>malloc(nr * sizeof(mig_page_t))
    for p in range(old, old + nr):
        e.fflags[p] &= ~PG_ISOLATED
        if e.mapcount[p] == 0 or q == NULL:
            put_page(e, p, 1)           # unmapped (or remapped to the zero page): freed
            continue
        e.fflags[p] |= PG_ISOLATED | lru  # isolated from the LRU, each page now
        e.refcount[p] += 1
        q[n].old, q[n].new, q[n].mm, q[n].rc, q[n].va = p, -1, pg.mm, MIG_RC_NONE, \
            base + (<uint64_t>(p - old) << MM_PAGE_SHIFT)
        n += 1
    if q == NULL:
        return -CORE_ENOMEM
    failed = migrate_batch(e, q, n, node, caller, nomem) if n else 0
    free(q)
    if nomem[0]:
        return -CORE_ENOMEM
    return -CORE_EAGAIN if failed else 0


cdef int large_migrate_folio(engine_t *e, mig_page_t *pg, int32_t node, int32_t caller,
                             int *nomem) noexcept nogil:
    """migrate_folio_unmap() + migrate_folio_move() (6.12) of the isolated
    anon large folio pg.old to `node`, alone: a new folio of its order on
    the node (__GFP_THISNODE), every mapping a migration entry, the window
    without mmap_lock (SP_MIGRATION_UNMAPPED), the move if only the
    isolation reference is left, every entry mapped again. No folio of that
    order on the node (-ENOMEM) splits it and migrates its pages (not for
    a NUMA-hinting fault: MR_NUMA_MISPLACED never splits); the same for a
    folio on the deferred split queue. Sets pg.rc; drops the isolation
    reference. Returns -CORE_ENOMEM when the call is to fail so."""
    cdef int64_t old = pg.old, nr = folio_nr(e, old), new, left
    cdef int order = HPAGE_PMD_ORDER if nr == HPAGE_PMD_NR else mthp_order(e, old)
    cdef bint thp = nr == HPAGE_PMD_NR, local = True, everywhere
    cdef int64_t copies, done = 0, unmapped
    cdef int rc
    if e.refcount[old] == 1:
        pg.rc = 0                       # freed under us: done
        e.fflags[old] &= ~PG_ISOLATED
        put_page(e, old, 1)
        return 0
    if folio_deferred(e, old)[0] and not e.mig_nosplit:
        # migrate_pages_batch(): a partially mapped folio on the deferred
        # split list is split now, and counts as failed and split.
        if thp:
            e.thp_mig[1] += 1
        pg.rc = large_split_and_migrate(e, pg, node, caller, nomem)
        return pg.rc if pg.rc == -CORE_ENOMEM else 0
    e.alloc_node = node if e.nnodes > 1 else -1
    if thp:
        new = folio_alloc_pmd(e, 0, True)
    else:
        new = folio_alloc_mthp(e, order, 0)
    e.alloc_node = -1
    if new < 0:
        if thp:
            e.thp_mig[1] += 1           # THP_MIGRATION_FAIL
        if e.mig_nosplit:
            pg.rc = -CORE_ENOMEM
            e.fflags[old] &= ~PG_ISOLATED
            put_page(e, old, 1)
            return -CORE_ENOMEM
        pg.rc = large_split_and_migrate(e, pg, node, caller, nomem)
        return pg.rc if pg.rc == -CORE_ENOMEM else 0
    pg.new = new
    left = large_rmap_walk(e, pg, nr, False, False, -1, caller, &local, &everywhere, &done)
    unmapped = done
    copies = e.mig_copies
    if local and folio_mapcount_total(e, old) == 0:
        # Between unmap and move, without mmap_lock: a fault on an entry
        # waits (pmd_migration_entry_wait), fork copies the entries
        # (copy_huge_pmd), munmap zaps them, mprotect downgrades them.
        sched_point(e, SP_MIGRATION_UNMAPPED, caller, pg.va, <uint64_t>node)
    if e.mig_copies != copies:
        everywhere = True
    # move_to_new_folio(): nothing mapped, only the isolation reference and
    # the swapcache's, one per page (folio_expected_refs).
    if folio_mapcount_total(e, old) != 0 or e.refcount[old] != 1 + (nr if e.fflags[old] & PG_SWAPCACHE else 0):
        rc = -CORE_EAGAIN
    else:
        rc = 0
        migrate_large_state(e, old, new, nr)
    done = unmapped
    large_rmap_walk(e, pg, nr, True, everywhere, new if rc == 0 else old, caller, &local, &everywhere, &done)
    if rc == 0:
        e.fflags[new] &= ~PG_ISOLATED
        if thp:
            e.thp_mig[0] += 1           # THP_MIGRATION_SUCCESS
    else:
        pg.new = -1
        if thp:
            e.thp_mig[1] += 1
    pg.rc = rc
    put_page(e, new, 1)                 # the allocation's reference (frees a failed target)
    e.fflags[old] &= ~PG_ISOLATED
    put_page(e, old, 1)                 # the isolation reference (frees a migrated folio)
    return 0


# ---- move_pages(2) -----------------------------------------------------------

cdef int add_page_for_migration(engine_t *e, mm_t *mm, uint64_t va, int32_t node, bint move_all,
                                int64_t *pfn_out) noexcept nogil:
    """add_folio_for_migration(): 1 queued (isolated, +1 reference), 0 already
    on the node, or a negative errno for the status array."""
    cdef int32_t vi = find_vma(mm, va)
    cdef uint64_t *ptep
    cdef int64_t pfn
    if vi < 0 or mm.vmas[vi].flags & (VM_IO | VM_PFNMAP):
        return -CORE_EFAULT                 # vma_lookup() / vma_migratable()
    ptep = pte_offset(e, mm, va, False)
    if ptep == NULL or not (ptep[0] & PTE_PRESENT):
        return -CORE_ENOENT                 # nothing mapped (none, swap, marker, migrating)
    if ptep[0] & PTE_SPECIAL:
        return -CORE_EFAULT                 # the zero page (FOLL_DUMP / is_zero_folio)
    pfn = <int64_t>pte_pfn(ptep[0])
    if pfn_is_hugetlb(e, pfn):
        # A hugetlb page moves whole: its head is the folio isolate_hugetlb()
        # takes; folio_likely_mapped_shared() is its entire mapcount.
        pfn = folio_of(e, pfn)
        if node_of(e, pfn) == node:
            return 0
        if hugetlb_mapcount(e, pfn) > 1 and not move_all:
            return -CORE_EACCES
    elif e.fflags[pfn] & PG_TAIL or e.fflags[pfn] & PG_HEAD:
        # A THP or mTHP moves whole, whichever page names it (6.12
        # __add_folio_for_migration): a second page of a folio queued
        # already is -EBUSY, a page of a folio moved already is there.
        pfn = folio_of(e, pfn)
        if node_of(e, pfn) == node:
            return 0
        if folio_likely_mapped_shared(e, pfn) and not move_all:
            return -CORE_EACCES
    if node_of(e, pfn) == node:
        return 0
    if e.mapcount[pfn] > 1 and not move_all:
        return -CORE_EACCES                 # shared with another mapping: MPOL_MF_MOVE_ALL only
    if e.fflags[pfn] & PG_ISOLATED:
        return -CORE_EBUSY                  # folio_isolate_lru() fails: already queued
    e.fflags[pfn] |= PG_ISOLATED
    e.refcount[pfn] += 1
    pfn_out[0] = pfn
    return 1


cdef int64_t do_pages_move(engine_t *e, mm_t *mm, const uint64_t *addrs, const int32_t *nodes,
                           int32_t *status, int64_t n, bint move_all) noexcept nogil:
    """do_pages_move(): 0, the number of pages not migrated, or a negative
    errno for the call (pages before the failure keep what was done)."""
    cdef mig_page_t *q = <mig_page_t *>malloc((n + 1) * sizeof(mig_page_t))
    cdef int64_t *qidx = <int64_t *>malloc((n + 1) * sizeof(int64_t))
    cdef int64_t nq = 0, i = 0, k, err = 0, err1, pfn = -1
    cdef int32_t current = -1, node
    cdef int c
    cdef bint out = False
    if q == NULL or qidx == NULL:
        free(q)
        free(qidx)
        return -CORE_ENOMEM
    for c in range(e.ncpus):
        lru_drain(e, c)                     # lru_cache_disable(): fresh pages reach the LRU
    while i < n:
        node = nodes[i]
        if node < 0 or node >= e.nnodes:
            err = -CORE_ENODEV              # beyond MAX_NUMNODES, or no memory there
            break
        if current == -1:
            current = node
        elif node != current:
            err = flush_queue(e, q, qidx, &nq, current, status, mm.id, i, n)
            if err:
                out = True
                break
            current = node
        err = add_page_for_migration(e, mm, addrs[i], current, move_all, &pfn)
        if err > 0:
            q[nq].old, q[nq].new, q[nq].mm, q[nq].rc, q[nq].va = pfn, -1, mm.id, MIG_RC_NONE, addrs[i]
            qidx[nq] = i
            nq += 1
            i += 1
            continue
        status[i] = <int32_t>(err if err else current)
        err = flush_queue(e, q, qidx, &nq, current, status, mm.id, i, n)
        if err:
            if err > 0:
                err -= 1                    # page i is accounted for
            out = True
            break
        current = -1
        i += 1
    if not out:
        # out_flush: the queue goes, an earlier error stays.
        err1 = flush_queue(e, q, qidx, &nq, current, status, mm.id, i, n)
        if err >= 0:
            err = err1
    free(q)
    free(qidx)
    return err


cdef int64_t flush_queue(engine_t *e, mig_page_t *q, const int64_t *qidx, int64_t *nq, int32_t node,
                         int32_t *status, int32_t caller, int64_t i, int64_t n) noexcept nogil:
    """move_pages_and_store_status() for the queue [start, i)."""
    cdef int nomem = 0
    cdef int64_t failed, k, cnt = nq[0]
    if cnt == 0:
        return 0
    failed = migrate_batch(e, q, cnt, node, caller, &nomem)
    nq[0] = 0
    if nomem:
        return -CORE_ENOMEM
    if failed:
        # Linux leaves this batch's status unwritten and counts the pages
        # never tried too; mmemu writes each page's outcome (its node, or
        # migrate_pages' -EAGAIN), which is what the caller's slots hide.
        for k in range(cnt):
            status[qidx[k]] = node if q[k].rc == 0 else q[k].rc
        return failed + (n - i)
    for k in range(cnt):
        status[qidx[k]] = node
    return 0


cdef void do_pages_stat(engine_t *e, mm_t *mm, const uint64_t *addrs, int32_t *status,
                        int64_t n) noexcept nogil:
    """do_pages_stat_array(): each page's node, -EFAULT (no VMA, zero page)
    or -ENOENT (nothing present)."""
    cdef int64_t i
    cdef uint64_t *ptep
    for i in range(n):
        if find_vma(mm, addrs[i]) < 0:
            status[i] = -CORE_EFAULT
            continue
        ptep = pte_offset(e, mm, addrs[i], False)
        if ptep == NULL or not (ptep[0] & PTE_PRESENT):
            status[i] = -CORE_ENOENT
        elif ptep[0] & PTE_SPECIAL:
            status[i] = -CORE_EFAULT
        else:
            status[i] = node_of(e, <int64_t>pte_pfn(ptep[0]))


# ---- mbind(MPOL_BIND, MPOL_MF_MOVE[_ALL]) ------------------------------------

cdef int64_t mbind_move(engine_t *e, mm_t *mm, int cpu, uint64_t start, uint64_t end, uint64_t nodemask,
                        bint move_all, int64_t *nr_failed) noexcept nogil:
    """queue_pages_range(MPOL_MF_INVERT) + migrate_pages() for MPOL_BIND: the
    pages in [start, end) off the nodemask go to the CPU's node if it is in
    the mask, else to the first node of the mask with room. A page mapped
    more than once is skipped without MOVE_ALL (counted failed, for
    MPOL_MF_STRICT), as is one no bound node has room for. Returns pages
    migrated."""
    cdef uint64_t va = start, stop
    cdef uint64_t *t
    cdef int64_t i, i0, i1, pfn, nq = 0, cap = 0, moved = 0, k, failed
    cdef mig_page_t *q = NULL
    cdef int32_t n, c
    cdef int nomem = 0
    cdef bint huge
    for c in range(e.ncpus):
        lru_drain(e, c)
    while va < end:
        t = leaf_or_skip(e, mm.pgd, va, &stop)
        if t == NULL:
            va = stop
            continue
        stop = block_end(va, end)
        i0 = <int64_t>((va >> MM_PAGE_SHIFT) & 511)
        i1 = i0 + <int64_t>((stop - va) >> MM_PAGE_SHIFT)
        for i in range(i0, i1):
            if not (t[i] & PTE_PRESENT) or t[i] & PTE_SPECIAL:
                continue
            pfn = <int64_t>pte_pfn(t[i])
            huge = pfn_is_hugetlb(e, pfn)
            if huge or e.fflags[pfn] & PG_TAIL:
                pfn = folio_of(e, pfn)      # queue_folios_hugetlb(), queue_folios_pmd(): the whole folio, once
            if nodemask >> node_of(e, pfn) & 1 or e.fflags[pfn] & PG_ISOLATED:
                continue
            if huge:
                if hugetlb_mapcount(e, pfn) > 1 and not move_all:
                    continue                # left, and not counted failed (queue_folios_hugetlb)
            elif e.fflags[pfn] & PG_HEAD:
                if folio_likely_mapped_shared(e, pfn) and not move_all:
                    nr_failed[0] += 1       # migrate_folio_add() leaves a shared folio
                    continue
            elif e.mapcount[pfn] > 1 and not move_all:
                nr_failed[0] += 1           # migrate_folio_add() leaves a shared folio
                continue
            if array_grow(<void **>&q, &cap, nq + 1, sizeof(mig_page_t), 64, False) < 0:
                break
            e.fflags[pfn] |= PG_ISOLATED
            e.refcount[pfn] += 1
            q[nq].old, q[nq].new, q[nq].mm, q[nq].rc = pfn, -1, mm.id, MIG_RC_NONE
            q[nq].va = va + (<uint64_t>(i - i0) << MM_PAGE_SHIFT)
            nq += 1
        va = stop
    # alloc_migration_target_by_mpol(): the local node if the mask has it,
    # else the mask's nodes in order, each while it has a free frame.
    n = cpu_node(e, cpu)
    k = 0
    while k < nq:
        if not (nodemask >> n & 1 and node_has_room(e, n, q[k].old)):
            n = -1
            for c in range(e.nnodes):
                if nodemask >> c & 1 and node_has_room(e, c, q[k].old):
                    n = c
                    break
        if n < 0:
            break
        failed = migrate_batch(e, q + k, 1, n, mm.id, &nomem)
        nomem = 0
        nr_failed[0] += failed
        moved += 1 - failed
        k += 1
    while k < nq:                           # no room on any bound node: put back
        e.fflags[q[k].old] &= ~PG_ISOLATED
        put_page(e, q[k].old, 1)
        nr_failed[0] += 1
        k += 1
    free(q)
    return moved


cdef inline bint node_has_room(engine_t *e, int32_t n, int64_t pfn) noexcept nogil:
    # A hugetlb page needs a free page of its size in the node's share of
    # the pool (alloc_hugetlb_folio_vma under the bound policy).
    if pfn_is_hugetlb(e, pfn):
        return e.h_nfree[hugetlb_hstate_of(e, pfn)][n] > 0
    return node_has_free(e, n)


cdef inline bint node_has_free(engine_t *e, int32_t n) noexcept nogil:
    if not e.zoned:
        return e.nr_free > e.nr_pgtable
    return node_nr_free(e, n) > 0


# ---- NUMA hinting ------------------------------------------------------------

cdef int64_t change_prot_numa(engine_t *e, mm_t *mm, uint64_t start, uint64_t end) noexcept nogil:
    """change_prot_numa() over [start, end) (task_numa_work's scan): present
    ptes of accessible VMAs become PROT_NONE hints; the zero page and KSM
    pages are left alone. Before 6.2 the hint keeps the pte's write bit
    (x86 savedwrite, b191f9b106ea); since 6a56ccbcf6c6 it drops it.
    Returns ptes changed."""
    cdef int32_t vi
    cdef mm_vma_t *vma
    cdef uint64_t va, vs, ve, stop, pte
    cdef uint64_t *t
    cdef int64_t i, i0, i1, n = 0
    for vi in range(mm.nvma):
        vma = &mm.vmas[vi]
        vs = vma.start if vma.start > start else start
        ve = vma.end if vma.end < end else end
        # task_numa_work(): migratable, accessible VMAs only.
        if vs >= ve or not (vma.flags & (VM_READ | VM_WRITE | VM_EXEC)) \
                or vma.flags & (VM_IO | VM_PFNMAP | VM_MIXEDMAP | VM_HUGETLB):
            continue
        va = vs
        while va < ve:
            t = leaf_or_skip(e, mm.pgd, va, &stop)
            if t == NULL:
                va = stop
                continue
            stop = block_end(va, ve)
            i0 = <int64_t>((va >> MM_PAGE_SHIFT) & 511)
            i1 = i0 + <int64_t>((stop - va) >> MM_PAGE_SHIFT)
            for i in range(i0, i1):
                pte = t[i]
                if not (pte & PTE_PRESENT) or pte & (PTE_SPECIAL | PTE_PROTNONE) \
                        or e.fflags[pte_pfn(pte)] & PG_KSM:
                    continue
                pte |= PTE_PROTNONE
                if e.pol.numa_hint_upgrade:
                    pte &= ~PTE_WRITE
                t[i] = pte
                n += 1
            va = stop
    if n:
        tlb_flush_range(e, mm.id, start, end)
    return n


cdef inline bint can_change_pte_writable(engine_t *e, uint64_t vmflags, uint64_t pte) noexcept nogil:
    # mm/mprotect.c can_change_pte_writable() (6.0+): not uffd-wp, soft-dirty
    # tracking satisfied; a private pte maps an exclusive anon page, a
    # shared one is dirty already.
    cdef int64_t pfn = <int64_t>pte_pfn(pte)
    if not (vmflags & VM_WRITE) or pte & (PTE_UFFD_WP | PTE_SPECIAL | PTE_PROTNONE):
        return False
    if vma_soft_dirty_tracking(e, vmflags) and not (pte & PTE_SOFT_DIRTY):
        return False
    if not (vmflags & VM_SHARED):
        return (e.fflags[pfn] & (PG_ANON | PG_ANON_EXCLUSIVE)) == (PG_ANON | PG_ANON_EXCLUSIVE)
    return (pte & PTE_DIRTY) != 0


cdef void numa_rebuild_large_mapping(engine_t *e, mm_vma_t *vma, uint64_t va, uint64_t *ptep,
                                     int64_t head, bint ignore_writable) noexcept nogil:
    """numa_rebuild_large_mapping() (6.10, d2136d749d76): every hinted pte of
    the large folio the fault hit, within the VMA and this page table, made
    accessible again - each writable as do_numa_page decides for one,
    or, once a migration was tried (ignore_writable), only as vm_page_prot
    makes it."""
    cdef int64_t nr = folio_nr(e, head), k
    cdef uint64_t here = va & ~(MM_PAGE_SIZE - 1)
    cdef int64_t first = <int64_t>(here >> MM_PAGE_SHIFT) - (<int64_t>pte_pfn(ptep[0]) - head)
    cdef int64_t lo = <int64_t>((here & ~(<uint64_t>PMD_SPAN - 1)) >> MM_PAGE_SHIFT)
    cdef int64_t hi = lo + HPAGE_PMD_NR
    cdef uint64_t pte
    cdef bint writable
    lo = max(lo, first, <int64_t>(vma.start >> MM_PAGE_SHIFT))
    hi = min(hi, first + nr, <int64_t>(vma.end >> MM_PAGE_SHIFT))
    for k in range(lo - <int64_t>(here >> MM_PAGE_SHIFT), hi - <int64_t>(here >> MM_PAGE_SHIFT)):
        pte = ptep[k]
        if (pte & (PTE_PRESENT | PTE_PROTNONE)) != (PTE_PRESENT | PTE_PROTNONE) \
                or not in_folio(<int64_t>pte_pfn(pte), head, nr):
            continue
        pte = (pte & ~(PTE_PROTNONE | PTE_WRITE)) | vma_prot_bits(vma.flags) | PTE_YOUNG
        writable = vm_page_prot_writable(e, vma.flags)      # pte_modify() alone
        if not ignore_writable and not writable:
            writable = can_change_pte_writable(e, vma.flags, pte)
        ptep[k] = pte | (PTE_WRITE if writable else 0)


cdef int do_numa_page(engine_t *e, mm_t *mm, int cpu, mm_vma_t *vma, uint64_t va,
                      uint64_t *ptep) noexcept nogil:
    """A fault on a NUMA-hinting PROT_NONE pte (do_numa_page): the folio moves
    to the faulting CPU's node when it is elsewhere and mapped once (the
    first hint decides: mmemu keeps no last_cpupid), else the pte is rebuilt
    from vm_page_prot. A pte-mapped large folio (a split THP, an mTHP)
    stays where it is with only the faulting pte rebuilt before 6.10; from
    6.10 (d2136d749d76) it migrates whole and, when it does not, all its
    hinted ptes here are rebuilt. Always 0: the access retries."""
    cdef uint64_t orig = ptep[0], pte
    cdef int64_t pfn = <int64_t>pte_pfn(orig)
    cdef int32_t target = cpu_node(e, cpu)
    cdef mig_page_t pg
    cdef int nomem = 0
    cdef bint writable, tried = False
    cdef int64_t head = folio_of(e, pfn), failed
    cdef bint large = (e.fflags[head] & PG_HEAD) != 0
    # pte_modify(old, vm_page_prot): the hint and write go, vm_page_prot's
    # write comes back (shmem before 6.2 keeps its uffd-wp bit too: B15).
    pte = (orig & ~(PTE_PROTNONE | PTE_WRITE)) | vma_prot_bits(vma.flags) | PTE_YOUNG
    writable = vm_page_prot_writable(e, vma.flags)
    if e.pol.numa_hint_upgrade:
        if not writable and can_change_pte_writable(e, vma.flags, pte):
            writable = True
    elif orig & PTE_WRITE:
        writable = True                     # pte_savedwrite()
    if e.nnodes > 1 and node_of(e, pfn) != target and (e.pol.numa_large_folio or not large) \
            and (folio_likely_mapped_shared(e, head) == 0 if large else e.mapcount[pfn] == 1) \
            and not (e.fflags[head] & (PG_KSM | PG_ISOLATED)) and not pfn_is_hugetlb(e, head):
        # migrate_misplaced_folio(): the PTL is dropped, the folio - a
        # pte-mapped THP or mTHP whole (6.12) - isolated; never split
        # (MR_NUMA_MISPLACED).
        pg.old, pg.new, pg.mm, pg.rc, pg.va = head, -1, mm.id, MIG_RC_NONE, va
        e.fflags[head] |= PG_ISOLATED
        e.refcount[head] += 1
        e.mig_nosplit = 1
        failed = migrate_batch(e, &pg, 1, target, mm.id, &nomem)
        e.mig_nosplit = 0
        if failed == 0 or ptep[0] != orig:
            return 0                        # migrated, or the pte changed meanwhile: retry
        tried = True
        if e.pol.numa_hint_upgrade:
            writable = vm_page_prot_writable(e, vma.flags)   # 6.2+: writable = false after unlock
    if large and e.pol.numa_large_folio:
        numa_rebuild_large_mapping(e, vma, va, ptep, head, tried)
        return 0
    if writable:
        pte |= PTE_WRITE
    ptep[0] = pte
    return 0


cdef int do_huge_pmd_numa_page(engine_t *e, mm_t *mm, int cpu, mm_vma_t *vma, uint64_t va,
                               int32_t *slot) noexcept nogil:
    """A fault on a NUMA-hinting PROT_NONE PMD leaf (do_huge_pmd_numa_page,
    6.12; c5b5a3dd2c1f, 5.13, before it migrate_misplaced_transhuge_page):
    the THP moves whole to the faulting CPU's node when it is elsewhere and
    mapped once (as do_numa_page decides for a small page), never split
    (MR_NUMA_MISPLACED: no room there leaves it); else, or when that
    failed, the leaf is rebuilt from vm_page_prot, writable as do_numa_page
    makes a pte (can_change_pmd_writable 6.2+, the saved write before).
    Always 0: the access retries."""
    cdef uint64_t *t = pmd_leaf_table(e, slot[0])
    cdef uint64_t orig = t[0], set, pte
    cdef int64_t head = <int64_t>pte_pfn(orig), i
    cdef int32_t target = cpu_node(e, cpu)
    cdef mig_page_t pg
    cdef int nomem = 0
    cdef int64_t failed
    cdef bint writable
    pte = (orig & ~(PTE_PROTNONE | PTE_WRITE)) | vma_prot_bits(vma.flags) | PTE_YOUNG
    writable = vm_page_prot_writable(e, vma.flags)
    if e.pol.numa_hint_upgrade:
        if not writable and can_change_pte_writable(e, vma.flags, pte):
            writable = True
    elif orig & PTE_WRITE:
        writable = True                     # pmd_savedwrite()
    if e.nnodes > 1 and not (orig & PTE_SPECIAL) and node_of(e, head) != target \
            and folio_mapcount_total(e, head) == 1 and not (e.fflags[head] & (PG_KSM | PG_ISOLATED)):
        # migrate_misplaced_folio_prepare(): isolated, the PTL dropped.
        pg.old, pg.new, pg.mm, pg.rc, pg.va = head, -1, mm.id, MIG_RC_NONE, va
        e.fflags[head] |= PG_ISOLATED
        e.refcount[head] += 1
        e.mig_nosplit = 1
        failed = migrate_batch(e, &pg, 1, target, mm.id, &nomem)
        e.mig_nosplit = 0
        if failed == 0 or not pmd_trans_huge(slot[0]) or pmd_leaf_table(e, slot[0])[0] != orig:
            return 0                        # migrated, or the PMD changed meanwhile: retry
        t = pmd_leaf_table(e, slot[0])
        if e.pol.numa_hint_upgrade:
            writable = vm_page_prot_writable(e, vma.flags)   # 6.2+: writable = false after unlock
    set = vma_prot_bits(vma.flags) | PTE_YOUNG | (PTE_WRITE if writable else 0)
    for i in range(HPAGE_PMD_NR):
        t[i] = (t[i] & ~(PTE_PROTNONE | PTE_WRITE)) | set
    return 0
