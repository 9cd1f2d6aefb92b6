"""The session state machine, without a socket."""

from __future__ import annotations

import json

from app.errors import Code
from app.handshake import Admission
from app.roles import Endpoint
from app.session import Close, Limits, Send, Session
from app.tokens import Principal, TokenError

NOW = 1_000_000.0
LIMITS = Limits(refresh_warning_seconds=60, leeway_seconds=0, message_rate=10, message_burst=5)


def principal(sub: str = "a1", exp: float = NOW + 300, roles: tuple[str, ...] = ("agent",)) -> Principal:
    return Principal(sub=sub, roles=frozenset(roles), tenant=None, jti="j", exp=exp, iat=NOW,
                     fingerprint="f" * 16)


def session(p: Principal | None = None, limits: Limits = LIMITS) -> Session:
    p = p or principal()
    admission = Admission(conn_id="c1", endpoint=Endpoint.AGENT, principal=p, client_ip="1.2.3.4",
                          transport="header", subprotocol=None, user_agent=None, origin=None)
    return Session(admission, limits, NOW)


def sent(actions: list[Send | Close]) -> list[dict[str, object]]:
    return [json.loads(a.text) for a in actions if isinstance(a, Send)]


def test_welcome_then_warning_once_then_close_at_expiry() -> None:
    s = session()
    assert [m["type"] for m in sent(s.welcome(NOW))] == ["welcome"]
    assert s.deadline() == NOW + 240
    assert s.on_timer(NOW + 239) == []
    warning = sent(s.on_timer(NOW + 240))
    assert warning == [{"type": "auth.expiring", "expires_at": int(NOW + 300), "seconds_left": 60}]
    assert s.on_timer(NOW + 250) == []  # once only
    assert s.deadline() == NOW + 300
    assert s.on_timer(NOW + 300) == [Close(Code.TOKEN_EXPIRED)]


def test_short_token_is_warned_right_after_welcome() -> None:
    s = session(principal(exp=NOW + 10))
    assert [m["type"] for m in sent(s.welcome(NOW))] == ["welcome", "auth.expiring"]


def test_leeway_extends_the_close() -> None:
    s = session(limits=Limits(60, 5, 10, 5))
    assert s.on_timer(NOW + 300) != [Close(Code.TOKEN_EXPIRED)]
    assert s.on_timer(NOW + 305) == [Close(Code.TOKEN_EXPIRED)]


def test_good_refresh_replaces_principal_and_rearms_warning() -> None:
    s = session()
    s.on_timer(NOW + 250)
    fresh = principal(exp=NOW + 900)
    out = sent(s.refreshed(fresh, "r1"))
    assert out == [{"type": "auth.refreshed", "expires_at": int(NOW + 900), "ref": "r1"}]
    assert s.principal is fresh
    assert s.deadline() == NOW + 840


def test_refresh_for_another_sub_closes_identity_changed() -> None:
    s = session()
    assert s.refreshed(principal(sub="other"), None) == [Close(Code.IDENTITY_CHANGED)]
    assert s.principal.sub == "a1"


def test_refresh_whose_roles_no_longer_fit_closes_role_forbidden() -> None:
    s = session()
    assert s.refreshed(principal(roles=("dashboard",)), None) == [Close(Code.ROLE_FORBIDDEN)]


def test_three_failed_refreshes_close_token_invalid_and_old_token_goes_on() -> None:
    s = session()
    first = sent(s.refresh_failed(TokenError(Code.TOKEN_EXPIRED, "x"), 1))
    assert first[0]["error"] == "token_expired" and first[0]["ref"] == 1
    assert sent(s.refresh_failed(Code.TOKEN_REVOKED, 2))[0]["error"] == "token_revoked"
    assert s.principal.exp == NOW + 300
    assert s.refresh_failed(TokenError(Code.TOKEN_INVALID, "x"), 3) == [Close(Code.TOKEN_INVALID)]


def test_good_refresh_resets_the_failure_count() -> None:
    s = session()
    s.refresh_failed(Code.TOKEN_INVALID, None)
    s.refresh_failed(Code.TOKEN_INVALID, None)
    s.refreshed(principal(exp=NOW + 600), None)
    assert isinstance(s.refresh_failed(Code.TOKEN_INVALID, None)[0], Send)


def test_message_flood_errors_first_then_closes_4429() -> None:
    s = session()
    for _ in range(5):
        assert s.allow_message(NOW) is None
    errors = [s.allow_message(NOW) for _ in range(5)]
    assert all(e and sent(e)[0]["error"] == "rate_limited" for e in errors)
    assert s.allow_message(NOW) == [Close(Code.RATE_LIMITED)]


def test_message_rate_refills() -> None:
    s = session()
    for _ in range(5):
        s.allow_message(NOW)
    assert s.allow_message(NOW) is not None
    assert s.allow_message(NOW + 0.2) is None  # 10/s refills 2 in 0.2 s
