"""Endpoints and the roles that may use them."""

from __future__ import annotations

from collections.abc import Set
from enum import StrEnum


class Endpoint(StrEnum):
    AGENT = "agent"
    DASHBOARD = "dashboard"

    @property
    def path(self) -> str:
        return f"/ws/{self.value}"


AGENT = "agent"
DASHBOARD = "dashboard"
OPERATOR = "operator"
ADMIN = "admin"

_ENDPOINT_ROLE = {Endpoint.AGENT: AGENT, Endpoint.DASHBOARD: DASHBOARD}


def may_connect(roles: Set[str], endpoint: Endpoint) -> bool:
    """``agent`` uses /ws/agent only, ``dashboard`` /ws/dashboard only; a token with both roles is
    refused everywhere, so that one credential never speaks for both sides of the hub."""
    wanted = _ENDPOINT_ROLE[endpoint]
    other = _ENDPOINT_ROLE[Endpoint.DASHBOARD if endpoint is Endpoint.AGENT else Endpoint.AGENT]
    return wanted in roles and other not in roles


def may_command(roles: Set[str]) -> bool:
    return OPERATOR in roles and DASHBOARD in roles


def is_admin(roles: Set[str]) -> bool:
    return ADMIN in roles
