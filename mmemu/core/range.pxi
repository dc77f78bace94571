# Bulk range operations, one pte page at a time, without the GIL.

cdef enum:
    PMD_SPAN = 1 << 21


cdef inline uint64_t block_end(uint64_t va, uint64_t end) noexcept nogil:
    cdef uint64_t b = (va & ~(<uint64_t>PMD_SPAN - 1)) + PMD_SPAN
    return b if b < end else end


cdef void zap_range(engine_t *e, mm_t *mm, uint64_t start, uint64_t end, gather_t *g,
                    bint wp_markers, bint drop_markers) noexcept nogil:
    """zap_pte_range over [start, end): ptes cleared, pages queued on the gather
    (released after its flush). With wp_markers (MADV_DONTNEED of a file-backed
    uffd-wp VMA, 5.19+ zap_install_uffd_wp_if_needed) a zapped uffd-wp entry
    becomes a uffd-wp marker and markers stay; otherwise markers go too. A
    guard marker stays unless drop_markers (unmap and exit: ZAP_FLAG_DROP_MARKER;
    zap_nonpresent_ptes keeps it for any other zap, 662df3e5c376 6.13)."""
    cdef uint64_t va = start, stop, pte
    cdef uint64_t *t
    cdef int64_t i, i0, i1, pfn
    cdef int32_t *slot
    while va < end:
        # As it is: a PMD leaf zapped whole is read at entry 0 only, one
        # zapped in part is split (and so written out) before its ptes are.
        t = leaf_or_skip_as_is(e, mm.pgd, va, &stop)
        if t == NULL:
            va = stop
            continue
        stop = block_end(va, end)
        if e.nr_huge_pmd:
            # zap_pmd_range: a PMD leaf zapped whole goes at once, one the
            # range covers in part is split first.
            slot = pmd_slot(e, mm, va, False)
            if pmd_trans_huge(slot[0]):
                if stop - va == PMD_SPAN:
                    # hugetlb: uffd-wp stays as a marker unless the zap
                    # drops markers (__unmap_hugepage_range, 5.19+).
                    pte = t[0]
                    zap_huge_pmd(e, mm, slot, g, wp_markers and not drop_markers)
                    if pte & PTE_PRESENT and pfn_is_hugetlb(e, <int64_t>pte_pfn(pte)):
                        hugetlb_zap_restore_reserve(e, mm, va, folio_of(e, <int64_t>pte_pfn(pte)))
                    va = stop
                    continue
                if not pmd_is_thp_migration(e, slot[0]) and \
                        (not (t[0] & PTE_PRESENT) or pfn_is_hugetlb(e, <int64_t>pte_pfn(t[0]))):
                    va = stop               # never split (callers zap whole huge pages)
                    continue
                split_huge_pmd_locked(e, mm, slot, va & ~(<uint64_t>PMD_SPAN - 1))
                if slot[0] == 0:
                    va = stop               # a shmem THP's PMD: splitting cleared it
                    continue
        i0 = <int64_t>((va >> MM_PAGE_SHIFT) & 511)
        i1 = i0 + <int64_t>((stop - va) >> MM_PAGE_SHIFT)
        for i in range(i0, i1):
            pte = t[i]
            if pte == 0:
                continue
            if is_marker(pte):
                if marker_bits(pte) & PTE_MARKER_GUARD and not drop_markers:
                    continue
                if not wp_markers or marker_bits(pte) != PTE_MARKER_UFFD_WP:
                    t[i] = 0
                continue
            t[i] = make_marker(PTE_MARKER_UFFD_WP) if (wp_markers and pte & PTE_UFFD_WP) else 0
            if pte & PTE_PRESENT:
                g.need_flush = 1
                if not (pte & PTE_SPECIAL):
                    pfn = <int64_t>pte_pfn(pte)
                    e.mapcount[pfn] -= 1
                    if e.fflags[pfn] & PG_ANON:
                        mm.rss_anon -= 1
                        if e.fflags[pfn] & (PG_HEAD | PG_TAIL) and e.mapcount[pfn] == 0:
                            deferred_split_folio(e, mm, pfn, (va & ~(<uint64_t>PMD_SPAN - 1))
                                                 + (<uint64_t>i << MM_PAGE_SHIFT))
                    elif pte & PTE_DIRTY:
                        file_folio_set(e, pfn, PG_DIRTY)    # the folio keeps the dirty state
                    gather_add(e, g, pfn)
            else:
                zap_swap_entry(e, mm, pte)
        va = stop


