"""Operating tenants: the CLI edits the tenants file, a running gateway reloads it without dropping
live sessions, and a bad file is refused with a message naming the tenant and field."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from gateway import closecodes
from gateway.app import create_app
from gateway.cli import main
from gateway.keys import settings_key
from gateway.settings import Settings
from gateway.tenants import TenantFileError, TenantRegistry
from tests.clients import refusal_code
from tests.conftest import GatewayFactory, RunningGateway, unique


def _cli(gateway: RunningGateway, *argv: str) -> int:
    data_dir = gateway.app[settings_key].data_dir
    return main([*argv, "--data-dir", str(data_dir), "--tenants-file", str(data_dir / "tenants.yaml")])


def _printed_key(out: str) -> str:
    match = re.search(r"^\s+(mgw_\S+)$", out, re.MULTILINE)
    assert match, out
    return match.group(1)


async def _until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


async def _reloaded(gateway: RunningGateway, count: int, outcome: str = "ok") -> None:
    await _until(lambda: gateway.sample("gateway_tenant_reloads_total", outcome=outcome) >= count)


@pytest.fixture
async def watched(make_gateway: GatewayFactory) -> RunningGateway:
    return await make_gateway(tenants=[{"name": unique("ops")}], tenants_file=True, tenants_reload_secs=0.05)


async def test_tenant_added_by_the_cli_can_start_sessions_without_a_restart(
    watched: RunningGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    name = unique("newco")
    assert _cli(watched, "tenants", "add", name, "--max-sessions", "3") == 0
    key = _printed_key(capsys.readouterr().out)
    await _reloaded(watched, 1)

    watched.keys[name] = key
    client = await watched.connect(tenant=name, user_id="first-customer")
    assert "nice to meet you" in (await client.bot_turn()).lower()
    stored = (watched.app[settings_key].data_dir / "tenants.yaml").read_text()
    assert key not in stored and "sha256:" in stored


async def test_disabling_a_tenant_refuses_new_sessions_but_keeps_live_ones(
    watched: RunningGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    live = await watched.connect(user_id="live-user")
    await live.bot_turn()
    minted = await watched.start(user_id="pending-user", serializer="rtvi")
    assert _cli(watched, "tenants", "disable", watched.tenant) == 0
    await _reloaded(watched, 1)

    assert (await watched.start(user_id="later-user")).status == 403
    assert await refusal_code(watched.http, (await minted.json())["wsUrl"]) == closecodes.FORBIDDEN
    assert await live.say("are you still there?") == "I heard: are you still there?"

    assert _cli(watched, "tenants", "enable", watched.tenant) == 0
    await _reloaded(watched, 2)
    assert (await watched.start(user_id="later-user")).status == 200


async def test_rotated_key_overlaps_with_the_previous_one_until_revoked(
    watched: RunningGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    original = watched.keys[watched.tenant]
    assert _cli(watched, "tenants", "rotate-key", watched.tenant) == 0
    rotated = _printed_key(capsys.readouterr().out)
    await _reloaded(watched, 1)
    assert (await watched.start(key=original, user_id="u1")).status == 200
    assert (await watched.start(key=rotated, user_id="u1")).status == 200

    assert _cli(watched, "tenants", "rotate-key", watched.tenant, "--revoke-old") == 0
    newest = _printed_key(capsys.readouterr().out)
    await _reloaded(watched, 2)
    assert (await watched.start(key=original, user_id="u1")).status == 401
    assert (await watched.start(key=rotated, user_id="u1")).status == 401
    assert (await watched.start(key=newest, user_id="u1")).status == 200
    watched.audit.register("API key", newest)
    watched.audit.register("API key", rotated)


async def test_invalid_edit_keeps_the_tenants_in_force(watched: RunningGateway) -> None:
    path = watched.app[settings_key].data_dir / "tenants.yaml"
    path.write_text(yaml.safe_dump({"tenants": [{"name": "Not A Valid Name!"}]}))
    await _reloaded(watched, 1, outcome="invalid")

    assert watched.sample("gateway_tenant_reloads_total", outcome="ok") == 0
    assert (await watched.start(user_id="u1")).status == 200


async def test_sighup_reloads_the_tenants_file(
    make_gateway: GatewayFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    gateway = await make_gateway(tenants=[{"name": unique("hup")}], tenants_file=True, tenants_reload_secs=0)
    assert _cli(gateway, "tenants", "disable", gateway.tenant) == 0
    await asyncio.sleep(0.1)
    assert (await gateway.start(user_id="u1")).status == 200  # no polling: nothing changes yet

    os.kill(os.getpid(), signal.SIGHUP)
    await _reloaded(gateway, 1)
    assert (await gateway.start(user_id="u1")).status == 403


def test_tenants_list_shows_status_and_key_count_never_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--data-dir", str(tmp_path), "--tenants-file", str(tmp_path / "t.yaml")]
    assert main(["tenants", "add", "acme", "--origin", "https://app.acme.test", *args]) == 0
    key = _printed_key(capsys.readouterr().out)
    assert main(["tenants", "rotate-key", "acme", *args]) == 0
    assert main(["tenants", "disable", "acme", *args]) == 0
    capsys.readouterr()

    assert main(["tenants", "list", *args]) == 0
    out = capsys.readouterr().out
    assert out.strip() == (
        "name=acme  status=disabled  keys=2  max_sessions=100  memory=pgvector  origins=https://app.acme.test"
    )
    assert key not in out


def test_cli_refuses_unknown_tenants_and_duplicate_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--data-dir", str(tmp_path), "--tenants-file", str(tmp_path / "t.yaml")]
    assert main(["tenants", "add", "acme", *args]) == 0
    assert main(["tenants", "add", "acme", *args]) == 2
    assert main(["tenants", "disable", "nobody", *args]) == 2
    err = capsys.readouterr().err
    assert "tenant 'acme' already exists" in err and "no tenant named 'nobody'" in err


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"name": "acme", "max_sessions": 0}, "tenant 'acme' field max_sessions"),
        ({"name": "acme", "api_keys": ["mgw_plaintext-key"]}, "tenant 'acme' field api_keys"),
        ({"name": "acme", "allowed_origins": ["not an origin"]}, "tenant 'acme' field allowed_origins"),
        ({"name": "acme", "memory": {"params": {"search_limit": -1}}}, "memory.params.search_limit"),
        ({"name": "Bad Name"}, "tenant 'Bad Name' field name"),
    ],
)
def test_bad_tenants_file_fails_start_up_naming_the_tenant_and_field(
    tmp_path: Path, entry: dict[str, object], message: str
) -> None:
    path = tmp_path / "tenants.yaml"
    path.write_text(yaml.safe_dump({"tenants": [entry]}))
    with pytest.raises(TenantFileError) as error:
        create_app(Settings(data_dir=tmp_path, tenants_file=path))
    assert message in str(error.value)
    assert "mgw_plaintext-key" not in str(error.value)


def test_toml_tenants_file_is_read_too(tmp_path: Path) -> None:
    path = tmp_path / "tenants.toml"
    path.write_text('[[tenants]]\nname = "acme"\nmax_sessions = 7\nallowed_origins = ["https://A.test/"]\n')
    tenant = TenantRegistry.load(path).require("acme")
    assert (tenant.max_sessions, tenant.allowed_origins) == (7, ["https://a.test"])


async def test_serve_with_a_bad_tenants_file_exits_2_with_the_reason(tmp_path: Path) -> None:
    path = tmp_path / "tenants.yaml"
    path.write_text(yaml.safe_dump({"tenants": [{"name": "acme", "status": "paused"}]}))
    code, _, err = await _run_cli("serve", "--data-dir", str(tmp_path), "--tenants-file", str(path))
    assert code == 2
    assert "tenant 'acme' field status" in err


async def _run_cli(*argv: str, env: dict[str, str] | None = None) -> tuple[int | None, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.cli",
        *argv,
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    return proc.returncode, out.decode(), err.decode()


async def test_memories_cli_lists_and_forgets_one_user_of_one_tenant(
    watched: RunningGateway, database_url: str
) -> None:
    await watched.tell("I have a cat called Miso", user_id="cli-user")
    await watched.tell("I have a dog called Rex", user_id="other-user")
    data_dir = watched.app[settings_key].data_dir
    common = ["--tenant", watched.tenant, "--user", "cli-user", "--data-dir", str(data_dir)]
    env = {"GATEWAY_DATABASE_URL": database_url}

    code, out, err = await _run_cli("memories", "list", *common, env=env)
    assert code == 0, err
    assert "user       I have a cat called Miso" in out and "Rex" not in out

    code, out, err = await _run_cli("memories", "forget", *common, "--yes", env=env)
    assert (code, out.strip()) == (0, f"forgot 2 memories of user 'cli-user' in tenant '{watched.tenant}'"), (
        err
    )
    code, out, _ = await _run_cli("memories", "list", *common, env=env)
    assert (code, out) == (0, "")
    client = await watched.connect(user_id="other-user")
    assert "Rex" in await client.bot_turn()
