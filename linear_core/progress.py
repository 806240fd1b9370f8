"""Progress of a long run for a person: a one-line bar on a terminal, a log line every N images elsewhere.

A cluster job's output goes to a file, where a redrawn bar would be thousands of lines; so the
bar is drawn only when the stream is a terminal, and otherwise a line is written every ``every``
images (and at the end).
"""
from __future__ import annotations

import sys
import time
from typing import TextIO


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60:02d}:{rest % 60:02d}"


class Progress:
    """Images done out of ``total`` (``start`` of them done before this run), images/s, time left."""

    def __init__(self, total: int, start: int = 0, every: int = 100, stream: TextIO | None = None,
                 interactive: bool | None = None, enabled: bool = True) -> None:
        self.total, self.start, self.every, self.enabled = total, start, max(1, every), enabled
        self.stream = stream or sys.stderr
        self.interactive = self.stream.isatty() if interactive is None else interactive
        self.t0 = time.perf_counter()
        self.done = start
        self.logged = start  # the count at the last log line

    def line(self) -> str:
        elapsed = time.perf_counter() - self.t0
        rate = (self.done - self.start) / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        eta = _clock(left) if rate > 0 else "--:--"
        share = self.done / max(self.total, 1)
        if self.interactive:
            bar = "#" * int(share * 30)
            return f"\r{share * 100:5.1f}% |{bar:<30}| {self.done}/{self.total} [{_clock(elapsed)}<{eta}, {rate:.2f} img/s]"
        return f"sample: {self.done}/{self.total} images ({share * 100:.1f}%), {rate:.2f} images/s, {eta} left"

    def update(self, done: int) -> None:
        """The count of finished images, all processes together."""
        self.done = done
        if not self.enabled:
            return
        if self.interactive:
            self.stream.write(self.line())
            self.stream.flush()
        elif done - self.logged >= self.every or self.logged < self.total <= done:
            self.logged = done
            print(self.line(), file=self.stream, flush=True)

    def close(self) -> None:
        if self.enabled and self.interactive:
            self.stream.write("\n")
            self.stream.flush()
