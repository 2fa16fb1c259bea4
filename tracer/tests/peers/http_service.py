#!/usr/bin/env python3
"""Service A for tracer's HTTP tests: a plain Python HTTP/1.1 server (keep-alive), no
tracing code. GET /quotes/<id> calls the downstream service (--downstream) at
/prices/<id> on the same thread and answers with what it got; GET /fail answers 500;
anything else 200. With --tls CERT KEY it serves HTTPS (Python's ssl module, OpenSSL), and
with --ca it calls the downstream over HTTPS. Prints "PORT <n>" once listening."""
import argparse
import http.client
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    downstream = None
    downstream_ca = None
    db_port = None

    def log_message(self, *args):
        pass

    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path.startswith("/quotes/") and self.downstream:
            order = self.path.rsplit("/", 1)[1]
            host, port = self.downstream.split(":")
            if self.downstream_ca:
                import ssl

                context = ssl.create_default_context(cafile=self.downstream_ca)
                conn = http.client.HTTPSConnection(host, int(port), timeout=10, context=context)
            else:
                conn = http.client.HTTPConnection(host, int(port), timeout=10)
            conn.request("GET", f"/prices/{order}")
            price = json.loads(conn.getresponse().read())
            conn.close()
            self.reply(200, {"quote": order, "price": price})
        elif self.path.split("?")[0] == "/fail":
            self.reply(500, {"error": "boom"})
        else:
            self.reply(200, {"path": self.path})

    def do_POST(self):
        length = int(self.headers.get("Content-Length", 0))
        received = 0
        body = b""
        while received < length:
            chunk = self.rfile.read(min(65536, length - received))
            if not chunk:
                break
            received += len(chunk)
            if len(body) < 4096:
                body += chunk
        if self.db_port and self.path.startswith("/orders"):
            # Save the order, on this request's thread, as a shop API would.
            import psycopg

            order = json.loads(body)["order_id"]
            with psycopg.connect(host="127.0.0.1", port=self.db_port, user="postgres", dbname="postgres", autocommit=True) as db:
                db.execute("CREATE TABLE IF NOT EXISTS orders (order_id text PRIMARY KEY, status text, email text)")
                db.execute("INSERT INTO orders (order_id, status) VALUES (%s, %s)", (order, "INITIATED"))
        reply = {"received": received}
        if body.startswith(b"{"):
            reply["order_id"] = json.loads(body).get("order_id")
        self.reply(201, reply)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--downstream", help="host:port of service B")
    p.add_argument("--db-port", type=int, help="save POSTed orders in PostgreSQL on this port")
    p.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"), help="serve HTTPS")
    p.add_argument("--ca", help="CA file: call the downstream over HTTPS")
    a = p.parse_args()
    Handler.downstream = a.downstream
    Handler.downstream_ca = a.ca
    Handler.db_port = a.db_port
    server = ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    if a.tls:
        import ssl

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*a.tls)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
