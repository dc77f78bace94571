"""Differential testing: random programs on the engine and on the host.

programs() is a Hypothesis strategy of small valid programs (up to two
memfds of 1-16 pages and a few regions of 1-8 pages, private or shared,
anonymous or mapping a file; writes, reads, mprotect, madvise (PAGEOUT,
REMOVE, COLD among the advice), munmap, MAP_FIXED remaps with anonymous or
file memory, forks with short child bodies (the fd table is inherited),
exits, vmsplice pipes, FOLL_GET references, io_uring pins, /proc/pid/mem,
pread, pwrite, ftruncate, fallocate (hole punch, allocation), close,
clear_refs). check_pair() runs one program on both
machines and compares (mmemu.host.compare). survey() runs N programs and
counts agreement; shrink() lets Hypothesis shrink a divergence to a minimal
program that still diverges the same way (same op, same compared field).

uffd_programs() is a second strategy, of userfaultfd programs (`mmemu diff
--uffd`): faults that block, messages, COPY, ZEROPAGE, WRITEPROTECT, WAKE,
resume.

`mmemu diff [--programs N] [--seed S] [--uffd]` is main(argv).
"""
import argparse
import json
import sys

from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from hypothesis.errors import Flaky, FlakyFailure

from .. import constants as C
from .. import program as P
from .compare import compare
from .machine import HostError, HostMachine, Unsupported

PROT_CHOICES = ["PROT_READ|PROT_WRITE", "PROT_READ", "PROT_NONE"]
# First entries are what shrinking falls back to: keep the plainest first.
ADVICE_CHOICES = ["MADV_DONTNEED", "MADV_DONTFORK", "MADV_DOFORK", "MADV_WIPEONFORK",
                  "MADV_KEEPONFORK", "MADV_POPULATE_WRITE", "MADV_POPULATE_READ", "MADV_FREE",
                  "MADV_GUARD_INSTALL", "MADV_GUARD_REMOVE", "MADV_NORMAL", "MADV_COLLAPSE"]
PIN_FLAGS = "FOLL_WRITE|FOLL_PIN|FOLL_LONGTERM"   # io_uring's pin: the host can hold no other
MAX_PROCS = 4
MAX_FORKS = 4
MAX_HANDLES = 4
MAX_FILES = 2
MAX_FILE_PAGES = 16
FILE_ADVICE = ("MADV_PAGEOUT", "MADV_REMOVE", "MADV_COLD")
PUNCH = "FALLOC_FL_PUNCH_HOLE|FALLOC_FL_KEEP_SIZE"
DEFAULT_SWAP = 16 << 20      # bytes of swap on both sides (mmemu diff --swap)
HOST_RERUNS = 2              # host reruns of a divergent program before it counts


class Features:
    """What the generator may use: everything, less what the machine under
    test does not model yet (see probe)."""

    def __init__(self, shared=True, pins=True, advice=tuple(ADVICE_CHOICES) + FILE_ADVICE,
                 files=True, uffd=False, thp=False, hugetlb=False):
        self.uffd = uffd             # userfaultfd programs (uffd_programs) instead
        self.thp = thp               # THP regions: 2 MiB aligned, MADV_HUGEPAGE
        self.hugetlb = hugetlb       # hugetlb regions and memfds (2 MiB pages, HUGETLB_POOL)
        self.shared = shared
        self.pins = pins
        self.advice = list(advice)
        self.files = files

    def __repr__(self):
        return (f"Features(shared={self.shared}, pins={self.pins}, files={self.files}, "
                f"uffd={self.uffd}, thp={self.thp}, hugetlb={self.hugetlb}, "
                f"advice={self.advice})")


def probe(make_other, features=None):
    """Drop from features what make_other()'s machine answers with
    NotImplementedError; returns (features, [what was dropped and why])."""
    f = features or Features()
    dropped = []
    m = make_other()
    try:
        p = m.spawn()
        rw = C.PROT_READ | C.PROT_WRITE
        priv = C.MAP_PRIVATE | C.MAP_ANONYMOUS
        if f.shared:
            try:
                p.mmap(0, C.PAGE_SIZE, rw, C.MAP_SHARED | C.MAP_ANONYMOUS)
            except NotImplementedError as e:
                f.shared = False
                dropped.append(f"MAP_SHARED|MAP_ANONYMOUS: {e}")
            except OSError:
                pass
        a = p.mmap(0, C.PAGE_SIZE, rw, priv)
        keep = []
        for name in f.advice:
            try:
                p.madvise(a, C.PAGE_SIZE, getattr(C, name))
                keep.append(name)
            except NotImplementedError as e:
                dropped.append(f"{name}: {e}")
            except (OSError, Unsupported):
                # Unsupported: a host that cannot run it now (MADV_PAGEOUT
                # while another process's swap is on) - the programs using
                # it are counted unsupported one by one, with the reason;
                # generation stays the same for a seed.
                keep.append(name)
        f.advice = keep or ["MADV_NORMAL"]
        if f.files:
            try:
                fd = p.memfd_create("probe")
                p.ftruncate(fd, C.PAGE_SIZE)
                p.mmap(0, C.PAGE_SIZE, rw, C.MAP_SHARED, fd, 0)
                p.close(fd)
            except (NotImplementedError, Unsupported, AttributeError) as e:
                f.files = False
                dropped.append(f"memfd files: {e}")
            except OSError:
                pass
        if f.hugetlb:
            try:
                p.munmap(p.mmap(0, HUGE_PAGES * C.PAGE_SIZE, rw, priv | C.MAP_HUGETLB
                                | C.MAP_HUGE_2MB), HUGE_PAGES * C.PAGE_SIZE)
            except (NotImplementedError, Unsupported) as e:
                f.hugetlb = False
                dropped.append(f"MAP_HUGETLB: {e}")
            except OSError:
                pass
        if f.pins:
            b = p.mmap(0, C.PAGE_SIZE, rw, priv)
            try:
                p.pin_user_pages(b, 1, P.parse_flags(PIN_FLAGS, "FOLL_")).release()
            except (NotImplementedError, Unsupported) as e:
                f.pins = False
                dropped.append(f"pin_user_pages: {e}")
            except OSError:
                pass
    finally:
        _close(m)
    return f, dropped


class _GenState:
    def __init__(self, regions, pins, files=(), huge=(), hfiles=()):
        self.regions = regions          # [(name, pages)]
        self.huge = set(huge)           # the names of hugetlb regions
        self.hfiles = dict(hfiles)      # MFD_HUGETLB memfd name -> size in huge pages
        self.procs = ["main"]           # live, creation order
        self.pipes = []                 # [(name, owner)]
        self.pins = []                  # [(name, owner, npages, kind)]
        self.files = dict(files)        # name -> size in pages (a guide, not exact)
        self.fds = {"main": list(self.files)}   # proc -> open file names
        self.forks = 0
        self.serial = 0
        self.allow_pins = pins
        self.advice = list(ADVICE_CHOICES) + list(FILE_ADVICE)

    def tag(self):
        self.serial += 1
        return f"w{self.serial:03d}"[-4:]


