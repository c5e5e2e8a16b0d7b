"""Progress of long commands on stderr: lines that stay, and on a terminal one live line (the
running epoch's batches as a bar, with the time left) that the next line replaces.

Off under `--json` (`enabled` False). Written to whatever `sys.stderr` is at write time, so a
`hadmc` main called in-process (tests) and redirections keep working.
"""

from __future__ import annotations

import shutil
import sys
import time
from typing import TextIO

BAR_WIDTH = 24
LIVE_INTERVAL_S = 0.1  # at most ten redraws a second


class Progress:
    """Where a command says how far it is. `stream`: a fixed stream (default: sys.stderr)."""

    def __init__(self, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.enabled = enabled
        self._stream = stream
        self._live = False
        self._drawn_at = 0.0
        self.context = ""  # prefixed to live lines, e.g. "[ppo] episode 3/15 (best 1.2345)"

    @property
    def stream(self) -> TextIO:
        return self._stream or sys.stderr

    def _terminal(self) -> bool:
        isatty = getattr(self.stream, "isatty", None)
        return bool(isatty and isatty())

    def say(self, text: str) -> None:
        """A line that stays."""
        if not self.enabled:
            return
        self._clear()
        print(text, file=self.stream, flush=True)

    def live(self, text: str, force: bool = False) -> None:
        """A transient line, redrawn in place on a terminal; nothing elsewhere."""
        if not self.enabled or not self._terminal():
            return
        now = time.monotonic()
        if not force and now - self._drawn_at < LIVE_INTERVAL_S:
            return
        self._drawn_at = now
        line = f"{self.context}: {text}" if self.context else text
        width = shutil.get_terminal_size((100, 20)).columns - 1
        self.stream.write("\r" + line[:width] + "\x1b[K")
        self.stream.flush()
        self._live = True

    def _clear(self) -> None:
        if self._live:
            self.stream.write("\r\x1b[K")
            self._live = False

    def fit(self, what: str, lines: bool = True) -> FitProgress:
        """The callbacks `train` and `distill` report to; `lines` False: finished epochs too are
        only shown live (an episode's short fine-tune)."""
        return FitProgress(self, what, lines)


class FitProgress:
    """Batches of the running epoch as a live bar, and a line per finished epoch."""

    def __init__(self, progress: Progress, what: str, lines: bool = True) -> None:
        self.progress = progress
        self.what = what
        self.lines = lines
        self._epoch_t0 = time.monotonic()

    def batch(self, epoch: int, epochs: int, done: int, total: int) -> None:
        """`done` of `total` batches of epoch `epoch` (1-based) of `epochs` are through."""
        if done <= 1:
            self._epoch_t0 = time.monotonic()
        elapsed = time.monotonic() - self._epoch_t0
        left_s = elapsed / done * (total - done) if done else 0.0
        filled = round(BAR_WIDTH * done / total) if total else BAR_WIDTH
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        self.progress.live(
            f"{self.what} epoch {epoch}/{epochs} [{bar}] {done}/{total} batches, {left_s:.0f} s left",
            force=done == total,
        )

    def epoch(self, epoch: int, epochs: int, loss: float) -> None:
        text = f"{self.what} epoch {epoch}/{epochs}: loss {loss:.4f} ({time.monotonic() - self._epoch_t0:.1f} s)"
        if self.lines:
            self.progress.say(f"  {text}")
        else:
            self.progress.live(text, force=True)
