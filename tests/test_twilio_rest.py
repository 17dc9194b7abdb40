"""Twilio's REST API, outbound calls and number setup, against a stand-in for api.twilio.com.

twilio's real client sends its real requests (path, form, Basic auth) to
`TwilioStandIn` through TWILIO_API_BASE_URL, so the tests read exactly what Twilio
would receive. Webhooks are signed with twilio's own RequestValidator for the public
URL and delivered to the loopback server, as a tunnel would; streams go through the
same Gatekeeper checks as inbound calls and reach the session's Live emulator.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import socket
import xml.etree.ElementTree as ET
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from twilio.base.exceptions import TwilioRestException
from twilio.request_validator import RequestValidator

from telephony.app import create_app
from telephony.cli import main
from telephony.security import Rejected
from telephony.settings import Settings
from telephony.testing import CallSimulator, Say, Script, ServerThread, TwilioStandIn, read_recording
from telephony.number_setup import check_health
from telephony.outbound import OutboundRefs, OutboundRequest, parse_outbound_request
from telephony.twilio_rest import close_rest_client, is_already_ended, make_rest_client, rebase_url

FIXTURES = Path(__file__).parent / "fixtures"
PUBLIC = "https://agent.example.test"
STREAM_URL = "wss://agent.example.test/media-stream"
OUR_NUMBER = "+15559870000"
CALLEE = "+15551234567"
OTHER = "+15557654321"  # not on ALLOWED_DESTINATIONS
API_TOKEN = "calls-api-token-0123456789"

_numbers = itertools.count(5550100)


def fresh_number() -> str:
    return f"+1555{next(_numbers):07d}"


class FakeClock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def settings_for(standin: TwilioStandIn, **env: str) -> Settings:
    return Settings.from_env({"GEMINI_API_KEY": "test-api-key-123", **standin.env(), **env})


def run(coro):
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def outbound(server, emulator, standin, tmp_path_factory):
    """A real server that places calls through the stand-in; `server` first, for the SDK's environment."""
    db = tmp_path_factory.mktemp("outbound-db")
    env = {
        **emulator.env(), **standin.env(),
        "PUBLIC_URL": PUBLIC, "TWILIO_PHONE_NUMBER": OUR_NUMBER, "ALLOWED_DESTINATIONS": f"{CALLEE},sip:desk@example.com",
        "CALLS_API_TOKEN": API_TOKEN, "ORDERS_DB_PATH": str(db / "orders.db"), "CALLS_DB_PATH": str(db / "calls.db"),
        "LIVE_CONNECT_TIMEOUT_SECONDS": "2", "TOOL_TIMEOUT_SECONDS": "2",
    }
    settings = Settings.from_env(env)
    with ServerThread(create_app(settings)) as srv:
        srv.settings = settings
        yield srv


def place(srv: ServerThread, body: object, token: str | None = API_TOKEN) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{srv.http_url}/outbound-call", content=content,
                      headers={**headers, "Content-Type": "application/json"})


def stream_of(twiml: str) -> tuple[str, dict[str, str]]:
    stream = ET.fromstring(twiml).find("./Connect/Stream")
    assert stream is not None, twiml
    return stream.get("url"), {p.get("name"): p.get("value") for p in stream.findall("Parameter")}


def placed_call(standin: TwilioStandIn, srv: ServerThread, **body) -> str:
    before = len(standin.requests_of("calls.create"))
    r = place(srv, {"to": CALLEE, **body})
    assert r.status_code == 201, r.text
    assert len(standin.requests_of("calls.create")) == before + 1
    return r.json()["call_sid"]


def signed_post(standin: TwilioStandIn, srv: ServerThread, url: str, form: dict[str, str],
                token: str | None = None) -> httpx.Response:
    signature = RequestValidator(token or standin.auth_token).compute_signature(url, form)
    parts = urlsplit(url)
    return httpx.post(f"{srv.http_url}{parts.path}?{parts.query}", data=form, headers={"X-Twilio-Signature": signature})


