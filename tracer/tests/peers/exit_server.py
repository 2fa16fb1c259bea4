#!/usr/bin/env python3
"""A server that dies mid-request, for tracer's fault tests: accepts one connection,
reads the request head, and exits without answering. No tracing code. Prints "PORT <n>"."""
import os
import socket

listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(1)
print(f"PORT {listener.getsockname()[1]}", flush=True)
connection, _ = listener.accept()
data = b""
while b"\r\n\r\n" not in data:
    chunk = connection.recv(4096)
    if not chunk:
        break
    data += chunk
os._exit(3)
