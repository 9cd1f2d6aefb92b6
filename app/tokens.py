"""Token verification: the only module that touches python-jose.

The verifier decides the algorithm (an allowlist from the settings, one key per algorithm family),
parses the compact form itself so that a malformed token is told apart from a bad signature, lets
python-jose check only the signature, and checks every claim itself with strict types. Every
failure is a :class:`TokenError` carrying exactly one contract code; nothing else escapes
:meth:`TokenVerifier.verify`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jose import jwk, jws
from jose.backends.base import Key

from app.claims import MAX_CLAIM_CHARS as _MAX_CLAIM_CHARS
from app.claims import MISSING, ClaimMapping, claim_at, is_name
from app.config import HMAC_ALGORITHMS, PUBLIC_KEY_ALGORITHMS, SUPPORTED_ALGORITHMS, Settings
from app.errors import Code

_B64URL = re.compile(rb"^[A-Za-z0-9_-]*$")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a verified token speaks for. Immutable: a refresh makes a new one."""

    sub: str
    roles: frozenset[str]
    tenant: str | None
    jti: str | None
    exp: float
    iat: float | None
    fingerprint: str


@dataclass(slots=True)
class TokenError(Exception):
    """A token was refused. ``code`` is the contract code; the rest is unverified log context."""

    code: Code
    detail: str
    claimed_sub: str | None = None
    jti: str | None = None
    fingerprint: str | None = None

    def __str__(self) -> str:
        return f"{self.code}: {self.detail}"


