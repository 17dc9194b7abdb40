"""A tone onset crosses the bridge, in each direction, in place and with its waveform intact.

The real server (default resampler) sits between a simulated caller and the Live
emulator. Everything here is measured in samples from the start of each stream, never
on a clock: timing belongs to benchmarks/latency.py. Where the onset was sent is found
in one-shot soxr over the whole signal (time-aligned, zero delay); the bound for "in
place" is the alignment delay of the server's own streaming resampler, measured here
with an impulse. The reference for "intact" is that same resampler run over the whole
signal at once: the FIR is minimum phase, so its waveform differs from soxr's
linear-phase one by a fraction of a sample that no whole-sample lag can align.
"""

from __future__ import annotations

import numpy as np
import pytest
import soxr

from telephony.audio import inbound_resampler, outbound_resampler, ulaw_decode
from telephony.testing.emulator import Reply, Say, Script
from telephony.testing.recordings import Silence, Tone, build_messages, media_payloads, write_recording

TONE_HZ = 1000.0
TONE_DBFS = -12.0
LEAD_S = 0.4  # silence before the onset, in both directions
BURST_S = 0.1
ONSET_RMS = 32767 * 10 ** (-30 / 20)
ONSET_SAMPLE = 32767 * 10 ** (-24 / 20)
QUIET_SCRIPT = Script(greeting=[], replies=[Reply(steps=[])])  # Live says nothing back


def onset(x: np.ndarray, rate: int) -> int:
    """First 1 ms block louder than -30 dBFS RMS, refined to its first sample above -24 dBFS."""
    block = rate // 1000
    n = len(x) // block
    blocks = x[: n * block].reshape(n, block)
    loud = np.flatnonzero(np.sqrt((blocks * blocks).mean(axis=1)) > ONSET_RMS)
    assert loud.size, "no tone onset in the signal"
    first = loud[0]
    over = np.flatnonzero(np.abs(blocks[first]) > ONSET_SAMPLE)
    return int(first * block + (over[0] if over.size else 0))


