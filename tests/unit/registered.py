"""A process with private anonymous pages registered on a fresh userfaultfd
context: what the uffd, scheduler, snapshot, replay and workload tests start
from."""
from mmemu import MAP_ANONYMOUS, MAP_PRIVATE, PAGE_SIZE, PROT_READ, PROT_WRITE
from mmemu.uffd import UFFDIO_REGISTER_MODE_MISSING


def registered(m, npages=1, mode=UFFDIO_REGISTER_MODE_MISSING):
    """(process, address, uffd): npages private anon pages on a new process of m."""
    p = m.spawn()
    a = p.mmap(0, npages * PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
    u = p.userfaultfd()
    u.api()
    u.register(a, npages * PAGE_SIZE, mode)
    return p, a, u

