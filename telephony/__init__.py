"""A phone agent for Gemini Live: Twilio Media Streams <-> Live API call bridge."""

__version__ = "0.1.0"
