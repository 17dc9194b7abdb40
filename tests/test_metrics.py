"""GET /metrics (telephony/metrics.py): what every call did, in Prometheus' text format.

The detector that dates the end of the caller's speech is tested on audio alone;
the rest plays recorded calls at real servers (one thread, then `telephony serve
--workers 2`) and reads /metrics the way Prometheus does.
"""

from __future__ import annotations

import os

import httpx
import numpy as np
import pytest

from telephony.metrics import OUTCOMES, call_outcome, replacement_cause
from telephony.speech_end import SpeechEndDetector
from telephony.testing.server import ServerProcess
from telephony.testing.order_story import order_script
from telephony.testing.waiting import wait_until
from telephony.testing.watched import (
    API_TOKEN,
    authorized,
    place_call,
    scrape,
    value,
    watched_server,
)

RATE = 16_000


def frames(seconds: float, loud: bool) -> list[bytes]:
    """20 ms frames of 16 kHz PCM: a 300 Hz tone at -12 dBFS, or line noise at -66 dBFS."""
    n = round(seconds * 50)
    t = np.arange(320) / RATE
    one = (np.sin(2 * np.pi * 300 * t) * (8000 if loud else 0)) + np.random.default_rng(1).normal(0, 15, 320)
    return [np.round(one).astype("<i2").tobytes()] * n


class TestTheEndOfTheCallersSpeech:
    def test_speech_then_silence_is_one_utterance_dated_at_its_last_loud_frame(self):
        detector = SpeechEndDetector()
        for frame in frames(0.2, False) + frames(0.6, True) + frames(0.5, False):
            detector.feed(frame)
        assert detector.ends == 1
        assert detector.last_start == pytest.approx(0.2)
        assert detector.last_end == pytest.approx(0.8)

    def test_a_click_is_not_speech_and_a_short_pause_does_not_end_it(self):
        detector = SpeechEndDetector()
        for frame in frames(0.02, True) + frames(0.5, False) + frames(0.4, True) + frames(0.2, False) + frames(0.4, True):
            detector.feed(frame)
        assert detector.ends == 0 and detector.speaking

    def test_a_stream_position_becomes_wall_time_from_the_newest_frame(self):
        detector = SpeechEndDetector()
        for frame in frames(1.0, True) + frames(0.4, False):
            detector.feed(frame)
        assert detector.wall_time(detector.last_end, now=100.0) == pytest.approx(99.6)


def test_end_reasons_fall_into_a_few_outcomes():
    assert call_outcome("caller hung up") == "caller_hung_up"
    assert call_outcome("agent ended the call: done") == "agent_hung_up"
    assert call_outcome("Live session could not be opened: timeout") == "live_failed"
    assert call_outcome("something new") == "other" and "other" in OUTCOMES
    assert replacement_cause("goAway: switching sessions now") == "goaway"
    assert replacement_cause("Live session closed (code=1006, no reason)") == "dropped"


@pytest.fixture(scope="module")
def server(emulator, tmp_path_factory):
    with watched_server(emulator, tmp_path_factory.mktemp("metrics")) as srv:
        yield srv


class TestMetricsAreProtectedLikeTheCallsApi:
    def test_without_the_token_metrics_are_refused(self, server):
        assert httpx.get(f"{server.http_url}/metrics").status_code == 401
        wrong = {"Authorization": "Bearer not-the-token-at-all"}
        assert httpx.get(f"{server.http_url}/metrics", headers=wrong).status_code == 401

    def test_with_no_calls_api_token_metrics_do_not_exist(self, emulator, tmp_path):
        with watched_server(emulator, tmp_path, CALLS_API_TOKEN="") as srv:
            assert httpx.get(f"{srv.http_url}/metrics", headers=authorized()).status_code == 404

    def test_metrics_open_serves_them_to_anyone(self, emulator, tmp_path):
        with watched_server(emulator, tmp_path, CALLS_API_TOKEN="", METRICS_OPEN="true") as srv:
            assert "phone_active_calls" in scrape(srv.http_url, headers={}).__repr__()


def test_an_order_call_is_counted_from_greeting_to_hang_up(server, emulator):
    emulator.script = order_script()
    before = scrape(server.http_url)
    sid, call = place_call(server.ws_url)
    server.finished_call(sid)  # the bridge's end runs just after the caller's socket closes
    after = scrape(server.http_url)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("phone_calls_total", outcome="caller_hung_up") == 1
    assert value(after, "phone_active_calls") == 0
    assert grew("phone_live_sessions_total", kind="opened") == 1
    assert grew("phone_tool_calls_total", tool="lookup_order", outcome="ok") == 1
    assert grew("phone_tool_call_seconds_count", tool="lookup_order") == 1
    assert grew("phone_barge_ins_total") == len(call.clears) >= 1
    assert grew("phone_clear_latency_seconds_count") == len(call.clears)
    # The caller asked, then barged in and said goodbye: two answers followed the end of their speech.
    answered = grew("phone_response_latency_seconds_count")
    assert answered >= 2
    mean = grew("phone_response_latency_seconds_sum") / answered
    assert 0 < mean < 3.0


def test_with_two_workers_every_scrape_counts_the_calls_of_both(emulator, redis, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in (
        "PUBLIC_URL", "TWILIO_AUTH_TOKEN", "TWILIO_ACCOUNT_SID", "REQUIRE_TWILIO_SIGNATURE", "PROMETHEUS_MULTIPROC_DIR")}
    env.update(emulator.env())
    env.update({"GEMINI_API_KEY": "test-api-key-123", "REDIS_URL": redis.url, "CALLS_API_TOKEN": API_TOKEN,
                "ORDERS_DB_PATH": str(tmp_path / "orders.db"), "CALLS_DB_PATH": str(tmp_path / "calls.db"),
                "TMPDIR": str(tmp_path)})
    server = ServerProcess(env, str(tmp_path / "serve.log"), workers=2).wait_healthy()
    try:
        for _ in range(4):
            place_call(server.ws_url, "greeting_only.jsonl", speed=4)

        def all_counted() -> bool:
            samples = scrape(server.http_url)
            ended = sum(v for (name, _), v in samples.items() if name == "phone_calls_total")
            return ended == 4 and value(samples, "phone_active_calls") == 0

        wait_until(all_counted, what="both workers to count the four calls")
        for _ in range(8):  # each scrape is answered by either worker
            samples = scrape(server.http_url)
            assert sum(v for (name, _), v in samples.items() if name == "phone_calls_total") == 4
            assert value(samples, "phone_active_calls") == 0
        folders = [p for p in tmp_path.iterdir() if p.name.startswith("telephony-metrics-")]
        assert len(folders) == 1  # the folder made for the workers...
    finally:
        server.stop()
    assert not any(p.name.startswith("telephony-metrics-") for p in tmp_path.iterdir())  # ...is gone with them


def test_the_grafana_dashboard_only_queries_metrics_the_server_exports():
    import json
    import re
    from pathlib import Path

    from telephony import metrics

    board = json.loads((Path(__file__).parent.parent / "deploy" / "grafana-dashboard.json").read_text())
    exported = {family.name for name in metrics.__all__ if hasattr(getattr(metrics, name), "describe")
                for family in getattr(metrics, name).describe()}
    used = {re.sub(r"_(total|bucket|count|sum)$", "", name) for p in board["panels"] for t in p["targets"]
            for name in re.findall(r"\bphone_[a-z_]+", t["expr"])}
    assert used and used <= exported
