"""The one settings object, read once from `IMAGE_SERVICE_*` environment variables."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_STORE_MASTER = PACKAGE_ROOT / "data" / "store_master.csv"

ENV_PREFIX = "IMAGE_SERVICE_"


class SettingsError(ValueError):
    """An environment variable holds a value the service cannot use."""


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = Path("data/run")
    store_master: Path = DEFAULT_STORE_MASTER
    gpu_delay_min: float = 0.1
    gpu_delay_max: float = 0.4
    # Simulated GPU work at once on a node that does not advertise its own `image_slots`.
    concurrency: int = 64
    # Image worker processes per node, sharing its slots; 0: one per CPU of the node.
    workers_per_node: int = 0
    # Images downloaded and measured ahead of the GPU step, per GPU slot.
    fetch_ahead: float = 1.0
    # Downloads and measurements at once per node (bytes held: at most this x MAX_IMAGE_BYTES).
    fetch_concurrency: int = 256
    allow_private_urls: bool = False
    allowed_hosts: tuple[str, ...] = ()

    max_body_bytes: int = 10 * 1024 * 1024
    max_images_per_job: int = 100_000
    max_url_length: int = 2048  # image and callback URLs
    max_store_id_length: int = 256
    max_visit_time_length: int = 64
    max_idempotency_key_length: int = 255
    max_image_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 100_000_000
    # Pixels being decoded at once on a node, over all its images: bounds decoding memory.
    decode_pixel_budget: int = 200_000_000
    # Times an image may be in flight on a worker that dies before the image fails.
    max_image_attempts: int = 3

    connect_timeout: float = 5.0
    read_timeout: float = 10.0
    download_timeout: float = 30.0
    download_retries: int = 3
    retry_backoff: float = 0.25
    max_redirects: int = 5

    api_keys: tuple[str, ...] = ()
    submit_rate: float = 10.0  # submissions per second per client, sustained
    submit_burst: int = 50
    max_open_jobs_per_client: int = 100
    # Images not yet settled, over every job: past it a submission is answered 503.
    max_queued_images: int = 1_000_000
    # How long an API call waits for the job tracker before answering 503.
    tracker_timeout: float = 30.0

    results_page_max: int = 1000
    flush_interval: float = 0.2

    callback_attempts: int = 5
    callback_backoff: float = 1.0
    callback_timeout: float = 10.0

    ray_port: int = 6379
    dashboard_port: int = 8265
    # Where the head's metrics agent serves Prometheus text (`ray start --metrics-export-port`).
    metrics_port: int = 8080
    include_dashboard: bool = True
    # Serve's HAProxy ingress with its throughput-optimized mode (see service/launcher.py).
    # Off by default: with it, two services on one host crossed traffic in the test suite.
    fast_ingress: bool = False
    ray_start_args: tuple[str, ...] = field(default_factory=tuple)

    @property
    def database_path(self) -> Path:
        return self.data_dir / "jobs.sqlite3"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if environ is None else environ)

        def get(name: str) -> str | None:
            value = env.get(ENV_PREFIX + name)
            return value.strip() if value is not None and value.strip() else None

        def integer(name: str, default: int, minimum: int = 0) -> int:
            raw = get(name)
            if raw is None:
                return default
            try:
                value = int(raw)
            except ValueError:
                raise SettingsError(f"{ENV_PREFIX}{name} must be an integer, got {raw!r}") from None
            if value < minimum:
                raise SettingsError(f"{ENV_PREFIX}{name} must be at least {minimum}, got {value}")
            return value

        def number(name: str, default: float, positive: bool = False) -> float:
            raw = get(name)
            if raw is None:
                return default
            try:
                value = float(raw)
            except ValueError:
                raise SettingsError(f"{ENV_PREFIX}{name} must be a number, got {raw!r}") from None
            if not math.isfinite(value) or value < 0 or (positive and value == 0):
                bound = "above 0" if positive else "at least 0"
                raise SettingsError(f"{ENV_PREFIX}{name} must be {bound}, got {raw!r}")
            return value

        def flag(name: str, default: bool) -> bool:
            raw = get(name)
            if raw is None:
                return default
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise SettingsError(f"{ENV_PREFIX}{name} must be 0 or 1, got {raw!r}")

        defaults = cls()
        delay_min, delay_max = parse_delay_range(get("GPU_DELAY") or "0.1-0.4")
        return cls(
            host=get("HOST") or defaults.host,
            port=integer("PORT", defaults.port, minimum=1),
            data_dir=Path(get("DATA_DIR") or defaults.data_dir).resolve(),
            store_master=Path(get("STORE_MASTER") or defaults.store_master).resolve(),
            gpu_delay_min=delay_min,
            gpu_delay_max=delay_max,
            concurrency=integer("CONCURRENCY", defaults.concurrency, minimum=1),
            workers_per_node=integer("WORKERS_PER_NODE", defaults.workers_per_node),
            fetch_ahead=number("FETCH_AHEAD", defaults.fetch_ahead),
            fetch_concurrency=integer("FETCH_CONCURRENCY", defaults.fetch_concurrency, minimum=1),
            allow_private_urls=flag("ALLOW_PRIVATE_URLS", defaults.allow_private_urls),
            allowed_hosts=tuple(
                entry.strip() for entry in (get("ALLOWED_HOSTS") or "").split(",") if entry.strip()
            ),
            max_body_bytes=integer("MAX_BODY_BYTES", defaults.max_body_bytes, minimum=1),
            max_images_per_job=integer(
                "MAX_IMAGES_PER_JOB", defaults.max_images_per_job, minimum=1
            ),
            max_url_length=integer("MAX_URL_LENGTH", defaults.max_url_length, minimum=16),
            max_store_id_length=integer(
                "MAX_STORE_ID_LENGTH", defaults.max_store_id_length, minimum=1
            ),
            max_visit_time_length=integer(
                "MAX_VISIT_TIME_LENGTH", defaults.max_visit_time_length, minimum=10
            ),
            max_idempotency_key_length=integer(
                "MAX_IDEMPOTENCY_KEY_LENGTH", defaults.max_idempotency_key_length, minimum=1
            ),
            max_image_bytes=integer("MAX_IMAGE_BYTES", defaults.max_image_bytes, minimum=1),
            max_image_pixels=integer("MAX_IMAGE_PIXELS", defaults.max_image_pixels, minimum=1),
            decode_pixel_budget=integer(
                "DECODE_PIXEL_BUDGET", defaults.decode_pixel_budget, minimum=1
            ),
            max_image_attempts=integer(
                "MAX_IMAGE_ATTEMPTS", defaults.max_image_attempts, minimum=1
            ),
            connect_timeout=number("CONNECT_TIMEOUT", defaults.connect_timeout),
            read_timeout=number("READ_TIMEOUT", defaults.read_timeout),
            download_timeout=number("DOWNLOAD_TIMEOUT", defaults.download_timeout),
            download_retries=integer("DOWNLOAD_RETRIES", defaults.download_retries),
            retry_backoff=number("RETRY_BACKOFF", defaults.retry_backoff),
            max_redirects=integer("MAX_REDIRECTS", defaults.max_redirects),
            api_keys=tuple(k.strip() for k in (get("API_KEYS") or "").split(",") if k.strip()),
            submit_rate=number("SUBMIT_RATE", defaults.submit_rate, positive=True),
            submit_burst=integer("SUBMIT_BURST", defaults.submit_burst, minimum=1),
            max_open_jobs_per_client=integer(
                "MAX_OPEN_JOBS_PER_CLIENT", defaults.max_open_jobs_per_client, minimum=1
            ),
            max_queued_images=integer("MAX_QUEUED_IMAGES", defaults.max_queued_images, minimum=1),
            tracker_timeout=number("TRACKER_TIMEOUT", defaults.tracker_timeout, positive=True),
            results_page_max=integer("RESULTS_PAGE_MAX", defaults.results_page_max, minimum=1),
            flush_interval=number("FLUSH_INTERVAL", defaults.flush_interval),
            callback_attempts=integer("CALLBACK_ATTEMPTS", defaults.callback_attempts, minimum=1),
            callback_backoff=number("CALLBACK_BACKOFF", defaults.callback_backoff),
            callback_timeout=number("CALLBACK_TIMEOUT", defaults.callback_timeout),
            ray_port=integer("RAY_PORT", defaults.ray_port, minimum=1),
            dashboard_port=integer("DASHBOARD_PORT", defaults.dashboard_port, minimum=1),
            metrics_port=integer("METRICS_PORT", defaults.metrics_port, minimum=1),
            include_dashboard=flag("INCLUDE_DASHBOARD", defaults.include_dashboard),
            fast_ingress=flag("FAST_INGRESS", defaults.fast_ingress),
            ray_start_args=tuple((get("RAY_START_ARGS") or "").split()),
        )


def parse_delay_range(text: str) -> tuple[float, float]:
    """Parse `LOW-HIGH` seconds (or a single number) into an ordered pair."""
    parts = text.split("-")
    try:
        if len(parts) == 1:
            low = high = float(parts[0])
        elif len(parts) == 2:
            low, high = float(parts[0]), float(parts[1])
        else:
            raise ValueError(text)
    except ValueError:
        raise SettingsError(
            f"{ENV_PREFIX}GPU_DELAY must look like 0.1-0.4 (seconds), got {text!r}"
        ) from None
    if low < 0 or high < low:
        raise SettingsError(f"{ENV_PREFIX}GPU_DELAY must satisfy 0 <= low <= high, got {text!r}")
    return low, high
