"""The Call core, driven event by event with no sockets (docs/twilio-media-streams.md §2-§3, docs/gemini-live.md §4, §7-§8)."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from telephony import actions as act
from telephony import events as ev
from telephony import twilio_protocol as tw
from telephony.audio import ulaw_encode
from telephony.call import (
    GOODBYE_TEXT, HEALTHY_SESSION_FRAMES, MAX_BAD_FRAMES, MAX_UNHEALTHY_SESSIONS, NUDGE_TEXT, Call, Phase,
)
from telephony.errors import InvalidCallState, MalformedMessage

SID = "MZ" + "a" * 32
CALL = "CA" + "b" * 32


def tone_24k(seconds: float, freq: float = 440.0) -> bytes:
    t = np.arange(int(24000 * seconds)) / 24000
    return (np.sin(2 * np.pi * freq * t) * 8000).astype("<i2").tobytes()


def caller_frame(level: int = 1000) -> str:
    return base64.b64encode(ulaw_encode(np.full(160, level, dtype=np.int16))).decode()


def twilio_messages(actions) -> list[dict]:
    out = []
    for action in actions:
        if isinstance(action, act.SendToTwilio):
            out.extend(json.loads(m) for m in action.messages)
    return out


class CallScript:
    """Small helpers so each test reads like the call it describes."""

    def __init__(self) -> None:
        self.call = Call(greeting="Greet the caller.")

    def start(self) -> list:
        return self.call.handle(tw.StreamStarted(SID, CALL, "AC" + "c" * 32, {"From": "+15551230101"}))

    def live_ready(self) -> list:
        return self.call.handle(ev.LiveReady())

    def connected(self) -> "CallScript":
        self.start()
        self.live_ready()
        return self

    def caller_speaks(self, frames: int = 1) -> list:
        actions = []
        for _ in range(frames):
            actions += self.call.handle(tw.CallerAudio(SID, caller_frame()))
        return actions

    def agent_says(self, seconds: float) -> list:
        actions = []
        pcm = tone_24k(seconds)
        for i in range(0, len(pcm), 1920):  # 40 ms chunks, as Live sends
            actions += self.call.handle(ev.ModelAudio(pcm[i : i + 1920]))
        return actions

    def echo(self, name: str) -> list:
        return self.call.handle(tw.MarkEchoed(SID, name))


class TestStartingACall:
    def test_start_asks_for_the_live_session(self):
        c = CallScript()
        assert c.start() == [act.ConnectLive()]
        assert c.call.phase is Phase.CONNECTING
        assert c.call.call_sid == CALL and c.call.parameters["From"] == "+15551230101"

    def test_agent_greets_first_and_early_caller_audio_is_kept(self):
        c = CallScript()
        c.start()
        assert c.caller_speaks(3) == []  # Live is still connecting
        actions = c.live_ready()
        assert actions[0] == act.SendTextToLive("Greet the caller.")
        assert [type(a) for a in actions[1:]] == [act.SendAudioToLive] * 3
        assert c.call.phase is Phase.LISTENING

    def test_caller_audio_goes_to_live_as_16khz_pcm(self):
        c = CallScript().connected()
        actions = c.caller_speaks(50)
        pcm = b"".join(a.pcm for a in actions)
        assert all(isinstance(a, act.SendAudioToLive) for a in actions)
        assert len(actions) == 50  # one send per 20 ms frame, no batching
        assert abs(len(pcm) - 50 * 640) <= 640 * 5  # 2x the samples, minus the resampler's hold-back

    def test_a_stream_that_is_not_8khz_mulaw_ends_with_an_apology(self):
        call = Call(greeting=None)
        actions = call.handle(tw.StreamStarted(SID, CALL, "", {}, encoding="audio/l16", sample_rate=16000))
        assert isinstance(actions[-1], act.EndCall) and actions[-1].apologize

    def test_live_that_cannot_be_opened_ends_the_call_with_an_apology(self):
        c = CallScript()
        c.start()
        actions = c.call.handle(ev.LiveFailed("no setupComplete within 10 s"))
        assert actions == [act.EndCall("Live session could not be opened: no setupComplete within 10 s", apologize=True)]


class TestAgentSpeaking:
    def test_agent_audio_reaches_twilio_in_exact_20ms_frames_each_chunk_followed_by_a_mark(self):
        c = CallScript().connected()
        messages = twilio_messages(c.agent_says(1.0) + c.call.handle(ev.GenerationComplete()))
        media = [m for m in messages if m["event"] == "media"]
        marks = [m for m in messages if m["event"] == "mark"]
        assert all(len(base64.b64decode(m["media"]["payload"])) == 160 for m in media)
        assert all(m["streamSid"] == SID and set(m["media"]) == {"payload"} for m in media)
        assert len(media) == 51  # 1 s of audio, then the resampler's ring-out drained at generationComplete
        assert messages[-1]["event"] == "mark" and len(marks) >= 2
        assert c.call.phase is Phase.AGENT_SPEAKING

    def test_mark_echoes_tell_how_much_the_caller_heard(self):
        c = CallScript().connected()
        messages = twilio_messages(c.agent_says(1.0) + c.call.handle(ev.TurnComplete()))
        names = [m["mark"]["name"] for m in messages if m["event"] == "mark"]
        c.echo(names[len(names) // 2])
        assert 0 < c.call.heard_seconds < 1.0
        c.echo(names[-1])
        assert c.call.heard_seconds == pytest.approx(1.0, abs=0.021)
        assert c.call.phase is Phase.LISTENING  # playback finished

    def test_turn_complete_without_generation_complete_still_drains_the_tail(self):
        c = CallScript().connected()
        sent = len([m for m in twilio_messages(c.agent_says(0.5)) if m["event"] == "media"])
        tail = [m for m in twilio_messages(c.call.handle(ev.TurnComplete())) if m["event"] == "media"]
        assert sent + len(tail) == 26 and tail  # 0.5 s + the ring-out frame


class TestCallerInterrupts:
    def test_clear_is_sent_first_and_the_interrupted_turn_stops(self):
        c = CallScript().connected()
        messages = twilio_messages(c.agent_says(2.0))
        names = [m["mark"]["name"] for m in messages if m["event"] == "mark"]
        c.echo(names[3])  # the caller heard the first few chunks
        actions = c.call.handle(ev.ModelInterrupted())
        assert twilio_messages(actions) == [{"event": "clear", "streamSid": SID}]
        assert c.call.interruptions == 1
        assert c.call.phase is Phase.LISTENING
        assert set(names[4:]) == c.call.marks_cleared and not c.call.marks_in_flight

    def test_mark_echoed_after_clear_counts_as_cleared_not_heard(self):
        c = CallScript().connected()
        names = [m["mark"]["name"] for m in twilio_messages(c.agent_says(1.0)) if m["event"] == "mark"]
        c.call.handle(ev.ModelInterrupted())
        for name in names:
            c.echo(name)
        assert c.call.heard_bytes == 0 and c.call.cleared_bytes > 0 and not c.call.marks_cleared

    def test_audio_of_the_interrupted_turn_is_dropped_until_the_next_turn(self):
        c = CallScript().connected()
        c.agent_says(0.5)
        c.call.handle(ev.ModelInterrupted())
        assert c.agent_says(0.5) == []  # late audio of the interrupted turn
        assert c.call.handle(ev.TurnComplete()) == []
        assert twilio_messages(c.agent_says(0.5))  # the next turn plays
        assert c.call.turn == 2

    def test_caller_transcript_between_late_chunks_does_not_end_the_discard(self):
        # docs/gemini-live.md §12: input transcription has no ordering with the model's output.
        c = CallScript().connected()
        c.agent_says(0.5)
        c.call.handle(ev.ModelInterrupted())
        assert c.agent_says(0.1) == []
        c.call.handle(ev.Transcript("caller", "wait, actually"))
        assert c.agent_says(0.2) == []  # still the interrupted turn
        c.call.handle(ev.TurnComplete())
        assert twilio_messages(c.agent_says(0.5))  # the answer to "wait, actually" plays
        assert c.call.summary()["stale_audio_chunks_dropped"] == 8

    def test_interruption_starts_a_bounded_discard(self):
        c = CallScript().connected()
        c.agent_says(0.5)
        actions = c.call.handle(ev.ModelInterrupted())
        assert actions[-1] == act.StartTimer("discard", c.call.discard_limit_s)

    def test_a_missing_turn_complete_after_an_interruption_ends_the_discard_at_its_bound(self, caplog):
        c = CallScript().connected()
        c.agent_says(0.5)
        c.call.handle(ev.ModelInterrupted())
        assert c.agent_says(0.2) == []  # late audio, and then no turnComplete ever
        with caplog.at_level("WARNING", logger="telephony.call"):
            assert c.call.handle(ev.TimerFired("discard")) == []
        assert len([r for r in caplog.records if "no turnComplete" in r.getMessage()]) == 1
        assert twilio_messages(c.agent_says(0.5))  # the model is heard again
        assert c.call.summary()["interrupted_turns_without_turn_complete"] == 1

    def test_a_discard_timer_after_the_turn_completed_changes_nothing(self):
        c = CallScript().connected()
        c.agent_says(0.5)
        c.call.handle(ev.ModelInterrupted())
        c.call.handle(ev.TurnComplete())
        c.agent_says(0.3)
        assert c.call.handle(ev.TimerFired("discard")) == []
        assert c.call.summary()["interrupted_turns_without_turn_complete"] == 0

    def test_clear_is_sent_even_when_everything_was_already_played(self):
        c = CallScript().connected()
        names = [m["mark"]["name"] for m in twilio_messages(c.agent_says(0.5) + c.call.handle(ev.TurnComplete())) if m["event"] == "mark"]
        c.echo(names[-1])
        assert twilio_messages(c.call.handle(ev.ModelInterrupted())) == [{"event": "clear", "streamSid": SID}]

    def test_interruption_resets_the_outbound_resampler_so_no_stale_tail_plays(self):
        c = CallScript().connected()
        c.agent_says(0.33)  # leaves a partial frame and resampler history behind
        c.call.handle(ev.ModelInterrupted())
        assert c.call.outbound.pending_bytes == 0
        assert c.call.outbound.end_turn() == []


class TestTools:
    def test_tool_call_runs_and_its_result_goes_back_with_id_and_name(self):
        c = CallScript().connected()
        actions = c.call.handle(ev.ToolCallRequested((ev.FunctionCall("fc-1", "lookup_order", {"order_id": "A1001"}),)))
        assert actions == [act.RunTool("fc-1", "lookup_order", {"order_id": "A1001"})]
        assert "fc-1" in c.call.pending_tools
        done = c.call.handle(ev.ToolFinished("fc-1", "lookup_order", {"result": {"found": True}}, 0.012))
        assert done == [act.SendToolResponse("fc-1", "lookup_order", {"result": {"found": True}})]
        assert c.call.summary()["tool_calls"] == [{"name": "lookup_order", "id": "fc-1", "outcome": "ok", "latency_ms": 12.0}]

    def test_cancelled_tool_call_is_stopped_and_never_answered(self):
        c = CallScript().connected()
        c.call.handle(ev.ToolCallRequested((ev.FunctionCall("fc-2", "lookup_order", {}),)))
        assert c.call.handle(ev.ToolCallCancelled(("fc-2", "fc-unknown"))) == [act.CancelTool("fc-2")]
        assert c.call.handle(ev.ToolFinished("fc-2", "lookup_order", {"result": 1})) == []

    def test_tool_error_is_answered_too_so_the_model_can_say_so(self):
        c = CallScript().connected()
        c.call.handle(ev.ToolCallRequested((ev.FunctionCall("fc-3", "nope", {}),)))
        actions = c.call.handle(ev.ToolFinished("fc-3", "nope", {"error": "unknown tool 'nope'"}))
        assert actions == [act.SendToolResponse("fc-3", "nope", {"error": "unknown tool 'nope'"})]
        assert c.call.tool_calls[0].outcome == "error"


class TestToolScheduling:
    """docs/gemini-live.md §8: each response's `scheduling` decides when the model speaks."""

    def test_the_response_carries_the_tools_scheduling_and_the_watchdog_waits_for_speech(self):
        call = Call(greeting=None, watchdog_s=5.0)
        call.handle(tw.StreamStarted(SID, CALL, "", {}))
        call.handle(ev.LiveReady())
        call.handle(ev.ToolCallRequested((ev.FunctionCall("fc-1", "lookup_order", {}),)))
        actions = call.handle(ev.ToolFinished("fc-1", "lookup_order", {"result": 1}, 0.01, "INTERRUPT"))
        assert actions == [act.SendToolResponse("fc-1", "lookup_order", {"result": 1}, "INTERRUPT"), act.StartTimer("watchdog", 5.0)]

    def test_a_silent_response_expects_no_speech_so_nobody_nudges_the_model(self):
        call = Call(greeting=None, watchdog_s=5.0)
        call.handle(tw.StreamStarted(SID, CALL, "", {}))
        call.handle(ev.LiveReady())
        call.handle(ev.ToolCallRequested((ev.FunctionCall("fc-1", "end_call", {}),)))
        actions = call.handle(ev.ToolFinished("fc-1", "end_call", {"result": {"ended": True}}, 0.01, "SILENT"))
        assert actions == [act.SendToolResponse("fc-1", "end_call", {"result": {"ended": True}}, "SILENT")]


