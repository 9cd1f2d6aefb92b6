"""deploy/k8s: every manifest valid against the Kubernetes API schemas (offline, kubernetes-validate's
bundled schemas, strict: unknown fields fail), the ServiceMonitor against its own schema, the parts
consistent with each other, and the pod's own command run for real with its settings and probes.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.conftest import SECRET, make_token
from tests.support.client import attempt
from tests.support.redis_server import RedisServer
from tests.support.server import ROOT, free_port

K8S = ROOT / "deploy" / "k8s"
SERVICEMONITOR_SCHEMA = Path(__file__).parent / "servicemonitor.schema.json"
PROMETHEUSRULE_SCHEMA = Path(__file__).parent / "prometheusrule.schema.json"
RULES = ROOT / "deploy" / "prometheus" / "hub-rules.yml"
# The oldest Kubernetes these manifests are for, and the newest the validator knows.
KUBERNETES_VERSIONS = ("1.27.0", kubernetes_validate.latest_version())


def _documents() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                yield path.name, doc


def _by_kind() -> dict[str, dict[str, Any]]:
    kinds: dict[str, dict[str, Any]] = {}
    for _, doc in _documents():
        assert doc["kind"] not in kinds, f"two {doc['kind']}s: the checks below assume one each"
        kinds[doc["kind"]] = doc
    return kinds


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files
    assert len(kustomization["resources"]) == len(files)
    images = {image["name"]: image for image in kustomization["images"]}
    for kind in ("Deployment", "Job"):
        for container in _by_kind()[kind]["spec"]["template"]["spec"]["containers"]:
            image = images[container["image"]]
            assert image["newTag"] and image["newTag"] != "latest", "pin the image"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_is_valid_for_the_kubernetes_api(version: str) -> None:
    kinds = set()
    for name, doc in _documents():
        kinds.add(doc["kind"])
        if doc["apiVersion"] == "monitoring.coreos.com/v1":
            continue  # custom resources: the tests below
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{name}: {doc['kind']} invalid for Kubernetes {version} at {path}: {exc.message}")
    assert kinds == {"ConfigMap", "Secret", "Job", "Deployment", "Service", "PodDisruptionBudget",
                     "HorizontalPodAutoscaler", "ServiceMonitor", "PrometheusRule"}


def test_the_validator_refuses_what_the_api_server_would() -> None:
    """Strict mode is on: a misspelt field and a wrong type are errors, not ignored."""
    deployment = _by_kind()["Deployment"]
    misspelt = json.loads(json.dumps(deployment))
    misspelt["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(misspelt, KUBERNETES_VERSIONS[0], strict=True)
    wrong_type = json.loads(json.dumps(deployment))
    wrong_type["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong_type, KUBERNETES_VERSIONS[0], strict=True)


def test_servicemonitor_is_valid_and_selects_the_service() -> None:
    kinds = _by_kind()
    monitor, service = kinds["ServiceMonitor"], kinds["Service"]
    schema = json.loads(SERVICEMONITOR_SCHEMA.read_text())
    jsonschema.validate(monitor, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**monitor, "spec": {**monitor["spec"], "endpoint": []}}, schema)
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    port_names = {port["name"] for port in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in port_names and endpoint["path"] == "/metrics"
    # The rules select job="agent-hub": without jobLabel, the job is the Service's name.
    assert "jobLabel" not in monitor["spec"] and service["metadata"]["name"] == "agent-hub"
    assert 'up{job="agent-hub"}' in RULES.read_text()


def test_prometheusrule_is_valid_and_carries_the_tested_rules() -> None:
    """The operator's copy of deploy/prometheus/hub-rules.yml (which promtool tests) is the same."""
    rule = _by_kind()["PrometheusRule"]
    schema = json.loads(PROMETHEUSRULE_SCHEMA.read_text())
    jsonschema.validate(rule, schema)
    broken = json.loads(json.dumps(rule))
    broken["spec"]["groups"][1]["rules"][0]["fo"] = "2m"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]


