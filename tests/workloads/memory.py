"""A program holding a large in-memory structure whose output depends on all of it.

Every step mutates the structure and folds part of it into a running hash, so any lost or
corrupted page after a restore changes every later line. FAST=1 runs without pauses, to produce
the reference output of an uninterrupted run.
"""
import hashlib
import os
import random
import sys
import time

MIB = int(os.environ.get("MIB", "64"))
STEPS = int(os.environ.get("STEPS", "40"))
fast = os.environ.get("FAST") == "1"

rng = random.Random(42)
# Incompressible and deterministic, made 1 MiB at a time (randbytes caps a single call).
blob = bytearray(b"".join(rng.randbytes(1 << 20) for _ in range(MIB)))
table = {i: rng.getrandbits(64) for i in range(200_000)}
h = hashlib.sha256()
print(f"ready {MIB} MiB", flush=True)
for step in range(STEPS):
    stride = 4096 + step
    for off in range(step, len(blob), stride):
        blob[off] = (blob[off] + step) & 0xFF
    for k in range(step, len(table), 97):
        table[k] = (table[k] * 6364136223846793005 + step) & 0xFFFFFFFFFFFFFFFF
    h.update(blob[step * 65536:(step + 1) * 65536])
    h.update(str(sum(table[k] for k in range(step, len(table), 1009))).encode())
    print(f"step {step} {h.hexdigest()[:24]}", flush=True)
    if not fast:
        time.sleep(0.1)
print("done " + hashlib.sha256(blob).hexdigest()[:24], flush=True)