class TestEndingACall:
    def test_stop_ends_the_call_and_cancels_running_tools(self):
        c = CallScript().connected()
        c.call.handle(ev.ToolCallRequested((ev.FunctionCall("fc-1", "lookup_order", {}),)))
        actions = c.call.handle(tw.StreamStopped(SID))
        assert actions == [act.CancelTool("fc-1"), act.EndCall("caller hung up")]
        assert c.call.phase is Phase.ENDING
        assert c.caller_speaks() == [] and c.agent_says(0.1) == []

    def test_a_fatal_live_close_mid_call_ends_with_an_apology(self):
        c = CallScript().connected()
        (action,) = c.call.handle(ev.LiveClosed(1008, "model not supported"))
        assert isinstance(action, act.EndCall) and action.apologize

    def test_twilio_socket_closing_without_stop_ends_the_call(self):
        c = CallScript().connected()
        (action,) = c.call.handle(ev.TwilioDisconnected(1006))
        assert isinstance(action, act.EndCall) and not action.apologize

    def test_summary_counts_what_happened(self):
        c = CallScript().connected()
        c.caller_speaks(10)
        c.call.handle(ev.UsageReported(100, 40, 140, {"AUDIO": 90}))
        c.call.handle(ev.UsageReported(10, 4, 14, {"AUDIO": 9}))
        c.call.handle(ev.Transcript("caller", "Where is "))
        c.call.handle(ev.Transcript("caller", "my order?"))
        c.call.handle(ev.Transcript("agent", "Let me check."))
        summary = c.call.summary()
        assert summary["frames_in"] == 10
        assert summary["tokens"] == {"prompt": 110, "response": 44, "total": 154, "thoughts": 0, "tool_use_prompt": 0,
                                     "cached": 0, "by_modality": {"AUDIO": 99}}
        c.call.handle(ev.TurnComplete())
        c.call.handle(ev.Transcript("agent", "It has shipped."))
        assert c.call.transcript == [["caller", "Where is my order?"], ["agent", "Let me check."], ["agent", "It has shipped."]]

    def test_resumption_handle_keeps_the_newest_resumable_one(self):
        c = CallScript().connected()
        c.call.handle(ev.ResumptionUpdate("h1", True))
        c.call.handle(ev.ResumptionUpdate(None, False))
        assert c.call.resumption_handle == "h1"


