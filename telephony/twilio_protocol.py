"""The Twilio Media Streams protocol, without I/O.

`parse()` turns one WebSocket text frame from Twilio into an event; the
`*_message()` builders return the text frames we send back. Field names and
types follow docs/twilio-media-streams.md §2–§3: numbers such
as sequenceNumber, chunk and timestamp arrive as *strings*, and we send only
`media`, `mark` and `clear`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from .errors import MalformedMessage

#: Largest text frame we accept from Twilio. A media frame is ~330 bytes; the
#: start frame grows with <Parameter>s (each < 500 chars). 64 KiB is generous
#: and matches what openai-agents-python uses.
MAX_MESSAGE_BYTES = 64 * 1024

_STREAM_SID = re.compile(r"MZ[0-9a-f]{32}")

# A media frame exactly as Twilio writes it (fixed key order, no escapes): a
# fullmatch here means json.loads would give the same values, at a quarter of the
# cost (50 of these per call-second). Anything else takes the JSON path below.
_MEDIA_FRAME = re.compile(
    r'\{"event":"media","sequenceNumber":"[0-9]+","media":\{"track":"(inbound|inbound_track)",'
    r'"chunk":"[0-9]+","timestamp":"([0-9]+)","payload":"([A-Za-z0-9+/=]+)"\},"streamSid":"([^"\\]*)"\}'
)


@dataclass(frozen=True)
class Connected:
    protocol: str
    version: str


@dataclass(frozen=True)
class StreamStarted:
    stream_sid: str
    call_sid: str
    account_sid: str
    custom_parameters: dict[str, str] = field(default_factory=dict)
    encoding: str = "audio/x-mulaw"
    sample_rate: int = 8000
    channels: int = 1


@dataclass(frozen=True)
class CallerAudio:
    stream_sid: str | None
    payload: str  # standard base64 of raw mu-law bytes
    timestamp_ms: int | None = None


@dataclass(frozen=True)
class MarkEchoed:
    stream_sid: str | None
    name: str


@dataclass(frozen=True)
class DtmfPressed:
    stream_sid: str | None
    digit: str


@dataclass(frozen=True)
class StreamStopped:
    stream_sid: str | None


@dataclass(frozen=True)
class UnknownEvent:
    """An event name we do not know. Twilio may add events; log and carry on."""

    name: str


TwilioEvent = Connected | StreamStarted | CallerAudio | MarkEchoed | DtmfPressed | StreamStopped | UnknownEvent


def parse(frame: str | bytes) -> TwilioEvent:
    """Parse one frame from Twilio, or raise `MalformedMessage` saying why."""
    if isinstance(frame, (bytes, bytearray)):
        raise MalformedMessage(f"binary frame of {len(frame)} bytes (Twilio sends only text frames)")
    if len(frame) > MAX_MESSAGE_BYTES:
        raise MalformedMessage(f"frame of {len(frame)} bytes exceeds the {MAX_MESSAGE_BYTES}-byte cap")
    fast = _MEDIA_FRAME.fullmatch(frame)
    if fast is not None:
        return CallerAudio(fast[4], fast[3], int(fast[2]))
    try:
        msg = json.loads(frame)
    except ValueError:
        raise MalformedMessage(f"not JSON: {frame[:60]!r}") from None
    if not isinstance(msg, dict):
        raise MalformedMessage(f"not a JSON object: {frame[:60]!r}")
    event = msg.get("event")
    if not isinstance(event, str):
        raise MalformedMessage("no 'event' field")
    sid = msg.get("streamSid")
    if sid is not None and not isinstance(sid, str):
        raise MalformedMessage("'streamSid' is not a string")

    if event == "media":
        media = _obj(msg, "media")
        payload = media.get("payload")
        if not isinstance(payload, str) or not payload:
            raise MalformedMessage("media without a payload")
        track = media.get("track", "inbound")
        if track not in ("inbound", "inbound_track"):
            raise MalformedMessage(f"media on unexpected track {track!r}")
        return CallerAudio(sid, payload, _int_or_none(media.get("timestamp")))
    if event == "mark":
        name = _obj(msg, "mark").get("name")
        if not isinstance(name, str):
            raise MalformedMessage("mark without a name")
        return MarkEchoed(sid, name)
    if event == "start":
        start = _obj(msg, "start")
        stream_sid = start.get("streamSid", sid)
        call_sid = start.get("callSid")
        if not isinstance(stream_sid, str) or not stream_sid:
            raise MalformedMessage("start without a streamSid")
        if not isinstance(call_sid, str) or not call_sid:
            raise MalformedMessage("start without a callSid")
        params = start.get("customParameters") or {}
        if not isinstance(params, dict):
            raise MalformedMessage("start.customParameters is not an object")
        fmt = start.get("mediaFormat") or {}
        if not isinstance(fmt, dict):
            raise MalformedMessage("start.mediaFormat is not an object")
        return StreamStarted(
            stream_sid=stream_sid,
            call_sid=call_sid,
            account_sid=str(start.get("accountSid", "")),
            custom_parameters={str(k): str(v) for k, v in params.items()},
            encoding=str(fmt.get("encoding", "audio/x-mulaw")),
            sample_rate=_int_or_none(fmt.get("sampleRate")) or 8000,
            channels=_int_or_none(fmt.get("channels")) or 1,
        )
    if event == "dtmf":
        digit = _obj(msg, "dtmf").get("digit")
        if not isinstance(digit, str) or len(digit) != 1 or digit not in "0123456789*#ABCD":
            raise MalformedMessage(f"dtmf with an invalid digit {digit!r}")
        return DtmfPressed(sid, digit)
    if event == "stop":
        return StreamStopped(sid)
    if event == "connected":
        return Connected(str(msg.get("protocol", "")), str(msg.get("version", "")))
    return UnknownEvent(event[:40])


def looks_like_stream_sid(sid: str) -> bool:
    """Legacy (2020 beta) streams used UUIDs: log those, do not reject them."""
    return bool(_STREAM_SID.fullmatch(sid))


class Outbound:
    """Builds the frames we send on one stream; the streamSid is encoded once."""

    __slots__ = ("_media_prefix", "_mark_prefix", "_clear")

    def __init__(self, stream_sid: str):
        sid = json.dumps(stream_sid)
        self._media_prefix = '{"event":"media","streamSid":' + sid + ',"media":{"payload":"'
        self._mark_prefix = '{"event":"mark","streamSid":' + sid + ',"mark":{"name":'
        self._clear = '{"event":"clear","streamSid":' + sid + "}"

    def media(self, payload_b64: str) -> str:
        # base64 never needs JSON escaping, so plain concatenation is exact.
        return self._media_prefix + payload_b64 + '"}}'

    def mark(self, name: str) -> str:
        return self._mark_prefix + json.dumps(name) + "}}"

    def clear(self) -> str:
        return self._clear


def _obj(msg: dict, key: str) -> dict:
    value = msg.get(key)
    if not isinstance(value, dict):
        raise MalformedMessage(f"{msg.get('event')} without a '{key}' object")
    return value


def _int_or_none(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None
