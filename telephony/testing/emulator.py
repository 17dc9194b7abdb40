"""A local Gemini Live API emulator that the unmodified google-genai SDK can talk to.

`LiveEmulator` is a TLS WebSocket server on loopback that speaks the Live wire
protocol (docs/gemini-live.md §1-§8, §11), answers from a
`Script` and records everything it receives, so adapter tests and the
`telephony simulate` command can run a whole call without Google.

Point the SDK at it through the environment only, *before* `genai.Client()` is
built (the client reads the variables in its constructor)::

    with LiveEmulator(Script(replies=[Reply([Say("It ships tomorrow.")])])) as emulator:
        os.environ.update(emulator.env())      # base URL, CA file, NO_PROXY, API key
        os.environ.pop("GOOGLE_GENAI_USE_VERTEXAI", None)
        os.environ.pop("GOOGLE_GENAI_USE_ENTERPRISE", None)
        client = genai.Client(http_options=types.HttpOptions(api_version="v1beta"))
        ...                                   # client.aio.live.connect(...) now reaches us
        emulator.wait_for(lambda: emulator.sessions and emulator.sessions[0].closed)

`SSL_CERT_FILE` *replaces* the trust store with the emulator's self-signed
certificate, so only set it in tests and in the simulator.

The server runs in a daemon thread with its own event loop: any test, server
process or event loop can use it, and `wait_for()` polls from the caller's
thread. From async code, call it through `asyncio.to_thread` so the caller's
loop keeps serving its own sockets.

What the emulator does, like the real service:

- answers `setupComplete` to the setup (or never answers, closes, refuses: see
  `Script.setup`), and rejects resumption handles it never issued (close 1007);
- refuses a resume (close 1011) while an earlier socket of the same session is
  still open, as the service has been seen doing (docs/gemini-live.md §5): a client
  must close the old socket first;
- detects the caller's speech with an energy VAD on the 16 kHz input, honouring
  `silence_duration_ms`, and ``activityStart``/``activityEnd`` when automatic
  detection is disabled;
- interrupts its own turn when the caller starts speaking while the model is
  still "audible" (until the estimated client playback ends), unless the setup
  asks for ``NO_INTERRUPTION``;
- rejects unknown top-level client keys, bad JSON and bad base64 with close 1007.

Simplifications: transcriptions are always sent (whatever the setup asks);
texts after the greeting are recorded but get no answer unless `Script.text_answer`
says what to answer; the per-session reply index carries over to a resumed session.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import datetime
import ipaddress
import itertools
import json
import logging
import math
import re
import secrets
import shutil
import ssl
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any, Callable

import numpy as np
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

__all__ = [
    "CallTool",
    "EmulatedSession",
    "EnergyVad",
    "Fail",
    "LiveEmulator",
    "Reply",
    "Say",
    "Script",
    "tone_pcm",
]

logger = logging.getLogger(__name__)

OUTPUT_RATE = 24_000
"""The Live API always answers with 24 kHz s16le mono PCM (§6)."""

OUTPUT_MIME = f"audio/pcm;rate={OUTPUT_RATE}"

MAX_FRAME_BYTES = 1 << 20
"""The SDK's default `max_size`: a bigger server frame kills the session with 1006 (§4.6)."""

_MAX_CHUNK_BYTES = 512 * 1024
"""Raw PCM per inlineData frame: base64 (x4/3) plus JSON stays well under 1 MiB."""

_AUDIO_TOKENS_PER_SECOND = 32
"""Gemini counts 32 tokens per second of audio; used for realistic usageMetadata."""

_LIVE_PATH = re.compile(
    r"/ws/google\.ai\.generativelanguage\.[A-Za-z0-9]+"
    r"\.GenerativeService\.BidiGenerateContent(?:Constrained)?$"
)
"""The SDK's URL (§1): any version, any base-URL prefix, a leading `//` allowed."""

_VERTEX_PATH = re.compile(r"/ws/google\.cloud\.aiplatform\.v1(?:beta1)?\.LlmBidiService/BidiGenerateContent$")
"""The SDK's URL in Vertex AI mode (§12)."""

_VERTEX_MODEL = re.compile(r"(?:projects/([^/]+)/locations/([^/]+)/)?publishers/google/models/([^/]+)")
"""The setup model on Vertex: projects/P/locations/L/publishers/google/models/M, or
publishers/google/models/M in express mode (an API key, no project)."""

VERTEX_MODEL_FAMILIES = ("gemini-3.8-live", "gemini-live-2.5-flash")
"""Models the Vertex emulator serves; gemini-live-2.5-* not on `global` (§12)."""

_SETUP_MODES = ("ok", "never", "close", "http403")

_CLIENT_KEYS = {
    "setup": "setup",
    "realtime_input": "realtime_input",
    "realtimeInput": "realtime_input",
    "client_content": "client_content",
    "clientContent": "client_content",
    "tool_response": "tool_response",
    "toolResponse": "tool_response",
    "context_update": "context_update",
    "contextUpdate": "context_update",
}
"""Every top-level client key the service accepts, in both casings (§3, §11.5)."""


# --------------------------------------------------------------------------- script


@dataclass
class Say:
    """The agent speaks: `seconds` of a pure tone at `freq` (or explicit `audio`), with `text`
    as its output transcription, split in a few pieces sent alongside the audio."""

    text: str = ""
    seconds: float = 1.0
    freq: float = 440.0
    audio: bytes | None = None
    """Explicit 24 kHz s16le mono PCM to send instead of the tone."""

    def __post_init__(self) -> None:
        if self.audio is not None:
            if len(self.audio) % 2:
                raise ValueError(f"Say.audio must be whole 16-bit samples, got {len(self.audio)} bytes")
        else:
            if not self.seconds >= 0:
                raise ValueError(f"Say.seconds must be >= 0, got {self.seconds!r}")
            if not 0 < self.freq < OUTPUT_RATE / 2:
                raise ValueError(f"Say.freq must be in (0, {OUTPUT_RATE // 2}) Hz, got {self.freq!r}")

    def pcm(self) -> bytes:
        """The 24 kHz PCM this step sends."""
        if self.audio is not None:
            return bytes(self.audio)
        return tone_pcm(self.freq, self.seconds)


@dataclass
class CallTool:
    """The model calls a function and waits up to `wait` seconds for the response with the same id."""

    name: str
    args: dict = field(default_factory=dict)
    id: str | None = None
    """Defaults to ``fc-<n>``, n counting the calls of the session from 1."""
    wait: float = 15.0

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("CallTool.name must not be empty")
        if not isinstance(self.args, dict):
            raise ValueError(f"CallTool.args must be a dict, got {type(self.args).__name__}")


@dataclass
class Fail:
    """Misbehave: send a `raw` frame (a dict is JSON-encoded, a str is sent as is),
    then close the socket with `close_code` and `reason` if a code is given."""

    close_code: int | None = None
    reason: str = ""
    raw: str | dict | None = None
    drop: bool = False
    """Drop the TCP connection without a close frame (the client sees 1006)."""


