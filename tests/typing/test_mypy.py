"""mmemu's types as a user's checker sees them: a typed user script passes
`mypy --strict` with no error, deliberate mistakes are each reported, and the
compiled core's stub matches the extension (stubtest). Skipped, with the
reason, where mypy is not installed (`pip install ".[test]"` brings it)."""
import os
import re
import site
import subprocess
import sys
from pathlib import Path

import pytest

import mmemu

pytest.importorskip("mypy", reason="mypy is not installed (pip install '.[test]')")

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def run_mypy(tmp_path_factory):
    """Run a mypy module on the mmemu this test imported (the source tree or
    an installed wheel), from an empty directory, with one cache per session."""
    workdir = tmp_path_factory.mktemp("mypy")
    env = dict(os.environ)
    root = str(Path(mmemu.__file__).resolve().parent.parent)
    sites = {str(Path(p).resolve()) for p in site.getsitepackages() + [site.getusersitepackages()]}
    env.pop("PYTHONPATH", None)
    if root not in sites:
        # A source tree: neither mypy nor stubtest's import would find it from here.
        env["MYPYPATH"] = env["PYTHONPATH"] = root

    def run(module, *args):
        cmd = [sys.executable, "-m", module, *args]
        if module == "mypy":
            cmd += ["--cache-dir", str(workdir / ".mypy_cache")]
        r = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
        return r.returncode, r.stdout + r.stderr
    return run


# Imports in the package are followed silently, as for any installed package
# (mypy reports errors only in the files it was asked to check).
MYPY_ARGS = ["--strict", "--follow-imports=silent", "--no-error-summary", "--show-error-codes"]


def test_example_user_script_passes_mypy_strict(run_mypy):
    """A false error here means an annotation of the public API is wrong or
    missing (a call to an untyped function is an error under --strict)."""
    rc, out = run_mypy("mypy", *MYPY_ARGS, str(HERE / "example_user.py"))
    assert rc == 0 and out.strip() == "", out


def test_example_user_script_runs():
    """The script the checker accepted also does what it says."""
    ns = {"__name__": "example_user"}
    exec(compile((HERE / "example_user.py").read_text(), "example_user.py", "exec"), ns)
    ns["main"]()


def test_mypy_reports_each_mistake(run_mypy):
    """Each marked line of mistakes.py is reported with its code, and nothing
    else is: a mistake mypy misses means an annotation lets it through."""
    path = HERE / "mistakes.py"
    expected = {}
    for no, line in enumerate(path.read_text().splitlines(), 1):
        m = re.search(r"# E: ([\w, -]+)$", line)
        if m:
            expected[no] = {c.strip() for c in m.group(1).split(",")}
    assert len(expected) >= 5
    rc, out = run_mypy("mypy", *MYPY_ARGS, str(path))
    got = {}
    for m in re.finditer(r"mistakes\.py:(\d+): error: .*\[([\w-]+)\]$", out, re.M):
        got.setdefault(int(m.group(1)), set()).add(m.group(2))
    assert rc == 1, out
    assert got == expected, out


def test_core_stub_matches_the_extension(run_mypy):
    """mmemu/_core.pyi against the compiled module: every Engine method, its
    parameter names and defaults (allowlist: Cython's own helpers only)."""
    rc, out = run_mypy("mypy.stubtest", "mmemu._core", "--allowlist",
                       str(HERE / "stubtest-allowlist.txt"),
                       "--mypy-config-file", str(HERE / "stubtest.ini"))
    assert rc == 0, out
