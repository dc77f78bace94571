# Swap: one swap device (type 0) of e.nswap slots, the swapcache, swap-out of
# anon ptes and shmem folios, swap-in (mm/memory.c do_swap_page, mm/shmem.c
# shmem_swapin_folio, mm/swapfile.c). Slot contents are kept as the frame's
# were: a content version or a byte-store slot.

# What the swap area is (Machine(swap_device=)): the flags swapon gives it
# (6.12 mm/swapfile.c SYSCALL_DEFINE2(swapon)). Large swap entries need a
# block device (SWP_BLKDEV: scan_swap_map_slots refuses a swap file any
# order > 0) with clusters, which up to 6.13 only a non-rotational one has
# (SWP_SOLIDSTATE, cluster_info); zram is also SWP_SYNCHRONOUS_IO.
cdef enum:
    SWAP_DEV_FILE = 0           # a swap file (the host's): never large entries
    SWAP_DEV_HDD = 1            # a rotational partition
    SWAP_DEV_SSD = 2            # SWP_BLKDEV | SWP_SOLIDSTATE
    SWAP_DEV_ZRAM = 3           # ... | SWP_SYNCHRONOUS_IO
    SWAP_DEV_NR = 4


cdef inline bint swap_sync_io(engine_t *e) noexcept nogil:
    """SWP_SYNCHRONOUS_IO: the write is done when swap_writepage returns,
    and a swap-in of an entry nobody else references skips the swapcache."""
    return e.swap_device == SWAP_DEV_ZRAM


cdef inline bint swap_large_entries(engine_t *e) noexcept nogil:
    """Whether the swap area can hand out a cluster for a large folio."""
    if e.swap_device == SWAP_DEV_FILE:
        return False
    if e.swap_device == SWAP_DEV_HDD:
        return e.pol.swap_large_rotational != 0
    return True


cdef inline uint64_t swp_entry(int64_t slot) noexcept nogil:
    return (SWP_SWAP << SWP_TYPE_SHIFT) | (<uint64_t>slot << SWP_OFFSET_SHIFT)


cdef inline bint is_swap_pte(uint64_t pte) noexcept nogil:
    return pte != 0 and not (pte & PTE_PRESENT) and ((pte & SWP_TYPE_MASK) >> SWP_TYPE_SHIFT) == SWP_SWAP


cdef inline int64_t swp_offset(uint64_t pte) noexcept nogil:
    return <int64_t>(pte >> SWP_OFFSET_SHIFT)


cdef int64_t swap_slot_alloc(engine_t *e) noexcept nogil:
    """The lowest free slot at or after the cursor (wrapping); -1 when full."""
    cdef int64_t i, s
    if e.swap_used >= e.nswap:
        return -1
    for i in range(e.nswap):
        s = (e.swap_cursor + i) % e.nswap
        if e.swap_map[s] == 0:
            e.swap_cursor = s + 1
            e.swap_used += 1
            e.swap_flags[s] = 0
            e.swap_data[s] = 0
            return s
    return -1


cdef int64_t swap_cluster_alloc(engine_t *e, int64_t nr) noexcept nogil:
    """get_swap_pages() for a folio of nr pages (a power of two, at most a
    cluster of 512): nr free slots, naturally aligned, lowest first - a
    whole free cluster for a PMD THP (swap_alloc_cluster; the allocator's
    per-order clusters of 6.10+ are not told apart). -1 when none."""
    cdef int64_t s = 0, k
    if e.nswap - e.swap_used < nr:
        return -1
    while s + nr <= e.nswap:
        k = 0
        while k < nr and e.swap_map[s + k] == 0:
            k += 1
        if k == nr:
            for k in range(s, s + nr):
                e.swap_flags[k] = 0
                e.swap_data[k] = 0
            e.swap_used += nr
            return s
        s += nr
    return -1


cdef void swap_slot_release(engine_t *e, int64_t slot) noexcept nogil:
    if e.swap_flags[slot] & SWAP_DATA_BYTES:
        bytes_release(e, <int64_t>e.swap_data[slot])
    e.swap_flags[slot] = 0
    e.swap_data[slot] = 0
    e.swap_map[slot] = 0
    e.swap_used -= 1
    if slot < e.swap_cursor:
        e.swap_cursor = slot


cdef int swap_write(engine_t *e, int64_t slot, int64_t pfn, bint move) noexcept nogil:
    """pageout(): the folio's contents go to the slot. With `move` the frame is
    about to be freed, so a byte-exact page hands its store slot over."""
    cdef int64_t b
    if e.swap_flags[slot] & SWAP_DATA_BYTES:
        bytes_release(e, <int64_t>e.swap_data[slot])
        e.swap_flags[slot] = 0
    if e.fflags[pfn] & PG_BYTES:
        if move:
            e.swap_data[slot] = e.version[pfn]
            e.fflags[pfn] &= ~PG_BYTES
            e.version[pfn] = 0
        else:
            b = bytes_alloc(e)
            if b < 0:
                return -1
            memcpy(bytes_ptr(e, b), bytes_ptr(e, <int64_t>e.version[pfn]), MM_PAGE_SIZE)
            e.swap_data[slot] = <uint64_t>b
        e.swap_flags[slot] = SWAP_DATA_BYTES
    else:
        e.swap_data[slot] = e.version[pfn]
    return 0


cdef int swap_read(engine_t *e, int64_t slot, int64_t pfn) noexcept nogil:
    cdef int64_t b
    if e.swap_flags[slot] & SWAP_DATA_BYTES:
        b = bytes_alloc(e)
        if b < 0:
            return -1
        memcpy(bytes_ptr(e, b), bytes_ptr(e, <int64_t>e.swap_data[slot]), MM_PAGE_SIZE)
        e.version[pfn] = <uint64_t>b
        e.fflags[pfn] |= PG_BYTES
    else:
        e.version[pfn] = e.swap_data[slot]
    return 0


# A large folio in the swapcache (one written out whole, swapout_large_whole)
# keeps its first slot on its head only, as the kernel's folio->swap: page i
# is slot index[head] + i (an mTHP's tails hold its pincount and deferred
# flag in `index`). Every page is PG_SWAPCACHE and each slot names its page
# (swap_cache[]), as the swapcache's xarray does; the folio holds one
# reference per page for the cache (add_to_swap_cache's folio_ref_add).

cdef inline int64_t swapcache_slot(engine_t *e, int64_t pfn) noexcept nogil:
    """The slot of a swapcache page (folio->swap + its index in the folio)."""
    cdef int64_t head
    if e.fflags[pfn] & (PG_HEAD | PG_TAIL):
        head = folio_of(e, pfn)
        return <int64_t>e.index[head] + (pfn - head)
    return <int64_t>e.index[pfn]


cdef bint folio_swapped(engine_t *e, int64_t head, int64_t nr) noexcept nogil:
    """folio_swapped(): some slot of the folio is still referenced by a
    swap pte or a shmem entry."""
    cdef int64_t slot0 = <int64_t>e.index[head], i
    for i in range(nr):
        if e.swap_map[slot0 + i] & SWAP_COUNT_MASK:
            return True
    return False


