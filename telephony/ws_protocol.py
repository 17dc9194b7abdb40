"""uvicorn's WebSocket protocol, tuned for media streams (`telephony serve` runs it).

A call moves ~50 small text frames a second each way, and at 200 calls uvicorn's own
per-message costs were a fifth of the server's CPU (benchmarks/load.py). This keeps
uvicorn's sans-I/O implementation (handshake, pings, close, errors, ASGI) and changes
three things on the common path only:

- **Reading** pauses when 32 messages wait for the app, not after every message (two
  epoll_ctl calls per frame).
- **Parsing**: whole, unfragmented, masked text frames — all Twilio sends — are read
  here; anything else (control frames, fragments, a frame split across reads, bad
  UTF-8, an oversized frame) goes to websockets' parser, from a frame boundary, so
  its checks and close codes apply as before.
- **Writing**: text messages wait for the loop's `WriteBatch` (write_batch.py: the end
  of the event loop's pass, or 1 ms) and leave in one write() per connection: the
  frames the bridge sends together (two 20 ms media frames and their mark) in one
  write instead of three, and the calls' writes back to back, which on loopback costs
  the writer less than half as much as writes spread over time. Any other message
  (close, bytes, uvicorn's own) writes what waits first, so order is kept.

It also offers the app a **direct path**, as an ASGI extension in the connection's
scope (``scope["extensions"]["telephony.direct"]``, absent under plain uvicorn):

- ``receive_with(fn)``: each whole text frame read as above is first offered to
  ``fn(text)``, right in the read callback, while no message waits in the queue (so
  order is kept). ``fn`` returns True when it took the frame, False to have it queued
  for ``receive()`` as usual, or an ASGI receive message to queue instead (work it
  could not finish there). ``receive_with(None)`` stops it. The bridge handles a media
  frame this way without the queue, a task wake-up and Starlette's receive per frame.
- ``send_now(texts)``: sends the text messages without awaiting (they leave with the
  pass's other writes, as above); False (nothing sent) when the connection is not in
  a state for it, so the app awaits ``send`` instead, which also waits for write flow
  control.

`uvicorn_ws()` gives uvicorn's ``ws`` setting: this class, or "auto" if the installed
uvicorn or websockets is not the one it was written for.
"""

from __future__ import annotations

import logging

from .write_batch import batch_for

log = logging.getLogger("telephony.ws")

#: Messages waiting for the app before reading pauses (back-pressure, as uvicorn's).
QUEUE_HIGH = 32
#: The scope extension offering the direct path.
DIRECT = "telephony.direct"

try:
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
    from websockets.frames import apply_mask
    from websockets.protocol import OPEN
except ImportError:  # pragma: no cover - another uvicorn layout
    WebSocketsSansIOProtocol = None  # type: ignore[assignment,misc]


def uvicorn_ws():
    """The ``ws`` to give uvicorn: `MediaStreamProtocol`, or "auto" (uvicorn's choice)."""
    return MediaStreamProtocol if MediaStreamProtocol is not None else "auto"


if WebSocketsSansIOProtocol is None:  # pragma: no cover
    MediaStreamProtocol = None
