"""Results on disk: one JSON file per scenario, and a Markdown report built from all of them.

``RESULTS.md`` is rebuilt from every ``*.json`` in the results directory, so ``--only NAME`` refreshes
one scenario and keeps the others' latest numbers in the report. ``bench/README.md`` shows the same
report between two marker comments, replaced on every full (non-smoke) run into ``bench/results``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.harness import ScenarioResult

MARK_START = "<!-- results:start (written by `python -m bench`; do not edit by hand) -->"
MARK_END = "<!-- results:end -->"


def _clean(value: Any) -> Any:
    """JSON has no NaN: write ``null`` for what was not measured."""
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, Path):
        return value.name
    return value


def write_json(
    result: ScenarioResult,
    out_dir: Path,
    *,
    machine: dict[str, Any],
    smoke: bool,
    seconds: float,
    error: str | None = None,
) -> Path:
    """``<out_dir>/<name>.json``: the result, machine info, mode and wall time (plots by file name)."""
    payload = {
        "name": result.name,
        "title": result.title,
        "smoke": smoke,
        "seconds": round(seconds, 2),
        "error": error,
        "machine": machine,
        "rows": result.rows,
        "targets": [asdict(t) for t in result.targets],
        "notes": result.notes,
        "plots": result.plots,
    }
    path = out_dir / f"{result.name}.json"
    path.write_text(json.dumps(_clean(payload), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return path


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        if value != 0 and abs(value) < 0.01:
            return f"{value:.2g}"
        return f"{value:,.2f}".rstrip("0").rstrip(".") if abs(value) < 1e6 else f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table; the columns are the union of the rows' keys, in first-seen order."""
    if not rows:
        return "_no rows_\n"
    columns: list[str] = []
    for row in rows:
        for key in row:
            if key not in columns:
                columns.append(key)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def scenario_section(data: dict[str, Any], *, heading: str = "##", link_plots: bool = True) -> str:
    parts = [f"{heading} {data['title']} (`{data['name']}`)\n"]
    if data.get("error"):
        parts.append(f"**Failed:** `{data['error']}`\n")
    parts.append(table(data.get("rows", [])))
    targets = data.get("targets", [])
    if targets:
        parts.append("")
        for t in targets:
            mark = "✅ met" if t["met"] else "❌ not met"
            measured = _cell(t["measured"])
            parts.append(
                f"- **Target** {t['name']}: {measured} {t['unit']} (limit {_cell(t['limit'])}) — {mark}"
            )
        parts.append("")
    notes = data.get("notes", [])
    if notes:
        parts.append("")
        parts.extend(f"- {note}" for note in notes)
        parts.append("")
    if link_plots:
        for plot in data.get("plots", []):
            parts.append(f"![{plot}]({plot})")
        if data.get("plots"):
            parts.append("")
    date = data.get("machine", {}).get("date", "?")
    parts.append(f"_{data.get('seconds', 0)} s, run {date}{' (smoke)' if data.get('smoke') else ''}_\n")
    return "\n".join(parts)


def load_results(out_dir: Path, order: list[str]) -> list[dict[str, Any]]:
    """Every ``<name>.json`` in ``out_dir``, in ``order`` first, then the rest by name."""
    found = {}
    for path in sorted(out_dir.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and "rows" in data and "name" in data:
            found[data["name"]] = data
    ranked = [found.pop(name) for name in order if name in found]
    return ranked + [found[name] for name in sorted(found)]


def targets_summary(results: list[dict[str, Any]]) -> str:
    lines = ["| scenario | target | measured | limit | met |", "|---|---|---|---|---|"]
    for data in results:
        for t in data.get("targets", []):
            lines.append(
                f"| `{data['name']}` | {t['name']} | {_cell(t['measured'])} {t['unit']} | "
                f"{_cell(t['limit'])} {t['unit']} | {'✅' if t['met'] else '❌'} |"
            )
    return "\n".join(lines) + "\n"


def write_markdown(out_dir: Path, order: list[str]) -> Path:
    """``<out_dir>/RESULTS.md`` from all the scenario JSON files there."""
    results = load_results(out_dir, order)
    machine = results[0]["machine"] if results else {}
    head = [
        "# Benchmark results",
        "",
        f"Machine: {machine.get('processor', '?')}, {machine.get('cpu_count', '?')} CPUs, "
        f"{machine.get('platform', '?')}; Python {machine.get('python', '?')}, "
        f"pipecat-ai {machine.get('pipecat', '?')}, mem0ai {machine.get('mem0', '?')}; "
        f"first scenario run {machine.get('date', '?')} (each section names its own run).",
        "",
        "## Targets",
        "",
        targets_summary(results),
    ]
    body = [scenario_section(data) for data in results]
    path = out_dir / "RESULTS.md"
    path.write_text("\n".join(head) + "\n" + "\n".join(body), encoding="utf-8")
    return path


def update_readme(readme: Path, results_md: Path, relative_to: str = "results/") -> bool:
    """Put ``RESULTS.md`` (its image links made relative to the README) between the README's markers."""
    if not readme.exists():
        return False
    text = readme.read_text(encoding="utf-8")
    if MARK_START not in text or MARK_END not in text:
        return False
    report = results_md.read_text(encoding="utf-8").replace("](", f"]({relative_to}")
    # The report's own "# Benchmark results" title is the README's section heading already.
    report = "\n".join(
        line.replace("## ", "### ", 1) if line.startswith("## ") else line
        for line in report.splitlines()
        if not line.startswith("# ")
    ).strip()
    before, rest = text.split(MARK_START, 1)
    _, after = rest.split(MARK_END, 1)
    readme.write_text(f"{before}{MARK_START}\n{report}\n{MARK_END}{after}", encoding="utf-8")
    return True
