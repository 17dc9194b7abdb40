"""All configuration, read once from the environment and validated at start-up.

A bad value raises `SettingsError` naming the variable, so a misconfigured
deployment fails before it answers its first call instead of during one.
The Live endpoint itself is never configured here: the google-genai SDK reads
`GOOGLE_GEMINI_BASE_URL` and `SSL_CERT_FILE` on its own.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Mapping
from urllib.parse import urlsplit

from .errors import SettingsError

DEFAULT_MODEL = "gemini-3.8-live"
#: Live model families this agent is built for (docs/gemini-live.md §9), by name prefix. What
#: we send suits each: no thinking settings (3.8 Live rejects them with 1007), no
#: proactivity (always on in 3.8; `proactive_audio: false` is an error), no affective
#: dialog, NON_BLOCKING tools with a `scheduling` on each response.
SUPPORTED_MODEL_FAMILIES = ("gemini-3.8-live", "gemini-2.5-flash-native-audio", "gemini-live-2.5-flash-native-audio")
#: The same families under the ids Vertex AI serves (docs/gemini-live.md §9, §12).
VERTEX_MODEL_FAMILIES = ("gemini-3.8-live", "gemini-live-2.5-flash-native-audio", "gemini-live-2.5-flash-preview-native-audio")
#: Vertex serves the 2.5 native-audio Live models in these regions only, not on `global` (§12).
VERTEX_LIVE_25_LOCATIONS = ("us-central1", "us-east5", "europe-west4")
#: A Vertex AI location: global, a multi-region (us, eu) or a region such as us-central1.
_LOCATION_RE = re.compile(r"global|us|eu|[a-z]+-[a-z]+[0-9]+")
#: A Google Cloud project id (optionally domain-scoped, example.com:my-project).
_PROJECT_RE = re.compile(r"(?:[a-z0-9.-]+:)?[a-z][a-z0-9-]{4,28}[a-z0-9]")
#: Families refused at start-up, with why: a call would fail on its first tool response or turn.
REFUSED_MODELS = {
    "-extended-thinking": "needs a thinking level, rejects tool `scheduling` with 1007 and its turnComplete "
                          "does not mean idle; not supported by this agent",
    "gemini-3.1-flash-live": "calls functions synchronously only, while our tools are NON_BLOCKING; use gemini-3.8-live",
}
#: A BCP-47 speech language code as Live takes it: en-US, es-ES, cmn-CN, ...
_LANGUAGE_RE = re.compile(r"[a-z]{2,3}-[A-Z]{2}")
DEFAULT_VOICE = "Kore"
#: The prebuilt voices of the Live native-audio models (Gemini API speech generation docs;
#: the same 30 names on Vertex AI). README "Make it your agent" lists them too.
LIVE_VOICES = (
    "Achernar", "Achird", "Algenib", "Algieba", "Alnilam", "Aoede", "Autonoe", "Callirrhoe", "Charon", "Despina",
    "Enceladus", "Erinome", "Fenrir", "Gacrux", "Iapetus", "Kore", "Laomedeia", "Leda", "Orus", "Puck",
    "Pulcherrima", "Rasalgethi", "Sadachbia", "Sadaltager", "Schedar", "Sulafat", "Umbriel", "Vindemiatrix",
    "Zephyr", "Zubenelgenubi",
)
#: The speech languages documented for `speech_config.language_code`: the Gemini API's list
#: and Vertex AI's, which adds ar-EG, bn-BD, ro-RO and uk-UA (docs/agents.md, "Languages").
#: Refusing a language the service takes would stop a valid deployment, so this is the union.
LIVE_LANGUAGES = (
    "ar-EG", "ar-XA", "bn-BD", "bn-IN", "cmn-CN", "de-DE", "en-AU", "en-GB", "en-IN", "en-US", "es-ES", "es-US",
    "fr-CA", "fr-FR", "gu-IN", "hi-IN", "id-ID", "it-IT", "ja-JP", "kn-IN", "ko-KR", "ml-IN", "mr-IN", "nl-NL",
    "pl-PL", "pt-BR", "ro-RO", "ru-RU", "ta-IN", "te-IN", "th-TH", "tr-TR", "uk-UA", "vi-VN",
)
#: The agents file read from the working directory when AGENTS_FILE is unset.
AGENTS_FILE_NAME = "agents.toml"
_VOICES_FOLDED = {v.casefold(): v for v in LIVE_VOICES}


def canonical_voice(name: str) -> str | None:
    """The voice's name as Live spells it (kore -> Kore), or None if it is no Live voice."""
    return _VOICES_FOLDED.get(name.strip().casefold())

