"""HUB_REDIS_URL in its three topologies: what is accepted, and one line for what is not."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.config import SettingsError, load_settings
from app.engine._redis_client import RedisTarget, parse_redis_url
from tests.test_config import SECRET, run_cli

PASSWORD = "s3cr%3At-pw"  # percent-encoded "s3cr:t-pw"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:6379/0", RedisTarget("single", "", False)),
        ("rediss://h/1", RedisTarget("single", "", True)),
        (
            "redis+sentinel://10.0.0.1:26379,10.0.0.2:26380,s3/hub/2",
            RedisTarget("sentinel", "", False,
                        (("10.0.0.1", 26379), ("10.0.0.2", 26380), ("s3", 26379)), "hub", 2),
        ),
        (
            f"rediss+sentinel://app:{PASSWORD}@[::1]:26379/my%20svc",
            RedisTarget("sentinel", "", True, (("::1", 26379),), "my svc", 0, "app", "s3cr:t-pw"),
        ),
        (
            f"REDIS+CLUSTER://:{PASSWORD}@a:7000,b:7001/",
            RedisTarget("cluster", "", False, (("a", 7000), ("b", 7001)), password="s3cr:t-pw"),
        ),
        ("rediss+cluster://a", RedisTarget("cluster", "", True, (("a", 6379),))),
    ],
)
def test_accepted_forms(url: str, expected: RedisTarget) -> None:
    target = parse_redis_url(url)
    assert target == RedisTarget(**{**expected.__dict__, "url": url})
    assert "s3cr" not in repr(target) and "s3cr" not in target.describe()


@pytest.mark.parametrize(
    "url",
    [
        "http://h:6379",
        "redis+sentinels://h:1/svc",
        "redis+sentinel://h:26379",  # no service
        "redis+sentinel://h:26379/",
        "redis+sentinel://h:26379/svc/x",
        "redis+sentinel://h:26379/svc/0/1",
        "redis+sentinel://h:port/svc",
        "redis+sentinel://h:0/svc",
        "redis+sentinel://h:1,,h:2/svc",
        f"redis+sentinel://u:{PASSWORD}@:1/svc",
        "redis+cluster://h:7000/0",
        "redis+cluster://h:7000?ssl_cert_reqs=none",
        "redis+cluster://h:99999",
        "redis+cluster://",
    ],
)
def test_refused_forms_say_one_line_naming_the_variable(url: str) -> None:
    with pytest.raises(ValueError, match=r"^HUB_REDIS_URL ") as info:
        parse_redis_url(url)
    assert "\n" not in str(info.value) and "s3cr" not in str(info.value)
    with pytest.raises(SettingsError) as refused:
        load_settings(redis_url=url, jwt_secret=SECRET)
    message = str(refused.value)
    assert message.startswith("HUB_REDIS_URL: ") and "\n" not in message, message
    assert "s3cr" not in message


def test_serve_refuses_a_bad_ha_url_with_one_line(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "serve", HUB_JWT_SECRET=SECRET,
                     HUB_REDIS_URL=f"redis+sentinel://u:{PASSWORD}@127.0.0.1:26379")
    assert result.returncode != 0
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "HUB_REDIS_URL" in lines[0], result.stderr
    assert "Traceback" not in result.stderr and "s3cr" not in result.stderr


def test_compose_sentinel_profile_matches_the_documented_url() -> None:
    """docker-compose.yml's ``sentinel`` profile: a replica and three sentinels watching the
    ``hub`` service on ``redis``, which the URL in its header comment names (and which parses)."""
    import re

    import yaml

    from tests.test_ops import ROOT

    text = (ROOT / "docker-compose.yml").read_text()
    services = yaml.safe_load(text)["services"]
    sentinels = {name: svc for name, svc in services.items() if name.startswith("sentinel-")}
    assert len(sentinels) == 3
    for svc in [*sentinels.values(), services["redis-replica"]]:
        assert svc["profiles"] == ["sentinel"]
    for svc in sentinels.values():
        assert "sentinel monitor hub redis 6379 2" in svc["command"][-1]
    assert services["redis-replica"]["command"][-5:-2] == ["--replicaof", "redis", "6379"]
    url = re.search(r"HUB_REDIS_URL=(\S+)", text)
    assert url is not None
    target = parse_redis_url(url.group(1))
    assert target.kind == "sentinel" and target.service == "hub"
    assert {f"{h}" for h, _ in target.hosts} == set(sentinels)
