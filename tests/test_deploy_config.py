"""The deployment descriptions agree with each other and with the code they name."""

from __future__ import annotations

import copy
import functools
import json
import re
import tomllib
from collections.abc import Callable, Iterator
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.settings import ENV_PREFIX, Settings
from harness import manifests
from harness.manifests import Document, crd_schema, load_documents, load_documents_text
from service.app import build_app
from service.edge import CALLBACK, CALLBACK_VARIABLE

ROOT = Path(__file__).resolve().parent.parent
# What `kubectl apply -f deploy/kuberay/` applies.
KUBERAY = ROOT / "deploy/kuberay"
# Created once by hand (it holds the real token), so outside the applied directory.
KUBERAY_SECRETS = ROOT / "deploy/kuberay-secret"
RAYSERVICE_CRD = ROOT / "tests/data/kuberay/ray.io_rayservices.yaml"
# The data key KubeRay's authOptions.secretName requires of the Secret.
AUTH_TOKEN_KEY = "auth_token"
TOKEN_SECRET = "image-job-service-ray-auth"
# The job store's URL (it holds the password): every node reads it from this Secret's key.
DATABASE_SECRET = "image-job-service-database"
DATABASE_URL_KEY = "url"


def applied_documents() -> list[Document]:
    return [doc for path in sorted(KUBERAY.glob("*.yaml")) for doc in load_documents(path)]


def manifest_documents() -> list[Document]:
    """Every object the deployment needs: the applied ones and the Secret made by hand."""
    secrets = [
        doc for path in sorted(KUBERAY_SECRETS.glob("*.yaml")) for doc in load_documents(path)
    ]
    return applied_documents() + secrets


def the_rayservice() -> Document:
    [rayservice] = [doc for doc in applied_documents() if doc["kind"] == "RayService"]
    return rayservice


@functools.cache
def rayservice_schema() -> Document:
    """The RayService v1 schema, strict as `kubectl apply` is."""
    return crd_schema(RAYSERVICE_CRD)


def schema_errors(document: Document) -> list[str]:
    return manifests.schema_errors(rayservice_schema(), document)


def with_fault_tolerance_uncommented(text: str) -> str:
    """The manifest with its commented GCS fault tolerance example turned on, as the README
    tells an operator to do: the `# ` after the indentation removed between the markers."""
    block = re.compile(
        r"^[ \t]*# BEGIN gcs-fault-tolerance\n(?P<body>.*?)^[ \t]*# END gcs-fault-tolerance\n",
        re.MULTILINE | re.DOTALL,
    )
    [match] = block.finditer(text)
    body = re.sub(r"^([ \t]*)# ?", r"\1", match["body"], flags=re.MULTILINE)
    return text[: match.start()] + body + text[match.end() :]


def node_groups(rayservice: Document) -> Iterator[tuple[str, Document]]:
    cluster = rayservice["spec"]["rayClusterConfig"]
    yield "head", cluster["headGroupSpec"]
    for group in cluster["workerGroupSpecs"]:
        yield group["groupName"], group


def containers(rayservice: Document) -> Iterator[tuple[str, Document]]:
    for group_name, group in node_groups(rayservice):
        for container in group["template"]["spec"]["containers"]:
            yield f"{group_name}/{container['name']}", container


def environment(container: Document) -> dict[str, Document]:
    env = container.get("env", [])
    names = [variable["name"] for variable in env]
    assert len(names) == len(set(names)), f"{container['name']} sets a variable twice: {names}"
    return {variable["name"]: variable for variable in env}


def walk(node: Any) -> Iterator[tuple[str, Any]]:
    """Every (key, value) pair of the mappings in a document, depth first."""
    if isinstance(node, dict):
        for key, child in node.items():
            yield key, child
            yield from walk(child)
    elif isinstance(node, list):
        for child in node:
            yield from walk(child)


def references(rayservice: Document) -> set[tuple[str, str]]:
    """(kind, name) of every Secret, PersistentVolumeClaim and ConfigMap the RayService names."""
    found = set()
    for key, value in walk(rayservice):
        if not isinstance(value, dict):
            continue
        if key in ("secretKeyRef", "secretRef"):
            found.add(("Secret", value["name"]))
        elif key == "secret" and "secretName" in value:
            found.add(("Secret", value["secretName"]))
        elif key in ("configMapKeyRef", "configMapRef", "configMap"):
            found.add(("ConfigMap", value["name"]))
        elif key == "persistentVolumeClaim":
            found.add(("PersistentVolumeClaim", value["claimName"]))
    auth = rayservice["spec"]["rayClusterConfig"].get("authOptions", {})
    if auth.get("secretName"):
        found.add(("Secret", auth["secretName"]))
    return found


def secret_keys(secret: Document) -> set[str]:
    return set(secret.get("data", {})) | set(secret.get("stringData", {}))


