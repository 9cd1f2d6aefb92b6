"""The browser console (/console) in a real headless Chromium against a real hub.

Needs the system Chromium at /usr/bin/chromium (Debian: ``apt-get install -y chromium``; .ci/run
installs it). Driven with Playwright's Python package on that executable: no browser download.
The test fails, never skips, when the browser is missing.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
import websockets

from hubclient import connect_agent
from tests.conftest import make_token
from tests.support.server import ROOT, HubProcess

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
OPERATOR = ["dashboard", "operator"]

pytestmark = pytest.mark.slow

if TYPE_CHECKING:
    from playwright.async_api import BrowserContext, Page


@pytest.fixture
async def context(tmp_path: Path) -> AsyncIterator[BrowserContext]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium)")
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.fail("the playwright package is missing: pip install -e '.[dev]' (no browser download needed)")
    async with async_playwright() as playwright:
        browser_context = await playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),  # a fresh --user-data-dir
            executable_path=str(CHROMIUM),
            headless=True,
            args=FLAGS,
            viewport={"width": 1280, "height": 860},
        )
        try:
            yield browser_context
        finally:
            await browser_context.close()


class Console:
    """The page, with the browser's console messages kept (CSP violations show up there)."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.messages: list[str] = []
        page.on("console", lambda message: self.messages.append(message.text))

    @classmethod
    async def open(cls, context: BrowserContext, hub: HubProcess) -> Console:
        page = context.pages[0] if context.pages else await context.new_page()
        console = cls(page)
        response = await page.goto(f"{hub.http}/console")
        assert response is not None and response.status == 200
        return console

    async def connect(self, token: str) -> None:
        await self.page.fill("#token", token)
        await self.page.click("#connect")

    async def wait_text(self, selector: str, text: str, timeout: float = 10_000) -> None:
        await self.page.wait_for_function(
            "([selector, text]) => (document.querySelector(selector)?.textContent || '').includes(text)",
            arg=[selector, text], timeout=timeout,
        )

    def assert_no_csp_violation(self) -> None:
        violations = [m for m in self.messages if "Content Security Policy" in m or "Refused to" in m]
        assert not violations, violations


