"""The benchmark's records: what a worker measures and what the report holds, as dataclasses.

``docs/benchmark.schema.json`` is generated from these classes, and they are turned
into JSON values and back, by :mod:`.schema`.
Times are seconds, memory MiB, rates fractions (0.05 = 5 %); ``None`` (``null``)
means "not measured / not applicable".
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

SCHEMA_ID = "max-whisper-benchmark/2"

Status = Literal["ok", "unavailable", "error"]


@dataclass(frozen=True)
class Mode:
    """A decoding mode: the beam size, samples and temperature schedule every backend is run with."""

    name: str
    beam_size: int | None
    best_of: int | None
    #: one value: no fallback; several: whisper's temperature fallback over them, in order.
    temperatures: tuple[float, ...]

    @property
    def fallback(self) -> bool:
        return len(self.temperatures) > 1

    def decode_options(self) -> dict[str, Any]:
        """The keywords of ``whisper.transcribe`` / ``DecodingOptions`` this mode sets."""
        temperature: Any = self.temperatures[0] if not self.fallback else tuple(self.temperatures)
        options: dict[str, Any] = {"temperature": temperature}
        if self.beam_size:
            options["beam_size"] = self.beam_size
        if self.best_of:
            options["best_of"] = self.best_of
        return options

    def describe(self) -> str:
        decoding = f"beam {self.beam_size}" if self.beam_size else "greedy"
        if self.fallback:
            return f"{decoding}, temperature fallback {', '.join(f'{t:g}' for t in self.temperatures)}"
        return f"{decoding}, temperature {self.temperatures[0]:g}"


# --------------------------------------------------------------------------- what a worker measures


@dataclass
class RunTiming:
    """One timed transcription: ``mel + encode + decode + other = total`` (the peer has ``total`` only)."""

    total: float
    mel: float | None = None
    encode: float | None = None
    decode: float | None = None
    other: float | None = None


@dataclass
class Measurement:
    """One backend on one clip in one mode: the warm-up time, every timed run, the last run's transcript."""

    audio: str
    mode: str
    status: Status
    reason: str | None = None
    duration_s: float | None = None
    warmup_s: float | None = None
    runs: list[RunTiming] = field(default_factory=list)
    #: every token of every segment (text and timestamp tokens) of the last timed run.
    tokens: list[int] = field(default_factory=list)
    text_tokens: int | None = None
    #: every timed run gave the same tokens.
    deterministic: bool | None = None
    text: str | None = None
    language: str | None = None


@dataclass
class WorkerResult:
    """Everything one worker process reports about its backend."""

    backend: str
    status: Status
    reason: str | None = None
    #: ``Backend.describe()`` (or the peer's equivalent).
    description: dict[str, Any] = field(default_factory=dict)
    device: str | None = None
    dtype: str | None = None
    #: peak GPU memory (``torch.cuda.max_memory_allocated`` for PyTorch on CUDA; what MAX reports, else null).
    gpu_memory_mb: float | None = None
    load_s: float | None = None
    compile_s: float | None = None
    peak_rss_mb: float | None = None
    worker_wall_s: float | None = None
    measurements: list[Measurement] = field(default_factory=list)


# --------------------------------------------------------------------------- the report


@dataclass
class Summary:
    """Median, min and max over the timed runs, and every run's value."""

    median: float
    min: float
    max: float
    runs: list[float]

    @classmethod
    def of(cls, values: Sequence[float | None]) -> Summary | None:
        kept = [float(v) for v in values if v is not None]
        if not kept:
            return None
        return cls(statistics.median(kept), min(kept), max(kept), kept)


@dataclass
class StageTimings:
    total: Summary | None
    mel: Summary | None
    encode: Summary | None
    decode: Summary | None
    other: Summary | None

    @classmethod
    def of(cls, runs: Sequence[RunTiming]) -> StageTimings:
        return cls(**{name: Summary.of([getattr(r, name) for r in runs]) for name in STAGE_NAMES})


STAGE_NAMES = ("total", "mel", "encode", "decode", "other")


