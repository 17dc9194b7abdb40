"""Warm transfer: hold the caller, brief a person, connect them or bring the caller back.

Built the way Twilio's contact-centre guidance builds it, on `<Conference>`
(docs/contact-centre.md has the sequence):

1. once the agent's hand-off sentence has played, the caller's call is moved
   into a conference of its own, alone, hearing the hold message and music
   (`waitUrl`, /transfer/hold) while nobody who starts the conference is there;
2. the person is called from our number; when they answer, /transfer/brief
   reads them the summary the model wrote (`<Say>`) inside a `<Gather>`:
   press 1 or say yes to take the call, 2 or no to decline;
3. accepted: they join the conference, which starts (the music stops) and ends
   when either of them leaves, so every leg is hung up; the agent's stream
   ended at step 1;
4. declined, unanswered, busy, failed, or hung up during the briefing: the
   caller's call is redirected to a new `<Connect><Stream>`, whose bridge
   resumes the same Live session through the handle kept at step 1 and tells
   the model what happened (`return_opening`), so the agent says so and carries on;
5. the caller hanging up meanwhile (the conference's participant-leave) hangs
   up the person's call, ringing or briefed.

Every callback may reach any instance, so the transfer lives in the shared
state as a `Ticket` under the caller's CallSid, and its outcome is decided once
(`take_once`): whichever of decline, no answer, caller gone, accept comes first
wins, and the others see the decided outcome and do nothing but end their leg.
The URLs carry the ticket id (`?t=`), signed by Twilio with the URL.
"""

from __future__ import annotations

import enum
import json
import logging
import re
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any

from twilio.twiml.voice_response import Dial, Gather, VoiceResponse

from . import metrics
from .settings import Settings
from .shared_state import SharedState

log = logging.getLogger(__name__)

#: How long a transfer's ticket is kept: a conversation with the person can last long
#: after the outcome, and the conference callbacks keep referring to it.
TICKET_TTL_S = 4 * 3600.0
#: How long the person has to press or say something after the briefing.
DECIDE_TIMEOUT_S = 8
MAX_SUMMARY_CHARS = 600
HOLD_TEXT = "Please hold while I connect you."
AFTER_CONFERENCE_TEXT = "The call has ended. Thank you for calling. Goodbye."
ACCEPT_WORDS = re.compile(r"\b(yes|yeah|yep|sure|ok|okay|accept|take it|put (them|him|her) through|connect)\b", re.I)
DECLINE_WORDS = re.compile(r"\b(no|nope|decline|not now|can't|cannot|busy)\b", re.I)
RETURN_TEXT = (
    "(The transfer of this caller to {name} did not happen: {why}. The caller is back on the line with you "
    "and has been on hold. Tell them briefly, apologise, and offer to help them yourself or take a message; "
    "do not try the same transfer again unless they ask.)"
)
WHY = {
    "declined": "the person there could not take the call right now",
    "no-answer": "nobody answered",
    "busy": "the line was busy",
    "failed": "the call to them could not be placed",
    "canceled": "the call to them was cancelled",
    "human hung up": "the person hung up before taking the call",
    "could not call": "the call to them could not be placed",
}


class Outcome(enum.StrEnum):
    ACCEPTED = "accepted"
    DECLINED = "declined"
    NO_ANSWER = "no-answer"
    BUSY = "busy"
    FAILED = "failed"
    CANCELED = "canceled"
    HUMAN_HUNG_UP = "human hung up"
    CALLER_HUNG_UP = "caller hung up"
    NOT_PLACED = "could not call"

    @property
    def returns_caller(self) -> bool:
        return self not in (Outcome.ACCEPTED, Outcome.CALLER_HUNG_UP)


