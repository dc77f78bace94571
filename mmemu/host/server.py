"""The server loop each real process of a HostMachine runs.

A server executes one command at a time from its driver, over a socketpair:
8-byte length + pickle, both ways. A reply is ("ok", value) or an error
tag the driver turns back into the exception the engine would raise:
("oserror", errno), ("signal", "Sigsegv"|"Sigbus", addr, si_code),
("unsupported", text), ("error", traceback text).

A server never returns into its caller's code: it leaves with os._exit, on
"exit", on EOF from the driver, or on any failure of its own channel.
"""
import os
import pickle
import queue
import signal
import socket
import struct
import threading
import traceback

from errno import EBADF

from .. import constants as C
from ..constants import (MADV_PAGEOUT, MADV_POPULATE_READ, MADV_POPULATE_WRITE, MAP_ANONYMOUS,
                         PAGE_SHIFT, PAGE_SIZE)
from ..errors import EmulatedSignal
from . import _access
from . import syscalls as sc

_HEADER = struct.Struct("<Q")


class Unsupported(Exception):
    """Raised in a server for an operation this host cannot perform; the
    driver re-raises it as mmemu.host.Unsupported."""


def send_msg(sock, obj, fds=()):
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    msg = _HEADER.pack(len(data)) + data
    if fds:
        # SCM_RIGHTS rides on the first bytes; the receiver reads the header
        # with recvmsg and collects it there.
        sent = socket.send_fds(sock, [msg], list(fds))
        msg = msg[sent:]
    if msg:
        sock.sendall(msg)


def recv_exact_server(sock):
    """Blocking receive of one message and any descriptors sent with it.
    Returns None on EOF (the driver is gone)."""
    fds = []
    head = b""
    while len(head) < _HEADER.size:
        chunk, got, _flags, _addr = socket.recv_fds(sock, _HEADER.size - len(head), 4)
        fds.extend(got)
        if not chunk:
            return None, fds
        head += chunk
    (n,) = _HEADER.unpack(head)
    body = bytearray()
    while len(body) < n:
        chunk = sock.recv(min(n - len(body), 1 << 20))
        if not chunk:
            return None, fds
        body += chunk
    return pickle.loads(bytes(body)), fds


class _Blocked(Exception):
    """The access sleeps in a userfault: reply ("blocked", msg, uffd id,
    thread key: "main" or a worker's id)."""

    def __init__(self, msg, uid, key="main"):
        super().__init__("blocked")
        self.msg, self.uid, self.key = msg, uid, key


class _NoReply(Exception):
    """The command was a fork and this is the child: it must not answer the
    parent's request; it greets the driver on its own channel instead."""


