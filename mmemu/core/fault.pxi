# The fault handler (mm/memory.c handle_mm_fault and friends). Outcomes are
# vm_fault_t-style codes, never exceptions: the entry points map them to
# Sigsegv / Sigbus / OutOfMemory / errno.

cdef enum:
    RECLAIM_BATCH = 32          # SWAP_CLUSTER_MAX: pages direct reclaim aims for


cdef inline bint anon_vma_compatible(const mm_vma_t *a, const mm_vma_t *b) noexcept nogil:
    # anon_vma_compatible() (mm/rmap.c): a neighbour whose anon_vma a new
    # fault may share: adjacent, same file at contiguous offsets, flags equal
    # but for the access bits and soft-dirty.
    cdef uint64_t ignore = VM_READ | VM_WRITE | VM_EXEC | VM_SOFTDIRTY | VM_ANON_VMA
    return (a.end == b.start and a.file == b.file and (a.flags & ~ignore) == (b.flags & ~ignore)
            and a.pgoff + ((a.end - a.start) >> MM_PAGE_SHIFT) == b.pgoff)


cdef inline void anon_vma_prepare(engine_t *e, mm_t *mm, mm_vma_t *vma) noexcept nogil:
    if not vma.anon_vma:            # the common case: prepared long ago
        anon_vma_prepare_slow(e, mm, vma)


cdef void anon_vma_prepare_slow(engine_t *e, mm_t *mm, mm_vma_t *vma) noexcept nogil:
    """anon_vma_prepare() (mm/rmap.c): give the VMA an anon_vma on the first
    fault that puts an anon page in it. find_mergeable_anon_vma() reuses the
    next VMA's, then the previous one's, when compatible and not shared
    through fork (reusable_anon_vma: its chain has one entry); else a new one.
    The core owns this field: layout changes carry it through set_vmas."""
    cdef Py_ssize_t i = vma - mm.vmas
    cdef mm_vma_t *w
    if vma.anon_vma:
        return
    if not 0 <= i < mm.nvma:
        i = -2                      # not in this mm's table: no neighbours to look at
    vma.avc_single = 1
    vma.flags |= VM_ANON_VMA
    if 0 <= i + 1 < mm.nvma:
        w = &mm.vmas[i + 1]
        if w.anon_vma and w.avc_single and anon_vma_compatible(vma, w):
            vma.anon_vma = w.anon_vma
            return
    if i > 0:
        w = &mm.vmas[i - 1]
        if w.anon_vma and w.avc_single and anon_vma_compatible(w, vma):
            vma.anon_vma = w.anon_vma
            return
    e.anon_vma_seq += 1
    vma.anon_vma = e.anon_vma_seq


cdef int do_anonymous_page(engine_t *e, mm_t *mm, int cpu, mm_vma_t *vma,
                           uint64_t va, uint64_t *ptep, int fflags, bint wp_marker) noexcept nogil:
    """Empty slot (or uffd-wp marker) of a private anon VMA (do_anonymous_page)."""
    cdef int64_t pfn
    cdef uint64_t entry
    cdef int ret
    if vma.flags & VM_UFFD_MISSING:
        # A write fault prepares the anon_vma before it hands the fault to
        # userspace (do_anonymous_page: vmf_anon_prepare, then the MISSING
        # check after allocation); a read fault does not.
        if fflags & FAULT_FLAG_WRITE:
            anon_vma_prepare(e, mm, vma)
        return handle_userfault(e, mm, vma, va, fflags, UFFD_REASON_MISSING)
    if not (fflags & FAULT_FLAG_WRITE):
        # Read: map the shared zero page, special and read-only.
        entry = pfn_pte(ZERO_PFN) | PTE_PRESENT | PTE_SPECIAL | PTE_YOUNG | vma_prot_bits(vma.flags)
        ptep[0] = mkuffd_wp(entry) if wp_marker else entry
        stat_add(e, MM_STAT_ZERO_FAULT, 1)
        return 0
    if (e.mthp_always | e.mthp_madvise | e.mthp_inherit) & MTHP_PTE_ORDERS:
        ret = do_anonymous_mthp(e, mm, cpu, vma, va, ptep, wp_marker)     # core/mthp.pxi
        if ret >= 0:
            return ret
    pfn = frame_alloc(e)
    if pfn < 0:
        return VM_FAULT_OOM
    anon_vma_prepare(e, mm, vma)        # anon_vma_prepare(): only a write fault needs one
    # folio_add_new_anon_rmap: a new anon page is exclusive (PG_anon_exclusive, 5.19+).
    e.fflags[pfn] |= PG_ANON | (PG_ANON_EXCLUSIVE if e.pol.anon_exclusive else 0)
    e.mapcount[pfn] = 1
    lru_add(e, cpu, pfn)
    entry = pfn_pte(pfn) | PTE_PRESENT | PTE_YOUNG | vma_prot_bits(vma.flags)
    # Dirty (and soft-dirty) and writable only if the VMA may be written: a
    # FOLL_FORCE write into a PROT_READ VMA gets a clean R/O page first.
    if vma.flags & VM_WRITE:
        entry |= PTE_WRITE | PTE_DIRTY | PTE_SOFT_DIRTY
    # Over a uffd-wp marker the new page is protected: the write retries
    # and takes the WP fault (two faults, 9c28a205c061).
    ptep[0] = mkuffd_wp(entry) if wp_marker else entry
    mm.rss_anon += 1
    stat_add(e, MM_STAT_ANON_FAULT, 1)
    return 0


