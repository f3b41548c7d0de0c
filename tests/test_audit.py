"""The privacy audit that guards every test run must itself catch a leak."""

from __future__ import annotations

from pathlib import Path

from tests.audit import Audit


def test_audit_finds_a_registered_value_in_the_log_or_a_metrics_page(tmp_path: Path) -> None:
    log = tmp_path / "run.jsonl"
    log.write_text('{"event": "start.accepted", "detail": "Bearer mgw_planted-key-123"}\n')
    audit = Audit(log)
    audit.register("API key", "mgw_planted-key-123")
    audit.register("user_id", "planted-user-42")
    audit.metrics_pages.append('gateway_sessions_total{tenant="planted-user-42"} 1.0\n')

    assert audit.leaks() == [
        "API key mgw_… found in log",
        "user_id plan… found in metrics#0",
    ]


def test_audit_ignores_values_too_short_to_be_told_from_chance(tmp_path: Path) -> None:
    log = tmp_path / "run.jsonl"
    log.write_text('{"event": "session.start", "logger": "gateway.pipeline.session"}\n')
    audit = Audit(log)
    audit.register("user_id", "u1")
    audit.register("message text", "session", min_length=12)

    assert audit.secrets == {}
    assert audit.leaks() == []
