"""Public keys from an identity provider: a JWKS key set kept as a cache with a bounded age.

Guarantees of :class:`JwksKeys`:

* **Removed keys stop working.** The set is re-fetched once it is older than ``max_age_seconds``
  (or the provider's shorter ``Cache-Control: max-age``), in the background and, should that
  be late, by the first lookup after the deadline, which waits for it. A key the provider removed
  is refused at the latest on its first use after that age.
* **New keys work on first use.** A ``kid`` not in the set makes the lookup re-fetch at once and
  wait for it (bounded by ``timeout``), so a token signed with a key the provider has just
  published is accepted. One fetch at a time (concurrent lookups share it), and at most one per
  ``min_refresh_seconds``: random ``kid`` values cannot hammer the provider.
* **A failed fetch changes nothing.** The last good set stays in use (its age notwithstanding);
  the failure is logged (``jwks.fetch_failed``) and counted (``hub_jwks_fetches_total``).
* **Discovery.** Given an issuer instead of a URL, the ``jwks_uri`` comes from the issuer's OpenID
  Connect discovery document, whose ``issuer`` must equal the configured one exactly (OpenID
  Connect Discovery 1.0, section 4.3).

:meth:`JwksKeys.lookup` never raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
from jose import jwk
from jose.backends.base import Key

from app import metrics
from app.config import DISCOVER, Settings
from app.logs import get_logger

log = get_logger("app.jwks")

_KTY = {"RS": "RSA", "ES": "EC"}
_CRV = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}  # RFC 7518 section 3.4
_MAX_KEYS = 64
_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*(\d{1,9})\s*(?:,|$)", re.IGNORECASE)
DISCOVERY_PATH = "/.well-known/openid-configuration"


class JwksError(Exception):
    """A fetch failed; ``str()`` is a short reason for the log (never a response body)."""


class JwksKeys:
    """A cached key set. Call :meth:`lookup` as the verifier's ``key_lookup``; run :meth:`refresher`
    as a background task to keep the set fresh without making handshakes wait."""

    def __init__(
        self,
        url: str | None = None,
        *,
        issuer: str | None = None,
        max_age_seconds: float = 300.0,
        min_refresh_seconds: float = 5.0,
        timeout: float = 3.0,
        allow_http: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if (url is None) == (issuer is None):
            raise ValueError("give a JWKS URL or an issuer to discover it from")
        self._url = url
        self._issuer = issuer
        self._max_age = max_age_seconds
        self._min_refresh = min_refresh_seconds
        self._timeout = timeout
        self._allow_http = allow_http
        self._clock = clock
        self._keys: dict[str, dict[str, Any]] = {}
        self._expires: float | None = None  # when the current set must be fetched again
        self._last_attempt: float | None = None
        self._lock = asyncio.Lock()

    # -- lookups -----------------------------------------------------------------------------

    async def lookup(self, kid: str, alg: str) -> Key | None:
        """The key for ``kid`` usable with ``alg``, or None. Never raises."""
        if self._stale():
            await self._refresh(force=False)
        entry = self._find(kid)
        # Wait for a fetch already in flight too: it may be the one that brings this key.
        if entry is None and (self._lock.locked() or self._may_attempt()):
            await self._refresh(force=True)
            entry = self._find(kid)
        return _usable(entry, alg) if entry is not None else None

    def _find(self, kid: str) -> dict[str, Any] | None:
        if kid:
            return self._keys.get(kid)
        # A token without `kid` is accepted only when the set has exactly one key.
        return next(iter(self._keys.values())) if len(self._keys) == 1 else None

    def _stale(self) -> bool:
        return self._expires is None or self._clock() >= self._expires

    def _may_attempt(self) -> bool:
        return self._last_attempt is None or self._clock() - self._last_attempt >= self._min_refresh

    # -- fetching ----------------------------------------------------------------------------

    async def _refresh(self, *, force: bool) -> None:
        """One fetch at a time; the others wait for it and use its result."""
        async with self._lock:
            if not self._may_attempt() or not (force or self._stale()):
                return
            self._last_attempt = self._clock()
            try:
                async with asyncio.timeout(self._timeout * 2):
                    keys, max_age = await self._fetch()
            except (JwksError, TimeoutError) as exc:
                metrics.JWKS_FETCHES.labels("error").inc()
                log.warning("jwks.fetch_failed", error=str(exc) or type(exc).__name__,
                            keys_in_use=len(self._keys))
                return
            metrics.JWKS_FETCHES.labels("ok").inc()
            added, removed = sorted(keys.keys() - self._keys.keys()), sorted(self._keys.keys() - keys.keys())
            if added or removed:
                log.info("jwks.keys_changed", added=added[:16], removed=removed[:16], keys=len(keys))
            self._keys = keys
            self._expires = self._last_attempt + max(self._min_refresh, min(self._max_age, max_age))

    async def _fetch(self) -> tuple[dict[str, dict[str, Any]], float]:
        async with httpx.AsyncClient(timeout=self._timeout, follow_redirects=False) as client:
            url = self._url or await self._discover(client)
            response = await self._get(client, url)
        try:
            document = response.json()
        except ValueError:
            raise JwksError("the key set is not JSON") from None
        keys = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(keys, list):
            raise JwksError("the key set has no keys list")
        fresh = {key["kid"]: key for key in keys[:_MAX_KEYS]
                 if isinstance(key, dict) and isinstance(key.get("kid"), str)}
        if not fresh and len(keys) == 1 and isinstance(keys[0], dict):
            fresh = {"": keys[0]}
        return fresh, _cache_max_age(response.headers.get("cache-control", ""), self._max_age)

    async def _discover(self, client: httpx.AsyncClient) -> str:
        assert self._issuer is not None
        response = await self._get(client, self._issuer.rstrip("/") + DISCOVERY_PATH)
        try:
            document = response.json()
        except ValueError:
            raise JwksError("the discovery document is not JSON") from None
        if not isinstance(document, dict) or document.get("issuer") != self._issuer:
            raise JwksError("the discovery document names another issuer")
        uri = document.get("jwks_uri")
        if not isinstance(uri, str) or not self._scheme_ok(uri):
            raise JwksError("the discovery document has no usable jwks_uri")
        return uri

    def _scheme_ok(self, url: str) -> bool:
        scheme = urlsplit(url).scheme
        return scheme == "https" or (self._allow_http and scheme == "http")

    async def _get(self, client: httpx.AsyncClient, url: str) -> httpx.Response:
        try:
            response = await client.get(url, headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise JwksError(f"{type(exc).__name__} from {_origin(url)}") from None
        if response.status_code != 200:
            raise JwksError(f"HTTP {response.status_code} from {_origin(url)}")
        return response

    async def prefetch(self) -> None:
        """Fetch once at start so the first handshakes do not wait for it."""
        await self._refresh(force=True)

    async def refresher(self) -> None:
        """Run forever: fetch again whenever the set reaches its age (a failed fetch is retried
        every ``min_refresh_seconds``). Cancel to stop."""
        while True:
            delay = self._min_refresh if self._expires is None else self._expires - self._clock()
            await asyncio.sleep(max(self._min_refresh, delay, 0.05))
            with contextlib.suppress(Exception):  # _refresh logs its own failures
                await self._refresh(force=False)


def jwks_from_settings(settings: Settings) -> JwksKeys | None:
    """The key set the settings name (``HUB_JWT_JWKS_URL``, a URL or ``discover``), or None."""
    if settings.jwt_jwks_url is None:
        return None
    url = None if settings.jwt_jwks_url == DISCOVER else settings.jwt_jwks_url
    return JwksKeys(
        url,
        issuer=settings.jwt_issuer if url is None else None,
        max_age_seconds=settings.jwks_max_age_seconds,
        min_refresh_seconds=settings.jwks_min_refresh_seconds,
        allow_http=settings.env == "development",
    )


def _usable(entry: dict[str, Any], alg: str) -> Key | None:
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


def _cache_max_age(cache_control: str, default: float) -> float:
    """The provider's ``max-age`` (``no-store``/``no-cache`` count as 0), else ``default``."""
    lowered = cache_control.lower()
    if "no-store" in lowered or "no-cache" in lowered:
        return 0.0
    match = _MAX_AGE.search(lowered)
    return float(match.group(1)) if match else default


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}"
