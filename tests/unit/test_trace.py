"""Traces (mmemu.trace) and `mmemu replay`: formats, errors naming the line,
and a lackey trace of a real program replayed as postcopy serves it, its
fault count checked against an independent count of the pages it touches."""
import gzip
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from mmemu import trace
from mmemu.cli import main

DATA = Path(__file__).resolve().parent / "data"


def distinct_pages_of_lackey(text):
    """Independent count: parse the lines by hand, every byte range's pages."""
    pages = set()
    for line in text.splitlines():
        if line.startswith("==") or not line.strip():
            continue
        op, rest = line[:2].strip(), line[2:].strip()
        assert op in ("I", "L", "S", "M"), line
        a, n = rest.split(",")
        a, n = int(a, 16), int(n)
        pages.update(range(a >> 12, ((a + max(n, 1) - 1) >> 12) + 1))
    return len(pages)


@pytest.fixture
def lackey_trace(tmp_path):
    """A lackey trace of /bin/true, recorded now where valgrind is installed,
    else the committed head of one recorded with valgrind 3.19."""
    if shutil.which("valgrind"):
        out = tmp_path / "true.lackey"
        subprocess.run(["valgrind", "--tool=lackey", "--trace-mem=yes", f"--log-file={out}", "/bin/true"],
                       check=True, timeout=300)
        return out, out.read_text(encoding="latin-1")
    path = DATA / "true-head.lackey.gz"
    return path, gzip.open(path, "rt", encoding="latin-1").read()


def test_a_real_program_takes_one_missing_fault_per_distinct_page(lackey_trace, capsys):
    path, text = lackey_trace
    want = distinct_pages_of_lackey(text)
    assert main(["replay", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["faults"]["missing"] == out["faults"]["total"] == out["pages"] == want
    assert out["accesses"] >= sum(1 for ln in text.splitlines() if ln[:2] in ("I ", " L", " S", " M"))
    assert set(out["wall"]) >= {"replay_s", "peak_rss_kib"}
    assert main(["replay", str(path), "--json"]) == 0      # deterministic but for "wall"
    again = json.loads(capsys.readouterr().out)
    out.pop("wall"), again.pop("wall")
    assert out == again


def test_the_committed_trace_replays_too(capsys):
    path = DATA / "true-head.lackey.gz"
    text = gzip.open(path, "rt", encoding="latin-1").read()
    assert main(["replay", str(path), "--json", "--accesses", "5000"]) == 0
    out = json.loads(capsys.readouterr().out)
    head = "\n".join([ln for ln in text.splitlines() if not ln.startswith("==")][:5000])
    assert out["faults"]["missing"] <= distinct_pages_of_lackey(head)     # crossings may add pages
    assert out["accesses"] >= 5000


def test_csv_npz_and_errors_that_name_the_line(tmp_path, capsys):
    csv = tmp_path / "t.csv"
    csv.write_text("addr,op\n0x10000,R\n0x10008,W\n65536,w\n0x23000,1\n")
    t = trace.load(csv)
    assert t.addrs.tolist() == [0x10000, 0x10008, 0x10000, 0x23000]
    assert t.writes.tolist() == [False, True, True, True]
    assert t.runs() == [(0x10000, 0x11000), (0x23000, 0x24000)]
    npz = tmp_path / "t.npz"
    np.savez(npz, addrs=t.addrs, writes=t.writes)
    t2 = trace.load(npz)
    assert (t2.addrs == t.addrs).all() and (t2.writes == t.writes).all()
    assert main(["replay", str(npz), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["faults"]["missing"] == 2
    bad = tmp_path / "bad.csv"
    bad.write_text("0x1000,R\n0x2000,R\nzzz,W\n")
    with pytest.raises(trace.TraceError, match=r"bad.csv:3: bad address"):
        trace.load(bad)
    lk = tmp_path / "bad.lackey"
    lk.write_text("==1== Lackey\nI  0401ab70,3\n L 0401ab7x,8\n")
    with pytest.raises(trace.TraceError, match=r"bad.lackey:3: not a lackey access line"):
        trace.load(lk)
    assert main(["replay", str(lk)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad.lackey:3" in err
    assert main(["replay", str(csv), "--pages", "1"]) == 2
    assert "more than --pages 1" in capsys.readouterr().err


def test_an_access_across_a_page_boundary_touches_both_pages(tmp_path):
    lk = tmp_path / "x.lackey"
    lk.write_text(" S 00010ffc,8\n L 00020000,4\n")
    t = trace.load(lk)
    assert t.addrs.tolist() == [0x10ffc, 0x11000, 0x20000]
    assert t.writes.tolist() == [True, True, False]


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
def test_trace_record_then_replay(tmp_path, capsys):
    out = tmp_path / "true.lackey.gz"
    assert main(["trace", "record", "-o", str(out), "--", "/bin/true"]) == 0
    capsys.readouterr()
    t = trace.load(out)
    assert len(t) > 1000 and t.writes.any()
    assert main(["replay", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["faults"]["missing"] == len(t.pages())
    assert main(["trace"]) == 2
    assert "record" in capsys.readouterr().err


def test_a_real_program_through_postcopy_takes_one_first_touch_per_distinct_page(lackey_trace, capsys):
    # Pure postcopy: every page the trace touches is first touched either
    # before the stream delivered it (a remote fault) or after (installed
    # by then): the two add up to the independent count of distinct pages.
    path, text = lackey_trace
    want = distinct_pages_of_lackey(text)
    assert main(["postcopy", "--trace", str(path), "--preempt", "--costs", "default", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    f = out["faults"]
    assert out["pages"] == want
    assert f["remote"] + f["arrived_before_touch"] == want
    assert f["remote"] == f["missing"] > 0 and out["memory_matches_source"]
