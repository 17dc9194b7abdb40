"""The tool registry: plain typed Python functions become Gemini Live tools.

A business tool is an ordinary function (sync or async) with type hints and a
Google-style docstring. Registering it does all the checking up front, so a
tool the model could never call correctly fails at start-up, not mid-call:

    registry = ToolRegistry()

    @registry.register(timeout=3)
    def lookup_order(order_id: str, ctx: CallContext) -> dict:
        '''Look up a customer's order by its order number.

        Args:
            order_id: the order number the caller gives, e.g. A1001
        '''

From then on the registry

- describes every tool to the model (`declarations()`, built from the signature
  and the docstring; a parameter annotated `CallContext` is injected by us and
  never shown to the model);
- checks and gently coerces the arguments the model sends (`validate()`): models
  send order numbers as numbers and integers as `3.0`, so those are accepted,
  anything else is refused with a message the model can read and act on;
- runs a call (`call()`) under a timeout and turns every outcome into a dict
  for the tool response: `{"result": ...}` or `{"error": "..."}`. It never
  raises, except `asyncio.CancelledError` when the call is cancelled (the model
  sent a `toolCallCancellation`, or the call ended), so one broken tool cannot
  take a call down with it.

Sync tools run in a worker thread (`asyncio.to_thread`) so a slow database
cannot stall the audio of every call on the event loop. A thread cannot be
killed, so a timed-out sync tool keeps running in the background until it
returns: give blocking I/O in sync tools its own timeout too (e.g. sqlite3's
`timeout=`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as _dt
import enum
import inspect
import logging
import math
import re
import types as _pytypes
import typing
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping

from google.genai import types as genai_types

from .errors import InvalidArguments, UnknownTool
from .settings import Settings

__all__ = ["CallContext", "ToolRegistry", "MAX_STRING_LENGTH", "MAX_ARRAY_ITEMS"]

logger = logging.getLogger("telephony.tools")

#: Longest string argument accepted. Nothing a caller says needs more; a longer
#: value is a model looping or an injection attempt, and should not reach a tool.
MAX_STRING_LENGTH = 1000
#: Longest list argument accepted, for the same reason.
MAX_ARRAY_ITEMS = 100
# Gemini's rule for function names: a letter or underscore first, then letters,
# digits, underscores, dots, colons or dashes, at most 64 characters.
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]{0,63}")
# Error messages go back to the model and into logs: long enough to explain, short
# enough not to flood the model's context with a stack of repr()s.
_MAX_ERROR_DETAIL = 200
_MAX_JSON_DEPTH = 32
_BEHAVIORS = ("BLOCKING", "NON_BLOCKING")
_SCHEDULINGS = ("SILENT", "WHEN_IDLE", "INTERRUPT")
#: When the model speaks after a tool's result, unless the tool says otherwise.
#: WHEN_IDLE (the service's default for NON_BLOCKING calls, the default kind on 3.8 Live)
#: has been reported never to fire in voice calls, leaving the caller in dead air
#: (docs/gemini-live.md §8, §12); INTERRUPT speaks as soon as the caller has stopped talking.
DEFAULT_SCHEDULING = "INTERRUPT"


@dataclass(frozen=True)
class CallContext:
    """Who is on the line, handed to any tool that declares a `CallContext` parameter.

    The model never sees this parameter and cannot fill it in, so a tool can
    trust it (e.g. to check that the caller owns the order they ask about).
    """

    call_sid: str
    caller: str | None
    called: str | None
    settings: Settings
    #: Acts on the live call (`hang_up(reason)`, `transfer(name, destination)`); thread-safe,
    #: so sync tools may use it too. None outside a call (e.g. in unit tests).
    control: Any = None
    #: The `agents.Agent` answering this call (None outside a call).
    agent: Any = None
    #: The agent's own settings for its tools (`[agents.tool_settings]` in the agents file):
    #: an instance of the tools module's `ToolSettings` dataclass, or a read-only mapping.
    tool_settings: Any = None


# --------------------------------------------------------------------------- types


@dataclass(frozen=True)
class _Spec:
    """One accepted argument type: what the model is told, and how a value is checked."""

    type: genai_types.Type
    nullable: bool = False
    enum: tuple[str, ...] | None = None
    items: _Spec | None = None

    def schema(self, description: str | None = None) -> genai_types.Schema:
        return genai_types.Schema(
            type=self.type,
            description=description or None,
            nullable=True if self.nullable else None,
            enum=list(self.enum) if self.enum is not None else None,
            items=self.items.schema() if self.items is not None else None,
        )

    def describe(self) -> str:
        if self.enum is not None:
            return "one of " + ", ".join(repr(v) for v in self.enum)
        return {
            genai_types.Type.STRING: "a string",
            genai_types.Type.INTEGER: "an integer",
            genai_types.Type.NUMBER: "a number",
            genai_types.Type.BOOLEAN: "true or false",
            genai_types.Type.ARRAY: f"a list of {self.items.describe() if self.items else 'values'}",
        }.get(self.type, str(self.type))

    def coerce(self, value: Any, label: str) -> Any:
        """Return `value` as this type, or raise InvalidArguments naming `label`."""
        if value is None:
            if self.nullable:
                return None
            raise InvalidArguments(f"{label} must be {self.describe()}, not null")
        t = self.type
        if t is genai_types.Type.STRING:
            out = self._string(value, label)
            if self.enum is not None:
                out = self._choice(out, label)
            return out
        if t is genai_types.Type.INTEGER:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            # JSON numbers travel through protobuf Struct as doubles: 3.0 means 3.
            if isinstance(value, float) and math.isfinite(value) and value.is_integer():
                return int(value)
        elif t is genai_types.Type.NUMBER:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                if math.isfinite(value):
                    return float(value)
        elif t is genai_types.Type.BOOLEAN:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip().lower() in ("true", "false"):
                return value.strip().lower() == "true"
        elif t is genai_types.Type.ARRAY:
            if isinstance(value, (list, tuple)):
                if len(value) > MAX_ARRAY_ITEMS:
                    raise InvalidArguments(
                        f"{label} has too many items ({len(value)}; at most {MAX_ARRAY_ITEMS})"
                    )
                assert self.items is not None
                return [self.items.coerce(v, f"{label} item {i}") for i, v in enumerate(value)]
        raise InvalidArguments(f"{label} must be {self.describe()}, not {_json_type(value)}")

    def _string(self, value: Any, label: str) -> str:
        if isinstance(value, str):
            out = value
        elif isinstance(value, int) and not isinstance(value, bool):
            # Models often send an order number like 1001 as a number.
            out = str(value)
        elif isinstance(value, float) and math.isfinite(value):
            out = str(int(value)) if value.is_integer() else repr(value)
        else:
            raise InvalidArguments(f"{label} must be {self.describe()}, not {_json_type(value)}")
        if len(out) > MAX_STRING_LENGTH:
            raise InvalidArguments(
                f"{label} is too long ({len(out)} characters; at most {MAX_STRING_LENGTH})"
            )
        return out

    def _choice(self, value: str, label: str) -> str:
        assert self.enum is not None
        if value in self.enum:
            return value
        folded = [v for v in self.enum if v.casefold() == value.strip().casefold()]
        if len(folded) == 1:
            return folded[0]
        shown = value if len(value) <= 40 else value[:40] + "..."
        raise InvalidArguments(f"{label} must be {self.describe()}, not {shown!r}")


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


_SCALARS = {
    str: genai_types.Type.STRING,
    int: genai_types.Type.INTEGER,
    float: genai_types.Type.NUMBER,
    bool: genai_types.Type.BOOLEAN,
}


def _spec_for(hint: Any, where: str) -> _Spec:
    """Map a type hint to a `_Spec`, or raise TypeError saying what is supported."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, _pytypes.UnionType):
        args = typing.get_args(hint)
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1 and len(rest) < len(args):
            return dataclasses.replace(_spec_for(rest[0], where), nullable=True)
        raise TypeError(f"{where}: a union of several types ({hint!r}) is not supported; "
                        "use one type, optionally `| None`")
    if hint in _SCALARS:
        return _Spec(_SCALARS[hint])
    if origin is Literal:
        values = typing.get_args(hint)
        if values and all(isinstance(v, str) for v in values):
            return _Spec(genai_types.Type.STRING, enum=tuple(values))
        raise TypeError(f"{where}: only Literal of strings is supported, got {hint!r}")
    if origin is list:
        args = typing.get_args(hint)
        if len(args) != 1:
            raise TypeError(f"{where}: a list needs an item type, e.g. list[str]")
        return _Spec(genai_types.Type.ARRAY, items=_spec_for(args[0], where))
    if hint is list:
        raise TypeError(f"{where}: a list needs an item type, e.g. list[str]")
    raise TypeError(
        f"{where}: type {hint!r} is not supported; use str, int, float, bool, "
        "list[...], Literal['a', 'b'] or one of these `| None`"
    )


