"""Stable point releases (issue 14): "6.1.176" is 6.1 plus what 6.1.y took.

A failure here means a machine of a stable kernel runs with the wrong rules:
a fix its branch took is missing (or present before the release that took
it), a version nobody researched is silently guessed, "host" drops the point
release, or a saved machine comes back as another kernel.
"""
import json
import platform
import re

import pytest

import mmemu
from mmemu import cli
from mmemu import constants as C
from mmemu import eras
from mmemu import uffd as U
from mmemu.eras import CHANGES, CHANGES_BY_COMMIT, STABLE_RESEARCHED, VERSIONS, policy_for

PAGE = C.PAGE_SIZE


def first_release(change, branch):
    return change.stable[branch].release


# Every (change, branch) the table records, as pytest params.
RECORDED = [pytest.param(c, b, id=f"{c.commit}[{b}.y]") for c in CHANGES for b in c.stable]


def test_the_table_records_backports():
    # Without entries the parametrised tests below would test nothing.
    assert len(RECORDED) >= 10
    assert {b for c in CHANGES for b in c.stable} == set(STABLE_RESEARCHED)


@pytest.mark.parametrize("change,branch", RECORDED)
def test_a_backport_starts_at_its_first_point_release(change, branch):
    # The release that took it has every knob of the change; the one before,
    # and the plain X.Y (.0) release, run as the base version did.
    n = first_release(change, branch)
    has = policy_for(f"{branch}.{n}")
    before = policy_for(f"{branch}.{n - 1}") if n > 1 else policy_for(branch)
    base = policy_for(branch)
    for knob, value in change.knobs.items():
        assert has.knobs[knob] == value, (knob, has.version)
        assert base.knobs[knob] != value, f"{branch} (.0) already has {knob}: not a backport"
        if not any(c.stable.get(branch) and c.stable[branch].release < n and knob in c.knobs
                   for c in CHANGES if c is not change):
            assert before.knobs[knob] == base.knobs[knob], (knob, before.version)
    assert change.commit in has.changes and change.commit not in before.changes
    # ... and every later release of the branch keeps it.
    last = policy_for(f"{branch}.{STABLE_RESEARCHED[branch]}")
    assert all(last.knobs[k] == v for k, v in change.knobs.items())


@pytest.mark.parametrize("change,branch", RECORDED)
def test_a_recorded_backport_is_one_the_branch_could_take(change, branch):
    # A stable branch only takes what mainline merged after its base release;
    # a commit id is 12 hex digits or explicitly unconfirmed, never a name.
    s = change.stable[branch]
    assert eras._key(change.version) > eras._key(branch), (change.commit, branch)
    assert 1 <= s.release <= STABLE_RESEARCHED[branch]
    assert s.commit == eras.UNCONFIRMED or re.fullmatch(r"[0-9a-f]{12}", s.commit), s.commit


def test_point_releases_carry_the_fixes_their_branch_took():
    # Spelled out for the releases issue 14 names (B14, B15 on 6.1.y; B21 on
    # 6.12.y and 6.18.y; the mremap and EAGAIN fixes on 6.12.y).
    p61, p612, p618 = policy_for("6.1.176"), policy_for("6.12.118"), policy_for("6.18.44")
    assert p61.fork_marker_child_wp == 1 and p61.uffd_wp_writenotify == 1
    assert policy_for("6.1").fork_marker_child_wp == 0
    assert policy_for("6.1.10").fork_marker_child_wp == 0 and policy_for("6.1.11").fork_marker_child_wp == 1
    assert policy_for("6.1.7").uffd_wp_writenotify == 0 and policy_for("6.1.8").uffd_wp_writenotify == 1
    assert p612.uffd_mremap_clear_wp == 1 and p612.uffd_eagain_result == 1
    assert p612.pagemap_scan_none_written == 1 and policy_for("6.12.102").pagemap_scan_none_written == 0
    assert p618.pagemap_scan_none_written == 1 and policy_for("6.18.43").pagemap_scan_none_written == 0
    assert policy_for("6.18").pagemap_scan_none_written == 0
    # A feature that no stable branch took stays out: 6.12.y has no guard regions.
    assert not p612.at_least("6.13") and p612.at_least("6.12") and p612.at_least("6.12.100")


def test_a_point_release_keeps_its_full_version_and_the_base_era():
    p = policy_for("6.1.176")
    assert p.version == "6.1.176" and p.base == "6.1"
    assert p.era == eras.era_of("6.1") == "E4"
    assert p.at_least("6.1") and p.at_least("6.1.176") and not p.at_least("6.1.177")
    assert not p.at_least("6.2")
    m = mmemu.Machine(kernel="6.12.118", memory=1 << 22)
    assert m.policy.version == "6.12.118" and m.policy.era == "E6"


def test_plain_versions_are_unchanged():
    # "6.1" is the .0 release: no stable backports, the same knobs as before
    # point releases existed (the changes up to its version, nothing else).
    for v in VERSIONS:
        p = policy_for(v)
        assert p.version == v
        assert p.changes == [c.commit for c in CHANGES if eras._key(c.version) <= eras._key(v)]
    assert policy_for("6.1.0").knobs == policy_for("6.1").knobs


@pytest.mark.parametrize("version,why", [
    ("6.1.177", r"6\.1\.y is researched only up to 6\.1\.176"),
    ("6.18.45", r"6\.18\.y is researched only up to 6\.18\.44"),
    ("6.6.30", r"stable history of 6\.6\.y is not researched"),
    ("5.15.100", r"stable history of 5\.15\.y is not researched"),
    ("6.19.2", r"unknown kernel version '6\.19\.2'"),
    ("6.1.x", r"unknown kernel version '6\.1\.x'"),
])
def test_a_version_the_table_cannot_place_is_refused(version, why):
    with pytest.raises(ValueError, match=why):
        policy_for(version)
    with pytest.raises(ValueError, match=why):
        mmemu.Machine(kernel=version)


