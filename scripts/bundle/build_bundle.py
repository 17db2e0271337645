#!/usr/bin/env python3
"""Assembles crik's self-contained bundle, the directory that goes to /opt/crik in any image:
crik (a static binary), CRIU, and every shared library CRIU loads, with their own loader, so
that crik runs where the image has no libc (distroless, busybox), another one (musl: Alpine),
or an old one (glibc 2.31: no usable CRIU there).

    /opt/crik/
    ├── bin/crik        static: runs anywhere
    ├── bin/criu        CRIU >= 4.2, its ELF interpreter and RPATH set to /opt/crik/lib
    ├── lib/            every library CRIU loads (and theirs), and the loader itself
    └── CONTENTS        each file, its size, and the Debian package it came from

The prefix is fixed (/opt/crik: the interpreter path is absolute); crik looks for CRIU next to
itself, then in /opt/crik/bin, then on PATH. For this machine's architecture (amd64), CRIU and
its libraries are this machine's, from its Debian packages (scripts/setup.sh installs CRIU 4.2
from Debian testing); nothing is fetched. For arm64 (`--arch arm64`), the same packages at the
same versions are downloaded for arm64 from Debian's mirror (`apt-get download`; setup.sh adds
the architecture to dpkg) and unpacked into a scratch root, and the libraries are found by
their ELF headers (ldd cannot run a foreign CRIU).

Usage (as root, after scripts/setup.sh):
    scripts/bundle/build_bundle.py [--arch amd64|arm64] [--crik PATH] OUT
OUT must not exist, or be empty. --crik: the crik binary (default: the release build for the
architecture, e.g. target/aarch64-unknown-linux-gnu/release/crik).
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PREFIX = "/opt/crik"
# Debian's name for each architecture: its Rust target, multiarch triplet and ELF e_machine.
ARCHES = {
    "amd64": ("x86_64-unknown-linux-gnu", "x86_64-linux-gnu", 62),
    "arm64": ("aarch64-unknown-linux-gnu", "aarch64-linux-gnu", 183),
}
NATIVE = "amd64"


def default_crik(arch):
    return os.path.join(REPO, "target", ARCHES[arch][0], "release", "crik")


def log(msg):
    print(f"bundle: {msg}", file=sys.stderr, flush=True)


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout


def needed(elf):
    """The libraries `elf` loads, transitively, as the loader resolves them here, and the loader."""
    libs, loader = {}, None
    for line in run(["ldd", elf]).splitlines():
        line = line.strip()
        m = re.match(r"(\S+) => (/\S+) \(0x", line)
        if m:
            libs[m.group(1)] = m.group(2)
        elif re.match(r"/\S+ld-linux\S* \(0x", line):
            loader = line.split()[0]
        elif "not found" in line:
            raise SystemExit(f"bundle: {elf} needs {line}, which this machine lacks")
    if loader is None:
        raise SystemExit(f"bundle: {elf} names no ELF interpreter (static?)")
    return libs, loader


def elf_machine(path):
    """An ELF file's e_machine (62: x86-64, 183: aarch64), or None for anything else."""
    import struct
    with open(path, "rb") as f:
        head = f.read(20)
    if head[:4] != b"\x7fELF" or len(head) < 20:
        return None
    return struct.unpack_from("<H", head, 18)[0]


def is_static(path):
    """Whether an ELF executable names no interpreter (static, or static-pie): it runs anywhere."""
    import struct
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:  # 64-bit only
            return False
        phoff, = struct.unpack_from("<Q", head, 32)
        phentsize, phnum = struct.unpack_from("<HH", head, 54)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    PT_INTERP = 3
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != PT_INTERP for i in range(phnum))


def installed_version(pkg):
    return run(["dpkg-query", "-W", "-f", "${Version}", pkg])


def owner(pattern):
    """The installed package (name, version) holding a file that `dpkg -S pattern` finds, or None."""
    r = subprocess.run(["dpkg", "-S", pattern], capture_output=True, text=True)
    owners = [l for l in r.stdout.splitlines() if r.returncode == 0 and not l.startswith("diversion")]
    if not owners:
        return None
    pkg = owners[0].split(": ")[0].split(",")[0].split(":")[0]  # "libc6:amd64: /path"
    return pkg, installed_version(pkg)


def owner_of(path):
    """The installed package (name, version) a file of this machine belongs to, or None."""
    real = os.path.realpath(path)
    for p in (path, real, real.replace("/usr/lib/", "/lib/", 1), real.replace("/usr/sbin/", "/sbin/", 1)):
        found = owner(p)
        if found:
            return found
    return None


def package_of(path):
    """The Debian package (name and version) a file belongs to, for CONTENTS."""
    return " ".join(owner_of(path) or ("?",))


