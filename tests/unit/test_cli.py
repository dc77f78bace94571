"""The `mmemu` command (mmemu.cli, and mmemu.host.diff's arguments).

A failure here means a user meets what issue 10 reported: a matrix header
that prints "6/8" for 6.18, bug tags nobody explains, a traceback (exit 1)
for a typo, output that a script cannot parse, or a progress bar in a log.
"""
import csv
import io
import json
import subprocess
import sys

import pytest

import mmemu
from mmemu import cli
from mmemu.eras import CHANGES, CHANGES_BY_COMMIT, VERSIONS, _key
from mmemu.scenarios import all_scenarios
from mmemu.scenarios.bugs import BUGS, BUGS_BY_TAG, bug_tags


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def columns(lines, width):
    """Read a vertically written header: column i top to bottom."""
    cells = [line[width:].ljust(200)[::2] for line in lines]
    return ["".join(c[i] for c in cells).strip() for i in range(len(cells[0]))]


# --- the matrix header ----------------------------------------------------------------

def test_header_writes_every_version_and_era_in_full(capsys):
    # If only the last digit were printed, 5.10 and 6.18 would read "5/0" and "6/8".
    code, out, err = run(capsys, "scenarios", "--only", "S3", "--kernel", "5.10",
                         "--kernel", "6.18", "--kernel", "5.7", "--kernel", "5.12",
                         "--no-progress")
    assert code == 0, out + err
    lines = out.splitlines()
    first_row = next(i for i, line in enumerate(lines) if line.startswith("S3 "))
    width = len("S3/single-PTE-THP-swapped") + 2      # the longest row id S3 has
    header = lines[:first_row]
    era_at = next(i for i, line in enumerate(header) if line.startswith("era"))
    assert columns(header[:era_at], width)[:4] == ["5.10", "6.18", "5.7", "5.12"]
    assert columns(header[era_at:], width)[:4] == ["E2", "E7", "E0", "E2b"]
    assert "eras: E2 5.10, E7 6.18, E0 5.7, E2b 5.12" in out


def test_header_of_every_version_reads_back_and_is_deterministic():
    a = cli.header_lines(VERSIONS, 8)
    assert a == cli.header_lines(VERSIONS, 8)
    era_at = next(i for i, line in enumerate(a) if line.startswith("era"))
    assert columns(a[:era_at], 8)[:len(VERSIONS)] == list(VERSIONS)
    eras = [e for e in columns(a[era_at:], 8) if e]
    assert eras == ["E0", "E1", "E2", "E2b", "E3", "E4", "E5", "E6", "E7"]


# --- the bug legend -------------------------------------------------------------------

def test_every_bug_tag_a_scenario_names_has_a_legend_row():
    used = {t for s in all_scenarios() for t in bug_tags(s.bug)}
    assert used, "no scenario names a bug?"
    missing = sorted(used - set(BUGS_BY_TAG))
    assert not missing, f"bug tags without a row in mmemu/scenarios/bugs.py: {missing}"
    assert len(BUGS_BY_TAG) == len(BUGS), "a tag has two rows"
    for b in BUGS:
        assert b.what and b.introduced and b.fixed and "\n" not in b.line()


def test_legend_agrees_with_the_era_table():
    # A fix the era table keys by commit must be named by the bug's row, and
    # every commit a row names must be a change the era table knows.
    for b in BUGS:
        for commit in b.fixes:
            assert commit in CHANGES_BY_COMMIT, (b.tag, commit)
            assert commit in b.fixed or CHANGES_BY_COMMIT[commit].title in b.fixed, b.tag
    for c in CHANGES:
        for part in c.bug.split(";"):
            words = part.replace(",", " ").split()
            if "fixed" in words:
                for tag in (w for w in words if w[:1] == "B" and w[1:2].isdigit()):
                    assert c.commit in BUGS_BY_TAG[tag].fixes, (tag, c.commit)


def test_matrix_prints_one_legend_line_per_shown_bug(capsys):
    code, out, _ = run(capsys, "scenarios", "--only", "S3,S69,S54", "--kernel", "5.7",
                       "--no-progress")
    assert code == 0
    legend = [line.strip() for line in out.splitlines() if line.startswith("  B")]
    assert [line.split()[0] for line in legend] == ["B2", "B2a", "B2b", "B12", "B21"]
    assert "CVE-2020-29374" in legend[0] and "introduced" in legend[0] and "fixed" in legend[0]


