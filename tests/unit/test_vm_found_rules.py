"""Rules a real kernel booted under QEMU showed the engine had wrong
(`mmemu diff --against vm:6.1` / `vm:6.12`), each pinned at the versions
the kernels showed and the history places.

Each test fails if the rule is undone or moved to another release.
"""
import pytest

import mmemu
from mmemu import MAP_ANONYMOUS, MAP_PRIVATE, PAGE_SIZE, PROT_READ, PROT_WRITE
from mmemu.constants import KPF_KSM


def _anon_page_flags(kernel):
    m = mmemu.Machine(kernel=kernel)
    p = m.spawn()
    a = p.mmap(0, PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
    p.write(a, b"x")
    return m.frame(p.pagemap(a).pfn)


@pytest.mark.parametrize("kernel, ksm", [
    ("6.1.176", False),    # before dee3d0bef2b0 (6.10): PageKsm() proper
    ("6.9", False),
    ("6.10", True),        # the rewrite's test matches any anon mapping
    ("6.12.118", True),    # seen on Debian's 6.12.118 guest
    ("6.18", True),
    ("6.18.44", False),    # 81401cebfc15 in 6.18.y: the 6.18.44 host shows it fixed
])
def test_kpageflags_reports_ksm_on_every_anon_page_from_the_rewrite_to_its_fix(kernel, ksm):
    f = _anon_page_flags(kernel)
    assert ("ksm" in f.flags) == ksm
    assert bool(f.kpageflags & (1 << KPF_KSM)) == ksm
