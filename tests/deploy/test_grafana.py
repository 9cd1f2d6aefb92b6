"""The Grafana dashboard and its provisioning (docker-compose.yml), checked as Grafana reads them.

No Grafana runs here; that every metric the panels query exists in a live scrape of the hub is
tests/deploy/test_metric_names.py.
"""

from __future__ import annotations

import json
from pathlib import PurePosixPath
from typing import Any

import yaml

from tests.support.server import ROOT

GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "agent-hub.json"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "agent-hub.yml"


def _dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text())
    assert isinstance(data, dict)
    return data


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [panel for panel in dashboard["panels"] if panel["type"] != "row"]


def test_dashboard_layout_is_sound() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] == "agent-hub" and dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int)
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        mine = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"])
                for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine


def test_every_panel_queries_the_selected_prometheus_and_hubs() -> None:
    dashboard = _dashboard()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in _panels(dashboard):
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            # The job and hub pickers apply to every query.
            assert 'job=~"$job"' in target["expr"] and 'instance=~"$instance"' in target["expr"], (
                panel["title"], target["expr"])


def test_dashboard_covers_what_operators_look_at() -> None:
    exprs = " ".join(t["expr"] for p in _panels(_dashboard()) for t in p["targets"])
    for needed in (
        "sum by (endpoint) (hub_active_connections",  # connections by endpoint
        "sum by (instance, endpoint) (hub_active_connections",  # and by hub
        "sum by (outcome) (rate(hub_handshakes_total",  # handshakes by outcome
        "sum by (reason) (rate(hub_auth_failures_total",  # by code
        "histogram_quantile(0.99, sum by (le) (rate(hub_handshake_seconds_bucket",  # latency
        'outcome=~"connection_limit|rate_limited',  # refusals
        "sum by (type, direction) (rate(hub_messages_total",  # message rates
        "hub_dependency_up",  # engine and database health
        "hub_engine_errors_total",
        "hub_security_events_dropped_total",  # security events
        "hub_worker_start_time_seconds",
    ):
        assert needed in exprs, needed


def test_compose_provisions_the_datasource_and_the_dashboard() -> None:
    datasources = yaml.safe_load(DATASOURCES.read_text())
    prometheus = next(d for d in datasources["datasources"] if d["type"] == "prometheus")
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert prometheus["url"] == "http://prometheus:9090" and "prometheus" in services
    grafana = services["grafana"]
    mounts = {}
    for volume in grafana["volumes"]:
        source, target, *_ = volume.split(":")
        mounts[(ROOT / source).resolve()] = PurePosixPath(target)
    assert mounts[DATASOURCES.resolve()].parent == PurePosixPath("/etc/grafana/provisioning/datasources")
    assert mounts[PROVIDERS.resolve()].parent == PurePosixPath("/etc/grafana/provisioning/dashboards")
    provider = yaml.safe_load(PROVIDERS.read_text())["providers"][0]
    assert provider["type"] == "file"
    assert mounts[DASHBOARD.resolve()].parent == PurePosixPath(provider["options"]["path"])
    assert grafana["depends_on"]["prometheus"]["condition"] == "service_healthy"
    for port in grafana["ports"]:
        assert str(port).startswith("127.0.0.1:"), "Grafana stays on the host's loopback"
