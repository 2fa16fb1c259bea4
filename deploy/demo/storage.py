#!/usr/bin/env python3
"""3D-file storage: a small HTTP object store (PUT/GET /objects/<key>). Fault switch:
an upload sent with `X-Demo-Scenario: upload-hang` hangs for 6 s before it is answered."""
import argparse
import time

from service import serve

objects = {}


def put(handler, match, body):
    if handler.headers.get("X-Demo-Scenario") == "upload-hang":
        time.sleep(6)
    objects[match[1]] = body
    return 201, {"key": match[1], "bytes": len(body)}


def get(handler, match, body):
    if match[1] not in objects:
        return 404, {"error": "no such object"}
    return 200, {"key": match[1], "model": objects[match[1]].decode(errors="replace")}


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    serve(p.parse_args().port, [("PUT", r"/objects/([^/]+)", put), ("GET", r"/objects/([^/]+)", get)])
