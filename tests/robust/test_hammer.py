"""Two host threads hammering one Machine (issue 9 §6): no crash, check()
passes. Run in a subprocess so that a segfault or an abort ("malloc():
invalid size") fails this test instead of killing pytest. A failure here
means calls on one Machine from two threads are not serialised (the core
releases the GIL in read/write/touch/gup/zap/pageout)."""
import os
import signal
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_two_threads_one_machine(long_mode, child_python):
    seconds = 60 if long_mode else 3
    py, env, cwd = child_python
    env["PYTHONPATH"] += os.pathsep + ROOT          # tests.robust, after the mmemu in use
    proc = subprocess.run([*py, "-m", "tests.robust.hammer", str(seconds)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=seconds * 4 + 60)
    if proc.returncode < 0:
        sig = signal.Signals(-proc.returncode).name
        raise AssertionError(f"the interpreter died with {sig} while two threads shared a Machine\n"
                             f"{proc.stderr[-2000:]}")
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
