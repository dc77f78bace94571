"""The scenario tables, over every modelled kernel version.

A case is strict-xfail exactly in the versions where its bug reproduces
(the scenario's `fails`), and must pass everywhere else: a rule that goes
missing flips a cell and fails the run.
"""
import pytest

import mmemu
from mmemu.eras import VERSIONS
from mmemu.scenarios import ScenarioFailure, ScenarioSkip, all_scenarios


def _cases():
    for scn in all_scenarios():
        for version in VERSIONS:
            marks = []
            if scn.fails_in(version):
                marks.append(pytest.mark.xfail(strict=True, raises=ScenarioFailure,
                                               reason=f"{scn.bug} reproduces on {version}"))
            yield pytest.param(scn, version, marks=marks, id=f"{scn.test_id}[era={version}]")


@pytest.mark.parametrize("scn,version", list(_cases()))
def test_scenario(scn, version):
    machine = mmemu.Machine(kernel=version, memory=64 << 20, swap=16 << 20)
    reason = scn.skip_reason(machine.policy)
    if reason:
        pytest.skip(reason)
    try:
        scn.func(machine)
    except ScenarioSkip as e:
        pytest.skip(str(e))


def test_every_bug_of_the_issue_reproduces_somewhere():
    # Issue 2: B2, B4, B5, B6, B7, B19, B20; issue 4: B8, B9 (and B19's
    # swapcache part, B20's page-cache part) each have a scenario that fails
    # in its era.
    bugs = {s.bug for s in all_scenarios() if s.fails}
    assert {"B2", "B4", "B5", "B6", "B7", "B8", "B9", "B19", "B20"} <= bugs


def test_backport_turns_a_bug_off():
    # 5.7 with the 5.8 forced-COW fix backported no longer leaks (S3), as the
    # stable kernels that took 17839856fd58 did not.
    scn = next(s for s in all_scenarios() if s.id == "S3")
    scn.func(mmemu.Machine(kernel="5.7", backports=["17839856fd58"], memory=64 << 20))
    with pytest.raises(ScenarioFailure):
        scn.func(mmemu.Machine(kernel="5.7", memory=64 << 20))


def test_stable_forced_cow_backport_covers_foll_get_only():
    # The stable flavour breaks COW for vmsplice (FOLL_GET) but not for pins.
    s3 = next(s for s in all_scenarios() if s.id == "S3")
    s9 = next(s for s in all_scenarios() if s.id == "S9")
    s3.func(mmemu.Machine(kernel="5.7", backports=["17839856fd58-stable"], memory=64 << 20))
    with pytest.raises(ScenarioFailure):
        s9.func(mmemu.Machine(kernel="5.7", backports=["17839856fd58-stable"], memory=64 << 20))
    s9.func(mmemu.Machine(kernel="5.7", backports=["17839856fd58"], memory=64 << 20))
