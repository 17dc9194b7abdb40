"""Scenario files: what a test call does, and what must happen on it.

A scenario is a YAML file a business writes once and runs on every prompt change
(`telephony test`, scenario_run.py). It describes the caller (scripted lines,
pauses, barge-ins, keypad digits, or a persona with a goal for a simulated
caller), optional fixed tool results (mocks), and the expectations: tools called
with which arguments, criteria in words, how the call ends, at most N turns, a
reply latency budget. docs/scenarios.md is the reference; this module only reads
and checks the files, so a mistake is one line naming the file and the key, before
any call is placed.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

__all__ = [
    "ANY",
    "ArgMatch",
    "CallerStep",
    "Ending",
    "Expectations",
    "ExpectedCall",
    "ModelStep",
    "Scenario",
    "ScenarioError",
    "StepKind",
    "ToolMock",
    "load_scenarios",
    "parse_scenario",
]

#: Seconds the caller waits after the agent stops speaking before its next line.
DEFAULT_PAUSE_S = 0.6
#: Seconds a whole scenario call may last before the caller gives up.
DEFAULT_TIMEOUT_S = 60.0
#: Seconds the caller waits for the agent's reply before speaking anyway.
DEFAULT_REPLY_WAIT_S = 12.0


class ScenarioError(ValueError):
    """A scenario file that cannot be run; the message is one line naming the file and key."""


class StepKind(enum.Enum):
    SAY = "say"
    PRESS = "press"
    WAIT = "wait"
    HANG_UP = "hang_up"


class Ending(enum.Enum):
    AGENT_HUNG_UP = "agent_hung_up"
    TRANSFERRED = "transferred"
    CALLER_HUNG_UP = "caller_hung_up"


@dataclass(frozen=True)
class ModelStep:
    """Offline only: one thing the emulated model does in reply (speak, or call a tool)."""

    say: str | None = None
    call: str | None = None
    args: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CallerStep:
    kind: StepKind
    text: str = ""
    """The line said (SAY) or the digits pressed (PRESS)."""
    seconds: float = 0.0
    """WAIT: silence; SAY: the pause after the agent stops speaking."""
    barge_in: float | None = None
    """SAY: speak this many seconds after the agent starts its reply, over it."""
    reply: tuple[ModelStep, ...] = ()
    """SAY, offline only: what the emulated model does in answer to this line."""


@dataclass(frozen=True)
class ToolMock:
    """A fixed answer instead of the tool's own: `result`, or an `error` the model is told."""

    result: Any = None
    error: str | None = None
    latency: float = 0.0


class _Any:
    """The marker for "any value" in an expectation."""

    def __repr__(self) -> str:
        return "any"


ANY = _Any()


@dataclass(frozen=True)
class ArgMatch:
    """One expected argument: an exact value, a regular expression (full match), or ANY."""

    value: Any = None
    pattern: re.Pattern | None = None

    def matches(self, actual: Any) -> bool:
        if self.value is ANY:
            return True
        if self.pattern is not None:
            return self.pattern.fullmatch(actual if isinstance(actual, str) else str(actual)) is not None
        return _same(actual, self.value)

    def describe(self) -> str:
        if self.pattern is not None:
            return f"/{self.pattern.pattern}/"
        return repr(self.value)


def _same(actual: Any, expected: Any) -> bool:
    """Equality as a business means it: 3 == 3.0 (models send numbers as floats), no other coercion."""
    if isinstance(expected, bool) or isinstance(actual, bool):
        return actual is expected
    if isinstance(expected, (int, float)) and isinstance(actual, (int, float)):
        return float(actual) == float(expected)
    if isinstance(expected, dict) and isinstance(actual, dict):
        return actual.keys() == expected.keys() and all(_same(actual[k], v) for k, v in expected.items())
    if isinstance(expected, list) and isinstance(actual, list):
        return len(actual) == len(expected) and all(_same(a, e) for a, e in zip(actual, expected))
    return actual == expected


