"""An in-memory key-value server on HOST:PORT (HOST: 127.0.0.1 unless given), one thread,
many clients.

Lines: SET k v -> OK, GET k -> value or NIL, COUNT -> n, PID -> pid."""
import os
import selectors
import socket
import sys

port = int(sys.argv[1])
host = sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1"
data = {}
sel = selectors.DefaultSelector()
srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((host, port))
srv.listen(16)
sel.register(srv, selectors.EVENT_READ)
buffers = {}
print(f"listening {port}", flush=True)


def answer(line):
    parts = line.split(" ", 2)
    if parts[0] == "SET" and len(parts) == 3:
        data[parts[1]] = parts[2]
        return "OK"
    if parts[0] == "GET" and len(parts) == 2:
        return data.get(parts[1], "NIL")
    if parts[0] == "COUNT":
        return str(len(data))
    if parts[0] == "PID":
        return str(os.getpid())
    return "ERR"


while True:
    for key, _ in sel.select():
        if key.fileobj is srv:
            conn, _ = srv.accept()
            buffers[conn] = b""
            sel.register(conn, selectors.EVENT_READ)
            continue
        conn = key.fileobj
        try:
            chunk = conn.recv(65536)
        except OSError:
            chunk = b""
        if not chunk:
            sel.unregister(conn)
            buffers.pop(conn, None)
            conn.close()
            continue
        buffers[conn] += chunk
        *lines, buffers[conn] = buffers[conn].split(b"\n")
        replies = [answer(l.decode()) for l in lines]
        conn.sendall("".join(r + "\n" for r in replies).encode())
