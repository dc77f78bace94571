# Frames: allocation, references, contents, the per-CPU LRU add batch.
#
# Contents are either byte-exact (PG_BYTES: `version` is a slot of the byte
# store, written through the byte API) or a 64-bit content version (bulk and
# trace-driven writes): version 0 reads as zeros, version v as the 8 bytes of v
# repeated. A lost or misdirected bulk write therefore shows as a wrong
# version, at 8 bytes per page instead of 4 KiB.


from libc.stdlib cimport malloc, calloc, realloc, free, qsort
from posix.stdlib cimport posix_memalign
from libc.string cimport memcmp, memcpy, memmove, memset
from posix.mman cimport madvise
from libc.stdint cimport uintptr_t

cdef enum:
    ZERO_PFN = 0
    HOST_MADV_POPULATE_WRITE = 23       # the host's own madvise (uapi mman-common.h, 5.14)

cdef inline void stat_add(engine_t *e, int k, int64_t n) noexcept nogil:
    """Count n events of kind k. Their cost on the emulated clock is implied
    (clock_now): counting stays one add on the fast paths."""
    e.stats[k] += n


cdef inline int64_t clock_now(engine_t *e) noexcept nogil:
    """The running CPU's emulated time: its base plus every counted event at
    its cost (mmemu.cost). Computed when asked - a userfault served in the
    core, replay's time limit - never per event."""
    cdef int64_t t = e.now
    cdef int k
    for k in range(MM_STAT_NR):
        t += e.stats[k] * e.cost[k]
    return t


cdef inline void clock_set(engine_t *e, int64_t t) noexcept nogil:
    """Make clock_now(e) read t (the base absorbs the counted events)."""
    e.now += t - clock_now(e)


# grow_i64: core/array.pxi


cdef inline uint64_t pte_pfn(uint64_t pte) noexcept nogil:
    return (pte & PTE_PFN_MASK) >> PTE_PFN_SHIFT


cdef inline uint64_t pfn_pte(int64_t pfn) noexcept nogil:
    return (<uint64_t>pfn) << PTE_PFN_SHIFT


cdef int64_t frame_alloc(engine_t *e) noexcept nogil:
    """A free frame with refcount 1, mapcount 0, no flags, zero contents; -1 if none."""
    cdef int64_t pfn
    if e.zoned:
        pfn = zone_frame_take(e)    # core/zones.pxi: per-node, per-zone free lists
        if pfn < 0:
            return -1
    elif e.nr_free <= e.nr_pgtable:
        return -1                   # the free frames left hold page tables
    elif e.free_head > 0:
        pfn = e.free_head - 1
        e.free_head = <int64_t>e.version[pfn]
    elif e.next_unused < e.unused_end:
        pfn = e.next_unused
        e.next_unused += 1
    elif e.mcarve < e.mcarve_end:
        pfn = e.mcarve              # the rest of the block mTHPs are carved from (core/mthp.pxi)
        e.mcarve += 1
    elif e.nhfree > 0:
        pfn = hblock_break(e)       # core/huge.pxi: the buddy splits a free THP-sized block
    else:
        return -1
    e.nr_free -= 1
    e.refcount[pfn] = 1
    e.mapcount[pfn] = 0
    e.version[pfn] = 0
    e.fflags[pfn] = PG_USED | PG_UPTODATE
    e.mapping[pfn] = 0
    e.index[pfn] = 0
    return pfn


cdef void bytes_release(engine_t *e, int64_t slot) noexcept nogil:
    if e.nbytes_free == e.bytes_free_cap:
        # The free stack never needs more entries than slots ever handed out.
        return
    e.bytes_free[e.nbytes_free] = slot
    e.nbytes_free += 1


cdef void frame_free(engine_t *e, int64_t pfn) noexcept nogil:
    if e.fflags[pfn] & PG_BYTES:
        bytes_release(e, <int64_t>e.version[pfn])
    e.fflags[pfn] = 0
    e.mapcount[pfn] = 0
    e.refcount[pfn] = 0
    if e.zoned:
        zone_frame_put(e, pfn)      # core/zones.pxi
    else:
        freelist_push(e, pfn)
    e.nr_free += 1


