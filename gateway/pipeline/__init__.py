"""One connection's Pipecat pipeline and its parts: the session that owns it, the WebSocket transport
and wire formats, RTVI, the greeting, LLM / STT / TTS services, observers, and the seam to Pipecat's
private parts (``pipecatcompat``). Routes and the registry build a ``Session``; nothing here imports
``gateway.routes`` or ``gateway.app``."""
