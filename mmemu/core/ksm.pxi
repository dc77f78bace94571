# KSM (mm/ksm.c): ksmd's scan, the stable and unstable trees, merging, and
# break_ksm for MADV_UNMERGEABLE. semantics.md section 13.
#
# What is modelled: ksm_do_scan in scan order (mm id, then address; the
# kernel's order is its mm_slot list), one rmap_item per scanned page with
# its checksum (a page joins the unstable tree only once its checksum held
# over a full scan), stable pages shared up to max_page_sharing mappings,
# write_protect_page / replace_page with their reference checks, the era's
# order of the checksum gate (d58a361b0350, 6.11) and its break_ksm fault
# (6cce3314b928, 6.2), the pages_shared / pages_sharing / full_scans /
# pages_scanned counters as the kernel keeps them (lazily, at each visit).
#
# What is not: use_zero_pages (off by default), smart_scan's skipping (6.7;
# as with smart_scan=0), NUMA (merge_across_nodes=1), the time-based pruning
# of stable node chains, KSM pages in swap. The trees are hash tables: the
# unstable one is keyed by the content at insertion, so a tree page changed
# since is never matched (the kernel's rbtree may still find a match past
# it); exact comparison always decides.

cdef extern from *:
    """
    /* A load hint: never faults, changes no result. An asm statement on
       x86: gcc 12 -O3 emitted no instruction for __builtin_prefetch in the
       inlined scan loop (seen in the object code). */
    static inline void ksm_prefetch_line(const void *p) {
    #if defined(__x86_64__) || defined(__i386__)
        __asm__ volatile("prefetcht0 %0" : : "m"(*(const char *)p));
    #elif defined(__GNUC__)
        __builtin_prefetch(p);
    #endif
    }
    """
    void ksm_prefetch_line(const void *p) nogil

cdef enum:
    KSM_MAX_PAGE_SHARING = 256      # /sys/kernel/mm/ksm/max_page_sharing default (4.13+)
    KSM_PREFETCH = 16               # pages ahead whose tree bucket the scan prefetches
    KSM_PREFETCH_SLOTS = 1 << 15    # tables from this many slots (256 KiB) on miss the cache
    KSM_PREFETCH_PAGES = 1 << 14    # prefetch while the last scan saw this many pages off the stable tree
    KSM_POPULATE_BYTES = 4 << 20    # unstable tables from this size on are faulted in by chunks
    KSM_CHUNK_SHIFT = 15            # of 2^15 slots (256 KiB): ksm_unstable_touch()
    KSM_MM_SHIFT = 48               # rmap key: mm id << 48 | address


# One rmap_item: a scanned page of one mm at one address (struct ksm_rmap_item).
ctypedef struct ksm_item_t:
    uint64_t key                    # mm id << KSM_MM_SHIFT | address
    uint64_t checksum               # content hash at the last visit; 0: never seen
    int64_t serial                  # the mm's serial (a reused mm id is a new mm)
    int32_t node                    # stable node + 1 while in the stable tree, else 0
    int32_t pad

# One stable node: a KSM page and the number of rmap_items on it.
ctypedef struct ksm_node_t:
    int64_t pfn                     # -1: stale (the page was freed or reused)
    uint64_t hash
    int32_t nitems                  # rmap_hlist_len
    int32_t older                   # the next older dup of the same contents + 1 (a stable node chain)

# One unstable tree entry: this scan's item of a page waiting for an
# identical one. 8 bytes, as the whole table is fresh memory the host faults
# in (16 MiB for 10^6 pages): the content hash at insertion is the item's
# checksum (which its scan does not change again), the entry keeps its top
# bits to pass over other contents without reading their items.
ctypedef struct ksm_unstable_t:
    uint32_t item                   # index into items (ksm_item_room keeps them below 2^32)
    uint16_t tag                    # the item's checksum >> 48
    uint16_t gen                    # valid while == ksm_unstable_gen(seqnr)

# Not state: where a run of full dups along a chain ends (ksm_chain_skip).
ctypedef struct ksm_chain_skip_t:
    int64_t epoch                   # valid while == ksm_state_t.chain_epoch + 1
    int32_t past                    # the first dup after the run + 1; 0: the chain's end
    int32_t pad

ctypedef struct ksm_state_t:
    # The rmap_items, in one array: this scan's at its start (items[0, ncur),
    # appended in scan order), the last full scan's not met yet at its end
    # (items[prev_pos, prev_end), by key). An item met again is copied down
    # (mostly onto itself), so a scan writes memory the last one faulted in.
    ksm_item_t *items
    int64_t items_cap, ncur, prev_pos, prev_end
    int64_t nprev                   # items the last full scan left (sizes this one's tables)
    ksm_node_t *nodes
    int64_t nnodes, nodes_cap
    int32_t *stable                 # open addressing by content hash: the newest node of each
                                    # contents + 1 (the head of its chain of dups); -1 deleted
    int64_t stable_cap, stable_used
    int64_t *pfn_keys               # pfn -> the newest node made for it (open addressing)
    int32_t *pfn_nodes
    int64_t pfn_cap, pfn_used
    ksm_unstable_t *unstable
    int64_t unstable_cap, unstable_used
    # Not state: per chunk of a large unstable table, whether the host has
    # faulted it in yet (NULL: all of it). A chunk no probe reached is all
    # zeros, so holds no entry.
    uint8_t *unstable_ready
    uint16_t unstable_gen           # not state: ksm_unstable_gen(seqnr), set as ksm_do_scan starts
    int32_t mm                      # cursor: mm id and address; mm < 0: a scan starts
    uint64_t va
    int64_t seqnr                   # full scans done (ksm_scan.seqnr)
    int64_t pages_shared, pages_sharing, pages_scanned
    int64_t sharing_added           # pages_sharing increments (ksm_scan's result)
    int32_t max_page_sharing
    int32_t failed                  # the host ran out of memory
    # Not state (get_state leaves it out; empty after set_state): a shortcut
    # past unstable slots whose item has been merged this scan, which a
    # search skips anyway. Many identical pages leave one long probe run of
    # such slots, walked by each search for those contents (issue 13).
    int32_t *unstable_skip          # slot -> a later slot + 1 (all between merged); 0: not merged
    int64_t unstable_skip_cap       # == unstable_cap when allocated
    int64_t *skip_marked            # the slots with unstable_skip != 0, to clear them
    int64_t nskip_marked, skip_marked_cap
    # Not state either: per stable node, the end of the run of full dups
    # (rmap_hlist_len >= max_page_sharing) starting there, so that a search
    # of a long chain of full dups is not a walk of all of them. A run stays
    # one while no dup in it drops below full and no chain link changes:
    # chain_epoch moves when either happens.
    ksm_chain_skip_t *chain_skip
    int64_t chain_skip_cap
    int64_t chain_epoch


