"""Machine.save / Machine.load, pickle and copy: lossless, atomic, versioned."""
import copy
import os
import pickle
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import mmemu
from mmemu import (MADV_DONTNEED, MADV_PAGEOUT, MAP_ANONYMOUS, MAP_PRIVATE, MAP_SHARED,
                   PAGE_SIZE as PAGE, PROT_READ, PROT_WRITE, FOLL_WRITE, FOLL_LONGTERM)
from mmemu.snapshot import SnapshotError
from mmemu.uffd import UFFDIO_REGISTER_MODE_MISSING, UFFDIO_REGISTER_MODE_WP, UFFD_FEATURE_PAGEFAULT_FLAG_WP
from registered import registered

RW = PROT_READ | PROT_WRITE
PRIV = MAP_PRIVATE | MAP_ANONYMOUS


def _step(m, rng, log):
    """One random legal operation; its outcome goes to `log`."""
    procs = [p for p in m.processes if p.alive and p.main.blocked is None] or [m.spawn()]
    p = procs[int(rng.integers(len(procs)))]
    t = p
    vmas = list(p.vmas)
    k = int(rng.integers(12))
    try:
        if k == 0 or not vmas:
            log.append(p.mmap(0, int(rng.integers(1, 16)) * PAGE, RW, PRIV))
        elif k == 1:
            fd = p.memfd_create("f")
            p.ftruncate(fd, 8 * PAGE)
            log.append(p.mmap(0, 8 * PAGE, RW, MAP_SHARED, fd, 0))
        else:
            v = vmas[int(rng.integers(len(vmas)))]
            n = (v.end - v.start) // PAGE
            i = int(rng.integers(n))
            a = v.start + i * PAGE
            if k in (2, 3):
                t.write(a + int(rng.integers(100)), bytes(rng.integers(0, 256, 50, np.uint8)))
            elif k == 4:
                log.append(t.read(a, 64))
            elif k == 5:
                log.append(t.touch(a, n - i, write=bool(rng.integers(2))))
            elif k == 6 and len(procs) < 5:
                log.append(p.fork().pid)
            elif k == 7:
                p.madvise(a, PAGE, MADV_PAGEOUT if rng.integers(2) else MADV_DONTNEED)
            elif k == 8:
                pin = p.pin_user_pages(a, 1, FOLL_WRITE | FOLL_LONGTERM)
                if rng.integers(2):
                    pin.release()
            elif k == 9:
                log.append(p.vmsplice(a, PAGE).read(16))
            elif k == 10:
                u = p.userfaultfd()
                u.api(UFFD_FEATURE_PAGEFAULT_FLAG_WP)
                u.register(v.start, v.end - v.start, UFFDIO_REGISTER_MODE_WP | UFFDIO_REGISTER_MODE_MISSING)
                u.writeprotect(v.start, v.end - v.start, 1)
            elif k == 11:
                log.append(m.reclaim(4))
    except (OSError, mmemu.EmulatedSignal, mmemu.OutOfMemory, mmemu.WouldBlock) as e:
        log.append(type(e).__name__)


def random_machine(seed, steps=150):
    m = mmemu.Machine(kernel=str(mmemu.VERSIONS[seed % len(mmemu.VERSIONS)]), memory=256 * PAGE,
                      swap=64 * PAGE, seed=seed)
    m.spawn()
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        _step(m, rng, [])
    return m, rng


def assert_same(m1, m2):
    s1, s2 = m1._engine.get_state(), m2._engine.get_state()
    assert s1.keys() == s2.keys()
    for k in s1:
        a, b = s1[k], s2[k]
        if isinstance(a, np.ndarray):
            assert a.dtype == b.dtype and np.array_equal(a, b), k
        elif isinstance(a, list):
            assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b)), k
        else:
            assert a == b, k
    for p1, p2 in zip(m1.processes, m2.processes):
        assert p1.pid == p2.pid and list(p1.vmas) == list(p2.vmas)
        assert sorted(p1.fds) == sorted(p2.fds)
        assert [(u.ctx, [w.msg for w in u.faults], [w.msg for w in u.waiting], u.mmap_changing)
                for u in p1.uffds] == \
               [(u.ctx, [w.msg for w in u.faults], [w.msg for w in u.waiting], u.mmap_changing)
                for u in p2.uffds]


