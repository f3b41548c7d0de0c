"""PNG plots for scenarios, through matplotlib when it is installed (the ``bench`` extra), else nothing.

Plotting is optional by design: a gateway install without the extra still runs every scenario and
writes JSON and Markdown; the functions here then return ``None`` and the scenario lists no plot.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def available() -> bool:
    """True when matplotlib can be imported."""
    return _pyplot() is not None


def line_plot(
    path: Path,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    series: Mapping[str, Sequence[tuple[float, float]]],
    logx: bool = False,
    logy: bool = False,
) -> Path | None:
    """One line per series of ``(x, y)`` points (NaN y values are skipped); returns ``path`` or None."""
    plt = _pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    for label, points in series.items():
        shown = [(x, y) for x, y in points if not math.isnan(y)]
        if shown:
            ax.plot([p[0] for p in shown], [p[1] for p in shown], marker="o", label=label)
    if logx:
        ax.set_xscale("symlog", linthresh=100)
    if logy:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def bar_plot(
    path: Path,
    *,
    title: str,
    ylabel: str,
    bars: Mapping[str, float],
    logy: bool = False,
) -> Path | None:
    """One bar per label (values annotated on top); returns ``path`` or None."""
    plt = _pyplot()
    if plt is None:
        return None
    labels = list(bars)
    values = [0.0 if math.isnan(v) else v for v in bars.values()]
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    drawn = ax.bar(range(len(labels)), values, color="#4C72B0")
    ax.set_xticks(range(len(labels)), labels, rotation=15, ha="right", fontsize="small")
    for rect, value in zip(drawn, values, strict=True):
        ax.annotate(
            f"{value:.3g}",
            (rect.get_x() + rect.get_width() / 2, rect.get_height()),
            ha="center",
            va="bottom",
            fontsize="small",
        )
    if logy:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
