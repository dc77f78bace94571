# userfaultfd in the core: pte markers, handle_userfault's decision, the
# range ioctls (fs/userfaultfd.c, mm/userfaultfd.c mfill_atomic*,
# uffd_wp_range, move_pages). Messages, waiting and waking live in
# mmemu/uffd.py: the core reports VM_FAULT_UFFD with e.uf_* describing it.

cdef enum:
    UFFD_REASON_MISSING = 1
    UFFD_REASON_WP = 2
    UFFD_REASON_MINOR = 4
    UFFD_CTX_USER_MODE_ONLY = 1
    FILL_COPY = 0
    FILL_ZEROPAGE = 1
    FILL_CONTINUE = 2
    FILL_POISON = 3
    CORE_EEXIST = 17
    CORE_ENOENT = 2
    CORE_EBUSY = 16


cdef inline uint64_t make_marker(uint64_t bits) noexcept nogil:
    # Read through pagemap as a swap entry of type 31 whose offset is the
    # marker bits (host-notes.md); the uffd-wp one also carries the wp bit.
    return (SWP_MARKER << SWP_TYPE_SHIFT) | (bits << SWP_OFFSET_SHIFT) | \
        (PTE_UFFD_WP if bits & PTE_MARKER_UFFD_WP else 0)


cdef inline bint is_marker(uint64_t pte) noexcept nogil:
    return pte != 0 and not (pte & PTE_PRESENT) and ((pte & SWP_TYPE_MASK) >> SWP_TYPE_SHIFT) == SWP_MARKER


cdef inline uint64_t marker_bits(uint64_t pte) noexcept nogil:
    return pte >> SWP_OFFSET_SHIFT


cdef inline bint pte_none_mostly(uint64_t pte) noexcept nogil:
    # none, or any marker: UFFDIO_COPY / CONTINUE may overwrite them. Guard
    # markers too, through 6.18: the 6.18.44 host lets UFFDIO_COPY replace a
    # guard marker (only a 2025-11 series, "mm: correctly handle UFFD PTE
    # markers", after the modelled versions, narrows this to uffd markers).
    return pte == 0 or is_marker(pte)


cdef inline uint64_t mkuffd_wp(uint64_t pte) noexcept nogil:
    # A uffd-wp pte is read-only: the callers did it before 6.2, pte_mkuffd_wp
    # itself since ("mm/uffd: always wr-protect pte in pte/pmd_mkuffd_wp()").
    return (pte | PTE_UFFD_WP) & ~PTE_WRITE


cdef enum:
    RESOLVE_NONE = 0
    RESOLVE_COPY = 1            # MISSING: fill from a source array of content versions
    RESOLVE_ZEROPAGE = 2        # MISSING: UFFDIO_ZEROPAGE
    RESOLVE_UNPROTECT = 3       # WP: unprotect the page and log its address
    RESOLVE_PAGER = 4           # MISSING: evict the oldest resident page (write back), fill from the store


cdef inline int latency_bucket(int64_t ns) noexcept nogil:
    # QEMU's postcopy-latency-dist (10.1): bucket N counts latencies in
    # [2^N, 2^(N+1)) microseconds; below 1 us counts in 0, the last takes the rest.
    cdef int64_t us = ns // 1000
    cdef int b = 0
    while us > 1 and b < 23:
        us >>= 1
        b += 1
    return b


cdef inline int fault_log(uffd_resolver_t *r, int64_t t0, int64_t t1, int64_t i) noexcept nogil:
    """Log a fault the resolver served, when asked to: when it began, how
    long the faulting thread waited, which page (index from the base)."""
    if not r.log_events:
        return 0
    return fault_log_add(r, t0, t1, i)


cdef inline int fault_log_now(engine_t *e, uffd_resolver_t *r, int64_t i) noexcept nogil:
    """fault_log for a fault served at once: it waited the round trip."""
    cdef int64_t t1
    if not r.log_events:
        return 0
    t1 = clock_now(e)
    return fault_log_add(r, t1 - e.cost[MM_STAT_UFFD], t1, i)


cdef int fault_log_add(uffd_resolver_t *r, int64_t t0, int64_t t1, int64_t i) noexcept nogil:
    if grow_i64(&r.ev, &r.capev, r.nev + 3) < 0:
        return -1
    r.ev[r.nev] = t0
    r.ev[r.nev + 1] = t1 - t0
    r.ev[r.nev + 2] = i
    r.nev += 3
    r.logged += 1
    r.lat_sum += t1 - t0
    r.hist[latency_bucket(t1 - t0)] += 1
    return 0


