"""Parsing Twilio frames and building ours (docs/twilio-media-streams.md §2-§3)."""

from __future__ import annotations

import json

import pytest

from telephony import twilio_protocol as tw
from telephony.errors import MalformedMessage

SID = "MZ" + "0" * 32


def frame(**msg) -> str:
    return json.dumps(msg)


class TestParsingWhatTwilioSends:
    def test_connected(self):
        assert tw.parse(frame(event="connected", protocol="Call", version="1.0.0")) == tw.Connected("Call", "1.0.0")

    def test_start_with_string_sequence_numbers_and_numeric_format(self):
        event = tw.parse(frame(
            event="start", sequenceNumber="1", streamSid=SID,
            start={"accountSid": "AC" + "1" * 32, "streamSid": SID, "callSid": "CA" + "2" * 32, "tracks": ["inbound"],
                   "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                   "customParameters": {"From": "+15551230101"}},
        ))
        assert event == tw.StreamStarted(SID, "CA" + "2" * 32, "AC" + "1" * 32, {"From": "+15551230101"})

    def test_media_keeps_the_payload_and_reads_the_string_timestamp(self):
        event = tw.parse(frame(event="media", sequenceNumber="4", streamSid=SID,
                               media={"track": "inbound", "chunk": "2", "timestamp": "28", "payload": "//8="}))
        assert event == tw.CallerAudio(SID, "//8=", 28)

    @pytest.mark.parametrize("text", [
        # as Twilio writes it: the regular-expression path
        '{"event":"media","sequenceNumber":"4","media":{"track":"inbound","chunk":"2","timestamp":"28",'
        '"payload":"//8="},"streamSid":"MZ00000000000000000000000000000000"}',
        '{"event":"media","sequenceNumber":"4","media":{"track":"inbound_track","chunk":"2","timestamp":"28",'
        '"payload":"//8="},"streamSid":"6f1a1c6e-0000-4000-8000-000000000000"}',
        # anything else: the JSON path
        '{"event": "media", "streamSid": "MZ00000000000000000000000000000000", "media": {"payload": "//8=", "timestamp": 28}}',
        '{"event":"media","sequenceNumber":"4","media":{"track":"inbound","chunk":"2","timestamp":"28",'
        '"payload":"\\/\\/8="},"streamSid":"MZ00000000000000000000000000000000"}',
        '{"event":"media","sequenceNumber":"4","media":{"track":"inbound","chunk":"2","timestamp":"x",'
        '"payload":"//8="},"streamSid":"MZ00000000000000000000000000000000"}',
    ])
    def test_media_reads_the_same_whichever_way_it_is_written(self, text):
        msg = json.loads(text)
        expected = tw.CallerAudio(msg["streamSid"], "//8=", tw._int_or_none(msg["media"]["timestamp"]))
        assert tw.parse(text) == expected

    def test_a_media_frame_on_another_track_is_refused_either_way(self):
        text = ('{"event":"media","sequenceNumber":"4","media":{"track":"outbound","chunk":"2","timestamp":"28",'
                '"payload":"//8="},"streamSid":"MZ00000000000000000000000000000000"}')
        with pytest.raises(MalformedMessage, match="track"):
            tw.parse(text)

    def test_mark_dtmf_and_stop(self):
        assert tw.parse(frame(event="mark", streamSid=SID, mark={"name": "t1-1"})) == tw.MarkEchoed(SID, "t1-1")
        assert tw.parse(frame(event="dtmf", streamSid=SID, dtmf={"track": "inbound_track", "digit": "#"})) == tw.DtmfPressed(SID, "#")
        assert tw.parse(frame(event="stop", streamSid=SID, stop={})) == tw.StreamStopped(SID)

    def test_unknown_event_is_reported_not_rejected(self):
        assert tw.parse(frame(event="sparkles", streamSid=SID)) == tw.UnknownEvent("sparkles")

    def test_legacy_uuid_stream_sids_are_recognised_as_unusual(self):
        assert tw.looks_like_stream_sid(SID)
        assert not tw.looks_like_stream_sid("6f1a1c6e-0000-4000-8000-000000000000")


class TestRejectingBadFrames:
    @pytest.mark.parametrize(
        "bad, why",
        [
            ("not json", "not JSON"),
            ("[1,2]", "not a JSON object"),
            ('{"no": "event"}', "no 'event'"),
            ('{"event": "media", "streamSid": "MZ1"}', "without a 'media' object"),
            ('{"event": "media", "media": {"payload": ""}}', "without a payload"),
            ('{"event": "media", "media": {"payload": "AA==", "track": "outbound"}}', "unexpected track"),
            ('{"event": "mark", "mark": {}}', "mark without a name"),
            ('{"event": "dtmf", "dtmf": {"digit": "12"}}', "invalid digit"),
            ('{"event": "start", "start": {"streamSid": "MZ1"}}', "without a callSid"),
            ('{"event": "media", "streamSid": 5, "media": {"payload": "AA=="}}', "not a string"),
        ],
    )
    def test_each_bad_frame_names_its_problem(self, bad, why):
        with pytest.raises(MalformedMessage, match=why):
            tw.parse(bad)

    def test_binary_frames_are_rejected(self):
        with pytest.raises(MalformedMessage, match="binary"):
            tw.parse(b"\x00\x01")

    def test_oversized_frames_are_rejected_before_parsing(self):
        with pytest.raises(MalformedMessage, match="exceeds"):
            tw.parse('{"event":"media","media":{"payload":"' + "A" * tw.MAX_MESSAGE_BYTES + '"}}')


class TestWhatWeSend:
    def test_media_mark_and_clear_are_exactly_twilios_shapes(self):
        out = tw.Outbound(SID)
        assert json.loads(out.media("//8=")) == {"event": "media", "streamSid": SID, "media": {"payload": "//8="}}
        assert json.loads(out.mark('t1-"1"')) == {"event": "mark", "streamSid": SID, "mark": {"name": 't1-"1"'}}
        assert json.loads(out.clear()) == {"event": "clear", "streamSid": SID}
