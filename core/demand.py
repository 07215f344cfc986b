"""What the tracker asks Ray's autoscaler for, and which worker nodes it lets go: pure
functions of the backlog, the slots and the settings (the Ray calls are `actors.autoscale`).

The request is a target size, not an increment: Ray's `request_resources` asks the autoscaler
for a cluster that holds these bundles, the nodes already there counted, and it stands until
the next request replaces it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from core.settings import IMAGE_SLOTS

Bundle = dict[str, float]


def wanted_slots(waiting: int, in_flight: int, fetch_ahead: float, max_slots: int) -> int:
    """The `image_slots` the backlog could use: every image waiting or held by a worker, less
    the images a slot holds (its GPU step and those fetched ahead of it), at most `max_slots`.
    Images in flight count so that the request does not drop while nodes still hold images."""
    per_slot = 1 + fetch_ahead
    return min(max_slots, math.ceil((waiting + in_flight) / per_slot))


def bundles(slots: int) -> list[Bundle]:
    """The request for `slots`: one bundle per slot, so that any node type with slots fits
    them (a bundle larger than every node type would be infeasible, and ask for nothing)."""
    return [{IMAGE_SLOTS: 1.0}] * slots


class IdleNodes:
    """Since when each worker node has held no image: a node idle for long enough while
    nothing waits has its image workers retired, which frees its `image_slots` for the
    autoscaler to see it idle."""

    def __init__(self) -> None:
        self._since: dict[str, float] = {}

    def update(self, held: Mapping[str, int], now: float) -> None:
        """`held`: images held by each worker node's workers now (the head is not in it)."""
        self._since = {
            node: self._since.get(node, now) for node, images in held.items() if images == 0
        }

    def due(self, now: float, after: float) -> list[str]:
        """The nodes idle for `after` seconds or more by `now`."""
        return sorted(node for node, since in self._since.items() if now - since >= after)

    def forget(self, node: str) -> None:
        self._since.pop(node, None)
