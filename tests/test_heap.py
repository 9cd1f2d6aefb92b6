"""The worker's garbage-collector policy (app.heap), applied by the app's lifespan (app.main)."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

from app.config import load_settings
from app.heap import THRESHOLDS, worker_heap
from app.main import create_app
from app.store.migrate import upgrade
from tests.conftest import SECRET


def test_the_policy_freezes_the_heap_raises_the_thresholds_and_restores_both() -> None:
    before = gc.get_threshold()
    assert gc.get_freeze_count() == 0
    with worker_heap():
        assert gc.get_freeze_count() > 10_000
        assert gc.get_threshold() == THRESHOLDS
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == before


async def test_the_lifespan_applies_it_while_the_hub_runs(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'hub.db'}"
    await asyncio.to_thread(upgrade, url, "head")
    app = create_app(load_settings(jwt_secret=SECRET, database_url=url))
    async with app.router.lifespan_context(app):
        assert app.state.runtime.engine.name == "embedded"
        assert gc.get_threshold() == THRESHOLDS
        assert gc.get_freeze_count() > 10_000
    assert gc.get_freeze_count() == 0
