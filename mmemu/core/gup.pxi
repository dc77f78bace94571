# GUP (mm/gup.c): check_vma_flags, follow_page_pte, faultin_page, the
# reference it takes. Era differences come from e.pol only.

cdef enum:
    FOLLOW_OK = 0
    FOLLOW_FAULT = 1          # not present / not writable: fault and retry
    FOLLOW_UNSHARE = 2        # gup_must_unshare(): FAULT_FLAG_UNSHARE and retry
    FOLLOW_EFAULT = 3


cdef int check_vma_flags(mm_vma_t *vma, int gup_flags) noexcept nogil:
    """0 or an errno (check_vma_flags, modern [v]; same shape since 4.9)."""
    cdef uint64_t f = vma.flags
    if f & (VM_IO | VM_PFNMAP):
        return CORE_EFAULT
    if gup_flags & FOLL_WRITE:
        if not (f & VM_WRITE):
            if not (gup_flags & FOLL_FORCE):
                return CORE_EFAULT
            # FOLL_FORCE may write only into a private, may-write mapping.
            if f & VM_HUGETLB or not is_cow_mapping(f):
                return CORE_EFAULT
    elif not (f & VM_READ):
        if not (gup_flags & FOLL_FORCE) or not (f & VM_MAYREAD):
            return CORE_EFAULT
    return 0


cdef bint can_follow_write_pte(engine_t *e, mm_vma_t *vma, uint64_t pte, int gup_flags) noexcept nogil:
    cdef int64_t pfn
    if pte & PTE_WRITE:
        return True
    if e.pol.foll_cow_rule == FOLL_COW_FORCE_DIRTY:
        # 4.9-5.7 and 5.9-5.19: after a forced COW the retry trusts a dirty pte.
        return (gup_flags & FOLL_FORCE) != 0 and (gup_flags & FOLL_COW) != 0 and (pte & PTE_DIRTY) != 0
    if e.pol.foll_cow_rule == FOLL_COW_DIRTY:
        # 5.8 (17839856fd58): FOLL_FORCE is no longer required.
        return (gup_flags & FOLL_COW) != 0 and (pte & PTE_DIRTY) != 0
    # 6.0+ (5535be309971): only an exclusive anon page in a private mapping
    # without VM_WRITE, and never one that tracking wants to see written.
    if not (gup_flags & FOLL_FORCE):
        return False
    if vma.flags & (VM_MAYSHARE | VM_SHARED) or not (vma.flags & VM_MAYWRITE) or vma.flags & VM_WRITE:
        return False
    if pte & PTE_SPECIAL:
        return False
    pfn = <int64_t>pte_pfn(pte)
    if not (e.fflags[pfn] & PG_ANON) or not (e.fflags[pfn] & PG_ANON_EXCLUSIVE):
        return False
    if vma_soft_dirty_tracking(e, vma.flags) and not (pte & PTE_SOFT_DIRTY):
        return False
    return not (pte & PTE_UFFD_WP)


cdef bint gup_must_unshare(engine_t *e, mm_vma_t *vma, int gup_flags, uint64_t pte) noexcept nogil:
    # mm/internal.h gup_must_unshare(): only R/O FOLL_PIN.
    cdef int64_t pfn
    if not (gup_flags & FOLL_PIN) or gup_flags & FOLL_WRITE:
        return False
    if not (pte & PTE_SPECIAL):
        pfn = <int64_t>pte_pfn(pte)
        if e.fflags[pfn] & PG_ANON:
            # 5.19 a7f226604170: a possibly shared anon page is unshared first.
            return e.pol.gup_unshare_anon != 0 and not (e.fflags[pfn] & PG_ANON_EXCLUSIVE)
    # 6.2 84209e87c696: long-term R/O pins of the zero page / page cache in a
    # COW mapping get a private anon copy too.
    return e.pol.gup_unshare_nonanon != 0 and (gup_flags & FOLL_LONGTERM) != 0 \
        and is_cow_mapping(vma.flags)


cdef int follow_page_pte(engine_t *e, mm_t *mm, mm_vma_t *vma, uint64_t va, int gup_flags,
                         int64_t *pfn_out) noexcept nogil:
    cdef uint64_t *ptep = pte_offset(e, mm, va, False)
    cdef uint64_t pte
    cdef int64_t pfn
    if ptep == NULL:
        return FOLLOW_FAULT
    pte = ptep[0]
    if not (pte & PTE_PRESENT):
        return FOLLOW_FAULT
    if pte & PTE_PROTNONE and gup_flags & FOLL_HONOR_NUMA_FAULT and vma.flags & (VM_READ | VM_WRITE | VM_EXEC):
        return FOLLOW_FAULT
    if gup_flags & FOLL_WRITE and not can_follow_write_pte(e, vma, pte, gup_flags):
        return FOLLOW_FAULT
    if gup_must_unshare(e, vma, gup_flags, pte):
        return FOLLOW_UNSHARE
    if pte & PTE_SPECIAL:
        if gup_flags & FOLL_DUMP:
            return FOLLOW_EFAULT        # a core dump skips the zero page
        pfn_out[0] = ZERO_PFN
        return FOLLOW_OK
    pfn = <int64_t>pte_pfn(pte)
    # try_grab_folio(): FOLL_GET takes a reference, FOLL_PIN the pin bias.
    if gup_flags & FOLL_PIN:
        # A large folio's pin is counted on its head as well (the kernel
        # keeps _pincount there; the bias gives the same maybe-pinned test).
        e.refcount[folio_of(e, pfn)] += GUP_PIN_COUNTING_BIAS
        folio_pin_count(e, pfn, 1)
        if e.pol.mm_has_pinned:
            mm.flags |= MMF_HAS_PINNED
    elif gup_flags & FOLL_GET:
        e.refcount[folio_of(e, pfn)] += 1
    if gup_flags & FOLL_TOUCH:
        ptep[0] = pte | PTE_YOUNG
        if gup_flags & FOLL_WRITE:
            e.fflags[folio_of(e, pfn)] |= PG_DIRTY
    pfn_out[0] = pfn
    return FOLLOW_OK


