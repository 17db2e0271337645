"""Storage benchmark workload: MIB MiB of memory, KIND "random" (incompressible bytes) or
"heap" (Python objects: dicts, strings, ints, as a real worker holds). Answers on 127.0.0.1:PORT:
PING -> PONG; CHECK -> sha256 of its memory; MUTATE P -> rewrites P % of it (the first P % of
its blocks: a working set), then answers DONE."""
import hashlib
import os
import socket
import sys

port, mib, kind = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]

if kind == "random":
    mem = [bytearray(os.urandom(1 << 20)) for _ in range(mib)]
else:
    # About 1 MiB per block: 4000 records of small strings and numbers.
    mem = [{i: (f"user-{b}-{i}", i * 7, [i, i + 1, f"v{i % 97}"]) for i in range(4000)} for b in range(mib * 2 // 5)]


def digest():
    h = hashlib.sha256()
    for block in mem:
        h.update(block if isinstance(block, bytearray) else repr(sorted(block.items())).encode())
    return h.hexdigest()


srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port))
srv.listen(8)
print("ready", flush=True)
while True:
    conn, _ = srv.accept()
    with conn:
        req = conn.recv(64).strip().split()
        if req[:1] == [b"CHECK"]:
            conn.sendall(digest().encode() + b"\n")
        elif req[:1] == [b"MUTATE"]:
            n = len(mem) * int(req[1]) // 100
            for i in range(n):
                mem[i] = bytearray(os.urandom(1 << 20)) if kind == "random" else {k: (v[0] + "!", v[1] + 1, v[2]) for k, v in mem[i].items()}
            conn.sendall(b"DONE\n")
        else:
            conn.sendall(b"PONG\n")
