"""HostMachine: the engine's API on real processes.

These pin down the host facts the oracle relies on (and that the engine
must reproduce with kernel="host"); each says what a failure would mean.
"""
import errno
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from mmemu.constants import (FOLL_GET, FOLL_LONGTERM, FOLL_PIN, FOLL_WRITE, MADV_DONTFORK,
                             MADV_DONTNEED, MADV_GUARD_INSTALL, MADV_WIPEONFORK, MAP_ANONYMOUS,
                             MAP_FIXED, MAP_PRIVATE, MAP_SHARED, PAGE_SIZE, PM_PRESENT,
                             PROT_NONE, PROT_READ, PROT_WRITE, SEGV_ACCERR, SEGV_MAPERR)
from mmemu.errors import Sigsegv
from mmemu.host import HostError, HostMachine, Unsupported
from mmemu.host.machine import PROGRAM_SPACE_BASE, PROGRAM_SPACE_END

pytestmark = pytest.mark.host

RW = PROT_READ | PROT_WRITE
PA = MAP_PRIVATE | MAP_ANONYMOUS
PIN = FOLL_WRITE | FOLL_PIN | FOLL_LONGTERM


def _gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_lifecycle_leaves_no_process_behind():
    """Every server (spawned, forked, forked from a fork) is reaped when the
    machine closes; if not, long diff runs would pile up zombies."""
    with HostMachine() as m:
        p = m.spawn()
        c = p.fork()
        g = c.fork()
        c.exit()                      # g is now an orphan in the emulated tree
        assert not c.alive and _gone(c.pid)
        pids = [p.pid, g.pid]
        assert all(not _gone(pid) for pid in pids)
        assert g.read(0x10000 + PROGRAM_SPACE_BASE, 0) == b""
    assert all(_gone(pid) for pid in pids)
    with pytest.raises(OSError) as e:
        p.read(PROGRAM_SPACE_BASE, 1)
    assert e.value.errno == errno.ESRCH


def test_placement_stays_in_the_program_range(host):
    p = host.spawn()
    a = p.mmap(0, 3 * PAGE_SIZE, RW, PA)
    b = p.mmap(0, PAGE_SIZE, RW, PA)
    # Top-down and adjacent, as the kernel places a fresh process's mappings.
    assert PROGRAM_SPACE_BASE <= b < a < PROGRAM_SPACE_END and b + PAGE_SIZE == a
    # A length no slot can hold gets the kernel's own placement, and fails
    # the way it would anyway.
    with pytest.raises(OSError) as e:
        p.mmap(0, 1 << 47, RW, PA)
    assert e.value.errno == errno.ENOMEM
    assert p.mmap(0, PAGE_SIZE, RW, PA) == b - PAGE_SIZE


def test_fork_shares_then_child_write_copies(host, need):
    """After fork both processes map the same frame (mapcount 2, not
    exclusive); the child's write gets a new frame and the parent keeps its
    own. If COW were not broken, the parent would read the child's data."""
    need("pfns", "kpage")
    p = host.spawn()
    a = p.mmap(0, 2 * PAGE_SIZE, RW, PA)
    p.write(a, b"parent")
    before = p.pagemap(a)
    assert before.present and before.exclusive
    c = p.fork()
    pe, ce = p.pagemap(a), c.pagemap(a)
    assert pe.pfn == ce.pfn == before.pfn
    assert not pe.exclusive and not ce.exclusive
    assert host.frame(pe.pfn).kpagecount == 2
    c.write(a, b"child!")
    assert c.pagemap(a).pfn != pe.pfn and c.pagemap(a).exclusive
    assert p.pagemap(a).pfn == pe.pfn
    assert p.read(a, 6) == b"parent" and c.read(a, 6) == b"child!"
    c.exit()
    assert p.pagemap(a).exclusive and host.frame(pe.pfn).kpagecount == 1


def test_zero_page(host, need):
    """A read fault maps the shared zero page: KPF_ZERO_PAGE set, kpagecount
    0 (it is never mapcounted), pagemap present but never exclusive. Fork
    does not even copy that pte when the VMA has no anon_vma yet
    (copy_page_range skips such VMAs): the child's pagemap is empty."""
    need("pfns", "kpage")
    p = host.spawn()
    a = p.mmap(0, PAGE_SIZE, RW, PA)
    assert p.read(a, 8) == bytes(8)
    e = p.pagemap(a)
    assert e.present and not e.exclusive
    info = host.frame(e.pfn)
    assert "zero_page" in info.flags and info.kpagecount == 0
    assert info.refcount is None and info.pincount is None
    c = p.fork()
    assert not c.pagemap(a).present
    assert c.read(a, 1) == b"\0" and c.pagemap(a).pfn == e.pfn