class Server:
    def __init__(self, sock):
        self.sock = sock
        self.pipes = {}      # id -> [[rfd, wfd, bytes held], ...]: one vmsplice (op_vmsplice)
        self.rings = {}      # id -> uring.FixedBufferRing
        self.threads = {}    # id -> _Worker
        self.files = set()   # the program's file descriptors (memfds), inherited at fork
        self.mapped = []     # [start, end) of every mapping the program made
        self.uffds = {}      # id -> uffdio.Context
        self.foreign_uffds = False   # VMAs registered to a context of the parent's (fork)
        # Accesses asleep in a userfault, by thread key ("main" or a worker's
        # id): [BlockingAccess or WorkerAccess, (message, uffd id)].
        self.blocked = {}
        self.next_id = 1

    # --- loop ---------------------------------------------------------------

    def serve(self):
        send_msg(self.sock, ("ready", os.getpid()))
        while True:
            msg, fds = recv_exact_server(self.sock)
            if msg is None:
                self._exit(0)
            op, args = msg
            try:
                reply = ("ok", getattr(self, "op_" + op)(*args, fds=fds)
                         if op == "fork" else getattr(self, "op_" + op)(*args))
            except _NoReply:
                continue
            except _Blocked as e:
                reply = ("blocked", e.msg, e.uid, e.key)
            except OSError as e:
                reply = ("oserror", e.errno, str(e))
                if hasattr(e, "uffd_result"):      # a fill ioctl's output field
                    reply += (e.uffd_result,)
            except EmulatedSignal as e:
                reply = ("signal", type(e).__name__, e.addr, e.si_code)
            except Unsupported as e:
                reply = ("unsupported", str(e))
            except Exception:   # a bug of ours: report it, keep serving
                reply = ("error", traceback.format_exc())
            send_msg(self.sock, reply)
            if op == "exit":
                self._exit(0)

    def _exit(self, status):
        # Release pins synchronously before the process goes: closing the
        # ring would unpin only later, from io_ring_exit_work.
        for ring in self.rings.values():
            try:
                ring.close()
            except OSError:
                pass
        os._exit(status)

    # --- memory -------------------------------------------------------------

    def op_ping(self):
        return os.getpid()

    def op_mmap(self, addr, length, prot, flags, fd, offset):
        if not flags & MAP_ANONYMOUS:
            self._fd(fd)
        got = sc.mmap(addr, length, prot, flags, fd, offset)
        self.mapped.append((got, got + length))
        return got

    def _maybe_waits(self, fn, *args):
        """A syscall that may wait for a monitor: to read a uffd event
        (UNMAP, REMOVE, REMAP) or to resolve a fault its copy to or from user
        memory took. In a thread of its own while contexts exist, so the
        server keeps serving (the GIL is released in the call)."""
        if self._may_block():
            if "main" in self.blocked:
                # The main thread sleeps in a userfault; the engine lets the
                # process make this call anyway (another of its threads could):
                # make it from the server's own thread.
                return fn(*args)
            return self._access(fn, *args)
        return fn(*args)

    def _may_block(self):
        """Accesses and some syscalls may sleep on a userfaultfd: this process
        has contexts, or its VMAs are registered to one its parent reads
        (a FORK event's context)."""
        return bool(self.uffds) or self.foreign_uffds

    def op_mremap(self, old_addr, old_size, new_size, flags, new_addr):
        got = self._maybe_waits(sc.mremap, old_addr, old_size, new_size, flags, new_addr)
        self.mapped.append((got, got + new_size))
        return got

    def op_reclaim(self, ranges):
        """MADV_PAGEOUT over every VMA of the program (the user-space way
        into shrink_folio_list); errors of single VMAs (locked, PFN maps)
        are ignored, as reclaim skips what it cannot take."""
        spans = list(ranges) + self.mapped
        with open("/proc/self/maps") as f:
            vmas = [tuple(int(x, 16) for x in line.split(" ", 1)[0].split("-")) for line in f]
        done = 0
        for lo, hi in vmas:
            for s, e in spans:
                a, b = max(lo, s), min(hi, e)
                if a < b:
                    try:
                        sc.madvise(a, b - a, MADV_PAGEOUT)
                        done += (b - a) // PAGE_SIZE
                    except OSError:
                        pass
        return done

    def op_munmap(self, addr, length):
        self._maybe_waits(sc.munmap, addr, length)

    def op_mprotect(self, addr, length, prot):
        sc.mprotect(addr, length, prot)

    def op_madvise(self, addr, length, advice):
        # POPULATE may sleep in a userfault, DONTNEED/REMOVE/FREE on a REMOVE event.
        return self._maybe_waits(sc.madvise, addr, length, advice)

    def op_read(self, addr, n):
        if self._may_block():
            return self._access(_access.read, addr, n)
        return _access.read(addr, n)

    def op_write(self, addr, data):
        if self._may_block():
            return self._access(_access.write, addr, data)
        _access.write(addr, data)

    # --- userfaultfd ----------------------------------------------------------

    def _access(self, fn, *args):
        """An access that may sleep in a userfault: in a thread of its own."""
        from .uffdio import BlockingAccess
        if "main" in self.blocked:
            raise RuntimeError("the main thread's access is blocked in a userfault")
        return self._settle("main", BlockingAccess(fn, args))

    def _thread_access(self, tid, fn, *args):
        """An access by worker `tid`, which may sleep in a userfault."""
        from .uffdio import WorkerAccess
        worker = self._thread(tid)
        if not self._may_block():
            return worker.call(fn, *args)
        if tid in self.blocked:
            raise RuntimeError(f"thread {tid}'s access is blocked in a userfault")
        return self._settle(tid, WorkerAccess(worker, fn, args))

    def _served(self):
        """Every context has a C service thread: a sleep in one is brief
        unless its resolution failed. Returns the test of that (_quiet) for
        BlockingAccess.wait, or None."""
        if self.uffds and all(c.service is not None for c in self.uffds.values()):
            return self._quiet
        return None

    def _quiet(self, asleep):
        """Whether a thread that asleep() finds in a userfault stays there:
        before and after that look, no context has a message queued, no
        service thread is handling one, and none read any in between. A
        fault queued before the look is then read and handled (resolving
        wakes it, so still asleep means the resolution failed); one queued
        after it cannot be what the thread sleeps on."""
        ctxs = list(self.uffds.values())

        def idle():
            states = [c.service.state() for c in ctxs]
            if any(busy for busy, _n in states) or any(c.queued() for c in ctxs):
                return None
            return [n for _busy, n in states]
        before = idle()
        if before is None or not asleep():
            return False
        return idle() == before

    def _settle(self, key, acc):
        if acc.wait(self._served()):
            return acc.outcome()
        # An event waits to be read by the program itself: reading it here
        # would complete the waiter (and end mmap_changing) at once.
        msg = (None, None) if acc.event_wait else (self._fault_msg() or (None, None))
        self.blocked[key] = [acc, msg]
        raise _Blocked(*msg, key)

    def _fault_msg(self):
        """The message of the fault the blocked access sleeps on, if it is
        still queued: read, and kept for the program's next read."""
        for uid, ctx in self.uffds.items():
            if ctx.service is not None:
                continue                 # its service thread reads the queue
            m = ctx.read_one()
            if m is not None:
                ctx.pending.append(m)
                return m, uid
        return None

    def op_resume(self, key="main"):
        entry = self.blocked.get(key)
        if entry is None:
            raise RuntimeError(f"no access of thread {key} is blocked")
        acc = entry[0]
        if acc.wait(self._served()):
            del self.blocked[key]
            return acc.outcome()
        # Still asleep: on a new fault (woken, retried, trapped again) or
        # on the one it was reported with.
        got = None if acc.event_wait else self._fault_msg()
        if got is not None:
            entry[1] = got
        raise _Blocked(*entry[1], key)

    def op_userfaultfd(self, flags):
        from .uffdio import Context
        ctx = Context(flags)
        uid = self.next_id
        self.next_id += 1
        self.uffds[uid] = ctx
        return uid

    def op_uffd(self, uid, method, *args):
        try:
            ctx = self.uffds[uid]
        except KeyError:
            raise OSError(EBADF, f"no userfaultfd {uid}") from None
        if method == "close":
            ctx.close()
            del self.uffds[uid]
            for acc, _ in self.blocked.values():
                acc.wait()               # release woke it: let it finish or fault again
            return None
        if method == "pending":
            # Counting means reading: harmless for page faults (kept for the
            # program's read, a wake still withdraws them), not for an event
            # (reading one ends its waiter's wait).
            if any(acc.event_wait for acc, _ in self.blocked.values()):
                raise Unsupported("an event is queued: the host cannot count it without "
                                  "reading it")
            ctx.pending += ctx.drain()
            return len(ctx.pending)
        if method == "read":
            out = ctx.read(*args)
            if out is None:
                raise Unsupported("read(2) of an empty blocking userfaultfd would sleep "
                                  "forever")
            return out
        return getattr(ctx, method)(*args)

    def op_pagemap(self, addr, npages):
        # Opened per call: a descriptor opened before fork() keeps reading
        # the parent's mm (host-notes.md).
        fd = os.open("/proc/self/pagemap", os.O_RDONLY)
        try:
            data = os.pread(fd, 8 * npages, (addr >> PAGE_SHIFT) * 8)
        finally:
            os.close(fd)
        return _pud_hugetlb_exclusive([list(struct.unpack(f"<{len(data) // 8}Q", data))])[0]

    def op_pagemap_multi(self, ranges):
        fd = os.open("/proc/self/pagemap", os.O_RDONLY)
        try:
            out = []
            for addr, npages in ranges:
                data = os.pread(fd, 8 * npages, (addr >> PAGE_SHIFT) * 8)
                out.append(list(struct.unpack(f"<{len(data) // 8}Q", data)))
            return _pud_hugetlb_exclusive(out)
        finally:
            os.close(fd)

    def op_clear_refs(self, value):
        sc.write_proc_file("/proc/self/clear_refs", f"{int(value)}\n")

    def op_proc_mem_read(self, addr, n):
        fd = os.open("/proc/self/mem", os.O_RDONLY)
        try:
            return sc.proc_mem_pread(fd, n, addr)
        finally:
            os.close(fd)

    def op_proc_mem_write(self, addr, data):
        fd = os.open("/proc/self/mem", os.O_WRONLY)
        try:
            return sc.proc_mem_pwrite(fd, data, addr)
        finally:
            os.close(fd)

    # --- counters -----------------------------------------------------------

    def op_minflt(self):
        """Minor faults taken on program memory (see _access.c)."""
        return _access.faults()

    def op_minflt_total(self):
        """/proc/self/stat field 10 as is: the runtime's own faults included."""
        with open("/proc/self/stat", "rb") as f:
            stat = f.read()
        # comm may hold spaces and parentheses: fields count from the last ')'.
        return int(stat[stat.rindex(b")") + 2:].split()[7])

    def op_rss_anon(self, ranges):
        """Anonymous bytes mapped in the VMAs that overlap the program's
        ranges (/proc/self/smaps "Anonymous:", which counts what RssAnon
        counts, VMA by VMA), so the runtime's heap is left out."""
        spans = list(ranges) + self.mapped
        total = 0
        take = False
        with open("/proc/self/smaps", "rb") as f:
            for line in f:
                head = line.split(b" ", 1)[0]
                if b"-" in head and not head.endswith(b":"):
                    lo, hi = (int(x, 16) for x in head.split(b"-"))
                    take = any(lo < e and s < hi for s, e in spans)
                elif take and line.startswith(b"Anonymous:"):
                    total += int(line.split()[1]) * 1024
        return total

    def op_hugetlb_usage(self):
        """/proc/self/status HugetlbPages, bytes."""
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("HugetlbPages:"):
                    return int(line.split()[1]) * 1024
        raise Unsupported("/proc/self/status has no HugetlbPages (CONFIG_HUGETLB_PAGE off)")

    def op_rss_anon_total(self):
        """/proc/self/status RssAnon, bytes (the runtime's heap included)."""
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
        raise Unsupported("/proc/self/status has no RssAnon")

    # --- files (memfd) ------------------------------------------------------

    def _fd(self, fd):
        """Only the program's own files: the server's sockets, pipes and rings
        are not the program's, as they are not in the engine's fd table."""
        if fd not in self.files:
            raise OSError(EBADF, f"fd {fd} is not one of the program's files")
        return fd

    def op_memfd_create(self, name, flags):
        fd = os.memfd_create(name, flags)
        self.files.add(fd)
        return fd

    def op_close(self, fd):
        os.close(self._fd(fd))
        self.files.discard(fd)

    def op_ftruncate(self, fd, length):
        os.ftruncate(self._fd(fd), length)

    def op_fallocate(self, fd, mode, offset, length):
        sc.fallocate(self._fd(fd), mode, offset, length)

    def op_pread(self, fd, n, offset):
        return os.pread(self._fd(fd), n, offset)

    def op_pwrite(self, fd, data, offset):
        return os.pwrite(self._fd(fd), data, offset)

    def op_pwrite_from(self, fd, addr, n, offset, tid=None):
        """write(2) of program memory: the kernel's copy_from_user faults
        count as the program's. tid: made by that worker thread."""
        return self._file_io(tid, sc.SYS_pwrite64, fd, addr, n, offset, "pwrite")

    def op_pread_into(self, fd, addr, n, offset, tid=None):
        # copy_to_user may sleep in a userfault (not with UFFD_USER_MODE_ONLY).
        return self._file_io(tid, sc.SYS_pread64, fd, addr, n, offset, "pread")

    def _file_io(self, tid, nr, fd, addr, n, offset, call):
        fd = self._fd(fd)
        fn = lambda: sc.counted(nr, fd, addr, n, offset, call=call)   # noqa: E731
        if tid is not None:
            return self._thread_access(tid, fn)
        return self._maybe_waits(fn)

    def op_pagemap_scan(self, start, end, flags, category_mask, category_anyof_mask,
                        category_inverted, return_mask, max_pages, vec_len):
        return sc.pagemap_scan(start, end, flags, category_mask, category_anyof_mask,
                               category_inverted, return_mask, max_pages, vec_len)

    def op_fstat_size(self, fd):
        return os.fstat(self._fd(fd)).st_size

    # --- threads ------------------------------------------------------------

    def op_thread_new(self, cpu):
        tid = self.next_id
        self.next_id += 1
        self.threads[tid] = _Worker(cpu)
        return tid, self.threads[tid].native_id

    def op_thread_read(self, tid, addr, n):
        return self._thread_access(tid, _access.read, addr, n)

    def op_thread_write(self, tid, addr, data):
        return self._thread_access(tid, _access.write, addr, data)

    def _thread(self, tid):
        try:
            return self.threads[tid]
        except KeyError:
            raise ValueError(f"no thread {tid} in process {os.getpid()}") from None

    def op_maps(self):
        with open("/proc/self/maps") as f:
            return f.read()

    # --- fork / exit --------------------------------------------------------

    def op_fork(self, readers=(), fds=()):
        """fork(); `readers`: contexts whose FORK event the driver's Python
        handler will see. fork() waits in dup_userfaultfd_complete() until it
        is read, with this thread holding the GIL, so a C thread reads each
        such queue meanwhile (no resolving) and its messages are kept for the
        handler; a FORK event's new context becomes a context of this server.
        Returns the child's pid.

        fork() is let go inside the reader's read() (userfaultfd_ctx_read
        completes the event before copying it out), so when it returns the
        reader may not have logged the event yet: stopping the reader (it
        leaves only from poll(), with all it read logged) and then taking
        its log is what makes the event certain to be there."""
        if len(fds) != 1:
            raise RuntimeError(f"fork needs one channel descriptor, got {len(fds)}")
        (newfd,) = fds
        from ..uffd import Resolver
        from .uffdio import Context, Service
        tails = [(uid, Service(self.uffds[uid], Resolver(), resolve=False)) for uid in readers]
        pid = _access.fork_sibling()
        if pid:
            os.close(newfd)
            for uid, svc in tails:
                ctx = self.uffds[uid]
                got = [m for m, _ in svc.stop()]
                for m in got:
                    if m["event"] == C.UFFD_EVENT_FORK:           # the child's context: ours to hold
                        new = self.next_id
                        self.next_id += 1
                        self.uffds[new] = Context.adopt(m["ufd"], ctx.flags, ctx.features)
                        m["ufd"] = new
                ctx.pending += got
            return pid
        # Child. Pipes and rings belong to the process that made them (the
        # engine's model); dropping the inherited fds changes no page
        # reference: a pipe buffer or a registered buffer holds one per pipe
        # or ring, not per fd.
        self.sock.close()
        self.sock = socket.socket(fileno=newfd)
        for segs in self.pipes.values():
            for rfd, wfd, _n in segs:
                _close_quietly(rfd, wfd)
        for ring in self.rings.values():
            ring.forget()
        self.pipes.clear()
        self.rings.clear()
        self.threads.clear()    # fork copies only the calling thread
        # A context belongs to the process that made it (the engine's
        # model): the child's copy of the descriptor would keep it alive.
        for ctx in self.uffds.values():
            ctx.forget()
        self.foreign_uffds = bool(readers) or self.foreign_uffds
        self.uffds.clear()
        self.blocked = {}
        send_msg(self.sock, ("ready", os.getpid()))
        raise _NoReply

    def op_exit(self):
        return None   # the loop exits after replying

    def op__test_hang(self):
        """Test hook: sleep for good in read(2) of a pipe nobody writes."""
        rfd, _wfd = os.pipe()
        os.read(rfd, 1)

    def op__test_malloc_thread(self, seconds):
        """Test hook: a C thread inside malloc for `seconds` (_access.c)."""
        return _access._test_malloc_thread(seconds)

    # --- vmsplice / FOLL_GET ------------------------------------------------

    def op_vmsplice(self, addr, length):
        """vmsplice(2) the range into new pipes: the pipe buffers hold FOLL_GET
        references (iov_iter_get_pages2, no FOLL_WRITE), one buffer a page.

        The engine models one vmsplice of `length` bytes into a pipe that
        holds them all. A pipe holds pipe-max-size bytes at most without
        CAP_SYS_RESOURCE (pipe_set_size: EPERM past it), so the range goes
        into a chain of pipes, each spliced with a piece of at most that
        many pages, in order: the same pages referenced in the same order,
        and the count of bytes one call would return (it stops at the first
        page GUP cannot take; none at all is the error)."""
        if not length:
            return self._new_pipe([[*sc.pipe_with_capacity(PAGE_SIZE), 0]]), 0
        span = max(PAGE_SIZE, sc.pipe_max_size() // PAGE_SIZE * PAGE_SIZE)
        segs, total = [], 0
        try:
            while total < length:
                a = addr + total
                piece = min(length - total, span - (a & (PAGE_SIZE - 1)))
                seg = [*sc.pipe_with_capacity(max(PAGE_SIZE, _page_span(a, piece))), 0]
                segs.append(seg)
                try:
                    n = sc.vmsplice(seg[1], a, piece, sc.SPLICE_F_NONBLOCK)
                except OSError:
                    if not total:
                        raise
                    n = 0
                seg[2] = n
                total += n
                if n < piece:
                    break
        except BaseException:
            for rfd, wfd, _n in segs:
                _close_quietly(rfd, wfd)
            raise
        return self._new_pipe(segs), total

    def _new_pipe(self, segs):
        pid = self.next_id
        self.next_id += 1
        self.pipes[pid] = segs
        return pid

    def op_pipe_read(self, pipe_id, n):
        """read(2): up to n bytes from the chain, in order (a pipe's read
        goes on across its buffers while it has data)."""
        segs = self._pipe(pipe_id)
        out = []
        want = n
        for seg in segs:
            while want and seg[2]:
                try:
                    data = os.read(seg[0], min(want, seg[2]))
                except BlockingIOError:
                    data = b""
                if not data:
                    break
                out.append(data)
                seg[2] -= len(data)
                want -= len(data)
            if want == 0:
                break
        return b"".join(out)

    def op_pipe_peek(self, pipe_id, off, n):
        """Read without consuming: tee(2) the buffers into a scratch pipe (the
        copies take their own page references until read) and read those."""
        segs = self._pipe(pipe_id)
        avail = sum(seg[2] for seg in segs)
        if off + n > avail:
            raise ValueError(f"peek {off}+{n} past the {avail} bytes held")
        out = []
        base = 0
        for rfd, _wfd, held in segs:
            if n and base < off + n and off < base + held:
                data = _peek(rfd, held)
                out.append(data[max(0, off - base):off + n - base])
            base += held
        return b"".join(out)

    def op_pipe_close(self, pipe_id):
        segs = self._pipe(pipe_id)
        del self.pipes[pipe_id]
        for rfd, wfd, _n in segs:
            _close_quietly(rfd, wfd)

    def _pipe(self, pipe_id):
        try:
            return self.pipes[pipe_id]
        except KeyError:
            raise ValueError(f"no pipe {pipe_id} in process {os.getpid()}") from None

    # --- FOLL_PIN through io_uring -----------------------------------------

    def op_pin_user_pages(self, addr, npages):
        from .uring import FixedBufferRing
        ring = FixedBufferRing(addr, npages * PAGE_SIZE)
        rid = self.next_id
        self.next_id += 1
        self.rings[rid] = ring
        return rid

    def op_pin_read(self, rid, off, n):
        return self._ring(rid).device_read(off, n)

    def op_pin_write(self, rid, off, data):
        self._ring(rid).device_write(off, data)

    def op_pin_release(self, rid):
        ring = self._ring(rid)
        del self.rings[rid]
        ring.close()

    def _ring(self, rid):
        try:
            return self.rings[rid]
        except KeyError:
            raise ValueError(f"no pin {rid} in process {os.getpid()}") from None


class _Worker:
    """A second thread of the server (Process.thread()): runs accesses on
    request, pinned to its CPU where the host has that CPU."""

    def __init__(self, cpu):
        self.requests = queue.SimpleQueue()
        self.replies = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, args=(cpu,), daemon=True)
        self.thread.start()
        self.native_id = self.replies.get()

    def _run(self, cpu):
        if cpu is not None and cpu in (_HOST_CPUS or os.sched_getaffinity(0)):
            os.sched_setaffinity(0, {cpu})
        self.replies.put(threading.get_native_id())
        while True:
            fn, args = self.requests.get()
            try:
                self.replies.put((True, fn(*args)))
            except BaseException as e:    # re-raised in the serving thread
                self.replies.put((False, e))

    def call(self, fn, *args):
        self.requests.put((fn, args))
        ok, value = self.replies.get()
        if not ok:
            raise value
        return value


