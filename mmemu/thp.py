"""Transparent huge pages: the sysfs knobs of one Machine
(/sys/kernel/mm/transparent_hugepage). The rules live in the core
(core/huge.pxi); this is the user's view of its settings."""
from __future__ import annotations

_ENABLED = ("never", "madvise", "always")
_DEFRAG = ("always", "defer", "defer+madvise", "madvise", "never")
_SHMEM = ("always", "within_size", "advise", "never", "deny", "force")


class ThpSettings:
    """enabled (never / madvise / always), defrag, use_zero_page and
    shmem_enabled, as the sysfs files spell them. Debian's defaults:
    enabled=madvise, defrag=madvise, use_zero_page=1, shmem_enabled=never.

    With enabled=madvise an anonymous private range given MADV_HUGEPAGE gets
    a PMD-mapped THP on its first fault, where an aligned 2 MiB of it lies
    inside the VMA (a read fault maps the huge zero page if use_zero_page).
    defrag is recorded: allocation here never stalls or compacts, it gets
    an aligned free block or falls back to base pages."""

    __slots__ = ("_engine", "_shmem")

    def __init__(self, engine, enabled: str = "madvise") -> None:
        self._engine = engine
        self._shmem = "never"
        self.enabled = enabled

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
