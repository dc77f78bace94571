"""The race explorer: run a small multi-threaded program under every (or a
sampled set of) interleavings of its steps and report the ones whose outcome
is wrong, each as a schedule that reruns exactly and prints as a timeline.

    r = mmemu.explore(setup, [body_a, body_b], kernel="5.10")
    r.explored, r.complete, r.counterexamples[0].timeline()

setup(machine) runs single-threaded on a fresh Machine(kernel=..., **options)
and returns a context (a dict may name, under "watch", (process, address)
pairs whose pte and TLB entries a timeline shows first); each body(machine, ctx) runs as one schedulable
thread (mmemu.sched). check(machine, ctx) judges the outcome: truthy is
right; falsy or raising is wrong. The default check is Machine.check() plus
"no lost write": every store a body completed reads back from the page
tables afterwards unless a later completed store overwrote it.

Strategies: "exhaustive" (depth-first over every choice, with state hashing:
a state reached before is not explored again, so small programs finish),
"random" (uniform choices, seeded), "pct" (probabilistic concurrency
testing: random thread priorities with depth-1 change points).
"""
from __future__ import annotations

import hashlib
import operator
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from .sched import Scheduler

__all__ = ["explore", "rerun", "ExploreResult", "Counterexample"]


@dataclass
class Counterexample:
    """One schedule whose outcome is wrong."""
    schedule: list              # thread index chosen at each choice point
    reason: str
    steps: list = field(default_factory=list)     # (thread name, cpu, label) in run order
    _replay: Any = None

    def __len__(self) -> int:
        return len(self.steps)

    @property
    def preemptions(self) -> int:
        return sum(1 for a, b in zip(self.steps, self.steps[1:]) if a[0] != b[0] and a[2] != "exits")

    def timeline(self) -> str:
        """The run as a table: one column per CPU, then the pte and every
        CPU's TLB entry of the pages the program touched, at each step."""
        return self._replay() if self._replay else "\n".join(f"{s[0]}: {s[2]}" for s in self.steps)

    def to_json(self) -> dict:
        return {"schedule": self.schedule, "reason": self.reason,
                "steps": [{"thread": s[0], "cpu": s[1], "step": s[2]} for s in self.steps]}


@dataclass
class ExploreResult:
    """What explore() found: `explored` complete runs, whether they covered
    the whole space (`complete`), and the wrong ones as Counterexamples,
    shortest first."""
    explored: int               # complete runs
    complete: bool              # the whole space was covered
    counterexamples: list       # Counterexamples, shortest first
    strategy: str
    kernel: str
    seconds: float
    states: int = 0             # distinct states met (exhaustive)
    pruned: int = 0             # runs cut short of their alternatives by state hashing

    @property
    def found(self) -> bool:
        return bool(self.counterexamples)

    def summary(self) -> str:
        if self.counterexamples:
            c = self.counterexamples[0]
            return (f"{self.kernel}: {len(self.counterexamples)} of {self.explored} interleavings "
                    f"explored are wrong; shortest ({len(c)} steps): {c.reason}")
        cover = "all of them" if self.complete else "not the whole space"
        return f"{self.kernel}: {self.explored} interleavings explored ({cover}), none wrong"

    def to_json(self) -> dict:
        return {"kernel": self.kernel, "strategy": self.strategy, "explored": self.explored,
                "complete": self.complete, "states": self.states, "seconds": round(self.seconds, 3),
                "counterexamples": [c.to_json() for c in self.counterexamples]}


def _new_machine(kernel, options):
    from .machine import Machine
    return Machine(kernel=kernel, **options)


def _default_check(machine, sched):
    """Machine.check() and no lost write."""
    machine.check()
    final = {}
    for mm, addr, data in sched.stores:
        for i, b in enumerate(data):
            final[(mm, addr + i)] = b
    procs = {p.mm: p for p in machine.processes if p.alive}
    for (mm, a), want in sorted(final.items()):
        p = procs.get(mm)
        if p is None:
            continue
        got = _read_by_walk(machine, mm, a)
        if got != want:
            return (f"lost write: byte {a:#x} of mm {mm} reads {_b(got)}, the last completed store "
                    f"wrote {_b(want)}")
    return True


