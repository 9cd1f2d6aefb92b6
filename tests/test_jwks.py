"""JwksKeys against a real local HTTP server (http.server in a thread) and a controllable clock."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import secrets
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jose import jwk, jws
from prometheus_client import REGISTRY

from app.config import load_settings
from app.errors import Code
from app.jwks import JwksKeys
from app.tokens import TokenError, TokenVerifier, mint
from tests.conftest import SECRET

NOW = 1_700_000_000.0


class JwksServer:
    """Serves ``document`` as JSON at any path; counts GET requests."""

    def __init__(self) -> None:
        self.document: Any = {"keys": []}
        self.routes: dict[str, Any] = {}  # path -> document, before the default one
        self.headers: dict[str, str] = {}
        self.status = 200
        self.body: bytes | None = None  # raw body overriding the document
        self.requests = 0
        self.paths: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests += 1
                server.paths.append(self.path)
                document = server.routes.get(self.path, server.document)
                body = server.body if server.body is not None else json.dumps(document).encode()
                self.send_response(server.status)
                self.send_header("Content-Type", "application/json")
                for name, value in server.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/.well-known/jwks.json"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def start(self) -> JwksServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)

    def publish(self, *entries: dict[str, Any]) -> None:
        self.document = {"keys": list(entries)}


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """httpx honours proxy variables: the test server is local."""
    for name in list(os.environ):
        if name.lower() in {"http_proxy", "https_proxy", "all_proxy"}:
            monkeypatch.delenv(name)


@pytest.fixture
def server() -> Iterator[JwksServer]:
    srv = JwksServer().start()
    yield srv
    srv.stop()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(scope="module")
def rsa_keys() -> list[rsa.RSAPrivateKey]:
    return [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(3)]


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def private_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_jwk(
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, alg: str, kid: str, **extra: Any
) -> dict[str, Any]:
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    entry: dict[str, Any] = jwk.construct(pem, alg).to_dict()
    entry.update(kid=kid, use="sig", **extra)
    return {k: v for k, v in entry.items() if v is not None}


_SIGNERS: dict[tuple[int, str], Any] = {}


def token(
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    alg: str = "RS256",
    kid: str | None = "k1",
    sub: str = "agent-1",
) -> str:
    # Loading a PEM private key is slow (RSA consistency checks): build each jose key once.
    signer = _SIGNERS.get((id(key), alg))
    if signer is None:
        signer = _SIGNERS[(id(key), alg)] = jwk.construct(private_pem(key), alg)
    return mint(signer, alg, sub, ["agent"], 300, kid=kid, now=NOW)


def verifier_for(keys: JwksKeys, algorithms: str = "RS256,ES256") -> TokenVerifier:
    return TokenVerifier(
        algorithms=frozenset(algorithms.split(",")),
        static_keys={},
        key_lookup=keys.lookup,
        clock=lambda: NOW,
    )


async def refused(verifier: TokenVerifier, tok: str, code: Code = Code.TOKEN_INVALID) -> None:
    with pytest.raises(TokenError) as info:
        await verifier.verify(tok)
    assert info.value.code == code, info.value.detail


# --------------------------------------------------------------------------------------------


async def test_known_kid_verifies_and_is_cached(
    server: JwksServer, clock: Clock, rsa_keys: list[rsa.RSAPrivateKey]
) -> None:
    server.publish(public_jwk(rsa_keys[0], "RS256", "k1"))
    keys = JwksKeys(server.url, clock=clock)
    verifier = verifier_for(keys)
    assert (await verifier.verify(token(rsa_keys[0]))).sub == "agent-1"
    assert server.requests == 1  # fetched lazily on first use
    for _ in range(5):
        clock.now += 59  # past the refresh window, within the max age: a known kid needs no fetch
        assert (await verifier.verify(token(rsa_keys[0]))).sub == "agent-1"
    assert server.requests == 1
    assert server.paths == ["/.well-known/jwks.json"]


async def test_prefetch(
    server: JwksServer, clock: Clock, rsa_keys: list[rsa.RSAPrivateKey]
) -> None:
    server.publish(public_jwk(rsa_keys[0], "RS256", "k1"))
    keys = JwksKeys(server.url, clock=clock)
    await keys.prefetch()
    assert server.requests == 1
    assert (await verifier_for(keys).verify(token(rsa_keys[0]))).sub == "agent-1"
    assert server.requests == 1


async def test_unknown_kid_refetches_once_then_verifies(
    server: JwksServer, clock: Clock, rsa_keys: list[rsa.RSAPrivateKey]
) -> None:
    server.publish(public_jwk(rsa_keys[0], "RS256", "k1"))
    keys = JwksKeys(server.url, min_refresh_seconds=60, clock=clock)
    verifier = verifier_for(keys)
    await keys.prefetch()
    # The identity provider rotates in a new key.
    server.publish(public_jwk(rsa_keys[0], "RS256", "k1"), public_jwk(rsa_keys[1], "RS256", "k2"))
    clock.now += 61
    assert (await verifier.verify(token(rsa_keys[1], kid="k2"))).sub == "agent-1"
    assert server.requests == 2
    assert (await verifier.verify(token(rsa_keys[1], kid="k2"))).sub == "agent-1"
    assert (await verifier.verify(token(rsa_keys[0], kid="k1"))).sub == "agent-1"
    assert server.requests == 2


async def test_unknown_kid_within_the_window_is_refused_without_a_fetch(
    server: JwksServer, clock: Clock, rsa_keys: list[rsa.RSAPrivateKey]
) -> None:
    server.publish(public_jwk(rsa_keys[0], "RS256", "k1"))
    keys = JwksKeys(server.url, min_refresh_seconds=60, clock=clock)
    verifier = verifier_for(keys)
    await keys.prefetch()
    server.publish(public_jwk(rsa_keys[1], "RS256", "k2"))
    clock.now += 30
    await refused(verifier, token(rsa_keys[1], kid="k2"))
    assert server.requests == 1
    clock.now += 30  # exactly min_refetch after the last fetch
    assert (await verifier.verify(token(rsa_keys[1], kid="k2"))).sub == "agent-1"
    assert server.requests == 2


async def test_a_flood_of_unknown_kids_costs_at_most_one_fetch(
    server: JwksServer, clock: Clock, rsa_keys: list[rsa.RSAPrivateKey]
) -> None:
    server.publish(public_jwk(rsa_keys[0], "RS256", "k1"))
    keys = JwksKeys(server.url, min_refresh_seconds=60, clock=clock)
    verifier = verifier_for(keys)
    await keys.prefetch()
    clock.now += 120
    flood = [token(rsa_keys[0], kid=secrets.token_hex(8)) for _ in range(50)]
    for tok in flood[:25]:  # one after another
        await refused(verifier, tok)
    assert server.requests == 2
    clock.now += 59
    results = await asyncio.gather(
        *(verifier.verify(tok) for tok in flood[25:]), return_exceptions=True
    )
    assert all(isinstance(r, TokenError) and r.code == Code.TOKEN_INVALID for r in results)
    assert server.requests == 2
    # The known key still works throughout.
    assert (await verifier.verify(token(rsa_keys[0]))).sub == "agent-1"
    assert server.requests == 2


async def test_concurrent_first_lookups_share_one_fetch(
    server: JwksServer, clock: Clock, rsa_keys: list[rsa.RSAPrivateKey]
) -> None:
    server.publish(public_jwk(rsa_keys[0], "RS256", "k1"))
    keys = JwksKeys(server.url, clock=clock)
    verifier = verifier_for(keys)
    unknown = [token(rsa_keys[0], kid=secrets.token_hex(8)) for _ in range(50)]
    known = [token(rsa_keys[0]) for _ in range(10)]
    results = await asyncio.gather(
        *(verifier.verify(t) for t in unknown + known), return_exceptions=True
    )
    assert server.requests == 1
    assert all(isinstance(r, TokenError) and r.code == Code.TOKEN_INVALID for r in results[:50])
    assert [getattr(r, "sub", r) for r in results[50:]] == ["agent-1"] * 10


@pytest.mark.parametrize(
    ("entry_alg", "token_alg", "extra"),
    [
        ("ES256", "RS256", {}),  # an EC key for an RS256 token
        ("RS256", "ES256", {}),  # an RSA key for an ES256 token
        ("RS256", "RS256", {"alg": "RS384"}),  # the key is pinned to another algorithm
        ("RS256", "RS256", {"use": "enc"}),  # an encryption key
        ("ES256", "ES256", {"crv": "P-384"}),  # a curve that does not fit ES256
        ("RS256", "RS256", {"kty": "oct"}),
        ("RS256", "RS256", {"kty": None}),
    ],
)
async def test_key_that_does_not_fit_the_algorithm_is_refused(
    server: JwksServer,
    clock: Clock,
    rsa_keys: list[rsa.RSAPrivateKey],
    ec_key: ec.EllipticCurvePrivateKey,
    entry_alg: str,
    token_alg: str,
    extra: dict[str, Any],
) -> None:
    signer = rsa_keys[0] if token_alg.startswith("RS") else ec_key
    owner = rsa_keys[0] if entry_alg.startswith("RS") else ec_key
    entry = public_jwk(owner, entry_alg, "k1")
    entry.update(extra)
    server.publish({k: v for k, v in entry.items() if v is not None})
    keys = JwksKeys(server.url, clock=clock)
    await refused(verifier_for(keys, "RS256,RS384,ES256"), token(signer, token_alg, kid="k1"))
    assert await keys.lookup("k1", token_alg) is None


async def test_matching_kty_verifies_for_both_families(
    server: JwksServer,
    clock: Clock,
    rsa_keys: list[rsa.RSAPrivateKey],
    ec_key: ec.EllipticCurvePrivateKey,
) -> None:
    server.publish(public_jwk(rsa_keys[0], "RS256", "r"), public_jwk(ec_key, "ES256", "e"))
    keys = JwksKeys(server.url, clock=clock)
    verifier = verifier_for(keys)
    assert (await verifier.verify(token(rsa_keys[0], "RS256", kid="r"))).sub == "agent-1"
    assert (await verifier.verify(token(ec_key, "ES256", kid="e"))).sub == "agent-1"
    # Each kid names one key: the other family's token under it is refused.
    await refused(verifier, token(ec_key, "ES256", kid="r"))
    await refused(verifier, token(rsa_keys[0], "RS256", kid="e"))
    # A valid key id does not lend its key to a token signed by someone else.
    await refused(verifier, token(rsa_keys[1], "RS256", kid="r"))
    assert server.requests == 1


async def test_private_key_in_the_set_is_refused(
    server: JwksServer, clock: Clock, rsa_keys: list[rsa.RSAPrivateKey]
) -> None:
    entry: dict[str, Any] = jwk.construct(private_pem(rsa_keys[0]), "RS256").to_dict()
    entry["kid"] = "k1"
    assert "d" in entry
    server.publish(entry)
    keys = JwksKeys(server.url, clock=clock)
    await refused(verifier_for(keys), token(rsa_keys[0]))
    # Refused by the key set itself (python-jose would only warn and verify with it).
    assert await keys.lookup("k1", "RS256") is None


async def test_hmac_never_uses_the_key_set(
    server: JwksServer, clock: Clock, rsa_keys: list[rsa.RSAPrivateKey], tmp_path: Path
) -> None:
    """An `oct` key in the set, or an RSA key's bytes, never become an HMAC secret."""
    attacker_secret = b"attacker-chosen-secret-of-32-bytes!!"
    k = base64.urlsafe_b64encode(attacker_secret).rstrip(b"=").decode()
    oct_entry = {"kty": "oct", "kid": "o", "k": k}
    server.publish(oct_entry, public_jwk(rsa_keys[0], "RS256", "k1"))
    keys = JwksKeys(server.url, clock=clock)
    verifier = TokenVerifier(
        algorithms=frozenset({"HS256", "RS256"}),
        static_keys={"HS256": jwk.construct(SECRET.encode(), "HS256")},
        key_lookup=keys.lookup,
        clock=lambda: NOW,
    )
    forged = mint(attacker_secret, "HS256", "admin", ["admin"], 300, kid="o", now=NOW)
    await refused(verifier, forged)
    assert await keys.lookup("o", "HS256") is None
    assert await keys.lookup("o", "RS256") is None
    ok = mint(SECRET, "HS256", "agent-1", ["agent"], 300, kid="o", now=NOW)
    assert (await verifier.verify(ok)).sub == "agent-1"


