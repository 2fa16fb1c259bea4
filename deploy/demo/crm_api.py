#!/usr/bin/env python3
"""CRM: approves submitted orders (reading the Shop DB) and sends them to the MES over
RabbitMQ (mes.orders); takes the MES's prices (crm.prices) back into the Shop DB."""
import argparse
import json
import threading

import pika
import psycopg

from service import serve

config = {}


def db():
    return psycopg.connect(host="127.0.0.1", port=config["db_port"], user="postgres", dbname="postgres", autocommit=True)


def broker():
    return pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", config["amqp_port"], heartbeat=0))


def approval(handler, match, body):
    order_id = match[1]
    with db() as connection:
        row = connection.execute("SELECT scenario, state FROM orders WHERE order_id = %s", (order_id,)).fetchone()
    if row is None:
        return 404, {"order_id": order_id, "error": "unknown order"}
    message = json.dumps({"order_id": order_id, "scenario": row[0], "model": f"/objects/{order_id}"})
    connection = broker()
    try:
        channel = connection.channel()
        channel.queue_declare("mes.orders", durable=True)
        channel.confirm_delivery()
        channel.basic_publish("", "mes.orders", message.encode(),
                              pika.BasicProperties(content_type="application/json", message_id=order_id, delivery_mode=2))
    finally:
        connection.close()
    return 202, {"order_id": order_id, "stage": "sent to MES"}


def take_prices():
    connection = broker()
    channel = connection.channel()
    channel.queue_declare("crm.prices", durable=True)

    def on_price(channel, method, properties, body):
        price = json.loads(body)
        with db() as database:
            database.execute("UPDATE orders SET state = %s, price = %s WHERE order_id = %s",
                             ("PRICE_CALCULATED", price["price"], price["order_id"]))
        channel.basic_ack(method.delivery_tag)

    channel.basic_qos(prefetch_count=1)
    channel.basic_consume("crm.prices", on_price)
    channel.start_consuming()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--db-port", type=int, required=True)
    p.add_argument("--amqp-port", type=int, required=True)
    a = p.parse_args()
    config.update(db_port=a.db_port, amqp_port=a.amqp_port)
    threading.Thread(target=take_prices, daemon=True).start()
    serve(a.port, [("POST", r"/orders/([^/]+)/approval", approval)])
