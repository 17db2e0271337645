"""State kept in POSIX shared memory (/dev/shm/crik-shm) and guarded by a POSIX semaphore
(multiprocessing's, a sem_open'd file in /dev/shm, unlinked at once), shared by two processes:
a child increments the counter in shared memory, the parent prints it. Lines: "shm N"."""
import multiprocessing
import os
import struct
import time
from multiprocessing import shared_memory

shm = shared_memory.SharedMemory(name="crik-shm", create=True, size=4096)
lock = multiprocessing.Semaphore(1)
struct.pack_into("Q", shm.buf, 0, 0)
if os.fork() == 0:
    while True:
        with lock:
            n = struct.unpack_from("Q", shm.buf, 0)[0]
            struct.pack_into("Q", shm.buf, 0, n + 1)
        time.sleep(0.1)
last = -1
while True:
    with lock:
        n = struct.unpack_from("Q", shm.buf, 0)[0]
    if n != last:
        print(f"shm {n}", flush=True)
        last = n
    time.sleep(0.05)
