"""The Prometheus recording rules the dashboard reads and the alerts an operator gets.

Every worker process (and the tracker) reports its own series, told apart by Ray's labels
(WorkerId, NodeAddress, Component, ...) and the scrape's (instance, pod, ...). Every rule
therefore sums `by` the labels that tell one cluster from another, and drops the rest:
`namespace` and `ray_io_cluster` (set by the PodMonitor on KubeRay; absent, so empty,
elsewhere) and `SessionName` (Ray's, new at every start of a cluster's head). The alerts sum
those again `by (namespace)`: one service per namespace, however many RayClusters it runs on
(two during an upgrade, one database).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

CLUSTER = "namespace, ray_io_cluster, SessionName"
SERVICE = "namespace"
# Series the image workers report whether or not they hold images.
WORKER_SERIES = '{__name__=~"ray_image_service_(slots_total|images_processed_total)"}'

# Thresholds, each with the reason for its value.
# Above this share of the images that were tried (not dropped by a cancel), by reason.
FAILURE_RATIO = 0.10
# ... judged only when at least this many images/s are tried: one failure out of three images
# in five minutes says little.
FAILURE_MIN_RATE = 0.1
# Above this share of a route's answers being 5xx ...
HTTP_5XX_RATIO = 0.05
# ... and at least this many 5xx/s (3 a minute): one 503 among five requests is not an outage.
HTTP_5XX_MIN_RATE = 0.05
# p95 of one image's download, retries included, in seconds. The whole budget is 30 s
# (IMAGE_SERVICE_DOWNLOAD_TIMEOUT); past a third of it for 1 in 20 images the origins or the
# network are slow enough to cut throughput.
DOWNLOAD_P95_SECONDS = 10.0


@dataclass(frozen=True)
class Record:
    name: str
    expr: str

    def rule(self) -> dict[str, Any]:
        return {"record": self.name, "expr": self.expr}


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str
    for_: str
    severity: str
    summary: str
    runbook: str

    def rule(self) -> dict[str, Any]:
        return {
            "alert": self.name,
            "expr": self.expr,
            "for": self.for_,
            "labels": {"severity": self.severity},
            "annotations": {"summary": self.summary, "runbook": self.runbook},
        }


def _rate(metric: str, window: str, by: str) -> str:
    return f"sum by ({by}) (rate({metric}[{window}]))"


def recording_rules() -> list[Record]:
    """Evaluated in order: the later ones read the earlier ones of the same evaluation."""
    records = []
    for window in ("1m", "5m"):
        # A Ray counter appears only once it is first incremented: processed and failed may
        # each be missing. `or` keeps both (a failed series always has a reason label, so it
        # never matches a processed one), where `+` would drop the side that has the other.
        records += [
            Record(
                f"image_service:images_processed:rate{window}",
                _rate("ray_image_service_images_processed_total", window, CLUSTER),
            ),
            Record(
                f"image_service:images_failed:rate{window}",
                _rate("ray_image_service_images_failed_total", window, f"{CLUSTER}, reason"),
            ),
            Record(
                f"image_service:images_settled:rate{window}",
                f"sum by ({CLUSTER}) (image_service:images_failed:rate{window}"
                f" or image_service:images_processed:rate{window})",
            ),
        ]
    records += [
        # Images that were tried: measured, or failed for a reason other than a cancel (a
        # cancel drops queued images by the thousand at once, which says nothing of health).
        Record(
            "image_service:images_attempted:rate5m",
            f'sum by ({CLUSTER}) (image_service:images_failed:rate5m{{reason!="cancelled"}}'
            " or image_service:images_processed:rate5m)",
        ),
        Record(
            "image_service:downloaded_bytes:rate1m",
            _rate("ray_image_service_downloaded_bytes_total", "1m", CLUSTER),
        ),
    ]
    # Histograms: the buckets of every worker added up per cluster, the heavy part of a
    # quantile (one series per bucket per worker process).
    for name in ("download_seconds", "processing_seconds", "decode_seconds"):
        records.append(
            Record(
                f"image_service:{name}_bucket:rate1m",
                _rate(f"ray_image_service_{name}_bucket", "1m", f"{CLUSTER}, le"),
            )
        )
    records += [
        Record(
            "image_service:download_seconds_bucket:rate5m",
            _rate("ray_image_service_download_seconds_bucket", "5m", f"{CLUSTER}, le"),
        ),
        Record(
            "image_service:http_requests:rate1m",
            _rate("ray_image_service_http_requests_total", "1m", f"{CLUSTER}, route, code"),
        ),
        Record(
            "image_service:http_requests:rate5m",
            _rate("ray_image_service_http_requests_total", "5m", f"{CLUSTER}, route, code"),
        ),
        Record(
            "image_service:http_request_seconds_bucket:rate1m",
            _rate("ray_image_service_http_request_seconds_bucket", "1m", f"{CLUSTER}, route, le"),
        ),
    ]
    return records


def alerts() -> list[Alert]:
    return [
        Alert(
            "ImageServiceStalled",
            # Per cluster: the queue and the images in flight are the dispatching tracker's own.
            f"(\n  sum by ({CLUSTER}) (ray_image_service_queue_depth)\n"
            f"  + sum by ({CLUSTER}) (ray_image_service_images_in_flight)\n) > 0\n"
            f"unless on ({CLUSTER})\n  image_service:images_settled:rate5m > 0",
            "2m",
            "critical",
            "{{ $labels.ray_io_cluster }} {{ $labels.SessionName }}: images are waiting and "
            "none has settled for 5 minutes",
            """\
