"""The host's hugetlb pool, set for a HostMachine(hugepages={size: n}).

The engine's Machine(hugepages=...) has a boot-time pool of exactly n free
pages of each size; the host's pool is /sys/kernel/mm/hugepages/
hugepages-<kB>kB/nr_hugepages, global and settable by root. A HostMachine
takes it over while it lives: the pool of each size it names must be idle
(every page free, none reserved or surplus: no other process uses it); it
is set to n, with overcommit (nr_overcommit_hugepages) 0, as the engine
makes no surplus pages; the old values come back when the last machine of
this process that holds it closes, on interpreter exit, or, for a run that
was killed, when the next run takes the pool (a record of the old values
stays in RECORD while the pool is held).

A reservation the kernel keeps while no page is in use and no process
holds the pool (resv_huge_pages leaked: seen on 6.18.44 with nothing
mapping or holding hugetlb memory) cannot be given back from user space;
such stale reservations are set aside: the pool is made that many pages
larger and HeldPool.stale is subtracted from what the machine shows, so the
pool still looks like the engine's.

Machines of one process share a held pool when they ask for the same
counts; across processes a lock file (flock) keeps one holder at a time.
Writing nr_hugepages may allocate fewer pages than asked (the buddy
allocator has no contiguous 2 MiB or 1 GiB left): that is PoolUnavailable,
never a smaller pool.
"""
import errno
import fcntl
import json
import os
import threading
import time

SYSFS = "/sys/kernel/mm/hugepages"
LOCK = "/run/lock/mmemu-hugetlb.lock"
RECORD = "/run/lock/mmemu-hugetlb.json"
LOCK_WAIT = 30.0            # seconds to wait for another process's pool to be given back
COUNTERS = ("nr_hugepages", "free_hugepages", "resv_hugepages", "surplus_hugepages", "nr_overcommit_hugepages")

_lock = threading.Lock()
_held = None                # the HeldPool of this process, or None


class PoolUnavailable(Exception):
    """The hugetlb pool cannot be set as asked; the message says why."""


def _dir(size):
    return f"{SYSFS}/hugepages-{size >> 10}kB"


def _read(size, name):
    with open(f"{_dir(size)}/{name}") as f:
        return int(f.read())


def _write(size, name, value):
    with open(f"{_dir(size)}/{name}", "w") as f:
        f.write(str(int(value)))


def sizes():
    """The hugetlb page sizes this kernel has, in bytes, ascending."""
    try:
        names = os.listdir(SYSFS)
    except OSError:
        return []
    return sorted(int(n[len("hugepages-"):-len("kB")]) << 10 for n in names
                  if n.startswith("hugepages-") and n.endswith("kB"))


def counters(size, stale=0):
    """/sys/kernel/mm/hugepages/hugepages-<kB>kB of one size, as a dict
    (nr, free, resv, surplus and overcommit); `stale` reservations set
    aside are left out of nr, free and resv."""
    c = {name: _read(size, name) for name in COUNTERS}
    for name in ("nr_hugepages", "free_hugepages"):
        c[name] -= stale
    # resv_huge_pages is an unsigned long that may have wrapped below zero
    # (the kernel's own accounting, seen as 2^64 - 1): take the stale ones
    # out modulo 2^64 too, as the kernel would print it.
    c["resv_hugepages"] = (c["resv_hugepages"] - stale) & 0xFFFFFFFFFFFFFFFF
    return c


class HeldPool:
    def __init__(self, counts, saved, lockfd):
        self.counts = dict(counts)      # size -> pages, as asked
        self.saved = saved              # size -> (nr_hugepages, nr_overcommit_hugepages)
        self.lockfd = lockfd
        self.users = 0
        self.stale = dict.fromkeys(counts, 0)   # size -> reservations nobody holds, set aside

    def __repr__(self):
        return f"<HeldPool {self.counts} (was {self.saved})>"


def _restore(saved):
    for size, (nr, over) in saved.items():
        try:
            _write(size, "nr_hugepages", nr)
            if over:
                _write(size, "nr_overcommit_hugepages", over)
        except OSError:
            pass


def _restore_stale():
    """A record left by a holder that died (it no longer holds the lock,
    which this process now does): put its old values back."""
    try:
        with open(RECORD) as f:
            rec = json.load(f)
    except (OSError, ValueError):
        return
    _restore({int(k): tuple(v) for k, v in rec.get("saved", {}).items()})
    try:
        os.unlink(RECORD)
    except OSError:
        pass


