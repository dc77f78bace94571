"""Transparent huge pages: the sysfs knobs of one Machine
(/sys/kernel/mm/transparent_hugepage). The rules live in the core
(core/huge.pxi); this is the user's view of its settings."""
from __future__ import annotations

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


class ThpSettings:
    """enabled (never / madvise / always), defrag, use_zero_page and
    shmem_enabled, as the sysfs files spell them. Debian's defaults:
    enabled=madvise, defrag=madvise, use_zero_page=1, shmem_enabled=never.

    With enabled=madvise an anonymous private range given MADV_HUGEPAGE gets
    a PMD-mapped THP on its first fault, where an aligned 2 MiB of it lies
    inside the VMA (a read fault maps the huge zero page if use_zero_page).
    defrag is recorded: allocation here never stalls or compacts, it gets
    an aligned free block or falls back to base pages."""

    __slots__ = ("_engine", "_shmem", "khugepaged")

    def __init__(self, engine, enabled: str = "madvise") -> None:
        self._engine = engine
        self._shmem = "never"
        self.enabled = enabled
        self.khugepaged = Khugepaged()

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

    @property
    def shmem_enabled(self) -> str:
        return self._shmem

    @shmem_enabled.setter
    def shmem_enabled(self, v: str) -> None:
        if v not in _SHMEM:
            raise ValueError(f"THP shmem_enabled must be one of {', '.join(_SHMEM)}, not {v!r}")
        if v not in ("never", "deny"):
            raise NotImplementedError("huge pages in shmem are not modelled yet: shmem_enabled stays never")
        self._shmem = v

    def __repr__(self) -> str:
        return (f"ThpSettings(enabled={self.enabled!r}, defrag={self.defrag!r}, "
                f"use_zero_page={self.use_zero_page}, shmem_enabled={self.shmem_enabled!r})")
