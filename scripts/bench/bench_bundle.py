#!/usr/bin/env python3
"""The bundle's cost, side by side with Debian's CRIU in one run (a benchmark: nothing fails on a
number). The same crik binary starts an app twice over, alternated (BENCH_BUNDLE_RUNS, 10):
  - with the system's CRIU (Debian's package, on PATH), and
  - from the bundle (scripts/bundle/build_bundle.py) at /opt/crik, in a private mount namespace,
    with no CRIU on PATH: crik runs the bundle's, on the bundle's own loader and libraries.
Figures: time from exec to the app's first line on stdout (crik checks CRIU at start: that is
where the bundle's dynamic loading shows), crik's resident memory once the app runs, the
bundle's size, and a checkpoint and restore of a small app through each CRIU.
"""
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import CRIK, NS, REPO  # noqa: E402

RUNS = int(os.environ.get("BENCH_BUNDLE_RUNS", "10"))
COUNTER = ["/bin/sh", "-c", 'i=0; while :; do i=$((i+1)); echo "count $i"; sleep 0.05; done']


def in_mount_ns(bundle, argv):
    """argv run in a private mount namespace (nothing left on the host) with an empty /opt, and
    the bundle mounted at /opt/crik when given: both ways start through the same steps."""
    setup = "mount -t tmpfs none /opt"
    if bundle:
        setup += f" && mkdir /opt/crik && mount --bind {bundle} /opt/crik"
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", setup + ' && exec "$@"', "sh", *argv]


def start(cmd, env):
    """Starts crik (cmd), waits for the app's first line; returns (process, seconds, crik's pid)."""
    t = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    line = p.stdout.readline()
    took = time.monotonic() - t
    if not line.startswith("count"):
        p.kill()
        raise SystemExit(f"no first line: {line!r}\n{p.stderr.read()}")
    return p, took


def crik_pid(p):
    """crik: the process named crik below the launcher (unshare/sh layers)."""
    out = subprocess.run(["pgrep", "-x", "crik"], capture_output=True, text=True).stdout.split()
    for pid in out:
        ppids = []
        cur = pid
        for _ in range(6):
            try:
                cur = open(f"/proc/{cur}/stat").read().rsplit(")", 1)[1].split()[1]
            except OSError:
                break
            ppids.append(cur)
        if str(p.pid) in ppids:
            return int(pid)
    return None


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def stop(p, signal_=15):
    """Signals crik (unshare does not pass signals on to its child) and waits for it."""
    pid = crik_pid(p)
    if pid:
        os.kill(pid, signal_)
    try:
        p.wait(timeout=60)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def main():
    if os.geteuid() != 0:
        raise SystemExit("bench-bundle: must run as root")
    work = tempfile.mkdtemp(prefix="crik-bench-bundle-")
    try:
        bundle = os.path.join(work, "opt-crik")
        subprocess.run([sys.executable, os.path.join(REPO, "scripts", "bundle", "build_bundle.py"), "--crik", CRIK,
                        bundle], check=True, capture_output=True)
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(bundle) for f in fs)
        path_without_criu = "/usr/local/bin:/usr/bin:/bin"
        ways = {
            "Debian's CRIU (system)": lambda cfg: (in_mount_ns(None, NS + [CRIK, "run", "--config", cfg, "--", *COUNTER]),
                                                   dict(os.environ)),
            "the bundle (/opt/crik)": lambda cfg: (in_mount_ns(bundle, NS + ["/opt/crik/bin/crik", "run", "--config",
                                                                              cfg, "--", *COUNTER]),
                                                   dict(os.environ, PATH=path_without_criu)),
        }
        first, rss, cycle = {w: [] for w in ways}, {w: [] for w in ways}, {w: [] for w in ways}
        for i in range(RUNS):
            for way, make in ways.items():
                images = os.path.join(work, f"images-{i}-{len(first[way])}-{abs(hash(way))}")
                cfg = os.path.join(work, "config.yaml")
                with open(cfg, "w") as f:
                    f.write(f"imageDir: {images}\n")
                cmd, env = make(cfg)
                p, took = start(cmd, env)
                first[way].append(took)
                time.sleep(0.5)
                pid = crik_pid(p)
                if pid:
                    rss[way].append(rss_kib(pid))
                # A checkpoint (SIGTERM) and a restore through this way's CRIU.
                t = time.monotonic()
                stop(p)
                p.stdout.read()
                if p.returncode != 0:
                    raise SystemExit(f"{way}: checkpoint failed:\n{p.stderr.read()}")
                p2, _ = start(cmd, env)
                cycle[way].append(time.monotonic() - t)
                stop(p2, 9)
                p2.communicate()
                shutil.rmtree(images, ignore_errors=True)
        med = lambda v: statistics.median(v) if v else float("nan")  # noqa: E731
        rows = [("bundle size", f"{size / (1 << 20):.1f} MiB ({sum(len(fs) for _, _, fs in os.walk(bundle))} files)")]
        for way in ways:
            rows.append((f"{way}: exec -> app's first line (median of {RUNS})", f"{med(first[way]) * 1000:.0f} ms"))
            rows.append((f"{way}: crik's resident memory, app running", f"{med(rss[way]) / 1024:.1f} MiB"))
            rows.append((f"{way}: SIGTERM -> checkpoint -> restored app's first line", f"{med(cycle[way]) * 1000:.0f} ms"))
        a, b = ways
        rows.append(("bundle / system, exec -> first line", f"{med(first[b]) / med(first[a]):.2f}x"))
        rows.append(("bundle / system, checkpoint + restore", f"{med(cycle[b]) / med(cycle[a]):.2f}x"))
        width = max(len(r[0]) for r in rows)
        for name, value in rows:
            print(f"{name:<{width}}  {value}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
