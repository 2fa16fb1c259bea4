#!/usr/bin/env python3
"""HTTP client for the bench corpus: over one keep-alive connection (http.client, no
tracing code), --count times: POST /orders with a JSON order (~0.6 KiB), then
GET /prices/<order id>. Exits non-zero if an answer is not 2xx."""
import argparse
import http.client
import json

p = argparse.ArgumentParser()
p.add_argument("--port", type=int, required=True)
p.add_argument("--count", type=int, required=True)
a = p.parse_args()
conn = http.client.HTTPConnection("127.0.0.1", a.port, timeout=10)
for n in range(a.count):
    order = f"ORD-{n:06d}"
    body = json.dumps({
        "order_id": order, "status": "SUBMITTED", "customer": {"tier": "gold"},
        "items": [{"sku": f"RING-18K-{n}", "size": 54, "engraving": "for ever"}],
        "model": f"/objects/{order}.stl", "note": "x" * 300,
    })
    for method, path, payload in [("POST", "/orders", body), ("GET", f"/prices/{order}", None)]:
        headers = {"Content-Type": "application/json", "X-Request-Id": f"{n:016x}"}
        conn.request(method, path, body=payload, headers=headers)
        response = conn.getresponse()
        response.read()
        if not 200 <= response.status < 300:
            raise SystemExit(f"{method} {path}: {response.status}")
conn.close()
