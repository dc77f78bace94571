"""userfaultfd: contexts, ioctls, messages, waiting and waking
(fs/userfaultfd.c, mm/userfaultfd.c; include/uapi/linux/userfaultfd.h).

The core decides *whether* a fault goes to userspace (handle_userfault) and
does the page-table work of each ioctl; this module owns what the kernel
keeps in struct userfaultfd_ctx: features, the fault and event queues,
mmap_changing, and the wait queues. A faulting thread either runs the
context's service handler (Uffd.serve) or raises WouldBlock and stays
blocked until a wake and Thread.resume().
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import numpy.typing as npt
    from typing_extensions import Buffer

    from .eras import Policy
    from .process import Process

from dataclasses import dataclass

from . import args as _args
from . import cost as _cost
from . import constants as C
from .sched import Thread, Waiter, mmap_unlocked
from .serialise import serialised
from .errors import (EAGAIN, EBUSY, EEXIST, EFAULT, EINVAL, ENOENT, ENOMEM, EPERM, Deadlock,
                     EmulatedSignal, MmemuError, WouldBlock, oserror)
from .vma import (VM_HUGETLB, VM_LOCKED, VM_MAYWRITE, VM_SHARED, VM_UFFD_MINOR, VM_UFFD_MISSING,
                  VM_UFFD_WP, VM_WRITE)

# --- UAPI (include/uapi/linux/userfaultfd.h): from mmemu.constants, re-exported here
from .constants import (O_NONBLOCK, O_CLOEXEC, UFFD_API, UFFDIO, UFFD_USER_MODE_ONLY,
    _UFFDIO_REGISTER, _UFFDIO_UNREGISTER, _UFFDIO_WAKE, _UFFDIO_COPY, _UFFDIO_ZEROPAGE,
    _UFFDIO_MOVE, _UFFDIO_WRITEPROTECT, _UFFDIO_CONTINUE, _UFFDIO_POISON, _UFFDIO_API,
    UFFD_API_IOCTLS, UFFDIO_API, UFFDIO_REGISTER, UFFDIO_UNREGISTER, UFFDIO_WAKE, UFFDIO_COPY,
    UFFDIO_ZEROPAGE, UFFDIO_MOVE, UFFDIO_WRITEPROTECT, UFFDIO_CONTINUE, UFFDIO_POISON,
    UFFDIO_REGISTER_MODE_MISSING, UFFDIO_REGISTER_MODE_WP, UFFDIO_REGISTER_MODE_MINOR,
    UFFDIO_COPY_MODE_DONTWAKE, UFFDIO_COPY_MODE_WP, UFFDIO_ZEROPAGE_MODE_DONTWAKE,
    UFFDIO_WRITEPROTECT_MODE_WP, UFFDIO_WRITEPROTECT_MODE_DONTWAKE, UFFDIO_CONTINUE_MODE_DONTWAKE,
    UFFDIO_CONTINUE_MODE_WP, UFFDIO_POISON_MODE_DONTWAKE, UFFDIO_MOVE_MODE_DONTWAKE,
    UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES, UFFD_EVENT_PAGEFAULT, UFFD_EVENT_FORK, UFFD_EVENT_REMAP,
    UFFD_EVENT_REMOVE, UFFD_EVENT_UNMAP, UFFD_PAGEFAULT_FLAG_WRITE, UFFD_PAGEFAULT_FLAG_WP,
    UFFD_PAGEFAULT_FLAG_MINOR, UFFD_FEATURE_PAGEFAULT_FLAG_WP, UFFD_FEATURE_EVENT_FORK,
    UFFD_FEATURE_EVENT_REMAP, UFFD_FEATURE_EVENT_REMOVE, UFFD_FEATURE_MISSING_HUGETLBFS,
    UFFD_FEATURE_MISSING_SHMEM, UFFD_FEATURE_EVENT_UNMAP, UFFD_FEATURE_SIGBUS,
    UFFD_FEATURE_THREAD_ID, UFFD_FEATURE_MINOR_HUGETLBFS, UFFD_FEATURE_MINOR_SHMEM,
    UFFD_FEATURE_EXACT_ADDRESS, UFFD_FEATURE_WP_HUGETLBFS_SHMEM, UFFD_FEATURE_WP_UNPOPULATED,
    UFFD_FEATURE_POISON, UFFD_FEATURE_WP_ASYNC, UFFD_FEATURE_MOVE)  # noqa: F401

PAGE = C.PAGE_SIZE

# Which range ioctls exist, by the feature that arrived with them.
_IOCTL_SINCE = {_UFFDIO_CONTINUE: UFFD_FEATURE_MINOR_HUGETLBFS, _UFFDIO_POISON: UFFD_FEATURE_POISON,
                _UFFDIO_MOVE: UFFD_FEATURE_MOVE}
_FILL_COPY, _FILL_ZEROPAGE, _FILL_CONTINUE, _FILL_POISON = 0, 1, 2, 3


class UffdError(OSError):
    """A failed userfaultfd ioctl (every one: API, REGISTER, UNREGISTER, the
    range ioctls, WRITEPROTECT, WAKE): errno, plus `result`, the ioctl's
    output field (bytes done after partial progress, or -errno; None where
    the ioctl has none or left it unwritten). read(2) errors stay OSError."""

    def __init__(self, err: int, call: str, result: int | None, detail: str | None = None) -> None:
        e = oserror(err, call, detail)
        super().__init__(e.errno, e.strerror)
        self.result = result


def _ioctl_error(err, call, detail=None):
    """A failed ioctl with no output field written."""
    return UffdError(err, call, None, detail)


def _u64(x, call, name):
    """A __u64 field of an ioctl's struct (uffdio_range, modes, api): any
    integer, as the struct would hold it; beyond 64 bits it cannot be one."""
    try:
        return _args.ulong(x, call, name)
    except OSError as e:
        raise _ioctl_error(e.errno, call, f"{name} does not fit in 64 bits") from None


def _u64s(call, **fields):
    """The fields through _u64; the ioctls skip it when every one is a plain
    int below 2^64 (`not (a | b) >> 64`), a handler's usual arguments."""
    return [_u64(v, call, k) for k, v in fields.items()]


