"""OpenTelemetry traces of calls: one span per call, per agent turn and per tool call.

Why spans are made after the fact: a turn is only known to be one when it
ends (its first audio, its interruption, its completion arrive from different
places), and the audio path must not carry a span context around. So
`observe.py` keeps plain timestamps and hands finished intervals here, and
each span is started and ended with explicit times; all of a call's spans hang
under its call span and carry its CallSid (`telephony.call_sid`).

Nothing is imported or exported unless OTEL_EXPORTER_OTLP_ENDPOINT is set
(`from_settings`): opentelemetry is the optional `otel` extra, and a server
without it pays nothing. The exporter itself reads the standard OTEL_*
variables (endpoint, headers, OTEL_SERVICE_NAME); spans leave in batches from
the SDK's own thread. Tests pass their own provider (`CallTracing(provider)`),
such as one with the SDK's in-memory exporter.
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["CallTracing", "from_settings", "CALL_SID"]

log = logging.getLogger(__name__)

#: The attribute every span of a call carries.
CALL_SID = "telephony.call_sid"
SERVICE_NAME = "gemini-phone-agent"


def _ns(at: float) -> int:
    return int(at * 1e9)


class CallTracing:
    """Makes a call's spans with a tracer provider (the SDK's, or any with the same API)."""

    def __init__(self, provider: Any):
        from opentelemetry import trace

        self._trace = trace
        self.provider = provider
        self.tracer = provider.get_tracer("telephony")

    def call_span(self, started_at: float) -> Any:
        """The span of one call; its children are made with `child`, it ends with `end_call`."""
        return self.tracer.start_span("call", start_time=_ns(started_at), kind=self._trace.SpanKind.SERVER)

    def child(self, parent: Any, name: str, started_at: float, ended_at: float, attributes: dict[str, Any]) -> None:
        context = self._trace.set_span_in_context(parent)
        failed = attributes.pop("error", False)
        span = self.tracer.start_span(name, context=context, start_time=_ns(started_at),
                                      attributes={k: v for k, v in attributes.items() if v is not None})
        if failed:
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR))
        span.end(end_time=_ns(max(ended_at, started_at)))

    def end_call(self, span: Any, ended_at: float, attributes: dict[str, Any]) -> None:
        span.set_attributes({k: v for k, v in attributes.items() if v is not None})
        span.end(end_time=_ns(ended_at))

    def shutdown(self) -> None:
        """Export what is still queued (at server shutdown)."""
        shutdown = getattr(self.provider, "shutdown", None)
        if shutdown is not None:
            shutdown()


def from_settings(settings: Any) -> CallTracing | None:
    """Tracing with the OTLP/HTTP exporter when OTEL_EXPORTER_OTLP_ENDPOINT is set, else None."""
    if not getattr(settings, "otel_endpoint", None):
        return None
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import SERVICE_NAME as SERVICE_NAME_KEY, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        from .errors import SettingsError

        raise SettingsError(
            "OTEL_EXPORTER_OTLP_ENDPOINT is set but OpenTelemetry is not installed: "
            f"pip install 'gemini-phone-agent[otel]' ({exc.name} is missing)"
        ) from None
    # Resource.create also reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES, which win over our default.
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME_KEY: SERVICE_NAME}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    log.info("traces are exported over OTLP/HTTP to %s", settings.otel_endpoint)
    return CallTracing(provider)
