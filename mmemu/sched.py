"""Threads over time: the emulated threads (Thread) and what they wait in
(Waiter: handle_userfault, an event's completion), and a deterministic
scheduler that runs threads one step at a time with the waits it sees
(mmap_lock, userfaultfd). The explorer of interleavings (mmemu.explore,
mmemu.rerun) is built on it; userfault delivery (what a fault queues, who
serves it) is mmemu.uffd's.

A thread body is an ordinary Python function calling the usual API. Each
body runs on a host thread of its own, but only one runs at a time: a baton
passes between them at scheduling points, and which thread gets it is the
scheduler's choice. A schedule is the list of those choices, so the same
schedule always gives the same result.

Scheduling points:
  * every public call a body makes (syscall, ioctl, user access), before it
    runs;
  * the step boundaries inside kernel operations, which the core reports
    through its hook (core/sched.pxi): a protection walk whose TLB flush is
    still to come, a COW whose copy is taken but whose pte is not yet
    switched, a zap whose flush and freeing are still to come, a fault
    taking mmap_lock;
  * steps the Python layer orchestrates itself (step()).

mmap_lock is modelled as a reader-writer lock per mm: syscalls take it as
Linux does (MMAP_LOCK below), faults take it for read inside the core, and
a thread that cannot take it waits, visibly. A user access that hits the TLB
takes no lock at all, which is how stale entries write on. Like the kernel,
a thread never sleeps for userspace with mmap_lock held: a userfault
(handle_userfault: release_fault_lock), an event's completion
(userfaultfd_unmap_complete, mremap_userfaultfd_complete,
userfaultfd_remove, dup_userfaultfd_complete: all after the unlock) and
shmem_falloc_wait (maybe_unlock_mmap_for_io) drop it and take it back
before going on; UFFDIO_COPY faults its source in outside the destination's
lock (mfill_atomic: -ENOENT, unlock, copy_from_user, relock).

Lock order (lockdep's rule, mm/rmap.c's lock-order comment): no path holds
two mmap_locks at once but fork, which takes the new child's nested (never
contended). A thread that takes a second mm's mmap_lock while it holds one
is a lock-order violation: the run fails with that reason, as a lockdep
splat would, whether or not this interleaving deadlocked.
"""
from __future__ import annotations

import _thread
import hashlib
import threading
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing_extensions import Buffer

    from .process import Process

import numpy as np

from . import constants as C
from .errors import MmemuError, UserFault, WouldBlock
from .serialise import serialised

# Step boundaries the core reports (core/sched.pxi).
SP_MMAP_LOCK_READ = 1
SP_MMAP_UNLOCK_READ = 2
SP_FLUSH_PENDING = 3
SP_COW_COPIED = 4
SP_ZAP_PENDING = 5
SP_COW_DECIDED = 6
SP_FORK_PTE = 7
SP_GUP_FAST_GRABBED = 8
SP_GUP_RETRY = 9
SP_FALLOC_WAIT = 10
SP_MIGRATION_UNMAPPED = 11
SP_MIGRATION_WAIT = 12
SP_HUGETLB_MIGRATION_UNMAPPED = 13

def _is_migration_entry_for(pte, pfn):
    """A migration entry (swp types 2-4 of mm_types.h) naming frame pfn."""
    return not pte & 1 and 2 <= (pte >> 1) & 7 <= 4 and pte >> 12 == pfn


_CORE_LABEL = {       # what a thread does when it goes on from the point
    SP_MIGRATION_UNMAPPED: "migrate_pages: copies each unmapped page, remove_migration_ptes",
    SP_HUGETLB_MIGRATION_UNMAPPED: "unmap_and_move_huge_page: copies the unmapped huge page, "
                                   "remove_migration_ptes",
    SP_FLUSH_PENDING: "flush_tlb_range deferred to the end of the walk, returns",
    SP_COW_COPIED: "wp_page_copy (page copied before): pte_same, ptep_clear_flush, new pte",
    SP_ZAP_PENDING: "tlb_finish_mmu: flush, then free the pages",
    SP_COW_DECIDED: "wp_page_copy: copies the old page (no lock held)",
    SP_FORK_PTE: "copy_present_pte: shares the page, write-protects the parent's pte",
    SP_GUP_FAST_GRABBED: "gup_pte_range: re-reads the pte after the grab",
    SP_GUP_RETRY: "__get_user_pages: retries follow_page after its fault",
}