class TestBadInput:
    def test_media_before_start_is_dropped(self):
        call = Call(greeting=None)
        assert call.handle(tw.CallerAudio(SID, caller_frame())) == []
        assert call.frames_dropped == 1

    def test_media_for_another_stream_is_dropped(self):
        c = CallScript().connected()
        assert c.call.handle(tw.CallerAudio("MZ" + "f" * 32, caller_frame())) == []
        assert c.call.bad_frames == 1 and c.call.frames_in == 0

    def test_invalid_base64_is_dropped_and_the_call_continues(self):
        c = CallScript().connected()
        assert c.call.handle(tw.CallerAudio(SID, "!!not base64!!")) == []
        assert c.call.bad_frames == 1
        assert c.caller_speaks()  # the next good frame flows

    def test_a_flood_of_bad_frames_closes_the_stream_with_policy_violation(self):
        c = CallScript().connected()
        actions = []
        for _ in range(MAX_BAD_FRAMES + 1):
            actions += c.call.bad_frame(MalformedMessage("not JSON"))
        assert actions == [act.EndCall(f"too many bad frames from Twilio ({MAX_BAD_FRAMES + 1})", close_code=1008)]

    def test_unknown_events_and_marks_are_ignored(self):
        c = CallScript().connected()
        assert c.call.handle(tw.UnknownEvent("future-thing")) == []
        assert c.echo("never-sent") == []

    def test_a_second_start_is_ignored(self):
        c = CallScript().connected()
        assert c.start() == []
        assert c.call.phase is Phase.LISTENING

    def test_driving_the_core_with_a_foreign_object_is_our_bug(self):
        with pytest.raises(InvalidCallState):
            Call(greeting=None).handle(object())


