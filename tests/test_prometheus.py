"""The dashboards and alerts against a real Prometheus scraping a real gateway.

Debian's ``prometheus`` (``.ci/run`` installs it) scrapes the gateway every second on loopback and
evaluates ``deploy/prometheus/rules.yml``; after a scripted conversation every PromQL expression of
every dashboard panel and alert rule is run through Prometheus' HTTP query API.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.conftest import GatewayFactory, RunningGateway, unique
from tests.promql import RULES_FILE, all_expressions, metric_names

PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(
    PROMETHEUS is None, reason="no prometheus binary (Debian package `prometheus`; .ci/run installs it)"
)
SCRAPE_SECS = 1
# Panels that must show data after a conversation; alerts and error panels may rightly be empty.
CORE_METRICS = {
    "gateway_sessions_active",
    "gateway_sessions_total",
    "gateway_greeting_seconds_bucket",
    "gateway_greeting_seconds_count",
    "gateway_user_bot_latency_seconds_bucket",
    "gateway_ttfb_seconds_bucket",
    "gateway_llm_tokens_total",
    "gateway_memory_seconds_bucket",
    "gateway_memory_seconds_count",
    "gateway_ws_messages_total",
    "gateway_rejections_total",
    "gateway_build_info",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Prometheus:
    def __init__(self, url: str, http: aiohttp.ClientSession) -> None:
        self.url = url
        self.http = http

    async def get(self, path: str, **params: str) -> Any:
        async with self.http.get(f"{self.url}{path}", params=params) as resp:
            body = await resp.json()
        assert body["status"] == "success", body
        return body["data"]

    async def query(self, expr: str) -> list[dict[str, Any]]:
        data = await self.get("/api/v1/query", query=expr)
        result: list[dict[str, Any]] = data["result"]
        return result

    async def scrapes_after(self, count: int) -> None:
        """Wait until the gateway has been scraped ``count`` more times."""
        first = await self._scrapes()
        async with asyncio.timeout(30):
            while await self._scrapes() < first + count:
                await asyncio.sleep(SCRAPE_SECS / 4)

    async def _scrapes(self) -> float:
        result = await self.query('count_over_time(up{job="memory-gateway"}[1h])')
        return float(result[0]["value"][1]) if result else 0.0


@pytest.fixture
async def scraped(
    make_gateway: GatewayFactory, tmp_path: Path
) -> AsyncIterator[tuple[RunningGateway, Prometheus]]:
    gateway = await make_gateway(tenants=[{"name": unique("acme")}, {"name": unique("globex")}])
    port = _free_port()
    config = {
        "global": {"scrape_interval": f"{SCRAPE_SECS}s", "evaluation_interval": f"{SCRAPE_SECS}s"},
        "rule_files": [str(RULES_FILE)],
        "scrape_configs": [
            {
                "job_name": "memory-gateway",
                "static_configs": [{"targets": [f"127.0.0.1:{gateway.server.port}"]}],
            }
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    assert PROMETHEUS is not None
    proc = await asyncio.create_subprocess_exec(
        PROMETHEUS,
        f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with aiohttp.ClientSession() as http:
            async with asyncio.timeout(30):
                while True:
                    try:
                        async with http.get(f"http://127.0.0.1:{port}/-/ready") as resp:
                            if resp.status == 200:
                                break
                    except aiohttp.ClientConnectionError:
                        pass
                    await asyncio.sleep(0.1)
            prometheus = Prometheus(f"http://127.0.0.1:{port}", http)
            await prometheus.scrapes_after(1)
            yield gateway, prometheus
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)


async def _converse(gateway: RunningGateway, tenant: str, sessions: int) -> None:
    for n in range(sessions):
        client = await gateway.connect(tenant=tenant, user_id=f"scraped-user-{n}")
        await client.bot_turn()
        await client.say(f"I like number {n}")
        await client.ws.close()
    await gateway.start(tenant=tenant, key="mgw_not-a-key", user_id="x")
    await gateway.settle()


async def test_every_dashboard_and_alert_query_runs_and_core_panels_have_data(
    scraped: tuple[RunningGateway, Prometheus],
) -> None:
    gateway, prometheus = scraped
    acme, globex = list(gateway.keys)
    # Two rounds with scrapes between, so every counter has moved inside the rate() window.
    await _converse(gateway, acme, 2)
    await prometheus.scrapes_after(2)
    await _converse(gateway, acme, 2)
    await _converse(gateway, globex, 1)
    await prometheus.scrapes_after(2)

    empty_core = []
    for tenant in (".+", acme):
        for expression in all_expressions(rate_interval="1m", tenant=tenant):
            result = await prometheus.query(expression.expr)  # raises on any PromQL or evaluation error
            is_rule = expression.name.startswith(("alert ", "record "))
            if not result and not is_rule and metric_names(expression.expr) & CORE_METRICS:
                empty_core.append(f"{expression.source}: {expression.name}: {expression.expr}")
    assert not empty_core, "core panels without data:\n" + "\n".join(empty_core)


async def test_alert_rules_load_and_evaluate_without_errors(
    scraped: tuple[RunningGateway, Prometheus],
) -> None:
    gateway, prometheus = scraped
    await _converse(gateway, next(iter(gateway.keys)), 1)
    await prometheus.scrapes_after(2)

    groups = (await prometheus.get("/api/v1/rules"))["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    expected = {r.name.removeprefix("alert ") for r in all_expressions() if r.name.startswith("alert ")}
    assert {r["name"] for r in rules} == expected
    assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
    # A live gateway is up: the scrape-down alert stays quiet.
    scrape_down = next(r for r in rules if r["name"] == "GatewayScrapeDown")
    assert scrape_down["state"] == "inactive"


async def test_tenant_panels_show_only_the_selected_tenant(
    scraped: tuple[RunningGateway, Prometheus],
) -> None:
    gateway, prometheus = scraped
    acme, globex = list(gateway.keys)
    await _converse(gateway, acme, 1)
    await _converse(gateway, globex, 1)
    await prometheus.scrapes_after(2)

    result = await prometheus.query(f'sum by (tenant) (gateway_sessions_total{{tenant=~"{acme}"}})')
    assert [r["metric"]["tenant"] for r in result] == [acme]
