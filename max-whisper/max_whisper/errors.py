"""User-facing errors: each carries a one-line message and the exit code the CLI uses."""


class MaxWhisperError(Exception):
    """An error caused by the user's input or machine, reported as one line (no traceback)."""

    exit_code = 1


class AudioError(MaxWhisperError):
    """The audio file is missing, unreadable, empty or not audio."""


class ModelError(MaxWhisperError):
    """The model name or checkpoint cannot be resolved or loaded."""


class BackendUnavailableError(MaxWhisperError):
    """The requested backend cannot run on this machine (no CUDA, no MAX engine...)."""

    exit_code = 2


class InputShapeError(MaxWhisperError, ValueError):
    """A tensor handed to a backend has the wrong shape for the model."""
