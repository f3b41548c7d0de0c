"""Shared fixtures: one embedded PostgreSQL, one embedder and one fake LLM per test run; a fresh
gateway (real aiohttp server on a loopback port 0) per test; a privacy audit over the whole run."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import tempfile
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("MEM0_TELEMETRY", "false")
os.environ.setdefault("MEM0_DIR", tempfile.mkdtemp(prefix="mem0-"))
os.environ.pop("OPENAI_API_KEY", None)

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import generate_latest
from pydantic import SecretStr

from gateway.app import create_app, server_options
from gateway.keys import backends_key, registry_key
from gateway.logging import configure_logging
from gateway.metrics import GatewayMetrics
from gateway.settings import Settings
from gateway.tenants import TenantConfig, TenantRegistry, hash_key, new_key
from memory.backends import MemoryBackends
from memory.embedder import load_wordllama
from memory.postgres import EmbeddedPostgres, prepare_database
from tests.audit import Audit
from tests.clients import WireClient, rtvi_client
from tests.fake_audio import FakeAudioAPI
from tests.fake_llm import FakeLLM
from tests.fake_twilio import FakeTwilioAPI

AUDIT_KEY = pytest.StashKey[Audit]()
AUDIT_LEVEL = os.environ.get("TEST_LOG_LEVEL", "INFO").upper()

# Pipecat raises its deprecations under the "always" filter (pipecat/utils/deprecation.py::warn_deprecated),
# so pyproject's filterwarnings never turns them into errors: pytest records them instead. Every recorded
# warning fails the run (pytest_sessionfinish) unless it is one of these, each a third-party one we cannot
# avoid.
EXPECTED_WARNINGS = (
    # Pipecat 1.14 subclasses its own deprecated AudioContextTTSService (AudioContextWordTTSService,
    # pipecat/services/tts_service.py) when pipecat.services.tts_service is imported.
    re.compile(r"^`AudioContextTTSService` is deprecated since 0\.0\.105"),
)


def pytest_configure(config: pytest.Config) -> None:
    """Log the whole run at INFO, as production does, into one file the audit reads at the end."""
    log_path = Path(tempfile.mkdtemp(prefix="mgw-log-")) / "gateway.jsonl"
    config.stash[AUDIT_KEY] = Audit(log_path)
    stream = log_path.open("a", encoding="utf-8", buffering=1)
    config.add_cleanup(stream.close)
    configure_logging("json", AUDIT_LEVEL, stream=stream)
    config.pluginmanager.register(StrayWarnings(), "stray-warnings")


class StrayWarnings:
    """Fails the run on a recorded warning (one that got past filterwarnings' "error") not expected."""

    def __init__(self) -> None:
        self.found: list[str] = []

    def pytest_warning_recorded(
        self, warning_message: warnings.WarningMessage, when: str, nodeid: str
    ) -> None:
        text = str(warning_message.message)
        if not any(expected.search(text) for expected in EXPECTED_WARNINGS):
            where = nodeid or f"{warning_message.filename}:{warning_message.lineno}"
            self.found.append(f"{where} ({when}): {warning_message.category.__name__}: {text}")

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if not self.found:
            return
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line("")
            reporter.write_sep(
                "=", "warnings that fail the run (tests/conftest.py::EXPECTED_WARNINGS)", red=True
            )
            for stray in self.found:
                reporter.write_line(stray, red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    audit = session.config.stash.get(AUDIT_KEY, None)
    if audit is None or AUDIT_LEVEL not in ("INFO", "WARNING", "ERROR") or not audit.secrets:
        return
    leaks = audit.leaks()
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    summary = (
        f"privacy audit: {len(audit.secrets)} registered values checked against "
        f"{audit.log_path} and {len(audit.metrics_pages)} metrics pages: {len(leaks)} leaks"
    )
    if reporter is not None:
        reporter.write_line(summary)
        for leak in leaks:
            reporter.write_line(f"  LEAK: {leak}", red=True)
    if leaks:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def audit(pytestconfig: pytest.Config) -> Audit:
    return pytestconfig.stash[AUDIT_KEY]


@pytest.fixture(scope="session")
def tmp_root() -> Path:
    # Short path: PostgreSQL's unix socket lives in the data dir and socket paths are limited to 107 bytes.
    return Path(tempfile.mkdtemp(prefix="mgw-"))


@pytest.fixture(scope="session")
def database_url(tmp_root: Path) -> Any:
    server = EmbeddedPostgres(tmp_root / "shared")
    url = server.start()
    prepare_database(url)
    yield url
    server.stop()


@pytest.fixture(scope="session")
def embed_model() -> Any:
    return load_wordllama()


@pytest.fixture(scope="session")
async def fake_llm() -> AsyncIterator[FakeLLM]:
    llm = FakeLLM()
    await llm.start()
    yield llm
    await llm.close()


@pytest.fixture(scope="session")
async def fake_audio() -> AsyncIterator[FakeAudioAPI]:
    """OpenAI's audio API (transcriptions, speech), local (tests/fake_audio.py)."""
    api = FakeAudioAPI()
    await api.start()
    yield api
    await api.close()


@pytest.fixture(scope="session")
async def twilio_api() -> AsyncIterator[FakeTwilioAPI]:
    """Twilio's REST API, as far as a hang-up goes (tests/fake_twilio.py)."""
    api = FakeTwilioAPI()
    await api.start()
    yield api
    await api.close()


TWILIO_AUTH_ENV = "MGW_TEST_TWILIO_AUTH_TOKEN"


@pytest.fixture
def auth_token(monkeypatch: pytest.MonkeyPatch, audit: Audit) -> str:
    """A Twilio Auth Token, in the variable phone tenants name (tests/phone.py)."""
    token = secrets.token_hex(16)
    monkeypatch.setenv(TWILIO_AUTH_ENV, token)
    audit.register("Twilio auth token", token)
    return token


def unique(prefix: str = "t") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


@dataclass
class RunningGateway:
    app: web.Application
    server: TestServer
    http: aiohttp.ClientSession
    metrics: GatewayMetrics
    keys: dict[str, str]
    tenant: str
    audit: Audit
    clients: list[WireClient] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    async def start(
        self, *, tenant: str | None = None, key: str | None = None, **body: Any
    ) -> aiohttp.ClientResponse:
        tenant = tenant or self.tenant
        headers = {"Authorization": f"Bearer {key if key is not None else self.keys[tenant]}"}
        for name in ("user_id", "agent_id", "run_id"):
            self.audit.register(name, body.get(name))
        resp = await self.http.post(
            f"{self.url}/start", json={"transport": "websocket", "body": body}, headers=headers
        )
        if resp.status == 200:
            self.audit.register("token", (await resp.json())["token"])
        return resp

    async def connect(self, serializer: str = "rtvi", tenant: str | None = None, **ids: Any) -> WireClient:
        resp = await self.start(tenant=tenant, serializer=serializer, **ids)
        assert resp.status == 200, await resp.text()
        ws = await self.http.ws_connect((await resp.json())["wsUrl"])
        client = await rtvi_client(
            ws, serializer, on_say=lambda text: self.audit.register("message text", text, 12)
        )
        self.clients.append(client)
        return client

    async def tell(self, text: str, **ids: Any) -> None:
        """One whole session in which the user says ``text``; returns once it is stored."""
        client = await self.connect(**ids)
        await client.bot_turn()
        await client.say(text)
        await client.ws.close()
        await self.settle()

    async def metrics_text(self) -> str:
        async with self.http.get(f"{self.url}/metrics") as resp:
            return await resp.text()

    def sample(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return float(value or 0.0)

    async def settle_sessions(self, live: int, timeout: float = 15.0) -> None:
        """Wait until exactly ``live`` sessions are running."""
        registry = self.app[registry_key]
        async with asyncio.timeout(timeout):
            while registry.held() != live:
                await asyncio.sleep(0.02)

    async def settle(self, timeout: float = 15.0) -> None:
        """Wait until no session is live and every memory write has landed."""
        registry = self.app[registry_key]
        backends = self.app[backends_key]
        async with asyncio.timeout(timeout):
            while len(registry.sessions) or registry.held() or backends.pending_writes():
                await asyncio.sleep(0.02)


GatewayFactory = Callable[..., Awaitable[RunningGateway]]


@pytest.fixture
async def make_gateway(
    tmp_root: Path, database_url: str, embed_model: Any, fake_llm: FakeLLM, audit: Audit
) -> AsyncIterator[GatewayFactory]:
    running: list[RunningGateway] = []

    async def factory(
        *,
        tenants: list[dict[str, Any]] | None = None,
        llm: bool = True,
        database: str | bool | None = True,
        tenants_file: bool = False,
        **overrides: Any,
    ) -> RunningGateway:
        """``tenants_file=True`` loads the tenants from a YAML file the gateway watches (reload tests)."""
        data_dir = tmp_root / unique("gw")
        specs = tenants or [{"name": unique("acme")}]
        keys: dict[str, str] = {}
        configs = []
        for spec in specs:
            key = new_key()
            audit.register("API key", key)
            keys[spec["name"]] = key
            spec = {**spec, "api_keys": [hash_key(key)]}
            if llm:
                spec.setdefault("llm", {"base_url": fake_llm.base_url, "model": "fake-model"})
            configs.append(TenantConfig.model_validate(spec))
        settings = Settings(
            data_dir=data_dir,
            database_url=database_url if database is True else (database or None),
            token_secret=SecretStr("x" * 48),
            **overrides,
        )
        metrics = GatewayMetrics()
        backends = MemoryBackends(
            data_dir=data_dir,
            database_url=settings.database_url,
            max_workers=settings.memory_workers,
            call_timeout=settings.memory_call_timeout_secs,
            observer=metrics,
            embed_model=embed_model,
            outbox_max_bytes=settings.outbox_max_bytes,
        )
        registry = TenantRegistry(configs)
        if tenants_file:
            registry.save(data_dir / "tenants.yaml")
            registry = TenantRegistry.load(data_dir / "tenants.yaml")
        app = create_app(settings, tenants=registry, metrics=metrics, backends=backends)
        server = TestServer(app, host="127.0.0.1", port=0)
        # TestServer drops keyword arguments it doesn't know; start_server hands them to the runner.
        await server.start_server(**server_options(settings))
        http = aiohttp.ClientSession()
        gw = RunningGateway(app, server, http, metrics, keys, specs[0]["name"], audit)
        running.append(gw)
        return gw

    yield factory
    for gw in running:
        for client in gw.clients:
            await client.ws.close()
        audit.metrics_pages.append(generate_latest(gw.metrics.registry).decode())
        await gw.http.close()
        await gw.server.close()


@pytest.fixture
async def gateway(make_gateway: GatewayFactory) -> RunningGateway:
    return await make_gateway()
