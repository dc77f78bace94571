# Page tables: four levels of 512 entries (x86_64 4-level, 47-bit user space).
# pgd/pud/pmd pages hold int32 indices + 1 of the next level (0 = none); a pmd
# entry names a pte page of 512 packed 64-bit ptes. Pools are chunked so a
# page never moves: pointers into a pte page stay valid while others are
# allocated.

cdef enum:
    CHUNK_PAGES = 512          # 1 << MM_POOL_CHUNK_SHIFT
    PGDIR_SHIFT = 39
    PUD_SHIFT = 30
    PMD_SHIFT = 21


cdef inline int32_t *dir_page(engine_t *e, int32_t d) noexcept nogil:
    return e.dir_chunks[d >> 9] + ((<int64_t>(d & 511)) << 9)


cdef inline uint64_t *pte_page(engine_t *e, int32_t p) noexcept nogil:
    return e.pte_chunks[p >> 9] + ((<int64_t>(p & 511)) << 9)


cdef inline bint pgtable_charge(engine_t *e) noexcept nogil:
    """A page-table page takes a frame of RAM, as the kernel's do (they come
    from the page allocator): refused when no frame is left for it."""
    e.pgtable_refused = e.nr_free - e.nr_free_movable <= e.nr_pgtable   # never ZONE_MOVABLE / CMA
    if e.pgtable_refused:
        return False
    e.nr_pgtable += 1
    return True


cdef inline int table_alloc_failed(engine_t *e) noexcept nogil:
    """The fault code of a failed table allocation: OOM when RAM ran out
    (reclaim may help), NOMEM when the host's malloc failed."""
    return VM_FAULT_OOM if e.pgtable_refused else VM_FAULT_NOMEM


cdef int32_t dir_alloc(engine_t *e) noexcept nogil:
    cdef int32_t d
    cdef int64_t chunk
    cdef void *mem
    if not pgtable_charge(e):
        return -1
    if e.ndir_free > 0:
        e.ndir_free -= 1
        d = e.dir_free[e.ndir_free]
    else:
        d = <int32_t>e.ndir_used
        chunk = d >> 9
        if array_grow(<void **>&e.dir_chunks, &e.ndir_chunks, chunk + 1, sizeof(int32_t *), 2, True) < 0:
            e.nr_pgtable -= 1
            return -1
        if e.dir_chunks[chunk] == NULL:
            if posix_memalign(&mem, MM_PAGE_SIZE, CHUNK_PAGES * MM_PTRS * sizeof(int32_t)) != 0:
                e.nr_pgtable -= 1
                return -1
            e.dir_chunks[chunk] = <int32_t *>mem
        if d % POPULATE_DIRS == 0:
            # Never-used directories are faulted in a run at a time: a host
            # page fault on the first PUD or PMD of a range cost more than
            # the page fault it was part of.
            populate_tables(<void *>dir_page(e, d), POPULATE_DIRS * MM_PTRS * sizeof(int32_t))
        e.ndir_used += 1
    memset(dir_page(e, d), 0, MM_PTRS * sizeof(int32_t))
    return d


cdef enum:
    POPULATE_TABLES = 64       # never-used pte pages faulted in at once (256 KiB)
    POPULATE_DIRS = 32         # never-used directories faulted in at once (64 KiB)
    HOST_MADV_HUGEPAGE = 14    # the host's own madvise (uapi mman-common.h)


cdef inline void populate_tables(void *p, size_t n) noexcept nogil:
    """Fault a run of never-used pool memory in with one call: a PMD THP
    takes a fresh pte page (its deposit) per 2 MiB, and a host page fault
    per table page would cost more than the THP fault itself. A host
    before 5.14 says EINVAL and the pages fault in on use."""
    madvise(<void *>((<uintptr_t>p + MM_PAGE_SIZE - 1) & ~<uintptr_t>(MM_PAGE_SIZE - 1)),
            n & ~(<size_t>MM_PAGE_SIZE - 1), HOST_MADV_POPULATE_WRITE)