def fingerprint(token: str) -> str:
    """A short SHA-256 prefix that identifies a token in logs without revealing it."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _b64decode(segment: bytes) -> bytes:
    if not _B64URL.match(segment):
        raise ValueError("not base64url")
    try:
        return base64.urlsafe_b64decode(segment + b"=" * (-len(segment) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not base64url") from exc


def _json_object(raw: bytes) -> dict[str, Any]:
    def _no_constants(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    # Strict UTF-8 (RFC 7519 section 7.2), not json's guess among UTF-8/16/32.
    value = json.loads(raw.decode("utf-8"), parse_constant=_no_constants)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def _short(value: object) -> str | None:
    return value[:_MAX_CLAIM_CHARS] if isinstance(value, str) else None


def _is_number(value: object) -> bool:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float (10**400): not a usable date
        return False


# Every live connection keeps its principal's roles; the sets in use are few (a set and its
# strings cost a few hundred bytes per connection otherwise). Bounded: odd sets are not kept.
_ROLE_SETS: dict[frozenset[str], frozenset[str]] = {}
_MAX_ROLE_SETS = 1024


def _shared_roles(roles: frozenset[str]) -> frozenset[str]:
    shared = _ROLE_SETS.get(roles)
    if shared is not None:
        return shared
    if len(_ROLE_SETS) < _MAX_ROLE_SETS:
        _ROLE_SETS[roles] = roles
    return roles


@dataclass(slots=True)
class _Parsed:
    header: dict[str, Any]
    claims: dict[str, Any]
    fingerprint: str
    signing_input: bytes  # the first two segments, as signed
    signature: bytes

    def error(self, code: Code, detail: str) -> TokenError:
        return TokenError(
            code, detail, _short(self.claims.get("sub")), _short(self.claims.get("jti")),
            self.fingerprint,
        )


def parse(token: str, max_bytes: int) -> _Parsed:
    """Split and decode a compact JWS without verifying it. Raises TokenError(token_malformed)."""
    if len(token) > max_bytes:
        # Unparsed on purpose: nothing from an oversized token reaches a decoder or a log.
        raise TokenError(Code.TOKEN_MALFORMED, f"longer than {max_bytes} bytes")
    fp = fingerprint(token)
    # Fixed details only: an exception's own message could quote bytes of the token.
    if not token.isascii():
        raise TokenError(Code.TOKEN_MALFORMED, "not ASCII", fingerprint=fp)
    parts = token.encode("ascii").split(b".")
    # An empty third segment is an unsecured JWS (RFC 7515 appendix A.5): well formed, and refused
    # `token_invalid` by the algorithm allowlist (or by the signature check), not `token_malformed`.
    if len(parts) != 3:
        raise TokenError(Code.TOKEN_MALFORMED, "not three segments", fingerprint=fp)
    decoded: list[dict[str, Any]] = []
    for name, segment in (("header", parts[0]), ("payload", parts[1])):
        try:
            decoded.append(_json_object(_b64decode(segment)))
        except (ValueError, RecursionError):
            detail = f"{name} is not a base64url JSON object"
            raise TokenError(Code.TOKEN_MALFORMED, detail, fingerprint=fp) from None
    try:
        signature = _b64decode(parts[2])
    except ValueError:
        detail = "signature is not base64url"
        raise TokenError(Code.TOKEN_MALFORMED, detail, fingerprint=fp) from None
    header, claims = decoded
    return _Parsed(header, claims, fp, parts[0] + b"." + parts[1], signature)


_EC_CURVES = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}
_MIN_RSA_BITS = 2048


def _public_key(pem: bytes, alg: str) -> Key:
    """The key for ``alg`` from a PEM public key. Raises ValueError naming the variable.

    python-jose wraps any PEM it can load (an EC key for RS256, a certificate, a private key),
    so the type, curve and size are checked here, at start, rather than failing every token.
    """
    name = "HUB_JWT_PUBLIC_KEY_FILE"
    try:
        public = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ValueError(f"{name}: not a PEM public key (give the public key, not a private "
                         "key or a certificate)") from None
    if alg.startswith("RS"):
        fits = isinstance(public, rsa.RSAPublicKey) and public.key_size >= _MIN_RSA_BITS
    else:
        fits = (
            isinstance(public, ec.EllipticCurvePublicKey)
            and public.curve.name == _EC_CURVES[alg]
        )
    if not fits:
        raise ValueError(f"{name}: not a public key usable with {alg}")
    try:
        return jwk.construct(pem, alg)
    except Exception as exc:
        raise ValueError(f"{name}: not a public key usable with {alg}") from exc


KeyLookup = Callable[[str, str], Awaitable[Key | None]]
"""``(kid, alg) -> key``: a key set by identifier (JWKS), or None when it has no such key."""


@dataclass(slots=True)
class TokenVerifier:
    """Verifies access tokens against the configured keys and claims.

    :meth:`verify` returns a :class:`Principal` or raises :class:`TokenError`; it never raises
    anything else, whatever the input.
    """

    algorithms: frozenset[str]
    static_keys: Mapping[str, Key]
    issuer: str | None = None
    audience: str | None = None
    leeway: float = 0.0
    future_leeway: float = 30.0
    max_lifetime: float = 86400.0
    max_token_bytes: int = 8192
    key_lookup: KeyLookup | None = None
    claims: ClaimMapping = field(default_factory=ClaimMapping)
    clock: Callable[[], float] = field(default=time.time)

    @classmethod
    def from_settings(
        cls, settings: Settings, key_lookup: KeyLookup | None = None
    ) -> TokenVerifier:
        """Build keys once. Raises ValueError if a configured key does not fit its algorithm."""
        keys: dict[str, Key] = {}
        for alg in settings.jwt_algorithms:
            if alg in HMAC_ALGORITHMS and settings.jwt_secret is not None:
                keys[alg] = jwk.construct(settings.jwt_secret.get_secret_value().encode(), alg)
            elif alg in PUBLIC_KEY_ALGORITHMS and settings.jwt_public_key_file is not None:
                keys[alg] = _public_key(settings.jwt_public_key_file.read_bytes(), alg)
        return cls(
            algorithms=frozenset(settings.jwt_algorithms),
            static_keys=keys,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            leeway=float(settings.jwt_leeway_seconds),
            future_leeway=float(settings.jwt_future_leeway_seconds),
            max_lifetime=float(settings.max_token_lifetime_seconds),
            max_token_bytes=settings.max_token_bytes,
            key_lookup=key_lookup,
            claims=ClaimMapping(
                roles=tuple(settings.jwt_roles_claim.split(".")),
                role_map=settings.role_map,
                tenant=tuple(settings.jwt_tenant_claim.split(".")),
            ),
        )

    async def verify(self, token: str) -> Principal:
        parsed = parse(token, self.max_token_bytes)
        try:
            key = await self._key_for(parsed)
            # The key's own check, on the segments parsed above (jws.verify would parse the token
            # again): the key and its algorithm were chosen from the allowlist, as jws.verify
            # would, and any failure of the check is a bad signature, as there.
            try:
                good = key.verify(parsed.signing_input, parsed.signature)
            except Exception:
                good = False
            if not good:
                raise parsed.error(Code.TOKEN_INVALID, "signature verification failed")
            return self._principal(parsed)
        except TokenError:
            raise
        except Exception as exc:  # a library surprise is still a refusal, never a 500
            raise parsed.error(Code.TOKEN_INVALID, f"unexpected {type(exc).__name__}") from None

    async def _key_for(self, parsed: _Parsed) -> Key:
        alg = parsed.header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            # Name only a known spelling: the header is the sender's text, not ours to log.
            known = isinstance(alg, str) and (alg in SUPPORTED_ALGORITHMS or alg.lower() == "none")
            detail = f"algorithm {alg!r} not allowed" if known else "algorithm not allowed"
            raise parsed.error(Code.TOKEN_INVALID, detail)
        if "crit" in parsed.header:
            # RFC 7515 section 4.1.11: extensions we do not implement make the JWS invalid, and
            # python-jose implements none (it would ignore e.g. RFC 7797's unencoded payload).
            raise parsed.error(Code.TOKEN_INVALID, "critical header extensions not supported")
        kid = parsed.header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise parsed.error(Code.TOKEN_MALFORMED, "kid is not a string")
        if kid is not None and len(kid) > _MAX_CLAIM_CHARS:
            # Refused, not truncated: a cut `kid` could name another key of the set.
            raise parsed.error(Code.TOKEN_INVALID, "kid too long")
        if kid is not None and self.key_lookup is not None and alg in PUBLIC_KEY_ALGORITHMS:
            key = await self.key_lookup(kid, alg)
            if key is not None:
                return key
            if alg not in self.static_keys:
                raise parsed.error(Code.TOKEN_INVALID, "unknown key id")
        key = self.static_keys.get(alg)
        if key is None and self.key_lookup is not None and alg in PUBLIC_KEY_ALGORITHMS:
            key = await self.key_lookup("", alg)
        if key is None:
            raise parsed.error(Code.TOKEN_INVALID, "no key for this algorithm")
        return key

    def _principal(self, parsed: _Parsed) -> Principal:
        claims = parsed.claims
        bad = parsed.error
        sub = claims.get("sub")
        if not is_name(sub):
            raise bad(Code.CLAIMS_INVALID, "sub missing, or not printable text of at most 256 characters")
        for name in ("exp", "nbf", "iat"):
            if name in claims and not _is_number(claims[name]):
                raise bad(Code.CLAIMS_INVALID, f"{name} is not a number")
        if "exp" not in claims:
            raise bad(Code.CLAIMS_INVALID, "exp missing")
        roles = self.claims.roles_of(claims)
        if roles is None:
            raise bad(Code.CLAIMS_INVALID, "roles missing or not a list of strings")
        roles = _shared_roles(roles)
        tenant = claim_at(claims, self.claims.tenant)
        if tenant is MISSING or tenant is None:
            tenant = None
        elif not is_name(tenant):
            raise bad(Code.CLAIMS_INVALID, "tenant is not printable text of 1 to 256 characters")
        jti = claims.get("jti")
        if jti is not None and (not isinstance(jti, str) or len(jti) > _MAX_CLAIM_CHARS):
            raise bad(Code.CLAIMS_INVALID, "jti is not a string")
        if self.issuer is not None and claims.get("iss") != self.issuer:
            raise bad(Code.CLAIMS_INVALID, "iss missing or wrong")
        if self.audience is not None:
            aud = claims.get("aud")
            auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
            if self.audience not in auds:
                raise bad(Code.CLAIMS_INVALID, "aud missing or wrong")
        now = self.clock()
        exp = float(claims["exp"])
        if now >= exp + self.leeway:
            raise bad(Code.TOKEN_EXPIRED, "exp passed")
        if exp > now + self.max_lifetime + self.future_leeway:
            # Revocations are kept for this long only: a longer-lived token would outlive them.
            raise bad(Code.CLAIMS_INVALID, "exp further ahead than the longest token lifetime allowed")
        for name in ("nbf", "iat"):
            if name in claims and float(claims[name]) > now + self.future_leeway:
                raise bad(Code.TOKEN_NOT_YET_VALID, f"{name} in the future")
        iat = claims.get("iat")
        return Principal(
            sub=sub,
            roles=roles,
            tenant=tenant,
            jti=jti,
            exp=exp,
            iat=float(iat) if iat is not None else None,
            fingerprint=parsed.fingerprint,
        )


def mint(
    key: str | bytes,
    algorithm: str,
    sub: str,
    roles: list[str],
    ttl: float,
    *,
    tenant: str | None = None,
    issuer: str | None = None,
    audience: str | None = None,
    jti: str | None = None,
    kid: str | None = None,
    now: float | None = None,
) -> str:
    """Sign an access token (development and operations: ``hubctl token``, tests, benchmarks)."""
    issued = time.time() if now is None else now
    claims: dict[str, Any] = {
        "sub": sub,
        "roles": roles,
        "iat": int(issued),
        "exp": int(issued + ttl),
        "jti": jti or uuid.uuid4().hex,
    }
    if tenant is not None:
        claims["tenant"] = tenant
    if issuer is not None:
        claims["iss"] = issuer
    if audience is not None:
        claims["aud"] = audience
    headers = {"kid": kid} if kid else None
    return str(jws.sign(json.dumps(claims).encode(), key, headers=headers, algorithm=algorithm))
