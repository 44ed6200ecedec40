"""``--plot``: stacked bars of the stage medians per backend, one panel per clip and mode (matplotlib, PNG)."""

from __future__ import annotations

import os
from pathlib import Path

from .records import ClipResult, CompareClip, Report

STAGES = ("mel", "encode", "decode", "other")
STAGE_COLORS = {"mel": "#8da0cb", "encode": "#66c2a5", "decode": "#fc8d62", "other": "#bbbbbb", "total": "#e78ac3"}


def _median(result: ClipResult, stage: str) -> float | None:
    summary = getattr(result.timings, stage) if result.timings else None
    return summary.median if summary else None


def _panel(ax, report: Report, clip: CompareClip, mode: str) -> None:
    labels = {b.name: b.label for b in report.backends}
    rows = [r for r in clip.results if r.mode == mode and r.status == "ok"]
    ys = list(range(len(rows)))[::-1]
    used = set()
    widest = 1e-3
    for y, r in zip(ys, rows, strict=True):
        stages = [s for s in STAGES if _median(r, s) is not None] or ["total"]
        hatch = "//" if r.valid is False else None
        left = 0.0
        for stage in stages:
            width = _median(r, stage) or 0.0
            ax.barh(
                y,
                width,
                left=left,
                color=STAGE_COLORS[stage],
                hatch=hatch,
                edgecolor="black",
                linewidth=0.4,
                label=stage if stage not in used else None,
            )
            used.add(stage)
            left += width
        widest = max(widest, left)
        note = f" {left:.2f} s"
        if r.speedup and r.backend != "cpu":
            note += f" ({r.speedup:.2f}×)"
        if r.valid is False:
            note += " INVALID: transcript differs from cpu"
        ax.text(left, y, note, va="center", fontsize=8)
    ax.set_yticks(ys)
    ax.set_yticklabels([labels.get(r.backend, r.backend) for r in rows])
    ax.set_xlabel("seconds (median)")
    duration = f" ({clip.duration_s:.1f} s of audio)" if clip.duration_s else ""
    ax.set_title(f"{clip.file}{duration} · {mode}", fontsize=10)
    ax.set_xlim(0, widest * 1.6)
    if used:
        ax.legend(loc="lower right", fontsize=8)


def write_plot(report: Report, path: os.PathLike) -> None:
    """Write the chart of a ``compare`` report as PNG; invalid backends are hatched and labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: list[tuple[CompareClip, str]] = [(c, m.name) for c in report.compare_clips() for m in report.options.modes]
    n_rows = max([len([r for r in c.results if r.mode == m]) for c, m in panels] + [1])
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 1.2 + (0.6 * n_rows + 0.8) * len(panels)), squeeze=False)
    for ax, (clip, mode) in zip(axes[:, 0], panels, strict=True):
        _panel(ax, report, clip, mode)
    o = report.options
    fig.suptitle(f"max-whisper {o.model}, {o.threads} threads", fontsize=11)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
