"""Every benchmark and demo option, parsed once into typed objects.

The command modules (:mod:`.command`, :mod:`.demo`) turn argparse's namespace into a
:class:`BenchmarkOptions` or :class:`DemoOptions` with these parsers; nothing past them
sees the namespace.  A bad
value raises ``errors.UsageError``: one line, exit status ``ExitCode.USAGE``.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import BACKENDS, DEFAULT_MODEL, DEMO_AUDIO, SHARED_AUDIO_DIR
from ..errors import UsageError
from .records import Mode, ToleranceRecord

#: The backend every other one is checked against.
REFERENCE_BACKEND = "cpu"

#: The peer: faster-whisper (CTranslate2) on the same tiny.en weights.
PEER = "faster-whisper"
PEER_ALIASES = ("peer", "faster-whisper", "faster_whisper", "ctranslate2")

LABELS = {
    "cpu": "cpu (PyTorch)",
    "gpu": "gpu (PyTorch CUDA)",
    "max": "max (MAX Graph)",
    PEER: "faster-whisper (ctranslate2)",
}

#: The default clip: 231 s of LJ Speech joined into one file.
LONGFORM_CLIP = "longform_ljspeech_LJ001-0001_to_0032.flac"

DEFAULT_RUNS = 3
DEFAULT_WARMUP = 1
DEFAULT_MODES = "greedy"
DEFAULT_TOLERANCE = 0.0
DEFAULT_PEER_TOLERANCE = 0.05
DEFAULT_TIMEOUT = 3600.0

#: whisper's (and ``max-whisper transcribe``'s) default temperature schedule.
FALLBACK_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


def default_audio() -> Path:
    """The clip used when none is given: the long-form clip of the shared audio if present, else the demo clip."""
    longform = Path(SHARED_AUDIO_DIR) / LONGFORM_CLIP
    return longform if longform.is_file() else Path(DEMO_AUDIO)


def default_threads() -> int:
    """The CPUs this process may use (``os.sched_getaffinity``; ``os.cpu_count()`` where that is missing)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# --------------------------------------------------------------------------- backends


def canonical_backend(name: str, *, peer: bool = True) -> str:
    """``cpu``/``gpu``/``max``, or :data:`PEER` for any of its aliases."""
    name = name.strip().lower()
    if peer and name in PEER_ALIASES:
        return PEER
    if name not in BACKENDS:
        choices = ", ".join(BACKENDS + ((PEER,) if peer else ()))
        raise UsageError(f"unknown backend {name!r}; choose from {choices}")
    return name


def parse_backends(text: str | None, *, add_reference: bool = True) -> list[str]:
    """``cpu,max`` -> names in run order (the ``cpu`` reference first and always there unless told otherwise)."""
    if not text:
        return list(BACKENDS) + [PEER]
    names: list[str] = []
    for part in text.split(","):
        if part.strip():
            name = canonical_backend(part)
            if name not in names:
                names.append(name)
    if not names:
        raise UsageError("--backends names no backend")
    if add_reference and REFERENCE_BACKEND not in names:
        names.insert(0, REFERENCE_BACKEND)
    order = {name: i for i, name in enumerate(list(BACKENDS) + [PEER])}
    return sorted(names, key=lambda n: order[n])


def backend_option_names(name: str) -> dict[str, inspect.Parameter]:
    """The keyword options of a backend's constructor (besides ``model`` and ``threads``)."""
    if name == PEER:
        return {}
    from ..backends import backend_class

    parameters = inspect.signature(backend_class(name).__init__).parameters
    return {k: p for k, p in parameters.items() if p.kind == p.KEYWORD_ONLY and k != "threads"}


def parse_backend_options(items: Sequence[str] | None) -> dict[str, dict[str, Any]]:
    """``["max.device=cpu"]`` -> ``{"max": {"device": "cpu"}}``, each key checked against the backend.

    Values are read as JSON when they parse (``2``, ``true``), else kept as strings.
    ``device`` and ``dtype`` must be among the values the backend declares in its capabilities.
    """
    options: dict[str, dict[str, Any]] = {}
    for item in items or ():
        key, sep, text = item.partition("=")
        name, dot, option = key.partition(".")
        if not sep or not dot or not option.strip():
            raise UsageError(f"--backend-opt wants BACKEND.KEY=VALUE (e.g. max.device=cpu), got {item!r}")
        backend, option = canonical_backend(name), option.strip()
        known = backend_option_names(backend)
        if option not in known:
            offered = ", ".join(sorted(known)) or "none"
            raise UsageError(
                f"--backend-opt {item!r}: the {backend} backend has no option {option!r} (its options: {offered})"
            )
        try:
            value: Any = json.loads(text)
        except ValueError:
            value = text
        _check_declared(backend, option, value, item)
        options.setdefault(backend, {})[option] = value
    return options


def _check_declared(backend: str, option: str, value: Any, item: str) -> None:
    from ..backends import backend_class

    declared = {"device": "devices", "dtype": "dtypes"}.get(option)
    if declared is None:
        return
    allowed = tuple(getattr(backend_class(backend).capabilities, declared))
    if allowed and value not in allowed:
        raise UsageError(f"--backend-opt {item!r}: {option} must be one of {', '.join(map(str, allowed))}")


