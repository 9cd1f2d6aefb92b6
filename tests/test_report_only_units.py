"""The plain decision code of report-only mode and of the audit trail, without a socket (the
real-server proof is in tests/test_report_only.py and tests/test_audit.py)."""

from __future__ import annotations

import pytest

from app.audit import Audited, body_target, classify, outcome_of
from app.errors import Code
from app.report_only import RELAXED, ReportOnly, unverified_principal
from app.roles import Endpoint
from hubclient.messages import Welcome, parse_server


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_only_token_and_role_codes_are_relaxed_on_listed_endpoints_before_the_deadline() -> None:
    clock = Clock()
    policy = ReportOnly(["agent"], until=1010.0, clock=clock)
    assert all(policy.relaxes(Endpoint.AGENT, code) for code in RELAXED)
    for code in (Code.TOKEN_REVOKED, Code.IP_BANNED, Code.ORIGIN_FORBIDDEN, Code.RATE_LIMITED,
                 Code.CONNECTION_LIMIT, Code.UNAVAILABLE):
        assert not policy.relaxes(Endpoint.AGENT, code)
    assert not policy.relaxes(Endpoint.DASHBOARD, Code.TOKEN_MISSING)
    clock.now = 1010.0
    assert not policy.relaxes(Endpoint.AGENT, Code.TOKEN_MISSING)
    assert ReportOnly([], until=None).until is None


def test_an_unverified_identity_is_nobody_else() -> None:
    principal = unverified_principal(Endpoint.DASHBOARD, "c0ffee", 1234.0, None)
    assert principal.sub == "unverified:c0ffee" and principal.tenant is None and principal.jti is None
    assert principal.exp == 1234.0 and principal.roles == {"dashboard", "operator"}


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("POST", "/admin/bans", Audited("ban", None)),
        ("DELETE", "/admin/bans/abc", Audited("unban", "abc")),
        ("POST", "/admin/revocations", Audited("revoke", None)),
        ("POST", "/admin/users/spiffe%3A%2F%2Fx%2Fa/disconnect", Audited("disconnect", "spiffe://x/a")),
        ("GET", "/admin/bans", None),
        ("GET", "/admin/audit", None),
        ("POST", "/ws/agent", None),
    ],
)
def test_classify(method: str, path: str, expected: Audited | None) -> None:
    assert classify(method, path) == expected


def test_targets_and_outcomes() -> None:
    assert body_target("ban", b'{"cidr": "10.0.0.0/8"}') == "10.0.0.0/8"
    assert body_target("revoke", b'{"sub": "bob", "tenant": "a"}') == "sub:bob@a"
    assert body_target("revoke", b'{"jti": "j"}') == "jti:j"
    assert body_target("ban", b"not json") is None and body_target("ban", b"[1]") is None
    assert outcome_of(201, b"") == "ok"
    assert outcome_of(404, b'{"error": "not_found", "message": "x"}') == "not_found"
    assert outcome_of(422, b'{"detail": []}') == "invalid_message"
    assert outcome_of(500, b"Internal Server Error") == "http_500"


def test_hubclient_reads_the_auth_fields_of_welcome() -> None:
    base = '"connection_id": "c", "sub": "s", "roles": [], "tenant": null, "expires_at": 1'
    unverified = parse_server(f'{{"type": "welcome", {base}, "auth": "unverified", '
                              '"would_refuse": "token_missing"}')
    assert isinstance(unverified, Welcome)
    assert (unverified.auth, unverified.would_refuse) == ("unverified", "token_missing")
    older = parse_server(f'{{"type": "welcome", {base}}}')
    assert isinstance(older, Welcome) and (older.auth, older.would_refuse) == ("verified", None)
