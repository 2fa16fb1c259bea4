#!/usr/bin/env python3
"""A steady client for tracer's fault tests: GET <path><n> over ONE keep-alive
connection every --interval seconds for --seconds (or, with --until-stdin-closes, until
its standard input closes), no tracing code. Prints one JSON line: how many requests
succeeded and failed (a failure is anything but a 200 answer)."""
import argparse
import http.client
import json
import sys
import threading
import time

p = argparse.ArgumentParser()
p.add_argument("--port", type=int, required=True)
p.add_argument("--path", required=True)
p.add_argument("--seconds", type=float, required=True)
p.add_argument("--interval", type=float, default=0.02)
p.add_argument("--until-stdin-closes", action="store_true")
a = p.parse_args()
stopped = threading.Event()
if a.until_stdin_closes:
    threading.Thread(target=lambda: (sys.stdin.read(), stopped.set()), daemon=True).start()
conn = http.client.HTTPConnection("127.0.0.1", a.port, timeout=10)
ok = failed = 0
deadline = time.time() + a.seconds
n = 0
while time.time() < deadline and not stopped.is_set():
    try:
        conn.request("GET", f"{a.path}{n}")
        response = conn.getresponse()
        response.read()
        if response.status == 200:
            ok += 1
        else:
            failed += 1
    except OSError:
        failed += 1
    n += 1
    time.sleep(a.interval)
print(json.dumps({"ok": ok, "failed": failed}), flush=True)
