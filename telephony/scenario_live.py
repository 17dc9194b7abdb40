"""The live half of `telephony test --live`: a caller that is itself a Live session, and a judge.

The caller is a second Gemini Live session whose voice reaches our server through the
same µ-law 8 kHz line a phone call has (testing/caller.py), so the agent hears a voice
with a phone's bandwidth, pauses and barge-ins, not text:

- a scripted caller uses it as its voice only: each `say` line is sent to it as text
  and it speaks it; keypad presses, pauses and barge-ins stay the script's;
- a simulated caller (persona and goal) converses on its own: it hears the agent (the
  audio as it plays to the caller, in real time, silence included, so its own turn
  detection works) and hangs up by calling its `hang_up` function.

The judge is a Gemini text model asked, with structured output (`response_schema`), for
one verdict per criterion (pass or fail, and why) over both sides' transcriptions, the
tool calls and how the call ended. Each run's cost is estimated from the usage every
model reported (pricing.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from pydantic import BaseModel

from .pricing import PriceTable, estimate_cost
from .scenario_run import Check, RunResult, Status, tool_line
from .scenarios import Scenario

__all__ = ["CALLER_MARKER", "LiveCallerVoice", "LiveServices", "Verdict", "Verdicts", "judge_prompt"]

log = logging.getLogger(__name__)

#: Starts every simulated caller's system instruction (the emulator tells the sessions apart by it).
CALLER_MARKER = "You are the CALLER in a test phone call to a business's voice agent."
DEFAULT_JUDGE_MODEL = "gemini-2.5-flash"
CALLER_VOICE = "Puck"
HANG_UP = "hang_up"
#: A person hangs up a moment after their last word, not on it.
HANG_UP_AFTER_S = 1.0


class LiveServices:
    """Which models and clients a live run uses. Tests give clients reaching the emulators;
    by default both are `genai.Client()` from the environment (GEMINI_API_KEY, or Vertex AI)."""

    def __init__(self, *, caller_model: str | None = None, judge_model: str | None = None,
                 caller_client: Any = None, judge_client: Any = None) -> None:
        self.caller_model = caller_model
        self.judge_model = judge_model or DEFAULT_JUDGE_MODEL
        self._caller_client = caller_client
        self._judge_client = judge_client

    def caller_client(self) -> Any:
        if self._caller_client is None:
            from google import genai

            self._caller_client = genai.Client()
        return self._caller_client

    def judge_client(self) -> Any:
        if self._judge_client is None:
            from google import genai

            self._judge_client = genai.Client()
        return self._judge_client


class Verdict(BaseModel):
    number: int
    passed: bool
    reason: str


class Verdicts(BaseModel):
    verdicts: list[Verdict]


def caller_instructions(scenario: Scenario) -> str:
    if scenario.simulated_caller:
        return (f"{CALLER_MARKER} Stay in character and speak as a real person on the phone: short, natural "
                f"sentences, one at a time, and let the agent finish.\nWho you are: {scenario.persona}\n"
                f"Your goal: {scenario.goal}\nWhen your goal is reached (or clearly cannot be), say goodbye and "
                f"then call the {HANG_UP} function. Never say you are an AI or a test.")
    persona = f" Sound like this person: {scenario.persona}" if scenario.persona else ""
    return (f"{CALLER_MARKER} You are only the caller's voice: each text you receive is a line the caller "
            f"says; say exactly that line, naturally, as a person on the phone would, and nothing else.{persona}")


class LiveCallerVoice:
    """The caller's voice in a live run: one Live session for the whole call."""

    def __init__(self, scenario: Scenario, settings: Any, services: LiveServices | None):
        self.scenario = scenario
        self.settings = settings
        self.services = services or LiveServices()
        self.model = self.services.caller_model or settings.gemini_model
        self.line: Any = None
        self.session: Any = None
        self.stack: Any = None
        self.tasks: list[asyncio.Task] = []
        self.heard = bytearray()  # agent audio waiting to be "played" into the caller session
        self.turn_done = asyncio.Event()
        self.hang_up_requested = asyncio.Event()
        self.pending_audio = bytearray()  # caller audio before the line exists
        self.speaking = False
        self.transcript: list[tuple[str, str]] = []  # ("caller said" | "caller heard", text)
        self._said = ""
        self._heard_text = ""
        self.usage = {"prompt": 0, "response": 0, "by_modality": {}}
        self.resampler: Any = None
        self.error: str | None = None

    # -- lifecycle

    async def __aenter__(self) -> "LiveCallerVoice":
        import contextlib

        import soxr
        from google.genai import types

        self.resampler = soxr.ResampleStream(24_000, 8_000, 1, dtype="float32")
        config = types.LiveConnectConfig(
            response_modalities=[types.Modality.AUDIO],
            system_instruction=caller_instructions(self.scenario),
            speech_config=types.SpeechConfig(voice_config=types.VoiceConfig(
                prebuilt_voice_config=types.PrebuiltVoiceConfig(voice_name=CALLER_VOICE))),
            input_audio_transcription=types.AudioTranscriptionConfig(),
            output_audio_transcription=types.AudioTranscriptionConfig(),
            tools=[types.Tool(function_declarations=[types.FunctionDeclaration(
                name=HANG_UP, description="Hang up the phone. Call it right after saying goodbye.")])],
        )
        self.stack = contextlib.AsyncExitStack()
        client = self.services.caller_client()
        self.session = await self.stack.enter_async_context(client.aio.live.connect(model=self.model, config=config))
        self.tasks.append(asyncio.create_task(self._receive(), name="caller-receive"))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.stack is not None:
            await self.stack.aclose()
        self.resampler = None

    # -- the line's callbacks

    def hear(self, ulaw: bytes) -> None:
        if self.scenario.simulated_caller:
            self.heard += ulaw

    def cleared(self) -> None:
        self.heard.clear()  # the server cleared it: the caller never hears it

    # -- speaking

    def _out(self, pcm: bytes) -> None:
        import numpy as np

        from .audio import ulaw_encode

        x = np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2").astype(np.float32)
        y = self.resampler.resample_chunk(x)
        ulaw = ulaw_encode(np.clip(np.round(y), -32768, 32767).astype(np.int16))
        if self.line is None:
            self.pending_audio += ulaw
        elif self.scenario.simulated_caller or self.speaking:
            self.line.queue(ulaw)

    async def say(self, line: Any, text: str) -> tuple[float, float]:
        """Have the caller session say `text`; return when its audio has gone down the line."""
        self.line = line
        start = line.now()
        self.turn_done.clear()
        self.speaking = True
        try:
            await self.session.send_realtime_input(text=text)
            await line.until(self.turn_done.is_set, 30.0)
            await line.speak(b"")  # wait for the queued audio to be sent
        finally:
            self.speaking = False
        return start, line.now()

    async def converse(self, line: Any) -> None:
        """A simulated caller: feed it what it hears, in real time, until it hangs up."""
        self.line = line
        if self.pending_audio:
            line.queue(bytes(self.pending_audio))
            self.pending_audio.clear()
        feeder = asyncio.create_task(self._feed(line), name="caller-feed")
        try:
            await line.until(self.hang_up_requested.is_set, self.scenario.timeout)
            await line.speak(b"")  # its goodbye goes out before the hang-up
            await line.sleep(HANG_UP_AFTER_S)
        finally:
            feeder.cancel()
            await asyncio.gather(feeder, return_exceptions=True)

    async def _feed(self, line: Any) -> None:
        from google.genai import types

        from .testing.caller import ulaw_to_pcm16k

        silence = b"\xff" * 160
        while not line.closed:
            await line.next_frame()
            chunk = bytes(self.heard[:160]) if self.heard else silence
            del self.heard[:160]
            await self.session.send_realtime_input(
                audio=types.Blob(data=ulaw_to_pcm16k(chunk), mime_type="audio/pcm;rate=16000"))

    async def _receive(self) -> None:
        """Read the caller session until it closes; a failure ends the caller's part, with why."""
        try:
            await self._read_messages()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.error = f"the caller's Live session failed: {type(exc).__name__}: {str(exc)[:200]}"
            log.warning("%s", self.error)
        finally:
            self.turn_done.set()  # nobody waits for a session that is gone
            if self.scenario.simulated_caller:
                self.hang_up_requested.set()

    async def _read_messages(self) -> None:
        from google.genai import types

        while True:
            got = False
            async for message in self.session.receive():
                got = True
                content = message.server_content
                if content is not None:
                    for part in (content.model_turn.parts or []) if content.model_turn else []:
                        if part.inline_data is not None and part.inline_data.data:
                            self._out(part.inline_data.data)
                    if content.output_transcription is not None and content.output_transcription.text:
                        self._said += content.output_transcription.text
                    if content.input_transcription is not None and content.input_transcription.text:
                        self._heard_text += content.input_transcription.text
                    if content.turn_complete:
                        self._flush()
                        self.turn_done.set()
                if message.tool_call is not None:
                    responses = []
                    for call in message.tool_call.function_calls or []:
                        responses.append(types.FunctionResponse(id=call.id, name=call.name, response={"ok": True}))
                        if call.name == HANG_UP:
                            self.hang_up_requested.set()
                    if responses:
                        await self.session.send_tool_response(function_responses=responses)
                if message.usage_metadata is not None:
                    self._add_usage(message.usage_metadata)
            if not got:
                return

    def _flush(self) -> None:
        if self._heard_text.strip():
            self.transcript.append(("caller heard", self._heard_text.strip()))
        if self._said.strip():
            self.transcript.append(("caller said", self._said.strip()))
        self._said = self._heard_text = ""

    def _add_usage(self, usage: Any) -> None:
        self.usage["prompt"] += usage.prompt_token_count or 0
        self.usage["response"] += usage.response_token_count or 0
        by = self.usage["by_modality"]
        for detail in usage.prompt_tokens_details or []:
            key = str(getattr(detail.modality, "value", detail.modality))
            by[key] = by.get(key, 0) + (detail.token_count or 0)
        for detail in usage.response_tokens_details or []:
            key = "response:" + str(getattr(detail.modality, "value", detail.modality))
            by[key] = by.get(key, 0) + (detail.token_count or 0)

    # -- after the call

    async def finish(self, result: RunResult, summary: dict | None, settings: Any) -> None:
        """Judge the criteria and price the run."""
        self._flush()
        result.caller_side = list(self.transcript)
        if self.error:
            result.checks.append(Check("caller session", Status.FAILED, self.error))
        tokens = (summary or {}).get("tokens") or {}
        agent_usd = estimate_cost(tokens.get("prompt", 0), tokens.get("response", 0), tokens.get("by_modality", {}),
                                  PriceTable.from_settings(settings))
        caller_usd = estimate_cost(self.usage["prompt"], self.usage["response"], self.usage["by_modality"],
                                   PriceTable.for_model(self.model))
        judge_usd = 0.0
        if self.scenario.expect.criteria:
            judge_usd = await self._judge(result)
        result.cost_usd = round(agent_usd + caller_usd + judge_usd, 6)
        result.cost_detail = (f"agent ${agent_usd:.4f} + caller ${caller_usd:.4f} + judge ${judge_usd:.4f} "
                              "(estimated from the usage each model reported)")

    async def _judge(self, result: RunResult) -> float:
        from google.genai import types

        criteria = list(self.scenario.expect.criteria)
        prompt = judge_prompt(self.scenario, result, self.transcript, self.settings)
        checks = [c for c in result.checks if not c.what.startswith("criterion: ")]
        model = self.services.judge_model
        try:
            response = await self.services.judge_client().aio.models.generate_content(
                model=model, contents=prompt,
                config=types.GenerateContentConfig(response_mime_type="application/json", response_schema=Verdicts,
                                                   temperature=0))
            parsed = response.parsed if isinstance(response.parsed, Verdicts) else \
                Verdicts.model_validate_json(response.text or "")
        except Exception as exc:  # the judge failing must fail the criteria, never pass them
            detail = f"the judge ({model}) failed: {type(exc).__name__}: {str(exc)[:200]}"
            result.checks = checks + [Check(f"criterion: {c}", Status.FAILED, detail) for c in criteria]
            return 0.0
        by_number = {v.number: v for v in parsed.verdicts}
        for number, criterion in enumerate(criteria, 1):
            verdict = by_number.get(number)
            if verdict is None:
                checks.append(Check(f"criterion: {criterion}", Status.FAILED, "the judge gave no verdict"))
            else:
                checks.append(Check(f"criterion: {criterion}", Status.PASSED if verdict.passed else Status.FAILED,
                                    verdict.reason.strip()))
        result.checks = checks
        usage = response.usage_metadata
        if usage is None:
            return 0.0
        prices = PriceTable.for_model(model)
        return estimate_cost(usage.prompt_token_count or 0, usage.candidates_token_count or 0,
                             {"TEXT": usage.prompt_token_count or 0, "response:TEXT": usage.candidates_token_count or 0},
                             prices)


def judge_prompt(scenario: Scenario, result: RunResult, caller_side: list[tuple[str, str]], settings: Any) -> str:
    """What the judge reads. Criteria are numbered in a JSON list; the evidence follows."""
    lines = [
        "You judge a test phone call between a business's voice agent and a caller.",
        "For each numbered criterion, decide whether the AGENT met it in this call, from the evidence below only.",
        "Pass a criterion only with clear evidence; when the evidence is missing or unclear, fail it.",
        "Give one short reason per criterion, quoting the conversation where you can.",
        "",
        f"AGENT INSTRUCTIONS (context only): {settings.agent_instructions[:2000]}",
        "",
        "CRITERIA (JSON): " + json.dumps(list(scenario.expect.criteria)),
        "",
        "CONVERSATION:",
        "As the agent's speech recognition heard it:",
        *[f"  {role}: {text}" for role, text in result.transcript],
        "As the caller's side heard it:",
        *[f"  {role}: {text}" for role, text in caller_side],
        "Tool calls the agent made:",
        *([f"  {tool_line(call)}" for call in result.tools] or ["  none"]),
        f"How the call ended: {result.ending}",
    ]
    return "\n".join(lines)