@pytest.mark.parametrize("seed", range(6))
def test_round_trip_is_exact_and_runs_on_identically(seed, tmp_path):
    """Every frame, pte, TLB entry and queue comes back; the loaded machine
    then behaves exactly as the original would have (same random future)."""
    m, rng = random_machine(seed)
    path = tmp_path / "m.mmemu"
    m.save(path)
    m2 = mmemu.Machine.load(str(path))
    m2.check()
    assert_same(m, m2)
    rng2 = copy.deepcopy(rng)
    log1, log2 = [], []
    for _ in range(100):
        _step(m, rng, log1)
        _step(m2, rng2, log2)
    assert [str(x) for x in log1] == [str(x) for x in log2]
    assert_same(m, m2)
    m.check()
    m2.check()


def test_a_blocked_thread_is_saved_with_the_rest_of_its_call(tmp_path):
    m = mmemu.Machine(memory=64 * PAGE)
    p = m.spawn()
    a = p.mmap(0, 4 * PAGE, RW, PRIV)
    u = p.userfaultfd()
    u.api()
    u.register(a, 4 * PAGE, UFFDIO_REGISTER_MODE_MISSING)
    with pytest.raises(mmemu.WouldBlock):
        p.write(a + PAGE - 3, b"across!")          # blocks after nothing was written
    m.save(tmp_path / "m")
    m2 = mmemu.Machine.load(tmp_path / "m")
    p2 = m2.processes[0]
    u2 = p2.uffds[0]
    (msg,) = u2.read()
    assert msg.address == a
    u2.zeropage(a, PAGE)
    with pytest.raises(mmemu.WouldBlock):
        p2.main.resume()                             # the second page faults next
    (msg,) = u2.read()
    assert msg.address == a + PAGE
    u2.zeropage(a + PAGE, PAGE)
    p2.main.resume()
    assert p2.read(a + PAGE - 3, 7) == b"across!"
    m2.check()
    assert p.main.blocked is not None                # the original is untouched


def test_pickle_deepcopy_and_copy_are_whole_machines():
    m, _ = random_machine(3, steps=60)
    clones = (pickle.loads(pickle.dumps(m)), copy.deepcopy(m), copy.copy(m))
    pids = {p.pid for p in m.processes}
    for clone in clones:
        clone.check()
        assert_same(m, clone)
        assert clone._engine is not m._engine
        # (copy.copy once shared the engine but not the pid counter)
        assert clone.spawn().pid == m._pid + 1
    assert m.spawn().pid not in pids


def test_an_in_core_resolver_keeps_its_source(tmp_path):
    m = mmemu.Machine(memory=64 * PAGE)
    p = m.spawn()
    a = p.mmap(0, 4 * PAGE, RW, PRIV)
    u = p.userfaultfd()
    u.api()
    u.register(a, 4 * PAGE, UFFDIO_REGISTER_MODE_MISSING)
    u.serve_core("copy", base=a, versions=np.arange(1, 5, dtype=np.uint64) * 0x0101010101010101)
    p.touch(a, 1)
    m2 = pickle.loads(pickle.dumps(m))
    p2 = m2.processes[0]
    assert p2.read(a + 3 * PAGE, 2) == b"\x04\x04"
    assert p2.uffds[0].core_log()[0] == 2
    m2.check()


def test_crash_mid_write_leaves_the_old_file_whole(tmp_path, child_python):
    """A writer killed at any moment leaves either the old or the new file,
    never a torn one: saves go to a temporary file renamed over the target."""
    path = tmp_path / "m.mmemu"
    m = mmemu.Machine(memory=64 * PAGE)
    m.spawn().mmap(0, PAGE, RW, PRIV)
    m.save(path)
    script = textwrap.dedent(f"""
        import mmemu, os
        m = mmemu.Machine(memory=64 << 20)
        p = m.spawn()
        a = p.mmap(0, 8192 * 4096, 3, 0x22)
        p.write(a, os.urandom(8 << 20))            # byte-exact pages: a large file
        print("ready", flush=True)
        while True:
            m.save({str(path)!r})
    """)
    for delay in (0.05, 0.2, 0.5):
        py, env, cwd = child_python
        proc = subprocess.Popen([*py, "-c", script], stdout=subprocess.PIPE, cwd=cwd, env=env)
        assert proc.stdout.readline().strip() == b"ready"
        try:
            proc.wait(delay)
        except subprocess.TimeoutExpired:
            pass
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        loaded = mmemu.Machine.load(path)           # whole: old or new, never torn
        loaded.check()
        assert len(loaded.processes) == 1
    # The same with an exception thrown in the middle of the write.
    m.save(path)
    before = path.read_bytes()
    real_fsync = os.fsync

    def boom(fd):
        raise OSError(5, "disk gone")
    os.fsync = boom
    try:
        with pytest.raises(OSError):
            m.save(path)
    finally:
        os.fsync = real_fsync
    assert path.read_bytes() == before
    assert not (tmp_path / f"m.mmemu.tmp.{os.getpid()}").exists()


