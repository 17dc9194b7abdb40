"""Per-frame cost of the two audio paths (run: python benchmarks/audio_path.py).

Each path handles one 20 ms frame per call, as in a live call:
  inbound   Twilio payload (base64 of 160 mu-law bytes) -> 640 bytes s16le 16 kHz
  outbound  960 bytes s16le 24 kHz from Live -> base64 160-byte Twilio payload(s)
The input is the speech fixture, cycled. Each figure is the median over REPEATS runs
of FRAMES frames, in microseconds per frame. When the stdlib `audioop` is importable
(Python <= 3.12) the same paths are built with it (ulaw2lin + ratecv, ratecv +
lin2ulaw) for comparison; note ratecv is a plain linear interpolator, far cheaper
and far worse than soxr HQ, so the ratio is a cost reference, not a like-for-like.
"""

from __future__ import annotations

import binascii
import statistics
import sys
import time
import warnings
import wave
from pathlib import Path

import numpy as np
import soxr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from telephony.audio import (  # noqa: E402
    Framer,
    InboundAudio,
    OutboundAudio,
    SoxrResampler,
    ulaw_decode,
    ulaw_encode,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import audioop
    except ImportError:
        audioop = None

FRAMES = 20_000
REPEATS = 5
SPEECH = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "speech" / "arctic_a0007.wav"


def load_speech() -> np.ndarray:
    with wave.open(str(SPEECH), "rb") as wav:
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(np.int16)


def frames_of(data, size: int) -> list:
    return [data[i : i + size] for i in range(0, len(data) - size + 1, size)]


def per_frame_us(make_step, inputs: list) -> float:
    """Median µs/frame; make_step() builds fresh per-call state for each repeat."""
    results = []
    n = len(inputs)
    for _ in range(REPEATS):
        step = make_step()
        t0 = time.perf_counter_ns()
        for i in range(FRAMES):
            step(inputs[i % n])
        results.append((time.perf_counter_ns() - t0) / FRAMES / 1000)
    return statistics.median(results)


# --- our paths --------------------------------------------------------------------


def ours_inbound():
    return InboundAudio().convert


def ours_outbound():
    return OutboundAudio().convert


# --- the same paths with audioop -----------------------------------------------------


def audioop_inbound():
    state = [None]

    def step(payload: str) -> bytes:
        pcm8 = audioop.ulaw2lin(binascii.a2b_base64(payload), 2)
        pcm16, state[0] = audioop.ratecv(pcm8, 2, 1, 8000, 16000, state[0])
        return pcm16

    return step


def audioop_outbound():
    state = [None]
    framer = Framer()

    def step(pcm24: bytes) -> list[str]:
        pcm8, state[0] = audioop.ratecv(pcm24, 2, 1, 24000, 8000, state[0])
        ulaw = audioop.lin2ulaw(pcm8, 2)
        return [binascii.b2a_base64(f, newline=False).decode("ascii") for f in framer.push(ulaw)]

    return step


def main() -> None:
    speech16 = load_speech()
    speech8 = soxr.resample(speech16, 16000, 8000, quality="HQ")
    speech24 = soxr.resample(speech16, 16000, 24000, quality="HQ")

    ulaw_frames = frames_of(ulaw_encode(speech8), 160)
    payloads = [binascii.b2a_base64(f, newline=False).decode("ascii") for f in ulaw_frames]
    pcm8_frames = frames_of(speech8, 160)
    pcm8_bytes = [f.tobytes() for f in pcm8_frames]
    pcm24_frames = frames_of(speech24, 480)
    pcm24_bytes = [f.tobytes() for f in pcm24_frames]

    have = audioop is not None
    rows: list[tuple[str, float, float | None]] = []

    def row(name, ours, inputs, ref=None, ref_inputs=None):
        ref_us = per_frame_us(ref, ref_inputs or inputs) if have and ref is not None else None
        rows.append((name, per_frame_us(ours, inputs), ref_us))

    row("inbound path (b64 -> ulaw -> 8k->16k -> s16le)", ours_inbound, payloads, audioop_inbound)
    row("outbound path (960 B 24k -> 8k -> ulaw -> frame -> b64)", ours_outbound, pcm24_bytes,
        audioop_outbound)
    row("codec: ulaw decode 160 B", lambda: ulaw_decode, ulaw_frames,
        lambda: lambda b: audioop.ulaw2lin(b, 2))
    row("codec: ulaw encode 160 samples", lambda: ulaw_encode, pcm8_frames,
        lambda: lambda b: audioop.lin2ulaw(b, 2), pcm8_bytes)
    row("resample only: 8k->16k, 160 samples", lambda: SoxrResampler(8000, 16000).process,
        pcm8_frames)
    row("resample only: 24k->8k, 480 samples", lambda: SoxrResampler(24000, 8000).process,
        pcm24_frames)
    row("base64 decode, 216 chars (strict)", lambda: lambda p: binascii.a2b_base64(p, strict_mode=True),
        payloads)
    row("base64 encode, 160 B", lambda: lambda f: binascii.b2a_base64(f, newline=False).decode("ascii"),
        ulaw_frames)

    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, soxr {soxr.__version__}, "
          f"{FRAMES} frames x {REPEATS} repeats, median us per 20 ms frame")
    if not have:
        print("(audioop not importable: no reference column)")
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'ours us':>8}  {'audioop us':>10}  {'ours/audioop':>12}")
    for name, ours, ref in rows:
        ref_s = f"{ref:10.2f}" if ref is not None else f"{'-':>10}"
        ratio = f"{ours / ref:12.2f}" if ref is not None else f"{'-':>12}"
        print(f"{name:<{width}}  {ours:8.2f}  {ref_s}  {ratio}")


if __name__ == "__main__":
    main()
