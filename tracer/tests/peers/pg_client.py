#!/usr/bin/env python3
"""PostgreSQL client for tracer's database tests, using psycopg 3 as any application would
(extended query protocol with bound parameters); no tracing code. Prints one JSON line."""
import argparse
import json

import psycopg
from psycopg import errors

p = argparse.ArgumentParser()
p.add_argument("--port", type=int, required=True)
p.add_argument("--order", required=True)
a = p.parse_args()
result = {}
with psycopg.connect(host="127.0.0.1", port=a.port, user="postgres", dbname="postgres", autocommit=True) as conn:
    conn.execute("CREATE TABLE IF NOT EXISTS orders (order_id text PRIMARY KEY, status text, email text)")
    conn.execute("INSERT INTO orders (order_id, status, email) VALUES (%s, %s, %s)", (a.order, "SUBMITTED", "anna@example.com"))
    try:
        conn.execute("INSERT INTO orders (order_id, status) VALUES (%s, %s)", (a.order, "DUPLICATE"))
    except errors.UniqueViolation as e:
        result["duplicate"] = e.sqlstate
    with conn.transaction(force_rollback=True):
        conn.execute("UPDATE orders SET status = %s WHERE order_id = %s", ("CANCELLED", a.order))
    row = conn.execute("SELECT status FROM orders WHERE order_id = %s", (a.order,)).fetchone()
    result["status"] = row[0]
print(json.dumps(result), flush=True)
