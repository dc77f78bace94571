# Page caches of shmem files (memfd, shared anon) and the faults on file VMAs
# (mm/memory.c do_fault / do_read_fault / do_cow_fault / do_shared_fault,
# do_fault_around; mm/shmem.c shmem_get_folio; mm/truncate.c).

cdef inline mm_file_t *file_of(engine_t *e, int32_t id) noexcept nogil:
    return &e.files[id]


cdef inline uint64_t *cache_slot(engine_t *e, mm_file_t *f, uint64_t index, bint alloc) noexcept nogil:
    cdef uint64_t *t = table_leaf(e, f.root, index << MM_PAGE_SHIFT, alloc, &f.nr_leaves)
    if t == NULL:
        return NULL
    return t + (index & 511)


cdef inline uint64_t file_pages(mm_file_t *f) noexcept nogil:
    return (<uint64_t>f.size + MM_PAGE_SIZE - 1) >> MM_PAGE_SHIFT


cdef inline uint64_t vma_index(mm_vma_t *vma, uint64_t va) noexcept nogil:
    return vma.pgoff + ((va - vma.start) >> MM_PAGE_SHIFT)


cdef inline bint vma_wants_writenotify(engine_t *e, mm_vma_t *vma) noexcept nogil:
    # Shared writable VMAs map read faults writable unless something must see
    # the first write: soft-dirty tracking (64e455079e1b) or, 6.2+, uffd-wp.
    # shmem has no dirty accounting and no page_mkwrite.
    return flags_want_writenotify(e, vma.flags)


cdef inline uint64_t file_pte(engine_t *e, mm_vma_t *vma, int64_t pfn, bint write) noexcept nogil:
    """set_pte_range(): a pte mapping page-cache folio pfn in vma."""
    cdef uint64_t entry = pfn_pte(pfn) | PTE_PRESENT | PTE_YOUNG | vma_prot_bits(vma.flags)
    if write:
        entry |= PTE_DIRTY | PTE_SOFT_DIRTY
        if vma.flags & VM_WRITE:
            entry |= PTE_WRITE
    elif vma.flags & VM_SHARED and vma.flags & VM_WRITE and not vma_wants_writenotify(e, vma):
        entry |= PTE_WRITE          # vm_page_prot of a shared writable VMA has write
        if e.fflags[pfn] & PG_DIRTY:
            entry |= PTE_DIRTY
    return entry


cdef int64_t shmem_get_folio(engine_t *e, mm_file_t *f, uint64_t index, bint alloc, int cpu,
                             int *ret) noexcept nogil:
    """The cache folio at index, read back from swap or allocated (zeroed)
    if asked; -1 with *ret = 0 when absent and not allocated, or the fault
    code on failure. A hugetlbfs file's base page is looked up in its huge
    page (read(2) only: nothing allocates one here)."""
    cdef uint64_t *slot
    cdef int64_t pfn, per
    ret[0] = 0
    if f.hstate:
        per = hstate_pages(f.hstate - 1)
        slot = cache_slot(e, f, index & ~(<uint64_t>per - 1), False)
        if slot == NULL or not (slot[0] & PTE_PRESENT):
            return -1
        return <int64_t>pte_pfn(slot[0]) + <int64_t>(index & (<uint64_t>per - 1))
    slot = cache_slot(e, f, index, alloc)
    if slot == NULL:
        if alloc:
            ret[0] = table_alloc_failed(e)
        return -1
    if slot[0] & PTE_PRESENT:
        return <int64_t>pte_pfn(slot[0])
    if slot[0] != 0:
        return shmem_swapin(e, f, index, slot, cpu, ret)
    if not alloc:
        return -1
    pfn = frame_alloc(e)
    if pfn < 0:
        ret[0] = VM_FAULT_OOM
        return -1
    e.fflags[pfn] |= PG_FILE
    e.mapping[pfn] = <uint16_t>f.id
    e.index[pfn] = <uint32_t>index
    slot[0] = pfn_pte(pfn) | PTE_PRESENT     # the cache's reference is the alloc's
    f.nrpages += 1
    lru_add(e, cpu, pfn)
    return pfn


