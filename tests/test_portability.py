"""Import and export: ``POST /v1/memories`` and ``memory-gateway memories export|import`` (JSONL) —
validated, bounded, idempotent, durable, and never across tenants."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.keys import backends_key, registry_key, settings_key, tenants_key
from memory.outbox import Outbox
from memory.portability import ImportedMemory
from memory.scope import MemoryScope
from memory.tenant import TenantMemory
from tests.conftest import GatewayFactory, RunningGateway, unique
from tests.fake_mem0 import FakeMem0
from tests.test_tenant_admin import _run_cli

WHEN = "2025-03-01T09:30:00+01:00"


def _headers(gateway: RunningGateway, tenant: str | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {gateway.keys[tenant or gateway.tenant]}"}


async def _post(gateway: RunningGateway, body: Any, tenant: str | None = None) -> tuple[int, dict[str, Any]]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with gateway.http.post(
        f"{gateway.url}/v1/memories",
        data=data,
        headers={**_headers(gateway, tenant), "Content-Type": "application/json"},
    ) as resp:
        return resp.status, await resp.json()


async def _listed(gateway: RunningGateway, user: str, tenant: str | None = None) -> list[dict[str, Any]]:
    async with gateway.http.get(
        f"{gateway.url}/v1/memories?user_id={user}", headers=_headers(gateway, tenant)
    ) as resp:
        assert resp.status == 200
        results: list[dict[str, Any]] = (await resp.json())["results"]
        return results


async def _backend(gateway: RunningGateway, tenant: str | None = None) -> TenantMemory:
    config = gateway.app[tenants_key].require(tenant or gateway.tenant)
    return await gateway.app[backends_key].for_tenant(config.name, config.memory)


async def _memories_cli(
    database_url: str, action: str, tenant: str, data_dir: Path, *argv: str
) -> tuple[int | None, str, str]:
    """``memory-gateway memories ACTION --tenant T …`` as a process of its own, on the tests' PostgreSQL."""
    env = {"GATEWAY_DATABASE_URL": database_url}
    return await _run_cli("memories", action, "--tenant", tenant, "--data-dir", str(data_dir), *argv, env=env)


async def test_posted_memories_are_stored_as_given(gateway: RunningGateway) -> None:
    memories = [
        {
            "text": "my dog is called Biscuit",
            "role": "user",
            "user_id": "ada",
            "agent_id": "bot",
            "created_at": WHEN,
        },
        {"text": "Biscuit sounds lovely!", "role": "assistant", "user_id": "ada", "agent_id": "bot"},
        # mem0's get_all item (open-source or the platform): "memory", no role (a fact), extra fields.
        {"memory": "Ada lives in Lyon", "user_id": "ada", "id": "m-1", "hash": "x", "categories": ["home"]},
    ]
    status, answer = await _post(gateway, {"memories": memories})
    assert (status, answer) == (200, {"accepted": 3, "duplicates": 0, "expired": 0, "landed": True})

    listed = {m["memory"]: m for m in await _listed(gateway, "ada")}
    assert set(listed) == {"my dog is called Biscuit", "Biscuit sounds lovely!", "Ada lives in Lyon"}
    assert listed["my dog is called Biscuit"]["created_at"] == "2025-03-01T08:30:00+00:00"  # kept, in UTC
    assert listed["my dog is called Biscuit"]["agent_id"] == "bot"
    assert listed["Ada lives in Lyon"]["role"] is None
    backend = await _backend(gateway)
    found = await backend.search(
        MemoryScope(gateway.tenant, user_id="ada"), "where does ada live?", limit=3, threshold=0.0
    )
    assert found[0]["memory"] == "Ada lives in Lyon"


