"""``max-whisper batch``: transcribe files, folders and manifests on a Ray cluster, resumable.

The module follows the CLI's subcommand contract (``add_arguments`` / ``run_from_args``) and also
runs on its own: ``python -m max_whisper.batch.command INPUTS... -o DIR``.

Exit codes (:class:`~max_whisper.errors.ExitCode`): 0 every file done; 1 some file failed (each
failure is a row of the results table and a line of the summary); 2 usage error (nothing run);
130 interrupted (files written so far are complete; the same command finishes the job).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from ..config import BACKENDS, DEFAULT_BACKEND, DEFAULT_MODEL, OUTPUT_FORMATS

PROG = "max-whisper batch"

EPILOG = """\
examples:
  max-whisper batch talks/ -o transcripts/                       # every audio file under talks/, 2 local actors
  max-whisper batch manifest.tsv -o out/ --workers 8 --beam-size None
  max-whisper batch manifest.txt -o out/ --dry-run               # files, hours and what is already done
  max-whisper batch manifest.txt -o /shared/out --address auto   # on the Ray cluster this node belongs to

Re-running the same command skips files whose outputs are complete and verified. Results:
DIR/results.jsonl (one JSON object per file). See docs/batch.md.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``max-whisper batch``."""
    from ..cli.args import add_decoding_arguments

    p.epilog = EPILOG
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="audio files, folders (searched recursively) and manifests (.txt/.lst: one path per line; "
        ".tsv: a 'path' column)",
    )
    p.add_argument(
        "--output-dir",
        "-o",
        required=True,
        metavar="DIR",
        help="where the outputs, results.jsonl and the done-records go (created if missing)",
    )
    p.add_argument("--output-format", "-f", choices=OUTPUT_FORMATS, default="all", help="output format(s) per file")

    g = p.add_argument_group("cluster")
    g.add_argument(
        "--address",
        default=None,
        metavar="ADDR",
        help="join the Ray cluster at ADDR ('auto': the one this node belongs to); default: start Ray here",
    )
    g.add_argument(
        "--workers",
        type=int,
        default=2,
        metavar="N",
        help="actors, each holding one model (GPU backends: one GPU each) (default: 2)",
    )
    g.add_argument(
        "--threads", type=int, default=1, metavar="N", help="CPU threads (and Ray CPUs) per actor (default: 1)"
    )
    g.add_argument(
        "--dry-run",
        action="store_true",
        help="plan only: count files, hours (from the headers) and what is already done; transcribe nothing",
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--json", action="store_true", help="print the summary as one JSON object on stdout")

    g = p.add_argument_group("model and backend")
    g.add_argument("--backend", "-b", choices=BACKENDS, default=DEFAULT_BACKEND, help="cpu, gpu or max (default: cpu)")
    g.add_argument(
        "--model", "-m", default=DEFAULT_MODEL, help=f"model name or checkpoint path (default: {DEFAULT_MODEL})"
    )
    g.add_argument("--device", default=None, help="max backend: auto, cpu or gpu (gpu: one GPU per actor)")
    g.add_argument("--dtype", default=None, help="compute type, for backends that offer more than one")

    add_decoding_arguments(p)  # the same flags, names and defaults as max-whisper transcribe


def run_from_args(args: argparse.Namespace) -> int:
    """Run the job the flags describe; print the summary; return its :class:`ExitCode`."""
    from ..cli.args import transcription_options
    from . import transcribe_many

    options = transcription_options(args).whisper_options()
    summary = transcribe_many(
        args.inputs,
        args.output_dir,
        backend=args.backend,
        model=args.model,
        workers=args.workers,
        threads=args.threads,
        device=args.device,
        dtype=args.dtype,
        output_format=args.output_format,
        address=args.address,
        dry_run=args.dry_run,
        progress=not args.no_progress and not args.json,
        **options,
    )
    if args.json:
        print(json.dumps(summary.as_dict(), sort_keys=True), flush=True)
    else:
        for failure in summary.failures:
            print(f"max-whisper: error: {failure}", file=sys.stderr)
        if summary.failed > len(summary.failures):
            print(
                f"max-whisper: ... {summary.failed - len(summary.failures)} more failures in {summary.results_path}",
                file=sys.stderr,
            )
        print(summary.render(), flush=True)
    return summary.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m max_whisper.batch.command``: the same as ``max-whisper batch``."""
    from ..cli import main as cli_main

    return cli_main(["batch", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
