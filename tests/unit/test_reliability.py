"""Reliability: no crash, no corrupted state, no store that lands in another
process, whatever the arguments or the sequence. Each test is a defect that
was found (issue 9) and fails if its fix is undone."""
import errno
import os
import threading
import tracemalloc

import numpy as np
import pytest

import mmemu
from mmemu import (MAP_ANONYMOUS, MAP_FIXED, MAP_NORESERVE, MAP_POPULATE, MAP_PRIVATE, MAP_SHARED, MREMAP_FIXED,
                   MREMAP_MAYMOVE, PROT_NONE,
                   PAGE_SIZE as PAGE, PROT_READ, PROT_WRITE, FOLL_PIN, FOLL_WRITE, FOLL_LONGTERM)
from mmemu.vma import VM_ANON_VMA
from mmemu.uffd import UFFDIO_REGISTER_MODE_MISSING, UFFDIO_REGISTER_MODE_WP, UFFD_FEATURE_PAGEFAULT_FLAG_WP

RW = PROT_READ | PROT_WRITE
PRIV = MAP_PRIVATE | MAP_ANONYMOUS


def machine(**kw):
    kw.setdefault("memory", 32 << 20)
    return mmemu.Machine(**kw)


def errno_of(call, *args, **kw):
    with pytest.raises(OSError) as e:
        call(*args, **kw)
    return e.value.errno


# 1. A segfault from one public call.

def test_core_log_before_api_does_not_crash():
    m = machine()
    u = m.spawn().userfaultfd()
    count, log = u.core_log()            # before: read the resolver table out of bounds
    assert count == 0 and len(log) == 0
    for _ in range(40):                  # more contexts than the core's table has slots
        m.spawn().userfaultfd()
    assert u.core_log()[0] == 0


# 2. A store into a read-only mapping.

@pytest.mark.parametrize("kernel", ["5.7", "5.8", "6.18"])
def test_forced_cow_of_a_private_file_page_stays_read_only(kernel):
    """maybe_mkwrite(): a FOLL_FORCE write COWs a PROT_READ private file page
    into an anon copy that stays read-only; a later user store is SIGSEGV."""
    m = machine(kernel=kernel)
    p = m.spawn()
    fd = p.memfd_create("f")
    p.pwrite(fd, b"file", 0)
    a = p.mmap(0, PAGE, PROT_READ, MAP_PRIVATE, fd, 0)
    assert p.proc_mem_write(a, b"poke") == 4
    assert p.read(a, 4) == b"poke"
    assert p.pread(fd, 4, 0) == b"file"         # the cache is untouched
    assert not p.pagemap(a).file_shared and p.pagemap(a).exclusive
    with pytest.raises(mmemu.Sigsegv):
        p.write(a, b"x")
    assert p.read(a, 4) == b"poke"
    m.check()


# 3. A store lands in another process.

def _exit_and_reuse(m, p, addr):
    """The handler: the faulting process exits, a new one maps the same address."""
    def handler(uffd, msg):
        p.exit()
        q = m.spawn()
        q.mmap(addr, PAGE, RW, PRIV | MAP_FIXED)
        q.write(addr, b"\0" * 8)
        handler.q = q
    return handler


def test_served_write_never_lands_in_the_process_that_took_the_mm_id():
    m = machine()
    p = m.spawn()
    a = p.mmap(0x20000000, PAGE, RW, PRIV | MAP_FIXED)
    u = p.userfaultfd()
    u.api()
    u.register(a, PAGE, UFFDIO_REGISTER_MODE_MISSING)
    h = _exit_and_reuse(m, p, a)
    u.serve(h)
    with pytest.raises(OSError) as e:
        p.write(a, b"secret!!")
    assert e.value.errno == errno.ESRCH
    assert h.q.mm == p.mm                       # the id was indeed reused
    assert h.q.read(a, 8) == b"\0" * 8
    m.check()


