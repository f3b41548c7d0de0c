"""Every PromQL expression the dashboards and alert rules run, ready to send to a real Prometheus.

``all_expressions()`` reads the committed dashboard JSON (what Grafana provisions) and
``deploy/prometheus/rules.yml``, and substitutes Grafana's variables (``$__rate_interval``, ``$__interval``,
``$__range``, ``$tenant``) so each expression is plain PromQL. ``metric_names()`` lists the metric names an
expression selects, without a PromQL parser: strings, label matchers, ranges and grouping clauses are cut
out first, and what remains that is not a function, an aggregation or a keyword is a metric.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD_DIR = ROOT / "grafana" / "dashboards"
RULES_FILE = ROOT / "deploy" / "prometheus" / "rules.yml"


@dataclass(frozen=True, slots=True)
class Expression:
    source: str  # file, relative to the repository root
    name: str  # "<panel title> / <refId>", "variable <name>", "alert <name>" or "record <name>"
    expr: str  # PromQL, variables substituted


# --- Grafana variables -----------------------------------------------------------------------------------

# $name, ${name}, ${name:format} and the deprecated [[name]].
_VARIABLE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\$(\w+)|\[\[(\w+)\]\]")
# Grafana's label_values(metric, label) variable query, as the PromQL Prometheus would answer it with.
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(.+?)\s*,\s*(\w+)\s*\)\s*$", re.DOTALL)


def substitute(expr: str, variables: Mapping[str, str]) -> str:
    """``expr`` with each Grafana variable replaced; an unknown variable is a ``KeyError``."""

    def value(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group is not None)
        if name not in variables:
            raise KeyError(f"no value for Grafana variable ${name} in {expr!r}")
        return variables[name]

    return _VARIABLE.sub(value, expr)


def grafana_variables(
    *, rate_interval: str = "1m", interval: str = "1m", range_: str = "1h", tenant: str = ".+"
) -> dict[str, str]:
    """Values for the variables the dashboards use; ``tenant`` goes inside ``tenant=~"…"`` (a regex)."""
    return {
        "__rate_interval": rate_interval,
        "__interval": interval,
        "__range": range_,
        "tenant": tenant,
    }


# --- sources -------------------------------------------------------------------------------------------


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels") or [])  # a collapsed row holds its panels


def raw_dashboard_expressions() -> list[Expression]:
    """Dashboard queries as committed, variables and all; variable queries turned into PromQL."""
    found = []
    for path in sorted(DASHBOARD_DIR.glob("*.json")):
        source = str(path.relative_to(ROOT))
        board = json.loads(path.read_text(encoding="utf-8"))
        for variable in board.get("templating", {}).get("list", []):
            if variable.get("type") != "query":
                continue
            query = variable["query"]
            query = query.get("query", "") if isinstance(query, dict) else query
            match = _LABEL_VALUES.match(query)
            expr = f"count by ({match.group(2)}) ({match.group(1)})" if match else query
            found.append(Expression(source, f"variable {variable['name']}", expr))
        for panel in _panels(board.get("panels", [])):
            for target in panel.get("targets", []):
                if target.get("expr"):
                    found.append(Expression(source, f"{panel['title']} / {target['refId']}", target["expr"]))
    return found


def rule_expressions(rules_file: Path = RULES_FILE) -> list[Expression]:
    """Alerting and recording rule expressions (they hold no Grafana variables)."""
    source = str(rules_file.relative_to(ROOT))
    document = yaml.safe_load(rules_file.read_text(encoding="utf-8"))
    found = []
    for group in document["groups"]:
        for rule in group["rules"]:
            kind, name = ("alert", rule["alert"]) if "alert" in rule else ("record", rule["record"])
            found.append(Expression(source, f"{kind} {name}", rule["expr"].strip()))
    return found


def all_expressions(
    *, rate_interval: str = "1m", interval: str = "1m", range_: str = "1h", tenant: str = ".+"
) -> list[Expression]:
    """Every dashboard and rule expression, as plain PromQL.

    Pass ``tenant="acme"`` to query one tenant as the per-tenant dashboard does, or keep ``.+`` (its
    "All"). Keep ``rate_interval`` at four scrape intervals or more, as Grafana does.
    """
    variables = grafana_variables(
        rate_interval=rate_interval, interval=interval, range_=range_, tenant=tenant
    )
    dashboards = [
        Expression(e.source, e.name, substitute(e.expr, variables)) for e in raw_dashboard_expressions()
    ]
    return dashboards + rule_expressions()


# --- metric names --------------------------------------------------------------------------------------

_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
# An identifier not glued to a number (1e3, 5m) and the "(" that makes it a function call, if any.
_IDENTIFIER = re.compile(r"(?<![\w.:])([A-Za-z_:][\w:]*)(\s*\()?")
_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left", "group_right"}
    | {"atan2", "inf", "nan"}
)


def metric_names(expr: str) -> set[str]:
    """Names of the metrics ``expr`` selects (``{__name__=…}`` selectors are not supported)."""
    rest = _STRINGS.sub('""', expr)
    rest = _MATCHERS.sub(" ", rest)
    rest = _RANGES.sub(" ", rest)
    rest = _GROUPING.sub(" ", rest)
    return {
        match.group(1)
        for match in _IDENTIFIER.finditer(rest)
        if match.group(2) is None and match.group(1).lower() not in _KEYWORDS
    }