async def test_jku_pointing_at_the_attackers_set_is_never_fetched(
    server: JwksServer, clock: Clock, rsa_keys: list[rsa.RSAPrivateKey]
) -> None:
    attacker = JwksServer().start()
    try:
        attacker.publish(public_jwk(rsa_keys[2], "RS256", "evil"))
        server.publish(public_jwk(rsa_keys[0], "RS256", "k1"))
        keys = JwksKeys(server.url, clock=clock)
        verifier = verifier_for(keys)
        payload = json.dumps(
            {"sub": "admin", "roles": ["admin"], "exp": int(NOW) + 300}
        ).encode()
        for headers in (
            {"kid": "evil", "jku": attacker.url},
            {"kid": "k1", "jku": attacker.url},
            {"kid": "evil", "x5u": attacker.url},
            {"kid": "evil", "jwk": public_jwk(rsa_keys[2], "RS256", "evil")},
        ):
            forged = jws.sign(payload, private_pem(rsa_keys[2]), headers=headers, algorithm="RS256")
            await refused(verifier, str(forged))
        assert attacker.requests == 0
        assert server.requests == 1
    finally:
        attacker.stop()


async def test_token_without_kid(
    server: JwksServer, clock: Clock, rsa_keys: list[rsa.RSAPrivateKey]
) -> None:
    server.publish(public_jwk(rsa_keys[0], "RS256", "k1"))
    keys = JwksKeys(server.url, clock=clock)
    verifier = verifier_for(keys)
    assert (await verifier.verify(token(rsa_keys[0], kid=None))).sub == "agent-1"
    # With two keys in the set, a token without kid names none of them.
    server.publish(public_jwk(rsa_keys[0], "RS256", "k1"), public_jwk(rsa_keys[1], "RS256", "k2"))
    clock.now += 61
    await keys.prefetch()
    await refused(verifier, token(rsa_keys[0], kid=None))


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/jwks.json"