cdef inline uint64_t ksm_mix(uint64_t x) noexcept nogil:
    # splitmix64's finaliser: a fixed, well-spread 64-bit permutation.
    x ^= x >> 30
    x *= 0xBF58476D1CE4E5B9ULL
    x ^= x >> 27
    x *= 0x94D049BB133111EBULL
    x ^= x >> 31
    return x


cdef inline uint64_t ksm_version_hash(uint64_t version) noexcept nogil:
    """ksm_content_hash() of a page that is not byte-exact."""
    cdef uint64_t v = ksm_mix(version ^ 0x6A09E667F3BCC908ULL)
    return v if v else 1


cdef uint64_t ksm_content_hash(engine_t *e, int64_t pfn) noexcept nogil:
    """calc_checksum(): a hash of the page's contents, never 0 (0 means "no
    checksum yet" in an rmap_item). A byte-exact page that repeats one 8-byte
    pattern hashes as the content version it equals."""
    cdef uint64_t v, h0, h1, h2, h3
    cdef const uint64_t *w
    cdef int i
    if not (e.fflags[pfn] & PG_BYTES):
        return ksm_version_hash(e.version[pfn])
    w = <const uint64_t *>bytes_ptr(e, <int64_t>e.version[pfn])
    if page_is_pattern(<const uint8_t *>w, &v):
        v = ksm_mix(v ^ 0x6A09E667F3BCC908ULL)
        return v if v else 1
    h0, h1, h2, h3 = 1, 2, 3, 4
    for i in range(0, MM_PTRS, 4):
        h0 = (h0 ^ w[i]) * 0x9E3779B97F4A7C15ULL
        h1 = (h1 ^ w[i + 1]) * 0xC2B2AE3D27D4EB4FULL
        h2 = (h2 ^ w[i + 2]) * 0x165667B19E3779F9ULL
        h3 = (h3 ^ w[i + 3]) * 0x27D4EB2F165667C5ULL
    v = ksm_mix(h0 ^ ksm_mix(h1 ^ ksm_mix(h2 ^ ksm_mix(h3))))
    return v if v else 1


cdef bint ksm_pages_identical(engine_t *e, int64_t a, int64_t b) noexcept nogil:
    """pages_identical(): exact comparison of two frames' contents."""
    cdef bint ba = (e.fflags[a] & PG_BYTES) != 0, bb = (e.fflags[b] & PG_BYTES) != 0
    cdef const uint64_t *w
    cdef uint64_t v
    cdef int i
    if not ba and not bb:
        return e.version[a] == e.version[b]
    if ba and bb:
        return memcmp(bytes_ptr(e, <int64_t>e.version[a]), bytes_ptr(e, <int64_t>e.version[b]),
                      MM_PAGE_SIZE) == 0
    if ba:
        a, b = b, a                 # a: the pattern page, b: the byte-exact one
    v = e.version[a]
    w = <const uint64_t *>bytes_ptr(e, <int64_t>e.version[b])
    for i in range(MM_PTRS):
        if w[i] != v:               # pattern_fill: each word is v, little-endian
            return False
    return True


# ---- tables -----------------------------------------------------------------

cdef void ksm_host_populate(void *p, size_t n) noexcept nogil:
    """Fault in a part of a table the scan is about to write, with one call:
    a host fault per 4 KiB (two, when a probe read maps the zero page first)
    cost about as much as the scan's own work (more in a guest). The pages
    holding [p, p + n) are mapped, whatever else they hold, and the call
    changes no byte. Not MADV_HUGEPAGE: in a guest whose memory is backed on
    first touch, fresh 2 MiB pages measured slower and far more variable. A
    host before 5.14 says EINVAL and the pages fault in on use."""
    cdef uintptr_t lo = <uintptr_t>p & ~<uintptr_t>(MM_PAGE_SIZE - 1)
    cdef uintptr_t hi = (<uintptr_t>p + n + MM_PAGE_SIZE - 1) & ~<uintptr_t>(MM_PAGE_SIZE - 1)
    if n:
        madvise(<void *>lo, hi - lo, HOST_MADV_POPULATE_WRITE)


# Growth of the tables: array_grow (core/array.pxi).


cdef inline bint ksm_node_valid(engine_t *e, ksm_state_t *k, int32_t n) noexcept nogil:
    cdef int64_t pfn = k.nodes[n].pfn
    return pfn > 0 and (e.fflags[pfn] & (PG_USED | PG_KSM)) == (PG_USED | PG_KSM)


cdef int32_t ksm_pfn_node(engine_t *e, ksm_state_t *k, int64_t pfn) noexcept nogil:
    """page_stable_node(): the node of a KSM page, -1 if none."""
    cdef int64_t i
    if not (e.fflags[pfn] & PG_KSM) or k.pfn_cap == 0:
        return -1
    i = <int64_t>(ksm_mix(<uint64_t>pfn) & <uint64_t>(k.pfn_cap - 1))
    while k.pfn_keys[i] != 0:
        if k.pfn_keys[i] == pfn + 1:
            return k.pfn_nodes[i] if k.nodes[k.pfn_nodes[i]].pfn == pfn else -1
        i = (i + 1) & (k.pfn_cap - 1)
    return -1


cdef void ksm_pfn_forget(ksm_state_t *k, int64_t pfn) noexcept nogil:
    """The node an earlier KSM page in this frame had is stale from now on."""
    cdef int64_t i
    if k.pfn_cap == 0:
        return
    i = <int64_t>(ksm_mix(<uint64_t>pfn) & <uint64_t>(k.pfn_cap - 1))
    while k.pfn_keys[i] != 0:
        if k.pfn_keys[i] == pfn + 1:
            if k.nodes[k.pfn_nodes[i]].pfn == pfn:
                k.nodes[k.pfn_nodes[i]].pfn = -1
            return
        i = (i + 1) & (k.pfn_cap - 1)


