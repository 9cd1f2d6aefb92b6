"""Redis plumbing shared by the Redis engine and its messaging: connections, failures, key parts.

- A client fails within about a second when Redis is unreachable (short socket timeouts, one
  immediate retry on a dropped connection, no backoff), so callers fail closed fast; redis-py
  reconnects on the next call.
- :func:`tag` encodes an id (subject, tenant, agent) as base64url of its UTF-8 bytes, so no ``{``,
  ``}``, ``:`` or ``*`` in it can move a Redis Cluster hash tag or alias another key or channel.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

SOCKET_TIMEOUT_SECONDS = 1.0
# Failures that mean "shared state is unreachable or refusing": the caller fails closed.
UNAVAILABLE = (RedisError, OSError, asyncio.TimeoutError)


def connect(url: str, client_name: str) -> aioredis.Redis:
    """A client that fails fast (see the module docstring)."""
    return aioredis.Redis.from_url(
        url,
        socket_timeout=SOCKET_TIMEOUT_SECONDS,
        socket_connect_timeout=SOCKET_TIMEOUT_SECONDS,
        # One immediate retry on a dropped connection (a pooled socket Redis closed); none on
        # timeouts, which would only double the wait before failing closed. Scripts are safe
        # to retry: their nonce makes a second run count nothing twice.
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        client_name=client_name,
    )


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
