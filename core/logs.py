"""Structured logs: one JSON object per line, with the job id on every line about a job.

Ray captures each worker's stderr into its log files and the dashboard's log view; a JSON
line there can be filtered by `job_id` with `jq` or any log shipper.
"""

from __future__ import annotations

import json
import logging
import sys
import time

# Fields a log call may attach with `extra=`; anything else stays out of the line.
CONTEXT_FIELDS = ("job_id", "images", "state", "attempts", "error")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def use_json_logs(level: int = logging.INFO) -> None:
    """Send this process's log records to stderr as JSON lines (replacing other handlers)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