cdef int ksm_pfn_set(ksm_state_t *k, int64_t pfn, int32_t node) noexcept nogil:
    cdef int64_t i, cap, j
    cdef int64_t *keys
    cdef int32_t *vals
    if (k.pfn_used + 1) * 2 > k.pfn_cap:
        cap = k.pfn_cap * 2 if k.pfn_cap else 1024
        keys = <int64_t *>calloc(cap, sizeof(int64_t))
        vals = <int32_t *>calloc(cap, sizeof(int32_t))
        if keys == NULL or vals == NULL:
            free(keys)
            free(vals)
            return -1
        for j in range(k.pfn_cap):
            if k.pfn_keys[j]:
                i = <int64_t>(ksm_mix(<uint64_t>(k.pfn_keys[j] - 1)) & <uint64_t>(cap - 1))
                while keys[i] != 0:
                    i = (i + 1) & (cap - 1)
                keys[i], vals[i] = k.pfn_keys[j], k.pfn_nodes[j]
        free(k.pfn_keys)
        free(k.pfn_nodes)
        k.pfn_keys, k.pfn_nodes, k.pfn_cap = keys, vals, cap
    i = <int64_t>(ksm_mix(<uint64_t>pfn) & <uint64_t>(k.pfn_cap - 1))
    while k.pfn_keys[i] != 0 and k.pfn_keys[i] != pfn + 1:
        i = (i + 1) & (k.pfn_cap - 1)
    if k.pfn_keys[i] == 0:
        k.pfn_used += 1
        k.pfn_keys[i] = pfn + 1
    k.pfn_nodes[i] = node
    return 0


cdef int ksm_stable_rehash(engine_t *e, ksm_state_t *k, int64_t cap) noexcept nogil:
    cdef int32_t *t = <int32_t *>calloc(cap, sizeof(int32_t))
    cdef int64_t j, i
    cdef int32_t n
    if t == NULL:
        return -1
    k.stable_used = 0
    for j in range(k.stable_cap):
        n = k.stable[j] - 1
        if n < 0:
            continue
        n = ksm_chain_valid(e, k, n)
        if n < 0:
            continue                # stale chains leave the tree (as ksm_get_folio prunes them)
        i = <int64_t>(k.nodes[n].hash & <uint64_t>(cap - 1))
        while t[i] != 0:
            i = (i + 1) & (cap - 1)
        t[i] = n + 1
        k.stable_used += 1
    free(k.stable)
    k.stable, k.stable_cap = t, cap
    k.chain_epoch += 1
    return 0


cdef int32_t ksm_stable_insert(engine_t *e, ksm_state_t *k, int64_t kpfn, uint64_t hash) noexcept nogil:
    """stable_tree_insert(): a node for a new KSM page (a chain dup when an
    identical one is full); -1 on host OOM."""
    cdef int32_t n, h
    cdef int64_t i
    if (k.stable_used + 1) * 2 > k.stable_cap:
        if ksm_stable_rehash(e, k, k.stable_cap * 2 if k.stable_cap else 1024) < 0:
            return -1
    if array_grow(<void **>&k.nodes, &k.nodes_cap, k.nnodes + 1, sizeof(ksm_node_t), 256, False) < 0:
        return -1
    n = <int32_t>k.nnodes
    if ksm_pfn_set(k, kpfn, n) < 0:
        return -1
    k.nnodes += 1
    k.nodes[n].pfn = kpfn
    k.nodes[n].hash = hash
    k.nodes[n].nitems = 0
    k.nodes[n].older = 0
    i = <int64_t>(hash & <uint64_t>(k.stable_cap - 1))
    while k.stable[i] != 0:
        h = k.stable[i] - 1
        if h >= 0 and k.nodes[h].hash == hash and ksm_chain_valid(e, k, h) >= 0 \
                and ksm_pages_identical(e, kpfn, k.nodes[ksm_chain_valid(e, k, h)].pfn):
            k.nodes[n].older = h + 1        # a dup: the chain's new head
            k.stable[i] = n + 1
            return n
        i = (i + 1) & (k.stable_cap - 1)
    i = <int64_t>(hash & <uint64_t>(k.stable_cap - 1))
    while k.stable[i] > 0:
        i = (i + 1) & (k.stable_cap - 1)
    k.stable[i] = n + 1
    k.stable_used += 1
    return n


cdef int32_t ksm_chain_valid(engine_t *e, ksm_state_t *k, int32_t n) noexcept nogil:
    """The newest live node of the chain starting at n, -1 if none; stale
    dups are unlinked on the way (ksm_get_folio prunes them)."""
    cdef int32_t prev = -1
    while n >= 0:
        if ksm_node_valid(e, k, n):
            return n
        if prev >= 0:
            k.nodes[prev].older = k.nodes[n].older
            k.chain_epoch += 1
        prev = n
        n = k.nodes[n].older - 1
    return -1


cdef int32_t ksm_chain_skip(ksm_state_t *k, int32_t n) noexcept nogil:
    """From a full dup n: the first dup after the run of full dups that
    starts at n, -1 at the chain's end. The runs found are remembered (path
    compression), so each search of a chain whose older dups are all full
    costs about one step. Only skips what the walk would skip anyway."""
    cdef int32_t r = n, m
    cdef int64_t valid = k.chain_epoch + 1
    if array_grow(<void **>&k.chain_skip, &k.chain_skip_cap, k.nnodes, sizeof(ksm_chain_skip_t),
                  256, True) < 0:
        return k.nodes[n].older - 1 # no room for the shortcut: one step
    while r >= 0 and k.nodes[r].nitems >= k.max_page_sharing:
        if k.chain_skip[r].epoch == valid:
            r = k.chain_skip[r].past - 1
        else:
            r = k.nodes[r].older - 1
    while n >= 0 and n != r and k.nodes[n].nitems >= k.max_page_sharing:
        if k.chain_skip[n].epoch == valid:
            m = k.chain_skip[n].past - 1
        else:
            m = k.nodes[n].older - 1
        k.chain_skip[n].epoch = valid
        k.chain_skip[n].past = r + 1
        n = m
    return r


