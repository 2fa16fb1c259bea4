#!/usr/bin/env python3
"""Service B of tracer's causality tests, thread per request (the baseline): a
ThreadingHTTPServer that calls C with http.client on the request's own thread. With mode
"id" the call carries the id (/price/<id>); with "none" it does not. The `tag` cookie is the
tests' witness only. No tracing code. Usage: relay_threaded.py <C port> <id|none>."""
import http.client
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

c_port, mode = int(sys.argv[1]), sys.argv[2]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def work(self, item):
        conn = http.client.HTTPConnection("127.0.0.1", c_port, timeout=30)
        conn.request("GET", f"/price/{item}" if mode == "id" else "/price", headers={"Cookie": f"tag={item}"})
        body = conn.getresponse().read()
        conn.close()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.work(self.path.split("/")[2])

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.work(json.loads(body)["item_id"])


# A's 30 requests connect at once: more than the default listen backlog of 5.
ThreadingHTTPServer.request_queue_size = 128
server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(f"PORT {server.server_address[1]}", flush=True)
server.serve_forever()