def test_resumed_write_never_lands_in_the_process_that_took_the_mm_id():
    m = machine()
    p = m.spawn()
    a = p.mmap(0x20000000, PAGE, RW, PRIV | MAP_FIXED)
    u = p.userfaultfd()
    u.api()
    u.register(a, PAGE, UFFDIO_REGISTER_MODE_MISSING)
    with pytest.raises(mmemu.WouldBlock) as wb:
        p.write(a, b"secret!!")
    p.exit()                                    # wakes the waiter (userfaultfd_release)
    q = m.spawn()
    q.mmap(a, PAGE, RW, PRIV | MAP_FIXED)
    assert q.mm == p.mm
    with pytest.raises(OSError) as e:
        wb.value.thread.resume()
    assert e.value.errno == errno.ESRCH
    assert q.read(a, 8) == b"\0" * 8
    m.check()


# 4. State corrupted by hostile arguments: the call fails, nothing changed.

@pytest.fixture
def mapped():
    m = machine()
    p = m.spawn()
    a = p.mmap(0, 16 * PAGE, RW, PRIV)
    p.write(a, b"x" * (16 * PAGE))
    return m, p, a


def _layout(p):
    # (the anon_vma bit is the core's, read back lazily: not layout)
    return [(v.start, v.end, v.flags & ~VM_ANON_VMA) for v in p.vmas]


@pytest.mark.parametrize("call,args,err", [
    ("munmap", lambda a: (-4096, PAGE), errno.EINVAL),
    ("munmap", lambda a: (a + 8 * PAGE, -4096), errno.EINVAL),
    ("munmap", lambda a: (a, -6534), errno.EINVAL),
    ("munmap", lambda a: (a, 1 << 64), errno.EINVAL),
    ("mremap", lambda a: (a, 16 * PAGE, -(1 << 63), MREMAP_MAYMOVE), errno.ENOMEM),
    ("mremap", lambda a: (a, 16 * PAGE, -(1 << 63), MREMAP_MAYMOVE | MREMAP_FIXED, 1 << 40), errno.EINVAL),
    ("mremap", lambda a: (a, 16 * PAGE, PAGE, MREMAP_MAYMOVE | MREMAP_FIXED, 0), errno.EPERM),
    ("mremap", lambda a: (a, -PAGE, PAGE), errno.EFAULT),
    ("mprotect", lambda a: (a, -4096, PROT_READ), errno.ENOMEM),
    ("madvise", lambda a: (a, -4096, 4), errno.EINVAL),
    ("mmap", lambda a: (np.uint64(2**64 - 4096), 2 * PAGE, RW, PRIV | MAP_FIXED), errno.ENOMEM),
    ("mmap", lambda a: (2**100, PAGE, RW, PRIV), errno.EINVAL),
    ("mmap", lambda a: (0, -4096, RW, PRIV), errno.ENOMEM),
    ("mmap", lambda a: (a, -4096, RW, PRIV | MAP_FIXED), errno.ENOMEM),
])
def test_hostile_arguments_change_nothing(mapped, call, args, err):
    m, p, a = mapped
    before = _layout(p)
    assert errno_of(getattr(p, call), *args(a)) == err
    assert _layout(p) == before
    assert p.read(a, 16 * PAGE) == b"x" * (16 * PAGE)
    m.check()


def test_negative_file_offsets_are_einval(mapped):
    m, p, a = mapped
    fd = p.memfd_create("f")
    assert errno_of(p.pwrite_from, fd, a, 10, -1) == errno.EINVAL
    assert errno_of(p.pread_into, fd, a, 10, -4096) == errno.EINVAL
    assert errno_of(p.pwrite, fd, b"x", -1) == errno.EINVAL
    assert errno_of(p.pread, fd, 1, -1) == errno.EINVAL
    assert errno_of(p.pread_into, 10**30, a, 1, 0) == errno.EBADF
    m.check()


