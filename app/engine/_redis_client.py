"""Redis plumbing shared by the Redis engine and its messaging: topologies, connections, failures.

- :func:`parse_redis_url` reads ``HUB_REDIS_URL`` in all its forms: ``redis://`` / ``rediss://``
  (one primary), ``redis+sentinel://[user:password@]host:port[,host:port...]/<service>[/db]`` and
  ``redis+cluster://[user:password@]host:port[,host:port...]`` (and their ``rediss+`` variants). A
  value it refuses raises :class:`ValueError` with one line naming ``HUB_REDIS_URL`` and never the
  password.
- :func:`connect` opens a client of the right kind that fails within about a second when its
  primary is unreachable (short socket timeouts, one immediate retry on a dropped connection, no
  backoff), so callers fail closed fast. Every kind recovers on a later call without a restart:
  the single-node client reconnects, the Sentinel client asks the sentinels for the primary on
  each new connection, the cluster client re-reads the slot map after a connection error.
- :func:`tag` encodes an id (subject, tenant, agent) as base64url of its UTF-8 bytes, so no ``{``,
  ``}``, ``:`` or ``*`` in it can move a Redis Cluster hash tag or alias another key or channel.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
from typing import Any, Literal, TypeAlias
from urllib.parse import unquote

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.connection import parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError

SOCKET_TIMEOUT_SECONDS = 1.0
# Connections of one client (per node on a cluster). redis-py 8 defaults to 100 and then raises at
# once ("Too many connections"): a reconnect storm of a few hundred concurrent handshakes on one
# worker was refused `unavailable` with Redis healthy (found by the soak run). Redis' own limit
# (maxclients, 10,000 by default) is far above workers x this.
MAX_CONNECTIONS = 1000
# Failures that mean "shared state is unreachable or refusing": the caller fails closed.
# AttributeError and RuntimeError: during a failover redis-py 8.1's cluster client disconnects
# pooled connections while other tasks are starting to use them ("'NoneType' object has no
# attribute 'writelines'" on asyncio's loop, "unable to perform operation on <TCPTransport
# closed=True>" on uvloop's); it means the node is gone, and must fail closed like a refused
# connection rather than escape as a 500.
# RedisClusterException is not a RedisError: its SlotNotCoveredError is what a cluster client
# raises while a dead primary's slots have no owner yet (the failover window itself).
UNAVAILABLE = (
    RedisError, RedisClusterException, OSError, asyncio.TimeoutError, AttributeError, RuntimeError,
)

Client: TypeAlias = "aioredis.Redis | RedisCluster"
Kind = Literal["single", "sentinel", "cluster"]

_SCHEMES: dict[str, tuple[Kind, bool]] = {
    "redis": ("single", False),
    "rediss": ("single", True),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
}
_DEFAULT_PORTS: dict[Kind, int] = {"single": 6379, "sentinel": 26379, "cluster": 6379}
_SENTINEL_FORM = "redis+sentinel://[user:password@]host:port[,host:port...]/<service>[/db]"
_CLUSTER_FORM = "redis+cluster://[user:password@]host:port[,host:port...]"


@dataclasses.dataclass(frozen=True)
class RedisTarget:
    """Where shared state lives: the parsed ``HUB_REDIS_URL`` (see :func:`parse_redis_url`).

    ``hosts`` are the sentinels (``sentinel``) or the seed nodes (``cluster``); for ``single``
    the URL itself is handed to redis-py. ``username`` / ``password`` are the data nodes'
    credentials (sentinels are asked without them).
    """

    kind: Kind
    url: str = dataclasses.field(repr=False)
    tls: bool = False
    hosts: tuple[tuple[str, int], ...] = ()
    service: str = ""
    db: int = 0
    username: str | None = dataclasses.field(default=None, repr=False)
    password: str | None = dataclasses.field(default=None, repr=False)

    @property
    def cluster(self) -> bool:
        return self.kind == "cluster"

    def describe(self) -> str:
        """The topology for logs: kind and hosts, never credentials."""
        if self.kind == "single":
            return "single"
        hosts = ",".join(f"{host}:{port}" for host, port in self.hosts)
        return f"{self.kind} {hosts}" + (f" service={self.service}" if self.service else "")


def parse_redis_url(url: str) -> RedisTarget:
    """Parse ``HUB_REDIS_URL``; raise :class:`ValueError` (one line, no password) if malformed.

    ``app.config`` calls it at start, so a value refused here stops the hub before it serves.
    """
    scheme, sep, rest = url.partition("://")
    known = _SCHEMES.get(scheme.lower()) if sep else None
    if known is None:
        raise _bad("must start with redis://, rediss://, redis+sentinel://, rediss+sentinel://, "
                   "redis+cluster:// or rediss+cluster://")
    kind, tls = known
    if kind == "single":
        url = f"{scheme.lower()}://{rest}"  # redis-py reads the scheme in lower case only
        try:
            parse_url(url)  # type: ignore[no-untyped-call]
        except (ValueError, TypeError) as exc:  # its message names the part, never the password
            raise _bad(f"cannot be parsed: {str(exc).splitlines()[0][:120]}") from None
        return RedisTarget("single", url, tls)
    form = _SENTINEL_FORM if kind == "sentinel" else _CLUSTER_FORM
    if "?" in rest or "#" in rest:
        raise _bad(f"{scheme} takes no query or fragment; the form is {form}")
    netloc, _, path = rest.partition("/")
    userinfo, at, hostlist = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    hosts = tuple(_host_port(item, kind, form) for item in hostlist.split(","))
    parts = [p for p in path.split("/")] if path else []
    if kind == "cluster":
        if any(parts):
            raise _bad(f"a Redis Cluster has no service or database; the form is {form}")
        return RedisTarget("cluster", url, tls, hosts, username=username, password=password)
    if not parts or not parts[0]:
        raise _bad(f"names no Sentinel service; the form is {form}")
    if len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
        raise _bad(f"the part after the service must be a database number; the form is {form}")
    db = int(parts[1]) if len(parts) == 2 else 0
    return RedisTarget("sentinel", url, tls, hosts, unquote(parts[0]), db, username, password)


def _host_port(item: str, kind: Kind, form: str) -> tuple[str, int]:
    item = item.strip()
    if item.startswith("["):
        host, _, tail = item[1:].partition("]")
        port_text = tail.removeprefix(":") if tail.startswith(":") else tail
    else:
        host, _, port_text = item.rpartition(":") if ":" in item else (item, "", "")
    if not host:
        raise _bad(f"has an empty host; the form is {form}")
    if not port_text:
        return host, _DEFAULT_PORTS[kind]
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise _bad(f"has a bad port after {host!r}; the form is {form}")
    return host, int(port_text)


def _bad(message: str) -> ValueError:
    return ValueError(f"HUB_REDIS_URL {message}")


def _fast() -> dict[str, Any]:
    return {
        "socket_timeout": SOCKET_TIMEOUT_SECONDS,
        "socket_connect_timeout": SOCKET_TIMEOUT_SECONDS,
        "max_connections": MAX_CONNECTIONS,
        # One immediate retry on a dropped connection (a pooled socket Redis closed, or a
        # primary that just changed); none on timeouts, which would only double the wait before
        # failing closed. Scripts are safe to retry: their nonce makes a second run count nothing
        # twice, and the batched ones are idempotent.
        "retry": Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    }


def connect(target: RedisTarget, client_name: str) -> Client:
    """A client for ``target`` that fails fast (see the module docstring)."""
    if target.kind == "cluster":
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in target.hosts],
            client_name=client_name, ssl=target.tls, username=target.username,
            password=target.password, **_fast(),
        )
    return connect_primary(target, client_name)


def connect_primary(target: RedisTarget, client_name: str) -> aioredis.Redis:
    """A client of the one primary of a single-node or Sentinel ``target``."""
    if target.kind == "single":
        return aioredis.Redis.from_url(target.url, client_name=client_name, **_fast())
    if target.kind != "sentinel":
        raise ValueError(f"{target.kind} has no single primary")
    auth: dict[str, Any] = {"username": target.username, "password": target.password}
    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": SOCKET_TIMEOUT_SECONDS,
        "socket_connect_timeout": SOCKET_TIMEOUT_SECONDS,
        # Every new connection to the primary asks a sentinel first: a burst needs as many.
        "max_connections": MAX_CONNECTIONS,
    }
    if target.tls:
        sentinel_kwargs["ssl"] = True
    sentinel = Sentinel(  # type: ignore[no-untyped-call,unused-ignore]  # typed in redis 8.2+
        list(target.hosts), sentinel_kwargs=sentinel_kwargs
    )
    client: aioredis.Redis = sentinel.master_for(
        target.service, db=target.db, client_name=client_name, ssl=target.tls, **auth, **_fast()
    )
    return client


async def subscriber_client(target: RedisTarget, channel: str, client_name: str) -> aioredis.Redis:
    """A plain client for the pub/sub connection that carries ``channel``.

    One primary or Sentinel: a client of the primary (the Sentinel one asks the sentinels on each
    new connection). Cluster: a client of the node that owns ``channel``'s slot now, read from a
    fresh slot map (a pub/sub connection does not refresh it by itself after its node dies) by a
    cluster client of its own: refreshing the engine's would disconnect connections that other
    tasks are using. Raises the redis-py errors when no node can be found.
    """
    if not target.cluster:
        return connect_primary(target, client_name)
    finder = connect(target, client_name)
    try:
        assert isinstance(finder, RedisCluster)
        await finder.initialize()
        node = finder.get_node_from_key(channel)
    finally:
        await aclose(finder)
    if node is None:
        raise RedisConnectionError(f"no cluster node owns the slot of {channel}")
    return aioredis.Redis(
        host=node.host, port=int(node.port), username=target.username, password=target.password,
        ssl=target.tls, client_name=client_name, **_fast(),
    )


async def aclose(client: Client) -> None:
    """Close ``client`` and, for Sentinel, its connections to the sentinels; never raises."""
    with contextlib.suppress(*UNAVAILABLE):
        await client.aclose()
    pool = getattr(client, "connection_pool", None)
    if isinstance(pool, SentinelConnectionPool):
        for sentinel in pool.sentinel_manager.sentinels:
            with contextlib.suppress(*UNAVAILABLE):
                await sentinel.aclose()


async def ping_primaries(client: Client) -> bool:
    """True when every primary the hub needs answers PING: the one primary (single, Sentinel) or
    every primary of the cluster's current slot map."""
    if isinstance(client, RedisCluster):
        return bool(await client.ping(target_nodes=RedisCluster.PRIMARIES))
    return bool(await client.ping())


def tag(value: str) -> str:
    """``value`` as one key or channel part: base64url of its UTF-8 bytes, unpadded."""
    # surrogatepass: a JSON subject may hold a lone surrogate; it must still get its own key.
    raw = value.encode("utf-8", "surrogatepass")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def text(value: Any) -> str:
    """A Redis reply (bytes or not) as text."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
