"""Stage timers shared by every backend: load, compile, mel, encode, decode."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager


class StageTimer:
    """Accumulates wall-clock seconds and call counts per named stage."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start
            self.calls[name] += 1

    def reset(self, *names: str) -> None:
        """Forget the given stages (all of them when none is named)."""
        for name in names or list(self.seconds):
            self.seconds.pop(name, None)
            self.calls.pop(name, None)