# --------------------------------------------------------------------------- accuracy gate limits


def parse_fraction(text: str) -> float:
    """``0.01`` or ``1%`` -> 0.01 (never negative)."""
    text = text.strip()
    try:
        value = float(text[:-1]) / 100.0 if text.endswith("%") else float(text)
    except ValueError:
        raise UsageError(f"tolerance must be a number such as 0, 0.01 or 1%, got {text!r}") from None
    if value < 0:
        raise UsageError(f"tolerance must not be negative, got {text!r}")
    return value


def parse_tolerances(items: Sequence[str] | None) -> tuple[float, dict[str, float]]:
    """``--tolerance`` values: ``0.01``, ``1%`` or ``max=0.01`` (per backend) -> (default, per backend)."""
    default = DEFAULT_TOLERANCE
    per_backend: dict[str, float] = {}
    for item in items or ():
        for part in str(item).split(","):
            if not part.strip():
                continue
            name, sep, value = part.rpartition("=")
            if sep:
                per_backend[canonical_backend(name)] = parse_fraction(value)
            else:
                default = parse_fraction(value)
    return default, per_backend


@dataclass(frozen=True)
class Tolerances:
    """How far from the cpu reference a backend may be and still count as valid."""

    #: token error rate (edit distance / cpu tokens) every backend is held to.
    default: float = DEFAULT_TOLERANCE
    #: per-backend overrides of ``default``.
    per_backend: Mapping[str, float] = field(default_factory=dict)
    #: the peer's limit: normalized word difference from the cpu text.
    peer: float = DEFAULT_PEER_TOLERANCE

    def for_backend(self, name: str) -> float:
        return self.peer if name == PEER else self.per_backend.get(name, self.default)

    def record(self) -> ToleranceRecord:
        return ToleranceRecord(self.default, dict(self.per_backend), self.peer)


# --------------------------------------------------------------------------- decoding modes


def parse_mode(name: str, temperature: float = 0.0) -> Mode:
    """``greedy``, ``beamN`` (``beam5``) or ``default`` (beam 5, best of 5, whisper's temperature fallback).

    ``temperature`` is the single temperature of ``greedy`` and ``beamN``.
    """
    key = name.strip().lower()
    if key == "greedy":
        return Mode("greedy", None, None, (temperature,))
    if key == "default":
        return Mode("default", 5, 5, FALLBACK_TEMPERATURES)
    if key.startswith("beam") and key[4:].isdigit() and int(key[4:]) >= 1:
        return Mode(key, int(key[4:]), None, (temperature,))
    raise UsageError(f"unknown decoding mode {name!r}; choose from greedy, beamN (e.g. beam5), default")


def parse_modes(text: str | None, *, beam_size: int | None = None, temperature: float = 0.0) -> list[Mode]:
    """``--modes greedy,beam5`` -> modes in the given order; ``--beam-size N`` alone means ``beamN``."""
    if text and beam_size:
        raise UsageError("--beam-size and --modes both choose the decoding; give one of them")
    if not text:
        text = f"beam{beam_size}" if beam_size else DEFAULT_MODES
    modes: list[Mode] = []
    for part in text.split(","):
        if part.strip():
            mode = parse_mode(part, temperature)
            if mode.name not in [m.name for m in modes]:
                modes.append(mode)
    if not modes:
        raise UsageError("--modes names no mode")
    return modes


# --------------------------------------------------------------------------- the options objects


@dataclass(frozen=True)
class BenchmarkOptions:
    """Everything ``max-whisper benchmark`` was asked to do."""

    #: backends in run order: cpu first, then gpu, max, the peer.
    backends: tuple[str, ...]
    audio: tuple[Path, ...]
    modes: tuple[Mode, ...]
    runs: int = DEFAULT_RUNS
    warmup: int = DEFAULT_WARMUP
    #: CPU threads for every backend (torch, CTranslate2; OMP/MKL/OpenBLAS in each worker).
    threads: int = field(default_factory=default_threads)
    model: str = DEFAULT_MODEL
    language: str | None = "en"
    condition_on_previous_text: bool = True
    tolerances: Tolerances = field(default_factory=Tolerances)
    #: constructor keywords per backend (``--backend-opt``).
    backend_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: manifest mode: run ``backends[0]`` over every clip of this manifest.
    manifest: Path | None = None
    json: bool = False
    save: Path | None = None
    plot: Path | None = None
    fail_on_invalid: bool = False
    #: seconds allowed per backend worker.
    timeout: float = DEFAULT_TIMEOUT


@dataclass(frozen=True)
class DemoOptions:
    """Everything ``max-whisper demo`` was asked to do."""

    audio: Path
    backends: tuple[str, ...]
    mode: Mode
    threads: int = field(default_factory=default_threads)
    model: str = DEFAULT_MODEL
    language: str | None = "en"
    #: transcript column width (None: fit the terminal).
    width: int | None = None


def check_audio(paths: Sequence[Path]) -> None:
    for path in paths:
        if not Path(path).is_file():
            raise UsageError(f"{path}: no such audio file")
