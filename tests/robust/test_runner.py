"""Random legal operation sequences on small machines of every version,
check() and the VMA tables after each step; the same seed gives the same
digest. A failure means a sequence of ordinary calls reached a state no
kernel reaches (or raised what Linux never would): the message has the
seed, the version and the shrunk op list (Python to paste)."""
import pytest

import mmemu

from . import runner


def _fail(stats):
    lines = [f"{len(stats['defects'])} defects:"]
    for d in stats["defects"].values():
        lines.append(f"* {d['kind']} in {d['method']}: {d['detail']}  (kernel {d['kernel']}, seed "
                     f"{d['seed']}, failing op #{d['index']}, shrunk to {d['nops']} ops)\n{d['repro']}")
    return "\n".join(lines)


@pytest.mark.parametrize("version", mmemu.VERSIONS)
def test_random_sequences(version, long_mode):
    i = mmemu.VERSIONS.index(version)
    nseeds, nops = (40, 5000) if long_mode else (1, 40)
    seeds = [i + k * len(mmemu.VERSIONS) for k in range(nseeds)]
    stats = runner.run_many(seeds, nops, shrink_budget=30.0 if long_mode else 1.0)
    assert not stats["defects"], _fail(stats)


def test_deterministic(long_mode):
    """Same seed, same results, bit for bit (digest of every outcome)."""
    for seed in range(8 if long_mode else 3):
        try:
            a = runner.run_seed(seed, 150)
            b = runner.run_seed(seed, 150)
        except runner.Defect:
            continue            # a defect is test_random_sequences' business
        assert a[0] == b[0], f"seed {seed}: digests differ"
