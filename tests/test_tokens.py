"""Unit tests of app.tokens: every refusal is a TokenError with exactly one contract code.

No server: verifiers are built from settings (or directly) and driven in-process. Tokens that
python-jose would refuse to produce (alg none, wrong claim types, HMAC keyed with a public key) are
built by hand with hmac and base64.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import hashlib
import hmac
import json
import os
import socket
import string
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jose import jwk, jws

from app.config import load_settings
from app.errors import Code
from app.tokens import Principal, TokenError, TokenVerifier, fingerprint, mint, parse
from tests.conftest import SECRET, make_token

NOW = 1_700_000_000.0
TOKEN_CODES = {
    Code.TOKEN_MALFORMED,
    Code.TOKEN_INVALID,
    Code.TOKEN_EXPIRED,
    Code.TOKEN_NOT_YET_VALID,
    Code.CLAIMS_INVALID,
}
MISSING = object()


# --------------------------------------------------------------------------------------------
# Helpers


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def segment(value: Any) -> str:
    """A JSON value as a base64url segment; a str or bytes is taken as the raw segment content."""
    if isinstance(value, bytes):
        return b64(value)
    if isinstance(value, str):
        return b64(value.encode("utf-8"))
    return b64(json.dumps(value, separators=(",", ":")).encode("utf-8"))


def hs_token(
    header: Any,
    claims: Any,
    key: bytes = SECRET.encode(),
    digest: Callable[..., Any] = hashlib.sha256,
) -> str:
    """A compact JWS HMAC-signed by hand (python-jose refuses PEM/DER keys and odd headers)."""
    signing_input = f"{segment(header)}.{segment(claims)}"
    signature = hmac.new(key, signing_input.encode("ascii"), digest).digest()
    return f"{signing_input}.{b64(signature)}"


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "sub": "agent-1",
        "roles": ["agent"],
        "iat": int(NOW) - 10,
        "exp": int(NOW) + 300,
        "jti": "jti-1",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not MISSING}


HS = {"alg": "HS256", "typ": "JWT"}


def good(**overrides: Any) -> str:
    return hs_token(HS, claims(**overrides))


def run(coro: Coroutine[Any, Any, Principal]) -> Principal:
    """Drive verify() without an event loop: with static keys it never suspends."""
    try:
        coro.send(None)
    except StopIteration as stop:
        result: Principal = stop.value
        return result
    coro.close()
    raise AssertionError("verify suspended with static keys")


async def refused(verifier: TokenVerifier, token: str, code: Code) -> TokenError:
    """verify() raises TokenError with exactly `code` (any other exception fails the test)."""
    with pytest.raises(TokenError) as info:
        await verifier.verify(token)
    err = info.value
    assert type(err) is TokenError
    assert err.code == code, f"{err.code} ({err.detail}) instead of {code}"
    assert_no_leak(err, token)
    return err


def assert_no_leak(err: TokenError, token: str) -> None:
    texts = [str(err), err.detail, err.fingerprint or ""]
    signature = token.rsplit(".", 1)[-1]
    for text in texts:
        if len(token) >= 40:
            assert token not in text
        if len(signature) >= 16:
            assert signature not in text


def pem_public(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def pem_private(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


# --------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No HUB_ variable and no .env from the outside world."""
    for name in list(os.environ):
        if name.startswith("HUB_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def at_now(verifier: TokenVerifier, now: float = NOW) -> TokenVerifier:
    return replace(verifier, clock=lambda: now)


@pytest.fixture
def build(clean_env: Path) -> Callable[..., TokenVerifier]:
    def make(**settings: Any) -> TokenVerifier:
        if "jwt_algorithms" not in settings or "HS" in str(settings["jwt_algorithms"]):
            settings.setdefault("jwt_secret", SECRET)
        return at_now(TokenVerifier.from_settings(load_settings(**settings)))

    return make


@pytest.fixture
def hs(build: Callable[..., TokenVerifier]) -> TokenVerifier:
    return build()


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def attacker_rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def rsa_file(clean_env: Path, rsa_key: rsa.RSAPrivateKey) -> Path:
    path = clean_env / "rsa.pub.pem"
    path.write_bytes(pem_public(rsa_key))
    return path


@pytest.fixture
def ec_file(clean_env: Path, ec_key: ec.EllipticCurvePrivateKey) -> Path:
    path = clean_env / "ec.pub.pem"
    path.write_bytes(pem_public(ec_key))
    return path


@pytest.fixture
def rs(build: Callable[..., TokenVerifier], rsa_file: Path) -> TokenVerifier:
    return build(jwt_algorithms="RS256", jwt_public_key_file=rsa_file)


@pytest.fixture
def no_io(monkeypatch: pytest.MonkeyPatch) -> Callable[[], Iterator[list[str]]]:
    """A context in which any file or network access is recorded (and fails)."""

    @contextlib.contextmanager
    def guard() -> Iterator[list[str]]:
        calls: list[str] = []

        def trap(name: str) -> Callable[..., Any]:
            def refuse(*args: Any, **kwargs: Any) -> Any:
                calls.append(f"{name}{args!r}")
                raise OSError(f"{name} during verify")

            return refuse

        with monkeypatch.context() as m:
            m.setattr(builtins, "open", trap("open"))
            m.setattr(os, "open", trap("os.open"))
            m.setattr(Path, "open", trap("Path.open"))
            m.setattr(Path, "read_bytes", trap("Path.read_bytes"))
            m.setattr(Path, "read_text", trap("Path.read_text"))
            m.setattr(socket, "create_connection", trap("create_connection"))
            m.setattr(socket, "getaddrinfo", trap("getaddrinfo"))
            m.setattr(socket.socket, "connect", trap("socket.connect"))
            yield calls

    return guard  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# Valid tokens


async def test_valid_hs256_token_gives_a_principal(hs: TokenVerifier) -> None:
    token = make_token("agent-7", ["agent", "operator"], tenant="acme", jti="j-7", now=NOW)
    principal = await hs.verify(token)
    assert principal.sub == "agent-7"
    assert principal.roles == frozenset({"agent", "operator"})
    assert principal.tenant == "acme"
    assert principal.jti == "j-7"
    assert principal.exp == int(NOW) + 300
    assert principal.iat == int(NOW)
    assert len(principal.fingerprint) == 16
    assert all(c in string.hexdigits.lower() for c in principal.fingerprint)
    assert principal.fingerprint == hashlib.sha256(token.encode()).hexdigest()[:16]
    assert principal.fingerprint not in token
    assert principal.fingerprint == fingerprint(token)


async def test_valid_token_with_real_clock() -> None:
    verifier = TokenVerifier.from_settings(load_settings(jwt_secret=SECRET))
    principal = await verifier.verify(make_token("agent-1"))
    assert principal.sub == "agent-1"
    assert principal.tenant is None


async def test_single_string_role_is_accepted(hs: TokenVerifier) -> None:
    principal = await hs.verify(good(roles=MISSING, role="dashboard"))
    assert principal.roles == frozenset({"dashboard"})


async def test_optional_claims_may_be_absent(hs: TokenVerifier) -> None:
    principal = await hs.verify(good(iat=MISSING, jti=MISSING))
    assert principal.jti is None
    assert principal.iat is None
    assert principal.tenant is None


async def test_float_dates_are_accepted(hs: TokenVerifier) -> None:
    principal = await hs.verify(good(exp=NOW + 0.5, iat=NOW - 0.5, nbf=NOW))
    assert principal.exp == NOW + 0.5


# --------------------------------------------------------------------------------------------
# Algorithms: none, not allowed, key confusion


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE", "HS256"])
async def test_unsecured_jws_with_empty_signature_is_invalid(hs: TokenVerifier, alg: str) -> None:
    # An unsecured JWS is well formed (RFC 7515 A.5): refused by the allowlist, not the parser.
    token = f"{segment({'alg': alg, 'typ': 'JWT'})}.{segment(claims())}."
    await refused(hs, token, Code.TOKEN_INVALID)


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
@pytest.mark.parametrize("signature", ["AAAA", "c2lnbmF0dXJl", "real-hmac"])
async def test_alg_none_with_a_signature_is_invalid(
    hs: TokenVerifier, alg: str, signature: str
) -> None:
    if signature == "real-hmac":
        token = hs_token({"alg": alg}, claims())
    else:
        token = f"{segment({'alg': alg})}.{segment(claims())}.{signature}"
    await refused(hs, token, Code.TOKEN_INVALID)


@pytest.mark.parametrize(
    "alg", [None, "", 5, ["HS256"], {"HS256": 1}, "hs256", "HS256 ", " HS256", "HS256\x00", "HS384",
            "HS512", "RS256", "ES256", "PS256", "EdDSA", MISSING],
)
async def test_algorithm_outside_the_allowlist_is_invalid(hs: TokenVerifier, alg: Any) -> None:
    header = {"typ": "JWT"} if alg is MISSING else {"alg": alg}
    digest = {"HS384": hashlib.sha384, "HS512": hashlib.sha512}.get(str(alg), hashlib.sha256)
    await refused(hs, hs_token(header, claims(), digest=digest), Code.TOKEN_INVALID)


async def test_rs256_valid_token(rs: TokenVerifier, rsa_key: rsa.RSAPrivateKey) -> None:
    token = mint(pem_private(rsa_key), "RS256", "agent-9", ["agent"], 300, now=NOW)
    principal = await rs.verify(token)
    assert principal.sub == "agent-9"


async def test_rs256_signed_by_another_key_is_invalid(
    rs: TokenVerifier, attacker_rsa: rsa.RSAPrivateKey
) -> None:
    token = mint(pem_private(attacker_rsa), "RS256", "agent-9", ["agent"], 300, now=NOW)
    await refused(rs, token, Code.TOKEN_INVALID)


def public_key_encodings(key: rsa.RSAPrivateKey) -> dict[str, bytes]:
    public = key.public_key()
    enc, fmt = serialization.Encoding, serialization.PublicFormat
    spki_pem = public.public_bytes(enc.PEM, fmt.SubjectPublicKeyInfo)
    return {
        "spki-pem": spki_pem,
        "spki-pem-no-newline": spki_pem.rstrip(b"\n"),
        "pkcs1-pem": public.public_bytes(enc.PEM, fmt.PKCS1),
        "spki-der": public.public_bytes(enc.DER, fmt.SubjectPublicKeyInfo),
        "pkcs1-der": public.public_bytes(enc.DER, fmt.PKCS1),
        "openssh": public.public_bytes(enc.OpenSSH, fmt.OpenSSH),
    }


ENCODINGS = ["spki-pem", "spki-pem-no-newline", "pkcs1-pem", "spki-der", "pkcs1-der", "openssh"]


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_hs256_keyed_with_the_rsa_public_key_is_invalid(
    rs: TokenVerifier, rsa_key: rsa.RSAPrivateKey, encoding: str
) -> None:
    key = public_key_encodings(rsa_key)[encoding]
    for header in (HS, {"alg": "HS256"}, {"alg": "HS256", "kid": "any"}):
        await refused(rs, hs_token(header, claims(), key=key), Code.TOKEN_INVALID)


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_key_confusion_fails_with_hs256_and_rs256_both_allowed(
    build: Callable[..., TokenVerifier], rsa_file: Path, rsa_key: rsa.RSAPrivateKey, encoding: str
) -> None:
    both = build(jwt_algorithms="HS256, RS256", jwt_public_key_file=rsa_file)
    key = public_key_encodings(rsa_key)[encoding]
    await refused(both, hs_token(HS, claims(), key=key), Code.TOKEN_INVALID)
    # ...while both families still verify with their own keys.
    assert (await both.verify(good())).sub == "agent-1"
    rs_token = mint(pem_private(rsa_key), "RS256", "agent-2", ["agent"], 300, now=NOW)
    assert (await both.verify(rs_token)).sub == "agent-2"


async def test_es256_valid_and_refused_when_only_rs256_allowed(
    build: Callable[..., TokenVerifier],
    ec_file: Path,
    rsa_file: Path,
    ec_key: ec.EllipticCurvePrivateKey,
) -> None:
    es = build(jwt_algorithms="ES256", jwt_public_key_file=ec_file)
    token = mint(pem_private(ec_key), "ES256", "agent-e", ["agent"], 300, now=NOW)
    assert (await es.verify(token)).sub == "agent-e"
    rs_only = build(jwt_algorithms="RS256", jwt_public_key_file=rsa_file)
    await refused(rs_only, token, Code.TOKEN_INVALID)


async def test_es256_signed_by_another_ec_key_is_invalid(
    build: Callable[..., TokenVerifier], ec_file: Path
) -> None:
    es = build(jwt_algorithms="ES256", jwt_public_key_file=ec_file)
    other = ec.generate_private_key(ec.SECP256R1())
    token = mint(pem_private(other), "ES256", "agent-e", ["agent"], 300, now=NOW)
    await refused(es, token, Code.TOKEN_INVALID)


async def test_rs256_token_against_an_hs256_only_verifier_is_invalid(
    hs: TokenVerifier, rsa_key: rsa.RSAPrivateKey
) -> None:
    token = mint(pem_private(rsa_key), "RS256", "agent-9", ["agent"], 300, now=NOW)
    await refused(hs, token, Code.TOKEN_INVALID)


def test_key_file_that_does_not_fit_or_is_private_is_refused_at_start(
    clean_env: Path, rsa_key: rsa.RSAPrivateKey, ec_file: Path
) -> None:
    def start(key_file: Path, alg: str = "RS256") -> None:
        settings = load_settings(jwt_algorithms=alg, jwt_public_key_file=key_file)
        with pytest.raises(ValueError, match=r"^HUB_JWT_PUBLIC_KEY_FILE: [^\n]+$"):
            TokenVerifier.from_settings(settings)

    start(ec_file)  # an EC key for RS256
    rsa_file = clean_env / "rsa.pem"
    rsa_file.write_bytes(pem_public(rsa_key))
    start(rsa_file, "ES256")  # an RSA key for ES256
    p384 = clean_env / "p384.pem"
    p384.write_bytes(pem_public(ec.generate_private_key(ec.SECP384R1())))
    start(p384, "ES256")  # the wrong curve
    small = clean_env / "small.pem"
    small.write_bytes(pem_public(rsa.generate_private_key(public_exponent=65537, key_size=1024)))
    start(small)  # under 2048 bits
    private = clean_env / "private.pem"
    private.write_bytes(pem_private(rsa_key))
    start(private)
    garbage = clean_env / "garbage.pem"
    garbage.write_bytes(b"-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")
    start(garbage)


# --------------------------------------------------------------------------------------------
# Keys are never taken from the token


def attacker_token(attacker: rsa.RSAPrivateKey, headers: dict[str, Any]) -> str:
    payload = json.dumps(claims()).encode()
    return str(jws.sign(payload, pem_private(attacker), headers=headers, algorithm="RS256"))


def attacker_headers(attacker: rsa.RSAPrivateKey) -> list[dict[str, Any]]:
    own_jwk = jwk.construct(pem_public(attacker), "RS256").to_dict()
    own_jwk["kid"] = "attacker"
    return [
        {"jku": "https://evil.example/jwks.json", "kid": "attacker"},
        {"jku": "http://127.0.0.1:1/jwks.json"},
        {"jwk": own_jwk},
        {"jwk": own_jwk, "kid": "attacker"},
        {"x5u": "https://evil.example/cert.pem"},
        {"x5c": [b64(pem_public(attacker))]},
        {"jku": "https://evil.example/jwks.json", "jwk": own_jwk, "x5u": "https://evil.example/c"},
    ]


async def test_keys_in_token_headers_are_ignored(
    rs: TokenVerifier,
    attacker_rsa: rsa.RSAPrivateKey,
    no_io: Callable[[], Any],
) -> None:
    for headers in attacker_headers(attacker_rsa):
        token = attacker_token(attacker_rsa, headers)
        with no_io() as calls:
            await refused(rs, token, Code.TOKEN_INVALID)
        assert calls == []


KIDS = [
    "../../etc/passwd",
    "../../../../../../etc/passwd",
    "/etc/passwd",
    "..\\..\\windows\\win.ini",
    "file:///etc/passwd",
    "https://evil.example/key.pem",
    "http://169.254.169.254/latest/meta-data/",
    "' OR '1'='1",
    "rsa.pub.pem",
    "\x00",
    "",
]


@pytest.mark.parametrize("kid", KIDS)
async def test_kid_is_never_a_path_or_url(
    rs: TokenVerifier,
    rsa_key: rsa.RSAPrivateKey,
    attacker_rsa: rsa.RSAPrivateKey,
    no_io: Callable[[], Any],
    kid: str,
) -> None:
    forged = attacker_token(attacker_rsa, {"kid": kid})
    hmac_forged = hs_token({"alg": "HS256", "kid": kid}, claims(), key=pem_public(rsa_key))
    genuine = mint(pem_private(rsa_key), "RS256", "agent-k", ["agent"], 300, kid=kid, now=NOW)
    with no_io() as calls:
        await refused(rs, forged, Code.TOKEN_INVALID)
        await refused(rs, hmac_forged, Code.TOKEN_INVALID)
        # With a static key `kid` is opaque and unused: the genuine token passes, nothing is read.
        assert (await rs.verify(genuine)).sub == "agent-k"
    assert calls == []


@pytest.mark.parametrize("kid", KIDS)
async def test_kid_is_an_opaque_lookup_key(
    attacker_rsa: rsa.RSAPrivateKey, no_io: Callable[[], Any], kid: str
) -> None:
    asked: list[tuple[str, str]] = []

    async def lookup(k: str, alg: str) -> None:
        asked.append((k, alg))

    verifier = TokenVerifier(
        algorithms=frozenset({"RS256"}), static_keys={}, key_lookup=lookup, clock=lambda: NOW
    )
    with no_io() as calls:
        await refused(verifier, attacker_token(attacker_rsa, {"kid": kid}), Code.TOKEN_INVALID)
    assert calls == []
    assert asked == [(kid, "RS256")]


async def test_overlong_or_non_string_kid_is_refused(attacker_rsa: rsa.RSAPrivateKey) -> None:
    asked: list[str] = []

    async def lookup(k: str, alg: str) -> None:
        asked.append(k)

    verifier = TokenVerifier(
        algorithms=frozenset({"RS256"}), static_keys={}, key_lookup=lookup, clock=lambda: NOW
    )
    await refused(verifier, attacker_token(attacker_rsa, {"kid": "k" * 300}), Code.TOKEN_INVALID)
    assert asked == []  # refused, not truncated into another key's id
    for kid in (5, ["a"], {"a": 1}, True):
        token = f"{segment({'alg': 'RS256', 'kid': kid})}.{segment(claims())}.AAAA"
        err = await refused_any(verifier, token)
        assert err.code in {Code.TOKEN_MALFORMED, Code.TOKEN_INVALID}
    assert asked == []


async def refused_any(verifier: TokenVerifier, token: str) -> TokenError:
    with pytest.raises(TokenError) as info:
        await verifier.verify(token)
    assert info.value.code in TOKEN_CODES
    assert_no_leak(info.value, token)
    return info.value


async def test_crit_header_is_refused(hs: TokenVerifier) -> None:
    token = hs_token({"alg": "HS256", "b64": False, "crit": ["b64"]}, claims())
    await refused(hs, token, Code.TOKEN_INVALID)
    await refused(hs, hs_token({"alg": "HS256", "crit": []}, claims()), Code.TOKEN_INVALID)


# --------------------------------------------------------------------------------------------
# Signature and time


async def test_wrong_key_is_invalid(hs: TokenVerifier) -> None:
    await refused(hs, hs_token(HS, claims(), key=b"another-secret-" * 4), Code.TOKEN_INVALID)
    other = mint("x" * 64, "HS256", "agent-1", ["agent"], 300, now=NOW)
    await refused(hs, other, Code.TOKEN_INVALID)


async def test_tampered_payload_or_signature_is_invalid(hs: TokenVerifier) -> None:
    token = good()
    head, _, sig = token.split(".")
    await refused(hs, f"{head}.{segment(claims(sub='admin'))}.{sig}", Code.TOKEN_INVALID)
    await refused(hs, f"{head}.{segment(claims(roles=['admin']))}.{sig}", Code.TOKEN_INVALID)
    flipped = sig[:5] + ("A" if sig[5] != "A" else "B") + sig[6:]
    await refused(hs, f"{token.rsplit('.', 1)[0]}.{flipped}", Code.TOKEN_INVALID)
    await refused(hs, f"{token.rsplit('.', 1)[0]}.{b64(b'x' * 32)}", Code.TOKEN_INVALID)


async def test_expired(hs: TokenVerifier) -> None:
    await refused(hs, good(exp=int(NOW) - 1), Code.TOKEN_EXPIRED)
    await refused(hs, good(exp=int(NOW)), Code.TOKEN_EXPIRED)
    await refused(hs, good(exp=0, iat=MISSING), Code.TOKEN_EXPIRED)
    await refused(hs, good(exp=-(10**12), iat=MISSING), Code.TOKEN_EXPIRED)
    assert (await hs.verify(good(exp=int(NOW) + 1))).sub == "agent-1"


async def test_not_yet_valid(hs: TokenVerifier) -> None:
    # HUB_JWT_FUTURE_LEEWAY_SECONDS (30 by default): a provider's clock a little ahead is fine.
    await refused(hs, good(nbf=int(NOW) + 31), Code.TOKEN_NOT_YET_VALID)
    await refused(hs, good(iat=int(NOW) + 31), Code.TOKEN_NOT_YET_VALID)
    assert (await hs.verify(good(nbf=int(NOW) + 30))).sub == "agent-1"
    assert (await hs.verify(good(iat=int(NOW) + 5))).sub == "agent-1"
    strict = replace(hs, future_leeway=0)
    await refused(strict, good(iat=int(NOW) + 1), Code.TOKEN_NOT_YET_VALID)
    assert (await strict.verify(good(iat=int(NOW)))).sub == "agent-1"


async def test_leeway_on_exp_and_separately_on_nbf_and_iat(build: Callable[..., TokenVerifier]) -> None:
    lenient = build(jwt_leeway_seconds=30, jwt_future_leeway_seconds=10)
    assert (await lenient.verify(good(exp=int(NOW) - 29))).sub == "agent-1"
    await refused(lenient, good(exp=int(NOW) - 30), Code.TOKEN_EXPIRED)
    await refused(lenient, good(exp=int(NOW) - 31), Code.TOKEN_EXPIRED)
    assert (await lenient.verify(good(nbf=int(NOW) + 10))).sub == "agent-1"
    await refused(lenient, good(nbf=int(NOW) + 11), Code.TOKEN_NOT_YET_VALID)
    assert (await lenient.verify(good(iat=int(NOW) + 10))).sub == "agent-1"
    await refused(lenient, good(iat=int(NOW) + 11), Code.TOKEN_NOT_YET_VALID)


# --------------------------------------------------------------------------------------------
# Issuer and audience


@pytest.fixture
def iss_aud(build: Callable[..., TokenVerifier]) -> TokenVerifier:
    return build(jwt_issuer="https://idp.example", jwt_audience="hub")


async def test_issuer_and_audience_accepted(iss_aud: TokenVerifier) -> None:
    ok = good(iss="https://idp.example", aud="hub")
    assert (await iss_aud.verify(ok)).sub == "agent-1"
    in_list = good(iss="https://idp.example", aud=["other", "hub"])
    assert (await iss_aud.verify(in_list)).sub == "agent-1"


@pytest.mark.parametrize(
    ("iss", "aud"),
    [
        (MISSING, "hub"),
        ("https://evil.example", "hub"),
        ("https://idp.example/", "hub"),
        ("HTTPS://IDP.EXAMPLE", "hub"),
        (None, "hub"),
        (["https://idp.example"], "hub"),
        ("https://idp.example", MISSING),
        ("https://idp.example", "other"),
        ("https://idp.example", "hubx"),
        ("https://idp.example", "Hub"),
        ("https://idp.example", None),
        ("https://idp.example", []),
        ("https://idp.example", ["other"]),
        ("https://idp.example", {"hub": True}),
        ("https://idp.example", 5),
        (MISSING, MISSING),
    ],
)
async def test_issuer_and_audience_refused(iss_aud: TokenVerifier, iss: Any, aud: Any) -> None:
    await refused(iss_aud, good(iss=iss, aud=aud), Code.CLAIMS_INVALID)


async def test_issuer_and_audience_not_checked_when_unset(hs: TokenVerifier) -> None:
    assert (await hs.verify(good(iss="anyone", aud="anything"))).sub == "agent-1"


# --------------------------------------------------------------------------------------------
# Malformed


def malformed_tokens() -> dict[str, str]:
    token = good()
    head, body, sig = token.split(".")
    latin1_header = b'{"alg":"HS256\xe9"}'
    truncated_header = '{"alg":"HS256"'
    nested_payload = '{"a":' * 3000 + "1" + "}" * 3000
    huge_int_payload = '{"exp":' + "9" * 5000 + "}"
    return {
        "empty": "",
        "dot": ".",
        "two dots": "..",
        "three dots": "...",
        "truncated to two segments": f"{head}.{body}",
        "truncated in the payload": token[: len(head) + 10],
        "two segments": f"{head}.{body}",
        "one segment": head,
        "four segments": f"{token}.{sig}",
        "four segments empty": f"{token}.",
        "five segments": f"{head}.{body}.{sig}.{sig}.{sig}",
        "empty header": f".{body}.{sig}",
        "empty payload": f"{head}..{sig}",
        "plus in header": f"{head[:-1]}+.{body}.{sig}",
        "slash in payload": f"{head}.{body[:-1]}/.{sig}",
        "bang in signature": f"{head}.{body}.{sig[:-1]}!",
        "space": f"{head}.{body}. {sig}",
        "trailing newline": f"{token}\n",
        "leading space": f" {token}",
        "bearer prefix": f"Bearer {token}",
        "padding on header": f"{head}=.{body}.{sig}",
        "padding on payload": f"{head}.{body}==.{sig}",
        "padding on signature": f"{token}=",
        "impossible length header": f"{head}A.{body}.{sig}"
        if len(head) % 4 == 0
        else f"{head[: len(head) - len(head) % 4]}A.{body}.{sig}",
        "impossible length signature": f"{head}.{body}.A",
        "non-ascii": f"{head}.{body}.{sig[:-1]}é",
        "non-ascii in header": f"é{head}.{body}.{sig}",
        "nul": f"{head}.{body}.{sig}\x00",
        "non-JSON header": f"{segment('not json')}.{body}.{sig}",
        "header is an array": f"{segment(['HS256'])}.{body}.{sig}",
        "header is a string": f"{segment('HS256')}.{body}.{sig}",
        "header is null": f"{segment('null')}.{body}.{sig}",
        "header is a number": f"{segment('1')}.{body}.{sig}",
        "header latin-1": f"{segment(latin1_header)}.{body}.{sig}",
        "header utf-16": f"{segment(json.dumps(HS).encode('utf-16'))}.{body}.{sig}",
        "header truncated JSON": f"{segment(truncated_header)}.{body}.{sig}",
        "header deeply nested": f"{segment('[' * 5000 + ']' * 5000)}.{body}.{sig}",
        "payload not JSON": f"{head}.{segment('sub=agent-1')}.{sig}",
        "payload array": f"{head}.{segment([claims()])}.{sig}",
        "payload is a string": f"{head}.{segment(json.dumps('x'))}.{sig}",
        "payload deeply nested": f"{head}.{segment(nested_payload)}.{sig}",
        "payload huge integer literal": f"{head}.{segment(huge_int_payload)}.{sig}",
    }


@pytest.mark.parametrize("name", list(malformed_tokens()))
async def test_malformed(hs: TokenVerifier, name: str) -> None:
    await refused(hs, malformed_tokens()[name], Code.TOKEN_MALFORMED)


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
async def test_json_constants_in_claims_are_malformed(hs: TokenVerifier, constant: str) -> None:
    payload = json.dumps(claims()).replace(str(int(NOW) + 300), constant)
    assert constant in payload
    await refused(hs, hs_token(HS, payload), Code.TOKEN_MALFORMED)
    header = f'{{"alg":"HS256","x":{constant}}}'
    await refused(hs, hs_token(header, claims()), Code.TOKEN_MALFORMED)


async def test_every_truncation_is_refused(hs: TokenVerifier) -> None:
    token = good()
    last_dot = token.rindex(".")
    for n in range(len(token)):
        err = await refused_any(hs, token[:n])
        if n <= last_dot:
            assert err.code == Code.TOKEN_MALFORMED, (n, err)
        else:
            assert err.code in {Code.TOKEN_MALFORMED, Code.TOKEN_INVALID}, (n, err)


async def test_max_token_bytes(hs: TokenVerifier) -> None:
    token = good(pad="x" * 500)
    exact = replace(hs, max_token_bytes=len(token))
    assert (await exact.verify(token)).sub == "agent-1"
    err = await refused(replace(hs, max_token_bytes=len(token) - 1), token, Code.TOKEN_MALFORMED)
    assert err.fingerprint is None  # unparsed: not even hashed
    assert hs.max_token_bytes == 8192
    await refused(hs, good(pad="x" * 8192), Code.TOKEN_MALFORMED)
    await refused(hs, "A" * 8193, Code.TOKEN_MALFORMED)
    await refused(hs, "A" * 10_000_000, Code.TOKEN_MALFORMED)
    with pytest.raises(TokenError) as info:
        parse("A" * 8193, 8192)
    assert info.value.code == Code.TOKEN_MALFORMED


async def test_non_canonical_base64_in_signature_is_the_same_token(hs: TokenVerifier) -> None:
    """Base64url's unused trailing bits: a documented malleability (why revocation uses jti)."""
    token = good()
    sig = token.rsplit(".", 1)[1]
    alphabet = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"
    last = alphabet.index(sig[-1])
    sibling = alphabet[last ^ 1]  # 43 chars: the last one carries 2 unused bits
    variant = token[:-1] + sibling
    principal = await hs.verify(variant)
    assert principal.jti == "jti-1"
    assert principal.fingerprint != fingerprint(token)


# --------------------------------------------------------------------------------------------
# Claim types


@pytest.mark.parametrize(
    "overrides",
    [
        {"exp": "123"},
        {"exp": str(int(NOW) + 300)},
        {"exp": None},
        {"exp": True},
        {"exp": False},
        {"exp": [int(NOW) + 300]},
        {"exp": {"t": 1}},
        {"exp": 10**400},
        {"exp": -(10**400)},
        {"exp": MISSING},
        {"nbf": "0"},
        {"nbf": None},
        {"nbf": True},
        {"nbf": 10**400},
        {"iat": "0"},
        {"iat": None},
        {"iat": [0]},
        {"roles": 5},
        {"roles": "agent"},
        {"roles": None},
        {"roles": {"agent": True}},
        {"roles": ["agent", 5]},
        {"roles": ["agent", None]},
        {"roles": [["agent"]]},
        {"roles": ["x" * 257]},
        {"roles": [f"r{i}" for i in range(65)]},
        {"roles": MISSING},
        {"roles": MISSING, "role": 5},
        {"roles": MISSING, "role": ["agent"]},
        {"roles": MISSING, "role": None},
        {"roles": 5, "role": "agent"},
        {"sub": MISSING},
        {"sub": ""},
        {"sub": 5},
        {"sub": None},
        {"sub": True},
        {"sub": ["agent-1"]},
        {"sub": {"id": "agent-1"}},
        {"sub": "x" * 257},
        {"tenant": 5},
        {"tenant": ["acme"]},
        {"tenant": True},
        {"tenant": "t" * 257},
        {"jti": 5},
        {"jti": {"id": 1}},
    ],
    ids=lambda o: ",".join(f"{k}={str(v)[:12]}" for k, v in o.items()),
)
async def test_claims_of_the_wrong_type(hs: TokenVerifier, overrides: dict[str, Any]) -> None:
    await refused(hs, good(**overrides), Code.CLAIMS_INVALID)


async def test_out_of_range_float_exp_is_claims_invalid(hs: TokenVerifier) -> None:
    payload = json.dumps(claims()).replace(str(int(NOW) + 300), "1e999")
    await refused(hs, hs_token(HS, payload), Code.CLAIMS_INVALID)


async def test_null_tenant_and_jti_mean_absent(hs: TokenVerifier) -> None:
    principal = await hs.verify(good(tenant=None, jti=None))
    assert principal.tenant is None
    assert principal.jti is None


async def test_refusal_carries_unverified_context_but_never_the_token(hs: TokenVerifier) -> None:
    token = good(exp=int(NOW) - 1, sub="agent-x", jti="j-x")
    err = await refused(hs, token, Code.TOKEN_EXPIRED)
    assert err.claimed_sub == "agent-x"
    assert err.jti == "j-x"
    assert err.fingerprint == fingerprint(token)
    assert str(err).startswith("token_expired: ")
    long_sub = good(sub="s" * 5000, exp=int(NOW) - 1)
    err = await refused(hs, long_sub, Code.CLAIMS_INVALID)
    assert err.claimed_sub is not None
    assert len(err.claimed_sub) <= 256


async def test_details_never_quote_the_token(hs: TokenVerifier) -> None:
    token = good()
    head, body, sig = token.split(".")
    invalid_utf8 = b"\xff\xfe" + sig.encode()
    cases = [
        f"{head}.{body}.{sig}é",
        f"{head}.{segment(invalid_utf8)}.{sig}",
        f"{segment(sig)}.{body}.{sig}",
        f"{segment(json.dumps({'alg': sig}))}.{body}.{sig}",
        f"{head}.{segment(json.dumps({'sub': sig}))}.{sig}",
    ]
    for bad in cases:
        err = await refused_any(hs, bad)
        for text in (str(err), err.detail):
            assert sig not in text
            assert sig[:20] not in text


# --------------------------------------------------------------------------------------------
# Property-based: whatever the input, a Principal or a TokenError with a token code


HS_VERIFIER = TokenVerifier(
    algorithms=frozenset({"HS256"}),
    static_keys={"HS256": jwk.construct(SECRET.encode(), "HS256")},
    clock=lambda: NOW,
)
VALID = good(tenant="acme")
VALID_PARTS = VALID.split(".")
B64_CHARS = string.ascii_letters + string.digits + "-_"
PROPERTY = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def outcome(token: str) -> Principal | None:
    """None when refused with a token code; any other exception propagates (and fails)."""
    try:
        return run(HS_VERIFIER.verify(token))
    except TokenError as err:
        assert err.code in TOKEN_CODES
        assert isinstance(err.detail, str)
        if err.fingerprint is not None:
            assert len(err.fingerprint) == 16
        if len(token) >= 40:
            assert token not in str(err)
        assert VALID_PARTS[2] not in str(err)
        return None


def same_token(token: str) -> bool:
    """Byte for byte the signed input, and a signature decoding to the same bytes."""
    parts = token.split(".")
    if len(parts) != 3 or parts[:2] != VALID_PARTS[:2]:
        return False
    if not all(c in B64_CHARS for c in parts[2]):
        return False
    try:
        return base64.urlsafe_b64decode(parts[2] + "=" * (-len(parts[2]) % 4)) == (
            base64.urlsafe_b64decode(VALID_PARTS[2] + "=" * (-len(VALID_PARTS[2]) % 4))
        )
    except ValueError:
        return False


def test_the_reference_token_verifies() -> None:
    principal = run(HS_VERIFIER.verify(VALID))
    assert principal.sub == "agent-1"
    assert principal.tenant == "acme"


@PROPERTY
@given(st.text(max_size=300))
def test_random_text(text: str) -> None:
    assert outcome(text) is None


@PROPERTY
@given(st.binary(max_size=300))
def test_random_bytes_as_latin1(data: bytes) -> None:
    assert outcome(data.decode("latin-1")) is None


@PROPERTY
@given(st.lists(st.text(alphabet=B64_CHARS + "=+/.", max_size=60), min_size=1, max_size=5))
def test_random_base64ish_segments(parts: list[str]) -> None:
    assert outcome(".".join(parts)) is None


EDIT_CHARS = B64_CHARS + ".=+/ \x00\n\té\u2028"


@st.composite
def edited(draw: st.DrawFn) -> str:
    chars = list(VALID)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete"]))
        if op == "insert" or not chars:
            i = draw(st.integers(0, len(chars)))
            chars.insert(i, draw(st.sampled_from(EDIT_CHARS)))
        elif op == "flip":
            i = draw(st.integers(0, len(chars) - 1))
            chars[i] = draw(st.sampled_from(EDIT_CHARS))
        else:
            del chars[draw(st.integers(0, len(chars) - 1))]
    return "".join(chars)


@PROPERTY
@given(edited())
def test_edited_valid_token(token: str) -> None:
    principal = outcome(token)
    if principal is not None:
        assert same_token(token), token
        assert principal.sub == "agent-1"
        assert principal.tenant == "acme"


CLAIM_NAMES = ["alg", "typ", "kid", "crit", "jku", "jwk", "x5u", "x5c", "b64", "sub", "exp",
               "nbf", "iat", "roles", "role", "tenant", "jti", "iss", "aud"]
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**20), max_value=10**20)
    | st.sampled_from([10**400, -(10**400), 2**63, int(NOW) + 300, int(NOW) - 300, 0])
    | st.floats()  # NaN and infinities serialize as non-JSON constants
    | st.text(max_size=12)
    | st.sampled_from(["HS256", "none", "RS256", "agent", "dashboard", "", "acme"])
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(CLAIM_NAMES) | st.text(max_size=4), children, max_size=4),
    max_leaves=12,
)
OBJECTS = st.dictionaries(st.sampled_from(CLAIM_NAMES) | st.text(max_size=4), JSON_VALUES,
                          max_size=6)


