"""Every version-gated interface opens where the kernel's history says.

For each row of kernel_history.HISTORY (written from upstream commits, not
from eras.py), a fresh Machine of every modelled version tries the interface
through the public API and the test checks it is refused in exactly the
versions before the row's release and accepted from it on. A gate moved in
eras.py by one release turns its row red; a scenario that needs the
interface merely skipping there would hide the move, which is why this file
exists (issue 14).

A row where the engine disagrees with history is a strict xfail naming the
correction eras.py (or the gate's owner) needs: it keeps failing the day the
engine is fixed, and that day the mark must go.

Each probe returns True when the version offers the interface, False when
it refuses it with the errno Linux refuses it with; any other outcome is an
error of the test, not an answer.
"""
import errno

import pytest

import mmemu
from mmemu import constants as C
from mmemu import uffd as U
from mmemu.eras import VERSIONS, _key

from kernel_history import HISTORY

PAGE = C.PAGE_SIZE
RW = C.PROT_READ | C.PROT_WRITE
ANON = C.MAP_PRIVATE | C.MAP_ANONYMOUS


def _machine(version):
    return mmemu.Machine(kernel=version, memory=4 << 20)


def _anon(p, npages=1, touch=True):
    a = p.mmap(0, npages * PAGE, RW, ANON)
    if touch:
        for i in range(npages):
            p.write(a + i * PAGE, b"x")
    return a


def _shmem(p, touch=True):
    """One page of a memfd mapped shared, its page in the page cache but not
    in the page table (what CONTINUE resolves)."""
    fd = p.memfd_create("gate")
    p.ftruncate(fd, PAGE)
    a = p.mmap(0, PAGE, RW, C.MAP_SHARED, fd, 0)
    if touch:
        p.write(a, b"x")
        p.madvise(a, PAGE, C.MADV_DONTNEED)
    return a


def _offered(call, *refusals):
    """True if call() succeeds; False if it fails with one of `refusals`."""
    try:
        call()
    except OSError as e:
        if e.errno in refusals:
            return False
        raise
    return True


def _uffd(p, features=0):
    u = p.userfaultfd()
    u.api(features)
    return u


# ---- probes: version -> offered? ---------------------------------------------------------

def _madvise(advice):
    def probe(v):
        p = _machine(v).spawn()
        a = _anon(p)
        try:
            return _offered(lambda: p.madvise(a, PAGE, advice), errno.EINVAL)
        except NotImplementedError:
            return True         # known to this version, not modelled yet (_MADV_LATER)
    return probe


def madv_collapse(v):
    """MADV_COLLAPSE of a populated, aligned 2 MiB: collapsed where offered."""
    p = mmemu.Machine(kernel=v, memory=16 << 20).spawn()
    raw = p.mmap(0, 2 * C.PMD_SIZE, RW, ANON)
    mem = (raw + C.PMD_SIZE - 1) & ~(C.PMD_SIZE - 1)
    p.write(mem, b"x")
    return _offered(lambda: p.madvise(mem, C.PMD_SIZE, C.MADV_COLLAPSE), errno.EINVAL)


def _memfd_flag(flag):
    def probe(v):
        p = _machine(v).spawn()
        return _offered(lambda: p.memfd_create("gate", flag), errno.EINVAL)
    return probe


def _feature(bit):
    """UFFDIO_API reports the bit, and a context can enable it."""
    def probe(v):
        p = _machine(v).spawn()
        reported = bool(p.userfaultfd().api(0) & bit)
        enabled = _offered(lambda: p.userfaultfd().api(bit), errno.EINVAL)
        assert reported == enabled, f"{v}: UFFDIO_API reports {bit:#x}: {reported}, enables it: {enabled}"
        return enabled
    return probe


def mremap_dontunmap(v):
    p = _machine(v).spawn()
    a = _anon(p)
    return _offered(lambda: p.mremap(a, PAGE, PAGE, C.MREMAP_MAYMOVE | C.MREMAP_DONTUNMAP), errno.EINVAL)


