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
itself, then in /opt/crik/bin, then on PATH. CRIU and its libraries come from this machine's
Debian packages (scripts/setup.sh installs CRIU 4.2 from Debian testing); nothing is fetched.

Usage (as root, after scripts/setup.sh):
    scripts/bundle/build_bundle.py [--crik PATH] OUT
OUT must not exist, or be empty. --crik: the crik binary (default: the release build).
"""
import argparse
import os
import re
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PREFIX = "/opt/crik"
DEFAULT_CRIK = os.path.join(REPO, "target", "x86_64-unknown-linux-gnu", "release", "crik")


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


def package_of(path):
    """The Debian package (name and version) a file belongs to, for CONTENTS."""
    real = os.path.realpath(path)
    for p in (path, real, real.replace("/usr/lib/", "/lib/", 1), real.replace("/usr/sbin/", "/sbin/", 1)):
        r = subprocess.run(["dpkg", "-S", p], capture_output=True, text=True)
        owners = [l for l in r.stdout.splitlines() if r.returncode == 0 and not l.startswith("diversion")]
        if owners:
            pkg = owners[0].split(": ")[0].split(",")[0].split(":")[0]  # "libc6:amd64: /path"
            version = run(["dpkg-query", "-W", "-f", "${Version}", pkg])
            return f"{pkg} {version}"
    return "?"


def main():
    ap = argparse.ArgumentParser(description="Assembles /opt/crik: crik, CRIU and its libraries.")
    ap.add_argument("--crik", default=DEFAULT_CRIK, help="the crik binary (static)")
    ap.add_argument("out", help="the directory to fill (becomes /opt/crik)")
    args = ap.parse_args()
    for tool in ("patchelf", "ldd", "dpkg", "dpkg-query"):
        if shutil.which(tool) is None:
            raise SystemExit(f"bundle: {tool} is missing: run scripts/setup.sh")
    criu = shutil.which("criu") or "/usr/sbin/criu"
    if not os.path.exists(criu):
        raise SystemExit("bundle: CRIU is not installed: run scripts/setup.sh")
    if not os.path.exists(args.crik):
        raise SystemExit(f"bundle: no crik at {args.crik}: cargo build --release")
    if not is_static(args.crik):
        raise SystemExit(f"bundle: {args.crik} is not a static binary")
    if os.path.exists(args.out) and os.listdir(args.out):
        raise SystemExit(f"bundle: {args.out} is not empty")

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
    libs, loader = needed(criu)
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

    version = "CRIU " + run([criu, "--version"]).split("\n")[0].replace("Version:", "").strip()
    total = 0
    lines = [f"# crik bundle for {PREFIX}: {version}", "# path\tbytes\tfrom"]
    for rel, src in contents:
        size = os.path.getsize(os.path.join(args.out, rel))
        total += size
        origin = "crik (this repository)" if rel == "bin/crik" else package_of(src)
        lines.append(f"{rel}\t{size}\t{origin}")
    lines.append(f"# {len(contents)} files, {total} bytes")
    with open(os.path.join(args.out, "CONTENTS"), "w") as f:
        f.write("\n".join(lines) + "\n")
    log(f"{args.out}: {len(contents)} files, {total / (1 << 20):.1f} MiB ({version})")
    print(args.out)


if __name__ == "__main__":
    main()