cdef inline void freelist_push(engine_t *e, int64_t pfn) noexcept nogil:
    """Onto the single-node order-0 free list (linked through `version`);
    the caller keeps nr_free."""
    e.version[pfn] = <uint64_t>e.free_head
    e.free_head = pfn + 1


cdef inline int shmem_forder(engine_t *e, int64_t pfn) noexcept nogil:
    """The order of the shmem mTHP pfn is a page of, else 0. The table is
    made with the first shmem mTHP (shmem_mthp_tables): a machine that has
    none keeps no byte per frame for it."""
    return e.forder[pfn] if e.forder != NULL else 0


cdef inline int64_t folio_of(engine_t *e, int64_t pfn) noexcept nogil:
    """The folio a page belongs to (page_folio): its head. Large folios are
    naturally aligned: an mTHP's order is on each of its pages (mthp_order),
    else order HPAGE_PMD_ORDER, but for 1 GiB hugetlb pages."""
    if e.fflags[pfn] & PG_TAIL:
        if e.mapping[pfn] and not (e.fflags[pfn] & PG_FILE):
            return pfn & ~((<int64_t>1 << e.mapping[pfn]) - 1)    # an mTHP: mthp_order
        if shmem_forder(e, pfn):
            return pfn & ~((<int64_t>1 << e.forder[pfn]) - 1)     # a shmem mTHP
        # (a shmem THP's tails name their file in `mapping`: PMD order)
        if pfn < e.gig_end and pfn >= e.gig_base and pfn_in_gig(e, pfn):
            # a 1 GiB hugetlb page (core/hugetlb.pxi): order 18, naturally aligned
            # (the bounds hold every node's; the node's own range decides)
            return pfn & ~(<int64_t>HPAGE_PUD_NR - 1)
        return pfn & ~(<int64_t>HPAGE_PMD_NR - 1)
    return pfn


cdef inline int mthp_order(engine_t *e, int64_t pfn) noexcept nogil:
    """The order of the mTHP (core/mthp.pxi) pfn is a page of, 0 for any
    other page. Kept in `mapping`, which an anon page has no use for (the
    kernel too keeps a folio's order and counters in its tail pages'
    struct page), so it costs no byte per frame; a tail of any other large
    folio has mapping 0, a hugetlb file page's head is PG_FILE."""
    if e.fflags[pfn] & PG_FILE:
        return 0
    return e.mapping[pfn]


cdef inline int32_t *folio_pincount(engine_t *e, int64_t head) noexcept nogil:
    """folio->_pincount of a large folio: an mTHP's in its second page
    (`index`, as the kernel's is in the folio's first tail page), any other
    in large_pincount[head >> 9]."""
    if mthp_order(e, head):
        return <int32_t *>&e.index[head + 1]
    if shmem_forder(e, head):
        return &e.file_pincount[head >> SHMEM_MIN_ORDER]     # a shmem mTHP (its `index` is the file's)
    return &e.large_pincount[head >> HPAGE_PMD_ORDER]


cdef inline int64_t folio_nr(engine_t *e, int64_t head) noexcept nogil:
    """folio_nr_pages() of a large folio's head (not hugetlb): an mTHP's
    order is on its pages (mthp_order, or forder for a shmem one), any
    other is a PMD-sized THP."""
    cdef int o = mthp_order(e, head)
    if o:
        return <int64_t>1 << o
    if shmem_forder(e, head):
        return <int64_t>1 << e.forder[head]
    return HPAGE_PMD_NR


cdef inline bint in_folio(int64_t pfn, int64_t head, int64_t nr) noexcept nogil:
    """Whether pfn is one of the nr pages of the folio at head."""
    return <uint64_t>(pfn - head) < <uint64_t>nr


cdef inline void get_page(engine_t *e, int64_t pfn, int32_t nr) noexcept nogil:
    # References are the folio's (folio_get): a tail page's go to its head.
    if pfn != ZERO_PFN:      # the shared zero page is never refcounted here
        e.refcount[folio_of(e, pfn)] += nr


