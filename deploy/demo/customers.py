#!/usr/bin/env python3
"""Customers of the online shop (and, for the B2B price, a business partner): each order
is created, its 3D model uploaded, submitted, and priced through the B2B API. Each order
carries a scenario — `ok` or one fault — and the list of orders and scenarios is written
to --manifest, so a run can be checked against what tracer found."""
import argparse
import json
import time

from service import call

MODEL = "solid ring\n  facet normal 0 0 1\n    outer loop\n      vertex 0 0 0\n" * 20
FAULTS = ["slow-price", "invalid-model", "lost-message", "db-failure", "b2b-timeout", "upload-hang",
          "queue-overflow", "late-delivery", "crm-approval-slow", "status-out-of-sync", "mes-db-failure",
          "validation-error"]
# Faults whose backlog would hold up the next customer's order: that customer waits until
# the shop reports this one priced (or rejected), at most this long.
BACKLOG = {"late-delivery": 40}


def place(shop, b2b, order_id, user, scenario):
    """One order, the way the online shop does it. Returns where the customer stopped."""
    status, _ = call(shop, "POST", "/orders", {"order_id": order_id, "user_id": user,
                                              "email": f"{user}@example.com", "scenario": scenario})
    if status != 201:
        return f"create answered {status}"
    model = ("INVALID " + MODEL) if scenario == "invalid-model" else MODEL
    status, _ = call(shop, "POST", f"/orders/{order_id}/files", model.encode(),
                     headers={"Content-Type": "model/stl"}, timeout=15)
    if status != 201:
        return f"upload answered {status}"
    # db-failure: the shop's front end lets an empty basket through; the Shop DB refuses it.
    quantity = 0 if scenario == "db-failure" else 1
    status, _ = call(shop, "POST", f"/orders/{order_id}/submit", {"order_id": order_id, "quantity": quantity})
    if status != 201:
        return f"submit answered {status}"
    try:
        status, _ = call(b2b, "POST", f"/b2b/{order_id}/calculate", {"order_id": order_id, "scenario": scenario}, timeout=2)
    except OSError:
        return "B2B price timed out"
    return "placed" if status == 200 else f"B2B price answered {status}"


def wait_until_priced(shop, order_id, seconds):
    """Looks the order up on the shop until it has left SUBMITTED."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        status, reply = call(shop, "GET", f"/orders/{order_id}")
        if status == 200 and reply.get("state") not in ("SUBMITTED", "FILE_UPLOADED", "INITIATED"):
            return
        time.sleep(0.5)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--shop", required=True)
    p.add_argument("--b2b", required=True)
    p.add_argument("--orders", type=int, default=len(FAULTS) + 2)
    p.add_argument("--prefix", default="ORD")
    p.add_argument("--faults", default=",".join(FAULTS), help="comma-separated; 'none' for none")
    p.add_argument("--manifest", required=True)
    a = p.parse_args()
    faults = [] if a.faults == "none" else a.faults.split(",")
    # Healthy orders between the faulty ones.
    plan = []
    for i in range(a.orders):
        plan.append(faults[i // 2] if i % 2 == 1 and i // 2 < len(faults) else "ok")
    manifest = []
    for i, scenario in enumerate(plan):
        order_id = f"{a.prefix}-{i + 1:03d}"
        outcome = place(a.shop, a.b2b, order_id, f"u-{100 + i}", scenario)
        manifest.append({"order_id": order_id, "scenario": scenario, "customer_saw": outcome})
        print(f"{order_id} {scenario:<18} {outcome}", flush=True)
        if scenario in BACKLOG:
            wait_until_priced(a.shop, order_id, BACKLOG[scenario])
        time.sleep(0.2)
    with open(a.manifest, "w") as out:
        json.dump(manifest, out, indent=2)


if __name__ == "__main__":
    main()
