"""Compare the observations of one program on two machines (host vs engine).

Raw PFNs mean nothing across machines; which pages share a frame does. So
PFNs are replaced by identities before comparing:

* the shared zero page (KPF_ZERO_PAGE) is "zero";
* any other frame is named where it was first seen: "F[4:c:a+0]" is the frame
  first seen at step 4 in process c at page 0 of region a (snapshots are
  walked in a fixed order: processes by creation, regions by definition,
  pages ascending; the same on both machines).

An identity lasts while the frame stays present in consecutive snapshots.
A frame that drops out of all page tables may be freed, and the host's
per-CPU page lists hand the same PFN straight back to the next fault; so a
PFN that reappears after a gap gets a new identity instead of claiming to
be the old frame. (Without snapshots, identities never expire.)

Compared by default: outcomes (return values, errno, signal, si_code,
symbolic si_addr, the type of any other exception), pagemap bits except soft-dirty (CONFIG_MEM_SOFT_DIRTY is
off on the host), frame identities, kpagecount, the kpageflags bits in
COMPARED_KPF, and for programs that map hugetlb memory the pool's counters
and each process's HugetlbPages. LRU, active, referenced, dirty and swapbacked depend on
per-CPU batches being drained and are not compared.
"""
import json

from .. import program as P

COMPARED_KPF = frozenset({"anon", "ksm", "zero_page", "thp", "huge", "compound_head",
                          "compound_tail", "mmap", "swapcache", "hwpoison", "nopage",
                          "unevictable"})
DEFAULT_IGNORE = frozenset({"soft_dirty"})


class _Labeller:
    def __init__(self, kpf_mask, expire):
        self.prev = {}          # pfn -> label, frames present in the previous snapshot
        self.cur = {}
        self.seen = {}          # every label ever given (used only when not expiring)
        self.zero = set()       # the zero page never changes identity
        self.expire = expire
        self.kpf_mask = kpf_mask

    def label(self, pfn, kpf, where):
        if pfn in self.zero or (kpf and "zero_page" in kpf):
            self.zero.add(pfn)
            return "zero"
        for table in (self.cur, self.prev) if self.expire else (self.cur, self.seen):
            if pfn in table:
                self.cur[pfn] = table[pfn]
                return table[pfn]
        lab = f"F[{where}]"
        self.cur[pfn] = self.seen[pfn] = lab
        return lab

    def kpf(self, names):
        if names is None:
            return None
        return sorted(n for n in names if n in self.kpf_mask)


def _pm_code(code, ignore):
    return code.replace("d", "") if "soft_dirty" in ignore else code


def normalize(observations, kpf_mask=COMPARED_KPF, ignore=DEFAULT_IGNORE):
    """Observations with PFNs replaced by identities and uncompared fields
    dropped. Pure: the input is not modified."""
    lab = _Labeller(kpf_mask, expire=all("snapshot" in r for r in observations))
    out = []
    for rec in observations:
        step = rec["step"]
        lab.cur = {}
        norm = {"step": step, "proc": rec["proc"], "op": rec["op"]}
        snap = rec.get("snapshot")
        nsnap = None
        if snap is not None:
            nsnap = {}
            for pname, regions in snap.items():
                nsnap[pname] = {}
                for rname, pages in regions.items():
                    nsnap[pname][rname] = states = []
                    i = 0                       # page offset (a state with "n" is a run)
                    for pg in pages:
                        states.append(_norm_page(pg, lab, f"{step}:{pname}:{rname}+{i}", ignore))
                        i += pg.get("n", 1)
        norm["outcome"] = _norm_outcome(rec["outcome"], lab, step, ignore)
        if "child" in rec:
            norm["child"] = rec["child"]
        if "hugetlb" in rec:
            norm["hugetlb"] = rec["hugetlb"]
        if nsnap is not None:
            norm["snapshot"] = nsnap
            lab.prev = lab.cur
        out.append(norm)
    return out


def _norm_page(pg, lab, where, ignore):
    out = {"pm": _pm_code(pg["pm"], ignore)}
    if "n" in pg:
        out["n"] = pg["n"]
    if "pfn" in pg:
        out["frame"] = lab.label(pg["pfn"], pg.get("kpf"), where)
        out["kpagecount"] = pg.get("kpagecount")
        out["kpf"] = lab.kpf(pg.get("kpf"))
    if "swap" in pg:
        swp_type, offset = pg["swap"]
        # A real swap device's type is its slot in swap_info, which on the
        # host depends on which swap files other processes turned on before
        # (a file enabled while another holds slot 0 is type 1 for good);
        # the engine has one device, type 0. Markers (30, 31) keep theirs.
        out["swap"] = [swp_type if swp_type >= 30 else "device", offset]
    return out


def _norm_outcome(outcome, lab, step, ignore):
    if "pagemap" in outcome:
        entries = []
        for i, e in enumerate(outcome["pagemap"]):
            e = {k: v for k, v in e.items() if k not in ignore}
            if e.get("pfn") is not None:
                e["pfn"] = lab.label(e["pfn"], None, f"{step}:pagemap+{i}")
            entries.append(e)
        return {"pagemap": entries}
    if outcome.get("frame"):
        fr = dict(outcome["frame"])
        fr["pfn"] = lab.label(fr["pfn"], fr.get("kpf"), f"{step}:frame")
        if "kpf" in fr:
            fr["kpf"] = lab.kpf(fr["kpf"])
        return {"frame": fr}
    if "error" in outcome:
        # The exception's type is compared, not its wording.
        return {"error": outcome["error"]}
    return outcome