async def test_posting_the_same_memories_again_stores_them_once(gateway: RunningGateway) -> None:
    body = {
        "memories": [
            {"text": f"fact {i}", "role": "user", "user_id": "ada", "created_at": WHEN} for i in range(5)
        ]
    }
    assert (await _post(gateway, body))[0] == 200
    status, answer = await _post(gateway, body)
    assert (status, answer["accepted"]) == (200, 5)
    assert sorted(m["memory"] for m in await _listed(gateway, "ada")) == [f"fact {i}" for i in range(5)]


async def test_one_invalid_item_refuses_the_request_and_writes_nothing(gateway: RunningGateway) -> None:
    good = {"text": "fine", "user_id": "ada"}
    cases = [
        ({"text": "no ids"}, "memories[1]: at least one of user_id, agent_id or run_id is required"),
        ({"text": "x", "user_id": "other/ada"}, "memories[1]: user_id must be 1-128 characters"),
        ({"text": "   ", "user_id": "ada"}, "memories[1]: text is empty"),
        (
            {"text": "x", "user_id": "ada", "role": "system"},
            "memories[1]: role must be user, assistant or null",
        ),
        (
            {"text": "x", "user_id": "ada", "created_at": "yesterday"},
            "memories[1]: created_at must be an ISO 8601",
        ),
        (
            {"text": "x", "user_id": "ada", "created_at": "2999-01-01T00:00:00Z"},
            "memories[1]: created_at is in the future",
        ),
        (
            {"text": "x", "user_id": "ada", "metadata": {"user_id": "bob"}},
            "memories[1]: metadata may not set user_id",
        ),
        ({"text": "x" * 20_000, "user_id": "ada"}, "memories[1]: text is longer than 16384 bytes"),
        ({"text": "lone \ud800", "user_id": "ada"}, "memories[1]: text is not valid Unicode"),
        ({"text": "x", "user_id": "ada", "metadata": {"k": "\ud800"}}, "memories[1]: metadata is not valid"),
        (
            {"text": "x", "user_id": "ada", "metadata": {"k": "nul\x00"}},
            "memories[1]: metadata may not contain NUL",
        ),
    ]
    for bad, message in cases:
        status, answer = await _post(gateway, {"memories": [good, bad]})
        assert status == 400 and answer["error"].startswith(message), answer
    for body in (b"{not json", b"[]", b'{"memories": []}', b'{"memories": "x"}', b"1" * 5000):
        assert (await _post(gateway, body))[0] == 400
    assert await _listed(gateway, "ada") == []
    assert (
        gateway.sample("gateway_rejections_total", tenant=gateway.tenant, reason="bad_request")
        == len(cases) + 5
    )


