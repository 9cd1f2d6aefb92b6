"""Schema migrations (Alembic) applied from code: ``hubctl migrate`` calls :func:`upgrade`.

Guarantees: works from any working directory and from an installed wheel (the scripts ship as
``app/migrations``; in a checkout they are the top-level ``alembic/``); for SQLite the database
file's directory is created if missing; no logging configuration is touched (the ini file's
logging sections are only read by the ``alembic`` command line). Call from synchronous code
only, not from inside a running event loop: Alembic's ``env.py`` runs its own loop (use
``asyncio.to_thread`` from async code).
"""

from __future__ import annotations

from pathlib import Path

from alembic.command import downgrade as _downgrade
from alembic.command import upgrade as _upgrade
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

import app
from app.store.db import ensure_sqlite_directory

_PACKAGE = Path(app.__file__).resolve().parent
# Installed: inside the package. From a checkout (tests, `make run`): the repository's alembic/.
SCRIPT_LOCATION = next(
    (path for path in (_PACKAGE / "migrations", _PACKAGE.parent / "alembic") if (path / "env.py").is_file()),
    _PACKAGE / "migrations",
)


VERSION_TABLE = "alembic_version"


def make_config(database_url: str) -> Config:
    """An Alembic configuration for ``database_url``, built without an ini file."""
    if not (SCRIPT_LOCATION / "env.py").is_file():
        raise RuntimeError(f"Alembic scripts not found in {SCRIPT_LOCATION}")
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    config.set_main_option("path_separator", "os")
    # ConfigParser interpolation: a literal % (URL-escaped passwords) must be doubled.
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    config.attributes["database_url"] = database_url
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Migrate the database up to ``revision`` (default: the latest)."""
    ensure_sqlite_directory(database_url)
    _upgrade(make_config(database_url), revision)


def downgrade(database_url: str, revision: str = "base") -> None:
    """Migrate the database down to ``revision`` (default: empty, every table dropped)."""
    ensure_sqlite_directory(database_url)
    _downgrade(make_config(database_url), revision)


def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(make_config("sqlite://"))


def head_revision() -> str | None:
    """The latest revision of the scripts (what ``upgrade`` goes to by default)."""
    return _scripts().get_current_head()


async def current_revision(engine: AsyncEngine) -> str | None:
    """The revision the database is at (None: never migrated). Raises what connecting raises."""

    def read(connection: Connection) -> str | None:
        # Read directly: Alembic's MigrationContext logs two INFO lines per look.
        if not inspect(connection).has_table(VERSION_TABLE):
            return None
        revisions = connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
        return ",".join(sorted(revisions)) or None

    async with engine.connect() as connection:
        return await connection.run_sync(read)


def schema_problem(current: str | None) -> str | None:
    """What is wrong with a database at revision ``current`` for this code, as one line naming
    the command that fixes it; None when it is at the head revision."""
    scripts = _scripts()
    head = scripts.get_current_head()
    if current == head:
        return None
    if current is None:
        return "the database has no schema yet: run `hubctl migrate`"
    if current not in {script.revision for script in scripts.walk_revisions()}:
        return (f"the database is at revision {current}, which this version of the hub does not "
                "know (migrated by a newer version?)")
    return f"the database schema is at revision {current}, this version needs {head}: run `hubctl migrate`"
