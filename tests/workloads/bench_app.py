"""Benchmark workload: MIB MiB of incompressible memory spread over CHILDREN+1 processes; the
parent answers PING with PONG on HOST:PORT (HOST: 127.0.0.1 unless given; so "answering again"
is measurable) and,
on CHECK, re-hashes all of its memory and answers with the digest (to verify a restore)."""
import hashlib
import os
import socket
import sys
import time

port, mib, children = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
host = sys.argv[4] if len(sys.argv) > 4 else "127.0.0.1"
share = mib // (children + 1)


def hold(n_mib):
    # os.urandom: non-zero, incompressible; touched so it is resident.
    return [bytearray(os.urandom(1 << 20)) for _ in range(n_mib)]


for _ in range(children):
    if os.fork() == 0:
        mem = hold(share)
        while True:
            time.sleep(3600)

mem = hold(mib - share * children)
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((host, port))
srv.listen(8)
print("ready", flush=True)
while True:
    conn, _ = srv.accept()
    with conn:
        req = conn.recv(64).strip()
        if req == b"CHECK":
            h = hashlib.sha256()
            for chunk in mem:
                h.update(chunk)
            conn.sendall(h.hexdigest().encode() + b"\n")
        else:
            conn.sendall(b"PONG\n")
