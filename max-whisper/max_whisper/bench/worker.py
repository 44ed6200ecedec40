"""The per-backend process, ``python -m max_whisper.bench.worker SPEC.json OUT.json``, and :func:`run_worker`,
which starts it from the harness.

It loads one backend (or the peer) once, measures every clip in every mode
(:func:`.runner.measure`), and writes a :class:`.records.WorkerResult` as JSON.
Running each backend in its own process keeps its peak RSS its own and stops
one backend from warming another's caches.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import BackendUnavailableError, ExitCode, MaxWhisperError, describe, one_line
from ..utils.logging import setup_logger
from .config import PEER
from .records import Measurement, Mode, WorkerResult
from .runner import Attempt, backend_attempt, backend_facts, measure, open_backend
from .schema import from_jsonable, to_jsonable

log = logging.getLogger("max_whisper.bench")


@dataclass
class WorkerSpec:
    """What one worker is asked to run."""

    backend: str
    model: str
    threads: int
    audio: list[str]
    modes: list[Mode]
    runs: int
    warmup: int
    language: str | None
    condition_on_previous_text: bool = True
    #: constructor keywords for this backend (``--backend-opt``).
    backend_options: dict[str, Any] = field(default_factory=dict)


AttemptFactory = Callable[[Any, Mode], Callable[[], Attempt]]


def _measure_all(spec: WorkerSpec, attempt_for: AttemptFactory, eot: int) -> list[Measurement]:
    """Every clip in every mode; an unreadable clip is recorded as an error in each mode."""
    from ..audio import audio_duration, load_audio

    measurements = []
    for path in spec.audio:
        try:
            audio = load_audio(path)
        except MaxWhisperError as exc:
            measurements += [
                Measurement(audio=path, mode=m.name, status="error", reason=one_line(exc)) for m in spec.modes
            ]
            continue
        duration = audio_duration(audio)
        for mode in spec.modes:
            measurements.append(
                measure(
                    spec.backend,
                    path,
                    duration,
                    mode,
                    attempt_for(audio, mode),
                    warmup=spec.warmup,
                    runs=spec.runs,
                    eot=eot,
                )
            )
    return measurements


def run_backend(spec: WorkerSpec) -> WorkerResult:
    import torch
    from whisper.tokenizer import get_tokenizer

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    log.info("%s: loading %s (%d threads)", spec.backend, spec.model, spec.threads)
    try:
        loaded = open_backend(spec.backend, spec.model, spec.threads, spec.backend_options)
    except BackendUnavailableError as exc:
        return WorkerResult(spec.backend, "unavailable", one_line(exc))
    except ModuleNotFoundError as exc:
        return WorkerResult(spec.backend, "unavailable", one_line(f"cannot import the {spec.backend} backend: {exc}"))
    backend = loaded.backend
    eot = get_tokenizer(backend.is_multilingual, num_languages=backend.num_languages).eot
    measurements = _measure_all(
        spec,
        lambda audio, mode: backend_attempt(backend, audio, mode, spec.language, spec.condition_on_previous_text),
        eot,
    )
    facts = backend_facts(backend)
    return WorkerResult(
        backend=spec.backend,
        status="ok",
        description=json.loads(json.dumps(facts.description, default=str)),
        device=facts.device,
        dtype=facts.dtype,
        gpu_memory_mb=facts.gpu_memory_mb,
        load_s=loaded.load_s,
        compile_s=loaded.compile_s,
        measurements=measurements,
    )


def run_peer(spec: WorkerSpec) -> WorkerResult:
    from .peer import EOT, Peer, unavailable_reason

    reason = unavailable_reason(spec.model)
    if reason:
        return WorkerResult(PEER, "unavailable", reason)
    peer = Peer(spec.threads)
    measurements = _measure_all(
        spec, lambda audio, mode: peer.attempt(audio, mode, spec.language, spec.condition_on_previous_text), EOT
    )
    facts = peer.facts()
    return WorkerResult(
        backend=PEER,
        status="ok",
        description=facts.description,
        device=facts.device,
        dtype=facts.dtype,
        gpu_memory_mb=None,
        load_s=peer.load_s,
        compile_s=None,
        measurements=measurements,
    )


# --------------------------------------------------------------------------- the parent's side


def run_worker(spec: WorkerSpec, timeout: float | None = None) -> WorkerResult:
    """Run one backend in a fresh ``python -m max_whisper.bench.worker`` process."""
    if spec.backend == PEER:
        from .peer import unavailable_reason

        reason = unavailable_reason(spec.model)
        if reason:  # known without starting a process
            return WorkerResult(PEER, "unavailable", reason)
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(spec.threads)
    with tempfile.TemporaryDirectory(prefix="max-whisper-bench-") as tmp:
        spec_path, out_path = os.path.join(tmp, "spec.json"), os.path.join(tmp, "out.json")
        with open(spec_path, "w", encoding="utf-8") as f:
            json.dump(to_jsonable(spec), f)
        cmd = [sys.executable, "-m", "max_whisper.bench.worker", spec_path, out_path]
        start = time.perf_counter()
        try:
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, env=env, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            _forward(exc.stdout)
            return WorkerResult(
                spec.backend,
                "error",
                f"the worker timed out after {timeout:.0f} s",
                worker_wall_s=time.perf_counter() - start,
            )
        _forward(proc.stdout)
        wall = time.perf_counter() - start
        if not os.path.exists(out_path):
            return WorkerResult(
                spec.backend,
                "error",
                f"the worker process exited with status {proc.returncode} without a result (see the log above)",
                worker_wall_s=wall,
            )
        with open(out_path, encoding="utf-8") as f:
            result = from_jsonable(WorkerResult, json.load(f))
    result.worker_wall_s = wall
    return result


def _forward(data: bytes | None) -> None:
    """Copy a worker's stdout to our stderr (stdout is reserved for the report)."""
    if data:
        sys.stderr.write(data.decode("utf-8", "replace"))
        sys.stderr.flush()


def peak_rss_mb() -> float | None:
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return None
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 2**20 if sys.platform == "darwin" else kb / 1024.0  # macOS reports bytes, Linux kilobytes


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 2:
        print("usage: python -m max_whisper.bench.worker SPEC.json OUT.json", file=sys.stderr)
        return ExitCode.USAGE
    setup_logger("max_whisper.bench")
    with open(argv[0], encoding="utf-8") as f:
        spec = from_jsonable(WorkerSpec, json.load(f))
    try:
        result = run_peer(spec) if spec.backend == PEER else run_backend(spec)
    except BaseException as exc:  # noqa: BLE001 - report anything; the parent decides
        log.error("%s failed", spec.backend, exc_info=True)
        result = WorkerResult(spec.backend, "error", describe(exc))
    if result.status == "ok":
        result.peak_rss_mb = peak_rss_mb()
    with open(argv[1], "w", encoding="utf-8") as f:
        json.dump(to_jsonable(result), f)
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(int(main()))
