"""Where a handshake's token travels, and the order in which the transports are searched: the
``Authorization: Bearer`` header, a ``bearer.<jwt>`` subprotocol (browsers), the ``token`` query
parameter (when allowed). See docs/protocol.md, "Presenting the token".
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Literal

SUBPROTOCOL = "hub.v1"
BEARER_PREFIX = "bearer."
_QUERY_TOKEN = re.compile(rb"(?:^|&)token=([^&]*)")
_TOKEN_CHARS = re.compile(r"^[A-Za-z0-9._-]+$")

Transport = Literal["header", "subprotocol", "query", "none"]


class TokenSearchError(Exception):
    pass


def find_token(
    headers: Mapping[str, str], subprotocols: Sequence[str], raw_query: bytes, allow_query: bool
) -> tuple[str, Transport] | None:
    """The token and where it travelled, in the contract's order; None when there is none.

    Raises TokenSearchError when a transport is present but unusable (an ``Authorization`` header
    that is not ``Bearer``, two ``bearer.`` subprotocols, a query value with other characters than
    a compact JWS has): that is ``token_malformed``, not a reason to look elsewhere.
    """
    authorization = headers.get("authorization")
    if authorization is not None:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise TokenSearchError("authorization is not Bearer")
        return value.strip(), "header"
    bearers = [p[len(BEARER_PREFIX):] for p in subprotocols if p.startswith(BEARER_PREFIX)]
    if bearers:
        if len(bearers) > 1:
            raise TokenSearchError("more than one bearer subprotocol")
        return bearers[0], "subprotocol"
    if allow_query and raw_query:
        # The literal parameter only, undecoded: a JWS needs no escaping, and a spelling such as
        # %74oken= would slip past the log redaction.
        found = _QUERY_TOKEN.findall(raw_query)
        if found:
            if len(found) > 1:
                raise TokenSearchError("more than one token parameter")
            value = found[0].decode("latin-1")
            if not _TOKEN_CHARS.match(value):
                raise TokenSearchError("query token has characters a JWS never has")
            return value, "query"
    return None
