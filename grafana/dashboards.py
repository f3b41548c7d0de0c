"""The gateway's Grafana dashboards, as code (grafana-foundation-sdk).

Grafana provisions the JSON committed in ``grafana/dashboards/`` (see ``grafana/provisioning/``); this
module is its source. After editing it run ``python -m grafana.dashboards`` and commit both; ``--check``
fails on drift, and so do the tests. Queries use only the metric names of ARCHITECTURE §6 (the contract)
and ``$__rate_interval`` in every range, which Grafana keeps at four scrapes or more whatever the zoom.
Every metric carries ``tenant`` (except reloads and build info) and each replica adds its ``instance``,
so every query aggregates, keeping only the labels its legend shows.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from grafana_foundation_sdk.builders import common, dashboard, prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as common_model
from grafana_foundation_sdk.models import dashboard as dashboard_model
from grafana_foundation_sdk.models import prometheus as prometheus_model

OUT_DIR = Path(__file__).resolve().parent / "dashboards"
# Provisioned by grafana/provisioning/datasources/prometheus.yaml with this uid.
DATASOURCE = dashboard_model.DataSourceRef(type_val="prometheus", uid="prometheus")
RATE_INTERVAL = "$__rate_interval"
TAGS = ["memory-gateway"]
TENANT = 'tenant=~"$tenant"'
QUANTILES = (0.5, 0.95, 0.99)
# Alert thresholds in deploy/prometheus/rules.yml, drawn on the matching panels.
LOOP_LAG_SECS = 0.05  # deploy/prometheus/rules.yml GatewayEventLoopLagging
GREETING_SLO_SECS = 1.0
MEMORY_ERROR_RATIO = 0.05
SESSION_LIMIT_RATIO = 0.9

Query = tuple[str, str]  # (PromQL, legend format)
PanelBuilder = timeseries.Panel | stat.Panel | table.Panel


# --- PromQL --------------------------------------------------------------------------------------------


def selector(metric: str, matchers: str = "") -> str:
    return f"{metric}{{{matchers}}}" if matchers else metric


def rate(metric: str, matchers: str = "") -> str:
    return f"rate({selector(metric, matchers)}[{RATE_INTERVAL}])"


def sum_rate(metric: str, by: Sequence[str] = (), matchers: str = "") -> str:
    grouping = f" by ({', '.join(by)}) " if by else ""
    return f"sum{grouping}({rate(metric, matchers)})"


def quantile(q: float, histogram: str, by: Sequence[str] = (), matchers: str = "") -> str:
    """``histogram_quantile`` over the buckets of ``histogram``, summed across replicas."""
    return f"histogram_quantile({q:g}, {sum_rate(histogram + '_bucket', ('le', *by), matchers)})"


def ratio(numerator: str, denominator: str) -> str:
    return f"{numerator} / {denominator}"


def percentiles(histogram: str, by: Sequence[str] = (), matchers: str = "") -> list[Query]:
    prefix = "".join(f"{{{{{label}}}}} " for label in by)
    return [(quantile(q, histogram, by, matchers), f"{prefix}p{q * 100:g}") for q in QUANTILES]


# --- panels --------------------------------------------------------------------------------------------


def _targets(
    queries: Sequence[Query], *, instant: bool = False
) -> list[cogbuilder.Builder[cogvariants.Dataquery]]:
    targets: list[cogbuilder.Builder[cogvariants.Dataquery]] = []
    for i, (expr, legend) in enumerate(queries):
        target = prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(chr(ord("A") + i))
        if instant:
            target = target.instant().format(prometheus_model.PromQueryFormat.TABLE)
        targets.append(target)
    return targets


def _thresholds(limit: float | None) -> dashboard.ThresholdsConfig:
    steps = [dashboard_model.Threshold(value=None, color="green")]
    if limit is not None:
        steps.append(dashboard_model.Threshold(value=limit, color="red"))
    return dashboard.ThresholdsConfig().mode(dashboard_model.ThresholdsMode.ABSOLUTE).steps(steps)


def series(
    title: str,
    description: str,
    queries: Sequence[Query],
    *,
    unit: str,
    width: int = 12,
    height: int = 8,
    stacked: bool = False,
    bars: bool = False,
    threshold: float | None = None,
) -> timeseries.Panel:
    """A time series; ``threshold`` draws the matching alert's limit as a dashed red line."""
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(_targets(queries))
        .unit(unit)
        .min(0)
        .span(width)
        .height(height)
        .color_scheme(dashboard.FieldColor().mode(dashboard_model.FieldColorModeId.PALETTE_CLASSIC))
        .line_width(1)
        .fill_opacity(60 if bars else 10)
        .draw_style(common_model.GraphDrawStyle.BARS if bars else common_model.GraphDrawStyle.LINE)
        .legend(
            common.VizLegendOptions()
            .display_mode(common_model.LegendDisplayMode.LIST)
            .placement(common_model.LegendPlacement.BOTTOM)
            .show_legend(True)
        )
        .tooltip(
            common.VizTooltipOptions()
            .mode(common_model.TooltipDisplayMode.MULTI)
            .sort(common_model.SortOrder.DESCENDING)
        )
        .thresholds(_thresholds(threshold))
        .thresholds_style(
            common.GraphThresholdsStyleConfig().mode(
                common_model.GraphTresholdsStyleMode.DASHED
                if threshold is not None
                else common_model.GraphTresholdsStyleMode.OFF
            )
        )
    )
    if stacked:
        panel = panel.stacking(common.StackingConfig().mode(common_model.StackingMode.NORMAL))
    return panel


