"""The outcome of a batch job (returned by ``transcribe_many``), and its one-paragraph rendering."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import ExitCode


@dataclass
class BatchSummary:
    """Counts, hours and time of one run of a batch job."""

    run_id: str
    output_dir: str
    results_path: str
    files: int = 0  #: inputs found (files, folder contents, manifest lines)
    done_before: int = 0  #: skipped: complete and verified from an earlier run
    pending: int = 0  #: planned for this run
    ok: int = 0  #: transcribed and written by this run
    failed: int = 0  #: failed rows written by this run
    duplicates: int = 0  #: the same path listed twice: transcribed once, written once
    audio_seconds: float = 0.0  #: audio transcribed by this run (files that succeeded)
    planned_seconds: float = 0.0  #: audio planned for this run (from the headers)
    done_seconds: float = 0.0  #: audio done before this run
    unreadable: int = 0  #: planned files whose header could not be read (missing, empty, not audio...)
    wall_seconds: float = 0.0  #: the whole run, Ray start and model loads included
    workers: int = 0
    backend: str = ""
    dry_run: bool = False
    interrupted: bool = False
    peak_rss_mb: float = 0.0  #: the driver's peak resident memory
    failures: list[str] = field(default_factory=list)  #: the first failures' one-line errors
    error: str | None = None  #: why the run stopped before every planned file had a row

    @property
    def not_finished(self) -> int:
        """Planned files with no row from this run (an interruption, or workers that kept dying)."""
        return max(0, self.pending - self.ok - self.failed - self.duplicates)

    @property
    def real_time_factor(self) -> float:
        """Wall seconds per second of audio (0.05 = 20x faster than real time)."""
        return self.wall_seconds / self.audio_seconds if self.audio_seconds else 0.0

    @property
    def exit_code(self) -> ExitCode:
        if self.interrupted:
            return ExitCode.INTERRUPTED
        if self.failed or (not self.dry_run and self.not_finished):
            return ExitCode.FAILED
        return ExitCode.OK

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(not_finished=self.not_finished, real_time_factor=round(self.real_time_factor, 5))
        return data

    def render(self) -> str:
        hours = lambda s: f"{s / 3600:.2f} h"  # noqa: E731
        files = f"{self.files} files ({self.done_before} done before, {hours(self.done_seconds)})"
        if self.dry_run:
            return (
                f"dry run: {files}; to do: {self.pending} files, {hours(self.planned_seconds)} of audio "
                f"by the headers ({self.unreadable} unreadable: missing, empty or not audio); "
                f"driver peak memory {self.peak_rss_mb:.0f} MB"
            )
        speed = f"{1 / self.real_time_factor:.1f}x real time" if self.real_time_factor else "-"
        lines = [
            f"{files}; this run: {self.ok} ok, {self.failed} failed"
            + (f", {self.duplicates} duplicates" if self.duplicates else "")
            + (f", {self.not_finished} not finished" if self.not_finished else ""),
            f"{hours(self.audio_seconds)} of audio in {self.wall_seconds:.1f} s on {self.workers} {self.backend} "
            f"workers: real-time factor {self.real_time_factor:.4f} ({speed})",
            f"results: {self.results_path}",
        ]
        if self.error:
            lines.append(self.error)
        if self.interrupted:
            lines.append("interrupted: run the same command again to finish (done files are skipped)")
        return "\n".join(lines)
