"""The batched, prefetching KSM scan (issue 13) gives the same results as the
page-at-a-time scan it replaced: seeded workloads (several processes,
MADV_MERGEABLE regions, repeated contents past max_page_sharing, forks,
partial unmerges, exits, scans with various page budgets) end in the state
whose digest the old core produced. A failure means a different page was
merged, a different page became the KSM page, or a table or counter moved."""
import pytest

from ksm_workload import CASES, run

# Produced by the KSM core of 9dcec07 (before the batched scan), digesting the
# KSM tables, the frame table and the page tables; see ksm_workload.py.
EXPECTED = {
    (0, '6.18'): 'e1bd68e70d536da4900c4dccf51003d3a3229f2f9f0dc0d33554a29b485f3285',
    (0, '6.1'): '5a189cdd346aa19c2c38300d9dc9d85d4595d6bfd52c2e9595f6c7df6316a0ba',
    (1, '6.18'): '41dea1a7919f74c3ec8b1862894a9f50a7ded7c3007c1ea06ad1cf716a456fa2',
    (1, '6.1'): '9c87e51040ff738b222390af4418e125e71a42d0a6586150fe21960a5fc0f103',
    (2, '6.18'): '2651ea2f38eec131ebc525d0ae12c7e10d6104a02cb0d102bd7a0626779a9d7a',
    (2, '6.1'): '646082f39c7bba0da3b42d8824f53d1647d7200e3b2de1fb524759e482bbe4bb',
    (3, '6.18'): '82d2e9c187f7e5304aacad549caf73ef2b805cfcef235edad35592fd7484f862',
    (3, '6.1'): '61202d08267e1de2da698300aa7bd8872ca877830ecac8e26b403178ab11fe04',
    (4, '6.18'): 'da913021f56136d864b3935edff6aad07c49190d6b519fef6ac5e3f99184053f',
    (4, '6.1'): '961c86131c687d1e11d0ffca8eab7bd364631541db7d43fb2fb8b3d9ba003288',
    (5, '6.18'): '40f19551f75b4d15a5754d7a481f0f3f794cf5e6eef14e05f2f6a0e539c3765b',
    (5, '6.1'): 'f2b3c9157f32c0126247c239043428f33b0d36c076c272c00b71ff59d4a53671',
    (100, '6.18'): '8177ebe6c8675d3091ec73aa85bafe8905fd2b9cfb9c20e3f7d5015e5f491556',
    (100, '6.1'): '0e268bfc32d6421c345e97a300bd36a4031cc1c1d212812842448818c01fe986',
    (101, '6.18'): '3a3d021121cc41d7d9bc27fde23c0898a2220dec7f56e828d35873477474708e',
    (101, '6.1'): '0669fd5812964355be4d0c500a8290c630baef5bb9b854a1b44c5177f1402309',
}


@pytest.mark.parametrize("seed,kernel", CASES, ids=[f"seed{s}[era={k}]" for s, k in CASES])
def test_random_ksm_workload_matches_the_page_at_a_time_scan(seed, kernel):
    assert run(seed, kernel)[0] == EXPECTED[seed, kernel]
