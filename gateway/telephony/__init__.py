"""Phone calls: a telephony provider's webhook and media stream, each call a voice session.

Twilio Media Streams (``gateway.telephony.twilio``). The routes exist on every gateway; a tenant takes
calls once its ``telephony.twilio`` is set (and its ``stt`` and ``tts``).
"""

from __future__ import annotations

from aiohttp import web

from gateway.telephony.twilio import setup


def setup_telephony(app: web.Application) -> None:
    setup(app)
