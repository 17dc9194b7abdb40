"""Prometheus metrics: what every call did, summed over the server's processes.

Why counters per event and not per frame: a phone line's health is in its
events (calls ending badly, sessions dropping, barge-ins, slow answers), and a
counter bumped 50 times a second per call would cost the audio path more than
it tells. Everything here is bumped at most once per turn, tool call or Live
event (`observe.py` decides when).

Several worker processes (`telephony serve --workers N`) each count their own
calls; prometheus-client's multiprocess mode keeps each process's values in
files under PROMETHEUS_MULTIPROC_DIR and sums them when `/metrics` is read, so
whichever worker answers the scrape reports the whole server. That mode is
chosen when the library is first imported, which is why `telephony serve` sets
the variable (creating a temporary folder when it is unset) before the workers
start. A worker that stops takes its active-calls gauge with it
(`process_stopped`).
"""

from __future__ import annotations

import os
import re

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess

__all__ = [
    "ACTIVE_CALLS", "CALLS", "LIVE_SESSIONS", "LIVE_REPLACED", "GOAWAYS", "BAD_FRAMES", "TOOL_CALLS", "TOOL_SECONDS",
    "BARGE_INS", "CLEAR_SECONDS", "RESPONSE_SECONDS", "call_outcome", "replacement_cause", "render", "CONTENT_TYPE",
    "multiprocess_dir", "process_stopped", "clean_multiprocess_dir",
]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST

#: Response latency buckets (seconds): a good voice agent answers in 0.5-1.5 s.
RESPONSE_BUCKETS = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0, 10.0)
#: Barge-in: the clear should leave within milliseconds of Live's `interrupted`.
CLEAR_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
TOOL_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

ACTIVE_CALLS = Gauge("phone_active_calls", "Calls in progress (media streams with a bridge).",
                     multiprocess_mode="livesum")
CALLS = Counter("phone_calls", "Calls ended, by outcome (the category of the end reason) and agent (agents.py).",
                ["outcome", "agent"])
LIVE_SESSIONS = Counter("phone_live_sessions", "Live sessions opened: kind=opened (a call's first) or resumed.",
                        ["kind"])
LIVE_REPLACED = Counter("phone_live_sessions_replaced", "Live sessions replaced mid-call, by cause.", ["cause"])
GOAWAYS = Counter("phone_live_goaways", "goAway messages received from Live.")
BAD_FRAMES = Counter("phone_twilio_bad_frames", "Twilio frames dropped as malformed, by kind.", ["kind"])
TOOL_CALLS = Counter("phone_tool_calls", "Tool calls finished, by tool and outcome (ok, error, cancelled).",
                     ["tool", "outcome"])
TOOL_SECONDS = Histogram("phone_tool_call_seconds", "Tool call latency.", ["tool"], buckets=TOOL_BUCKETS)
BARGE_INS = Counter("phone_barge_ins", "Caller interruptions of the agent (Live `interrupted`).")
CLEAR_SECONDS = Histogram("phone_clear_latency_seconds", "From Live's `interrupted` received to Twilio `clear` sent.",
                          buckets=CLEAR_BUCKETS)
TRANSFERS = Counter("phone_transfers", "Transfers to a person, by mode (cold, warm) and outcome (warm: accepted, "
                    "declined, no-answer, busy, failed, human hung up, caller hung up, could not call).",
                    ["mode", "outcome"])
ANSWERED_BY = Counter("phone_outbound_answered", "Outbound calls with answering-machine detection, by Twilio's "
                      "verdict (human, machine_end_beep, ..., fax, unknown, none: no verdict in time).", ["answered_by"])
RESPONSE_SECONDS = Histogram(
    "phone_response_latency_seconds",
    "Per agent turn: from the end of the caller's speech (measured on the relayed audio) to the first agent "
    "audio sent to Twilio.", buckets=RESPONSE_BUCKETS)

# End reasons are sentences (call.py); the outcome label is their category, so it stays a short, fixed list.
_OUTCOMES = (
    ("caller_hung_up", re.compile(r"^caller hung up")),
    ("agent_hung_up", re.compile(r"^agent ended the call")),
    ("transferred", re.compile(r"^transferred to")),
    ("warm_transfer", re.compile(r"^warm transfer to")),
    ("voicemail", re.compile(r"^voicemail message left|^answered by a (machine|fax)")),
    ("max_length", re.compile(r"^maximum call length")),
    ("twilio_disconnected", re.compile(r"^Twilio socket closed")),
    ("live_failed", re.compile(r"Live session|restore the Live")),
    ("server_shutdown", re.compile(r"^server shutting down|^could not move")),
    ("moved", re.compile(r"^moved to another instance")),  # the call goes on at another instance
    ("bad_stream", re.compile(r"bad frames|unsupported media format")),
    ("internal_error", re.compile(r"^internal error")),
    ("stream_ended", re.compile(r"^stream ended")),
)
OUTCOMES = tuple(name for name, _ in _OUTCOMES) + ("other",)


def call_outcome(reason: str | None) -> str:
    """The category of a call's end reason: one of OUTCOMES."""
    for name, pattern in _OUTCOMES:
        if reason and pattern.search(reason):
            return name
    return "other"


def replacement_cause(reason: str) -> str:
    """Why the core replaced a Live session (`ResumeLive.reason`), as a label."""
    if reason.startswith("goAway"):
        return "goaway"
    if reason.startswith("resuming failed"):
        return "resume_failed"
    if reason.startswith("Live session closed"):
        return "dropped"
    return "other"


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def render() -> tuple[bytes, str]:
    """The exposition text: this process's metrics, or every worker's when they share a folder."""
    if multiprocess_dir():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE
    return generate_latest(), CONTENT_TYPE


def process_stopped() -> None:
    """This worker is going away: its live gauges (active calls) must not be summed any longer."""
    if multiprocess_dir():
        multiprocess.mark_process_dead(os.getpid())


_METRIC_FILE = re.compile(r"^(counter|gauge_[a-z]+|histogram|summary)_\d+\.db$")


def clean_multiprocess_dir(path: str) -> None:
    """Remove the files a previous run left (prometheus-client asks for a clean folder at start);
    only its own files, in case the folder is shared with anything else."""
    for name in os.listdir(path):
        if _METRIC_FILE.match(name):
            try:
                os.remove(os.path.join(path, name))
            except OSError:
                pass
