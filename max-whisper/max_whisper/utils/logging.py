"""Structured logging: human-readable or one JSON object per line, on stderr.

Usage (the interface the project's guide describes)::

    from max_whisper.utils.logging import setup_logger, BenchmarkLogger

    logger = setup_logger("my_component", json_output=True)
    BenchmarkLogger(logger).log_benchmark_result(
        implementation="max", execution_time=0.123, result_text="transcription...", audio_seconds=11.0
    )

A JSON record holds ``timestamp`` (ISO 8601, UTC), ``level``, ``logger``,
``message``, every field passed through ``extra=`` and, for exceptions,
``exception`` (the formatted traceback).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any, TextIO

__all__ = ["JSONFormatter", "HumanFormatter", "setup_logger", "BenchmarkLogger", "extra_fields"]

#: Attributes every ``logging.LogRecord`` has; anything else on a record came from ``extra=``.
_RECORD_ATTRIBUTES = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys() | {"message", "asctime", "taskName"}
)


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a caller attached to ``record`` with ``extra=``."""
    return {key: value for key, value in record.__dict__.items() if key not in _RECORD_ATTRIBUTES}


def _json_default(value: Any) -> Any:
    """Make numpy scalars/arrays, paths, sets and the like serialisable."""
    for attr in ("item", "tolist"):  # numpy scalars and arrays, torch tensors
        method = getattr(value, attr, None)
        if callable(method):
            try:
                return method()
            except Exception:  # pragma: no cover - fall through to str()
                pass
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


class JSONFormatter(logging.Formatter):
    """Formats each record as one line of JSON."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in extra_fields(record).items():
            payload.setdefault(key, value)
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            payload["stack"] = self.formatStack(record.stack_info)
        return json.dumps(payload, default=_json_default, ensure_ascii=False)


class HumanFormatter(logging.Formatter):
    """``time LEVEL logger: message key=value ...`` on one line (plus a traceback when there is one)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extras = extra_fields(record)
        if extras:
            fields = " ".join(f"{key}={_short(value)}" for key, value in extras.items())
            first, sep, rest = text.partition("\n")
            text = f"{first} [{fields}]{sep}{rest}"
        return text


def _short(value: Any, limit: int = 80) -> str:
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    text = text.replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is *now* (so redirection and pytest capture work)."""

    def __init__(self) -> None:
        super().__init__()

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:  # StreamHandler.__init__ assigns it
        pass


_HANDLER_MARK = "_max_whisper_handler"


def setup_logger(
    name: str,
    json_output: bool = False,
    level: int | str = logging.INFO,
    stream: TextIO | None = None,
) -> logging.Logger:
    """Configure and return the logger ``name``.

    Output goes to ``stream`` (default: the current ``sys.stderr``), one line
    per record: JSON objects when ``json_output`` is true, otherwise
    ``time LEVEL name: message [key=value ...]``.  Calling it again for the
    same name replaces the handler rather than adding a second one, so a
    record is never printed twice.  The logger does not propagate to the root
    logger.
    """
    logger = logging.getLogger(name)
    if isinstance(level, str):
        level = logging.getLevelName(level.upper())
        if not isinstance(level, int):
            raise ValueError(f"unknown log level {level!r}")
    logger.setLevel(level)
    for handler in list(logger.handlers):
        if getattr(handler, _HANDLER_MARK, False):
            logger.removeHandler(handler)
    handler: logging.Handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    setattr(handler, _HANDLER_MARK, True)
    handler.setFormatter(JSONFormatter() if json_output else HumanFormatter())
    logger.addHandler(handler)
    logger.propagate = False
    return logger


class BenchmarkLogger:
    """Structured records for benchmark results and failures, on top of a ``logging.Logger``."""

    def __init__(self, logger: logging.Logger | str | None = None) -> None:
        if logger is None or isinstance(logger, str):
            logger = setup_logger(logger or "max_whisper.bench")
        self.logger = logger

    @staticmethod
    def _safe(fields: dict[str, Any]) -> dict[str, Any]:
        """Rename keys that would clash with ``LogRecord`` attributes (``name``, ``message`` ...)."""
        return {(f"metric_{key}" if key in _RECORD_ATTRIBUTES else key): value for key, value in fields.items()}

    def log_benchmark_result(
        self, implementation: str, execution_time: float, result_text: str = "", **metrics: Any
    ) -> dict[str, Any]:
        """Log one result at INFO; returns the structured fields it logged.

        ``metrics`` are any further measurements (``audio_seconds``,
        ``real_time_factor``, ``wer``, ``peak_memory_mb`` ...), logged as
        top-level fields.
        """
        fields: dict[str, Any] = {
            "event": "benchmark_result",
            "implementation": implementation,
            "execution_time": float(execution_time),
            "result_text": result_text,
            "result_length": len(result_text or ""),
        }
        fields.update(self._safe(metrics))
        self.logger.info(
            "%s: %.3f s, %d characters",
            implementation,
            fields["execution_time"],
            fields["result_length"],
            extra=fields,
        )
        return fields

    def log_error(self, implementation: str, error: BaseException | str, **context: Any) -> dict[str, Any]:
        """Log a failed run at ERROR; returns the structured fields it logged."""
        fields: dict[str, Any] = {
            "event": "benchmark_error",
            "implementation": implementation,
            "error_type": type(error).__name__ if isinstance(error, BaseException) else "Error",
            "error": str(error),
        }
        fields.update(self._safe(context))
        self.logger.error("%s failed: %s", implementation, fields["error"], extra=fields)
        return fields
