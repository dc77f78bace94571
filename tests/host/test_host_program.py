"""mmemu.program: checking, running on the host, presentation.

A bad program must be refused before it runs, naming the step; a good one
must yield the same observations whatever the machine places where.
"""
import json

import pytest

from mmemu import program as P
from mmemu.constants import MAP_ANONYMOUS, MAP_FIXED, MAP_PRIVATE, PROT_READ, PROT_WRITE

pytestmark = pytest.mark.host

A = {"op": "mmap", "name": "a", "pages": 2, "prot": "PROT_READ|PROT_WRITE",
     "flags": "MAP_PRIVATE|MAP_ANONYMOUS"}
F = {"op": "memfd_create", "name": "f"}


@pytest.mark.parametrize("steps, where, text", [
    ([A, {"op": "frobnicate"}], "1", "unknown op 'frobnicate'"),
    ([A, {"op": "munmap", "at": ["a", 0, 12], "pages": 1}], "1", "misaligned"),
    ([A, {"op": "read", "at": ["b", 0], "len": 1}], "1", "no region named 'b'"),
    ([A, {"op": "read", "at": ["a", 2], "len": 1}], "1", "outside region 'a'"),
    ([A, {"op": "read", "at": ["a", 1, 4090], "len": 8}], "1", "outside region 'a'"),
    ([A, {"op": "mprotect", "at": ["a", 1], "pages": 2, "prot": "PROT_READ"}], "1",
     "outside region"),
    ([A, {"op": "mprotect", "at": ["a", 0], "pages": 1, "prot": "MAP_SHARED"}], "1",
     "unknown PROT_* constant"),
    ([A, {"op": "read", "at": ["a", 0], "len": 1, "bogus": 1}], "1", "takes no bogus"),
    ([A, {"op": "write", "at": ["a", 0]}], "1", "exactly one of data, hex, fill"),
    ([A, {"op": "read", "at": ["a", 0]}], "1", "needs len"),
    ([A, {"op": "read", "proc": "ghost", "at": ["a", 0], "len": 1}], "1",
     "no process named 'ghost'"),
    ([A, {"op": "fork", "name": "c"}, {"op": "exit", "proc": "c"},
      {"op": "read", "proc": "c", "at": ["a", 0], "len": 1}], "3", "exited at step 2"),
    ([A, {"op": "vmsplice", "at": ["a", 0], "pages": 1, "name": "p"},
      {"op": "pipe_close", "pipe": "p"}, {"op": "pipe_read", "pipe": "p", "len": 1}], "3",
     "already closed"),
    ([A, {"op": "fork", "name": "c", "body": [
        {"op": "mmap", "name": "b", "pages": 1, "prot": "PROT_READ",
         "flags": "MAP_PRIVATE|MAP_ANONYMOUS"}]},
      {"op": "read", "at": ["b", 0], "len": 1}], "2",
     "not in the address space of process 'main'"),
    ([A, {"op": "fork", "name": "c", "body": [{"op": "nope"}]}], "1.0", "unknown op"),
    ([A, {"op": "mmap", "addr": ["a", 0], "pages": 1, "prot": "PROT_READ",
          "flags": "MAP_PRIVATE|MAP_ANONYMOUS"}], "1", "placement hint"),
    ([A, {"op": "mmap", "name": "b", "pages": 1, "prot": "PROT_READ",
          "flags": "MAP_PRIVATE|MAP_ANONYMOUS|MAP_FIXED"}], "1", "MAP_FIXED needs an addr"),
    ([A, A], "1", "not new"),
    ([{"op": "pin_read", "pin": "u", "off": 0, "len": 1}], "0", "no pin named 'u'"),
    ({"steps": "nope"}, "-", "list of steps"),
    # Files: names are per process and die with close; a stale name could
    # denote another file by its descriptor number on one machine only.
    ([{"op": "pread", "fd": "f", "off": 0, "len": 1}], "0", "no file named 'f'"),
    ([F, {"op": "close", "fd": "f"}, {"op": "pread", "fd": "f", "off": 0, "len": 1}], "2",
     "not open in process 'main'"),
    ([F, {"op": "fork", "name": "c", "body": [{"op": "close", "fd": "f"}]},
      {"op": "pread", "fd": "f", "off": 0, "len": 1},
      {"op": "pwrite", "proc": "c", "fd": "f", "off": 0, "data": "x"}], "3",
     "not open in process 'c'"),
    ([{"op": "fork", "name": "c"}, F, {"op": "close", "proc": "c", "fd": "f"}], "2",
     "not open in process 'c'"),
    ([F, F], "1", "file name 'f' is not new"),
    ([F, dict(A, fd="f", flags="MAP_SHARED|MAP_ANONYMOUS")], "1", "cannot be MAP_ANONYMOUS"),
    ([dict(A, off=4096)], "0", "off goes with fd"),
    ([F, {"op": "pread", "fd": "f", "off": -1, "len": 1}], "1", "byte offset"),
    ([F, {"op": "fallocate", "fd": "f", "mode": "MADV_REMOVE", "off": 0, "len": 1}], "1",
     "unknown FALLOC_FL_* constant"),
    ([{"op": "memfd_create", "name": "f", "flags": "MAP_SHARED"}], "0",
     "unknown MFD_* constant"),
])
def test_bad_programs_name_the_step(steps, where, text):
    with pytest.raises(P.ProgramError) as e:
        P.check(steps)
    assert e.value.step == where
    assert text in str(e.value) and str(e.value).startswith(f"step {where}:")


