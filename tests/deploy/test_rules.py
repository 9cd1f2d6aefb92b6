"""deploy/prometheus/hub-rules.yml with Debian's real promtool: syntax, unit tests with input series
and expected alerts, and the Prometheus configuration that loads the rules.

That every metric named in the rules exists in a live scrape is tests/deploy/test_metric_names.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.server import ROOT

RULES = ROOT / "deploy" / "prometheus" / "hub-rules.yml"
RULE_TESTS = Path(__file__).parent / "hub-rules.test.yml"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus.yml"
OPERATIONS = ROOT / "docs" / "operations.md"


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool is not installed: run `make test` (.ci/system-deps installs Debian's "
                    "prometheus package) or apt-get install prometheus", pytrace=False)
    return subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          check=False)


def _alerts() -> dict[str, dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"] if "alert" in rule}


def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_of_the_rules() -> None:
    result = promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_unit_tested_firing_and_has_a_runbook_line() -> None:
    fired = {
        case["alertname"]
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in test.get("alert_rule_test", []) if case.get("exp_alerts")
    }
    alerts = _alerts()
    assert set(alerts) - fired == set(), "alerts no promtool test sees firing"
    docs = OPERATIONS.read_text()
    section = docs[docs.index("\n## Alerts\n"):]
    section = section[: section.find("\n## ", 1)]
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["runbook"] == "docs/operations.md#alerts", name
        assert re.search(rf"^\| `{name}` \|", section, re.M), f"no runbook line for {name} in docs"


def test_the_shipped_prometheus_config_loads_the_rules(tmp_path: Path) -> None:
    """deploy/prometheus.yml as docker-compose.yml mounts it, with the rules where it looks for
    them: `promtool check config` then checks the rules it finds too."""
    text = PROMETHEUS_CONFIG.read_text()
    assert text.count("/etc/prometheus/rules/*.yml") == 1
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    shutil.copy(RULES, rules_dir / RULES.name)
    config = tmp_path / "prometheus.yml"
    config.write_text(text.replace("/etc/prometheus/rules/*.yml", f"{rules_dir}/*.yml"))
    result = promtool("check", "config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"SUCCESS: \d+ rules found", result.stdout + result.stderr), result.stdout
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert (f"./deploy/prometheus/{RULES.name}:/etc/prometheus/rules/{RULES.name}:ro"
            in compose["services"]["prometheus"]["volumes"])
