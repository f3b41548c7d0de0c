"""Multi-tenant WebSocket gateway for Pipecat bots with Mem0 long-term memory."""

__version__ = "0.1.0"
