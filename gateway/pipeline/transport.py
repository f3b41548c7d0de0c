"""An aiohttp WebSocket transport for Pipecat, in the shape of Pipecat's FastAPI transport.

A holder (``AiohttpWebsocketTransport``) exposes ``input()`` / ``output()``; one client object
(``AiohttpWebsocketClient``) owns the socket; the serializer is injected through the params. On top of
the FastAPI model it:

* answers an undecodable frame with an RTVI ``error`` message (no internals), and closes with 1007
  after ``max_bad_frames`` of them;
* lets aiohttp enforce the message-size limit (close 1009) and reports it;
* bounds every send with a timeout, so a client that stops reading cannot stall the pipeline (1008);
* closes a connection whose client sent nothing for ``idle_timeout`` (4008), pings not counting;
* counts messages per direction through callbacks bound once per session (no label lookups per frame);
* can start before its socket exists: a session assembled and started at ``/start`` gets its socket
  with ``attach()`` when the client connects; until then nothing is read or written, and
  ``on_client_connected`` fires on attach. ``attach_timeout`` bounds the wait;
* writes an urgent message (RTVI's) on the task that produced it when the socket can take it without
  waiting (``send_message_now``), and otherwise queues it behind the ones already waiting, so that
  a slow client still meets the send timeout on the output transport's own task.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pipecat.processors.frameworks.rtvi.models as RTVI
from aiohttp import WebSocketError, WSCloseCode, WSMsgType, web
from pipecat.frames.frames import (
    CancelFrame,
    ClientConnectedFrame,
    EndFrame,
    Frame,
    InputAudioRawFrame,
    InputTransportMessageFrame,
    InterruptionFrame,
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


def _noop() -> None:
    pass


def _no_reject(_reason: str, _code: int) -> None:
    pass


def _no_room() -> int:
    return 0


class DeferredMessageFrame(OutputTransportMessageUrgentFrame):
    """An urgent message that could not be written on its producer's task: the output transport
    writes it from its own, in order with the others deferred."""


class AiohttpWebsocketParams(TransportParams):
    """Parameters of the aiohttp WebSocket transport.

    Parameters:
        serializer: Frame serializer for this connection's wire format.
        session_timeout: Seconds after which ``on_session_timeout`` fires; None for never.
        send_timeout: Longest a single send may wait on a slow client before closing with 1008.
        idle_timeout: Longest the client may send no data message before closing with 4008.
        close_timeout: Longest to wait for the close handshake.
        max_bad_frames: Undecodable frames tolerated before closing with 1007.
        attach_timeout: Longest a transport started without its socket waits for ``attach()``
            before it reports the client as gone.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    serializer: FrameSerializer | None = None
    session_timeout: float | None = Field(default=None, gt=0)
    send_timeout: float = Field(default=10.0, gt=0)
    idle_timeout: float | None = Field(default=None, gt=0)
    close_timeout: float = Field(default=1.0, gt=0)
    max_bad_frames: int = Field(default=5, ge=1)
    attach_timeout: float = Field(default=10.0, gt=0)


