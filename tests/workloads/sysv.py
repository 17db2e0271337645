"""State kept in System V shared memory, shared by two processes: a child increments a counter
in the segment, the parent prints it. Lines: "sysv N". (SysV IPC lives in the IPC namespace.)"""
import ctypes
import os
import time

libc = ctypes.CDLL("libc.so.6", use_errno=True)
libc.shmat.restype = ctypes.c_void_p
IPC_PRIVATE, IPC_CREAT = 0, 0o1000
shmid = libc.shmget(IPC_PRIVATE, 4096, IPC_CREAT | 0o600)
assert shmid >= 0, ctypes.get_errno()
addr = libc.shmat(shmid, None, 0)
assert addr not in (None, ctypes.c_void_p(-1).value), ctypes.get_errno()
counter = ctypes.c_uint64.from_address(addr)
if os.fork() == 0:
    while True:
        counter.value += 1
        time.sleep(0.1)
last = None
while True:
    if counter.value != last:
        last = counter.value
        print(f"sysv {last}", flush=True)
    time.sleep(0.05)
