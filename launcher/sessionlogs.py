"""A fixed path under the data directory for the logs of the Ray session `make run` started.

Ray keeps each process's log in its session directory, `/tmp/ray/session_<time>_<pid>/logs`;
`/tmp/ray/session_latest` follows whichever session started last, so a path through it breaks
as soon as another Ray starts on the machine. The link is replaced at each start.
"""

from __future__ import annotations

import os
from pathlib import Path

LINK_NAME = "logs"


def link_logs(data_dir: Path, session_logs: Path) -> Path:
    """Point `data_dir/logs` at `session_logs` and return the link. A `logs` there that is
    not a link is the operator's own and stays: a FileExistsError says so."""
    link = data_dir / LINK_NAME
    if link.exists() and not link.is_symlink():
        raise FileExistsError(f"{link} is not a link; move it to let the service link its logs")
    # Made beside it and renamed over it, so the old link is never missing for a reader.
    staged = data_dir / f".{LINK_NAME}.{os.getpid()}"
    staged.unlink(missing_ok=True)
    staged.symlink_to(session_logs, target_is_directory=True)
    os.replace(staged, link)
    return link
