#!/usr/bin/env python3
"""crik's restore against the raw `criu restore` CLI, many times over (a benchmark: nothing here
fails on a number).

bench.py's medians of 3 cannot tell a 5 % difference on a VM whose single restores of the same
1 GiB swing from 0.7 s to 3 s (see docs/performance.md). This runs N pairs (default 15) of the
1 GiB workload, crik's and raw CRIU's each checkpointed and then restored cold, alternating
which goes first, and prints both distributions side by side, rank by rank, with crik's own
account of each restore (total, CRIU's part, the page checksums computed alongside).

    scripts/bench/bench_restore.py [PAIRS]        (CRIK_BENCH_DIR: the image dir's volume)
"""
import os
import re
import signal
import statistics
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

MIB = 1024


def crik_restore(work, port):
    """crik checkpoints the app, then restores it; returns the restore's time (crik started ->
    the app answers) and crik's log line splitting it."""
    images, cfg = os.path.join(work, "crik-images"), os.path.join(work, "crik.yaml")
    with open(cfg, "w") as f:
        f.write(f"imageDir: {images}\n")
    cmd = [bench.PY, bench.APP, str(port), str(MIB), "0"]
    c = bench.crik_container(cfg, cmd)
    bench.ask(port)
    os.kill(bench.child_of(c.pid), signal.SIGTERM)
    _, err = c.communicate()
    if c.returncode != 0:
        raise SystemExit(f"crik checkpoint failed:\n{err}")
    bench.cold(images)
    t0 = time.monotonic()
    c = bench.crik_container(cfg, cmd)
    bench.ask(port)
    took = time.monotonic() - t0
    os.kill(bench.child_of(c.pid), signal.SIGKILL)
    _, err = c.communicate()
    m = re.search(r"in (\d+) ms \(CRIU (\d+) ms; page checksums (\d+) ms", err)
    return took, tuple(int(x) for x in m.groups()) if m else None


def main():
    pairs = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    base = os.environ.get("CRIK_BENCH_DIR", "/var/tmp")
    crik, raw, inside = [], [], []
    for i in range(pairs):
        work = tempfile.mkdtemp(prefix="crik-bench-", dir=base)
        try:
            for who in (("crik", "raw") if i % 2 == 0 else ("raw", "crik")):
                if who == "crik":
                    took, split = crik_restore(work, bench.free_port())
                    crik.append(took)
                    if split:
                        inside.append(split)
                else:
                    raw.append(bench.bench_raw(work, bench.free_port(), MIB, 0)[1])
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print(f"bench: pair {i + 1}/{pairs}: crik {crik[-1]:.2f}s raw {raw[-1]:.2f}s", file=sys.stderr, flush=True)

    def q(v, p):
        return statistics.quantiles(v, n=4, method="inclusive")[p]

    print(f"\nrestore of 1 GiB, image dir {base}, {pairs} alternated pairs (crik started / `criu restore` "
          f"run -> the app answers)")
    print(f"{'rank':>4} {'crik':>7} {'raw':>7} {'x':>5}")
    for rank, (a, b) in enumerate(zip(sorted(crik), sorted(raw)), 1):
        print(f"{rank:>4} {a:>6.2f}s {b:>6.2f}s {a / b:>5.2f}")
    for name, p in (("lower quartile", 0), ("median", 1), ("upper quartile", 2)):
        a, b = q(crik, p), q(raw, p)
        print(f"{name:<15} crik {a:.2f}s raw {b:.2f}s  {a / b:.2f}x")
    if inside:
        outside = [t - c for t, c, _ in inside]
        print(f"crik's own log, {len(inside)} restores: time outside CRIU {min(outside)}-{max(outside)} ms; "
              f"page checksums alongside CRIU {min(v for *_, v in inside)}-{max(v for *_, v in inside)} ms")
    a, b = statistics.median(crik), statistics.median(raw)
    print(f"goal: restore within 5% of raw CRIU (medians): {a / b:.2f}x  {'met' if a <= 1.05 * b else 'MISSED'}")


if __name__ == "__main__":
    main()
