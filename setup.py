"""Build the one compiled extension, mmemu._core.

Directives are global (sklearn style). MMEMU_DEBUG=1 turns bounds and
initialisation checks back on for a debug build.
"""
import os
import sysconfig

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("MMEMU_DEBUG", "") not in ("", "0")
# Release builds link stripped (the wheel's .so loses its symbol tables, 2.7 MB -> ~0.6 MB);
# a debug build keeps -g and every symbol.
LINK = [] if DEBUG or os.environ.get("MMEMU_SYMBOLS") else ["-s"]

directives = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": False,
    "initializedcheck": DEBUG,
    "cdivision": True,
    "embedsignature": True,
}

# GCC stops inlining a function declared inline past 200 of its internal
# instructions: user_access() (the MMU's access, cdef inline) grew past that
# and became a call in touch()'s and replay()'s loops, +50 instructions per
# base-page fault (callgrind). A higher limit keeps it inlined; clang has no
# such parameter.
_cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or ""
INLINE = [] if "clang" in _cc else ["--param", "max-inline-insns-single=400"]

ext = Extension(
    "mmemu._core",
    ["mmemu/_core.pyx"],
    include_dirs=[numpy.get_include(), "mmemu/core"],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    # -O3 with aligned functions and loops: at -O2 the fault path's speed
    # swung by 20-30% with unrelated edits elsewhere in the one translation
    # unit (same instruction counts under callgrind: code placement).
    extra_compile_args=["-O0", "-g"] if DEBUG else ["-O3", "-falign-functions=64", "-falign-loops=32"] + INLINE,
    extra_link_args=LINK,
)

# The host-kernel probe (mmemu.host): plain C, guarded user accesses on the
# real kernel that turn SIGSEGV/SIGBUS into return codes. Not part of the core.
host_access = Extension("mmemu.host._access", ["mmemu/host/_access.c"],
                        extra_compile_args=["-O2"], extra_link_args=LINK)
host_service = Extension("mmemu.host._service", ["mmemu/host/_service.c"],
                         extra_compile_args=["-O2"], extra_link_args=LINK)

setup(ext_modules=cythonize([ext], compiler_directives=directives,
                            include_path=["mmemu", "mmemu/core"]) + [host_access, host_service])
