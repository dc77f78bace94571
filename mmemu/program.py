"""A small program language for memory-management scenarios.

A program is plain JSON data: a list of steps (or {"steps": [...]}). Each
step is a dict whose "op" is the name of the Python API call it makes, with
the same arguments, except that addresses are symbolic (a program names
regions, never addresses; run() places them, identically on every machine,
see PLACEMENT_TOP):

    ["a", 2]        page 2 of region a
    ["a", 2, 100]   byte 100 of that page (only for byte-granular ops:
                    read, write, proc_mem_read, proc_mem_write)

and lengths of page ranges are counts of pages ("pages"). Regions are named
by the mmap that creates them. Processes are named: "main" is spawned by
run(); "fork" names the child ("name") and may carry a "body", a list of
steps run in the child at that point (steps without "proc" default to the
process whose body they are in). Any later step can address any live
process with "proc", so the interleaving of parent and child is explicit.
Pipes (vmsplice) and pins belong to the process that made it: their steps
run there, and "exit" closes and releases them first, as Linux's exit
closes the process's files.

Files are memfds, named like regions: {"op": "memfd_create", "name": "f"}
opens one in the step's process; "fd": "f" names it in ftruncate,
fallocate, pread, pwrite, close and mmap (a file mapping; "off" is the file
offset in bytes). File descriptors are inherited at fork, so a child can use
the names its parent had open; close removes a name from one process only,
and a name used after its process closed it is a malformed program (the
descriptor number could name another file by then).

    [{"op": "mmap", "name": "a", "pages": 2, "prot": "PROT_READ|PROT_WRITE",
      "flags": "MAP_PRIVATE|MAP_ANONYMOUS"},
     {"op": "write", "at": ["a", 0], "data": "hello"},
     {"op": "fork", "name": "c", "body": [
         {"op": "vmsplice", "at": ["a", 0], "pages": 1, "name": "p"},
         {"op": "munmap", "at": ["a", 0], "pages": 1}]},
     {"op": "write", "at": ["a", 0], "data": "HELLO"},
     {"op": "pipe_read", "pipe": "p", "len": 5},
     {"op": "exit", "proc": "c"}]

userfaultfd: {"op": "userfaultfd", "name": "u", "flags": "O_NONBLOCK"} opens
a context in the step's process; the uffd_* ops (uffd_api, uffd_register,
uffd_unregister, uffd_copy (fill/data, or "src": an address), uffd_zeropage,
uffd_continue, uffd_poison, uffd_move ("src"), uffd_writeprotect, uffd_wake,
uffd_read, uffd_close, uffd_serve, uffd_served) name it with "uffd" and run
in that process ("at" is in its address space; "mode" and "features" take
the UFFDIO_*_MODE_* and UFFD_FEATURE_* names). A failed fill ioctl observes
its output field too ({"errno", "result"}). {"op": "uffd_serve", "missing":
"zeropage"|"copy", "fill": n} starts a service thread with the
mmemu.uffd.Resolver rules; uffd_served observes the messages it handled
(and the errno of an ioctl that failed to resolve one). mremap moves
{"at", "pages"} to {"to"} (MREMAP_MAYMOVE|MREMAP_FIXED) with "new_pages". An access that faults into a
context with no handler observes {"blocked": message} (event, flags and the
symbolic page address) and its thread stays blocked; uffd_read observes
{"msgs": [...]}. A step that may wake it (copy, zeropage, writeprotect,
wake, unregister, close) lets it run on at once, to completion or to its
next fault, before the snapshot, as Linux would; a later {"op": "resume"}
observes how it ended (its data, ok, a signal, or blocked again).

run(program, machine) interprets it on any object with the Machine API
(mmemu.Machine or mmemu.host.HostMachine) and returns one observation per
step: what the call returned, the errno it failed with, or the signal it
raised, and (by default) a snapshot of every live process's pages after the
step: pagemap bits, raw PFN, kpagecount and kpageflags. PFNs stay raw here;
mmemu.host.compare turns them into identities.

A malformed program (unknown op or argument, misaligned or out-of-region
address, undefined region, process, pipe or pin) raises ProgramError naming
the step, before anything runs.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Union

if TYPE_CHECKING:
    from .host.machine import HostMachine
    from .machine import Machine

    Step = dict[str, Any]
    Program = Union[list[Step], dict[str, Any]]     # a list of steps, or {"steps": [...]}
    Observation = dict[str, Any]

import errno as _errno
import json

import numpy as np

from . import constants as C
from .errors import Deadlock, EmulatedSignal, Sigbus, WouldBlock
from .pageinfo import KPF_NAMES

# Ops, their required and optional arguments besides "op" and "proc".
OPS = {
    "mmap": ({"pages", "prot", "flags"}, {"name", "addr", "fd", "off", "align"}),
    "munmap": ({"at", "pages"}, set()),
    "mremap": ({"at", "pages", "new_pages"}, {"to", "flags"}),
    "mprotect": ({"at", "pages", "prot"}, set()),
    "madvise": ({"at", "pages", "advice"}, set()),
    "read": ({"at", "len"}, set()),
    "write": ({"at"}, {"data", "fill", "len", "hex"}),
    "fork": (set(), {"name", "body"}),
    "exit": (set(), set()),
    "pagemap": ({"at"}, {"pages"}),
    "frame": ({"at"}, set()),
    "vmsplice": ({"at", "pages", "name"}, set()),
    "pipe_read": ({"pipe", "len"}, set()),
    "pipe_close": ({"pipe"}, set()),
    "get_user_pages": ({"at", "pages", "gup_flags", "name"}, set()),
    "pin_user_pages": ({"at", "pages", "gup_flags", "name"}, set()),
    "pin_read": ({"pin", "off", "len"}, set()),
    "pin_write": ({"pin", "off"}, {"data", "fill", "len", "hex"}),
    "pin_release": ({"pin"}, set()),
    "clear_refs": ({"value"}, set()),
    "proc_mem_read": ({"at", "len"}, set()),
    "proc_mem_write": ({"at"}, {"data", "fill", "len", "hex"}),
    "check": (set(), set()),
    "memfd_create": ({"name"}, {"flags"}),
    "close": ({"fd"}, set()),
    "ftruncate": ({"fd", "len"}, set()),
    "fallocate": ({"fd", "mode", "off", "len"}, set()),
    "pread": ({"fd", "off", "len"}, set()),
    "pwrite": ({"fd", "off"}, {"data", "fill", "len", "hex"}),
    "userfaultfd": ({"name"}, {"flags"}),
    "uffd_api": ({"uffd"}, {"features"}),
    "uffd_register": ({"uffd", "at", "pages", "mode"}, set()),
    "uffd_unregister": ({"uffd", "at", "pages"}, set()),
    "uffd_copy": ({"uffd", "at", "pages"}, {"fill", "data", "mode", "src"}),
    "uffd_zeropage": ({"uffd", "at", "pages"}, {"mode"}),
    "uffd_continue": ({"uffd", "at", "pages"}, {"mode"}),
    "uffd_poison": ({"uffd", "at", "pages"}, {"mode"}),
    "uffd_move": ({"uffd", "at", "src", "pages"}, {"mode"}),
    "uffd_serve": ({"uffd"}, {"missing", "fill"}),
    "uffd_served": ({"uffd"}, set()),
    "uffd_writeprotect": ({"uffd", "at", "pages", "mode"}, set()),
    "uffd_wake": ({"uffd", "at", "pages"}, set()),
    "uffd_read": ({"uffd"}, {"max"}),
    "uffd_close": ({"uffd"}, set()),
    "resume": (set(), set()),
}
BYTE_OPS = {"read", "write", "proc_mem_read", "proc_mem_write"}
PIPE_OPS = {"pipe_read", "pipe_close"}
PIN_OPS = {"pin_read", "pin_write", "pin_release"}
# Which constant prefix each symbolic-flag argument takes.
FLAG_ARGS = {"prot": "PROT_", "flags": "MAP_", "advice": "MADV_", "gup_flags": "FOLL_",
             "mode": "FALLOC_FL_", "features": "UFFD_FEATURE_"}
# The prefix of "flags" for ops other than mmap.
OP_FLAG_PREFIX = {"memfd_create": "MFD_", "userfaultfd": ("O_", "UFFD_USER_MODE_ONLY"),
                  "mremap": "MREMAP_"}
# The prefix of "mode" for ops other than fallocate.
OP_MODE_PREFIX = {"uffd_register": "UFFDIO_REGISTER_MODE_", "uffd_copy": "UFFDIO_COPY_MODE_",
                  "uffd_zeropage": "UFFDIO_ZEROPAGE_MODE_",
                  "uffd_writeprotect": "UFFDIO_WRITEPROTECT_MODE_",
                  "uffd_continue": "UFFDIO_CONTINUE_MODE_", "uffd_poison": "UFFDIO_POISON_MODE_",
                  "uffd_move": "UFFDIO_MOVE_MODE_"}
# userfaultfd ops run in the process that made the context (it binds to
# that mm); "uffd" names it, "at" is in that process.
UFFD_OPS = {"uffd_api", "uffd_register", "uffd_unregister", "uffd_copy", "uffd_zeropage",
            "uffd_writeprotect", "uffd_wake", "uffd_read", "uffd_close", "uffd_continue",
            "uffd_poison", "uffd_move", "uffd_serve", "uffd_served"}
# Ops that may wake a thread waiting on the context.
UFFD_WAKING = {"uffd_copy", "uffd_zeropage", "uffd_writeprotect", "uffd_wake", "uffd_unregister",
               "uffd_close", "uffd_continue", "uffd_poison", "uffd_move", "uffd_serve"}
UFFD_EVENTS = {C.UFFD_EVENT_PAGEFAULT: "PAGEFAULT", C.UFFD_EVENT_FORK: "FORK", C.UFFD_EVENT_REMAP: "REMAP",
               C.UFFD_EVENT_REMOVE: "REMOVE", C.UFFD_EVENT_UNMAP: "UNMAP"}
FILE_OPS = {"close", "ftruncate", "fallocate", "pread", "pwrite"}
MAX_BYTES = 1 << 24
# Where run() places regions mapped without an address: top-down and
# adjacent from here (neighbours merge, as in a fresh process), by hint, on
# every machine alike. Identical addresses make what depends on alignment
# compare too: the fault-around window (fault_around_bytes, aligned) and
# page-table boundaries. 48 TiB: 2 MiB aligned, free in a fresh engine mm and
# inside a HostMachine's program range (far below the server's runtime).
PLACEMENT_TOP = 0x3000_0000_0000


class ProgramError(ValueError):
    """The program itself is wrong; `step` is the path of the offending step
    ("3", or "2.1" for the second step of the body of step 2)."""

    def __init__(self, step: str, message: str) -> None:
        self.step = step
        super().__init__(f"step {step}: {message}")


class PlacementError(ProgramError):
    """mmap(addr=0) put a new region over the span of a region the same
    process still names: what the program touches then depends on where the
    kernel places mappings, which host and engine do differently."""


# --- symbolic constants ----------------------------------------------------------

def parse_flags(value: int | str | list[int | str], prefix: str, where: str = "?") -> int:
    """'PROT_READ|PROT_WRITE' (or an int, or a list of names) -> int."""
    if isinstance(value, bool):
        raise ProgramError(where, f"flag value {value!r} is not a {prefix}* expression")
    if isinstance(value, int):
        return value
    names = value if isinstance(value, list) else str(value).replace(" ", "").split("|")
    out = 0
    for name in names:
        if isinstance(name, int) and not isinstance(name, bool):
            out |= name
            continue
        value = _constant(name) if isinstance(name, str) else None
        if value is None or not name.startswith(prefix):
            raise ProgramError(where, f"unknown {prefix}* constant {name!r}")
        out |= value
    return out


def _constant(name):
    """mmemu.constants, then the userfaultfd UAPI of mmemu.uffd."""
    if hasattr(C, name):
        return getattr(C, name)
    if name.startswith(("UFFD", "O_")):
        from . import uffd as U
        v = getattr(U, name, None)
        return v if isinstance(v, int) else None
    return None


def format_flags(value: int | str, prefix: str) -> str:
    """int -> 'PROT_READ|PROT_WRITE' using mmemu.constants (exact values for
    MADV_*, which are not bit sets)."""
    if isinstance(value, str):
        return value
    names = sorted((n for n in dir(C) if n.startswith(prefix)), key=lambda n: getattr(C, n))
    if prefix == "MADV_":
        exact = [n for n in names if getattr(C, n) == value]
        return exact[0] if exact else str(value)
    if value == 0:
        zero = [n for n in names if getattr(C, n) == 0]
        return zero[0] if zero else "0"
    out, left = [], value
    skip = {"MAP_TYPE", "MAP_ANON", "MAP_SHARED_VALIDATE", "PROT_GROWSDOWN", "PROT_GROWSUP"}
    for n in names:
        bit = getattr(C, n)
        if n in skip or bit <= 0 or bit & (bit - 1):
            continue
        if left & bit:
            out.append(n)
            left &= ~bit
    if left:
        out.append(hex(left))
    return "|".join(out)


def step_data(step: Step, where: str) -> bytes:
    """The bytes a write-like step carries: data (text, UTF-8), hex, or fill+len."""
    kinds = [k for k in ("data", "hex", "fill") if k in step]
    if len(kinds) != 1:
        raise ProgramError(where, "give exactly one of data, hex, fill (+len)")
    kind = kinds[0]
    if kind != "fill" and "len" in step:
        raise ProgramError(where, "len goes with fill only")
    try:
        if kind == "data":
            if not isinstance(step["data"], str):
                raise TypeError("data must be a string")
            out = step["data"].encode()
        elif kind == "hex":
            out = bytes.fromhex(step["hex"])
        else:
            fill, n = step["fill"], step.get("len")
            if not (isinstance(fill, int) and 0 <= fill < 256) or not _is_count(n):
                raise TypeError("fill needs a byte value and len a count")
            out = bytes([fill]) * n
    except (TypeError, ValueError) as e:
        raise ProgramError(where, f"bad data: {e}") from None
    if len(out) > MAX_BYTES:
        raise ProgramError(where, f"{len(out)} bytes is more than {MAX_BYTES}")
    return out


def _is_count(n):
    return isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= MAX_BYTES


def _is_offset(n):
    return isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 1 << 62


def steps_of(program: Program) -> list[Step]:
    if isinstance(program, dict):
        program = program.get("steps")
    if not isinstance(program, list):
        raise ProgramError("-", "a program is a list of steps (or {'steps': [...]})")
    return program


# --- static checking ---------------------------------------------------------------

class _Region:
    __slots__ = ("name", "pages", "parent", "first_page", "defined_at")

    def __init__(self, name, pages, parent, first_page, defined_at):
        self.name, self.pages = name, pages
        self.parent, self.first_page = parent, first_page   # for MAP_FIXED sub-regions
        self.defined_at = defined_at


class _Proc:
    __slots__ = ("name", "regions", "fds", "alive", "exited_at")

    def __init__(self, name, regions, fds=()):
        self.name, self.regions, self.alive, self.exited_at = name, regions, True, None
        self.fds = set(fds)     # file names open in this process


class _Checker:
    """Walks the program in execution order with what it names: regions
    and who holds them, processes and whether they live, pipes and pins
    and who made them. The program is straight-line, so this is exact."""

    def __init__(self):
        self.regions = {}
        self.procs = {"main": _Proc("main", [])}
        self.order = ["main"]
        self.pipes = {}   # name -> (owner, closed?)
        self.pins = {}
        self.files = {}   # name -> step that created it
        self.uffds = {}   # name -> [owner, closed?]
        self.forks = 0

    def walk(self, steps, proc, prefix=""):
        if not isinstance(steps, list):
            raise ProgramError(prefix.rstrip(".") or "-", "steps must be a list")
        for i, step in enumerate(steps):
            self.step(step, proc, f"{prefix}{i}")

    def proc_of(self, step, default, where):
        name = step.get("proc", default)
        if name not in self.procs:
            raise ProgramError(where, f"no process named {name!r}")
        p = self.procs[name]
        if not p.alive:
            raise ProgramError(where, f"process {name!r} exited at step {p.exited_at}")
        return p

    def step(self, step, default_proc, where):
        if not isinstance(step, dict) or "op" not in step:
            raise ProgramError(where, f"a step is a dict with an 'op', not {step!r}")
        op = step["op"]
        if op not in OPS:
            raise ProgramError(where, f"unknown op {op!r} (known: {', '.join(sorted(OPS))})")
        required, optional = OPS[op]
        allowed = required | optional | {"op", "proc", "comment"}
        extra = set(step) - allowed
        if extra:
            raise ProgramError(where, f"{op} takes no {', '.join(sorted(extra))}")
        missing = required - set(step)
        if missing:
            raise ProgramError(where, f"{op} needs {', '.join(sorted(missing))}")
        for arg, prefix in FLAG_ARGS.items():
            if arg in step:
                if arg == "flags":
                    prefix = OP_FLAG_PREFIX.get(op, prefix)
                elif arg == "mode":
                    prefix = OP_MODE_PREFIX.get(op, prefix)
                parse_flags(step[arg], prefix, where)
        if "off" in step and not _is_offset(step["off"]):
            raise ProgramError(where, f"off must be a byte offset, not {step['off']!r}")
        if "pages" in step and not _is_count(step["pages"]):
            raise ProgramError(where, f"pages must be a count, not {step['pages']!r}")
        if "len" in step and not _is_count(step["len"]):
            raise ProgramError(where, f"len must be a count, not {step['len']!r}")
        if op in PIPE_OPS or op in PIN_OPS:
            if "proc" in step:
                raise ProgramError(where, f"{op} runs in the process that holds the "
                                          f"{'pipe' if op in PIPE_OPS else 'pin'}; no proc")
            return self.handle(op, step, None, where)
        if op in UFFD_OPS:
            if "proc" in step:
                raise ProgramError(where, f"{op} runs in the process that made the "
                                          "userfaultfd; no proc")
            name = step["uffd"]
            if not isinstance(name, str) or name not in self.uffds:
                raise ProgramError(where, f"no userfaultfd named {name!r}")
            owner, gone = self.uffds[name]
            if gone:
                raise ProgramError(where, f"userfaultfd {name!r} was closed (or its process "
                                          f"{owner!r} exited)")
            if op == "uffd_close":
                self.uffds[name][1] = True
            return self.handle(op, step, self.procs[owner], where)
        proc = self.proc_of(step, default_proc, where)
        return self.handle(op, step, proc, where)

    def region(self, proc, name, where):
        if name not in self.regions:
            raise ProgramError(where, f"no region named {name!r}")
        if name not in proc.regions:
            raise ProgramError(where, f"region {name!r} is not in the address space of "
                                      f"process {proc.name!r} (mapped at step "
                                      f"{self.regions[name].defined_at} by another process)")
        return self.regions[name]

    def fd(self, step, proc, where):
        name = step["fd"]
        if not isinstance(name, str) or name not in self.files:
            raise ProgramError(where, f"no file named {name!r}")
        if name not in proc.fds:
            raise ProgramError(where, f"file {name!r} is not open in process {proc.name!r} "
                                      f"(closed there, or opened by another process after "
                                      f"it forked)")
        return name

    def at(self, step, proc, where, pages=None, nbytes=None, byte_ok=False, key="at"):
        at = step[key]
        if not (isinstance(at, list) and len(at) in (2, 3) and isinstance(at[0], str)
                and all(isinstance(x, int) and not isinstance(x, bool) for x in at[1:])):
            raise ProgramError(where, f"an address is [region, page] or [region, page, "
                                      f"byte], not {at!r}")
        reg = self.region(proc, at[0], where)
        page, byte = at[1], (at[2] if len(at) == 3 else 0)
        if byte and not byte_ok:
            raise ProgramError(where, f"{step['op']} needs a page-aligned address; "
                                      f"{at!r} is misaligned")
        if not 0 <= byte < C.PAGE_SIZE:
            raise ProgramError(where, f"byte offset {byte} is not within a page")
        start = page * C.PAGE_SIZE + byte
        end = start + (pages * C.PAGE_SIZE if pages is not None else (nbytes or 0))
        if page < 0 or end > reg.pages * C.PAGE_SIZE or start > reg.pages * C.PAGE_SIZE \
                or (pages is None and start == reg.pages * C.PAGE_SIZE):
            raise ProgramError(where, f"{at!r} + {end - start} bytes runs outside region "
                                      f"{reg.name!r} ({reg.pages} pages)")
        return reg, page

    def handle(self, op, step, proc, where):
        if op == "mmap":
            flags = parse_flags(step["flags"], "MAP_", where)
            fixed = flags & (C.MAP_FIXED | C.MAP_FIXED_NOREPLACE)
            name = step.get("name")
            if name is not None and (not isinstance(name, str) or name in self.regions):
                raise ProgramError(where, f"region name {name!r} is not new")
            if "addr" in step:
                if not fixed:
                    raise ProgramError(where, "an addr without MAP_FIXED or "
                                              "MAP_FIXED_NOREPLACE is a placement hint, "
                                              "which host and engine follow differently")
                parent, page = self.at(step, proc, where, pages=step["pages"], key="addr")
            else:
                if fixed:
                    raise ProgramError(where, "MAP_FIXED needs an addr")
                if name is None:
                    raise ProgramError(where, "mmap without addr must name its region")
                parent, page = None, 0
            if "align" in step and ("addr" in step or not _is_count(step["align"]) or not step["align"]
                                    or step["align"] & (step["align"] - 1)):
                raise ProgramError(where, "align (pages, a power of two) places a region without addr")
            if "fd" in step:
                if flags & C.MAP_ANONYMOUS:
                    raise ProgramError(where, "a file mapping cannot be MAP_ANONYMOUS")
                self.fd(step, proc, where)
            elif "off" in step:
                raise ProgramError(where, "off goes with fd")
            if name is not None:
                self.regions[name] = _Region(name, step["pages"], parent and parent.name,
                                             page, where)
                proc.regions.append(name)
        elif op == "mremap":
            self.at(step, proc, where, pages=step["pages"])
            if not _is_count(step["new_pages"]) or not step["new_pages"]:
                raise ProgramError(where, "new_pages must be a positive count")
            if "to" in step:
                self.at(step, proc, where, pages=step["new_pages"], key="to")
        elif op in ("munmap", "mprotect", "madvise", "vmsplice", "get_user_pages",
                    "pin_user_pages"):
            self.at(step, proc, where, pages=step["pages"])
            if op in ("vmsplice", "get_user_pages", "pin_user_pages"):
                table = self.pipes if op == "vmsplice" else self.pins
                name = step["name"]
                if not isinstance(name, str) or name in self.pipes or name in self.pins:
                    raise ProgramError(where, f"name {name!r} is not new")
                table[name] = [proc.name, False]
        elif op in ("read", "proc_mem_read"):
            self.at(step, proc, where, nbytes=step["len"], byte_ok=True)
        elif op in ("write", "proc_mem_write"):
            self.at(step, proc, where, nbytes=len(step_data(step, where)), byte_ok=True)
        elif op == "pagemap":
            self.at(step, proc, where, pages=step.get("pages", 1))
        elif op == "frame":
            self.at(step, proc, where, pages=1)
        elif op == "fork":
            self.forks += 1
            name = step.get("name", f"{proc.name}.{self.forks}")
            if not isinstance(name, str) or name in self.procs:
                raise ProgramError(where, f"process name {name!r} is not new")
            self.procs[name] = _Proc(name, list(proc.regions), proc.fds)
            self.order.append(name)
            if "body" in step:
                self.walk(step["body"], name, f"{where}.")
        elif op == "exit":
            proc.alive = False
            proc.exited_at = where
            for table in (self.pipes, self.pins, self.uffds):
                for entry in table.values():
                    if entry[0] == proc.name:
                        entry[1] = True
        elif op in PIPE_OPS or op in PIN_OPS:
            key, table = ("pipe", self.pipes) if op in PIPE_OPS else ("pin", self.pins)
            name = step[key]
            if name not in table:
                raise ProgramError(where, f"no {key} named {name!r}")
            owner, gone = table[name]
            if gone:
                raise ProgramError(where, f"{key} {name!r} was already closed or released "
                                          f"(or its process {owner!r} exited)")
            if op in ("pipe_close", "pin_release"):
                table[name][1] = True
            if op == "pin_write":
                step_data(step, where)
            if op in ("pin_read", "pin_write") and not _is_count(step["off"]):
                raise ProgramError(where, f"off must be a count, not {step['off']!r}")
        elif op == "clear_refs":
            if not isinstance(step["value"], int) or isinstance(step["value"], bool):
                raise ProgramError(where, "clear_refs takes an int value")
        elif op == "memfd_create":
            name = step["name"]
            if not isinstance(name, str) or not name or name in self.files:
                raise ProgramError(where, f"file name {name!r} is not new")
            self.files[name] = where
            proc.fds.add(name)
        elif op in FILE_OPS:
            name = self.fd(step, proc, where)
            if op == "pwrite":
                step_data(step, where)
            elif op == "close":
                proc.fds.discard(name)
        elif op == "userfaultfd":
            name = step["name"]
            if not isinstance(name, str) or not name or name in self.uffds:
                raise ProgramError(where, f"userfaultfd name {name!r} is not new")
            self.uffds[name] = [proc.name, False]
        elif op == "uffd_serve":
            if step.get("missing", "zeropage") not in ("zeropage", "copy"):
                raise ProgramError(where, "missing must be \"zeropage\" or \"copy\"")
            fill = step.get("fill", 0)
            if not (isinstance(fill, int) and not isinstance(fill, bool) and 0 <= fill < 256):
                raise ProgramError(where, "fill must be a byte value")
        elif op in UFFD_OPS and "at" in step:
            self.at(step, proc, where, pages=step["pages"])
            if "src" in step:
                self.at(step, proc, where, pages=step["pages"], key="src")
            if op == "uffd_copy":
                fill, data = step.get("fill", 0), step.get("data", "")
                if not (isinstance(fill, int) and not isinstance(fill, bool) and 0 <= fill < 256):
                    raise ProgramError(where, "fill must be a byte value")
                if not isinstance(data, str) or len(data.encode()) > step["pages"] * C.PAGE_SIZE:
                    raise ProgramError(where, "data must be text within the pages")
        elif op == "uffd_read" and "max" in step:
            if not _is_count(step["max"]) or not step["max"]:
                raise ProgramError(where, "max must be a positive count")


def check(program: Program) -> list[str]:
    """Raise ProgramError for the first malformed step; return the names of
    the processes in creation order."""
    ch = _Checker()
    ch.walk(steps_of(program), "main")
    return ch.order


# --- running ----------------------------------------------------------------------

def _errno_name(e):
    return _errno.errorcode.get(e, str(e))


def _entry(e):
    """A pagemap entry object, or a raw 64-bit value (pagemap_range) decoded."""
    if hasattr(e, "present"):
        return e
    from .pageinfo import PagemapEntry
    return PagemapEntry(int(e))


def _rle(states: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs of equal non-present page states as one state with "n"."""
    out: list[dict[str, Any]] = []
    for st in states:
        if out and "pfn" not in st and {k: v for k, v in out[-1].items() if k != "n"} == st:
            out[-1]["n"] = out[-1].get("n", 1) + 1
        else:
            out.append(dict(st))
    return out