@dataclass
class TokenDiff:
    """How far a backend's tokens are from the reference backend's (edit distance over token ids)."""

    reference_backend: str
    edit_distance: int
    reference_tokens: int
    hypothesis_tokens: int
    #: edit distance / reference tokens.
    token_error_rate: float
    first_difference: int | None
    identical: bool
    #: normalized word error rate of this transcript against the reference backend's transcript.
    word_difference: float | None


@dataclass
class BackendSummary:
    """One backend of the run: how it was made, what it is, what it cost."""

    name: str
    label: str
    kind: Literal["backend", "peer"]
    status: Status
    reason: str | None
    device: str | None
    dtype: str | None
    gpu_memory_mb: float | None
    description: dict[str, Any]
    #: the ``--backend-opt`` keywords given to this backend.
    options: dict[str, Any]
    load_s: float | None
    compile_s: float | None
    peak_rss_mb: float | None
    worker_wall_s: float | None


@dataclass
class ClipResult:
    """One backend on one clip in one mode, with the accuracy gate's verdict."""

    backend: str
    mode: str
    status: Status
    reason: str | None
    warmup_s: float | None
    timings: StageTimings | None
    real_time_factor: float | None
    tokens: int | None
    text_tokens: int | None
    tokens_per_second: float | None
    deterministic: bool | None
    text: str | None
    wer: float | None
    diff_vs_reference: TokenDiff | None
    matches_reference_backend: bool | None
    tolerance: float | None
    valid: bool | None
    invalid_reason: str | None
    #: reference median total / this median total, in the same mode; null unless valid.
    speedup: float | None


@dataclass
class CompareClip:
    audio: str
    file: str
    duration_s: float | None
    reference_text: str | None
    reference_source: str | None
    #: one per backend and mode, mode by mode in the order of ``options.modes``.
    results: list[ClipResult]


@dataclass
class ManifestClip:
    file: str
    audio: str
    group: str
    status: Status
    reason: str | None
    duration_s: float | None
    total_s: float | None
    reference_text: str | None
    text: str | None
    wer: float | None


@dataclass
class GroupSummary:
    group: str
    clips: int
    scored: int
    failed: int
    duration_s: float
    total_s: float
    wer: float | None


@dataclass
class OverallSummary:
    clips: int
    scored: int
    failed: int
    duration_s: float
    total_s: float
    wer: float | None
    #: groups left out of the overall WER (the long-form clip repeats the LJ Speech clips).
    excluded_groups: list[str]


@dataclass
class ToleranceRecord:
    """The accuracy gate's limits: token error rate vs cpu (default and per backend); the peer's word difference."""

    default: float
    per_backend: dict[str, float]
    peer: float


@dataclass
class ReportOptions:
    model: str
    threads: int
    modes: list[Mode]
    language: str | None
    condition_on_previous_text: bool
    runs: int
    warmup_runs: int
    reference_backend: str
    tolerance: ToleranceRecord
    backend_options: dict[str, dict[str, Any]]
    manifest: str | None


@dataclass
class Machine:
    platform: str
    machine: str
    python: str
    cpu_count: int | None
    cpus_usable: int | None
    cpu_model: str | None
    memory_gb: float | None
    hostname: str | None


@dataclass
class Environment:
    machine: Machine
    #: distribution -> version (null when not installed).
    packages: dict[str, str | None]
    git_commit: str | None
    #: tracked files modified.
    git_dirty: bool | None


@dataclass
class Report:
    """One document of ``max-whisper benchmark --json`` (and one line of a ``--save`` file)."""

    schema: str = field(metadata={"schema": {"const": SCHEMA_ID}})
    #: ``compare``: every backend on the clips; ``manifest``: one backend over a manifest, WER per group.
    kind: Literal["compare", "manifest"]
    created_utc: str = field(metadata={"schema": {"pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$"}})
    options: ReportOptions
    environment: Environment
    backends: list[BackendSummary]
    clips: list[CompareClip | ManifestClip]
    groups: list[GroupSummary] | None = None
    overall: OverallSummary | None = None

    def compare_clips(self) -> list[CompareClip]:
        return [c for c in self.clips if isinstance(c, CompareClip)]

    def backend(self, name: str) -> BackendSummary | None:
        return next((b for b in self.backends if b.name == name), None)
