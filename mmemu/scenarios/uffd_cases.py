"""userfaultfd scenarios: tools/testing/selftests/mm/uffd-unit-tests.c and
the uffd cases of the catalogue.

Catalogue ids and per-era outcomes are ../shared/reference/scenarios.md's:
S23-S42 (uffd-unit-tests), S44 (B3), S54 (B12), S55 and S31/S32 (B13), S56
(B14), S57 (B15), S58 (B23), S59, S63-S74, S81, S82, S85; the rules are
semantics.md 8, 9, 10 and 18. Each case is a small program against the
public API: a thread whose access waits on a userfaultfd raises WouldBlock
(read the context, resolve, then resume()), or a service handler
(Uffd.serve) resolves it as the monitor thread would.

Memory types as in uffd-unit-tests: anon, shmem (memfd MAP_SHARED),
shmem-private (memfd MAP_PRIVATE), hugetlb and hugetlb-private (a
memfd(MFD_HUGETLB) of 2 MiB pages mapped MAP_SHARED or MAP_PRIVATE, as
uffd-common.c's hugetlb_allocate_area; a machine with a pool of them,
BACKING_MACHINE). On hugetlb a case's page is the huge page, as
uffd-unit-tests' page_size is. `fails=` lists the versions where the bug a
case probes reproduces; `needs=` skips, with a reason, the versions that
lack the interface.
"""
import errno
import functools
import itertools

from .. import constants as C
from .. import uffd as U
from ..errors import Deadlock, EmulatedSignal, Sigbus, WouldBlock
from . import ScenarioFailure, ScenarioSkip, absent, check, scenario

PAGE = C.PAGE_SIZE
RW = C.PROT_READ | C.PROT_WRITE
RO = C.PROT_READ
PRIV = C.MAP_PRIVATE | C.MAP_ANONYMOUS
MEM_ALL = ("anon", "shmem", "shmem-private", "hugetlb", "hugetlb-private")
HUGETLB = ("hugetlb", "hugetlb-private")
HPAGE = 2 << 20

MISSING = U.UFFDIO_REGISTER_MODE_MISSING
WP = U.UFFDIO_REGISTER_MODE_WP
MINOR = U.UFFDIO_REGISTER_MODE_MINOR
F_WP = U.UFFD_FEATURE_PAGEFAULT_FLAG_WP
PF = U.UFFD_EVENT_PAGEFAULT
FLAG_WRITE = U.UFFD_PAGEFAULT_FLAG_WRITE
FLAG_WP = U.UFFD_PAGEFAULT_FLAG_WP
FLAG_MINOR = U.UFFD_PAGEFAULT_FLAG_MINOR
PROTECT = U.UFFDIO_WRITEPROTECT_MODE_WP

_FEATURE_NAMES = {v: k[len("UFFD_FEATURE_"):] for k, v in vars(U).items()
                  if k.startswith("UFFD_FEATURE_")}


def _page(n, i=0, size=PAGE):
    """A recognisable page: byte n+1 ... (never all zero)."""
    return bytes([(n + i) % 255 + 1]) * size


def _psize(backing):
    """The case's page: the huge page on hugetlb (uffd-unit-tests' page_size)."""
    return HPAGE if backing in HUGETLB else PAGE


def _shared(backing):
    return backing in ("shmem", "hugetlb")


# ---- registration -----------------------------------------------------------------

def _outcome(func):
    """An emulated outcome the program did not expect is the case failing, not
    an engine error: blocking where Linux does not wait, a hang, a signal, a
    syscall error."""
    @functools.wraps(func)
    def run(m, **kw):
        try:
            return func(m, **kw)
        except WouldBlock as e:
            raise ScenarioFailure(f"an access waits on a userfaultfd where it should not: {e}") from e
        except Deadlock as e:
            raise ScenarioFailure(f"the program hangs: {e}") from e
        except EmulatedSignal as e:
            raise ScenarioFailure(f"unexpected {type(e).__name__}: {e}") from e
        except OSError as e:
            raise ScenarioFailure(f"unexpected error: {e}") from e
    return run


def uffd_scenario(id, name, title, backings=("anon",), bug="", fails="", needs=None):
    """Register func(machine, backing) once per memory type, each with its own
    `fails` spec ({backing: spec} or one spec for all) and its own skip
    reason (needs(policy, backing))."""
    def register(func):
        body = _outcome(func)
        why = (func.__doc__ or "").strip()
        for b in backings:
            spec = fails.get(b, "") if isinstance(fails, dict) else fails
            sid = id if len(backings) == 1 else f"{id}/{b}"
            need = None if needs is None else (lambda nd, bb: lambda pol: nd(pol, bb))(needs, b)
            bound = (lambda fn, bb: lambda m: fn(m, backing=bb))(body, b)
            scenario(sid, name, title, bug=bug, fails=spec, backing=b, needs=need, why=why)(bound)
        return func
    return register


def needs(*features, wp=False, minor=False, pagemap_wp=False, user_mode_only=False, populate=False,
          release=False, mremap=False):
    """needs(policy, backing): the reason this era cannot run the case, or None.
    wp/minor: the case registers that mode on its memory type; release: it
    releases private pages with MADV_DONTNEED (uffd-common.c release_pages);
    mremap: it moves the area."""
    def need(pol, backing):
        # Every reason is the version lacking an interface: an n/a cell.
        for bit in features:
            if not pol.uffd_features & bit:
                return absent(f"{pol.version} has no UFFD_FEATURE_{_FEATURE_NAMES[bit]}")
        if wp and backing != "anon" and not pol.uffd_wp_file:
            return absent("uffd-wp on shmem and hugetlb needs PTE markers (5.19, 1db9dbc2ef05)")
        if minor and backing in HUGETLB and not pol.uffd_features & U.UFFD_FEATURE_MINOR_HUGETLBFS:
            return absent("MINOR faults on hugetlb arrive in 5.13 (7677f7fd8be7)")
        if minor and backing not in HUGETLB and not pol.uffd_features & U.UFFD_FEATURE_MINOR_SHMEM:
            return absent("MINOR faults on shmem arrive in 5.14 (c949b097ef2e)")
        if release and backing == "hugetlb-private" and not pol.hugetlb_dontneed:
            return absent("MADV_DONTNEED on hugetlb arrives in 5.18 (90e7e7f5ef3f)")
        if mremap and backing in HUGETLB and not pol.hugetlb_mremap:
            return absent("mremap of hugetlb arrives in 5.16 (550a7d60bd5e)")
        if pagemap_wp and not pol.pm_uffd_wp:
            return absent("pagemap has no uffd-wp bit (PM_UFFD_WP, 5.14)")
        if user_mode_only and not pol.uffd_user_mode_only:
            return absent("UFFD_USER_MODE_ONLY arrives in 5.11")
        if populate and not pol.madv_populate:
            return absent("MADV_POPULATE_(READ|WRITE) arrive in 5.14")
        return None
    return need


# ---- small program helpers ----------------------------------------------------------

class _Area:
    def __init__(self, addr, fd=None, alias=None):
        self.addr, self.fd, self.alias = addr, fd, alias


def _area(p, backing, npages, alias=False, prot=RW):
    """npages (of _psize(backing)) of the memory type; shmem and hugetlb
    types get a memfd (and optionally a MAP_SHARED alias of it, as
    uffd-common.c's area_dst_alias)."""
    if backing == "anon":
        return _Area(p.mmap(0, npages * PAGE, prot, PRIV))
    size = npages * _psize(backing)
    fd = p.memfd_create("uffd-test", C.MFD_HUGETLB if backing in HUGETLB else 0)
    p.ftruncate(fd, size)
    flags = C.MAP_SHARED if _shared(backing) else C.MAP_PRIVATE
    try:
        addr = p.mmap(0, size, prot, flags, fd, 0)
        al = p.mmap(0, size, RW, C.MAP_SHARED, fd, 0) if alias else None
    except OSError as e:
        if backing not in HUGETLB or e.errno != errno.ENOMEM:
            raise
        # (a host without free huge pages for the reservation)
        raise ScenarioSkip(f"need {npages} free 2 MiB hugetlb pages: {e.strerror}") from None
    return _Area(addr, fd, al)


def _release(p, addr, length, backing):
    """uffd-common.c release_pages: DONTNEED for private memory, REMOVE (a
    hole punch) for shared shmem and hugetlb."""
    p.madvise(addr, length, C.MADV_REMOVE if _shared(backing) else C.MADV_DONTNEED)


def _uffd(p, features=0, flags=U.O_CLOEXEC | U.O_NONBLOCK):
    u = p.userfaultfd(flags)
    u.api(features)
    return u


def _try(call):
    """(result, None) if call() completed, (None, WouldBlock) if the thread waits."""
    try:
        return call(), None
    except WouldBlock as wb:
        return None, wb


def _drain(u):
    """Non-blocking read(2) of everything queued ([] on EAGAIN)."""
    try:
        return u.read()
    except OSError as e:
        if e.errno != errno.EAGAIN:
            raise
        return []


def _errno(err, call, what, result=None):
    """call() must fail with err (and, for range ioctls, that output field)."""
    try:
        call()
    except OSError as e:
        check(e.errno == err, f"{what}: errno {errno.errorcode.get(e.errno, e.errno)}, "
                              f"expected {errno.errorcode[err]}")
        if result is not None:
            check(getattr(e, "result", None) == result,
                  f"{what}: output field {getattr(e, 'result', None)}, expected {result}")
        return e
    raise ScenarioFailure(f"{what} succeeded; expected {errno.errorcode[err]}")


def _one_fault(u, addr, flags, what):
    """The single message queued on u: a page fault at addr with flags."""
    msgs = _drain(u)
    check(len(msgs) == 1, f"{what}: expected one message, got {msgs}")
    msg = msgs[0]
    check(msg.event == PF and msg.address == addr and msg.flags == flags,
          f"{what}: got {msg}, expected a page fault flags={flags:#x} at {addr:#x}")
    return msg


def _waits_for(call, u, event, what):
    """A non-cooperative event blocks the call that generates it until the
    monitor reads it (semantics.md 9.13): read it, resume, return
    (the call's result, the event)."""
    _, wb = _try(call)
    check(wb is not None, f"{what} did not wait for the monitor: no UFFD_EVENT message was queued")
    msgs = _drain(u)
    evs = [x for x in msgs if x.event == event]
    check(len(evs) == 1, f"{what}: expected one event {event:#x}, read {msgs}")
    return wb.thread.resume(), evs[0]


def _fork(p, u=None):
    """fork(); with a context that asked for EVENT_FORK the fork waits until
    the monitor reads UFFD_EVENT_FORK, whose ufd is the child's context.
    Returns (child, child's context or None)."""
    if u is None:
        return p.fork(), None
    child, ev = _waits_for(p.fork, u, U.UFFD_EVENT_FORK, "fork() with EVENT_FORK")
    check(ev.ufd is not None and ev.ufd.process is child,
          "the FORK event must carry a context bound to the child")
    return child, ev.ufd


def _is_zero_page(m, pfn):
    return pfn is not None and "zero_page" in m.frame(pfn).flags


# ---- Part D: uffd-unit-tests.c -------------------------------------------------------

@uffd_scenario("S23", "uffd-api", "UFFDIO_API (with syscall)")
def uffd_api(m, backing):
    """UFFDIO_API must come first, once, with api 0xAA and known features; it
    reports every supported feature and REGISTER|UNREGISTER|API."""
    p = m.spawn()
    u = p.userfaultfd(U.O_CLOEXEC | U.O_NONBLOCK)
    _errno(errno.EINVAL, lambda: u.api(0, api=0xAB), "UFFDIO_API with api 0xab")
    _errno(errno.EINVAL, lambda: u.api(1 << 63), "UFFDIO_API with an unknown feature")
    feats = u.api(0)
    base = 0x1FF        # every feature of 5.7: PAGEFAULT_FLAG_WP ... THREAD_ID
    check(feats & base == base, f"features {feats:#x} miss some of 5.7's {base:#x}")
    need = U.UFFD_API_IOCTLS
    check(u.ioctls & need == need, f"ioctls {u.ioctls:#x} must include REGISTER|UNREGISTER|API")
    _errno(errno.EINVAL, lambda: u.api(F_WP), "a second UFFDIO_API")


