"""`promtool test rules` cases for rules.py: each recording rule against series from several
worker processes and clusters, each alert on series that should fire it and on series that
should not. promtool compares an alert's annotations whole, so the expected runbook is taken
from the alert itself; everything else here is written out by hand.
"""

from __future__ import annotations

from typing import Any

from scripts.monitoring.rules import alerts

Case = dict[str, Any]

INTERVAL = "15s"  # the PodMonitor's scrape interval
# Two RayClusters of one service (an upgrade in progress), as the PodMonitor labels them.
A = 'namespace="jobs", ray_io_cluster="ijs-a", SessionName="session_a"'
B = 'namespace="jobs", ray_io_cluster="ijs-b", SessionName="session_b"'
C = 'namespace="jobs", ray_io_cluster="ijs-c", SessionName="session_c"'
OUT_A = {"namespace": "jobs", "ray_io_cluster": "ijs-a", "SessionName": "session_a"}
OUT_B = {"namespace": "jobs", "ray_io_cluster": "ijs-b", "SessionName": "session_b"}


def proc(cluster: str, worker: str) -> str:
    """The labels one Ray worker process's series carry (plus the scrape's)."""
    return f'{cluster}, WorkerId="{worker}", Component="core_worker", pod="{worker}-pod"'


def series(metric: str, labels: str, values: str) -> dict[str, str]:
    return {"series": f"{metric}{{{labels}}}", "values": values}


def sample(labels: dict[str, str], value: float) -> dict[str, Any]:
    rendered = ", ".join(f'{key}="{val}"' for key, val in labels.items())
    return {"labels": f"{{{rendered}}}", "value": value}


def expect(alert_name: str, labels: dict[str, str], summary: str) -> dict[str, Any]:
    [alert] = [alert for alert in alerts() if alert.name == alert_name]
    return {
        "exp_labels": {"severity": alert.severity, **labels},
        "exp_annotations": {"summary": summary, "runbook": alert.runbook},
    }


def recording_case() -> Case:
    """Three workers of cluster A and one of cluster B, at a steady rate for 10 minutes."""
    processed = "ray_image_service_images_processed_total"
    failed = "ray_image_service_images_failed_total"
    case: Case = {
        "name": "recording rules add up every worker process, per cluster",
        "interval": INTERVAL,
        "input_series": [
            series(processed, proc(A, "w1"), "0+15x40"),  # 1/s
            series(processed, proc(A, "w2"), "0+30x40"),  # 2/s
            series(processed, proc(B, "w3"), "0+15x40"),  # 1/s; cluster B fails nothing
            series(failed, f'{proc(A, "w1")}, reason="download"', "0+15x40"),
            series(failed, f'{proc(A, "tracker")}, reason="cancelled"', "0+45x40"),
            series("ray_image_service_downloaded_bytes_total", proc(A, "w1"), "0+15000x40"),
            *[
                series(f"ray_image_service_{name}_bucket", f'{proc(A, w)}, le="{le}"', values)
                for name in ("download_seconds", "processing_seconds", "decode_seconds")
                for w, le, values in (
                    ("w1", "0.5", "0+15x40"),
                    ("w1", "+Inf", "0+15x40"),
                    ("w2", "0.5", "0+0x40"),
                    ("w2", "+Inf", "0+15x40"),
                )
            ],
            # Two API replicas answer the same route.
            *[
                series(
                    "ray_image_service_http_requests_total",
                    f'{proc(A, w)}, route="/api/submit", code="201"',
                    "0+15x40",
                )
                for w in ("api1", "api2")
            ],
            series(
                "ray_image_service_http_requests_total",
                f'{proc(A, "api1")}, route="/api/status", code="200"',
                "0+15x40",
            ),
            *[
                series(
                    "ray_image_service_http_request_seconds_bucket",
                    f'{proc(A, w)}, route="/api/status", le="0.1"',
                    "0+15x40",
                )
                for w in ("api1", "api2")
            ],
        ],
        "promql_expr_test": [
            *[
                {
                    "expr": f"image_service:images_processed:{rate}",
                    "eval_time": "5m",
                    "exp_samples": [sample(OUT_A, 3), sample(OUT_B, 1)],
                }
                for rate in ("rate1m", "rate5m")
            ],
            *[
                {
                    "expr": f"image_service:images_failed:{rate}",
                    "eval_time": "5m",
                    "exp_samples": [
                        sample({**OUT_A, "reason": "cancelled"}, 3),
                        sample({**OUT_A, "reason": "download"}, 1),
                    ],
                }
                for rate in ("rate1m", "rate5m")
            ],
            # Cluster B has no failed series at all and still counts.
            *[
                {
                    "expr": f"image_service:images_settled:{rate}",
                    "eval_time": "5m",
                    "exp_samples": [sample(OUT_A, 7), sample(OUT_B, 1)],
                }
                for rate in ("rate1m", "rate5m")
            ],
            {
                "expr": "image_service:images_attempted:rate5m",
                "eval_time": "5m",
                "exp_samples": [sample(OUT_A, 4), sample(OUT_B, 1)],
            },
            {
                "expr": "image_service:downloaded_bytes:rate1m",
                "eval_time": "5m",
                "exp_samples": [sample(OUT_A, 1000)],
            },
            *[
                {
                    "expr": f"image_service:{name}",
                    "eval_time": "5m",
                    "exp_samples": [
                        sample({**OUT_A, "le": "+Inf"}, 2),
                        sample({**OUT_A, "le": "0.5"}, 1),
                    ],
                }
                for name in (
                    "download_seconds_bucket:rate1m",
                    "download_seconds_bucket:rate5m",
                    "processing_seconds_bucket:rate1m",
                    "decode_seconds_bucket:rate1m",
                )
            ],
            *[
                {
                    "expr": f"image_service:http_requests:{rate}",
                    "eval_time": "5m",
                    "exp_samples": [
                        sample({**OUT_A, "route": "/api/status", "code": "200"}, 1),
                        sample({**OUT_A, "route": "/api/submit", "code": "201"}, 2),
                    ],
                }
                for rate in ("rate1m", "rate5m")
            ],
            {
                "expr": "image_service:http_request_seconds_bucket:rate1m",
                "eval_time": "5m",
                "exp_samples": [sample({**OUT_A, "route": "/api/status", "le": "0.1"}, 2)],
            },
        ],
    }
    for test in case["promql_expr_test"]:  # a recorded series is named after its rule
        for expected in test["exp_samples"]:
            expected["labels"] = test["expr"] + expected["labels"]
    return case


