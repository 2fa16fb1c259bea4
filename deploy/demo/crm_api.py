#!/usr/bin/env python3
"""CRM: approves submitted orders (reading the Shop DB and the order's 3D file) and sends
them to the MES over RabbitMQ (mes.orders); takes the MES's prices (crm.prices) back into
the Shop DB and tells the shop (exchange shop.events) that the order is priced.

Fault switches, from the order's scenario: `crm-approval-slow` (a manual credit check holds
the approval for 3 s), `queue-overflow` (a catalogue re-pricing job occupies the MES, then a
burst of stock syncs overflows mes.orders, whose length limit drops the oldest message:
the order's), `late-delivery` (a 12 s re-pricing job ahead of the order: the MES's backlog),
`status-out-of-sync` (the CRM takes a price cached from an earlier quote, records
PRICE_CALCULATED and never asks the MES)."""
import argparse
import json
import threading
import time

import pika
import psycopg

from service import call, serve

config = {}
# mes.orders as the MES declares it: at most 8 waiting messages, the oldest dropped.
MES_QUEUE = {"x-max-length": 8, "x-overflow": "drop-head"}


def db():
    return psycopg.connect(host="127.0.0.1", port=config["db_port"], user="postgres", dbname="postgres", autocommit=True)


def broker():
    return pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", config["amqp_port"], heartbeat=0))


def declare_shop_events(channel):
    channel.exchange_declare("shop.events", "fanout", durable=True)


def tell_shop(channel, order_id, status):
    """The shop shows the customer where the order is."""
    channel.basic_publish("shop.events", "", json.dumps({"order_id": order_id, "status": status}).encode(),
                          pika.BasicProperties(content_type="application/json", message_id=order_id))


def job(channel, name, seconds):
    """A batch job for the MES, sharing its queue (no order in it)."""
    channel.basic_publish("", "mes.orders", json.dumps({"job": name, "seconds": seconds}).encode(),
                          pika.BasicProperties(content_type="application/json", delivery_mode=2))


def approval(handler, match, body):
    order_id = match[1]
    with db() as connection:
        row = connection.execute("SELECT scenario, state FROM orders WHERE order_id = %s", (order_id,)).fetchone()
    if row is None:
        return 404, {"order_id": order_id, "error": "unknown order"}
    scenario = row[0]
    # The CRM checks the customer's 3D file before it approves the order.
    status, _ = call(config["storage"], "GET", f"/objects/{order_id}")
    if status != 200:
        return 409, {"order_id": order_id, "error": f"no 3D file (storage answered {status})"}
    if scenario == "crm-approval-slow":
        time.sleep(3)
    message = json.dumps({"order_id": order_id, "scenario": scenario, "model": f"/objects/{order_id}"})
    connection = broker()
    try:
        channel = connection.channel()
        channel.queue_declare("mes.orders", durable=True, arguments=MES_QUEUE)
        declare_shop_events(channel)
        channel.confirm_delivery()
        if scenario == "status-out-of-sync":
            with db() as database:
                database.execute("UPDATE orders SET state = %s, price = %s WHERE order_id = %s",
                                 ("PRICE_CALCULATED", 450, order_id))
            tell_shop(channel, order_id, "PRICE_CALCULATED")
            return 202, {"order_id": order_id, "stage": "priced from an earlier quote"}
        if scenario in ("queue-overflow", "late-delivery"):
            job(channel, "reprice-catalogue", 3 if scenario == "queue-overflow" else 12)
        channel.basic_publish("", "mes.orders", message.encode(),
                              pika.BasicProperties(content_type="application/json", message_id=order_id, delivery_mode=2))
        if scenario == "queue-overflow":
            for _ in range(MES_QUEUE["x-max-length"]):
                job(channel, "stock-sync", 0)
    finally:
        connection.close()
    return 202, {"order_id": order_id, "stage": "sent to MES"}


def take_prices():
    connection = broker()
    channel = connection.channel()
    channel.queue_declare("crm.prices", durable=True)
    declare_shop_events(channel)

    def on_price(channel, method, properties, body):
        price = json.loads(body)
        with db() as database:
            if price.get("error"):
                database.execute("UPDATE orders SET state = %s WHERE order_id = %s", ("REJECTED", price["order_id"]))
            else:
                database.execute("UPDATE orders SET state = %s, price = %s WHERE order_id = %s",
                                 ("PRICE_CALCULATED", price["price"], price["order_id"]))
                tell_shop(channel, price["order_id"], "PRICE_CALCULATED")
        channel.basic_ack(method.delivery_tag)

    channel.basic_qos(prefetch_count=1)
    channel.basic_consume("crm.prices", on_price)
    channel.start_consuming()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--db-port", type=int, required=True)
    p.add_argument("--amqp-port", type=int, required=True)
    p.add_argument("--storage", required=True, help="http://127.0.0.1:PORT")
    a = p.parse_args()
    config.update(db_port=a.db_port, amqp_port=a.amqp_port, storage=a.storage)
    threading.Thread(target=take_prices, daemon=True).start()
    serve(a.port, [("POST", r"/orders/([^/]+)/approval", approval)])
