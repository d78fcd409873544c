"""The alert rules and the Prometheus configuration, checked and unit-tested by promtool."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.stack import REPO

PROMETHEUS = REPO / "deploy" / "prometheus"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.fail("promtool is not installed: run deploy/local/tools (make test does)", pytrace=False)
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=120, cwd=REPO)


def test_every_alert_fires_when_it_should_and_resolves_at_the_next_evaluation() -> None:
    proc = promtool("test", "rules", "tests/prometheus/alerts_test.yml")
    assert proc.returncode == 0 and "SUCCESS" in proc.stdout, proc.stdout + proc.stderr


def test_every_alert_has_a_unit_test() -> None:
    import yaml

    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    tests = yaml.safe_load((REPO / "tests" / "prometheus" / "alerts_test.yml").read_text())
    tested = {
        case["alertname"] for t in tests["tests"] for case in t["alert_rule_test"] if case["exp_alerts"]
    }
    assert alerts == tested


def test_the_shipped_prometheus_configuration_and_rules_pass_promtool() -> None:
    config = promtool("check", "config", str(PROMETHEUS / "prometheus.yml"))
    assert config.returncode == 0, config.stdout + config.stderr
    rules = promtool("check", "rules", str(PROMETHEUS / "alerts.yml"))
    assert rules.returncode == 0, rules.stdout + rules.stderr