def test_vmsplice_child_unmap_parent_write_copies(host, need):
    """The cow.c vmsplice case (CVE-2020-29374): the child vmsplices a page
    and unmaps it. Pagemap bit 56 then shows the parent's page as exclusively
    mapped, yet the parent's write must copy (the pipe's reference makes the
    page non-reusable), or the child would read the parent's new data."""
    need("pfns", "vmsplice")
    p = host.spawn()
    a = p.mmap(0, PAGE_SIZE, RW, PA)
    p.write(a, b"old data")
    c = p.fork()
    pipe = c.vmsplice(a, PAGE_SIZE)
    assert pipe.nbytes == PAGE_SIZE
    c.munmap(a, PAGE_SIZE)
    shared = p.pagemap(a)
    assert shared.exclusive   # "mapped once", not PageAnonExclusive (host-notes.md)
    p.write(a, b"new data")
    assert p.pagemap(a).pfn != shared.pfn
    assert pipe.read(8) == b"old data"
    assert pipe.read(8) == bytes(8)
    pipe.close()


def test_vmsplice_of_unpopulated_page_maps_the_zero_page(host, need):
    need("pfns", "kpage", "vmsplice")
    p = host.spawn()
    a = p.mmap(0, PAGE_SIZE, RW, PA)
    pipe = p.vmsplice(a, PAGE_SIZE)
    e = p.pagemap(a)
    assert e.present and "zero_page" in host.frame(e.pfn).flags
    assert pipe.read(4) == bytes(4)


def test_get_user_pages_foll_get_reads_without_consuming(host, need):
    need("vmsplice")
    p = host.spawn()
    a = p.mmap(0, 2 * PAGE_SIZE, RW, PA)
    p.write(a + PAGE_SIZE, b"second")
    g = p.get_user_pages(a, 2, FOLL_GET)
    assert g.read(PAGE_SIZE, 6) == b"second"
    assert g.read(PAGE_SIZE + 1, 3) == b"eco"      # not consumed
    with pytest.raises(Unsupported):
        g.write(0, b"x")
    g.release()
    with pytest.raises(Unsupported):
        p.get_user_pages(a, 1, FOLL_GET | FOLL_WRITE)


def test_signals_and_errnos_come_back_from_the_server(host):
    p = host.spawn()
    a = p.mmap(0, 4 * PAGE_SIZE, RW, PA)
    p.mprotect(a + PAGE_SIZE, PAGE_SIZE, PROT_NONE)
    with pytest.raises(Sigsegv) as e:
        p.read(a + PAGE_SIZE + 3, 1)
    assert (e.value.addr, e.value.si_code) == (a + PAGE_SIZE + 3, SEGV_ACCERR)
    p.munmap(a + 2 * PAGE_SIZE, PAGE_SIZE)
    with pytest.raises(Sigsegv) as e:
        p.write(a + 2 * PAGE_SIZE, b"x")
    assert e.value.si_code == SEGV_MAPERR
    cases = [
        (lambda: p.mprotect(a + 1, PAGE_SIZE, PROT_READ), errno.EINVAL),
        (lambda: p.munmap(a, 0), errno.EINVAL),
        (lambda: p.madvise(a, 4 * PAGE_SIZE, MADV_DONTNEED), errno.ENOMEM),    # hole
        (lambda: p.mprotect(a, 4 * PAGE_SIZE, PROT_READ), errno.ENOMEM),       # hole
        (lambda: p.mmap(a + 1, PAGE_SIZE, RW, PA | MAP_FIXED), errno.EINVAL),
        (lambda: p.mmap(0, 0, RW, PA), errno.EINVAL),
    ]
    for call, want in cases:
        with pytest.raises(OSError) as e:
            call()
        assert e.value.errno == want


