"""The taps of the two low-latency FIR resamplers, designed once at import (numpy only).

Why design them here instead of shipping numbers: the specification (the
telephone band, the rejection, minimum phase) is what the tests hold the filters
to, and the taps follow from it in about 3 ms. `resample` streams with them.
"""

from __future__ import annotations

import numpy as np

from .rates import LIVE_INPUT_RATE, LIVE_OUTPUT_RATE, TWILIO_RATE

__all__ = ["TELEPHONE_BAND_TOP_HZ", "upsampler_taps", "decimator_taps"]

# --------------------------------------------------------------------------------------
# The specification and design of the low-latency FIR resamplers
#
# Both conversions are by integer factors (8k -> 16k is 2x up, 24k -> 8k is 3x down)
# and both meet at the same telephone band: the caller's audio is band-limited to
# 300-3400 Hz by the network, and anything the 8 kHz side carries must stay below its
# 4 kHz Nyquist. So one specification serves both filters:
#
#     passband 0-3400 Hz, stopband from 4600 Hz (= 8000 - 3400), >= 50 dB
#
# 4600 Hz is the edge that matters in both directions: going down, a tone at 4.6 kHz
# folds onto 8000 - 4600 = 3.4 kHz, the top of the band; going up, 3.4 kHz content
# images to 4.6 kHz.
#
# Design, once at import (numpy only), in two steps:
#
# 1. A linear-phase prototype: Kaiser-windowed sinc cut at 4 kHz, for twice the
#    rejection we design for (2 x 58 = 116 dB), with Kaiser's formulas
#    (order >= (A - 7.95) / (2.285 dw), beta = 0.1102 (A - 8.7)): 105 taps at 16 kHz,
#    157 at 24 kHz.
# 2. Its minimum-phase counterpart, by the homomorphic (cepstral) method: fold the
#    real cepstrum of half the log magnitude onto positive quefrencies. The result has
#    the square root of the prototype's magnitude response (so 116 dB -> 58 dB, 55 dB
#    measured after truncation; ripple halves too) and half its length: 52 and 78 taps
#    (the last tap, ~1e-4, is dropped to make a whole number of polyphase branches).
#
# Why minimum phase: a linear-phase filter delays every frequency by half its length
# (1.5 ms for the 58 dB designs); a minimum-phase filter with the same kind of
# magnitude response delays the telephone band by only 0.13-0.44 ms (group delay from
# 300 Hz to 3.4 kHz; 0.14 ms up and 0.17 ms down at 1 kHz). That matters because audio
# moves in whole chunks: a sound whose onset lands in the last filter delay of a
# chunk leaves with the next one (20 ms later inbound, 40 ms later outbound). Measured with
# benchmarks/latency.py, the causal linear-phase filters made 8.8 % of caller onsets
# and 3.3 % of model onsets wait a whole chunk (p99 22 ms inbound, 41 ms outbound);
# minimum phase, 1.6 % and 0.5 % (p99 21 ms and 2-5 ms). The passband stays flat
# within 0.002 dB; what changes is a dispersion of a few tenths of a millisecond
# towards the band edge, the same kind of phase every analogue filter on a phone line
# already has, and far below what the ear resolves in speech. Cost: no zero taps to
# skip (the half-band / third-band structure is gone), so every polyphase branch is
# full length: 1-2 microseconds more per frame.
# --------------------------------------------------------------------------------------

#: Top of the telephone passband (ITU-T G.712: 300-3400 Hz).
TELEPHONE_BAND_TOP_HZ = 3400
#: 8000 - 3400: folds onto (down) or images from (up) the top of the band.
_STOPBAND_HZ = TWILIO_RATE - TELEPHONE_BAND_TOP_HZ
#: Rejection we design for (the tests hold the filters to 50 dB).
_DESIGN_REJECTION_DB = 58.0
#: The minimum-phase step takes the square root of the magnitude: halves the dB.
_PROTOTYPE_REJECTION_DB = 2 * _DESIGN_REJECTION_DB
#: FFT size of the cepstral step. The cepstrum's time aliasing moves the taps by < 1e-4
#: and the rejection by < 0.1 dB against 2^16, at a tenth of the import time (3 ms).
_CEPSTRUM_FFT = 1 << 14


