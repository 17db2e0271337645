"""State in anonymous shared memory (mmap(-1): MAP_SHARED|MAP_ANONYMOUS, which CRIU dumps as
shmem pages, apart from each process's own), shared by two processes: a child increments a
counter in it, the parent prints it with a checksum of 4 MiB of patterned data beside it.
Lines: "anon N <checksum>"; the checksum never changes."""
import hashlib
import mmap
import os
import struct
import time

SIZE = 4 << 20
m = mmap.mmap(-1, SIZE)
m[8:] = bytes((i * 7 + 3) & 0xFF for i in range(SIZE - 8))
struct.pack_into("Q", m, 0, 0)
if os.fork() == 0:
    while True:
        n = struct.unpack_from("Q", m, 0)[0]
        struct.pack_into("Q", m, 0, n + 1)
        time.sleep(0.1)
last = -1
while True:
    n = struct.unpack_from("Q", m, 0)[0]
    if n != last:
        print(f"anon {n} {hashlib.sha256(m[8:]).hexdigest()[:16]}", flush=True)
        last = n
    time.sleep(0.05)
