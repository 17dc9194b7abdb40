"""The Gemini Live session: the only module that knows the google-genai SDK.

It builds the LiveConnectConfig from Settings, bounds `connect()` with a
timeout (the SDK has none), keeps receiving across turns (the SDK's
`receive()` stops after every turnComplete) and translates SDK messages and
errors into the plain events of `telephony.events` at this one boundary.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from typing import Any, AsyncIterator, Iterable

from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from websockets.exceptions import ConnectionClosed

from . import events as ev
from .errors import LiveSendError
from .settings import Settings

log = logging.getLogger(__name__)

INPUT_MIME = "audio/pcm;rate=16000"
#: Consecutive unparseable frames from Live before we give up on the session.
MAX_BAD_LIVE_FRAMES = 20


#: Passed to every Live socket, on either backend.
_SOCKET_ARGS = {
    # Gemini pongs have been measured at 8-30 s; websockets' default
    # 20 s ping timeout would end healthy calls with 1011.
    "ping_interval": 30,
    "ping_timeout": 60,
    # Allow frames above the 1 MiB default (a long audio chunk).
    "max_size": 16 * 1024 * 1024,
    # Base64 audio barely compresses; deflating every frame only costs CPU.
    "compression": None,
}
_CLOUD_SCOPE = "https://www.googleapis.com/auth/cloud-platform"


def make_client(settings: Settings) -> genai.Client:
    """One client per process. The base URL and trust store come from the SDK's
    own environment (`GOOGLE_GEMINI_BASE_URL` or `GOOGLE_VERTEX_BASE_URL`,
    `SSL_CERT_FILE`), never from here.

    On Vertex AI the API version is left to the SDK (v1beta1, the only one its Live
    path speaks). Application Default Credentials are loaded here, at start-up, so a
    machine without them fails before its first call rather than during it; the SDK
    refreshes the token before each connection when it has expired."""
    if not getattr(settings, "vertexai", False):
        return genai.Client(
            api_key=settings.gemini_api_key,
            http_options=types.HttpOptions(api_version="v1beta", async_client_args=dict(_SOCKET_ARGS)),
        )
    http_options = types.HttpOptions(async_client_args=dict(_SOCKET_ARGS))
    if not settings.google_cloud_project:  # express mode: the API key alone
        return genai.Client(vertexai=True, api_key=settings.gemini_api_key,
                            location=settings.google_cloud_location, http_options=http_options)
    import google.auth
    from google.auth import exceptions as auth_errors

    from .errors import SettingsError

    try:
        credentials, _ = google.auth.default(scopes=[_CLOUD_SCOPE])
    except auth_errors.DefaultCredentialsError as exc:
        raise SettingsError(
            "GOOGLE_GENAI_USE_VERTEXAI=true with GOOGLE_CLOUD_PROJECT needs Application Default Credentials "
            f"(gcloud auth application-default login, or GOOGLE_APPLICATION_CREDENTIALS): {exc}"
        ) from None
    return genai.Client(vertexai=True, project=settings.google_cloud_project,
                        location=settings.google_cloud_location, credentials=credentials, http_options=http_options)


def build_config(
    settings: Settings,
    declarations: Iterable[types.FunctionDeclaration] = (),
    *,
    agent: Any = None,
    resumption_handle: str | None = None,
    carry_over: str | None = None,
) -> types.LiveConnectConfig:
    """The session's setup for `agent` (an `agents.Agent`; None: the environment's one agent).

    `carry_over` (from `Call.carry_over`) joins the system instruction of a session
    opened mid-call without a handle, so the model knows the conversation so far."""
    if agent is None:
        from .agents import agent_from_settings
        from .tool_registry import ToolRegistry

        agent = agent_from_settings(settings, tools=ToolRegistry())
    declarations = list(declarations)
    instructions = agent.instructions
    if carry_over:
        instructions = f"{instructions}\n\n{carry_over}" if instructions else carry_over
    return types.LiveConnectConfig(
        response_modalities=[types.Modality.AUDIO],
        speech_config=types.SpeechConfig(
            voice_config=types.VoiceConfig(
                prebuilt_voice_config=types.PrebuiltVoiceConfig(voice_name=agent.voice)
            ),
            language_code=agent.language,
        ),
        system_instruction=instructions,
        tools=[types.Tool(function_declarations=declarations)] if declarations else None,
        realtime_input_config=types.RealtimeInputConfig(
            automatic_activity_detection=types.AutomaticActivityDetection(
                disabled=False,
                start_of_speech_sensitivity=types.StartSensitivity(
                    f"START_SENSITIVITY_{agent.vad_start_sensitivity}"
                ),
                end_of_speech_sensitivity=types.EndSensitivity(f"END_SENSITIVITY_{agent.vad_end_sensitivity}"),
                prefix_padding_ms=agent.vad_prefix_padding_ms,
                silence_duration_ms=agent.vad_silence_duration_ms,
            ),
            activity_handling=types.ActivityHandling.START_OF_ACTIVITY_INTERRUPTS,
        ),
        input_audio_transcription=types.AudioTranscriptionConfig(),
        output_audio_transcription=types.AudioTranscriptionConfig(),
        session_resumption=types.SessionResumptionConfig(handle=resumption_handle),
        context_window_compression=types.ContextWindowCompressionConfig(
            trigger_tokens=25_600,
            sliding_window=types.SlidingWindow(target_tokens=12_800),
        ),
    )


class LiveSession:
    """A connected Live session, seen as a stream of core events and a few sends.

    Only the SDK's public session API is used: `send_realtime_input`,
    `send_tool_response` and `receive()`. An SDK upgrade that keeps its
    documented API keeps every call working.
    """

    def __init__(self, session) -> None:
        self._session = session

    async def send_audio(self, pcm: bytes) -> None:
        """One 20 ms caller frame (16 kHz PCM). Every send raises only `LiveSendError`."""
        try:
            await self._session.send_realtime_input(audio=types.Blob(data=pcm, mime_type=INPUT_MIME))
        except Exception as exc:
            raise _send_error(exc) from exc

    async def send_text(self, text: str) -> None:
        try:
            await self._session.send_realtime_input(text=text)
        except Exception as exc:
            raise _send_error(exc) from exc

    async def send_tool_response(self, call_id: str, name: str, response: dict, scheduling: str | None = None) -> None:
        """`scheduling` says when the model speaks about a NON_BLOCKING call's result (§8).
        `will_continue` is never sent: Vertex AI rejects it, and every tool here answers once."""
        try:
            await self._session.send_tool_response(
                function_responses=[types.FunctionResponse(
                    id=call_id, name=name, response=response,
                    scheduling=types.FunctionResponseScheduling(scheduling) if scheduling else None,
                )]
            )
        except Exception as exc:
            raise _send_error(exc) from exc

    async def events(self) -> AsyncIterator[object]:
        """Every event of the session, across turns, ending with one `LiveClosed`.

        The SDK's `receive()` stops after each `turnComplete`, so it is entered again
        for the next turn (docs/gemini-live.md §4, "SDK behaviours that bite").
        """
        bad = 0
        while True:
            try:
                async for message in self._session.receive():
                    bad = 0
                    for event in translate(message):
                        yield event
            except genai_errors.APIError as exc:
                yield ev.LiveClosed(exc.code if isinstance(exc.code, int) else None, _reason(exc))
                return
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                # The SDK could not parse a frame (non-JSON, unknown top-level key).
                # The socket is still fine, only that frame is lost.
                bad += 1
                log.warning("dropped a malformed message from Live: %s: %s", type(exc).__name__, str(exc)[:120])
                if bad >= MAX_BAD_LIVE_FRAMES:
                    yield ev.LiveClosed(None, f"{bad} malformed messages in a row")
                    return


@contextlib.asynccontextmanager
async def open_session(
    client: genai.Client, settings: Settings, config: types.LiveConnectConfig
) -> AsyncIterator[LiveSession]:
    """Connect within `live_connect_timeout_s`; raise LiveSetupTimeout or LiveRefused otherwise."""
    from .errors import LiveRefused, LiveSetupTimeout

    cm = client.aio.live.connect(model=settings.gemini_model, config=config)
    try:
        async with asyncio.timeout(settings.live_connect_timeout_s):
            session = await cm.__aenter__()
    except TimeoutError:
        raise LiveSetupTimeout(f"no setupComplete within {settings.live_connect_timeout_s:g} s") from None
    except genai_errors.APIError as exc:
        raise LiveRefused(exc.code if isinstance(exc.code, int) else None, _reason(exc)) from None
    except OSError as exc:  # refused, unreachable, TLS failure
        raise LiveRefused(None, f"{type(exc).__name__}: {exc}") from None
    except Exception as exc:  # websockets.InvalidStatus (HTTP 4xx at upgrade), bad first frame
        raise LiveRefused(None, f"{type(exc).__name__}: {str(exc)[:200]}") from None
    try:
        yield LiveSession(session)
    finally:
        with contextlib.suppress(Exception):
            await cm.__aexit__(None, None, None)


def translate(message: types.LiveServerMessage) -> list[object]:
    """One SDK message -> the core events it carries, in a sensible order."""
    out: list[object] = []
    sc = message.server_content
    if sc is not None:
        if sc.input_transcription is not None and sc.input_transcription.text:
            out.append(ev.Transcript("caller", sc.input_transcription.text))
        if sc.model_turn is not None and sc.model_turn.parts:
            for part in sc.model_turn.parts:
                blob = part.inline_data
                if blob is not None and blob.data and (blob.mime_type or "audio/pcm").startswith("audio/"):
                    out.append(ev.ModelAudio(blob.data))
        if sc.output_transcription is not None and sc.output_transcription.text:
            out.append(ev.Transcript("agent", sc.output_transcription.text))
        if sc.interrupted:
            out.append(ev.ModelInterrupted())
        if sc.generation_complete:
            out.append(ev.GenerationComplete())
        if sc.turn_complete:
            out.append(ev.TurnComplete())
    if message.tool_call is not None and message.tool_call.function_calls:
        calls = tuple(
            ev.FunctionCall(fc.id or "", fc.name or "", dict(fc.args or {}))
            for fc in message.tool_call.function_calls
        )
        out.append(ev.ToolCallRequested(calls))
    if message.tool_call_cancellation is not None and message.tool_call_cancellation.ids:
        out.append(ev.ToolCallCancelled(tuple(message.tool_call_cancellation.ids)))
    um = message.usage_metadata
    if um is not None:
        out.append(_usage(um))
    sru = message.session_resumption_update
    if sru is not None:
        out.append(ev.ResumptionUpdate(sru.new_handle, bool(sru.resumable)))
    if message.go_away is not None:
        out.append(ev.GoAway(_seconds(message.go_away.time_left)))
    return out


def _usage(um: types.UsageMetadata) -> ev.UsageReported:
    """Token counts as they are billed. Input and output are priced differently, so
    they are kept apart by modality ("AUDIO" / "response:AUDIO"). Thinking is billed as
    output but is not in the total on 3.8 Live; tool-use prompts are billed as input on
    top of the prompt; cached tokens are part of the prompt, billed at the cached price.
    Vertex reports the response as `candidatesTokenCount`: the SDK hands it over as
    `response_token_count` in both modes, so nothing here depends on the backend."""
    by_modality: dict[str, int] = {}

    def add(prefix: str, details_list, count: int | None = None, default: str = "UNKNOWN") -> None:
        counted = 0
        for details in details_list or []:
            key = prefix + str(details.modality.value if details.modality else default)
            by_modality[key] = by_modality.get(key, 0) + (details.token_count or 0)
            counted += details.token_count or 0
        if count and count > counted:  # a count without (enough) details
            key = prefix + default
            by_modality[key] = by_modality.get(key, 0) + count - counted

    add("", um.prompt_tokens_details)
    add("response:", um.response_tokens_details)
    thoughts = um.thoughts_token_count or 0
    tool_use = um.tool_use_prompt_token_count or 0
    cached = um.cached_content_token_count or 0
    add("thoughts:", None, thoughts, "TEXT")  # thinking is text
    add("tool_use:", um.tool_use_prompt_tokens_details, tool_use, "TEXT")
    add("cached:", um.cache_tokens_details, cached)
    return ev.UsageReported(
        um.prompt_token_count or 0, um.response_token_count or 0, um.total_token_count or 0, by_modality,
        thoughts_tokens=thoughts, tool_use_prompt_tokens=tool_use, cached_tokens=cached,
    )


def _seconds(value: object) -> float | None:
    if value is None:
        return None
    if hasattr(value, "total_seconds"):
        return float(value.total_seconds())
    match = re.fullmatch(r"([0-9.]+)s", str(value))
    return float(match.group(1)) if match else None


def _send_error(exc: Exception) -> LiveSendError:
    """A failed send as one error: with the close code when the socket had closed (the
    session then ended like any close), without one for anything else."""
    if isinstance(exc, ConnectionClosed):
        code = exc.rcvd.code if exc.rcvd is not None else 1006
        reason = exc.rcvd.reason if exc.rcvd is not None else "no close frame"
        return LiveSendError(code, f"the socket had closed (code={code}, {reason or 'no reason'})")
    if isinstance(exc, genai_errors.APIError):
        return LiveSendError(exc.code if isinstance(exc.code, int) else None, _reason(exc))
    return LiveSendError(None, f"{type(exc).__name__}: {str(exc)[:200]}")


def _reason(exc: genai_errors.APIError) -> str:
    text = exc.message or exc.status or str(exc.details or "")
    return str(text)[:200]
