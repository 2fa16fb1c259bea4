#!/usr/bin/env python3
"""An unmodified Python HTTPS client for tracer's TLS tests: POSTs a JSON order with an
Authorization header to URL, COUNT times on one keep-alive connection.

With --import-after SECONDS it waits before importing anything that loads libssl (ssl,
http.client), so the library is mapped late by dlopen, as lazily loading applications do.
Prints one JSON report: whether libssl was mapped before and after the import, and the
statuses it got."""
import argparse
import json
import os
import time


def libssl_mapped():
    with open("/proc/self/maps") as maps:
        return sorted({line.split()[-1] for line in maps if "libssl" in line})


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/orders")
    p.add_argument("--ca", required=True)
    p.add_argument("--order", default="T-1")
    p.add_argument("--token", default="tls-s3cret")
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--import-after", type=float, default=0.0)
    p.add_argument("--settle", type=float, default=0.0, help="pause after the import")
    a = p.parse_args()
    before = libssl_mapped()
    time.sleep(a.import_after)
    import http.client
    import ssl

    after = libssl_mapped()
    time.sleep(a.settle)
    context = ssl.create_default_context(cafile=a.ca)
    conn = http.client.HTTPSConnection(a.host, a.port, timeout=10, context=context)
    statuses = []
    for _ in range(a.count):
        body = json.dumps({"order_id": a.order, "item": "ring"})
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {a.token}"}
        conn.request("POST", a.path, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        statuses.append(response.status)
    conn.close()
    print(json.dumps({"pid": os.getpid(), "libssl_before": before, "libssl_after": after, "statuses": statuses}), flush=True)


if __name__ == "__main__":
    main()