cdef inline bint swapcache_unmapped(engine_t *e, int64_t pfn) noexcept nogil:
    """!folio_mapped() of pfn's folio (free_swap_cache's test)."""
    if e.fflags[pfn] & (PG_HEAD | PG_TAIL):
        return folio_mapcount_total(e, folio_of(e, pfn)) == 0
    return e.mapcount[pfn] == 0


cdef void swapcache_delete(engine_t *e, int64_t pfn) noexcept nogil:
    """delete_from_swap_cache(): the folio leaves the swapcache (dropping the
    cache's references, one per page); each slot goes if nothing references
    it any more (put_swap_folio)."""
    cdef int64_t slot, head, nr, i
    if e.fflags[pfn] & (PG_HEAD | PG_TAIL):
        head = folio_of(e, pfn)
        nr = folio_nr(e, head)
        slot = <int64_t>e.index[head]
        for i in range(nr):
            e.swap_cache[slot + i] = 0
            e.swap_map[slot + i] &= ~SWAP_HAS_CACHE
            e.fflags[head + i] &= ~PG_SWAPCACHE
            if e.swap_map[slot + i] == 0:
                swap_slot_release(e, slot + i)
        e.index[head] = 0
        put_page(e, head, <int32_t>nr)
        return
    slot = <int64_t>e.index[pfn]
    e.swap_cache[slot] = 0
    e.swap_map[slot] &= ~SWAP_HAS_CACHE
    e.fflags[pfn] &= ~PG_SWAPCACHE
    e.index[pfn] = 0
    if e.swap_map[slot] == 0:
        swap_slot_release(e, slot)
    put_page(e, pfn, 1)


cdef bint try_to_free_swap(engine_t *e, int64_t pfn) noexcept nogil:
    """folio_free_swap(): drop the swapcache copy once no pte or shmem entry
    references the slot (for a large folio: any of its slots)."""
    cdef int64_t head
    if not (e.fflags[pfn] & PG_SWAPCACHE):
        return False
    if e.fflags[pfn] & (PG_HEAD | PG_TAIL):
        head = folio_of(e, pfn)
        if folio_swapped(e, head, folio_nr(e, head)):
            return False
    elif e.swap_map[<int64_t>e.index[pfn]] & SWAP_COUNT_MASK:
        return False
    swapcache_delete(e, pfn)
    return True


cdef int64_t swapcache_reclaim_large(engine_t *e) noexcept nogil:
    """shrink_folio_list on the large folios left in the swapcache after
    their write (swapout_large_whole): one nothing maps and nothing else
    references is clean and done with, so __remove_mapping takes it out of
    the swapcache whole and frees it; the slots the swap ptes still name
    stay (put_swap_folio drops only the cache's SWAP_HAS_CACHE). Found by
    their aligned first slot. Returns pages freed. The walk covers the
    whole swap area, so it runs only while one may be there: from the last
    whole-folio write (e.swapcache_large) until a walk finds none left."""
    cdef int64_t s, pfn, nr, n = 0, left = 0
    if not e.swapcache_large:
        return 0
    s = 0
    while s < e.nswap:
        nr = 1 << MTHP_MIN_ORDER
        if e.swap_cache[s]:
            pfn = e.swap_cache[s] - 1
            if e.fflags[pfn] & PG_HEAD and e.fflags[pfn] & PG_SWAPCACHE and <int64_t>e.index[pfn] == s:
                nr = folio_nr(e, pfn)
                if e.refcount[pfn] == nr and folio_mapcount_total(e, pfn) == 0:
                    swapcache_delete(e, pfn)
                    n += nr
                else:
                    left += 1
        s += nr
    if left == 0:
        e.swapcache_large = 0
    return n


cdef void swap_entry_free(engine_t *e, int64_t slot) noexcept nogil:
    """free_swap_and_cache(): one reference to the slot goes; a swapcache
    folio nobody else holds goes with the last one."""
    cdef int64_t pfn, head, nr
    if slot < 0 or slot >= e.nswap:
        return
    if e.swap_map[slot] & SWAP_COUNT_MASK:
        e.swap_map[slot] -= 1
    if e.swap_map[slot] & SWAP_COUNT_MASK:
        return
    if e.swap_map[slot] & SWAP_HAS_CACHE:
        pfn = e.swap_cache[slot] - 1
        if e.fflags[pfn] & (PG_HEAD | PG_TAIL):
            # __try_to_reclaim_swap (TTRS_UNMAPPED): a large folio goes once
            # it is unmapped and none of its slots is referenced any more
            # (swap_is_has_cache over the folio's range).
            head = folio_of(e, pfn)
            nr = folio_nr(e, head)
            if e.refcount[head] == nr and folio_mapcount_total(e, head) == 0 \
                    and not folio_swapped(e, head, nr):
                swapcache_delete(e, head)
            return
        # A per-CPU LRU batch's reference (a folio MADV_PAGEOUT put back)
        # does not hold it: __try_to_reclaim_swap only needs it unmapped.
        if e.mapcount[pfn] == 0 and e.refcount[pfn] - lru_batch_refs(e, pfn) == 1:
            swapcache_delete(e, pfn)
        return
    swap_slot_release(e, slot)


cdef inline void zap_swap_entry(engine_t *e, mm_t *mm, uint64_t pte) noexcept nogil:
    if is_swap_pte(pte):
        swap_entry_free(e, swp_offset(pte))


cdef inline void swap_dup(engine_t *e, uint64_t pte) noexcept nogil:
    if is_swap_pte(pte):
        e.swap_map[swp_offset(pte)] += 1


cdef int64_t swapin_folio(engine_t *e, int64_t slot, int cpu, int *ret) noexcept nogil:
    """The slot's folio from the swapcache, or read into a new one added to
    the swapcache (the device is not SWP_SYNCHRONOUS_IO: no bypass)."""
    cdef int64_t pfn
    ret[0] = 0
    if e.swap_cache[slot]:
        return e.swap_cache[slot] - 1
    pfn = frame_alloc(e)
    if pfn < 0:
        ret[0] = VM_FAULT_OOM
        return -1
    if swap_read(e, slot, pfn) < 0:
        frame_free(e, pfn)
        ret[0] = VM_FAULT_NOMEM
        return -1
    e.fflags[pfn] |= PG_SWAPCACHE
    e.index[pfn] = <uint32_t>slot
    e.swap_cache[slot] = pfn + 1
    e.swap_map[slot] |= SWAP_HAS_CACHE
    lru_add(e, cpu, pfn)
    stat_add(e, MM_STAT_SWPIN, 1)
    return pfn


