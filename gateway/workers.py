"""``serve --workers N``: one supervisor, N gateway processes, one event loop (one core) each.

The shape of uvicorn's ``supervisors/multiprocess.py`` and gunicorn's arbiter, reduced to what the
gateway needs:

* the supervisor starts the embedded PostgreSQL (when ``GATEWAY_DATABASE_URL`` is unset) and is the
  only process that starts and stops it; the workers get its URL as their external database;
* it creates the token secret before any worker could race to;
* every worker listens on the shared port with ``SO_REUSEPORT`` (the kernel spreads connections) and on
  a port of its own, ``GATEWAY_PORT + 1 + index``, which its ``/start`` puts into ``wsUrl``: the socket
  comes back to the worker that holds the session it prestarted (hit rate in
  ``gateway_prestart_total{outcome}``). Behind ``GATEWAY_PUBLIC_URL`` the proxy decides; a connect that
  reaches another worker builds the session there and takes the started one's slot over;
* the workers keep the tenant limits, spent tokens and ``/start`` buckets together in that PostgreSQL
  (``gateway.cluster.postgres``), or in Redis when ``GATEWAY_REDIS_URL`` is set;
* signals are forwarded: the first SIGTERM/SIGINT starts every worker's drain, a second forces them
  (``gateway.cli.run_server``); SIGHUP reloads tenants. A worker that dies unexpectedly is restarted,
  at most ``MAX_RESTARTS`` times a minute each;
* the workers share the machine's cores: each posts the greetings it owes on a board (a small shared
  file), and a greeted text session builds its pipeline once no worker owes one
  (``gateway.pipeline.builds``);
* when every worker has exited, PostgreSQL is stopped; the exit code is the first non-zero worker's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from types import FrameType

from gateway.logging import get_logger
from gateway.pipeline.builds import GreetingBoard
from gateway.settings import Settings

log = get_logger(__name__)

MAX_RESTARTS = 5  # per worker per minute


def worker_port(settings: Settings, index: int) -> int:
    return settings.port + 1 + index


@dataclass
class Worker:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    restarts: deque[float] = field(default_factory=lambda: deque(maxlen=MAX_RESTARTS))


class Supervisor:
    def __init__(self, settings: Settings, workers: int, argv: list[str]) -> None:
        self._settings = settings
        self._workers = [Worker(i) for i in range(workers)]
        self._argv = argv  # the worker's command line (serve, with the same flags)
        self._signals: deque[int] = deque()
        # Where each worker posts the greetings it owes: builds wait for the whole machine's.
        self._board = settings.data_dir / "run" / f"greetings-{os.getpid()}.board"

    def _env(self, index: int, database_url: str) -> dict[str, str]:
        env = {
            **os.environ,
            "GATEWAY_DATABASE_URL": database_url,
            "GATEWAY_WORKERS": str(len(self._workers)),
            "GATEWAY_WORKER_INDEX": str(index),
            "GATEWAY_GREETING_BOARD": str(self._board),
            # Decided here: workers see the embedded database as an external one.
            "GATEWAY_DEMO": "true" if self._settings.demo_enabled else "false",
        }
        if self._settings.session_state == "auto":
            env["GATEWAY_SESSION_STATE"] = "redis" if self._settings.redis_url is not None else "postgres"
        if self._settings.metrics_port is not None:  # one scrape target per worker
            env["GATEWAY_METRICS_PORT"] = str(self._settings.metrics_port + index)
        if self._settings.llm_base_url is not None:  # e.g. the supervisor's local LLM
            env["GATEWAY_LLM_BASE_URL"] = self._settings.llm_base_url
            env["GATEWAY_LLM_MODEL"] = self._settings.llm_model
        return env

    def _spawn(self, worker: Worker, database_url: str) -> None:
        worker.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", *self._argv], env=self._env(worker.index, database_url)
        )
        port = worker_port(self._settings, worker.index)
        log.info("workers.started", worker=worker.index, pid=worker.proc.pid, port=port)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._signals.append(signum)  # handled in the loop, never here

    def run(self, pending: list[str] | None = None) -> int:
        """Supervise until every worker has exited; ``pending``: signals received before this ran."""
        from gateway.tokens import load_or_create_secret
        from memory.postgres import EmbeddedPostgres, prepare_database

        # First of all: a SIGTERM while PostgreSQL starts must stop it again, not orphan it.
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        self._signals.extend(signal.Signals[name] for name in pending or ())
        settings = self._settings
        if settings.token_secret is None:
            load_or_create_secret(settings.data_dir)
        embedded = None
        url = settings.database_url
        if url is None:
            embedded = EmbeddedPostgres(settings.data_dir)
            url = embedded.start()
            log.info("workers.postgres_started", workers=len(self._workers))
        try:
            prepare_database(url)
            GreetingBoard.create(self._board, len(self._workers))
            for worker in self._workers:
                self._spawn(worker, url)
            return self._supervise(url)
        finally:
            for worker in self._workers:
                if worker.proc is not None and worker.proc.poll() is None:
                    worker.proc.kill()
                    worker.proc.wait(10)
            if embedded is not None:
                embedded.stop()
                log.info("workers.postgres_stopped")
            self._board.unlink(missing_ok=True)

    def _supervise(self, url: str) -> int:
        stopping = 0
        code = 0
        while True:
            while self._signals:
                signum = self._signals.popleft()
                if signum == signal.SIGHUP:
                    self._forward(signal.SIGHUP)
                    continue
                stopping += 1
                log.info("workers.stopping", signal=signal.Signals(signum).name, forced=stopping > 1)
                self._forward(signal.SIGTERM)
            alive = 0
            for worker in self._workers:
                proc = worker.proc
                if proc is None:
                    continue
                returncode = proc.poll()
                if returncode is None:
                    alive += 1
                    continue
                if stopping:
                    code = code or returncode
                    worker.proc = None
                    continue
                now = time.monotonic()
                if len(worker.restarts) == MAX_RESTARTS and now - worker.restarts[0] < 60:
                    log.error("workers.giving_up", worker=worker.index, returncode=returncode)
                    self._signals.append(signal.SIGTERM)
                    code = returncode or 1
                    worker.proc = None
                    continue
                log.error("workers.died", worker=worker.index, returncode=returncode)
                worker.restarts.append(now)
                self._spawn(worker, url)
                alive += 1
            if stopping and not alive:
                return code
            time.sleep(0.1)

    def _forward(self, signum: int) -> None:
        for worker in self._workers:
            if worker.proc is not None and worker.proc.poll() is None:
                worker.proc.send_signal(signum)
