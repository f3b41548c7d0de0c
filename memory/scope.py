"""Which IDs a memory is stored under, and which IDs find it again.

Storage uses every ID the session has (tenant-prefixed): the row keeps its full provenance.
Retrieval — greeting and per-turn search — deliberately drops ``run_id`` whenever a user is known,
because mem0's local backend ANDs all given IDs and every session gets a fresh ``run_id``: filtering
by it would hide everything the user said in earlier sessions (docs/pitfalls.md). ``agent_id`` stays in the
retrieval filter so one user's memories with two different bots remain separate. Without a user,
the agent scopes retrieval; with only a run, the run does.

Every ID is prefixed ``<tenant>/`` on top of the per-tenant table, so a row that somehow crossed
tables would still not match another tenant's filter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: A client-facing user, agent or run ID: 1-128 of ``A-Za-z0-9._:@+=-``, starting with a letter or
#: digit (never ``/``, the tenant prefix's separator).
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+=-]{0,127}$")
ID_KEYS = ("user_id", "agent_id", "run_id")


@dataclass(frozen=True, slots=True)
class MemoryScope:
    tenant: str
    user_id: str | None = None
    agent_id: str | None = None
    run_id: str | None = None

    def __post_init__(self) -> None:
        if not (self.user_id or self.agent_id or self.run_id):
            raise ValueError("at least one of user_id, agent_id or run_id is required")

    def _ns(self, value: str | None) -> str | None:
        return f"{self.tenant}/{value}" if value else None

    def storage_ids(self) -> dict[str, str]:
        ids = {
            "user_id": self._ns(self.user_id),
            "agent_id": self._ns(self.agent_id),
            "run_id": self._ns(self.run_id),
        }
        return {k: v for k, v in ids.items() if v}

    def retrieval_filters(self) -> dict[str, str]:
        if self.user_id:
            filters = {"user_id": self._ns(self.user_id), "agent_id": self._ns(self.agent_id)}
        elif self.agent_id:
            filters = {"agent_id": self._ns(self.agent_id)}
        else:
            filters = {"run_id": self._ns(self.run_id)}
        return {k: v for k, v in filters.items() if v}

    def strip(self, value: str | None) -> str | None:
        """The client-facing form of a stored ID (without the tenant prefix)."""
        prefix = f"{self.tenant}/"
        if value and value.startswith(prefix):
            return value[len(prefix) :]
        return value
