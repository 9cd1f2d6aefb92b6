"""Settings: every bad setting is refused with one line naming the variable."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from app.config import Settings, SettingsError, load_settings
from tests.conftest import SECRET
from tests.support.cli import run_cli

ROOT = Path(__file__).resolve().parents[1]
SHORT_SECRET = "short-secret-31-bytes-long-xxxx"
assert len(SHORT_SECRET) == 31


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No HUB_ variable from the outside, and a cwd without a .env file."""
    for name in list(os.environ):
        if name.startswith("HUB_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "key.pem"
    path.write_text("-----BEGIN PUBLIC KEY-----\n...\n-----END PUBLIC KEY-----\n")
    return path


Env = Callable[..., Settings]


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> Env:
    """Set HUB_ variables (given without the prefix) and load the settings from them."""

    def load(**variables: str) -> Settings:
        for name, value in variables.items():
            monkeypatch.setenv(f"HUB_{name.upper()}", value)
        return load_settings()

    return load


@pytest.fixture
def refused(env: Env) -> Callable[..., str]:
    def check(variable: str, **variables: str) -> str:
        with pytest.raises(SettingsError) as info:
            env(**variables)
        message = str(info.value)
        assert message.startswith(f"{variable}: "), message
        assert "\n" not in message and "\r" not in message
        assert len(message) < 300
        assert info.value.__cause__ is None  # raised "from None": no chained pydantic dump
        return message

    return check


# --------------------------------------------------------------------------------------------
# Algorithms and keys


@pytest.mark.parametrize(
    "algorithms",
    ["FOO", "none", "None", "HS256,none", "hs256", "HS256,FOO", "PS256", "EdDSA", "HS1", "*", ","],
)
def test_unknown_algorithm(refused: Callable[..., str], algorithms: str) -> None:
    message = refused("HUB_JWT_ALGORITHMS", jwt_algorithms=algorithms, jwt_secret=SECRET)
    assert "algorithm" in message


def test_algorithms_parse_from_a_comma_list(env: Env, key_file: Path) -> None:
    settings = env(
        jwt_algorithms="HS256, RS256", jwt_secret=SECRET, jwt_public_key_file=str(key_file)
    )
    assert settings.jwt_algorithms == ["HS256", "RS256"]
    settings = env(jwt_algorithms=" ES256 ,, RS512 , ", jwt_secret=SECRET)
    assert settings.jwt_algorithms == ["ES256", "RS512"]


def test_default_algorithm_is_hs256(env: Env) -> None:
    assert env(jwt_secret=SECRET).jwt_algorithms == ["HS256"]


def test_hmac_algorithm_needs_a_secret(refused: Callable[..., str]) -> None:
    refused("HUB_JWT_SECRET")
    refused("HUB_JWT_SECRET", jwt_algorithms="HS512")
    refused("HUB_JWT_SECRET", jwt_secret="")


def test_short_secret_refused_in_production_only(
    refused: Callable[..., str], env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    message = refused("HUB_JWT_SECRET", env="production", jwt_secret=SHORT_SECRET)
    assert SHORT_SECRET not in message
    assert "32" in message
    assert env(env="development", jwt_secret=SHORT_SECRET).env == "development"
    monkeypatch.delenv("HUB_ENV")
    assert env(jwt_secret="x").jwt_secret is not None  # development is the default
    assert env(env="production", jwt_secret="0123456789abcdef" * 2).env == "production"


def test_secret_length_counts_bytes(env: Env, refused: Callable[..., str]) -> None:
    sixteen = "éàüöçñßøåæëïîôûù"  # 32 UTF-8 bytes
    assert env(env="production", jwt_secret=sixteen).env == "production"
    refused("HUB_JWT_SECRET", env="production", jwt_secret=sixteen[:15] + "x")


@pytest.mark.parametrize("secret", [" " * 32, "s" * 64, "ab" * 32, "\t\n " * 20, "password" * 4])
def test_secret_that_is_not_random_is_refused_in_production(
    env: Env, refused: Callable[..., str], secret: str
) -> None:
    message = refused("HUB_JWT_SECRET", env="production", jwt_secret=secret)
    assert "not random" in message
    assert env(env="development", jwt_secret=secret).env == "development"


def test_secret_is_not_revealed(env: Env) -> None:
    settings = env(jwt_secret=SECRET)
    assert SECRET not in repr(settings)
    assert SECRET not in str(settings)


def test_public_key_algorithm_needs_a_key_file_or_jwks_url(
    refused: Callable[..., str], env: Env, key_file: Path
) -> None:
    message = refused("HUB_JWT_PUBLIC_KEY_FILE", jwt_algorithms="RS256")
    assert "HUB_JWT_JWKS_URL" in message
    refused("HUB_JWT_PUBLIC_KEY_FILE", jwt_algorithms="HS256,ES256", jwt_secret=SECRET)
    with_file = env(jwt_algorithms="RS256", jwt_public_key_file=str(key_file))
    assert with_file.jwt_algorithms == ["RS256"]


def test_public_key_file_must_exist(refused: Callable[..., str], tmp_path: Path) -> None:
    refused(
        "HUB_JWT_PUBLIC_KEY_FILE",
        jwt_algorithms="RS256",
        jwt_public_key_file=str(tmp_path / "missing.pem"),
    )
    refused("HUB_JWT_PUBLIC_KEY_FILE", jwt_algorithms="RS256", jwt_public_key_file=str(tmp_path))


def test_jwks_url(refused: Callable[..., str], env: Env) -> None:
    ok = env(jwt_algorithms="RS256", jwt_jwks_url="https://idp.example/.well-known/jwks.json")
    assert ok.jwt_jwks_url == "https://idp.example/.well-known/jwks.json"
    assert env(jwt_jwks_url="http://127.0.0.1:8080/jwks", env="development").jwt_jwks_url
    refused(
        "HUB_JWT_JWKS_URL",
        jwt_algorithms="RS256",
        jwt_jwks_url="http://idp.example/jwks",
        env="production",
    )
    for url in ("file:///etc/passwd", "idp.example/jwks", "ftp://idp.example/jwks"):
        refused("HUB_JWT_JWKS_URL", jwt_algorithms="RS256", jwt_jwks_url=url, env="development")


@pytest.mark.parametrize("leeway", ["-1", "301", "ten", "1.5"])
def test_leeway_range(refused: Callable[..., str], leeway: str) -> None:
    refused("HUB_JWT_LEEWAY_SECONDS", jwt_secret=SECRET, jwt_leeway_seconds=leeway)


@pytest.mark.parametrize("size", ["8193", "127", "0", "-5", "big"])
def test_max_token_bytes_range(refused: Callable[..., str], size: str) -> None:
    refused("HUB_MAX_TOKEN_BYTES", jwt_secret=SECRET, max_token_bytes=size)


# --------------------------------------------------------------------------------------------
# Networks


BAD_CIDRS = [
    "10.0.0.0/33",
    "300.1.1.1",
    "10.0.0",
    "nope",
    "10.0.0.0/8,nope",
    "::1/129",
    "10.0.0.0/-1",
    "10.0.0.0/8/8",
    "010.0.0.1",
    "fe80::1%eth0/64x",
    "*",
]


@pytest.mark.parametrize("value", BAD_CIDRS)
def test_malformed_banned_cidrs(refused: Callable[..., str], value: str) -> None:
    refused("HUB_BANNED_CIDRS", jwt_secret=SECRET, banned_cidrs=value)


@pytest.mark.parametrize("value", BAD_CIDRS)
def test_malformed_trusted_proxies(refused: Callable[..., str], value: str) -> None:
    refused("HUB_TRUSTED_PROXIES", jwt_secret=SECRET, trusted_proxies=value)


def test_networks_parse_from_comma_lists(env: Env) -> None:
    settings = env(
        jwt_secret=SECRET,
        banned_cidrs="10.0.0.0/8, 192.168.1.7 ,2001:db8::/32,",
        trusted_proxies="127.0.0.1,::1, 172.16.0.0/12",
    )
    assert settings.banned_networks == [
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("192.168.1.7/32"),
        ipaddress.ip_network("2001:db8::/32"),
    ]
    assert settings.trusted_networks == [
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("::1/128"),
        ipaddress.ip_network("172.16.0.0/12"),
    ]
    empty = env(banned_cidrs="", trusted_proxies=" , ")
    assert empty.banned_networks == []
    assert empty.trusted_networks == []


# --------------------------------------------------------------------------------------------
# Workers and origins


def test_workers_need_redis(refused: Callable[..., str], env: Env) -> None:
    message = refused("HUB_WORKERS", jwt_secret=SECRET, workers="2")
    assert "HUB_REDIS_URL" in message
    settings = env(redis_url="redis://127.0.0.1:6379/0")
    assert settings.workers == 2
    assert settings.engine_name == "redis"


def test_workers_override_is_checked_too(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUB_JWT_SECRET", SECRET)
    with pytest.raises(SettingsError, match=r"^HUB_WORKERS: "):
        load_settings(workers=4)
    assert load_settings(workers=1).engine_name == "embedded"


@pytest.mark.parametrize(
    "origins",
    [
        "*",
        "https://*.example.com",
        "https://example.*",
        "https://app.example.com,*",
        "null",
        "app.example.com",
        "//app.example.com",
        "ws://app.example.com",
        "https://app.example.com/path",
        "https://app.example.com?x=1",
        "https://app.example.com#frag",
        "https://user@app.example.com",
        "https://app.example.com:99999",
        "https://app.example.com:port",
        "https://",
    ],
)
def test_origins_must_be_exact(refused: Callable[..., str], origins: str) -> None:
    refused("HUB_ALLOWED_ORIGINS", jwt_secret=SECRET, allowed_origins=origins)


def test_origins_parse_from_a_comma_list(env: Env) -> None:
    settings = env(
        jwt_secret=SECRET,
        allowed_origins="https://app.example.com, http://localhost:3000/ ,HTTPS://Admin.Example.com",
    )
    assert settings.allowed_origins == [
        "https://app.example.com",
        "http://localhost:3000",
        "https://admin.example.com",
    ]
    assert env(allowed_origins="").allowed_origins == []


# --------------------------------------------------------------------------------------------
# Other variables, .env and the one-line rule


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("HUB_ENV", "prod"),
        ("HUB_PORT", "70000"),
        ("HUB_WORKERS", "0"),
        ("HUB_LOG_LEVEL", "verbose"),
        ("HUB_MAX_MESSAGE_BYTES", "1"),
        ("HUB_REDIS_PREFIX", "has space"),
        ("HUB_ALLOW_QUERY_TOKEN", "maybe"),
        ("HUB_MAX_CONNECTIONS_PER_USER", "0"),
    ],
)
def test_other_bad_values_name_their_variable(
    refused: Callable[..., str], variable: str, value: str
) -> None:
    refused(variable, jwt_secret=SECRET, **{variable.removeprefix("HUB_").lower(): value})


def test_tls_files_go_together(refused: Callable[..., str], tmp_path: Path) -> None:
    refused("HUB_SSL_CERTFILE", jwt_secret=SECRET, ssl_certfile=str(tmp_path / "cert.pem"))


def test_dotenv_in_cwd_is_read(clean_env: Path) -> None:
    (clean_env / ".env").write_text(f"HUB_JWT_SECRET={SECRET}\nHUB_JWT_ALGORITHMS=HS256, HS512\n")
    assert load_settings().jwt_algorithms == ["HS256", "HS512"]
    (clean_env / ".env").write_text(f"HUB_JWT_SECRET={SECRET}\nHUB_BANNED_CIDRS=10.0.0.0/99\n")
    with pytest.raises(SettingsError, match=r"^HUB_BANNED_CIDRS: "):
        load_settings()


def test_environment_wins_over_dotenv(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (clean_env / ".env").write_text("HUB_JWT_SECRET=from-dotenv\nHUB_WORKERS=3\n")
    monkeypatch.setenv("HUB_JWT_SECRET", SECRET)
    monkeypatch.setenv("HUB_WORKERS", "1")
    settings = load_settings()
    assert settings.jwt_secret is not None
    assert settings.jwt_secret.get_secret_value() == SECRET
    assert settings.workers == 1


def test_defaults_are_valid(env: Env) -> None:
    settings = env(jwt_secret=SECRET)
    assert settings.env == "development"
    assert settings.allow_query_token is True
    assert settings.max_token_bytes == 8192
    assert settings.jwt_leeway_seconds == 0
    assert settings.allowed_origins == []
    assert settings.engine_name == "embedded"


# --------------------------------------------------------------------------------------------
# The command line


@pytest.mark.parametrize(
    ("variable", "variables", "args"),
    [
        ("HUB_JWT_ALGORITHMS", {"HUB_JWT_ALGORITHMS": "FOO"}, ()),
        ("HUB_JWT_ALGORITHMS", {"HUB_JWT_ALGORITHMS": "FOO", "HUB_JWT_SECRET": SECRET}, ()),
        ("HUB_WORKERS", {"HUB_JWT_SECRET": SECRET}, ("--workers", "2")),
        ("HUB_BANNED_CIDRS", {"HUB_JWT_SECRET": SECRET, "HUB_BANNED_CIDRS": "1.2.3.4/40"}, ()),
        ("HUB_JWT_SECRET", {"HUB_ENV": "production", "HUB_JWT_SECRET": SHORT_SECRET}, ()),
        ("HUB_REDIS_URL", {"HUB_JWT_SECRET": SECRET, "HUB_REDIS_URL": "memcached://127.0.0.1:11211"}, ()),
        ("HUB_REDIS_URL", {"HUB_JWT_SECRET": SECRET, "HUB_REDIS_URL": "127.0.0.1:6379"}, ()),
        ("HUB_REDIS_URL", {"HUB_JWT_SECRET": SECRET, "HUB_REDIS_URL": "redis://:pw@h:port/0"}, ()),
    ],
)
def test_serve_refuses_a_bad_setting_with_one_line(
    tmp_path: Path, variable: str, variables: dict[str, str], args: tuple[str, ...]
) -> None:
    result = run_cli(tmp_path, "serve", *args, **variables)
    assert result.returncode != 0
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert variable in lines[0]
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert SHORT_SECRET not in result.stderr
    assert SECRET not in result.stderr


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:6379", "127.0.0.1:6379", "redis://:hunter2@host:port/0", "unix:///tmp/r.sock"]
)
def test_redis_url_of_an_unknown_scheme_or_unparseable(refused: Callable[..., str], url: str) -> None:
    message = refused("HUB_REDIS_URL", redis_url=url, jwt_secret=SECRET)
    assert "hunter2" not in message


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/0", "rediss://user:pw@redis.internal:6380", "REDIS://h"])
def test_redis_urls_the_engine_takes(env: Env, url: str) -> None:
    assert env(redis_url=url, jwt_secret=SECRET).redis_url == url