cdef bint wp_can_reuse_refcount_drain(engine_t *e, int cpu, int64_t pfn) noexcept nogil:
    # 5.18 do_wp_page / modern wp_can_reuse_anon_folio: bail early on many
    # references, drain the local LRU batch if the page may sit in it, then
    # reuse only a page nobody else references.
    if e.fflags[pfn] & PG_KSM or e.refcount[pfn] > 3:
        return False
    if not (e.fflags[pfn] & PG_LRU):
        lru_drain(e, cpu)
    if e.refcount[pfn] > 1 + (1 if e.fflags[pfn] & PG_SWAPCACHE else 0):
        return False
    if e.fflags[pfn] & PG_SWAPCACHE:
        try_to_free_swap(e, pfn)        # 53a05ad9f21d: reuse exclusive swapcache pages
    return e.refcount[pfn] == 1


cdef bint wp_can_reuse(engine_t *e, mm_t *mm, int cpu, int64_t pfn, uint64_t va) noexcept nogil:
    """The era's reuse decision for a private anon page (semantics.md 3.2)."""
    cdef int rule = e.pol.wp_reuse
    if e.fflags[pfn] & (PG_HEAD | PG_TAIL):
        return wp_can_reuse_large(e, mm, cpu, pfn, va)  # core/huge.pxi
    if rule == WP_REUSE_MAPCOUNT:
        # <= 5.8 reuse_swap_page(): mapcount (+ swap count) == 1; extra GUP or
        # pipe references are ignored (the root of CVE-2020-29374). A KSM page
        # is reused only when nothing else holds it (reuse_ksm_page, 5.1-5.8),
        # and is an ordinary anon page from then on (page_move_anon_rmap).
        if e.fflags[pfn] & PG_KSM:
            if not e.pol.ksm_reuse or e.fflags[pfn] & PG_SWAPCACHE or e.refcount[pfn] != 1:
                return False
            e.fflags[pfn] &= ~PG_KSM
            return True
        if e.fflags[pfn] & PG_SWAPCACHE:
            # Other ptes still pointing at the swap slot are users too; a
            # reused page leaves the swapcache.
            if e.mapcount[pfn] + (e.swap_map[e.index[pfn]] & SWAP_COUNT_MASK) != 1:
                return False
            try_to_free_swap(e, pfn)
            return True
        return e.mapcount[pfn] == 1
    if rule == WP_REUSE_REFCOUNT:
        # 5.9-5.17, 09854ba94c6a: page_count == 1, KSM always copied.
        if e.fflags[pfn] & PG_KSM or e.refcount[pfn] != 1:
            return False
        return e.mapcount[pfn] == 1
    return wp_can_reuse_refcount_drain(e, cpu, pfn)