Step = Say | CallTool | Fail


@dataclass
class Reply:
    """The emulator's answer to one caller utterance."""

    steps: list[Step] = field(default_factory=list)
    heard: str = ""
    """Sent as inputTranscription when the utterance ends (nothing is sent when empty)."""

    def __post_init__(self) -> None:
        _check_steps(self.steps, "Reply.steps")


def _default_greeting() -> list[Step]:
    return [Say(text="Hello, thanks for calling!", seconds=1.5)]


def _default_replies() -> list[Reply]:
    return [Reply(steps=[Say(text="Sure, I can help you with that.", seconds=2.0, freq=523.25)])]


@dataclass
class Script:
    """How the emulator behaves in the sessions opened while it is the emulator's `script`."""

    greeting: list[Step] = field(default_factory=_default_greeting)
    """Played as a turn when the first text (realtime text, or a client_content with
    turnComplete) arrives: the bridge asks for its greeting with a text prompt."""
    replies: list[Reply] = field(default_factory=_default_replies)
    """One per detected caller utterance, in order; the last one repeats once exhausted."""
    text_answer: list[Step] = field(default_factory=list)
    """Played as a turn for each text after the greeting (a prompt the model answers, e.g.
    why a caller came back to it); empty, the default: such texts get no answer."""
    setup: str = "ok"
    """"ok", "never" (no setupComplete), "close" (close with the code and reason below)
    or "http403" (refuse the WebSocket upgrade)."""
    setup_close_code: int = 1008
    setup_close_reason: str = "model not found"
    close_after_setup: int = 0
    """The first this many sessions opened under this script answer setupComplete and,
    in the same write, a close with `setup_close_code`: the client learns of both at
    once, so its first send (the greeting) finds the socket closed, before any read does."""
    close_after_first_message: bool = False
    """With `close_after_setup`: setupComplete goes alone, and the close follows once the
    client's first message has arrived. That send succeeded, so the client learns of the
    end by reading the close (or by a later send finding the socket closing): a model that
    fails just after it started, rather than a socket dead before anything was sent."""
    close_after_setup_spares: int = 0
    """The first this many sessions are served as usual before `close_after_setup` starts:
    a call that worked for a while, then sessions that fail at once."""
    sessions_set_up: int = field(default=0, init=False, repr=False, compare=False)
    """How many sessions have sent their setup under this script (what `close_after_setup_spares` counts)."""
    closed_after_setup: int = field(default=0, init=False, repr=False, compare=False)
    """How many sessions `close_after_setup` has closed so far."""
    refuse_resumption: int | None = None
    """Close code (1007 or 1008) with which a setup carrying a resumption handle is
    refused, even one this emulator issued: the handle expired 2 h after its session
    ended, or was made for another model (docs/gemini-live.md §5, §12). None accepts them."""
    refuse_resumption_reason: str = "session resumption handle is invalid or expired"
    audio_chunk_ms: int = 40
    """Audio per modelTurn frame."""
    pace: float = 2.0
    """Audio is emitted at `pace` x real time; 0 sends it as fast as possible and
    completes the turn at once instead of at the estimated end of playback."""
    interrupt_on_speech: bool = True
    turn_complete_after_interrupt: bool = True
    """End an interrupted turn with its turnComplete, as the service does; False plays a
    service that never sends it (the client must recover on its own)."""
    late_chunks_after_interrupt: int = 0
    """Audio chunks of the interrupted turn still sent after `interrupted` (the rest of the
    Say that was playing, continued as its tone if it runs out): the production service
    has been seen doing this (docs/gemini-live.md §12)."""
    transcript_during_late_audio: str = ""
    """If set, sent as the caller's inputTranscription halfway through those late chunks:
    transcription has no ordering with the model's output."""
    when_idle_fires: bool = False
    """What a WHEN_IDLE tool response does (the default scheduling of a NON_BLOCKING call,
    §8). False, as reported of the production service in voice calls: the model never
    speaks about it, the rest of the turn is dropped. True: it speaks once its audio so
    far has played. SILENT always drops the rest of the turn; INTERRUPT (or a response to
    a call not declared NON_BLOCKING) speaks at once."""
    send_usage: bool = True
    """usageMetadata after each turnComplete."""
    thoughts_tokens: int = 0
    """thoughtsTokenCount of each usageMetadata: billed as output, and left out of
    totalTokenCount, as 3.8 Live reports it (docs/gemini-live.md §12)."""
    tool_use_prompt_tokens: int = 0
    """toolUsePromptTokenCount of each usageMetadata (billed as input, on top of the prompt)."""
    cached_tokens: int = 0
    """cachedContentTokenCount of each usageMetadata: part of the prompt (capped at it),
    reported as TEXT in cacheTokensDetails."""
    resumption_updates: bool = True
    """sessionResumptionUpdate after each turnComplete, when the setup enabled resumption."""
    on_text: Callable[[str], list[Step]] | None = None
    """When set, every realtime text the client sends is answered with the steps it
    returns (instead of the greeting): a session used as a voice that says what it is told (a simulated
    caller reading its lines)."""

    def __post_init__(self) -> None:
        if self.setup not in _SETUP_MODES:
            raise ValueError(f"Script.setup must be one of {_SETUP_MODES}, got {self.setup!r}")
        if not self.pace >= 0:
            raise ValueError(f"Script.pace must be >= 0, got {self.pace!r}")
        if not self.audio_chunk_ms > 0:
            raise ValueError(f"Script.audio_chunk_ms must be > 0, got {self.audio_chunk_ms!r}")
        for name in ("thoughts_tokens", "tool_use_prompt_tokens", "cached_tokens"):
            if getattr(self, name) < 0:
                raise ValueError(f"Script.{name} must be >= 0, got {getattr(self, name)!r}")
        if self.late_chunks_after_interrupt < 0:
            raise ValueError(
                f"Script.late_chunks_after_interrupt must be >= 0, got {self.late_chunks_after_interrupt!r}"
            )
        _check_steps(self.greeting, "Script.greeting")
        _check_steps(self.text_answer, "Script.text_answer")
        for reply in self.replies:
            if not isinstance(reply, Reply):
                raise TypeError(f"Script.replies holds Reply objects, got {reply!r}")

    def reply(self, index: int) -> Reply:
        """The answer to the caller's utterance number `index` (0-based)."""
        if not self.replies:
            return _default_replies()[0]
        return self.replies[min(index, len(self.replies) - 1)]


def _check_steps(steps: list, where: str) -> None:
    for step in steps:
        if not isinstance(step, (Say, CallTool, Fail)):
            raise TypeError(f"{where} holds Say, CallTool or Fail steps, got {step!r}")


# --------------------------------------------------------------------------- audio