def test_mprotect_and_madvise_over_a_hole_apply_up_to_it(host):
    """Linux does not roll back: mprotect over [mapped, hole, mapped] fails
    with ENOMEM after changing the part before the hole; madvise(DONTNEED)
    fails with ENOMEM after zapping every mapped part."""
    p = host.spawn()
    a = p.mmap(0, 3 * PAGE_SIZE, RW, PA)
    p.write(a, b"one")
    p.write(a + 2 * PAGE_SIZE, b"three")
    p.munmap(a + PAGE_SIZE, PAGE_SIZE)
    with pytest.raises(OSError) as e:
        p.mprotect(a, 3 * PAGE_SIZE, PROT_READ)
    assert e.value.errno == errno.ENOMEM
    with pytest.raises(Sigsegv):
        p.write(a, b"x")                       # changed before the hole
    p.write(a + 2 * PAGE_SIZE, b"THREE")      # not reached
    with pytest.raises(OSError) as e:
        p.madvise(a, 3 * PAGE_SIZE, MADV_DONTNEED)
    assert e.value.errno == errno.ENOMEM
    assert p.read(a, 3) == bytes(3) and p.read(a + 2 * PAGE_SIZE, 5) == bytes(5)


def test_wipeonfork_and_dontfork(host, need):
    need("pfns")
    p = host.spawn()
    a = p.mmap(0, 2 * PAGE_SIZE, RW, PA)
    p.write(a, b"wipe")
    p.write(a + PAGE_SIZE, b"gone")
    p.madvise(a, PAGE_SIZE, MADV_WIPEONFORK)
    p.madvise(a + PAGE_SIZE, PAGE_SIZE, MADV_DONTFORK)
    c = p.fork()
    assert not c.pagemap(a).present and c.read(a, 4) == bytes(4)
    with pytest.raises(Sigsegv) as e:
        c.read(a + PAGE_SIZE, 1)
    assert e.value.si_code == SEGV_MAPERR
    assert p.read(a, 4) == b"wipe"
    s = p.mmap(0, PAGE_SIZE, RW, MAP_SHARED | MAP_ANONYMOUS)
    with pytest.raises(OSError) as e:
        p.madvise(s, PAGE_SIZE, MADV_WIPEONFORK)
    assert e.value.errno == errno.EINVAL


def test_guard_region_reads_as_marker(host, need):
    """MADV_GUARD_INSTALL leaves a PTE marker: pagemap bits 62 and 58, swap
    type 31, offset 4 (host-notes.md); an access is SIGSEGV MAPERR."""
    need("pfns")
    p = host.spawn()
    a = p.mmap(0, 2 * PAGE_SIZE, RW, PA)
    p.write(a + PAGE_SIZE, b"x")
    try:
        p.madvise(a + PAGE_SIZE, PAGE_SIZE, MADV_GUARD_INSTALL)
    except OSError as e:
        pytest.skip(f"no guard regions on this kernel: {e}")
    e = p.pagemap(a + PAGE_SIZE)
    assert e.swapped and e.guard and not e.present
    assert (e.swap_type, e.swap_offset) == (31, 4)
    with pytest.raises(Sigsegv) as s:
        p.read(a + PAGE_SIZE, 1)
    assert s.value.si_code == SEGV_MAPERR


def test_proc_mem_write_forces_cow_on_read_only_private(host, need):
    """/proc/pid/mem writes with FOLL_FORCE: on a PROT_READ private mapping
    they COW into a new anon page the process then reads; on a PROT_READ
    shared mapping they are refused (EIO), or FOLL_FORCE would write to the
    shared object."""
    need("pfns", "kpage")
    p = host.spawn()
    r = p.mmap(0, PAGE_SIZE, PROT_READ, PA)
    assert p.proc_mem_write(r, b"forced") == 6
    assert p.read(r, 6) == b"forced"
    e = p.pagemap(r)
    assert e.present and e.exclusive and "anon" in host.frame(e.pfn).flags
    s = p.mmap(0, PAGE_SIZE, PROT_READ, MAP_SHARED | MAP_ANONYMOUS)
    with pytest.raises(OSError) as err:
        p.proc_mem_write(s, b"no")
    assert err.value.errno == errno.EIO
    assert p.proc_mem_read(r, 6) == b"forced"


