"""The business's agents: who answers which number, how, and with which tools.

An agent is the deployer's data and code, never the package's: its instructions,
greeting, voice, language, spoken messages and transfer directory come from an
agents file (TOML, `AGENTS_FILE`), and its tools from a Python module of theirs
(`tools = "clinic.tools"`). Without a file, one agent named "default" is built
from the environment exactly as before, so an existing deployment keeps working.

Everything is checked once, at start-up, and every mistake is one `SettingsError`
line naming the agent and the key: a wrong voice, a module that does not import,
a tool the model could not call, a number claimed twice. A call then only looks
its agent up (`AgentBook.for_number`, `AgentBook.named`) and never fails on it.

The reference of the file, key by key, is docs/agents.md.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import re
import sys
import tomllib
import types as _pytypes
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .errors import SettingsError
from .settings import (
    DEFAULT_GREETING,
    DEFAULT_INSTRUCTIONS,
    LIVE_LANGUAGES,
    LIVE_VOICES,
    TRANSFER_MODES,
    Settings,
    canonical_voice,
    transfer_target,
)
from .tool_registry import ToolRegistry

__all__ = [
    "Agent", "AgentBook", "Messages", "NoAgent", "load_agents", "agent_from_settings", "DEMO_TOOLS_MODULE",
    "messages_for", "LIVE_VOICES", "LIVE_LANGUAGES",
]

log = logging.getLogger("telephony.agents")

#: The demo shop's tools (the repository's top-level `tools/`): the env-only agent uses
#: them when they can be imported from the working directory (a checkout of the repository).
DEMO_TOOLS_MODULE = "tools"
#: What marks the demo instructions, which should never answer a real number.
DEMO_MARKER = "Acme Outfitters"
_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")
_E164_RE = re.compile(r"\+[1-9][0-9]{6,14}")
_MODULE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_SENSITIVITY = {"low": "LOW", "high": "HIGH"}
_PRODUCT_TOOLS = ("end_call", "transfer_call")


class NoAgent(LookupError):
    """No configured agent answers this number (and there is no default agent), or has this name."""


@dataclass(frozen=True)
class Messages:
    """What Twilio says (`<Say>`) when the agent itself cannot: Gemini unavailable, every
    line busy, a caller over their call limits. Spoken in the agent's language."""

    unavailable: str
    busy: str
    over_limit: str


