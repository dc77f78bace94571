"""Transparent huge pages: the sysfs knobs of one Machine
(/sys/kernel/mm/transparent_hugepage). The rules live in the core
(core/huge.pxi); this is the user's view of its settings."""
from __future__ import annotations

import errno
import operator

_ENABLED = ("never", "madvise", "always")
_DEFRAG = ("always", "defer", "defer+madvise", "madvise", "never")
_SHMEM = ("always", "within_size", "advise", "never", "deny", "force")


class Khugepaged:
    """/sys/kernel/mm/transparent_hugepage/khugepaged: what one wake-up
    scans (pages_to_scan), the limits of a collapse (max_ptes_none,
    max_ptes_swap, max_ptes_shared; the kernel's defaults), and the counters
    pages_collapsed and full_scans. Machine.khugepaged_scan() runs it; where
    it stopped is kept for the next call, as khugepaged_scan does."""

    __slots__ = ("_pages_to_scan", "_max_ptes_none", "_max_ptes_swap", "_max_ptes_shared",
                 "pages_collapsed", "full_scans", "cursor")

    def __init__(self) -> None:
        self._pages_to_scan = 4096          # HPAGE_PMD_NR * 8
        self._max_ptes_none = 511           # HPAGE_PMD_NR - 1
        self._max_ptes_swap = 64            # HPAGE_PMD_NR / 8
        self._max_ptes_shared = 256         # HPAGE_PMD_NR / 2
        self.pages_collapsed = 0
        self.full_scans = 0
        self.cursor = (0, 0)                # (pid, address) the next scan starts at

    @staticmethod
    def _limit(name, v, lo, hi):
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise ValueError(f"khugepaged {name} must be an int in {lo}..{hi}, not {v!r}")
        return v

    pages_to_scan = property(lambda self: self._pages_to_scan,
                             lambda self, v: setattr(self, "_pages_to_scan", self._limit("pages_to_scan", v, 1, 1 << 31)))
    max_ptes_none = property(lambda self: self._max_ptes_none,
                             lambda self, v: setattr(self, "_max_ptes_none", self._limit("max_ptes_none", v, 0, 511)))
    max_ptes_swap = property(lambda self: self._max_ptes_swap,
                             lambda self, v: setattr(self, "_max_ptes_swap", self._limit("max_ptes_swap", v, 0, 511)))
    max_ptes_shared = property(lambda self: self._max_ptes_shared,
                               lambda self, v: setattr(self, "_max_ptes_shared", self._limit("max_ptes_shared", v, 0, 511)))

    def __repr__(self) -> str:
        return (f"Khugepaged(pages_to_scan={self.pages_to_scan}, max_ptes_none={self.max_ptes_none}, "
                f"max_ptes_swap={self.max_ptes_swap}, max_ptes_shared={self.max_ptes_shared}, "
                f"pages_collapsed={self.pages_collapsed}, full_scans={self.full_scans})")


_SIZE_ENABLED = ("always", "inherit", "madvise", "never")
_MTHP_ORDERS = range(2, 10)         # THP_ORDERS_ALL_ANON on x86-64: 16 KiB .. 2 MiB
_PAGE = 4096


