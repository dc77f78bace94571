"""The `mmemu` command.

    mmemu scenarios   scenario x kernel version matrix (the main job)
    mmemu eras        the version -> era -> rule table
    mmemu diff        random programs on the host kernel and on the engine
"""
import argparse
import sys

from .eras import CHANGES, VERSIONS, era_of, policy_for

LEGEND = ("  .  passes (fixed or never affected)    B  reproduces the bug, as expected\n"
          "  -  skipped (feature absent)            !  unexpected result (see below)")


def _progress(iterable, total, enabled, desc):
    if not enabled:
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, total=total, desc=desc, unit="run", file=sys.stderr, leave=False)


def cmd_scenarios(args):
    from .scenarios import all_scenarios, run
    scenarios = all_scenarios()
    if args.only:
        wanted = {s.strip() for s in args.only.split(",")}
        scenarios = [s for s in scenarios if s.id in wanted or s.name in wanted]
        if not scenarios:
            print(f"no scenario matches {args.only!r}", file=sys.stderr)
            return 2
    versions = args.kernel or list(VERSIONS)
    for v in versions:
        if v != "host":
            policy_for(v)                    # unknown versions: ValueError with the choices
    jobs = [(s, v) for s in scenarios for v in versions]
    results = {}
    for s, v in _progress(jobs, len(jobs), not args.no_progress and sys.stderr.isatty() or args.progress,
                          "scenarios"):
        results[(s.id, v)] = run(s, v)
    symbol = {"pass": ".", "bug": "B", "skip": "-"}
    width = max(max(len(s.id) for s in scenarios), 6) + 2
    print("kernel".ljust(width) + " ".join(v.split(".")[0] for v in versions))
    print("".ljust(width) + " ".join(v.split(".")[1][-1] if v != "host" else "h" for v in versions))
    print("era".ljust(width) + " ".join((era_of(v) or "?")[1] if v != "host" else "h" for v in versions))
    unexpected = []
    for s in scenarios:
        cells = []
        for v in versions:
            r = results[(s.id, v)]
            cells.append(symbol.get(r.label, "!"))
            if not r.expected:
                unexpected.append(r)
        bug = f"  {s.bug}" if s.bug else ""
        print(s.id.ljust(width) + " ".join(cells) + f"   {s.title}{bug}")
    print()
    print(LEGEND)
    total = len(results)
    bugs = sum(1 for r in results.values() if r.label == "bug")
    print(f"\n{total} runs: {total - len(unexpected)} as expected ({bugs} reproduce their bug), "
          f"{len(unexpected)} unexpected")
    for r in unexpected:
        print(f"  ! {r.scenario.id} on {r.version}: {r.status}: {r.message or 'passed where the bug should reproduce'}")
    return 1 if unexpected else 0


def cmd_eras(args):
    print("version  era   changes that take effect")
    for v in VERSIONS:
        here = [c for c in CHANGES if c.version == v]
        first = True
        for c in here or [None]:
            text = f"{c.commit}  {c.title}" + (f"  [{c.bug}]" if c and c.bug else "") if c else ""
            print(f"{v if first else '':8} {era_of(v) if first else '':5} {text}")
            first = False
    return 0


def cmd_diff(argv):
    try:
        from .host import diff
    except ImportError as e:
        print(f"mmemu diff needs the host oracle (mmemu.host): {e}", file=sys.stderr)
        return 2
    return diff.main(argv)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "diff":
        return cmd_diff(argv[1:])
    parser = argparse.ArgumentParser(prog="mmemu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd")
    sc = sub.add_parser("scenarios", help="scenario x kernel version matrix")
    sc.add_argument("--kernel", action="append", help="a version (repeatable); default: all")
    sc.add_argument("--only", help="comma-separated scenario ids or names")
    sc.add_argument("--no-progress", action="store_true", help="no progress bar")
    sc.add_argument("--progress", action="store_true", help="progress bar even when not a terminal")
    sub.add_parser("eras", help="versions, eras and the changes between them")
    sub.add_parser("diff", help="differential run against the host kernel (see mmemu diff -h)")
    args = parser.parse_args(argv)
    if args.cmd == "scenarios":
        return cmd_scenarios(args)
    if args.cmd == "eras":
        return cmd_eras(args)
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