class TestLongCallsAndLiveFailures:
    """docs/gemini-live.md §5: goAway, resumption handles, drops."""

    def test_a_dropped_session_is_resumed_at_once_and_caller_audio_is_kept_meanwhile(self):
        c = CallScript().connected()
        c.call.handle(ev.ResumptionUpdate("h1", True))
        actions = c.call.handle(ev.LiveClosed(1011, "internal error"))
        assert act.ResumeLive("Live session closed (code=1011, internal error)", 0.0) in actions
        assert c.caller_speaks(10) == []  # buffered, not lost
        ready = c.live_ready()
        assert [type(a) for a in ready] == [act.SendAudioToLive] * 10  # no second greeting
        assert c.call.reconnects == 1

    def test_reconnection_backs_off_and_gives_up_with_an_apology(self):
        c = CallScript().connected()
        actions = c.call.handle(ev.LiveClosed(1006, "abnormal"))
        delays = [a.delay_s for a in actions if isinstance(a, act.ResumeLive)]
        for _ in range(10):
            actions = c.call.handle(ev.LiveFailed("connection refused"))
            delays += [a.delay_s for a in actions if isinstance(a, act.ResumeLive)]
            if any(isinstance(a, act.EndCall) for a in actions):
                break
        assert delays == sorted(delays) and delays[0] == 0.0 and delays[-1] > delays[1]
        assert isinstance(actions[-1], act.EndCall) and actions[-1].apologize

    def test_a_failed_send_replaces_the_session_and_what_did_not_go_out_goes_to_the_next(self):
        c = CallScript()
        c.start()
        c.caller_speaks(2)
        greeting, *audio = c.live_ready()
        actions = c.call.handle(ev.LiveSendFailed("TypeError: boom", (greeting, *audio)))
        assert act.ResumeLive("sending to Live failed: TypeError: boom", 0.0) in actions
        assert c.caller_speaks(3) == []  # buffered behind what was kept
        ready = c.live_ready()
        sent = [a.pcm for a in ready if isinstance(a, act.SendAudioToLive)]
        assert sent[:2] == [a.pcm for a in audio] and len(sent) == 5  # oldest first, nothing lost
        assert ready[-1] == greeting  # the greeting that never went out is not forgotten
        assert c.call.live_send_failures == 1 and c.call.reconnects == 1

    def test_a_second_failure_while_switching_only_keeps_its_sends(self):
        c = CallScript().connected()
        c.call.handle(ev.LiveSendFailed("boom", (act.SendAudioToLive(b"\x01\x00"),)))
        assert c.call.handle(ev.LiveSendFailed("boom", (act.SendAudioToLive(b"\x02\x00"),))) == []
        assert [a.pcm for a in c.live_ready()] == [b"\x01\x00", b"\x02\x00"]

    def test_sends_failing_on_every_fresh_session_end_with_the_apology(self):
        c = CallScript().connected()
        for _ in range(MAX_UNHEALTHY_SESSIONS):
            actions = c.call.handle(ev.LiveSendFailed("AttributeError: gone", ()))
            assert any(isinstance(a, act.ResumeLive) for a in actions)
            c.live_ready()
        actions = c.call.handle(ev.LiveSendFailed("AttributeError: gone", ()))
        assert isinstance(actions[-1], act.EndCall) and actions[-1].apologize
        assert actions[-1].reason == (f"{MAX_UNHEALTHY_SESSIONS + 1} Live sessions in a row ended before they were "
                                      "healthy (the last: sending to Live failed: AttributeError: gone)")

    def test_a_session_that_relayed_audio_before_its_send_failed_starts_a_new_count(self):
        c = CallScript().connected()
        for _ in range(MAX_UNHEALTHY_SESSIONS + 2):
            c.caller_speaks(HEALTHY_SESSION_FRAMES)
            actions = c.call.handle(ev.LiveSendFailed("ConnectionResetError", ()))
            assert any(isinstance(a, act.ResumeLive) for a in actions)
            c.live_ready()
        assert not c.call.over

    def test_sessions_closed_right_after_setup_end_the_call_with_the_apology_and_one_error_line(self, caplog):
        c = CallScript().connected()
        with caplog.at_level("INFO", logger="telephony"):
            for _ in range(MAX_UNHEALTHY_SESSIONS):
                actions = c.call.handle(ev.LiveClosed(1011, "internal error"))
                assert any(isinstance(a, act.ResumeLive) for a in actions)
                c.live_ready()
            actions = c.call.handle(ev.LiveClosed(1011, "internal error"))
        assert isinstance(actions[-1], act.EndCall) and actions[-1].apologize
        assert not any(isinstance(a, act.ResumeLive) for a in actions)
        assert actions[-1].reason == (f"{MAX_UNHEALTHY_SESSIONS + 1} Live sessions in a row ended before they were "
                                      "healthy (the last: Live session closed (code=1011, internal error))")
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert len(errors) == 1 and CALL in errors[0] and actions[-1].reason in errors[0]

    def test_sessions_that_fail_at_once_back_off_and_a_healthy_one_resumes_at_once(self):
        c = CallScript().connected()
        delays = []
        for _ in range(MAX_UNHEALTHY_SESSIONS):
            actions = c.call.handle(ev.LiveClosed(1011, "internal error"))
            delays += [a.delay_s for a in actions if isinstance(a, act.ResumeLive)]
            c.live_ready()
        assert delays == [0.0, 0.25, 0.5]
        c.caller_speaks(HEALTHY_SESSION_FRAMES)
        assert act.ResumeLive("Live session closed (code=1006, abnormal)", 0.0) in c.call.handle(ev.LiveClosed(1006, "abnormal"))

    def test_closes_and_failed_sends_count_toward_the_same_bound(self):
        c = CallScript().connected()
        failures = [ev.LiveClosed(1011, "internal error"), ev.LiveSendFailed("ConnectionClosedError", ())]
        for i in range(MAX_UNHEALTHY_SESSIONS):
            assert any(isinstance(a, act.ResumeLive) for a in c.call.handle(failures[i % 2]))
            c.live_ready()
        assert isinstance(c.call.handle(failures[MAX_UNHEALTHY_SESSIONS % 2])[-1], act.EndCall)

    def test_a_session_that_completed_a_turn_before_it_dropped_starts_a_new_count(self):
        c = CallScript().connected()
        for _ in range(MAX_UNHEALTHY_SESSIONS):
            c.call.handle(ev.LiveClosed(1011, "internal error"))
            c.live_ready()
        c.agent_says(0.2)
        c.call.handle(ev.TurnComplete())  # this session worked for a while
        for _ in range(MAX_UNHEALTHY_SESSIONS + 1):
            assert any(isinstance(a, act.ResumeLive) for a in c.call.handle(ev.LiveClosed(1011, "internal error")))
            c.live_ready()
        assert not c.call.over
        assert isinstance(c.call.handle(ev.LiveClosed(1011, "internal error"))[-1], act.EndCall)

    def test_sessions_ended_by_go_away_before_they_were_healthy_are_bounded_too(self):
        c = CallScript().connected()
        for _ in range(MAX_UNHEALTHY_SESSIONS):
            assert any(isinstance(a, act.ResumeLive) for a in c.call.handle(ev.GoAway(50.0)))
            c.live_ready()
        assert isinstance(c.call.handle(ev.GoAway(50.0))[-1], act.EndCall)

    def test_a_send_that_found_the_socket_closed_fatally_ends_like_the_close(self):
        c = CallScript().connected()
        actions = c.call.handle(ev.LiveSendFailed("the socket had closed (code=1008, policy)", (), code=1008))
        assert isinstance(actions[-1], act.EndCall) and actions[-1].apologize

    def test_a_resume_refused_as_invalid_is_not_retried(self):
        c = CallScript().connected()
        c.call.handle(ev.LiveClosed(1006, "abnormal"))
        (action,) = c.call.handle(ev.LiveFailed("invalid handle", 1007))
        assert isinstance(action, act.EndCall) and action.apologize

    def test_a_refused_handle_opens_a_fresh_session_carrying_the_conversation(self):
        c = CallScript().connected()
        c.call.handle(ev.Transcript("agent", "Hi, Acme here."))
        c.call.handle(ev.TurnComplete())
        c.call.handle(ev.Transcript("caller", "Where is order A1001?"))
        c.call.handle(ev.ResumptionUpdate("h1", True))
        c.call.handle(ev.LiveClosed(1011, "internal error"))
        assert c.call.carry_over is None  # the resume carries the context itself
        actions = c.call.handle(ev.LiveFailed("session resumption handle expired", 1008))
        assert any(isinstance(a, act.ResumeLive) for a in actions)
        assert not any(isinstance(a, act.EndCall) for a in actions)  # the caller stays on the line
        assert c.call.resumption_handle is None
        assert "You: Hi, Acme here.\nCaller: Where is order A1001?" in c.call.carry_over
        assert c.caller_speaks(3) == []  # kept for the fresh session
        ready = c.live_ready()
        assert [type(a) for a in ready] == [act.SendAudioToLive] * 3  # no second greeting
        summary = c.call.summary()
        assert (summary["live_sessions_resumed"], summary["live_sessions_fresh"]) == (0, 1)

    def test_a_fresh_session_refused_too_ends_the_call(self):
        c = CallScript().connected()
        c.call.handle(ev.ResumptionUpdate("h1", True))
        c.call.handle(ev.LiveClosed(1006, "abnormal"))
        c.call.handle(ev.LiveFailed("handle expired", 1008))
        (action,) = c.call.handle(ev.LiveFailed("model not supported", 1008))
        assert isinstance(action, act.EndCall) and action.apologize

    @pytest.mark.parametrize("code", [1000, 1008, 1011])
    def test_any_close_after_go_away_resumes(self, code):
        c = CallScript().connected()
        c.call.handle(ev.ResumptionUpdate("h1", True))
        c.agent_says(0.5)  # busy: the switch waits for the turn boundary...
        c.call.handle(ev.GoAway(50.0))
        actions = c.call.handle(ev.LiveClosed(code, "client failed to close the connection after receiving a GoAway"))
        assert any(isinstance(a, act.ResumeLive) for a in actions)  # ...but the service closed first
        assert not any(isinstance(a, act.EndCall) for a in actions)
        c.live_ready()
        assert c.call.summary()["live_sessions_resumed"] == 1

    def test_go_away_while_the_agent_speaks_waits_for_the_turn_boundary(self):
        c = CallScript().connected()
        c.agent_says(0.5)
        assert c.call.handle(ev.GoAway(50.0)) == [act.StartTimer("goaway", 48.0)]
        actions = c.call.handle(ev.TurnComplete())
        assert any(isinstance(a, act.ResumeLive) for a in actions)

    def test_go_away_when_idle_switches_now(self):
        c = CallScript().connected()
        actions = c.call.handle(ev.GoAway(50.0))
        assert any(isinstance(a, act.ResumeLive) for a in actions)

    def test_go_away_deadline_forces_the_switch(self):
        c = CallScript().connected()
        c.agent_says(0.5)
        c.call.handle(ev.GoAway(10.0))
        assert any(isinstance(a, act.ResumeLive) for a in c.call.handle(ev.TimerFired("goaway")))

    def test_a_tool_result_finished_while_switching_is_delivered_on_the_new_session(self):
        c = CallScript().connected()
        c.call.handle(ev.ToolCallRequested((ev.FunctionCall("fc-1", "lookup_order", {}),)))
        c.call.handle(ev.LiveClosed(1006, "abnormal"))
        assert c.call.handle(ev.ToolFinished("fc-1", "lookup_order", {"result": 1})) == []
        assert act.SendToolResponse("fc-1", "lookup_order", {"result": 1}) in c.live_ready()