cdef int64_t guard_install_range(engine_t *e, mm_t *mm, uint64_t start, uint64_t end) noexcept nogil:
    """MADV_GUARD_INSTALL's walk (guard_install_pte_entry / _set_pte, 6.13):
    an empty pte becomes a guard marker, a guard marker stays. Returns how
    many other entries were found and left (the caller zapped the range
    first, so only markers a zap keeps), or -1 if a pte table could not be
    allocated."""
    cdef uint64_t va = start, stop
    cdef uint64_t *t
    cdef int64_t i, i0, i1, left = 0
    cdef uint64_t guard = make_marker(PTE_MARKER_GUARD)
    while va < end:
        t = pte_table(e, mm, va, True)        # the walk's install_pte allocates
        if t == NULL:
            return -1
        stop = block_end(va, end)
        i0 = <int64_t>((va >> MM_PAGE_SHIFT) & 511)
        i1 = i0 + <int64_t>((stop - va) >> MM_PAGE_SHIFT)
        for i in range(i0, i1):
            if t[i] == 0:
                t[i] = guard                  # non-present before: no flush
            elif not (is_marker(t[i]) and marker_bits(t[i]) & PTE_MARKER_GUARD):
                left += 1
        va = stop
    return left


cdef void guard_remove_range(engine_t *e, mm_t *mm, uint64_t start, uint64_t end) noexcept nogil:
    """MADV_GUARD_REMOVE (guard_remove_pte_entry, 6.13): clear guard markers
    only; everything else stays. Tables are not allocated."""
    cdef uint64_t va = start, stop
    cdef uint64_t *t
    cdef int64_t i, i0, i1
    while va < end:
        t = leaf_or_skip(e, mm.pgd, va, &stop)
        if t == NULL:
            va = stop
            continue
        stop = block_end(va, end)
        i0 = <int64_t>((va >> MM_PAGE_SHIFT) & 511)
        i1 = i0 + <int64_t>((stop - va) >> MM_PAGE_SHIFT)
        for i in range(i0, i1):
            if is_marker(t[i]) and marker_bits(t[i]) & PTE_MARKER_GUARD:
                t[i] = 0
        va = stop


cdef int64_t change_protection(engine_t *e, mm_t *mm, uint64_t start, uint64_t end,
                               uint64_t newflags, int64_t *touched) noexcept nogil:
    """mprotect's change_pte_range: ptes take the new VMA protection, keeping
    pfn, dirty, young, soft-dirty and uffd-wp. Returns how many ptes lost
    rights (those need the TLB flush the caller issues); *touched counts the
    present ptes rewritten (before 6.0 any of them makes the range flush)."""
    cdef uint64_t va = start, stop, pte, npte
    cdef uint64_t *t
    cdef uint16_t *ff = e.fflags
    cdef int64_t i, i0, i1, lost = 0
    cdef uint64_t prot = vma_prot_bits(newflags)
    # hugetlb_change_protection() has no such upgrade (and no soft-dirty).
    cdef bint try_writable = e.pol.mprotect_upgrade != 0 and (newflags & VM_WRITE) != 0 \
        and not (newflags & (VM_SHARED | VM_HUGETLB)) and prot == 0
    # With soft-dirty tracking on, only ptes already soft-dirty may be upgraded.
    cdef uint64_t need = PTE_PRESENT | (PTE_SOFT_DIRTY if vma_soft_dirty_tracking(e, newflags) else 0)
    cdef uint64_t veto = PTE_SPECIAL | PTE_UFFD_WP
    cdef uint16_t excl = PG_ANON | PG_ANON_EXCLUSIVE
    cdef bint shared_writable = prot == 0 and (newflags & (VM_SHARED | VM_WRITE)) == (VM_SHARED | VM_WRITE) \
        and not flags_want_writenotify(e, newflags | (VM_SOFTDIRTY if newflags & VM_HUGETLB else 0))
    # change_pmd_range: a PMD leaf covered whole changes as one (its
    # expansion stays uniform), one covered in part is split.
    split_huge_pmd_edges(e, mm, start, end)
    while va < end:
        t = leaf_or_skip(e, mm.pgd, va, &stop)
        if t == NULL:
            va = stop
            continue
        stop = block_end(va, end)
        i0 = <int64_t>((va >> MM_PAGE_SHIFT) & 511)
        i1 = i0 + <int64_t>((stop - va) >> MM_PAGE_SHIFT)
        for i in range(i0, i1):
            pte = t[i]
            if not (pte & PTE_PRESENT):
                if is_migration_entry(pte):
                    t[i] = migration_entry_wrprotect(e, pte)    # whatever the new protection
                continue
            # A private mapping's vm_page_prot never has write (COW); a shared
            # writable one has it unless writenotify applies (shmem with uffd-wp
            # before 6.2: B15).
            npte = (pte & ~(PTE_WRITE | PTE_PROTNONE)) | prot
            if shared_writable and not (pte & PTE_SPECIAL):
                npte |= PTE_WRITE
            # 6.0+ (64fe24a3e05e, can_change_pte_writable): an exclusive
            # anon page may be mapped writable right away.
            if try_writable and (pte & need) == need and not (pte & veto) \
                    and (ff[pte_pfn(pte)] & excl) == excl:
                npte |= PTE_WRITE
            lost += ((pte & ~npte & PTE_WRITE) | (npte & ~pte & PTE_PROTNONE)) != 0
            touched[0] += 1
            t[i] = npte
        va = stop
    return lost