_W, _R = "write", "read"

# mmap_lock taken by each syscall-like call: mm/mmap.c (mmap, munmap),
# mm/mprotect.c, mm/mremap.c, kernel/fork.c dup_mmap (the parent's lock for
# write), fs/userfaultfd.c (register/unregister for write; the fills and
# UFFDIO_WRITEPROTECT for read), mm/gup.c (GUP for read), fs/proc/task_mmu.c
# clear_refs (write while it clears VM_SOFTDIRTY; modelled write throughout).
# madvise: madvise_need_mmap_write(). A plain user access takes none: a fault
# takes it inside the core.
MMAP_LOCK = {
    "Process": {"mmap": _W, "munmap": _W, "mprotect": _W, "mremap": _W, "fork": _W, "exit": _W,
                "populate": _R, "get_user_pages": _R, "pin_user_pages": _R, "vmsplice": _R,
                "proc_mem_read": _R, "proc_mem_write": _R, "pagemap_scan": _R, "clear_refs": _W,
                # move_pages takes it for read; the migration itself drops it
                # (Linux holds it only to isolate each page): core_point.
                "move_pages": _R, "mbind": _W},
    "Uffd": {"register": _W, "unregister": _W, "copy": _R, "zeropage": _R, "continue_": _R,
             "poison": _R, "move": _R, "writeprotect": _R},
}
_MADV_READ = {C.MADV_REMOVE, C.MADV_WILLNEED, C.MADV_DONTNEED, C.MADV_DONTNEED_LOCKED, C.MADV_COLD,
              C.MADV_PAGEOUT, C.MADV_FREE, C.MADV_POPULATE_READ, C.MADV_POPULATE_WRITE,
              C.MADV_GUARD_INSTALL, C.MADV_GUARD_REMOVE}   # 662df3e5c376: read lock


def _lock_mode(kind, name, args, kwargs):
    if kind == "Process" and name == "madvise":
        advice = args[2] if len(args) > 2 else kwargs.get("advice")
        return _R if advice in _MADV_READ else _W
    return MMAP_LOCK.get(kind, {}).get(name)


def step(machine, label, mm=-1, va=0):
    """A step boundary the Python layer orchestrates (a flush it issues
    after a walk): a scheduling point when a scheduler runs the caller."""
    s = machine._lock.sched
    if s is not None:
        s.python_point(label, mm, va)


# ---- emulated threads and their waits ---------------------------------------