def stalled_cases() -> list[Case]:
    queue, in_flight = "ray_image_service_queue_depth", "ray_image_service_images_in_flight"
    processed = "ray_image_service_images_processed_total"
    stalled = "images are waiting and none has settled for 5 minutes"
    return [
        {
            "name": "Stalled fires: images wait and the counters stand still, or never appeared",
            "interval": INTERVAL,
            "input_series": [
                series(queue, proc(A, "tracker"), "50x60"),
                series(in_flight, proc(A, "tracker"), "4x60"),
                series(processed, proc(A, "w1"), "100x60"),  # flat
                series(queue, proc(B, "tracker"), "0x60"),  # B: in flight only, nothing settled
                series(in_flight, proc(B, "tracker"), "8x60"),
                # C, of the same service, settles images: that says nothing of A's and B's.
                series(queue, proc(C, "tracker"), "2x60"),
                series(in_flight, proc(C, "tracker"), "2x60"),
                series(processed, proc(C, "w5"), "0+1x60"),
            ],
            "alert_rule_test": [
                {"eval_time": "1m", "alertname": "ImageServiceStalled", "exp_alerts": []},
                {
                    "eval_time": "10m",
                    "alertname": "ImageServiceStalled",
                    "exp_alerts": [
                        expect("ImageServiceStalled", OUT_A, f"ijs-a session_a: {stalled}"),
                        expect("ImageServiceStalled", OUT_B, f"ijs-b session_b: {stalled}"),
                    ],
                },
            ],
        },
        {
            "name": "Stalled stays quiet: images settle (measured, or failing), or none wait",
            "interval": INTERVAL,
            "input_series": [
                series(queue, proc(A, "tracker"), "50x60"),
                series(in_flight, proc(A, "tracker"), "4x60"),
                series(processed, proc(A, "w1"), "100x60"),  # one worker idle,
                series(processed, proc(A, "w2"), "0+1x60"),  # another settling
                series(queue, proc(B, "tracker"), "0x60"),  # B: idle
                series(in_flight, proc(B, "tracker"), "0x60"),
                series(processed, proc(B, "w3"), "100x60"),
                series(queue, proc(C, "tracker"), "5x60"),  # C: every image fails
                series(in_flight, proc(C, "tracker"), "1x60"),
                series(
                    "ray_image_service_images_failed_total",
                    f'{proc(C, "w4")}, reason="download"',
                    "0+1x60",
                ),
            ],
            "alert_rule_test": [
                {"eval_time": "10m", "alertname": "ImageServiceStalled", "exp_alerts": []}
            ],
        },
    ]


