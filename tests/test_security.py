"""Let no one in: signed webhooks and streams, caller-bound data, abuse limits, quiet logs.

The server tests run a second real server (module-scoped) with TWILIO_AUTH_TOKEN and a
PUBLIC_URL that differs from the loopback address it is reached on, as behind a proxy or
tunnel. It shares the session's Live emulator, so "nothing was spent" is checked where
it matters: the emulator saw no new Live connection. Requests are signed the way Twilio
signs them, with twilio's own RequestValidator (docs/twilio-media-streams.md §6).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import logging
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from telephony.app import create_app
from telephony.errors import SettingsError
from telephony.security import (
    REDACTOR, DestinationNotAllowed, Gatekeeper, LogRedactor, Rejected, StreamTokens,
    check_destination, destination_allowed, mask_phone, stream_token_secret, stream_urls, webhook_urls,
)
from telephony.settings import Settings
from telephony.shared_state import InProcessState
from telephony.testing import twilio_signing
from telephony.testing.emulator import CallTool, Say, Script
from telephony.testing.recordings import read_recording
from telephony.testing.server import ServerThread
from telephony.testing.simulator import CallSimulator, SimulatedCall
from telephony.tool_registry import MAX_STRING_LENGTH, CallContext
from tools import orders, registry
from tools.orders import REFUSAL, lookup_order

FIXTURES = Path(__file__).parent / "fixtures"
AUTH_TOKEN = "0123456789abcdef0123456789abcdef"  # the shape of a Twilio auth token
OTHER_TOKEN = "fedcba9876543210fedcba9876543210"
PUBLIC = "https://agent.example.test"
STREAM_URL = "wss://agent.example.test/media-stream"
ACCOUNT = "AC" + "3" * 32
MARIA, JAMES = "+15551230101", "+15551230102"  # owners of A1001/A1006 and A1002 (tools/orders.py)


_serial = itertools.count(0x5EC00000)


def sid(prefix: str, n: int | None = None) -> str:
    """A Twilio-shaped sid; without `n`, a new one each time (a CallSid is answered only once)."""
    return f"{prefix}{next(_serial) if n is None else n:032x}"


_numbers = itertools.count(7770100)


def fresh_number() -> str:
    """A caller of its own, so each test starts under the per-caller limits."""
    return f"+1555{next(_numbers):07d}"


def sign(url: str, params: dict | None = None, token: str = AUTH_TOKEN) -> str:
    return twilio_signing.sign(url, params, token)


class FakeClock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def settings_for(tmp_path: Path, **env: str) -> Settings:
    return Settings.from_env({"GEMINI_API_KEY": "test-api-key-123", "ORDERS_DB_PATH": str(tmp_path / "orders.db"),
                              "CALLS_DB_PATH": str(tmp_path / "calls.db"), **env})


# =========================================================================== the secure server


@pytest.fixture(scope="module")
def secure(server, emulator, tmp_path_factory):
    """A second real server, verifying everything; `server` first, for the SDK's environment."""
    env = {
        **emulator.env(),
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "PUBLIC_URL": PUBLIC,
        "ORDERS_DB_PATH": str(tmp_path_factory.mktemp("secure-db") / "orders.db"),
        "CALLS_DB_PATH": str(tmp_path_factory.mktemp("secure-db") / "calls.db"),
        "LIVE_CONNECT_TIMEOUT_SECONDS": "2",
        "TOOL_TIMEOUT_SECONDS": "2",
        "STREAM_TOKEN_TTL_SECONDS": "300",
    }
    settings = Settings.from_env(env)
    with ServerThread(create_app(settings)) as srv:
        srv.settings = settings
        yield srv


def webhook_form(call_sid: str, caller: str, called: str = "+15559870000") -> dict[str, str]:
    return twilio_signing.webhook_form(call_sid, caller, called, ACCOUNT)


def post_webhook(srv: ServerThread, form: dict, signature: str | None = "sign") -> httpx.Response:
    """POST the form to the loopback address; by default signed for the public URL, as Twilio would."""
    headers = {}
    if signature == "sign":
        signature = sign(f"{PUBLIC}/incoming-call", form)
    if signature is not None:
        headers["X-Twilio-Signature"] = signature
    return httpx.post(f"{srv.http_url}/incoming-call", data=form, headers=headers)


stream_parameters = twilio_signing.stream_parameters


def answered_call(srv: ServerThread, call_sid: str, caller: str) -> dict[str, str]:
    r = post_webhook(srv, webhook_form(call_sid, caller))
    assert r.status_code == 200, r.text
    return stream_parameters(r.text)


