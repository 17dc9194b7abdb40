"""TwiML documents, built with twilio's own builders.

What Twilio says for us (an apology, all lines busy, a caller over the limit) is the
answering agent's words in its language (`agents.Agent.messages`, `<Say language>`);
without an agent, the English defaults below.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from twilio.twiml.voice_response import Connect, VoiceResponse

#: Said before the next stream of a call whose instance stopped mid-call (docs/deploying.md).
ONE_MOMENT = "One moment, please."
APOLOGY = "Sorry, our phone assistant is not available right now. Please call again later. Goodbye."
OVER_LIMIT = "Sorry, we are receiving too many calls from your number right now. Please try again later. Goodbye."


def _say(response: VoiceResponse, which: str, default: str, agent: Any | None) -> None:
    """`<Say>` the agent's message `which` in its language and voice, or the English default."""
    if agent is None:
        response.say(default)
        return
    attrs = {}
    if agent.say_language:
        attrs["language"] = agent.say_language
    if agent.say_voice:
        attrs["voice"] = agent.say_voice
    response.say(getattr(agent.messages, which), **attrs)


def connect_stream_twiml(
    stream_url: str, parameters: dict[str, str], action_url: str | None = None, status_url: str | None = None,
    agent: Any | None = None, say_first: str | None = None,
) -> str:
    """Connect the call to our media stream.

    The stream URL carries no query string (Twilio refuses it, error 31920):
    per-call data travels in <Parameter>s. When our server closes the stream
    without the call being over, Twilio asks `action_url` what to do next: the
    server answers <Hangup/> after a goodbye, or an apology when we failed the
    caller. Without an action URL the apology after <Connect> plays instead.
    `say_first` is said before the stream opens (a call carried on after a crash:
    the caller hears it while the new instance waits to own the call); it is English,
    so an agent speaking another language gets the silence instead.
    """
    response = VoiceResponse()
    if say_first and (agent is None or not agent.say_language or agent.say_language.lower().startswith("en")):
        _say(response, "", say_first, None)
    connect = Connect(action=action_url, method="POST") if action_url else Connect()
    stream = connect.stream(url=stream_url, name="agent", **(
        {"status_callback": status_url, "status_callback_method": "POST"} if status_url else {}
    ))
    for name, value in parameters.items():
        if value:
            stream.parameter(name=name, value=value[:400])
    response.append(connect)
    _say(response, "unavailable", APOLOGY, agent)
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


def busy_twiml(agent: Any | None = None) -> str:
    response = VoiceResponse()
    _say(response, "busy", BUSY, agent)
    response.hangup()
    return str(response)


def apology_twiml(agent: Any | None = None) -> str:
    response = VoiceResponse()
    _say(response, "unavailable", APOLOGY, agent)
    response.hangup()
    return str(response)


def over_limit_twiml(agent: Any | None = None) -> str:
    """For a caller over their call limits: a short reason, then hang up (no stream, no Live minutes)."""
    response = VoiceResponse()
    _say(response, "over_limit", OVER_LIMIT, agent)
    response.hangup()
    return str(response)


class Next(enum.Enum):
    HANGUP = "hangup"
    APOLOGY = "apology"
    TRANSFER = "transfer"
    MOVE = "move"  # a new stream, to whichever instance the load balancer picks


@dataclass(frozen=True)
class AfterStream:
    """What Twilio should do once our server closed a call's stream (the `<Connect action>`
    request, `/stream-ended`), which may reach another instance: so it travels through the
    shared state as text (`encode`/`decode`), and anything unreadable means an apology.
    It names the call's agent, so an apology is said in that agent's language."""

    next: Next
    destination: str | None = None  # the transfer's number or sip: URI
    agent: str | None = None  # the agent's name (agents.py)

    @classmethod
    def of(cls, end, agent: str | None = None) -> "AfterStream":
        """For a call that ended with this `actions.EndCall` (None: it never decided)."""
        if end is None or end.apologize:
            return cls(Next.APOLOGY, agent=agent)
        if getattr(end, "move", False):
            return cls(Next.MOVE, agent=agent)
        if end.transfer_to:
            return cls(Next.TRANSFER, end.transfer_to, agent=agent)
        return cls(Next.HANGUP, agent=agent) if end.hangup else cls(Next.APOLOGY, agent=agent)

    def encode(self) -> str:
        text = f"{self.next.value}:{self.destination}" if self.destination else self.next.value
        return f"{text}\t{self.agent}" if self.agent else text

    @classmethod
    def decode(cls, text: str | None) -> "AfterStream":
        text, _, agent = (text or "").partition("\t")
        kind, _, destination = text.partition(":")
        try:
            after = cls(Next(kind), destination or None, agent or None)
        except ValueError:
            return cls(Next.APOLOGY, agent=agent or None)
        if (after.next is Next.TRANSFER) != bool(after.destination):
            return cls(Next.APOLOGY, agent=agent or None)
        return after

    def twiml(self, agent: Any | None = None) -> str:
        """`agent`: the `agents.Agent` named by `self.agent`, whose words an apology uses.
        Every answer but a move (whose new stream needs a token: routes_twilio)."""
        if self.next is Next.TRANSFER:
            assert self.destination is not None
            return dial_twiml(self.destination)
        return hangup_twiml() if self.next is Next.HANGUP else apology_twiml(agent)
