"""The UAPI constants: one source (mmemu/uapi_table.py), generated into
mmemu/constants.py, mmemu/core/uapi.h and mmemu/core/uapi.pxi by
tools/gen_uapi.py, and equal to the kernel's own headers.

A failure means a generated file was edited by hand or not regenerated
(run `python tools/gen_uapi.py`), or a value differs from Linux's: a
program using it would ask the emulator for something else than the kernel.
"""
import importlib.util
import os
import pathlib
import shutil
import sys
import subprocess

import pytest

import mmemu
import mmemu.uffd
from mmemu import constants as C

ROOT = pathlib.Path(__file__).resolve().parents[2]
PKG = pathlib.Path(mmemu.__file__).resolve().parent     # the package in use (a wheel's too)


def _generator():
    if not (ROOT / "tools" / "gen_uapi.py").exists():
        pytest.skip("tools/ is not next to these tests (they run against an installed wheel)")
    spec = importlib.util.spec_from_file_location("gen_uapi", ROOT / "tools" / "gen_uapi.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_generated_files_are_up_to_date():
    stale = [str(path.relative_to(ROOT)) for path, text in _generator().outputs().items()
             if not path.exists() or path.read_text() != text]
    assert not stale, f"run `python tools/gen_uapi.py`: stale {stale}"


def test_constants_all_is_static_and_complete():
    src = (PKG / "constants.py").read_text()
    assert "__all__ = [" in src and "def " not in src and "globals()" not in src
    public = {k for k in vars(C) if k.isupper() and not k.startswith("_")}
    assert set(C.__all__) == public


def test_uapi_names_at_the_top_level_and_in_uffd():
    for name in C.__all__:
        assert name in mmemu.__all__ and getattr(mmemu, name) == getattr(C, name), name
    for name in ("UFFDIO_COPY", "UFFD_FEATURE_EVENT_FORK", "UFFD_EVENT_PAGEFAULT", "UFFD_API",
                 "O_CLOEXEC", "O_NONBLOCK", "UFFDIO_REGISTER_MODE_WP", "_UFFDIO_COPY"):
        assert getattr(mmemu.uffd, name) == getattr(C, name)
    uffd_names = {n for n in vars(C) if n.startswith(("UFFD", "_UFFDIO")) or n in ("O_CLOEXEC", "O_NONBLOCK")}
    assert uffd_names <= set(vars(mmemu.uffd))


def test_core_sees_the_same_values():
    """The core's enums come from uapi.h: a value there reaches the engine."""
    header = (PKG / "core" / "uapi.h").read_text()
    for name in ("FOLL_PIN", "FOLL_GET", "UFFD_FEATURE_WP_ASYNC", "PAGE_IS_WRITTEN",
                 "UFFD_PAGEFAULT_FLAG_WP", "GUP_PIN_COUNTING_BIAS"):
        assert f"#define {name} {getattr(C, name):#x}" in header


# --- against the kernel's headers ------------------------------------------------------

HEADERS = ["linux/types.h", "linux/ioctl.h", "linux/fcntl.h", "linux/mman.h", "linux/memfd.h",
           "linux/falloc.h", "linux/fs.h", "linux/kernel-page-flags.h", "linux/userfaultfd.h",
           "linux/mempolicy.h", "signal.h"]


def _kernel_values(names, tmp_path):
    """{name: value} for every name the headers define, compiled and printed
    by the C compiler. MMEMU_UAPI_INCLUDE (a kernel tree's include/uapi)
    is searched before /usr/include."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to read the kernel's headers with")
    missing = [h for h in HEADERS if not os.path.exists(f"/usr/include/{h}")]
    if missing:
        pytest.skip(f"kernel headers absent (apt-get install linux-libc-dev): {missing}")
    lines = ["#include <stdio.h>"] + [f"#include <{h}>" for h in HEADERS] + ["int main(void) {"]
    for n in names:
        lines += [f"#ifdef {n}", f'  printf("{n} %llu\\n", (unsigned long long)({n}));', "#endif"]
    lines += ["  return 0;", "}"]
    src = tmp_path / "uapi.c"
    src.write_text("\n".join(lines) + "\n")
    exe = tmp_path / "uapi"
    args = [cc, "-o", str(exe), str(src)]
    extra = os.environ.get("MMEMU_UAPI_INCLUDE")
    if extra:
        args[1:1] = ["-I", extra]
    subprocess.run(args, check=True, capture_output=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    return {n: int(v) for n, v in (line.split() for line in out.splitlines())}


def test_values_match_the_kernel_headers(tmp_path):
    table = _generator().load_table()
    ours = {name: value for _t, header, _c, rows in table if header
            for name, value, _e, _m in rows}
    theirs = _kernel_values(sorted(ours), tmp_path)
    wrong = {n: (ours[n] & (1 << 64) - 1, theirs[n]) for n in theirs
             if ours[n] & (1 << 64) - 1 != theirs[n]}
    assert not wrong, f"values differing from the kernel's headers: {wrong}"
    # Names newer than the installed headers are not found there; most must be.
    assert len(theirs) >= 0.8 * len(ours), sorted(set(ours) - set(theirs))
    for name in ("UFFDIO_COPY", "UFFD_FEATURE_EVENT_FORK", "O_CLOEXEC", "MAP_PRIVATE",
                 "MADV_DONTNEED", "KPF_ZERO_PAGE", "MFD_HUGE_2MB", "UFFD_API_IOCTLS"):
        assert name in theirs, f"{name} not found in the headers"


def test_mypy_sees_the_top_level_constants(tmp_path):
    """A user script naming mmemu.PAGE_SIZE or mmemu.UFFDIO_COPY type-checks
    (a computed __all__ hid them from mypy)."""
    pytest.importorskip("mypy")
    script = tmp_path / "user.py"
    script.write_text("import mmemu\nfrom mmemu import PAGE_SIZE, UFFDIO_COPY\n"
                      "x: int = mmemu.PAGE_SIZE + mmemu.UFFD_FEATURE_EVENT_FORK + mmemu.O_CLOEXEC\n"
                      "y: int = PAGE_SIZE + UFFDIO_COPY + mmemu.uffd.UFFDIO_REGISTER_MODE_WP\n")
    env = dict(os.environ, MYPYPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "mypy", "--follow-imports=silent",
                        "--ignore-missing-imports", "--no-incremental", str(script)],
                       capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
