"""User-facing errors, the one-line message format and the exit codes, in one place.

Every error a user can cause (a bad file, an unknown model, a backend this machine
cannot run) is a :class:`MaxWhisperError`: the CLI prints it as one line
(:func:`one_line`) and exits with its :class:`ExitCode`, never with a traceback.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any


class ExitCode(IntEnum):
    """The exit status of every ``max-whisper`` command."""

    OK = 0  #: every file (or clip) succeeded
    FAILED = 1  #: at least one file failed, or a benchmark's transcripts did not match
    USAGE = 2  #: bad flags, unknown model, backend not available here: nothing was run
    INTERRUPTED = 130  #: Ctrl-C


def one_line(text: Any, limit: int = 1000) -> str:
    """``text`` with its whitespace folded to single spaces, cut at ``limit`` characters."""
    folded = " ".join(str(text).split())
    return folded if len(folded) <= limit else folded[: limit - 3] + "..."


def describe(exc: BaseException) -> str:
    """One line for any exception: a :class:`MaxWhisperError`'s own message, else ``Type: message``."""
    if isinstance(exc, MaxWhisperError):
        return one_line(exc) or type(exc).__name__
    return one_line(f"{type(exc).__name__}: {exc}")


class MaxWhisperError(Exception):
    """An error caused by the user's input or machine, reported as one line (no traceback)."""

    exit_code: ExitCode = ExitCode.FAILED


class UsageError(MaxWhisperError):
    """Options that contradict each other or the chosen backend: nothing was run."""

    exit_code = ExitCode.USAGE


class AudioError(MaxWhisperError):
    """The audio file is missing, unreadable, empty, not audio, or holds non-finite samples."""


class ModelError(MaxWhisperError):
    """The model name or checkpoint cannot be resolved or loaded (nothing was transcribed)."""

    exit_code = ExitCode.USAGE


class BackendUnavailableError(MaxWhisperError):
    """The requested backend cannot run on this machine (no CUDA, no MAX engine...)."""

    exit_code = ExitCode.USAGE


class InputShapeError(MaxWhisperError, ValueError):
    """A tensor handed to a backend has the wrong shape for the model."""