DEFAULT_INSTRUCTIONS = (
    "You are the friendly phone agent of Acme Outfitters, an online outdoor-gear shop. "
    "You are speaking on a phone line, so keep every answer short, plain and spoken: "
    "no lists, no markdown, no URLs. Help callers with their orders: when they give an "
    "order number, look it up with the lookup_order tool and tell them its status, "
    "items and delivery estimate. Never invent order details; if a lookup fails, say so "
    "and offer to try again. Read order numbers back character by character. "
    "Order details are only shared with the phone number that placed the order; otherwise ask for "
    "the billing postcode or email on the order and pass it to lookup_order as verification. "
    "If the caller asks for a person, tell them you are transferring them and use transfer_call. "
    "When the conversation is over, say a short goodbye and call end_call."
)
DEFAULT_GREETING = (
    "A caller has just been connected. Greet them in one short sentence as the Acme "
    "Outfitters phone agent and ask how you can help."
)

_SENSITIVITY = {"low": "LOW", "high": "HIGH"}
#: Twilio's own hold music (the default waitUrl of <Conference> plays from the same collection).
HOLD_MUSIC_URL = "http://com.twilio.sounds.music.s3.amazonaws.com/MARKOVICHAMP-Borghestral.mp3"


@dataclass(frozen=True)
class Settings:
    """Everything the server needs, documented in docs/configuration.md."""

    gemini_api_key: str | None = field(default=None, repr=False)  # None on Vertex AI with ADC
    gemini_model: str = DEFAULT_MODEL
    gemini_voice: str = DEFAULT_VOICE
    gemini_language: str | None = None  # speech_config.language_code; None lets the model detect it
    # Vertex AI (GOOGLE_GENAI_USE_VERTEXAI): with a project, Application Default Credentials;
    # without one, the API key in express mode.
    vertexai: bool = False
    google_cloud_project: str | None = None
    google_cloud_location: str | None = None
    agent_instructions: str = DEFAULT_INSTRUCTIONS
    agent_greeting: str = DEFAULT_GREETING
    # The agents file (agents.py): None = one agent from the variables above.
    agents_file: Path | None = None
    agent_tools: str | None = None  # AGENT_TOOLS: the env-only agent's tools module
    public_url: str | None = None
    twilio_account_sid: str | None = None
    twilio_auth_token: str | None = field(default=None, repr=False)
    # Security (see SECURITY.md). None = auto: required when PUBLIC_URL is set.
    require_twilio_signature: bool | None = None
    stream_token_secret: str | None = field(default=None, repr=False)
    stream_token_ttl_s: float = 60.0
    max_calls_per_caller: int = 2
    max_calls_per_caller_per_hour: int = 20
    mask_phone_numbers: bool = True
    allowed_destinations: tuple[str, ...] = ()
    # Phone-line features.
    transfer_targets: tuple[tuple[str, str], ...] = ()  # (name, E.164 number or sip: URI)
    # Contact centre (docs/contact-centre.md): which targets get a warm transfer (held caller,
    # briefed human), how long their phone rings, what the held caller hears; voicemail.
    warm_transfer_targets: frozenset[str] = frozenset()
    transfer_ring_s: int = 25
    hold_music_url: str = HOLD_MUSIC_URL
    voicemail_message: str | None = None
    twilio_phone_number: str | None = None
    twilio_api_base_url: str | None = None  # tests and simulations only: a stand-in for api.twilio.com
    calls_db_path: Path = Path("data/calls.db")
    database_url: str | None = field(default=None, repr=False)  # call records in PostgreSQL instead (holds a password)
    calls_api_token: str | None = field(default=None, repr=False)
    # Estimated call cost (pricing.py), USD per million tokens. None = the price of
    # GEMINI_MODEL in pricing.MODEL_PRICES; set them to your contract's.
    price_audio_input_per_mtok: float | None = None
    price_audio_output_per_mtok: float | None = None
    price_text_input_per_mtok: float | None = None
    price_text_output_per_mtok: float | None = None
    price_cached_input_fraction: float | None = None  # share of the input price a cached token costs
    dtmf_timeout_s: float = 2.0
    goodbye_timeout_s: float = 15.0
    vad_start_sensitivity: str = "LOW"
    vad_end_sensitivity: str = "HIGH"
    vad_prefix_padding_ms: int = 40
    vad_silence_duration_ms: int = 500
    orders_db_path: Path = Path("data/orders.db")
    live_connect_timeout_s: float = 10.0
    tool_timeout_s: float = 10.0
    model_watchdog_s: float = 8.0
    max_call_s: float = 3600.0
    max_concurrent_calls: int = 200
    drain_timeout_s: float = 30.0
    move_wait_s: float = 5.0
    # Calls that survive a crash (moves.py): an owner that stops renewing loses its call's
    # lease after `call_lease_s`; a call nobody claims within `call_orphan_s` after that
    # has its record closed. Short enough to close a crashed call's record soon, long
    # enough for Twilio's /stream-ended and a new stream to claim it first.
    call_lease_s: float = 10.0
    call_orphan_s: float = 60.0
    log_level: str = "INFO"
    resampler: str = "fir"
    # Running more than one process (shared_state.py): unset = this process's memory.
    redis_url: str | None = field(default=None, repr=False)
    # Watching the line: /metrics, traces, call audio.
    metrics_open: bool = False  # serve /metrics without the CALLS_API_TOKEN (private networks only)
    otel_endpoint: str | None = None  # OTEL_EXPORTER_OTLP_ENDPOINT: traces are exported when set
    record_audio: bool = False
    recordings_dir: Path = Path("data/recordings")
    recording_retention_days: float = 30.0

    @property
    def public_host(self) -> str | None:
        """The host[:port] Twilio reaches, taken from PUBLIC_URL."""
        return urlsplit(self.public_url).netloc if self.public_url else None

    @property
    def has_twilio_rest(self) -> bool:
        return bool(self.twilio_account_sid and self.twilio_auth_token)

    @property
    def verifies_twilio(self) -> bool:
        """Webhooks and media streams are verified whenever the auth token is known."""
        return bool(self.twilio_auth_token)

    @property
    def verification_required(self) -> bool:
        """REQUIRE_TWILIO_SIGNATURE, or by default: a public deployment (PUBLIC_URL set) must verify."""
        if self.require_twilio_signature is not None:
            return self.require_twilio_signature
        return self.public_url is not None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(name)
            if value is None:
                return None
            value = value.strip()
            return value or None

        api_key = get("GEMINI_API_KEY") or get("GOOGLE_API_KEY")
        vertex = _vertex_switch(get)
        if not api_key and not vertex:
            raise SettingsError(
                "GEMINI_API_KEY is not set (GOOGLE_API_KEY is accepted too): "
                "the agent cannot open a Gemini Live session without an API key "
                "(or set GOOGLE_GENAI_USE_VERTEXAI=true to use Vertex AI)"
            )

        values: dict[str, object] = {"gemini_api_key": api_key}

        model = get("GEMINI_MODEL")
        if model is not None:
            model = model.removeprefix("models/")
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", model):
                raise SettingsError(f"GEMINI_MODEL={model!r} is not a model name (e.g. {DEFAULT_MODEL})")
            for marker, why in REFUSED_MODELS.items():
                if marker in model:
                    raise SettingsError(f"GEMINI_MODEL={model!r} is refused: it {why}")
            if not vertex and not model.startswith(SUPPORTED_MODEL_FAMILIES):  # Vertex's ids: _vertex()
                raise SettingsError(
                    f"GEMINI_MODEL={model!r} is not a supported Live model; use one of the "
                    f"{', '.join(SUPPORTED_MODEL_FAMILIES)} families"
                )
            values["gemini_model"] = model
        if vertex:
            values.update(_vertex(get, api_key, str(values.get("gemini_model", DEFAULT_MODEL))))

        language = get("GEMINI_LANGUAGE")
        if language is not None:
            if not _LANGUAGE_RE.fullmatch(language):
                raise SettingsError(f"GEMINI_LANGUAGE={language!r} is not a speech language code (e.g. en-US, es-ES)")
            if language not in LIVE_LANGUAGES:
                raise SettingsError(f"GEMINI_LANGUAGE={language!r} is not a Live speech language "
                                    f"({', '.join(LIVE_LANGUAGES)})")
            values["gemini_language"] = language

        voice = get("GEMINI_VOICE")
        if voice is not None:
            if not re.fullmatch(r"[A-Za-z][A-Za-z-]*", voice):
                raise SettingsError(f"GEMINI_VOICE={voice!r} is not a prebuilt voice name (e.g. Kore, Puck, Aoede)")
            if canonical_voice(voice) is None:
                raise SettingsError(f"GEMINI_VOICE={voice!r} is not a Live prebuilt voice (e.g. Kore, Puck, Aoede; "
                                    "the list is in the README)")
            values["gemini_voice"] = canonical_voice(voice)

        inline = get("AGENT_INSTRUCTIONS")
        path = get("AGENT_INSTRUCTIONS_FILE")
        if inline and path:
            raise SettingsError("set AGENT_INSTRUCTIONS or AGENT_INSTRUCTIONS_FILE, not both")
        if path:
            try:
                text = Path(path).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise SettingsError(f"AGENT_INSTRUCTIONS_FILE={path!r} cannot be read: {exc.strerror}") from None
            if not text:
                raise SettingsError(f"AGENT_INSTRUCTIONS_FILE={path!r} is empty")
            values["agent_instructions"] = text
        elif inline:
            values["agent_instructions"] = inline

        greeting = get("AGENT_GREETING")
        if greeting:
            values["agent_greeting"] = greeting

        agents_file = get("AGENTS_FILE")
        if agents_file is None and environ is None and Path(AGENTS_FILE_NAME).is_file():
            agents_file = AGENTS_FILE_NAME  # a project made by `telephony init`, served from its folder
        if agents_file is not None:
            if not Path(agents_file).is_file():
                raise SettingsError(f"AGENTS_FILE={agents_file!r} is not a file")
            values["agents_file"] = Path(agents_file)
        agent_tools = get("AGENT_TOOLS")
        if agent_tools is not None:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", agent_tools):
                raise SettingsError(f"AGENT_TOOLS={agent_tools!r} is not a module name (e.g. clinic.tools)")
            values["agent_tools"] = agent_tools

        public_url = get("PUBLIC_URL")
        if public_url is not None:
            parts = urlsplit(public_url)
            if parts.scheme != "https" or not parts.netloc:
                raise SettingsError(
                    f"PUBLIC_URL={public_url!r} must be the https:// origin Twilio reaches, "
                    "e.g. https://agent.example.com"
                )
            if parts.query or parts.fragment or parts.path not in ("", "/"):
                raise SettingsError(f"PUBLIC_URL={public_url!r} must be an origin only, without a path or query")
            values["public_url"] = f"https://{parts.netloc}"

        sid = get("TWILIO_ACCOUNT_SID")
        if sid is not None:
            if not re.fullmatch(r"AC[0-9a-fA-F]{32}", sid):
                raise SettingsError("TWILIO_ACCOUNT_SID must be 'AC' followed by 32 hex digits")
            values["twilio_account_sid"] = sid
        token = get("TWILIO_AUTH_TOKEN")
        if token is not None:
            if not re.fullmatch(r"[0-9A-Za-z]{16,64}", token):
                raise SettingsError("TWILIO_AUTH_TOKEN does not look like a Twilio auth token (value not shown)")
            values["twilio_auth_token"] = token
        values.update(_security(get, token))
        values.update(_phone_line(get))
        values.update(_prices(get))
        values.update(_watching(get))

        for name, attr in (("VAD_START_SENSITIVITY", "vad_start_sensitivity"), ("VAD_END_SENSITIVITY", "vad_end_sensitivity")):
            raw = get(name)
            if raw is not None:
                if raw.lower() not in _SENSITIVITY:
                    raise SettingsError(f"{name}={raw!r} must be 'low' or 'high'")
                values[attr] = _SENSITIVITY[raw.lower()]

        values.update(_int(get, "VAD_PREFIX_PADDING_MS", "vad_prefix_padding_ms", 0, 2000))
        values.update(_int(get, "VAD_SILENCE_DURATION_MS", "vad_silence_duration_ms", 100, 5000))
        values.update(_float(get, "LIVE_CONNECT_TIMEOUT_SECONDS", "live_connect_timeout_s", 1, 120))
        values.update(_float(get, "TOOL_TIMEOUT_SECONDS", "tool_timeout_s", 0.1, 300))
        values.update(_float(get, "MODEL_WATCHDOG_SECONDS", "model_watchdog_s", 0, 120))
        values.update(_float(get, "MAX_CALL_SECONDS", "max_call_s", 0, 86400))
        values.update(_int(get, "MAX_CONCURRENT_CALLS", "max_concurrent_calls", 1, 100000))
        values.update(_float(get, "DRAIN_TIMEOUT_SECONDS", "drain_timeout_s", 0, 3600))
        values.update(_float(get, "MOVE_WAIT_SECONDS", "move_wait_s", 0, 60))
        values.update(_float(get, "CALL_LEASE_SECONDS", "call_lease_s", 1, 120))
        values.update(_float(get, "CALL_ORPHAN_SECONDS", "call_orphan_s", 1, 3600))

        db = get("ORDERS_DB_PATH")
        if db is not None:
            db_path = Path(db)
            if db_path.exists() and not db_path.is_file():
                raise SettingsError(f"ORDERS_DB_PATH={db!r} exists and is not a file")
            values["orders_db_path"] = db_path

        resampler = get("RESAMPLER")
        if resampler is not None:
            from .audio import RESAMPLERS

            if resampler.lower() not in RESAMPLERS:
                raise SettingsError(f"RESAMPLER={resampler!r} must be one of {', '.join(RESAMPLERS)}")
            values["resampler"] = resampler.lower()

        redis_url = get("REDIS_URL")
        if redis_url is not None:
            if urlsplit(redis_url).scheme not in ("redis", "rediss", "unix"):
                raise SettingsError("REDIS_URL must start with redis://, rediss:// or unix:// (value not shown)")
            values["redis_url"] = redis_url

        if values.get("warm_transfer_targets"):
            missing = [name for name, key in (("TWILIO_PHONE_NUMBER", "twilio_phone_number"), ("PUBLIC_URL", "public_url"),
                                              ("TWILIO_ACCOUNT_SID", "twilio_account_sid"),
                                              ("TWILIO_AUTH_TOKEN", "twilio_auth_token")) if not values.get(key)]
            if missing:
                raise SettingsError(f"warm transfers ({', '.join(sorted(values['warm_transfer_targets']))}) need "
                                    f"{' and '.join(missing)}: Twilio calls the human from our number and asks us "
                                    "what to play them")

        level = get("LOG_LEVEL")
        if level is not None:
            if level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
                raise SettingsError(f"LOG_LEVEL={level!r} must be one of DEBUG, INFO, WARNING, ERROR")
            values["log_level"] = level.upper()

        return cls(**values)  # type: ignore[arg-type]

    def describe(self) -> dict[str, object]:
        """A log-safe view: secrets are reported as set or unset, never shown."""
        out: dict[str, object] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("gemini_api_key", "twilio_auth_token", "stream_token_secret", "calls_api_token", "redis_url",
                          "database_url"):
                value = "set" if value else "unset"
            elif f.name == "agent_instructions":
                value = f"{len(value)} chars"
            out[f.name] = str(value) if isinstance(value, Path) else value
        return out


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
# Destinations a call-control tool may reach: E.164 numbers or sip: URIs.
_DESTINATION_RE = re.compile(r"\+[1-9]\d{6,14}|sip:[^\s,;]+@[^\s,;]+")


