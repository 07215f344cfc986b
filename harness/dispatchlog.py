"""What the image origin's request log tells about dispatch, for the fault tests: which
cluster fetched which image when (a worker downloads an image as soon as it is handed one, so
a download marks a dispatch), the turns the clusters took, the silence at each change, the
images fetched more than once and the longest pause."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Sequence
from typing import NamedTuple


class Download(NamedTuple):
    at: float  # time.time() at the origin
    path: str
    cluster: str  # who asked, by the source address


def turns(seen: Sequence[Download]) -> list[str]:
    """The clusters that downloaded, in turn: ["first"] for one, ["first", "second"] for a
    handover, longer for several (or for two at once, which `silences` tells apart)."""
    taken: list[str] = []
    for download in seen:
        if not taken or taken[-1] != download.cluster:
            taken.append(download.cluster)
    return taken


def silences(seen: Sequence[Download]) -> list[float]:
    """At each change of the cluster downloading, the seconds from the last download of the
    one to the first of the next. Two clusters dispatching at once make changes with none."""
    return [
        round(later.at - earlier.at, 2)
        for earlier, later in itertools.pairwise(seen)
        if earlier.cluster != later.cluster
    ]


def asked_again(seen: Sequence[Download]) -> int:
    """Images fetched more than once (a download retried, or an image processed again)."""
    return sum(1 for count in Counter(download.path for download in seen).values() if count > 1)


def longest_pause(seen: Sequence[Download]) -> float:
    """The longest time without a download, from the first to the last."""
    times = sorted(download.at for download in seen)
    return round(max((b - a for a, b in itertools.pairwise(times)), default=0.0), 3)