cdef int copy_range(engine_t *e, mm_t *src, mm_t *dst, int cpu, uint64_t start, uint64_t end,
                    uint64_t src_flags, uint64_t dst_flags, int64_t *wrprotected) noexcept nogil:
    """copy_page_range for one VMA (fork). 0, or -1 when out of frames/memory."""
    cdef uint64_t va = start, stop, pte, entry
    cdef uint64_t *s
    cdef uint64_t *d
    cdef int64_t i, i0, i1, pfn, new
    cdef bint cow = is_cow_mapping(src_flags)
    # Which VMA decides whether the child keeps uffd-wp bits: the child's
    # since 5.14 (8f34f1eac382); before, the source's (B12).
    cdef uint64_t wp_side = dst_flags if e.pol.fork_uffd_child_vma else src_flags
    cdef int32_t *slot
    cdef int rc
    while va < end:
        # As it is: a PMD leaf is copied whole, unexpanded if it is (a split
        # one is expanded by the split, in place).
        s = leaf_or_skip_as_is(e, src.pgd, va, &stop)
        if s == NULL:
            va = stop
            continue
        stop = block_end(va, end)
        if e.nr_huge_pmd:
            slot = pmd_slot(e, src, va, False)
            if pmd_trans_huge(slot[0]):
                # copy_pmd_range: a leaf is shared whole (a VMA never ends inside one).
                rc = copy_huge_pmd(e, src, dst, va & ~(<uint64_t>PMD_SPAN - 1), slot, dst_flags,
                                   wp_side, wrprotected)
                if rc < 0:
                    return -1
                if rc == 0:
                    va = stop
                    continue
                # Split (maybe pinned): copied per pte below.
        d = pte_table(e, dst, va, True)
        if d == NULL:
            return -1
        i0 = <int64_t>((va >> MM_PAGE_SHIFT) & 511)
        i1 = i0 + <int64_t>((stop - va) >> MM_PAGE_SHIFT)
        for i in range(i0, i1):
            pte = s[i]
            if pte == 0:
                continue
            if not (pte & PTE_PRESENT):
                if is_marker(pte):
                    # A uffd-wp marker goes only to a wp child VMA since 6.2;
                    # 5.19-6.1 copied it regardless (with a WARN): B14.
                    if marker_bits(pte) & PTE_MARKER_UFFD_WP and e.pol.fork_marker_child_wp \
                            and not (dst_flags & VM_UFFD_WP):
                        continue
                    d[i] = pte
                    continue
                if is_migration_entry(pte):
                    # copy_nonpresent_pte: in a COW mapping a writable (or
                    # readable_exclusive) entry becomes readable in parent
                    # and child; the page is shared from now on. The
                    # migration finds the child's copy by its rmap walk.
                    if cow and swp_type_of(pte) != SWP_MIGRATION_READ:
                        pte = (pte & ~SWP_TYPE_MASK) | (SWP_MIGRATION_READ << SWP_TYPE_SHIFT)
                        s[i] = pte
                    e.mig_copies += 1
                    if not (wp_side & VM_UFFD_WP):
                        pte &= ~PTE_UFFD_WP
                    d[i] = pte
                    continue
                # copy_nonpresent_pte: one more reference to the slot; 5.19+
                # the entry is no longer exclusive, in parent and child.
                if is_swap_pte(pte):
                    swap_dup(e, pte)
                    if e.pol.anon_exclusive and pte & SWP_EXCLUSIVE:
                        pte &= ~SWP_EXCLUSIVE
                        s[i] = pte
                if not (wp_side & VM_UFFD_WP):
                    pte &= ~PTE_UFFD_WP
                d[i] = pte
                continue
            if not (pte & PTE_SPECIAL):
                pfn = <int64_t>pte_pfn(pte)
                # 5.9-5.18 copied any maybe-pinned page of a COW mapping
                # early; 5.19+ only exclusive anon ones (folio_try_dup_anon_rmap).
                if cow and e.pol.fork_early_cow and src.flags & MMF_HAS_PINNED \
                        and folio_maybe_dma_pinned(e, pfn) \
                        and ((not e.pol.anon_exclusive) or
                             (e.fflags[pfn] & PG_ANON and e.fflags[pfn] & PG_ANON_EXCLUSIVE)):
                    # 5.9+ (70e806e4e645; 5.19+ folio_try_dup_anon_rmap failing):
                    # a maybe-pinned page stays with the parent, the child
                    # gets a copy now (copy_present_page).
                    new = frame_alloc(e)
                    if new < 0:
                        return -1
                    if frame_copy(e, new, pfn) < 0:
                        frame_free(e, new)
                        return -1
                    e.fflags[new] |= PG_ANON | (PG_ANON_EXCLUSIVE if e.pol.anon_exclusive else 0)
                    e.mapcount[new] = 1
                    lru_add(e, cpu, new)
                    entry = pfn_pte(new) | PTE_PRESENT | PTE_YOUNG | PTE_DIRTY | PTE_SOFT_DIRTY \
                        | vma_prot_bits(dst_flags)
                    if dst_flags & VM_WRITE:
                        entry |= PTE_WRITE
                    # 5.9-5.13 built the copy without the uffd-wp bit (B13).
                    if e.pol.fork_uffd_child_vma and dst_flags & VM_UFFD_WP and pte & PTE_UFFD_WP:
                        entry = mkuffd_wp(entry)
                    d[i] = entry
                    dst.rss_anon += 1
                    stat_add(e, MM_STAT_EARLY_COW, 1)
                    continue
                if cow and pte & PTE_WRITE and e.sched_hook != NULL:
                    # The pin check is done; sharing and write-protecting
                    # follow. GUP-fast takes no lock: it may pin in between (B17).
                    sched_point(e, SP_FORK_PTE, src.id, va + (<uint64_t>(i - i0) << MM_PAGE_SHIFT), <uint64_t>pfn)
                    pte = s[i]
                get_page(e, pfn, 1)
                e.mapcount[pfn] += 1
                if e.fflags[pfn] & PG_ANON:
                    # The page is now shared: no longer exclusive (5.19+).
                    e.fflags[pfn] &= ~PG_ANON_EXCLUSIVE
                    dst.rss_anon += 1
            if cow and pte & PTE_WRITE:
                # Write-protect both sides; the parent's stale writable
                # translations go with fork's final flush_tlb_mm.
                pte &= ~PTE_WRITE
                s[i] = pte
                wrprotected[0] += 1
            pte &= ~PTE_YOUNG
            if not (wp_side & VM_UFFD_WP):
                pte &= ~PTE_UFFD_WP
            d[i] = pte
        va = stop
    return 0


