"""Run a scenario as a real phone call and check what happened.

Each run goes through the route a real call takes: a Twilio Media Stream into the
real server (uvicorn on loopback), the bridge, and a Live session. What plays the
model is the only difference between the modes:

- offline (the default): the Live emulator answers as the scenario scripts it (each
  caller line's `reply`), so no key or network is needed. The business's tools, mocks,
  keypad handling, endings, transfers, interruptions and latency of our own pipeline
  are real; the model's own choices and words are not, so criteria are reported as
  "not checked" and never as passed.
- live (`--live`): the real Live model runs the agent; the caller's voice is a second
  Live session (scenario_live.py) and a text model judges the criteria.

The checks (one `Check` each) are computed from what the caller's side observed
(`SimulatedCall`), the server's own call summary, and every tool call as the agent's
tool registry saw it (`ObservedTools`, which also applies the mocks).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import json
import logging
import os
import secrets
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

from .errors import InvalidArguments, SettingsError, UnknownTool
from .scenarios import DEFAULT_PAUSE_S, DEFAULT_REPLY_WAIT_S, Ending, Scenario, ScenarioError, StepKind, ToolMock

__all__ = ["Check", "ObservedTools", "RunResult", "Status", "ToolCallSeen", "run_scenario", "scripted_model"]

log = logging.getLogger(__name__)

DEFAULT_FROM = "+15551230101"
DEFAULT_TO = "+15559870000"
#: After the script's last line, how long the caller stays on the line for the agent to end the call.
END_WAIT_S = 10.0
#: Offline, a caller line without a scripted `reply` gets this short answer.
DEFAULT_REPLY = "Okay."
#: The variables a test call must not inherit: no Vertex AI, no Twilio verification.
CLEARED_ENV = ("GOOGLE_GENAI_USE_VERTEXAI", "GOOGLE_GENAI_USE_ENTERPRISE", "TWILIO_AUTH_TOKEN", "TWILIO_ACCOUNT_SID",
               "PUBLIC_URL", "REQUIRE_TWILIO_SIGNATURE", "STREAM_TOKEN_SECRET", "REDIS_URL", "DATABASE_URL")


class Status(enum.Enum):
    PASSED = "pass"
    FAILED = "FAIL"
    NOT_CHECKED = "not checked"


@dataclass(frozen=True)
class Check:
    what: str
    status: Status
    detail: str = ""


@dataclass(frozen=True)
class ToolCallSeen:
    name: str
    args: dict
    response: dict
    mocked: bool
    latency_ms: float
    started: float = 0.0
    """`time.monotonic()` when the call reached the registry."""

    def describe(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.args.items())
        return f"{self.name}({args})"


@dataclass
class RunResult:
    scenario: Scenario
    mode: str
    checks: list[Check] = field(default_factory=list)
    transcript: list[tuple[str, str]] = field(default_factory=list)
    """Both sides as the agent's Live session transcribed them (the server's call summary)."""
    caller_side: list[tuple[str, str]] = field(default_factory=list)
    """Live: what the caller session said and heard, as it transcribed them."""
    tools: list[ToolCallSeen] = field(default_factory=list)
    ending: str = ""
    end_reason: str | None = None
    turns: int | None = None
    interruptions: int = 0
    latencies: list[float | None] = field(default_factory=list)
    duration_s: float = 0.0
    cost_usd: float | None = None
    cost_detail: str = ""
    skipped: str | None = None
    error: str | None = None
    call_sid: str = ""

    @property
    def passed(self) -> bool:
        return self.skipped is None and self.error is None and all(c.status is not Status.FAILED for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.status is Status.FAILED]


# --------------------------------------------------------------------------- tools


class ObservedTools:
    """The agent's tool registry as a scenario runs it: every call is recorded, and the
    mocked tools answer their fixed result instead of running.

    A mocked call still goes through the registry's own argument checks, so a model
    sending a bad argument gets the same refusal it would get from the real tool.
    Everything else is the wrapped registry's (declarations, scheduling, timeouts).
    """

    def __init__(self, registry: Any, mocks: Mapping[str, ToolMock], *, strict: bool = True):
        unknown = sorted(set(mocks) - set(registry.names()))
        if unknown and strict:
            raise ScenarioError(f"tools.{unknown[0]}: the agent has no tool named {unknown[0]!r} "
                                f"(its tools: {', '.join(registry.names()) or 'none'})")
        self.inner = registry
        self.mocks = dict(mocks)
        self.seen: list[ToolCallSeen] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __contains__(self, name: object) -> bool:
        return name in self.inner

    def __len__(self) -> int:
        return len(self.inner)

    @property
    def default_timeout(self) -> float:
        return self.inner.default_timeout

    @default_timeout.setter
    def default_timeout(self, value: float) -> None:
        self.inner.default_timeout = value

    async def call(self, name: str, args: Mapping[str, Any] | None, ctx: Any = None, *,
                   timeout: float | None = None) -> dict[str, Any]:
        started = time.monotonic()
        mock = self.mocks.get(name)
        response: dict[str, Any] = {"error": "cancelled"}
        try:
            if mock is None:
                response = await self.inner.call(name, args, ctx, timeout=timeout)
            else:
                try:
                    self.inner.validate(name, args)
                except (UnknownTool, InvalidArguments) as exc:
                    response = {"error": str(exc)}
                else:
                    if mock.latency:
                        await asyncio.sleep(mock.latency)
                    response = {"error": mock.error} if mock.error is not None else {"result": mock.result}
            return response
        finally:
            self.seen.append(ToolCallSeen(str(name), dict(args or {}), response, mock is not None,
                                          round((time.monotonic() - started) * 1000, 1), started))


# --------------------------------------------------------------------------- offline model


def scripted_model(scenario: Scenario):
    """The emulator's `Script` for an offline run: the scenario's greeting and each line's reply."""
    from .testing.emulator import CallTool, Reply, Say, Script

    def say(text: str, freq: float) -> Say:
        words = len(text.split())
        return Say(text=text, seconds=min(6.0, max(0.8, 0.3 * words)), freq=freq)

    replies = []
    for step in scenario.steps:
        if step.kind is not StepKind.SAY:
            continue
        steps = [CallTool(m.call, dict(m.args)) if m.call else say(m.say or "", 520.0) for m in step.reply]
        replies.append(Reply(heard=step.text, steps=steps or [say(DEFAULT_REPLY, 520.0)]))
    greeting = [say(scenario.greeting or "Hello, thanks for calling! How can I help?", 440.0)]
    # The model's audio is paced at real time, as a phone caller hears it.
    return Script(greeting=greeting, replies=replies or [Reply(steps=[say(DEFAULT_REPLY, 520.0)])], pace=1.0)