cdef int64_t file_map_pages(engine_t *e, mm_t *mm, mm_vma_t *vma, mm_file_t *f, uint64_t *table,
                            int64_t first, int64_t last, uint64_t va0) noexcept nogil:
    """filemap_map_pages(): map the cached, in-size folios of pte slots
    [first, last] of this pte page that are pte_none. Never allocates, never
    touches markers or present ptes."""
    cdef int64_t i, pfn, mapped = 0
    cdef uint64_t va, index, npages = file_pages(f)
    cdef uint64_t *cs
    for i in range(first, last + 1):
        if table[i] != 0:
            continue
        va = va0 + (<uint64_t>(i - first) << MM_PAGE_SHIFT)
        index = vma_index(vma, va)
        if index >= npages:
            continue
        cs = cache_slot(e, f, index, False)
        if cs == NULL or not (cs[0] & PTE_PRESENT):
            continue
        pfn = <int64_t>pte_pfn(cs[0])
        if not (e.fflags[pfn] & PG_UPTODATE):
            continue                            # next_uptodate_folio(): fallocate'd, never read
        e.refcount[pfn] += 1
        e.mapcount[pfn] += 1
        table[i] = file_pte(e, vma, pfn, False)
        mapped += 1
    stat_add(e, MM_STAT_FAULT_AROUND, mapped)
    return mapped


cdef bint should_fault_around(engine_t *e, mm_vma_t *vma) noexcept nogil:
    # Only file VMAs with ->map_pages; not uffd-armed in the era's sense:
    # 5.14-5.18 skipped MINOR (c949b097ef2e), 5.19+ WP or MINOR
    # (uffd_disable_fault_around, 9c28a205c061).
    if e.pol.fault_around_pages <= 1:
        return False
    if e.pol.fault_around_uffd >= 2 and vma.flags & (VM_UFFD_WP | VM_UFFD_MINOR):
        return False
    if e.pol.fault_around_uffd >= 1 and vma.flags & VM_UFFD_MINOR:
        return False
    return True


