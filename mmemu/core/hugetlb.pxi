# hugetlb (mm/hugetlb.c, 6.12 unless a knob says otherwise): a pool of huge
# pages set aside at boot (hugepages= on the command line) and changed at
# run time (nr_hugepages, surplus pages within nr_overcommit_hugepages),
# reservations, faults, COW, fork and zap.
#
# A hugetlb page is a naturally aligned large folio whose 2 MiB blocks the
# block map marks (e.hblk, within [hugetlb_base, hugetlb_end)): references
# on its head, its mappings in entire_map[head >> 9]. It is mapped by PMD
# leaves, one for a 2 MiB page and 512 consecutive ones (what the kernel's
# PUD entry covers) for a 1 GiB page,
# whose tables are not charged to the mm: every leaf counts one mapping and
# one reference, so a mapping of a 1 GiB page counts 512 of each
# (hstate_leaves). hugetlb pages are not on the LRU, not in RSS (they count
# in mm.hugetlb_usage), and are never swapped, split or merged.
#
# A hugetlbfs file's page cache holds, at the index of each huge page's
# first base page, either the page (a present pte naming its head) or
# HUGETLB_RESV: a reservation a shared mapping made with no page yet (the
# inode's resv_map region). A private mapping's reservations are a
# resv_map_t of its creator (HPAGE_RESV_OWNER): one byte per huge page,
# set once the owner consumed its reservation.


cdef enum:
    # e.hblk[pfn >> 9]: the 2 MiB block is not hugetlb, a 2 MiB page, a
    # block of a 1 GiB page, or a 2 MiB page made for a migration
    # (alloc_migrate_hugetlb_folio: HPG_temporary, back to the buddy when freed)
    HBLK_NONE = 0
    HBLK_2M = 1
    HBLK_1G = 2
    HBLK_TEMP = 3
    # folio->private's hugetlb_restore_reserve, kept in the index of the
    # folio's second page (a hugetlb tail's index is otherwise unused)
    HUGETLB_RESTORE_RESERVE = 1
    PTE_MARKER_HUGETLB_RESV = 8     # only in hugetlbfs page caches, never in page tables


cdef inline uint64_t hugetlb_resv_entry() noexcept nogil:
    return make_marker(PTE_MARKER_HUGETLB_RESV)


cdef inline int hstate_shift(int h) noexcept nogil:
    return PUD_SHIFT if h == MM_HSTATE_1G else PMD_SHIFT


cdef inline int64_t hstate_pages(int h) noexcept nogil:
    return HPAGE_PUD_NR if h == MM_HSTATE_1G else HPAGE_PMD_NR


cdef inline int64_t hstate_leaves(int h) noexcept nogil:
    """PMD leaves mapping one page of hstate h."""
    return HPAGE_PUD_NR // HPAGE_PMD_NR if h == MM_HSTATE_1G else 1


cdef inline bint pfn_in_gig(engine_t *e, int64_t pfn) noexcept nogil:
    """pfn is a page of a 1 GiB hugetlb page."""
    if pfn < e.gig_base or pfn >= e.gig_end:
        return False
    return e.hblk[pfn >> HPAGE_PMD_ORDER] == HBLK_1G


cdef inline bint pfn_is_hugetlb(engine_t *e, int64_t pfn) noexcept nogil:
    # (the bounds hold every block that was ever hugetlb: a quick no)
    if pfn < e.hugetlb_base or pfn >= e.hugetlb_end:
        return False
    return e.hblk[pfn >> HPAGE_PMD_ORDER] != HBLK_NONE


cdef inline int hugetlb_hstate_of(engine_t *e, int64_t pfn) noexcept nogil:
    return MM_HSTATE_1G if pfn_in_gig(e, pfn) else MM_HSTATE_2M


cdef inline int vma_hstate(engine_t *e, mm_vma_t *vma) noexcept nogil:
    return e.files[vma.file].hstate - 1


cdef inline int hugetlb_hstate_of_range(engine_t *e, mm_t *mm, uint64_t va) noexcept nogil:
    # The hstate of the hugetlb VMA at va (fork passes ranges, not VMAs).
    cdef int32_t vi = find_vma(mm, va)
    return vma_hstate(e, &mm.vmas[vi]) if vi >= 0 else MM_HSTATE_2M


cdef inline uint64_t vma_hugecache_offset(mm_vma_t *vma, uint64_t haddr, int shift) noexcept nogil:
    """The huge page's index in the file (vma_hugecache_offset)."""
    return (vma.pgoff >> (shift - MM_PAGE_SHIFT)) + ((haddr - vma.start) >> shift)


cdef inline int64_t hugetlb_mapcount(engine_t *e, int64_t head) noexcept nogil:
    """folio_mapcount() of a hugetlb folio: its mappings, not its leaves."""
    return entire_mapcount(e, head)[0] // hstate_leaves(hugetlb_hstate_of(e, head))


# ---- the pool -------------------------------------------------------------

cdef inline int64_t node_start(engine_t *e, int32_t n) noexcept nogil:
    return 1 if n == 0 else <int64_t>n * e.node_span         # pfn 0: the zero page


cdef int hugetlb_pool_init(engine_t *e, int64_t n2m, int64_t n1g) noexcept nogil:
    """hugetlb_hstate_alloc_pages() at boot: the pages are spread over the
    nodes in turn from node 0 (for_each_node_mask_to_alloc from
    first_memory_node), and each node's share sits at its top: its 1 GiB
    pages naturally aligned, its 2 MiB pages below them. What is left above
    a share stays free, what is below is allocated as before (the
    never-used frames end at the share). -1 when a node cannot hold its
    share and 16 frames more, -2 when the host is out of memory."""
    cdef int64_t gig, base, p, i, k, c1, c2, seg1 = 0, start, end, l
    cdef int32_t n, nn = e.nnodes
    if n1g < 0 or n2m < 0 or n1g > e.nframes or n2m > e.nframes:
        return -1
    if hugetlb_pool_tables(e, n1g) < 0:
        return -2
    for n in range(nn):
        c1 = n1g // nn + (1 if n < n1g % nn else 0)
        c2 = n2m // nn + (1 if n < n2m % nn else 0)
        start, end = node_start(e, n), node_end(e, n)
        gig = (end - c1 * HPAGE_PUD_NR) & ~(<int64_t>HPAGE_PUD_NR - 1) if c1 else end
        base = (gig - c2 * HPAGE_PMD_NR) & ~(<int64_t>HPAGE_PMD_NR - 1)
        if gig < start or base < start + 16:
            return -1
        e.hp_gig[n], e.hp_n1g[n], e.hp_base[n], e.hp_n2m[n] = gig, c1, base, c2
        e.h_seg[MM_HSTATE_1G][n] = seg1
        e.h_nfree[MM_HSTATE_1G][n], e.h_nfree[MM_HSTATE_2M][n] = c1, c2
        seg1 += c1
    e.hugetlb_base, e.hugetlb_end, e.gig_base, e.gig_end = e.nframes, 0, e.nframes, 0
    for n in range(nn):
        gig, base, c1, c2 = e.hp_gig[n], e.hp_base[n], e.hp_n1g[n], e.hp_n2m[n]
        end = node_end(e, n)
        if c1 + c2 == 0:
            continue
        # Frames between the 2 MiB and the 1 GiB pages, and above them: free.
        for p in range(base + c2 * HPAGE_PMD_NR, gig):
            pool_slack_free(e, p)
        for p in range(gig + c1 * HPAGE_PUD_NR, end):
            pool_slack_free(e, p)
        if e.zoned:
            l = <int64_t>n * MM_NR_ZONE_LISTS + MM_ZONE_NORMAL
            e.zone_end[l] = base          # the never-used frames stop at the share
        else:
            e.unused_end = base
        e.nr_free -= c2 * HPAGE_PMD_NR + c1 * HPAGE_PUD_NR
        e.hugetlb_base = min(e.hugetlb_base, base)
        e.hugetlb_end = max(e.hugetlb_end, gig + c1 * HPAGE_PUD_NR if c1 else base + c2 * HPAGE_PMD_NR)
        if c1:
            e.gig_base = min(e.gig_base, gig)
            e.gig_end = max(e.gig_end, gig + c1 * HPAGE_PUD_NR)
        # Stacks popped from the top: the node's lowest page goes first.
        for i in range(c1):
            e.h_stack[MM_HSTATE_1G][e.h_seg[MM_HSTATE_1G][n] + c1 - 1 - i] = gig + i * HPAGE_PUD_NR
            memset(&e.hblk[(gig + i * HPAGE_PUD_NR) >> HPAGE_PMD_ORDER], HBLK_1G,
                   HPAGE_PUD_NR >> HPAGE_PMD_ORDER)
        for i in range(c2):
            e.h_stack[MM_HSTATE_2M][e.h_seg[MM_HSTATE_2M][n] + c2 - 1 - i] = base + i * HPAGE_PMD_NR
            e.hblk[(base + i * HPAGE_PMD_NR) >> HPAGE_PMD_ORDER] = HBLK_2M
    if e.gig_end == 0:
        e.gig_base = 0
    if e.hugetlb_end == 0:
        e.hugetlb_base = 0
    e.h_nr[MM_HSTATE_1G] = e.h_free[MM_HSTATE_1G] = n1g
    e.h_nr[MM_HSTATE_2M] = e.h_free[MM_HSTATE_2M] = n2m
    return 0


cdef inline int64_t hugetlb_node_cap(engine_t *e, int32_t n) noexcept nogil:
    """The 2 MiB pages node n could ever hold: its segment of the stack."""
    return ((node_end(e, n) - node_start(e, n)) >> HPAGE_PMD_ORDER) + 1


cdef int hugetlb_pool_tables(engine_t *e, int64_t n1g) noexcept nogil:
    """The pool's own tables, made once: the block map, the 2 MiB stack with
    a segment per node sized for all the node could hold (pages join at run
    time), the 1 GiB one for the boot-time pages. -1 when the host has no
    memory for them."""
    cdef int64_t seg = 0
    cdef int32_t n
    if e.hblk != NULL:
        return 0
    for n in range(e.nnodes):
        e.h_seg[MM_HSTATE_2M][n] = seg
        seg += hugetlb_node_cap(e, n)
    e.hblk = <uint8_t *>calloc((e.nframes >> HPAGE_PMD_ORDER) + 1, 1)
    e.h_stack[MM_HSTATE_2M] = <int64_t *>calloc(seg, sizeof(int64_t))     # saved whole: no stale bytes
    e.h_stack[MM_HSTATE_1G] = <int64_t *>malloc(max(n1g, 1) * sizeof(int64_t))
    if e.hblk == NULL or e.h_stack[0] == NULL or e.h_stack[1] == NULL:
        free(e.hblk)
        free(e.h_stack[0])
        free(e.h_stack[1])
        e.hblk, e.h_stack[0], e.h_stack[1] = NULL, NULL, NULL
        return -1
    return 0


