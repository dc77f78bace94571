"""One PagemapEntry and one FrameInfo for engine and host, with one
vocabulary of flag names (kpageflags' KPF_* names). A failure means code
written against one machine reads the other wrongly (e.g. the zero page
named "zero" on one side and "zero_page" on the other)."""
import mmemu
import mmemu.host
from mmemu import constants as C
from mmemu.pageinfo import KPF_NAMES, FrameInfo, PagemapEntry

PAGE = C.PAGE_SIZE


def test_engine_and_host_share_the_classes():
    assert mmemu.PagemapEntry is mmemu.host.PagemapEntry is PagemapEntry
    assert mmemu.FrameInfo is mmemu.host.FrameInfo is FrameInfo


def test_engine_zero_page_flag_is_the_kpageflags_name():
    m = mmemu.Machine(kernel="6.18")
    p = m.spawn()
    a = p.mmap(0, PAGE, C.PROT_READ | C.PROT_WRITE, C.MAP_PRIVATE | C.MAP_ANONYMOUS)
    p.read(a, 1)
    e = p.pagemap(a)
    assert isinstance(e, PagemapEntry) and e.present
    info = m.frame(e.pfn)
    assert isinstance(info, FrameInfo)
    assert "zero_page" in info.flags and "zero" not in info.flags
    assert info.kpageflags >> C.KPF_ZERO_PAGE & 1
    p.write(a, b"x")
    info = m.frame(p.pagemap(a).pfn)
    assert {"anon", "anon_exclusive", "mmap"} <= info.flags
    assert info.refcount >= 1 and info.pincount == 0 and info.mapcount == info.kpagecount == 1
    # Every kpageflags name is a flag name; the engine's extras are not kpageflags names.
    assert {n for n in info.flags if n in KPF_NAMES} == \
        {n for n, b in KPF_NAMES.items() if info.kpageflags >> b & 1}


def test_pagemap_entry_decodes_raw():
    e = PagemapEntry(C.PM_PRESENT | C.PM_MMAP_EXCLUSIVE | 0x1234)
    assert e.present and e.exclusive and e.pfn == 0x1234 and not e.swapped
    s = PagemapEntry(C.PM_SWAP | (7 << 5) | 1)
    assert s.pfn is None and s.swap_type == 1 and s.swap_offset == 7
    assert PagemapEntry(5) == PagemapEntry(5) and PagemapEntry(0).pfn is None
