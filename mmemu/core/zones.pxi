# Zones and long-term pins: ZONE_MOVABLE (movablecore=), a CMA area (cma=),
# the allocator's zonelist walk over them (mm/page_alloc.c), and what
# FOLL_LONGTERM does with a page that must not stay pinned there
# (mm/gup.c check_and_migrate_movable_pages / collect_longterm_unpinnable_folios
# / migrate_longterm_unpinnable_folios; include/linux/mm.h
# folio_is_longterm_pinnable). Semantics: semantics.md sections 4.1 and 14.
#
# A frame's zone follows from its pfn: ZONE_MOVABLE is the top movable_span
# frames of every node, the CMA area [cma_start, cma_end) the top of node
# 0's normal part. Each node keeps one free list (and count) per zone list
# (MM_ZONE_*), linked through `version` as the global list is; nothing is
# stored per frame.

cdef enum:
    LONGTERM_PIN_IN_PLACE = 1       # before f0f4463837da: a failed migration pins the page where it is


cdef inline int zone_of(engine_t *e, int64_t pfn) noexcept nogil:
    """page_zonenum(), with the CMA area's pageblocks as a class of their own."""
    if e.cma_start <= pfn < e.cma_end:
        return MM_ZONE_CMA
    if e.movable_span and pfn >= node_end(e, node_of(e, pfn)) - e.movable_span:
        return MM_ZONE_MOVABLE
    return MM_ZONE_NORMAL


cdef inline bint longterm_pinnable(engine_t *e, int64_t pfn) noexcept nogil:
    # folio_is_longterm_pinnable(): the zero page always; otherwise not in
    # a zone the era forbids (MIGRATE_CMA since 9a4e9f3b2d73, 5.1;
    # ZONE_MOVABLE since d1e153fea2a8, 5.13).
    if pfn == ZERO_PFN:
        return True
    return ((1 << zone_of(e, pfn)) & e.pol.longterm_unpinnable) == 0


cdef inline int64_t zone_list_of(engine_t *e, int64_t pfn) noexcept nogil:
    """The node and zone list a frame belongs to (n * MM_NR_ZONE_LISTS + z)."""
    return <int64_t>node_of(e, pfn) * MM_NR_ZONE_LISTS + zone_of(e, pfn)


cdef inline void zone_account(engine_t *e, int64_t l, int64_t nr) noexcept nogil:
    # nr frames of zone list l leave (nr > 0) or join (nr < 0) the free ones.
    e.zone_nr_free[l] -= nr
    if l % MM_NR_ZONE_LISTS != MM_ZONE_NORMAL:
        e.nr_free_movable -= nr


cdef inline void zone_push(engine_t *e, int64_t l, int64_t pfn) noexcept nogil:
    # Onto list l's order-0 stack, a frame already counted free.
    e.version[pfn] = <uint64_t>e.node_free[l]
    e.node_free[l] = pfn + 1


cdef inline bint zone_carving(engine_t *e, int64_t l) noexcept nogil:
    """Whether the block mTHPs are carved from (mcarve) is list l's and has
    frames left."""
    return e.mcarve < e.mcarve_end and zone_list_of(e, e.mcarve_end - 1) == l


cdef int64_t zone_block_pop(engine_t *e, int64_t l) noexcept nogil:
    """A free, aligned order-9 block of list l (its head), its frames still
    counted free: a freed one first, then never-used frames from the list's
    high-water mark, the ones skipped to align going to its order-0 stack
    (the buddy's order-9 free area, then expand() of a larger block)."""
    cdef int64_t head, p, start
    if e.zone_hfree[l] > 0:
        head = e.zone_hfree[l] - 1
        e.zone_hfree[l] = <int64_t>e.version[head]
        e.version[head] = 0
        return head
    start = (e.node_next[l] + HPAGE_PMD_NR - 1) & ~(<int64_t>HPAGE_PMD_NR - 1)
    if start + HPAGE_PMD_NR > e.zone_end[l]:
        return -1
    for p in range(e.node_next[l], start):
        zone_push(e, l, p)
    e.node_next[l] = start + HPAGE_PMD_NR
    return start


cdef inline int64_t zone_list_take(engine_t *e, int64_t l) noexcept nogil:
    cdef int64_t pfn, p
    if e.node_free[l] > 0:
        pfn = e.node_free[l] - 1
        e.node_free[l] = <int64_t>e.version[pfn]
    elif e.node_next[l] < e.zone_end[l]:
        pfn = e.node_next[l]
        e.node_next[l] += 1
    elif zone_carving(e, l):
        pfn = e.mcarve                  # the rest of the block mTHPs are carved from
        e.mcarve += 1
    elif e.zone_hfree[l] > 0:
        # Nothing smaller left: a free order-9 block is split (expand()),
        # its first frame taken, the rest onto the order-0 stack.
        pfn = zone_block_pop(e, l)
        p = pfn + HPAGE_PMD_NR - 1
        while p > pfn:
            zone_push(e, l, p)
            p -= 1
    else:
        return -1
    zone_account(e, l, 1)
    return pfn


