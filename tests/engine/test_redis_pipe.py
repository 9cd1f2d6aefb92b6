"""The hot path's own Redis connection (:mod:`app.engine.redis_pipe`), against a real Redis."""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis.asyncio as aioredis
import trustme
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.engine._redis_client import connect, parse_redis_url
from app.engine.base import Admitted
from app.engine.redis import RedisEngine
from app.engine.redis_batch import Batcher
from app.engine.redis_pipe import Command, Pipe, hot_path
from tests.support.redis_server import RedisServer, free_port, redis_server_binary

from .conftest import Wire

pytestmark = pytest.mark.redis

PipeFactory = Callable[..., Pipe]


@pytest.fixture
async def make_pipe(own_server: RedisServer) -> AsyncIterator[PipeFactory]:
    """Pipes to this test's own server (closed after)."""
    made: list[Pipe] = []

    def make(setup: list[Command] | None = None, timeout: float = 1.0) -> Pipe:
        async def address() -> tuple[str, int]:
            return "127.0.0.1", own_server.port

        pipe = Pipe(address, setup or [("CLIENT", "SETNAME", "pipe-test")], timeout=timeout)
        made.append(pipe)
        return pipe

    yield make
    for pipe in made:
        await pipe.aclose()


@pytest.fixture
async def admin(own_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(own_server.url)
    yield client
    await client.aclose()


async def _pipe_client_id(admin: aioredis.Redis) -> int:
    clients = await admin.client_list()
    return int(next(c["id"] for c in clients if c["name"] == "pipe-test"))


async def test_replies_reach_their_callers_in_call_order_in_few_writes(
    make_pipe: PipeFactory, wire: Wire
) -> None:
    pipe = make_pipe()
    await pipe.call("DEL", "counter")
    wire.clear()
    replies = await asyncio.gather(*(pipe.call("INCR", "counter") for _ in range(300)))
    assert replies == list(range(1, 301))
    # Everything called in one turn of the event loop goes out in one write.
    assert len(wire.sent) == 1
    assert await pipe.call_many(("SET", "k", "é"), ("GET", "k")) == [b"OK", "é".encode()]


async def test_an_error_reply_raises_in_its_caller_alone(make_pipe: PipeFactory) -> None:
    pipe = make_pipe()
    await pipe.call("SET", "text", "v")
    replies = await asyncio.gather(
        pipe.call("INCR", "text"),
        pipe.call("EVALSHA", "0" * 40, 0),
        pipe.call("GET", "text"),
        return_exceptions=True,
    )
    assert isinstance(replies[0], ResponseError) and "not an integer" in str(replies[0])
    assert isinstance(replies[1], NoScriptError)
    assert replies[2] == b"v"
    with pytest.raises(ResponseError):
        await pipe.call_many(("GET", "text"), ("INCR", "text"))


async def test_a_lost_connection_fails_every_waiting_caller_and_the_next_call_reconnects(
    make_pipe: PipeFactory, admin: aioredis.Redis
) -> None:
    pipe = make_pipe()
    await pipe.call("PING")
    # A command that waits on the server (BLPOP), two behind it, then the connection killed.
    waiting = [asyncio.ensure_future(pipe.call("BLPOP", "nothing", 5)),
               asyncio.ensure_future(pipe.call("PING")), asyncio.ensure_future(pipe.call("PING"))]
    await asyncio.sleep(0.1)
    await admin.client_kill_filter(_id=await _pipe_client_id(admin))
    for future in waiting:
        with pytest.raises(RedisConnectionError):
            await future
    assert await pipe.call("PING") == b"PONG"


async def test_a_late_reply_times_out_every_waiting_caller_and_drops_the_connection(
    make_pipe: PipeFactory, admin: aioredis.Redis
) -> None:
    pipe = make_pipe(timeout=1.0)
    await pipe.call("PING")
    first_id = await _pipe_client_id(admin)
    started = time.monotonic()
    results = await asyncio.gather(
        pipe.call("BLPOP", "nothing", 5), pipe.call("PING"), return_exceptions=True
    )
    assert all(isinstance(r, RedisTimeoutError) for r in results), results
    assert time.monotonic() - started < 3.0  # the 1 s timeout, not the 5 s BLPOP
    assert await pipe.call("PING") == b"PONG"
    assert await _pipe_client_id(admin) != first_id  # a new connection


async def test_redis_down_fails_fast_and_a_restart_is_picked_up(
    make_pipe: PipeFactory, own_server: RedisServer
) -> None:
    pipe = make_pipe()
    await pipe.call("PING")
    own_server.stop()
    for _ in range(2):  # the lost connection, then a refused one
        started = time.monotonic()
        with pytest.raises(RedisConnectionError):
            await pipe.call("PING")
        assert time.monotonic() - started < 1.5
    own_server.start()
    assert await pipe.call("PING") == b"PONG"


async def test_a_primary_demoted_to_replica_drops_the_connection(
    make_pipe: PipeFactory, admin: aioredis.Redis, redis_url: str
) -> None:
    pipe = make_pipe()
    await pipe.call("PING")
    first_id = await _pipe_client_id(admin)
    primary = urlsplit(redis_url)  # the session's Redis, as the primary to follow
    await admin.execute_command("REPLICAOF", primary.hostname, primary.port or 6379)
    try:
        with pytest.raises(RedisConnectionError, match="replica"):
            await pipe.call("SET", "k", "v")
    finally:
        await admin.execute_command("REPLICAOF", "NO", "ONE")
    assert await pipe.call("SET", "k", "v") == b"OK"
    assert await _pipe_client_id(admin) != first_id


async def test_auth_is_sent_first_and_a_refusal_never_shows_the_password(
    make_pipe: PipeFactory, admin: aioredis.Redis
) -> None:
    await admin.config_set("requirepass", "right-horse-battery")
    try:
        good = make_pipe([("AUTH", "right-horse-battery"), ("CLIENT", "SETNAME", "pipe-test")])
        assert await good.call("PING") == b"PONG"
        bad = make_pipe([("AUTH", "wrong-horse-battery")])
        with pytest.raises(RedisConnectionError) as refused:
            await bad.call("PING")
        assert "horse" not in str(refused.value) and "horse" not in repr(refused.value)
    finally:
        await admin.execute_command("AUTH", "right-horse-battery")
        await admin.config_set("requirepass", "")


async def test_the_urls_credentials_and_database_are_used(
    own_server: RedisServer, admin: aioredis.Redis
) -> None:
    await admin.execute_command("ACL", "SETUSER", "hub", "on", ">pipe-pass", "~*", "+@all")
    target = parse_redis_url(f"redis://hub:pipe-pass@127.0.0.1:{own_server.port}/3")
    client = connect(target, "t")
    pipe = hot_path(client, target, "t:hot")
    try:
        assert await pipe.call("SET", "in-three", "yes") == b"OK"
        database_three = aioredis.Redis.from_url(f"{own_server.url[:-2]}/3")
        try:
            assert await database_three.get("in-three") == b"yes"
        finally:
            await database_three.aclose()
        assert await admin.get("in-three") is None  # not in database 0
        names = {c["name"]: c["user"] for c in await admin.client_list()}
        assert names["t:hot"] == "hub"
    finally:
        await pipe.aclose()
        await client.aclose()


async def test_closing_fails_waiting_callers_and_later_calls(make_pipe: PipeFactory) -> None:
    pipe = make_pipe()
    await pipe.call("PING")
    waiting = asyncio.ensure_future(pipe.call("BLPOP", "nothing", 5))
    await asyncio.sleep(0.05)
    await pipe.aclose()
    with pytest.raises(RedisConnectionError):
        await waiting
    with pytest.raises(RedisConnectionError):
        await pipe.call("PING")


def test_the_pipe_runs_on_uvloop_as_the_server_does(own_server: RedisServer) -> None:
    # uvicorn runs the hub on uvloop when it is installed; its transports are not asyncio's.
    import uvloop

    async def exercise() -> list[object]:
        async def address() -> tuple[str, int]:
            return "127.0.0.1", own_server.port

        pipe = Pipe(address, [("CLIENT", "SETNAME", "pipe-uvloop")], timeout=1.0)
        try:
            replies: list[object] = list(await asyncio.gather(*(pipe.call("PING") for _ in range(50))))
            replies.append(await asyncio.gather(pipe.call("BLPOP", "nothing", 5),
                                                return_exceptions=True))
            replies.append(await pipe.call("PING"))
            return replies
        finally:
            await pipe.aclose()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        replies = runner.run(exercise())
    assert replies[:50] == [b"PONG"] * 50
    assert isinstance(replies[50], list) and isinstance(replies[50][0], RedisTimeoutError)
    assert replies[51] == b"PONG"


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A redis-server speaking TLS only (a certificate for 127.0.0.1 from a CA of this test):
    its port, and the CA's certificate file."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    certfile, keyfile, cafile = tmp_path / "redis.crt", tmp_path / "redis.key", tmp_path / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    ca.cert_pem.write_to_path(str(cafile))
    port = free_port()
    server = subprocess.Popen(
        [redis_server_binary(), "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(certfile), "--tls-key-file", str(keyfile),
         "--tls-ca-cert-file", str(cafile), "--tls-auth-clients", "no",
         "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    trust = ssl.create_default_context(cafile=str(cafile))
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as raw, \
                    trust.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    break
        except OSError:
            assert time.monotonic() < deadline, "the TLS redis-server did not start"
            time.sleep(0.05)
    yield port, cafile
    server.kill()
    server.wait()


async def test_tls_uses_the_urls_certificate_settings(tls_redis: tuple[int, Path]) -> None:
    port, cafile = tls_redis
    url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={cafile}"
    target = parse_redis_url(url)
    client = connect(target, "t")
    pipe = hot_path(client, target, "t:hot")
    assert isinstance(pipe, Pipe)
    try:
        assert await pipe.call("PING") == b"PONG"
    finally:
        await pipe.aclose()
        await client.aclose()
    engine = RedisEngine(url, prefix="tls", worker_id="w1")  # both of its paths over TLS
    await engine.start()
    try:
        assert await engine.check_ip("192.0.2.1", limit=10) == Admitted()
        assert await engine.admit_user("alice", "c1", rate_limit=10, max_connections=10,
                                       lease_seconds=30) == Admitted()
    finally:
        await engine.close()
    # A certificate the URL's CA did not sign: refused, at once.
    untrusted = parse_redis_url(f"rediss://127.0.0.1:{port}/0")
    client = connect(untrusted, "t")
    pipe = hot_path(client, untrusted, "t:hot")
    try:
        started = time.monotonic()
        with pytest.raises(RedisConnectionError, match="SSLCertVerificationError"):
            await pipe.call("PING")
        assert time.monotonic() - started < 1.5
    finally:
        await pipe.aclose()
        await client.aclose()


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("redis://127.0.0.1:1/0", Pipe),
        ("redis+sentinel://127.0.0.1:1/hub", Pipe),
        ("rediss://127.0.0.1:1/0", Pipe),
        ("rediss+sentinel://127.0.0.1:1/hub", Pipe),
        ("redis+cluster://127.0.0.1:1", Batcher),
        ("rediss+cluster://127.0.0.1:1", Batcher),
    ],
)
async def test_the_hot_path_is_the_pipe_except_on_a_cluster(url: str, kind: type) -> None:
    target = parse_redis_url(url)
    client = connect(target, "t")
    batch = hot_path(client, target, "t:hot")
    assert isinstance(batch, kind)
    await batch.aclose()
    await client.aclose()
