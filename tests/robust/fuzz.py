"""The argument fuzzer: every public method of mmemu's API, called with
hostile and nearly-valid arguments on a small machine that has a bit of
everything (anon, shmem and read-only private file mappings, a served and an
unserved userfaultfd, pins, a pipe, an exited process, closed objects).

One registry (SPECS) says, for each public method, which kind of value each
parameter takes; values of a kind are drawn from three pools: nearly valid
(near the world's real mappings, so calls reach deep code), hostile integers
(2**64-1, -(1<<63), numpy integers...) and values of the wrong type. The
same registry drives Hypothesis (test_fuzz.py, with shrinking) and a plain
seeded loop (run.py, 10^6 calls). Public methods are found by
introspection: a method without a SPECS entry fails test_every_method_has_a_spec.

Each call is recorded as a line of Python over the world's names, so a
defect comes with its reproduction: WORLD_SRC, then the calls.
"""
import atexit
import contextlib
import inspect
import math
import os
import random
import resource

import numpy as np

import mmemu
from mmemu import PAGE_SIZE as PAGE

from .harness import Defect, classify, is_int, verify

# Where save/load calls write: one file per test process, so that runs side
# by side (CI and a developer's session) never load each other's machine.
SAVE_PATH = f"/tmp/mmemu-fuzz-{os.getpid()}.save"


@atexit.register
def _remove_save():
    with contextlib.suppress(OSError):
        os.unlink(SAVE_PATH)

# ---- the world ------------------------------------------------------------------

# Executed to build each world (and printed as the first lines of every
# reproduction). `kernel` is set by the caller.
WORLD_SRC = '''\
import numpy as np, mmemu, pathlib
from mmemu import *
from mmemu.uffd import *
m = mmemu.Machine(kernel=kernel, memory=192 * PAGE_SIZE, swap=64 * PAGE_SIZE)
p = m.spawn()
RW = PROT_READ | PROT_WRITE
a = p.mmap(0, 8 * PAGE_SIZE, RW, MAP_PRIVATE | MAP_ANONYMOUS)
p.write(a, b"a" * (3 * PAGE_SIZE))
fd = p.memfd_create("f")
p.ftruncate(fd, 8 * PAGE_SIZE)
p.pwrite(fd, b"f" * PAGE_SIZE, 0)
s = p.mmap(0, 8 * PAGE_SIZE, RW, MAP_SHARED, fd, 0)
r = p.mmap(0, 4 * PAGE_SIZE, PROT_READ, MAP_PRIVATE, fd, 0)
sa = p.mmap(0, 4 * PAGE_SIZE, RW, MAP_SHARED | MAP_ANONYMOUS)
reg = p.mmap(0, 8 * PAGE_SIZE, RW, MAP_PRIVATE | MAP_ANONYMOUS)
res = Resolver()
u = p.userfaultfd()
u.api(m.policy.uffd_features & (UFFD_FEATURE_EVENT_FORK | UFFD_FEATURE_EVENT_REMAP | UFFD_FEATURE_EVENT_REMOVE | UFFD_FEATURE_EVENT_UNMAP | UFFD_FEATURE_THREAD_ID))
u.register(reg, 8 * PAGE_SIZE, UFFDIO_REGISTER_MODE_MISSING | (UFFDIO_REGISTER_MODE_WP if m.policy.uffd_features & UFFD_FEATURE_PAGEFAULT_FLAG_WP else 0))
u.serve(res)
nu = p.userfaultfd()
cu = p.userfaultfd()
cu.api()
cu.close()
pin = p.pin_user_pages(a, 2, FOLL_WRITE | FOLL_LONGTERM)
gpin = p.get_user_pages(a + 2 * PAGE_SIZE, 1)
rpin = p.get_user_pages(a, 1)
rpin.release()
pipe = p.vmsplice(a, PAGE_SIZE + 100)
cpipe = p.vmsplice(a, 10)
cpipe.close()
c = p.fork()
dead = p.fork()
dead.exit()
t = p.thread()
'''
_WORLD_CODE = compile(WORLD_SRC, "<fuzz world>", "exec")


class HandlerBug(Exception):
    """Raised by a misbehaving uffd handler: the caller may see it (the
    service handler's exception is re-raised to the faulting access)."""


def _h_raise(u, msg):
    raise HandlerBug("handler raised")


def _h_noop(u, msg):
    pass


def _h_unmap(u, msg):
    if msg.event == 0x12:
        u.process.munmap(msg.address & ~(PAGE - 1), PAGE)


def _h_twice(u, msg):
    mmemu.Resolver()(u, msg)
    mmemu.Resolver()(u, msg)


def _h_reregister(u, msg):
    if msg.event == 0x12:
        page = msg.address & ~(PAGE - 1)
        u.unregister(page, PAGE)
        u.register(page, PAGE, 1)