cdef inline void pool_slack_free(engine_t *e, int64_t pfn) noexcept nogil:
    # A frame above a node's share: onto the free list it belongs to (it was
    # counted free already; a zoned engine's counts are recounted after).
    if e.zoned:
        zone_frame_put(e, pfn)
    else:
        freelist_push(e, pfn)


cdef inline int32_t hugetlb_node_with_free(engine_t *e, int h, int32_t node, bint thisnode) noexcept nogil:
    """dequeue_hugetlb_folio_nodemask()'s zonelist walk: node if it has a free
    page of hstate h, else (unless __GFP_THISNODE) the next nodes in turn;
    -1 if none."""
    cdef int32_t k, n
    if node < 0 or node >= e.nnodes:
        node = 0
    for k in range(1 if thisnode else e.nnodes):
        n = (node + k) % e.nnodes
        if e.h_nfree[h][n] > 0:
            return n
    return -1


cdef int64_t hugetlb_folio_take(engine_t *e, int h, uint16_t flags) noexcept nogil:
    """dequeue_hugetlb_folio_node_exact() + init: a free page of hstate h,
    from the preferred node (mmemu keeps no per-task policy: e.alloc_pref_node,
    as for base pages) or the next with one; -1 if none is free."""
    return hugetlb_folio_take_on(e, h, flags, e.alloc_pref_node, False)


cdef int64_t hugetlb_folio_take_on(engine_t *e, int h, uint16_t flags, int32_t node,
                                   bint thisnode) noexcept nogil:
    """A free page of hstate h from `node` (only there with thisnode),
    zeroed, refcount 1 on its head; -1 if none is free."""
    cdef int64_t head
    cdef int32_t n = hugetlb_node_with_free(e, h, node, thisnode)
    if n < 0:
        return -1
    e.h_free[h] -= 1
    e.h_nfree[h][n] -= 1
    head = e.h_stack[h][e.h_seg[h][n] + e.h_nfree[h][n]]
    hugetlb_folio_init(e, head, h, flags)
    return head


cdef void hugetlb_folio_init(engine_t *e, int64_t head, int h, uint16_t flags) noexcept nogil:
    """A page of hstate h leaving the free pool (or just made): zeroed, in
    use, refcount 1 on its head."""
    cdef int64_t p, nr = hstate_pages(h)
    memset(&e.refcount[head], 0, nr * sizeof(int32_t))
    memset(&e.mapcount[head], 0, nr * sizeof(int32_t))
    memset(&e.version[head], 0, nr * sizeof(uint64_t))
    memset(&e.mapping[head], 0, nr * sizeof(uint16_t))
    memset(&e.index[head], 0, nr * sizeof(uint32_t))
    flags |= PG_USED | PG_UPTODATE
    for p in range(head + 1, head + nr):
        e.fflags[p] = flags | PG_TAIL
    e.fflags[head] = flags | PG_HEAD
    e.refcount[head] = 1
    entire_mapcount(e, head)[0] = 0


cdef void hugetlb_folio_free(engine_t *e, int64_t head) noexcept nogil:
    """free_huge_folio(): the last reference went (a folio marked
    restore-reserve gives a reservation back too). A page made for a
    migration, or one of a node with surplus pages, goes back to the buddy
    allocator; any other back to the pool."""
    cdef int h = hugetlb_hstate_of(e, head)
    cdef int64_t p
    cdef int32_t n
    if e.index[head + 1] & HUGETLB_RESTORE_RESERVE:
        e.h_resv[h] += 1
    for p in range(head, head + hstate_pages(h)):
        if e.fflags[p] & PG_BYTES:
            bytes_release(e, <int64_t>e.version[p])
        e.fflags[p] = 0
        e.refcount[p] = 0
        e.mapcount[p] = 0
        e.version[p] = 0
    entire_mapcount(e, head)[0] = 0
    n = node_of(e, head)
    if e.hblk[head >> HPAGE_PMD_ORDER] == HBLK_TEMP:
        hugetlb_page_release(e, head)
        return
    if e.h_node_surplus[h][n] > 0:
        e.h_node_surplus[h][n] -= 1
        e.h_surplus[h] -= 1
        hugetlb_page_release(e, head)
        return
    hugetlb_enqueue(e, head, h)


cdef inline void hugetlb_enqueue(engine_t *e, int64_t head, int h) noexcept nogil:
    # enqueue_hugetlb_folio(): onto its node's free list, first out next
    cdef int32_t n = node_of(e, head)
    e.h_stack[h][e.h_seg[h][n] + e.h_nfree[h][n]] = head
    e.h_nfree[h][n] += 1
    e.h_free[h] += 1


# ---- pages joining and leaving the pool (2 MiB) ------------------------------

cdef int64_t hugetlb_page_new(engine_t *e, int32_t node) noexcept nogil:
    """alloc_fresh_hugetlb_folio() for a 2 MiB page: a free block from the
    buddy allocator, on `node` only (__GFP_THISNODE) or, with -1, along the
    nodes as any user folio; counted in the pool (nr_huge_pages), not yet
    on a free list. -1 when no block is free."""
    cdef int64_t head
    cdef int32_t saved = e.alloc_node
    if e.zoned:
        e.alloc_node = node
        head = zone_take(e, HPAGE_PMD_ORDER)
        e.alloc_node = saved
        if head < 0:
            return -1
    else:
        if e.nr_free - HPAGE_PMD_NR < e.nr_pgtable + 1:
            return -1
        head = hblock_take(e)
        if head < 0:
            return -1
    e.nr_free -= HPAGE_PMD_NR
    e.hblk[head >> HPAGE_PMD_ORDER] = HBLK_2M
    if e.hugetlb_end == 0 or head < e.hugetlb_base:
        e.hugetlb_base = head
    if head + HPAGE_PMD_NR > e.hugetlb_end:
        e.hugetlb_end = head + HPAGE_PMD_NR
    e.h_nr[MM_HSTATE_2M] += 1
    e.hp_n2m[node_of(e, head)] += 1
    return head


cdef void hugetlb_page_release(engine_t *e, int64_t head) noexcept nogil:
    """update_and_free_hugetlb_folio() of a free 2 MiB page already off the
    free lists (its frames clear): out of the pool, its block back to the
    buddy allocator."""
    cdef int64_t p
    for p in range(head, head + HPAGE_PMD_NR):
        e.mapping[p] = 0
        e.index[p] = 0
    e.h_nr[MM_HSTATE_2M] -= 1
    e.hp_n2m[node_of(e, head)] -= 1
    e.hblk[head >> HPAGE_PMD_ORDER] = HBLK_NONE
    hblock_put(e, head)                 # core/huge.pxi


cdef inline int32_t hstate_next_node(int32_t *next, int32_t nn, int32_t nid) noexcept nogil:
    """hstate_next_node_to_alloc()/_to_free(): the node to try, and the one
    after it kept for next time; a node mask of one node (nid) keeps it."""
    cdef int32_t n
    if nid >= 0:
        next[0] = nid
        return nid
    n = next[0] if 0 <= next[0] < nn else 0
    next[0] = (n + 1) % nn
    return n


cdef bint hugetlb_remove_free(engine_t *e, int h, int32_t nid, bint acct_surplus) noexcept nogil:
    """remove_pool_hugetlb_folio() + the free: a free page of a node in turn
    from next_nid_to_free (one with surplus pages if acct_surplus) leaves
    the pool. False when none can."""
    cdef int32_t k, n
    cdef int64_t head
    for k in range(1 if nid >= 0 else e.nnodes):
        n = hstate_next_node(&e.h_next_free[h], e.nnodes, nid)
        if (not acct_surplus or e.h_node_surplus[h][n]) and e.h_nfree[h][n] > 0:
            e.h_nfree[h][n] -= 1
            e.h_free[h] -= 1
            head = e.h_stack[h][e.h_seg[h][n] + e.h_nfree[h][n]]
            if acct_surplus:
                e.h_node_surplus[h][n] -= 1
                e.h_surplus[h] -= 1
            hugetlb_page_release(e, head)
            return True
    return False


cdef bint adjust_pool_surplus(engine_t *e, int h, int32_t nid, int delta) noexcept nogil:
    """adjust_pool_surplus(): one surplus page of a node becomes a
    persistent one (delta -1, nodes from next_nid_to_alloc) or the other way
    (+1, nodes from next_nid_to_free). False when no node can."""
    cdef int32_t k, n
    for k in range(1 if nid >= 0 else e.nnodes):
        if delta < 0:
            n = hstate_next_node(&e.h_next_alloc[h], e.nnodes, nid)
            if e.h_node_surplus[h][n]:
                break
        else:
            n = hstate_next_node(&e.h_next_free[h], e.nnodes, nid)
            if e.h_node_surplus[h][n] < (e.hp_n2m[n] if h == MM_HSTATE_2M else e.hp_n1g[n]):
                break
    else:
        return False
    e.h_surplus[h] += delta
    e.h_node_surplus[h][n] += delta
    return True


cdef inline int64_t hugetlb_persistent(engine_t *e, int h) noexcept nogil:
    return e.h_nr[h] - e.h_surplus[h]


cdef int hugetlb_set_max(engine_t *e, int h, int64_t count, int32_t nid) noexcept nogil:
    """set_max_huge_pages() (6.12) of 2 MiB pages, on node nid only (its
    sysfs file) or over every node with -1: surplus pages become persistent
    first, then fresh pages join (next_nid_to_alloc in turn) until count or
    until no block is free; then free pages leave while more than count and
    than the pages in use or reserved are kept, and pages in use above
    count become surplus (freed to the buddy allocator when released).
    -1 when the host has no memory for the pool's tables."""
    cdef int64_t min_count, head, old
    if hugetlb_pool_tables(e, 0) < 0:
        return -1
    if nid >= 0:
        old = count
        count += hugetlb_persistent(e, h) - (e.hp_n2m[nid] - e.h_node_surplus[h][nid])
        if count < old:
            count = INT64_MAX
    while e.h_surplus[h] and count > hugetlb_persistent(e, h):
        if not adjust_pool_surplus(e, h, nid, -1):
            break
    while count > hugetlb_persistent(e, h):
        head = hugetlb_pool_page_new(e, nid)
        if head < 0:
            break
        hugetlb_enqueue(e, head, h)
    min_count = max(count, e.h_resv[h] + e.h_nr[h] - e.h_free[h])
    while min_count < hugetlb_persistent(e, h):
        if not hugetlb_remove_free(e, h, nid, False):
            break
    while count < hugetlb_persistent(e, h):
        if not adjust_pool_surplus(e, h, nid, 1):
            break
    return 0


