"""The scheduler (mmemu.sched) and the race explorer (mmemu.explore): races
found in their era and absent after the fix, deterministic schedules,
mmap_lock and userfault waits seen by the scheduler."""
import json

import pytest

import mmemu
from mmemu import MAP_ANONYMOUS, MAP_PRIVATE, PAGE_SIZE as PAGE, PROT_READ, PROT_WRITE
from mmemu.scenarios.races import find
from mmemu.sched import Scheduler
from mmemu.uffd import UFFDIO_REGISTER_MODE_MISSING
from registered import registered

RW = PROT_READ | PROT_WRITE
PRIV = MAP_PRIVATE | MAP_ANONYMOUS


def run_at(step, name):
    """A chooser: when the running thread stands at a step whose label
    starts with `step`, the thread called `name` runs next."""
    def choose(sched, cands):
        me = sched.current
        if me is not None and me.where.startswith(step):
            return next(i for i, c in enumerate(cands) if c.name == name)
        return 0
    return choose


missing_page = registered          # one private page registered MISSING on a fresh context


# ---- the races of the issue: found in the buggy era, exhausted clean after the fix ----

@pytest.mark.parametrize("race,buggy,fixed", [
    ("S51", "5.10", ("5.12", "6.18")),      # seed 002, B11 (6ce64428d620)
    ("S52", "5.9", ("5.12",)),              # B11 on two CPUs
    ("S50", "5.11", ("5.12", "6.18")),      # B10 (912efa17e512)
    ("S50b", "5.9", ("5.12",)),             # B10's lost write
    ("S61", "5.10", ("5.11", "6.18")),      # B17 (57efa1fe5957)
    ("S47", "5.19", ("6.0", "6.18")),       # B16 (5535be309971)
])
def test_race_found_in_its_era_and_absent_after_the_fix(race, buggy, fixed):
    r = find(race)
    res = r.explore(buggy, budget=2000)
    assert res.counterexamples, res.summary()
    for v in fixed:
        clean = r.explore(v, budget=2000)
        assert clean.complete and not clean.counterexamples, clean.summary()
        assert clean.explored > 1


def test_seed_002_loses_the_write_through_the_stale_entry_on_5_10():
    res = find("S51").explore("5.10", budget=2000)
    c = res.counterexamples[0]
    text = c.timeline()
    assert "lost write" in c.reason and "b'c'" in c.reason
    # The step that stores 'c' runs on CPU2 while its TLB entry is stale,
    # after the copy was taken and before the pte switch.
    assert "W STALE" in text
    steps = [s[2] for s in c.steps]
    copied = next(i for i, s in enumerate(steps) if s.startswith("wp_page_copy (page copied"))
    store = next(i for i, s in enumerate(steps) if s.startswith("write(") and "b'c'" in s)
    decided = next(i for i, s in enumerate(steps) if s.startswith("wp_page_copy: copies"))
    assert decided < store < copied
    # Without the deferred flush the copy and the stale store cannot meet:
    # the same program on 5.7 reuses the page (mapcount rule), no copy at all.
    assert not find("S51").explore("5.7", budget=2000).counterexamples


@pytest.mark.parametrize("race,commit", [("S51", "6ce64428d620"), ("S50", "912efa17e512"),
                                         ("S61", "57efa1fe5957")])
def test_the_fix_is_the_era_knob_not_the_version(race, commit):
    # 5.10 with the fix backported (as stable took 6ce64428d620 and 912efa17e512) is clean.
    res = find(race).explore("5.10", budget=2000, backports=(commit,))
    assert res.complete and not res.counterexamples, res.summary()


def test_schedules_rerun_exactly():
    r = find("S51")
    res = r.explore("5.10", budget=2000)
    c = res.counterexamples[0]
    digests = []
    for _ in range(2):
        m, ctx = mmemu.rerun(r.setup, r.threads, c, kernel="5.10", **r.options)
        import hashlib
        h = hashlib.blake2b()
        m._digest_into(h)
        digests.append(h.digest())
        assert ctx["p"].proc_mem_read(ctx["a"] + 8, 1) == b"\0"      # the lost byte, every time
    assert digests[0] == digests[1]
    again = r.explore("5.10", budget=2000)
    assert [x.schedule for x in again.counterexamples] == [x.schedule for x in res.counterexamples]
    assert again.explored == res.explored


def test_state_hashing_explores_fewer_runs_and_finds_the_same():
    r = find("S51")
    plain = r.explore("5.10", state_hashing=False, budget=5000)
    hashed = r.explore("5.10", budget=5000)
    assert plain.complete and hashed.complete
    assert hashed.explored < plain.explored
    assert {tuple(c.schedule) for c in hashed.counterexamples} <= {tuple(c.schedule) for c in plain.counterexamples}


