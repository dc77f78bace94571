# Growth of the core's malloc'ed arrays (tables, stacks, queues, chunk
# directories): one rule for all of them, so n appends cost O(n) and a
# host out of memory leaves the array as it was.


cdef int array_grow(void **p, int64_t *cap, int64_t need, size_t size, int64_t slack,
                    bint zero) noexcept nogil:
    """Room for `need` elements of `size` bytes at *p: the capacity doubles
    plus `slack` until it holds them, and the new elements are zeroed when
    `zero`. 0, or -1 when the host has no memory (*p and *cap unchanged)."""
    cdef int64_t c = cap[0]
    cdef void *q
    if need <= c:
        return 0
    while c < need:
        c = c * 2 + slack
    q = realloc(p[0], <size_t>c * size)
    if q == NULL:
        return -1
    if zero:
        memset(<char *>q + <size_t>cap[0] * size, 0, <size_t>(c - cap[0]) * size)
    p[0], cap[0] = q, c
    return 0


cdef int array_grow32(void **p, int32_t *cap, int64_t need, size_t size, int64_t slack,
                      bint zero) noexcept nogil:
    """array_grow() for a table whose capacity is an int32_t."""
    cdef int64_t c = cap[0]
    if need > 0x3FFFFFFF or array_grow(p, &c, need, size, slack, zero) < 0:
        return -1
    if c > 0x7FFFFFFF:
        c = 0x7FFFFFFF              # the array is larger than its capacity says: harmless
    cap[0] = <int32_t>c
    return 0


cdef inline int grow_i64(int64_t **p, int64_t *cap, int64_t need) noexcept nogil:
    """Room for `need` int64s (array_grow)."""
    if need <= cap[0]:
        return 0
    return array_grow(<void **>p, cap, need, sizeof(int64_t), 1024, False)