cdef int64_t hugetlb_pool_page_new(engine_t *e, int32_t nid) noexcept nogil:
    """alloc_pool_huge_folio(): a fresh 2 MiB page on the nodes in turn from
    next_nid_to_alloc (each __GFP_THISNODE), or on nid only; -1 if none."""
    cdef int32_t k, n
    cdef int64_t head
    for k in range(1 if nid >= 0 else e.nnodes):
        n = hstate_next_node(&e.h_next_alloc[MM_HSTATE_2M], e.nnodes, nid)
        head = hugetlb_page_new(e, n)
        if head >= 0:
            return head
    return -1


cdef int64_t hugetlb_surplus_new(engine_t *e, int h) noexcept nogil:
    """alloc_surplus_hugetlb_folio(): a fresh page beyond the persistent
    pool while surplus pages are fewer than nr_overcommit_hugepages (never
    a gigantic one); counted surplus, not on a free list. -1 if none."""
    cdef int64_t head
    if h != MM_HSTATE_2M or e.h_surplus[h] >= e.h_overcommit[h] or hugetlb_pool_tables(e, 0) < 0:
        return -1
    head = hugetlb_page_new(e, -1)
    if head < 0:
        return -1
    e.h_surplus[h] += 1
    e.h_node_surplus[h][node_of(e, head)] += 1
    return head


cdef inline void hugetlb_folio_set_flags(engine_t *e, int64_t head, uint16_t set, uint16_t clear) noexcept nogil:
    # The kernel keeps anon and PageAnonExclusive on the head; every page
    # carries them here so pte-level readers (GUP, pagemap) see the folio's.
    cdef int64_t p
    for p in range(head, head + hstate_pages(hugetlb_hstate_of(e, head))):
        e.fflags[p] = (e.fflags[p] & ~clear) | set


# ---- reservations ---------------------------------------------------------

cdef int hugetlb_acct_memory(engine_t *e, int h, int64_t delta) noexcept nogil:
    """hugetlb_acct_memory(): reserving more than the free pages not yet
    reserved first makes surplus pages for the rest (gather_surplus_pages:
    all or none, within nr_overcommit_hugepages), else fails; giving
    reservations back frees as many surplus pages as were freed of them
    (return_unused_surplus_pages). 0 or -1 (ENOMEM)."""
    cdef int64_t needed, i, nr, head
    cdef int64_t *made
    if delta <= 0:
        e.h_resv[h] += delta
        nr = min(-delta, e.h_surplus[h])
        for i in range(nr):
            if not hugetlb_remove_free(e, h, -1, True):
                break
        return 0
    needed = e.h_resv[h] + delta - e.h_free[h]
    if needed > 0:
        if h != MM_HSTATE_2M or e.h_surplus[h] + needed > e.h_overcommit[h] \
                or needed > (e.nframes >> HPAGE_PMD_ORDER):        # more than memory could ever hold
            return -1
        made = <int64_t *>malloc(needed * sizeof(int64_t))
        if made == NULL:
            return -1
        for i in range(needed):
            made[i] = hugetlb_surplus_new(e, h)
            if made[i] < 0:
                # Not all could be had: those made are freed again (surplus).
                for nr in range(i):
                    head = made[nr]
                    e.h_surplus[h] -= 1
                    e.h_node_surplus[h][node_of(e, head)] -= 1
                    hugetlb_page_release(e, head)
                free(made)
                return -1
        for i in range(needed):
            hugetlb_enqueue(e, made[i], h)
        free(made)
    e.h_resv[h] += delta
    return 0


cdef int32_t resv_map_new(engine_t *e, int h, int64_t first, int64_t n) noexcept nogil:
    """resv_map_alloc() for a private mapping of huge pages [first, first+n):
    its id (>= 1), -1 when the host is out of memory."""
    cdef int32_t i, rid = -1
    for i in range(1, e.nresv):
        if not e.resv_maps[i].alive:
            rid = i
            break
    if rid < 0:
        if array_grow32(<void **>&e.resv_maps, &e.resv_cap, e.nresv + 2, sizeof(resv_map_t), 8, True) < 0:
            return -1
        if e.nresv == 0:
            e.nresv = 1                 # id 0 is "none"
        rid = e.nresv
        e.nresv += 1
    e.resv_maps[rid].consumed = <uint8_t *>calloc(max(n, 1), 1)
    if e.resv_maps[rid].consumed == NULL:
        return -1
    e.resv_maps[rid].alive = 1
    e.resv_maps[rid].hstate = h
    e.resv_maps[rid].first = first
    e.resv_maps[rid].n = n
    return rid


cdef void resv_map_release(engine_t *e, int32_t rid) noexcept nogil:
    free(e.resv_maps[rid].consumed)
    memset(&e.resv_maps[rid], 0, sizeof(resv_map_t))


cdef int64_t resv_unconsumed(engine_t *e, int32_t rid, int64_t first, int64_t last) noexcept nogil:
    """Reservations of map rid in huge pages [first, last) not consumed."""
    cdef resv_map_t *r = &e.resv_maps[rid]
    cdef int64_t i, n = 0
    for i in range(max(first, r.first), min(last, r.first + r.n)):
        n += r.consumed[i - r.first] == 0
    return n


cdef void hugetlb_vmas_close(engine_t *e, mm_vma_t *old, int32_t nold, mm_vma_t *new,
                             int32_t nnew) noexcept nogil:
    """hugetlb_vm_op_close() for what a new VMA table no longer covers: an
    owner's unconsumed reservations of the huge pages that left (munmap,
    exit) go back to the pool; a map no VMA names any more is freed.
    Coverage is by file offset, so mremap (which keeps offsets) releases
    nothing."""
    cdef int32_t i, j, rid
    cdef int shift
    cdef int64_t a, b, ca, cb, lo, hi, back
    cdef bint named
    for i in range(nold):
        rid = old[i].resv
        if rid <= 0:
            continue
        shift = hstate_shift(e.resv_maps[rid].hstate)
        a = <int64_t>(old[i].pgoff >> (shift - MM_PAGE_SHIFT))
        b = a + <int64_t>((old[i].end - old[i].start) >> shift)
        back = 0
        lo = a
        while lo < b:
            # The first offset >= lo a new VMA of this map covers, and how far.
            ca, cb = b, b
            for j in range(nnew):
                if new[j].resv != rid:
                    continue
                hi = <int64_t>(new[j].pgoff >> (shift - MM_PAGE_SHIFT))
                if hi + <int64_t>((new[j].end - new[j].start) >> shift) <= lo:
                    continue
                if max(hi, lo) < ca:
                    ca = max(hi, lo)
                    cb = hi + <int64_t>((new[j].end - new[j].start) >> shift)
            back += resv_unconsumed(e, rid, lo, ca)
            lo = cb
        if back:
            hugetlb_acct_memory(e, e.resv_maps[rid].hstate, -back)
            # Released once: mark them so a second old VMA of the map (a
            # split half) over the same offsets cannot release them again.
            for lo in range(max(a, e.resv_maps[rid].first), min(b, e.resv_maps[rid].first + e.resv_maps[rid].n)):
                named = False
                for j in range(nnew):
                    if new[j].resv == rid and (new[j].pgoff >> (shift - MM_PAGE_SHIFT)) <= <uint64_t>lo \
                            and <uint64_t>lo < (new[j].pgoff >> (shift - MM_PAGE_SHIFT)) + ((new[j].end - new[j].start) >> shift):
                        named = True
                if not named:
                    e.resv_maps[rid].consumed[lo - e.resv_maps[rid].first] = 1
    for i in range(nold):
        rid = old[i].resv
        if rid <= 0 or not e.resv_maps[rid].alive:
            continue
        named = False
        for j in range(nnew):
            if new[j].resv == rid:
                named = True
        if not named:
            resv_map_release(e, rid)


cdef int64_t hugetlb_clear_vma_resv(engine_t *e, mm_t *mm, uint64_t start, uint64_t end) noexcept nogil:
    """clear_vma_resv_huge_pages() as move_vma() calls it (550a7d60bd5e, 5.16;
    still so in 6.12.118 and on the 6.18.44 host): mremap moved part of a
    private mapping, and the VMA it came from drops its reservation map
    whole, not just the moved part's share. What is left of that VMA, the
    private VMAs inside [start, end), is no longer the owner: its faults
    take unreserved pages (and an owner's COW fallback is gone), and its
    unconsumed reservations are never given back (no VMA's close counts
    them; resv_hugepages stays raised for good). Marked consumed here so
    the map, which the moved VMA still owns, does not return them either.
    Returns the reservations leaked."""
    cdef int32_t vi
    cdef mm_vma_t *v
    cdef resv_map_t *r
    cdef int shift
    cdef int64_t a, b, k, n = 0
    for vi in range(mm.nvma):
        v = &mm.vmas[vi]
        if v.start < start or v.end > end or v.resv <= 0 or v.flags & VM_MAYSHARE:
            continue
        r = &e.resv_maps[v.resv]
        shift = hstate_shift(r.hstate)
        a = <int64_t>(v.pgoff >> (shift - MM_PAGE_SHIFT))
        b = a + <int64_t>((v.end - v.start) >> shift)
        for k in range(max(a, r.first), min(b, r.first + r.n)):
            if r.consumed[k - r.first] == 0:
                r.consumed[k - r.first] = 1
                n += 1
        v.resv = 0
    return n