# Shrinking and the shape of a step. Hypothesis deletes at most 5
# consecutive choices at once (its node_program("XXXXX") pass), so a step
# that takes more can never be deleted from a failing program. Each step
# here takes at most 4: its kind (which also says "stop here"), the process,
# one integer for the place (region and page, or region and page range,
# flattened), and one argument.

def _pick(draw, items):
    """One of items. Drawn even from a single item: a step must make the same
    number of choices whatever the state, or deleting an earlier step while
    shrinking (a region, a fork) would shift every later choice."""
    return items[draw(st.integers(0, len(items) - 1))]


# The ranges and pages of a THP region a program uses: the whole PMD, its
# edges and its middle, so an operation covers a leaf whole or cuts it.
THP_PAGES = 512
THP_SPANS = ((0, 512), (0, 1), (1, 1), (255, 2), (511, 1), (0, 256), (256, 256), (1, 510), (2, 8))
THP_PLACES = (0, 1, 2, 255, 256, 510, 511)


# A hugetlb region is one or two 2 MiB pages (512 or 1024 base pages): its
# ranges cover a huge page whole, cut one (EINVAL for munmap, mprotect and
# MAP_FIXED; DONTNEED rounds the end down), or start inside one.
HUGE_PAGES = 512
HUGE_SPANS = {512: ((0, 512), (0, 1), (1, 1), (0, 256), (256, 256), (511, 1)),
              1024: ((0, 1024), (0, 512), (512, 512), (0, 768), (256, 512), (511, 2), (512, 1))}
HUGE_PLACES = {512: (0, 1, 255, 511), 1024: (0, 1, 511, 512, 1023)}
HUGETLB_POOL = 4                # 2 MiB pages on both sides (mmemu diff): some programs run out
HUGE = "MAP_HUGETLB|MAP_HUGE_2MB"


def _spans(state, name, pages):
    if name in state.huge:
        return HUGE_SPANS[pages]
    if pages == THP_PAGES:
        return THP_SPANS
    return [(first, n) for n in range(1, pages + 1) for first in range(0, pages - n + 1)]


def _places(state, name, pages):
    if name in state.huge:
        return HUGE_PLACES[pages]
    return THP_PLACES if pages == THP_PAGES else range(pages)


def _range(draw, state):
    """A page range of a region: [name, first], npages (one choice)."""
    spans = [(name, first, n) for name, pages in state.regions
             for first, n in _spans(state, name, pages)]
    name, first, n = _pick(draw, spans)
    return [name, first], n


def _page(draw, state, straddle=False):
    """A page of a region (one choice); straddle: a page with a next one."""
    places = [(name, page, pages) for name, pages in state.regions
              for page in _places(state, name, pages)
              if not straddle or page + 1 < pages]
    if not places:
        return None, 0
    name, page, pages = _pick(draw, places)
    return [name, page], pages


# "stop" first: shrinking moves the kind towards index 0, which ends the
# list there. Twice, so a list ends after ~10 steps on average.
STEP_KINDS = ["stop", "stop", "write", "read", "fork", "madvise", "mprotect", "vmsplice",
              "pipe_read", "pipe_close", "exit", "munmap", "remap", "pin", "pin_read",
              "pin_write", "pin_release", "gup", "proc_mem_write", "proc_mem_read", "frame",
              "write_straddle", "pwrite", "pread", "ftruncate", "punch", "fallocate", "close",
              "remap_file", "pageout", "clear_refs"]
HUGE_STEP_KINDS = STEP_KINDS + ["hfile", "hmremap"]     # programs with hugetlb regions


def _file_page(draw, state, who, extra=1):
    """A page of a file open in `who` (one choice), up to `extra` pages past
    its size; (None, 0) if it has none open."""
    places = [(name, page) for name in state.fds.get(who, ())
              for page in range(state.files[name] + extra)]
    if not places:
        return None, 0
    return _pick(draw, places)


def _file_range(draw, state, who):
    """A page range of a file open in `who`, possibly past its end (one choice)."""
    places = [(name, first, n) for name in state.fds.get(who, ())
              for n in range(1, state.files[name] + 2)
              for first in range(0, state.files[name] + 2 - n)]
    if not places:
        return None, 0, 0
    return _pick(draw, places)


