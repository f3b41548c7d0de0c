"""``python -m bench [--smoke] [--only NAME ...]``: discover the scenarios, run them, write the results.

Scenarios run one after another in this process, on one event loop, each against baselines it starts
itself. A scenario that raises is recorded as failed (its JSON carries the error) and the run goes on;
the exit status is 1 if any failed. Smoke mode shrinks every size to seconds and writes into a temp
dir (or ``--out``), never into ``bench/results``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import pkgutil
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, TextIO

from bench import report
from bench.harness import BenchContext, ScenarioResult, machine_info

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
# Scenarios run in this order (the numbering); any other module found runs after, by name.
ORDER = ["greeting", "floor", "concurrency", "rss", "search", "writes", "redis_cost", "soak", "burst_workers"]


def discover(broken: dict[str, str] | None = None) -> dict[str, ModuleType]:
    """Every module in ``bench/scenarios`` with ``NAME``, ``TITLE`` and ``run``, keyed by ``NAME``.

    A module that fails to import is left out; its file name and error go into ``broken``, if given,
    so one scenario mid-edit doesn't stop the others.
    """
    import bench.scenarios as package

    found: dict[str, ModuleType] = {}
    for info in pkgutil.iter_modules(package.__path__):
        if info.name.startswith("_"):
            continue
        try:
            module = importlib.import_module(f"bench.scenarios.{info.name}")
        except Exception as e:
            if broken is not None:
                broken[info.name] = f"{type(e).__name__}: {e}"
            continue
        if all(hasattr(module, attr) for attr in ("NAME", "TITLE", "run")):
            found[module.NAME] = module
    ranked = [name for name in ORDER if name in found] + sorted(n for n in found if n not in ORDER)
    return {name: found[name] for name in ranked}


class Progress:
    """A progress bar on stderr: tqdm's when it is installed, else a one-line bar of our own."""

    def __init__(self, stream: TextIO | None = None, enabled: bool = True) -> None:
        self._stream = stream or sys.stderr
        # A bar redrawn into a file or pipe is just noise: bars only on a terminal.
        self._enabled = enabled and self._stream.isatty()
        self._scenario = ""
        self._bar: Any = None
        self._key: tuple[str, int] | None = None
        self._last = 0.0
        try:
            from tqdm import tqdm

            self._tqdm: Any = tqdm
        except ImportError:
            self._tqdm = None

    def scenario(self, name: str) -> Callable[[str, int, int], None]:
        """The ``progress`` callback for one scenario."""
        self.close()
        self._scenario = name
        return self.update

    def update(self, label: str, done: int, total: int) -> None:
        if not self._enabled:
            return
        desc = f"{self._scenario}: {label}"
        if self._tqdm is not None:
            if self._key != (desc, total):
                self.close()
                self._bar = self._tqdm(
                    total=total, desc=desc, file=self._stream, leave=False, dynamic_ncols=True
                )
                self._key = (desc, total)
            self._bar.n = done
            self._bar.refresh()
            return
        now = time.monotonic()
        if self._key == (desc, total) and done < total and now - self._last < 0.1:
            return
        self._key, self._last = (desc, total), now
        width = 30
        filled = int(width * done / total) if total else width
        self._stream.write(
            f"\r\x1b[2K{desc[:60]:<60} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}"
        )
        self._stream.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self._key is not None and self._enabled:
            self._stream.write("\r\x1b[2K")
            self._stream.flush()
        self._key = None

    def say(self, line: str) -> None:
        self.close()
        self._stream.write(line + "\n")
        self._stream.flush()


@dataclass
class RunSummary:
    out_dir: Path
    results: dict[str, ScenarioResult]
    errors: dict[str, str]
    markdown: Path