class _SizeFiles:
    """The per-size files hugepages-<size>kB/<_FILE>, keyed by the folio size
    in bytes (16 KiB .. 2 MiB, powers of two): absent before the release
    that added them (FileNotFoundError, ENOENT, as opening the file would)."""

    __slots__ = ("_engine", "_present")
    _FILE = ""
    _SINCE = ""

    def __init__(self, engine, present: bool) -> None:
        self._engine = engine
        self._present = bool(present)

    @classmethod
    def _path(cls, size) -> str:
        kb = f"{size // 1024}" if size > 0 else "?"
        return f"/sys/kernel/mm/transparent_hugepage/hugepages-{kb}kB/{cls._FILE}"

    def _order(self, size) -> int:
        try:
            if isinstance(size, bool):
                raise TypeError
            size = operator.index(size)         # numpy integers too
        except TypeError:
            raise TypeError(f"an mTHP size is an int number of bytes, not {size!r}") from None
        order = (size // _PAGE).bit_length() - 1
        if not self._present:
            raise FileNotFoundError(errno.ENOENT, f"No such file or directory ({self._SINCE})", self._path(size))
        if size <= 0 or size % _PAGE or _PAGE << order != size or order not in _MTHP_ORDERS:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory (the sizes: "
                                    f"{', '.join(f'{k >> 10} KiB' for k in self.keys())})", self._path(size))
        return order

    def keys(self) -> list[int]:
        return [_PAGE << o for o in _MTHP_ORDERS] if self._present else []

    def __iter__(self):
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def __contains__(self, size) -> bool:
        return size in self.keys()

    def items(self) -> list[tuple[int, str]]:
        return [(k, self[k]) for k in self.keys()]      # type: ignore[index]  # each file class reads its own


class MthpSizes(_SizeFiles):
    """/sys/kernel/mm/transparent_hugepage/hugepages-<size>kB/enabled: one
    setting per anon folio size (multi-size THP, 19eaf44954df, 6.8), keyed
    by the size in bytes (16384 .. 2097152, powers of two): "always",
    "inherit" (follow the top-level enabled), "madvise" (in MADV_HUGEPAGE
    ranges) or "never". The kernel's defaults: "inherit" for the PMD size
    (2 MiB), "never" for the smaller ones, so nothing changes until a size
    is enabled. A write fault on an empty pte then maps the largest enabled
    folio whose aligned range lies inside the VMA and is still empty.

    Before 6.8 the directories do not exist: the mapping is empty and
    setting a size raises FileNotFoundError (ENOENT), as writing the file
    would."""

    __slots__ = ()
    _FILE = "enabled"
    _SINCE = "multi-size THP is 6.8+"

    def __getitem__(self, size) -> str:
        order = self._order(size)
        masks = self._engine.mthp_get()
        for name, mask in zip(("always", "madvise", "inherit"), masks):
            if mask >> order & 1:
                return name
        return "never"

    def __setitem__(self, size, value: str) -> None:
        order = self._order(size)
        if value not in _SIZE_ENABLED:
            raise ValueError(f"{self._path(size)}: must be one of {', '.join(_SIZE_ENABLED)}, not {value!r}")
        masks = [m & ~(1 << order) for m in self._engine.mthp_get()]
        if value != "never":
            masks[("always", "madvise", "inherit").index(value)] |= 1 << order
        self._engine.mthp_set(*masks)

    def stats(self, size) -> dict[str, int]:
        """hugepages-<size>kB/stats: anon_fault_alloc and anon_fault_fallback
        (the PMD size's are Machine.stats()' thp_fault_alloc / _fallback),
        swpout and swpout_fallback (6.10), swpin (6.12)."""
        order = self._order(size)
        if order == 9:
            raise ValueError("the PMD size's fault counters are Machine.stats()' thp_fault_alloc and "
                             "thp_fault_fallback")
        alloc, fallback = self._engine.mthp_stats(order)
        d = {"anon_fault_alloc": alloc, "anon_fault_fallback": fallback}
        swpout, swpout_fallback, swpin = self._engine.swap_stats(order)
        knobs = self._engine.knobs
        if knobs.get("swapout_large_ptes"):          # the files came with 845982eb264b's series (6.10)
            d.update(swpout=swpout, swpout_fallback=swpout_fallback)
        if knobs.get("swapin_large_sync"):           # ... and swpin with 242d12c98174 (6.12)
            d["swpin"] = swpin
        return d

    def __repr__(self) -> str:
        return "MthpSizes({" + ", ".join(f"{k}: {v!r}" for k, v in self.items()) + "})"


# shmem_enabled values -> the kernel's SHMEM_HUGE_* (mm/shmem.c).
_SHMEM_HUGE = {"never": 0, "always": 1, "within_size": 2, "advise": 3, "deny": -1, "force": -2}
# hugepages-<size>kB/shmem_enabled values (6.11) -> the core's codes (4: inherit).
_SHMEM_SIZE = {"never": 0, "always": 1, "within_size": 2, "advise": 3, "inherit": 4}


class ShmemSizes(_SizeFiles):
    """/sys/kernel/mm/transparent_hugepage/hugepages-<size>kB/shmem_enabled
    (4b98995530b7 sysfs, e7a2ab7b3bb5 allocation, 6.11): the huge orders
    of anon shmem (MAP_SHARED|MAP_ANONYMOUS), keyed by size in bytes:
    "always", "inherit" (follow the top-level shmem_enabled, as for the
    PMD size), "within_size" (once a folio of one such size would end
    inside i_size), "advise" (MADV_HUGEPAGE) or "never". The kernel's
    defaults: "inherit" for 2 MiB, "never" below. A fault then allocates
    the largest allowed folio whose aligned range the VMA can map and of
    which nothing is cached yet, mapped whole by ptes (finish_fault).
    memfd, write(2) and fallocate(2) keep to shmem_enabled's PMD size
    (shmem_allowable_huge_orders, 6.12). While shmem_enabled is "force",
    only the PMD size may be set to "inherit" (EINVAL). Before 6.11 the
    files do not exist (FileNotFoundError, ENOENT)."""

    __slots__ = ("_order1",)
    _FILE = "shmem_enabled"
    _SINCE = "per-size shmem_enabled is 6.11+"

    def __init__(self, engine, present: bool, order1: bool = False) -> None:
        super().__init__(engine, present)
        # 6.12 ("mm: tidy up shmem mTHP controls and stats"): a directory
        # per THP_ORDERS_ALL_FILE_DEFAULT order too, so hugepages-8kB has a
        # shmem_enabled (and no anon "enabled").
        self._order1 = bool(order1) and self._present

    def _order(self, size) -> int:
        if self._order1 and size == 2 * _PAGE:
            return 1
        return super()._order(size)

    def keys(self) -> list[int]:
        return ([2 * _PAGE] if self._order1 else []) + super().keys()

    def __getitem__(self, size) -> str:
        order = self._order(size)
        code = self._engine.shmem_thp_get()[1] if order == 9 else self._engine.shmem_mthp_get(order)
        return next(k for k, v in _SHMEM_SIZE.items() if v == code)

    def __setitem__(self, size, value: str) -> None:
        order = self._order(size)
        if value not in _SHMEM_SIZE:
            raise ValueError(f"hugepages-{size // 1024}kB/shmem_enabled: must be one of "
                             f"{', '.join(_SHMEM_SIZE)}, not {value!r}")
        huge, _ = self._engine.shmem_thp_get()
        if order != 9:
            if value == "inherit" and huge == _SHMEM_HUGE["force"]:
                # thpsize_shmem_enabled_store: a non-PMD size may not
                # override the huge= policy force stands for.
                raise OSError(errno.EINVAL, "Invalid argument (shmem_enabled is force)", self._path(size))
            self._engine.shmem_mthp_set(order, _SHMEM_SIZE[value])
            return
        self._engine.shmem_thp_set(huge, _SHMEM_SIZE[value])

    def stats(self, size) -> dict[str, int]:
        """hugepages-<size>kB/stats' shmem counters (66f44583f9b6, 6.11):
        shmem_alloc, shmem_fallback (the allocation of that size failed and
        a smaller one was tried) and shmem_fallback_charge (always 0: no
        memcg here). The PMD size counts too (besides thp_file_alloc)."""
        order = self._order(size)
        alloc, fallback, charge = self._engine.shmem_mthp_stats(order)
        return {"shmem_alloc": alloc, "shmem_fallback": fallback, "shmem_fallback_charge": charge}

    def __repr__(self) -> str:
        return "ShmemSizes({" + ", ".join(f"{k}: {v!r}" for k, v in self.items()) + "})"


class ThpSettings:
    """enabled (never / madvise / always), defrag, use_zero_page and
    shmem_enabled, as the sysfs files spell them. Debian's defaults:
    enabled=madvise, defrag=madvise, use_zero_page=1, shmem_enabled=never.

    With enabled=madvise an anonymous private range given MADV_HUGEPAGE gets
    a PMD-mapped THP on its first fault, where an aligned 2 MiB of it lies
    inside the VMA (a read fault maps the huge zero page if use_zero_page).
    defrag never stalls or compacts here: a fault gets an aligned free
    block or falls back to base pages. On a NUMA machine it decides where a
    THP may come from (vma_thp_gfp_mask): the local node only, unless the
    gfp may reclaim directly - defrag=always, or madvise / defer+madvise in
    a MADV_HUGEPAGE range - when other nodes are tried too.

    `sizes` (6.8+) holds the per-size settings of multi-size THP
    (hugepages-<size>kB/enabled): MthpSizes."""

    __slots__ = ("_engine", "khugepaged", "sizes", "shmem_sizes")

    def __init__(self, engine, enabled: str = "madvise", mthp: bool = False, shmem_mthp: bool = False,
                 shmem_file_orders: bool = False) -> None:
        self._engine = engine
        self.enabled = enabled
        self.khugepaged = Khugepaged()
        self.sizes = MthpSizes(engine, mthp)
        self.shmem_sizes = ShmemSizes(engine, shmem_mthp, shmem_file_orders)

    def _set(self, enabled=None, use_zero_page=None, defrag=None):
        e, z, d = self._engine.thp_get()
        self._engine.thp_set(e if enabled is None else enabled, z if use_zero_page is None else use_zero_page,
                             d if defrag is None else defrag)

    @property
    def enabled(self) -> str:
        return _ENABLED[self._engine.thp_get()[0]]

    @enabled.setter
    def enabled(self, v: str) -> None:
        if v not in _ENABLED:
            raise ValueError(f"THP enabled must be one of {', '.join(_ENABLED)}, not {v!r}")
        self._set(enabled=_ENABLED.index(v))

    @property
    def defrag(self) -> str:
        return _DEFRAG[self._engine.thp_get()[2]]

    @defrag.setter
    def defrag(self, v: str) -> None:
        if v not in _DEFRAG:
            raise ValueError(f"THP defrag must be one of {', '.join(_DEFRAG)}, not {v!r}")
        self._set(defrag=_DEFRAG.index(v))

    @property
    def use_zero_page(self) -> int:
        return int(self._engine.thp_get()[1])

    @use_zero_page.setter
    def use_zero_page(self, v: int) -> None:
        if v not in (0, 1) or isinstance(v, float):
            raise ValueError(f"THP use_zero_page must be 0 or 1, not {v!r}")
        self._set(use_zero_page=int(v))

    def pmd_allowed(self, hugepage: bool) -> bool:
        """Whether a private anon VMA may get PMD-sized THPs by the sysfs
        settings (thp_vma_allowable_order(PMD_ORDER)'s sysfs part):
        `hugepage` says whether it has MADV_HUGEPAGE. From 6.8 the 2 MiB
        size's own setting decides, "inherit" deferring to `enabled`."""
        always, madvise, inherit = self._engine.mthp_get()
        bit = 1 << 9
        enabled = self.enabled
        return bool(always & bit or (hugepage and madvise & bit)
                    or (inherit & bit and (enabled == "always" or (enabled == "madvise" and hugepage))))

    @property
    def shmem_enabled(self) -> str:
        huge = self._engine.shmem_thp_get()[0]
        return next(k for k, v in _SHMEM_HUGE.items() if v == huge)

    @shmem_enabled.setter
    def shmem_enabled(self, v: str) -> None:
        """shmem_enabled_store(): PMD-sized THPs for shmem (memfd, MAP_SHARED
        anon; shm_mnt's huge= follows it but for deny and force, which
        override every mount). Default never."""
        if v not in _SHMEM:
            raise ValueError(f"THP shmem_enabled must be one of {', '.join(_SHMEM)}, not {v!r}")
        huge, pmd = self._engine.shmem_thp_get()
        if v == "force" and self.shmem_sizes._present and (
                pmd != 4 or any(self._engine.shmem_mthp_get(o) == 4 for o in range(1, 9))):
            # 6.11+: force unless the inherit sizes are exactly the PMD's
            # would let mTHP settings override the huge= policy: refused.
            raise OSError(errno.EINVAL, "Invalid argument (force needs exactly hugepages-2048kB/shmem_enabled "
                                        "at inherit)", "/sys/kernel/mm/transparent_hugepage/shmem_enabled")
        self._engine.shmem_thp_set(_SHMEM_HUGE[v], pmd)

    def __repr__(self) -> str:
        return (f"ThpSettings(enabled={self.enabled!r}, defrag={self.defrag!r}, "
                f"use_zero_page={self.use_zero_page}, shmem_enabled={self.shmem_enabled!r})")
