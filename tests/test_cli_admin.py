"""``hubctl`` admin verbs against a running hub (the same API an operator's shell uses)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from typing import Any

from tests.conftest import SECRET, make_token
from tests.support.client import attempt
from tests.support.peer import Peer
from tests.support.server import ROOT, HubProcess


def hubctl(*args: str, secret: str = SECRET) -> tuple[int, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", *args], capture_output=True, text=True, timeout=30, check=False,
        env={**env, "HUB_JWT_SECRET": secret, "PYTHONPATH": str(ROOT)}, cwd="/",
    )
    assert not result.stderr or result.returncode, result.stderr
    return result.returncode, json.loads(result.stdout) if result.stdout.strip() else None


async def test_operator_verbs(hub: HubProcess) -> None:
    url = ("--url", hub.http)
    code, ban = hubctl("ban", "127.0.0.7", "--reason", "cli", *url)
    assert code == 0 and ban["cidr"] == "127.0.0.7/32" and ban["created_by"] == "hubctl"
    refused = await attempt(f"{hub.url}/ws/agent", token=make_token("cli-1"), local_addr=("127.0.0.7", 0))
    assert refused.code == "ip_banned"
    code, bans = hubctl("bans", *url)
    assert code == 0 and ban["id"] in {b["id"] for b in bans}
    assert hubctl("unban", ban["id"], *url)[0] == 0
    assert hubctl("unban", ban["id"], *url)[0] == 1  # 404 the second time

    peer = await Peer.connect(f"{hub.url}/ws/agent", make_token("cli-kick"))
    code, listed = hubctl("connections", "--sub", "cli-kick", *url)
    assert code == 0 and [c["sub"] for c in listed] == ["cli-kick"]
    assert hubctl("disconnect", "cli-kick", *url)[0] == 0
    await peer.closed(4403, "kicked")
    code, revoked = hubctl("revoke", "--jti", "cli-jti", "--reason", "test", *url)
    assert code == 0 and revoked["jti"] == "cli-jti"
    assert (await attempt(f"{hub.url}/ws/agent", token=make_token("x", jti="cli-jti"))).code == "token_revoked"
    for _ in range(50):  # events are written in batches, off the handshake path
        code, events = hubctl("events", "--code", "token_revoked", "--limit", "5", *url)
        if code == 0 and events["events"]:
            break
        await asyncio.sleep(0.2)
    assert events["events"][0]["jti"] == "cli-jti"


def test_wrong_key_is_refused_by_the_hub(hub: HubProcess) -> None:
    code, body = hubctl("bans", "--url", hub.http, secret="y" * 64)
    assert code == 1 and body["error"] == "token_invalid"
