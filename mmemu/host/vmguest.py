"""The agent a VM oracle guest runs (mmemu.host.vm): the driver's calls,
executed on a real HostMachine of the guest kernel.

init (_vminit.c) starts it as `python -m mmemu.host.vmguest` once the
driver's root is mounted. It opens the virtio-serial port named "mmemu",
greets the driver with the kernel it runs, and serves requests (see
vmwire) until the driver says "quit" or goes away; init then powers the
guest off.

Requests:
  ("new", kwargs)                  a HostMachine(**kwargs), by reference
  ("call", oid, name, args, kwargs) a method of an object handed out
  ("get", oid, name) / ("set", oid, name, value)
  ("describe", oid)                the public method names of its class
  ("func", "module:name", args, kwargs)  a function of mmemu (a whole
                                   program or scenario run in one call)
  ("drop", [oid, ...])             forget objects the driver no longer holds
  ("quit",)
"""
from __future__ import annotations

import importlib
import os
import platform
import sys
import threading

from . import vmwire as W

PORT_NAME = "mmemu"


def _port():
    base = "/sys/class/virtio-ports"
    for entry in sorted(os.listdir(base)):
        try:
            with open(os.path.join(base, entry, "name")) as f:
                if f.read().strip() == PORT_NAME:
                    return os.path.join("/dev", entry)
        except OSError:
            continue
    raise W.WireError(f"no virtio-serial port named {PORT_NAME!r} in {base}")


class Agent:
    def __init__(self, fd):
        self.fd = fd
        self.table = W.Table()
        self.machines = []
        self.thread = threading.get_ident()

    # --- values ---

    def _by_ref(self, obj):
        cls = type(obj)
        if cls.__module__ == "mmemu.host.machine" and not isinstance(obj, BaseException):
            return self.table.ref(obj)
        return None

    def _resolve(self, r):
        if isinstance(r, W.Ref):
            return self.table.get(r.id)
        return self._callback(r.id)

    def _callback(self, cid):
        def call(*args, **kwargs):
            if threading.get_ident() != self.thread:
                raise W.WireError("a driver-side callback from a thread other than the "
                                  "agent's: the wire is call and return only")
            W.send(self.fd, ("callback", cid, W.encode(args, self._by_ref),
                             W.encode(kwargs, self._by_ref)))
            return self.serve(until_answer=True)
        return call

    # --- serving ---

    def serve(self, until_answer=False):
        while True:
            msg = W.recv(self.fd)
            tag = msg[0]
            if tag in ("ok", "raise"):
                if not until_answer:
                    raise W.WireError(f"an answer ({tag}) with no call outstanding")
                value = W.decode(msg[1], self._resolve)
                if tag == "raise":
                    raise value
                return value
            if tag == "quit":
                self.close()
                W.send(self.fd, ("ok", None))
                return None
            try:
                reply = ("ok", W.encode(self.handle(msg), self._by_ref))
            except _Method:
                reply = ("method", None)
            except BaseException as e:       # sent back, raised in the driver
                if isinstance(e, (KeyboardInterrupt, SystemExit)):
                    raise
                reply = ("raise", W.exception_out(e, self._by_ref))
            W.send(self.fd, reply)

    def handle(self, msg):
        tag = msg[0]
        args = W.decode(msg[1:], self._resolve)
        if tag == "new":
            from .machine import HostMachine
            m = HostMachine(**args[0])
            self.machines = [x for x in self.machines if not x.closed] + [m]
            return m
        if tag == "call":
            oid, name, a, kw = args
            if name.startswith("__"):
                raise AttributeError(name)
            return getattr(self.table.get(oid), name)(*a, **kw)
        if tag == "get":
            oid, name = args
            value = getattr(self.table.get(oid), name)
            if callable(value) and not isinstance(value, type) and not self._by_ref(value):
                raise _Method()
            return value
        if tag == "set":
            oid, name, value = args
            setattr(self.table.get(oid), name, value)
            return None
        if tag == "describe":
            obj = self.table.get(args[0])
            return sorted(n for n in dir(type(obj))
                          if not n.startswith("__")
                          and callable(getattr(type(obj), n))
                          and not isinstance(getattr(type(obj), n), property))
        if tag == "func":
            where, a, kw = args
            module, _, name = where.partition(":")
            if not module.startswith("mmemu."):
                raise ValueError(f"{where}: only mmemu's own functions run in the guest")
            fn = importlib.import_module(module)
            for part in name.split("."):
                fn = getattr(fn, part)
            return fn(*a, **kw)
        if tag == "drop":
            for oid in args[0]:
                self.table.drop(oid)
            return None
        raise W.WireError(f"unknown request {tag!r}")

    def close(self):
        for m in self.machines:
            try:
                m.close()
            except Exception:
                pass
        self.machines = []


class _Method(Exception):
    """'get' of a method: the driver calls it with 'call' instead."""


def hello():
    with open("/proc/version") as f:
        proc_version = f.read().strip()
    return ("hello", platform.release(), proc_version, os.getpid())


def main():
    fd = os.open(_port(), os.O_RDWR | os.O_CLOEXEC)
    W.send(fd, hello())
    agent = Agent(fd)
    try:
        agent.serve()
    except W.WireError as e:
        print(f"mmemu guest agent: {e}", file=sys.stderr, flush=True)
    finally:
        agent.close()


if __name__ == "__main__":
    main()