def test_files_from_elsewhere_are_refused_clearly(tmp_path):
    m = mmemu.Machine(memory=64 * PAGE)
    m.spawn()
    path = tmp_path / "m"
    m.save(path)
    data = path.read_bytes()
    bad = tmp_path / "bad"
    bad.write_bytes(b"hello")
    with pytest.raises(SnapshotError, match="magic"):
        mmemu.Machine.load(bad)
    from mmemu.snapshot import FORMAT
    assert f'"format": {FORMAT}'.encode() in data
    bad.write_bytes(data.replace(f'"format": {FORMAT}'.encode(), b'"format": 9', 1))
    with pytest.raises(SnapshotError, match="format 9"):
        mmemu.Machine.load(bad)
    bad.write_bytes(data[:-100])
    with pytest.raises(SnapshotError, match="checksum"):
        mmemu.Machine.load(bad)
    py = f'"python": "{sys.version_info[0]}.{sys.version_info[1]}"'.encode()
    bad.write_bytes(data.replace(py, b'"python": "2.7"', 1))
    with pytest.raises(SnapshotError, match="Python 2.7"):
        mmemu.Machine.load(bad)


def test_a_save_naming_a_class_this_mmemu_lacks_is_a_snapshot_error():
    """A file from another version of mmemu can name a class this one does
    not have (found when one worktree loaded another's save): SnapshotError
    naming the version, not pickle's AttributeError."""
    import hashlib
    import json
    from mmemu import snapshot as S
    data = S.dumps(mmemu.Machine(memory=64 * PAGE))
    nl = data.find(b"\n", len(S.MAGIC))
    header, payload = json.loads(data[len(S.MAGIC):nl]), data[nl + 1:]
    payload = payload.replace(b"Machine", b"Mxchine", 1)
    header["sha256"] = hashlib.sha256(payload).hexdigest()
    with pytest.raises(SnapshotError, match="lacks.*Mxchine"):
        S.loads(S.MAGIC + json.dumps(header).encode() + b"\n" + payload)


def test_a_lambda_handler_cannot_be_saved_and_says_why(tmp_path):
    m = mmemu.Machine(memory=64 * PAGE)
    u = m.spawn().userfaultfd()
    u.api()
    u.serve(lambda uffd, msg: None)
    with pytest.raises(pickle.PicklingError, match="lambda|nested"):
        m.save(tmp_path / "m")
    assert not os.listdir(tmp_path)


_missing_page = registered


def test_a_resolver_handler_is_saved():
    m = mmemu.Machine(memory=64 * PAGE)
    p, a, u = _missing_page(m)
    u.serve(mmemu.Resolver(missing="copy", fill=7))
    m2 = pickle.loads(pickle.dumps(m))
    assert m2.processes[0].read(a, 2) == b"\x07\x07"
    m2.check()


def test_program_snapshots_cost_what_is_populated_not_what_is_mapped():
    """A program region of 2^24 pages, two of them touched: each snapshot is
    three states (a run, two pages, a run), not 2^24 (300 bytes each)."""
    from mmemu import program as P
    prog = [
        {"op": "mmap", "name": "a", "pages": 1 << 24, "prot": "PROT_READ|PROT_WRITE",
         "flags": "MAP_PRIVATE|MAP_ANONYMOUS|MAP_NORESERVE"},
        {"op": "write", "at": ["a", 5], "data": "01"},
        {"op": "write", "at": ["a", 6], "data": "02"},
    ]
    obs = P.run(prog, mmemu.Machine(memory=64 << 20))
    states = obs[-1]["snapshot"]["main"]["a"]
    assert [s.get("n", 1) for s in states] == [5, 1, 1, (1 << 24) - 7]
    assert P.snapshot_pages(states) == 1 << 24
    assert "pfn" in states[1] and "pfn" in states[2]


def test_a_resolver_base_above_2_63_survives_save():
    """serve_core's base is an unsigned long: one with the top bit set is
    saved as its bits and loads back unchanged (fuzz finding: OverflowError)."""
    m = mmemu.Machine(memory=64 * PAGE)
    p, a, u = _missing_page(m)
    u.serve_core("copy", base=2**64 - PAGE, versions=np.arange(1, 5, dtype=np.uint64))
    m2 = pickle.loads(pickle.dumps(m))
    assert (m2._engine.get_state()["uffd_res"] == m._engine.get_state()["uffd_res"]).all()
    m2.check()