def header_and_claims() -> tuple[dict[str, Any], dict[str, Any]]:
    return (
        json.loads(base64.urlsafe_b64decode(VALID_PARTS[0] + "==")),
        json.loads(base64.urlsafe_b64decode(VALID_PARTS[1] + "==")),
    )


@PROPERTY
@given(
    part=st.sampled_from(["header", "payload", "both"]),
    mode=st.sampled_from(["merge", "replace", "any-json"]),
    header_extra=OBJECTS,
    claims_extra=OBJECTS,
    raw=JSON_VALUES,
    resign=st.booleans(),
)
def test_reencoded_header_or_payload(
    part: str, mode: str, header_extra: dict[str, Any], claims_extra: dict[str, Any],
    raw: Any, resign: bool,
) -> None:
    header, body = header_and_claims()
    new_header: Any = header
    new_body: Any = body
    if part in ("header", "both"):
        new_header = {**header, **header_extra} if mode == "merge" else (
            header_extra if mode == "replace" else raw)
    if part in ("payload", "both"):
        new_body = {**body, **claims_extra} if mode == "merge" else (
            claims_extra if mode == "replace" else raw)
    head = b64(json.dumps(new_header).encode())
    payload = b64(json.dumps(new_body).encode())
    if resign:
        signing = f"{head}.{payload}"
        mac = hmac.new(SECRET.encode(), signing.encode(), hashlib.sha256).digest()
        token = f"{signing}.{b64(mac)}"
    else:
        token = f"{head}.{payload}.{VALID_PARTS[2]}"
    principal = outcome(token)
    if principal is None:
        return
    if not resign:
        assert same_token(token)
        return
    # A correctly signed token passed: it must really meet the contract.
    assert isinstance(new_header, dict)
    assert new_header.get("alg") == "HS256"
    assert "crit" not in new_header
    assert isinstance(new_body, dict)
    assert isinstance(principal.sub, str)
    assert principal.sub
    assert principal.sub == new_body["sub"]
    assert all(isinstance(r, str) for r in principal.roles)
    assert isinstance(principal.exp, float)
    assert principal.exp > NOW
    assert type(new_body["exp"]) in (int, float)
    for name in ("nbf", "iat"):
        if name in new_body:
            assert type(new_body[name]) in (int, float)
            assert new_body[name] <= NOW
    assert principal.tenant is None or isinstance(principal.tenant, str)
    assert principal.jti is None or isinstance(principal.jti, str)