@st.composite
def _maybe_step(draw, state, proc, depth):
    """One step run by proc (None: pick a live process), valid in state, or
    None for "stop"."""
    kind = draw(st.sampled_from(HUGE_STEP_KINDS if state.huge else STEP_KINDS))
    if kind == "stop":
        return None
    who = proc if proc is not None else _pick(draw, state.procs)
    step = None
    if kind == "fork" and len(state.procs) < MAX_PROCS and state.forks < MAX_FORKS:
        state.forks += 1
        child = f"c{state.forks}"
        step = {"op": "fork", "name": child}
        state.procs.append(child)
        state.fds[child] = list(state.fds.get(who, ()))   # the fd table is inherited
        if depth == 0:
            body = []
            while len(body) < 3 and child in state.procs:   # the body may make it exit
                nxt = draw(_maybe_step(state, child, depth + 1))
                if nxt is None:
                    break
                body.append(nxt)
            if body:
                step["body"] = body
    elif kind == "exit" and who != "main":
        step = {"op": "exit"}
        state.procs.remove(who)
        state.pipes = [p for p in state.pipes if p[1] != who]
        state.pins = [p for p in state.pins if p[1] != who]
        state.fds.pop(who, None)
    elif kind in ("pwrite", "pread") and state.fds.get(who):
        name, page = _file_page(draw, state, who)
        if kind == "pread":
            step = {"op": "pread", "fd": name, "off": page * C.PAGE_SIZE, "len": 4}
        else:
            step = {"op": "pwrite", "fd": name, "off": page * C.PAGE_SIZE, "data": state.tag()}
            state.files[name] = max(state.files[name], page + 1)
    elif kind == "ftruncate" and state.fds.get(who):
        name, pages = _pick(draw, [(name, n) for name in state.fds[who]
                                   for n in range(MAX_FILE_PAGES + 1)])
        step = {"op": "ftruncate", "fd": name, "len": pages * C.PAGE_SIZE}
        state.files[name] = pages
    elif kind in ("punch", "fallocate") and state.fds.get(who):
        name, first, n = _file_range(draw, state, who)
        shape = draw(st.integers(0, 2))
        off, length = first * C.PAGE_SIZE, n * C.PAGE_SIZE
        if kind == "punch":
            # 0: whole pages; 1, 2: partial first or last page (zeroed in place).
            if shape == 1:
                off, length = off + 1000, length - 1000
            elif shape == 2:
                length -= 1000
            step = {"op": "fallocate", "fd": name, "mode": PUNCH, "off": off, "len": length}
        else:
            mode = ["0", "FALLOC_FL_KEEP_SIZE", "FALLOC_FL_KEEP_SIZE"][shape]
            step = {"op": "fallocate", "fd": name, "mode": 0 if mode == "0" else mode,
                    "off": off, "len": length}
            if not shape:
                state.files[name] = max(state.files[name], first + n)
    elif kind == "close" and state.fds.get(who):
        name = _pick(draw, state.fds[who])
        step = {"op": "close", "fd": name}
        state.fds[who] = [f for f in state.fds[who] if f != name]
    elif kind == "remap_file" and state.fds.get(who):
        at, n = _range(draw, state)
        name, page, shared = _pick(draw, [(name, page, shared) for shared in (1, 0)
                                          for name in state.fds[who]
                                          for page in range(max(state.files[name], 1))])
        step = {"op": "mmap", "addr": at, "pages": n, "prot": "PROT_READ|PROT_WRITE",
                "flags": ("MAP_SHARED" if shared else "MAP_PRIVATE") + "|MAP_FIXED",
                "fd": name, "off": page * C.PAGE_SIZE}
    elif kind == "pageout":
        # MADV_PAGEOUT more often than the advice list alone would.
        at, n = _range(draw, state)
        if "MADV_PAGEOUT" in state.advice:
            step = {"op": "madvise", "at": at, "pages": n, "advice": "MADV_PAGEOUT"}
    elif kind == "clear_refs":
        step = {"op": "clear_refs", "value": draw(st.integers(1, 5))}
    elif kind == "hfile" and state.hfiles and proc is None:
        # An MFD_HUGETLB memfd (main's; it never closes it): truncation to
        # whole huge pages or not (EINVAL), hole punches of whole pages or
        # inside one, a read, a write (hugetlbfs has no write: EINVAL).
        name = _pick(draw, sorted(state.hfiles))
        hp = HUGE_PAGES * C.PAGE_SIZE
        what = _pick(draw, [("ftruncate", 0), ("ftruncate", hp), ("ftruncate", 2 * hp),
                            ("ftruncate", C.PAGE_SIZE), ("punch", 0, hp), ("punch", hp, hp),
                            ("punch", 0, C.PAGE_SIZE), ("punch", C.PAGE_SIZE, hp),
                            ("pread", 0), ("pread", hp + 8), ("pwrite", 0)])
        if what[0] == "ftruncate":
            step = {"op": "ftruncate", "fd": name, "len": what[1]}
        elif what[0] == "punch":
            step = {"op": "fallocate", "fd": name, "mode": PUNCH, "off": what[1], "len": what[2]}
        elif what[0] == "pread":
            step = {"op": "pread", "fd": name, "off": what[1], "len": 4}
        else:
            step = {"op": "pwrite", "fd": name, "off": what[1], "data": state.tag()}
        who = "main"
    elif kind == "hmremap" and state.huge:
        # mremap of a hugetlb region (5.16), or of its tail from a huge page
        # boundary: shrink in place, the same size or growing (EINVAL),
        # moved onto the start of a region (its own kind: FIXED; a base-page
        # region's start is rarely huge-aligned). Moving a tail leaves the
        # rest of a private VMA without its reservations
        # (clear_vma_resv_huge_pages).
        name, pages = _pick(draw, [(n, p) for n, p in state.regions if n in state.huge])
        at = _pick(draw, list(range(0, pages, HUGE_PAGES)))
        left = pages - at
        new, to = _pick(draw, [(n, t) for n in (HUGE_PAGES, left, left + HUGE_PAGES)
                               for t in [None] + [r for r, _p in state.regions]])
        step = {"op": "mremap", "at": [name, at], "pages": left, "new_pages": new}
        if to is not None:
            step["to"] = [to, 0]
            step["new_pages"] = min(new, dict(state.regions)[to])
    elif kind in ("madvise", "mprotect", "munmap", "remap"):
        at, n = _range(draw, state)
        if kind == "madvise":
            step = {"op": "madvise", "at": at, "pages": n,
                    "advice": draw(st.sampled_from(state.advice))}
        elif kind == "mprotect":
            step = {"op": "mprotect", "at": at, "pages": n,
                    "prot": draw(st.sampled_from(PROT_CHOICES))}
        elif kind == "munmap":
            step = {"op": "munmap", "at": at, "pages": n}
        else:
            step = {"op": "mmap", "addr": at, "pages": n, "prot": "PROT_READ|PROT_WRITE",
                    "flags": "MAP_PRIVATE|MAP_ANONYMOUS|MAP_FIXED"}
    elif kind in ("vmsplice", "gup", "pin") and len(state.pipes) + len(state.pins) < MAX_HANDLES \
            and (kind != "pin" or state.allow_pins):
        at, n = _range(draw, state)
        n = min(n, 2)
        state.serial += 1
        name = {"vmsplice": "p", "gup": "g", "pin": "u"}[kind] + str(state.serial)
        if kind == "vmsplice":
            step = {"op": "vmsplice", "at": at, "pages": n, "name": name}
            state.pipes.append((name, who))
        elif kind == "gup":
            step = {"op": "get_user_pages", "at": at, "pages": n, "gup_flags": "FOLL_GET",
                    "name": name}
            state.pins.append((name, who, n, "gup"))
        else:
            step = {"op": "pin_user_pages", "at": at, "pages": n, "gup_flags": PIN_FLAGS,
                    "name": name}
            state.pins.append((name, who, n, "pin"))
    elif kind in ("pipe_read", "pipe_close") and state.pipes:
        name, _owner = _pick(draw, state.pipes)
        if kind == "pipe_read":
            return {"op": "pipe_read", "pipe": name, "len": 4}
        state.pipes = [p for p in state.pipes if p[0] != name]
        return {"op": "pipe_close", "pipe": name}
    elif kind in ("pin_read", "pin_write", "pin_release") and state.pins:
        handles = [(name, page) for name, _o, npages, _k in state.pins for page in range(npages)]
        name, page = _pick(draw, handles)
        pkind = next(p[3] for p in state.pins if p[0] == name)
        off = page * C.PAGE_SIZE
        if kind == "pin_read" or (kind == "pin_write" and pkind == "gup"):
            return {"op": "pin_read", "pin": name, "off": off, "len": 4}
        if kind == "pin_write":
            return {"op": "pin_write", "pin": name, "off": off, "data": state.tag()}
        state.pins = [p for p in state.pins if p[0] != name]
        return {"op": "pin_release", "pin": name}
    elif kind in ("proc_mem_write", "proc_mem_read", "frame", "read"):
        at, _ = _page(draw, state)
        step = {"proc_mem_write": {"op": "proc_mem_write", "at": at, "data": state.tag()},
                "proc_mem_read": {"op": "proc_mem_read", "at": at, "len": 4},
                "frame": {"op": "frame", "at": at},
                "read": {"op": "read", "at": at, "len": 4}}[kind]
    elif kind == "write_straddle":
        # A write across two pages, where a fault may stop it halfway.
        at, _ = _page(draw, state, straddle=True)
        if at is not None:
            step = {"op": "write", "at": at + [C.PAGE_SIZE - 2], "data": state.tag()}
    if step is None:
        # "write", or a kind that does not fit the state.
        at, _ = _page(draw, state)
        step = {"op": "write", "at": at, "data": state.tag()}
    if proc is None and who != "main":
        step["proc"] = who
    return step


