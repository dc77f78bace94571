"""The scenario tables on the real kernel, as uvloop runs its tests against
asyncio: every scenario of mmemu.scenarios runs on a mmemu.host.HostMachine,
so the expectations of the host's era are checked against the kernel itself,
not against our reading of it.

A case must pass on the host, unless its bug reproduces in the host's
version (then strict xfail, as in test_scenarios.py; the host is 6.18, where
none does). A failure here means the scenario's expectation for the modern
era is not what Linux does: the engine and the table are wrong together.

What the host cannot do is a skip with the reason, never a failure: a
scenario's own `needs` (soft-dirty is off here), mmemu.host.Unsupported (no
R/O FOLL_PIN without gup_test, no swap file, engine-only calls such as
touch), ScenarioSkip (MADV_PAGEOUT that did not reach swap), or a host
without PFNs in /proc/pid/pagemap.

Machines have the swap of mmemu.scenarios.run's machines (16 MiB): a swap
file enabled for this module and removed after it.
"""
import pytest

from mmemu.eras import host_version
from mmemu.scenarios import ScenarioFailure, ScenarioSkip, all_scenarios

pytestmark = pytest.mark.host

SCENARIO_SWAP = 16 << 20        # as mmemu.scenarios.run's default machine
TIMEOUT = 10.0                  # per server reply


def _version():
    try:
        return host_version()
    except ValueError:          # an unparsable or too old host: nothing to compare
        return None


HOST_VERSION = _version()


def _cases():
    for scn in all_scenarios():
        marks = []
        if HOST_VERSION and scn.fails_in(HOST_VERSION):
            marks.append(pytest.mark.xfail(strict=True, raises=ScenarioFailure,
                                           reason=f"{scn.bug} reproduces on {HOST_VERSION}"))
        yield pytest.param(scn, marks=marks, id=f"{scn.id}-{scn.test_id}[host]")


@pytest.fixture(scope="module")
def host_swap():
    """The module's swap: enabled once, shared by every machine of the
    module, swapped off and deleted at the end (also when a test fails).
    None, with the reason, where the host cannot enable swap."""
    from mmemu.host import swap
    reason = swap.why_no_swap()
    if reason:
        yield None, reason
        return
    try:
        held = swap.acquire(SCENARIO_SWAP)
    except swap.SwapUnavailable as e:
        yield None, str(e)
        return
    try:
        yield held, None
    finally:
        swap.release(held)


@pytest.mark.parametrize("scn", list(_cases()))
def test_scenario_on_host(scn, host_swap):
    from mmemu.host import HostMachine, Unsupported, capabilities
    if HOST_VERSION is None:
        pytest.skip("the host kernel's version is not one mmemu models")
    caps = capabilities()
    if not caps.pfns:
        pytest.skip(caps.why_not("pfns") + " (scenarios compare PFNs)")
    held, no_swap = host_swap
    try:
        # The case's own machine arguments (a hugetlb pool), as the engine's.
        m = HostMachine(swap=SCENARIO_SWAP if held else 0, timeout=TIMEOUT, uffd=True,
                        **scn.machine)
    except Unsupported as e:
        pytest.skip(f"not run on the host: {e}")
    with m:
        reason = scn.skip_reason(m.policy)
        if reason:
            pytest.skip(reason)
        try:
            scn.func(m)
        except Unsupported as e:
            pytest.skip(f"not run on the host: {e}")
        except ScenarioSkip as e:
            pytest.skip(f"{e}" + (f" (no swap on the host: {no_swap})" if no_swap else ""))


def test_host_policy_is_the_engines():
    """HostMachine.policy must be what Machine(kernel="host") runs with, or the
    scenarios would branch on a different era on each side."""
    from mmemu.eras import policy_for
    from mmemu.host import HostMachine
    if HOST_VERSION is None:
        pytest.skip("the host kernel's version is not one mmemu models")
    with HostMachine() as m:
        pol = m.policy
    ref = policy_for("host")
    assert (pol.version, pol.era, pol.knobs) == (ref.version, ref.era, ref.knobs)
    assert pol.version == HOST_VERSION
