"""A client that keeps a TCP connection to a server, and reconnects at once after a restore.

Usage: reconnecting_client.py HOST PORT CONTROL_DIR. It sends "ping N" every 0.1 s and prints
the server's answers. A restore on another node (or with `tcpRestore: close`) brings its
connection back closed; rather than wait for the next send to fail, it watches crik's control
dir and reconnects as soon as `restored` appears (and says how long it was away).
"""
import json
import os
import socket
import sys
import time

HOST, PORT, CONTROL = sys.argv[1], int(sys.argv[2]), sys.argv[3]
RESTORED = os.path.join(CONTROL, "restored")


def connect():
    while True:
        try:
            return socket.create_connection((HOST, PORT), timeout=2)
        except OSError:
            time.sleep(0.1)


conn = connect()
print("connected", flush=True)
n = 0
while True:
    if os.path.exists(RESTORED):
        with open(RESTORED) as f:
            info = json.load(f)
        os.remove(RESTORED)
        conn.close()
        conn = connect()
        print(f"reconnected after restore of {info['checkpoint']} (away {info['downtimeMs']} ms)", flush=True)
    n += 1
    try:
        conn.sendall(f"ping {n}\n".encode())
        print(conn.recv(64).decode().strip(), flush=True)
    except OSError as e:
        print(f"connection lost: {e}", flush=True)
        conn = connect()
    time.sleep(0.1)
