"""TwiML documents, built with twilio's own builders."""

from __future__ import annotations

from twilio.twiml.voice_response import Connect, VoiceResponse

APOLOGY = "Sorry, our phone assistant is not available right now. Please call again later. Goodbye."
OVER_LIMIT = "Sorry, we are receiving too many calls from your number right now. Please try again later. Goodbye."


def connect_stream_twiml(stream_url: str, parameters: dict[str, str]) -> str:
    """Connect the call to our media stream.

    The stream URL carries no query string (Twilio refuses it, error 31920):
    per-call data travels in <Parameter>s. What follows <Connect> runs only
    when our server closes the stream without ending the call, i.e. when we
    failed: the caller then hears an apology instead of dead air.
    """
    response = VoiceResponse()
    connect = Connect()
    stream = connect.stream(url=stream_url, name="agent")
    for name, value in parameters.items():
        if value:
            stream.parameter(name=name, value=value[:400])
    response.append(connect)
    response.say(APOLOGY)
    response.hangup()
    return str(response)


def apology_twiml() -> str:
    response = VoiceResponse()
    response.say(APOLOGY)
    response.hangup()
    return str(response)


def over_limit_twiml() -> str:
    """For a caller over their call limits: a short reason, then hang up (no stream, no Live minutes)."""
    response = VoiceResponse()
    response.say(OVER_LIMIT)
    response.hangup()
    return str(response)
