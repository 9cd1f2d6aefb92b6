"""The soak's links as processes: each :class:`~bench.soak.proxy.LinkProxy` runs in a process of its
own, one per hub host and upstream port, and the orchestrator steers it over a pipe.

Why processes: a process holds at most 20,000 descriptors here, and a proxied connection costs two.
The soak's first runs kept every link in the orchestrator's event loop; once each worker could open
a thousand Redis connections (and each asks a sentinel first), that one process ran out ("Too many
open files") and the hubs' Redis calls failed through it, which the invariants then blamed on the
hubs. One process per (host, port) keeps the busiest link (a host's two workers to the primary)
far below the limit, and each process raises its soft descriptor limit to the hard one.

Protocol on the pipe, one line each way: ``delay <ms>``, ``partition 0|1``, ``refuse 0|1``,
``stats`` (answers ``ok <peak open pairs>``); every command is answered ``ok ...`` once applied.
End of input closes the link and ends the process.

``python -m bench.soak.links <name> <fd>:<upstream port> ...`` (the descriptors are listening
sockets inherited from the orchestrator, which created them inside the host's namespace).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import socket
import sys

from bench.servers import ROOT
from bench.soak.proxy import LinkProxy


def raise_descriptor_limit() -> int:
    """Soft ``RLIMIT_NOFILE`` up to the hard limit; returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class LinkProcess:
    """One link process (parent side). Its methods return once the process has applied the change."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._proc: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()

    async def start(self, served: list[tuple[socket.socket, int]]) -> None:
        """Serve each listening socket towards ``127.0.0.1:<port>`` in a new process; the
        sockets are handed over (closed here once the child has them)."""
        fds = [sock.fileno() for sock, _ in served]
        args = [f"{fd}:{port}" for fd, (_, port) in zip(fds, served, strict=True)]
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.soak.links", self.name, *args, cwd=ROOT, pass_fds=fds,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        for sock, _ in served:
            sock.close()
        await self._ask("stats")  # answered once it listens

    async def _ask(self, line: str) -> str:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.stdout is None:
            raise RuntimeError(f"link {self.name} is not running")
        async with self._lock:
            proc.stdin.write(f"{line}\n".encode())
            await proc.stdin.drain()
            answer = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip()
        if not answer.startswith("ok"):
            raise RuntimeError(f"link {self.name} answered {answer!r} to {line!r} (exit {proc.returncode})")
        return answer[2:].strip()

    async def set_delay(self, delay_ms: float) -> None:
        await self._ask(f"delay {delay_ms}")

    async def partition(self, on: bool) -> None:
        await self._ask(f"partition {int(on)}")

    async def refuse(self, on: bool) -> None:
        await self._ask(f"refuse {int(on)}")

    async def peak_pairs(self) -> int:
        return int(await self._ask("stats"))

    async def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


class LinkGroup:
    """The link processes of one host's link (one per upstream port), steered together."""

    def __init__(self, links: list[LinkProcess]) -> None:
        self.links = links

    async def set_delay(self, delay_ms: float) -> None:
        await asyncio.gather(*(link.set_delay(delay_ms) for link in self.links))

    async def partition(self, on: bool) -> None:
        await asyncio.gather(*(link.partition(on) for link in self.links))

    async def refuse(self, on: bool) -> None:
        await asyncio.gather(*(link.refuse(on) for link in self.links))

    async def peak_pairs(self) -> int:
        return max(await asyncio.gather(*(link.peak_pairs() for link in self.links)), default=0)

    async def close(self) -> None:
        await asyncio.gather(*(link.close() for link in self.links))


async def _child(name: str, specs: list[str]) -> None:
    raise_descriptor_limit()
    proxy = LinkProxy(name)
    for spec in specs:
        fd, port = (int(part) for part in spec.split(":"))
        await proxy.serve(socket.socket(fileno=fd), ("127.0.0.1", port))
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while line := (await reader.readline()).decode().split():
            word, arg = line[0], (line[1] if len(line) > 1 else "")
            answer = ""
            if word == "delay":
                proxy.set_delay(float(arg))
            elif word == "partition":
                proxy.partition(arg == "1")
            elif word == "refuse":
                proxy.refuse(arg == "1")
            elif word == "stats":
                answer = str(proxy.peak_pairs)
            sys.stdout.write(f"ok {answer}\n")
            sys.stdout.flush()
    finally:
        await proxy.close()


if __name__ == "__main__":
    asyncio.run(_child(sys.argv[1], sys.argv[2:]))
