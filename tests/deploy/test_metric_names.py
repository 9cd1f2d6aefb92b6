"""Every metric the alert rules and the Grafana dashboard query exists in a live ``/metrics`` scrape
of the hub, with the labels they select on: no alert that can never fire, no panel silently empty.

A real hub (two workers, a throwaway Redis) is exercised until the labelled series exist: accepted
and refused handshakes, messages, a refresh, a forced close, Redis going away (engine errors,
failing closed, readiness 0) and a worker killed and replaced (its start time moves on).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
from collections.abc import Callable

import httpx
import pytest
import websockets
import yaml
from prometheus_client.parser import text_string_to_metric_families

from app.errors import Code
from tests.conftest import make_token, redis_env
from tests.support.client import attempt
from tests.support.redis_server import RedisServer
from tests.support.server import ROOT, HubProcess
from tests.test_metrics import wait_for, wait_for_workers

pytestmark = [pytest.mark.redis, pytest.mark.slow]

RULES = ROOT / "deploy" / "prometheus" / "hub-rules.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "agent-hub.json"
# Series Prometheus makes itself for every scrape target, not the hub.
FROM_PROMETHEUS = {"up"}
# Labels Prometheus attaches to every scraped series.
TARGET_LABELS = {"job", "instance"}
# Label values the hub uses besides the contract's codes (app/metrics.py).
OTHER_VALUES = {"accepted", "ok", "refused"}

METRIC = re.compile(r"\b(hub_[a-z0-9_]+|hub:[a-z0-9_:]+|up)\b(?:\{([^}]*)\})?")
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')

Series = dict[str, list[dict[str, str]]]


def rule_expressions() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def recorded_names() -> set[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["record"] for group in groups for rule in group["rules"] if "record" in rule}


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    exprs += [variable["definition"] for variable in dashboard["templating"]["list"]
              if variable["type"] == "query"]
    return exprs


def scrape(hub: HubProcess) -> Series:
    """Sample name -> the label sets it has, from one scrape."""
    response = httpx.get(f"{hub.http}/metrics", timeout=10, headers={"Connection": "close"})
    assert response.status_code == 200
    series: Series = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            series.setdefault(sample.name, []).append(dict(sample.labels))
    return series


def value(series_text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(series_text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


def metrics_text(hub: HubProcess) -> str:
    return httpx.get(f"{hub.http}/metrics", timeout=10, headers={"Connection": "close"}).text


def check_expression(expr: str, series: Series, recorded: set[str], where: str) -> set[str]:
    """Assert that what ``expr`` selects exists; returns the hub metric names it uses."""
    used = set()
    for match in METRIC.finditer(expr):
        name, matchers = match.group(1), match.group(2) or ""
        if name in FROM_PROMETHEUS:
            continue
        if name.startswith("hub:"):
            assert name in recorded, f"{where}: {name} is not a recording rule of {RULES.name}"
            continue
        used.add(name)
        assert name in series, f"{where}: no series {name} in the hub's /metrics"
        label_names = {key for labels in series[name] for key in labels} | TARGET_LABELS
        for label, operator, wanted in MATCHER.findall(matchers):
            assert label in label_names, f"{where}: {name} has no label {label}"
            if label in ("outcome", "reason", "code") and "$" not in wanted:
                known = {c.value for c in Code} | OTHER_VALUES
                for alternative in wanted.split("|") if operator in ("=~", "!~") else [wanted]:
                    assert alternative in known, f"{where}: {label}={alternative!r} is never a value"
    return used


async def exercise(hub: HubProcess, redis: RedisServer) -> None:
    """Make every labelled series of the hub exist."""
    agent_token = make_token("names-agent", ttl=120)
    agent = await websockets.connect(f"{hub.url}/ws/agent",
                                     additional_headers={"Authorization": f"Bearer {agent_token}"})
    dashboard = await websockets.connect(
        f"{hub.url}/ws/dashboard",
        additional_headers={"Authorization": f"Bearer {make_token('names-dash', ['dashboard', 'operator'])}"},
    )
    try:
        for ws in (agent, dashboard):
            assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "welcome"
        await dashboard.send(json.dumps({"type": "subscribe", "agents": "*", "id": "s"}))
        await agent.send(json.dumps({"type": "event", "payload": {"n": 1}}))
        await agent.send(json.dumps({"type": "auth.refresh", "token": make_token("names-agent", ttl=300)}))
        await agent.send(json.dumps({"type": "auth.refresh", "token": "not-a-token"}))
        await agent.send(json.dumps({"type": "ping"}))
        await asyncio.sleep(0.5)
        refused = await attempt(f"{hub.url}/ws/agent", token=make_token("names-bad", ["dashboard"]))
        assert refused.code == "role_forbidden", refused
        refused = await attempt(f"{hub.url}/ws/agent", token="not-a-token")
        assert refused.code == "token_malformed", refused
        # A forced close: a binary frame.
        await agent.send(b"\x00")
        with pytest.raises(websockets.ConnectionClosed):
            for _ in range(20):  # the answers queued before the close
                await asyncio.wait_for(agent.recv(), 5)

        # Redis away: handshakes fail closed, engine operations fail, readiness says so.
        redis.stop()
        wait_for(lambda: value(metrics_text(hub), "hub_dependency_up", dependency="engine") == 0,
                 15, "hub_dependency_up{dependency=engine} 0 with Redis stopped")
        failed = await attempt(f"{hub.url}/ws/agent", token=make_token("names-down"))
        assert failed.code == "unavailable", failed
    finally:
        redis.start()
        await asyncio.gather(agent.close(), dashboard.close(), return_exceptions=True)
    wait_for(lambda: value(metrics_text(hub), "hub_dependency_up", dependency="engine") == 1,
             15, "hub_dependency_up{dependency=engine} back to 1")


def kill_a_worker(hub: HubProcess) -> None:
    """SIGKILL one worker, as the kernel's OOM killer would; uvicorn replaces it."""
    started = [json.loads(line) for line in hub.log_text().splitlines() if '"hub.started"' in line]
    pid = int(started[0]["worker"].split("-")[-2])  # host-pid-random (app/security_log.py)
    os.kill(pid, signal.SIGKILL)


