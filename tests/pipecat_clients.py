"""Pipecat's own client transports, run as real client pipelines against the gateway."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from pipecat.frames.frames import (
    Frame,
    InputTransportMessageFrame,
    LLMFullResponseEndFrame,
    LLMTextFrame,
    OutputTransportMessageUrgentFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.serializers.protobuf import ProtobufFrameSerializer
from pipecat.transports.base_transport import BaseTransport
from pipecat.transports.websocket.client import WebsocketClientParams, WebsocketClientTransport
from pipecat.transports.websocket.rtvi_client import RTVIClientTransport
from pipecat.workers.runner import WorkerRunner


@dataclass
class Transcript(FrameProcessor):
    """Collects complete bot responses, from frames (RTVI client) or RTVI messages (protobuf)."""

    responses: list[str] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    _parts: list[str] = field(default_factory=list)
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    def __post_init__(self) -> None:
        super().__init__()

    async def _complete(self) -> None:
        self.responses.append("".join(self._parts))
        self._parts.clear()
        async with self._changed:
            self._changed.notify_all()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, LLMTextFrame):
            self._parts.append(frame.text)
        elif isinstance(frame, LLMFullResponseEndFrame):
            await self._complete()
        elif isinstance(frame, InputTransportMessageFrame) and direction == FrameDirection.DOWNSTREAM:
            message = frame.message
            self.messages.append(message)
            if message.get("type") == "bot-llm-text":
                self._parts.append(message["data"]["text"])
            elif message.get("type") == "bot-llm-stopped":
                await self._complete()
        await self.push_frame(frame, direction)

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[str]:
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: len(self.responses) >= count)
        return self.responses


class PipecatClient:
    def __init__(self, transport: BaseTransport) -> None:
        self.transport = transport
        self.transcript = Transcript()
        self.worker = PipelineWorker(
            Pipeline([transport.input(), self.transcript, transport.output()]),
            idle_timeout_secs=None,
            enable_rtvi=False,
            check_dangling_tasks=False,
        )
        self._runner = WorkerRunner(handle_sigint=False, check_dangling_tasks=False)
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def rtvi(cls, uri: str) -> PipecatClient:
        return cls(RTVIClientTransport(uri))

    @classmethod
    def protobuf(cls, uri: str) -> PipecatClient:
        params = WebsocketClientParams(serializer=ProtobufFrameSerializer(), add_wav_header=False)
        return cls(WebsocketClientTransport(uri, params))

    async def start(self) -> None:
        await self._runner.add_workers(self.worker)
        self._task = asyncio.create_task(self._runner.run())

    async def send(self, message: dict[str, Any]) -> None:
        await self.worker.queue_frame(OutputTransportMessageUrgentFrame(message=message))

    async def stop(self) -> None:
        await self.worker.cancel()
        if self._task is not None:
            await asyncio.wait_for(self._task, 10)