@PROPERTY
@given(st.dictionaries(st.sampled_from(CLAIM_NAMES), JSON_VALUES, max_size=8))
def test_signed_random_claims(extra: dict[str, Any]) -> None:
    """Correctly signed tokens with random claims: the claim checks alone decide."""
    body = {**claims(), **extra}
    token = hs_token(HS, json.dumps(body))
    principal = outcome(token)
    if principal is not None:
        assert principal.sub == body["sub"]
        assert isinstance(body["exp"], int | float)
        assert not isinstance(body["exp"], bool)
        assert body["exp"] > NOW
        roles = body.get("roles", [body.get("role")])
        assert principal.roles == frozenset(roles)


# --------------------------------------------------------------------------------------------
# Claims as identity providers issue them; sub and tenant text; the longest lifetime


async def test_roles_from_scope_through_a_role_map(build: Callable[..., TokenVerifier]) -> None:
    verifier = build(jwt_roles_claim="scope", jwt_role_map="hub:dashboard=dashboard,hub:ops=operator")
    principal = await verifier.verify(good(roles=MISSING, scope="openid hub:dashboard  hub:ops email"))
    assert principal.roles == {"dashboard", "operator"}  # unmapped scopes grant nothing
    assert (await verifier.verify(good(roles=MISSING, scope="openid"))).roles == frozenset()
    await refused(verifier, good(roles=["agent"]), Code.CLAIMS_INVALID)  # the path is scope now
    await refused(verifier, good(roles=MISSING, scope=5), Code.CLAIMS_INVALID)