cdef int do_swap_page(engine_t *e, mm_t *mm, int cpu, mm_vma_t *vma, uint64_t va,
                      uint64_t *ptep, int fflags) noexcept nogil:
    """Fault on an anon swap pte: the era's exclusivity and reuse rules."""
    cdef uint64_t orig = ptep[0], entry
    cdef int64_t slot = swp_offset(orig), pfn
    cdef int ret = 0
    cdef bint write = (fflags & FAULT_FLAG_WRITE) != 0, exclusive = False, bypass
    if slot >= e.nswap:
        return VM_FAULT_SIGBUS
    # SWP_SYNCHRONOUS_IO (zram) and nobody else references the entry: the
    # swapcache is skipped (0bcac06f27d7, 4.15): a fresh folio, read at
    # once, exclusive, and the slot freed (swap_free).
    bypass = swap_sync_io(e) and e.swap_cache[slot] == 0 and (e.swap_map[slot] & SWAP_COUNT_MASK) == 1
    if bypass:
        if e.pol.swapin_large_sync:
            ret = do_swap_page_large(e, mm, cpu, vma, va, ptep, fflags)
            if ret >= 0:
                return ret
            ret = 0
        pfn = frame_alloc(e)            # its reference becomes the mapping's
        if pfn < 0:
            return VM_FAULT_OOM
        if swap_read(e, slot, pfn) < 0:
            frame_free(e, pfn)
            return VM_FAULT_NOMEM
        lru_add(e, cpu, pfn)            # folio_add_lru
        stat_add(e, MM_STAT_SWPIN, 1)
        swap_entry_free(e, slot)
    else:
        pfn = swapin_folio(e, slot, cpu, &ret)
        if pfn < 0:
            return ret
        if e.fflags[pfn] & (PG_HEAD | PG_TAIL):
            return do_swap_page_cached(e, mm, cpu, vma, va, ptep, fflags, pfn)
        # The pte's reference to the slot becomes the mapping's folio reference.
        e.swap_map[slot] -= 1
        e.refcount[pfn] += 1
    e.fflags[pfn] |= PG_ANON
    e.mapcount[pfn] += 1
    mm.rss_anon += 1
    anon_vma_prepare(e, mm, vma)
    entry = pfn_pte(pfn) | PTE_PRESENT | PTE_YOUNG | vma_prot_bits(vma.flags)
    if orig & PTE_SOFT_DIRTY:
        entry |= PTE_SOFT_DIRTY
    if orig & PTE_UFFD_WP:
        entry |= PTE_UFFD_WP
    if e.pol.wp_reuse == WP_REUSE_ANON_EXCLUSIVE:
        # 5.19+ (1493a1913e34): the swap pte remembers exclusivity.
        exclusive = (orig & SWP_EXCLUSIVE) != 0 or bypass     # a fresh folio: certainly exclusive
        # do_swap_page (c145e0b47c77, 5.18): a write drains the local LRU
        # batches when the folio is not on the LRU, so that their reference
        # does not count; a folio on the LRU but waiting in a rotate batch
        # (lru_rotate) keeps that reference, and its swapcache.
        if write and not (e.fflags[pfn] & (PG_KSM | PG_LRU)):
            lru_drain(e, cpu)
        if write and not (e.fflags[pfn] & PG_KSM) and e.refcount[pfn] == 2:
            try_to_free_swap(e, pfn)            # should_try_to_free_swap()
        if exclusive or e.refcount[pfn] == 1:
            e.fflags[pfn] |= PG_ANON_EXCLUSIVE
            if not e.pol.swapin_read_writable:
                # 5.19-6.10: only a write fault maps it writable (maybe_mkwrite);
                # a read fault leaves it R/O, so the next write faults once.
                if write and not (entry & PTE_UFFD_WP):
                    entry |= PTE_DIRTY | PTE_SOFT_DIRTY
                    if vma.flags & VM_WRITE:
                        entry |= PTE_WRITE
                    write = False
            elif vma.flags & VM_WRITE and not (entry & PTE_UFFD_WP) \
                    and not (vma_soft_dirty_tracking(e, vma.flags) and not (entry & PTE_SOFT_DIRTY)):
                entry |= PTE_WRITE              # c18160dba5ff: writable even on a read fault
                if write:
                    entry |= PTE_DIRTY | PTE_SOFT_DIRTY
                    write = False
    elif e.pol.wp_reuse != WP_REUSE_REFCOUNT_DRAIN and write:
        # <= 5.17 reuse_swap_page(): mapcount + swap count == 1, refcount ignored;
        # a reused page leaves the swapcache.
        if e.mapcount[pfn] + (e.swap_map[slot] & SWAP_COUNT_MASK) == 1:
            try_to_free_swap(e, pfn)
            entry |= PTE_DIRTY | PTE_SOFT_DIRTY
            if vma.flags & VM_WRITE:
                entry |= PTE_WRITE
            write = False
    ptep[0] = entry
    if write:
        # The write is not satisfied yet: the era's do_wp_page decides (5.18's
        # c145e0b47c77 makes swap-in refcount-based through the same path).
        return do_wp_page(e, mm, cpu, vma, va, ptep, fflags)
    return 0


cdef int do_swap_page_cached(engine_t *e, mm_t *mm, int cpu, mm_vma_t *vma, uint64_t va,
                             uint64_t *ptep, int fflags, int64_t pfn) noexcept nogil:
    """do_swap_page() on a page of a large folio found in the swapcache
    (one written out whole and not yet freed: swapout_large_whole).
    Up to 6.10 it maps that page alone: the folio stays large, mapped in
    part. From 6.11 ("mm: swap: entirely map large folios found in
    swapcache", Barry Song / Chuanhua Han) it maps the whole folio when
    its range lies in the VMA and in this page table and every pte of it
    is the matching swap entry: the same entry, offset moved, with the same
    exclusive, soft-dirty and uffd-wp bits (pte_same + swap_pte_batch).
    Then as for a page: the slots' references go (swap_free_nr), the
    swapcache goes if should_try_to_free_swap says so (VM_LOCKED, or a
    write fault with no reference but the cache's and the lookup's: 2 up
    to 6.10, 1 + nr from 6.11), PageAnonExclusive from the swap pte's bit,
    writable by the era's rule (5.19+; older eras leave the write to
    do_wp_page). Nothing is read: no swpin is counted."""
    cdef uint64_t orig = ptep[0], entry, start, pmd_start, lo, hi
    cdef int64_t head = folio_of(e, pfn), nr = folio_nr(e, head), idx = pfn - head
    cdef int64_t n = 1, i, first = pfn, slot, want
    cdef uint64_t *q = ptep
    cdef bint write = (fflags & FAULT_FLAG_WRITE) != 0, exclusive = False, ok
    if e.pol.swapin_large_swapcache:
        start = va - (<uint64_t>idx << MM_PAGE_SHIFT)
        pmd_start = va & ~(<uint64_t>PMD_SPAN - 1)
        lo = vma.start if vma.start > pmd_start else pmd_start
        hi = vma.end if vma.end < pmd_start + PMD_SPAN else pmd_start + PMD_SPAN
        if start >= lo and start + (<uint64_t>nr << MM_PAGE_SHIFT) <= hi:
            ok = True
            for i in range(nr):
                if (ptep - idx)[i] != orig - (<uint64_t>idx << SWP_OFFSET_SHIFT) + (<uint64_t>i << SWP_OFFSET_SHIFT):
                    ok = False
                    break
            if ok:
                n, first, q = nr, head, ptep - idx
    slot = swapcache_slot(e, first)
    for i in range(n):
        e.swap_map[slot + i] -= 1       # swap_free_nr: the ptes' references ...
    e.refcount[head] += n               # ... become the mappings' (the lookup's stands in)
    if e.pol.wp_reuse == WP_REUSE_ANON_EXCLUSIVE:
        exclusive = (orig & SWP_EXCLUSIVE) != 0
        want = (1 + nr) if e.pol.swapin_large_swapcache else 2
        if vma.flags & VM_LOCKED or (write and e.refcount[head] - n + 1 == want):
            try_to_free_swap(e, head)   # should_try_to_free_swap()
    elif vma.flags & VM_LOCKED:
        try_to_free_swap(e, head)
    mm.rss_anon += n
    anon_vma_prepare(e, mm, vma)
    entry = pfn_pte(first) | PTE_PRESENT | PTE_YOUNG | vma_prot_bits(vma.flags) \
        | (orig & (PTE_SOFT_DIRTY | PTE_UFFD_WP))
    if e.pol.wp_reuse == WP_REUSE_ANON_EXCLUSIVE and (exclusive or e.refcount[head] == n):
        for i in range(n):
            e.fflags[first + i] |= PG_ANON_EXCLUSIVE
        if not e.pol.swapin_read_writable:
            if write and not (entry & PTE_UFFD_WP):
                entry |= PTE_DIRTY | PTE_SOFT_DIRTY
                if vma.flags & VM_WRITE:
                    entry |= PTE_WRITE
                write = False
        elif vma.flags & VM_WRITE and not (entry & PTE_UFFD_WP) \
                and not (vma_soft_dirty_tracking(e, vma.flags) and not (entry & PTE_SOFT_DIRTY)):
            entry |= PTE_WRITE
            if write:
                entry |= PTE_DIRTY | PTE_SOFT_DIRTY
                write = False
    for i in range(n):
        q[i] = entry + pfn_pte(i)
        e.mapcount[first + i] += 1
    if write:
        return do_wp_page(e, mm, cpu, vma, va, ptep, fflags)
    return 0


