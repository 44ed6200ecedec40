"""``max_whisper.utils.logging``: setup_logger (human / JSON) and BenchmarkLogger."""

from __future__ import annotations

import io
import json
import logging
import uuid

import numpy as np
import pytest

from max_whisper.utils import BenchmarkLogger, setup_logger
from max_whisper.utils.logging import JSONFormatter


@pytest.fixture
def name() -> str:
    """A fresh logger name per test (loggers are process-global)."""
    return f"test.max_whisper.{uuid.uuid4().hex}"


def records(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_json_output_has_the_standard_fields_and_extras(name):
    stream = io.StringIO()
    logger = setup_logger(name, json_output=True, stream=stream)
    logger.info("hello %s", "world", extra={"backend": "cpu", "seconds": 1.5})
    (record,) = records(stream)
    assert record["message"] == "hello world"
    assert record["level"] == "INFO"
    assert record["logger"] == name
    assert record["timestamp"].endswith("+00:00") and "T" in record["timestamp"]
    assert record["backend"] == "cpu" and record["seconds"] == 1.5


def test_json_output_serialises_numpy_and_exceptions(name):
    stream = io.StringIO()
    logger = setup_logger(name, json_output=True, stream=stream)
    try:
        raise ValueError("bad value")
    except ValueError:
        logger.exception("failed", extra={"value": np.float32(0.5), "shape": np.zeros((2, 3)).shape})
    (record,) = records(stream)
    assert record["level"] == "ERROR"
    assert record["value"] == 0.5 and record["shape"] == [2, 3]
    assert "ValueError: bad value" in record["exception"]


def test_human_output_is_one_line_with_extras(name):
    stream = io.StringIO()
    logger = setup_logger(name, stream=stream)
    logger.warning("slow run", extra={"backend": "max"})
    text = stream.getvalue()
    assert text.count("\n") == 1
    assert "WARNING" in text and name in text and "slow run" in text and "backend=max" in text


def test_level_filters_and_accepts_names(name):
    stream = io.StringIO()
    logger = setup_logger(name, json_output=True, level="warning", stream=stream)
    logger.info("hidden")
    logger.warning("shown")
    assert [r["message"] for r in records(stream)] == ["shown"]
    with pytest.raises(ValueError):
        setup_logger(name, level="chatty")


def test_setup_twice_replaces_the_handler(name):
    first, second = io.StringIO(), io.StringIO()
    setup_logger(name, stream=first)
    logger = setup_logger(name, json_output=True, stream=second)
    logger.info("once")
    assert first.getvalue() == ""
    assert [r["message"] for r in records(second)] == ["once"]
    assert len(logger.handlers) == 1 and logger.propagate is False


def test_default_stream_is_the_current_stderr(name, capsys):
    logger = setup_logger(name, json_output=True)
    logger.info("to stderr")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert json.loads(captured.err)["message"] == "to stderr"


def test_benchmark_result(name):
    stream = io.StringIO()
    bench = BenchmarkLogger(setup_logger(name, json_output=True, stream=stream))
    fields = bench.log_benchmark_result(
        implementation="max-graph",
        execution_time=0.123,
        result_text="transcription...",
        audio_seconds=11.0,
        name="clash",
    )
    (record,) = records(stream)
    assert record["event"] == "benchmark_result"
    assert record["implementation"] == "max-graph"
    assert record["execution_time"] == pytest.approx(0.123)
    assert record["result_text"] == "transcription..." and record["result_length"] == 16
    assert record["audio_seconds"] == 11.0
    assert record["metric_name"] == "clash"  # a LogRecord attribute name is renamed, not an error
    assert record["logger"] == name
    assert fields["implementation"] == "max-graph"


def test_log_error(name):
    stream = io.StringIO()
    bench = BenchmarkLogger(setup_logger(name, json_output=True, stream=stream))
    bench.log_error("gpu", RuntimeError("no CUDA"), audio="jfk.flac")
    (record,) = records(stream)
    assert record["level"] == "ERROR"
    assert record["event"] == "benchmark_error"
    assert record["error_type"] == "RuntimeError" and record["error"] == "no CUDA"
    assert record["audio"] == "jfk.flac"


def test_formatter_works_on_plain_records():
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "plain %d", (3,), None)
    assert json.loads(JSONFormatter().format(record))["message"] == "plain 3"