def _take_lock():
    try:
        os.makedirs(os.path.dirname(LOCK), exist_ok=True)
        fd = os.open(LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise PoolUnavailable(f"cannot open the pool's lock file {LOCK}: {e.strerror}") from None
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                os.close(fd)
                raise PoolUnavailable(f"another process holds the hugetlb pool ({LOCK}) "
                                      f"for more than {LOCK_WAIT:g} s") from None
            time.sleep(0.1)


def why_no_pool(counts):
    """Why the pool cannot be set at all (privilege, sizes), or None."""
    have = sizes()
    for size in counts:
        if size not in have:
            return (f"this kernel has no {size >> 10} kB hugetlb pages (CONFIG_HUGETLBFS off, "
                    f"or the architecture lacks the size)")
    if os.geteuid() != 0:
        return "setting nr_hugepages needs root"
    for size in counts:
        if not os.access(f"{_dir(size)}/nr_hugepages", os.W_OK):
            return f"{_dir(size)}/nr_hugepages is not writable"
    return None


def acquire(counts):
    """Hold the pool with counts {size: pages}; a HeldPool (release() it).
    PoolUnavailable with the reason when the host cannot."""
    global _held
    counts = {int(s): int(n) for s, n in counts.items()}
    reason = why_no_pool(counts)
    if reason:
        raise PoolUnavailable(reason)
    with _lock:
        if _held is not None:
            if _held.counts != counts:
                raise PoolUnavailable(f"this process already holds the hugetlb pool as "
                                      f"{_held.counts}, not {counts}")
            _held.users += 1
            return _held
        lockfd = _take_lock()
        try:
            _restore_stale()
            stale = {}
            for size in counts:
                c = counters(size)
                # With every page free, reservations are nobody's (a mapping
                # that reserved would be found by the lock's holder, not here).
                stale[size] = c["resv_hugepages"] if c["free_hugepages"] == c["nr_hugepages"] else 0
                if c["free_hugepages"] != c["nr_hugepages"]:
                    raise PoolUnavailable(
                        f"the {size >> 10} kB hugetlb pool is in use by another process "
                        f"(nr {c['nr_hugepages']}, free {c['free_hugepages']}, resv "
                        f"{c['resv_hugepages']}, surplus {c['surplus_hugepages']})")
            # The persistent pool (surplus pages are not the administrator's).
            saved = {size: (_read(size, "nr_hugepages") - _read(size, "surplus_hugepages"),
                            _read(size, "nr_overcommit_hugepages")) for size in counts}
            with open(RECORD + ".tmp", "w") as f:
                json.dump({"pid": os.getpid(), "saved": {str(k): v for k, v in saved.items()}}, f)
            os.replace(RECORD + ".tmp", RECORD)
            try:
                for size, n in counts.items():
                    try:
                        if saved[size][1]:
                            # (gigantic pages have no overcommit: writing it is EINVAL)
                            _write(size, "nr_overcommit_hugepages", 0)
                        _write(size, "nr_hugepages", n + stale[size])
                    except OSError as e:
                        raise PoolUnavailable(f"setting the {size >> 10} kB pool to {n} pages: "
                                              f"{e.strerror}") from None
                    got = _read(size, "nr_hugepages") - stale[size]
                    if got != n:
                        raise PoolUnavailable(
                            f"the kernel allocated {got} of {n} {size >> 10} kB hugetlb pages "
                            f"(not enough free contiguous memory)")
            except BaseException:
                _restore(saved)
                os.unlink(RECORD)
                raise
        except BaseException:
            os.close(lockfd)
            raise
        _held = HeldPool(counts, saved, lockfd)
        _held.users = 1
        _held.stale = stale
        return _held


def set_aside(pool, size, n):
    """n more reservations of `size` pages are nobody's (leaked while the
    pool was held): the pool grows by n pages so as many stay usable, and
    they are left out of what the machine shows. False if the kernel could
    not allocate the pages."""
    with _lock:
        pool.stale[size] += n
        want = pool.counts[size] + pool.stale[size]
        try:
            _write(size, "nr_hugepages", want)
        except OSError:
            return False
        return _read(size, "nr_hugepages") == want


def release(pool):
    """One holder fewer; the last one puts the old pool back and unlocks."""
    global _held
    with _lock:
        if pool is not _held or pool.users <= 0:
            return
        pool.users -= 1
        if pool.users:
            return
        _restore(pool.saved)
        try:
            os.unlink(RECORD)
        except OSError:
            pass
        os.close(pool.lockfd)
        _held = None
