"""userfaultfd in a server process: the raw syscall and the ioctls
(include/uapi/linux/userfaultfd.h), and the blocked access.

A context is always opened O_NONBLOCK underneath, so that the server can
read its queue without ever sleeping; the program's own O_NONBLOCK decides
only what an empty read reports (EAGAIN; a blocking read of an empty queue
would sleep forever, which the host cannot show: Unsupported).

An access that faults on a registered range sleeps in handle_userfault();
it runs in a thread of its own (BlockingAccess) so the server keeps
serving. It counts as blocked once that thread sleeps in handle_userfault
(/proc/self/task/TID/wchan), or after MAX_WAIT s in any case.
"""
import ctypes
import errno
import fcntl
import os
import struct
import threading
import time

SYS_userfaultfd = 323
UFFD_API = 0xAA
O_NONBLOCK = os.O_NONBLOCK
MSG_SIZE = 32
MAX_WAIT = 1.0       # seconds an access may take before it counts as blocked anyway


def _ioc(direction, nr, size):
    return (direction << 30) | (size << 16) | (0xAA << 8) | nr


UFFDIO_REGISTER = _ioc(3, 0x00, 32)
UFFDIO_UNREGISTER = _ioc(2, 0x01, 16)
UFFDIO_WAKE = _ioc(2, 0x02, 16)
UFFDIO_COPY = _ioc(3, 0x03, 40)
UFFDIO_ZEROPAGE = _ioc(3, 0x04, 32)
UFFDIO_WRITEPROTECT = _ioc(3, 0x06, 24)
UFFDIO_API = _ioc(3, 0x3F, 24)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _u64(x):
    return x & ((1 << 64) - 1)


def parse_msg(raw):
    """struct uffd_msg -> dict (event; pagefault flags, address, ptid;
    remap/remove/unmap fields raw)."""
    event = raw[0]
    a, b, c = struct.unpack_from("<QQQ", raw, 8)
    if event == 0x12:
        return {"event": event, "flags": a, "address": b, "ptid": c & 0xFFFFFFFF}
    return {"event": event, "a": a, "b": b, "c": c}


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

    def _ioctl(self, req, fmt, *vals):
        buf = bytearray(struct.pack(fmt, *[_u64(v) for v in vals]))
        fcntl.ioctl(self.fd, req, buf, True)
        return struct.unpack(fmt, buf)

    def api(self, features, api=UFFD_API):
        return self._ioctl(UFFDIO_API, "<QQQ", api, features, 0)[1]

    def register(self, addr, length, mode):
        return self._ioctl(UFFDIO_REGISTER, "<QQQQ", addr, length, mode, 0)[3]

    def unregister(self, addr, length):
        self._ioctl(UFFDIO_UNREGISTER, "<QQ", addr, length)
        self._withdraw(addr, addr + length)

    def wake(self, addr, length):
        self._ioctl(UFFDIO_WAKE, "<QQ", addr, length)
        self._withdraw(addr, addr + length)

    def _fill(self, req, fmt, vals, dst, length, mode, call):
        buf = bytearray(struct.pack(fmt, *vals))
        try:
            fcntl.ioctl(self.fd, req, buf, True)
        except OSError as e:
            done = struct.unpack(fmt, buf)[-1]
            if e.errno == errno.EAGAIN and done > 0 and not mode & 1:
                self._withdraw(dst, dst + done)
            raise
        done = struct.unpack(fmt, buf)[-1]
        if not mode & 1:                       # every *_MODE_DONTWAKE is bit 0
            self._withdraw(dst, dst + max(done, 0))
        return done

    def copy(self, dst, data, mode):
        src = ctypes.create_string_buffer(bytes(data), len(data))
        return self._fill(UFFDIO_COPY, "<QQQQq",
                          (_u64(dst), ctypes.addressof(src), len(data), _u64(mode), 0),
                          dst, len(data), mode, "UFFDIO_COPY")

    def zeropage(self, addr, length, mode):
        return self._fill(UFFDIO_ZEROPAGE, "<QQQq", (_u64(addr), _u64(length), _u64(mode), 0),
                          addr, length, mode, "UFFDIO_ZEROPAGE")

    def writeprotect(self, addr, length, mode):
        self._ioctl(UFFDIO_WRITEPROTECT, "<QQQ", addr, length, mode)
        if not mode & 1 and not mode & 2:      # unprotect without DONTWAKE wakes
            self._withdraw(addr, addr + length)

    def _withdraw(self, start, end):
        """A wake: a message of a woken fault is not delivered (any more)."""
        self.pending = [m for m in self.pending
                        if not (m["event"] == 0x12 and start <= m["address"] < end)]

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

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
            self.pending = []


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

    def wait(self):
        """True when the access completed; False when it sleeps in a
        userfault (or took longer than MAX_WAIT)."""
        t0 = time.monotonic()
        if self.done.wait(0.002):
            return True
        slept = 0
        while True:
            w = _wchan(self.tid)
            if w == "handle_userfault":
                slept += 1
                if slept >= 2:
                    return self.done.is_set()
            else:
                slept = 0
            if time.monotonic() - t0 >= MAX_WAIT:
                return self.done.is_set()
            if self.done.wait(0.003):
                return True

    def outcome(self):
        ok, value = self.result
        if not ok:
            raise value
        return value
