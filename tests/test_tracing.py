"""Traces (telephony/tracing.py): a span per call, per agent turn and per tool call.

The SDK's in-memory exporter stands in for an OTLP collector: an order call is
played at a server tracing into it, and the spans it finished are read back.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from telephony.settings import Settings
from telephony.tracing import CALL_SID, CallTracing, from_settings
from telephony.testing.watched import place_call, watched_server
from telephony.testing.order_story import order_script


@pytest.fixture(scope="module")
def spans(emulator, tmp_path_factory):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    emulator.script = order_script()
    with watched_server(emulator, tmp_path_factory.mktemp("tracing"), tracing=CallTracing(provider), virtual=True) as server:
        sid, call = place_call(server.ws_url, loop=server.loop)
        server.finished_call(sid)  # the call's span ends just before its summary
    return sid, call, exporter.get_finished_spans()


class TestACallIsTraced:
    def test_one_call_span_carries_the_call_sid_and_its_outcome(self, spans):
        sid, _, finished = spans
        calls = [s for s in finished if s.name == "call"]
        assert len(calls) == 1
        assert calls[0].attributes[CALL_SID] == sid
        assert calls[0].attributes["telephony.outcome"] == "caller_hung_up"
        assert calls[0].attributes["telephony.agent"] == "default"  # the one agent made from the environment
        assert calls[0].parent is None

    def test_every_agent_turn_is_a_child_span_with_its_latency_and_interruption(self, spans):
        sid, call, finished = spans
        root = next(s for s in finished if s.name == "call")
        turns = [s for s in finished if s.name == "agent turn"]
        assert len(turns) == root.attributes["telephony.agent_turns"] >= 3
        assert all(t.parent.span_id == root.context.span_id and t.context.trace_id == root.context.trace_id
                   for t in turns)
        assert all(t.attributes[CALL_SID] == sid for t in turns)
        assert sum(bool(t.attributes["telephony.interrupted"]) for t in turns) == len(call.clears)
        answered = [t for t in turns if "telephony.response_latency_ms" in t.attributes]
        assert len(answered) >= 2
        assert all(root.start_time <= t.start_time <= t.end_time <= root.end_time for t in turns)

    def test_the_tool_call_is_a_child_span_named_after_the_tool(self, spans):
        sid, _, finished = spans
        root = next(s for s in finished if s.name == "call")
        (tool,) = [s for s in finished if s.name.startswith("tool ")]
        assert tool.name == "tool lookup_order" and tool.parent.span_id == root.context.span_id
        assert tool.attributes == {CALL_SID: sid, "telephony.tool": "lookup_order", "telephony.tool_outcome": "ok"}


def test_without_an_otlp_endpoint_nothing_is_traced_and_the_sdk_is_not_imported():
    assert from_settings(Settings.from_env({"GEMINI_API_KEY": "test-api-key-123"})) is None
    # (opentelemetry's API alone may come with google-genai; the SDK and the exporter are ours to load)
    code = ("import sys, telephony.app, telephony.bridge, telephony.tracing;"
            "sys.exit(any(m.startswith(('opentelemetry.sdk', 'opentelemetry.exporter')) for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_with_an_otlp_endpoint_spans_go_to_the_otlp_exporter():
    tracing = from_settings(Settings.from_env({"GEMINI_API_KEY": "test-api-key-123",
                                               "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}))
    try:
        assert tracing is not None
        assert tracing.provider.resource.attributes["service.name"] == "gemini-phone-agent"
    finally:
        tracing.provider.shutdown()