What it means: the cluster's tracker holds images (queued, or in flight on a worker) and not
one image has been measured or failed in 5 minutes. A download gives up after 30 s and the
simulated GPU step takes under a second, so work that moves settles something every few
seconds: jobs are stuck.
What to check: the dashboard's "Queue depth and images in flight" and "GPU slot utilisation"
(slots busy but nothing settling: workers hung; no slots at all: no worker nodes joined); the
Ray dashboard's Actors view for the ImageWorker actors (dead, restarting, pending for lack of
image_slots); `kubectl get pods -l ray.io/cluster=<cluster>` for worker pods that are
Pending or crash-looping; the tracker's log (`worker-*.err` of the JobTracker actor) for a
dispatch loop that logs errors again and again.
What to do: bring the worker pods back (resources, image pull, node pool); if the workers
run and nothing moves, restart the head pod: the tracker resumes the unfinished jobs from the
database and images in flight are dispatched again.""",
        ),
        Alert(
            "ImageServiceFailureRatioHigh",
            f"sum by ({SERVICE}, reason) "
            '(image_service:images_failed:rate5m{reason!="cancelled"})\n'
            f"/ on ({SERVICE}) group_left ()\n"
            f"(sum by ({SERVICE}) (image_service:images_attempted:rate5m) > {FAILURE_MIN_RATE})\n"
            f"> {FAILURE_RATIO}",
            "10m",
            "warning",
            "{{ $value | humanizePercentage }} of the images tried fail with reason "
            "{{ $labels.reason }}",
            f"""\
