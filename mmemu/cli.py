"""The `mmemu` command.

    mmemu scenarios   scenario x kernel version matrix (the main job)
    mmemu bugs        the bug tags of the matrix: what, introduced, fixed
    mmemu eras        the version -> era -> rule table
    mmemu diff        random programs on the host kernel (or a VM's) and on the engine
    mmemu explore     the interleavings of a race scenario: the shortest wrong one
    mmemu replay      a memory-access trace (lackey, csv, npz) replayed as postcopy serves it
    mmemu trace record  a program's memory trace, through valgrind's lackey
    mmemu postcopy    postcopy live migration of a guest: remote faults, latency, blocktime
    mmemu snapshot    a live snapshot under uffd-wp (sync) or WP_ASYNC + PAGEMAP_SCAN (async)
    mmemu umap        a umap-style user-level pager: fill, write-protect, write back, evict
    mmemu calibrate   measure this machine's kernel costs: emulated time in its units
    mmemu vm          fetch / boot the Debian kernels the VM oracle runs (vm:6.1, vm:6.12)

Exit status: 0 as expected, 1 an unexpected result (a scenario that did not
behave as its era predicts, a divergence), 2 bad input (one line on stderr),
3 the host oracle failed. --json writes only JSON to stdout; progress bars
and messages go to stderr, and bars are drawn only when stderr is a terminal.
"""
import argparse
import csv
import json
import os
import re
import signal
import sys

from ._version import __version__
from .eras import (CHANGES, ERA_STARTS, STABLE_RESEARCHED, VERSIONS, _key, era_of, host_version,
                   policy_for)

LEGEND = ("  .  passes (fixed or never affected)    B  reproduces the bug, as expected\n"
          "  -  n/a: the version lacks the feature  s  skipped: this machine cannot run it\n"
          "  !  unexpected result (see below)")
SYMBOL = {"pass": ".", "bug": "B", "n/a": "-", "skip": "s"}