cdef int link_request(engine_t *e, uffd_resolver_t *r, int64_t i) noexcept nogil:
    """A fault on source page i over the modelled link, now: 1 when the
    page had arrived already (the stream's UFFDIO_COPY would have installed
    it before this access: no fault in the modelled system), 0 for a remote
    fault, whose latency moves the clock on; -1 when the log cannot grow.

    The request takes the link's latency to reach the source. Without a
    preempt channel the page then queues behind the stream data already in
    flight (while the stream runs); with one it only waits for earlier
    requests on that channel (QEMU's postcopy-preempt). It comes back after
    its transfer time and the latency - or sooner, if the stream delivers it
    first. (A requested page is one the stream later skips, so the stream
    ends when it would have.)"""
    cdef int64_t now = clock_now(e)
    cdef int64_t t = now - e.cost[MM_STAT_UFFD], start, done     # the fault's start
    if r.arrival[i] <= t:
        r.arrived += 1
        return 1
    t = now                      # the handler sends the request
    if r.preempt:
        start = t + r.lat
        if start < r.chan_free:
            start = r.chan_free
        r.chan_free = start + r.page_ns
    else:
        start = t + r.lat + (r.queue_ns if t + r.lat < r.stream_end else 0)
    done = start + r.page_ns + r.lat
    if r.arrival[i] < done:
        done = r.arrival[i]
    if fault_log(r, now - e.cost[MM_STAT_UFFD], done, i) < 0:
        return -1
    r.arrival[i] = done
    clock_set(e, done)
    return 0


cdef int pager_evict(engine_t *e, mm_t *mm, uffd_resolver_t *r) noexcept nogil:
    """A user-level pager's eviction (umap's, without leaving the core): the
    oldest resident page goes back to the store when its contents changed
    since the fill (a written page holds a fresh content version), then
    MADV_DONTNEED drops it (zap, TLB flush, free)."""
    cdef int64_t victim = r.ring[r.ring_head]
    cdef uint64_t va = r.base + (<uint64_t>victim << MM_PAGE_SHIFT)
    cdef uint64_t *ptep = pte_offset(e, mm, va, False)
    cdef uint64_t v
    cdef gather_t g
    r.ring_head = (r.ring_head + 1) % r.ring_cap
    r.ring_n -= 1
    if ptep != NULL and ptep[0] & PTE_PRESENT:
        v = frame_content_version(e, <int64_t>pte_pfn(ptep[0]))
        if v != r.src[victim]:
            r.src[victim] = v
            r.writebacks += 1
    gather_init(&g, mm.id, va, va + MM_PAGE_SIZE)
    zap_range(e, mm, va, va + MM_PAGE_SIZE, &g, False, False)
    gather_finish(e, &g)
    r.evictions += 1
    return 0


cdef int resolve_in_core(engine_t *e, mm_t *mm, mm_vma_t *vma, uint64_t va, int reason) noexcept nogil:
    """The service thread's work without leaving the core: 0 when resolved
    (the access retries), 1 when resolved as a page the modelled system had
    installed already (no fault there), -1 when this resolver cannot handle
    the fault."""
    cdef uffd_resolver_t *r = &e.uffd_res[vma.uffd]
    cdef uint64_t page = va & ~(MM_PAGE_SIZE - 1)
    cdef uint64_t *ptep
    cdef int64_t i
    cdef int rc, ret = 0
    if vma.flags & VM_HUGETLB:
        return -1               # the resolvers fill and unprotect base pages: hugetlb faults go to the queue
    if r.kind == RESOLVE_COPY and reason == UFFD_REASON_MISSING:
        i = <int64_t>((page - r.base) >> MM_PAGE_SHIFT)
        if page < r.base or i >= r.nsrc:
            return -1
        if r.arrival != NULL:
            ret = link_request(e, r, i)
        else:
            ret = fault_log_now(e, r, i)
        if ret < 0:
            return -1
        rc = uffd_fill(e, mm, 0, vma, page, FILL_COPY, NULL, -1, False)
        if rc < 0:
            return -1
        ptep = pte_offset(e, mm, page, False)
        frame_set_version(e, <int64_t>pte_pfn(ptep[0]), r.src[i])
    elif r.kind == RESOLVE_PAGER and reason == UFFD_REASON_MISSING:
        i = <int64_t>((page - r.base) >> MM_PAGE_SHIFT)
        if page < r.base or i >= r.nsrc or r.ring == NULL or r.ring_cap <= 0:
            return -1
        if r.ring_n == r.ring_cap:
            pager_evict(e, mm, r)
        if fault_log_now(e, r, i) < 0:
            return -1
        if uffd_fill(e, mm, 0, vma, page, FILL_COPY, NULL, -1, False) < 0:
            return -1
        ptep = pte_offset(e, mm, page, False)
        frame_set_version(e, <int64_t>pte_pfn(ptep[0]), r.src[i])
        r.ring[(r.ring_head + r.ring_n) % r.ring_cap] = i
        r.ring_n += 1
    elif r.kind == RESOLVE_ZEROPAGE and reason == UFFD_REASON_MISSING:
        if fault_log_now(e, r, <int64_t>((page - r.base) >> MM_PAGE_SHIFT)) < 0:
            return -1
        if uffd_fill(e, mm, 0, vma, page, FILL_ZEROPAGE, NULL, -1, False) < 0:
            return -1
    elif r.kind == RESOLVE_UNPROTECT and reason == UFFD_REASON_WP:
        ptep = pte_offset(e, mm, page, False)
        if ptep == NULL:
            return -1
        if grow_i64(&r.log, &r.caplog, r.nlog + 1) < 0:
            return -1
        if fault_log_now(e, r, <int64_t>((page - r.base) >> MM_PAGE_SHIFT)) < 0:
            return -1
        # With an image array: record the page's content before the write
        # goes on (a background snapshot saves the page, then unprotects).
        i = <int64_t>((page - r.base) >> MM_PAGE_SHIFT)
        if r.src != NULL and page >= r.base and i < r.nsrc and ptep[0] & PTE_PRESENT:
            r.src[i] = frame_content_version(e, <int64_t>pte_pfn(ptep[0]))
        ptep[0] &= ~PTE_UFFD_WP
        r.log[r.nlog] = <int64_t>page
        r.nlog += 1
    else:
        return -1
    r.count += 1
    return ret


