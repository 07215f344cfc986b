"""HTTP readers for the fault tests: clients that each ask one URL again and again and time
every answer, until told to stop (client n asks URL n modulo their number, so a route that
hangs holds only its own clients). In a thread of this process (a few probes during a fault),
or as `python -m harness.readers CLIENTS TIMEOUT URL...` (many clients that should not share
the test process's interpreter with its image server), which reads until its stdin closes
and then prints its answers as one JSON list."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp

# A `python -m harness.readers` whose stdin never closes stops by itself after this long.
LONGEST_RUN_SECONDS = 600.0
# The error of a request that had no answer yet when the readers stopped.
STOPPED = "still waiting when the readers stopped"


@dataclass(frozen=True)
class Answer:
    route: str  # the URL's path: /api/status, /api/jobs/7, ...
    host: str  # which service was asked
    started: float  # time.time()
    seconds: float
    status: int | None  # None: no answer (timeout, connection error, still waiting at stop)
    retry_after: bool
    error: str = ""

    @property
    def well_answered(self) -> bool:
        """200, or 503 with Retry-After: what a client may be told while a part is away. A
        request cut short by the readers' stop passes here; its `seconds` tell how long it had
        waited."""
        return self.status == 200 or (self.status == 503 and self.retry_after) or self.stopped

    @property
    def stopped(self) -> bool:
        return self.status is None and self.error == STOPPED


async def read(
    urls: Sequence[str], clients: int, timeout: float, stop: asyncio.Event, pause: float = 0.0
) -> list[Answer]:
    """`clients` clients asking until `stop` is set, `pause` seconds apart; a request still
    waiting then is an answer with no status."""
    answers: list[Answer] = []
    connector = aiohttp.TCPConnector(limit=clients, force_close=False)
    limits = aiohttp.ClientTimeout(total=timeout)

    async def client(number: int, session: aiohttp.ClientSession) -> None:
        url = urls[number % len(urls)]
        parts = urlsplit(url)
        while not stop.is_set():
            started, clock = time.time(), time.monotonic()
            status, retry_after, error = None, False, ""
            asking = asyncio.ensure_future(session.get(url))
            stopping = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait({asking, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if asking.done():
                    async with asking.result() as response:
                        await response.read()
                        status = response.status
                        retry_after = "Retry-After" in response.headers
                else:
                    asking.cancel()
                    error = STOPPED
            except (TimeoutError, aiohttp.ClientError) as exc:
                error = f"{type(exc).__name__}: {exc}"
            finally:
                stopping.cancel()
            seconds = time.monotonic() - clock
            answers.append(
                Answer(parts.path, parts.netloc, started, seconds, status, retry_after, error)
            )
            # A refused connection is not retried in a busy loop.
            wait = max(pause, 0.2) if status is None else pause
            if wait and not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), wait)

    async with aiohttp.ClientSession(connector=connector, timeout=limits) as session:
        await asyncio.gather(*(client(number, session) for number in range(clients)))
    return answers


class Readers:
    """`read` on a thread of its own: `start()`, then `stop()` returns the answers."""

    def __init__(
        self, urls: Sequence[str], clients: int, timeout: float = 120, pause: float = 0.0
    ) -> None:
        self._urls, self._clients, self._timeout, self._pause = list(urls), clients, timeout, pause
        self._answers: list[Answer] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="readers", daemon=True)

    def start(self) -> Readers:
        self._thread.start()
        self._ready.wait()
        return self

    def _run(self) -> None:
        async def main() -> None:
            self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
            self._ready.set()
            self._answers = await read(
                self._urls, self._clients, self._timeout, self._stop, self._pause
            )

        asyncio.run(main())

    def stop(self) -> list[Answer]:
        """Stop asking (at once: a request still waiting is cut short) and return the answers;
        again, the same answers."""
        assert self._loop is not None and self._stop is not None
        if self._thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop has just ended by itself
                self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(timeout=30)
        return self._answers


def answers_from_json(text: str) -> list[Answer]:
    return [Answer(**fields) for fields in json.loads(text)]


def between(answers: Sequence[Answer], start: float, end: float) -> list[Answer]:
    """The answers to requests sent from `start` to `end` (time.time())."""
    return [answer for answer in answers if start <= answer.started < end]


def late_or_wrong(answers: Sequence[Answer], within: float) -> list[str]:
    """The answers a client should not get while a part is away: anything but 200 or 503 with
    Retry-After, or anything slower than `within`, a request cut short at the stop included."""
    return [
        f"{answer.host}{answer.route}: {answer.status or answer.error} after {answer.seconds:.1f} s"
        for answer in answers
        if not answer.well_answered or answer.seconds > within
    ]


def summarize(answers: Sequence[Answer], service_of: Callable[[str], str]) -> dict[str, Any]:
    """Per service (`service_of` names it from the answer's host) and route, with job ids
    folded: how many answers of each status, and the longest wait."""
    codes: dict[str, Counter[str]] = {}
    longest: dict[str, float] = {}
    for answer in answers:
        route = "/api/jobs/N" if answer.route.startswith("/api/jobs/") else answer.route
        key = f"{service_of(answer.host)} {route}"
        code = "cut short at stop" if answer.stopped else str(answer.status or answer.error)
        codes.setdefault(key, Counter())[code.split(":")[0]] += 1
        longest[key] = max(longest.get(key, 0.0), answer.seconds)
    return {
        key: {"codes": dict(codes[key]), "max_s": round(longest[key], 2)} for key in sorted(codes)
    }


def main() -> None:
    clients, timeout, urls = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]

    async def until_stdin_closes() -> list[Answer]:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def wait_for_stdin() -> None:
            sys.stdin.read()
            loop.call_soon_threadsafe(stop.set)

        # A daemon thread, not the loop's executor, which asyncio.run would wait for at the end.
        threading.Thread(target=wait_for_stdin, daemon=True).start()
        loop.call_later(LONGEST_RUN_SECONDS, stop.set)
        print("READY", flush=True)
        return await read(urls, clients, timeout, stop)

    answers: list[dict[str, Any]] = [
        dataclasses.asdict(answer) for answer in asyncio.run(until_stdin_closes())
    ]
    print(json.dumps(answers), flush=True)


if __name__ == "__main__":
    main()
