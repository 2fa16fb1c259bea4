#!/usr/bin/env python3
"""What an operator sees when a service "cannot send" through RabbitMQ, done with pika as
any application would; no tracing code. Prints one JSON line per step with what pika
reported:
- return: basic_publish(mandatory=True) WITHOUT publisher confirms, first to a bound queue
  (routed), then to a key no queue is bound to: the broker answers Basic.Return 312
  NO_ROUTE (seen in an on-return callback);
- vhost: a connection to a virtual host that does not exist (Connection.Close 530);
- declare: an exchange declared again with another type (Channel.Close 406);
- passive: a passive declare of a missing queue (Channel.Close 404).
Names carry --prefix so runs do not meet."""
import argparse
import json
import time

import pika
from pika.exceptions import AMQPConnectionError, ChannelClosedByBroker


def step(name, **fields):
    print(json.dumps({"step": name, **fields}), flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--hold", action="store_true", help="stay until stdin closes")
    a = p.parse_args()
    params = pika.ConnectionParameters("127.0.0.1", a.port)

    connection = pika.BlockingConnection(params)
    channel = connection.channel()
    exchange = f"{a.prefix}-orders"
    channel.exchange_declare(exchange, exchange_type="direct")
    routed_queue = f"{a.prefix}-routed"
    channel.queue_declare(routed_queue, exclusive=True)
    channel.queue_bind(routed_queue, exchange, routing_key=routed_queue)
    returned = []
    channel.add_on_return_callback(lambda _ch, method, _props, _body: returned.append(method))
    channel.basic_publish(
        exchange,
        routed_queue,
        b'{"status": "SUBMITTED"}',
        pika.BasicProperties(message_id=f"{a.prefix}-routed"),
        mandatory=True,
    )
    channel.basic_publish(
        exchange,
        f"{a.prefix}-nowhere",
        b'{"status": "SUBMITTED"}',
        pika.BasicProperties(message_id=f"{a.prefix}-returned"),
        mandatory=True,
    )
    deadline = time.monotonic() + 10
    while not returned and time.monotonic() < deadline:
        connection.process_data_events(time_limit=0.1)
    step("return", reply_code=returned[0].reply_code if returned else None,
         reply_text=returned[0].reply_text if returned else None)

    try:
        channel.exchange_declare(exchange, exchange_type="fanout")
        step("declare", reply_code=None)
    except ChannelClosedByBroker as e:
        step("declare", reply_code=e.reply_code, reply_text=e.reply_text)

    channel = connection.channel()
    try:
        channel.queue_declare(f"{a.prefix}-missing", passive=True)
        step("passive", reply_code=None)
    except ChannelClosedByBroker as e:
        step("passive", reply_code=e.reply_code, reply_text=e.reply_text)
    connection.close()

    try:
        pika.BlockingConnection(
            pika.ConnectionParameters("127.0.0.1", a.port, virtual_host=f"{a.prefix}-vhost"))
        step("vhost", reply_code=None)
    except AMQPConnectionError as e:
        # pika wraps the broker's Connection.Close in a ProbableAccessDenied/
        # ConnectionClosedByBroker; its text carries the code.
        step("vhost", error=repr(e))
    if a.hold:
        import sys
        sys.stdin.read()


if __name__ == "__main__":
    main()