def mremap_dontunmap_shared(v):
    p = _machine(v).spawn()
    a = _shmem(p)
    return _offered(lambda: p.mremap(a, PAGE, PAGE, C.MREMAP_MAYMOVE | C.MREMAP_DONTUNMAP), errno.EINVAL)


def mremap_multi_vma(v):
    # Two VMAs (different protections), moved together to a fixed address.
    p = _machine(v).spawn()
    a = _anon(p, 2)
    p.mprotect(a + PAGE, PAGE, C.PROT_READ)
    dst = p.mmap(0, 2 * PAGE, RW, ANON)
    return _offered(lambda: p.mremap(a, 2 * PAGE, 2 * PAGE, C.MREMAP_MAYMOVE | C.MREMAP_FIXED, dst),
                    errno.EFAULT)


def uffd_user_mode_only(v):
    p = _machine(v).spawn()
    return _offered(lambda: p.userfaultfd(U.UFFD_USER_MODE_ONLY), errno.EINVAL)


def uffdio_writeprotect(v):
    p = _machine(v).spawn()
    a = _anon(p)
    u = _uffd(p)
    u.register(a, PAGE, U.UFFDIO_REGISTER_MODE_WP)
    return _offered(lambda: u.writeprotect(a, PAGE, U.UFFDIO_WRITEPROTECT_MODE_WP), errno.EINVAL)


def uffdio_continue(v):
    # The ioctl itself: on a range no context registered, a kernel that knows
    # it looks the VMA up (ENOENT); one that does not answers EINVAL.
    p = _machine(v).spawn()
    a = _anon(p)
    u = _uffd(p)
    try:
        u.continue_(a, PAGE)
    except OSError as e:
        if e.errno == errno.EINVAL:
            return False
        if e.errno == errno.ENOENT:
            return True
        raise
    raise AssertionError(f"{v}: UFFDIO_CONTINUE resolved an unregistered range")


def uffdio_continue_shmem(v):
    p = _machine(v).spawn()
    a = _shmem(p)
    u = _uffd(p)
    u.register(a, PAGE, U.UFFDIO_REGISTER_MODE_MISSING)
    return _offered(lambda: u.continue_(a, PAGE), errno.EINVAL)


def uffd_register_minor_shmem(v):
    p = _machine(v).spawn()
    a = _shmem(p)
    u = _uffd(p)
    return _offered(lambda: u.register(a, PAGE, U.UFFDIO_REGISTER_MODE_MINOR), errno.EINVAL)


def uffd_register_wp_shmem(v):
    p = _machine(v).spawn()
    a = _shmem(p)
    u = _uffd(p)
    return _offered(lambda: u.register(a, PAGE, U.UFFDIO_REGISTER_MODE_WP), errno.EINVAL)


def thpsize_shmem_enabled(v):
    # Machine.thp.shmem_sizes: the per-size shmem_enabled files (ENOENT before).
    m = _machine(v)
    try:
        m.thp.shmem_sizes[2 << 20] = "always"
    except FileNotFoundError:
        return False
    return True


def uffdio_continue_mode_wp(v):
    p = _machine(v).spawn()
    a = _shmem(p)
    u = _uffd(p)

    def call():
        u.register(a, PAGE, U.UFFDIO_REGISTER_MODE_MINOR | U.UFFDIO_REGISTER_MODE_WP)
        u.continue_(a, PAGE, U.UFFDIO_CONTINUE_MODE_WP)
    return _offered(call, errno.EINVAL)


def uffdio_writeprotect_multi_vma(v):
    p = _machine(v).spawn()
    a = _anon(p, 2)
    p.mprotect(a + PAGE, PAGE, C.PROT_READ)
    u = _uffd(p)
    u.register(a, 2 * PAGE, U.UFFDIO_REGISTER_MODE_WP)
    return _offered(lambda: u.writeprotect(a, 2 * PAGE, U.UFFDIO_WRITEPROTECT_MODE_WP), errno.ENOENT)