def _h_exit(u, msg):
    u.process.exit()


HANDLERS = {"_h_raise": _h_raise, "_h_noop": _h_noop, "_h_unmap": _h_unmap, "_h_twice": _h_twice,
            "_h_reregister": _h_reregister, "_h_exit": _h_exit}
HANDLER_SRC = inspect.getsource(HandlerBug) + "".join(inspect.getsource(f) for f in HANDLERS.values())


def build_world(kernel):
    ns = {"kernel": kernel, "HandlerBug": HandlerBug, **HANDLERS}
    exec(_WORLD_CODE, ns)
    return ns


# ---- values ---------------------------------------------------------------------

class Val:
    """A drawn argument: the value, its source text, and whether its type is wrong."""
    __slots__ = ("v", "src", "wrong")

    def __init__(self, v, src, wrong=False):
        self.v, self.src, self.wrong = v, src, wrong


def _ints(*pairs):
    return [(v, s) for v, s in pairs]


HOSTILE_INTS = _ints(
    (2**64 - 1, "2**64-1"), (2**63, "2**63"), (2**63 - 1, "2**63-1"), (-1, "-1"),
    (-(1 << 63), "-(1<<63)"), (2**100, "2**100"), (-4096, "-4096"), (-6534, "-6534"),
    (2**47, "2**47"), (2**47 - 4096, "2**47-4096"), (2**32, "2**32"), (2**31, "2**31"),
    (2**44, "2**44"), (-(2**100), "-(2**100)"),
)
NP_INTS = [
    (lambda: np.uint64(2**64 - 4096), "np.uint64(2**64-4096)"), (lambda: np.int64(-1), "np.int64(-1)"),
    (lambda: np.uint64(PAGE), "np.uint64(PAGE_SIZE)"), (lambda: np.int32(1), "np.int32(1)"),
    (lambda: np.uint8(255), "np.uint8(255)"), (lambda: np.int64(-(1 << 63)), "np.int64(-(1<<63))"),
]
WRONG = [
    (lambda: math.nan, "float('nan')"), (lambda: math.inf, "float('inf')"), (lambda: -math.inf, "float('-inf')"),
    (lambda: 1.5, "1.5"), (lambda: 4096.0, "4096.0"), (lambda: None, "None"), (lambda: "x", "'x'"),
    (lambda: b"x", "b'x'"), (lambda: bytearray(b"ab"), "bytearray(b'ab')"),
    (lambda: memoryview(b"abcd"), "memoryview(b'abcd')"), (lambda: object(), "object()"),
    (lambda: [1], "[1]"), (lambda: 1 + 2j, "(1+2j)"),
]
WRONG_OBJ_NAMES = ["m", "p", "u", "pin", "pipe", "res", "t"]      # objects of the wrong class


def _near(names_offsets):
    return names_offsets


