"""``hubctl agent`` and ``hubctl watch``: a simulated agent and a terminal dashboard, both on the
library. ``hubctl`` registers them with :func:`add_parsers`, handing over a token minter (the
server's key lives in the server's settings; this package never imports the server)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal, Protocol

from hubclient.client import TokenProvider, connect_agent, connect_dashboard
from hubclient.errors import NotConnected, SessionTerminated
from hubclient.messages import JsonValue


class Minter(Protocol):
    """Signs a token: ``mint(sub, roles, ttl_seconds, tenant)``."""

    def __call__(self, sub: str, roles: list[str], ttl: float, tenant: str | None) -> str: ...


def _provider(mint: Minter, sub: str, roles: list[str], ttl: float, tenant: str | None) -> TokenProvider:
    async def token_provider() -> str:
        return mint(sub, roles, ttl, tenant)

    return token_provider


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _line(*parts: str) -> None:
    print(" ".join(parts), flush=True)


async def _until_signal(work: Awaitable[int]) -> int:
    """Run ``work``; SIGINT/SIGTERM end it cleanly (exit 0)."""
    task = asyncio.ensure_future(work)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, task.cancel)
    try:
        return await task
    except asyncio.CancelledError:
        return 0


async def run_agent(args: argparse.Namespace, mint: Minter) -> int:
    host = socket.gethostname()

    async def on_command(command_id: str, sender: str, payload: JsonValue) -> JsonValue:
        _line(_now(), "command", command_id, "from", sender, json.dumps(payload))
        return {"echo": payload, "host": host, "at": time.time()}

    provider = _provider(mint, args.sub, ["agent"], args.token_ttl, args.tenant)
    try:
        async with connect_agent(split_urls(args.url), provider, on_command=on_command) as agent:
            _line(_now(), "connected", agent.url, "as", args.sub, "connection", agent.connection_id or "?")
            sequence = 0
            while True:
                await asyncio.sleep(args.events_every)
                sequence += 1
                try:
                    await agent.emit({"seq": sequence, "host": host, "at": time.time(),
                                      "load": round(time.process_time() % 1, 3)})
                except NotConnected:
                    continue
    except SessionTerminated as exc:
        print(f"hubctl agent: {exc}", file=sys.stderr)
        return 1


async def run_watch(args: argparse.Namespace, mint: Minter) -> int:
    agents: list[str] | Literal["*"] = (
        "*" if args.agents.strip() == "*" else [a.strip() for a in args.agents.split(",") if a.strip()]
    )
    roles = ["dashboard", *(["operator"] if args.operator else [])]
    provider = _provider(mint, args.sub, roles, args.token_ttl, args.tenant)
    try:
        async with connect_dashboard(split_urls(args.url), provider) as dash:
            presence, events = dash.presence(), dash.events()
            watched = await dash.subscribe(agents)
            _line(_now(), "connected", dash.url, "as", args.sub, "watching", ",".join(watched))

            async def show_presence() -> None:
                async for item in presence:
                    _line(_now(), "presence", item.agent_id, item.status)

            async def show_events() -> None:
                async for item in events:
                    _line(_now(), "event", item.agent_id, json.dumps(item.payload, separators=(",", ":")))

            await asyncio.gather(show_presence(), show_events())
    except SessionTerminated as exc:
        print(f"hubctl watch: {exc}", file=sys.stderr)
        return 1
    return 0


def add_parsers(
    verbs: Any,
    mint: Minter,
    run: Callable[[Awaitable[int]], int] = lambda work: asyncio.run(_until_signal(work)),
) -> None:
    """Register ``agent`` and ``watch`` on ``verbs`` (an ``add_subparsers()`` result); their
    tokens come from ``mint``, one fresh short token per connection and per refresh."""
    agent = verbs.add_parser("agent", help="run a simulated agent (answers commands, emits events)")
    agent.add_argument("--url", default="ws://127.0.0.1:8000", help="hub URL(s), comma-separated")
    agent.add_argument("--sub", required=True, help="the agent id")
    agent.add_argument("--tenant")
    agent.add_argument("--events-every", type=float, default=5.0, help="seconds between events")
    agent.add_argument("--token-ttl", type=float, default=300.0, help="lifetime of each token")
    agent.set_defaults(func=lambda args: run(run_agent(args, mint)))

    watch = verbs.add_parser("watch", help="a terminal dashboard: presence and events, a line each")
    watch.add_argument("--url", default="ws://127.0.0.1:8000", help="hub URL(s), comma-separated")
    watch.add_argument("--sub", required=True, help="the dashboard user")
    watch.add_argument("--tenant")
    watch.add_argument("--agents", default="*", help="comma list of agent ids, or * (default)")
    watch.add_argument("--operator", action="store_true", help="add the operator role to the token")
    watch.add_argument("--token-ttl", type=float, default=300.0, help="lifetime of each token")
    watch.set_defaults(func=lambda args: run(run_watch(args, mint)))


def split_urls(value: str) -> str | list[str]:
    urls = [u.strip() for u in value.split(",") if u.strip()]
    return urls[0] if len(urls) == 1 else urls
