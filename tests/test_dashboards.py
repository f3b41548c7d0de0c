"""Dashboards and alert rules query what the gateway exports, in valid PromQL, from committed files that
match their generator. Static and fast: no gateway, no Prometheus server (promtool only)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.metrics import GatewayMetrics
from grafana import dashboards
from tests.promql import (
    DASHBOARD_DIR,
    ROOT,
    RULES_FILE,
    Expression,
    all_expressions,
    metric_names,
    raw_dashboard_expressions,
    rule_expressions,
)

PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
RUNBOOK = PROMETHEUS_DIR / "RUNBOOK.md"
DASHBOARD_UIDS = {
    "gateway-overview.json": "memory-gateway-overview",
    "gateway-tenant.json": "memory-gateway-tenant",
}
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
# Written by Prometheus itself for every target, not by the gateway.
SCRAPE_METRICS = {"up"}
SEVERITIES = {"critical", "warning", "info"}


def _promtool() -> str:
    path = shutil.which("promtool") or "/usr/bin/promtool"
    if not Path(path).exists():
        pytest.skip("promtool not installed (Debian: apt-get install prometheus)")
    return path


def _run_promtool(*args: str) -> str:
    done = subprocess.run([_promtool(), *args], capture_output=True, text=True, timeout=60, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


def _boards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text(encoding="utf-8")) for p in sorted(DASHBOARD_DIR.glob("*.json"))}


def _all_panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    found = []
    for panel in panels:
        found.append(panel)
        found.extend(_all_panels(panel.get("panels") or []))
    return found


def _rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES_FILE.read_text(encoding="utf-8"))
    return [rule for group in document["groups"] for rule in group["rules"]]


def _alerts() -> list[dict[str, Any]]:
    return [rule for rule in _rules() if "alert" in rule]


def exported_metric_names() -> set[str]:
    """Every series name a fresh gateway registry can produce, in each exposition form."""
    names = set()
    for family in GatewayMetrics().registry.collect():
        names.add(family.name)
        names.update(family.name + suffix for suffix in ("_bucket", "_sum", "_count", "_total", "_created"))
        names.update(sample.name for sample in family.samples)
    return names


def test_committed_dashboards_are_exactly_what_the_generator_writes() -> None:
    generated = dashboards.rendered()
    committed = {p.name: p.read_text(encoding="utf-8") for p in sorted(DASHBOARD_DIR.glob("*.json"))}
    assert set(committed) == set(generated)
    stale = sorted(name for name, text in generated.items() if committed[name] != text)
    assert not stale, f"stale dashboards {stale}: run `python -m grafana.dashboards` and commit the JSON"


def test_generated_json_is_deterministic() -> None:
    assert dashboards.rendered() == dashboards.rendered()


def test_dashboards_have_stable_uids_and_query_the_provisioned_prometheus() -> None:
    boards = _boards()
    assert {name: board["uid"] for name, board in boards.items()} == DASHBOARD_UIDS
    for name, board in boards.items():
        for panel in _all_panels(board["panels"]):
            if panel["type"] == "row":
                continue
            assert panel["datasource"] == DATASOURCE, (name, panel["title"])
            ref_ids = [target["refId"] for target in panel["targets"]]
            assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"]), (
                name,
                panel["title"],
            )
            assert len(ref_ids) == len(set(ref_ids)) and all(ref_ids), (name, panel["title"], ref_ids)


def test_grafana_provisions_the_datasource_the_dashboards_name_and_loads_them_from_files() -> None:
    provisioning = ROOT / "grafana" / "provisioning"
    sources = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text(encoding="utf-8"))
    assert [{"type": s["type"], "uid": s["uid"]} for s in sources["datasources"]] == [DATASOURCE]
    providers = yaml.safe_load((provisioning / "dashboards" / "gateway.yaml").read_text(encoding="utf-8"))
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].startswith(
        "/var/lib/grafana/dashboards"
    )


def test_panel_ids_are_unique_within_each_dashboard() -> None:
    for name, board in _boards().items():
        ids = [panel["id"] for panel in _all_panels(board["panels"])]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        assert not duplicates, f"{name}: duplicate panel ids {duplicates}"
        assert all(isinstance(i, int) and i > 0 for i in ids), (name, ids)


def test_tenant_dashboard_filters_every_tenant_metric_by_the_tenant_variable() -> None:
    board = _boards()["gateway-tenant.json"]
    (variable,) = board["templating"]["list"]
    assert variable["name"] == "tenant" and variable["multi"] and variable["includeAll"]
    assert variable["query"] == "label_values(gateway_tenant_max_sessions, tenant)"
    for panel in _all_panels(board["panels"]):
        for target in panel.get("targets", []):
            for selector in re.findall(r"gateway_\w+(?:\{[^}]*\})?", target["expr"]):
                assert 'tenant=~"$tenant"' in selector, (panel["title"], selector)


def test_every_dashboard_range_is_the_rate_interval() -> None:
    for expression in raw_dashboard_expressions():
        for window in re.findall(r"\[([^\]]*)\]", expression.expr):
            assert window == "$__rate_interval", expression


def test_every_metric_queried_is_one_the_gateway_exports() -> None:
    exported = exported_metric_names()
    unknown: dict[str, list[str]] = defaultdict(list)
    for expression in all_expressions():
        allowed = exported | (SCRAPE_METRICS if expression.source.endswith("rules.yml") else set())
        for name in sorted(metric_names(expression.expr) - allowed):
            unknown[name].append(f"{expression.source}: {expression.name}")
    assert not unknown, "queried but not exported by gateway.metrics.GatewayMetrics:\n" + "\n".join(
        f"  {name}: {', '.join(where)}" for name, where in sorted(unknown.items())
    )


def test_every_exported_metric_is_on_a_dashboard() -> None:
    queried = set().union(*(metric_names(e.expr) for e in raw_dashboard_expressions()))
    families = {family.name: family.type for family in GatewayMetrics().registry.collect()}
    forms = {"histogram": ("_bucket", "_count", "_sum"), "counter": ("_total",)}
    missing = sorted(
        name
        for name, kind in families.items()
        if not queried & {name, *(name + suffix for suffix in forms.get(kind, ()))}
    )
    assert not missing, f"exported but on no dashboard: {missing}"


def test_substituted_expressions_hold_no_grafana_variables() -> None:
    expressions = all_expressions(rate_interval="2m", tenant="acme")
    assert expressions and all("$" not in e.expr and "[[" not in e.expr for e in expressions)
    assert any('tenant=~"acme"' in e.expr and "[2m]" in e.expr for e in expressions)
    assert {e.name for e in expressions if e.name.startswith("alert ")} == {
        f"alert {a['alert']}" for a in _alerts()
    }


def test_metric_names_ignores_functions_labels_strings_and_keywords() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le) (rate(a_bucket{job="b_c", le!="+Inf"}[5m:1m] offset 1h)))'
        " / on (tenant) group_left (kind) max without (instance) (d) > bool 1e3"
        ' or label_replace(e, "f", "$1", "g", "(.*)") unless vector(0) and Inf'
    )
    assert metric_names(expr) == {"a_bucket", "d", "e"}


def test_every_alert_has_a_severity_annotations_and_a_runbook_section() -> None:
    sections = {
        heading.strip().lower()
        for heading in re.findall(r"^## (.+)$", RUNBOOK.read_text(encoding="utf-8"), re.M)
    }
    alerts = _alerts()
    assert {a["alert"] for a in alerts} >= {
        "GatewayScrapeDown",
        "GreetingLatencyHighP95",
        "MemoryErrorRatioHigh",
        "MemoryPendingWritesGrowing",
        "TenantNearSessionLimit",
    }
    for alert in alerts:
        assert alert["labels"]["severity"] in SEVERITIES, alert["alert"]
        assert alert.get("for"), alert["alert"]
        annotations = alert["annotations"]
        assert annotations["summary"].strip() and annotations["description"].strip(), alert["alert"]
        assert annotations["runbook"] == f"deploy/prometheus/RUNBOOK.md#{alert['alert'].lower()}"
        assert alert["alert"].lower() in sections, f"RUNBOOK.md has no section '## {alert['alert']}'"
    assert sections == {a["alert"].lower() for a in alerts}, "RUNBOOK.md sections and alerts differ"


def test_dashboard_threshold_lines_are_the_alert_thresholds() -> None:
    expressions = {a["alert"]: " ".join(a["expr"].split()) for a in _alerts()}
    assert expressions["GreetingLatencyHighP95"].endswith(f"> {dashboards.GREETING_SLO_SECS:g}")
    assert expressions["MemoryErrorRatioHigh"].endswith(f"> {dashboards.MEMORY_ERROR_RATIO:g}")
    assert expressions["TenantNearSessionLimit"].endswith(f"> {dashboards.SESSION_LIMIT_RATIO:g}")


def test_every_alert_has_a_promtool_unit_test() -> None:
    document = yaml.safe_load((PROMETHEUS_DIR / "rules_test.yml").read_text(encoding="utf-8"))
    tested = {case["alertname"] for test in document["tests"] for case in test.get("alert_rule_test", [])}
    assert tested == {a["alert"] for a in _alerts()}


def test_promtool_accepts_the_rules() -> None:
    output = _run_promtool("check", "rules", str(RULES_FILE))
    assert f"SUCCESS: {len(_rules())} rules found" in output


def test_alerts_fire_on_their_promtool_unit_tests() -> None:
    _run_promtool("test", "rules", str(PROMETHEUS_DIR / "rules_test.yml"))


def test_promtool_accepts_the_prometheus_config() -> None:
    _run_promtool("check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses each substituted query as a recording rule: a syntax error fails the check."""
    expressions: list[Expression] = [e for e in all_expressions() if not e.source.endswith("rules.yml")]
    rules = [{"record": f"dashboard:query_{i}", "expr": e.expr} for i, e in enumerate(expressions)]
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}), encoding="utf-8")
    _run_promtool("check", "rules", str(path))


def test_rule_expressions_are_read_from_the_rules_file() -> None:
    assert [e.name for e in rule_expressions()] == [f"alert {a['alert']}" for a in _alerts()]
