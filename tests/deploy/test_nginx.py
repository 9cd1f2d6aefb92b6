"""The project's own nginx configuration, for real: Debian's nginx terminates TLS (a throwaway CA)
in front of two hub processes on one Redis, and every client talks to the hubs through it.

Clients pick their own loopback source address (127.0.0.x) so that nginx sees distinct client
addresses; nginx itself reaches the hubs from 127.0.0.1, the only trusted proxy.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
import websockets
import yaml
from jose import jws
from websockets.asyncio.client import ClientConnection

from tests.conftest import BASE_ENV, SECRET, make_token, redis_env
from tests.support.client import Outcome, attempt
from tests.support.nginx import CERT_PATH, KEY_PATH, Nginx
from tests.support.server import ROOT, HubProcess
from tests.test_metrics import wait_for

pytestmark = [pytest.mark.redis]

PROXY = "127.0.0.1/32"
BANNED = "127.0.0.66"
PER_IP_LIMIT = 8
PING_INTERVAL = 20  # the hub's default, written out: the idle test waits longer than this


class Stack:
    """nginx in front of two hubs; ``url`` is the public wss:// base."""

    def __init__(self, nginx: Nginx, hubs: list[HubProcess], trust: ssl.SSLContext) -> None:
        self.nginx = nginx
        self.hubs = hubs
        self.trust = trust

    @property
    def url(self) -> str:
        return f"wss://127.0.0.1:{self.nginx.https_port}"

    async def attempt(self, source: str, path: str = "/ws/agent", **kw: Any) -> Outcome:
        return await attempt(f"{self.url}{path}", ssl=self.trust, local_addr=(source, 0), **kw)

    async def open(self, source: str, sub: str, **kw: Any) -> ClientConnection:
        ws = await websockets.connect(
            f"{self.url}/ws/agent", ssl=self.trust, local_addr=(source, 0),
            additional_headers={"Authorization": f"Bearer {make_token(sub)}"}, **kw,
        )
        welcome = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert welcome["type"] == "welcome" and welcome["sub"] == sub, welcome
        return ws

    def connected_from(self, sub: str) -> set[str]:
        """The client addresses the hubs logged for ``sub``'s connections."""
        return {event["client_ip"] for hub in self.hubs for event in connected(hub)
                if event["sub"] == sub}


def connected(hub: HubProcess) -> list[dict[str, Any]]:
    """The ``ws.disconnected`` events (one per closed connection) ``hub`` logged so far."""
    events = []
    for line in hub.log_text().splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            if event.get("event") == "ws.disconnected":
                events.append(event)
    return events


def live_subs(via: HubProcess, hub: HubProcess) -> set[str]:
    """The ``sub``s of the live connections ``hub`` (one worker) holds, from the admin API of
    ``via`` (which lists every hub's): matched by the worker id of ``hub``'s ``hub.started``."""
    worker = next(json.loads(line)["worker"] for line in hub.log_text().splitlines()
                  if line.startswith("{") and json.loads(line).get("event") == "hub.started")
    answer = httpx.get(f"{via.http}/admin/connections", timeout=5,
                       headers={"Authorization": f"Bearer {make_token('px-admin', ['admin'])}"})
    assert answer.status_code == 200, answer.text
    return {c["sub"] for c in answer.json() if c["worker"] == worker}