class Divergence:
    """The first point where two runs of a program disagree."""

    def __init__(self, index, field, a, b, rec_a, rec_b, names, program=None):
        self.index = index            # position in the observation lists
        self.field = field            # e.g. "outcome", "snapshot c a+0 frame", "missing"
        self.a, self.b = a, b
        self.rec_a, self.rec_b = rec_a, rec_b
        self.names = names
        self.program = program
        rec = rec_a or rec_b
        self.step = rec["step"] if rec else None
        self.op = rec["op"] if rec else None

    @property
    def key(self):
        """What kind of disagreement this is: the op and the compared field
        (without process, region and page), e.g. ("write", "snapshot.frame")."""
        kind = self.field.split()[0]
        if kind == "snapshot":
            kind += "." + self.field.split()[-1]
        elif kind == "outcome" and isinstance(self.a, dict) and isinstance(self.b, dict):
            kind += "." + "/".join(sorted(set(self.a) | set(self.b)))
        return (self.op, kind)

    def __str__(self):
        na, nb = self.names
        lines = [f"first divergence at step {self.step} ({self.op}), {self.field}:",
                 f"  {na:>7}: {_short(self.a)}",
                 f"  {nb:>7}: {_short(self.b)}"]
        if self.program is not None:
            lines.append("program:")
            lines.append(_indent(P.pretty(self.program), 2))
            lines.append("as JSON: " + P.dumps(self.program))
        return "\n".join(lines)

    __repr__ = __str__


def _short(v):
    return json.dumps(v, sort_keys=True)


def _indent(text, n):
    return "\n".join(" " * n + line for line in text.splitlines())


def compare(obs_a, obs_b, program=None, names=("host", "engine"), kpf_mask=COMPARED_KPF,
            ignore=DEFAULT_IGNORE):
    """None if the runs agree, else the first Divergence."""
    na = normalize(obs_a, kpf_mask, ignore)
    nb = normalize(obs_b, kpf_mask, ignore)
    for i in range(max(len(na), len(nb))):
        ra = na[i] if i < len(na) else None
        rb = nb[i] if i < len(nb) else None
        if ra is None or rb is None:
            return Divergence(i, "missing", ra and ra["step"], rb and rb["step"], ra, rb,
                              names, program)
        for key in ("step", "proc", "op", "child"):
            if ra.get(key) != rb.get(key):
                return Divergence(i, key, ra.get(key), rb.get(key), ra, rb, names, program)
        if ra["outcome"] != rb["outcome"]:
            return Divergence(i, "outcome", ra["outcome"], rb["outcome"], ra, rb, names,
                              program)
        d = _first_snapshot_difference(ra.get("snapshot"), rb.get("snapshot"))
        if d is not None:
            field, va, vb = d
            return Divergence(i, field, va, vb, ra, rb, names, program)
        ha, hb = ra.get("hugetlb") or {}, rb.get("hugetlb") or {}
        for key in ("pool", "usage"):
            if ha.get(key) != hb.get(key):
                return Divergence(i, f"hugetlb {key}", ha.get(key), hb.get(key), ra, rb, names,
                                  program)
    return None


def _writeback_lag(ea, eb):
    """The first side (the host) still has an exclusive, mapped anon page in
    the swapcache that the second has dropped: the folio's swap writeback
    was still running when the write fault reused it, so folio_free_swap()
    could not free it - a matter of the host's timing (seen under load), not
    of the rules. Everything else about the page must agree."""
    ka, kb = ea.get("kpf") or [], eb.get("kpf") or []
    return ("swapcache" in ka and "swapcache" not in kb and "anon" in ka and "x" in ea.get("pm", "")
            and [k for k in ka if k != "swapcache"] == kb
            and all(ea.get(k) == eb.get(k) for k in ("pm", "frame", "kpagecount", "swap")))


def _first_snapshot_difference(sa, sb):
    if sa is None or sb is None:
        return None if sa is sb else ("snapshot presence", sa is not None, sb is not None)
    if list(sa) != list(sb):
        return ("snapshot processes", list(sa), list(sb))
    for pname in sa:
        if list(sa[pname]) != list(sb[pname]):
            return (f"snapshot {pname} regions", list(sa[pname]), list(sb[pname]))
        for rname in sa[pname]:
            pa, pb = sa[pname][rname], sb[pname][rname]
            na, nb = (sum(e.get("n", 1) for e in p) for p in (pa, pb))
            if na != nb:
                return (f"snapshot {pname} {rname} pages", na, nb)
            if pa == pb:
                continue
            for i, ea, eb in _page_pairs(pa, pb):
                if ea == eb or _writeback_lag(ea, eb):
                    continue
                for key in ("pm", "frame", "kpagecount", "kpf", "swap"):
                    if ea.get(key) != eb.get(key):
                        return (f"snapshot {pname} {rname}+{i} {key}", ea, eb)
    return None


def _page_pairs(pa, pb):
    """(page offset, state a, state b) over two run-length encoded page
    lists of the same length, one pair per stretch where neither changes."""
    ia = ib = 0
    left_a, left_b = pa[0].get("n", 1), pb[0].get("n", 1)
    off = 0
    strip = lambda e: {k: v for k, v in e.items() if k != "n"}    # noqa: E731
    while ia < len(pa) and ib < len(pb):
        yield off, strip(pa[ia]), strip(pb[ib])
        step = min(left_a, left_b)
        off += step
        left_a -= step
        left_b -= step
        if not left_a:
            ia += 1
            left_a = pa[ia].get("n", 1) if ia < len(pa) else 0
        if not left_b:
            ib += 1
            left_b = pb[ib].get("n", 1) if ib < len(pb) else 0