@uffd_scenario("S24", "uffd-register-ioctls", "register-ioctls", backings=MEM_ALL)
def register_ioctls(m, backing):
    """Every mode combination: EINVAL for none, MINOR on anon, and modes the
    era lacks on shmem and hugetlb (WP before 5.19; MINOR on shmem before
    5.14, on hugetlb before 5.13); otherwise the reply advertises WAKE and
    COPY, WRITEPROTECT exactly with WP and CONTINUE exactly with MINOR, and
    on hugetlb neither ZEROPAGE nor MOVE (UFFD_API_RANGE_IOCTLS_BASIC).
    Registering hugetlb from or to the middle of a huge page is EINVAL.
    (uffd-unit-tests skips eras without every feature; here each era is
    held to its own rules instead.)"""
    p = m.spawn()
    pol = m.policy
    u = _uffd(p)
    A = _area(p, backing, 1)
    ps = _psize(backing)
    shmem = backing != "anon"
    huge = backing in HUGETLB
    minor_bit = U.UFFD_FEATURE_MINOR_HUGETLBFS if huge else U.UFFD_FEATURE_MINOR_SHMEM
    for miss, wp, minor in itertools.product((0, 1), repeat=3):
        mode = miss * MISSING | wp * WP | minor * MINOR
        bad = (not mode or (minor and (not shmem or not pol.uffd_features & minor_bit))
               or (wp and shmem and not pol.uffd_wp_file))
        if bad:
            _errno(errno.EINVAL, lambda: u.register(A.addr, ps, mode), f"REGISTER mode {mode:#x}")
            continue
        ioctls = u.register(A.addr, ps, mode)
        for nr, name in ((U._UFFDIO_WAKE, "WAKE"), (U._UFFDIO_COPY, "COPY")):
            check(ioctls & 1 << nr, f"mode {mode:#x}: ioctls {ioctls:#x} lack {name}")
        check(bool(ioctls & 1 << U._UFFDIO_ZEROPAGE) != huge,
              f"mode {mode:#x}: ZEROPAGE advertised iff not hugetlb (ioctls {ioctls:#x})")
        check(not (huge and ioctls & 1 << U._UFFDIO_MOVE), f"MOVE advertised on hugetlb (ioctls {ioctls:#x})")
        check(bool(ioctls & 1 << U._UFFDIO_WRITEPROTECT) == bool(wp),
              f"mode {mode:#x}: WRITEPROTECT advertised iff WP mode (ioctls {ioctls:#x})")
        check(bool(ioctls & 1 << U._UFFDIO_CONTINUE) == bool(minor),
              f"mode {mode:#x}: CONTINUE advertised iff MINOR mode (ioctls {ioctls:#x})")
        u.unregister(A.addr, ps)
    if huge:
        _errno(errno.EINVAL, lambda: u.register(A.addr, PAGE, MISSING), "REGISTER ending inside a huge page")
        _errno(errno.EINVAL, lambda: u.register(A.addr + PAGE, ps - PAGE, MISSING),
               "REGISTER starting inside a huge page")


@uffd_scenario("S25", "uffd-zeropage", "zeropage", backings=MEM_ALL)
def zeropage(m, backing):
    """ZEROPAGE fills a missing page with zeros (private mappings: the shared
    zero page, mfill_atomic_pte_zeropage; shmem: a zeroed cache page); a
    second one is EEXIST; a later write COWs off the zero page."""
    p = m.spawn()
    u = _uffd(p)
    A = _area(p, backing, 1)
    if backing in HUGETLB:
        # mfill_atomic_hugetlb(): no zero page for every huge page size, so
        # neither advertised nor accepted (uffd_zeropage_test's !has_zeropage).
        ps = _psize(backing)
        ioctls = u.register(A.addr, ps, MISSING)
        check(not ioctls & 1 << U._UFFDIO_ZEROPAGE, f"ZEROPAGE advertised on hugetlb (ioctls {ioctls:#x})")
        _errno(errno.EINVAL, lambda: u.zeropage(A.addr, ps), "ZEROPAGE into hugetlb", result=-errno.EINVAL)
        check(not p.pagemap(A.addr).present and u.pending() == 0, "the refused ZEROPAGE mapped something")
        return
    ioctls = u.register(A.addr, PAGE, MISSING)
    check(ioctls & 1 << U._UFFDIO_ZEROPAGE, "ZEROPAGE must be advertised")
    check(u.zeropage(A.addr, PAGE) == PAGE, "ZEROPAGE must fill one page")
    check(p.read(A.addr, PAGE) == bytes(PAGE), "the page must read zeros")
    e = p.pagemap(A.addr)
    if backing == "shmem":
        check(e.present and e.file_shared and not _is_zero_page(m, e.pfn),
              "shmem ZEROPAGE allocates a zeroed page-cache page")
    else:
        # mfill_atomic_pte(): every !VM_SHARED VMA, private shmem included,
        # gets mfill_atomic_pte_zeropage (the special zero-page pte).
        check(e.present and _is_zero_page(m, e.pfn) and not e.exclusive,
              f"a private mapping's ZEROPAGE maps the shared zero page (pagemap {e})")
    _errno(errno.EEXIST, lambda: u.zeropage(A.addr, PAGE), "a second ZEROPAGE", result=-errno.EEXIST)
    p.write(A.addr, b"\x01")
    if backing != "shmem":
        check(not _is_zero_page(m, p.pagemap(A.addr).pfn), "the write must COW off the zero page")
    check(u.pending() == 0, "no fault may have been queued")
    u.unregister(A.addr, PAGE)
    m.check()


@uffd_scenario("S26", "uffd-move", "move", needs=needs(U.UFFD_FEATURE_MOVE))
def move(m, backing):
    """Each MISSING fault on dst is resolved by MOVEing the src page: dst
    reads the data in the very same frame, src becomes a hole (zero page)."""
    p = m.spawn()
    n = 8
    src = p.mmap(0, n * PAGE, RW, PRIV)
    p.madvise(src, n * PAGE, C.MADV_NOHUGEPAGE)
    for i in range(n):
        p.write(src + i * PAGE, _page(i))
    p.madvise(src, n * PAGE, C.MADV_DONTFORK)
    pfns = [p.pagemap(src + i * PAGE).pfn for i in range(n)]
    dst = p.mmap(0, n * PAGE, RW, PRIV)
    u = _uffd(p, U.UFFD_FEATURE_MOVE)
    u.register(dst, n * PAGE, MISSING)
    faults = []

    def handler(u, msg):
        check(msg.event == PF and msg.flags == 0, f"expected a read MISSING fault, got {msg}")
        off = msg.address - dst
        check(u.move(msg.address, src + off, PAGE) == PAGE, "MOVE must move one page")
        faults.append(off)
    u.serve(handler)
    for i in range(n):
        check(p.read(dst + i * PAGE, PAGE) == _page(i), f"dst page {i} lost its data")
        check(p.pagemap(dst + i * PAGE).pfn == pfns[i], f"dst page {i} is a copy, not the moved frame")
        check(p.read(src + i * PAGE, PAGE) == bytes(PAGE), f"src page {i} must be a hole now")
    check(len(faults) == n, f"expected {n} MISSING faults, got {len(faults)}")
    m.check()


def _check_child(m, p, u, P, with_event, test_pin=False, what=""):
    """uffd-unit-tests pagemap_test_fork(): the child's pte keeps uffd-wp iff
    its VMA is uffd-wp registered, i.e. with EVENT_FORK. Without the pagemap
    bit (before 5.14) the child's write is the probe: only a wp pte in a wp
    VMA makes it report."""
    c, cu = _fork(p, u if with_event else None)
    pin = None
    if test_pin:
        # The child's R/O pin: 5.19+ unshares the COW-shared page; the copy
        # keeps uffd-wp (wp_page_copy with unshare).
        pin = c.pin_user_pages(P, 1, C.FOLL_LONGTERM)
    if m.policy.pm_uffd_wp:
        seen = c.pagemap(P).uffd_wp
    else:
        _, wb = _try(lambda: c.write(P, b"\x02"))
        seen = wb is not None
        if wb is not None:
            check(wb.uffd is cu and wb.msg.flags == FLAG_WRITE | FLAG_WP,
                  f"{what}: the child's write waits on {wb.uffd} for {wb.msg}")
    if pin is not None:
        pin.release()
    check(seen == with_event, f"{what}: the child's pte {'lost' if with_event else 'kept'} uffd-wp "
                              f"({'with' if with_event else 'without'} EVENT_FORK)")
    c.exit()
    if cu is not None:
        cu.close()


def _wp_fork(m, backing, with_event):
    p = m.spawn()
    u = _uffd(p, F_WP | (U.UFFD_FEATURE_EVENT_FORK if with_event else 0))
    A = _area(p, backing, 1)
    P = A.addr
    ps = _psize(backing)
    u.register(P, ps, WP)
    p.write(P, b"\x01")
    u.writeprotect(P, ps, PROTECT)
    check(p.pagemap(P).uffd_wp, "the protected pte must read uffd-wp")
    _check_child(m, p, u, P, with_event, what="present pte")
    if _shared(backing):
        # zap: a UFFD_WP marker (5.19+; hugetlb: __unmap_hugepage_range)
        p.madvise(P, ps, C.MADV_DONTNEED)
    elif backing == "hugetlb-private":
        # hugetlb is never swapped: PAGEOUT is EINVAL (can_madv_lru_vma),
        # which uffd-unit-tests ignores; the protected page stays mapped.
        _errno(errno.EINVAL, lambda: p.madvise(P, ps, C.MADV_PAGEOUT), "MADV_PAGEOUT of hugetlb")
    else:
        p.madvise(P, PAGE, C.MADV_PAGEOUT)          # the anon (or COWed) page goes to swap
        if not p.pagemap(P).swapped:
            raise ScenarioSkip("MADV_PAGEOUT did not swap the page out")
    check(p.pagemap(P).uffd_wp, "the zapped/swapped entry must keep uffd-wp")
    _check_child(m, p, u, P, with_event, what="zapped/swapped pte")
    u.writeprotect(P, ps, 0)
    check(not p.pagemap(P).uffd_wp, "unprotect must clear the marker / swap bit")
    p.write(P, b"\x02")
    check(not p.pagemap(P).uffd_wp, "the write after unprotect must leave no uffd-wp")
    u.unregister(P, ps)
    m.check()


@uffd_scenario("S29", "uffd-wp-fork", "wp-fork", backings=MEM_ALL, needs=needs(wp=True, pagemap_wp=True))
def wp_fork(m, backing):
    """Without EVENT_FORK the child's VMA is not registered, so its ptes (present,
    swapped, markers) must not carry uffd-wp."""
    _wp_fork(m, backing, with_event=False)


@uffd_scenario("S30", "uffd-wp-fork-with-event", "wp-fork-with-event", backings=MEM_ALL,
               needs=needs(wp=True, pagemap_wp=True))
def wp_fork_event(m, backing):
    """With EVENT_FORK the child's VMA is registered with a new context, so
    uffd-wp survives the fork on present ptes, swap entries and markers."""
    _wp_fork(m, backing, with_event=True)


def _wp_fork_pin(m, backing, with_event):
    p = m.spawn()
    u = _uffd(p, F_WP | (U.UFFD_FEATURE_EVENT_FORK if with_event else 0))
    A = _area(p, backing, 1)
    P = A.addr
    ps = _psize(backing)
    u.register(P, ps, WP)
    p.write(P, b"\x01")
    # uffd-unit-tests pins after the protect. 5.8's forced COW would turn
    # that R/O pin into a write fault on the uffd-wp pte (B3, S44), so the
    # pin comes first: the fork sees the same maybe-pinned, protected page.
    pin = p.pin_user_pages(P, 1, C.FOLL_LONGTERM)
    u.writeprotect(P, ps, PROTECT)
    _check_child(m, p, u, P, with_event, what="fork of a pinned page (early COW)")
    pin.release()
    if not m.policy.gup_forced_cow:
        # The child's own R/O pin (5.19+: unshare). On 5.8 a R/O pin is a
        # write (B3): with EVENT_FORK it would wait on the child's context.
        _check_child(m, p, u, P, with_event, test_pin=True, what="R/O pin in the child")
    m.check()