else:

    class MediaStreamProtocol(WebSocketsSansIOProtocol):  # type: ignore[no-redef]
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self._out: list[bytes] = []  # frames sent but not yet written
            self._waiting = False  # our flush is in the loop's WriteBatch
            self._batch = batch_for(self.loop)
            self._receiver = None  # the direct path's fn, if the app gave one
            # Where websockets' parser stands in the frames given to it (`_follow`): bytes
            # of the current frame still to come, or the start of a header; `_lost` when
            # that cannot be known (frames right behind the HTTP request).
            self._left, self._head, self._lost = 0, b"", False

        def handle_connect(self, event) -> None:
            super().handle_connect(event)
            scope = getattr(self, "scope", None)
            if scope is not None:  # a 101: offer the direct path
                scope["extensions"][DIRECT] = {"receive_with": self._receive_with, "send_now": self.send_now}

        def _receive_with(self, fn) -> None:
            self._receiver = fn

        def connection_lost(self, exc) -> None:
            self._receiver = None  # the app's bound method: let the call go
            super().connection_lost(exc)

        # ------------------------------------------------------------ reading

        def data_received(self, data: bytes) -> None:
            if self._at_frame_boundary():
                used = self._read_text_frames(data)
                if used == len(data):
                    return
                data = data[used:]
            shook = self.handshake_complete
            super().data_received(data)
            if shook:
                self._follow(data)
            elif self.handshake_complete and not data.endswith(b"\r\n\r\n"):
                self._lost = True  # frames came with the request: where they end is unknown

        def _follow(self, data: bytes) -> None:
            """Track the frame boundaries in bytes given to websockets' parser.

            Its buffer alone does not tell: once a header is read, the buffer is empty
            until the rest of the frame arrives, and that rest must not be read here as
            a frame of its own (a client could even shape it to look like one).
            """
            at = 0
            if self._left:
                at = min(self._left, len(data))
                self._left -= at
                if self._left:
                    return
            buf = self._head + data[at:] if self._head else data[at:]
            at, size = 0, len(buf)
            while size - at >= 2:
                n, head = buf[at + 1] & 0x7F, 2 + 4 * (buf[at + 1] >> 7)
                head += 2 if n == 126 else 8 if n == 127 else 0
                if size - at < head:
                    break
                if n >= 126:
                    n = int.from_bytes(buf[at + 2 : at + (4 if n == 126 else 10)], "big")
                if size - at < head + n:
                    self._left, self._head = head + n - (size - at), b""
                    return
                at += head + n
            self._head = bytes(buf[at:])

        def _at_frame_boundary(self) -> bool:
            """Nothing half-read anywhere, and nothing negotiated that changes frames."""
            conn = self.conn
            return (self.handshake_complete and not self.close_sent and conn.state is OPEN
                    and not self._left and not self._head and not self._lost
                    and conn.current_size is None and not conn.reader.buffer and not conn.extensions
                    and conn.parser_exc is None and not self.frames)

        def _read_text_frames(self, data: bytes) -> int:
            """Deliver the whole masked final text frames at the start of `data`; return
            how many bytes they took (the rest starts at a frame boundary)."""
            end, size, limit = 0, len(data), self.conn.max_message_size
            while size - end >= 6:
                if data[end] != 0x81 or not data[end + 1] & 0x80:  # FIN + text, no RSV; masked
                    break
                n, at = data[end + 1] & 0x7F, end + 2
                if n == 126:
                    n, at = int.from_bytes(data[at : at + 2], "big"), at + 2
                elif n == 127:  # 64 KiB or more: not a media frame
                    break
                stop = at + 4 + n
                if stop > size or (limit is not None and n > limit):
                    break
                try:
                    text = apply_mask(data[at + 4 : stop], data[at : at + 4]).decode()
                except UnicodeDecodeError:  # websockets and uvicorn close with 1007
                    break
                end = stop
                if self.close_sent:
                    continue
                message = None
                if self._receiver is not None and not self.queue.qsize():
                    try:
                        message = self._receiver(text)
                    except Exception:  # the app's bug: stop offering, queue this frame instead
                        log.exception("the direct receiver failed; frames go through receive() from now on")
                        self._receiver, message = None, None
                    if message is True:
                        continue
                self.queue.put_nowait(message or {"type": "websocket.receive", "text": text})
            if not self.read_paused and self.queue.qsize() >= QUEUE_HIGH:
                self.read_paused = True
                self.transport.pause_reading()
            return end

        def send_receive_event_to_app(self) -> None:
            paused = self.read_paused
            super().send_receive_event_to_app()  # pauses reading after each message
            if not paused and self.read_paused and self.queue.qsize() < QUEUE_HIGH:
                self.read_paused = False
                self.transport.resume_reading()

        # ------------------------------------------------------------ writing

        def _can_write_now(self) -> bool:
            return (self.handshake_complete and not self.close_sent and not self.disconnected
                    and self.initial_response is None and self.writable.is_set()
                    and self.conn.state is OPEN and not self.conn.extensions)

        def _frame(self, text: str) -> None:
            payload = text.encode()
            n = len(payload)
            if n < 126:
                self._out.append(bytes((0x81, n)))
            elif n < 65536:
                self._out.append(b"\x81\x7e" + n.to_bytes(2, "big"))
            else:
                self._out.append(b"\x81\x7f" + n.to_bytes(8, "big"))
            self._out.append(payload)

        def send_now(self, texts) -> bool:
            """Send these text messages without awaiting; False if it cannot be done now."""
            if not self._can_write_now() or self.transport.is_closing():
                return False
            for text in texts:
                self._frame(text)
            if not self._waiting:
                self._waiting = True
                self._batch.add(self._flush)
            return True

        async def send(self, message) -> None:
            text = message.get("text") if message["type"] == "websocket.send" else None
            if text is not None and message.get("bytes") is None and self.send_now((text,)):
                return
            self._flush()
            await super().send(message)

        def _flush(self) -> None:
            self._waiting = False
            if self._out:
                out, self._out = self._out, []
                if not self.transport.is_closing():
                    self.transport.write(b"".join(out))