def failure_ratio_cases() -> list[Case]:
    processed = "ray_image_service_images_processed_total"
    failed = "ray_image_service_images_failed_total"

    def namespaced(namespace: str, worker: str) -> str:
        return proc(A.replace('"jobs"', f'"{namespace}"'), worker)

    return [
        {
            "name": "FailureRatioHigh fires by reason, over both clusters, cancels not counted",
            "interval": INTERVAL,
            "input_series": [
                series(processed, proc(A, "w1"), "0+15x80"),  # 1/s
                series(processed, proc(B, "w3"), "0+15x80"),  # 1/s
                series(failed, f'{proc(A, "w2")}, reason="download"', "0+15x80"),  # 1/s of 3
                # 10/s dropped by a cancel: neither a failure here nor an image tried.
                series(failed, f'{proc(A, "tracker")}, reason="cancelled"', "0+150x80"),
            ],
            "alert_rule_test": [
                {"eval_time": "5m", "alertname": "ImageServiceFailureRatioHigh", "exp_alerts": []},
                {
                    "eval_time": "15m",
                    "alertname": "ImageServiceFailureRatioHigh",
                    "exp_alerts": [
                        expect(
                            "ImageServiceFailureRatioHigh",
                            {"namespace": "jobs", "reason": "download"},
                            "33.33% of the images tried fail with reason download",
                        )
                    ],
                },
            ],
        },
        {
            "name": "FailureRatioHigh stays quiet: few images, few failures, or only cancels",
            "interval": INTERVAL,
            "input_series": [
                # One image a minute, every one failing: too few to judge.
                series(failed, f'{namespaced("small", "w1")}, reason="decode"', "0+0.25x80"),
                # 2/s measured, 0.1/s failing: under 10%.
                series(processed, namespaced("healthy", "w1"), "0+30x80"),
                series(failed, f'{namespaced("healthy", "w2")}, reason="download"', "0+1.5x80"),
                # Everything failed was dropped by a cancel.
                series(processed, namespaced("cancels", "w1"), "0+15x80"),
                series(failed, f'{namespaced("cancels", "t")}, reason="cancelled"', "0+150x80"),
            ],
            "alert_rule_test": [
                {"eval_time": "15m", "alertname": "ImageServiceFailureRatioHigh", "exp_alerts": []}
            ],
        },
    ]


def tracker_absent_cases() -> list[Case]:
    summary = "No job tracker reports metrics: the service, or its scraping, is down"
    return [
        {
            "name": "TrackerAbsent fires when no tracker reports, whatever else does",
            "interval": INTERVAL,
            "input_series": [
                series("ray_image_service_images_processed_total", proc(A, "w1"), "0+1x40")
            ],
            "alert_rule_test": [
                {"eval_time": "4m", "alertname": "ImageServiceTrackerAbsent", "exp_alerts": []},
                {
                    "eval_time": "6m",
                    "alertname": "ImageServiceTrackerAbsent",
                    "exp_alerts": [
                        expect("ImageServiceTrackerAbsent", {"namespace": "jobs"}, summary)
                    ],
                },
            ],
        },
        {
            "name": "TrackerAbsent fires, once, when nothing of the service reports at all",
            "interval": INTERVAL,
            "input_series": [series("up", 'job="other"', "1x40")],
            "alert_rule_test": [
                {
                    "eval_time": "6m",
                    "alertname": "ImageServiceTrackerAbsent",
                    "exp_alerts": [expect("ImageServiceTrackerAbsent", {}, summary)],
                },
            ],
        },
        {
            "name": "TrackerAbsent stays quiet while one tracker reports, even a standby's 0",
            "interval": INTERVAL,
            "input_series": [series("ray_image_service_queue_depth", proc(B, "tracker"), "0x40")],
            "alert_rule_test": [
                {"eval_time": "6m", "alertname": "ImageServiceTrackerAbsent", "exp_alerts": []}
            ],
        },
        {
            "name": "TrackerAbsent stays quiet while each namespace's workers have its tracker",
            "interval": INTERVAL,
            "input_series": [
                series("ray_image_service_queue_depth", proc(A, "tracker"), "0x40"),
                series("ray_image_service_slots_total", proc(A, "w1"), "8x40"),
                series("ray_image_service_queue_depth", proc(B, "tracker"), "3x40"),
                series("ray_image_service_slots_total", proc(B, "w1"), "8x40"),
            ],
            "alert_rule_test": [
                {"eval_time": "6m", "alertname": "ImageServiceTrackerAbsent", "exp_alerts": []}
            ],
        },
    ]


