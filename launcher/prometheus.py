"""Where the project's Prometheus and its rules live: `make prometheus` unpacks Debian's
package under .tools/prometheus, and deploy/monitoring holds the rules and the dashboard."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / ".tools" / "prometheus"
MONITORING = ROOT / "deploy" / "monitoring"
RULES = MONITORING / "rules.yaml"
WEB_ASSETS = TOOLS / "usr" / "share" / "prometheus" / "web"


def binary(name: str) -> Path:
    """`prometheus` or `promtool`, as `make prometheus` unpacked it."""
    path = TOOLS / "usr" / "bin" / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `make prometheus` first")
    return path
