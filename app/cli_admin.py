"""``hubctl`` verbs that act on a running hub through its admin API.

The admin token comes from ``--token``, else ``HUB_ADMIN_TOKEN``, else it is minted for five
minutes from the configured key (``sub`` ``hubctl``, role ``admin``), so an operator on a host that
holds the key needs nothing else. Output is a table at a terminal and the API's JSON otherwise
(or with ``--json``), one document per call; the exit status is 0 for a 2xx answer, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any
from urllib.parse import quote

import httpx

from app.cli_output import show
from app.config import HMAC_ALGORITHMS, Settings


def _token(args: argparse.Namespace, settings: Settings) -> str:
    if args.token:
        return str(args.token)
    if os.environ.get("HUB_ADMIN_TOKEN"):
        return os.environ["HUB_ADMIN_TOKEN"]
    if settings.jwt_secret is None:
        raise SystemExit("hubctl: give --token or HUB_ADMIN_TOKEN (no HUB_JWT_SECRET to mint one)")
    from app.tokens import mint

    algorithm = next((a for a in settings.jwt_algorithms if a in HMAC_ALGORITHMS), "HS256")
    return mint(settings.jwt_secret.get_secret_value().encode(), algorithm, "hubctl", ["admin"], 300,
                issuer=settings.jwt_issuer, audience=settings.jwt_audience)


def _call(args: argparse.Namespace, settings: Settings, method: str, path: str,
          **kwargs: Any) -> int:
    headers = {"Authorization": f"Bearer {_token(args, settings)}"}
    try:
        response = httpx.request(method, f"{args.url.rstrip('/')}{path}", headers=headers,
                                 timeout=10, **kwargs)
    except httpx.HTTPError as exc:
        print(f"hubctl: {args.url} unreachable: {type(exc).__name__}", file=sys.stderr)
        return 1
    as_json = args.json or not sys.stdout.isatty()
    if response.content:
        try:
            document = response.json()
        except ValueError:
            print(response.text)
        else:
            if response.is_success or as_json:
                print(show(document, as_json=as_json))
            elif isinstance(document, dict) and "error" in document:
                print(f"hubctl: {document['error']}: {document.get('message', '')}", file=sys.stderr)
            else:
                print(f"hubctl: HTTP {response.status_code}", file=sys.stderr)
    return 0 if response.is_success else 1


def run(args: argparse.Namespace, settings: Settings) -> int:
    verb = args.verb
    if verb == "connections":
        return _call(args, settings, "GET", "/admin/connections",
                     params={"sub": args.sub} if args.sub else None)
    if verb == "disconnect":
        # Encoded whole: a sub such as "bob/disconnect?" must not become another path or a query.
        return _call(args, settings, "POST", f"/admin/users/{quote(args.sub, safe='')}/disconnect")
    if verb == "ban":
        body: dict[str, Any] = {"cidr": args.cidr, "reason": args.reason}
        if args.expires_at:
            body["expires_at"] = args.expires_at
        return _call(args, settings, "POST", "/admin/bans", json=body)
    if verb == "unban":
        return _call(args, settings, "DELETE", f"/admin/bans/{args.id}")
    if verb == "bans":
        return _call(args, settings, "GET", "/admin/bans")
    if verb == "revoke":
        body = {"reason": args.reason}
        if args.jti:
            body["jti"] = args.jti
        else:
            body["sub"] = args.sub
            if args.issued_before:
                body["issued_before"] = args.issued_before
        return _call(args, settings, "POST", "/admin/revocations", json=body)
    if verb == "revocations":
        return _call(args, settings, "GET", "/admin/revocations")
    if verb == "events":
        params = {k: v for k, v in (("code", args.code), ("sub", args.sub), ("since", args.since),
                                    ("limit", args.limit)) if v is not None}
        return _call(args, settings, "GET", "/admin/security-events", params=params)
    if verb == "audit":
        params = {k: v for k, v in (("actor", args.actor), ("action", args.action),
                                    ("since", args.since), ("limit", args.limit)) if v is not None}
        return _call(args, settings, "GET", "/admin/audit", params=params)
    raise SystemExit(f"hubctl: unknown admin verb {verb}")


def add_parsers(verbs: Any) -> None:
    """Register the admin verbs on ``hubctl``'s sub-parsers."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default="http://127.0.0.1:8000", help="the hub (default %(default)s)")
    common.add_argument("--token", help="an admin token (default: HUB_ADMIN_TOKEN, or minted)")
    common.add_argument("--json", action="store_true",
                        help="print the API's JSON (the default when output is not a terminal)")

    def verb(name: str, text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = verbs.add_parser(name, parents=[common], help=text)
        parser.set_defaults(admin=True)
        return parser

    verb("connections", "list live connections, cluster-wide").add_argument("--sub")
    verb("disconnect", "close every connection of a user (4403 kicked)").add_argument("sub")
    ban = verb("ban", "ban an address or CIDR")
    ban.add_argument("cidr")
    ban.add_argument("--reason", default="")
    ban.add_argument("--expires-at", help="ISO 8601 with a time zone")
    verb("unban", "lift a ban by id").add_argument("id")
    verb("bans", "list bans")
    revoke = verb("revoke", "revoke one token (--jti) or a user's tokens (--sub)")
    target = revoke.add_mutually_exclusive_group(required=True)
    target.add_argument("--jti")
    target.add_argument("--sub")
    revoke.add_argument("--issued-before", help="ISO 8601 with a time zone (with --sub)")
    revoke.add_argument("--reason", default="")
    verb("revocations", "list revocations")
    events = verb("events", "query the security event log, newest first")
    events.add_argument("--code")
    events.add_argument("--sub")
    events.add_argument("--since", help="ISO 8601 with a time zone")
    events.add_argument("--limit", type=int)
    audit = verb("audit", "query the audit trail of admin actions, newest first")
    audit.add_argument("--actor", help="the admin's sub")
    audit.add_argument("--action", choices=["ban", "unban", "revoke", "disconnect"])
    audit.add_argument("--since", help="ISO 8601 with a time zone")
    audit.add_argument("--limit", type=int)
