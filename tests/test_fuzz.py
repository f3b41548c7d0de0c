"""Fuzzing both wire formats over a live WebSocket: garbage costs its sender an error, nobody else anything.

Starting a gateway per Hypothesis example would take minutes, and ``@given`` does not combine with async
tests on a shared event loop. So Hypothesis only *draws* the payloads (a synchronous ``@given`` function
that collects them); one async test per serializer then plays them all, in order, over one real session
of one real gateway, next to a well-behaved bystander session of another user.

After every payload the fuzzed client sends a probe (an RTVI message of an unknown type with a fresh id)
and waits for its ``error-response``. An undecodable frame is answered by the transport itself, straight
onto the socket, before the next frame is even read, so whatever arrives before the probe's answer
belongs to that payload: exactly one ``undecodable frame`` error if the wire format cannot carry the
payload, none otherwise. The probe's answer also proves that the session still works after each payload.

Draws are reproducible (fixed seeds, no example database); set ``GATEWAY_FUZZ_SEED`` to explore other
examples and ``GATEWAY_FUZZ_EXAMPLES`` to change how many are drawn per serializer (default 300). Every
corpus also holds hand-picked payloads on either side of each rule of the contract (``edge_messages``),
which random draws may miss.

The bugs this fuzzer has found (serializer crashes, Python exception text sent to clients, user text the
memory store could not keep, lone surrogates in the LLM context) each have a regression test at the bottom
of this file, and the fuzz plays those payloads like any others. Should it find a new one that cannot be
fixed straight away, list it in a ``KnownBug`` enum, let ``draw_corpus`` skip (and count) its payloads,
and pin it with a strict ``xfail`` test until it is fixed.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from pipecat.frames.protobufs import frames_pb2

from gateway import closecodes
from tests.clients import LABEL, WireClient, rtvi, send_text
from tests.conftest import GatewayFactory, RunningGateway

SERIALIZERS = ("rtvi", "protobuf")
EXAMPLES = int(os.environ.get("GATEWAY_FUZZ_EXAMPLES", "300"))
SEED = os.environ.get("GATEWAY_FUZZ_SEED")
ROUND_TIMEOUT = 10.0

PbFrame: Any = frames_pb2.Frame  # type: ignore[attr-defined]  # generated code, no stubs


# --- What a client must never see ---------------------------------------------------------------------

_URL = re.compile(r"https?://\S+")
# Tracebacks, exception names and messages, source files and dotted module paths. URLs are dropped first:
# Pipecat's RTVI validation errors link to errors.pydantic.dev, which names no internals of ours.
_LEAK = re.compile(
    r"Traceback|File \"|Exception|\b[A-Za-z]+Error\b|\b[\w-]+\.py\b|site-packages|<frozen "
    r"|\b(?:gateway|memory|pipecat|aiohttp|pydantic|pydantic_core|mem0|openai|asyncio|psycopg|google)\.[a-z_]\w*"
    r"|has no attribute|division by zero|recursion depth|object is not|unsupported operand|codec can't"
)


def walk(value: Any) -> Iterator[tuple[Any, int]]:
    """Every key and value in a decoded message, with how many levels below the message it lies.

    Iterative: JSON nested a few hundred levels deep decodes fine but would exhaust Python's recursion.
    """
    stack = [(value, 0)]
    while stack:
        node, level = stack.pop()
        yield node, level
        if isinstance(node, dict):
            stack.extend((child, level + 1) for pair in node.items() for child in pair)
        elif isinstance(node, list):
            stack.extend((child, level + 1) for child in node)


def strings_in(value: Any) -> Iterator[str]:
    """Every string in a decoded message, keys included."""
    return (node for node, _ in walk(value) if isinstance(node, str))


def leaks(value: Any) -> list[str]:
    return [s for s in strings_in(value) if _LEAK.search(_URL.sub("", s))]


# --- The wire formats' contracts, written independently of the gateway ---------------------------------


MAX_NESTING = 32  # levels of keys and values below the message
SAMPLE_RATES = (8000, 48000)  # inclusive
CHANNELS = (1, 2)
AUDIO_TYPES = {"raw-audio": ("base64Audio", str), "raw-audio-batch": ("base64AudioBatch", list)}


def _lone_surrogate(text: str) -> bool:
    """JSON can escape half a UTF-16 pair (``"\\ud800"``); such a string has no UTF-8 encoding."""
    return any("\ud800" <= c <= "\udfff" for c in text)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _audio_channels(data: dict[str, Any]) -> int | None:
    """The channel count of an audio message's format (16 kHz mono unless given), if it is a usable one."""
    rate, channels = data.get("sampleRate", 16000), data.get("numChannels", 1)
    if not (_integer(rate) and SAMPLE_RATES[0] <= rate <= SAMPLE_RATES[1]):
        return None
    return int(channels) if _integer(channels) and channels in CHANNELS else None


def message_refused(message: Any, *, rtvi_wire: bool) -> bool:
    """Both wire formats carry only RTVI messages Pipecat can handle: a JSON object labelled ``rtvi-ai`` with
    a string ``type``, nothing nested more than 32 levels below it, and only text that is valid Unicode (keys
    included). ``raw-audio`` and ``raw-audio-batch`` need a data object with an integer sample rate from 8 to
    48 kHz and 1 or 2 channels (16 kHz mono when left out), and a string ``base64Audio`` or a list
    ``base64AudioBatch``. RTVI JSON decodes ``raw-audio`` itself, so there the audio must also be base64
    of whole 16-bit samples; protobuf leaves the audio's bytes to Pipecat."""
    if (
        not isinstance(message, dict)
        or message.get("label") != LABEL
        or not isinstance(message.get("type"), str)
    ):
        return True
    for node, level in walk(message):
        if level > MAX_NESTING or (isinstance(node, str) and _lone_surrogate(node)):
            return True
    if message["type"] not in AUDIO_TYPES:
        return False
    data = message.get("data")
    if not isinstance(data, dict) or (channels := _audio_channels(data)) is None:
        return True
    field, shape = AUDIO_TYPES[message["type"]]
    if not isinstance(data.get(field), shape):
        return True
    if not rtvi_wire or message["type"] != "raw-audio":
        return False
    try:
        audio = base64.b64decode(data["base64Audio"], validate=True)
    except ValueError:
        return True
    return len(audio) % (2 * channels) != 0