#: Defaults by language (the part before the dash of the agent's language).
DEFAULT_MESSAGES: dict[str, Messages] = {
    "en": Messages(
        "Sorry, our phone assistant is not available right now. Please call again later. Goodbye.",
        "Sorry, all of our lines are busy right now. Please call again in a few minutes. Goodbye.",
        "Sorry, we are receiving too many calls from your number right now. Please try again later. Goodbye.",
    ),
    "es": Messages(
        "Lo sentimos, nuestro asistente telefónico no está disponible en este momento. "
        "Por favor, vuelva a llamar más tarde. Adiós.",
        "Lo sentimos, todas nuestras líneas están ocupadas. Por favor, vuelva a llamar en unos minutos. Adiós.",
        "Lo sentimos, estamos recibiendo demasiadas llamadas desde su número. "
        "Por favor, inténtelo más tarde. Adiós.",
    ),
    "fr": Messages(
        "Désolé, notre assistant téléphonique n'est pas disponible pour le moment. "
        "Merci de rappeler plus tard. Au revoir.",
        "Désolé, toutes nos lignes sont occupées. Merci de rappeler dans quelques minutes. Au revoir.",
        "Désolé, nous recevons trop d'appels de votre numéro en ce moment. Merci de réessayer plus tard. Au revoir.",
    ),
    "de": Messages(
        "Entschuldigung, unser Telefonassistent ist gerade nicht erreichbar. "
        "Bitte rufen Sie später noch einmal an. Auf Wiederhören.",
        "Entschuldigung, alle Leitungen sind gerade besetzt. "
        "Bitte rufen Sie in ein paar Minuten noch einmal an. Auf Wiederhören.",
        "Entschuldigung, von Ihrer Nummer kommen gerade zu viele Anrufe. "
        "Bitte versuchen Sie es später noch einmal. Auf Wiederhören.",
    ),
    "it": Messages(
        "Ci scusi, il nostro assistente telefonico non è disponibile in questo momento. "
        "La preghiamo di richiamare più tardi. Arrivederci.",
        "Ci scusi, tutte le linee sono occupate. La preghiamo di richiamare tra qualche minuto. Arrivederci.",
        "Ci scusi, stiamo ricevendo troppe chiamate dal suo numero. La preghiamo di riprovare più tardi. Arrivederci.",
    ),
    "pt": Messages(
        "Desculpe, o nosso assistente telefónico não está disponível agora. Por favor, ligue mais tarde. Adeus.",
        "Desculpe, todas as nossas linhas estão ocupadas. Por favor, ligue daqui a alguns minutos. Adeus.",
        "Desculpe, estamos a receber demasiadas chamadas do seu número. Por favor, tente mais tarde. Adeus.",
    ),
    "nl": Messages(
        "Sorry, onze telefoonassistent is nu niet beschikbaar. Belt u later nog eens. Tot ziens.",
        "Sorry, al onze lijnen zijn bezet. Belt u over een paar minuten nog eens. Tot ziens.",
        "Sorry, we krijgen nu te veel oproepen van uw nummer. Probeert u het later nog eens. Tot ziens.",
    ),
}


def messages_for(language: str | None) -> Messages | None:
    """The default messages for a language code (en-US, es-ES, ...), or None if we have none."""
    return DEFAULT_MESSAGES.get((language or "en").split("-")[0].lower())


@dataclass(frozen=True)
class Agent:
    """One agent, as a call uses it. Built and checked at start-up; never changed after."""

    name: str
    numbers: tuple[str, ...]
    default: bool
    instructions: str
    greeting: str
    voice: str
    language: str | None
    messages: Messages
    tools: ToolRegistry = field(compare=False, repr=False)
    transfer_targets: tuple[tuple[str, str], ...] = ()
    #: The targets reached by a warm transfer (held caller, briefed person: transfer.py).
    warm_transfer_targets: frozenset[str] = frozenset()
    #: What the agent says on an answering machine reached by an outbound call (None: hang up).
    voicemail_message: str | None = None
    tools_module: str | None = None
    #: What `CallContext.tool_settings` carries: the module's `ToolSettings` instance, or a
    #: read-only mapping of the `[agents.tool_settings]` table when it declares none.
    tool_settings: Any = field(default=None, compare=False, repr=False)
    #: Twilio's `<Say language=...>` for the messages (None: Twilio's default, English).
    say_language: str | None = None
    #: Twilio's `<Say voice=...>` (e.g. Polly.Lucia); None: Twilio's default voice for the language.
    say_voice: str | None = None
    #: The tools module's `prepare(settings, tool_settings)`, run once at server start-up.
    prepare: Any = field(default=None, compare=False, repr=False)
    vad_start_sensitivity: str = "LOW"
    vad_end_sensitivity: str = "HIGH"
    vad_prefix_padding_ms: int = 40
    vad_silence_duration_ms: int = 500
    model_watchdog_s: float = 8.0
    max_call_s: float = 3600.0

    @property
    def is_demo(self) -> bool:
        """The demo shop's instructions: fine in the simulator, never on a real number."""
        return DEMO_MARKER in self.instructions or DEMO_MARKER in self.greeting

    def answers(self) -> str:
        """The numbers it answers, for logs and `telephony agents`."""
        shown = list(self.numbers) + (["default"] if self.default else [])
        return ", ".join(shown) or "(none)"