def single(
    title: str, description: str, expr: str, *, unit: str, threshold: float | None = None, width: int = 4
) -> stat.Panel:
    """One number (the latest), with a sparkline; red from ``threshold`` on."""
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(_targets([(expr, title)]))
        .unit(unit)
        .span(width)
        .height(4)
        .thresholds(_thresholds(threshold))
        .color_mode(common_model.BigValueColorMode.VALUE)
        .graph_mode(common_model.BigValueGraphMode.AREA)
        .reduce_options(common.ReduceDataOptions().values(False).calcs(["lastNotNull"]))
    )


def build_info_table() -> table.Panel:
    expr = "max by (instance, version, pipecat, mem0) (gateway_build_info)"
    hide = {"Time": True, "Value": True}
    return (
        table.Panel()
        .title("Build info")
        .description("One row per replica: gateway, Pipecat and Mem0 versions (gateway_build_info).")
        .datasource(DATASOURCE)
        .targets(_targets([(expr, "")], instant=True))
        .span(24)
        .height(6)
        .show_header(True)
        .with_transformation(
            dashboard_model.DataTransformerConfig(id_val="organize", options={"excludeByName": hide})
        )
    )


class Board:
    """A dashboard whose panels (rows included) are numbered 1, 2, … in the order they are added."""

    def __init__(self, builder: dashboard.Dashboard) -> None:
        self.builder = builder
        self._last_id = 0

    def _next_id(self) -> int:
        self._last_id += 1
        return self._last_id

    def row(self, title: str) -> None:
        self.builder.with_row(dashboard.Row(title).id(self._next_id()))

    def add(self, *panels: PanelBuilder) -> None:
        for panel in panels:
            self.builder.with_panel(panel.id(self._next_id()))


def _board(uid: str, title: str, description: str) -> Board:
    return Board(
        dashboard.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(TAGS)
        .time("now-3h", "now")
        .timezone("browser")
        .refresh("30s")
        .tooltip(dashboard_model.DashboardCursorSync.CROSSHAIR)
        .link(
            dashboard.DashboardLink("Memory gateway")
            .type(dashboard_model.DashboardLinkType.DASHBOARDS)
            .tags(TAGS)
            .as_dropdown(True)
            .include_vars(True)
            .keep_time(True)
        )
    )


# --- dashboards ----------------------------------------------------------------------------------------