cdef int64_t gup_range(engine_t *e, mm_t *mm, int cpu, uint64_t start, int64_t npages,
                       int gup_flags, int64_t *pfns, int *err) noexcept nogil:
    """__get_user_pages(): the number of pages done; *err is the errno that
    stopped it (0 when all were done). pfns may be NULL (populate)."""
    cdef int64_t i
    cdef uint64_t va
    cdef int32_t vi
    cdef mm_vma_t *vma
    cdef int flags, res, ret, fault_flags, tries, rc
    cdef int64_t pfn
    err[0] = 0
    for i in range(npages):
        va = start + (<uint64_t>i << MM_PAGE_SHIFT)
        vi = find_vma(mm, va)
        if vi < 0:
            err[0] = CORE_ENOMEM if gup_flags & FOLL_MADV_POPULATE else CORE_EFAULT
            return i
        vma = &mm.vmas[vi]
        rc = check_vma_flags(vma, gup_flags)
        if rc:
            err[0] = CORE_EINVAL if gup_flags & FOLL_MADV_POPULATE else rc
            return i
        flags = gup_flags
        # 5.8 (17839856fd58): a reference to a page of a COW mapping is taken
        # for writing, breaking COW now; added after the VMA check, so a read
        # pin of a PROT_READ private mapping still goes through.
        if is_cow_mapping(vma.flags) and (
                (e.pol.gup_forced_cow == FORCED_COW_GET_AND_PIN and flags & (FOLL_GET | FOLL_PIN)) or
                (e.pol.gup_forced_cow == FORCED_COW_GET_ONLY and flags & FOLL_GET)):
            flags |= FOLL_WRITE
        tries = 0
        while True:
            res = follow_page_pte(e, mm, vma, va, flags, &pfn)
            if res == FOLLOW_OK:
                break
            if res == FOLLOW_EFAULT or tries >= 8 or flags & FOLL_NOFAULT:
                err[0] = CORE_EFAULT
                return i
            fault_flags = FAULT_FLAG_REMOTE if flags & FOLL_FORCE else 0
            # faultin_page(): only a caller that passed `locked` (6.3+:
            # FOLL_UNLOCKABLE) lets the fault drop mmap_lock and retry; a
            # remote GUP without it (access_remote_vm) cannot wait on a uffd.
            if flags & FOLL_REMOTE and not flags & FOLL_UNLOCKABLE:
                fault_flags |= FAULT_FLAG_NO_RETRY
            if res == FOLLOW_UNSHARE:
                fault_flags |= FAULT_FLAG_UNSHARE
            elif flags & FOLL_WRITE:
                fault_flags |= FAULT_FLAG_WRITE
            ret = handle_mm_fault(e, mm, cpu, va, fault_flags)
            if ret & VM_FAULT_OOM and reclaim_pages(e, cpu, RECLAIM_BATCH) > 0:
                tries += 1
                continue
            if ret & VM_FAULT_ERROR:
                e.fault_addr = va
                if ret & VM_FAULT_UFFD:
                    err[0] = -1             # waits on a userfaultfd: the caller decides
                elif ret & (VM_FAULT_OOM | VM_FAULT_NOMEM):
                    err[0] = CORE_ENOMEM
                elif ret & VM_FAULT_HWPOISON and flags & FOLL_MADV_POPULATE:
                    # vm_fault_to_errno() with FOLL_HWPOISON, which
                    # madvise_populate() passes: EHWPOISON, not EFAULT.
                    err[0] = CORE_EHWPOISON
                else:
                    err[0] = CORE_EFAULT
                return i
            # faultin_page(), 4.9-5.19: a COW done for a VMA without VM_WRITE
            # lets the retry trust the dirty, read-only pte (FOLL_COW).
            if ret & VM_FAULT_WRITE and not (vma.flags & VM_WRITE) and \
                    e.pol.foll_cow_rule != FOLL_FORCE_ANON_EXCLUSIVE:
                flags |= FOLL_COW
            tries += 1
            if e.sched_hook != NULL:
                # The fault is done; the retry of follow_page is a step of its
                # own (cond_resched; others may zap or map the pte meanwhile: B16).
                sched_point(e, SP_GUP_RETRY, mm.id, va, <uint64_t>flags)
                vi = find_vma(mm, va)
                if vi < 0:
                    err[0] = CORE_EFAULT
                    return i
                vma = &mm.vmas[vi]
        if pfns != NULL:
            pfns[i] = pfn
        stat_add(e, MM_STAT_GUP, 1)
    return npages


cdef void unpin_pages(engine_t *e, const int64_t *pfns, int64_t n, int32_t per_page) noexcept nogil:
    cdef int64_t i
    for i in range(n):
        if per_page == GUP_PIN_COUNTING_BIAS:
            folio_pin_count(e, pfns[i], -1)     # unpin_user_page
        put_page(e, pfns[i], per_page)