class TestWatchdogAndLimits:
    def test_a_silent_model_after_the_caller_spoke_is_nudged_once(self):
        call = Call(greeting=None, watchdog_s=5.0)
        call.handle(tw.StreamStarted(SID, CALL, "", {}))
        call.handle(ev.LiveReady())
        assert call.handle(ev.Transcript("caller", "hello?")) == [act.StartTimer("watchdog", 5.0)]
        assert call.handle(ev.TimerFired("watchdog")) == [act.SendTextToLive(NUDGE_TEXT)]
        assert call.handle(ev.TimerFired("watchdog")) == []
        assert call.watchdog_nudges == 1

    def test_model_audio_disarms_the_watchdog(self):
        call = Call(greeting=None, watchdog_s=5.0)
        call.handle(tw.StreamStarted(SID, CALL, "", {}))
        call.handle(ev.LiveReady())
        call.handle(ev.Transcript("caller", "hello?"))
        assert call.handle(ev.ModelAudio(tone_24k(0.1)))[0] == act.CancelTimer("watchdog")

    def test_max_call_length_asks_for_a_goodbye_then_hangs_up_after_it_played(self):
        call = Call(greeting=None, max_call_s=60)
        assert act.StartTimer("max_call", 60) in call.handle(tw.StreamStarted(SID, CALL, "", {}))
        call.handle(ev.LiveReady())
        assert call.handle(ev.TimerFired("max_call"))[0] == act.SendTextToLive(GOODBYE_TEXT)
        sent = []
        pcm = tone_24k(0.5)
        for i in range(0, len(pcm), 1920):
            sent += call.handle(ev.ModelAudio(pcm[i : i + 1920]))
        sent += call.handle(ev.TurnComplete())
        names = [m["mark"]["name"] for m in twilio_messages(sent) if m["event"] == "mark"]
        actions = call.handle(tw.MarkEchoed(SID, names[-1]))
        assert actions == [act.EndCall("maximum call length reached", hangup=True)]