# Nearly valid values of each integer kind: (python expression over the world)
NEAR = {
    "addr": ["a", "a + PAGE_SIZE", "a + 100", "a + 7 * PAGE_SIZE", "a + 8 * PAGE_SIZE", "s", "s + 3 * PAGE_SIZE",
             "r", "r + PAGE_SIZE", "sa", "reg", "reg + PAGE_SIZE", "reg + 4 * PAGE_SIZE", "0", "PAGE_SIZE",
             "MMAP_MIN_ADDR", "TASK_SIZE - PAGE_SIZE", "TASK_SIZE", "a - PAGE_SIZE", "0x7f0000000000"],
    "len": ["0", "1", "100", "PAGE_SIZE", "2 * PAGE_SIZE", "3 * PAGE_SIZE + 1", "8 * PAGE_SIZE",
            "16 * PAGE_SIZE", "123 * PAGE_SIZE", "6534"],
    "npages": ["0", "1", "2", "3", "8", "9", "123"],
    "count": ["0", "1", "10", "PAGE_SIZE", "PAGE_SIZE + 1", "3 * PAGE_SIZE"],
    "prot": ["PROT_NONE", "PROT_READ", "RW", "PROT_READ | PROT_EXEC", "7", "PROT_SEM", "PROT_GROWSDOWN", "0x80"],
    "mflags": ["MAP_PRIVATE | MAP_ANONYMOUS", "MAP_SHARED | MAP_ANONYMOUS", "MAP_SHARED", "MAP_PRIVATE",
               "MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED", "MAP_SHARED | MAP_FIXED",
               "MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE", "MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE",
               "MAP_PRIVATE | MAP_ANONYMOUS | MAP_LOCKED", "MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB",
               "MAP_ANONYMOUS", "0", "MAP_SHARED_VALIDATE | MAP_ANONYMOUS"],
    "fd": ["fd", "-1", "0", "3", "4", "1000"],
    "offset": ["0", "PAGE_SIZE", "100", "7 * PAGE_SIZE", "16 * PAGE_SIZE", "2**44"],
    "advice": ["MADV_DONTNEED", "MADV_FREE", "MADV_REMOVE", "MADV_PAGEOUT", "MADV_COLD", "MADV_DONTFORK",
               "MADV_DOFORK", "MADV_WIPEONFORK", "MADV_KEEPONFORK", "MADV_POPULATE_READ",
               "MADV_POPULATE_WRITE", "MADV_DONTNEED_LOCKED", "MADV_COLLAPSE", "MADV_GUARD_INSTALL",
               "MADV_NORMAL", "MADV_HUGEPAGE", "MADV_MERGEABLE", "MADV_WILLNEED", "9999"],
    "mremap_flags": ["0", "MREMAP_MAYMOVE", "MREMAP_MAYMOVE | MREMAP_FIXED", "MREMAP_MAYMOVE | MREMAP_DONTUNMAP",
                     "MREMAP_FIXED", "MREMAP_DONTUNMAP", "MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP", "64"],
    "gup_flags": ["0", "FOLL_WRITE", "FOLL_LONGTERM", "FOLL_WRITE | FOLL_LONGTERM", "FOLL_FORCE",
                  "FOLL_FORCE | FOLL_WRITE", "FOLL_GET", "FOLL_PIN", "FOLL_NOWAIT"],
    "cpu": ["0", "1", "2", "-1"],
    "ns": ["0", "1", "10**9", "2**62", "-1", "2**63", "2**64"],
    "value": ["0", "1", "0xdead", "2**64-1"],
    "bool": ["True", "False", "0", "1"],
    "umode": ["0", "1", "2", "3", "4", "7"],
    "features": ["0", "m.policy.uffd_features", "UFFD_FEATURE_EVENT_FORK", "UFFD_FEATURE_WP_ASYNC",
                 "UFFD_FEATURE_MOVE", "1 << 40"],
    "api": ["UFFD_API", "0", "0xAB"],
    "uflags": ["0", "O_NONBLOCK", "O_CLOEXEC", "UFFD_USER_MODE_ONLY", "0x10"],
    "memfd_flags": ["0", "MFD_CLOEXEC", "MFD_ALLOW_SEALING", "MFD_HUGETLB", "MFD_NOEXEC_SEAL", "0x100"],
    "falloc_mode": ["0", "FALLOC_FL_KEEP_SIZE", "FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE",
                    "FALLOC_FL_PUNCH_HOLE", "0x10"],
    "pfn": ["0", "1", "10", "m._engine.nframes - 1", "m._engine.nframes"],
    "clear_refs": ["CLEAR_REFS_ALL", "CLEAR_REFS_SOFT_DIRTY", "CLEAR_REFS_MM_HIWATER_RSS", "0", "6"],
    "max_msgs": ["None", "0", "1", "5"],
    "scan_flags": ["0", "PM_SCAN_WP_MATCHING", "PM_SCAN_CHECK_WPASYNC", "3", "4"],
    "category": ["0", "PAGE_IS_WRITTEN", "PAGE_IS_PRESENT", "0x1ff", "0x200"],
    "event": ["0x12", "0x13", "0x14", "0x15", "0x16", "0"],
    "uf_flags": ["0", "1", "2", "4"],
    "memory": ["16 * PAGE_SIZE", "15 * PAGE_SIZE", "64 * PAGE_SIZE", "0", "2**50"],
    "swap": ["0", "PAGE_SIZE", "100", "16 * PAGE_SIZE"],
    "seed": ["0", "1", "2**70"],
    "ncpus": ["1", "2", "4", "0"],
    "nodes": ["1", "2", "4", "0", "65"],
    "mpol_flags": ["0", "MPOL_MF_MOVE", "MPOL_MF_MOVE_ALL", "MPOL_MF_STRICT", "MPOL_MF_STRICT | MPOL_MF_MOVE", "8"],
    "mpol_mode": ["MPOL_DEFAULT", "MPOL_BIND", "MPOL_INTERLEAVE", "MPOL_PREFERRED", "6",
                  "MPOL_BIND | MPOL_F_STATIC_NODES", "MPOL_BIND | MPOL_F_NUMA_BALANCING", "2**32 + MPOL_BIND"],
    "nodemask": ["0", "1", "2", "3", "2**64 - 1"],
    "zone_bytes": ["0", "PAGE_SIZE", "8 * PAGE_SIZE", "32 * PAGE_SIZE", "2**50", "-1"],
    "node": ["0", "1", "-1", "64"],
    "hpage_size": ["2 << 20", "1 << 30", "4096", "0", "3 << 20"],
    "hpage_count": ["0", "1", "3", "10**9", "-1", "2**64"],
}
# Non-integer kinds: (source, wrong-type?)
OTHER = {
    "hugepages": [("None", False), ("{}", False), ("{2 << 20: 1}", False), ("{2 << 20: -1}", False),
                  ("{1 << 30: 1}", False), ("{4096: 1}", False), ("{2 << 20: 10**9}", False),
                  ("{2 << 20: 0, 1 << 30: 0}", False), ("5", True), ("[2 << 20]", True)],
    "opt_node": [("None", False), ("0", False), ("1", False), ("-1", False), ("64", False), ("'0'", True)],
    "data": [("b''", False), ("b'x'", False), ("b'z' * PAGE_SIZE", False), ("b'y' * (PAGE_SIZE + 7)", False),
             ("bytearray(b'ba')", False), ("memoryview(b'mv' * 100)", False), ("np.zeros(10, np.uint8)", False),
             ("5", True), ("None", True), ("'str'", True), ("[1, 2]", True)],
    "src": [("b'c' * PAGE_SIZE", False), ("b'c' * (2 * PAGE_SIZE)", False), ("b'c'", False), ("a", False),
            ("reg", False), ("bytearray(PAGE_SIZE)", False), ("None", True), ("1.5", True)],
    "opt_len": [("None", False), ("PAGE_SIZE", False), ("2 * PAGE_SIZE", False), ("0", False), ("-1", False)],
    "proc": [("None", False), ("p", False), ("c", False), ("dead", False), ("m", True), ("5", True)],
    "handler": [("res", False), ("Resolver('copy', 7)", False), ("_h_raise", False), ("_h_noop", False),
                ("_h_unmap", False), ("_h_twice", False), ("_h_reregister", False), ("_h_exit", False),
                ("None", True), ("5", True)],
    "resolver_kind": [("'copy'", False), ("'zeropage'", False), ("'unprotect'", False), ("'pager'", False),
                      ("None", False),
                      ("'bogus'", False), ("5", True)],
    "versions": [("None", False), ("np.arange(8, dtype=np.uint64)", False), ("[1, 2, 3]", False),
                 ("np.zeros(0, np.uint64)", False), ("np.array([-1.5])", True), ("'x'", True)],
    "zone": [("'Normal'", False), ("'Movable'", False), ("'CMA'", False), ("'DMA32'", False),
             ("None", True), ("1", True)],
    "opt_zone_bytes": [("None", False), ("0", False), ("PAGE_SIZE", False), ("2**50", False), ("-1", False),
                       ("1.5", True), ("'1M'", True)],
    "name": [("'f'", False), ("''", False), ("'x' * 300", False), ("'\\ud800'", False), ("None", True),
             ("5", True), ("b'x'", True)],
    "swap_device": [("'file'", False), ("'hdd'", False), ("'ssd'", False), ("'zram'", False),
                    ("'nvme'", False), ("''", False), ("None", True), ("2", True)],
    "kernel": [("'5.7'", False), ("'5.8'", False), ("'6.18'", False), ("'4.0'", False), ("'6.99'", False),
               ("''", False), ("None", True), ("5.7", True)],
    "backports": [("()", False), ("['17839856fd58']", False), ("['nonsense']", False), ("None", True),
                  ("5", True)],
    "resolver_missing": [("'zeropage'", False), ("'copy'", False), ("'bogus'", False), ("None", False),
                         ("5", True)],
    "fill": [("0", False), ("255", False), ("256", False), ("-1", False), ("2**64", False), ("1.5", True),
             ("None", True)],
    "callable": [("lambda: None", False), ("None", True)],
    "trace": [("np.array([a, a + 8, s], np.uint64)", False), ("[a, a + PAGE_SIZE, 0]", False),
              ("np.zeros(0, np.uint64)", False), ("np.array([a, 2**63], np.uint64)", False),
              ("np.array([-1])", False), ("np.zeros((2, 2), np.uint64)", True), ("[0.5]", True),
              ("'x'", True), ("None", True)],
    "trace_writes": [("None", False), ("np.array([True, False, True])", False), ("np.ones(3, np.uint8)", False),
                     ("np.ones(7, bool)", False), ("'w'", True)],
    "link": [("None", False), ("mmemu.cost.Link()", False), ("mmemu.cost.Link(preempt=True)", False),
             ("5", True)],
    "arrival": [("None", False), ("np.zeros(8, np.int64)", False), ("np.arange(8) * 1000", False),
                ("[1, 2]", False), ("np.zeros(0, np.int64)", False), ("'x'", True)],
    "stop_on": [("()", False), ("'userfault'", False), ("{'userfault'}", False), ("'bogus'", False),
                ("5", True)],
    "page_list": [("[a, a + PAGE_SIZE]", False), ("np.array([a, s], np.uint64)", False), ("[]", False),
                  ("[2**64]", False), ("[-1, 0]", False), ("np.array([-1])", False), ("[a, a]", False),
                  ("np.zeros((2, 2), np.uint64)", True), ("'x'", True), ("None", True), ("[0.5]", True)],
    "node_list": [("None", False), ("[0]", False), ("[0, 0]", False), ("[1, 0]", False), ("[-1, 0]", False),
                  ("[2**40, 0]", False), ("np.array([0, 0], np.int32)", False), ("'x'", True), ("[0.5]", True)],
    "path": [(repr(SAVE_PATH), False), (f"pathlib.Path({SAVE_PATH!r})", False),
             ("'/nonexistent/dir/m'", False), ("'/etc/hostname'", False), ("None", True), ("5.5", True)],
}