cdef int handle_userfault(engine_t *e, mm_t *mm, mm_vma_t *vma, uint64_t va, int fflags,
                          int reason) noexcept nogil:
    """handle_userfault(): SIGBUS where the context says so, an in-core
    resolver if one is set, otherwise record the message for the Python side
    to queue and return VM_FAULT_UFFD."""
    cdef int32_t ctx = vma.uffd
    cdef uint32_t flags = 0
    cdef int rc
    if ctx <= 0 or ctx >= e.nuffd:
        return VM_FAULT_SIGBUS
    if e.uffd_feat[ctx] & UFFD_FEATURE_SIGBUS:
        return VM_FAULT_SIGBUS
    if e.uffd_cflags[ctx] & UFFD_CTX_USER_MODE_ONLY and not (fflags & FAULT_FLAG_USER):
        return VM_FAULT_SIGBUS          # a kernel-mode fault (GUP, copy_*_user)
    if fflags & FAULT_FLAG_NO_RETRY:
        # handle_userfault() without FAULT_FLAG_ALLOW_RETRY: nothing queued,
        # SIGBUS to the caller (GUP turns it into EFAULT, /proc/pid/mem EIO).
        return VM_FAULT_SIGBUS
    stat_add(e, MM_STAT_UFFD, 1)      # the handler's round trip is on the clock
    if e.uffd_res[ctx].kind != RESOLVE_NONE:
        rc = resolve_in_core(e, mm, vma, va, reason)
        if rc == 1:
            # Installed by the modelled background stream before this access:
            # neither a fault nor a userfault there (the access walks on).
            stat_add(e, MM_STAT_FAULT, -1)
            stat_add(e, MM_STAT_UFFD, -1)
            return 0
        if rc == 0:
            stat_add(e, MM_STAT_UFFD_CORE, 1)
            return 0
    if fflags & FAULT_FLAG_WRITE:
        flags |= UFFD_PAGEFAULT_FLAG_WRITE
    if reason == UFFD_REASON_WP:
        flags |= UFFD_PAGEFAULT_FLAG_WP
    elif reason == UFFD_REASON_MINOR:
        flags |= UFFD_PAGEFAULT_FLAG_MINOR
    e.uf_ctx = ctx
    e.uf_mm = mm.id
    e.uf_addr = va
    e.uf_flags = flags
    e.uf_reason = reason
    return VM_FAULT_UFFD


cdef inline bint flags_want_writenotify(engine_t *e, uint64_t flags) noexcept nogil:
    """vma_wants_writenotify() for a shared writable VMA without page_mkwrite
    or dirty accounting (shmem): soft-dirty tracking, and 6.2+ uffd-wp."""
    if (flags & (VM_SHARED | VM_WRITE)) != (VM_SHARED | VM_WRITE):
        return False
    if vma_soft_dirty_tracking(e, flags):
        return True
    return e.pol.uffd_wp_writenotify != 0 and (flags & VM_UFFD_WP) != 0