# --------------------------------------------------------------------------- one run


@contextlib.contextmanager
def environment(values: Mapping[str, str], cleared: tuple[str, ...] = ()) -> Iterator[None]:
    """Set (and clear) environment variables for the duration: the server and the SDK read them."""
    names = set(values) | set(cleared)
    saved = {name: os.environ.get(name) for name in names}
    try:
        for name in cleared:
            os.environ.pop(name, None)
        os.environ.update(values)
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run_scenario(scenario: Scenario, *, live: bool = False, services: Any = None) -> RunResult:
    """One run of `scenario`; never raises for what happens on the call (it becomes a check)."""
    mode = "live" if live else "offline"
    if scenario.simulated_caller and not live:
        return RunResult(scenario, mode, skipped="a simulated caller (persona and goal) needs --live")
    started = time.monotonic()
    try:
        result = _run(scenario, live, services)
    except (SettingsError, ScenarioError) as exc:
        result = RunResult(scenario, mode, error=str(exc))
    except Exception as exc:  # one broken run must not stop the others; it fails, with why
        log.debug("scenario %s failed to run", scenario.label, exc_info=True)
        result = RunResult(scenario, mode, error=f"the run failed: {type(exc).__name__}: {exc}")
    result.duration_s = round(time.monotonic() - started, 2)
    return result


def _run(scenario: Scenario, live: bool, services: Any) -> RunResult:
    from .testing.emulator import LiveEmulator

    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="telephony-test-"))
        env = {"CALLS_DB_PATH": os.path.join(tmp, "calls.db"), "RECORD_AUDIO": "false",
               "LOG_LEVEL": os.environ.get("LOG_LEVEL", "ERROR"), **scenario.env}
        if "ORDERS_DB_PATH" not in os.environ and "ORDERS_DB_PATH" not in env:
            env["ORDERS_DB_PATH"] = os.path.join(tmp, "orders.db")
        cleared: tuple[str, ...] = CLEARED_ENV
        emulator = None
        if not live:
            emulator = stack.enter_context(LiveEmulator(scripted_model(scenario), raise_server_errors=False))
            env.update(emulator.env())
        else:
            cleared = tuple(n for n in CLEARED_ENV if not n.startswith("GOOGLE_GENAI"))  # Vertex AI works live
        stack.enter_context(environment(env, cleared))
        return asyncio.run(_call(scenario, emulator, live, services))


