"""What user space sees of a page: a /proc/pid/pagemap entry and a frame's
/proc/kpagecount and /proc/kpageflags. The engine (Process.pagemap,
Machine.frame) and the host oracle (HostProcess.pagemap, HostMachine.frame)
return these same classes, so results compare attribute by attribute.
"""
from . import constants as C

# kpageflags bit -> name: the KPF_* constant without its prefix, lower case
# (include/uapi/linux/kernel-page-flags.h): "anon", "zero_page", "swapcache" ...
KPF_NAMES = {name[4:].lower(): getattr(C, name) for name in C.__all__ if name.startswith("KPF_")}


class PagemapEntry:
    """One /proc/pid/pagemap entry (fs/proc/task_mmu.c, pagemap_pte_range),
    decoded from its raw 64-bit value. pfn is None unless present."""

    __slots__ = ("raw",)

    def __init__(self, raw):
        self.raw = int(raw)

    present = property(lambda self: bool(self.raw & C.PM_PRESENT))
    swapped = property(lambda self: bool(self.raw & C.PM_SWAP))
    file_shared = property(lambda self: bool(self.raw & C.PM_FILE))
    exclusive = property(lambda self: bool(self.raw & C.PM_MMAP_EXCLUSIVE))
    soft_dirty = property(lambda self: bool(self.raw & C.PM_SOFT_DIRTY))
    uffd_wp = property(lambda self: bool(self.raw & C.PM_UFFD_WP))
    guard = property(lambda self: bool(self.raw & C.PM_GUARD_REGION))

    @property
    def pfn(self):
        return self.raw & C.PM_PFRAME_MASK if self.present else None

    @property
    def swap_type(self):
        # pagemap_pte_range: frame = swp_type | swp_offset << MAX_SWAPFILES_SHIFT (5)
        return self.raw & 0x1F if self.swapped else None

    @property
    def swap_offset(self):
        return (self.raw & C.PM_PFRAME_MASK) >> 5 if self.swapped else None

    def __eq__(self, other):
        return isinstance(other, PagemapEntry) and other.raw == self.raw

    def __hash__(self):
        return hash(self.raw)

    def __repr__(self):
        bits = [n for n in ("present", "swapped", "file_shared", "exclusive", "soft_dirty",
                            "uffd_wp", "guard") if getattr(self, n)]
        where = f" pfn={self.pfn:#x}" if self.present else (
            f" swap={self.swap_type}:{self.swap_offset}" if self.swapped else "")
        return f"PagemapEntry({'|'.join(bits) or 'none'}{where}, raw={self.raw:#018x})"


class FrameInfo:
    """A page frame: kpagecount (mapcount as that file reports it) and
    kpageflags, with `flags` the names of the kpageflags bits set (KPF_NAMES:
    "anon", "zero_page", "swapcache", "lru" ...). The engine adds what no
    /proc file shows: refcount and pincount (None on the host), and in
    `flags` the page flags kpageflags has no bit for ("anon_exclusive",
    "lazyfree", "file", "reserved", and the emulator's "bytes")."""

    __slots__ = ("pfn", "refcount", "mapcount", "pincount", "kpagecount", "kpageflags", "flags")

    def __init__(self, pfn, kpagecount, kpageflags, refcount=None, pincount=None, extra=()):
        self.pfn = pfn
        self.refcount = refcount
        self.pincount = pincount
        self.kpagecount = self.mapcount = kpagecount
        self.kpageflags = kpageflags
        self.flags = frozenset(n for n, b in KPF_NAMES.items() if kpageflags >> b & 1) | frozenset(extra)

    def __eq__(self, other):
        return isinstance(other, FrameInfo) and all(
            getattr(self, k) == getattr(other, k) for k in self.__slots__)

    __hash__ = None

    def __repr__(self):
        counts = f"kpagecount={self.kpagecount}"
        if self.refcount is not None:
            counts += f", refcount={self.refcount}, pincount={self.pincount}"
        return f"FrameInfo(pfn={self.pfn:#x}, {counts}, flags={sorted(self.flags)})"
