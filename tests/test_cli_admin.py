"""``hubctl`` admin verbs against a running hub (the same API an operator's shell uses)."""

from __future__ import annotations

import asyncio
import json
import os
import pty
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


def hubctl_at_a_terminal(*args: str) -> tuple[int, str, str]:
    """Run hubctl with its standard output on a pseudo-terminal, as an operator's shell has it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
    main, child = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", *args], stdout=child, stderr=subprocess.PIPE,
            env={**env, "HUB_JWT_SECRET": SECRET, "PYTHONPATH": str(ROOT)}, cwd="/",
        )
        os.close(child)
        chunks = []
        while True:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # EIO: the child closed its end
                break
            if not chunk:
                break
            chunks.append(chunk)
        _, err = proc.communicate(timeout=30)
    finally:
        os.close(main)
    return proc.returncode, b"".join(chunks).decode().replace("\r\n", "\n"), err.decode()


def test_tables_at_a_terminal_and_json_otherwise(hub: HubProcess) -> None:
    url = ("--url", hub.http)
    code, ban = hubctl("ban", "127.0.0.9", "--reason", "table test", *url)
    assert code == 0
    try:
        code, out, err = hubctl_at_a_terminal("bans", *url)
        assert code == 0 and not err
        header, *rows = out.strip().splitlines()
        assert header.split()[:2] == ["ID", "CIDR"]
        assert any(ban["id"] in row and "127.0.0.9/32" in row and "table test" in row for row in rows)
        code, out, _ = hubctl_at_a_terminal("bans", "--json", *url)
        assert code == 0 and ban["id"] in {b["id"] for b in json.loads(out)}
        code, out, err = hubctl_at_a_terminal("unban", "no-such-ban", *url)
        assert code == 1 and out == "" and err.startswith("hubctl: not_found"), err
    finally:
        assert hubctl("unban", ban["id"], *url)[0] == 0