cdef void do_fault_around(engine_t *e, mm_t *mm, mm_vma_t *vma, mm_file_t *f, uint64_t va,
                          uint64_t *ptep) noexcept nogil:
    """The aligned window of fault_around_pages around va, clipped to the
    VMA and to this pte page."""
    cdef int64_t n = e.pol.fault_around_pages
    cdef int64_t pte_off = <int64_t>((va >> MM_PAGE_SHIFT) & 511)
    cdef int64_t vma_off = <int64_t>((va - vma.start) >> MM_PAGE_SHIFT)
    cdef int64_t vma_left = <int64_t>((vma.end - va) >> MM_PAGE_SHIFT)
    cdef int64_t from_pte = (pte_off // n) * n
    cdef int64_t to_pte
    if pte_off - from_pte > vma_off:
        from_pte = pte_off - vma_off
    to_pte = from_pte + n
    if to_pte > MM_PTRS:
        to_pte = MM_PTRS
    if to_pte > pte_off + vma_left:
        to_pte = pte_off + vma_left
    file_map_pages(e, mm, vma, f, ptep - pte_off, from_pte, to_pte - 1,
                   va - (<uint64_t>(pte_off - from_pte) << MM_PAGE_SHIFT))


cdef int do_file_fault(engine_t *e, mm_t *mm, int cpu, mm_vma_t *vma, uint64_t va,
                       uint64_t *ptep, int fflags, bint wp_marker) noexcept nogil:
    """Empty slot (or uffd-wp marker) of a file VMA (do_fault)."""
    cdef mm_file_t *f = file_of(e, vma.file)
    cdef uint64_t index = vma_index(vma, va)
    cdef int64_t pfn, new
    cdef int ret = 0
    cdef bint write = (fflags & FAULT_FLAG_WRITE) != 0
    cdef uint64_t *cs
    cdef uint64_t entry
    stat_add(e, MM_STAT_FILE_FAULT, 1)
    # do_read_fault(): fault-around runs before ->fault, which finds EOF.
    if not write and not wp_marker and should_fault_around(e, vma):
        do_fault_around(e, mm, vma, f, va, ptep)
        if ptep[0] != 0:
            return 0
    if f.falloc_start < f.falloc_end and f.falloc_start <= <int64_t>index < f.falloc_end \
            and e.sched_hook != NULL:
        # shmem_falloc_wait(): a fault on a hole being punched sleeps until
        # the punch is over, then retries (VM_FAULT_RETRY). Fault-around
        # above does not look (B23's alias interleaving).
        sched_point(e, SP_FALLOC_WAIT, mm.id, va, <uint64_t>f.id)
        return 0
    if write and not (vma.flags & VM_SHARED):
        anon_vma_prepare(e, mm, vma)                # do_cow_fault: vmf_anon_prepare() before ->fault
    if index >= file_pages(f):
        return VM_FAULT_SIGBUS                  # beyond i_size
    # shmem_get_folio(): "missing" means missing from the file; a cached (or
    # swapped) folio is a MINOR fault in a MINOR-registered VMA.
    cs = cache_slot(e, f, index, False)
    if cs == NULL or cs[0] == 0:
        if vma.flags & VM_UFFD_MISSING:
            return handle_userfault(e, mm, vma, va, fflags, UFFD_REASON_MISSING)
    elif vma.flags & VM_UFFD_MINOR:
        return handle_userfault(e, mm, vma, va, fflags, UFFD_REASON_MINOR)
    pfn = shmem_get_folio(e, f, index, True, cpu, &ret)
    if pfn < 0:
        return ret
    e.fflags[pfn] |= PG_UPTODATE                # shmem_fault zeroes it if needed
    if write and not (vma.flags & VM_SHARED):
        # do_cow_fault: a private copy; the cache is untouched.
        new = frame_alloc(e)
        if new < 0:
            return VM_FAULT_OOM
        if frame_copy(e, new, pfn) < 0:
            frame_free(e, new)
            return VM_FAULT_NOMEM
        e.fflags[new] |= PG_ANON | (PG_ANON_EXCLUSIVE if e.pol.anon_exclusive else 0)
        e.mapcount[new] = 1
        lru_add(e, cpu, new)
        anon_vma_prepare(e, mm, vma)
        entry = pfn_pte(new) | PTE_PRESENT | PTE_YOUNG | PTE_DIRTY | PTE_SOFT_DIRTY \
            | vma_prot_bits(vma.flags)
        # maybe_mkwrite() (set_pte_range, do_set_pte before 6.2): writable only
        # under VM_WRITE; a FOLL_FORCE COW of a read-only mapping stays R/O.
        if vma.flags & VM_WRITE:
            entry |= PTE_WRITE
        ptep[0] = mkuffd_wp(entry) if wp_marker else entry
        mm.rss_anon += 1
        return 0
    e.refcount[pfn] += 1
    e.mapcount[pfn] += 1
    if write:
        e.fflags[pfn] |= PG_DIRTY               # do_shared_fault
    entry = file_pte(e, vma, pfn, write)
    ptep[0] = mkuffd_wp(entry) if wp_marker else entry
    return 0


cdef int wp_page_shared(engine_t *e, mm_vma_t *vma, uint64_t *ptep, int64_t pfn) noexcept nogil:
    """Write fault on a R/O pte of a shared mapping: no COW, ever."""
    ptep[0] |= PTE_WRITE | PTE_DIRTY | PTE_SOFT_DIRTY | PTE_YOUNG
    if pfn != ZERO_PFN:
        e.fflags[pfn] |= PG_DIRTY
    return VM_FAULT_WRITE


# ---- unmap_mapping_range / truncation --------------------------------------

cdef void unmap_file_range(engine_t *e, mm_t *mm, mm_vma_t *vma, uint64_t first, uint64_t last,
                           bint even_cows, bint drop_markers, gather_t *g) noexcept nogil:
    """Zap the ptes of vma that map file indices [first, last): cache folios
    always; a private VMA's anon COW copies only with even_cows (truncate),
    not for a hole punch."""
    cdef uint64_t lo = vma.pgoff, hi = vma.pgoff + ((vma.end - vma.start) >> MM_PAGE_SHIFT)
    cdef uint64_t start, end, va, stop, pte
    cdef uint64_t *t
    cdef int64_t i, i0, i1, pfn
    if first > lo:
        lo = first
    if last < hi:
        hi = last
    if lo >= hi:
        return
    start = vma.start + ((lo - vma.pgoff) << MM_PAGE_SHIFT)
    end = vma.start + ((hi - vma.pgoff) << MM_PAGE_SHIFT)
    va = start
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
                if is_marker(pte):
                    if drop_markers:
                        t[i] = 0                    # ZAP_FLAG_DROP_MARKER
                elif pte != 0 and even_cows and not (vma.flags & VM_SHARED):
                    zap_swap_entry(e, mm, pte)      # a private copy that went to swap
                    t[i] = 0
                continue
            pfn = <int64_t>pte_pfn(pte)
            if pte & PTE_SPECIAL:
                if not even_cows:
                    continue
            elif e.fflags[pfn] & PG_ANON and not even_cows:
                continue
            # 999dad824c39: in a file-backed uffd-wp VMA the racy first pass
            # keeps the protection as a marker; truncation drops it.
            if pte & PTE_UFFD_WP and vma.flags & VM_UFFD_WP and not drop_markers \
                    and e.pol.uffd_wp_file:
                t[i] = make_marker(PTE_MARKER_UFFD_WP)
            else:
                t[i] = 0
            g.need_flush = 1
            if not (pte & PTE_SPECIAL):
                e.mapcount[pfn] -= 1
                if e.fflags[pfn] & PG_ANON:
                    mm.rss_anon -= 1
                if pte & PTE_DIRTY and not (e.fflags[pfn] & PG_ANON):
                    e.fflags[pfn] |= PG_DIRTY
                gather_add(e, g, pfn)
        va = stop


cdef int64_t cache_truncate(engine_t *e, mm_file_t *f, uint64_t first, uint64_t last) noexcept nogil:
    """Remove [first, last) from the cache (shmem_undo_range): folios lose the
    cache's reference and their file identity; swap slots are freed. Returns
    folios still mapped (the caller unmapped them first; a re-fault races)."""
    cdef uint64_t index = first, stop, ent
    cdef uint64_t *t
    cdef int64_t i, i0, i1, pfn, still_mapped = 0
    while index < last:
        t = leaf_or_skip(e, f.root, index << MM_PAGE_SHIFT, &stop)
        if t == NULL:
            index = stop >> MM_PAGE_SHIFT
            continue
        stop = ((index >> 9) + 1) << 9
        if stop > last:
            stop = last
        i0 = <int64_t>(index & 511)
        i1 = i0 + <int64_t>(stop - index)
        for i in range(i0, i1):
            ent = t[i]
            if ent == 0:
                continue
            t[i] = 0
            if f.hstate and ent == hugetlb_resv_entry():
                e.h_resv[f.hstate - 1] -= 1     # hugetlb_unreserve_pages: a reservation with no page
                continue
            if ent & PTE_PRESENT:
                pfn = <int64_t>pte_pfn(ent)
                if e.mapcount[pfn] > 0 or (f.hstate and entire_mapcount(e, pfn)[0] > 0):
                    still_mapped += 1
                e.fflags[pfn] &= ~(PG_FILE | PG_DIRTY)
                e.mapping[pfn] = 0
                f.nrpages -= 1
                put_page(e, pfn, 1)
            else:
                swap_entry_free(e, <int64_t>(ent >> SWP_OFFSET_SHIFT))
        index = stop
    return still_mapped


cdef void cache_zero_tail(engine_t *e, mm_file_t *f, int64_t size) noexcept nogil:
    """truncate_inode_partial_folio(): bytes past a non-aligned EOF read zero."""
    cdef uint64_t off = <uint64_t>size & (MM_PAGE_SIZE - 1)
    cdef uint64_t *cs
    cdef int64_t pfn
    if off == 0:
        return
    cs = cache_slot(e, f, <uint64_t>size >> MM_PAGE_SHIFT, False)
    if cs == NULL or not (cs[0] & PTE_PRESENT):
        return
    pfn = <int64_t>pte_pfn(cs[0])
    if frame_materialize(e, pfn) == 0:
        memset(bytes_ptr(e, <int64_t>e.version[pfn]) + off, 0, MM_PAGE_SIZE - off)


cdef int64_t file_rw(engine_t *e, mm_file_t *f, int64_t off, int64_t n, uint8_t *buf, bint write,
                     int cpu, int *ret) noexcept nogil:
    """pread/pwrite on a shmem file: bytes done, or -1 with *ret set. Reads of
    holes return zeros without allocating; writes allocate (shmem_write_begin)."""
    cdef int64_t done = 0, k, pfn, pos
    ret[0] = 0
    if not write:
        if off >= f.size:
            return 0
        if n > f.size - off:
            n = f.size - off
    while done < n:
        pos = off + done
        k = <int64_t>MM_PAGE_SIZE - (pos & (<int64_t>MM_PAGE_SIZE - 1))
        if k > n - done:
            k = n - done
        pfn = shmem_get_folio(e, f, <uint64_t>pos >> MM_PAGE_SHIFT, write, cpu, ret)
        if ret[0]:
            return -1
        if write:
            if frame_write(e, pfn, pos & (<int64_t>MM_PAGE_SIZE - 1), k, buf + done) < 0:
                ret[0] = VM_FAULT_NOMEM
                return -1
            e.fflags[pfn] |= PG_DIRTY | PG_UPTODATE
        elif pfn < 0:
            memset(buf + done, 0, k)
        else:
            frame_read(e, pfn, pos & (<int64_t>MM_PAGE_SIZE - 1), k, buf + done)
        done += k
    if write and off + n > f.size:
        f.size = off + n
    return done
