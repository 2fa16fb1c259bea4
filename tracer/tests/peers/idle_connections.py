#!/usr/bin/env python3
"""Opens --count idle TCP connections between two processes of its own (a parent that
accepts, a forked child that connects: each end in a different process, as within the
file-descriptor limit) and holds them for --seconds, no tracing code. With --request,
each connection first carries one HTTP/1.1 exchange, as a keep-alive connection of a pool
does between requests. Prints "OPEN <n>" once all are established, then "DONE"."""
import argparse
import os
import resource
import socket
import time

p = argparse.ArgumentParser()
p.add_argument("--count", type=int, required=True)
p.add_argument("--seconds", type=float, required=True)
p.add_argument("--request", action="store_true")
a = p.parse_args()
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
if hard < a.count + 100:
    raise SystemExit(f"RLIMIT_NOFILE hard limit {hard} is below {a.count + 100}")
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(4096)
port = listener.getsockname()[1]
ready_read, ready_write = os.pipe()
child = os.fork()
if child == 0:
    listener.close()
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(a.count)]
    if a.request:
        for s in clients:
            s.sendall(b"GET /pool HTTP/1.1\r\nHost: pool\r\n\r\n")
        for s in clients:
            answer = b""
            while not answer.endswith(b"\r\n\r\n"):
                chunk = s.recv(4096)
                if not chunk:
                    os._exit(1)  # the server is gone: its side reports it
                answer += chunk
    os.write(ready_write, b"x")
    time.sleep(a.seconds)
    for s in clients:
        s.close()
    os._exit(0)
servers = [listener.accept()[0] for _ in range(a.count)]
if a.request:
    for s in servers:
        request = b""
        while not request.endswith(b"\r\n\r\n"):
            chunk = s.recv(4096)
            if not chunk:
                raise SystemExit("a client closed before its request")
            request += chunk
        s.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")
os.read(ready_read, 1)
print(f"OPEN {len(servers)}", flush=True)
time.sleep(a.seconds)
for s in servers:
    s.close()
os.waitpid(child, 0)
print("DONE", flush=True)
