"""Rate-limiting the warnings one address can make the server write.

Every refused handshake, protocol error or dropped connection is worth a
warning, but an attacker who opens thousands of connections would then fill
the disk and drown the lines that matter. Each address gets ``burst``
warnings per ``interval`` seconds; the rest are counted, and the next warning
that gets through says how many were suppressed.

Pure: the time is passed in.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class _Window:
    started: float
    written: int = 1  # the warning that opened it
    suppressed: int = 0


class WarningLimiter:
    """Per-key budget of log lines: ``allow`` says whether to write one, and how many were held back."""

    def __init__(self, burst: int = 5, interval: float = 60.0, max_keys: int = 10_000) -> None:
        self.burst = burst
        self.interval = interval
        self.max_keys = max_keys
        self._windows: dict[str, _Window] = {}

    def allow(self, key: str, now: float) -> tuple[bool, int]:
        """Whether to write a warning for ``key`` now, and how many were suppressed before it."""
        window = self._windows.get(key)
        if window is None or now - window.started >= self.interval:
            held_back = 0 if window is None else window.suppressed
            if window is None and len(self._windows) >= self.max_keys:
                self._windows.clear()  # bounded memory; at worst a few extra lines
            self._windows[key] = _Window(now)
            return True, held_back
        if window.written < self.burst:
            window.written += 1
            return True, 0
        window.suppressed += 1
        return False, 0
