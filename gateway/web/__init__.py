"""What a browser gets from the gateway in demo mode: the demo page and Pipecat's prebuilt UI.

Off unless ``Settings.demo_enabled`` (``GATEWAY_DEMO``; on by default only for the first-run laptop
set-up). Production browsers reach the gateway through their tenant's own backend instead, which calls
``/start`` with the tenant's key (README, "Connect from a browser").
"""

from __future__ import annotations

from aiohttp import web

from gateway.keys import settings_key
from gateway.web import demo, prebuilt


def setup_web(app: web.Application) -> None:
    """Add the demo routes and ``/client/`` when demo mode is on; nothing otherwise."""
    if not app[settings_key].demo_enabled:
        return
    demo.setup(app)
    prebuilt.setup(app)
