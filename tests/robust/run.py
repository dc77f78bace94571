"""Nightly-size runs of the fuzzer and the random-sequence runner, with totals.

    python -m tests.robust.run --fuzz-calls 1000000 --ops 10000000 --jobs 2
    python -m tests.robust.run --fuzz-calls 2000 --ops 20000          # a quick look

Prints calls made, crashes (unacceptable exceptions), corrupted states,
ops, invariant violations, per-version counts, wall time, and each
distinct defect once with its reproduction. Exit status 1 if any.
"""
import argparse
import multiprocessing as mp
import sys
import time

import mmemu

from . import fuzz, runner

OPS_PER_SEED = 5000


def _fuzz_job(args):
    seed, ncalls = args
    return fuzz.fuzz(seed, ncalls, mmemu.VERSIONS)


def _runner_job(args):
    seeds, nops = args
    return runner.run_many(seeds, nops, shrink_budget=30.0)


def _merge(into, st):
    for k, v in st.items():
        if k == "per_version":
            for ver, n in v.items():
                into[k][ver] = into[k].get(ver, 0) + n
        elif k == "defects":
            for key, d in v.items():
                into[k].setdefault(key, d)
        else:
            into[k] = into.get(k, 0) + v


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tests.robust.run", description=__doc__.split("\n")[0])
    ap.add_argument("--fuzz-calls", type=int, default=100_000)
    ap.add_argument("--ops", type=int, default=1_000_000)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ops-per-seed", type=int, default=OPS_PER_SEED)
    a = ap.parse_args(argv)
    t0 = time.time()
    jobs = max(1, a.jobs)
    fz = {"calls": 0, "worlds": 0, "crashes": 0, "corrupted": 0, "per_version": {}, "defects": {}}
    rn = {"ops": 0, "runs": 0, "violations": 0, "errors": 0, "per_version": {}, "defects": {}}
    chunk = 20_000
    fuzz_tasks = [(a.seed * 1_000_003 + i, min(chunk, a.fuzz_calls - i * chunk))
                  for i in range((a.fuzz_calls + chunk - 1) // chunk)]
    nseeds = (a.ops + a.ops_per_seed - 1) // a.ops_per_seed
    seeds = [a.seed * 1_000_003 + s for s in range(nseeds)]
    per = max(1, len(seeds) // (jobs * 8) or 1)
    run_tasks = [(seeds[i:i + per], a.ops_per_seed) for i in range(0, len(seeds), per)]
    with mp.Pool(jobs) as pool:
        fres = pool.imap_unordered(_fuzz_job, fuzz_tasks)
        rres = pool.imap_unordered(_runner_job, run_tasks)
        # A running total after each finished task (flushed: a run stopped
        # early still says exactly what it covered).
        for st in fres:
            _merge(fz, st)
            print(f"[progress] fuzz {fz['calls']} calls, {fz['crashes']} crashes, "
                  f"{fz['corrupted']} corrupted, {time.time() - t0:.0f} s", flush=True)
        for st in rres:
            _merge(rn, st)
            print(f"[progress] runner {rn['ops']} ops in {rn['runs']} runs, {rn['violations']} "
                  f"violations, {rn['errors']} errors, {time.time() - t0:.0f} s", flush=True)
    wall = time.time() - t0
    print(f"fuzz:   {fz['calls']} calls in {fz['worlds']} worlds, {fz['crashes']} crashes "
          f"(unacceptable outcomes), {fz['corrupted']} corrupted states, {len(fz['defects'])} distinct")
    print(f"runner: {rn['ops']} ops in {rn['runs']} runs, {rn['violations']} invariant violations, "
          f"{rn['errors']} unacceptable outcomes, {len(rn['defects'])} distinct")
    print("per version (fuzz calls / runner ops):")
    for v in mmemu.VERSIONS:
        print(f"  {v:>5}: {fz['per_version'].get(v, 0):>9} / {rn['per_version'].get(v, 0):>10}")
    print(f"wall time: {wall:.1f} s ({jobs} jobs)")
    for key, d in sorted(fz["defects"].items(), key=lambda kv: kv[1]["method"]):
        print(f"\n[fuzz] {d['kind']} in {d['method']} [{d['frame']}]: {d['detail']}\n"
              f"  kernel {d['kernel']!r}; after fuzz.WORLD_SRC:\n    " + "\n    ".join(d["calls"]))
    for key, d in rn["defects"].items():
        print(f"\n[runner] {d['kind']} in {d['method']}: {d['detail']} (kernel {d['kernel']}, seed "
              f"{d['seed']}, op #{d['index']}, shrunk to {d['nops']} ops)\n{d['repro']}")
    return 1 if fz["defects"] or rn["defects"] else 0


if __name__ == "__main__":
    sys.exit(main())
