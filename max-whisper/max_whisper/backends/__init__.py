"""The backends, registered by name and imported only when used.

``cpu`` and ``gpu`` run openai-whisper's PyTorch model; ``max`` runs the same
checkpoint as MAX graphs.  Each module names its class ``BACKEND``.
"""

from __future__ import annotations

import importlib
from typing import Any, Type

from ..config import BACKENDS, DEFAULT_MODEL
from ..errors import MaxWhisperError
from .base import Backend

_MODULES = {"cpu": ".whisper_cpu", "gpu": ".whisper_gpu", "max": ".whisper_max.backend"}
assert set(_MODULES) == set(BACKENDS)


def backend_class(name: str) -> Type[Backend]:
    """The backend class registered under ``name`` (imports its module lazily)."""
    if name not in _MODULES:
        raise MaxWhisperError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return importlib.import_module(_MODULES[name], __package__).BACKEND


def create_backend(name: str, model: str = DEFAULT_MODEL, **options: Any) -> Backend:
    """Instantiate a backend by name, e.g. ``create_backend("max", "tiny.en", threads=2)``."""
    return backend_class(name)(model, **options)


__all__ = ["Backend", "backend_class", "create_backend"]
