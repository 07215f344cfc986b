"""The head's autoscaler (`IMAGE_SERVICE_AUTOSCALING_CONFIG`): the cluster config completed
for this head and the `ray start` arguments and environment that run it.

With Ray's `fake_multinode` provider the autoscaler starts and stops real raylets on this
machine as nodes. They join the GCS at the provider's `gcs_address`, or at port 6379 of this
host when it has none: the launcher gives it the head's own address, so the head may listen on
any port. The head's node type gets the head's own `image_slots`, so the autoscaler counts
them as they are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from core.settings import IMAGE_SLOTS, Settings

FAKE_PROVIDER = "fake_multinode"
# How often the autoscaler looks, seconds (Ray's default 5): for the nodes of this machine,
# where a node starts in a few seconds, a look a second takes a second off each scale-up.
FAKE_UPDATE_INTERVAL = "1"


def completed_config(config: dict[str, Any], settings: Settings, node_ip: str) -> dict[str, Any]:
    """`config` with what the launcher knows of the head filled in (a copy)."""
    done = {**config, "provider": dict(config.get("provider", {}))}
    if done["provider"].get("type") == FAKE_PROVIDER:
        done["provider"].setdefault("gcs_address", f"{node_ip}:{settings.ray_port}")
    head_type = done.get("head_node_type")
    types = {name: dict(spec) for name, spec in done.get("available_node_types", {}).items()}
    if head_type in types:
        resources = dict(types[head_type].get("resources", {}))
        resources[IMAGE_SLOTS] = settings.concurrency
        types[head_type]["resources"] = resources
        done["available_node_types"] = types
    return done


def head_autoscaling(settings: Settings, node_ip: str) -> tuple[list[str], dict[str, str]]:
    """The head's extra `ray start` arguments and environment: none without a config."""
    if settings.autoscaling_config is None:
        return [], {}
    config = yaml.safe_load(settings.autoscaling_config.read_text())
    done = completed_config(config, settings, node_ip)
    path: Path = settings.data_dir / "autoscaling.yaml"
    path.write_text(yaml.safe_dump(done, sort_keys=False))
    env = {}
    if done["provider"].get("type") == FAKE_PROVIDER:
        env = {"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": FAKE_UPDATE_INTERVAL}
    return [f"--autoscaling-config={path}"], env