async def _call(scenario: Scenario, emulator: Any, live: bool, services: Any) -> RunResult:
    from .settings import Settings
    from .testing.caller import LineCaller, caller_utterances
    from .testing.server import ServerThread

    settings = Settings.from_env()
    app, observed = build_app(settings, scenario)
    result = RunResult(scenario, "live" if live else "offline")
    call_sid = "CA" + secrets.token_hex(16)
    result.call_sid = call_sid
    voice: Any
    if live:
        from .scenario_live import LiveCallerVoice

        voice = LiveCallerVoice(scenario, settings, services)
    else:
        voice = OfflineVoice(emulator)
    with ServerThread(app) as server:
        to = dialled_number(app, scenario)
        stream_url, parameters = await asyncio.to_thread(
            answer_webhook, server, call_sid, scenario.caller_number or DEFAULT_FROM, to)
        async with voice:
            caller = LineCaller(stream_url, lambda line: _converse(scenario, line, voice), call_sid=call_sid,
                                stream_sid="MZ" + secrets.token_hex(16), account_sid="AC" + secrets.token_hex(16),
                                parameters=parameters, on_agent_audio=voice.hear, on_agent_clear=voice.cleared)
            call = await caller.run()
        summary = await asyncio.to_thread(_summary_of, app, call_sid)
    _assess(result, scenario, call, summary, [c for tools in observed for c in tools.seen], caller_utterances(call))
    if emulator is not None:
        for error in emulator.server_errors():
            result.checks.append(Check("Live emulator", Status.FAILED, error))
    else:
        await voice.finish(result, summary, settings)
    return result


def build_app(settings: Any, scenario: Scenario) -> tuple[Any, list[ObservedTools]]:
    """The app for one run, with the tools of every agent observed and the scenario's mocks
    in place. Mocks must name tools of the agent the call reaches; the others' tools are
    observed too, so a call routed elsewhere shows up in the results."""
    from .app import create_app

    try:
        from .agents import AgentBook, load_agents  # type: ignore[import-not-found]
    except ImportError:  # one agent, configured from the environment
        from .lifecycle import default_registry

        tools = ObservedTools(default_registry(), scenario.mocks)
        return create_app(settings, tools), [tools]
    book = load_agents(settings)
    try:
        chosen = book.named(scenario.agent) if scenario.agent else book.for_number(scenario.to or DEFAULT_TO)
    except LookupError:
        who = f"agent: no agent is named {scenario.agent!r}" if scenario.agent else \
            f"to: no agent answers {scenario.to or DEFAULT_TO}"
        raise ScenarioError(f"{who} (agents: {', '.join(book.names())})") from None
    observed, agents = [], []
    for agent in book:
        tools = ObservedTools(agent.tools, scenario.mocks, strict=agent is chosen)
        observed.append(tools)
        agents.append(dataclasses.replace(agent, tools=tools))
    return create_app(settings, agents=AgentBook(agents)), observed


def dialled_number(app: Any, scenario: Scenario) -> str:
    """The number the test call is placed to: `to`, else the named agent's first number
    (the server then picks the agent as it would for a real call), else a placeholder."""
    if scenario.to:
        return scenario.to
    book = getattr(app.state, "agents", None)
    if scenario.agent and book is not None:
        try:
            agent = book.named(scenario.agent)
        except LookupError:
            names = ", ".join(a.name for a in getattr(book, "agents", ()))
            raise ScenarioError(f"agent: there is no agent named {scenario.agent!r} (agents: {names})") from None
        if agent.numbers:
            return agent.numbers[0]
    return DEFAULT_TO


def answer_webhook(server: Any, call_sid: str, caller: str, called: str) -> tuple[str, dict[str, str]]:
    """Ring the server as Twilio does: POST /incoming-call, then take the stream URL and
    its <Parameter>s from the TwiML answer, so the call is admitted and routed as a real one."""
    import urllib.parse
    import urllib.request
    import xml.etree.ElementTree as ET

    form = urllib.parse.urlencode({"CallSid": call_sid, "AccountSid": "AC" + "0" * 32, "From": caller, "To": called,
                                   "Direction": "inbound", "CallStatus": "ringing"}).encode()
    request = urllib.request.Request(f"{server.http_url}/incoming-call", data=form,
                                     headers={"Content-Type": "application/x-www-form-urlencoded"})
    with urllib.request.urlopen(request, timeout=10) as response:
        twiml = response.read().decode()
    stream = ET.fromstring(twiml).find("./Connect/Stream")
    if stream is None:
        raise ScenarioError(f"the server did not connect the call: it answered {twiml[:300]}")
    url = urllib.parse.urlsplit(stream.get("url", ""))
    ws_url = urllib.parse.urlsplit(server.ws_url)
    target = urllib.parse.urlunsplit((ws_url.scheme, ws_url.netloc, url.path, url.query, ""))
    return target, {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}