def _security(get, auth_token: str | None) -> dict[str, object]:
    """Verification, stream tokens, abuse limits and log masking (SECURITY.md)."""
    values: dict[str, object] = {}
    require = _bool(get, "REQUIRE_TWILIO_SIGNATURE")
    if require is not None:
        if require and not auth_token:
            raise SettingsError(
                "REQUIRE_TWILIO_SIGNATURE=true but TWILIO_AUTH_TOKEN is not set: "
                "the server cannot verify that requests come from Twilio"
            )
        values["require_twilio_signature"] = require
    secret = get("STREAM_TOKEN_SECRET")
    if secret is not None:
        if len(secret) < 32:
            raise SettingsError("STREAM_TOKEN_SECRET must be at least 32 characters (value not shown)")
        values["stream_token_secret"] = secret
    values.update(_float(get, "STREAM_TOKEN_TTL_SECONDS", "stream_token_ttl_s", 5, 600))
    values.update(_int(get, "MAX_CALLS_PER_CALLER", "max_calls_per_caller", 1, 1000))
    values.update(_int(get, "MAX_CALLS_PER_CALLER_PER_HOUR", "max_calls_per_caller_per_hour", 1, 100_000))
    mask = _bool(get, "MASK_PHONE_NUMBERS")
    if mask is not None:
        values["mask_phone_numbers"] = mask
    raw = get("ALLOWED_DESTINATIONS")
    if raw is not None:
        destinations = tuple(d.strip() for d in raw.split(",") if d.strip())
        for d in destinations:
            if not _DESTINATION_RE.fullmatch(d):
                raise SettingsError(
                    f"ALLOWED_DESTINATIONS entry {d!r} is not an E.164 number (+15551230101) or a sip: URI"
                )
        values["allowed_destinations"] = destinations
    return values


