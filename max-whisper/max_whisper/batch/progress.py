"""The progress bar of a batch job: files and hours of audio, on stderr (rich)."""

from __future__ import annotations

from typing import Any

from .plan import Plan


class JobProgress:
    """Two bars over the plan: files (ok + failed) and audio hours (from the headers)."""

    def __init__(self, plan: Plan, enabled: bool = True) -> None:
        self.plan = plan
        self.enabled = enabled
        self._progress: Any | None = None

    def __enter__(self) -> JobProgress:
        if not self.enabled:
            return self
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn("{task.description:>5}"),
            BarColumn(),
            TextColumn("{task.fields[note]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self._progress.start()
        self._done = self._failed = 0
        self._seconds = 0.0
        self._files = self._progress.add_task("files", total=self.plan.pending, note=self._files_note())
        self._hours = self._progress.add_task(
            "audio", total=max(self.plan.pending_seconds, 1e-9), note=self._hours_note()
        )
        return self

    def _files_note(self) -> str:
        return f"{self._done}/{self.plan.pending} files, {self._failed} failed"

    def _hours_note(self) -> str:
        return f"{self._seconds / 3600:.2f}/{self.plan.pending_seconds / 3600:.2f} h"

    def advance(self, record: dict[str, Any]) -> None:
        if self._progress is None:
            return
        self._done += 1
        self._failed += record.get("status") != "ok"
        self._seconds += float(record.get("duration") or 0.0)
        self._progress.update(self._files, advance=1, note=self._files_note())
        self._progress.update(self._hours, completed=self._seconds, note=self._hours_note())

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.stop()
