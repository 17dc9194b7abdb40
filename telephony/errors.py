"""Every error the bridge raises, in one tree.

    TelephonyError
    ├── SettingsError            a bad environment variable (names it)
    ├── TwilioProtocolError      the Twilio side sent something we cannot use
    │   ├── MalformedMessage     not JSON, missing fields, bad base64, too big
    │   └── StreamMismatch       a streamSid that is not this call's
    ├── LiveError                the Gemini Live side failed
    │   ├── LiveSetupTimeout     no setupComplete in time
    │   ├── LiveRefused          the session could not be opened (close code, reason)
    │   └── LiveSendError        a send to an open session raised (close code if it closed)
    ├── Rejected                 a request or stream failed an admission check (security)
    ├── ToolError                a business tool could not answer
    │   ├── UnknownTool
    │   ├── InvalidArguments
    │   ├── ToolFailed
    │   └── ToolTimedOut
    └── InvalidCallState         our own misuse of the Call core (a bug)

Policy (what the adapters do with them):
- a malformed Twilio frame is logged once and dropped; the call continues;
- a tool error becomes an error response the model can speak about;
- a fatal Live error ends the call with a spoken apology.
"""

from __future__ import annotations


class TelephonyError(Exception):
    """Base of every error raised by this package."""


class SettingsError(TelephonyError):
    """A configuration value is missing or invalid; the message names the variable."""


class TwilioProtocolError(TelephonyError):
    """The Twilio peer sent a frame we cannot use."""


class MalformedMessage(TwilioProtocolError):
    pass


class StreamMismatch(TwilioProtocolError):
    pass


class LiveError(TelephonyError):
    pass


class LiveSetupTimeout(LiveError):
    pass


class LiveRefused(LiveError):
    """Opening a session failed: refused at setup (a close code), or never reached."""

    def __init__(self, code: int | None, reason: str = ""):
        super().__init__(f"Live session refused (code={code}, reason={reason!r})")
        self.code = code
        self.reason = reason


class Rejected(TelephonyError):
    """A request or stream failed a check. `reason` is its counter name; the
    message says why, for the log (never shown to the peer)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class LiveSendError(LiveError):
    """A send to an open Live session raised. `code` is the socket's close code when
    the send failed because the socket had closed, else None (anything else: a bug,
    or an SDK that changed)."""

    def __init__(self, code: int | None, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason


class ToolError(TelephonyError):
    pass


class UnknownTool(ToolError):
    pass


class InvalidArguments(ToolError):
    pass


class ToolFailed(ToolError):
    pass


class ToolTimedOut(ToolError):
    pass


class InvalidCallState(TelephonyError):
    """The Call core was driven in a way it does not allow (a bug in an adapter)."""
