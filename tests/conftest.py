"""Shared fixtures: the converted tiny.en checkpoint (built once per session), isolated caches, audio."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from max_whisper.config import SHARED_AUDIO_DIR

MODEL_DIR_ENV = "MAX_WHISPER_MODEL_DIR"


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
    """The 11-s JFK clip as float32 mono at 16 kHz (skips if the shared audio is absent)."""
    import soundfile

    path = SHARED_AUDIO_DIR / "jfk.flac"
    if not path.is_file():
        pytest.skip(f"{path} not available")
    audio, rate = soundfile.read(path, dtype="float32", always_2d=False)
    assert rate == 16000 and audio.ndim == 1
    return audio