class ForeignRoot:
    """CRIU and the packages that hold the libraries it loads, for another architecture: each at
    the version installed here, downloaded from Debian's mirror and unpacked into `root`."""

    def __init__(self, arch, scratch):
        self.arch, self.triplet = arch, ARCHES[arch][1]
        self.debs, self.root = os.path.join(scratch, "debs"), os.path.join(scratch, "root")
        os.makedirs(self.debs)
        os.makedirs(self.root)
        self.packages = {}  # package -> version
        self.origin = {}  # path in root -> "package:arch version"

    def unpack(self, *packages):
        """Downloads and unpacks each (package, version) not unpacked yet, in one apt-get call."""
        todo = [(p, v) for p, v in packages if p not in self.packages]
        if not todo:
            return
        log(f"downloading for {self.arch}: {', '.join(f'{p} {v}' for p, v in todo)}")
        r = subprocess.run(["apt-get", "download", *(f"{p}:{self.arch}={v}" for p, v in todo)], cwd=self.debs,
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"bundle: cannot download them (run scripts/setup.sh, which adds {self.arch} to "
                             f"dpkg's architectures): {r.stderr.strip()}")
        for pkg, version in todo:
            deb = [d for d in os.listdir(self.debs) if d.startswith(f"{pkg}_") and d.endswith(f"_{self.arch}.deb")]
            if len(deb) != 1:
                raise SystemExit(f"bundle: apt-get download left {deb} for {pkg}:{self.arch}")
            for member in run(["dpkg-deb", "-c", os.path.join(self.debs, deb[0])]).splitlines():
                path = member.split()[5].lstrip(".")
                self.origin.setdefault(path, f"{pkg}:{self.arch} {version}")
            run(["dpkg-deb", "-x", os.path.join(self.debs, deb[0]), self.root])
            self.packages[pkg] = version

    def inside(self, path):
        """`path` (absolute, as the foreign system sees it) in `root`, its symlinks followed within
        `root` (an absolute link target must not lead to this machine's files)."""
        for _ in range(40):
            here = os.path.join(self.root, path.lstrip("/"))
            if not os.path.islink(here):
                parent = os.path.dirname(path)
                if parent != "/" and os.path.islink(os.path.join(self.root, parent.lstrip("/"))):
                    path = os.path.join(self.inside(parent)[len(self.root):] or "/", os.path.basename(path))
                    continue
                return here
            target = os.readlink(here)
            path = target if target.startswith("/") else os.path.normpath(os.path.join(os.path.dirname(path), target))
        raise SystemExit(f"bundle: too many symlinks at {path} in the {self.arch} root")

    def existing(self, path):
        """`path` in `root`, or `/usr{path}` (packages built for a merged /usr install only there)."""
        for p in (path, "/usr" + path):
            here = self.inside(p)
            if os.path.isfile(here):
                return here
        return None

    def find(self, soname):
        for d in (f"/lib/{self.triplet}", "/lib"):
            p = self.existing(f"{d}/{soname}")
            if p is not None:
                return p
        return None


def needed_names(elf):
    """The sonames an ELF file names as NEEDED (its headers only: any architecture)."""
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", run(["readelf", "-dW", elf]))


def interpreter_of(elf):
    m = re.search(r"Requesting program interpreter: ([^\]]+)\]", run(["readelf", "-lW", elf]))
    if m is None:
        raise SystemExit(f"bundle: {elf} names no ELF interpreter (static?)")
    return m.group(1)


def host_package_of_soname(soname):
    """The package (and version) that holds `soname` on this machine, for its native architecture."""
    found = owner(f"*/{ARCHES[NATIVE][1]}/{soname}")
    if found is None:
        raise SystemExit(f"bundle: no installed package holds {soname}, which CRIU loads: run scripts/setup.sh")
    return found


def foreign_criu(arch, scratch):
    """CRIU for `arch`, the libraries it loads (soname -> path) and its loader, from Debian's packages
    at the versions installed here; and where each file came from."""
    for tool in ("apt-get", "dpkg-deb", "readelf"):
        if shutil.which(tool) is None:
            raise SystemExit(f"bundle: {tool} is missing: run scripts/setup.sh")
    root = ForeignRoot(arch, scratch)
    # The packages this machine's CRIU loads its libraries from, in one download; any library the
    # foreign build needs beyond them is looked up after.
    native = {owner_of(p) for p in needed(shutil.which("criu") or "/usr/sbin/criu")[0].values()} - {None}
    root.unpack(("criu", installed_version("criu")), *sorted(native))
    criu = root.existing("/sbin/criu")
    if criu is None:
        raise SystemExit(f"bundle: the criu:{arch} package has no /usr/sbin/criu")
    interp = interpreter_of(criu)
    libs, todo = {}, list(needed_names(criu))
    while todo:
        soname = todo.pop()
        # libc names the loader as NEEDED: it is the bundle's loader, added below.
        if soname in libs or soname == os.path.basename(interp):
            continue
        path = root.find(soname)
        if path is None:
            root.unpack(host_package_of_soname(soname))
            path = root.find(soname)
        if path is None:
            raise SystemExit(f"bundle: {soname} is in no {arch} package that holds it for {NATIVE}")
        libs[soname] = path
        todo.extend(needed_names(path))
    loader = root.existing(interp)
    if loader is None:
        raise SystemExit(f"bundle: CRIU's loader {interp} is not in the {arch} packages")

    def origin(path):
        rel = path[len(root.root):]
        for p in (rel, rel.replace("/usr/lib/", "/lib/", 1), rel.replace("/lib/", "/usr/lib/", 1)):
            if p in root.origin:
                return root.origin[p]
        return "?"
    return criu, libs, loader, origin


