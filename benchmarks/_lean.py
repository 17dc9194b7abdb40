"""Lean load generators: both ends of the server's WebSockets, cheap enough to drive 200+ calls.

load.py needs hundreds of simulated calls from one core, and the `websockets` library
(connection objects, an asyncio task per connection, a thread for the Live emulator)
spent more CPU per call than the server it was measuring. This module speaks just
enough RFC 6455, directly on asyncio Protocols (uvloop when importable), to stand in
for the two peers of the server:

- `LeanLive`: a TLS WebSocket server in place of the Gemini Live API, for load only.
  Same certificate and `env()` as `telephony.testing.emulator.LiveEmulator`; answers the
  setup with ``setupComplete`` and the greeting request with an empty turn
  (generationComplete, turnComplete, usageMetadata, sessionResumptionUpdate), like that
  emulator with an empty greeting. On the hot path a caller-audio frame costs one
  ``(arrival, raw payload)`` append: JSON and base64 are decoded afterwards, by
  `LeanSession.decode()`, which fills `audio_in` / `audio_in_times` as
  `EmulatedSession` does. No VAD, no scripted replies: the agent's speech comes from
  whoever calls `LeanSession.send()` with pre-encoded frames (`server_frame()`).
- `LeanCaller`: Twilio's end of one bidirectional Media Stream over plain ``ws://``,
  recording what `_harness.TwilioSide` records (``sent_at``, ``media_in``,
  ``marks_in``, ``clears``, ``close_code``) with the same playback model for mark
  echoes. Media frames are masked with an all-zero key (allowed by RFC 6455 §5.3, and
  it makes masking free).
- `Ticker`: callbacks at absolute ``time.monotonic()`` instants from one heap and one
  timer, so N paced streams cost one wake-up per due group, not N sleeping tasks.

Every timestamp is ``time.monotonic()``, which is system-wide on Linux, as in _harness.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import heapq
import itertools
import json
import math
import os
import re
import shutil
import ssl
import struct
import tempfile
from collections import deque
from time import monotonic
from typing import Callable, Sequence

try:
    import uvloop
except ImportError:  # plain asyncio works too, just slower
    uvloop = None

try:
    from websockets.speedups import apply_mask
except ImportError:
    import numpy as _np

    def apply_mask(data: bytes, mask: bytes) -> bytes:
        n = len(data)
        return (_np.frombuffer(data, _np.uint8) ^ _np.frombuffer((mask * (n // 4 + 1))[:n], _np.uint8)).tobytes()

__all__ = ["LeanCaller", "LeanLive", "LeanSession", "Ticker", "call_at", "run", "server_frame"]

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10
ZERO_MASK = b"\0\0\0\0"
_H16 = struct.Struct("!BBH")
_H64 = struct.Struct("!BBQ")
_MAX_HEADER = 16 * 1024


def run(coro):
    """Run `coro` on a uvloop event loop if uvloop is installed, else on asyncio's."""
    if uvloop is not None:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(coro)
    return asyncio.run(coro)


def call_at(loop: asyncio.AbstractEventLoop, when: float, callback: Callable, *args) -> asyncio.Handle:
    """`callback(*args)` at ``time.monotonic()`` instant `when` (never before, about 1 ms after at most).

    asyncio's loop clock is ``time.monotonic()``; uvloop's is libuv's millisecond clock,
    whose timers start from its own (truncated) now, so the delay is given in whole
    milliseconds from there, rounded up.
    """
    if uvloop is not None and isinstance(loop, uvloop.Loop):
        ms = math.ceil(when * 1000) - math.floor(monotonic() * 1000)
        return loop.call_later(ms / 1000, callback, *args) if ms > 0 else loop.call_soon(callback, *args)
    return loop.call_at(when, callback, *args)


