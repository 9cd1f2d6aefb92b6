"""How the Redis engine stores the connection listings: one JSON string per connection (never a
token), read back leniently (a malformed entry is logged and skipped, never fatal to a listing).
"""

from __future__ import annotations

import json
from typing import Any

import structlog

from app.engine.base import ConnectionInfo

log = structlog.get_logger("app.engine")


def info_json(info: ConnectionInfo) -> str:
    # The fields by hand: dataclasses.asdict copies recursively and was most of the cost of a
    # renewal (every live connection's info is sent with its lease).
    return _ENCODER.encode({
        "conn_id": info.conn_id, "sub": info.sub, "endpoint": info.endpoint,
        "client_ip": info.client_ip, "worker": info.worker, "connected_at": info.connected_at,
        "tenant": info.tenant,
    })


_ENCODER = json.JSONEncoder(separators=(",", ":"))


def parse_infos(reply: Any) -> list[ConnectionInfo]:
    rows = []
    for raw in reply or []:
        try:
            body = json.loads(raw)
            rows.append(
                ConnectionInfo(
                    conn_id=str(body["conn_id"]),
                    sub=str(body["sub"]),
                    endpoint=str(body["endpoint"]),
                    client_ip=str(body["client_ip"]),
                    worker=str(body["worker"]),
                    connected_at=float(body["connected_at"]),
                    tenant=str(body.get("tenant") or ""),
                )
            )
        except (ValueError, KeyError, TypeError):
            log.warning("engine.bad_connection_info")
    return rows