class TestPhoneLine:
    def test_keypad_digits_are_collected_and_given_to_the_model_after_a_pause(self):
        c = CallScript().connected()
        for digit in "1001":
            assert c.call.handle(tw.DtmfPressed(SID, digit)) == [act.StartTimer("dtmf", 2.0)]
        assert c.call.handle(ev.TimerFired("dtmf")) == [act.SendTextToLive("(The caller typed 1 0 0 1 on the keypad.)")]

    def test_hash_ends_keypad_entry_at_once(self):
        c = CallScript().connected()
        c.call.handle(tw.DtmfPressed(SID, "4"))
        c.call.handle(tw.DtmfPressed(SID, "2"))
        actions = c.call.handle(tw.DtmfPressed(SID, "#"))
        assert actions == [act.CancelTimer("dtmf"), act.SendTextToLive("(The caller typed 4 2 on the keypad.)")]

    def test_end_call_waits_for_the_goodbye_to_be_heard(self):
        c = CallScript().connected()
        assert c.call.handle(ev.HangupRequested("done")) == [act.StartTimer("goodbye_grace", 15.0)]
        messages = twilio_messages(c.agent_says(0.5) + c.call.handle(ev.TurnComplete()))
        names = [m["mark"]["name"] for m in messages if m["event"] == "mark"]
        assert c.echo(names[-2]) == []  # still playing
        assert c.echo(names[-1]) == [act.EndCall("agent ended the call: done", hangup=True)]

    def test_a_silent_goodbye_still_ends_the_call_after_the_timeout(self):
        c = CallScript().connected()
        c.call.handle(ev.HangupRequested("done"))
        assert c.call.handle(ev.TimerFired("goodbye_grace")) == [act.EndCall("agent ended the call: done", hangup=True)]

    def test_transfer_happens_after_the_hand_off_sentence(self):
        c = CallScript().connected()
        c.call.handle(ev.TransferRequested("sales", "+15551230001"))
        messages = twilio_messages(c.agent_says(0.3) + c.call.handle(ev.TurnComplete()))
        last = [m["mark"]["name"] for m in messages if m["event"] == "mark"][-1]
        assert c.echo(last) == [act.EndCall("transferred to sales", transfer_to="+15551230001", transfer_name="sales")]

    def test_an_outbound_call_greets_with_its_purpose(self):
        call = Call(greeting="inbound greeting")
        call.handle(tw.StreamStarted(SID, CALL, "", {"purpose": "confirm Tuesday's delivery", "direction": "outbound-api"}))
        (greet,) = call.handle(ev.LiveReady())
        assert "confirm Tuesday's delivery" in greet.text and "placed this phone call" in greet.text


