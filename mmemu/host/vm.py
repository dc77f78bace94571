"""VmMachine: the host oracle's API on another real kernel, booted under QEMU.

A Guest is one QEMU machine running a Debian kernel package (prepared by
vmimage into a cache directory): the driver's root file system shared
read-only over 9p, a scratch disk for swap files, and one virtio-serial port
to the guest agent (vmguest), which runs a real HostMachine there. A guest
boots once per driver process and kernel, and every VmMachine of that
kernel reuses it (`guest(spec)`); it is powered off at interpreter exit.

KVM is used where a guest really boots with it; elsewhere (nested KVM that
opens but hangs, no /dev/kvm) it is TCG. The probe's answer is remembered
in the cache directory, per QEMU and host kernel.

VmMachine(kernel="6.1") has HostMachine's API: each object the guest hands
out (processes, uffds, pipes, pins, threads) is a Remote whose methods are
calls into the guest; a Python uffd handler given to serve() stays in the
driver and is called back. run_program() runs a whole mmemu.program in the
guest in one call, which is how `mmemu diff --against vm:6.1` drives it.
"""
from __future__ import annotations

import atexit
import functools
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import types
import weakref

from . import vmimage
from . import vmwire as W
from .vmimage import VmUnavailable

QEMU = "qemu-system-x86_64"
BOOT_TIMEOUT = 240.0        # TCG on a loaded 2-core machine: about 30 s when idle
KVM_PROBE_TIMEOUT = 30.0
CALL_TIMEOUT = 900.0        # one request (a whole program is one)
GUEST_SERVER_TIMEOUT = 120.0  # the guest HostMachine's per-reply deadline, under TCG
SCRATCH_BYTES = 1 << 30     # sparse ext4 disk for swap files
MEMORY_MB = 2048
# One vCPU: with two, whether MADV_PAGEOUT drops a MADV_FREE'd page depended on
# which CPU's LRU batch still held it (S6f failed 4 of 8 runs on 6.1.176 with
# two vCPUs, 0 of 8 with one), and a TCG guest boots faster on one.
CPUS = 1

__all__ = ["VmMachine", "Guest", "guest", "VmUnavailable", "Remote"]


