"""Presenting benchmark reports: terminal tables (rich), JSON Lines records, PNG charts, environment facts."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from ..config import PROJECT_ROOT

#: Distributions whose versions every report records.
PACKAGES = (
    "max-whisper", "torch", "max", "openai-whisper", "numpy", "faster-whisper", "ctranslate2", "jiwer",
)

STAGE_COLORS = {"mel": "#8da0cb", "encode": "#66c2a5", "decode": "#fc8d62", "other": "#bbbbbb", "total": "#e78ac3"}


# =========================================================================== environment


def cpu_model() -> Optional[str]:
    """The CPU's model name from ``/proc/cpuinfo`` (``platform.processor()`` elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "cpu model") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or None


def machine_info() -> Dict[str, Any]:
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    memory_gb = None
    try:
        import psutil

        memory_gb = round(psutil.virtual_memory().total / 2**30, 1)
    except Exception:  # noqa: BLE001 - psutil is optional here
        pass
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "cpu_model": cpu_model(),
        "memory_gb": memory_gb,
        "hostname": platform.node() or None,
    }


def package_versions() -> Dict[str, Optional[str]]:
    versions: Dict[str, Optional[str]] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_info(root: Path = PROJECT_ROOT) -> Dict[str, Any]:
    """``{"commit": sha or None, "dirty": bool or None}`` of the checkout at ``root``."""

    def git(*args: str) -> Optional[str]:
        try:
            proc = subprocess.run(
                ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit or None, "dirty": (bool(status) if status is not None else None)}


def environment() -> Dict[str, Any]:
    git = git_info()
    return {
        "machine": machine_info(),
        "packages": package_versions(),
        "git_commit": git["commit"],
        "git_dirty": git["dirty"],
    }


def append_record(report: Mapping[str, Any], path: os.PathLike) -> None:
    """Append ``report`` (which carries machine info, versions, commit and time) as one JSON line."""
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(report, allow_nan=False, separators=(",", ":")) + "\n")


# =========================================================================== terminal


