"""The Ray actor: loads one backend once, then turns each planned path into a result row.

Ray Data calls :class:`TranscribeWorker` with batches of plan lines (``{"text": [json, ...]}``) and
gets back, for each line, a ``record`` (JSON: status, duration, stage times, text length, the
one-line error) and a ``result`` (whisper's result dict as JSON, empty when the file failed). A bad
file never raises: it becomes a failed record, so one file cannot fail the job. The outputs are
written by the driver, which sees each finished file exactly once.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
import warnings
from typing import Any

from ..errors import MaxWhisperError, one_line
from .options import JobOptions

#: Stages of the backend's timer reported per file.
BACKEND_STAGES = ("mel", "encode", "decode", "transcribe")


class TranscribeWorker:
    """One backend per actor process (``--workers`` of them), used for every file it is given."""

    def __init__(self, options: JobOptions) -> None:
        from ..backends import backend_class, create_backend

        self.options = options
        self.files_seen = 0
        start = time.perf_counter()
        backend_options = dict(options.backend_options)
        if len(backend_class(options.backend).capabilities.dtypes) < 2:
            backend_options.pop("dtype", None)  # the backend's only dtype: nothing to choose
        self.backend = create_backend(options.backend, options.model, threads=options.threads, **backend_options)
        self.load_seconds = time.perf_counter() - start
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        with warnings.catch_warnings():  # an actor has no terminal to show the English-only notes on
            warnings.simplefilter("ignore")
            self.whisper_options = options.transcription.for_backend(self.backend).whisper_options()

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[str]]:
        records, results = [], []
        for line in batch["text"]:
            record, result = self.process(json.loads(line))
            records.append(json.dumps(record))
            results.append(json.dumps(result) if result is not None else "")
        return {"record": records, "result": results}

    def process(self, planned: dict[str, Any]) -> tuple[dict[str, Any], Any]:
        """(record, result or None) for one planned file."""
        from ..audio import audio_duration, load_audio
        from ..decoding import transcribe

        path = planned["path"]
        record: dict[str, Any] = {
            "path": path,
            "key": planned["key"],
            "status": "failed",
            "error": None,
            "duration": planned.get("duration"),
            "backend": self.options.backend,
            "model": self.options.model,
            "worker": self.worker,
            "stages": {},
            "text_chars": None,
            "language": None,
        }
        self.files_seen += 1
        start = time.perf_counter()
        result = None
        try:
            audio = load_audio(path)
            record["stages"]["load_audio"] = round(time.perf_counter() - start, 4)
            record["duration"] = round(audio_duration(audio), 3)
            self._maybe_crash()
            self.backend.timer.reset()
            result = transcribe(self.backend, audio, verbose=None, **self.whisper_options)
            for stage in BACKEND_STAGES:
                record["stages"][stage] = round(self.backend.timer.seconds.get(stage, 0.0), 4)
            record.update(status="ok", text_chars=len(result.get("text", "").strip()), language=result.get("language"))
        except MaxWhisperError as exc:
            message = one_line(exc)
            record["error"] = message if path in message else f"{path}: {message}"
        except Exception as exc:  # an unexpected failure is this file's failure, not the job's
            record["error"] = f"{path}: internal error: {one_line(f'{type(exc).__name__}: {exc}')}"
            result = None
        record["seconds"] = round(time.perf_counter() - start, 4)
        return record, result

    def _maybe_crash(self) -> None:
        """The fault-injection hook (see :data:`~max_whisper.batch.options.CRASH_HOOK_ENV`)."""
        if not self.options.crash_hook:
            return
        marker, _, nth = self.options.crash_hook.rpartition(":")
        if self.files_seen < int(nth or 1):
            return
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
        os.kill(os.getpid(), signal.SIGKILL)