@dataclass
class Ticket:
    """One warm transfer, as every instance sees it (JSON in the shared state)."""

    id: str
    caller_sid: str
    caller: str | None
    called: str | None
    name: str
    destination: str
    summary: str
    handle: str | None  # the Live session's resumption handle, for the caller's return
    direction: str = "inbound"
    agent: str | None = None  # the agent the caller comes back to
    human_sid: str | None = None
    answered: bool = False
    outcome: str | None = None
    started_at: float = 0.0

    @property
    def conference(self) -> str:
        return f"transfer-{self.caller_sid}-{self.id}"

    def encode(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def decode(cls, text: str | None) -> "Ticket | None":
        if not text:
            return None
        try:
            return cls(**json.loads(text))
        except (ValueError, TypeError):
            log.warning("an unreadable transfer ticket was ignored")
            return None


def return_opening(ticket: Ticket) -> str:
    """What the resumed session is told when the caller comes back."""
    return RETURN_TEXT.format(name=ticket.name, why=WHY.get(ticket.outcome or "", "it could not be completed"))


def decision(digits: str | None, speech: str | None) -> bool:
    """True to accept. Only a clear yes (1, or words of consent) accepts: anything
    else, silence included, declines, so the caller is never kept waiting."""
    if digits:
        return digits.strip().startswith("1")
    if speech and ACCEPT_WORDS.search(speech) and not DECLINE_WORDS.search(speech):
        return True
    return False


# --------------------------------------------------------------------------- TwiML


def hold_twiml(ticket: Ticket, public_url: str) -> str:
    """The caller's new TwiML: alone in the conference, hearing the hold music, until the
    person starts it. The caller's leaving ends it (the person is hung up); after it, a goodbye."""
    response = VoiceResponse()
    dial = Dial()
    dial.conference(
        ticket.conference, start_conference_on_enter=False, end_conference_on_exit=True, beep=False,
        wait_url=f"{public_url}/transfer/hold?t={ticket.id}", wait_method="POST",
        status_callback=f"{public_url}/transfer/conference?t={ticket.id}", status_callback_method="POST",
        status_callback_event="start end join leave",
    )
    response.append(dial)
    response.say(AFTER_CONFERENCE_TEXT)
    response.hangup()
    return str(response)


def music_twiml(settings: Settings) -> str:
    response = VoiceResponse()
    response.say(HOLD_TEXT)
    response.play(settings.hold_music_url, loop=0)
    return str(response)


def brief_twiml(ticket: Ticket, public_url: str) -> str:
    summary = ticket.summary.strip() or "The assistant gave no summary."
    decide = f"{public_url}/transfer/decide?t={ticket.id}"
    response = VoiceResponse()
    gather = Gather(input="dtmf speech", num_digits=1, timeout=DECIDE_TIMEOUT_S, action=decide, method="POST",
                    speech_timeout="auto", hints="yes, no, accept, decline")
    gather.say(f"A caller is being transferred to {ticket.name} by the phone assistant. {summary} "
               "Press 1 or say yes to take the call. Press 2 or say no to decline.")
    response.append(gather)
    response.redirect(decide, method="POST")  # no answer: the decide URL without Digits declines
    return str(response)


def connect_human_twiml(ticket: Ticket) -> str:
    """The person joins: the conference starts, and ends when they leave; then their leg hangs up."""
    response = VoiceResponse()
    response.say("Connecting you now.")
    dial = Dial()
    dial.conference(ticket.conference, start_conference_on_enter=True, end_conference_on_exit=True, beep=False)
    response.append(dial)
    response.hangup()
    return str(response)


def goodbye_twiml(text: str) -> str:
    response = VoiceResponse()
    response.say(text)
    response.hangup()
    return str(response)


# --------------------------------------------------------------------------- the service


class WarmTransfers:
    """Starts warm transfers and answers their callbacks; one per server process.

    `return_caller(ticket)` is given by the app: it builds the caller's new
    `<Connect><Stream>` TwiML (a fresh stream token for the caller's CallSid).
    """

    def __init__(self, settings: Settings, shared: SharedState, rest: Any, recorder: Any, return_twiml):
        self.settings = settings
        self.shared = shared
        self.rest = rest
        self.recorder = recorder
        self._return_twiml = return_twiml

    @property
    def public_url(self) -> str:
        assert self.settings.public_url
        return self.settings.public_url

    async def ticket(self, ticket_id: str | None, caller_sid: str | None = None) -> Ticket | None:
        """The ticket `ticket_id`; from a callback that names only the ticket, `caller_sid` is looked up."""
        if not ticket_id or not re.fullmatch(r"[0-9a-f]{16}", ticket_id):
            return None
        sid = caller_sid or await self.shared.get_note("transfer_of", ticket_id)
        if not sid:
            return None
        ticket = Ticket.decode(await self.shared.get_note("transfer", sid))
        if ticket is None or ticket.id != ticket_id:
            return None
        # Facts learnt by other callbacks are notes of their own, so no two callbacks
        # ever rewrite the same record at once.
        ticket.human_sid = await self.shared.get_note("transfer_human", ticket_id) or ticket.human_sid
        ticket.answered = ticket.answered or await self.shared.get_note("transfer_answered", ticket_id) == "1"
        return ticket

    async def _save(self, ticket: Ticket) -> None:
        await self.shared.put_note("transfer", ticket.caller_sid, ticket.encode(), TICKET_TTL_S)

    async def start(self, *, caller_sid: str, caller: str | None, called: str | None, name: str, destination: str,
                    summary: str, handle: str | None, direction: str = "inbound",
                    agent: str | None = None) -> Ticket | None:
        """Hold the caller, then call the person. Runs on the instance whose stream ended.

        None when the caller could not be put on hold (Twilio refused the update): the
        stream's close then makes Twilio ask /stream-ended, which dials the team cold."""
        ticket = Ticket(secrets.token_hex(8), caller_sid, caller, called, name, destination,
                        (summary or "")[:MAX_SUMMARY_CHARS], handle, direction, agent, started_at=time.time())
        await self.shared.put_note("transfer_of", ticket.id, caller_sid, TICKET_TTL_S)
        await self._save(ticket)
        self._event(ticket, "transfer", {"target": name, "mode": "warm", "step": "holding"})
        try:
            await self.rest.calls(caller_sid).update_async(twiml=hold_twiml(ticket, self.public_url))
        except Exception as exc:
            from .twilio_rest import is_already_ended

            if is_already_ended(exc):
                await self._settle(ticket, Outcome.CALLER_HUNG_UP)
                return ticket
            log.warning("call %s: could not put the caller on hold for the transfer (%s); dialling %s cold",
                        caller_sid, exc, name)
            await self.shared.take_once("transfer_outcome", ticket.id, TICKET_TTL_S)  # no callback may act on it
            return None
        log.info("call %s on hold; calling %s for a warm transfer", caller_sid, name)
        try:
            human = await self.rest.calls.create_async(
                to=destination, from_=self.settings.twilio_phone_number,
                url=f"{self.public_url}/transfer/brief?t={ticket.id}", method="POST",
                status_callback=f"{self.public_url}/transfer/human-status?t={ticket.id}",
                status_callback_method="POST", status_callback_event=["completed"],
                timeout=self.settings.transfer_ring_s,
            )
        except Exception as exc:
            log.warning("call %s: could not call %s for the transfer (%s); the caller goes back to the agent",
                        caller_sid, name, exc)
            await self._settle(ticket, Outcome.NOT_PLACED)
            return ticket
        await self.shared.put_note("transfer_human", ticket.id, human.sid, TICKET_TTL_S)
        current = await self.ticket(ticket.id, caller_sid) or ticket
        if current.outcome == Outcome.CALLER_HUNG_UP:  # the caller left before the person was even called
            await self._hang_up(human.sid, answered=False)
        return current

    async def hold(self, ticket_id: str | None) -> str:
        return music_twiml(self.settings)

    async def brief(self, ticket_id: str | None) -> str:
        ticket = await self.ticket(ticket_id)
        if ticket is None:
            return goodbye_twiml("Sorry, this transfer is no longer available. Goodbye.")
        if ticket.outcome is not None:
            return goodbye_twiml("Sorry, the caller is no longer waiting. Goodbye.")
        await self.shared.put_note("transfer_answered", ticket.id, "1", TICKET_TTL_S)
        self._event(ticket, "transfer", {"target": ticket.name, "mode": "warm", "step": "briefing"})
        return brief_twiml(ticket, self.public_url)

    async def decide(self, ticket_id: str | None, digits: str | None, speech: str | None) -> str:
        ticket = await self.ticket(ticket_id)
        if ticket is None:
            return goodbye_twiml("Sorry, this transfer is no longer available. Goodbye.")
        accepted = decision(digits, speech)
        outcome = Outcome.ACCEPTED if accepted else Outcome.DECLINED
        if not await self._settle(ticket, outcome):
            return goodbye_twiml("Sorry, the caller is no longer waiting. Goodbye.")
        if accepted:
            return connect_human_twiml(ticket)
        return goodbye_twiml("All right, the assistant will let the caller know. Goodbye.")

    async def human_status(self, ticket_id: str | None, status: str) -> None:
        """The person's call ended (its final status callback)."""
        ticket = await self.ticket(ticket_id)
        if ticket is None:
            return
        outcome = {"no-answer": Outcome.NO_ANSWER, "busy": Outcome.BUSY, "failed": Outcome.FAILED,
                   "canceled": Outcome.CANCELED}.get(status)
        if outcome is None:  # completed: answered, then hung up; an outcome decided before stays
            outcome = Outcome.HUMAN_HUNG_UP
        await self._settle(ticket, outcome)

    async def conference(self, ticket_id: str | None, form: dict[str, str]) -> None:
        """Conference events: the caller leaving before an outcome is the caller hanging up."""
        ticket = await self.ticket(ticket_id)
        if ticket is None:
            return
        event = form.get("StatusCallbackEvent", "")
        if event == "participant-leave" and form.get("CallSid") == ticket.caller_sid:
            if await self._settle(ticket, Outcome.CALLER_HUNG_UP) and ticket.human_sid:
                await self._hang_up(ticket.human_sid, answered=ticket.answered)
        elif event == "conference-end":
            self._event(ticket, "transfer", {"target": ticket.name, "mode": "warm", "step": "conference ended",
                                             "reason": form.get("ReasonConferenceEnded", "")})

    async def _settle(self, ticket: Ticket, outcome: Outcome) -> bool:
        """Decide the outcome, once across every instance; False if it was already decided."""
        if not await self.shared.take_once("transfer_outcome", ticket.id, TICKET_TTL_S):
            return False
        current = await self.ticket(ticket.id, ticket.caller_sid) or ticket
        current.outcome = ticket.outcome = outcome.value
        await self._save(current)
        log.info("call %s: warm transfer to %s: %s", ticket.caller_sid, ticket.name, outcome.value)
        metrics.TRANSFERS.labels("warm", outcome.value).inc()
        self._event(ticket, "transfer", {"target": ticket.name, "mode": "warm", "outcome": outcome.value})
        if self.recorder is not None:
            self.recorder.call_outcome(ticket.caller_sid, transfer_target=ticket.name, transfer_outcome=outcome.value)
        if outcome.returns_caller:
            await self._return(current)
        return True

    async def _return(self, ticket: Ticket) -> None:
        try:
            await self.rest.calls(ticket.caller_sid).update_async(twiml=self._return_twiml(ticket))
            log.info("call %s goes back to the agent (%s)", ticket.caller_sid, ticket.outcome)
        except Exception as exc:
            log.warning("call %s could not be brought back to the agent (%s)", ticket.caller_sid, exc)

    async def _hang_up(self, call_sid: str, *, answered: bool) -> None:
        from .twilio_rest import is_already_ended

        try:
            await self.rest.calls(call_sid).update_async(status="completed" if answered else "canceled")
            log.info("hung up the transfer's call %s: the caller left", call_sid)
        except Exception as exc:
            if not is_already_ended(exc):
                log.warning("could not hang up the transfer's call %s (%s)", call_sid, exc)

    def _event(self, ticket: Ticket, kind: str, detail: dict) -> None:
        if self.recorder is not None:
            self.recorder.event(ticket.caller_sid, kind, detail, time.time())
