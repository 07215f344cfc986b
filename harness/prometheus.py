"""Prometheus' HTTP query API, as the monitoring tests ask it."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import requests


class PrometheusError(RuntimeError):
    pass


@dataclass(frozen=True)
class PrometheusApi:
    url: str

    def _get(self, path: str, **params: str) -> Any:
        response = requests.get(f"{self.url}{path}", params=params, timeout=10)
        body = response.json()
        if response.status_code != 200 or body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {response.status_code} {body}")
        return body["data"]

    def ready(self) -> bool:
        try:
            return requests.get(f"{self.url}/-/ready", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def vector(self, expression: str, at: float | None = None) -> list[dict[str, Any]]:
        """The instant vector `expression` evaluates to now, or at Unix time `at`."""
        params = {"query": expression} if at is None else {"query": expression, "time": str(at)}
        data = self._get("/api/v1/query", **params)
        if data["resultType"] != "vector":
            raise PrometheusError(f"{expression} is a {data['resultType']}, not a vector")
        result: list[dict[str, Any]] = data["result"]
        return result

    def value(self, expression: str) -> float | None:
        """The one value of `expression`, or None when it has no series."""
        found = self.vector(expression)
        if len(found) > 1:
            raise PrometheusError(f"{expression} has {len(found)} series; expected at most one")
        return float(found[0]["value"][1]) if found else None

    def targets(self) -> list[dict[str, Any]]:
        active: list[dict[str, Any]] = self._get("/api/v1/targets")["activeTargets"]
        return active

    def rule_groups(self) -> list[dict[str, Any]]:
        groups: list[dict[str, Any]] = self._get("/api/v1/rules")["groups"]
        return groups

    def wait_for(self, expression: str, expected: float, timeout: float) -> float | None:
        """Poll until `expression` is `expected`; the last value seen either way."""
        deadline = time.monotonic() + timeout
        while True:
            seen = self.value(expression)
            if seen == expected or time.monotonic() > deadline:
                return seen
            time.sleep(1)