def test_bugs_command_lists_every_tag_the_scenarios_use(capsys):
    code, out, _ = run(capsys, "bugs")
    assert code == 0
    listed = [line.split()[0] for line in out.splitlines()]
    assert listed == [b.tag for b in BUGS]
    code, out, _ = run(capsys, "bugs", "--json")
    rows = json.loads(out)
    assert {r["tag"] for r in rows if r["scenarios"]} == \
        {t for s in all_scenarios() for t in bug_tags(s.bug)}


# --- bad input: one line on stderr, exit status 2 ---------------------------------------

BAD = [
    ["scenarios", "--kernel", "5.6"],
    ["scenarios", "--kernel", "6.19"],
    ["scenarios", "--only", "S999"],
    ["scenarios", "--only", "S3,nonsense"],
    ["scenarios", "--only", ","],
    ["scenarios", "--json", "--csv"],
    ["scenarios", "--bogus"],
    ["eras", "extra"],
    ["frobnicate"],
    [],
    ["diff", "--kernel", "bogus"],
    ["diff", "--kernel", "5.6"],
    ["diff", "--programs", "0"],
    ["diff", "--programs", "ten"],
    ["diff", "--max-steps", "0"],
    ["diff", "--shrink", "-1"],
    ["diff", "--seed", "x"],
    ["diff", "--swap", "16X"],
    ["diff", "--swap", "-1"],
    ["diff", "--swap", "16MB"],
    ["diff", "--swap", "4k"],          # a size, but too small for mkswap
    ["diff", "--swap", "40001"],       # not whole pages
    ["diff", "--against", "nobody"],
    ["diff", "--json", "--bogus"],
]


@pytest.mark.parametrize("argv", BAD, ids=lambda a: " ".join(a) or "(none)")
def test_bad_input_is_one_line_and_exit_2(capsys, argv):
    code, out, err = run(capsys, *argv)
    assert code == 2, err
    assert out == ""
    assert len(err.splitlines()) == 1 and err.endswith("\n"), err
    assert err.startswith("mmemu") and "error:" in err and "Traceback" not in err


@pytest.mark.parametrize("argv", [["scenarios", "--kernel", "5.6"], ["diff", "--programs", "0"],
                                  ["diff", "--swap", "1Q"]])
def test_bad_input_from_the_shell(argv, child_python):
    py, env, cwd = child_python
    p = subprocess.run([*py, "-m", "mmemu", *argv], capture_output=True, text=True,
                       timeout=60, env=env, cwd=cwd)
    assert p.returncode == 2 and p.stdout == "" and len(p.stderr.splitlines()) == 1, p.stderr


def test_version(capsys, child_python):
    code, out, err = run(capsys, "--version")
    assert code == 0 and out == f"mmemu {mmemu.__version__}\n"
    py, env, cwd = child_python
    p = subprocess.run([*py, "-m", "mmemu", "--version"], capture_output=True,
                       text=True, timeout=60, env=env, cwd=cwd)
    assert p.returncode == 0 and p.stdout.strip() == f"mmemu {mmemu.__version__}"


# --- machine-readable output -----------------------------------------------------------

def test_scenarios_json_is_all_of_stdout(capsys):
    # --progress forces a bar: it must go to stderr, never into the JSON.
    code, out, err = run(capsys, "scenarios", "--only", "S3,S69", "--kernel", "5.7",
                         "--kernel", "6.18", "--json", "--progress")
    assert code == 0
    rows = json.loads(out)
    assert len(rows) == 2 * 15    # S3 on its 14 backings (base, swapped, 8 THP, 2 mTHP, 2 hugetlb), S69; two versions
    assert set(rows[0]) == {"id", "name", "title", "bug", "backing", "kernel", "version",
                            "era", "label", "status", "expected", "detail"}
    s69 = {r["kernel"]: r for r in rows if r["id"] == "S69"}
    assert s69["6.18"]["label"] == "bug" and s69["6.18"]["era"] == "E7"
    # 5.7 has no PAGEMAP_SCAN: the cell did not run, so it is n/a, not "as expected".
    assert s69["5.7"]["label"] == s69["5.7"]["status"] == "n/a" and s69["5.7"]["expected"] is None
    assert "scenarios" in err       # the forced bar