cdef int do_swap_page_large(engine_t *e, mm_t *mm, int cpu, mm_vma_t *vma, uint64_t va,
                            uint64_t *ptep, int fflags) noexcept nogil:
    """alloc_swap_folio() and the large-folio half of do_swap_page() (6.12,
    242d12c98174) for a SWP_SYNCHRONOUS_IO device: the highest mTHP order
    the per-size settings allow in this VMA (never the PMD's) whose
    naturally aligned range lies in the VMA, and whose ptes are the
    consecutive swap entries of a slot range with the same alignment
    (thp_swap_suitable_orders, can_swapin_thp), each with the same bits
    and referenced only by it, none in the swapcache. Not in a
    userfaultfd-armed VMA. The folio, fresh and so exclusive, is read whole
    and mapped by set_ptes as do_swap_page maps a page (writable if the VMA
    is and neither uffd-wp nor soft-dirty tracking wants a fault, dirty on
    a write fault); the slots are freed (swap_free_nr). Returns 0, or -1
    for the order-0 path."""
    cdef uint32_t orders
    cdef int order
    cdef int64_t nr = 0, head = -1, i, slot0 = 0, idx
    cdef uint64_t addr = 0, entry, orig = ptep[0], bits
    cdef uint64_t *base = ptep - ((va >> MM_PAGE_SHIFT) & 511)
    cdef uint64_t *q
    cdef bint write = (fflags & FAULT_FLAG_WRITE) != 0, ok
    if vma.flags & (VM_UFFD_MISSING | VM_UFFD_WP | VM_UFFD_MINOR):
        return -1                       # userfaultfd_armed()
    if vma.file != 0 or vma.flags & (VM_SHARED | VM_NOHUGEPAGE | VM_HUGETLB | VM_PFNMAP | VM_MIXEDMAP | VM_IO):
        return -1
    orders = thp_anon_orders(e, vma.flags) & MTHP_PTE_ORDERS & ~(<uint32_t>(1 << MTHP_MIN_ORDER) - 1)
    if orders == 0:
        return -1
    bits = orig & (PTE_SOFT_DIRTY | PTE_UFFD_WP | SWP_EXCLUSIVE)
    order = HPAGE_PMD_ORDER - 1
    while order >= MTHP_MIN_ORDER:
        if (orders >> order) & 1:
            nr = <int64_t>1 << order
            addr = va & ~((<uint64_t>nr << MM_PAGE_SHIFT) - 1)
            idx = <int64_t>((va - addr) >> MM_PAGE_SHIFT)
            slot0 = swp_offset(orig) - idx
            ok = addr >= vma.start and addr + (<uint64_t>nr << MM_PAGE_SHIFT) <= vma.end \
                and slot0 >= 0 and (slot0 & (nr - 1)) == 0 and slot0 + nr <= e.nswap
            if ok:
                q = base + ((addr >> MM_PAGE_SHIFT) & 511)
                for i in range(nr):
                    if not is_swap_pte(q[i]) or swp_offset(q[i]) != slot0 + i \
                            or (q[i] & (PTE_SOFT_DIRTY | PTE_UFFD_WP | SWP_EXCLUSIVE)) != bits \
                            or e.swap_map[slot0 + i] != 1:
                        ok = False
                        break
            if ok:
                head = folio_alloc_mthp(e, order, PG_ANON | (PG_ANON_EXCLUSIVE if e.pol.anon_exclusive else 0))
                if head >= 0:
                    break
        order -= 1
    if head < 0:
        return -1
    for i in range(nr):
        if swap_read(e, slot0 + i, head + i) < 0:
            e.refcount[head] = 0
            folio_free_large(e, head)
            return VM_FAULT_NOMEM
    anon_vma_prepare(e, mm, vma)
    entry = pfn_pte(head) | PTE_PRESENT | PTE_YOUNG | vma_prot_bits(vma.flags) | (orig & (PTE_SOFT_DIRTY | PTE_UFFD_WP))
    if vma.flags & VM_WRITE and not (vma_soft_dirty_tracking(e, vma.flags) and not (entry & PTE_SOFT_DIRTY)):
        entry |= PTE_WRITE
        if write:
            entry |= PTE_DIRTY | PTE_SOFT_DIRTY
    q = base + ((addr >> MM_PAGE_SHIFT) & 511)
    for i in range(nr):
        swap_entry_free(e, slot0 + i)
        q[i] = entry + pfn_pte(i)
        e.mapcount[head + i] = 1
    e.refcount[head] += nr - 1          # one reference per page mapped
    lru_add(e, cpu, head)
    mm.rss_anon += nr
    stat_add(e, MM_STAT_SWPIN, nr)      # PSWPIN counts pages
    e.swpin_large[order] += 1           # MTHP_STAT_SWPIN
    return 0


cdef int64_t shmem_swapin(engine_t *e, mm_file_t *f, uint64_t index, uint64_t *cs, int cpu,
                          int *ret) noexcept nogil:
    """shmem_swapin_folio(): read the page back into the cache and free the
    swap entry at once (shmem keeps no swapcache copy)."""
    cdef int64_t slot = swp_offset(cs[0]), pfn
    ret[0] = 0
    if slot >= e.nswap:
        ret[0] = VM_FAULT_SIGBUS
        return -1
    pfn = swapin_folio(e, slot, cpu, ret)
    if pfn < 0:
        return -1
    # Leave the swapcache: the cache entry now names the folio.
    e.swap_cache[slot] = 0
    e.swap_map[slot] &= ~SWAP_HAS_CACHE
    e.fflags[pfn] &= ~PG_SWAPCACHE
    swap_entry_free(e, slot)                   # the cache entry's slot reference
    e.fflags[pfn] |= PG_FILE | PG_DIRTY
    e.mapping[pfn] = <uint16_t>f.id
    e.index[pfn] = <uint32_t>index
    cs[0] = pfn_pte(pfn) | PTE_PRESENT          # the swapcache's reference is the cache's now
    f.nrpages += 1
    return pfn