cdef int64_t alloc_hugetlb_folio(engine_t *e, mm_vma_t *vma, int h, uint64_t idx,
                                 bint cow_from_owner) noexcept nogil:
    """alloc_hugetlb_folio(): a page for huge page idx of vma, from its
    reservation if it has one (vma_needs_reservation == 0 and not a COW by
    the owner), else from the pages nobody reserved; -1 (-ENOSPC: SIGBUS)
    when there is none. The owner's reservation is committed as consumed."""
    cdef uint64_t *cs
    cdef resv_map_t *r = NULL
    cdef int64_t head, k = -1
    cdef bint reserved = False
    cdef int shift = hstate_shift(h)
    if vma.flags & VM_MAYSHARE:
        cs = cache_slot(e, &e.files[vma.file], idx << (shift - MM_PAGE_SHIFT), False)
        reserved = cs != NULL and cs[0] == hugetlb_resv_entry()
    elif vma.resv > 0:
        r = &e.resv_maps[vma.resv]
        k = <int64_t>idx - r.first
        reserved = 0 <= k < r.n and r.consumed[k] == 0
    if cow_from_owner:
        reserved = False
    head = -1
    if reserved or e.h_free[h] - e.h_resv[h] > 0:
        head = hugetlb_folio_take(e, h, 0)
    if head < 0:
        # alloc_buddy_hugetlb_folio_with_mpol(): a surplus page, if allowed
        head = hugetlb_surplus_new(e, h)
        if head < 0:
            return -1
        hugetlb_folio_init(e, head, h, 0)
    elif reserved:
        e.h_resv[h] -= 1
    if r != NULL and not cow_from_owner and 0 <= k < r.n:
        r.consumed[k] = 1           # vma_commit_reservation
    return head


cdef int64_t hugetlb_cache_add(engine_t *e, int32_t fid, uint64_t idx) noexcept nogil:
    """hugetlbfs_fallocate()'s step for huge page idx of file fid: nothing if
    the cache has it, else a new zeroed page from the file's reservation or
    the unreserved free pages (alloc_hugetlb_folio on a pseudo shared VMA),
    added to the cache. 1 added, 0 present, -1 no page (ENOSPC), -2 no
    memory for the cache tree."""
    cdef mm_file_t *f = &e.files[fid]
    cdef int h = f.hstate - 1
    cdef uint64_t cidx = idx << (hstate_shift(h) - MM_PAGE_SHIFT)
    cdef uint64_t *cs = cache_slot(e, f, cidx, True)
    cdef mm_vma_t pseudo
    cdef int64_t head
    if cs == NULL:
        return -2
    if cs[0] & PTE_PRESENT:
        return 0
    memset(&pseudo, 0, sizeof(mm_vma_t))
    pseudo.flags = VM_HUGETLB | VM_MAYSHARE | VM_SHARED
    pseudo.file = fid
    head = alloc_hugetlb_folio(e, &pseudo, h, idx, False)
    if head < 0:
        return -1
    hugetlb_cache_insert(e, f, cs, head, cidx)
    return 1


# ---- mapping --------------------------------------------------------------

cdef int hugetlb_install(engine_t *e, mm_t *mm, int32_t *slot, int64_t leaves, uint64_t first) noexcept nogil:
    """set_huge_pte_at(): `leaves` PMD leaves from slot on, the k-th mapping
    first + k * 512 pages. All or nothing: -1 if a table cannot be had."""
    cdef int32_t p
    cdef int64_t k, i
    cdef uint64_t *t
    for k in range(leaves):
        p = ptp_alloc_raw(e)                # every entry is written below
        if p < 0:
            while k > 0:
                k -= 1
                push_free(e, &e.pte_free, &e.npte_free, &e.pte_free_cap, (slot[k] & ~PMD_HUGE) - 1)
                slot[k] = 0
                e.nr_huge_pmd -= 1
            return -1
        t = pte_page(e, p)
        for i in range(HPAGE_PMD_NR):
            t[i] = first + pfn_pte(k * HPAGE_PMD_NR + i)
        slot[k] = (p + 1) | PMD_HUGE
        e.nr_huge_pmd += 1
    return 0


cdef void hugetlb_set_bits(engine_t *e, int32_t *slot, int64_t leaves, uint64_t set, uint64_t clear) noexcept nogil:
    cdef int64_t k, i
    cdef uint64_t *t
    for k in range(leaves):
        t = pmd_leaf_table(e, slot[k])
        for i in range(HPAGE_PMD_NR):
            t[i] = (t[i] & ~clear) | set


cdef void hugetlb_set_entries(engine_t *e, int32_t *slot, int64_t leaves, uint64_t first) noexcept nogil:
    # Rewrite installed leaves to map first's page (a COW replaces the page in place).
    cdef int64_t k, i
    cdef uint64_t *t
    for k in range(leaves):
        t = pmd_leaf_table(e, slot[k])
        for i in range(HPAGE_PMD_NR):
            t[i] = first + pfn_pte(k * HPAGE_PMD_NR + i)


cdef inline bint hugetlb_leaf_is_marker(engine_t *e, int32_t ent) noexcept nogil:
    """A hugetlb entry that maps nothing but holds a pte marker (uffd-wp,
    5.19; poison, 6.6): a PMD_HUGE slot whose table repeats the marker.
    The other kinds are present leaves and, while a migration runs,
    migration entries (no hugetlb swap entries exist)."""
    cdef uint64_t pte
    if not pmd_trans_huge(ent):
        return False
    pte = pmd_leaf_table(e, ent)[0]
    return not (pte & PTE_PRESENT) and not is_migration_entry(pte)


cdef int hugetlb_install_marker(engine_t *e, int32_t *slot, int64_t leaves, uint64_t marker) noexcept nogil:
    """set_huge_pte_at(make_pte_marker()) on none entries: every leaf's
    table holds the marker. All or nothing: -1 if a table cannot be had."""
    cdef int32_t p
    cdef int64_t k, i
    cdef uint64_t *t
    for k in range(leaves):
        p = ptp_alloc(e)
        if p < 0:
            while k > 0:
                k -= 1
                push_free(e, &e.pte_free, &e.npte_free, &e.pte_free_cap, (slot[k] & ~PMD_HUGE) - 1)
                slot[k] = 0
                e.nr_huge_pmd -= 1
            return -1
        t = pte_page(e, p)
        for i in range(HPAGE_PMD_NR):
            t[i] = marker
        slot[k] = (p + 1) | PMD_HUGE
        e.nr_huge_pmd += 1
    return 0


cdef void hugetlb_clear_marker(engine_t *e, int32_t *slot, int64_t leaves) noexcept nogil:
    """huge_pte_clear() of a marker entry: its tables go (non-present to
    none: no flush)."""
    cdef int64_t k
    for k in range(leaves):
        if slot[k]:
            push_free(e, &e.pte_free, &e.npte_free, &e.pte_free_cap, (slot[k] & ~PMD_HUGE) - 1)
            slot[k] = 0
            e.nr_huge_pmd -= 1


cdef void hugetlb_zap_leaf(engine_t *e, mm_t *mm, int32_t *slot, gather_t *g, bint keep_wp) noexcept nogil:
    """__unmap_hugepage_range() for one leaf: the entry goes, the page loses
    a mapping now and a reference after the flush. With keep_wp (any zap
    but munmap, exit and truncation, which pass ZAP_FLAG_DROP_MARKER) an
    entry with uffd-wp - present or a marker - leaves a uffd-wp marker
    behind, whether or not the VMA is still registered (05e90bd05eea,
    5.19); any other marker (poison) is cleared."""
    cdef uint64_t *t = pmd_leaf_table(e, slot[0])
    cdef uint64_t pte0 = t[0]
    cdef int64_t head, i
    if not (pte0 & PTE_PRESENT):
        if is_migration_entry(pte0):
            # A migration entry holds no reference; with uffd-wp it leaves a
            # marker (pte_swp_uffd_wp_any), as a present entry does.
            if keep_wp and pte0 & PTE_UFFD_WP:
                for i in range(HPAGE_PMD_NR):
                    t[i] = make_marker(PTE_MARKER_UFFD_WP)
            else:
                hugetlb_clear_marker(e, slot, 1)
            return
        if not (keep_wp and marker_bits(pte0) == PTE_MARKER_UFFD_WP):
            hugetlb_clear_marker(e, slot, 1)
        return
    head = folio_of(e, <int64_t>pte_pfn(pte0))
    if keep_wp and pte0 & PTE_UFFD_WP:
        for i in range(HPAGE_PMD_NR):
            t[i] = make_marker(PTE_MARKER_UFFD_WP)
    else:
        push_free(e, &e.pte_free, &e.npte_free, &e.pte_free_cap, (slot[0] & ~PMD_HUGE) - 1)
        slot[0] = 0
        e.nr_huge_pmd -= 1
    g.need_flush = 1
    entire_mapcount(e, head)[0] -= 1
    mm.hugetlb_usage -= HPAGE_PMD_NR
    gather_add(e, g, head)


cdef void hugetlb_zap_restore_reserve(engine_t *e, mm_t *mm, uint64_t va, int64_t head) noexcept nogil:
    """After a zap of a huge page's (last) leaf at va (__unmap_hugepage_range,
    df7a6d1f6405 6.8): when the owner of a private mapping (its resv map)
    unmaps an anon page, its reservation is restored: the map no longer
    counts it consumed (vma_add_reservation), and the page gives a
    reservation back to the pool when it is freed (restore_reserve), even
    if a child still maps it (as 6.18.44 does; 6.12.118's source restores
    only for the folio's last mapping). Not while the pool has surplus
    pages (the freed page may be one of them: no restore bit), and the
    hugetlb VMA lock is always held."""
    cdef int32_t vi
    cdef mm_vma_t *vma
    cdef resv_map_t *r
    cdef int h, shift
    cdef int64_t k
    if not e.pol.hugetlb_zap_restore_reserve or not e.fflags[head] & PG_ANON \
            or e.h_surplus[hugetlb_hstate_of(e, head)]:
        return
    if e.pol.hugetlb_zap_restore_reserve == 2 and entire_mapcount(e, head)[0] > 0:
        return                          # another mapping (fork's child) keeps it: 6.12.110
    if hugetlb_hstate_of(e, head) == MM_HSTATE_1G and (va & ((1ULL << 30) - 1)) != (1ULL << 30) - PMD_SPAN:
        return                          # a 1 GiB page: once, at its last 2 MiB leaf
    vi = find_vma(mm, va)
    if vi < 0:
        return
    vma = &mm.vmas[vi]
    if vma.flags & VM_MAYSHARE or vma.resv <= 0:
        return
    h = hugetlb_hstate_of(e, head)
    shift = hstate_shift(h)
    e.index[head + 1] |= HUGETLB_RESTORE_RESERVE
    r = &e.resv_maps[vma.resv]
    k = <int64_t>vma_hugecache_offset(vma, va & ~((1ULL << shift) - 1), shift) - r.first
    if 0 <= k < r.n and r.consumed[k]:
        r.consumed[k] = 0