def why_no_vm():
    """None if a guest can be started here, else the reason."""
    if shutil.which(QEMU) is None:
        return f"{QEMU} is not installed (apt-get install qemu-system-x86)"
    for tool in ("apt-get", "apt-cache", "dpkg-deb", "mkfs.ext4"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        return "no C compiler to build the guest's init (apt-get install gcc)"
    return None


class Guest:
    """One booted QEMU guest and its channel."""

    def __init__(self, spec="6.1", memory_mb=MEMORY_MB, cpus=CPUS, accel="auto",
                 boot_timeout=BOOT_TIMEOUT, progress=None):
        if accel not in ("auto", "kvm", "tcg"):
            raise ValueError(f"accel must be auto, kvm or tcg, not {accel!r}")
        if not 1 <= int(cpus) <= 64 or not 256 <= int(memory_mb) <= 1 << 20:
            raise ValueError(f"a guest of {cpus} vCPUs and {memory_mb} MiB cannot be booted")
        reason = why_no_vm()
        if reason:
            raise VmUnavailable(reason)
        say = progress or (lambda _t: None)
        self.dir = vmimage.prepare(spec, say)
        self.info = vmimage.info(self.dir)
        self.version = self.info["version"]
        self.table = W.Table()          # driver-side callables the guest may call
        self.remotes = weakref.WeakValueDictionary()
        self._dropped = []
        self._lock = threading.RLock()
        _remove_dead_workdirs()
        self._work = tempfile.mkdtemp(prefix=f"{WORK_PREFIX}{os.getpid()}-")
        self.proc = None
        self.sock = None
        self.closed = False
        self._classes = {}
        try:
            scratch = os.path.join(self._work, "scratch.img")
            with open(scratch, "wb") as f:
                f.truncate(SCRATCH_BYTES)
            vmimage.run_tool(["mkfs.ext4", "-q", "-F", "-E", "nodiscard", scratch],
                             "making the guest's scratch disk")
            t0 = time.monotonic()
            self.accel = None
            if accel == "auto":
                # KVM where a guest really boots with it: a booted probe is kept.
                if _kvm_probe(self, memory_mb, cpus, say):
                    self.accel = "kvm"
                accel = "tcg"
            if self.accel is None:
                self.accel = accel
                t0 = time.monotonic()
                say(f"booting {self.info['package']} ({self.version}) under {accel.upper()}")
                self._boot(accel, memory_mb, cpus, boot_timeout)
            self.boot_seconds = time.monotonic() - t0
        except BaseException:
            self.close()
            raise
        _live_guests.add(self)

    # --- boot ---

    def _qemu_argv(self, accel, memory_mb, cpus, sockpath, console):
        import mmemu
        root = os.path.dirname(os.path.dirname(os.path.abspath(mmemu.__file__)))
        kernel = os.path.join(self.dir, self.info.get("boot", "vmlinuz"))
        cmdline = ["console=ttyS0", "quiet", "panic=-1", f"MMEMU_PY={sys.executable}",
                   f"MMEMU_PATH={root}", "MMEMU_SCRATCH=/dev/vda"]
        for word in cmdline:
            if " " in word:
                raise VmUnavailable(f"a path with a space cannot cross the kernel command line: {word}")
        argv = [QEMU, "-accel", "tcg,thread=multi" if accel == "tcg" else "kvm",
                "-cpu", "max" if accel == "tcg" else "host,-arch-capabilities",
                "-smp", str(cpus), "-m", str(memory_mb),
                "-display", "none", "-monitor", "none", "-no-reboot", "-nic", "none",
                "-serial", f"file:{console}",
                "-kernel", kernel, "-initrd", os.path.join(self.dir, "initrd.cpio"),
                "-append", " ".join(cmdline),
                "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,"
                           "multidevs=remap",
                "-drive", f"file={os.path.join(self._work, 'scratch.img')},if=virtio,format=raw",
                "-device", "virtio-serial-pci",
                "-chardev", f"socket,id=ch0,path={sockpath},server=on,wait=off",
                "-device", "virtserialport,chardev=ch0,name=mmemu"]
        qboot = "/usr/share/qemu/qboot.rom"
        if os.path.exists(qboot):
            argv += ["-bios", qboot]     # a lighter firmware than SeaBIOS: boots sooner
        return argv

    def _start(self, accel, memory_mb, cpus, tag):
        sockpath = os.path.join(self._work, f"{tag}.sock")
        self.console = os.path.join(self._work, f"{tag}-console.log")
        argv = self._qemu_argv(accel, memory_mb, cpus, sockpath, self.console)
        self.qemu_log = os.path.join(self._work, f"{tag}-qemu.log")
        with open(self.qemu_log, "wb") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         preexec_fn=_die_with_parent)
        deadline = time.monotonic() + 10.0
        while True:
            if self.proc.poll() is not None:
                raise VmUnavailable(f"QEMU exited at once: {self._tail(self.qemu_log)}")
            try:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(sockpath)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                s.close()
                if time.monotonic() > deadline:
                    raise VmUnavailable("QEMU did not open its channel socket") from None
                time.sleep(0.02)
        self.sock = s

    def _boot(self, accel, memory_mb, cpus, timeout):
        self._start(accel, memory_mb, cpus, accel)
        try:
            hello = W.recv(self.sock.fileno(), self._waiter(timeout, "the guest's greeting"))
        except (TimeoutError, W.WireError) as e:
            text = self._tail(self.console)
            self._stop()
            raise VmUnavailable(f"the {self.info['package']} guest did not come up under "
                                f"{accel.upper()}: {e}; console: {text}") from None
        if hello[0] != "hello":
            raise VmUnavailable(f"the guest greeted with {hello!r}")
        self.release, self.proc_version = hello[1], hello[2]

    @staticmethod
    def _tail(path, n=6):
        try:
            with open(path, "rb") as f:
                lines = f.read().decode(errors="replace").strip().splitlines()
        except OSError:
            return "(none)"
        return " | ".join(line.strip() for line in lines[-n:]) or "(empty)"

    def _waiter(self, timeout, what):
        deadline = time.monotonic() + timeout

        def wait(fd):
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no answer to {what} within {timeout:g} s")
                if select.select([fd], [], [], min(left, 1.0))[0]:
                    return
                if self.proc is not None and self.proc.poll() is not None:
                    raise W.WireError(f"QEMU exited (status {self.proc.returncode}) during {what}")
        return wait

    # --- calls ---

    def request(self, *msg, timeout=CALL_TIMEOUT):
        """Send one request and serve callbacks until its answer."""
        with self._lock:
            if self.closed:
                raise VmUnavailable("the guest is shut down")
            fd = self.sock.fileno()
            if self._dropped:
                dropped, self._dropped = self._dropped, []
                self._exchange(fd, ("drop", dropped), timeout)
            return self._exchange(fd, msg, timeout)

    def _exchange(self, fd, msg, timeout):
        from .machine import HostError
        what = f"{msg[0]} {msg[2] if msg[0] == 'call' else ''}".strip()
        try:
            W.send(fd, W.encode(msg, self._by_ref))
            while True:
                reply = W.recv(fd, self._waiter(timeout, what))
                if reply[0] != "callback":
                    break
                self._run_callback(fd, reply)
        except (TimeoutError, W.WireError, OSError) as e:
            text = self._tail(self.console)
            self.close()
            raise HostError(f"the VM guest failed during {what}: {e}; console: {text}") from e
        tag = reply[0]
        if tag == "method":
            return _METHOD
        value = W.decode(reply[1], self._resolve)
        if tag == "raise":
            raise value
        return value

    def _run_callback(self, fd, msg):
        _tag, cid, args, kwargs = msg
        fn = self.table.get(cid)
        try:
            value = ("ok", W.encode(fn(*W.decode(args, self._resolve),
                                        **W.decode(kwargs, self._resolve)), self._by_ref))
        except BaseException as e:
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            value = ("raise", W.exception_out(e, self._by_ref))
        W.send(fd, value)

    def _by_ref(self, obj):
        if isinstance(obj, Remote):
            return W.Ref(object.__getattribute__(obj, "_oid"), "")
        if isinstance(obj, (types.FunctionType, types.MethodType, types.BuiltinFunctionType,
                            functools.partial)):
            return W.Callback(self.table.ref(obj).id)     # runs here, called back
        return None                                       # anything else goes by value

    def _resolve(self, r):
        if isinstance(r, W.Callback):
            return self.table.get(r.id)
        obj = self.remotes.get(r.id)
        if obj is None:
            obj = Remote(self, r.id, r.cls)
            self.remotes[r.id] = obj
        return obj

    def methods(self, oid, cls):
        names = self._classes.get(cls)
        if names is None:
            names = self._classes[cls] = frozenset(self.request("describe", oid))
        return names

    def func(self, where, *args, **kwargs):
        return self.request("func", where, args, kwargs)

    def _forget(self, oid):
        self._dropped.append(oid)

    # --- teardown ---

    def close(self):
        if self.closed:
            return
        self.closed = True
        _live_guests.discard(self)
        if self.sock is not None:
            try:
                with self._lock:
                    fd = self.sock.fileno()
                    W.send(fd, ("quit",))
                    W.recv(fd, self._waiter(20.0, "quit"))
            except Exception:
                pass
        self._stop()
        shutil.rmtree(self._work, ignore_errors=True)

    def _stop(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.wait(10.0)          # init powers off after the agent
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


_METHOD = object()
WORK_PREFIX = "mmemu-vm-"


def _die_with_parent():
    """In QEMU's child before exec: SIGKILL when the driver dies, so a killed
    driver (no atexit) leaves no guest running."""
    import ctypes
    import signal
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)        # PR_SET_PDEATHSIG


