"""The argument fuzzer in the test suite (issue 9, "Keep it so").

If a test here fails, a public call with some argument crashed, raised an
exception Linux has no equivalent for (harness.py says which are allowed),
or left the machine in a state check() or the VMA-table comparison rejects.
The failure message carries a reproduction: the world (fuzz.WORLD_SRC) and
the calls.
"""
import random

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, Phase, given, settings

import mmemu

from . import fuzz
from .harness import Defect


def test_every_public_method_has_a_spec():
    """A public method without an argument strategy would never be fuzzed:
    add it to fuzz.SPECS (or to fuzz.NOT_FUZZED, with the reason)."""
    missing = sorted(set(fuzz.public_methods()) - set(fuzz.SPECS) - set(fuzz.NOT_FUZZED))
    assert not missing, f"public methods with no argument strategy in tests/robust/fuzz.py SPECS: {missing}"
    stale = sorted(set(fuzz.SPECS) - set(fuzz.public_methods()))
    assert not stale, f"SPECS entries naming no public method: {stale}"


def _report(e):
    try:
        calls = fuzz.minimize(e.kernel, e.calls, e.key)
    except Exception:
        calls = e.calls
    return (f"{e}\n--- reproduction (kernel {e.kernel}) ---\n"
            f"{fuzz.repro_text(e.kernel, calls)}")


# Hypothesis's own shrinking is off (a world per example makes it take
# minutes while defects are plentiful); fuzz.minimize() shortens the calls.
@settings(max_examples=25, deadline=None, derandomize=True, report_multiple_bugs=False,
          phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
@given(data=st.data())
def _hypothesis_fuzz(data):
    d = fuzz.HypDraw(data)
    kernel = d.choice(mmemu.VERSIONS)
    try:
        with fuzz.AddressSpaceLimit():
            fuzz.run_world(kernel, d, 8)
    except Defect as e:
        raise AssertionError(_report(e)) from None


def test_fuzz_hypothesis(long_mode):
    """Hypothesis draws (and shrinks) call sequences over every version."""
    test = _hypothesis_fuzz
    if long_mode:
        test = settings(max_examples=3000)(test)
    test()


def test_fuzz_loop(long_mode):
    """The plain seeded loop (the one `python -m tests.robust.run` scales)."""
    ncalls = 200_000 if long_mode else 250
    stats = fuzz.fuzz(seed=random.Random(9).randrange(1 << 30) if long_mode else 9, ncalls=ncalls,
                      versions=mmemu.VERSIONS)
    assert stats["calls"] == ncalls
    lines = [f"{len(stats['defects'])} defects in {ncalls} calls:"]
    for dfx in stats["defects"].values():
        lines.append(f"* {dfx['kind']} in {dfx['method']} [{dfx['frame']}]: {dfx['detail']}\n"
                     f"  kernel {dfx['kernel']}: " + " ; ".join(dfx["calls"]))
    assert not stats["defects"], "\n".join(lines)


@pytest.mark.parametrize("method", sorted(fuzz.SPECS))
def test_each_method_hostile(method):
    """Every method gets a few calls of its own (the loop may miss a rare one)."""
    d = fuzz.RandDraw(random.Random(method))
    for kernel in ("5.8", "6.18"):
        try:
            with fuzz.AddressSpaceLimit():
                fuzz.run_world(kernel, d, 6, methods=[method])
        except Defect as e:
            raise AssertionError(_report(e)) from None