class AgentBook:
    """Every configured agent, found by the number dialled or by name."""

    def __init__(self, agents: Iterable[Agent]):
        self.agents: tuple[Agent, ...] = tuple(agents)
        if not self.agents:
            raise SettingsError("no agent is configured")
        self._by_name = {a.name: a for a in self.agents}
        self._by_number = {n: a for a in self.agents for n in a.numbers}
        defaults = [a for a in self.agents if a.default]
        self.default: Agent | None = defaults[0] if defaults else None

    def for_number(self, number: str | None) -> Agent:
        """The agent answering `number` (E.164), else the default agent; NoAgent if neither."""
        agent = self._by_number.get((number or "").strip())
        if agent is not None:
            return agent
        if self.default is not None:
            return self.default
        raise NoAgent(f"no agent answers {number or '(no number)'} and no agent is the default")

    def named(self, name: str | None) -> Agent:
        try:
            return self._by_name[(name or "").strip()]
        except KeyError:
            raise NoAgent(f"there is no agent named {str(name)[:40]!r}; agents: {', '.join(self._by_name)}") from None

    def for_refusal(self, number: str | None) -> Agent:
        """Whose words to refuse a call with: the number's agent, else the first one."""
        try:
            return self.for_number(number)
        except NoAgent:
            return self.agents[0]

    def names(self) -> list[str]:
        return list(self._by_name)

    def prepare(self, settings: Settings) -> None:
        """Run each tools module's `prepare` hook once (a database to create, a key to check),
        when the server starts. Its failure is one SettingsError line naming the agent."""
        done: set[int] = set()
        for agent in self.agents:
            if agent.prepare is None or id(agent.prepare) in done:
                continue
            done.add(id(agent.prepare))
            try:
                agent.prepare(settings, agent.tool_settings)
            except SettingsError:
                raise
            except Exception as exc:
                raise SettingsError(f"agent {agent.name!r}: tools {agent.tools_module!r} could not start: "
                                    f"{type(exc).__name__}: {str(exc).strip()[:200]}") from None

    def tool_names(self) -> frozenset[str]:
        return frozenset(n for a in self.agents for n in a.tools.names())

    def __iter__(self):
        return iter(self.agents)

    def __len__(self) -> int:
        return len(self.agents)

    def table(self) -> list[tuple[str, str, str, str, str]]:
        """(number, agent, voice, language, tools) rows, numbers first, the default last."""
        rows = []
        for a in self.agents:
            for n in a.numbers:
                rows.append((n, a.name, a.voice, a.language or "auto", ", ".join(a.tools.names())))
        if self.default is not None:
            a = self.default
            rows.append(("default", a.name, a.voice, a.language or "auto", ", ".join(a.tools.names())))
        return rows


# ----------------------------------------------------------------------------- building agents


def load_agents(settings: Settings, *, tools: ToolRegistry | None = None) -> AgentBook:
    """The agents of this deployment: from `settings.agents_file`, or one from the environment.

    `tools` (tests, embedding) replaces every agent's business tools with this registry.
    Raises SettingsError with one line for the first mistake found.
    """
    if settings.agents_file is None:
        book = AgentBook([agent_from_settings(settings, tools=tools)])
    else:
        book = AgentBook(_read_file(settings.agents_file, settings, tools))
    _check_numbers(book, settings)
    return book


