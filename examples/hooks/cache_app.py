"""A worker with a cache it can rebuild: 128 MiB of it, dropped on request before a checkpoint.

Usage: cache_app.py PORT. It counts on stdout ("count N"), and answers "DROP" on
127.0.0.1:PORT by dropping its cache (then "OK"): crik's preCheckpoint hook asks it
(drop_cache.py), so the checkpoint holds only the state that matters.
"""
import gc
import os
import socket
import sys
import threading
import time

PORT = int(sys.argv[1])
cache = {i: os.urandom(1 << 20) for i in range(128)}  # rebuilt on demand after a restore


def control():
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", PORT))
    listener.listen()
    while True:
        conn, _ = listener.accept()
        with conn:
            if conn.recv(16) == b"DROP":
                cache.clear()
                gc.collect()
                conn.sendall(b"OK")


threading.Thread(target=control, daemon=True).start()
print("ready", flush=True)
count = 0
while True:
    count += 1
    print(f"count {count}", flush=True)
    time.sleep(0.1)