cdef int32_t ksm_stable_search(engine_t *e, ksm_state_t *k, int64_t pfn, uint64_t hash) noexcept nogil:
    """stable_tree_search() for a page that is not KSM: the KSM page with the
    same contents that may take another mapping (0 < rmap_hlist_len <
    max_page_sharing), the newest such dup of its chain first, as an
    unpruned chain's hlist gives them. -1: none."""
    cdef int64_t i
    cdef int32_t n, head
    if k.stable_cap == 0:
        return -1
    i = <int64_t>(hash & <uint64_t>(k.stable_cap - 1))
    while k.stable[i] != 0:
        n = k.stable[i] - 1
        if n >= 0 and k.nodes[n].hash == hash:
            head = ksm_chain_valid(e, k, n)
            if head < 0:
                k.stable[i] = -1    # the whole chain is stale: pruned on the way
            elif ksm_pages_identical(e, pfn, k.nodes[head].pfn):
                n = head
                while n >= 0:
                    if 0 < k.nodes[n].nitems < k.max_page_sharing and ksm_node_valid(e, k, n):
                        return n
                    if k.nodes[n].nitems >= k.max_page_sharing:
                        n = ksm_chain_skip(k, n)
                    else:
                        n = k.nodes[n].older - 1
                return -1
        i = (i + 1) & (k.stable_cap - 1)
    return -1


cdef void ksm_skip_reset(ksm_state_t *k) noexcept nogil:
    """Forget the merged-slot shortcuts: at a scan's end, when the table is
    rehashed, and when an exiting mm's items leave the stable tree (an item
    of the unstable tree then counts as unmerged again)."""
    cdef int64_t j
    if k.unstable_skip_cap != k.unstable_cap:
        free(k.unstable_skip)
        k.unstable_skip, k.unstable_skip_cap = NULL, 0
    elif k.unstable_skip != NULL:
        for j in range(k.nskip_marked):
            k.unstable_skip[k.skip_marked[j]] = 0
    k.nskip_marked = 0


cdef void ksm_skip_mark(ksm_state_t *k, int64_t slot) noexcept nogil:
    """The item in this unstable slot has been merged: searches may jump it."""
    if k.unstable_cap > 0x7FFFFFFF:
        return                      # slots past int32_t: no shortcut
    if k.unstable_skip == NULL or k.unstable_skip_cap != k.unstable_cap:
        ksm_skip_reset(k)
        k.unstable_skip = <int32_t *>calloc(k.unstable_cap, sizeof(int32_t))
        if k.unstable_skip == NULL:
            return                  # only a shortcut: searches walk the slots instead
        k.unstable_skip_cap = k.unstable_cap
    if array_grow(<void **>&k.skip_marked, &k.skip_marked_cap, k.nskip_marked + 1, sizeof(int64_t),
                  256, False) < 0:
        return
    k.skip_marked[k.nskip_marked] = slot
    k.nskip_marked += 1
    k.unstable_skip[slot] = <int32_t>(((slot + 1) & (k.unstable_cap - 1)) + 1)


cdef int64_t ksm_skip_find(ksm_state_t *k, int64_t i) noexcept nogil:
    """The first slot from i on that is not marked merged (union-find with
    path compression; an empty slot is never marked, so it ends)."""
    cdef int64_t r = i, nxt
    while k.unstable_skip[r]:
        r = k.unstable_skip[r] - 1
    while k.unstable_skip[i] and k.unstable_skip[i] - 1 != r:
        nxt = k.unstable_skip[i] - 1
        k.unstable_skip[i] = <int32_t>(r + 1)
        i = nxt
    return r


cdef inline uint16_t ksm_unstable_gen(int64_t seqnr) noexcept nogil:
    """The generation of unstable entries made in full scan seqnr: 1..65535
    (a zeroed slot is none); the table is cleared when it comes round again."""
    return <uint16_t>(seqnr % 0xFFFF + 1)


cdef inline void ksm_unstable_touch(ksm_state_t *k, int64_t i) noexcept nogil:
    """Before slot i is read: its chunk faulted in, if no probe reached it yet."""
    cdef int64_t c = i >> KSM_CHUNK_SHIFT
    if k.unstable_ready != NULL and not k.unstable_ready[c]:
        k.unstable_ready[c] = 1
        ksm_host_populate(k.unstable + (c << KSM_CHUNK_SHIFT), sizeof(ksm_unstable_t) << KSM_CHUNK_SHIFT)


cdef int ksm_unstable_room(ksm_state_t *k, int64_t want=1) noexcept nogil:
    """Room for `want` more unstable entries at load <= 1/2."""
    cdef ksm_unstable_t *t
    cdef int64_t cap, j, i
    cdef uint16_t gen = k.unstable_gen
    cdef uint8_t *ready = NULL
    if (k.unstable_used + want) * 2 <= k.unstable_cap:
        return 0
    cap = k.unstable_cap if k.unstable_cap else 1024
    while (k.unstable_used + want) * 2 > cap:
        cap *= 2
    t = <ksm_unstable_t *>calloc(cap, sizeof(ksm_unstable_t))
    if t == NULL:
        return -1
    # A large table fills chunk by chunk as probes reach it (a scan of
    # pages that merge may put a handful of entries in room for 10^6), or
    # at once if entries move in now, at random.
    if cap * sizeof(ksm_unstable_t) >= KSM_POPULATE_BYTES:
        if k.unstable_used:
            ksm_host_populate(t, cap * sizeof(ksm_unstable_t))
        else:
            ready = <uint8_t *>calloc(cap >> KSM_CHUNK_SHIFT, 1)
            if ready == NULL:
                free(t)
                return -1
    for j in range(k.unstable_cap):
        if k.unstable_ready != NULL and not k.unstable_ready[j >> KSM_CHUNK_SHIFT]:
            continue                # never reached: no entry (and not worth faulting in to read)
        if k.unstable[j].gen == gen:
            i = <int64_t>(k.items[k.unstable[j].item].checksum & <uint64_t>(cap - 1))
            while t[i].gen == gen:
                i = (i + 1) & (cap - 1)
            t[i] = k.unstable[j]
    free(k.unstable)
    free(k.unstable_ready)
    k.unstable, k.unstable_cap, k.unstable_ready = t, cap, ready
    ksm_skip_reset(k)
    return 0


# ---- rmap_items -------------------------------------------------------------

cdef void ksm_item_unlink(ksm_state_t *k, ksm_item_t *it) noexcept nogil:
    """remove_rmap_item_from_tree() for a stable item: the counters as the
    kernel keeps them (the last item of a node was its pages_shared)."""
    cdef ksm_node_t *node
    if it.node == 0:
        return
    node = &k.nodes[it.node - 1]
    node.nitems -= 1
    if node.nitems == k.max_page_sharing - 1:
        k.chain_epoch += 1          # no longer full: runs of full dups through it end
    if node.nitems > 0:
        k.pages_sharing -= 1
    else:
        k.pages_shared -= 1
    it.node = 0


