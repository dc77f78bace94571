"""The batch access path (Thread.replay): random accesses over a large
guest, every first touch a MISSING userfault resolved in the core (the
postcopy shape), then the same trace over populated memory. Issue 12's
targets: 50M accesses over 4M pages in <= 10 s (<= 200 ns per access with
faults, <= 100 ns once populated). The host's figures for the same shapes
come from the same run: a random load over populated memory, and a MISSING
fault served by a C service thread with UFFDIO_COPY (mmemu.host.timing)."""
import numpy as np
import pytest

import mmemu
from mmemu import MAP_ANONYMOUS, MAP_NORESERVE, MAP_PRIVATE, PAGE_SIZE, PROT_READ, PROT_WRITE
from mmemu.host import timing
from mmemu.uffd import UFFDIO_REGISTER_MODE_MISSING


@pytest.mark.parametrize("npages,accesses", [(1 << 20, 10_000_000), (1 << 22, 50_000_000)],
                         ids=["1M-pages-10M", "4M-pages-50M"])
def test_replay_random_missing_in_core(benchmark, npages, accesses):
    rng = np.random.default_rng(0)
    m = mmemu.Machine(memory=(npages + 8192) * PAGE_SIZE)
    p = m.spawn()
    a = p.mmap(0, npages * PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE)
    u = p.userfaultfd()
    u.api()
    u.register(a, npages * PAGE_SIZE, UFFDIO_REGISTER_MODE_MISSING)
    u.serve_core("copy", base=a, versions=np.arange(1, npages + 1, dtype=np.uint64))
    addrs = (np.uint64(a) + rng.integers(0, npages, accesses, dtype=np.uint64) * np.uint64(PAGE_SIZE))
    t = p.thread()
    first = benchmark.pedantic(lambda: t.replay(addrs), rounds=1, iterations=1)
    cold = benchmark.stats.stats.min
    import time
    t0 = time.perf_counter()
    again = t.replay(addrs)
    warm = time.perf_counter() - t0
    assert first["uffd_faults"] == len(np.unique(addrs)) and again["faults"] == 0
    far, _ = timing.random_accesses(1 << 16, 2_000_000)
    rt = timing.uffd_round_trip_c(500)
    host_load, host_fault = far / 2e6 * 1e9, None if rt is None else rt / 500 * 1e9
    benchmark.extra_info.update(ns_per_access_cold=cold / accesses * 1e9,
                                ns_per_access_populated=warm / accesses * 1e9,
                                missing_faults=first["uffd_faults"], host_random_load_ns=host_load,
                                host_missing_fault_c_thread_ns=host_fault)
    print(f"\n{accesses} random accesses over {npages} pages: {cold:.2f} s with "
          f"{first['uffd_faults']} MISSING faults served in the core ({cold / accesses * 1e9:.0f} ns/access); "
          f"populated: {warm:.2f} s ({warm / accesses * 1e9:.0f} ns/access). Host: a random load over 256 MiB "
          f"{host_load:.1f} ns; a MISSING fault through a C service thread "
          + ("n/a" if host_fault is None else f"{host_fault / 1e3:.1f} us"))
