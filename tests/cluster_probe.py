"""`python -m tests.cluster_probe ADDRESS tracker|workers`: print the JobTracker's stats or the
image workers' process ids as JSON, from a short-lived driver attached to the service's cluster."""

from __future__ import annotations

import json
import sys

import ray

from actors.tracker import NAMESPACE, TRACKER_NAME


def main() -> None:
    address, what = sys.argv[1], sys.argv[2]
    ray.init(address=address, namespace=NAMESPACE, logging_level="ERROR", log_to_driver=False)
    tracker = ray.get_actor(TRACKER_NAME, namespace=NAMESPACE)
    if what == "tracker":
        answer = ray.get(tracker.stats.remote(), timeout=60)
    elif what == "nodes":
        answer = [[n["NodeID"], n["Alive"], n["Resources"].get("image_slots")] for n in ray.nodes()]
    elif what == "workers":
        answer = ray.get(tracker.worker_pids.remote(), timeout=60)
    else:
        raise SystemExit(f"unknown probe {what!r}")
    print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