cdef void ksm_item_append(ksm_state_t *k, ksm_item_t *it, int32_t n) noexcept nogil:
    """stable_tree_append()."""
    k.nodes[n].nitems += 1
    it.node = n + 1
    if k.nodes[n].nitems > 1:
        k.pages_sharing += 1
        k.sharing_added += 1
    else:
        k.pages_shared += 1


cdef void ksm_drop_prev(engine_t *e, ksm_state_t *k, uint64_t below) noexcept nogil:
    """get_next_rmap_item / remove_trailing_rmap_items: last scan's items
    before `below` that this scan did not meet again go."""
    while k.prev_pos < k.prev_end and k.items[k.prev_pos].key < below:
        ksm_item_unlink(k, &k.items[k.prev_pos])
        k.prev_pos += 1


cdef int ksm_item_room(ksm_state_t *k) noexcept nogil:
    """Room for a new item at items[ncur]. When the last scan's items left
    start right there, they move to the array's end, leaving a gap of at
    least a quarter of their number: moves cost O(1) per new item, amortised.
    -1 on host OOM, or past 2^32 items (the unstable tree's 32-bit index)."""
    cdef int64_t left = k.prev_end - k.prev_pos
    if k.ncur >= 0xFFFFFFFFLL:
        return -1
    if left == 0:
        return array_grow(<void **>&k.items, &k.items_cap, k.ncur + 1, sizeof(ksm_item_t), 256, False)
    if k.ncur < k.prev_pos:
        return 0
    if array_grow(<void **>&k.items, &k.items_cap, k.ncur + left + left // 4 + 256, sizeof(ksm_item_t),
                  256, False) < 0:
        return -1
    memmove(k.items + k.items_cap - left, k.items + k.prev_pos, left * sizeof(ksm_item_t))
    k.prev_pos, k.prev_end = k.items_cap - left, k.items_cap
    return 0


cdef ksm_item_t *ksm_next_item(engine_t *e, ksm_state_t *k, mm_t *mm, uint64_t va) noexcept nogil:
    """get_next_rmap_item(): this page's item, carried over from the last
    scan or new (checksum 0). NULL on host OOM."""
    cdef uint64_t key = (<uint64_t>mm.id << KSM_MM_SHIFT) | va
    cdef ksm_item_t *it
    if k.prev_pos < k.prev_end and k.items[k.prev_pos].key < key:
        ksm_drop_prev(e, k, key)    # (tested here: there mostly is none)
    if k.prev_pos < k.prev_end and k.items[k.prev_pos].key == key:
        it = &k.items[k.ncur]       # ncur <= prev_pos: copied down, or in place
        if k.ncur != k.prev_pos:
            it[0] = k.items[k.prev_pos]
        k.ncur += 1
        k.prev_pos += 1
        if it.serial == mm.serial:
            return it
        ksm_item_unlink(k, it)      # an item of an exited mm whose id was reused
    else:
        if ksm_item_room(k) < 0:
            return NULL
        it = &k.items[k.ncur]
        k.ncur += 1
    it.key = key
    it.checksum = 0
    it.serial = mm.serial
    it.node = 0
    it.pad = 0                      # so get_state (the explorer's state key) is deterministic
    return it


cdef void ksm_mm_exit(ksm_state_t *k, mm_t *mm) noexcept nogil:
    """__ksm_exit(): the exiting mm's items leave the stable tree now."""
    cdef int64_t i
    cdef uint64_t lo = <uint64_t>mm.id << KSM_MM_SHIFT, hi = <uint64_t>(mm.id + 1) << KSM_MM_SHIFT
    for i in range(k.prev_pos, k.prev_end):
        if lo <= k.items[i].key < hi and k.items[i].serial == mm.serial:
            ksm_item_unlink(k, &k.items[i])
    for i in range(k.ncur):
        if lo <= k.items[i].key < hi and k.items[i].serial == mm.serial:
            ksm_item_unlink(k, &k.items[i])
    ksm_skip_reset(k)


# ---- merging ----------------------------------------------------------------

cdef inline mm_vma_t *ksm_mergeable_vma(mm_t *mm, uint64_t va) noexcept nogil:
    """find_mergeable_vma(): VM_MERGEABLE with an anon_vma, else NULL."""
    cdef int32_t vi
    if not mm.alive:
        return NULL
    vi = find_vma(mm, va)
    if vi < 0 or not (mm.vmas[vi].flags & VM_MERGEABLE) or not mm.vmas[vi].anon_vma:
        return NULL
    return &mm.vmas[vi]


cdef inline int64_t ksm_mapped_anon(engine_t *e, mm_t *mm, uint64_t va, uint64_t **ptep_out) noexcept nogil:
    """The anon page mapped at va (follow_page / folio_walk_start), or -1:
    a page of a large folio too (of a THP, PMD-mapped or not), which
    try_to_merge_one_page() splits before merging; never a hugetlb page."""
    cdef uint64_t *ptep = pte_offset(e, mm, va, False)
    cdef int64_t pfn
    if ptep == NULL or (ptep[0] & (PTE_PRESENT | PTE_SPECIAL)) != PTE_PRESENT:
        return -1
    pfn = <int64_t>pte_pfn(ptep[0])
    if not (e.fflags[pfn] & PG_ANON) or pfn_is_hugetlb(e, pfn):
        return -1
    ptep_out[0] = ptep
    return pfn


cdef int ksm_write_protect(engine_t *e, mm_t *mm, uint64_t va, uint64_t *ptep, int64_t pfn,
                           uint64_t *orig) noexcept nogil:
    """write_protect_page() (semantics.md 13): 0, or -1 if the page has a user
    besides its mappings (and the swapcache), or is exclusive and may be pinned."""
    cdef uint64_t pte = ptep[0]
    cdef bint exclusive = (e.fflags[pfn] & PG_ANON_EXCLUSIVE) != 0
    cdef int32_t swapped
    if (pte & PTE_PRESENT) == 0 or <int64_t>pte_pfn(pte) != pfn:
        return -1
    # Only a pte that may be (or have been) written needs the check: writable
    # or dirty, an exclusive page (5.19+), or a TLB flush still pending.
    if pte & (PTE_WRITE | PTE_DIRTY) or exclusive or mm.tlb_flush_pending:
        swapped = 1 if e.fflags[pfn] & PG_SWAPCACHE else 0
        # ptep_clear_flush before counting, so no GUP-fast can slip in after.
        ptep[0] = 0
        tlb_flush_page(e, mm.id, va)
        # mapcount + ksmd's reference + swapcache == refcount; the engine
        # takes no reference for ksmd, so any GUP reference or pin fails it.
        if e.mapcount[pfn] + swapped != e.refcount[pfn]:
            ptep[0] = pte
            return -1
        if exclusive:
            # folio_try_share_anon_rmap_pte() (5.19+): refused if maybe pinned.
            if e.refcount[pfn] >= GUP_PIN_COUNTING_BIAS:
                ptep[0] = pte
                return -1
            e.fflags[pfn] &= ~PG_ANON_EXCLUSIVE
        if pte & PTE_DIRTY:
            e.fflags[pfn] |= PG_DIRTY       # dirtiness moves to the folio
        pte &= ~(PTE_DIRTY | PTE_WRITE)
        ptep[0] = pte
    orig[0] = pte
    return 0


