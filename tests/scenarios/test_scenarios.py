"""The scenario tables, over every modelled kernel version.

A case is strict-xfail exactly in the versions where its bug reproduces
(the scenario's `fails`), and must pass everywhere else: a rule that goes
missing flips a cell and fails the run.
"""
import pytest

import mmemu
from mmemu.eras import VERSIONS
from mmemu.eras import policy_for
from mmemu.scenarios import (Absent, FeatureAbsent, Scenario, ScenarioFailure, ScenarioSkip,
                             all_scenarios, machine_args, run)


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
    machine = mmemu.Machine(kernel=version, **machine_args(scn, memory=64 << 20, swap=16 << 20))
    reason = scn.skip_reason(machine.policy)
    if reason:
        pytest.skip(reason)
    try:
        scn.func(machine)
    except ScenarioSkip as e:
        pytest.skip(str(e))


def test_every_bug_of_the_issue_reproduces_somewhere():
    # Issue 2: B2, B4, B5, B6, B7, B19, B20; issue 4: B8, B9 (and B19's
    # swapcache part, B20's page-cache part) each have a scenario that, run
    # here, fails in the last version of its era and passes in the version
    # after it. If a rule of an era goes missing (the bug no longer
    # reproduces) or its fix regresses, the bug drops out of `shown`.
    wanted = {"B2", "B4", "B5", "B6", "B7", "B8", "B9", "B19", "B20"}
    shown, tried = set(), {}
    for scn in all_scenarios():
        if scn.bug not in wanted or scn.bug in shown or not scn.fails:
            continue
        last = max(VERSIONS.index(v) for v in scn.fails)
        if last + 1 == len(VERSIONS):
            continue                      # never fixed in a modelled version
        buggy, fixed = VERSIONS[last], VERSIONS[last + 1]
        got = (run(scn, buggy).status, run(scn, fixed).status)
        tried.setdefault(scn.bug, []).append((scn.id, buggy, fixed, got))
        if got == ("fail", "pass"):
            shown.add(scn.bug)
    assert shown == wanted, {b: tried.get(b) for b in wanted - shown}


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


def test_na_cells_are_the_versions_before_an_interface():
    # n/a must mean "this version predates what the case needs": on the
    # engine every reason not to run is Absent, the n/a versions of a case
    # come before all the versions where it runs, and the newest runs it.
    # A needs() that skipped for another reason would count as n/a wrongly,
    # one that skipped a middle version would hide a gate.
    for scn in all_scenarios():
        reasons = [scn.skip_reason(policy_for(v)) for v in VERSIONS]
        for v, reason in zip(VERSIONS, reasons):
            assert reason is None or isinstance(reason, Absent), (scn.id, v, reason)
        na = [r is not None for r in reasons]
        assert na == sorted(na, reverse=True) and not na[-1], (scn.id, na)


def test_run_tells_na_from_skip():
    # needs() returning absent(...) or a body raising FeatureAbsent is n/a; a
    # plain reason or ScenarioSkip (this machine cannot) is a skip. Neither
    # is a result, so neither is "expected".
    def body(exc):
        def f(m):
            raise exc
        return f
    cases = [(Scenario("T1", "t", "t", lambda m: None, needs=lambda p: Absent("5.14")), "n/a"),
             (Scenario("T2", "t", "t", lambda m: None, needs=lambda p: "no swap"), "skip"),
             (Scenario("T3", "t", "t", body(FeatureAbsent("EINVAL in this era"))), "n/a"),
             (Scenario("T4", "t", "t", body(ScenarioSkip("no swap"))), "skip"),
             (Scenario("T5", "t", "t", lambda m: None), "pass")]
    for scn, status in cases:
        r = run(scn, "6.1")
        assert (r.status, r.label) == (status, status), scn.id
        assert r.expected is (True if status == "pass" else None), scn.id
