"""The media stream on the wire: raw RFC 6455 at the real server.

However Twilio's frames are cut into TCP writes (split, fragmented, several per
write, a ping between them), the stock uvicorn WebSocket stack must read them
as Twilio meant them. These tests write the bytes themselves, so they choose the cuts.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os

from telephony.testing.emulator import Say, Script
from telephony.testing.twilio_signing import media_message, start_message

SID = "MZ" + "5" * 32
START = start_message(SID, "CA" + "5" * 32, "AC" + "5" * 32)
SILENCE = base64.b64encode(b"\xff" * 160).decode()


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
        """One send() each (asyncio sets TCP_NODELAY): the pieces leave as cut, whether
        or not the server's kernel hands them to it together, and either must work."""
        self.writer.write(data)
        await self.writer.drain()

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


def test_frames_cut_every_way_still_make_the_call(server, emulator):
    """Split across writes, fragmented, several in one write, a ping: the call starts,
    the ping is answered, and the greeting plays."""
    emulator.script = Script(greeting=[Say(seconds=0.3, freq=440.0)], replies=[])

    async def scenario() -> list[tuple[int, bytes, int]]:
        stream = await RawStream.open(server)
        connected = client_frame(CONNECTED.encode())
        await stream.write(connected[:3])                      # a frame split across writes
        await stream.write(connected[3:])
        start = START.encode()
        await stream.write(client_frame(start[:40], fin=False))  # a fragmented message
        await stream.write(client_frame(start[40:], opcode=0x0))
        await stream.write(client_frame(b"are you there", opcode=0x9))  # ping
        for i in range(0, 20, 4):                              # several frames per write
            await stream.write(b"".join(client_frame(media_message(SILENCE, SID, 20 * (k + 1)).encode()) for k in range(i, i + 4)))
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
    start = client_frame(START.encode(), mask=b"\x81\x81\x00\x00")
    assert start[1] == 0x80 | 126  # a 2-byte length: the header is 4 bytes

    async def scenario() -> tuple[list[tuple[int, bytes, int]], int]:
        stream = await RawStream.open(server)
        await stream.write(client_frame(CONNECTED.encode()))
        await stream.write(start[:4])
        await stream.write(start[4:])
        frames = await stream.frames(lambda f: any(b'"media"' in p for _, p, _ in f) or any(op == 0x8 for op, _, _ in f))
        (bridge,) = [b for b in list(server.app.state.active_calls) if b.call.stream_sid == SID]
        before = bridge.call.frames_in
        for cut in range(1, 10):  # every cut inside a media frame's 8-byte header, and one past it
            media = client_frame(media_message(SILENCE, SID, 20 * cut).encode(), mask=b"\x81\x81\x00\x00")
            await stream.write(media[:cut])
            await stream.write(media[cut:])
        async with asyncio.timeout(5):  # until the server has read all nine, whole
            while bridge.call.frames_in + bridge.call.bad_frames < before + 9:
                await asyncio.sleep(0.005)
        stream.close()
        return frames, bridge.call.bad_frames

    frames, bad = asyncio.run(scenario())
    assert any(op == 0x1 and json.loads(p)["event"] == "media" for op, p, _ in frames)
    assert bad == 0


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
