"""The app factory's lifespan (app.main): what it does to the process while the hub runs."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

from app.config import load_settings
from app.main import create_app
from app.store.migrate import upgrade
from tests.conftest import SECRET


async def test_the_startup_heap_is_frozen_while_the_hub_runs_and_released_after(tmp_path: Path) -> None:
    # Frozen, the modules, the app and the runtime stay out of every full collection, which
    # then walks only what connections allocate (a fan-out stalled ~140 ms without it).
    url = f"sqlite+aiosqlite:///{tmp_path / 'hub.db'}"
    await asyncio.to_thread(upgrade, url, "head")
    app = create_app(load_settings(jwt_secret=SECRET, database_url=url))
    assert gc.get_freeze_count() == 0
    async with app.router.lifespan_context(app):
        assert app.state.runtime.engine.name == "embedded"
        assert gc.get_freeze_count() > 10_000
    assert gc.get_freeze_count() == 0
