"""The Alembic migrations: empty -> head -> base on both back ends, and they match the models."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from app.store import migrate as migrate_module
from app.store.migrate import SCRIPT_LOCATION, downgrade, head_revision, upgrade
from app.store.models import Base
from tests.store.conftest import migrate

TABLES = {"security_events", "ip_bans", "revocations", "admin_audit"}
INDEXES = {
    "security_events": {
        "ix_security_events_at",
        "ix_security_events_code",
        "ix_security_events_claimed_sub",
        "ix_security_events_verified_sub",
    },
    "ip_bans": {"ix_ip_bans_expires_at"},
    "revocations": {"ix_revocations_sub", "ix_revocations_expires_at"},
    "admin_audit": {"ix_admin_audit_at", "ix_admin_audit_actor", "ix_admin_audit_tenant",
                    "ix_admin_audit_action"},
}


def _schema(conn: Connection) -> dict[str, Any]:
    insp = inspect(conn)
    tables = set(insp.get_table_names())
    return {
        "tables": tables,
        "indexes": {t: {ix["name"] for ix in insp.get_indexes(t)} for t in tables & TABLES},
        "version": (
            conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalars().all()
            if "alembic_version" in tables
            else None
        ),
    }


def _diff(conn: Connection) -> list[Any]:
    return list(compare_metadata(MigrationContext.configure(conn), Base.metadata))


async def _inspect(url: str, fn: Any = _schema) -> Any:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(fn)
    finally:
        await engine.dispose()


async def test_upgrade_from_empty_to_head_then_down_to_base(database_url: str) -> None:
    before = await _inspect(database_url)
    assert not before["tables"] & TABLES

    await migrate(database_url)
    after = await _inspect(database_url)
    assert after["tables"] >= TABLES
    for table, names in INDEXES.items():
        assert names <= after["indexes"][table], table
    assert after["version"] == [head_revision()]

    await asyncio.to_thread(downgrade, database_url)
    gone = await _inspect(database_url)
    assert not gone["tables"] & TABLES
    assert gone["version"] in (None, [])

    # And up again: the downgrade left nothing behind that would get in the way.
    await migrate(database_url)
    assert (await _inspect(database_url))["tables"] >= TABLES


async def test_the_audit_migration_goes_up_and_down_alone(database_url: str) -> None:
    """0014 adds admin_audit to a database at 0013 and takes it away again, leaving the rest."""
    await migrate(database_url, "0013_tenant_and_count")
    assert "admin_audit" not in (await _inspect(database_url))["tables"]
    await migrate(database_url, "0014_admin_audit")
    up = await _inspect(database_url)
    assert "admin_audit" in up["tables"] and up["version"] == ["0014_admin_audit"]
    assert INDEXES["admin_audit"] <= up["indexes"]["admin_audit"]
    await asyncio.to_thread(downgrade, database_url, "0013_tenant_and_count")
    down = await _inspect(database_url)
    assert "admin_audit" not in down["tables"] and down["version"] == ["0013_tenant_and_count"]
    assert {"security_events", "ip_bans", "revocations"} <= down["tables"]


async def test_upgrade_is_idempotent(database_url: str) -> None:
    await migrate(database_url)
    await migrate(database_url)
    assert (await _inspect(database_url))["version"] == [head_revision()]


async def test_migrations_match_the_models(database_url: str) -> None:
    await migrate(database_url)
    assert await _inspect(database_url, _diff) == []


async def test_works_from_any_cwd_and_creates_the_sqlite_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    url = "sqlite+aiosqlite:///./var/nested/hub.db"  # relative to the cwd, like the default
    await asyncio.to_thread(upgrade, url)
    assert (elsewhere / "var" / "nested" / "hub.db").is_file()
    assert (await _inspect(url))["tables"] >= TABLES


def test_script_location_is_the_repository_alembic_dir() -> None:
    assert SCRIPT_LOCATION.is_absolute()
    assert (SCRIPT_LOCATION / "env.py").is_file()
    assert Path(__file__).resolve().parents[2] / "alembic" == SCRIPT_LOCATION
    assert head_revision() is not None


def test_url_with_percent_survives_the_config_parser() -> None:
    url = "postgresql+asyncpg://u:p%40ss@localhost/db"
    config = migrate_module.make_config(url)
    assert config.get_main_option("sqlalchemy.url") == url
    assert config.attributes["database_url"] == url
