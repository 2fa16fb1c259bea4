#!/usr/bin/env python3
"""HTTP spoken over sockets that are not TCP: a UNIX stream socket (accepted, so the kernel
side follows it like a TCP server socket) and a connected UDP socket. tracer must parse
neither. Each side asks GET /unix or GET /udp and gets a 200. Prints "done", then keeps
the sockets open until stdin closes (tracer looks a socket up in /proc while it exists)."""
import sys
import os
import socket
import tempfile
import threading

REQUEST = b"GET /%s HTTP/1.1\r\nHost: x\r\n\r\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"

path = os.path.join(tempfile.mkdtemp(), "http.sock")
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(path)
server.listen(1)


def serve():
    conn, _ = server.accept()
    conn.recv(4096)
    conn.sendall(RESPONSE)
    conn.recv(4096)  # until the client closes


thread = threading.Thread(target=serve)
thread.start()
client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
client.connect(path)
client.sendall(REQUEST % b"unix")
assert client.recv(4096).startswith(b"HTTP/1.1 200")

udp_server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp_server.bind(("127.0.0.1", 0))
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.connect(udp_server.getsockname())
udp.send(REQUEST % b"udp")
data, peer = udp_server.recvfrom(4096)
udp_server.sendto(RESPONSE, peer)
assert udp.recv(4096).startswith(b"HTTP/1.1 200")
print("done", flush=True)
sys.stdin.read()
client.close()
thread.join()
udp.close()