cdef int wp_page_copy(engine_t *e, mm_t *mm, int cpu, mm_vma_t *vma, uint64_t va,
                      uint64_t *ptep, int64_t old, bint unshare) noexcept nogil:
    """COW (or unshare) into a new exclusive anon page (wp_page_copy)."""
    cdef int64_t pfn = frame_alloc(e)
    cdef uint64_t orig = ptep[0], entry
    cdef int32_t vi
    if pfn < 0:
        return VM_FAULT_OOM
    cdef bint steps = e.sched_hook != NULL
    if steps:
        # do_wp_page decided to copy, took a reference (get_page) and dropped
        # the PTL: other threads run before the copy and again before the
        # PTL is re-taken, and CPUs may still write the old page through
        # their TLBs (B11).
        if old != ZERO_PFN:
            get_page(e, old, 1)
        sched_point(e, SP_COW_DECIDED, mm.id, va, <uint64_t>old)
    if frame_copy(e, pfn, old) < 0:
        frame_free(e, pfn)
        if steps and old != ZERO_PFN:
            put_page(e, old, 1)
        return VM_FAULT_NOMEM
    if steps:
        sched_point(e, SP_COW_COPIED, mm.id, va, <uint64_t>pfn)
        if old != ZERO_PFN:
            put_page(e, old, 1)
        vi = find_vma(mm, va)
        if ptep[0] != orig or vi < 0:
            frame_free(e, pfn)          # !pte_same: someone else handled it; retry
            return 0
        vma = &mm.vmas[vi]
    e.fflags[pfn] |= PG_ANON | (PG_ANON_EXCLUSIVE if e.pol.anon_exclusive else 0)
    e.mapcount[pfn] = 1
    lru_add(e, cpu, pfn)
    anon_vma_prepare(e, mm, vma)        # wp_page_copy: anon_vma_prepare()
    entry = pfn_pte(pfn) | PTE_PRESENT | PTE_YOUNG | vma_prot_bits(vma.flags)
    if unshare:
        # Unshare maps the copy R/O and keeps the tracking bits of the old pte.
        entry |= orig & (PTE_SOFT_DIRTY | PTE_UFFD_WP)
    else:
        entry |= PTE_DIRTY | PTE_SOFT_DIRTY
        if vma.flags & VM_WRITE:
            entry |= PTE_WRITE
    # ptep_clear_flush: no CPU may keep using the old page once the new one is
    # mapped, so the old translation is flushed before the switch.
    ptep[0] = 0
    tlb_flush_page(e, mm.id, va)
    ptep[0] = entry
    if old == ZERO_PFN or not (e.fflags[old] & PG_ANON):
        mm.rss_anon += 1
    if old != ZERO_PFN:
        e.mapcount[old] -= 1
        if e.pol.free_swapcache_after_cow and e.fflags[old] & PG_SWAPCACHE and swapcache_unmapped(e, old):
            try_to_free_swap(e, old)     # 5.14 f4c4a3f48480: an idle swapcache copy goes
        put_page(e, old, 1)
    stat_add(e, MM_STAT_UNSHARE if unshare else MM_STAT_COW, 1)
    return 0 if unshare else VM_FAULT_WRITE


cdef int do_wp_page(engine_t *e, mm_t *mm, int cpu, mm_vma_t *vma, uint64_t va,
                    uint64_t *ptep, int fflags) noexcept nogil:
    """Write (or unshare) fault on a present, non-writable pte (do_wp_page)."""
    cdef uint64_t pte = ptep[0]
    cdef bint unshare = (fflags & FAULT_FLAG_UNSHARE) != 0 and not (fflags & FAULT_FLAG_WRITE)
    cdef int64_t pfn
    stat_add(e, MM_STAT_WP_FAULT, 1)
    if pte & PTE_UFFD_WP and vma.flags & VM_UFFD_WP and not unshare:
        # uffd-wp first (semantics.md 3.1): WP_ASYNC resolves in place (6.7),
        # otherwise the monitor hears of it.
        if vma.uffd > 0 and vma.uffd < e.nuffd and e.uffd_feat[vma.uffd] & UFFD_FEATURE_WP_ASYNC:
            pte &= ~PTE_UFFD_WP
            ptep[0] = pte
        else:
            return handle_userfault(e, mm, vma, va, fflags, UFFD_REASON_WP)
    if e.pol.uffd_wp_flush_pending and vma.flags & VM_UFFD_WP and mm.tlb_flush_pending:
        # 6ce64428d620 (5.12): a uffd-wp change may have deferred its flush;
        # flush this page before deciding to copy or reuse it, so no stale
        # writable entry writes the old page after the copy (B11).
        tlb_flush_page(e, mm.id, va)
    if pte & PTE_SPECIAL:
        # The zero page: COW (or, for a long-term R/O pin, unshare) into a fresh page.
        return wp_page_copy(e, mm, cpu, vma, va, ptep, ZERO_PFN, unshare)
    pfn = <int64_t>pte_pfn(pte)
    if vma.flags & VM_SHARED:
        # wp_page_shared / unshare of a shared mapping: never a COW.
        if unshare:
            return 0
        return wp_page_shared(e, vma, ptep, pfn)
    if e.fflags[pfn] & PG_ANON:
        if (e.pol.anon_exclusive and (e.fflags[pfn] & PG_ANON_EXCLUSIVE)) or wp_can_reuse(e, mm, cpu, pfn, va):
            # 5.19+: a reused page is exclusive from now on.
            if e.pol.anon_exclusive:
                e.fflags[pfn] |= PG_ANON_EXCLUSIVE
            if unshare:
                return 0
            # wp_page_reuse: young, dirty; writable only if the VMA is.
            pte |= PTE_YOUNG | PTE_DIRTY | PTE_SOFT_DIRTY
            if vma.flags & VM_WRITE:
                pte |= PTE_WRITE
            ptep[0] = pte
            stat_add(e, MM_STAT_REUSE, 1)
            return VM_FAULT_WRITE
    return wp_page_copy(e, mm, cpu, vma, va, ptep, pfn, unshare)