cdef void hugetlb_unmap_page(engine_t *e, mm_t *mm, uint64_t haddr, int h) noexcept nogil:
    """unmap_hugepage_range() of one huge page, flushed (unmap_ref_private
    passes no ZAP_FLAG_DROP_MARKER: a uffd-wp entry leaves its marker)."""
    cdef gather_t g
    cdef int32_t *slot = pmd_slot(e, mm, haddr, False)
    cdef int64_t k
    if slot == NULL or not pmd_trans_huge(slot[0]):
        return
    gather_init(&g, mm.id, haddr, haddr + (1ULL << hstate_shift(h)))
    for k in range(hstate_leaves(h)):
        if pmd_trans_huge(slot[k]):
            hugetlb_zap_leaf(e, mm, slot + k, &g, True)
    gather_finish(e, &g)


cdef void unmap_ref_private(engine_t *e, mm_t *mm, mm_vma_t *vma, int64_t head, uint64_t haddr,
                            int h) noexcept nogil:
    """unmap_ref_private(): the owner of a private mapping failed to COW for
    want of a page; every other private mapping of the same file offset
    that maps this page loses it, and its VMA is marked so that its next
    fault there is SIGBUS (HPAGE_RESV_UNMAPPED) instead of silent data loss."""
    cdef int shift = hstate_shift(h)
    cdef uint64_t idx = vma_hugecache_offset(vma, haddr, shift), v0, a
    cdef int32_t mi, vi
    cdef mm_t *m
    cdef mm_vma_t *v
    cdef int32_t *slot
    for mi in range(e.nmm):
        m = &e.mms[mi]
        if not m.alive:
            continue
        for vi in range(m.nvma):
            v = &m.vmas[vi]
            if v == vma or v.file != vma.file or v.flags & VM_MAYSHARE or v.resv > 0:
                continue
            v0 = v.pgoff >> (shift - MM_PAGE_SHIFT)
            if idx < v0 or idx >= v0 + ((v.end - v.start) >> shift):
                continue
            a = v.start + ((idx - v0) << shift)
            slot = pmd_slot(e, m, a, False)
            if slot == NULL or not pmd_trans_huge(slot[0]) or not (pmd_leaf_table(e, slot[0])[0] & PTE_PRESENT) \
                    or folio_of(e, <int64_t>pte_pfn(pmd_leaf_table(e, slot[0])[0])) != head:
                continue
            hugetlb_unmap_page(e, m, a, h)
            v.flags |= VM_RESV_UNMAPPED


# ---- faults ---------------------------------------------------------------

cdef int hugetlb_wp(engine_t *e, mm_t *mm, int cpu, mm_vma_t *vma, uint64_t haddr, int32_t *slot,
                    int h, int fflags) noexcept nogil:
    """hugetlb_wp() (6.12): shared mappings just become writable; a private
    anon page mapped once is reused - by mapcount in every era, GUP
    references ignored (so the vmsplice leak B2b stays, as cow.c expects);
    otherwise copied whole. An owner that finds no page for its copy takes
    the page back from the other mappings (unmap_ref_private) and reuses it."""
    cdef uint64_t pte = pmd_leaf_table(e, slot[0])[0], entry
    cdef bint unshare = (fflags & FAULT_FLAG_UNSHARE) != 0 and not (fflags & FAULT_FLAG_WRITE)
    cdef int64_t old, new, i, leaves = hstate_leaves(h), nr = hstate_pages(h)
    cdef bint anon, cow_from_owner, retried = False
    cdef int shift = hstate_shift(h)
    stat_add(e, MM_STAT_WP_FAULT, 1)
    if not unshare and pte & PTE_UFFD_WP:
        # Never a COW of a uffd-wp entry (166f3ecc0daf, 5.19): only
        # hugetlb_no_page's write path gets here with one (a page mapped
        # over a marker), and the retried access reports the WP fault.
        # (An entry left uffd-wp in a VMA no longer registered - close()
        # before 6.9, c88033efe9a3 - refaults here for ever in Linux; the
        # engine's bounded retry of an access ends it as Livelock.)
        return 0
    if not unshare and not (vma.flags & VM_WRITE):
        return VM_FAULT_SIGSEGV
    if vma.flags & VM_MAYSHARE:
        if not unshare:
            hugetlb_set_bits(e, slot, leaves, PTE_WRITE | PTE_DIRTY | PTE_YOUNG, 0)
        return 0
    old = folio_of(e, <int64_t>pte_pfn(pte))
    anon = (e.fflags[old] & PG_ANON) != 0
    while True:
        if anon and hugetlb_mapcount(e, old) == 1:
            if e.pol.anon_exclusive and not (e.fflags[old] & PG_ANON_EXCLUSIVE):
                hugetlb_folio_set_flags(e, old, PG_ANON_EXCLUSIVE, 0)
            if not unshare:
                hugetlb_set_bits(e, slot, leaves, PTE_WRITE | PTE_DIRTY | PTE_YOUNG, 0)
            stat_add(e, MM_STAT_REUSE, 1)
            return 0
        cow_from_owner = vma.resv > 0 and anon
        new = alloc_hugetlb_folio(e, vma, h, vma_hugecache_offset(vma, haddr, shift), cow_from_owner)
        if new >= 0:
            break
        if not cow_from_owner or retried:
            return VM_FAULT_SIGBUS
        unmap_ref_private(e, mm, vma, old, haddr, h)
        retried = True
    anon_vma_prepare(e, mm, vma)
    for i in range(nr):
        if frame_copy(e, new + i, old + i) < 0:
            put_page(e, new, 1)
            return VM_FAULT_NOMEM
    hugetlb_folio_set_flags(e, new, PG_ANON | (PG_ANON_EXCLUSIVE if e.pol.anon_exclusive else 0), 0)
    e.refcount[new] = <int32_t>leaves
    entire_mapcount(e, new)[0] = <int32_t>leaves
    # huge_ptep_clear_flush, then the new page in place; unshare maps it R/O.
    entry = pfn_pte(new) | PTE_PRESENT | PTE_YOUNG | (pte & PTE_PROTNONE)
    if not unshare:
        entry |= PTE_WRITE | PTE_DIRTY
    if pte & PTE_UFFD_WP:
        entry = mkuffd_wp(entry)        # hugetlb_wp(): the copy stays uffd-wp (an unshare)
    tlb_flush_range(e, mm.id, haddr, haddr + (1ULL << shift))
    hugetlb_set_entries(e, slot, leaves, entry)
    entire_mapcount(e, old)[0] -= <int32_t>leaves
    put_page(e, old, <int32_t>leaves)
    stat_add(e, MM_STAT_COW, 1)
    return 0


cdef inline int hugetlb_handle_userfault(engine_t *e, mm_t *mm, mm_vma_t *vma, uint64_t haddr,
                                         uint64_t va, int fflags, int reason) noexcept nogil:
    """hugetlb_handle_userfault(): handle_userfault() with vmf->address, the
    huge page's address; the faulting one only with EXACT_ADDRESS
    (824ddc601adc, 5.18: vmf->real_address)."""
    if vma.uffd > 0 and vma.uffd < e.nuffd and e.uffd_feat[vma.uffd] & UFFD_FEATURE_EXACT_ADDRESS:
        return handle_userfault(e, mm, vma, va, fflags, reason)
    return handle_userfault(e, mm, vma, haddr, fflags, reason)


cdef int hugetlb_no_page(engine_t *e, mm_t *mm, int cpu, mm_vma_t *vma, uint64_t haddr, int32_t *slot,
                         int h, int fflags, uint64_t va) noexcept nogil:
    """hugetlb_no_page() (6.12) on a none entry or a marker: the page cache's
    page, or a new zeroed one - added to the cache for a shared mapping,
    anon for a private one (a read fault too: hugetlb has no zero page).
    Mapped young, writable and dirty only in a writable shared mapping; a
    write to a private one goes on to hugetlb_wp. Past EOF, with no page to
    be had, or in a VMA whose page the owner took back: SIGBUS.

    userfaultfd: a page not in the cache is a MISSING userfault in a
    MISSING-registered VMA (every era), a page in it a MINOR one in a
    MINOR-registered VMA (7677f7fd8be7, 5.13); the entry (a uffd-wp marker
    stays) is left as it is. A page mapped over a uffd-wp marker is mapped
    uffd-wp (5.19)."""
    cdef mm_file_t *f = &e.files[vma.file]
    cdef int shift = hstate_shift(h)
    cdef uint64_t idx = vma_hugecache_offset(vma, haddr, shift)
    cdef uint64_t cidx = idx << (shift - MM_PAGE_SHIFT), entry
    cdef uint64_t *cs
    cdef int64_t head, leaves = hstate_leaves(h)
    cdef bint anon = False
    cdef bint wp_marker = slot[0] != 0 and marker_bits(pmd_leaf_table(e, slot[0])[0]) == PTE_MARKER_UFFD_WP
    if vma.flags & VM_RESV_UNMAPPED:
        return VM_FAULT_SIGBUS
    cs = cache_slot(e, f, cidx, False)
    if cs != NULL and cs[0] & PTE_PRESENT:
        if vma.flags & VM_UFFD_MINOR:
            return hugetlb_handle_userfault(e, mm, vma, haddr, va, fflags, UFFD_REASON_MINOR)
        head = <int64_t>pte_pfn(cs[0])
        get_page(e, head, <int32_t>leaves)
    else:
        if <int64_t>idx >= (f.size >> shift):
            return VM_FAULT_SIGBUS
        if vma.flags & VM_UFFD_MISSING:
            return hugetlb_handle_userfault(e, mm, vma, haddr, va, fflags, UFFD_REASON_MISSING)
        if not (vma.flags & VM_MAYSHARE):
            anon_vma_prepare(e, mm, vma)
        if vma.flags & VM_MAYSHARE:
            cs = cache_slot(e, f, cidx, True)
            if cs == NULL:
                return table_alloc_failed(e)
        head = alloc_hugetlb_folio(e, vma, h, idx, False)
        if head < 0:
            return VM_FAULT_SIGBUS
        if vma.flags & VM_MAYSHARE:
            # hugetlb_add_to_page_cache(): the cache keeps the allocation's
            # reference; the mapping takes its own.
            hugetlb_cache_insert(e, f, cs, head, cidx)
            get_page(e, head, <int32_t>leaves)
        else:
            anon = True
            hugetlb_folio_set_flags(e, head, PG_ANON | (PG_ANON_EXCLUSIVE if e.pol.anon_exclusive else 0), 0)
            e.refcount[head] = <int32_t>leaves
    entry = pfn_pte(head) | PTE_PRESENT | PTE_YOUNG
    if vma.flags & VM_WRITE and vma.flags & VM_SHARED:
        entry |= PTE_WRITE | PTE_DIRTY
    if wp_marker:
        entry = mkuffd_wp(entry)
    if slot[0]:
        hugetlb_clear_marker(e, slot, leaves)
    if hugetlb_install(e, mm, slot, leaves, entry) < 0:
        put_page(e, head, <int32_t>leaves)
        return table_alloc_failed(e)
    entire_mapcount(e, head)[0] += <int32_t>leaves
    mm.hugetlb_usage += hstate_pages(h)
    stat_add(e, MM_STAT_FILE_FAULT if not anon else MM_STAT_ANON_FAULT, 1)
    if fflags & FAULT_FLAG_WRITE and not (vma.flags & VM_SHARED):
        return hugetlb_wp(e, mm, cpu, vma, haddr, slot, h, fflags)
    return 0


