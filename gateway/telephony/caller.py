"""Who is calling: the caller's number as the session's ``user_id``, and as a tag fit for a log line.

A returning caller is recognised by their number, within the tenant (memory is namespaced by tenant,
``memory.scope``): ``user_id`` is the tenant's ``user_id_prefix`` + the E.164 number
(``tel:+15551234567``, a tel URI), so the tenant's backend can list or erase a caller's memories with
``/v1/memories?user_id=tel:+15551234567``. A withheld or malformed number (``anonymous``, a SIP URI,
``client:…``) identifies nobody: such a call has no ``user_id`` and is its own ``run_id``, and nothing
is recalled across calls.

A number never goes into a log line or a metric: logs carry ``caller``, an HMAC of tenant and number
under the gateway's token secret (``SessionTokens.tag``), the same for every call of one caller and
useless to anyone without the secret — a plain hash of a phone number is reversed by trying every
number.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gateway.tenants import TwilioSettings

E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")
CALL_SID = re.compile(r"^CA[0-9a-f]{32}$")


@dataclass(frozen=True, slots=True)
class Caller:
    number: str | None  # E.164, or None when withheld: never logged
    user_id: str | None
    agent_id: str | None
    run_id: str


def identify(*, number: str | None, call_sid: str, settings: TwilioSettings) -> Caller:
    """The session IDs of a call (``ValueError`` for a call SID that is not one)."""
    if not CALL_SID.fullmatch(call_sid):
        raise ValueError("CallSid is not a Twilio call SID")
    if number is not None and E164.fullmatch(number):
        return Caller(number, settings.user_id_prefix + number, settings.agent_id, call_sid)
    return Caller(None, None, settings.agent_id, call_sid)