def _vertex_switch(get) -> bool:
    """The SDK's own switch, read as it reads it: GOOGLE_GENAI_USE_ENTERPRISE (the new
    name) wins over GOOGLE_GENAI_USE_VERTEXAI, and only "true" or "1" turn it on."""
    for name in ("GOOGLE_GENAI_USE_ENTERPRISE", "GOOGLE_GENAI_USE_VERTEXAI"):
        raw = get(name)
        if raw is not None:
            return raw.lower() in ("true", "1")
    return False


def _vertex(get, api_key: str | None, model: str) -> dict[str, object]:
    """Vertex AI: ADC with a project (the API key is then not needed, and ignored as the
    SDK ignores it), or express mode with an API key alone. Checked here because Vertex
    refuses a model it does not serve in that location only when the first call connects."""
    project = get("GOOGLE_CLOUD_PROJECT")
    location = get("GOOGLE_CLOUD_LOCATION")
    if project is not None and not _PROJECT_RE.fullmatch(project):
        raise SettingsError(f"GOOGLE_CLOUD_PROJECT={project!r} is not a Google Cloud project id (e.g. my-project-123)")
    if location is not None and not _LOCATION_RE.fullmatch(location):
        raise SettingsError(f"GOOGLE_CLOUD_LOCATION={location!r} is not a Vertex AI location (e.g. us-central1, global)")
    if project is None and not api_key:
        raise SettingsError(
            "GOOGLE_GENAI_USE_VERTEXAI=true needs GOOGLE_CLOUD_PROJECT (signed in with Application Default "
            "Credentials) or, for Vertex AI express mode, GOOGLE_API_KEY"
        )
    if not model.startswith(VERTEX_MODEL_FAMILIES):
        hint = " (its Vertex AI id is gemini-live-2.5-flash-native-audio)" if "native-audio" in model else ""
        raise SettingsError(
            f"GEMINI_MODEL={model!r} is not served by Vertex AI{hint}; use one of the "
            f"{', '.join(VERTEX_MODEL_FAMILIES)} families"
        )
    where = location or "global"
    if model.startswith("gemini-live-2.5") and where not in VERTEX_LIVE_25_LOCATIONS:
        raise SettingsError(
            f"GEMINI_MODEL={model!r} is not served on the Vertex AI location {where!r}; set "
            f"GOOGLE_CLOUD_LOCATION to one of {', '.join(VERTEX_LIVE_25_LOCATIONS)}"
        )
    values: dict[str, object] = {"vertexai": True, "google_cloud_project": project, "google_cloud_location": location}
    if project is not None:
        values["gemini_api_key"] = None
        values["google_cloud_location"] = where
    return values