async def test_roles_from_a_nested_claim(build: Callable[..., TokenVerifier]) -> None:
    verifier = build(jwt_roles_claim="realm_access.roles", jwt_role_map="fleet-agent=agent")
    token = good(roles=MISSING, realm_access={"roles": ["fleet-agent", "offline_access"]})
    assert (await verifier.verify(token)).roles == {"agent"}
    await refused(verifier, good(roles=MISSING, realm_access=["fleet-agent"]), Code.CLAIMS_INVALID)
    await refused(verifier, good(roles=MISSING), Code.CLAIMS_INVALID)
    plain = build(jwt_roles_claim="groups")  # without a map, values are hub roles
    assert (await plain.verify(good(roles=MISSING, groups=["agent", "x"]))).roles == {"agent", "x"}


async def test_the_hub_shape_keeps_working(hs: TokenVerifier) -> None:
    assert (await hs.verify(good(roles=MISSING, role="dashboard"))).roles == {"dashboard"}
    await refused(hs, good(roles="agent dashboard"), Code.CLAIMS_INVALID)  # `roles` is a list


async def test_tenant_from_a_claim_path(build: Callable[..., TokenVerifier]) -> None:
    verifier = build(jwt_tenant_claim="org.id")
    assert (await verifier.verify(good(org={"id": "tenant-a"}))).tenant == "tenant-a"
    assert (await verifier.verify(good(tenant="ignored"))).tenant is None
    await refused(verifier, good(org={"id": 7}), Code.CLAIMS_INVALID)


