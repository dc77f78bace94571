"""VM-scale workloads (issue 12): emulated time from the cost model,
postcopy over a modelled link, live snapshot (sync and WP_ASYNC), the umap
pager's 5.8 self-deadlock, and their CLI."""
import json

import numpy as np
import pytest

import mmemu
from mmemu import constants as C
from mmemu.cli import main
from mmemu.cost import DEFAULT, CostModel, Link
from mmemu.workloads import postcopy, snapshot, umap
from registered import registered

PAGE = C.PAGE_SIZE


def _public(out):
    return {k: v for k, v in out.items() if k != "wall" and not k.startswith("_")}


# ---- emulated time ----------------------------------------------------------------

def test_replay_charges_each_event_its_cost_on_the_cpu_clock():
    m = mmemu.Machine(memory=64 << 20, ncpus=2)
    m.costs = {"tlb_hits": 3, "tlb_misses": 40, "faults": 700, "anon_faults": 500, "zero_faults": 0}
    p = m.spawn()
    a = p.mmap(0, 4 * PAGE, C.PROT_READ | C.PROT_WRITE, C.MAP_PRIVATE | C.MAP_ANONYMOUS)
    t = p.thread(cpu=1)
    # write a (anon fault, miss), read a (hit), read a+1 page (zero-page fault, miss)
    c = t.replay(np.array([a, a, a + PAGE], np.uint64), np.array([1, 0, 0], np.uint8))
    want = c["tlb_misses"] * 40 + c["tlb_hits"] * 3 + c["faults"] * 700 + c["anon_faults"] * 500
    assert c["anon_faults"] == 1 and c["zero_faults"] == 1 and c["faults"] == 2
    assert c["clock"] == m.clock(1) == want > 0
    assert m.clock(0) == 0                                  # another CPU's time did not move


def test_replay_stops_when_the_clock_reaches_until_and_resumes_from_start():
    # The clock is looked at every 64 accesses: it stops at the first such
    # point at or past the limit.
    m = mmemu.Machine(memory=64 << 20, ncpus=1)
    m.costs = {"tlb_hits": 10, "tlb_misses": 10}
    p = m.spawn()
    a = p.mmap(0, PAGE, C.PROT_READ | C.PROT_WRITE, C.MAP_PRIVATE | C.MAP_ANONYMOUS | C.MAP_POPULATE)
    addrs = np.full(300, a, np.uint64)
    c = p.thread(cpu=0).replay(addrs, until=700)
    assert c["accesses"] == c["end"] == 128 and c["clock"] == 1280
    c = p.thread(cpu=0).replay(addrs, start=c["end"])
    assert c["accesses"] == 172 and c["end"] == 300 and c["clock"] == 3000


def test_a_cost_model_refuses_unknown_events_and_bad_values():
    with pytest.raises(ValueError, match="no event"):
        CostModel({"tlb_hit": 1})
    with pytest.raises(ValueError, match="integer"):
        CostModel({"faults": -1})
    with pytest.raises(ValueError, match="no event"):
        mmemu.Machine(memory=64 << 20).costs = {"nonsense": 1}


# ---- postcopy ---------------------------------------------------------------------

def test_postcopy_is_deterministic_bit_for_bit():
    a = postcopy.run(pages=1 << 14, accesses=200_000, vcpus=2, seed=3, costs=DEFAULT)
    b = postcopy.run(pages=1 << 14, accesses=200_000, vcpus=2, seed=3, costs=DEFAULT)
    assert json.dumps(_public(a)) == json.dumps(_public(b))
    assert np.array_equal(a["_faults"], b["_faults"])
    c = postcopy.run(pages=1 << 14, accesses=200_000, vcpus=2, seed=4, costs=DEFAULT)
    assert _public(c) != _public(a)


def test_a_page_request_takes_the_links_latency_with_and_without_preempt():
    # Without a preempt channel the requested page queues behind the stream
    # data in flight; with one it does not (QEMU's 10.6 ms vs 0.57 ms).
    link = Link()
    round_trip = DEFAULT.ns["uffd_faults"]
    # (A stream of 64K pages runs for 215 ms: most requests meet it still running.)
    slow = postcopy.run(pages=1 << 16, accesses=50_000, link=link, costs=DEFAULT)
    fast = postcopy.run(pages=1 << 16, accesses=50_000, link=Link(preempt=True), costs=DEFAULT)
    want_slow = 2 * link.latency_ns + link.queue_ns + link.page_ns + round_trip
    want_fast = 2 * link.latency_ns + link.page_ns + round_trip
    assert slow["latency_us"]["p50"] * 1000 == pytest.approx(want_slow, abs=1)
    assert fast["latency_us"]["p50"] * 1000 == pytest.approx(want_fast, abs=1)
    assert 10_000 < slow["latency_us"]["p50"] < 11_000 and 400 < fast["latency_us"]["p50"] < 700
    assert fast["faults"]["remote"] > slow["faults"]["remote"]      # the guest runs more, so asks more
    for out in (slow, fast):
        f = out["faults"]
        assert sum(out["latency_dist"]) == f["remote"] == f["missing"]
        assert out["memory_matches_source"]
    # Bucket N holds [2^N, 2^(N+1)) us: 10.6 ms is bucket 13, 0.53 ms bucket 9.
    assert slow["latency_dist"][13] > 0 and fast["latency_dist"][9] > 0


