"""Holds a POSIX message queue (/crikq) open, which CRIU cannot checkpoint, and counts."""
import ctypes, os, time, sys
libc = ctypes.CDLL("libc.so.6", use_errno=True)
O_CREAT, O_RDWR = 0o100, 0o2
fd = libc.mq_open(b"/crikq", O_CREAT | O_RDWR, 0o600, None)
print("mq fd", fd, ctypes.get_errno(), flush=True)
i = 0
while True:
    i += 1; print("count", i, flush=True); time.sleep(0.2)