def test_pagemap_range_matches_single_entries(host):
    p = host.spawn()
    a = p.mmap(0, 4 * PAGE_SIZE, RW, PA)
    p.write(a + PAGE_SIZE, b"1")
    p.read(a + 2 * PAGE_SIZE, 1)
    rng = p.pagemap_range(a, 4)
    assert rng.dtype == np.uint64
    assert [int(r) for r in rng] == [p.pagemap(a + i * PAGE_SIZE).raw for i in range(4)]
    assert [bool(int(r) & PM_PRESENT) for r in rng] == [False, True, True, False]
    two = p.pagemap_ranges([(a, 2), (a + 2 * PAGE_SIZE, 2)])
    assert [list(x) for x in two] == [list(rng[:2]), list(rng[2:])]


def test_io_uring_pin_early_cow_at_fork_and_release(host, need, unsupported_is_skip):
    """A FOLL_PIN page is copied for the child at fork (the child must not
    share a page a device may write; 70e806e4e645), the device keeps seeing
    the parent's page, and after release fork shares again."""
    need("pfns", "io_uring")
    p = host.spawn()
    a = p.mmap(0, 2 * PAGE_SIZE, RW, PA)
    p.write(a, b"pinned")
    with unsupported_is_skip:
        pin = p.pin_user_pages(a, 2, PIN)
    assert pin.read(0, 6) == b"pinned"
    pin.write(PAGE_SIZE, b"device")
    assert p.read(a + PAGE_SIZE, 6) == b"device"
    c = p.fork()
    assert c.pagemap(a).pfn != p.pagemap(a).pfn
    assert c.read(a, 6) == b"pinned"
    c.write(a, b"child!")
    assert pin.read(0, 6) == b"pinned"
    pin.release()
    c2 = p.fork()
    assert c2.pagemap(a).pfn == p.pagemap(a).pfn


def test_pins_the_host_cannot_take_are_unsupported(host):
    p = host.spawn()
    a = p.mmap(0, PAGE_SIZE, RW, PA)
    with pytest.raises(Unsupported):
        p.pin_user_pages(a, 1, FOLL_PIN)              # R/O pin: needs gup_test
    with pytest.raises(Unsupported):
        p.pin_user_pages(a, 1, FOLL_PIN | FOLL_WRITE)  # no LONGTERM path either


def test_pin_of_read_only_mapping_is_efault(host, need):
    need("io_uring")
    p = host.spawn()
    r = p.mmap(0, PAGE_SIZE, PROT_READ, PA)
    with pytest.raises(OSError) as e:
        p.pin_user_pages(r, 1, PIN)
    assert e.value.errno == errno.EFAULT


def test_hung_server_times_out_and_is_killed():
    """The report says what the server was doing (here: stopped, state T),
    so a hang can be told from a deadlock without reproducing it."""
    with HostMachine(timeout=0.3) as m:
        p = m.spawn()
        os.kill(p.pid, signal.SIGSTOP)
        with pytest.raises(HostError, match="no answer") as e:
            p.read(PROGRAM_SPACE_BASE, 1)
        assert f"thread {p.pid} (" in str(e.value) and "state T" in str(e.value)
        assert not p.alive and _gone(p.pid)
        q = m.spawn()                       # the machine goes on
        assert q.read(PROGRAM_SPACE_BASE, 0) == b""


def test_dead_server_is_reported():
    with HostMachine() as m:
        p = m.spawn()
        os.kill(p.pid, signal.SIGKILL)
        with pytest.raises(HostError, match="signal 9"):
            p.mmap(0, PAGE_SIZE, RW, PA)
        assert _gone(p.pid)


def test_machine_arguments():
    with pytest.raises(ValueError):
        HostMachine(swap=-1)
    with pytest.raises(ValueError):
        HostMachine(swap=PAGE_SIZE + 1)      # not whole pages: no swap file has that size
    with pytest.raises(ValueError):
        HostMachine(kernel="2.6.32")
    with HostMachine(kernel=os.uname().release.split("-")[0], ncpus=2, memory=1 << 28,
                     seed=3) as m:
        m.check()