def answer_form(standin: TwilioStandIn, call_sid: str, to: str = CALLEE) -> dict[str, str]:
    return {"AccountSid": standin.account_sid, "ApiVersion": "2010-04-01", "CallSid": call_sid,
            "CallStatus": "in-progress", "Direction": "outbound-api", "From": OUR_NUMBER, "To": to}


# =========================================================================== the REST client


class TestTheRestClient:
    def test_requests_go_to_the_configured_base_url_as_twilio_would_get_them(self, standin):
        settings = settings_for(standin)
        call_sid = "CA" + "ab" * 16

        async def hang_up():
            client = make_rest_client(settings)
            try:
                return await client.calls(call_sid).update_async(status="completed")
            finally:
                await close_rest_client(client)

        call = run(hang_up())
        assert call.status == "completed"
        [request] = standin.requests_of("calls.update", call_sid=call_sid)
        assert request.method == "POST"
        assert request.path == f"/2010-04-01/Accounts/{standin.account_sid}/Calls/{call_sid}.json"
        assert request.content_type == "application/x-www-form-urlencoded"
        assert request.auth == (standin.account_sid, standin.auth_token)
        assert request.pairs == (("Status", "completed"),)

    def test_a_live_call_can_be_redirected_to_twiml_as_the_bridge_does(self, standin):
        settings = settings_for(standin)
        call_sid = "CA" + "cd" * 16
        twiml = "<Response><Say>Sorry.</Say><Hangup/></Response>"

        async def redirect():
            client = make_rest_client(settings)
            try:
                await client.calls(call_sid).update_async(twiml=twiml)
            finally:
                await close_rest_client(client)

        run(redirect())
        [request] = standin.requests_of("calls.update", call_sid=call_sid)
        assert request.params == {"Twiml": twiml} and request.status == 200

    def test_without_credentials_there_is_no_client(self):
        assert make_rest_client(Settings.from_env({"GEMINI_API_KEY": "test-api-key-123"})) is None

    def test_a_call_that_already_ended_answers_20404_which_counts_as_ended(self, standin):
        settings = settings_for(standin)
        call_sid = "CA" + "ef" * 16
        standin.end_call(call_sid)

        async def hang_up():
            client = make_rest_client(settings)
            try:
                await client.calls(call_sid).update_async(status="completed")
            finally:
                await close_rest_client(client)

        with pytest.raises(TwilioRestException) as caught:
            run(hang_up())
        assert caught.value.status == 404 and caught.value.code == 20404
        assert is_already_ended(caught.value)
        assert standin.requests_of("calls.update", call_sid=call_sid)[-1].status == 404

    def test_other_errors_are_not_taken_for_an_ended_call(self, standin):
        settings = settings_for(standin)
        standin.fail_next("calls.update", 500, 20500, "Internal Server Error")

        async def hang_up():
            client = make_rest_client(settings)
            try:
                await client.calls("CA" + "12" * 16).update_async(status="completed")
            finally:
                await close_rest_client(client)

        with pytest.raises(TwilioRestException) as caught:
            run(hang_up())
        assert caught.value.code == 20500 and not is_already_ended(caught.value)
        assert not is_already_ended(ValueError("20404"))

    def test_wrong_credentials_are_refused_like_twilio_does(self, standin):
        settings = settings_for(standin, TWILIO_AUTH_TOKEN="f" * 32)

        async def fetch():
            client = make_rest_client(settings)
            try:
                await client.api.v2010.accounts(standin.account_sid).fetch_async()
            finally:
                await close_rest_client(client)

        with pytest.raises(TwilioRestException) as caught:
            run(fetch())
        assert caught.value.status == 401 and caught.value.code == 20003

    def test_rebasing_keeps_the_path_and_query(self):
        url = "https://api.twilio.com/2010-04-01/Accounts/AC1/IncomingPhoneNumbers.json?PhoneNumber=%2B1"
        assert rebase_url(url, "http://127.0.0.1:9") == \
            "http://127.0.0.1:9/2010-04-01/Accounts/AC1/IncomingPhoneNumbers.json?PhoneNumber=%2B1"
        assert rebase_url(url, "http://proxy.test/twilio/").startswith("http://proxy.test/twilio/2010-04-01/")
        assert rebase_url(url, None) == url


