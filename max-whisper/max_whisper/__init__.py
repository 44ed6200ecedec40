"""max-whisper: OpenAI Whisper on three backends (cpu, gpu, max), measured against each other.

The Python API::

    import max_whisper as mw

    result = mw.transcribe("talk.flac", backend="max")      # whisper's result dict
    print(result["text"])

    backend = mw.load_backend("cpu", model="tiny.en")        # load once, transcribe many
    for path in paths:
        mw.transcribe(path, backend=backend, beam_size=None)

``import max_whisper`` is light: torch, whisper and the MAX engine are imported by the first call
that needs them.
"""

from __future__ import annotations

from importlib import metadata
from typing import TYPE_CHECKING, Any

from .config import DEFAULT_BACKEND, DEFAULT_MODEL
from .errors import AudioError, BackendUnavailableError, MaxWhisperError, ModelError, UsageError
from .options import TranscriptionOptions

if TYPE_CHECKING:
    import os

    import numpy as np

    from .backends.base import Backend

try:
    __version__ = metadata.version("max-whisper")  # written once, in pyproject.toml
except metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"


def load_audio(path: str | os.PathLike[str]) -> np.ndarray:
    """An audio file as the float32 mono 16 kHz waveform Whisper takes (:class:`AudioError` if it cannot be)."""
    from .audio import load_audio as _load_audio

    return _load_audio(path)


def available_backends() -> list[str]:
    """The backends this machine can run: ``cpu`` always, ``gpu`` with CUDA, ``max`` with the MAX engine."""
    from .backends import available_backends as _available_backends

    return _available_backends()


def load_backend(name: str = DEFAULT_BACKEND, model: str = DEFAULT_MODEL, **options: Any) -> Backend:
    """Load ``model`` on backend ``name`` (``cpu``, ``gpu`` or ``max``), ready for :func:`transcribe`.

    ``options`` are the backend's: ``threads`` (torch's thread count), and where the backend's
    ``capabilities`` offer a choice, ``device`` (max: ``"auto"``, ``"cpu"``, ``"gpu"``) and ``dtype``.
    Raises :class:`ModelError` or :class:`BackendUnavailableError` in one line.
    """
    from .backends import create_backend

    return create_backend(name, model, **options)


def transcribe(
    audio: str | os.PathLike[str] | np.ndarray,
    *,
    backend: str | Backend = DEFAULT_BACKEND,
    model: str = DEFAULT_MODEL,
    options: TranscriptionOptions | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """Transcribe a file (or a float32 16 kHz mono waveform) and return whisper's result dict.

    ``backend`` is a name (the backend is loaded for this call) or a backend from
    :func:`load_backend` (reused: load once for many files). ``options`` and the keyword ``fields``
    (any :class:`TranscriptionOptions` field, e.g. ``beam_size=None``, ``language="en"``) override
    the defaults, which are the ``whisper`` command's. The result has ``text``, ``segments`` and
    ``language``, exactly as ``whisper.transcribe`` returns them.
    """
    import dataclasses

    import numpy as np

    from .decoding import transcribe as _transcribe

    chosen = dataclasses.replace(options or TranscriptionOptions(), **fields)
    if isinstance(backend, str):
        backend = load_backend(backend, model)
    waveform = load_audio(audio) if not isinstance(audio, np.ndarray) else audio
    return _transcribe(backend, waveform, **chosen.for_backend(backend).whisper_options())


__all__ = [
    "AudioError",
    "BackendUnavailableError",
    "MaxWhisperError",
    "ModelError",
    "TranscriptionOptions",
    "UsageError",
    "__version__",
    "available_backends",
    "load_audio",
    "load_backend",
    "transcribe",
]