cdef int64_t clear_soft_dirty_range(engine_t *e, mm_t *mm, uint64_t start, uint64_t end,
                                    uint64_t vma_flags) noexcept nogil:
    """clear_refs 4 (clear_soft_dirty): write-protect and clean soft-dirty.
    Returns how many ptes lost write."""
    cdef uint64_t va = start, stop, pte
    cdef uint64_t *t
    cdef int64_t i, i0, i1, pfn, lost = 0
    cdef bint skip_pinned = e.pol.clear_refs_skip_pinned != 0 and is_cow_mapping(vma_flags) \
        and (mm.flags & MMF_HAS_PINNED) != 0
    split_huge_pmd_edges(e, mm, start, end)     # clear_soft_dirty_pmd: whole leaves stay
    while va < end:
        t = leaf_or_skip(e, mm.pgd, va, &stop)
        if t == NULL:
            va = stop
            continue
        stop = block_end(va, end)
        i0 = <int64_t>((va >> MM_PAGE_SHIFT) & 511)
        i1 = i0 + <int64_t>((stop - va) >> MM_PAGE_SHIFT)
        for i in range(i0, i1):
            pte = t[i]
            if not (pte & PTE_PRESENT):
                if pte != 0:
                    t[i] = pte & ~PTE_SOFT_DIRTY      # swap entries: swp soft-dirty
                continue
            if skip_pinned and not (pte & PTE_SPECIAL):
                # 5.11+ (9348b73c2e1b): a maybe-pinned page keeps its
                # writable pte, so it always reads soft-dirty.
                pfn = <int64_t>pte_pfn(pte)
                if folio_maybe_dma_pinned(e, pfn):
                    continue
            if pte & PTE_WRITE:
                lost += 1
            t[i] = pte & ~(PTE_WRITE | PTE_SOFT_DIRTY)
        va = stop
    return lost