# Which receivers each class has in the world (an exited process, a closed
# uffd, a released pin are receivers too).
RECEIVERS = {
    "Machine": ["m"],
    "Process": ["p", "p", "p", "c", "dead"],
    "Thread": ["t", "p.main", "c.main"],
    "Pin": ["pin", "gpin", "rpin"],
    "Pipe": ["pipe", "cpipe"],
    "Uffd": ["u", "u", "nu", "cu"],
    "Resolver": ["res"],
}

# Each public method: [(parameter, kind)] in order; parameters after a None
# marker are optional (passed by keyword, each with probability 1/2).
# "PROPERTY" is read, not called. Constructors are "Class()".
SPECS = {
    "Machine()": [("kernel", "kernel"), None, ("ncpus", "ncpus"), ("memory", "memory"), ("swap", "swap"),
                  ("seed", "seed"), ("backports", "backports"), ("nodes", "nodes"),
                  ("movablecore", "zone_bytes"), ("kernelcore", "opt_zone_bytes"), ("cma", "zone_bytes"),
                  ("hugepages", "hugepages"), ("swap_device", "swap_device")],
    "Machine.swap_device": "PROPERTY",
    "Machine.numa_scan": [("process", "proc"), ("addr", "addr"), ("length", "len")],
    "Machine.node_of": [("pfn", "pfn")],
    "Machine.node_hugepages": [("node", "node")],
    "Machine.set_hugepages": [("size", "hpage_size"), ("nr_hugepages", "hpage_count"), ("node", "opt_node")],
    "Machine.set_overcommit_hugepages": [("size", "hpage_size"), ("nr_overcommit_hugepages", "hpage_count")],
    "Machine.zone_of": [("pfn", "pfn")],
    "Machine.zone_free": [("zone", "zone"), None, ("node", "node")],
    "Process.move_pages": [("pages", "page_list"), None, ("nodes", "node_list"), ("flags", "mpol_flags")],
    "Process.mbind": [("addr", "addr"), ("length", "len"), ("mode", "mpol_mode"), ("nodemask", "nodemask"),
                      None, ("flags", "mpol_flags")],
    "Machine.check": [],
    "Machine.clock": [("cpu", "cpu")],
    "Machine.set_clock": [("cpu", "cpu"), ("ns", "ns")],
    "Machine.costs": "PROPERTY",
    "Machine.frame": [("pfn", "pfn")],
    "Machine.folio_order": [("pfn", "pfn")],
    "Machine.memory_usage": [],
    "Machine.hugepages": "PROPERTY",
    "Machine.khugepaged_scan": [None, ("pages", "npages"), ("cpu", "cpu")],
    "Machine.save": [("path", "path")],
    "Machine.load": [("path", "path")],
    "Machine.processes": "PROPERTY",
    "Machine.reclaim": [None, ("npages", "npages"), ("cpu", "cpu")],
    "Machine.ksm_scan": [None, ("pages", "npages"), ("cpu", "cpu")],
    "Machine.ksm_stats": [],
    "Machine.spawn": [None, ("cpu", "cpu")],
    "Machine.stats": [],
    "Process.clear_refs": [("value", "clear_refs")],
    "Process.close": [("fd", "fd")],
    "Process.exit": [],
    "Process.fallocate": [("fd", "fd"), ("mode", "falloc_mode"), ("offset", "offset"), ("length", "len")],
    "Process.fork": [],
    "Process.fstat_size": [("fd", "fd")],
    "Process.ftruncate": [("fd", "fd"), ("length", "len")],
    "Process.get_user_pages": [("addr", "addr"), ("npages", "npages"), None, ("gup_flags", "gup_flags")],
    "Process.has_pinned": "PROPERTY",
    "Process.madvise": [("addr", "addr"), ("length", "len"), ("advice", "advice")],
    "Process.memfd_create": [("name", "name"), None, ("flags", "memfd_flags")],
    "Process.minflt": "PROPERTY",
    "Process.mmap": [("addr", "addr"), ("length", "len"), ("prot", "prot"), ("flags", "mflags"), None,
                     ("fd", "fd"), ("offset", "offset")],
    "Process.mprotect": [("addr", "addr"), ("length", "len"), ("prot", "prot")],
    "Process.mremap": [("old_addr", "addr"), ("old_size", "len"), ("new_size", "len"), None,
                       ("flags", "mremap_flags"), ("new_addr", "addr")],
    "Process.munmap": [("addr", "addr"), ("length", "len")],
    "Process.pagemap": [("addr", "addr")],
    "Process.pagemap_range": [("addr", "addr"), ("npages", "npages")],
    "Process.pagemap_scan": [("start", "addr"), ("end", "addr"), None, ("flags", "scan_flags"),
                             ("category_mask", "category"), ("category_anyof_mask", "category"),
                             ("category_inverted", "category"), ("return_mask", "category"),
                             ("max_pages", "npages"), ("vec_len", "npages")],
    "Process.pin_user_pages": [("addr", "addr"), ("npages", "npages"), None, ("gup_flags", "gup_flags")],
    "Process.pin_user_pages_fast": [("addr", "addr"), ("npages", "npages"), None, ("gup_flags", "gup_flags")],
    "Process.populate": [("addr", "addr"), ("length", "len"), None, ("write", "bool")],
    "Process.pread": [("fd", "fd"), ("n", "count"), ("offset", "offset")],
    "Process.pread_into": [("fd", "fd"), ("addr", "addr"), ("n", "count"), ("offset", "offset")],
    "Process.proc_mem_read": [("addr", "addr"), ("n", "count")],
    "Process.proc_mem_write": [("addr", "addr"), ("data", "data")],
    "Process.pwrite": [("fd", "fd"), ("data", "data"), ("offset", "offset")],
    "Process.pwrite_from": [("fd", "fd"), ("addr", "addr"), ("n", "count"), ("offset", "offset"), None,
                            ("direct", "bool")],
    "Process.read": [("addr", "addr"), ("n", "count")],
    "Process.rss_anon": "PROPERTY",
    "Process.hugetlb_usage": "PROPERTY",
    "Process.thread": [None, ("cpu", "cpu")],
    "Process.touch": [("addr", "addr"), ("npages", "npages"), None, ("write", "bool"), ("value", "value"),
                      ("cpu", "cpu")],
    "Process.userfaultfd": [None, ("flags", "uflags")],
    "Process.versions": [("addr", "addr"), ("npages", "npages")],
    "Process.vmsplice": [("addr", "addr"), ("length", "len")],
    "Process.write": [("addr", "addr"), ("data", "data")],
    "Thread.read": [("addr", "addr"), ("n", "count")],
    "Thread.resume": [],
    "Thread.touch": [("addr", "addr"), ("npages", "npages"), None, ("write", "bool"), ("value", "value")],
    "Thread.replay": [("addrs", "trace"), None, ("writes", "trace_writes"), ("stop_on", "stop_on"),
                      ("start", "npages"), ("until", "ns")],
    "Thread.write": [("addr", "addr"), ("data", "data")],
    "Pin.held_refs": [],
    "Pin.read": [("offset", "count"), ("n", "count")],
    "Pin.refs_per_page": "PROPERTY",
    "Pin.release": [],
    "Pin.write": [("offset", "count"), ("data", "data")],
    "Pipe.close": [],
    "Pipe.held_refs": [],
    "Pipe.read": [("n", "count")],
    "Uffd.api": [None, ("features", "features"), ("api", "api")],
    "Uffd.close": [],
    "Uffd.continue_": [("addr", "addr"), ("length", "len"), None, ("mode", "umode")],
    "Uffd.copy": [("dst", "addr"), ("src", "src"), None, ("length", "opt_len"), ("mode", "umode"),
                  ("src_process", "proc")],
    "Uffd.core_log": [],
    "Uffd.move": [("dst", "addr"), ("src", "addr"), ("length", "len"), None, ("mode", "umode")],
    "Uffd.pending": [],
    "Uffd.poison": [("addr", "addr"), ("length", "len"), None, ("mode", "umode")],
    "Uffd.policy": "PROPERTY",
    "Uffd.read": [None, ("max_msgs", "max_msgs")],
    "Uffd.register": [("addr", "addr"), ("length", "len"), ("mode", "umode")],
    "Uffd.serve": [("handler", "handler"), None, ("cpu", "cpu")],
    "Uffd.serve_core": [("resolver", "resolver_kind"), None, ("base", "addr"), ("versions", "versions"),
                        ("link", "link"), ("arrival", "arrival"), ("resident", "npages"),
                        ("log", "bool")],
    "Uffd.core_stats": [None, ("since", "npages")],
    "Uffd.unregister": [("addr", "addr"), ("length", "len")],
    "Uffd.wake": [("addr", "addr"), ("length", "len")],
    "Uffd.writeprotect": [("addr", "addr"), ("length", "len"), ("mode", "umode")],
    "Uffd.zeropage": [("addr", "addr"), ("length", "len"), None, ("mode", "umode")],
    "Resolver()": [None, ("missing", "resolver_missing"), ("fill", "fill")],
    "Resolver.resolve": [("u", "uffd_obj"), ("event", "event"), ("flags", "uf_flags"), ("address", "addr"),
                         ("close_fork", "callable")],
    "Resolver.take": [],
    "policy_for()": [("kernel", "kernel"), None, ("backports", "backports")],
}
OTHER["uffd_obj"] = [("u", False), ("nu", False), ("cu", False)]   # duck-typed: a Uffd or the host's context