def recording(call_sid: str, parameters: dict[str, str], name: str = "greeting_only.jsonl") -> list[dict]:
    """A recorded call, re-addressed to `call_sid` with the stream parameters the TwiML gave."""
    return twilio_signing.readdress(read_recording(FIXTURES / name), call_sid, ACCOUNT, parameters)


def play(srv: ServerThread, messages: list[dict], signature: str | None = "sign", speed: float = 4.0,
         linger: float = 5.0) -> SimulatedCall:
    headers = {}
    if signature == "sign":
        signature = sign(STREAM_URL)
    if signature is not None:
        headers["X-Twilio-Signature"] = signature
    return asyncio.run(CallSimulator(srv.ws_url, messages, headers=headers, speed=speed, linger=linger).run())


@contextmanager
def nothing_spent(srv: ServerThread, emulator, reason: str):
    """The block is refused with `reason`, counted once, and no Live session is opened."""
    sessions = len(emulator.sessions)
    counted = srv.app.state.gate.rejected[reason]
    yield
    deadline = time.monotonic() + 5
    while srv.app.state.gate.rejected[reason] == counted and time.monotonic() < deadline:
        time.sleep(0.01)  # a peer that hung up first may be counted a moment later
    assert srv.app.state.gate.rejected[reason] == counted + 1, dict(srv.app.state.gate.rejected)
    assert len(emulator.sessions) == sessions, "a rejected request must not reach Live"
    assert not srv.app.state.active_calls