class AiohttpWebsocketClient:
    """Owns the aiohttp ``WebSocketResponse``: receiving, sending, closing, and its events."""

    def __init__(
        self,
        ws: web.WebSocketResponse | None,
        *,
        on_connected: Callable[[], Awaitable[None]],
        on_disconnected: Callable[[], Awaitable[None]],
        on_timeout: Callable[[], Awaitable[None]],
        send_timeout: float,
        close_timeout: float,
        idle_timeout: float | None = None,
        count_in: Callable[[], None] = _noop,
        count_out: Callable[[], None] = _noop,
        on_reject: Callable[[str, int], None] = _no_reject,
        abort: Callable[[], None] = _noop,
        write_room: Callable[[], int] = _no_room,
    ) -> None:
        """``abort`` drops the TCP connection; ``write_room`` is how many bytes its transport takes now
        without pausing its writer (0 when unknown: every message then goes through the queue)."""
        self._ws = ws
        self._attached = asyncio.Event()
        if ws is not None:
            self._attached.set()
        self._abort = abort
        self._write_room = write_room
        self._on_reject = on_reject
        self._idle_timeout = idle_timeout
        self._on_connected = on_connected
        self._on_disconnected = on_disconnected
        self._on_timeout = on_timeout
        self._send_timeout = send_timeout
        self._close_timeout = close_timeout
        self._count_in = count_in
        self._count_out = count_out
        self._closing = False
        self._users = 0
        self.close_code: int | None = None
        self.close_reason: str | None = None

    @property
    def websocket(self) -> web.WebSocketResponse | None:
        return self._ws

    @property
    def is_connected(self) -> bool:
        return self._ws is not None and not self._ws.closed

    def attach(
        self,
        ws: web.WebSocketResponse,
        abort: Callable[[], None] | None = None,
        write_room: Callable[[], int] | None = None,
    ) -> None:
        """Hand over the socket of a session that started before its client connected."""
        if self._ws is not None:
            raise RuntimeError("a socket is already attached")
        self._ws = ws
        if abort is not None:
            self._abort = abort
        if write_room is not None:
            self._write_room = write_room
        self._attached.set()

    def fits_now(self, size: int) -> bool:
        """Whether a message of ``size`` bytes can be written without waiting for the client: the
        socket's buffer is at or below its low-water mark (so its writer is not paused) and stays
        below the high-water mark with the message (so it does not pause) — aiohttp's send then
        completes without suspending, and nothing can cancel it half-way."""
        ws = self._ws
        return ws is not None and not self._closing and not ws.closed and self._write_room() > size

    async def wait_attached(self, timeout: float) -> bool:
        """True once a socket is attached (at once if it came with the client); False on timeout
        or if the client was closed first."""
        try:
            async with asyncio.timeout(timeout):
                await self._attached.wait()
        except TimeoutError:
            return False
        return not self._closing

    @property
    def is_closing(self) -> bool:
        return self._closing

    async def setup(self, _: FrameProcessorSetup) -> None:
        self._users += 1

    async def receive(self) -> Any:
        """Yield each data message until the socket closes, errors or idles out."""
        ws = self._ws
        if ws is None:
            return
        while True:
            try:
                # An absolute wait per message: aiohttp's own receive timeout restarts on every
                # ping/pong, so a client that only keeps the socket alive would never idle out.
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for wraps every call in a new task.
                async with asyncio.timeout(self._idle_timeout):
                    msg = await ws.receive()
            except TimeoutError:
                self._on_reject("idle_timeout", closecodes.IDLE_TIMEOUT)
                await self.close(closecodes.IDLE_TIMEOUT, "idle timeout")
                break
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                break
            self._count_in()
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                yield msg.data
            elif msg.type == WSMsgType.ERROR:
                # aiohttp has already closed the socket with the error's code (1009 for an
                # oversized message); ws.close_code would show the client's echo instead.
                self._closing = True
                self.close_code = msg.data.code if isinstance(msg.data, WebSocketError) else 1006
                reason = (
                    "message_too_big" if self.close_code == closecodes.MESSAGE_TOO_BIG else "protocol_error"
                )
                self._on_reject(reason, self.close_code)
                break
        if self.close_code is None:
            self.close_code = ws.close_code

    async def send(self, data: str | bytes) -> bool:
        ws = self._ws
        if self._closing or ws is None or ws.closed:
            return False
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for wraps every send in a new task.
            async with asyncio.timeout(self._send_timeout):
                if isinstance(data, bytes):
                    await ws.send_bytes(data)
                else:
                    await ws.send_str(data)
        except TimeoutError:
            self._on_reject("slow_client", closecodes.POLICY_VIOLATION)
            await self.close(closecodes.POLICY_VIOLATION, "client not reading")
            return False
        except (ConnectionError, RuntimeError) as e:
            log.info("ws.send_failed", error=type(e).__name__)
            return False
        self._count_out()
        return True

    async def close(self, code: int = WSCloseCode.OK, reason: str = "") -> None:
        """Close the socket once; later calls (from any teardown path) are no-ops.

        A close that cannot complete — the client stopped reading, so not even the close frame goes
        out — aborts the TCP connection: otherwise aiohttp waits for the unsent data forever, the
        socket's buffers stay allocated and the receive loop never sees the end.
        """
        if self._closing:
            return
        self._closing = True
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
        ws = self._ws
        if ws is None:
            self._attached.set()  # wake a transport still waiting for its socket: it never comes
            return
        if ws.closed:
            return
        try:
            await asyncio.wait_for(ws.close(code=code, message=reason.encode()[:120]), self._close_timeout)
            return
        except asyncio.CancelledError:
            # aiohttp's writers share one drain future; the send timeout that cancelled a stuck send
            # cancels it too, and our close then sees a CancelledError nobody aimed at this task.
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                self._abort()
                raise
        except (TimeoutError, ConnectionError, RuntimeError):
            pass
        self._abort()

    async def disconnect(self) -> None:
        self._users -= 1
        if self._users > 0:
            return
        await self.close(WSCloseCode.OK, "session ended")

    async def trigger_connected(self) -> None:
        await self._on_connected()

    async def trigger_disconnected(self) -> None:
        await self._on_disconnected()

    async def trigger_timeout(self) -> None:
        await self._on_timeout()


