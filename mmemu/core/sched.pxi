# Step boundaries of kernel operations. A kernel operation runs as atomic
# steps between the points where Linux drops a lock, waits or flushes; at
# each such point the core hands control to the scheduler (e.sched_hook),
# which may run other threads' steps before it returns. Without a hook
# every point is a no-op branch and an operation runs whole, as before.
#
# The hook is a C function pointer so a C caller can drive the steps with its
# own scheduler; mmemu.sched installs one that calls back into Python.
# State stays consistent at every point: page-table pages never move, and an
# operation that resumes re-checks what it found before (pte_same), as the
# kernel does after it re-takes the page-table lock.

cdef enum:
    SP_MMAP_LOCK_READ = 1      # a fault is about to take mmap_lock for read (may wait)
    SP_MMAP_UNLOCK_READ = 2    # the fault released it
    SP_FLUSH_PENDING = 3       # a walk changed ptes; its TLB flush is still to come
    SP_COW_COPIED = 4          # wp_page_copy copied the page; the pte switch is still to come
    SP_ZAP_PENDING = 5         # zap cleared ptes; the flush and the freeing are still to come
    SP_COW_DECIDED = 6         # do_wp_page chose to copy; the copy is still to come
    SP_FORK_PTE = 7            # fork found a pte not pinned; sharing and write-protecting it is still to come
    SP_GUP_FAST_GRABBED = 8    # GUP-fast took its reference; re-reading the pte is still to come
    SP_GUP_RETRY = 9           # GUP's fault is done; the retry of follow_page is still to come
    SP_FALLOC_WAIT = 10        # a shmem fault on a hole being punched waits for the punch (aux: file id)
    SP_MIGRATION_UNMAPPED = 11 # migrate_pages unmapped its batch; copying and remapping are still to come (aux: node)
    SP_MIGRATION_WAIT = 12     # a fault on a migration entry waits for the migration (aux: pfn)
    SP_HUGETLB_MIGRATION_UNMAPPED = 13  # unmap_and_move_huge_page unmapped its folio, mmap_lock not held (aux: node)


cdef inline void sched_point(engine_t *e, int point, int32_t mm, uint64_t va, uint64_t aux) noexcept nogil:
    cdef int32_t scope
    if e.sched_hook != NULL:
        scope = e.alloc_exclude     # memalloc_pin_save() is per task: others run without it
        e.alloc_exclude = 0
        e.sched_hook(e.sched_arg, point, mm, va, aux)
        e.alloc_exclude = scope


cdef inline void flush_pending_begin(engine_t *e, mm_t *mm) noexcept nogil:
    # inc_tlb_flush_pending(): others may see that this mm's TLBs are stale.
    mm.tlb_flush_pending += 1


cdef inline bint protection_needs_flush(engine_t *e, int64_t lost, int64_t touched) noexcept nogil:
    # Before 6.0 change_protection_range flushed the range when it rewrote
    # any present pte; 6.0's mmu_gather (4a18419f71cd, with x86's
    # pte_needs_flush) flushes only ptes that lost rights.
    return lost > 0 or (not e.pol.mprotect_gather and touched > 0)


cdef inline void flush_pending_end(engine_t *e, mm_t *mm, uint64_t start, uint64_t end,
                                   bint flush) noexcept nogil:
    """The deferred flush of a protection walk: a step of its own, then
    dec_tlb_flush_pending()."""
    if flush:
        sched_point(e, SP_FLUSH_PENDING, mm.id, start, end)
        tlb_flush_range(e, mm.id, start, end)
    mm.tlb_flush_pending -= 1
