"""userfaultfd in a server process: the raw syscall and the ioctls
(include/uapi/linux/userfaultfd.h), and the blocked access.

A context is always opened O_NONBLOCK underneath, so that the server can
read its queue without ever sleeping; the program's own O_NONBLOCK decides
only what an empty read reports (EAGAIN; a blocking read of an empty queue
would sleep forever, which the host cannot show: Unsupported).

An access that faults on a registered range sleeps in handle_userfault();
it runs in a thread of its own (BlockingAccess) so the server keeps
serving. It counts as blocked once that thread sleeps in handle_userfault
(/proc/self/task/TID/wchan) with nothing about to wake it (BlockingAccess.wait),
or after MAX_WAIT s in any case.
"""
import ctypes
import errno
import fcntl
import os
import queue
import select
import struct
import threading
import time

from . import _service

from ..constants import (UFFD_API, UFFD_EVENT_FORK, UFFD_EVENT_PAGEFAULT, UFFD_EVENT_REMAP,  # noqa: F401
                         UFFDIO_API, UFFDIO_CONTINUE, UFFDIO_COPY, UFFDIO_MOVE, UFFDIO_POISON,
                         UFFDIO_REGISTER, UFFDIO_UNREGISTER, UFFDIO_WAKE, UFFDIO_WRITEPROTECT,
                         UFFDIO_ZEROPAGE)

SYS_userfaultfd = 323
O_NONBLOCK = os.O_NONBLOCK
MSG_SIZE = 32
# Seconds an access may take before it counts as blocked anyway: a backstop
# for a kernel whose wchan names neither function below, never what decides
# on this one (a loaded machine may leave a thread unscheduled for a while).
MAX_WAIT = 5.0
SETTLE_TIMEOUT = 5.0  # seconds a service thread may take to log what it read: more is a hang
_ASLEEP = ("handle_userfault", "userfaultfd_event_wait_completion")
# Planted in an ioctl's output field: still there afterwards means the
# kernel left the field unwritten (the engine's UffdError.result None).
UNWRITTEN = -(1 << 62)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _u64(x):
    return x & ((1 << 64) - 1)


def parse_msg(raw):
    """struct uffd_msg -> dict: event, and the fields of its union member
    (pagefault flags/address/ptid, fork ufd, remap from/to/len,
    remove and unmap start/end)."""
    event = raw[0]
    a, b, c = struct.unpack_from("<QQQ", raw, 8)
    if event == UFFD_EVENT_PAGEFAULT:
        return {"event": event, "flags": a, "address": b, "ptid": c & 0xFFFFFFFF}
    if event == UFFD_EVENT_FORK:
        return {"event": event, "ufd": a & 0xFFFFFFFF}
    if event == UFFD_EVENT_REMAP:
        return {"event": event, "from": a, "to": b, "len": c}
    return {"event": event, "start": a, "end": b}


class IoctlError(OSError):
    """A failed fill ioctl, with its output field (None: left unwritten)."""

    def __init__(self, err, result):
        super().__init__(err, os.strerror(err))
        self.uffd_result = result