@contextmanager
def captured_logs():
    """Every record from every logger, at DEBUG for ours, formatted as a handler would."""
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = Keep(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    ours = [logging.getLogger("telephony"), logging.getLogger("tools")]
    levels = [lg.level for lg in ours]
    root.addHandler(handler)
    for lg in ours:
        lg.setLevel(logging.DEBUG)
    try:
        yield lines
    finally:
        root.removeHandler(handler)
        for lg, level in zip(ours, levels):
            lg.setLevel(level)


# --------------------------------------------------------------------------- one good call


def _cross_caller_script() -> Script:
    """A model talked into asking for other customers' orders (and one of the caller's own)."""
    return Script(greeting=[
        CallTool("lookup_order", {"order_id": "A1001"}),                       # Maria's, asked by James
        CallTool("lookup_order", {"order_id": "A1003", "verification": "maria.gonzalez@example.com"}),
        CallTool("lookup_order", {"order_id": "A1002"}),                       # James's own
        Say(text="Your order is being prepared.", seconds=0.4),
    ], replies=[])


@pytest.fixture(scope="module")
def signed_call(secure, emulator):
    """James calls through Twilio: signed webhook, signed upgrade, fresh token. Logs are captured."""
    emulator.script = _cross_caller_script()
    call_sid = sid("CA")
    before = len(emulator.sessions)
    with captured_logs() as logs:
        parameters = answered_call(secure, call_sid, JAMES)
        call = play(secure, recording(call_sid, parameters), speed=1.0)  # 2.5 s: time for three lookups
        emulator.wait_for(lambda: len(emulator.sessions) > before and emulator.sessions[before].closed, timeout=10)
        emulator.wait_for(lambda: not secure.app.state.active_calls, timeout=10)
    return {"call_sid": call_sid, "parameters": parameters, "call": call,
            "session": emulator.sessions[before], "logs": logs}


class TestASignedCall:
    def test_goes_through_and_talks_to_live(self, signed_call, secure):
        assert signed_call["call"].close_code == 1000 and signed_call["call"].agent_audio
        summary = secure.finished_call(signed_call["call_sid"])
        assert summary["call_sid"] == signed_call["call_sid"] and summary["end_reason"] == "caller hung up"

    def test_the_twiml_carries_a_token_and_no_secret(self, signed_call):
        parameters = signed_call["parameters"]
        assert parameters["CallSid"] == signed_call["call_sid"] and parameters["From"] == JAMES
        assert parameters["token"].startswith("v1.") and len(parameters["token"]) < 100
        text = json.dumps(parameters)
        assert AUTH_TOKEN not in text and "emulator-key" not in text

    def test_another_customers_order_is_refused_and_nothing_of_it_leaks(self, signed_call):
        maria, guessed, own = signed_call["session"].tool_responses
        refusal = maria["response"]["result"]
        assert refusal["found"] is False and refusal["message"].startswith(REFUSAL)
        leaked = json.dumps(maria) + json.dumps(guessed)
        for secret in ("shipped", "UPS", "1Z999AA10123456784", "Trail Runner", "Merino", "$",
                       "USPS", "headlamp", "out_for_delivery", "9400111899223344556677"):
            assert secret not in leaked, secret
        assert guessed["response"]["result"]["found"] is False  # someone else's email proves nothing
        assert own["response"]["result"]["found"] is True
        assert own["response"]["result"]["items"][0]["name"] == "Ultralight two-person tent"

    def test_secrets_and_full_numbers_never_reach_the_logs(self, signed_call):
        text = "\n".join(signed_call["logs"])
        assert "incoming call" in text and "call summary" in text  # the capture did see the call
        for secret in (AUTH_TOKEN, "emulator-key", signed_call["parameters"]["token"],
                       signed_call["parameters"]["token"].rsplit(".", 1)[1], JAMES, "maria.gonzalez@example.com"):
            assert secret not in text, secret
        assert "+1555***0102" in text  # masked, still useful to tell calls apart


# =========================================================================== webhooks


class TestWebhooks:
    def test_a_request_signed_for_the_public_url_passes_through_the_proxy(self, secure):
        r = post_webhook(secure, webhook_form(sid("CA"), fresh_number()))
        assert r.status_code == 200
        assert stream_parameters(r.text) and f'url="{STREAM_URL}"' in r.text

    def test_an_unsigned_webhook_gets_403(self, secure, emulator):
        with nothing_spent(secure, emulator, "webhook_unsigned"):
            r = post_webhook(secure, webhook_form(sid("CA"), fresh_number()), signature=None)
        assert r.status_code == 403 and "<Stream" not in r.text and "token" not in r.text

    @pytest.mark.parametrize("how", ["another key", "the loopback url", "a tampered From"])
    def test_a_wrongly_signed_webhook_gets_403(self, secure, emulator, how):
        form = webhook_form(sid("CA"), fresh_number())
        signature = {
            "another key": sign(f"{PUBLIC}/incoming-call", form, OTHER_TOKEN),
            # What the server sees is not what Twilio signed: only PUBLIC_URL counts.
            "the loopback url": sign(f"{secure.http_url}/incoming-call", form),
            "a tampered From": sign(f"{PUBLIC}/incoming-call", {**form, "From": MARIA}),
        }[how]
        with nothing_spent(secure, emulator, "webhook_bad_signature"):
            r = post_webhook(secure, form, signature=signature)
        assert r.status_code == 403 and r.text == "Forbidden"

    def test_a_replayed_webhook_gets_403_and_no_second_token(self, secure, emulator):
        form = webhook_form(sid("CA"), fresh_number())
        assert post_webhook(secure, form).status_code == 200
        with nothing_spent(secure, emulator, "webhook_replayed"):
            r = post_webhook(secure, form)
        assert r.status_code == 403 and "token" not in r.text

    def test_an_over_limit_caller_hears_a_short_message_and_is_hung_up(self, secure, emulator):
        caller = fresh_number()
        for n in range(secure.settings.max_calls_per_caller):  # two calls ringing at once: fine
            assert "<Stream" in post_webhook(secure, webhook_form(sid("CA"), caller)).text
        with nothing_spent(secure, emulator, "caller_over_limit"):
            r = post_webhook(secure, webhook_form(sid("CA"), caller))
        assert r.status_code == 200 and "<Stream" not in r.text
        assert "<Say>" in r.text and r.text.index("<Say>") < r.text.index("<Hangup />")

    def test_rejections_are_counted_in_healthz(self, secure):
        post_webhook(secure, webhook_form(sid("CA"), fresh_number()), signature=None)
        rejected = httpx.get(f"{secure.http_url}/healthz").json()["rejected"]
        assert rejected["webhook_unsigned"] >= 1


def test_without_public_url_the_request_url_is_verified_also_in_its_https_form(tmp_path):
    app = create_app(settings_for(tmp_path, TWILIO_AUTH_TOKEN=AUTH_TOKEN))
    form = webhook_form(sid("CA"), fresh_number())
    with TestClient(app) as client:
        def post(url: str, call_sid: str) -> int:
            data = {**form, "CallSid": call_sid}
            return client.post("/incoming-call", data=data, headers={"X-Twilio-Signature": sign(url, data)}).status_code

        assert post("http://testserver/incoming-call", sid("CA")) == 200
        assert post("https://testserver/incoming-call", sid("CA")) == 200  # TLS ended at a proxy
        assert post("https://elsewhere.example/incoming-call", sid("CA")) == 403


# =========================================================================== media streams


class TestMediaStreams:
    """A forged upgrade is refused with HTTP 403 before it is accepted; a stream whose
    token fails is closed with 1008. Either way, before a Live session exists."""

    @pytest.mark.parametrize("signature, reason", [
        (None, "stream_unsigned"),
        (sign(STREAM_URL, token=OTHER_TOKEN), "stream_bad_signature"),
        (sign("ws://127.0.0.1/media-stream"), "stream_bad_signature"),   # not the public URL
        (sign(f"{PUBLIC}/incoming-call"), "stream_bad_signature"),       # a signature for another URL
    ])
    def test_a_badly_signed_upgrade_is_refused_with_403_before_it_is_accepted(self, secure, emulator, signature, reason):
        call_sid = sid("CA")
        parameters = answered_call(secure, call_sid, fresh_number())
        with nothing_spent(secure, emulator, reason):
            call = play(secure, recording(call_sid, parameters), signature=signature)
        assert call.http_status == 403 and call.close_code is None and not call.agent_audio

    def test_a_stream_without_a_token_is_closed_with_1008(self, secure, emulator):
        call_sid = sid("CA")
        parameters = answered_call(secure, call_sid, fresh_number())
        del parameters["token"]
        with nothing_spent(secure, emulator, "stream_missing_token"):
            assert play(secure, recording(call_sid, parameters)).close_code == 1008

    def test_a_forged_token_is_closed_with_1008(self, secure, emulator):
        call_sid = sid("CA")
        parameters = answered_call(secure, call_sid, fresh_number())
        token = parameters["token"]
        parameters["token"] = token[:-1] + ("A" if token[-1] != "A" else "B")
        with nothing_spent(secure, emulator, "stream_bad_token"):
            assert play(secure, recording(call_sid, parameters)).close_code == 1008

    def test_a_caller_number_changed_on_the_way_is_closed_with_1008(self, secure, emulator):
        """From reaches the call only under the token's MAC: claiming Maria's number fails."""
        call_sid = sid("CA")
        parameters = answered_call(secure, call_sid, fresh_number())
        with nothing_spent(secure, emulator, "stream_bad_token"):
            assert play(secure, recording(call_sid, {**parameters, "From": MARIA})).close_code == 1008

    def test_a_token_belonging_to_another_call_is_closed_with_1008(self, secure, emulator):
        theirs = sid("CA")
        parameters = answered_call(secure, theirs, fresh_number())
        with nothing_spent(secure, emulator, "stream_wrong_call"):
            call = play(secure, recording(sid("CA"), parameters))
        assert call.close_code == 1008

    def test_an_expired_token_is_closed_with_1008(self, secure, emulator):
        call_sid = sid("CA")
        parameters = answered_call(secure, call_sid, fresh_number())
        long_ago = time.time() - 2 * secure.settings.stream_token_ttl_s
        stale = StreamTokens(stream_token_secret(secure.settings), secure.settings.stream_token_ttl_s, lambda: long_ago)
        parameters["token"] = stale.mint(call_sid, parameters["From"], parameters["To"])
        with nothing_spent(secure, emulator, "stream_expired_token"):
            assert play(secure, recording(call_sid, parameters)).close_code == 1008

    def test_a_replayed_stream_is_closed_with_1008(self, secure, emulator, signed_call):
        with nothing_spent(secure, emulator, "stream_replayed_token"):
            call = play(secure, recording(signed_call["call_sid"], signed_call["parameters"]))
        assert call.close_code == 1008

    def test_a_second_stream_for_a_call_is_closed_with_1008_even_with_a_fresh_token(self, secure, emulator, signed_call):
        call_sid, parameters = signed_call["call_sid"], dict(signed_call["parameters"])
        parameters["token"] = StreamTokens(stream_token_secret(secure.settings)).mint(call_sid, JAMES, parameters["To"])
        with nothing_spent(secure, emulator, "stream_duplicate"):
            assert play(secure, recording(call_sid, parameters)).close_code == 1008

    def test_a_stream_that_never_starts_is_closed_with_1008(self, secure, emulator):
        with nothing_spent(secure, emulator, "stream_no_start"):
            call = play(secure, [{"event": "connected", "protocol": "Call", "version": "1.0.0"}], linger=0.5)
        assert call.close_code in (1000, 1008)  # the simulator hangs up itself once it has nothing to send


def test_in_development_mode_plain_streams_still_work_unverified(phone):
    """The session server has no TWILIO_AUTH_TOKEN: `telephony simulate` keeps working offline."""
    server = phone.server
    call = phone.call("greeting_only.jsonl", Script(greeting=[Say(seconds=0.3)], replies=[]), speed=4)
    assert call.close_code == 1000 and call.agent_audio
    assert server.app.state.gate.verifying is False


# =========================================================================== start-up


class TestStartUp:
    def test_require_twilio_signature_without_the_token_fails_naming_the_variable(self, tmp_path):
        with pytest.raises(SettingsError, match="REQUIRE_TWILIO_SIGNATURE=true but TWILIO_AUTH_TOKEN"):
            settings_for(tmp_path, REQUIRE_TWILIO_SIGNATURE="true")

    def test_a_public_deployment_without_the_token_refuses_to_start(self, tmp_path):
        settings = settings_for(tmp_path, PUBLIC_URL=PUBLIC)
        assert settings.verification_required
        with pytest.raises(SettingsError, match="TWILIO_AUTH_TOKEN is not set but PUBLIC_URL is set"):
            with TestClient(create_app(settings)):
                pass

    def test_development_can_opt_out_explicitly_and_is_warned_loudly(self, tmp_path, caplog):
        settings = settings_for(tmp_path, PUBLIC_URL=PUBLIC, REQUIRE_TWILIO_SIGNATURE="false")
        with caplog.at_level(logging.WARNING, logger="telephony"):
            with TestClient(create_app(settings)) as client:
                assert client.get("/healthz").status_code == 200
        assert any("requests are NOT verified" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)

    @pytest.mark.parametrize("name, value", [
        ("REQUIRE_TWILIO_SIGNATURE", "maybe"), ("MASK_PHONE_NUMBERS", "sometimes"),
        ("STREAM_TOKEN_SECRET", "short"), ("STREAM_TOKEN_TTL_SECONDS", "0"),
        ("MAX_CALLS_PER_CALLER", "0"), ("MAX_CALLS_PER_CALLER_PER_HOUR", "lots"),
        ("ALLOWED_DESTINATIONS", "+15551230101,911"),
    ])
    def test_a_bad_security_setting_names_its_variable(self, tmp_path, name, value):
        with pytest.raises(SettingsError, match=name) as info:
            settings_for(tmp_path, **{name: value})
        assert "short" not in str(info.value) or name != "STREAM_TOKEN_SECRET"

    def test_security_defaults(self, tmp_path):
        s = settings_for(tmp_path)
        assert (s.max_calls_per_caller, s.max_calls_per_caller_per_hour, s.stream_token_ttl_s) == (2, 20, 60.0)
        assert s.mask_phone_numbers and s.allowed_destinations == () and not s.verification_required
        secret = "s" * 40
        assert secret not in repr(settings_for(tmp_path, STREAM_TOKEN_SECRET=secret))


# =========================================================================== the gate, without I/O


class TestStreamTokens:
    def setup_method(self):
        self.clock = FakeClock()
        self.tokens = StreamTokens(b"k" * 32, ttl_s=60, clock=self.clock)
        self.call = (sid("CA", 1), MARIA, "+15559870000")

    def test_a_fresh_token_is_accepted_once(self):
        token = self.tokens.mint(*self.call)
        run(self.tokens.verify(token, *self.call))
        with pytest.raises(Rejected) as info:
            run(self.tokens.verify(token, *self.call))
        assert info.value.reason == "stream_replayed_token"

    def test_a_token_expires_after_its_lifetime(self):
        token = self.tokens.mint(*self.call)
        self.clock.now += 61
        with pytest.raises(Rejected, match="stream_expired_token"):
            run(self.tokens.verify(token, *self.call))

    @pytest.mark.parametrize("change, reason", [
        ({"call_sid": sid("CA", 2)}, "stream_wrong_call"),
        ({"caller": JAMES}, "stream_bad_token"),
        ({"called": "+15550000000"}, "stream_bad_token"),
    ])
    def test_a_token_binds_the_call_and_both_numbers(self, change, reason):
        token = self.tokens.mint(*self.call)
        args = dict(zip(("call_sid", "caller", "called"), self.call)) | change
        with pytest.raises(Rejected) as info:
            run(self.tokens.verify(token, args["call_sid"], args["caller"], args["called"], claimed_call_sid=self.call[0]))
        assert info.value.reason == reason

    @pytest.mark.parametrize("token", [None, "", "v1", "v1.1.2.3", "v2." + "a" * 70, "x" * 5000])
    def test_missing_and_malformed_tokens_are_refused(self, token):
        with pytest.raises(Rejected, match="stream_missing_token|stream_bad_token"):
            run(self.tokens.verify(token, *self.call))

    def test_a_moved_calls_token_is_for_its_leg_only(self):
        """The stream after a move carries `leg`: covered by the MAC, so a token for
        leg 2 opens neither the first stream nor leg 3."""
        token = self.tokens.mint(*self.call, "2")
        for leg in ("", "3"):
            with pytest.raises(Rejected, match="stream_bad_token"):
                run(self.tokens.verify(token, *self.call, leg=leg))
        run(self.tokens.verify(token, *self.call, leg="2"))

    def test_another_servers_secret_makes_a_token_worthless(self):
        other = StreamTokens(b"x" * 32, clock=self.clock).mint(*self.call)
        with pytest.raises(Rejected, match="stream_bad_token"):
            run(self.tokens.verify(other, *self.call))

    def test_the_secret_is_derived_from_the_auth_token_not_equal_to_it(self, tmp_path):
        s = settings_for(tmp_path, TWILIO_AUTH_TOKEN=AUTH_TOKEN)
        assert stream_token_secret(s) == stream_token_secret(s) and AUTH_TOKEN.encode() not in stream_token_secret(s)
        assert stream_token_secret(settings_for(tmp_path, STREAM_TOKEN_SECRET="z" * 32)) == b"z" * 32
        dev = settings_for(tmp_path)
        assert stream_token_secret(dev) != stream_token_secret(dev)  # random per process in development


class TestGatekeeper:
    def setup_method(self, method):
        self.clock = FakeClock()

    def gate(self, tmp_path, **env) -> Gatekeeper:
        return Gatekeeper(settings_for(tmp_path, TWILIO_AUTH_TOKEN=AUTH_TOKEN, **env), clock=self.clock)

    def test_the_upgrade_signature_may_carry_a_trailing_slash(self, tmp_path):
        gate = self.gate(tmp_path, PUBLIC_URL=PUBLIC)
        urls = stream_urls("agent.example.test", "127.0.0.1:9", "/media-stream")
        assert urls == [STREAM_URL, STREAM_URL + "/"]
        gate.check_stream_signature(urls, sign(STREAM_URL))
        gate.check_stream_signature(urls, sign(STREAM_URL + "/"))
        with pytest.raises(Rejected, match="stream_bad_signature"):
            gate.check_stream_signature(urls, sign("wss://agent.example.test/other"))

    def test_webhook_urls_follow_public_url_and_keep_the_query(self):
        assert webhook_urls(PUBLIC, "http://10.0.0.5:8000/incoming-call?x=1") == [f"{PUBLIC}/incoming-call?x=1"]
        assert webhook_urls(None, "http://h.example/incoming-call") == [
            "http://h.example/incoming-call", "https://h.example/incoming-call"]

    def test_a_webhook_for_another_twilio_account_is_refused(self, tmp_path):
        gate = self.gate(tmp_path, TWILIO_ACCOUNT_SID="AC" + "9" * 32)
        form = webhook_form(sid("CA", 7), MARIA)
        url = f"{PUBLIC}/incoming-call"
        with pytest.raises(Rejected, match="webhook_wrong_account"):
            run(gate.check_webhook(urls=[url], form=list(form.items()), signature=sign(url, form)))

    def test_development_mode_admits_streams_unverified_with_the_claimed_caller(self, tmp_path):
        gate = Gatekeeper(settings_for(tmp_path), clock=self.clock)
        run(gate.check_webhook(urls=["http://x/incoming-call"], form=[], signature=None))
        gate.check_stream_signature(["wss://x/media-stream"], None)
        identity = run(gate.admit_stream(sid("CA", 8), ACCOUNT, {"From": MARIA}))
        assert identity.caller == MARIA and identity.verified is False

    def test_a_verified_stream_carries_the_signed_caller(self, tmp_path):
        gate = self.gate(tmp_path)
        call_sid = sid("CA", 9)
        token = gate.mint_token(call_sid, MARIA, "+15559870000")
        identity = run(gate.admit_stream(call_sid, ACCOUNT, {"From": MARIA, "To": "+15559870000", "token": token}))
        assert (identity.caller, identity.verified) == (MARIA, True)


class CallerLimits:
    """The per-caller limits as the gate applies them, through the in-process shared state."""

    def __init__(self, max_active: int, max_per_hour: int, *, lease_s: float, max_stream_s: float, clock):
        self.state = InProcessState(clock)
        self.limits = {"max_active": max_active, "max_per_hour": max_per_hour, "lease_s": lease_s}
        self.max_stream_s = max_stream_s

    def admit(self, caller: str, call_sid: str) -> str | None:
        return run(self.state.admit_caller(caller, call_sid, **self.limits))

    def streaming(self, call_sid: str) -> None:
        run(self.state.caller_streaming(call_sid, self.max_stream_s))

    def ended(self, call_sid: str) -> None:
        run(self.state.caller_ended(call_sid))

    def active(self, caller: str) -> int:
        return run(self.state.active_calls_of(caller))


class TestCallerLimits:
    def test_simultaneous_calls_are_capped_and_freed_when_a_call_ends(self):
        clock = FakeClock()
        limits = CallerLimits(2, 20, lease_s=65, max_stream_s=3660, clock=clock)
        assert limits.admit(MARIA, "CA1") is None and limits.admit(MARIA, "CA2") is None
        assert "in progress" in limits.admit(MARIA, "CA3")
        assert limits.admit(JAMES, "CA4") is None  # other callers are not affected
        limits.streaming("CA1")
        limits.ended("CA1")
        assert limits.admit(MARIA, "CA5") is None

    def test_a_slot_whose_stream_never_came_lapses(self):
        clock = FakeClock()
        limits = CallerLimits(1, 20, lease_s=65, max_stream_s=3660, clock=clock)
        assert limits.admit(MARIA, "CA1") is None
        assert limits.admit(MARIA, "CA2") is not None
        clock.now += 66
        assert limits.admit(MARIA, "CA3") is None

    def test_a_streaming_call_keeps_its_slot_past_the_token_lifetime(self):
        clock = FakeClock()
        limits = CallerLimits(1, 20, lease_s=65, max_stream_s=3660, clock=clock)
        limits.admit(MARIA, "CA1")
        limits.streaming("CA1")
        clock.now += 600
        assert limits.active(MARIA) == 1 and limits.admit(MARIA, "CA2") is not None

    def test_calls_per_hour_are_capped_over_a_sliding_hour(self):
        clock = FakeClock()
        limits = CallerLimits(100, 3, lease_s=65, max_stream_s=3660, clock=clock)
        for n in range(3):
            assert limits.admit(MARIA, f"CA{n}") is None
            limits.ended(f"CA{n}")
            clock.now += 60
        assert "last hour" in limits.admit(MARIA, "CA9")
        clock.now += 3600 - 170
        assert limits.admit(MARIA, "CA10") is None


# =========================================================================== allow-lists


class TestDestinations:
    def test_only_listed_destinations_are_allowed(self):
        allowed = ("+15551230199", "sip:desk@pbx.example.com")
        assert destination_allowed("+1 (555) 123-0199", allowed)
        assert destination_allowed("SIP:desk@PBX.example.com", allowed)
        for other in ("+15551230198", "911", "sip:desk@evil.example", "+15551230199; +19005550000", ""):
            assert not destination_allowed(other, allowed), other
        assert not destination_allowed("+15551230199", ())  # nothing configured: nothing allowed

    def test_check_destination_gives_an_error_the_model_can_speak(self, tmp_path):
        s = settings_for(tmp_path, ALLOWED_DESTINATIONS="+15551230199")
        assert check_destination("+1 555 123 0199", s) == "+15551230199"
        with pytest.raises(DestinationNotAllowed, match="cannot connect them there"):
            check_destination("+19005550000", s)


# =========================================================================== orders belong to their caller


@pytest.fixture
def ctx(tmp_path) -> CallContext:
    return CallContext(call_sid=sid("CA"), caller=JAMES, called="+15559870000",
                       settings=settings_for(tmp_path))


def run(coro):
    return asyncio.run(coro)


class TestOrdersBelongToTheirCaller:
    def test_the_caller_sees_their_own_order(self, ctx):
        assert lookup_order("A1002", ctx)["found"] is True

    def test_another_customers_order_is_refused_exactly_like_an_unknown_one(self, ctx):
        theirs, unknown = lookup_order("A1001", ctx), lookup_order("A9999", ctx)
        assert theirs["message"] == unknown["message"] and theirs["message"].startswith(REFUSAL)
        assert {k: v for k, v in theirs.items() if k != "order_id"} == {k: v for k, v in unknown.items() if k != "order_id"}
        assert "shipped" not in json.dumps(theirs) and "UPS" not in json.dumps(theirs)

    @pytest.mark.parametrize("proof", ["94110", " 9 4 1 1 0 ", "Maria.Gonzalez@Example.com", " maria.gonzalez@example.com "])
    def test_the_billing_postcode_or_email_proves_ownership(self, ctx, proof):
        order = lookup_order("A1001", ctx, verification=proof)
        assert order["found"] is True and order["order_id"] == "A1001"

    def test_an_unknown_caller_must_prove_ownership(self, ctx):
        anonymous = dataclasses.replace(ctx, caller=None)
        assert lookup_order("A1002", anonymous)["found"] is False
        assert lookup_order("A1002", anonymous, verification="10027")["found"] is True

    def test_guessing_postcodes_stops_after_three_failures_on_a_call(self, ctx):
        for guess in ("00000", "11111", "22222"):
            assert lookup_order("A1001", ctx, verification=guess)["found"] is False
        locked = lookup_order("A1001", ctx, verification="94110")  # right, but too late
        assert locked["found"] is False and "Too many failed verification attempts" in locked["message"]
        assert lookup_order("A1002", ctx)["found"] is True  # the caller's own orders still work
        other_call = dataclasses.replace(ctx, call_sid=sid("CA"))
        assert lookup_order("A1001", other_call, verification="94110")["found"] is True

    @pytest.mark.parametrize("attack", [
        "A1002' OR '1'='1", "A1001'; DROP TABLE orders; --", "' OR 1=1 --", "A1001\" OR \"\"=\"", "A1001' UNION SELECT phone FROM customers --",
    ])
    def test_sql_injection_in_order_id_finds_nothing_and_changes_nothing(self, ctx, attack):
        orders.ensure_orders_db(ctx.settings.orders_db_path)
        answer = lookup_order(attack, ctx)
        assert answer["found"] is False and "+1555" not in json.dumps(answer)
        with sqlite3.connect(ctx.settings.orders_db_path) as db:
            assert db.execute("SELECT COUNT(*) FROM orders").fetchone()[0] == len(orders._ORDERS)
            assert db.execute("SELECT COUNT(*) FROM customers").fetchone()[0] == len(orders._CUSTOMERS)

    @pytest.mark.parametrize("attack", ["' OR '1'='1", "x' OR email LIKE '%", "94110' --"])
    def test_sql_injection_in_verification_proves_nothing(self, ctx, attack):
        assert lookup_order("A1001", ctx, verification=attack)["found"] is False

    def test_oversized_arguments_are_refused_before_any_lookup(self, ctx):
        too_long = run(registry.call("lookup_order", {"order_id": "A" * (MAX_STRING_LENGTH + 1)}, ctx))
        assert "too long" in too_long["error"]
        assert lookup_order("A1002" + "0" * 500, ctx)["found"] is False
        answer = lookup_order("A1001", ctx, verification="9" * 300)
        assert answer["found"] is False and "too long" in answer["message"]
        wrong_type = run(registry.call("lookup_order", {"order_id": "A1002", "verification": ["94110"]}, ctx))
        assert "must be a string" in wrong_type["error"]


# =========================================================================== logs


class TestLogs:
    def test_phone_numbers_are_masked(self):
        assert mask_phone(MARIA) == "+1555***0101"
        assert mask_phone("client:alice") == "client:***" and mask_phone(None) == "(none)"

    def test_the_redactor_hides_secrets_numbers_emails_and_proofs(self):
        redactor = LogRedactor()
        redactor.add_secret(AUTH_TOKEN)
        text = redactor.redact(
            f"token {AUTH_TOKEN} from {MARIA} <maria.gonzalez@example.com> "
            "lookup_order(order_id='A1001', verification='94110') CAab12+15551230101x"
        )
        assert AUTH_TOKEN not in text and MARIA not in text and "maria.gonzalez" not in text and "94110" not in text
        assert "+1555***0101" in text and "m***@example.com" in text and "order_id='A1001'" in text
        assert "CAab12+1555***0101x" in text  # glued to other text, still masked

    def test_secrets_in_tracebacks_are_redacted_too(self):
        logger = logging.getLogger("telephony.test-redaction")
        REDACTOR.add_secret(OTHER_TOKEN)
        logger.addFilter(REDACTOR)
        lines: list[str] = []

        class Keep(logging.Handler):
            def emit(self, record):
                lines.append(self.format(record))

        handler = Keep()
        logger.addHandler(handler)
        try:
            try:
                raise RuntimeError(f"upstream said {OTHER_TOKEN}")
            except RuntimeError:
                logger.exception("failed calling with %s", OTHER_TOKEN)
        finally:
            logger.removeHandler(handler)
        assert lines and OTHER_TOKEN not in lines[0] and "[redacted]" in lines[0] and "RuntimeError" in lines[0]

    def test_numbers_can_be_shown_when_masking_is_off(self, tmp_path):
        gate = Gatekeeper(settings_for(tmp_path, MASK_PHONE_NUMBERS="false"))
        assert gate.show(MARIA) == MARIA
        assert Gatekeeper(settings_for(tmp_path)).show(MARIA) == "+1555***0101"