cdef inline void folio_pin_count(engine_t *e, int64_t pfn, int32_t delta) noexcept nogil:
    """A pin taken (1) or dropped (-1) on pfn's folio: counted exactly on
    a large one (folio->_pincount); a small page has only the bias."""
    cdef int64_t head
    if pfn == ZERO_PFN:
        return
    head = folio_of(e, pfn)
    if e.fflags[head] & PG_HEAD:
        folio_pincount(e, head)[0] += delta


cdef inline bint folio_maybe_dma_pinned(engine_t *e, int64_t pfn) noexcept nogil:
    """folio_maybe_dma_pinned(): exact for a large folio (its _pincount,
    47e29d32afba, 5.7); a small page's refcount reaching the bias."""
    cdef int64_t head = folio_of(e, pfn)
    if e.fflags[head] & PG_HEAD:
        return folio_pincount(e, head)[0] > 0
    return e.refcount[head] >= GUP_PIN_COUNTING_BIAS


cdef inline void put_page(engine_t *e, int64_t pfn, int32_t nr) noexcept nogil:
    if pfn == ZERO_PFN:
        return
    pfn = folio_of(e, pfn)
    e.refcount[pfn] -= nr
    if e.refcount[pfn] == 0:
        if e.fflags[pfn] & PG_HEAD:
            folio_free_large(e, pfn)    # core/huge.pxi
        else:
            frame_free(e, pfn)


# ---- byte store -----------------------------------------------------------

cdef inline uint8_t *bytes_ptr(engine_t *e, int64_t slot) noexcept nogil:
    return e.byte_chunks[slot >> MM_BYTES_CHUNK_SHIFT] + \
        ((slot & ((1 << MM_BYTES_CHUNK_SHIFT) - 1)) << MM_PAGE_SHIFT)


cdef int64_t bytes_alloc(engine_t *e) noexcept nogil:
    """A byte-store slot (4 KiB), -1 if the host is out of memory."""
    cdef int64_t slot, chunk
    cdef void *p
    if e.nbytes_free > 0:
        e.nbytes_free -= 1
        return e.bytes_free[e.nbytes_free]
    slot = e.nbytes_used
    chunk = slot >> MM_BYTES_CHUNK_SHIFT
    if array_grow(<void **>&e.byte_chunks, &e.nbyte_chunks, chunk + 1, sizeof(uint8_t *), 2, True) < 0:
        return -1
    if e.byte_chunks[chunk] == NULL:
        p = malloc((<size_t>1 << MM_BYTES_CHUNK_SHIFT) << MM_PAGE_SHIFT)
        if p == NULL:
            return -1
        # Fault the chunk in with one call: far cheaper than page by page on
        # first use (a trap each; in a guest, an EPT exit too). Memory the
        # allocator reuses is present already; a host before 5.14 says
        # EINVAL and the pages fault in on use.
        madvise(<void *>((<uintptr_t>p + MM_PAGE_SIZE - 1) & ~<uintptr_t>(MM_PAGE_SIZE - 1)),
                ((<size_t>1 << MM_BYTES_CHUNK_SHIFT) - 1) << MM_PAGE_SHIFT, HOST_MADV_POPULATE_WRITE)
        e.byte_chunks[chunk] = <uint8_t *>p
    if grow_i64(&e.bytes_free, &e.bytes_free_cap, slot + 1) < 0:
        return -1
    e.nbytes_used += 1
    return slot


cdef inline void pattern_fill(uint8_t *dst, uint64_t version, int64_t off, int64_t n) noexcept nogil:
    cdef int64_t k
    if version == 0:
        memset(dst, 0, n)
        return
    for k in range(n):
        dst[k] = <uint8_t>(version >> (8 * ((off + k) & 7)))


