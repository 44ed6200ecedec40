"""The backends, registered by name and imported only when used.

``cpu`` and ``gpu`` run openai-whisper's PyTorch model (:mod:`.pytorch`); ``max`` runs the same
checkpoint as MAX graphs (:mod:`.whisper_max`). Each backend module names its class ``BACKEND``;
the class declares what it can do in ``capabilities`` and whether this machine can run it in
``is_available()``.
"""

from __future__ import annotations

import importlib
from typing import Any

from ..config import BACKENDS, DEFAULT_MODEL
from ..errors import BackendUnavailableError, UsageError, describe
from .base import Backend, Capabilities

_MODULES = {"cpu": ".whisper_cpu", "gpu": ".whisper_gpu", "max": ".whisper_max.backend"}
assert set(_MODULES) == set(BACKENDS)


def backend_class(name: str) -> type[Backend]:
    """The backend class registered under ``name`` (imports its module on first use).

    Raises :class:`UsageError` for an unknown name, :class:`BackendUnavailableError` when the module
    cannot be imported here.
    """
    if name not in _MODULES:
        raise UsageError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    try:
        module = importlib.import_module(_MODULES[name], __package__)
    except ImportError as exc:  # a package the backend needs is missing from this install
        raise BackendUnavailableError(f"the {name} backend is not available in this install: {describe(exc)}") from exc
    return module.BACKEND


def create_backend(name: str, model: str = DEFAULT_MODEL, **options: Any) -> Backend:
    """Instantiate a backend by name, e.g. ``create_backend("max", "tiny.en", device="cpu")``.

    ``options`` are the backend class's keyword arguments (``threads`` for all; ``device`` and
    ``dtype`` where its capabilities offer a choice).
    """
    return backend_class(name)(model, **options)


def available_backends() -> list[str]:
    """The backends this machine can run, in :data:`~max_whisper.config.BACKENDS` order."""
    names = []
    for name in BACKENDS:
        try:
            if backend_class(name).is_available():
                names.append(name)
        except BackendUnavailableError:  # its module cannot be imported in this install
            continue
    return names


__all__ = ["Backend", "Capabilities", "available_backends", "backend_class", "create_backend"]
