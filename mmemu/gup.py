"""References taken by GUP and held outside page tables: Pin (FOLL_PIN or
FOLL_GET, as a device driver holds them) and Pipe (vmsplice's FOLL_GET refs)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    import numpy.typing as npt
    from typing_extensions import Buffer

    from .machine import Machine

import numpy as np

from . import args as A

from .constants import FOLL_PIN, FOLL_WRITE, GUP_PIN_COUNTING_BIAS, PAGE_SIZE
from .errors import EINVAL, oserror
from .serialise import serialised


@serialised
class Pin:
    """Pages referenced by get_user_pages / pin_user_pages.

    read/write act as a device would: on the referenced frames, whatever the
    page tables map now. release() drops the references (put_page or
    unpin_user_page)."""

    def __init__(self, machine: Machine, pfns: npt.NDArray[np.int64], gup_flags: int) -> None:
        self._machine = machine
        self._lock = machine._lock
        self.pfns = pfns
        self.gup_flags = gup_flags
        self.npages = len(pfns)
        self.released = False
        machine._holders.add(self)

    @property
    def refs_per_page(self) -> int:
        return GUP_PIN_COUNTING_BIAS if self.gup_flags & FOLL_PIN else 1

    def _span(self, offset, n):
        offset, n = A.size(offset, "pin", "offset"), A.size(n, "pin", "length")
        if self.released:
            raise ValueError("pin already released")
        if offset < 0 or n < 0 or offset + n > self.npages * PAGE_SIZE:
            raise ValueError("range outside the pinned pages")
        while n > 0:
            idx, off = divmod(offset, PAGE_SIZE)
            chunk = min(n, PAGE_SIZE - off)
            yield int(self.pfns[idx]), off, chunk
            offset += chunk
            n -= chunk

    def read(self, offset: int, n: int) -> bytes:
        eng = self._machine._engine
        return b"".join(eng.frame_read(pfn, off, k) for pfn, off, k in self._span(offset, n))

    def write(self, offset: int, data: Buffer) -> None:
        if not self.gup_flags & FOLL_WRITE:
            raise oserror(EINVAL, "pin write", "pages were not taken with FOLL_WRITE")
        data = bytes(data)
        done = 0
        for pfn, off, k in self._span(offset, len(data)):
            self._machine._engine.frame_write(pfn, off, data[done:done + k])
            done += k

    def release(self) -> None:
        if self.released:
            return
        self._machine._engine.put_pages(self.pfns, self.refs_per_page)
        self.released = True
        self._machine._holders.discard(self)

    def held_refs(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        return self.pfns, np.full(len(self.pfns), self.refs_per_page, np.int64)

    def _forget(self) -> None:
        """Hand the references to another holder (they are not dropped)."""
        self.released = True
        self._machine._holders.discard(self)

    def __enter__(self) -> Pin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@serialised
class Pipe:
    """A pipe filled by vmsplice: it holds a FOLL_GET reference per page and
    reads the pages' bytes when the reader gets to them."""

    def __init__(self, machine: Machine, pfns: Iterable[int], first_offset: int, nbytes: int) -> None:
        self._machine = machine
        self._lock = machine._lock
        self._bufs = []            # [pfn, offset in page, length], in order
        off, left = first_offset, nbytes
        for pfn in pfns:
            k = min(left, PAGE_SIZE - off)
            self._bufs.append([int(pfn), off, k])
            left -= k
            off = 0
        self.nbytes = nbytes
        machine._holders.add(self)

    def read(self, n: int) -> bytes:
        n = A.size(n, "pipe read", "count")
        out = []
        eng = self._machine._engine
        while n > 0 and self._bufs:
            buf = self._bufs[0]
            k = min(n, buf[2])
            out.append(eng.frame_read(buf[0], buf[1], k))
            buf[1] += k
            buf[2] -= k
            n -= k
            if buf[2] == 0:
                self._bufs.pop(0)
                eng.put_pages(np.array([buf[0]], np.int64), 1)
        if not self._bufs:
            self._machine._holders.discard(self)
        return b"".join(out)

    def close(self) -> None:
        if self._bufs:
            pfns = np.array([b[0] for b in self._bufs], np.int64)
            self._machine._engine.put_pages(pfns, 1)
            self._bufs = []
        self._machine._holders.discard(self)

    def held_refs(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        pfns = np.array([b[0] for b in self._bufs], np.int64)
        return pfns, np.ones(len(pfns), np.int64)
