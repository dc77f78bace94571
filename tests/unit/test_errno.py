"""Errno of each syscall on bad input, as Linux returns it."""
import errno

import pytest

import mmemu
from mmemu import (MADV_DONTNEED, MADV_POPULATE_READ, MADV_POPULATE_WRITE, MADV_WIPEONFORK,
                   MAP_ANONYMOUS, MAP_FIXED, MAP_FIXED_NOREPLACE, MAP_LOCKED, MAP_PRIVATE,
                   PAGE_SIZE as PAGE, PROT_NONE, PROT_READ, PROT_WRITE, FOLL_WRITE, FOLL_LONGTERM)

RW = PROT_READ | PROT_WRITE
PRIV = MAP_PRIVATE | MAP_ANONYMOUS


@pytest.fixture
def p():
    return mmemu.Machine(memory=32 << 20).spawn()


def err(excinfo):
    return excinfo.value.errno


class TestMmap:
    def test_misaligned_offset(self, p):
        with pytest.raises(OSError) as e:
            p.mmap(0, PAGE, RW, PRIV, -1, 100)
        assert err(e) == errno.EINVAL

    def test_zero_length(self, p):
        with pytest.raises(OSError) as e:
            p.mmap(0, 0, RW, PRIV)
        assert err(e) == errno.EINVAL

    def test_no_sharing_type(self, p):
        with pytest.raises(OSError) as e:
            p.mmap(0, PAGE, RW, MAP_ANONYMOUS)
        assert err(e) == errno.EINVAL

    def test_length_overflow(self, p):
        with pytest.raises(OSError) as e:
            p.mmap(0, (1 << 64) - 1, RW, PRIV)
        assert err(e) == errno.ENOMEM

    def test_fixed_misaligned(self, p):
        with pytest.raises(OSError) as e:
            p.mmap(0x10000001, PAGE, RW, PRIV | MAP_FIXED)
        assert err(e) == errno.EINVAL

    def test_fixed_noreplace_in_use(self, p):
        a = p.mmap(0, 2 * PAGE, RW, PRIV)
        with pytest.raises(OSError) as e:
            p.mmap(a + PAGE, PAGE, RW, PRIV | MAP_FIXED_NOREPLACE)
        assert err(e) == errno.EEXIST

    def test_fixed_below_mmap_min_addr(self, p):
        with pytest.raises(OSError) as e:
            p.mmap(0x1000, PAGE, RW, PRIV | MAP_FIXED)
        assert err(e) == errno.EPERM

    def test_file_mapping_without_fd(self, p):
        with pytest.raises(OSError) as e:
            p.mmap(0, PAGE, RW, MAP_PRIVATE, -1, 0)
        assert err(e) == errno.EBADF

    def test_fixed_replaces_and_zaps(self, p):
        a = p.mmap(0, 2 * PAGE, RW, PRIV)
        p.write(a, b"x" * (2 * PAGE))
        assert p.mmap(a, PAGE, RW, PRIV | MAP_FIXED) == a
        assert p.read(a, 1) == b"\0" and p.read(a + PAGE, 1) == b"x"
        p.machine.check()


class TestMunmap:
    def test_misaligned(self, p):
        with pytest.raises(OSError) as e:
            p.munmap(0x10000001, PAGE)
        assert err(e) == errno.EINVAL

    def test_zero_length(self, p):
        a = p.mmap(0, PAGE, RW, PRIV)
        with pytest.raises(OSError) as e:
            p.munmap(a, 0)
        assert err(e) == errno.EINVAL

    def test_unmapped_is_fine(self, p):
        p.munmap(0x20000000, 16 * PAGE)

    def test_partial_unmap_splits(self, p):
        a = p.mmap(0, 3 * PAGE, RW, PRIV)
        p.write(a, b"a" * 3 * PAGE)
        p.munmap(a + PAGE, PAGE)
        assert p.read(a, 1) == b"a" and p.read(a + 2 * PAGE, 1) == b"a"
        with pytest.raises(mmemu.Sigsegv) as e:
            p.read(a + PAGE, 1)
        assert e.value.addr == a + PAGE and e.value.si_code == mmemu.SEGV_MAPERR
        p.machine.check()