def test_every_touched_page_is_one_remote_fault_or_one_the_stream_delivered():
    out = postcopy.run(pages=1 << 12, accesses=100_000, seed=1, link=Link(preempt=True), costs=DEFAULT)
    tr = postcopy._accesses("uniform", 1 << 12, 100_000, 0.2, 1, 0, 0)
    distinct = len(np.unique(tr.addrs >> np.uint64(12)))
    f = out["faults"]
    assert f["remote"] + f["arrived_before_touch"] == distinct


def test_precopy_rounds_leave_fewer_pages_for_postcopy():
    none = postcopy.run(pages=1 << 14, accesses=100_000, costs=DEFAULT, link=Link(preempt=True))
    pre = postcopy.run(pages=1 << 14, accesses=100_000, costs=DEFAULT, link=Link(preempt=True),
                       precopy_rounds=2, dirty_rate=20_000)
    assert pre["precopy"]["pages_sent"] > 1 << 14
    assert pre["precopy"]["dirty_at_switchover"] < 1 << 14
    assert pre["faults"]["remote"] < none["faults"]["remote"]
    assert pre["memory_matches_source"]


def test_guest_blocktime_is_when_every_vcpu_waits_at_once():
    out = postcopy.run(pages=1 << 14, accesses=200_000, vcpus=3, costs=DEFAULT)
    b = out["blocktime_ms"]
    assert len(b["per_vcpu"]) == 3 and 0 < b["total"] <= min(b["per_vcpu"])
    iv = np.array([[0, 0, 10], [1, 5, 20], [0, 12, 30], [1, 25, 40]], np.int64)
    assert postcopy._all_blocked(iv, 2) == (10 - 5) + (20 - 12) + (30 - 25)


# ---- snapshot ---------------------------------------------------------------------

@pytest.mark.parametrize("kernel", ["5.9", "6.18"])
def test_a_sync_snapshot_image_is_memory_at_the_snapshot_point(kernel):
    out = snapshot.run(pages=1 << 12, accesses=60_000, vcpus=2, write_share=0.5, kernel=kernel, costs=DEFAULT)
    assert out["image_matches"]
    assert out["faults"]["uffd"] > 0                       # vCPUs wrote pages the saver had not reached
    s = out["saved"]
    assert s["pages"] == s["by_saver"] + s["by_fault"] == 1 << 12    # each page saved once, one way or the other
    assert s["by_fault"] == out["faults"]["uffd"]
    assert out["stall_us"]["total"] == pytest.approx(out["faults"]["uffd"] * out["stall_us"]["per_fault"], rel=1e-6)


def test_the_image_would_be_wrong_without_saving_before_unprotect(monkeypatch):
    # The resolver records the page before the write goes on; dropping the
    # record leaves pages the vCPUs wrote first unsaved in the image.
    real = mmemu.uffd.Uffd.serve_core

    def no_record(self, resolver, base=0, versions=None, **kw):
        return real(self, resolver, base, None if resolver == "unprotect" else versions, **kw)
    monkeypatch.setattr(mmemu.uffd.Uffd, "serve_core", no_record)
    out = snapshot.run(pages=1 << 12, accesses=60_000, write_share=0.5, costs=DEFAULT)
    assert not out["image_matches"]


def test_an_async_snapshot_needs_wp_async_and_matches_memory_at_its_stop():
    out = snapshot.run(pages=1 << 12, accesses=60_000, write_share=0.5, mode="async", costs=DEFAULT)
    assert out["image_matches"] and out["faults"]["uffd"] == 0 and out["stall_us"]["total"] == 0
    assert out["saved"]["pages"] > 1 << 12                 # written pages are copied again
    with pytest.raises(ValueError, match="WP_ASYNC"):
        snapshot.run(pages=64, accesses=10, mode="async", kernel="6.6")


# ---- umap ---------------------------------------------------------------------------

@pytest.mark.parametrize("kernel,outcome", [("5.7", "completed"), ("5.8", "deadlock"), ("5.9", "completed"),
                                            ("6.18", "completed")])