class TestWarmTransferAndVoicemail:
    def test_a_warm_transfer_waits_for_a_handle_that_covers_the_hand_off(self):
        c = CallScript().connected()
        c.call.handle(ev.TransferRequested("sales", "+15551230001", warm=True, summary="Wants a refund."))
        messages = twilio_messages(c.agent_says(0.3) + c.call.handle(ev.TurnComplete()))
        last = [m["mark"]["name"] for m in messages if m["event"] == "mark"][-1]
        assert c.echo(last) == [act.StartTimer("handle_wait", 2.0)]  # heard, but no handle yet
        end = act.EndCall("warm transfer to sales", transfer_to="+15551230001", transfer_name="sales",
                         transfer_summary="Wants a refund.")
        assert c.call.handle(ev.ResumptionUpdate("h-after", True)) == [end]
        assert c.call.resumption_handle == "h-after"

    def test_without_a_new_handle_the_warm_transfer_goes_ahead_with_the_last_one(self):
        c = CallScript().connected()
        c.call.handle(ev.ResumptionUpdate("h-before", True))
        c.call.handle(ev.TransferRequested("sales", "+15551230001", warm=True))
        messages = twilio_messages(c.agent_says(0.3) + c.call.handle(ev.TurnComplete()))
        c.echo([m["mark"]["name"] for m in messages if m["event"] == "mark"][-1])
        (end,) = c.call.handle(ev.TimerFired("handle_wait"))
        assert end.transfer_summary == "" and c.call.resumption_handle == "h-before"

    def test_a_caller_back_from_a_transfer_resumes_with_its_handle_and_hears_the_opening(self):
        call = Call(greeting="Greet the caller.", opening="(The transfer did not happen.)", resumption_handle="h1")
        call.handle(tw.StreamStarted(SID, CALL, "", {"leg": "return-0123456789abcdef"}))
        assert call.resumption_handle == "h1"
        assert call.handle(ev.LiveReady()) == [act.SendTextToLive("(The transfer did not happen.)")]

    def test_a_refused_handle_on_return_opens_a_fresh_session_with_the_same_opening(self):
        call = Call(greeting=None, opening="(back)", resumption_handle="expired")
        call.handle(tw.StreamStarted(SID, CALL, "", {}))
        actions = call.handle(ev.LiveFailed("handle expired", 1007))
        assert any(isinstance(a, act.ResumeLive) for a in actions) and call.resumption_handle is None
        assert call.handle(ev.LiveReady()) == [act.SendTextToLive("(back)")]

    def detecting(self, voicemail: str | None = "Your order shipped.") -> Call:
        call = Call(greeting="inbound greeting", voicemail_message=voicemail)
        actions = call.handle(tw.StreamStarted(SID, CALL, "", {"purpose": "order shipped", "amd": "pending"}))
        assert act.StartTimer("amd", 40.0) in actions
        assert call.handle(ev.LiveReady()) == []  # nobody is greeted before the verdict
        assert call.handle(tw.CallerAudio(SID, caller_frame())) == []  # a machine's greeting is not heard
        return call

    def test_the_agent_greets_a_person_once_the_verdict_says_human(self):
        call = self.detecting()
        cancel, greet = call.handle(ev.AnsweredBy("human"))
        assert cancel == act.CancelTimer("amd") and "order shipped" in greet.text
        assert call.amd_outcome == "human" and call.summary()["answered_by"] == "human"
        assert call.handle(ev.AnsweredBy("machine_end_beep")) == []  # a late second verdict changes nothing

    def test_a_machine_gets_the_message_and_the_call_hangs_up_once_it_was_heard(self):
        call = self.detecting()
        actions = call.handle(ev.AnsweredBy("machine_end_beep"))
        assert "Your order shipped." in actions[1].text and "answering machine" in actions[1].text
        out = []
        pcm = tone_24k(0.3)
        for i in range(0, len(pcm), 1920):
            out += call.handle(ev.ModelAudio(pcm[i:i + 1920]))
        out += call.handle(ev.TurnComplete())
        last = [m["mark"]["name"] for m in twilio_messages(out) if m["event"] == "mark"][-1]
        assert call.handle(tw.MarkEchoed(SID, last)) == [act.EndCall("voicemail message left", hangup=True)]
        assert call.amd_outcome == "message left"

    @pytest.mark.parametrize("verdict, voicemail, reason", [
        ("fax", "msg", "answered by a fax machine"),
        ("machine_end_silence", None, "answered by a machine; no voicemail message is configured"),
    ])
    def test_a_fax_or_a_machine_without_a_message_is_hung_up_on_at_once(self, verdict, voicemail, reason):
        call = self.detecting(voicemail)
        assert call.handle(ev.AnsweredBy(verdict))[-1] == act.EndCall(reason, hangup=True)
        assert call.amd_outcome == "machine"

    def test_no_verdict_in_time_goes_on_as_with_a_person(self):
        call = self.detecting()
        (greet,) = call.handle(ev.TimerFired("amd"))
        assert "order shipped" in greet.text and call.amd_outcome == "human"


def _ends(actions) -> list:
    return [a for a in actions if isinstance(a, act.EndCall)]


def _marks(actions) -> list[str]:
    return [m["mark"]["name"] for m in twilio_messages(actions) if m["event"] == "mark"]


