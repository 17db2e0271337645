"""A counter kept on the far side of a TCP connection: each tick sends the next number through a
connection to its own listener and prints what comes back ("count N"). The count carries on
after a restore only if the connection came back established, with its queues."""
import socket
import time

listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen()
client = socket.create_connection(listener.getsockname())
server, _ = listener.accept()
i = 0
while True:
    i += 1
    client.sendall(b"%d\n" % i)
    got = server.recv(64)
    print("count", int(got), flush=True)
    time.sleep(0.1)
