"""Anonymous COW / GUP / fork scenarios on base pages and THPs.

In the style of tools/testing/selftests/mm/cow.c: each case says what a
failure would mean, and the anonymous tests run on each backing cow.c
uses (do_run_with_base_page / do_run_with_thp): base, base-swapped, THP
(PMD-mapped), PTE-THP (the PMD split by a one-page mprotect),
single-PTE-THP, partial-mremap-THP and partial-shared-THP. Catalogue ids
and per-era outcomes are those of ../shared/reference/scenarios.md (S1-S14,
S20-S22 zero page, S43, S45(b), S53, S75, S80, S84); `fails=` lists the
versions where the bug reproduces.
"""
from .. import constants as C
from ..eras import FOLL_FORCE_ANON_EXCLUSIVE
from ..errors import Sigsegv
from . import FeatureAbsent, ScenarioSkip, absent, check, scenario

PAGE = C.PAGE_SIZE
THP = C.PMD_SIZE
RW = C.PROT_READ | C.PROT_WRITE
RO = C.PROT_READ
PRIV = C.MAP_PRIVATE | C.MAP_ANONYMOUS
ONES = b"\x01" * PAGE
FFS = b"\xff" * PAGE


def _anon_page(p, fill=ONES, backing="base"):
    P = p.mmap(0, PAGE, RW, PRIV)
    p.write(P, fill)
    if backing == "base-swapped":
        # cow.c: MADV_PAGEOUT, and skip where the page did not reach swap.
        p.madvise(P, PAGE, C.MADV_PAGEOUT)
        if not p.pagemap(P).swapped:
            raise ScenarioSkip("MADV_PAGEOUT did not swap the page out (no swap?)")
    return P