async def test_server_down_is_token_invalid(
    clock: Clock, rsa_keys: list[rsa.RSAPrivateKey]
) -> None:
    keys = JwksKeys(closed_port_url(), timeout=2.0, clock=clock)
    await keys.prefetch()  # never raises
    verifier = verifier_for(keys)
    clock.now += 61
    await refused(verifier, token(rsa_keys[0]))
    assert await keys.lookup("k1", "RS256") is None


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (500, b'{"keys": []}'),
        (404, b"not found"),
        (200, b"not json"),
        (200, b"[]"),
        (200, b'{"keys": "nope"}'),
        (200, b'{"keys": [1, "x", null]}'),
        (200, b'{"nokeys": []}'),
        (302, b""),
    ],
)
async def test_bad_responses_keep_the_known_keys(
    server: JwksServer,
    clock: Clock,
    rsa_keys: list[rsa.RSAPrivateKey],
    status: int,
    body: bytes,
) -> None:
    server.publish(public_jwk(rsa_keys[0], "RS256", "k1"))
    keys = JwksKeys(server.url, clock=clock)
    verifier = verifier_for(keys)
    await keys.prefetch()
    server.status, server.body = status, body
    clock.now += 61
    await refused(verifier, token(rsa_keys[1], kid="k2"))  # triggers a failing fetch
    assert server.requests == 2
    if status == 200 and body == b'{"keys": [1, "x", null]}':
        # A well-formed but useless answer replaces the set: the old key is gone.
        await refused(verifier, token(rsa_keys[0]))
    else:
        assert (await verifier.verify(token(rsa_keys[0]))).sub == "agent-1"