class OfflineVoice:
    """The caller's voice offline: real speech recordings; the emulator transcribes them by script."""

    def __init__(self, emulator: Any):
        self.emulator = emulator
        self.said = 0

    async def __aenter__(self) -> "OfflineVoice":
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def hear(self, ulaw: bytes) -> None:
        """Offline the caller only listens by timing; the agent's audio is a tone."""

    def cleared(self) -> None:
        return None

    async def say(self, line: Any, text: str) -> tuple[float, float]:
        from .testing.caller import speech_ulaw

        spoken = await line.speak(speech_ulaw(self.said))
        self.said += 1
        return spoken

    def settled(self) -> bool:
        """The emulated model has heard every line said so far and finished its turn."""
        sessions = list(self.emulator.sessions)
        if not sessions:
            return False
        kinds = sessions[-1].kinds()
        if sum(1 for k in kinds if k == "caller_speech_end") < self.said:
            return False
        turn_kinds = [k for k in kinds if k in ("turn_start", "turn_complete", "turn_cancelled")]
        return not turn_kinds or turn_kinds[-1] != "turn_start"

    async def converse(self, line: Any) -> None:  # a scripted caller has no free conversation
        return None


async def _converse(scenario: Scenario, line: Any, voice: Any) -> None:
    """The caller's side: follow the script, listening to the agent between lines."""
    try:
        async with asyncio.timeout(scenario.timeout):
            if scenario.simulated_caller:
                await voice.converse(line)
                return
            await _follow_script(scenario, line, voice)
    except TimeoutError:
        line.note("caller gave up", seconds=scenario.timeout)


async def _follow_script(scenario: Scenario, line: Any, voice: Any) -> None:
    settled = getattr(voice, "settled", None)
    reply_to: float | None = 0.0  # the greeting answers the call itself
    last_end = 0.0

    async def hear_reply(pause: float) -> None:
        if reply_to is not None:
            await line.wait_for_reply(reply_to, pause, DEFAULT_REPLY_WAIT_S, settled)
        else:
            await line.until(lambda: not line.agent_audible() and line.now() - line.heard_until() >= pause,
                             DEFAULT_REPLY_WAIT_S)

    for step in scenario.steps:
        if line.closed:
            return
        if step.kind is StepKind.SAY:
            if step.barge_in is not None:
                begun = await line.wait_agent_starts(last_end, DEFAULT_REPLY_WAIT_S)
                if begun is not None:
                    await line.sleep(max(0.0, begun + step.barge_in - line.now()))
            else:
                await hear_reply(step.seconds)
            if line.closed:
                return
            _, last_end = await voice.say(line, step.text)
            reply_to = last_end
        elif step.kind is StepKind.PRESS:
            await hear_reply(DEFAULT_PAUSE_S)
            await line.press(step.text)
            reply_to, last_end = None, line.now()
        elif step.kind is StepKind.WAIT:
            await line.sleep(step.seconds)
        else:  # HANG_UP
            await hear_reply(DEFAULT_PAUSE_S)
            return
    await hear_reply(DEFAULT_PAUSE_S)
    await line.sleep(END_WAIT_S)  # the agent may end the call; otherwise the caller hangs up


def _summary_of(app: Any, call_sid: str, timeout: float = 10.0) -> dict | None:
    """The server's own summary of this call, once the bridge has finished it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for summary in list(getattr(app.state, "recent_calls", ()) or ()):
            if summary.get("call_sid") == call_sid:
                return summary
        time.sleep(0.05)
    return None


# --------------------------------------------------------------------------- checks


def classify_ending(end_reason: str | None, caller_hung_up: bool) -> tuple[Ending | None, str | None, str]:
    """(ending, transfer target, words) from the server's end reason."""
    reason = end_reason or ""
    if reason.startswith("transferred to "):
        target = reason.removeprefix("transferred to ").strip()
        return Ending.TRANSFERRED, target, f"transferred to {target}"
    if reason.startswith("agent ended the call"):
        return Ending.AGENT_HUNG_UP, None, reason
    if reason == "caller hung up" or (caller_hung_up and not reason):
        return Ending.CALLER_HUNG_UP, None, "caller hung up"
    return None, None, f"ended by the server: {reason or 'no reason given'}"