def uffdio_poison(v):
    p = _machine(v).spawn()
    a = _anon(p, touch=False)
    u = _uffd(p)
    u.register(a, PAGE, U.UFFDIO_REGISTER_MODE_MISSING)
    return _offered(lambda: u.poison(a, PAGE), errno.EINVAL)


def _move(v, zero_page):
    p = _machine(v).spawn()
    src = _anon(p, touch=not zero_page)
    if zero_page:
        p.read(src, 1)              # a read fault maps the shared zero page
    dst = _anon(p, touch=False)
    u = _uffd(p)
    u.register(dst, PAGE, U.UFFDIO_REGISTER_MODE_MISSING)
    # Before 6.8 the ioctl is unknown (EINVAL); 6.8 itself refuses the zero page (EBUSY).
    return _offered(lambda: u.move(dst, src, PAGE), errno.EINVAL, errno.EBUSY)


def uffdio_move(v):
    return _move(v, zero_page=False)


def uffdio_move_zeropage(v):
    return _move(v, zero_page=True)


def uffdio_unregister_own_ctx(v):
    # Offered = the new rule: a context may not unregister another's VMA.
    p = _machine(v).spawn()
    a = _anon(p)
    _uffd(p).register(a, PAGE, U.UFFDIO_REGISTER_MODE_MISSING)
    other = _uffd(p)
    return not _offered(lambda: other.unregister(a, PAGE), errno.EINVAL)


def pm_uffd_wp(v):
    p = _machine(v).spawn()
    a = _anon(p)
    u = _uffd(p)
    u.register(a, PAGE, U.UFFDIO_REGISTER_MODE_WP)
    u.writeprotect(a, PAGE, U.UFFDIO_WRITEPROTECT_MODE_WP)
    return p.pagemap(a).uffd_wp


def pagemap_scan(v):
    p = _machine(v).spawn()
    a = _anon(p)
    return _offered(lambda: p.pagemap_scan(a, a + PAGE, return_mask=C.PAGE_IS_PRESENT), errno.ENOTTY)


def guard_file_backed(v):
    m = _machine(v)
    if not m.policy.madv_guard:
        return False                 # no guard regions at all (its own row)
    p = m.spawn()
    fd = p.memfd_create("gate")
    p.ftruncate(fd, PAGE)
    a = p.mmap(0, PAGE, C.PROT_READ, C.MAP_SHARED, fd, 0)
    return _offered(lambda: p.madvise(a, PAGE, C.MADV_GUARD_INSTALL), errno.EINVAL)


def pm_guard_region(v):
    m = _machine(v)
    if not m.policy.madv_guard:
        return False
    p = m.spawn()
    a = _anon(p, touch=False)
    p.madvise(a, PAGE, C.MADV_GUARD_INSTALL)
    return p.pagemap(a).guard


def page_is_guard(v):
    p = _machine(v).spawn()
    a = _anon(p)
    return _offered(lambda: p.pagemap_scan(a, a + PAGE, category_mask=C.PAGE_IS_GUARD,
                                           return_mask=C.PAGE_IS_GUARD), errno.ENOTTY, errno.EINVAL)


def longterm_pin_movable(v):
    """True when a long-term pin moves its ZONE_MOVABLE page out (pfn and zone change)."""
    m = mmemu.Machine(kernel=v, memory=4 << 20, movablecore=2 << 20)
    p = m.spawn()
    a = _anon(p)
    before = p.pagemap(a).pfn
    assert m.zone_of(before) == "Movable"           # user pages come from ZONE_MOVABLE first
    pin = p.pin_user_pages(a, 1, C.FOLL_WRITE | C.FOLL_LONGTERM)
    moved = m.zone_of(int(pin.pfns[0])) == "Normal"
    assert moved == (p.pagemap(a).pfn != before) and p.read(a, 1) == b"x"
    pin.release()
    return moved


