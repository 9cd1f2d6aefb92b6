"""Settings: the ``HUB_`` environment variables of the contract, validated once at start.

A bad setting is refused with one line naming the variable (see :func:`load_settings`).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    AwareDatetime,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.engine._redis_client import parse_redis_url

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
# No PS*: python-jose 3.5 cannot verify RSASSA-PSS, so accepting them here would only fail later.
PUBLIC_KEY_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "ES256", "ES384", "ES512"})
SUPPORTED_ALGORITHMS = HMAC_ALGORITHMS | PUBLIC_KEY_ALGORITHMS
MIN_HMAC_SECRET_BYTES = 32
# A production secret with fewer distinct bytes than this is not random (a hex secret has 16).
MIN_HMAC_SECRET_DISTINCT_BYTES = 10
HUB_ROLES = frozenset({"agent", "dashboard", "operator", "admin"})
DISCOVER = "discover"
REPORT_ONLY_ENDPOINTS = frozenset({"agent", "dashboard"})
_CLAIM_PATH = r"^[A-Za-z0-9_:/-]+(\.[A-Za-z0-9_:/-]+)*$"


def _split(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


def parse_networks(items: list[str]) -> list[IPNetwork]:
    """Parse IPs and CIDRs; a bare address is a /32 or /128. Raises ValueError naming the item."""
    networks: list[IPNetwork] = []
    for item in items:
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or CIDR") from None
    return networks


def parse_role_map(items: list[str]) -> dict[str, frozenset[str]]:
    """``provider_value=hub_role`` pairs; one provider value may map to several hub roles.
    Raises ValueError naming the item."""
    mapping: dict[str, set[str]] = {}
    for item in items:
        value, sep, role = item.rpartition("=")
        value, role = value.strip(), role.strip()
        if not sep or not value or role not in HUB_ROLES:
            raise ValueError(f"{item!r} is not provider_value=hub_role (hub roles: "
                             f"{', '.join(sorted(HUB_ROLES))})")
        mapping.setdefault(value, set()).add(role)
    return {value: frozenset(roles) for value, roles in mapping.items()}


def _is_exact_origin(origin: str) -> bool:
    """scheme://host[:port] and nothing else: no wildcard, path, query, user or stray spaces."""
    if "*" in origin or any(c.isspace() for c in origin):
        return False
    try:
        parts = urlsplit(origin)
        _ = parts.port  # raises on a port that is not a number in range
    except ValueError:
        return False
    return (
        parts.scheme in ("http", "https")
        and bool(parts.hostname)
        and "@" not in parts.netloc
        and not parts.netloc.endswith(":")
        and not (parts.path or parts.query or parts.fragment)
        and origin == f"{parts.scheme}://{parts.netloc}"
    )


CommaList = Annotated[list[str], NoDecode]


