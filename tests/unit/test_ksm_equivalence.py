"""The batched, prefetching KSM scan (issue 13) gives the same results as the
page-at-a-time scan it replaced: seeded workloads (several processes,
MADV_MERGEABLE regions, repeated contents past max_page_sharing, forks,
partial unmerges, exits, scans with various page budgets) end in the state
whose digest the old core produced. A failure means a different page was
merged, a different page became the KSM page, or a table or counter moved."""
import pytest

from ksm_workload import CASES, run

# Digests of the KSM tables, the frame table and the page tables (see
# ksm_workload.py). First produced by the KSM core of 9dcec07 (before the
# batched scan); since the unstable tree's entries became 8 bytes, the digest
# covers its live entries rather than its bytes, and these were produced by
# the core of a0ef0c5 (which matched 9dcec07's digests) with that digest.
EXPECTED = {
    (0, '6.18'): 'fb6fac1a1e6fab53c5691117497ec6e8fd56498e2eb879915a247e5f0452f20c',
    (0, '6.1'): '2c03975979f1c926723ae5d1f900f229ca672f6af9ca1b670185c4e4240345e3',
    (1, '6.18'): '8a5ca2254a17e35e0cf603ef4edadeab99f163aa6349f28f1405a1768413c8e1',
    (1, '6.1'): '5031c75dc1726e2025f8823b45bdc7a1abb0a7c01414207dbacd68ead0776737',
    (2, '6.18'): '6cbd638279d6cd246b4f2f8c18aa374958e1b7fcdefc3f8479273d21a14291a1',
    (2, '6.1'): '56133ec261822a13943e10a77a2acc48d031cd17972c9e425ddb5fd6af580cdf',
    (3, '6.18'): '8d85b825136a355d0b1c9df77aa85263efd40101db7eec54b6c866f0350358eb',
    (3, '6.1'): 'b9f18b25948df6bbba04ef433fb1a02f7d5563fa266bb3722e64da0d7cbddcda',
    (4, '6.18'): 'f281263737382d99e296a8765ce017424c5e7abd074fa694b3a154f4b49d36a1',
    (4, '6.1'): '357146fd67eab15a5c5003716521d6cea758f6ff05257f2f95a8c5fee344f7b7',
    (5, '6.18'): 'b4efbbad911bf061d33c4f81a4f0b6b9bb3f947100e188f0664160899aa464d4',
    (5, '6.1'): '13aa60190c36e28daa14bcd25a84344702a7317c507ca7dcd8757b7bcc50c255',
    (100, '6.18'): 'd84eeaf139dce6a69978cda2f13d8c4b26c2e401b722f52747bf5baac03497ca',
    (100, '6.1'): '333161bafded6300eba45a48b2a77f391ea1792c2427578431182f10ac38935e',
    (101, '6.18'): '7817d19a1bbd115eed80edba62681a63be98870c55712637c589ca0a5f3da996',
    (101, '6.1'): 'b28ea16908894f2b87709a85245712e14b88928474e203c6995996e34159367f',
}


@pytest.mark.parametrize("seed,kernel", CASES, ids=[f"seed{s}[era={k}]" for s, k in CASES])
def test_random_ksm_workload_matches_the_page_at_a_time_scan(seed, kernel):
    assert run(seed, kernel)[0] == EXPECTED[seed, kernel]
