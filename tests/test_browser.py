"""First contact in a real browser: Debian's Chromium, driven by Playwright, against a real gateway.

Chromium is ``/usr/bin/chromium`` (Debian's package; ``.ci/run`` installs it), headless, with fake media
devices; nothing downloads a browser. The gateway runs in demo mode on a loopback port, with the fake
LLM and the test PostgreSQL. Screenshots go to ``tests/artifacts/<test>/`` (not committed).

Every page is watched as a user's browser would show it: console errors and uncaught exceptions are
collected, and so is every request, so "no CDN" is checked, not assumed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pipecat.frames.protobufs import frames_pb2
from playwright.async_api import (
    Browser,
    ConsoleMessage,
    Page,
    Playwright,
    WebSocket,
    async_playwright,
    expect,
)

from tests.conftest import GatewayFactory, RunningGateway, unique
from tests.fake_llm import FakeLLM
from tests.faults import TcpProxy, tcp_proxy

CHROMIUM = "/usr/bin/chromium"
# Headless on a machine with no internet and no screen: no background or component traffic, no sandbox
# (root in a container), fake camera and microphone that need no permission prompt.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-quic",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
]
ARTIFACTS = Path(__file__).parent / "artifacts"
TIMEOUT_MS = 15_000
GENERIC = "nice to meet you"

expect.set_options(timeout=TIMEOUT_MS)

pytestmark = pytest.mark.skipif(
    shutil.which(CHROMIUM) is None,
    reason="no /usr/bin/chromium (Debian package `chromium`; .ci/run installs it)",
)


@pytest.fixture(scope="module")
async def playwright() -> AsyncIterator[Playwright]:
    async with async_playwright() as p:
        yield p


@pytest.fixture(scope="module")
async def chromium(playwright: Playwright) -> AsyncIterator[Browser]:
    browser = await playwright.chromium.launch(
        executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True, chromium_sandbox=False, timeout=60_000
    )
    yield browser
    await browser.close()


@dataclass
class Watched:
    """A page and what the browser saw: console errors, uncaught exceptions, requests, WebSocket traffic."""

    page: Page
    shots: Path
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    sockets: list[str] = field(default_factory=list)
    received: list[dict[str, Any]] = field(default_factory=list)

    def watch(self) -> None:
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda error: self.errors.append(f"pageerror: {error}"))
        self.page.on("request", lambda request: self.requests.append(request.url))
        self.page.on("websocket", self._socket)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(f"console: {message.text}")

    def _socket(self, socket: WebSocket) -> None:
        self.sockets.append(socket.url)
        socket.on("framereceived", self._frame)

    def _frame(self, payload: str | bytes) -> None:
        """RTVI messages from the gateway, in order (protobuf ``message`` frames)."""
        if isinstance(payload, str):
            return
        frame = frames_pb2.Frame.FromString(payload)  # type: ignore[attr-defined]
        if frame.WhichOneof("frame") == "message":
            self.received.append(json.loads(frame.message.data))

    async def shot(self, name: str) -> None:
        self.shots.mkdir(parents=True, exist_ok=True)
        await self.page.screenshot(path=self.shots / f"{name}.png")

    def foreign_requests(self, origin: str) -> list[str]:
        return [url for url in self.requests if not url.startswith((origin, origin.replace("http", "ws", 1)))]


@pytest.fixture
async def watched(chromium: Browser, request: pytest.FixtureRequest) -> AsyncIterator[Watched]:
    context = await chromium.new_context(viewport={"width": 1200, "height": 560})
    context.set_default_timeout(TIMEOUT_MS)
    page = await context.new_page()
    seen = Watched(page, ARTIFACTS / re.sub(r"\W+", "_", request.node.name))
    seen.watch()
    yield seen
    with contextlib.suppress(Exception):
        await seen.shot("last")
    await context.close()


@pytest.fixture
async def demo(make_gateway: GatewayFactory) -> RunningGateway:
    name = unique("demo")
    return await make_gateway(tenants=[{"name": name}], demo=True, demo_tenant=name)


class DemoPage:
    """The demo page, used through what a person sees and clicks."""

    def __init__(self, seen: Watched, url: str) -> None:
        self.seen = seen
        self.page = seen.page
        self.url = url

    async def open(self) -> None:
        await self.page.goto(f"{self.url}/demo/")
        await expect(self.page.locator("#demo-banner")).to_contain_text("not for production")

    async def connect(self) -> str:
        """Press Connect; the first bot line, once complete."""
        count = await self.page.locator("#transcript li.bot").count()
        await self.page.click("#connect")
        await expect(self.page.locator("#status")).to_have_attribute("data-state", "ready")
        return await self.bot_line(count)

    async def bot_line(self, index: int) -> str:
        """The ``index``-th bot line, once its turn has ended."""
        line = self.page.locator("#transcript li.bot").nth(index)
        await expect(line).to_have_attribute("data-complete", "true")
        return await line.inner_text()

    async def say(self, text: str) -> str:
        count = await self.page.locator("#transcript li.bot").count()
        await self.page.fill("#message", text)
        await self.page.press("#message", "Enter")
        return await self.bot_line(count)

    async def remembered(self) -> str:
        return await self.page.locator("#memories").inner_text()

    async def until_remembered(self, text: str) -> None:
        """Press Refresh until the panel shows ``text`` (memory writes land just after the turn)."""
        async with asyncio.timeout(TIMEOUT_MS / 1000):
            while text not in await self.remembered():
                await self.page.click("#refresh")
                await asyncio.sleep(0.2)


async def test_the_demo_page_greets_remembers_and_forgets_with_zero_console_errors(
    demo: RunningGateway, watched: Watched
) -> None:
    """Connect → generic greeting → a fact → reload → connect → the greeting names it → forget me →
    reload → connect → generic again. Nothing on the console, nothing from anywhere but the gateway."""
    page = DemoPage(watched, demo.url)
    await page.open()
    assert GENERIC in (await page.connect()).lower()
    fact = "my boat is called Nimbus"
    assert await page.say(fact) == f"I heard: {fact}"
    await page.until_remembered(fact)
    await watched.shot("1-conversation")

    await watched.page.reload()
    greeting = await page.connect()
    assert "your boat is called Nimbus" in greeting, greeting  # said back in the second person
    await watched.shot("2-remembered")

    await watched.page.click("#forget")
    await expect(watched.page.locator("#forget-result")).to_contain_text("Forgotten")
    await expect(watched.page.locator("#memories-empty")).to_be_visible()
    await watched.shot("3-forgotten")
    await watched.page.reload()
    assert GENERIC in (await page.connect()).lower()

    assert watched.errors == [], watched.requests
    assert watched.foreign_requests(demo.url) == []
    assert len(watched.sockets) == 3


async def test_bot_ready_precedes_the_greeting_in_the_browser(demo: RunningGateway, watched: Watched) -> None:
    page = DemoPage(watched, demo.url)
    await page.open()
    await page.connect()
    types = [message.get("type") for message in watched.received]
    assert "bot-ready" in types and "bot-llm-started" in types, types
    assert types.index("bot-ready") < types.index("bot-llm-started"), types


async def test_pipecats_prebuilt_ui_at_client_connects_over_websocket_and_is_greeted(
    demo: RunningGateway, watched: Watched
) -> None:
    """Open ``/client/``, choose WebSocket, Connect: the greeting appears in its conversation panel."""
    page = watched.page
    await page.goto(f"{demo.url}/client/")
    await page.get_by_role("combobox", name="Transport").click()
    await page.get_by_role("option", name="WebSocket").click()
    await page.get_by_role("button", name="Connect").first.click()
    greeting = page.get_by_text(re.compile(GENERIC, re.IGNORECASE))
    cdn = page.get_by_text("Failed to load call object bundle")
    await expect(greeting.or_(cdn).first).to_be_visible()
    await watched.shot("prebuilt")
    if await cdn.count():
        pytest.xfail(
            "pipecat-ai-prebuilt 1.3.0's WebSocket transport uses Daily's media manager, which loads "
            "c.daily.co/call-machine/…/call-machine-object-bundle.js; with no internet it never posts /start"
        )
    assert watched.errors == []


@pytest.fixture
async def proxied(demo: RunningGateway) -> AsyncIterator[TcpProxy]:
    """The demo gateway behind a TCP proxy: pages opened at ``proxied.url`` get a ``wsUrl`` through it."""
    assert demo.server.port is not None
    async with tcp_proxy(demo.server.port) as proxy:
        yield proxy


async def until(condition: Any, timeout: float = TIMEOUT_MS / 1000) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.05)


async def test_the_demo_page_connects_again_with_the_same_url_and_token_after_a_network_drop(
    proxied: TcpProxy, watched: Watched
) -> None:
    """A socket reset (no close frame: 1006) is not the user's or the gateway's doing: the page calls
    ``connect()`` again with the ``{wsUrl, token}`` it has, which is all a browser app has."""
    page = DemoPage(watched, proxied.url)
    await page.open()
    await page.connect()
    proxied.drop()
    await until(lambda: len(watched.sockets) >= 2)
    assert watched.sockets[1] == watched.sockets[0]


async def test_the_demo_page_resumes_its_conversation_after_a_network_drop(
    proxied: TcpProxy, watched: Watched, fake_llm: FakeLLM
) -> None:
    """After the drop the same session goes on: no second greeting, the earlier turn still in the LLM's
    context, the next turn answered."""
    page = DemoPage(watched, proxied.url)
    await page.open()
    await page.connect()
    assert await page.say("remember the word marmalade") == "I heard: remember the word marmalade"
    proxied.drop()
    await until(lambda: len(watched.sockets) >= 2)
    settled = "['ready', 'disconnected'].includes(document.querySelector('#status').dataset.state)"
    await watched.page.wait_for_function(f"() => {settled}")
    assert await watched.page.locator("#status").get_attribute("data-state") == "ready"
    assert await page.say("what was the word?") == "I heard: what was the word?"
    said = [m.get("content") for m in fake_llm.requests[-1]["messages"] if m.get("role") == "user"]
    assert "remember the word marmalade" in said, said
    assert await watched.page.locator("#transcript li.bot").count() == 3  # one greeting, two replies
