"""Tokens never reach the log, whatever they look like and wherever they are put (issue 13,
item 16): a valid token whose header segment does not start with `eyJ`, in a path, in `?jwt=`,
percent-encoded, in a header."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import sqlite3
import time

import httpx

from tests.conftest import SECRET
from tests.support.client import attempt
from tests.support.server import HubProcess


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _odd_token(sub: str, header: bytes) -> str:
    """An HS256 token signed with the hub's key whose header JSON is spelled unusually."""
    claims = {"sub": sub, "roles": ["agent"], "iat": int(time.time()), "exp": int(time.time()) + 300}
    signing_input = f"{_b64(header)}.{_b64(json.dumps(claims).encode())}"
    signature = hmac.new(SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


HEADERS = [b' {"alg":"HS256","typ":"JWT"}', b'{\n  "alg": "HS256"\n}', b'\t{ "typ": "JWT", "alg": "HS256" }']


async def test_tokens_of_any_spelling_are_redacted_everywhere(hub: HubProcess) -> None:
    tokens = [_odd_token(f"odd-{i}", header) for i, header in enumerate(HEADERS)]
    assert not any(t.startswith("eyJ") for t in tokens)
    for token in tokens:
        # They are valid tokens: the hub accepts them.
        assert (await attempt(f"{hub.url}/ws/agent", token=token)).accepted
        # And put where no token belongs, they are logged by the server, redacted.
        assert (await attempt(f"{hub.url}/ws/agent?jwt={token}")).code == "token_missing"
        assert (await attempt(f"{hub.url}/ws/agent/{token}")).status is not None
        async with httpx.AsyncClient(base_url=hub.http) as client:
            await client.get(f"/healthz/{token}")
            await client.get("/healthz", params={"jwt": token, "x": token.replace(".", "%2E")})
            await client.get(f"/healthz?y={token.replace('.', '%252E')}")
            await client.get("/admin/bans", headers={"User-Agent": f"probe {token}", "Authorization": "Basic x"})
    await asyncio.sleep(0.5)
    text = hub.log_text()
    assert "[redacted-jwt]" in text
    # Nor in a stored row (the security events of the refused admin requests).
    stored = ""
    for _ in range(50):
        with sqlite3.connect(hub.workdir / "shared.db") as db:
            rows = db.execute("select * from security_events where user_agent like 'probe %'").fetchall()
        stored = repr(rows)
        if len(rows) >= len(tokens):
            break
        await asyncio.sleep(0.1)
    assert "probe [redacted-jwt]" in stored
    for token in tokens:
        for part in (token, *token.split(".")[1:]):
            assert part not in text, part[:20]
            assert part not in stored, part[:20]
