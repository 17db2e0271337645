"""crik's preCheckpoint hook for headless Chromium: asks the browser, through its DevTools port,
to collect the garbage of every page's JavaScript heap and to release what it can (as under
critical memory pressure), so that the checkpoint does not carry memory the browser no longer
uses. Standard library only (the DevTools WebSocket is spoken here). Exits 1 when the browser
does not answer: crik logs it and, by default, checkpoints anyway.

Usage: chromium_gc.py PORT       (Chromium started with --remote-debugging-port=PORT)
"""
import base64
import json
import os
import socket
import struct
import sys
import urllib.request

port = int(sys.argv[1])


class DevTools:
    """One DevTools WebSocket (a page's or the browser's), requests answered in turn."""

    def __init__(self, ws_url):
        path = ws_url.split(f":{port}", 1)[1]
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                          f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)
        if b" 101 " not in head.split(b"\r\n")[0]:
            raise SystemExit(f"DevTools refused the WebSocket: {head.splitlines()[0]!r}")
        self.next_id = 0

    def _read(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise SystemExit("DevTools closed the connection")
            buf += chunk
        return buf

    def call(self, method, **params):
        self.next_id += 1
        data = json.dumps({"id": self.next_id, "method": method, "params": params}).encode()
        mask, n = os.urandom(4), len(data)
        size = bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n)
        self.sock.sendall(bytes([0x81]) + size + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))
        while True:  # events may come first
            _, b1 = self._read(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._read(8))[0]
            msg = json.loads(self._read(n))
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise SystemExit(f"{method}: {msg['error']}")
                return msg.get("result", {})


def main():
    base = f"http://127.0.0.1:{port}"
    pages = [t for t in json.load(urllib.request.urlopen(f"{base}/json/list", timeout=10)) if t["type"] == "page"]
    for page in pages:
        DevTools(page["webSocketDebuggerUrl"]).call("HeapProfiler.collectGarbage")
    browser = json.load(urllib.request.urlopen(f"{base}/json/version", timeout=10))["webSocketDebuggerUrl"]
    DevTools(browser).call("Memory.simulatePressureNotification", level="critical")
    print(f"garbage collected in {len(pages)} page(s), memory pressure signalled")


main()