class Settings(BaseSettings):
    """Every setting of the hub. Build it once (``load_settings``) and pass it explicitly."""

    model_config = SettingsConfigDict(
        env_prefix="HUB_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    env: Literal["development", "production"] = "development"

    jwt_algorithms: CommaList = Field(default_factory=lambda: ["HS256"])
    jwt_secret: SecretStr | None = None
    jwt_public_key_file: Path | None = None
    jwt_jwks_url: str | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_leeway_seconds: int = Field(default=0, ge=0, le=300)
    jwt_future_leeway_seconds: int = Field(default=30, ge=0, le=300)
    jwt_roles_claim: str = Field(default="roles", max_length=256, pattern=_CLAIM_PATH)
    jwt_role_map: CommaList = Field(default_factory=list)
    jwt_tenant_claim: str = Field(default="tenant", max_length=256, pattern=_CLAIM_PATH)
    jwks_max_age_seconds: float = Field(default=300.0, gt=0, le=86400)
    jwks_min_refresh_seconds: float = Field(default=5.0, ge=0, le=3600)
    max_token_lifetime_seconds: int = Field(default=86400, ge=60, le=366 * 86400)

    redis_url: str | None = None
    redis_prefix: str = Field(default="hub", pattern=r"^[A-Za-z0-9_.:-]{1,32}$")
    database_url: str = "sqlite+aiosqlite:///./var/hub.db"

    max_connections_per_user: int = Field(default=10, ge=1, le=10_000)
    connect_rate_per_user: int = Field(default=30, ge=1)
    connect_rate_per_ip: int = Field(default=120, ge=1)
    auth_failures_before_ban: int = Field(default=20, ge=1)
    auth_failure_window_seconds: int = Field(default=60, ge=1)
    auth_failure_ban_seconds: int = Field(default=600, ge=1)

    allowed_origins: CommaList = Field(default_factory=list)
    banned_cidrs: CommaList = Field(default_factory=list)
    trusted_proxies: CommaList = Field(default_factory=list)
    ipv6_prefix_length: int = Field(default=64, ge=1, le=128)
    handshake_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    allow_query_token: bool = True
    # Report-only rollout (issue 14): endpoints where token and role refusals are reported, not
    # enforced, until the instant below (then every endpoint enforces again, without a restart).
    auth_report_only: CommaList = Field(default_factory=list)
    auth_report_only_until: AwareDatetime | None = None

    refresh_warning_seconds: int = Field(default=60, ge=0)
    connection_lease_seconds: int = Field(default=30, ge=3, le=3600)
    max_message_bytes: int = Field(default=65536, ge=256, le=16 * 1024 * 1024)
    max_token_bytes: int = Field(default=8192, ge=128, le=8192)
    message_rate_per_second: float = Field(default=20.0, gt=0)
    message_burst: int = Field(default=40, ge=1)
    send_queue_size: int = Field(default=256, ge=1)
    ping_interval_seconds: float = Field(default=20.0, gt=0)
    ping_timeout_seconds: float = Field(default=20.0, gt=0)
    command_ttl_seconds: int = Field(default=60, ge=1)
    # Missed events, recovered on reconnect: per agent, at most this many, no older than this.
    event_history_size: int = Field(default=100, ge=0, le=10_000)
    event_history_seconds: int = Field(default=300, ge=1, le=86_400)
    revocation_ttl_seconds: int = Field(default=7 * 86400, ge=60)
    security_event_retention_days: float = Field(default=30.0, gt=0)
    shutdown_grace_seconds: float = Field(default=10.0, ge=0)

    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    workers: int = Field(default=1, ge=1, le=256)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"

    @field_validator("jwt_algorithms", "allowed_origins", "banned_cidrs", "trusted_proxies",
                     "jwt_role_map", "auth_report_only", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        return _split(value)

    @field_validator("jwt_algorithms")
    @classmethod
    def _known_algorithms(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one algorithm is needed")
        for alg in value:
            if alg not in SUPPORTED_ALGORITHMS:
                supported = ", ".join(sorted(SUPPORTED_ALGORITHMS))
                raise ValueError(f"unknown algorithm {alg!r} (supported: {supported})")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value:
            # The engine's own parser: every form it accepts starts, every other one stops here.
            try:
                parse_redis_url(value)
            except ValueError as exc:
                raise ValueError(str(exc).removeprefix("HUB_REDIS_URL ")) from None
        return value

    @field_validator("banned_cidrs", "trusted_proxies")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        parse_networks(value)
        return value

    @field_validator("auth_report_only")
    @classmethod
    def _report_only_endpoints(cls, value: list[str]) -> list[str]:
        for item in value:
            if item not in REPORT_ONLY_ENDPOINTS:
                raise ValueError(f"{item!r} is not an endpoint (agent, dashboard)")
        return sorted(set(value))

    @field_validator("jwt_role_map")
    @classmethod
    def _role_map(cls, value: list[str]) -> list[str]:
        parse_role_map(value)
        return value

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        origins = []
        for item in value:
            origin = item.rstrip("/").lower()  # browsers send the scheme and host in lower case
            if not _is_exact_origin(origin):
                raise ValueError(f"{item!r} is not an exact origin like https://host[:port]")
            origins.append(origin)
        return origins

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        algs = set(self.jwt_algorithms)
        if algs & HMAC_ALGORITHMS:
            secret = self.jwt_secret.get_secret_value().encode() if self.jwt_secret else b""
            if not secret:
                raise _named("jwt_secret", "an HS* algorithm is enabled but no secret is set")
            if self.env == "production" and len(secret) < MIN_HMAC_SECRET_BYTES:
                raise _named(
                    "jwt_secret", f"must be at least {MIN_HMAC_SECRET_BYTES} bytes in production"
                )
            if self.env == "production" and len(set(secret.strip())) < MIN_HMAC_SECRET_DISTINCT_BYTES:
                raise _named("jwt_secret", "is not random (too few distinct bytes); generate one "
                             "with `python3 -c 'import secrets; print(secrets.token_hex(32))'`")
        if algs & PUBLIC_KEY_ALGORITHMS and not (self.jwt_public_key_file or self.jwt_jwks_url):
            raise _named(
                "jwt_public_key_file",
                "a public-key algorithm is enabled but neither HUB_JWT_PUBLIC_KEY_FILE nor "
                "HUB_JWT_JWKS_URL is set",
            )
        if self.jwt_jwks_url == DISCOVER:
            if not self.jwt_issuer:
                raise _named("jwt_jwks_url", "`discover` needs HUB_JWT_ISSUER (the issuer to ask)")
            if not self._fetchable(self.jwt_issuer):
                raise _named("jwt_issuer", "must be https:// to discover its keys (http:// in "
                             "development only)")
        elif self.jwt_jwks_url is not None and not self._fetchable(self.jwt_jwks_url):
            # Keys fetched over plain HTTP can be swapped by anyone on the path.
            raise _named("jwt_jwks_url", "must be https:// or `discover` (http:// in development only)")
        if self.revocation_ttl_seconds < self.max_token_lifetime_seconds + self.jwt_leeway_seconds:
            # A revocation must outlive every token it covers, or a revoked token comes back.
            raise _named("revocation_ttl_seconds", "must be at least HUB_MAX_TOKEN_LIFETIME_SECONDS "
                         "plus HUB_JWT_LEEWAY_SECONDS, or revoked tokens would be accepted again")
        if self.jwt_public_key_file and not self.jwt_public_key_file.is_file():
            raise _named(
                "jwt_public_key_file", f"{self.jwt_public_key_file} is not a readable file"
            )
        if self.workers > 1 and not self.redis_url:
            raise _named(
                "workers",
                "the embedded engine cannot enforce limits across processes; set HUB_REDIS_URL "
                "to run more than one worker",
            )
        if self.auth_report_only and self.auth_report_only_until is None:
            # Report-only without an end is an unauthenticated hub that nobody remembers to fix.
            raise _named("auth_report_only_until", "is required with HUB_AUTH_REPORT_ONLY: the "
                         "instant (ISO 8601 UTC) when enforcement resumes")
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            raise _named("ssl_certfile", "HUB_SSL_CERTFILE and HUB_SSL_KEYFILE go together")
        return self

    def _fetchable(self, url: str) -> bool:
        scheme = urlsplit(url).scheme
        return scheme == "https" or (self.env == "development" and scheme == "http")

    @property
    def role_map(self) -> dict[str, frozenset[str]]:
        return parse_role_map(self.jwt_role_map)

    @property
    def banned_networks(self) -> list[IPNetwork]:
        return parse_networks(self.banned_cidrs)

    @property
    def trusted_networks(self) -> list[IPNetwork]:
        return parse_networks(self.trusted_proxies)

    @property
    def report_only_until_ts(self) -> float | None:
        """``HUB_AUTH_REPORT_ONLY_UNTIL`` in Unix seconds; None without report-only endpoints."""
        if not self.auth_report_only or self.auth_report_only_until is None:
            return None
        return self.auth_report_only_until.timestamp()

    @property
    def engine_name(self) -> str:
        return "redis" if self.redis_url else "embedded"


class SettingsError(Exception):
    """A setting is wrong; ``str()`` is one line naming the variable."""


class _NamedError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _named(field: str, message: str) -> _NamedError:
    return _NamedError(field, message)


def load_settings(**overrides: object) -> Settings:
    """Build the settings from the environment (and ``.env``), or raise SettingsError."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        err = exc.errors()[0]
        ctx_error = (err.get("ctx") or {}).get("error")
        if isinstance(ctx_error, _NamedError):
            field, message = ctx_error.field, str(ctx_error)
        else:
            field = str(err["loc"][0]) if err["loc"] else "settings"
            message = err["msg"].removeprefix("Value error, ")
        raise SettingsError(f"HUB_{field.upper()}: {message}") from None