@dataclass(slots=True)
class UffdMsg:
    """struct uffd_msg: `event` and the fields of its union that apply."""
    event: int
    flags: int = 0          # pagefault
    address: int = 0        # pagefault
    ptid: int = 0           # pagefault with THREAD_ID
    ufd: object = None      # fork: the child's Uffd
    from_: int = 0          # remap
    to: int = 0
    len: int = 0
    start: int = 0          # remove, unmap
    end: int = 0

    def __repr__(self) -> str:
        names = {UFFD_EVENT_PAGEFAULT: "PAGEFAULT", UFFD_EVENT_FORK: "FORK", UFFD_EVENT_REMAP: "REMAP",
                 UFFD_EVENT_REMOVE: "REMOVE", UFFD_EVENT_UNMAP: "UNMAP"}
        n = names.get(self.event, hex(self.event))
        if self.event == UFFD_EVENT_PAGEFAULT:
            return f"<uffd_msg {n} flags={self.flags:#x} address={self.address:#x}>"
        if self.event == UFFD_EVENT_REMAP:
            return f"<uffd_msg {n} {self.from_:#x}->{self.to:#x} len={self.len:#x}>"
        if self.event in (UFFD_EVENT_REMOVE, UFFD_EVENT_UNMAP):
            return f"<uffd_msg {n} [{self.start:#x}, {self.end:#x})>"
        return f"<uffd_msg {n}>"


class Resolver:
    """A service handler declared rather than written: the one both the
    engine (Uffd.serve(resolver)) and the host oracle (a real service thread
    of the server, mmemu/host/_service.c) run, so their messages compare.

    A WP fault is unprotected (WRITEPROTECT off, waking); a MINOR fault is
    CONTINUEd; a MISSING fault gets ZEROPAGE, or with missing="copy" a COPY
    of a page of `fill` bytes; a FORK event's new context is closed (its VMAs
    in the child go unregistered). Each message is logged with the errno of
    the ioctl that failed to resolve it, if one did; take() hands them over."""

    MISSING = ("zeropage", "copy")

    def __init__(self, missing: str = "zeropage", fill: int = 0) -> None:
        if missing not in self.MISSING:
            raise ValueError(f"missing: one of {self.MISSING}")
        if not 0 <= fill < 256:
            raise ValueError("fill is a byte")
        self.missing, self.fill = missing, fill
        self.log = []               # [(UffdMsg, errno or None)]
        self._page = bytes([fill]) * PAGE
        self._source = None         # the host: fetch the log from the server

    def resolve(self, u: Any, event: int, flags: int, address: int,
                close_fork: Callable[[], object]) -> None:
        """Resolve one message on `u` (a Uffd, or the host's raw context)."""
        event, flags, address = (_args.ulong(v, "resolve", n) for n, v in
                                 (("event", event), ("flags", flags), ("address", address)))
        if event == UFFD_EVENT_FORK:
            close_fork()
        elif event == UFFD_EVENT_PAGEFAULT:
            page = address & ~(PAGE - 1)
            if flags & UFFD_PAGEFAULT_FLAG_WP:
                u.writeprotect(page, PAGE, 0)
            elif flags & UFFD_PAGEFAULT_FLAG_MINOR:
                u.continue_(page, PAGE, 0)
            elif self.missing == "copy":
                u.copy(page, self._page)
            else:
                u.zeropage(page, PAGE, 0)

    def __call__(self, uffd: Uffd, msg: UffdMsg) -> None:
        entry = [msg, None]
        self.log.append(entry)
        try:
            self.resolve(uffd, msg.event, msg.flags, msg.address, lambda: msg.ufd.close())
        except OSError as e:
            entry[1] = e.errno

    def take(self) -> list[tuple[UffdMsg, int | None]]:
        """The messages served since the last take(): [(UffdMsg, errno or None)]."""
        if self._source is not None:
            return self._source()
        out, self.log = [tuple(e) for e in self.log], []
        return out


