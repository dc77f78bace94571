"""Two host threads calling random operations on one Machine (run as a
script by test_hammer.py, in a subprocess: a segfault must fail the test,
not kill pytest). Exit status 0: no crash, check() passes at the end.

The threads share one process and its mappings (threads of one program):
long batch calls (touch of thousands of pages, where the core runs
without the GIL) overlap with calls that change the VMA table, zap,
page out and fork.

    python -m tests.robust.hammer SECONDS [SEED]
"""
import random
import sys
import threading
import time

import mmemu
from mmemu import (MADV_DONTNEED, MADV_PAGEOUT, MAP_ANONYMOUS, MAP_FIXED, MAP_PRIVATE,
                   PAGE_SIZE as PAGE)

from .harness import classify

RW = mmemu.PROT_READ | mmemu.PROT_WRITE
BIG = 2048              # pages per region


def worker(m, p, regions, seconds, seed, errors):
    rng = random.Random(seed)
    end = time.time() + seconds
    n = 0
    while time.time() < end:
        a = regions[rng.randrange(len(regions))]
        off = rng.randrange(BIG) * PAGE
        op = rng.randrange(10)
        n += 1
        try:
            if op == 0:
                p.write(a + off, b"h" * rng.randrange(1, 4 * PAGE))
            elif op == 1:
                p.read(a + off, rng.randrange(1, 64 * PAGE))
            elif op in (2, 3):
                p.touch(a, BIG, write=bool(rng.randrange(2)))
            elif op == 4:
                p.get_user_pages(a + off, 64).release()
            elif op == 5:
                p.madvise(a, BIG * PAGE, (MADV_DONTNEED, MADV_PAGEOUT)[rng.randrange(2)])
            elif op == 6:
                # replace the region (the core's VMA table is reallocated)
                p.mmap(a, BIG * PAGE, RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED)
            elif op == 7:
                p.mprotect(a + off, PAGE, (RW, mmemu.PROT_READ)[rng.randrange(2)])
            elif op == 8:
                c = p.fork()
                c.write(a, b"c")
                c.exit()
            else:
                m.reclaim(64)
        except Exception as e:              # an acceptable outcome, or a defect to report
            d = classify(e, f"op {op}", wrong_type=False)
            if d is not None:
                if len(errors) < 100:
                    errors.append(f"{type(e).__name__}: {e}")
    return n


def main(seconds, seed=0):
    m = mmemu.Machine(kernel="6.18", memory=8192 * PAGE, swap=4096 * PAGE)
    p = m.spawn()
    regions = [p.mmap(0, BIG * PAGE, RW, MAP_PRIVATE | MAP_ANONYMOUS) for _ in range(3)]
    errors = []
    calls = [0, 0]

    def run(i):
        calls[i] = worker(m, p, regions, seconds, seed * 2 + i, errors)
    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        m.check()
    except Exception as e:
        errors.append(f"check(): {type(e).__name__}: {e}")
    if errors:
        print("defects:", *sorted(set(errors))[:10], sep="\n  ")
        return 1
    print(f"ok: {calls[0]} + {calls[1]} calls from two host threads in {seconds:g} s, check() passed")
    return 0


if __name__ == "__main__":
    sys.exit(main(float(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 0))