def _b(v):
    return "nothing (not present)" if v is None else repr(bytes([v]))


def _read_by_walk(machine, mm, addr):
    """One byte as the page tables map it (no TLB): the truth after the run."""
    from . import constants as C
    eng = machine._engine
    pte = eng.pte(mm, addr & ~(C.PAGE_SIZE - 1))
    if not pte & 1:
        return None
    pfn = (pte >> 12) & ((1 << 40) - 1)
    return eng.frame_read(pfn, addr & (C.PAGE_SIZE - 1), 1)[0]


class _Run:
    """One run of the program under a chooser."""

    def __init__(self, setup, threads, kernel, options, check, chooser, record=False, prune=None,
                 watch=None):
        self.machine = _new_machine(kernel, options)
        self.ctx = setup(self.machine)
        self.sched = Scheduler(self.machine, chooser, record=record)
        self.sched.prune_check = prune
        self.threads = threads
        self.check = check
        m, ctx = self.machine, self.ctx
        bodies = [(lambda b=b: b(m, ctx)) for b in threads]
        names = [getattr(b, "__name__", f"T{i}") for i, b in enumerate(threads)]
        names = [n if n != "<lambda>" else f"T{i}" for i, n in enumerate(names)]
        if record:
            self.sched.watch = watch if watch is not None else _watched(m, ctx)
        self.errors = self.sched.run(bodies, names)
        self.reason = self._judge()

    def _judge(self):
        s = self.sched
        if s.deadlock:
            return "deadlock: " + "; ".join(f"{n} waits for {w}" for n, w in s.deadlock)
        if s.lock_order:
            name, held, taken, where = s.lock_order
            return (f"lock order: {name} takes mmap_lock of mm {taken} while it holds mm {held}'s "
                    f"(at {where}); no kernel path nests two mmap_locks")
        for t in s.threads:
            if t.error is not None:
                return f"{t.name} raised {type(t.error).__name__}: {t.error}"
        try:
            if self.check is None:
                ok = _default_check(self.machine, s)
            else:
                ok = self.check(self.machine, self.ctx)
        except Exception as e:
            return f"check raised {type(e).__name__}: {e}"
        if ok is True or (ok and not isinstance(ok, str)):
            return None
        return ok if isinstance(ok, str) else "check returned a false value"


def _watched(machine, ctx):
    """Pages a timeline shows when none is known: the first pages of the
    live processes' mappings, at most 4."""
    out = []
    for p in machine.processes:
        if not p.alive:
            continue
        for v in p.vmas:
            for va in range(v.start, min(v.end, v.start + 4 * 4096), 4096):
                out.append((p.mm, va))
    return out[:4]


class _Prefix:
    """Chooser that follows a prefix of choices, then takes the first
    candidate (the running thread when it may go on), recording how many
    candidates each choice point had."""

    def __init__(self, prefix):
        self.prefix = prefix
        self.counts = []
        self.misfit = None          # the first choice the run could not take

    def __call__(self, sched, cands):
        k = len(self.counts)
        self.counts.append(len(cands))
        if k < len(self.prefix):
            want = self.prefix[k]
            if want < len(cands):
                return want
            if self.misfit is None:
                self.misfit = f"choice {k} is {want}, but only {len(cands)} threads could run there"
        return 0

    def check_fit(self):
        """Why the prefix does not describe this run, or None."""
        if self.misfit is None and len(self.prefix) > len(self.counts):
            return f"the schedule has {len(self.prefix)} choices, the run made {len(self.counts)}"
        return self.misfit