def _tls(directory: Path) -> tuple[Path, Path, ssl.SSLContext]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile = directory / "proxy.crt", directory / "proxy.key"
    certfile.write_bytes(b"".join(pem.bytes() for pem in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(keyfile))
    keyfile.chmod(0o600)
    trust = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(trust)
    return certfile, keyfile, trust


def _start_stack(directory: Path, redis_url: str, **extra: str) -> tuple[Nginx, list[HubProcess], Stack]:
    certfile, keyfile, trust = _tls(directory)
    # One database for both hubs (SQLite serves several processes on one host), as in production:
    # an operator's ban is stored once and every hub reloads it.
    env = {**BASE_ENV, **redis_env(redis_url), "HUB_TRUSTED_PROXIES": PROXY,
           "HUB_DATABASE_URL": f"sqlite+aiosqlite:///{directory / 'hubs.db'}",
           "HUB_BANNED_CIDRS": f"{BANNED}/32", "HUB_CONNECT_RATE_PER_IP": str(PER_IP_LIMIT),
           "HUB_PING_INTERVAL_SECONDS": str(PING_INTERVAL), **extra}
    hubs: list[HubProcess] = []
    nginx: Nginx | None = None
    try:
        for name in ("proxied-1", "proxied-2"):
            hubs.append(HubProcess(env, directory, name=name).start())
        nginx = Nginx([f"127.0.0.1:{hub.port}" for hub in hubs], certfile, keyfile).start()
    except BaseException:
        for hub in hubs:
            hub.kill()
        raise
    return nginx, hubs, Stack(nginx, hubs, trust)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Stack]:
    nginx, hubs, built = _start_stack(tmp_path_factory.mktemp("proxied"), redis_url)
    try:
        yield built
    finally:
        nginx.stop()
        for hub in hubs:
            hub.stop()


async def test_wss_handshake_by_header_and_by_subprotocol(stack: Stack) -> None:
    by_header = await stack.attempt("127.0.0.11", token=make_token("px-header"))
    assert by_header.accepted, by_header
    by_protocol = await stack.attempt("127.0.0.11", token=make_token("px-protocol"),
                                      transport="subprotocol")
    assert by_protocol.accepted and by_protocol.subprotocol == "hub.v1", by_protocol
    # A refusal crosses the proxy intact in both forms: HTTP with its JSON body, or a close code.
    refused = await stack.attempt("127.0.0.11", token="not-a-token")
    assert (refused.status, refused.code) == (401, "token_malformed"), refused
    refused_socket = await stack.attempt("127.0.0.11", token=make_token("px-dash", ["dashboard"]),
                                         transport="subprotocol")
    assert (refused_socket.close_code, refused_socket.code) == (4403, "role_forbidden"), refused_socket
    # Plain HTTP is only nginx's own health answer and a redirect to https.
    plain = httpx.get(f"http://127.0.0.1:{stack.nginx.http_port}/ws/agent", timeout=5)
    assert plain.status_code == 308 and plain.headers["location"].startswith("https://")
    assert httpx.get(f"http://127.0.0.1:{stack.nginx.http_port}/nginx-health", timeout=5).text == "ok\n"


async def test_hub_sees_the_client_address_behind_the_proxy(stack: Stack) -> None:
    ws = await stack.open("127.0.0.12", "px-address")
    await ws.close()
    wait_for(lambda: bool(stack.connected_from("px-address")), what="the hub's ws.disconnected line")
    assert stack.connected_from("px-address") == {"127.0.0.12"}


async def test_ban_of_the_client_address_works_through_the_proxy(stack: Stack) -> None:
    banned = await stack.attempt(BANNED, token=make_token("px-banned"))
    assert (banned.status, banned.code) == (403, "ip_banned"), banned
    # The client cannot talk its way out: nginx replaces X-Forwarded-For.
    spoofing = await stack.attempt(BANNED, token=make_token("px-banned"),
                                   headers={"X-Forwarded-For": "127.0.0.13"})
    assert (spoofing.status, spoofing.code) == (403, "ip_banned"), spoofing
    # Nor get an innocent address banned or blamed: the header is not believed from a client.
    framing = await stack.attempt("127.0.0.13", token=make_token("px-framing"),
                                  headers={"X-Forwarded-For": BANNED})
    assert framing.accepted, framing
    wait_for(lambda: bool(stack.connected_from("px-framing")), what="the hub's ws.disconnected line")
    assert stack.connected_from("px-framing") == {"127.0.0.13"}


