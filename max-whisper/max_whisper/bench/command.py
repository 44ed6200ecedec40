"""``max-whisper benchmark``: the same clips through every backend, timed per stage, gated on accuracy.

Every backend (``cpu``, ``gpu``, ``max``, and the ``faster-whisper`` peer) runs
in its own worker process (:mod:`.worker`), one after the other.  Each loads its
backend once, then for every clip and decoding mode (``--modes``) does
``--warmup`` untimed and ``--runs`` timed transcriptions.  The ``cpu`` transcript
in the same mode is the reference (:mod:`.gate`); only a valid backend gets a
speed-up.  ``docs/benchmark.md`` describes the measurements and the JSON document.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from ..config import DEFAULT_MODEL, SHARED_AUDIO_DIR
from ..errors import UsageError
from ..utils.logging import setup_logger
from .config import (
    DEFAULT_PEER_TOLERANCE,
    DEFAULT_RUNS,
    DEFAULT_TIMEOUT,
    DEFAULT_WARMUP,
    LONGFORM_CLIP,
    REFERENCE_BACKEND,
    BenchmarkOptions,
    Tolerances,
    check_audio,
    default_audio,
    default_threads,
    parse_backend_options,
    parse_backends,
    parse_fraction,
    parse_modes,
    parse_tolerances,
)

log = logging.getLogger("max_whisper.bench")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``max-whisper benchmark`` options."""
    parser.add_argument(
        "--backends",
        default=None,
        metavar="LIST",
        help="comma-separated backends to run: cpu, gpu, max and faster-whisper (alias: peer); None: all of "
        "them. cpu is always added (it is the reference). Unavailable ones are reported with the reason.",
    )
    parser.add_argument(
        "--audio",
        nargs="+",
        metavar="FILE",
        default=None,
        help=f"clip(s) to transcribe; None: {LONGFORM_CLIP} from the shared audio folder if present, "
        "else audio_samples/demo.wav",
    )
    parser.add_argument(
        "--modes",
        default=None,
        metavar="LIST",
        help="comma-separated decoding modes, each measured on every backend: greedy (no beam, one temperature), "
        "beamN (e.g. beam5: beam search with N beams, one temperature), default (beam 5, best of 5, whisper's "
        "temperature fallback 0, 0.2, ... 1.0, as 'max-whisper transcribe' does). None: greedy",
    )
    parser.add_argument("--runs", type=positive_int, default=DEFAULT_RUNS, help="timed runs per clip, mode and backend")
    parser.add_argument(
        "--warmup",
        type=non_negative_int,
        default=DEFAULT_WARMUP,
        help="untimed warm-up runs per clip, mode and backend",
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="CPU threads for every backend (torch, CTranslate2, OMP/MKL); None: the CPUs this process may use",
    )
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model name or checkpoint path")
    parser.add_argument(
        "--beam-size", type=positive_int, default=None, help="shorthand for --modes beamN (one mode); None: see --modes"
    )
    parser.add_argument(
        "--temperature",
        type=float,
        default=0.0,
        help="the one temperature of the greedy and beamN modes (no fallback, so runs are comparable)",
    )
    parser.add_argument("--language", default="en", help="spoken language (fixed, so no backend detects it)")
    parser.add_argument(
        "--no-condition-on-previous-text",
        dest="condition_on_previous_text",
        action="store_false",
        default=True,
        help="do not prompt each window with the previous window's text",
    )
    parser.add_argument(
        "--tolerance",
        action="append",
        metavar="RATE",
        default=None,
        help="largest token error rate vs cpu (edit distance / cpu tokens) for a backend to count as valid: "
        "0, 0.01 or 1%%; NAME=RATE sets one backend's (e.g. gpu=1%%); repeatable. None: 0 (identical tokens)",
    )
    parser.add_argument(
        "--peer-tolerance",
        default=str(DEFAULT_PEER_TOLERANCE),
        metavar="RATE",
        help="largest normalized word difference from the cpu text for the faster-whisper peer to count as valid",
    )
    parser.add_argument(
        "--backend-opt",
        action="append",
        metavar="NAME.KEY=VALUE",
        default=None,
        help="a keyword option of one backend, checked before anything runs; repeatable. e.g. max.device=cpu, "
        "max.dtype=float32 (a key the backend does not take is an error that lists the ones it does)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON document on stdout (docs/benchmark.md); progress goes to stderr",
    )
    parser.add_argument(
        "--save",
        metavar="FILE",
        default=None,
        help="append this run (with machine info, package versions, git commit) to FILE as one JSON line",
    )
    parser.add_argument(
        "--plot", metavar="FILE.png", default=None, help="write stacked bars of the stage times (compare mode)"
    )
    parser.add_argument(
        "--manifest",
        nargs="?",
        const=str(Path(SHARED_AUDIO_DIR) / "manifest.tsv"),
        default=None,
        metavar="FILE",
        help="manifest mode: run ONE backend (--backends NAME, cpu when not given) over every clip of FILE "
        "(the shared audio manifest.tsv when FILE is left out), one run each in the first mode, and report WER "
        "per group and overall",
    )
    parser.add_argument(
        "--fail-on-invalid", action="store_true", help="exit with status 1 when a backend is marked invalid"
    )
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds allowed per backend worker")