cdef int64_t uffd_wp_range(engine_t *e, mm_t *mm, uint64_t start, uint64_t end, bint protect,
                           bint use_markers, uint64_t vmflags, int64_t *touched, bint scan=False) noexcept nogil:
    """UFFDIO_WRITEPROTECT over one VMA's range (change_protection with
    MM_CP_UFFD_WP / _RESOLVE). Returns ptes that lost write (to flush), or -1
    if a page table could not be allocated. scan: PAGEMAP_SCAN's
    make_uffd_wp_pte instead, which only sets the bit of a swap or
    migration entry (a writable migration entry stays writable: its
    remap drops the protection)."""
    cdef uint64_t va = start, stop, pte
    cdef uint64_t *t
    cdef int64_t i, i0, i1, pfn, lost = 0
    cdef bint alloc = protect and use_markers
    cdef bint restore = not protect and e.pol.uffd_unprotect_writable != 0 and (vmflags & VM_WRITE) != 0
    # Before 6.3 unprotect used vm_get_page_prot(vm_flags): a shared
    # writable VMA's ptes come back writable, clean or dirty.
    cdef bint shared_rw = not protect and e.pol.uffd_unprotect_writable == 0 and \
        (vmflags & (VM_SHARED | VM_WRITE)) == (VM_SHARED | VM_WRITE)
    # ... and every other pte comes back as vm_page_prot says: read-only, a
    # writable private pte included (5.7-6.2 mwriteprotect_range passes
    # vm_get_page_prot(vm_flags), PAGE_COPY for a private mapping). That pte
    # lost write: the flush is deferred to the end of the range (B11's t0).
    cdef bint drop_write = not protect and e.pol.uffd_unprotect_writable == 0 and not shared_rw
    if vmflags & VM_HUGETLB:
        return hugetlb_wp_range(e, mm, start, end, protect, vmflags, touched)    # core/hugetlb.pxi
    split_huge_pmd_edges(e, mm, start, end)     # change_huge_pmd on whole leaves
    while va < end:
        if alloc:
            t = pte_table(e, mm, va, True)
            if t == NULL:
                return -1
            stop = block_end(va, end)
        else:
            t = leaf_or_skip(e, mm.pgd, va, &stop)
            if t == NULL:
                va = stop
                continue
            stop = block_end(va, end)
        i0 = <int64_t>((va >> MM_PAGE_SHIFT) & 511)
        i1 = i0 + <int64_t>((stop - va) >> MM_PAGE_SHIFT)
        if protect:
            # The common case, kept apart so the loop stays small: present
            # ptes lose write and gain uffd-wp.
            for i in range(i0, i1):
                pte = t[i]
                if pte & PTE_PRESENT:
                    lost += (pte & PTE_WRITE) != 0
                    touched[0] += 1
                    t[i] = mkuffd_wp(pte)
                elif pte == 0:
                    if use_markers:
                        t[i] = make_marker(PTE_MARKER_UFFD_WP)
                elif is_migration_entry(pte) and not scan:
                    t[i] = migration_entry_wrprotect(e, pte) | PTE_UFFD_WP
                elif is_swap_pte(pte) or is_migration_entry(pte):
                    t[i] = pte | PTE_UFFD_WP
            va = stop
            continue
        for i in range(i0, i1):            # unprotect
            pte = t[i]
            if pte & PTE_PRESENT:
                touched[0] += 1
                pte &= ~PTE_UFFD_WP
                if shared_rw and not (pte & (PTE_SPECIAL | PTE_PROTNONE)):
                    pte |= PTE_WRITE
                elif drop_write and pte & PTE_WRITE:
                    pte &= ~PTE_WRITE
                    lost += 1
                elif restore and not (pte & (PTE_SPECIAL | PTE_PROTNONE)):
                    # 6.3+: MM_CP_TRY_CHANGE_WRITABLE, as mprotect does.
                    pfn = <int64_t>pte_pfn(pte)
                    if vmflags & VM_SHARED:
                        # vma_wants_manual_pte_write_upgrade() asks
                        # vma_wants_writenotify() with the VMA's own, already
                        # write-notify read-only vm_page_prot: it says no, so
                        # a shared pte stays read-only whenever write-notify
                        # is on (uffd-wp itself turns it on: seen on the host).
                        if pte & PTE_DIRTY and not flags_want_writenotify(e, vmflags):
                            pte |= PTE_WRITE
                    elif e.fflags[pfn] & PG_ANON and e.fflags[pfn] & PG_ANON_EXCLUSIVE \
                            and not (vma_soft_dirty_tracking(e, vmflags) and not (pte & PTE_SOFT_DIRTY)):
                        pte |= PTE_WRITE
                t[i] = pte
            elif is_marker(pte):
                if marker_bits(pte) == PTE_MARKER_UFFD_WP:
                    t[i] = 0
            elif is_migration_entry(pte):
                t[i] = migration_entry_wrprotect(e, pte) & ~PTE_UFFD_WP
            elif is_swap_pte(pte):
                t[i] = pte & ~PTE_UFFD_WP
        va = stop
    return lost


