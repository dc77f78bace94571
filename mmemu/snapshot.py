"""Saving and loading a whole Machine (Machine.save / Machine.load, pickle,
copy.deepcopy).

A saved machine is everything: the core's tables (frames, page-table and
byte pools with their free stacks, TLBs, LRU batches, swap, page caches,
mms and their VMA tables, uffd contexts and resolver logs: Engine.get_state)
and the Python objects around them (processes, VMAs, fds, pins, pipes, uffd
queues and waiters, blocked threads with the rest of the call they resume).

A blocked call's rest is a closure of mmemu's own code; pickle cannot carry
closures, so this module's pickler saves mmemu's nested functions by value
(their code object, marshalled, and their closure cells) and everything
else as pickle does. Marshalled code is tied to the Python version, which the
header records. User handlers are saved by reference (a function importable
by name, a Resolver); a lambda handler cannot be saved and says so.

File: a header line (magic, format version, mmemu and Python versions as
JSON), then the pickle. Written to a temporary file beside the target,
fsynced, then renamed over it: a crash mid-write leaves the old file whole.
Loading runs code from the file, as any pickle does: load only files you
trust.
"""
import hashlib
import importlib
import io
import json
import marshal
import os
import pickle
import sys
import types

from ._version import __version__
from .errors import MmemuError

MAGIC = b"MMEMU-MACHINE\n"
FORMAT = 6     # 2: threads and waiters live in mmemu.sched, userfault delivery in mmemu.uffd;
               # 3: anon_vma lives only in the core's VMA table (Vma.origin);
               # 4: emulated time (costs, clocks) and in-core pagers are saved;
               # 5: KSM's unstable tree entries are 8 bytes (core/ksm.pxi);
               # 6: the hugetlb pool changes at run time (block map, surplus pages)
_PY = f"{sys.version_info[0]}.{sys.version_info[1]}"


class SnapshotError(MmemuError, ValueError):
    """A file that is not a saved machine, or one this mmemu cannot load."""


def _make_function(code, module, name, qualname, defaults, kwdefaults, closure):
    fn = types.FunctionType(marshal.loads(code), importlib.import_module(module).__dict__, name,
                            defaults, closure)
    fn.__qualname__ = qualname
    fn.__kwdefaults__ = kwdefaults
    return fn


def _make_cell():
    return types.CellType()


def _fill_cell(cell, state):
    if state is not _EMPTY:
        cell.cell_contents = state[0]


def _set_dict(obj, state):
    obj.__dict__.update(state)


_EMPTY = ("empty cell",)


def _blank(cls):
    return cls.__new__(cls)


class _Pickler(pickle.Pickler):
    def reducer_override(self, obj):
        from .machine import Machine
        if type(obj) is Machine:
            # By state here (Machine.__reduce__ is for plain pickle and
            # comes back through this pickler).
            return (_blank, (Machine,), dict(obj.__dict__), None, None, _set_dict)
        if isinstance(obj, types.FunctionType):
            module = getattr(obj, "__module__", "") or ""
            nested = "<locals>" in obj.__qualname__ or obj.__name__ == "<lambda>"
            if not nested:
                return NotImplemented            # by reference, as pickle does
            if module != "mmemu" and not module.startswith("mmemu."):
                raise pickle.PicklingError(
                    f"cannot save {obj.__qualname__} of {module or '?'}: a nested function or "
                    "lambda outside mmemu (give uffd handlers a module-level function or a Resolver)")
            return (_make_function,
                    (marshal.dumps(obj.__code__), module, obj.__name__, obj.__qualname__,
                     obj.__defaults__, obj.__kwdefaults__, obj.__closure__),
                    obj.__dict__ or None, None, None, _set_dict)
        if isinstance(obj, types.CellType):
            try:
                state = (obj.cell_contents,)
            except ValueError:
                state = _EMPTY
            return (_make_cell, (), state, None, None, _fill_cell)
        return NotImplemented


def dumps(machine):
    """The machine as bytes (header + pickle)."""
    if machine._serving:
        raise MmemuError("a machine cannot be saved from inside a uffd handler it is running")
    buf = io.BytesIO()
    _Pickler(buf, protocol=5).dump(machine)
    payload = buf.getvalue()
    header = {"format": FORMAT, "mmemu": __version__, "python": _PY,
              "sha256": hashlib.sha256(payload).hexdigest()}
    return MAGIC + json.dumps(header).encode() + b"\n" + payload


def loads(data):
    data = bytes(data)
    if not data.startswith(MAGIC):
        raise SnapshotError("not a saved mmemu machine (bad magic)")
    nl = data.find(b"\n", len(MAGIC))
    try:
        header = json.loads(data[len(MAGIC):nl])
    except ValueError:
        raise SnapshotError("corrupt saved machine: unreadable header") from None
    if header.get("format") != FORMAT:
        raise SnapshotError(f"saved machine has format {header.get('format')}; this mmemu "
                            f"({__version__}) reads format {FORMAT}")
    if header.get("python") != _PY:
        raise SnapshotError(f"saved machine was written by Python {header.get('python')}; "
                            f"blocked calls in it can only be loaded by that Python (this is {_PY})")
    payload = data[nl + 1:]
    if hashlib.sha256(payload).hexdigest() != header.get("sha256"):
        raise SnapshotError("corrupt saved machine: checksum mismatch (truncated or damaged file)")
    try:
        machine = pickle.loads(payload)
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
        raise SnapshotError(f"corrupt saved machine: {e}") from None
    except (AttributeError, ImportError, TypeError) as e:
        # A class or function this mmemu does not have (or has another
        # shape of): the file comes from another version of the code.
        raise SnapshotError(f"saved machine was written by mmemu {header.get('mmemu')} and names "
                            f"what this mmemu ({__version__}) lacks: {e}") from None
    machine._after_load()
    return machine


def save(machine, path):
    """Write atomically: temporary file in the same directory, fsync, rename."""
    data = dumps(machine)
    path = os.fspath(path)
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:
        d = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(d)                  # the rename itself survives a crash
    finally:
        os.close(d)


def load(path):
    with open(os.fspath(path), "rb") as f:
        return loads(f.read())
