"""crik's preCheckpoint hook for cache_app.py: asks the app to drop its cache, and waits until
it has (exit 1 if it did not answer: crik logs it and, by default, checkpoints anyway).

Usage: drop_cache.py PORT
"""
import socket
import sys

with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5) as conn:
    conn.sendall(b"DROP")
    answer = conn.recv(2)
print(f"cache dropped: {answer == b'OK'}")
sys.exit(0 if answer == b"OK" else 1)
