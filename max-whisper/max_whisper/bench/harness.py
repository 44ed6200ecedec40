"""Orchestration: every backend over the clips (one worker process each), or all of them in this process (demo).

* :func:`run_compare`: each backend in its own worker (:mod:`.worker`), one after
  the other; the gate judges the transcripts; the result is a :class:`.records.Report`.
* :func:`run_manifest`: one backend over every clip of a manifest; WER per group.
* :func:`run_in_process`: the demo's mode: one clip, every backend created in this
  process in turn, one run each without warm-up, judged by the same gate.

Progress and one structured record per result go through
``max_whisper.utils.logging`` (``BenchmarkLogger``) on stderr; stdout stays free for the report.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import BackendUnavailableError, MaxWhisperError, UsageError, describe, one_line
from ..utils.logging import BenchmarkLogger
from .config import PEER, BenchmarkOptions, DemoOptions
from .environment import environment
from .gate import Verdict, judge
from .manifest import read_manifest, summarize_manifest
from .metrics import wer
from .records import SCHEMA_ID, ManifestClip, Measurement, Report, WorkerResult
from .report import (
    backend_summary,
    candidate,
    compare_clips,
    find_measurement,
    now_utc,
    per_backend_options,
    report_options,
)
from .worker import WorkerSpec, run_worker

log = logging.getLogger("max_whisper.bench")

RunWorker = Callable[[WorkerSpec, float | None], WorkerResult]


def _spec(
    options: BenchmarkOptions, backend: str, audio: list[str], *, runs: int, warmup: int, modes=None
) -> WorkerSpec:
    return WorkerSpec(
        backend=backend,
        model=options.model,
        threads=options.threads,
        audio=audio,
        modes=list(modes if modes is not None else options.modes),
        runs=runs,
        warmup=warmup,
        language=options.language,
        condition_on_previous_text=options.condition_on_previous_text,
        backend_options=dict(options.backend_options.get(backend, {})),
    )


def log_results(report: Report) -> None:
    """One structured record per clip result (``BenchmarkLogger``)."""
    records = BenchmarkLogger(log)
    for clip in report.compare_clips():
        for r in clip.results:
            if r.status == "ok" and r.timings and r.timings.total:
                records.log_benchmark_result(
                    implementation=r.backend,
                    execution_time=r.timings.total.median,
                    result_text=r.text or "",
                    audio=clip.file,
                    mode=r.mode,
                    audio_seconds=clip.duration_s,
                    real_time_factor=r.real_time_factor,
                    valid=r.valid,
                    speedup=r.speedup,
                )


def run_compare(options: BenchmarkOptions, run: RunWorker = run_worker) -> Report:
    """Every backend over the clips in every mode, judged against cpu."""
    audio = [str(a) for a in options.audio]
    log.info(
        "clips: %s; backends: %s; modes: %s; %d timed run(s) after %d warm-up, %d threads, language %s",
        ", ".join(Path(a).name for a in audio),
        ", ".join(options.backends),
        "; ".join(m.describe() for m in options.modes),
        options.runs,
        options.warmup,
        options.threads,
        options.language,
    )
    results = []
    for name in options.backends:
        result = run(_spec(options, name, audio, runs=options.runs, warmup=options.warmup), options.timeout)
        if result.status != "ok":
            BenchmarkLogger(log).log_error(name, result.reason or result.status, status=result.status)
        results.append(result)
    verdict = judge(
        [candidate(r, a, m.name) for a in audio for m in options.modes for r in results], options.tolerances
    )
    extra = per_backend_options(options)
    report = Report(
        schema=SCHEMA_ID,
        kind="compare",
        created_utc=now_utc(),
        options=report_options(options, options.modes, runs=options.runs, warmup=options.warmup),
        environment=environment(),
        backends=[backend_summary(r, extra[r.backend]) for r in results],
        clips=compare_clips(audio, options.modes, results, verdict),
    )
    log_results(report)
    return report


def run_manifest(options: BenchmarkOptions, run: RunWorker = run_worker) -> Report:
    """One backend over every clip of the manifest, one timed run each, the first mode; WER per group."""
    name, mode = options.backends[0], options.modes[0]
    manifest = Path(options.manifest)
    rows = read_manifest(manifest)
    if not rows:
        raise UsageError(f"{manifest}: the manifest lists no clips")
    missing = [r.path for r in rows if not r.path.is_file()]
    if missing:
        raise MaxWhisperError(f"{missing[0]}: no such audio file (listed in {manifest})")
    log.info("manifest %s: %d clips through %s (%s)", manifest, len(rows), name, mode.describe())
    result = run(_spec(options, name, [str(r.path) for r in rows], runs=1, warmup=0, modes=[mode]), options.timeout)
    clips = []
    for row in rows:
        m = find_measurement(result, str(row.path), mode.name)
        ok = result.status == "ok" and m is not None and m.status == "ok"
        text = m.text if ok else None
        clips.append(
            ManifestClip(
                file=row.file,
                audio=str(row.path),
                group=row.group,
                status="ok" if ok else "error",
                reason=None if ok else ((m.reason if m else None) or result.reason),
                duration_s=(m.duration_s if m else None) or row.duration_s,
                total_s=m.runs[0].total if ok else None,
                reference_text=row.reference_transcript,
                text=text,
                wer=wer(row.reference_transcript, text) if (ok and row.reference_transcript) else None,
            )
        )
    groups, overall = summarize_manifest(clips)
    return Report(
        schema=SCHEMA_ID,
        kind="manifest",
        created_utc=now_utc(),
        options=report_options(options, [mode], runs=1, warmup=0),
        environment=environment(),
        backends=[backend_summary(result, per_backend_options(options)[name])],
        clips=clips,
        groups=groups,
        overall=overall,
    )


# --------------------------------------------------------------------------- the demo: in process


@dataclass
class DemoRow:
    """One backend in the demo: its single run, and the gate's word on it."""

    result: WorkerResult
    measurement: Measurement | None
    same_as_reference: bool | None