# --------------------------------------------------------------------------- docstrings

_SECTION_RE = re.compile(r"^(Args|Arguments|Parameters|Returns|Return|Yields|Raises|Examples?|Notes?|"
                         r"Attributes|See Also|Warnings?|Todo)\s*:\s*$")
_ARG_RE = re.compile(r"^\*{0,2}(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """Split a Google-style docstring into (first paragraph, {parameter: description})."""
    lines = inspect.cleandoc(doc).splitlines()
    summary: list[str] = []
    for line in lines:
        if not line.strip() or _SECTION_RE.match(line.strip()):
            break
        summary.append(line.strip())

    params: dict[str, str] = {}
    in_args = False
    arg_indent: int | None = None
    current: str | None = None
    for line in lines:
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if _SECTION_RE.match(stripped) and indent == 0:
            in_args = stripped.split(":")[0] in ("Args", "Arguments", "Parameters")
            arg_indent, current = None, None
            continue
        if not in_args:
            continue
        if not stripped:
            continue
        if indent == 0:  # dedented text ends the section
            in_args, current = False, None
            continue
        if arg_indent is None:
            arg_indent = indent
        m = _ARG_RE.match(stripped)
        if indent == arg_indent and m:
            current = m.group(1)
            params[current] = m.group(2).strip()
        elif current is not None and indent > arg_indent:
            params[current] = f"{params[current]} {stripped}".strip()
    return " ".join(summary), params


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class _Param:
    name: str
    spec: _Spec
    required: bool
    has_default: bool


@dataclass(frozen=True)
class _Tool:
    name: str
    fn: Callable[..., Any]
    is_async: bool
    params: dict[str, _Param]
    ctx_param: str | None
    ctx_required: bool
    timeout: float | None
    declaration: genai_types.FunctionDeclaration
    behavior: str | None = None
    scheduling: str | Callable[[dict[str, Any]], str] | None = None


class ToolRegistry:
    """Named tools: their declarations for the model, and a safe way to run them."""

    def __init__(self, default_timeout: float = 10.0):
        self.default_timeout = _check_timeout(default_timeout, "default_timeout")
        self._tools: dict[str, _Tool] = {}

    # ---- registration

    def register(self, fn: Callable[..., Any] | None = None, *, name: str | None = None,
                 timeout: float | None = None, behavior: str | None = None,
                 scheduling: str | Callable[[dict[str, Any]], str] | None = None):
        """Add a tool. Use as `@registry.register`, `@registry.register(timeout=3)`
        or `registry.register(fn)`; returns `fn` unchanged so it stays callable.

        `behavior` ("BLOCKING" or "NON_BLOCKING") goes on the declaration; left out,
        the model decides (3.8 Live: NON_BLOCKING). `scheduling` ("SILENT",
        "WHEN_IDLE", "INTERRUPT", or a function of the tool's response returning one)
        goes on each of its responses and says when the model speaks about it; left
        out, DEFAULT_SCHEDULING. It means nothing to a BLOCKING tool, so is refused there.

        Raises TypeError (naming the function and parameter) for a signature the
        model could not call, and ValueError for a bad or duplicate name, behavior
        or scheduling.
        """
        if fn is None:
            return lambda f: self.register(f, name=name, timeout=timeout, behavior=behavior, scheduling=scheduling)
        if behavior is not None and behavior not in _BEHAVIORS:
            raise ValueError(f"behavior must be one of {', '.join(_BEHAVIORS)}, got {behavior!r}")
        if isinstance(scheduling, str) and scheduling not in _SCHEDULINGS:
            raise ValueError(f"scheduling must be one of {', '.join(_SCHEDULINGS)}, got {scheduling!r}")
        if scheduling is not None and behavior == "BLOCKING":
            raise ValueError("scheduling applies to NON_BLOCKING tools only; a BLOCKING tool's result is always spoken")
        tool = self._build(fn, name, None if timeout is None else _check_timeout(timeout, "timeout"))
        if behavior is not None:
            tool.declaration.behavior = genai_types.Behavior(behavior)
        tool = dataclasses.replace(tool, behavior=behavior, scheduling=scheduling)
        if tool.name in self._tools:
            raise ValueError(f"a tool named {tool.name!r} is already registered")
        self._tools[tool.name] = tool
        return fn

    def _build(self, fn: Callable[..., Any], name: str | None, timeout: float | None) -> _Tool:
        if not callable(fn):
            raise TypeError(f"cannot register {fn!r}: it is not callable")
        tool_name = name or getattr(fn, "__name__", None)
        if not tool_name or not _NAME_RE.fullmatch(tool_name):
            raise ValueError(
                f"tool name {tool_name!r} is not valid: start with a letter or underscore, then "
                "letters, digits, '_', '.', ':' or '-', at most 64 characters"
            )
        where = f"tool {tool_name!r}"
        doc = inspect.getdoc(fn)
        if not doc or not doc.strip():
            raise TypeError(f"{where} has no docstring; the model needs one to know when to call it")
        description, param_docs = _parse_docstring(doc)

        try:
            signature = inspect.signature(fn)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{where}: cannot read its signature ({exc})") from None
        try:
            hints = typing.get_type_hints(fn)
        except Exception as exc:  # NameError for an unresolvable forward reference, etc.
            raise TypeError(f"{where}: cannot resolve its type hints ({type(exc).__name__}: {exc})") from None

        params: dict[str, _Param] = {}
        ctx_param: str | None = None
        ctx_required = True
        for p in signature.parameters.values():
            pwhere = f"{where}, parameter {p.name!r}"
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                raise TypeError(f"{pwhere}: *args and **kwargs are not supported; name every parameter")
            if p.kind is p.POSITIONAL_ONLY:
                raise TypeError(f"{pwhere}: positional-only parameters are not supported")
            if p.name not in hints:
                raise TypeError(f"{pwhere} has no type annotation")
            hint = hints[p.name]
            if hint is CallContext or hint == CallContext | None:
                if ctx_param is not None:
                    raise TypeError(f"{pwhere}: only one CallContext parameter is allowed")
                ctx_param, ctx_required = p.name, hint is CallContext
                continue
            spec = _spec_for(hint, pwhere)
            has_default = p.default is not p.empty
            params[p.name] = _Param(p.name, spec, required=not has_default, has_default=has_default)

        properties = {n: p.spec.schema(param_docs.get(n)) for n, p in params.items()}
        required = [n for n, p in params.items() if p.required]
        declaration = genai_types.FunctionDeclaration(
            name=tool_name,
            description=description,
            parameters=genai_types.Schema(
                type=genai_types.Type.OBJECT,
                properties=properties,
                required=required or None,
            ) if params else None,
        )
        is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
            getattr(fn, "__call__", None)
        )
        return _Tool(tool_name, fn, is_async, params, ctx_param, ctx_required, timeout, declaration)

    def include(self, other: "ToolRegistry") -> None:
        """Add every tool of `other` (an agent's business tools) as it was registered there.

        Raises ValueError if a name is already taken here."""
        for name, tool in other._tools.items():
            if name in self._tools:
                raise ValueError(f"a tool named {name!r} is already registered")
            self._tools[name] = tool

    # ---- introspection

    def names(self) -> list[str]:
        return list(self._tools)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __len__(self) -> int:
        return len(self._tools)

    def declarations(self) -> list[genai_types.FunctionDeclaration]:
        """One FunctionDeclaration per tool, for `types.Tool(function_declarations=...)`.

        Copies, so a caller editing one (e.g. to set `behavior`) cannot change the registry.
        """
        return [t.declaration.model_copy(deep=True) for t in self._tools.values()]

    def scheduling_for(self, name: str, response: Mapping[str, Any]) -> str | None:
        """The `scheduling` to send with this response of `name` (None: send none).

        An error is always spoken at once: the caller must hear that something failed.
        """
        tool = self._tools.get(name)
        if tool is not None and tool.behavior == "BLOCKING":
            return None
        if tool is None or "error" in response or tool.scheduling is None:
            return DEFAULT_SCHEDULING
        chosen = tool.scheduling(dict(response)) if callable(tool.scheduling) else tool.scheduling
        if chosen not in _SCHEDULINGS:
            logger.error("tool %s chose scheduling %r; using %s", name, chosen, DEFAULT_SCHEDULING)
            return DEFAULT_SCHEDULING
        return chosen

    def timeout_for(self, name: str) -> float:
        """The timeout `call()` applies to `name` when none is passed."""
        tool = self._tool(name)
        return tool.timeout if tool.timeout is not None else self.default_timeout

    # ---- validation and calls

    def _tool(self, name: str) -> _Tool:
        try:
            return self._tools[name]
        except (KeyError, TypeError):
            known = ", ".join(self._tools) or "none"
            raise UnknownTool(f"there is no tool named {str(name)[:64]!r}; available tools: {known}") from None

    def validate(self, name: str, args: Mapping[str, Any] | None) -> dict[str, Any]:
        """Check the model's arguments for `name`; return the keyword arguments to call it with.

        Raises UnknownTool or InvalidArguments, whose message is meant for the model.
        """
        tool = self._tool(name)
        if args is None:
            args = {}
        if not isinstance(args, Mapping):
            raise InvalidArguments(f"arguments for {name} must be an object, not {_json_type(args)}")
        unexpected = [k for k in args if k not in tool.params]
        if unexpected:
            takes = ", ".join(tool.params) or "no arguments"
            shown = ", ".join(repr(str(k)[:64]) for k in unexpected[:5])
            plural = "s" if len(unexpected) > 1 else ""
            raise InvalidArguments(f"unexpected argument{plural} {shown} ({name} takes: {takes})")
        kwargs: dict[str, Any] = {}
        for pname, param in tool.params.items():
            if pname not in args or (args[pname] is None and param.has_default and not param.spec.nullable):
                # A null for an optional parameter means "not given": use the default.
                if param.required:
                    raise InvalidArguments(f"missing argument {pname!r}")
                continue
            kwargs[pname] = param.spec.coerce(args[pname], f"argument {pname!r}")
        return kwargs

    async def call(self, name: str, args: Mapping[str, Any] | None, ctx: CallContext | None = None,
                   *, timeout: float | None = None) -> dict[str, Any]:
        """Run tool `name` and return `{"result": value}` or `{"error": message}`.

        Never raises except asyncio.CancelledError, which is the caller cancelling us.
        `timeout` overrides the tool's own timeout and the registry default.
        """
        sid = f"call {ctx.call_sid}: " if ctx is not None else ""
        try:
            tool = self._tool(name)
            kwargs = self.validate(name, args)
        except (UnknownTool, InvalidArguments) as exc:
            logger.warning("%stool call %s refused: %s", sid, str(name)[:64], exc)
            return {"error": str(exc)}

        if tool.ctx_param is not None:
            if ctx is None and tool.ctx_required:
                message = f"{name} cannot run: no call context was given"
                logger.error("%s%s", sid, message)
                return {"error": message}
            kwargs[tool.ctx_param] = ctx

        if timeout is not None:
            limit = _check_timeout(timeout, "timeout")
        else:
            limit = tool.timeout if tool.timeout is not None else self.default_timeout

        deadline = asyncio.timeout(limit)
        try:
            async with deadline:
                if tool.is_async:
                    value = await tool.fn(**kwargs)
                else:
                    value = await asyncio.to_thread(tool.fn, **kwargs)
                if inspect.isawaitable(value):  # a sync wrapper returning a coroutine
                    value = await value
        except TimeoutError as exc:
            if deadline.expired():
                message = f"{name} timed out after {limit:g} s"
                logger.warning("%s%s", sid, message)
                return {"error": message}
            return self._failed(sid, name, exc)
        except Exception as exc:
            return self._failed(sid, name, exc)

        try:
            return {"result": _json_safe(value)}
        except Exception as exc:  # a __str__ that raises, and the like
            return self._failed(sid, name, exc)

    @staticmethod
    def _failed(sid: str, name: str, exc: BaseException) -> dict[str, Any]:
        detail = str(exc).strip().replace("\n", " ")
        if len(detail) > _MAX_ERROR_DETAIL:
            detail = detail[: _MAX_ERROR_DETAIL - 3] + "..."
        message = f"{name} failed: {type(exc).__name__}" + (f": {detail}" if detail else "")
        # One line; the traceback only when debugging.
        logger.error("%s%s", sid, message, exc_info=exc if logger.isEnabledFor(logging.DEBUG) else None)
        return {"error": message}


def _check_timeout(value: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < math.inf):
        raise ValueError(f"{what} must be a positive number of seconds, got {value!r}")
    return float(value)


def _json_safe(value: Any, depth: int = 0) -> Any:
    """A copy of `value` that json.dumps accepts: dataclasses as dicts, odd values as str()."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if depth > _MAX_JSON_DEPTH:
        return str(value)
    if isinstance(value, enum.Enum):
        return _json_safe(value.value, depth + 1)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _json_safe(getattr(value, f.name), depth + 1) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_json_safe(v, depth + 1) for v in value]
    if isinstance(value, (_dt.date, _dt.time)):  # datetime is a date
        return value.isoformat()
    return str(value)
