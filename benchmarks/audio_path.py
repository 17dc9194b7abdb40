"""Per-frame cost and hold-back of the two audio paths (run: python benchmarks/audio_path.py).

Each path handles one 20 ms frame per call, as in a live call:
  inbound   Twilio media message (JSON text) -> json.loads -> base64 -> mu-law decode
            -> 8k->16k -> 640 bytes s16le for Live
  outbound  960 bytes s16le 24 kHz from Live -> 24k->8k -> mu-law -> 160-byte frames
            -> base64 -> Twilio media message text (twilio_protocol.Outbound.media)
Both resampler implementations are measured in one run ("fir", the default, and
"soxr-hq"), next to the same paths built with the stdlib `audioop` when it is
importable (Python <= 3.12: ulaw2lin/lin2ulaw + ratecv). ratecv is a plain linear
interpolator with no anti-alias filter (measured with the tests' tone sweeps: 24k->8k
folds aliases into the band at full level, 0 dB; 8k->16k leaves images at -4 dB), so
it is a cost floor, not a like-for-like.

Speed: the input is the speech fixture, cycled; each figure is the best of REPEATS
runs of FRAMES frames, in microseconds per frame (the best, not the median, because
other processes on a small machine only ever add time; it is what timeit advises).

Hold-back: how long audio waits inside the resampler, streamed in 20 ms chunks. It is
the count deficit (samples the input implies minus samples out, once past 250 ms;
mean and worst) plus the group delay of what does come out (lag of the cross-
correlation peak against a zero-delay one-shot soxr VHQ conversion of the same chirp).
The FIRs are causal and return every chunk whole, so their deficit is 0 and all that
is left is their (minimum-phase) filter delay inside the signal.

Framing: Live sends its audio in 40 ms chunks (960 samples at 24 kHz). How many whole
20 ms Twilio frames each chunk of a long turn yields at once, and how much audio is
left waiting in the partial frame for the next chunk.
"""

from __future__ import annotations

import argparse
import binascii
import json
import statistics
import sys
import time
import warnings
import wave
from functools import partial
from pathlib import Path

import numpy as np
import soxr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from telephony.audio import (  # noqa: E402
    RESAMPLERS,
    Framer,
    InboundAudio,
    OutboundAudio,
    inbound_resampler,
    outbound_resampler,
    ulaw_decode,
    ulaw_encode,
)
from telephony.testing.audio_checks import measure_holdback  # noqa: E402
from telephony.twilio_protocol import Outbound  # noqa: E402

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import audioop
    except ImportError:
        audioop = None

SPEECH = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "speech" / "arctic_a0007.wav"
STREAM_SID = "MZ18ad3ab5a668481ce02b83e7395059f0"


def load_speech() -> np.ndarray:
    with wave.open(str(SPEECH), "rb") as wav:
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(np.int16)


def frames_of(data, size: int) -> list:
    return [data[i : i + size] for i in range(0, len(data) - size + 1, size)]


def twilio_media_message(seq: int, payload: str) -> str:
    """A media message as Twilio sends it (docs/twilio-media-streams.md §2 "media")."""
    return json.dumps(
        {
            "event": "media",
            "sequenceNumber": str(seq + 3),
            "streamSid": STREAM_SID,
            "media": {"track": "inbound", "chunk": str(seq + 1), "timestamp": str(20 * seq), "payload": payload},
        }
    )


def per_frame_us(make_step, inputs: list, frames: int, repeats: int, frames_per_step: int = 1) -> float:
    """Best µs/frame; make_step() builds fresh per-call state for each repeat."""
    results = []
    n = len(inputs)
    steps = frames // frames_per_step
    for _ in range(repeats):
        step = make_step()
        t0 = time.perf_counter_ns()
        for i in range(steps):
            step(inputs[i % n])
        results.append((time.perf_counter_ns() - t0) / (steps * frames_per_step) / 1000)
    return min(results)


# --- the paths, for each implementation ----------------------------------------------


def inbound_json(kind: str):
    def make():
        convert = InboundAudio(inbound_resampler(kind)).convert
        loads = json.loads
        return lambda text: convert(loads(text)["media"]["payload"])

    return make


def outbound_json(kind: str):
    def make():
        convert = OutboundAudio(outbound_resampler(kind)).convert
        media = Outbound(STREAM_SID).media
        return lambda pcm24: [media(p) for p in convert(pcm24)]

    return make