@pytest.mark.parametrize("strategy", ["random", "pct"])
def test_sampling_strategies_find_the_race(strategy):
    res = find("S51").explore("5.10", strategy=strategy, budget=300, seed=1)
    assert res.counterexamples and not res.complete


def test_a_budget_smaller_than_the_space_is_not_complete():
    res = find("S51").explore("5.12", budget=3)
    assert res.explored == 3 and not res.complete


# ---- plain Python bodies, CPUs, waits ------------------------------------------------

def test_plain_bodies_on_a_process_run_on_cpu_index_mod_ncpus():
    seen = []

    def setup(m):
        p = m.spawn()
        return {"p": p, "a": p.mmap(0, 2 * PAGE, RW, PRIV)}

    def body(i):
        def run(m, ctx):
            ctx["p"].write(ctx["a"] + i, bytes([65 + i]))
            seen.append(m._lock.sched._me().cpu)
        return run
    res = mmemu.explore(setup, [body(0), body(1), body(2)], kernel="6.18", ncpus=2, memory=64 * PAGE)
    assert res.complete and not res.counterexamples
    assert set(seen[:3]) == {0, 1}
    m, ctx = mmemu.rerun(setup, [body(0), body(1), body(2)], [], kernel="6.18", ncpus=2, memory=64 * PAGE)
    assert ctx["p"].read(ctx["a"], 3) == b"ABC"


def test_a_fault_waits_for_mmap_lock_held_for_write():
    """mprotect holds mmap_lock for write across its deferred flush: a
    store that faults on another CPU waits for it (and then sees the new
    protection); it never faults in the middle."""
    def setup(m):
        p = m.spawn()
        a = p.mmap(0, PAGE, RW, PRIV)
        p.write(a, b"x")
        return {"p": p, "a": a, "t": p.thread(cpu=1)}

    def protect(m, ctx):
        ctx["p"].mprotect(ctx["a"], PAGE, PROT_READ)

    def store(m, ctx):
        try:
            ctx["t"].write(ctx["a"] + 1, b"y")
            ctx["stored"] = True
        except mmemu.Sigsegv:
            ctx["segv"] = True

    m = mmemu.Machine(kernel="6.18", ncpus=2, memory=64 * PAGE)
    ctx = setup(m)
    s = Scheduler(m, run_at("flush_tlb_range", "store"), record=True)
    s.run([lambda: protect(m, ctx), lambda: store(m, ctx)], ["protect", "store"])
    labels = [st.label for st in s.trace]
    assert any(lab.startswith("woken from its wait for mmap_lock") for lab in labels), labels
    assert ctx.get("segv") and not ctx.get("stored")
    m.check()


def test_a_userfault_sleeps_until_another_body_resolves_it():
    def setup(m):
        p, a, u = missing_page(m)
        return {"p": p, "a": a, "u": u}

    def faulter(m, ctx):
        ctx["got"] = ctx["p"].read(ctx["a"], 2)

    def monitor(m, ctx):
        msg = ctx["u"].read()[0]
        ctx["u"].copy(msg.address & ~(PAGE - 1), b"hi" + bytes(PAGE - 2))

    def check(m, ctx):
        m.check()
        return ctx.get("got") == b"hi"
    res = mmemu.explore(setup, [faulter, monitor], kernel="6.18", check=check, memory=64 * PAGE)
    assert res.complete and not res.counterexamples and res.explored >= 1


def test_bodies_that_wait_for_each_other_end_in_a_deadlock_counterexample():
    def setup(m):
        p = m.spawn()
        u = p.userfaultfd()
        u.api()
        return {"u": u}

    def reader(m, ctx):
        ctx["u"].read()                     # nothing will ever be queued
    res = mmemu.explore(setup, [reader, reader], kernel="6.18", memory=64 * PAGE)
    assert res.counterexamples and res.counterexamples[0].reason.startswith("deadlock")


def test_outside_the_explorer_a_userfault_still_raises_wouldblock():
    m = mmemu.Machine(memory=64 * PAGE)
    p, a, u = missing_page(m)
    t = p.thread()
    with pytest.raises(mmemu.WouldBlock):
        t.read(a, 1)
    u.zeropage(a, PAGE)
    assert t.resume() == b"\0"


def test_a_schedule_that_does_not_fit_is_refused():
    r = find("S51")
    for bad in ([7, 7, 7], [0] * 50, [-1]):
        with pytest.raises(ValueError, match="schedule"):
            mmemu.rerun(r.setup, r.threads, bad, kernel="5.10", **r.options)
    with pytest.raises(TypeError):
        mmemu.rerun(r.setup, r.threads, [0.5], kernel="5.10", **r.options)


