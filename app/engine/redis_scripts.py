"""The Redis engine's Lua scripts (``app/engine/lua/<name>.lua``, package data) and the three
ways it runs them: alone, on the routing path's hot connection, or many in one pipeline.

Every multi-step operation of the engine is one script, so it is atomic across workers. The
scripts are loaded at start, so a call is one EVALSHA round trip; after a Redis restart or a
failover (scripts are not replicated) a NOSCRIPT reply loads the script and runs it again.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from app.engine._redis_client import UNAVAILABLE, Client
from app.engine.base import EngineUnavailable
from app.engine.redis_batch import Batch

SCRIPTS = (
    "check_ip",
    "admit_user",
    "release",
    "renew",
    "count_connections",
    "list_connections",
    "record_auth_failure",
    "agent_online",
    "agent_offline",
    "renew_agents",
    "locate_agent",
    "send_to_agent",
    "online_agents",
    "append_event",
    "read_history",
)
# One script run: (keys, args).
Call = tuple[list[str], list[str | int]]


def load_script(name: str) -> str:
    """The source of ``app/engine/lua/<name>.lua`` (a package resource)."""
    return resources.files("app.engine").joinpath("lua", f"{name}.lua").read_text("utf-8")


class Scripts:
    """Every script of :data:`SCRIPTS`, registered on ``client``."""

    def __init__(self, client: Client, batch: Batch) -> None:
        self._client = client
        self._batch = batch
        self._scripts: dict[str, AsyncScript] = {
            name: client.register_script(load_script(name)) for name in SCRIPTS
        }

    async def load(self) -> None:
        """Load every script (a cluster loads them on every primary). Raises redis-py errors."""
        for script in self._scripts.values():
            await self._client.script_load(script.script)

    async def call(self, name: str, keys: list[str], args: list[str | int]) -> Any:
        """Run ``name`` once; raises redis-py's errors as they are."""
        return await self._scripts[name](keys=keys, args=args)

    async def run(self, name: str, keys: list[str], args: list[str | int]) -> Any:
        """Run ``name`` once; raises :class:`EngineUnavailable` when Redis fails."""
        try:
            return await self.call(name, keys, args)
        except UNAVAILABLE as exc:
            raise EngineUnavailable(f"redis {name}: {type(exc).__name__}: {exc}") from exc

    async def run_batched(self, name: str, keys: list[str], args: list[str | int]) -> Any:
        """:meth:`run` on the routing path's hot connection (one primary or Sentinel only: a
        cluster pipeline may split). NOSCRIPT means it did not run: it runs once more, loaded
        first."""
        script = self._scripts[name]
        try:
            return await self._batch.call("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await self.run(name, keys, args)
        except UNAVAILABLE as exc:
            raise EngineUnavailable(f"redis {name}: {type(exc).__name__}: {exc}") from exc

    async def run_many(self, name: str, calls: list[Call]) -> list[Any]:
        """Run script ``name`` once per ``(keys, args)``, all in one pipelined round trip.

        Plain EVALSHA: redis-py's pipelined Script objects would first send SCRIPT EXISTS (a second
        round trip) on every call; given as a raw command, since a cluster pipeline refuses its
        ``evalsha`` method. After a Redis restart or a failover the pipeline answers NOSCRIPT: the
        script is loaded (on every primary of a cluster) and the whole pipeline sent once more. On
        a cluster the batch is split by node and part of it may have run before the error, so
        every batched script must be safe to run twice (they are: list_connections and
        read_history read, renew and renew_agents set absolute leases). Raises the redis-py
        errors; callers map them.
        """
        script = self._scripts[name]
        for attempt in range(2):
            async with self._client.pipeline(transaction=False) as pipe:
                for keys, args in calls:
                    pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
                try:
                    return list(await pipe.execute())
                except NoScriptError:
                    if attempt:
                        raise
            await self._client.script_load(script.script)
        raise AssertionError("unreachable")