def _in_process(options: DemoOptions, name: str, audio, duration: float) -> WorkerResult:
    from whisper.tokenizer import get_tokenizer

    from .runner import backend_attempt, backend_facts, measure, open_backend

    path = str(options.audio)
    log.info("%s: loading %s", name, options.model)
    if name == PEER:
        from .peer import EOT, Peer, unavailable_reason

        reason = unavailable_reason(options.model)
        if reason:
            return WorkerResult(name, "unavailable", reason)
        peer = Peer(options.threads)
        m = measure(
            name,
            path,
            duration,
            options.mode,
            peer.attempt(audio, options.mode, options.language),
            warmup=0,
            runs=1,
            eot=EOT,
        )
        facts, load_s, compile_s = peer.facts(), peer.load_s, None
    else:
        try:
            loaded = open_backend(name, options.model, options.threads, {})
        except BackendUnavailableError as exc:
            return WorkerResult(name, "unavailable", one_line(exc))
        except ModuleNotFoundError as exc:
            return WorkerResult(name, "unavailable", one_line(f"cannot import the {name} backend: {exc}"))
        backend = loaded.backend
        eot = get_tokenizer(backend.is_multilingual, num_languages=backend.num_languages).eot
        m = measure(
            name,
            path,
            duration,
            options.mode,
            backend_attempt(backend, audio, options.mode, options.language),
            warmup=0,
            runs=1,
            eot=eot,
        )
        facts, load_s, compile_s = backend_facts(backend), loaded.load_s, loaded.compile_s
    return WorkerResult(
        name,
        "ok",
        description=facts.description,
        device=facts.device,
        dtype=facts.dtype,
        gpu_memory_mb=facts.gpu_memory_mb,
        load_s=load_s,
        compile_s=compile_s,
        measurements=[m],
    )


@dataclass
class DemoRun:
    duration_s: float
    rows: list[DemoRow]


def run_in_process(options: DemoOptions) -> DemoRun:
    """The demo: one clip through every backend in this process, each once, judged against cpu."""
    from ..audio import audio_duration, load_audio
    from .config import Tolerances

    audio = load_audio(options.audio)
    duration = audio_duration(audio)
    results = []
    for name in options.backends:
        try:
            results.append(_in_process(options, name, audio, duration))
        except Exception as exc:  # noqa: BLE001 - a broken backend must not stop the demo
            log.debug("%s failed", name, exc_info=True)
            results.append(WorkerResult(name, "error", describe(exc)))
    path = str(options.audio)
    verdict: Verdict = judge([candidate(r, path, options.mode.name) for r in results], Tolerances())
    rows = []
    for r in results:
        j = verdict.get(path, options.mode.name, r.backend)
        rows.append(
            DemoRow(r, find_measurement(r, path, options.mode.name), j.matches_reference_backend if j else None)
        )
    return DemoRun(duration, rows)