cdef int uffd_fill(engine_t *e, mm_t *mm, int cpu, mm_vma_t *vma, uint64_t va, int kind,
                   const uint8_t *src, int64_t src_pfn, bint wp) noexcept nogil:
    """One page of UFFDIO_COPY / ZEROPAGE / CONTINUE / POISON
    (mfill_atomic_pte*): 0 or a negative errno. COPY takes the contents from
    `src` bytes, or from frame `src_pfn` (a copy from user memory)."""
    cdef uint64_t *ptep = pte_offset(e, mm, va, True)
    cdef uint64_t pte, entry, index
    cdef uint64_t *cs
    cdef int64_t pfn
    cdef int rc = 0
    cdef mm_file_t *f
    cdef bint shared = (vma.flags & VM_SHARED) != 0
    if ptep == NULL:
        return -CORE_ENOMEM
    pte = ptep[0]
    if not shared:
        anon_vma_prepare(e, mm, vma)        # mfill_atomic(): anon_vma_prepare() for every private VMA
    if kind == FILL_POISON:
        if pte != 0:
            return -CORE_EEXIST         # any existing entry, markers included
        ptep[0] = make_marker(PTE_MARKER_POISONED)
        return 0
    if kind == FILL_ZEROPAGE and not shared:
        # mfill_atomic_pte_zeropage(): any private VMA gets the shared zero page.
        if vma.file and vma_index(vma, va) >= file_pages(file_of(e, vma.file)):
            return -CORE_EFAULT
        if pte != 0:
            return -CORE_EEXIST         # the zero page needs a strictly empty slot
        ptep[0] = pfn_pte(ZERO_PFN) | PTE_PRESENT | PTE_SPECIAL | PTE_YOUNG | vma_prot_bits(vma.flags)
        return 0
    if kind == FILL_CONTINUE:
        # Map the page-cache folio that must already exist: it is looked up
        # first (mfill_atomic_pte_continue: shmem_get_folio), so a hole is
        # EFAULT even where the pte is taken; only then EEXIST
        # (mfill_atomic_install_pte; seen on the 6.18 host by mmemu diff).
        f = file_of(e, vma.file)
        index = vma_index(vma, va)
        if index >= file_pages(f):
            return -CORE_EINVAL          # shmem_get_folio(SGP_NOALLOC) past i_size
        cs = cache_slot(e, f, index, False)
        if cs != NULL and is_swap_pte(cs[0]):
            # SGP_NOALLOC still swaps a swapped-out folio in (seen on the host).
            if shmem_swapin(e, f, index, cs, cpu, &rc) < 0:
                return -CORE_ENOMEM if rc & VM_FAULT_OOM else -CORE_EFAULT
        if cs == NULL or not (cs[0] & PTE_PRESENT):
            return -CORE_EFAULT          # a hole: -ENOENT from the cache, EFAULT to the caller
        if not pte_none_mostly(pte):
            return -CORE_EEXIST
        pfn = <int64_t>pte_pfn(cs[0])
        e.refcount[pfn] += 1
        e.mapcount[pfn] += 1
        entry = pfn_pte(pfn) | PTE_PRESENT | PTE_YOUNG | PTE_DIRTY | vma_prot_bits(vma.flags)
        if shared and vma.flags & VM_WRITE:
            entry |= PTE_WRITE
        ptep[0] = mkuffd_wp(entry) if wp else entry
        return 0
    if not pte_none_mostly(pte):
        return -CORE_EEXIST
    if vma.file and shared:
        # shmem: the page goes into the file, then into the page table.
        f = file_of(e, vma.file)
        index = vma_index(vma, va)
        if index >= file_pages(f):
            return -CORE_EFAULT
        cs = cache_slot(e, f, index, True)
        if cs == NULL:
            return -CORE_ENOMEM
        if cs[0] != 0:
            return -CORE_EEXIST
        pfn = frame_alloc(e)
        if pfn < 0:
            return -CORE_ENOMEM
        e.fflags[pfn] |= PG_FILE | PG_DIRTY
        e.mapping[pfn] = <uint16_t>f.id
        e.index[pfn] = <uint32_t>index
        cs[0] = pfn_pte(pfn) | PTE_PRESENT
        f.nrpages += 1
        e.refcount[pfn] += 1
    else:
        # anon, or a private mapping (which receives an anon page).
        pfn = frame_alloc(e)
        if pfn < 0:
            return -CORE_ENOMEM
        e.fflags[pfn] |= PG_ANON | (PG_ANON_EXCLUSIVE if e.pol.anon_exclusive else 0)
        mm.rss_anon += 1
        anon_vma_prepare(e, mm, vma)
    if kind == FILL_COPY:
        if src != NULL:
            if frame_write(e, pfn, 0, MM_PAGE_SIZE, src) < 0:
                return -CORE_ENOMEM
        elif src_pfn >= 0 and frame_copy(e, pfn, src_pfn) < 0:
            return -CORE_ENOMEM
    e.mapcount[pfn] += 1
    lru_add(e, cpu, pfn)
    entry = pfn_pte(pfn) | PTE_PRESENT | PTE_YOUNG | PTE_DIRTY | PTE_SOFT_DIRTY | vma_prot_bits(vma.flags)
    if vma.flags & VM_WRITE:
        entry |= PTE_WRITE
    ptep[0] = mkuffd_wp(entry) if wp else entry
    return 0


cdef enum:
    UFFD_MOVE_AGAIN = 2                 # uffd_move_page: look at the same page again


