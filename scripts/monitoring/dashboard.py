"""The service's Grafana dashboard, built the way Ray builds its own (ray/dashboard/modules/
metrics/dashboards/): panels of targets whose expressions carry `{global_filters}` inside
every selector, filled with the same `SessionName` and `ray_io_cluster` template variables, so
the dashboard sits beside Ray's and picks a cluster and a session the same way.

The expressions read the recording rules of rules.py where they would otherwise add up a
series per worker process at every refresh; the tracker's own series (one process) are read
directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

UID = "image-job-service"
TITLE = "Image job service"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# Ray's standard_global_filters (default_dashboard_panels.py), in every selector of every panel.
STANDARD_GLOBAL_FILTERS = ['SessionName=~"$SessionName"', 'ray_io_cluster=~"$Cluster"']
# A selector holding only the filters, for `metric` + FILTERED.
FILTERED = "{{{global_filters}}}"
# The tracker's gauge: reported by every tracker, leading or not, so it lists every cluster
# and session that runs the service (Ray's dashboards use ray_node_network_receive_speed,
# which lists every Ray cluster, running the service or not).
VARIABLE_SOURCE = "ray_image_service_queue_depth"
QUANTILES = (0.5, 0.95, 0.99)
# Ray's grid: two panels a row, each 12 of 24 columns wide and 8 high; a row header is 1.
PANEL_WIDTH, PANEL_HEIGHT, ROW_WIDTH = 12, 8, 24


@dataclass(frozen=True)
class Target:
    expr: str
    legend: str


@dataclass(frozen=True)
class Panel:
    title: str
    description: str
    unit: str
    targets: list[Target]
    stack: bool = False
    steps: bool = False  # a value that jumps (a lease held or not): drawn as steps
    max: float | None = None


@dataclass(frozen=True)
class Row:
    title: str
    panels: list[Panel] = field(default_factory=list)


def quantiles(buckets: str, by: str = "", legend: str = "") -> list[Target]:
    """p50, p95 and p99 of a histogram's per-cluster bucket rates (`by`: labels kept too)."""
    keep = f"{by}, le" if by else "le"
    return [
        Target(
            f"histogram_quantile({q}, sum by ({keep}) ({buckets}{FILTERED}))",
            f"p{round(q * 100)}{legend}",
        )
        for q in QUANTILES
    ]


