"""The wire between the VM oracle's driver (vm.py) and its guest agent
(vmguest.py): one virtio-serial port, used strictly as call and return.

A message is an 8-byte little-endian length and a pickle. A request is a
tuple whose first item names it; the answer is ("ok", value) or ("raise",
exception). While one side waits for an answer, the other may call back
first: the guest runs a driver-side callable (a uffd service handler) with
("callback", id, args, kwargs) and the driver may make calls of its own
before it answers. Both sides therefore read in one loop that serves what
arrives until their own answer comes.

Objects that live on the other side travel as Ref(id, class name); each side
keeps a table of the objects it handed out (see Table). Exceptions travel as
their class and state, not by pickling the object (many mmemu exceptions
take constructor arguments other than their args).
"""
from __future__ import annotations

import importlib
import os
import pickle
import struct

_HEADER = struct.Struct("<Q")
MAX_MESSAGE = 1 << 30


class WireError(Exception):
    """The channel broke or carried something that is not a message."""


class Ref:
    """An object of the side that made this Ref."""
    __slots__ = ("id", "cls")

    def __init__(self, oid, cls):
        self.id, self.cls = oid, cls

    def __reduce__(self):
        return (Ref, (self.id, self.cls))

    def __repr__(self):
        return f"Ref({self.id}, {self.cls})"


class Callback:
    """A driver-side callable, as the guest sees it."""
    __slots__ = ("id",)

    def __init__(self, cid):
        self.id = cid

    def __reduce__(self):
        return (Callback, (self.id,))


class RemoteException:
    """An exception in transit: its class and state."""
    __slots__ = ("module", "name", "args", "state")

    def __init__(self, module, name, args, state):
        self.module, self.name, self.args, self.state = module, name, args, state

    def __reduce__(self):
        return (RemoteException, (self.module, self.name, self.args, self.state))


class Table:
    """The objects one side handed out by reference, by id."""

    def __init__(self):
        self.objects = {}
        self._ids = {}
        self._next = 1

    def ref(self, obj):
        key = id(obj)
        oid = self._ids.get(key)
        if oid is None or self.objects.get(oid) is not obj:
            oid = self._next
            self._next += 1
            self.objects[oid] = obj
            self._ids[key] = oid
        return Ref(oid, type(obj).__name__)

    def get(self, oid):
        try:
            return self.objects[oid]
        except KeyError:
            raise WireError(f"no object {oid} on this side (dropped or never handed out)") from None

    def drop(self, oid):
        obj = self.objects.pop(oid, None)
        if obj is not None and self._ids.get(id(obj)) == oid:
            del self._ids[id(obj)]


def encode(value, by_ref):
    """value with every object by_ref(obj) chooses replaced by what it
    returns (a Ref or Callback), through tuples, lists and dicts."""
    if isinstance(value, (type(None), bool, int, float, str, bytes)):
        return value
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(encode(v, by_ref) for v in value)
    if isinstance(value, list):
        return [encode(v, by_ref) for v in value]
    if isinstance(value, dict):
        return {k: encode(v, by_ref) for k, v in value.items()}
    if isinstance(value, BaseException):
        return exception_out(value, by_ref)
    sub = by_ref(value)
    return value if sub is None else sub


def decode(value, resolve):
    """The inverse: Refs/Callbacks turned back by resolve(), exceptions rebuilt."""
    if isinstance(value, (Ref, Callback)):
        return resolve(value)
    if isinstance(value, RemoteException):
        return exception_in(value, resolve)
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(decode(v, resolve) for v in value)
    if isinstance(value, list):
        return [decode(v, resolve) for v in value]
    if isinstance(value, dict):
        return {k: decode(v, resolve) for k, v in value.items()}
    return value


def exception_out(exc, by_ref):
    cls = type(exc)
    state = {k: encode(v, by_ref) for k, v in vars(exc).items()
             if not k.startswith("__")}
    if isinstance(exc, OSError):
        # C-level fields, set by OSError.__init__, which a subclass with an
        # __init__ of its own (UffdError) does not run at __new__.
        state.update(errno=exc.errno, strerror=exc.strerror, filename=exc.filename)
    return RemoteException(cls.__module__, cls.__qualname__, encode(exc.args, by_ref), state)


def exception_in(r, resolve):
    try:
        cls = importlib.import_module(r.module)
        for part in r.name.split("."):
            cls = getattr(cls, part)
        if not (isinstance(cls, type) and issubclass(cls, BaseException)):
            raise TypeError(r.name)
    except (ImportError, AttributeError, TypeError):
        return WireError(f"{r.module}.{r.name}: {r.args!r}")
    args = decode(r.args, resolve)
    exc = cls.__new__(cls, *args)
    exc.args = args
    for k, v in r.state.items():
        try:
            setattr(exc, k, decode(v, resolve))
        except AttributeError:          # a read-only attribute (OSError.errno...)
            pass
    return exc


def send(fd, obj):
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    buf = memoryview(_HEADER.pack(len(data)) + data)
    while buf:
        n = os.write(fd, buf)
        buf = buf[n:]


def recv(fd, wait=None):
    """One message; wait(fd) may block until fd is readable or raise (the
    driver's deadline)."""
    head = _read_exact(fd, _HEADER.size, wait)
    (n,) = _HEADER.unpack(head)
    if n > MAX_MESSAGE:
        raise WireError(f"a message of {n} bytes: the channel is out of step")
    return pickle.loads(_read_exact(fd, n, wait))


def _read_exact(fd, n, wait):
    buf = bytearray()
    while len(buf) < n:
        if wait is not None:
            wait(fd)
        chunk = os.read(fd, min(n - len(buf), 1 << 20))
        if not chunk:
            raise WireError("the other side closed the channel")
        buf += chunk
    return bytes(buf)
