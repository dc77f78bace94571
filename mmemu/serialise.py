"""Host threads sharing one Machine: every public call runs under the
machine's lock, so calls from several host threads serialise.

The core releases the GIL for long page walks (read, write, touch, gup, zap,
pageout); without the lock a second host thread would run core code on the
same tables at the same time. The lock is re-entrant: a uffd handler or a
service resolver that the core calls back runs on the calling thread and may
make further calls. A handler that waits for another host thread which in
turn calls into the same machine deadlocks, as two threads would on any
non-reentrant resource: serve such work from the handler's own thread.

This is about the host's threads. The emulated threads of a Machine
(Process.thread(), blocked uffd waits) are a different thing: mmemu.sched
runs them one step at a time, and while it does every public call goes
through its scheduler (lock.sched).
"""
import _thread
import functools
import types


class MachineLock(_thread.RLock):
    """A machine's lock. Saving a machine keeps which objects share it; a
    loaded machine gets a fresh, unheld one."""

    # The mmemu.sched.Scheduler running this machine's threads, if any: a
    # slot, so the check every public call makes is one fast load.
    __slots__ = ("sched",)

    def __init__(self):
        self.sched = None

    def __reduce__(self):
        return (MachineLock, ())


def new_lock():
    return MachineLock()


def _locked(fn):
    name = fn.__name__

    @functools.wraps(fn)
    def call(self, *args, **kwargs):
        lock = self._lock
        if lock.sched is not None:       # a scheduled thread: each call is a step
            return lock.sched.call(self, name, fn, args, kwargs)
        with lock:
            return fn(self, *args, **kwargs)
    call.__mmemu_locked__ = True
    return call


def serialised(cls):
    """Class decorator: each public method and property of cls (inherited
    ones included) takes `self._lock`, the owning machine's lock."""
    for klass in cls.__mro__:
        if klass is object:
            continue
        for name, attr in vars(klass).items():
            if name.startswith("_") or name in vars(cls) and vars(cls)[name] is not attr:
                continue
            if isinstance(attr, property):
                if attr.fget is not None and not getattr(attr.fget, "__mmemu_locked__", False):
                    setattr(cls, name, property(_locked(attr.fget),
                                                _locked(attr.fset) if attr.fset else None,
                                                doc=attr.__doc__))
            elif isinstance(attr, types.FunctionType) and not getattr(attr, "__mmemu_locked__", False):
                setattr(cls, name, _locked(attr))
    return cls