async def test_operator_ban_closes_that_clients_sockets_behind_the_proxy(stack: Stack) -> None:
    """A ban made through the admin API (on one hub's own port) closes the live sockets of that
    client address on every hub, and only those: each socket knows its client, not the proxy."""
    target = [await stack.open("127.0.0.20", f"px-op-ban-{i}") for i in range(2)]
    bystander = await stack.open("127.0.0.21", "px-op-bystander")
    holders = [live_subs(stack.hubs[0], hub) & {"px-op-ban-0", "px-op-ban-1"} for hub in stack.hubs]
    assert all(holders), f"least_conn puts one on each hub: {holders}"
    admin = make_token("px-admin", ["admin"])
    response = httpx.post(f"{stack.hubs[0].http}/admin/bans", timeout=5,
                          headers={"Authorization": f"Bearer {admin}"},
                          json={"cidr": "127.0.0.20/32", "reason": "proxy test"})
    assert response.status_code == 201, response.text
    for ws in target:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4403, "ip_banned")
    refused = await stack.attempt("127.0.0.20", token=make_token("px-op-ban-again"))
    assert (refused.status, refused.code) == (403, "ip_banned"), refused
    await bystander.send(json.dumps({"type": "ping", "id": "bystander"}))
    assert json.loads(await asyncio.wait_for(bystander.recv(), 5))["ref"] == "bystander"
    await bystander.close()


async def test_per_ip_limit_counts_each_client_behind_the_proxy(stack: Stack) -> None:
    for i in range(PER_IP_LIMIT):
        outcome = await stack.attempt("127.0.0.14", token=make_token(f"px-rate-{i}"))
        assert outcome.accepted, (i, outcome)
    limited = await stack.attempt("127.0.0.14", token=make_token("px-rate-over"))
    assert (limited.status, limited.code) == (429, "rate_limited"), limited
    assert "retry-after" in limited.headers
    # Another client behind the same proxy is not throttled by its neighbour.
    neighbour = await stack.attempt("127.0.0.15", token=make_token("px-rate-neighbour"))
    assert neighbour.accepted, neighbour