@serialised
class Thread:
    """A thread of a process, running on one CPU (and that CPU's TLB). A
    thread whose access waits on a userfaultfd stays blocked (WouldBlock)
    until the fault is resolved and woken, then resume() completes it."""

    def __init__(self, process: Process, cpu: int) -> None:
        self.process = process
        self._lock = process.machine._lock
        self.cpu = cpu
        self.tid = process.machine._next_tid()
        self.blocked = None             # (Waiter, the rest of the call, Uffd)
        # The core calls this on a userfault to serve it without leaving the access.
        self.serve_fault = partial(process._serve_fault, self)

    def read(self, addr: int, n: int) -> bytes:
        return self.process._read(addr, n, self)

    def write(self, addr: int, data: Buffer) -> None:
        self.process._write(addr, data, self)

    def touch(self, addr: int, npages: int, write: bool = False, value: int = 0) -> int:
        return self.process._touch(addr, npages, write, value, self)

    def replay(self, addrs: Any, writes: Any = None, *, stop_on: Any = (), start: int = 0,
               until: int | None = None) -> dict:
        """Run a trace of user accesses on this thread's CPU without
        returning to Python per access: addrs (uint64 array-like; or a trace
        object with .addrs and .writes), writes (bool/uint8 per access: a
        store of a fresh content version), from index `start`. Faults are
        taken as the accesses would take them; a userfault is served in the
        core by the context's in-core resolver (Uffd.serve_core), else by its
        service handler, else the thread waits (WouldBlock) - or, with
        stop_on={"userfault"}, the batch stops there and reports it. With
        `until`, it also stops once the CPU's emulated clock (Machine.clock)
        reaches that many ns (looked at every 64 accesses). Returns counts: accesses, TLB hits and misses,
        faults by kind, uffd faults, COW copies; `end` (the index reached),
        `clock` (the CPU's emulated time after) and `stopped` (None, or the
        index and address of the access a userfault stopped it at)."""
        return self.process._replay(self, addrs, writes, stop_on, start, until)

    def _call(self, op: Any) -> Any:
        """Run op(), a call of this thread, to its end: a userfault makes the
        thread wait (delivered by mmemu.uffd: a service handler, the
        scheduler, or WouldBlock) and op() is retried once woken."""
        if self.blocked is not None:
            raise MmemuError(f"thread {self.tid} is blocked in a userfault: resume() it first")
        p = self.process
        while True:
            # A handler may have ended this process while the access waited:
            # the retry must not run on an mm id a new process now holds.
            p._live("access")
            try:
                return op()
            except UserFault as uf:
                p._userfault(self, uf, op)

    def resume(self) -> Any:
        """Complete the blocked call once its fault (or event) was resolved
        and woken; if it was not, the thread stays blocked (WouldBlock)."""
        if self.blocked is None:
            raise MmemuError(f"thread {self.tid} is not blocked")
        waiter, rest, uffd = self.blocked
        if not waiter.woken:
            raise WouldBlock(self, uffd, waiter.msg)
        self.blocked = None
        return self._call(rest)

    def __repr__(self) -> str:
        state = " blocked" if self.blocked else ""
        return f"<Thread tid={self.tid} cpu={self.cpu}{state}>"


class Waiter:
    """A thread sleeping in handle_userfault() or in an event's completion."""

    __slots__ = ("thread", "msg", "start", "end", "woken", "read", "error")

    def __init__(self, thread, msg, start, end):
        self.thread, self.msg, self.start, self.end = thread, msg, start, end
        self.woken = False
        self.read = False
        self.error = None           # what a handler served in place raised


class mmap_read:
    """`with sched.mmap_read(machine, mm):` a path that takes mmap_lock for
    read itself (GUP-fast's slow fallback); a no-op off the scheduler."""

    def __init__(self, machine, mm):
        self.s = machine._lock.sched
        self.mm = mm
        self.me = self.s._me() if self.s is not None else None

    def __enter__(self):
        if self.me is not None:
            self.s.mmap_lock(self.me, self.mm, _R)
        return self

    def __exit__(self, *exc):
        if self.me is not None:
            self.s.mmap_unlock(self.me, self.mm, _R)
        return False


class mmap_unlocked:
    """`with sched.mmap_unlocked(machine):` the calling thread drops every
    mmap_lock it holds and takes each back afterwards (mfill_atomic copying
    its source outside the lock); a no-op off the scheduler."""

    def __init__(self, machine):
        self.s = machine._lock.sched
        self.me = self.s._me() if self.s is not None else None

    def __enter__(self):
        if self.me is not None:
            self.saved = self.s.drop_mmap(self.me)
        return self

    def __exit__(self, *exc):
        if self.me is not None:
            self.s.retake_mmap(self.me, self.saved)
        return False


class _Abort(BaseException):
    """Unwinds a body when its run is abandoned (deadlock)."""


_NEW, _READY, _BLOCKED, _DONE = "new", "ready", "blocked", "done"


class SchedThread:
    """One body on the scheduler."""

    def __init__(self, sched, index, body, name):
        self.sched, self.index, self.body, self.name = sched, index, body, name
        self.state = _NEW
        self.pred = None            # when blocked: true once it may run
        self.wait_label = ""
        self.baton = _thread.allocate_lock()
        self.baton.acquire()
        self.depth = 0              # nesting of public calls
        self.threads = {}           # Process -> the Thread calls run on
        self.steps = 0
        self.seen = hashlib.blake2b(digest_size=8)   # what its calls returned
        self.where = ""             # the point it stands at
        self.error = None
        self.cpu = None

    def thread_for(self, process):
        t = self.threads.get(process)
        if t is None:
            t = Thread(process, self.index % process.machine.ncpus)
            self.threads[process] = t
        self.cpu = t.cpu
        return t