cdef int frame_materialize(engine_t *e, int64_t pfn) noexcept nogil:
    """Make the frame byte-exact; -1 if the host is out of memory."""
    cdef int64_t slot
    if e.fflags[pfn] & PG_BYTES:
        return 0
    slot = bytes_alloc(e)
    if slot < 0:
        return -1
    pattern_fill(bytes_ptr(e, slot), e.version[pfn], 0, MM_PAGE_SIZE)
    e.version[pfn] = <uint64_t>slot
    e.fflags[pfn] |= PG_BYTES
    return 0


cdef void frame_read(engine_t *e, int64_t pfn, int64_t off, int64_t n, uint8_t *dst) noexcept nogil:
    if e.fflags[pfn] & PG_BYTES:
        memcpy(dst, bytes_ptr(e, <int64_t>e.version[pfn]) + off, n)
    else:
        pattern_fill(dst, e.version[pfn], off, n)


cdef inline bint page_is_pattern(const uint8_t *src, uint64_t *version) noexcept nogil:
    """Whether a whole page repeats its first 8 bytes (zeros included): such
    a page is stored as that content version, exactly, without a 4 KiB slot
    (zero-filled and uniform pages are common in guest memory)."""
    if memcmp(src, src + 8, MM_PAGE_SIZE - 8) != 0:
        return False
    memcpy(version, src, 8)     # little-endian, as pattern_fill reads it
    return True


cdef inline bint frame_is_zero(engine_t *e, int64_t pfn) noexcept nogil:
    """Whether the page reads all zeros (try_to_map_unused_to_zeropage's memchr_inv)."""
    cdef uint64_t v
    if e.fflags[pfn] & PG_BYTES:
        return page_is_pattern(bytes_ptr(e, <int64_t>e.version[pfn]), &v) and v == 0
    return e.version[pfn] == 0


cdef int frame_write(engine_t *e, int64_t pfn, int64_t off, int64_t n, const uint8_t *src) noexcept nogil:
    cdef int64_t slot
    cdef uint64_t v
    if n == MM_PAGE_SIZE and page_is_pattern(src, &v):
        frame_set_version(e, pfn, v)
        return 0
    if n == MM_PAGE_SIZE and not (e.fflags[pfn] & PG_BYTES):
        # A whole-page write needs no pattern fill first.
        slot = bytes_alloc(e)
        if slot < 0:
            return -1
        memcpy(bytes_ptr(e, slot), src, MM_PAGE_SIZE)
        e.version[pfn] = <uint64_t>slot
        e.fflags[pfn] |= PG_BYTES
        return 0
    if frame_materialize(e, pfn) < 0:
        return -1
    memcpy(bytes_ptr(e, <int64_t>e.version[pfn]) + off, src, n)
    return 0


cdef inline void frame_set_version(engine_t *e, int64_t pfn, uint64_t v) noexcept nogil:
    if e.fflags[pfn] & PG_BYTES:
        bytes_release(e, <int64_t>e.version[pfn])
        e.fflags[pfn] &= ~PG_BYTES
    e.version[pfn] = v


cdef int frame_copy(engine_t *e, int64_t dst, int64_t src) noexcept nogil:
    """Copy contents src -> dst (dst freshly allocated); -1 on host OOM."""
    cdef int64_t slot
    if src == ZERO_PFN or not (e.fflags[src] & PG_BYTES):
        e.version[dst] = e.version[src] if src != ZERO_PFN else 0
        return 0
    slot = bytes_alloc(e)
    if slot < 0:
        return -1
    memcpy(bytes_ptr(e, slot), bytes_ptr(e, <int64_t>e.version[src]), MM_PAGE_SIZE)
    e.version[dst] = <uint64_t>slot
    e.fflags[dst] |= PG_BYTES
    return 0


cdef inline uint64_t frame_content_version(engine_t *e, int64_t pfn) noexcept nogil:
    if e.fflags[pfn] & PG_BYTES:
        return 0xFFFFFFFFFFFFFFFFULL
    return e.version[pfn]