cdef int user_copy_range(engine_t *e, mm_t *mm, int cpu, uint64_t va, uint8_t *buf, int64_t n,
                         bint write, bint kernel, int64_t *done) noexcept nogil:
    """Byte-exact read (into buf) or write (from buf) of n bytes at va, page
    by page through the TLB, from *done on: the read/write entry points.
    Returns 0, or what stopped it (*done then counts the bytes done)."""
    cdef uint64_t a
    cdef int64_t chunk, pfn
    cdef int ret
    while done[0] < n:
        a = va + <uint64_t>done[0]
        chunk = <int64_t>(MM_PAGE_SIZE - (a & (MM_PAGE_SIZE - 1)))
        if chunk > n - done[0]:
            chunk = n - done[0]
        ret = user_access(e, mm, cpu, a, write, &pfn, 0 if kernel else FAULT_FLAG_USER)
        if ret:
            return ret
        if not write:
            frame_read(e, pfn, <int64_t>(a & (MM_PAGE_SIZE - 1)), chunk, buf + done[0])
        elif frame_write(e, pfn, <int64_t>(a & (MM_PAGE_SIZE - 1)), chunk, buf + done[0]) < 0:
            e.fault_addr = a
            return VM_FAULT_NOMEM
        done[0] += chunk
    return 0


cdef int touch_range(engine_t *e, mm_t *mm, int cpu, uint64_t start, int64_t npages,
                     bint write, uint64_t value, int64_t *done) noexcept nogil:
    """One access per page through the TLB (the batch access path). A write
    stores a content version: `value`, or a fresh stamp when value is 0."""
    cdef int64_t i, pfn
    cdef int ret
    for i in range(npages):
        ret = user_access(e, mm, cpu, start + (<uint64_t>i << MM_PAGE_SHIFT), write, &pfn,
                          FAULT_FLAG_USER | FAULT_FLAG_BATCH)
        if ret:
            done[0] = i
            return ret
        if write:
            if value:
                frame_set_version(e, pfn, value)
            else:
                e.stamp += 1
                frame_set_version(e, pfn, e.stamp)
    done[0] = npages
    return 0


cdef int replay_range(engine_t *e, mm_t *mm, int cpu, const uint64_t *addrs, const uint8_t *writes,
                      int64_t n, int64_t until, int64_t *done) noexcept nogil:
    """A trace of user accesses through the TLB and the fault handler, one
    per address (writes[i] != 0: a store of a fresh content version), never
    returning to Python unless one stops: the fault code, *done accesses.
    It also stops, with 0, once the CPU's emulated clock has reached
    `until`, looked at every 64 accesses (the clock is a sum over counters:
    not something to compute per access)."""
    cdef int64_t i, pfn
    cdef int ret
    cdef bint w
    cdef uint64_t va
    for i in range(n):
        if until != INT64_MAX and (i & 63) == 0 and i and clock_now(e) >= until:
            done[0] = i
            return 0
        va = addrs[i]
        if va >= MM_USER_TOP:
            e.fault_addr = va
            done[0] = i
            return VM_FAULT_SIGSEGV
        w = writes != NULL and writes[i] != 0
        ret = user_access(e, mm, cpu, va, w, &pfn, FAULT_FLAG_USER | FAULT_FLAG_BATCH)
        if ret:
            done[0] = i
            return ret
        if w:
            e.stamp += 1
            frame_set_version(e, pfn, e.stamp)
    done[0] = n
    return 0