def tone_pcm(
    freq: float, seconds: float, rate: int = OUTPUT_RATE, amplitude: float = 0.3, fade_ms: float = 5.0
) -> bytes:
    """A pure sine tone as s16le PCM, with a short linear fade in and out so it starts
    and stops without clicks (a click would smear its spectrum)."""
    n = max(0, round(seconds * rate))
    t = np.arange(n) / rate
    x = amplitude * np.sin(2 * np.pi * freq * t)
    fade = min(round(rate * fade_ms / 1000), n // 2)
    if fade > 0:
        ramp = np.linspace(0.0, 1.0, fade, endpoint=False)
        x[:fade] *= ramp
        x[n - fade :] *= ramp[::-1]
    return np.round(x * 32767).astype("<i2").tobytes()


class EnergyVad:
    """Energy voice-activity detection over 20 ms windows; sans-I/O.

    Speech starts when the RMS stays above `threshold_dbfs` for `start_windows`
    consecutive windows (a click or a single loud window is not speech) and ends
    once it has stayed below for `silence_ms`. Each window's mean is removed first
    so a DC offset cannot read as speech. Times are positions in the audio stream
    (seconds of audio fed), never wall-clock, so the result does not depend on how
    fast the audio is sent or how it is chunked.
    """

    WINDOW_MS = 20

    def __init__(
        self, silence_ms: int = 500, *, threshold_dbfs: float = -35.0, start_windows: int = 3
    ) -> None:
        if silence_ms <= 0:
            raise ValueError(f"silence_ms must be > 0, got {silence_ms!r}")
        self.silence_ms = silence_ms
        self.threshold = 32768.0 * 10 ** (threshold_dbfs / 20)
        self.start_windows = start_windows
        self.end_windows = max(1, math.ceil(silence_ms / self.WINDOW_MS))
        self.speaking = False
        self.position = 0.0
        """Seconds of audio consumed (whole windows only)."""
        self._pending = bytearray()
        self._rate: int | None = None
        self._loud_run = 0
        self._quiet_run = 0

    def feed(self, pcm: bytes, rate: int = 16_000) -> list[tuple[str, float]]:
        """Consume s16le mono PCM; return ``("start"|"end", stream seconds)`` transitions."""
        if rate != self._rate:
            self._pending.clear()  # a partial window at another rate means nothing
            self._rate = rate
        self._pending += pcm
        window = rate * self.WINDOW_MS // 1000
        n_windows = len(self._pending) // (2 * window)
        if n_windows == 0:
            return []
        used = n_windows * window * 2
        x = np.frombuffer(bytes(self._pending[:used]), dtype="<i2").astype(np.float64)
        del self._pending[:used]
        x = x.reshape(n_windows, window)
        x -= x.mean(axis=1, keepdims=True)
        loud = np.sqrt((x * x).mean(axis=1)) > self.threshold
        return [t for is_loud in loud if (t := self._step(bool(is_loud), window / rate))]

    def _step(self, loud: bool, seconds: float) -> tuple[str, float] | None:
        self.position += seconds
        if not self.speaking:
            self._loud_run = self._loud_run + 1 if loud else 0
            if self._loud_run >= self.start_windows:
                self.speaking, self._quiet_run = True, 0
                return ("start", self.position)
            return None
        self._quiet_run = 0 if loud else self._quiet_run + 1
        if self._quiet_run >= self.end_windows:
            self.speaking, self._loud_run = False, 0
            return ("end", self.position)
        return None

    def flush(self) -> tuple[str, float] | None:
        """End an utterance in progress (the client signalled audioStreamEnd)."""
        self._pending.clear()
        self._loud_run = 0
        if self.speaking:
            self.speaking = False
            return ("end", self.position)
        return None


# --------------------------------------------------------------------------- certificate


def write_self_signed_cert(directory: str | Path, host: str = "127.0.0.1") -> tuple[str, str]:
    """Write a self-signed EC P-256 certificate for `host` and localhost; return (cert, key) paths.

    Hostname checks use the SubjectAlternativeName, not the CN, hence the SAN;
    `ca=True` lets the same certificate serve as its own trust anchor in SSL_CERT_FILE.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    alt_names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    try:
        alt_names.insert(0, x509.IPAddress(ipaddress.ip_address(host)))
    except ValueError:
        if host != "localhost":
            alt_names.append(x509.DNSName(host))
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory = Path(directory)
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return str(cert_path), str(key_path)


# --------------------------------------------------------------------------- wire helpers


class _ClientProtocolError(Exception):
    """The client sent something the real service would reject (it closes with 1007)."""


def _field(obj: dict, snake: str, default: Any = None) -> Any:
    """`obj[snake]` or its camelCase spelling: the SDK mixes both (§2, §11.5)."""
    if snake in obj:
        return obj[snake]
    head, *rest = snake.split("_")
    return obj.get(head + "".join(word.title() for word in rest), default)


def _object(value: Any, what: str) -> dict:
    """`value` if it is a JSON object, {} if absent; anything else is the client's error."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _ClientProtocolError(f"{what} must be an object, got {type(value).__name__}")
    return value


def _decode_b64(data: Any) -> bytes:
    """Decode URL-safe or standard base64, padded or not (the SDK sends URL-safe, §3)."""
    if not isinstance(data, str):
        raise _ClientProtocolError(f"base64 data must be a string, got {type(data).__name__}")
    try:
        return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
    except (binascii.Error, ValueError) as exc:
        raise _ClientProtocolError(f"invalid base64 data: {exc}") from None


def _pcm_rate(mime_type: str | None) -> int | None:
    """16000 for "audio/pcm;rate=16000"; None for a non-audio blob."""
    if not mime_type or not mime_type.startswith("audio/"):
        return None
    match = re.search(r"rate=(\d+)", mime_type)
    return int(match.group(1)) if match else 16_000


def _split_transcript(text: str, pieces: int = 3) -> list[str]:
    """Split `text` at word boundaries into up to `pieces` parts whose concatenation is `text`."""
    words = re.findall(r"\s*\S+\s*", text)
    if not words:
        return [text] if text else []
    pieces = min(pieces, len(words))
    bounds = [round(i * len(words) / pieces) for i in range(pieces + 1)]
    return ["".join(words[a:b]) for a, b in zip(bounds, bounds[1:])]


def _describe(predicate: Callable) -> str:
    code = getattr(predicate, "__code__", None)
    where = f" ({code.co_filename}:{code.co_firstlineno})" if code else ""
    return f"{getattr(predicate, '__qualname__', repr(predicate))}{where}"


# --------------------------------------------------------------------------- session


class EmulatedSession:
    """One WebSocket connection to the emulator: what it received, and live controls.

    Recorded attributes are appended from the emulator thread and may be read from
    any thread. `events` holds ``(loop time, kind, detail)`` tuples, in order;
    kinds: setup, resumed / resume_refused / resume_refused_open (the handle), caller_speech_start/end
    (detail: stream seconds), activity_start/end, audio_stream_end, text,
    context_update, turn_start (reply index or "greeting"), audio_out (bytes sent),
    late_audio_out (bytes of an interrupted turn sent after `interrupted`), tool_call, tool_response,
    tool_result_unspoken (the response's scheduling kept the model silent),
    tool_timeout, tool_cancelled, turn_cancelled, interrupted, turn_complete,
    go_away, protocol_error, error, closed (close code).
    """

    def __init__(self, index: int, connection: ServerConnection, script: Script, emulator: LiveEmulator):
        request = connection.request
        headers = request.headers if request is not None else Headers()
        self.index = index
        self.script = script
        self.path: str = request.path if request is not None else ""
        self.api_key: str = headers.get("x-goog-api-key") or _token(headers.get("authorization", ""))
        authorization = headers.get("authorization", "")
        self.bearer: str = authorization[len("Bearer "):] if authorization.startswith("Bearer ") else ""
        """The OAuth access token of a Vertex AI session (ADC); "" otherwise."""
        self.vertex: bool = emulator.vertex
        self.setup: dict = {}
        self.audio_in = bytearray()
        self.audio_chunks = 0
        self.audio_in_times: list[tuple[float, int, int]] = []
        """One ``(arrived, offset, nbytes)`` per audio blob: the loop time
        (``time.monotonic()`` but in a virtual-clock loop) at which
        the frame carrying it was read off the socket, and where its bytes lie in `audio_in`
        (latency benchmarks line caller audio up with the moment it reached "Live")."""
        self.texts: list[str] = []
        self.tool_responses: list[dict] = []
        self.events: list[tuple[float, str, object]] = []
        self.closed = False
        self.close_code: int | None = None
        self.close_reason: str = ""

        self._ws = connection
        self._emulator = emulator
        self._loop = asyncio.get_running_loop()
        self._vad = EnergyVad()
        self._auto_vad = True
        self._interrupts = script.interrupt_on_speech
        self._resumable = False
        self._greeted = False
        self._reply_index = 0
        self._turn: asyncio.Task | None = None
        self._turn_label: object = None
        self._turn_audio_s = 0.0
        self._playback_end = 0.0
        self._saying: tuple[Say, int] | None = None  # the Say in progress, and bytes of it sent
        self._pending_tools: dict[str, asyncio.Future] = {}
        self._call_ids = itertools.count(1)
        self._handles = itertools.count(1)
        self._input_audio_s = 0.0
        self._response_tokens = 0
        self._frame_received_at = 0.0
        self.lineage = index
        """The first session of the chain this one resumes (its own index when fresh)."""

    @property
    def socket_open(self) -> bool:
        """The socket is open: no close frame sent or received yet."""
        from websockets.protocol import State

        return self._ws.state is State.OPEN

    def __repr__(self) -> str:
        return f"<EmulatedSession #{self.index} closed={self.closed} events={len(self.events)}>"

    # -- reading what was recorded

    def kinds(self) -> list[str]:
        """The kinds of the recorded events, in order (handy in assertions)."""
        return [kind for _, kind, _ in list(self.events)]

    # -- controls, callable from any thread

    def send(self, frame: dict | str) -> concurrent.futures.Future:
        """Send any raw server frame (a dict is JSON-encoded). Returns a future; never blocks.

        The future's result is the loop time
        (``time.monotonic()`` but in a virtual-clock loop) at which the frame was handed to
        the socket, so a benchmark can time the frame from the moment it left "Live".
        """
        return self._schedule(self._send(frame))

    def close(self, code: int = 1000, reason: str = "") -> concurrent.futures.Future:
        """Close the socket with `code` and `reason`, as the service does on errors."""
        return self._schedule(self._close(code, reason))

    def go_away(self, time_left: str = "50s") -> concurrent.futures.Future:
        """Warn the client that the connection ends soon (§5); the socket stays open."""
        self._record("go_away", time_left)
        return self._schedule(self._send({"goAway": {"timeLeft": time_left}}))

    def _schedule(self, coro) -> concurrent.futures.Future:
        # Never wait here: a caller blocking its own loop on a close handshake whose
        # other end is that very loop would stall until the close timeout.
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    # -- internals (emulator loop only)

    def _record(self, kind: str, detail: object = None) -> None:
        self.events.append((self._loop.time(), kind, detail))

    async def _send(self, frame: dict | str) -> float:
        """Send one frame; return the monotonic time it was handed to the socket."""
        if isinstance(frame, dict):
            frame = json.dumps(frame, separators=(",", ":"))
        sent_at = self._loop.time()
        await self._ws.send(frame)
        return sent_at

    async def _close(self, code: int, reason: str) -> None:
        await self._ws.close(code, reason)

    async def run(self) -> None:
        """Serve the connection until it closes; never raises."""
        try:
            await self._handshake()
            if self.script.setup == "ok" and self._ws.close_code is None:
                await self._read_frames()
        except _ClientProtocolError as exc:
            self._record("protocol_error", str(exc))
            logger.warning("Live emulator session #%d: %s; closing with 1007", self.index, exc)
            await self._ws.close(1007, _truncate(str(exc)))
        except ConnectionClosed:
            pass
        except Exception as exc:  # a bug here must not take the server down
            self._record("error", repr(exc))
            logger.exception("Live emulator session #%d failed", self.index)
            await self._ws.close(1011, "internal error")
        finally:
            await self._cancel_turn()
            if self._ws.close_code is None:
                await self._ws.close()
            self.close_code = self._ws.close_code
            self.close_reason = self._ws.close_reason or ""
            self.closed = True
            self._record("closed", self.close_code)

    async def _close_while_reading(self, code: int, reason: str) -> None:
        """Close, reading on meanwhile: what the client sent before it saw the close would
        fill the receive queue, which stops reading, and its close reply would go unread."""
        closing = asyncio.create_task(self._ws.close(code, reason))
        try:
            async for _ in self._ws:
                pass
        except ConnectionClosed:
            pass
        await closing

    async def _handshake(self) -> None:
        frame = self._parse(await self._ws.recv())
        if list(frame) != ["setup"] or not isinstance(frame["setup"], dict):
            raise _ClientProtocolError(f"the first message must be a setup, got keys {sorted(frame)}")
        self.setup = frame["setup"]
        self._record("setup", self.setup.get("model"))
        if self._emulator.choose_script is not None:
            chosen = self._emulator.choose_script(self.setup)
            if chosen is not None:
                self.script = chosen
                self._interrupts = chosen.interrupt_on_speech
        self._configure(self.setup)
        if self.vertex and (refusal := self._emulator._vertex_model_refusal(str(self.setup.get("model")), self)):
            self._record("model_refused", self.setup.get("model"))
            await self._ws.close(1008, _truncate(refusal))
            return

        resumption = _field(self.setup, "session_resumption")
        if isinstance(resumption, dict):
            self._resumable = True
            handle = resumption.get("handle")
            if handle:
                if self.script.refuse_resumption is not None:
                    self._record("resume_refused", handle)
                    await self._ws.close(self.script.refuse_resumption, self.script.refuse_resumption_reason)
                    return
                origin = self._emulator._resume(handle)
                if origin is None:
                    raise _ClientProtocolError(f"unknown session resumption handle {handle!r}")
                self.lineage = origin.lineage
                still_open = self._emulator._open_sockets_of(self.lineage, but=self)
                if still_open:
                    self._record("resume_refused_open", handle)
                    await self._ws.close(1011, f"session {self.lineage} still has an open connection")
                    return
                self._greeted, self._reply_index = origin._greeted, origin._reply_index
                self._record("resumed", handle)

        mode = self.script.setup
        self.script.sessions_set_up += 1
        if mode == "never":
            await self._ws.wait_closed()
        elif mode == "close":
            await self._ws.close(self.script.setup_close_code, self.script.setup_close_reason)
        elif (self.script.sessions_set_up > self.script.close_after_setup_spares
              and self.script.closed_after_setup < self.script.close_after_setup):
            self.script.closed_after_setup += 1
            self._record("closed_after_setup", self.script.setup_close_code)
            if self.script.close_after_first_message:
                await self._send({"setupComplete": {}})
                await self._ws.recv()
                await self._close_while_reading(self.script.setup_close_code, self.script.setup_close_reason)
                return
            # One write for both frames, so no read of the client can fall between them.
            protocol = self._ws.protocol
            protocol.send_text(json.dumps({"setupComplete": {}}).encode())
            protocol.send_close(self.script.setup_close_code, self.script.setup_close_reason)
            self._ws.transport.write(b"".join(protocol.data_to_send()))
            await self._ws.wait_closed()
        else:
            await self._send({"setupComplete": {}})

    def _configure(self, setup: dict) -> None:
        config = _object(_field(setup, "realtime_input_config"), "realtimeInputConfig")
        detection = _object(_field(config, "automatic_activity_detection"), "automaticActivityDetection")
        silence = _field(detection, "silence_duration_ms")
        if silence is not None:
            try:
                self._vad = EnergyVad(int(silence))
            except (TypeError, ValueError):
                raise _ClientProtocolError(f"invalid silence_duration_ms {silence!r}") from None
        self._auto_vad = not _field(detection, "disabled", False)
        if _field(config, "activity_handling") == "NO_INTERRUPTION":
            self._interrupts = False

    def _parse(self, message: str | bytes) -> dict:
        try:
            frame = json.loads(message)
        except (ValueError, UnicodeDecodeError) as exc:
            raise _ClientProtocolError(f"invalid JSON payload: {exc}") from None
        if not isinstance(frame, dict):
            raise _ClientProtocolError(f"a client message must be a JSON object, got {type(frame).__name__}")
        return frame

    async def _read_frames(self) -> None:
        while True:
            message = await self._ws.recv()
            self._frame_received_at = self._loop.time()
            frame = self._parse(message)
            for key, body in frame.items():
                kind = _CLIENT_KEYS.get(key)
                if kind is None:
                    raise _ClientProtocolError(f"unknown name {key!r} in the client message")
                if kind == "setup":
                    raise _ClientProtocolError("setup may only be sent once, as the first message")
                if not isinstance(body, dict):
                    raise _ClientProtocolError(f"{key} must be an object")
                await getattr(self, f"_on_{kind}")(body)

    async def _on_realtime_input(self, body: dict) -> None:
        blobs = []
        if (audio := _field(body, "audio")) is not None:
            blobs.append(audio)
        blobs.extend(_field(body, "media_chunks") or [])
        for blob in blobs:
            await self._on_blob(blob)
        if (text := _field(body, "text")) is not None:
            await self._on_text(str(text))
        if _field(body, "audio_stream_end"):
            self._record("audio_stream_end")
            if self._auto_vad and (transition := self._vad.flush()):
                await self._on_speech_end(transition[1])
        if _field(body, "activity_start") is not None:
            self._record("activity_start")
            if not self._auto_vad:
                await self._on_speech_start(self._input_audio_s)
        if _field(body, "activity_end") is not None:
            self._record("activity_end")
            if not self._auto_vad:
                await self._on_speech_end(self._input_audio_s)

    async def _on_blob(self, blob: Any) -> None:
        if not isinstance(blob, dict):
            raise _ClientProtocolError("a realtime_input blob must be an object")
        rate = _pcm_rate(_field(blob, "mime_type"))
        if rate is None:
            return  # video frames and the like: accepted, not modelled
        pcm = _decode_b64(blob.get("data", ""))
        self.audio_in_times.append((self._frame_received_at, len(self.audio_in), len(pcm)))
        self.audio_in += pcm
        self.audio_chunks += 1
        self._input_audio_s += len(pcm) / (2 * rate)
        if not self._auto_vad:
            return
        for kind, at in self._vad.feed(pcm, rate):
            if kind == "start":
                await self._on_speech_start(at)
            else:
                await self._on_speech_end(at)

    async def _on_client_content(self, body: dict) -> None:
        turns = _field(body, "turns") or []
        if not isinstance(turns, list):
            raise _ClientProtocolError("client_content.turns must be a list of contents")
        for turn in turns:
            for part in _object(turn, "a client_content turn").get("parts") or []:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    self.texts.append(part["text"])
                    self._record("text", part["text"])
        if _field(body, "turn_complete"):
            await self._maybe_greet()

    async def _on_text(self, text: str) -> None:
        self.texts.append(text)
        self._record("text", text)
        if self.script.on_text is not None:
            self._greeted = True
            await self._start_turn(self.script.on_text(text), f"text-{len(self.texts)}")
            return
        if self._greeted and self.script.text_answer:
            await self._start_turn(self.script.text_answer, "text_answer")
            return
        await self._maybe_greet()

    async def _maybe_greet(self) -> None:
        if not self._greeted:
            self._greeted = True
            await self._start_turn(self.script.greeting, "greeting")

    async def _on_tool_response(self, body: dict) -> None:
        for response in _field(body, "function_responses") or []:
            if not isinstance(response, dict):
                raise _ClientProtocolError("a function response must be an object")
            entry = {"id": response.get("id"), "name": response.get("name"), "response": response.get("response")}
            for extra in ("scheduling", "will_continue"):
                if (value := _field(response, extra)) is not None:
                    entry[extra] = value
            if self.vertex and "will_continue" in entry:
                raise _ClientProtocolError('Invalid JSON payload received. Unknown name "willContinue" '
                                           'at \'tool_response.function_responses[0]\'')
            self.tool_responses.append(entry)
            self._record("tool_response", entry)
            waiter = self._pending_tools.get(entry["id"])
            if waiter is not None and not waiter.done():
                waiter.set_result(entry)
            elif waiter is None:
                logger.warning("Live emulator session #%d: tool response for unknown call id %r",
                               self.index, entry["id"])

    async def _on_context_update(self, body: dict) -> None:
        self._record("context_update", body)

    # -- speech and turns

    def _speaking(self) -> bool:
        """The model is audible until the client has played all audio sent so far."""
        return self._turn is not None and not self._turn.done() and self._loop.time() < self._playback_end

    async def _on_speech_start(self, at: float) -> None:
        self._record("caller_speech_start", at)
        if self._interrupts and self._speaking():
            label = self._turn_label
            await self._cancel_turn()
            self._playback_end = self._loop.time()  # the client drops its queued audio
            self._record("interrupted", label)
            await self._send({"serverContent": {"interrupted": True}})
            if self.script.late_chunks_after_interrupt:
                await self._late_audio()
            self._saying = None
            if self.script.turn_complete_after_interrupt:
                await self._complete_turn(label)

    async def _on_speech_end(self, at: float) -> None:
        self._record("caller_speech_end", at)
        index = self._reply_index
        self._reply_index += 1
        reply = self.script.reply(index)
        if reply.heard:
            await self._send({"serverContent": {"inputTranscription": {"text": reply.heard}}})
        await self._start_turn(reply.steps, index)

    async def _start_turn(self, steps: list[Step], label: object) -> None:
        """Run `steps` as the model's next turn. New input supersedes a turn still in
        progress (and cancels its pending tool calls), unless interruptions are off,
        in which case the new turn waits for it."""
        previous = self._turn if self._turn is not None and not self._turn.done() else None
        if previous is not None and self._interrupts:
            self._record("turn_cancelled", self._turn_label)
            await self._cancel_turn()
            previous = None
        self._turn = asyncio.create_task(self._run_turn(steps, label, after=previous))

    async def _cancel_turn(self) -> None:
        """Stop the current turn; its unanswered tool calls get a toolCallCancellation (§8)."""
        pending = [call_id for call_id, waiter in self._pending_tools.items() if not waiter.done()]
        turn = self._turn
        if turn is not None and not turn.done():
            turn.cancel()
            await asyncio.wait([turn])
        self._pending_tools.clear()
        if pending and not self._ws.close_code:
            self._record("tool_cancelled", pending)
            try:
                await self._send({"toolCallCancellation": {"ids": pending}})
            except ConnectionClosed:
                pass

    async def _run_turn(self, steps: list[Step], label: object, after: asyncio.Task | None) -> None:
        try:
            if after is not None:
                try:
                    await asyncio.wait([after])
                except asyncio.CancelledError:
                    after.cancel()  # nobody else tracks it any more
                    raise
            self._turn_label = label
            self._turn_audio_s = 0.0
            self._record("turn_start", label)
            for step in steps:
                if isinstance(step, Say):
                    await self._say(step)
                elif isinstance(step, CallTool):
                    if not await self._call_tool(step):
                        break  # the response's scheduling keeps the model silent
                elif await self._fail(step):
                    return
            await self._send({"serverContent": {"generationComplete": True}})
            if self.script.pace > 0:
                await asyncio.sleep(max(0.0, self._playback_end - self._loop.time()))
            await self._complete_turn(label)
        except ConnectionClosed:
            pass
        except Exception as exc:  # a bug here must not take the server down
            self._record("error", repr(exc))
            logger.exception("Live emulator session #%d: turn %r failed", self.index, label)
            await self._ws.close(1011, "internal error")

    def _chunk_bytes(self) -> int:
        return min(max(2, self.script.audio_chunk_ms * OUTPUT_RATE // 1000 * 2), _MAX_CHUNK_BYTES)

    async def _send_audio(self, chunk: bytes) -> None:
        await self._send({"serverContent": {"modelTurn": {"parts": [{"inlineData": {
            "mimeType": OUTPUT_MIME, "data": base64.b64encode(chunk).decode("ascii")}}]}}})

    async def _late_audio(self) -> None:
        """The interrupted turn goes on for a few chunks after `interrupted` (§12)."""
        count = self.script.late_chunks_after_interrupt
        say, offset = self._saying or (Say(seconds=0.0), 0)
        chunk_bytes = self._chunk_bytes()
        rest = say.pcm()[offset : offset + count * chunk_bytes]
        if len(rest) < count * chunk_bytes:  # continue the same voice
            freq = say.freq if say.audio is None else 440.0
            rest += tone_pcm(freq, (count * chunk_bytes - len(rest)) / (2 * OUTPUT_RATE))
        chunks = [rest[i : i + chunk_bytes] for i in range(0, len(rest), chunk_bytes)][:count]
        transcript = self.script.transcript_during_late_audio
        for i, chunk in enumerate(chunks):
            if transcript and i == len(chunks) // 2:
                await self._send({"serverContent": {"inputTranscription": {"text": transcript}}})
                transcript = ""
            await self._send_audio(chunk)
        if transcript:
            await self._send({"serverContent": {"inputTranscription": {"text": transcript}}})
        self._record("late_audio_out", sum(map(len, chunks)))

    async def _say(self, say: Say) -> None:
        pcm = say.pcm()
        chunk_bytes = self._chunk_bytes()
        chunks = [pcm[i : i + chunk_bytes] for i in range(0, len(pcm), chunk_bytes)]
        pieces = _split_transcript(say.text)
        # Piece k goes out just before chunk k * len(chunks) / len(pieces).
        due: dict[int, list[str]] = {}
        for k, piece in enumerate(pieces):
            due.setdefault(k * len(chunks) // len(pieces) if chunks else 0, []).append(piece)
        pace, start, emitted, sent_bytes = self.script.pace, self._loop.time(), 0.0, 0
        try:
            for i, chunk in enumerate(chunks or [b""]):
                for piece in due.get(i, []):
                    await self._send({"serverContent": {"outputTranscription": {"text": piece}}})
                if not chunk:
                    break
                if pace > 0:
                    await asyncio.sleep(max(0.0, start + emitted / pace - self._loop.time()))
                await self._send_audio(chunk)
                seconds = len(chunk) / (2 * OUTPUT_RATE)
                self._playback_end = max(self._playback_end, self._loop.time()) + seconds
                emitted += seconds
                self._turn_audio_s += seconds
                sent_bytes += len(chunk)
                self._saying = (say, sent_bytes)
                if pace == 0 and i % 16 == 15:
                    await asyncio.sleep(0)  # let the reader see barge-in and tool responses
        finally:
            self._record("audio_out", sent_bytes)

    def _behavior(self, name: str) -> str | None:
        """The `behavior` the setup declared for function `name`, if any."""
        for tool in _field(self.setup, "tools") or []:
            for declaration in _field(tool, "function_declarations") or [] if isinstance(tool, dict) else []:
                if isinstance(declaration, dict) and declaration.get("name") == name:
                    return declaration.get("behavior")
        return None

    async def _call_tool(self, step: CallTool) -> bool:
        """Call the function and wait for its response; return whether the model then
        goes on speaking, as the response's `scheduling` decides (§8)."""
        call_id = step.id or f"fc-{next(self._call_ids)}"
        waiter = self._loop.create_future()
        self._pending_tools[call_id] = waiter
        call = {"id": call_id, "name": step.name, "args": step.args}
        self._record("tool_call", call)
        try:
            await self._send({"toolCall": {"functionCalls": [call]}})
            try:
                async with asyncio.timeout(step.wait):
                    entry = await waiter
            except TimeoutError:
                self._record("tool_timeout", call_id)
                logger.info("Live emulator session #%d: no response to %s within %ss",
                            self.index, call_id, step.wait)
                return True
        finally:
            self._pending_tools.pop(call_id, None)
        scheduling = entry.get("scheduling")
        if scheduling is None and self._behavior(step.name) == "NON_BLOCKING":
            scheduling = "WHEN_IDLE"  # the service's default for a NON_BLOCKING call
        if scheduling == "SILENT" or (scheduling == "WHEN_IDLE" and not self.script.when_idle_fires):
            self._record("tool_result_unspoken", {"id": call_id, "scheduling": scheduling})
            return False
        if scheduling == "WHEN_IDLE" and self.script.pace > 0:
            await asyncio.sleep(max(0.0, self._playback_end - self._loop.time()))
        return True

    async def _fail(self, step: Fail) -> bool:
        if step.raw is not None:
            await self._send(step.raw)
        if step.drop:
            self._ws.transport.abort()
            return True
        if step.close_code is not None:
            await self._ws.close(step.close_code, _truncate(step.reason))
            return True
        return False

    async def _complete_turn(self, label: object) -> None:
        await self._send({"serverContent": {"turnComplete": True}})
        self._record("turn_complete", label)
        if self.script.send_usage:
            await self._send({"usageMetadata": self._usage()})
        if self.script.resumption_updates and self._resumable:
            handle = f"emu-{self.index}-{next(self._handles)}-{secrets.token_hex(4)}"
            self._emulator._issue(handle, self)
            await self._send({"sessionResumptionUpdate": {"newHandle": handle, "resumable": True}})

    def _usage(self) -> dict:
        """Plausible token counts: the prompt is the whole context so far, as the service counts it."""
        audio_in = round(self._input_audio_s * _AUDIO_TOKENS_PER_SECOND)
        text_in = (len(json.dumps(self.setup)) + sum(map(len, self.texts))) // 4
        response = round(self._turn_audio_s * _AUDIO_TOKENS_PER_SECOND)
        prompt = audio_in + text_in + self._response_tokens
        self._response_tokens += response
        script = self.script
        usage: dict[str, Any] = {
            "promptTokenCount": prompt,
            "responseTokenCount": response,
            "totalTokenCount": prompt + response + script.tool_use_prompt_tokens,
            "promptTokensDetails": [
                {"modality": "AUDIO", "tokenCount": audio_in + self._response_tokens - response},
                {"modality": "TEXT", "tokenCount": text_in},
            ],
            "responseTokensDetails": [{"modality": "AUDIO", "tokenCount": response}],
        }
        if script.thoughts_tokens:
            usage["thoughtsTokenCount"] = script.thoughts_tokens
        if script.tool_use_prompt_tokens:
            usage["toolUsePromptTokenCount"] = script.tool_use_prompt_tokens
            usage["toolUsePromptTokensDetails"] = [{"modality": "TEXT", "tokenCount": script.tool_use_prompt_tokens}]
        if cached := min(script.cached_tokens, text_in):
            usage["cachedContentTokenCount"] = cached
            usage["cacheTokensDetails"] = [{"modality": "TEXT", "tokenCount": cached}]
        if self.vertex:  # Vertex names the response as generateContent does (§12)
            usage["candidatesTokenCount"] = usage.pop("responseTokenCount")
            usage["candidatesTokensDetails"] = usage.pop("responseTokensDetails")
        return usage


def _truncate(reason: str, limit: int = 120) -> str:
    """A close reason fits in 123 bytes of UTF-8 (RFC 6455 §5.5)."""
    encoded = reason.encode()
    return reason if len(encoded) <= limit else encoded[: limit - 3].decode(errors="ignore") + "..."


def _token(authorization: str) -> str:
    """The ephemeral token from ``Authorization: Token auth_tokens/...`` (§1)."""
    return authorization[len("Token "):] if authorization.startswith("Token ") else ""


# --------------------------------------------------------------------------- server


class LiveEmulator:
    """A Gemini Live API emulator on a loopback TLS port, in its own thread.

    Start it (or use it as a context manager), export `env()` to the process that
    builds the `genai.Client`, and read `sessions` to see what the client sent.
    Errors inside the emulator are logged and recorded as ``("error", ...)``
    session events; with `raise_server_errors` (the default) leaving the `with`
    block raises them, so they reach the test.
    """

    def __init__(
        self,
        script: Script | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        raise_server_errors: bool = True,
        vertex: bool = False,
        project: str = "emulator-project",
        location: str = "us-central1",
        loop_factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop,
    ) -> None:
        self.loop_factory = loop_factory
        """Makes the emulator thread's event loop (e.g. a `virtual_clock.VirtualClockLoop`,
        which other components may then share through `loop`)."""
        self.vertex = vertex
        """Speak Vertex AI's Live dialect (its path, Bearer auth, model form, usage names)
        and refuse what only the Gemini API accepts, instead of the Gemini API's."""
        self.project = project
        self.location = location
        self.access_token = f"emulator-token-{secrets.token_hex(8)}"
        """The only Bearer token accepted in Vertex mode (the one in `adc_path`)."""
        self.adc_path = ""
        """An authorized-user credentials file carrying `access_token` until tomorrow, for
        GOOGLE_APPLICATION_CREDENTIALS: ADC then loads without a network round trip."""
        self.script = script if script is not None else Script()
        """Applied to every session opened from now on (assign a new one between calls)."""
        self.host = host
        self.port = port
        self._requested_port = port
        self.raise_server_errors = raise_server_errors
        self.sessions: list[EmulatedSession] = []
        self.choose_script: Callable[[dict], Script | None] | None = None
        """Picks a session's script from its setup (None keeps `script`): one emulator then
        plays different models, e.g. the agent and a simulated caller of a live scenario."""
        self.cert_path = ""
        self._key_path = ""
        self._tmpdir: str | None = None
        self._lock = threading.Lock()
        self._handles: dict[str, EmulatedSession] = {}
        self._scripts: weakref.WeakKeyDictionary[ServerConnection, Script] = weakref.WeakKeyDictionary()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Server | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None

    def __repr__(self) -> str:
        state = "running" if self._thread else "stopped"
        return f"<LiveEmulator {self.url} {state}, {len(self.sessions)} sessions>"

    @property
    def url(self) -> str:
        """The base URL to give the SDK, e.g. ``https://127.0.0.1:53187``."""
        return f"https://{self.host}:{self.port}"

    @property
    def key_path(self) -> str:
        """The certificate's private key, for another loopback server trusted by the same
        SSL_CERT_FILE (e.g. `TextModelEmulator`)."""
        return self._key_path

    def env(self, *, express: bool = False) -> dict[str, str]:
        """The environment a process needs to reach the emulator with an unmodified SDK.

        Gemini API mode: also unset GOOGLE_GENAI_USE_VERTEXAI and GOOGLE_GENAI_USE_ENTERPRISE
        there. Vertex mode: also unset GEMINI_API_KEY and GOOGLE_API_KEY (unless `express`,
        which gives an API key instead of a project and ADC).
        """
        if not self.cert_path:
            raise RuntimeError("start the LiveEmulator before asking for its environment")
        if self.vertex:
            common = {"GOOGLE_GENAI_USE_VERTEXAI": "true", "GOOGLE_VERTEX_BASE_URL": self.url,
                      "SSL_CERT_FILE": self.cert_path, "NO_PROXY": "127.0.0.1,localhost"}
            if express:
                return {**common, "GOOGLE_API_KEY": "emulator-express-key", "GOOGLE_CLOUD_LOCATION": self.location}
            return {**common, "GOOGLE_CLOUD_PROJECT": self.project, "GOOGLE_CLOUD_LOCATION": self.location,
                    "GOOGLE_APPLICATION_CREDENTIALS": self.adc_path}
        return {
            "GOOGLE_GEMINI_BASE_URL": self.url,
            "SSL_CERT_FILE": self.cert_path,
            "NO_PROXY": "127.0.0.1,localhost",
            "GEMINI_API_KEY": "emulator-key",
        }

    # -- lifecycle

    def start(self) -> LiveEmulator:
        """Generate the certificate, bind the port and serve; returns once it is listening."""
        if self._thread is not None:
            raise RuntimeError("this LiveEmulator is already running")
        self._tmpdir = tempfile.mkdtemp(prefix="live-emulator-")
        self.cert_path, self._key_path = write_self_signed_cert(self._tmpdir, self.host)
        self.adc_path = str(Path(self._tmpdir) / "adc.json")
        expiry = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=1)
        Path(self.adc_path).write_text(json.dumps({
            "type": "authorized_user", "client_id": "emulator", "client_secret": "emulator",
            "refresh_token": "emulator", "token": self.access_token, "quota_project_id": self.project,
            "expiry": expiry.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }))
        self._ready.clear()
        self._startup_error = None
        self._thread = threading.Thread(target=self._thread_main, name="live-emulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout=30):
            raise RuntimeError("the Live emulator did not start within 30 s")
        if self._startup_error is not None:
            self._thread.join()
            self._thread = None
            self._cleanup_files()
            raise RuntimeError(f"the Live emulator could not start: {self._startup_error!r}") from self._startup_error
        logger.info("Live emulator listening on %s", self.url)
        return self

    def stop(self) -> None:
        """Close every session (1001), stop the server and remove the certificate files."""
        if self._thread is None:
            return
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(timeout=15)
        if self._thread.is_alive():
            logger.warning("the Live emulator thread did not stop within 15 s")
        self._thread = None
        self._cleanup_files()

    def __enter__(self) -> LiveEmulator:
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.stop()
        if exc_type is None and self.raise_server_errors:
            self.check_errors()

    def server_errors(self) -> list[str]:
        """Every error recorded inside the emulator, as ``"session #n: repr"``."""
        return [
            f"session #{session.index}: {detail}"
            for session in list(self.sessions)
            for _, kind, detail in list(session.events)
            if kind == "error"
        ]

    def check_errors(self) -> None:
        """Raise AssertionError if the emulator recorded any internal error."""
        if errors := self.server_errors():
            raise AssertionError("the Live emulator failed:\n  " + "\n  ".join(errors))

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10) -> None:
        """Poll `predicate` from the calling thread until it is true, or raise AssertionError.

        A predicate raising LookupError or AttributeError counts as false, so
        ``lambda: emulator.sessions[0].closed`` may be used before the first session.
        """
        deadline = time.monotonic() + timeout
        failure: Exception | None = None
        while True:
            try:
                if predicate():
                    return
            except (LookupError, AttributeError) as exc:  # e.g. sessions[0] before any session
                failure = exc
            if time.monotonic() >= deadline:
                break
            time.sleep(0.01)
        lines = [f"condition {_describe(predicate)} still false after {timeout} s"
                 f"{f' (last raised {failure!r})' if failure else ''}; {len(self.sessions)} session(s)"]
        for session in list(self.sessions)[-3:]:
            tail = [(kind, detail) for _, kind, detail in list(session.events)[-12:]]
            lines.append(f"  #{session.index} closed={session.closed} last events: {tail}")
        raise AssertionError("\n".join(lines))

    # -- internals (emulator thread)

    def _cleanup_files(self) -> None:
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The emulator's event loop while it runs (sessions' times are its `time()`)."""
        return self._loop

    def _thread_main(self) -> None:
        loop = self.loop_factory()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        finally:
            loop.close()

    async def _serve(self) -> None:
        try:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self.cert_path, self._key_path)
            self._server = await serve(
                self._handle,
                self.host,
                self._requested_port,
                ssl=context,
                process_request=self._process_request,
                max_size=None,
                ping_interval=None,  # the service's keepalive is not part of the protocol we model
            )
            self.port = self._server.sockets[0].getsockname()[1]
            self._stopping = asyncio.Event()
        except BaseException as exc:
            self._startup_error = exc
            self._ready.set()
            return
        self._ready.set()
        await self._stopping.wait()
        self._server.close(close_connections=True)
        await self._server.wait_closed()

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if not (_VERTEX_PATH if self.vertex else _LIVE_PATH).search(path):
            logger.warning("Live emulator: 404 for %s", request.path)
            return connection.respond(HTTPStatus.NOT_FOUND, f"No Live API endpoint at {path}\n")
        if self.vertex:
            authorization = request.headers.get("authorization", "")
            if authorization != f"Bearer {self.access_token}" and not request.headers.get("x-goog-api-key"):
                return connection.respond(HTTPStatus.UNAUTHORIZED, "Request had invalid authentication credentials.\n")
        script = self.script
        if script.setup == "http403":
            return connection.respond(HTTPStatus.FORBIDDEN, "Method doesn't allow unregistered callers.\n")
        self._scripts[connection] = script
        return None

    async def _handle(self, connection: ServerConnection) -> None:
        script = self._scripts.pop(connection, None) or self.script
        with self._lock:
            session = EmulatedSession(len(self.sessions), connection, script, self)
            self.sessions.append(session)
        try:
            await session.run()
        except Exception as exc:  # one broken session must never stop the server
            session._record("error", repr(exc))
            logger.exception("Live emulator session #%d failed", session.index)
            if connection.close_code is None:
                await connection.close(1011, "internal error")

    def _vertex_model_refusal(self, model: str, session: EmulatedSession) -> str | None:
        """Why Vertex would refuse this setup model (closed 1008), or None to serve it."""
        match = _VERTEX_MODEL.fullmatch(model)
        if match is None:
            return f"Publisher model {model!r} is not a Vertex AI model name"
        project, location, name = match.groups()
        if project is None and not session.api_key:
            return "A model without a project needs an API key (express mode)"
        if project is not None and project != self.project:
            return f"Permission denied on resource project {project}"
        where = location or "global"
        if not name.startswith(VERTEX_MODEL_FAMILIES) or (name.startswith("gemini-live-2.5") and where == "global"):
            return f"Publisher Model `{name}` was not found in location {where}"
        return None

    def _issue(self, handle: str, session: EmulatedSession) -> None:
        with self._lock:
            self._handles[handle] = session

    def _resume(self, handle: str) -> EmulatedSession | None:
        with self._lock:
            return self._handles.get(handle)

    def _open_sockets_of(self, lineage: int, but: EmulatedSession) -> list[EmulatedSession]:
        with self._lock:
            return [s for s in self.sessions if s is not but and s.lineage == lineage and s.socket_open]