class AiohttpWebsocketInputTransport(BaseInputTransport):
    def __init__(
        self,
        transport: BaseTransport,
        client: AiohttpWebsocketClient,
        params: AiohttpWebsocketParams,
        on_bad_frame: Callable[[], None] = _noop,
        on_client_message: Callable[[dict[str, Any]], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(params, **kwargs)
        self._transport = transport
        self._client = client
        self._ws_params = params
        self._on_bad_frame = on_bad_frame
        self._on_client_message = on_client_message
        self._receive_task: asyncio.Task[None] | None = None
        self._monitor_task: asyncio.Task[None] | None = None
        self._bad_frames = 0

    async def setup(self, setup: FrameProcessorSetup) -> None:  # type: ignore[override]
        await super().setup(setup)
        await self._client.setup(setup)
        if self._ws_params.serializer:
            await self._ws_params.serializer.setup(setup)

    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        if not self._receive_task:
            self._receive_task = self.create_task(self._serve())
        await self.set_transport_ready(frame)

    async def _serve(self) -> None:
        """Once the socket is there: report the client connected, then read until it goes."""
        if not await self._client.wait_attached(self._ws_params.attach_timeout):
            await self._client.close(WSCloseCode.OK, "client never connected")
            await self._client.trigger_disconnected()
            return
        if not self._monitor_task and self._ws_params.session_timeout:
            self._monitor_task = self.create_task(self._monitor(self._ws_params.session_timeout))
        await self._client.trigger_connected()
        await self.push_frame(ClientConnectedFrame())
        await self._receive_messages()

    async def _teardown(self) -> None:
        if self._monitor_task:
            await self.cancel_task(self._monitor_task)
            self._monitor_task = None
        if self._receive_task:
            await self.cancel_task(self._receive_task)
            self._receive_task = None
        await self._client.disconnect()

    async def stop(self, frame: EndFrame) -> None:
        await super().stop(frame)
        await self._teardown()

    async def cancel(self, frame: CancelFrame) -> None:
        await super().cancel(frame)
        await self._teardown()

    async def cleanup(self) -> None:
        await super().cleanup()
        await self._teardown()

    async def _receive_messages(self) -> None:
        serializer = self._ws_params.serializer
        try:
            async for data in self._client.receive():
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
                if isinstance(frame, InputAudioRawFrame):
                    await self.push_audio_frame(frame)
                elif isinstance(frame, InputTransportMessageFrame):
                    if self._on_client_message is not None:
                        self._on_client_message(frame.message)
                    await self.broadcast_frame(InputTransportMessageFrame, message=frame.message)
                else:
                    await self.push_frame(frame)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("ws.receive_failed")
            await self._client.close(WSCloseCode.INTERNAL_ERROR, "internal error")
        # However the socket ended (client left, protocol error, abuse, slow reader), the session ends.
        await self._client.trigger_disconnected()

    async def _reject_frame(self, reason: str) -> bool:
        """Tell the client its frame was refused; True once it has used up its allowance."""
        self._bad_frames += 1
        self._on_bad_frame()
        error = RTVI.Error(data=RTVI.ErrorData(error=f"undecodable frame: {reason}", fatal=False))
        # Answered by the transport itself, straight onto the socket: it is a wire-level reply, and it
        # must precede the 1007 close rather than race it through the pipeline.
        serializer = self._ws_params.serializer
        if serializer is not None:
            payload = await serializer.serialize(
                OutputTransportMessageUrgentFrame(message=error.model_dump(exclude_none=True))
            )
            if payload:
                await self._client.send(payload)
        if self._bad_frames >= self._ws_params.max_bad_frames:
            await self._client.close(closecodes.INVALID_PAYLOAD, "too many undecodable frames")
            return True
        return False

    async def _monitor(self, timeout: float) -> None:
        await asyncio.sleep(timeout)
        await self._client.trigger_timeout()


class AiohttpWebsocketOutputTransport(BaseOutputTransport):
    def __init__(
        self,
        transport: BaseTransport,
        client: AiohttpWebsocketClient,
        params: AiohttpWebsocketParams,
        on_message: Callable[[dict[str, Any]], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(params, **kwargs)
        self._transport = transport
        self._client = client
        self._ws_params = params
        self._on_message = on_message
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
        if self._ws_params.serializer:
            await self._ws_params.serializer.setup(setup)

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

    async def cleanup(self) -> None:
        await super().cleanup()
        await self._client.disconnect()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, DeferredMessageFrame):
            self._deferred -= 1
        if isinstance(frame, InterruptionFrame):
            await self._write_frame(frame)
            self._next_send_time = 0

    async def send_message(
        self, frame: OutputTransportMessageFrame | OutputTransportMessageUrgentFrame
    ) -> None:
        await self._write_frame(frame)
        if self._on_message is not None and isinstance(frame.message, dict):
            self._on_message(frame.message)

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
                if await self._client.send(payload) and self._on_message is not None:
                    if isinstance(frame.message, dict):
                        self._on_message(frame.message)
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
        now = asyncio.get_running_loop().time()
        delay = max(0.0, self._next_send_time - now)
        await asyncio.sleep(delay)
        self._next_send_time = (now if delay == 0 else self._next_send_time) + self._send_interval
        return True

    async def _write_frame(self, frame: Frame) -> bool:
        if self._client.is_closing or not self._client.is_connected or not self._ws_params.serializer:
            return False
        payload = await self._ws_params.serializer.serialize(frame)
        if payload:
            return await self._client.send(payload)
        return True


class AiohttpWebsocketTransport(BaseTransport):
    """Pipecat transport over an aiohttp ``WebSocketResponse``: prepared already, or ``attach()``-ed later.

    Event handlers: ``on_client_connected``, ``on_client_disconnected``, ``on_session_timeout``.
    ``on_client_message`` sees each decoded client message (RTVI) as it arrives, before the pipeline
    does: the session keeps what was typed, so a turn whose handling the disconnect cut short is
    still stored.
    """

    def __init__(
        self,
        ws: web.WebSocketResponse | None,
        params: AiohttpWebsocketParams,
        *,
        count_in: Callable[[], None] = _noop,
        count_out: Callable[[], None] = _noop,
        on_bad_frame: Callable[[], None] = _noop,
        on_reject: Callable[[str, int], None] = _no_reject,
        abort: Callable[[], None] = _noop,
        write_room: Callable[[], int] = _no_room,
        on_message: Callable[[dict[str, Any]], None] | None = None,
        on_client_message: Callable[[dict[str, Any]], None] | None = None,
        input_name: str | None = None,
        output_name: str | None = None,
    ) -> None:
        super().__init__(input_name=input_name, output_name=output_name)
        self._ws_params = params
        self._client = AiohttpWebsocketClient(
            ws,
            on_connected=lambda: self._call_event_handler("on_client_connected", self._client.websocket),
            on_disconnected=lambda: self._call_event_handler(
                "on_client_disconnected", self._client.websocket
            ),
            on_timeout=lambda: self._call_event_handler("on_session_timeout", self._client.websocket),
            send_timeout=params.send_timeout,
            close_timeout=params.close_timeout,
            idle_timeout=params.idle_timeout,
            count_in=count_in,
            count_out=count_out,
            on_reject=on_reject,
            abort=abort,
            write_room=write_room,
        )
        self._input = AiohttpWebsocketInputTransport(
            self,
            self._client,
            params,
            on_bad_frame=on_bad_frame,
            on_client_message=on_client_message,
            name=self._input_name,
        )
        self._output = AiohttpWebsocketOutputTransport(
            self, self._client, params, on_message=on_message, name=self._output_name
        )
        self._register_event_handler("on_client_connected")
        self._register_event_handler("on_client_disconnected")
        self._register_event_handler("on_session_timeout")

    @property
    def client(self) -> AiohttpWebsocketClient:
        return self._client

    def input(self) -> AiohttpWebsocketInputTransport:
        return self._input

    def output(self) -> AiohttpWebsocketOutputTransport:
        return self._output