def longterm_pin_fails(v):
    """True when a long-term pin of a CMA page another reference holds
    (vmsplice) fails ENOMEM; False when it pins the page where it is."""
    m = mmemu.Machine(kernel=v, memory=4 << 20, cma=3 << 20)
    p = m.spawn()
    a = _anon(p)
    assert m.zone_of(p.pagemap(a).pfn) == "CMA"      # CMA holds most of the free memory: taken first
    pipe = p.vmsplice(a, PAGE)
    try:
        pin = p.pin_user_pages(a, 1, C.FOLL_WRITE | C.FOLL_LONGTERM)
    except OSError as e:
        if e.errno != errno.ENOMEM:
            raise
        return True
    assert m.zone_of(int(pin.pfns[0])) == "CMA"
    pin.release()
    pipe.close()
    return False


PROBES = {
    "madv_wipeonfork": _madvise(C.MADV_WIPEONFORK),
    "madv_cold": _madvise(C.MADV_COLD),
    "madv_pageout": _madvise(C.MADV_PAGEOUT),
    "madv_populate_read": _madvise(C.MADV_POPULATE_READ),
    "madv_populate_write": _madvise(C.MADV_POPULATE_WRITE),
    "madv_dontneed_locked": _madvise(C.MADV_DONTNEED_LOCKED),
    "madv_collapse": madv_collapse,
    "madv_guard_install": _madvise(C.MADV_GUARD_INSTALL),
    "madv_guard_remove": _madvise(C.MADV_GUARD_REMOVE),
    "mremap_dontunmap": mremap_dontunmap,
    "mremap_dontunmap_shared": mremap_dontunmap_shared,
    "mremap_multi_vma": mremap_multi_vma,
    "mfd_noexec_seal": _memfd_flag(C.MFD_NOEXEC_SEAL),
    "mfd_exec": _memfd_flag(C.MFD_EXEC),
    "uffd_user_mode_only": uffd_user_mode_only,
    **{f"feature_{name[len('UFFD_FEATURE_'):].lower()}": _feature(getattr(U, name))
       for name in dir(U) if name.startswith("UFFD_FEATURE_")},
    "uffdio_writeprotect": uffdio_writeprotect,
    "uffdio_continue": uffdio_continue,
    "uffdio_continue_shmem": uffdio_continue_shmem,
    "uffd_register_minor_shmem": uffd_register_minor_shmem,
    "uffd_register_wp_shmem": uffd_register_wp_shmem,
    "uffdio_continue_mode_wp": uffdio_continue_mode_wp,
    "uffdio_writeprotect_multi_vma": uffdio_writeprotect_multi_vma,
    "uffdio_poison": uffdio_poison,
    "uffdio_move": uffdio_move,
    "uffdio_move_zeropage": uffdio_move_zeropage,
    "uffdio_unregister_own_ctx": uffdio_unregister_own_ctx,
    "pm_uffd_wp": pm_uffd_wp,
    "pagemap_scan": pagemap_scan,
    "page_is_guard": page_is_guard,
    "guard_file_backed": guard_file_backed,
    "pm_guard_region": pm_guard_region,
    "longterm_pin_movable": longterm_pin_movable,
    "longterm_pin_fails": longterm_pin_fails,
    "thpsize_shmem_enabled": thpsize_shmem_enabled,
}

# Rows where the engine disagrees with the kernel's history today; each
# reason says what the correction is. Strict: the fix turns the row green
# and this mark must go with it.
DISAGREE = {}

MODELLED = [f for f in HISTORY if f.modelled]


def _row(f):
    marks = [pytest.mark.xfail(strict=True, raises=AssertionError, reason=DISAGREE[f.key])] if f.key in DISAGREE else []
    return pytest.param(f, marks=marks, id=f.key)