async def test_bad_responses_from_the_start_are_token_invalid(
    server: JwksServer, clock: Clock, rsa_keys: list[rsa.RSAPrivateKey]
) -> None:
    server.status, server.body = 500, b"oops"
    keys = JwksKeys(server.url, clock=clock)
    await refused(verifier_for(keys), token(rsa_keys[0]))
    assert server.requests == 1


async def test_verifier_from_settings_uses_the_key_set(
    server: JwksServer,
    clock: Clock,
    rsa_keys: list[rsa.RSAPrivateKey],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    for name in list(os.environ):
        if name.startswith("HUB_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    server.publish(public_jwk(rsa_keys[0], "RS256", "k1"))
    settings = load_settings(jwt_algorithms="RS256", jwt_jwks_url=server.url)
    keys = JwksKeys(server.url, clock=clock)
    verifier = TokenVerifier.from_settings(settings, key_lookup=keys.lookup)
    tok = mint(private_pem(rsa_keys[0]), "RS256", "agent-s", ["agent"], 300, kid="k1")
    assert (await verifier.verify(tok)).sub == "agent-s"
    await refused(verifier, mint(private_pem(rsa_keys[1]), "RS256", "a", ["agent"], 300, kid="k1"))


# --------------------------------------------------------------------------------------------
# The key set as a cache with a bounded age (removal, rotation, provider failures, discovery)


async def test_a_removed_key_is_refused_once_the_set_reaches_its_max_age(
    server: JwksServer, clock: Clock, rsa_keys: list[rsa.RSAPrivateKey]
) -> None:
    server.publish(public_jwk(rsa_keys[0], "RS256", "k1"), public_jwk(rsa_keys[1], "RS256", "k2"))
    keys = JwksKeys(server.url, max_age_seconds=300, clock=clock)
    verifier = verifier_for(keys)
    await keys.prefetch()
    server.publish(public_jwk(rsa_keys[1], "RS256", "k2"))  # k1 pulled at the provider
    clock.now += 299
    assert (await verifier.verify(token(rsa_keys[0], kid="k1"))).sub == "agent-1"
    assert server.requests == 1
    clock.now += 1  # the set is 300 s old: the next lookup fetches it again before deciding
    await refused(verifier, token(rsa_keys[0], kid="k1"))
    assert server.requests == 2
    assert (await verifier.verify(token(rsa_keys[1], kid="k2"))).sub == "agent-1"
    assert server.requests == 2


@pytest.mark.parametrize(("cache_control", "age"), [
    ("public, max-age=20", 20), ("max-age=100000", 300), ("no-store", 5), ("private", 300),
])
async def test_a_shorter_cache_control_max_age_wins(
    server: JwksServer, clock: Clock, rsa_keys: list[rsa.RSAPrivateKey], cache_control: str, age: int
) -> None:
    server.publish(public_jwk(rsa_keys[0], "RS256", "k1"))
    server.headers["Cache-Control"] = cache_control
    keys = JwksKeys(server.url, max_age_seconds=300, min_refresh_seconds=5, clock=clock)
    verifier = verifier_for(keys)
    await keys.prefetch()
    clock.now += age - 0.5
    await verifier.verify(token(rsa_keys[0]))
    assert server.requests == 1
    clock.now += 0.5  # never sooner than min_refresh_seconds, never later than max_age_seconds
    await verifier.verify(token(rsa_keys[0]))
    assert server.requests == 2


async def test_a_key_published_just_now_works_on_first_use(
    server: JwksServer, clock: Clock, rsa_keys: list[rsa.RSAPrivateKey]
) -> None:
    server.publish(public_jwk(rsa_keys[0], "RS256", "k1"))
    keys = JwksKeys(server.url, clock=clock)  # defaults: max age 300 s, min refresh 5 s
    verifier = verifier_for(keys)
    await keys.prefetch()
    server.publish(public_jwk(rsa_keys[0], "RS256", "k1"), public_jwk(rsa_keys[1], "RS256", "k2"))
    clock.now += 5
    assert (await verifier.verify(token(rsa_keys[1], kid="k2"))).sub == "agent-1"
    assert server.requests == 2


async def test_a_failed_refresh_keeps_the_last_good_set(
    server: JwksServer, clock: Clock, rsa_keys: list[rsa.RSAPrivateKey]
) -> None:
    def failures() -> float:
        return REGISTRY.get_sample_value("hub_jwks_fetches_total", {"outcome": "error"}) or 0.0

    server.publish(public_jwk(rsa_keys[0], "RS256", "k1"))
    keys = JwksKeys(server.url, max_age_seconds=300, min_refresh_seconds=5, clock=clock)
    verifier = verifier_for(keys)
    await keys.prefetch()
    server.status = 503
    clock.now += 400
    before = failures()
    assert (await verifier.verify(token(rsa_keys[0]))).sub == "agent-1"  # tried, failed, kept
    assert server.requests == 2 and failures() == before + 1
    assert (await verifier.verify(token(rsa_keys[0]))).sub == "agent-1"
    assert server.requests == 2  # a failing provider is asked at most once per min_refresh
    clock.now += 5
    server.status = 200
    server.publish(public_jwk(rsa_keys[1], "RS256", "k2"))
    await refused(verifier, token(rsa_keys[0]))  # back: the stale set is replaced
    assert server.requests == 3


async def test_discovery_from_the_issuer(
    server: JwksServer, clock: Clock, rsa_keys: list[rsa.RSAPrivateKey]
) -> None:
    issuer = server.url.removesuffix("/.well-known/jwks.json")
    server.routes["/.well-known/openid-configuration"] = {"issuer": issuer, "jwks_uri": f"{issuer}/keys"}
    server.routes["/keys"] = {"keys": [public_jwk(rsa_keys[0], "RS256", "k1")]}
    keys = JwksKeys(issuer=issuer, clock=clock)
    assert (await verifier_for(keys).verify(token(rsa_keys[0]))).sub == "agent-1"
    assert server.paths == ["/.well-known/openid-configuration", "/keys"]


@pytest.mark.parametrize("document", [
    {"issuer": "ISSUER/", "jwks_uri": "ISSUER/keys"},  # not exactly the configured issuer
    {"issuer": "https://evil.example", "jwks_uri": "ISSUER/keys"},
    {"issuer": "ISSUER"},
    {"issuer": "ISSUER", "jwks_uri": "ftp://ISSUER/keys"},
    ["not", "an", "object"],
])
async def test_discovery_refuses_a_document_for_another_issuer_or_without_keys(
    server: JwksServer, clock: Clock, rsa_keys: list[rsa.RSAPrivateKey], document: Any
) -> None:
    issuer = server.url.removesuffix("/.well-known/jwks.json")
    server.routes["/.well-known/openid-configuration"] = json.loads(json.dumps(document).replace("ISSUER", issuer))
    server.routes["/keys"] = {"keys": [public_jwk(rsa_keys[0], "RS256", "k1")]}
    keys = JwksKeys(issuer=issuer, clock=clock)
    await refused(verifier_for(keys), token(rsa_keys[0]))
    assert "/keys" not in server.paths


async def test_discovery_over_http_only_in_development(server: JwksServer, clock: Clock) -> None:
    issuer = server.url.removesuffix("/.well-known/jwks.json")
    server.routes["/.well-known/openid-configuration"] = {"issuer": issuer, "jwks_uri": f"{issuer}/keys"}
    keys = JwksKeys(issuer=issuer, allow_http=False, clock=clock)
    assert await keys.lookup("k1", "RS256") is None
    assert "/keys" not in server.paths


async def test_the_refresher_drops_removed_keys_without_any_lookup(
    server: JwksServer, rsa_keys: list[rsa.RSAPrivateKey]
) -> None:
    server.publish(public_jwk(rsa_keys[0], "RS256", "k1"))
    keys = JwksKeys(server.url, max_age_seconds=0.2, min_refresh_seconds=0.1)  # the real clock
    await keys.prefetch()
    fetched = REGISTRY.get_sample_value("hub_jwks_fetches_total", {"outcome": "ok"}) or 0.0
    task = asyncio.create_task(keys.refresher())
    try:
        server.publish(public_jwk(rsa_keys[1], "RS256", "k2"))
        # Wait for the refresher to apply a fetch, not for the server to see it: the request
        # arrives before its reply is read, and cancelling in between would drop the new set.
        def applied() -> bool:
            return (REGISTRY.get_sample_value("hub_jwks_fetches_total", {"outcome": "ok"}) or 0.0) > fetched

        for _ in range(100):
            if applied():
                break
            await asyncio.sleep(0.05)
        assert applied() and server.requests >= 2
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    verifier = TokenVerifier(algorithms=frozenset({"RS256"}), static_keys={}, key_lookup=keys.lookup,
                             clock=lambda: NOW)
    requests = server.requests
    await refused(verifier, token(rsa_keys[0], kid="k1"))
    assert (await verifier.verify(token(rsa_keys[1], kid="k2"))).sub == "agent-1"
    assert server.requests - requests <= 1  # at most the lookup's own check of an unknown kid
