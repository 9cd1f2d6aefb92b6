"""The hub against a real, certified OpenID provider: panva's oidc-provider (tests/idp/, installed
by `make test` from its lock file), issuing JWT access tokens through the client_credentials grant.

Discovery, RS256 and ES256, roles from `scope` and from a nested claim through a role map, the
tenant from a claim path, a provider clock ahead of the hub's, a key published while the hub runs
(accepted on first use), a key removed (refused within the max age, with no other traffic), and the
provider down during a re-fetch (the last good set stays in use).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jose import jwk

from tests.support.client import attempt
from tests.support.server import ROOT, HubProcess, free_port

IDP = ROOT / "tests" / "idp"
CLIENT = ("agent-7", "agent-7-secret")

pytestmark = pytest.mark.slow


def private_jwk(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, alg: str, kid: str) -> dict[str, Any]:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    entry: dict[str, Any] = jwk.construct(pem, alg).to_dict()
    entry.pop("alg", None)
    return {**entry, "kid": kid, "use": "sig"}


def header(token: str) -> dict[str, Any]:
    segment = token.split(".", maxsplit=1)[0]
    return dict(json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))))


@pytest.fixture(scope="module")
def keys() -> dict[str, dict[str, Any]]:
    return {
        "rsa-1": private_jwk(rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256", "rsa-1"),
        "rsa-2": private_jwk(rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256", "rsa-2"),
        "ec-1": private_jwk(ec.generate_private_key(ec.SECP256R1()), "ES256", "ec-1"),
    }


class Provider:
    """oidc-provider on a fixed loopback port; restarted with another key set to rotate keys
    (its tokens are self-contained JWTs, so those issued before a restart stay verifiable)."""

    def __init__(self, workdir: Path, keys: dict[str, dict[str, Any]]) -> None:
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        self.keys = keys
        self.process: subprocess.Popen[bytes] | None = None
        self.log = workdir / f"idp-{self.port}.log"

    def start(self, *kids: str, clock_skew: float = 0) -> Provider:
        self.stop()
        jwks = self.workdir / f"jwks-{'-'.join(kids)}.json"
        jwks.write_text(json.dumps({"keys": [self.keys[kid] for kid in kids]}))
        env = {**os.environ, "CLOCK_SKEW_SECONDS": str(clock_skew), "NODE_ENV": "test"}
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(["node", str(IDP / "server.mjs"), str(self.port), str(jwks)],
                                            cwd=IDP, env=env, stdout=log, stderr=subprocess.STDOUT)
        for _ in range(200):
            assert self.process.poll() is None, self.log.read_text()
            try:
                httpx.get(f"{self.issuer}/.well-known/openid-configuration", timeout=0.5)
                return self
            except httpx.TransportError:
                time.sleep(0.05)
        raise AssertionError(f"the provider did not start:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None

    def token(self, scope: str = "hub:agent", resource: str = "urn:hub") -> str:
        response = httpx.post(f"{self.issuer}/token", auth=CLIENT, timeout=10, data={
            "grant_type": "client_credentials", "scope": scope, "resource": resource,
        })
        assert response.status_code == 200, response.text
        return str(response.json()["access_token"])


@pytest.fixture
def provider(tmp_path: Path, keys: dict[str, dict[str, Any]]) -> Iterator[Provider]:
    idp = Provider(tmp_path, keys)
    yield idp
    idp.stop()


def hub_settings(idp: Provider, **extra: str) -> dict[str, str]:
    return {
        "HUB_JWT_ALGORITHMS": "RS256,ES256",
        "HUB_JWT_JWKS_URL": "discover",
        "HUB_JWT_ISSUER": idp.issuer,
        "HUB_JWT_AUDIENCE": "urn:hub",
        "HUB_JWT_ROLES_CLAIM": "scope",
        "HUB_JWT_ROLE_MAP": "hub:agent=agent,hub:dashboard=dashboard,hub:operator=operator",
        "HUB_JWT_TENANT_CLAIM": "org.id",
        **extra,
    }


async def _logged(hub: HubProcess, event: str, match: Callable[[dict[str, Any]], bool], *,
                  since: int = 0, within: float = 15.0) -> list[dict[str, Any]]:
    """The hub's ``event`` log lines after offset ``since`` that ``match``, once there is one:
    the key refresher runs on its own clock, so the test waits for what it did, not for a time."""
    deadline = time.monotonic() + within
    while True:
        text = hub.log_text()[since:]
        complete = text[:text.rfind("\n") + 1]  # not a line still being written
        lines = [json.loads(line) for line in complete.splitlines() if f'"{event}"' in line]
        found = [line for line in lines if match(line)]
        if found:
            return found
        assert time.monotonic() < deadline, f"no {event} within {within} s"
        await asyncio.sleep(0.1)


async def test_discovery_both_algorithms_roles_from_scope_and_the_tenant(
    provider: Provider, start_hub: Callable[..., HubProcess]
) -> None:
    provider.start("rsa-1", "ec-1")
    hub = start_hub(hub_settings(provider))
    for resource, alg in (("urn:hub", "RS256"), ("urn:hub:es256", "ES256")):
        token = provider.token("hub:agent", resource)
        assert header(token)["alg"] == alg
        outcome = await attempt(f"{hub.url}/ws/agent", token=token)
        assert outcome.accepted, outcome
        welcome = outcome.messages[0]
        assert (welcome["sub"], welcome["roles"], welcome["tenant"]) == ("agent-7", ["agent"], "tenant-a")
    dashboard = provider.token("hub:dashboard hub:operator")
    assert (await attempt(f"{hub.url}/ws/agent", token=dashboard)).code == "role_forbidden"
    outcome = await attempt(f"{hub.url}/ws/dashboard", token=dashboard)
    assert outcome.accepted and set(outcome.messages[0]["roles"]) == {"dashboard", "operator"}
    assert provider.token() not in hub.log_text()


async def test_roles_from_a_nested_claim_through_a_role_map(
    provider: Provider, start_hub: Callable[..., HubProcess]
) -> None:
    provider.start("rsa-1")
    hub = start_hub(hub_settings(provider, HUB_JWT_ROLES_CLAIM="realm_access.roles",
                                 HUB_JWT_ROLE_MAP="fleet-agent=agent"))
    outcome = await attempt(f"{hub.url}/ws/agent", token=provider.token("hub:dashboard"))
    assert outcome.accepted and outcome.messages[0]["roles"] == ["agent"], outcome


async def test_a_provider_clock_ahead_is_within_the_future_leeway(
    provider: Provider, start_hub: Callable[..., HubProcess]
) -> None:
    provider.start("rsa-1", clock_skew=20)
    lenient = start_hub(hub_settings(provider), name="lenient")  # default: 30 s
    strict = start_hub(hub_settings(provider, HUB_JWT_FUTURE_LEEWAY_SECONDS="10"), name="strict")
    token = provider.token()  # issued "20 s from now"
    assert (await attempt(f"{lenient.url}/ws/agent", token=token)).accepted
    assert (await attempt(f"{strict.url}/ws/agent", token=token)).code == "token_not_yet_valid"


async def test_rotation_removal_and_a_provider_outage(
    provider: Provider, start_hub: Callable[..., HubProcess]
) -> None:
    provider.start("rsa-1")
    hub = start_hub(hub_settings(provider, HUB_JWKS_MAX_AGE_SECONDS="3", HUB_JWKS_MIN_REFRESH_SECONDS="0.5"))
    old = provider.token()
    assert (await attempt(f"{hub.url}/ws/agent", token=old)).accepted

    # The provider publishes rsa-2 and signs with it: accepted on its first use, no refusal first.
    provider.start("rsa-2", "rsa-1")
    time.sleep(0.6)  # past HUB_JWKS_MIN_REFRESH_SECONDS since the hub's last fetch
    new = provider.token()
    assert header(new)["kid"] == "rsa-2"
    outcome = await attempt(f"{hub.url}/ws/agent", token=new)
    assert outcome.accepted, (outcome, hub.log_text()[-2000:])

    # rsa-1 is pulled: with no traffic at all, the hub forgets it within the max age.
    provider.start("rsa-2")
    await _logged(hub, "jwks.keys_changed", lambda line: "rsa-1" in line["removed"])
    assert (await attempt(f"{hub.url}/ws/agent", token=old)).code == "token_invalid"

    # The provider goes down: past the max age, the last good set is still used.
    since = len(hub.log_text())
    provider.stop()
    failures = await _logged(hub, "jwks.fetch_failed", lambda line: True, since=since)
    assert all(line["keys_in_use"] == 1 for line in failures)
    assert (await attempt(f"{hub.url}/ws/agent", token=new)).accepted
    assert (await attempt(f"{hub.url}/ws/agent", token=old)).code == "token_invalid"
    metrics = httpx.get(f"{hub.http}/metrics", timeout=10).text
    assert 'hub_jwks_fetches_total{outcome="error"}' in metrics
