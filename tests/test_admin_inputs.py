"""Admin API inputs through a real server (issue 13, items 14 and 15): any `sub` can be
disconnected, percent-encoded, from the API and from `hubctl`; bad values are 4xx, never 500."""

from __future__ import annotations

import base64
import json
from urllib.parse import quote

import httpx
import pytest

from tests.conftest import make_token
from tests.support.peer import Peer
from tests.support.server import HubProcess
from tests.test_cli_admin import hubctl

ADMIN = make_token("root-inputs", ["admin"], ttl=3600)


def _admin(server: HubProcess) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server.http, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10)


@pytest.mark.parametrize("sub", ["spiffe://example.org/ns/prod/agent-7", "bob/disconnect?", "a%2Fb #x", "/"])
async def test_any_sub_can_be_disconnected_through_the_api(hub: HubProcess, sub: str) -> None:
    target = await Peer.connect(f"{hub.url}/ws/agent", make_token(sub))
    async with _admin(hub) as client:
        answer = await client.post(f"/admin/users/{quote(sub, safe='')}/disconnect")
        assert answer.status_code == 202, answer.text
        assert answer.json()["sub"] == sub
    await target.closed(4403, "kicked")


async def test_hubctl_encodes_the_sub(hub: HubProcess) -> None:
    bob = await Peer.connect(f"{hub.url}/ws/agent", make_token("bob-cli"))
    tricky = await Peer.connect(f"{hub.url}/ws/agent", make_token("bob-cli/disconnect?"))
    code, body = hubctl("disconnect", "bob-cli/disconnect?", "--url", hub.http)
    assert code == 0 and body["sub"] == "bob-cli/disconnect?"
    await tricky.closed(4403, "kicked")
    # bob-cli itself was not kicked.
    await bob.send(type="ping", id=1)
    assert (await bob.expect("pong"))["ref"] == 1
    await bob.close()


def _cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


BAD_QUERIES = [
    {"since": "9999-12-31T23:59:59-23:59"},
    {"since": "0001-01-01T00:00:00+23:59"},
    {"before": _cursor("2030-01-01T00:00:00+00:00|" + "9" * 100)},
    {"before": _cursor("2030-01-01T00:00:00+00:00|-1")},
    {"before": _cursor("9999-12-31T23:59:59-23:59|1")},
    {"before": _cursor("2030-01-01T00:00:00|1")},
    {"before": "%%%"},
    {"limit": "0"},
    {"limit": "9" * 30},
]

BAD_BODIES = [
    ("/admin/revocations", {"jti": "a\ud800b"}),
    ("/admin/revocations", {"sub": "a\ud800b"}),
    ("/admin/revocations", {"sub": "bob", "reason": "\ud800"}),
    ("/admin/revocations", {"sub": "bob", "issued_before": "9999-12-31T23:59:59-23:59"}),
    ("/admin/revocations", {"jti": "j", "expires_at": "0001-01-01T00:00:00+23:59"}),
    ("/admin/revocations", {"sub": "bob", "tenant": "\x00"}),
    ("/admin/bans", {"cidr": "192.0.2.1", "expires_at": "9999-12-31T23:59:59-23:59"}),
    ("/admin/bans", {"cidr": "192.0.2.1", "reason": "a\ud800"}),
    ("/admin/bans", {"cidr": "\ud800"}),
]


async def test_bad_query_values_are_422_not_500(hub: HubProcess) -> None:
    async with _admin(hub) as client:
        for params in BAD_QUERIES:
            answer = await client.get("/admin/security-events", params=params)
            assert answer.status_code == 422, (params, answer.status_code, answer.text)


async def test_odd_paths_and_queries_are_never_500(hub: HubProcess) -> None:
    odd = ["%ED%A0%80", "%00", "%FF%FE", "a%0Ab", "x" * 300]
    async with _admin(hub) as client:
        for value in odd:
            for method, url in (
                ("GET", f"/admin/connections?sub={value}"),
                ("GET", f"/admin/connections?tenant={value}"),
                ("GET", f"/admin/security-events?code={value}&sub={value}"),
                ("POST", f"/admin/users/{value}/disconnect"),
                ("POST", f"/admin/users/{value}/disconnect?tenant={value}"),
                ("DELETE", f"/admin/bans/{value}"),
            ):
                answer = await client.request(method, url)
                assert answer.status_code < 500, (method, url, answer.status_code, answer.text)
    assert "Exception in ASGI application" not in hub.log_text()


async def test_bad_bodies_are_422_not_500(hub: HubProcess) -> None:
    async with _admin(hub) as client:
        for path, body in BAD_BODIES:
            # The JSON is written by hand: a lone surrogate is valid JSON text ("\\ud800").
            answer = await client.post(path, content=_json(body), headers={"Content-Type": "application/json"})
            assert answer.status_code == 422, (path, body, answer.status_code, answer.text)
    assert "Exception in ASGI application" not in hub.log_text()


def _json(body: dict[str, str]) -> bytes:
    return json.dumps(body).encode()


async def test_a_422_does_not_echo_the_input(hub: HubProcess) -> None:
    token = make_token("x" * 200, ["agent"])  # a token pasted into the wrong field (> 256 chars)
    async with _admin(hub) as client:
        answer = await client.post("/admin/revocations", json={"jti": token})
    assert answer.status_code == 422 and answer.json()["detail"]
    assert token not in answer.text and token.split(".")[2] not in answer.text