# Public classes whose methods must all be in SPECS.
PUBLIC_CLASSES = {"Machine": mmemu.Machine, "Process": mmemu.Process, "Thread": mmemu.Thread,
                  "Pin": mmemu.Pin, "Pipe": mmemu.Pipe, "Uffd": mmemu.Uffd, "Resolver": mmemu.Resolver,
                  "UffdMsg": mmemu.UffdMsg}
# Public API not fuzzed, with the reason.
NOT_FUZZED = {
    # ShmemFile is not exported: users reach it only through the fd calls
    # of Process (memfd_create, ftruncate, fallocate, pread/pwrite...).
}


def public_methods():
    """Every public method and property of the public classes, plus the
    public constructors: ["Class.name", ...]."""
    out = ["Machine()", "Resolver()", "policy_for()"]
    for cname, cls in PUBLIC_CLASSES.items():
        for name, v in inspect.getmembers(cls):
            if name.startswith("_"):
                continue
            if inspect.isfunction(v) or isinstance(v, property):
                out.append(f"{cname}.{name}")
    return out


# ---- drawing --------------------------------------------------------------------

class RandDraw:
    """Draws from a random.Random (the fast loop)."""

    def __init__(self, rng):
        self.rng = rng

    def choice(self, seq):
        return seq[self.rng.randrange(len(seq))]

    def below(self, n):
        return self.rng.randrange(n)