@serialised
class Uffd:
    """One userfaultfd context (the file returned by userfaultfd(2))."""

    def __init__(self, process: Process, flags: int = 0, features: int | None = None,
                 parent: Uffd | None = None) -> None:
        self.process = process
        self.machine = process.machine
        self._lock = self.machine._lock
        self.flags = flags
        self.ctx = self.machine._new_uffd(self)
        self.features = features            # None until UFFDIO_API
        self.released = False
        self.mmap_changing = 0
        self.faults = []                    # Waiters whose message is not read yet
        self.events = []                    # (Waiter, msg) of non-cooperative events
        self.waiting = []                   # Waiters read but not woken
        self.handler = None
        self.service_thread = None
        if features is not None:
            self._push()

    # ---- helpers --------------------------------------------------------------
    @property
    def policy(self) -> Policy:
        return self.machine.policy

    def _push(self):
        self.machine._engine.uffd_set(self.ctx, self.features or 0,
                                      UFFD_USER_MODE_ONLY if self.flags & UFFD_USER_MODE_ONLY else 0)

    def _ready(self, call):
        if self.released:
            raise _ioctl_error(9, call, "closed userfaultfd")       # EBADF
        if self.features is None:
            raise _ioctl_error(EINVAL, call, "UFFDIO_API first")

    def _fast(self, addr, length):
        """The ioctl may take its one-VMA path, whose remaining checks the core makes."""
        return 0 <= addr < C.TASK_SIZE and 0 < length <= C.TASK_SIZE and not self.mmap_changing \
            and self.features is not None and not self.released and self.process.alive

    def _eagain_result(self):
        # Until 6.15 the early mmap_changing exit left the output field unwritten.
        return -EAGAIN if self.policy.uffd_eagain_result else None

    def _has_ioctl(self, nr):
        need = _IOCTL_SINCE.get(nr)
        return need is None or bool(self.policy.uffd_features & need)

    def _range(self, addr, length, call):
        # validate_range(): aligned, non-empty, below TASK_SIZE (no mmap_min_addr
        # check on the 6.18 host: WAKE at 0 succeeds).
        if addr & (PAGE - 1) or length & (PAGE - 1) or length <= 0 or not 0 <= addr < C.TASK_SIZE \
                or length > C.TASK_SIZE - addr:
            raise _ioctl_error(EINVAL, call, "range not page aligned, empty or beyond TASK_SIZE")
        return addr, addr + length

    def _vmas(self, start, end):
        return self.process.vmas.overlapping(start, end)

    def _hsize(self, vma):
        """A hugetlb VMA's huge page size (vma_kernel_pagesize)."""
        return self.machine._files[vma.file].hsize

    def _hugetlb_aligned(self, vmas, start, end, call):
        """userfaultfd_(un)register(): the range starts on a huge-page
        boundary if its first VMA is hugetlb (end: checked per VMA)."""
        if vmas[0].flags & VM_HUGETLB and start % self._hsize(vmas[0]):
            raise _ioctl_error(EINVAL, call, "range starts inside a huge page")

    def _monitor_thread(self, process):
        """The thread of `process` that issues ioctls while its main thread
        is blocked (made once, on the process's CPU)."""
        if process.uffd_monitor is None:
            process.uffd_monitor = Thread(process, process.cpu)
        return process.uffd_monitor

    def _prepare_anon(self, addr):
        """uffd_lock_vma() (6.9+): the VMA at the destination gets an anon_vma
        if private, before any check of it - a failed ioctl leaves it there
        (and the next fork copies that VMA's ptes)."""
        if not self.policy.uffd_vma_lock:
            return None
        p = self.process
        vma = p.vmas.find(addr)
        if vma is not None and not vma.flags & VM_SHARED:
            p._engine.anon_vma_prepare(p.mm, addr)
        return vma

    def _registered_vma(self, start, end, call, result_errno=ENOENT):
        """The one VMA of this context covering [start, end) (fill ioctls)."""
        vma = self.process.vmas.find(start)
        if vma is None or vma.end < end or vma.uffd != self.ctx:
            raise UffdError(result_errno, call, -result_errno, "range not in one registered VMA")
        return vma

    # ---- UFFDIO_API ------------------------------------------------------------
    def api(self, features: int = 0, api: int = UFFD_API) -> int:
        """UFFDIO_API: returns the features the kernel supports (all of them)."""
        features, api = _u64(features, "UFFDIO_API", "features"), _u64(api, "UFFDIO_API", "api")
        if self.released:
            raise _ioctl_error(9, "UFFDIO_API")
        if self.features is not None:
            raise _ioctl_error(EINVAL, "UFFDIO_API", "already initialised")
        supported = self.policy.uffd_features
        if api != UFFD_API or features & ~supported:
            raise _ioctl_error(EINVAL, "UFFDIO_API", "unknown api or feature")
        if features & UFFD_FEATURE_WP_ASYNC:
            features |= UFFD_FEATURE_WP_UNPOPULATED     # WP_ASYNC implies it
        self.features = features
        self._push()
        self.ioctls = UFFD_API_IOCTLS
        return supported

    # ---- UFFDIO_REGISTER / UNREGISTER ----------------------------------------
    def register(self, addr: int, length: int, mode: int) -> int:
        if not (type(addr) is type(length) is type(mode) is int and not (addr | length | mode) >> 64):
            addr, length, mode = _u64s("UFFDIO_REGISTER", addr=addr, length=length, mode=mode)
        self._ready("UFFDIO_REGISTER")
        start, end = self._range(addr, length, "UFFDIO_REGISTER")
        if not mode or mode & ~(UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP
                                | UFFDIO_REGISTER_MODE_MINOR):
            raise _ioctl_error(EINVAL, "UFFDIO_REGISTER", "bad mode")
        if mode & UFFDIO_REGISTER_MODE_MINOR and not self.policy.uffd_features & UFFD_FEATURE_MINOR_HUGETLBFS:
            raise _ioctl_error(EINVAL, "UFFDIO_REGISTER", "MINOR unknown to this kernel")
        vmas = self._vmas(start, end)
        if not vmas:
            # userfaultfd_register(): at least one VMA in the range; holes are
            # skipped (the VMAs there are registered).
            raise _ioctl_error(EINVAL, "UFFDIO_REGISTER", "no VMA in the range")
        self._hugetlb_aligned(vmas, start, end, "UFFDIO_REGISTER")
        for v in vmas:
            # vma_can_userfault(): anon, shmem or hugetlb; MINOR only on
            # hugetlb (5.13) and shmem (5.14); WP on shmem and hugetlb only
            # with pte markers (5.19).
            if mode & UFFDIO_REGISTER_MODE_MINOR and not v.flags & VM_HUGETLB and (
                    not v.file or not self.policy.uffd_features & UFFD_FEATURE_MINOR_SHMEM):
                raise _ioctl_error(EINVAL, "UFFDIO_REGISTER", "MINOR needs shmem or hugetlb")
            if mode & UFFDIO_REGISTER_MODE_WP and v.file and not self.policy.uffd_wp_file:
                raise _ioctl_error(EINVAL, "UFFDIO_REGISTER", "WP on shmem and hugetlb needs 5.19")
            if not v.flags & VM_MAYWRITE:
                raise _ioctl_error(EPERM, "UFFDIO_REGISTER", "VMA may not be written")
            if v.flags & VM_HUGETLB and v.start < end <= v.end and end % self._hsize(v):
                raise _ioctl_error(EINVAL, "UFFDIO_REGISTER", "range ends inside a huge page")
            if v.uffd and v.uffd != self.ctx:
                raise _ioctl_error(EBUSY, "UFFDIO_REGISTER", "registered to another userfaultfd")
        bits = ((VM_UFFD_MISSING if mode & UFFDIO_REGISTER_MODE_MISSING else 0)
                | (VM_UFFD_WP if mode & UFFDIO_REGISTER_MODE_WP else 0)
                | (VM_UFFD_MINOR if mode & UFFDIO_REGISTER_MODE_MINOR else 0))
        p = self.process
        # userfaultfd_register_range(): a VMA already registered to this
        # context with every requested bit is skipped (not split, mode kept);
        # any other VMA gets exactly the new bits.
        todo = [(max(v.start, start), min(v.end, end)) for v in vmas
                if not (v.uffd == self.ctx and v.flags & bits == bits)]
        for s, e in todo:
            for v in p.vmas.isolate(s, e):
                v.flags = (v.flags & ~(VM_UFFD_MISSING | VM_UFFD_WP | VM_UFFD_MINOR)) | bits
                v.uffd = self.ctx
        p._sync()
        ioctls = 0
        for nr in (_UFFDIO_WAKE, _UFFDIO_COPY, _UFFDIO_ZEROPAGE, _UFFDIO_MOVE, _UFFDIO_WRITEPROTECT,
                   _UFFDIO_CONTINUE, _UFFDIO_POISON):
            if self._has_ioctl(nr):
                ioctls |= 1 << nr
        if any(v.flags & VM_HUGETLB for v in vmas):
            # UFFD_API_RANGE_IOCTLS_BASIC: no ZEROPAGE (no huge zero page for
            # every size) and no MOVE on a range with hugetlb VMAs.
            ioctls &= ~(1 << _UFFDIO_ZEROPAGE | 1 << _UFFDIO_MOVE)
        if not mode & UFFDIO_REGISTER_MODE_WP:
            ioctls &= ~(1 << _UFFDIO_WRITEPROTECT)
        if not mode & UFFDIO_REGISTER_MODE_MINOR:
            ioctls &= ~(1 << _UFFDIO_CONTINUE)
        return ioctls

    def unregister(self, addr: int, length: int) -> None:
        if not (type(addr) is type(length) is int and not (addr | length) >> 64):
            addr, length = _u64s("UFFDIO_UNREGISTER", addr=addr, length=length)
        self._ready("UFFDIO_UNREGISTER")
        start, end = self._range(addr, length, "UFFDIO_UNREGISTER")
        # userfaultfd_unregister(): a range with no VMA at all is EINVAL
        # (holes between VMAs are fine).
        vmas = self._vmas(start, end)
        if not vmas:
            raise _ioctl_error(EINVAL, "UFFDIO_UNREGISTER", "no VMA in the range")
        self._hugetlb_aligned(vmas, start, end, "UFFDIO_UNREGISTER")
        if any(v.flags & VM_HUGETLB and v.start < end < v.end and end % self._hsize(v) for v in vmas):
            # (No check of the end here in the kernel: the VMA split there
            # fails in hugetlb_vm_op_split(), EINVAL all the same.)
            raise _ioctl_error(EINVAL, "UFFDIO_UNREGISTER", "range ends inside a huge page")
        if self.policy.uffd_unregister_own_only and any(v.uffd and v.uffd != self.ctx for v in vmas):
            raise _ioctl_error(EINVAL, "UFFDIO_UNREGISTER", "a VMA of the range belongs to another uffd")
        self._unregister(start, end)

    def _unregister(self, start, end, reset_wp=True):
        p = self.process
        if not p.alive:
            return
        eng = self.machine._engine
        wake = []
        for v in list(self._vmas(start, end)):
            if v.uffd != self.ctx:
                continue
            s, e = max(v.start, start), min(v.end, end)
            if v.flags & VM_UFFD_WP and reset_wp:
                eng.uffd_writeprotect(p.mm, s, e, False, False, v.flags)   # bits and markers go
            if v.flags & VM_UFFD_MISSING:
                # userfaultfd_unregister(): only a MISSING registration wakes
                # its waiters; a thread waiting on a WP or MINOR fault of the
                # range stays asleep until UFFDIO_WAKE (seen on the host).
                wake.append((s, e))
        for v in p.vmas.isolate(start, end):
            if v.uffd == self.ctx:
                v.flags &= ~(VM_UFFD_MISSING | VM_UFFD_WP | VM_UFFD_MINOR)
                v.uffd = 0
        p._sync()
        for s, e in wake:
            self._wake(s, e)

    # ---- fill ioctls --------------------------------------------------------
    def _fill(self, call, nr, dst, length, mode, allowed, kind, wp=False, src=None, src_proc=None):
        self._ready(call)
        if not self._has_ioctl(nr):
            raise _ioctl_error(EINVAL, call, "ioctl unknown to this kernel")
        if self.mmap_changing:
            raise UffdError(EAGAIN, call, self._eagain_result(), "mmap_changing")
        if mode & ~allowed:
            # Checked before the ioctl writes its output field (userfaultfd_copy() et al.).
            raise UffdError(EINVAL, call, None, "bad mode")
        start, end = self._range(dst, length, call)
        self._prepare_anon(start)
        vma = self._registered_vma(start, end, call)
        if wp and not vma.flags & VM_UFFD_WP:
            raise UffdError(EINVAL, call, -EINVAL, "MODE_WP needs a WP-registered VMA")
        if vma.flags & VM_HUGETLB:
            # mfill_atomic_hugetlb(): no ZEROPAGE; whole huge pages only.
            if kind == _FILL_ZEROPAGE:
                raise UffdError(EINVAL, call, -EINVAL, "no ZEROPAGE into hugetlb memory")
            hs = self._hsize(vma)
            if start % hs or (end - start) % hs:
                raise UffdError(EINVAL, call, -EINVAL, "range not huge-page aligned")
        elif kind == _FILL_CONTINUE and not vma.file:
            # mfill_atomic(): CONTINUE needs a shmem VMA (registration mode is not checked).
            raise UffdError(EINVAL, call, -EINVAL, "CONTINUE needs a shmem VMA")
        elif kind == _FILL_CONTINUE and not self.policy.uffd_features & UFFD_FEATURE_MINOR_SHMEM:
            # 5.13's __mcopy_atomic() continued into hugetlb VMAs only; shmem came
            # with the MINOR_SHMEM feature (153132571f02, 5.14).
            raise UffdError(EINVAL, call, -EINVAL, "CONTINUE into shmem needs 5.14")
        npages = (end - start) // PAGE
        eng = self.machine._engine
        kw = {}
        if src is not None:
            if isinstance(src, int):
                sp = src_proc or self.process
                # copy_from_user() by the thread making the ioctl: a running
                # handler's, else a monitor thread when the main one is blocked.
                t = sp._current()
                if t.blocked is not None:
                    t = self._monitor_thread(sp)
                try:
                    # mfill_atomic(): the copy under the destination's
                    # mmap_lock runs with page faults off; a source not
                    # present makes it drop the lock, fault the source in
                    # with copy_from_user, and take the lock again.
                    with mmap_unlocked(self.machine):
                        sp._read(src, 1, t, kernel=True) if npages == 1 else \
                            sp._populate(src, src + npages * PAGE, False, "uffd", t)
                except EmulatedSignal:
                    raise UffdError(EFAULT, call, -EFAULT, "source not readable") from None
                kw = {"src_mm": sp.mm, "src": src}
            else:
                kw = {"src_bytes": src if isinstance(src, bytes) else bytes(src)}
        p = self.process
        # (A private destination VMA gets its anon_vma in the core.)
        done, err = eng.uffd_fill(p.mm, p.cpu, start, npages, kind, wp=wp, **kw)
        return self._result(call, start, done, err, dontwake=mode & 1)   # every DONTWAKE is bit 0

    def _result(self, call, start, done, err, dontwake):
        """Wake the pages done; report progress like the ioctl's output field:
        all done -> bytes; partial -> EAGAIN with the bytes; none -> -errno."""
        if done and not dontwake and (self.waiting or self.faults):
            self._wake(start, start + done * PAGE)
        if err:
            if done:
                raise UffdError(EAGAIN, call, done * PAGE, "partial progress")
            raise UffdError(err, call, -err)
        return done * PAGE

    def copy(self, dst: int, src: Buffer | int, length: int | None = None, mode: int = 0,
             src_process: Process | None = None) -> int:
        """UFFDIO_COPY from bytes, or from an address of the caller's memory."""
        if self._lock.sched is not None:        # a scheduled thread: the call is a step
            return self._lock.sched.call(self, "copy", Uffd._copy_impl, (dst, src, length, mode, src_process), {})
        return self._copy_impl(dst, src, length, mode, src_process)
    copy.__mmemu_locked__ = True       # type: ignore[attr-defined]

    def _copy_impl(self, dst: int, src: Buffer | int, length: int | None = None, mode: int = 0,
                   src_process: Process | None = None) -> int:
        with self._lock:        # (in its own frame: a handler's hot call)
            if not (type(dst) is type(mode) is int and not (dst | mode) >> 64):
                dst, mode = _u64s("UFFDIO_COPY", dst=dst, mode=mode)
            if length is not None:
                length = _u64(length, "UFFDIO_COPY", "len")
            if isinstance(src, (bytearray, memoryview)):
                src = bytes(src)
            elif not isinstance(src, bytes):
                src = _u64(src, "UFFDIO_COPY", "src")
            if src_process is not None and not hasattr(src_process, "_gup_run"):
                raise TypeError("UFFDIO_COPY: src_process must be a Process, not "
                                f"{type(src_process).__name__}")
            if length is None and type(src) is bytes and not mode and self._fast(dst, len(src)):
                # The handler's usual call: whole pages of bytes into one registered
                # VMA, checked in the core; anything else takes the checked path.
                p = self.process
                r = self.machine._engine.uffd_fill_one(p.mm, p.cpu, self.ctx, dst, len(src), _FILL_COPY, src)
                if r is not None:
                    return self._result("UFFDIO_COPY", dst, r[0], r[1], 0)
            if length is None:
                if isinstance(src, int):
                    raise ValueError("length is required with a source address")
                length = len(src)
            elif not isinstance(src, int) and len(src) < length:
                raise ValueError("source shorter than length")
            return self._fill("UFFDIO_COPY", _UFFDIO_COPY, dst, length, mode,
                              UFFDIO_COPY_MODE_DONTWAKE | UFFDIO_COPY_MODE_WP, _FILL_COPY,
                              wp=bool(mode & UFFDIO_COPY_MODE_WP), src=src, src_proc=src_process)

    def zeropage(self, addr: int, length: int, mode: int = 0) -> int:
        if self._lock.sched is not None:        # a scheduled thread: the call is a step
            return self._lock.sched.call(self, "zeropage", Uffd._zeropage_impl, (addr, length, mode), {})
        return self._zeropage_impl(addr, length, mode)
    zeropage.__mmemu_locked__ = True       # type: ignore[attr-defined]

    def _zeropage_impl(self, addr: int, length: int, mode: int = 0) -> int:
        with self._lock:        # (in its own frame: a handler's hot call)
            if not (type(addr) is type(length) is type(mode) is int
                    and not (addr | length | mode) >> 64):
                addr, length, mode = _u64s("UFFDIO_ZEROPAGE", addr=addr, length=length, mode=mode)
            if not mode and self._fast(addr, length):
                r = self.machine._engine.uffd_fill_one(self.process.mm, self.process.cpu, self.ctx,
                                                       addr, length, _FILL_ZEROPAGE)
                if r is not None:
                    return self._result("UFFDIO_ZEROPAGE", addr, r[0], r[1], 0)
            return self._fill("UFFDIO_ZEROPAGE", _UFFDIO_ZEROPAGE, addr, length, mode,
                              UFFDIO_ZEROPAGE_MODE_DONTWAKE, _FILL_ZEROPAGE)

    def continue_(self, addr: int, length: int, mode: int = 0) -> int:
        if not (type(addr) is type(length) is type(mode) is int and not (addr | length | mode) >> 64):
            addr, length, mode = _u64s("UFFDIO_CONTINUE", addr=addr, length=length, mode=mode)
        allowed = UFFDIO_CONTINUE_MODE_DONTWAKE
        if self.policy.uffd_features & UFFD_FEATURE_WP_UNPOPULATED:   # CONTINUE_MODE_WP: 6.4
            allowed |= UFFDIO_CONTINUE_MODE_WP
        return self._fill("UFFDIO_CONTINUE", _UFFDIO_CONTINUE, addr, length, mode, allowed,
                          _FILL_CONTINUE, wp=bool(mode & UFFDIO_CONTINUE_MODE_WP))

    def poison(self, addr: int, length: int, mode: int = 0) -> int:
        if not (type(addr) is type(length) is type(mode) is int and not (addr | length | mode) >> 64):
            addr, length, mode = _u64s("UFFDIO_POISON", addr=addr, length=length, mode=mode)
        return self._fill("UFFDIO_POISON", _UFFDIO_POISON, addr, length, mode,
                          UFFDIO_POISON_MODE_DONTWAKE, _FILL_POISON)

    def move(self, dst: int, src: int, length: int, mode: int = 0) -> int:
        """UFFDIO_MOVE (6.8): move exclusive anon pages from src to dst."""
        if not (type(dst) is type(src) is type(length) is type(mode) is int
                and not (dst | src | length | mode) >> 64):
            dst, src, length, mode = _u64s("UFFDIO_MOVE", dst=dst, src=src, length=length, mode=mode)
        call = "UFFDIO_MOVE"
        self._ready(call)
        if not self._has_ioctl(_UFFDIO_MOVE):
            raise _ioctl_error(EINVAL, call, "ioctl unknown to this kernel")
        if self.mmap_changing:
            raise UffdError(EAGAIN, call, self._eagain_result(), "mmap_changing")
        if mode & ~(UFFDIO_MOVE_MODE_DONTWAKE | UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES):
            raise UffdError(EINVAL, call, None, "bad mode")
        start, end = self._range(dst, length, call)
        self._range(src, length, call)
        p = self.process
        if self.policy.uffd_vma_lock:
            # uffd_move_lock() (6.9): dst's VMA is found (and given an
            # anon_vma), then src's; a missing one is ENOENT.
            if self._prepare_anon(start) is None or p.vmas.find(src) is None:
                raise UffdError(ENOENT, call, -ENOENT, "no VMA at dst or src")
        dvma = self._registered_vma(start, end, call, EINVAL)
        svma = p.vmas.find(src)
        # validate_move_areas(): both private anon, same protection, src writable.
        for v in (dvma, svma):
            if v is None or v.file or v.flags & VM_SHARED:
                raise UffdError(EINVAL, call, -EINVAL, "MOVE needs private anonymous VMAs")
        # validate_move_areas(): same protection, both mlocked or neither, src writable.
        if svma.end < src + length or (svma.flags & 7) != (dvma.flags & 7) or not svma.flags & VM_WRITE \
                or (svma.flags ^ dvma.flags) & VM_LOCKED:
            raise UffdError(EINVAL, call, -EINVAL, "incompatible VMAs")
        done, err = self.machine._engine.uffd_move(p.mm, start, src, length // PAGE,
                                                   bool(mode & UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES),
                                                   bool(self.policy.uffd_move_zeropage))
        return self._result(call, start, done, err, dontwake=mode & UFFDIO_MOVE_MODE_DONTWAKE)

    # ---- UFFDIO_WRITEPROTECT ---------------------------------------------------
    def writeprotect(self, addr: int, length: int, mode: int) -> None:
        if self._lock.sched is not None:        # a scheduled thread: the call is a step
            return self._lock.sched.call(self, "writeprotect", Uffd._writeprotect_impl, (addr, length, mode), {})
        return self._writeprotect_impl(addr, length, mode)
    writeprotect.__mmemu_locked__ = True       # type: ignore[attr-defined]

    def _writeprotect_impl(self, addr: int, length: int, mode: int) -> None:
        with self._lock:        # (in its own frame: a handler's hot call)
            if not (type(addr) is type(length) is type(mode) is int
                    and not (addr | length | mode) >> 64):
                addr, length, mode = _u64s("UFFDIO_WRITEPROTECT", addr=addr, length=length, mode=mode)
            call = "UFFDIO_WRITEPROTECT"
            if (mode == 0 or mode == UFFDIO_WRITEPROTECT_MODE_WP) and self._fast(addr, length) and \
                    self.machine._engine.uffd_writeprotect_one(self.process.mm, self.ctx, addr,
                                                               addr + length, mode != 0):
                # One WP-registered VMA of this context covers the range (every era's rule).
                if not mode and (self.waiting or self.faults):
                    self._wake(addr, addr + length)
                return
            self._ready(call)
            if self.mmap_changing:
                raise UffdError(EAGAIN, call, self._eagain_result(), "mmap_changing")
            if mode & ~(UFFDIO_WRITEPROTECT_MODE_WP | UFFDIO_WRITEPROTECT_MODE_DONTWAKE) or \
                    mode == UFFDIO_WRITEPROTECT_MODE_WP | UFFDIO_WRITEPROTECT_MODE_DONTWAKE:
                raise _ioctl_error(EINVAL, call, "bad mode")
            start, end = self._range(addr, length, call)
            vmas = self._vmas(start, end)
            if not self.policy.uffd_wp_multi_vma:
                # mwriteprotect_range() before 6.4: find_dst_vma() wants one
                # registered VMA covering the whole range, checked before any change.
                if len(vmas) != 1 or vmas[0].start > start or vmas[0].end < end or \
                        not vmas[0].uffd or not vmas[0].flags & VM_UFFD_WP:
                    raise _ioctl_error(ENOENT, call, "range not in one WP-registered VMA")
            elif not vmas:
                raise _ioctl_error(ENOENT, call, "no VMA in range")
            protect = bool(mode & UFFDIO_WRITEPROTECT_MODE_WP)
            p = self.process
            eng = self.machine._engine
            for v in vmas:
                # 6.4+: VMAs are handled in address order (holes skipped) and the
                # first one without VM_UFFD_WP stops the walk with ENOENT, keeping
                # the changes already made to the VMAs before it.
                if not v.flags & VM_UFFD_WP:
                    raise _ioctl_error(ENOENT, call, "VMA not registered for WP")
                if v.flags & VM_HUGETLB and (start % self._hsize(v) or (end - start) % self._hsize(v)):
                    # mwriteprotect_range(): the whole range in huge pages (5.19).
                    raise _ioctl_error(EINVAL, call, "range not huge-page aligned")
                # userfaultfd_wp_use_markers(): file memory always (5.19+), anon
                # only with WP_UNPOPULATED (6.4).
                markers = bool(v.file) or bool(self.features & UFFD_FEATURE_WP_UNPOPULATED)
                eng.uffd_writeprotect(p.mm, max(v.start, start), min(v.end, end), protect, markers, v.flags)
            if not protect and not mode & UFFDIO_WRITEPROTECT_MODE_DONTWAKE:
                self._wake(start, end)

    # ---- waking and reading -----------------------------------------------------
    def wake(self, addr: int, length: int) -> None:
        if not (type(addr) is type(length) is int and not (addr | length) >> 64):
            addr, length = _u64s("UFFDIO_WAKE", addr=addr, length=length)
        self._ready("UFFDIO_WAKE")
        start, end = self._range(addr, length, "UFFDIO_WAKE")
        self._wake(start, end)

    def _wake(self, start, end):
        # A woken, unread message is withdrawn from the queue.
        for queue in (self.waiting, self.faults):
            if queue:
                keep = []
                for w in queue:
                    if w.start < end and start < w.end:
                        w.woken = True
                    else:
                        keep.append(w)
                queue[:] = keep

    def read(self, max_msgs: int | None = None) -> list[UffdMsg]:
        """read(2): page faults first, then non-cooperative events."""
        if self.released:
            raise oserror(9, "read")
        if self.features is None:
            raise oserror(EINVAL, "read", "UFFDIO_API first")
        out = []
        while self.faults and (max_msgs is None or len(out) < max_msgs):
            w = self.faults.pop(0)
            w.read = True
            self.waiting.append(w)
            out.append(w.msg)
        while self.events and (max_msgs is None or len(out) < max_msgs):
            w, msg = self.events.pop(0)
            w.read = w.woken = True              # (its thread lowers mmap_changing)
            out.append(msg)
        if not out and self.flags & O_NONBLOCK:
            raise oserror(EAGAIN, "read", "no message")
        return out

    def pending(self) -> int:
        return len(self.faults) + len(self.events)

    def close(self) -> None:
        """The last reference goes (userfaultfd_release): every VMA is
        unregistered and every waiter woken; pending events are dropped."""
        if self.released:
            return
        if any(msg.event == UFFD_EVENT_FORK for _, msg in self.events):
            # fork() waits for its unread FORK event, and the child it is
            # making already holds a copy of this fd (copy_files() comes
            # before dup_mmap()): this close is not the last reference, so
            # nothing is released, and nobody can read the event any more -
            # the fork waits for good (seen on the host).
            self.released = True
            return
        p = self.process
        if p.alive:
            # Until c88033efe9a3 (6.9) the release left uffd-wp bits and
            # markers in place (6.1.176 under QEMU keeps a marker a closed
            # fork context had); since, it resets them as UNREGISTER does.
            reset = bool(self.machine.policy.uffd_release_resets_wp)
            for v in list(p.vmas):
                if v.uffd == self.ctx:
                    self._unregister(v.start, v.end, reset)
        for w in self.faults + self.waiting:
            w.woken = True
        for w, _ in self.events:
            w.woken = True
        self.faults, self.waiting, self.events = [], [], []
        self.mmap_changing = 0
        self.released = True
        self.handler = None
        self.machine._free_uffd(self)

    # ---- service threads -----------------------------------------------------
    def serve(self, handler: Callable[[Uffd, UffdMsg], object], cpu: int | None = None) -> Thread:
        """Run `handler(uffd, msg)` as this context's service thread, on its
        own CPU, for every message from now on; faulting accesses complete
        once it resolved them."""
        if not callable(handler):
            raise TypeError(f"serve: the handler must be callable, not {type(handler).__name__}")
        self.handler = handler
        self.service_thread = self.process.thread(cpu)
        self._run_handler()             # a service thread started late reads what is queued
        return self.service_thread

    def _run_handler(self):
        """The service thread reads and handles until the queue is empty."""
        m = self.machine
        m._serving.append(self)
        try:
            while self.faults or self.events:
                for msg in self.read():
                    self.handler(self, msg)
        finally:
            m._serving.pop()

    _RESOLVERS = {"copy": 1, "zeropage": 2, "unprotect": 3, "pager": 4}

    def serve_core(self, resolver: str | None, base: int = 0,
                   versions: npt.ArrayLike | None = None, *, link: Any = None,
                   arrival: npt.ArrayLike | None = None, resident: int | None = None,
                   log: bool = False) -> None:
        """A service thread that never returns to Python: "copy" fills MISSING
        faults from `versions` (content version per page, index 0 at `base`),
        "zeropage" maps the zero page, "unprotect" resolves WP faults and logs
        their addresses (core_log()) - with `versions`, a uint64 array it
        writes into, it first records each page's content version there
        (unprotect-and-record: a snapshot saving the page before the write).
        "pager" is a user-level pager (umap's) over `versions` as its
        backing store, keeping at most `resident` pages: a MISSING fault
        first evicts the oldest resident page when full (written back to the
        store if its contents changed, then dropped as MADV_DONTNEED does),
        then fills the page from the store. Faults it cannot resolve go to
        the queue as usual. resolver=None removes it. With log=True it keeps
        every fault it serves, with its emulated time and wait
        (core_stats()["events"]; a link always does).

        With `link` (a mmemu.cost.Link) and `arrival` (ns at which each source
        page reaches this side by the background stream), "copy" serves the
        pages as a postcopy destination does: a fault on a page not yet
        arrived is a page request over the link and moves the faulting CPU's
        emulated clock on by its latency (core_stats())."""
        self._ready("serve_core")
        import numpy as np
        if resolver is not None and resolver not in self._RESOLVERS:
            raise ValueError(f"serve_core: resolver must be one of {sorted(self._RESOLVERS)} or None, "
                             f"not {resolver!r}")
        if (link is None) != (arrival is None) or (link is not None and resolver != "copy"):
            raise ValueError("serve_core: a link and its arrival times go together, with \"copy\"")
        if link is not None and not isinstance(link, _cost.Link):
            raise TypeError(f"serve_core: link must be a mmemu.cost.Link, not {type(link).__name__}")
        if (resident is not None) != (resolver == "pager"):
            raise ValueError("serve_core: \"pager\" takes resident=N (pages), and only it")
        if resident is not None:
            resident = _args.size(resident, "serve_core", "resident")
            if resident < 1 or versions is None or resident > len(np.asarray(versions)):
                raise ValueError("serve_core: a pager needs a store (versions) and resident >= 1, at most its pages")
        kind = 0 if resolver is None else self._RESOLVERS[resolver]
        base = _args.ulong(base, "serve_core", "base")
        if link is not None:
            # Checked before anything is installed: one arrival time per source page.
            arrival = np.asarray(arrival)
            if versions is None or arrival.ndim != 1 or arrival.dtype.kind not in "iu" \
                    or len(arrival) != len(np.asarray(versions)):
                raise ValueError("serve_core: a link needs the source (versions) and one integer "
                                 "arrival time per source page")
        self._versions = None if versions is None else np.ascontiguousarray(versions, np.uint64)
        eng = self.machine._engine
        eng.uffd_resolver(self.ctx, kind, base, self._versions, bool(log))
        self._arrival = None
        self._link = link
        self._ring = None
        if resident is not None:
            self._ring = np.zeros(resident, np.int64)
            eng.uffd_resolver_ring(self.ctx, self._ring)
        if link is not None:
            self._arrival = np.ascontiguousarray(arrival, np.int64)   # the core updates it in place
            end = int(self._arrival.max()) if len(self._arrival) else 0
            eng.uffd_resolver_link(self.ctx, self._arrival, link.latency_ns, link.page_ns, link.queue_ns,
                                   end, link.preempt)

    def core_stats(self, since: int = 0) -> dict:
        """What the in-core resolver saw: the faults it served (with a link:
        the remote ones, page requests), faults on pages that had arrived
        (link only), the faulting threads' total wait (ns) and its histogram
        in QEMU's postcopy-latency-dist buckets (bucket N: [2^N, 2^(N+1))
        us), and the faults from index `since` on as an (n, 3) array: start
        time (emulated ns), wait, page index from the resolver's base. A
        pager adds its resident pages (oldest first), evictions and
        write-backs."""
        since = min(_args.size(since, "core_stats", "since"), 1 << 62)     # beyond the log: nothing
        import numpy as np
        if self.features is None or self.released:
            return {"faults": 0, "arrived": 0, "wait_ns": 0, "hist": np.zeros(24, np.int64),
                    "events": np.zeros((0, 3), np.int64)}
        eng = self.machine._engine
        faults, arrived, wait, hist, ev = eng.uffd_resolver_stats(self.ctx, since)
        out = {"faults": int(faults), "arrived": int(arrived), "wait_ns": int(wait), "hist": hist, "events": ev}
        if getattr(self, "_ring", None) is not None:
            out["resident"], out["evictions"], out["writebacks"] = eng.uffd_resolver_resident(self.ctx)
        return out

    def core_log(self) -> tuple[int, npt.NDArray[np.int64]]:
        """(faults the in-core resolver resolved, addresses it logged)."""
        if self.features is None or self.released:
            import numpy as np
            return 0, np.zeros(0, np.int64)       # no resolver ever ran (or the context is gone)
        return self.machine._engine.uffd_resolver_log(self.ctx)

    def _deliver(self, waiter, kind):
        """A thread waits on this context: run the service thread, or block."""
        m = self.machine
        if self.handler is None:
            s = self._lock.sched
            if s is not None and s.uffd_wait(waiter, self, kind):
                return          # a scheduled thread slept until another thread woke it
            raise WouldBlock(waiter.thread, self, waiter.msg)
        if self in m._serving:
            # The service thread itself now waits on its own context: nobody
            # else reads it (the umapsort self-hang, 5.8's forced COW).
            raise Deadlock("a service thread faulted on the range only it serves",
                           [(f"service thread {waiter.thread.tid} of uffd {self.ctx}",
                             waiter.msg.address or waiter.start, f"{kind} on uffd {self.ctx}")])
        self._run_handler()
        if not waiter.woken:
            raise self._unresolved(waiter, kind)

    def _unresolved(self, waiter, kind):
        return Deadlock("the service handler returned without resolving the fault",
                        [(f"thread {waiter.thread.tid}", waiter.msg.address or waiter.start,
                          f"{kind} on uffd {self.ctx}")])

    def __repr__(self) -> str:
        return f"<Uffd ctx={self.ctx} of pid {self.process.pid}{' closed' if self.released else ''}>"


