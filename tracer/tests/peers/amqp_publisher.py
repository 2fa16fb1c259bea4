#!/usr/bin/env python3
"""RabbitMQ publisher for tracer's AMQP tests, using pika as any application would; no
tracing code. Declares the exchange/queue it is told to, publishes --count messages
(message ids <prefix>-<n>) round-robin over --channels channels, with publisher confirms
if asked, and prints one JSON line per message: {"message_id", "ok", "error", "published_at_ms"} (wall
clock just before the publish)."""
import argparse
import json
import sys
import time

import pika
from pika.exceptions import AMQPChannelError, ChannelClosedByBroker


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--exchange", default="")
    p.add_argument("--declare-exchange", action="store_true")
    p.add_argument("--queue", help="declare this queue and bind it to the exchange")
    p.add_argument("--routing-key", required=True)
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--id-prefix", default="msg")
    p.add_argument("--order-id", help="the order every message names (default: its message id)")
    p.add_argument("--body-size", type=int, default=0, help="pad bodies to this size")
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--confirm", action="store_true")
    p.add_argument("--hold", action="store_true", help="after publishing, stay until stdin closes (so a test can keep the process alive until tracer has named it)")
    a = p.parse_args()

    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", a.port))
    setup = connection.channel()
    if a.declare_exchange:
        setup.exchange_declare(a.exchange, exchange_type="direct")
    if a.queue:
        setup.queue_declare(a.queue)
        if a.exchange:
            setup.queue_bind(a.queue, a.exchange, routing_key=a.routing_key)
    channels = [connection.channel() for _ in range(a.channels)]
    if a.confirm:
        for channel in channels:
            channel.confirm_delivery()
    for n in range(a.count):
        message_id = f"{a.id_prefix}-{n}"
        order_id = a.order_id or message_id
        body = json.dumps({"order_id": order_id, "status": "SUBMITTED"}).encode()
        body += b" " * max(0, a.body_size - len(body))
        channel = channels[n % len(channels)]
        result = {"message_id": message_id, "ok": True, "error": None, "published_at_ms": time.time() * 1000}
        try:
            channel.basic_publish(
                a.exchange,
                a.routing_key,
                body,
                pika.BasicProperties(message_id=message_id, correlation_id=f"conv-{n}", content_type="application/json"),
            )
        except (ChannelClosedByBroker, AMQPChannelError) as e:
            result = {"message_id": message_id, "ok": False, "error": str(e)}
        print(json.dumps(result), flush=True)
    connection.close()
    if a.hold:
        sys.stdin.read()


if __name__ == "__main__":
    main()