cdef int swapout_anon_pte(engine_t *e, mm_t *mm, uint64_t *ptep, gather_t *g) noexcept nogil:
    """Reclaim one anon page mapped only here (shrink_folio_list for a
    MADV_PAGEOUT'ed or cold page): into the swapcache, pte -> swap entry,
    written out, freed if nothing else holds it. 1 if unmapped, 0 if kept."""
    cdef uint64_t pte = ptep[0], swp
    cdef int64_t pfn, slot
    cdef bint maybe_pinned
    if not (pte & PTE_PRESENT) or pte & PTE_SPECIAL:
        return 0
    pfn = <int64_t>pte_pfn(pte)
    if not (e.fflags[pfn] & PG_ANON) or e.fflags[pfn] & (PG_KSM | PG_HEAD | PG_TAIL) or e.mapcount[pfn] != 1:
        return 0                # large folios are not reclaimed yet (no split_folio)
    if e.fflags[pfn] & PG_LAZYFREE:
        # try_to_unmap_one on a MADV_FREE'd folio: discard it if nobody wrote
        # it again and nobody else holds it; otherwise it is swap-backed again.
        # (The kernel compares with 1 + mapcount: reclaim's own isolation
        # reference, which the engine does not take.)
        if not (pte & PTE_DIRTY) and not (e.fflags[pfn] & PG_DIRTY) \
                and e.refcount[pfn] == e.mapcount[pfn]:
            ptep[0] = 0
            e.mapcount[pfn] -= 1
            mm.rss_anon -= 1
            g.need_flush = 1
            return 1
        e.fflags[pfn] &= ~PG_LAZYFREE
    maybe_pinned = e.refcount[pfn] >= GUP_PIN_COUNTING_BIAS
    if maybe_pinned and e.pol.swapout_skip_pinned:
        return 0            # 5.11+ (feb889fb40fa): pinned pages stay out of the swapcache
    if maybe_pinned and e.pol.anon_exclusive and e.fflags[pfn] & PG_ANON_EXCLUSIVE:
        return 0            # folio_try_share_anon_rmap_pte() refuses
    if not (e.fflags[pfn] & PG_SWAPCACHE):
        slot = swap_slot_alloc(e)
        if slot < 0:
            return 0        # swap full: the page stays
        e.swap_map[slot] = SWAP_HAS_CACHE
        e.swap_cache[slot] = pfn + 1
        e.fflags[pfn] |= PG_SWAPCACHE
        e.index[pfn] = <uint32_t>slot
        e.refcount[pfn] += 1
    slot = <int64_t>e.index[pfn]
    swp = swp_entry(slot) | (pte & (PTE_SOFT_DIRTY | PTE_UFFD_WP))
    if e.pol.anon_exclusive and e.fflags[pfn] & PG_ANON_EXCLUSIVE:
        swp |= SWP_EXCLUSIVE
    e.fflags[pfn] &= ~PG_ANON_EXCLUSIVE
    ptep[0] = swp
    e.swap_map[slot] += 1
    e.mapcount[pfn] -= 1
    mm.rss_anon -= 1
    g.need_flush = 1
    swap_write(e, slot, pfn, False)
    # The caller drops the pte's reference after the flush; the folio is
    # freed then if only the swapcache still holds it.
    stat_add(e, MM_STAT_SWPOUT, 1)
    return 1


cdef int64_t swapout_large_whole(engine_t *e, mm_t *mm, int64_t head, uint64_t haddr,
                                 bint free_now) noexcept nogil:
    """shrink_folio_list for a large anon folio this mm alone maps, all of
    it in the 2 MiB at haddr, with no references beyond its mappings (the
    caller's can_split_folio test): add_to_swap takes one cluster of
    consecutive slots for the whole folio (folio_alloc_swap), try_to_unmap
    splits a PMD mapping first (TTU_SPLIT_HUGE_PMD) and turns each pte into
    its page's swap entry, pageout writes the folio once (THP_SWPOUT and
    stats/swpout of its size, count_swpout_vm_event). Then the folio:
    - with `free_now` (a synchronous device's write is done, or direct
      reclaim): __remove_mapping takes it out of the swapcache whole and it
      is freed whole;
    - else it stays in the swapcache, large, under writeback, back on the
      LRU (a large folio skips the per-CPU batches), until the next reclaim
      pass frees it (swapcache_reclaim_large), the last swap pte of it goes
      (swap_entry_free), or a fault maps it again (do_swap_page_cached).
    Returns the pages swapped out, or -1 (no cluster: the caller splits,
    THP_SWPOUT_FALLBACK)."""
    cdef int64_t nr = folio_nr(e, head), slot0, i, p, sl, mapped = 0
    cdef int order = HPAGE_PMD_ORDER if nr == HPAGE_PMD_NR else mthp_order(e, head)
    cdef int32_t *slot = pmd_slot(e, mm, haddr, False)
    cdef uint64_t *t
    cdef uint64_t pte, swp, stop
    cdef bint cached = (e.fflags[head] & PG_SWAPCACHE) != 0, dirty = False
    if cached:
        slot0 = <int64_t>e.index[head]  # in the swapcache still: its slots (add_to_swap skipped)
    else:
        if not swap_large_entries(e):
            return -1
        slot0 = swap_cluster_alloc(e, nr)
        if slot0 < 0:
            return -1
    if slot != NULL and pmd_trans_huge(slot[0]):
        split_huge_pmd_locked(e, mm, slot, haddr)
    t = leaf_or_skip(e, mm.pgd, haddr, &stop)
    for i in range(HPAGE_PMD_NR):
        pte = t[i]
        if not (pte & PTE_PRESENT) or pte & PTE_SPECIAL:
            continue
        p = <int64_t>pte_pfn(pte)
        if not in_folio(p, head, nr):
            continue
        sl = slot0 + (p - head)
        swp = swp_entry(sl) | (pte & (PTE_SOFT_DIRTY | PTE_UFFD_WP))
        if e.pol.anon_exclusive and e.fflags[p] & PG_ANON_EXCLUSIVE:
            swp |= SWP_EXCLUSIVE
        t[i] = swp
        e.mapcount[p] -= 1
        if cached:
            e.swap_map[sl] += 1         # the swap pte's reference, next to the cache's
        else:
            e.swap_map[sl] = 1          # the swap pte's reference
        mapped += 1
        dirty = dirty or (pte & PTE_DIRTY) != 0
    mm.rss_anon -= mapped
    tlb_flush_range(e, mm.id, haddr, haddr + PMD_SPAN)
    for p in range(head, head + nr):
        dirty = dirty or (e.fflags[p] & PG_DIRTY) != 0
        # (A cached folio's copy is written again whatever its state: pageout
        # skips a clean one, which holds what the slots hold.)
        swap_write(e, slot0 + (p - head), p, free_now and not cached)
        e.fflags[p] &= ~(PG_ANON_EXCLUSIVE | PG_DIRTY)
    if dirty or not cached:
        stat_add(e, MM_STAT_SWPOUT, nr)
        e.swpout[order] += 1
    e.refcount[head] -= mapped          # the mappings' references
    if cached:
        if free_now:
            swapcache_delete(e, head)   # __remove_mapping: freed whole, the slots stay
        return nr
    if free_now:
        e.refcount[head] = 0
        folio_free_large(e, head)       # core/huge.pxi
        return nr
    # In the swapcache, whole: a reference per page (add_to_swap_cache),
    # the first slot on the head (folio->swap). Unmapped: off the deferred
    # split queue's list (it is not partially mapped any more).
    folio_deferred(e, head)[0] = 0
    e.index[head] = <uint32_t>slot0
    e.swapcache_large = 1                   # swapcache_reclaim_large has one to find
    for p in range(head, head + nr):
        sl = slot0 + (p - head)
        e.fflags[p] |= PG_SWAPCACHE
        e.swap_cache[sl] = p + 1
        e.swap_map[sl] |= SWAP_HAS_CACHE
    e.refcount[head] += nr
    return nr