# ---- per-CPU LRU batches --------------------------------------------------
# A new anon page waits in its CPU's add batch holding one extra reference
# until the batch fills or is drained (lru_cache_add / lru_add_drain).
# Refcount-based COW (5.9-5.17) sees that reference and copies a fresh page
# (B19). A folio whose reclaim writeback ends while it is on the LRU waits
# in the CPU's rotate batch the same way (folio_rotate_reclaimable's
# lru_move_tail batch), still flagged PG_LRU: see lru_rotate.

cdef void lru_rotate_move(engine_t *e, int cpu) noexcept nogil:
    """folio_batch_move_lru of the rotate batch: each folio goes to the tail
    of its LRU (already PG_LRU) and the batch's reference is dropped."""
    cdef int64_t *batch = e.lru_rot + cpu * LRU_BATCH_MAX
    cdef int32_t i
    for i in range(e.lru_rot_n[cpu]):
        put_page(e, batch[i], 1)
    e.lru_rot_n[cpu] = 0


cdef void lru_add_move(engine_t *e, int cpu) noexcept nogil:
    """folio_batch_move_lru of the add batch: its folios reach the LRU."""
    cdef int64_t *batch = e.lru + cpu * LRU_BATCH_MAX
    cdef int32_t i
    cdef int64_t pfn
    for i in range(e.lru_n[cpu]):
        pfn = batch[i]
        e.fflags[pfn] |= PG_LRU
        put_page(e, pfn, 1)
    if e.lru_n[cpu]:
        stat_add(e, MM_STAT_LRU_DRAIN, 1)
    e.lru_n[cpu] = 0


cdef void lru_drain(engine_t *e, int cpu) noexcept nogil:
    """lru_add_drain_cpu(): every batch of the CPU, the add batch first."""
    lru_add_move(e, cpu)
    lru_rotate_move(e, cpu)


cdef inline void lru_add(engine_t *e, int cpu, int64_t pfn) noexcept nogil:
    if e.fflags[pfn] & PG_HEAD and e.lru_n[cpu] == 0:
        # A large folio into an empty batch: it is moved at once with the
        # batch's reference (lru_add_move of [pfn], without the round trip).
        e.fflags[pfn] |= PG_LRU
        stat_add(e, MM_STAT_LRU_DRAIN, 1)
        return
    e.refcount[pfn] += 1
    e.lru[cpu * LRU_BATCH_MAX + e.lru_n[cpu]] = pfn
    e.lru_n[cpu] += 1
    # A large folio moves the batch at once (folio_add_lru: the batch is
    # moved when the folio is large), so it never sits there. A full batch
    # moves alone: the rotate batch stays.
    if e.lru_n[cpu] >= e.pol.lru_batch or e.fflags[pfn] & PG_HEAD:
        lru_add_move(e, cpu)


cdef void lru_rotate(engine_t *e, int cpu, int64_t pfn) noexcept nogil:
    """folio_rotate_reclaimable() at the end of a reclaim writeback
    (folio_end_writeback of a PG_reclaim folio): a folio on the LRU waits in
    the CPU's rotate batch with one extra reference and keeps PG_LRU until
    the batch moves, when full (PAGEVEC_SIZE, as the add batch) or drained.
    One still in an add batch (not PG_LRU) is left alone."""
    if not (e.fflags[pfn] & PG_LRU):
        return
    e.refcount[pfn] += 1
    e.lru_rot[cpu * LRU_BATCH_MAX + e.lru_rot_n[cpu]] = pfn
    e.lru_rot_n[cpu] += 1
    if e.lru_rot_n[cpu] >= e.pol.lru_batch:
        lru_rotate_move(e, cpu)


cdef int32_t lru_batch_refs(engine_t *e, int64_t pfn) noexcept nogil:
    """The references the CPUs' LRU batches hold on pfn."""
    cdef int32_t cpu, i, n = 0
    for cpu in range(e.ncpus):
        for i in range(e.lru_n[cpu]):
            n += e.lru[cpu * LRU_BATCH_MAX + i] == pfn
        for i in range(e.lru_rot_n[cpu]):
            n += e.lru_rot[cpu * LRU_BATCH_MAX + i] == pfn
    return n