def _remove_dead_workdirs():
    """Work directories (channel socket, console log, scratch disk) of
    drivers that died without closing their guest."""
    base = tempfile.gettempdir()
    for name in os.listdir(base):
        if not name.startswith(WORK_PREFIX):
            continue
        pid = name[len(WORK_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(os.path.join(base, name), ignore_errors=True)
        except PermissionError:
            pass


class Remote:
    """An object of the guest (a HostProcess, HostUffd, ...): attribute reads
    and method calls go to the guest."""

    def __init__(self, guest, oid, cls):
        object.__setattr__(self, "_guest", guest)
        object.__setattr__(self, "_oid", oid)
        object.__setattr__(self, "_cls", cls)
        weakref.finalize(self, guest._forget, oid)

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        g = object.__getattribute__(self, "_guest")
        oid = object.__getattribute__(self, "_oid")
        if name in g.methods(oid, object.__getattribute__(self, "_cls")):
            def method(*args, **kwargs):
                return g.request("call", oid, name, args, kwargs)
            method.__name__ = name
            return method
        value = g.request("get", oid, name)
        if value is _METHOD:
            raise AttributeError(f"{name} is a method the guest did not describe")
        return value

    def __setattr__(self, name, value):
        g = object.__getattribute__(self, "_guest")
        g.request("set", object.__getattribute__(self, "_oid"), name, value)

    def __repr__(self):
        return (f"<remote {object.__getattribute__(self, '_cls')} "
                f"#{object.__getattribute__(self, '_oid')}>")


_live_guests = weakref.WeakSet()
_guests = {}
_guests_lock = threading.Lock()


def guest(spec="6.1", progress=None, **kw):
    """The guest of this driver process for spec, booted on first use."""
    key = vmimage.resolve(spec)
    with _guests_lock:
        g = _guests.get(key)
        if g is None or g.closed:
            g = _guests[key] = Guest(spec, progress=progress, **kw)
        return g


def _kvm_probe(g, memory_mb, cpus, say):
    """Boot g under KVM if a KVM guest reaches the agent here; False (g not
    booted) otherwise. A failure is remembered in the cache directory per
    QEMU, host kernel and package, so it costs its timeout once."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
        os.close(fd)
    except OSError:
        return False
    ver = subprocess.run([QEMU, "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    key = f"{ver} | {os.uname().release} | {g.info['package']}"
    path = os.path.join(vmimage.cache_root(), "kvm-probe.json")
    try:
        with open(path) as f:
            known = json.load(f)
    except (OSError, ValueError):
        known = {}
    if known.get(key) is False:
        return False
    say("trying KVM" if key in known else "probing whether a KVM guest boots here")
    try:
        g._boot("kvm", memory_mb, cpus, KVM_PROBE_TIMEOUT)
        ok = True
    except VmUnavailable:
        ok = False
    if known.get(key) != ok:
        known[key] = ok
        tmp = path + f".{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(known, f, indent=1)
        os.replace(tmp, path)
    return ok


class VmMachine:
    """HostMachine's API on a Debian kernel booted under QEMU.

    kernel: "6.1", "6.12" (vmimage.DEFAULTS), a Debian package version or an
    upstream point release the archive has. The remaining arguments are
    HostMachine's, passed to the guest's machine. `version` is the guest
    kernel's upstream version (e.g. "6.1.176"): the engine's
    Machine(kernel=version) is what it is compared with."""

    def __init__(self, kernel: str = "6.1", swap: int = 0, uffd: bool = False,
                 timeout: float = GUEST_SERVER_TIMEOUT, progress=None, **kw) -> None:
        self.guest = guest(kernel, progress=progress)
        self.version = self.guest.version
        self.kernel = self.guest.release
        remote = self.guest.request("new", dict(kernel="host", swap=swap, uffd=uffd,
                                                timeout=timeout, **kw))
        self._remote = remote
        self.closed = False

    def __getattr__(self, name):
        if name.startswith("__") or name in ("_remote", "guest"):
            raise AttributeError(name)
        return getattr(self._remote, name)

    def __repr__(self) -> str:
        return f"<VmMachine {self.kernel} ({self.version})>"

    def __enter__(self) -> VmMachine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run_program(self, program, **kw):
        """mmemu.program.run(program, this machine), in the guest in one call."""
        return self.guest.func("mmemu.program:run", program, self._remote, **kw)

    def close(self) -> None:
        if self.closed or self.guest.closed:
            self.closed = True
            return
        self.closed = True
        self._remote.close()


@atexit.register
def _close_all():
    for g in list(_live_guests):
        try:
            g.close()
        except Exception:
            pass