@uffd_scenario("S31", "uffd-wp-fork-pin", "wp-fork-pin", backings=MEM_ALL, bug="B13",
               needs=needs(wp=True))
def wp_fork_pin(m, backing):
    """Without EVENT_FORK the child of a pinned, protected page must not see
    uffd-wp (5.9-5.13 pass by accident: the early-COW copy has no bit)."""
    _wp_fork_pin(m, backing, with_event=False)


@uffd_scenario("S32", "uffd-wp-fork-pin-with-event", "wp-fork-pin-with-event", backings=MEM_ALL,
               bug="B13", fails={"anon": "5.9-5.13"}, needs=needs(wp=True))
def wp_fork_pin_event(m, backing):
    """With EVENT_FORK the early-COW copy given to the child must keep uffd-wp;
    5.9-5.13 build it without the bit (B13), so the child's writes go unseen."""
    _wp_fork_pin(m, backing, with_event=True)


@uffd_scenario("S33", "uffd-wp-unpopulated", "wp-unpopulated",
               needs=needs(U.UFFD_FEATURE_WP_UNPOPULATED, pagemap_wp=True))
def wp_unpopulated(m, backing):
    """WP_UNPOPULATED: protecting an empty anon slot installs a marker;
    unprotect and DONTNEED remove it; a read maps the zero page wp."""
    p = m.spawn()
    u = _uffd(p, F_WP | U.UFFD_FEATURE_WP_UNPOPULATED)
    n = 4
    P = p.mmap(0, n * PAGE, RW, PRIV)
    u.register(P, n * PAGE, WP)
    u.writeprotect(P, PAGE, PROTECT)
    e = p.pagemap(P)
    check(e.uffd_wp and e.swapped and not e.present, f"protect must install a marker (pagemap {e})")
    u.writeprotect(P, PAGE, 0)
    e = p.pagemap(P)
    check(not e.uffd_wp and not e.swapped, f"unprotect must remove the marker (pagemap {e})")
    u.writeprotect(P, PAGE, PROTECT)
    p.madvise(P, PAGE, C.MADV_DONTNEED)
    check(not p.pagemap(P).uffd_wp, "an anon zap drops the marker")
    p.write(P, b"\x01")
    check(not p.pagemap(P).uffd_wp, "after the marker is gone a write is a plain fault")
    p.madvise(P, PAGE, C.MADV_DONTNEED)
    u.writeprotect(P, PAGE, PROTECT)
    check(p.read(P, 1) == b"\x00", "a read of the marker reads zeros")
    e = p.pagemap(P)
    check(e.present and e.uffd_wp and _is_zero_page(m, e.pfn),
          f"a read of the marker maps the zero page, uffd-wp (pagemap {e})")
    p.madvise(P, PAGE, C.MADV_DONTNEED)
    check(u.pending() == 0, "none of this raises a message")


_FLIP = bytes(b ^ 0xFF for b in range(256))


def _minor(m, backing, wp):
    p = m.spawn()
    n = 8
    ps = _psize(backing)
    A = _area(p, backing, n, alias=True)
    dst, alias = A.addr, A.alias          # faults come through the registered alias
    feat = U.UFFD_FEATURE_MINOR_HUGETLBFS if backing in HUGETLB else U.UFFD_FEATURE_MINOR_SHMEM
    u = _uffd(p, feat | (F_WP if wp else 0))
    u.register(alias, n * ps, MINOR | (WP if wp else 0))
    for k in range(n):
        p.write(dst + k * ps, bytes([k % 255]) * ps)    # fills the cache, no uffd fault
    check(u.pending() == 0, "writes through the unregistered mapping raise no fault")
    counts = {"minor": 0, "wp": 0, "missing": 0}

    def handler(u, msg):
        if msg.flags & FLAG_WP:
            u.writeprotect(msg.address, ps, 0)
            counts["wp"] += 1
        elif msg.flags & FLAG_MINOR:
            off = msg.address - alias
            data = p.read(dst + off, ps)
            p.write(dst + off, data.translate(_FLIP))
            u.continue_(msg.address, ps, U.UFFDIO_CONTINUE_MODE_WP if wp else 0)
            # uffd-common.c continue_range(): a second CONTINUE must be EEXIST.
            _errno(errno.EEXIST, lambda: u.continue_(msg.address, ps), "a second CONTINUE",
                   result=-errno.EEXIST)
            counts["minor"] += 1
        else:
            counts["missing"] += 1
            raise ScenarioFailure(f"unexpected missing fault {msg}")
    u.serve(handler)
    for k in range(n):
        check(p.read(alias + k * ps, ps) == bytes([k % 255 ^ 0xFF]) * ps,
              f"alias page {k} does not show the bit flip the monitor made before CONTINUE")
    check(counts["minor"] == n and counts["missing"] == 0,
          f"expected {n} minor faults (fault-around must not map MINOR pages): {counts}")
    if wp:
        for k in range(n):
            check(p.pagemap(alias + k * ps).uffd_wp, f"CONTINUE(MODE_WP) left page {k} unprotected")
        p.write(alias, b"\x00")
        check(counts["wp"] == 1, "a write to a page continued with MODE_WP raises a WP fault")
    m.check()


@uffd_scenario("S34", "uffd-minor", "minor", backings=("shmem", "hugetlb"), needs=needs(minor=True))
def minor_faults(m, backing):
    """Each first access through the MINOR-registered mapping of cached pages
    raises one MINOR fault; CONTINUE maps the page the monitor just edited
    (hugetlb: hugetlb_no_page finds the page in the cache, 5.13)."""
    _minor(m, backing, wp=False)


@uffd_scenario("S35", "uffd-minor-wp", "minor-wp", backings=("shmem", "hugetlb"),
               needs=needs(U.UFFD_FEATURE_WP_UNPOPULATED, minor=True, wp=True))
def minor_faults_wp(m, backing):
    """CONTINUE with MODE_WP (6.4) maps the page protected: pagemap says so and
    a write raises a WP fault."""
    _minor(m, backing, wp=True)


def _sigbus(m, backing, wp):
    p = m.spawn()
    n = 8
    half = (n + 1) // 2
    A = _area(p, backing, n)
    P = A.addr
    ps = _psize(backing)
    u = _uffd(p, U.UFFD_FEATURE_SIGBUS | U.UFFD_FEATURE_EVENT_FORK | (F_WP if wp else 0))
    u.register(P, n * ps, MISSING | (WP if wp else 0))
    copy_mode = U.UFFDIO_COPY_MODE_WP if wp else 0
    for nr in range(half):
        try:
            p.read(P + nr * ps, 1)
            raise ScenarioFailure(f"page {nr}: a MISSING access with UFFD_FEATURE_SIGBUS must SIGBUS")
        except Sigbus:
            pass
        u.copy(P + nr * ps, _page(nr, size=ps), mode=copy_mode)
        check(p.read(P + nr * ps, ps) == _page(nr, size=ps), f"page {nr}: memory corruption")
        if wp:
            try:
                p.write(P + nr * ps, _page(nr)[:1])
                raise ScenarioFailure(f"page {nr}: a WP fault with UFFD_FEATURE_SIGBUS must SIGBUS")
            except Sigbus:
                pass
            u.writeprotect(P + nr * ps, ps, 0)
        p.write(P + nr * ps, _page(nr)[:1])     # write the same value back
    check(u.pending() == 0, "SIGBUS mode queues no message")
    _release(p, P, n * ps, backing)
    seen = {"faults": 0, "forks": 0}

    def handler(ctx, msg):
        if msg.event == U.UFFD_EVENT_FORK:
            seen["forks"] += 1
            msg.ufd.serve(handler)
        else:
            seen["faults"] += 1
    u.serve(handler)
    c = p.fork()
    check(seen["forks"] == 1, "fork with EVENT_FORK must send the monitor a FORK event")
    signalled = 0
    for nr in range(half):
        try:
            c.read(P + nr * ps, 1)
        except Sigbus:
            signalled += 1
    check(signalled == half, f"the child inherits SIGBUS mode: {signalled}/{half} accesses signalled")
    check(seen["faults"] == 0, f"SIGBUS mode sent {seen['faults']} fault messages")
    c.exit()


@uffd_scenario("S37", "uffd-sigbus", "sigbus", backings=MEM_ALL, needs=needs(release=True))
def sigbus(m, backing):
    """UFFD_FEATURE_SIGBUS: MISSING faults are SIGBUS without a message, in the
    process and in a child that inherited the context through EVENT_FORK."""
    _sigbus(m, backing, wp=False)


@uffd_scenario("S38", "uffd-sigbus-wp", "sigbus-wp", backings=MEM_ALL, needs=needs(wp=True, release=True))
def sigbus_wp(m, backing):
    """SIGBUS mode applies to WP faults too."""
    _sigbus(m, backing, wp=True)