def options_from_args(args: argparse.Namespace) -> BenchmarkOptions:
    """The parsed ``max-whisper benchmark`` flags as one checked object."""
    default, per_backend = parse_tolerances(args.tolerance)
    manifest = Path(args.manifest) if args.manifest else None
    if manifest is not None:
        backends = parse_backends(args.backends or REFERENCE_BACKEND, add_reference=False)
        if len(backends) != 1:
            raise UsageError(f"--manifest runs one backend; --backends names {len(backends)} ({', '.join(backends)})")
        audio: tuple[Path, ...] = ()
    else:
        backends = parse_backends(args.backends)
        audio = tuple(Path(a) for a in (args.audio or [default_audio()]))
        check_audio(audio)
    return BenchmarkOptions(
        backends=tuple(backends),
        audio=audio,
        modes=tuple(parse_modes(args.modes, beam_size=args.beam_size, temperature=args.temperature)),
        runs=args.runs,
        warmup=args.warmup,
        threads=args.threads or default_threads(),
        model=args.model,
        language=args.language,
        condition_on_previous_text=args.condition_on_previous_text,
        tolerances=Tolerances(default, per_backend, parse_fraction(args.peer_tolerance)),
        backend_options=parse_backend_options(args.backend_opt),
        manifest=manifest,
        json=args.json,
        save=Path(args.save) if args.save else None,
        plot=Path(args.plot) if args.plot else None,
        fail_on_invalid=args.fail_on_invalid,
        timeout=args.timeout,
    )


def run_from_args(args: argparse.Namespace) -> int:
    """Run the benchmark the parsed flags describe; return an ``ExitCode``.

    OK: done; FAILED: the cpu reference failed, nothing ran, or (``--fail-on-invalid``)
    some backend was invalid; USAGE: a bad option (raised as ``errors.UsageError``).
    """
    from . import harness
    from .render import print_report
    from .report import append_record, exit_status, report_json

    options = options_from_args(args)
    setup_logger("max_whisper.bench")
    report = harness.run_manifest(options) if options.manifest else harness.run_compare(options)
    if options.json:
        sys.stdout.write(report_json(report) + "\n")
        sys.stdout.flush()
    else:
        print_report(report)
    if options.save:
        append_record(report, options.save)
        log.info("appended this run to %s", options.save)
    if options.plot:
        if report.kind == "compare":
            from .plot import write_plot

            write_plot(report, options.plot)
            log.info("wrote %s", options.plot)
        else:
            log.warning("--plot applies to the comparison mode only; skipped")
    return exit_status(report, fail_on_invalid=options.fail_on_invalid)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="max-whisper benchmark",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Time the cpu, gpu and max backends (and faster-whisper) on the same audio; "
        "compare their transcripts with cpu.",
    )
    add_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m max_whisper.bench.command``, ``benchmarks/run_benchmark.py``: ``max-whisper benchmark``."""
    from ..cli import main as cli_main

    return cli_main(["benchmark", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
