"""The monitoring files: committed as generated, the rules checked and unit-tested by promtool,
every dashboard expression valid PromQL carrying Ray's filters, the dashboard valid for
Grafana, and the KubeRay manifests valid for their CRDs and in agreement with the RayService.
No Ray and no cluster: promtool comes from `make prometheus`."""

from __future__ import annotations

import copy
import functools
import json
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from core.settings import Settings
from harness.manifests import (
    Document,
    crd_schema,
    load_documents,
    python_pattern,
    schema_errors,
)
from launcher.prometheus import RULES, binary
from scripts.monitoring import dashboard as dashboard_code
from scripts.monitoring_files import DASHBOARD, PROMETHEUS_RULE, RULES_TESTS, rendered

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "tests/data/monitoring"
KUBERAY = ROOT / "deploy/kuberay"
RAY_FILTERS = ['SessionName=~"$SessionName"', 'ray_io_cluster=~"$Cluster"']
# A series name of the service's (Ray's metric or a recording rule), wherever it appears.
SERIES_NAME = re.compile(r"\b(?:ray_image_service_\w+|image_service:[\w:]+)")


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(binary("promtool")), *map(str, args)], capture_output=True, text=True, timeout=60
    )


def rule_groups() -> list[Document]:
    return yaml.safe_load(RULES.read_text())["groups"]


def rules_of(kind: str) -> list[Document]:
    return [rule for group in rule_groups() for rule in group["rules"] if kind in rule]


def rules_tests() -> Document:
    return yaml.safe_load(RULES_TESTS.read_text())


def the_dashboard() -> Document:
    return json.loads(DASHBOARD.read_text())


def panels() -> Iterator[Document]:
    for panel in the_dashboard()["panels"]:
        if panel["type"] != "row":
            yield panel
        yield from panel.get("panels", [])


def expressions() -> Iterator[tuple[str, str]]:
    """(panel title, PromQL) of every target of every panel."""
    for panel in panels():
        for target in panel["targets"]:
            yield panel["title"], target["expr"]


def only(kind: str) -> Document:
    [document] = [doc for doc in load_documents_of_kuberay() if doc["kind"] == kind]
    return document


def load_documents_of_kuberay() -> list[Document]:
    return [doc for path in sorted(KUBERAY.glob("*.yaml")) for doc in load_documents(path)]


@functools.cache
def operator_schema(plural: str) -> Document:
    return crd_schema(SCHEMAS / f"monitoring.coreos.com_{plural}.yaml")


# ---- generated as committed ------------------------------------------------------------------


def test_the_committed_files_are_what_the_script_generates() -> None:
    stale = [
        str(path.relative_to(ROOT))
        for path, text in rendered().items()
        if not path.exists() or path.read_text() != text
    ]
    assert stale == [], "run `.venv/bin/python -m scripts.monitoring_files` and commit"


# ---- the rules ---------------------------------------------------------------------------


def test_promtool_accepts_the_rules() -> None:
    checked = promtool("check", "rules", RULES)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rules_of('record')) + len(rules_of('alert'))} rules" in checked.stdout


def test_the_rules_pass_their_promtool_unit_tests() -> None:
    tested = promtool("test", "rules", RULES_TESTS)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_has_a_case_that_fires_it_and_one_that_stays_quiet() -> None:
    names = {rule["alert"] for rule in rules_of("alert")}
    assert names == {
        "ImageServiceStalled",
        "ImageServiceFailureRatioHigh",
        "ImageServiceTrackerAbsent",
        "ImageServiceNoLeaseHolder",
        "ImageServiceHttp5xx",
        "ImageServiceDownloadsSlow",
        "ImageServiceStoreErrors",
    }
    fires, quiet = set(), set()
    for case in rules_tests()["tests"]:
        checks = case.get("alert_rule_test", [])
        for name in {check["alertname"] for check in checks}:
            expected = [check["exp_alerts"] for check in checks if check["alertname"] == name]
            if any(expected):
                fires.add(name)
            else:  # a case of its own where the alert is expected at no time
                quiet.add(name)
    assert fires == names, names - fires
    assert quiet == names, names - quiet


def test_every_recording_rule_is_checked_against_expected_samples() -> None:
    checked = {
        test["expr"]
        for case in rules_tests()["tests"]
        for test in case.get("promql_expr_test", [])
        if test["exp_samples"]
    }
    assert {rule["record"] for rule in rules_of("record")} <= checked