async def test_every_metric_in_rules_and_dashboard_exists_in_a_live_scrape(
    start_hub: Callable[..., HubProcess],
) -> None:
    redis = RedisServer()
    redis.start()
    try:
        hub = start_hub(redis_env(redis.url), workers=2, name="names")
        wait_for_workers(hub, 2)
        started_at = value(metrics_text(hub), "hub_worker_start_time_seconds")
        assert started_at is not None
        await exercise(hub, redis)

        kill_a_worker(hub)
        wait_for_workers(hub, 3)
        wait_for(lambda: (value(metrics_text(hub), "hub_worker_start_time_seconds") or 0) > started_at,
                 15, "a newer worker start time after a worker was replaced")

        series = scrape(hub)
        recorded = recorded_names()
        used: set[str] = set()
        for where, exprs in (("rules", rule_expressions()), ("dashboard", dashboard_expressions())):
            for expr in exprs:
                used |= check_expression(expr, series, recorded, f"{where}: {expr}")
        # Both files are read (a regex that found nothing would prove nothing).
        assert {"hub_handshake_seconds_bucket", "hub_auth_failures_total", "hub_dependency_up",
                "hub_worker_start_time_seconds", "hub_closes_total", "hub_messages_total"} <= used
        assert value(metrics_text(hub), "hub_dependency_up", dependency="database") == 1
    finally:
        redis.close()


def test_the_check_catches_a_missing_metric_and_a_wrong_label() -> None:
    """The checker itself: names and labels absent from a scrape are reported."""
    series: Series = {"hub_closes_total": [{"code": "slow_consumer"}]}
    with pytest.raises(AssertionError, match="no series hub_typo_total"):
        check_expression("rate(hub_typo_total[5m])", series, set(), "x")
    with pytest.raises(AssertionError, match="has no label reason"):
        check_expression('hub_closes_total{reason="x"}', series, set(), "x")
    with pytest.raises(AssertionError, match="never a value"):
        check_expression('hub_closes_total{code=~"slow_consumer|slow_consumers"}', series, set(), "x")
    with pytest.raises(AssertionError, match="not a recording rule"):
        check_expression("hub:nothing:rate5m > 1", series, set(), "x")
    assert check_expression('sum(rate(hub_closes_total{code="slow_consumer", job=~"$job"}[5m]))',
                            series, set(), "x") == {"hub_closes_total"}