class HypDraw:
    """Draws through Hypothesis (shrinkable)."""

    def __init__(self, data):
        import hypothesis.strategies as st
        self.data, self.st = data, st

    def choice(self, seq):
        return seq[self.data.draw(self.st.integers(0, len(seq) - 1))]

    def below(self, n):
        return self.data.draw(self.st.integers(0, n - 1))


def draw_value(d, kind, ns):
    if kind in OTHER:
        src, wrong = d.choice(OTHER[kind])
        return Val(eval(src, ns), src, wrong)
    pool = d.below(10)
    if pool < 6:
        src = d.choice(NEAR[kind])
        return Val(eval(src, ns), src)
    if pool < 8:
        v, src = d.choice(HOSTILE_INTS)
        return Val(v, src)
    if pool < 9:
        mk, src = d.choice(NP_INTS)
        return Val(mk(), src)
    if d.below(3) == 0:
        name = d.choice(WRONG_OBJ_NAMES)
        return Val(eval(name, ns), name, True)
    mk, src = d.choice(WRONG)
    return Val(mk(), src, True)


class Call:
    """One drawn call: its receiver, method and arguments, and its source line."""

    def __init__(self, method, recv, args, kwargs):
        self.method, self.recv, self.args, self.kwargs = method, recv, args, kwargs

    @property
    def wrong_type(self):
        return any(v.wrong for v in self.args) or any(v.wrong for v in self.kwargs.values())

    @property
    def src(self):
        parts = [v.src for v in self.args] + [f"{k}={v.src}" for k, v in self.kwargs.items()]
        cls, _, name = self.method.partition(".")
        if self.method.endswith("()"):
            fn = {"policy_for()": "mmemu.policy_for"}.get(self.method, "mmemu." + self.method[:-2])
            return f"{fn}({', '.join(parts)})"
        if SPECS[self.method] == "PROPERTY":
            return f"{self.recv}.{name}"
        return f"{self.recv}.{name}({', '.join(parts)})"

    def run(self, ns):
        cls, _, name = self.method.partition(".")
        args = [v.v for v in self.args]
        kwargs = {k: v.v for k, v in self.kwargs.items()}
        if self.method.endswith("()"):
            fn = mmemu.policy_for if self.method == "policy_for()" else getattr(mmemu, self.method[:-2])
            return fn(*args, **kwargs)
        obj = eval(self.recv, ns)
        if SPECS[self.method] == "PROPERTY":
            return getattr(obj, name)
        return getattr(obj, name)(*args, **kwargs)