def inbound_path(kind: str):
    return lambda: InboundAudio(inbound_resampler(kind)).convert


def outbound_path(kind: str):
    return lambda: OutboundAudio(outbound_resampler(kind)).convert


def resample_in(kind: str):
    return lambda: inbound_resampler(kind).process


def resample_out(kind: str):
    return lambda: outbound_resampler(kind).process


# --- the same with audioop -----------------------------------------------------------


class AudioopRatecv:
    """ratecv as a `Resampler` (int16 arrays in and out), for the hold-back measure."""

    def __init__(self, in_rate: int, out_rate: int) -> None:
        self.in_rate, self.out_rate, self.state = in_rate, out_rate, None

    def process(self, pcm: np.ndarray) -> np.ndarray:
        out, self.state = audioop.ratecv(pcm.tobytes(), 2, 1, self.in_rate, self.out_rate, self.state)
        return np.frombuffer(out, dtype=np.int16)

    def flush(self) -> np.ndarray:
        self.state = None
        return np.zeros(0, dtype=np.int16)

    def reset(self) -> None:
        self.state = None


def audioop_inbound_bytes():
    state = [None]

    def step(payload: str) -> bytes:
        pcm8 = audioop.ulaw2lin(binascii.a2b_base64(payload), 2)
        pcm16, state[0] = audioop.ratecv(pcm8, 2, 1, 8000, 16000, state[0])
        return pcm16

    return step


def audioop_inbound_json():
    step = audioop_inbound_bytes()
    return lambda text: step(json.loads(text)["media"]["payload"])


def audioop_outbound_b64():
    state = [None]
    framer = Framer()

    def step(pcm24: bytes) -> list[str]:
        pcm8, state[0] = audioop.ratecv(pcm24, 2, 1, 24000, 8000, state[0])
        ulaw = audioop.lin2ulaw(pcm8, 2)
        return [binascii.b2a_base64(f, newline=False).decode("ascii") for f in framer.push(ulaw)]

    return step


def audioop_outbound_json():
    step = audioop_outbound_b64()
    media = Outbound(STREAM_SID).media
    return lambda pcm24: [media(p) for p in step(pcm24)]


# --- hold-back -------------------------------------------------------------------------


def holdback_ms(resampler, in_rate: int, out_rate: int) -> tuple[float, float]:
    """(mean, worst) ms a sample waits inside `resampler`, streamed in 20 ms chunks."""
    held = measure_holdback(resampler, in_rate, out_rate, seconds=1.0)
    return held.mean_ms, held.worst_ms


