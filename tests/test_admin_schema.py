"""A property-based sweep of the admin API from its own OpenAPI document: whatever the path,
query and body, a real server never answers 500."""

from __future__ import annotations

import copy
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import make_token
from tests.support.server import HubProcess

ADMIN = make_token("schema-admin", ["admin"], ttl=3600)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)


def from_schema(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values that fit ``schema`` (the subset FastAPI emits), often enough near its edges."""
    if "anyOf" in schema:
        return st.one_of([from_schema(option) for option in schema["anyOf"]])
    kind = schema.get("type")
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        return st.integers(schema.get("minimum", -(2**40)), schema.get("maximum", 2**40))
    if kind == "string":
        if schema.get("format") == "date-time":
            return st.datetimes(timezones=st.just(__import__("datetime").UTC)).map(lambda d: d.isoformat())
        return st.text(min_size=schema.get("minLength", 0), max_size=schema.get("maxLength", 300))
    if kind == "array":
        return st.lists(from_schema(schema.get("items", {})), max_size=3)
    if kind == "object":
        properties = schema.get("properties", {})
        required = set(schema.get("required", []))
        return st.fixed_dictionaries(
            {k: from_schema(v) for k, v in properties.items() if k in required},
            optional={k: from_schema(v) for k, v in properties.items() if k not in required},
        )
    return JSON


def _resolve(node: Any, components: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        if "$ref" in node:
            return _resolve(copy.deepcopy(components[node["$ref"].rsplit("/", 1)[1]]), components)
        return {k: _resolve(v, components) for k, v in node.items() if k not in {"examples", "example"}}
    if isinstance(node, list):
        return [_resolve(v, components) for v in node]
    return node


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    components = document.get("components", {}).get("schemas", {})
    return [
        (method.upper(), path, _resolve(operation, components))
        for path, item in document["paths"].items() if path.startswith("/admin")
        for method, operation in item.items()
    ]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from tests.conftest import BASE_ENV

    hub = HubProcess(dict(BASE_ENV), tmp_path_factory.mktemp("schema"), name="schema").start()
    yield hub
    hub.kill()


def test_every_admin_operation_is_described(server: HubProcess) -> None:
    document = httpx.get(f"{server.http}/openapi.json").json()
    found = {(m, p) for m, p, _ in _operations(document)}
    assert found == {
        ("GET", "/admin/connections"), ("POST", "/admin/users/{sub}/disconnect"),
        ("GET", "/admin/bans"), ("POST", "/admin/bans"), ("DELETE", "/admin/bans/{ban_id}"),
        ("GET", "/admin/revocations"), ("POST", "/admin/revocations"),
        ("GET", "/admin/security-events"), ("GET", "/admin/audit"),
    }
    schemes = document["components"]["securitySchemes"]
    assert any(s.get("scheme") == "bearer" for s in schemes.values())


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_no_input_makes_the_admin_api_fail(server: HubProcess, data: st.DataObject) -> None:
    document = httpx.get(f"{server.http}/openapi.json").json()
    method, path, operation = data.draw(st.sampled_from(_operations(document)))
    url, params = path, {}
    for parameter in operation.get("parameters", []):
        schema = parameter.get("schema", {})
        value = data.draw(from_schema(schema) | st.text(max_size=40), label=parameter["name"])
        if parameter["in"] == "path":
            url = url.replace("{" + parameter["name"] + "}", quote(str(value), safe="") or "x")
        elif value is not None:
            params[parameter["name"]] = str(value)
    body = None
    if "requestBody" in operation:
        schema = operation["requestBody"]["content"]["application/json"]["schema"]
        # Keep generated bans away from loopback: a ban of 127.0.0.0/8 would lock the test out.
        body = data.draw(from_schema(schema) | JSON, label="body")
        if isinstance(body, dict) and isinstance(body.get("cidr"), str):
            body["cidr"] = "198.51.100.0/24" if body["cidr"].startswith(("0", "127", ":")) else body["cidr"]
    response = httpx.request(method, f"{server.http}{url}", params=params, json=body,
                             headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10)
    assert response.status_code < 500, (method, url, params, body, response.text)