def _events(m, backing, wp):
    p = m.spawn()
    n = 8
    half = (n + 1) // 2
    A = _area(p, backing, n)
    P = A.addr
    ps = _psize(backing)
    feats = (U.UFFD_FEATURE_EVENT_FORK | U.UFFD_FEATURE_EVENT_REMAP | U.UFFD_FEATURE_EVENT_REMOVE
             | (F_WP if wp else 0))
    u = _uffd(p, feats)
    u.register(P, n * ps, MISSING | (WP if wp else 0))
    st = {"dst": P, "missing": 0, "wp": 0, "fork": 0, "remap": 0, "remove": 0}

    def handler(ctx, msg):
        if msg.event == PF:
            if msg.flags & FLAG_WP:
                ctx.writeprotect(msg.address, ps, 0)
                st["wp"] += 1
                return
            check(not msg.flags & FLAG_WRITE, f"unexpected write fault {msg}")
            off = msg.address - st["dst"]
            ctx.copy(msg.address, _page(off // ps, size=ps), mode=U.UFFDIO_COPY_MODE_WP if wp else 0)
            st["missing"] += 1
        elif msg.event == U.UFFD_EVENT_FORK:
            st["fork"] += 1
            msg.ufd.serve(handler)
        elif msg.event == U.UFFD_EVENT_REMAP:
            st["remap"] += 1
            st["dst"] = msg.to
        elif msg.event == U.UFFD_EVENT_REMOVE:
            st["remove"] += 1
            ctx.unregister(msg.start, msg.end - msg.start)
    u.serve(handler)
    c = p.fork()
    check(st["fork"] == 1, "fork with EVENT_FORK must send a FORK event")
    for nr in range(half):
        check(c.read(P + nr * ps, ps) == _page(nr, size=ps), f"child page {nr}: memory corruption")
        c.write(P + nr * ps, _page(nr)[:1])
    # Where the child moves the area (as onto area_src, of the same memory
    # type: a hugetlb area moves only to a huge-page-aligned address).
    Q = _area(c, backing, n).addr if backing in HUGETLB else c.mmap(0, n * PAGE, RW, PRIV)
    c.mremap(P, n * ps, n * ps, C.MREMAP_MAYMOVE | C.MREMAP_FIXED, Q)
    check(st["remap"] == 1 and st["dst"] == Q, "mremap must send REMAP {from, to} to the child's monitor")
    for nr in range(half, n):
        check(c.read(Q + nr * ps, ps) == _page(nr, size=ps), f"child page {nr} after mremap: memory corruption")
        c.write(Q + nr * ps, _page(nr)[:1])
    _release(c, Q, n * ps, backing)
    check(st["remove"] == 1, "releasing the pages must send REMOVE")
    check(c.read(Q, n * ps) == bytes(n * ps), "the removed (then unregistered) range must read zeros")
    check(st["missing"] == n, f"expected {n} missing faults, got {st['missing']}")
    if wp:
        check(st["wp"] == n, f"expected {n} WP faults (write-backs after COPY MODE_WP), got {st['wp']}")
    c.exit()


@uffd_scenario("S39", "uffd-events", "events", backings=MEM_ALL, needs=needs(release=True, mremap=True))
def events(m, backing):
    """The child's faults reach the monitor through the FORK event's context,
    mremap sends REMAP, release sends REMOVE (the monitor unregisters)."""
    _events(m, backing, wp=False)


@uffd_scenario("S40", "uffd-events-wp", "events-wp", backings=MEM_ALL,
               needs=needs(wp=True, release=True, mremap=True))
def events_wp(m, backing):
    """As events, resolving with COPY(MODE_WP): each write-back raises a WP fault."""
    _events(m, backing, wp=True)


@uffd_scenario("S41", "uffd-poison", "poison", backings=MEM_ALL, needs=needs(U.UFFD_FEATURE_POISON))
def poison(m, backing):
    """Odd pages are resolved with zeros, even ones poisoned: reads of even
    pages SIGBUS after the woken fault retries onto the POISONED marker."""
    p = m.spawn()
    A = _area(p, backing, 4)
    P = A.addr
    ps = _psize(backing)
    u = _uffd(p, U.UFFD_FEATURE_POISON)
    ioctls = u.register(P, 4 * ps, MISSING)
    check(ioctls & 1 << U._UFFDIO_COPY and ioctls & 1 << U._UFFDIO_POISON, f"ioctls {ioctls:#x}")

    def handler(ctx, msg):
        check(msg.event == PF and not msg.flags & (FLAG_WP | FLAG_MINOR), f"unexpected {msg}")
        nr = (msg.address - P) // ps
        if nr % 2:
            ctx.copy(msg.address, bytes(ps))
        else:
            check(ctx.poison(msg.address, ps) == ps, "POISON must report one page")
    u.serve(handler)
    nr_sigbus = 0
    for nr in range(4):
        try:
            check(p.read(P + nr * ps, ps) == bytes(ps), f"page {nr} must read zeros")
        except Sigbus:
            nr_sigbus += 1
            check(nr % 2 == 0, f"odd page {nr} signalled")
            e = p.pagemap(P + nr * ps)
            if backing in HUGETLB:
                # pagemap_hugetlb_range(): a non-present entry shows only
                # uffd-wp, so a poison marker reads as nothing at all.
                check(not e.swapped and not e.present and not e.uffd_wp, f"hugetlb poison marker {e}")
            else:
                check(e.swapped, "a POISONED marker reads as a swap entry")
    check(nr_sigbus == 2, f"expected 2 SIGBUS, got {nr_sigbus}")


@uffd_scenario("S42", "uffd-mmap-changing", "mmap-changing", backings=("shmem",))
def mmap_changing(m, backing):
    """While a REMOVE event is unread, every range ioctl the era has fails with
    EAGAIN (and, 6.15+, -EAGAIN in its output field) before looking at its
    arguments.
    (uffd-unit-tests needs all of MOVE, POISON and MINOR_SHMEM, i.e. 6.8;
    here each era checks the ioctls it has.)"""
    p = m.spawn()
    pol = m.policy
    n = 4
    A = _area(p, backing, n)
    P = A.addr
    u = _uffd(p, U.UFFD_FEATURE_EVENT_REMOVE)
    u.register(P, n * PAGE, MISSING)
    _, wb = _try(lambda: p.madvise(P, PAGE, C.MADV_REMOVE))
    check(wb is not None, "MADV_REMOVE with EVENT_REMOVE must wait until the REMOVE event is read")
    # The output field holds -EAGAIN only since 95567729173e ("fix
    # uninitialized output field for -EAGAIN race", 6.15): before, the early
    # mmap_changing exit left it as userland set it, so only errno is checked.
    eagain = -errno.EAGAIN if pol.uffd_eagain_result else None
    _errno(errno.EAGAIN, lambda: u.copy(0, bytes(PAGE), PAGE), "COPY", result=eagain)
    _errno(errno.EAGAIN, lambda: u.zeropage(0, PAGE), "ZEROPAGE", result=eagain)
    if pol.uffd_features & U.UFFD_FEATURE_MOVE:
        _errno(errno.EAGAIN, lambda: u.move(0, 0, PAGE), "MOVE", result=eagain)
    if pol.uffd_features & U.UFFD_FEATURE_POISON:
        _errno(errno.EAGAIN, lambda: u.poison(0, PAGE), "POISON", result=eagain)
    if pol.uffd_features & U.UFFD_FEATURE_MINOR_HUGETLBFS:
        _errno(errno.EAGAIN, lambda: u.continue_(0, PAGE), "CONTINUE", result=eagain)
    msgs = _drain(u)
    check([x.event for x in msgs] == [U.UFFD_EVENT_REMOVE], f"expected the REMOVE event, read {msgs}")
    wb.thread.resume()
    check(u.zeropage(P + PAGE, PAGE) == PAGE, "once the event is read the ioctls work again")


# ---- Part E: historical bugs -----------------------------------------------------------

def _umap(m):
    p = m.spawn()
    u = _uffd(p, F_WP)
    P = p.mmap(0, 2 * PAGE, RW, PRIV)
    u.register(P, 2 * PAGE, MISSING | WP)
    u.copy(P, _page(7))                           # the page the handler filled
    u.writeprotect(P, PAGE, PROTECT)              # clean-page tracking
    fd = p.memfd_create("umap-store")
    p.ftruncate(fd, 2 * PAGE)
    return p, u, P, fd


@uffd_scenario("S44", "umapsort-self-hang", "umapsort self-hang under forced-COW GUP", bug="B3",
               fails="5.8")
def umapsort_self_hang(m, backing):
    """umap's handler evicts a page it filled and write-protected with an
    O_DIRECT pwrite from it: a read GUP that must not fault. 5.8 forces a
    write fault on the uffd-wp pte, whose message only the handler itself
    would read: the pwrite never returns."""
    p, u, P, fd = _umap(m)
    done = []

    def handler(ctx, msg):
        ctx.copy(msg.address, _page(8))
        # Buffered write(2) copies with copy_from_user (a read): never hangs.
        p.pwrite_from(fd, P, PAGE, 0)
        # O_DIRECT: the read GUP of the eviction.
        p.pwrite_from(fd, P, PAGE, PAGE, direct=True)
        done.append(msg)
    u.serve(handler)
    try:
        p.read(P + PAGE, 1)                       # the application fault that runs the handler
    except Deadlock as e:
        raise ScenarioFailure(f"the handler's O_DIRECT pwrite never returns (B3): {e}") from e
    check(len(done) == 1, "the handler must have run once")
    check(p.pread(fd, PAGE, 0) == _page(7) and p.pread(fd, PAGE, PAGE) == _page(7),
          "both writes must store the page")
    check(u.pending() == 0, "no fault may be queued")


@uffd_scenario("S44m", "forced-cow-wp-message", "a read GUP raises a uffd-wp fault (monitored variant)",
               bug="B3", fails="5.8")
def forced_cow_wp_message(m, backing):
    """The same O_DIRECT pwrite from a thread another thread monitors: 5.8
    queues {PF, WRITE|WP} although nobody writes the page."""
    p, u, P, fd = _umap(m)
    n, wb = _try(lambda: p.pwrite_from(fd, P, PAGE, 0, direct=True))
    if wb is not None:
        raise ScenarioFailure(f"a read GUP (O_DIRECT write) waits on {wb.msg} (5.8 forced COW)")
    check(n == PAGE and p.pread(fd, PAGE, 0) == _page(7), "the pwrite must store the page")
    check(u.pending() == 0, "no message may be queued")


@uffd_scenario("S54", "uffd-wp-leaks-into-child", "uffd-wp bits leak into a child without EVENT_FORK",
               bug="B12", fails="5.7-5.13")
def wp_leaks_into_child(m, backing):
    """Without EVENT_FORK the child's ptes must not keep uffd-wp: else its own
    tracker, registering WP later, gets a spurious WP fault on a page it
    never protected (5.7-5.13 check the parent's VMA, b569a1760782)."""
    p = m.spawn()
    u = _uffd(p, F_WP)
    P = p.mmap(0, PAGE, RW, PRIV)
    u.register(P, PAGE, WP)
    p.write(P, b"\x01")
    u.writeprotect(P, PAGE, PROTECT)
    c = p.fork()
    if m.policy.pm_uffd_wp:
        check(not c.pagemap(P).uffd_wp, "the child's pte kept uffd-wp")
    v = _uffd(c, F_WP)
    v.register(P, PAGE, WP)
    _, wb = _try(lambda: c.write(P, b"\x02"))
    if wb is not None:
        raise ScenarioFailure(f"the child's tracker got a WP fault it never armed: {wb.msg}")
    check(_drain(v) == [], "no message on the child's tracker")
    # The parent stays protected in every era.
    _, wb = _try(lambda: p.write(P, b"\x03"))
    check(wb is not None and wb.uffd is u and wb.msg.flags == FLAG_WRITE | FLAG_WP,
          "the parent's write must raise a WP fault on its context")
    _one_fault(u, P, FLAG_WRITE | FLAG_WP, "parent write")
    u.writeprotect(P, PAGE, 0)
    wb.thread.resume()
    check(p.read(P, 1) == b"\x03" and c.read(P, 1) == b"\x02", "each side keeps its own write")


@uffd_scenario("S55", "uffd-wp-lost-early-cow", "uffd-wp lost on the early-COW copy in the child",
               bug="B13", fails="5.9-5.13")
def wp_lost_early_cow(m, backing):
    """With EVENT_FORK a pinned, protected page is copied early for the child;
    the copy must stay protected, so the child's write reaches the child's
    context. 5.9-5.13 map the copy writable without uffd-wp."""
    p = m.spawn()
    u = _uffd(p, F_WP | U.UFFD_FEATURE_EVENT_FORK)
    P = p.mmap(0, PAGE, RW, PRIV)
    u.register(P, PAGE, WP)
    p.write(P, b"\x01")
    pin = p.pin_user_pages(P, 1, C.FOLL_WRITE | C.FOLL_LONGTERM)     # io_uring fixed buffer
    u.writeprotect(P, PAGE, PROTECT)
    c, cu = _fork(p, u)
    _, wb = _try(lambda: c.write(P, b"\x02"))
    check(wb is not None, "the child's write to its protected copy went unseen (no WP fault)")
    check(wb.uffd is cu, f"the child's WP fault must go to the child's context, went to {wb.uffd}")
    _one_fault(cu, P, FLAG_WRITE | FLAG_WP, "child write")
    cu.writeprotect(P, PAGE, 0)
    wb.thread.resume()
    check(c.read(P, 1) == b"\x02", "the child's write must complete after unprotect")
    pin.release()
    m.check()


@uffd_scenario("S56", "uffd-wp-marker-into-child", "UFFD_WP marker copied into a child without EVENT_FORK",
               backings=("shmem-private",), bug="B14", fails="5.19-6.1", needs=needs(wp=True))
def wp_marker_into_child(m, backing):
    """A marker left by DONTNEED in a private file wp VMA must not be copied to
    a child whose VMA is not registered (5.19-6.1 copy it, with a WARN).
    (hugetlb never did: copy_hugetlb_page_range() copied a marker only into
    a wp child from the start, 5.19; tests/unit/test_hugetlb_uffd.py.)"""
    p = m.spawn()
    ps = _psize(backing)
    A = _area(p, backing, 2)
    P = A.addr
    u = _uffd(p, F_WP | U.UFFD_FEATURE_WP_HUGETLBFS_SHMEM)
    u.register(P, 2 * ps, WP)
    p.write(P, b"\x01")                          # COW: an anon page, so the VMA has an anon_vma
    p.read(P + ps, 1)                             # the cache page mapped R/O
    u.writeprotect(P + ps, ps, PROTECT)
    p.madvise(P + ps, ps, C.MADV_DONTNEED)        # zap of a wp file pte: a UFFD_WP marker
    e = p.pagemap(P + ps)
    # (pagemap_hugetlb_range shows a marker as uffd-wp alone, no PM_SWAP)
    check((e.swapped or backing in HUGETLB) and e.uffd_wp,
          f"DONTNEED must leave a UFFD_WP marker in the parent (pagemap {e})")
    c = p.fork()
    x = c.pagemap(P + ps)
    check(not x.swapped and not x.uffd_wp, f"the child got the parent's UFFD_WP marker (pagemap {x})")
    c.read(P + ps, 1)
    y = c.pagemap(P + ps)
    check(y.present and not y.uffd_wp, f"the child's read must map the page unprotected (pagemap {y})")


@uffd_scenario("S57", "uffd-wp-shmem-mprotect", "shmem uffd-wp silently lost through mprotect",
               backings=("shmem", "hugetlb"), bug="B15", fails="5.19-6.1", needs=needs(wp=True))
def wp_shmem_mprotect(m, backing):
    """mprotect(RO) then RW rebuilds the ptes from vm_page_prot: 5.19-6.1's
    shmem VMA has write there (no writenotify), so the protected pte becomes
    writable and the next write is not reported. Shared hugetlb the same:
    hugetlb_change_protection() keeps the uffd-wp bit but takes write from
    the new protection."""
    p = m.spawn()
    A = _area(p, backing, 1)
    S = A.addr
    ps = _psize(backing)
    u = _uffd(p, F_WP | U.UFFD_FEATURE_WP_HUGETLBFS_SHMEM)
    u.register(S, ps, WP)
    p.write(S, b"\x01")
    u.writeprotect(S, ps, PROTECT)
    check(p.pagemap(S).uffd_wp, "the pte must read uffd-wp")
    p.mprotect(S, ps, RO)
    p.mprotect(S, ps, RW)
    _, wb = _try(lambda: p.write(S, b"\x02"))
    check(wb is not None, "the write to a uffd-wp shmem page was not reported after mprotect")
    _one_fault(u, S, FLAG_WRITE | FLAG_WP, "write after mprotect")
    u.writeprotect(S, ps, 0)
    wb.thread.resume()
    check(p.pread(A.fd, 1, 0) == b"\x02", "the write must land in the file after unprotect")


def _punch_setup(m, features=0):
    p = m.spawn()
    n = 16
    A = _area(p, "shmem", n)
    S = A.addr
    u = _uffd(p, F_WP | U.UFFD_FEATURE_WP_HUGETLBFS_SHMEM | features)
    u.register(S, n * PAGE, WP)
    for i in range(n):
        p.write(S + i * PAGE, _page(i))
    u.writeprotect(S, n * PAGE, PROTECT)
    return p, u, A, S


def _punched_stays_protected(p, u, S):
    T = S + 5 * PAGE
    e = p.pagemap(T)
    check(e.swapped and e.uffd_wp and not e.present,
          f"the punched slot must hold a UFFD_WP marker (pagemap {e})")
    check(p.read(T, PAGE) == bytes(PAGE), "the punched page must read zeros")
    check(p.pagemap(T).uffd_wp, "the read of the marker maps the new zero folio uffd-wp")
    check(u.pending() == 0, "neither the punch nor the read raises a message")
    _, wb = _try(lambda: p.write(T, b"\x09"))
    check(wb is not None, "the write after the punch was not reported: wp lost")
    _one_fault(u, T, FLAG_WRITE | FLAG_WP, "write after the punch")
    u.writeprotect(T, PAGE, 0)
    wb.thread.resume()
    check(p.read(S + 4 * PAGE, PAGE) == _page(4), "the neighbours keep their data")


@uffd_scenario("S58", "uffd-wp-hole-punch", "shmem hole punch with uffd-wp (case A)",
               backings=("shmem",), needs=needs(wp=True))
def wp_hole_punch(m, backing):
    """fallocate(PUNCH_HOLE): the first unmap pass turns the protected pte into
    a marker; the folio is no longer mapped when it is truncated, so the
    protection survives: reads map zeros wp, the write is reported."""
    p, u, A, S = _punch_setup(m)
    p.fallocate(A.fd, C.FALLOC_FL_PUNCH_HOLE | C.FALLOC_FL_KEEP_SIZE, 5 * PAGE, PAGE)
    _punched_stays_protected(p, u, S)
    m.check()


# S58 case B, the race, is mmemu/scenarios/races.py's S58b (the explorer's cells).


@uffd_scenario("S58c", "uffd-wp-madv-remove", "shmem MADV_REMOVE with uffd-wp and EVENT_REMOVE (case C)",
               backings=("shmem",), needs=needs(wp=True))
def wp_madv_remove(m, backing):
    """MADV_REMOVE first sends REMOVE and waits for the monitor; then the same
    punch semantics as case A."""
    p, u, A, S = _punch_setup(m, U.UFFD_FEATURE_EVENT_REMOVE)
    _, ev = _waits_for(lambda: p.madvise(S + 5 * PAGE, PAGE, C.MADV_REMOVE), u,
                       U.UFFD_EVENT_REMOVE, "MADV_REMOVE with EVENT_REMOVE")
    check((ev.start, ev.end) == (S + 5 * PAGE, S + 6 * PAGE), f"REMOVE range {ev}")
    _punched_stays_protected(p, u, S)


@uffd_scenario("S59", "uffd-minor-fault-around", "MINOR mode + fault-around", backings=("shmem",),
               needs=needs(minor=True))
def minor_fault_around(m, backing):
    """Fault-around must not map the cached neighbours of a MINOR fault: each
    first read gets one MINOR message and the data the monitor wrote."""
    p = m.spawn()
    n = 16
    A = _area(p, "shmem", n, alias=True)
    D, al = A.addr, A.alias
    p.pwrite(A.fd, b"S" * (n * PAGE), 0)          # stale data in the cache
    u = _uffd(p, U.UFFD_FEATURE_MINOR_SHMEM)
    u.register(D, n * PAGE, MINOR)
    seen = []

    def handler(ctx, msg):
        check(msg.flags & FLAG_MINOR, f"expected a MINOR fault, got {msg}")
        k = (msg.address - D) // PAGE
        p.write(al + k * PAGE, b"F" * PAGE)       # fresh data through the alias
        ctx.continue_(msg.address, PAGE)
        seen.append(k)
    u.serve(handler)
    check(p.read(D + 3 * PAGE, PAGE) == b"F" * PAGE, "page 3 must read the fresh data")
    check(not p.pagemap(D + 4 * PAGE).present, "fault-around mapped page 4 behind the monitor's back")
    check(p.read(D + 4 * PAGE, PAGE) == b"F" * PAGE, "page 4 read stale data")
    check(seen == [3, 4], f"expected one MINOR fault per page, got {seen}")


# ---- Part F: semantic probes --------------------------------------------------------

@uffd_scenario("S63", "uffd-missing-basics", "Anonymous MISSING basics")
def missing_basics(m, backing):
    """Messages (flags, address, ptid), COPY and ZEROPAGE waking, two waiters
    on one page, WAKE without a fill (refault), non-blocking read."""
    p = m.spawn()
    pol = m.policy
    exact = bool(pol.uffd_features & U.UFFD_FEATURE_EXACT_ADDRESS)
    u = _uffd(p, U.UFFD_FEATURE_THREAD_ID | (U.UFFD_FEATURE_EXACT_ADDRESS if exact else 0))
    P = p.mmap(0, 4 * PAGE, RW, PRIV)
    u.register(P, 4 * PAGE, MISSING)
    t1 = p.thread()
    _, wb = _try(lambda: t1.read(P + 10, 1))
    check(wb is not None and wb.thread is t1, "a read of a missing page must wait")
    msg = _one_fault(u, P + 10 if exact else P, 0, "read fault")
    check(msg.ptid == t1.tid, f"THREAD_ID: ptid {msg.ptid}, expected {t1.tid}")
    check(u.copy(P, b"x" * PAGE) == PAGE, "COPY must fill one page")
    check(t1.resume() == b"x", "the woken read must see the copied data")
    e = p.pagemap(P)
    check(e.present and e.exclusive and (e.soft_dirty or not pol.soft_dirty), f"copied page pagemap {e}")
    _, wb = _try(lambda: t1.write(P + PAGE, b"\x01"))
    check(wb is not None, "a write to a missing page must wait")
    _one_fault(u, P + PAGE, FLAG_WRITE, "write fault")
    u.zeropage(P + PAGE, PAGE)
    t1.resume()                                   # COWs off the zero page, no further message
    check(u.pending() == 0 and not _is_zero_page(m, p.pagemap(P + PAGE).pfn),
          "the write after ZEROPAGE must COW off the zero page silently")
    t2, t3 = p.thread(), p.thread()
    _, w2 = _try(lambda: t2.read(P + 2 * PAGE, 1))
    _, w3 = _try(lambda: t3.read(P + 2 * PAGE, 1))
    check(w2 is not None and w3 is not None, "both readers must wait")
    msgs = _drain(u)
    check(len(msgs) == 2 and all(x.address == P + 2 * PAGE for x in msgs),
          f"two waiters give two messages: {msgs}")
    u.copy(P + 2 * PAGE, b"y" * PAGE)
    check(t2.resume() == b"y" and t3.resume() == b"y", "one COPY wakes both")
    t4 = p.thread()
    _, w4 = _try(lambda: t4.read(P + 3 * PAGE, 1))
    check(w4 is not None, "t4 must wait")
    _drain(u)
    u.wake(P + 3 * PAGE, PAGE)
    _, again = _try(t4.resume)
    check(again is not None, "WAKE without a fill: the thread faults again")
    _one_fault(u, P + 3 * PAGE, 0, "refault after WAKE")
    u.copy(P + 3 * PAGE, b"z" * PAGE)
    check(t4.resume() == b"z", "the refault resolves with the COPY")
    _errno(errno.EAGAIN, u.read, "read(2) of an empty O_NONBLOCK userfaultfd")
    m.check()


@uffd_scenario("S64", "uffd-shmem-missing", "shmem MISSING means 'not in the page cache'",
               backings=("shmem",))
def shmem_missing(m, backing):
    """A MISSING fault on shmem fires only for an index absent from the cache:
    not after DONTNEED (the cache keeps it), again after MADV_REMOVE."""
    p = m.spawn()
    A = _area(p, "shmem", 2)
    S = A.addr
    u = _uffd(p)
    u.register(S, 2 * PAGE, MISSING)
    p.pwrite(A.fd, b"a", 0)
    check(p.read(S, 1) == b"a" and u.pending() == 0, "a cached page raises no MISSING fault")
    _, wb = _try(lambda: p.read(S + PAGE, 1))
    check(wb is not None, "an uncached page must fault")
    _one_fault(u, S + PAGE, 0, "read of the hole")
    u.copy(S + PAGE, b"b" * PAGE)
    check(wb.thread.resume() == b"b", "COPY fills the cache and maps it")
    p.madvise(S, 2 * PAGE, C.MADV_DONTNEED)
    check(p.read(S + PAGE, 1) == b"b" and u.pending() == 0, "after DONTNEED the cache still has the page")
    p.madvise(S + PAGE, PAGE, C.MADV_REMOVE)
    _, wb = _try(lambda: p.read(S + PAGE, 1))
    check(wb is not None, "after MADV_REMOVE the page is missing again")
    _one_fault(u, S + PAGE, 0, "read after MADV_REMOVE")
    check(p.pread(A.fd, 1, PAGE) == b"\x00" and u.pending() == 0,
          "pread(2) of the hole reads zero without a fault")
    u.zeropage(S + PAGE, PAGE)
    wb.thread.resume()


@uffd_scenario("S65", "uffd-copy-eexist", "UFFDIO_COPY / ZEROPAGE over markers, EEXIST, partial progress")
def copy_eexist(m, backing):
    """COPY overwrites a uffd-wp marker (pte_none_mostly), ZEROPAGE needs a
    truly empty slot; populated slots are EEXIST; partial progress is EAGAIN
    with the bytes done; MODE_WP needs a WP VMA; the range must be ours."""
    p = m.spawn()
    pol = m.policy
    unpop = bool(pol.uffd_features & U.UFFD_FEATURE_WP_UNPOPULATED)
    u = _uffd(p, F_WP | (U.UFFD_FEATURE_WP_UNPOPULATED if unpop else 0))
    P = p.mmap(0, 6 * PAGE, RW, PRIV)
    u.register(P, 6 * PAGE, MISSING | WP)
    u.writeprotect(P, 6 * PAGE, PROTECT)          # 6.4+: six markers; before: nothing to protect
    _, wb = _try(lambda: p.read(P, 1))
    check(wb is not None, "a marker (or empty slot) in a MISSING VMA faults as missing")
    _one_fault(u, P, 0, "read of P")
    check(u.copy(P, _page(0)) == PAGE, "COPY over the marker must succeed")
    wb.thread.resume()
    e = p.pagemap(P)
    check(e.present and not e.uffd_wp, f"the copied pte is not uffd-wp (pagemap {e})")
    if unpop:
        # mfill_atomic_pte_zeropage() wants pte_none(), a marker is not.
        _errno(errno.EEXIST, lambda: u.zeropage(P + PAGE, PAGE), "ZEROPAGE over a marker",
               result=-errno.EEXIST)
    else:
        check(u.zeropage(P + PAGE, PAGE) == PAGE, "ZEROPAGE into an empty slot")
    u.copy(P + 2 * PAGE, _page(2), mode=U.UFFDIO_COPY_MODE_WP)
    if pol.pm_uffd_wp:
        check(p.pagemap(P + 2 * PAGE).uffd_wp, "COPY(MODE_WP) must map the page uffd-wp")
    _, wb = _try(lambda: p.write(P + 2 * PAGE, b"\x01"))
    check(wb is not None, "a write to a COPY(MODE_WP) page must raise a WP fault")
    _one_fault(u, P + 2 * PAGE, FLAG_WRITE | FLAG_WP, "write after COPY(MODE_WP)")
    u.writeprotect(P + 2 * PAGE, PAGE, 0)
    wb.thread.resume()
    _errno(errno.EEXIST, lambda: u.copy(P + 2 * PAGE, _page(0) * 2, 2 * PAGE), "COPY onto a populated page",
           result=-errno.EEXIST)
    u.copy(P + 4 * PAGE, _page(4))
    _errno(errno.EAGAIN, lambda: u.copy(P + 3 * PAGE, _page(3) * 2, 2 * PAGE), "COPY that stops half way",
           result=PAGE)
    check(p.read(P + 3 * PAGE, PAGE) == _page(3), "the page done before the stop must be there")
    Q = p.mmap(0, PAGE, RW, PRIV)
    u.register(Q, PAGE, MISSING)
    _errno(errno.EINVAL, lambda: u.copy(Q, _page(0), mode=U.UFFDIO_COPY_MODE_WP),
           "COPY(MODE_WP) into a VMA without WP", result=-errno.EINVAL)
    R = p.mmap(0, PAGE, RW, PRIV)
    _errno(errno.ENOENT, lambda: u.copy(R, _page(0)), "COPY into an unregistered range",
           result=-errno.ENOENT)
    m.check()


@uffd_scenario("S66", "uffd-release-wakes", "close(uffd) or UNREGISTER while threads are blocked")
def release_wakes(m, backing):
    """UNREGISTER of a WP-only range does not wake its waiter (the kernel
    wakes only for MISSING registrations - userfaultfd_unregister(); seen on
    the 6.18 host, where scenarios.md expected a wake): UFFDIO_WAKE does,
    and the write then proceeds. close() wakes a MISSING waiter, whose read
    then zero-fills: never SIGBUS."""
    p = m.spawn()
    u = _uffd(p, F_WP)
    P = p.mmap(0, PAGE, RW, PRIV)
    Q = p.mmap(0, PAGE, RW, PRIV)
    u.register(P, PAGE, MISSING)
    u.register(Q, PAGE, WP)
    p.write(Q, b"\x01")
    u.writeprotect(Q, PAGE, PROTECT)
    t2 = p.thread()
    _, w2 = _try(lambda: t2.write(Q, b"\x02"))
    check(w2 is not None, "the write to the protected page must wait")
    u.unregister(Q, PAGE)
    _, w3 = _try(t2.resume)
    check(w3 is not None, "UNREGISTER of a WP-only range leaves its waiter asleep")
    u.wake(Q, PAGE)
    t2.resume()
    check(p.read(Q, 1) == b"\x02", "after UNREGISTER and a wake the write proceeds")
    check(not p.pagemap(Q).uffd_wp, "UNREGISTER clears uffd-wp")
    t = p.thread()
    _, w = _try(lambda: t.read(P, 1))
    check(w is not None, "the read of the missing page must wait")
    u.close()
    check(t.resume() == b"\x00", "after close() the read zero-fills")
    m.check()


@uffd_scenario("S67", "uffd-wp-never-touched", "Write-protecting never-touched anonymous memory")
def wp_never_touched(m, backing):
    """Without WP_UNPOPULATED, protecting an empty anon slot protects nothing
    (the first write allocates silently); the zero-page pte is protected."""
    p = m.spawn()
    u = _uffd(p, F_WP)
    P = p.mmap(0, 3 * PAGE, RW, PRIV)
    u.register(P, 3 * PAGE, WP)
    p.read(P + PAGE, 1)
    u.writeprotect(P, 3 * PAGE, PROTECT)
    p.write(P, b"\x01")
    check(u.pending() == 0, "the write to the never-touched page raised a message")
    if m.policy.pm_uffd_wp:
        check(not p.pagemap(P).uffd_wp, "the never-touched page is not protected")
    _, wb = _try(lambda: p.write(P + PAGE, b"\x01"))
    check(wb is not None, "the write to the protected zero-page pte must be reported")
    _one_fault(u, P + PAGE, FLAG_WRITE | FLAG_WP, "write to the zero page")
    u.writeprotect(P + PAGE, PAGE, 0)
    wb.thread.resume()


@uffd_scenario("S67u", "uffd-wp-never-touched-unpopulated",
               "Write-protecting never-touched anonymous memory with WP_UNPOPULATED",
               needs=needs(U.UFFD_FEATURE_WP_UNPOPULATED))
def wp_never_touched_unpopulated(m, backing):
    """With WP_UNPOPULATED the empty slot gets a marker: the write installs a
    R/O uffd-wp page and then reports {WRITE|WP} on the retry."""
    p = m.spawn()
    u = _uffd(p, F_WP | U.UFFD_FEATURE_WP_UNPOPULATED)
    P = p.mmap(0, 3 * PAGE, RW, PRIV)
    u.register(P, 3 * PAGE, WP)
    u.writeprotect(P, 3 * PAGE, PROTECT)
    _, wb = _try(lambda: p.write(P + 2 * PAGE, b"\x01"))
    check(wb is not None, "the write to the marker must be reported")
    _one_fault(u, P + 2 * PAGE, FLAG_WRITE | FLAG_WP, "write to the marker")
    u.writeprotect(P + 2 * PAGE, PAGE, 0)
    wb.thread.resume()
    check(p.read(P + 2 * PAGE, 1) == b"\x01", "the write must complete")


def _armed_async(m, n):
    p = m.spawn()
    u = _uffd(p, F_WP | U.UFFD_FEATURE_WP_ASYNC)
    P = p.mmap(0, n * PAGE, RW, PRIV)
    u.register(P, n * PAGE, WP)
    return p, u, P


def _scan(p, P, n, generic=False, rearm=True):
    """PAGEMAP_SCAN for WRITTEN pages, re-arming them with WP_MATCHING: the
    fast path (category_mask == WRITTEN) or the generic one (anyof)."""
    flags = (C.PM_SCAN_WP_MATCHING if rearm else 0) | C.PM_SCAN_CHECK_WPASYNC
    kw = {"category_anyof_mask": C.PAGE_IS_WRITTEN} if generic else {"category_mask": C.PAGE_IS_WRITTEN}
    regions, _ = p.pagemap_scan(P, P + n * PAGE, flags, return_mask=C.PAGE_IS_WRITTEN, **kw)
    return [((s - P) // PAGE, (e - P) // PAGE) for s, e, _ in regions]


@uffd_scenario("S68", "uffd-wp-async-scan", "WP_ASYNC + PAGEMAP_SCAN dirty tracking",
               needs=needs(U.UFFD_FEATURE_WP_ASYNC))
def wp_async_scan(m, backing):
    """WP_ASYNC resolves writes in the kernel (no message, no waiting);
    PAGEMAP_SCAN with WP_MATCHING reports what was written and re-arms it;
    CHECK_WPASYNC refuses a VMA that is not async uffd-wp."""
    n = 8
    p, u, P = _armed_async(m, n)
    check(_scan(p, P, n) == [(0, n)], "the first scan reports every empty slot as written (fast path)")
    check(all(p.pagemap(P + i * PAGE).uffd_wp for i in range(n)), "WP_MATCHING must arm every slot")
    p.write(P + 2 * PAGE, b"\x01")
    p.write(P + 5 * PAGE, b"\x01")
    p.read(P + PAGE, 1)
    check(u.pending() == 0, "WP_ASYNC sends no message")
    check(_is_zero_page(m, p.pagemap(P + PAGE).pfn) and p.pagemap(P + PAGE).uffd_wp,
          "the read maps the zero page, still armed")
    check(_scan(p, P, n) == [(2, 3), (5, 6)], f"written pages: {_scan(p, P, n, rearm=False)}")
    check(_scan(p, P, n) == [], "the scan re-armed what it reported")
    v = _uffd(p, F_WP)
    Q = p.mmap(0, PAGE, RW, PRIV)
    v.register(Q, PAGE, WP)
    _errno(errno.EPERM, lambda: _scan(p, Q, 1), "PAGEMAP_SCAN with CHECK_WPASYNC on a sync uffd-wp VMA")


@uffd_scenario("S68f", "uffd-scan-fast-path", "PAGEMAP_SCAN picks its fast path by the masks",
               needs=needs(U.UFFD_FEATURE_WP_ASYNC))
def scan_fast_path(m, backing):
    """pagemap_scan_pmd_entry() takes the fast path when category_mask ==
    return_mask == WRITTEN with no anyof and no inverted mask, with or without
    WP_MATCHING; it counts every pte without uffd-wp, empty ones included, as
    written. A report-only scan of a never-armed range reports all of it."""
    n = 8
    p, u, P = _armed_async(m, n)
    check(_scan(p, P, n, rearm=False) == [(0, n)],
          "a report-only fast-path scan counts empty slots as written")
    check(not any(p.pagemap(P + i * PAGE).uffd_wp for i in range(n)), "without WP_MATCHING nothing is armed")


@uffd_scenario("S69", "uffd-scan-after-dontneed", "PAGEMAP_SCAN after MADV_DONTNEED", bug="B21",
               fails="6.7-6.18", needs=needs(U.UFFD_FEATURE_WP_ASYNC))
def scan_after_dontneed(m, backing):
    """DONTNEED of anon drops pages and markers: every path of PAGEMAP_SCAN must
    then report the range WRITTEN (and re-arm it). Up to 6.18 the generic path
    gives an empty pte no category: the zapped range looks clean, and an
    incremental dumper keeps the stale pre-DONTNEED contents (B21, fixed by
    07b4377bdbe7 and 40de8160ca7f in 7.2, and in 6.12.103 and 6.18.44)."""
    n = 8
    p, u, P = _armed_async(m, n)
    _scan(p, P, n)                                 # arm everything
    for i in range(n):                             # write(), not touch(): the host runs it too
        p.write(P + i * PAGE, b"\x01")
    check(_scan(p, P, n) == [(0, n)], "every written page is reported")
    p.madvise(P, n * PAGE, C.MADV_DONTNEED)
    check(not any(p.pagemap(P + i * PAGE).uffd_wp for i in range(n)), "an anon zap drops the markers")
    h = n // 2
    check(_scan(p, P, h) == [(0, h)], "the fast path reports the zapped half as written and re-arms it")
    got = _scan(p, P + h * PAGE, h, generic=True)
    check(got == [(0, h)], f"the generic path reports {got} of the zapped half {[(0, h)]} as written")
    check(all(p.pagemap(P + i * PAGE).uffd_wp for i in range(n)), "both scans must re-arm their range")


@uffd_scenario("S70", "uffd-move-errors", "UFFDIO_MOVE error matrix", needs=needs(U.UFFD_FEATURE_MOVE))
def move_errors(m, backing):
    """EEXIST on a populated dst, ENOENT on a src hole (unless
    ALLOW_SRC_HOLES), EBUSY on a COW-shared or pinned src page, partial
    progress as EAGAIN with the bytes moved, and a zero-copy success."""
    p = m.spawn()
    n = 8
    src = p.mmap(0, n * PAGE, RW, PRIV)
    dst = p.mmap(0, n * PAGE, RW, PRIV)
    u = _uffd(p, U.UFFD_FEATURE_MOVE)
    u.register(dst, n * PAGE, MISSING)
    for i in range(n):
        p.write(src + i * PAGE, _page(i))
    # (a) populated dst
    u.copy(dst, _page(9))
    _errno(errno.EEXIST, lambda: u.move(dst, src, PAGE), "(a) MOVE onto a populated page",
           result=-errno.EEXIST)
    # (b) src hole
    p.madvise(src + PAGE, PAGE, C.MADV_DONTNEED)
    _errno(errno.ENOENT, lambda: u.move(dst + PAGE, src + PAGE, PAGE), "(b) MOVE from a hole",
           result=-errno.ENOENT)
    check(u.move(dst + PAGE, src + PAGE, PAGE, U.UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES) == PAGE,
          "(b) ALLOW_SRC_HOLES counts the hole as moved")
    # (c) COW-shared after fork
    c = p.fork()
    _errno(errno.EBUSY, lambda: u.move(dst + 2 * PAGE, src + 2 * PAGE, PAGE), "(c) MOVE of a COW-shared page",
           result=-errno.EBUSY)
    c.exit()
    p.write(src + 3 * PAGE, _page(3))             # the parent's write makes page 3 exclusive again
    # (d) pinned
    pin = p.pin_user_pages(src + 3 * PAGE, 1, 0)
    _errno(errno.EBUSY, lambda: u.move(dst + 3 * PAGE, src + 3 * PAGE, PAGE), "(d) MOVE of a pinned page",
           result=-errno.EBUSY)
    pin.release()
    # (h) partial progress: dst page 6 populated
    for i in (4, 5, 6, 7):
        p.write(src + i * PAGE, _page(i))
    u.copy(dst + 6 * PAGE, _page(9))
    _errno(errno.EAGAIN, lambda: u.move(dst + 4 * PAGE, src + 4 * PAGE, 4 * PAGE), "(h) MOVE that stops",
           result=2 * PAGE)
    _errno(errno.EEXIST, lambda: u.move(dst + 6 * PAGE, src + 6 * PAGE, 2 * PAGE), "(h) retry at the stop",
           result=-errno.EEXIST)
    # (i) success: the very frame moves, dirty and writable, src becomes a hole
    pfn = p.pagemap(src + 7 * PAGE).pfn
    check(u.move(dst + 7 * PAGE, src + 7 * PAGE, PAGE) == PAGE, "(i) MOVE of an exclusive page")
    e = p.pagemap(dst + 7 * PAGE)
    check(e.present and e.exclusive and e.pfn == pfn, f"(i) dst must map the moved frame (pagemap {e})")
    f0 = p.minflt
    p.write(dst + 7 * PAGE, b"\x01")
    check(p.minflt == f0, "(i) the moved pte must be writable (no fault on the write)")
    check(p.read(src + 7 * PAGE, PAGE) == bytes(PAGE), "(i) src reads zeros afterwards")
    check(p.read(dst + 4 * PAGE, PAGE) == _page(4), "(h) the pages moved before the stop")
    m.check()


@uffd_scenario("S70z", "uffd-move-zero-page", "UFFDIO_MOVE of a zero-page pte",
               needs=needs(U.UFFD_FEATURE_MOVE))
def move_zero_page(m, backing):
    """6.8's move_pages_pte() refuses the zero page (no folio: EBUSY);
    "userfaultfd: handle zeropage moves by UFFDIO_MOVE" (posted 2024-01-25
    against mm-unstable, after the 6.8 merge window) moves it from 6.9 on."""
    p = m.spawn()
    src = p.mmap(0, PAGE, RW, PRIV)
    dst = p.mmap(0, PAGE, RW, PRIV)
    u = _uffd(p, U.UFFD_FEATURE_MOVE)
    u.register(dst, PAGE, MISSING)
    p.read(src, 1)
    if not m.policy.uffd_move_zeropage:
        _errno(errno.EBUSY, lambda: u.move(dst, src, PAGE), "MOVE of the zero page", result=-errno.EBUSY)
        return
    check(u.move(dst, src, PAGE) == PAGE, "MOVE of the zero page")
    check(_is_zero_page(m, p.pagemap(dst).pfn) and not p.pagemap(src).present,
          "dst maps the zero page, src is empty")


@uffd_scenario("S70f", "uffd-move-einval", "UFFDIO_MOVE area validation", needs=needs(U.UFFD_FEATURE_MOVE))
def move_einval(m, backing):
    """validate_move_areas(): dst registered with this context, both private
    anon, same protection, src writable, both mlocked or neither; else EINVAL."""
    p = m.spawn()
    src = p.mmap(0, PAGE, RW, PRIV)
    p.write(src, _page(0))
    u = _uffd(p, U.UFFD_FEATURE_MOVE)
    unreg = p.mmap(0, PAGE, RW, PRIV)
    _errno(errno.EINVAL, lambda: u.move(unreg, src, PAGE), "MOVE to an unregistered dst")
    A = _area(p, "shmem", 1)
    u.register(A.addr, PAGE, MISSING)
    _errno(errno.EINVAL, lambda: u.move(A.addr, src, PAGE), "MOVE into MAP_SHARED")
    ro = p.mmap(0, PAGE, RO, PRIV)
    u.register(ro, PAGE, MISSING)
    _errno(errno.EINVAL, lambda: u.move(ro, src, PAGE), "MOVE between different protections")
    locked = p.mmap(0, PAGE, RW, PRIV | C.MAP_LOCKED)
    u.register(locked, PAGE, MISSING)
    _errno(errno.EINVAL, lambda: u.move(locked, src, PAGE), "MOVE from an unlocked to an mlocked VMA")
    check(p.read(src, PAGE) == _page(0), "nothing moved")


@uffd_scenario("S71", "uffd-poison-lifecycle", "UFFDIO_POISON lifecycle", needs=needs(U.UFFD_FEATURE_POISON))
def poison_lifecycle(m, backing):
    """A POISONED marker SIGBUSes accesses and fails GUP, is EEXIST for a second
    POISON, is copied by fork (mfill_atomic gave the VMA an anon_vma), and is
    dropped by DONTNEED (missing again)."""
    p = m.spawn()
    u = _uffd(p, U.UFFD_FEATURE_POISON | F_WP | U.UFFD_FEATURE_WP_UNPOPULATED)
    P = p.mmap(0, 3 * PAGE, RW, PRIV)
    u.register(P, 3 * PAGE, MISSING | WP)
    check(u.poison(P, PAGE) == PAGE, "POISON must report one page")
    check(p.pagemap(P).swapped, "a POISONED marker reads as a swap entry")
    try:
        p.read(P, 1)
        raise ScenarioFailure("a read of a POISONED page must SIGBUS")
    except Sigbus as e:
        # x86 do_sigbus(): BUS_MCEERR_AR needs CONFIG_MEMORY_FAILURE, else BUS_ADRERR.
        want = C.BUS_MCEERR_AR if m.policy.memory_failure else C.BUS_ADRERR
        check(e.si_code == want, f"si_code {e.si_code}, expected {want}")
    _errno(errno.EFAULT, lambda: p.get_user_pages(P, 1), "GUP of a POISONED page")
    _errno(errno.EEXIST, lambda: u.poison(P, PAGE), "a second POISON", result=-errno.EEXIST)
    c = p.fork()
    check(c.pagemap(P).swapped, "fork must copy the POISONED marker")
    try:
        c.read(P, 1)
        raise ScenarioFailure("the child's read of the copied marker must SIGBUS")
    except Sigbus:
        pass
    c.exit()
    p.madvise(P, PAGE, C.MADV_DONTNEED)
    _, wb = _try(lambda: p.read(P, 1))
    check(wb is not None, "after DONTNEED the page is missing again")
    _one_fault(u, P, 0, "read after DONTNEED")
    u.zeropage(P, PAGE)
    wb.thread.resume()
    u.writeprotect(P + PAGE, PAGE, PROTECT)       # a UFFD_WP marker
    _errno(errno.EEXIST, lambda: u.poison(P + PAGE, PAGE), "POISON over a UFFD_WP marker",
           result=-errno.EEXIST)


@uffd_scenario("S71c", "uffd-copy-over-poison", "UFFDIO_COPY over a POISONED marker",
               needs=needs(U.UFFD_FEATURE_POISON))
def copy_over_poison(m, backing):
    """mfill_atomic_install_pte() accepts pte_none_mostly() slots, i.e. none or
    any marker of 6.6-6.12 (the 2025 rewrite names it: UFFD_WP and POISONED
    markers are "UFFD handled"), so COPY replaces a POISONED marker."""
    p = m.spawn()
    u = _uffd(p, U.UFFD_FEATURE_POISON)
    P = p.mmap(0, PAGE, RW, PRIV)
    u.register(P, PAGE, MISSING)
    u.poison(P, PAGE)
    check(u.copy(P, _page(1)) == PAGE, "COPY over the POISONED marker")
    check(p.read(P, PAGE) == _page(1), "the copied data replaces the poison")


@uffd_scenario("S72", "uffd-user-mode-only", "UFFD_USER_MODE_ONLY", needs=needs(user_mode_only=True))
def user_mode_only(m, backing):
    """Kernel-mode faults (copy_to_user of read(2)) on a USER_MODE_ONLY context
    are SIGBUS inside the kernel, so EFAULT with no message; user faults are
    delivered; without the flag the read(2) waits until COPY."""
    p = m.spawn()
    fd = p.memfd_create("data")
    p.pwrite(fd, b"d" * 100, 0)
    u = _uffd(p, 0, U.O_CLOEXEC | U.O_NONBLOCK | U.UFFD_USER_MODE_ONLY)
    P = p.mmap(0, PAGE, RW, PRIV)
    u.register(P, PAGE, MISSING)
    _errno(errno.EFAULT, lambda: p.pread_into(fd, P, 100, 0), "read(2) into a USER_MODE_ONLY range")
    check(u.pending() == 0, "a kernel-mode fault must queue no message")
    _, wb = _try(lambda: p.read(P, 1))
    check(wb is not None, "a user-mode fault is delivered")
    _one_fault(u, P, 0, "user read")
    u.zeropage(P, PAGE)
    wb.thread.resume()
    v = _uffd(p)
    Q = p.mmap(0, PAGE, RW, PRIV)
    v.register(Q, PAGE, MISSING)
    _, wb = _try(lambda: p.pread_into(fd, Q, 100, 0))
    check(wb is not None, "without USER_MODE_ONLY the read(2) waits for the monitor")
    _one_fault(v, Q, FLAG_WRITE, "copy_to_user fault")
    v.copy(Q, bytes(PAGE))
    wb.thread.resume()
    check(p.read(Q, 100) == b"d" * 100, "the read(2) completes into the filled page")


@uffd_scenario("S73", "uffd-remove-events", "REMOVE event ordering; fallocate sends nothing")
def remove_events(m, backing):
    """DONTNEED and MADV_FREE send REMOVE {start, end} and wait for it to be
    read, while every range ioctl is EAGAIN; a page fault queued meanwhile is
    read first; shmem fallocate(PUNCH_HOLE) sends nothing, MADV_REMOVE does."""
    p = m.spawn()
    u = _uffd(p, U.UFFD_FEATURE_EVENT_REMOVE | F_WP)
    P = p.mmap(0, 4 * PAGE, RW, PRIV)
    u.register(P, 4 * PAGE, MISSING | WP)
    Z = p.mmap(0, PAGE, RW, PRIV)
    u.register(Z, PAGE, MISSING)
    t = p.thread()
    _, wf = _try(lambda: t.read(Z, 1))           # a page fault, queued first
    check(wf is not None, "the read of Z must wait")
    _, wb = _try(lambda: p.madvise(P, 2 * PAGE, C.MADV_DONTNEED))
    check(wb is not None, "DONTNEED with EVENT_REMOVE must wait until the event is read")
    eagain = -errno.EAGAIN if m.policy.uffd_eagain_result else None     # output field: see S42
    _errno(errno.EAGAIN, lambda: u.copy(P, _page(0)), "COPY during REMOVE", result=eagain)
    _errno(errno.EAGAIN, lambda: u.zeropage(P, PAGE), "ZEROPAGE during REMOVE", result=eagain)
    _errno(errno.EAGAIN, lambda: u.writeprotect(P, PAGE, PROTECT), "WRITEPROTECT during REMOVE")
    msgs = _drain(u)
    check([x.event for x in msgs] == [PF, U.UFFD_EVENT_REMOVE], f"page faults first, then events: {msgs}")
    check((msgs[1].start, msgs[1].end) == (P, P + 2 * PAGE), f"REMOVE range {msgs[1]}")
    wb.thread.resume()
    u.zeropage(Z, PAGE)
    t.resume()
    _, ev = _waits_for(lambda: p.madvise(P + 2 * PAGE, 2 * PAGE, C.MADV_FREE), u, U.UFFD_EVENT_REMOVE,
                       "MADV_FREE with EVENT_REMOVE")
    check((ev.start, ev.end) == (P + 2 * PAGE, P + 4 * PAGE), f"REMOVE range {ev}")
    A = _area(p, "shmem", 2)
    u.register(A.addr, 2 * PAGE, MISSING)
    p.pwrite(A.fd, b"s" * (2 * PAGE), 0)
    p.fallocate(A.fd, C.FALLOC_FL_PUNCH_HOLE | C.FALLOC_FL_KEEP_SIZE, 0, PAGE)
    check(u.pending() == 0, "fallocate(PUNCH_HOLE) sends no event")
    _, ev = _waits_for(lambda: p.madvise(A.addr + PAGE, PAGE, C.MADV_REMOVE), u, U.UFFD_EVENT_REMOVE,
                       "MADV_REMOVE with EVENT_REMOVE")
    check((ev.start, ev.end) == (A.addr + PAGE, A.addr + 2 * PAGE), f"REMOVE range {ev}")


@uffd_scenario("S74", "uffd-remap", "mremap without / with EVENT_REMAP")
def remap(m, backing):
    """Without EVENT_REMAP the moved VMA is unregistered (reads zero-fill, no
    message, stale uffd-wp harmless); with it mremap waits for REMAP {from, to,
    len} and the new range keeps faulting and keeps its uffd-wp bits."""
    p = m.spawn()
    pol = m.policy
    u = _uffd(p, F_WP)
    P = p.mmap(0, 2 * PAGE, RW, PRIV)
    u.register(P, 2 * PAGE, MISSING | WP)
    u.copy(P + PAGE, _page(1), mode=U.UFFDIO_COPY_MODE_WP)
    Q0 = p.mmap(0, 2 * PAGE, RW, PRIV)
    Q = p.mremap(P, 2 * PAGE, 2 * PAGE, C.MREMAP_MAYMOVE | C.MREMAP_FIXED, Q0)
    check(p.read(Q, 1) == b"\x00" and u.pending() == 0, "(a) the moved, unregistered VMA zero-fills")
    p.write(Q + PAGE, b"\x01")
    check(u.pending() == 0, "(a) a stale uffd-wp bit in an unregistered VMA reports nothing")
    v = _uffd(p, F_WP | U.UFFD_FEATURE_EVENT_REMAP)
    R = p.mmap(0, 2 * PAGE, RW, PRIV)
    v.register(R, 2 * PAGE, MISSING | WP)
    v.copy(R + PAGE, _page(1), mode=U.UFFDIO_COPY_MODE_WP)
    S0 = p.mmap(0, 2 * PAGE, RW, PRIV)
    S, ev = _waits_for(lambda: p.mremap(R, 2 * PAGE, 2 * PAGE, C.MREMAP_MAYMOVE | C.MREMAP_FIXED, S0),
                       v, U.UFFD_EVENT_REMAP, "mremap with EVENT_REMAP")
    check((ev.from_, ev.to, ev.len) == (R, S, 2 * PAGE), f"REMAP payload {ev}")
    _, wb = _try(lambda: p.read(S, 1))
    check(wb is not None, "(b) the moved VMA stays registered")
    _one_fault(v, S, 0, "read after REMAP")
    v.zeropage(S, PAGE)
    wb.thread.resume()
    if pol.pm_uffd_wp:
        check(p.pagemap(S + PAGE).uffd_wp, "(c) the moved pte keeps uffd-wp")
    _, wb = _try(lambda: p.write(S + PAGE, b"\x01"))
    check(wb is not None, "(c) the moved protected page still reports writes")
    _one_fault(v, S + PAGE, FLAG_WRITE | FLAG_WP, "write after REMAP")
    v.writeprotect(S + PAGE, PAGE, 0)
    wb.thread.resume()


@uffd_scenario("S81", "uffd-madv-populate", "MADV_POPULATE_* with userfaultfd", needs=needs(populate=True))
def madv_populate(m, backing):
    """POPULATE_READ takes read MISSING faults, POPULATE_WRITE takes WP faults,
    like user accesses; with SIGBUS mode they fail EFAULT; POPULATE_WRITE of a
    PROT_READ VMA is EINVAL; POPULATE_READ of plain anon maps the zero page."""
    p = m.spawn()
    u = _uffd(p, F_WP)
    n = 4
    P = p.mmap(0, n * PAGE, RW, PRIV)
    u.register(P, n * PAGE, MISSING | WP)
    seen = []

    def handler(ctx, msg):
        seen.append(msg.flags)
        if msg.flags & FLAG_WP:
            ctx.writeprotect(msg.address, PAGE, 0)
        else:
            ctx.copy(msg.address, _page(0), mode=U.UFFDIO_COPY_MODE_WP)
    u.serve(handler)
    p.madvise(P, n * PAGE, C.MADV_POPULATE_READ)
    check(seen == [0] * n, f"POPULATE_READ: {n} read MISSING faults expected, got {seen}")
    del seen[:]
    p.madvise(P, n * PAGE, C.MADV_POPULATE_WRITE)
    check(seen == [FLAG_WRITE | FLAG_WP] * n, f"POPULATE_WRITE: {n} WP faults expected, got {seen}")
    s = _uffd(p, U.UFFD_FEATURE_SIGBUS)
    B = p.mmap(0, PAGE, RW, PRIV)
    s.register(B, PAGE, MISSING)
    _errno(errno.EFAULT, lambda: p.madvise(B, PAGE, C.MADV_POPULATE_READ), "POPULATE_READ in SIGBUS mode")
    ro = p.mmap(0, PAGE, RO, PRIV)
    _errno(errno.EINVAL, lambda: p.madvise(ro, PAGE, C.MADV_POPULATE_WRITE), "POPULATE_WRITE of PROT_READ")
    plain = p.mmap(0, PAGE, RW, PRIV)
    rss = p.rss_anon
    p.madvise(plain, PAGE, C.MADV_POPULATE_READ)
    check(_is_zero_page(m, p.pagemap(plain).pfn) and p.rss_anon == rss,
          "POPULATE_READ of plain anon maps the zero page")


@uffd_scenario("S82", "uffd-continue-private", "UFFDIO_CONTINUE on private shmem; MODE_WP",
               backings=("shmem-private",), needs=needs(minor=True))
def continue_private(m, backing):
    """CONTINUE maps the cache page R/O into a private mapping, a write COWs it
    into anon, the file keeps its data; EEXIST on a populated slot, EFAULT
    where the cache has no page, EINVAL outside shmem; 6.4+ MODE_WP protects."""
    p = m.spawn()
    fd = p.memfd_create("minor")
    p.ftruncate(fd, 2 * PAGE)
    p.pwrite(fd, b"A" * PAGE, 0)
    V = p.mmap(0, 2 * PAGE, RW, C.MAP_PRIVATE, fd, 0)
    wp = m.policy.uffd_features & U.UFFD_FEATURE_WP_UNPOPULATED and m.policy.uffd_wp_file
    u = _uffd(p, U.UFFD_FEATURE_MINOR_SHMEM | (F_WP if wp else 0))
    u.register(V, 2 * PAGE, MINOR)
    _, wb = _try(lambda: p.read(V, 1))
    check(wb is not None, "a read of a cached page in a MINOR VMA must fault")
    _one_fault(u, V, FLAG_MINOR, "MINOR read")
    check(u.continue_(V, PAGE) == PAGE, "CONTINUE must map one page")
    check(wb.thread.resume() == b"A", "the read must see the cache page")
    e = p.pagemap(V)
    check(e.present and e.file_shared, f"CONTINUE maps the cache page itself (pagemap {e})")
    p.write(V, b"B")
    check(p.pread(fd, 1, 0) == b"A", "the private write must not reach the file")
    check(not p.pagemap(V).file_shared, "the write COWed the page into anon")
    _errno(errno.EEXIST, lambda: u.continue_(V, PAGE), "CONTINUE onto a populated slot",
           result=-errno.EEXIST)
    _errno(errno.EFAULT, lambda: u.continue_(V + PAGE, PAGE), "CONTINUE where the cache has no page",
           result=-errno.EFAULT)
    X = p.mmap(0, PAGE, RW, PRIV)
    u.register(X, PAGE, MISSING)
    _errno(errno.EINVAL, lambda: u.continue_(X, PAGE), "CONTINUE into anonymous memory",
           result=-errno.EINVAL)
    if wp:
        fd2 = p.memfd_create("minor-wp")
        p.pwrite(fd2, b"C" * PAGE, 0)
        W = p.mmap(0, PAGE, RW, C.MAP_PRIVATE, fd2, 0)
        u.register(W, PAGE, MINOR | WP)
        u.continue_(W, PAGE, U.UFFDIO_CONTINUE_MODE_WP)
        check(p.pagemap(W).uffd_wp, "CONTINUE(MODE_WP) must map the page uffd-wp")
        _, wb = _try(lambda: p.write(W, b"D"))
        check(wb is not None, "the write must raise a WP fault")
        _one_fault(u, W, FLAG_WRITE | FLAG_WP, "write after CONTINUE(MODE_WP)")
        u.writeprotect(W, PAGE, 0)
        wb.thread.resume()
    m.check()


@uffd_scenario("S85", "uffd-wp-zero-page", "uffd-wp on the zero page, and async resolution")
def wp_zero_page(m, backing):
    """A protected zero-page pte reports the write; after unprotect the write
    COWs into a new exclusive page. WP_ASYNC (6.7+): no message, the bit goes."""
    p = m.spawn()
    pol = m.policy
    u = _uffd(p, F_WP)
    P = p.mmap(0, PAGE, RW, PRIV)
    u.register(P, PAGE, WP)
    p.read(P, 1)
    u.writeprotect(P, PAGE, PROTECT)
    if pol.pm_uffd_wp:
        check(p.pagemap(P).uffd_wp, "the zero-page pte must read uffd-wp")
    _, wb = _try(lambda: p.write(P, b"\x01"))
    check(wb is not None, "the write to the protected zero page must be reported")
    _one_fault(u, P, FLAG_WRITE | FLAG_WP, "write to the zero page")
    u.writeprotect(P, PAGE, 0)
    wb.thread.resume()
    e = p.pagemap(P)
    check(e.present and e.exclusive and not _is_zero_page(m, e.pfn), f"COW off the zero page (pagemap {e})")
    if pol.uffd_features & U.UFFD_FEATURE_WP_ASYNC:
        v = _uffd(p, F_WP | U.UFFD_FEATURE_WP_ASYNC)
        Q = p.mmap(0, PAGE, RW, PRIV)
        v.register(Q, PAGE, WP)
        p.read(Q, 1)
        v.writeprotect(Q, PAGE, PROTECT)
        p.write(Q, b"\x01")
        e = p.pagemap(Q)
        check(v.pending() == 0 and not e.uffd_wp and not _is_zero_page(m, e.pfn),
              f"WP_ASYNC: silent COW, bit cleared (pagemap {e})")
