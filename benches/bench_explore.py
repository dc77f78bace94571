"""The race explorer's speed: S51 (seed 002, three CPUs) explored
exhaustively, with and without state hashing, in the buggy (5.10) and the
fixed (5.12) era: complete runs per second and the size of the space.
Engine only: no host kernel can be made to take a chosen interleaving."""
import pytest

from mmemu.scenarios.races import find


@pytest.mark.parametrize("kernel", ["5.10", "5.12"])
@pytest.mark.parametrize("hashing", [True, False], ids=["state-hashing", "plain"])
def test_explore_s51_exhaustive(benchmark, kernel, hashing):
    r = find("S51")
    res = benchmark.pedantic(lambda: r.explore(kernel, state_hashing=hashing), rounds=3, iterations=1)
    assert res.complete
    assert bool(res.counterexamples) == (kernel == "5.10")
    t = benchmark.stats.stats.min
    benchmark.extra_info.update(explored=res.explored, states=res.states, runs_per_s=res.explored / t)
    print(f"\nS51 on {kernel}, {'state hashing' if hashing else 'plain DFS'}: {res.explored} runs "
          f"({res.states} states hashed), {t:.2f} s, {res.explored / t:.0f} runs/s")
