"""Scenario tables: small programs with an expected outcome per kernel era.

Each scenario is written once against the public API (so it can run on any
machine that offers it) and declares the versions where the bug it probes
reproduces (`fails`). Outside those versions the scenario must pass; inside
them it must fail, which is what "reproduces the bug" means. The same
registry feeds pytest (strict xfail in the buggy versions) and
`mmemu scenarios`.

A case that cannot run is one of two things. The version lacks the interface
it needs (its `needs(policy)` returns an `Absent` reason, or its body raises
`FeatureAbsent` where the engine refuses the interface in that era): the
cell is "n/a", not a result. Or this machine cannot run it (no swap, a host
kernel built without CONFIG_MEM_SOFT_DIRTY): "skip". Neither counts as "as
expected", so a gate that moves shows as cells going n/a, never as a matrix
that still agrees.
"""
from dataclasses import dataclass, field

from ..eras import VERSIONS, _key, base_version, stable_backports
from .bugs import bug_tags


class ScenarioFailure(AssertionError):
    """An expectation of a scenario did not hold."""


class ScenarioSkip(Exception):
    """The scenario cannot run on this machine (missing feature or privilege)."""


class FeatureAbsent(ScenarioSkip):
    """Raised by a scenario body when the engine refuses an interface the case
    needs because this version predates it: the cell is n/a."""


class Absent(str):
    """A skip reason meaning the version lacks the interface (an n/a cell),
    as opposed to a machine that cannot run the case. `needs` functions
    return absent("...") for what arrives in a later release."""


def absent(reason):
    return Absent(reason)


def check(cond, message):
    if not cond:
        raise ScenarioFailure(message)


def parse_versions(spec):
    """'5.7,5.9-5.18' -> set of versions; '' -> empty; '>=6.2' and '<5.9' work too."""
    out = set()
    for part in filter(None, (p.strip() for p in spec.split(","))):
        if part.startswith(">="):
            out |= {v for v in VERSIONS if _key(v) >= _key(part[2:])}
        elif part.startswith("<"):
            out |= {v for v in VERSIONS if _key(v) < _key(part[1:])}
        elif "-" in part:
            lo, hi = part.split("-")
            out |= {v for v in VERSIONS if _key(lo) <= _key(v) <= _key(hi)}
        elif part in VERSIONS:
            out.add(part)
        else:
            raise ValueError(f"bad version spec {part!r}")
    return out


@dataclass
class Scenario:
    id: str                 # catalogue id, e.g. "S3"
    name: str               # test id stem, e.g. "cow-vmsplice-unmap-child"
    title: str              # the upstream test's title
    func: object            # func(machine) -> None; raises ScenarioFailure
    bug: str = ""           # bug index row (semantics.md section 18)
    fails: frozenset = field(default_factory=frozenset)
    backing: str = "anon"
    needs: object = None    # needs(policy) -> None or a reason to skip
    why: str = ""           # what a failure means
    machine: dict = field(default_factory=dict)   # Machine() arguments it needs (hugepages=, memory=)

    @property
    def test_id(self):
        return f"{self.name}[{self.backing}]"

    def fails_in(self, version):
        """`fails` names mainline versions. A stable point release fails as its
        base does, unless it took a Change that marks one of this scenario's
        bugs "fixed" or "mitigated" and that upstream already let the scenario
        pass in its own release (a mitigation that ended only some triggers
        ends only the scenarios it ended upstream)."""
        base = base_version(version)
        if base not in self.fails:
            return False
        tags = set(bug_tags(self.bug))
        for change in stable_backports(version):
            if change.version not in self.fails and tags & _ended(change.bug):
                return False
        return True

    def skip_reason(self, policy):
        """None, or why the case cannot run: an Absent reason when the
        version lacks what it needs."""
        return self.needs(policy) if self.needs else None


def _ended(bug):
    """The bug tags a Change's `bug` text marks "fixed" or "mitigated"."""
    out = set()
    for part in bug.split(";"):
        words = part.replace(",", " ").replace("(", " ").split()
        if "fixed" in words or "mitigated" in words:
            out |= {w for w in words if w[:1] == "B" and w[1:2].isdigit()}
    return out


REGISTRY = []