class Ticker:
    """Run ``fn(due, *args)`` at absolute monotonic instants, from one heap and one timer.

    Callbacks run in order of `due` (then of scheduling), each once ``time.monotonic() >=
    due``; a callback may schedule more with `at()`.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None):
        self.loop = loop or asyncio.get_running_loop()
        self.heap: list = []
        self._order = itertools.count()
        self._handle: asyncio.Handle | None = None
        self._armed = math.inf
        self._running = False

    def __len__(self) -> int:
        return len(self.heap)

    def at(self, due: float, fn: Callable, *args) -> None:
        heapq.heappush(self.heap, (due, next(self._order), fn, args))
        if not self._running and due < self._armed:
            self._arm(due)

    def clear(self) -> None:
        self.heap.clear()
        if self._handle is not None:
            self._handle.cancel()
            self._handle, self._armed = None, math.inf

    def _arm(self, due: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed = due
        self._handle = call_at(self.loop, due, self._run)

    def _run(self) -> None:
        self._handle, self._armed = None, math.inf
        heap, pop = self.heap, heapq.heappop
        self._running = True
        try:
            now = monotonic()
            while heap and heap[0][0] <= now:
                due, _, fn, args = pop(heap)
                fn(due, *args)
                if heap and heap[0][0] > now:
                    now = monotonic()
        finally:
            self._running = False
            if heap:
                self._arm(heap[0][0])


# --------------------------------------------------------------------------- framing


def server_frame(payload: bytes | str, opcode: int = OP_TEXT) -> bytes:
    """A complete unmasked (server -> client) frame."""
    if isinstance(payload, str):
        payload = payload.encode()
    n = len(payload)
    if n < 126:
        return bytes((0x80 | opcode, n)) + payload
    if n < 65536:
        return _H16.pack(0x80 | opcode, 126, n) + payload
    return _H64.pack(0x80 | opcode, 127, n) + payload


def client_frame(payload: bytes | str, opcode: int = OP_TEXT) -> bytes:
    """A complete client -> server frame, masked with the all-zero key (so sent as is)."""
    if isinstance(payload, str):
        payload = payload.encode()
    n = len(payload)
    if n < 126:
        return bytes((0x80 | opcode, 0x80 | n)) + ZERO_MASK + payload
    if n < 65536:
        return _H16.pack(0x80 | opcode, 0xFE, n) + ZERO_MASK + payload
    return _H64.pack(0x80 | opcode, 0xFF, n) + ZERO_MASK + payload


def close_payload(code: int | None, reason: str = "") -> bytes:
    return b"" if code is None else struct.pack("!H", code) + reason.encode()[:123]


def accept_key(key: str | bytes) -> str:
    if isinstance(key, str):
        key = key.encode()
    return base64.b64encode(hashlib.sha1(key.strip() + GUID).digest()).decode("ascii")


def _headers(block: bytes) -> tuple[str, dict[str, str]]:
    lines = block.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            name = name.strip().lower()
            headers[name] = f"{headers[name]}, {value.strip()}" if name in headers else value.strip()
    return lines[0], headers


class _WebSocket(asyncio.Protocol):
    """The framing both ends share: an HTTP upgrade, then frames split or joined across reads.

    Subclasses implement `_upgrade(head, rest)` (the HTTP block up to its blank line;
    return False to stop), `_on_message(payload, now)` for each complete text or binary
    message, and `_on_close(code)` (the peer's close frame, or None if the connection
    was lost without one).
    """

    masked_out = False  # do our frames need a mask (clients)?

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._upgraded = False
        self._buf = bytearray()
        self._need = 0
        self._fragments: list[bytes] | None = None
        self._close_sent = False
        self._close_received = False
        self.lost = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        now = monotonic()
        buf = self._buf
        if not self._upgraded:
            buf += data
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > _MAX_HEADER:
                    self.transport.abort()
                return
            head, data = bytes(buf[:end]), bytes(buf[end + 4 :])
            buf.clear()
            if not self._upgrade(head) or self.transport is None:
                return
            self._upgraded = True
            if not data:
                return
        elif buf:
            buf += data
            if len(buf) < self._need:
                return
            data = bytes(buf)
            buf.clear()
        n, pos, need = len(data), 0, 0
        while pos + 2 <= n:
            b0, b1 = data[pos], data[pos + 1]
            size, h = b1 & 0x7F, pos + 2
            if size >= 126:
                if size == 126:
                    if h + 2 > n:
                        break
                    size, h = (data[h] << 8) | data[h + 1], h + 2
                else:
                    if h + 8 > n:
                        break
                    size, h = int.from_bytes(data[h : h + 8], "big"), h + 8
            if b1 & 0x80:
                if h + 4 > n:
                    break
                mask, h = data[h : h + 4], h + 4
            else:
                mask = None
            end = h + size
            if end > n:
                need = end - pos
                break
            payload = data[h:end]
            if mask is not None and mask != ZERO_MASK:
                payload = apply_mask(payload, mask)
            pos = end
            if b0 & 0x80 and 0 < (b0 & 0x0F) < 3 and self._fragments is None:
                self._on_message(payload, now)  # the common case: one whole data frame
            elif not self._frame(b0, payload, now):
                return
        if pos < n:
            buf += data[pos:] if pos else data
            self._need = need

    def _frame(self, b0: int, payload: bytes, now: float) -> bool:
        """Anything but a whole data frame; False once nothing more should be read."""
        opcode, fin = b0 & 0x0F, b0 & 0x80
        if opcode == OP_CLOSE:
            self._close_received = True
            code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
            if not self._close_sent:  # echo the code, as RFC 6455 §5.5.1 asks
                self.send_close(code if code not in (None, 1005, 1006, 1015) else None)
            self._on_close(code)
            return False
        if opcode == OP_PING:
            self._write(payload, OP_PONG)
        elif opcode == OP_PONG:
            pass
        elif opcode in (OP_TEXT, OP_BINARY):
            if self._fragments is not None:
                self._fail(1002, "a new message inside a fragmented one")
                return False
            self._fragments = [payload]
        elif opcode == OP_CONT:
            if self._fragments is None:
                self._fail(1002, "a continuation frame outside a message")
                return False
            self._fragments.append(payload)
        else:
            self._fail(1002, f"unknown opcode {opcode}")
            return False
        if fin and opcode in (OP_TEXT, OP_BINARY, OP_CONT) and self._fragments is not None:
            message, self._fragments = b"".join(self._fragments), None
            self._on_message(message, now)
        return True

    def _write(self, payload: bytes, opcode: int = OP_TEXT) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(client_frame(payload, opcode) if self.masked_out else server_frame(payload, opcode))

    def send_close(self, code: int | None = 1000, reason: str = "") -> None:
        if not self._close_sent:
            self._close_sent = True
            self._write(close_payload(code, reason), OP_CLOSE)

    def _fail(self, code: int, reason: str) -> None:
        self.send_close(code, reason)
        self._on_close(None)
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc) -> None:
        self.lost = True
        if not self._close_received:
            self._on_close(None)

    def _upgrade(self, head: bytes) -> bool:
        raise NotImplementedError

    def _on_message(self, payload: bytes, now: float) -> None:
        raise NotImplementedError

    def _on_close(self, code: int | None) -> None:
        raise NotImplementedError


# --------------------------------------------------------------------------- Live


_AUDIO_PREFIXES = tuple(
    f'{{"{key}":{sp}{{"audio":{sp}{{'.encode()
    for key in ("realtime_input", "realtimeInput") for sp in ("", " ")
)
"""How caller-audio messages start (the SDK's JSON and the server's fast path): such a
message is recorded raw and decoded after the run; anything else is parsed on arrival."""

_CLIENT_KEYS = {"setup": "setup", "realtime_input": "realtime_input", "realtimeInput": "realtime_input",
                "client_content": "client_content", "clientContent": "client_content",
                "tool_response": "tool_response", "toolResponse": "tool_response",
                "context_update": "context_update", "contextUpdate": "context_update"}


def _field(obj: dict, snake: str, default=None):
    """`obj[snake]` or its camelCase spelling (the SDK mixes both)."""
    if snake in obj:
        return obj[snake]
    head, *rest = snake.split("_")
    return obj.get(head + "".join(word.title() for word in rest), default)


def _pcm_rate(mime_type) -> int | None:
    if not isinstance(mime_type, str) or not mime_type.startswith("audio/"):
        return None
    match = re.search(r"rate=(\d+)", mime_type)
    return int(match.group(1)) if match else 16_000


class LeanSession(_WebSocket):
    """One connection to `LeanLive`: what an `EmulatedSession` records, recorded cheaply.

    During the run: `index`, `closed`, `close_code`, `texts` (a non-empty list means the
    bridge asked for its greeting), `frames` (``(arrival, raw payload)`` per client message
    after the setup). After `decode()`: `audio_in` (every PCM byte received) and
    `audio_in_times` (``(arrival, offset in audio_in, nbytes)`` per audio blob).
    """

    def __init__(self, live: LeanLive):
        super().__init__()
        self.live = live
        self.index = -1
        self.path = ""
        self.setup: dict | None = None
        self.frames: list[tuple[float, bytes]] = []
        self.texts: list[str] = []
        self.tool_responses: list[dict] = []
        self.errors: list[str] = []
        self.closed = False
        self.close_code: int | None = None
        self.audio_in = bytearray()
        self.audio_in_times: list[tuple[float, int, int]] = []
        self._greeted = False

    def __repr__(self) -> str:
        return f"<LeanSession #{self.index} closed={self.closed} frames={len(self.frames)}>"

    # -- sending

    def send(self, frame: bytes) -> float:
        """Write one complete frame (see `server_frame()`); the monotonic time it was handed
        to the transport, or NaN if the session is closed."""
        if self.closed or self._close_sent:
            return math.nan
        t = monotonic()
        self.transport.write(frame)
        return t

    def send_json(self, obj: dict | str) -> float:
        return self.send(server_frame(obj if isinstance(obj, str) else json.dumps(obj, separators=(",", ":"))))

    def close(self, code: int = 1000, reason: str = "") -> None:
        self.send_close(code, reason)

    # -- protocol

    def _upgrade(self, head: bytes) -> bool:
        request, headers = _headers(head)
        parts = request.split(" ")
        key = headers.get("sec-websocket-key")
        if len(parts) != 3 or parts[0] != "GET" or not key or "websocket" not in headers.get("upgrade", "").lower():
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            self.transport.close()
            return False
        self.path = parts[1]
        self.transport.write(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                              f"Sec-WebSocket-Accept: {accept_key(key)}\r\n\r\n").encode())
        self.index = len(self.live.sessions)
        self.live.sessions.append(self)
        return True

    def _on_message(self, payload: bytes, now: float) -> None:
        if payload.startswith(_AUDIO_PREFIXES):
            self.frames.append((now, payload))
        else:
            self._slow(payload, now)

    def _slow(self, payload: bytes, now: float) -> None:
        try:
            msg = json.loads(payload)
        except (ValueError, UnicodeDecodeError) as exc:
            return self._protocol_error(f"invalid JSON payload: {exc}")
        if not isinstance(msg, dict):
            return self._protocol_error(f"a client message must be a JSON object, got {type(msg).__name__}")
        if self.setup is None:
            if list(msg) != ["setup"] or not isinstance(msg["setup"], dict):
                return self._protocol_error(f"the first message must be a setup, got keys {sorted(msg)}")
            self.setup = msg["setup"]
            self.send(_SETUP_COMPLETE)
            return
        self.frames.append((now, payload))  # audio in it, if any, is decoded with the rest
        greet = False
        for key, body in msg.items():
            kind = _CLIENT_KEYS.get(key)
            if kind is None or kind == "setup" or not isinstance(body, dict):
                return self._protocol_error(f"unexpected {key!r} in a client message")
            if kind == "realtime_input" and (text := _field(body, "text")) is not None:
                self.texts.append(str(text))
                greet = True
            elif kind == "client_content":
                for turn in _field(body, "turns") or []:
                    for part in (turn.get("parts") or []) if isinstance(turn, dict) else []:
                        if isinstance(part, dict) and isinstance(part.get("text"), str):
                            self.texts.append(part["text"])
                greet = greet or bool(_field(body, "turn_complete"))
            elif kind == "tool_response":
                self.tool_responses.extend(r for r in _field(body, "function_responses") or [] if isinstance(r, dict))
        if greet and not self._greeted:
            self._greeted = True
            self._empty_turn()
            if self.live.on_greeting is not None:
                self.live.on_greeting(self)

    def _empty_turn(self) -> None:
        """The emulator's answer to the greeting request with an empty greeting script."""
        frames = [_GENERATION_COMPLETE, _TURN_COMPLETE,
                  server_frame(json.dumps({"usageMetadata": {
                      "promptTokenCount": 0, "responseTokenCount": 0, "totalTokenCount": 0,
                      "promptTokensDetails": [{"modality": "AUDIO", "tokenCount": 0}, {"modality": "TEXT", "tokenCount": 0}],
                      "responseTokensDetails": [{"modality": "AUDIO", "tokenCount": 0}]}}, separators=(",", ":")))]
        if isinstance(_field(self.setup, "session_resumption"), dict):
            handle = f"emu-{self.index}-1-{os.urandom(4).hex()}"
            frames.append(server_frame(json.dumps({"sessionResumptionUpdate": {"newHandle": handle, "resumable": True}},
                                                  separators=(",", ":"))))
        self.send(b"".join(frames))

    def _protocol_error(self, what: str) -> None:
        """What the real service rejects: recorded, and the session closed with 1007."""
        self.errors.append(f"protocol error: {what}")
        self.send_close(1007, what[:120])
        self._on_close(None)
        self.transport.close()

    def _on_close(self, code: int | None) -> None:
        if not self.closed:
            self.closed = True
            self.close_code = code if self._close_received else 1006
            if self.transport is not None:
                self.transport.close()

    # -- after the run

    def decode(self) -> None:
        """Fill `audio_in` and `audio_in_times` from the recorded frames (idempotent)."""
        self.audio_in = bytearray()
        self.audio_in_times = []
        for now, payload in self.frames:
            try:
                msg = json.loads(payload)
                body = msg.get("realtime_input", msg.get("realtimeInput"))
                if not isinstance(body, dict):
                    continue
                blobs = ([a] if (a := _field(body, "audio")) is not None else []) + list(_field(body, "media_chunks") or [])
                for blob in blobs:
                    if _pcm_rate(_field(blob, "mime_type")) is None:
                        continue
                    data = blob.get("data", "")
                    pcm = base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
                    self.audio_in_times.append((now, len(self.audio_in), len(pcm)))
                    self.audio_in += pcm
            except (ValueError, TypeError, AttributeError, binascii.Error) as exc:
                self.errors.append(f"bad client message: {type(exc).__name__}: {exc}")


