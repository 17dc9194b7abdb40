"""The media-stream WebSocket protocol (telephony/ws_protocol.py), on the wire.

Twilio's frames take its short path; anything else must be read exactly as uvicorn and
websockets read it. These tests talk raw RFC 6455 to the real server, so they control
how frames are cut into TCP writes.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time

from telephony.testing.emulator import Say, Script
from telephony.ws_protocol import MediaStreamProtocol, uvicorn_ws

from test_server import SID, media_msg, start_msg

CONNECTED = json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})


def client_frame(payload: bytes, opcode: int = 0x1, fin: bool = True, mask: bytes | None = None) -> bytes:
    """A masked client frame (RFC 6455 §5.2)."""
    mask = mask or os.urandom(4)
    n = len(payload)
    head = bytes((0x80 * fin | opcode,))
    head += bytes((0x80 | n,)) if n < 126 else bytes((0x80 | 126,)) + n.to_bytes(2, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class RawStream:
    """Twilio's end of a media stream, one TCP write per `write()`; frames read back as sent."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self.reads: list[bytes] = []  # each chunk as one read() returned it

    @classmethod
    async def open(cls, server) -> "RawStream":
        reader, writer = await asyncio.open_connection(server.host, server.port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write((f"GET /media-stream HTTP/1.1\r\nHost: {server.host}:{server.port}\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()
        await asyncio.sleep(0.01)  # a separate TCP segment for the next write

    async def frames(self, until, timeout: float = 10) -> list[tuple[int, bytes, int]]:
        """(opcode, payload, index of the read it arrived in) until `until(frames)` holds."""
        out: list[tuple[int, bytes, int]] = []
        buf = b""
        async with asyncio.timeout(timeout):
            while not until(out):
                chunk = await self.reader.read(65536)
                if not chunk:
                    break
                self.reads.append(chunk)
                buf += chunk
                while len(buf) >= 2:
                    n, at = buf[1] & 0x7F, 2
                    if n == 126:
                        n, at = int.from_bytes(buf[2:4], "big"), 4
                    if len(buf) < at + n:
                        break
                    out.append((buf[0] & 0x0F, buf[at : at + n], len(self.reads) - 1))
                    buf = buf[at + n :]
        return out

    def close(self) -> None:
        self.writer.close()


def test_telephony_serve_runs_the_tuned_protocol():
    assert uvicorn_ws() is MediaStreamProtocol


def test_frames_cut_every_way_still_make_the_call(server, emulator):
    """Split across writes, fragmented, several in one write, a ping: the call starts,
    the ping is answered, and the greeting plays."""
    emulator.script = Script(greeting=[Say(seconds=0.3, freq=440.0)], replies=[])

    async def scenario() -> list[tuple[int, bytes, int]]:
        stream = await RawStream.open(server)
        connected = client_frame(CONNECTED.encode())
        await stream.write(connected[:3])                      # a frame split across writes
        await stream.write(connected[3:])
        start = start_msg().encode()
        await stream.write(client_frame(start[:40], fin=False))  # a fragmented message
        await stream.write(client_frame(start[40:], opcode=0x0))
        await stream.write(client_frame(b"are you there", opcode=0x9))  # ping
        for i in range(0, 20, 4):                              # several frames per write
            await stream.write(b"".join(client_frame(media_msg(ts=20 * (k + 1)).encode()) for k in range(i, i + 4)))
        frames = await stream.frames(lambda f: any(op == 0x1 and b'"media"' in p for op, p, _ in f))
        await stream.write(client_frame(json.dumps({"event": "stop", "streamSid": SID, "stop": {}}).encode()))
        stream.close()
        return frames

    frames = asyncio.run(scenario())
    assert (0xA, b"are you there") in [(op, p) for op, p, _ in frames]  # the pong
    assert any(op == 0x1 and json.loads(p)["event"] == "media" for op, p, _ in frames)


def test_a_frame_cut_right_after_its_header_is_not_mistaken_for_a_new_one(server, emulator):
    """Cut after the header, a frame's remaining bytes reach the server on their own while
    websockets' buffer is empty. This mask makes them look like a whole frame ("e");
    they must still be read as the rest of `start`: the call starts, no bad frame."""
    emulator.script = Script(greeting=[Say(seconds=0.3, freq=440.0)], replies=[])
    start = client_frame(start_msg().encode(), mask=b"\x81\x81\x00\x00")
    assert start[1] == 0x80 | 126  # a 2-byte length: the header is 4 bytes

    async def scenario() -> tuple[list[tuple[int, bytes, int]], int]:
        stream = await RawStream.open(server)
        await stream.write(client_frame(CONNECTED.encode()))
        await stream.write(start[:4])
        await stream.write(start[4:])
        frames = await stream.frames(lambda f: any(b'"media"' in p for _, p, _ in f) or any(op == 0x8 for op, _, _ in f))
        for cut in range(1, 10):  # every cut inside a media frame's 8-byte header, and one past it
            media = client_frame(media_msg(ts=20 * cut).encode(), mask=b"\x81\x81\x00\x00")
            await stream.write(media[:cut])
            await stream.write(media[cut:])
        await asyncio.sleep(0.1)
        bad = max(b.call.bad_frames for b in list(server.app.state.active_calls))
        stream.close()
        return frames, bad

    frames, bad = asyncio.run(scenario())
    assert any(op == 0x1 and json.loads(p)["event"] == "media" for op, p, _ in frames)
    assert bad == 0


def test_each_chunk_of_agent_audio_leaves_in_one_write(server, emulator):
    """Two 20 ms media frames and their mark: one write, so they arrive together."""
    emulator.script = Script(greeting=[Say(seconds=0.6, freq=440.0)], replies=[])

    async def scenario() -> list[tuple[int, bytes, int]]:
        stream = await RawStream.open(server)
        await stream.write(client_frame(CONNECTED.encode()) + client_frame(start_msg().encode()))
        marks = lambda f: sum(b'"mark"' in p for _, p, _ in f) >= 5  # noqa: E731
        frames = await stream.frames(marks)
        stream.close()
        return frames

    frames = asyncio.run(scenario())
    texts = [(json.loads(p), read) for op, p, read in frames if op == 0x1]
    checked = 0
    for i, (msg, read) in enumerate(texts):
        if msg["event"] == "mark" and i >= 2 and all(m["event"] == "media" for m, _ in texts[i - 2 : i]):
            assert texts[i - 2][1] == texts[i - 1][1] == read, "a chunk's frames came in separate writes"
            checked += 1
    assert checked >= 3


def test_text_that_is_not_utf8_closes_the_stream_with_1007(server, emulator):
    """As websockets and uvicorn decide it: invalid frame payload data."""
    emulator.script = Script(greeting=[], replies=[])

    async def scenario() -> list[tuple[int, bytes, int]]:
        stream = await RawStream.open(server)
        await stream.write(client_frame(CONNECTED.encode()) + client_frame(b'{"event": "\xff\xfe"}'))
        frames = await stream.frames(lambda f: any(op == 0x8 for op, _, _ in f))
        stream.close()
        return frames

    close = [p for op, p, _ in asyncio.run(scenario()) if op == 0x8]
    assert close and int.from_bytes(close[0][:2], "big") == 1007


# ------------------------------------------------------------ the direct path


def _direct_app():
    """A bare ASGI app that takes frames on the direct path as each frame tells it to:
    "take" (True, and says so with `send_now`), "decline" (False), "replace" (an ASGI
    message to queue instead), "raise"; every message `receive()` gives it is echoed."""
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute

    from telephony.ws_protocol import DIRECT

    async def endpoint(websocket):
        await websocket.accept()
        direct = websocket.scope["extensions"].get(DIRECT)
        await websocket.send_text(json.dumps({"direct": direct is not None}))
        if direct is None:
            return await websocket.close()

        def receiver(text: str):
            msg = json.loads(text)
            if msg["do"] == "take":
                assert direct["send_now"]([json.dumps({"took": msg["n"]})])
                return True
            if msg["do"] == "replace":
                return {"type": "websocket.receive", "text": json.dumps({"do": "replaced", "n": msg["n"]})}
            if msg["do"] == "raise":
                raise RuntimeError("a bug in the receiver")
            return False

        direct["receive_with"](receiver)
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            msg = json.loads(message["text"])
            if msg["do"] == "stop-direct":
                direct["receive_with"](None)
            await websocket.send_text(json.dumps({"got": msg["n"], "as": msg["do"]}))

    return Starlette(routes=[WebSocketRoute("/media-stream", endpoint)])


def _run_direct(server, writes: list[list[dict]], until) -> list[dict]:
    async def scenario() -> list[dict]:
        stream = await RawStream.open(server)
        for batch in writes:  # each batch in one TCP write: later frames find earlier ones queued
            await stream.write(b"".join(client_frame(json.dumps(m).encode()) for m in batch))
        frames = await stream.frames(lambda f: until([json.loads(p) for op, p, _ in f if op == 0x1]))
        stream.close()
        return [json.loads(p) for op, p, _ in frames if op == 0x1]

    return asyncio.run(scenario())


def test_the_direct_path_takes_frames_in_order_and_hands_back_the_rest():
    from telephony.testing.server import ServerThread

    with ServerThread(_direct_app()) as srv:
        got = _run_direct(srv, [
            [{"do": "take", "n": 1}, {"do": "take", "n": 2}, {"do": "decline", "n": 3}, {"do": "take", "n": 4}],
            [{"do": "take", "n": 5}],
            [{"do": "replace", "n": 6}],
            [{"do": "stop-direct", "n": 7}],
            [{"do": "take", "n": 8}],
        ], until=lambda msgs: any(m.get("got") == 8 for m in msgs))
    assert got == [
        {"direct": True},
        {"took": 1}, {"took": 2},                      # taken as read
        {"got": 3, "as": "decline"},                   # declined: queued for receive()
        {"got": 4, "as": "take"},                      # 3 was waiting, so 4 was not offered
        {"took": 5},                                   # the queue empty again: offered
        {"got": 6, "as": "replaced"},                  # the receiver's own message instead
        {"got": 7, "as": "stop-direct"},
        {"got": 8, "as": "take"},                      # receive_with(None): no longer offered
    ]


def test_a_failing_direct_receiver_is_dropped_and_its_frames_still_arrive(caplog):
    from telephony.testing.server import ServerThread

    with ServerThread(_direct_app()) as srv:
        got = _run_direct(srv, [[{"do": "raise", "n": 1}], [{"do": "take", "n": 2}]],
                          until=lambda msgs: any(m.get("got") == 2 for m in msgs))
    assert got == [{"direct": True}, {"got": 1, "as": "raise"}, {"got": 2, "as": "take"}]
    assert any("direct receiver failed" in r.getMessage() for r in caplog.records)


def test_plain_uvicorn_offers_no_direct_path():
    from telephony.testing.server import ServerThread

    with ServerThread(_direct_app(), ws="auto") as srv:
        got = _run_direct(srv, [], until=lambda msgs: bool(msgs))
    assert got == [{"direct": False}]


def test_caller_audio_goes_from_the_read_callback_to_live(server, emulator):
    """The bridge handles Twilio's frames on the direct path, and the agent's audio on
    Live's (`deliver_audio_with`); every caller frame reaches Live."""
    emulator.script = Script(greeting=[Say(seconds=0.2, freq=440.0)], replies=[])
    bridges = server.app.state.active_calls
    before = len(emulator.sessions)

    async def scenario() -> tuple[int, int]:
        stream = await RawStream.open(server)
        await stream.write(client_frame(CONNECTED.encode()) + client_frame(start_msg().encode()))
        await stream.frames(lambda f: any(b'"media"' in p for _, p, _ in f))  # Live is ready: the greeting plays
        for k in range(50):
            await stream.write(client_frame(media_msg(payload=base64.b64encode(bytes([k]) * 160).decode(), ts=20 * (k + 1)).encode()))
        taken = max(b.frames_direct for b in list(bridges))
        agent = max(b.live_direct for b in list(bridges))
        await stream.write(client_frame(json.dumps({"event": "stop", "streamSid": SID, "stop": {}}).encode()))
        await stream.frames(lambda f: any(op == 0x8 for op, _, _ in f))
        stream.close()
        return taken, agent

    taken, agent = asyncio.run(scenario())
    assert taken >= 45, f"only {taken} of 50 frames took the direct path"
    assert agent >= 1, "no agent audio took Live's direct path"
    session = emulator.sessions[before]
    held = 64  # the most the inbound resampler may still hold, in bytes at 16 kHz
    for _ in range(100):
        if len(session.audio_in) >= 50 * 640 - held:
            break
        time.sleep(0.02)
    assert 50 * 640 - held <= len(session.audio_in) <= 50 * 640


def test_agent_audio_the_direct_path_could_not_send_leaves_through_the_live_reader_in_order():
    """Twilio's side cannot take a write at once (flow control): the agent's audio taken in
    Live's read callback hands its send to the Live reader (`Leftover`), and the audio
    read after it queues behind it, so the caller hears both chunks in order."""
    from telephony import events as ev
    from telephony import twilio_protocol as tw
    from telephony.bridge import CallBridge
    from telephony.live import Leftover
    from telephony.settings import Settings
    from telephony.testing.emulator import tone_pcm
    from telephony.tools import ToolRegistry
    from telephony.ws_protocol import DIRECT

    class TwilioSocket:  # the app's WebSocket as the bridge sees it, offering the direct path
        def __init__(self):
            self.writable, self.sent = False, []
            self.scope = {"extensions": {DIRECT: {"receive_with": lambda fn: None, "send_now": self.send_now}}}

        def send_now(self, texts):
            if self.writable:
                self.sent.extend(texts)
            return self.writable

        async def send_text(self, text):  # waits for flow control, then sends
            self.sent.append(text)

    class LiveReader:  # what LiveSession.events() yields
        def __init__(self, items):
            self.items = items

        async def events(self):
            for item in self.items:
                yield item

    async def scenario() -> tuple[list[dict], list[dict]]:
        twilio = TwilioSocket()
        bridge = CallBridge(twilio, settings=Settings.from_env({"GEMINI_API_KEY": "k"}), client=None,
                            registry=ToolRegistry())
        bridge.call.handle(tw.parse(start_msg()))
        bridge.call.handle(ev.LiveReady())
        first, second = tone_pcm(440.0, 0.04), tone_pcm(660.0, 0.04)
        left = bridge._live_now([ev.ModelAudio(first)])
        assert left is not None and not twilio.sent  # nothing could go out at once
        await bridge._pump_live(LiveReader([Leftover(left), ev.ModelAudio(second)]))
        sent = [json.loads(t) for t in twilio.sent]
        with_error = []
        try:
            await bridge._pump_live(LiveReader([Leftover(RuntimeError("a bug in the handler"))]))
        except RuntimeError as exc:
            with_error.append(str(exc))
        return sent, with_error

    sent, with_error = asyncio.run(scenario())
    assert [m["event"] for m in sent] == ["media", "media", "mark", "media", "media", "mark"]
    assert sent[2]["mark"]["name"] < sent[5]["mark"]["name"]
    assert with_error == ["a bug in the handler"]  # raised in the reader: the call ends as on any bug