def rows() -> list[Row]:
    return [
        Row(
            "Images",
            [
                Panel(
                    "Images settled per second",
                    "Images that reached a final state (measured or failed, cancelled "
                    "included), and of those the measured ones.",
                    "ops",
                    [
                        Target(f"sum(image_service:images_settled:rate1m{FILTERED})", "settled"),
                        Target(f"sum(image_service:images_processed:rate1m{FILTERED})", "measured"),
                    ],
                ),
                Panel(
                    "Failed images per second by reason",
                    "download, not_an_image, decode, unknown_store, cancelled (queued images "
                    "dropped by a cancel, in bursts), worker_lost, internal.",
                    "ops",
                    [
                        Target(
                            f"sum by (reason) (image_service:images_failed:rate1m{FILTERED})",
                            "{{reason}}",
                        )
                    ],
                    stack=True,
                ),
                Panel(
                    "Queue depth and images in flight",
                    "Images waiting for a worker slot, and images held by workers, as the "
                    "trackers report them (a standing-by tracker holds none).",
                    "short",
                    [
                        Target(f"sum(ray_image_service_queue_depth{FILTERED})", "queued"),
                        Target(f"sum(ray_image_service_images_in_flight{FILTERED})", "in flight"),
                    ],
                ),
                Panel(
                    "GPU slot utilisation",
                    "Simulated GPU slots busy over all slots of the selected clusters.",
                    "percentunit",
                    [
                        Target(
                            f"sum(ray_image_service_slots_busy{FILTERED})"
                            f" / sum(ray_image_service_slots_total{FILTERED})",
                            "busy",
                        )
                    ],
                    max=1,
                ),
                Panel(
                    "Oldest queued image age",
                    "How long the image waiting longest for a worker slot has waited.",
                    "s",
                    [Target(f"max(ray_image_service_oldest_queued_seconds{FILTERED})", "oldest")],
                ),
                Panel(
                    "Downloaded bytes per second",
                    "Image bytes downloaded by all workers.",
                    "Bps",
                    [Target(f"sum(image_service:downloaded_bytes:rate1m{FILTERED})", "downloaded")],
                ),
            ],
        ),
        Row(
            "Latency",
            [
                Panel(
                    "Download time",
                    "One image's download, retries included (30 s at most, then it fails).",
                    "s",
                    quantiles("image_service:download_seconds_bucket:rate1m"),
                ),
                Panel(
                    "Processing time",
                    "One image from start to settled: download, measure, simulated GPU work.",
                    "s",
                    quantiles("image_service:processing_seconds_bucket:rate1m"),
                ),
                Panel(
                    "Decode time",
                    "Decoding one image in full with Pillow.",
                    "s",
                    quantiles("image_service:decode_seconds_bucket:rate1m"),
                ),
                Panel(
                    "Job duration by final state",
                    "From submission to the last image settled, of the jobs that ended since "
                    "the tracker started. Not a rate: Ray exports a histogram from its first "
                    "observation, so a rate never sees the first job of each state, and jobs "
                    "end too seldom to lose one.",
                    "s",
                    [
                        Target(
                            f"histogram_quantile({q}, sum by (state, le) "
                            f"(ray_image_service_job_duration_seconds_bucket{FILTERED}))",
                            f"p{round(q * 100)} {{{{state}}}}",
                        )
                        for q in QUANTILES
                    ],
                ),
            ],
        ),
        Row(
            "Jobs and tracker",
            [
                Panel(
                    "Jobs by state",
                    "Jobs in the job store by state. Every tracker reports the store's counts, "
                    "so two clusters on one database report the same numbers: the maximum, "
                    "not the sum.",
                    "short",
                    [
                        Target(
                            f"max by (state) (ray_image_service_jobs{FILTERED})",
                            "{{state}}",
                        )
                    ],
                ),
                Panel(
                    "Dispatch lease holder",
                    "1 while a cluster's tracker holds the dispatch lease. One cluster at a "
                    "time dispatches; during an upgrade the lease moves to the new cluster "
                    "when the old one goes.",
                    "short",
                    [
                        Target(
                            "sum by (ray_io_cluster, SessionName) "
                            f"(ray_image_service_dispatch_lease{FILTERED})",
                            "{{ray_io_cluster}} {{SessionName}}",
                        )
                    ],
                    steps=True,
                    max=1,
                ),
                Panel(
                    "Completion callbacks",
                    "Callback POSTs delivered, and given up on after every attempt, since the "
                    "tracker started (a count, not a rate: a rate misses a series' first "
                    "increment, and callbacks are few).",
                    "short",
                    [
                        Target(
                            f"sum by (outcome) (ray_image_service_callbacks_total{FILTERED})",
                            "{{outcome}}",
                        )
                    ],
                ),
            ],
        ),
        Row(
            "API",
            [
                Panel(
                    "API requests per second by route and code",
                    "Answers of the service's HTTP API.",
                    "reqps",
                    [
                        Target(
                            f"sum by (route, code) (image_service:http_requests:rate1m{FILTERED})",
                            "{{route}} {{code}}",
                        )
                    ],
                    stack=True,
                ),
                Panel(
                    "API latency by route",
                    "Time to answer, by route.",
                    "s",
                    quantiles(
                        "image_service:http_request_seconds_bucket:rate1m",
                        by="route",
                        legend=" {{route}}",
                    ),
                ),
            ],
        ),
        Row(
            "Job store",
            [
                Panel(
                    "Flush time",
                    "One flush of what settled to the job store.",
                    "s",
                    [
                        Target(
                            f"histogram_quantile({q}, sum by (le) (rate("
                            f"ray_image_service_flush_seconds_bucket{FILTERED}[1m])))",
                            f"p{round(q * 100)}",
                        )
                        for q in QUANTILES
                    ],
                ),
                Panel(
                    "Flush backlog",
                    "Writes waiting for the next flush; it grows while the job store fails.",
                    "short",
                    [Target(f"sum(ray_image_service_flush_backlog{FILTERED})", "waiting")],
                ),
                Panel(
                    "Job store errors per second by kind",
                    "Job store calls that failed.",
                    "ops",
                    [
                        Target(
                            "sum by (kind) "
                            f"(rate(ray_image_service_store_errors_total{FILTERED}[5m]))",
                            "{{kind}}",
                        )
                    ],
                    stack=True,
                ),
            ],
        ),
    ]


