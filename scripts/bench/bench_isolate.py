#!/usr/bin/env python3
"""What `isolatePids` costs, printed side by side (a benchmark: nothing here fails on a number).

With `isolatePids` the app runs under crik's reaper in a PID and mount namespace of its own, and
CRIU dumps and restores the reaper, the namespaces and the mounts (each one external) with it.
For the workloads of bench.py (a TCP app with incompressible memory, one process or five), N
alternated runs of each way:
  - checkpoint time: SIGTERM sent -> crik exits with the checkpoint complete
  - restore time: crik started -> the app answers on its TCP port again (images read cold)
Also the idle resident memory of crik and of the reaper, supervising `sleep`.

Usage (as root, after scripts/setup.sh and `cargo build --release`):
  python3 scripts/bench/bench_isolate.py [RUNS]     (default 5; CRIK_BENCH_DIR: image dir's volume)
"""
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import CRIK, NS, bench_crik, child_of, free_port  # noqa: E402

ISOLATED = "isolatePids: true\n"


def vm_rss_kib(pid):
    """(VmRSS, RssAnon) in KiB: resident in all, and of that its own memory (not the binary's pages)."""
    fields = {}
    for line in open(f"/proc/{pid}/status"):
        key, _, value = line.partition(":")
        fields[key] = value.split()[0] if value.split() else "0"
    return f"{fields.get('VmRSS', '?')} KiB ({fields.get('RssAnon', '?')} KiB anonymous)"


def idle_rss(work):
    """(crik's, the reaper's) resident memory, supervising `sleep 60` with isolatePids."""
    cfg = os.path.join(work, "idle.yaml")
    open(cfg, "w").write(ISOLATED)
    c = subprocess.Popen([*NS, CRIK, "run", "--config", cfg, "--", "sleep", "60"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        crik = reaper = None
        while time.monotonic() < deadline and reaper is None:
            time.sleep(0.05)
            crik = child_of(c.pid)
            reaper = crik and child_of(crik)
        time.sleep(1)
        return vm_rss_kib(crik), vm_rss_kib(reaper)
    finally:
        c.kill()
        c.wait()
        subprocess.run(["pkill", "-KILL", "-f", f"{CRIK} run --config {cfg}"], check=False)


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    base = os.environ.get("CRIK_BENCH_DIR", "/var/tmp")
    workloads = [("64 MiB, 1 process", 64, 0), ("256 MiB, 5 processes", 256, 4)]
    rows = []
    for name, mib, children in workloads:
        plain, isolated = [], []
        for i in range(runs):
            # Which goes first alternates, so a slow spell of the disk hits both.
            order = [("", plain), (ISOLATED, isolated)]
            for extra, out in order if i % 2 == 0 else reversed(order):
                work = tempfile.mkdtemp(prefix="crik-bench-iso-", dir=base)
                try:
                    ckpt, restore, size, _ = bench_crik(work, free_port(), mib, children, extra)
                    out.append((ckpt, restore, size))
                finally:
                    shutil.rmtree(work, ignore_errors=True)
        med = lambda v, k: statistics.median(r[k] for r in v)  # noqa: E731
        rows.append((name, med(plain, 0), med(isolated, 0), med(plain, 1), med(isolated, 1),
                     med(plain, 2), med(isolated, 2)))
        print(f"bench_isolate: {name} done", file=sys.stderr, flush=True)

    work = tempfile.mkdtemp(prefix="crik-bench-iso-", dir=base)
    try:
        crik_rss, reaper_rss = idle_rss(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nimage dir: {base}; medians of {runs} alternated runs each")
    print(f"{'workload':<22} {'ckpt plain':>10} {'isolated':>9} {'x':>5} {'restore plain':>13} {'isolated':>9} "
          f"{'x':>5} {'image plain':>11} {'isolated':>9}")
    for name, cp, ci, rp, ri, sp, si in rows:
        print(f"{name:<22} {cp:>9.2f}s {ci:>8.2f}s {ci / cp:>5.2f} {rp:>12.2f}s {ri:>8.2f}s {ri / rp:>5.2f} "
              f"{sp / 2**20:>7.1f} MiB {si / 2**20:>5.1f} MiB")
    print(f"\nidle VmRSS with isolatePids (supervising sleep): crik {crik_rss}, its reaper {reaper_rss}")


if __name__ == "__main__":
    main()