cdef int uffd_move_page(engine_t *e, mm_t *mm, mm_vma_t *dvma, uint64_t dst, uint64_t src,
                        bint allow_holes, bint move_zeropage) noexcept nogil:
    """One page of UFFDIO_MOVE (move_pages_pte): 0, 1 for a skipped source
    hole, UFFD_MOVE_AGAIN after waiting for a migration, or a negative errno."""
    cdef uint64_t *sp = pte_offset(e, mm, src, False)
    cdef uint64_t *dp
    cdef uint64_t pte
    cdef int64_t pfn
    # move_pages(): no page table at src is ENOENT at once (without
    # ALLOW_SRC_HOLES); otherwise move_pages_pte() looks at dst first, so
    # a populated dst is EEXIST even when src is a hole.
    if sp == NULL and not allow_holes:
        return -CORE_ENOENT
    dp = pte_offset(e, mm, dst, True)
    if dp == NULL:
        return -CORE_ENOMEM
    if dp[0] != 0:
        return -CORE_EEXIST
    if sp == NULL or sp[0] == 0:
        return 1 if allow_holes else -CORE_ENOENT
    pte = sp[0]
    if pte & PTE_PRESENT:
        if pte & PTE_SPECIAL:
            if not move_zeropage:
                return -CORE_EBUSY      # the zero page: EBUSY in 6.8's first version
            sp[0] = 0                   # move_zeropage_pte() [~ 6.9]
            tlb_flush_page(e, mm.id, src)
            dp[0] = pte
            return 0
        pfn = <int64_t>pte_pfn(pte)
        if e.fflags[pfn] & (PG_HEAD | PG_TAIL) and not pfn_is_hugetlb(e, pfn):
            # move_pages_pte(): an exclusive page of a large folio: the folio
            # is split (split_folio, 6.12's zero-page remap) and the page
            # looked at again; a folio that cannot be split is -EAGAIN.
            if not (e.fflags[pfn] & PG_ANON) or (e.pol.anon_exclusive and not (e.fflags[pfn] & PG_ANON_EXCLUSIVE)):
                return -CORE_EBUSY
            if split_folio_here(e, mm, folio_of(e, pfn), src, True, False) < 0:
                return -CORE_EAGAIN
            return uffd_move_page(e, mm, dvma, dst, src, allow_holes, move_zeropage)
        if not (e.fflags[pfn] & PG_ANON) or e.fflags[pfn] & PG_KSM or e.mapcount[pfn] != 1 \
                or (e.pol.anon_exclusive and not (e.fflags[pfn] & PG_ANON_EXCLUSIVE)):
            return -CORE_EBUSY          # not an exclusive anon page
        if e.refcount[pfn] >= GUP_PIN_COUNTING_BIAS:
            return -CORE_EBUSY          # maybe pinned
        # "dirty and writable, like mremap"
        pte |= PTE_DIRTY | PTE_SOFT_DIRTY
        if dvma.flags & VM_WRITE:
            pte |= PTE_WRITE
        anon_vma_prepare(e, mm, dvma)
    elif is_swap_pte(pte):
        if not (pte & SWP_EXCLUSIVE):
            return -CORE_EBUSY
    elif is_migration_entry(pte):
        # move_pages_pte (6.8-6.18): migration_entry_wait(), then -EAGAIN,
        # which move_pages() retries at the same address. The wait ends
        # only when the entry is gone (the scheduler's SP_MIGRATION_WAIT);
        # an entry still there afterwards could never go: -EAGAIN out.
        sched_point(e, SP_MIGRATION_WAIT, mm.id, src, <uint64_t>swp_offset(pte))
        if sp[0] == pte:
            return -CORE_EAGAIN
        return UFFD_MOVE_AGAIN
    else:
        return -CORE_EFAULT             # another non-swap entry: a marker, hwpoison
    sp[0] = 0
    tlb_flush_page(e, mm.id, src)
    dp[0] = pte
    return 0


cdef int64_t uffd_move_range(engine_t *e, mm_t *mm, uint64_t dst, uint64_t src, int64_t npages,
                             bint allow_holes, bint move_zeropage, int *err) noexcept nogil:
    """move_pages() (6.12) over npages: a PMD leaf at src moves whole
    (move_pages_huge_pmd) when both addresses are 2 MiB aligned, 2 MiB or
    more is left and dst's pmd is none; otherwise it is split first, unless
    it is a THP that is not exclusive (-EBUSY); a PMD leaf at dst is
    -EEXIST. Then page by page (uffd_move_page). Returns pages moved; *err
    is the errno that stopped it, 0 if none."""
    cdef int64_t i = 0, head, k
    cdef int32_t vi
    cdef int32_t *ss
    cdef int32_t *ds
    cdef uint64_t *t
    cdef uint64_t a, b, set
    cdef int rc
    cdef mm_vma_t *dvma
    err[0] = 0
    while i < npages:
        a = src + (<uint64_t>i << MM_PAGE_SHIFT)
        b = dst + (<uint64_t>i << MM_PAGE_SHIFT)
        vi = find_vma(mm, b)
        if vi < 0:
            err[0] = CORE_ENOENT
            return i
        dvma = &mm.vmas[vi]
        if e.nr_huge_pmd:
            ds = pmd_slot(e, mm, b, False)
            if ds != NULL and pmd_trans_huge(ds[0]):
                err[0] = CORE_EEXIST
                return i
            ss = pmd_slot(e, mm, a, False)
            if ss != NULL and pmd_trans_huge(ss[0]) \
                    and not pfn_is_hugetlb(e, <int64_t>pte_pfn(pmd_leaf_table(e, ss[0])[0])):
                t = pmd_leaf_table(e, ss[0])
                head = <int64_t>pte_pfn(t[0])
                if (a | b) & (PMD_SPAN - 1) or npages - i < HPAGE_PMD_NR or (ds != NULL and ds[0] != 0):
                    # move_splits_huge_pmd(): split, then the pages one by one.
                    if not (t[0] & PTE_SPECIAL) and e.pol.anon_exclusive \
                            and not (e.fflags[head] & PG_ANON_EXCLUSIVE):
                        err[0] = CORE_EBUSY
                        return i
                    split_huge_pmd_locked(e, mm, ss, a & ~(<uint64_t>PMD_SPAN - 1))
                else:
                    # move_pages_huge_pmd(): an exclusive, unpinned THP (or the
                    # huge zero page) moves with its deposited table.
                    if not (t[0] & PTE_SPECIAL):
                        if (e.pol.anon_exclusive and not (e.fflags[head] & PG_ANON_EXCLUSIVE)) \
                                or entire_mapcount(e, head)[0] != 1 or folio_maybe_dma_pinned(e, head):
                            err[0] = CORE_EBUSY
                            return i
                        anon_vma_prepare(e, mm, dvma)       # folio_move_anon_rmap
                    ds = pmd_slot(e, mm, b, True)
                    if ds == NULL:
                        err[0] = CORE_ENOMEM
                        return i
                    pmd_flush(e, mm, a)
                    ds[0] = ss[0]
                    ss[0] = 0
                    if not (t[0] & PTE_SPECIAL):
                        # mk_huge_pmd + pmd_mkdirty + maybe_pmd_mkwrite for dst.
                        set = PTE_DIRTY | PTE_SOFT_DIRTY | (PTE_WRITE if dvma.flags & VM_WRITE else 0)
                        for k in range(HPAGE_PMD_NR):
                            t[k] |= set
                    i += HPAGE_PMD_NR
                    continue
        rc = uffd_move_page(e, mm, dvma, b, a, allow_holes, move_zeropage)
        if rc < 0:
            err[0] = -rc
            return i
        if rc == UFFD_MOVE_AGAIN:
            continue                    # the same page again, after the migration
        i += 1
    return i