# =========================================================================== POST /outbound-call


class TestTheOutboundCallApi:
    def test_is_disabled_without_a_calls_api_token(self, server):
        r = httpx.post(f"{server.http_url}/outbound-call", json={"to": CALLEE})
        assert r.status_code == 404

    @pytest.mark.parametrize("token", [None, "wrong-token-0123456789"])
    def test_refuses_a_missing_or_wrong_token_with_401(self, outbound, standin, token):
        before = len(standin.requests)
        r = place(outbound, {"to": CALLEE}, token=token)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert len(standin.requests) == before

    def test_creates_the_call_twilio_would_get(self, outbound, standin):
        call_sid = placed_call(standin, outbound, purpose="Remind Maria that order A1001 arrives tomorrow")
        [request] = [r for r in standin.requests_of("calls.create") if r.status == 201 and
                     standin.calls[call_sid]["_params"] == r.params]
        assert request.path == f"/2010-04-01/Accounts/{standin.account_sid}/Calls.json"
        assert request.auth == (standin.account_sid, standin.auth_token)
        assert request.params["To"] == CALLEE and request.params["From"] == OUR_NUMBER
        assert request.params["Method"] == "POST"
        url = urlsplit(request.params["Url"])
        assert f"{url.scheme}://{url.netloc}{url.path}" == f"{PUBLIC}/outbound-answer"
        ref = parse_qs(url.query)["ref"][0]
        assert ref.startswith("o1.") and "Maria" not in ref and "A1001" not in ref  # opaque in Twilio's logs
        assert "Twiml" not in request.params  # the TwiML comes from the signed webhook, with the real CallSid
        assert request.params["StatusCallback"] == f"{PUBLIC}/twilio/status"
        assert request.params["StatusCallbackMethod"] == "POST"
        assert request.getall("StatusCallbackEvent") == ["initiated", "ringing", "answered", "completed"]
        assert "MachineDetection" not in request.params

    def test_passes_answering_machine_detection_through_when_asked(self, outbound, standin):
        call_sid = placed_call(standin, outbound, machine_detection=True)
        params = standin.calls[call_sid]["_params"]
        assert params["MachineDetection"] == "DetectMessageEnd" and params["AsyncAmd"] == "true"
        assert params["AsyncAmdStatusCallback"] == f"{PUBLIC}/twilio/amd"

    @pytest.mark.parametrize("to", [OTHER, "+1 555 765 4321", "sip:boss@example.com", "911", "not a number"])
    def test_refuses_a_destination_off_the_allow_list_with_403_and_calls_no_one(self, outbound, standin, to):
        before = len(standin.requests)
        rejected = outbound.app.state.gate.rejected["outbound_destination_not_allowed"]
        r = place(outbound, {"to": to})
        assert r.status_code == 403 and "ALLOWED_DESTINATIONS" in r.json()["detail"]
        assert len(standin.requests) == before
        assert outbound.app.state.gate.rejected["outbound_destination_not_allowed"] == rejected + 1

    def test_a_sip_destination_on_the_allow_list_is_called(self, outbound, standin):
        r = place(outbound, {"to": "SIP:desk@example.com"})
        assert r.status_code == 201, r.text
        assert standin.calls[r.json()["call_sid"]]["to"] == "sip:desk@example.com"

    @pytest.mark.parametrize("body, why", [
        (b"to=+15551234567", "JSON"),
        ({"purpose": "hello"}, '"to"'),
        ({"to": CALLEE, "purpose": "x" * 401}, "400 characters"),
        ({"to": CALLEE, "machine_detection": "yes"}, "machine_detection"),
        ({"to": CALLEE, "from": OTHER}, "unknown field"),
        ([CALLEE], "object"),
        ({"to": CALLEE, "agent": "no-such-agent"}, "there is no agent named 'no-such-agent'"),
    ])
    def test_a_bad_body_gets_400_saying_what_is_wrong(self, outbound, body, why):
        r = place(outbound, body)
        assert r.status_code == 400 and why in r.json()["detail"]

    def test_twilio_refusing_the_call_gives_502_with_its_reason(self, outbound, standin):
        standin.fail_next("calls.create", 400, 21215, "Geo Permission configuration is not permitting call")
        r = place(outbound, {"to": CALLEE})
        assert r.status_code == 502
        assert "21215" in r.json()["detail"] and "Geo Permission" in r.json()["detail"]