class TestMovingToAnotherInstance:
    """A draining server moves the call at its next quiet moment (docs/deploying.md)."""

    def test_a_quiet_call_moves_at_once(self):
        c = CallScript().connected()
        sent = c.agent_says(0.3) + c.call.handle(ev.TurnComplete())
        c.echo(_marks(sent)[-1])
        [end] = _ends(c.call.handle(ev.MoveRequested(5.0)))
        assert end.move and not end.apologize and c.call.cut_turn is None

    def test_a_sentence_being_spoken_finishes_and_is_heard_before_the_move(self):
        c = CallScript().connected()
        sent = c.agent_says(0.3)
        actions = c.call.handle(ev.MoveRequested(5.0))
        assert actions == [act.StartTimer("move", 5.0)] and not _ends(actions)
        sent += c.call.handle(ev.TurnComplete())
        assert not _ends(sent), "its audio has not been heard yet"
        [end] = _ends(c.echo(_marks(sent)[-1]))
        assert end.move and c.call.cut_turn is None

    def test_past_the_wait_the_sentence_is_cut_and_the_next_instance_is_told_what_was_heard(self):
        c = CallScript().connected()
        c.call.handle(ev.Transcript("agent", "Your order ships tomorrow morning."))
        sent = c.agent_says(1.0)
        c.echo(_marks(sent)[len(_marks(sent)) // 2])
        c.call.handle(ev.MoveRequested(5.0))
        [end] = _ends(c.call.handle(ev.TimerFired("move")))
        assert end.move
        cut = c.call.cut_turn
        assert cut["said"] == "Your order ships tomorrow morning." and 0 < len(cut["heard"]) < len(cut["said"])
        other = Call(greeting="Greet the caller.")
        other.restore(json.loads(json.dumps(c.call.snapshot())))
        other.handle(tw.StreamStarted("MZ" + "d" * 32, CALL, "AC" + "c" * 32, {}))
        texts = [a.text for a in other.handle(ev.LiveReady()) if isinstance(a, act.SendTextToLive)]
        assert len(texts) == 1 and cut["heard"] in texts[0] and "Greet" not in texts[0]

    def test_a_tool_call_running_finishes_and_its_answer_is_spoken_before_the_move(self):
        c = CallScript().connected()
        c.call.handle(ev.ToolCallRequested((ev.FunctionCall("fc-1", "lookup_order", {"order_id": "A1"}),)))
        assert not _ends(c.call.handle(ev.MoveRequested(5.0)))
        finished = c.call.handle(ev.ToolFinished("fc-1", "lookup_order", {"status": "shipped"}, 0.1, "INTERRUPT"))
        assert not _ends(finished) and any(isinstance(a, act.SendToolResponse) for a in finished)
        sent = c.agent_says(0.3) + c.call.handle(ev.TurnComplete())
        [end] = _ends(c.echo(_marks(sent)[-1]))
        assert end.move and c.call.cut_tools == []

    def test_a_tool_call_still_running_at_the_deadline_is_cancelled_and_the_next_model_told(self):
        c = CallScript().connected()
        c.call.handle(ev.ToolCallRequested((ev.FunctionCall("fc-1", "lookup_order", {"order_id": "A1"}),)))
        c.call.handle(ev.MoveRequested(5.0))
        actions = c.call.handle(ev.TimerFired("move"))
        assert act.CancelTool("fc-1") in actions and _ends(actions)[0].move
        assert c.call.tool_calls[0].outcome == "cancelled"
        other = Call(greeting=None)
        other.restore(c.call.snapshot())
        other.handle(tw.StreamStarted("MZ" + "d" * 32, CALL, "AC" + "c" * 32, {}))
        texts = [a.text for a in other.handle(ev.LiveReady()) if isinstance(a, act.SendTextToLive)]
        assert "lookup_order(order_id='A1')" in texts[0]

    def test_a_goodbye_already_decided_is_kept(self):
        c = CallScript().connected()
        c.call.handle(ev.HangupRequested("caller is done"))
        assert c.call.handle(ev.MoveRequested(5.0)) == [] and not c.call.moving

    def test_the_moved_call_resumes_with_its_handle_counters_and_digits_and_does_not_greet_again(self):
        c = CallScript().connected()
        c.call.handle(ev.Transcript("caller", "Where is my order?"))
        c.call.handle(ev.ResumptionUpdate("handle-7", True))
        c.call.handle(tw.DtmfPressed(SID, "4"))
        c.call.interruptions = 2
        c.call.handle(ev.UsageReported(100, 50, 150))
        c.call.handle(ev.MoveRequested(5.0))
        snapshot = json.loads(json.dumps(c.call.snapshot()))
        other = Call(greeting="Greet the caller.")
        other.restore(snapshot)
        assert other.resumption_handle == "handle-7" and other.moves == 1
        assert other.interruptions == 2 and other.usage["total"] == 150 and other.digits == ["4"]
        assert other.transcript == [["caller", "Where is my order?"]]
        assert other.handle(tw.StreamStarted("MZ" + "d" * 32, CALL, "AC" + "c" * 32, {})) == [act.ConnectLive()]
        ready = other.handle(ev.LiveReady())
        assert not [a for a in ready if isinstance(a, act.SendTextToLive)], "no greeting, no note: nothing was cut"
        assert act.StartTimer("dtmf", other.dtmf_timeout_s) in ready, "the pending digit goes to the model"
        assert other.sessions_resumed == 1 and other.reconnects == 1

    def test_a_call_moved_before_its_first_session_was_ready_is_greeted_on_the_next_instance(self):
        c = CallScript()
        c.start()
        [end] = _ends(c.call.handle(ev.MoveRequested(5.0)))
        other = Call(greeting="Greet the caller.")
        other.restore(c.call.snapshot())
        other.handle(tw.StreamStarted("MZ" + "d" * 32, CALL, "AC" + "c" * 32, {}))
        assert act.SendTextToLive("Greet the caller.") in other.handle(ev.LiveReady())
