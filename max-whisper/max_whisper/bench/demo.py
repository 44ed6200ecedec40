"""``max-whisper demo``: one clip through every backend, side by side, in this process.

A thin command over the harness's in-process mode (:func:`.harness.run_in_process`):
each backend is created in turn and transcribes the clip once.  A backend that
cannot run here (gpu without CUDA, max without the MAX engine) is shown with the
reason; the others still run.  For timings to quote, use ``max-whisper benchmark``.

Exit status: OK when the cpu backend ran (or, without cpu in ``--backends``, any backend ran), FAILED otherwise.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..config import BACKENDS, DEFAULT_MODEL
from ..errors import ExitCode
from ..utils.logging import setup_logger
from .command import positive_int
from .config import (
    LONGFORM_CLIP,
    REFERENCE_BACKEND,
    DemoOptions,
    check_audio,
    default_audio,
    default_threads,
    parse_backends,
    parse_modes,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``max-whisper demo`` options."""
    parser.add_argument(
        "--audio",
        default=None,
        metavar="FILE",
        help=f"clip to transcribe; None: {LONGFORM_CLIP} from the shared audio folder if present, "
        "else audio_samples/demo.wav",
    )
    parser.add_argument(
        "--backends",
        default=",".join(BACKENDS),
        metavar="LIST",
        help="comma-separated backends to show: cpu, gpu, max, faster-whisper (alias: peer)",
    )
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model name or checkpoint path")
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="CPU threads for every backend; None: the CPUs this process may use",
    )
    parser.add_argument(
        "--beam-size", type=positive_int, default=None, help="beam search with this many beams; None: greedy"
    )
    parser.add_argument("--language", default="en", help="spoken language")
    parser.add_argument(
        "--width", type=positive_int, default=None, help="transcript column width; None: fit the terminal"
    )


def options_from_args(args: argparse.Namespace) -> DemoOptions:
    """The parsed ``max-whisper demo`` flags as one checked object."""
    audio = Path(args.audio) if args.audio else default_audio()
    check_audio([audio])
    return DemoOptions(
        audio=audio,
        backends=tuple(parse_backends(args.backends, add_reference=False)),
        mode=parse_modes(None, beam_size=args.beam_size)[0],
        threads=args.threads or default_threads(),
        model=args.model,
        language=args.language,
        width=args.width,
    )


def run_from_args(args: argparse.Namespace, console: Any = None) -> int:
    from .harness import run_in_process
    from .manifest import find_reference
    from .render import print_demo

    options = options_from_args(args)
    setup_logger("max_whisper.bench")
    run = run_in_process(options)
    rows = run.rows
    reference, _ = find_reference(options.audio)
    title = (
        f"{options.audio.name}: {run.duration_s:.1f} s of audio · {options.model} · {options.threads} threads"
        f" · {options.mode.describe()}"
    )
    print_demo(rows, title, reference, options.width, console)
    ran = [r.result.backend for r in rows if r.measurement is not None and r.measurement.status == "ok"]
    if REFERENCE_BACKEND in options.backends:
        return ExitCode.OK if REFERENCE_BACKEND in ran else ExitCode.FAILED
    return ExitCode.OK if ran else ExitCode.FAILED


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m max_whisper.bench.demo``: the same as ``max-whisper demo``."""
    from ..cli import main as cli_main

    return cli_main(["demo", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
