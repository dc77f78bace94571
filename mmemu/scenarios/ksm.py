"""KSM scenarios: S76 of ../shared/reference/scenarios.md (semantics.md 3.5
and 13), one rule per case, each with the versions where the modern
outcome does not hold.

ksmd is Machine.ksm_scan(): a page joins the unstable tree only once its
checksum held over a full scan, so two identical pages merge on the second
full scan (`_settle` runs two).
"""
from .. import constants as C
from . import ScenarioSkip, check, scenario

PAGE = C.PAGE_SIZE
RW = C.PROT_READ | C.PROT_WRITE
PRIV = C.MAP_PRIVATE | C.MAP_ANONYMOUS
SAME = b"\x5a" * 100 + b"\x01" * (PAGE - 100)       # byte-exact, not a repeated pattern


def _ksmd(m):
    # A real kernel's ksmd runs on its own clock, in a system-wide scan: no
    # deterministic pass to wait for, so only the engine runs these cases.
    if not hasattr(m, "ksm_scan"):
        raise ScenarioSkip("ksmd cannot be driven one deterministic pass at a time on this machine")


def _settle(m):
    # Two full scans: the first records checksums, the second merges.
    _ksmd(m)
    m.ksm_scan()
    m.ksm_scan()


def _pair(m, npages=2):
    _ksmd(m)
    p = m.spawn()
    base = p.mmap(0, npages * PAGE, RW, PRIV)
    p.madvise(base, npages * PAGE, C.MADV_MERGEABLE)
    for i in range(npages):
        p.write(base + i * PAGE, SAME)
    return p, base


def _merged(m, p, a, b):
    ea, eb = p.pagemap(a), p.pagemap(b)
    return ea.pfn == eb.pfn and "ksm" in m.frame(ea.pfn).flags


@scenario("S76", "ksm-merge-then-write-cows", "KSM merge, write, and pins (merge, R/O, COW)")
def ksm_merge_write(m):
    """If KSM left a page writable or exclusive, a write through one mapping
    would change the other process's view of the shared page."""
    p, A = _pair(m)
    B = A + PAGE
    _settle(m)
    check(_merged(m, p, A, B), "two identical pages of a MADV_MERGEABLE VMA were not merged")
    check(not p.pagemap(A).exclusive and not p.pagemap(B).exclusive,
          "a KSM page mapped twice reads as exclusive in pagemap")
    check(m.ksm_stats()["pages_shared"] == 1 and m.ksm_stats()["pages_sharing"] == 1,
          f"counters after one merge: {m.ksm_stats()}")
    kpfn, f0 = p.pagemap(B).pfn, p.minflt
    p.write(A, b"\x02")
    m.check()
    check(p.minflt == f0 + 1, "the write to a KSM mapping did not fault: the pte was writable")
    check(p.pagemap(A).pfn != kpfn, "the write to a KSM page did not copy it")
    check(p.read(B, 101) == SAME[:101], "the other mapping of the KSM page saw the write")


@scenario("S76b", "ksm-write-sole-mapping-copies", "KSM: a write always copies (E2+; E0 reuse_ksm_page)",
          fails="5.7-5.8")
def ksm_write_sole(m):
    """A KSM page whose other mappings are gone is reused by a write up to 5.8
    (reuse_ksm_page, refcount 1); from 5.9 (09854ba94c6a) it is always copied."""
    p, A = _pair(m)
    B = A + PAGE
    _settle(m)
    check(_merged(m, p, A, B), "not merged")
    p.write(A, b"\x02")                 # A gets its own copy; B is the KSM page's only mapping
    kpfn = p.pagemap(B).pfn
    p.write(B, b"\x03")
    m.check()
    check(p.pagemap(B).pfn != kpfn, "a write reused the KSM page instead of copying it")