cdef int ksm_replace_page(engine_t *e, mm_t *mm, mm_vma_t *vma, uint64_t va, uint64_t *ptep,
                          int64_t pfn, int64_t kpfn, uint64_t orig) noexcept nogil:
    """replace_page(): map the KSM page R/O where pfn was; pfn loses the
    mapping (and is freed if nothing else holds it)."""
    cdef uint64_t newpte
    if ptep[0] != orig:
        return -1
    # mk_pte(kpage, vm_page_prot): R/O in a private mapping, clean; soft-dirty
    # carried over (6.12 source); the uffd-wp bit is not.
    newpte = pfn_pte(kpfn) | PTE_PRESENT | PTE_YOUNG | vma_prot_bits(vma.flags) | (orig & PTE_SOFT_DIRTY)
    e.refcount[kpfn] += 1
    e.mapcount[kpfn] += 1
    ptep[0] = 0
    tlb_flush_page(e, mm.id, va)
    ptep[0] = newpte
    e.mapcount[pfn] -= 1
    if e.mapcount[pfn] == 0:
        try_to_free_swap(e, pfn)
    put_page(e, pfn, 1)
    return 0


cdef int ksm_merge_one(engine_t *e, ksm_state_t *k, mm_t *mm, uint64_t va, int64_t pfn,
                       int64_t kpfn) noexcept nogil:
    """try_to_merge_with_ksm_page() + try_to_merge_one_page(): kpfn < 0 makes
    pfn a KSM page in place. 0 merged, -1 not."""
    cdef mm_vma_t *vma = ksm_mergeable_vma(mm, va)
    cdef uint64_t *ptep = NULL
    if vma == NULL or ksm_mapped_anon(e, mm, va, &ptep) != pfn:
        return -1
    return ksm_merge_mapped(e, k, mm, vma, va, ptep, pfn, kpfn)


cdef int ksm_merge_mapped(engine_t *e, ksm_state_t *k, mm_t *mm, mm_vma_t *vma, uint64_t va,
                          uint64_t *ptep, int64_t pfn, int64_t kpfn) noexcept nogil:
    """ksm_merge_one() where vma (mergeable) and ptep (mapping anon page pfn)
    are known: the scanned page, as ksm_do_scan found it."""
    cdef uint64_t orig
    if pfn == kpfn:
        return 0                    # a forked KSM page
    if e.fflags[pfn] & (PG_HEAD | PG_TAIL):
        # try_to_merge_one_page(): split_huge_page() first (with 6.12's
        # zero-page remap), or no merge. Here only a folio this mm alone
        # maps can be split (no rmap walk across mms).
        if split_folio_here(e, mm, folio_of(e, pfn), va, True, False) < 0:
            return -1
        if ksm_mapped_anon(e, mm, va, &ptep) != pfn:
            return -1               # remapped to the zero page
    if ksm_write_protect(e, mm, va, ptep, pfn, &orig) < 0:
        return -1
    if kpfn < 0:
        e.fflags[pfn] |= PG_KSM | PG_DIRTY      # set_page_stable_node(); SetPageDirty
        ksm_pfn_forget(k, pfn)                  # a node left from an earlier life of this frame is stale
        return 0
    if not ksm_pages_identical(e, pfn, kpfn):
        return -1
    return ksm_replace_page(e, mm, vma, va, ptep, pfn, kpfn, orig)


cdef int ksm_break(engine_t *e, mm_t *mm, int cpu, uint64_t va) noexcept nogil:
    """break_ksm(): fault until no KSM page is mapped at va. 6.2+
    (6cce3314b928) an unshare fault: a R/O private copy, uffd-wp kept.
    Before, a write fault holding follow_page's reference (so 5.7-5.8's
    reuse_ksm_page never reuses): a writable copy, and in a uffd-wp range
    handle_userfault without ALLOW_RETRY is SIGBUS, leaving the page
    merged. 0, or -CORE_ENOMEM."""
    cdef uint64_t *ptep = NULL
    cdef int64_t pfn
    cdef int ret = 0, tries
    for tries in range(8):
        pfn = ksm_mapped_anon(e, mm, va, &ptep)
        if pfn < 0 or not (e.fflags[pfn] & PG_KSM):
            return 0
        if e.pol.ksm_break_unshare:
            ret = handle_mm_fault(e, mm, cpu, va, FAULT_FLAG_UNSHARE | FAULT_FLAG_REMOTE | FAULT_FLAG_NO_RETRY)
        else:
            e.refcount[pfn] += 1
            ret = handle_mm_fault(e, mm, cpu, va, FAULT_FLAG_WRITE | FAULT_FLAG_REMOTE | FAULT_FLAG_NO_RETRY)
            put_page(e, pfn, 1)
            if ret & VM_FAULT_WRITE:
                return 0
        if ret & (VM_FAULT_SIGBUS | VM_FAULT_SIGSEGV | VM_FAULT_OOM | VM_FAULT_NOMEM):
            break
    return -CORE_ENOMEM if ret & (VM_FAULT_OOM | VM_FAULT_NOMEM) else 0


cdef int64_t ksm_unmerge_range(engine_t *e, mm_t *mm, int cpu, uint64_t start, uint64_t end) noexcept nogil:
    """unmerge_ksm_pages() over one VM_MERGEABLE VMA's range; 0 or -errno."""
    cdef uint64_t va
    cdef int rc
    cdef uint64_t *ptep
    va = start
    while va < end:
        ptep = pte_offset(e, mm, va, False)
        if ptep == NULL:
            va = (va | ((<uint64_t>MM_PTRS << MM_PAGE_SHIFT) - 1)) + 1     # no pte page here
            continue
        if ptep[0] & PTE_PRESENT:
            rc = ksm_break(e, mm, cpu, va)
            if rc < 0:
                return rc
        va += MM_PAGE_SIZE
    return 0


