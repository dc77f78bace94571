"""What reliability costs: saving and loading a machine (bytes per resident
page, time), and creating many memfds (linear, not quadratic, in the count).
Engine only: the host has no analogue of a saved machine."""
import pytest

import mmemu
from mmemu import PAGE_SIZE

from conftest import SIZES, fresh


@pytest.mark.parametrize("npages", SIZES)
def test_save_load_round_trip(benchmark, npages, tmp_path):
    m, p, a = fresh(npages, populated=True, copies=1)
    path = tmp_path / "m.mmemu"

    def round_trip():
        m.save(path)
        return mmemu.Machine.load(path)
    m2 = benchmark.pedantic(round_trip, rounds=3, iterations=1)
    size = path.stat().st_size
    benchmark.extra_info["file_bytes_per_page"] = size / npages
    print(f"\nsave+load of {npages} resident pages: {benchmark.stats.stats.min * 1e3:.1f} ms, "
          f"{size / npages:.1f} file bytes per page")
    assert m2.processes[0].versions(a, 4).tolist() == p.versions(a, 4).tolist()


def test_65535_memfds(benchmark):
    def run():
        p = mmemu.Machine(memory=64 << 20).spawn()
        for _ in range(65535):
            p.memfd_create("f")
        return p
    benchmark.pedantic(run, rounds=1, iterations=1)
    print(f"\n65,535 memfd_create calls: {benchmark.stats.stats.min:.2f} s")
