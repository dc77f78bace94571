"""Mistakes a type checker must catch in a user's script. Each line marked
`# E: code` must be reported by mypy with that error code, and nothing else
may be (tests/typing/test_mypy.py). Never run: every marked line is wrong."""
from __future__ import annotations

import mmemu
from mmemu import MAP_ANONYMOUS, MAP_PRIVATE, PAGE_SIZE, PROT_READ, PROT_WRITE


def mistakes() -> None:
    m = mmemu.Machine(kernel="6.18")
    p = m.spawn()
    a = p.mmap("0", PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)  # E: arg-type
    p.mmap(0, PAGE_SIZE, PROT_READ, MAP_PRIVATE, offset="4096")  # E: arg-type
    p.wrtie(a, b"x")  # E: attr-defined
    p.write(a, "text, not bytes")  # E: arg-type
    n: int = p.read(a, 1)  # E: assignment
    c: mmemu.Process = p.vmsplice(a, PAGE_SIZE)  # E: assignment
    p.read(a, 1).decode() + 1  # E: operator
    p.munmap(a, PAGE_SIZE).bit_length()  # E: func-returns-value, attr-defined
    print(mmemu.PROT_READWRITE)  # E: attr-defined
    from mmemu import MAP_ANONYMUS  # E: attr-defined
    u = p.userfaultfd()
    u.register(a, PAGE_SIZE)  # E: call-arg
    m.check(True)  # E: call-arg
    mmemu.Machine(kernel=5.7)  # E: arg-type
    print(n, c, u, MAP_ANONYMUS)
