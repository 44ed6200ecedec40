"""From the command line's INPUTS to a stream of audio paths, each with a stable key and output name.

An input is an audio file, a folder (every audio file under it, recursively, in sorted order) or a
manifest: a ``.txt`` / ``.lst`` / ``.list`` file with one path per line, or a ``.tsv`` file whose
header has a ``path`` (or ``file``) column. Relative paths in a manifest are relative to the manifest's
folder; blank lines and lines starting with ``#`` are skipped. Everything is a generator: a manifest
of millions of lines is read one line at a time.

A path that does not exist is still yielded: the job reports it as a failed row ("no such file").
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from ..audio import _SOUNDFILE_EXTENSIONS
from ..errors import MaxWhisperError

PathLike = Union[str, "os.PathLike[str]"]

#: Suffixes read as manifests rather than as audio.
MANIFEST_SUFFIXES = frozenset({".txt", ".lst", ".list", ".tsv"})
#: Column names accepted for the audio path in a TSV manifest, in order of preference.
PATH_COLUMNS = ("path", "file", "audio", "audio_path")
#: Files picked up from folders: libsndfile's formats and the containers ffmpeg decodes.
AUDIO_SUFFIXES = _SOUNDFILE_EXTENSIONS | frozenset({".m4a", ".mp4", ".aac", ".wma", ".webm", ".mkv", ".opus"})


@dataclass(frozen=True)
class AudioInput:
    """One audio file of the job."""

    #: absolute path as given (symbolic links are not resolved).
    path: str
    #: 16 hex digits of sha256(path): names the done-record and makes output names unique.
    key: str

    @property
    def output_stem(self) -> str:
        """``<audio stem>-<8 hex>``: two inputs with the same base name never share outputs."""
        return f"{Path(self.path).stem}-{self.key[:8]}"

    @property
    def output_name(self) -> str:
        """The name handed to the writers (they keep its stem): ``<output_stem><suffix>``."""
        return self.output_stem + Path(self.path).suffix


def audio_input(path: PathLike) -> AudioInput:
    absolute = os.path.abspath(os.fspath(path))
    return AudioInput(absolute, hashlib.sha256(absolute.encode("utf-8", "surrogateescape")).hexdigest()[:16])


def is_manifest(path: PathLike) -> bool:
    return Path(path).suffix.lower() in MANIFEST_SUFFIXES and os.path.isfile(path)


def _walk_folder(folder: str) -> Iterator[str]:
    for root, dirs, files in os.walk(folder, onerror=None):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and Path(name).suffix.lower() in AUDIO_SUFFIXES:
                yield os.path.join(root, name)


def _manifest_lines(manifest: str) -> Iterator[str]:
    base = os.path.dirname(os.path.abspath(manifest))
    try:
        handle = open(manifest, encoding="utf-8", newline="")  # noqa: SIM115 (closed by the with below)
    except OSError as e:
        raise MaxWhisperError(f"{manifest}: cannot read the manifest ({e.strerror or e})") from None
    with handle:
        first = handle.readline()
        header = first.rstrip("\r\n").split("\t")
        column = next((c for c in PATH_COLUMNS if c in header), None)
        if manifest.lower().endswith(".tsv") and "\t" in first and column is None:
            raise MaxWhisperError(f"{manifest}: a TSV manifest needs a 'path' column (header: {', '.join(header)})")
        if column is not None:
            index = header.index(column)
            rows: Iterable[str] = (
                row[index] if len(row) > index else ""
                for row in csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
            )
        else:
            rows = (line.rstrip("\r\n") for line in _chain_first(first, handle))
        for entry in rows:
            entry = entry.strip()
            if entry and not entry.startswith("#"):
                yield entry if os.path.isabs(entry) else os.path.join(base, entry)


def _chain_first(first: str, rest: Iterable[str]) -> Iterator[str]:
    yield first
    yield from rest


def expand_inputs(inputs: Iterable[PathLike]) -> Iterator[AudioInput]:
    """Every audio file named by ``inputs`` (files, folders, manifests), in order, lazily."""
    for item in inputs:
        text = os.fspath(item)
        if os.path.isdir(text):
            paths: Iterable[str] = _walk_folder(text)
        elif is_manifest(text):
            paths = _manifest_lines(text)
        else:
            paths = (text,)
        for path in paths:
            yield audio_input(path)
