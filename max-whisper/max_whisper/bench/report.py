"""Assembling the report from worker results and the gate's verdict; the exit status it implies."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path

from ..errors import ExitCode
from .config import LABELS, PEER, REFERENCE_BACKEND, BenchmarkOptions
from .gate import Candidate, Judgement, Verdict
from .manifest import find_reference
from .metrics import wer
from .records import (
    BackendSummary,
    ClipResult,
    CompareClip,
    Measurement,
    Mode,
    Report,
    ReportOptions,
    StageTimings,
    WorkerResult,
)


def now_utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def report_options(options: BenchmarkOptions, modes: Sequence[Mode], *, runs: int, warmup: int) -> ReportOptions:
    return ReportOptions(
        model=options.model,
        threads=options.threads,
        modes=list(modes),
        language=options.language,
        condition_on_previous_text=options.condition_on_previous_text,
        runs=runs,
        warmup_runs=warmup,
        reference_backend=REFERENCE_BACKEND,
        tolerance=options.tolerances.record(),
        backend_options={k: dict(v) for k, v in options.backend_options.items()},
        manifest=str(options.manifest) if options.manifest else None,
    )


def backend_summary(result: WorkerResult, options: Mapping[str, object]) -> BackendSummary:
    return BackendSummary(
        name=result.backend,
        label=LABELS.get(result.backend, result.backend),
        kind="peer" if result.backend == PEER else "backend",
        status=result.status,
        reason=result.reason,
        device=result.device,
        dtype=result.dtype,
        gpu_memory_mb=result.gpu_memory_mb,
        description=dict(result.description),
        options=dict(options),
        load_s=result.load_s,
        compile_s=result.compile_s,
        peak_rss_mb=result.peak_rss_mb,
        worker_wall_s=result.worker_wall_s,
    )


def find_measurement(result: WorkerResult, audio: str, mode: str) -> Measurement | None:
    return next((m for m in result.measurements if m.audio == audio and m.mode == mode), None)


def candidate(result: WorkerResult, audio: str, mode: str) -> Candidate:
    m = find_measurement(result, audio, mode)
    if result.status != "ok" or m is None or m.status != "ok":
        return Candidate(audio, mode, result.backend, None, None, None)
    timings = StageTimings.of(m.runs)
    return Candidate(
        audio, mode, result.backend, tuple(m.tokens), m.text, timings.total.median if timings.total else None
    )


def clip_result(
    result: WorkerResult, audio: str, mode: str, judgement: Judgement | None, reference_text: str | None
) -> ClipResult:
    """One backend's measurements of one clip in one mode, with its verdict."""
    m = find_measurement(result, audio, mode)
    empty = dict(
        warmup_s=None,
        timings=None,
        real_time_factor=None,
        tokens=None,
        text_tokens=None,
        tokens_per_second=None,
        deterministic=None,
        text=None,
        wer=None,
        diff_vs_reference=None,
        matches_reference_backend=None,
        tolerance=None,
        valid=None,
        invalid_reason=None,
        speedup=None,
    )
    if result.status != "ok":
        return ClipResult(backend=result.backend, mode=mode, status=result.status, reason=result.reason, **empty)
    if m is None or m.status != "ok":
        reason = m.reason if m is not None else "no result for this clip"
        return ClipResult(backend=result.backend, mode=mode, status="error", reason=reason, **empty)
    timings = StageTimings.of(m.runs)
    total = timings.total.median if timings.total else None
    j = judgement
    return ClipResult(
        backend=result.backend,
        mode=mode,
        status="ok",
        reason=None,
        warmup_s=m.warmup_s,
        timings=timings,
        real_time_factor=(total / m.duration_s) if (total and m.duration_s) else None,
        tokens=len(m.tokens),
        text_tokens=m.text_tokens,
        tokens_per_second=(len(m.tokens) / total) if total else None,
        deterministic=m.deterministic,
        text=m.text,
        wer=wer(reference_text, m.text or "") if reference_text else None,
        diff_vs_reference=j.diff if j else None,
        matches_reference_backend=j.matches_reference_backend if j else None,
        tolerance=j.tolerance if j else None,
        valid=j.valid if j else None,
        invalid_reason=j.invalid_reason if j else None,
        speedup=j.speedup if j else None,
    )


def compare_clips(
    audio: Sequence[str], modes: Sequence[Mode], results: Sequence[WorkerResult], verdict: Verdict
) -> list[CompareClip]:
    clips = []
    for path in audio:
        reference, source = find_reference(path)
        duration = next(
            (m.duration_s for r in results for m in r.measurements if m.audio == path and m.duration_s is not None),
            None,
        )
        rows = [
            clip_result(r, path, mode.name, verdict.get(path, mode.name, r.backend), reference)
            for mode in modes
            for r in results
        ]
        clips.append(
            CompareClip(
                audio=path,
                file=Path(path).name,
                duration_s=duration,
                reference_text=reference,
                reference_source=source,
                results=rows,
            )
        )
    return clips


def exit_status(report: Report, *, fail_on_invalid: bool = False) -> ExitCode:
    """OK; FAILED when the reference (or, in manifest mode, the one backend) did not run, or, with
    ``fail_on_invalid``, when some backend is invalid."""
    if report.kind == "manifest":
        return ExitCode.OK if report.backends[0].status == "ok" else ExitCode.FAILED
    reference = report.backend(REFERENCE_BACKEND)
    if reference is None or reference.status != "ok":
        return ExitCode.FAILED
    results = [r for c in report.compare_clips() for r in c.results]
    if any(r.status != "ok" for r in results if r.backend == REFERENCE_BACKEND):
        return ExitCode.FAILED
    if fail_on_invalid and any(r.valid is False for r in results):
        return ExitCode.FAILED
    return ExitCode.OK


def per_backend_options(options: BenchmarkOptions) -> dict[str, dict[str, object]]:
    return {name: dict(options.backend_options.get(name, {})) for name in options.backends}


def report_json(report: Report, *, indent: int | None = 2) -> str:
    """The report as one JSON document (no NaN, no infinities)."""
    import json

    from .schema import to_jsonable

    separators = None if indent else (",", ":")
    return json.dumps(to_jsonable(report), indent=indent, allow_nan=False, separators=separators)


def append_record(report: Report, path: Path) -> None:
    """Append the report (which carries machine info, versions, commit and time) to ``path`` as one JSON line."""
    line = report_json(report, indent=None) + "\n"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