_SETUP_COMPLETE = server_frame('{"setupComplete":{}}')
_GENERATION_COMPLETE = server_frame('{"serverContent":{"generationComplete":true}}')
_TURN_COMPLETE = server_frame('{"serverContent":{"turnComplete":true}}')


class LeanLive:
    """A TLS WebSocket server on loopback in place of the Gemini Live API (see the module doc).

    Use inside a running event loop: ``live = await LeanLive().start()``; give `env()` to
    the server process; read `sessions`; `on_greeting(session)` is called when a session
    asks for its greeting (the moment its call starts listening).
    """

    def __init__(self, host: str = "127.0.0.1"):
        self.host = host
        self.port = 0
        self.sessions: list[LeanSession] = []
        self.on_greeting: Callable[[LeanSession], None] | None = None
        self.cert_path = ""
        self._tmpdir: str | None = None
        self._server: asyncio.AbstractServer | None = None

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    def env(self) -> dict[str, str]:
        """What `LiveEmulator.env()` gives: the environment that points an unmodified SDK here."""
        return {
            "GOOGLE_GEMINI_BASE_URL": self.url,
            "SSL_CERT_FILE": self.cert_path,
            "NO_PROXY": "127.0.0.1,localhost",
            "GEMINI_API_KEY": "emulator-key",
        }

    async def start(self) -> LeanLive:
        from telephony.testing.emulator import write_self_signed_cert

        self._tmpdir = tempfile.mkdtemp(prefix="lean-live-")
        self.cert_path, key_path = write_self_signed_cert(self._tmpdir, self.host)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_path, key_path)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: LeanSession(self), self.host, 0, ssl=context, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def server_errors(self) -> list[str]:
        return [f"session #{s.index}: {e}" for s in self.sessions for e in s.errors]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for s in self.sessions:
                if s.transport is not None and not s.lost:
                    s.transport.abort()
            self._server = None
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None