def agent_from_settings(settings: Settings, *, tools: ToolRegistry | None = None, name: str = "default") -> Agent:
    """The one agent of a deployment without an agents file, exactly as the environment says.

    Its tools: `tools` if given, else AGENT_TOOLS, else the demo shop's when importable
    from the working directory (a checkout of the repository); else only end_call.
    """
    module = settings.agent_tools
    prepare = None
    if tools is not None:
        business = tools
    elif module is not None:
        business, _, prepare = _import_tools(module, f"AGENT_TOOLS={module!r}")
    else:
        business, prepare = _demo_tools()
        module = DEMO_TOOLS_MODULE if business is not None else None
    language = settings.gemini_language
    messages = messages_for(language) or DEFAULT_MESSAGES["en"]
    return Agent(
        name=name, numbers=(), default=True, instructions=settings.agent_instructions,
        greeting=settings.agent_greeting, voice=settings.gemini_voice, language=language, messages=messages,
        tools=_with_call_control(business, settings.transfer_targets, settings.tool_timeout_s, name),
        transfer_targets=settings.transfer_targets, tools_module=module,
        warm_transfer_targets=settings.warm_transfer_targets, voicemail_message=settings.voicemail_message,
        say_language=_say_language(language), tool_settings=_pytypes.MappingProxyType({}), prepare=prepare,
        vad_start_sensitivity=settings.vad_start_sensitivity, vad_end_sensitivity=settings.vad_end_sensitivity,
        vad_prefix_padding_ms=settings.vad_prefix_padding_ms, vad_silence_duration_ms=settings.vad_silence_duration_ms,
        model_watchdog_s=settings.model_watchdog_s, max_call_s=settings.max_call_s,
    )