def test_every_alert_has_a_severity_a_summary_and_a_runbook() -> None:
    for rule in rules_of("alert"):
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert set(rule["annotations"]) == {"summary", "runbook"}, rule["alert"]
        runbook = rule["annotations"]["runbook"]
        for part in ("What it means:", "What to check", "What to do:"):
            assert part in runbook, f"{rule['alert']}: no {part!r}"


def test_the_settings_the_runbooks_name_exist() -> None:
    named = {
        name
        for rule in rules_of("alert")
        for name in re.findall(r"IMAGE_SERVICE_([A-Z_]+)", rule["annotations"]["runbook"])
    }
    assert named, "the runbooks name no setting"
    assert {name.lower() for name in named} <= set(Settings.model_fields), named


def test_every_aggregation_says_which_labels_it_keeps() -> None:
    """Every worker process has series of its own: an aggregation that named no labels would
    keep WorkerId and the rest by accident (a bare `rate` or gauge), or lose the cluster."""
    for rule in rules_of("record") + rules_of("alert"):
        expr = rule["expr"]
        if expr.startswith("absent("):
            continue
        assert not re.search(r"\b(sum|max|min|avg|count)\s*\(", expr), expr
        assert re.search(r"\b(sum|max|count) by \(", expr), expr


# ---- the dashboard -----------------------------------------------------------------------


def test_the_dashboard_satisfies_grafanas_schema() -> None:
    schema = json.loads((SCHEMAS / "grafana-dashboard.jsonschema.json").read_text())
    validator = jsonschema.Draft7Validator(schema)
    errors = [
        f"{'.'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator.iter_errors(the_dashboard())
    ]
    assert errors == []


def test_grafanas_schema_rejects_a_broken_dashboard() -> None:
    schema = json.loads((SCHEMAS / "grafana-dashboard.jsonschema.json").read_text())
    broken = the_dashboard()
    broken["panels"][1]["gridPos"]["w"] = 30  # wider than the grid
    assert not jsonschema.Draft7Validator(schema).is_valid(broken)


def test_the_dashboard_has_rays_variables_and_a_datasource() -> None:
    variables = {variable["name"]: variable for variable in the_dashboard()["templating"]["list"]}
    assert list(variables) == ["datasource", "Cluster", "SessionName"]
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name, label in (("Cluster", "ray_io_cluster"), ("SessionName", "SessionName")):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert variables[name]["query"].startswith("label_values(")
        assert variables[name]["query"].endswith(f", {label})")
        assert variables[name]["includeAll"] is True
    # As Ray's: every cluster matches a series without the label (off KubeRay).
    assert variables["Cluster"]["allValue"] == ".*"


def test_every_selector_of_every_panel_carries_rays_filters() -> None:
    seen = 0
    for title, expr in expressions():
        for match in SERIES_NAME.finditer(expr):
            selector = re.match(r"\{([^}]*)\}", expr[match.end() :])
            assert selector, f"{title}: {match[0]} without a selector in {expr}"
            assert all(f in selector[1].split(",") for f in RAY_FILTERS), (title, expr)
            seen += 1
    assert seen >= 20


