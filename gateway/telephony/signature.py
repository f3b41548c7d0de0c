"""``X-Twilio-Signature``: base64(HMAC-SHA1(auth token, the URL Twilio requested + its POST parameters
sorted by name)), checked with the ``twilio`` package's ``RequestValidator`` (docs/pitfalls.md,
"Telephony (Twilio)").

The URL must be the one Twilio used, which the gateway may not see: behind a TLS-terminating proxy the
request arrives as ``http://`` on another host. So the candidates are the URL under
``GATEWAY_PUBLIC_URL`` (set it to what Twilio calls) and the request's own URL as received, each with
``https``/``wss`` as well; a signature that matches any of them is Twilio's (the scheme adds nothing
an attacker without the auth token could use). The WebSocket upgrade of a media stream is signed over
its ``wss://`` URL with no parameters.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web
from twilio.request_validator import RequestValidator
from yarl import URL

HEADER = "X-Twilio-Signature"
_SECURE = {"http": "https", "ws": "wss"}


def candidate_urls(request: web.Request, public_url: str | None, *, websocket: bool) -> list[str]:
    """The URLs Twilio may have signed for ``request``."""
    seen = request.url
    urls: list[URL] = []
    if public_url:
        base = URL(public_url.rstrip("/"))
        scheme = {"http": "ws", "https": "wss"}.get(base.scheme, base.scheme) if websocket else base.scheme
        urls.append(base.with_scheme(scheme).with_path(request.path).with_query(request.query_string))
    scheme = ("wss" if request.secure else "ws") if websocket else seen.scheme
    urls.append(seen.with_scheme(scheme))
    out: list[str] = []
    for url in urls:
        for variant in (url, url.with_scheme(_SECURE.get(url.scheme, url.scheme))):
            text = str(variant)
            if text not in out:
                out.append(text)
    return out


def valid(
    auth_token: str, signature: str | None, urls: list[str], params: Mapping[str, Any] | None = None
) -> bool:
    if not signature:
        return False
    validator = RequestValidator(auth_token)
    return any(validator.validate(url, params or {}, signature) for url in urls)