def _s(value: Optional[float], digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _pct(value: Optional[float]) -> str:
    return "–" if value is None else f"{100 * value:.2f} %"


def _stat(result: Mapping[str, Any], stage: str) -> Optional[float]:
    timing = (result.get("timings") or {}).get(stage)
    return timing["median"] if timing else None


def _short(text: Optional[str], limit: int = 70) -> str:
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


def print_report(report: Mapping[str, Any], console: Any = None) -> None:
    """The report as rich tables (on stdout unless ``console`` says otherwise)."""
    console = make_console(console)
    if report["mode"] == "manifest":
        _print_manifest(report, console)
    else:
        _print_compare(report, console)


def _options_line(report: Mapping[str, Any]) -> str:
    o = report["options"]
    decoding = f"beam {o['beam_size']}" if o.get("beam_size") else "greedy"
    return (
        f"model {o['model']} · {o['threads']} threads · {decoding} · temperature {o['temperature']} · "
        f"language {o['language']} · condition_on_previous_text {o['condition_on_previous_text']} · "
        f"{o['runs']} timed run(s) after {o['warmup_runs']} warm-up"
    )


def _print_compare(report: Mapping[str, Any], console: Any) -> None:
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    backends = {b["name"]: b for b in report["backends"]}
    console.print(f"[bold]max-whisper benchmark[/bold] · {escape(_options_line(report))}")
    env = report.get("environment") or {}
    machine = env.get("machine") or {}
    console.print(
        f"[dim]{escape(str(machine.get('cpu_model') or '?'))} · {machine.get('cpus_usable')} CPUs usable · "
        f"commit {(env.get('git_commit') or '?')[:12]}{' (dirty)' if env.get('git_dirty') else ''}[/dim]"
    )
    tol = report["options"]["tolerance"]
    for clip in report["clips"]:
        duration = clip.get("duration_s")
        title = f"{clip['file']} ({_s(duration, 1)} s of audio)" if duration else clip["file"]
        timing_cols = ("backend", "status", "load", "compile", "mel", "encode", "decode", "other", "total",
                       "min–max", "RTF", "tok/s", "RSS MB", "GPU MB")
        timing_rows: List[List[str]] = []
        a = Table(title=escape(f"{clip['file']}: accuracy (reference: cpu)"), title_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False)
        for col in ("backend", "WER", "tokens", "Δ tokens vs cpu", "valid", "speed-up"):
            a.add_column(col, justify="left" if col in ("backend", "valid") else "right", no_wrap=True)
        for r in clip["results"]:
            b = backends.get(r["backend"], {})
            total = (r.get("timings") or {}).get("total")
            if r["status"] != "ok":
                status = f"[yellow]{escape(r['status'])}[/yellow]"
                timing_rows.append([escape(r["backend"]), status] + ["–"] * 12)
                a.add_row(escape(r["backend"]), *["–"] * 3, status, "–")
                continue
            timing_rows.append([
                escape(r["backend"]), "[green]ok[/green]", _s(b.get("load_s")), _s(b.get("compile_s")),
                _s(_stat(r, "mel"), 3), _s(_stat(r, "encode")), _s(_stat(r, "decode")), _s(_stat(r, "other")),
                _s(total["median"]) if total else "–",
                f"{total['min']:.2f}–{total['max']:.2f}" if total else "–",
                _s(r.get("real_time_factor"), 3), _s(r.get("tokens_per_second"), 1),
                _s(b.get("peak_rss_mb"), 0), _s(b.get("gpu_peak_mb"), 0),
            ])
            diff = r.get("diff_vs_reference")
            delta = "reference" if r["backend"] == "cpu" else (
                f"{diff['edit_distance']} ({_pct(diff['token_error_rate'])})" if diff else "–")
            valid = {True: "[green]yes[/green]", False: "[red]NO[/red]", None: "?"}[r.get("valid")]
            speedup = f"{r['speedup']:.2f}×" if r.get("speedup") else "–"
            a.add_row(escape(r["backend"]), _pct(r.get("wer")), str(r.get("tokens")), delta, valid, speedup)
        # leave out columns nobody filled (compile without max, GPU MB without a GPU)
        keep = [i for i, col in enumerate(timing_cols)
                if i < 2 or col not in ("compile", "GPU MB") or any(row[i] != "–" for row in timing_rows)]
        t = Table(title=escape(f"{title}: seconds, median of {report['options']['runs']} timed run(s)"),
                  title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
        for i in keep:
            t.add_column(timing_cols[i], justify="left" if i < 2 else "right", no_wrap=True)
        for row in timing_rows:
            t.add_row(*(row[i] for i in keep))
        console.print(t)
        console.print(a)
        console.print(
            f"[dim]RTF = total / audio duration (lower is faster); tok/s = tokens of all segments / total; "
            f"valid = token error rate vs cpu ≤ {_pct(tol['default'])}"
            + (f" (per backend: {escape(json.dumps(tol['per_backend']))})" if tol.get("per_backend") else "")
            + f"; the peer: normalized word difference ≤ {_pct(report['options']['peer_tolerance']['default'])}. "
            "Invalid backends get no speed-up.[/dim]"
        )
        if clip.get("reference_text") is None:
            console.print("[dim]no reference transcript for this clip: WER not computed[/dim]")
        for r in clip["results"]:
            if r.get("valid") is False:
                console.print(f"[red]{escape(r['backend'])} is invalid[/red]: {escape(str(r.get('invalid_reason')))}")
            if r.get("deterministic") is False:
                console.print(f"[yellow]{escape(r['backend'])}: the timed runs did not all give the same tokens[/yellow]")
        console.print("[bold]transcripts[/bold]")
        for r in clip["results"]:
            if r["status"] == "ok":
                console.print(f"  [cyan]{escape(r['backend'])}[/cyan]: {escape(_short(r.get('text'), 300))}")
    for b in report["backends"]:
        if b["status"] != "ok":
            console.print(f"[yellow]{escape(b['name'])} {escape(b['status'])}[/yellow]: {escape(_short(b.get('reason'), 400))}")


def _print_manifest(report: Mapping[str, Any], console: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    b = report["backends"][0]
    console.print(f"[bold]max-whisper benchmark --manifest[/bold] {escape(str(report['options'].get('manifest')))} · "
                  f"backend {escape(b['name'])} · {escape(_options_line(report))}")
    if b["status"] != "ok":
        console.print(f"[red]{escape(b['name'])} {escape(b['status'])}[/red]: {escape(str(b.get('reason')))}")
    t = Table(title="WER after openai-whisper's EnglishTextNormalizer (jiwer over each group's list)",
              title_justify="left")
    for col in ("group", "clips", "audio s", "time s", "WER"):
        t.add_column(col, justify="left" if col == "group" else "right")
    for g in report["groups"]:
        clips = f"{g['scored']}" + (f" ({g['failed']} failed)" if g["failed"] else "")
        t.add_row(escape(g["group"]), clips, _s(g["duration_s"], 1), _s(g["total_s"], 1), _pct(g["wer"]))
    o = report.get("overall")
    if o:
        label = "overall" + (f" (without {', '.join(o['excluded_groups'])})" if o.get("excluded_groups") else "")
        t.add_row(f"[bold]{escape(label)}[/bold]", str(o["scored"]), _s(o["duration_s"], 1), _s(o["total_s"], 1),
                  f"[bold]{_pct(o['wer'])}[/bold]")
    console.print(t)
    for c in report["clips"]:
        if c["status"] != "ok":
            console.print(f"[red]{escape(c['file'])}[/red]: {escape(str(c.get('reason')))}")


# =========================================================================== chart


def write_plot(report: Mapping[str, Any], path: os.PathLike) -> None:
    """A stacked bar chart (mel / encode / decode / other, medians) per backend and clip, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clips: List[Mapping[str, Any]] = report["clips"]
    labels = {b["name"]: b["label"] for b in report["backends"]}
    fig, axes = plt.subplots(len(clips), 1, figsize=(9, 1.2 + 0.6 * max(len(c["results"]) for c in clips) * len(clips)
                                                     + 0.8 * len(clips)), squeeze=False)
    for ax, clip in zip(axes[:, 0], clips):
        rows = [r for r in clip["results"] if r["status"] == "ok"]
        names = [labels.get(r["backend"], r["backend"]) for r in rows]
        y = list(range(len(rows)))[::-1]
        used = set()
        for yi, r in zip(y, rows):
            left = 0.0
            stages = [s for s in ("mel", "encode", "decode", "other") if _stat(r, s) is not None]
            if not stages:
                stages = ["total"]
            hatch = "//" if r.get("valid") is False else None
            for stage in stages:
                width = _stat(r, stage) or 0.0
                ax.barh(yi, width, left=left, color=STAGE_COLORS[stage], hatch=hatch, edgecolor="black",
                        linewidth=0.4, label=stage if stage not in used else None)
                used.add(stage)
                left += width
            note = f" {left:.2f} s"
            if r.get("speedup") and r["backend"] != "cpu":
                note += f" ({r['speedup']:.2f}×)"
            if r.get("valid") is False:
                note += " INVALID: transcript differs from cpu"
            ax.text(left, yi, note, va="center", fontsize=8)
        ax.set_yticks(y)
        ax.set_yticklabels(names)
        ax.set_xlabel("seconds (median)")
        duration = clip.get("duration_s")
        ax.set_title(f"{clip['file']}" + (f" ({duration:.1f} s of audio)" if duration else ""), fontsize=10)
        ax.set_xlim(0, max([sum(_stat(r, s) or 0 for s in ("mel", "encode", "decode", "other")) or (_stat(r, "total") or 0)
                            for r in rows] + [1e-3]) * 1.6)
        if used:
            ax.legend(loc="lower right", fontsize=8)
    o = report["options"]
    fig.suptitle(f"max-whisper {o['model']}, {o['threads']} threads, "
                 f"{'beam ' + str(o['beam_size']) if o.get('beam_size') else 'greedy'}, T={o['temperature']}",
                 fontsize=11)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":  # pragma: no cover - handy for re-rendering saved JSON
    data = json.load(open(sys.argv[1])) if len(sys.argv) > 1 else json.load(sys.stdin)
    print_report(data)
