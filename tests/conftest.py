"""Shared fixtures: the converted tiny.en checkpoint (built once per session), isolated caches, audio.

The real-speech clips live outside the checkout (``../shared/audio``, or ``$MAX_WHISPER_SHARED_AUDIO``).
A test that needs one asks :func:`shared_clip` for it: where the clips are missing it is skipped on a
developer's machine and fails under ``CI=true``, so CI never passes without running it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from max_whisper.config import SHARED_AUDIO_DIR

MODEL_DIR_ENV = "MAX_WHISPER_MODEL_DIR"


def shared_clip(name: str) -> Path:
    """The shared file ``name`` (e.g. ``jfk.flac``); skips the test without it, or fails it under CI=true."""
    path = SHARED_AUDIO_DIR / name
    if not path.is_file():
        message = f"shared clip {path} not found"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message} (CI=true: the shared clips are required)", pytrace=False)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session", autouse=True)
def graph_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The max backend's store of compiled graphs, private to the test session (never the user's)."""
    folder = tmp_path_factory.mktemp("graph-store")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MAX_WHISPER_GRAPH_DIR", str(folder))
        yield folder


@pytest.fixture(scope="session")
def checkpoint_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny.en converted from the embedded CTranslate2 weights into a session-private cache."""
    from max_whisper import models

    cache = tmp_path_factory.mktemp("session-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(cache))
        mp.delenv(MODEL_DIR_ENV, raising=False)
        return models.resolve_checkpoint("tiny.en")


@pytest.fixture(scope="session")
def checkpoint(checkpoint_path: Path) -> dict[str, Any]:
    """The converted checkpoint dict (``dims``, ``model_state_dict``, ``alignment_heads``); do not mutate."""
    import torch

    return torch.load(checkpoint_path, map_location="cpu", weights_only=True)


@pytest.fixture
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point XDG_CACHE_HOME at an empty temp dir; return the max-whisper cache dir inside it."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv(MODEL_DIR_ENV, raising=False)
    return tmp_path / "xdg" / "max-whisper"


@pytest.fixture(scope="session")
def jfk_audio() -> np.ndarray:
    """The 11-s JFK clip as float32 mono at 16 kHz (see :func:`shared_clip`)."""
    import soundfile

    path = shared_clip("jfk.flac")
    audio, rate = soundfile.read(path, dtype="float32", always_2d=False)
    assert rate == 16000 and audio.ndim == 1
    return audio


# -- the max backend's tests: backends built once per session, and a report of measured figures ---------

#: Filled by the ``max_report`` fixture, printed at the end of the session (see pytest_terminal_summary).
_MAX_PARITY: list[tuple[str, float, float, str]] = []
_MAX_TIMINGS: list[tuple[str, float]] = []


class MaxReport:
    """Collects the relative errors and wall times the MAX tests measure, for the session summary."""

    def __init__(self) -> None:
        self.parity = _MAX_PARITY
        self.timings = _MAX_TIMINGS

    def record_parity(self, name: str, rel_err: float, bound: float, note: str = "") -> None:
        self.parity.append((name, float(rel_err), float(bound), note))

    def record_time(self, name: str, seconds: float) -> None:
        self.timings.append((name, float(seconds)))


@pytest.fixture(scope="session")
def max_report() -> MaxReport:
    return MaxReport()


@pytest.fixture(scope="session")
def cpu_backend() -> Any:
    """The reference: openai-whisper's PyTorch tiny.en (``.torch_model``), float32 on the CPU."""
    from max_whisper.backends.whisper_cpu import CPUBackend

    return CPUBackend("tiny.en")


@pytest.fixture(scope="session")
def max_backend(max_report: MaxReport) -> Any:
    """``MaxBackend("tiny.en")``: its graphs are compiled once per test session and shared by every MAX test."""
    pytest.importorskip("max.engine", reason="the MAX engine is not installed")
    import time

    from max_whisper.backends.whisper_max.backend import MaxBackend

    start = time.perf_counter()
    backend = MaxBackend("tiny.en")
    max_report.record_time("MaxBackend('tiny.en') load + compile", time.perf_counter() - start)
    for stage in ("load", "compile"):
        if stage in backend.timer.seconds:
            max_report.record_time(f"  timer stage {stage!r}", backend.timer.seconds[stage])
    return backend


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """The MAX tests' relative errors (every check with -v; else the worst of each kind) and wall times."""
    import re

    if _MAX_PARITY:
        rows = [(name, err, bound, note) for name, err, bound, note in _MAX_PARITY]
        if config.option.verbose <= 0:  # fold steps / blocks / seeds: worst error and count per kind
            worst: dict[str, list[Any]] = {}
            for name, err, bound, note in rows:
                key = re.sub(r"\b(step|block|reorder) \d+", r"\1 *", name)
                key = re.sub(r"\d+-token prompt|prompt of \d+|pass of \d+ tokens|\(rows [^)]*\)", "…", key)
                note = "[random, seeds printed with -v]" if "seed" in note else note
                entry = worst.setdefault(key, [err, bound, note, 0])
                entry[0], entry[3] = max(entry[0], err), entry[3] + 1
            rows = [
                (f"{key} (x{n})" if n > 1 else key, err, bound, note) for key, (err, bound, note, n) in worst.items()
            ]
        terminalreporter.section("max backend parity: relative error = max|max - torch| / max|torch|")
        width = max(len(name) for name, *_ in rows)
        for name, err, bound, note in rows:
            flag = "ok " if err <= bound else "BAD"
            terminalreporter.write_line(f"{flag} {name:<{width}}  {err:.2e}  (bound {bound:.0e}) {note}".rstrip())
    if _MAX_TIMINGS:
        terminalreporter.section("max backend tests: wall times")
        width = max(len(name) for name, _ in _MAX_TIMINGS)
        for name, seconds in _MAX_TIMINGS:
            terminalreporter.write_line(f"{name:<{width}}  {seconds:8.2f} s")