def _kaiser_beta(rejection_db: float) -> float:
    """Kaiser's empirical window parameter for a given stopband rejection (dB)."""
    a = rejection_db
    if a > 50:
        return 0.1102 * (a - 8.7)
    if a >= 21:
        return 0.5842 * (a - 21) ** 0.4 + 0.07886 * (a - 21)
    return 0.0


def _design_lowpass(rate: int, factor: int, rejection_db: float) -> np.ndarray:
    """Linear-phase Kaiser-windowed sinc at `rate`, cut at 4 kHz (= rate / (2 * factor)).

    The half-length is rounded up to a multiple of `factor` and the rounding is spent
    on a stronger window; the taps at multiples of `factor` from the centre are
    exactly zero (an M-th band filter). Gain 1 at DC.
    """
    transition = 2 * np.pi * (_STOPBAND_HZ - TELEPHONE_BAND_TOP_HZ) / rate  # rad/sample
    min_order = (rejection_db - 7.95) / (2.285 * transition)
    half = factor * int(np.ceil(min_order / (2 * factor)))
    beta = _kaiser_beta(2.285 * transition * 2 * half + 7.95)
    offsets = np.arange(-half, half + 1)
    taps = np.sinc(offsets / factor) * np.kaiser(2 * half + 1, beta)
    taps[(offsets % factor == 0) & (offsets != 0)] = 0.0  # sinc's zeros, exactly
    return taps / taps.sum()


def _minimum_phase(prototype: np.ndarray) -> np.ndarray:
    """The minimum-phase filter whose magnitude is the square root of `prototype`'s.

    Homomorphic method: for a minimum-phase filter, log|H| and the phase are a
    Hilbert pair, so its complex cepstrum is causal. Take the real cepstrum of
    log(sqrt|H|), fold the negative quefrencies onto the positive ones (double them,
    zero the rest) and exponentiate back. The prototype's stopband zeros sit on the
    unit circle, where the log is -inf; a floor far below the stopband avoids that.
    Returns (len(prototype) + 1) // 2 taps, where the energy has died out.
    """
    n = _CEPSTRUM_FFT
    magnitude = np.abs(np.fft.fft(prototype, n))
    magnitude += 1e-7 * magnitude[magnitude > 0].min()
    cepstrum = np.fft.ifft(0.5 * np.log(magnitude)).real
    fold = np.zeros(n)
    fold[0] = fold[n // 2] = 1.0
    fold[1 : n // 2] = 2.0
    taps = np.fft.ifft(np.exp(np.fft.fft(cepstrum * fold))).real
    return taps[: (len(prototype) + 1) // 2]


#: The FIR taps are whole multiples of 2^-_TAP_BITS (see "How the FIRs stream cheaply" in `resample`).
_TAP_BITS = 30


def _dyadic(taps: np.ndarray) -> np.ndarray:
    """`taps` rounded to whole multiples of 2^-30, summing to exactly 1.

    The rounding moves each tap by at most 2^-31 (5e-10); what it leaves of the sum
    (a few 2^-30) goes onto the largest tap, where it matters least.
    """
    scale = float(1 << _TAP_BITS)
    q = np.round(taps * scale)
    q[np.argmax(np.abs(q))] += scale - q.sum()  # integers below 2^53: exact
    return q / scale


def upsampler_taps() -> np.ndarray:
    """52 minimum-phase taps at 16 kHz for 2x, each polyphase branch at unity DC gain.

    The filter runs over the zero-stuffed input, so its gain is 2, one per branch.
    Making each branch sum to exactly 1 (a change of ~1e-4) puts an exact zero at
    8 kHz, so a constant input comes out constant (mismatched branches would leave a
    faint 8 kHz ripple). `_dyadic` keeps each branch's sum exactly 1.
    """
    taps = _minimum_phase(_design_lowpass(LIVE_INPUT_RATE, 2, _PROTOTYPE_REJECTION_DB))
    taps = taps[: len(taps) // 2 * 2].copy()
    taps[0::2] = _dyadic(taps[0::2] / taps[0::2].sum())
    taps[1::2] = _dyadic(taps[1::2] / taps[1::2].sum())
    return taps


def decimator_taps() -> np.ndarray:
    """78 minimum-phase taps at 24 kHz for 3x (three branches of 26), gain 1 at DC."""
    taps = _minimum_phase(_design_lowpass(LIVE_OUTPUT_RATE, 3, _PROTOTYPE_REJECTION_DB))
    taps = taps[: len(taps) // 3 * 3]
    return _dyadic(taps / taps.sum())
