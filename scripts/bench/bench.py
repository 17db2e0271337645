#!/usr/bin/env python3
"""crik's performance figures, printed side by side (a benchmark: nothing here fails on a number).

For each workload (about 64 MiB and 1 GiB of incompressible memory, and a multi-process tree):
  - checkpoint time: SIGTERM sent -> crik exits with the checkpoint complete (fsynced, published)
  - restore time: crik started -> the app answers on its TCP port again (images read cold, out of
    the page cache, for both)
  - image size
  - the same for the raw `criu dump` / `criu restore` CLI on the same workload, and crik/raw
  - the image dir's write bandwidth (dd of the same bytes with fsync) and checkpoint/dd
Also: eager vs lazy restore (time to first answer), the pause a periodic checkpoint causes.
Goals: crik within 5% of raw CRIU on 1 GiB; checkpoint within 1.3x of the disk's write time.
"""
import os
import shutil
import signal
import statistics
import socket
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CRIK = os.path.join(REPO, "target", "x86_64-unknown-linux-gnu", "release", "crik")
APP = os.path.join(REPO, "tests", "workloads", "bench_app.py")
PY = "/usr/bin/python3"
NS = ["unshare", "--pid", "--fork", "--mount-proc", "--ipc", "--uts"]
CRIU_OPTS = ["--tcp-established", "--ext-unix-sk", "--file-locks", "--network-lock", "nftables",
             "--manage-cgroups=ignore", "--ghost-limit", "500M", "-v4"]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def ask(port, what=b"PING", timeout=600):
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as c:
                c.sendall(what + b"\n")
                data = c.recv(128)
                if data:
                    return data.decode().strip()
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"no answer on port {port}")
        time.sleep(0.002)


def child_of(pid):
    for _ in range(2000):
        try:
            kids = open(f"/proc/{pid}/task/{pid}/children").read().split()
            if kids:
                return int(kids[0])
        except OSError:
            pass
        time.sleep(0.005)
    raise SystemExit("no child")


def du(path):
    total = 0
    for d, _, files in os.walk(path):
        for f in files:
            total += os.path.getsize(os.path.join(d, f))
    return total