cdef int64_t zone_mthp_carve(engine_t *e, int64_t l, int order) noexcept nogil:
    """2^order frames, naturally aligned, of list l: carved from the current
    block if it is l's and has room, else from a fresh block of l (the old
    block's rest to its own list's order-0 stack), as folio_alloc_mthp does
    on one node. The frames skipped to align stay free on the order-0 stack."""
    cdef int64_t nr = <int64_t>1 << order, start, blk, p, old
    start = (e.mcarve + nr - 1) & ~(nr - 1)
    if not zone_carving(e, l) or start + nr > e.mcarve_end:
        blk = zone_block_pop(e, l)
        if blk < 0:
            return -1
        if e.mcarve < e.mcarve_end:
            old = zone_list_of(e, e.mcarve_end - 1)
            for p in range(e.mcarve, e.mcarve_end):
                zone_push(e, old, p)
        e.mcarve, e.mcarve_end = blk, blk + HPAGE_PMD_NR
        start = blk
    for p in range(e.mcarve, start):
        zone_push(e, l, p)
    e.mcarve = start + nr
    zone_account(e, l, nr)
    return start


cdef int64_t zone_list_take_order(engine_t *e, int64_t l, int order) noexcept nogil:
    cdef int64_t pfn
    if order == 0:
        return zone_list_take(e, l)
    if order < HPAGE_PMD_ORDER:
        return zone_mthp_carve(e, l, order)
    pfn = zone_block_pop(e, l)
    if pfn >= 0:
        zone_account(e, l, HPAGE_PMD_NR)
    return pfn


cdef int64_t zone_take_node(engine_t *e, int32_t n, int order) noexcept nogil:
    """One node's part of the zonelist walk for a user folio of 2^order
    pages (GFP_HIGHUSER_MOVABLE): ZONE_MOVABLE, then ZONE_NORMAL with its CMA
    pageblocks, minus what e.alloc_exclude rules out. Kernel allocations
    (page tables) never come here: they are charged against ZONE_NORMAL."""
    cdef int64_t l = <int64_t>n * MM_NR_ZONE_LISTS, pfn, nr = <int64_t>1 << order
    cdef bint cma = not (e.alloc_exclude & MM_ZONES_CMA) and e.zone_nr_free[l + MM_ZONE_CMA] >= nr
    if not (e.alloc_exclude & MM_ZONES_MOVABLE):
        pfn = zone_list_take_order(e, l + MM_ZONE_MOVABLE, order)
        if pfn >= 0:
            return pfn
    # __rmqueue(): a movable allocation takes the CMA area first while it
    # holds over half of the zone's free memory (6.12 [v]); any order.
    if cma and e.zone_nr_free[l + MM_ZONE_CMA] > \
            (e.zone_nr_free[l + MM_ZONE_NORMAL] + e.zone_nr_free[l + MM_ZONE_CMA]) // 2:
        pfn = zone_list_take_order(e, l + MM_ZONE_CMA, order)
        if pfn >= 0 or order == 0:
            return pfn
        cma = False                     # no aligned room there: ZONE_NORMAL's own
    if e.nr_free - e.nr_free_movable - nr >= e.nr_pgtable:   # what is left holds page tables
        pfn = zone_list_take_order(e, l + MM_ZONE_NORMAL, order)
        if pfn >= 0:
            return pfn
    if cma:
        return zone_list_take_order(e, l + MM_ZONE_CMA, order)
    return -1


cdef int64_t zone_take(engine_t *e, int order) noexcept nogil:
    """A free, naturally aligned folio of 2^order frames for frame_alloc()
    and the large-folio allocators: on e.alloc_node only (__GFP_THISNODE),
    else along the nodes from e.alloc_pref_node (0: a task on node 0;
    mmemu keeps no per-task policy). The caller keeps nr_free."""
    cdef int32_t k
    cdef int64_t pfn
    if e.alloc_node >= 0:
        return zone_take_node(e, e.alloc_node, order)
    for k in range(e.nnodes):
        pfn = zone_take_node(e, <int32_t>((e.alloc_pref_node + k) % e.nnodes), order)
        if pfn >= 0:
            return pfn
    return -1