def test_bad_program_is_refused_before_anything_runs(host):
    with pytest.raises(P.ProgramError):
        P.run([A, {"op": "write", "at": ["a", 0], "data": "x"}, {"op": "bad"}], host)
    assert host.processes == []


def test_flags_round_trip():
    assert P.parse_flags("PROT_READ|PROT_WRITE", "PROT_") == PROT_READ | PROT_WRITE
    assert P.parse_flags(["MAP_PRIVATE", "MAP_ANONYMOUS"], "MAP_") == MAP_PRIVATE | MAP_ANONYMOUS
    assert P.format_flags(MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, "MAP_") == \
        "MAP_PRIVATE|MAP_FIXED|MAP_ANONYMOUS"
    assert P.format_flags(0, "PROT_") == "PROT_NONE"
    assert P.format_flags(4, "MADV_") == "MADV_DONTNEED"
    v = PROT_READ | PROT_WRITE
    assert P.parse_flags(P.format_flags(v, "PROT_"), "PROT_") == v


VMSPLICE_LEAK = [
    A,
    {"op": "write", "at": ["a", 0], "data": "hello"},
    {"op": "read", "at": ["a", 1], "len": 3},
    {"op": "fork", "name": "c", "body": [
        {"op": "vmsplice", "at": ["a", 0], "pages": 1, "name": "p"},
        {"op": "munmap", "at": ["a", 0], "pages": 1},
        {"op": "read", "at": ["a", 0, 7], "len": 3}]},
    {"op": "write", "at": ["a", 0], "data": "HELLO"},
    {"op": "pipe_read", "pipe": "p", "len": 5},
    {"op": "frame", "at": ["a", 0]},
    {"op": "pagemap", "at": ["a", 0], "pages": 2},
    {"op": "exit", "proc": "c"},
]


def test_run_records_outcomes_and_snapshots(host, need):
    need("pfns", "kpage", "vmsplice")
    obs = P.run(VMSPLICE_LEAK, host)
    assert [o["step"] for o in obs] == ["0", "1", "2", "3", "3.0", "3.1", "3.2", "4", "5",
                                        "6", "7", "8"]
    by = {o["step"]: o for o in obs}
    assert by["2"]["outcome"] == {"data": "000000"}
    assert by["3"]["outcome"] == {"ok": "c"} and by["3"]["child"] == "c"
    assert by["3.0"]["proc"] == "c" and by["5"]["proc"] == "c"
    assert by["3.2"]["outcome"] == {"signal": "SIGSEGV", "si_code": 1, "addr": ["a", 0, 7]}
    assert bytes.fromhex(by["5"]["outcome"]["data"]) == b"hello"
    # After fork both map one frame; after the parent's write they do not.
    snap = by["3"]["snapshot"]
    assert snap["main"]["a"][0]["pfn"] == snap["c"]["a"][0]["pfn"]
    assert snap["main"]["a"][0]["kpagecount"] == 2
    assert "zero_page" in snap["main"]["a"][1]["kpf"]
    after = by["4"]["snapshot"]["main"]["a"][0]
    assert after["pfn"] != snap["main"]["a"][0]["pfn"] and after["pm"] == "px"
    assert by["3.1"]["snapshot"]["c"]["a"][0] == {"pm": ""}
    assert by["6"]["outcome"]["frame"]["pfn"] == after["pfn"]
    pm = by["7"]["outcome"]["pagemap"]
    assert pm[0]["present"] and pm[0]["exclusive"] and pm[0]["pfn"] == after["pfn"]
    assert "c" not in by["8"]["snapshot"]
    assert host.live_processes() == []          # run() exits what it spawned


