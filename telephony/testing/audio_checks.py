"""Measuring a streaming resampler the way the bridge uses it (tests and benchmarks).

How long does a sample wait inside a resampler fed 20 ms chunks? Two parts: the
count deficit (samples the input implies minus samples that came out) and the
group delay (where the output lines up with a zero-delay one-shot reference,
soxr VHQ, found from the peak of their cross-correlation). Their sum is the
hold-back, which the tests bound at 3 ms.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import soxr


def chirp(rate: int, seconds: float, f0: float = 300, f1: float = 3400, amplitude: float = 8000) -> np.ndarray:
    """A linear sweep through the telephone band, int16."""
    t = np.arange(int(rate * seconds)) / rate
    phase = 2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * seconds))
    return np.round(amplitude * np.sin(phase)).astype(np.int16)


@dataclass(frozen=True)
class HoldBack:
    deficit_mean_ms: float  # samples owed, once past the first 250 ms
    deficit_worst_ms: float
    delay_ms: float  # group delay against a zero-delay one-shot reference

    @property
    def mean_ms(self) -> float:
        return self.deficit_mean_ms + self.delay_ms

    @property
    def worst_ms(self) -> float:
        return self.deficit_worst_ms + self.delay_ms


def measure_holdback(resampler, in_rate: int, out_rate: int, seconds: float = 0.5) -> HoldBack:
    """Stream a chirp (then silence) through `resampler` in 20 ms chunks and measure it."""
    signal = np.concatenate([chirp(in_rate, seconds), np.zeros(in_rate // 2, dtype=np.int16)])
    step = in_rate // 50
    fed = got = 0
    deficits, outs = [], []
    for i in range(0, len(signal), step):
        part = signal[i : i + step]
        outs.append(resampler.process(part))
        fed, got = fed + len(part), got + len(outs[-1])
        if fed >= in_rate // 4:
            deficits.append(fed * out_rate / in_rate - got)
    outs.append(resampler.flush())
    streamed = np.concatenate(outs).astype(np.float64)
    reference = soxr.resample(signal.astype(np.float64), in_rate, out_rate, quality="VHQ")
    n = min(len(streamed), len(reference))
    streamed, reference = streamed[:n], reference[:n]
    lags = np.arange(-(out_rate // 20), out_rate // 20 + 1)
    xcorr = [np.dot(streamed[max(k, 0) : n + min(k, 0)], reference[max(-k, 0) : n - max(k, 0)]) for k in lags]
    lag = int(lags[int(np.argmax(xcorr))])
    to_ms = 1e3 / out_rate
    return HoldBack(float(np.mean(deficits)) * to_ms, float(max(deficits)) * to_ms, lag * to_ms)
