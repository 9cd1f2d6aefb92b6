"""``hubctl``: run the hub, mint tokens, migrate the database."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from app import cli_admin
from app.config import HMAC_ALGORITHMS, Settings, SettingsError, load_settings
from app.logs import configure_logging
from app.tokens import TokenVerifier


def _settings(**overrides: object) -> Settings:
    try:
        return load_settings(**{k: v for k, v in overrides.items() if v is not None})
    except SettingsError as exc:
        print(f"hubctl: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_serve(args: argparse.Namespace) -> int:
    from app import preflight
    from app.serve import serve

    settings = _settings(host=args.host, port=args.port, workers=args.workers)
    try:
        # Load the keys once here so that a bad key file is one line, not a worker's traceback.
        TokenVerifier.from_settings(settings)
    except ValueError as exc:
        print(f"hubctl: configuration error: {exc}", file=sys.stderr)
        return 2
    preflight.run(settings)
    configure_logging(settings.log_level, settings.log_format)
    serve(settings)
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    from app.tokens import mint

    settings = _settings()
    if args.private_key_file:
        key: str | bytes = Path(args.private_key_file).read_bytes()
        algorithm = args.algorithm or next(
            (a for a in settings.jwt_algorithms if a not in HMAC_ALGORITHMS), "RS256"
        )
    else:
        if settings.jwt_secret is None:
            print("hubctl: HUB_JWT_SECRET is not set (or pass --private-key-file)", file=sys.stderr)
            return 2
        key = settings.jwt_secret.get_secret_value().encode()
        algorithm = args.algorithm or next(
            (a for a in settings.jwt_algorithms if a in HMAC_ALGORITHMS), "HS256"
        )
    token = mint(
        key,
        algorithm,
        args.sub,
        args.role or [],
        args.ttl,
        tenant=args.tenant,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        kid=args.kid,
    )
    print(token)
    return 0


def _mint(sub: str, roles: list[str], ttl: float, tenant: str | None) -> str:
    """A token from the configured HMAC key, for ``hubctl agent`` / ``hubctl watch``."""
    from app.tokens import mint

    settings = _settings()
    if settings.jwt_secret is None:
        raise SystemExit("hubctl: HUB_JWT_SECRET is not set")
    algorithm = next((a for a in settings.jwt_algorithms if a in HMAC_ALGORITHMS), "HS256")
    return mint(settings.jwt_secret.get_secret_value().encode(), algorithm, sub, roles, ttl, tenant=tenant,
                issuer=settings.jwt_issuer, audience=settings.jwt_audience)


def cmd_migrate(args: argparse.Namespace) -> int:
    from app.preflight import StartupError, migrate

    settings = _settings()
    configure_logging(settings.log_level, settings.log_format)
    try:
        migrate(settings.database_url)
    except StartupError as exc:
        print(f"hubctl: {exc}", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hubctl", description=__doc__)
    verbs = parser.add_subparsers(dest="verb", required=True)

    serve = verbs.add_parser("serve", help="run the hub (uvicorn, options from the settings)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int)
    serve.set_defaults(func=cmd_serve)

    token = verbs.add_parser("token", help="mint an access token from the configured key")
    token.add_argument("--sub", required=True)
    token.add_argument("--role", action="append", help="repeatable: agent, dashboard, operator, admin")
    token.add_argument("--ttl", type=float, default=3600.0, help="seconds (default 3600)")
    token.add_argument("--tenant")
    token.add_argument("--kid")
    token.add_argument("--algorithm")
    token.add_argument("--private-key-file", help="PEM private key for RS*/ES* tokens")
    token.set_defaults(func=cmd_token)

    from hubclient.cli import add_parsers as add_client_verbs

    add_client_verbs(verbs, _mint)
    migrate = verbs.add_parser("migrate", help="apply database migrations to HUB_DATABASE_URL")
    migrate.set_defaults(func=cmd_migrate)

    cli_admin.add_parsers(verbs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "admin", False):
        return cli_admin.run(args, _settings())
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
