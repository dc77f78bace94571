"""The VM oracle's parts that need no QEMU: the wire (values, references,
exceptions), package resolution, the initramfs archive, module ordering and
the kernel's decompression. tests/host/test_vm.py boots real guests."""
import errno
import lzma
import os
import shutil
import subprocess

import pytest

from mmemu.errors import Sigsegv, WouldBlock
from mmemu.host import vmimage
from mmemu.host import vmwire as W
from mmemu.uffd import UffdError


class Obj:
    tid = 7


def _roundtrip(value, table=None):
    table = table or W.Table()
    by_ref = lambda o: table.ref(o) if isinstance(o, Obj) else None   # noqa: E731
    import pickle
    wire = pickle.loads(pickle.dumps(W.encode(value, by_ref)))
    return W.decode(wire, lambda r: table.get(r.id)), wire


def test_values_cross_by_value_and_objects_by_reference():
    o = Obj()
    back, wire = _roundtrip({"a": [1, b"x", (o, None)], "b": o})
    assert isinstance(wire["b"], W.Ref) and wire["a"][2][0].id == wire["b"].id
    assert back["b"] is o and back["a"][2][0] is o and back["a"][:2] == [1, b"x"]


def test_an_oserror_keeps_its_errno_and_class():
    back, _ = _roundtrip(OSError(errno.EINVAL, "munmap: Invalid argument"))
    assert type(back) is OSError and back.errno == errno.EINVAL
    back, _ = _roundtrip(OSError(errno.ENOENT, "x"))
    assert isinstance(back, FileNotFoundError) and back.errno == errno.ENOENT


def test_exceptions_whose_init_differs_from_their_args_are_rebuilt_from_state():
    back, _ = _roundtrip(Sigsegv(0x1000, 2, "guard"))
    assert type(back) is Sigsegv and (back.addr, back.si_code, back.detail) == (0x1000, 2, "guard")
    assert str(back) == str(Sigsegv(0x1000, 2, "guard"))
    e = UffdError(errno.EEXIST, "UFFDIO_COPY", -errno.EEXIST, "exists")
    back, _ = _roundtrip(e)
    assert type(back) is UffdError and back.errno == errno.EEXIST and back.result == e.result


def test_an_exception_holding_objects_carries_references():
    o = Obj()
    exc = WouldBlock(o, None, None)
    table = W.Table()
    back, _ = _roundtrip(exc, table)
    assert type(back) is WouldBlock and back.thread is o


def test_an_unknown_exception_class_becomes_a_wire_error():
    r = W.RemoteException("no.such.module", "Boom", ("x",), {})
    assert isinstance(W.exception_in(r, None), W.WireError)


def test_a_dropped_reference_is_refused():
    t = W.Table()
    ref = t.ref(Obj())
    t.drop(ref.id)
    with pytest.raises(W.WireError, match="no object"):
        t.get(ref.id)


def test_the_wire_frames_messages_and_rejects_an_out_of_step_length():
    r, w = os.pipe()
    try:
        W.send(w, ("call", 1, "read", (0x1000, 4), {}))
        assert W.recv(r) == ("call", 1, "read", (0x1000, 4), {})
        os.write(w, (1 << 40).to_bytes(8, "little"))
        with pytest.raises(W.WireError, match="out of step"):
            W.recv(r)
        os.close(w)
        w = None
        with pytest.raises(W.WireError, match="closed"):
            W.recv(r)
    finally:
        os.close(r)
        if w is not None:
            os.close(w)


PACKAGES = {"linux-image-6.1.0-50-amd64": "6.1.176-1", "linux-image-6.1.0-57-amd64": "6.1.192-3",
            "linux-image-6.12.118+deb12-amd64": "6.12.118-1~deb12u1",
            "linux-image-6.12.117+deb12-amd64": "6.12.117-1~deb12u1"}


def test_kernel_specs_resolve_to_pinned_packages_or_fail_clearly():
    assert vmimage.resolve("6.1", PACKAGES) == ("linux-image-6.1.0-50-amd64", "6.1.176-1")
    assert vmimage.resolve("6.12", PACKAGES)[1] == "6.12.118-1~deb12u1"
    assert vmimage.resolve("6.1.192", PACKAGES)[0] == "linux-image-6.1.0-57-amd64"
    assert vmimage.resolve("6.12.117-1~deb12u1", PACKAGES)[1] == "6.12.117-1~deb12u1"
    with pytest.raises(vmimage.VmUnavailable, match="no Debian kernel package for '6.6'.*6.1.176"):
        vmimage.resolve("6.6", PACKAGES)
    assert vmimage.upstream_of("6.12.118-1~deb12u1") == "6.12.118"


