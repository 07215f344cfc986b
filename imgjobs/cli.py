"""`imgjobs`: submit jobs and follow them, read results, cancel, list recent jobs.

Exit codes: 0 done (a waited-for job completed), 1 a waited-for job failed or was cancelled,
2 a usage, connection or service error, 3 a cancel of a job that had already ended, 130
interrupted. Errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from imgjobs.api import Patience, ServiceClient, ServiceError, Unreachable, describe, patiently
from imgjobs.jobfile import JobFileError, load_job_file
from imgjobs.progress import ProcessedCount, ProgressMeter

DEFAULT_URL = "http://127.0.0.1:8000"
EXIT_OK, EXIT_JOB_FAILED, EXIT_ERROR, EXIT_ALREADY_ENDED = 0, 1, 2, 3
FINAL_STATES = frozenset({"completed", "failed", "cancelled"})
LOG_EVERY_SECONDS = 5.0
DEFAULT_PATIENCE = Patience()
# Store errors shown by `status` and a waited-for job's summary without --all: a cancelled job
# has one per store it touched, thousands on a big job.
ERRORS_SHOWN = 10
CSV_FIELDS = (
    "store_id",
    "visit_time",
    "image_url",
    "state",
    "width",
    "height",
    "perimeter",
    "error",
    "processed_at",
    "node_id",
)


class UsageError(Exception):
    pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    client = ServiceClient(args.url, args.api_key)
    try:
        return int(args.run(client, args))
    except (ServiceError, Unreachable, JobFileError, UsageError) as exc:
        print(f"imgjobs: {error_line(exc)}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        # The reader went away (`imgjobs results 1 | head`): stop quietly, as other tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except OSError as exc:  # the job file or the output file
        print(f"imgjobs: {error_line(exc)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("\nimgjobs: interrupted", file=sys.stderr)
        return 130


def error_line(exc: Exception) -> str:
    if isinstance(exc, ServiceError | Unreachable):
        return f"error: {describe(exc)}"
    return f"error: {exc}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imgjobs",
        description="Client of the image job service: submit store visits, follow jobs, "
        "read results.",
    )
    parser.add_argument(
        "--url",
        default=os.environ.get("IMAGE_SERVICE_URL", DEFAULT_URL),
        help="the service's base URL (default: $IMAGE_SERVICE_URL or %(default)s)",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("IMAGE_SERVICE_API_KEY"),
        help="API key, where the service requires one (default: $IMAGE_SERVICE_API_KEY)",
    )
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    submit = commands.add_parser(
        "submit",
        help="submit a job file (the API's JSON, or CSV rows store_id,visit_time,image_url)",
        description="Submit a job. FILE is the JSON body of POST /api/submit/, or a CSV of "
        "store_id,visit_time,image_url rows (header optional), grouped into one visit per "
        "store and visit time. Prints the job id.",
    )
    submit.add_argument("file", type=Path, help="job file (.json or .csv)")
    submit.add_argument(
        "--wait", action="store_true", help="follow the job with a progress bar until it ends"
    )
    add_all_argument(submit)
    submit.add_argument("--callback-url", help="URL that receives one POST with the final status")
    submit.add_argument(
        "--idempotency-key",
        help="reuse a key to make a repeated submit return the same job (default: a fresh one)",
    )
    add_polling_arguments(submit, "with --wait, ")
    submit.set_defaults(run=run_submit)

    wait = commands.add_parser(
        "wait",
        help="follow a job already submitted until it ends",
        description="Follow a job with a progress bar until it ends, as submit --wait does, with"
        " its exit codes: 0 completed, 1 failed or cancelled.",
    )
    wait.add_argument("job_id", type=int)
    add_all_argument(wait)
    add_polling_arguments(wait, "")
    wait.set_defaults(run=run_wait)

    status = commands.add_parser("status", help="show a job's status and progress")
    status.add_argument("job_id", type=int)
    add_all_argument(status)
    status.set_defaults(run=run_status)

    results = commands.add_parser(
        "results", help="write every result row of a job (streams all pages)"
    )
    results.add_argument("job_id", type=int)
    results.add_argument("--format", choices=("csv", "json"), default="csv")
    results.add_argument("-o", "--output", type=Path, help="file to write (default: stdout)")
    results.set_defaults(run=run_results)

    cancel = commands.add_parser(
        "cancel",
        help="cancel a job: queued images are dropped",
        description="Cancel a job: its queued images are dropped, those in flight finish. Exits"
        f" {EXIT_ALREADY_ENDED} if the job had already ended (completed or failed).",
    )
    cancel.add_argument("job_id", type=int)
    cancel.set_defaults(run=run_cancel)

    jobs = commands.add_parser("jobs", help="a table of recent jobs, newest first")
    jobs.add_argument("--limit", type=int, default=20, help="how many (default %(default)s)")
    jobs.set_defaults(run=run_jobs)
    return parser


def add_all_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--all",
        action="store_true",
        help=f"list every failing store (default: the first {ERRORS_SHOWN})",
    )


def add_polling_arguments(parser: argparse.ArgumentParser, when: str) -> None:
    parser.add_argument("--interval", type=float, default=0.5, help=f"{when}seconds between polls")
    parser.add_argument(
        "--give-up-after",
        type=float,
        default=Patience.give_up_after,
        metavar="SECONDS",
        help=f"{when}how long the service may stay unreachable (connection errors,"
        " timeouts, 502/503/504) before imgjobs gives up; polls are retried meanwhile"
        " (default %(default)g)",
    )


def run_submit(client: ServiceClient, args: argparse.Namespace) -> int:
    job = load_job_file(args.file)
    if args.callback_url:
        job.payload["callback_url"] = args.callback_url
    try:
        job_id = client.submit(job.payload, args.idempotency_key)
    except ServiceError as exc:
        if job.origin is None or exc.status_code != 400:
            raise
        # The service names the JSON path it built from the CSV; the user wrote lines.
        raise ServiceError(exc.status_code, job.origin.locate(str(exc))) from None
    print(job_id, flush=True)
    if not args.wait:
        return EXIT_OK
    return wait_for(client, job_id, args)


def run_wait(client: ServiceClient, args: argparse.Namespace) -> int:
    return wait_for(client, args.job_id, args)


def wait_for(client: ServiceClient, job_id: int, args: argparse.Namespace) -> int:
    """Follow the job to its end: 0 if it completed, 1 if it failed or was cancelled."""
    try:
        patience = Patience(give_up_after=args.give_up_after)
        final = follow(client, job_id, args.interval, sys.stderr, patience=patience)
    except KeyboardInterrupt:
        print(
            f"\nimgjobs: stopped following job {job_id}; it goes on"
            f" (imgjobs wait {job_id} to follow it again, imgjobs cancel {job_id} to stop it)",
            file=sys.stderr,
        )
        return 130
    print(summary(final, None if args.all else ERRORS_SHOWN), file=sys.stderr)
    return EXIT_OK if final["status"] == "completed" else EXIT_JOB_FAILED


def follow(
    client: ServiceClient,
    job_id: int,
    interval: float,
    out: TextIO,
    clock: Callable[[], float] = time.monotonic,
    patience: Patience = DEFAULT_PATIENCE,
) -> dict[str, Any]:
    """Poll the job until it ends, drawing its progress; returns its final detail. On a
    terminal the line is redrawn in place; into a log, a line at most every few seconds.
    A poll that meets transient trouble is retried, within `patience`."""
    interactive = out.isatty()
    meter: ProgressMeter | None = None
    processed = ProcessedCount()
    last_line, last_logged = "", -LOG_EVERY_SECONDS
    while True:
        job = patiently(lambda: client.job(job_id, timeout=patience.request_timeout), patience)
        now = clock()
        meter = meter or ProgressMeter(job["total"])
        count = processed.update(job)
        meter.add(now, count)
        line = meter.line(job["status"], count, job["failed"], processed.dropped)
        final = job["status"] in FINAL_STATES
        if interactive:
            out.write("\r" + line.ljust(len(last_line)) + ("\n" if final else ""))
        elif final or now - last_logged >= LOG_EVERY_SECONDS:
            out.write(line + "\n")
            last_logged = now
        out.flush()
        last_line = line
        if final:
            return job
        time.sleep(interval)


def summary(job: dict[str, Any], shown: int | None = ERRORS_SHOWN) -> str:
    lines = [
        f"job {job['job_id']} {job['status']}: {job['total']} images,"
        f" {job['done']} done, {job['failed']} failed",
        *store_errors(job["errors"], shown),
    ]
    return "\n".join(lines)


def store_errors(errors: list[dict[str, str]], shown: int | None) -> list[str]:
    """One line per failing store, the first `shown` of them (all for None), then how many
    more there are."""
    lines = [f"  {e['store_id']}: {e['error']}" for e in errors[:shown]]
    if shown is not None and len(errors) > shown:
        lines.append(f"  ... and {len(errors) - shown} more (--all lists them)")
    return lines


def run_status(client: ServiceClient, args: argparse.Namespace) -> int:
    job = client.job(args.job_id)
    print(
        f"job {job['job_id']}: {job['status']}  {job['done'] + job['failed']}/{job['total']}"
        f" settled ({job['done']} done, {job['failed']} failed, {job['in_flight']} in flight,"
        f" {job['queued']} queued)"
    )
    for name in ("created_at", "started_at", "finished_at", "cancelled_at"):
        if job[name]:
            print(f"  {name.removesuffix('_at'):<9} {job[name]}")
    for line in store_errors(job["errors"], None if args.all else ERRORS_SHOWN):
        print(line)
    return EXIT_OK


def run_results(client: ServiceClient, args: argparse.Namespace) -> int:
    client.job(args.job_id)  # an unknown job fails here, before any file is touched
    rows = client.results(args.job_id)
    write = write_csv if args.format == "csv" else write_json
    with output(args.output) as out:
        count = write(rows, out)
    if args.output is not None:
        print(f"{count} rows written to {args.output}", file=sys.stderr)
    return EXIT_OK


@contextmanager
def output(path: Path | None) -> Any:
    """stdout, or a file that appears whole or not at all (written aside, then renamed)."""
    if path is None:
        yield sys.stdout
        return
    mode = replacement_mode(path)
    with tempfile.NamedTemporaryFile(
        "w", dir=path.parent, prefix=f".{path.name}.", delete=False, newline="", encoding="utf-8"
    ) as handle:
        try:
            os.fchmod(handle.fileno(), mode)  # mkstemp made it 0600
            yield handle
        except BaseException:
            handle.close()
            os.unlink(handle.name)
            raise
    os.replace(handle.name, path)


def replacement_mode(path: Path) -> int:
    """The permissions `open(path, "w")` would leave: an existing file keeps its own (one kept
    private stays private), a new one gets 0666 less the umask."""
    try:
        return stat.S_IMODE(path.stat().st_mode) & 0o777
    except FileNotFoundError:
        return 0o666 & ~current_umask()


def current_umask() -> int:
    # The umask can only be read by setting it. Setting it straight back is safe here: the
    # command creates no files from other threads.
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def write_csv(rows: Iterable[dict[str, Any]], out: TextIO) -> int:
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    count = 0
    for row in rows:
        writer.writerow(row)
        count += 1
    return count


def write_json(rows: Iterable[dict[str, Any]], out: TextIO) -> int:
    """A JSON array, written row by row: a job of any size streams in constant memory."""
    count = 0
    out.write("[")
    for row in rows:
        out.write(("," if count else "") + "\n  " + json.dumps(row))
        count += 1
    out.write("\n]\n")
    return count


def run_cancel(client: ServiceClient, args: argparse.Namespace) -> int:
    try:
        job = client.cancel(args.job_id)
    except ServiceError as exc:
        if exc.status_code != 409:  # the service's answer for a job that has already ended
            raise
        print(f"imgjobs: {exc}; nothing to cancel", file=sys.stderr)
        return EXIT_ALREADY_ENDED
    print(
        f"job {job['job_id']} {job['status']}: {job['failed']} images dropped or failed,"
        f" {job['in_flight']} in flight finishing"
    )
    return EXIT_OK


def run_jobs(client: ServiceClient, args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise UsageError("--limit must be at least 1")
    page = client.jobs(args.limit)
    header = ("JOB", "STATUS", "IMAGES", "DONE", "FAILED", "CREATED", "FINISHED")
    rows = [
        (
            str(job["job_id"]),
            job["status"],
            str(job["total"]),
            str(job["done"]),
            str(job["failed"]),
            short_time(job["created_at"]),
            short_time(job["finished_at"]),
        )
        for job in page["jobs"]
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip())
    if page["total"] > len(rows):
        print(f"({len(rows)} of {page['total']} jobs; --limit for more)")
    return EXIT_OK


def short_time(iso: str | None) -> str:
    return "-" if iso is None else iso.replace("T", " ")[:19]