def test_gup_and_pin_stop_at_the_first_bad_page(host, need):
    """get_user_pages / pin_user_pages return the pages before the first one
    they cannot take (EFAULT only when that is the first page), as Linux's
    GUP does; io_uring registration itself is all or nothing."""
    need("vmsplice", "io_uring")
    p = host.spawn()
    a = p.mmap(0, 3 * PAGE_SIZE, RW, PA)
    p.munmap(a + 2 * PAGE_SIZE, PAGE_SIZE)
    assert p.get_user_pages(a, 3, FOLL_GET).npages == 2
    pin = p.pin_user_pages(a, 3, PIN)
    assert pin.npages == 2 and p.pagemap(a + PAGE_SIZE).present
    for call in (lambda: p.get_user_pages(a + 2 * PAGE_SIZE, 1, FOLL_GET),
                 lambda: p.pin_user_pages(a + 2 * PAGE_SIZE, 1, PIN)):
        with pytest.raises(OSError) as e:
            call()
        assert e.value.errno == errno.EFAULT


def test_interpreter_exit_without_close_leaves_no_process():
    """atexit closes machines nobody closed: a driver that forgets (or dies
    of an exception) must not leave servers behind."""
    code = textwrap.dedent("""
        from mmemu.host import HostMachine
        m = HostMachine()
        p = m.spawn()
        c = p.fork()
        print(p.pid, c.pid, c.fork().pid, flush=True)
        raise SystemExit(3)
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60, env=env, cwd="/")   # not the source tree (see test_host_access)
    assert r.returncode == 3, r.stderr
    pids = [int(x) for x in r.stdout.split()]
    assert len(pids) == 3 and all(_gone(pid) for pid in pids)


def test_large_transfers(host):
    p = host.spawn()
    n = 600 * PAGE_SIZE            # more than one 1 MiB chunk of the channel
    a = p.mmap(0, n, RW, PA)
    data = bytes(range(256)) * (n // 256)
    p.write(a, data)
    assert p.read(a, n) == data
    assert len(p.pagemap_range(a, 600)) == 600


def test_fork_waits_for_a_thread_inside_the_c_library():
    """A server forks with a raw clone (fork_sibling: CLONE_PARENT, so the
    driver can reap the child), which, unlike glibc's fork(), takes no
    C-library lock first: a lock another thread holds at that instant stays
    locked in the child forever. Here a C thread of the server keeps taking
    main_arena's lock for 0.2 s, as a server thread that ends frees its
    thread state into main_arena after dropping the GIL; each fork must wait
    for it. If a fork cloned at once, the child would hang on main_arena in
    PyOS_AfterFork_Child or at its first allocation too big for its
    thread cache (HostError: no answer). That was a forked server that
    never answered within 20 s."""
    with HostMachine(timeout=5.0) as m:
        p = m.spawn()
        for _ in range(5):
            p._call("_test_malloc_thread", 0.2)
            c = p.fork()
            assert "[stack]" in c.maps()        # a few KiB: malloc takes main_arena's lock
            c.exit()


def test_a_hung_server_is_reported_with_its_stacks():
    """A server stuck in a wait (here: made to sleep in read(2) on a pipe
    nobody writes) is reported with its kernel wait and its Python stack."""
    with HostMachine(timeout=1.0) as m:
        p = m.spawn()
        with pytest.raises(HostError) as e:
            p._call("_test_hang")
    text = str(e.value)
    assert "state S" in text and "pipe_read" in text, text
    assert "Python stacks (faulthandler)" in text and "op__test_hang" in text, text


def test_a_server_runs_on_one_cpu_so_its_lru_batches_are_the_ones_it_drains():
    """MADV_FREE then reclaim (MADV_PAGEOUT) must drop the clean pages every
    time: with the server's calls spread over CPUs, the folio could still sit
    in another CPU's LRU batch and be swapped instead."""
    import os
    from mmemu.host import HostMachine, Unsupported
    from mmemu.scenarios import ScenarioFailure, all_scenarios
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one CPU: nothing to pin")
    s6f = {s.id: s for s in all_scenarios()}["S6f"]
    try:
        with HostMachine(swap=16 << 20) as m:
            p = m.spawn()
            with open(f"/proc/{p.pid}/status") as f:
                allowed = [line.split()[1] for line in f if line.startswith("Cpus_allowed_list")]
            assert allowed == [str(min(os.sched_getaffinity(0)))]
            for _ in range(10):
                try:
                    s6f.func(m)
                except ScenarioFailure as e:
                    pytest.fail(f"S6f on the host: {e}")
    except Unsupported as e:
        pytest.skip(str(e))