What it means: over 5 minutes, more than {FAILURE_RATIO:.0%} of the images the service tried
(measured or failed; images dropped by a cancel are not counted) failed for this reason, for
10 minutes, with at least {FAILURE_MIN_RATE} images/s tried.
What to check, by reason: `download`: the origins (HTTP status and host in the jobs' errors:
`imgjobs status <job>` or GET /api/jobs/<job>), the cluster's egress and DNS; `not_an_image`
or `decode`: what the origins send (HTML error pages, truncated files); one client's job is
often the whole of it; `unknown_store`: the Store Master CSV (data/store_master.csv) is
stale or was replaced by a smaller one; `worker_lost`: image workers dying (OOM kills in
`kubectl get events`, the Ray dashboard's Actors view); `internal`: the tracker's and
workers' logs for tracebacks, this is a bug.
What to do: for client-side reasons, tell the client (the job's errors name the URL and the
cause); for worker_lost, give the workers memory or lower IMAGE_SERVICE_DECODE_PIXEL_BUDGET;
for internal, file a bug with the log lines.""",
        ),
        Alert(
            "ImageServiceTrackerAbsent",
            # Per namespace: the service's workers report there and no tracker does. absent()
            # for a Prometheus that sees nothing of the service at all.
            "(\n"
            f"  count by ({SERVICE}) ({WORKER_SERIES})\n"
            f"  unless on ({SERVICE}) count by ({SERVICE}) (ray_image_service_queue_depth)\n"
            ")\nor (\n"
            "  absent(ray_image_service_queue_depth)\n"
            f"  unless on () count by () ({WORKER_SERIES})\n"
            ")",
            "5m",
            "critical",
            "No job tracker reports metrics: the service, or its scraping, is down",
            """\
What it means: no series ray_image_service_queue_depth has reached Prometheus for 5 minutes:
from the alert's namespace, whose image workers do report, or (no namespace) from anywhere,
with nothing else of the service seen either. Every JobTracker reports it every
IMAGE_SERVICE_METRICS_INTERVAL seconds, whether or not it holds the dispatch lease; so either
no tracker runs there, or Prometheus scrapes none of the service's pods (or not the head's).
What to check: `kubectl get rayservice image-job-service` and its pods; GET /healthz on the
Serve service (503 when the tracker does not answer); Prometheus' Targets page for the
PodMonitor image-job-service (targets down, or none found: the pods' `metrics` port and
labels); `curl <pod>:8080/metrics | grep ray_image_service_` on the head pod.
What to do: if the pods run and /healthz is 200, fix the scraping (PodMonitor selector, the
Prometheus' podMonitorSelector and namespace selector, network policy). Ray restarts a
crashed tracker by itself, on the head node: one that stays down, or a head pod that keeps
restarting, has the cause in its log (often the database: IMAGE_SERVICE_DATABASE_URL and its
Secret, or the server unreachable).""",
        ),
        Alert(
            "ImageServiceNoLeaseHolder",
            f'max by ({SERVICE}) (ray_image_service_jobs{{state=~"ongoing|cancelling"}}) > 0\n'
            f"unless on ({SERVICE})\n"
            f"  sum by ({SERVICE}) (ray_image_service_dispatch_lease) > 0",
            "2m",
            "critical",
            "Unfinished jobs exist and no cluster holds the dispatch lease",
            """\
What it means: the job store holds ongoing or cancelling jobs, but no tracker reports
holding the dispatch lease, for 2 minutes: nothing dispatches their images. A handover takes
IMAGE_SERVICE_LEASE_SECONDS (15 s) after a holder dies, so this is not an upgrade in
progress. (The job counts come from the database, so every tracker reports them: max, not
sum.)
What to check: how many trackers report (`ray_image_service_dispatch_lease` by
ray_io_cluster and SessionName); their logs for "standing by", "took the dispatch lease",
"lost the dispatch lease" and for job store errors (renewing the lease is a database write:
the "Job store errors" panel, ImageServiceStoreErrors); the database's health and clock.
What to do: restore the database if it is the cause (the lease is taken again on the first
renewal that succeeds); if a standby tracker never takes over, restart its head pod.""",
        ),
        Alert(
            "ImageServiceHttp5xx",
            f'(sum by ({SERVICE}, route) (image_service:http_requests:rate5m{{code=~"5.."}})'
            f" > {HTTP_5XX_MIN_RATE})\n"
            f"/ on ({SERVICE}, route)\n"
            f"sum by ({SERVICE}, route) (image_service:http_requests:rate5m)\n"
            f"> {HTTP_5XX_RATIO}",
            "5m",
            "warning",
            "{{ $value | humanizePercentage }} of {{ $labels.route }} answers are 5xx",
            f"""\
What it means: for 5 minutes, more than {HTTP_5XX_RATIO:.0%} of this route's answers were
5xx, at least {HTTP_5XX_MIN_RATE * 60:.0f} a minute. The service answers 503 with Retry-After
when the tracker does not answer within IMAGE_SERVICE_TRACKER_TIMEOUT, when a job store call
passes its deadline, when it already holds its limit of unsettled images, and when Serve's
queue is full; it never answers 500 on purpose.
What to check: the "API requests per second" panel for the codes; 503 with the tracker slow
or down (ImageServiceTrackerAbsent, the tracker's log), with job store errors
(ImageServiceStoreErrors, the database's latency and connections), with the queue at its
cap ("Queue depth" near IMAGE_SERVICE_MAX_QUEUED_IMAGES: more workers, or clients
submitting less); a 500 is a bug: the API replica's log has the traceback.
What to do: fix the cause above; clients retry 503 on their own (imgjobs does, with the same
Idempotency-Key).""",
        ),
        Alert(
            "ImageServiceDownloadsSlow",
            f"histogram_quantile(0.95, sum by ({SERVICE}, le) "
            f"(image_service:download_seconds_bucket:rate5m))\n> {DOWNLOAD_P95_SECONDS:g}",
            "10m",
            "warning",
            "95th percentile image download time is {{ $value | humanizeDuration }}",
            f"""\
What it means: for 10 minutes, 1 image in 20 took more than {DOWNLOAD_P95_SECONDS:g} s to
download, retries included (the budget is 30 s, then the image fails). Workers wait on
downloads ahead of the GPU step, so throughput falls.
What to check: the "Download time" and "Downloaded bytes per second" panels; the jobs'
origins (one slow host behind many images, or origins answering 429/5xx that are retried
with backoff); the cluster's egress bandwidth and DNS; downloads at once per node
(IMAGE_SERVICE_FETCH_CONCURRENCY) against the images' sizes.
What to do: if one origin is slow, nothing on our side (tell the client); if every origin
is, look at egress (NAT gateway limits, bandwidth); more worker nodes spread the
downloads.""",
        ),
        Alert(
            "ImageServiceStoreErrors",
            f"sum by ({SERVICE}, kind) (rate(ray_image_service_store_errors_total[5m])) > 0",
            "10m",
            "warning",
            "Job store calls fail ({{ $labels.kind }}) for more than 5 minutes",
            """\
What it means: calls to the job store (SQLite or PostgreSQL) have kept failing, of this
kind, for more than 5 minutes (one blip clears after 5). While they fail, results wait in
memory for the next flush ("Flush backlog"), submissions answer 503, and a tracker that
cannot renew the dispatch lease stops dispatching.
What to check: the "Job store errors" and "Flush time / backlog" panels; the database's
availability, connection limit, disk and locks; the tracker's log for the error text;
IMAGE_SERVICE_DATABASE_URL and its Secret after a credential rotation.
What to do: restore the database; nothing is lost while the tracker runs (it flushes the
backlog once calls succeed), but a tracker restart loses the results not yet flushed, and
those images are processed again.""",
        ),
    ]


def rule_groups() -> list[dict[str, Any]]:
    """The rule file's groups, as rules.yaml and the PrometheusRule carry them."""
    return [
        {
            "name": "image_service.recording",
            "rules": [record.rule() for record in recording_rules()],
        },
        {"name": "image_service.alerts", "rules": [alert.rule() for alert in alerts()]},
    ]
