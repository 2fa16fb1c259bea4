#!/usr/bin/env python3
"""An accept-then-fork HTTP server (socketserver's ForkingMixIn, as prefork servers do): the
parent accepts each connection and a forked child serves it. Answers GET /<anything> with
{"pid": <the serving child's pid>}. No tracing code. Prints "PORT <n>" once listening."""
import json
import os
from http.server import BaseHTTPRequestHandler, HTTPServer
from socketserver import ForkingMixIn


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        body = json.dumps({"pid": os.getpid()}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Server(ForkingMixIn, HTTPServer):
    request_queue_size = 64


server = Server(("127.0.0.1", 0), Handler)
print(f"PORT {server.server_address[1]}", flush=True)
server.serve_forever()
