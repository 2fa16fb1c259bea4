#!/usr/bin/env python3
"""Traffic for tracer's privacy sweep: every value of a JSON file ({"values": {kind:
[value, ...]}}) placed where a real shop would put it — URL paths, query strings,
headers, JSON and form bodies (HTTP, to --http); AMQP routing keys, headers and bodies
(published with pika to --amqp and consumed back); SQL literals plain, E'' and $$, and
statements whose error messages echo the value (psycopg to --pg). No tracing code.
Prints "done <requests>" at the end."""
import argparse
import http.client
import json
import urllib.parse

import pika
import psycopg


def http_requests(port, order_id, values):
    sent = 0
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def call(method, target, body=None, headers=None):
        nonlocal sent
        conn.request(method, target, body=body, headers=headers or {})
        conn.getresponse().read()
        sent += 1

    for value in values:
        quoted = urllib.parse.quote(value, safe="")
        utf8 = value.encode("utf-8").decode("latin-1")  # header bytes as sent on the wire
        call(
            "GET",
            f"/customers/{quoted}/orders?contact={quoted}&token={quoted}&page=2&{quoted}",
            headers={"X-Customer": utf8, "User-Agent": f"shop/1.0 ({utf8})", "Cookie": f"s={quoted}"},
        )
        body = json.dumps({"order_id": order_id, "email": value, "note": f"call {value}"})
        call("POST", "/orders", body=body.encode(), headers={"Content-Type": "application/json"})
        form = urllib.parse.urlencode({"name": value, "order_id": order_id})
        call("POST", f"/forms/{quoted}", body=form.encode(),
             headers={"Content-Type": "application/x-www-form-urlencoded"})
    conn.close()
    return sent


def amqp_messages(port, order_id, values):
    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
    channel = connection.channel()
    channel.exchange_declare("sweep", exchange_type="topic")
    channel.queue_declare("sweep.all")
    channel.queue_bind("sweep.all", "sweep", routing_key="#")
    for value in values:
        channel.basic_publish(
            "sweep",
            f"orders.{value}.created",
            json.dumps({"order_id": order_id, "contact": value}).encode(),
            pika.BasicProperties(headers={"x-customer": value}, content_type="application/json"),
        )
    received = 0
    while received < len(values):
        method, _, _ = channel.basic_get("sweep.all", auto_ack=True)
        if method is None:
            connection.sleep(0.05)
            continue
        received += 1
    connection.close()
    return received


def sql_statements(port, values):
    sent = 0
    with psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres",
                         autocommit=True) as db:
        for value in values:
            escaped = value.replace("'", "''")
            for statement in [
                f"SELECT '{escaped}' AS contact",
                f"SELECT E'{escaped}' AS contact",
                f"SELECT $${value}$$ AS contact",
                # Errors whose messages echo the value.
                f"SELECT '{escaped}'::int",
                f'SELECT * FROM "{value}"',
            ]:
                try:
                    db.execute(statement.encode())
                except psycopg.Error:
                    pass
                sent += 1
    return sent


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--values", required=True)
    parser.add_argument("--order-id", required=True)
    parser.add_argument("--http", type=int, required=True)
    parser.add_argument("--amqp", type=int, required=True)
    parser.add_argument("--pg", type=int, required=True)
    args = parser.parse_args()
    kinds = json.load(open(args.values))["values"]
    values = [v for vs in kinds.values() for v in vs]
    sent = http_requests(args.http, args.order_id, values)
    sent += amqp_messages(args.amqp, args.order_id, values)
    sent += sql_statements(args.pg, values)
    print(f"done {sent}", flush=True)


if __name__ == "__main__":
    main()