METHODS = sorted(SPECS)


def draw_call(d, ns, methods=METHODS):
    method = d.choice(methods)
    spec = SPECS[method]
    cls = method.partition(".")[0]
    recv = d.choice(RECEIVERS[cls]) if cls in RECEIVERS and not method.endswith("()") else None
    args, kwargs = [], {}
    if spec != "PROPERTY":
        optional = False
        for item in spec:
            if item is None:
                optional = True
                continue
            pname, kind = item
            if optional:
                if d.below(2):
                    kwargs[pname] = draw_value(d, kind, ns)
            else:
                args.append(draw_value(d, kind, ns))
    return Call(method, recv, args, kwargs)


# ---- running ----------------------------------------------------------------------

class AddressSpaceLimit:
    """A soft RLIMIT_AS while fuzzing, so that a host allocation sized by a
    hostile count fails with MemoryError (a reported defect, issue 9 §7)
    instead of eating the host."""

    def __init__(self, extra=3 << 30):
        self.extra = extra

    def __enter__(self):
        self.old = resource.getrlimit(resource.RLIMIT_AS)
        with open("/proc/self/statm") as f:
            vsz = int(f.read().split()[0]) * PAGE
        soft = vsz + self.extra
        if self.old[1] != resource.RLIM_INFINITY:
            soft = min(soft, self.old[1])
        resource.setrlimit(resource.RLIMIT_AS, (soft, self.old[1]))
        return self

    def __exit__(self, *exc):
        resource.setrlimit(resource.RLIMIT_AS, self.old)


