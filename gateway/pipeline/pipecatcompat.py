"""The gateway's seam to Pipecat's private parts that its per-session hot path relies on.

Everything here reaches past Pipecat's public API for CPU a session's set-up would otherwise pay
(``bench/scenarios/setup_cpu.py`` measures it), and ``tests/test_pipecat_compat.py`` fails loudly when
a Pipecat upgrade moves or changes what it relies on.

* **Worker handler discovery, once per class.** ``BaseWorker.__init__`` finds a worker's ``@job`` and
  ``@worker_ready`` methods by walking every attribute of every class in its MRO
  (``pipecat.pipeline.job_decorator._collect_job_handlers``,
  ``pipecat.pipeline.worker_ready_decorator._collect_worker_ready_handlers``), for every instance:
  about 0.1 ms per session's ``PipelineWorker``, all on the event loop, to find the same (here: no)
  handlers every time. ``cache_worker_handlers()`` has ``BaseWorker`` look them up once per class
  and bind them per instance: the same handlers, bound the same way (``getattr``), the same
  ``ValueError`` for a class with two handlers of one name.
* **One flat pipeline per worker.** ``PipelineWorker`` wraps the pipeline it is given in one of its
  own, ``[source, RTVI, <the given pipeline>, sink]``, and the given one is a ``Pipeline`` with a source
  and a sink of its own: every frame that crosses the session crosses three pass-through processors
  more (the inner pipeline, its source, its sink), each a push, an observer event and a queue call.
  ``flatten_worker_pipeline`` rebuilds the worker's pipeline (``PipelineWorker._pipeline``, between its
  ``_source`` and ``_sink``) as one ``Pipeline`` of the given type holding RTVI and the given
  pipeline's processors directly: the same processors in the same order, linked the same way, minus
  the three that only passed frames on (≈8 % of a set-up's Python calls). Anything shaped otherwise
  (a bridged worker, a nested pipeline that is not a plain ``Pipeline``) is left as Pipecat built it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pipecat.pipeline import job_decorator, worker_ready_decorator
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineWorker
from pipecat.workers import base_worker

Collect = Callable[[Any], dict[str, Callable[..., Any]]]

# Pipecat's own functions, and the marker attribute each one looks for on a handler function.
ORIGINAL_COLLECTORS: dict[str, tuple[Collect, Callable[[Any], str | None]]] = {
    "_collect_job_handlers": (
        job_decorator._collect_job_handlers,
        lambda f: f.job_name if getattr(f, "is_job_handler", False) else None,
    ),
    "_collect_worker_ready_handlers": (
        worker_ready_decorator._collect_worker_ready_handlers,
        lambda f: f.worker_ready_name if hasattr(f, "worker_ready_name") else None,
    ),
}


def handler_attributes(cls: type, key_of: Callable[[Any], str | None]) -> dict[str, str]:
    """``{handler key: attribute name}`` for ``cls``, found as Pipecat finds them: the first
    definition of each attribute name along the MRO, if callable and marked; two attributes marking
    one key raise ``ValueError`` as Pipecat does."""
    seen: set[str] = set()
    found: dict[str, str] = {}
    for klass in cls.__mro__:
        for attr_name, value in klass.__dict__.items():
            if attr_name in seen:
                continue
            seen.add(attr_name)
            if not callable(value):
                continue
            key = key_of(value)
            if key is None:
                continue
            if key in found:
                raise ValueError(
                    f"Duplicate handler for '{key}': '{attr_name}' conflicts with '{found[key]}'"
                )
            found[key] = attr_name
    return found


def _per_class(key_of: Callable[[Any], str | None]) -> Collect:
    cache: dict[type, dict[str, str]] = {}

    def collect(obj: Any) -> dict[str, Callable[..., Any]]:
        cls = type(obj)
        attributes = cache.get(cls)
        if attributes is None:
            attributes = cache[cls] = handler_attributes(cls, key_of)
        return {key: getattr(obj, name) for key, name in attributes.items()}

    collect.__wrapped__ = key_of  # type: ignore[attr-defined]  # marks ours (idempotence)
    return collect


def cache_worker_handlers() -> None:
    """Have ``BaseWorker`` discover ``@job`` / ``@worker_ready`` handlers once per class (idempotent)."""
    for name, (_, key_of) in ORIGINAL_COLLECTORS.items():
        current = getattr(base_worker, name)
        if getattr(current, "__wrapped__", None) is key_of:
            continue
        setattr(base_worker, name, _per_class(key_of))


def flatten_worker_pipeline(worker: PipelineWorker, pipeline: Pipeline, flat: type[Pipeline]) -> bool:
    """Replace ``worker``'s ``[source, (RTVI), pipeline, sink]`` by ``flat([(RTVI), *pipeline's
    processors], source, sink)``; True if done, False (nothing changed) if the worker is not shaped
    so. Call it right after the worker is built, before it runs."""
    outer = worker._pipeline
    source, sink = worker._source, worker._sink
    processors = outer.processors
    if (
        not isinstance(outer, Pipeline)
        or type(pipeline) is not flat
        or len(processors) < 3
        or processors[0] is not source
        or processors[-1] is not sink
        or processors[-2] is not pipeline
        or processors.count(pipeline) != 1
    ):
        return False
    inner = pipeline.processors[1:-1]  # without the given pipeline's own source and sink
    worker._pipeline = flat([*processors[1:-2], *inner], source=source, sink=sink)
    return True
