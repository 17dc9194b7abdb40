"""TwiML documents, built with twilio's own builders."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from twilio.twiml.voice_response import Connect, VoiceResponse

APOLOGY = "Sorry, our phone assistant is not available right now. Please call again later. Goodbye."
OVER_LIMIT = "Sorry, we are receiving too many calls from your number right now. Please try again later. Goodbye."


def connect_stream_twiml(
    stream_url: str, parameters: dict[str, str], action_url: str | None = None, status_url: str | None = None
) -> str:
    """Connect the call to our media stream.

    The stream URL carries no query string (Twilio refuses it, error 31920):
    per-call data travels in <Parameter>s. When our server closes the stream
    without the call being over, Twilio asks `action_url` what to do next: the
    server answers <Hangup/> after a goodbye, or an apology when we failed the
    caller. Without an action URL the apology after <Connect> plays instead.
    """
    response = VoiceResponse()
    connect = Connect(action=action_url, method="POST") if action_url else Connect()
    stream = connect.stream(url=stream_url, name="agent", **(
        {"status_callback": status_url, "status_callback_method": "POST"} if status_url else {}
    ))
    for name, value in parameters.items():
        if value:
            stream.parameter(name=name, value=value[:400])
    response.append(connect)
    response.say(APOLOGY)
    response.hangup()
    return str(response)


def dial_twiml(destination: str) -> str:
    """Cold transfer: dial a number (or a sip: URI) and leave the call to it."""
    response = VoiceResponse()
    if destination.lower().startswith("sip:"):
        dial = response.dial()
        dial.sip(destination)
    else:
        response.dial(destination)
    return str(response)


def hangup_twiml() -> str:
    response = VoiceResponse()
    response.hangup()
    return str(response)


BUSY = "Sorry, all of our lines are busy right now. Please call again in a few minutes. Goodbye."


def busy_twiml() -> str:
    response = VoiceResponse()
    response.say(BUSY)
    response.hangup()
    return str(response)


def apology_twiml() -> str:
    response = VoiceResponse()
    response.say(APOLOGY)
    response.hangup()
    return str(response)


def over_limit_twiml() -> str:
    """For a caller over their call limits: a short reason, then hang up (no stream, no Live minutes)."""
    response = VoiceResponse()
    response.say(OVER_LIMIT)
    response.hangup()
    return str(response)


class Next(enum.Enum):
    HANGUP = "hangup"
    APOLOGY = "apology"
    TRANSFER = "transfer"


@dataclass(frozen=True)
class AfterStream:
    """What Twilio should do once our server closed a call's stream (the `<Connect action>`
    request, `/stream-ended`), which may reach another instance: so it travels through the
    shared state as text (`encode`/`decode`), and anything unreadable means an apology."""

    next: Next
    destination: str | None = None  # the transfer's number or sip: URI

    @classmethod
    def of(cls, end) -> "AfterStream":
        """For a call that ended with this `actions.EndCall` (None: it never decided)."""
        if end is None or end.apologize:
            return cls(Next.APOLOGY)
        if end.transfer_to:
            return cls(Next.TRANSFER, end.transfer_to)
        return cls(Next.HANGUP) if end.hangup else cls(Next.APOLOGY)

    def encode(self) -> str:
        return f"{self.next.value}:{self.destination}" if self.destination else self.next.value

    @classmethod
    def decode(cls, text: str | None) -> "AfterStream":
        kind, _, destination = (text or "").partition(":")
        try:
            after = cls(Next(kind), destination or None)
        except ValueError:
            return cls(Next.APOLOGY)
        if (after.next is Next.TRANSFER) != bool(after.destination):
            return cls(Next.APOLOGY)
        return after

    def twiml(self) -> str:
        if self.next is Next.TRANSFER:
            assert self.destination is not None
            return dial_twiml(self.destination)
        return hangup_twiml() if self.next is Next.HANGUP else apology_twiml()