# =========================================================================== the answer webhook


def recording(call_sid: str, account_sid: str, parameters: dict[str, str]) -> list[dict]:
    messages = copy.deepcopy(read_recording(FIXTURES / "greeting_only.jsonl"))
    for m in messages:
        if m["event"] == "start":
            m["start"].update(callSid=call_sid, accountSid=account_sid, customParameters=dict(parameters))
    return messages


class TestTheAnswer:
    def test_the_callee_is_connected_to_the_stream_with_a_token_the_purpose_and_the_direction(self, outbound, standin):
        call_sid = placed_call(standin, outbound, purpose="Tell James his refund was sent")
        answer = standin.answer(call_sid, via=outbound.http_url)
        assert answer.status == 200 and answer.headers["content-type"].startswith("text/xml")
        url, parameters = stream_of(answer.body)
        assert url == STREAM_URL  # no query string on the stream URL
        assert parameters["CallSid"] == call_sid
        assert parameters["From"] == CALLEE and parameters["To"] == OUR_NUMBER  # From: the person on the line
        assert parameters["token"].startswith("v1.")
        assert parameters["purpose"] == "Tell James his refund was sent"
        assert parameters["direction"] == "outbound-api"
        assert "answered_by" not in parameters
        connect = ET.fromstring(answer.body).find("./Connect")
        assert connect.get("action") == f"{PUBLIC}/stream-ended"

    def test_the_agent_chosen_for_the_call_travels_to_the_stream(self, outbound, standin):
        call_sid = placed_call(standin, outbound, purpose="Confirm the visit", agent="default")
        _, parameters = stream_of(standin.answer(call_sid, via=outbound.http_url).body)
        assert parameters["agent"] == "default"
        unnamed = placed_call(standin, outbound)  # no agent asked for: the one answering our number
        _, parameters = stream_of(standin.answer(unnamed, via=outbound.http_url).body)
        assert parameters["agent"] == "default"

    def test_the_answered_stream_passes_the_gatekeeper_and_reaches_live(self, outbound, standin, emulator):
        emulator.script = Script(greeting=[Say(seconds=0.3)], replies=[])
        call_sid = placed_call(standin, outbound, purpose="Confirm the delivery window")
        _, parameters = stream_of(standin.answer(call_sid, via=outbound.http_url).body)
        rejected = dict(outbound.app.state.gate.rejected)
        sessions = len(emulator.sessions)
        signature = RequestValidator(standin.auth_token).compute_signature(STREAM_URL, {})
        call = asyncio.run(CallSimulator(outbound.ws_url, recording(call_sid, standin.account_sid, parameters),
                                         headers={"X-Twilio-Signature": signature}, speed=4, linger=5).run())
        assert call.close_code == 1000 and call.agent_audio
        assert len(emulator.sessions) > sessions
        assert outbound.finished_call(call_sid)["call_sid"] == call_sid
        assert dict(outbound.app.state.gate.rejected) == rejected

    def test_an_unsigned_or_forged_answer_gets_403(self, outbound, standin):
        call_sid = placed_call(standin, outbound)
        url = standin.calls[call_sid]["_url"]
        parts = urlsplit(url)
        form = answer_form(standin, call_sid)
        unsigned = httpx.post(f"{outbound.http_url}{parts.path}?{parts.query}", data=form)
        forged = signed_post(standin, outbound, url, form, token="0" * 32)
        assert unsigned.status_code == 403 and forged.status_code == 403

    def test_a_replayed_answer_gets_403(self, outbound, standin):
        call_sid = placed_call(standin, outbound)
        assert standin.answer(call_sid, via=outbound.http_url).status == 200
        assert standin.answer(call_sid, via=outbound.http_url).status == 403

    def test_a_ref_reused_for_another_call_gets_the_apology_and_no_stream(self, outbound, standin):
        call_sid = placed_call(standin, outbound)
        url = standin.calls[call_sid]["_url"]
        assert standin.answer(call_sid, via=outbound.http_url).status == 200
        before = outbound.app.state.gate.rejected["outbound_replayed_ref"]
        r = signed_post(standin, outbound, url, answer_form(standin, "CA" + "77" * 16))
        assert r.status_code == 200 and "<Say>" in r.text and "<Stream" not in r.text
        assert outbound.app.state.gate.rejected["outbound_replayed_ref"] == before + 1

    @pytest.mark.parametrize("change, reason", [
        (lambda url: url[:-4] + ("AAAA" if not url.endswith("AAAA") else "BBBB"), "outbound_bad_ref"),
        (lambda url: url.split("?")[0] + "?ref=", "outbound_bad_ref"),
    ])
    def test_a_forged_or_missing_ref_gets_the_apology_and_no_stream(self, outbound, standin, change, reason):
        call_sid = placed_call(standin, outbound)
        url = change(standin.calls[call_sid]["_url"])
        before = outbound.app.state.gate.rejected[reason]
        r = signed_post(standin, outbound, url, answer_form(standin, call_sid))
        assert r.status_code == 200 and "<Stream" not in r.text
        assert outbound.app.state.gate.rejected[reason] == before + 1

    def test_a_ref_answered_by_someone_else_than_its_callee_gets_no_stream(self, outbound, standin):
        call_sid = placed_call(standin, outbound)
        r = signed_post(standin, outbound, standin.calls[call_sid]["_url"], answer_form(standin, call_sid, to=OTHER))
        assert r.status_code == 200 and "<Stream" not in r.text

    def test_the_machine_detection_result_reaches_the_agent(self, outbound, standin):
        call_sid = placed_call(standin, outbound, machine_detection=True)
        answer = standin.answer(call_sid, via=outbound.http_url, answered_by="machine_start")
        assert stream_of(answer.body)[1]["answered_by"] == "machine_start"

    def test_a_fax_machine_is_hung_up_on(self, outbound, standin):
        call_sid = placed_call(standin, outbound, machine_detection=True)
        answer = standin.answer(call_sid, via=outbound.http_url, answered_by="fax")
        assert answer.status == 200 and "<Hangup" in answer.body and "<Stream" not in answer.body


