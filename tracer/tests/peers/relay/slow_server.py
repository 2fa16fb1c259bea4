#!/usr/bin/env python3
"""Service C of tracer's causality tests: a plain threaded HTTP server that answers every
request after 50-200 ms (random), so B's calls overlap. It is also the tests' witness:
for each request it prints one JSON line {"peer_port", "tag"}, where tag is the `tag`
cookie B put on its call (the id of the request B was serving). Cookies are credentials
to tracer, never read, so the witness gives tracer no evidence. Prints "PORT <n>" first."""
import json
import random
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self):
        length = int(self.headers.get("Content-Length", 0))
        if length:
            self.rfile.read(length)
        cookie = self.headers.get("Cookie", "")
        tag = cookie.split("tag=", 1)[1].split(";")[0] if "tag=" in cookie else None
        with lock:
            print(json.dumps({"peer_port": self.client_address[1], "tag": tag}), flush=True)
        time.sleep(random.uniform(0.05, 0.2))
        body = json.dumps({"price": 1234}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    do_GET = answer
    do_POST = answer


# A's 30 requests connect at once: more than the default listen backlog of 5.
ThreadingHTTPServer.request_queue_size = 128
server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 0), Handler)
print(f"PORT {server.server_address[1]}", flush=True)
server.serve_forever()