def _bool(get, name: str) -> bool | None:
    raw = get(name)
    if raw is None:
        return None
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise SettingsError(f"{name}={raw!r} must be true or false")


def _number(get, name: str, attr: str, lo: float, hi: float, cast: type = float) -> dict[str, float]:
    raw = get(name)
    if raw is None:
        return {}
    try:
        value = cast(raw)
    except ValueError:
        kind = "a whole number" if cast is int else "a number"
        raise SettingsError(f"{name}={raw!r} is not {kind}") from None
    if not lo <= value <= hi:
        raise SettingsError(f"{name}={value} is out of range ({lo}..{hi})")
    return {attr: value}


def _int(get, name: str, attr: str, lo: int, hi: int) -> dict[str, int]:
    return _number(get, name, attr, lo, hi, int)


def _float(get, name: str, attr: str, lo: float, hi: float) -> dict[str, float]:
    return _number(get, name, attr, lo, hi, float)


TRANSFER_MODES = ("cold", "warm")


def transfer_target(name: str, value: str, default_mode: str, where: str) -> tuple[str, str, bool]:
    """One transfer directory entry: `name` and `value` (`+15551230001`, `sip:desk@example.com`,
    optionally followed by `;warm` or `;cold`), as (name, destination, warm); SettingsError
    names `where` otherwise. Shared by every place that declares transfer targets."""
    dest, _, own_mode = value.partition(";")
    name, dest, own_mode = name.strip().lower(), dest.strip(), own_mode.strip().lower() or default_mode
    if own_mode not in TRANSFER_MODES:
        raise SettingsError(f"{where}: the mode after ';' must be cold or warm")
    if not re.fullmatch(r"[a-z][a-z0-9_ -]{0,39}", name) or not _DESTINATION_RE.fullmatch(dest):
        raise SettingsError(f"{where} must be name=+15551230001 (or name=sip:desk@example.com), optionally ;warm")
    return name, dest, own_mode == "warm"


