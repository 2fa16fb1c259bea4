#!/usr/bin/env python3
"""A plain TCP peer for tracer's capture tests. It contains no tracing code: tracer must
see its traffic from the kernel alone.

server: listens on 127.0.0.1, prints "PORT <n>", accepts one connection, reads until EOF,
        answers with --reply bytes, closes.
client: connects, optionally waits for a line on stdin ("go") before sending --send bytes,
        half-closes, reads the reply until EOF.
Both send and receive with the syscall family given by --family, and finally print one
JSON line: pid, fd, local and remote address, and length + SHA-256 of what went each way.
"""
import argparse
import hashlib
import json
import os
import socket
import sys


def pattern(n, seed):
    """Deterministic bytes the Rust side can regenerate: (i * 31 + seed) % 251."""
    return bytes((i * 31 + seed) % 251 for i in range(n))


def chunks(data, size):
    return [data[i:i + size] for i in range(0, len(data), size)]


def send_all(sock, data, family, chunk):
    for part in chunks(data, chunk):
        while part:
            if family == "write_read":
                n = os.write(sock.fileno(), part)
            elif family == "send_recv":
                n = sock.send(part)
            elif family == "sendto_recvfrom":
                n = sock.sendto(part, sock.getpeername())
            elif family == "sendmsg_recvmsg":
                third = max(1, len(part) // 3)
                n = sock.sendmsg([part[:third], part[third:2 * third], part[2 * third:]])
            elif family == "writev_readv":
                third = max(1, len(part) // 3)
                n = os.writev(sock.fileno(), [part[:third], part[third:2 * third], part[2 * third:]])
            elif family == "writev_readv_two":
                # A head and a body, as HTTP servers write (the kernel's two-segment path).
                half = max(1, len(part) // 2)
                n = os.writev(sock.fileno(), [part[:half], part[half:]])
            else:
                raise SystemExit(f"unknown family {family}")
            part = part[n:]


def recv_all(sock, family, chunk):
    received = bytearray()
    while True:
        if family == "write_read":
            data = os.read(sock.fileno(), chunk)
        elif family == "send_recv":
            data = sock.recv(chunk)
        elif family == "sendto_recvfrom":
            data, _ = sock.recvfrom(chunk)
        elif family == "sendmsg_recvmsg":
            bufs = [bytearray(max(1, chunk // 3)) for _ in range(3)]
            n, _, _, _ = sock.recvmsg_into(bufs)
            data = b"".join(bytes(b) for b in bufs)[:n]
        elif family == "writev_readv":
            bufs = [bytearray(max(1, chunk // 3)) for _ in range(3)]
            n = os.readv(sock.fileno(), bufs)
            data = b"".join(bytes(b) for b in bufs)[:n]
        elif family == "writev_readv_two":
            bufs = [bytearray(max(1, chunk // 2)) for _ in range(2)]
            n = os.readv(sock.fileno(), bufs)
            data = b"".join(bytes(b) for b in bufs)[:n]
        if not data:
            return bytes(received)
        received += data


def names(sock):
    """Addresses as "ip:port", read while the connection is surely up."""
    local, remote = sock.getsockname(), sock.getpeername()
    return f"{local[0]}:{local[1]}", f"{remote[0]}:{remote[1]}"


def report(sock, addresses, sent, received):
    local, remote = addresses
    print(json.dumps({
        "pid": os.getpid(),
        "fd": sock.fileno(),
        "local": local,
        "remote": remote,
        "sent_len": len(sent),
        "sent_sha256": hashlib.sha256(sent).hexdigest(),
        "recv_len": len(received),
        "recv_sha256": hashlib.sha256(received).hexdigest(),
    }), flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("role", choices=["server", "client", "files", "unrecognised"])
    p.add_argument("--family", default="send_recv")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--send", type=int, default=1000)
    p.add_argument("--reply", type=int, default=1000)
    p.add_argument("--chunk", type=int, default=300)
    p.add_argument("--wait", action="store_true", help="client: wait for a stdin line before sending")
    p.add_argument("--rounds", type=int, default=1, help="client: send/receive this many times")
    a = p.parse_args()

    if a.role == "files":
        # File and pipe I/O only: tracer must produce no payload records for these.
        path = f"/tmp/tracer-files-{os.getpid()}"
        with open(path, "wb") as f:
            f.write(pattern(100_000, 1))
        with open(path, "rb") as f:
            f.read()
        os.unlink(path)
        r, w = os.pipe()
        os.write(w, b"through a pipe" * 100)
        os.read(r, 100_000)
        print(json.dumps({"pid": os.getpid()}), flush=True)
        return

    if a.role == "unrecognised":
        # Both ends of a connection that speaks no protocol tracer parses, in this one
        # process; each phase starts on a stdin line, so the test can wait for the agent.
        print("READY", flush=True)
        sys.stdin.readline()
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
        for sender, receiver in [(client, server), (server, client)]:
            sender.sendall(b"\xff" * 300)
            receiver.recv(4096)
        print("SNIFFED", flush=True)
        sys.stdin.readline()
        for _ in range(a.rounds):
            client.sendall(b"\xfe" * 100)
            server.recv(4096)
        print("DONE", flush=True)
        return

    if a.role == "server":
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", a.port))
        listener.listen()
        print(f"PORT {listener.getsockname()[1]}", flush=True)
        conn, _ = listener.accept()
        addresses = names(conn)
        received = recv_all(conn, a.family, a.chunk)
        reply = pattern(a.reply, 2)
        send_all(conn, reply, a.family, a.chunk)
        report(conn, addresses, reply, received)
        conn.close()
        return

    sock = socket.create_connection(("127.0.0.1", a.port))
    addresses = names(sock)
    if a.wait:
        print("CONNECTED", flush=True)
        sys.stdin.readline()
    sent = pattern(a.send, 1)
    send_all(sock, sent, a.family, a.chunk)
    sock.shutdown(socket.SHUT_WR)
    received = recv_all(sock, a.family, a.chunk)
    report(sock, addresses, sent, received)
    sock.close()


if __name__ == "__main__":
    main()
