"""The deployment files, checked with linters and schema validators (no Docker engine runs here)."""

from __future__ import annotations

import base64
import importlib.util
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

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
    # The probe follows PME_METRICS_PORT: no port is written into it.
    assert re.search(r'^    CMD \["pme-exporter", "healthcheck"\]$', text, re.M)


def test_the_build_context_leaves_out_what_the_image_does_not_need() -> None:
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".git", ".venv", "tests", "bench-results"} <= set(ignored)
    copied = re.findall(r"^COPY (?!--from)(.+) \S+$", (DEPLOY / "Dockerfile").read_text(), re.M)
    assert not {path for line in copied for path in line.split()} & set(ignored)


def test_compose_probes_the_exporter_through_its_own_healthcheck() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    assert compose["services"]["exporter"]["healthcheck"]["test"] == ["CMD", "pme-exporter", "healthcheck"]


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
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    budget = next(d for d in docs if d["kind"] == "PodDisruptionBudget")
    assert budget["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    job = next(d for d in docs if d["kind"] == "Job")["spec"]["template"]["spec"]["containers"][0]
    assert job["args"] == ["migrate"] and {"name": "DB_USER", "value": "pme_owner"} in job["env"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["resources"]["limits"] and container["resources"]["requests"]
    password = next(e for e in container["env"] if e["name"] == "DB_PASSWORD")
    assert "secretKeyRef" in password["valueFrom"]
    config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    known = {name for name, _ in ENVIRONMENT_VARIABLES}
    assert set(config) <= known, set(config) - known
    # The README's roles and a verified server certificate; workers only check migrations.
    assert (config["DB_USER"], config["DB_SSLMODE"], config["PME_MIGRATE"]) == (
        "pme_worker",
        "verify-full",
        "check",
    )


def test_the_optional_service_monitor_scrapes_the_metrics_service() -> None:
    monitor = yaml.safe_load((DEPLOY / "k8s" / "servicemonitor.yaml").read_text())
    service = next(
        d
        for d in yaml.safe_load_all((DEPLOY / "k8s" / "exporter.yaml").read_text())
        if d["kind"] == "Service"
    )
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == [p["name"] for p in service["spec"]["ports"]]


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
        for suffix in ("", "_total", "_bucket", "_count", "_sum", "_created", "_info"):
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


def load_cluster_id_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cluster_id", DEPLOY / "local" / "cluster_id.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cluster_id_never_begins_with_a_dash_which_kafka_storage_would_read_as_an_option() -> None:
    new_cluster_id = load_cluster_id_script().new_cluster_id
    dash_first = bytes([0xF8]) + bytes(15)  # top six bits 62: "-" in URL-safe base64
    assert base64.urlsafe_b64encode(dash_first).startswith(b"-")
    zero, usable = bytes(16), bytes(range(16))
    draws: Iterator[bytes] = iter([dash_first, zero, usable])
    assert new_cluster_id(lambda n: next(draws)) == base64.urlsafe_b64encode(usable).decode().rstrip("=")

    ids = [new_cluster_id() for _ in range(20_000)]  # ~312 draws begin with "-" before the check
    assert not [i for i in ids if i.startswith("-")]
    assert {len(i) for i in ids} == {22} and len(set(ids)) == len(ids)
    assert all(len(base64.urlsafe_b64decode(i + "==")) == 16 for i in ids)


def test_cluster_id_script_prints_one_id() -> None:
    proc = run(sys.executable, str(DEPLOY / "local" / "cluster_id.py"))
    assert proc.returncode == 0, proc.stderr
    assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]{21}\n", proc.stdout), proc.stdout


def test_dashboard_chooses_its_datasource_and_instances() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "pme-exporter.json").read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["instance"]["includeAll"]
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            selectors = re.findall(r"pme_exporter_\w+(\{[^}]*\})?", target["expr"])
            assert selectors and all('instance=~"$instance"' in s for s in selectors), target["expr"]


def test_the_business_dashboard_reads_only_report_views_through_its_provisioned_source() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "pme-ledger.json").read_text())
    provisioned = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "ledger.yml").read_text()
    )
    (source,) = provisioned["datasources"]
    assert source["type"] == "grafana-postgresql-datasource" and source["user"] == "pme_report"
    roles = (DEPLOY / "postgres" / "roles.sql").read_text()
    assert "pme_report LOGIN" in roles and "IN ROLE pme_reader" in roles
    granted = set(
        re.findall(r"\['pme_reader', 'SELECT', '(\w+)'\]", (REPO / "sql" / "grants.sql").read_text())
    )
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in (
        "orders per minute",
        "trades per minute",
        "rejected",
        "reason",
        "open borrowing",
        "fees",
        "settlement",
    ):
        assert topic in titles, topic
    for panel in dashboard["panels"]:
        assert panel["datasource"] == {"type": source["type"], "uid": source["uid"]}, panel["title"]
        for target in panel["targets"]:
            relations = re.findall(r"\b(?:FROM|JOIN)\s+(\w+)", target["rawSql"], flags=re.IGNORECASE)
            assert relations, panel["title"]
            for relation in relations:  # the reader may read these, and nothing else
                assert relation.startswith("report_") and relation in granted, (panel["title"], relation)
