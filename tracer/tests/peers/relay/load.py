#!/usr/bin/env python3
"""Service A of tracer's causality tests: --count concurrent requests to B, each on its own
connection and each with its own id — half in the path (GET /work/<id>), half in a JSON
body (POST /work {"item_id": <id>}). Prints one JSON line per request, {"id", "port"
(A's local port, which B sees as its peer), "status"}."""
import argparse
import http.client
import json
import threading

p = argparse.ArgumentParser()
p.add_argument("--port", type=int, required=True)
p.add_argument("--count", type=int, default=30)
p.add_argument("--prefix", required=True)
a = p.parse_args()
lock = threading.Lock()
start = threading.Barrier(a.count)


def one(n):
    item = f"{a.prefix}-{n:02d}"
    conn = http.client.HTTPConnection("127.0.0.1", a.port, timeout=30)
    conn.connect()
    port = conn.sock.getsockname()[1]
    start.wait()
    if n % 2:
        body = json.dumps({"item_id": item})
        conn.request("POST", "/work", body=body, headers={"Content-Type": "application/json"})
    else:
        conn.request("GET", f"/work/{item}")
    response = conn.getresponse()
    response.read()
    conn.close()
    with lock:
        print(json.dumps({"id": item, "port": port, "status": response.status}), flush=True)


threads = [threading.Thread(target=one, args=(n,)) for n in range(a.count)]
for t in threads:
    t.start()
for t in threads:
    t.join()
