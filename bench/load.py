"""HTTP load for the benchmark: N concurrent connections hitting one URL for a fixed time.
Run as `python -m bench.load URL CONNECTIONS SECONDS`; prints one JSON line."""

from __future__ import annotations

import asyncio
import json
import sys
import time

import aiohttp


async def hammer(url: str, connections: int, seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def one_connection(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            async with session.get(url) as response:
                await response.read()
                if response.status >= 500:
                    errors += 1
            latencies.append(time.perf_counter() - started)

    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        await asyncio.gather(*(one_connection(session) for _ in range(connections)))
        elapsed = time.perf_counter() - started
    latencies.sort()

    def quantile(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000

    return {
        "requests": len(latencies),
        "errors_5xx": errors,
        "rps": len(latencies) / elapsed,
        "p50_ms": quantile(0.5),
        "p99_ms": quantile(0.99),
    }


if __name__ == "__main__":
    result = asyncio.run(hammer(sys.argv[1], int(sys.argv[2]), float(sys.argv[3])))
    print(json.dumps(result), flush=True)