def test_sparse_write_at_the_top_of_the_page_cache_index():
    """A frame keeps its file index in 32 bits: the last page below 16 TiB
    is a valid sparse write that stays where it was written; past it the
    write is EFBIG instead of wrapping onto index 0."""
    m = machine()
    p = m.spawn()
    fd = p.memfd_create("f")
    p.pwrite(fd, b"head", 0)
    top = (1 << 32) * PAGE
    assert p.pwrite(fd, b"tail", top - PAGE) == 4
    assert p.pread(fd, 4, top - PAGE) == b"tail"
    assert p.pread(fd, 4, 0) == b"head"
    assert errno_of(p.pwrite, fd, b"x", top) == errno.EFBIG
    assert errno_of(p.pwrite_from, fd, 0x10000, 1, top) == errno.EFBIG
    assert errno_of(p.ftruncate, fd, top + 1) == errno.EFBIG
    assert errno_of(p.mmap, 0, 2 * PAGE, PROT_READ, MAP_SHARED, fd, top - PAGE) == errno.EOVERFLOW
    assert p.pread(fd, 4, 0) == b"head"
    m.check()


# 5. Invariants broken by legal sequences.

def test_fork_failing_part_way_still_flushes_what_it_write_protected():
    """dup_mmap() flushes the parent's TLB on its error path too: the VMAs
    copied before an early COW ran out of memory stay write-protected."""
    m = mmemu.Machine(kernel="6.18", memory=64 * PAGE)
    p = m.spawn()
    a = p.mmap(0x10000000, 2 * PAGE, RW, PRIV | MAP_FIXED)
    b = p.mmap(0x20000000, PAGE, RW, PRIV | MAP_FIXED)
    p.write(a, b"a" * 2 * PAGE)                  # cached writable in the TLB
    p.write(b, b"b")
    pin = p.pin_user_pages(b, 1, FOLL_WRITE | FOLL_LONGTERM)   # fork must copy it early
    fill = p.mmap(0x30000000, 64 * PAGE, RW, PRIV | MAP_FIXED)
    with pytest.raises(mmemu.OutOfMemory):
        p.touch(fill, 64, write=True)
    with pytest.raises(OSError) as e:
        p.fork()
    assert e.value.errno == errno.ENOMEM
    m.check()                                   # no TLB entry grants more than its pte
    p.write(a, b"A")                            # a write fault reuses the page
    assert p.read(a, 2) == b"Aa"
    pin.release()
    m.check()


@pytest.mark.parametrize("mode", [UFFDIO_REGISTER_MODE_MISSING, UFFDIO_REGISTER_MODE_WP])
@pytest.mark.parametrize("call", ["read", "write"])
def test_proc_mem_on_a_userfault_is_eio_without_a_message(mode, call):
    """access_remote_vm()'s GUP has no `locked`: handle_userfault() cannot
    wait, returns SIGBUS, and /proc/pid/mem fails with EIO; nothing is
    queued and no reference is left behind (seen on the 6.18 host)."""
    m = machine()
    p = m.spawn()
    a = p.mmap(0, PAGE, RW, PRIV)
    u = p.userfaultfd()
    u.api(UFFD_FEATURE_PAGEFAULT_FLAG_WP if mode == UFFDIO_REGISTER_MODE_WP else 0)
    if mode == UFFDIO_REGISTER_MODE_WP:
        p.write(a, b"old")
    u.register(a, PAGE, mode)
    if mode == UFFDIO_REGISTER_MODE_WP:
        u.writeprotect(a, PAGE, 1)
    with pytest.raises(OSError) as e:
        if call == "read" and mode == UFFDIO_REGISTER_MODE_MISSING:
            p.proc_mem_read(a, 4)
        else:
            p.proc_mem_write(a, b"new")
    assert e.value.errno == errno.EIO
    assert u.pending() == 0
    assert p.main.blocked is None
    m.check()


# 7. Errors of the wrong kind, and host allocations sized by the caller.