def test_failed_mmap_makes_later_uses_skipped(host):
    prog = [{"op": "mmap", "name": "z", "pages": 0, "prot": "PROT_READ",
             "flags": "MAP_PRIVATE|MAP_ANONYMOUS"},
            {"op": "mprotect", "at": ["z", 0], "pages": 0, "prot": "PROT_NONE"}]
    obs = P.run(prog, host, snapshots=False)
    assert obs[0]["outcome"] == {"errno": "EINVAL"}
    assert "never mapped" in obs[1]["outcome"]["skipped"]
    assert "snapshot" not in obs[0]


def test_map_fixed_subregion_and_symbolic_fault_address(host):
    prog = [dict(A, pages=4),
            {"op": "mmap", "name": "hole", "addr": ["a", 2], "pages": 1, "prot": "PROT_NONE",
             "flags": "MAP_PRIVATE|MAP_ANONYMOUS|MAP_FIXED"},
            {"op": "write", "at": ["a", 1, 4090], "data": "0123456789"},
            {"op": "read", "at": ["hole", 0, 5], "len": 1},
            {"op": "read", "at": ["a", 1, 4090], "len": 6}]
    obs = P.run(prog, host)
    assert obs[2]["outcome"] == {"signal": "SIGSEGV", "si_code": 2, "addr": ["a", 2, 0]}
    assert obs[3]["outcome"]["addr"] == ["a", 2, 5]
    assert bytes.fromhex(obs[4]["outcome"]["data"]) == b"012345"
    assert list(obs[4]["snapshot"]["main"]) == ["a"]      # sub-regions are not re-listed


class _OverlappingMachine:
    """Ignores placement hints and puts every new mapping at the first
    address it returned, as an engine reusing a hole might: what a program
    touches would then depend on placement, which run() must refuse."""

    def __init__(self, host):
        self.host = host
        self.first = None

    def spawn(self):
        outer = self
        proc = self.host.spawn()

        class Proc:
            def __getattr__(self, name):
                return getattr(proc, name)

            def mmap(self, addr, length, prot, flags, fd=-1, offset=0):
                hint = not flags & MAP_FIXED
                got = proc.mmap(outer.first if hint and outer.first else addr, length, prot,
                                flags | (MAP_FIXED if outer.first and hint else 0))
                outer.first = outer.first or got
                return got
        return Proc()

    def frame(self, pfn):
        return self.host.frame(pfn)


def test_placement_dependent_program_is_refused(host):
    prog = [A, dict(A, name="b")]
    with pytest.raises(P.PlacementError, match="placed 'b' at .*, not at the layout's"):
        P.run(prog, _OverlappingMachine(host))
    assert host.live_processes() == []


def test_regions_are_placed_alike_on_every_machine(host):
    """run() places regions by hint, top-down and adjacent from
    PLACEMENT_TOP, so alignment-dependent behaviour (the fault-around
    window) compares between machines."""
    r = P._Run(host, snapshots=False)
    r.procs["main"] = host.spawn()
    r.order.append("main")
    r.owned["main"], r.fds["main"] = [], {}
    r.walk([dict(A, pages=3), dict(A, name="b", pages=5)], "main")
    assert r.base == {"a": P.PLACEMENT_TOP - 3 * 4096, "b": P.PLACEMENT_TOP - 8 * 4096}
    r.cleanup()


def test_pretty_and_json_round_trip():
    text = P.pretty(VMSPLICE_LEAK)
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["0", "main", "mmap", "a"]
    assert any(line.strip().startswith("3.1") and "munmap a+0 1 pages" in line for line in lines)
    assert any("read pipe p len 5" in line for line in lines)
    assert json.loads(P.dumps(VMSPLICE_LEAK)) == VMSPLICE_LEAK
    assert P.dumps({"steps": VMSPLICE_LEAK}) == P.dumps(VMSPLICE_LEAK)


def test_handles_of_skipped_steps_are_skipped_too(host):
    """vmsplice on a region whose mmap failed is skipped; so are the steps
    that use its pipe (they must not crash the interpreter)."""
    prog = [{"op": "mmap", "name": "z", "pages": 0, "prot": "PROT_READ",
             "flags": "MAP_PRIVATE|MAP_ANONYMOUS"},
            {"op": "vmsplice", "at": ["z", 0], "pages": 0, "name": "p"},
            {"op": "pipe_read", "pipe": "p", "len": 1},
            {"op": "get_user_pages", "at": ["z", 0], "pages": 0, "gup_flags": "FOLL_GET",
             "name": "g"},
            {"op": "pin_release", "pin": "g"}]
    obs = P.run(prog, host, snapshots=False)
    assert [list(o["outcome"]) for o in obs] == [["errno"]] + [["skipped"]] * 4