def overview() -> dashboard.Dashboard:
    board = _board(
        "memory-gateway-overview",
        "Memory gateway / Overview",
        "Whole fleet: sessions, rejections, latency, memory and transport of the memory gateway.",
    )
    memory_errors = sum_rate("gateway_memory_errors_total")
    memory_calls = sum_rate("gateway_memory_seconds_count")

    board.row("Now")
    board.add(
        single(
            "Live sessions",
            "Open WebSocket sessions, all tenants.",
            "sum(gateway_sessions_active)",
            unit="short",
        ),
        single(
            "Tenants near session limit",
            f"Tenants whose busiest replica is above {SESSION_LIMIT_RATIO:.0%} of max_sessions.",
            "count(max by (tenant) (gateway_sessions_active / gateway_tenant_max_sessions) "
            f"> {SESSION_LIMIT_RATIO:g}) or vector(0)",
            unit="short",
            threshold=1,
        ),
        single(
            "Greeting p95",
            f"WebSocket accept to greeting written; the alert fires above {GREETING_SLO_SECS:g} s.",
            quantile(0.95, "gateway_greeting_seconds"),
            unit="s",
            threshold=GREETING_SLO_SECS,
        ),
        single(
            "Memory error ratio",
            "Failed or timed-out memory calls over all memory calls.",
            ratio(memory_errors, memory_calls),
            unit="percentunit",
            threshold=MEMORY_ERROR_RATIO,
        ),
        single(
            "Pending memory writes",
            "Memory writes queued or retrying, all tenants.",
            "sum(gateway_memory_pending_writes)",
            unit="short",
        ),
        single(
            "Rejections / s",
            "Refused connections and requests, all reasons.",
            sum_rate("gateway_rejections_total"),
            unit="reqps",
        ),
    )

    board.row("Sessions")
    board.add(
        series(
            "Live sessions",
            "Open sessions, in total and per tenant.",
            [
                ("sum(gateway_sessions_active)", "total"),
                ("sum by (tenant) (gateway_sessions_active)", "{{tenant}}"),
            ],
            unit="short",
            width=8,
        ),
        series(
            "Session starts and ends / s",
            "Starts are greetings written (every accepted session greets once); ends are by outcome: "
            "completed, shutdown, client_error, idle_timeout, error.",
            [
                (sum_rate("gateway_greeting_seconds_count"), "started"),
                (sum_rate("gateway_sessions_total", ["outcome"]), "ended: {{outcome}}"),
            ],
            unit="ops",
            width=8,
        ),
        series(
            "Rejections / s by reason",
            "See README 'Tenants and security' for what each reason means and its HTTP status / close code.",
            [(sum_rate("gateway_rejections_total", ["reason"]), "{{reason}}")],
            unit="reqps",
            width=8,
            stacked=True,
        ),
    )

    board.row("Latency")
    board.add(
        series(
            "Greeting latency",
            "WebSocket accept to greeting written to the socket.",
            percentiles("gateway_greeting_seconds"),
            unit="s",
            width=8,
            threshold=GREETING_SLO_SECS,
        ),
        series(
            "Greeting p95 by memories outcome",
            "recalled: remembered facts; none: nothing remembered; fallback: memory failed or missed the "
            "greeting deadline.",
            [(quantile(0.95, "gateway_greeting_seconds", ["memories"]), "{{memories}}")],
            unit="s",
            width=8,
        ),
        series(
            "Greetings / s by memories outcome",
            "A growing share of fallback means the memory backend is slow or failing.",
            [(sum_rate("gateway_greeting_seconds_count", ["memories"]), "{{memories}}")],
            unit="ops",
            width=8,
            stacked=True,
        ),
        series(
            "Greetings / s by how they were made",
            "template: the remembered facts said back by rule; llm: written by the tenant's LLM "
            "(greeting.mode: llm); fallback: llm mode, but no first token by its deadline (the template).",
            [(sum_rate("gateway_greeting_seconds_count", ["source"]), "{{source}}")],
            unit="ops",
            width=8,
            stacked=True,
        ),
        series(
            "Greeting p95 by how it was made",
            "An LLM greeting waits for its first token (greeting.llm_first_token_secs at most).",
            [(quantile(0.95, "gateway_greeting_seconds", ["source"]), "{{source}}")],
            unit="s",
            width=8,
        ),
        series(
            "User → bot latency",
            "End of the user's turn to the bot's first output.",
            percentiles("gateway_user_bot_latency_seconds"),
            unit="s",
            width=8,
        ),
        series(
            "TTFB p95 by service",
            "Pipecat time to first byte of the LLM, STT and TTS services.",
            [(quantile(0.95, "gateway_ttfb_seconds", ["service"]), "{{service}}")],
            unit="s",
            width=8,
        ),
        series(
            "LLM tokens / s by kind",
            "Prompt and completion tokens, all tenants.",
            [(sum_rate("gateway_llm_tokens_total", ["kind"]), "{{kind}}")],
            unit="short",
            width=8,
            stacked=True,
        ),
        series(
            "Saturation: event-loop lag and VAD wait",
            "Worst of the last 10 s per process: how late the event loop wakes up (every session waits "
            f"behind it; the alert fires above {LOOP_LAG_SECS * 1000:g} ms), and how long a caller's audio "
            "window waits for its VAD score.",
            [
                ("max by (instance) (gateway_event_loop_lag_seconds)", "loop lag {{instance}}"),
                ("max by (instance) (gateway_vad_wait_seconds)", "VAD wait {{instance}}"),
            ],
            unit="s",
            width=24,
            threshold=LOOP_LAG_SECS,
        ),
    )

    board.row("Memory")
    board.add(
        series(
            "Memory call p95 by operation",
            "Latency of get_all, search, add, delete and delete_all, per backend (pgvector, platform).",
            [
                (
                    quantile(0.95, "gateway_memory_seconds", ["operation", "backend"]),
                    "{{operation}} ({{backend}})",
                )
            ],
            unit="s",
            width=8,
        ),
        series(
            "Memory calls / s by operation",
            "Every memory call, failed ones included.",
            [(sum_rate("gateway_memory_seconds_count", ["operation"]), "{{operation}}")],
            unit="ops",
            width=8,
            stacked=True,
        ),
        series(
            "Pending memory writes",
            "Writes queued or retrying, per tenant. Steady growth means the backend can't keep up.",
            [("sum by (tenant) (gateway_memory_pending_writes)", "{{tenant}}")],
            unit="short",
            width=8,
        ),
        series(
            "Memory errors / s by operation",
            "Failed or timed-out memory calls.",
            [(sum_rate("gateway_memory_errors_total", ["operation"]), "{{operation}}")],
            unit="ops",
            width=12,
            stacked=True,
        ),
        series(
            "Turns refused by a full outbox",
            "Turns the local outbox (GATEWAY_OUTBOX_MAX_BYTES) had no room for, per tenant and interval: "
            "those are not stored. Zero unless the backend has been down long enough to fill it.",
            [
                (
                    f"sum by (tenant) (increase(gateway_memory_outbox_full_total[{RATE_INTERVAL}]))",
                    "{{tenant}}",
                )
            ],
            unit="short",
            width=12,
            bars=True,
        ),
        series(
            "Memory error ratio by operation",
            f"Failed calls over all calls; the alert fires per tenant above {MEMORY_ERROR_RATIO:.0%}.",
            [
                (
                    ratio(
                        sum_rate("gateway_memory_errors_total", ["operation"]),
                        sum_rate("gateway_memory_seconds_count", ["operation"]),
                    ),
                    "{{operation}}",
                )
            ],
            unit="percentunit",
            width=12,
            threshold=MEMORY_ERROR_RATIO,
        ),
        series(
            "Memories purged by retention",
            "Turns and facts past their tenant's memory.retention that the purge job deleted, per interval "
            "(they were no longer recalled from the moment they expired). Zero for tenants that keep "
            "memories until erased.",
            [
                (
                    f"sum by (tenant, kind) (increase(gateway_memory_purged_total[{RATE_INTERVAL}]))",
                    "{{tenant}} {{kind}}",
                )
            ],
            unit="short",
            width=12,
            bars=True,
        ),
    )

    board.row("Memory consolidation")
    board.add(
        series(
            "Consolidation backlog",
            "Jobs waiting or running per tenant (memory.consolidation; one per user with new turns). "
            "Steady growth: the extraction LLM is slow or failing, or jobs_per_minute is too low.",
            [("max by (tenant) (gateway_memory_consolidation_backlog)", "{{tenant}}")],
            unit="short",
            width=8,
        ),
        series(
            "Consolidation jobs / s by outcome",
            "consolidated, empty (no new turns), retried (the LLM or the database failed; backoff), "
            "abandoned (after its attempts), request_failed (a session could not queue its job).",
            [(sum_rate("gateway_memory_consolidation_total", ["outcome"]), "{{outcome}}")],
            unit="ops",
            width=8,
            stacked=True,
        ),
        series(
            "Consolidation job p95",
            "One job: mem0's extraction call and the supersede decision, LLM time included.",
            percentiles("gateway_memory_consolidation_seconds"),
            unit="s",
            width=8,
        ),
        series(
            "Facts / s",
            "added: extracted by consolidation; superseded: facts a newer one contradicted or repeated.",
            [(sum_rate("gateway_memory_facts_total", ["event"]), "{{event}}")],
            unit="ops",
            width=12,
            stacked=True,
        ),
        series(
            "Extraction LLM calls / s",
            "Consolidation's calls to the tenants' extraction LLMs (about one or two a job).",
            [(sum_rate("gateway_memory_consolidation_llm_calls_total", ["tenant"]), "{{tenant}}")],
            unit="ops",
            width=12,
        ),
    )

    board.row("Transport and build")
    board.add(
        series(
            "WebSocket messages / s by direction",
            "Messages received from (in) and sent to (out) clients.",
            [(sum_rate("gateway_ws_messages_total", ["direction"]), "{{direction}}")],
            unit="ops",
        ),
        series(
            "Tenant file reloads",
            "Reloads of the tenants file per interval: ok, or invalid (kept the previous tenants).",
            [
                (
                    f"sum by (outcome) (increase(gateway_tenant_reloads_total[{RATE_INTERVAL}]))",
                    "{{outcome}}",
                )
            ],
            unit="short",
            bars=True,
        ),
        build_info_table(),
    )

    board.row("Shared session state (Redis, or PostgreSQL for --workers)")
    board.add(
        series(
            "Processes reaching the session state",
            "gateway_session_state_up per process (1 = its last call succeeded). While a process cannot "
            "reach it, it refuses new sessions (503 / 1013 cluster_unavailable); live sessions go on. "
            "No series: one process keeps its own state.",
            [
                ("sum by (backend) (gateway_session_state_up)", "up ({{backend}})"),
                (
                    "count by (backend) (gateway_session_state_up)"
                    " - sum by (backend) (gateway_session_state_up)",
                    "down ({{backend}})",
                ),
            ],
            unit="short",
            stacked=True,
        ),
        series(
            "Sessions started at /start, by outcome",
            "claimed: its client connected to the process that started it; replaced: connected asking "
            "another serializer; missed: the connect built a session where it landed (the started one "
            "was elsewhere, expired, or prestart is off); unclaimed: no client came in time. "
            "Prestart hit rate = claimed / (claimed + replaced + missed).",
            [(sum_rate("gateway_prestart_total", ["outcome"]), "{{outcome}}")],
            unit="ops",
            stacked=True,
        ),
        series(
            "Dropped connections, by what became of their session",
            "A client whose network dropped (no close frame) may connect again with the same token "
            "within GATEWAY_RESUME_SECS: resumed, its conversation went on; expired, it did not and the "
            "session ended. Many expirations: clients that do not reconnect, or a proxy that sends "
            "the reconnect to another pod (it must reach the one that holds the session).",
            [(sum_rate("gateway_session_resumptions_total", ["outcome"]), "{{outcome}}")],
            unit="ops",
            stacked=True,
        ),
        series(
            "Session-state errors / s by operation",
            "Failed or timed-out calls: acquire / release / renew (session leases), spend_token, "
            "start_rate (falls back to the process's own bucket), ping.",
            [
                (
                    sum_rate("gateway_session_state_errors_total", ["backend", "operation"]),
                    "{{backend}} {{operation}}",
                )
            ],
            unit="ops",
        ),
    )
    return board.builder


