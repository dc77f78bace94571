"""Issue 3's acceptance run at CI size: `mmemu diff --programs 200 --seed 1`
(random programs with files, swap, fork, GUP, on the real kernel and on
Machine(kernel="host")) must agree on every program.

The engine is deterministic, so a real divergence shows up in every run of
the same seed; the host has timing-dependent corners (a swapcache folio still
under writeback, fault-around trylocks) that its own reruns do not always
catch. So: up to three runs of the same seed, and the first one at 100% wins;
a divergence present in all three is a failure."""
import re

from mmemu.host import diff


def test_engine_agrees_with_the_host_kernel(need, capsys):
    need("pfns", "kpage")
    outs = []
    for _ in range(3):
        code = diff.main(["--programs", "200", "--seed", "1"])
        out = capsys.readouterr().out
        m = re.search(r"agreement: (\d+)/(\d+) programs \(([\d.]+)%\)", out)
        assert m, out[-2000:]
        assert int(m.group(2)) >= 190, "too many programs set aside as host-flaky"
        if code == 0 and m.group(1) == m.group(2):
            return
        outs.append(out)
    raise AssertionError("every run diverged:\n" + "\n".join(o[-3000:] for o in outs))
