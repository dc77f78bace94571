"""The bug index: what each tag of a scenario's `bug` field (B2, B21, ...)
means, when it came in and what fixed it.

One owner for the legend `mmemu scenarios` prints and `mmemu bugs` lists.
Rows follow semantics.md section 18. `fixes` names the commits the era table
(mmemu/eras.py CHANGES) keys the fix by; tests/unit/test_cli.py checks that
every tag a scenario uses has a row here, that every commit named in `fixes`
is in the era table, and that every Change marked "Bn fixed" is listed in Bn's
`fixes`.
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class Bug:
    tag: str
    what: str           # the observable misbehaviour, one line
    introduced: str     # version or commit; "always" when as old as the code
    fixed: str          # commit (version), or why there is no fix
    fixes: tuple = ()   # commits of mmemu.eras.CHANGES that fix it in the modelled range

    def line(self):
        return f"{self.tag:<4} {self.what}; introduced {self.introduced}; fixed {self.fixed}"

    def as_dict(self):
        return {"tag": self.tag, "what": self.what, "introduced": self.introduced,
                "fixed": self.fixed, "fixes": list(self.fixes)}


BUGS = (
    Bug("B1", "Dirty COW (CVE-2016-5195): a FOLL_FORCE write reaches the page cache "
              "behind a read-only private file mapping",
        "2.6.x", "19be0eaffa3a (4.9-rc2, 4.8.3), before the modelled range"),
    Bug("B2", "CVE-2020-29374: a child's read-only GUP reference (vmsplice) sees "
              "the parent's later writes after the child unmaps",
        "always", "17839856fd58 (5.8), for good by 09854ba94c6a (5.9)",
        ("17839856fd58", "09854ba94c6a")),
    Bug("B2a", "B2 through a PMD-mapped THP",
        "always", "3bff7e3f1f16 (5.18)", ("3bff7e3f1f16",)),
    Bug("B2b", "B2 through hugetlb",
        "always", "not fixed upstream (cow.c expects the failure)"),
    Bug("B3", "umapsort hang: a read GUP of a uffd-wp page takes a write fault "
              "that the monitor thread itself must resolve",
        "17839856fd58 (5.8)", "a308c71bf1e6 (5.9)", ("a308c71bf1e6",)),
    Bug("B4", "5.8's forced COW: a read GUP (O_DIRECT write, vmsplice) allocates "
              "or copies pages",
        "17839856fd58 (5.8)", "a308c71bf1e6 (5.9)", ("a308c71bf1e6",)),
    Bug("B5", "a read-only GUP pin stops being coherent with the mapping after a "
              "later write (shared, previously shared or exclusive page)",
        "always for shared pages, 5.9 for all", "a7f226604170 and the "
        "PageAnonExclusive series (5.19)", ("a7f226604170",)),
    Bug("B6", "fork shares a pinned page; the parent's next write copies it away "
              "from the pin",
        "always", "70e806e4e645 (5.9); hugetlb 4eae4efa2c29 (5.12)", ("70e806e4e645", "4eae4efa2c29")),
    Bug("B7", "a pinned exclusive page is copied on the first write after any "
              "write-protect (mprotect, clear_refs, uffd-wp)",
        "09854ba94c6a (5.9)", "6c287605fd56 PageAnonExclusive (5.19); "
        "9348b73c2e1b (5.11) mitigates clear_refs", ("6c287605fd56",)),
    Bug("B8", "O_DIRECT read into a page, a concurrent write and clear_refs: the "
              "read's data is lost",
        "5.9", "the PageAnonExclusive series (5.19)"),
    Bug("B9", "a pinned page swapped out and back in is copied on the next write",
        "5.9", "mitigated by feb889fb40fa (5.11); fixed by PageAnonExclusive (5.19)"),
    Bug("B10", "clear_refs leaves stale writable TLB entries: soft-dirty misses writes",
        "0758cd830494", "912efa17e512 (5.12-rc1)", ("912efa17e512",)),
    Bug("B11", "uffd-wp with a deferred TLB flush: a write through a stale entry is "
               "lost during COW",
        "292924b26024 (5.7), frequent from 5.9", "6ce64428d620 (5.12-rc3; 5.10.24)", ("6ce64428d620",)),
    Bug("B12", "without EVENT_FORK the child's ptes inherit uffd-wp bits",
        "b569a1760782 (5.7)", "8f34f1eac382 (5.14)", ("8f34f1eac382",)),
    Bug("B13", "with EVENT_FORK a pinned page copied early at fork loses uffd-wp in "
               "the child",
        "70e806e4e645 (5.9)", "8f34f1eac382 (5.14)", ("8f34f1eac382",)),
    Bug("B14", "fork copies a uffd-wp pte marker into a child VMA that is not "
               "uffd-wp (and WARNs)",
        "c56d1b62cce8 (5.19)", "49d6d7fb6313 'mm/uffd: fix pte marker when fork() without fork "
        "event' (6.2; 6.1.11)", ("49d6d7fb6313",)),
    Bug("B15", "shmem uffd-wp silently lost through mprotect, migration or NUMA hinting",
        "5.19", "51d3d5eb74ff 'mm/userfaultfd: enable writenotify while userfaultfd-wp is enabled "
        "for a VMA' (6.2; 6.1.8)", ("51d3d5eb74ff",)),
    Bug("B16", "CVE-2022-2590: a FOLL_FORCE write reaches the shmem page cache "
               "through a dirty read-only pte left by UFFDIO_CONTINUE",
        "about 5.16", "5535be309971 (6.0; 5.19.6)", ("5535be309971",)),
    Bug("B17", "a GUP-fast pin racing with fork misses the early COW",
        "5.9", "57efa1fe5957 (5.11)", ("57efa1fe5957",)),
    Bug("B18", "a concurrent MADV_DONTNEED returns before stale TLB entries are flushed",
        "old", "99baac21e458"),
    Bug("B19", "spurious COW of a fresh page (the per-CPU LRU batch's reference) "
               "or of a swapcache page",
        "09854ba94c6a (5.9)", "d4c470970d45 and 53a05ad9f21d (5.18)", ("d4c470970d45",)),
    Bug("B20", "a read-only long-term pin of the zero page or page cache in a COW "
               "mapping is not coherent",
        "always", "84209e87c696 (6.2)", ("84209e87c696",)),
    Bug("B21", "PAGEMAP_SCAN does not report empty slots or PMD holes as WRITTEN on "
               "every path",
        "12f6b01a0bcb (6.7) / 2bad466cc9d9 (6.4)", "07b4377bdbe7 and 40de8160ca7f (7.2; "
        "6.12.103, 6.18.44)", ("07b4377bdbe7",)),
    Bug("B22", "hugetlb fork corrupts migration and hwpoison entries when clearing uffd-wp",
        "bc70fbf269fd (5.19)", "83abe2fd5b3a (7.2; 6.1.183, 6.12.103, 6.18.44)", ("83abe2fd5b3a",)),
    Bug("B23", "write protection lost for shmem pages faulted in again during a hole "
               "punch (zap drops the marker)",
        "5.19", "never: the kernel's design, not a bug upstream"),
)

BUGS_BY_TAG = {b.tag: b for b in BUGS}


def bug_tags(text):
    """The tags a `bug` field names: "B2" -> ["B2"]; "B12, B13" -> both."""
    return [t.strip() for t in text.replace(";", ",").split(",") if t.strip()]
