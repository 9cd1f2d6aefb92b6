"""The TypeScript client (clients/js) against real hub processes, through Node's test runner.

Each test starts the hubs a node test file needs, passes their URLs and the token key in the
environment, and runs ``node --test`` on that file; a non-zero exit fails with node's output.
The client is compiled with ``tsc`` once per session (``dist/`` is not committed). The packages
come from ``npm ci`` (``make test`` runs it from the committed lock file); the tests fail, never
skip, when node or the packages are missing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import SECRET
from tests.support.server import ROOT, HubProcess

JS = ROOT / "clients" / "js"

pytestmark = pytest.mark.slow


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is missing: install Debian's nodejs and npm (make test does)")
    if not (JS / "node_modules" / "ws").is_dir():
        pytest.fail("clients/js/node_modules is missing: run `make test-deps` (npm ci in clients/js)")
    return node


@pytest.fixture(scope="session")
def js_built() -> Path:
    """Compile the client to clients/js/dist with tsc (strict) once per session, and type-check
    test/usage.ts (how a dashboard author uses the public types)."""
    node = _node()
    tsc = JS / "node_modules" / "typescript" / "bin" / "tsc"
    for project in ("tsconfig.json", "tsconfig.test.json"):
        done = subprocess.run([node, str(tsc), "-p", project], check=False, cwd=JS, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, f"tsc -p {project}:\n{done.stdout}{done.stderr}"
    return JS / "dist"


def run_node(test_file: str, env: dict[str, str], timeout: float = 120) -> str:
    """``node --test test/<test_file>`` with ``env``; returns its output, fails on a non-zero exit."""
    done = subprocess.run(
        [_node(), "--test", "--test-reporter=tap", f"test/{test_file}"],
        check=False, cwd=JS, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "HUB_TEST_SECRET": SECRET, **env},
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"node --test {test_file} failed:\n{output}"
    passed = re.search(r"^# pass (\d+)$", output, re.MULTILINE)
    assert passed is not None and int(passed.group(1)) > 0 and "\n# fail 0\n" in output, output
    return output


def test_session_commands_errors_refusals_and_refresh(
    js_built: Path, hub: HubProcess, start_hub: Callable[..., HubProcess]
) -> None:
    # A hub that warns 1 s before expiry, so 3 s tokens are refreshed in-band several times.
    refreshing = start_hub({"HUB_REFRESH_WARNING_SECONDS": "1"}, name="js-refresh")
    run_node("session.test.mjs", {"HUB_URL": hub.url, "HUB_REFRESH_URL": refreshing.url})


def test_failover_to_a_second_hub_on_1012(js_built: Path, start_hub: Callable[..., HubProcess]) -> None:
    first = start_hub(name="js-a")
    second = start_hub(name="js-b")
    assert first.process is not None
    run_node("failover.test.mjs", {
        "HUB_A_URL": first.url, "HUB_B_URL": second.url, "HUB_A_PID": str(first.process.pid),
    })
    assert first.process.wait(15) is not None  # it drained (1012) and exited


def test_retry_after_of_an_http_refusal_is_a_floor(js_built: Path, start_hub: Callable[..., HubProcess]) -> None:
    limited = start_hub({"HUB_CONNECT_RATE_PER_IP": "1"}, name="js-ratelimit")
    run_node("retry-after.test.mjs", {"HUB_URL": limited.url})


def test_asyncapi_is_valid_and_types_and_bundle_do_not_drift(js_built: Path, hub: HubProcess) -> None:
    run_node("asyncapi.test.mjs", {"HUB_HTTP": hub.http})


def test_presence_snapshot_and_since_against_a_scripted_server(js_built: Path) -> None:
    # No hub: the node test plays the v2 message forms from a scripted server on loopback.
    run_node("fleet-forms.test.mjs", {})


def test_backoff_schedule_and_close_code_policy(js_built: Path) -> None:
    run_node("backoff.test.mjs", {})
