"""The one table of error codes, HTTP statuses and WebSocket close codes.

Everything that refuses or closes (the handshake, live sessions, the admin API, the docs) reads it
from here, so a code means the same thing everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Code(StrEnum):
    TOKEN_MISSING = "token_missing"
    TOKEN_MALFORMED = "token_malformed"
    TOKEN_INVALID = "token_invalid"
    TOKEN_EXPIRED = "token_expired"
    TOKEN_NOT_YET_VALID = "token_not_yet_valid"
    CLAIMS_INVALID = "claims_invalid"
    TOKEN_REVOKED = "token_revoked"
    ROLE_FORBIDDEN = "role_forbidden"
    ORIGIN_FORBIDDEN = "origin_forbidden"
    IP_BANNED = "ip_banned"
    CONNECTION_LIMIT = "connection_limit"
    RATE_LIMITED = "rate_limited"
    UNAVAILABLE = "unavailable"
    # Live sessions only.
    KICKED = "kicked"
    IDENTITY_CHANGED = "identity_changed"
    UNSUPPORTED_DATA = "unsupported_data"
    MESSAGE_TOO_BIG = "message_too_big"
    SLOW_CONSUMER = "slow_consumer"
    SERVICE_RESTART = "service_restart"
    # `error` messages only: the connection stays open.
    INVALID_MESSAGE = "invalid_message"
    UNKNOWN_TYPE = "unknown_type"
    FORBIDDEN = "forbidden"
    AGENT_OFFLINE = "agent_offline"
    COMMAND_EXPIRED = "command_expired"
    NOT_FOUND = "not_found"
    # Admin API only.
    WOULD_LOCK_OUT = "would_lock_out"


@dataclass(frozen=True, slots=True)
class Spec:
    """How one code is reported.

    ``status`` is the HTTP status of a refused handshake or admin request (0 if it never is one);
    ``close`` the WebSocket close code (0 if the code never closes a socket);
    ``http_only`` marks refusals always sent as HTTP, even to a client that offered ``hub.v1``.
    """

    status: int
    close: int
    message: str
    http_only: bool = False


TABLE: dict[Code, Spec] = {
    Code.TOKEN_MISSING: Spec(401, 4401, "No token was presented."),
    Code.TOKEN_MALFORMED: Spec(401, 4401, "The token is not a well-formed JWS compact token."),
    Code.TOKEN_INVALID: Spec(401, 4401, "The token's signature, algorithm or key is not accepted."),
    Code.TOKEN_EXPIRED: Spec(401, 4401, "The token has expired."),
    Code.TOKEN_NOT_YET_VALID: Spec(401, 4401, "The token is not valid yet."),
    Code.CLAIMS_INVALID: Spec(401, 4401, "A required claim is missing, of the wrong type or wrong."),
    Code.TOKEN_REVOKED: Spec(401, 4403, "The token has been revoked."),
    Code.ROLE_FORBIDDEN: Spec(403, 4403, "The token's roles do not allow this endpoint."),
    Code.ORIGIN_FORBIDDEN: Spec(403, 4403, "This Origin is not allowed."),
    Code.IP_BANNED: Spec(403, 4403, "This address is banned.", http_only=True),
    Code.CONNECTION_LIMIT: Spec(429, 4429, "Too many concurrent connections for this user."),
    Code.RATE_LIMITED: Spec(429, 4429, "Too many attempts; retry later."),
    Code.UNAVAILABLE: Spec(503, 1013, "Shared state is unreachable; retry later."),
    Code.KICKED: Spec(0, 4403, "Disconnected by an administrator."),
    Code.IDENTITY_CHANGED: Spec(0, 4403, "A refresh presented a token for another subject."),
    Code.UNSUPPORTED_DATA: Spec(0, 1003, "Binary frames are not accepted."),
    Code.MESSAGE_TOO_BIG: Spec(0, 1009, "The frame is over the size limit."),
    Code.SLOW_CONSUMER: Spec(0, 4408, "The client did not read its messages fast enough."),
    Code.SERVICE_RESTART: Spec(0, 1012, "The server is restarting; reconnect."),
    Code.INVALID_MESSAGE: Spec(422, 0, "The message is not valid."),
    Code.UNKNOWN_TYPE: Spec(0, 0, "Unknown message type."),
    Code.FORBIDDEN: Spec(403, 0, "Not allowed."),
    Code.AGENT_OFFLINE: Spec(0, 0, "The agent is not connected."),
    Code.COMMAND_EXPIRED: Spec(0, 0, "No answer to the command within HUB_COMMAND_TTL_SECONDS."),
    Code.NOT_FOUND: Spec(404, 0, "Not found."),
    Code.WOULD_LOCK_OUT: Spec(
        422, 0, "The ban would cover every address, or the address of the admin asking for it."
    ),
}

# A handshake refused with 401 closes 4401 in the socket form; a *live* session whose token gets
# revoked is closed 4403 (the contract's live-session table), hence TOKEN_REVOKED's close code.
HANDSHAKE_CLOSE: dict[int, int] = {401: 4401, 403: 4403, 429: 4429, 503: 1013}


def spec(code: Code) -> Spec:
    return TABLE[code]


def handshake_close_code(code: Code) -> int:
    """Close code for a refusal sent as an accepted-then-closed socket."""
    return HANDSHAKE_CLOSE[TABLE[code].status]
