"""Checks that need no server: the Lua sources and the Redis engine's argument checks."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from app.engine.base import ConnectionInfo
from app.engine.redis import RedisEngine
from app.engine.redis_infos import info_json, parse_infos
from app.engine.redis_scripts import SCRIPTS, load_script


async def test_prefix_with_braces_is_refused() -> None:
    with pytest.raises(ValueError, match="prefix"):
        RedisEngine("redis://127.0.0.1:1/0", prefix="a{b}", worker_id="w1")


@pytest.mark.parametrize("name", SCRIPTS)
def test_lua_headers_document_every_key_and_argument(name: str) -> None:
    source = load_script(name)
    header = "\n".join(line for line in source.splitlines() if line.startswith("--"))
    body = "\n".join(line for line in source.splitlines() if not line.startswith("--"))
    assert source.startswith(f"-- {name}.lua:")
    assert "Returns" in header
    for ref in set(re.findall(r"(?:KEYS|ARGV)\[\d+\]", body)):
        assert ref in header, f"{name}.lua uses {ref} without documenting it"


def test_the_stored_connection_info_holds_every_field() -> None:
    """info_json lists the fields by hand (for speed): a field added to ConnectionInfo must be
    stored too, and read back the same."""
    info = ConnectionInfo(conn_id="c1", sub="alice", endpoint="/ws/agent", client_ip="10.0.0.1",
                          worker="w1", connected_at=1700000000.25, tenant="acme")
    assert json.loads(info_json(info)) == dataclasses.asdict(info)
    assert parse_infos([info_json(info)]) == [info]