GIGANTIC_PAGES = 1 << 18               # base pages in a 1 GiB hugetlb folio
PM_PRESENT_BIT = 1 << 63
PM_EXCLUSIVE_BIT = 1 << 56
PFN_MASK = (1 << 55) - 1
KPF_COMPOUND_HEAD, KPF_COMPOUND_TAIL, KPF_HUGE = 1 << 15, 1 << 16, 1 << 17


def _pud_hugetlb_exclusive(rows):
    """Pagemap bit 56 of a PUD-mapped (1 GiB) hugetlb page, as
    pagemap_hugetlb_range() means it: set when the folio is mapped once.
    Since ca1a47cd3f5f (6.19, in 6.18.y stable) that function also asks
    hugetlb_pmd_shared(), which reads pt_share_count of the table holding
    the entry; only PMD tables are shared or initialise that word, so for a
    1 GiB page it reads a PUD table's stale word and bit 56 comes and goes
    from one mapping to the next (measured on 6.18.44). The bit is taken
    from the folio's mapcount (kpagecount) instead; a 2 MiB page and
    everything else are left as read. rows: lists of raw entries."""
    heads = {}
    try:
        flags_fd = os.open("/proc/kpageflags", os.O_RDONLY)
    except OSError:
        return rows                     # no privilege: nothing to look at
    try:
        count_fd = os.open("/proc/kpagecount", os.O_RDONLY)
    except OSError:
        os.close(flags_fd)
        return rows

    def flags(pfn):
        raw = os.pread(flags_fd, 8, pfn * 8)
        return struct.unpack("<Q", raw)[0] if len(raw) == 8 else 0

    def mapped_once(head):
        if head not in heads:
            hf = flags(head)
            once = None
            if hf & KPF_HUGE and hf & KPF_COMPOUND_HEAD and flags(head + 512) & KPF_COMPOUND_TAIL:
                once = struct.unpack("<Q", os.pread(count_fd, 8, head * 8))[0] == 1
            heads[head] = once
        return heads[head]
    try:
        for row in rows:
            for i, e in enumerate(row):
                if not e & PM_PRESENT_BIT or not e & PFN_MASK:
                    continue
                once = mapped_once((e & PFN_MASK) & ~(GIGANTIC_PAGES - 1))
                if once is not None:
                    row[i] = (e | PM_EXCLUSIVE_BIT) if once else (e & ~PM_EXCLUSIVE_BIT)
    finally:
        os.close(flags_fd)
        os.close(count_fd)
    return rows


