"""A test client on the `websockets` library that reports how a handshake ended."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus


@dataclass
class Outcome:
    """How an attempt ended: an HTTP refusal (``status``/``body``), or a socket that was opened
    (``subprotocol``) and maybe closed (``close_code``/``close_reason``), with the messages seen."""

    status: int | None = None
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    subprotocol: str | None = None
    close_code: int | None = None
    close_reason: str | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)

    @property
    def accepted(self) -> bool:
        return self.status is None and bool(self.messages) and self.messages[0]["type"] == "welcome"

    @property
    def code(self) -> str | None:
        """The contract code, whichever form the refusal took."""
        if self.body is not None:
            return str(self.body.get("error"))
        return self.close_reason


async def attempt(
    url: str,
    *,
    token: str | None = None,
    transport: str = "header",
    headers: dict[str, str] | None = None,
    subprotocols: list[str] | None = None,
    read: int = 1,
    timeout: float = 5.0,
    **connect_kw: Any,
) -> Outcome:
    """Try a handshake and read up to ``read`` messages (or the close)."""
    extra = dict(headers or {})
    protocols = list(subprotocols or [])
    if token is not None:
        if transport == "header":
            extra["Authorization"] = f"Bearer {token}"
        elif transport == "subprotocol":
            protocols = [*(protocols or ["hub.v1"]), f"bearer.{token}"]
        elif transport == "query":
            url = f"{url}{'&' if '?' in url else '?'}token={token}"
    outcome = Outcome()
    try:
        async with websockets.connect(
            url,
            additional_headers=extra,
            subprotocols=protocols or None,  # type: ignore[arg-type]
            open_timeout=timeout,
            **connect_kw,
        ) as ws:
            outcome.subprotocol = ws.subprotocol
            try:
                for _ in range(read):
                    outcome.messages.append(json.loads(await asyncio.wait_for(ws.recv(), timeout)))
                if outcome.messages and outcome.messages[0]["type"] != "welcome":
                    return outcome
                if read and not outcome.messages:
                    return outcome
                # An accepted-then-closed refusal sends no welcome: wait for the close.
            except ConnectionClosed as closed:
                outcome.close_code = closed.rcvd.code if closed.rcvd else None
                outcome.close_reason = closed.rcvd.reason if closed.rcvd else None
    except InvalidStatus as exc:
        outcome.status = exc.response.status_code
        outcome.headers = {k.lower(): v for k, v in exc.response.headers.raw_items()}
        try:
            outcome.body = json.loads(exc.response.body or b"null")
        except ValueError:
            outcome.body = None
    return outcome


async def refused_socket(url: str, token: str | None, **kw: Any) -> Outcome:
    """Offer ``hub.v1`` (as a browser would) and expect an accepted-then-closed refusal."""
    return await attempt(url, token=token, transport="subprotocol" if token else "header",
                         subprotocols=["hub.v1"], **kw)
