"""Demo mode over real sockets: the gateway stands in for a tenant's backend, each browser one user by cookie.

Each ``Browser`` is an HTTP client with a cookie jar of its own, as two browsers would be. The browser
itself (Chromium running the demo page and Pipecat's prebuilt UI) is in tests/test_browser.py.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.settings import Settings
from gateway.web import prebuilt
from gateway.web.demo import COOKIE, USER_PATTERN
from tests.clients import WireClient
from tests.conftest import GatewayFactory, RunningGateway, unique

GENERIC = "nice to meet you"


@dataclass
class Browser:
    """One browser: its own cookies, talking to the gateway only as a page on it would."""

    http: aiohttp.ClientSession
    gateway: RunningGateway

    @property
    def user(self) -> str | None:
        cookie = self.http.cookie_jar.filter_cookies(self.gateway.server.make_url("/")).get(COOKIE)
        return cookie.value if cookie is not None else None

    async def open_page(self) -> aiohttp.ClientResponse:
        resp = await self.http.get(f"{self.gateway.url}/demo/")
        if self.user is not None:
            self.gateway.audit.register("user_id", self.user)
        return resp

    async def start(
        self, path: str = "/demo/start", body: Any = None, **headers: str
    ) -> aiohttp.ClientResponse:
        resp = await self.http.post(
            f"{self.gateway.url}{path}", json=body if body is not None else {}, headers=headers
        )
        if self.user is not None:
            self.gateway.audit.register("user_id", self.user)
        if resp.status == 200:
            self.gateway.audit.register("token", (await resp.json())["token"])
        return resp

    async def connect(self, path: str = "/demo/start") -> WireClient:
        resp = await self.start(path)
        assert resp.status == 200, await resp.text()
        session = await resp.json()
        ws = await self.http.ws_connect(session["wsUrl"])
        client = WireClient(ws, "protobuf")
        self.gateway.clients.append(client)
        return client

    async def greeting(self) -> str:
        client = await self.connect()
        greeting = await client.bot_turn()
        await client.ws.close()
        return greeting

    async def tell(self, text: str) -> None:
        client = await self.connect()
        await client.bot_turn()
        self.gateway.audit.register("message text", text, 12)
        await client.say(text)
        await client.ws.close()
        await self.gateway.settle()

    async def memories(self, method: str = "GET", **headers: str) -> aiohttp.ClientResponse:
        return await self.http.request(method, f"{self.gateway.url}/demo/memories", headers=headers)


@pytest.fixture
async def demo(make_gateway: GatewayFactory) -> RunningGateway:
    name = unique("demo")
    return await make_gateway(tenants=[{"name": name}], demo=True, demo_tenant=name)


@pytest.fixture
async def browsers(demo: RunningGateway) -> AsyncIterator[list[Browser]]:
    sessions = [aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) for _ in range(2)]
    yield [Browser(http, demo) for http in sessions]
    for http in sessions:
        await http.close()


async def test_the_demo_page_gives_each_browser_a_user_of_its_own_in_an_httponly_cookie(
    browsers: list[Browser],
) -> None:
    first, second = browsers
    resp = await first.open_page()
    assert resp.status == 200 and "Demo mode" in await resp.text()
    set_cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in set_cookie and "SameSite=Lax" in set_cookie and "Path=/" in set_cookie
    assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
    assert first.user is not None and USER_PATTERN.fullmatch(first.user)

    assert "Set-Cookie" not in (await first.open_page()).headers  # the same user on every visit
    await second.open_page()
    assert second.user is not None and second.user != first.user


async def test_a_demo_start_greets_the_cookie_user_and_the_next_one_names_what_they_said(
    browsers: list[Browser],
) -> None:
    first, second = browsers
    await first.open_page()
    await second.open_page()
    assert GENERIC in (await first.greeting()).lower()
    await first.tell("my boat is called Nimbus")
    assert "Nimbus" in await first.greeting()
    assert GENERIC in (await second.greeting()).lower()  # another browser, another user


async def test_a_demo_start_hands_the_browser_a_session_and_never_the_tenant_key(
    demo: RunningGateway, browsers: list[Browser]
) -> None:
    resp = await browsers[0].start()
    assert resp.status == 200
    session = await resp.json()
    assert set(session) == {"wsUrl", "token", "sessionId"}
    assert session["wsUrl"].startswith(f"ws://127.0.0.1:{demo.server.port}/ws-client/")
    assert demo.keys[demo.tenant] not in await resp.text() + str(resp.headers)
    assert resp.headers["Cache-Control"] == "no-store"
    assert browsers[0].user is not None  # a browser that starts before opening the page gets its user here


async def test_post_start_without_a_key_is_the_demo_start_as_pipecats_prebuilt_ui_posts_it(
    browsers: list[Browser],
) -> None:
    """The prebuilt UI posts ``/start`` with ``{"transport": "websocket"}`` and no key, then connects to
    ``wsUrl`` with ``?token=`` appended."""
    browser = browsers[0]
    resp = await browser.start("/start", {"transport": "websocket"})
    assert resp.status == 200, await resp.text()
    session = await resp.json()
    ws = await browser.http.ws_connect(f"{session['wsUrl']}?token={session['token']}")
    client = WireClient(ws, "protobuf")
    browser.gateway.clients.append(client)
    assert GENERIC in (await client.bot_turn()).lower()


async def test_a_demo_start_for_another_transport_is_400(
    demo: RunningGateway, browsers: list[Browser]
) -> None:
    """The prebuilt UI's default choice is SmallWebRTC: it is told why that cannot work."""
    resp = await browsers[0].start("/start", {"transport": "webrtc"})
    assert resp.status == 400
    assert (await resp.json()) == {"error": "transport must be 'websocket'"}
    assert demo.sample("gateway_rejections_total", tenant=demo.tenant, reason="bad_request") == 1


