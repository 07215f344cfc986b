"""The deployment descriptions agree with each other and with the code they name."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

from service.app import build_app

ROOT = Path(__file__).resolve().parent.parent


def test_kuberay_serve_config_equals_serve_config_yaml() -> None:
    serve_config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    manifest = yaml.safe_load_all((ROOT / "deploy/kuberay/rayservice.yaml").read_text())
    [rayservice] = [document for document in manifest if document["kind"] == "RayService"]
    embedded = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    assert embedded["applications"] == serve_config["applications"]


def test_serve_config_import_path_builds_the_app() -> None:
    serve_config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    [application] = serve_config["applications"]
    assert application["import_path"] == "service.app:build_app"
    assert build_app({}) is not None
    assert application["deployments"][0]["name"] == "ImageServiceAPI"


def test_dockerfile_copies_every_package_the_install_needs() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = pyproject["tool"]["setuptools"]["packages"]
    copied = re.findall(r"^COPY (\S+) \./\1$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert set(packages) <= set(copied), set(packages) - set(copied)
