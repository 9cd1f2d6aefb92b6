"""Schema migrations (Alembic) applied from code: ``hubctl migrate`` calls :func:`upgrade`.

Guarantees: works from any working directory (the scripts are found next to the ``app``
package, in ``alembic/``); for SQLite the database file's directory is created if missing; no
logging configuration is touched (the ini file's logging sections are only read by the
``alembic`` command line). Call from synchronous code only, not from inside a running event
loop: Alembic's ``env.py`` runs its own loop (use ``asyncio.to_thread`` from async code).
"""

from __future__ import annotations

from pathlib import Path

from alembic.command import downgrade as _downgrade
from alembic.command import upgrade as _upgrade
from alembic.config import Config
from alembic.script import ScriptDirectory

import app
from app.store.db import ensure_sqlite_directory

SCRIPT_LOCATION = Path(app.__file__).resolve().parents[1] / "alembic"


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


def head_revision() -> str | None:
    """The latest revision of the scripts (what ``upgrade`` goes to by default)."""
    return ScriptDirectory.from_config(make_config("sqlite://")).get_current_head()