cdef inline int64_t zone_frame_take(engine_t *e) noexcept nogil:
    return zone_take(e, 0)


cdef void zone_frame_put(engine_t *e, int64_t pfn) noexcept nogil:
    cdef int64_t l = zone_list_of(e, pfn)
    zone_push(e, l, pfn)
    zone_account(e, l, -1)


cdef void zone_block_put(engine_t *e, int64_t head) noexcept nogil:
    """A freed order-9 block back whole onto its list (its frames clean)."""
    cdef int64_t l = zone_list_of(e, head)
    e.version[head] = <uint64_t>e.zone_hfree[l]
    e.zone_hfree[l] = head + 1
    zone_account(e, l, -HPAGE_PMD_NR)


cdef inline int64_t node_nr_free(engine_t *e, int32_t n) noexcept nogil:
    cdef int64_t l = <int64_t>n * MM_NR_ZONE_LISTS
    return e.zone_nr_free[l] + e.zone_nr_free[l + 1] + e.zone_nr_free[l + 2]


# ---- FOLL_LONGTERM ------------------------------------------------------------

cdef int64_t gup_longterm_check(engine_t *e, mm_t *mm, uint64_t start, const int64_t *pfns, int64_t n,
                                int32_t per) noexcept nogil:
    """check_and_migrate_movable_pages() once __get_user_pages_locked() has
    taken `per` references on each of pfns[0..n) (page i at start + i
    pages). 0: every page may stay pinned, and the pins stay. Otherwise the
    pins are all dropped first (a pinned page cannot migrate) and the pages
    the era forbids are migrated: -EAGAIN, all moved, pin again (5.13+
    loops; before, check_again re-pins); LONGTERM_PIN_IN_PLACE, one failed
    before f0f4463837da (pin again without migrating: it stays in CMA);
    -ENOMEM, one failed since (5.13; 5.10.38). A page another migration
    holds isolated counts as failed: 5.13+ Linux retries until it is put
    back, which a call that cannot wait here does not model."""
    cdef int64_t i, k, nq = 0, collected = 0, failed = 0, pfn
    cdef mig_page_t *q
    cdef int nomem = 0
    cdef int c
    for i in range(n):
        if not longterm_pinnable(e, pfns[i]):
            collected += 1
    if collected == 0:
        return 0
    q = <mig_page_t *>malloc(collected * sizeof(mig_page_t))
    if q == NULL:
        unpin_pages(e, pfns, n, per)
        return -CORE_ENOMEM
    # collect_longterm_unpinnable_folios(): the LRU add batches are drained
    # (lru_add_drain_all) so that the pages can be isolated and hold no
    # reference but their mappings'.
    for c in range(e.ncpus):
        lru_drain(e, c)
    for i in range(n):
        if not longterm_pinnable(e, pfns[i]) and e.fflags[folio_of(e, pfns[i])] & PG_ISOLATED:
            failed += 1                     # folio_isolate_lru() fails: another migration has it
    for i in range(n):
        pfn = folio_of(e, pfns[i])          # the folio moves (a THP or mTHP whole)
        if longterm_pinnable(e, pfn) or e.fflags[pfn] & PG_ISOLATED:
            continue                        # (or listed twice: isolated already, by us)
        e.fflags[pfn] |= PG_ISOLATED
        e.refcount[pfn] += 1
        q[nq].old, q[nq].new, q[nq].mm, q[nq].rc = pfn, -1, mm.id, MIG_RC_NONE
        q[nq].va = start + (<uint64_t>i << MM_PAGE_SHIFT)
        nq += 1
    # migrate_longterm_unpinnable_folios(): unpin everything, then migrate
    # to alloc_migration_target() (the page's node first, no
    # __GFP_THISNODE) with the era's gfp: GFP_USER avoids ZONE_MOVABLE and
    # CMA; 5.9-5.12 add __GFP_MOVABLE under memalloc_nocma (41b4dc14ee80),
    # so a page leaving CMA may land in ZONE_MOVABLE (until c991ffef7bce).
    unpin_pages(e, pfns, n, per)
    for k in range(nq):
        e.alloc_pref_node = node_of(e, q[k].old)
        e.alloc_exclude = e.pol.longterm_target_exclude
        failed += migrate_batch(e, &q[k], 1, -1, mm.id, &nomem)
        nomem = 0
    e.alloc_pref_node = 0
    e.alloc_exclude = 0
    free(q)
    if failed:
        return -CORE_ENOMEM if e.pol.longterm_migrate_fail else LONGTERM_PIN_IN_PLACE
    return -CORE_EAGAIN
