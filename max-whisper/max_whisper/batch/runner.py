"""The driver of a batch job: plan, run the actor pool, write each finished file, summarize.

Data flows one way: inputs -> plan shards -> Ray Data (actors transcribe) -> this driver, which writes
each file's outputs with the project's writers, then its done-record, then its results row. Only the
driver writes into ``--output-dir``, once per finished file; a file whose actor died is retried by Ray
and reaches the driver once. Ctrl-C stops the run between two files (a file being written is
finished first), so a re-run finds every written file complete and verified.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import MaxWhisperError, UsageError, one_line
from .inputs import AudioInput
from .ledger import STATE_DIR, Ledger, ResultsTable
from .options import JobOptions
from .plan import Plan, make_plan
from .progress import JobProgress
from .summary import BatchSummary

#: Failures quoted in the summary (all of them are in the results table).
QUOTED_FAILURES = 20


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _Interrupts:
    """Ctrl-C raises KeyboardInterrupt, except inside :meth:`shielded`, where it waits for the block's end."""

    def __init__(self) -> None:
        self.shielding = False
        self.pending = False

    def _handler(self, signum: int, frame: Any) -> None:
        if self.shielding:
            self.pending = True
        else:
            raise KeyboardInterrupt

    @contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.signal(signal.SIGINT, self._handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    @contextmanager
    def shielded(self) -> Iterator[None]:
        self.shielding = True
        try:
            yield
        finally:
            self.shielding = False
        if self.pending:
            raise KeyboardInterrupt


def _check_backend(options: JobOptions) -> None:
    """Fail before Ray starts when Ray, the backend or the model cannot work (a usage error)."""
    from ..backends import backend_class
    from ..models import resolve_checkpoint

    try:
        import ray  # noqa: F401
    except ImportError:
        raise UsageError("Ray is not installed: pip install 'max-whisper[ray]' (or 'ray[data]')") from None

    try:
        cls = backend_class(options.backend)
    except ImportError as exc:
        raise UsageError(f"the {options.backend} backend is not available in this install: {exc}") from None
    capabilities = cls.capabilities
    if options.transcription.word_timestamps and not capabilities.word_timestamps:
        raise UsageError(f"--word-timestamps is not supported by the {options.backend} backend")
    device = options.backend_options.get("device")
    if device is not None and device not in capabilities.devices:
        offered = ", ".join(capabilities.devices) or "a fixed device only"
        raise UsageError(f"--device {device}: the {options.backend} backend runs on {offered}")
    dtype = options.backend_options.get("dtype")
    if dtype is not None and dtype not in capabilities.dtypes:
        raise UsageError(f"--dtype {dtype}: the {options.backend} backend computes in {', '.join(capabilities.dtypes)}")
    resolve_checkpoint(options.model)  # also fills the model cache once, before the actors read it


class _Writer:
    """Writes one finished file: outputs, done-record, results row (in that order)."""

    def __init__(self, options: JobOptions, ledger: Ledger, table: ResultsTable, summary: BatchSummary) -> None:
        self.options, self.ledger, self.table, self.summary = options, ledger, table, summary

    def finish(self, row: dict[str, Any]) -> dict[str, Any]:
        from ..writers import write_result

        record = json.loads(row["record"])
        item = AudioInput(record["path"], record["key"])
        record["run_id"] = self.summary.run_id
        record["outputs"] = []
        if record["status"] == "ok" and self.ledger.committed_in_run(item, self.summary.run_id):
            self.summary.duplicates += 1
            return record
        if record["status"] == "ok":
            start = time.perf_counter()
            try:
                written = write_result(
                    json.loads(row["result"]),
                    item.output_name,
                    self.options.output_format,
                    self.ledger.output_dir,
                    self.options.writer,
                )
                self.ledger.commit(item, written, float(record["duration"] or 0.0), self.summary.run_id)
                record["outputs"] = [p.name for p in written]
            except (MaxWhisperError, OSError) as exc:
                record.update(status="failed", error=f"{item.path}: {one_line(exc)}")
            record["stages"]["write"] = round(time.perf_counter() - start, 4)
        record["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.table.append(record)
        if record["status"] == "ok":
            self.summary.ok += 1
            self.summary.audio_seconds += float(record["duration"] or 0.0)
        else:
            self.summary.failed += 1
            if len(self.summary.failures) < QUOTED_FAILURES:
                self.summary.failures.append(record["error"])
        return record


def run_job(
    inputs: Iterable[os.PathLike | str],
    output_dir: os.PathLike | str,
    options: JobOptions,
    *,
    workers: int = 2,
    address: str | None = None,
    dry_run: bool = False,
    progress: bool = False,
) -> BatchSummary:
    """Run (or with ``dry_run`` only plan) a batch job; see :func:`max_whisper.batch.transcribe_many`."""
    if workers < 1:
        raise UsageError(f"--workers must be at least 1, got {workers}")
    start = time.perf_counter()
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--output-dir {out} exists and is not a directory")
    if not dry_run:
        _check_backend(options)
    run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:6]
    ledger = Ledger(out, options.fingerprint())
    ledger.create()
    summary = BatchSummary(
        run_id=run_id,
        output_dir=str(out),
        results_path=str(ledger.results_path),
        workers=workers,
        backend=options.backend,
        dry_run=dry_run,
    )
    plan_folder = out / STATE_DIR / f"plan-{run_id}"
    interrupts = _Interrupts()
    try:
        with interrupts.installed():
            try:
                plan = make_plan(inputs, ledger, plan_folder)
                summary.files, summary.done_before, summary.pending = plan.files, plan.done, plan.pending
                summary.planned_seconds, summary.done_seconds = plan.pending_seconds, plan.done_seconds
                summary.unreadable = plan.unreadable
                if not dry_run and plan.pending:
                    _execute(plan, options, workers, address, ledger, summary, interrupts, progress)
            except KeyboardInterrupt:
                summary.interrupted = True
    finally:
        shutil.rmtree(plan_folder, ignore_errors=True)
        summary.wall_seconds = time.perf_counter() - start
        summary.peak_rss_mb = peak_rss_mb()
        if not dry_run:
            with open(ledger.runs_path, "a", encoding="utf-8") as runs:
                runs.write(json.dumps(summary.as_dict(), sort_keys=True) + "\n")
    return summary


def _execute(
    plan: Plan,
    options: JobOptions,
    workers: int,
    address: str | None,
    ledger: Ledger,
    summary: BatchSummary,
    interrupts: _Interrupts,
    show_progress: bool,
) -> None:
    from .cluster import local_cpus, ray_session, shard_rows

    table = ResultsTable(ledger.results_path)
    writer = _Writer(options, ledger, table, summary)
    try:
        with JobProgress(plan, enabled=show_progress) as bar, ray_session(address, local_cpus(options, workers)):
            try:
                for shard, files in plan.shards:
                    for row in shard_rows(shard, files, options, workers):
                        with interrupts.shielded():
                            record = writer.finish(row)
                        bar.advance(record)
            except (KeyboardInterrupt, MaxWhisperError):
                raise
            except Exception as exc:  # Ray gave up (an actor that keeps dying, a lost node): stop, keep what is done
                summary.error = one_line(f"the Ray job stopped: {type(exc).__name__}: {exc}", limit=400)
    finally:
        table.close()
