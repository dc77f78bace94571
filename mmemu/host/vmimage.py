"""Kernels for the VM oracle: a Debian linux-image package, fetched and
prepared into a cache directory (nothing is installed into /boot).

`prepare(spec)` turns "6.1", "6.12", a Debian package version ("6.1.176-1",
"6.12.118-1~deb12u1") or an upstream point release ("6.12.118") into a
ready directory:

    vmlinuz       the package's kernel
    vmlinux       the same, decompressed: QEMU boots it directly (PVH), which
                  spares the guest decompressing it under TCG (seconds)
    config        its build configuration
    initrd.cpio   a newc archive: the static init (_vminit.c) and the few
                  modules needed to reach the driver's root over 9p and the
                  driver over virtio-serial, dependencies first
    info.json     package, Debian version, upstream version, modules

The package comes from the machine's apt sources (`apt-get download`, as
`mmemu vm fetch` does); a missing tool or package is a VmUnavailable whose
text says what to install or run.
"""
from __future__ import annotations

import json
import lzma
import os
import re
import shutil
import subprocess
import tempfile

# What the guest needs from modules (the rest of what it uses is built in on
# Debian's configs): 9p over virtio for the root, virtio-serial for the
# channel, virtio-blk + ext4 (and its crc32c) for the scratch disk that holds
# swap files.
WANTED = ("9p", "9pnet_virtio", "virtio_pci", "virtio_console", "virtio_blk", "ext4",
          "crc32c_generic")   # ext4 asks the crypto API for crc32c: a soft dependency
LINES = {"6.1": r"^linux-image-6\.1\.0-\d+-amd64$", "6.12": r"^linux-image-6\.12\.\d+\+deb\d+-amd64$"}
# What "6.1" and "6.12" mean: pinned Debian versions, so a run's oracle does
# not change under it when the archive moves on (any other version the
# archive has is named explicitly).
DEFAULTS = {"6.1": "6.1.176-1", "6.12": "6.12.118-1~deb12u1"}
INIT_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_vminit.c")


class VmUnavailable(Exception):
    """The VM oracle cannot be prepared or booted here; the text says why and
    what would fix it."""


