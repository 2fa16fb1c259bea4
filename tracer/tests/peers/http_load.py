#!/usr/bin/env python3
"""Load for tracer's sampling test: --count GET requests over one keep-alive connection,
plain http.client, no tracing code. Prints how many answers had each status."""
import argparse
import collections
import http.client
import json

p = argparse.ArgumentParser()
p.add_argument("--port", type=int, required=True)
p.add_argument("--count", type=int, required=True)
p.add_argument("--path", required=True, help="prefix; the request number is appended")
a = p.parse_args()
conn = http.client.HTTPConnection("127.0.0.1", a.port, timeout=10)
statuses = collections.Counter()
for n in range(a.count):
    conn.request("GET", f"{a.path}{n}")
    response = conn.getresponse()
    response.read()
    statuses[response.status] += 1
conn.close()
print(json.dumps(statuses))
