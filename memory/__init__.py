"""Memory backends for the gateway: mem0 wired to PostgreSQL + pgvector (embedded or external),
an offline embedder, or the Mem0 platform.

mem0 reads ``MEM0_TELEMETRY`` when it is first imported; with telemetry on, every ``Memory`` opens a
second local Qdrant store and phones home (docs/pitfalls.md). The default is switched off here, before any
module of this package imports mem0, so no import order can turn it back on by accident.
"""

import os

os.environ.setdefault("MEM0_TELEMETRY", "false")