cdef int handle_mm_fault(engine_t *e, mm_t *mm, int cpu, uint64_t va, int fflags) noexcept nogil:
    return handle_mm_fault_pte(e, mm, cpu, va, fflags, NULL) & ~VM_FAULT_REWALK


cdef int handle_mm_fault_pte(engine_t *e, mm_t *mm, int cpu, uint64_t va, int fflags,
                             uint64_t *ptep) noexcept nogil:
    """handle_mm_fault with the caller's pte pointer when its walk found the
    pte page (page-table pages never move, so the pointer stays valid)."""
    cdef int32_t vi = find_vma(mm, va)
    cdef mm_vma_t *vma
    cdef uint64_t pte
    cdef bint wp_marker
    cdef int ret
    cdef int64_t nr_pmd
    cdef bint tried = False
    mm.minflt += 1
    stat_add(e, MM_STAT_FAULT, 1)
    if vi < 0:
        return VM_FAULT_SIGSEGV
    vma = &mm.vmas[vi]
    if fflags & FAULT_FLAG_ARCH:
        # x86 do_user_addr_fault() -> access_error(): every CPU access to a
        # user address, a kernel-mode copy_to/from_user too; GUP checked the
        # VMA itself (check_vma_flags).
        if fflags & FAULT_FLAG_WRITE:
            if not (vma.flags & VM_WRITE):
                return VM_FAULT_SIGSEGV | VM_FAULT_ACCERR
        elif not (vma.flags & (VM_READ | VM_WRITE | VM_EXEC)):
            return VM_FAULT_SIGSEGV | VM_FAULT_ACCERR
    if vma.flags & VM_HUGETLB:
        return hugetlb_fault(e, mm, cpu, vma, va, fflags)     # core/hugetlb.pxi
    if e.nr_huge_pmd or vma.flags & VM_HUGEPAGE or e.thp_enabled == 2 or e.mthp_always >> HPAGE_PMD_ORDER:
        tried = True
        # The PMD level (__handle_mm_fault): a THP fault, or one on a PMD leaf.
        nr_pmd = e.nr_huge_pmd
        ret = huge_pmd_fault(e, mm, cpu, vma, va, fflags)    # core/huge.pxi
        if not (ret & VM_FAULT_FALLBACK):
            return ret
        if e.nr_huge_pmd != nr_pmd:
            # A PMD was split (VM_FAULT_FALLBACK): the fault goes on from the
            # pmd (__handle_mm_fault), which a shmem PMD's split left none -
            # its table gone, so a caller's pte pointer is stale: REWALK.
            mm.minflt -= 1
            stat_add(e, MM_STAT_FAULT, -1)
            return handle_mm_fault_pte(e, mm, cpu, va, fflags, NULL) | VM_FAULT_REWALK
    if ptep == NULL:
        if not tried and vma.file and (e.shmem_thp_on or e.nr_large):
            # A shmem VMA with no pte table here (pmd_none): a PMD may map a
            # THP of its cache (do_file_huge_fault). Kept off the path of a
            # fault whose caller found the pte page: that pmd is not none.
            ret = huge_pmd_fault(e, mm, cpu, vma, va, fflags)
            if not (ret & VM_FAULT_FALLBACK):
                return ret
        ptep = pte_offset(e, mm, va, True)
        if ptep == NULL:
            return table_alloc_failed(e)
    pte = ptep[0]
    if pte == 0 or is_marker(pte):
        wp_marker = False
        if pte != 0:
            # handle_pte_marker()
            if marker_bits(pte) & PTE_MARKER_POISONED:
                return VM_FAULT_SIGBUS | VM_FAULT_HWPOISON
            if marker_bits(pte) & PTE_MARKER_GUARD:
                return VM_FAULT_SIGSEGV
            if vma.flags & VM_UFFD_WP:
                wp_marker = True
            else:
                ptep[0] = 0             # a leftover marker: drop it, an ordinary fault
        if vma.file:
            return do_file_fault(e, mm, cpu, vma, va, ptep, fflags, wp_marker)
        return do_anonymous_page(e, mm, cpu, vma, va, ptep, fflags, wp_marker)
    if not (pte & PTE_PRESENT):
        if is_swap_pte(pte):
            return do_swap_page(e, mm, cpu, vma, va, ptep, fflags)
        if is_migration_entry(pte):
            # migration_entry_wait(): sleep until the entry is gone, retry.
            sched_point(e, SP_MIGRATION_WAIT, mm.id, va, <uint64_t>swp_offset(pte))
            return 0
        return VM_FAULT_SIGBUS
    if pte & PTE_PROTNONE and vma.flags & (VM_READ | VM_WRITE | VM_EXEC):
        return do_numa_page(e, mm, cpu, vma, va, ptep)     # core/migrate.pxi
    if fflags & (FAULT_FLAG_WRITE | FAULT_FLAG_UNSHARE):
        if not (pte & PTE_WRITE):
            return do_wp_page(e, mm, cpu, vma, va, ptep, fflags)
        if fflags & FAULT_FLAG_WRITE:
            pte |= PTE_DIRTY | PTE_SOFT_DIRTY
    ptep[0] = pte | PTE_YOUNG
    return 0