async def test_the_demo_lists_and_forgets_the_cookie_users_memories_only(
    demo: RunningGateway, browsers: list[Browser]
) -> None:
    first, second = browsers
    for browser, fact in ((first, "I grow tomatoes"), (second, "I keep bees")):
        await browser.open_page()
        await browser.tell(fact)

    listed = await (await first.memories()).json()
    assert [m["memory"] for m in listed["results"] if m["role"] == "user"] == ["I grow tomatoes"]
    assert first.user is not None and first.user not in str(listed)  # the user's credential: never echoed

    forgotten = await first.memories("DELETE")
    assert forgotten.status == 200 and (await forgotten.json())["deleted"] >= 1
    assert (await (await first.memories()).json())["count"] == 0
    assert GENERIC in (await first.greeting()).lower()
    kept = await (await second.memories()).json()
    assert [m["memory"] for m in kept["results"] if m["role"] == "user"] == ["I keep bees"]


@pytest.mark.parametrize(
    ("method", "path"), [("POST", "/demo/start"), ("POST", "/start"), ("DELETE", "/demo/memories")]
)
async def test_demo_requests_from_another_site_are_403(
    demo: RunningGateway, browsers: list[Browser], method: str, path: str
) -> None:
    """Another page cannot start sessions for, or erase, a visitor's demo user."""
    await browsers[0].open_page()
    resp = await browsers[0].http.request(
        method, f"{demo.url}{path}", json={}, headers={"Origin": "https://evil.example"}
    )
    assert resp.status == 403
    assert (await resp.json()) == {"error": "cross-site request"}
    assert demo.sample("gateway_rejections_total", tenant=demo.tenant, reason="origin_not_allowed") == 1


async def test_demo_memories_without_a_demo_cookie_are_401(
    demo: RunningGateway, browsers: list[Browser]
) -> None:
    resp = await browsers[0].memories()
    assert resp.status == 401
    assert demo.sample("gateway_rejections_total", tenant=demo.tenant, reason="unauthorized") == 1


async def test_a_disabled_demo_tenant_is_403(make_gateway: GatewayFactory) -> None:
    name = unique("demo")
    gateway = await make_gateway(tenants=[{"name": name, "status": "disabled"}], demo=True, demo_tenant=name)
    async with aiohttp.ClientSession() as http:
        resp = await http.post(f"{gateway.url}/demo/start", json={})
    assert resp.status == 403
    assert gateway.sample("gateway_rejections_total", tenant=name, reason="tenant_disabled") == 1


async def test_without_demo_mode_there_is_no_demo_and_start_needs_a_key(gateway: RunningGateway) -> None:
    for path in ("/", "/demo/", "/client/", "/demo/memories"):
        async with gateway.http.get(f"{gateway.url}{path}") as resp:
            assert resp.status == 404, path
    async with gateway.http.post(f"{gateway.url}/start", json={"transport": "websocket"}) as resp:
        assert resp.status == 401


def test_demo_mode_is_on_by_default_only_for_the_embedded_defaults_on_loopback(tmp_path: Path) -> None:
    assert Settings(data_dir=tmp_path).demo_enabled
    assert Settings(data_dir=tmp_path, host="::1").demo_enabled
    assert not Settings(data_dir=tmp_path, database_url="postgresql://db/x").demo_enabled
    assert not Settings(data_dir=tmp_path, tenants_file=tmp_path / "tenants.yaml").demo_enabled
    assert not Settings(data_dir=tmp_path, host="0.0.0.0").demo_enabled
    assert Settings(
        data_dir=tmp_path, host="0.0.0.0", database_url="postgresql://db/x", demo=True
    ).demo_enabled
    assert not Settings(data_dir=tmp_path, demo=False).demo_enabled


async def test_pipecats_prebuilt_ui_is_served_at_client_with_every_file_it_loads(
    demo: RunningGateway, browsers: list[Browser]
) -> None:
    http = browsers[0].http
    async with http.get(f"{demo.url}/client", allow_redirects=False) as resp:
        assert resp.status == 302 and resp.headers["Location"] == "/client/"
    async with http.get(f"{demo.url}/client/") as resp:
        assert resp.status == 200 and resp.content_type == "text/html"
        index = await resp.text()
    assert '<div id="root">' in index
    dist = prebuilt.dist_dir()
    assert dist is not None
    linked = re.findall(r'(?:src|href)="\./([^"]+)"', index)
    assert linked and all((dist / name).is_file() for name in linked)
    for path in sorted(p for p in dist.rglob("*") if p.is_file()):
        async with http.get(f"{demo.url}/client/{path.relative_to(dist).as_posix()}") as resp:
            assert resp.status == 200, path
            assert await resp.read() == path.read_bytes()
