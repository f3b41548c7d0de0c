"""A local stand-in for the paid Mem0 platform: its REST wire protocol, so mem0's real
``MemoryClient`` code path runs. Memories are kept per API key, as the platform keeps them per project.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

ENTITY_KEYS = ("user_id", "agent_id", "run_id")


def matches(memory: dict[str, Any], filters: dict[str, Any]) -> bool:
    """The platform's filter language, as far as the gateway uses it: AND / OR / plain equality."""
    for key, value in filters.items():
        if key == "AND":
            if not all(matches(memory, f) for f in value):
                return False
        elif key == "OR":
            if not any(matches(memory, f) for f in value):
                return False
        elif memory.get(key) != value:
            return False
    return True


@dataclass
class FakeMem0:
    keys: set[str] = field(default_factory=set)
    memories: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    server: TestServer | None = None

    @property
    def host(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/ping/", self._ping)
        app.router.add_post("/v3/memories/add/", self._add)
        app.router.add_post("/v3/memories/", self._list)
        app.router.add_post("/v3/memories/search/", self._search)
        app.router.add_delete("/v1/memories/{memory_id}/", self._delete)
        self.server = TestServer(app, host="127.0.0.1", port=0)
        await self.server.start_server()

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()

    def _project(self, request: web.Request) -> list[dict[str, Any]]:
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        if scheme != "Token" or key not in self.keys:
            raise web.HTTPUnauthorized(text='{"detail": "Invalid API key"}', content_type="application/json")
        return self.memories.setdefault(key, [])

    async def _ping(self, request: web.Request) -> web.Response:
        self._project(request)
        return web.json_response({"status": "ok", "org_id": "org", "project_id": "proj", "user_email": None})

    async def _add(self, request: web.Request) -> web.Response:
        project = self._project(request)
        body = await request.json()
        self.requests.append(("add", body))
        results = []
        for message in body["messages"]:
            memory = {
                "id": str(uuid.uuid4()),
                "memory": message["content"],
                "role": message["role"],
                "created_at": datetime.now(UTC).isoformat(),
                "metadata": body.get("metadata"),
                **{k: body[k] for k in ENTITY_KEYS if body.get(k)},
            }
            project.append(memory)
            results.append({"id": memory["id"], "memory": memory["memory"], "event": "ADD"})
        return web.json_response({"results": results})

    async def _list(self, request: web.Request) -> web.Response:
        project = self._project(request)
        body = await request.json()
        self.requests.append(("get_all", body))
        found = [m for m in reversed(project) if matches(m, body.get("filters", {}))]
        size = int(request.query.get("page_size", 100))
        return web.json_response(
            {"count": len(found), "next": None, "previous": None, "results": found[:size]}
        )

    async def _delete(self, request: web.Request) -> web.Response:
        project = self._project(request)
        memory_id = request.match_info["memory_id"]
        self.requests.append(("delete", {"id": memory_id}))
        before = len(project)
        project[:] = [m for m in project if m["id"] != memory_id]
        if len(project) == before:
            return web.json_response({"detail": "Memory not found"}, status=404)
        return web.json_response({"message": "Memory deleted successfully!"})

    async def _search(self, request: web.Request) -> web.Response:
        project = self._project(request)
        body = await request.json()
        self.requests.append(("search", body))
        words = set(body["query"].lower().split())
        scored = []
        for m in project:
            if matches(m, body.get("filters", {})):
                overlap = len(words & set(m["memory"].lower().split())) / max(1, len(words))
                if overlap >= body.get("threshold", 0.0):
                    scored.append({**m, "score": overlap})
        scored.sort(key=lambda m: -m["score"])
        return web.json_response({"results": scored[: body.get("top_k", 10)]})