def test_errors_are_errno_or_type_errors(mapped):
    m, p, a = mapped
    assert errno_of(p.memfd_create, None) == errno.EFAULT
    with pytest.raises(TypeError):
        p.memfd_create(42)
    u = p.userfaultfd()
    u.api()
    with pytest.raises(ValueError, match="resolver must be one of"):
        u.serve_core("bogus")
    pin = p.get_user_pages(a, 1)
    with pytest.raises(TypeError):
        pin.read(float("nan"), 1)
    pin.release()
    with pytest.raises(TypeError):
        p.mmap(0.5, PAGE, RW, PRIV)
    assert errno_of(p.madvise, a, PAGE, 1 << 40) == errno.EINVAL
    assert errno_of(p.get_user_pages, 2**70, 1) == errno.EFAULT
    m.check()


def test_machine_arguments_name_the_parameter():
    with pytest.raises(ValueError, match="memory"):
        mmemu.Machine(memory=2**50)
    with pytest.raises(TypeError, match="memory"):
        mmemu.Machine(memory="1G")
    with pytest.raises(ValueError, match="ncpus"):
        mmemu.Machine(ncpus=0)


def test_long_accesses_stop_at_the_first_hole(mapped):
    """A read, vmsplice or GUP of 2^60 bytes over one mapping takes no host
    memory beyond the mapping: the access faults where it ends."""
    m, p, a = mapped
    with pytest.raises(mmemu.Sigsegv) as e:
        p.read(a, 1 << 60)
    assert e.value.addr == a + 16 * PAGE
    assert errno_of(p.vmsplice, a, 1 << 60) == errno.EFAULT      # access_ok() of the iovec
    pipe = p.vmsplice(a, mmemu.TASK_SIZE - a)
    assert pipe.nbytes == 16 * PAGE
    pipe.close()
    pin = p.get_user_pages(a, 1 << 40)
    assert pin.npages == 16
    pin.release()
    assert errno_of(p.populate, a, 1 << 46) == errno.ENOMEM
    assert len(p.pagemap_range(a, 1 << 62)) == 1 << 20     # not 2^35 entries of zeros
    assert len(p.versions(a, 1 << 62)) == 1 << 20
    assert len(p.pagemap_range(a, 123)) == 123
    m.check()


def test_closed_userfaultfd_contexts_are_freed():
    m = machine()
    p = m.spawn()
    for _ in range(1000):
        u = p.userfaultfd()
        u.api()
        u.close()
    assert len(m._uffds) <= 1
    a = p.mmap(0, PAGE, RW, PRIV)
    u = p.userfaultfd()
    u.api()
    u.register(a, PAGE, UFFDIO_REGISTER_MODE_MISSING)
    u.serve_core("zeropage")
    assert p.read(a, 1) == b"\0" and u.core_log()[0] == 1
    m.check()


def test_many_memfds_then_enfile():
    """Mapping ids are 16 bits: the 65,536th live file is ENFILE. Creating
    them is linear (a free-id hint, not a rescan per call)."""
    m = machine()
    p = m.spawn()
    fds = [p.memfd_create("f") for _ in range(65535)]
    assert errno_of(p.memfd_create, "f") == errno.ENFILE
    p.close(fds[100])
    assert p.memfd_create("g") == fds[100]
    m.check()


# 6. Host threads sharing a machine.

def test_a_second_host_thread_waits_while_the_first_is_inside_the_machine():
    """Calls serialise on the machine's lock: while one host thread is
    inside a call (here: its uffd handler runs inside a write, between two
    core steps), another thread's call on the same machine does not run."""
    m = machine()
    p = m.spawn()
    q = m.spawn()
    a = p.mmap(0, PAGE, RW, PRIV)
    b = q.mmap(0, PAGE, RW, PRIV)
    u = p.userfaultfd()
    u.api()
    u.register(a, PAGE, UFFDIO_REGISTER_MODE_MISSING)
    other_done = threading.Event()
    seen_inside = []

    def other():
        q.write(b, b"other")
        other_done.set()

    def handler(uffd, msg):
        t = threading.Thread(target=other)
        t.start()
        seen_inside.append(other_done.wait(0.3))     # must not complete meanwhile
        uffd.zeropage(msg.address, PAGE)
        handler.t = t

    u.serve(handler)
    p.write(a, b"mine")
    handler.t.join(10)
    assert seen_inside == [False]
    assert other_done.is_set() and q.read(b, 5) == b"other"
    m.check()