cdef inline int tlb_fill(engine_t *e, uint64_t *ptep, bint write, int64_t slot, uint64_t tag,
                         int64_t *pfn_out) noexcept nogil:
    """The MMU's walk result: fill the TLB if the pte allows the access. The
    walk sets accessed (and dirty for a write), never the software
    soft-dirty bit."""
    cdef uint64_t pte = ptep[0]
    if (pte & (PTE_PRESENT | PTE_PROTNONE)) != PTE_PRESENT or (write and not (pte & PTE_WRITE)):
        return 0
    pte |= PTE_YOUNG
    if write:
        pte |= PTE_DIRTY
    ptep[0] = pte
    tlb_mm_mark(e, slot, tag)
    e.tlb_tag[slot] = tag
    e.tlb_pte[slot] = pte & (PTE_PFN_MASK | PTE_WRITE | PTE_DIRTY)
    pfn_out[0] = <int64_t>pte_pfn(pte)
    return 1


cdef inline int tlb_fill_unexpanded(engine_t *e, uint64_t *t, uint64_t va, bint write, int64_t slot,
                                    uint64_t tag, int64_t *pfn_out) noexcept nogil:
    """tlb_fill on an unexpanded PMD leaf: its entry for va is entry 0 plus
    the page's offset. Filled without writing while the walk has no bit to
    set (a fault maps a THP young and dirty); otherwise the leaf is written
    out and the entry takes the bit as any pte does."""
    cdef uint64_t i = (va >> MM_PAGE_SHIFT) & 511
    cdef uint64_t pte = pmd_leaf_expansion(t[0], i)
    if (pte & (PTE_PRESENT | PTE_PROTNONE)) != PTE_PRESENT or (write and not (pte & PTE_WRITE)):
        return 0
    if not (pte & PTE_YOUNG) or (write and not (pte & PTE_DIRTY)):
        pmd_leaf_expand(t)
        return tlb_fill(e, t + i, write, slot, tag, pfn_out)
    tlb_mm_mark(e, slot, tag)
    e.tlb_tag[slot] = tag
    e.tlb_pte[slot] = pte & (PTE_PFN_MASK | PTE_WRITE | PTE_DIRTY)
    pfn_out[0] = <int64_t>pte_pfn(pte)
    return 1


