"""What the demo's Python services share: a threaded HTTP/1.1 server whose handlers
return (status, JSON body), and small HTTP client helpers. No tracing code anywhere."""
import http.client
import json
import re
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    routes = []  # (method, compiled path regex, function(handler, match, body) -> (status, obj))

    def log_message(self, *args):
        pass

    def body(self):
        length = int(self.headers.get("Content-Length", 0))
        return self.rfile.read(length) if length else b""

    def dispatch(self, method):
        body = self.body()
        for route_method, pattern, function in self.routes:
            match = pattern.fullmatch(self.path.split("?")[0])
            if route_method == method and match:
                try:
                    status, reply = function(self, match, body)
                except Exception as error:  # a failing dependency: answer 500, keep serving
                    status, reply = 500, {"error": str(error)[:200]}
                break
        else:
            status, reply = 404, {"error": "not found"}
        data = json.dumps(reply).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the caller gave up

    def do_GET(self):
        self.dispatch("GET")

    def do_POST(self):
        self.dispatch("POST")

    def do_PUT(self):
        self.dispatch("PUT")


def serve(port, routes):
    """Serves `routes` [(method, path regex, function)] on 127.0.0.1:port forever."""
    handler = type("Routes", (Handler,), {"routes": [(m, re.compile(p), f) for m, p, f in routes]})
    ThreadingHTTPServer(("127.0.0.1", port), handler).serve_forever()


def call(url, method, path, body=None, headers=None, timeout=10):
    """One HTTP request; returns (status, parsed JSON or raw bytes). Raises on time-out."""
    host, port = url.split("//")[1].split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        all_headers = {"Content-Type": "application/json"} if data and not isinstance(body, bytes) else {}
        all_headers.update(headers or {})
        connection.request(method, path, body=data, headers=all_headers)
        response = connection.getresponse()
        raw = response.read()
        try:
            return response.status, json.loads(raw)
        except ValueError:
            return response.status, raw
    finally:
        connection.close()