# --------------------------------------------------------------------------- Twilio


class LeanCaller(_WebSocket):
    """Twilio's end of one bidirectional Media Stream; records what `TwilioSide` records.

    `payloads[k]` is media frame k's base64 payload, as bytes (str accepted); received
    media are kept as ``(arrival, base64 payload bytes)`` in `media_in`, marks as
    ``(len(media_in), name)`` in `marks_in`. A mark is echoed once the caller would have
    played the media before it (``play_end``); a ``clear`` echoes every pending mark at once.
    """

    masked_out = True

    def __init__(self, payloads: Sequence, *, stream_sid: str, call_sid: str, account_sid: str = "AC" + "3c" * 16,
                 caller: str = "+15550001111", called: str = "+15550002222", compression: str | None = None):
        super().__init__()
        self.payloads = payloads
        self.stream_sid, self.call_sid, self.account_sid = stream_sid, call_sid, account_sid
        self.caller, self.called = caller, called
        self.compression = compression
        self._media = (b'{"event":"media","sequenceNumber":"%d","media":{"track":"inbound","chunk":"%d",'
                       b'"timestamp":"%d","payload":"%s"},"streamSid":"' + stream_sid.encode() + b'"}')
        self._mark = (b'{"event":"mark","sequenceNumber":"%d","streamSid":"' + stream_sid.encode()
                      + b'","mark":{"name":%s}}')
        # How the server's media and mark messages start (telephony.twilio_protocol): the
        # payload or the name is sliced out; any other shape goes through json.loads.
        sid = json.dumps(stream_sid).encode()
        self._media_prefix = b'{"event":"media","streamSid":' + sid + b',"media":{"payload":"'
        self._mark_prefix = b'{"event":"mark","streamSid":' + sid + b',"mark":{"name":'
        self.silence = base64.b64encode(b"\xff" * 160)
        self.sent_at: list[float] = []
        self.media_in: list[tuple[float, bytes]] = []
        self.marks_in: list[tuple[int, str]] = []
        self.clears: list[float] = []
        self.closed = False
        self.close_code: int | None = None
        self.seq = 0
        self.play_end = 0.0
        self.pending: deque[tuple[float, bytes]] = deque()  # (play end, JSON name) of marks not yet played
        self._timer: asyncio.Handle | None = None
        self._key = ""
        self._opened: asyncio.Future | None = None
        self._closed_waiter: asyncio.Future | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    # -- opening and closing

    async def open(self, host: str, port: int, path: str = "/media-stream") -> None:
        """Connect, upgrade and send ``connected`` and ``start`` (the JSON TwilioSide sends)."""
        self.loop = loop = asyncio.get_running_loop()
        self._opened = loop.create_future()
        await loop.create_connection(lambda: self, host, port)
        self._key = base64.b64encode(os.urandom(16)).decode("ascii")
        extensions = ("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
                      if self.compression == "deflate" else "")
        self.transport.write((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                              f"Connection: Upgrade\r\nSec-WebSocket-Key: {self._key}\r\nSec-WebSocket-Version: 13\r\n"
                              f"{extensions}User-Agent: Twilio.TmeWs/1.0\r\n\r\n").encode())
        try:
            await self._opened
        except BaseException:
            self.transport.abort()
            raise
        self.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        self.seq = 1
        self.send(json.dumps({
            "event": "start", "sequenceNumber": "1", "streamSid": self.stream_sid,
            "start": {"accountSid": self.account_sid, "streamSid": self.stream_sid, "callSid": self.call_sid,
                      "tracks": ["inbound"], "customParameters": {"From": self.caller, "To": self.called},
                      "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}},
        }))

    def _upgrade(self, head: bytes) -> bool:
        status, headers = _headers(head)
        problem = None
        if status.split(" ")[1:2] != ["101"]:
            problem = f"the server answered {status!r}"
        elif headers.get("sec-websocket-accept") != accept_key(self._key):
            problem = "wrong Sec-WebSocket-Accept"
        elif headers.get("sec-websocket-extensions"):
            problem = (f"the server negotiated {headers['sec-websocket-extensions']!r}, which the lean caller does "
                       "not implement (run with --no-deflate)")
        if problem is not None:
            if not self._opened.done():
                self._opened.set_exception(ConnectionError(problem))
            self.transport.abort()
            return False
        self._opened.set_result(None)
        return True

    async def stop(self, timeout: float = 5) -> None:
        """Send ``stop`` and wait up to `timeout` for the server to close; close it ourselves
        otherwise (a closing handshake, then the socket is dropped after 10 s more)."""
        self.seq += 1
        self.send(json.dumps({"event": "stop", "sequenceNumber": str(self.seq), "streamSid": self.stream_sid,
                              "stop": {"accountSid": self.account_sid, "callSid": self.call_sid}}))
        if not await self._wait_closed(timeout):
            self.send_close(1000)
            if not await self._wait_closed(10):
                self.transport.abort()
                self._on_close(None)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    async def _wait_closed(self, timeout: float) -> bool:
        if not self.closed:
            self._closed_waiter = self.loop.create_future()
            try:
                await asyncio.wait_for(self._closed_waiter, timeout)
            except TimeoutError:
                pass
        return self.closed

    def _on_close(self, code: int | None) -> None:
        if self._opened is not None and not self._opened.done():
            self._opened.set_exception(ConnectionError("closed during the upgrade"))
        if not self.closed:
            self.closed = True
            self.close_code = code if self._close_received else 1006
            if self._timer is not None:
                self._timer.cancel()
            if self._closed_waiter is not None and not self._closed_waiter.done():
                self._closed_waiter.set_result(None)

    # -- sending

    def send(self, text: str | bytes) -> bool:
        if self.closed or self._close_sent or self.transport.is_closing():
            return False
        self.transport.write(client_frame(text))
        return True

    def send_media(self, k: int) -> bool:
        """Send media frame `k` (0-based) now, recording when it left; False if the stream is closed."""
        if self.closed or self._close_sent:
            return False
        payload = self.payloads[k] if k < len(self.payloads) else self.silence
        if isinstance(payload, str):
            payload = payload.encode()
        self.seq += 1
        body = self._media % (self.seq, k + 1, 20 * (k + 1), payload)
        n = len(body)
        self.sent_at.append(monotonic())
        self.transport.write(_H16.pack(0x81, 0xFE, n) + ZERO_MASK + body if 125 < n < 65536 else client_frame(body))
        return True

    def _echo(self, name: bytes) -> None:
        """Echo a mark; `name` is its JSON string, quotes included."""
        self.seq += 1
        self.send(self._mark % (self.seq, name))

    # -- receiving

    def _on_message(self, payload: bytes, now: float) -> None:
        if payload.startswith(self._media_prefix):
            at, end = len(self._media_prefix), len(payload) - 3
            if payload.endswith(b'"}}') and payload.find(b'"', at) == end:  # no quote inside: the whole payload
                self._media_in(payload[at:end], now)
                return
        elif payload.startswith(self._mark_prefix) and payload.endswith(b"}}"):
            raw = payload[len(self._mark_prefix) : -2]
            if len(raw) >= 2 and raw[0] == raw[-1] == 34 and raw.count(b'"') == 2 and b"\\" not in raw:
                self._mark_in(raw[1:-1].decode(), raw, now)
                return
        try:
            msg = json.loads(payload)
            event = msg.get("event")
            if event == "media":
                data = msg["media"]["payload"]
                self._media_in(data.encode() if isinstance(data, str) else data, now)
            elif event == "mark":
                name = msg["mark"]["name"]
                self._mark_in(name, json.dumps(name).encode(), now)
            elif event == "clear":
                self._clear(now)
        except (ValueError, TypeError, KeyError, AttributeError):
            pass  # TwilioSide ignores what it cannot read, too

    def _media_in(self, data: bytes, now: float) -> None:
        self.media_in.append((now, data))
        self.play_end = (self.play_end if self.play_end > now else now) + len(data) * 3 / 4 / 8000

    def _mark_in(self, name: str, raw: bytes, now: float) -> None:
        self.marks_in.append((len(self.media_in), name))
        if self.play_end <= now:
            self._echo(raw)
            return
        self.pending.append((self.play_end, raw))
        if self._timer is None:
            self._timer = call_at(self.loop, self.play_end, self._played)

    def _played(self) -> None:
        self._timer = None
        pending, now = self.pending, monotonic()
        while pending and pending[0][0] <= now:
            self._echo(pending.popleft()[1])
        if pending and not self.closed:
            self._timer = call_at(self.loop, pending[0][0], self._played)

    def _clear(self, now: float) -> None:
        self.clears.append(now)
        self.play_end = now
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self.pending:
            self._echo(self.pending.popleft()[1])