# What the machine of a case on these backings needs: a hugetlb pool (cow.c
# wants two free huge pages; fork may copy a third), and for 1 GiB pages the
# memory to hold it.
BACKING_MACHINE = {
    "hugetlb-2M": {"hugepages": {2 << 20: 8}},
    "hugetlb-1G": {"memory": 3 << 30, "hugepages": {1 << 30: 2}},
    "memfd-hugetlb-2M": {"hugepages": {2 << 20: 8}},
    "memfd-hugetlb-1G": {"memory": 3 << 30, "hugepages": {1 << 30: 2}},
    # uffd_cases.py's hugetlb memory types: areas of up to 8 huge pages, an
    # alias or a second area of 8 (events' mremap target) and the pages a
    # forked child copies on write.
    "hugetlb": {"memory": 128 << 20, "hugepages": {2 << 20: 32}},
    "hugetlb-private": {"memory": 128 << 20, "hugepages": {2 << 20: 32}},
}


def machine_args(scn, **defaults):
    """Machine() keyword arguments for a case: defaults, then its own."""
    return {**defaults, **scn.machine}


def scenario(id, name, title, bug="", fails="", backing="anon", needs=None, why="", backings=None):
    """Register func(machine). With `backings` ({backing: fails spec, or
    (fails spec, bug)}) the case is registered once per backing and called as
    func(machine, backing=b), as cow.c runs each anonymous test on every
    backing; a backing of BACKING_MACHINE gets the machine it needs."""
    def register(func):
        doc = why or (func.__doc__ or "").strip()
        if backings is None:
            REGISTRY.append(Scenario(id, name, title, func, bug, frozenset(parse_versions(fails)),
                                     backing, needs, doc, dict(BACKING_MACHINE.get(backing, {}))))
            return func
        for b, spec in backings.items():
            bound = (lambda f, bb: (lambda m: f(m, backing=bb)))(func, b)
            sid = id if b == "base" else f"{id}/{b}"
            spec, bbug = spec if isinstance(spec, tuple) else (spec, bug)     # a backing's own bug row
            REGISTRY.append(Scenario(sid, name, title, bound, bbug, frozenset(parse_versions(spec)),
                                     b, needs, doc, dict(BACKING_MACHINE.get(b, {}))))
        return func
    return register


@dataclass
class Result:
    scenario: Scenario
    version: str
    status: str             # "pass" | "fail" | "n/a" | "skip" | "error"
    message: str = ""

    @property
    def expected(self):
        """True or False for a case that ran; None for one that did not (n/a:
        the version lacks the interface; skip: this machine cannot run it)."""
        if self.status in ("n/a", "skip"):
            return None
        if self.scenario.fails_in(self.version):
            return self.status == "fail"
        return self.status == "pass"

    @property
    def label(self):
        if self.status in ("n/a", "skip"):
            return self.status
        if self.status == "error":
            return "ERROR"
        if self.scenario.fails_in(self.version):
            return "bug" if self.status == "fail" else "PASS?"
        return "pass" if self.status == "pass" else "FAIL"


def run(scn, kernel, machine_factory=None):
    """Run one scenario on a fresh machine of `kernel`; never raises for an
    outcome, only reports it."""
    from ..machine import Machine
    factory = machine_factory or (lambda k, **kw: Machine(kernel=k, **machine_args(
        scn, memory=64 << 20, swap=16 << 20)))
    machine = factory(kernel, **scn.machine) if scn.machine else factory(kernel)
    version = machine.policy.version
    reason = scn.skip_reason(machine.policy)
    if reason:
        return Result(scn, version, "n/a" if isinstance(reason, Absent) else "skip", str(reason))
    try:
        scn.func(machine)
    except ScenarioFailure as e:
        return Result(scn, version, "fail", str(e))
    except ScenarioSkip as e:
        return Result(scn, version, "n/a" if isinstance(e, FeatureAbsent) else "skip", str(e))
    except Exception as e:      # an engine error is an unexpected result, reported
        return Result(scn, version, "error", f"{type(e).__name__}: {e}")
    return Result(scn, version, "pass")


def all_scenarios():
    from . import cow, files, guard, ksm, migration, races, uffd_cases  # noqa: F401  register on import
    return list(REGISTRY)