def rtvi_undecodable(wire: str | bytes) -> bool:
    """RTVI JSON carries one JSON document (text, or bytes in a Unicode encoding) holding an RTVI message."""
    try:
        message = json.loads(wire)
    except (ValueError, RecursionError):
        return True
    return message_refused(message, rtvi_wire=True)


def protobuf_undecodable(wire: str | bytes) -> bool:
    """Pipecat protobuf carries a binary ``Frame`` holding one of its five kinds; a message's data must be
    JSON of an RTVI message, and audio must be 8 to 48 kHz with 1 or 2 channels."""
    if isinstance(wire, str):
        return True
    try:
        frame = PbFrame.FromString(wire)
    except DecodeError:
        return True
    kind = frame.WhichOneof("frame")
    if kind is None:
        return True
    if kind == "audio":
        rate, channels = frame.audio.sample_rate, frame.audio.num_channels
        return not (SAMPLE_RATES[0] <= rate <= SAMPLE_RATES[1] and channels in CHANNELS)
    if kind == "message":
        try:
            message = json.loads(frame.message.data)
        except (ValueError, RecursionError):
            return True
        return message_refused(message, rtvi_wire=False)
    return False


# --- Strategies -----------------------------------------------------------------------------------------

_TEXT = st.text(max_size=40)
# Inside JSON (escaped as \\udxxx) lone surrogates are representable, so let them in there.
_JSON_TEXT = st.one_of(_TEXT, st.text(st.characters(codec=None, categories=["Cs", "Lu", "Nd"]), max_size=8))
_LEAF: st.SearchStrategy[Any] = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), _JSON_TEXT
)
_JSON: st.SearchStrategy[Any] = st.recursive(
    _LEAF,
    lambda kids: st.one_of(st.lists(kids, max_size=4), st.dictionaries(_JSON_TEXT, kids, max_size=4)),
    max_leaves=12,
)
_NUMBER: st.SearchStrategy[Any] = st.one_of(
    st.sampled_from([0, 1, 2, 3, -1, 7999, 8000, 16000, 44100, 48000, 48001, 2**31, 2**64]),
    st.sampled_from([True, 1.0, 16000.0, 0.5, -0.0, 1e400]),
    st.integers(-(2**80), 2**80),
    st.floats(),
    st.text(max_size=6),
    _LEAF,
)
_B64: st.SearchStrategy[Any] = st.one_of(
    st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode()), _TEXT, _LEAF
)


def _maybe(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional=fields)


def _usually(draw: st.DrawFn, percent: int) -> bool:
    return draw(st.sampled_from([True] * percent + [False] * (100 - percent)))


RATES = [8000, 11025, 16000, 24000, 44100, 48000]


# Near misses of a usable format: the right number in the wrong type, or just out of range.
_NEAR_CHANNELS: st.SearchStrategy[Any] = st.one_of(st.sampled_from([True, 1.0, 2.0, 0, 3, -1, "1"]), _NUMBER)
_NEAR_RATE: st.SearchStrategy[Any] = st.one_of(
    st.sampled_from([True, 16000.0, 7999, 48001, 0, "16000"]), _NUMBER
)


