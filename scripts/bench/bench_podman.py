#!/usr/bin/env python3
"""crik next to the peer, podman's own checkpoint/restore, on the same container (a benchmark:
nothing here fails on a number; it prints figures).

For a small app and one holding about 256 MiB of incompressible memory (tests/workloads/
bench_app.py, answering on a published port), alternating the two, medians of RUNS:
  - crik:   `podman stop` (SIGTERM: crik checkpoints into a volume, fsynced) until the
            container has exited; then a new `podman run` on the volume until the app answers;
  - podman: `podman container checkpoint --export` (runc + CRIU + a tar of the whole
            checkpoint) until it returns; then `podman container restore --import` until the
            app answers.
Both run under runc with the same image, capabilities and port. crik's checkpoint includes
podman stopping the container; podman's, the export tar (what a move to another node needs).

Usage (as root, after scripts/test.sh built crik and the images): scripts/bench/bench_podman.py
Environment: CRIK_BENCH_DIR (volume and export dir, default /var/tmp), RUNS (default 3).
"""
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CRIK = os.path.join(REPO, "target", "x86_64-unknown-linux-gnu", "release", "crik")
RUNS = int(os.environ.get("RUNS", "3"))


def sh(*cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout.strip()


def image():
    out = sh(sys.executable, os.path.join(REPO, "scripts", "test_images.py"), "base")
    return out.splitlines()[-1]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def answers(port, timeout=120):
    """Waits until the app answers PING on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
                c.sendall(b"PING\n")
                if c.recv(16).startswith(b"PONG"):
                    return
        except OSError:
            pass
        time.sleep(0.002)
    raise SystemExit(f"no answer on port {port}")


def ulimits():
    import resource
    nofile = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 1 << 20)
    nproc = min(resource.getrlimit(resource.RLIMIT_NPROC)[1], 32768)
    return ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", f"nproc={nproc}:{nproc}"]


def run_args(port):
    return ["--runtime", "runc", *ulimits(), "--cap-add", "SYS_ADMIN,NET_ADMIN,SYS_TIME",
            "--security-opt", "seccomp=unconfined", "-p", f"127.0.0.1:{port}:7000",
            "-v", f"{REPO}/tests/workloads:/workloads:ro"]


def app(mib):
    return ["python3", "/workloads/bench_app.py", "7000", str(mib), "0", "0.0.0.0"]


def crik_once(img, work, mib):
    port = free_port()
    vol = os.path.join(work, "volume")
    os.makedirs(vol)
    cfg = os.path.join(work, "crik.yaml")
    open(cfg, "w").write("imageDir: /var/lib/crik/images\n")
    mounts = ["-v", f"{vol}:/var/lib/crik", "-v", f"{cfg}:/etc/crik/config.yaml:ro", "-v", f"{CRIK}:/usr/local/bin/crik:ro"]
    name = f"crik-bench-{os.getpid()}"
    sh("podman", "run", "-d", "--name", name, *run_args(port), *mounts, img, "crik", "run", "--", *app(mib))
    try:
        answers(port)
        os.sync()
        t0 = time.monotonic()
        sh("podman", "stop", "-t", "300", name)
        ckpt = time.monotonic() - t0
        if sh("podman", "inspect", "--format", "{{.State.ExitCode}}", name) != "0":
            raise SystemExit("crik's checkpoint failed:\n" + sh("podman", "logs", name))
        sh("podman", "rm", name)
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(os.path.join(vol, "images", "checkpoints")) for f in fs)
        t0 = time.monotonic()
        sh("podman", "run", "-d", "--name", name, *run_args(port), *mounts, img, "crik", "run", "--", *app(mib))
        answers(port)
        restore = time.monotonic() - t0
    finally:
        subprocess.run(["podman", "rm", "-f", "-t", "0", name], capture_output=True)
    return ckpt, restore, size


def podman_once(img, work, mib):
    port = free_port()
    name = f"podman-bench-{os.getpid()}"
    export = os.path.join(work, "checkpoint.tar")
    sh("podman", "run", "-d", "--name", name, *run_args(port), img, *app(mib))
    try:
        answers(port)
        os.sync()
        t0 = time.monotonic()
        sh("podman", "container", "checkpoint", f"--export={export}", name)
        ckpt = time.monotonic() - t0
        sh("podman", "rm", name)
        size = os.path.getsize(export)
        t0 = time.monotonic()
        sh("podman", "container", "restore", f"--import={export}")
        answers(port)
        restore = time.monotonic() - t0
    finally:
        subprocess.run(["podman", "rm", "-f", "-t", "0", name], capture_output=True)
    return ckpt, restore, size


def main():
    if os.geteuid() != 0:
        raise SystemExit("bench_podman: must run as root")
    if not os.path.exists(CRIK):
        subprocess.run(["cargo", "build", "--release", "--locked", "-p", "crik"], cwd=REPO, check=True)
    img = image()
    base = os.environ.get("CRIK_BENCH_DIR", "/var/tmp")
    print(f"podman container checkpoint/restore vs crik, same container (runc), medians of {RUNS} alternating runs")
    print(f"{'workload':<12} {'ckpt crik':>9} {'podman':>7} {'x':>5} {'restore crik':>12} {'podman':>7} {'x':>5} {'size crik':>9} {'podman':>7}")
    for label, mib in [("small", 8), ("256 MiB", 256)]:
        results = {"crik": [], "podman": []}
        for _ in range(RUNS):
            for who, fn in [("crik", crik_once), ("podman", podman_once)]:
                work = tempfile.mkdtemp(prefix="crik-bench-podman-", dir=base)
                try:
                    results[who].append(fn(img, work, mib))
                finally:
                    shutil.rmtree(work, ignore_errors=True)
        med = {w: [statistics.median(r[i] for r in results[w]) for i in range(3)] for w in results}
        c, p = med["crik"], med["podman"]
        print(f"{label:<12} {c[0]:>8.2f}s {p[0]:>6.2f}s {c[0] / p[0]:>5.2f} {c[1]:>11.2f}s {p[1]:>6.2f}s "
              f"{c[1] / p[1]:>5.2f} {c[2] / 2**20:>5.0f} MiB {p[2] / 2**20:>3.0f} MiB")
    print("x < 1: crik is faster. crik's checkpoint is fsynced; podman's export is not.")


if __name__ == "__main__":
    main()