def lease_cases() -> list[Case]:
    jobs, lease = "ray_image_service_jobs", "ray_image_service_dispatch_lease"
    summary = "Unfinished jobs exist and no cluster holds the dispatch lease"

    def namespaced(namespace: str, cluster: str = A) -> str:
        return proc(cluster.replace('"jobs"', f'"{namespace}"'), "tracker")

    return [
        {
            "name": "NoLeaseHolder fires when unfinished jobs wait and no tracker holds the lease",
            "interval": INTERVAL,
            "input_series": [
                # Both trackers report the one database's counts; neither holds the lease.
                series(jobs, f'{proc(A, "tracker")}, state="ongoing"', "3x40"),
                series(jobs, f'{proc(B, "tracker")}, state="ongoing"', "3x40"),
                series(lease, proc(A, "tracker"), "0x40"),
                series(lease, proc(B, "tracker"), "0x40"),
                # A job being cancelled needs a dispatcher too.
                series(jobs, f'{namespaced("cancelling")}, state="cancelling"', "1x40"),
                series(jobs, f'{namespaced("cancelling")}, state="ongoing"', "0x40"),
                series(lease, namespaced("cancelling"), "0x40"),
            ],
            "alert_rule_test": [
                {"eval_time": "1m", "alertname": "ImageServiceNoLeaseHolder", "exp_alerts": []},
                {
                    "eval_time": "5m",
                    "alertname": "ImageServiceNoLeaseHolder",
                    "exp_alerts": [
                        expect("ImageServiceNoLeaseHolder", {"namespace": "cancelling"}, summary),
                        expect("ImageServiceNoLeaseHolder", {"namespace": "jobs"}, summary),
                    ],
                },
            ],
        },
        {
            "name": "NoLeaseHolder stays quiet: one cluster holds it, no jobs, or a handover",
            "interval": INTERVAL,
            "input_series": [
                series(jobs, f'{proc(A, "tracker")}, state="ongoing"', "3x40"),
                series(jobs, f'{proc(B, "tracker")}, state="ongoing"', "3x40"),
                series(lease, proc(A, "tracker"), "0x40"),
                series(lease, proc(B, "tracker"), "1x40"),
                # Nothing unfinished, nobody leading.
                series(jobs, f'{namespaced("idle")}, state="ongoing"', "0x40"),
                series(jobs, f'{namespaced("idle")}, state="completed"', "5x40"),
                series(lease, namespaced("idle"), "0x40"),
                # The holder goes at 1m; the other cluster takes over 30 s later.
                series(jobs, f'{namespaced("handover")}, state="ongoing"', "2x40"),
                series(lease, namespaced("handover"), "1x4 0x35"),
                series(lease, namespaced("handover", B), "0x6 1x33"),
            ],
            "alert_rule_test": [
                {"eval_time": t, "alertname": "ImageServiceNoLeaseHolder", "exp_alerts": []}
                for t in ("2m", "5m")
            ],
        },
    ]


def http_cases() -> list[Case]:
    requests = "ray_image_service_http_requests_total"

    def answers(route: str, code: str, worker: str, values: str, namespace: str = "jobs") -> Any:
        labels = proc(A.replace('"jobs"', f'"{namespace}"'), worker)
        return series(requests, f'{labels}, route="{route}", code="{code}"', values)

    return [
        {
            "name": "Http5xx fires on a route answering 5xx, counted over its replicas",
            "interval": INTERVAL,
            "input_series": [
                answers("/api/submit", "201", "api1", "0+15x60"),  # 1/s
                answers("/api/submit", "503", "api1", "0+7.5x60"),  # 0.5/s
                answers("/api/submit", "503", "api2", "0+7.5x60"),  # 0.5/s
            ],
            "alert_rule_test": [
                {"eval_time": "3m", "alertname": "ImageServiceHttp5xx", "exp_alerts": []},
                {
                    "eval_time": "10m",
                    "alertname": "ImageServiceHttp5xx",
                    "exp_alerts": [
                        expect(
                            "ImageServiceHttp5xx",
                            {"namespace": "jobs", "route": "/api/submit"},
                            "50% of /api/submit answers are 5xx",
                        )
                    ],
                },
            ],
        },
        {
            "name": "Http5xx stays quiet: a few 5xx among many, a lone 5xx, or only 4xx",
            "interval": INTERVAL,
            "input_series": [
                answers("/api/status", "200", "api1", "0+1500x60"),  # 100/s
                answers("/api/status", "503", "api1", "0+15x60"),  # 1/s: 1%
                answers("/api/submit", "201", "api1", "0+0.15x60", "quiet"),  # 0.01/s
                answers("/api/submit", "503", "api1", "0+0.15x60", "quiet"),  # half, but rare
                answers("/api/submit", "429", "api1", "0+75x60", "limited"),
            ],
            "alert_rule_test": [
                {"eval_time": "10m", "alertname": "ImageServiceHttp5xx", "exp_alerts": []}
            ],
        },
    ]