def _token_of_length(sub: str, length: int) -> str:
    """A valid token exactly ``length`` bytes long (an unknown claim pads it)."""
    claims = {"sub": sub, "roles": ["agent"], "iat": int(time.time()), "exp": int(time.time()) + 300,
              "pad": ""}
    base = len(jws.sign(json.dumps(claims).encode(), SECRET, algorithm="HS256"))
    # base64url: every 3 bytes of JSON are 4 characters of token.
    claims["pad"] = "x" * ((length - base) * 3 // 4)
    token = str(jws.sign(json.dumps(claims).encode(), SECRET, algorithm="HS256"))
    while len(token) < length:
        claims["pad"] += "x"
        token = str(jws.sign(json.dumps(claims).encode(), SECRET, algorithm="HS256"))
    assert len(token) == length, len(token)
    return token


async def test_header_limits_pass_the_largest_token_and_stop_larger_heads(stack: Stack) -> None:
    """nginx's header buffers fit a token of HUB_MAX_TOKEN_BYTES (8192) in either transport; a
    request head far beyond that stops at nginx, which answers it."""
    largest = _token_of_length("px-large", 8192)
    by_header = await stack.attempt("127.0.0.19", token=largest)
    assert by_header.accepted, by_header
    by_protocol = await stack.attempt("127.0.0.19", token=largest, transport="subprotocol")
    assert by_protocol.accepted, by_protocol
    huge = await stack.attempt("127.0.0.19", token=make_token("px-huge"),
                               headers={"X-Padding": "x" * 20_000})
    assert huge.status == 400 and huge.body is None, huge  # nginx's own page, not the hub's JSON


async def test_query_token_stays_out_of_the_proxy_log(stack: Stack) -> None:
    token = make_token("px-query")
    outcome = await stack.attempt("127.0.0.16", token=token, transport="query")
    assert outcome.accepted, outcome
    # nginx writes the access line when the connection ends.
    wait_for(lambda: "127.0.0.16" in stack.nginx.access(), what="nginx's access line")
    access = stack.nginx.access()
    assert "/ws/agent" in access and "127.0.0.16" in access
    assert token not in access and token.split(".")[2] not in access
    for hub in stack.hubs:
        assert token.split(".")[2] not in hub.log_text()


async def test_proxy_hides_metrics_and_admin(stack: Stack) -> None:
    base = f"https://127.0.0.1:{stack.nginx.https_port}"
    with httpx.Client(verify=stack.trust, timeout=5) as client:
        assert client.get(f"{base}/healthz").status_code == 200
        assert client.get(f"{base}/metrics").status_code == 404
        assert client.get(f"{base}/admin/bans").status_code == 404


@pytest.mark.slow
async def test_idle_socket_outlives_every_proxy_timeout_below_the_ping_interval(stack: Stack) -> None:
    """The client sends nothing (its own pings off): only the hub's pings, every PING_INTERVAL
    seconds, cross the proxy. A proxy timeout shorter than that would cut the socket during the
    wait."""
    ws = await stack.open("127.0.0.17", "px-idle", ping_interval=None)
    try:
        await asyncio.sleep(PING_INTERVAL + 5)
        await ws.send(json.dumps({"type": "ping", "id": "still-there"}))
        pong = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert pong["type"] == "pong" and pong["ref"] == "still-there", pong
    finally:
        await ws.close()


@pytest.mark.slow
async def test_sigtermed_hub_clients_reconnect_through_the_proxy_to_the_other_hub(
    tmp_path: Path, redis_url: str
) -> None:
    nginx, hubs, stack = _start_stack(tmp_path, redis_url, HUB_CONNECT_RATE_PER_IP="1000")
    try:
        sockets = [await stack.open("127.0.0.18", f"px-move-{i}") for i in range(4)]
        on_first = live_subs(hubs[1], hubs[0])
        assert on_first and len(on_first) < 4, "least_conn spreads the sockets over both hubs"

        stopping = asyncio.get_running_loop().run_in_executor(None, hubs[0].stop)
        moved = []
        for i, ws in enumerate(sockets):
            sub = f"px-move-{i}"
            if sub not in on_first:
                continue
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 10)
            assert closed.value.rcvd is not None
            assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1012, "service_restart")
            # At once, as a client told 1012 does: while the old hub still drains (and refuses
            # with 503), nginx hands the handshake to the other one.
            again = await stack.attempt("127.0.0.18", token=make_token(sub))
            assert again.accepted, (sub, again)
            moved.append(sub)
        assert await stopping is not None  # the old hub exited
        assert sorted(moved) == sorted(on_first)
        wait_for(lambda: set(moved) <= {event["sub"] for event in connected(hubs[1])},
                 what="the moved clients' ws.disconnected lines on the other hub")
        # The ones on the other hub were never disturbed.
        for i, ws in enumerate(sockets):
            if f"px-move-{i}" not in on_first:
                await ws.send(json.dumps({"type": "ping", "id": "stay"}))
                assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "pong"
                await ws.close()
    finally:
        nginx.stop()
        for hub in hubs:
            hub.kill()


def test_compose_dev_certificate_loads_in_nginx(tmp_path: Path) -> None:
    """docker-compose.yml's `tls-cert` service makes nginx's certificate: the same script, and
    nginx accepts the pair it writes."""
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    maker, proxy_service = services["tls-cert"], services["nginx"]
    mounted = dict(volume.split(":")[:2] for volume in maker["volumes"])
    script = mounted["./deploy/dev-cert.py"]
    assert [*maker["entrypoint"], *maker["command"]] == ["python", script, mounted["nginx-tls"]]
    assert "nginx-tls:/etc/nginx/tls:ro" in proxy_service["volumes"]
    assert str(Path(CERT_PATH).parent) == "/etc/nginx/tls" and str(Path(KEY_PATH).parent) == "/etc/nginx/tls"
    assert proxy_service["depends_on"]["tls-cert"]["condition"] == "service_completed_successfully"
    tls = tmp_path / "tls"
    subprocess.run([sys.executable, str(ROOT / "deploy" / "dev-cert.py"), str(tls)], check=True,
                   timeout=60, capture_output=True)
    assert (tls / "tls.key").stat().st_mode & 0o077 == 0
    proxy = Nginx(["127.0.0.1:1", "127.0.0.1:2"], tls / "tls.crt", tls / "tls.key")
    try:
        proxy.check()
    finally:
        proxy.stop()