cdef uint64_t *pte_chunk(engine_t *e, int64_t chunk) noexcept nogil:
    """The memory of the pool's chunk (CHUNK_PAGES pte pages, 2 MiB),
    allocated, 2 MiB-aligned, if it is not yet; NULL when the host has none."""
    cdef void *mem
    if array_grow(<void **>&e.pte_chunks, &e.npte_chunks, chunk + 1, sizeof(uint64_t *), 2, True) < 0:
        return NULL
    if e.pte_chunks[chunk] == NULL:
        if posix_memalign(&mem, CHUNK_PAGES * MM_PTRS * sizeof(uint64_t),
                          CHUNK_PAGES * MM_PTRS * sizeof(uint64_t)) != 0:
            return NULL
        e.pte_chunks[chunk] = <uint64_t *>mem
    return e.pte_chunks[chunk]


cdef void ptp_pool_prefault(engine_t *e, int64_t npages) noexcept nogil:
    """Make the pool's first npages pte pages resident before any is used,
    as the frame table is (a fault's cost is then the engine's, not the
    host's first touch of the table it writes). A chunk prefaulted whole is
    advised as a host huge page: one host fault for its 512 tables. Pages
    past these are faulted in POPULATE_TABLES at a time when first used."""
    cdef int64_t chunk, n
    cdef uint64_t *mem
    npages = (npages + POPULATE_TABLES - 1) & ~(<int64_t>POPULATE_TABLES - 1)
    for chunk in range((npages + CHUNK_PAGES - 1) // CHUNK_PAGES):
        mem = pte_chunk(e, chunk)
        if mem == NULL:
            return
        n = min(<int64_t>CHUNK_PAGES, npages - chunk * CHUNK_PAGES)
        if n == CHUNK_PAGES:
            madvise(<void *>mem, CHUNK_PAGES * MM_PTRS * sizeof(uint64_t), HOST_MADV_HUGEPAGE)
        populate_tables(<void *>mem, n * MM_PTRS * sizeof(uint64_t))
        e.npte_resident = chunk * CHUNK_PAGES + n


cdef int32_t ptp_alloc(engine_t *e) noexcept nogil:
    """A zeroed pte page, -1 when none can be had."""
    cdef int32_t p = ptp_alloc_raw(e)
    if p >= 0:
        memset(pte_page(e, p), 0, MM_PTRS * sizeof(uint64_t))
    return p


cdef int32_t ptp_alloc_raw(engine_t *e) noexcept nogil:
    """A pte page whose every entry the caller writes at once (a PMD leaf's
    expansion): not zeroed first."""
    cdef int32_t p
    if not pgtable_charge(e):
        return -1
    if e.npte_free > 0:
        e.npte_free -= 1
        p = e.pte_free[e.npte_free]
    else:
        p = <int32_t>e.npte_used
        if pte_chunk(e, p >> 9) == NULL:
            e.nr_pgtable -= 1
            return -1
        e.npte_used += 1
        if (p & (POPULATE_TABLES - 1)) == 0 and p >= e.npte_resident:
            populate_tables(<void *>pte_page(e, p), POPULATE_TABLES * MM_PTRS * sizeof(uint64_t))
    return p


cdef int push_free(engine_t *e, int32_t **stack, int64_t *n, int64_t *cap, int32_t v) noexcept nogil:
    """A table page back to its pool, and its frame back to RAM."""
    e.nr_pgtable -= 1
    if array_grow(<void **>stack, cap, n[0] + 1, sizeof(int32_t), 64, False) < 0:
        return -1               # leak the page rather than corrupt the pool
    stack[0][n[0]] = v
    n[0] += 1
    return 0


cdef uint64_t *table_leaf(engine_t *e, int32_t root, uint64_t va, bint alloc,
                          int64_t *nr_leaves) noexcept nogil:
    """The leaf page (512 packed entries) covering va under a 4-level tree,
    allocating levels if asked; NULL when absent (or allocation failed).
    Page tables use it keyed by address, page caches keyed by index << 12."""
    cdef int32_t *d = dir_page(e, root)
    cdef int32_t i, nxt
    cdef int level
    for level in range(3):
        i = <int32_t>((va >> (PGDIR_SHIFT - 9 * level)) & 511)
        nxt = d[i]
        if nxt == 0:
            if not alloc:
                return NULL
            if level < 2:
                nxt = dir_alloc(e)
            else:
                nxt = ptp_alloc(e)
                if nxt >= 0:
                    nr_leaves[0] += 1
            if nxt < 0:
                return NULL
            nxt += 1
            d[i] = nxt
        if level < 2:
            d = dir_page(e, nxt - 1)
        elif nxt & PMD_HUGE:
            return pmd_leaf_table(e, nxt)       # core/huge.pxi: expanded for the caller
        else:
            return pte_page(e, nxt - 1)
    return NULL


cdef uint64_t *leaf_or_skip(engine_t *e, int32_t root, uint64_t va, uint64_t *next) noexcept nogil:
    """The leaf covering va, or NULL with *next = the first address past the
    missing level's span, so range walks skip empty space at the level it is
    empty (a walk of an almost empty 47-bit space stays cheap)."""
    cdef uint64_t *t = leaf_or_skip_as_is(e, root, va, next)
    if t != NULL and t[1] == PMD_LEAF_UNEXPANDED:
        pmd_leaf_expand(t)          # core/huge.pxi: only a PMD leaf's table has the mark
    return t


cdef uint64_t *leaf_or_skip_as_is(engine_t *e, int32_t root, uint64_t va, uint64_t *next) noexcept nogil:
    """leaf_or_skip leaving a PMD leaf's table as it is (maybe unexpanded):
    for a walker that handles PMD leaves itself before reading entries."""
    cdef int32_t *d = dir_page(e, root)
    cdef int32_t nxt
    cdef int level, shift
    for level in range(3):
        shift = PGDIR_SHIFT - 9 * level
        nxt = d[(va >> shift) & 511]
        if nxt == 0:
            next[0] = ((va >> shift) + 1) << shift
            return NULL
        if level < 2:
            d = dir_page(e, nxt - 1)
        else:
            return pte_page(e, (nxt & ~PMD_HUGE) - 1)
    return NULL


cdef inline int32_t *pmd_dir(engine_t *e, mm_t *mm, uint64_t va) noexcept nogil:
    """The PMD directory of va's 1 GiB, or NULL. The last one reached is
    remembered per mm: a directory, once linked, stays until exit_mmap
    (free_dir_tree), so the two upper levels are walked once per 1 GiB run
    of accesses, not per access."""
    cdef uint64_t key = (va >> PUD_SHIFT) + 1
    cdef int32_t nxt
    if mm.walk_key == key:
        return dir_page(e, mm.walk_dir)
    nxt = dir_page(e, mm.pgd)[(va >> PGDIR_SHIFT) & 511]
    if nxt == 0:
        return NULL
    nxt = dir_page(e, nxt - 1)[(va >> PUD_SHIFT) & 511]
    if nxt == 0:
        return NULL
    mm.walk_key = key
    mm.walk_dir = nxt - 1
    return dir_page(e, nxt - 1)


cdef inline uint64_t *pte_offset_walk(engine_t *e, mm_t *mm, uint64_t va, uint64_t **leaf) noexcept nogil:
    """The MMU's page walk (pte_offset without allocating, nor expanding):
    the pte for va, or NULL - with *leaf the table of the unexpanded PMD
    leaf covering va, if that is what it met (core/huge.pxi)."""
    cdef int32_t *d = pmd_dir(e, mm, va)
    cdef int32_t nxt
    cdef uint64_t *t
    leaf[0] = NULL
    if d == NULL:
        return NULL
    nxt = d[(va >> PMD_SHIFT) & 511]
    if nxt == 0:
        return NULL
    t = pte_page(e, (nxt & ~PMD_HUGE) - 1)
    if nxt & PMD_HUGE and pmd_leaf_unexpanded(t):
        leaf[0] = t
        return NULL
    return t + ((va >> MM_PAGE_SHIFT) & 511)


cdef inline uint64_t *pte_table(engine_t *e, mm_t *mm, uint64_t va, bint alloc) noexcept nogil:
    """The pte page covering va (its entry 0)."""
    return table_leaf(e, mm.pgd, va, alloc, &mm.nr_ptes)


cdef inline uint64_t *pte_offset(engine_t *e, mm_t *mm, uint64_t va, bint alloc) noexcept nogil:
    cdef uint64_t *t = pte_table(e, mm, va, alloc)
    if t == NULL:
        return NULL
    return t + ((va >> MM_PAGE_SHIFT) & 511)


cdef void free_pte_tables(engine_t *e, mm_t *mm, uint64_t start, uint64_t end) noexcept nogil:
    """Free pte pages whose whole 2 MiB span lies in [start, end) (free_pgtables
    after munmap: the caller passes a range no VMA covers any more). The ptes
    must already be zapped."""
    cdef uint64_t va = (start + (1ULL << PMD_SHIFT) - 1) & ~((1ULL << PMD_SHIFT) - 1)
    cdef uint64_t skip
    cdef int32_t *d
    cdef int32_t i, nxt
    cdef int level
    cdef bint found
    while va + (1ULL << PMD_SHIFT) <= end:
        d = dir_page(e, mm.pgd)
        found = True
        for level in range(2):
            i = <int32_t>((va >> (PGDIR_SHIFT - 9 * level)) & 511)
            nxt = d[i]
            if nxt == 0:
                found = False
                skip = ((va >> (PGDIR_SHIFT - 9 * level)) + 1) << (PGDIR_SHIFT - 9 * level)
                break
            d = dir_page(e, nxt - 1)
        if not found:
            va = skip
            continue
        i = <int32_t>((va >> PMD_SHIFT) & 511)
        if d[i] != 0:
            if d[i] & PMD_HUGE:
                e.nr_huge_pmd -= 1          # zapped leaves are gone already; never expected
            push_free(e, &e.pte_free, &e.npte_free, &e.pte_free_cap, (d[i] & ~PMD_HUGE) - 1)
            d[i] = 0
            mm.nr_ptes -= 1
        va += 1ULL << PMD_SHIFT


cdef void free_dir_tree(engine_t *e, int32_t d, int level) noexcept nogil:
    """Release a directory page and everything below it (exit_mmap)."""
    cdef int32_t *page = dir_page(e, d)
    cdef int32_t i
    for i in range(MM_PTRS):
        if page[i] != 0:
            if level < 2:
                free_dir_tree(e, page[i] - 1, level + 1)
            else:
                if page[i] & PMD_HUGE:
                    e.nr_huge_pmd -= 1
                push_free(e, &e.pte_free, &e.npte_free, &e.pte_free_cap, (page[i] & ~PMD_HUGE) - 1)
    push_free(e, &e.dir_free, &e.ndir_free, &e.dir_free_cap, d)


cdef int32_t find_vma(mm_t *mm, uint64_t va) noexcept nogil:
    """Index of the VMA containing va, or -1."""
    cdef int32_t lo = 0, hi = mm.nvma - 1, mid
    while lo <= hi:
        mid = (lo + hi) >> 1
        if va < mm.vmas[mid].start:
            hi = mid - 1
        elif va >= mm.vmas[mid].end:
            lo = mid + 1
        else:
            return mid
    return -1


cdef int64_t mapped_pages(mm_t *mm, uint64_t va, int64_t limit) noexcept nogil:
    """Pages from va to the first hole in the VMAs, at most `limit`."""
    cdef int64_t n = 0
    cdef int32_t vi
    va &= ~(MM_PAGE_SIZE - 1)
    while n < limit:
        vi = find_vma(mm, va)
        if vi < 0:
            break
        n += <int64_t>((mm.vmas[vi].end - va) >> MM_PAGE_SHIFT)
        va = mm.vmas[vi].end
    return n


cdef inline bint is_cow_mapping(uint64_t flags) noexcept nogil:
    # include/linux/mm.h is_cow_mapping(): may write, not shared.
    return (flags & (VM_SHARED | VM_MAYWRITE)) == VM_MAYWRITE


cdef inline uint64_t vma_prot_bits(uint64_t flags) noexcept nogil:
    # vm_page_prot minus the write bit: PROT_NONE VMAs map protnone ptes.
    if not (flags & (VM_READ | VM_WRITE | VM_EXEC)):
        return PTE_PROTNONE
    return 0


cdef inline bint vma_soft_dirty_tracking(engine_t *e, uint64_t flags) noexcept nogil:
    # vma_soft_dirty_enabled(): the config is on and clear_refs cleared VM_SOFTDIRTY.
    return e.pol.soft_dirty != 0 and not (flags & VM_SOFTDIRTY)