@pytest.fixture
def hubctl_agent(hub: HubProcess) -> Iterator[subprocess.Popen[bytes]]:
    """`hubctl agent` as a subprocess against the shared hub (its key comes from the hub's env)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "agent", "--url", hub.url, "--sub", "console-agent",
         "--events-every", "0.5"],
        cwd=hub.workdir, env={**hub.env, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    yield process
    process.terminate()
    process.wait(10)


def test_console_headers_are_strict(hub: HubProcess) -> None:
    page = httpx.get(f"{hub.http}/console")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = {d.strip().split(" ", 1)[0]: d.strip().split(" ", 1)[1] for d in page.headers["content-security-policy"].split(";")}
    assert csp == {
        "default-src": "'none'", "script-src": "'self'", "style-src": "'self'", "connect-src": "'self'",
        "img-src": "'none'", "base-uri": "'none'", "form-action": "'none'", "frame-ancestors": "'none'",
    }
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "no-referrer"
    # No inline script or style anywhere in the page: only same-origin files (the console module,
    # which imports the client's bundle).
    html = page.text
    assert '<script type="module" src="/console/console.js">' in html and "<style" not in html and " style=" not in html
    assert html.count("<script") == 1 and not re.search(r"\son[a-z]+\s*=", html)  # no handler attributes
    assert 'from "./hub-client.js"' in httpx.get(f"{hub.http}/console/console.js").text
    for asset, kind in (("console.js", "text/javascript"), ("hub-client.js", "text/javascript"),
                        ("console.css", "text/css")):
        response = httpx.get(f"{hub.http}/console/{asset}")
        assert response.status_code == 200 and response.headers["content-type"].startswith(kind)
        assert response.headers["content-security-policy"] == page.headers["content-security-policy"]
        assert response.headers["x-content-type-options"] == "nosniff"
    script = httpx.get(f"{hub.http}/console/console.js").text + httpx.get(f"{hub.http}/console/hub-client.js").text
    for sink in (".innerHTML", ".outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in script, sink


async def test_console_sees_an_agent_sends_a_command_and_shows_the_result(
    context: BrowserContext, hub: HubProcess, hubctl_agent: subprocess.Popen[bytes]
) -> None:
    console = await Console.open(context, hub)
    await console.connect(make_token("console-op", OPERATOR))
    await console.wait_text("#status", "connected")
    # The subprotocol transport was used: the hub selected hub.v1 (the page is connected, and a
    # page cannot send an Authorization header). The agent from `hubctl agent` comes online...
    row = 'tr[data-agent="console-agent"]'
    await console.wait_text(row, "online", timeout=20_000)
    # ...and its events arrive live.
    await console.wait_text("#events", "console-agent", timeout=10_000)
    await console.wait_text(row, '"seq"')
    await console.page.fill("#command-agent", "console-agent")
    await console.page.fill("#command-payload", '{"op": "hello", "n": 42}')
    await console.page.click("#send")
    await console.wait_text("#command-result", '"echo"')
    result = await console.page.text_content("#command-result")
    assert result is not None and '"op": "hello"' in result and '"host"' in result
    await console.wait_text("#command-status", "Result from console-agent")
    await console.wait_text(row, '"seq":3')
    ARTIFACTS.mkdir(exist_ok=True)
    await console.page.screenshot(path=str(ARTIFACTS / "console.png"), full_page=True)
    # docs/console.png (the README's picture) is refreshed from this artifact by hand, so that a
    # test run never leaves the work tree changed.

    # What agents send is shown as text, never parsed as HTML (ids, payloads).
    evil_sub = '<img id="evil-sub" src=x>'
    async with connect_agent(hub.url, _provider(evil_sub)) as evil:
        await evil.emit({"html": '<b id="evil-payload">bold</b>'})
        await console.wait_text("#events", 'evil-payload')
    assert await console.page.locator("#evil-sub").count() == 0
    assert await console.page.locator("#evil-payload").count() == 0
    await console.wait_text("#agents", evil_sub)

    hubctl_agent.terminate()
    await asyncio.to_thread(hubctl_agent.wait, 10)
    await console.wait_text(row, "offline")
    console.assert_no_csp_violation()


def _provider(sub: str) -> Callable[[], Awaitable[str]]:
    async def provider() -> str:
        return make_token(sub, ["agent"])

    return provider


async def test_console_explains_an_expired_token(context: BrowserContext, hub: HubProcess) -> None:
    console = await Console.open(context, hub)
    await console.connect(make_token("console-late", OPERATOR, ttl=-30))
    await console.wait_text("#notice", "Your token has expired — paste a new one")
    await console.wait_text("#status", "disconnected")
    console.assert_no_csp_violation()


async def test_console_refreshes_in_band_past_the_first_tokens_expiry(
    context: BrowserContext, hub: HubProcess
) -> None:
    console = await Console.open(context, hub)
    await console.connect(make_token("console-refresh", OPERATOR, ttl=4))
    await console.wait_text("#status", "connected")
    # The hub warns at once (its warning time is longer than the token's life).
    await console.wait_text("#notice", "paste a new one to stay connected")
    connection = await console.page.get_attribute("#status", "data-connection")
    assert connection
    await console.page.fill("#token", make_token("console-refresh", OPERATOR, ttl=300))
    await console.page.click("#connect")  # labelled "Refresh token" while connected
    await console.wait_text("#notice", "Token refreshed")
    await asyncio.sleep(6)  # past the first token's expiry
    assert await console.page.text_content("#status") == "connected"
    assert await console.page.get_attribute("#status", "data-connection") == connection
    assert "expired" not in (await console.page.text_content("#notice") or "")
    console.assert_no_csp_violation()


async def test_console_stops_on_a_final_refusal_4403(context: BrowserContext, hub: HubProcess) -> None:
    console = await Console.open(context, hub)
    # An agent's token on the dashboard: refused role_forbidden, read by the page as close 4403.
    await console.connect(make_token("console-wrong-role", ["agent"]))
    await console.wait_text("#notice", "Your token's roles do not allow the dashboard")
    assert await console.page.get_attribute("#status", "data-close") == "4403 role_forbidden"
    await asyncio.sleep(2)  # several backoff periods: a final refusal is never retried
    assert await console.page.text_content("#status") == "disconnected"
    attempts = [line for line in hub.log_text().splitlines()
                if "auth_failed" in line and "console-wrong-role" in line]
    assert len(attempts) == 1, attempts
    console.assert_no_csp_violation()


async def test_console_waits_for_its_operator_on_connection_limit_4429(
    context: BrowserContext, start_hub: Callable[..., HubProcess]
) -> None:
    limited = start_hub({"HUB_MAX_CONNECTIONS_PER_USER": "1"}, name="console-limit")
    console = await Console.open(context, limited)
    token = make_token("console-one-slot", OPERATOR)
    async with websockets.connect(f"{limited.url}/ws/dashboard",
                                  additional_headers={"Authorization": f"Bearer {token}"}) as other_tab:
        await other_tab.recv()  # welcome: the user's only slot is taken
        await console.connect(token)
        await console.wait_text("#notice", "You already have the maximum number of connections open")
        assert await console.page.get_attribute("#status", "data-close") == "4429 connection_limit"
        assert await console.page.text_content("#status") == "disconnected"
    # The slot is free once the hub has seen the tab's close (not when the client's close
    # returns); then the operator connects on purpose.
    admin = {"Authorization": f"Bearer {make_token('console-admin', ['admin'])}"}
    async with httpx.AsyncClient(base_url=limited.http, headers=admin, timeout=10) as client:
        for _ in range(100):
            listed = await client.get("/admin/connections", params={"sub": "console-one-slot"})
            assert listed.status_code == 200, listed.text
            if not listed.json():
                break
            await asyncio.sleep(0.05)
        assert not listed.json(), "the closed tab's slot was not released"
    await console.connect(token)
    await console.wait_text("#status", "connected")
    console.assert_no_csp_violation()


async def test_console_asks_for_a_new_token_when_the_session_expires_4401(
    context: BrowserContext, hub: HubProcess
) -> None:
    console = await Console.open(context, hub)
    await console.connect(make_token("console-expiring", OPERATOR, ttl=3))
    await console.wait_text("#status", "connected")
    await console.wait_text("#notice", "Your token has expired — paste a new one", timeout=15_000)
    assert await console.page.get_attribute("#status", "data-close") == "4401 token_expired"
    assert await console.page.text_content("#status") == "disconnected"
    console.assert_no_csp_violation()


FLEET = 1000


async def test_console_watches_a_thousand_agents(
    context: BrowserContext, start_hub: Callable[..., HubProcess]
) -> None:
    # Default settings: the presence of a thousand agents comes as presence.snapshot batches.
    fleet_hub = start_hub(name="console-fleet")
    url = f"{fleet_hub.url}/ws/agent"
    semaphore = asyncio.Semaphore(100)

    async def agent(i: int) -> websockets.ClientConnection:
        async with semaphore:
            ws = await websockets.connect(url, open_timeout=30, ping_interval=None, additional_headers={
                "Authorization": f"Bearer {make_token(f'fleet-{i:04d}', ['agent'])}"})
            await ws.recv()  # welcome
            return ws

    agents = await asyncio.gather(*(agent(i) for i in range(FLEET)))
    try:
        console = await Console.open(context, fleet_hub)
        await console.connect(make_token("console-fleet-op", OPERATOR))
        await console.wait_text("#agent-count", f"{FLEET} online of {FLEET}", timeout=60_000)
        assert await console.page.locator("#agents tbody tr").count() == FLEET
        await agents[7].close()
        await console.wait_text("#agent-count", f"{FLEET - 1} online of {FLEET}", timeout=20_000)
        await console.wait_text('tr[data-agent="fleet-0007"]', "offline")
        assert await console.page.text_content("#status") == "connected"
        ARTIFACTS.mkdir(exist_ok=True)
        await console.page.screenshot(path=str(ARTIFACTS / "console-fleet.png"))
        console.assert_no_csp_violation()
    finally:
        await asyncio.gather(*(ws.close() for ws in agents), return_exceptions=True)