def test_umap_deadlocks_on_itself_only_on_5_8(kernel, outcome):
    out = umap.run(pages=512, buffer_pages=64, accesses=4000, kernel=kernel)
    assert out["outcome"] == outcome
    if outcome == "deadlock":
        assert "service thread" in out["deadlock"] and out["store_matches"] is None
    else:
        assert out["store_matches"] and out["writebacks"] > 0 and out["evictions"] > 0


# ---- CLI ------------------------------------------------------------------------------

def test_cli_postcopy_json_plot_and_errors(tmp_path, capsys):
    assert main(["postcopy", "--pages", "4096", "--accesses", "20000", "--vcpus", "2", "--costs", "default",
                 "--json", "--plot", str(tmp_path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"faults", "latency_dist", "blocktime_ms", "migration_ms", "pages_per_s", "wall"} <= set(out)
    assert not any(k.startswith("_") for k in out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["postcopy-fault-timeline.png",
                                                           "postcopy-latency-cdf.png",
                                                           "postcopy-region-heatmap.png"]
    assert main(["postcopy", "--pages", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error" in err


def test_cli_snapshot_and_umap(capsys):
    assert main(["snapshot", "--pages", "1024", "--accesses", "10000", "--costs", "default", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["image_matches"]
    assert main(["umap", "--pages", "256", "--buffer", "32", "--accesses", "2000", "--kernel", "5.8"]) == 1
    assert "deadlock" in capsys.readouterr().out


def test_calibrate_measures_and_stores_a_model(tmp_path, capsys):
    path = tmp_path / "costs.json"
    assert main(["calibrate", "-o", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    model = mmemu.cost.load(str(path))
    assert model.ns == out["costs"]["ns"] and model.source.startswith("calibrated on")
    assert model.ns["faults"] > 0 and model.ns["anon_faults"] >= 0
    assert main(["postcopy", "--pages", "1024", "--accesses", "1000", "--costs", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["costs"]["source"] == model.source


def test_timed_threads_never_run_ahead_of_each_other_by_more_than_a_quantum():
    from mmemu.sched import TimedRun
    m = mmemu.Machine(memory=64 << 20, ncpus=2)
    m.costs = {"tlb_hits": 10, "tlb_misses": 10}
    p = m.spawn()
    a = p.mmap(0, PAGE, C.PROT_READ | C.PROT_WRITE, C.MAP_PRIVATE | C.MAP_ANONYMOUS | C.MAP_POPULATE)
    m.set_clock(1, 1000)                                   # CPU 1 starts 1 us late
    fed = [0, 0]
    slices = []

    def feed(i):
        fed[i] += 1
        return mmemu.trace.Trace(np.full(500, a, np.uint64), np.zeros(500, bool)) if fed[i] <= 2 else None

    def on_slice(i, c):
        slices.append((i, m.clock(0), m.clock(1)))
    runner = TimedRun([p.thread(cpu=0), p.thread(cpu=1)], feed, quantum_ns=300, on_slice=on_slice)
    totals = runner.run(until=5000)
    # (the clock is looked at every 64 accesses: 640 ns here)
    assert not runner.done and 5000 <= m.clock(0) < 5640 and 5000 <= m.clock(1) < 5640
    assert slices[0][0] == 0                               # the earlier clock runs first
    assert all(abs(c0 - c1) <= 300 + 640 + 1000 for _, c0, c1 in slices)
    runner.run()
    assert runner.done and runner.totals["accesses"] == 2000 and totals is runner.totals
    assert m.clock(0) == 10_000 and m.clock(1) == 11_000


def test_cli_plots_for_snapshot_umap_and_replay(tmp_path, capsys):
    assert main(["snapshot", "--pages", "1024", "--accesses", "20000", "--costs", "default",
                 "--plot", str(tmp_path)]) == 0
    assert main(["umap", "--pages", "256", "--buffer", "32", "--accesses", "2000", "--plot", str(tmp_path)]) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["snapshot-fault-timeline.png", "snapshot-latency-cdf.png", "snapshot-region-heatmap.png",
                     "umap-fault-timeline.png", "umap-region-heatmap.png"]
    assert all((tmp_path / n).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for n in names)


# ---- the in-core pager (evict and write back) -------------------------------------------

def _pager(resident=8, n=64):
    m = mmemu.Machine(memory=64 << 20)
    p, a, u = registered(m, n)
    store = np.arange(1000, 1000 + n, dtype=np.uint64)
    u.serve_core("pager", base=a, versions=store, resident=resident)
    return m, p, a, u, store


def test_the_in_core_pager_keeps_its_bound_and_writes_back_only_changed_pages():
    m, p, a, u, store = _pager()
    t = p.thread()
    t.replay(np.array([a + i * PAGE for i in range(8)], np.uint64))          # fills 0..7
    t.replay(np.array([a + 3 * PAGE], np.uint64), np.array([1], np.uint8))  # page 3 changes
    st = u.core_stats()
    assert list(st["resident"]) == list(range(8)) and st["evictions"] == 0
    t.replay(np.array([a + i * PAGE for i in range(8, 12)], np.uint64))     # evicts 0..3, oldest first
    st = u.core_stats()
    assert list(st["resident"]) == list(range(4, 12)) and st["evictions"] == 4 and st["writebacks"] == 1
    assert store[3] != 1003 and store[0] == 1000 and store[2] == 1002        # only the changed page went back
    assert p.pagemap(a).present is False and p.pagemap(a + 11 * PAGE).present
    c = t.replay(np.array([a + 3 * PAGE], np.uint64))                        # refault: the written contents
    assert c["uffd_faults"] == 1 and m._engine.versions(p.mm, a + 3 * PAGE, 1)[0] == store[3]
    m.check()


def test_the_in_core_pager_survives_save_and_load(tmp_path):
    m, p, a, u, store = _pager()
    rng = np.random.default_rng(0)
    addrs = (a + rng.integers(0, 64, 500).astype(np.uint64) * PAGE).astype(np.uint64)
    writes = rng.random(500) < 0.3
    p.thread().replay(addrs, writes)
    m.save(tmp_path / "m")
    m2 = mmemu.Machine.load(tmp_path / "m")
    u2 = next(iter(m2._uffds.values()))
    assert list(u2.core_stats()["resident"]) == list(u.core_stats()["resident"])
    c1 = p.thread().replay(addrs, writes)
    c2 = m2.processes[0].thread().replay(addrs, writes)
    assert c1 == c2 and u.core_stats()["evictions"] == u2.core_stats()["evictions"]


def test_pager_arguments_are_checked():
    m, p, a, u, store = _pager()
    with pytest.raises(ValueError, match="resident"):
        u.serve_core("copy", base=a, versions=store, resident=4)
    with pytest.raises(ValueError, match="resident"):
        u.serve_core("pager", base=a, versions=store)
    with pytest.raises(ValueError, match="resident >= 1"):
        u.serve_core("pager", base=a, versions=store, resident=0)


def test_umap_in_core_matches_the_same_trace_with_every_page_resident():
    out = umap.run(pages=4096, buffer_pages=256, accesses=200_000, in_core=True)
    assert out["store_matches"] and out["evictions"] > 0 and out["writebacks"] > 0
    assert out["faults"]["missing"] == out["evictions"] + 256


def test_a_link_needs_its_source_and_one_arrival_per_page():
    m, p, a, u, store = _pager()
    for kw in ({"arrival": np.zeros(8, np.int64)},                          # no source
               {"versions": store, "arrival": np.zeros(8, np.int64)},        # 64 pages, 8 times
               {"versions": store, "arrival": np.zeros(64)}):               # not integers
        with pytest.raises(ValueError, match="arrival"):
            u.serve_core("copy", base=a, link=Link(), **kw)
    for bad in (5, {"latency_ns": 1}):                                      # not a Link
        with pytest.raises(TypeError, match="link"):
            u.serve_core("copy", base=a, versions=store, link=bad, arrival=np.zeros(64, np.int64))
    u.serve_core("copy", base=a, versions=store, link=Link(), arrival=np.zeros(64, np.int64))
    assert u.core_stats()["faults"] == 0


def test_hostile_arguments_end_in_clear_errors_and_change_nothing(tmp_path):
    m, p, a, u, store = _pager()
    with pytest.raises(ValueError, match="resident"):
        u.serve_core("pager", base=a, versions=store, resident=2**40)    # not a 2^40-entry ring
    assert len(u.core_stats()["resident"]) == 0                           # the old pager is still there
    m.costs = {"faults": np.int64(7)}                                     # numpy integers are integers
    assert m.costs["faults"] == 7
    for bad in (dict(latency_us=float("nan")), dict(gbps=float("inf")), dict(queue_bytes=2**70)):
        with pytest.raises(ValueError, match="link"):
            Link(**bad)
    with pytest.raises(ValueError, match="quantum_us"):
        postcopy.run(pages=64, accesses=10, quantum_us=-1)
    with pytest.raises(ValueError, match="save_gbps"):
        snapshot.run(pages=64, accesses=10, save_gbps=float("nan"))
    with pytest.raises(ValueError, match="No such file"):
        mmemu.cost.load(str(tmp_path / "missing.json"))                  # a path given must exist
    assert main(["postcopy", "--costs", str(tmp_path / "missing.json"), "--pages", "64"]) == 2