def _thp_mem(p, backing):
    """cow.c do_run_with_thp(): a PMD-mapped THP (2 * THP mapped, the
    aligned half given MADV_HUGEPAGE and populated, memset to 1), then the
    backing's change to it; a "-swapped" backing then pages the memory out
    (THP_RUN_*_SWAPOUT). Returns (mem, size)."""
    swapped = backing.endswith("-swapped")
    backing = backing.removesuffix("-swapped")
    raw = p.mmap(0, 2 * THP, RW, PRIV)
    mem = (raw + THP - 1) & ~(THP - 1)
    p.madvise(mem, THP, C.MADV_HUGEPAGE)
    p.write(mem, b"\x01")
    if not p.pagemap(mem + THP - PAGE).present:
        raise ScenarioSkip("did not get a THP populated")
    p.write(mem, b"\x01" * THP)
    size = THP
    if backing == "PTE-THP":
        # A one-page mprotect and back splits the PMD (the folio stays large).
        p.mprotect(mem + PAGE, PAGE, RO)
        p.mprotect(mem + PAGE, PAGE, RW)
    elif backing == "single-PTE-THP":
        # All but the first subpage discarded: one pte maps one page of a large folio.
        p.madvise(mem + PAGE, THP - PAGE, C.MADV_DONTNEED)
        size = PAGE
    elif backing == "partial-mremap-THP":
        # The second half moved elsewhere: the folio is mapped in two places.
        half = THP // 2
        target = p.mmap(0, half, C.PROT_NONE, PRIV)
        p.mremap(mem + half, half, half, C.MREMAP_MAYMOVE | C.MREMAP_FIXED, target)
        size = half
    elif backing == "partial-shared-THP":
        # The first page shared with a child that then exits: some of the
        # folio was shared once, the rest never.
        p.madvise(mem + PAGE, THP - PAGE, C.MADV_DONTFORK)
        p.fork().exit()
        p.madvise(mem + PAGE, THP - PAGE, C.MADV_DOFORK)
    if swapped:
        # cow.c: MADV_PAGEOUT, and skip unless the whole range reached swap.
        # A swap file takes no whole-THP swap entry (SWP_BLKDEV only), so
        # reclaim splits the folio and swaps its pages one by one
        # (shrink_folio_list's THP_SWPOUT_FALLBACK): afterwards this is
        # small swapped pages, as base-swapped is one. On an SSD or zram
        # (Machine(swap_device=)) it goes out whole to one cluster; every
        # case ends the same there (all cases, 5.7-6.18, compared when
        # whole-THP swap-out came in), so no backing of its own.
        p.madvise(mem, size, C.MADV_PAGEOUT)
        if not all(int(e) & C.PM_SWAP for e in p.pagemap_range(mem, size // PAGE)):
            raise ScenarioSkip("MADV_PAGEOUT did not swap the THP out (no swap?)")
    return mem, size


# cow.c's hugetlb backings (run_with_hugetlb, one per hugetlb page size).
HUGETLB_BACKINGS = {"hugetlb-2M": (THP, C.MAP_HUGE_2MB), "hugetlb-1G": (1 << 30, C.MAP_HUGE_1GB)}
# What the tests look at of a 1 GiB page: as much as a default pipe holds
# (cow.c compares what vmsplice() transferred, 16 pages); writing and
# comparing 1 GiB would cost the engine a GiB of byte store for nothing.
GIGANTIC_WINDOW = 16 * PAGE


def _hugetlb_mem(p, backing):
    """cow.c run_with_hugetlb(): a private anonymous hugetlb page, filled
    with 1s; skipped unless a second page is free (a COW or an unshare needs
    one, else the owner would take the page back from the child)."""
    hsize, sizebits = HUGETLB_BACKINGS[backing]
    flags = PRIV | C.MAP_HUGETLB | sizebits
    try:
        mem = p.mmap(0, hsize, RW, flags)
        dummy = p.mmap(0, hsize, RW, flags)
    except OSError as e:
        raise ScenarioSkip(f"need two free {hsize >> 20} MiB hugetlb pages: {e.strerror}") from None
    p.munmap(dummy, hsize)
    size = hsize if hsize == THP else GIGANTIC_WINDOW
    p.write(mem, b"\x01" * size)
    return mem, size


def _span(backing, size):
    """The bytes the mapping covers (what munmap and mprotect take): a 1 GiB
    page, where the test only looks at its first GIGANTIC_WINDOW bytes."""
    return HUGETLB_BACKINGS[backing][0] if backing in HUGETLB_BACKINGS else size


def _mthp_mem(p, backing):
    """cow.c run_with_thp() for a size below the PMD's (6.8+ runs its THP
    cases for every enabled mTHP size): hugepages-<size>kB/enabled=always,
    2 * size mapped, the aligned half given MADV_HUGEPAGE, populated and
    memset to 1: one folio of that size mapped by ptes (cow.c's THP_RUN_PMD
    run, which for a small size is PTE-mapped already)."""
    size = MTHP_BACKINGS[backing]
    sizes = getattr(getattr(p.machine, "thp", None), "sizes", None)
    if sizes is None or not hasattr(p.machine, "folio_order"):
        raise ScenarioSkip("this machine cannot set hugepages-<size>kB/enabled (the host oracle leaves sysfs alone)")
    try:
        sizes[size] = "always"
    except FileNotFoundError:
        raise FeatureAbsent("multi-size THP (hugepages-<size>kB) arrives in 6.8") from None
    raw = p.mmap(0, 2 * size, RW, PRIV)
    mem = (raw + size - 1) & ~(size - 1)
    p.madvise(mem, size, C.MADV_HUGEPAGE)
    p.write(mem, b"\x01")
    if not p.pagemap(mem + size - PAGE).present \
            or p.machine.folio_order(p.pagemap(mem).pfn) != (size // PAGE).bit_length() - 1:
        raise ScenarioSkip(f"did not get a {size >> 10} KiB mTHP populated")
    p.write(mem, b"\x01" * size)
    return mem, size


def _anon_mem(p, backing):
    """The memory a cow.c test runs on for `backing`: (address, size)."""
    if backing in ("base", "base-swapped"):
        return _anon_page(p, backing=backing), PAGE
    if backing in HUGETLB_BACKINGS:
        return _hugetlb_mem(p, backing)
    if backing in MTHP_BACKINGS:
        return _mthp_mem(p, backing)
    return _thp_mem(p, backing)


# cow.c's THP backings, in run_anon_test_case's order.
THP_BACKINGS = ("THP", "THP-swapped", "PTE-THP", "PTE-THP-swapped", "single-PTE-THP",
                "single-PTE-THP-swapped", "partial-mremap-THP", "partial-shared-THP")
SWAPPED_THP_BACKINGS = tuple(b for b in THP_BACKINGS if b.endswith("-swapped"))
# cow.c's THP run at mTHP sizes (6.8+: n/a before), PTE-mapped large folios:
# they fail where the PTE-mapped THP backings do.
MTHP_BACKINGS = {"mTHP-16K": 16 << 10, "mTHP-64K": 64 << 10}


def _backings(base, thp, pte_thp, bug_thp=None, hugetlb="", bug_hugetlb=None, thp_swapped=None,
              **other):
    """{backing: fails} for the base backings, cow.c's THP ones and its
    hugetlb ones: `thp` for the PMD-mapped THP, `pte_thp` for the PTE-mapped
    ones, keyword exceptions (partial_mremap_THP=...) for one of those,
    `hugetlb` for both hugetlb sizes. A THP or hugetlb row may name its own
    bug (B2a: B2 through a PMD-mapped THP; B2b: through hugetlb). The
    swapped THP backings are small swapped pages by the time the test runs
    (see _thp_mem), so they fail as base-swapped does unless `thp_swapped`
    says otherwise."""
    out = {"base": base[0], "base-swapped": base[1]}
    out["THP"] = (thp, bug_thp) if bug_thp else thp
    for b in THP_BACKINGS[1:]:
        if b in SWAPPED_THP_BACKINGS:
            out[b] = other.get(b.replace("-", "_"), base[1] if thp_swapped is None else thp_swapped)
        else:
            out[b] = other.get(b.replace("-", "_"), pte_thp)
    for b in MTHP_BACKINGS:
        out[b] = other.get(b.replace("-", "_"), pte_thp)
    for b in HUGETLB_BACKINGS:
        out[b] = (hugetlb, bug_hugetlb) if bug_hugetlb else hugetlb
    return out


# hugetlb_wp() reuses a private hugetlb page mapped once, GUP references
# ignored, in every version (it avoids the refcount on purpose, to keep
# fork()+exit() users from running out of huge pages): every vmsplice case
# leaks. cow.c marks these XFAIL on hugetlb (B2b, never fixed). Only 5.8's
# forced COW in GUP (17839856fd58, which set FOLL_WRITE before
# follow_hugetlb_page too) gives a child's vmsplice its own copy, so the
# cases splicing a page fork shared pass there; vmsplice before fork (S5)
# splices an exclusive page, which the forced COW reuses.
_B2B = ">=5.7"
_B2B_SHARED = "5.7,>=5.9"


# partial-mremap-THP and reuse_swap_page() up to 5.8: the half moved away
# stays mapped in parent and child after fork, and page_trans_huge_map_swapcount()
# takes the most any page of the folio is mapped (2), so the write copies
# where the other PTE-mapped backings reuse: those rows pass in 5.7/5.8.
_MREMAP_HALF = ""


def _mprotect_dance(p, P, clear_refs=False, size=PAGE):
    # Leave the pte read-only: mprotect(RO) write-protects; clear_refs(4)
    # makes 6.0+'s mprotect(RW) keep it R/O (soft-dirty tracking), where the
    # kernel has soft-dirty.
    p.mprotect(P, size, RO)
    if clear_refs:
        p.clear_refs(C.CLEAR_REFS_SOFT_DIRTY)
    p.mprotect(P, size, RW)


# ---- Part A: cow.c anonymous tests ----------------------------------------

@scenario("S1", "cow-basic-fork", "Basic COW after fork()", backings=_backings(("", ""), "", ""))
def basic_cow_fork(m, mprotect=False, backing="base"):
    """If we miss breaking COW, the child sees the parent's write."""
    p = m.spawn()
    P, size = _anon_mem(p, backing)
    c = p.fork()
    old = c.read(P, size)
    pfn_before = p.pagemap(P).pfn
    if mprotect:
        _mprotect_dance(p, P, size=_span(backing, size))
    p.write(P, b"\xff" * size)
    check(c.read(P, size) == old, "Leak from parent into child")
    check(p.pagemap(P).pfn != pfn_before, "the parent's write did not copy the shared page")
    check(p.pagemap(P).exclusive and c.pagemap(P).exclusive,
          "after the copy each side should map its page exclusively")
    m.check()


@scenario("S2", "cow-basic-fork-mprotect", "Basic COW after fork() with mprotect() optimization",
          backings=_backings(("", ""), "", ""))
def basic_cow_fork_mprotect(m, backing="base"):
    """If mprotect(RW) upgrades a COW-shared pte, the child sees the parent's write."""
    basic_cow_fork(m, mprotect=True, backing=backing)


@scenario("S3", "cow-vmsplice-unmap-child", "vmsplice() + unmap in child", bug="B2",
          backings=_backings(("5.7", "5.7,5.9-5.17"), "5.7,5.9-5.17", "5.7", bug_thp="B2a",
                             partial_mremap_THP=_MREMAP_HALF, hugetlb=_B2B_SHARED, bug_hugetlb="B2b"))
def vmsplice_unmap_child(m, mprotect=False, backing="base"):
    """If COW is not broken in the parent, the child's pipe reads the parent's later write."""
    p = m.spawn()
    P, size = _anon_mem(p, backing)
    c = p.fork()
    old = c.read(P, size)
    pipe = c.vmsplice(P, size)
    c.munmap(P, _span(backing, size))
    if mprotect:
        _mprotect_dance(p, P, size=_span(backing, size))
    p.write(P, b"\xff" * size)
    new = pipe.read(size)
    m.check()
    check(new == old, "Leak from parent into child")


@scenario("S4", "cow-vmsplice-unmap-child-mprotect",
          "vmsplice() + unmap in child with mprotect() optimization", bug="B2",
          backings=_backings(("5.7", "5.7,5.9-5.17"), "5.7,5.9-5.17", "5.7", bug_thp="B2a",
                             partial_mremap_THP=_MREMAP_HALF, hugetlb=_B2B_SHARED, bug_hugetlb="B2b"))
def vmsplice_unmap_child_mprotect(m, backing="base"):
    """As S3; 6.0+'s mprotect must not upgrade the no longer exclusive page."""
    vmsplice_unmap_child(m, mprotect=True, backing=backing)


@scenario("S5", "cow-vmsplice-before-fork", "vmsplice() before fork(), unmap in parent after fork()",
          bug="B2", backings=_backings(("5.7-5.8", "5.7-5.8"), "5.7-5.17", "5.7-5.8", bug_thp="B2a",
                                       partial_mremap_THP=_MREMAP_HALF, hugetlb=_B2B, bug_hugetlb="B2b"))
def vmsplice_before_fork(m, backing="base"):
    """If the child reuses the page the parent's pipe holds, the pipe leaks the child's write."""
    p = m.spawn()
    P, size = _anon_mem(p, backing)
    old = p.read(P, size)
    pipe = p.vmsplice(P, size)
    c = p.fork()
    p.munmap(P, _span(backing, size))
    c.write(P, b"\xff" * size)
    new = pipe.read(size)
    m.check()
    check(new == old, "Leak from child into parent")


# base-swapped: scenarios.md guesses [~] a 5.9-5.17 leak through do_swap_page's
# reuse_swap_page. That needs the swap entry to be shared at fork; but the test
# (like cow.c's do_test_vmsplice_in_parent) reads `old` from the mapping
# before fork, which swaps the page in, so fork shares a present page and
# 5.9's refcount rule copies: only 5.7 leaks. (S3/S4 read in the child after
# fork and do leak on 5.9-5.17.)
@scenario("S6", "cow-vmsplice-after-fork", "vmsplice() + unmap in parent after fork()",
          bug="B2", backings=_backings(("5.7", "5.7"), "5.7,5.9-5.17", "5.7", bug_thp="B2a",
                                       partial_mremap_THP=_MREMAP_HALF, hugetlb=_B2B_SHARED, bug_hugetlb="B2b"))
def vmsplice_after_fork(m, backing="base"):
    """If the child reuses the shared page the parent spliced, the pipe leaks the child's write."""
    p = m.spawn()
    P, size = _anon_mem(p, backing)
    old = p.read(P, size)
    c = p.fork()
    pipe = p.vmsplice(P, size)
    p.munmap(P, _span(backing, size))
    c.write(P, b"\xff" * size)
    new = pipe.read(size)
    m.check()
    check(new == old, "Leak from child into parent")


@scenario("S7", "cow-iouring-ro-map", "R/O-mapping a page registered as iouring fixed buffer",
          bug="B7", backings=_backings(("5.9-5.18", "5.9-5.18"), "5.18", "5.9-5.18"))
def iouring_ro_map(m, backing="base"):
    """If the write fault copies the pinned page, the fixed buffer no longer is the process's memory."""
    p = m.spawn()
    P, size = _anon_mem(p, backing)
    pin = p.pin_user_pages(P, size // PAGE, C.FOLL_WRITE | C.FOLL_LONGTERM)   # io_uring register
    _mprotect_dance(p, P, clear_refs=True, size=_span(backing, size))
    p.write(P, b"\xff" * size)
    m.check()
    check(pin.read(0, size) == p.read(P, size), "Longterm R/W pin is not reliable")
    pin.release()
    m.check()


@scenario("S8", "cow-iouring-fork", "fork() with an iouring fixed buffer", bug="B6",
          backings=_backings(("5.7-5.8", "5.7-5.8"), "5.7-5.8", "5.7-5.8", hugetlb="5.7-5.11"))
def iouring_fork(m, backing="base"):
    """If fork shares the pinned page, the parent's write COWs away from the fixed buffer."""
    p = m.spawn()
    P, size = _anon_mem(p, backing)
    pin = p.pin_user_pages(P, size // PAGE, C.FOLL_WRITE | C.FOLL_LONGTERM)
    pfn = p.pagemap(P).pfn
    c = p.fork()
    p.write(P, b"\xff" * size)
    check(c.read(P, size) == b"\x01" * size, "Leak from parent into child")
    m.check()
    check(pin.read(0, size) == p.read(P, size), "Longterm R/W pin is not reliable")
    check(p.pagemap(P).pfn == pfn, "the parent no longer maps the pinned page")
    pin.release()


def _ro_pin_case(m, share, fast, backing):
    p = m.spawn()
    P = _anon_page(p, backing=backing)
    if share == "shared":
        c = p.fork()
    elif share == "previously-shared":
        p.fork().exit()
    else:
        _mprotect_dance(p, P, clear_refs=True)
    pin_fn = p.pin_user_pages_fast if fast else p.pin_user_pages
    pin = pin_fn(P, 1, C.FOLL_LONGTERM)
    p.write(P, FFS)
    m.check()
    check(pin.read(0, PAGE) == p.read(P, PAGE), "Longterm R/O pin is not reliable")
    pin.release()
    if share == "shared":
        check(c.read(P, PAGE) == ONES, "Leak from parent into child")
    m.check()


@scenario("S9", "cow-ro-pin-shared", "R/O GUP pin on R/O-mapped shared page",
          bug="B5",
          backings={"base": "5.7,5.9-5.18", "base-swapped": "5.7,5.9-5.18"})
def ro_pin_shared(m, backing="base"):
    """If the pin is not unshared first, the owner's write COWs away from it."""
    _ro_pin_case(m, "shared", fast=False, backing=backing)


@scenario("S10", "cow-ro-pin-fast-shared", "R/O GUP-fast pin on R/O-mapped shared page",
          bug="B5",
          backings={"base": "5.7,5.9-5.18", "base-swapped": "5.7,5.9-5.18"})
def ro_pin_fast_shared(m, backing="base"):
    """As S9 through GUP-fast, which must fall back to the slow path to unshare."""
    _ro_pin_case(m, "shared", fast=True, backing=backing)


@scenario("S11", "cow-ro-pin-previously-shared", "R/O GUP pin on R/O-mapped previously-shared page",
          bug="B5",
          backings={"base": "5.9-5.18", "base-swapped": "5.9-5.18"})
def ro_pin_prev_shared(m, backing="base"):
    """If the refcount rule copies the pinned page, the pin goes stale."""
    _ro_pin_case(m, "previously-shared", fast=False, backing=backing)


@scenario("S12", "cow-ro-pin-fast-previously-shared",
          "R/O GUP-fast pin on R/O-mapped previously-shared page", bug="B5",
          backings={"base": "5.9-5.18", "base-swapped": "5.9-5.18"})
def ro_pin_fast_prev_shared(m, backing="base"):
    """As S11 through GUP-fast."""
    _ro_pin_case(m, "previously-shared", fast=True, backing=backing)


@scenario("S13", "cow-ro-pin-exclusive", "R/O GUP pin on R/O-mapped exclusive page",
          bug="B5",
          backings={"base": "5.9-5.18", "base-swapped": "5.9-5.18"})
def ro_pin_exclusive(m, backing="base"):
    """If the write fault copies an exclusive pinned page, the pin goes stale."""
    _ro_pin_case(m, "exclusive", fast=False, backing=backing)


@scenario("S14", "cow-ro-pin-fast-exclusive", "R/O GUP-fast pin on R/O-mapped exclusive page",
          bug="B5",
          backings={"base": "5.9-5.18", "base-swapped": "5.9-5.18"})
def ro_pin_fast_exclusive(m, backing="base"):
    """As S13 through GUP-fast."""
    _ro_pin_case(m, "exclusive", fast=True, backing=backing)


# ---- Part B: THP collapse (cow.c do_test_anon_thp_collapse) -----------------

def _needs_collapse(policy):
    if not policy.madv_collapse:
        return absent("MADV_COLLAPSE arrives in 6.1 (7d8faaf15545)")
    return None


def _collapse(p, mem, size):
    try:
        p.madvise(mem, size, C.MADV_COLLAPSE)
    except OSError as e:
        # cow.c skips the case when the collapse fails; so does the scenario,
        # on the engine and on a real kernel alike.
        raise ScenarioSkip(f"MADV_COLLAPSE failed: {e.strerror}") from None


def _anon_thp_collapse(m, how):
    """cow.c: a PTE-mapped THP of 1s, collapsed before fork (unshared) or
    after it with all, the lower or the upper half COW-shared; the parent
    then writes 0xff over it, and the child must still read 1s."""
    p = m.spawn()
    mem, size = _thp_mem(p, "PTE-THP")
    half = size // 2
    if how == "unshared":
        _collapse(p, mem, size)
    elif how == "lower":
        p.madvise(mem + half, half, C.MADV_DONTFORK)
    elif how == "upper":
        p.madvise(mem, half, C.MADV_DONTFORK)
    c = p.fork()
    shared = {"unshared": (mem, size), "fully": (mem, size), "lower": (mem, half),
              "upper": (mem + half, half)}[how]
    old = c.read(*shared)
    if how in ("lower", "upper"):
        p.madvise(mem, size, C.MADV_DOFORK)       # the VMAs merge again, so it can collapse
    if how != "unshared":
        _collapse(p, mem, size)                   # before anyone modified the shared pages
    p.write(mem, b"\xff" * size)
    check(c.read(*shared) == old, "Leak from parent into child")
    m.check()


@scenario("S16", "cow-thp-collapse-before-fork", "Basic COW after fork() when collapsing before fork()",
          backing="PTE-THP", needs=_needs_collapse)
def thp_collapse_unshared(m):
    """A collapse must leave an exclusive THP that fork then shares as any other."""
    _anon_thp_collapse(m, "unshared")


@scenario("S17", "cow-thp-collapse-fully-shared",
          "Basic COW after fork() when collapsing after fork() (fully shared)",
          backing="PTE-THP", needs=_needs_collapse)
def thp_collapse_fully_shared(m):
    """An in-place collapse of COW-shared pages would let the parent's write reach the child."""
    _anon_thp_collapse(m, "fully")


@scenario("S18", "cow-thp-collapse-lower-shared",
          "Basic COW after fork() when collapsing after fork() (lower shared)",
          backing="PTE-THP", needs=_needs_collapse)
def thp_collapse_lower_shared(m):
    """Half the folio COW-shared: the collapse must copy, not reuse, the shared half."""
    _anon_thp_collapse(m, "lower")


@scenario("S19", "cow-thp-collapse-upper-shared",
          "Basic COW after fork() when collapsing after fork() (upper shared)",
          backing="PTE-THP", needs=_needs_collapse)
def thp_collapse_upper_shared(m):
    """The mirror image of S18."""
    _anon_thp_collapse(m, "upper")


# ---- Part C: non-anonymous pages (cow.c run_with_zeropage, ---------------
# run_with_huge_zeropage, run_with_memfd_hugetlb)

def _zeropage(p):
    mem = p.mmap(0, PAGE, RW, PRIV)
    smem = p.mmap(0, PAGE, RO, PRIV)
    p.read(mem, 1)
    p.read(smem, 1)
    return mem, smem


def _huge_zeropage(p):
    """Two 2 MiB-aligned MADV_HUGEPAGE ranges read: both map the huge zero
    page (skipped where they did not get it: THP or use_zero_page off)."""
    out = []
    for prot in (RW, RO):
        raw = p.mmap(0, 2 * THP, prot, PRIV)
        mem = (raw + THP - 1) & ~(THP - 1)
        p.madvise(mem, THP, C.MADV_HUGEPAGE)
        p.read(mem, 1)
        out.append(mem)
    mem, smem = out
    if p.pagemap(mem).pfn != p.pagemap(smem).pfn or p.pagemap(mem + THP - PAGE).pfn != p.pagemap(mem).pfn + 511:
        raise ScenarioSkip("the reads did not map the huge zero page")
    return mem, smem


def _memfd_hugetlb(size, sizebits):
    """A hugetlbfs memfd of one page, preallocated by fallocate(), mapped
    private (mem, written through) and shared read-only (smem), both
    faulted in: both map the cache page."""
    def pair(p):
        try:
            fd = p.memfd_create("cow", C.MFD_HUGETLB | sizebits)
            p.fallocate(fd, 0, 0, size)         # the page, in the file's cache
            mem = p.mmap(0, size, RW, C.MAP_PRIVATE, fd)
            smem = p.mmap(0, size, RO, C.MAP_SHARED, fd)
            p.read(mem, 1)
            p.read(smem, 1)
        except OSError as e:
            raise ScenarioSkip(f"need free {size >> 20} MiB hugetlb pages: {e.strerror}") from None
        return mem, smem
    return pair


NONANON = {"zeropage": _zeropage, "huge-zeropage": _huge_zeropage,
           "memfd-hugetlb-2M": _memfd_hugetlb(THP, C.MFD_HUGE_2MB),
           "memfd-hugetlb-1G": _memfd_hugetlb(1 << 30, C.MFD_HUGE_1GB)}


def nonanon_basic(m, pair):
    """cow.c's non-anon test_cow(): a write through the private mapping must
    copy, never reach the other mapping of the page."""
    p = m.spawn()
    mem, smem = pair(p)
    check(p.pagemap(mem).pfn == p.pagemap(smem).pfn, "the reads did not map the same page")
    p.write(mem, FFS)
    check(p.read(smem, PAGE) == bytes(PAGE), "Other mapping modified")
    check(p.pagemap(mem).pfn != p.pagemap(smem).pfn, "the write did not COW")
    m.check()


@scenario("S20", "cow-nonanon-basic", "Basic COW", backing="zeropage")
def zeropage_basic(m):
    """If a write to the zero page does not COW, every zero-page mapping sees it."""
    nonanon_basic(m, _zeropage)


def nonanon_ro_pin(m, fast, pair):
    """cow.c's non-anon R/O long-term pin test: `pair(p)` maps mem (private,
    written through) and smem (another mapping of the same page)."""
    p = m.spawn()
    mem, smem = pair(p)
    pin_fn = p.pin_user_pages_fast if fast else p.pin_user_pages
    pin = pin_fn(mem, 1, C.FOLL_LONGTERM)
    p.write(mem, FFS)
    m.check()
    check(pin.read(0, PAGE) == p.read(mem, PAGE), "Longterm R/O pin is not reliable")
    check(p.read(smem, PAGE) == bytes(PAGE), "Other mapping modified")
    pin.release()
    m.check()


@scenario("S21", "cow-nonanon-ro-pin", "R/O longterm GUP pin", backing="zeropage",
          bug="B20", fails="5.7,5.9-6.1")
def zeropage_ro_pin(m):
    """If the long-term pin takes the zero page itself, the owner's write COWs away from it."""
    nonanon_ro_pin(m, False, _zeropage)


@scenario("S22", "cow-nonanon-ro-pin-fast", "R/O longterm GUP-fast pin", backing="zeropage",
          bug="B20", fails="5.7,5.9-6.1")
def zeropage_ro_pin_fast(m):
    """As S21 through GUP-fast (no VMA: must fall back to unshare)."""
    nonanon_ro_pin(m, True, _zeropage)


# The same three on the huge zero page and on a hugetlb memfd's page. A R/O
# long-term pin of a non-anon page of a COW mapping is unshared (a private
# anon copy) from 84209e87c696 (6.2), hugetlb included (hugetlb_wp's unshare
# of a page-cache folio); 5.8's forced COW in GUP copied it too. Elsewhere
# the pin keeps the shared page and the owner's write COWs away from it (B20).
def _register_nonanon(backing, pair):
    scenario(f"S20/{backing}", "cow-nonanon-basic", "Basic COW", backing=backing)(
        lambda m: nonanon_basic(m, pair))
    scenario(f"S21/{backing}", "cow-nonanon-ro-pin", "R/O longterm GUP pin", backing=backing,
             bug="B20", fails="5.7,5.9-6.1")(lambda m: nonanon_ro_pin(m, False, pair))
    scenario(f"S22/{backing}", "cow-nonanon-ro-pin-fast", "R/O longterm GUP-fast pin", backing=backing,
             bug="B20", fails="5.7,5.9-6.1")(lambda m: nonanon_ro_pin(m, True, pair))


for _b in ("huge-zeropage", "memfd-hugetlb-2M", "memfd-hugetlb-1G"):
    _register_nonanon(_b, NONANON[_b])


# ---- Part E: historical bugs ----------------------------------------------

@scenario("S43", "cve-2020-29374-snoop", "CVE-2020-29374: a child snoops the parent's future writes",
          bug="B2", fails="5.7")
def cve_2020_29374(m):
    """If the parent reuses the page the child's pipe references, the child reads the secret."""
    secret = b"S3CR3T-0123456789"
    p = m.spawn()
    P = p.mmap(0, PAGE, RW, PRIV)
    p.write(P, b"\0")
    c = p.fork()
    pipe = c.vmsplice(P, PAGE)
    c.madvise(P, PAGE, C.MADV_DONTNEED)
    p.write(P, secret)
    leak = pipe.read(PAGE)
    m.check()
    check(not leak.startswith(secret), "the child's pipe read the parent's secret")


@scenario("S43c", "cve-2020-29374-control", "CVE-2020-29374 control: the child keeps its mapping")
def cve_2020_29374_control(m):
    """With the child still mapping the page (mapcount 2) the parent copies in every era."""
    secret = b"S3CR3T-0123456789"
    p = m.spawn()
    P = p.mmap(0, PAGE, RW, PRIV)
    p.write(P, b"\0")
    c = p.fork()
    pipe = c.vmsplice(P, PAGE)
    p.write(P, secret)
    check(not pipe.read(PAGE).startswith(secret), "the child's pipe read the parent's secret")
    check(c.read(P, len(secret)) == bytes(len(secret)), "Leak from parent into child")
    m.check()


@scenario("S45b", "forced-cow-populates-zero-page",
          "read-GUP (vmsplice) of a zero-page mapping must not allocate", bug="B4", fails="5.8")
def forced_cow_zero_page(m):
    """5.8 turns the read GUP into a write: the zero page is replaced by a new anon page."""
    p = m.spawn()
    Z = p.mmap(0, PAGE, RW, PRIV)
    Y = p.mmap(0, PAGE, RW, PRIV)
    p.read(Z, 1)
    p.read(Y, 1)
    zero_pfn = p.pagemap(Y).pfn
    rss = p.rss_anon
    pipe = p.vmsplice(Z, PAGE)
    check(pipe.read(PAGE) == bytes(PAGE), "the pipe must read zeros")
    m.check()
    check(p.pagemap(Z).pfn == zero_pfn and p.rss_anon == rss,
          "vmsplice replaced the zero page with a private anon page")


def _needs_soft_dirty(policy):
    # A kernel config (a host built without it), not a version: a skip, not n/a.
    return None if policy.soft_dirty else "CONFIG_MEM_SOFT_DIRTY is off: clear_refs 4 does nothing"


@scenario("S48c", "clear-refs-pinned-write", "clear_refs(4) + write on a page with a R/W long-term pin",
          bug="B7", fails="5.9-5.10", needs=_needs_soft_dirty)
def clear_refs_pinned_write(m):
    """If clear_refs write-protects a pinned page, the refcount rule copies it
    on the next write and the pin goes stale (5.11's 9348b73c2e1b skips it)."""
    p = m.spawn()
    P = _anon_page(p)
    pin = p.pin_user_pages(P, 1, C.FOLL_WRITE | C.FOLL_LONGTERM)
    p.clear_refs(C.CLEAR_REFS_SOFT_DIRTY)
    if m.policy.clear_refs_skip_pinned:
        check(p.pagemap(P).soft_dirty, "5.11+: a pinned pte is skipped and stays soft-dirty")
    else:
        check(not p.pagemap(P).soft_dirty, "before 5.11 clear_refs cleans every pte")
    # The write comes from another CPU: before 5.12 clear_refs flushed no
    # TLB (B10), and this CPU's writable entry would let it skip the fault.
    p.thread(cpu=1 % m.ncpus).write(P, FFS)
    m.check()
    check(pin.read(0, PAGE) == p.read(P, PAGE), "Longterm R/W pin is not reliable")
    pin.release()


@scenario("S53", "spurious-cow-fresh-page", "Spurious COW of a fresh page (per-CPU LRU batch)",
          bug="B19", fails="5.9-5.17")
def spurious_cow_fresh_page(m):
    """If the LRU batch reference counts as a user, the owner's own page gets copied."""
    p = m.spawn()
    P = p.mmap(0, PAGE, RW, PRIV)
    p.write(P, b"\x01")
    pfn0 = p.pagemap(P).pfn
    _mprotect_dance(p, P)
    p.write(P, b"\x02")
    m.check()
    check(p.pagemap(P).pfn == pfn0, "the write fault copied the process's own exclusive page")


@scenario("S75", "mprotect-write-upgrade", "mprotect write-upgrade per era")
def mprotect_upgrade(m):
    """6.0+ maps an exclusive anon pte writable on mprotect(RW), and only such a pte."""
    p = m.spawn()
    P = p.mmap(0, PAGE, RW, PRIV)
    p.write(P, b"\x01")
    upgrade = bool(m.policy.mprotect_upgrade)

    def faults_of_write(value):
        p.mprotect(P, PAGE, RO)
        p.mprotect(P, PAGE, RW)
        f0 = p.minflt
        p.write(P, value)
        return p.minflt - f0

    # (a)/(b): an exclusive page.
    check(faults_of_write(b"\x02") == (0 if upgrade else 1),
          "write after mprotect(RO/RW) of an exclusive page: wrong number of faults")
    # (c): soft-dirty tracking blocks the upgrade (where the kernel has soft-dirty).
    p.clear_refs(C.CLEAR_REFS_SOFT_DIRTY)
    tracking = bool(m.policy.soft_dirty)
    check(faults_of_write(b"\x03") == (1 if (tracking or not upgrade) else 0),
          "write after clear_refs + mprotect: wrong number of faults")
    # (d): after fork + child exit the page is no longer exclusive: never upgraded.
    p.fork().exit()
    check(faults_of_write(b"\x04") == 1, "a no longer exclusive page was upgraded")
    check(p.read(P, 1) == b"\x04", "lost write")
    m.check()


@scenario("S80", "wipeonfork-dontfork", "WIPEONFORK and DONTFORK")
def wipeonfork_dontfork(m):
    """The child must read zeros from a WIPEONFORK range and fault on a DONTFORK one."""
    p = m.spawn()
    A = _anon_page(p, b"\x07" * PAGE)
    B = _anon_page(p, b"\x07" * PAGE)
    p.madvise(A, PAGE, C.MADV_WIPEONFORK)
    p.madvise(B, PAGE, C.MADV_DONTFORK)
    c = p.fork()
    check(c.read(A, PAGE) == bytes(PAGE), "WIPEONFORK memory was copied into the child")
    try:
        c.read(B, 1)
    except Sigsegv:
        pass
    else:
        raise AssertionError("DONTFORK memory is mapped in the child")
    check(p.read(A, 1) == b"\x07" and p.read(B, 1) == b"\x07", "the parent lost its data")
    p.madvise(A, PAGE, C.MADV_KEEPONFORK)
    p.madvise(B, PAGE, C.MADV_DOFORK)
    c2 = p.fork()
    check(c2.read(A, 1) == b"\x07" and c2.read(B, 1) == b"\x07", "KEEPONFORK/DOFORK did not undo")
    m.check()


@scenario("S84", "foll-force-cow", "FOLL_FORCE writes (/proc/pid/mem) into a COW-shared R/O page")
def foll_force_write(m):
    """A debugger's write must land in a private copy: never in the child's page."""
    p = m.spawn()
    P = _anon_page(p, b"\xaa" * PAGE)
    p.mprotect(P, PAGE, RO)
    c = p.fork()
    p.proc_mem_write(P, b"\xcc")
    check(p.read(P, 1) == b"\xcc", "the forced write is not visible to the writer")
    check(c.read(P, 1) == b"\xaa", "the forced write leaked into the child")
    check(p.pagemap(P).exclusive, "the forced write did not give the writer a private page")
    f0 = p.minflt
    p.proc_mem_write(P, b"\xdd")
    check(p.read(P, 1) == b"\xdd" and c.read(P, 1) == b"\xaa", "second forced write")
    if m.policy.foll_cow_rule == FOLL_FORCE_ANON_EXCLUSIVE:
        # 5535be309971: the exclusive anon page is followed without a fault.
        check(p.minflt == f0, "6.0+ faulted again on a forced write to an exclusive page")
    try:
        p.write(P, b"\x00")
    except Sigsegv:
        pass
    else:
        raise AssertionError("a user write to the PROT_READ mapping succeeded")
    m.check()