def expand_pages(states: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A region's states one per page (runs expanded): for small regions."""
    out = []
    for st in states:
        one = {k: v for k, v in st.items() if k != "n"}
        out.extend(dict(one) for _ in range(st.get("n", 1)))
    return out


def snapshot_pages(states: list[dict[str, Any]]) -> int:
    """How many pages a region's (run-length encoded) states cover."""
    return sum(st.get("n", 1) for st in states)


def pagemap_entries(proc: Any, addr: int, npages: int) -> list[Any]:
    if hasattr(proc, "pagemap_range"):
        return [_entry(e) for e in proc.pagemap_range(addr, npages)]
    return [_entry(proc.pagemap(addr + i * C.PAGE_SIZE)) for i in range(npages)]


def pagemap_fields(entry: Any) -> dict[str, Any]:
    """An engine or host pagemap entry (or raw value) -> plain dict (pfn still raw)."""
    entry = _entry(entry)
    out = {k: bool(getattr(entry, k)) for k in
           ("present", "swapped", "file_shared", "exclusive", "soft_dirty", "uffd_wp")}
    raw = getattr(entry, "raw", None)
    out["pfn"] = entry.pfn if out["present"] else None
    out["guard"] = bool(raw & C.PM_GUARD_REGION) if raw is not None else None
    if out["swapped"] and raw is not None:
        # Swap type 31 is a PTE marker (uffd-wp, guard), 30 in 5.19-6.1 while
        # SWP_SWAPIN_ERROR sat above it: its offset means something. A real
        # swap slot's offset does not.
        swp_type = raw & 0x1F
        out["swap"] = [swp_type, (raw & C.PM_PFRAME_MASK) >> 5 if swp_type >= 30 else None]
    return out


def frame_fields(machine: Machine | HostMachine, pfn: int) -> dict[str, Any]:
    try:
        info = machine.frame(pfn)
    except Exception as e:   # the engine may not model it; the host may lack privilege
        return {"pfn": pfn, "error": f"{type(e).__name__}: {e}"}
    # Only what /proc/kpageflags shows: both machines' FrameInfo name it alike.
    names = sorted(n for n, b in KPF_NAMES.items() if info.kpageflags >> b & 1)
    return {"pfn": pfn, "kpagecount": info.kpagecount, "kpf": names}


class _Run:
    def __init__(self, machine, snapshots):
        self.m = machine
        self.snapshots = snapshots
        self.procs = {}        # name -> Process
        self.order = []        # creation order
        self.owned = {}        # proc name -> [region names], as in _Checker
        self.base = {}         # region name -> address, or None if its mmap failed
        self.spans = {}        # region name -> (start, end)
        self.top = []          # regions created without addr: the snapshot spans
        self.pipes = {}        # name -> (object, owner name)
        self.pins = {}
        self.fds = {}          # proc name -> {file name: descriptor, or None if never made}
        self.uffds = {}        # name -> (Uffd object or None, owner name)
        self.resolvers = {}    # uffd name -> the Resolver serving it
        self.blocked = {}      # proc name -> ("blocked", None) or ("done", outcome)
        self.next_top = PLACEMENT_TOP
        self.obs = []
        self.forks = 0
        self.hugetlb = False   # the program maps hugetlb memory: snapshots show the pool too

    # --- addresses ---

    def addr(self, step, key="at"):
        at = step[key]
        base = self.base[at[0]]
        if base is None:
            return None
        return base + at[1] * C.PAGE_SIZE + (at[2] if len(at) == 3 else 0)

    def symbolic(self, proc_name, addr):
        """A real address -> [region, page, byte] in that process's names
        (regions mmapped without addr first, then MAP_FIXED sub-regions)."""
        names = sorted(self.owned.get(proc_name, ()), key=lambda n: n not in self.top)
        for name in names:
            span = self.spans.get(name)
            if span and span[0] <= addr < span[1]:
                off = addr - span[0]
                return [name, off // C.PAGE_SIZE, off % C.PAGE_SIZE]
        return hex(addr)

    # --- execution ---

    def walk(self, steps, default, prefix=""):
        for i, step in enumerate(steps):
            self.step(step, default, f"{prefix}{i}")

    def step(self, step, default, where):
        op = step["op"]
        if op == "vmsplice":       # known (as failed) even if the step is skipped
            self.pipes[step["name"]] = (None, step.get("proc", default))
        elif op in ("get_user_pages", "pin_user_pages"):
            self.pins[step["name"]] = (None, step.get("proc", default))
        elif op == "userfaultfd":
            self.uffds[step["name"]] = (None, step.get("proc", default))
        if op in PIPE_OPS:
            obj, owner = self.pipes[step["pipe"]]
        elif op in PIN_OPS:
            obj, owner = self.pins[step["pin"]]
        elif op in UFFD_OPS:
            obj, owner = self.uffds[step["uffd"]]
        else:
            obj, owner = None, step.get("proc", default)
        rec = {"step": where, "proc": owner, "op": op}
        self.obs.append(rec)
        proc = self.procs.get(owner)
        if proc is None:
            rec["outcome"] = {"skipped": f"process {owner!r} was never created"}
        elif obj is None and op in PIPE_OPS | PIN_OPS:
            rec["outcome"] = {"skipped": "its vmsplice/pin failed"}
        elif obj is None and op in UFFD_OPS:
            rec["outcome"] = {"skipped": "its userfaultfd failed"}
        elif op == "resume" and self.blocked.get(owner, ("",))[0] == "done":
            rec["outcome"] = self.blocked.pop(owner)[1]
        else:
            rec["outcome"] = self.execute(op, step, proc, owner, obj, where)
            if "blocked" in rec["outcome"] and op != "resume" or \
                    op == "resume" and owner in self.blocked:
                self.blocked[owner] = ("blocked", None) if "blocked" in rec["outcome"] else \
                    None
                if self.blocked[owner] is None:
                    del self.blocked[owner]
            if op in UFFD_WAKING and self.blocked.get(owner, ("",))[0] == "blocked":
                self.settle(proc, owner, where)
        self.take_snapshot(rec)
        if op == "fork" and "body" in step and "child" in rec:
            self.walk(step["body"], rec["child"], f"{where}.")

    def execute(self, op, step, proc, owner, obj, where):
        from .host.machine import HostError, Unsupported
        if "fd" in step and self.fds[owner].get(step["fd"]) is None:
            return {"skipped": f"file {step['fd']!r} was never created"}
        needs_addr = "at" in step or (op == "mmap" and "addr" in step)
        a = None
        if needs_addr:
            a = self.addr(step, "addr" if op == "mmap" else "at")
            if a is None:
                key = step["addr" if op == "mmap" else "at"][0]
                return {"skipped": f"region {key!r} was never mapped"}
        try:
            return self._execute(op, step, proc, owner, obj, where, a)
        except (ProgramError, HostError, Unsupported):
            raise
        except OSError as e:
            out = {"errno": _errno_name(e.errno)}
            if getattr(e, "result", None) is not None:
                out["result"] = e.result          # a uffd ioctl's output field
            return out
        except WouldBlock as e:
            # The access sleeps in a userfault; a later "resume" completes it.
            # A served context's message went to its service thread: none here.
            # So does an event's (the host cannot show it without reading it).
            served = getattr(e.uffd, "handler", None) is not None
            hidden = served or (e.msg is not None and e.msg.event != C.UFFD_EVENT_PAGEFAULT)
            return {"blocked": None if hidden else self.msg_fields(owner, e.msg)}
        except Deadlock:
            # A served fault its handler left unresolved: on Linux the thread
            # just sleeps on (its message went to the service thread); the
            # engine names it. Either way the thread is blocked.
            return {"blocked": None}
        except EmulatedSignal as e:
            return {"signal": "SIGBUS" if isinstance(e, Sigbus) else "SIGSEGV",
                    "si_code": e.si_code, "addr": self.symbolic(owner, e.addr)}
        except Exception as e:   # an engine bug or gap is an observation, not a crash
            return {"error": type(e).__name__, "detail": str(e)}

    def _execute(self, op, step, proc, owner, obj, where, a):
        m = self.m
        pages = step.get("pages")
        if op == "mmap":
            flags = parse_flags(step["flags"], "MAP_")
            prot = parse_flags(step["prot"], "PROT_")
            name = step.get("name")
            if name is not None:
                self.base[name] = None
                self.owned[owner].append(name)
            fd = self.fds[owner][step["fd"]] if "fd" in step else -1
            hint = 0
            if a is None:
                # The runner places regions itself, the same on every machine
                # (see PLACEMENT_TOP): a hint, honoured where the range is free.
                hint = self.next_top - pages * C.PAGE_SIZE
                if "align" in step:             # a THP region: 2 MiB aligned on both machines
                    hint &= ~(step["align"] * C.PAGE_SIZE - 1)
            got = proc.mmap(a or hint, pages * C.PAGE_SIZE, prot, flags, fd, step.get("off", 0))
            if a is None:
                if got != hint:
                    raise PlacementError(where, f"the machine placed {name!r} at {got:#x}, not "
                                                f"at the layout's {hint:#x}")
                self.next_top = hint
            if name is not None:
                if a is None:
                    self.check_placement(owner, name, got, pages, where)
                    self.top.append(name)
                self.base[name] = got
                self.spans[name] = (got, got + pages * C.PAGE_SIZE)
            return {"ok": name}
        if op == "munmap":
            proc.munmap(a, pages * C.PAGE_SIZE)
        elif op == "mremap":
            # "to" (a region's page): MREMAP_MAYMOVE|MREMAP_FIXED there, so both
            # machines place it alike; else MAYMOVE unless "flags" says.
            to = self.addr(step, "to") if "to" in step else 0
            if "to" in step and to is None:
                return {"skipped": f"region {step['to'][0]!r} was never mapped"}
            flags = parse_flags(step["flags"], "MREMAP_") if "flags" in step else \
                (C.MREMAP_MAYMOVE | (C.MREMAP_FIXED if to else 0))
            got = proc.mremap(a, pages * C.PAGE_SIZE, step["new_pages"] * C.PAGE_SIZE, flags, to)
            return {"addr": self.symbolic(owner, got)}
        elif op == "mprotect":
            proc.mprotect(a, pages * C.PAGE_SIZE, parse_flags(step["prot"], "PROT_"))
        elif op == "madvise":
            proc.madvise(a, pages * C.PAGE_SIZE, parse_flags(step["advice"], "MADV_"))
        elif op == "read":
            return {"data": proc.read(a, step["len"]).hex()}
        elif op == "write":
            proc.write(a, step_data(step, where))
        elif op == "proc_mem_read":
            return {"data": proc.proc_mem_read(a, step["len"]).hex()}
        elif op == "proc_mem_write":
            n = proc.proc_mem_write(a, step_data(step, where))
            return {"count": n} if isinstance(n, int) else {"ok": None}
        elif op == "fork":
            self.forks += 1
            name = step.get("name", f"{owner}.{self.forks}")
            child = proc.fork()
            self.procs[name] = child
            self.order.append(name)
            self.owned[name] = list(self.owned[owner])
            self.fds[name] = dict(self.fds[owner])     # the fd table is duplicated
            self.obs[-1]["child"] = name
            return {"ok": name}
        elif op == "exit":
            # A process's pipes and pins go with it: exit closes its files
            # (exit_files), and the last close of a pipe or an io_uring drops
            # the references. Done here so that no machine's exit() has to
            # guess which of the caller's objects belonged to the process.
            for k, (o, who) in list(self.uffds.items()):
                if who == owner:
                    self.uffds[k] = (None, who)     # exit releases the context
            for table, drop in ((self.pipes, "close"), (self.pins, "release")):
                for k, (o, who) in list(table.items()):
                    if who == owner:
                        if o is not None:
                            getattr(o, drop)()
                        table[k] = (None, who)
            proc.exit()
            del self.procs[owner]
        elif op == "pagemap":
            entries = pagemap_entries(proc, a, step.get("pages", 1))
            return {"pagemap": [pagemap_fields(e) for e in entries]}
        elif op == "frame":
            e = _entry(proc.pagemap(a))
            return {"frame": frame_fields(m, e.pfn) if e.present else None}
        elif op == "vmsplice":
            self.pipes[step["name"]] = (proc.vmsplice(a, pages * C.PAGE_SIZE), owner)
        elif op in ("get_user_pages", "pin_user_pages"):
            call = getattr(proc, op)
            self.pins[step["name"]] = (call(a, pages, parse_flags(step["gup_flags"], "FOLL_")),
                                       owner)
        elif op == "pipe_read":
            return {"data": obj.read(step["len"]).hex()}
        elif op == "pipe_close":
            obj.close()
            self.pipes[step["pipe"]] = (None, owner)
        elif op == "pin_read":
            return {"data": obj.read(step["off"], step["len"]).hex()}
        elif op == "pin_write":
            obj.write(step["off"], step_data(step, where))
        elif op == "pin_release":
            obj.release()
            self.pins[step["pin"]] = (None, owner)
        elif op == "clear_refs":
            proc.clear_refs(step["value"])
        elif op == "check":
            m.check()
        elif op == "memfd_create":
            self.fds[owner][step["name"]] = None
            fd = proc.memfd_create(step["name"],
                                   parse_flags(step.get("flags", 0), "MFD_"))
            self.fds[owner][step["name"]] = fd
            return {"ok": step["name"]}
        elif op in FILE_OPS:
            fd = self.fds[owner][step["fd"]]
            if op == "close":
                del self.fds[owner][step["fd"]]
                proc.close(fd)
            elif op == "ftruncate":
                proc.ftruncate(fd, step["len"])
            elif op == "fallocate":
                proc.fallocate(fd, parse_flags(step["mode"], "FALLOC_FL_"), step["off"],
                               step["len"])
            elif op == "pread":
                return {"data": proc.pread(fd, step["len"], step["off"]).hex()}
            elif op == "pwrite":
                return {"count": proc.pwrite(fd, step_data(step, where), step["off"])}
        elif op == "userfaultfd":
            flags = parse_flags(step.get("flags", 0), OP_FLAG_PREFIX[op])
            self.uffds[step["name"]] = (proc.userfaultfd(flags), owner)
            return {"ok": step["name"]}
        elif op == "resume":
            got = proc.main.resume()
            if isinstance(got, (bytes, bytearray)):
                return {"data": bytes(got).hex()}
            return {"ok": None}
        elif op in UFFD_OPS:
            return self._uffd(op, step, obj, owner, a)
        return {"ok": None}

    def settle(self, proc, owner, where):
        """A step that may wake the process's blocked access: on Linux the
        woken thread runs on at once, to completion or to its next fault.
        So it is resumed here, on every machine alike, before the snapshot;
        the program's "resume" step then reports how it ended."""
        out = self.execute("resume", {"op": "resume"}, proc, owner, None, where)
        if "blocked" not in out:
            self.blocked[owner] = ("done", out)

    def _uffd(self, op, step, u, owner, a):
        n = step.get("pages", 0) * C.PAGE_SIZE
        mode = parse_flags(step.get("mode", 0), OP_MODE_PREFIX.get(op, ""))
        if op == "uffd_api":
            return {"ok": u.api(parse_flags(step.get("features", 0), "UFFD_FEATURE_"))}
        if op == "uffd_register":
            return {"ok": u.register(a, n, mode)}
        if op == "uffd_unregister":
            u.unregister(a, n)
        elif op == "uffd_copy":
            if "src" in step:
                src = self.addr(step, "src")
                if src is None:
                    return {"skipped": f"region {step['src'][0]!r} was never mapped"}
                return {"count": u.copy(a, src, n, mode)}
            data = step.get("data", "").encode()
            src = data + bytes([step.get("fill", 0)]) * (n - len(data))
            return {"count": u.copy(a, src, n, mode)}
        elif op == "uffd_zeropage":
            return {"count": u.zeropage(a, n, mode)}
        elif op == "uffd_continue":
            return {"count": u.continue_(a, n, mode)}
        elif op == "uffd_poison":
            return {"count": u.poison(a, n, mode)}
        elif op == "uffd_move":
            src = self.addr(step, "src")
            if src is None:
                return {"skipped": f"region {step['src'][0]!r} was never mapped"}
            return {"count": u.move(a, src, n, mode)}
        elif op == "uffd_serve":
            from .uffd import Resolver
            res = Resolver(step.get("missing", "zeropage"), step.get("fill", 0))
            u.serve(res)
            self.resolvers[step["uffd"]] = res
        elif op == "uffd_served":
            res = self.resolvers.get(step["uffd"])
            got = res.take() if res is not None else []
            return {"msgs": [dict(self.msg_fields(owner, m), **({"errno": _errno_name(err)}
                                                                 if err else {}))
                             for m, err in got]}
        elif op == "uffd_writeprotect":
            u.writeprotect(a, n, mode)
        elif op == "uffd_wake":
            u.wake(a, n)
        elif op == "uffd_read":
            return {"msgs": [self.msg_fields(owner, m) for m in u.read(step.get("max"))]}
        elif op == "uffd_close":
            u.close()
            self.uffds[step["uffd"]] = (None, owner)
        return {"ok": None}

    def msg_fields(self, owner, msg):
        """A struct uffd_msg as compared: event, and for a page fault its
        flags and symbolic address."""
        if msg is None:
            return None
        out = {"event": UFFD_EVENTS.get(msg.event, msg.event)}
        if msg.event == C.UFFD_EVENT_PAGEFAULT:
            out["flags"] = msg.flags
            out["address"] = self.symbolic(owner, msg.address)
        elif msg.event == C.UFFD_EVENT_REMAP:
            out.update({"from": self.symbolic(owner, msg.from_), "to": self.symbolic(owner, msg.to),
                        "len": msg.len})
        elif msg.event in (C.UFFD_EVENT_REMOVE, C.UFFD_EVENT_UNMAP):
            out.update({"start": self.symbolic(owner, msg.start),
                        "end": self.symbolic(owner, msg.end - 1)})      # the last byte in it
        return out

    def check_placement(self, owner, name, got, pages, where):
        end = got + pages * C.PAGE_SIZE
        for other in self.owned[owner]:
            span = self.spans.get(other)
            if other != name and span and span[0] < end and got < span[1]:
                raise PlacementError(where, f"mmap placed region {name!r} over region "
                                            f"{other!r}'s span in process {owner!r}")

    # --- snapshots ---

    def take_snapshot(self, rec):
        if not self.snapshots:
            return
        if self.hugetlb:
            rec["hugetlb"] = self.hugetlb_state()
        snap = {}
        frames = {}
        for pname in self.order:
            proc = self.procs.get(pname)
            if proc is None:
                continue
            regions = [r for r in self.owned[pname] if r in self.top and self.base.get(r)]
            if not regions:
                continue
            ranges = [(self.base[r], (self.spans[r][1] - self.spans[r][0]) // C.PAGE_SIZE)
                      for r in regions]
            if hasattr(proc, "pagemap_ranges"):
                got = proc.pagemap_ranges(ranges)
            elif hasattr(proc, "pagemap_range"):
                got = [proc.pagemap_range(b, n) for b, n in ranges]
            else:
                got = [pagemap_entries(proc, b, n) for b, n in ranges]
            snap[pname] = per = {}
            for r, entries in zip(regions, got):
                per[r] = self.region_state(entries, frames)
        rec["snapshot"] = snap

    def hugetlb_state(self):
        """The hugetlb pool's counters (/sys/kernel/mm/hugepages: nr, free,
        resv, surplus per page size) and each live process's HugetlbPages."""
        pool = {str(size >> 10) + "kB": [c["nr_hugepages"], c["free_hugepages"],
                                          c["resv_hugepages"], c["surplus_hugepages"]]
                for size, c in sorted(self.m.hugepages.items())}
        usage = {name: self.procs[name].hugetlb_usage for name in self.order
                 if name in self.procs}
        return {"pool": pool, "usage": usage}

    def region_state(self, entries, frames):
        """The pages of a region: one state per present page; a run of
        non-present pages in the same state is one state with "n": its
        length (so a region of 2^24 untouched pages is one entry, and a
        snapshot costs what is populated, not what is mapped)."""
        if not isinstance(entries, np.ndarray):
            return _rle([self.page_state(e, frames) for e in entries])
        raw = entries.astype(np.uint64, copy=False)
        if not len(raw):
            return []
        present = (raw & np.uint64(C.PM_PRESENT)) != 0
        cut = np.flatnonzero((raw[1:] != raw[:-1]) | present[1:] | present[:-1]) + 1
        starts = np.r_[0, cut]
        lengths = np.diff(np.r_[starts, len(raw)])
        out = []
        for s, n in zip(starts.tolist(), lengths.tolist()):
            st = self.page_state(int(raw[s]), frames)
            if n > 1:
                st["n"] = n
            out.append(st)
        return out

    def page_state(self, entry, frames):
        f = pagemap_fields(entry)
        code = "".join(c for c, k in (("p", "present"), ("s", "swapped"), ("f", "file_shared"),
                                      ("x", "exclusive"), ("w", "uffd_wp"), ("d", "soft_dirty"),
                                      ("g", "guard")) if f.get(k))
        out = {"pm": code}
        if f["present"]:
            pfn = f["pfn"]
            if pfn not in frames:
                frames[pfn] = frame_fields(self.m, pfn)
            fr = frames[pfn]
            out["pfn"] = pfn
            out["kpagecount"] = fr.get("kpagecount")
            out["kpf"] = fr.get("kpf")
        elif f.get("swap"):
            out["swap"] = f["swap"]
        return out

    def cleanup(self):
        for name in reversed(self.order):
            proc = self.procs.pop(name, None)
            if proc is not None:
                try:
                    proc.exit()
                except Exception:
                    pass


def uses_hugetlb(steps: list[Step]) -> bool:
    """Whether a program maps hugetlb memory (MAP_HUGETLB or an MFD_HUGETLB memfd)."""
    for step in steps:
        if step["op"] == "mmap" and parse_flags(step["flags"], "MAP_") & C.MAP_HUGETLB:
            return True
        if step["op"] == "memfd_create" and parse_flags(step.get("flags", 0), "MFD_") \
                & C.MFD_HUGETLB:
            return True
        if uses_hugetlb(step.get("body", [])):
            return True
    return False


def run(program: Program, machine: Machine | HostMachine, *, snapshots: bool = True,
        cleanup: bool = True) -> list[Observation]:
    """Run program on machine; return the list of observations (one per step
    executed, fork bodies inline, in execution order).

    Each observation: {"step", "proc", "op", "outcome"[, "child"][, "snapshot"]
    [, "hugetlb"]}; "hugetlb" (programs that map hugetlb memory) holds the
    pool's counters per page size, [nr, free, resv, surplus], and each live
    process's HugetlbPages in bytes: {"pool": {"2048kB": [...]}, "usage": {proc: n}}.
    outcome is one of {"ok": value}, {"data": hex}, {"count": n},
    {"errno": "EINVAL"}, {"signal": "SIGSEGV", "si_code", "addr": [r, page, byte]},
    {"pagemap": [...]}, {"frame": {...} or None}, {"skipped": why} (a region,
    process, pipe or pin it needs failed to come into being earlier), or
    {"error": "ValueError", "detail": message} (the machine raised something no
    kernel would: a misuse both refuse, or a gap or bug of the machine).
    mmemu.host.Unsupported and HostError propagate: the run has no meaning.
    """
    steps = steps_of(program)
    check(steps)
    remote = getattr(type(machine), "run_program", None)
    if remote is not None:          # a VmMachine: the whole run happens in its guest
        return remote(machine, program, snapshots=snapshots, cleanup=cleanup)
    r = _Run(machine, snapshots)
    r.hugetlb = uses_hugetlb(steps)
    main = machine.spawn()
    r.procs["main"] = main
    r.order.append("main")
    r.owned["main"] = []
    r.fds["main"] = {}
    try:
        r.walk(steps, "main")
    finally:
        if cleanup:
            r.cleanup()
    return r.obs


# --- presentation -----------------------------------------------------------------

def _fmt_at(at):
    return f"{at[0]}+{at[1]}" + (f".{at[2]}" if len(at) == 3 and at[2] else "")


def _fmt_data(step):
    if "data" in step:
        return json.dumps(step["data"])
    if "hex" in step:
        return f"hex:{step['hex']}"
    return f"{step.get('fill', 0):#04x}*{step.get('len', 0)}"


def describe(step: Step) -> str:
    """One step as one line (without its body)."""
    op = step.get("op")
    a = lambda k: _fmt_at(step[k]) if k in step else "?"   # noqa: E731
    fl = lambda k, p: format_flags(step[k], p) if k in step else "?"   # noqa: E731
    if op == "mmap":
        where = f"at {a('addr')} " if "addr" in step else ""
        name = f"{step['name']} = " if "name" in step else ""
        file = f" {step['fd']}+{step.get('off', 0)}" if "fd" in step else ""
        return (f"mmap {name}{where}{step.get('pages')} pages {fl('prot', 'PROT_')} "
                f"{fl('flags', 'MAP_')}{file}")
    if op in ("munmap",):
        return f"munmap {a('at')} {step.get('pages')} pages"
    if op == "mremap":
        to = f" to {a('to')}" if "to" in step else ""
        flags = f" {fl('flags', 'MREMAP_')}" if "flags" in step else ""
        return f"mremap {a('at')} {step.get('pages')} -> {step.get('new_pages')} pages{to}{flags}"
    if op == "mprotect":
        return f"mprotect {a('at')} {step.get('pages')} pages {fl('prot', 'PROT_')}"
    if op == "madvise":
        return f"madvise {a('at')} {step.get('pages')} pages {fl('advice', 'MADV_')}"
    if op in ("read", "proc_mem_read"):
        return f"{op} {a('at')} len {step.get('len')}"
    if op in ("write", "proc_mem_write"):
        return f"{op} {a('at')} {_fmt_data(step)}"
    if op == "fork":
        return f"fork -> {step.get('name', '(auto)')}"
    if op == "pagemap":
        return f"pagemap {a('at')}" + (f" {step['pages']} pages" if "pages" in step else "")
    if op == "frame":
        return f"frame of {a('at')}"
    if op == "vmsplice":
        return f"{step.get('name')} = vmsplice {a('at')} {step.get('pages')} pages"
    if op in ("get_user_pages", "pin_user_pages"):
        return (f"{step.get('name')} = {op} {a('at')} {step.get('pages')} pages "
                f"{fl('gup_flags', 'FOLL_')}")
    if op == "pipe_read":
        return f"read pipe {step.get('pipe')} len {step.get('len')}"
    if op == "pipe_close":
        return f"close pipe {step.get('pipe')}"
    if op == "pin_read":
        return f"device read {step.get('pin')} +{step.get('off')} len {step.get('len')}"
    if op == "pin_write":
        return f"device write {step.get('pin')} +{step.get('off')} {_fmt_data(step)}"
    if op == "pin_release":
        return f"release {step.get('pin')}"
    if op == "clear_refs":
        return f"clear_refs {step.get('value')}"
    if op == "memfd_create":
        fl = f" {format_flags(step['flags'], 'MFD_')}" if step.get("flags") else ""
        return f"{step.get('name')} = memfd_create{fl}"
    if op == "close":
        return f"close {step.get('fd')}"
    if op == "ftruncate":
        return f"ftruncate {step.get('fd')} {step.get('len')}"
    if op == "fallocate":
        return (f"fallocate {step.get('fd')} {fl('mode', 'FALLOC_FL_') if step.get('mode') else 0}"
                f" off {step.get('off')} len {step.get('len')}")
    if op == "pread":
        return f"pread {step.get('fd')} off {step.get('off')} len {step.get('len')}"
    if op == "pwrite":
        return f"pwrite {step.get('fd')} off {step.get('off')} {_fmt_data(step)}"
    if op == "userfaultfd":
        fl = f" {step['flags']}" if step.get("flags") else ""
        return f"{step.get('name')} = userfaultfd{fl}"
    if op in UFFD_OPS:
        parts = [op, str(step.get("uffd"))]
        if "at" in step:
            parts.append(f"{a('at')} {step.get('pages')} pages")
        for k in ("features", "mode"):
            if step.get(k):
                parts.append(str(step[k]))
        if "src" in step:
            parts.append(f"from {a('src')}")
        elif op == "uffd_copy":
            parts.append(f"fill {step.get('fill', 0):#04x}"
                         + (f" data {json.dumps(step['data'])}" if step.get("data") else ""))
        if op == "uffd_serve":
            parts.append(f"{step.get('missing', 'zeropage')} fill {step.get('fill', 0):#04x}")
        if "max" in step:
            parts.append(f"max {step['max']}")
        return " ".join(parts)
    return str(op)


def pretty(program: Program, indent: int = 0, prefix: str = "", default: str = "main") -> str:
    """The program, one step a line: path, process, step."""
    lines = []
    for i, step in enumerate(steps_of(program)):
        where = f"{prefix}{i}"
        proc = step.get("proc", default)
        if step.get("op") in PIPE_OPS | PIN_OPS | UFFD_OPS:
            proc = ""
        lines.append(f"{' ' * indent}{where:<6} {proc:<6} {describe(step)}")
        if step.get("op") == "fork" and "body" in step:
            lines.append(pretty(step["body"], indent + 2, f"{where}.",
                                step.get("name", "(child)")))
    return "\n".join(line for line in lines if line)


def dumps(program: Program) -> str:
    """Compact JSON, one line (to paste back into a test)."""
    return json.dumps(steps_of(program), separators=(",", ":"))
