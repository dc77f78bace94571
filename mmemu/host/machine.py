"""HostMachine: the engine's Machine API, run on the real kernel.

Each Process is a real process (a server, see server.py) that executes the
driver's commands one at a time. Process.fork() makes that server really
fork; the child becomes a server of its own. All servers are children of
the driver (the first by os.fork, the rest by clone(CLONE_PARENT)), so the
driver reaps every one of them: closing the machine (or leaving its `with`
block, or interpreter exit) leaves no zombie and no orphan. Every read from
a server has a deadline: a hung server is killed and reported, never waited
on forever.

Placement: mmap(addr=0) passes a hint in a range of its own (32-64 TiB,
far below where the kernel puts the Python runtime's own mappings, which it
allocates top-down from mmap_base), so a hole a program leaves is never
filled by the runtime of the server behind its back. Within that range
mappings go top-down and adjacent, as the kernel would place them in a
fresh process (neighbours merge). A hint changes only where a mapping
lands, not what it does.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..eras import Policy

import atexit
import contextlib
import errno as _errno
import os
import select
import signal
import socket
import struct
import threading
import time
import weakref

import numpy as np

from .. import constants as C
from ..errors import Deadlock, MmemuError, Sigbus, Sigsegv, WouldBlock, oserror
from ..pageinfo import FrameInfo, PagemapEntry  # noqa: F401  (re-exported by mmemu.host)
from ..shmem import hugepage_counts
from . import hugetlb as _hugetlb
from . import server as _server
from . import swap as _swap     # imported first: its atexit (swapoff) runs after _close_all

PROGRAM_SPACE_BASE = 0x2000_0000_0000
PROGRAM_SPACE_END = 0x4000_0000_0000     # 32 TiB of room, still far below the runtime
PROGRAM_SPACE_MAX_MAPPING = 1 << 40
DEFAULT_TIMEOUT = 20.0



class HostError(MmemuError):
    """The host oracle itself failed: a server died, hung, or hit a bug."""


class Unsupported(MmemuError):
    """This host cannot perform the operation (missing kernel feature, no
    user-space path to it, or not enough privilege). Tests turn it into a skip.
    reason: the cause in words that do not change from one instance to the
    next (mmemu diff counts programs by it); the message by default."""

    def __init__(self, message, reason=None):
        super().__init__(message)
        self.reason = reason or message


FOREIGN_SWAP = "MADV_PAGEOUT while swap the machine does not own is on"


# --- channel ------------------------------------------------------------------

_HEADER = struct.Struct("<Q")


class _Channel:
    def __init__(self, sock, timeout):
        self.sock = sock
        self.timeout = timeout

    def send(self, obj, fds=()):
        _server.send_msg(self.sock, obj, fds)

    def recv(self, what):
        deadline = time.monotonic() + self.timeout
        head = self._recv_exact(_HEADER.size, deadline, what)
        (n,) = _HEADER.unpack(head)
        import pickle
        return pickle.loads(self._recv_exact(n, deadline, what))

    def _recv_exact(self, n, deadline, what):
        buf = bytearray()
        while len(buf) < n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.sock], [], [], left)[0]:
                raise TimeoutError(f"no answer to {what} within {self.timeout:g} s")
            chunk = self.sock.recv(min(n - len(buf), 1 << 20))
            if not chunk:
                raise EOFError(f"server closed its channel during {what}")
            buf += chunk
        return bytes(buf)

    def close(self):
        self.sock.close()


def _read_text(path):
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace").strip()
    except OSError:
        return ""


def _diagnose(pid, wait=0.5):
    """What a server that does not answer is doing, for the HostError: each
    thread's state, wait channel, syscall and kernel stack (/proc), then its
    Python stacks, which faulthandler writes on SIGUSR2 (server.py) if the
    process can still run a signal handler (not when stopped)."""
    try:
        tids = sorted(os.listdir(f"/proc/{pid}/task"), key=int)
    except OSError as e:
        return f"\n  (no /proc/{pid}: {e.strerror})"
    out = []
    for tid in tids:
        d = f"/proc/{pid}/task/{tid}"
        stat = _read_text(f"{d}/stat")
        comm = stat[stat.find("(") + 1:stat.rfind(")")]
        state = stat[stat.rfind(")") + 2:].split(" ", 1)[0]
        call = (_read_text(f"{d}/syscall").split() or ["?"])[0]
        frames = [ln.split("] ", 1)[-1].split("+", 1)[0]
                  for ln in _read_text(f"{d}/stack").splitlines()][:6]
        out.append(f"thread {tid} ({comm}): state {state}, wchan "
                   f"{_read_text(f'{d}/wchan') or '-'}, syscall {call}, kernel stack "
                   f"{' < '.join(frames) or '-'}")
    out += _python_stacks(pid, wait)
    return "".join("\n  " + line for line in out)


def _python_stacks(pid, wait):
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return []
    for fd in fds:
        path = f"/proc/{pid}/fd/{fd}"
        try:
            if not os.readlink(path).startswith(f"/memfd:{_server.TRACE_NAME} "):
                continue
            start = os.stat(path).st_size
            os.kill(pid, _server.TRACE_SIGNAL)
            deadline = time.monotonic() + wait
            size = start
            while time.monotonic() < deadline:
                time.sleep(0.02)
                now = os.stat(path).st_size
                if now > start and now == size:
                    break                       # written, and no longer growing
                size = now
            with open(path, "rb") as f:
                f.seek(start)
                text = f.read().decode(errors="replace").strip()
        except OSError:
            return []
        if not text:
            return ["Python stacks: none written (the process runs no signal handler)"]
        return ["Python stacks (faulthandler):"] + ["  " + ln for ln in text.splitlines()]
    return []


# --- the objects the API hands out -------------------------------------------

class HostPipe:
    """A pipe holding vmsplice(2) FOLL_GET references; lives in the process
    that made it."""

    def __init__(self, process, pipe_id, nbytes):
        self.process = process
        self.id = pipe_id
        self.nbytes = nbytes
        self.closed = False

    def read(self, n):
        """Consume up to n bytes, as read(2) on the pipe (b"" when empty)."""
        self._check()
        return self.process._call("pipe_read", self.id, n)

    def close(self):
        if not self.closed and self.process.alive:
            self.process._call("pipe_close", self.id)
        self.closed = True

    def _check(self):
        if self.closed:
            raise ValueError("pipe is closed")


class HostGupRef:
    """get_user_pages(FOLL_GET) held on the host: a vmsplice pipe, read
    without consuming it."""

    def __init__(self, process, pipe_id, npages, gup_flags):
        self.process = process
        self.id = pipe_id
        self.npages = npages
        self.gup_flags = gup_flags
        self.released = False

    def read(self, off, n):
        self._check(off, n)
        return self.process._call("pipe_peek", self.id, off, n)

    def write(self, off, data):
        raise Unsupported("a FOLL_GET reference taken by vmsplice is read-only: "
                          "no user-space path holds a writable FOLL_GET reference")

    def release(self):
        if not self.released and self.process.alive:
            self.process._call("pipe_close", self.id)
        self.released = True

    def _check(self, off, n):
        if self.released:
            raise ValueError("pages were released")
        if off < 0 or n < 0 or off + n > self.npages * C.PAGE_SIZE:
            raise ValueError(f"range {off}+{n} outside {self.npages} pages")


class HostPin:
    """pin_user_pages(FOLL_WRITE|FOLL_PIN|FOLL_LONGTERM) held by an io_uring
    fixed buffer; read/write act as the device."""

    def __init__(self, process, ring_id, npages, gup_flags):
        self.process = process
        self.id = ring_id
        self.npages = npages
        self.gup_flags = gup_flags
        self.released = False

    def read(self, off, n):
        self._check(off, n)
        return self.process._call("pin_read", self.id, off, n)

    def write(self, off, data):
        data = bytes(data)
        self._check(off, len(data))
        self.process._call("pin_write", self.id, off, data)

    def release(self):
        if not self.released and self.process.alive:
            self.process._call("pin_release", self.id)
        self.released = True

    _check = HostGupRef._check


class HostProcess:
    def __init__(self, machine, pid, channel, parent=None):
        self.machine = machine
        self.pid = pid
        self._chan = channel
        self.parent = parent
        self.alive = True
        self.main = HostMainThread(self)
        self._threads = {}             # server worker id -> HostThread
        self._uffds = {}               # server id -> HostUffd
        self._serving = None           # the HostUffd whose Python handler is running
        self._foreign = []             # contexts of another server serving this process's VMAs
        self._hugetlb_fds = {}         # fd -> huge page size, of its MFD_HUGETLB memfds

    def __repr__(self):
        return f"<HostProcess pid={self.pid} {'alive' if self.alive else 'exited'}>"

    # --- plumbing ---

    def _call(self, op, *args, fds=(), timeout=None, serve=True):
        if not self.alive:
            raise oserror(_errno.ESRCH, op, "process has exited")
        chan = self._chan
        if timeout is not None:
            chan = _Channel(self._chan.sock, timeout)
        try:
            chan.send((op, args), fds)
            reply = chan.recv(f"{op} (pid {self.pid})")
        except (TimeoutError, EOFError, OSError) as e:
            seen = _diagnose(self.pid) if isinstance(e, TimeoutError) else ""
            status = self.machine._kill(self)
            raise HostError(f"server pid {self.pid} failed during {op}: {e}; {status}{seen}") \
                from e
        except BaseException:
            # Interrupted mid-exchange (KeyboardInterrupt): the channel may hold
            # half a message, so this server can no longer be talked to.
            self.machine._kill(self)
            raise
        tag = reply[0]
        if tag == "ok":
            return reply[1]
        if tag == "oserror":
            if len(reply) > 3:                  # a fill ioctl, with its output field
                from ..uffd import UffdError
                raise UffdError(reply[1], op, reply[3])
            raise oserror(reply[1], op)
        if tag == "signal":
            cls = Sigsegv if reply[1] == "Sigsegv" else Sigbus
            raise cls(reply[2], reply[3])
        if tag == "unsupported":
            raise Unsupported(reply[1])
        if tag == "blocked":
            msg, uid, key = reply[1], reply[2], reply[3]
            thread = self.main if key == "main" else self._threads[key]
            thread._blocked = True
            uffd = self._uffds.get(uid)
            if self._serving is not None and thread is self._serving.service_thread:
                raise Deadlock("a service thread faulted on the range only it serves",
                               [(f"service thread {thread.tid} of uffd {self._serving.id}",
                                 (msg or {}).get("address", 0), "a page fault")])
            handlers = [u for u in ([uffd] if uffd is not None else
                                    list(self._uffds.values()) + self._foreign)
                        if u._handler is not None and not u.released]
            if serve and handlers:
                return self._serve_blocked(thread, key, handlers)
            raise WouldBlock(thread, uffd, _uffd_msg(msg))
        raise HostError(f"server pid {self.pid} failed in {op}:\n{reply[1]}")

    def _serve_blocked(self, thread, key, uffds):
        """Python service handlers run here, in the driver: the blocked
        access stays asleep in the server (in handle_userfault or an event
        wait) while the handler reads and resolves through the server's main
        thread, as a real service thread would; then the access goes on."""
        while True:
            got = [(u, m) for u in uffds for m in u._do("drain")]
            if not got:
                raise Deadlock("the service handler returned without resolving the fault",
                               [(f"thread {thread.tid}", 0, "a page fault or event")])
            for u, m in got:
                u._handle(m)
            thread._blocked = False
            try:
                return self._call("resume", key, serve=False)
            except WouldBlock:
                continue            # faulted again (the next page): serve that

    def _as_current(self):
        """The thread making a call: a running handler's service thread, else main."""
        return self._serving.service_thread if self._serving is not None else None

    # --- the API ---

    def mmap(self, addr, length, prot, flags, fd=-1, offset=0):
        hint = 0
        if addr == 0 and not flags & (C.MAP_FIXED | C.MAP_FIXED_NOREPLACE):
            hint = self.machine._place(length, self._huge_size(flags, fd))
        return self._call("mmap", addr or hint, length, prot, flags, fd, offset)

    def _huge_size(self, flags, fd):
        """The huge page size of a hugetlb mapping (MAP_HUGETLB's MAP_HUGE_*
        bits, the default 2 MiB without them; or an MFD_HUGETLB memfd's), else
        PAGE_SIZE: hugetlb_get_unmapped_area aligns to it."""
        if flags & C.MAP_ANONYMOUS and flags & C.MAP_HUGETLB:
            log = (flags >> C.MAP_HUGE_SHIFT) & C.MAP_HUGE_MASK
            return 1 << log if log else C.PMD_SIZE
        if not flags & C.MAP_ANONYMOUS:
            return self._hugetlb_fds.get(fd, C.PAGE_SIZE)
        return C.PAGE_SIZE

    def munmap(self, addr, length):
        self._call("munmap", addr, length)

    def mremap(self, old_addr, old_size, new_size, flags=0, new_addr=0):
        return self._call("mremap", old_addr, old_size, new_size, flags, new_addr)

    def mprotect(self, addr, length, prot):
        self._call("mprotect", addr, length, prot)

    def madvise(self, addr, length, advice):
        if advice == C.MADV_PAGEOUT:
            with self.machine._pageout():
                self._call("madvise", addr, length, advice)
            return
        if advice in (C.MADV_POPULATE_READ, C.MADV_POPULATE_WRITE):
            self._not_blocked()         # GUP faults, as an access does
        self._call("madvise", addr, length, advice)

    def read(self, addr, n):
        t = self._as_current()
        if t is not None:
            return t.read(addr, n)
        self._not_blocked()
        return self._call("read", addr, n)

    def write(self, addr, data):
        t = self._as_current()
        if t is not None:
            return t.write(addr, data)
        self._not_blocked()
        self._call("write", addr, bytes(data))

    def _not_blocked(self, thread=None):
        thread = thread or self.main
        if thread._blocked:
            raise MmemuError(f"thread {thread.tid} is blocked in a userfault: resume() it first")

    def _resume(self, thread=None):
        thread = thread or self.main
        if not thread._blocked:
            raise MmemuError(f"thread {thread.tid} is not blocked")
        thread._blocked = False             # a blocked reply sets it again
        return self._call("resume", "main" if thread is self.main else thread.id)

    def fork(self):
        return self.machine._fork(self)

    def exit(self):
        self.machine._exit(self)

    def pagemap(self, addr):
        return PagemapEntry(self._call("pagemap", addr, 1)[0])

    def pagemap_range(self, addr, npages):
        """Raw 64-bit pagemap entries (numpy uint64) of npages pages from addr,
        as read from /proc/pid/pagemap (the engine's call of the same name)."""
        return np.array(self._call("pagemap", addr, npages), dtype=np.uint64)

    def pagemap_ranges(self, ranges):
        """[(addr, npages), ...] -> a list of raw uint64 arrays, in one round
        trip (host only: the snapshots of mmemu.program use it)."""
        return [np.array(rows, dtype=np.uint64)
                for rows in self._call("pagemap_multi", [(a, n) for a, n in ranges])]

    def vmsplice(self, addr, length):
        pipe_id, n = self._call("vmsplice", addr, length)
        return HostPipe(self, pipe_id, n)

    def get_user_pages(self, addr, npages, gup_flags=0):
        """FOLL_GET references, held by a vmsplice pipe. Like get_user_pages,
        fewer than npages pages are taken when GUP stops at a page it cannot
        take (vmsplice then splices the pages before it); none is EFAULT."""
        if gup_flags & C.FOLL_PIN:
            raise oserror(_errno.EINVAL, "get_user_pages", "FOLL_GET and FOLL_PIN are exclusive")
        if gup_flags & ~(C.FOLL_GET | C.FOLL_TOUCH):
            raise Unsupported(f"get_user_pages(gup_flags={gup_flags:#x}): only a read-only "
                              "FOLL_GET reference (vmsplice) can be held from user space")
        if npages <= 0:
            raise oserror(_errno.EINVAL, "get_user_pages", "no pages")
        addr &= C.PAGE_MASK
        pipe_id, n = self._call("vmsplice", addr, npages * C.PAGE_SIZE)
        if n < C.PAGE_SIZE:
            self._call("pipe_close", pipe_id)
            raise oserror(_errno.EFAULT, "get_user_pages")
        return HostGupRef(self, pipe_id, n // C.PAGE_SIZE, gup_flags | C.FOLL_GET)

    def pin_user_pages(self, addr, npages, gup_flags):
        """FOLL_WRITE|FOLL_PIN|FOLL_LONGTERM pins, held by an io_uring fixed
        buffer. Registration is all or nothing, but pin_user_pages stops at
        the first page it cannot pin and returns the ones before: so on
        EFAULT the longest prefix that pins is taken. The failed attempt
        already faulted exactly those pages in, in order, as Linux would."""
        want = C.FOLL_WRITE | C.FOLL_PIN | C.FOLL_LONGTERM
        if gup_flags & C.FOLL_GET:
            raise oserror(_errno.EINVAL, "pin_user_pages", "FOLL_GET with FOLL_PIN")
        if (gup_flags | C.FOLL_PIN) & ~C.FOLL_TOUCH != want:
            raise Unsupported(f"pin_user_pages(gup_flags={gup_flags:#x}): the only pin user "
                              "space can hold here is io_uring's FOLL_WRITE|FOLL_PIN|"
                              "FOLL_LONGTERM (no gup_test: CONFIG_GUP_TEST is off)")
        if npages <= 0:
            raise oserror(_errno.EINVAL, "pin_user_pages", "no pages")
        from .caps import capabilities
        if not capabilities().io_uring:
            raise Unsupported("io_uring is not available on this host")
        addr &= C.PAGE_MASK
        for n in range(npages, 0, -1):
            try:
                rid = self._call("pin_user_pages", addr, n)
            except OSError as e:
                if e.errno == _errno.EINVAL and self._spans_backings(addr, n):
                    # io_pin_pages() up to 6.4 refused a buffer whose pages lie
                    # in VMAs of different files (anon next to shmem) after
                    # pinning them; pin_user_pages itself takes it. Seen on
                    # 6.1.176: io_uring cannot show GUP's answer there.
                    raise Unsupported("io_uring refused a buffer over mappings of different "
                                      "files (io_pin_pages before 6.5); pin_user_pages itself "
                                      "takes it") from None
                if e.errno != _errno.EFAULT or n == 1:
                    raise
                continue
            return HostPin(self, rid, n, want)

    def _spans_backings(self, addr, npages):
        """Whether [addr, +npages) lies in mappings of more than one backing
        (the inode of /proc/pid/maps: 0 for private anon, shmem's otherwise)."""
        end = addr + npages * C.PAGE_SIZE
        inodes = set()
        for line in self._call("maps").splitlines():
            parts = line.split()
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            if lo < end and addr < hi:
                inodes.add((parts[3], parts[4]))
        return len(inodes) > 1

    def pin_user_pages_fast(self, addr, npages, gup_flags=0):
        """io_uring registers with pin_user_pages_fast already (io_pin_pages):
        the same pin as pin_user_pages."""
        return self.pin_user_pages(addr, npages, gup_flags)

    def clear_refs(self, value):
        self._call("clear_refs", value)

    # --- files ---

    def memfd_create(self, name, flags=0):
        """memfd_create(2) in the process; returns its descriptor number."""
        fd = self._call("memfd_create", name, flags)
        if flags & C.MFD_HUGETLB:
            log = (flags >> C.MFD_HUGE_SHIFT) & C.MFD_HUGE_MASK
            self._hugetlb_fds[fd] = 1 << log if log else C.PMD_SIZE
        return fd

    def close(self, fd):
        self._call("close", fd)
        self._hugetlb_fds.pop(fd, None)

    def ftruncate(self, fd, length):
        self._call("ftruncate", fd, length)

    def fallocate(self, fd, mode, offset, length):
        self._call("fallocate", fd, mode, offset, length)

    def pread(self, fd, n, offset):
        return self._call("pread", fd, n, offset)

    def pwrite(self, fd, data, offset):
        return self._call("pwrite", fd, bytes(data), offset)

    def fstat_size(self, fd):
        return self._call("fstat_size", fd)

    def pwrite_from(self, fd, addr, n, offset, direct=False):
        """write(2) of the process's memory at addr to the file (buffered: the
        kernel's copy_from_user; EFAULT where it faults)."""
        if direct:
            raise Unsupported("O_DIRECT writes that GUP the buffer: a memfd has no such path "
                              "on the host (tmpfs direct I/O copies)")
        t = self._as_current()
        return self._call("pwrite_from", fd, addr, n, offset, t.id if t is not None else None)

    def pread_into(self, fd, addr, n, offset):
        """read(2) from the file into the process's memory (copy_to_user)."""
        t = self._as_current()
        return self._call("pread_into", fd, addr, n, offset, t.id if t is not None else None)

    def userfaultfd(self, flags=0):
        """userfaultfd(2) in the process (O_CLOEXEC, O_NONBLOCK,
        UFFD_USER_MODE_ONLY): a HostUffd with the engine's Uffd API. With no
        service thread, an access that faults into it raises WouldBlock and
        process.main.resume() completes it; serve(Resolver(...)) runs a real
        service thread in the server."""
        if not self.machine.uffd:
            raise Unsupported("userfaultfd on the host oracle is opt-in (HostMachine(uffd="
                              "True)): every ioctl, read, close and Resolver service threads; "
                              "one blocked access per process, no Python handlers and no "
                              "pending(), which the engine's scenarios use")
        uid = self._call("userfaultfd", flags)
        u = HostUffd(self, uid, flags)
        self._uffds[uid] = u
        return u

    def pagemap_scan(self, start, end, flags=0, category_mask=0, category_anyof_mask=0,
                     category_inverted=0, return_mask=0, max_pages=0, vec_len=1 << 30):
        """ioctl(PAGEMAP_SCAN) on the process's pagemap (6.7+): (regions,
        walk_end), as the engine's call of the same name."""
        return self._call("pagemap_scan", start, end, flags, category_mask, category_anyof_mask,
                          category_inverted, return_mask, max_pages, vec_len)

    # --- counters ---

    @property
    def minflt(self):
        """Minor faults the process took on the program's memory: the task's
        min_flt (/proc/pid/stat field 10) counted across each access and
        faulting syscall only, so the server runtime's own faults (COW of its
        heap after fork) are left out. minflt_total is field 10 as is."""
        return self._call("minflt")

    @property
    def minflt_total(self):
        return self._call("minflt_total")

    @property
    def rss_anon(self):
        """Bytes of anon pages mapped in the program's mappings: RssAnon
        (/proc/pid/status) restricted to the VMAs the program made, through
        /proc/pid/smaps. rss_anon_total is RssAnon as is."""
        return self._call("rss_anon", [(PROGRAM_SPACE_BASE, PROGRAM_SPACE_END)])

    @property
    def rss_anon_total(self):
        return self._call("rss_anon_total")

    @property
    def hugetlb_usage(self):
        """Bytes of hugetlb memory mapped: HugetlbPages of /proc/pid/status
        (hugetlb_report_usage; the server's runtime maps none)."""
        return self._call("hugetlb_usage")

    @property
    def has_pinned(self):
        raise Unsupported("MMF_HAS_PINNED is not visible from user space")

    # --- threads ---

    def thread(self, cpu=None):
        """A second thread of this process (the engine's Thread: reads and
        writes through another CPU's TLB), pinned to `cpu` where the host has
        that CPU."""
        ncpus = self.machine.ncpus
        if cpu is None:
            self._next_thread_cpu = (getattr(self, "_next_thread_cpu", 0) + 1) % ncpus
            cpu = self._next_thread_cpu
        if not 0 <= cpu < ncpus:
            raise ValueError(f"cpu {cpu} out of range")
        cpus = sorted(os.sched_getaffinity(0))
        tid, native = self._call("thread_new", cpus[cpu % len(cpus)])
        return HostThread(self, tid, cpu, native)

    def touch(self, addr, npages, write=False, value=0, cpu=None):
        raise Unsupported("touch stores engine version stamps; use read/write on the host")

    def versions(self, addr, npages):
        raise Unsupported("content versions are the engine's stamps; the host has bytes")

    def proc_mem_write(self, addr, data):
        return self._call("proc_mem_write", addr, bytes(data))

    def proc_mem_read(self, addr, n):
        return self._call("proc_mem_read", addr, n)

    def maps(self):
        """/proc/pid/maps of the server (for debugging)."""
        return self._call("maps")


def _uffd_msg(m):
    from ..uffd import UffdMsg
    if m is None:
        return None
    ev = m["event"]
    if ev == C.UFFD_EVENT_PAGEFAULT:
        return UffdMsg(ev, flags=m["flags"], address=m["address"], ptid=m["ptid"])
    if ev == C.UFFD_EVENT_FORK:
        return UffdMsg(ev, ufd=m["ufd"])       # a descriptor of the server's
    if ev == C.UFFD_EVENT_REMAP:
        return UffdMsg(ev, from_=m["from"], to=m["to"], len=m["len"])
    return UffdMsg(ev, start=m["start"], end=m["end"])


class HostUffd:
    """A userfaultfd context of a HostProcess, driven in its server with the
    raw syscall and ioctls: the engine's Uffd API. Service threads are
    Resolvers (mmemu.uffd.Resolver) run by a real thread in the server; a
    Python handler cannot run there."""

    def __init__(self, process, uid, flags):
        self.process = process
        self.id = uid
        self.flags = flags
        self.released = False
        self.features = 0
        self.served = False
        self._handler = None            # a Python service handler, run in the driver
        self.service_thread = None
        self.target = process           # whose VMAs it serves (a FORK event's: the child)
        self._fork_child = None

    _IOCTLS = {"api": "UFFDIO_API", "register": "UFFDIO_REGISTER", "unregister": "UFFDIO_UNREGISTER",
               "copy": "UFFDIO_COPY", "copy_from": "UFFDIO_COPY", "zeropage": "UFFDIO_ZEROPAGE",
               "writeprotect": "UFFDIO_WRITEPROTECT", "wake": "UFFDIO_WAKE",
               "continue_": "UFFDIO_CONTINUE", "poison": "UFFDIO_POISON", "move": "UFFDIO_MOVE"}

    def _do(self, method, *args):
        from ..uffd import UffdError
        try:
            return self.process._call("uffd", self.id, method, *args)
        except UffdError:
            raise
        except OSError as e:
            # Every failing ioctl is a UffdError, as on the engine; read(2)
            # and close stay plain OSError.
            call = self._IOCTLS.get(method)
            if call is None:
                raise
            raise UffdError(e.errno, call, None) from None

    def api(self, features=0, api=C.UFFD_API):
        supported, self.ioctls = self._do("api", features, api)
        self.features = features
        return supported

    def register(self, addr, length, mode):
        return self._do("register", addr, length, mode)

    def unregister(self, addr, length):
        self._do("unregister", addr, length)

    def copy(self, dst, src, length=None, mode=0, src_process=None):
        if src_process is not None and src_process is not self.process:
            raise Unsupported("UFFDIO_COPY from another process's memory")
        if isinstance(src, int):
            if length is None:
                raise ValueError("length is required with a source address")
            return self._do("copy_from", dst, src, length, mode)
        src = bytes(src)
        if length is None:
            length = len(src)
        elif len(src) < length:
            raise ValueError("source shorter than length")
        return self._do("copy", dst, src[:length], mode)

    def zeropage(self, addr, length, mode=0):
        return self._do("zeropage", addr, length, mode)

    def writeprotect(self, addr, length, mode):
        self._do("writeprotect", addr, length, mode)

    def wake(self, addr, length):
        self._do("wake", addr, length)

    def read(self, max_msgs=None):
        return [_uffd_msg(m) for m in self._do("read", 64 if max_msgs is None else max_msgs)]

    def close(self):
        if self.released:
            return
        self.released = True
        if self.process.alive:
            self._do("close")

    def continue_(self, addr, length, mode=0):
        return self._do("continue_", addr, length, mode)

    def poison(self, addr, length, mode=0):
        return self._do("poison", addr, length, mode)

    def move(self, dst, src, length, mode=0):
        return self._do("move", dst, src, length, mode)

    def serve(self, handler, cpu=None):
        """A service thread for this context. A Resolver runs as a real
        thread of the server (in C; handler.take() reads its log). Any other
        callable runs in the driver whenever an access of the process blocks
        on a userfault or an event: it reads and resolves through the server
        while the access sleeps in the kernel, then the access goes on; its
        own accesses are a second thread's."""
        from ..uffd import Resolver
        self.served = True
        if isinstance(handler, Resolver):
            self._do("serve", handler.missing, handler.fill)
            handler._source = lambda: [(_uffd_msg(m), err) for m, err in self._do("served")]
            return None
        self._handler = handler
        self.service_thread = self.process.thread(cpu)
        self._run_queued()                      # a late service thread reads what is queued
        return self.service_thread

    def _run_queued(self):
        queued = self._do("drain")
        while queued:
            for m in queued:
                self._handle(m)
            queued = self._do("drain")

    def _handle(self, raw):
        """Run the Python handler on one message; its accesses are the service thread's."""
        msg = _uffd_msg(raw)
        if raw["event"] == C.UFFD_EVENT_FORK:
            # The child's context lives in this server (the fd the event
            # brought); its faults and events are the child's.
            msg.ufd = HostUffd(self.process, raw["ufd"], self.flags)
            msg.ufd.features = self.features
            self.process._uffds[raw["ufd"]] = msg.ufd
            if self._fork_child is not None:
                msg.ufd.target = self._fork_child
                self._fork_child._foreign.append(msg.ufd)
        self.process._serving = self
        try:
            self._handler(self, msg)
        finally:
            self.process._serving = None

    def serve_core(self, *a, **k):
        raise Unsupported("in-core resolvers are the engine's")

    def pending(self):
        """Messages queued and not read by the program (the server reads the
        kernel's queue to count; Unsupported while an event waits)."""
        return self._do("pending")

    def __repr__(self):
        return (f"<HostUffd {self.id} of pid {self.process.pid}"
                f"{' closed' if self.released else ''}>")


class HostMainThread:
    """The thread that runs a HostProcess's accesses (the engine's
    process.main): resume() completes an access blocked in a userfault."""

    def __init__(self, process):
        self.process = process
        self.cpu = 0
        self._blocked = False           # an access sleeps in a userfault (resume() it)

    @property
    def tid(self):
        return self.process.pid

    @property
    def blocked(self):
        return self._blocked or None

    def read(self, addr, n):
        return self.process.read(addr, n)

    def write(self, addr, data):
        self.process.write(addr, data)

    def resume(self):
        return self.process._resume()


class HostThread:
    """A thread of a HostProcess (a worker thread of its server)."""

    def __init__(self, process, tid, cpu, native_tid):
        self.process = process
        self.id = tid
        self.cpu = cpu
        self.tid = native_tid           # what UFFD_FEATURE_THREAD_ID reports
        self._blocked = False
        process._threads[tid] = self

    @property
    def blocked(self):
        return self._blocked or None

    def read(self, addr, n):
        self.process._not_blocked(self)
        return self.process._call("thread_read", self.id, addr, n)

    def write(self, addr, data):
        self.process._not_blocked(self)
        self.process._call("thread_write", self.id, addr, bytes(data))

    def resume(self):
        return self.process._resume(self)

    def touch(self, addr, npages, write=False, value=0):
        return self.process.touch(addr, npages, write, value, cpu=self.cpu)


_live_machines = weakref.WeakSet()


class HostMachine:
    """Machine(kernel="host"): the engine's API on the running kernel.

    ncpus and memory describe the real machine and cannot be chosen: they
    are accepted for signature compatibility. swap=N enables a swap file of
    N usable bytes on the host while the machine lives (mmemu.host.swap;
    Unsupported where it cannot). seed is accepted and unused (the kernel is
    the kernel). policy is the engine's policy for "host": the same version,
    era and knobs a Machine(kernel="host") runs with.
    hugepages={page size: count} sets the host's hugetlb pool of those sizes
    to count pages (overcommit off) while the machine lives and puts the old
    values back after (mmemu.host.hugetlb); Unsupported, with the reason,
    where the host cannot (not root, the pool in use by another process,
    not enough contiguous memory). Machine.hugepages reads the host's
    counters."""

    def __init__(self, kernel: str | None = "host", ncpus: int | None = None,
                 memory: int | None = None, swap: int = 0, seed: int = 0,
                 timeout: float = DEFAULT_TIMEOUT, uffd: bool = False,
                 hugepages: dict[int, int] | None = None) -> None:
        release = os.uname().release
        if kernel not in ("host", None) and not release.startswith(str(kernel)):
            raise ValueError(f"HostMachine runs the host kernel {release}, not {kernel!r}")
        if swap < 0:
            raise ValueError("swap must be >= 0")
        counts = hugepage_counts(hugepages)
        self._swap = None
        self._pool = None
        if swap:
            try:
                self._swap = _swap.acquire(int(swap))
            except _swap.SwapUnavailable as e:
                raise Unsupported(f"cannot enable {swap} bytes of swap: {e}") from None
        if counts:
            try:
                self._pool = _hugetlb.acquire(counts)
            except _hugetlb.PoolUnavailable as e:
                if self._swap is not None:
                    _swap.release(self._swap)
                    self._swap = None
                raise Unsupported(f"cannot set the hugetlb pool to {hugepages}: {e}",
                                  reason="the host's hugetlb pool cannot be set") from None
        self.swap = swap
        self.uffd = bool(uffd)     # userfaultfd is opt-in: see HostProcess.userfaultfd
        self.kernel = release
        self.ncpus = len(os.sched_getaffinity(0))
        self.seed = seed
        self.timeout = timeout
        self._policy = None
        self.processes = []
        self._owner = os.getpid()
        self._lock = threading.RLock()
        self._next_top = PROGRAM_SPACE_END
        self._kpagecount = None
        self._kpageflags = None
        self._pageouts = 0          # MADV_PAGEOUT calls made (see _pageout)
        self.leaked_reservations = 0    # hugetlb reservations the kernel kept for nobody
        self.closed = False
        _live_machines.add(self)

    def __repr__(self) -> str:
        return f"<HostMachine kernel={self.kernel} processes={len(self.live_processes())}>"

    def __enter__(self) -> HostMachine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def live_processes(self) -> list[HostProcess]:
        return [p for p in self.processes if p.alive]

    @property
    def swap_file(self) -> str | None:
        """The path of the swap file this machine enabled, or None."""
        return self._swap.path if self._swap is not None else None

    @property
    def hugepages(self) -> dict[int, dict[str, int]]:
        """The host's hugetlb pool per page size, read from
        /sys/kernel/mm/hugepages/hugepages-<kB>kB/ (nr, free, resv, surplus
        and overcommit), for the sizes the engine models."""
        from ..shmem import HSTATE_SIZE
        have = _hugetlb.sizes()
        stale = self._pool.stale if self._pool is not None else {}
        return {size: (_hugetlb.counters(size, stale.get(size, 0)) if size in have else
                       dict.fromkeys(_hugetlb.COUNTERS, 0)) for size in HSTATE_SIZE}

    @property
    def memory(self) -> int:
        raise Unsupported("the host's memory size is the machine's: a scenario that needs "
                          "memory pressure at a chosen size cannot run here")

    def set_hugepages(self, size: int, nr_hugepages: int, node: int | None = None) -> int:
        raise Unsupported("the host's hugetlb pool is held at the counts this machine was made with "
                          "(HostMachine(hugepages=...)): it is not changed at run time")

    def set_overcommit_hugepages(self, size: int, nr_overcommit_hugepages: int) -> None:
        raise Unsupported("the host's hugetlb pool is held with overcommit 0 (HostMachine(hugepages=...)): "
                          "it is not changed at run time")

    def reclaim(self, npages: int = 1 << 62, cpu: int = 0) -> None:
        """Memory pressure on the host: MADV_PAGEOUT of every program mapping
        of every live process, which sends what reclaim would take through
        shrink_folio_list (pages mapped once to swap, clean MADV_FREE'd pages
        dropped). Unlike Machine.reclaim, page-cache folios no process maps
        are not reached, no budget can be set (npages must cover
        everything), and the frames freed are not known (None)."""
        if npages < 1 << 62:
            raise Unsupported("a reclaim budget cannot be imposed on the host")
        with self._pageout():
            for proc in self.live_processes():
                proc._call("reclaim", [(PROGRAM_SPACE_BASE, PROGRAM_SPACE_END)])
        return None

    @property
    def policy(self) -> Policy:
        if self._policy is None:
            from ..eras import policy_for
            self._policy = policy_for("host")
        return self._policy

    def _check_swap_is_ours(self):
        """MADV_PAGEOUT's effect depends on swap being on: compare only with
        the swap this machine asked for (none, or its own file). Swap any
        other process turned on makes the outcome that swap's, not the
        machine's: Unsupported (reason FOREIGN_SWAP), for this call only."""
        if self._swap is None:
            others = [p for p, _n in _swap.active_swaps()]
            what = "swap is on"
        else:
            others = [p for p in _swap.foreign_swap() if p != self._swap.path]
            what = "swap this machine does not own is on"
        if others:
            raise Unsupported(f"MADV_PAGEOUT while {what} on the host ("
                              + ", ".join(others) + "): its outcome depends on that swap",
                              reason=FOREIGN_SWAP)

    @contextlib.contextmanager
    def _pageout(self):
        """Around a MADV_PAGEOUT: the swap must be the machine's before and
        after it (another process may turn its swap on meanwhile; pages
        would go there). Counts it for _swap_still_ours()."""
        self._check_swap_is_ours()
        self._pageouts += 1
        yield
        self._check_swap_is_ours()

    def _swap_still_ours(self, since):
        """After a run that started when self._pageouts was `since`: if it
        paged anything out, check that no foreign swap is on now either (a
        swap-in's outcome depends on how full all swap is, vm_swap_full).
        Raises Unsupported (FOREIGN_SWAP)."""
        if self._pageouts > since:
            self._check_swap_is_ours()

    # --- processes ---

    def spawn(self) -> HostProcess:
        """A new process: a fork of the driver that becomes a server."""
        self._check_open()
        if self._pool is not None and not self.live_processes() and not self._pool_settle():
            raise Unsupported("the host's hugetlb pool was not whole again 10 s after the "
                              "machine's last process exited (a reference or reservation "
                              "outlived it)", reason="hugetlb pool not whole at spawn")
        drv, srv = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pid = os.fork()
        if pid == 0:
            drv.close()
            _server.become_server(srv)   # never returns
        srv.close()
        return self._adopt(pid, drv, None)

    def _pool_settle(self, wait=10.0):
        """With none of its processes alive, the machine's hugetlb pool is
        whole again: a page whose last reference went with a process that
        exited (a pipe, a deferred free_huge_folio) may come back a moment
        later. Waits up to `wait` seconds for every page to be free, so a
        new program starts from the pool the engine's fresh machine has.
        Reservations left then are nobody's: the kernel leaked them (6.18.44
        leaks the unconsumed reservation of part of a private mapping that
        mremap moved, as `mremap-gup` in tests/host/test_host_hugetlb.py
        does); they are set aside (mmemu.host.hugetlb.set_aside) and counted
        in leaked_reservations."""
        deadline = time.monotonic() + wait
        while True:
            cs = {s: _hugetlb.counters(s, self._pool.stale[s]) for s in self._pool.counts}
            if all(c["free_hugepages"] == c["nr_hugepages"] for c in cs.values()):
                break
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        for s, c in cs.items():
            if c["resv_hugepages"] > 0:
                self.leaked_reservations += c["resv_hugepages"]
                if not _hugetlb.set_aside(self._pool, s, c["resv_hugepages"]):
                    return False
        return True

    def _adopt(self, pid, sock, parent):
        chan = _Channel(sock, self.timeout)
        proc = HostProcess(self, pid, chan, parent)
        self.processes.append(proc)
        try:
            hello = chan.recv(f"start of pid {pid}")
        except (TimeoutError, EOFError, OSError) as e:
            seen = _diagnose(pid) if isinstance(e, TimeoutError) else ""
            status = self._kill(proc)
            raise HostError(f"server pid {pid} did not start: {e}; {status}{seen}") from e
        if hello != ("ready", pid):
            self._kill(proc)
            raise HostError(f"server pid {pid} greeted with {hello!r}")
        return proc

    def _fork(self, parent):
        self._check_open()
        readers = []
        for u in parent._foreign:
            if not u.released and u.features & C.UFFD_FEATURE_EVENT_FORK:
                # Its FORK event would wait for a read by the server holding
                # the context, which is not running a handler meanwhile.
                raise Unsupported("fork of a process whose memory a FORK event's context "
                                  "(held by another process) serves: its event would wait "
                                  "for a reader that is not running")
        for u in parent._uffds.values():
            if u.target is not parent:
                continue            # a FORK event's context: its VMAs are another process's
            if u.released or not u.features & C.UFFD_FEATURE_EVENT_FORK or \
                    (u.served and u._handler is None):
                continue
            if u._handler is None:
                # fork() waits in dup_userfaultfd_complete() until the FORK
                # event is read, and the server forks holding the GIL; with
                # nobody to read it the program would hang, not block.
                raise Unsupported("fork with UFFD_FEATURE_EVENT_FORK and no service thread: "
                                  "the host server cannot show a fork that waits")
            readers.append(u.id)           # a Python handler sees the event afterwards
        drv, srv = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            pid = parent._call("fork", readers, fds=[srv.fileno()])
        finally:
            srv.close()
        child = self._adopt(pid, drv, parent)
        child._hugetlb_fds = dict(parent._hugetlb_fds)      # the fd table is duplicated
        for uid in readers:
            u = parent._uffds[uid]
            u._fork_child = child
            try:
                u._run_queued()             # the FORK message (and anything before it)
            finally:
                u._fork_child = None
        return child

    def _exit(self, proc):
        if not proc.alive:
            return
        proc._call("exit")
        proc.alive = False
        proc._chan.close()
        self._reap(proc.pid, self.timeout)

    def _kill(self, proc):
        """Kill a server that failed; returns how it ended, for the report."""
        proc.alive = False
        try:
            proc._chan.close()
        except OSError:
            pass
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return self._reap(proc.pid, self.timeout)

    @staticmethod
    def _reap(pid, timeout):
        deadline = time.monotonic() + timeout
        delay = 0.0005
        while True:
            try:
                got, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                return "already reaped"
            if got:
                if os.WIFSIGNALED(status):
                    return f"killed by signal {os.WTERMSIG(status)}"
                return f"exit status {os.WEXITSTATUS(status)}"
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return "killed after the exit timeout"
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def _place(self, length, align=C.PAGE_SIZE):
        """The hint for mmap(addr=0, length): top-down and adjacent to the
        previous one, as the kernel's allocator places a fresh process's
        mappings (so anonymous neighbours merge into one VMA, which decides
        e.g. whether fork copies a zero-page pte), but inside the program
        range; a hugetlb mapping's (align: its page size) rounded up to and
        aligned on its pages, as hugetlb_get_unmapped_area needs it. 0 (the
        kernel's choice) when the range cannot hold it."""
        length = (int(length) + align - 1) & ~(align - 1) & ((1 << 64) - 1)
        if not 0 < length <= PROGRAM_SPACE_MAX_MAPPING:
            return 0
        with self._lock:
            addr = (self._next_top - length) & ~(align - 1)
            if addr < PROGRAM_SPACE_BASE:
                return 0
            self._next_top = addr
            return addr

    # --- frames ---

    def frame(self, pfn: int) -> FrameInfo:
        """/proc/kpagecount and /proc/kpageflags of pfn."""
        self._check_open()
        if self._kpagecount is None:
            try:
                self._kpagecount = os.open("/proc/kpagecount", os.O_RDONLY | os.O_CLOEXEC)
                self._kpageflags = os.open("/proc/kpageflags", os.O_RDONLY | os.O_CLOEXEC)
            except PermissionError as e:
                raise Unsupported(f"/proc/kpagecount needs CAP_SYS_ADMIN: {e}") from e
        try:
            count = struct.unpack("<Q", os.pread(self._kpagecount, 8, pfn * 8))[0]
            flags = struct.unpack("<Q", os.pread(self._kpageflags, 8, pfn * 8))[0]
        except struct.error:
            raise oserror(_errno.EINVAL, "frame", f"pfn {pfn:#x} beyond max_pfn") from None
        return FrameInfo(pfn, count, flags)     # refcount, pincount: not visible

    def check(self) -> None:
        """The engine checks its invariants here; the real kernel has none to
        check from user space."""

    # --- teardown ---

    def close(self) -> None:
        """Exit every live process and reap it. Idempotent."""
        if self.closed or os.getpid() != self._owner:
            return
        self.closed = True
        # Children first, so no server sees its parent go while it still runs.
        for proc in reversed(self.processes):
            if not proc.alive:
                continue
            try:
                proc._call("exit", timeout=min(self.timeout, 5.0))
                proc.alive = False
                proc._chan.close()
                self._reap(proc.pid, 5.0)
            except (HostError, OSError):
                self._kill(proc)
        for fd in (self._kpagecount, self._kpageflags):
            if fd is not None:
                os.close(fd)
        self._kpagecount = self._kpageflags = None
        if self._swap is not None:
            # After the servers: swapoff would otherwise read their pages back.
            _swap.release(self._swap)
            self._swap = None
        if self._pool is not None:
            # After the servers too: their exit gives the pages back to the pool.
            _hugetlb.release(self._pool)
            self._pool = None

    def _check_open(self):
        if self.closed:
            raise ValueError("machine is closed")


@atexit.register
def _close_all():
    for m in list(_live_machines):
        try:
            m.close()
        except Exception:
            pass
