"""mmemu.host.swap: a swap file that exists exactly while a machine needs it.

Swap is global to the host: a file left enabled would change every later
MADV_PAGEOUT on the machine (and fill the disk). Each test says what a
failure would leave behind.
"""
import os
import subprocess
import sys
import textwrap

import pytest

from mmemu.constants import (MADV_DONTNEED, MADV_PAGEOUT, MAP_ANONYMOUS, MAP_PRIVATE, PAGE_SIZE,
                             PROT_READ, PROT_WRITE)
from mmemu.host import HostMachine, Unsupported
from mmemu.host import swap as hswap
from mmemu.host.machine import FOREIGN_SWAP

pytestmark = pytest.mark.host

SIZE = 1 << 20


@pytest.fixture
def need_swap():
    reason = hswap.why_no_swap()
    if reason:
        pytest.skip(reason)


def _ours():
    return [p for p, _n in hswap.active_swaps()
            if os.path.basename(p).startswith(hswap.FILE_PREFIX)]


def test_swap_lives_with_the_machine(need_swap):
    """On while the machine lives, with exactly the asked size (the engine's
    slot count); off and deleted after close, even when the body raises."""
    before = set(_ours())
    with pytest.raises(RuntimeError):
        with HostMachine(swap=SIZE) as m:
            path = m.swap_file
            assert path and os.path.exists(path)
            sizes = dict(hswap.active_swaps())
            assert sizes[path] == SIZE          # /proc/swaps: usable bytes, header excluded
            raise RuntimeError("test body fails")
    assert set(_ours()) == before and not os.path.exists(path)


def test_machines_of_one_process_share_one_swap_file(need_swap):
    with HostMachine(swap=SIZE) as a, HostMachine(swap=SIZE) as b:
        assert a.swap_file == b.swap_file
        with pytest.raises(Unsupported, match="two sizes"):
            HostMachine(swap=2 * SIZE)
        path = a.swap_file
    assert not os.path.exists(path) and path not in dict(hswap.active_swaps())


def test_pageout_refuses_swap_it_does_not_own(need_swap):
    """A machine without swap must not compare PAGEOUT while some swap is on
    (its pages would go there); a machine with swap compares only with its
    own file."""
    with HostMachine(swap=SIZE) as with_swap, HostMachine() as without:
        p = without.spawn()
        a = p.mmap(0, PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
        with pytest.raises(Unsupported, match="swap is on"):
            p.madvise(a, PAGE_SIZE, MADV_PAGEOUT)
        q = with_swap.spawn()
        b = q.mmap(0, PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
        q.write(b, b"x")
        if hswap.foreign_swap():
            pytest.skip("another run has swap on")
        q.madvise(b, PAGE_SIZE, MADV_PAGEOUT)
        assert q.pagemap(b).swapped


def test_foreign_swap_makes_pageout_unsupported_and_nothing_else(need_swap, foreign_swap):
    """Swap another process turned on would take the pages MADV_PAGEOUT
    sends out (or change how full swap is), for a machine without swap and
    one with its own file alike: each PAGEOUT and reclaim is Unsupported,
    with the reason mmemu diff counts it by, and the same processes go on
    with everything else. Were the refusal wider, runs would lose programs
    that never page out; were there none, pageout's outcome would be the
    other swap's."""
    with HostMachine() as bare, HostMachine(swap=SIZE) as own:
        for m in (bare, own):
            p = m.spawn()
            a = p.mmap(0, 2 * PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
            p.write(a, b"x")
            with pytest.raises(Unsupported) as e:
                p.madvise(a, PAGE_SIZE, MADV_PAGEOUT)
            assert e.value.reason == FOREIGN_SWAP and foreign_swap in str(e.value)
            with pytest.raises(Unsupported) as e:
                m.reclaim()
            assert e.value.reason == FOREIGN_SWAP
            assert p.pagemap(a).present and not p.pagemap(a).swapped
            c = p.fork()
            assert c.read(a, 1) == b"x"
            c.write(a, b"y")
            p.madvise(a, PAGE_SIZE, MADV_DONTNEED)
            assert p.read(a, 1) == b"\0" and c.read(a, 1) == b"y"


def test_swap_of_a_killed_run_is_removed_by_the_next(need_swap, tmp_path):
    """A run killed before its atexit (SIGKILL by a timeout) leaves its file
    enabled; the next enable() turns it off and deletes it."""
    code = textwrap.dedent(f"""
        import os, sys
        from mmemu.host import swap
        s = swap.HostSwap({SIZE}).enable()
        print(s.path, flush=True)
        os.kill(os.getpid(), 9)
    """)
    r = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, timeout=30,
                       cwd=str(tmp_path), env=dict(os.environ, PYTHONPATH=os.pathsep.join(
                           p for p in sys.path if p)))
    path = r.stdout.decode().strip()
    assert r.returncode == -9 and path
    try:
        assert path in dict(hswap.active_swaps()) and os.path.exists(path)
        hswap.remove_stale()
        assert path not in dict(hswap.active_swaps()) and not os.path.exists(path)
    finally:                                   # never leave it on, whatever failed above
        if path in dict(hswap.active_swaps()):
            hswap.sc.swapoff(path)
        if os.path.exists(path):
            os.unlink(path)


def test_swap_sizes_are_checked():
    with pytest.raises(ValueError):
        hswap.HostSwap(PAGE_SIZE + 1)
    with pytest.raises(ValueError):
        hswap.HostSwap(4 * PAGE_SIZE)          # below mkswap's minimum
