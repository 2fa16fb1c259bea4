#!/usr/bin/env python3
"""B2B API: business customers ask for a price with POST /b2b/<order>/calculate; it asks
the MES API. Fault switch: scenario `b2b-timeout` makes it take 5 s (partners give up
after 2 s)."""
import argparse
import json
import time

from service import call, serve

config = {}


def calculate(handler, match, body):
    order_id = match[1]
    scenario = json.loads(body or b"{}").get("scenario", "ok")
    if scenario == "b2b-timeout":
        time.sleep(5)
    status, reply = call(config["mes"], "POST", "/price", {"order_id": order_id})
    if status != 200:
        return 502, {"order_id": order_id, "error": f"MES answered {status}"}
    return 200, {"order_id": order_id, "price": reply["price"]}


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--mes", required=True, help="MES API, http://127.0.0.1:PORT")
    a = p.parse_args()
    config["mes"] = a.mes
    serve(a.port, [("POST", r"/b2b/([^/]+)/calculate", calculate)])