@st.composite
def raw_audio_data(draw: st.DrawFn) -> dict[str, Any]:
    """Mostly a usable format and base64 of whole 16-bit samples; each part sometimes wrong or left out."""
    data: dict[str, Any] = {}
    channels = 1
    if _usually(draw, 60):
        channels = draw(st.sampled_from(CHANNELS))
        data["numChannels"] = channels if _usually(draw, 80) else draw(_NEAR_CHANNELS)
    if _usually(draw, 60):
        data["sampleRate"] = draw(st.sampled_from(RATES)) if _usually(draw, 80) else draw(_NEAR_RATE)
    if _usually(draw, 90):
        pcm = draw(st.binary(max_size=64))
        if _usually(draw, 70):
            pcm = pcm[: len(pcm) // (2 * channels) * (2 * channels)]
        data["base64Audio"] = base64.b64encode(pcm).decode() if _usually(draw, 85) else draw(_B64)
    return data


_FLAG: st.SearchStrategy[Any] = st.one_of(st.booleans(), _LEAF)
_DATA_FOR: dict[str, st.SearchStrategy[Any]] = {
    "send-text": st.fixed_dictionaries(
        {"content": st.one_of(_TEXT, _LEAF, _JSON)},
        optional={"options": st.one_of(_maybe(run_immediately=_FLAG, audio_response=_FLAG), _JSON)},
    ),
    "client-message": st.fixed_dictionaries({"t": st.one_of(_TEXT, _LEAF)}, optional={"d": _JSON}),
    "client-ready": _maybe(
        version=st.one_of(st.sampled_from(["2.0.0", "1.0.0", "2.2.0", "9.9.9", "1.2.3.4", "x.y.z"]), _LEAF),
        about=st.one_of(
            st.fixed_dictionaries({"library": _TEXT}, optional={"library_version": _LEAF}), _JSON
        ),
    ),
    "raw-audio": st.one_of(
        raw_audio_data(), _maybe(base64Audio=_B64, sampleRate=_NUMBER, numChannels=_NUMBER)
    ),
    "raw-audio-batch": _maybe(
        base64AudioBatch=st.one_of(st.lists(_B64, max_size=3), _LEAF),
        base64Audio=_B64,
        sampleRate=_NUMBER,
        numChannels=_NUMBER,
    ),
    "llm-function-call-result": _maybe(
        function_name=_LEAF, tool_call_id=_LEAF, arguments=_JSON, result=_JSON
    ),
    "dtmf": _maybe(
        buttons=st.one_of(st.lists(st.one_of(st.sampled_from(list("0123456789*#")), _TEXT)), _LEAF)
    ),
    "ui-event": _maybe(event=_LEAF, payload=_JSON),
    "ui-snapshot": _maybe(tree=_JSON),
    "ui-cancel-job-group": _maybe(job_id=_LEAF, reason=_LEAF),
}
# Not "disconnect-bot": ending the session on request is a feature, not a reaction to garbage.
_RTVI_TYPES = [*_DATA_FOR, "send-file", "append-to-context", "update-config", "action", "error", "bot-ready"]


@st.composite
def rtvi_messages(draw: st.DrawFn) -> dict[str, Any]:
    """Mostly well-formed RTVI envelopes with random, often wrongly shaped, contents."""
    message: dict[str, Any] = (
        draw(st.dictionaries(_JSON_TEXT, _LEAF, max_size=2)) if _usually(draw, 20) else {}
    )
    if _usually(draw, 95):
        message["label"] = LABEL if _usually(draw, 90) else draw(st.one_of(st.just("rtvi"), _LEAF))
    type_ = draw(st.sampled_from(_RTVI_TYPES)) if _usually(draw, 80) else draw(st.one_of(_TEXT, _LEAF))
    if _usually(draw, 95):
        message["type"] = type_
    if _usually(draw, 90):
        message["id"] = draw(_TEXT) if _usually(draw, 90) else draw(_LEAF)
    if _usually(draw, 90):
        shaped = isinstance(type_, str) and type_ in _DATA_FOR and _usually(draw, 80)
        message["data"] = draw(_DATA_FOR[type_] if shaped else _JSON)
    return message


# Well-formed turns with random text: these reach the LLM, the context and the memory store (which keeps
# no NUL and nothing blank).
_SEND_TEXT: st.SearchStrategy[dict[str, Any]] = st.builds(
    lambda id_, data: rtvi("send-text", data, id_=id_),
    _TEXT,
    st.fixed_dictionaries(
        {"content": st.one_of(st.text(max_size=60), st.sampled_from(["", " ", "\x00", "nul\x00byte"]))},
        optional={"options": _maybe(run_immediately=st.booleans(), audio_response=st.booleans())},
    ),
)


# Audio, which the rtvi serializer decodes itself (RTVI's raw-audio-batch and protobuf's go to Pipecat).
_RAW_AUDIO: st.SearchStrategy[dict[str, Any]] = st.builds(
    lambda id_, data: rtvi("raw-audio", data, id_=id_), _TEXT, raw_audio_data()
)


def _dumps(value: Any) -> str:
    return json.dumps(value)  # Python's json writes NaN/Infinity, and the gateway's reads them


def _nested(depth: int, as_object: bool) -> str:
    return ('{"a":' * depth + "1" + "}" * depth) if as_object else ("[" * depth + "]" * depth)


def _deep_message(depth: int, as_object: bool) -> str:
    """A client-message whose ``d`` is nested ``depth`` levels (its innermost value lies ``depth`` + 1 or
    + 2 levels below the message), written as text: Python's json cannot write what is nested too deep."""
    return (
        _dumps(rtvi("client-message", {"t": "deep"}, id_="deep"))[:-2]
        + ', "d": '
        + _nested(depth, as_object)
        + "}}"
    )


# Mostly around the 32 levels a message may have, sometimes far more than JSON decoders take.
_DEPTH = st.one_of(st.integers(28, 36), st.integers(1, 3000))
_DEEP_MESSAGE = st.builds(_deep_message, _DEPTH, st.booleans())


# --- Numbers JSON can write and decoders choke on ---------------------------------------------------------

# Python converts at most sys.get_int_max_str_digits() (4,300) digits to an int; json.loads raises a plain
# ValueError beyond, and Python's json cannot write such an int at all: these are written as text.
_INT_DIGITS = st.one_of(st.sampled_from([4299, 4300, 4301, 5000, 20_000]), st.integers(1, 6000))
_EXPONENTS = st.one_of(st.sampled_from([308, 309, 400, -324, -400, 99_999_999]), st.integers(-(10**6), 10**6))
_NUMERIC_LITERAL: st.SearchStrategy[str] = st.one_of(
    st.builds(
        lambda sign, n, d: sign + d * n, st.sampled_from(["", "-"]), _INT_DIGITS, st.sampled_from("19")
    ),
    st.builds(lambda m, e: f"{m}e{e}", st.sampled_from(["1", "-1", "1.5", "0", "9.99"]), _EXPONENTS),
    st.builds(lambda n: "0." + "3" * n, st.integers(1, 6000)),
    # Python's json reads (and writes) these; JavaScript's JSON.parse does not.
    st.sampled_from(["NaN", "Infinity", "-Infinity", "-0", "1E400", "-1e-400"]),
)
_PLACEHOLDER = "__number__"
_NUMBER_AT: dict[str, dict[str, Any]] = {
    "raw-audio": {"base64Audio": "AAAA", "sampleRate": _PLACEHOLDER, "numChannels": 1},
    "raw-audio-batch": {"base64AudioBatch": ["AAAA"], "sampleRate": 16000, "numChannels": _PLACEHOLDER},
    "client-message": {"t": "numbers", "d": {"n": [_PLACEHOLDER]}},
    "send-text": {"content": _PLACEHOLDER, "options": {"audio_response": False}},
}


def _numeric_message(type_: str, literal: str) -> str:
    """An RTVI message of ``type_`` with ``literal`` where a number may (or must not) be."""
    return _dumps(rtvi(type_, _NUMBER_AT[type_], id_="numeric")).replace(f'"{_PLACEHOLDER}"', literal)


_NUMERIC_DOCUMENT: st.SearchStrategy[str] = st.one_of(
    _NUMERIC_LITERAL,
    _NUMERIC_LITERAL.map(lambda literal: f"[{literal}, {literal}]"),
    st.builds(_numeric_message, st.sampled_from(list(_NUMBER_AT)), _NUMERIC_LITERAL),
)


@st.composite
def _truncated(draw: st.DrawFn, whole: st.SearchStrategy[str]) -> str:
    text = draw(whole)
    return text[: draw(st.integers(0, max(0, len(text) - 1)))]


# Each wire format's mix: kind -> (strategy, share of the examples).
RTVI_MIX: dict[str, tuple[st.SearchStrategy[str | bytes], int]] = {
    "noise-text": (st.text(max_size=200), 10),
    "noise-bytes": (st.binary(max_size=200), 10),
    "json-value": (_JSON.map(_dumps), 12),
    "json-nested": (st.builds(_nested, _DEPTH, st.booleans()), 4),
    "rtvi-message": (rtvi_messages().map(_dumps), 36),
    "rtvi-deep": (_DEEP_MESSAGE, 5),
    "json-numeric": (_NUMERIC_DOCUMENT, 5),
    "rtvi-send-text": (_SEND_TEXT.map(_dumps), 8),
    "rtvi-raw-audio": (_RAW_AUDIO.map(_dumps), 8),
    "rtvi-message-binary": (rtvi_messages().map(lambda m: _dumps(m).encode()), 10),
    "rtvi-truncated": (_truncated(rtvi_messages().map(_dumps)), 11),
}

_U64 = st.integers(0, 2**64 - 1)
_U32 = st.one_of(st.sampled_from([0, 1, 2, 8000, 16000, 2**32 - 1]), st.integers(0, 2**32 - 1))
_PB_RATE = st.one_of(st.sampled_from(RATES), st.sampled_from([7999, 48001]), _U32)
_PB_CHANNELS = st.one_of(st.sampled_from(CHANNELS), st.sampled_from([0, 3]), _U32)


def _pb_text(ident: int, name: str, text: str) -> bytes:
    frame = PbFrame()
    frame.text.id, frame.text.name, frame.text.text = ident, name, text
    return bytes(frame.SerializeToString())


def _pb_audio(audio: bytes, rate: int, channels: int, pts: int | None) -> bytes:
    frame = PbFrame()
    frame.audio.audio, frame.audio.sample_rate, frame.audio.num_channels = audio, rate, channels
    if pts is not None:
        frame.audio.pts = pts
    return bytes(frame.SerializeToString())


@st.composite
def _pb_audio_frames(draw: st.DrawFn) -> bytes:
    """Mostly a usable format (Pipecat's protobuf carries any bytes as audio, whole samples or not)."""
    rate = draw(st.sampled_from(RATES)) if _usually(draw, 75) else draw(_PB_RATE)
    channels = draw(st.sampled_from(CHANNELS)) if _usually(draw, 75) else draw(_PB_CHANNELS)
    return _pb_audio(draw(st.binary(max_size=300)), rate, channels, draw(st.one_of(st.none(), _U64)))


_PB_AUDIO = _pb_audio_frames()


def _pb_transcription(text: str, user_id: str, timestamp: str) -> bytes:
    frame = PbFrame()
    frame.transcription.text, frame.transcription.user_id = text, user_id
    frame.transcription.timestamp = timestamp
    return bytes(frame.SerializeToString())


def _pb_message(data: str) -> bytes:
    frame = PbFrame()
    frame.message.data = data
    return bytes(frame.SerializeToString())


def _pb_interruption(ident: int) -> bytes:
    frame = PbFrame()
    frame.interruption.id = ident
    return bytes(frame.SerializeToString())


_ENVELOPES: st.SearchStrategy[bytes] = st.one_of(
    st.builds(_pb_text, _U64, _TEXT, _TEXT),
    _PB_AUDIO,
    st.builds(_pb_transcription, _TEXT, _TEXT, _TEXT),
    st.builds(_pb_message, st.one_of(_TEXT, _JSON.map(_dumps), rtvi_messages().map(_dumps))),
    st.builds(_pb_interruption, _U64),
)


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    """A valid envelope with one byte changed, dropped or inserted, or cut short."""
    data = bytearray(draw(_ENVELOPES))
    at = draw(st.integers(0, len(data)))
    how = draw(st.sampled_from(["flip", "drop", "insert", "cut"]))
    if how == "insert" or not data:
        data.insert(at, draw(st.integers(0, 255)))
    elif how == "cut":
        del data[at:]
    else:
        at = min(at, len(data) - 1)
        if how == "flip":
            data[at] ^= draw(st.integers(1, 255))
        else:
            del data[at]
    return bytes(data)


PROTOBUF_MIX: dict[str, tuple[st.SearchStrategy[str | bytes], int]] = {
    "pb-empty": (st.just(b""), 1),  # first, or noise-bytes would have drawn it
    "noise-bytes": (st.binary(max_size=200), 10),
    "noise-text": (st.text(max_size=100), 4),
    "pb-text": (st.builds(_pb_text, _U64, _TEXT, _TEXT), 7),
    "pb-audio": (_PB_AUDIO, 10),
    "pb-transcription": (st.builds(_pb_transcription, _TEXT, _TEXT, _TEXT), 8),
    "pb-message-text": (st.builds(_pb_message, _TEXT), 7),
    "pb-message-json": (st.builds(_pb_message, _JSON.map(_dumps)), 7),
    "pb-message-rtvi": (st.builds(_pb_message, rtvi_messages().map(_dumps)), 25),
    "pb-message-deep": (st.builds(_pb_message, _DEEP_MESSAGE), 3),
    "pb-message-numeric": (st.builds(_pb_message, _NUMERIC_DOCUMENT), 4),
    "pb-message-send-text": (st.builds(_pb_message, _SEND_TEXT.map(_dumps)), 6),
    "pb-interruption": (st.builds(_pb_interruption, _U64), 4),
    "pb-mutated": (_mutated(), 14),
}

MIXES = {"rtvi": RTVI_MIX, "protobuf": PROTOBUF_MIX}
UNDECODABLE = {"rtvi": rtvi_undecodable, "protobuf": protobuf_undecodable}


# --- Edge cases, played in every corpus besides the draws ------------------------------------------------


def _audio(type_: str, **data: Any) -> str:
    return _dumps(rtvi(type_, data, id_="edge"))


def _pcm(size: int) -> str:
    return base64.b64encode(bytes(range(size))).decode()


def edge_messages() -> list[str]:
    """RTVI messages on either side of every rule of the contract, which random draws may well miss."""
    edges = []
    for type_, field, audio in (
        ("raw-audio", "base64Audio", _pcm(4)),
        ("raw-audio-batch", "base64AudioBatch", [_pcm(4)]),
    ):
        for name, values in (
            ("numChannels", [1, 2, 0, 3, True, 1.0, None, "1"]),
            ("sampleRate", [8000, 48000, 7999, 48001, True, 16000.0, None, "16000", float("inf")]),
        ):
            edges += [_audio(type_, **{field: audio, name: value}) for value in values]
        edges += [
            _audio(type_),
            _dumps(rtvi(type_, id_="edge")),
            _dumps({**rtvi(type_, id_="edge"), "data": []}),
        ]
        edges += [_audio(type_, **{field: value}) for value in (None, 5, "AAAA", ["AAAA"])]
    edges += [_audio("raw-audio-batch", base64AudioBatch=value) for value in ([], ["!!"], [5])]
    edges += [
        _audio("raw-audio", base64Audio=value)
        for value in ("AAA", "AA==", "!!!!", "\u00c4\u00c4\u00c4\u00c4")
    ]
    for size in range(7):
        edges += [_audio("raw-audio", base64Audio=_pcm(size), numChannels=channels) for channels in CHANNELS]
    edges += [_deep_message(depth, as_object) for depth in (30, 31, 32, 33) for as_object in (False, True)]
    digits = [4299, 4300, 4301, 5000]
    edges += [sign + "7" * n for n in digits for sign in ("", "-")]
    edges += [_numeric_message(type_, "1" * n) for type_ in _NUMBER_AT for n in digits]
    edges += [
        _numeric_message(type_, literal)
        for type_ in _NUMBER_AT
        for literal in ("NaN", "Infinity", "-Infinity", "1e400", "1e-400", "16000.0", "0." + "5" * 5000)
    ]
    edges += [
        _dumps(message)
        for message in (
            rtvi("client-message", {"t": "lone \ud800"}),
            rtvi("client-message", {"t": "x", "d": {"\udc00": 1}}),
            rtvi("client-message", {"t": "x", "d": [[["\udfff"]]]}),
            rtvi("fuzz-\udbff"),
            rtvi("send-text", {"content": "a\ud83db"}),
            rtvi("send-text", {"content": "a pair \U0001f600 is fine"}),
            {"label": LABEL, "id": "edge"},
            {"label": LABEL, "type": 5, "id": "edge"},
            {"label": "rtvi", "type": "send-text", "id": "edge"},
            [rtvi("send-text", {"content": "listed"})],
        )
    ]
    return edges


EDGES: dict[str, list[str | bytes]] = {
    "rtvi": [*edge_messages()],
    "protobuf": [
        *(_pb_message(message) for message in edge_messages()),
        *(_pb_message(data) for data in ("[]", "5", '"rtvi-ai"', '{"label": "rtvi-ai"}')),
        *(
            _pb_audio(bytes(4), rate, channels, None)
            for rate in (7999, 8000, 48000, 48001)
            for channels in range(4)
        ),
    ],
}


@dataclass(frozen=True)
class Payload:
    kind: str
    wire: str | bytes
    undecodable: bool


@dataclass
class Corpus:
    payloads: list[Payload]
    skipped: Counter[str]

    def summary(self) -> str:
        kinds = Counter(p.kind for p in self.payloads)
        bad = sum(p.undecodable for p in self.payloads)
        return (
            f"{len(self.payloads)} payloads ({bad} undecodable), by kind {dict(sorted(kinds.items()))}, "
            f"skipped {dict(self.skipped)}, seed {SEED or 0}"
        )


def _echoes_leak_markers(wire: str | bytes) -> bool:
    """Payloads the bot may echo back (replies, validation errors) must not contain what we look for."""
    text = wire if isinstance(wire, str) else wire.decode("utf-8", "replace")
    try:
        decoded: Any = json.loads(wire)
    except (ValueError, RecursionError):
        decoded = None
    return bool(leaks(text) or leaks(decoded))


def _draw(strategy: st.SearchStrategy[str | bytes], examples: int, salt: int) -> list[str | bytes]:
    """Let Hypothesis draw ``examples`` values; nothing is tested inside ``@given``."""
    drawn: list[str | bytes] = []

    @seed(int(SEED or 0) * 1_000_003 + salt)
    @settings(
        max_examples=examples,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(wire: str | bytes) -> None:
        drawn.append(wire)

    collect()
    return drawn


def draw_corpus(serializer: str, examples: int = EXAMPLES) -> Corpus:
    """About ``examples`` distinct payloads for one wire format in its mix of kinds, and the edge cases,
    shuffled."""
    mix = MIXES[serializer]
    total = sum(share for _, share in mix.values())
    corpus = Corpus([], Counter())
    seen: set[str | bytes] = set()
    for index, (kind, (strategy, share)) in enumerate(mix.items()):
        wanted = max(1, round(examples * share / total))
        have = 0
        for attempt in range(4):  # Hypothesis repeats itself; top up from differently seeded runs
            fresh = [w for w in _draw(strategy, wanted - have, salt=100 * index + attempt) if w not in seen]
            for wire in dict.fromkeys(fresh):
                if have == wanted:
                    break
                have += 1
                seen.add(wire)
                if _echoes_leak_markers(wire):
                    corpus.skipped["echoes_leak_markers"] += 1
                else:
                    corpus.payloads.append(Payload(kind, wire, UNDECODABLE[serializer](wire)))
            if have == wanted or not fresh:
                break
    for wire in dict.fromkeys(EDGES[serializer]):
        if wire not in seen and not _echoes_leak_markers(wire):
            corpus.payloads.append(Payload("edge", wire, UNDECODABLE[serializer](wire)))
    random.Random(f"{SEED}-{serializer}").shuffle(corpus.payloads)
    return corpus


# --- Playing payloads over the wire --------------------------------------------------------------------


def encoded(wire: str | bytes) -> bytes:
    return wire if isinstance(wire, bytes) else wire.encode()


async def send_raw(client: WireClient, wire: str | bytes) -> None:
    if isinstance(wire, bytes):
        await client.ws.send_bytes(wire)
    else:
        await client.ws.send_str(wire)


def is_undecodable_error(message: dict[str, Any]) -> bool:
    data = message.get("data")
    return (
        message.get("type") == "error"
        and isinstance(data, dict)
        and str(data.get("error", "")).startswith("undecodable frame")
    )


async def probe(client: WireClient, probe_id: str) -> None:
    """Round-trip through the whole pipeline: an unknown RTVI type is answered with an error-response."""
    await client.send(rtvi("fuzz-probe", id_=probe_id))
    while (await client.next("error-response", timeout=ROUND_TIMEOUT)).get("id") != probe_id:
        pass


async def quiesce(client: WireClient, quiet: float = 0.4, limit: float = 10.0) -> None:
    """Read until the server has said nothing for ``quiet`` seconds (turns the fuzz started are over)."""
    async with asyncio.timeout(limit):
        while True:
            try:
                await client.next(timeout=quiet)
            except TimeoutError:
                return


@dataclass
class Verdict:
    problems: list[str]
    undecodable_errors: int = 0

    def check(self, payload: Payload, messages: list[dict[str, Any]]) -> None:
        errors = [m for m in messages if is_undecodable_error(m)]
        self.undecodable_errors += len(errors)
        if len(errors) != int(payload.undecodable):
            self.problems.append(f"{len(errors)} undecodable-frame errors for {payload!r}")
        for error in errors:
            if error["data"].get("fatal") is not False:
                self.problems.append(f"undecodable-frame error not marked fatal: false: {error!r}")
        for message in messages:
            data = message.get("data")
            if message.get("type") == "error" and isinstance(data, dict) and data.get("fatal"):
                self.problems.append(f"fatal error after {payload!r}: {message!r}")
            if leaked := leaks(message):
                self.problems.append(f"internals leaked after {payload!r}: {leaked!r}")


async def play(client: WireClient, corpus: Corpus) -> Verdict:
    verdict = Verdict([])
    for i, payload in enumerate(corpus.payloads):
        start = len(client.received)
        try:
            await send_raw(client, payload.wire)
            await probe(client, f"fuzz-probe-{i}")
        except (ConnectionError, TimeoutError) as e:
            code = client.ws.close_code
            raise AssertionError(
                f"session lost (close code {code}) after payload #{i} {payload!r}: {e!r}"
            ) from e
        verdict.check(payload, client.received[start:])
    return verdict


# --- The properties --------------------------------------------------------------------------------------


@pytest.mark.parametrize("serializer", SERIALIZERS)
async def test_random_frames_never_crash_a_session_leak_internals_or_disturb_another_session(
    make_gateway: GatewayFactory, serializer: str
) -> None:
    """Whatever a client sends, it gets at most a non-fatal error per frame and keeps its session; the
    gateway tells it nothing about its insides, and other users' sessions do not notice."""
    corpus = draw_corpus(serializer)
    kinds = Counter(p.kind for p in corpus.payloads)
    bad = sum(p.undecodable for p in corpus.payloads)
    assert set(kinds) == {*MIXES[serializer], "edge"}, corpus.summary()
    assert 0.2 * len(corpus.payloads) < bad < 0.8 * len(corpus.payloads), corpus.summary()
    assert len({p.wire for p in corpus.payloads}) > 0.9 * len(corpus.payloads), corpus.summary()

    gateway = await make_gateway(max_bad_frames=10_000)
    tenant = gateway.tenant
    bystander = await gateway.connect(serializer=serializer, user_id="bystander")
    await bystander.bot_turn()
    fuzzed = await gateway.connect(serializer=serializer, user_id="fuzzer")
    await fuzzed.bot_turn()

    verdict = await play(fuzzed, corpus)

    assert not verdict.problems, "\n".join([corpus.summary(), *verdict.problems[:20]])
    replies = Counter(m.get("type") for m in fuzzed.received)
    assert replies["bot-llm-started"] > 3, f"too few payloads reached the LLM: {replies}; {corpus.summary()}"
    assert verdict.undecodable_errors == sum(p.undecodable for p in corpus.payloads), corpus.summary()
    assert gateway.sample("gateway_rejections_total", tenant=tenant, reason="undecodable_frame") == (
        verdict.undecodable_errors
    )
    await quiesce(fuzzed, quiet=1.0)  # > the 0.6 s a transcription-started user turn waits before it ends
    assert await fuzzed.say("still there?") == "I heard: still there?"
    assert await bystander.say("did you hear all that?") == "I heard: did you hear all that?"
    assert not [m for m in bystander.received if m.get("type") in ("error", "error-response")]
    assert not leaks(bystander.received)

    await fuzzed.ws.close()
    await bystander.ws.close()
    await gateway.settle()
    assert gateway.sample("gateway_sessions_total", tenant=tenant, outcome="error") == 0
    assert gateway.sample("gateway_sessions_total", tenant=tenant, outcome="completed") == 2
    assert gateway.sample("gateway_rejections_total", tenant=tenant, reason="internal_error") == 0
    assert gateway.sample("gateway_memory_errors_total", tenant=tenant, operation="add") == 0


@pytest.mark.parametrize("serializer", SERIALIZERS)
async def test_abusive_clients_are_closed_with_documented_codes_and_others_keep_talking(
    make_gateway: GatewayFactory, serializer: str
) -> None:
    """Repeated undecodable frames close with 1007 and an oversized frame with 1009 — never 1011 — and
    a bystander's conversation goes on."""
    limit, allowance = 4096, 3
    corpus = draw_corpus(serializer, examples=60)
    garbage = [p for p in corpus.payloads if p.undecodable and len(encoded(p.wire)) < limit][:allowance]
    assert len(garbage) == allowance, corpus.summary()
    gateway = await make_gateway(max_bad_frames=allowance, max_message_bytes=limit)
    tenant = gateway.tenant
    bystander = await gateway.connect(serializer=serializer, user_id="bystander")
    await bystander.bot_turn()

    spammer = await gateway.connect(serializer=serializer, user_id="spammer")
    await spammer.bot_turn()
    for payload in garbage:
        await send_raw(spammer, payload.wire)
    assert await spammer.closed() == closecodes.INVALID_PAYLOAD, garbage
    errors = [m for m in spammer.received if m.get("type") == "error"]
    assert errors and all(is_undecodable_error(m) and m["data"]["fatal"] is False for m in errors)
    assert len(errors) <= allowance

    chunk = next((p.wire for p in corpus.payloads if isinstance(p.wire, str) and p.wire), "x")
    bigmouth = await gateway.connect(serializer=serializer, user_id="bigmouth")
    await bigmouth.bot_turn()
    await bigmouth.send(send_text(chunk * (limit // len(chunk.encode()) + 1)))
    assert await bigmouth.closed() == closecodes.MESSAGE_TOO_BIG

    assert await bystander.say("are you still with me?") == "I heard: are you still with me?"
    assert not [m for m in bystander.received if m.get("type") in ("error", "error-response")]
    assert not leaks(spammer.received) and not leaks(bigmouth.received) and not leaks(bystander.received)
    await bystander.ws.close()
    await gateway.settle()
    assert gateway.sample("gateway_sessions_total", tenant=tenant, outcome="client_error") == 2
    assert gateway.sample("gateway_sessions_total", tenant=tenant, outcome="error") == 0
    assert gateway.sample("gateway_rejections_total", tenant=tenant, reason="message_too_big") == 1
    assert gateway.sample("gateway_rejections_total", tenant=tenant, reason="internal_error") == 0


# --- Regression tests for the bugs the fuzzer found -------------------------------------------------------


async def refused(client: WireClient, wire: str | bytes, probe_id: str) -> list[dict[str, Any]]:
    """Send ``wire`` and return what came back before the probe's answer, which must be exactly one
    non-fatal ``undecodable frame`` error."""
    start = len(client.received)
    await send_raw(client, wire)
    await probe(client, probe_id)
    answers = client.received[start:]
    errors = [m for m in answers if m.get("type") == "error"]
    assert len(errors) == 1 and is_undecodable_error(errors[0]), answers
    assert errors[0]["data"]["fatal"] is False, errors
    return answers


def client_wire(client: WireClient, message: dict[str, Any]) -> str | bytes:
    """``message`` as ``client`` puts it on the wire."""
    return _dumps(message) if client.serializer == "rtvi" else _pb_message(_dumps(message))


_CRASHERS = {
    "zero-channels": _dumps(
        rtvi("raw-audio", {"base64Audio": "AAAA", "sampleRate": 16000, "numChannels": 0})
    ),
    "negative-half-channel": _dumps(rtvi("raw-audio", {"base64Audio": "", "numChannels": -0.5})),
    "rate-1e400": '{"label": "rtvi-ai", "type": "raw-audio", "id": "a", "data": {"sampleRate": 1e400}}',
    "rate-Infinity": _dumps(rtvi("raw-audio", {"sampleRate": float("inf")})),
    "nested-5000": _nested(5000, as_object=False),
    "nested-in-message": _deep_message(990, as_object=False),
    # More digits than Python converts to an int (sys.get_int_max_str_digits(), 4,300): a plain ValueError.
    "number-5000-digits": "1" * 5000,
    "number-5000-digits-in-message": _numeric_message("client-message", "1" * 5000),
}


@pytest.mark.parametrize("name", list(_CRASHERS))
async def test_rtvi_frames_that_crashed_the_serializer_get_a_non_fatal_error_instead(
    gateway: RunningGateway, name: str
) -> None:
    """Raw audio with 0, fractional or infinite channels or rates, JSON nested deeper than Python's
    decoder recurses, and a number with more digits than Python converts once ended the session with 1011;
    now they are undecodable frames like any other, and the conversation goes on."""
    client = await gateway.connect(serializer="rtvi", user_id="u1")
    await client.bot_turn()
    await refused(client, _CRASHERS[name], "after-crasher")
    assert await client.say("still there?") == "I heard: still there?"
    assert not [leaked for m in client.received if (leaked := leaks(m))]


_HANDLER_FAILURES: dict[str, tuple[str, dict[str, Any], str | None]] = {
    "rtvi-batch-zero-channels": (
        "rtvi",
        rtvi("raw-audio-batch", {"base64AudioBatch": ["AAAA"], "sampleRate": 16000, "numChannels": 0}),
        None,
    ),
    "rtvi-batch-without-data": ("rtvi", rtvi("raw-audio-batch"), None),
    "protobuf-zero-channels": (
        "protobuf",
        rtvi("raw-audio", {"base64Audio": "AAAA", "sampleRate": 16000, "numChannels": 0}),
        None,
    ),
    "protobuf-without-data": ("protobuf", rtvi("raw-audio"), None),
    "image-not-base64": (
        "protobuf",
        rtvi(
            "send-file",
            {
                "content": "look",
                "file": {"format": "image/png", "source": {"type": "bytes", "bytes": "abc"}},
                "options": {"run_immediately": False},
            },
        ),
        "could not process the message",
    ),
    "text-not-a-string": ("rtvi", rtvi("send-text", {"content": 5}), "invalid message data"),
}


@pytest.mark.parametrize("name", list(_HANDLER_FAILURES))
async def test_rtvi_messages_pipecat_cannot_handle_are_refused_or_answered_without_exception_text(
    gateway: RunningGateway, name: str
) -> None:
    """Pipecat's RTVI processor answers a message whose handler raises with 'Exception processing message:
    <str(e)>', and invalid data with pydantic's error text. Audio messages it cannot handle are refused at
    the door as undecodable frames; what still fails inside Pipecat is answered with a plain error."""
    serializer, message, answer = _HANDLER_FAILURES[name]
    client = await gateway.connect(serializer=serializer, user_id="u1")
    await client.bot_turn()
    if answer is None:
        await refused(client, client_wire(client, message), "after-message")
    else:
        await client.send(message)
        response = await client.next("error-response")
        assert response.get("id") == message["id"] and response["data"] == {"error": answer}, response
        await probe(client, "after-message")
        assert not [m for m in client.received if m.get("type") == "error"]
    assert not [leaked for m in client.received if (leaked := leaks(m))]
    assert await client.say("still there?") == "I heard: still there?"


async def memories_of(gateway: RunningGateway, user_id: str) -> list[dict[str, Any]]:
    """What the tenant's memory API returns for ``user_id``."""
    headers = {"Authorization": f"Bearer {gateway.keys[gateway.tenant]}"}
    url = f"{gateway.url}/v1/memories"
    async with gateway.http.get(url, params={"user_id": user_id}, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        results: list[dict[str, Any]] = (await resp.json())["results"]
    return results


@pytest.mark.parametrize(("text", "stored"), [("", None), ("nul\x00byte", "nulbyte")])
async def test_user_text_postgres_cannot_store_is_answered_and_does_not_fail_the_memory_write(
    make_gateway: GatewayFactory, text: str, stored: str | None
) -> None:
    """Empty text once embedded to NaN and PostgreSQL text cannot hold NUL, so such a batch failed every
    retry and the real turn stored with it was lost. Now the bot answers as usual, NUL is left out and
    blank text skipped when storing, and the other turn is remembered."""
    gateway = await make_gateway()
    client = await gateway.connect(serializer="rtvi", user_id="u1")
    await client.bot_turn()
    assert await client.say(text) == f"I heard: {text}"
    assert await client.say("my favourite colour is teal") == "I heard: my favourite colour is teal"
    await client.ws.close()
    await gateway.settle()
    assert gateway.sample("gateway_memory_errors_total", tenant=gateway.tenant, operation="add") == 0
    memories = await memories_of(gateway, "u1")
    said = {m["memory"] for m in memories if m["role"] == "user"}
    assert said == {"my favourite colour is teal", *([stored] if stored else [])}, memories
    assert all(m["memory"].strip() and "\x00" not in m["memory"] for m in memories), memories


@pytest.mark.parametrize("serializer", SERIALIZERS)
async def test_a_lone_surrogate_in_user_text_is_refused_and_the_conversation_goes_on(
    make_gateway: GatewayFactory, serializer: str
) -> None:
    """JSON may escape a lone surrogate (\\ud800); once such text was in the context, the LLM client could
    not encode any later request, so every turn failed and the client was sent the codec error. Now the
    frame is refused at the door, and the text never reaches the LLM or the memory store."""
    gateway = await make_gateway()
    client = await gateway.connect(serializer=serializer, user_id="u1")
    await client.bot_turn()
    answers = await refused(client, client_wire(client, send_text("lone \ud800 surrogate")), "after-text")
    assert not [m for m in answers if m.get("type") in ("user-input", "user-llm-text", "bot-llm-started")]
    assert await client.say("still there?") == "I heard: still there?"
    assert not [leaked for m in client.received if (leaked := leaks(m))]
    assert not [
        m for m in client.received if m.get("type") == "error-response" and m.get("id") != "after-text"
    ]
    await client.ws.close()
    await gateway.settle()
    assert gateway.sample("gateway_memory_errors_total", tenant=gateway.tenant, operation="add") == 0
    assert not [m for m in await memories_of(gateway, "u1") if "surrogate" in m["memory"]]
