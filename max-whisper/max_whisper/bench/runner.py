"""The one measuring loop: load a backend, warm up, time runs; shared by the worker and the demo."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import describe
from .metrics import result_tokens, text_tokens
from .records import Measurement, Mode, RunTiming

log = logging.getLogger("max_whisper.bench")


@dataclass
class Attempt:
    """One transcription: its timing and transcript."""

    timing: RunTiming
    tokens: list[int]
    text: str
    language: str | None


@dataclass
class LoadedBackend:
    backend: Any  # a max_whisper.backends.Backend
    load_s: float
    compile_s: float | None


@dataclass
class BackendFacts:
    """What a backend says about itself, for the report."""

    description: dict[str, Any]
    device: str | None
    dtype: str | None
    gpu_memory_mb: float | None


def open_backend(name: str, model: str, threads: int | None, options: dict[str, Any]) -> LoadedBackend:
    """Create the backend, timing ``load`` (and ``compile`` where the backend compiles graphs)."""
    from ..backends import create_backend

    start = time.perf_counter()
    backend = create_backend(name, model, threads=threads, **options)
    elapsed = time.perf_counter() - start
    compile_s = backend.timer.seconds.get("compile")
    load_s = backend.timer.seconds.get("load", elapsed - (compile_s or 0.0))
    return LoadedBackend(backend, load_s, compile_s)


def backend_attempt(
    backend: Any, audio: Any, mode: Mode, language: str | None, condition_on_previous_text: bool = True
) -> Callable[[], Attempt]:
    """A function that transcribes ``audio`` once with ``backend`` in ``mode``, timed per stage."""
    from ..decoding import transcribe

    options: dict[str, Any] = dict(
        mode.decode_options(), language=language, verbose=None, condition_on_previous_text=condition_on_previous_text
    )

    def once() -> Attempt:
        timer = backend.timer
        timer.reset("mel", "encode", "decode", "transcribe")
        start = time.perf_counter()
        result = transcribe(backend, audio, **options)
        total = time.perf_counter() - start
        mel = timer.seconds.get("mel")  # whisper's own log-mel call, timed by decoding.transcribe
        encode, decode = timer.seconds.get("encode", 0.0), timer.seconds.get("decode", 0.0)
        timing = RunTiming(
            total=total, mel=mel, encode=encode, decode=decode, other=max(total - (mel or 0.0) - encode - decode, 0.0)
        )
        return Attempt(timing, result_tokens(result), result.get("text", ""), result.get("language"))

    return once


def backend_facts(backend: Any) -> BackendFacts:
    """Device, dtype and peak GPU memory of a backend that has run, from ``describe()`` and its declarations."""
    description = backend.describe()
    if backend.device.type == "cuda":
        import torch

        device: str | None = "gpu"
        gpu_memory = torch.cuda.max_memory_allocated(backend.device) / 2**20
    else:
        device = description.get("device") or backend.device.type
        used = description.get("gpu_memory_used_bytes")  # what the GPU reports in use (MAX has no peak counter)
        gpu_memory = used / 2**20 if (device == "gpu" and used is not None) else None
    dtype = description.get("dtype") or ("float16" if backend.fp16 else backend.capabilities.dtypes[0])
    return BackendFacts(description, device, dtype, gpu_memory)


def measure(
    label: str,
    audio_path: str,
    duration: float,
    mode: Mode,
    once: Callable[[], Attempt],
    *,
    warmup: int,
    runs: int,
    eot: int,
) -> Measurement:
    """``warmup`` untimed runs, then ``runs`` timed ones; an exception is recorded, not raised."""
    name = Path(audio_path).name
    attempts: list[Attempt] = []
    warmup_s: float | None = None
    try:
        for i in range(warmup + runs):
            attempt = once()
            if i < warmup:
                warmup_s = (warmup_s or 0.0) + attempt.timing.total
                log.info("%s: %s [%s]: warm-up %.2f s", label, name, mode.name, attempt.timing.total)
            else:
                attempts.append(attempt)
                log.info(
                    "%s: %s [%s]: run %d/%d %.2f s", label, name, mode.name, len(attempts), runs, attempt.timing.total
                )
    except Exception as exc:  # noqa: BLE001 - one clip's failure is reported, the others still run
        log.debug("%s failed", label, exc_info=True)
        return Measurement(audio=audio_path, mode=mode.name, status="error", duration_s=duration, reason=describe(exc))
    last = attempts[-1]
    return Measurement(
        audio=audio_path,
        mode=mode.name,
        status="ok",
        duration_s=duration,
        warmup_s=warmup_s,
        runs=[a.timing for a in attempts],
        tokens=last.tokens,
        text_tokens=len(text_tokens(last.tokens, eot)),
        deterministic=all(a.tokens == last.tokens for a in attempts),
        text=last.text,
        language=last.language,
    )