cdef int swapout_shmem(engine_t *e, mm_file_t *f, uint64_t index) noexcept nogil:
    """shmem_writepage(): an unmapped cache folio goes to swap; the cache
    entry becomes a swap entry. 1 if swapped out."""
    cdef uint64_t *cs = cache_slot(e, f, index, False)
    cdef int64_t pfn, slot
    if cs == NULL or not (cs[0] & PTE_PRESENT):
        return 0
    pfn = <int64_t>pte_pfn(cs[0])
    if e.mapcount[pfn] != 0 or e.refcount[pfn] != 1:
        return 0
    slot = swap_slot_alloc(e)
    if slot < 0:
        return 0
    if swap_write(e, slot, pfn, True) < 0:
        swap_slot_release(e, slot)
        return 0
    e.swap_map[slot] = 1                        # the cache entry's reference
    cs[0] = swp_entry(slot)
    f.nrpages -= 1
    e.fflags[pfn] &= ~(PG_FILE | PG_DIRTY)
    e.mapping[pfn] = 0
    put_page(e, pfn, 1)
    stat_add(e, MM_STAT_SWPOUT, 1)
    return 1


cdef int64_t shmem_thp_pageout(engine_t *e, mm_t *mm, int cpu, uint64_t start, uint64_t end) noexcept nogil:
    """MADV_PAGEOUT of the shmem THPs in [start, end) that this mm alone
    maps and the range covers whole (madvise_cold_or_pageout_pte_range
    skips a folio mapped elsewhere; one covered in part is split, for a file
    folio meaning unmapped, and nothing of it reclaimed). shrink_folio_list
    unmaps it (TTU_SPLIT_HUGE_PMD) and shmem_writepage splits it - the swap
    device is a file: no cluster for a whole THP, as for anon
    (split_folios_in) - so each page goes out as a small folio
    (swapout_shmem); a clean one is dropped. No swap: it stays whole and
    mapped. A shmem mTHP the same, by its own size. Returns pages reclaimed."""
    cdef uint64_t va = start & ~(<uint64_t>PMD_SPAN - 1), stop, vhead, span, next_va
    cdef uint64_t *t
    cdef int64_t i, pfn, head, last = -1, n = 0, total, p, nr
    cdef int32_t vi
    cdef mm_vma_t *vma
    cdef mm_file_t *f
    cdef uint64_t base
    if e.nr_large == 0 or e.nswap == 0:
        return 0
    while va < end:
        t = leaf_or_skip(e, mm.pgd, va, &stop)
        if t == NULL:
            va = stop
            continue
        next_va = (va & ~(<uint64_t>PMD_SPAN - 1)) + PMD_SPAN
        for i in range(<int64_t>((va >> MM_PAGE_SHIFT) & 511), HPAGE_PMD_NR):
            if not (t[i] & PTE_PRESENT) or t[i] & PTE_SPECIAL:
                continue
            pfn = <int64_t>pte_pfn(t[i])
            if not (e.fflags[pfn] & (PG_HEAD | PG_TAIL)) or not (e.fflags[pfn] & PG_FILE):
                continue
            head = folio_of(e, pfn)
            if head == last or not is_file_thp(e, head):
                continue
            last = head
            vi = find_vma(mm, (va & ~(<uint64_t>PMD_SPAN - 1)) + (<uint64_t>i << MM_PAGE_SHIFT))
            if vi < 0:
                continue
            vma = &mm.vmas[vi]
            if vma.flags & VM_LOCKED or vma.file != e.mapping[head]:
                continue
            nr = folio_nr(e, head)
            span = <uint64_t>nr << MM_PAGE_SHIFT
            vhead = vma.start + ((<uint64_t>e.index[head] - vma.pgoff) << MM_PAGE_SHIFT)
            total = folio_mapcount_total(e, head)
            if folio_mappings_in(e, mm, head, vhead & ~(<uint64_t>PMD_SPAN - 1),
                                 (vhead & ~(<uint64_t>PMD_SPAN - 1)) + 2 * PMD_SPAN) != total:
                continue                        # mapped elsewhere too
            f = file_of(e, e.mapping[head])
            base = e.index[head]
            lru_drain(e, cpu)
            if vhead < start or vhead + span > end or vhead < vma.start or vhead + span > vma.end:
                # Covered in part: the walker's split_folio (unmaps it),
                # and no page of it is reclaimed.
                if file_folio_split(e, f, head):
                    if nr < HPAGE_PMD_NR and vhead + span > va:
                        next_va = vhead + span  # the rest of this table next
                    break
                continue
            if not file_folio_split(e, f, head):
                continue                        # pinned or referenced: kept whole
            if nr < HPAGE_PMD_NR and vhead + span > va:
                next_va = vhead + span          # a shmem mTHP: the rest of this table next
            for p in range(nr):
                pfn = head + p
                if e.fflags[pfn] & PG_DIRTY:
                    n += swapout_shmem(e, f, base + <uint64_t>p)
                elif e.fflags[pfn] & PG_FILE and e.refcount[pfn] == 1:
                    cache_truncate(e, f, base + <uint64_t>p, base + <uint64_t>p + 1)
                    n += 1
            break                               # this table may be gone: look it up again
        va = next_va
    return n