def _page_span(addr, length):
    """Bytes of the whole pages [addr, addr + length) touches."""
    first = addr & ~(PAGE_SIZE - 1)
    return ((addr + length + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)) - first


def _peek(rfd, held):
    """The `held` bytes of a pipe, left in it (tee into a scratch pipe)."""
    if not held:
        return b""
    srfd, swfd = sc.pipe_with_capacity(max(held, PAGE_SIZE))
    try:
        got = sc.tee(rfd, swfd, held, sc.SPLICE_F_NONBLOCK)
        data = b""
        while len(data) < got:
            chunk = os.read(srfd, got - len(data))
            if not chunk:
                break
            data += chunk
    finally:
        _close_quietly(srfd, swfd)
    return data


def _close_quietly(*fds):
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


TRACE_NAME = "mmemu-trace"
TRACE_SIGNAL = signal.SIGUSR2


def _trace_on_signal():
    """SIGUSR2 writes every thread's Python stack to a memfd named
    "mmemu-trace" (faulthandler, async-signal-safe), so a driver whose
    server stopped answering can say where it is stuck (machine._diagnose
    reads it through /proc/PID/fd). Forked children share the file."""
    import faulthandler
    fd = os.memfd_create(TRACE_NAME, os.MFD_CLOEXEC)
    faulthandler.register(TRACE_SIGNAL, file=fd, all_threads=True, chain=False)