def _demo_tools() -> tuple[ToolRegistry | None, Any]:
    _import_path(None)
    try:
        module = importlib.import_module(DEMO_TOOLS_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name != DEMO_TOOLS_MODULE:
            raise SettingsError(f"the demo tools ({DEMO_TOOLS_MODULE}/) do not import: {exc}") from None
        log.info("the demo tools (%s/) are not importable from here: the agent has call-control tools only; "
                 "set AGENT_TOOLS or AGENTS_FILE to give it yours", DEMO_TOOLS_MODULE)
        return None, None
    registry = getattr(module, "registry", None)
    if not isinstance(registry, ToolRegistry):  # some other package named `tools`
        return None, None
    return registry, _prepare_hook(module, f"the demo tools ({DEMO_TOOLS_MODULE}/)")


_KEYS = {"name", "numbers", "instructions", "instructions_file", "greeting", "voice", "language", "tools",
         "transfer_targets", "messages", "tool_settings", "call", "say_language", "say_voice", "transfer_mode",
         "voicemail_message"}
_CALL_KEYS = {"vad_start_sensitivity", "vad_end_sensitivity", "vad_prefix_padding_ms", "vad_silence_duration_ms",
              "model_watchdog_seconds", "max_call_seconds"}


def _read_file(path: Path, settings: Settings, tools: ToolRegistry | None) -> list[Agent]:
    where = f"AGENTS_FILE={str(path)!r}"
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise SettingsError(f"{where} cannot be read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{where} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - {"agents"})
    if unknown:
        raise SettingsError(f"{where}: unknown top-level key {unknown[0]!r}; agents are [[agents]] tables")
    entries = data.get("agents")
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        raise SettingsError(f"{where} defines no agent: add an [[agents]] table")
    agents: list[Agent] = []
    names: set[str] = set()
    for i, entry in enumerate(entries, 1):
        agent = _agent_from_table(entry, i, path.parent, settings, tools)
        if agent.name in names:
            raise SettingsError(f"{where}: two agents are named {agent.name!r}")
        names.add(agent.name)
        agents.append(agent)
    return agents


def _agent_from_table(t: dict, index: int, folder: Path, settings: Settings, tools: ToolRegistry | None) -> Agent:
    name = t.get("name")
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise SettingsError(f"agent #{index}: name must be lower-case letters, digits, '-' or '_' "
                            f"(at most 40), got {name!r}")
    where = f"agent {name!r}"
    unknown = sorted(set(t) - _KEYS)
    if unknown:
        raise SettingsError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(_KEYS))})")

    numbers, default = _numbers(t.get("numbers"), where)
    instructions = _instructions(t, where, folder)
    greeting = _text(t.get("greeting", DEFAULT_GREETING), f"{where}: greeting")
    voice = _voice(t.get("voice", settings.gemini_voice), where)
    language = t.get("language", settings.gemini_language)
    if language is not None and language not in LIVE_LANGUAGES:
        raise SettingsError(f"{where}: language {language!r} is not a Live speech language "
                            f"(e.g. en-US, es-ES, es-US; see docs/agents.md)")
    messages = _messages(t.get("messages", {}), language, where)
    say_language = t.get("say_language", _say_language(language))
    if say_language is not None and not (isinstance(say_language, str) and re.fullmatch(r"[a-z]{2,3}(-[A-Za-z]{2,4})?", say_language)):
        raise SettingsError(f"{where}: say_language {say_language!r} is not a language code (e.g. es-MX)")
    say_voice = t.get("say_voice")
    if say_voice is not None and not (isinstance(say_voice, str) and re.fullmatch(r"[A-Za-z][A-Za-z0-9._-]{0,63}", say_voice)):
        raise SettingsError(f"{where}: say_voice {say_voice!r} is not a Twilio voice name (e.g. Polly.Lucia)")
    mode = t.get("transfer_mode", "cold")
    if mode not in TRANSFER_MODES:
        raise SettingsError(f"{where}: transfer_mode must be 'cold' or 'warm', got {mode!r}")
    targets, warm = _targets(t.get("transfer_targets", {}), where, mode)
    if warm:
        missing = [n for n, v in (("TWILIO_PHONE_NUMBER", settings.twilio_phone_number), ("PUBLIC_URL", settings.public_url),
                                  ("TWILIO_ACCOUNT_SID", settings.twilio_account_sid),
                                  ("TWILIO_AUTH_TOKEN", settings.twilio_auth_token)) if not v]
        if missing:
            raise SettingsError(f"{where}: warm transfers ({', '.join(sorted(warm))}) need {' and '.join(missing)}")
    voicemail = t.get("voicemail_message", settings.voicemail_message)
    if voicemail is not None:
        voicemail = _text(voicemail, f"{where}: voicemail_message")[:1000]

    module = t.get("tools")
    settings_type = None
    if module is not None:
        if not isinstance(module, str) or not _MODULE_RE.fullmatch(module):
            raise SettingsError(f"{where}: tools must be a module name such as 'clinic.tools', got {module!r}")
        business, settings_type, prepare = _import_tools(module, f"{where}: tools {module!r}", folder)
    else:
        business, prepare = None, None
    if tools is not None:
        business = tools
    tool_settings = _tool_settings(t.get("tool_settings"), settings_type, where, module)
    call = t.get("call", {})
    if not isinstance(call, dict):
        raise SettingsError(f"{where}: call must be a table ([agents.call])")
    bad = sorted(set(call) - _CALL_KEYS)
    if bad:
        raise SettingsError(f"{where}: unknown key call.{bad[0]} (known: {', '.join(sorted(_CALL_KEYS))})")

    return Agent(
        name=name, numbers=numbers, default=default, instructions=instructions, greeting=greeting, voice=voice,
        language=language, messages=messages,
        tools=_with_call_control(business, targets, settings.tool_timeout_s, name),
        transfer_targets=targets, warm_transfer_targets=warm, voicemail_message=voicemail,
        tools_module=module, tool_settings=tool_settings,
        say_language=say_language, say_voice=say_voice, prepare=prepare,
        vad_start_sensitivity=_sensitivity(call, "vad_start_sensitivity", settings.vad_start_sensitivity, where),
        vad_end_sensitivity=_sensitivity(call, "vad_end_sensitivity", settings.vad_end_sensitivity, where),
        vad_prefix_padding_ms=int(_ranged(call, "vad_prefix_padding_ms", settings.vad_prefix_padding_ms, 0, 2000, where, int)),
        vad_silence_duration_ms=int(_ranged(call, "vad_silence_duration_ms", settings.vad_silence_duration_ms, 100, 5000, where, int)),
        model_watchdog_s=_ranged(call, "model_watchdog_seconds", settings.model_watchdog_s, 0, 120, where),
        max_call_s=_ranged(call, "max_call_seconds", settings.max_call_s, 0, 86400, where),
    )


