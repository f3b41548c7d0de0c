"""An aiohttp WebSocket transport for Pipecat, in the shape of Pipecat's FastAPI transport.

A holder (``AiohttpWebsocketTransport``) exposes ``input()`` / ``output()``; one client object
(``AiohttpWebsocketClient``) owns the socket; the serializer is injected through the params. Unlike
Pipecat's transports, the client, not the input transport, reads the socket: a session speaks to its
client (the RTVI handshake, the greeting) before its pipeline exists (``gateway.pipeline.session``), so
the client reads from the moment the socket is attached and hands each decoded frame to a *sink* — the
session's inbox first, the pipeline's input transport once the session hands the conversation over
(``AiohttpWebsocketInputTransport.deliver``). On top of the FastAPI model the client:

* answers an undecodable frame with an RTVI ``error`` message (no internals), and closes with 1007
  after ``max_bad_frames`` of them;
* lets aiohttp enforce the message-size limit (close 1009) and reports it;
* bounds every send with a timeout, so a client that stops reading cannot stall the pipeline (1008);
* closes a connection whose client sent nothing for ``idle_timeout`` (4008), pings not counting;
* reports what happens through one ``TransportHooks`` object (messages per direction, rejections,
  messages written and received), bound once per session: no label lookups per frame;
* can exist before its socket: a session assembled at ``/start`` gets its socket with ``attach()``
  when the client connects; until then nothing is read or written;
* writes an urgent message (RTVI's) on the task that produced it when the socket can take it without
  waiting (``send_message_now``), and otherwise queues it behind the ones already waiting, so that
  a slow client still meets the send timeout on the output transport's own task.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pipecat.processors.frameworks.rtvi.models as RTVI
from aiohttp import WebSocketError, WSMsgType, web
from pipecat.frames.frames import (
    CancelFrame,
    ClientConnectedFrame,
    EndFrame,
    Frame,
    InputAudioRawFrame,
    InputTransportMessageFrame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    OutputAudioRawFrame,
    OutputTransportMessageFrame,
    OutputTransportMessageUrgentFrame,
    StartFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessorSetup
from pipecat.serializers.base_serializer import FrameSerializer
from pipecat.transports.base_input import BaseInputTransport
from pipecat.transports.base_output import BaseOutputTransport
from pipecat.transports.base_transport import BaseTransport, TransportParams
from pydantic import ConfigDict, Field

from gateway import closecodes
from gateway.logging import get_logger
from gateway.pipeline.serializers import UndecodableFrame

log = get_logger(__name__)

Sink = Callable[[Frame], Awaitable[None]]
# What a detached client's session may write meanwhile (held for its return): a reply or two in text.
HELD_MESSAGES = 256
HELD_BYTES = 1024 * 1024
# How far the bot's audio is written ahead of real time (AiohttpWebsocketOutputTransport.write_audio_frame).
AUDIO_LEAD_SECS = 0.2


class TransportHooks:
    """What a transport tells its session; every method is called on the event loop and must not wait.

    The base class does nothing, which is what a transport without a session (a test) wants.
    """

    def count_in(self) -> None:
        """A data message was received."""

    def count_out(self) -> None:
        """A message was written."""

    def bad_frame(self) -> None:
        """A message was not a frame of the negotiated protocol."""

    def rejected(self, reason: str, code: int) -> None:
        """The connection is being closed for ``reason`` with close ``code``."""

    def response_written(self) -> None:
        """A response of the bot's (everything RTVI reports of it, its last ``bot-output`` included)
        has been written."""

    def client_message(self, message: dict[str, Any]) -> None:
        """An RTVI message arrived from the client (before anything handles it)."""

    def audio_written(self) -> None:
        """A chunk of the bot's audio was written (called for every chunk: keep it cheap)."""

    def interrupted(self) -> None:
        """The bot was interrupted (the user spoke over it): its queued audio is being dropped."""


@dataclass(frozen=True, slots=True)
class SocketHandle:
    """An accepted WebSocket and what only its request can do: drop the TCP connection (``abort``),
    and tell how many bytes its transport takes now without pausing its writer (``write_room``; 0
    when unknown: every message then goes through the output transport's queue)."""

    ws: web.WebSocketResponse
    abort: Callable[[], None]
    write_room: Callable[[], int]
    # Set once the client is done with this socket (read to its end, detached or closed): what the
    # request's handler waits for; the session may outlive it (resumption).
    done: asyncio.Event = field(default_factory=asyncio.Event)