class Context:
    """One userfaultfd context of the server."""

    def __init__(self, flags):
        fd = _libc.syscall(ctypes.c_long(SYS_userfaultfd), ctypes.c_long(flags | O_NONBLOCK))
        if fd < 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
        self.fd = fd
        self.flags = flags
        # Messages read from the kernel to report a blocked access, not yet
        # handed to the program: they come first in its next read.
        self.pending = []
        self.service = None        # a Service thread reading the queue itself
        self.features = 0

    def _ioctl(self, req, fmt, *vals):
        buf = bytearray(struct.pack(fmt, *[_u64(v) for v in vals]))
        fcntl.ioctl(self.fd, req, buf, True)
        return struct.unpack(fmt, buf)

    def api(self, features, api=UFFD_API):
        """(features, ioctls) as the kernel writes them back."""
        out = self._ioctl(UFFDIO_API, "<QQQ", api, features, 0)
        self.features = features
        return out[1], out[2]

    @classmethod
    def adopt(cls, fd, flags, features):
        """A context the kernel made (a FORK event's ufd), already past API."""
        ctx = cls.__new__(cls)
        ctx.fd, ctx.flags, ctx.features = fd, flags, features
        ctx.pending, ctx.service = [], None
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | O_NONBLOCK)
        return ctx

    def register(self, addr, length, mode):
        return self._ioctl(UFFDIO_REGISTER, "<QQQQ", addr, length, mode, 0)[3]

    def unregister(self, addr, length):
        self._ioctl(UFFDIO_UNREGISTER, "<QQ", addr, length)
        self._withdraw(addr, addr + length)

    def wake(self, addr, length):
        self._ioctl(UFFDIO_WAKE, "<QQ", addr, length)
        self._withdraw(addr, addr + length)

    def _fill(self, req, fmt, vals, dst, mode):
        buf = bytearray(struct.pack(fmt, *vals, UNWRITTEN))
        try:
            fcntl.ioctl(self.fd, req, buf, True)
        except OSError as e:
            done = struct.unpack(fmt, buf)[-1]
            if e.errno == errno.EAGAIN and done > 0 and not mode & 1:
                self._withdraw(dst, dst + done)
            raise IoctlError(e.errno, None if done == UNWRITTEN else done) from None
        done = struct.unpack(fmt, buf)[-1]
        if not mode & 1:                       # every *_MODE_DONTWAKE is bit 0
            self._withdraw(dst, dst + max(done, 0))
        return done

    def copy(self, dst, data, mode=0):
        src = ctypes.create_string_buffer(bytes(data), len(data))
        return self._fill(UFFDIO_COPY, "<QQQQq",
                          (_u64(dst), ctypes.addressof(src), len(data), _u64(mode)), dst, mode)

    def copy_from(self, dst, src, length, mode=0):
        """UFFDIO_COPY from an address of this process."""
        return self._fill(UFFDIO_COPY, "<QQQQq", (_u64(dst), _u64(src), _u64(length), _u64(mode)),
                          dst, mode)

    def zeropage(self, addr, length, mode=0):
        return self._fill(UFFDIO_ZEROPAGE, "<QQQq", (_u64(addr), _u64(length), _u64(mode)),
                          addr, mode)

    def continue_(self, addr, length, mode=0):
        return self._fill(UFFDIO_CONTINUE, "<QQQq", (_u64(addr), _u64(length), _u64(mode)),
                          addr, mode)

    def poison(self, addr, length, mode=0):
        return self._fill(UFFDIO_POISON, "<QQQq", (_u64(addr), _u64(length), _u64(mode)),
                          addr, mode)

    def move(self, dst, src, length, mode=0):
        return self._fill(UFFDIO_MOVE, "<QQQQq", (_u64(dst), _u64(src), _u64(length), _u64(mode)),
                          dst, mode)

    def writeprotect(self, addr, length, mode):
        self._ioctl(UFFDIO_WRITEPROTECT, "<QQQ", addr, length, mode)
        if not mode & 1 and not mode & 2:      # unprotect without DONTWAKE wakes
            self._withdraw(addr, addr + length)

    def _withdraw(self, start, end):
        """A wake: a message of a woken fault is not delivered (any more)."""
        self.pending = [m for m in self.pending
                        if not (m["event"] == UFFD_EVENT_PAGEFAULT and start <= m["address"] < end)]

    def read_one(self):
        """One message from the kernel's queue, or None (never sleeps)."""
        try:
            raw = os.read(self.fd, MSG_SIZE)
        except BlockingIOError:
            return None
        return parse_msg(raw)

    def read(self, max_msgs):
        out = list(self.pending[:max_msgs])
        self.pending = self.pending[len(out):]
        while len(out) < max_msgs:
            m = self.read_one()
            if m is None:
                break
            out.append(m)
        if not out:
            if self.flags & O_NONBLOCK:
                raise OSError(errno.EAGAIN, "no message")
            return None
        return out

    def drain(self):
        """Every message there is, without EAGAIN: what the server held back
        for the program, then the kernel's queue (a driver-side handler)."""
        out, self.pending = self.pending, []
        while True:
            m = self.read_one()
            if m is None:
                return out
            out.append(m)

    def queued(self):
        """Whether a message waits in the kernel's queue (poll, not read)."""
        p = select.poll()
        p.register(self.fd, select.POLLIN)
        return bool(p.poll(0))

    def close(self):
        if self.service is not None:
            self.service.stop()
            self.service = None
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
            self.pending = []

    def forget(self):
        """In a forked child: drop the inherited descriptor (no service
        thread came along: fork copies only the calling thread)."""
        self.service = None
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def serve(self, missing, fill):
        if self.service is not None:
            self.service.stop()
        from ..uffd import Resolver
        self.service = Service(self, Resolver(missing, fill))

    def served(self):
        if self.service is None:
            return []
        return self.service.take()


