# Engine state as plain numpy arrays (Machine.save / load, pickle): every
# table the core owns, lossless, and in arrays a C caller could read too.
# Pools are written page by page up to their high-water mark with their free
# stacks, so a restored engine hands out the same frames, table pages and
# byte slots in the same order as the saved one would have (determinism).

STATE_SCALARS = ("next_unused", "free_head", "nr_free", "ndir_used", "npte_used", "nbytes_used",
                 "nmm", "nfile", "nuffd", "swap_used", "swap_cursor", "stamp", "reclaim_mm",
                 "reclaim_va", "uf_ctx", "uf_mm", "uf_addr", "uf_flags", "uf_reason", "fault_addr",
                 "mm_serial")
MM_FIELDS = ("id", "pgd", "nvma", "alive", "flags", "minflt", "rss_anon", "nr_ptes", "serial", "hugetlb_usage")
FILE_FIELDS = ("id", "root", "alive", "shmem", "size", "nrpages", "nr_leaves", "hstate")


cdef object pool_export(void **chunks, int64_t npages, size_t page_bytes, int shift):
    """The first npages pages of a chunked pool, as one uint8 array."""
    out = np.zeros(npages * page_bytes, np.uint8)
    cdef uint8_t[::1] o = out
    cdef int64_t i, per = <int64_t>1 << shift
    for i in range(0, npages, per):
        memcpy(&o[i * page_bytes], chunks[i >> shift], min(per, npages - i) * page_bytes)
    return out


cdef void **pool_import(const uint8_t[::1] data, int64_t npages, size_t page_bytes, int shift,
                        int64_t *nchunks) except NULL:
    cdef int64_t i, n = (npages >> shift) + 1, per = <int64_t>1 << shift
    if npages < 0 or <size_t>data.shape[0] != <size_t>npages * page_bytes:
        raise ValueError("saved pool of the wrong size")
    cdef void **chunks = <void **>calloc(n * 2, sizeof(void *))
    if chunks == NULL:
        raise MemoryError()
    nchunks[0] = n * 2
    for i in range(0, npages, per):
        chunks[i >> shift] = malloc(per * page_bytes)
        if chunks[i >> shift] == NULL:
            raise MemoryError()
        memcpy(chunks[i >> shift], &data[i * page_bytes], min(per, npages - i) * page_bytes)
    return chunks


cdef object stack_export(void *p, int64_t n, object dtype):
    out = np.zeros(n, dtype)
    if n:
        memcpy(<void *>cnp_data(out), p, out.nbytes)
    return out


cdef void *stack_import(object arr, int64_t cap, size_t item) except NULL:
    """A malloc'd copy of arr's bytes with room for cap items of `item` bytes."""
    arr = np.ascontiguousarray(arr)
    if <size_t>arr.nbytes > <size_t>max(cap, 1) * item:
        raise ValueError("saved table larger than its room")
    cdef void *p = malloc(max(cap, 1) * item)
    if p == NULL:
        raise MemoryError()
    if arr.nbytes:
        memcpy(p, <void *>cnp_data(arr), arr.nbytes)
    return p