def alignment_delay(make, kind: str, in_rate: int, out_rate: int) -> int:
    """Output samples by which a streaming resampler moves an impulse fed in 20 ms chunks."""
    resampler = make(kind)
    x = np.zeros(in_rate // 5, dtype=np.int16)
    x[in_rate // 10] = 16000
    step = in_rate // 50
    out = np.concatenate([resampler.process(x[i : i + step]) for i in range(0, len(x), step)] + [resampler.flush()])
    return int(np.argmax(np.abs(out.astype(np.float64)))) - (in_rate // 10) * out_rate // in_rate


def whole_signal(make, kind: str, x: np.ndarray) -> np.ndarray:
    """The signal through a fresh resampler of `kind` in one call, then its flush."""
    resampler = make(kind)
    return np.concatenate([resampler.process(x), resampler.flush()]).astype(np.float64)


def best_correlation(got: np.ndarray, expected: np.ndarray, start: int, length: int, lags: range) -> tuple[float, int]:
    """Highest normalised correlation of ``expected[start:start+length]`` with ``got`` shifted by a lag."""
    ref = expected[start : start + length]
    best = (-1.0, 0)
    for lag in lags:
        seg = got[start + lag : start + lag + length]
        if len(seg) == len(ref):
            best = max(best, (float(np.corrcoef(seg, ref)[0, 1]), lag))
    return best


def dominant_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[np.argmax(spectrum)])


def finished_summary(server, emulator, call_sid: str) -> dict:
    """The server's summary of that call (it is stored just after the socket closes)."""
    recent = server.app.state.recent_calls
    emulator.wait_for(lambda: any(s.get("call_sid") == call_sid for s in list(recent)), timeout=5)
    return next(s for s in reversed(list(recent)) if s.get("call_sid") == call_sid)


def test_a_caller_tone_burst_reaches_live_as_16khz_pcm_at_the_sample_it_was_sent(phone, emulator, tmp_path):
    server = phone.server
    messages = build_messages(
        [Silence(LEAD_S), Tone(TONE_HZ, BURST_S, TONE_DBFS), Silence(0.6)],
        seed=31,
        custom_parameters={"From": "+15550003101", "To": "+15550009999"},
    )
    recording = tmp_path / "caller_burst.jsonl"
    write_recording(recording, messages)
    call_sid = messages[1]["start"]["callSid"]

    phone.call(str(recording), QUIET_SCRIPT, speed=2)
    got = np.frombuffer(bytes(phone.last_session.audio_in), "<i2").astype(np.float64)
    summary = finished_summary(server, emulator, call_sid)
    assert summary.get("frames_dropped", 0) == 0, "caller frames were dropped: stream positions would not line up"

    sent = ulaw_decode(media_payloads(messages)).astype(np.float64)
    expected = soxr.resample(sent, 8000, 16000)
    delay = alignment_delay(inbound_resampler, server.app.state.settings.resampler, 8000, 16000)
    tolerance = 8  # 0.5 ms at 16 kHz

    sent_at = onset(expected, 16000)
    assert sent_at == pytest.approx(LEAD_S * 16000, abs=2)
    assert -tolerance <= onset(got, 16000) - sent_at <= max(delay, 0) + tolerance

    burst = int(BURST_S * 16000)
    assert dominant_hz(got[sent_at : sent_at + burst], 16000) == pytest.approx(TONE_HZ, abs=5)
    own = whole_signal(inbound_resampler, server.app.state.settings.resampler, ulaw_decode(media_payloads(messages)))
    correlation, _lag = best_correlation(got, own, sent_at - 160, burst + 320, range(-4, 5))
    assert correlation > 0.99


def test_an_emulator_tone_burst_reaches_the_caller_as_8khz_mulaw_no_later_than_the_resampler_delay(phone, tmp_path):
    server = phone.server
    rate = 24_000
    n_lead, n_burst = int(LEAD_S * rate), int(BURST_S * rate)
    pcm = np.zeros(n_lead + n_burst + int(0.1 * rate))
    # Starts at phase 0: full amplitude within a quarter period, a sharp onset.
    pcm[n_lead : n_lead + n_burst] = 32767 * 10 ** (TONE_DBFS / 20) * np.sin(2 * np.pi * TONE_HZ * np.arange(n_burst) / rate)
    pcm16 = np.round(pcm).astype("<i2")
    script = Script(greeting=[Say(audio=pcm16.tobytes())], replies=[Reply(steps=[])], pace=0)
    messages = build_messages([Silence(1.5)], seed=32, custom_parameters={"From": "+15550003202", "To": "+15550009999"})
    recording = tmp_path / "quiet_caller.jsonl"
    write_recording(recording, messages)

    call = phone.call(str(recording), script, speed=2)
    assert call.agent_audio, "the greeting never reached the caller"
    assert all(len(frame) == 160 for frame in call.media_frames)
    got = ulaw_decode(call.agent_audio).astype(np.float64)  # one turn: the stream starts with it

    expected = soxr.resample(pcm16.astype(np.float64), rate, 8000)
    delay = alignment_delay(outbound_resampler, server.app.state.settings.resampler, rate, 8000)
    tolerance = 4  # 0.5 ms at 8 kHz

    sent_at = onset(expected, 8000)
    assert sent_at == pytest.approx(LEAD_S * 8000, abs=1)
    assert len(got) >= len(expected) - 160  # the whole turn arrived, drained at its end
    assert -tolerance <= onset(got, 8000) - sent_at <= max(delay, 0) + tolerance

    burst = int(BURST_S * 8000)
    assert dominant_hz(got[sent_at : sent_at + burst], 8000) == pytest.approx(TONE_HZ, abs=8)
    own = whole_signal(outbound_resampler, server.app.state.settings.resampler, pcm16.astype(np.int16))
    correlation, _lag = best_correlation(got, own, sent_at - 80, burst + 160, range(-2, 3))
    assert correlation > 0.99
