"""A user's script, fully typed: `mypy --strict` must accept it with no error
(tests/typing/test_mypy.py), and it runs (the same test executes it).

It goes through what a newcomer does first: mmap, write/read, fork, vmsplice,
GUP and pins, userfaultfd (register, copy, a service handler), pagemap and
Machine.check()."""
from __future__ import annotations

import mmemu
from mmemu import (FOLL_LONGTERM, FOLL_WRITE, MAP_ANONYMOUS, MAP_PRIVATE, PAGE_SIZE, PROT_READ,
                   PROT_WRITE)
from mmemu import UFFD_FEATURE_THREAD_ID, UFFDIO_REGISTER_MODE_MISSING

RW = PROT_READ | PROT_WRITE
PRIV = MAP_PRIVATE | MAP_ANONYMOUS


def cve_2020_29374(kernel: str) -> bytes:
    """The README's example: what the child's pipe reads after the parent's write."""
    m = mmemu.Machine(kernel=kernel)
    p: mmemu.Process = m.spawn()
    addr: int = p.mmap(0, PAGE_SIZE, RW, PRIV)
    p.write(addr, b"\0")
    c = p.fork()
    pipe: mmemu.Pipe = c.vmsplice(addr, PAGE_SIZE)
    c.munmap(addr, PAGE_SIZE)
    p.write(addr, b"secret")
    data: bytes = pipe.read(6)
    m.check()
    return data


def pin_and_write(m: mmemu.Machine) -> mmemu.FrameInfo:
    p = m.spawn()
    addr = p.mmap(0, 4 * PAGE_SIZE, RW, PRIV)
    assert p.touch(addr, 4, write=True, value=7) == 4
    with p.pin_user_pages(addr, 4, FOLL_WRITE | FOLL_LONGTERM) as pin:
        pin.write(PAGE_SIZE, b"device")
        assert p.read(addr + PAGE_SIZE, 6) == b"device"
        entry: mmemu.PagemapEntry = p.pagemap(addr)
        assert entry.present
        info = m.frame(int(entry.pfn))
    assert not p.has_pinned or pin.released
    return info


def userfault(m: mmemu.Machine) -> list[int]:
    p = m.spawn()
    addr = p.mmap(0, 2 * PAGE_SIZE, RW, PRIV)
    u: mmemu.Uffd = p.userfaultfd()
    u.api(UFFD_FEATURE_THREAD_ID)
    u.register(addr, 2 * PAGE_SIZE, UFFDIO_REGISTER_MODE_MISSING)
    seen: list[int] = []

    def handler(uffd: mmemu.Uffd, msg: mmemu.UffdMsg) -> None:
        seen.append(msg.address)
        uffd.copy(msg.address, b"\x2a" * PAGE_SIZE)

    u.serve(handler)
    assert p.read(addr + 5, 1) == b"\x2a"
    u.serve_core("zeropage")
    done: int = u.zeropage(addr + PAGE_SIZE, PAGE_SIZE)
    assert done == PAGE_SIZE
    u.close()
    m.check()
    return seen


def main() -> None:
    assert cve_2020_29374("5.7") == b"secret"
    assert cve_2020_29374("6.18") == b"\0" * 6
    m = mmemu.Machine(kernel="6.18", memory=16 << 20, swap=1 << 20, backports=())
    print(pin_and_write(m).refcount)
    print([hex(a) for a in userfault(m)])
    try:
        m.spawn().read(0x1000, 1)
    except mmemu.Sigsegv as e:
        print("SIGSEGV", hex(e.addr), e.si_code)
    print(mmemu.policy_for("5.8").era, m.stats()["faults"], sorted(m.memory_usage()))


if __name__ == "__main__":
    main()
