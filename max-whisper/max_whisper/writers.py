"""Transcript output files (txt, srt, vtt, tsv, json or all), written atomically.

The formats are openai-whisper's own writers (``whisper.utils.get_writer``), so the files are
byte-for-byte what ``whisper --output_format ...`` produces. They are first written into a fresh
hidden temp directory inside ``output_dir`` and then moved into place with ``os.replace``, so a
crash or Ctrl-C never leaves a half-written output file behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Union

from whisper.utils import get_writer

from .config import OUTPUT_FORMATS
from .errors import MaxWhisperError

__all__ = ["WRITER_OPTIONS", "write_result", "output_paths"]

PathLike = Union[str, "os.PathLike[str]"]

#: whisper's word-level writer options, defaulted as its CLI does.
WRITER_OPTIONS: dict[str, Any] = {
    "highlight_words": False,
    "max_line_width": None,
    "max_line_count": None,
    "max_words_per_line": None,
}

#: Extensions in the order whisper's "all" writer produces them.
_EXTENSIONS = {"txt": ("txt",), "vtt": ("vtt",), "srt": ("srt",), "tsv": ("tsv",), "json": ("json",)}
_EXTENSIONS["all"] = ("txt", "vtt", "srt", "tsv", "json")

_TEMP_PREFIX = ".max-whisper-"


def output_paths(audio_path: PathLike, output_format: str, output_dir: PathLike) -> list[Path]:
    """The files ``write_result`` creates for ``audio_path`` (whisper names them <stem>.<ext>)."""
    if output_format not in _EXTENSIONS:
        raise MaxWhisperError(f"unknown output format {output_format!r} (choose from {', '.join(OUTPUT_FORMATS)})")
    stem = os.path.splitext(os.path.basename(os.fspath(audio_path)))[0]
    return [Path(output_dir) / f"{stem}.{ext}" for ext in _EXTENSIONS[output_format]]


def write_result(
    result: dict,
    audio_path: PathLike,
    output_format: str,
    output_dir: PathLike,
    writer_options: dict | None = None,
) -> list[Path]:
    """Write ``result`` (a whisper-style dict with ``text`` and ``segments``) for ``audio_path``.

    ``output_format`` is one of txt, srt, vtt, tsv, json or all. ``output_dir`` is created if missing.
    ``writer_options`` are whisper's (``highlight_words``, ``max_line_width``, ``max_line_count``,
    ``max_words_per_line``). Returns the paths of the files written.
    """
    finals = output_paths(audio_path, output_format, output_dir)
    options = dict(WRITER_OPTIONS)
    if writer_options:
        unknown = sorted(set(writer_options) - set(WRITER_OPTIONS))
        if unknown:
            raise MaxWhisperError(f"unknown writer option(s) {', '.join(unknown)} (known: {', '.join(WRITER_OPTIONS)})")
        options.update(writer_options)

    out_dir = Path(output_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MaxWhisperError(f"{out_dir}: cannot create the output directory ({e.strerror or e})") from None
    if not out_dir.is_dir():
        raise MaxWhisperError(f"{out_dir}: not a directory")

    try:
        tmp_dir = tempfile.mkdtemp(dir=out_dir, prefix=_TEMP_PREFIX)
    except OSError as e:
        raise MaxWhisperError(f"{out_dir}: cannot write to the output directory ({e.strerror or e})") from None
    try:
        writer = get_writer(output_format, tmp_dir)
        writer(result, os.fspath(audio_path), **options)
        staged = [Path(tmp_dir) / p.name for p in finals]
        missing = [p.name for p in staged if not p.is_file()]
        if missing:
            raise MaxWhisperError(f"whisper's {output_format} writer did not produce {', '.join(missing)}")
        for src, dst in zip(staged, finals, strict=True):
            os.replace(src, dst)
    except OSError as e:
        where = e.filename or out_dir
        raise MaxWhisperError(f"{where}: cannot write output ({e.strerror or e})") from None
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return finals