# --- report ----------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    frames, repeats = args.frames, args.repeats

    speech16 = load_speech()
    speech8 = soxr.resample(speech16, 16000, 8000, quality="HQ")
    speech24 = soxr.resample(speech16, 16000, 24000, quality="HQ")
    ulaw_frames = frames_of(ulaw_encode(speech8), 160)
    payloads = [binascii.b2a_base64(f, newline=False).decode("ascii") for f in ulaw_frames]
    messages = [twilio_media_message(i, p) for i, p in enumerate(payloads)]
    pcm8_frames = frames_of(speech8, 160)
    pcm24_frames = frames_of(speech24, 480)
    pcm24_bytes = [f.tobytes() for f in pcm24_frames]
    pcm24_chunks = [f.tobytes() for f in frames_of(speech24, 960)]  # Live's 40 ms chunks

    have = audioop is not None
    kinds = list(RESAMPLERS)  # "fir" (default), "soxr-hq"

    def time_(make, inputs, frames_per_step=1):
        return per_frame_us(make, inputs, frames, repeats, frames_per_step)

    print(
        f"python {sys.version.split()[0]}, numpy {np.__version__}, soxr {soxr.__version__}; "
        f"best of {repeats} x {frames} frames, µs per 20 ms frame"
    )
    if not have:
        print("(audioop not importable: no reference column)")

    # 1. speed of the paths, per implementation
    path_rows = [
        ("inbound, Twilio JSON text -> Live bytes", inbound_json, messages, audioop_inbound_json),
        ("outbound, Live bytes -> Twilio JSON texts", outbound_json, pcm24_bytes, audioop_outbound_json),
        # Live's own chunk size: two frames per step, the figure is per frame.
        ("outbound, 40 ms Live chunks (per frame)", outbound_json, pcm24_chunks, audioop_outbound_json),
        ("inbound without JSON (b64 .. s16le)", inbound_path, payloads, audioop_inbound_bytes),
        ("outbound without JSON (.. b64)", outbound_path, pcm24_bytes, audioop_outbound_b64),
        ("resample only 8k->16k, 160 samples", resample_in, pcm8_frames, None),
        ("resample only 24k->8k, 480 samples", resample_out, pcm24_frames, None),
    ]
    cols = [f"{k} µs" for k in kinds] + (["audioop µs"] + [f"{k}/audioop" for k in kinds] if have else [])
    width = max(len(r[0]) for r in path_rows)
    print()
    print(f"{'path, per 20 ms frame':<{width}}  " + "  ".join(f"{c:>13}" for c in cols))
    for name, make_for, inputs, ref in path_rows:
        per_step = 2 if inputs is pcm24_chunks else 1
        ours = [time_(make_for(k), inputs, per_step) for k in kinds]
        cells = [f"{v:13.2f}" for v in ours]
        if have:
            if ref is not None:
                ref_us = time_(ref, inputs, per_step)
                cells += [f"{ref_us:13.2f}"] + [f"{v / ref_us:13.2f}" for v in ours]
            else:
                cells += [f"{'-':>13}"] * (1 + len(kinds))
        print(f"{name:<{width}}  " + "  ".join(cells))

    # 2. the shared pieces (same code whatever the resampler)
    media = Outbound(STREAM_SID).media
    pieces = [
        ("json.loads of a Twilio media message", lambda: json.loads, messages),
        ("media JSON text (Outbound.media)", lambda: media, payloads),
        ("base64 decode, 216 chars (strict)", lambda: partial(binascii.a2b_base64, strict_mode=True), payloads),
        ("base64 encode, 160 B", lambda: lambda f: binascii.b2a_base64(f, newline=False).decode(), ulaw_frames),
        ("mu-law decode 160 B", lambda: ulaw_decode, ulaw_frames),
        ("mu-law encode 160 samples", lambda: ulaw_encode, pcm8_frames),
    ]
    width2 = max(len(p[0]) for p in pieces)
    print()
    print(f"{'shared piece':<{width2}}  {'µs':>7}")
    for name, make, inputs in pieces:
        print(f"{name:<{width2}}  {time_(make, inputs):7.2f}")

    # 3. hold-back
    directions = [("8k->16k (caller -> Live)", 8000, 16000), ("24k->8k (Live -> caller)", 24000, 8000)]
    impls = [(k, (lambda k=k: inbound_resampler(k)), (lambda k=k: outbound_resampler(k))) for k in kinds]
    if have:
        impls.append(("audioop", lambda: AudioopRatecv(8000, 16000), lambda: AudioopRatecv(24000, 8000)))
    print()
    print("hold-back, ms (mean / worst over 20 ms chunks, group delay included)")
    width3 = max(len(d[0]) for d in directions)
    print(f"{'direction':<{width3}}  " + "  ".join(f"{name:>15}" for name, _, _ in impls))
    for label, in_rate, out_rate in directions:
        cells = []
        for _name, make_in, make_out in impls:
            mean, worst = holdback_ms((make_in if in_rate < out_rate else make_out)(), in_rate, out_rate)
            cells.append(f"{mean:6.2f} / {worst:6.2f}")
        print(f"{label:<{width3}}  " + "  ".join(f"{c:>15}" for c in cells))

    # 4. framing of Live's 40 ms chunks over a long turn
    print()
    print("outbound framing, 40 ms Live chunks of one long turn (speech, cycled)")
    print(f"{'resampler':<10}  {'frames per chunk (count)':<34}  {'pending after a chunk, mean / worst ms':>38}")
    for kind in kinds:
        outbound = OutboundAudio(outbound_resampler(kind))
        per_chunk, pending = [], []
        for i in range(500):
            per_chunk.append(len(outbound.convert(pcm24_chunks[i % len(pcm24_chunks)])))
            pending.append(outbound.pending_bytes / 8)  # mu-law bytes at 8 kHz -> ms
        counts = ", ".join(f"{k}: {per_chunk.count(k)}" for k in sorted(set(per_chunk)))
        print(f"{kind:<10}  {counts:<34}  {statistics.mean(pending):17.1f} / {max(pending):5.1f}")


if __name__ == "__main__":
    main()
