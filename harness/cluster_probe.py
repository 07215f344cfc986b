"""`python -m harness.cluster_probe ADDRESS tracker|workers|nodes|watch`: print the JobTracker's
stats, the image workers' process ids or the cluster's nodes as one JSON line marked `PROBE`,
from a short-lived driver attached to the service's cluster; `watch` prints the alive nodes
with the time, a line every quarter of a second, until it is stopped."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

import ray

from actors.tracker import NAMESPACE, TRACKER_NAME


def tracker_handle(deadline_seconds: float = 60) -> Any:
    """The tracker, waiting while it is being restarted (its name is briefly unknown then)."""
    deadline = time.monotonic() + deadline_seconds
    while True:
        try:
            return ray.get_actor(TRACKER_NAME, namespace=NAMESPACE)
        except ValueError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def main() -> None:
    address, what = sys.argv[1], sys.argv[2]
    ray.init(address=address, namespace=NAMESPACE, logging_level=logging.ERROR, log_to_driver=False)
    answer: Any
    if what == "watch":
        while True:
            alive = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
            print("PROBE", json.dumps([time.time(), alive]), flush=True)
            time.sleep(0.25)
    if what == "nodes":
        answer = [[n["NodeID"], n["Alive"], n["Resources"].get("image_slots")] for n in ray.nodes()]
    elif what == "tracker":
        answer = ray.get(tracker_handle().diagnostics.remote(), timeout=60)
    elif what == "workers":
        answer = ray.get(tracker_handle().diagnostic_worker_pids.remote(), timeout=60)
    else:
        raise SystemExit(f"unknown probe {what!r}")
    print("PROBE", json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
