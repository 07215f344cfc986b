"""The one settings object: each setting declared once, read from `IMAGE_SERVICE_*` variables.

`python -m core.settings_table` prints the README's configuration table from these declarations.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from core.settings_parse import ENV_PREFIX as ENV_PREFIX  # where the other modules import it
from core.settings_parse import MAX_SECONDS, MappingSource, describe, parse_delay_range

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_STORE_MASTER = PACKAGE_ROOT / "data" / "store_master.csv"

# The name of the custom Ray resource that counts a node's GPU slots.
IMAGE_SLOTS = "image_slots"

# What libpq takes as a URL (anything else in DATABASE_URL is a mistake, not a SQLite path).
POSTGRES_SCHEMES = ("postgresql://", "postgres://")

# A timeout below this fails calls that work (an actor call, a small download on the same
# network take a few ms); 0 is "no timeout" to aiohttp, and fails every image as a download's.
Timeout = Annotated[float, Field(ge=0.1, le=MAX_SECONDS)]
# A loop that sleeps less than this between rounds spins: 100 rounds a second at the floor.
Interval = Annotated[float, Field(ge=0.01, le=MAX_SECONDS)]
# A retry sooner than this cannot expect its cause to have passed; at 0, a thousand fast
# failures in a row overflow the doubling (2.0 ** 1024) in `core.images.fetch.backoff_delay`.
Backoff = Annotated[float, Field(ge=0.01, le=MAX_SECONDS)]
Words = Annotated[tuple[str, ...], NoDecode]


# The environment `Settings.from_env` was given, in place of the process's own.
_GIVEN_ENVIRON: ContextVar[Mapping[str, str] | None] = ContextVar("given_environ", default=None)


class SettingsError(ValueError):
    """An environment variable holds a value the service cannot use."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        frozen=True,
        allow_inf_nan=False,
        str_strip_whitespace=True,
        validate_default=True,
    )

    # ---- where the service runs -------------------------------------------------------------
    port: int = Field(8000, ge=1, le=65535, description="HTTP port")
    host: str = Field("127.0.0.1", description="HTTP bind address")
    data_dir: Path = Field(
        Path("data/run"), description="where the job database (`jobs.sqlite3`) and logs live"
    )
    database_url: str = Field(
        "",
        repr=False,  # it may hold a password: kept out of logs and tracebacks
        description="`postgresql://user:password@host:5432/db` keeps the jobs in PostgreSQL (for "
        "clusters); empty: SQLite in `DATA_DIR`",
    )
    store_master: Path = Field(DEFAULT_STORE_MASTER, description="the Store Master CSV")
    database_timeout: float = Field(
        5.0,
        ge=0.5,
        le=MAX_SECONDS,
        description="seconds a job store call may take before it is cut off and answered `503` "
        "(recording a job gets 0.2 ms more per image); after one is, calls fail at once until a "
        "probe a second succeeds",
    )
    # Renewed every third of it: at the floor a write every 0.1 s, with 0.1 s left for each
    # renewal's answer before dispatching pauses (a slow commit takes ~10 ms).
    lease_seconds: float = Field(
        15.0,
        ge=0.3,
        le=MAX_SECONDS,
        description="how long the dispatch lease lasts unrenewed: when two clusters share one "
        "database, the other tracker takes over this long after the holder dies",
    )

    # ---- the image pipeline -----------------------------------------------------------------
    gpu_delay: Annotated[tuple[float, float], NoDecode] = Field(
        (0.1, 0.4), description="simulated GPU time per image, seconds, uniform (`LOW-HIGH`)"
    )
    concurrency: int = Field(
        64,
        ge=1,
        description="simulated GPU work at once per node (its GPU slots), for a node without "
        f"its own `{IMAGE_SLOTS}`",
    )
    workers_per_node: int = Field(
        0, ge=0, description="image worker processes per node, sharing its slots; `0`: one per CPU"
    )
    fetch_ahead: float = Field(
        1.0, ge=0, description="images downloaded and measured ahead of the GPU step, per GPU slot"
    )
    fetch_concurrency: int = Field(
        256,
        ge=1,
        description="downloads and measurements at once per node; the bytes they hold are "
        "bounded by `NODE_MEMORY_BUDGET`",
    )
    report_interval: Interval = Field(
        0.02, description="longest a settled image waits in its worker before it is reported"
    )

    # ---- which origins may be fetched -------------------------------------------------------
    allow_private_urls: bool = Field(
        False,
        description="`1` allows URLs that resolve to loopback/private/link-local/reserved "
        "addresses",
    )
    allowed_hosts: Words = Field(
        (),
        description="comma-separated host names or networks (`10.1.0.0/16`) allowed despite the "
        "guard",
    )

    # ---- limits on what a client sends ------------------------------------------------------
    max_body_bytes: int = Field(10 * 1024 * 1024, ge=1, description="largest submit body")
    max_images_per_job: int = Field(100_000, ge=1, description="most images in one job")
    max_url_length: int = Field(2048, ge=16, description="longest image or callback URL")
    max_store_id_length: int = Field(256, ge=1, description="longest `store_id`, characters")
    max_visit_time_length: int = Field(64, ge=10, description="longest `visit_time`, characters")
    max_idempotency_key_length: int = Field(
        255, ge=1, description="longest `Idempotency-Key`, characters"
    )
    max_queued_images: int = Field(
        1_000_000,
        ge=1,
        description="unsettled images over all jobs; a submission past it is `503` with "
        "`Retry-After`",
    )

    # ---- limits on what an origin sends -----------------------------------------------------
    max_image_bytes: int = Field(
        20 * 1024 * 1024, ge=1, description="largest image download (read as a stream, cut past it)"
    )
    max_image_pixels: int = Field(
        100_000_000, ge=1, description="largest image in pixels (decompression bombs fail)"
    )
    # Per node, whatever its CPUs: 1.6 GB at 4 bytes a pixel by default, what a 2-CPU node held
    # when the budget was per process (2 x 200 million), and enough for each of 16 workers to
    # decode a 12-megapixel photo beside the others (see `core.images.processing.DecodeBudget`).
    decode_pixel_budget: int = Field(
        400_000_000,
        ge=1,
        description="pixels being decoded at once on one node, over all its image worker "
        "processes (bounds decode memory); at least `MAX_IMAGE_PIXELS`, which are kept for the "
        "one image at a time larger than a worker's share of the rest",
    )
    # At most 1 GiB by default: on a phone-photo job the service's RSS peaked at 3.1 GB, 1.7 GB
    # on flat images, when only the count of downloads (256, up to 20 MB each) bounded bodies.
    node_memory_budget: int = Field(
        0,
        ge=0,
        description="bytes held at once on one node, over all its image worker processes: "
        "downloaded bodies (from the first byte read until the image is measured; the cap "
        "when the size is not known) and images being decoded (pixels x bytes a pixel); "
        "bodies take at most half; `0`: 128 MiB per CPU of the node, at most an eighth of its "
        "physical memory (MemTotal), 64 MiB to 1 GiB",
    )
    max_image_attempts: int = Field(
        3, ge=1, description="times an image may be in flight on a worker that dies before it fails"
    )
    max_redirects: int = Field(5, ge=0, description="redirects followed per image")
    connect_timeout: Timeout = Field(5.0, description="seconds to connect, per download attempt")
    read_timeout: Timeout = Field(10.0, description="seconds between bytes, per download attempt")
    download_timeout: Timeout = Field(
        30.0, description="seconds per image download in all, retries included"
    )
    download_retries: int = Field(3, ge=0, description="retries of a failed download")
    retry_backoff: Backoff = Field(
        0.25, description="seconds before the first retry; doubles after each"
    )

    # ---- clients ----------------------------------------------------------------------------
    api_keys: Words = Field(
        (),
        description="comma-separated API keys; when set, every API call needs "
        "`Authorization: Bearer <key>`",
    )
    # At the floor a refused client is told to come back in 1,000 s at most; below ~1e-308,
    # 1 / rate is infinite and the refusal itself fails (a 500).
    submit_rate: float = Field(
        10.0, ge=1e-3, description="submissions per second per client, sustained"
    )
    submit_burst: int = Field(50, ge=1, description="submissions per client allowed in a burst")
    max_open_jobs_per_client: int = Field(
        100, ge=1, description="unfinished jobs one client may have (with API keys on)"
    )
    tracker_timeout: Timeout = Field(
        30.0, description="seconds an API call waits for the job tracker before it answers `503`"
    )
    results_page_default: int = Field(
        100, ge=1, description="`limit` of `/api/results` when the caller gives none"
    )
    jobs_page_default: int = Field(
        20, ge=1, description="`limit` of `/api/jobs` when the caller gives none"
    )
    jobs_offset_max: int = Field(
        10_000,
        ge=0,
        description="largest `offset` of `/api/jobs`: a deeper page is a scan of that many jobs",
    )
    results_page_max: int = Field(
        1000, ge=1, description="largest `limit` of `/api/results` and `/api/jobs`"
    )

    # ---- the tracker ------------------------------------------------------------------------
    flush_interval: Interval = Field(
        0.2, description="seconds between the tracker's writes of settled results"
    )
    # Each look asks Ray's GCS for every node.
    node_refresh_interval: float = Field(
        2.0,
        ge=0.1,
        le=MAX_SECONDS,
        description="seconds between the tracker's looks for nodes that joined or left",
    )
    # Each update counts the jobs in the store (SQLite here: 35 ms for 100k jobs, 0.8 s for 1M);
    # Ray exports the gauges every 10 s anyway.
    metrics_interval: float = Field(
        2.0,
        ge=1.0,
        le=MAX_SECONDS,
        description="seconds between the tracker's updates of its gauges (jobs, queue)",
    )
    callback_attempts: int = Field(5, ge=1, description="completion callback: attempts")
    callback_backoff: Backoff = Field(
        1.0, description="completion callback: seconds before the second attempt; doubles after"
    )
    callback_timeout: Timeout = Field(10.0, description="completion callback: seconds per attempt")

    # ---- autoscaling (README, "Autoscaling") -------------------------------------------------
    autoscale_max_slots: int = Field(
        0,
        ge=0,
        description=f"`{IMAGE_SLOTS}` the tracker may ask Ray's autoscaler for while images wait "
        "or are in flight, the head's included (the cluster's largest size); `0`: it asks for "
        "none and keeps every node's image workers",
    )
    # Long enough that the gap between two jobs of a burst does not cost a node's warm-up.
    autoscale_retire_seconds: float = Field(
        10.0,
        ge=0,
        le=MAX_SECONDS,
        description="with `AUTOSCALE_MAX_SLOTS` set, seconds a worker node holds no image while "
        "none waits before the tracker stops its image workers, which frees its "
        f"`{IMAGE_SLOTS}` so that the autoscaler may remove it",
    )
    autoscaling_config: Path | None = Field(
        None,
        description="a Ray cluster config (YAML) for the head's autoscaler (`ray start "
        "--autoscaling-config`); with its provider `fake_multinode`, nodes are Ray processes "
        "on this machine",
    )

    # ---- Ray --------------------------------------------------------------------------------
    ray_port: int = Field(6379, ge=1, le=65535, description="Ray head (GCS) port")
    dashboard_port: int = Field(8265, ge=1, le=65535, description="Ray dashboard port")
    metrics_port: int = Field(
        8080, ge=1, le=65535, description="the head's Prometheus metrics port"
    )
    include_dashboard: bool = Field(True, description="`0` starts Ray without its dashboard")
    fast_ingress: bool = Field(
        False,
        description="`1`: Serve's HAProxy ingress in throughput-optimized mode (no longer faster "
        "for status, which is answered at the edge; see Performance)",
    )
    ray_start_args: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="more arguments for the head's `ray start`"
    )

    @field_validator("gpu_delay", mode="before")
    @classmethod
    def _delay_range(cls, value: Any) -> Any:
        return parse_delay_range(value) if isinstance(value, str) else value

    @field_validator("allowed_hosts", "api_keys", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(entry.strip() for entry in value.split(",") if entry.strip())
        return value

    @field_validator("ray_start_args", mode="before")
    @classmethod
    def _whitespace_separated(cls, value: Any) -> Any:
        return tuple(value.split()) if isinstance(value, str) else value

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, value: str) -> str:
        if value and not value.startswith(POSTGRES_SCHEMES):
            # Not quoted, unlike other refused values: it may hold a password.
            raise ValueError(
                f"{ENV_PREFIX}DATABASE_URL must start with {' or '.join(POSTGRES_SCHEMES)}"
            )
        return value

    @field_validator("data_dir", "store_master", "autoscaling_config", mode="before")
    @classmethod
    def _any_path(cls, value: Any) -> Any:
        # A path is bytes to the OS: one that is not UTF-8 reaches us with lone surrogates,
        # which pydantic's str check refuses; pathlib takes them.
        return Path(value) if isinstance(value, str) else value

    @field_validator("data_dir", "store_master", "autoscaling_config")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        # Ray's processes do not share the launcher's working directory.
        return None if value is None else value.resolve()

    @model_validator(mode="after")
    def _budget_fits_the_largest_image(self) -> Settings:
        # Refused rather than mended: a node could never decode an image the limits accept.
        if self.decode_pixel_budget < self.max_image_pixels:
            raise ValueError(
                f"{ENV_PREFIX}DECODE_PIXEL_BUDGET ({self.decode_pixel_budget}) must be at least "
                f"{ENV_PREFIX}MAX_IMAGE_PIXELS ({self.max_image_pixels}): a node decodes one "
                "image of that size at a time within it"
            )
        return self

    @property
    def database_path(self) -> Path:
        return self.data_dir / "jobs.sqlite3"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """The settings in `environ` (the process environment when None), or a SettingsError
        naming the first variable that cannot be used."""
        given = _GIVEN_ENVIRON.set(environ)
        try:
            return cls()
        except ValidationError as exc:
            raise SettingsError(describe(exc)) from None
        finally:
            _GIVEN_ENVIRON.reset(given)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        environ = _GIVEN_ENVIRON.get()
        return (
            init_settings,
            MappingSource(settings_cls, os.environ if environ is None else environ),
        )