def test_explore_rejects_bad_arguments():
    with pytest.raises(ValueError, match="strategy"):
        mmemu.explore(lambda m: None, [], kernel="6.18", strategy="dfs")
    with pytest.raises(ValueError, match="budget"):
        mmemu.explore(lambda m: None, [], kernel="6.18", budget=0)


# ---- the CLI ------------------------------------------------------------------------

def test_cli_explore_prints_the_timeline_or_the_count(capsys):
    from mmemu.cli import main
    assert main(["explore", "S51", "--kernel", "5.10"]) == 0
    out = capsys.readouterr().out
    assert "W STALE" in out and "lost write" in out and "CPU2" in out
    assert main(["explore", "S51", "--kernel", "5.12"]) == 0
    out = capsys.readouterr().out
    assert "(all of them), none wrong" in out
    assert main(["explore", "uffd-wp-deferred-flush-3cpu", "--kernel", "5.10", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["id"] == "S51" and data["counterexamples"] and data["complete"] is True
    assert main(["explore", "S99"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no race scenario" in err


@pytest.mark.parametrize("backports,stale", [((), False), (("99baac21e458-revert",), True)])
def test_a_dontneed_that_overlapped_another_flushes_before_it_returns(backports, stale):
    """B18 (99baac21e458, 4.13, in every modelled version): a second
    MADV_DONTNEED finds the ptes already cleared by a first one whose flush
    is still pending; tlb_finish_mmu sees the nested batch and flushes, so no
    CPU keeps the old page once it returns. With the fix reverted it returns
    while CPU1 still maps the page."""
    from mmemu import MADV_DONTNEED
    m = mmemu.Machine(kernel="5.10", ncpus=2, memory=64 * PAGE, backports=backports)
    p = m.spawn()
    a = p.mmap(0, PAGE, RW, PRIV)
    t = p.thread(cpu=1)
    t.write(a, b"x")                            # CPU1: a writable, dirty entry
    seen = {}

    def first():
        p.madvise(a, PAGE, MADV_DONTNEED)

    def second():
        p.thread(cpu=0).process.madvise(a, PAGE, MADV_DONTNEED)
        seen["tlb"] = m._engine.tlb_entry(1, p.mm, a)

    Scheduler(m, run_at("tlb_finish_mmu", "second")).run([first, second], ["first", "second"])
    assert (seen["tlb"] is not None) == stale, seen
    m.check()


def test_hole_punch_loses_uffd_wp_through_an_alias_but_a_read_of_the_hole_waits():
    """B23 (by design, 5.19+): fault-around through an unregistered alias
    maps the punched folio between the passes, and pass 2's DROP_MARKER
    drops the registered mapping's marker. A read of the registered mapping
    itself between the passes waits in shmem_falloc_wait and loses nothing
    (scenarios.md's case B as written: docs/reference-errata.md 4)."""
    from mmemu.scenarios.races import _stays_protected, puncher
    r = find("S58b")
    for v in ("5.19", "6.18"):
        res = r.explore(v, budget=500)
        assert res.counterexamples, res.summary()
        assert "marker" in res.counterexamples[0].timeline()

    def reader_of_the_hole(m, ctx):
        ctx["r"].read(ctx["S"] + 5 * PAGE, 1)
    res = mmemu.explore(r.setup, [puncher, reader_of_the_hole], kernel="6.18", check=_stays_protected,
                        **r.options)
    assert res.complete and not res.counterexamples and res.explored > 1


@pytest.mark.parametrize("tlb,lands", [("x86", False), ("stale-writes", True)])
def test_a_clean_writable_entry_writes_only_in_the_worst_case_tlb_model(tlb, lands):
    """§17's x86 subtlety: CPU1 read a shared shmem page, so it caches a
    writable but clean entry. While mprotect(PROT_READ) has its flush still
    pending, a store on CPU1 re-walks on x86, finds the pte read-only and
    faults (then waits for mmap_lock and gets SIGSEGV); with
    tlb="stale-writes" the stale entry takes the store."""
    m = mmemu.Machine(kernel="6.18", ncpus=2, memory=64 * PAGE, tlb=tlb)
    p = m.spawn()
    fd = p.memfd_create("f")
    p.ftruncate(fd, PAGE)
    s = p.mmap(0, PAGE, RW, mmemu.MAP_SHARED, fd, 0)
    t = p.thread(cpu=1)
    t.read(s, 1)
    assert m._engine.tlb_entry(1, p.mm, s)[1:] == (True, False)      # writable, clean
    seen = {}

    def protect():
        p.mprotect(s, PAGE, PROT_READ)

    def store():
        try:
            t.write(s, b"z")
            seen["stored"] = True
        except mmemu.Sigsegv:
            seen["segv"] = True

    Scheduler(m, run_at("flush_tlb_range", "store")).run([protect, store], ["protect", "store"])
    assert seen == ({"stored": True} if lands else {"segv": True})
    assert (p.pread(fd, 1, 0) == b"z") == lands
    m.check()
    with pytest.raises(ValueError, match="tlb"):
        mmemu.Machine(tlb="arm")


@pytest.mark.parametrize("strategy", ["random", "pct"])
def test_sampling_is_deterministic_whatever_ran_before(strategy):
    r = find("S51")
    a = r.explore("5.10", strategy=strategy, budget=40, seed=3)
    r.explore("5.12", strategy=strategy, budget=17, seed=9)          # must not change what follows
    b = r.explore("5.10", strategy=strategy, budget=40, seed=3)
    assert [c.schedule for c in a.counterexamples] == [c.schedule for c in b.counterexamples]


# ---- mmap_lock is never held while a thread waits for userspace; lock order ----

def test_an_event_waits_without_mmap_lock_so_the_monitor_is_not_shut_out():
    # userfaultfd_unmap_complete() runs after mmap_write_unlock(): while
    # munmap waits for its UNMAP event to be read, the monitor's UFFDIO_COPY
    # (mmap_lock for read) goes on and sees -EAGAIN (mmap_changing), then it
    # reads the event. Holding the lock across the wait deadlocked here.
    from mmemu.uffd import UFFD_EVENT_UNMAP, UFFD_FEATURE_EVENT_UNMAP

    def setup(m):
        p = m.spawn()
        a = p.mmap(0, 2 * PAGE, RW, PRIV)
        u = p.userfaultfd()
        u.api(UFFD_FEATURE_EVENT_UNMAP)
        u.register(a, 2 * PAGE, UFFDIO_REGISTER_MODE_MISSING)
        return {"p": p, "a": a, "u": u}

    def unmapper(m, ctx):
        ctx["p"].munmap(ctx["a"] + PAGE, PAGE)

    def monitor(m, ctx):
        try:
            ctx["u"].copy(ctx["a"], bytes(PAGE))
        except OSError as e:
            ctx["copy"] = e.errno
        ctx["events"] = [msg.event for msg in ctx["u"].read()]

    def check(m, ctx):
        m.check()
        return ctx["events"] == [UFFD_EVENT_UNMAP]
    res = mmemu.explore(setup, [unmapper, monitor], kernel="6.18", check=check, memory=64 * PAGE)
    assert res.complete and not res.counterexamples
    eagain = mmemu.rerun(setup, [unmapper, monitor], [0], kernel="6.18", memory=64 * PAGE)[1]
    assert eagain["copy"] == 11                      # EAGAIN: the munmap was under way


def _copy_from_another_process(m):
    # A monitor process copies from its own memory, not yet faulted in,
    # into a page of another process registered MISSING.
    p, a, u = missing_page(m)
    mon = m.spawn()
    src = mon.mmap(0, PAGE, RW, PRIV)
    return {"p": p, "a": a, "u": u, "mon": mon, "src": src}


def _copier(m, ctx):
    ctx["u"].copy(ctx["a"], ctx["src"], PAGE, src_process=ctx["mon"])


def test_uffdio_copy_faults_its_source_in_outside_the_destination_lock():
    # mfill_atomic(): copy_from_user under the destination's mmap_lock runs
    # with page faults off; a source not present makes it unlock, fault the
    # source in (taking the source mm's lock) and relock. Never two at once.
    res = mmemu.explore(_copy_from_another_process, [_copier], kernel="6.18", memory=64 * PAGE)
    assert res.complete and not res.counterexamples


def test_taking_a_second_mmap_lock_is_reported_as_a_lock_order_violation(monkeypatch):
    # Without the unlock around the source fault, the copy would hold the
    # destination's mmap_lock while the fault takes the source's: lockdep's
    # recursive-locking report, whether or not this run deadlocks.
    import contextlib

    import mmemu.uffd
    monkeypatch.setattr(mmemu.uffd, "mmap_unlocked", lambda machine: contextlib.nullcontext())
    res = mmemu.explore(_copy_from_another_process, [_copier], kernel="6.18", memory=64 * PAGE)
    (ce,) = res.counterexamples
    assert ce.reason.startswith("lock order: _copier takes mmap_lock of mm 1 while it holds mm 0's")
