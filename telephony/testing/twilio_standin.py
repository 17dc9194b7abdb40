"""A loopback stand-in for the few Twilio REST endpoints the agent uses.

Point the app at it with `TWILIO_API_BASE_URL=<stand-in url>` (plus its account sid and
auth token, see `env()`): twilio's real client then sends its real requests here, and
tests read back exactly what Twilio would have received (`requests`). The stand-in
checks requests the way Twilio does (docs/twilio-media-streams.md §7): HTTP Basic auth with
the account sid and auth token, the account in the path, form-encoded bodies, required
and enumerated parameters; it answers with Twilio-shaped JSON (sids, statuses, paging)
and Twilio's error bodies (`{"code", "message", "more_info", "status"}`).

Endpoints (all under `/2010-04-01/Accounts/{AccountSid}`):

| request | what |
|---|---|
| `GET .json` (the account itself) | credentials check |
| `POST /Calls.json` | create a call: To, From, Url or Twiml, Method, StatusCallback…, MachineDetection |
| `POST /Calls/{CallSid}.json` | update a live call: Twiml, Url/Method, Status=completed/canceled |
| `GET /Calls/{CallSid}.json` | fetch a call |
| `GET /IncomingPhoneNumbers.json?PhoneNumber=` | find an owned number (`add_number` first) |
| `GET`/`POST /IncomingPhoneNumbers/{PNsid}.json` | fetch / update VoiceUrl, VoiceMethod, StatusCallback… |

Updates to any well-formed CallSid succeed (the simulated inbound calls were never
created here) until the call has ended: after `Status=completed`, or `end_call(sid)`,
Twilio's 404 with code 20404 comes back, as for a caller who already hung up.

`answer(call_sid, via=...)` plays Twilio's side of an outbound call being answered: it
POSTs the call's `Url` a signed voice webhook (X-Twilio-Signature for the URL Twilio was
given, delivered to `via`, as a tunnel would) and returns the TwiML.

The callbacks of a contact centre, each as Twilio documents and signs it:

- `amd_verdict(call_sid, answered_by)`: the asynchronous answering-machine verdict, to the
  call's AsyncAmdStatusCallback (AnsweredBy: human, machine_start, machine_end_beep,
  machine_end_silence, machine_end_other, fax, unknown; MachineDetectionDuration in ms);
- `call_status(call_sid, status)`: a call's final status callback (completed, busy,
  no-answer, failed, canceled), to its StatusCallback; the call is over afterwards;
- `gather(action_url, call_sid, digits=|speech=)`: the action request of a `<Gather>`
  (Digits, or SpeechResult with Confidence; neither: the Redirect after a silent Gather);
- `conference(call_sid)`: the `<Conference>` the call's TwiML (its last update) dialled into,
  with its attributes; `conference_event(call_sid, event, participant)`: its status callback
  (conference-start, conference-end, participant-join, participant-leave), and
  `hold_music(call_sid)`: the request for its waitUrl.

`inbound_call(...)` plays a whole inbound call as Twilio runs it: the voice webhook,
then the TwiML it answers. A `<Connect><Stream>` opens a signed media stream (a
`CallSimulator` playing the caller's audio on the call's own clock, so what the caller
says while no stream is open is lost, as on a real line); when the *server* closes that
stream, Twilio requests the `<Connect action>` URL and runs the TwiML it returns, which
may be a new `<Connect><Stream>` (docs/twilio-media-streams.md §5, §9). A `stop` from the
caller (hanging up) ends the call without asking the action.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import hmac
import itertools
import json
import re
import threading
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from twilio.request_validator import RequestValidator

__all__ = ["TwilioStandIn", "RestRequest", "WebhookAnswer", "FollowedCall", "CallLeg", "STANDIN_ACCOUNT_SID",
           "STANDIN_AUTH_TOKEN"]

STANDIN_ACCOUNT_SID = "AC" + "5a" * 16
STANDIN_AUTH_TOKEN = "5a" * 16
API_VERSION = "2010-04-01"

_SID_RE = {"CA": re.compile(r"CA[0-9a-fA-F]{32}"), "PN": re.compile(r"PN[0-9a-fA-F]{32}")}
_E164_RE = re.compile(r"\+[1-9]\d{6,14}")
_TO_RE = re.compile(r"\+[1-9]\d{6,14}|sip:[^\s]+@[^\s]+|client:[A-Za-z0-9_.-]+")
_MAX_BODY = 1 << 20
_MAX_TWIML = 4000  # Twilio's limit on inline TwiML


@dataclass(frozen=True)
class RestRequest:
    """One request as the stand-in received it (whether or not it was accepted)."""

    method: str
    path: str
    kind: str  # account.fetch, calls.create, calls.update, calls.fetch, numbers.list, numbers.fetch, numbers.update, unknown
    query: dict[str, str]
    params: dict[str, str]  # the form body; for repeated names the last value (see `getall`)
    pairs: tuple[tuple[str, str], ...]
    content_type: str
    auth: tuple[str, str] | None  # (user, password) from Basic auth
    status: int  # what the stand-in answered
    at: float  # time.monotonic() when it arrived
    call_sid: str | None = None

    def getall(self, name: str) -> list[str]:
        return [v for k, v in self.pairs if k == name]


@dataclass(frozen=True)
class WebhookAnswer:
    status: int
    body: str
    headers: dict[str, str] = field(default_factory=dict)


class _Refusal(Exception):
    def __init__(self, status: int, code: int, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _now_rfc2822() -> str:
    return email.utils.formatdate(usegmt=True).replace("GMT", "+0000")


class TwilioStandIn:
    """The stand-in server; use as a context manager or `start()` / `stop()`."""

    def __init__(self, account_sid: str = STANDIN_ACCOUNT_SID, auth_token: str = STANDIN_AUTH_TOKEN,
                 host: str = "127.0.0.1", port: int = 0):
        self.account_sid = account_sid
        self.auth_token = auth_token
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._requests: list[RestRequest] = []
        self.calls: dict[str, dict[str, Any]] = {}
        self.numbers: dict[str, dict[str, Any]] = {}
        self._ended: set[str] = set()
        self._failures: dict[str, list[tuple[int, int, str]]] = {}
        self._sequence: dict[str, int] = {}
        self._conference_sids: dict[str, str] = {}
        self._serial = itertools.count(1)
        standin = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "TwilioStandIn/1.0"

            def do_GET(self) -> None:
                standin._handle(self)

            def do_POST(self) -> None:
                standin._handle(self)

            def do_DELETE(self) -> None:
                standin._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="twilio-standin", daemon=True)

    # ------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def env(self) -> dict[str, str]:
        """The variables that point the app's REST client here."""
        return {"TWILIO_ACCOUNT_SID": self.account_sid, "TWILIO_AUTH_TOKEN": self.auth_token,
                "TWILIO_API_BASE_URL": self.url}

    def start(self) -> "TwilioStandIn":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> "TwilioStandIn":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------ what tests set up and read

    @property
    def requests(self) -> list[RestRequest]:
        with self._lock:
            return list(self._requests)

    def requests_of(self, kind: str, call_sid: str | None = None) -> list[RestRequest]:
        return [r for r in self.requests if r.kind == kind and (call_sid is None or r.call_sid == call_sid)]

    def wait_for(self, kind: str, count: int = 1, timeout: float = 5.0, call_sid: str | None = None) -> list[RestRequest]:
        """Block until `count` requests of `kind` arrived (REST calls happen on the server's loop)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [r for r in self._requests if r.kind == kind and (call_sid is None or r.call_sid == call_sid)]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{len(found)} {kind} request(s) after {timeout} s, wanted {count}")
                self._changed.wait(left)

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()

    def add_number(self, phone_number: str, voice_url: str | None = None, voice_method: str = "POST",
                   friendly_name: str | None = None) -> str:
        """Make the account own `phone_number`; returns its PN sid."""
        if not _E164_RE.fullmatch(phone_number):
            raise ValueError(f"{phone_number!r} is not an E.164 number")
        sid = self._sid("PN")
        now = _now_rfc2822()
        with self._lock:
            self.numbers[sid] = {
                "sid": sid, "account_sid": self.account_sid, "phone_number": phone_number,
                "friendly_name": friendly_name or phone_number, "voice_url": voice_url, "voice_method": voice_method,
                "voice_fallback_url": None, "voice_fallback_method": "POST", "status_callback": None,
                "status_callback_method": "POST", "sms_url": None, "sms_method": "POST",
                "capabilities": {"voice": True, "sms": True, "mms": True, "fax": False},
                "api_version": API_VERSION, "date_created": now, "date_updated": now,
                "uri": f"{self._account_path()}/IncomingPhoneNumbers/{sid}.json",
            }
        return sid

    def end_call(self, call_sid: str) -> None:
        """From now on, updates to `call_sid` answer 404 / 20404 (the caller already hung up)."""
        with self._lock:
            self._ended.add(call_sid)
            if call_sid in self.calls:
                self.calls[call_sid]["status"] = "completed"

    def fail_next(self, kind: str, status: int = 500, code: int = 20500, message: str = "Internal Server Error") -> None:
        """Answer the next request of `kind` with this error (after checking its auth)."""
        with self._lock:
            self._failures.setdefault(kind, []).append((status, code, message))

    def answer(self, call_sid: str, via: str, answered_by: str | None = None, timeout: float = 10.0) -> WebhookAnswer:
        """Twilio's voice webhook for an outbound call the callee just answered.

        Signed for the call's `Url` exactly as Twilio signs it, but delivered to the
        origin `via` (the server's loopback address), as a tunnel or proxy would.
        """
        with self._lock:
            call = dict(self.calls[call_sid])
        url = call["_url"]
        if not url:
            raise ValueError(f"call {call_sid} was created with inline TwiML, there is no webhook to request")
        form = {
            "AccountSid": self.account_sid, "ApiVersion": API_VERSION, "CallSid": call_sid, "CallStatus": "in-progress",
            "Called": call["to"], "Caller": call["from"], "Direction": "outbound-api", "From": call["from"],
            "To": call["to"], "CallerCountry": "US", "CalledCountry": "US",
        }
        if answered_by:
            form["AnsweredBy"] = answered_by
        with self._lock:
            self.calls[call_sid]["status"] = "in-progress"
            self.calls[call_sid]["answered_by"] = answered_by
        return self.post_webhook(url, form, via=via, method=call["_method"], timeout=timeout)

    def amd_verdict(self, call_sid: str, answered_by: str, via: str, duration_ms: int = 3500) -> WebhookAnswer:
        """Twilio's AsyncAmdStatusCallback for an outbound call created with AsyncAmd=true."""
        with self._lock:
            call = dict(self.calls[call_sid])
            self.calls[call_sid]["answered_by"] = answered_by
        params = call["_params"]
        if params.get("AsyncAmd") != "true" or not params.get("AsyncAmdStatusCallback"):
            raise ValueError(f"call {call_sid} was not created with asynchronous answering-machine detection")
        form = {"AccountSid": self.account_sid, "CallSid": call_sid, "AnsweredBy": answered_by,
                "MachineDetectionDuration": str(duration_ms)}
        return self.post_webhook(params["AsyncAmdStatusCallback"], form, via=via,
                                 method=params.get("AsyncAmdStatusCallbackMethod", "POST").upper())

    def call_status(self, call_sid: str, status: str, via: str, duration_s: int = 0) -> WebhookAnswer | None:
        """A call's final status callback (to its StatusCallback, if it has one); the call ends."""
        if status not in ("completed", "busy", "no-answer", "failed", "canceled"):
            raise ValueError(f"{status!r} is not a final call status")
        self.end_call(call_sid)
        with self._lock:
            call = dict(self.calls[call_sid])
            self._sequence[call_sid] = self._sequence.get(call_sid, -1) + 1
            sequence = self._sequence[call_sid]
        url = call["_params"].get("StatusCallback")
        if not url:
            return None
        form = {"AccountSid": self.account_sid, "ApiVersion": API_VERSION, "CallSid": call_sid, "CallStatus": status,
                "Called": call["to"], "Caller": call["from"], "Direction": call["direction"], "From": call["from"],
                "To": call["to"], "CallDuration": str(duration_s), "Duration": str((duration_s + 59) // 60),
                "SequenceNumber": str(sequence), "Timestamp": _now_rfc2822(), "CallbackSource": "call-progress-events"}
        return self.post_webhook(url, form, via=via, method=call["_params"].get("StatusCallbackMethod", "POST").upper())

    def gather(self, action_url: str, call_sid: str, via: str, digits: str | None = None,
               speech: str | None = None) -> WebhookAnswer:
        """The action request of a `<Gather>`: what the person pressed or said (or nothing)."""
        with self._lock:
            call = dict(self.calls.get(call_sid) or self._unknown_call(call_sid))
        form = {"AccountSid": self.account_sid, "ApiVersion": API_VERSION, "CallSid": call_sid,
                "CallStatus": "in-progress", "Called": call["to"], "Caller": call["from"],
                "Direction": call["direction"], "From": call["from"], "To": call["to"]}
        if digits is not None:
            form["Digits"] = digits
            form["FinishedOnKey"] = ""
        if speech is not None:
            form.update(SpeechResult=speech, Confidence="0.92")
        return self.post_webhook(action_url, form, via=via)

    def conference(self, call_sid: str) -> dict[str, str]:
        """The `<Conference>` the call was last put in by TwiML: its name and attributes."""
        with self._lock:
            twiml = (self.calls.get(call_sid) or {}).get("_twiml")
        if not twiml:
            raise ValueError(f"call {call_sid} has no TwiML")
        node = ET.fromstring(twiml).find("./Dial/Conference")
        if node is None:
            raise ValueError(f"call {call_sid}'s TwiML has no <Dial><Conference>: {twiml}")
        return {"name": node.text or "", **node.attrib}

    def conference_event(self, call_sid: str, event: str, via: str, participant: str | None = None,
                         reason: str | None = None) -> WebhookAnswer:
        """The conference status callback of the conference `call_sid` is in (its statusCallback);
        `participant` is the CallSid joining or leaving (default: `call_sid`)."""
        if event not in ("conference-start", "conference-end", "participant-join", "participant-leave",
                         "participant-mute", "participant-unmute", "participant-hold", "participant-unhold"):
            raise ValueError(f"{event!r} is not a conference status callback event")
        conference = self.conference(call_sid)
        url = conference.get("statusCallback")
        if not url:
            raise ValueError(f"call {call_sid}'s conference has no statusCallback")
        wanted = conference.get("statusCallbackEvent", "").split()
        short = event.removeprefix("participant-").removeprefix("conference-")
        if short not in wanted:
            raise ValueError(f"the conference did not ask for {event} (statusCallbackEvent={wanted})")
        with self._lock:
            name = conference["name"]
            self._sequence[name] = self._sequence.get(name, 0) + 1
            sequence = self._sequence[name]
            conference_sid = self._conference_sids.setdefault(name, self._sid("CF"))
        form = {"AccountSid": self.account_sid, "ConferenceSid": conference_sid, "FriendlyName": name,
                "StatusCallbackEvent": event, "SequenceNumber": str(sequence), "Timestamp": _now_rfc2822()}
        if event.startswith("participant-"):
            form.update(CallSid=participant or call_sid, Muted="false", Hold="false", Coaching="false",
                        EndConferenceOnExit=conference.get("endConferenceOnExit", "false"),
                        StartConferenceOnEnter=conference.get("startConferenceOnEnter", "true"))
        if event == "conference-end":
            form["ReasonConferenceEnded"] = reason or "participant-with-end-conference-on-exit-left"
            form["CallSidEndingConference"] = participant or call_sid
        return self.post_webhook(url, form, via=via, method=conference.get("statusCallbackMethod", "POST").upper())

    def hold_music(self, call_sid: str, via: str) -> WebhookAnswer:
        """The request for the waitUrl of the conference `call_sid` waits in."""
        conference = self.conference(call_sid)
        with self._lock:
            conference_sid = self._conference_sids.setdefault(conference["name"], self._sid("CF"))
        form = {"AccountSid": self.account_sid, "CallSid": call_sid, "ConferenceSid": conference_sid,
                "FriendlyName": conference["name"], "ApiVersion": API_VERSION}
        return self.post_webhook(conference["waitUrl"], form, via=via,
                                 method=conference.get("waitMethod", "POST").upper())

    def post_webhook(self, url: str, form: dict[str, str], via: str | None = None, method: str = "POST",
                     timeout: float = 10.0) -> WebhookAnswer:
        """Request a webhook as Twilio would: signed for `url`, delivered to `via` if given."""
        signature = RequestValidator(self.auth_token).compute_signature(url, form if method == "POST" else {})
        target = url
        if via:
            parts, base = urlsplit(url), urlsplit(via)
            target = urlunsplit((base.scheme, base.netloc, parts.path, parts.query, ""))
        body = "&".join(f"{_quote(k)}={_quote(v)}" for k, v in form.items()).encode("ascii")
        request = urllib.request.Request(
            target, data=body if method == "POST" else None, method=method,
            headers={"X-Twilio-Signature": signature, "Content-Type": "application/x-www-form-urlencoded",
                     "User-Agent": "TwilioProxy/1.1", "I-Twilio-Idempotency-Token": self._sid("ID")[2:]},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return WebhookAnswer(response.status, response.read().decode("utf-8"), dict(response.headers))
        except urllib.error.HTTPError as exc:
            return WebhookAnswer(exc.code, exc.read().decode("utf-8", errors="replace"), dict(exc.headers))

    async def inbound_call(self, *, via: str, public_url: str, call_sid: str, caller: str, called: str,
                           segments: list, hang_up: bool = True, linger: float = 2.0,
                           first_via: str | None = None) -> FollowedCall:
        """Run an inbound call as Twilio would, following `<Connect action>` (module docstring).

        `segments` (recordings.Silence, Tone, Speech, Dtmf) are what the caller says on the
        call's clock; with `hang_up` the caller hangs up when they are over. The webhook
        and the first stream go to `first_via` if given (a call placed on one instance),
        everything after to `via`."""
        from telephony.testing.recordings import build_messages

        rendered = build_messages(segments, call_sid=call_sid, account_sid=self.account_sid)
        frames = [m for m in rendered if m["event"] in ("media", "dtmf")]
        end_s = (len([m for m in frames if m["event"] == "media"]) * 0.02) if hang_up else None
        return await _Inbound(self, via, public_url, call_sid, caller, called, frames, end_s, linger,
                              first_via).run()

    # ------------------------------------------------------------ the server side

    def _sid(self, prefix: str) -> str:
        return f"{prefix}{next(self._serial):032x}"

    def _account_path(self) -> str:
        return f"/{API_VERSION}/Accounts/{self.account_sid}"

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(handler.path)
        method = handler.command
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(min(length, _MAX_BODY)) if length else b""
        content_type = (handler.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        pairs: tuple[tuple[str, str], ...] = ()
        if raw and content_type == "application/x-www-form-urlencoded":
            pairs = tuple(parse_qsl(raw.decode("utf-8", errors="replace"), keep_blank_values=True))
        auth = _basic_auth(handler.headers.get("Authorization"))
        kind, call_sid, sid = _route(method, parts.path)
        try:
            if length > _MAX_BODY:
                raise _Refusal(413, 20413, "Request entity too large")
            self._check_auth(auth, parts.path)
            if method == "POST" and raw and content_type != "application/x-www-form-urlencoded":
                raise _Refusal(400, 20001, "Parameters must be form-encoded (application/x-www-form-urlencoded)")
            with self._lock:
                failures = self._failures.get(kind)
                failure = failures.pop(0) if failures else None
            if failure is not None:
                raise _Refusal(*failure)
            status, body = self._answer(kind, sid, query, dict(pairs), pairs, parts.path)
        except _Refusal as exc:
            status = exc.status
            body = {"code": exc.code, "message": exc.message,
                    "more_info": f"https://www.twilio.com/docs/errors/{exc.code}", "status": exc.status}
        self._record(RestRequest(method, parts.path, kind, query, dict(pairs), pairs, content_type, auth, status,
                                 time.monotonic(), call_sid))
        data = json.dumps(body).encode("utf-8")
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json; charset=utf-8")
        handler.send_header("Content-Length", str(len(data)))
        handler.send_header("Twilio-Request-Id", self._sid("RQ"))
        handler.end_headers()
        handler.wfile.write(data)

    def _record(self, request: RestRequest) -> None:
        with self._changed:
            self._requests.append(request)
            self._changed.notify_all()

    def _check_auth(self, auth: tuple[str, str] | None, path: str) -> None:
        if auth is None or not (hmac.compare_digest(auth[0], self.account_sid)
                                and hmac.compare_digest(auth[1], self.auth_token)):
            raise _Refusal(401, 20003, "Authentication Error - invalid username")
        if not path.startswith(self._account_path() + "/") and path != self._account_path() + ".json":
            raise _Refusal(404, 20404, f"The requested resource {path} was not found")

    def _answer(self, kind: str, sid: str | None, query: dict[str, str], form: dict[str, str],
                pairs: tuple[tuple[str, str], ...], path: str) -> tuple[int, dict[str, Any]]:
        not_found = _Refusal(404, 20404, f"The requested resource {path} was not found")
        if kind == "account.fetch":
            return 200, self._account()
        if kind == "calls.create":
            return 201, self._create_call(form, pairs)
        if kind in ("calls.update", "calls.fetch"):
            assert sid is not None
            with self._lock:
                if sid in self._ended or not _SID_RE["CA"].fullmatch(sid):
                    raise not_found
                call = self.calls.get(sid) or self._unknown_call(sid)
                if kind == "calls.update":
                    self._update_call(call, form)
                    self.calls[sid] = call
                return 200, _public(call)
        if kind == "numbers.list":
            wanted = query.get("PhoneNumber")
            with self._lock:
                found = [_public(n) for n in self.numbers.values() if not wanted or n["phone_number"] == wanted]
            size = int(query.get("PageSize") or 50)
            return 200, {
                "incoming_phone_numbers": found[:size], "page": 0, "page_size": size, "start": 0,
                "end": max(len(found[:size]) - 1, 0), "first_page_uri": path, "previous_page_uri": None,
                "next_page_uri": None, "uri": path,
            }
        if kind in ("numbers.fetch", "numbers.update"):
            with self._lock:
                number = self.numbers.get(sid or "")
                if number is None:
                    raise not_found
                if kind == "numbers.update":
                    _update_number(number, form)
                return 200, _public(number)
        raise not_found

    def _account(self) -> dict[str, Any]:
        path = self._account_path()
        return {"sid": self.account_sid, "owner_account_sid": self.account_sid, "friendly_name": "Stand-in account",
                "status": "active", "type": "Full", "date_created": _now_rfc2822(), "date_updated": _now_rfc2822(),
                "uri": f"{path}.json", "subresource_uris": {"calls": f"{path}/Calls.json"}}

    def _create_call(self, form: dict[str, str], pairs: tuple[tuple[str, str], ...]) -> dict[str, Any]:
        to, from_ = form.get("To"), form.get("From")
        if not to:
            raise _Refusal(400, 21201, "No 'To' number is specified")
        if not _TO_RE.fullmatch(to):
            raise _Refusal(400, 21211, f"Invalid 'To' Phone Number: {to}")
        if not from_:
            raise _Refusal(400, 21213, "No 'From' number is specified")
        url, twiml = form.get("Url"), form.get("Twiml")
        if not url and not twiml and not form.get("ApplicationSid"):
            raise _Refusal(400, 21205, "Url parameter is required")
        if url:
            _check_url(url, 21205, "Url")
        elif twiml:
            _check_twiml(twiml)
        for name in ("Method", "StatusCallbackMethod", "FallbackMethod"):
            if name in form and form[name].upper() not in ("GET", "POST"):
                raise _Refusal(400, 21209, f"Invalid {name}: {form[name]}")
        if "StatusCallback" in form:
            _check_url(form["StatusCallback"], 21609, "StatusCallback")
        events = [e for k, v in pairs if k == "StatusCallbackEvent" for e in v.split()]
        bad = [e for e in events if e not in ("initiated", "ringing", "answered", "completed")]
        if bad:
            raise _Refusal(400, 21626, f"Invalid StatusCallbackEvent: {bad[0]}")
        if "MachineDetection" in form and form["MachineDetection"] not in ("Enable", "DetectMessageEnd"):
            raise _Refusal(400, 21207, f"Invalid MachineDetection: {form['MachineDetection']}")
        if "AsyncAmd" in form and form["AsyncAmd"] not in ("true", "false"):
            raise _Refusal(400, 21207, f"Invalid AsyncAmd: {form['AsyncAmd']} (true or false)")
        if "AsyncAmdStatusCallback" in form:
            _check_url(form["AsyncAmdStatusCallback"], 21207, "AsyncAmdStatusCallback")
        if "Timeout" in form and not (form["Timeout"].isdigit() and 5 <= int(form["Timeout"]) <= 600):
            raise _Refusal(400, 21207, f"Invalid Timeout: {form['Timeout']} (5 to 600 seconds)")
        with self._lock:
            if from_ not in {n["phone_number"] for n in self.numbers.values()} and self.numbers:
                raise _Refusal(400, 21210, f"The source phone number provided, {from_}, is not yet verified for your account")
            sid = self._sid("CA")
            call = self._call_resource(sid, to, from_, "queued", "outbound-api")
            call["_url"], call["_method"] = (url if url else None), form.get("Method", "POST").upper()
            call["_twiml"] = None if url else twiml
            call["_params"] = dict(form)
            self.calls[sid] = call
        return _public(call)

    def _unknown_call(self, sid: str) -> dict[str, Any]:
        """A call this stand-in never created (a simulated inbound call): in progress until ended."""
        return self._call_resource(sid, "+15559870000", "+15551230101", "in-progress", "inbound")

    def _call_resource(self, sid: str, to: str, from_: str, status: str, direction: str) -> dict[str, Any]:
        path = f"{self._account_path()}/Calls/{sid}"
        now = _now_rfc2822()
        return {
            "sid": sid, "account_sid": self.account_sid, "parent_call_sid": None, "to": to, "to_formatted": to,
            "from": from_, "from_formatted": from_, "phone_number_sid": None, "status": status,
            "start_time": None, "end_time": None, "duration": None, "price": None, "price_unit": "USD",
            "direction": direction, "answered_by": None, "api_version": API_VERSION, "forwarded_from": None,
            "group_sid": None, "caller_name": None, "queue_time": "0", "trunk_sid": None,
            "date_created": now, "date_updated": now, "uri": f"{path}.json",
            "subresource_uris": {"notifications": f"{path}/Notifications.json", "recordings": f"{path}/Recordings.json",
                                 "streams": f"{path}/Streams.json"},
            "_url": None, "_method": "POST", "_twiml": None, "_params": {},
        }

    def _update_call(self, call: dict[str, Any], form: dict[str, str]) -> None:
        status = form.get("Status")
        if status is not None and status not in ("completed", "canceled"):
            raise _Refusal(400, 20001, f"Invalid Status: {status} (completed or canceled)")
        if "Method" in form and form["Method"].upper() not in ("GET", "POST"):
            raise _Refusal(400, 21209, f"Invalid Method: {form['Method']}")
        if "Url" in form:
            _check_url(form["Url"], 21205, "Url")
        if "Twiml" in form:
            _check_twiml(form["Twiml"])
        if status is None and not ({"Url", "Twiml"} & form.keys()) and not form.get("StatusCallback"):
            raise _Refusal(400, 20001, "One of Url, Twiml or Status is required")
        if status is not None:
            call["status"] = status
            self._ended.add(call["sid"])
        elif {"Url", "Twiml"} & form.keys():
            call["_url"], call["_twiml"] = form.get("Url"), form.get("Twiml")
        call["date_updated"] = _now_rfc2822()


# --------------------------------------------------------------------------- a whole inbound call


@dataclass
class CallLeg:
    """One media stream of a call: the TwiML that opened it and what happened on it."""

    twiml: str
    stream: Any  # a simulator.SimulatedCall
    from_s: float  # the call time (seconds since the first stream opened) at which it opened
    first_frame_s: float | None = None  # the call time at which its first caller frame begins

    @property
    def first_agent_audio(self) -> float | None:
        """time.monotonic() of the first agent audio the caller heard on this leg."""
        return self.stream.started_at + self.stream.spans[0][0] if self.stream.spans else None

    @property
    def last_agent_audio(self) -> float | None:
        """time.monotonic() at which the last agent audio heard on this leg ended."""
        return self.stream.started_at + self.stream.spans[-1][1] if self.stream.spans else None

    def sent_media(self) -> tuple[float, float] | None:
        """The call time covered by the caller frames sent on this leg: (start, end)."""
        count = sum(r.detail["count"] for r in self.stream.of_kind("sent_media"))
        if not count or self.first_frame_s is None:
            return None
        return self.first_frame_s, self.first_frame_s + count * 0.02


@dataclass
class FollowedCall:
    """An inbound call as Twilio ran it: every leg, and the TwiML that ended it."""

    call_sid: str
    first_twiml: str = ""
    legs: list[CallLeg] = field(default_factory=list)
    final_twiml: str | None = None  # the last TwiML run that opened no stream (None: the caller hung up)
    action_requests: int = 0

    @property
    def heard(self) -> bytes:
        return b"".join(leg.stream.played_audio for leg in self.legs)

    def gaps(self) -> list[float]:
        """Seconds of silence the caller heard at each change of stream: from the last agent
        audio of one leg to the first of the next (legs with no agent audio are skipped)."""
        out = []
        for one, two in zip(self.legs, self.legs[1:]):
            end, start = one.last_agent_audio, two.first_agent_audio
            if end is not None and start is not None:
                out.append(start - end)
        return out

    def caller_audio_lost(self) -> list[float]:
        """Seconds of the caller's audio sent to no stream at each change of stream."""
        out = []
        for one, two in zip(self.legs, self.legs[1:]):
            a, b = one.sent_media(), two.sent_media()
            if a is not None and b is not None:
                out.append(max(0.0, b[0] - a[1]))
        return out


def _stream_of(twiml: str) -> tuple[str, str | None, dict[str, str]] | None:
    """(stream url, action url, parameters) of a <Connect><Stream>, or None."""
    root = ET.fromstring(twiml)
    connect = root.find("./Connect")
    stream = connect.find("Stream") if connect is not None else None
    if stream is None:
        return None
    return stream.get("url"), connect.get("action"), {p.get("name"): p.get("value") for p in stream.findall("Parameter")}


class _Inbound:
    def __init__(self, standin: "TwilioStandIn", via: str, public_url: str, call_sid: str, caller: str, called: str,
                 frames: list[dict[str, Any]], end_s: float | None, linger: float, first_via: str | None = None):
        self.standin, self.via, self.public_url = standin, via, public_url.rstrip("/")
        self.first_via = first_via or via
        self.call_sid, self.caller, self.called = call_sid, caller, called
        self.frames, self.end_s, self.linger = frames, end_s, linger
        self.t0: float | None = None

    def form(self, status: str) -> dict[str, str]:
        return {"AccountSid": self.standin.account_sid, "ApiVersion": API_VERSION, "CallSid": self.call_sid,
                "CallStatus": status, "Direction": "inbound", "From": self.caller, "To": self.called,
                "Called": self.called, "Caller": self.caller}

    async def run(self) -> FollowedCall:
        import asyncio

        result = FollowedCall(self.call_sid)
        answer = await asyncio.to_thread(self.standin.post_webhook, f"{self.public_url}/incoming-call",
                                         self.form("ringing"), self.first_via)
        twiml = result.first_twiml = answer.body
        while True:
            found = _stream_of(twiml) if answer.status == 200 else None
            if found is None:
                result.final_twiml = twiml
                return result
            url, action, parameters = found
            leg = await self.stream(twiml, url, parameters)
            result.legs.append(leg)
            if leg.stream.of_kind("sent_stop") or not action:
                return result  # the caller hung up: Twilio asks nothing more
            result.action_requests += 1
            answer = await asyncio.to_thread(self.standin.post_webhook, action, self.form("in-progress"), self.via)
            twiml = answer.body

    async def stream(self, twiml: str, url: str, parameters: dict[str, str]) -> CallLeg:
        import time as clock

        from telephony.testing.simulator import CallSimulator

        now = clock.monotonic()
        if self.t0 is None:
            self.t0 = now
        from_s = now - self.t0
        stream_sid = self.standin._sid("MZ")
        messages: list[dict[str, Any]] = [
            {"event": "connected", "protocol": "Call", "version": "1.0.0"},
            {"event": "start", "sequenceNumber": "1", "streamSid": stream_sid, "start": {
                "accountSid": self.standin.account_sid, "streamSid": stream_sid, "callSid": self.call_sid,
                "tracks": ["inbound"], "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                "customParameters": dict(parameters)}},
        ]
        for frame in self.frames:  # the caller's audio from now on; what fell between streams is lost
            if frame["event"] == "media" and int(frame["media"]["timestamp"]) <= from_s * 1000:
                continue
            if frame["event"] == "dtmf" and messages[-1]["event"] == "start":
                continue
            messages.append({**frame, "streamSid": stream_sid})
        if self.end_s is not None:
            messages.append({"event": "stop", "sequenceNumber": "0", "streamSid": stream_sid,
                             "stop": {"accountSid": self.standin.account_sid, "callSid": self.call_sid}})
        signature = RequestValidator(self.standin.auth_token).compute_signature(url, {})
        parts, base = urlsplit(url), urlsplit(self.first_via if self.t0 == now else self.via)
        target = urlunsplit(("wss" if base.scheme == "https" else "ws", base.netloc, parts.path, "", ""))
        stream = await CallSimulator(target, messages, headers={"X-Twilio-Signature": signature}, speed=1.0,
                                     linger=self.linger).run()
        first = next((m for m in messages if m["event"] == "media"), None)
        first_frame_s = int(first["media"]["timestamp"]) / 1000 - 0.02 if first else None
        return CallLeg(twiml, stream, from_s, first_frame_s)


# --------------------------------------------------------------------------- helpers


def _quote(text: str) -> str:
    from urllib.parse import quote_plus

    return quote_plus(text, safe="")


def _public(resource: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resource.items() if not k.startswith("_")}


def _basic_auth(header: str | None) -> tuple[str, str] | None:
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        user, sep, password = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (user, password) if sep else None


_ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    ("GET", re.compile(r"/2010-04-01/Accounts/(AC\w+)\.json"), "account.fetch"),
    ("POST", re.compile(r"/2010-04-01/Accounts/(AC\w+)/Calls\.json"), "calls.create"),
    ("POST", re.compile(r"/2010-04-01/Accounts/(AC\w+)/Calls/(\w+)\.json"), "calls.update"),
    ("GET", re.compile(r"/2010-04-01/Accounts/(AC\w+)/Calls/(\w+)\.json"), "calls.fetch"),
    ("GET", re.compile(r"/2010-04-01/Accounts/(AC\w+)/IncomingPhoneNumbers\.json"), "numbers.list"),
    ("GET", re.compile(r"/2010-04-01/Accounts/(AC\w+)/IncomingPhoneNumbers/(\w+)\.json"), "numbers.fetch"),
    ("POST", re.compile(r"/2010-04-01/Accounts/(AC\w+)/IncomingPhoneNumbers/(\w+)\.json"), "numbers.update"),
]


def _route(method: str, path: str) -> tuple[str, str | None, str | None]:
    """(kind, call sid, resource sid) of a request."""
    for verb, pattern, kind in _ROUTES:
        match = pattern.fullmatch(path)
        if match and verb == method:
            sid = match.group(2) if match.lastindex and match.lastindex >= 2 else None
            return kind, (sid if kind.startswith("calls.") else None), sid
    return "unknown", None, None


def _check_url(url: str, code: int, name: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise _Refusal(400, code, f"{name} is not a valid URL: {url}")


def _check_twiml(twiml: str) -> None:
    if len(twiml) > _MAX_TWIML:
        raise _Refusal(400, 21232, f"Twiml is longer than {_MAX_TWIML} characters")
    try:
        root = ET.fromstring(twiml)
    except ET.ParseError as exc:
        raise _Refusal(400, 12100, f"Document parse failure: {exc}") from None
    if root.tag != "Response":
        raise _Refusal(400, 12100, "Document parse failure: the root element must be <Response>")


def _update_number(number: dict[str, Any], form: dict[str, str]) -> None:
    fields = {"VoiceUrl": "voice_url", "VoiceMethod": "voice_method", "VoiceFallbackUrl": "voice_fallback_url",
              "VoiceFallbackMethod": "voice_fallback_method", "StatusCallback": "status_callback",
              "StatusCallbackMethod": "status_callback_method", "FriendlyName": "friendly_name"}
    for name, value in form.items():
        if name.endswith("Method") and value.upper() not in ("GET", "POST"):
            raise _Refusal(400, 21209, f"Invalid {name}: {value}")
        if name in ("VoiceUrl", "VoiceFallbackUrl", "StatusCallback") and value:
            _check_url(value, 21502, name)
    for name, attr in fields.items():
        if name in form:
            number[attr] = form[name].upper() if name.endswith("Method") else form[name]
    number["date_updated"] = _now_rfc2822()