cdef int64_t pageout_range(engine_t *e, mm_t *mm, int cpu, uint64_t start, uint64_t end,
                           int64_t budget, uint64_t *stopped, bint free_reclaim) noexcept nogil:
    """MADV_PAGEOUT over [start, end): reclaim the pages mapped only by this
    mm (madvise_cold_or_pageout_pte_range + shrink_folio_list). Anon pages
    go to swap through the swapcache (clean MADV_FREE'd ones are dropped);
    shmem folios are unmapped and written out with the file. At most
    `budget` pages; *stopped is where the walk ended. Returns pages reclaimed."""
    cdef gather_t g
    cdef int32_t vi
    cdef mm_vma_t *vma
    cdef uint64_t va, stop, vs, ve, pte
    cdef uint64_t *t
    cdef int64_t i, i0, i1, pfn, n = 0, nanon = 0, nfile = 0, cap
    cdef int64_t *anon
    cdef int64_t *fpfn
    cdef int64_t *heads = NULL
    cdef int64_t nheads = 0, hcap
    cdef bint free_swapcache = free_reclaim
    cdef bint full = False
    cdef int64_t nthp = 0, left
    stopped[0] = end
    # A synchronous device (zram) has written the folio by the time pageout()
    # returns: shrink_folio_list frees it from the swapcache at once.
    free_swapcache = free_reclaim or swap_sync_io(e)
    if not free_reclaim:
        nthp = shmem_thp_pageout(e, mm, cpu, start, end)
        # MADV_PAGEOUT of large folios: split where the range covers part
        # (6.12 split_folio), then each is swapped out whole or split
        # (split_folios_in): what is left mapped here is small pages.
        split_folios_partly_in(e, mm, start, end)
        if e.nr_large:
            hcap = e.nr_large                   # no more folios to split than there are
            heads = <int64_t *>malloc(hcap * sizeof(int64_t))
            if heads != NULL:
                nheads = split_folios_in(e, mm, start, end, heads, hcap, free_swapcache, NULL)
    elif e.nr_large and e.nswap > 0:
        # Direct reclaim meets large anon folios on the LRU too
        # (shrink_folio_list): whole to swap where the era and the device
        # allow, else split and their pages reclaimed as small ones below.
        # Written whole, a folio is freed at once here, as a base page is.
        hcap = e.nr_large
        heads = <int64_t *>malloc(hcap * sizeof(int64_t))
        if heads != NULL:
            left = budget
            nheads = split_folios_in(e, mm, start, end, heads, hcap, True, &left)
            nthp = budget - left
            budget = left
    lru_drain(e, cpu)
    # Scratch arrays sized by what is mapped in range, not by the range.
    cap = 0
    for vi in range(mm.nvma):
        vs = mm.vmas[vi].start if mm.vmas[vi].start > start else start
        ve = mm.vmas[vi].end if mm.vmas[vi].end < end else end
        if vs < ve:
            cap += <int64_t>((ve - vs) >> MM_PAGE_SHIFT)
    if cap > budget:
        cap = budget
    if cap <= 0:
        if free_reclaim:
            putback_walk(e, cpu, NULL, 0, heads, nheads, False)
        else:
            pageout_putback(e, cpu, NULL, 0, heads, nheads)
        free(heads)
        return nthp
    anon = <int64_t *>malloc(cap * sizeof(int64_t))
    fpfn = <int64_t *>malloc(cap * sizeof(int64_t))
    if anon == NULL or fpfn == NULL:
        if free_reclaim:
            putback_walk(e, cpu, NULL, 0, heads, nheads, False)
        else:
            pageout_putback(e, cpu, NULL, 0, heads, nheads)
        free(heads)
        free(anon)
        free(fpfn)
        return nthp
    gather_init(&g, mm.id, start, end)
    for vi in range(mm.nvma):
        vma = &mm.vmas[vi]
        vs = vma.start if vma.start > start else start
        ve = vma.end if vma.end < end else end
        if vs >= ve or vma.flags & VM_LOCKED:
            continue
        va = vs
        while va < ve and not full:
            t = leaf_or_skip(e, mm.pgd, va, &stop)
            if t == NULL:
                va = stop
                continue
            stop = block_end(va, ve)
            i0 = <int64_t>((va >> MM_PAGE_SHIFT) & 511)
            i1 = i0 + <int64_t>((stop - va) >> MM_PAGE_SHIFT)
            for i in range(i0, i1):
                if nanon + nfile >= cap:
                    full = True
                    stopped[0] = va + (<uint64_t>(i - i0) << MM_PAGE_SHIFT)
                    break
                pte = t[i]
                if not (pte & PTE_PRESENT) or pte & PTE_SPECIAL:
                    continue
                pfn = <int64_t>pte_pfn(pte)
                if e.fflags[pfn] & PG_ANON:
                    if swapout_anon_pte(e, mm, &t[i], &g):
                        anon[nanon] = pfn
                        nanon += 1
                elif e.fflags[pfn] & PG_FILE and e.mapcount[pfn] == 1 \
                        and not (e.fflags[pfn] & (PG_HEAD | PG_TAIL)):
                    # try_to_unmap of a shmem folio mapped only here: it runs
                    # before pageout(), with or without swap and pins alike.
                    # pte_install_uffd_wp_if_needed() (5.19+): a protected pte
                    # of a uffd-wp file VMA leaves a marker (seen on the host).
                    t[i] = make_marker(PTE_MARKER_UFFD_WP) if pte & PTE_UFFD_WP and \
                        vma.flags & VM_UFFD_WP and e.pol.uffd_wp_file else 0
                    e.mapcount[pfn] -= 1
                    if pte & PTE_DIRTY:
                        e.fflags[pfn] |= PG_DIRTY
                    g.need_flush = 1
                    fpfn[nfile] = pfn
                    nfile += 1
            va = stop
        if full:
            break
    if g.need_flush:
        tlb_flush_range(e, mm.id, start, end)
    g.need_flush = 0
    gather_finish(e, &g)
    for i in range(nanon):
        put_page(e, anon[i], 1)                 # the pte's reference, after the flush
        pfn = anon[i]
        # MADV_PAGEOUT leaves the written folio in the swapcache (the swap
        # file is not synchronous: still under writeback); direct reclaim
        # takes it on its way.
        if free_swapcache and e.fflags[pfn] & PG_USED and e.fflags[pfn] & PG_SWAPCACHE \
                and e.mapcount[pfn] == 0 and e.refcount[pfn] == 1:
            swapcache_delete(e, pfn)
        n += 1
    for i in range(nfile):
        pfn = fpfn[i]
        put_page(e, pfn, 1)
        if e.fflags[pfn] & PG_USED and e.fflags[pfn] & PG_FILE and e.mapcount[pfn] == 0 \
                and e.refcount[pfn] == 1:
            if e.fflags[pfn] & PG_DIRTY:
                n += swapout_shmem(e, file_of(e, e.mapping[pfn]), e.index[pfn])
            else:
                # A clean folio is simply dropped from the cache (__remove_mapping).
                cache_truncate(e, file_of(e, e.mapping[pfn]), e.index[pfn], e.index[pfn] + 1)
                n += 1
    if not free_reclaim:
        pageout_putback(e, cpu, anon, nanon, heads, nheads)
    elif nheads:
        putback_walk(e, cpu, NULL, 0, heads, nheads, False)    # what the split left
    free(heads)
    free(anon)
    free(fpfn)
    return n + nthp


cdef inline int64_t putback_group(int64_t pfn, int64_t *heads, int64_t nheads) noexcept nogil:
    cdef int64_t j
    for j in range(nheads):
        if heads[j] <= pfn < heads[j] + HPAGE_PMD_NR:
            return j
    return -1


cdef void putback_page(engine_t *e, int cpu, int64_t pfn, bint split) noexcept nogil:
    """folio_putback_lru() of one folio reclaim kept: into the CPU's add
    batch (a reference) and off the LRU until the batch moves. A page its
    split left unmapped drops the list's reference here; the batch's is
    then its last."""
    if not (e.fflags[pfn] & PG_USED):
        return
    e.fflags[pfn] &= ~PG_LRU
    lru_add(e, cpu, pfn)
    if split and e.mapcount[pfn] == 0 and not (e.fflags[pfn] & PG_SWAPCACHE):
        put_page(e, pfn, 1)


