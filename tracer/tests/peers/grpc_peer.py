"""Unmodified gRPC (grpcio) server and client for tracer's HTTP/2 tests; no generated code:
methods take and return raw protobuf bytes.

  python3 grpc_peer.py serve             prints "PORT <n>", serves shop.v1.Orders
  python3 grpc_peer.py call PORT ORDER N calls over ONE channel: GetOrder (OK), GetOrder
                                         for a missing order (NOT_FOUND), Watch (server
                                         streaming, 3 replies), then N GetOrder calls at
                                         once, each naming order ORDER-<i> in its
                                         x-order-id metadata; prints a JSON report
"""
import json
import os
import sys
from concurrent import futures

import grpc

SERVICE = "shop.v1.Orders"


def message(order_id):
    """A protobuf message with field 1 = order_id (a string)."""
    data = order_id.encode()
    return b"\x0a" + bytes([len(data)]) + data


def order_of(request):
    return request[2 : 2 + request[1]].decode() if len(request) > 2 else ""


class Orders(grpc.GenericRpcHandler):
    def service(self, details):
        name = details.method
        if name == f"/{SERVICE}/GetOrder":
            return grpc.unary_unary_rpc_method_handler(self.get_order)
        if name == f"/{SERVICE}/Watch":
            return grpc.unary_stream_rpc_method_handler(self.watch)
        return None

    def get_order(self, request, context):
        order = order_of(request)
        if order.startswith("MISSING"):
            context.abort(grpc.StatusCode.NOT_FOUND, "no such order")
        return message(order) + b"\x12\x09SUBMITTED"

    def watch(self, request, context):
        order = order_of(request)
        for status in ("SUBMITTED", "PRICED", "APPROVED"):
            yield message(order) + b"\x12" + bytes([len(status)]) + status.encode()


def serve():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers((Orders(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"PORT {port}", flush=True)
    server.wait_for_termination()


def call(port, order, n):
    # One channel, one HTTP/2 connection: every call below is a stream on it.
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        get = channel.unary_unary(f"/{SERVICE}/GetOrder")
        watch = channel.unary_stream(f"/{SERVICE}/Watch")
        report = {"pid": os.getpid()}
        reply = get(message(order), metadata=(("x-order-id", order),))
        report["ok"] = order_of(reply)
        try:
            get(message("MISSING-1"))
            report["missing"] = "OK"
        except grpc.RpcError as error:
            report["missing"] = error.code().name
        report["watched"] = len(list(watch(message(order))))
        calls = [
            get.future(message(f"{order}-{i}"), metadata=(("x-order-id", f"{order}-{i}"),))
            for i in range(n)
        ]
        report["concurrent"] = sorted(order_of(c.result()) for c in calls)
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve()
    else:
        call(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
