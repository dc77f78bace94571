"""mmemu.host.diff: generation, survey, shrinking and the CLI, checked
without the engine: against the host itself (must agree: the oracle is
deterministic), and against a deliberately broken machine (must be caught
and shrunk to a minimal program).
"""
import io

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hseed

from mmemu import program as P
from mmemu.host import HostMachine
from mmemu.host import diff

pytestmark = pytest.mark.host


@settings(max_examples=150, phases=[Phase.generate], database=None, deadline=None,
          suppress_health_check=list(HealthCheck))
@hseed(5)
@given(diff.programs())
def test_generated_programs_are_valid(program):
    P.check(program)
    regions = [s for s in program if s["op"] == "mmap" and "name" in s]
    assert regions and all(1 <= r["pages"] <= 8 for r in regions)
    files = [s for s in program if s["op"] == "memfd_create"]
    assert len(files) <= diff.MAX_FILES
    assert len(program) <= 2 * len(files) + len(regions) + 12


def _ops(steps):
    for s in steps:
        yield s
        yield from _ops(s.get("body", []))


def test_generator_covers_the_file_and_swap_ops():
    """Over a few hundred programs every issue-4 operation appears, with
    files of 1-16 pages, both kinds of file mapping, and a fork child using
    an inherited descriptor: else the survey would not exercise them."""
    seen = set()
    sizes = set()

    @settings(max_examples=300, phases=[Phase.generate], database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @hseed(7)
    @given(diff.programs())
    def collect(program):
        for s in _ops(program):
            op = s["op"]
            if op == "mmap" and "fd" in s:
                op = "mmap-file-" + s["flags"].split("|")[0]
            elif op == "madvise":
                op = s["advice"]
            elif op == "fallocate":
                op = "punch" if "PUNCH" in str(s["mode"]) else "fallocate"
            elif op == "ftruncate" and program.index(s) < 6:
                sizes.add(s["len"] // 4096)
            seen.add(op)
        for s in program:
            if s["op"] == "fork":
                if any("fd" in b for b in _ops(s.get("body", []))):
                    seen.add("child-uses-inherited-fd")

    collect()
    want = {"memfd_create", "ftruncate", "pwrite", "pread", "close", "punch", "fallocate",
            "mmap-file-MAP_SHARED", "mmap-file-MAP_PRIVATE", "MADV_PAGEOUT", "MADV_REMOVE",
            "MADV_COLD", "clear_refs", "fork", "child-uses-inherited-fd"}
    assert want <= seen, want - seen
    assert min(sizes) == 1 and max(sizes) >= 12


def test_host_agrees_with_itself(need):
    """Two host runs of the same programs normalise to the same observations;
    otherwise every divergence the oracle reports could be noise."""
    need("pfns", "kpage")
    with HostMachine() as host:
        results = diff.survey(40, 11, host, HostMachine, names=("host", "host"))
    assert len(results) == 40
    bad = [(p, o) for p, o in results if o.status not in ("agree", "unsupported")]
    assert not bad, str(bad[0][1].divergence)


def test_broken_machine_is_caught_and_shrunk(need, no_exclusive_bit):
    need("pfns", "kpage")
    with HostMachine() as host:
        results = diff.survey(20, 3, host, no_exclusive_bit)
        found = [o for _p, o in results if o.status == "diverge"]
        assert found, "a pagemap without bit 56 went unnoticed in 20 programs"
        key = found[0].divergence.key
        assert key[1] in ("snapshot.pm", "outcome.pagemap")
        program, outcome = diff.shrink(key, 20, 3, host, no_exclusive_bit)
    # The minimum: one region of one page, and the one step that fails.
    assert len(program) == 2, P.pretty(program)
    assert program[0]["op"] == "mmap" and program[0]["pages"] == 1
    assert outcome.divergence.key == key == (program[1]["op"], key[1])
    assert "x" in outcome.divergence.a["pm"] and "x" not in outcome.divergence.b["pm"]


@pytest.mark.parametrize("swap", ["own", "foreign"])
def test_cli_against_host_reports_full_agreement(need, agreement, request, swap):
    """The host agrees with itself on every program it runs. With another
    process's swap on (foreign), the programs that page out are counted
    unsupported with that reason and the rest still run: the feature probe
    must not turn the whole run into exit 2."""
    need("pfns")
    if swap == "foreign":
        request.getfixturevalue("foreign_swap")
    out = io.StringIO()
    code = diff.main(["--against", "host", "--programs", "15", "--seed", "2",
                      "--no-progress"], out=out)
    text = out.getvalue()
    assert code == 0, text
    got = agreement(text)
    assert got["agree"] == got["compared"] == 15 - got["unsupported"], text
    if swap == "foreign":
        assert got["unsupported"] > 0, text


def test_foreign_swap_leaves_out_exactly_the_programs_that_page_out(need, foreign_swap):
    """With another process's swap on, a program is unsupported (reason
    FOREIGN_SWAP) only if it pages out, and every other program is compared
    and agrees: one MADV_PAGEOUT costs its own program, not the run."""
    from mmemu.host.machine import FOREIGN_SWAP
    need("pfns", "kpage")
    make = diff.engine_factory("host", 3, diff.DEFAULT_SWAP)
    features, _dropped = diff.probe(make)           # what the engine models
    with HostMachine(swap=diff.DEFAULT_SWAP) as host:
        results = diff.survey(40, 3, host, make, features=features)
    skipped = 0
    for prog, o in results:
        pages_out = any(s["op"] == "madvise" and s.get("advice") == "MADV_PAGEOUT"
                        for s in _ops(prog))
        if o.status == "unsupported":
            assert pages_out and o.reason == FOREIGN_SWAP, (o.detail, P.pretty(prog))
            skipped += 1
        else:
            assert o.status == "agree", (o.status, o.divergence, P.pretty(prog))
    assert 0 < skipped < len(results)


def test_cli_prints_the_minimal_divergent_program(need, monkeypatch, no_exclusive_bit):
    need("pfns", "kpage")
    # (no hugetlb programs: the broken engine has no pool)
    monkeypatch.setattr(diff, "engine_factory",
                        lambda kernel, seed, swap=0, thp="madvise", hugepages=None: no_exclusive_bit)
    out = io.StringIO()
    code = diff.main(["--programs", "10", "--seed", "4", "--no-progress", "--shrink", "1",
                      "--swap", "0", "--no-hugetlb"], out=out)
    text = out.getvalue()
    assert code == 1, text
    assert "=== divergence 1:" in text and "first divergence at step 1" in text
    assert "0      main   mmap a = 1 pages" in text and "as JSON: [" in text


def test_cli_without_engine_says_so(monkeypatch):
    def missing(kernel, seed, swap=0, thp="madvise", hugepages=None):
        raise diff.EngineMissing("mmemu.Machine is not available: test")
    monkeypatch.setattr(diff, "engine_factory", missing)
    out = io.StringIO()
    assert diff.main(["--programs", "1", "--no-progress"], out=out) == 2
    assert "not available" in out.getvalue()
