"""The benchmark records: JSON round trips, and the committed schema is the one generated from them."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from max_whisper.bench.config import parse_modes
from max_whisper.bench.records import Mode, Report, StageTimings, Summary, WorkerResult
from max_whisper.bench.report import report_json
from max_whisper.bench.schema import SCHEMA_PATH, from_jsonable, json_schema, schema_text, to_jsonable
from test_benchmark import hand_made_report


def test_the_committed_schema_is_the_generated_one() -> None:
    assert SCHEMA_PATH.read_text(encoding="utf-8") == schema_text(), (
        "docs/benchmark.schema.json is stale: run python -m max_whisper.bench.schema --write"
    )
    jsonschema.Draft202012Validator.check_schema(json_schema())


def test_a_report_round_trips_through_json_and_validates(tmp_path: Path) -> None:
    report = hand_made_report(tmp_path)
    document = json.loads(report_json(report))
    jsonschema.Draft202012Validator(json_schema()).validate(document)
    again = from_jsonable(Report, document)
    assert again == report
    assert to_jsonable(again) == document


def test_the_schema_rejects_what_the_records_cannot_hold(tmp_path: Path) -> None:
    document = json.loads(report_json(hand_made_report(tmp_path)))
    validator = jsonschema.Draft202012Validator(json_schema())
    result = document["clips"][0]["results"][0]
    result["_tokens"] = [1, 2, 3]  # no private keys travel in the report
    assert not validator.is_valid(document)
    del result["_tokens"]
    result["valid"] = "yes"
    assert not validator.is_valid(document)
    with pytest.raises(ValueError):
        from_jsonable(Report, {**document, "unknown": 1})


def test_worker_results_round_trip_with_their_tokens() -> None:
    data = {
        "backend": "max",
        "status": "ok",
        "device": "gpu",
        "dtype": "bfloat16",
        "gpu_memory_mb": 512.0,
        "measurements": [
            {
                "audio": "a.flac",
                "mode": "beam5",
                "status": "ok",
                "runs": [{"total": 1}],
                "tokens": [1, 2],
                "deterministic": True,
            }
        ],
    }
    result = from_jsonable(WorkerResult, data)
    assert result.measurements[0].runs[0].total == 1.0 and isinstance(result.measurements[0].runs[0].total, float)
    assert result.measurements[0].tokens == [1, 2] and result.dtype == "bfloat16"
    with pytest.raises(ValueError):
        from_jsonable(WorkerResult, {**data, "status": "fine"})  # not one of the statuses


def test_summaries_and_modes() -> None:
    assert Summary.of([None, None]) is None
    s = Summary.of([3.0, 1.0, 2.0])
    assert (s.median, s.min, s.max, s.runs) == (2.0, 1.0, 3.0, [3.0, 1.0, 2.0])
    assert StageTimings.of([]).total is None
    greedy, beam, default = parse_modes("greedy,beam5,default")
    assert greedy.decode_options() == {"temperature": 0.0}
    assert beam.decode_options() == {"temperature": 0.0, "beam_size": 5}
    assert default.decode_options() == {"temperature": (0.0, 0.2, 0.4, 0.6, 0.8, 1.0), "beam_size": 5, "best_of": 5}
    assert default.fallback and not beam.fallback
    assert from_jsonable(Mode, to_jsonable(default)) == default