def test_pods_are_probed_drained_and_locked_down() -> None:
    kinds = _by_kind()
    deployment, config = kinds["Deployment"], kinds["ConfigMap"]["data"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] in ports, probe
    assert ports["http"] == int(config["HUB_PORT"])
    # The stop: preStop pause, then SIGTERM and the hub's drain; the kill comes after both, with
    # room for twice the grace period (docs/operations.md, "Graceful shutdown").
    pause = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pause[0] == "sleep"
    grace = float(config["HUB_SHUTDOWN_GRACE_SECONDS"])
    assert pod["terminationGracePeriodSeconds"] > float(pause[1]) + 2 * grace
    # Non-root (the image's user), read-only root filesystem, nothing extra.
    dockerfile_user = re.findall(r"^USER\s+(\d+)", (ROOT / "Dockerfile").read_text(), re.M)[-1]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == int(dockerfile_user)
    assert pod["automountServiceAccountToken"] is False
    for spec in (container, kinds["Job"]["spec"]["template"]["spec"]["containers"][0]):
        security = spec["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]
        assert {"cpu", "memory"} <= spec["resources"]["requests"].keys()
        assert "memory" in spec["resources"]["limits"]
        # Writable /tmp only: the workers' metrics directory (app/serve.py) lives there.
        mounts = {m["mountPath"]: m["name"] for m in spec["volumeMounts"]}
        assert "/tmp" in mounts
        refs = {next(iter(ref.values()))["name"] for ref in spec["envFrom"]}
        assert refs == {kinds["ConfigMap"]["metadata"]["name"], kinds["Secret"]["metadata"]["name"]}
    assert container["command"] == ["hubctl", "serve"]
    assert kinds["Job"]["spec"]["template"]["spec"]["containers"][0]["command"] == ["hubctl", "migrate"]


def test_selectors_agree() -> None:
    kinds = _by_kind()
    deployment = kinds["Deployment"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert kinds["Service"]["spec"]["selector"].items() <= pod_labels.items()
    assert kinds["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    # The migration Job's pods are not hubs: no Service or budget may count them.
    job_labels = kinds["Job"]["spec"]["template"]["metadata"]["labels"]
    assert not kinds["Service"]["spec"]["selector"].items() <= job_labels.items()
    hpa = kinds["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                     "name": deployment["metadata"]["name"]}
    assert 2 <= hpa["minReplicas"] <= hpa["maxReplicas"]
    # A budget of one pod at a time keeps at least one hub with the autoscaler's minimum.
    assert kinds["PodDisruptionBudget"]["spec"]["maxUnavailable"] < hpa["minReplicas"]
    # CPU utilisation is measured against the request.
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert "cpu" in container["resources"]["requests"]


def _settings_env() -> dict[str, str]:
    kinds = _by_kind()
    env = dict(kinds["ConfigMap"]["data"])
    env.update(kinds["Secret"]["stringData"])
    return env


def test_configmap_and_secret_are_hub_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from app.config import Settings, SettingsError, load_settings

    known = {f"HUB_{name.upper()}" for name in Settings.model_fields}
    env = _settings_env()
    assert set(env) <= known, f"not settings of the hub: {set(env) - known}"
    assert all(isinstance(value, str) for value in env.values())
    monkeypatch.chdir(tmp_path)  # no .env
    for key in [k for k in os.environ if k.startswith("HUB_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    # As shipped, the placeholder secret cannot reach production: the hub refuses it.
    with pytest.raises(SettingsError, match="HUB_JWT_SECRET"):
        load_settings()
    monkeypatch.setenv("HUB_JWT_SECRET", secrets.token_hex(32))
    settings = load_settings()
    assert settings.engine_name == "redis" and settings.workers == int(env["HUB_WORKERS"])


@pytest.mark.redis
async def test_the_pods_command_serves_with_these_settings_and_answers_its_probes(tmp_path: Path) -> None:
    """The Job's and the Deployment's commands as processes, with the ConfigMap and Secret as their
    environment (addresses pointed at this machine: a throwaway Redis, SQLite, loopback), probed on
    the manifest's paths, then stopped as the kubelet does: SIGTERM, and out before the deadline."""
    kinds = _by_kind()
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    job = kinds["Job"]["spec"]["template"]["spec"]["containers"][0]
    port = free_port()
    bin_dir = Path(sys.executable).parent
    redis = RedisServer()
    redis.start()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("HUB_", "PROMETHEUS_"))},
        **_settings_env(),
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(ROOT),
        "HUB_JWT_SECRET": SECRET,
        "HUB_REDIS_URL": redis.url,
        "HUB_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'hub.db'}",
        "HUB_HOST": "127.0.0.1",
        "HUB_PORT": str(port),
    }
    try:
        migrate = subprocess.run(job["command"], cwd=tmp_path, env=env, capture_output=True, timeout=60,
                                 check=False)
        assert migrate.returncode == 0, migrate.stderr
        log = (tmp_path / "pod.log").open("wb")
        proc = subprocess.Popen(container["command"], cwd=tmp_path, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 30
            probes = {name: container[name]["httpGet"]["path"]
                      for name in ("startupProbe", "livenessProbe", "readinessProbe")}
            while True:
                assert proc.poll() is None, (tmp_path / "pod.log").read_text()
                try:
                    if httpx.get(f"http://127.0.0.1:{port}{probes['startupProbe']}", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "the startup probe never passed"
                time.sleep(0.1)
            for name, path in probes.items():
                response = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5)
                assert response.status_code == 200, (name, response.text)
            outcome = await attempt(f"ws://127.0.0.1:{port}/ws/agent", token=make_token("k8s-agent"))
            assert outcome.accepted, outcome
            # Readiness follows Redis: the pod leaves the Service's endpoints, is not restarted.
            redis.stop()
            assert httpx.get(f"http://127.0.0.1:{port}{probes['readinessProbe']}", timeout=5).status_code == 503
            assert httpx.get(f"http://127.0.0.1:{port}{probes['livenessProbe']}", timeout=5).status_code == 200
            redis.start()
            stopped = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            budget = pod["terminationGracePeriodSeconds"] - float(container["lifecycle"]["preStop"]["exec"]["command"][1])
            proc.wait(budget)
            assert time.monotonic() - stopped < budget
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
            log.close()
    finally:
        redis.close()