cdef void ksm_break_cow(engine_t *e, mm_t *mm, int cpu, uint64_t va) noexcept nogil:
    """break_cow(): undo a half-made merge (only in a mergeable VMA)."""
    if ksm_mergeable_vma(mm, va) != NULL:
        ksm_break(e, mm, cpu, va)


cdef int64_t ksm_unstable_search_insert(engine_t *e, ksm_state_t *k, int64_t pfn, uint64_t hash,
                                        int64_t item, int64_t *tree_pfn, int64_t *tree_slot) noexcept nogil:
    """unstable_tree_search_insert(): the item of an identical page in the
    unstable tree (tree_pfn and tree_slot set), else insert this one; -1 if
    none."""
    cdef int64_t i, p
    cdef ksm_item_t *t
    cdef mm_t *tm
    cdef uint64_t *ptep = NULL
    cdef int32_t tmid
    cdef uint16_t gen = k.unstable_gen, tag = <uint16_t>(hash >> 48)
    if (k.unstable_used + 1) * 2 > k.unstable_cap and ksm_unstable_room(k) < 0:
        k.failed = 1
        return -1
    i = <int64_t>(hash & <uint64_t>(k.unstable_cap - 1))
    while True:
        ksm_unstable_touch(k, i)
        if k.unstable[i].gen != gen:
            break
        if k.unstable[i].tag != tag or k.items[k.unstable[i].item].checksum != hash:
            i = (i + 1) & (k.unstable_cap - 1)
            continue
        # An item merged since it was inserted has left the unstable tree
        # (remove_rmap_item_from_tree): skipped.
        if k.unstable_skip_cap == k.unstable_cap and k.unstable_skip[i] != 0:
            i = ksm_skip_find(k, i)     # a run of merged items, skipped below anyway
            continue
        t = &k.items[k.unstable[i].item]
        if t.node == 0:
            tmid = <int32_t>(t.key >> KSM_MM_SHIFT)
            tm = &e.mms[tmid]
            if tm.serial != t.serial or ksm_mergeable_vma(tm, t.key & ((1ULL << KSM_MM_SHIFT) - 1)) == NULL:
                return -1           # get_mergeable_page() found nothing: give up
            p = ksm_mapped_anon(e, tm, t.key & ((1ULL << KSM_MM_SHIFT) - 1), &ptep)
            if p < 0 or p == pfn:
                return -1           # gone, or the same (forked) page: no substitute
            if ksm_pages_identical(e, pfn, p):
                tree_pfn[0] = p
                tree_slot[0] = i
                return k.unstable[i].item
        i = (i + 1) & (k.unstable_cap - 1)
    k.unstable[i].item = <uint32_t>item
    k.unstable[i].tag = tag
    k.unstable[i].gen = gen
    k.unstable_used += 1
    return -1


cdef void ksm_cmp_and_merge(engine_t *e, ksm_state_t *k, mm_t *mm, mm_vma_t *vma, int cpu, uint64_t va,
                            uint64_t *ptep, int64_t pfn, int64_t item) noexcept nogil:
    """cmp_and_merge_page() for the anon page pfn that ptep maps at va in vma
    (mergeable); until its own merge nothing here changes either."""
    cdef ksm_item_t *it = &k.items[item]
    cdef ksm_item_t *t
    cdef int32_t stable = ksm_pfn_node(e, k, pfn), kn
    cdef uint64_t hash = 0
    cdef int64_t tree, tree_pfn = -1, tree_slot = -1
    if stable >= 0:
        if it.node == stable + 1:
            return                  # still the KSM page it was merged into
        kn = stable                 # a forked KSM page: stable_tree_search() gives it back
    else:
        if e.fflags[pfn] & PG_KSM:
            return                  # a KSM page without a node (not reachable): leave it
        hash = ksm_content_hash(e, pfn)
        if e.pol.ksm_checksum_first:
            # d58a361b0350 (6.11): a page whose checksum moved skips the
            # stable tree search too.
            ksm_item_unlink(k, it)
            if it.checksum != hash:
                it.checksum = hash
                return
        kn = ksm_stable_search(e, k, pfn, hash)
    ksm_item_unlink(k, it)
    if kn >= 0:
        if ksm_merge_mapped(e, k, mm, vma, va, ptep, pfn, k.nodes[kn].pfn) == 0:
            ksm_item_append(k, it, kn)
        return
    if not e.pol.ksm_checksum_first:
        # Before 6.11 the checksum gate comes after the stable tree search.
        if it.checksum != hash:
            it.checksum = hash
            return
    tree = ksm_unstable_search_insert(e, k, pfn, hash, item, &tree_pfn, &tree_slot)
    if tree < 0:
        return
    t = &k.items[tree]
    # try_to_merge_two_pages(): this page becomes the KSM page in place, then
    # the tree page is replaced by it; if that fails, this one is broken again.
    if ksm_merge_mapped(e, k, mm, vma, va, ptep, pfn, -1) < 0:
        return
    if ksm_merge_one(e, k, &e.mms[t.key >> KSM_MM_SHIFT], t.key & ((1ULL << KSM_MM_SHIFT) - 1),
                     tree_pfn, pfn) < 0:
        ksm_break_cow(e, mm, cpu, va)
        return
    kn = ksm_stable_insert(e, k, pfn, hash)
    if kn < 0:
        k.failed = 1
        ksm_break_cow(e, &e.mms[t.key >> KSM_MM_SHIFT], cpu, t.key & ((1ULL << KSM_MM_SHIFT) - 1))
        ksm_break_cow(e, mm, cpu, va)
        return
    ksm_item_append(k, t, kn)
    ksm_item_append(k, &k.items[item], kn)
    ksm_skip_mark(k, tree_slot)


cdef void ksm_scan_end(engine_t *e, ksm_state_t *k) noexcept nogil:
    """The end of a full scan: last scan's items not met again go, this
    scan's become the last, the unstable tree empties (by its generation)."""
    ksm_drop_prev(e, k, 0xFFFFFFFFFFFFFFFFULL)
    k.nprev = k.prev_end = k.ncur
    k.prev_pos = k.ncur = 0
    k.seqnr += 1
    if ksm_unstable_gen(k.seqnr) == 1 and k.unstable_cap:
        memset(k.unstable, 0, k.unstable_cap * sizeof(ksm_unstable_t))  # no entry 65535 scans old looks current
    k.unstable_used = 0
    k.mm = -1
    ksm_skip_reset(k)