cdef uint64_t pagemap_entry(engine_t *e, mm_t *mm, uint64_t va) noexcept nogil:
    """The 64-bit /proc/pid/pagemap value (pte_to_pagemap_entry), as root."""
    cdef int32_t vi = find_vma(mm, va)
    cdef uint64_t *ptep
    cdef uint64_t pte, out = 0
    cdef int64_t pfn, mc, head
    cdef uint64_t vflags
    if vi < 0:
        return 0
    vflags = mm.vmas[vi].flags
    ptep = pte_offset(e, mm, va, False)
    pte = ptep[0] if ptep != NULL else 0
    if vflags & VM_HUGETLB:
        # pagemap_hugetlb_range(): soft-dirty from the VMA only; file unless
        # anon; exclusive while the folio is mapped once.
        if pte & PTE_PRESENT:
            pfn = <int64_t>pte_pfn(pte)
            out = (1ULL << 63) | <uint64_t>pfn
            head = folio_of(e, pfn)
            if not (e.fflags[head] & PG_ANON):
                out |= 1ULL << 61
            if hugetlb_mapcount(e, head) <= 1:
                out |= 1ULL << 56
            if e.pol.pm_uffd_wp and pte & PTE_UFFD_WP:
                out |= 1ULL << 57
        elif e.pol.pm_uffd_wp and pte & PTE_UFFD_WP:
            out |= 1ULL << 57          # a uffd-wp marker: PM_UFFD_WP alone, no PM_SWAP (5.19)
        if e.pol.soft_dirty and vflags & VM_SOFTDIRTY:
            out |= 1ULL << 55
        return out
    if pte & PTE_PRESENT:
        pfn = <int64_t>pte_pfn(pte)
        out = (1ULL << 63) | <uint64_t>pfn
        if e.pol.soft_dirty and pte & PTE_SOFT_DIRTY:
            out |= 1ULL << 55
        if e.pol.pm_uffd_wp and pte & PTE_UFFD_WP:
            out |= 1ULL << 57
        if not (pte & PTE_SPECIAL):
            # folio_precise_page_mapcount(): the page's pte mappings plus
            # its folio's PMD mappings.
            mc = e.mapcount[pfn]
            if e.fflags[pfn] & (PG_HEAD | PG_TAIL):
                head = folio_of(e, pfn)
                mc += entire_mapcount(e, head)[0]
                if not e.pol.pm_thp_excl_per_page and e.nr_huge_pmd \
                        and pmd_trans_huge(pmd_slot(e, mm, va, False)[0]):
                    # pagemap_pmd_range: one value for the whole PMD, the head's.
                    mc = e.mapcount[head] + entire_mapcount(e, head)[0]
            if mc == 1:
                out |= 1ULL << 56                # PM_MMAP_EXCLUSIVE: mapped once
            if not (e.fflags[pfn] & PG_ANON):
                out |= 1ULL << 61                # PM_FILE
        elif is_huge_zero_pfn(e, pfn):
            out |= 1ULL << 61                    # a PMD's page that is not anon: PM_FILE
    elif pte != 0:
        out = 1ULL << 62                         # swap entry / marker
        if is_swap_pte(pte):
            out |= <uint64_t>swp_offset(pte) << 5    # swap type 0 | offset << MAX_SWAPFILES_SHIFT
        elif is_marker(pte):
            # A marker reads as a swap entry of the top non-swapfile type
            # (SWP_PTE_MARKER): 31, or 30 while SWP_SWAPIN_ERROR sat above it.
            out |= <uint64_t>e.pol.pm_marker_swp_type | (marker_bits(pte) << 5)
            if marker_bits(pte) & PTE_MARKER_GUARD and e.pol.pm_guard_region:
                out |= 1ULL << 58                # PM_GUARD_REGION
        if e.pol.soft_dirty and pte & PTE_SOFT_DIRTY:
            out |= 1ULL << 55
        if e.pol.pm_uffd_wp and pte & PTE_UFFD_WP:
            out |= 1ULL << 57
    if e.pol.soft_dirty and vflags & VM_SOFTDIRTY:
        out |= 1ULL << 55                        # a new VMA reads soft-dirty
    return out