FILES = [
    F,
    {"op": "ftruncate", "fd": "f", "len": 3 * 4096},
    {"op": "pwrite", "fd": "f", "off": 4096, "data": "file"},
    {"op": "mmap", "name": "s", "pages": 4, "prot": "PROT_READ|PROT_WRITE",
     "flags": "MAP_SHARED", "fd": "f"},
    {"op": "mmap", "name": "v", "pages": 2, "prot": "PROT_READ|PROT_WRITE",
     "flags": "MAP_PRIVATE", "fd": "f", "off": 4096},
    {"op": "read", "at": ["v", 0], "len": 4},
    {"op": "write", "at": ["v", 0], "data": "COW!"},
    {"op": "fork", "name": "c", "body": [
        {"op": "pwrite", "fd": "f", "off": 4096, "data": "kid"},
        {"op": "close", "fd": "f"}]},
    {"op": "read", "at": ["s", 1], "len": 4},
    {"op": "pread", "fd": "f", "off": 4096, "len": 4},
    {"op": "fallocate", "fd": "f", "mode": "FALLOC_FL_PUNCH_HOLE|FALLOC_FL_KEEP_SIZE",
     "off": 4096, "len": 4096},
    {"op": "read", "at": ["s", 1], "len": 4},
    {"op": "read", "at": ["v", 0], "len": 4},
    {"op": "read", "at": ["s", 3], "len": 1},
    {"op": "close", "fd": "f"},
    {"op": "read", "at": ["s", 0], "len": 1},
]


def test_file_ops_run_on_the_host(host, need):
    """memfd, pwrite/pread, shared and private file mappings, a descriptor
    inherited by fork and closed there, a hole punch: the observations are
    what Linux promises (a private COW copy survives the punch, the shared
    view reads the hole, EOF is SIGBUS, a mapping outlives close)."""
    need("pfns", "kpage")
    obs = P.run(FILES, host)
    by = {o["step"]: o["outcome"] for o in obs}
    assert by["0"] == {"ok": "f"} and by["2"] == {"count": 4}
    assert bytes.fromhex(by["5"]["data"]) == b"file"
    assert bytes.fromhex(by["8"]["data"]) == b"kide"       # the child's pwrite, shared
    assert bytes.fromhex(by["9"]["data"]) == b"kide"
    assert bytes.fromhex(by["11"]["data"]) == bytes(4)     # the hole
    assert bytes.fromhex(by["12"]["data"]) == b"COW!"      # the private copy survived
    assert by["13"]["signal"] == "SIGBUS" and by["13"]["addr"] == ["s", 3, 0]
    assert by["15"] == {"data": "00"}
    snaps = {o["step"]: {p: {r: P.expand_pages(st) for r, st in regions.items()}
                         for p, regions in o["snapshot"].items()} for o in obs}
    assert obs[[o["step"] for o in obs].index("7.1")]["snapshot"]["c"]["s"] == [{"pm": "", "n": 4}]
    assert snaps["7.1"]["c"]["s"] == [{"pm": ""}] * 4     # fork copies no shared file pte
    snap = snaps["8"]["main"]
    assert "f" in snap["s"][1]["pm"] and "anon" not in snap["s"][1]["kpf"]
    # The private COW copy is anon, and fork shared it with c (v has an anon_vma).
    assert "anon" in snap["v"][0]["kpf"] and snap["v"][0]["kpagecount"] == 2
    assert snaps["8"]["c"]["v"][0]["pfn"] == snap["v"][0]["pfn"]
    assert snap["s"][0] == {"pm": ""}        # fault-around maps cached pages, allocates none
    text = P.pretty(FILES)
    assert "f = memfd_create" in text and "mmap v = 2 pages" in text and "f+4096" in text
    assert "fallocate f FALLOC_FL_PUNCH_HOLE|FALLOC_FL_KEEP_SIZE off 4096 len 4096" in text


def test_failed_memfd_makes_its_uses_skipped(host):
    prog = [{"op": "memfd_create", "name": "f", "flags": 0x4000},   # unknown MFD bit
            {"op": "pread", "fd": "f", "off": 0, "len": 1},
            dict(A, fd="f", flags="MAP_SHARED")]
    obs = P.run(prog, host, snapshots=False)
    assert obs[0]["outcome"] == {"errno": "EINVAL"}
    assert all("never created" in o["outcome"]["skipped"] for o in obs[1:])