def per_tenant() -> dashboard.Dashboard:
    board = _board(
        "memory-gateway-tenant",
        "Memory gateway / Tenant",
        "One or more tenants: sessions against their limit, rejections, latency, tokens and memory.",
    )
    board.builder.with_variable(
        dashboard.QueryVariable("tenant")
        .label("Tenant")
        .description("Every active tenant of the tenants file (gateway_tenant_max_sessions).")
        .datasource(DATASOURCE)
        .query("label_values(gateway_tenant_max_sessions, tenant)")
        .refresh(dashboard_model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dashboard_model.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        # "All" also covers tenants with rejections only, such as "unknown" (unauthenticated callers).
        .all_value(".+")
        .current(dashboard_model.VariableOption(selected=True, text="All", value="$__all"))
    )

    board.row("Sessions")
    board.add(
        series(
            "Sessions vs limit",
            "Live sessions against max_sessions, both summed over replicas (the limit holds per replica).",
            [
                (f"sum by (tenant) ({selector('gateway_sessions_active', TENANT)})", "{{tenant}} active"),
                (f"sum by (tenant) ({selector('gateway_tenant_max_sessions', TENANT)})", "{{tenant}} limit"),
            ],
            unit="short",
            width=8,
        ).override_by_regexp(
            ".* limit$",
            [
                dashboard_model.DynamicConfigValue(
                    id_val="custom.lineStyle", value={"dash": [10, 10], "fill": "dash"}
                ),
                dashboard_model.DynamicConfigValue(id_val="custom.fillOpacity", value=0),
            ],
        ),
        series(
            "Session limit used",
            f"Busiest replica's sessions over max_sessions; the alert fires above {SESSION_LIMIT_RATIO:.0%}.",
            [
                (
                    "max by (tenant) ("
                    + ratio(
                        selector("gateway_sessions_active", TENANT),
                        selector("gateway_tenant_max_sessions", TENANT),
                    )
                    + ")",
                    "{{tenant}}",
                )
            ],
            unit="percentunit",
            width=8,
            threshold=SESSION_LIMIT_RATIO,
        ),
        series(
            "Session ends / s by outcome",
            "completed, shutdown, client_error, idle_timeout or error.",
            [(sum_rate("gateway_sessions_total", ["tenant", "outcome"], TENANT), "{{tenant}} {{outcome}}")],
            unit="ops",
            width=8,
            stacked=True,
        ),
        series(
            "Rejections / s by reason",
            "Refused connections and requests; session_limit and rate_limited mean the tenant's limits bite.",
            [(sum_rate("gateway_rejections_total", ["tenant", "reason"], TENANT), "{{tenant}} {{reason}}")],
            unit="reqps",
            width=12,
            stacked=True,
        ),
        series(
            "WebSocket messages / s by direction",
            "Messages received from (in) and sent to (out) the tenant's clients.",
            [
                (
                    sum_rate("gateway_ws_messages_total", ["tenant", "direction"], TENANT),
                    "{{tenant}} {{direction}}",
                )
            ],
            unit="ops",
            width=12,
        ),
    )

    board.row("Latency and LLM")
    board.add(
        series(
            "Greeting p95",
            f"WebSocket accept to greeting written; the fleet alert fires above {GREETING_SLO_SECS:g} s.",
            [(quantile(0.95, "gateway_greeting_seconds", ["tenant"], TENANT), "{{tenant}}")],
            unit="s",
            width=8,
            threshold=GREETING_SLO_SECS,
        ),
        series(
            "Greetings / s by memories outcome",
            "recalled, none, or fallback (memory failed or missed the greeting deadline).",
            [
                (
                    sum_rate("gateway_greeting_seconds_count", ["tenant", "memories"], TENANT),
                    "{{tenant}} {{memories}}",
                )
            ],
            unit="ops",
            width=8,
            stacked=True,
        ),
        series(
            "Greetings / s by how they were made",
            "template, llm (greeting.mode: llm), or fallback (llm mode, the template said instead).",
            [
                (
                    sum_rate("gateway_greeting_seconds_count", ["tenant", "source"], TENANT),
                    "{{tenant}} {{source}}",
                )
            ],
            unit="ops",
            width=8,
            stacked=True,
        ),
        series(
            "User → bot latency p95",
            "End of the user's turn to the bot's first output.",
            [(quantile(0.95, "gateway_user_bot_latency_seconds", ["tenant"], TENANT), "{{tenant}}")],
            unit="s",
            width=8,
        ),
        series(
            "TTFB p95 by service",
            "Pipecat time to first byte of the LLM, STT and TTS services.",
            [
                (
                    quantile(0.95, "gateway_ttfb_seconds", ["tenant", "service"], TENANT),
                    "{{tenant}} {{service}}",
                )
            ],
            unit="s",
            width=12,
        ),
        series(
            "LLM tokens / s by kind",
            "Prompt and completion tokens.",
            [(sum_rate("gateway_llm_tokens_total", ["tenant", "kind"], TENANT), "{{tenant}} {{kind}}")],
            unit="short",
            width=12,
            stacked=True,
        ),
    )

    board.row("Memory")
    board.add(
        series(
            "Memory call p95 by operation",
            "get_all, search, add, delete and delete_all, per backend.",
            [
                (
                    quantile(0.95, "gateway_memory_seconds", ["tenant", "operation", "backend"], TENANT),
                    "{{tenant}} {{operation}} ({{backend}})",
                )
            ],
            unit="s",
            width=8,
        ),
        series(
            "Memory errors / s by operation",
            f"Failed or timed-out memory calls; the alert fires above {MEMORY_ERROR_RATIO:.0%} of calls.",
            [
                (
                    sum_rate("gateway_memory_errors_total", ["tenant", "operation"], TENANT),
                    "{{tenant}} {{operation}}",
                )
            ],
            unit="ops",
            width=8,
            stacked=True,
        ),
        series(
            "Pending memory writes",
            "Writes queued or retrying. Steady growth means the backend can't keep up.",
            [(f"sum by (tenant) ({selector('gateway_memory_pending_writes', TENANT)})", "{{tenant}}")],
            unit="short",
            width=8,
        ),
        series(
            "Consolidation backlog",
            "Jobs waiting or running (one per user with new turns).",
            [(f"max by (tenant) ({selector('gateway_memory_consolidation_backlog', TENANT)})", "{{tenant}}")],
            unit="short",
            width=8,
        ),
        series(
            "Consolidation jobs / s by outcome",
            "consolidated, empty, retried, abandoned, request_failed.",
            [
                (
                    sum_rate("gateway_memory_consolidation_total", ["tenant", "outcome"], TENANT),
                    "{{tenant}} {{outcome}}",
                )
            ],
            unit="ops",
            width=8,
            stacked=True,
        ),
        series(
            "Facts / s",
            "added by consolidation; superseded (contradicted or repeated by a newer fact).",
            [(sum_rate("gateway_memory_facts_total", ["tenant", "event"], TENANT), "{{tenant}} {{event}}")],
            unit="ops",
            width=8,
            stacked=True,
        ),
    )
    return board.builder


# --- output --------------------------------------------------------------------------------------------

DASHBOARDS: dict[str, Callable[[], dashboard.Dashboard]] = {
    "gateway-overview.json": overview,
    "gateway-tenant.json": per_tenant,
}


def render(board: dashboard.Dashboard) -> str:
    """Stable JSON: sorted keys, two-space indent, trailing newline."""
    return json.dumps(board.build(), cls=JSONEncoder, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def rendered() -> dict[str, str]:
    """File name → JSON text of every dashboard."""
    return {name: render(make()) for name, make in DASHBOARDS.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grafana.dashboards", description=__doc__)
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="directory to write (default: %(default)s)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file differs")
    args = parser.parse_args(argv)
    stale = []
    for name, text in rendered().items():
        path: Path = args.out / name
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        stale.append(name)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    for name in stale:
        print(f"{'stale' if args.check else 'wrote'} {args.out / name}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
