"""The scenario tables on a real kernel, next to the engine at its version.

`mmemu scenarios --on host` or `--on vm:6.12` runs every scenario on the
oracle (a HostMachine, on the host or in a VM guest) and on the engine's
Machine(kernel=<the oracle's exact version>), and reports per scenario
whether they agree. A cell agrees when both sides pass, or both fail (the
bug reproduces in that version on the real kernel as in the engine). What
the oracle cannot run (mmemu.host.Unsupported, a ScenarioSkip, a feature
the era lacks) is a skip with its reason, never an agreement.

run_here() is the oracle side, and runs where the kernel is: in this
process for the host, in the guest agent for a VM (one call per scenario).
"""
from __future__ import annotations

import sys

SWAP = 16 << 20        # mmemu.scenarios.run's machines have this much swap
TIMEOUT = 60.0         # per server reply (a guest under TCG is slow)

_held_swap = []


def _swap():
    """The swap every scenario machine of this process shares: enabled once
    (mkswap per scenario would dominate a run under TCG). (bytes, reason)."""
    from . import swap
    if _held_swap:
        return _held_swap[0]
    reason = swap.why_no_swap()
    if reason is None:
        try:
            swap.acquire(SWAP)
        except swap.SwapUnavailable as e:
            reason = str(e)
    _held_swap.append((0 if reason else SWAP, reason))
    return _held_swap[0]


def run_here(scenario_id: str, timeout: float = TIMEOUT):
    """(status, message) of one scenario on this kernel: "pass", "fail",
    "skip" (the oracle cannot run it here, with the reason) or "error"."""
    from ..scenarios import ScenarioFailure, ScenarioSkip, all_scenarios
    from .caps import capabilities
    from .machine import HostMachine, Unsupported
    scn = {s.id: s for s in all_scenarios()}.get(scenario_id)
    if scn is None:
        raise ValueError(f"no scenario {scenario_id!r}")
    caps = capabilities()
    if not caps.pfns:
        return "skip", caps.why_not("pfns") + " (scenarios compare PFNs)"
    nbytes, no_swap = _swap()
    try:
        # The case's own machine (scn.machine: a hugetlb pool, memory), as
        # mmemu.scenarios.run gives the engine's.
        m = HostMachine(swap=nbytes, timeout=timeout, uffd=True, **scn.machine)
    except Unsupported as e:
        return "skip", f"not run on this kernel: {e}"
    with m:
        reason = scn.skip_reason(m.policy)
        if reason:
            return "skip", reason
        try:
            scn.func(m)
        except ScenarioFailure as e:
            return "fail", str(e)
        except Unsupported as e:
            return "skip", f"not run on this kernel: {e}"
        except ScenarioSkip as e:
            return "skip", f"{e}" + (f" (no swap: {no_swap})" if no_swap else "")
        except Exception as e:
            return "error", f"{type(e).__name__}: {e}"
    return "pass", ""


def verdict(oracle_status, engine_status):
    """'agree', 'DISAGREE' or 'skip' (the oracle could not run it, or the
    engine's era lacks what it needs)."""
    if oracle_status == "skip" or engine_status == "skip":
        return "skip"
    if oracle_status == engine_status and oracle_status in ("pass", "fail"):
        return "agree"
    return "DISAGREE"


def main(args, scenarios, out=None):
    """`mmemu scenarios --on ORACLE`. Exit status 0 when every cell the
    oracle ran agrees with the engine, 1 otherwise, 2 when the oracle cannot
    be had."""
    import json

    from ..cli import _progress, progress_enabled
    from ..scenarios import run
    out = out or sys.stdout
    log = sys.stderr
    on = args.on
    if on == "host":
        from ..eras import host_version
        version = host_version()
        here = run_here
    elif on.startswith("vm:") and len(on) > 3:
        from .vm import VmUnavailable, guest
        try:
            g = guest(on[3:], progress=lambda t: print(f"{on}: {t}", file=log))
        except VmUnavailable as e:
            print(f"mmemu scenarios: {on}: {e}", file=log)
            return 2
        print(f"{on}: {g.info['package']} {g.info['debian_version']} booted in "
              f"{g.boot_seconds:.1f} s ({g.accel.upper()})", file=log)
        version = g.version
        here = lambda sid: g.func("mmemu.host.oracle_scenarios:run_here", sid)  # noqa: E731
    else:
        print(f"mmemu scenarios: --on {on!r}: host or vm:K (vm:6.1, vm:6.12)", file=log)
        return 2
    rows = []
    for s in _progress(scenarios, len(scenarios), progress_enabled(args), f"scenarios on {on}"):
        o_status, o_msg = here(s.id)
        e = run(s, version)
        rows.append((s, o_status, o_msg, e, verdict(o_status, e.status)))
    bad = [r for r in rows if r[4] == "DISAGREE"]
    if args.json:
        json.dump([{"id": s.id, "name": s.name, "version": version, "oracle": on,
                    "oracle_status": os_, "oracle_detail": om, "engine_status": e.status,
                    "engine_detail": e.message, "verdict": v}
                   for s, os_, om, e, v in rows], out, indent=1)
        out.write("\n")
        return 1 if bad else 0
    width = max(max(len(s.id) for s in scenarios), len("scenario")) + 2
    print(f"{'scenario'.ljust(width)}{'engine':8}{on:10}verdict   (engine = Machine(kernel="
          f"{version!r}))", file=out)
    for s, os_, om, e, v in rows:
        why = f"  {om}" if v == "skip" and om else ""
        print(f"{s.id.ljust(width)}{e.status:8}{os_:10}{v}{why}", file=out)
    agree = sum(1 for r in rows if r[4] == "agree")
    skipped = sum(1 for r in rows if r[4] == "skip")
    print(f"\n{len(rows)} scenarios on {on} ({version}): {agree} agree with the engine, "
          f"{len(bad)} disagree, {skipped} skipped (not runnable there)", file=out)
    for s, os_, om, e, _v in bad:
        print(f"  ! {s.id}: {on} {os_}{': ' + om if om else ''}; engine {e.status}"
              f"{': ' + e.message if e.message else ''}", file=out)
    return 1 if bad else 0