cdef inline void hugetlb_cache_insert(engine_t *e, mm_file_t *f, uint64_t *cs, int64_t head,
                                      uint64_t cidx) noexcept nogil:
    # hugetlb_add_to_page_cache(): the cache slot names the page (taking
    # over the caller's reference), the page its file and index.
    cs[0] = pfn_pte(head) | PTE_PRESENT
    e.fflags[head] |= PG_FILE
    e.mapping[head] = <uint16_t>f.id
    e.index[head] = <uint32_t>cidx
    f.nrpages += 1


cdef int hugetlb_fault(engine_t *e, mm_t *mm, int cpu, mm_vma_t *vma, uint64_t va, int fflags) noexcept nogil:
    """hugetlb_fault() (6.12) on the huge page covering va. A marker is a
    none entry to hugetlb_no_page, but a poisoned one (UFFDIO_POISON, 6.6)
    is SIGBUS. A write to a uffd-wp entry of a WP-registered VMA is a WP
    userfault (5.19), or with WP_ASYNC (6.7) loses uffd-wp and goes on."""
    cdef int h = vma_hstate(e, vma)
    cdef uint64_t haddr = va & ~((1ULL << hstate_shift(h)) - 1)
    cdef int32_t *slot = pmd_slot(e, mm, haddr, True)
    cdef uint64_t *t
    cdef uint64_t pte
    if slot == NULL:
        return table_alloc_failed(e)
    if slot[0] == 0:
        return hugetlb_no_page(e, mm, cpu, vma, haddr, slot, h, fflags, va)
    t = pmd_leaf_table(e, slot[(va >> PMD_SHIFT) & (hstate_leaves(h) - 1)])
    pte = t[(va >> MM_PAGE_SHIFT) & 511]
    if not (pte & PTE_PRESENT):
        if is_migration_entry(pte):
            # migration_entry_wait_huge(): sleep until the entry is gone, retry.
            sched_point(e, SP_MIGRATION_WAIT, mm.id, va, <uint64_t>swp_offset(pte))
            return 0
        if marker_bits(pte) & PTE_MARKER_POISONED:
            return VM_FAULT_SIGBUS | VM_FAULT_HWPOISON
        return hugetlb_no_page(e, mm, cpu, vma, haddr, slot, h, fflags, va)
    if fflags & FAULT_FLAG_WRITE and not (pte & PTE_WRITE) and pte & PTE_UFFD_WP \
            and vma.flags & VM_UFFD_WP:
        if vma.uffd > 0 and vma.uffd < e.nuffd and e.uffd_feat[vma.uffd] & UFFD_FEATURE_WP_ASYNC:
            hugetlb_set_bits(e, slot, hstate_leaves(h), 0, PTE_UFFD_WP)     # then the COW path
        else:
            stat_add(e, MM_STAT_WP_FAULT, 1)
            return hugetlb_handle_userfault(e, mm, vma, haddr, va, fflags, UFFD_REASON_WP)
    if fflags & (FAULT_FLAG_WRITE | FAULT_FLAG_UNSHARE) and not (pte & PTE_WRITE):
        return hugetlb_wp(e, mm, cpu, vma, haddr, slot, h, fflags)
    t[(va >> MM_PAGE_SHIFT) & 511] = pte | PTE_YOUNG | (PTE_DIRTY if fflags & FAULT_FLAG_WRITE else 0)
    return 0


# ---- fork -----------------------------------------------------------------

cdef int copy_hugetlb_range(engine_t *e, mm_t *src, mm_t *dst, uint64_t start, uint64_t end,
                            uint64_t src_flags, uint64_t dst_flags, int h, int64_t *wrprotected) noexcept nogil:
    """copy_hugetlb_page_range() (6.12) for one VMA: shared mappings share
    the page as is; in a COW mapping both sides map it write-protected,
    except a maybe-pinned anon page, which the child gets a copy of now
    (4eae4efa2c29, 5.12; 5.19+ only if it is exclusive). 0, or -1 when no
    page or table can be had (fork fails with ENOMEM)."""
    cdef bint cow = is_cow_mapping(src_flags)
    cdef int shift = hstate_shift(h)
    cdef int64_t leaves = hstate_leaves(h), nr = hstate_pages(h), head, new, i
    cdef uint64_t va = start, pte
    cdef int32_t *ss
    cdef int32_t *ds
    cdef mm_vma_t dvma
    while va < end:
        ss = pmd_slot(e, src, va, False)
        if ss == NULL or not pmd_trans_huge(ss[0]):
            va += 1ULL << shift
            continue
        ds = pmd_slot(e, dst, va, True)
        if ds == NULL:
            return -1
        pte = pmd_leaf_table(e, ss[0])[0]
        if is_migration_entry(pte):
            if copy_hugetlb_migration_entry(e, ss, ds, leaves, pte, cow, src_flags, dst_flags) < 0:
                return -1
            va += 1ULL << shift
            continue
        if not (pte & PTE_PRESENT):
            # A marker: a uffd-wp one only into a child VMA registered for
            # WP (c56d1b62cce8, 5.19: never B14's copy), a poisoned one
            # always (copy_pte_marker, 6.6).
            if marker_bits(pte) != PTE_MARKER_UFFD_WP or dst_flags & VM_UFFD_WP:
                if hugetlb_install_marker(e, ds, leaves, pte) < 0:
                    return -1
            va += 1ULL << shift
            continue
        head = folio_of(e, <int64_t>pte_pfn(pte))
        if cow and e.fflags[head] & PG_ANON and e.pol.hugetlb_fork_copy_pinned \
                and src.flags & MMF_HAS_PINNED and folio_maybe_dma_pinned(e, head) \
                and ((not e.pol.anon_exclusive) or e.fflags[head] & PG_ANON_EXCLUSIVE):
            # A page for the child outside any reservation (avoid_reserve).
            memset(&dvma, 0, sizeof(mm_vma_t))
            new = alloc_hugetlb_folio(e, &dvma, h, 0, True)
            if new < 0:
                return -1
            for i in range(nr):
                if frame_copy(e, new + i, head + i) < 0:
                    put_page(e, new, 1)
                    return -1
            hugetlb_folio_set_flags(e, new, PG_ANON | (PG_ANON_EXCLUSIVE if e.pol.anon_exclusive else 0), 0)
            e.refcount[new] = <int32_t>leaves
            # hugetlb_install_folio(): the child's copy mapped writable and dirty.
            if hugetlb_install(e, dst, ds, leaves, pfn_pte(new) | PTE_PRESENT | PTE_YOUNG | PTE_DIRTY
                               | (PTE_WRITE if dst_flags & VM_WRITE else 0)
                               | (pte & PTE_UFFD_WP if dst_flags & VM_UFFD_WP else 0)) < 0:
                put_page(e, new, <int32_t>leaves)
                return -1
            entire_mapcount(e, new)[0] = <int32_t>leaves
            dst.hugetlb_usage += nr
            va += 1ULL << shift
            continue
        if cow:
            for i in range(leaves):
                if pmd_leaf_table(e, ss[i])[0] & PTE_WRITE:
                    wrprotected[0] += 1
            hugetlb_set_bits(e, ss, leaves, 0, PTE_WRITE)       # huge_ptep_set_wrprotect
            if e.fflags[head] & PG_ANON and e.pol.anon_exclusive:
                hugetlb_folio_set_flags(e, head, 0, PG_ANON_EXCLUSIVE)   # hugetlb_try_dup_anon_rmap
        pte = pmd_leaf_table(e, ss[0])[0]
        if hugetlb_install(e, dst, ds, leaves, pte_pfn(pte) << PTE_PFN_SHIFT | (pte & ~PTE_PFN_MASK)) < 0:
            return -1
        # The child's entries: the parent's bits, less uffd-wp for a child VMA without it.
        if not (dst_flags & VM_UFFD_WP):
            hugetlb_set_bits(e, ds, leaves, 0, PTE_UFFD_WP)
        get_page(e, head, <int32_t>leaves)
        entire_mapcount(e, head)[0] += <int32_t>leaves
        dst.hugetlb_usage += nr
        va += 1ULL << shift
    return 0


cdef int copy_hugetlb_migration_entry(engine_t *e, int32_t *ss, int32_t *ds, int64_t leaves, uint64_t pte,
                                       bint cow, uint64_t src_flags, uint64_t dst_flags) noexcept nogil:
    """copy_hugetlb_page_range() on a migration entry: in a COW mapping a writable or readable_exclusive entry becomes readable
    in the parent too (keeping uffd-wp only if the parent's VMA is
    registered for WP; soft-dirty is not carried), and the child gets the
    same entry, which holds no reference or mapping. For a child VMA
    without WP the uffd-wp bit must go (bc70fbf269fd, 5.19; before, hugetlb
    had no uffd-wp): from 83abe2fd5b3a (7.2; 6.12.103) with the swap-entry
    accessor. In between, B22: the present-pte accessor
    (huge_pte_clear_uffd_wp) clears x86's _PAGE_UFFD_WP, bit 10, which in
    a swap pte is bit 1 of the inverted offset: the entry names the page
    two pages further on (inside the same huge page, so page_vma_mapped_walk
    still finds it) and keeps its swp uffd-wp bit, which comes back as a
    uffd-wp bit on the child's page when the migration ends. -1: no table."""
    cdef uint64_t kind = swp_type_of(pte), bits = pte & (PTE_SOFT_DIRTY | PTE_UFFD_WP)
    cdef int64_t pfn = <int64_t>swp_offset(pte)
    if kind != SWP_MIGRATION_READ and cow:
        kind = SWP_MIGRATION_READ
        bits = pte & PTE_UFFD_WP if src_flags & VM_UFFD_WP else 0
        hugetlb_set_swp(e, ss, leaves, pfn, kind, bits)
    if not (dst_flags & VM_UFFD_WP):
        if e.pol.hugetlb_fork_swp_uffd_wp == 2:
            bits &= ~PTE_UFFD_WP
        elif e.pol.hugetlb_fork_swp_uffd_wp == 1:
            pfn |= 2                    # B22: the offset's bit 1, stored inverted, cleared
    if hugetlb_install_marker(e, ds, leaves, 0) < 0:
        return -1
    hugetlb_set_swp(e, ds, leaves, pfn, kind, bits)
    return 0