# ---- userfault delivery: a thread's fault or event waits on a context -------

def _resume_in_handler():
    raise MmemuError("a thread cannot be resumed from inside the handler serving its fault")

# (handle_userfault, userfaultfd_event_wait_completion; the waiting itself is
# mmemu.sched's)

def fault_waiter(uffd, thread, address, flags):
    """handle_userfault()'s message (exact address and thread id as the
    context's features say) and the waiter sleeping on its page."""
    feats = uffd.features or 0
    page = address & ~(C.PAGE_SIZE - 1)
    msg = UffdMsg(UFFD_EVENT_PAGEFAULT, flags,
                  address if feats & UFFD_FEATURE_EXACT_ADDRESS else page,
                  thread.tid if feats & UFFD_FEATURE_THREAD_ID else 0)
    return Waiter(thread, msg, page, page + C.PAGE_SIZE)

def userfault(m, thread, uf, rest):
    """A thread's access hit handle_userfault(): queue the message on the
    context and wait (service handler, or WouldBlock with the rest of the
    call kept for Thread.resume())."""
    uffd = m._uffds[uf.ctx]
    if uf.waiter is not None:
        # The handler ran in place (serve_in_place) and returned
        # without resolving: the thread stays blocked on it.
        thread.blocked = (uf.waiter, rest, uffd)
        err, uf.waiter.error = uf.waiter.error, None
        raise err if err is not None else uffd._unresolved(uf.waiter, "a page fault")
    waiter = fault_waiter(uffd, thread, uf.address, uf.flags)
    uffd.faults.append(waiter)
    thread.blocked = (waiter, rest, uffd)
    before = m._engine.pte(uf.mm, waiter.start)
    uffd._deliver(waiter, "a page fault")
    thread.blocked = None
    if thread.process.alive:
        check_progress(m, thread, uffd, uf.mm, waiter, before)

