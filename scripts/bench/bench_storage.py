#!/usr/bin/env python3
"""Object-storage figures, side by side in one run (a benchmark: nothing fails on a number).

Against a real S3 server (s3s-fs on 127.0.0.1, its data on this machine's disk):
  - a 1 GiB app (random bytes): the first, full checkpoint vs the final one after 10 % of its
    memory changed (restored in between, as after a periodic checkpoint): bytes sent, time
  - compression ratio and throughput of the upload on random bytes and on a Python heap
  - restore on a new node (empty image dir): download time and throughput
  - the same checkpoint's files uploaded and downloaded by boto3 (the AWS SDK for Python),
    against crik's upload and download throughput
Three ways: CRIU dumping into the image dir (disk), into a memory staging dir (stagingDir on
/dev/shm), both with streamPages off; and streamed (the default: crik is CRIU's page server and
uploads pages as they arrive). Then the streamed incremental final checkpoint with the prefix's
lease (the default) and without it (`lease.enabled: false`), alternated BENCH_LEASE_RUNS times
(3), medians side by side. Goals (on the default, streamed): the incremental final checkpoint
sends <= 15 % of the full one's bytes and takes <= 0.35x its time; crik's upload throughput >=
boto3's; the lease costs < 5 % of the incremental final checkpoint's time; with a key (sealed chunks and
manifests) the incremental final checkpoint and the restore take <= 1.10x their time without.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import CRIK, NS, PY, REPO, ask, child_of, free_port  # noqa: E402

APP = os.path.join(REPO, "tests", "workloads", "bench_storage_app.py")
S3S = os.path.expanduser("~/.cargo/bin/s3s-fs")
KEYS = {"AWS_ACCESS_KEY_ID": "bench-access", "AWS_SECRET_ACCESS_KEY": "bench-secret-key"}
BUCKET = "bench"


def events(stderr):
    out = []
    for line in stderr.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def event(evs, name):
    found = [e for e in evs if e.get("event") == name]
    if not found:
        raise SystemExit(f"no {name} event")
    return found[-1]


class Crik:
    def __init__(self, cfg, cmd):
        env = dict(os.environ, **KEYS)
        self.p = subprocess.Popen([*NS, CRIK, "run", "--config", cfg, "--", *cmd], env=env,
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def term(self):
        os.sync()  # as scripts/bench/bench.py: no dirty pages of an earlier step in the timed one
        t0 = time.monotonic()
        os.kill(child_of(self.p.pid), signal.SIGTERM)
        _, err = self.p.communicate()
        took = time.monotonic() - t0
        if self.p.returncode != 0:
            raise SystemExit(f"crik failed:\n{err[-3000:]}")
        return took, events(err)

    def kill(self):
        os.kill(child_of(self.p.pid), signal.SIGKILL)
        _, err = self.p.communicate()
        return events(err)


def config(work, name, port_s3, prefix, staging=None, stream=False, lease=True, key=None):
    cfg = os.path.join(work, f"{name}.yaml")
    extra = f"  stagingDir: {staging}\n" if staging else ""
    extra += "" if stream else "  streamPages: false\n"
    extra += "" if lease else "  lease:\n    enabled: false\n"
    extra += f"encryption:\n  keyFiles: [{key}]\n" if key else ""
    open(cfg, "w").write(f"imageDir: {os.path.join(work, name)}\nlogFormat: json\n"
                         f"storage:\n  url: s3://{BUCKET}/{prefix}\n  endpoint: http://127.0.0.1:{port_s3}\n{extra}")
    return cfg


def full_then_incremental(work, port_s3, mib, prefix, staging, stream=False, lease=True, key=None):
    """A full checkpoint, a restore on another node, 10 % of the memory changed, the final one."""
    port = free_port()
    cmd = [PY, APP, str(port), str(mib), "random"]
    c = Crik(config(work, f"{prefix}-node1", port_s3, prefix, staging, stream, lease, key), cmd)
    ask(port)
    before = ask(port, b"CHECK")
    full_s, ev = c.term()
    t0 = time.monotonic()
    c = Crik(config(work, f"{prefix}-node2", port_s3, prefix, staging, stream, lease, key), cmd)
    ask(port)
    restore_s = time.monotonic() - t0
    if ask(port, b"CHECK") != before:
        raise SystemExit("the restored app's memory differs")
    ask(port, b"MUTATE 10")
    inc_s, ev2 = c.term()
    return {"full_s": full_s, "full": event(ev, "checkpoint_uploaded"), "full_fin": event(ev, "checkpoint_finished"),
            "inc_s": inc_s, "inc": event(ev2, "checkpoint_uploaded"), "inc_fin": event(ev2, "checkpoint_finished"),
            "down": event(ev2, "download_finished"), "restore_s": restore_s,
            "src": os.path.join(work, f"{prefix}-node1")}


def boto3_figures(port_s3, src):
    import boto3
    from boto3.s3.transfer import TransferConfig
    s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port_s3}", region_name="us-east-1",
                      aws_access_key_id=KEYS["AWS_ACCESS_KEY_ID"], aws_secret_access_key=KEYS["AWS_SECRET_ACCESS_KEY"])
    tc = TransferConfig(max_concurrency=8)
    files = [os.path.join(d, f) for d, _, fs in os.walk(src) for f in fs]
    total = sum(os.path.getsize(f) for f in files)
    t0 = time.monotonic()
    for f in files:
        s3.upload_file(f, BUCKET, "boto3/" + os.path.relpath(f, src), Config=tc)
    up = time.monotonic() - t0
    dst = tempfile.mkdtemp(prefix="crik-bench-boto3-")
    t0 = time.monotonic()
    for f in files:
        s3.download_file(BUCKET, "boto3/" + os.path.relpath(f, src), os.path.join(dst, str(hash(f))), Config=tc)
    down = time.monotonic() - t0
    shutil.rmtree(dst)
    return total, up, down


def main():
    mib = int(os.environ.get("BENCH_MIB", "1024"))
    if not os.path.exists(S3S):
        raise SystemExit("s3s-fs missing: run scripts/setup.sh")
    try:
        import boto3  # noqa: F401
    except ImportError:
        subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "python3-boto3"],
                       check=True, stdout=subprocess.DEVNULL)
    work = tempfile.mkdtemp(prefix="crik-bench-s3-")
    os.makedirs(os.path.join(work, "s3", BUCKET))
    port_s3 = free_port()
    server = subprocess.Popen([S3S, "--host", "127.0.0.1", "--port", str(port_s3), "--access-key",
                               KEYS["AWS_ACCESS_KEY_ID"], "--secret-key", KEYS["AWS_SECRET_ACCESS_KEY"],
                               os.path.join(work, "s3")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    rows = []
    try:
        # 1. Full vs incremental, 1 GiB of random bytes: CRIU dumping into the image dir (disk),
        # then into a memory staging dir (stagingDir on /dev/shm, a tmpfs).
        disk = full_then_incremental(work, port_s3, mib, "disk", None)
        shm = tempfile.mkdtemp(prefix="crik-bench-staging-", dir="/dev/shm")
        try:
            memory = full_then_incremental(work, port_s3, mib, "memory", shm)
        finally:
            shutil.rmtree(shm, ignore_errors=True)
        if memory["full_fin"].get("staging") != "memory" or memory["inc_fin"].get("staging") != "memory":
            raise SystemExit("the memory-staging run did not dump into memory (no room in /dev/shm?)")
        streamed = full_then_incremental(work, port_s3, mib, "streamed", None, stream=True)
        if "streamed" not in streamed["full_fin"].get("staging", "") + streamed["inc_fin"].get("staging", "x"):
            raise SystemExit("the streamed run did not stream")
        # The lease's cost: the streamed incremental final checkpoint with and without it,
        # alternated; each run's data removed after it (1 GiB in the bucket each).
        # And sealed with a key (encryption.keyFiles), alternated with the same runs.
        keyfile = os.path.join(work, "crik.key")
        with open(keyfile, "wb") as f:
            f.write(subprocess.run([CRIK, "keygen"], check=True, capture_output=True).stdout)
        lease_s = {True: [], False: []}
        sealed_s, sealed_restore, plain_restore = [], [], []
        sealed_bytes, plain_bytes = [], []
        for i in range(int(os.environ.get("BENCH_LEASE_RUNS", "3"))):
            for lease, key in ((True, None), (False, None), (True, keyfile)):
                prefix = f"lease-{'on' if lease else 'off'}{'-key' if key else ''}-{i}"
                r = full_then_incremental(work, port_s3, mib, prefix, None, stream=True, lease=lease, key=key)
                share = r["inc"]["sent_bytes"] / max(r["full"]["sent_bytes"], 1)
                if key:
                    sealed_s.append(r["inc_s"])
                    sealed_restore.append(r["restore_s"])
                    sealed_bytes.append(share)
                else:
                    lease_s[lease].append(r["inc_s"])
                    if lease:
                        plain_restore.append(r["restore_s"])
                        plain_bytes.append(share)
                shutil.rmtree(os.path.join(work, "s3", BUCKET, prefix), ignore_errors=True)
                for node in ("node1", "node2"):
                    shutil.rmtree(os.path.join(work, f"{prefix}-{node}"), ignore_errors=True)
        # 2. A Python heap: compression on realistic memory.
        port_h = free_port()
        cfg3 = config(work, "heap", port_s3, "heap")
        c = Crik(cfg3, [PY, APP, str(port_h), str(max(mib // 4, 16)), "heap"])
        ask(port_h, timeout=900)
        _, ev3 = c.term()
        heap = event(ev3, "checkpoint_uploaded")
        # 3. boto3 on the same checkpoint's files (the disk run's first node kept them).
        src = os.path.join(disk["src"], "checkpoints")
        if not os.listdir(src):
            src = os.path.join(disk["src"], "retired")
        total, b_up, b_down = boto3_figures(port_s3, src)
    finally:
        server.kill()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)

    mb = 1e6
    for name, r in (("disk staging", disk), ("memory staging", memory), ("streamed", streamed)):
        full, inc, fd, idump = r["full"], r["inc"], r["full_fin"], r["inc_fin"]
        rows.append((f"{name}: full checkpoint, bytes sent", f"{full['sent_bytes'] / mb:.0f} MB of {full['bytes'] / mb:.0f} MB"))
        rows.append((f"{name}: full, SIGTERM -> exit", f"{r['full_s']:.2f} s (CRIU dump {fd['dump_ms'] / 1000:.2f} s, upload {full['duration_ms'] / 1000:.2f} s)"))
        rows.append((f"{name}: incremental final (10 % changed), sent", f"{inc['sent_bytes'] / mb:.0f} MB, {inc['new_chunks']} of {inc['chunks']} chunks"))
        rows.append((f"{name}: incremental, SIGTERM -> exit", f"{r['inc_s']:.2f} s (CRIU dump {idump['dump_ms'] / 1000:.2f} s, upload {inc['duration_ms'] / 1000:.2f} s)"))
        r["bytes_ratio"] = inc["sent_bytes"] / max(full["sent_bytes"], 1)
        r["time_ratio"] = r["inc_s"] / r["full_s"]
        rows.append((f"{name}: incremental / full, bytes", f"{r['bytes_ratio'] * 100:.1f} %"))
        rows.append((f"{name}: incremental / full, time", f"{r['time_ratio']:.2f}x"))
    full, down, restore_s = disk["full"], disk["down"], disk["restore_s"]
    bytes_ratio, time_ratio = streamed["bytes_ratio"], streamed["time_ratio"]
    rows.append(("random bytes: ratio, upload throughput", f"{full['bytes'] / max(full['sent_bytes'], 1):.2f}x, {full['bytes'] / mb / (full['duration_ms'] / 1000):.0f} MB/s"))
    rows.append(("python heap: ratio, upload throughput", f"{heap['bytes'] / max(heap['sent_bytes'], 1):.2f}x, {heap['bytes'] / mb / (heap['duration_ms'] / 1000):.0f} MB/s"))
    rows.append(("restore on a new node: start -> answering", f"{restore_s:.2f} s (download {down['duration_ms'] / 1000:.2f} s, {down['bytes'] / mb / (down['duration_ms'] / 1000):.0f} MB/s)"))
    rows.append(("boto3, same files: upload, download", f"{total / mb / b_up:.0f} MB/s, {total / mb / b_down:.0f} MB/s"))
    rows.append(("crik / boto3 upload throughput", f"{(full['bytes'] / (full['duration_ms'] / 1000)) / (total / b_up):.2f}x"))
    rows.append(("crik / boto3 download throughput", f"{(down['bytes'] / (down['duration_ms'] / 1000)) / (total / b_down):.2f}x"))
    on, off = (sorted(lease_s[k])[len(lease_s[k]) // 2] for k in (True, False))
    rows.append(("streamed incremental, lease on / off (medians)", f"{on:.2f} s / {off:.2f} s: {(on / off - 1) * 100:+.1f} % "
                 f"(on: {', '.join(f'{x:.2f}' for x in lease_s[True])}; off: {', '.join(f'{x:.2f}' for x in lease_s[False])})"))
    med = lambda v: sorted(v)[len(v) // 2]  # noqa: E731
    inc_key, rest_key, rest_plain = med(sealed_s), med(sealed_restore), med(plain_restore)
    rows.append(("streamed incremental, key / no key (medians)", f"{inc_key:.2f} s / {on:.2f} s: {inc_key / on:.2f}x"))
    rows.append(("restore on a new node, key / no key (medians)", f"{rest_key:.2f} s / {rest_plain:.2f} s: {rest_key / rest_plain:.2f}x"))
    rows.append(("incremental bytes sent / full, key / no key (medians)",
                 f"{med(sealed_bytes) * 100:.1f} % / {med(plain_bytes) * 100:.1f} % (dedup across checkpoints, sealed or not)"))
    rows.append(("goal: incremental bytes <= 15 % (streamed)", "met" if bytes_ratio <= 0.15 else "MISSED"))
    rows.append(("goal: with a key <= 1.10x (incremental, restore)",
                 "met" if inc_key <= on * 1.10 and rest_key <= rest_plain * 1.10 else "MISSED"))
    rows.append(("goal: the lease costs < 5 % of the incremental time", "met" if on < off * 1.05 else "MISSED"))
    rows.append(("goal: incremental time <= 0.35x (streamed)", "met" if time_ratio <= 0.35 else "MISSED"))
    rows.append(("goal: upload >= boto3", "met" if full['bytes'] / (full['duration_ms'] / 1000) >= total / b_up else "MISSED"))
    print(f"storage benchmark, {mib} MiB app, s3s-fs on 127.0.0.1 (2 cores)")
    for k, v in rows:
        print(f"{k:<56} {v}")


if __name__ == "__main__":
    main()
