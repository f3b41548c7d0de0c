"""Session tokens: short-lived, single-use, signed, bound to tenant + IDs + session.

``/start`` mints one per session; the WebSocket upgrade presents it. They are JWTs (HS256, PyJWT) so
any replica holding the secret can verify them; the algorithm is pinned, so ``alg=none`` and
algorithm-confusion tokens are refused. Single use is not checked here but by the session registry
(``gateway.cluster``), which remembers each spent ``jti`` until the token expires — in this process,
or in Redis for every replica.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jwt

ALGORITHM = "HS256"
ISSUER = "memory-gateway"
AUDIENCE = "memory-gateway/ws"


class TokenError(Exception):
    """The token is malformed, forged, expired or already used."""


class TokenExpired(TokenError):
    """The token is genuine but past its expiry: it opens no session, but may resume its own."""


@dataclass(frozen=True, slots=True)
class SessionClaims:
    tenant: str
    session_id: str
    user_id: str | None
    agent_id: str | None
    run_id: str | None
    serializer: str | None
    expires_at: float


def load_or_create_secret(data_dir: Path) -> str:
    path = data_dir / "token_secret"
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    path.write_text(secret, encoding="utf-8")
    path.chmod(0o600)
    return secret


class SessionTokens:
    def __init__(self, secret: str, ttl_secs: float = 60.0, clock: Callable[[], float] = time.time) -> None:
        if len(secret) < 32:
            raise ValueError("token secret must be at least 32 characters")
        self._secret = secret
        self._ttl = ttl_secs
        self._clock = clock

    def issue(
        self,
        *,
        tenant: str,
        user_id: str | None,
        agent_id: str | None,
        run_id: str | None,
        serializer: str | None = None,
        session_id: str | None = None,
    ) -> tuple[str, SessionClaims]:
        now = self._clock()
        sid = session_id or uuid.uuid4().hex
        claims = SessionClaims(tenant, sid, user_id, agent_id, run_id, serializer, now + self._ttl)
        payload = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "iat": int(now),
            "exp": now + self._ttl,
            "jti": sid,
            "ten": tenant,
            "uid": user_id,
            "aid": agent_id,
            "rid": run_id,
            "ser": serializer,
        }
        return jwt.encode(payload, self._secret, algorithm=ALGORITHM), claims

    def tag(self, *parts: str) -> str:
        """A keyed hash of ``parts`` for log lines (12 hex digits of HMAC-SHA256 under the secret): the
        same input always gets the same tag, and nobody without the secret can tell what it was."""
        mac = hmac.new(self._secret.encode(), "\0".join(parts).encode(), hashlib.sha256)
        return mac.hexdigest()[:12]

    def verify(self, token: str, *, expired_ok: bool = False) -> SessionClaims:
        """Check signature, audience and expiry (single use: ``SessionRegistry.spend_token``).

        ``expired_ok``: an expired but otherwise valid token's claims (``TokenExpired`` otherwise) —
        only to find the session it opened, which its client may resume (``Session.resume``).
        """
        try:
            payload = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                audience=AUDIENCE,
                issuer=ISSUER,
                options={"require": ["exp", "iat", "jti", "iss", "aud"], "verify_exp": not expired_ok},
                leeway=0,
            )
        except jwt.ExpiredSignatureError as e:
            raise TokenExpired("ExpiredSignatureError") from e
        except jwt.PyJWTError as e:
            raise TokenError(type(e).__name__) from e
        if float(payload["exp"]) <= self._clock() and not expired_ok:
            raise TokenExpired("ExpiredSignatureError")
        jti = str(payload["jti"])
        tenant = payload.get("ten")
        if not isinstance(tenant, str) or not tenant:
            raise TokenError("no tenant")
        return SessionClaims(
            tenant=tenant,
            session_id=jti,
            user_id=payload.get("uid"),
            agent_id=payload.get("aid"),
            run_id=payload.get("rid"),
            serializer=payload.get("ser"),
            expires_at=float(payload["exp"]),
        )