class Service:
    """A real service thread of a context, in C (mmemu/host/_service.c):
    it resolves each message by the engine's Resolver rules and logs it."""

    def __init__(self, ctx, resolver, resolve=True):
        self.ctx = ctx
        self.log = []
        self.buf = b""
        self.open = None            # the logged message whose errno has not come yet
        # Messages the server read to report a blocked access are still
        # unread for the program: resolved here first, before serve() returns
        # (a reader only leaves them where they are).
        backlog, ctx.pending = (ctx.pending, []) if resolve else ([], ctx.pending)
        for m in backlog:
            entry = [m, None]
            self.log.append(entry)
            try:
                resolver.resolve(ctx, m["event"], m.get("flags", 0), m.get("address", 0),
                                 lambda: os.close(m["ufd"]))
            except OSError as e:
                entry[1] = e.errno
        self.handle, self.log_fd = _service.start(ctx.fd, resolver.missing == "copy",
                                                  resolver.fill, resolve)

    def _read_log(self, data=None):
        """Parse the log: what `data` holds, else what the log fd has now."""
        if data is None:
            data = b""
            while True:
                try:
                    chunk = os.read(self.log_fd, 1 << 16)
                except BlockingIOError:
                    break
                if not chunk:
                    break
                data += chunk
        self.buf += data
        n = _service.RECORD_SIZE
        while len(self.buf) >= n:
            rec, self.buf = self.buf[:n], self.buf[n:]
            err = struct.unpack_from("<i", rec, MSG_SIZE)[0]
            if err == -1:
                self.open = [parse_msg(rec[:MSG_SIZE]), None]
                self.log.append(self.open)
            else:
                self.open[1] = err or None
                self.open = None

    def _entries(self):
        if self.open is not None:
            raise RuntimeError(f"uffd service thread: {self.open[0]} logged without its "
                               "resolution")
        out, self.log = [tuple(e) for e in self.log], []
        return out

    def take(self):
        """[(message, errno or None)] logged since the last take. Exact: a
        syscall that returned after its event was read finds the event here,
        however late the thread got round to logging it (settle)."""
        if not _service.settle(self.handle, SETTLE_TIMEOUT):
            raise RuntimeError(f"uffd service thread: what it read was not logged within "
                               f"{SETTLE_TIMEOUT:g} s")
        self._read_log()
        return self._entries()

    def state(self):
        """(busy, messages read so far): see _service.state."""
        return _service.state(self.handle)

    def stop(self):
        """End the thread; returns [(message, errno or None)] not taken yet,
        everything it read included: it leaves only from poll(), after logging
        all it read (no timing involved)."""
        self._read_log(_service.stop(self.handle))       # closes log_fd
        return self._entries()


def _wchan(tid):
    try:
        with open(f"/proc/self/task/{tid}/wchan") as f:
            return f.read().strip()
    except OSError:
        return ""


class BlockingAccess:
    """fn(*args) in a thread of its own; wait() says whether it finished."""

    def __init__(self, fn, args):
        self.done = threading.Event()
        self.result = None
        self.tid = None
        self.event_wait = False     # asleep until a monitor reads an event (not a fault)
        started = threading.Event()

        def run():
            self.tid = threading.get_native_id()
            started.set()
            try:
                self.result = (True, fn(*args))
            except BaseException as e:      # re-raised in the serving thread
                self.result = (False, e)
            self.done.set()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        started.wait()

    def _finished(self, timeout):
        return self.done.wait(timeout)

    def wait(self, quiet=None):
        """True when the access completed; False when it sleeps in a
        userfault (or an event wait) that nothing will end by itself.

        quiet None: nobody resolves anything, so two looks ~3 ms apart that
        find the thread asleep there settle it. Else quiet() tells whether
        every service thread has handled all that was queued (quiet(look)
        with a look at the thread in between, Server._quiet): asleep then
        means its fault's resolution failed (the engine's Deadlock). In
        neither case does the time an access takes decide, except as a
        backstop: MAX_WAIT s without an answer counts as blocked."""
        t0 = time.monotonic()
        if self._finished(0.002):
            return True
        slept = 0
        while True:
            w = _wchan(self.tid)
            self.event_wait = w == "userfaultfd_event_wait_completion"
            if w in _ASLEEP:
                slept += 1
                if quiet is None:
                    if slept >= 2:
                        return self._finished(0)
                elif quiet(lambda: _wchan(self.tid) in _ASLEEP):
                    return self._finished(0)
            else:
                slept = 0
            if time.monotonic() - t0 >= MAX_WAIT:
                return self._finished(0)
            if self._finished(0.003):
                return True

    def outcome(self):
        ok, value = self.result
        if not ok:
            raise value
        return value


class WorkerAccess(BlockingAccess):
    """fn(*args) on a server worker thread (Process.thread()): the same
    waiting rules, watching that worker's wchan."""

    def __init__(self, worker, fn, args):
        self.worker = worker
        self.tid = worker.native_id
        self.result = None
        self.event_wait = False
        worker.requests.put((fn, args))

    def _finished(self, timeout):
        if self.result is not None:
            return True
        try:
            self.result = self.worker.replies.get(timeout=timeout) if timeout else \
                self.worker.replies.get_nowait()
        except queue.Empty:
            return False
        return True