# ---- userfaultfd ------------------------------------------------------------

cdef int64_t hugetlb_wp_range(engine_t *e, mm_t *mm, uint64_t start, uint64_t end, bint protect,
                              uint64_t vmflags, int64_t *touched) noexcept nogil:
    """UFFDIO_WRITEPROTECT over a hugetlb VMA's huge-page-aligned range:
    hugetlb_change_protection() with MM_CP_UFFD_WP / _RESOLVE (5.19,
    60dfaad65aa9 with markers on none entries). Protecting makes a present
    entry uffd-wp and read-only and a none one a uffd-wp marker (tables
    allocated for it); unprotecting clears the bit, drops uffd-wp markers
    (a poison marker stays) and gives every present entry the VMA's
    protection: vm_get_page_prot(vm_flags) before 6.3 - writable in a shared
    writable mapping - then vm_page_prot, read-only in a private mapping and,
    with uffd-wp write-notify, in a shared one too (uffd_unprotect_writable;
    hugetlb has no try-change-writable upgrade). Returns the entries that
    lost write (to flush), or -1 if a table could not be allocated."""
    cdef int h = hugetlb_hstate_of_range(e, mm, start)
    cdef uint64_t sz = 1ULL << hstate_shift(h), va = start
    cdef int64_t leaves = hstate_leaves(h), k, i, lost = 0
    cdef int32_t *slot
    cdef uint64_t *t
    cdef uint64_t pte, npte, kind
    cdef bint writable = not protect and e.pol.uffd_unprotect_writable == 0 \
        and (vmflags & (VM_SHARED | VM_WRITE)) == (VM_SHARED | VM_WRITE)
    while va < end:
        slot = pmd_slot(e, mm, va, protect)
        if slot == NULL:
            if protect:
                return -1
            va += sz
            continue
        if slot[0] == 0:
            if protect and hugetlb_install_marker(e, slot, leaves, make_marker(PTE_MARKER_UFFD_WP)) < 0:
                return -1
        elif hugetlb_leaf_is_marker(e, slot[0]):
            if not protect and marker_bits(pmd_leaf_table(e, slot[0])[0]) == PTE_MARKER_UFFD_WP:
                hugetlb_clear_marker(e, slot, leaves)
        elif hugetlb_leaf_is_migration(e, slot[0]):
            # A migration entry: a writable one becomes readable (exclusive
            # for an anon page), and takes or loses the swp uffd-wp bit.
            pte = migration_entry_wrprotect(e, pmd_leaf_table(e, slot[0])[0])
            kind = swp_type_of(pte)
            hugetlb_set_swp(e, slot, leaves, swp_offset(pte), kind,
                            (pte & PTE_SOFT_DIRTY) | (PTE_UFFD_WP if protect else 0))
        else:
            touched[0] += 1
            for k in range(leaves):
                t = pmd_leaf_table(e, slot[k])
                pte = t[0]
                if protect:
                    npte = mkuffd_wp(pte)
                elif writable:
                    npte = (pte & ~PTE_UFFD_WP) | PTE_WRITE
                else:
                    npte = pte & ~(PTE_UFFD_WP | PTE_WRITE)
                lost += (pte & ~npte & PTE_WRITE) != 0
                for i in range(HPAGE_PMD_NR):
                    t[i] = (t[i] & ~(PTE_UFFD_WP | PTE_WRITE)) | (npte & (PTE_UFFD_WP | PTE_WRITE))
        va += sz
    return lost


cdef int hugetlb_mfill_atomic_pte(engine_t *e, mm_t *mm, mm_vma_t *vma, uint64_t haddr, int kind,
                                  const uint8_t *src, mm_t *src_mm, uint64_t src_addr,
                                  bint wp) noexcept nogil:
    """One huge page of UFFDIO_COPY / CONTINUE / POISON into a hugetlb VMA
    (mfill_atomic_hugetlb + hugetlb_mfill_atomic_pte; ZEROPAGE and alignment
    were refused by the caller): 0 or a negative errno.

    COPY: EEXIST over anything but none or a marker, or where a shared
    mapping's file already has the page; a page from the mapping's
    reservation (or the unreserved pool: else ENOMEM), filled from `src`
    bytes or from the pages mapped at src_addr in src_mm - into the file's
    cache for a shared mapping (EFAULT past EOF), anon for a private one.
    CONTINUE: the file's page (EFAULT if none), EEXIST unless the entry is
    none or a marker; read-only in a private mapping. POISON: a poisoned
    marker on a strictly none entry (EEXIST over a marker too; 6.6).
    Mapped young and dirty, writable as the VMA is; with MODE_WP uffd-wp
    and read-only."""
    cdef int h = vma_hstate(e, vma)
    cdef int shift = hstate_shift(h)
    cdef int64_t leaves = hstate_leaves(h), nr = hstate_pages(h), head, i, spfn
    cdef int32_t *slot = pmd_slot(e, mm, haddr, True)
    cdef mm_file_t *f = &e.files[vma.file]
    cdef uint64_t idx = vma_hugecache_offset(vma, haddr, shift)
    cdef uint64_t cidx = idx << (shift - MM_PAGE_SHIFT), entry
    cdef uint64_t *cs
    cdef uint64_t *sp
    cdef bint shared = (vma.flags & VM_SHARED) != 0
    if slot == NULL:
        return -CORE_ENOMEM
    if not shared:
        # __mcopy_atomic_hugetlb(): a private VMA gets its anon_vma first,
        # whatever the kind (6.9+ uffd_mfill_lock() did it already).
        anon_vma_prepare(e, mm, vma)
    if kind == FILL_POISON:
        if slot[0] != 0:
            return -CORE_EEXIST
        return -CORE_ENOMEM if hugetlb_install_marker(e, slot, leaves, make_marker(PTE_MARKER_POISONED)) < 0 else 0
    if kind == FILL_CONTINUE:
        cs = cache_slot(e, f, cidx, False)
        if cs == NULL or not (cs[0] & PTE_PRESENT):
            return -CORE_EFAULT
        if slot[0] != 0 and not hugetlb_leaf_is_marker(e, slot[0]):
            return -CORE_EEXIST
        head = <int64_t>pte_pfn(cs[0])
        get_page(e, head, <int32_t>leaves)
    else:
        if slot[0] != 0 and not hugetlb_leaf_is_marker(e, slot[0]):
            return -CORE_EEXIST
        cs = NULL
        if shared:
            cs = cache_slot(e, f, cidx, False)
            if cs != NULL and cs[0] & PTE_PRESENT:
                return -CORE_EEXIST     # hugetlbfs_pagecache_present
            if <int64_t>idx >= (f.size >> shift):
                return -CORE_EFAULT     # (the kernel finds it after allocating, and gives the page back)
            cs = cache_slot(e, f, cidx, True)
            if cs == NULL:
                return -CORE_ENOMEM
        if src == NULL:
            # copy_folio_from_user(): the caller faulted the source in.
            for i in range(nr):
                sp = pte_offset(e, src_mm, src_addr + (<uint64_t>i << MM_PAGE_SHIFT), False)
                if sp == NULL or not (sp[0] & PTE_PRESENT):
                    return -CORE_EFAULT
        head = alloc_hugetlb_folio(e, vma, h, idx, False)
        if head < 0:
            return -CORE_ENOMEM
        for i in range(nr):
            if src != NULL:
                if frame_write(e, head + i, 0, MM_PAGE_SIZE, src + (i << MM_PAGE_SHIFT)) < 0:
                    put_page(e, head, 1)
                    return -CORE_ENOMEM
            else:
                spfn = <int64_t>pte_pfn(pte_offset(e, src_mm, src_addr + (<uint64_t>i << MM_PAGE_SHIFT), False)[0])
                if frame_copy(e, head + i, spfn) < 0:
                    put_page(e, head, 1)
                    return -CORE_ENOMEM
        if shared:
            hugetlb_cache_insert(e, f, cs, head, cidx)
            get_page(e, head, <int32_t>leaves)
        else:
            hugetlb_folio_set_flags(e, head, PG_ANON | (PG_ANON_EXCLUSIVE if e.pol.anon_exclusive else 0), 0)
            e.refcount[head] = <int32_t>leaves
    entry = pfn_pte(head) | PTE_PRESENT | PTE_YOUNG | PTE_DIRTY
    if vma.flags & VM_WRITE and not wp and not (kind == FILL_CONTINUE and not shared):
        entry |= PTE_WRITE
    if wp:
        entry = mkuffd_wp(entry)
    if slot[0]:
        hugetlb_clear_marker(e, slot, leaves)
    if hugetlb_install(e, mm, slot, leaves, entry) < 0:
        put_page(e, head, <int32_t>leaves)
        return -CORE_ENOMEM
    entire_mapcount(e, head)[0] += <int32_t>leaves
    mm.hugetlb_usage += nr
    return 0


# ---- migration ----------------------------------------------------------------
#
# A hugetlb migration entry is a PMD_HUGE slot whose table holds, for each
# base page, a migration entry naming that page (as a present leaf names
# it): entry 0 stands for the kernel's one huge entry. Only
# unmap_and_move_huge_page() makes them, between its unmap and its
# remove_migration_ptes() (SP_HUGETLB_MIGRATION_UNMAPPED).

cdef inline bint hugetlb_leaf_is_migration(engine_t *e, int32_t ent) noexcept nogil:
    return pmd_trans_huge(ent) and is_migration_entry(pmd_leaf_table(e, ent)[0])


cdef void hugetlb_set_swp(engine_t *e, int32_t *slot, int64_t leaves, int64_t pfn, uint64_t kind,
                          uint64_t bits) noexcept nogil:
    # The leaves' tables become migration entries of kind for the page at
    # pfn (its k * 512 + i-th base page in table k, entry i), plus bits.
    cdef int64_t k, i
    cdef uint64_t *t
    for k in range(leaves):
        t = pmd_leaf_table(e, slot[k])
        for i in range(HPAGE_PMD_NR):
            t[i] = make_migration_entry(pfn + k * HPAGE_PMD_NR + i, kind) | bits