# =========================================================================== the sealed ref


class TestOutboundRefs:
    def setup_method(self):
        self.clock = FakeClock()
        settings = Settings.from_env({"GEMINI_API_KEY": "k" * 16, "TWILIO_AUTH_TOKEN": "ab" * 16})
        self.refs = OutboundRefs(settings, ttl_s=600, clock=self.clock)

    def test_a_ref_opens_once_with_its_purpose(self):
        ref = self.refs.seal(CALLEE, "Say hello")
        opened = run(self.refs.open(ref, callee=CALLEE))
        assert (opened.to, opened.purpose) == (CALLEE, "Say hello")
        with pytest.raises(Rejected) as caught:
            run(self.refs.open(ref, callee=CALLEE))
        assert caught.value.reason == "outbound_replayed_ref"

    def test_a_ref_expires(self):
        ref = self.refs.seal(CALLEE, "")
        self.clock.now += 601
        with pytest.raises(Rejected) as caught:
            run(self.refs.open(ref))
        assert caught.value.reason == "outbound_expired_ref"

    def test_another_deployments_ref_is_worthless(self):
        other = OutboundRefs(Settings.from_env({"GEMINI_API_KEY": "k" * 16, "TWILIO_AUTH_TOKEN": "cd" * 16}))
        with pytest.raises(Rejected) as caught:
            run(self.refs.open(other.seal(CALLEE, "x")))
        assert caught.value.reason == "outbound_bad_ref"

    def test_the_callee_must_be_the_one_called(self):
        ref = self.refs.seal(CALLEE, "")
        with pytest.raises(Rejected) as caught:
            run(self.refs.open(ref, callee=OTHER))
        assert caught.value.reason == "outbound_wrong_callee"
        assert run(self.refs.open(ref, callee="+1 (555) 123-4567")).to == CALLEE  # the same number, written otherwise

    def test_parsing_accepts_a_minimal_body(self):
        assert parse_outbound_request(b'{"to": " +15551234567 "}') == OutboundRequest(CALLEE, "", False)