def test_scenarios_summary_counts_na_apart(capsys):
    # A cell whose version lacks the interface is n/a: counted apart from the
    # cells that ran as expected, drawn as "-", and never the exit status.
    code, out, _ = run(capsys, "scenarios", "--only", "S3,S69", "--kernel", "5.7",
                       "--kernel", "6.18", "--no-progress")
    assert code == 0
    # S3 on 14 backings and S69, on two versions; on 5.7 S3 leaks on all its
    # backings but partial-mremap-THP and the mTHP ones (n/a: 6.8+), on 6.18
    # on its two hugetlb ones (B2b), and S69's bug is 6.18's.
    assert "30 runs: 27 as expected (14 reproduce their bug), 3 n/a (the era lacks the feature), " \
           "0 unexpected" in out
    row = next(line for line in out.splitlines() if line.startswith("S69 "))
    assert row.split()[1:3] == ["-", "B"]


def test_summary_line_keeps_skips_apart_from_na():
    from mmemu.cli import summary_line
    from mmemu.scenarios import Result
    scn = next(s for s in all_scenarios() if s.id == "S3")      # B2 reproduces on 5.7
    results = [Result(scn, "5.7", "fail"), Result(scn, "6.18", "pass"), Result(scn, "6.18", "n/a"),
               Result(scn, "6.18", "skip"), Result(scn, "6.18", "fail")]
    assert summary_line(results) == ("5 runs: 2 as expected (1 reproduce their bug), 1 n/a (the era "
                                     "lacks the feature), 1 skipped (cannot run here), 1 unexpected")


def test_scenarios_csv_parses(capsys):
    code, out, _ = run(capsys, "scenarios", "--only", "S3", "--kernel", "5.7", "--kernel", "5.10",
                       "--csv", "--no-progress")
    assert code == 0
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == ["id", "name", "bug", "5.7", "5.10"]
    assert rows[1] == ["S3", "cow-vmsplice-unmap-child", "B2", "bug", "pass"]


