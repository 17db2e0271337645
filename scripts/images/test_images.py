#!/usr/bin/env python3
"""Builds the container images crik's podman tests run (no registry is reachable here): a
Debian bookworm root made with debootstrap, CRIU 4.2 from Debian testing (pinned low, as
scripts/setup.sh installs it), nftables and python3, imported with `podman import`; app images add the
app's Debian packages to a copy of that root. crik itself is not in the images: the tests
bind-mount the binary they test, so a code change needs no rebuild.

An image is tagged with a hash of what goes into it and rebuilt only when that changes.

`bullseye` is another root: Debian 11 (glibc 2.31, whose CRIU is too old) with python3 and no
CRIU, for the bundle's tests (tests/integration/bundle.rs).

`podman5` is not an image but a Debian testing (forky) root with podman 5 (crun, netavark,
nftables), for the `podman kube play` tests: bookworm's podman 4.3 takes a pod down without its
grace period and cannot play a Secret, and Debian 13's podman 5.4 tears a pod's network down at
the start of its grace period (docs/kubernetes.md). Testing's podman is 5.8; a podman 6 would
drop cgroup v1, which this machine has: the script refuses any podman but 5.1 to 5.x. The tests
run it chrooted (tests/integration/common/podman5.rs, `Podman5`), beside the machine's podman,
with a store, a subnet and runtime state of its own. Its path is printed.

Usage (as root): scripts/images/test_images.py [APP ...]   (APP: base, chromium, bullseye, podman5, ...)
"""
import hashlib
import os
import re
import shutil
import subprocess
import sys