cdef void move_back(engine_t *e, mm_t *mm, uint64_t new, uint64_t old, uint64_t length) noexcept nogil:
    cdef uint64_t off = 0, stop
    cdef uint64_t *s
    cdef uint64_t *d
    cdef int32_t *ns
    cdef int32_t *os
    while off < length:
        if e.nr_huge_pmd and ((new + off) | (old + off)) & (PMD_SPAN - 1) == 0 and length - off >= PMD_SPAN:
            ns = pmd_slot(e, mm, new + off, False)
            if ns != NULL and pmd_trans_huge(ns[0]):
                os = pmd_slot(e, mm, old + off, False)     # emptied by move_ptes: its dirs stay
                os[0] = ns[0]
                ns[0] = 0
                off += PMD_SPAN
                continue
        s = leaf_or_skip(e, mm.pgd, new + off, &stop)
        if s == NULL:
            off = stop - new if stop - new < length else length
            continue
        if s[((new + off) >> MM_PAGE_SHIFT) & 511] != 0:
            d = pte_table(e, mm, old + off, False)
            d[((old + off) >> MM_PAGE_SHIFT) & 511] = s[((new + off) >> MM_PAGE_SHIFT) & 511]
            s[((new + off) >> MM_PAGE_SHIFT) & 511] = 0
        off += MM_PAGE_SIZE


cdef int64_t move_ptes(engine_t *e, mm_t *mm, uint64_t old, uint64_t new, uint64_t length,
                       bint soft_dirty) noexcept nogil:
    """move_page_tables(): entries move, pages do not; a moved pte reads
    soft-dirty (move_soft_dirty_pte). Returns -1 if a table could not be
    allocated (nothing lost: the caller still has the old range)."""
    cdef uint64_t off = 0, pte, stop
    cdef uint64_t *s
    cdef uint64_t *d
    cdef int32_t *ss
    cdef int32_t *ds
    cdef int64_t i
    # move_huge_pmd(): a PMD leaf moves whole when both ends are 2 MiB
    # aligned and the new pmd is none; any other leaf in the way is split.
    split_huge_pmd_edges(e, mm, old, old + length)
    while off < length:
        if e.nr_huge_pmd and ((old + off) & (PMD_SPAN - 1)) == 0 and length - off >= PMD_SPAN:
            ss = pmd_slot(e, mm, old + off, False)
            if ss != NULL and pmd_trans_huge(ss[0]):
                ds = pmd_slot(e, mm, new + off, True) if ((new + off) & (PMD_SPAN - 1)) == 0 else NULL
                if ds != NULL and ds[0] == 0:
                    ds[0] = ss[0]
                    ss[0] = 0
                    if soft_dirty:
                        s = pmd_leaf_table(e, ds[0])
                        for i in range(HPAGE_PMD_NR):
                            s[i] |= PTE_SOFT_DIRTY
                    off += PMD_SPAN
                    continue
                split_huge_pmd_locked(e, mm, ss, old + off)
        s = leaf_or_skip(e, mm.pgd, old + off, &stop)
        if s == NULL:
            off = stop - old if stop - old < length else length
            continue
        pte = s[((old + off) >> MM_PAGE_SHIFT) & 511]
        if pte != 0:
            d = pte_table(e, mm, new + off, True)
            if d == NULL:
                # mremap's error path moves the entries back (the old
                # tables are all still there, so that cannot fail).
                move_back(e, mm, new, old, off)
                return -1
            if soft_dirty:
                pte |= PTE_SOFT_DIRTY
            if is_migration_entry(pte):
                e.mig_copies += 1   # a migration's record of this entry is stale now
            d[((new + off) >> MM_PAGE_SHIFT) & 511] = pte
            s[((old + off) >> MM_PAGE_SHIFT) & 511] = 0
        off += MM_PAGE_SIZE
    tlb_flush_range(e, mm.id, old, old + length)
    return 0
