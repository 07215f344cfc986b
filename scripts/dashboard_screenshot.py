"""Screenshots of the Ray dashboard and of Prometheus with the service running a job, for the
README.

Starts the service as `make monitor` does (its own Ray head with the dashboard on, and a
Prometheus beside it), an image server and a job, then drives Debian's headless Chromium over
the DevTools protocol: the dashboard wants Ray's auth token as a cookie, which Chromium's
command line cannot set. Loopback only.

    .venv/bin/python -m scripts.dashboard_screenshot   (or: make screenshot)
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import requests

from harness.client import job
from harness.imageserver import ImageServer
from harness.service import ROOT, ServiceProcess, free_port

CHROMIUM = "/usr/bin/chromium"
TOKEN_FILE = Path.home() / ".ray" / "auth_token"
DASHBOARD_PAGES = {
    "dashboard-overview.png": "#/overview",
    "dashboard-actors.png": "#/actors",
    "dashboard-serve.png": "#/serve",
    "dashboard-metrics.png": "#/metrics",
}
THROUGHPUT = "image_service:images_settled:rate1m or image_service:images_processed:rate1m"
PROMETHEUS_PAGES = {
    # Debian's Prometheus has the classic UI alone, under /classic.
    "prometheus-throughput.png": "/classic/graph?"
    + urlencode({"g0.expr": THROUGHPUT, "g0.tab": "0", "g0.range_input": "5m"}),
    "prometheus-alerts.png": "/classic/alerts",
}
# Prometheus' graph of the job wants a few minutes of it.
JOB_SECONDS_BEFORE_GRAPH = 150
# Without the background-networking flags Chromium keeps dialling out and fails here.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--window-size=1440,1000",
)


class DevTools:
    """Just enough of the Chrome DevTools protocol: numbered commands over one websocket."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        self._socket = socket
        self._ids = itertools.count(1)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        number = next(self._ids)
        await self._socket.send_json({"id": number, "method": method, "params": params})
        async for message in self._socket:
            reply = json.loads(message.data)
            if reply.get("id") == number:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return dict(reply.get("result", {}))
        raise RuntimeError("DevTools connection closed")


async def capture(
    debug_port: int, dashboard: str, prometheus: str, token: str, out_dir: Path, started: float
) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{debug_port}/json/list") as response:
            targets = await response.json()
        page = next(t for t in targets if t["type"] == "page")
        async with session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as socket:
            tools = DevTools(socket)
            await tools.call("Network.enable")
            await tools.call(
                "Network.setCookie", name="ray-authentication-token", value=token, url=dashboard
            )
            for name, fragment in DASHBOARD_PAGES.items():
                # the dashboard polls its APIs before it draws
                await shoot(tools, f"{dashboard}/{fragment}", out_dir / name, 12)
            await asyncio.sleep(max(0.0, started + JOB_SECONDS_BEFORE_GRAPH - time.time()))
            for name, path in PROMETHEUS_PAGES.items():
                await shoot(tools, f"{prometheus}{path}", out_dir / name, 5)


async def shoot(tools: DevTools, url: str, out: Path, settle_seconds: float) -> None:
    await tools.call("Page.navigate", url=url)
    await asyncio.sleep(settle_seconds)
    shot = await tools.call("Page.captureScreenshot", format="png")
    out.write_bytes(base64.b64decode(shot["data"]))
    print(f"wrote {out}")


def main() -> None:
    out_dir = ROOT / "docs"
    out_dir.mkdir(exist_ok=True)
    dashboard_port = free_port()
    prometheus = f"http://127.0.0.1:{free_port()}"
    images = ImageServer().start()
    service = ServiceProcess(
        data_dir=Path(tempfile.mkdtemp(prefix="screenshot-")),
        module="launcher.monitor",
        env_overrides={
            "RAY_PROMETHEUS_HOST": prometheus,
            "IMAGE_SERVICE_INCLUDE_DASHBOARD": "1",
            "IMAGE_SERVICE_DASHBOARD_PORT": str(dashboard_port),
            "IMAGE_SERVICE_GPU_DELAY": "0.1-0.4",
        },
    ).start()
    browser: subprocess.Popen[bytes] | None = None
    try:
        urls = [images.url(f"img/red.jpg?{i}") for i in range(20_000)]
        payload = job(("S00339218", urls[:10_000]), ("S01408764", urls[10_000:]))
        started = time.time()
        requests.post(f"{service.url}/api/submit/", json=payload, timeout=60).raise_for_status()
        debug_port = free_port()
        browser = subprocess.Popen(
            [
                CHROMIUM,
                *CHROMIUM_FLAGS,
                f"--remote-debugging-port={debug_port}",
                f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-')}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        time.sleep(3)
        dashboard = f"http://127.0.0.1:{dashboard_port}"
        token = TOKEN_FILE.read_text().strip()
        asyncio.run(capture(debug_port, dashboard, prometheus, token, out_dir, started))
    finally:
        if browser is not None:
            os.killpg(browser.pid, signal.SIGTERM)
            browser.wait()
        service.stop()
        images.stop()


if __name__ == "__main__":
    main()