SPIN_LIMIT = 1000       # wakes in a row that leave the faulting pte as it was

def check_progress(m, thread, uffd, mm, waiter, before):
    """A handler that wakes a fault without resolving it (an unregister
    and register again, a wake alone) makes the access fault again at
    once: Linux would spin there for good. The engine counts such wakes
    in a row, the pte unchanged, and ends the spin as a Deadlock."""
    if m._engine.pte(mm, waiter.start) != before:
        thread.spins = 0
        return
    thread.spins = getattr(thread, "spins", 0) + 1
    if thread.spins > SPIN_LIMIT:
        thread.spins = 0
        raise Deadlock("the handler keeps waking the fault without resolving it",
                       [(f"thread {thread.tid}", waiter.msg.address or waiter.start,
                         f"a page fault on uffd {uffd.ctx}, woken {SPIN_LIMIT} times")])

def serve_in_place(m, thread, ctx, address, flags):
    """The core's in-place userfault path: when the context has a service
    handler and nothing is queued or being served, run the handler here
    and let the access retry inside the core. Returns None once the
    fault is resolved and woken, False when the general path must take
    it (nothing done), or the Waiter a handler left unresolved or raised
    from (the thread then stays blocked, as with _deliver)."""
    uffd = m._uffds[ctx]
    if uffd.handler is None or m._serving or uffd.faults or uffd.events:
        return False
    waiter = fault_waiter(uffd, thread, address, flags)
    waiter.read = True                  # handed to the handler: read(2) by its service thread
    uffd.waiting.append(waiter)
    thread.blocked = (waiter, _resume_in_handler, uffd)
    mm = thread.process.mm
    before = m._engine.pte(mm, waiter.start)
    m._serving.append(uffd)
    try:
        # (A fault or event the handler itself raises on this context goes
        # the general way and deadlocks there, as _deliver says.)
        uffd.handler(uffd, waiter.msg)
    except BaseException as e:
        waiter.error = e            # re-raised by userfault() with the thread blocked
        return waiter
    finally:
        m._serving.pop()
        thread.blocked = None
    if not waiter.woken:
        return waiter
    if thread.process.alive:
        check_progress(m, thread, uffd, mm, waiter, before)
    return None

def event(m, thread, uffd, msg, start, end, rest):
    """A non-cooperative event: queued, mmap_changing raised, and the
    thread waits until the monitor reads it; then `rest` runs."""
    waiter = Waiter(thread, msg, start, end)
    uffd.events.append((waiter, msg))
    uffd.mmap_changing += 1

    def done():
        # userfaultfd_event_wait_completion(): the waiting thread itself
        # lowers mmap_changing once it runs again, not the read (a COPY
        # between the read and the thread's return still sees EAGAIN).
        if not uffd.released:
            uffd.mmap_changing -= 1
        return rest()
    thread.blocked = (waiter, done, uffd)
    uffd._deliver(waiter, "the event to be read")
    thread.blocked = None
    return done()