def execute(call, ns):
    """Run one call and verify the machine; returns the outcome (a short
    string for the digest) or raises Defect."""
    m = ns["m"]
    try:
        ret = call.run(ns)
        outcome = "ok"
        # A constructor's result must be usable and consistent too.
        if isinstance(ret, mmemu.Machine):
            verify(ret, call.method)
    except HandlerBug:
        outcome = "HandlerBug"
    except Defect:
        raise
    except BaseException as e:          # noqa: B902 - every outcome is judged
        if isinstance(e, KeyboardInterrupt):
            raise
        d = classify(e, call.method, call.wrong_type)
        if d is not None:
            raise d from None
        outcome = f"{type(e).__name__}:{getattr(e, 'errno', '')}"
    verify(m, call.method)
    return outcome


def repro_text(kernel, calls):
    lines = [f"kernel = {kernel!r}", HANDLER_SRC.rstrip(), WORLD_SRC.rstrip()]
    lines += [c.src for c in calls]
    return "\n".join(lines)


def run_world(kernel, d, ncalls, methods=METHODS):
    """Build a world, make ncalls drawn calls; returns (calls, outcomes);
    raises Defect with .calls set (the calls made, the failing one last)."""
    ns = build_world(kernel)
    calls, outcomes = [], []
    for _ in range(ncalls):
        call = draw_call(d, ns, methods)
        calls.append(call)
        try:
            outcomes.append(execute(call, ns))
        except Defect as e:
            e.calls, e.kernel = calls, kernel
            raise
    return calls, outcomes


def minimize(kernel, calls, key):
    """The shortest reproduction: the failing call alone on a fresh world if
    that reproduces the same defect, else the shortest prefix whose last call
    does (bisected), keeping the failing call."""
    def fails(seq):
        ns = build_world(kernel)
        for c in seq:
            try:
                execute(c, ns)
            except Defect as e:
                return e.key == key
        return False
    last = calls[-1]
    if fails([last]):
        return [last]
    # Drop earlier calls one at a time, greedily (sequences are short).
    seq = list(calls)
    i = 0
    while i < len(seq) - 1:
        trial = seq[:i] + seq[i + 1:]
        if fails(trial):
            seq = trial
        else:
            i += 1
    return seq


def fuzz(seed, ncalls, versions, calls_per_world=25, on_defect=None):
    """The plain loop: ncalls calls over fresh worlds of the given versions.
    Returns stats {calls, defects: {key: (Defect, repro)}, per_version}."""
    rng = random.Random(seed)
    d = RandDraw(rng)
    stats = {"calls": 0, "worlds": 0, "crashes": 0, "corrupted": 0, "defects": {},
             "per_version": {}}
    with AddressSpaceLimit():
        while stats["calls"] < ncalls:
            kernel = versions[rng.randrange(len(versions))]
            stats["worlds"] += 1
            n = min(calls_per_world, ncalls - stats["calls"])
            try:
                calls, _ = run_world(kernel, d, n)
                made = len(calls)
            except Defect as e:
                made = len(e.calls)
                if e.kind == "corrupted":
                    stats["corrupted"] += 1
                else:
                    stats["crashes"] += 1
                if e.key not in stats["defects"]:
                    try:
                        seq = minimize(kernel, e.calls, e.key)
                    except Exception:            # the shrinker must not hide the defect
                        seq = e.calls
                    stats["defects"][e.key] = {"kind": e.kind, "method": e.method, "detail": e.detail,
                                               "frame": e.frame, "kernel": kernel,
                                               "calls": [c.src for c in seq]}
                    if on_defect:
                        on_defect(e, kernel, seq)
            stats["calls"] += made
            pv = stats["per_version"].setdefault(kernel, 0)
            stats["per_version"][kernel] = pv + made
    return stats