_HOST_CPUS = None      # the CPUs the server could run on before _pin_to_first_cpu


def _pin_to_first_cpu():
    """Run the server, and every thread it starts, on one CPU (the engine's
    CPU 0); only a worker asked for another CPU (HostProcess.thread) moves.
    Per-CPU LRU batches hold references: with the server's calls spread over
    CPUs, whether MADV_PAGEOUT dropped a MADV_FREE'd page or swapped it
    depended on which CPU had run the MADV_FREE (lru_add_drain() drains only
    the local batches), and the host disagreed with itself."""
    global _HOST_CPUS
    if _HOST_CPUS is None:
        _HOST_CPUS = frozenset(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {min(_HOST_CPUS)})


def become_server(sock, keep_fds=()):
    """Turn a freshly forked copy of the driver into a server; never returns.

    Descriptors inherited from the driver other than stdio and the channel
    are pointed at /dev/null rather than closed: objects copied from the
    driver may still close them later, and a closed number could then be
    reused by one of our pipes. Holding the driver's ends of other servers'
    channels would also keep those servers from seeing EOF."""
    status = 70
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        keep = {0, 1, 2, sock.fileno(), *keep_fds}
        devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            if fd in keep or fd == devnull:
                continue
            try:
                os.dup2(devnull, fd)
            except OSError:
                pass
        os.close(devnull)
        _trace_on_signal()
        _pin_to_first_cpu()
        Server(sock).serve()
        status = 0
    except BaseException:
        try:
            traceback.print_exc()
        except BaseException:
            pass
    finally:
        os._exit(status)