@pytest.mark.parametrize("value", ["", "a\u0000b", "line\nbreak", "\ud800", "\x7f", "t" * 257])
async def test_sub_and_tenant_must_be_printable_text(hs: TokenVerifier, value: str) -> None:
    await refused(hs, good(sub=value), Code.CLAIMS_INVALID)
    await refused(hs, good(tenant=value), Code.CLAIMS_INVALID)


async def test_printable_names_of_every_script_pass(hs: TokenVerifier) -> None:
    for name in ("spiffe://fleet/agent 7", "ᚠᛇᚻ", "用户", "bob@example.com/device", "t" * 256):
        principal = await hs.verify(good(sub=name, tenant=name))
        assert principal.sub == name and principal.tenant == name


async def test_a_token_living_longer_than_the_maximum_is_refused(build: Callable[..., TokenVerifier]) -> None:
    verifier = build(max_token_lifetime_seconds=3600, jwt_future_leeway_seconds=0)
    assert (await verifier.verify(good(exp=int(NOW) + 3600))).sub == "agent-1"
    await refused(verifier, good(exp=int(NOW) + 3601), Code.CLAIMS_INVALID)
    await refused(verifier, good(exp=1e308), Code.CLAIMS_INVALID)
    default = build()
    assert (await default.verify(good(exp=int(NOW) + 86400))).sub == "agent-1"
    await refused(default, good(exp=int(NOW) + 86400 + 31), Code.CLAIMS_INVALID)


async def test_a_namespaced_claim_with_dots_in_its_name(build: Callable[..., TokenVerifier]) -> None:
    verifier = build(jwt_roles_claim="https://hub.example.com/roles", jwt_tenant_claim="https://hub.example.com/org")
    token = good(roles=MISSING, **{"https://hub.example.com/roles": ["agent"], "https://hub.example.com/org": "t1"})
    principal = await verifier.verify(token)
    assert principal.roles == {"agent"} and principal.tenant == "t1"
