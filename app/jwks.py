"""Public keys from an identity provider's JWKS endpoint.

Keys are cached by ``kid``. An unknown ``kid`` triggers a re-fetch at most once per
``min_refetch_seconds`` (a flood of tokens with random ``kid`` values costs one request a minute),
and concurrent lookups share one fetch. A failed fetch keeps the keys already known.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
from jose import jwk
from jose.backends.base import Key

from app.logs import get_logger

log = get_logger("app.jwks")

_KTY = {"RS": "RSA", "ES": "EC"}
_CRV = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}  # RFC 7518 section 3.4
_MAX_KEYS = 64


class JwksKeys:
    """A cached key set. Call :meth:`lookup` as the verifier's ``key_lookup``."""

    def __init__(
        self,
        url: str,
        *,
        min_refetch_seconds: float = 60.0,
        timeout: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = url
        self._min_refetch = min_refetch_seconds
        self._timeout = timeout
        self._clock = clock
        self._keys: dict[str, dict[str, Any]] = {}
        self._last_fetch: float | None = None
        self._lock = asyncio.Lock()

    async def lookup(self, kid: str, alg: str) -> Key | None:
        """The key for ``kid`` usable with ``alg``, or None. Never raises."""
        entry = self._find(kid)
        # Wait for a fetch already in flight too: it may be the one that brings this key.
        if entry is None and (self._lock.locked() or self._may_refetch()):
            async with self._lock:
                if self._find(kid) is None and self._may_refetch():
                    await self._fetch()
            entry = self._find(kid)
        if entry is None:
            return None
        kty = _KTY.get(alg[:2])
        if kty is None or entry.get("kty") != kty or entry.get("alg", alg) != alg:
            return None
        if entry.get("use", "sig") != "sig":
            return None
        if kty == "EC" and entry.get("crv") != _CRV.get(alg):
            return None
        if "d" in entry:  # a set that publishes a private key is misconfigured: refuse it
            return None
        try:
            return jwk.construct(entry, alg)
        except Exception:
            return None

    def _find(self, kid: str) -> dict[str, Any] | None:
        if kid:
            return self._keys.get(kid)
        # A token without `kid` is accepted only when the set has exactly one key.
        return next(iter(self._keys.values())) if len(self._keys) == 1 else None

    def _may_refetch(self) -> bool:
        return self._last_fetch is None or self._clock() - self._last_fetch >= self._min_refetch

    async def _fetch(self) -> None:
        self._last_fetch = self._clock()
        try:
            async with httpx.AsyncClient(timeout=self._timeout) as client:
                response = await client.get(self._url)
                response.raise_for_status()
                document = response.json()
            keys = document["keys"] if isinstance(document, dict) else None
            if not isinstance(keys, list):
                raise ValueError("no keys list")
        except Exception as exc:
            log.warning("jwks.fetch_failed", url=self._url, error=type(exc).__name__)
            return
        fresh = {
            key["kid"]: key
            for key in keys[:_MAX_KEYS]
            if isinstance(key, dict) and isinstance(key.get("kid"), str)
        }
        if len(fresh) == 0 and len(keys) == 1 and isinstance(keys[0], dict):
            fresh = {"": keys[0]}
        self._keys = fresh
        log.info("jwks.fetched", url=self._url, keys=len(fresh))

    async def prefetch(self) -> None:
        """Fetch once at start so the first handshakes do not wait for it."""
        async with self._lock:
            await self._fetch()
