"""What a contact centre expects of the line: warm transfer and voicemail, played through the
Twilio stand-in as Twilio documents its callbacks (docs/contact-centre.md, docs/twilio-media-streams.md §9)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
import xml.etree.ElementTree as ET
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from telephony.app import create_app
from telephony.settings import Settings
from telephony.testing import CallSimulator, CallTool, RedisServer, Say, Script, ServerThread, Silence, TwilioStandIn
from telephony.testing.recordings import build_messages
from telephony.testing.twilio_signing import readdress, sign, stream_parameters, webhook_form
from telephony.transfer import decision

PUBLIC = "https://agent.example.test"
OUR_NUMBER = "+15559870000"
SALES = "+15551230001"
BILLING = "+15551230002"
CALLEE = "+15551234567"
API_TOKEN = "calls-api-token-0123456789"
VOICEMAIL = "Tell them their order A1001 has shipped and they can call us back any time."
SUMMARY = "Dana wants to change the delivery address of order A1001 to her office."

_serial = iter(range(1, 10_000))


def new_sid() -> str:
    return f"CA{next(_serial):04d}" + "c" * 28


def env_for(standin: TwilioStandIn, emulator, folder, **extra: str) -> dict[str, str]:
    return {
        **emulator.env(), **standin.env(), "PUBLIC_URL": PUBLIC, "TWILIO_PHONE_NUMBER": OUR_NUMBER,
        "TRANSFER_TARGETS": f"sales={SALES};warm,billing={BILLING}", "VOICEMAIL_MESSAGE": VOICEMAIL,
        "ALLOWED_DESTINATIONS": CALLEE, "CALLS_API_TOKEN": API_TOKEN, "STREAM_TOKEN_TTL_SECONDS": "300",
        "ORDERS_DB_PATH": str(folder / "orders.db"), "CALLS_DB_PATH": str(folder / "calls.db"),
        "LIVE_CONNECT_TIMEOUT_SECONDS": "3", **extra,
    }


@pytest.fixture(scope="module")
def centre(server, emulator, standin, tmp_path_factory):
    """A production-shaped server: verified Twilio traffic, REST through the stand-in."""
    folder = tmp_path_factory.mktemp("centre")
    settings = Settings.from_env(env_for(standin, emulator, folder))
    with ServerThread(create_app(settings)) as srv:
        srv.db = folder / "calls.db"
        yield srv


def silence(seconds: float) -> list[dict]:
    return build_messages([Silence(seconds)])


def play(srv, call_sid: str, parameters: dict[str, str], seconds: float = 8.0, standin=None):
    messages = readdress(silence(seconds), call_sid, standin.account_sid, parameters)
    headers = {"X-Twilio-Signature": sign("wss://agent.example.test/media-stream", None, standin.auth_token)}
    return asyncio.run(CallSimulator(srv.ws_url, messages, headers=headers, speed=1.0, linger=3.0).run())


def record_of(srv, call_sid: str) -> sqlite3.Row:
    srv.app.state.recorder.flush()
    conn = sqlite3.connect(srv.db)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute("SELECT * FROM calls WHERE call_sid = ?", (call_sid,)).fetchone()
    finally:
        conn.close()


def events_of(srv, call_sid: str, kind: str) -> list[str]:
    srv.app.state.recorder.flush()
    conn = sqlite3.connect(srv.db)
    try:
        return [r[0] for r in conn.execute("SELECT detail FROM events WHERE call_sid = ? AND kind = ? ORDER BY id",
                                           (call_sid, kind))]
    finally:
        conn.close()


# =========================================================================== warm transfer


SORRY_HZ = 520.0


def transfer_script(team: str = "sales") -> Script:
    return Script(greeting=[CallTool("transfer_call", {"destination": team, "summary": SUMMARY}),
                            Say(text="I'll put you through to sales now; you may hear some music.", seconds=0.8)],
                  replies=[], text_answer=[Say(text="Sorry, sales can't take your call right now. Can I help?",
                                               seconds=0.8, freq=SORRY_HZ)])


def incoming(srv, emulator, standin, script: Script) -> tuple[str, object]:
    """An inbound call whose agent starts a transfer at once; returns (CallSid, the simulated call)."""
    emulator.script = script
    call_sid = new_sid()
    form = webhook_form(call_sid, "+15557770001", OUR_NUMBER, standin.account_sid)
    r = httpx.post(f"{srv.http_url}/incoming-call", data=form,
                   headers={"X-Twilio-Signature": sign(f"{PUBLIC}/incoming-call", form, standin.auth_token)})
    assert r.status_code == 200, r.text
    return call_sid, play(srv, call_sid, stream_parameters(r.text), standin=standin)


def held(srv, emulator, standin) -> tuple[str, str, dict[str, str]]:
    """A caller put on hold for a warm transfer to sales: (caller CallSid, person's CallSid, conference)."""
    creates = len(standin.requests_of("calls.create"))
    call_sid, call = incoming(srv, emulator, standin, transfer_script())
    assert call.close_code == 1000 and call.agent_audio  # the hand-off sentence was heard first
    (hold,) = standin.wait_for("calls.update", call_sid=call_sid)
    conference = standin.conference(call_sid)
    create = standin.wait_for("calls.create", count=creates + 1)[-1]
    assert create.params["To"] == SALES and create.params["From"] == OUR_NUMBER
    assert create.params["Timeout"] == "25" and create.params["Url"].startswith(f"{PUBLIC}/transfer/brief?t=")
    human_sid = [sid for sid, c in standin.calls.items() if c["_params"].get("Url") == create.params["Url"]][0]
    return call_sid, human_sid, conference


def returned(standin, call_sid: str, updates: int = 2) -> dict[str, str]:
    """The caller's call redirected back to a stream: its parameters."""
    update = standin.wait_for("calls.update", count=updates, call_sid=call_sid)[updates - 1]
    return stream_parameters(update.params["Twiml"])


def decide_url(brief_twiml: str) -> str:
    gather = ET.fromstring(brief_twiml).find("./Gather")
    assert gather is not None, brief_twiml
    return gather.get("action")


def test_the_caller_waits_alone_with_music_in_a_conference_the_agent_has_left(centre, emulator, standin):
    call_sid, human_sid, conference = held(centre, emulator, standin)
    assert conference["startConferenceOnEnter"] == "false" and conference["endConferenceOnExit"] == "true"
    assert conference["statusCallbackEvent"] == "start end join leave"
    music = standin.hold_music(call_sid, via=centre.http_url)
    assert music.status == 200 and "<Say>Please hold" in music.body and '<Play loop="0">' in music.body
    assert standin.conference_event(call_sid, "participant-join", via=centre.http_url).status == 204
    # After the conference, the caller hears a goodbye and the call hangs up.
    twiml = standin.calls[call_sid]["_twiml"]
    assert twiml.endswith("</Dial><Say>The call has ended. Thank you for calling. Goodbye.</Say><Hangup /></Response>")
    standin.call_status(human_sid, "no-answer", via=centre.http_url)  # tidy: the caller goes back
    returned(standin, call_sid)


def test_an_accepted_transfer_briefs_the_person_then_joins_them_to_the_caller(centre, emulator, standin):
    call_sid, human_sid, conference = held(centre, emulator, standin)
    brief = standin.answer(human_sid, via=centre.http_url)
    assert brief.status == 200 and SUMMARY in brief.body and "Press 1 or say yes" in brief.body
    joined = standin.gather(decide_url(brief.body), human_sid, via=centre.http_url, digits="1")
    root = ET.fromstring(joined.body)
    human_conference = root.find("./Dial/Conference")
    assert human_conference.text == conference["name"]  # the caller's own conference
    assert human_conference.get("startConferenceOnEnter") == "true" and human_conference.get("endConferenceOnExit") == "true"
    assert root[-1].tag == "Hangup"  # when the conference ends, the person's leg hangs up too
    # The human hangs up first: the conference ends, the caller's TwiML says goodbye and hangs up.
    standin.conference_event(call_sid, "conference-end", via=centre.http_url, participant=human_sid)
    standin.call_status(human_sid, "completed", via=centre.http_url, duration_s=95)
    assert len(standin.requests_of("calls.update", call_sid)) == 1  # never sent back to the agent
    record = record_of(centre, call_sid)
    assert record["transfer_target"] == "sales" and record["transfer_outcome"] == "accepted"
    assert record["end_reason"] == "warm transfer to sales"
    assert any("conference ended" in e for e in events_of(centre, call_sid, "transfer"))


@pytest.mark.parametrize("how", ["keypad", "words", "silence"])
def test_a_declined_transfer_brings_the_caller_back_to_the_same_live_session(centre, emulator, standin, how):
    call_sid, human_sid, _ = held(centre, emulator, standin)
    first_session = emulator.sessions[-1]
    brief = standin.answer(human_sid, via=centre.http_url)
    answer = {"keypad": {"digits": "2"}, "words": {"speech": "No, not now, I'm with a customer."}, "silence": {}}[how]
    bye = standin.gather(decide_url(brief.body), human_sid, via=centre.http_url, **answer)
    assert "<Hangup />" in bye.body and "<Conference" not in bye.body
    parameters = returned(standin, call_sid)
    assert parameters["leg"].startswith("return-") and parameters["token"]
    sessions = len(emulator.sessions)
    back = play(centre, call_sid, parameters, seconds=3.5, standin=standin)
    assert back.spans and dominant_hz(back.spans[0][2]) == pytest.approx(SORRY_HZ, abs=10)  # the agent says so
    session = emulator.sessions[sessions]
    assert "resumed" in session.kinds()  # the same conversation, through its handle
    (handle,) = [detail for _, kind, detail in session.events if kind == "resumed"]
    assert handle.startswith(f"emu-{first_session.index}-")  # issued to the call's first session
    assert any("did not happen: the person there could not take the call" in t for t in session.texts)
    assert record_of(centre, call_sid)["transfer_outcome"] == "declined"


def dominant_hz(ulaw: bytes) -> float:
    import numpy as np

    from telephony.audio import ulaw_decode

    pcm = ulaw_decode(ulaw).astype(np.float64)
    spectrum = np.abs(np.fft.rfft(pcm * np.hanning(len(pcm))))
    return float(np.fft.rfftfreq(len(pcm), 1 / 8000)[np.argmax(spectrum)])


@pytest.mark.parametrize("status, why", [("no-answer", "nobody answered"), ("busy", "the line was busy"),
                                         ("failed", "could not be placed")])
def test_an_unanswered_busy_or_failed_call_to_the_person_brings_the_caller_back(centre, emulator, standin, status, why):
    call_sid, human_sid, _ = held(centre, emulator, standin)
    standin.call_status(human_sid, status, via=centre.http_url)
    parameters = returned(standin, call_sid)
    sessions = len(emulator.sessions)
    play(centre, call_sid, parameters, seconds=2.5, standin=standin)
    assert any(why in t for t in emulator.sessions[sessions].texts)
    assert record_of(centre, call_sid)["transfer_outcome"] == status


def test_the_person_hanging_up_during_the_briefing_brings_the_caller_back(centre, emulator, standin):
    call_sid, human_sid, _ = held(centre, emulator, standin)
    standin.answer(human_sid, via=centre.http_url)
    standin.call_status(human_sid, "completed", via=centre.http_url, duration_s=4)
    returned(standin, call_sid)
    assert record_of(centre, call_sid)["transfer_outcome"] == "human hung up"


@pytest.mark.parametrize("answered", [False, True])
def test_the_caller_hanging_up_during_the_transfer_hangs_up_the_person(centre, emulator, standin, answered):
    call_sid, human_sid, _ = held(centre, emulator, standin)
    if answered:
        standin.answer(human_sid, via=centre.http_url)
    standin.call_status(call_sid, "completed", via=centre.http_url)
    assert standin.conference_event(call_sid, "participant-leave", via=centre.http_url).status == 204
    (hang_up,) = standin.wait_for("calls.update", call_sid=human_sid)
    assert hang_up.params["Status"] == ("completed" if answered else "canceled")
    assert record_of(centre, call_sid)["transfer_outcome"] == "caller hung up"
    # The person's late answer or decision finds nobody waiting.
    late = standin.gather(f"{PUBLIC}/transfer/decide?t={ticket_of(standin, human_sid)}", human_sid,
                          via=centre.http_url, digits="1")
    assert "no longer waiting" in late.body and "<Conference" not in late.body


def ticket_of(standin, human_sid: str) -> str:
    return parse_qs(urlsplit(standin.calls[human_sid]["_params"]["Url"]).query)["t"][0]


def test_a_cold_target_still_dials_directly(centre, emulator, standin):
    call_sid, _ = incoming(centre, emulator, standin, transfer_script("billing"))
    (update,) = standin.wait_for("calls.update", call_sid=call_sid)
    assert update.params["Twiml"].endswith(f"<Dial>{BILLING}</Dial></Response>")
    record = record_of(centre, call_sid)
    assert (record["transfer_target"], record["transfer_outcome"]) == ("billing", "dialled")


def test_only_a_clear_yes_accepts():
    assert decision("1", None) and not decision("2", None) and not decision("", None)
    assert decision(None, "Yes, put them through") and decision(None, "sure")
    assert not decision(None, "no") and not decision(None, "not now") and not decision(None, "hmm what")
    assert not decision(None, None)


def test_metrics_count_transfers_by_mode_and_outcome(centre):
    text = httpx.get(f"{centre.http_url}/metrics", headers={"Authorization": f"Bearer {API_TOKEN}"}).text
    assert 'phone_transfers_total{mode="warm",outcome="accepted"}' in text
    assert 'phone_transfers_total{mode="cold",outcome="dialled"}' in text


# =========================================================================== voicemail


def outbound_call(srv, standin) -> tuple[str, dict[str, str]]:
    r = httpx.post(f"{srv.http_url}/outbound-call", json={"to": CALLEE, "purpose": "Order A1001 has shipped",
                                                           "machine_detection": True},
                   headers={"Authorization": f"Bearer {API_TOKEN}"})
    assert r.status_code == 201, r.text
    call_sid = r.json()["call_sid"]
    params = standin.calls[call_sid]["_params"]
    assert params["MachineDetection"] == "DetectMessageEnd" and params["AsyncAmd"] == "true"
    assert params["AsyncAmdStatusCallback"] == f"{PUBLIC}/twilio/amd"
    answer = standin.answer(call_sid, via=srv.http_url)  # no AnsweredBy: asynchronous
    parameters = stream_parameters(answer.body)
    assert parameters["amd"] == "pending"
    return call_sid, parameters


def in_background(srv, call_sid, parameters, standin, seconds: float = 8.0):
    result: dict = {}
    thread = threading.Thread(target=lambda: result.setdefault("call", play(srv, call_sid, parameters, seconds, standin)))
    thread.start()
    return thread, result


def wait_until_streaming(srv, emulator, call_sid: str, sessions: int) -> None:
    emulator.wait_for(lambda: any(b.call.call_sid == call_sid and b.call.link.value == "ready"
                                  for b in list(srv.app.state.active_calls)) and len(emulator.sessions) > sessions)


def verdict_test(srv, emulator, standin, verdict: str, verdict_at=None, seconds: float = 8.0):
    emulator.script = Script(greeting=[Say(text="Hello, this is Acme.", seconds=0.8)], replies=[])
    call_sid, parameters = outbound_call(srv, standin)
    sessions = len(emulator.sessions)
    thread, result = in_background(srv, call_sid, parameters, standin, seconds)
    wait_until_streaming(srv, emulator, call_sid, sessions)
    session = emulator.sessions[sessions]
    assert session.texts == []  # while detection runs, the agent says nothing
    sent_at = time.monotonic()
    assert standin.amd_verdict(call_sid, verdict, via=(verdict_at or srv).http_url).status == 204
    thread.join(timeout=30)
    return call_sid, session, result["call"], sent_at


def test_a_person_answering_hears_the_agent_once_the_verdict_says_human(centre, emulator, standin):
    call_sid, session, call, sent_at = verdict_test(centre, emulator, standin, "human", seconds=4.0)
    assert "Order A1001 has shipped" in session.texts[0]  # the outbound greeting, after the verdict
    assert call.spans and call.started_at + call.spans[0][0] >= sent_at
    record = record_of(centre, call_sid)
    assert (record["answered_by"], record["amd_outcome"]) == ("human", "human")
    assert standin.requests_of("calls.update", call_sid) == []  # the caller hung up, we did not


@pytest.mark.parametrize("verdict", ["machine_end_beep", "machine_end_silence"])
def test_a_machine_gets_the_voicemail_message_after_its_greeting_then_the_call_ends(centre, emulator, standin, verdict):
    call_sid, session, call, sent_at = verdict_test(centre, emulator, standin, verdict)
    assert len(session.texts) == 1 and VOICEMAIL in session.texts[0] and "answering machine" in session.texts[0]
    assert call.started_at + call.spans[0][0] >= sent_at  # nothing was said to the machine's greeting
    (hang_up,) = standin.wait_for("calls.update", call_sid=call_sid)
    assert hang_up.params["Status"] == "completed"
    assert hang_up.at >= call.started_at + call.spans[-1][1] - 0.05  # after the message was heard
    record = record_of(centre, call_sid)
    assert (record["answered_by"], record["amd_outcome"]) == (verdict, "message left")
    assert record["end_reason"] == "voicemail message left"


def test_a_fax_is_hung_up_on_without_a_word(centre, emulator, standin):
    call_sid, session, call, _ = verdict_test(centre, emulator, standin, "fax")
    (hang_up,) = standin.wait_for("calls.update", call_sid=call_sid)
    assert hang_up.params["Status"] == "completed"
    assert session.texts == [] and not call.agent_audio
    record = record_of(centre, call_sid)
    assert (record["answered_by"], record["amd_outcome"]) == ("fax", "machine")


@pytest.fixture(scope="module")
def pair(server, emulator, standin, tmp_path_factory):
    """Two instances of one deployment sharing Redis, each with its own records file."""
    with RedisServer() as redis:
        servers = []
        try:
            for name in ("a", "b"):
                folder = tmp_path_factory.mktemp(f"pair-{name}")
                srv = ServerThread(create_app(Settings.from_env(env_for(standin, emulator, folder, REDIS_URL=redis.url))))
                srv.__enter__()
                srv.db = folder / "calls.db"
                servers.append(srv)
            yield servers
        finally:
            for srv in servers:
                srv.__exit__(None, None, None)


def test_the_verdict_reaching_the_other_instance_reaches_the_call(pair, emulator, standin):
    a, b = pair
    call_sid, session, call, sent_at = verdict_test(a, emulator, standin, "machine_end_beep", verdict_at=b)
    assert VOICEMAIL in session.texts[0]
    (hang_up,) = standin.wait_for("calls.update", call_sid=call_sid)
    assert record_of(a, call_sid)["amd_outcome"] == "message left"


def test_metrics_count_answering_machine_verdicts(centre):
    text = httpx.get(f"{centre.http_url}/metrics", headers={"Authorization": f"Bearer {API_TOKEN}"}).text
    for verdict in ("human", "machine_end_beep", "machine_end_silence", "fax"):
        assert f'phone_outbound_answered_total{{answered_by="{verdict}"}}' in text


def test_when_twilio_refuses_to_hold_the_caller_the_team_is_dialled_cold(centre, emulator, standin):
    standin.fail_next("calls.update", status=500, code=20500)
    call_sid, call = incoming(centre, emulator, standin, transfer_script())
    assert call.close_code == 1000
    r = standin.post_webhook(f"{PUBLIC}/stream-ended", {"AccountSid": standin.account_sid, "CallSid": call_sid},
                             via=centre.http_url)
    assert r.body.endswith(f"<Dial>{SALES}</Dial></Response>")
    assert record_of(centre, call_sid)["transfer_outcome"] == "dialled"


def test_a_transfer_started_at_one_instance_is_declined_and_resumed_at_the_other(pair, emulator, standin):
    a, b = pair
    call_sid, human_sid, _ = held(a, emulator, standin)
    first_session = emulator.sessions[-1]
    brief = standin.answer(human_sid, via=b.http_url)  # every callback reaches the other instance
    assert SUMMARY in brief.body
    standin.gather(decide_url(brief.body), human_sid, via=b.http_url, digits="2")
    parameters = returned(standin, call_sid)
    sessions = len(emulator.sessions)
    back = play(b, call_sid, parameters, seconds=3.5, standin=standin)
    assert back.spans and dominant_hz(back.spans[0][2]) == pytest.approx(SORRY_HZ, abs=10)
    (handle,) = [detail for _, kind, detail in emulator.sessions[sessions].events if kind == "resumed"]
    assert handle.startswith(f"emu-{first_session.index}-")
    assert record_of(b, call_sid)["transfer_outcome"] == "declined"  # written where the outcome was decided