def test_two_host_threads_hammering_one_machine():
    m = machine(memory=64 << 20)
    procs = [m.spawn() for _ in range(2)]
    errors = []

    def work(p, seed):
        rng = np.random.default_rng(seed)
        try:
            a = p.mmap(0, 64 * PAGE, RW, PRIV)
            for i in range(400):
                k = int(rng.integers(0, 5))
                if k == 0:
                    p.touch(a, 64, write=True)
                elif k == 1:
                    p.madvise(a, 64 * PAGE, 4)             # MADV_DONTNEED
                elif k == 2:
                    p.write(a + int(rng.integers(0, 63)) * PAGE, b"y" * PAGE)
                elif k == 3:
                    c = p.fork()
                    c.exit()
                else:
                    p.get_user_pages(a, 8).release()
        except BaseException as e:          # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(p, i)) for i, p in enumerate(procs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    m.check()


@pytest.mark.parametrize("prot,flags", [(PROT_NONE, MAP_SHARED), (PROT_READ, MAP_SHARED),
                                         (PROT_READ, MAP_PRIVATE)])
def test_kernel_mode_copy_into_memory_it_may_not_write_is_efault(prot, flags):
    """access_error() checks every CPU access to a user address, a
    kernel-mode copy_to_user included (found by the random runner: a read()
    into a PROT_NONE shared mapping installed a writable pte)."""
    m = machine()
    p = m.spawn()
    fd = p.memfd_create("f")
    p.pwrite(fd, b"data" * 1024, 0)
    a = p.mmap(0, 2 * PAGE, prot, flags, fd, 0)
    assert errno_of(p.pread_into, fd, a, 100, 0) == errno.EFAULT
    if prot & PROT_READ:
        assert p.read(a, 4) == b"data"
    m.check()


@pytest.mark.parametrize("corrupt", ["end", "flags", "start>=end", "extra"])
def test_check_sees_python_and_core_vma_tables_differ(corrupt):
    """check() knows the invariants the reliability issue found broken: a VMA
    with end <= start, and Python's VMA list differing from the core's."""
    m = machine()
    p = m.spawn()
    a = p.mmap(0, 4 * PAGE, RW, PRIV)
    p.mmap(a + 8 * PAGE, PAGE, PROT_READ, PRIV | MAP_FIXED)
    m.check()
    v = list(p.vmas)[0]
    if corrupt == "end":
        v.end += PAGE
    elif corrupt == "flags":
        v.flags ^= PROT_WRITE
    elif corrupt == "start>=end":
        v.end = v.start
    else:
        from mmemu.vma import Vma
        p.vmas.insert(Vma(a + 20 * PAGE, a + 21 * PAGE, v.flags))
    with pytest.raises(mmemu.InvariantError):
        m.check()


def test_page_tables_take_frames_and_a_small_machine_still_works():
    """Page-table pages are RAM (they come from the page allocator): a 16-page
    machine maps and touches its pages, the tables' frames are counted, and
    running out is OutOfMemory, never a host allocation sized by the caller
    (before: 1 byte read per 2 MiB over 1 TiB cost 783 MiB of host memory)."""
    m = mmemu.Machine(memory=16 * PAGE)
    p = m.spawn()
    a = p.mmap(0, 8 * PAGE, RW, PRIV)
    assert p.touch(a, 8, write=True) == 8
    use = m.memory_usage()
    assert use["pgtable_pages"] == 4                  # pgd, pud, pmd, pte page
    assert m._engine.nr_free == 16 - 1 - 8           # frames: zero page + 8 data; tables charged apart
    m.check()
    big = p.mmap(0, 1 << 40, PROT_READ, PRIV | MAP_NORESERVE)
    with pytest.raises(mmemu.OutOfMemory):
        for i in range(0, 1 << 40, 2 << 20):          # one new pte page per 2 MiB
            p.read(big + i, 1)
    assert m.memory_usage()["pgtable_pages"] <= 16
    m.check()


