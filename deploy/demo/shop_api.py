#!/usr/bin/env python3
"""Shop API: orders from the online shop. Keeps them in the Shop DB (PostgreSQL), stores
3D models in the file storage, and hands submitted orders to the CRM. Fault switches come
with the order (its "scenario"): a `db-failure` order is submitted with a quantity of 0,
which the Shop DB's schema refuses (the SUBMITTED write fails); `upload-hang` is passed on
to the storage. Status news from the CRM (exchange shop.events) reach the customer's order
page, and customers can look their order up (GET /orders/<id>)."""
import argparse
import json
import threading

import pika
import psycopg

from service import call, serve

config = {}


def db():
    return psycopg.connect(host="127.0.0.1", port=config["db_port"], user="postgres", dbname="postgres", autocommit=True)


def create(handler, match, body):
    order = json.loads(body)
    with db() as connection:
        connection.execute(
            "INSERT INTO orders (order_id, user_id, email, scenario, state) VALUES (%s, %s, %s, %s, %s)",
            (order["order_id"], order.get("user_id"), order.get("email"), order.get("scenario", "ok"), "INITIATED"),
        )
    return 201, {"order_id": order["order_id"], "stage": "created"}


def scenario_of(order_id):
    with db() as connection:
        row = connection.execute("SELECT scenario FROM orders WHERE order_id = %s", (order_id,)).fetchone()
    return row[0] if row else "ok"


def set_state(order_id, state):
    with db() as connection:
        connection.execute("UPDATE orders SET state = %s WHERE order_id = %s", (state, order_id))


def submit_order(order_id, quantity):
    with db() as connection:
        connection.execute("UPDATE orders SET state = %s, quantity = %s WHERE order_id = %s",
                           ("SUBMITTED", quantity, order_id))


def upload(handler, match, body):
    order_id = match[1]
    try:
        status, _ = call(config["storage"], "PUT", f"/objects/{order_id}", body,
                         headers={"X-Demo-Scenario": scenario_of(order_id)}, timeout=3)
    except OSError:
        return 504, {"order_id": order_id, "error": "file storage did not answer"}
    if status != 201:
        return 502, {"order_id": order_id, "error": f"file storage answered {status}"}
    set_state(order_id, "FILE_UPLOADED")
    return 201, {"order_id": order_id, "stage": "file uploaded"}


def lookup(handler, match, body):
    with db() as connection:
        row = connection.execute("SELECT state FROM orders WHERE order_id = %s", (match[1],)).fetchone()
    if row is None:
        return 404, {"order_id": match[1], "error": "unknown order"}
    return 200, {"order_id": match[1], "state": row[0]}


def take_status_news():
    """The CRM's news about orders (priced, …): shown on the customer's order page."""
    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", config["amqp_port"], heartbeat=0))
    channel = connection.channel()
    channel.exchange_declare("shop.events", "fanout", durable=True)
    channel.queue_declare("shop.status", durable=True)
    channel.queue_bind("shop.status", "shop.events")
    channel.basic_consume("shop.status", lambda ch, method, properties, body: ch.basic_ack(method.delivery_tag))
    channel.start_consuming()


def submit(handler, match, body):
    order_id = match[1]
    submit_order(order_id, json.loads(body).get("quantity", 1))
    status, reply = call(config["crm"], "POST", f"/orders/{order_id}/approval", {"order_id": order_id})
    if status != 202:
        return 502, {"order_id": order_id, "error": f"CRM answered {status}"}
    return 201, {"order_id": order_id, "stage": "submitted"}


SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    order_id text PRIMARY KEY,
    user_id text,
    email text,
    scenario text NOT NULL,
    state text NOT NULL,
    price integer,
    quantity integer,
    CONSTRAINT orders_quantity_positive CHECK (quantity > 0)
)"""

if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--db-port", type=int, required=True)
    p.add_argument("--storage", required=True, help="http://127.0.0.1:PORT")
    p.add_argument("--crm", required=True, help="http://127.0.0.1:PORT")
    p.add_argument("--amqp-port", type=int, required=True)
    a = p.parse_args()
    config.update(db_port=a.db_port, storage=a.storage, crm=a.crm, amqp_port=a.amqp_port)
    with db() as connection:
        connection.execute(SCHEMA)
    threading.Thread(target=take_status_news, daemon=True).start()
    serve(a.port, [
        ("POST", r"/orders", create),
        ("GET", r"/orders/([^/]+)", lookup),
        ("POST", r"/orders/([^/]+)/files", upload),
        ("POST", r"/orders/([^/]+)/submit", submit),
    ])
