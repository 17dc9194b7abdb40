"""Audio between Twilio and Gemini Live: G.711 mu-law, resampling, 20 ms framing.

Twilio Media Streams carry 8 kHz G.711 mu-law, base64-encoded, in 160-byte (20 ms)
payloads. Gemini Live takes 16 kHz and returns 24 kHz signed 16-bit little-endian PCM.
So every call needs two paths, each run once per 20 ms frame (`paths`), built from
the codec (`mulaw`), the resamplers (`resample`, with taps from `filter_design`)
and the framer (`framing`).

This is the hot path of the bridge, so there are no per-sample Python loops and no
I/O, asyncio or logging: the adapters decide what to do with a ``MalformedMessage``.
The package's public names are re-exported here, so callers import from
``telephony.audio`` and need not know which module holds what.
"""

from .framing import Framer
from .mulaw import ULAW_SILENCE, ulaw_decode, ulaw_encode
from .paths import InboundAudio, OutboundAudio
from .rates import LIVE_INPUT_RATE, LIVE_OUTPUT_RATE, TWILIO_RATE
from .resample import (
    RESAMPLERS,
    FirDecimator3x,
    FirUpsampler2x,
    Resampler,
    SoxrResampler,
    inbound_resampler,
    outbound_resampler,
)

__all__ = [
    "ulaw_decode",
    "ulaw_encode",
    "ULAW_SILENCE",
    "Resampler",
    "FirUpsampler2x",
    "FirDecimator3x",
    "SoxrResampler",
    "RESAMPLERS",
    "inbound_resampler",
    "outbound_resampler",
    "Framer",
    "InboundAudio",
    "OutboundAudio",
    "TWILIO_RATE",
    "LIVE_INPUT_RATE",
    "LIVE_OUTPUT_RATE",
]
