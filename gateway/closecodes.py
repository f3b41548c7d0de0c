"""WebSocket close codes the gateway sends (docs/architecture.md §2; README "Tenants and security").

Application codes mirror the HTTP status a client would have met at ``/start``: 4000 + the last
digits of 401, 403, 408, 429.
"""

from __future__ import annotations

from aiohttp import WSCloseCode

NORMAL = int(WSCloseCode.OK)  # session ended
GOING_AWAY = int(WSCloseCode.GOING_AWAY)  # server draining / shutting down
PROTOCOL_ERROR = int(WSCloseCode.PROTOCOL_ERROR)  # 1002: a frame that breaks the WebSocket protocol
INVALID_PAYLOAD = int(WSCloseCode.INVALID_TEXT)  # 1007: repeated undecodable frames
POLICY_VIOLATION = int(WSCloseCode.POLICY_VIOLATION)  # 1008: client stopped reading
MESSAGE_TOO_BIG = int(WSCloseCode.MESSAGE_TOO_BIG)  # 1009
INTERNAL_ERROR = int(WSCloseCode.INTERNAL_ERROR)  # 1011
TRY_AGAIN_LATER = int(WSCloseCode.TRY_AGAIN_LATER)  # 1013: shared session state (Redis) unreachable
BAD_TOKEN = 4001  # bad, expired, reused or mismatched token
FORBIDDEN = 4003  # tenant disabled, or browser Origin not allowed
IDLE_TIMEOUT = 4008  # client sent nothing for GATEWAY_IDLE_TIMEOUT_SECS
TOO_MANY_SESSIONS = 4029  # tenant at its concurrent-session limit