async def test_requests_over_the_bounds_are_refused_before_parsing(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(import_max_items=3, import_max_bytes=16 * 1024)
    four = {"memories": [{"text": f"m{i}", "user_id": "ada"} for i in range(4)]}
    status, answer = await _post(gateway, four)
    assert status == 413 and "at most 16384 bytes and 3 memories" in answer["error"]
    big = json.dumps({"memories": [{"text": "y" * 9000, "user_id": "ada"}] * 2}).encode()
    assert (await _post(gateway, big))[0] == 413

    async def chunks() -> Any:  # no Content-Length: the bound is enforced while reading
        for _ in range(4):
            yield b" " * 8192

    async with gateway.http.post(
        f"{gateway.url}/v1/memories", data=chunks(), headers=_headers(gateway)
    ) as resp:
        assert resp.status == 413
    assert gateway.sample("gateway_rejections_total", tenant=gateway.tenant, reason="payload_too_large") == 3
    assert await _listed(gateway, "ada") == []


async def test_an_import_never_reaches_another_tenant(make_gateway: GatewayFactory) -> None:
    acme, globex = unique("acme"), unique("globex")
    gateway = await make_gateway(tenants=[{"name": acme}, {"name": globex}])
    assert (await _post(gateway, {"memories": [{"text": "acme's ada", "user_id": "ada"}]}, tenant=acme))[
        0
    ] == 200
    assert await _listed(gateway, "ada", tenant=globex) == []
    status, _ = await _post(
        gateway, {"memories": [{"text": "sneaky", "user_id": f"{acme}/ada"}]}, tenant=globex
    )
    assert status == 400
    assert [m["memory"] for m in await _listed(gateway, "ada", tenant=acme)] == ["acme's ada"]


async def test_an_import_that_would_fill_the_outbox_is_refused_whole(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(outbox_max_bytes=64 * 1024)  # an import may use half: 32 KiB
    body = {"memories": [{"text": "z" * 10_000 + str(i), "user_id": "ada"} for i in range(4)]}
    status, answer = await _post(gateway, body)
    assert (status, answer["error"]) == (503, "memory writes are backed up; retry later")
    assert gateway.sample("gateway_rejections_total", tenant=gateway.tenant, reason="memory_busy") == 1
    assert await _listed(gateway, "ada") == []
    assert (await _post(gateway, {"memories": body["memories"][:2]}))[0] == 200


async def test_memories_past_the_tenants_retention_are_not_imported(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(
        tenants=[{"name": unique("ret"), "memory": {"retention": {"turns_days": 30}}}]
    )
    old = (datetime.now(UTC) - timedelta(days=31)).isoformat()
    body = {
        "memories": [
            {"text": "old", "role": "user", "user_id": "ada", "created_at": old},
            {"text": "new", "role": "user", "user_id": "ada"},
        ]
    }
    status, answer = await _post(gateway, body)
    assert (status, answer["accepted"], answer["expired"]) == (200, 1, 1)
    assert [m["memory"] for m in await _listed(gateway, "ada")] == ["new"]


async def test_a_platform_tenant_refuses_imports(
    make_gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    cloud = FakeMem0()
    await cloud.start()
    try:
        env = f"MEM0_KEY_{unique('T').upper()}"
        monkeypatch.setenv(env, "m0-key")
        cloud.keys.add("m0-key")
        memory = {"backend": "platform", "api_key_env": env, "host": cloud.host}
        gateway = await make_gateway(tenants=[{"name": unique("cloud"), "memory": memory}])
        status, answer = await _post(gateway, {"memories": [{"text": "x", "user_id": "ada"}]})
        assert (status, answer["error"]) == (400, "bulk import needs memory.backend pgvector")
        assert not [op for op, _ in cloud.requests if op == "add"]
    finally:
        await cloud.close()


async def test_a_draining_gateway_refuses_imports(gateway: RunningGateway) -> None:
    gateway.app[registry_key].begin_drain()
    status, _ = await _post(gateway, {"memories": [{"text": "x", "user_id": "ada"}]})
    assert status == 503
    assert gateway.sample("gateway_rejections_total", tenant="unknown", reason="draining") == 1


async def test_export_then_import_copies_a_users_memories_to_another_tenant(
    make_gateway: GatewayFactory, database_url: str, tmp_path: Path
) -> None:
    source, target = unique("src"), unique("dst")
    gateway = await make_gateway(tenants=[{"name": source}, {"name": target}], tenants_file=True)
    await gateway.tell("my dog is called Biscuit", user_id="ada", agent_id="bot")
    await _post(
        gateway,
        {"memories": [{"text": "Ada lives in Lyon", "user_id": "ada", "created_at": WHEN}]},
        tenant=source,
    )
    await _post(gateway, {"memories": [{"text": "Bob's secret", "user_id": "bob"}]}, tenant=source)
    data_dir = gateway.app[settings_key].data_dir
    dump = tmp_path / "ada.jsonl"

    code, _, err = await _memories_cli(
        database_url, "export", source, data_dir, "--user", "ada", "--output", str(dump)
    )
    assert code == 0, err
    lines = [json.loads(line) for line in dump.read_text().splitlines()]
    assert {line["text"] for line in lines} == {
        "my dog is called Biscuit",
        "I heard: my dog is called Biscuit",
        "Ada lives in Lyon",
    }
    assert all(line["user_id"] == "ada" and "idempotency_key" not in line["metadata"] for line in lines)

    for _ in range(2):  # twice: the second run stores nothing new
        code, _, err = await _memories_cli(database_url, "import", target, data_dir, "--input", str(dump))
        assert code == 0, err
    copied = await _listed(gateway, "ada", tenant=target)
    assert sorted((m["memory"], m["role"], m["created_at"]) for m in copied) == sorted(
        (line["text"], line["role"], line["created_at"]) for line in lines
    )


async def test_an_import_file_with_a_bad_line_writes_nothing(
    make_gateway: GatewayFactory, database_url: str, tmp_path: Path
) -> None:
    gateway = await make_gateway(tenants_file=True)
    dump = tmp_path / "bad.jsonl"
    dump.write_text('{"text": "fine", "user_id": "ada"}\n\n{"text": "no ids"}\nnot json\n')
    data_dir = gateway.app[settings_key].data_dir
    code, _, err = await _memories_cli(database_url, "import", gateway.tenant, data_dir, "--input", str(dump))
    assert code == 2
    assert (
        "line 3: at least one of user_id" in err
        and "line 4: not a JSON object" in err
        and "nothing imported" in err
    )
    assert await _listed(gateway, "ada") == []


async def test_a_whole_tenant_exports_oldest_first(
    gateway: RunningGateway, database_url: str, tmp_path: Path
) -> None:
    memories = [
        {"text": f"m{i}", "user_id": f"u{i % 3}", "created_at": f"2025-01-0{i + 1}T00:00:00Z"}
        for i in range(6)
    ]
    await _post(gateway, {"memories": memories})
    backend = await _backend(gateway)
    pages = [page async for page in backend.export_pages(None, page=4)]
    assert [len(p) for p in pages] == [4, 2]
    assert [m["memory"] for p in pages for m in p] == [f"m{i}" for i in range(6)]


async def test_the_outbox_keeps_an_imports_metadata_and_reads_older_files(tmp_path: Path) -> None:
    """An import's row survives a crash with its metadata; a file written before the column existed opens
    and replays as before."""
    path = tmp_path / "outbox.db"
    old_schema = OUTBOX_SCHEMA_BEFORE_METADATA
    conn = sqlite3.connect(path)
    try:
        conn.execute(old_schema)
        conn.execute(
            "INSERT INTO outbox VALUES ('s.1:0', 'acme', 'acme/ada', NULL, NULL, 'user', 'hello', 0,"
            " '2026-01-01T00:00:00+00:00', 1.0, 20)"
        )
        conn.commit()
    finally:
        conn.close()
    outbox = Outbox(path)
    await outbox.open()
    try:
        imported = ImportedMemory("Ada lives in Lyon", "", {"user_id": "ada"}, WHEN, {"k": "v"}).entry(
            "acme", WHEN
        )
        assert await outbox.append(imported)
        assert [e.metadata for e in await outbox.replay("acme")] == [None]  # rows of the earlier process
    finally:
        await outbox.close()
    reopened = Outbox(path)
    await reopened.open()
    try:
        replayed = {e.key: e for e in await reopened.replay("acme")}
        assert replayed[imported.key].metadata == {"source": "import", "k": "v", "created_at": WHEN}
        assert replayed[imported.key].role == "" and replayed["s.1:0"].metadata is None
    finally:
        await reopened.close()


OUTBOX_SCHEMA_BEFORE_METADATA = """
CREATE TABLE outbox (
    key TEXT PRIMARY KEY, tenant TEXT NOT NULL, user_id TEXT, agent_id TEXT, run_id TEXT, role TEXT NOT NULL,
    content TEXT NOT NULL, infer INTEGER NOT NULL, session_start TEXT NOT NULL, created_at REAL NOT NULL,
    size INTEGER NOT NULL
)
"""