@dataclass
class Step:
    thread: int
    name: str
    cpu: int | None
    label: str
    state: dict = field(default_factory=dict)     # filled when a timeline is asked for


def preempt_at(where, name):
    """A chooser for Scheduler: when the running thread stands at a point
    whose label starts with `where` (say "migrate_pages", the window
    between a migration's unmap and its remap) and the thread called `name`
    may run, `name` runs; otherwise the first candidate (the running thread
    while it may go on). The way to put one step of another thread inside a
    kernel operation's window."""
    def choose(sched, cands):
        me = sched.current
        if me is not None and me.where.startswith(where):
            for i, c in enumerate(cands):
                if c.name == name:
                    return i
        return 0
    return choose


class Scheduler:
    """Runs bodies as threads of one machine, one step at a time.

    chooser(sched, candidates) -> index into candidates: the next thread to
    run at a point where more than one may. candidates lists the current
    thread first (when it may go on), then the others by index."""

    def __init__(self, machine, chooser, record=False, watch=()):
        self.machine = machine
        self.lock = machine._lock
        self.chooser = chooser
        self.threads = []
        self.by_ident = {}
        self.current = None
        self.choices = []           # thread index chosen at each real choice
        self.trace = []             # Steps
        self.mmap = {}              # mm -> [writer index or None, {reader index: count}, write count]
        self.stores = []            # (mm, addr, bytes) of completed stores, in order
        self.aborting = False
        self.deadlock = None
        self.lock_order = None      # (thread, held mm, taken mm, where): the first violation
        self.record = record
        self.watch = list(watch)    # (mm, va) pages the timeline shows
        self.done = threading.Event()
        self.touched = set()        # (mm, page) the steps named: what a timeline shows

    # ---- running -----------------------------------------------------------

    def run(self, bodies, names=None):
        names = names or [getattr(b, "__name__", f"T{i}") for i, b in enumerate(bodies)]
        self.threads = [SchedThread(self, i, b, n) for i, (b, n) in enumerate(zip(bodies, names))]
        eng = self.machine._engine
        self.lock.sched = self
        eng.set_sched_hook(self.core_point)
        try:
            # Warm-up: each body runs, alone and in order, to its first point
            # (code before its first call is local: no choice to make there).
            self.warming = True
            self.main_baton = _thread.allocate_lock()
            self.main_baton.acquire()
            for t in self.threads:
                t.os = threading.Thread(target=self._body, args=(t,), name=f"mmemu-{t.name}", daemon=True)
                t.state = _READY
                t.os.start()
                self._give(t)
                self.main_baton.acquire()
            self.warming = False
            first = self._pick(None)
            self._record(first)
            if first is not None:
                self._give(first)
                self.done.wait()
        finally:
            for t in self.threads:
                if hasattr(t, "os"):
                    t.os.join()
            self.lock.sched = None
            eng.set_sched_hook(None)
        self.final_state = self._observe() if self.record else {}
        errors = [t.error for t in self.threads if t.error is not None]
        return errors

    def _body(self, t):
        t.baton.acquire()                   # wait for the first turn
        self.by_ident[threading.get_ident()] = t
        self.current = t
        try:
            if self.aborting:
                raise _Abort()
            t.body()
        except _Abort:
            pass
        except BaseException as e:          # the body's own failure: part of the outcome
            t.error = e
        finally:
            t.state = _DONE
            if self.warming:
                self.main_baton.release()
                return
            nxt = self._pick(t)
            self._record(nxt)
            if nxt is None:
                self.done.set()
            else:
                self._give(nxt)

    def _give(self, t):
        self.current = t
        t.baton.release()

    def _me(self):
        return self.by_ident.get(threading.get_ident())

    def _candidates(self, me):
        out = []
        if me is not None and me.state == _READY:
            out.append(me)
        for t in self.threads:
            if t is me:
                continue
            if t.state == _READY or (t.state == _BLOCKED and t.pred()):
                out.append(t)
        return out

    def _pick(self, me):
        """The next thread to run (None: all done). Detects deadlock."""
        cands = self._candidates(me)
        if not cands:
            live = [t for t in self.threads if t.state != _DONE]
            if not live:
                return None
            if not self.aborting:
                self.deadlock = [(t.name, t.wait_label) for t in live]
                self.aborting = True
            return live[0]
        if self.aborting or len(cands) == 1:
            return cands[0]
        if self.prune_check is not None:
            self.prune_check(self)
        i = self.chooser(self, cands)
        self.choices.append(cands[i].index)
        return cands[i]

    def _switch(self, me, nxt):
        if nxt is me:
            return
        state = self.lock._release_save() if self.lock._is_owned() else None
        self._give(nxt)
        me.baton.acquire()
        self.current = me
        if state is not None:
            self.lock._acquire_restore(state)

    def _record(self, nxt):
        """The step about to run: nxt goes on from where it stands, in the
        state the previous steps left."""
        if self.record and nxt is not None:
            self.trace.append(Step(nxt.index, nxt.name, nxt.cpu, nxt.where, self._observe()))

    def _park(self, me):
        """Warm-up: hand control back to run() until this thread is chosen."""
        state = self.lock._release_save() if self.lock._is_owned() else None
        self.main_baton.release()
        me.baton.acquire()
        self.current = me
        if state is not None:
            self.lock._acquire_restore(state)

    warming = False

    def _point(self, me, label):
        me.steps += 1
        me.where = label
        if self.warming:
            self._park(me)
            return
        if self.aborting:
            return
        nxt = self._pick(me)
        self._record(nxt)
        self._switch(me, nxt)

    prune_check = None      # called at each real choice, before it is made (the explorer's state hashing)

    def _block(self, me, pred, label):
        """Wait until pred() holds: other threads run meanwhile."""
        if pred():
            return
        if self.aborting:
            raise _Abort()
        me.state, me.pred, me.wait_label = _BLOCKED, pred, label
        me.where = f"woken from its wait for {label}"
        nxt = self._pick(me)
        self._record(nxt)
        self._switch(me, nxt)
        me.state, me.pred = _READY, None
        if self.aborting and not pred():
            raise _Abort()

    # ---- the hooks ---------------------------------------------------------

    def call(self, obj, name, fn, args, kwargs):
        """A public call from a body: a point, mmap_lock as the syscall takes
        it, the call under the machine lock, the outcome remembered."""
        me = self._me()
        if me is None or me.depth:
            with self.lock:
                return fn(obj, *args, **kwargs)
        kind = type(obj).__name__
        me.depth += 1
        try:
            if kind == "Thread":
                me.cpu = obj.cpu
            elif kind in ("Process", "Uffd"):
                proc = obj if kind == "Process" else obj.process
                if proc.alive:
                    me.thread_for(proc)
            if self.aborting:
                raise _Abort()
            if kind in ("Process", "Thread", "Uffd") and args and type(args[0]) is int \
                    and 4096 <= args[0] < (1 << 47):
                proc = obj if kind == "Process" else obj.process
                self.touched.add((proc.mm, args[0] & ~4095))
            self._point(me, self._label(kind, name, args))
            mode = _lock_mode(kind, name, args, kwargs)
            mm = None
            if mode is not None:
                proc = obj if kind == "Process" else obj.process
                mm = proc.mm
                self.mmap_lock(me, mm, mode)
            try:
                if kind == "Uffd" and name == "read":
                    self._block(me, lambda: obj.released or obj.faults or obj.events or obj.flags & C.O_NONBLOCK,
                                f"read(uffd {obj.ctx})")
                with self.lock:
                    result = fn(obj, *args, **kwargs)
                    self.machine._engine.sched_error()          # raises what the core hook raised
            except _Abort:
                raise
            except BaseException as e:
                me.seen.update(repr((name, type(e).__name__, str(e))).encode())
                raise
            finally:
                if mode is not None:
                    self.mmap_unlock(me, mm, mode)
            if name == "write" and kind in ("Process", "Thread"):
                proc = obj if kind == "Process" else obj.process
                self.stores.append((proc.mm, int(args[0]), bytes(args[1])))
            me.seen.update(repr((name, _summary(result))).encode())
            return result
        finally:
            me.depth -= 1

    @staticmethod
    def _label(kind, name, args):
        shown = ", ".join(f"{a:#x}" if isinstance(a, int) and a >= 4096 else
                          (repr(bytes(a)[:8]) if isinstance(a, (bytes, bytearray)) else repr(a))
                          for a in args[:3])
        who = {"Process": "", "Thread": "", "Uffd": "uffd."}.get(kind, kind + ".")
        return f"{who}{name}({shown})"

    def core_point(self, point, mm, va, aux):
        """The core's hook (Engine.set_sched_hook), on the thread inside the core."""
        me = self._me()
        if me is None:
            return
        self.touched.add((mm, va & ~4095))
        if point == SP_MMAP_LOCK_READ:
            self.mmap_lock(me, mm, _R, fault=True)
        elif point == SP_MMAP_UNLOCK_READ:
            self.mmap_unlock(me, mm, _R)
        elif point == SP_MIGRATION_WAIT:
            # migration_entry_wait(): until the entry for frame aux is gone.
            eng = self.machine._engine
            self._point(me, f"fault on a migration entry @{va:#x}")
            self._block(me, lambda: not _is_migration_entry_for(eng.pte(mm, va), aux),
                        f"the migration of frame {aux} (migration_entry_wait)")
        elif point in (SP_MIGRATION_UNMAPPED, SP_HUGETLB_MIGRATION_UNMAPPED):
            # migrate_pages() runs without mmap_lock (do_pages_move takes it
            # only to isolate each page): munmap, mremap and fork may run
            # before the entries are replaced, and remove_migration_ptes()
            # finds what fork copied by the rmap walk.
            saved = self.drop_mmap(me)
            self._point(me, f"{_CORE_LABEL[point]} @{va:#x}")
            self.retake_mmap(me, saved)
        elif point == SP_FALLOC_WAIT:
            eng = self.machine._engine
            self._point(me, f"shmem_fault @{va:#x}")
            saved = self.drop_mmap(me)
            self._block(me, lambda: eng.file_falloc(aux) == (0, 0), f"the hole punch of file {aux} (shmem_falloc_wait)")
            self.retake_mmap(me, saved)
        else:
            self._point(me, f"{_CORE_LABEL.get(point, point)} @{va:#x}")

    def python_point(self, label, mm, va):
        me = self._me()
        if me is not None:
            self._point(me, label)

    def uffd_wait(self, waiter, uffd, what):
        """A thread sleeps in handle_userfault() until woken (explorer mode)."""
        me = self._me()
        if me is None:
            return False
        saved = self.drop_mmap(me)
        self._block(me, lambda: waiter.woken or uffd.released, f"{what} on uffd {uffd.ctx}")
        self.retake_mmap(me, saved)
        return True

    def running_here(self):
        return self._me() is not None

    # ---- mmap_lock ---------------------------------------------------------

    def mmap_lock(self, me, mm, mode, fault=False):
        st = self.mmap.setdefault(mm, [None, {}, 0])
        idx = me.index

        def free():
            writer, readers, _ = st
            if mode == _R:
                return writer is None or writer == idx
            return (writer is None or writer == idx) and not any(r != idx for r in readers)
        if fault and (st[0] == idx or idx in st[1]):
            pass                        # a fault inside a call that holds it
        else:
            held = [k for k, v in self.mmap.items() if k != mm and (v[0] == idx or idx in v[1])]
            if held and self.lock_order is None:
                self.lock_order = (me.name, held[0], mm, me.where)
            if not free():
                self._block(me, free, f"mmap_lock ({mode}) of mm {mm}")
        if mode == _R:
            st[1][idx] = st[1].get(idx, 0) + 1
        else:
            st[0] = idx
            st[2] += 1

    def drop_mmap(self, me):
        """Release every mmap_lock `me` holds; what retake_mmap needs."""
        idx, saved = me.index, []
        for mm, st in self.mmap.items():
            reads = st[1].pop(idx, 0)
            writes = st[2] if st[0] == idx else 0
            if writes:
                st[0], st[2] = None, 0
            if reads or writes:
                saved.append((mm, reads, writes))
        return saved

    def retake_mmap(self, me, saved):
        """Take back what drop_mmap released (waiting like any taker)."""
        for mm, reads, writes in saved:
            if writes:
                self.mmap_lock(me, mm, _W)
                self.mmap[mm][2] = writes
            if reads:
                self.mmap_lock(me, mm, _R)
                self.mmap[mm][1][me.index] = reads

    def mmap_unlock(self, me, mm, mode):
        st = self.mmap.get(mm)
        if st is None:
            return
        idx = me.index
        if mode == _R:
            n = st[1].get(idx, 0) - 1
            if n <= 0:
                st[1].pop(idx, None)
            else:
                st[1][idx] = n
        else:
            st[2] -= 1
            if st[2] <= 0:
                st[0], st[2] = None, 0

    # ---- observation -------------------------------------------------------

    def _observe(self):
        """pte and per-CPU TLB entries of the watched pages, now."""
        eng = self.machine._engine
        out = {}
        for mm, va in self.watch:
            try:
                pte = eng.pte(mm, va)
            except Exception:
                continue
            tlbs = [eng.tlb_entry(cpu, mm, va) for cpu in range(self.machine.ncpus)]
            out[(mm, va)] = (pte, tlbs)
        return out

    def state_key(self):
        """What the rest of a run depends on: the machine (core arrays and
        the Python tables) and where each thread stands with what it saw."""
        h = hashlib.blake2b(digest_size=16)
        self.machine._digest_into(h)
        for t in self.threads:
            h.update(repr((t.state, t.steps, t.where, t.wait_label)).encode())
            h.update(t.seen.digest())
        h.update(repr(sorted((k, v[0], sorted(v[1].items()), v[2]) for k, v in self.mmap.items())).encode())
        h.update(repr(self.stores).encode())
        return h.digest()