def _numbers(raw: Any, where: str) -> tuple[tuple[str, ...], bool]:
    if raw is None:
        raise SettingsError(f"{where}: numbers is missing: list its E.164 numbers, or \"default\" for any other number")
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise SettingsError(f"{where}: numbers must be a list such as [\"+15551230001\"] or [\"default\"]")
    numbers: list[str] = []
    default = False
    for n in raw:
        if n == "default":
            default = True
        elif isinstance(n, str) and _E164_RE.fullmatch(n.strip()):
            if n.strip() in numbers:
                raise SettingsError(f"{where}: number {n} is listed twice")
            numbers.append(n.strip())
        else:
            raise SettingsError(f"{where}: number {n!r} is not E.164 (e.g. +15551230001) or \"default\"")
    return tuple(numbers), default


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise SettingsError(f"{what} must be a non-empty string")
    return value.strip()


def _instructions(t: dict, where: str, folder: Path) -> str:
    inline, file = t.get("instructions"), t.get("instructions_file")
    if inline is not None and file is not None:
        raise SettingsError(f"{where}: set instructions or instructions_file, not both")
    if file is not None:
        if not isinstance(file, str) or not file.strip():
            raise SettingsError(f"{where}: instructions_file must be a path")
        path = folder / file
        try:
            text = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SettingsError(f"{where}: instructions_file {file!r} cannot be read ({path}): {exc.strerror}") from None
        if not text:
            raise SettingsError(f"{where}: instructions_file {file!r} is empty")
        return text
    if inline is None:
        raise SettingsError(f"{where}: instructions (or instructions_file) is missing: tell the model who it is")
    return _text(inline, f"{where}: instructions")


def _voice(raw: Any, where: str) -> str:
    voice = canonical_voice(raw) if isinstance(raw, str) else None
    if voice is None:
        raise SettingsError(f"{where}: voice {raw!r} is not a Live prebuilt voice (e.g. Kore, Puck, Aoede; "
                            "the list is in docs/agents.md)")
    return voice


def _say_language(language: str | None) -> str | None:
    """Twilio's <Say language> takes the same BCP-47 codes (es-ES, es-US, fr-FR, ...)."""
    return language


def _messages(raw: Any, language: str | None, where: str) -> Messages:
    if not isinstance(raw, dict):
        raise SettingsError(f"{where}: messages must be a table ([agents.messages])")
    bad = sorted(set(raw) - {"unavailable", "busy", "over_limit"})
    if bad:
        raise SettingsError(f"{where}: unknown key messages.{bad[0]} (known: busy, over_limit, unavailable)")
    defaults = messages_for(language)
    if defaults is None and set(raw) != {"unavailable", "busy", "over_limit"}:
        raise SettingsError(
            f"{where}: there are no default messages in {language!r}: set messages.unavailable, messages.busy "
            f"and messages.over_limit (defaults exist for {', '.join(sorted(DEFAULT_MESSAGES))})"
        )
    values = {}
    for key in ("unavailable", "busy", "over_limit"):
        values[key] = _text(raw[key], f"{where}: messages.{key}") if key in raw else getattr(defaults, key)
    return Messages(**values)


def _targets(raw: Any, where: str, mode: str = "cold") -> tuple[tuple[tuple[str, str], ...], frozenset[str]]:
    """The directory, and which of its targets get a warm transfer (`"+15551230009;warm"`,
    or `transfer_mode = "warm"` for all but those marked `;cold`)."""
    if not isinstance(raw, dict):
        raise SettingsError(f"{where}: transfer_targets must be a table such as {{ reception = \"+15551230009\" }}")
    out, warm = [], set()
    for name, dest in raw.items():
        if not isinstance(dest, str):
            raise SettingsError(f"{where}: transfer_targets.{name} must name an E.164 number (+15551230009) "
                                "or a sip: URI")
        try:
            key, destination, is_warm = transfer_target(str(name), dest, mode, f"{where}: transfer_targets.{name}")
        except SettingsError:
            raise SettingsError(f"{where}: transfer_targets.{name} must name an E.164 number (+15551230009) "
                                "or a sip: URI, optionally followed by ;warm or ;cold") from None
        out.append((key, destination))
        if is_warm:
            warm.add(key)
    return tuple(out), frozenset(warm)


