"""The deployment files, checked with linters and schema validators (no Docker engine runs here)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

from pme_exporter.metrics import Metrics
from pme_exporter.settings import ENVIRONMENT_VARIABLES
from tests.stack import REPO

DEPLOY = REPO / "deploy"
BIN = Path(sys.executable).parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120)


def test_dockerfile_passes_hadolint() -> None:
    proc = run(str(BIN / "hadolint"), str(DEPLOY / "Dockerfile"))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_runs_unprivileged_with_exec_form_entrypoint_and_healthcheck() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) >= 2  # multi-stage
    assert re.search(r"^USER 10001", text, re.M)
    assert re.search(r'^ENTRYPOINT \["pme-exporter"\]$', text, re.M)  # exec form: SIGTERM reaches the worker
    assert "HEALTHCHECK" in text and "gcc" not in text and "build-essential" not in text


def test_yaml_passes_yamllint() -> None:
    proc = run(str(BIN / "yamllint"), "-c", str(DEPLOY / ".yamllint.yml"), str(DEPLOY))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_kubernetes_manifests_validate_against_the_api_schema() -> None:
    proc = run(
        str(BIN / "kubernetes-validate"), "-k", "1.30.0", "--strict", str(DEPLOY / "k8s" / "exporter.yaml")
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    docs = list(yaml.safe_load_all((DEPLOY / "k8s" / "exporter.yaml").read_text()))
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "PodDisruptionBudget", "Secret", "Service"} <= kinds
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["resources"]["limits"] and container["resources"]["requests"]
    password = next(e for e in container["env"] if e["name"] == "DB_PASSWORD")
    assert "secretKeyRef" in password["valueFrom"]
    config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    known = {name for name, _ in ENVIRONMENT_VARIABLES}
    assert set(config) <= known, set(config) - known


def test_compose_file_matches_the_compose_spec() -> None:
    proc = run(
        str(BIN / "check-jsonschema"),
        "--builtin-schema",
        "vendor.compose-spec",
        str(DEPLOY / "docker-compose.yml"),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    services = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]
    assert {"kafka", "postgres", "exporter", "prometheus", "grafana"} <= set(services)


def _exposed_metric_names() -> set[str]:
    metrics = Metrics()
    names = set()
    for family in metrics.registry.collect():
        for suffix in ("", "_total", "_bucket", "_count", "_sum", "_created"):
            names.add(family.name + suffix)
    return names


def test_dashboard_and_alerts_query_metrics_that_exist() -> None:
    exposed = _exposed_metric_names()
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "pme-exporter.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    exprs += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    used = {m for e in exprs for m in re.findall(r"pme_exporter_\w+", e)}
    assert used and used <= exposed, used - exposed
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("lag (messages)", "lag (seconds)", "flush", "dead letters", "buffer fill", "consumed"):
        assert topic in titles, topic