class TestMprotect:
    def test_misaligned(self, p):
        with pytest.raises(OSError) as e:
            p.mprotect(0x10000001, PAGE, PROT_READ)
        assert err(e) == errno.EINVAL

    def test_bad_prot(self, p):
        a = p.mmap(0, PAGE, RW, PRIV)
        with pytest.raises(OSError) as e:
            p.mprotect(a, PAGE, 0x40)
        assert err(e) == errno.EINVAL

    def test_growsdown_on_plain_vma(self, p):
        a = p.mmap(0, PAGE, RW, PRIV)
        with pytest.raises(OSError) as e:
            p.mprotect(a, PAGE, PROT_READ | mmemu.PROT_GROWSDOWN)
        assert err(e) == errno.EINVAL

    def test_unmapped(self, p):
        with pytest.raises(OSError) as e:
            p.mprotect(0x20000000, PAGE, PROT_READ)
        assert err(e) == errno.ENOMEM

    def test_hole_applies_before_it(self, p):
        # do_mprotect_pkey changes the VMAs before the hole, then fails.
        a = p.mmap(0, 3 * PAGE, RW, PRIV)
        p.munmap(a + PAGE, PAGE)
        with pytest.raises(OSError) as e:
            p.mprotect(a, 3 * PAGE, PROT_READ)
        assert err(e) == errno.ENOMEM
        with pytest.raises(mmemu.Sigsegv):
            p.write(a, b"x")
        p.write(a + 2 * PAGE, b"x")

    def test_zero_length_is_noop(self, p):
        p.mprotect(0x20000000, 0, PROT_READ)

    def test_write_to_readonly_is_accerr(self, p):
        a = p.mmap(0, PAGE, PROT_READ, PRIV)
        assert p.read(a, 1) == b"\0"
        with pytest.raises(mmemu.Sigsegv) as e:
            p.write(a, b"x")
        assert e.value.si_code == mmemu.SEGV_ACCERR

    def test_prot_none_read_faults(self, p):
        a = p.mmap(0, PAGE, RW, PRIV)
        p.write(a, b"x")
        p.mprotect(a, PAGE, PROT_NONE)
        with pytest.raises(mmemu.Sigsegv):
            p.read(a, 1)
        p.mprotect(a, PAGE, PROT_READ)
        assert p.read(a, 1) == b"x"
        p.machine.check()