# PAGE_IS_* (PAGEMAP_SCAN categories): core/uapi.pxi, generated.


cdef uint16_t pagemap_category(engine_t *e, mm_vma_t *vma, uint64_t pte, bint none_written) noexcept nogil:
    """pagemap_page_category() (fs/proc/task_mmu.c, 6.7+) for one pte."""
    cdef uint16_t c = 0
    cdef int64_t pfn
    if vma.flags & VM_UFFD_WP and vma.uffd > 0 and vma.uffd < e.nuffd \
            and e.uffd_feat[vma.uffd] & UFFD_FEATURE_WP_ASYNC:
        c |= PAGE_IS_WPALLOWED
    # pagemap_scan_test_walk's VMA category goes to every page, an empty
    # one too (pagemap_scan_pmd_entry ORs cur_vma_category in).
    if e.pol.soft_dirty and vma.flags & VM_SOFTDIRTY:
        c |= PAGE_IS_SOFT_DIRTY
    if pte & PTE_PRESENT:
        c |= PAGE_IS_PRESENT
        if not (pte & PTE_UFFD_WP):
            c |= PAGE_IS_WRITTEN
        if e.pol.soft_dirty and pte & PTE_SOFT_DIRTY:
            c |= PAGE_IS_SOFT_DIRTY
        if pte & PTE_SPECIAL:
            c |= PAGE_IS_PFNZERO
        else:
            pfn = <int64_t>pte_pfn(pte)
            if not (e.fflags[pfn] & PG_ANON):
                c |= PAGE_IS_FILE
    elif pte != 0:
        c |= PAGE_IS_SWAPPED
        if not (pte & PTE_UFFD_WP):
            c |= PAGE_IS_WRITTEN
        if is_marker(pte) and marker_bits(pte) & PTE_MARKER_GUARD:
            c |= PAGE_IS_GUARD
        if e.pol.soft_dirty and pte & PTE_SOFT_DIRTY:
            c |= PAGE_IS_SOFT_DIRTY
    elif none_written:
        # Up to 6.18 only the WP_MATCHING fast path counts an empty pte as
        # written; the generic path gives it no category (B21, fixed 2026).
        c |= PAGE_IS_WRITTEN
    return c


cdef enum:
    # Engine-only flags above the PAGE_IS_* bits of pagemap_hugetlb_category():
    # the page lies in a hugetlb entry (the walk's hugetlb_entry sees it), or
    # in a hugetlb range whose table is missing (its pte_hole sees it).
    PM_SCAN_HUGETLB_ENTRY = 0x1000
    PM_SCAN_HUGETLB_HOLE = 0x2000