def explore(setup: Callable, threads: Sequence[Callable], *, kernel: str, check: Callable | None = None,
            strategy: str = "exhaustive", budget: int = 100_000, seed: int = 0, depth: int = 3,
            max_counterexamples: int = 10, state_hashing: bool = True,
            **machine_options) -> ExploreResult:
    """Run `threads` under the interleavings of their steps, each run on a
    fresh Machine(kernel=kernel, **machine_options) prepared by setup().

    setup(machine) -> ctx runs single-threaded; each thread is
    body(machine, ctx), one schedulable thread (calls it makes through a
    Thread run on that Thread's CPU; calls on a Process or Uffd run on CPU
    i % ncpus for the i-th body). check(machine, ctx) is truthy when the
    outcome is right (a string is the reason it is not); by default
    Machine.check() and no lost write. budget counts complete runs.
    strategy: "exhaustive" (depth first, state hashing unless
    state_hashing=False), "random" (seeded), "pct" (bug depth `depth`)."""
    if strategy not in ("exhaustive", "random", "pct"):
        raise ValueError(f"strategy must be exhaustive, random or pct, not {strategy!r}")
    if budget < 1:
        raise ValueError("budget must be at least 1")
    t0 = time.perf_counter()
    found = {}
    explored = 0
    complete = False
    seen = set()
    pruned_runs = 0

    def note(run, schedule):
        if run.reason is not None:
            key = tuple(schedule)
            if key not in found:
                found[key] = (run.reason, len(run.sched.choices))

    if strategy == "exhaustive":
        stack_prefix = []
        while explored < budget:
            chooser = _Prefix(stack_prefix)
            cut = [None]

            def prune(sched, chooser=chooser, cut=cut):
                if cut[0] is not None or len(chooser.counts) < len(chooser.prefix):
                    return
                k = sched.state_key()
                if k in seen:
                    cut[0] = len(chooser.counts)     # its alternatives were explored from there
                else:
                    seen.add(k)
            run = _Run(setup, threads, kernel, machine_options, check, chooser,
                       prune=prune if state_hashing else None)
            if chooser.check_fit():
                # A prefix that an earlier run made no longer fits: the
                # program does something different on the same schedule.
                raise RuntimeError(f"explore: the program is not deterministic ({chooser.check_fit()})")
            explored += 1
            taken = [min(p, n - 1) for p, n in zip(stack_prefix, chooser.counts)] + \
                [0] * (len(chooser.counts) - len(stack_prefix))
            note(run, taken)
            counts = chooser.counts
            if cut[0] is not None:
                counts = counts[:cut[0]]
                pruned_runs += 1
            # Backtrack: the deepest choice with an untried alternative.
            nxt = None
            for k in range(len(counts) - 1, -1, -1):
                if taken[k] + 1 < counts[k]:
                    nxt = taken[:k] + [taken[k] + 1]
                    break
            if nxt is None:
                complete = True
                break
            stack_prefix = nxt
    else:
        rng = random.Random(seed)
        estimate = 64            # PCT's guess of the number of choices in a run, learnt as runs go
        for _ in range(budget):
            run_seed = rng.getrandbits(64)
            chooser = _RandomChooser(run_seed) if strategy == "random" else \
                _PctChooser(run_seed, depth, estimate)
            run = _Run(setup, threads, kernel, machine_options, check, chooser)
            explored += 1
            note(run, chooser.taken)
            estimate = max(estimate if explored > 1 else 1, len(run.sched.choices) + 1)

    order = sorted(found.items(), key=lambda kv: (kv[1][1], kv[0]))[:max_counterexamples]
    cexs = []
    for schedule, (reason, _) in order:
        c = Counterexample(list(schedule), reason)
        # A first replay learns which pages the steps touch; the second shows them.
        probe = _Run(setup, threads, kernel, machine_options, check, _Prefix(list(schedule)))
        hint = probe.ctx.get("watch", []) if isinstance(probe.ctx, dict) else []
        watch = [(p.mm, a & ~4095) for p, a in hint]
        watch += [w for w in sorted(probe.sched.touched) if w not in watch]
        watch = watch[:6]
        rec = _Run(setup, threads, kernel, machine_options, check, _Prefix(list(schedule)), record=True,
                   watch=watch)
        c.steps = [(s.name, s.cpu, s.label) for s in rec.sched.trace]
        c._replay = (lambda rec=rec: _render(rec))
        cexs.append(c)
    cexs.sort(key=lambda c: (len(c.steps), c.preemptions))
    return ExploreResult(explored, complete, cexs, strategy, kernel, time.perf_counter() - t0,
                         states=len(seen), pruned=pruned_runs)


