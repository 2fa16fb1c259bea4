#!/usr/bin/env python3
"""The MES UI, driven: production staff approve every priced order for manufacturing and
ship it, through the MES API. Polls until --seconds have passed."""
import argparse
import time

from service import call


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--mes", required=True)
    p.add_argument("--seconds", type=float, default=60)
    a = p.parse_args()
    deadline = time.time() + a.seconds
    while time.time() < deadline:
        try:
            _, waiting = call(a.mes, "GET", "/orders")
            for order in waiting:
                call(a.mes, "POST", f"/orders/{order['order_id']}/approve", {"order_id": order["order_id"]})
                time.sleep(0.3)
                call(a.mes, "POST", f"/orders/{order['order_id']}/ship", {"order_id": order["order_id"]})
        except OSError:
            pass  # the MES is not up yet
        time.sleep(0.5)


if __name__ == "__main__":
    main()