@pytest.mark.parametrize("call", ["read", "vmsplice"])
def test_a_handler_that_wakes_without_resolving_ends_in_deadlock_not_a_hang(call):
    """Unregister-and-register wakes the MISSING waiter without resolving the
    fault: the access faults again at once, forever (found by the fuzzer as
    a hang). The engine ends the spin as a Deadlock naming the fault."""
    m = machine()
    p = m.spawn()
    a = p.mmap(0, PAGE, RW, PRIV)
    u = p.userfaultfd()
    u.api()
    u.register(a, PAGE, UFFDIO_REGISTER_MODE_MISSING)

    def handler(uffd, msg):
        uffd.unregister(a, PAGE)
        uffd.register(a, PAGE, UFFDIO_REGISTER_MODE_MISSING)
    u.serve(handler)
    with pytest.raises(mmemu.Deadlock, match="without resolving"):
        if call == "read":
            p.read(a, 1)
        else:
            p.vmsplice(a, 1)
    u.close()
    m.check()
    assert p.read(a, 1) == b"\0"


# Fuzz findings on the final code (tests.robust.run, 10^6 calls).

def test_a_machine_too_large_for_the_host_is_a_value_error_naming_it():
    """Machine(swap=16 TiB) needs ~80 GiB of swap table: a ValueError naming
    the sizes, not a bare MemoryError from the host."""
    need = (1 << 44) // PAGE * 19
    if os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") > need:
        pytest.skip("this host could hold a 16 TiB swap table")
    with pytest.raises(ValueError, match="swap=17592186044416"):
        mmemu.Machine(memory=64 * PAGE, swap=1 << 44)


def test_populate_of_a_huge_mapping_takes_no_host_memory_per_page():
    """MAP_POPULATE of 2^32 pages on a 64-page machine: the populate GUP
    keeps no page array (populate_vma_page_range passes none), so it runs
    until the machine's memory is gone (mmap ignores populate errors) with no
    host allocation sized by the mapping."""
    m = mmemu.Machine(memory=256 * PAGE)
    p = m.spawn()
    tracemalloc.start()
    try:
        a = p.mmap(0, 1 << 44, RW, PRIV | MAP_NORESERVE | MAP_POPULATE)
        peak = tracemalloc.get_traced_memory()[1]
    except mmemu.OutOfMemory:
        peak = tracemalloc.get_traced_memory()[1]
        a = None
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, peak                     # 2^32 pfns would be 32 GiB
    if a is not None:
        assert p.pagemap(a).present
    m.check()


def test_pread_builds_its_result_once_and_caps_the_count():
    """A sparse 8 MiB read allocates the 8 MiB result once (not a buffer plus
    a copy); a count beyond MAX_RW_COUNT is cut to it (rw_verify_area)."""
    from mmemu import args as A
    assert A.rw_count(1 << 40, "pread") == A.MAX_RW_COUNT == 0x7FFFF000
    assert errno_of(A.rw_count, 1 << 63, "pread") == errno.EINVAL
    m = machine()
    p = m.spawn()
    fd = p.memfd_create("f")
    p.ftruncate(fd, 8 << 20)
    tracemalloc.start()
    try:
        data = p.pread(fd, 1 << 62, 0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert data == bytes(8 << 20)
    assert peak < (8 << 20) * 3 // 2, peak
