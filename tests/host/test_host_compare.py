"""mmemu.host.compare: frame identities instead of PFNs, first divergence.

If identities were wrong, the oracle would either miss a COW bug (two
machines with different sharing compared equal) or cry wolf on every run
(different PFN numbers compared unequal).
"""
import copy

import pytest

from mmemu.host.compare import compare, normalize

pytestmark = pytest.mark.host

ANON = ["anon", "lru", "mmap", "swapbacked", "uptodate"]
ZERO = ["zero_page"]


def page(pfn=None, pm=None, count=1, kpf=ANON):
    if pfn is None:
        return {"pm": pm or ""}
    return {"pm": pm if pm is not None else "p", "pfn": pfn, "kpagecount": count, "kpf": kpf}


def rec(step, snap, op="write", proc="main", outcome=None):
    return {"step": step, "proc": proc, "op": op, "outcome": outcome or {"ok": None},
            "snapshot": snap}


def fork_then_write(pfn_shared, pfn_new, zero, copy_to="main"):
    """fork shares frame X; then the parent writes and gets a new frame
    (copy_to="main"), or wrongly the child does (copy_to="c")."""
    s1 = {"main": {"a": [page(pfn_shared, count=2), page(zero, count=0, kpf=ZERO)]},
          "c": {"a": [page(pfn_shared, count=2), page(zero, count=0, kpf=ZERO)]}}
    new = {"main": pfn_new if copy_to == "main" else pfn_shared,
           "c": pfn_new if copy_to == "c" else pfn_shared}
    s2 = {p: {"a": [page(new[p], pm="px"), page(zero, count=0, kpf=ZERO)]} for p in new}
    return [rec("0", s1, op="fork", outcome={"ok": "c"}), rec("1", s2)]


def test_same_sharing_with_other_numbers_agrees():
    a = fork_then_write(0x1000, 0x2000, 0x33)
    b = fork_then_write(7, 9, 1)
    assert compare(a, b) is None
    n = normalize(a)
    assert n[0]["snapshot"]["c"]["a"][0]["frame"] == "F[0:main:a+0]"
    assert n[1]["snapshot"]["main"]["a"][0]["frame"] == "F[1:main:a+0]"
    assert n[0]["snapshot"]["main"]["a"][1]["frame"] == "zero"
    assert "lru" not in n[0]["snapshot"]["main"]["a"][0]["kpf"]


def test_copy_going_to_the_wrong_process_is_a_divergence():
    d = compare(fork_then_write(0x1000, 0x2000, 0x33),
                fork_then_write(0x1000, 0x2000, 0x33, copy_to="c"),
                program=[{"op": "fork", "name": "c"}])
    assert d is not None
    assert (d.step, d.op, d.field) == ("1", "write", "snapshot main a+0 frame")
    assert d.a["frame"] == "F[1:main:a+0]" and d.b["frame"] == "F[0:main:a+0]"
    assert d.key == ("write", "snapshot.frame")
    text = str(d)
    assert "first divergence at step 1 (write)" in text and "fork -> c" in text


def test_reappearing_pfn_after_a_gap_is_a_new_frame():
    """Host: the frame is freed and its PFN handed straight back (pcp lists
    are LIFO); engine: a different frame number. Both are 'a new frame'."""
    def run(p1, p2):
        return [rec("0", {"main": {"a": [page(p1)]}}),
                rec("1", {"main": {"a": [page()]}}, op="madvise"),
                rec("2", {"main": {"a": [page(p2)]}})]
    assert compare(run(5, 5), run(5, 6)) is None
    assert normalize(run(5, 5))[2]["snapshot"]["main"]["a"][0]["frame"] == "F[2:main:a+0]"
    # But a frame present throughout keeps its identity: reuse vs copy differs.
    keep = [rec("0", {"main": {"a": [page(5)]}}), rec("1", {"main": {"a": [page(5)]}})]
    moved = [rec("0", {"main": {"a": [page(5)]}}), rec("1", {"main": {"a": [page(6)]}})]
    d = compare(keep, moved)
    assert d is not None and d.field == "snapshot main a+0 frame"


def test_outcome_pfns_use_the_same_identities():
    def run(p):
        return [rec("0", {"main": {"a": [page(p)]}}, op="pagemap",
                    outcome={"pagemap": [{"present": True, "swapped": False,
                                          "file_shared": False, "exclusive": True,
                                          "soft_dirty": p == 1, "uffd_wp": False,
                                          "pfn": p, "guard": False}]}),
                rec("1", {"main": {"a": [page(p)]}}, op="frame",
                    outcome={"frame": {"pfn": p, "kpagecount": 1, "kpf": ANON}})]
    assert compare(run(1), run(2)) is None        # soft_dirty is not compared by default
    n = normalize(run(1))
    assert n[0]["outcome"]["pagemap"][0]["pfn"] == "F[0:main:a+0]"
    assert n[1]["outcome"]["frame"]["pfn"] == "F[0:main:a+0]"
    assert compare(run(1), run(2), ignore=()) is not None


def test_first_divergence_wins_and_missing_steps_are_reported():
    a = fork_then_write(1, 2, 3)
    b = copy.deepcopy(a)
    b[0]["outcome"] = {"errno": "ENOMEM"}
    b[1]["snapshot"]["main"]["a"][0]["pm"] = "p"
    d = compare(a, b)
    assert (d.step, d.field) == ("0", "outcome")
    assert d.key == ("fork", "outcome.errno/ok")
    d = compare(a, a[:1])
    assert d.field == "missing" and d.a == "1" and d.b is None
    c = copy.deepcopy(a)
    c[1]["snapshot"]["main"]["a"][0]["kpagecount"] = 2
    assert compare(a, c).field == "snapshot main a+0 kpagecount"


def test_errors_compare_by_type_not_wording():
    def run(err, detail):
        return [rec("0", {"main": {}}, op="pin_read",
                    outcome={"error": err, "detail": detail})]
    assert compare(run("ValueError", "range 4096+4 outside 1 pages"),
                   run("ValueError", "range outside the pinned pages")) is None
    d = compare(run("ValueError", "x"), run("NotImplementedError", "x"))
    assert d is not None and d.field == "outcome"


def test_a_host_folio_still_under_swap_writeback_is_not_a_divergence():
    # After MADV_PAGEOUT the host may still be writing the folio out when the
    # next write reuses it, so it stays in the swapcache there; the engine
    # drops it. Only that lag is tolerated, and only on the host's side.
    host = [rec("0", {"main": {"a": [page(7, pm="px", kpf=ANON + ["swapcache"])]}})]
    engine = [rec("0", {"main": {"a": [page(9, pm="px")]}})]
    assert compare(host, engine) is None
    assert compare(engine, host) is not None                 # the engine keeping it is a bug
    shared = [rec("0", {"main": {"a": [page(9, pm="p")]}})]
    assert compare([rec("0", {"main": {"a": [page(7, pm="p", kpf=ANON + ["swapcache"])]}})],
                   shared) is not None                         # not exclusive: compared


def test_the_swap_device_number_is_not_compared_but_markers_are():
    """A page swapped to the host's device 1 (another process's file held
    slot 0 when the machine's was enabled) is the engine's device 0: the
    same observation. A uffd-wp marker (type 31) against a real swap entry
    still differs."""
    def swapped(swp):
        return [rec("0", {"main": {"a": [{"pm": "s", "swap": swp}]}}, op="madvise")]
    assert compare(swapped([1, None]), swapped([0, None])) is None
    d = compare(swapped([31, 1]), swapped([0, None]))
    assert d is not None and d.field == "snapshot main a+0 swap"