@pytest.mark.parametrize("feature", [_row(f) for f in MODELLED])
def test_gate_opens_at_the_release_history_gives(feature):
    probe = PROBES[feature.key]
    offered = {v: probe(v) for v in VERSIONS}
    expected = {v: _key(v) >= _key(feature.release) for v in VERSIONS}
    wrong = [v for v in VERSIONS if offered[v] != expected[v]]
    first = next((v for v in VERSIONS if offered[v]), "never")
    assert not wrong, (f"{feature.what}: the engine offers it from {first}, Linux from "
                       f"{feature.release} ({feature.commit or 'id unconfirmed'}: {feature.title}); "
                       f"wrong in {', '.join(wrong)}")


def test_every_probe_has_a_row_and_every_row_a_probe():
    keys = [f.key for f in HISTORY]
    assert len(keys) == len(set(keys))
    assert set(PROBES) == {f.key for f in MODELLED}
    assert set(DISAGREE) <= set(PROBES)


def test_rows_are_well_formed():
    for f in HISTORY:
        assert _key(f.release), f.key
        assert f.commit is None or (len(f.commit) >= 12 and int(f.commit, 16) >= 0), f.key
        assert f.confidence in ("confirmed", "inferred"), f.key
        assert f.commit is not None or f.confidence == "inferred", f.key


def test_interfaces_the_engine_lacks_are_still_absent():
    # A row the engine does not model must not gain an API without a probe:
    # memfd_secret(2), process_madvise(2).
    p = _machine(VERSIONS[-1]).spawn()
    for name in ("memfd_secret", "process_madvise"):
        assert not hasattr(p, name), f"{name} is offered: give its row a probe"


# ---- nothing version-dependent outside the table ------------------------------------------

def _rows_opening_after_oldest(prefix):
    return {f.key for f in HISTORY if f.key.startswith(prefix) and _key(f.release) > _key(VERSIONS[0])}


def test_every_advice_that_depends_on_the_version_has_a_row():
    def accepted(v):
        p = _machine(v).spawn()
        a = _anon(p)
        out = set()
        for advice in range(0, 128):
            try:
                p.madvise(a, PAGE, advice)
            except OSError as e:
                if e.errno == errno.EINVAL:
                    continue
            except NotImplementedError:
                pass
            out.add(advice)
        return out
    varying = accepted(VERSIONS[-1]) ^ accepted(VERSIONS[0])
    names = {getattr(C, n): n for n in dir(C) if n.startswith("MADV_")}
    rows = {getattr(C, "MADV_" + k[len("madv_"):].upper()) for k in _rows_opening_after_oldest("madv_")}
    assert varying <= rows, sorted(names.get(a, a) for a in varying - rows)


def test_every_flag_that_depends_on_the_version_has_a_row():
    def memfd_flags(v):
        p = _machine(v).spawn()
        out = set()
        for b in range(32):
            if _offered(lambda: p.memfd_create("f", 1 << b), errno.EINVAL):
                out.add(1 << b)
        return out

    def uffd_flags(v):
        p = _machine(v).spawn()
        return {1 << b for b in range(32) if _offered(lambda: p.userfaultfd(1 << b), errno.EINVAL)}

    def features(v):
        return _machine(v).spawn().userfaultfd().api(0)

    old, new = VERSIONS[0], VERSIONS[-1]
    mfd = {getattr(C, "MFD_" + k[len("mfd_"):].upper()) for k in _rows_opening_after_oldest("mfd_")}
    assert memfd_flags(new) ^ memfd_flags(old) <= mfd
    assert uffd_flags(new) ^ uffd_flags(old) <= {U.UFFD_USER_MODE_ONLY}
    varying = features(new) ^ features(old)
    rows = {getattr(U, "UFFD_FEATURE_" + k[len("feature_"):].upper())
            for k in _rows_opening_after_oldest("feature_")}
    assert {1 << b for b in range(64) if varying >> b & 1} <= rows
