"""The soak's link proxy: one TCP hop whose behaviour a fault changes (delay, partition, outage).

The kernel here has no ``netem`` qdisc, and a hub host reaches Redis and PostgreSQL only through
these proxies, so they are where link faults happen:

- ``delay``: every chunk is forwarded ``delay_ms`` late in each direction (order kept);
- ``partition``: nothing moves either way and new connections hang, as when packets are dropped;
  when it heals the held bytes are delivered, as TCP retransmission would (a peer that gave up
  meanwhile has closed its side);
- ``refuse``: every open connection is reset and new ones are closed at once (a host down).

A :class:`LinkProxy` serves one or more listening sockets (created by the caller, possibly inside
another network namespace) towards one fixed upstream each. The soak runs each in a process of its
own (:mod:`bench.soak.links`): a process may hold 20,000 descriptors here, two per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from dataclasses import dataclass

CHUNK = 65536


@dataclass
class LinkState:
    """What a fault sets on a link; read by every pump on every chunk."""

    delay_ms: float = 0.0
    partitioned: bool = False
    refusing: bool = False


class _Pair:
    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.writers = (client, upstream)

    def reset(self) -> None:
        for writer in self.writers:
            sock = writer.get_extra_info("socket")
            if sock is not None:
                # SO_LINGER 0: the close sends RST, as a dead host's stack would on the next segment.
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            writer.transport.abort()


class LinkProxy:
    """Forwards each listening socket to its upstream ``(host, port)`` through one shared state."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.state = LinkState()
        self._healed = asyncio.Event()
        self._healed.set()
        self._servers: list[asyncio.Server] = []
        self._pairs: set[_Pair] = set()
        self.peak_pairs = 0
        """The most connections open through this proxy at once (two descriptors each)."""
        self._tasks: set[asyncio.Task[None]] = set()

    async def serve(self, listening: socket.socket, upstream: tuple[str, int]) -> None:
        """Accept on ``listening`` (already bound and listening) and forward to ``upstream``."""
        listening.setblocking(False)

        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._connection(reader, writer, upstream)

        self._servers.append(await asyncio.start_server(accept, sock=listening))

    # --- faults --------------------------------------------------------------------------------

    def set_delay(self, delay_ms: float) -> None:
        self.state.delay_ms = delay_ms

    def partition(self, on: bool) -> None:
        self.state.partitioned = on
        if on:
            self._healed.clear()
        else:
            self._healed.set()

    def refuse(self, on: bool) -> None:
        self.state.refusing = on
        if on:
            for pair in list(self._pairs):
                pair.reset()

    # --- forwarding ----------------------------------------------------------------------------

    async def _connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: tuple[str, int]
    ) -> None:
        if self.state.refusing:
            _Pair(writer, writer).reset()
            return
        await self._healed.wait()
        if self.state.refusing:
            _Pair(writer, writer).reset()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*upstream)
        except OSError:
            _Pair(writer, writer).reset()
            return
        pair = _Pair(writer, up_writer)
        self._pairs.add(pair)
        self.peak_pairs = max(self.peak_pairs, len(self._pairs))
        try:
            await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))
        finally:
            self._pairs.discard(pair)
            for w in (writer, up_writer):
                w.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copy one direction; a delay keeps order by giving each chunk its own due time."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        sender = asyncio.create_task(self._send(queue, writer))
        try:
            while True:
                try:
                    data = await reader.read(CHUNK)
                except OSError:
                    break
                if not data:
                    break
                queue.put_nowait((time.monotonic() + self.state.delay_ms / 1000, data))
            queue.put_nowait((0.0, b""))
            await sender
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await sender

    async def _send(self, queue: asyncio.Queue[tuple[float, bytes]], writer: asyncio.StreamWriter) -> None:
        while True:
            due, data = await queue.get()
            if not data:
                with contextlib.suppress(OSError):
                    if writer.can_write_eof():
                        writer.write_eof()
                return
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            await self._healed.wait()
            if self.state.refusing:
                return
            try:
                writer.write(data)
                await writer.drain()
            except OSError:
                return

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for pair in list(self._pairs):
            pair.reset()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2)
