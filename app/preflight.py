"""Start-up checks: what must hold before the hub serves, each failure one line for the operator.

``hubctl serve`` runs :func:`check` in its own process before uvicorn starts any worker, so a
database that is unreachable or not migrated is one line and exit status 2, not a worker's
traceback. Every worker checks the database again as it starts (:func:`wait_for_database`), which
covers plain ``uvicorn app.main:app`` too.

Decisions:

* Production never migrates implicitly. In development (``HUB_ENV=development``, what ``make run``
  writes) a SQLite database that is behind is migrated here, as ``hubctl migrate`` would.
* An unreachable Redis is not fatal: the hub starts, refuses handshakes with ``unavailable`` and
  answers ``/readyz`` with 503 while it retries on every handshake, then recovers by itself. The
  check only says so, in one warning line.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.config import Settings
from app.logs import get_logger
from app.store.migrate import current_revision, schema_problem, upgrade

DATABASE_TIMEOUT_SECONDS = 10.0
WORKER_PATIENCE_SECONDS = 60.0

log = get_logger("app.preflight")


class StartupError(Exception):
    """The hub cannot start; ``str()`` is one line naming the setting and what to do.
    ``migratable``: running the migrations would fix it; ``unreachable``: waiting might."""

    def __init__(self, message: str, *, migratable: bool = False, unreachable: bool = False) -> None:
        super().__init__(message)
        self.migratable = migratable
        self.unreachable = unreachable


def describe(exc: BaseException) -> str:
    """An exception as ``Type: first line``, the driver's own error rather than SQLAlchemy's
    wrapper (whose text carries SQL and a link)."""
    inner: BaseException = getattr(exc, "orig", None) or exc
    if inner.__cause__ is not None and type(inner).__module__.startswith("sqlalchemy"):
        inner = inner.__cause__  # the asyncpg dialect wraps the driver's error once more
    first = (str(inner).strip().splitlines() or [""])[0][:200]
    return f"{type(inner).__name__}: {first}" if first else type(inner).__name__


def safe_database_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


async def verify_database(engine: AsyncEngine, url: str) -> None:
    """Raise :class:`StartupError` unless the database answers and is at the code's head
    revision."""
    try:
        async with asyncio.timeout(DATABASE_TIMEOUT_SECONDS):
            current = await current_revision(engine)
    except Exception as exc:  # any driver error: the operator needs its name, not a traceback
        raise StartupError(
            f"HUB_DATABASE_URL: cannot reach the database at {safe_database_url(url)} ({describe(exc)})",
            unreachable=True,
        ) from None
    problem = schema_problem(current)
    if problem:
        raise StartupError(f"HUB_DATABASE_URL: {problem}", migratable="hubctl migrate" in problem)


async def wait_for_database(
    engine: AsyncEngine, url: str, *, patience: float = WORKER_PATIENCE_SECONDS
) -> None:
    """:func:`verify_database`, retried for up to ``patience`` seconds while the database does not
    answer; a schema problem is raised at once.

    For a worker: uvicorn stops the whole server when a worker it respawned (after a crash) fails to
    start, so a worker that meets a database outage waits it out instead of taking every other
    worker down with it. It does not serve meanwhile: without its bans and revocations it must not.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience
    delay = 0.5
    while True:
        try:
            await verify_database(engine, url)
            return
        except StartupError as exc:
            if not exc.unreachable or loop.time() + delay > deadline:
                raise
            log.warning("hub.waiting_for_database", reason=str(exc), retry_in=delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)


def _sqlite_file_missing(url: str) -> bool:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return False
    return not parsed.database.startswith("file:") and not Path(parsed.database).exists()


async def _check_database(url: str) -> None:
    if _sqlite_file_missing(url):
        # Connecting would create an empty file; "no schema yet" is the honest answer.
        raise StartupError("HUB_DATABASE_URL: the database has no schema yet: run `hubctl migrate`",
                           migratable=True)
    engine = create_async_engine(url)
    try:
        await verify_database(engine, url)
    finally:
        await engine.dispose()


def migrate(url: str) -> None:
    """``hubctl migrate``: apply the migrations, or :class:`StartupError` in one line."""
    try:
        upgrade(url)
    except Exception as exc:  # the driver's or Alembic's error, named for the operator
        raise StartupError(
            f"HUB_DATABASE_URL: cannot migrate the database at {safe_database_url(url)} ({describe(exc)})"
        ) from None


async def _redis_answers(settings: Settings) -> bool:
    from app.engine import create_engine

    engine = create_engine(settings.redis_url, prefix=settings.redis_prefix, worker_id="preflight")
    try:
        return await engine.ping()
    finally:
        await engine.close()


def check(settings: Settings) -> list[str]:
    """Run the start-up checks; return warnings (one line each), raise :class:`StartupError`.

    Call from synchronous code, before the server starts (it runs its own event loops, and
    Alembic's environment runs one too).
    """
    warnings: list[str] = []
    url = settings.database_url
    try:
        asyncio.run(_check_database(url))
    except StartupError as exc:
        if not (exc.migratable and settings.env == "development"
                and make_url(url).get_backend_name() == "sqlite"):
            raise
        migrate(url)
        warnings.append("HUB_DATABASE_URL: development mode: migrated the SQLite database to the "
                        "current schema")
    if settings.redis_url and not asyncio.run(_redis_answers(settings)):
        warnings.append(
            "HUB_REDIS_URL: Redis does not answer; serving anyway and retrying on every handshake: "
            "handshakes are refused `unavailable` and /readyz answers 503 until it does"
        )
    return warnings


def run(settings: Settings) -> None:
    """:func:`check` for ``hubctl serve``: warnings to stderr, an error exits with status 2."""
    try:
        for line in check(settings):
            print(f"hubctl: warning: {line}", file=sys.stderr)
    except StartupError as exc:
        print(f"hubctl: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
