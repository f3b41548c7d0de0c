"""The benchmark harness still runs: ``python -m bench --smoke`` for the scenarios of issue 6's harness
(greeting vs the naive recipe, floor, search, writes), the ``serve --workers`` burst (10 sessions
against real ``memory-gateway serve`` processes, one and two workers), set-up CPU, the memory-quality
evaluation set (4 users), per-turn search recall (vector only vs hybrid) and voice capacity (two phone
calls, each variant), asserting shape, never timing."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench import plots, runner

SCENARIOS = [
    "greeting",
    "floor",
    "search",
    "writes",
    "burst_workers",
    "setup_cpu",
    "memory_quality",
    "retrieval",
    "voice_capacity",
]


# bench/naive.py runs the docs' recipe, a Qdrant client per connection, whose second client fails to lock
# the storage folder (docs/pitfalls.md); qdrant-client 1.20 then leaves the lock file it opened unclosed
# (qdrant_client/local/qdrant_local.py, _load).
@pytest.mark.filterwarnings(r"ignore:unclosed file <_io\.TextIOWrapper name='[^']*/\.lock':ResourceWarning")
async def test_smoke_run_writes_well_formed_results(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `memory-gateway serve` tunes the process's garbage collector; not the test process's.
    monkeypatch.setenv("BENCH_RUNTIME_TUNING", "0")
    summary = await runner.run_scenarios(
        smoke=True, only=SCENARIOS, out_dir=tmp_path, progress=False, database_url=database_url
    )

    assert summary.errors == {}
    report = (tmp_path / "RESULTS.md").read_text(encoding="utf-8")
    for name in SCENARIOS:
        data = json.loads((tmp_path / f"{name}.json").read_text(encoding="utf-8"))
        assert data["name"] == name and data["smoke"] is True and data["error"] is None
        assert {"platform", "cpu_count", "python", "pipecat", "mem0", "date"} <= set(data["machine"])
        assert data["rows"] and all(isinstance(row, dict) and row for row in data["rows"])
        for target in data["targets"]:
            assert set(target) == {"name", "measured", "limit", "unit", "met"}
            assert isinstance(target["met"], bool)
            assert target["measured"] is None or math.isfinite(target["measured"])
        for plot in data["plots"]:
            assert (tmp_path / plot).read_bytes().startswith(b"\x89PNG")
        if plots.available():
            assert data["plots"], f"{name} drew no plot although matplotlib is installed"
        assert f"(`{name}`)" in report


def test_every_scenario_module_is_discovered() -> None:
    found = runner.discover()
    assert set(SCENARIOS) <= set(found)
    for module in found.values():
        assert isinstance(module.NAME, str) and isinstance(module.TITLE, str) and callable(module.run)