def expression(target: Target) -> str:
    """The target's PromQL with the filters in, as Ray's _generate_targets fills them."""
    return target.expr.format(global_filters=",".join(STANDARD_GLOBAL_FILTERS))


def variables() -> list[dict[str, Any]]:
    everything = {"selected": True, "text": "All", "value": "$__all"}
    cluster_query = f"label_values({VARIABLE_SOURCE}, ray_io_cluster)"
    session_query = f'label_values({VARIABLE_SOURCE}{{ray_io_cluster=~"$Cluster"}}, SessionName)'
    return [
        {
            "type": "datasource",
            "name": "datasource",
            "label": "Data source",
            "description": "The Prometheus that scrapes the service's pods.",
            "query": "prometheus",
            "hide": 0,
            "refresh": 1,
        },
        {
            "type": "query",
            "name": "Cluster",
            "description": "Filter queries to specific Ray clusters (KubeRay's ray.io/cluster, "
            "which the PodMonitor copies into ray_io_cluster; empty elsewhere).",
            "datasource": DATASOURCE,
            "definition": cluster_query,
            "query": cluster_query,
            "current": everything,
            "includeAll": True,
            "allValue": ".*",  # also the series without the label, off KubeRay
            "multi": False,
            "refresh": 2,
            "sort": 2,
        },
        {
            "type": "query",
            "name": "SessionName",
            "description": "Filter queries to specific Ray sessions (a new one at every start "
            "of a cluster's head).",
            "datasource": DATASOURCE,
            "definition": session_query,
            "query": session_query,
            "current": everything,
            "includeAll": True,
            "allValue": ".+",
            "multi": False,
            "refresh": 2,
            "sort": 2,
        },
    ]


def _panel(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    defaults: dict[str, Any] = {
        "unit": panel.unit,
        "min": 0,
        "custom": {
            "fillOpacity": 10,
            "lineInterpolation": "stepAfter" if panel.steps else "linear",
            "stacking": {"mode": "normal" if panel.stack else "none", "group": "A"},
        },
    }
    if panel.max is not None:
        defaults["max"] = panel.max
    return {
        "type": "timeseries",
        "id": panel_id,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": PANEL_HEIGHT, "w": PANEL_WIDTH, "x": x, "y": y},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "legend": {
                "displayMode": "table",
                "placement": "bottom",
                "calcs": ["mean", "lastNotNull", "max"],
            },
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": [
            {
                "datasource": DATASOURCE,
                "expr": expression(target),
                "legendFormat": target.legend,
                "range": True,
                "refId": chr(ord("A") + index),
            }
            for index, target in enumerate(panel.targets)
        ],
    }


def panels() -> list[dict[str, Any]]:
    """Rows, each followed by its panels two to a line, laid out as Ray's factory does."""
    laid_out: list[dict[str, Any]] = []
    y, panel_id = 0, 1
    for row in rows():
        laid_out.append(
            {
                "type": "row",
                "id": panel_id,
                "title": row.title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": ROW_WIDTH, "x": 0, "y": y},
                "panels": [],
            }
        )
        panel_id, y = panel_id + 1, y + 1
        for index, panel in enumerate(row.panels):
            x = PANEL_WIDTH * (index % 2)
            laid_out.append(_panel(panel, panel_id, x, y + PANEL_HEIGHT * (index // 2)))
            panel_id += 1
        y += PANEL_HEIGHT * ((len(row.panels) + 1) // 2)
    return laid_out


def dashboard() -> dict[str, Any]:
    return {
        "uid": UID,
        "title": TITLE,
        "description": "Throughput, failures, queue, latency, jobs, the dispatch lease, the API "
        "and the job store of the image job service (generated by python -m "
        "scripts.monitoring_files).",
        "tags": ["image-job-service", "ray"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "30s",
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "templating": {"list": variables()},
        "panels": panels(),
    }