cdef inline void ksm_prefetch(engine_t *e, ksm_state_t *k, uint64_t pte, bint frame_only) noexcept nogil:
    """Start the loads the scan will need for the page `pte` maps some pages
    from now: its frame's flags and version (frame_only), or, given those,
    the bucket of its content hash in the unstable and stable tables (or its
    pfn's, for a KSM page). At 10^6 pages these are cache and TLB misses
    the scan would otherwise wait for one after another (issue 13)."""
    cdef int64_t pfn
    cdef uint32_t f
    cdef uint64_t h
    if (pte & (PTE_PRESENT | PTE_SPECIAL)) != PTE_PRESENT:
        return
    pfn = <int64_t>pte_pfn(pte)
    if frame_only:
        ksm_prefetch_line(&e.fflags[pfn])
        ksm_prefetch_line(&e.version[pfn])
        return
    f = e.fflags[pfn]
    if f & PG_KSM:
        if k.pfn_cap >= KSM_PREFETCH_SLOTS:
            ksm_prefetch_line(&k.pfn_keys[ksm_mix(<uint64_t>pfn) & <uint64_t>(k.pfn_cap - 1)])
        return
    if (f & (PG_ANON | PG_BYTES)) != PG_ANON:
        return                      # a byte-exact page's hash reads the page anyway
    h = ksm_version_hash(e.version[pfn])
    ksm_prefetch_line(&k.unstable[h & <uint64_t>(k.unstable_cap - 1)])
    if k.stable_cap:
        ksm_prefetch_line(&k.stable[h & <uint64_t>(k.stable_cap - 1)])


cdef int64_t ksm_do_scan(engine_t *e, ksm_state_t *k, int cpu, int64_t budget) noexcept nogil:
    """ksm_do_scan(): up to `budget` pages (rmap_items), stopping early when
    a full scan completes, as scan_get_next_rmap_item() returns NULL there.
    Returns the pages looked at."""
    cdef int64_t done = 0, pfn, item
    cdef mm_t *mm
    cdef mm_vma_t *vma
    cdef int32_t vi
    cdef uint64_t va, end
    cdef uint64_t *ptep
    cdef uint64_t *table
    cdef ksm_item_t *it
    cdef int c
    cdef uint64_t idx
    cdef bint prefetch
    k.unstable_gen = ksm_unstable_gen(k.seqnr)     # a call ends where a full scan does
    while done < budget:
        if k.mm < 0:
            # A full scan starts: drain the per-CPU LRU batches, whose extra
            # references would fail write_protect_page (lru_add_drain_all).
            for c in range(e.ncpus):
                lru_drain(e, c)
            k.mm, k.va = 0, 0
            # Room for as many unstable entries as the last scan had pages,
            # so the table does not grow while this one runs.
            if ksm_unstable_room(k, k.nprev) < 0:
                k.failed = 1
                return done
        if k.mm >= e.nmm:
            ksm_scan_end(e, k)
            break
        mm = &e.mms[k.mm]
        vma = NULL
        if mm.alive:
            vi = find_vma(mm, k.va)
            if vi < 0:
                # the first VMA at or above the cursor
                vi = 0
                while vi < mm.nvma and mm.vmas[vi].end <= k.va:
                    vi += 1
                if vi >= mm.nvma:
                    vi = -1
            while vi >= 0 and vi < mm.nvma:
                if mm.vmas[vi].flags & VM_MERGEABLE and mm.vmas[vi].anon_vma:
                    vma = &mm.vmas[vi]
                    break
                vi += 1
        if vma == NULL:
            # This mm is done: its items beyond the cursor go.
            ksm_drop_prev(e, k, (<uint64_t>(k.mm + 1)) << KSM_MM_SHIFT)
            k.mm += 1
            k.va = 0
            continue
        va = k.va if k.va > vma.start else vma.start
        end = vma.end
        table = NULL
        # Only worth its cost with big tables and pages that will probe them:
        # not in a steady state, where the pages are on KSM pages already.
        prefetch = k.unstable_cap >= KSM_PREFETCH_SLOTS and \
            k.nprev - k.pages_shared - k.pages_sharing >= KSM_PREFETCH_PAGES
        while va < end and done < budget:
            # The pte page of this 2 MiB is walked to once, not per page: a
            # merge only rewrites a pte in it; a large folio's split may
            # replace it, so the walk is redone after one.
            if table == NULL or (va & (PMD_SPAN - 1)) == 0:
                table = pte_table(e, mm, va, False)
                if table == NULL:
                    va = (va | ((<uint64_t>MM_PTRS << MM_PAGE_SHIFT) - 1)) + 1
                    continue
            idx = (va >> MM_PAGE_SHIFT) & 511
            # Two stages ahead within this pte page: the frames, then (their
            # flags and version loaded by then) the trees' buckets.
            if prefetch:
                if idx + 2 * KSM_PREFETCH < 512:
                    ksm_prefetch(e, k, table[idx + 2 * KSM_PREFETCH], True)
                if idx + KSM_PREFETCH < 512:
                    ksm_prefetch(e, k, table[idx + KSM_PREFETCH], False)
            ptep = table + idx
            if (ptep[0] & (PTE_PRESENT | PTE_SPECIAL)) == PTE_PRESENT:
                pfn = <int64_t>pte_pfn(ptep[0])
                if e.fflags[pfn] & PG_ANON and not pfn_is_hugetlb(e, pfn):
                    it = ksm_next_item(e, k, mm, va)
                    if it == NULL:
                        k.failed = 1
                        k.va = va
                        return done
                    item = it - k.items
                    if e.fflags[pfn] & (PG_HEAD | PG_TAIL):
                        table = NULL
                    ksm_cmp_and_merge(e, k, mm, vma, cpu, va, ptep, pfn, item)
                    k.pages_scanned += 1
                    done += 1
            va += MM_PAGE_SIZE
        k.va = va if va < end else end
    return done


cdef void ksm_free(ksm_state_t *k) noexcept nogil:
    free(k.items)
    free(k.nodes)
    free(k.stable)
    free(k.pfn_keys)
    free(k.pfn_nodes)
    free(k.unstable)
    free(k.unstable_ready)
    free(k.unstable_skip)
    free(k.skip_marked)
    free(k.chain_skip)
    memset(k, 0, sizeof(ksm_state_t))