def _assess(result: RunResult, scenario: Scenario, call: Any, summary: dict | None, seen: list[ToolCallSeen],
            bursts: list[tuple[float, float]]) -> None:
    expect = scenario.expect
    checks = result.checks
    result.tools = sorted(seen, key=lambda c: c.started)
    if call.http_status is not None:
        checks.append(Check("call connects", Status.FAILED, f"the server refused the stream (HTTP {call.http_status})"))
    if call.protocol_errors:
        checks.append(Check("Twilio protocol", Status.FAILED, "; ".join(call.protocol_errors[:3])))
    if summary is None:
        checks.append(Check("call summary", Status.FAILED, "the server never finished the call (no summary)"))
        summary = {}
    result.transcript = [(str(role), str(text).strip()) for role, text in summary.get("transcript", [])]
    result.turns = summary.get("agent_turns")
    result.interruptions = int(summary.get("interruptions") or 0)
    result.end_reason = summary.get("end_reason")
    ending, target, words = classify_ending(result.end_reason, bool(call.of_kind("sent_stop")))
    result.ending = words

    _check_tools(checks, expect, result.tools)
    if expect.ending is not None:
        ok = ending is expect.ending and (expect.transfer_to is None or (target or "").lower() == expect.transfer_to)
        want = f"transferred to {expect.transfer_to}" if expect.transfer_to else expect.ending.value.replace("_", " ")
        checks.append(Check("ending", Status.PASSED if ok else Status.FAILED,
                            f"expected {want}; the call {words}" if not ok else words))
    if expect.max_turns is not None:
        turns = result.turns or 0
        checks.append(Check("max_turns", Status.PASSED if turns <= expect.max_turns else Status.FAILED,
                            f"{turns} agent turns (at most {expect.max_turns})"))
    if expect.digits is not None:
        got = summary.get("digits", "")
        checks.append(Check("digits", Status.PASSED if got == expect.digits else Status.FAILED,
                            f"the server received {got!r}, expected {expect.digits!r}"))
    result.latencies = _reply_latencies(call, bursts)
    if expect.reply_within is not None:
        slow = [f"reply {i + 1}: {'no reply' if t is None else f'{t:.2f} s'}"
                for i, t in enumerate(result.latencies) if (t is None and i < len(result.latencies) - 1)
                or (t is not None and t > expect.reply_within)]
        measured = ", ".join("-" if t is None else f"{t:.2f} s" for t in result.latencies) or "no caller line"
        checks.append(Check("reply_within", Status.FAILED if slow else Status.PASSED,
                            f"budget {expect.reply_within:g} s; " + ("; ".join(slow) if slow else measured)))
    for criterion in expect.criteria:
        checks.append(Check(f"criterion: {criterion}", Status.NOT_CHECKED,
                            "offline the model's words are scripted; judged with --live"))


def _check_tools(checks: list[Check], expect: Any, seen: list[ToolCallSeen]) -> None:
    called = "; ".join(c.describe() for c in seen) or "no tool"
    if expect.calls:
        if expect.ordered:
            position, missing = 0, None
            for want in expect.calls:
                while position < len(seen) and not want.matches(seen[position].name, seen[position].args):
                    position += 1
                if position == len(seen):
                    missing = want
                    break
                position += 1
        else:
            remaining = list(seen)
            missing = None
            for want in expect.calls:
                hit = next((c for c in remaining if want.matches(c.name, c.args)), None)
                if hit is None:
                    missing = want
                    break
                remaining.remove(hit)
        label = "tools called" + (" in order" if expect.ordered else "")
        if missing is None:
            checks.append(Check(label, Status.PASSED, called))
        else:
            checks.append(Check(label, Status.FAILED, f"expected {missing.describe()}; the agent called: {called}"))
    for name in expect.not_called:
        hits = [c for c in seen if c.name == name]
        checks.append(Check(f"not called: {name}", Status.FAILED if hits else Status.PASSED,
                            "; ".join(c.describe() for c in hits) if hits else "never called"))


def _reply_latencies(call: Any, bursts: list[tuple[float, float]]) -> list[float | None]:
    """For each caller utterance: seconds from its end until the agent's next audio started
    playing (None: the agent said nothing before the caller spoke again or the call ended)."""
    starts = [span_start for span_start, _end, _data in call.spans]
    out: list[float | None] = []
    for i, (_start, end) in enumerate(bursts):
        following = bursts[i + 1][0] if i + 1 < len(bursts) else float("inf")
        reply = next((s for s in starts if end <= s < following), None)
        out.append(None if reply is None else round(reply - end, 3))
    return out


def tool_line(call: ToolCallSeen) -> str:
    outcome = json.dumps(call.response, default=str)
    if len(outcome) > 120:
        outcome = outcome[:117] + "..."
    return f"{call.describe()} -> {outcome}{' (mock)' if call.mocked else ''}, {call.latency_ms:.0f} ms"