class UsageError(Exception):
    """Bad input found after parsing; main() reports it in one line, exit 2."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with every error one line on stderr (`mmemu: error: ...`)
    and exit status 2; no usage block (`-h` shows it)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


# --- argument types: each raises ArgumentTypeError, which argparse reports ----------

_SIZE = re.compile(r"(\d+)\s*(?:([KMGT])(iB)?|(B))?", re.IGNORECASE)
_UNITS = {"": 0, "k": 10, "m": 20, "g": 30, "t": 40}


def parse_size(text):
    """Bytes from '4096', '4k', '16M', '16MiB', '1G', '1GiB', '512B'.

    Multiples are binary (k = KiB = 1024, M = MiB = 2**20, G, T) and case-blind;
    'MB'-style suffixes are refused, as they mean powers of 1000 elsewhere."""
    m = _SIZE.fullmatch(str(text).strip())
    if not m:
        raise ValueError(f"bad size {text!r}: a byte count with an optional binary "
                         "suffix, e.g. 4096, 4k, 16M, 16MiB, 1G")
    return int(m.group(1)) << _UNITS[(m.group(2) or "").lower()]


def byte_size(text):
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _int(text, least, what):
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if n < least:
        raise argparse.ArgumentTypeError(f"{text!r}: must be {what}")
    return n


def positive_int(text):
    return _int(text, 1, "at least 1")


def nonnegative_int(text):
    return _int(text, 0, "0 or more")


def kernel_version(text):
    """A modelled version ('5.7' ... '6.18'), a researched stable point release
    ('6.1.176'), or 'host' (whose version must be placeable): mmemu.eras.policy_for."""
    try:
        policy_for(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def output_flags(parser, csv_too=True):
    """--json (and --csv for a matrix); one at most."""
    g = parser.add_mutually_exclusive_group()
    g.add_argument("--json", action="store_true",
                   help="write JSON to stdout (nothing else goes there)")
    if csv_too:
        g.add_argument("--csv", action="store_true", help="write the matrix as CSV to stdout")


def progress_flags(parser):
    g = parser.add_mutually_exclusive_group()
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--progress", action="store_true",
                   help="progress bar even when stderr is not a terminal")


def progress_enabled(args, stream=None):
    """Bars are drawn on a terminal only, unless forced (--progress) or refused."""
    stream = stream or sys.stderr
    if getattr(args, "no_progress", False):
        return False
    return bool(getattr(args, "progress", False) or stream.isatty())


def _progress(iterable, total, enabled, desc):
    if not enabled:
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, total=total, desc=desc, unit="run", file=sys.stderr, leave=False)


# --- scenarios ---------------------------------------------------------------------

def _select(scenarios, only):
    """--only: comma-separated ids ('S3', or 'S24' for every 'S24/<backing>') or
    names; every element must match something."""
    wanted = [w.strip() for w in only.split(",") if w.strip()]
    if not wanted:
        raise UsageError("argument --only: no scenario given")
    chosen = set()
    for w in wanted:
        hit = [s for s in scenarios if w in (s.id, s.name) or s.id.startswith(w + "/")]
        if not hit:
            raise UsageError(f"argument --only: no scenario {w!r} (ids such as S3 or S24, "
                             "or names; `mmemu scenarios --json` lists them)")
        chosen.update(s.id for s in hit)
    return [s for s in scenarios if s.id in chosen]


def _era(v):
    return era_of(host_version() if v == "host" else v) or "?"


def header_lines(versions, width):
    """The matrix header: each version written top to bottom in full ('5.10'
    reads 5 . 1 0 down its column, 'host' h o s t), then the era, written down
    the column where it begins among the shown versions."""
    names = list(versions)
    rows = max(len(n) for n in names)
    lines = []
    for r in range(rows):
        label = "kernel" if r == 0 else ""
        lines.append(label.ljust(width) + " ".join(n[r] if r < len(n) else " " for n in names))
    eras = [_era(v) for v in versions]
    starts = [e if i == 0 or eras[i - 1] != e or v == "host" else ""
              for i, (v, e) in enumerate(zip(versions, eras))]
    for r in range(max(len(e) for e in eras)):
        label = "era" if r == 0 else ""
        lines.append(label.ljust(width) + " ".join(e[r] if r < len(e) else " " for e in starts))
    return [line.rstrip() for line in lines]


def era_key(versions):
    """'eras: E0 5.7, E1 5.8, E2 5.9-5.11, ...' for the eras among `versions`."""
    spans = []
    for v in versions:
        real = host_version() if v == "host" else v
        e = _era(v)
        if spans and spans[-1][0] == e and v != "host":
            spans[-1][2] = real
        else:
            spans.append([e, real, real])
    seen, parts = set(), []
    for e, lo, hi in spans:
        span = (e, lo, hi)
        if span in seen:
            continue
        seen.add(span)
        parts.append(f"{e} {lo}" if lo == hi else f"{e} {lo}-{hi}")
    return "eras: " + ", ".join(parts) + "  (`mmemu eras` lists the changes)"


def bug_legend(scenarios):
    """One line per bug tag the shown scenarios name."""
    from .scenarios.bugs import BUGS, bug_tags
    used = {t for s in scenarios for t in bug_tags(s.bug)}
    return [b.line() for b in BUGS if b.tag in used]


def _result_record(r, kernel):
    s = r.scenario
    return {"id": s.id, "name": s.name, "title": s.title, "bug": s.bug, "backing": s.backing,
            "kernel": kernel, "version": r.version, "era": era_of(r.version),
            "label": r.label, "status": r.status, "expected": r.expected,
            "detail": r.message}


def summary_line(results):
    """'907 runs: 812 as expected (40 reproduce their bug), 95 n/a (the era
    lacks the feature), 0 unexpected'. A cell that did not run is never "as
    expected": n/a cells (the version predates the interface) are counted on
    their own, and so are skips (this machine cannot run the case), shown
    only when there are any."""
    results = list(results)
    counts = {k: sum(1 for r in results if r.expected is k) for k in (True, False, None)}
    bugs = sum(1 for r in results if r.label == "bug")
    na = sum(1 for r in results if r.status == "n/a")
    skipped = counts[None] - na
    parts = [f"{counts[True]} as expected ({bugs} reproduce their bug)",
             f"{na} n/a (the era lacks the feature)"]
    if skipped:
        parts.append(f"{skipped} skipped (cannot run here)")
    parts.append(f"{counts[False]} unexpected")
    return f"{len(results)} runs: " + ", ".join(parts)


def cmd_scenarios(args):
    from .scenarios import all_scenarios, run
    scenarios = all_scenarios()
    if args.only:
        scenarios = _select(scenarios, args.only)
    if args.on:
        if args.kernel or args.csv:
            raise UsageError("--on compares with the engine at the oracle's own version: "
                             "no --kernel or --csv with it")
        from .host import oracle_scenarios
        return oracle_scenarios.main(args, scenarios)
    versions = list(dict.fromkeys(args.kernel or VERSIONS))   # in order, once each
    jobs = [(s, v) for s in scenarios for v in versions]
    results = {}
    for s, v in _progress(jobs, len(jobs), progress_enabled(args), "scenarios"):
        results[(s.id, v)] = run(s, v)
    unexpected = [results[(s.id, v)] for s in scenarios for v in versions
                  if results[(s.id, v)].expected is False]
    status = 1 if unexpected else 0
    if args.json:
        json.dump([_result_record(results[(s.id, v)], v) for s in scenarios for v in versions],
                  sys.stdout, indent=1)
        sys.stdout.write("\n")
        return status
    if args.csv:
        w = csv.writer(sys.stdout, lineterminator="\n")
        w.writerow(["id", "name", "bug"] + versions)
        for s in scenarios:
            w.writerow([s.id, s.name, s.bug] + [results[(s.id, v)].label for v in versions])
        return status
    width = max(max(len(s.id) for s in scenarios), 6) + 2
    for line in header_lines(versions, width):
        print(line)
    for s in scenarios:
        cells = " ".join(SYMBOL.get(results[(s.id, v)].label, "!") for v in versions)
        bug = f"  {s.bug}" if s.bug else ""
        print(s.id.ljust(width) + cells + f"   {s.title}{bug}")
    print()
    print(LEGEND)
    print(era_key(versions))
    legend = bug_legend(scenarios)
    if legend:
        print("bugs:")
        for line in legend:
            print("  " + line)
    print("\n" + summary_line(results.values()))
    for r in unexpected:
        print(f"  ! {r.scenario.id} on {r.version}: {r.status}: "
              f"{r.message or 'passed where the bug should reproduce'}")
    return status


# --- bugs, eras --------------------------------------------------------------------

def cmd_bugs(args):
    from .scenarios import all_scenarios
    from .scenarios.bugs import BUGS, bug_tags
    users = {}
    for s in all_scenarios():
        for t in bug_tags(s.bug):
            users.setdefault(t, []).append(s.id)
    if args.json:
        json.dump([dict(b.as_dict(), scenarios=users.get(b.tag, [])) for b in BUGS],
                  sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    for b in BUGS:
        print(b.line())
    return 0


def listed_versions():
    """The modelled versions, then each later release a Change comes from
    (reached only through stable point releases and backports=)."""
    later = {c.version for c in CHANGES if c.version not in VERSIONS}
    return list(VERSIONS) + sorted(later, key=_key)


def _era_rows():
    """(version, era, change or None): one row per change, or one empty row."""
    for v in listed_versions():
        here = [c for c in CHANGES if c.version == v]
        for c in here or [None]:
            yield v, era_of(v), c


def cmd_eras(args):
    if args.json:
        out = []
        for v in listed_versions():
            out.append({"version": v, "era": era_of(v),
                        "changes": [{"commit": c.commit, "title": c.title, "bug": c.bug,
                                     "knobs": dict(c.knobs),
                                     "stable": {b: {"commit": s.commit or None, "release": f"{b}.{s.release}"}
                                                for b, s in c.stable.items()}}
                                    for c in CHANGES if c.version == v]})
        json.dump(out, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    if args.csv:
        w = csv.writer(sys.stdout, lineterminator="\n")
        w.writerow(["version", "era", "commit", "title", "bug"])
        for v, era, c in _era_rows():
            w.writerow([v, era] + ([c.commit, c.title, c.bug] if c else ["", "", ""]))
        return 0
    print("version  era   changes that take effect")
    last = None
    for v, era, c in _era_rows():
        first = v != last
        last = v
        text = (f"{c.commit}  {c.title}" + (f"  [{c.bug}]" if c.bug else "")) if c else ""
        print(f"{v if first else '':8} {era if first else '':5} {text}".rstrip())
    print("eras begin at: " + ", ".join(f"{e} {v}" for v, e in ERA_STARTS))
    print("stable point releases placed: "
          + ", ".join(f"{b}.1 ... {b}.{n}" for b, n in STABLE_RESEARCHED.items()))
    return 0


# --- diff --------------------------------------------------------------------------

def cmd_diff(argv):
    try:
        from .host import diff
    except ImportError as e:
        print(f"mmemu diff: error: needs the host oracle (mmemu.host): {e}", file=sys.stderr)
        return 2
    return diff.main(argv)


# --- vm ----------------------------------------------------------------------------

def cmd_vm(args):
    from .host import vmimage
    say = (lambda t: print(f"{args.kernel}: {t}", file=sys.stderr))
    try:
        if args.action == "list":
            for pkg, ver in sorted(vmimage.available_packages().items(),
                                   key=lambda kv: vmimage.version_key(kv[1])):
                pinned = [k for k, v in vmimage.DEFAULTS.items() if v == ver]
                print(f"{vmimage.upstream_of(ver):10} {ver:22} {pkg}"
                      + (f"   (= {pinned[0]})" if pinned else ""))
            return 0
        d = vmimage.prepare(args.kernel, say)
        info = vmimage.info(d)
        print(f"{info['package']} {info['debian_version']} (upstream {info['version']}): {d}")
        if args.action == "boot":
            from .host.vm import Guest
            g = Guest(args.kernel, accel=args.accel, progress=say)
            try:
                print(f"booted under {g.accel.upper()} in {g.boot_seconds:.1f} s: {g.proc_version}")
            finally:
                g.close()
        return 0
    except vmimage.VmUnavailable as e:
        print(f"mmemu vm: {e}", file=sys.stderr)
        return 2


# --- explore -----------------------------------------------------------------------

def cmd_explore(args):
    from .scenarios.races import RACES, find
    if args.list:
        rows = [{"id": r.id, "name": r.name, "bug": r.bug, "fails": r.fails, "title": r.title} for r in RACES]
        if args.json:
            json.dump(rows, sys.stdout, indent=1)
            print()
        else:
            for r in rows:
                print(f"{r['id']:5} {r['bug']:4} buggy in {r['fails']:10} {r['name']}: {r['title']}")
        return 0
    if not args.scenario:
        raise UsageError("a race scenario is required (mmemu explore --list shows them)")
    r = find(args.scenario)
    if r is None:
        raise UsageError(f"no race scenario {args.scenario!r}; choices: "
                         + ", ".join(f"{x.id} ({x.name})" for x in RACES))
    res = r.explore(args.kernel, strategy=args.strategy, budget=args.budget, seed=args.seed,
                    backports=tuple(args.backport or ()))
    if args.json:
        out = res.to_json()
        out.update(id=r.id, name=r.name, bug=r.bug)
        if res.counterexamples:
            out["timeline"] = res.counterexamples[0].timeline()
        json.dump(out, sys.stdout, indent=1)
        print()
        return 0
    print(f"{r.id} {r.name} ({r.bug}) on {args.kernel}, {args.strategy}:")
    if res.counterexamples:
        c = res.counterexamples[0]
        print(f"the shortest wrong interleaving ({len(c)} steps, schedule {c.schedule}):")
        print(c.timeline())
    print(res.summary() + f" [{res.seconds:.2f} s"
          + (f", {res.states} states" if args.strategy == "exhaustive" else "") + "]")
    return 0


# --- replay ------------------------------------------------------------------------

def cmd_replay(args):
    from .trace import TraceError, load
    from .workloads import replay
    try:
        tr = load(args.trace, args.format)
        out = replay.run(tr, kernel=args.kernel, pages=args.pages, accesses=args.accesses, costs=_costs(args))
    except (TraceError, ValueError, OSError) as e:
        raise UsageError(str(e)) from None
    plots = _plots(args, "replay", out, out["pages"], f"replay of {out['trace']}")
    if args.json:
        _emit(out, args, [])
        return 0
    f = out["faults"]
    print(f"{out['trace']}: {out['accesses']} accesses ({out['writes']} stores) over {out['pages']} pages "
          f"in {out['vmas']} VMAs, kernel {out['kernel']}")
    print(f"  faults: {f['missing']} MISSING (one per distinct page, served in the core), {f['total']} in all, "
          f"{f['cow']} COW")
    print(f"  TLB: {out['tlb']['hits']} hits, {out['tlb']['misses']} misses")
    if out["dropped_kernel_addresses"]:
        print(f"  {out['dropped_kernel_addresses']} accesses above user space dropped (vsyscall)")
    print(f"  emulated time: {out['emulated_ms']:.3f} ms ({out['costs']['source']})")
    w = out["wall"]
    print(f"  wall: replay {w['replay_s']} s ({w['ns_per_access']} ns/access), peak RSS {w['peak_rss_kib']} KiB")
    for p in plots:
        print(f"  plot: {p}")
    return 0


def _plots(args, name, out, npages, title, by="time"):
    if not getattr(args, "plot", None):
        return []
    from .workloads import plots
    try:
        return plots.write(args.plot, name, out["_faults"], npages, title, by=by)
    except OSError as e:
        raise UsageError(f"--plot {args.plot}: {e}") from None


# --- workloads: postcopy, snapshot, umap; calibrate ----------------------------------

def _bar(total, args):
    """A progress callback (tqdm on a terminal only), and its closer."""
    if args.json or not sys.stderr.isatty():
        return None, lambda: None
    from tqdm import tqdm
    bar = tqdm(total=total, unit="acc", unit_scale=True, leave=False, file=sys.stderr)
    return bar.update, bar.close


def _emit(out, args, table):
    public = {k: v for k, v in out.items() if not k.startswith("_")}
    if args.json:
        json.dump(public, sys.stdout, indent=1)
        print()
    else:
        width = max(len(k) for k, _ in table)
        for k, v in table:
            print(f"  {k:<{width}}  {v}")


def _costs(args):
    from . import cost
    try:
        return cost.DEFAULT if args.costs == "default" else cost.load(None if args.costs == "stored" else args.costs)
    except ValueError as e:
        raise UsageError(str(e)) from None


def _workload(args, run, **kw):
    """run(...) with the flags every workload takes (_workload_flags), a
    progress bar on a terminal, and bad input as one line."""
    from .trace import TraceError
    tick, close = _bar(args.accesses, args)
    try:
        return run(pages=args.pages, accesses=args.accesses, pattern=args.pattern, write_share=args.write_share,
                   seed=args.seed, kernel=args.kernel, progress=tick, **kw)
    except (TraceError, ValueError, OSError) as e:
        raise UsageError(str(e)) from None
    finally:
        close()


def cmd_postcopy(args):
    from .cost import Link
    from .trace import TraceError, load
    from .workloads import postcopy
    try:
        tr = load(args.trace, args.format) if args.trace else None
        link = Link(gbps=args.gbps, latency_us=args.latency_us, preempt=args.preempt)
    except (TraceError, ValueError, OSError) as e:
        raise UsageError(str(e)) from None
    out = _workload(args, postcopy.run, vcpus=args.vcpus, link=link, precopy_rounds=args.precopy_rounds,
                    dirty_rate=args.dirty_rate, costs=_costs(args), trace=tr)
    plots = _plots(args, "postcopy", out, out["pages"],
                   f"postcopy {out['pages']} pages{' preempt' if args.preempt else ''}")
    lat, b = out["latency_us"], out["blocktime_ms"]
    if not args.json:
        print(f"postcopy: {out['pages']} pages ({out['pages'] * 4096 >> 20} MiB), {out['vcpus']} vCPU(s), "
              f"{out['accesses']} {out['pattern']} accesses, kernel {out['kernel']}, "
              f"{out['link']['gbps']} Gbps{' + preempt channel' if args.preempt else ''}")
    _emit(out, args, [
        ("remote faults", f"{out['faults']['remote']} (pages the stream had delivered: "
                          f"{out['faults']['arrived_before_touch']})"),
        ("fault latency", f"mean {lat['mean']} us, p50 {lat['p50']} us, p99 {lat['p99']} us, max {lat['max']} us"),
        ("latency dist", " ".join(f"{1 << i}us:{n}" for i, n in enumerate(out["latency_dist"]) if n)),
        ("blocktime", f"{b['total']:.3f} ms all vCPUs; per vCPU " + ", ".join(f"{x:.3f}" for x in b["per_vcpu"]) + " ms"),
        ("migration", f"{out['migration_ms']:.3f} ms (precopy {out['precopy']['time_ms']:.3f} ms, "
                      f"{out['precopy']['rounds']} rounds; downtime {out['downtime_ms']} ms), "
                      f"{out['pages_per_s']:.0f} pages/s"),
        ("guest time", f"{out['guest_ms']:.3f} ms emulated after switchover"),
        ("memory", "matches the source image" if out["memory_matches_source"] else "DIFFERS from the source"),
        ("costs", out["costs"]["source"]),
        ("wall", f"{out['wall']['run_s']} s ({out['wall']['ns_per_access']} ns/access), "
                 f"peak RSS {out['wall']['peak_rss_mib']} MiB"),
    ] + [("plot", p) for p in plots])
    return 0 if out["memory_matches_source"] else 1


def cmd_snapshot(args):
    from .workloads import snapshot
    out = _workload(args, snapshot.run, vcpus=args.vcpus, mode=args.mode, costs=_costs(args))
    plots = _plots(args, "snapshot", out, out["pages"], f"snapshot ({out['mode']})")
    if not args.json:
        print(f"snapshot ({out['mode']}): {out['pages']} pages, {out['vcpus']} vCPU(s), {out['accesses']} "
              f"{out['pattern']} accesses, kernel {out['kernel']}")
    _emit(out, args, [
        ("faults", f"{out['faults']['wp']} write-protect, {out['faults']['uffd']} of them userfaults"),
        ("stalls", f"{out['stall_us']['per_fault']} us per userfault, {out['stall_us']['total']} us in all"),
        ("saved", f"{out['saved']['pages']} pages ({out['saved']['bytes'] >> 20} MiB; {out['saved']['by_fault']} "
                  f"by the fault handler) in "
                  f"{out['saved']['rounds']} round(s); guest stopped {out['stop_ms']} ms"),
        ("snapshot", f"{out['snapshot_ms']:.3f} ms emulated"),
        ("image", "equals memory at the snapshot point" if out["image_matches"] else "DIFFERS from memory"),
        ("wall", f"{out['wall']['run_s']} s, peak RSS {out['wall']['peak_rss_mib']} MiB"),
    ] + [("plot", p) for p in plots])
    return 0 if out["image_matches"] else 1


def cmd_umap(args):
    from .workloads import umap
    out = _workload(args, umap.run, buffer_pages=args.buffer, in_core=args.in_core)
    plots = _plots(args, "umap", out, out["pages"], f"umap on {out['kernel']}",
                   by="time" if out["in_core"] else "access")
    if not args.json:
        print(f"umap: {out['pages']} pages over a store, {out['buffer_pages']} resident at most, "
              f"{out['accesses']} {out['pattern']} accesses, kernel {out['kernel']}")
    _emit(out, args, [
        ("outcome", out["deadlock"] or out["outcome"]),
        ("faults", f"{out['faults']['missing']} MISSING fills, {out['faults']['wp']} WP (first store after a fill)"),
        ("evictions", f"{out['evictions']} ({out['writebacks']} written back)"),
        ("store", "n/a" if out["store_matches"] is None else
                  ("holds every page's last contents" if out["store_matches"] else "DIFFERS")),
        ("wall", f"{out['wall']['run_s']} s, peak RSS {out['wall']['peak_rss_mib']} MiB"),
    ] + [("plot", p) for p in plots])
    return 0 if out["outcome"] == "completed" and out["store_matches"] else 1


def cmd_calibrate(args):
    from . import cost
    try:
        model = cost.calibrate(progress=None if args.json else (lambda w: print(f"  measuring {w} ...",
                                                                               file=sys.stderr)))
        path = None if args.dry_run else cost.save(model, args.output)
    except OSError as e:
        raise UsageError(f"calibration failed: {e}") from None
    if args.json:
        json.dump({"costs": model.to_json(), "stored": path}, sys.stdout, indent=1)
        print()
        return 0
    print(f"{model.source}:")
    for k in cost.EVENTS:
        print(f"  {k:<12} {model.ns[k]:>8} ns   (default {cost.DEFAULT_NS[k]})")
    print(f"stored in {path}" if path else "not stored (--dry-run)")
    return 0


def _workload_flags(p, pages, accesses, pattern="uniform"):
    p.add_argument("--pages", type=positive_int, default=pages, help=f"guest pages (default {pages})")
    p.add_argument("--accesses", type=nonnegative_int, default=accesses,
                   help=f"accesses in all (default {accesses})")
    p.add_argument("--pattern", choices=("uniform", "zipf", "hot_cold", "sequential"), default=pattern)
    p.add_argument("--write-share", type=float, default=0.2, help="share of accesses that store (default 0.2)")
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--kernel", type=kernel_version, default="6.18", metavar="V")
    p.add_argument("--json", action="store_true", help="write JSON to stdout (wall-clock figures under 'wall')")


def cmd_trace(args):
    from .trace import TraceError, record
    if getattr(args, "trace_cmd", None) != "record":
        raise UsageError("a trace subcommand is required: mmemu trace record -o FILE -- CMD ...")
    cmd = list(args.command)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    try:
        t = record(cmd, args.output)
    except (TraceError, OSError) as e:
        raise UsageError(str(e)) from None
    print(f"{args.output}: {len(t)} accesses ({int(t.writes.sum())} stores) over {len(t.pages())} pages",
          file=sys.stderr)
    return 0


def _parser():
    parser = ArgumentParser(prog="mmemu", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"mmemu {__version__}")
    sub = parser.add_subparsers(dest="cmd", metavar="{scenarios,bugs,eras,explore,replay,trace,postcopy,snapshot,umap,calibrate,diff,vm}")
    sc = sub.add_parser("scenarios", help="scenario x kernel version matrix")
    sc.add_argument("--kernel", action="append", type=kernel_version, metavar="V",
                    help="a version, 5.7 ... 6.18, a stable point release such as "
                         "6.1.176, or host (repeatable); default: all")
    sc.add_argument("--only", metavar="S,...",
                    help="comma-separated scenario ids (S3; S24 = every S24/<backing>) or names")
    sc.add_argument("--on", metavar="host|vm:K",
                    help="also run each scenario on a real kernel: the host, or a Debian "
                         "kernel booted under QEMU (vm:6.1, vm:6.12), and compare it with the "
                         "engine at that kernel's exact version")
    output_flags(sc)
    progress_flags(sc)
    bg = sub.add_parser("bugs", help="the bug tags: what each is, introduced, fixed")
    output_flags(bg, csv_too=False)
    er = sub.add_parser("eras", help="versions, eras and the changes between them")
    output_flags(er)
    ex = sub.add_parser("explore", help="interleavings of a race scenario; prints the shortest wrong one")
    ex.add_argument("scenario", nargs="?", help="a race's id or name (S51, uffd-wp-deferred-flush-3cpu)")
    ex.add_argument("--kernel", type=kernel_version, default="6.18", metavar="V",
                    help="kernel version (default 6.18)")
    ex.add_argument("--backport", action="append", metavar="COMMIT", help="apply a change (repeatable)")
    ex.add_argument("--strategy", choices=("exhaustive", "random", "pct"), default="exhaustive")
    ex.add_argument("--budget", type=positive_int, default=100_000, help="complete runs at most")
    ex.add_argument("--seed", type=nonnegative_int, default=0)
    ex.add_argument("--list", action="store_true", help="list the race scenarios")
    ex.add_argument("--json", action="store_true", help="write JSON to stdout")
    rp = sub.add_parser("replay", help="replay a memory-access trace as postcopy serves it")
    rp.add_argument("trace", help="a trace file: valgrind lackey output, csv (addr[,R|W]) or npz (addrs, writes)")
    rp.add_argument("--format", choices=("lackey", "csv", "npz"), help="the trace's format (default: detected)")
    rp.add_argument("--kernel", type=kernel_version, default="6.18", metavar="V")
    rp.add_argument("--pages", type=positive_int, help="guest pages at most (default: what the trace touches)")
    rp.add_argument("--accesses", type=positive_int, help="replay the first N accesses only")
    rp.add_argument("--seed", type=nonnegative_int, default=0, help="(a trace replays the same for any seed)")
    rp.add_argument("--json", action="store_true", help="write JSON to stdout (wall-clock figures under 'wall')")
    rp.add_argument("--costs", default="stored", metavar="stored|default|FILE",
                    help="cost model for emulated time (default: mmemu calibrate's when stored)")
    rp.add_argument("--plot", metavar="DIR", help="write PNG plots there")
    tr = sub.add_parser("trace", help="record a trace: mmemu trace record -o FILE -- CMD ...")
    trs = tr.add_subparsers(dest="trace_cmd", metavar="record")
    rec = trs.add_parser("record", help="run CMD under valgrind lackey and keep its memory trace")
    rec.add_argument("-o", "--output", required=True, help="the trace file (.gz: compressed)")
    rec.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")
    pc = sub.add_parser("postcopy", help="postcopy live migration of a guest: remote faults, latency, blocktime")
    _workload_flags(pc, 1 << 20, 10_000_000)
    pc.add_argument("--vcpus", type=positive_int, default=1)
    pc.add_argument("--gbps", type=float, default=10.0, help="link bandwidth (default 10)")
    pc.add_argument("--latency-us", type=float, default=250.0, help="one-way request latency (default 250)")
    pc.add_argument("--preempt", action="store_true", help="page requests on a channel of their own")
    pc.add_argument("--precopy-rounds", type=nonnegative_int, default=0, help="precopy rounds first (default 0)")
    pc.add_argument("--dirty-rate", type=float, default=50_000.0, help="guest writes/s during precopy")
    pc.add_argument("--costs", default="stored", metavar="stored|default|FILE",
                    help="cost model: mmemu calibrate's (default, when stored), the built-in one, or a file")
    pc.add_argument("--plot", metavar="DIR", help="write PNG plots there")
    pc.add_argument("--trace", metavar="FILE", help="run a recorded trace on one vCPU instead of --pattern "
                    "(the guest is the pages it touches)")
    pc.add_argument("--format", choices=("lackey", "csv", "npz"), help="the trace's format (default: detected)")
    sn = sub.add_parser("snapshot", help="a live snapshot under uffd-wp (sync) or WP_ASYNC + PAGEMAP_SCAN")
    _workload_flags(sn, 1 << 18, 4_000_000)
    sn.add_argument("--vcpus", type=positive_int, default=1)
    sn.add_argument("--mode", choices=("sync", "async"), default="sync")
    sn.add_argument("--costs", default="stored", metavar="stored|default|FILE")
    sn.add_argument("--plot", metavar="DIR", help="write PNG plots there")
    um = sub.add_parser("umap", help="a umap-style user-level pager (MISSING fill, WP eviction, write-back)")
    _workload_flags(um, 4096, 100_000, pattern="zipf")
    um.add_argument("--buffer", type=positive_int, default=512, help="resident pages at most (default 512)")
    um.add_argument("--plot", metavar="DIR", help="write PNG plots there (faults by access)")
    um.add_argument("--in-core", action="store_true",
                    help="the pager as an in-core resolver over a replayed trace (millions of accesses)")
    ca = sub.add_parser("calibrate", help="measure this machine's kernel costs for emulated time")
    ca.add_argument("-o", "--output", help="where to store them (default: the user's cache)")
    ca.add_argument("--dry-run", action="store_true", help="measure and print, store nothing")
    ca.add_argument("--json", action="store_true")
    sub.add_parser("diff", help="differential run against the host kernel (see mmemu diff -h)",
                   add_help=False)
    vm = sub.add_parser("vm", help="real Debian kernels booted under QEMU, as oracles")
    vm.add_argument("action", choices=("fetch", "boot", "list"),
                    help="fetch: download and prepare a kernel package; boot: also boot it "
                         "once and report the time; list: the kernel packages apt has")
    vm.add_argument("kernel", nargs="?", default="6.1",
                    help="6.1, 6.12 (pinned Debian versions), a Debian package version or an "
                         "upstream point release the archive has (default 6.1)")
    vm.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto",
                    help="auto: KVM where a guest boots with it (probed once), else TCG")
    return parser


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "diff":
            return cmd_diff(argv[1:])
        parser = _parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:         # --help, --version, or a bad argument (one line)
            return e.code
        command = {"scenarios": cmd_scenarios, "bugs": cmd_bugs, "eras": cmd_eras,
                   "explore": cmd_explore, "replay": cmd_replay, "trace": cmd_trace,
                   "postcopy": cmd_postcopy, "snapshot": cmd_snapshot, "umap": cmd_umap,
                   "calibrate": cmd_calibrate, "vm": cmd_vm}.get(args.cmd)
        if command is None:
            raise UsageError("a command is required: scenarios, bugs, eras, explore, replay, postcopy, "
                             "snapshot, umap, calibrate, diff or vm (mmemu -h)")
        return command(args)
    except UsageError as e:
        prog = "mmemu" + (f" {argv[0]}" if argv and not argv[0].startswith("-") else "")
        print(f"{prog}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except BrokenPipeError:             # `mmemu scenarios | head`: stop quietly, as if
        devnull = os.open(os.devnull, os.O_WRONLY)   # killed by SIGPIPE (not 1: a result)
        os.dup2(devnull, sys.stdout.fileno())   # so the exit-time flush does not fail again
        return 128 + signal.SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
