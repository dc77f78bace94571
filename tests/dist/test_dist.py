"""What `python -m build` produced: run by .ci/check-dist, which builds into
a directory and points MMEMU_DIST_DIR at it (skipped otherwise: a build
takes minutes). A failure means the published files would be wrong: a wheel
carrying generated C or unstripped objects, an sdist that cannot build, or
metadata without its license."""
import os
import struct
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

DIST = os.environ.get("MMEMU_DIST_DIR")
pytestmark = pytest.mark.skipif(not DIST, reason="MMEMU_DIST_DIR not set (.ci/check-dist sets it)")


def one(pattern):
    found = sorted(Path(DIST).glob(pattern))
    assert len(found) == 1, found
    return found[0]


def elf_sections(data):
    """Section names of a 64-bit little-endian ELF object."""
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    def header(i):
        return struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize)
    strtab = header(shstrndx)
    names = []
    for i in range(shnum):
        off = strtab[4] + header(i)[0]
        names.append(data[off:data.index(b"\0", off)].decode())
    return names


def test_wheel_contents():
    whl = zipfile.ZipFile(one("mmemu-*.whl"))
    names = whl.namelist()
    # Only the VM guest's init ships as C: it is compiled when a kernel is prepared.
    assert [n for n in names if n.endswith(".c")] == ["mmemu/host/_vminit.c"], \
        "generated or source C in the wheel"
    for required in ("mmemu/py.typed", "mmemu/_core.pyi", "mmemu/__init__.py",
                     "mmemu/host/machine.py", "mmemu/scenarios/__init__.py",
                     "mmemu/host/vmguest.py"):
        assert required in names
    assert [n for n in names if n.startswith("mmemu/core/") and n.endswith(".pxi")]
    sos = [n for n in names if n.endswith(".so")]
    assert len(sos) == 3, sos
    for so in sos:
        sections = elf_sections(whl.read(so))
        assert ".symtab" not in sections and ".debug_info" not in sections, f"{so} is not stripped"
    assert [n for n in names if n.endswith(".dist-info/licenses/LICENSE")
            or n.endswith(".dist-info/LICENSE")], "no LICENSE in the wheel"


def test_wheel_metadata():
    whl = zipfile.ZipFile(one("mmemu-*.whl"))
    meta_name = next(n for n in whl.namelist() if n.endswith(".dist-info/METADATA"))
    meta = Parser().parsestr(whl.read(meta_name).decode())
    assert meta["Name"] == "mmemu"
    assert "MIT" in (meta.get("License-Expression") or meta.get("License") or "")
    assert meta["Author"] == "The mmemu authors"
    classifiers = meta.get_all("Classifier")
    for c in ("Programming Language :: Cython", "Operating System :: POSIX :: Linux",
              "Programming Language :: Python :: 3.11", "Typing :: Typed"):
        assert c in classifiers
    assert meta["Requires-Python"] == ">=3.10"
    assert any(r.startswith("mypy") and "extra == \"test\"" in r
               for r in meta.get_all("Requires-Dist"))


def test_sdist_has_the_sources_to_build():
    sdist = tarfile.open(one("mmemu-*.tar.gz"))
    names = {n.split("/", 1)[1] for n in sdist.getnames() if "/" in n}
    for required in ("setup.py", "pyproject.toml", "LICENSE", "README.md", "mmemu/_core.pyx",
                     "mmemu/core/mm_types.h", "mmemu/core/fault.pxi", "mmemu/host/_access.c",
                     "mmemu/host/_service.c", "mmemu/_core.pyi", "tests/unit/test_core.py"):
        assert required in names, required
    assert "mmemu/_core.c" not in names, "the generated C is rebuilt from the .pyx"
    assert not [n for n in names if n.endswith(".so")]