@dataclass(frozen=True)
class ExpectedCall:
    name: str
    args: Mapping[str, ArgMatch] | None = None
    """None: any arguments. Otherwise every named argument must match; others are free."""

    def matches(self, name: str, args: Mapping[str, Any] | None) -> bool:
        if name != self.name:
            return False
        if self.args is None:
            return True
        if args is None:
            return False
        return all(key in args and m.matches(args[key]) for key, m in self.args.items())

    def describe(self) -> str:
        if self.args is None:
            return f"{self.name}(any arguments)"
        return f"{self.name}({', '.join(f'{k}={m.describe()}' for k, m in self.args.items())})"


@dataclass(frozen=True)
class Expectations:
    calls: tuple[ExpectedCall, ...] = ()
    ordered: bool = False
    not_called: tuple[str, ...] = ()
    criteria: tuple[str, ...] = ()
    ending: Ending | None = None
    transfer_to: str | None = None
    max_turns: int | None = None
    reply_within: float | None = None
    digits: str | None = None


@dataclass(frozen=True)
class Scenario:
    name: str
    path: Path | None
    steps: tuple[CallerStep, ...] = ()
    persona: str | None = None
    goal: str | None = None
    agent: str | None = None
    to: str | None = None
    caller_number: str | None = None
    greeting: str | None = None
    """Offline only: what the emulated model says first."""
    mocks: Mapping[str, ToolMock] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    expect: Expectations = field(default_factory=Expectations)
    timeout: float = DEFAULT_TIMEOUT_S

    @property
    def simulated_caller(self) -> bool:
        """A persona and a goal, no script: only a live caller session can play it."""
        return not self.steps and self.persona is not None

    @property
    def label(self) -> str:
        return f"{self.path.name}: {self.name}" if self.path else self.name


# --------------------------------------------------------------------------- loading


def load_scenarios(paths: list[str | Path]) -> list[Scenario]:
    """Every scenario in these files and folders (folders: their *.yaml / *.yml, sorted)."""
    files: list[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())
            if not found:
                raise ScenarioError(f"{path}: no .yaml scenario files in this folder")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise ScenarioError(f"{path}: no such file or folder")
    scenarios: list[Scenario] = []
    for path in files:
        scenarios += _load_file(path)
    return scenarios


