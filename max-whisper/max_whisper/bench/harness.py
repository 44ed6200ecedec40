"""``max-whisper demo``: one clip through every backend, side by side.

Each backend is created and run in this process, one after the other, on
the demo clip (``audio_samples/demo.wav``) or ``--audio``.  A backend that
cannot run here (the gpu backend without CUDA, the max backend without the MAX
engine) is shown with the reason; the others still run.  For timings you can
quote, use ``max-whisper benchmark`` (warm-up, repeated runs, one process per
backend, accuracy gate).

Exit status: 0 when the cpu backend ran (or, without cpu in ``--backends``, any backend ran), 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ..config import BACKENDS, DEFAULT_MODEL, DEMO_AUDIO, SHARED_AUDIO_DIR
from ..errors import BackendUnavailableError, MaxWhisperError

DEFAULT_THREADS = 2


def default_audio() -> Path:
    """``config.DEMO_AUDIO``, or the shared JFK clip when the demo clip is missing."""
    if Path(DEMO_AUDIO).is_file():
        return Path(DEMO_AUDIO)
    jfk = Path(SHARED_AUDIO_DIR) / "jfk.flac"
    return jfk if jfk.is_file() else Path(DEMO_AUDIO)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``max-whisper demo`` options."""
    parser.add_argument("--audio", default=None, metavar="FILE",
                        help="clip to transcribe; None: audio_samples/demo.wav")
    parser.add_argument("--backends", default=",".join(BACKENDS), metavar="LIST",
                        help="comma-separated backends to show")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model name or checkpoint path")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="CPU threads for every backend")
    parser.add_argument("--beam-size", type=int, default=None, help="beam search with this many beams; None: greedy")
    parser.add_argument("--language", default="en", help="spoken language")
    parser.add_argument("--width", type=int, default=None, help="transcript column width; None: fit the terminal")


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())


def run_backend(name: str, audio: Any, duration: float, args: argparse.Namespace) -> Dict[str, Any]:
    """Create ``name``, transcribe ``audio`` once; a row for the table (never raises for backend trouble)."""
    from ..backends import create_backend
    from ..decoding import transcribe
    from .metrics import result_tokens

    row: Dict[str, Any] = {"backend": name, "status": "ok", "reason": None, "load_s": None, "compile_s": None,
                           "time_s": None, "rtf": None, "text": None, "tokens": None}
    print(f"[demo] {name}: loading {args.model}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    try:
        backend = create_backend(name, args.model, threads=args.threads)
    except BackendUnavailableError as exc:
        return {**row, "status": "unavailable", "reason": _one_line(exc)}
    except ModuleNotFoundError as exc:
        return {**row, "status": "unavailable", "reason": _one_line(f"cannot import the {name} backend: {exc}")}
    except Exception as exc:  # noqa: BLE001 - a broken backend must not stop the demo
        traceback.print_exc(file=sys.stderr)
        return {**row, "status": "error", "reason": _one_line(f"{type(exc).__name__}: {exc}")}
    init = time.perf_counter() - start
    row["compile_s"] = backend.timer.seconds.get("compile")
    row["load_s"] = backend.timer.seconds.get("load", init - (row["compile_s"] or 0.0))
    options: Dict[str, Any] = {"temperature": 0.0, "language": args.language, "verbose": None}
    if args.beam_size:
        options["beam_size"] = args.beam_size
    print(f"[demo] {name}: transcribing", file=sys.stderr, flush=True)
    try:
        start = time.perf_counter()
        result = transcribe(backend, audio, **options)
        elapsed = time.perf_counter() - start
    except Exception as exc:  # noqa: BLE001
        traceback.print_exc(file=sys.stderr)
        return {**row, "status": "error", "reason": _one_line(f"{type(exc).__name__}: {exc}")}
    row.update(time_s=elapsed, rtf=elapsed / duration if duration else None,
               text=result.get("text", "").strip(), tokens=result_tokens(result))
    return row


def run_from_args(args: argparse.Namespace, console: Any = None) -> int:
    from rich.markup import escape
    from rich.table import Table

    from ..audio import audio_duration, load_audio
    from .command import find_reference
    from .metrics import wer

    from .render import make_console

    console = make_console(console)
    names: List[str] = []
    for part in (args.backends or "").split(","):
        part = part.strip().lower()
        if not part:
            continue
        if part not in BACKENDS:
            raise MaxWhisperError(f"unknown backend {part!r}; choose from {', '.join(BACKENDS)}")
        if part not in names:
            names.append(part)
    path = Path(args.audio) if args.audio else default_audio()
    audio = load_audio(path)
    duration = audio_duration(audio)
    reference, _ = find_reference(path)

    rows = [run_backend(name, audio, duration, args) for name in names]
    cpu = next((r for r in rows if r["backend"] == "cpu" and r["status"] == "ok"), None)

    table = Table(title=escape(f"{path.name}: {duration:.1f} s of audio · {args.model} · {args.threads} threads · "
                               f"{'beam ' + str(args.beam_size) if args.beam_size else 'greedy'}"),
                  title_justify="left", show_lines=True)
    table.add_column("backend", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("load s", justify="right", no_wrap=True)
    table.add_column("time s", justify="right", no_wrap=True)
    table.add_column("RTF", justify="right", no_wrap=True)
    if reference:
        table.add_column("WER", justify="right", no_wrap=True)
    table.add_column("same as cpu", no_wrap=True)
    table.add_column("text", ratio=1, min_width=20, max_width=args.width)
    for r in rows:
        if r["status"] != "ok":
            cells = [escape(r["backend"]), f"[yellow]{escape(r['status'])}[/yellow]", "–", "–", "–"]
            if reference:
                cells.append("–")
            cells += ["–", f"[dim]{escape(r['reason'] or '')}[/dim]"]
            table.add_row(*cells)
            continue
        load = (r["load_s"] or 0.0) + (r["compile_s"] or 0.0)
        if cpu is None or r is cpu:
            same = "reference" if r is cpu else "?"
        else:
            same = "[green]yes[/green]" if r["tokens"] == cpu["tokens"] else "[red]no[/red]"
        cells = [escape(r["backend"]), "[green]ok[/green]", f"{load:.2f}", f"{r['time_s']:.2f}",
                 f"{r['rtf']:.3f}" if r["rtf"] is not None else "–"]
        if reference:
            score = wer(reference, r["text"] or "")
            cells.append(f"{100 * score:.1f} %" if score is not None else "–")
        cells += [same, escape(r["text"] or "")]
        table.add_row(*cells)
    console.print(table)
    console.print("[dim]load s includes graph compilation (max); time s is one transcription, no warm-up: "
                  "use 'max-whisper benchmark' for timings to quote.[/dim]")
    if "cpu" in names:
        return 0 if cpu is not None else 1
    return 0 if any(r["status"] == "ok" for r in rows) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="max-whisper demo", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_arguments(parser)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        code = run_from_args(args)
    except MaxWhisperError as exc:
        print(f"max-whisper demo: error: {exc}", file=sys.stderr)
        code = exc.exit_code
    raise SystemExit(code)


if __name__ == "__main__":
    main()