def _phone_line(get) -> dict[str, object]:
    """Transfers, outbound calls, keypad and call records."""
    values: dict[str, object] = {}
    mode = (get("TRANSFER_MODE") or "cold").lower()
    if mode not in TRANSFER_MODES:
        raise SettingsError(f"TRANSFER_MODE={mode!r} must be 'cold' or 'warm'")
    raw = get("TRANSFER_TARGETS")
    if raw is not None:
        targets = []
        warm = set()
        for item in (part.strip() for part in raw.split(",") if part.strip()):
            name, sep, dest = item.partition("=")
            if not sep:
                raise SettingsError(
                    f"TRANSFER_TARGETS entry {item!r} must be name=+15551230001 (or name=sip:desk@example.com)"
                )
            name, dest, is_warm = transfer_target(name, dest, mode, f"TRANSFER_TARGETS entry {item!r}")
            targets.append((name, dest))
            if is_warm:
                warm.add(name)
        values["transfer_targets"] = tuple(targets)
        values["warm_transfer_targets"] = frozenset(warm)
    values.update(_int(get, "TRANSFER_RING_SECONDS", "transfer_ring_s", 5, 120))
    music = get("HOLD_MUSIC_URL")
    if music is not None:
        if urlsplit(music).scheme not in ("http", "https") or not urlsplit(music).netloc:
            raise SettingsError(f"HOLD_MUSIC_URL={music!r} must be an http(s) URL of an audio file Twilio can fetch")
        values["hold_music_url"] = music
    voicemail = get("VOICEMAIL_MESSAGE")
    if voicemail is not None:
        if len(voicemail) > 1000:
            raise SettingsError(f"VOICEMAIL_MESSAGE is {len(voicemail)} characters; keep it under 1000")
        values["voicemail_message"] = voicemail
    number = get("TWILIO_PHONE_NUMBER")
    if number is not None:
        if not re.fullmatch(r"\+[1-9][0-9]{6,14}", number):
            raise SettingsError(f"TWILIO_PHONE_NUMBER={number!r} must be an E.164 number such as +15559870000")
        values["twilio_phone_number"] = number
    base = get("TWILIO_API_BASE_URL")
    if base is not None:
        parts = urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise SettingsError(f"TWILIO_API_BASE_URL={base!r} must be an http(s) URL")
        values["twilio_api_base_url"] = base.rstrip("/")
    db = get("CALLS_DB_PATH")
    if db is not None:
        values["calls_db_path"] = Path(db)
    url = database_url_from(get("DATABASE_URL"))
    if url is not None:
        values["database_url"] = url
    token = get("CALLS_API_TOKEN")
    if token is not None:
        if len(token) < 16:
            raise SettingsError("CALLS_API_TOKEN must be at least 16 characters (value not shown)")
        values["calls_api_token"] = token
    values.update(_float(get, "DTMF_TIMEOUT_SECONDS", "dtmf_timeout_s", 0.2, 30))
    values.update(_float(get, "GOODBYE_TIMEOUT_SECONDS", "goodbye_timeout_s", 1, 120))
    return values