def downloads_cases() -> list[Case]:
    buckets = "ray_image_service_download_seconds_bucket"

    def histogram(worker: str, counts: dict[str, str], namespace: str = "jobs") -> list[Any]:
        labels = proc(A.replace('"jobs"', f'"{namespace}"'), worker)
        return [series(buckets, f'{labels}, le="{le}"', values) for le, values in counts.items()]

    slow = {"1": "0+0x80", "10": "0+0x80", "30": "0+15x80", "+Inf": "0+15x80"}
    fast = {"1": "0+15x80", "10": "0+15x80", "30": "0+15x80", "+Inf": "0+15x80"}
    none = {"1": "0x80", "10": "0x80", "30": "0x80", "+Inf": "0x80"}
    return [
        {
            "name": "DownloadsSlow fires when the p95 download passes 10 s",
            "interval": INTERVAL,
            "input_series": [*histogram("w1", slow), *histogram("w2", fast)],
            "alert_rule_test": [
                {"eval_time": "5m", "alertname": "ImageServiceDownloadsSlow", "exp_alerts": []},
                {
                    "eval_time": "15m",
                    # Half the downloads in 10-30 s: p95 = 10 + 20 x (0.95 - 0.5) / 0.5 = 28 s.
                    "alertname": "ImageServiceDownloadsSlow",
                    "exp_alerts": [
                        expect(
                            "ImageServiceDownloadsSlow",
                            {"namespace": "jobs"},
                            "95th percentile image download time is 28s",
                        )
                    ],
                },
            ],
        },
        {
            "name": "DownloadsSlow stays quiet: fast downloads, or none at all",
            "interval": INTERVAL,
            "input_series": [*histogram("w1", fast), *histogram("w2", none, "idle")],
            "alert_rule_test": [
                {"eval_time": "15m", "alertname": "ImageServiceDownloadsSlow", "exp_alerts": []}
            ],
        },
    ]


def store_errors_cases() -> list[Case]:
    errors = "ray_image_service_store_errors_total"

    def tracker(namespace: str) -> str:
        return proc(A.replace('"jobs"', f'"{namespace}"'), "tracker") + ', kind="flush"'

    return [
        {
            "name": "StoreErrors fires when job store calls keep failing",
            "interval": INTERVAL,
            "input_series": [series(errors, tracker("jobs"), "0+1x80")],
            "alert_rule_test": [
                {"eval_time": "5m", "alertname": "ImageServiceStoreErrors", "exp_alerts": []},
                {
                    "eval_time": "12m",
                    "alertname": "ImageServiceStoreErrors",
                    "exp_alerts": [
                        expect(
                            "ImageServiceStoreErrors",
                            {"namespace": "jobs", "kind": "flush"},
                            "Job store calls fail (flush) for more than 5 minutes",
                        )
                    ],
                },
            ],
        },
        {
            "name": "StoreErrors stays quiet after one blip, and while none come",
            "interval": INTERVAL,
            "input_series": [
                series(errors, tracker("blip"), "0x20 1x60"),  # one error at 5m15s
                series(errors, tracker("calm"), "3x80"),
            ],
            "alert_rule_test": [
                {"eval_time": t, "alertname": "ImageServiceStoreErrors", "exp_alerts": []}
                for t in ("8m", "12m", "18m")
            ],
        },
    ]


def rules_tests() -> dict[str, Any]:
    """The promtool test file, beside the rule file it reads."""
    return {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": INTERVAL,
        "tests": [
            recording_case(),
            *stalled_cases(),
            *failure_ratio_cases(),
            *tracker_absent_cases(),
            *lease_cases(),
            *http_cases(),
            *downloads_cases(),
            *store_errors_cases(),
        ],
    }
