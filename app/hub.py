"""The hub's routing of commands, results, events and presence (built out in its own issue)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.errors import Code
from app.messages import ClientMessage, error

if TYPE_CHECKING:
    from app.connections import Connection
    from app.engine import ControlEvent
    from app.runtime import Runtime


class Hub:
    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    async def handle(self, conn: Connection, message: ClientMessage) -> None:
        conn.send(error(Code.FORBIDDEN, f"{message.type} is not available yet", message.id))

    async def on_route(self, event: ControlEvent) -> None:
        return None
