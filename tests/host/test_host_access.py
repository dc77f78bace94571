"""mmemu.host._access: guarded user-mode accesses in the test process itself.

If these fail, every host observation of a signal is wrong: the oracle
would crash, or report the wrong si_addr/si_code, or leave pytest's own
SIGSEGV handler (faulthandler) replaced.
"""
import ctypes
import mmap
import os
import subprocess
import sys
import textwrap

import pytest

from mmemu.constants import (BUS_ADRERR, PAGE_SIZE, PROT_NONE, PROT_READ, PROT_WRITE,
                             SEGV_ACCERR, SEGV_MAPERR)
from mmemu.errors import Sigbus, Sigsegv
from mmemu.host import _access
from mmemu.host import syscalls as sc

pytestmark = pytest.mark.host

RW = PROT_READ | PROT_WRITE
PRIVATE_ANON = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS


@pytest.fixture
def region():
    """Three private anonymous pages of this process, unmapped afterwards."""
    addr = sc.mmap(0, 3 * PAGE_SIZE, RW, PRIVATE_ANON)
    yield addr
    sc.munmap(addr, 3 * PAGE_SIZE)


def test_write_read_round_trip(region):
    _access.write(region + 10, b"hello")
    assert _access.read(region + 8, 9) == b"\0\0hello\0\0"
    # Across a page boundary, with both pages present.
    _access.write(region + PAGE_SIZE - 2, b"abcd")
    assert _access.read(region + PAGE_SIZE - 2, 4) == b"abcd"
    assert _access.read(region, 0) == b""


def test_read_prot_none_is_sigsegv_accerr(region):
    sc.mprotect(region + PAGE_SIZE, PAGE_SIZE, PROT_NONE)
    with pytest.raises(Sigsegv) as e:
        _access.read(region + PAGE_SIZE + 100, 8)
    assert e.value.addr == region + PAGE_SIZE + 100
    assert e.value.si_code == SEGV_ACCERR


def test_unmapped_is_sigsegv_maperr(region):
    sc.munmap(region + 2 * PAGE_SIZE, PAGE_SIZE)
    with pytest.raises(Sigsegv) as e:
        _access.write(region + 2 * PAGE_SIZE + 5, b"x")
    assert (e.value.addr, e.value.si_code) == (region + 2 * PAGE_SIZE + 5, SEGV_MAPERR)
    with pytest.raises(Sigsegv) as e:
        _access.read(0, 1)
    assert (e.value.addr, e.value.si_code) == (0, SEGV_MAPERR)


def test_fault_midway_reports_first_bad_byte_and_keeps_earlier_pages(region):
    """A store that runs into a PROT_NONE page faults at that page's first
    byte; what it stored before stays stored, as with a real CPU."""
    sc.mprotect(region + PAGE_SIZE, PAGE_SIZE, PROT_NONE)
    with pytest.raises(Sigsegv) as e:
        _access.write(region + PAGE_SIZE - 3, b"XYZ!!")
    assert e.value.addr == region + PAGE_SIZE
    assert _access.read(region + PAGE_SIZE - 3, 3) == b"XYZ"


def test_file_mapping_past_eof_is_sigbus(tmp_path):
    fd = os.open(tmp_path, os.O_TMPFILE | os.O_RDWR)
    try:
        os.ftruncate(fd, 100)
        addr = sc.mmap(0, 2 * PAGE_SIZE, RW, mmap.MAP_SHARED, fd, 0)
        try:
            assert _access.read(addr, 2) == b"\0\0"
            with pytest.raises(Sigbus) as e:
                _access.read(addr + PAGE_SIZE, 1)
            assert (e.value.addr, e.value.si_code) == (addr + PAGE_SIZE, BUS_ADRERR)
        finally:
            sc.munmap(addr, 2 * PAGE_SIZE)
    finally:
        os.close(fd)


def _run_python(code):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    # cwd outside the source tree: `-c` puts the cwd first on sys.path, and
    # the source tree has no compiled extension (CI installs the package).
    return subprocess.run([sys.executable, "-X", "faulthandler", "-c", textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=60, env=env, cwd="/")


def test_previous_sigsegv_handler_is_restored():
    """After guarded faults, a real crash must still reach faulthandler (the
    handler that was installed before): it prints its report and the process
    dies of SIGSEGV."""
    r = _run_python("""
        import ctypes
        from mmemu.host import _access
        from mmemu.errors import Sigsegv
        for _ in range(3):
            try:
                _access.read(0, 1)
            except Sigsegv:
                pass
        print("caught", flush=True)
        ctypes.string_at(0)
    """)
    assert "caught" in r.stdout
    assert r.returncode == -11
    assert "Segmentation fault" in r.stderr


def test_fork_sibling_child_belongs_to_callers_parent():
    """fork_sibling() in a process we forked makes a process we can reap:
    CLONE_PARENT. raise() inside it must reach itself (glibc's cached tid
    was updated through CLONE_CHILD_SETTID)."""
    me = os.getpid()
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:   # pragma: no cover - runs in the forked process
        status = 1
        try:
            os.close(rfd)
            child = _access.fork_sibling()
            if child == 0:
                import signal
                got = []
                signal.signal(signal.SIGUSR1, lambda *a: got.append(1))
                signal.raise_signal(signal.SIGUSR1)
                os._exit(7 if got and os.getppid() == me else 9)
            os.write(wfd, str(child).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(wfd)
    sibling = int(os.read(rfd, 32))
    os.close(rfd)
    assert os.waitpid(pid, 0)[1] == 0
    _, status = os.waitpid(sibling, 0)    # ECHILD if it were not our child
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 7