cdef int hugetlb_unmap_for_migration(engine_t *e, mm_t *mm, mm_vma_t *vma, uint64_t haddr,
                                     int32_t *slot, int64_t head, int h) noexcept nogil:
    """try_to_migrate_one() on a hugetlb mapping (6.12): 1 when it became a
    migration entry, 0 when an exclusive anon page that may be pinned
    stays mapped (hugetlb_try_share_anon_rmap). The entry is writable if
    the pte was, readable_exclusive for an exclusive anon page (5.19+),
    else readable; soft-dirty and uffd-wp ride along."""
    cdef int64_t leaves = hstate_leaves(h), k
    cdef uint64_t pte = pmd_leaf_table(e, slot[0])[0], kind
    cdef bint excl = e.pol.anon_exclusive != 0 and \
        (e.fflags[head] & (PG_ANON | PG_ANON_EXCLUSIVE)) == (PG_ANON | PG_ANON_EXCLUSIVE)
    if excl:
        if folio_maybe_dma_pinned(e, head):
            return 0
        hugetlb_folio_set_flags(e, head, 0, PG_ANON_EXCLUSIVE)
    tlb_flush_range(e, mm.id, haddr, haddr + (1ULL << hstate_shift(h)))    # huge_ptep_clear_flush
    for k in range(leaves):
        if pmd_leaf_table(e, slot[k])[0] & PTE_DIRTY:
            e.fflags[head] |= PG_DIRTY
    if pte & PTE_WRITE:
        kind = SWP_MIGRATION_WRITE
    elif excl:
        kind = SWP_MIGRATION_RX
    else:
        kind = SWP_MIGRATION_READ
    # x86's huge_pte_mkdirty() sets soft-dirty with dirty, and a hugetlb pte
    # is only ever made dirty that way (a writable one is created dirty).
    hugetlb_set_swp(e, slot, leaves, head, kind, (pte & (PTE_SOFT_DIRTY | PTE_UFFD_WP))
                    | (PTE_SOFT_DIRTY if pte & PTE_DIRTY else 0))
    entire_mapcount(e, head)[0] -= <int32_t>leaves          # hugetlb_remove_rmap
    mm.hugetlb_usage -= hstate_pages(h)
    put_page(e, head, <int32_t>leaves)
    return 1


cdef void hugetlb_remove_migration_pte(engine_t *e, mm_t *mm, mm_vma_t *vma, int32_t *slot,
                                       int64_t target, int h) noexcept nogil:
    """remove_migration_pte() for a hugetlb entry: the page is `target`
    (the page the VMA maps there, whatever pfn the entry names), with
    vm_page_prot, soft-dirty from the entry, dirty from the folio, write
    from a writable entry, else uffd-wp from the entry's bit; an anon
    page mapped from an entry that was not merely readable is exclusive."""
    cdef uint64_t ent = pmd_leaf_table(e, slot[0])[0], kind = swp_type_of(ent), pte
    cdef int64_t leaves = hstate_leaves(h)
    pte = pfn_pte(target) | PTE_PRESENT | PTE_YOUNG | vma_prot_bits(vma.flags)
    if vm_page_prot_writable(e, vma.flags):
        pte |= PTE_WRITE
    if ent & PTE_SOFT_DIRTY:
        pte |= PTE_SOFT_DIRTY
    if e.fflags[target] & PG_DIRTY:
        pte |= PTE_DIRTY
    if kind == SWP_MIGRATION_WRITE:
        if vma.flags & VM_WRITE:
            pte |= PTE_WRITE
    elif ent & PTE_UFFD_WP:
        pte |= PTE_UFFD_WP
        if e.pol.uffd_wp_writenotify:
            pte &= ~PTE_WRITE
    if e.fflags[target] & PG_ANON and e.pol.anon_exclusive and kind != SWP_MIGRATION_READ:
        hugetlb_folio_set_flags(e, target, PG_ANON_EXCLUSIVE, 0)
    hugetlb_set_entries(e, slot, leaves, pte)
    entire_mapcount(e, target)[0] += <int32_t>leaves
    e.refcount[target] += <int32_t>leaves
    mm.hugetlb_usage += hstate_pages(h)


cdef int hugetlb_rmap_walk(engine_t *e, int64_t head, int h, int32_t fid, uint64_t idx, bint migration,
                           int64_t target, int32_t caller, bint *local) noexcept nogil:
    """rmap_walk() of a hugetlb folio: the VMAs of its hugetlbfs file (fid)
    that cover its huge page idx - a shared page's cache index, or for a
    private page the offset in the file of the mapping it was found in,
    which fork and mremap keep. With migration False, a present mapping of
    `head` there is unmapped for migration (the count of those left mapped
    is returned); with migration True, a migration entry naming a page of
    `head` (page_vma_mapped_walk checks the pfn is inside the folio) is
    replaced by a mapping of `target`."""
    cdef int32_t mi, vi
    cdef mm_t *m
    cdef mm_vma_t *v
    cdef int32_t *slot
    cdef int shift = hstate_shift(h)
    cdef uint64_t va, v0
    cdef uint64_t *t
    cdef int64_t pfn, nr = hstate_pages(h), left = 0
    for mi in range(e.nmm):
        m = &e.mms[mi]
        if not m.alive:
            continue
        for vi in range(m.nvma):
            v = &m.vmas[vi]
            if not (v.flags & VM_HUGETLB) or v.file != fid:
                continue
            v0 = v.pgoff >> (shift - MM_PAGE_SHIFT)
            if idx < v0 or idx >= v0 + ((v.end - v.start) >> shift):
                continue
            va = v.start + ((idx - v0) << shift)
            slot = pmd_slot(e, m, va, False)
            if slot == NULL or not pmd_trans_huge(slot[0]):
                continue
            t = pmd_leaf_table(e, slot[0])
            if migration:
                if is_migration_entry(t[0]):
                    pfn = <int64_t>swp_offset(t[0])
                    if head <= pfn < head + nr:
                        hugetlb_remove_migration_pte(e, m, v, slot, target, h)
            elif t[0] & PTE_PRESENT and <int64_t>pte_pfn(t[0]) == head:
                if mi != caller:
                    local[0] = False
                if not hugetlb_unmap_for_migration(e, m, v, va, slot, head, h):
                    left += 1
    return left


cdef int hugetlb_migrate_folio(engine_t *e, mig_page_t *pg, int32_t node, int32_t caller) noexcept nogil:
    """unmap_and_move_huge_page() (6.12) of the isolated hugetlb folio
    pg.old to `node` (< 0: any): the new page is a free pool page of that
    node nobody reserved (alloc_hugetlb_folio_nodemask with
    __GFP_THISNODE); without one, -ENOMEM (the kernel then tries a
    temporary page from the buddy allocator, alloc_migrate_hugetlb_folio:
    not modelled). Every mapping becomes a migration entry; a folio still
    mapped (a maybe-pinned exclusive page) or holding other references
    (GUP) is -EAGAIN and mapped back. Sets pg.rc; drops the isolation
    reference."""
    cdef int64_t old = pg.old, new, nr
    cdef int h = hugetlb_hstate_of(e, old)
    cdef int32_t cache_refs
    cdef bint local = True
    cdef int64_t left
    cdef int32_t fid, vi
    cdef uint64_t idx
    cdef int shift = hstate_shift(h)
    nr = hstate_pages(h)
    # Where the rmap walk looks: the file and huge page index of the page.
    if e.fflags[old] & PG_FILE:
        fid, idx = e.mapping[old], e.index[old] >> (shift - MM_PAGE_SHIFT)
    else:
        vi = find_vma(&e.mms[pg.mm], pg.va)
        if vi < 0:
            fid, idx = -1, 0
        else:
            fid = e.mms[pg.mm].vmas[vi].file
            idx = vma_hugecache_offset(&e.mms[pg.mm].vmas[vi], pg.va & ~((1ULL << shift) - 1), shift)
    if e.refcount[old] == 1:
        pg.rc = 0                       # freed under us: done
        e.fflags[old] &= ~PG_ISOLATED
        put_page(e, old, 1)
        return 0
    new = -1
    if e.h_free[h] - e.h_resv[h] > 0:
        new = hugetlb_folio_take_on(e, h, 0, node if node >= 0 else node_of(e, old), node >= 0)
    if new < 0 and h == MM_HSTATE_2M:
        # alloc_migrate_hugetlb_folio(): a fresh page made for the move,
        # beyond the pool and its overcommit, freed to the buddy allocator
        # when released (HPG_temporary)
        new = hugetlb_page_new(e, node if node >= 0 else node_of(e, old))
        if new >= 0:
            e.hblk[new >> HPAGE_PMD_ORDER] = HBLK_TEMP
            hugetlb_folio_init(e, new, h, 0)
    if new < 0:
        pg.rc = -CORE_ENOMEM
        e.fflags[old] &= ~PG_ISOLATED
        put_page(e, old, 1)
        return -CORE_ENOMEM
    pg.new = new
    left = hugetlb_rmap_walk(e, old, h, fid, idx, False, -1, caller, &local)
    if local and entire_mapcount(e, old)[0] == 0:
        # Between unmap and move, with no mmap_lock held: fork may copy the
        # entries (the rmap walk below finds them), munmap may zap them.
        sched_point(e, SP_HUGETLB_MIGRATION_UNMAPPED, caller, pg.va, <uint64_t>node)
    # move_to_new_folio(): only the isolation reference and the cache's.
    cache_refs = 1 if e.fflags[old] & PG_FILE else 0
    if left or entire_mapcount(e, old)[0] != 0 or e.refcount[old] != 1 + cache_refs:
        pg.rc = -CORE_EAGAIN
    else:
        pg.rc = 0
        migrate_folio_state(e, old, new, nr, PG_ANON | PG_DIRTY | PG_UPTODATE | PG_FILE | PG_BYTES)
        if e.hblk[new >> HPAGE_PMD_ORDER] == HBLK_TEMP:
            # move_hugetlb_state(): the old page takes the temporary mark
            # (freed to the buddy allocator next), and a surplus page of the
            # old node becomes one of the new
            e.hblk[new >> HPAGE_PMD_ORDER] = HBLK_2M
            e.hblk[old >> HPAGE_PMD_ORDER] = HBLK_TEMP
            if e.h_node_surplus[h][node_of(e, old)]:
                e.h_node_surplus[h][node_of(e, old)] -= 1
                e.h_node_surplus[h][node_of(e, new)] += 1
    hugetlb_rmap_walk(e, old, h, fid, idx, True, new if pg.rc == 0 else old, caller, &local)
    put_page(e, new, 1)                 # the allocation's reference (a failed one: back to the pool)
    if pg.rc != 0:
        pg.new = -1
    e.fflags[old] &= ~PG_ISOLATED
    put_page(e, old, 1)                 # the isolation reference (frees a migrated page)
    return 0