# =========================================================================== the CLI


@pytest.fixture
def cli_env(monkeypatch, standin):
    for name, value in {**standin.env(), "PUBLIC_URL": PUBLIC, "TWILIO_PHONE_NUMBER": OUR_NUMBER,
                        "ALLOWED_DESTINATIONS": CALLEE}.items():
        monkeypatch.setenv(name, value)
    for name in ("GEMINI_API_KEY", "GOOGLE_API_KEY", "STREAM_TOKEN_SECRET", "REQUIRE_TWILIO_SIGNATURE"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


class TestTelephonyCall:
    def test_places_the_call_through_the_rest_api_and_the_server_answers_it(self, cli_env, standin, outbound, capsys):
        code = main(["call", CALLEE, "--purpose", "Offer the new delivery slot", "--machine-detection"])
        out = capsys.readouterr().out
        assert code == 0, out
        request = standin.requests_of("calls.create")[-1]
        sid = next(sid for sid, c in list(standin.calls.items()) if c["_params"] == request.params)
        assert sid in out
        assert request.params["From"] == OUR_NUMBER and request.params["To"] == CALLEE
        assert request.params["MachineDetection"] == "DetectMessageEnd" and request.params["AsyncAmd"] == "true"
        assert request.params["Url"].startswith(f"{PUBLIC}/outbound-answer?ref=o1.")
        # the server (same auth token) opens the ref the CLI sealed
        _, parameters = stream_of(standin.answer(sid, via=outbound.http_url).body)
        assert parameters["purpose"] == "Offer the new delivery slot"

    def test_refuses_a_destination_off_the_allow_list(self, cli_env, standin, capsys):
        before = len(standin.requests)
        assert main(["call", OTHER]) == 2
        assert "not one this line may call" in capsys.readouterr().err
        assert len(standin.requests) == before

    @pytest.mark.parametrize("missing", ["TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "PUBLIC_URL", "TWILIO_PHONE_NUMBER"])
    def test_names_a_missing_variable(self, cli_env, capsys, missing):
        cli_env.delenv(missing)
        assert main(["call", CALLEE]) == 2
        assert f"{missing} is not set" in capsys.readouterr().err


class TestNumberSetup:
    def test_points_the_number_at_public_url_and_prints_the_console_steps(self, cli_env, standin, capsys):
        number = fresh_number()
        sid = standin.add_number(number, voice_url="https://old.example.test/voice", voice_method="GET")
        standin.clear()
        assert main(["twilio", "setup", "--number", number]) == 0
        out = capsys.readouterr().out
        lookup, update = standin.requests
        assert (lookup.kind, lookup.method, lookup.query["PhoneNumber"]) == ("numbers.list", "GET", number)
        assert (update.kind, update.method) == ("numbers.update", "POST")
        assert update.path == f"/2010-04-01/Accounts/{standin.account_sid}/IncomingPhoneNumbers/{sid}.json"
        assert update.params == {"VoiceUrl": f"{PUBLIC}/incoming-call", "VoiceMethod": "POST",
                                 "StatusCallback": f"{PUBLIC}/twilio/status", "StatusCallbackMethod": "POST"}
        assert update.auth == (standin.account_sid, standin.auth_token)
        assert standin.numbers[sid]["voice_url"] == f"{PUBLIC}/incoming-call"
        assert "Phone Numbers > Manage > Active numbers" in out and f"{PUBLIC}/incoming-call, HTTP POST" in out

    def test_uses_twilio_phone_number_by_default(self, cli_env, standin, capsys):
        assert main(["twilio", "setup"]) == 0
        assert standin.requests_of("numbers.list")[-1].query["PhoneNumber"] == OUR_NUMBER

    def test_a_number_the_account_does_not_own_is_an_error(self, cli_env, standin, capsys):
        standin.clear()
        assert main(["twilio", "setup", "--number", fresh_number()]) == 1
        assert "is not a phone number of account" in capsys.readouterr().err
        assert [r.kind for r in standin.requests] == ["numbers.list"]

    def test_setup_needs_public_url(self, cli_env, capsys):
        cli_env.delenv("PUBLIC_URL")
        assert main(["twilio", "setup"]) == 2
        assert "PUBLIC_URL is not set" in capsys.readouterr().err


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/healthz"


class TestTwilioCheck:
    def test_everything_ok_prints_ok_lines_and_exits_zero(self, cli_env, standin, server, capsys):
        number = fresh_number()
        standin.add_number(number, voice_url=f"{PUBLIC}/incoming-call")
        code = main(["twilio", "check", "--number", number, "--health-url", f"{server.http_url}/healthz"])
        lines = capsys.readouterr().out.splitlines()
        assert code == 0, lines
        assert [line.split()[0] for line in lines] == ["ok", "ok", "ok"]
        assert lines[0].startswith("ok    credentials: account " + standin.account_sid)
        assert lines[1] == f"ok    number {number}: calls go to POST {PUBLIC}/incoming-call"
        assert lines[2].startswith(f"ok    health {server.http_url}/healthz: 200")

    def test_a_wrong_webhook_and_a_dead_server_are_each_a_fail_line(self, cli_env, standin, capsys):
        number = fresh_number()
        standin.add_number(number, voice_url="https://old.example.test/voice")
        dead = _closed_port_url()
        code = main(["twilio", "check", "--number", number, "--health-url", dead])
        lines = capsys.readouterr().out.splitlines()
        assert code == 1
        assert lines[0].startswith("ok    credentials")
        assert lines[1].startswith(f"FAIL  number {number}: calls go to POST https://old.example.test/voice")
        assert "telephony twilio setup --number" in lines[1]
        assert lines[2].startswith(f"FAIL  health {dead}: no answer")

    def test_bad_credentials_are_a_fail_line(self, cli_env, standin, server, capsys):
        cli_env.setenv("TWILIO_AUTH_TOKEN", "f" * 32)
        code = main(["twilio", "check", "--health-url", f"{server.http_url}/healthz"])
        lines = capsys.readouterr().out.splitlines()
        assert code == 1
        assert lines[0].startswith("FAIL  credentials: Twilio answered 401 (error 20003)")

    def test_a_number_the_account_does_not_own_is_a_fail_line(self, cli_env, standin, server, capsys):
        number = fresh_number()
        assert main(["twilio", "check", "--number", number, "--health-url", f"{server.http_url}/healthz"]) == 1
        assert f"FAIL  number {number}: not a phone number of account" in capsys.readouterr().out

    def test_the_health_check_fails_while_draining(self):
        from aiohttp import web

        async def draining(request):
            return web.json_response({"status": "draining"}, status=503)

        async def scenario():
            app = web.Application()
            app.router.add_get("/healthz", draining)
            runner = web.AppRunner(app)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = runner.addresses[0][1]
            try:
                return await check_health(f"http://127.0.0.1:{port}/healthz")
            finally:
                await runner.cleanup()

        check = run(scenario())
        assert not check.ok and "503" in check.detail and "draining" in check.detail

    def test_check_names_missing_credentials(self, cli_env, capsys):
        cli_env.delenv("TWILIO_ACCOUNT_SID")
        assert main(["twilio", "check"]) == 2
        assert "TWILIO_ACCOUNT_SID is not set" in capsys.readouterr().err