cdef void putback_walk(engine_t *e, int cpu, int64_t *anon, int64_t nanon, int64_t *heads,
                       int64_t nheads, bint rotate) noexcept nogil:
    """The folios MADV_PAGEOUT's reclaim kept, in the order shrink_folio_list
    kept them: the pages in address order, and a THP split on the way as
    its head then its tails from the last (split_folio_to_list queues them
    so; seen in the host's swap slots and LRU flags). Puts each back, or
    with `rotate`, ends the writeback of each one written."""
    cdef int64_t i, j, p, pfn
    cdef uint8_t *done = NULL
    if nheads:
        done = <uint8_t *>calloc(nheads, 1)
        if done == NULL:
            nheads = 0
    for i in range(nanon + nheads):
        if i < nanon:
            pfn = anon[i]
            j = putback_group(pfn, heads, nheads)
            if j < 0:
                if rotate:
                    if e.fflags[pfn] & PG_USED and e.fflags[pfn] & PG_SWAPCACHE and e.mapcount[pfn] == 0:
                        lru_rotate(e, cpu, pfn)
                else:
                    putback_page(e, cpu, pfn, False)
                continue
        else:
            j = i - nanon                  # a split THP none of whose pages went out
        if done[j]:
            continue
        done[j] = 1
        for p in range(HPAGE_PMD_NR):
            pfn = heads[j] + ((HPAGE_PMD_NR - p) & (HPAGE_PMD_NR - 1))   # head, then 511 .. 1
            if rotate:
                if e.fflags[pfn] & PG_USED and e.fflags[pfn] & PG_SWAPCACHE and e.mapcount[pfn] == 0:
                    lru_rotate(e, cpu, pfn)
            else:
                putback_page(e, cpu, pfn, True)
    free(done)


cdef void pageout_putback(engine_t *e, int cpu, int64_t *anon, int64_t nanon, int64_t *heads,
                          int64_t nheads) noexcept nogil:
    """The end of MADV_PAGEOUT: reclaim_pages puts back every folio it kept
    (reclaim_folio_list: folio_putback_lru, through the per-CPU add batch),
    then the swap writes complete: madvise holds them in its block plug
    (do_madvise's blk_start_plug) until it returns, so each written folio
    ends its writeback after the putback, and one that reached the LRU
    meanwhile (its add batch filled behind it) is rotated, waiting in the
    rotate batch with a reference (folio_end_writeback ->
    folio_rotate_reclaimable). Base pages reach the LRU, and so the rotate
    batch, a whole batch at a time, which moves at once; a split THP's
    all-zero pages fill add batches but are not written, so its written
    pages can stay there, and a write fault then keeps their swapcache
    (do_swap_page's should_try_to_free_swap sees the reference: 6.18.44
    host, THP written at page 0, MADV_PAGEOUT, written again). Measured on
    the host with few written pages; with many, some writes complete
    before the putback and are not rotated (not modelled). The rotate
    batch is the one of the CPU the completion interrupt runs on: the last
    CPU, as the host's virtio-blk request queue interrupt (on another CPU
    than the task's, a write fault's local drain leaves it alone)."""
    putback_walk(e, cpu, anon, nanon, heads, nheads, False)
    putback_walk(e, e.ncpus - 1, anon, nanon, heads, nheads, True)


cdef int64_t reclaim_pages(engine_t *e, int cpu, int64_t want) noexcept nogil:
    """Direct reclaim: walk the mms from the clock hand and page out up to
    `want` pages mapped once (anon to swap, clean MADV_FREE'd pages dropped,
    shmem with its file), then unmapped shmem cache folios. Returns frames
    freed."""
    cdef int64_t before = e.nr_free, got = 0
    cdef int32_t k, mmi, n = e.nmm
    cdef uint64_t stopped, index
    cdef mm_t *mm
    cdef int32_t fid
    cdef uint64_t *t
    cdef int i
    thp_tails(e)                        # the LRU walk reaches every page
    lru_drain(e, cpu)
    if n == 0:
        return 0
    if e.ndsq:
        got += deferred_split_scan(e)   # shrink_slab: the deferred split shrinker first
        if got >= want:
            return e.nr_free - before
    # Large folios whose write is done sit at the LRU's tail (rotated by
    # folio_end_writeback): the first this pass frees.
    got += swapcache_reclaim_large(e)
    if got >= want:
        return e.nr_free - before
    for k in range(n + 1):
        mmi = (e.reclaim_mm + k) % n
        if not e.mms[mmi].alive:
            continue
        mm = &e.mms[mmi]
        got += pageout_range(e, mm, cpu, e.reclaim_va if k == 0 else 0, 1ULL << 47,
                             want - got, &stopped, True)
        if got >= want:
            e.reclaim_mm = mmi
            e.reclaim_va = stopped
            return e.nr_free - before
        e.reclaim_va = 0
    e.reclaim_mm = 0
    if e.nswap == 0:
        return e.nr_free - before
    for fid in range(1, e.nfile):
        if not e.files[fid].alive:
            continue
        index = 0
        while index < file_pages(&e.files[fid]) and e.nr_free - before < want:
            t = table_leaf(e, e.files[fid].root, index << MM_PAGE_SHIFT, False, &e.files[fid].nr_leaves)
            if t != NULL:
                for i in range(MM_PTRS):
                    if t[i] & PTE_PRESENT:
                        swapout_shmem(e, &e.files[fid], index + <uint64_t>i)
            index += 512
    return e.nr_free - before


cdef int64_t madvise_free_range(engine_t *e, mm_t *mm, int cpu, uint64_t start, uint64_t end) noexcept nogil:
    """MADV_FREE (madvise_free_pte_range): swap entries are freed; pages
    mapped only here become lazy-free: clean, old, not swap-backed.
    Returns pages marked."""
    cdef uint64_t va = start, stop, pte
    cdef uint64_t *t
    cdef int64_t i, i0, i1, pfn, n = 0
    cdef bint flush = False
    split_folios_partly_in(e, mm, start, end)   # a folio the range covers in part
    lru_drain(e, cpu)
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
            if pte == 0:
                continue
            if not (pte & PTE_PRESENT):
                if is_swap_pte(pte):
                    swap_entry_free(e, swp_offset(pte))
                    t[i] = 0
                continue
            if pte & PTE_SPECIAL:
                continue
            pfn = <int64_t>pte_pfn(pte)
            if not (e.fflags[pfn] & PG_ANON) or e.mapcount[pfn] != 1 or e.fflags[pfn] & (PG_HEAD | PG_TAIL):
                continue            # madvise_free_huge_pmd / large-folio split: not modelled yet
            if e.fflags[pfn] & PG_SWAPCACHE and not try_to_free_swap(e, pfn):
                continue
            if pte & (PTE_DIRTY | PTE_YOUNG):
                t[i] = pte & ~(PTE_DIRTY | PTE_YOUNG)
                flush = True
            e.fflags[pfn] = (e.fflags[pfn] & ~PG_DIRTY) | PG_LAZYFREE
            n += 1
        va = stop
    if flush:
        tlb_flush_range(e, mm.id, start, end)
    return n
