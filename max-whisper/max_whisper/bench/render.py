"""The report as terminal tables (rich): one block per clip and mode, the manifest's groups, the demo's rows."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from .config import REFERENCE_BACKEND
from .records import ClipResult, CompareClip, Report, Summary


def _s(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f} %"


def _median(result: ClipResult, stage: str) -> float | None:
    summary: Summary | None = getattr(result.timings, stage) if result.timings else None
    return summary.median if summary else None


def _short(text: str | None, limit: int = 70) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def make_console(console: Any = None) -> Any:
    from rich.console import Console

    if console is not None:
        return console
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=150)  # redirected to a file: do not squeeze the tables into 80 columns
    return console


def print_report(report: Report, console: Any = None) -> None:
    """The report as rich tables (on stdout unless ``console`` says otherwise)."""
    console = make_console(console)
    if report.kind == "manifest":
        _print_manifest(report, console)
    else:
        _print_compare(report, console)


def _options_line(report: Report) -> str:
    o = report.options
    return (
        f"model {o.model} · {o.threads} threads · language {o.language} · "
        f"condition_on_previous_text {o.condition_on_previous_text} · "
        f"{o.runs} timed run(s) after {o.warmup_runs} warm-up"
    )


TIMING_COLUMNS = (
    "backend",
    "status",
    "device",
    "dtype",
    "load",
    "compile",
    "mel",
    "encode",
    "decode",
    "other",
    "total",
    "min–max",
    "RTF",
    "tok/s",
    "RSS MB",
    "GPU MB",
)


def _timing_row(report: Report, r: ClipResult) -> list[str]:
    from rich.markup import escape

    b = report.backend(r.backend)
    if r.status != "ok" or b is None:
        return [escape(r.backend), f"[yellow]{escape(r.status)}[/yellow]"] + ["–"] * (len(TIMING_COLUMNS) - 2)
    total = r.timings.total if r.timings else None
    return [
        escape(r.backend),
        "[green]ok[/green]",
        escape(b.device or "–"),
        escape(b.dtype or "–"),
        _s(b.load_s),
        _s(b.compile_s),
        _s(_median(r, "mel"), 3),
        _s(_median(r, "encode")),
        _s(_median(r, "decode")),
        _s(_median(r, "other")),
        _s(total.median if total else None),
        f"{total.min:.2f}–{total.max:.2f}" if total else "–",
        _s(r.real_time_factor, 3),
        _s(r.tokens_per_second, 1),
        _s(b.peak_rss_mb, 0),
        _s(b.gpu_memory_mb, 0),
    ]


def _print_mode_block(report: Report, clip: CompareClip, mode: str, console: Any) -> None:
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    results = [r for r in clip.results if r.mode == mode]
    described = next((m.describe() for m in report.options.modes if m.name == mode), mode)
    title = f"{clip.file}" + (f" ({clip.duration_s:.1f} s of audio)" if clip.duration_s else "")
    rows = [_timing_row(report, r) for r in results]
    optional = ("compile", "GPU MB")  # left out when nobody filled them
    keep = [i for i, col in enumerate(TIMING_COLUMNS) if col not in optional or any(row[i] != "–" for row in rows)]
    t = Table(
        title=escape(f"{title} · mode {mode} ({described}): seconds, median of {report.options.runs} run(s)"),
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    for i in keep:
        t.add_column(TIMING_COLUMNS[i], justify="left" if i < 4 else "right", no_wrap=True)
    for row in rows:
        t.add_row(*(row[i] for i in keep))
    a = Table(
        title=escape(f"{clip.file} · mode {mode}: accuracy (reference: {REFERENCE_BACKEND}, same mode)"),
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    for col in ("backend", "WER", "tokens", "Δ tokens vs cpu", "valid", "speed-up"):
        a.add_column(col, justify="left" if col in ("backend", "valid") else "right", no_wrap=True)
    for r in results:
        if r.status != "ok":
            a.add_row(escape(r.backend), "–", "–", "–", f"[yellow]{escape(r.status)}[/yellow]", "–")
            continue
        diff = r.diff_vs_reference
        delta = (
            "reference"
            if r.backend == REFERENCE_BACKEND
            else (f"{diff.edit_distance} ({_pct(diff.token_error_rate)})" if diff else "–")
        )
        valid = {True: "[green]yes[/green]", False: "[red]NO[/red]", None: "?"}[r.valid]
        a.add_row(
            escape(r.backend), _pct(r.wer), str(r.tokens), delta, valid, f"{r.speedup:.2f}×" if r.speedup else "–"
        )
    console.print(t)
    console.print(a)
    for r in results:
        if r.valid is False:
            reason = escape(str(r.invalid_reason))
            console.print(f"[red]{escape(r.backend)} is invalid[/red] ({escape(mode)}): {reason}")
        if r.deterministic is False:
            console.print(
                f"[yellow]{escape(r.backend)} ({escape(mode)}): the timed runs did not all give the same "
                "tokens[/yellow]"
            )
        if r.status == "error":
            console.print(f"[yellow]{escape(r.backend)} ({escape(mode)})[/yellow]: {escape(_short(r.reason, 400))}")


def _print_compare(report: Report, console: Any) -> None:
    from rich.markup import escape

    console.print(f"[bold]max-whisper benchmark[/bold] · {escape(_options_line(report))}")
    machine, env = report.environment.machine, report.environment
    console.print(
        f"[dim]{escape(str(machine.cpu_model or '?'))} · {machine.cpus_usable} CPUs usable · "
        f"commit {(env.git_commit or '?')[:12]}{' (dirty)' if env.git_dirty else ''}[/dim]"
    )
    tol = report.options.tolerance
    for clip in report.compare_clips():
        for mode in report.options.modes:
            _print_mode_block(report, clip, mode.name, console)
        console.print(
            "[dim]RTF = total / audio duration (lower is faster); tok/s = tokens of all segments / total; "
            f"valid = token error rate vs cpu in the same mode ≤ {_pct(tol.default)}"
            + (f" (per backend: {escape(json.dumps(tol.per_backend))})" if tol.per_backend else "")
            + f"; the peer: normalized word difference ≤ {_pct(tol.peer)}. Invalid backends get no speed-up.[/dim]"
        )
        if clip.reference_text is None:
            console.print("[dim]no reference transcript for this clip: WER not computed[/dim]")
        console.print("[bold]transcripts[/bold]")
        for r in clip.results:
            if r.status == "ok":
                console.print(f"  [cyan]{escape(r.backend)} ({escape(r.mode)})[/cyan]: {escape(_short(r.text, 300))}")
    for b in report.backends:
        if b.status != "ok":
            console.print(f"[yellow]{escape(b.name)} {escape(b.status)}[/yellow]: {escape(_short(b.reason, 400))}")


def _print_manifest(report: Report, console: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    b = report.backends[0]
    console.print(
        f"[bold]max-whisper benchmark --manifest[/bold] {escape(str(report.options.manifest))} · "
        f"backend {escape(b.name)} · {escape(report.options.modes[0].describe())} · "
        f"{escape(_options_line(report))}"
    )
    if b.status != "ok":
        console.print(f"[red]{escape(b.name)} {escape(b.status)}[/red]: {escape(str(b.reason))}")
    t = Table(
        title="WER after openai-whisper's EnglishTextNormalizer (jiwer over each group's list)", title_justify="left"
    )
    for col in ("group", "clips", "audio s", "time s", "WER"):
        t.add_column(col, justify="left" if col == "group" else "right")
    for g in report.groups or ():
        clips = f"{g.scored}" + (f" ({g.failed} failed)" if g.failed else "")
        t.add_row(escape(g.group), clips, _s(g.duration_s, 1), _s(g.total_s, 1), _pct(g.wer))
    o = report.overall
    if o:
        label = "overall" + (f" (without {', '.join(o.excluded_groups)})" if o.excluded_groups else "")
        t.add_row(
            f"[bold]{escape(label)}[/bold]",
            str(o.scored),
            _s(o.duration_s, 1),
            _s(o.total_s, 1),
            f"[bold]{_pct(o.wer)}[/bold]",
        )
    console.print(t)
    for c in report.clips:
        if c.status != "ok":
            console.print(f"[red]{escape(c.file)}[/red]: {escape(str(c.reason))}")


def print_demo(rows: Sequence[Any], title: str, reference: str | None, width: int | None, console: Any = None) -> None:
    """The demo's table: one row per backend (``harness.DemoRow``), with its transcript."""
    from rich.markup import escape
    from rich.table import Table

    from .metrics import wer

    console = make_console(console)
    table = Table(title=escape(title), title_justify="left", show_lines=True)
    for col in (
        ("backend", "status", "device", "load s", "time s", "RTF") + (("WER",) if reference else ()) + ("same as cpu",)
    ):
        table.add_column(col, justify="right" if col.endswith(" s") or col in ("RTF", "WER") else "left", no_wrap=True)
    table.add_column("text", ratio=1, min_width=20, max_width=width)
    for row in rows:
        r, m = row.result, row.measurement
        ok = r.status == "ok" and m is not None and m.status == "ok"
        if not ok:
            status = r.status if r.status != "ok" else "error"
            reason = r.reason if r.status != "ok" else (m.reason if m else None)
            cells = [escape(r.backend), f"[yellow]{escape(status)}[/yellow]", "–", "–", "–", "–"]
            cells += ["–"] * bool(reference) + ["–", f"[dim]{escape(reason or '')}[/dim]"]
            table.add_row(*cells)
            continue
        total = m.runs[0].total
        same = {True: "[green]yes[/green]", False: "[red]no[/red]", None: "?"}[row.same_as_reference]
        if r.backend == REFERENCE_BACKEND:
            same = "reference"
        cells = [
            escape(r.backend),
            "[green]ok[/green]",
            escape(r.device or "–"),
            f"{(r.load_s or 0.0) + (r.compile_s or 0.0):.2f}",
            f"{total:.2f}",
            f"{total / m.duration_s:.3f}" if m.duration_s else "–",
        ]
        if reference:
            score = wer(reference, m.text or "")
            cells.append(f"{100 * score:.1f} %" if score is not None else "–")
        cells += [same, escape((m.text or "").strip())]
        table.add_row(*cells)
    console.print(table)
    console.print(
        "[dim]load s includes graph compilation (max); time s is one transcription, no warm-up: "
        "use 'max-whisper benchmark' for timings to quote.[/dim]"
    )
