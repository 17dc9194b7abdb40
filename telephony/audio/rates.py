"""The three sample rates every audio path is built around.

Twilio Media Streams carry 8 kHz G.711 mu-law; Gemini Live takes 16 kHz and
returns 24 kHz signed 16-bit little-endian PCM. The filters are designed for
these rates, so they live apart from both the codec and the filters.
"""

TWILIO_RATE = 8_000
LIVE_INPUT_RATE = 16_000
LIVE_OUTPUT_RATE = 24_000