def test_eras_json_and_csv(capsys):
    code, out, _ = run(capsys, "eras", "--json")
    assert code == 0
    doc = json.loads(out)
    # Every modelled version in order, then any later release a Change comes
    # from (stable backports only): each change listed once.
    listed = [d["version"] for d in doc]
    assert listed[:len(VERSIONS)] == list(VERSIONS)
    assert all(_key(v) > _key(VERSIONS[-1]) for v in listed[len(VERSIONS):])
    assert sum(len(d["changes"]) for d in doc) == len(CHANGES)
    assert doc[VERSIONS.index("5.12")]["era"] == "E2b"
    code, out, _ = run(capsys, "eras", "--csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert {r["commit"] for r in rows if r["commit"]} == {c.commit for c in CHANGES}
    assert {r["version"] for r in rows} == set(listed)


def test_no_progress_bar_when_stderr_is_not_a_terminal(capsys):
    code, out, err = run(capsys, "scenarios", "--only", "S3", "--kernel", "5.7")
    assert code == 0 and err == ""


# --- sizes ----------------------------------------------------------------------------

@pytest.mark.parametrize("text,size", [("4096", 4096), ("4k", 4096), ("4K", 4096),
                                       ("4KiB", 4096), ("16M", 16 << 20), ("16MiB", 16 << 20),
                                       ("16m", 16 << 20), ("1G", 1 << 30), ("1GiB", 1 << 30),
                                       ("2T", 2 << 40), ("512B", 512), ("0", 0),
                                       (" 8 M ", 8 << 20)])
def test_sizes_take_binary_suffixes(text, size):
    assert cli.parse_size(text) == size


@pytest.mark.parametrize("text", ["", "M", "-1", "1.5M", "16MB", "16 kB", "16X", "0x10", "1e6"])
def test_bad_sizes_are_refused(text):
    with pytest.raises(ValueError, match="bad size"):
        cli.parse_size(text)


def test_diff_swap_takes_a_suffix():
    from mmemu.host import diff
    assert diff._parser().parse_args(["--swap", "16M"]).swap == 16 << 20
    assert diff._parser().parse_args(["--swap", "64KiB"]).swap == 64 << 10
    assert diff._parser().parse_args(["--swap", "0"]).swap == 0
    assert diff._parser().parse_args([]).swap == diff.DEFAULT_SWAP


# --- diff on the host ------------------------------------------------------------------

def _need_pfns():
    from mmemu.host import capabilities
    caps = capabilities()
    if not caps.pfns:
        pytest.skip(caps.why_not("pfns"))


def run_diff(capsys, *argv):
    """run(capsys, "diff", ...), skipped where the host cannot compare (exit 2
    with its reason: e.g. swap of another process is on, so MADV_PAGEOUT
    cannot be compared)."""
    code, out, err = run(capsys, "diff", *argv)
    if code == 2:
        pytest.skip(f"the host cannot run mmemu diff now: {err.strip()}")
    return code, out, err


def test_diff_json_is_all_of_stdout_and_draws_no_bar(capsys):
    _need_pfns()
    code, out, err = run_diff(capsys, "--against", "host", "--programs", "3", "--swap", "0",
                              "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["agree"] == doc["compared"] == 3 and doc["divergences"] == []
    assert "agreement: 3/3" in err
    assert "prog/s" not in err and "\r" not in err      # no tqdm: stderr is not a terminal


def test_diff_text_goes_to_stdout_and_no_bar_to_a_redirected_stderr(capsys):
    _need_pfns()
    code, out, err = run_diff(capsys, "--against", "host", "--programs", "2", "--swap", "0")
    assert code == 0, err
    assert "agreement: 2/2" in out and err == ""


def test_diff_json_reports_a_shrunk_divergence(capsys, monkeypatch, no_exclusive_bit):
    _need_pfns()
    from mmemu.host import capabilities, diff
    if not capabilities().kpage:
        pytest.skip(capabilities().why_not("kpage"))
    monkeypatch.setattr(diff, "engine_factory",
                        lambda kernel, seed, swap=0, thp="madvise", hugepages=None: no_exclusive_bit)
    code, out, err = run_diff(capsys, "--programs", "10", "--seed", "4", "--shrink", "1",
                              "--swap", "0", "--json", "--no-hugetlb")
    assert code == 1, err
    doc = json.loads(out)
    d = doc["divergences"][0]
    assert d["shrunk"] and d["program"][0]["op"] == "mmap" and len(d["program"]) == 2
    assert d["text"].startswith("first divergence at step 1")


class _FakeGuest:
    """What diff._oracle asks of a booted guest, without QEMU."""
    info = {"package": "linux-image-fake", "debian_version": "6.12.118-1"}
    boot_seconds, accel, version = 0.0, "tcg", "6.12.118"

    def __init__(self, why_no_pool):
        self.why_no_pool, self.asked = why_no_pool, []

    def func(self, where, *args):
        self.asked.append((where, args))
        if where == "mmemu.host.caps:capabilities":
            from types import SimpleNamespace
            return SimpleNamespace(thp="madvise")
        if where == "mmemu.host.hugetlb:why_no_pool":
            return self.why_no_pool
        return None


@pytest.mark.parametrize("why", [None, "setting nr_hugepages needs root"])
def test_diff_against_a_vm_gives_the_guest_and_the_engine_the_guests_hugetlb_pool(
        monkeypatch, why):
    # Without it the VM oracle ran no hugetlb programs (no pool on either side).
    from mmemu import constants as C
    from mmemu.host import diff, vm
    g = _FakeGuest(why)
    made = []
    monkeypatch.setattr(vm, "guest", lambda spec, progress=None: g)
    monkeypatch.setattr(vm, "VmMachine", lambda spec, **kw: made.append((spec, kw)))
    args = diff._parser().parse_args(["--against", "vm:6.12", "--swap", "0"])
    log = io.StringIO()
    make_oracle, _caps, _swap, make_other, names = diff._oracle(args, 0, log, True)
    pool = None if why else {C.PMD_SIZE: diff.HUGETLB_POOL}
    # The pool is asked about in the guest, not on this host.
    assert ("mmemu.host.hugetlb:why_no_pool", ({C.PMD_SIZE: diff.HUGETLB_POOL},)) in g.asked
    assert args.hugepages == pool
    make_oracle()
    assert made == [("6.12", {"swap": 0, "uffd": False, "hugepages": pool})]
    engine = make_other()
    assert names == ("vm:6.12", "engine 6.12.118")
    assert engine.hugepages[C.PMD_SIZE]["free_hugepages"] == (0 if why else diff.HUGETLB_POOL)
    assert ("guest's pool cannot be set" in log.getvalue()) == (why is not None)
