#!/usr/bin/env python3
"""A psycopg connection opened and used BEFORE tracer starts (as a pooled connection is
after an agent restart), then used again: for tracer's mid-stream PostgreSQL test.
Prints {"ready", "pid", "backend_pid"} once connected and used; on a line on stdin runs
an insert and a select with parameters and an invalid statement, prints {"done",
"invalid"} (its SQLSTATE), and exits when stdin closes. No tracing code.
Usage: pg_pooled.py <port> <order-id>"""
import json
import os
import sys

import psycopg


def main():
    port, order = sys.argv[1], sys.argv[2]
    conn = psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres", autocommit=True)
    conn.execute("CREATE TABLE IF NOT EXISTS pooled_orders (order_id text PRIMARY KEY, status text)")
    backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    print(json.dumps({"ready": True, "pid": os.getpid(), "backend_pid": backend}), flush=True)
    sys.stdin.readline()
    conn.execute("INSERT INTO pooled_orders (order_id, status) VALUES (%s, %s)", (order, "SUBMITTED"))
    conn.execute("SELECT status FROM pooled_orders WHERE order_id = %s", (order,)).fetchone()
    invalid = None
    try:
        conn.execute("asdsdfdsf")
    except psycopg.Error as e:
        invalid = e.sqlstate
    print(json.dumps({"done": True, "invalid": invalid}), flush=True)
    sys.stdin.read()
    conn.close()


if __name__ == "__main__":
    main()