def cold(path):
    """Every file under `path` out of the page cache: both restores read their images as on a node
    the checkpoint moved to (crik drops a sealed checkpoint's cache itself; raw CRIU does not)."""
    os.sync()
    for d, _, files in os.walk(path):
        for f in files:
            with open(os.path.join(d, f), "rb") as fh:
                os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def crik_container(cfg, cmd):
    return subprocess.Popen([*NS, CRIK, "run", "--config", cfg, "--", *cmd],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def bench_crik(work, port, mib, children, extra=""):
    images = os.path.join(work, "crik-images")
    cfg = os.path.join(work, "crik.yaml")
    open(cfg, "w").write(f"imageDir: {images}\n{extra}")
    cmd = [PY, APP, str(port), str(mib), str(children)]
    c = crik_container(cfg, cmd)
    ask(port)
    before = ask(port, b"CHECK")  # the app's memory, hashed by the app itself
    os.sync()  # every timed step starts with no dirty pages of an earlier one
    t0 = time.monotonic()
    os.kill(child_of(c.pid), signal.SIGTERM)
    _, err = c.communicate()
    ckpt = time.monotonic() - t0
    if c.returncode != 0:
        raise SystemExit(f"crik checkpoint failed:\n{err}")
    size = du(os.path.join(images, "checkpoints"))
    cold(images)
    t0 = time.monotonic()
    c = crik_container(cfg, cmd)
    ask(port)
    restore = time.monotonic() - t0
    digest = ask(port, b"CHECK")
    os.kill(child_of(c.pid), signal.SIGKILL)
    c.wait()
    if digest != before:
        raise SystemExit(f"the restored app's memory differs: sha256 {digest} after, {before} before the checkpoint")
    return ckpt, restore, size, digest


def bench_raw(work, port, mib, children):
    images = os.path.join(work, "raw-images")
    os.makedirs(images)
    # The same "container", the app a session leader with its PIDs above 9000, as under crik.
    holder = subprocess.Popen(
        [*NS, "sh", "-c", f"echo 9000 > /proc/sys/kernel/ns_last_pid; "
                          f"setsid {PY} {APP} {port} {mib} {children} </dev/null >/dev/null 2>&1 & "
                          # The namespace's init outlives the app: its exit would kill CRIU too.
                          f"while :; do sleep 1; done"],
        # unshare complains ("sigprocmask unblock failed") when its child dies of SIGKILL.
        stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ask(port)
    init = child_of(holder.pid)
    app = int(subprocess.run(["sh", "-c", f"cat /proc/{init}/task/{init}/children"], capture_output=True,
                             text=True).stdout.split()[0])
    nspid = [l for l in open(f"/proc/{app}/status") if l.startswith("NSpid:")][0].split()[-1]
    os.sync()
    t0 = time.monotonic()
    subprocess.run(["nsenter", "-t", str(init), "-p", "-m", "criu", "dump", "-t", nspid, "-D", images,
                    "-o", "dump.log", *CRIU_OPTS], check=True)
    ckpt = time.monotonic() - t0
    os.kill(init, signal.SIGKILL)
    holder.wait()
    size = du(images)
    cold(images)
    t0 = time.monotonic()
    r = subprocess.Popen([*NS, "criu", "restore", "-D", images, "-o", "restore.log", *CRIU_OPTS],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ask(port)
    restore = time.monotonic() - t0
    os.kill(child_of(r.pid), signal.SIGKILL)
    r.wait()
    return ckpt, restore, size


def disk_write(work, nbytes):
    os.sync()
    t0 = time.monotonic()
    subprocess.run(["dd", "if=/dev/zero", f"of={work}/dd.tmp", "bs=1M", f"count={max(1, nbytes >> 20)}",
                    "conv=fsync"], check=True, stderr=subprocess.DEVNULL)
    t = time.monotonic() - t0
    os.remove(f"{work}/dd.tmp")
    return t


def periodic_pause(work, port):
    """Largest gap between answers while periodic checkpoints run (64 MiB app)."""
    images = os.path.join(work, "periodic-images")
    cfg = os.path.join(work, "periodic.yaml")
    open(cfg, "w").write(f"imageDir: {images}\ncheckpointInterval: 1\n")
    c = crik_container(cfg, [PY, APP, str(port), "64", "0"])
    ask(port)
    worst, last, end = 0.0, time.monotonic(), time.monotonic() + 4.5
    while time.monotonic() < end:
        ask(port)
        now = time.monotonic()
        worst, last = max(worst, now - last), now
        time.sleep(0.005)
    os.kill(child_of(c.pid), signal.SIGKILL)
    c.wait()
    return worst


def main():
    rows = []
    workloads = [("64 MiB, 1 process", 64, 0), ("1 GiB, 1 process", 1024, 0), ("256 MiB, 5 processes", 256, 4)]
    base = os.environ.get("CRIK_BENCH_DIR", "/var/tmp")
    reps = int(os.environ.get("CRIK_BENCH_REPS", "3"))
    for name, mib, children in workloads:
        runs = []
        for _ in range(reps):
            # crik, raw CRIU and dd alternate, so a slow spell of the disk hits all of them.
            work = tempfile.mkdtemp(prefix="crik-bench-", dir=base)
            try:
                ckpt, restore, size, _ = bench_crik(work, free_port(), mib, children)
                rckpt, rrestore, _ = bench_raw(work, free_port(), mib, children)
                runs.append((ckpt, rckpt, restore, rrestore, size, disk_write(work, size)))
            finally:
                shutil.rmtree(work, ignore_errors=True)
        med = [statistics.median(r[i] for r in runs) for i in range(6)]
        rows.append((name, *med))
        print(f"bench: {name} done ({reps} runs, medians shown)", file=sys.stderr, flush=True)

    print(f"\nimage dir: {base} (set CRIK_BENCH_DIR to measure another volume); medians of {reps} runs")
    print("crik's checkpoint is durable (fsynced, checksummed, published); raw `criu dump` is not fsynced.")
    print(f"{'workload':<22} {'ckpt crik':>9} {'raw':>7} {'x':>5} {'restore crik':>12} {'raw':>7} {'x':>5} "
          f"{'image':>9} {'dd+fsync':>8} {'ckpt/dd':>7}")
    for name, ckpt, rckpt, restore, rrestore, size, dd in rows:
        print(f"{name:<22} {ckpt:>8.2f}s {rckpt:>6.2f}s {ckpt / rckpt:>5.2f} {restore:>11.2f}s {rrestore:>6.2f}s "
              f"{restore / rrestore:>5.2f} {size / 2**20:>5.0f} MiB {dd:>7.2f}s {ckpt / dd:>7.2f}")
    big = rows[1]
    print("\ngoals (1 GiB workload):")
    print(f"  checkpoint within 5% of raw CRIU:       {big[1] / big[2]:.2f}x  {'met' if big[1] <= 1.05 * big[2] else 'MISSED'}")
    print(f"  restore within 5% of raw CRIU:          {big[3] / big[4]:.2f}x  {'met' if big[3] <= 1.05 * big[4] else 'MISSED'}")
    print(f"  checkpoint within 1.3x of disk write:   {big[1] / big[6]:.2f}x  {'met' if big[1] <= 1.3 * big[6] else 'MISSED'}")
    work = tempfile.mkdtemp(prefix="crik-bench-", dir=base)
    try:
        _, lazy, _, lazy_digest = bench_crik(work, free_port(), 1024, 0, "lazyPages: true\n")
        print(f"\nrestore of the 1 GiB workload, time to first answer: eager {big[3]:.2f}s, lazy {lazy:.2f}s "
              f"(after the lazy restore the app's memory hashes as before the checkpoint: sha256 {lazy_digest[:12]}...)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    work = tempfile.mkdtemp(prefix="crik-bench-", dir=base)
    try:
        print(f"\nperiodic checkpoints (64 MiB app, every 1 s): longest pause seen by a client "
              f"{periodic_pause(work, free_port()) * 1000:.0f} ms")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