def _load_file(path: Path) -> list[Scenario]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ScenarioError(f"{path}{where}: not valid YAML: {problem}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"{path}: cannot read: {exc}") from None
    if isinstance(data, dict) and "scenarios" in data:
        items = data["scenarios"]
        if not isinstance(items, list) or not items:
            raise ScenarioError(f"{path}: 'scenarios' must be a non-empty list")
        return [parse_scenario(item, path, where=f"scenarios[{i}]") for i, item in enumerate(items)]
    return [parse_scenario(data, path)]


_TOP_KEYS = {"name", "agent", "to", "from", "caller", "greeting", "tools", "expect", "timeout", "env", "description"}
_EXPECT_KEYS = {"tools", "not_called", "criteria", "ending", "transfer_to", "max_turns", "reply_within", "digits"}


class _Reader:
    """Type checks that name where the mistake is: ``file: caller.script[2].say: ...``."""

    def __init__(self, path: Path | None, where: str = ""):
        self.path = path
        self.where = where

    def fail(self, key: str, message: str) -> ScenarioError:
        place = ".".join(p for p in (self.where, key) if p)
        prefix = f"{self.path}: " if self.path else ""
        return ScenarioError(f"{prefix}{place}: {message}" if place else f"{prefix}{message}")

    def mapping(self, value: Any, key: str, allowed: set[str] | None = None) -> dict:
        if not isinstance(value, dict):
            raise self.fail(key, f"must be a mapping, got {_kind(value)}")
        if allowed is not None:
            unknown = sorted(str(k) for k in value if k not in allowed)
            if unknown:
                raise self.fail(key, f"unknown key {unknown[0]!r} (expected one of: {', '.join(sorted(allowed))})")
        return value

    def text(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, f"must be non-empty text, got {_kind(value)}")
        return value.strip()

    def seconds(self, value: Any, key: str, *, positive: bool = False) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (positive and value == 0):
            raise self.fail(key, f"must be a number of seconds {'> 0' if positive else '>= 0'}, got {value!r}")
        return float(value)

    def count(self, value: Any, key: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise self.fail(key, f"must be a whole number >= 1, got {value!r}")
        return value


def _kind(value: Any) -> str:
    return "nothing" if value is None else repr(value) if isinstance(value, (str, int, float)) else type(value).__name__


_DIGITS = re.compile(r"[0-9*#]+")
_E164 = re.compile(r"\+[1-9][0-9]{6,14}")


def parse_scenario(data: Any, path: Path | None = None, *, where: str = "") -> Scenario:
    """A Scenario from the YAML data of one scenario; ScenarioError names the first mistake."""
    r = _Reader(path, where)
    top = r.mapping(data, "", _TOP_KEYS)
    name = r.text(top.get("name"), "name")
    steps, persona, goal = _caller(r, top.get("caller"))
    expect = _expectations(r, top.get("expect", {}))
    scenario = Scenario(
        name=name,
        path=path,
        steps=steps,
        persona=persona,
        goal=goal,
        agent=r.text(top["agent"], "agent") if "agent" in top else None,
        to=_number(r, top, "to"),
        caller_number=_number(r, top, "from"),
        greeting=r.text(top["greeting"], "greeting") if "greeting" in top else None,
        mocks=_mocks(r, top.get("tools", {})),
        env=_env(r, top.get("env", {})),
        expect=expect,
        timeout=r.seconds(top["timeout"], "timeout", positive=True) if "timeout" in top else DEFAULT_TIMEOUT_S,
    )
    if expect.ending is Ending.CALLER_HUNG_UP and steps and not any(s.kind is StepKind.HANG_UP for s in steps):
        raise r.fail("expect.ending", "is caller_hung_up but the caller's script has no hang_up step")
    return scenario


def _number(r: _Reader, top: dict, key: str) -> str | None:
    if key not in top:
        return None
    value = str(top[key]).strip()
    if not _E164.fullmatch(value):
        raise r.fail(key, f"must be a phone number in E.164 form like +15551230000, got {top[key]!r}")
    return value


def _caller(r: _Reader, value: Any) -> tuple[tuple[CallerStep, ...], str | None, str | None]:
    caller = r.mapping(value, "caller", {"script", "persona", "goal"})
    persona = r.text(caller["persona"], "caller.persona") if "persona" in caller else None
    goal = r.text(caller["goal"], "caller.goal") if "goal" in caller else None
    if (persona is None) != (goal is None):
        raise r.fail("caller", "a simulated caller needs both 'persona' and 'goal'")
    if "script" not in caller:
        if persona is None:
            raise r.fail("caller", "give a 'script' of lines, or a 'persona' and a 'goal'")
        return (), persona, goal
    script = caller["script"]
    if not isinstance(script, list) or not script:
        raise r.fail("caller.script", f"must be a non-empty list of steps, got {_kind(script)}")
    steps = tuple(_step(r, item, f"caller.script[{i}]") for i, item in enumerate(script))
    if not any(s.kind is StepKind.SAY for s in steps) and not any(s.kind is StepKind.PRESS for s in steps):
        raise r.fail("caller.script", "has no 'say' or 'press' step: the caller never does anything")
    for i, step in enumerate(steps[:-1]):
        if step.kind is StepKind.HANG_UP:
            raise r.fail(f"caller.script[{i}]", "hang_up must be the last step")
    return steps, persona, goal


def _step(r: _Reader, item: Any, key: str) -> CallerStep:
    if item == "hang_up":
        return CallerStep(StepKind.HANG_UP)
    step = r.mapping(item, key, {"say", "press", "wait", "hang_up", "pause", "barge_in", "reply"})
    kinds = [k for k in ("say", "press", "wait", "hang_up") if k in step]
    if len(kinds) != 1:
        raise r.fail(key, "must have exactly one of 'say', 'press', 'wait', 'hang_up'")
    kind = kinds[0]
    if kind != "say":
        for extra in ("pause", "barge_in", "reply"):
            if extra in step:
                raise r.fail(f"{key}.{extra}", f"only goes with 'say', not '{kind}'")
    if kind == "hang_up":
        return CallerStep(StepKind.HANG_UP)
    if kind == "wait":
        return CallerStep(StepKind.WAIT, seconds=r.seconds(step["wait"], f"{key}.wait", positive=True))
    if kind == "press":
        digits = str(step["press"]).strip() if isinstance(step["press"], (str, int)) else None
        if not digits or not _DIGITS.fullmatch(digits):
            raise r.fail(f"{key}.press", f"must be keypad digits (0-9, *, #), got {step['press']!r}")
        return CallerStep(StepKind.PRESS, text=digits)
    text = r.text(step["say"], f"{key}.say")
    pause = r.seconds(step["pause"], f"{key}.pause") if "pause" in step else DEFAULT_PAUSE_S
    barge = r.seconds(step["barge_in"], f"{key}.barge_in") if "barge_in" in step else None
    reply = _reply(r, step.get("reply", []), f"{key}.reply")
    return CallerStep(StepKind.SAY, text=text, seconds=pause, barge_in=barge, reply=reply)


def _reply(r: _Reader, value: Any, key: str) -> tuple[ModelStep, ...]:
    if isinstance(value, str):
        value = [{"say": value}]
    if not isinstance(value, list):
        raise r.fail(key, f"must be a list of 'say' and 'call' steps, got {_kind(value)}")
    out = []
    for i, item in enumerate(value):
        k = f"{key}[{i}]"
        step = r.mapping(item, k, {"say", "call", "args"})
        if ("say" in step) == ("call" in step):
            raise r.fail(k, "must have exactly one of 'say' or 'call'")
        if "say" in step:
            if "args" in step:
                raise r.fail(f"{k}.args", "only goes with 'call'")
            out.append(ModelStep(say=r.text(step["say"], f"{k}.say")))
        else:
            args = step.get("args", {})
            if not isinstance(args, dict):
                raise r.fail(f"{k}.args", f"must be a mapping of argument names to values, got {_kind(args)}")
            out.append(ModelStep(call=r.text(step["call"], f"{k}.call"), args=dict(args)))
    return tuple(out)


def _mocks(r: _Reader, value: Any) -> dict[str, ToolMock]:
    tools = r.mapping(value, "tools")
    out = {}
    for name, spec in tools.items():
        key = f"tools.{name}"
        spec = r.mapping(spec, key, {"result", "error", "latency"})
        if ("result" in spec) == ("error" in spec):
            raise r.fail(key, "a mock needs exactly one of 'result' or 'error'")
        out[str(name)] = ToolMock(
            result=spec.get("result"),
            error=r.text(spec["error"], f"{key}.error") if "error" in spec else None,
            latency=r.seconds(spec["latency"], f"{key}.latency") if "latency" in spec else 0.0,
        )
    return out


def _env(r: _Reader, value: Any) -> dict[str, str]:
    env = r.mapping(value, "env")
    out = {}
    for name, setting in env.items():
        if not isinstance(name, str) or not re.fullmatch(r"[A-Z][A-Z0-9_]*", name):
            raise r.fail(f"env.{name}", "must be an environment variable name in capitals")
        if isinstance(setting, (dict, list)) or setting is None:
            raise r.fail(f"env.{name}", f"must be a single value, got {_kind(setting)}")
        out[name] = str(setting).lower() if isinstance(setting, bool) else str(setting)
    return out


def _expectations(r: _Reader, value: Any) -> Expectations:
    expect = r.mapping(value, "expect", _EXPECT_KEYS)
    calls: tuple[ExpectedCall, ...] = ()
    ordered = False
    if "tools" in expect:
        tools = expect["tools"]
        if isinstance(tools, list):  # the short form: just the calls
            tools = {"calls": tools}
        tools = r.mapping(tools, "expect.tools", {"calls", "ordered"})
        ordered = tools.get("ordered", False)
        if not isinstance(ordered, bool):
            raise r.fail("expect.tools.ordered", f"must be true or false, got {ordered!r}")
        items = tools.get("calls", [])
        if not isinstance(items, list):
            raise r.fail("expect.tools.calls", f"must be a list, got {_kind(items)}")
        calls = tuple(_expected_call(r, item, f"expect.tools.calls[{i}]") for i, item in enumerate(items))
    not_called = expect.get("not_called", [])
    if not isinstance(not_called, list) or not all(isinstance(n, str) and n for n in not_called):
        raise r.fail("expect.not_called", "must be a list of tool names")
    overlap = {c.name for c in calls} & set(not_called)
    if overlap:
        raise r.fail("expect.not_called", f"{sorted(overlap)[0]!r} is also expected to be called")
    criteria = expect.get("criteria", [])
    if isinstance(criteria, str):
        criteria = [criteria]
    if not isinstance(criteria, list):
        raise r.fail("expect.criteria", "must be a list of sentences")
    criteria = tuple(r.text(c, f"expect.criteria[{i}]") for i, c in enumerate(criteria))
    ending = None
    if "ending" in expect:
        try:
            ending = Ending(expect["ending"])
        except ValueError:
            choices = ", ".join(e.value for e in Ending)
            raise r.fail("expect.ending", f"must be one of {choices}, got {expect['ending']!r}") from None
    transfer_to = r.text(expect["transfer_to"], "expect.transfer_to") if "transfer_to" in expect else None
    if transfer_to is not None and ending not in (None, Ending.TRANSFERRED):
        raise r.fail("expect.transfer_to", f"goes with ending: transferred, not {ending.value}")
    if transfer_to is not None:
        ending = Ending.TRANSFERRED
    digits = None
    if "digits" in expect:
        digits = str(expect["digits"]).strip()
        if not _DIGITS.fullmatch(digits):
            raise r.fail("expect.digits", f"must be keypad digits (0-9, *, #), got {expect['digits']!r}")
    return Expectations(
        calls=calls,
        ordered=ordered,
        not_called=tuple(not_called),
        criteria=criteria,
        ending=ending,
        transfer_to=transfer_to.lower() if transfer_to else None,
        max_turns=r.count(expect["max_turns"], "expect.max_turns") if "max_turns" in expect else None,
        reply_within=r.seconds(expect["reply_within"], "expect.reply_within", positive=True)
        if "reply_within" in expect else None,
        digits=digits,
    )


def _expected_call(r: _Reader, item: Any, key: str) -> ExpectedCall:
    if isinstance(item, str):
        return ExpectedCall(r.text(item, key))
    call = r.mapping(item, key, {"name", "args"})
    name = r.text(call.get("name"), f"{key}.name")
    args = call.get("args", "any")
    if args == "any":
        return ExpectedCall(name)
    args = r.mapping(args, f"{key}.args")
    matches: dict[str, ArgMatch] = {}
    for arg, expected in args.items():
        akey = f"{key}.args.{arg}"
        if expected == "any":
            matches[str(arg)] = ArgMatch(ANY)
        elif isinstance(expected, dict) and set(expected) == {"pattern"}:
            try:
                matches[str(arg)] = ArgMatch(pattern=re.compile(str(expected["pattern"])))
            except re.error as exc:
                raise r.fail(f"{akey}.pattern", f"is not a valid regular expression: {exc}") from None
        else:
            matches[str(arg)] = ArgMatch(expected)
    return ExpectedCall(name, matches)
