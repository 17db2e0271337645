"""A minimal Chrome DevTools Protocol client (stdlib only): evaluates a JavaScript expression
in the first page target of the browser listening on 127.0.0.1:PORT and prints the result.

Usage: cdp.py PORT EXPRESSION"""
import base64
import json
import os
import socket
import struct
import sys
import urllib.request

port, expr = int(sys.argv[1]), sys.argv[2]
targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10))
page = next(t for t in targets if t["type"] == "page")
path = page["webSocketDebuggerUrl"].split(f":{port}", 1)[1]

s = socket.create_connection(("127.0.0.1", port), timeout=10)
key = base64.b64encode(os.urandom(16)).decode()
s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
          f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
head = b""
while b"\r\n\r\n" not in head:
    head += s.recv(1)
if b" 101 " not in head.split(b"\r\n")[0]:
    raise SystemExit(f"no websocket: {head!r}")


def send(obj):
    data = json.dumps(obj).encode()
    mask = os.urandom(4)
    n = len(data)
    hdr = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n))
    s.sendall(hdr + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))


def recv_exact(n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise SystemExit("connection closed")
        buf += chunk
    return buf


def recv():
    b0, b1 = recv_exact(2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack(">H", recv_exact(2))[0]
    elif n == 127:
        n = struct.unpack(">Q", recv_exact(8))[0]
    return json.loads(recv_exact(n))


send({"id": 1, "method": "Runtime.evaluate", "params": {"expression": expr, "returnByValue": True}})
while True:
    msg = recv()
    if msg.get("id") == 1:
        print(json.dumps(msg["result"]["result"].get("value")))
        break