class DeferredMessageFrame(OutputTransportMessageUrgentFrame):
    """An urgent message that could not be written on its producer's task: the output transport
    writes it from its own, in order with the others deferred."""


class AiohttpWebsocketParams(TransportParams):
    """Parameters of the aiohttp WebSocket transport.

    Parameters:
        serializer: Frame serializer for this connection's wire format.
        send_timeout: Longest a single send may wait on a slow client before closing with 1008.
        idle_timeout: Longest the client may send no data message before closing with 4008.
        close_timeout: Longest to wait for the close handshake.
        max_bad_frames: Undecodable frames tolerated before closing with 1007.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    serializer: FrameSerializer | None = None
    send_timeout: float = Field(default=10.0, gt=0)
    idle_timeout: float | None = Field(default=None, gt=0)
    close_timeout: float = Field(default=1.0, gt=0)
    max_bad_frames: int = Field(default=5, ge=1)


class AiohttpWebsocketClient:
    """Owns the aiohttp ``WebSocketResponse``: reading, sending, closing.

    One reader task per socket (``start_reading``) decodes each data message with the serializer and
    awaits ``sink(frame)`` before it reads the next, so frames reach whoever holds the sink in the
    order the client sent them, and a sink that is full holds the reader back (TCP does the rest).
    """

    def __init__(self, params: AiohttpWebsocketParams, hooks: TransportHooks) -> None:
        self._params = params
        self._serializer = params.serializer
        self._hooks = hooks
        self._socket: SocketHandle | None = None
        self._attached = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._closing = False
        self._bad_frames = 0
        self._users = 0
        self.close_code: int | None = None
        # The socket went away without a close frame (a network drop, not the client leaving).
        self.dropped = False
        # While detached (``detach``), what is written waits here for the next socket, in order.
        self._held: deque[str | bytes] | None = None
        self._held_bytes = 0

    @property
    def websocket(self) -> web.WebSocketResponse | None:
        return self._socket.ws if self._socket is not None else None

    @property
    def is_connected(self) -> bool:
        return self._socket is not None and not self._socket.ws.closed

    @property
    def is_closing(self) -> bool:
        return self._closing

    def attach(self, socket: SocketHandle) -> None:
        """Hand over the client's socket (once; ``reattach`` after a ``detach``)."""
        if self._socket is not None or self._held is not None:
            raise RuntimeError("a socket is already attached")
        self._socket = socket
        self._attached.set()

    @property
    def detached(self) -> bool:
        return self._held is not None and self._socket is None

    def detach(self) -> None:
        """The socket dropped: forget it, and hold what is written until ``reattach`` (bounded by
        ``HELD_MESSAGES`` / ``HELD_BYTES``; beyond them the oldest is dropped)."""
        socket, self._socket = self._socket, None
        if socket is not None:
            socket.done.set()
        self._attached.clear()
        self._held, self._held_bytes = deque(), 0
        self.dropped = False
        self.close_code = None
        self._bad_frames = 0

    async def reattach(self, socket: SocketHandle) -> None:
        """The client came back on a new socket: write what was held for it, in order, then go on."""
        if not self.detached:
            raise RuntimeError("not detached")
        self._socket = socket
        self._attached.set()
        held = self._held
        assert held is not None
        while held:  # what is written meanwhile joins the end of the queue
            payload = held.popleft()
            self._held_bytes -= len(payload)
            if not await self._write(payload):
                break
        self._held, self._held_bytes = None, 0

    async def wait_attached(self, timeout: float) -> bool:
        """True once a socket is attached; False on timeout or if the client was closed first."""
        try:
            async with asyncio.timeout(timeout):
                await self._attached.wait()
        except TimeoutError:
            return False
        return not self._closing

    def start_reading(self, sink: Sink, on_end: Callable[[], Awaitable[None]]) -> None:
        """Read the socket until it ends, each decoded frame to ``sink``; then ``await on_end()``
        (not when the reader is cancelled: whoever cancels it is ending the session already)."""
        if self._reader is None and self._socket is not None:
            self._reader = asyncio.create_task(self._read(sink, on_end), name="ws-reader")

    async def stop_reading(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()
            try:
                await reader
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise

    def fits_now(self, size: int) -> bool:
        """Whether a message of ``size`` bytes can be written without waiting for the client: the
        socket's buffer is at or below its low-water mark (so its writer is not paused) and stays
        below the high-water mark with the message (so it does not pause) — aiohttp's send then
        completes without suspending, and nothing can cancel it half-way."""
        socket = self._socket
        return (
            socket is not None and not self._closing and not socket.ws.closed and socket.write_room() > size
        )

    async def _receive(self) -> Any:
        """Yield each data message until the socket closes, errors or idles out."""
        assert self._socket is not None
        ws = self._socket.ws
        while True:
            try:
                # An absolute wait per message: aiohttp's own receive timeout restarts on every
                # ping/pong, so a client that only keeps the socket alive would never idle out.
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for wraps every call in a new task.
                async with asyncio.timeout(self._params.idle_timeout):
                    msg = await ws.receive()
            except TimeoutError:
                self._hooks.rejected("idle_timeout", closecodes.IDLE_TIMEOUT)
                await self.close(closecodes.IDLE_TIMEOUT, "idle timeout")
                break
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                # CLOSE: the client said goodbye. CLOSED without our closing it: the connection was lost.
                self.dropped = msg.type == WSMsgType.CLOSED and not self._closing
                break
            self._hooks.count_in()
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                yield msg.data
            elif msg.type == WSMsgType.ERROR:
                if not isinstance(msg.data, WebSocketError):  # the connection failed (reset)
                    self.dropped = not self._closing
                    break
                # aiohttp has already closed the socket with the error's code (1009 for an
                # oversized message); ws.close_code would show the client's echo instead.
                self._closing = True
                self.close_code = msg.data.code
                reason = (
                    "message_too_big" if self.close_code == closecodes.MESSAGE_TOO_BIG else "protocol_error"
                )
                self._hooks.rejected(reason, self.close_code)
                break
        if self.close_code is None:
            self.close_code = ws.close_code

    async def _read(self, sink: Sink, on_end: Callable[[], Awaitable[None]]) -> None:
        serializer = self._serializer
        hooks = self._hooks
        try:
            async for data in self._receive():
                if serializer is None:
                    continue
                try:
                    frame = await serializer.deserialize(data)
                except UndecodableFrame as e:
                    if await self._reject_frame(str(e)):
                        break
                    continue
                if frame is None:
                    continue
                self._bad_frames = 0
                if isinstance(frame, InputTransportMessageFrame) and isinstance(frame.message, dict):
                    hooks.client_message(frame.message)
                await sink(frame)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("ws.receive_failed")
            await self.close(closecodes.INTERNAL_ERROR, "internal error")
        # However the socket ended (client left or dropped, protocol error, abuse, slow reader), the
        # session decides what follows (``on_end``): end, or wait for the client to come back.
        self._reader = None
        if self._socket is not None:
            self._socket.done.set()
        await on_end()

    async def _reject_frame(self, reason: str) -> bool:
        """Tell the client its frame was refused; True once it has used up its allowance."""
        self._bad_frames += 1
        self._hooks.bad_frame()
        error = RTVI.Error(data=RTVI.ErrorData(error=f"undecodable frame: {reason}", fatal=False))
        # Answered by the transport itself, straight onto the socket: it is a wire-level reply, and it
        # must precede the 1007 close rather than race it through the pipeline.
        await self.send_message(error.model_dump(exclude_none=True))
        if self._bad_frames >= self._params.max_bad_frames:
            await self.close(closecodes.INVALID_PAYLOAD, "too many undecodable frames")
            return True
        return False

    @property
    def accepting(self) -> bool:
        """Whether a write now goes somewhere: the socket, or the queue held for the client's return."""
        return not self._closing and (self._held is not None or self.is_connected)

    async def send(self, data: str | bytes) -> bool:
        held = self._held
        if held is not None and not self._closing:
            held.append(data)
            self._held_bytes += len(data)
            while len(held) > HELD_MESSAGES or self._held_bytes > HELD_BYTES:
                self._held_bytes -= len(held.popleft())
            return True
        return await self._write(data)

    async def _write(self, data: str | bytes) -> bool:
        socket = self._socket
        if self._closing or socket is None or socket.ws.closed:
            return False
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for wraps every send in a new task.
            async with asyncio.timeout(self._params.send_timeout):
                if isinstance(data, bytes):
                    await socket.ws.send_bytes(data)
                else:
                    await socket.ws.send_str(data)
        except TimeoutError:
            self._hooks.rejected("slow_client", closecodes.POLICY_VIOLATION)
            await self.close(closecodes.POLICY_VIOLATION, "client not reading")
            return False
        except (ConnectionError, RuntimeError) as e:
            log.info("ws.send_failed", error=type(e).__name__)
            return False
        self._hooks.count_out()
        return True

    async def send_message(self, message: dict[str, Any]) -> bool:
        """Serialize an RTVI message for this wire format and write it (under the send timeout)."""
        if self._serializer is None:
            return False
        payload = await self._serializer.serialize(OutputTransportMessageUrgentFrame(message=message))
        return payload is not None and await self.send(payload)

    async def close(self, code: int = closecodes.NORMAL, reason: str = "") -> None:
        """Close the socket once; later calls (from any teardown path) are no-ops.

        A close that cannot complete — the client stopped reading, so not even the close frame goes
        out — aborts the TCP connection: otherwise aiohttp waits for the unsent data forever, the
        socket's buffers stay allocated and the receive loop never sees the end.
        """
        if self._closing:
            return
        self._closing = True
        self._held = None
        if self.close_code is None:
            self.close_code = code
        socket = self._socket
        if socket is None:
            self._attached.set()  # wake a session still waiting for its socket: it never comes
            return
        try:
            await self._close(socket, code, reason)
        finally:
            socket.done.set()  # after the close handshake: the request's handler may return now

    async def _close(self, socket: SocketHandle, code: int, reason: str) -> None:
        if socket.ws.closed:
            return
        try:
            await asyncio.wait_for(
                socket.ws.close(code=code, message=reason.encode()[:120]), self._params.close_timeout
            )
            return
        except asyncio.CancelledError:
            # aiohttp's writers share one drain future; the send timeout that cancelled a stuck send
            # cancels it too, and our close then sees a CancelledError nobody aimed at this task.
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                socket.abort()
                raise
        except (TimeoutError, ConnectionError, RuntimeError):
            pass
        socket.abort()

    async def setup(self, _: FrameProcessorSetup) -> None:
        self._users += 1

    async def disconnect(self) -> None:
        """One of the pipeline's two transports is done with the socket; the last one closes it."""
        self._users -= 1
        if self._users > 0:
            return
        await self.close(closecodes.NORMAL, "session ended")


class AiohttpWebsocketInputTransport(BaseInputTransport):
    """The pipeline's side of the client's reader: ``deliver`` turns each frame the client read into
    the pushes Pipecat's input transports make. It reads nothing itself (``AiohttpWebsocketClient``)."""

    def __init__(self, client: AiohttpWebsocketClient, params: AiohttpWebsocketParams, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self._client = client
        self._ws_params = params
        # Set once StartFrame has reached this processor: from then on it may push frames.
        self.started = asyncio.Event()

    async def setup(self, setup: FrameProcessorSetup) -> None:  # type: ignore[override]
        await super().setup(setup)
        await self._client.setup(setup)
        if self._ws_params.serializer:
            await self._ws_params.serializer.setup(setup)

    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        await self.set_transport_ready(frame)
        self.started.set()

    async def connected(self) -> None:
        """The conversation is the pipeline's from now on (frames follow through ``deliver``)."""
        await self.push_frame(ClientConnectedFrame())

    async def deliver(self, frame: Frame) -> None:
        if isinstance(frame, InputAudioRawFrame):
            await self.push_audio_frame(frame)
        elif isinstance(frame, InputTransportMessageFrame):
            await self.broadcast_frame(InputTransportMessageFrame, message=frame.message)
        else:
            await self.push_frame(frame)

    async def stop(self, frame: EndFrame) -> None:
        await super().stop(frame)
        await self._client.disconnect()

    async def cancel(self, frame: CancelFrame) -> None:
        await super().cancel(frame)
        await self._client.disconnect()


class AiohttpWebsocketOutputTransport(BaseOutputTransport):
    def __init__(
        self,
        client: AiohttpWebsocketClient,
        params: AiohttpWebsocketParams,
        hooks: TransportHooks,
        **kwargs: Any,
    ) -> None:
        super().__init__(params, **kwargs)
        self._client = client
        self._ws_params = params
        self._hooks = hooks
        self._deferred = 0
        self._send_interval = 0.0
        self._next_send_time = 0.0
        # Set once StartFrame has reached this processor, i.e. has passed every processor before it:
        # from then on a processor upstream may push frames that end up here (the greeting does).
        self.started = asyncio.Event()

    async def setup(self, setup: FrameProcessorSetup) -> None:  # type: ignore[override]
        await super().setup(setup)
        self._send_interval = (self.audio_chunk_size / self.sample_rate) / 2
        await self._client.setup(setup)

    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        await self.set_transport_ready(frame)
        self.started.set()

    async def stop(self, frame: EndFrame) -> None:
        await super().stop(frame)
        await self._write_frame(frame)
        await self._client.disconnect()

    async def cancel(self, frame: CancelFrame) -> None:
        await super().cancel(frame)
        await self._write_frame(frame)
        await self._client.disconnect()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, DeferredMessageFrame):
            self._deferred -= 1
        if isinstance(frame, InterruptionFrame):
            self._hooks.interrupted()
            await self._write_frame(frame)
            self._next_send_time = 0

    async def send_message(
        self, frame: OutputTransportMessageFrame | OutputTransportMessageUrgentFrame
    ) -> None:
        await self._write_frame(frame)

    async def push_frame(self, frame: Frame, direction: FrameDirection = FrameDirection.DOWNSTREAM) -> None:
        await super().push_frame(frame, direction)
        # A response's frames leave in order from the media sender's queue: once its end frame does,
        # RTVI has written everything it reports of the response (its bot-output messages included).
        if isinstance(frame, LLMFullResponseEndFrame) and direction == FrameDirection.DOWNSTREAM:
            self._hooks.response_written()

    async def send_message_now(self, frame: OutputTransportMessageUrgentFrame) -> None:
        """Write an urgent message on the caller's task if the socket takes it without waiting;
        otherwise queue it to this processor, which writes it (under the send timeout) from its own
        task. Once one is queued, the next ones queue behind it until it is written: order is kept.

        The queue is what an urgent frame went through anyway; skipping it when nothing waits saves
        the task hop, and the wait behind whatever else the loop had queued, per message.
        """
        serializer = self._ws_params.serializer
        if self._deferred == 0 and serializer is not None:
            payload = await serializer.serialize(frame)
            if not payload:
                return
            # A WebSocket frame header is at most 14 bytes; a str may take 4 bytes per character.
            size = 14 + (len(payload) * 4 if isinstance(payload, str) else len(payload))
            if self._client.fits_now(size):
                await self._client.send(payload)
                return
        self._deferred += 1
        await self.queue_frame(DeferredMessageFrame(message=frame.message), FrameDirection.DOWNSTREAM)

    async def write_audio_frame(self, frame: OutputAudioRawFrame) -> bool:
        if self._client.is_closing or not self._client.is_connected:
            return False
        frame = OutputAudioRawFrame(
            audio=frame.audio, sample_rate=self.sample_rate, num_channels=self._ws_params.audio_out_channels
        )
        if not await self._write_frame(frame):
            return False
        self._hooks.audio_written()
        # Real-time pacing, kept AUDIO_LEAD_SECS ahead of what the client has played: enough for a
        # loop that runs late now and then not to starve its playback, little enough that audio
        # written is audio about to be heard (an interrupted reply is stored as far as it was spoken,
        # and a barge-in has little to clear).
        now = asyncio.get_running_loop().time()
        if self._next_send_time < now - AUDIO_LEAD_SECS:  # idle, or fell behind: start ahead again
            self._next_send_time = now - AUDIO_LEAD_SECS
        delay = self._next_send_time - now
        if delay > 0:
            await asyncio.sleep(delay)
        self._next_send_time += self._send_interval
        return True

    async def _write_frame(self, frame: Frame) -> bool:
        if not self._client.accepting or not self._ws_params.serializer:
            return False
        payload = await self._ws_params.serializer.serialize(frame)
        if payload:
            return await self._client.send(payload)
        return True


class AiohttpWebsocketTransport(BaseTransport):
    """Pipecat transport over a socket an ``AiohttpWebsocketClient`` owns (and reads)."""

    def __init__(
        self,
        client: AiohttpWebsocketClient,
        params: AiohttpWebsocketParams,
        hooks: TransportHooks,
        *,
        input_name: str | None = None,
        output_name: str | None = None,
    ) -> None:
        super().__init__(input_name=input_name, output_name=output_name)
        self._client = client
        self._input = AiohttpWebsocketInputTransport(client, params, name=self._input_name)
        self._output = AiohttpWebsocketOutputTransport(client, params, hooks, name=self._output_name)

    @property
    def client(self) -> AiohttpWebsocketClient:
        return self._client

    def input(self) -> AiohttpWebsocketInputTransport:
        return self._input

    def output(self) -> AiohttpWebsocketOutputTransport:
        return self._output