cdef inline int user_access(engine_t *e, mm_t *mm, int cpu, uint64_t va, bint write,
                     int64_t *pfn_out, int uflag=FAULT_FLAG_USER) noexcept nogil:
    """One user-mode access through this CPU's TLB: the MMU's view. Returns 0
    with the frame, or the fault code (e.fault_addr = va)."""
    cdef uint64_t vpn = va >> MM_PAGE_SHIFT
    cdef uint64_t tag = tlb_tag_of(mm.id, vpn)
    cdef int64_t slot = tlb_slot(cpu, mm.id, vpn)
    cdef uint64_t ent
    cdef uint64_t *ptep
    cdef uint64_t *leaf
    cdef int ret, attempt
    if e.tlb_tag[slot] == tag:
        ent = e.tlb_pte[slot]
        if not write or (ent & (PTE_WRITE | PTE_DIRTY)) == (PTE_WRITE | PTE_DIRTY):
            stat_add(e, MM_STAT_TLB_HIT, 1)
            pfn_out[0] = <int64_t>pte_pfn(ent)
            return 0
        if ent & PTE_WRITE and e.tlb_stale_writes:
            # The worst-case model: a clean writable entry takes the store too.
            e.tlb_pte[slot] = ent | PTE_DIRTY
            stat_add(e, MM_STAT_TLB_HIT, 1)
            pfn_out[0] = <int64_t>pte_pfn(ent)
            return 0
        if ent & PTE_WRITE:
            # x86: a writable entry with dirty clear makes the MMU re-walk and
            # set the pte's dirty bit, if the pte still allows it.
            ptep = pte_offset(e, mm, va, False)
            if ptep != NULL and (ptep[0] & (PTE_PRESENT | PTE_WRITE | PTE_PROTNONE)) == (PTE_PRESENT | PTE_WRITE) \
                    and pte_pfn(ptep[0]) == pte_pfn(ent):
                ptep[0] |= PTE_DIRTY | PTE_YOUNG
                e.tlb_pte[slot] = ent | PTE_DIRTY
                pfn_out[0] = <int64_t>pte_pfn(ent)
                return 0
        e.tlb_tag[slot] = 0
    stat_add(e, MM_STAT_TLB_MISS, 1)
    ptep = pte_offset_walk(e, mm, va, &leaf)
    for attempt in range(6):
        if ptep != NULL:
            if tlb_fill(e, ptep, write, slot, tag, pfn_out):
                return 0
        elif leaf != NULL and tlb_fill_unexpanded(e, leaf, va, write, slot, tag, pfn_out):
            return 0
        # A kernel-mode access (copy_*_user) faults without FAULT_FLAG_USER.
        if e.sched_hook == NULL:
            ret = handle_mm_fault_pte(e, mm, cpu, va, uflag | FAULT_FLAG_ARCH | (FAULT_FLAG_WRITE if write else 0),
                                      ptep)
        else:
            sched_point(e, SP_MMAP_LOCK_READ, mm.id, va, write)
            ret = handle_mm_fault_pte(e, mm, cpu, va, uflag | FAULT_FLAG_ARCH | (FAULT_FLAG_WRITE if write else 0),
                                      ptep)
            sched_point(e, SP_MMAP_UNLOCK_READ, mm.id, va, write)
        if ret & VM_FAULT_REWALK:
            ptep = NULL                             # a split shmem PMD took its table
            ret &= ~VM_FAULT_REWALK
        if ret & VM_FAULT_OOM and reclaim_pages(e, cpu, RECLAIM_BATCH) > 0:
            continue            # direct reclaim freed frames: fault again
        if ret & VM_FAULT_ERROR:
            e.fault_addr = va
            return ret
        if ptep == NULL:
            ptep = pte_offset_walk(e, mm, va, &leaf)
    # Every fault "succeeded" and the pte still refuses the access: Linux
    # would take the same fault for ever (a uffd-wp entry in a VMA no longer
    # registered: hugetlb_wp() never COWs it; B22's child).
    e.fault_addr = va
    return VM_FAULT_LIVELOCK
