"""Test helpers shared by the large-folio tests: a private anon range at an
aligned address, and page contents no page of which is all zeros."""
import mmemu.constants as C

RW = C.PROT_READ | C.PROT_WRITE
PRIV = C.MAP_PRIVATE | C.MAP_ANONYMOUS
PATTERN = bytes(range(1, 256))


def aligned_anon(p, length, align):
    """A private anon mapping of `length` at an `align`-aligned address
    (mapped over-long, the slack on both sides unmapped)."""
    raw = p.mmap(0, length + align, RW, PRIV)
    a = (raw + align - 1) & ~(align - 1)
    if a > raw:
        p.munmap(raw, a - raw)
    if raw + align > a:
        p.munmap(a + length, raw + align - a)
    return a


def fill(n):
    """n bytes no page of which is all zeros (6.12's split maps those to the zero page)."""
    return (PATTERN * (n // len(PATTERN) + 1))[:n]