async def run_scenarios(
    *,
    smoke: bool,
    only: Sequence[str] = (),
    out_dir: Path | None = None,
    progress: bool = True,
    share_database: bool = True,
    database_url: str | None = None,
) -> RunSummary:
    """Run the chosen scenarios (all when ``only`` is empty) and write their JSON, PNGs and RESULTS.md.

    ``out_dir`` defaults to ``bench/results`` (or a fresh temp dir in smoke mode). With
    ``share_database`` one PostgreSQL serves the whole run (``BenchContext.database_url``): the one
    ``database_url`` names, else an embedded one started for the run.
    """
    broken: dict[str, str] = {}
    scenarios = discover(broken)
    unknown = [name for name in only if name not in scenarios and name not in broken]
    if unknown:
        raise SystemExit(f"unknown scenario(s): {', '.join(unknown)}; available: {', '.join(scenarios)}")
    chosen = [name for name in scenarios if not only or name in only]
    unloadable = {name: error for name, error in broken.items() if not only or name in only}
    if out_dir is None:
        out_dir = Path(tempfile.mkdtemp(prefix="mgw-bench-smoke-")) if smoke else RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    bar = Progress(enabled=progress)
    machine = machine_info()
    results: dict[str, ScenarioResult] = {}
    errors: dict[str, str] = {}
    database = None
    if not share_database:
        database_url = None
    elif database_url is None:
        from memory.postgres import EmbeddedPostgres, prepare_database

        database_dir = Path(tempfile.mkdtemp(prefix="mgw-bpg-"))
        database = EmbeddedPostgres(database_dir)
        database_url = await asyncio.to_thread(database.start)
        await asyncio.to_thread(prepare_database, database_url)
    for name, reason in unloadable.items():
        failed = ScenarioResult(name=name, title=name, rows=[], notes=[f"failed to import: {reason}"])
        report.write_json(failed, out_dir, machine=machine, smoke=smoke, seconds=0.0, error=reason)
        results[name] = failed
        errors[name] = reason
        bar.say(f"{name}: FAILED to import: {reason}")
    try:
        for name in chosen:
            module = scenarios[name]
            ctx = BenchContext(
                smoke=smoke, out_dir=out_dir, progress=bar.scenario(name), database_url=database_url
            )
            started = time.perf_counter()
            error: str | None = None
            try:
                result: ScenarioResult = await module.run(ctx)
            except Exception as e:
                error = f"{type(e).__name__}: {e}"
                logging.getLogger("bench").error("scenario %s failed\n%s", name, traceback.format_exc())
                result = ScenarioResult(name=name, title=module.TITLE, rows=[], notes=[f"failed: {error}"])
                errors[name] = error
            seconds = time.perf_counter() - started
            results[name] = result
            report.write_json(result, out_dir, machine=machine, smoke=smoke, seconds=seconds, error=error)
            met = sum(t.met for t in result.targets)
            bar.say(
                f"{name}: {'FAILED ' + error if error else 'done'} in {seconds:.1f} s"
                + (f", targets met {met}/{len(result.targets)}" if result.targets else "")
            )
    finally:
        bar.close()
        if database is not None:
            await asyncio.to_thread(database.stop)
            shutil.rmtree(database_dir, ignore_errors=True)
    markdown = report.write_markdown(out_dir, ORDER)
    if out_dir.resolve() == RESULTS_DIR.resolve() and not smoke:
        report.update_readme(BENCH_DIR / "README.md", markdown)
    return RunSummary(out_dir=out_dir, results=results, errors=errors, markdown=markdown)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds; results in a temp dir")
    parser.add_argument("--only", nargs="+", default=[], metavar="NAME", help="run only these scenarios")
    parser.add_argument("--out", type=Path, help="results directory (default bench/results)")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.list:
        for name, module in discover().items():
            print(f"{name:14} {module.TITLE}")
        return 0

    from gateway.logging import configure_logging

    # Gateway, Pipecat and mem0 logs would drown the bar; warnings still show.
    configure_logging("console", "WARNING")
    logging.getLogger("mem0.utils.spacy_models").setLevel(logging.ERROR)
    summary = asyncio.run(
        run_scenarios(smoke=args.smoke, only=args.only, out_dir=args.out, progress=not args.no_progress)
    )
    print(f"results: {summary.out_dir}  report: {summary.markdown}")
    return 1 if summary.errors else 0