def main():
    ap = argparse.ArgumentParser(description="Assembles /opt/crik: crik, CRIU and its libraries.")
    ap.add_argument("--arch", choices=sorted(ARCHES), default=NATIVE, help="Debian architecture (default amd64)")
    ap.add_argument("--crik", help="the crik binary (static; default: the release build for --arch)")
    ap.add_argument("out", help="the directory to fill (becomes /opt/crik)")
    args = ap.parse_args()
    args.crik = args.crik or default_crik(args.arch)
    for tool in ("patchelf", "ldd", "dpkg", "dpkg-query"):
        if shutil.which(tool) is None:
            raise SystemExit(f"bundle: {tool} is missing: run scripts/setup.sh")
    if not os.path.exists(args.crik):
        raise SystemExit(f"bundle: no crik at {args.crik}: cargo build --release --target {ARCHES[args.arch][0]}")
    if not is_static(args.crik):
        raise SystemExit(f"bundle: {args.crik} is not a static binary")
    if elf_machine(args.crik) != ARCHES[args.arch][2]:
        raise SystemExit(f"bundle: {args.crik} is not an {args.arch} binary")
    if os.path.exists(args.out) and os.listdir(args.out):
        raise SystemExit(f"bundle: {args.out} is not empty")
    scratch = tempfile.mkdtemp(prefix="crik-bundle-")
    try:
        build(args, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def build(args, scratch):
    if args.arch == NATIVE:
        criu = shutil.which("criu") or "/usr/sbin/criu"
        if not os.path.exists(criu):
            raise SystemExit("bundle: CRIU is not installed: run scripts/setup.sh")
        libs, loader = needed(criu)
        origin = package_of
    else:
        criu, libs, loader, origin = foreign_criu(args.arch, scratch)

    bin_dir, lib_dir = os.path.join(args.out, "bin"), os.path.join(args.out, "lib")
    os.makedirs(bin_dir, exist_ok=True)
    os.makedirs(lib_dir, exist_ok=True)
    contents = []

    def add(src, dst):
        shutil.copy2(os.path.realpath(src), dst)
        os.chmod(dst, 0o755)
        contents.append((os.path.relpath(dst, args.out), src))

    add(args.crik, os.path.join(bin_dir, "crik"))
    add(criu, os.path.join(bin_dir, "criu"))
    for soname, path in sorted(libs.items()):
        add(path, os.path.join(lib_dir, soname))
    loader_name = os.path.basename(loader)
    add(loader, os.path.join(lib_dir, loader_name))

    # CRIU loads its libraries through the bundle's loader and from the bundle only: the
    # executable's RPATH (not RUNPATH) also applies to the libraries' own dependencies, and
    # each library gets it too, so nothing is looked up in the image's /lib.
    lib = f"{PREFIX}/lib"
    run(["patchelf", "--set-interpreter", f"{lib}/{loader_name}", "--force-rpath", "--set-rpath", lib,
         os.path.join(bin_dir, "criu")])
    for soname in libs:
        run(["patchelf", "--force-rpath", "--set-rpath", lib, os.path.join(lib_dir, soname)])

    # The foreign CRIU cannot run here: its package's version says which CRIU it is.
    version = "CRIU " + (run([criu, "--version"]).split("\n")[0].replace("Version:", "").strip()
                         if args.arch == NATIVE else installed_version("criu"))
    version += f", {args.arch}"
    total = 0
    lines = [f"# crik bundle for {PREFIX}: {version}", "# path\tbytes\tfrom"]
    for rel, src in contents:
        size = os.path.getsize(os.path.join(args.out, rel))
        total += size
        came_from = "crik (this repository)" if rel == "bin/crik" else origin(src)
        lines.append(f"{rel}\t{size}\t{came_from}")
    lines.append(f"# {len(contents)} files, {total} bytes")
    with open(os.path.join(args.out, "CONTENTS"), "w") as f:
        f.write("\n".join(lines) + "\n")
    log(f"{args.out}: {len(contents)} files, {total / (1 << 20):.1f} MiB ({version})")
    print(args.out)


if __name__ == "__main__":
    main()