class TestMadvise:
    def test_misaligned(self, p):
        with pytest.raises(OSError) as e:
            p.madvise(0x10000001, PAGE, MADV_DONTNEED)
        assert err(e) == errno.EINVAL

    def test_bad_advice(self, p):
        a = p.mmap(0, PAGE, RW, PRIV)
        with pytest.raises(OSError) as e:
            p.madvise(a, PAGE, 99)
        assert err(e) == errno.EINVAL

    def test_hole_is_enomem_after_applying(self, p):
        a = p.mmap(0, 3 * PAGE, RW, PRIV)
        p.write(a, b"x" * 3 * PAGE)
        p.munmap(a + PAGE, PAGE)
        with pytest.raises(OSError) as e:
            p.madvise(a, 3 * PAGE, MADV_DONTNEED)
        assert err(e) == errno.ENOMEM
        assert p.read(a, 1) == b"\0" and p.read(a + 2 * PAGE, 1) == b"\0"

    def test_dontneed_locked(self, p):
        a = p.mmap(0, PAGE, RW, PRIV | MAP_LOCKED)
        with pytest.raises(OSError) as e:
            p.madvise(a, PAGE, MADV_DONTNEED)
        assert err(e) == errno.EINVAL

    def test_populate_unknown_before_5_14(self):
        p = mmemu.Machine(kernel="5.13", memory=32 << 20).spawn()
        a = p.mmap(0, PAGE, RW, PRIV)
        with pytest.raises(OSError) as e:
            p.madvise(a, PAGE, MADV_POPULATE_READ)
        assert err(e) == errno.EINVAL

    def test_populate_write_on_readonly(self, p):
        a = p.mmap(0, PAGE, PROT_READ, PRIV)
        with pytest.raises(OSError) as e:
            p.madvise(a, PAGE, MADV_POPULATE_WRITE)
        assert err(e) == errno.EINVAL

    def test_populate_hole(self, p):
        a = p.mmap(0, 2 * PAGE, RW, PRIV)
        p.munmap(a + PAGE, PAGE)
        with pytest.raises(OSError) as e:
            p.madvise(a, 2 * PAGE, MADV_POPULATE_READ)
        assert err(e) == errno.ENOMEM

    def test_populate_maps(self, p):
        a = p.mmap(0, 2 * PAGE, RW, PRIV)
        p.madvise(a, PAGE, MADV_POPULATE_READ)
        p.madvise(a + PAGE, PAGE, MADV_POPULATE_WRITE)
        z, w = p.pagemap(a), p.pagemap(a + PAGE)
        assert z.present and not z.exclusive        # the zero page
        assert w.present and w.exclusive and w.pfn != z.pfn
        assert p.rss_anon == PAGE

    def test_wipeonfork_needs_private_anon_only(self, p):
        a = p.mmap(0, PAGE, RW, PRIV)
        p.madvise(a, PAGE, MADV_WIPEONFORK)        # private anon: fine


class TestGup:
    def test_unmapped_is_efault(self, p):
        with pytest.raises(OSError) as e:
            p.pin_user_pages(0x20000000, 1, FOLL_LONGTERM)
        assert err(e) == errno.EFAULT

    def test_write_pin_of_readonly_without_force(self, p):
        a = p.mmap(0, PAGE, PROT_READ, PRIV)
        with pytest.raises(OSError) as e:
            p.pin_user_pages(a, 1, FOLL_WRITE)
        assert err(e) == errno.EFAULT

    def test_vmsplice_zero_length_is_zero(self, p):
        # Linux returns 0 for an empty iovec, whatever the address (host-checked).
        assert p.vmsplice(0, 0).nbytes == 0

    def test_vmsplice_unmapped(self, p):
        with pytest.raises(OSError) as e:
            p.vmsplice(0x20000000, PAGE)
        assert err(e) == errno.EFAULT

    def test_partial_gup_returns_what_it_got(self, p):
        a = p.mmap(0, 2 * PAGE, RW, PRIV)
        p.munmap(a + PAGE, PAGE)
        pin = p.pin_user_pages(a, 2, FOLL_WRITE)
        assert pin.npages == 1
        pin.release()
        p.machine.check()

    def test_get_and_pin_exclusive(self, p):
        a = p.mmap(0, PAGE, RW, PRIV)
        with pytest.raises(OSError) as e:
            p.pin_user_pages(a, 1, mmemu.FOLL_GET)
        assert err(e) == errno.EINVAL

    def test_proc_mem_can_write_prot_none(self, p):
        # FOLL_FORCE may write a private mapping without VM_WRITE (ptrace).
        a = p.mmap(0, PAGE, PROT_NONE, PRIV)
        assert p.proc_mem_write(a, b"dbg") == 3
        assert p.proc_mem_read(a, 3) == b"dbg"
        with pytest.raises(mmemu.Sigsegv):
            p.read(a, 1)
        p.machine.check()


def test_exited_process_is_esrch(p):
    a = p.mmap(0, PAGE, RW, PRIV)
    p.exit()
    with pytest.raises(OSError) as e:
        p.read(a, 1)
    assert err(e) == errno.ESRCH


def test_unknown_kernel_lists_choices():
    with pytest.raises(ValueError, match="5.7.*6.18"):
        mmemu.Machine(kernel="4.4")


def test_unknown_backport():
    with pytest.raises(ValueError, match="known commits"):
        mmemu.Machine(backports=["deadbeef"])
