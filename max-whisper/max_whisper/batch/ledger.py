"""What a batch job has finished: per-file done-records and the results table.

Layout of ``--output-dir``::

    <stem>-<key8>.txt / .srt / .vtt / .tsv / .json     the outputs (the project's writers, atomic)
    results.jsonl                                       one JSON object per processed file, appended
    .max-whisper-batch/done/<key>.json                  one done-record per finished file
    .max-whisper-batch/runs.jsonl                       one summary per run

A file is **done** when its done-record exists and verifies: the record's source path, size and
modification time match the audio file as it is now, its options fingerprint matches the job's, and
every output it lists exists with the recorded size and sha256. Re-running a job skips done files and
redoes every other one (new, failed, changed, options changed, outputs edited or deleted).

The done-record is written (atomically) after the outputs and before the results row, so a record
never points at outputs that are not complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .inputs import AudioInput

RESULTS_TABLE = "results.jsonl"
STATE_DIR = ".max-whisper-batch"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _source_stat(path: str) -> dict[str, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file in the same folder and ``os.replace``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@dataclass(frozen=True)
class DoneState:
    """A verified done-record: the file needs no work."""

    duration: float


class Ledger:
    """The output folder's done-records and results table, for one job fingerprint."""

    def __init__(self, output_dir: Path, fingerprint: str) -> None:
        self.output_dir = Path(output_dir)
        self.fingerprint = fingerprint
        self.done_dir = self.output_dir / STATE_DIR / "done"
        self.results_path = self.output_dir / RESULTS_TABLE
        self.runs_path = self.output_dir / STATE_DIR / "runs.jsonl"

    def create(self) -> None:
        self.done_dir.mkdir(parents=True, exist_ok=True)

    def _record_path(self, item: AudioInput) -> Path:
        return self.done_dir / f"{item.key}.json"

    def verified(self, item: AudioInput) -> DoneState | None:
        """The done state of ``item`` when its record verifies (see the module doc), else None."""
        try:
            record = json.loads(self._record_path(item).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if record.get("source") != item.path or record.get("fingerprint") != self.fingerprint:
            return None
        if record.get("source_stat") != _source_stat(item.path):
            return None
        for output in record.get("outputs") or [None]:
            if not isinstance(output, dict):
                return None
            path = self.output_dir / str(output.get("name"))
            try:
                if path.stat().st_size != output.get("size") or _sha256(path) != output.get("sha256"):
                    return None
            except OSError:
                return None
        return DoneState(duration=float(record.get("duration") or 0.0))

    def committed_in_run(self, item: AudioInput, run_id: str) -> bool:
        """Whether this run already committed ``item`` (the same path listed twice)."""
        try:
            record = json.loads(self._record_path(item).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return record.get("run_id") == run_id

    def commit(self, item: AudioInput, outputs: Iterable[Path], duration: float, run_id: str) -> None:
        """Write the done-record of ``item`` whose ``outputs`` are complete on disk."""
        record = {
            "source": item.path,
            "source_stat": _source_stat(item.path),
            "fingerprint": self.fingerprint,
            "duration": duration,
            "run_id": run_id,
            "outputs": [{"name": p.name, "size": p.stat().st_size, "sha256": _sha256(p)} for p in outputs],
        }
        write_atomic(self._record_path(item), json.dumps(record, sort_keys=True))

    def forget(self, item: AudioInput) -> None:
        """Drop ``item``'s done-record (it is about to be redone)."""
        with contextlib.suppress(FileNotFoundError):
            self._record_path(item).unlink()


class ResultsTable:
    """``results.jsonl``: one line per processed file, appended and flushed line by line."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed by close())
        if self._handle.tell() and not self._ends_with_newline():
            self._handle.write("\n")  # a row cut short by a crash stays on its own (unreadable) line

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"

    def append(self, row: dict[str, Any]) -> None:
        self._handle.write(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n")
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()


def read_results(path: Path) -> list[dict[str, Any]]:
    """Every complete row of a results table (a line cut short by a crash is left out)."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    return rows
