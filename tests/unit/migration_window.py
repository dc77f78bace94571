"""A second thread inside a migration's window: between migrate_pages()'s
unmap (migration entries in place) and its remap, which run without
mmap_lock. Shared by the base-page and the THP migration tests."""
from mmemu import MPOL_MF_MOVE
from mmemu.sched import Scheduler, preempt_at


def during_migration(m, p, a, other):
    """move_pages(a -> node 1) - a, or a list of addresses moved in one
    call - with other() run by a second thread in the window. got["pm"] is
    that thread's pagemap read of the first just before other(): a
    migration entry, not a present page, proves it ran inside the window.
    Returns (got, the scheduler's trace labels)."""
    got = {}
    addrs = a if isinstance(a, list) else [a]

    def mover():
        got["st"] = p.move_pages(addrs, [1] * len(addrs), MPOL_MF_MOVE)

    def second():
        got["pm"] = p.pagemap(addrs[0])
        got["other"] = other()

    s = Scheduler(m, preempt_at("migrate_pages", "second"), record=True)
    s.run([mover, second], ["mover", "second"])
    return got, [st.label for st in s.trace]
