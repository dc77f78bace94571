"""The batched, prefetching KSM scan (issue 13) gives the same results as the
page-at-a-time scan it replaced: seeded workloads (several processes,
MADV_MERGEABLE regions, repeated contents past max_page_sharing, forks,
partial unmerges, exits, scans with various page budgets) end in the state
whose digest the old core produced. A failure means a different page was
merged, a different page became the KSM page, or a table or counter moved."""
import pytest

from ksm_workload import CASES, run

# Produced by the KSM core of 9dcec07 (before the batched scan); see ksm_workload.py.
EXPECTED = {
    (0, '6.18'): 'fe6ea556608d94e0bfe26e3b8d49b459e4ddf883e0954d480827497a69553670',
    (0, '6.1'): '7d81920885b64385e1afcaa162fdbc80a534491759f4b6effb8b4b409ec878c5',
    (1, '6.18'): '2ec258d8a708eb02df02048e0fb68f4146ec744e1bbf7ebde8aa06f47f6036f3',
    (1, '6.1'): 'b06302b542f09dd8bb40590ecb2b26c10f0721f63e888737955a597a0bd7aedf',
    (2, '6.18'): '3df6b380ff8e1687386cb21c2b465c985bf217304ad2d48d85519de5d8f87349',
    (2, '6.1'): '2701e15457e14d92072db652ca1aa9cac112c2fd90462b724bfd9bb226a117ce',
    (3, '6.18'): '74cc1679a0619ff1190584135a3ab18c22fd21970347a5ba23099865af42846e',
    (3, '6.1'): 'a028c83a2aca1ee2b773dc1ef8c80283e6715d889a0a603661ed3d1b38fc8328',
    (4, '6.18'): '741030a54a90bf1b49fd9db4cf1298760eea762b03c34ea8c520781ff72117f6',
    (4, '6.1'): 'f5af36bee75482c9e37226a99f83037c6e17cff6a48f783828463dcf0607a8ce',
    (5, '6.18'): '7fbe2c1872a0997179fb65399bda4f35c22880800f61d7e6ff3d908c22cd46ad',
    (5, '6.1'): 'c6e5a05be9feccdf28563b4c425fc491a3048222248e1fc2173e3fa47e06f44d',
    (100, '6.18'): '37987cc142cd74e2df45251179a349a20ce879e54dcee1e2c07936dc106a08f2',
    (100, '6.1'): 'd72334a5cc4da47a7a124bad678b896f0d6417a107c4433a7fcfb7b83f7a8661',
    (101, '6.18'): '360fe8231ba0ec30ee7c1c1b80d9829a7a486f37c97c283ee2c2d9c88c40fabf',
    (101, '6.1'): '0b282814a07a319d8ba712743ec4395418a21e0b3f04e840751295d4a749485a',
}


@pytest.mark.parametrize("seed,kernel", CASES, ids=[f"seed{s}[era={k}]" for s, k in CASES])
def test_random_ksm_workload_matches_the_page_at_a_time_scan(seed, kernel):
    assert run(seed, kernel)[0] == EXPECTED[seed, kernel]