# ---- serve config -------------------------------------------------------------------------


def test_kuberay_serve_config_equals_serve_config_yaml() -> None:
    serve_config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    embedded = yaml.safe_load(the_rayservice()["spec"]["serveConfigV2"])
    assert embedded["applications"] == serve_config["applications"]


def test_serve_config_import_path_builds_the_app() -> None:
    serve_config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    [application] = serve_config["applications"]
    assert application["import_path"] == "service.app:build_app"
    assert build_app({}) is not None
    assert application["deployments"][0]["name"] == "ImageServiceAPI"


def test_dockerfile_copies_every_package_the_install_needs() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    included = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {name for name in included if "." not in name}
    copied = re.findall(r"^COPY (\S+) \./\1$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert packages <= set(copied), packages - set(copied)


def test_the_install_takes_every_subpackage_of_the_service() -> None:
    """A wheel (the Docker image's install) holds only the packages `include` matches: a
    subfolder of core/ it missed would import on this checkout and fail in the image."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    subpackages = [
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "core").rglob("__init__.py")
    ]
    assert "core.jobstore.sqlite" in subpackages
    missed = [name for name in subpackages if not any(fnmatch(name, p) for p in patterns)]
    assert missed == []


# ---- the RayService against KubeRay's CRD -------------------------------------------------


def test_rayservice_satisfies_the_crd_schema() -> None:
    assert schema_errors(the_rayservice()) == []


def _cluster(rayservice: Document) -> Document:
    return rayservice["spec"]["rayClusterConfig"]


def _replicas_as_text(rayservice: Document) -> None:
    _cluster(rayservice)["workerGroupSpecs"][0]["replicas"] = "two"


def _auth_mode_capitalised(rayservice: Document) -> None:
    _cluster(rayservice)["authOptions"]["mode"] = "Token"


def _fault_tolerance_misspelled(rayservice: Document) -> None:
    _cluster(rayservice)["gcsFaultTolerenceOptions"] = {"redisAddress": "redis:6379"}


def _group_name_missing(rayservice: Document) -> None:
    del _cluster(rayservice)["workerGroupSpecs"][0]["groupName"]


def _token_key_missing(rayservice: Document) -> None:
    [container] = _cluster(rayservice)["headGroupSpec"]["template"]["spec"]["containers"]
    del environment(container)["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["key"]


@pytest.mark.parametrize(
    ("breakage", "reported_at"),
    [
        (_replicas_as_text, "workerGroupSpecs.0.replicas"),  # a string where an int32 goes
        (_auth_mode_capitalised, "authOptions.mode"),  # outside the enum
        # kubectl's strict field validation rejects an undeclared field; so must the test.
        (_fault_tolerance_misspelled, "spec.rayClusterConfig"),
        (_group_name_missing, "workerGroupSpecs.0"),  # a required field
        (_token_key_missing, "secretKeyRef"),  # a required field inside a pod template
    ],
)
def test_schema_validation_rejects_a_broken_rayservice(
    breakage: Callable[[Document], None], reported_at: str
) -> None:
    broken = copy.deepcopy(the_rayservice())
    breakage(broken)
    errors = schema_errors(broken)
    assert errors, f"the schema accepted {breakage.__name__}"
    assert any(error.split(":")[0].endswith(reported_at) for error in errors), errors


def test_the_commented_gcs_fault_tolerance_example_validates_when_uncommented() -> None:
    text = (KUBERAY / "rayservice.yaml").read_text()
    [enabled] = [
        doc
        for doc in load_documents_text(with_fault_tolerance_uncommented(text))
        if doc["kind"] == "RayService"
    ]
    options = enabled["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"]
    assert "gcsFaultToleranceOptions" not in the_rayservice()["spec"]["rayClusterConfig"]
    assert options["redisAddress"]
    assert options["redisPassword"]["valueFrom"]["secretKeyRef"]["key"] == "password"
    assert schema_errors(enabled) == []
    # Nothing else changes: the example is the manifest plus the options.
    del enabled["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"]
    assert enabled == the_rayservice()


# ---- every object it names is defined ----------------------------------------------------


def test_every_object_the_rayservice_names_is_defined_by_the_manifest() -> None:
    rayservice = the_rayservice()
    defined = {(doc["kind"], doc["metadata"]["name"]) for doc in manifest_documents()}
    named = references(rayservice)
    # The manifest names at least the token Secret and the job store's.
    assert {name for kind, name in named if kind == "Secret"} >= {TOKEN_SECRET, DATABASE_SECRET}
    assert named <= defined, f"named but not defined: {sorted(named - defined)}"


def test_every_secret_key_the_rayservice_reads_is_in_its_secret() -> None:
    secrets = {
        doc["metadata"]["name"]: doc for doc in manifest_documents() if doc["kind"] == "Secret"
    }
    for key, value in walk(the_rayservice()):
        if key == "secretKeyRef":
            assert value["key"] in secret_keys(secrets[value["name"]]), value


def test_the_token_secret_is_not_applied_with_the_directory() -> None:
    # `kubectl apply -f deploy/kuberay/` again must not replace the real token by a placeholder.
    assert [doc for doc in applied_documents() if doc["kind"] == "Secret"] == []
    secrets = {
        doc["metadata"]["name"]: doc for doc in manifest_documents() if doc["kind"] == "Secret"
    }
    assert AUTH_TOKEN_KEY in secret_keys(secrets[TOKEN_SECRET])
    assert DATABASE_URL_KEY in secret_keys(secrets[DATABASE_SECRET])


def test_every_node_reads_the_job_store_from_its_secret_and_keeps_no_jobs_on_disk() -> None:
    expected = {"secretKeyRef": {"name": DATABASE_SECRET, "key": DATABASE_URL_KEY}}
    seen = []
    for where, container in containers(the_rayservice()):
        url = environment(container).get(f"{ENV_PREFIX}DATABASE_URL", {})
        assert "value" not in url, f"{where}: the database password is written in the manifest"
        assert url.get("valueFrom") == expected, where
        assert not container.get("volumeMounts"), f"{where}: jobs belong in PostgreSQL"
        seen.append(where)
    assert "head/ray-head" in seen and len(seen) >= 2, seen
    assert [doc for doc in applied_documents() if doc["kind"] == "PersistentVolumeClaim"] == []


# ---- what every node gets ------------------------------------------------------------------


def test_every_node_has_ray_token_auth_from_the_secret() -> None:
    rayservice = the_rayservice()
    auth = rayservice["spec"]["rayClusterConfig"]["authOptions"]
    assert auth["mode"] == "token"
    expected_ref = {"name": auth["secretName"], "key": AUTH_TOKEN_KEY}
    seen = []
    for where, container in containers(rayservice):
        env = environment(container)
        assert env.get("RAY_AUTH_MODE", {}).get("value") == "token", where
        token = env.get("RAY_AUTH_TOKEN", {})
        assert "value" not in token, f"{where}: the token is written in the manifest"
        assert token.get("valueFrom", {}).get("secretKeyRef") == expected_ref, where
        seen.append(where)
    assert "head/ray-head" in seen and len(seen) >= 2, seen


def test_every_node_runs_the_edge_middlewares() -> None:
    for where, container in containers(the_rayservice()):
        assert environment(container).get(CALLBACK_VARIABLE, {}).get("value") == CALLBACK, where


def test_every_node_has_the_same_valid_service_settings() -> None:
    per_container = {
        where: {
            name: variable.get("value", repr(variable.get("valueFrom")))
            for name, variable in environment(container).items()
            if name.startswith(ENV_PREFIX)
        }
        for where, container in containers(the_rayservice())
    }
    known = {f"{ENV_PREFIX}{field.upper()}" for field in Settings.model_fields}
    first, *others = per_container.values()
    assert set(first) <= known, f"not settings: {sorted(set(first) - known)}"
    assert all(settings == first for settings in others), per_container
    # Values the service accepts (from_env raises SettingsError naming a bad one), with the
    # database URL a Secret gives.
    written = {name: value for name, value in first.items() if not value.startswith("{")}
    url = "postgresql://jobs:secret@postgres:5432/jobs"
    settings = Settings.from_env({**written, f"{ENV_PREFIX}DATABASE_URL": url})
    assert settings.host == first[f"{ENV_PREFIX}HOST"] and settings.database_url == url


# ---- autoscaling ---------------------------------------------------------------------------


def image_slots(group: Document) -> int:
    """A group's `image_slots`, from its rayStartParams.resources (a JSON object, quoted)."""
    resources = yaml.safe_load(group["rayStartParams"]["resources"])
    return int(json.loads(resources)["image_slots"])


def test_gpu_workers_are_added_by_the_autoscaler_from_none_to_the_bound() -> None:
    """README, "Autoscaling": the in-tree autoscaler adds and removes the GPU group's pods, from
    none, and the tracker's request bound is the cluster at its largest."""
    cluster = _cluster(the_rayservice())
    assert cluster["enableInTreeAutoscaling"] is True
    options = cluster["autoscalerOptions"]
    assert options["upscalingMode"] == "Default" and options["idleTimeoutSeconds"] > 0
    [gpu] = cluster["workerGroupSpecs"]
    assert gpu["minReplicas"] == 0 == gpu["replicas"] and gpu["maxReplicas"] >= 1
    largest = image_slots(cluster["headGroupSpec"]) + gpu["maxReplicas"] * image_slots(gpu)
    for where, container in containers(the_rayservice()):
        bound = environment(container)[f"{ENV_PREFIX}AUTOSCALE_MAX_SLOTS"]["value"]
        assert int(bound) == largest, where