from debian_root import copy_apt_settings, debian_mirror, in_root

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORK = os.path.join(REPO, "target", "test-images")
# name -> Debian packages on top of the base root.
APPS = {
    "base": [],
    "chromium": ["chromium", "fonts-dejavu-core", "tini"],
    "jvm": ["openjdk-17-jdk-headless"],
    "node": ["nodejs"],
    "memcached": ["memcached"],
    "nginx": ["nginx-light"],
}
BASE_PACKAGES = ["nftables", "python3", "iproute2", "procps"]
# Roots of their own (suite, packages), without CRIU: what the bundle brings it.
OTHER_ROOTS = {"bullseye": ("bullseye", ["python3"])}
FORKY = """Types: deb
URIs: {mirror}
Suites: forky
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""
PIN = "Package: *\nPin: release n=forky\nPin-Priority: 50\n"


def log(msg):
    print(f"test-images: {msg}", file=sys.stderr, flush=True)


def run(cmd, **kw):
    log("$ " + " ".join(cmd))
    subprocess.run(cmd, check=True, **kw)


def chrooted(root, script):
    run(in_root(root, ["/bin/sh", "-c", script]))


# Bumped when the way images are made changes (not needed when a package list changes).
RECIPE = 2


PODMAN5_SUITE = "forky"
PODMAN5_PACKAGES = ["podman", "crun", "conmon", "netavark", "aardvark-dns", "catatonit", "nftables"]
# No systemd in the root: cgroupfs, and files for events and logs. Its own subnet: the machine's podman
# (CNI) takes 10.88.0.0/16.
PODMAN5_CONF = """[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "crun"

[containers]
log_driver = "k8s-file"

[network]
default_subnet = "10.99.0.0/16"
default_subnet_pools = [{base = "10.100.0.0/16", size = 24}]
"""


def tag(app):
    if app in OTHER_ROOTS:
        h = hashlib.sha256(repr((RECIPE, OTHER_ROOTS[app])).encode())
        return f"localhost/crik-test-{app}:{h.hexdigest()[:12]}"
    base = (RECIPE, BASE_PACKAGES, FORKY, PIN)
    h = hashlib.sha256(repr(base if app == "base" else (base, APPS[app])).encode())
    return f"localhost/crik-test-{app}:{h.hexdigest()[:12]}"


def have_image(name):
    return subprocess.run(["podman", "image", "exists", name]).returncode == 0


def base_root():
    root = os.path.join(WORK, "base")
    marker = os.path.join(root, ".crik-key")
    key = tag("base")
    if os.path.exists(marker) and open(marker).read() == key:
        return root
    shutil.rmtree(root, ignore_errors=True)
    mirror = debian_mirror()
    run(["debootstrap", "--variant=minbase", "bookworm", root, mirror], stdout=subprocess.DEVNULL)
    copy_apt_settings(root)
    open(f"{root}/etc/apt/sources.list.d/forky.sources", "w").write(FORKY.format(mirror=mirror))
    open(f"{root}/etc/apt/preferences.d/forky", "w").write(PIN)
    chrooted(root, "export DEBIAN_FRONTEND=noninteractive && apt-get update -qq && "
            f"apt-get install -y -qq --no-install-recommends {' '.join(BASE_PACKAGES)} >/dev/null && "
            "apt-get install -y -qq --no-install-recommends -t forky criu >/dev/null && criu --version >&2")
    os.makedirs(f"{root}/etc/crik", exist_ok=True)
    open(marker, "w").write(key)
    return root


def other_root(app):
    suite, packages = OTHER_ROOTS[app]
    root = os.path.join(WORK, app)
    shutil.rmtree(root, ignore_errors=True)
    run(["debootstrap", "--variant=minbase", f"--include={','.join(packages)}", suite, root, debian_mirror()],
        stdout=subprocess.DEVNULL)
    return root


def podman5_root():
    root = os.path.join(WORK, "podman5")
    marker = os.path.join(root, ".crik-key")
    key = hashlib.sha256(repr((RECIPE, PODMAN5_SUITE, PODMAN5_PACKAGES, PODMAN5_CONF)).encode()).hexdigest()
    if os.path.exists(marker) and open(marker).read() == key:
        return root
    # A test that died may have left the host's /dev and /sys bound in it: never delete through them.
    points = (line.split()[4] for line in open("/proc/self/mountinfo"))
    mounted = [p for p in points if p == root or p.startswith(root + "/")]
    if mounted:
        raise SystemExit(f"test-images: {root} has mounts ({', '.join(mounted)}): umount -R {root} first")
    shutil.rmtree(root, ignore_errors=True)
    # bookworm's debootstrap has no script named forky; sid's makes any later suite.
    run(["debootstrap", "--variant=minbase", PODMAN5_SUITE, root, debian_mirror(), "/usr/share/debootstrap/scripts/sid"],
        stdout=subprocess.DEVNULL)
    copy_apt_settings(root)
    chrooted(root, "export DEBIAN_FRONTEND=noninteractive && apt-get update -qq && "
            f"apt-get install -y -qq --no-install-recommends {' '.join(PODMAN5_PACKAGES)} >/dev/null && "
            "apt-get clean")
    # `kube down` waits the grace period from 5.1 on; 6 drops cgroup v1.
    version = subprocess.run(in_root(root, ["podman", "--version"]), check=True, capture_output=True, text=True).stdout
    log(f"podman5 root: {version.strip()}")
    major, minor = (int(x) for x in re.search(r"(\d+)\.(\d+)", version).groups())
    if not (major == 5 and minor >= 1):
        raise SystemExit(f"test-images: the podman5 root has {version.strip()}; the kube tests need 5.1 or a later 5")
    open(f"{root}/etc/containers/containers.conf", "w").write(PODMAN5_CONF)
    open(marker, "w").write(key)
    return root


def build(app):
    if app == "podman5":
        return podman5_root()
    name = tag(app)
    if have_image(name):
        log(f"{name} is there")
        return name
    if app in OTHER_ROOTS:
        root = other_root(app)
    else:
        root = base_root()
    if APPS.get(app):
        app_root = os.path.join(WORK, app)
        shutil.rmtree(app_root, ignore_errors=True)
        run(["cp", "-a", root, app_root])
        chrooted(app_root, "export DEBIAN_FRONTEND=noninteractive && "
                f"apt-get install -y -qq --no-install-recommends {' '.join(APPS[app])} >/dev/null")
        root = app_root
    tar = subprocess.Popen(["tar", "-C", root, "--exclude=./proc/*", "--exclude=./dev/*", "-c", "."], stdout=subprocess.PIPE)
    run(["podman", "import", "--quiet", "-", name], stdin=tar.stdout, stdout=subprocess.DEVNULL)
    if tar.wait() != 0:
        raise SystemExit("tar failed")
    log(f"built {name}")
    return name


def main():
    if os.geteuid() != 0:
        raise SystemExit("test-images: must run as root")
    for app in sys.argv[1:] or [*APPS, *OTHER_ROOTS, "podman5"]:
        print(build(app))


if __name__ == "__main__":
    main()