def cache_root() -> str:
    base = os.environ.get("MMEMU_VM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "mmemu", "vm")
    return base


def run_tool(argv, what, **kw):
    """Run a tool; its failure (or absence) is a VmUnavailable naming it."""
    try:
        return subprocess.run(argv, check=True, capture_output=True, text=True, **kw)
    except FileNotFoundError:
        raise VmUnavailable(f"{what}: {argv[0]} is not installed") from None
    except subprocess.CalledProcessError as e:
        tail = (e.stderr or e.stdout or "").strip().splitlines()[-3:]
        raise VmUnavailable(f"{what}: {' '.join(argv)} failed: " + " | ".join(tail)) from None


def version_key(v):
    """Sort key of a Debian or upstream version string."""
    return [int(x) if x.isdigit() else x for x in re.split(r"[.+~-]", v)]


def available_packages():
    """{package: Debian version} of every amd64 linux-image package of the
    6.1 and 6.12 lines that apt knows."""
    out = run_tool(["apt-cache", "search", "--names-only", r"^linux-image-6\.1"],
               "listing kernel packages").stdout
    names = [line.split()[0] for line in out.splitlines()
             if any(re.match(p, line.split()[0]) for p in LINES.values())]
    if not names:
        raise VmUnavailable("apt knows no linux-image-6.1.0-*-amd64 or linux-image-6.12.*-amd64 "
                            "package: run `apt-get update` (Debian bookworm sources)")
    show = run_tool(["apt-cache", "show", "--no-all-versions"] + names, "reading kernel packages").stdout
    found = {}
    for block in show.split("\n\n"):
        pkg = re.search(r"^Package: (\S+)", block, re.M)
        ver = re.search(r"^Version: (\S+)", block, re.M)
        if pkg and ver:
            found[pkg.group(1)] = ver.group(1)
    return found


def upstream_of(debian_version: str) -> str:
    """"6.1.176-1" -> "6.1.176"; "6.12.118-1~deb12u1" -> "6.12.118"."""
    m = re.match(r"(\d+\.\d+(?:\.\d+)?)", debian_version)
    if not m:
        raise VmUnavailable(f"cannot read an upstream version from {debian_version!r}")
    return m.group(1)


def resolve(spec: str, packages=None):
    """(package, Debian version) for a spec: "6.1" or "6.12" (DEFAULTS), a
    Debian version, or an upstream point release (its newest Debian
    revision)."""
    packages = available_packages() if packages is None else packages
    spec = DEFAULTS.get(str(spec), str(spec))
    cands = [(p, v) for p, v in packages.items() if v == spec or upstream_of(v) == spec]
    if not cands:
        known = ", ".join(sorted({upstream_of(v) for v in packages.values()}, key=version_key))
        raise VmUnavailable(f"no Debian kernel package for {spec!r}; apt has: {known} "
                            "(6.1 and 6.12 name " + ", ".join(f"{v}" for v in DEFAULTS.values()) + ")")
    return max(cands, key=lambda pv: version_key(pv[1]))


def _modinfo(blob):
    deps = re.search(rb"(?:^|\0)depends=([^\0]*)", blob)
    return [d for d in (deps.group(1).decode().split(",") if deps else []) if d]


def _module_files(root):
    """{module name: path} of the package's modules (names use '_', as the
    kernel does)."""
    out = {}
    for dirpath, _dirs, files in os.walk(os.path.join(root, "lib", "modules")):
        for f in files:
            m = re.match(r"(.+)\.ko(\.xz)?$", f)
            if m:
                out[m.group(1).replace("-", "_")] = os.path.join(dirpath, f)
    return out


def _read_module(path):
    with open(path, "rb") as f:
        data = f.read()
    return lzma.decompress(data) if path.endswith(".xz") else data


def _closure(files, wanted):
    """The modules to load, dependencies before dependants; names built in
    (absent from the package) are left out."""
    order, seen = [], set()

    def visit(name):
        name = name.replace("-", "_")
        if name in seen or name not in files:
            return
        seen.add(name)
        blob = _read_module(files[name])
        for dep in _modinfo(blob):
            visit(dep)
        order.append((name, blob))
    for w in wanted:
        visit(w)
    return order


def _cpio(entries, path):
    """A newc cpio archive of (name, mode, data) entries (what the kernel's
    initramfs unpacker reads)."""
    def pad(n):
        return b"\0" * ((4 - n % 4) % 4)
    with open(path, "wb") as f:
        for ino, (name, mode, data) in enumerate(entries + [("TRAILER!!!", 0, b"")], 1):
            nb = name.encode() + b"\0"
            head = ("070701" + "".join(f"{x:08X}" for x in (
                ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(nb), 0))).encode()
            f.write(head + nb + pad(len(head) + len(nb)) + data + pad(len(data)))


def _decompress_kernel(bzimage):
    """The ELF vmlinux inside a bzImage (xz or zstd payload), or None where
    it cannot be had (the bzImage is then booted as it is)."""
    with open(bzimage, "rb") as f:
        data = f.read()
    at = data.find(b"\xfd7zXZ\x00")
    if at >= 0:
        try:
            out = lzma.LZMADecompressor().decompress(data[at:])
        except lzma.LZMAError:
            out = b""
    else:
        at = data.find(b"\x28\xb5\x2f\xfd")
        zstd = shutil.which("zstd")
        if at < 0 or zstd is None:
            return None
        p = subprocess.run([zstd, "-dcq"], input=data[at:], capture_output=True)
        out = p.stdout       # zstd reports the bzImage's trailing bytes; the frame is whole
    return out if out[:4] == b"\x7fELF" else None


def _build_init(dest):
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise VmUnavailable("building the guest's init needs a C compiler (apt-get install gcc)")
    run_tool([cc, "-static", "-O2", "-o", dest, INIT_SOURCE],
         "building the guest's init (needs libc6-dev for a static link)")
    with open(dest, "rb") as f:
        return f.read()


def prepare(spec: str, progress=None) -> str:
    """The cache directory of a ready kernel for spec; fetches and prepares
    it on first use. progress(text) is told each step."""
    say = progress or (lambda _t: None)
    pkg, dver = resolve(spec)
    d = os.path.join(cache_root(), f"{pkg}_{dver}")
    if os.path.exists(os.path.join(d, "info.json")):
        return d
    os.makedirs(cache_root(), exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_root()) as tmp:
        say(f"downloading {pkg} {dver}")
        run_tool(["apt-get", "download", f"{pkg}={dver}"], f"downloading {pkg}", cwd=tmp)
        debs = [f for f in os.listdir(tmp) if f.endswith(".deb")]
        if len(debs) != 1:
            raise VmUnavailable(f"apt-get download {pkg} left {debs}")
        say(f"extracting {debs[0]}")
        root = os.path.join(tmp, "x")
        run_tool(["dpkg-deb", "-x", os.path.join(tmp, debs[0]), root], "extracting the package")
        boot = os.path.join(root, "boot")
        vmlinuz = [f for f in os.listdir(boot) if f.startswith("vmlinuz-")]
        config = [f for f in os.listdir(boot) if f.startswith("config-")]
        if len(vmlinuz) != 1 or len(config) != 1:
            raise VmUnavailable(f"{pkg}: expected one vmlinuz and one config in /boot")
        say("building the initramfs")
        mods = _closure(_module_files(root), WANTED)
        out = os.path.join(tmp, "ready")
        os.makedirs(out)
        shutil.copy(os.path.join(boot, vmlinuz[0]), os.path.join(out, "vmlinuz"))
        shutil.copy(os.path.join(boot, config[0]), os.path.join(out, "config"))
        elf = _decompress_kernel(os.path.join(out, "vmlinuz"))
        if elf is not None:
            with open(os.path.join(out, "vmlinux"), "wb") as f:
                f.write(elf)
        init = _build_init(os.path.join(tmp, "init"))
        entries = [("init", 0o100755, init)]
        entries += [(f"{name}.ko", 0o100644, blob) for name, blob in mods]
        entries.append(("modules.load", 0o100644,
                        "".join(f"/{name}.ko\n" for name, _b in mods).encode()))
        _cpio(entries, os.path.join(out, "initrd.cpio"))
        with open(os.path.join(out, "info.json"), "w") as f:
            json.dump({"package": pkg, "debian_version": dver, "version": upstream_of(dver),
                       "release": vmlinuz[0][len("vmlinuz-"):],
                       "boot": "vmlinux" if elf is not None else "vmlinuz",
                       "modules": [n for n, _b in mods]}, f, indent=1)
        if os.path.exists(d):
            shutil.rmtree(d)
        os.replace(out, d)
    say(f"ready: {d}")
    return d


def info(d: str) -> dict:
    with open(os.path.join(d, "info.json")) as f:
        return json.load(f)
