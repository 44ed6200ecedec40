"""What a batch job runs: the backend, the transcription options and the output format, parsed once.

:class:`JobOptions` travels from the driver to every actor (a frozen dataclass, pickled by Ray). Its
:meth:`~JobOptions.fingerprint` names everything that decides the bytes of an output file, so a re-run
skips a file only when it was written with the same model, backend and options.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..config import BACKENDS, DEFAULT_BACKEND, DEFAULT_MODEL, OUTPUT_FORMATS
from ..errors import UsageError
from ..options import TranscriptionOptions

#: Environment hook for the fault-tolerance test: ``MARKER:N`` makes the first actor that reaches its
#: N-th file (while ``MARKER`` does not exist yet) create ``MARKER`` and kill its own process mid-file.
CRASH_HOOK_ENV = "MAX_WHISPER_BATCH_CRASH"


@dataclass(frozen=True)
class JobOptions:
    """Everything an actor needs to turn a path into a result, and the driver to write it."""

    backend: str = DEFAULT_BACKEND
    model: str = DEFAULT_MODEL
    #: torch threads per actor (also the CPUs each actor asks Ray for).
    threads: int = 1
    #: the backend's ``device`` / ``dtype`` keyword arguments, where it offers a choice.
    backend_options: dict[str, Any] = field(default_factory=dict)
    output_format: str = "all"
    transcription: TranscriptionOptions = field(default_factory=TranscriptionOptions)
    #: whisper's writer options (highlight_words, max_line_width, max_line_count, max_words_per_line).
    writer: dict[str, Any] = field(default_factory=dict)
    #: ``MARKER:N`` from :data:`CRASH_HOOK_ENV` (tests only).
    crash_hook: str | None = None

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise UsageError(f"unknown backend {self.backend!r}; choose one of {', '.join(BACKENDS)}")
        if self.output_format not in OUTPUT_FORMATS:
            raise UsageError(f"unknown output format {self.output_format!r}; choose from {', '.join(OUTPUT_FORMATS)}")
        if self.threads < 1:
            raise UsageError(f"--threads must be at least 1, got {self.threads}")
        unknown = sorted(set(self.backend_options) - {"device", "dtype"})
        if unknown:
            raise UsageError(f"unknown backend option(s): {', '.join(unknown)}")

    @property
    def uses_gpu(self) -> bool:
        """Whether each actor needs a GPU of its own."""
        return self.backend == "gpu" or self.backend_options.get("device") == "gpu"

    def fingerprint(self) -> str:
        """A digest of what decides the output bytes (not the worker count, threads or crash hook)."""
        decided = {
            "backend": self.backend,
            "model": self.model,
            "backend_options": self.backend_options,
            "output_format": self.output_format,
            "transcription": asdict(self.transcription),
            "writer": self.writer,
        }
        text = json.dumps(decided, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def job_options(
    backend: str = DEFAULT_BACKEND,
    model: str = DEFAULT_MODEL,
    *,
    threads: int = 1,
    device: str | None = None,
    dtype: str | None = None,
    output_format: str = "all",
    writer_options: dict[str, Any] | None = None,
    **options: Any,
) -> JobOptions:
    """:class:`JobOptions` from keyword arguments; ``options`` are :class:`TranscriptionOptions` fields.

    ``device`` and ``dtype`` go to backends that offer a choice (``max``: ``device`` auto, cpu or gpu).
    """
    known = {f.name for f in fields(TranscriptionOptions)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise UsageError(f"unknown transcription option(s): {', '.join(unknown)}")
    if isinstance(options.get("temperature"), list):
        options["temperature"] = tuple(options["temperature"])
    return JobOptions(
        backend=backend,
        model=model,
        threads=threads,
        output_format=output_format,
        backend_options={k: v for k, v in {"device": device, "dtype": dtype}.items() if v is not None},
        transcription=TranscriptionOptions(**options),
        writer=dict(writer_options or {}),
        crash_hook=os.environ.get(CRASH_HOOK_ENV) or None,
    )