def test_modules_load_dependencies_first_and_builtins_are_left_out(tmp_path):
    d = tmp_path / "lib" / "modules" / "6.1.0" / "kernel"
    d.mkdir(parents=True)
    (d / "9p.ko").write_bytes(b"\0name=9p\0depends=9pnet,netfs\0")
    (d / "9pnet.ko").write_bytes(b"\0depends=\0")
    (d / "netfs.ko.xz").write_bytes(lzma.compress(b"\0depends=fscache\0", format=lzma.FORMAT_XZ))
    files = vmimage._module_files(str(tmp_path))
    order = [n for n, _b in vmimage._closure(files, ("9p", "virtio_console"))]
    assert order == ["9pnet", "netfs", "9p"]           # fscache, virtio_console: built in
    blobs = dict(vmimage._closure(files, ("netfs",)))
    assert blobs["netfs"] == b"\0depends=fscache\0"      # an .xz module is decompressed


@pytest.mark.skipif(shutil.which("cpio") is None, reason="cpio is not installed to read the archive back")
def test_the_initramfs_is_a_newc_archive_cpio_reads(tmp_path):
    out = tmp_path / "initrd.cpio"
    vmimage._cpio([("init", 0o100755, b"\x7fELF..."), ("a.ko", 0o100644, b"abc")], str(out))
    listing = subprocess.run(["cpio", "-itv"], stdin=open(out, "rb"), capture_output=True, text=True)
    assert listing.returncode == 0, listing.stderr
    names = [line.split()[-1] for line in listing.stdout.splitlines()]
    assert names == ["init", "a.ko"]
    assert listing.stdout.splitlines()[0].startswith("-rwxr-xr-x")


def test_an_xz_bzimage_is_decompressed_to_its_elf(tmp_path):
    elf = b"\x7fELF" + bytes(range(256)) * 64
    p = tmp_path / "vmlinuz"
    p.write_bytes(b"MZ" + b"\0" * 1000 + lzma.compress(elf, format=lzma.FORMAT_XZ) + b"trailer")
    assert vmimage._decompress_kernel(str(p)) == elf
    p.write_bytes(b"MZ no payload here")
    assert vmimage._decompress_kernel(str(p)) is None


def test_cli_refuses_a_bad_oracle_in_one_line(capsys):
    from mmemu.cli import main
    assert main(["diff", "--against", "qemu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "engine, host or vm:K" in err[0]
    assert main(["scenarios", "--on", "vm:6.1", "--kernel", "6.1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no --kernel" in err[0]
    assert main(["scenarios", "--on", "qemu", "--only", "S3"]) == 2
    assert "host or vm:K" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("apt-cache") is None, reason="no apt-cache to list kernel packages")
def test_vm_fetch_of_a_kernel_the_archive_lacks_is_one_clear_line(capsys):
    from mmemu.cli import main
    assert main(["vm", "fetch", "6.99"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mmemu vm: ")
    assert "6.99" in err[0] or "apt-get update" in err[0]     # apt without lists says so


def test_qemu_dies_with_a_killed_driver(tmp_path):
    """The guest's QEMU is started with _die_with_parent: a driver killed
    before its atexit leaves no QEMU behind. Shown with `sleep` for QEMU."""
    import signal
    import sys
    import time
    import mmemu
    pidfile = tmp_path / "pid"
    # The child imports the mmemu this test imported (cwd would shadow an
    # installed one with an unbuilt checkout).
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(mmemu.__file__)))
    driver = subprocess.Popen([sys.executable, "-c", f"""
import subprocess, time
from mmemu.host.vm import _die_with_parent
p = subprocess.Popen(["sleep", "60"], preexec_fn=_die_with_parent)
open({str(pidfile)!r}, "w").write(str(p.pid))
time.sleep(60)
"""], cwd=str(tmp_path), env=env)
    try:
        deadline = time.monotonic() + 20
        while not (pidfile.exists() and pidfile.read_text()):
            assert time.monotonic() < deadline, "the driver did not start its child"
            time.sleep(0.05)
        child = int(pidfile.read_text())
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        deadline = time.monotonic() + 10
        while True:
            try:
                os.kill(child, 0)
            except ProcessLookupError:
                break                     # gone (reaped by init)
            with open(f"/proc/{child}/stat") as f:
                if f.read().split(")")[1].split()[0] == "Z":
                    break                 # killed, not yet reaped
            assert time.monotonic() < deadline, "the child outlived its killed driver"
            time.sleep(0.05)
    finally:
        if driver.poll() is None:
            driver.kill()


def test_a_guest_with_impossible_settings_is_refused_before_anything_starts():
    from mmemu.host.vm import Guest
    with pytest.raises(ValueError, match="accel"):
        Guest("6.1", accel="hvf")
    with pytest.raises(ValueError, match="0 vCPUs"):
        Guest("6.1", cpus=0)