@scenario("S76c", "ksm-pinned-never-merged", "KSM: a page with a GUP reference or pin is never merged")
def ksm_pinned(m):
    """write_protect_page() compares refcount with mapcount: if a pinned page
    were merged, the pin would keep writing into a page the process left."""
    p, A = _pair(m, 3)
    B, D = A + PAGE, A + 2 * PAGE
    pin = p.pin_user_pages(A, 1, C.FOLL_WRITE | C.FOLL_LONGTERM)
    ref = p.get_user_pages(D, 1)
    _settle(m)
    m.check()
    check(p.pagemap(A).pfn == pin.pfns[0], "the pinned page lost its mapping")
    check(p.pagemap(A).pfn != p.pagemap(B).pfn, "a FOLL_PIN'ed page was merged")
    check(p.pagemap(D).pfn != p.pagemap(B).pfn, "a page with a FOLL_GET reference was merged")
    pin.release()
    ref.release()
    _settle(m)
    check(_merged(m, p, A, B) and _merged(m, p, A, D), "unpinned identical pages were not merged")


@scenario("S76d", "ksm-ro-pin-unshares", "KSM: a R/O FOLL_PIN of a KSM page gets a private copy",
          bug="B5", fails="5.7,5.9-5.18")
def ksm_ro_pin(m):
    """KSM pages are never exclusive: a R/O pin must unshare (gup_must_unshare,
    a7f226604170), or it stays on the KSM page while the process COWs away."""
    p, A = _pair(m)
    B = A + PAGE
    _settle(m)
    check(_merged(m, p, A, B), "not merged")
    kpfn = p.pagemap(A).pfn
    pin = p.pin_user_pages(A, 1, C.FOLL_LONGTERM)
    m.check()
    ok = pin.pfns[0] != kpfn and p.pagemap(A).pfn == pin.pfns[0]
    pin.release()
    check(ok, "the R/O pin holds the KSM page: a later write through A would leave it behind")


@scenario("S76e", "ksm-unmergeable-unshares-ro", "KSM: MADV_UNMERGEABLE unshares (R/O copies, 6.2+)",
          fails="<6.2")
def ksm_unmerge(m):
    """break_ksm() since 6cce3314b928 (6.2) takes an unshare fault: each
    mapping gets a private R/O copy and the next write faults once; before,
    a write fault left the copies writable (and in a uffd-wp range failed)."""
    p, A = _pair(m)
    B = A + PAGE
    _settle(m)
    check(_merged(m, p, A, B), "not merged")
    kpfn = p.pagemap(A).pfn
    p.madvise(A, 2 * PAGE, C.MADV_UNMERGEABLE)
    m.check()
    pa, pb = p.pagemap(A).pfn, p.pagemap(B).pfn
    check(kpfn not in (pa, pb) and pa != pb, "MADV_UNMERGEABLE left a KSM page mapped")
    check(p.read(A, 101) == SAME[:101], "unsharing lost the contents")
    f0 = p.minflt
    p.write(A, b"\x02")
    check(p.minflt == f0 + 1, "the unshared copy was mapped writable (a write-fault break_ksm)")


@scenario("S76f", "ksm-checksum-gates-stable-merge", "KSM: a new page joins a KSM page only after a "
          "stable checksum (6.11+)", fails="<6.11")
def ksm_checksum_first(m):
    """d58a361b0350 (6.11) checks the checksum before the stable tree search:
    a third identical page is merged on its second scan, not its first."""
    p, A = _pair(m, 3)
    B, D = A + PAGE, A + 2 * PAGE
    p.write(D, b"\x00")                 # differs for now
    _settle(m)
    check(_merged(m, p, A, B), "not merged")
    p.write(D, SAME[:1])                # now identical to the KSM page
    m.ksm_scan()
    check(not _merged(m, p, A, D), "a page merged into the KSM page on the first scan that saw it")
    m.ksm_scan()
    check(_merged(m, p, A, D), "a page identical to a KSM page was not merged on its second scan")