def test_every_panel_reads_the_datasource_variable() -> None:
    datasource = {"type": "prometheus", "uid": "${datasource}"}
    ids = [panel["id"] for panel in the_dashboard()["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels():
        assert panel["datasource"] == datasource, panel["title"]
        assert panel["targets"], panel["title"]
        assert all(target["datasource"] == datasource for target in panel["targets"])


def test_the_dashboard_reads_only_recording_rules_that_exist() -> None:
    recorded = {rule["record"] for rule in rules_of("record")}
    read = {name for _, expr in expressions() for name in SERIES_NAME.findall(expr)}
    assert {name for name in read if name.startswith("image_service:")} <= recorded
    # And most of what it shows comes through them.
    assert len({name for name in read if name in recorded}) >= 8


def test_promtool_accepts_every_dashboard_expression(tmp_path: Path) -> None:
    """Each panel expression, and each variable's selector, as a recording rule: promtool
    parses them as Prometheus would (a `$Variable` inside a matcher's string is plain text)."""
    queries = [expr for _, expr in expressions()]
    for variable in the_dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            [selector] = re.findall(r"^label_values\((.*), \w+\)$", variable["query"])
            queries.append(selector)
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:expression_{n}:check", "expr": query}
                    for n, query in enumerate(queries)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard_rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    checked = promtool("check", "rules", path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(queries)} rules found" in checked.stdout


def test_the_dashboard_shows_what_operators_asked_for() -> None:
    titles = [panel["title"] for panel in panels()]
    assert len(titles) == len(set(titles))
    for wanted in (
        "Images settled per second",
        "Failed images per second by reason",
        "Queue depth and images in flight",
        "GPU slot utilisation",
        "Download time",
        "Processing time",
        "Jobs by state",
        "Oldest queued image age",
        "Dispatch lease holder",
        "API requests per second by route and code",
        "API latency by route",
        "Flush time",
        "Flush backlog",
        "Job store errors per second by kind",
        "Completion callbacks",
    ):
        assert wanted in titles
    download = next(panel for panel in panels() if panel["title"] == "Download time")
    assert [target["legendFormat"] for target in download["targets"]] == ["p50", "p95", "p99"]


def test_ray_filters_are_rays_own() -> None:
    """The filters mirror Ray's generated dashboards; a Ray upgrade that renames them should
    be noticed here."""
    panels_module = pytest.importorskip(
        "ray.dashboard.modules.metrics.dashboards.default_dashboard_panels"
    )
    assert panels_module.default_dashboard_config.standard_global_filters == RAY_FILTERS
    assert dashboard_code.STANDARD_GLOBAL_FILTERS == RAY_FILTERS


# ---- KubeRay: PodMonitor and PrometheusRule ------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "plural"), [("PodMonitor", "podmonitors"), ("PrometheusRule", "prometheusrules")]
)
def test_the_operator_manifests_satisfy_their_crds(kind: str, plural: str) -> None:
    assert schema_errors(operator_schema(plural), only(kind)) == []


def _endpoint_field_misspelled(podmonitor: Document) -> None:
    podmonitor["spec"]["podMetricsEndpoints"][0]["intervall"] = "15s"


def _interval_in_words(podmonitor: Document) -> None:
    podmonitor["spec"]["podMetricsEndpoints"][0]["interval"] = "15 seconds"


def _selector_missing(podmonitor: Document) -> None:
    del podmonitor["spec"]["selector"]


def _rule_field_misspelled(rule: Document) -> None:
    rule["spec"]["groups"][1]["rules"][0]["annotation"] = {}


def _strategy_unknown(rule: Document) -> None:
    rule["spec"]["groups"][0]["partial_response_strategy"] = "sometimes"


@pytest.mark.parametrize(
    ("kind", "plural", "breakage", "reported_at"),
    [
        ("PodMonitor", "podmonitors", _endpoint_field_misspelled, "podMetricsEndpoints.0"),
        ("PodMonitor", "podmonitors", _interval_in_words, "podMetricsEndpoints.0.interval"),
        ("PodMonitor", "podmonitors", _selector_missing, "spec"),
        ("PrometheusRule", "prometheusrules", _rule_field_misspelled, "groups.1.rules.0"),
        # Go's `^(?i)(abort|warn)?$`, read by Python as Go reads it.
        ("PrometheusRule", "prometheusrules", _strategy_unknown, "partial_response_strategy"),
    ],
)
def test_the_crd_schemas_reject_a_broken_manifest(
    kind: str, plural: str, breakage: Callable[[Document], None], reported_at: str
) -> None:
    broken = copy.deepcopy(only(kind))
    breakage(broken)
    errors = schema_errors(operator_schema(plural), broken)
    assert any(error.split(":")[0].endswith(reported_at) for error in errors), errors


def test_a_go_flag_group_reads_as_go_reads_it() -> None:
    strategy = re.compile(python_pattern("^(?i)(abort|warn)?$"))
    assert [bool(strategy.search(s)) for s in ("Abort", "warn", "", "sometimes")] == [
        True,
        True,
        True,
        False,
    ]
    # The flag stops at the end of the group holding it.
    nested = re.compile(python_pattern("^a(b(?i)c)d$"))
    assert nested.search("abCd") and not nested.search("aBcd") and not nested.search("abcD")
    assert python_pattern("^[a-z]+$") == "^[a-z]+$"


def test_the_prometheus_rule_carries_the_rule_files_groups() -> None:
    rule = only("PrometheusRule")
    assert rule["spec"]["groups"] == rule_groups()
    assert PROMETHEUS_RULE.parent == KUBERAY


# ---- KubeRay: the RayService's side --------------------------------------------------------


def node_groups() -> Iterator[tuple[str, Document]]:
    cluster = only("RayService")["spec"]["rayClusterConfig"]
    yield "head", cluster["headGroupSpec"]
    for group in cluster["workerGroupSpecs"]:
        yield "worker", group


def test_the_podmonitor_scrapes_the_metrics_port_of_every_node() -> None:
    spec = only("PodMonitor")["spec"]
    [endpoint] = spec["podMetricsEndpoints"]
    [node_types] = [
        expression["values"]
        for expression in spec["selector"]["matchExpressions"]
        if expression["key"] == "ray.io/node-type"
    ]
    metrics_port = Settings.model_fields["metrics_port"].default
    seen = []
    for node_type, group in node_groups():
        labels = group["template"]["metadata"]["labels"]
        assert spec["selector"]["matchLabels"].items() <= labels.items(), node_type
        assert node_type in node_types
        [ray_container, *_] = group["template"]["spec"]["containers"]  # KubeRay: the first
        ports = {port["name"]: port["containerPort"] for port in ray_container["ports"]}
        assert ports[endpoint["port"]] == metrics_port, node_type
        assert int(group["rayStartParams"]["metrics-export-port"]) == metrics_port
        seen.append(node_type)
    assert seen[0] == "head" and "worker" in seen
    relabeled = {(tuple(r["sourceLabels"]), r["targetLabel"]) for r in endpoint["relabelings"]}
    assert (("__meta_kubernetes_pod_label_ray_io_cluster",), "ray_io_cluster") in relabeled


def test_the_head_points_the_ray_dashboard_at_prometheus_and_grafana() -> None:
    [(_, head), *workers] = node_groups()
    [ray_head, *_] = head["template"]["spec"]["containers"]
    env = {variable["name"]: variable.get("value", "") for variable in ray_head["env"]}
    for name in ("RAY_PROMETHEUS_HOST", "RAY_GRAFANA_HOST", "RAY_GRAFANA_IFRAME_HOST"):
        assert re.fullmatch(r"https?://[\w.-]+(:\d+)?", env.get(name, "")), name
    # In-cluster services, not the browser's address.
    assert ".svc" in env["RAY_PROMETHEUS_HOST"] and ".svc" in env["RAY_GRAFANA_HOST"]
    text = (KUBERAY / "rayservice.yaml").read_text()
    assert "Operators set them" in text
    assert workers


def test_the_operator_manifests_name_the_same_release() -> None:
    labels: list[Any] = [
        only(kind)["metadata"]["labels"] for kind in ("PodMonitor", "PrometheusRule")
    ]
    assert labels[0] == labels[1] == {"release": "prometheus"}


# ---- holes found in review ---------------------------------------------------------------------


def test_tracker_absent_fires_for_a_namespace_whose_tracker_is_gone_beside_another(
    tmp_path: Path,
) -> None:
    """The other alerts are per `namespace` (NoLeaseHolder's own tests put two services in two
    namespaces), but ImageServiceTrackerAbsent is `absent(ray_image_service_queue_depth)` over
    everything the Prometheus scrapes: with the service in `staging` and in `prod` (one
    kube-prometheus-stack watching both), staging's tracker can be gone for good, its workers
    still reporting, and the alert never fires because prod's tracker reports."""
    [rule] = [r for r in rules_of("alert") if r["alert"] == "ImageServiceTrackerAbsent"]
    labels = {"ray_io_cluster": "ijs-a", "WorkerId": "w", "Component": "core_worker"}

    def series(name: str, namespace: str, session: str) -> str:
        pairs = {**labels, "namespace": namespace, "SessionName": session}
        return name + "{" + ", ".join(f'{k}="{v}"' for k, v in pairs.items()) + "}"

    case = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "15s",
        "tests": [
            {
                "interval": "15s",
                "input_series": [
                    {"series": series(name, namespace, session), "values": "5x40"}
                    for name, namespace, session in (
                        ("ray_image_service_queue_depth", "prod", "s1"),
                        ("ray_image_service_images_in_flight", "prod", "s1"),
                        # staging: the workers report, no tracker does.
                        ("ray_image_service_images_processed_total", "staging", "s2"),
                    )
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "6m",
                        "alertname": "ImageServiceTrackerAbsent",
                        "exp_alerts": [
                            {
                                "exp_labels": {**rule["labels"], "namespace": "staging"},
                                "exp_annotations": rule["annotations"],
                            }
                        ],
                    }
                ],
            }
        ],
    }
    path = tmp_path / "absent.test.yaml"
    path.write_text(yaml.safe_dump(case))
    tested = promtool("test", "rules", path)
    assert tested.returncode == 0, tested.stdout + tested.stderr