def _sensitivity(call: dict, key: str, default: str, where: str) -> str:
    raw = call.get(key)
    if raw is None:
        return default
    if not isinstance(raw, str) or raw.lower() not in _SENSITIVITY:
        raise SettingsError(f"{where}: call.{key} must be \"low\" or \"high\", got {raw!r}")
    return _SENSITIVITY[raw.lower()]


def _ranged(call: dict, key: str, default: float, lo: float, hi: float, where: str, cast: type = float) -> float:
    raw = call.get(key)
    if raw is None:
        return default
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or (cast is int and not float(raw).is_integer()):
        raise SettingsError(f"{where}: call.{key} must be a {'whole ' if cast is int else ''}number, got {raw!r}")
    if not lo <= raw <= hi:
        raise SettingsError(f"{where}: call.{key}={raw} is out of range ({lo}..{hi})")
    return cast(raw)


# ----------------------------------------------------------------------------- tools


def _import_path(folder: Path | None) -> None:
    """Tool modules import from the working directory (and the agents file's folder), as
    `python -m` would: the `telephony` console script does not put either on sys.path."""
    for entry in (os.getcwd(), str(folder.resolve()) if folder is not None else None):
        if entry and entry not in sys.path:
            sys.path.insert(0, entry)


def _import_tools(module_name: str, where: str, folder: Path | None = None) -> tuple[ToolRegistry, type | None, Any]:
    """The module's `registry` (a ToolRegistry), its `ToolSettings` dataclass and its
    `prepare` hook, if any."""
    _import_path(folder)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise SettingsError(f"{where} cannot be imported: {exc} (run from its project folder, or install it)") from None
    except Exception as exc:  # a tool the model could not call raises TypeError/ValueError at import
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise SettingsError(f"{where} does not import: {type(exc).__name__}: {detail}") from None
    registry = getattr(module, "registry", None)
    if not isinstance(registry, ToolRegistry):
        raise SettingsError(f"{where} has no `registry = ToolRegistry()` (from telephony.tool_registry) "
                            "registering its tools")
    for decl in registry.declarations():
        if not (decl.description or "").strip():
            raise SettingsError(f"{where}: tool {decl.name!r} has no description: start its docstring with "
                                "when the model should call it")
    clash = [n for n in registry.names() if n in _PRODUCT_TOOLS]
    if clash:
        raise SettingsError(f"{where} registers {clash[0]!r}, which the product provides (telephony.call_control); "
                            "remove it from the module")
    settings_type = getattr(module, "ToolSettings", None)
    if settings_type is not None and not (isinstance(settings_type, type) and dataclasses.is_dataclass(settings_type)):
        raise SettingsError(f"{where}: ToolSettings must be a dataclass")
    return registry, settings_type, _prepare_hook(module, where)


def _prepare_hook(module: Any, where: str) -> Any:
    prepare = getattr(module, "prepare", None)
    if prepare is not None and not callable(prepare):
        raise SettingsError(f"{where}: prepare must be a function prepare(settings, tool_settings)")
    return prepare


