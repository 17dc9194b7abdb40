"""When the caller stops speaking, measured by us on the audio we relay; sans-I/O.

Why our own detector when Live has one: Live's VAD decides inside Google and
tells us nothing about *when* the caller stopped, so "how long did the caller
wait for an answer" cannot be read from its events. This one looks at the same
PCM we send to Live, frame by frame, so the response latency it anchors
(`observe.py`: end of speech -> first agent audio sent to Twilio) is the
caller's own experience minus the network.

It is an energy detector with hysteresis, the cheapest thing that works on a
phone line: speech starts after `START_FRAMES` loud frames in a row (a click is
not speech) and ends once `END_SILENCE_S` of quiet frames have followed; the
end is dated at the end of the last loud frame, not at the decision. Times are
positions in the caller's audio stream (seconds of audio fed), never a clock,
so the core stays clock-free; the adapter turns a position into wall time with
"the newest frame is now".

Cost: one dot product over the frame (~1 µs for 20 ms at 16 kHz) and a few
integer comparisons, whatever the call's length.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SpeechEndDetector"]

#: Loud means an RMS above this, in dBFS. Phone-line noise sits near -60 dBFS,
#: speech at -30 to -15; -40 leaves room both ways.
THRESHOLD_DBFS = -40.0
#: Loud frames in a row that make a start (3 x 20 ms).
START_FRAMES = 3
#: Quiet audio that ends an utterance. Shorter than Live's own silence
#: (VAD_SILENCE_DURATION_MS, 500 ms by default), so our end is known before
#: the model answers; the pause between words in a sentence is under 300 ms.
END_SILENCE_S = 0.35


class SpeechEndDetector:
    """Feed it the caller's 16-bit PCM, one frame at a time; read `ends` and the last utterance."""

    def __init__(self, rate: int = 16_000, *, threshold_dbfs: float = THRESHOLD_DBFS,
                 start_frames: int = START_FRAMES, end_silence_s: float = END_SILENCE_S):
        self.rate = rate
        threshold = 32768.0 * 10 ** (threshold_dbfs / 20)
        self._threshold_sq = threshold * threshold  # compared with the mean square: no square root per frame
        self.start_frames = start_frames
        self.end_silence_s = end_silence_s
        self.speaking = False
        self.position = 0.0
        """Seconds of caller audio fed so far."""
        self.ends = 0
        """Utterances ended so far: the adapter compares it with the count it last saw."""
        self.last_start = 0.0
        """Stream position where the last utterance began (seconds)."""
        self.last_end = 0.0
        """Stream position where the last ended utterance's final loud frame ended (seconds)."""
        self._loud_run = 0
        self._run_start = 0.0
        self._last_loud_end = 0.0

    def feed(self, pcm: bytes) -> None:
        n = len(pcm) >> 1
        if not n:
            return
        x = np.frombuffer(pcm, dtype="<i2", count=n).astype(np.float32)
        loud = float(np.dot(x, x)) > self._threshold_sq * n
        start = self.position
        self.position = end = start + n / self.rate
        if loud:
            self._last_loud_end = end
            if not self.speaking:
                if self._loud_run == 0:
                    self._run_start = start
                self._loud_run += 1
                if self._loud_run >= self.start_frames:
                    self.speaking = True
                    self.last_start = self._run_start
            return
        self._loud_run = 0
        if self.speaking and end - self._last_loud_end >= self.end_silence_s:
            self.speaking = False
            self.last_end = self._last_loud_end
            self.ends += 1

    def wall_time(self, position: float, now: float) -> float:
        """The wall-clock time of a stream position, the newest frame having arrived at `now`."""
        return now - (self.position - position)