def test_old_names_are_still_accepted_by_backports():
    for old, new in [("uffd-fork-marker-fix", "49d6d7fb6313"), ("uffd-wp-writenotify", "51d3d5eb74ff"),
                     ("mm-clear-uffd-wp-on-mremap", "0cef0bb836e3"),
                     ("uffd-eagain-output-field", "95567729173e")]:
        assert CHANGES_BY_COMMIT[old] is CHANGES_BY_COMMIT[new]
        assert policy_for("6.1", [old]).knobs == policy_for("6.1", [new]).knobs != policy_for("6.1").knobs
    # The B21 pair: either id selects the knob.
    assert policy_for("6.18", ["40de8160ca7f"]).pagemap_scan_none_written == 1


def test_host_uses_the_full_running_version(monkeypatch):
    monkeypatch.setattr(platform, "release", lambda: "6.18.44-fc-v1294")
    assert eras.host_version() == "6.18.44"
    assert policy_for("host").version == "6.18.44"
    assert policy_for("host").pagemap_scan_none_written == 1
    # Debian names its kernel by ABI; the stable release is in `uname -v`.
    monkeypatch.setattr(platform, "release", lambda: "6.1.0-50-amd64")
    monkeypatch.setattr(platform, "version", lambda: "#1 SMP PREEMPT_DYNAMIC Debian 6.1.176-1 (2026-07-02)")
    assert eras.host_version() == "6.1.176"
    # A host whose branch was never researched is refused, not guessed.
    monkeypatch.setattr(platform, "release", lambda: "6.6.30-generic")
    with pytest.raises(ValueError, match=r"6\.6\.y is not researched"):
        policy_for("host")


def test_this_host_is_read_to_the_point_release():
    m = re.match(r"(\d+)\.(\d+)\.(\d+)", platform.release())
    try:
        v = eras.host_version()
    except ValueError:
        pytest.skip(f"this host ({platform.release()}) is not placeable")
    if m and eras.base_version(m.group(0)) in STABLE_RESEARCHED and m.group(3) != "0":
        assert v == m.group(0)


def test_cli_accepts_a_point_release(capsys):
    assert cli.kernel_version("6.1.176") == "6.1.176"
    code = cli.main(["scenarios", "--only", "S56", "--kernel", "6.1", "--kernel", "6.1.176",
                     "--json", "--no-progress"])
    out, _ = capsys.readouterr()
    assert code == 0, out
    rows = {r["kernel"]: r for r in json.loads(out)}
    # B14 reproduces on 6.1 and is fixed by 6.1.11's backport.
    assert rows["6.1"]["label"] == "bug" and rows["6.1.176"]["label"] == "pass"
    assert rows["6.1.176"]["version"] == "6.1.176"
    assert cli.main(["scenarios", "--kernel", "6.1.177"]) == 2
    assert "researched only up to 6.1.176" in capsys.readouterr().err


def test_a_saved_point_release_machine_loads_as_the_same_kernel(tmp_path):
    m = mmemu.Machine(kernel="6.12.118", memory=1 << 22)
    p = m.spawn()
    a = p.mmap(0, 4 * PAGE, C.PROT_READ | C.PROT_WRITE, C.MAP_PRIVATE | C.MAP_ANONYMOUS)
    p.write(a, b"x")
    path = tmp_path / "m.mmemu"
    m.save(path)
    n = mmemu.Machine.load(path)
    assert (n.policy.version, n.policy.era, n.policy.knobs) == \
        (m.policy.version, m.policy.era, m.policy.knobs)
    assert n.policy.version == "6.12.118"


def _scan_after_dontneed(kernel):
    """PAGEMAP_SCAN's generic path over a range DONTNEED emptied: regions found."""
    m = mmemu.Machine(kernel=kernel, memory=1 << 22)
    p = m.spawn()
    n = 4
    a = p.mmap(0, n * PAGE, C.PROT_READ | C.PROT_WRITE, C.MAP_PRIVATE | C.MAP_ANONYMOUS)
    u = p.userfaultfd(0)
    u.api(U.UFFD_FEATURE_WP_ASYNC | U.UFFD_FEATURE_WP_UNPOPULATED)
    u.register(a, n * PAGE, U.UFFDIO_REGISTER_MODE_WP)
    p.touch(a, n, write=True)
    p.madvise(a, n * PAGE, C.MADV_DONTNEED)
    regions, _ = p.pagemap_scan(a, a + n * PAGE, 0, C.PAGE_IS_WRITTEN, 0, 0,
                                C.PAGE_IS_WRITTEN | C.PAGE_IS_PRESENT)
    return regions


def test_b21_fix_reaches_the_engine_on_the_point_releases_that_took_it():
    # The knob is not just recorded: 6.18.44 (and 6.12.103) report the zapped
    # range WRITTEN on the generic path, 6.18.43 and 6.18 report nothing.
    assert _scan_after_dontneed("6.18") == []
    assert _scan_after_dontneed("6.18.43") == []
    assert [r[2] for r in _scan_after_dontneed("6.18.44")] == [C.PAGE_IS_WRITTEN]
    assert _scan_after_dontneed("6.12.102") == []
    assert _scan_after_dontneed("6.12.103") != []
