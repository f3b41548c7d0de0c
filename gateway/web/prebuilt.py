"""Pipecat's prebuilt UI (PyPI ``pipecat-ai-prebuilt``) at ``/client/``, as Pipecat's development runner
mounts it (``pipecat/runner/run.py``, ``_setup_frontend_routes``): its built files, served as they are.

The package is located, not imported: its ``frontend`` module imports FastAPI and prints. The app
POSTs ``/start`` with ``{"transport": "websocket"}`` (its WebSocket choice) and no key, and connects to
the ``wsUrl`` it gets back with ``?token=`` appended; demo mode answers that ``/start``
(``gateway.web.demo``). Its WebSocket transport keeps the default ``DailyMediaManager``, which loads
Daily's call-machine bundle from ``c.daily.co``: without internet access it cannot connect (measured
with pipecat-ai-prebuilt 1.3.0); the demo page at ``/demo/`` can.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from aiohttp import web

from gateway.logging import get_logger

log = get_logger(__name__)

PACKAGE = "pipecat_ai_prebuilt"


def dist_dir() -> Path | None:
    """The prebuilt app's ``client/dist`` folder, if the package is installed and has one."""
    spec = importlib.util.find_spec(PACKAGE)  # a top-level package: found without being imported
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        dist = Path(location) / "client" / "dist"
        if (dist / "index.html").is_file():
            return dist
    return None


def setup(app: web.Application) -> None:
    dist = dist_dir()
    if dist is None:
        log.warning("web.prebuilt_missing", package="pipecat-ai-prebuilt")
        return
    index = dist / "index.html"

    async def page(request: web.Request) -> web.FileResponse:
        return web.FileResponse(index, headers={"X-Content-Type-Options": "nosniff"})

    async def to_page(request: web.Request) -> web.Response:
        raise web.HTTPFound("/client/")

    app.router.add_get("/client", to_page)
    app.router.add_get("/client/", page)
    app.router.add_static("/client/", dist, append_version=False)