def _with_call_control(business: ToolRegistry | None, targets: tuple, timeout: float, agent: str) -> ToolRegistry:
    """The agent's tools: its business tools, end_call, and transfer_call only with somewhere to transfer to."""
    from .call_control import end_call, end_call_scheduling, transfer_call

    registry = ToolRegistry(default_timeout=timeout)
    if business is not None:
        registry.include(business)
    # When the model speaks after each result (docs/gemini-live.md §8): end_call is SILENT once the
    # call is ending (the goodbye was said in the turn that called it), INTERRUPT when it
    # could not end it; transfer_call INTERRUPT, the hand-off sentence comes now.
    if "end_call" not in registry:
        registry.register(end_call, behavior="NON_BLOCKING", scheduling=end_call_scheduling)
    if targets and "transfer_call" not in registry:
        registry.register(transfer_call, behavior="NON_BLOCKING", scheduling="INTERRUPT")
    return registry


_SETTING_TYPES = (str, int, float, bool)


def _tool_settings(raw: Any, settings_type: type | None, where: str, module: str | None) -> Any:
    """The `[agents.tool_settings]` table, checked against the module's `ToolSettings`.

    A string value "env:NAME" is read from the environment variable NAME at start-up,
    so a secret (an API key) need not be written in the agents file."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SettingsError(f"{where}: tool_settings must be a table ([agents.tool_settings])")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, str) and value.startswith("env:"):
            var = value[4:]
            if not var or os.environ.get(var) is None:
                raise SettingsError(f"{where}: tool_settings.{key} reads the environment variable {var!r}, "
                                    "which is not set")
            value = os.environ[var]
        values[key] = value
    if settings_type is None:
        for key, value in values.items():
            if not isinstance(value, _SETTING_TYPES):
                raise SettingsError(f"{where}: tool_settings.{key} must be a string, number or true/false")
        return _pytypes.MappingProxyType(values)
    hints = typing.get_type_hints(settings_type)
    fields = {f.name: f for f in dataclasses.fields(settings_type)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise SettingsError(f"{where}: tool_settings.{unknown[0]} is not a field of {module}.ToolSettings "
                            f"(fields: {', '.join(fields) or 'none'})")
    for fname, f in fields.items():
        if fname not in values:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise SettingsError(f"{where}: tool_settings.{fname} is missing ({module}.ToolSettings needs it)")
            continue
        values[fname] = _coerce_setting(values[fname], hints.get(fname), f"{where}: tool_settings.{fname}")
    return settings_type(**values)


def _coerce_setting(value: Any, hint: Any, what: str) -> Any:
    if hint in (None, typing.Any):
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and re.fullmatch(r"-?[0-9]+", value.strip()):
            return int(value)
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
    else:
        return value
    raise SettingsError(f"{what} must be {getattr(hint, '__name__', hint)}, got {value!r}")


# ----------------------------------------------------------------------------- the book as a whole


def _check_numbers(book: AgentBook, settings: Settings) -> None:
    seen: dict[str, str] = {}
    for agent in book:
        for number in agent.numbers:
            if number in seen:
                raise SettingsError(f"number {number} is claimed by two agents: {seen[number]!r} and {agent.name!r}")
            seen[number] = agent.name
    defaults = [a.name for a in book if a.default]
    if len(defaults) > 1:
        raise SettingsError(f"two agents are the default: {defaults[0]!r} and {defaults[1]!r}; keep one")
    ours = settings.twilio_phone_number
    if ours and ours not in seen and not defaults:
        raise SettingsError(f"TWILIO_PHONE_NUMBER {ours} is answered by no agent and no agent is the default: "
                            "add it to an agent's numbers, or add \"default\" to one")


def warn_about_demo(book: AgentBook, settings: Settings) -> list[str]:
    """One warning per agent that would put the demo shop on a real number."""
    warnings = []
    if settings.public_url:
        for agent in book:
            if agent.is_demo:
                warnings.append(
                    f"agent {agent.name!r} uses the demo instructions (Acme Outfitters) on a public deployment "
                    "(PUBLIC_URL is set): give it your own instructions (AGENT_INSTRUCTIONS or an agents file)")
    for line in warnings:
        log.warning("%s", line)
    return warnings