def _watching(get) -> dict[str, object]:
    """Metrics, traces and call audio (docs/operations.md, "Watching the line")."""
    values: dict[str, object] = {}
    for name, attr in (("METRICS_OPEN", "metrics_open"), ("RECORD_AUDIO", "record_audio")):
        flag = _bool(get, name)
        if flag is not None:
            values[attr] = flag
    endpoint = get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if endpoint is not None:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise SettingsError(f"OTEL_EXPORTER_OTLP_ENDPOINT={endpoint!r} must be an http(s) URL, "
                                "e.g. http://localhost:4318")
        values["otel_endpoint"] = endpoint
    folder = get("RECORDINGS_DIR")
    if folder is not None:
        path = Path(folder)
        if path.exists() and not path.is_dir():
            raise SettingsError(f"RECORDINGS_DIR={folder!r} exists and is not a folder")
        values["recordings_dir"] = path
    values.update(_float(get, "RECORDING_RETENTION_DAYS", "recording_retention_days", 1, 36500))
    return values


def _prices(get) -> dict[str, object]:
    """The price table of the estimated call cost (PRICE_*_PER_MTOK, USD per million tokens)."""
    values: dict[str, object] = {}
    for kind in ("audio_input", "audio_output", "text_input", "text_output"):
        values.update(_float(get, f"PRICE_{kind.upper()}_PER_MTOK", f"price_{kind}_per_mtok", 0, 10_000))
    values.update(_float(get, "PRICE_CACHED_INPUT_FRACTION", "price_cached_input_fraction", 0, 1))
    return values


POSTGRES_SCHEMES = ("postgresql", "postgres")


def is_postgres_url(value: str) -> bool:
    scheme, sep, _ = value.partition("://")
    return bool(sep) and scheme.lower() in POSTGRES_SCHEMES


def database_url_from(raw: str | None) -> str | None:
    """DATABASE_URL, checked: a postgresql:// (or postgres://) URL, or unset.

    The value is never put in an error message: it usually holds a password.
    """
    raw = (raw or "").strip()
    if not raw:
        return None
    if not is_postgres_url(raw):
        raise SettingsError("DATABASE_URL must be a postgresql:// (or postgres://) URL (value not shown)")
    return raw