@st.composite
def programs(draw, max_steps=12, pins=True, shared=True, advice=None, files=True, thp=False,
             hugetlb=False):
    """Small valid programs; see the module docstring. pins, shared, files
    and advice (a list of MADV_* names) restrict what they use; thp lets a
    private anon region be a THP one (2 MiB, aligned, MADV_HUGEPAGE);
    hugetlb adds regions of one or two 2 MiB hugetlb pages (MAP_HUGETLB
    private or shared, some MAP_NORESERVE, or an MFD_HUGETLB memfd mapped
    shared or private), from a pool of HUGETLB_POOL pages on both sides."""
    steps = []
    regions = []
    filesizes = []
    huge, hfiles = [], {}
    while files and len(filesizes) < MAX_FILES:
        # "a (further) file?": 0 says no. memfd_create + ftruncate; the
        # content comes from pwrite steps and writes through mappings.
        if draw(st.integers(0, 2)) == 0:
            break
        name = f"f{len(filesizes)}"
        pages = draw(st.integers(1, MAX_FILE_PAGES))
        steps.append({"op": "memfd_create", "name": name})
        steps.append({"op": "ftruncate", "fd": name, "len": pages * C.PAGE_SIZE})
        filesizes.append((name, pages))
    while len(regions) < 3:
        # "another region?": 0 (where shrinking goes) says no; a region's
        # choices stay together so shrinking can delete one.
        if regions and draw(st.integers(0, 2)) == 0:
            break
        name = "abc"[len(regions)]
        pages = draw(st.integers(1, 8))
        # Backing, always drawn (0-3 private anon, 4 shared anon, 5-6 shared
        # file, 7 private file), and always a file place, used or not.
        backing = draw(st.integers(0, 10 if hugetlb else 7))
        place = draw(st.integers(0, 2 * MAX_FILE_PAGES - 1))
        step = {"op": "mmap", "name": name, "pages": pages, "prot": "PROT_READ|PROT_WRITE",
                "flags": "MAP_PRIVATE|MAP_ANONYMOUS"}
        if backing >= 8:
            # 8, 9: MAP_HUGETLB private, shared (a quarter MAP_NORESERVE); 10:
            # a hugetlb memfd of two pages, mapped shared or private.
            pages = HUGE_PAGES * (1 + pages % 2)
            step.update(pages=pages, align=HUGE_PAGES)
            if backing == 10:
                if not hfiles:
                    steps.append({"op": "memfd_create", "name": "h", "flags": "MFD_HUGETLB"})
                    steps.append({"op": "ftruncate", "fd": "h", "len": 2 * HUGE_PAGES * C.PAGE_SIZE})
                    hfiles["h"] = 2
                step.update(flags="MAP_SHARED" if place % 2 else "MAP_PRIVATE", fd="h",
                            off=(place // 2) % (3 - pages // HUGE_PAGES) * HUGE_PAGES * C.PAGE_SIZE)
            else:
                step["flags"] = ("MAP_PRIVATE" if backing == 8 else "MAP_SHARED") \
                    + "|MAP_ANONYMOUS|" + HUGE + ("|MAP_NORESERVE" if place % 4 == 3 else "")
            steps.append(step)
            regions.append((name, pages))
            huge.append(name)
            continue
        if backing == 3 and thp:
            # A THP region: its own 2 MiB, aligned, MADV_HUGEPAGE'd; its first
            # fault maps a PMD where the machine gives one.
            pages = THP_PAGES
            step.update(pages=pages, align=THP_PAGES)
            steps.append(step)
            steps.append({"op": "madvise", "at": [name, 0], "pages": pages, "advice": "MADV_HUGEPAGE"})
            regions.append((name, pages))
            continue
        if backing == 4 and shared:
            step["flags"] = "MAP_SHARED|MAP_ANONYMOUS"
        elif backing >= 5 and filesizes:
            fname, fpages = filesizes[place % len(filesizes)]
            step["flags"] = "MAP_SHARED" if backing < 7 else "MAP_PRIVATE"
            step["fd"] = fname
            step["off"] = (place // len(filesizes)) % fpages * C.PAGE_SIZE
        steps.append(step)
        regions.append((name, pages))
    state = _GenState(regions, pins, filesizes, huge, hfiles)
    if advice is not None:
        state.advice = list(advice)
    while len(steps) < len(regions) + max_steps:
        nxt = draw(_maybe_step(state, None, 0))
        if nxt is None:
            break
        steps.append(nxt)
    return steps


# --- userfaultfd programs -----------------------------------------------------------

UFFD_FEATURES = [0, "UFFD_FEATURE_PAGEFAULT_FLAG_WP", "UFFD_FEATURE_WP_UNPOPULATED",
                 "UFFD_FEATURE_EXACT_ADDRESS", "UFFD_FEATURE_SIGBUS",
                 "UFFD_FEATURE_MINOR_SHMEM", "UFFD_FEATURE_POISON|UFFD_FEATURE_MOVE",
                 "UFFD_FEATURE_WP_HUGETLBFS_SHMEM|UFFD_FEATURE_PAGEFAULT_FLAG_WP"]
# Non-cooperative events: a program asking for them starts a service thread
# at once (on the host the syscall that raises one sleeps until it is read).
UFFD_EVENT_FEATURES = ["UFFD_FEATURE_EVENT_REMOVE|UFFD_FEATURE_EVENT_UNMAP",
                       "UFFD_FEATURE_EVENT_FORK|UFFD_FEATURE_EVENT_UNMAP",
                       "UFFD_FEATURE_EVENT_REMOVE|UFFD_FEATURE_WP_UNPOPULATED",
                       "UFFD_FEATURE_EVENT_REMAP|UFFD_FEATURE_EVENT_UNMAP"]
UFFD_MODES = ["UFFDIO_REGISTER_MODE_MISSING", "UFFDIO_REGISTER_MODE_WP",
              "UFFDIO_REGISTER_MODE_MISSING|UFFDIO_REGISTER_MODE_WP",
              "UFFDIO_REGISTER_MODE_MINOR", "UFFDIO_REGISTER_MODE_MINOR|UFFDIO_REGISTER_MODE_WP"]
UFFD_STEP_KINDS = ["stop", "stop", "read", "write", "resume", "uffd_read", "uffd_copy",
                   "uffd_zeropage", "protect", "unprotect", "uffd_wake", "write_straddle",
                   "uffd_register", "uffd_unregister", "madvise", "copy_wp", "unprotect_dontwake",
                   "zeropage_dontwake", "continue", "poison", "move", "copy_from", "serve",
                   "served", "pwrite", "munmap", "fork", "mremap"]
# No MADV_PAGEOUT: a page the blocked access's thread just faulted in sits in
# that CPU's LRU batch, which PAGEOUT from the serving thread may not drain
# (host-flaky).
UFFD_ADVICE = ["MADV_DONTNEED", "MADV_POPULATE_READ", "MADV_POPULATE_WRITE", "MADV_REMOVE"]
UFFD_BACKINGS = ["anon", "anon", "shmem", "shmem-private"]


@st.composite
def uffd_programs(draw, max_steps=12, advice=None):
    """Small userfaultfd programs: one context (O_NONBLOCK) over one or two
    regions of 1-4 pages, private anonymous or a memfd mapped shared or
    private, and an anonymous source region "s" that is never registered.
    A registration (MISSING, WP, MINOR or a mix), then accesses that block,
    reads of the message queue, faults resolved by COPY (from bytes or from
    "s"), ZEROPAGE, CONTINUE and unprotecting, POISON, MOVE from "s", wakes,
    resumes, re-registration, unregistration, file writes and a little advice.

    A service thread (uffd_serve: the Resolver rules) may take over at any
    point, reading what is queued; programs that ask for non-cooperative
    events (REMOVE, UNMAP, FORK) start it at once, and only served programs
    munmap or fork, so no syscall ever waits on a reader that is not there.
    The served log (uffd_served) is compared at the end."""
    adv = [a for a in UFFD_ADVICE if advice is None or a in advice] or ["MADV_DONTNEED"]
    regions, steps, has_file = [], [], False
    while len(regions) < 2:
        if regions and draw(st.integers(0, 1)) == 0:
            break
        name = "ab"[len(regions)]
        pages = draw(st.integers(1, 4))
        backing = _pick(draw, UFFD_BACKINGS)
        if backing == "anon":
            steps.append({"op": "mmap", "name": name, "pages": pages,
                          "prot": "PROT_READ|PROT_WRITE", "flags": "MAP_PRIVATE|MAP_ANONYMOUS"})
        else:
            if not has_file:
                # Page 0 is in the page cache, the rest are holes: MINOR and
                # MISSING faults both happen.
                steps += [{"op": "memfd_create", "name": "m"},
                          {"op": "ftruncate", "fd": "m", "len": 4 * C.PAGE_SIZE},
                          {"op": "pwrite", "fd": "m", "off": 0, "data": "cached"}]
                has_file = True
            steps.append({"op": "mmap", "name": name, "pages": pages,
                          "prot": "PROT_READ|PROT_WRITE", "fd": "m",
                          "flags": "MAP_SHARED" if backing == "shmem" else "MAP_PRIVATE"})
        regions.append((name, pages))
    spages = draw(st.integers(1, 4))
    steps += [{"op": "mmap", "name": "s", "pages": spages, "prot": "PROT_READ|PROT_WRITE",
               "flags": "MAP_PRIVATE|MAP_ANONYMOUS"},
              {"op": "write", "at": ["s", 0], "fill": 0x5A, "len": spages * C.PAGE_SIZE}]
    state = _GenState(regions, False)
    events = draw(st.integers(0, len(UFFD_EVENT_FEATURES)))      # 0: none
    features = _pick(draw, UFFD_FEATURES)
    if events:
        ev = UFFD_EVENT_FEATURES[events - 1]
        features = ev if not features else f"{features}|{ev}"
    steps.append({"op": "userfaultfd", "name": "u", "flags": "O_NONBLOCK|O_CLOEXEC"})
    steps.append({"op": "uffd_api", "uffd": "u", "features": features})
    at, n = _range(draw, state)
    steps.append({"op": "uffd_register", "uffd": "u", "at": at, "pages": n,
                  "mode": _pick(draw, UFFD_MODES)})
    served = False
    if events:
        steps.append({"op": "uffd_serve", "uffd": "u", "missing": "zeropage"})
        served = True
    first = len(steps)
    while len(steps) < first + max_steps:
        kind = draw(st.sampled_from(UFFD_STEP_KINDS))
        if kind == "stop":
            break
        at, n = _range(draw, state)
        arg = draw(st.integers(0, 3))
        if kind == "read":
            step = {"op": "read", "at": at, "len": 4}
        elif kind == "write":
            step = {"op": "write", "at": at, "data": state.tag()}
        elif kind == "write_straddle":
            page, _ = _page(draw, state, straddle=True)
            step = ({"op": "write", "at": page + [C.PAGE_SIZE - 2], "data": state.tag()}
                    if page is not None else {"op": "write", "at": at, "data": state.tag()})
        elif kind == "resume":
            step = {"op": "resume"}
        elif kind == "uffd_read":
            step = {"op": "uffd_read", "uffd": "u"}
            if arg:
                step["max"] = arg
        elif kind in ("uffd_copy", "copy_wp"):
            step = {"op": "uffd_copy", "uffd": "u", "at": at, "pages": n, "fill": arg,
                    "data": state.tag()}
            if kind == "copy_wp":
                step["mode"] = "UFFDIO_COPY_MODE_WP"
        elif kind in ("copy_from", "move"):
            src = ["s", arg % max(1, spages - n + 1)]
            if n > spages:
                src = ["s", 0]
                n = spages
            step = {"op": "uffd_copy" if kind == "copy_from" else "uffd_move", "uffd": "u",
                    "at": at, "src": src, "pages": n}
            if kind == "move" and arg & 1:
                step["mode"] = "UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES"
        elif kind in ("uffd_zeropage", "zeropage_dontwake"):
            step = {"op": "uffd_zeropage", "uffd": "u", "at": at, "pages": n}
            if kind == "zeropage_dontwake":
                step["mode"] = "UFFDIO_ZEROPAGE_MODE_DONTWAKE"
        elif kind == "continue":
            step = {"op": "uffd_continue", "uffd": "u", "at": at, "pages": n}
            if arg == 3:
                step["mode"] = "UFFDIO_CONTINUE_MODE_WP"
        elif kind == "poison":
            step = {"op": "uffd_poison", "uffd": "u", "at": at, "pages": n}
        elif kind in ("protect", "unprotect", "unprotect_dontwake"):
            step = {"op": "uffd_writeprotect", "uffd": "u", "at": at, "pages": n,
                    "mode": {"protect": "UFFDIO_WRITEPROTECT_MODE_WP", "unprotect": 0,
                             "unprotect_dontwake": "UFFDIO_WRITEPROTECT_MODE_DONTWAKE"}[kind]}
        elif kind == "uffd_wake":
            step = {"op": "uffd_wake", "uffd": "u", "at": at, "pages": n}
        elif kind == "uffd_register":
            step = {"op": "uffd_register", "uffd": "u", "at": at, "pages": n,
                    "mode": UFFD_MODES[arg % len(UFFD_MODES)]}
        elif kind == "uffd_unregister":
            step = {"op": "uffd_unregister", "uffd": "u", "at": at, "pages": n}
        elif kind == "serve":
            if served:
                step = {"op": "uffd_served", "uffd": "u"}
            else:
                step = {"op": "uffd_serve", "uffd": "u",
                        "missing": "copy" if arg & 1 else "zeropage", "fill": arg}
                served = True
        elif kind == "served":
            step = {"op": "uffd_served", "uffd": "u"} if served else {"op": "uffd_read",
                                                                      "uffd": "u"}
        elif kind == "pwrite":
            if not has_file:
                continue
            step = {"op": "pwrite", "fd": "m", "off": (arg % 4) * C.PAGE_SIZE,
                    "data": state.tag()}
        elif kind == "munmap":
            # Only served: an UNMAP event waits for its reader. A munmapped
            # region stays a name; later steps on it see ENOMEM/SIGSEGV alike.
            if not served:
                continue
            step = {"op": "munmap", "at": at, "pages": n}
        elif kind == "mremap":
            # Moved onto a range of a named region (FIXED), so both machines
            # place it alike; only served, as events may come of it.
            if not served:
                continue
            to, tn = _range(draw, state)
            step = {"op": "mremap", "at": at, "pages": n, "new_pages": min(n, tn), "to": to}
        elif kind == "fork":
            if not served:
                continue
            step = {"op": "fork", "name": f"c{state.tag()}", "body": [
                {"op": "read", "at": at, "len": 4}, {"op": "exit"}]}
        else:
            advice = adv[arg % len(adv)]
            if advice == "MADV_REMOVE" and not served:
                advice = "MADV_DONTNEED"        # on a shared memfd REMOVE may raise an event
            if advice == "MADV_DONTNEED" and not served and "EVENT" in str(features):
                continue
            step = {"op": "madvise", "at": at, "pages": n, "advice": advice}
        steps.append(step)
    if served:
        steps.append({"op": "uffd_served", "uffd": "u"})
    return steps


# --- running both sides -----------------------------------------------------------

class Outcome:
    """How one program fared: status is "agree", "diverge", "unsupported"
    (the host cannot run it), "engine-gap" (the engine raised
    NotImplementedError first), "invalid" (placement-dependent, see
    PlacementError) or "host-flaky" (two host runs disagree with each other)."""

    def __init__(self, status, divergence=None, detail="", reason=None):
        self.status = status
        self.divergence = divergence
        self.detail = detail
        self.reason = reason or detail      # what programs are counted by (unsupported)


class EngineMissing(RuntimeError):
    pass


def engine_factory(kernel="host", seed=0, swap=0, thp="madvise", hugepages=None):
    """A function making a fresh engine Machine (with `swap` bytes of swap,
    the oracle's THP "enabled" setting and its hugetlb pool), or
    EngineMissing."""
    try:
        import mmemu
        Machine = mmemu.Machine
    except (ImportError, AttributeError) as e:
        raise EngineMissing(f"mmemu.Machine is not available: {e}") from e

    def make():
        return Machine(kernel=kernel, seed=seed, swap=swap, thp=thp, hugepages=hugepages)
    return make


def _close(m):
    close = getattr(m, "close", None)
    if close is not None:
        close()


def _run(program, machine, **kw):
    """P.run; on a host machine, also the check that the swap stayed its
    own throughout if the program paged out (HostMachine._swap_still_ours:
    Unsupported otherwise)."""
    since = getattr(machine, "_pageouts", None)
    obs = P.run(program, machine, **kw)
    if since is not None:
        machine._swap_still_ours(since)
    return obs


def _unsupported(e):
    return Outcome("unsupported", detail=str(e), reason=e.reason)


def check_pair(program, host, make_other, names=("host", "engine")):
    """Run program on the host machine and on a fresh make_other(); compare."""
    try:
        obs_h = _run(program, host)
    except Unsupported as e:
        return _unsupported(e)
    except P.PlacementError as e:
        return Outcome("invalid", detail=str(e))
    other = make_other()
    try:
        # The machine is thrown away: no need to exit its processes one by
        # one (close() below ends a HostMachine's servers).
        obs_o = _run(program, other, cleanup=False)
    except P.PlacementError as e:
        return Outcome("invalid", detail=str(e))
    except Unsupported as e:          # the other machine is a host too (--against host)
        return _unsupported(e)
    finally:
        _close(other)
    d = compare(obs_h, obs_o, program, names=names)
    if d is None:
        return Outcome("agree")
    gap = _engine_gap(obs_o[:d.index + 1])
    if gap:
        return Outcome("engine-gap", d, gap)
    # Is the host consistent with itself on this program? A divergence must
    # not rest on the host's own nondeterminism: compaction moving a page,
    # fault-around skipping a neighbour it cannot trylock, swap writeback
    # still in flight or a per-CPU LRU batch holding a reference when a
    # swap-in decides whether to free the swapcache.
    for _ in range(HOST_RERUNS):
        try:
            again = _run(program, host)
        except Unsupported as e:
            return _unsupported(e)
        if compare(obs_h, again, program, names=("host", "host again")) is not None:
            return Outcome("host-flaky", d)
    return Outcome("diverge", d)


def _engine_gap(observations):
    """The engine's 'not modelled yet' (NotImplementedError) at or before the
    divergence: a known gap, not a disagreement about Linux."""
    for rec in observations:
        if rec["outcome"].get("error") == "NotImplementedError":
            return rec["outcome"].get("detail", "")
    return ""


def _programs_for(max_steps, features):
    f = features or Features()
    if f.uffd:
        return uffd_programs(max_steps=max_steps, advice=f.advice)
    return programs(max_steps=max_steps, pins=f.pins, shared=f.shared, advice=f.advice,
                    files=f.files, thp=f.thp, hugetlb=f.hugetlb)


def _settings(n, phases, verbosity=Verbosity.quiet):
    return settings(max_examples=n, phases=phases, database=None, deadline=None,
                    derandomize=False, verbosity=verbosity, print_blob=False,
                    report_multiple_bugs=False,
                    suppress_health_check=list(HealthCheck))


def survey(n, seed, host, make_other, names=("host", "engine"), progress=None,
           max_steps=12, features=None):
    """Run n generated programs (no shrinking). Returns a list of
    (program, Outcome) in generation order."""
    results = []

    @_settings(n, [Phase.generate])
    @hypothesis_seed(seed)
    @given(_programs_for(max_steps, features))
    def one(program):
        results.append((program, check_pair(program, host, make_other, names)))
        if progress is not None:
            progress(results[-1][1])

    one()
    return results


class _Found(Exception):
    def __init__(self, program, outcome):
        super().__init__("divergent program")
        self.program = program
        self.outcome = outcome


def shrink(key, n, seed, host, make_other, names=("host", "engine"), progress=None,
           max_steps=12, features=None):
    """Replay the survey's generation (same seed) until a program diverges
    with this key, then let Hypothesis shrink it while it still does.
    Returns (program, Outcome), or None if the divergence did not recur.

    A divergence that rests on timing (the host's own nondeterminism) may
    not recur when Hypothesis replays its final example; then the smallest
    program that did diverge is returned."""
    smallest = []

    @_settings(n, [Phase.generate, Phase.shrink])
    @hypothesis_seed(seed)
    @given(_programs_for(max_steps, features))
    def one(program):
        out = check_pair(program, host, make_other, names)
        if progress is not None:
            progress(out)
        if out.status == "diverge" and out.divergence.key == key:
            if not smallest or _size(program) <= _size(smallest[0][0]):
                smallest[:] = [(program, out)]
            raise _Found(program, out)

    try:
        one()
    except _Found as f:
        return f.program, f.outcome
    except (FlakyFailure, Flaky):
        if smallest:
            return smallest[0]
        raise
    return None


def _size(program):
    """Steps, counting those of fork bodies (to pick the smallest example)."""
    return sum(1 + _size(s.get("body", [])) for s in program)


# --- CLI ----------------------------------------------------------------------------

def swap_size(text):
    """--swap: a byte size (4096, 64k, 16M, 16MiB, 1G: binary multiples), 0 for none;
    else a whole number of pages, at least 9 (mkswap adds a header page)."""
    from ..cli import byte_size
    n = byte_size(text)
    if n and (n % C.PAGE_SIZE or n < 9 * C.PAGE_SIZE):
        raise argparse.ArgumentTypeError(
            f"{text!r} is {n} bytes: swap is 0 or a multiple of {C.PAGE_SIZE} bytes "
            f"of at least {9 * C.PAGE_SIZE} (9 pages)")
    return n


def _parser():
    from ..cli import (ArgumentParser, kernel_version, nonnegative_int, output_flags,
                       positive_int, progress_flags)
    ap = ArgumentParser(prog="mmemu diff",
                        description="Run random programs on the engine and on the host "
                                    "kernel; report where they disagree. Exit status: 0 "
                                    "all agree, 1 a divergence, 2 bad input or a host that "
                                    "cannot run the comparison, 3 the host oracle failed.")
    ap.add_argument("--programs", type=positive_int, default=200, metavar="N",
                    help="programs to run (default 200)")
    ap.add_argument("--seed", type=nonnegative_int, default=0,
                    help="generation seed (default 0)")
    ap.add_argument("--kernel", type=kernel_version, default="host", metavar="V",
                    help="engine era to compare, Machine(kernel=V): 5.7 ... 6.18, a stable "
                         "point release such as 6.12.118, or host "
                         "(default: host)")
    ap.add_argument("--against", type=_against, default="engine", metavar="engine|host|vm:K",
                    help="compare the host with the engine (default) or with itself, which "
                         "checks the oracle's own determinism; vm:K (vm:6.1, vm:6.12, a "
                         "Debian kernel version) makes a Debian kernel booted under QEMU "
                         "the oracle instead of the host, compared with the engine at that "
                         "kernel's exact version (fetched and prepared on first use)")
    ap.add_argument("--max-steps", type=positive_int, default=12, metavar="N",
                    help="steps per program (default 12)")
    ap.add_argument("--no-pins", action="store_true", help="no io_uring pins")
    ap.add_argument("--no-files", action="store_true", help="no memfds or file mappings")
    ap.add_argument("--no-hugetlb", action="store_true",
                    help="no hugetlb regions (by default, where the host's hugetlb pool can be "
                         f"set, {HUGETLB_POOL} pages of 2 MiB on both sides for the run)")
    ap.add_argument("--uffd", action="store_true",
                    help="generate userfaultfd programs (mmemu.host.diff.uffd_programs): "
                         "MISSING and WP faults on anonymous memory that block, are read "
                         "from the queue, resolved and resumed")
    ap.add_argument("--swap", type=swap_size, default=DEFAULT_SWAP, metavar="SIZE",
                    help=f"swap on both sides (default {DEFAULT_SWAP >> 20}M: a swap file "
                         "is enabled on the host for the run, and removed after it); bytes "
                         "or binary multiples (64k, 16M, 16MiB, 1G); 0 for none")
    ap.add_argument("--everything", action="store_true",
                    help="also generate what the engine does not model yet (its "
                         "NotImplementedError is then counted as an engine gap)")
    ap.add_argument("--shrink", type=nonnegative_int, default=3, metavar="K",
                    help="shrink at most K kinds of divergence (default 3)")
    output_flags(ap, csv_too=False)
    progress_flags(ap)
    return ap


def _against(text):
    if text in ("engine", "host"):
        return text
    if text.startswith("vm:") and len(text) > 3:
        return text
    raise argparse.ArgumentTypeError(f"{text!r}: engine, host or vm:K (vm:6.1, vm:6.12)")


def _oracle(args, swap, log, bars):
    """The machine the programs are checked on, with its name, capabilities
    and what makes its other side: (make_oracle, oracle name, caps, swap,
    make_other, names) or a one-line error (str)."""
    from .caps import capabilities
    if not args.against.startswith("vm:"):
        if swap:
            from .swap import why_no_swap
            reason = why_no_swap()
            if reason:
                print(f"no swap on either side: the host cannot enable it ({reason})", file=log)
                swap = 0
        caps = capabilities()
        args.hugepages = None
        if not args.uffd and not args.no_hugetlb:
            from .hugetlb import why_no_pool
            why = why_no_pool({C.PMD_SIZE: HUGETLB_POOL})
            if why:
                print(f"no hugetlb programs: the host's pool cannot be set ({why})", file=log)
            else:
                args.hugepages = {C.PMD_SIZE: HUGETLB_POOL}
        if args.against == "host":
            make_other, names = (lambda: HostMachine(swap=swap, uffd=args.uffd,
                                                     hugepages=args.hugepages)), ("host", "host")
        else:
            try:
                engine_factory(args.kernel, args.seed, swap, caps.thp)
            except EngineMissing as e:
                return str(e)
            # The engine's pool is the host's (args.hugepages, None if the
            # host machine could not be given one after all).
            make_other = lambda: engine_factory(args.kernel, args.seed, swap, caps.thp,  # noqa: E731
                                                args.hugepages)()
            names = ("host", "engine")
        return (lambda: HostMachine(swap=swap, uffd=args.uffd, hugepages=args.hugepages)), \
            caps, swap, make_other, names
    from .vm import VmMachine, VmUnavailable, guest
    args.hugepages = None
    spec = args.against[3:]
    name = args.against
    try:
        g = guest(spec, progress=lambda t: print(f"{name}: {t}", file=log))
    except VmUnavailable as e:
        return f"{name}: {e}"
    print(f"{name}: {g.info['package']} {g.info['debian_version']} booted in "
          f"{g.boot_seconds:.1f} s ({g.accel.upper()})", file=log)
    caps = g.func("mmemu.host.caps:capabilities")
    if swap:
        reason = g.func("mmemu.host.swap:why_no_swap")
        if reason:
            print(f"no swap on either side: the guest cannot enable it ({reason})", file=log)
            swap = 0
    if not args.uffd and not args.no_hugetlb:
        # The guest's own pool, as the host's above: asked in the guest.
        why = g.func("mmemu.host.hugetlb:why_no_pool", {C.PMD_SIZE: HUGETLB_POOL})
        if why:
            print(f"no hugetlb programs: the guest's pool cannot be set ({why})", file=log)
        else:
            args.hugepages = {C.PMD_SIZE: HUGETLB_POOL}
    kernel = g.version if args.kernel == "host" else args.kernel
    args.kernel = kernel            # the engine's side, as the report names it
    try:
        engine_factory(kernel, args.seed, swap, caps.thp)()
    except (EngineMissing, ValueError) as e:
        return f"the engine cannot run {kernel}: {e}"
    # The engine's pool is the guest's (args.hugepages, None if the guest's
    # machine could not be given one after all).
    make_other = lambda: engine_factory(kernel, args.seed, swap, caps.thp,  # noqa: E731
                                        args.hugepages)()
    return (lambda: VmMachine(spec, swap=swap, uffd=args.uffd, hugepages=args.hugepages)), \
        caps, swap, make_other, (name, f"engine {kernel}")


def _tally(results, status):
    """[(reason, number of programs)] of the outcomes with this status, most first."""
    n = {}
    for _p, o in results:
        if o.status == status:
            n[o.reason] = n.get(o.reason, 0) + 1
    return sorted(n.items(), key=lambda kv: -kv[1])


def _report(args, swap, dropped, counts, results, shrunk):
    """The JSON document of `mmemu diff --json` (one object):
    {"kernel", "against", "seed", "programs", "max_steps", "uffd", "swap" (bytes used),
     "not_generated": [text], "counts": {status: n}, "agree", "compared", "rate" (percent),
     "engine_gaps": [{"detail", "programs"}], "unsupported": [{"detail", "programs"}],
     "divergences": [{"op", "field", "shrunk", "step", "where", "a", "b", "names",
                      "program" (the program language's JSON), "text"}],
     "not_shrunk": n}"""
    compared = sum(counts.get(k, 0) for k in ("agree", "diverge"))
    divergences = []
    for key, prog, o, was_shrunk in shrunk:
        d = o.divergence
        divergences.append({"op": key[0], "field": key[1], "shrunk": was_shrunk,
                            "step": d.step, "where": d.field, "a": d.a, "b": d.b,
                            "names": list(d.names), "program": prog, "text": str(d)})
    keys = {o.divergence.key for _p, o in results if o.status == "diverge"}
    return {"kernel": args.kernel, "against": args.against, "seed": args.seed,
            "programs": args.programs, "max_steps": args.max_steps, "uffd": args.uffd,
            "swap": swap, "hugepages": {str(k): v for k, v in (args.hugepages or {}).items()},
            "not_generated": list(dropped), "counts": dict(counts),
            "agree": counts.get("agree", 0), "compared": compared,
            "rate": round(100.0 * counts.get("agree", 0) / compared, 3) if compared else 0.0,
            "engine_gaps": [{"detail": t, "programs": k}
                            for t, k in _tally(results, "engine-gap")],
            "unsupported": [{"detail": t, "programs": k}
                            for t, k in _tally(results, "unsupported")],
            "divergences": divergences, "not_shrunk": max(0, len(keys) - len(shrunk))}


def main(argv=None, out=None):
    """`mmemu diff`. The report goes to `out` (stdout); with --json only the
    JSON document goes there, and messages go to stderr."""
    from ..cli import progress_enabled
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:          # -h, or a bad argument (reported in one line)
        return e.code
    out = out or sys.stdout
    log = sys.stderr if args.json else out
    from tqdm import tqdm

    bars = not progress_enabled(args)       # tqdm's disable=
    got = _oracle(args, args.swap, log, bars)
    if isinstance(got, str):
        print(f"mmemu diff: {got}", file=log)
        return 2
    make_oracle, caps, swap, make_other, names = got
    if not caps.pfns:
        print(f"mmemu diff: {caps.why_not('pfns')}; frame sharing cannot be compared",
              file=log)
        return 2
    try:
        host = make_oracle()
    except Unsupported as e:
        if not args.hugepages:
            print(f"mmemu diff: {e}", file=log)
            return 2
        print(f"no hugetlb programs: {e}", file=log)
        args.hugepages = None
        try:
            host = make_oracle()
        except Unsupported as e:
            print(f"mmemu diff: {e}", file=log)
            return 2
    features = Features(pins=not args.no_pins and caps.io_uring, files=not args.no_files,
                        uffd=args.uffd, thp=caps.thp != "never" and caps.kpage,
                        hugetlb=bool(args.hugepages) and caps.kpage)
    dropped = []
    if not args.everything:
        try:
            features, dropped = probe(make_other, features)
        except Unsupported as e:     # e.g. MADV_PAGEOUT while foreign swap is on
            host.close()
            print(f"mmemu diff: {e}", file=log)
            return 2
        for text in dropped:
            print(f"not generated (the machine under test does not model it): {text}",
                  file=log)
    counts = {}
    with host:
        print(f"swap: {swap >> 10} KiB on both sides" if swap else "swap: none", file=log)
        bar = tqdm(total=args.programs, desc="programs", unit="prog", disable=bars,
                   file=sys.stderr)

        def tick(outcome):
            counts[outcome.status] = counts.get(outcome.status, 0) + 1
            bar.update(1)
            bar.set_postfix(diverged=counts.get("diverge", 0), refresh=False)
        try:
            results = survey(args.programs, args.seed, host, make_other, names, tick,
                             args.max_steps, features)
        except HostError as e:
            bar.close()
            print(f"mmemu diff: the host oracle failed: {e}", file=log)
            return 3
        bar.close()
        ran = len(results)
        compared = sum(counts.get(s, 0) for s in ("agree", "diverge"))
        agree = counts.get("agree", 0)
        rate = 100.0 * agree / compared if compared else 0.0
        print(f"agreement: {agree}/{compared} programs ({rate:.1f}%); ran {ran}, "
              f"diverged {counts.get('diverge', 0)}, not modelled by the engine "
              f"{counts.get('engine-gap', 0)}, unsupported on the host "
              f"{counts.get('unsupported', 0)}, placement-dependent "
              f"{counts.get('invalid', 0)}, host-flaky {counts.get('host-flaky', 0)}",
              file=log)
        for text, k in _tally(results, "engine-gap"):
            print(f"  engine gap ({k} programs): {text}", file=log)
        for text, k in _tally(results, "unsupported"):
            print(f"  unsupported on the host ({k} programs): {text}", file=log)
        keys = []
        for prog, o in results:
            if o.status == "diverge" and o.divergence.key not in keys:
                keys.append(o.divergence.key)
        shrunk = []
        if keys:
            print(f"{len(keys)} kind(s) of divergence: "
                  + ", ".join(f"{op}/{field}" for op, field in keys), file=log)
        for i, key in enumerate(keys[:args.shrink]):
            sbar = tqdm(desc=f"shrinking {key[0]}/{key[1]}", unit="run", disable=bars,
                        file=sys.stderr)
            found = shrink(key, args.programs, args.seed, host, make_other, names,
                           lambda _o: sbar.update(1), args.max_steps, features)
            sbar.close()
            if found is None:   # did not recur: show the survey's own example
                found = next((p, o) for p, o in results
                             if o.status == "diverge" and o.divergence.key == key)
                note = " (not shrunk: it did not recur on replay)"
            else:
                note = ""
            prog, o = found
            shrunk.append((key, prog, o, not note))
            if not args.json:
                print(f"\n=== divergence {i + 1}: {key[0]} / {key[1]}{note} ===", file=out)
                print(str(o.divergence), file=out)
        if len(keys) > args.shrink:
            print(f"\n({len(keys) - args.shrink} more kind(s) not shrunk; --shrink K)",
                  file=log)
        if args.json:
            json.dump(_report(args, swap, dropped, counts, results, shrunk), out, indent=1,
                      default=str)
            out.write("\n")
        return 1 if keys else 0


if __name__ == "__main__":
    sys.exit(main())