class _RandomChooser:
    def __init__(self, seed):
        self.rng = random.Random(seed)
        self.taken = []

    def __call__(self, sched, cands):
        i = self.rng.randrange(len(cands))
        self.taken.append(i)
        return i


class _PctChooser:
    """PCT (Burckhardt et al., ASPLOS 2010): distinct random priorities per
    thread, and depth-1 points where the running thread drops to the lowest
    priority; the highest-priority candidate runs."""

    def __init__(self, seed, depth, steps_estimate):
        self.rng = random.Random(seed)
        self.taken = []
        self.prio = None
        self.changes = sorted(self.rng.randrange(max(1, steps_estimate)) for _ in range(max(0, depth - 1)))
        self.k = 0
        self.low = -1

    def __call__(self, sched, cands):
        if self.prio is None:
            order = list(range(len(sched.threads)))
            self.rng.shuffle(order)
            self.prio = {t: len(order) + p for p, t in enumerate(order)}
        if self.changes and self.k == self.changes[0]:
            self.changes.pop(0)
            self.prio[cands[0].index] = self.low
            self.low -= 1
        self.k += 1
        best = max(range(len(cands)), key=lambda i: self.prio[cands[i].index])
        self.taken.append(best)
        return best


def rerun(setup: Callable, threads: Sequence[Callable], schedule, *, kernel: str, check=None,
          **machine_options):
    """Run one schedule again, exactly; returns (machine, ctx) as it leaves them.
    schedule: a Counterexample or its list of choices."""
    choices = schedule.schedule if isinstance(schedule, Counterexample) else list(schedule)
    choices = [operator.index(c) for c in choices]
    if any(c < 0 for c in choices):
        raise ValueError("rerun: a schedule's choices are non-negative indices")
    chooser = _Prefix(choices)
    run = _Run(setup, threads, kernel, machine_options, check, chooser)
    if chooser.check_fit():
        raise ValueError(f"rerun: the schedule does not fit this program: {chooser.check_fit()}")
    return run.machine, run.ctx


def _render(run):
    """Timeline text of a recorded run: a row per step in the column of the
    CPU it ran on, then the pte and every CPU's TLB entry of the watched
    pages as that step left them (STALE: the entry grants more than the pte)."""
    s = run.sched
    ncpus = run.machine.ncpus
    trace = s.trace
    width = min(max([len(f"{st.name}: {st.label}") for st in trace] + [12]), 76)
    lines = [" # | " + " | ".join(f"CPU{c}".ljust(width) for c in range(ncpus))]
    lines.append("-" * len(lines[0]))
    for i, st in enumerate(trace):
        cols = ["".ljust(width)] * ncpus
        cols[st.cpu if st.cpu is not None else 0] = f"{st.name}: {st.label}"[:width].ljust(width)
        lines.append(f"{i:2d} | " + " | ".join(cols).rstrip())
        after = trace[i + 1].state if i + 1 < len(trace) else s.final_state
        for (mm, va), (pte, tlbs) in sorted(after.items()):
            lines.append("   |     " + _fmt_page(mm, va, pte, tlbs))
    lines.append(f"outcome: {run.reason or 'right'}")
    return "\n".join(lines)


def _fmt_page(mm, va, pte, tlbs):
    if pte & 1:
        p = (f"pfn {(pte >> 12) & ((1 << 40) - 1)} {'W' if pte & 2 else 'R/O'}{' dirty' if pte & 4 else ''}"
             f"{' uffd-wp' if pte & 32 else ''}")
    elif pte == 0:
        p = "none"
    elif (pte >> 1) & 7 == 5:
        p = "uffd-wp marker" if (pte >> 12) & 1 else "marker"
    elif (pte >> 1) & 7 == 1:
        p = "swap entry"
    else:
        p = "not present"
    out = []
    for cpu, e in enumerate(tlbs):
        if e is None:
            continue
        pfn, w, d = e
        stale = ""
        if not pte & 1 or pfn != (pte >> 12) & ((1 << 40) - 1) or (w and not pte & 2):
            stale = " STALE"
        out.append(f"cpu{cpu}: pfn {pfn} {'W' if w else 'R/O'}{stale}")
    return f"mm {mm} {va:#x}: pte {p}; TLB " + (", ".join(out) if out else "empty")
