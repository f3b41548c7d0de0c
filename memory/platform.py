"""``PlatformMemory``: the Mem0 platform through mem0's ``MemoryClient`` (``memory.backend: platform``).

Each tenant brings its own platform key (``api_key_env``) and host. The platform ORs bare top-level
IDs in Pipecat's usage, so every read here ANDs them explicitly: a shared ``agent_id`` never pulls in
another user's memories. Its filters do not cover a memory's role, and its ``delete_all`` combines
IDs by rules of its own, so both are done here from ANDed listings.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Self

import httpx
from mem0 import MemoryClient

from memory.config import MemorySettings
from memory.scope import MemoryScope
from memory.tenant import Resources, TenantMemory, results


class PlatformMemory(TenantMemory):
    """A tenant's ``MemoryClient`` on an HTTP client of its own, bounded like every memory call."""

    client: MemoryClient

    def __init__(
        self,
        *,
        tenant: str,
        client: MemoryClient,
        settings: MemorySettings,
        resources: Resources,
        http: httpx.Client,
    ) -> None:
        super().__init__(
            tenant=tenant, kind="platform", client=client, settings=settings, resources=resources
        )
        self._http = http

    @classmethod
    async def create(cls, tenant: str, settings: MemorySettings, resources: Resources) -> Self:
        api_key = os.environ.get(settings.api_key_env or "MEM0_API_KEY")
        if not api_key:
            raise RuntimeError(
                f"tenant {tenant!r}: Mem0 platform key env var {settings.api_key_env!r} is unset"
            )

        def connect() -> tuple[MemoryClient, httpx.Client]:
            # mem0's own httpx client waits up to 300 s per request; ours is bounded like every call.
            http = httpx.Client(timeout=httpx.Timeout(resources.call_timeout, connect=5.0))
            try:
                return MemoryClient(api_key=api_key, host=settings.host, client=http), http
            except BaseException:
                http.close()
                raise

        client, http = await resources.run(connect)
        return cls(tenant=tenant, client=client, settings=settings, resources=resources, http=http)

    def read_filters(self, scope: MemoryScope) -> dict[str, Any]:
        """The scope's IDs ANDed: the platform ORs bare top-level IDs in Pipecat's usage, and a shared
        ``agent_id`` must not pull in other users' memories."""
        return {"AND": [{k: v} for k, v in scope.retrieval_filters().items()]}

    async def recent(
        self, scope: MemoryScope, limit: int, timeout: float | None = None, role: str | None = None
    ) -> list[dict[str, Any]]:
        """The platform ignores ``role``."""
        remote, filters = self.client, self.read_filters(scope)
        return results(
            await self._call(
                "get_all", lambda: remote.get_all(filters=filters, page=1, page_size=limit), timeout
            )
        )[:limit]

    async def _users_words(
        self, scope: MemoryScope, limit: int, timeout: float | None
    ) -> list[dict[str, Any]]:
        # The platform's filters don't cover a memory's role; over-fetch a little and filter here.
        found = await self.recent(scope, limit * 3, timeout)
        return [m for m in found if m.get("role", "user") == "user"][:limit]

    async def _erase(self, scope: MemoryScope, timeout: float) -> int:
        """Delete exactly what our ANDed listing returns, by ID: it can't touch another user's memories."""
        deleted = 0
        seen: set[str] = set()
        while found := [m for m in await self.recent(scope, 100, timeout) if m.get("id") not in seen]:
            for memory in found:
                memory_id = str(memory["id"])
                seen.add(memory_id)
                await self._call("delete", functools.partial(self.client.delete, memory_id), timeout)
            deleted += len(found)
        return deleted

    async def _release(self) -> None:
        await self._run(self._http.close)