cdef int64_t pagemap_scan_wp_huge(engine_t *e, mm_t *mm, uint64_t start, uint64_t end,
                                  uint64_t vmflags, int64_t *touched) noexcept nogil:
    """PAGEMAP_SCAN's write-protect of the huge pages of [start, end), whole
    (6.12 make_uffd_wp_huge_pte, and pagemap_scan_hugetlb_hole_wp for a
    huge page without a table): as UFFDIO_WRITEPROTECT's
    hugetlb_change_protection (a present entry uffd-wp and read-only, a
    none one a marker, a marker left alone) except that a migration entry
    only gains the swp uffd-wp bit and keeps its kind - a writable one
    comes back writable, without uffd-wp, when the migration ends
    (remove_migration_pte). The entries that lost write, or -1."""
    cdef int h = hugetlb_hstate_of_range(e, mm, start)
    cdef uint64_t sz = 1ULL << hstate_shift(h), va = start & ~(sz - 1)
    cdef int64_t leaves = hstate_leaves(h), k, i, lost = 0, r
    cdef int32_t *slot
    cdef uint64_t *t
    while va < end:
        slot = pmd_slot(e, mm, va, False)
        if slot != NULL and slot[0] != 0 and is_migration_entry(pmd_leaf_table(e, slot[0])[0]):
            for k in range(leaves):
                t = pmd_leaf_table(e, slot[k])
                for i in range(HPAGE_PMD_NR):
                    t[i] |= PTE_UFFD_WP
        else:
            r = hugetlb_wp_range(e, mm, va, va + sz, True, vmflags, touched)
            if r < 0:
                return -1
            lost += r
        va += sz
    return lost


cdef uint16_t pagemap_hugetlb_category(engine_t *e, mm_t *mm, mm_vma_t *vma, uint64_t va) noexcept nogil:
    """PAGEMAP_SCAN's categories at va in a hugetlb VMA (6.12): the VMA's own
    (pagemap_scan_test_walk: WPALLOWED, SOFT_DIRTY from VM_SOFTDIRTY) with
    pagemap_hugetlb_category() of the entry, flagged ENTRY; or, where
    huge_pte_offset() finds no table for the entry (the PMD table of a 2 MiB
    page, the PUD table of a 1 GiB one), the VMA's own only - no HUGE, no
    WRITTEN - as walk_hugetlb_range() hands such a range to pte_hole, flagged
    HOLE. An empty entry is HUGE alone (not WRITTEN: a none huge pte is not
    counted as written on any version); a marker is SWAPPED, WRITTEN unless
    it is the uffd-wp one; a present entry PRESENT, WRITTEN unless uffd-wp,
    FILE unless its page is anon, SOFT_DIRTY once it was made dirty (x86's
    pte_mkdirty sets the soft-dirty bit too, and clear_refs never walks
    hugetlb) or took the bit from a migration entry; never PFNZERO. A
    migration entry is SWAPPED, WRITTEN unless it has the swp uffd-wp bit,
    SOFT_DIRTY with the swp soft-dirty one (no FILE test for a swap entry)."""
    cdef uint16_t c = 0
    cdef int h = vma_hstate(e, vma)
    cdef int64_t leaves = hstate_leaves(h), k, i
    cdef int32_t *slot
    cdef uint64_t *t
    cdef uint64_t pte
    if vma.flags & VM_UFFD_WP and vma.uffd > 0 and vma.uffd < e.nuffd \
            and e.uffd_feat[vma.uffd] & UFFD_FEATURE_WP_ASYNC:
        c |= PAGE_IS_WPALLOWED
    if e.pol.soft_dirty and vma.flags & VM_SOFTDIRTY:
        c |= PAGE_IS_SOFT_DIRTY
    if dir_page(e, mm.pgd)[(va >> PGDIR_SHIFT) & 511] == 0:
        return c | PM_SCAN_HUGETLB_HOLE           # no PUD table
    if h == MM_HSTATE_1G:
        slot = pmd_slot(e, mm, va & ~((1ULL << PUD_SHIFT) - 1), False)
        if slot == NULL:
            return c | PAGE_IS_HUGE | PM_SCAN_HUGETLB_ENTRY     # a none PUD entry
    else:
        slot = pmd_slot(e, mm, va, False)
        if slot == NULL:
            return c | PM_SCAN_HUGETLB_HOLE       # no PMD table
    c |= PAGE_IS_HUGE | PM_SCAN_HUGETLB_ENTRY
    if slot[0] == 0:
        return c
    t = pmd_leaf_table(e, slot[0])
    pte = t[0]
    if not (pte & PTE_PRESENT):
        c |= PAGE_IS_SWAPPED
        if is_migration_entry(pte):
            # pte_swp_uffd_wp_any / pte_swp_soft_dirty of the swap entry
            if not (pte & PTE_UFFD_WP):
                c |= PAGE_IS_WRITTEN
            if e.pol.soft_dirty and pte & PTE_SOFT_DIRTY:
                c |= PAGE_IS_SOFT_DIRTY
        elif not (marker_bits(pte) & PTE_MARKER_UFFD_WP):
            c |= PAGE_IS_WRITTEN
        return c
    c |= PAGE_IS_PRESENT
    if not (pte & PTE_UFFD_WP):
        c |= PAGE_IS_WRITTEN
    if not (e.fflags[folio_of(e, <int64_t>pte_pfn(pte))] & PG_ANON):
        c |= PAGE_IS_FILE
    if e.pol.soft_dirty and not (c & PAGE_IS_SOFT_DIRTY):
        for k in range(leaves):
            t = pmd_leaf_table(e, slot[k])
            for i in range(HPAGE_PMD_NR):
                if t[i] & (PTE_DIRTY | PTE_SOFT_DIRTY):
                    return c | PAGE_IS_SOFT_DIRTY
    return c
