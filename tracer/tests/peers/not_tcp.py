#!/usr/bin/env python3
"""HTTP spoken over sockets that are not TCP: a UNIX stream socket (accepted, so the kernel
side would follow it like a TCP server socket) and a connected UDP socket. tracer must
parse neither. Two sets: one created before the agent started (prints "ready", then waits
for a line on stdin) — only /proc can tell what those are — and one created after, which
the kernel side recognises at socket(). Each exchange asks GET /unix-… or GET /udp-… and
gets a 200. Prints "done", then keeps the sockets open until stdin closes (tracer looks a
socket up in /proc while it exists)."""
import os
import socket
import sys
import tempfile
import threading

REQUEST = b"GET /%s HTTP/1.1\r\nHost: x\r\n\r\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
kept = []


def sockets():
    path = os.path.join(tempfile.mkdtemp(), "http.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    udp_server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp_server.bind(("127.0.0.1", 0))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    kept.extend([listener, udp_server, udp])
    return path, listener, udp_server, udp


def exchange(name, sockets):
    path, listener, udp_server, udp = sockets

    def serve():
        conn, _ = listener.accept()
        kept.append(conn)
        conn.recv(4096)
        conn.sendall(RESPONSE)

    thread = threading.Thread(target=serve)
    thread.start()
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    kept.append(client)
    client.connect(path)
    client.sendall(REQUEST % f"unix-{name}".encode())
    assert client.recv(4096).startswith(b"HTTP/1.1 200")
    thread.join()
    udp.connect(udp_server.getsockname())
    udp.send(REQUEST % f"udp-{name}".encode())
    _, peer = udp_server.recvfrom(4096)
    udp_server.sendto(RESPONSE, peer)
    assert udp.recv(4096).startswith(b"HTTP/1.1 200")


before = sockets()
print("ready", flush=True)
sys.stdin.readline()
exchange("before", before)
exchange("after", sockets())
print("done", flush=True)
sys.stdin.read()
for s in kept:
    s.close()