def _summary(v):
    if isinstance(v, np.ndarray):
        return hashlib.blake2b(v.tobytes(), digest_size=8).hexdigest()
    if isinstance(v, (bytes, bytearray, int, str, bool, type(None), float, tuple)):
        return v
    return type(v).__name__


# ---- threads in emulated time (workloads) ----------------------------------------

class TimedRun:
    """Batch threads (vCPUs) advancing in emulated-time order: each thread
    replays the traces its feed hands it (feed(i) -> the next Trace, or None
    when it is done); the thread whose CPU clock is lowest runs until its
    clock passes the next one's by `quantum_ns` (or reaches the limit run()
    was given), so no thread runs ahead of the others by more than that.
    on_slice(i, counts), when given, sees each slice's Thread.replay counts.
    Everything per access stays in the core; Python runs once per slice."""

    def __init__(self, threads, feed, quantum_ns=100_000, on_slice=None):
        self.threads = list(threads)
        self.feed = feed
        self.quantum = int(quantum_ns)
        self.on_slice = on_slice
        self.machine = self.threads[0].process.machine if self.threads else None
        self.cur = [[feed(i), 0] for i in range(len(self.threads))]
        for c in self.cur:
            if c[0] is not None and len(c[0]) == 0:
                c[0] = None
        self.totals = {}

    @property
    def done(self):
        return all(c[0] is None for c in self.cur)

    def run(self, until=None):
        """Run until every thread is done, or every live one's clock has
        reached `until` (ns)."""
        import heapq
        m = self.machine
        heap = [(m.clock(t.cpu), i) for i, t in enumerate(self.threads) if self.cur[i][0] is not None
                and (until is None or m.clock(t.cpu) < until)]
        heapq.heapify(heap)
        while heap:
            clock, i = heapq.heappop(heap)
            tr, start = self.cur[i]
            limit = heap[0][0] + self.quantum if heap else None
            if until is not None:
                limit = until if limit is None else min(limit, until)
            c = self.threads[i].replay(tr, start=start, until=limit)
            for k, v in c.items():
                if isinstance(v, int) and k not in ("end", "clock"):
                    self.totals[k] = self.totals.get(k, 0) + v
            if self.on_slice is not None:
                self.on_slice(i, c)
            self.cur[i][1] = c["end"]
            if c["end"] == len(tr):
                nxt = self.feed(i)
                self.cur[i] = [nxt if nxt is not None and len(nxt) else None, 0]
                if self.cur[i][0] is None:
                    continue
            if until is None or c["clock"] < until:
                heapq.heappush(heap, (c["clock"], i))
        return self.totals
