"""The benchmark harness and the demo: JSON schema, stage times, the accuracy gate, WER, manifest groups."""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

from max_whisper.bench import command as benchmark
from max_whisper.bench import render as bench_report
from max_whisper.bench.command import (
    PEER,
    clip_group,
    evaluate,
    parse_backends,
    parse_tolerances,
    read_manifest,
    summarize_manifest,
    validate_against_reference,
)
from max_whisper.config import PROJECT_ROOT, SHARED_AUDIO_DIR
from max_whisper.errors import MaxWhisperError
from max_whisper.bench.metrics import edit_distance, normalize, result_tokens, text_tokens, token_diff, wer

SCHEMA_PATH = PROJECT_ROOT / "docs" / "benchmark.schema.json"
JFK = Path(SHARED_AUDIO_DIR) / "jfk.flac"
STAGES = ("mel", "encode", "decode", "other")


def validate_schema(document: Dict[str, Any]) -> None:
    """Validate against docs/benchmark.schema.json (with jsonschema when it is installed)."""
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    for key in schema["required"]:
        assert key in document, f"report lacks {key!r}"
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema).validate(document)


# --------------------------------------------------------------------------- WER and token diffs


def test_wer_hand_made_case() -> None:
    assert wer("the cat sat", "the cat sat down") == pytest.approx(1 / 3)
    assert wer("the cat sat", "the cat sat") == 0.0
    assert wer("the cat sat", "the dog sat") == pytest.approx(1 / 3)


def test_wer_normalizes_both_sides_and_pools_a_list() -> None:
    # EnglishTextNormalizer: case, punctuation and spelled-out numbers do not count as errors
    assert wer("The cat, sat.", "the CAT sat") == 0.0
    assert normalize("Mr. Smith paid $20") == normalize("mister smith paid twenty dollars")
    # a list is one corpus: 1 error over 2 + 4 reference words
    assert wer(["a b", "c d e f"], ["a x", "c d e f"]) == pytest.approx(1 / 6)
    # a clip whose normalized reference is empty is left out
    assert wer(["", "a b"], ["anything", "a b"]) == 0.0
    assert wer("", "hello") is None
    with pytest.raises(ValueError):
        wer(["a"], ["a", "b"])


def test_token_diff() -> None:
    assert edit_distance([1, 2, 3], [1, 2, 3]) == 0
    assert edit_distance([1, 2, 3], [1, 3]) == 1
    assert edit_distance([1, 2, 3], [3, 2, 1]) == 2
    same = token_diff([5, 6, 7], [5, 6, 7])
    assert same["identical"] and same["edit_distance"] == 0 and same["token_error_rate"] == 0.0
    assert same["first_difference"] is None
    d = token_diff([5, 6, 7, 8], [5, 6, 9, 8, 10])
    assert d["edit_distance"] == 2 and d["token_error_rate"] == pytest.approx(0.5)
    assert d["first_difference"] == 2 and not d["identical"]
    assert token_diff([1, 2], [1, 2, 3])["first_difference"] == 2
    assert token_diff([], [])["token_error_rate"] == 0.0
    assert token_diff([], [1])["token_error_rate"] == 1.0


def test_result_tokens_and_text_tokens() -> None:
    result = {"segments": [{"tokens": [50363, 400, 50413]}, {"tokens": [50413, 500, 50463]}]}
    assert result_tokens(result) == [50363, 400, 50413, 50413, 500, 50463]
    assert text_tokens(result_tokens(result)) == [400, 500]
    assert result_tokens({"segments": []}) == []


# --------------------------------------------------------------------------- the accuracy gate


def test_wrong_transcript_is_marked_invalid() -> None:
    reference = [50363, 400, 401, 402, 403, 50413]
    wrong = [50363, 400, 999, 402, 403, 50413]
    verdict = validate_against_reference(reference, wrong, 0.0)
    assert verdict["valid"] is False
    assert verdict["matches_reference_backend"] is False
    assert verdict["diff_vs_reference"]["edit_distance"] == 1
    assert "token error rate" in verdict["invalid_reason"]
    # within a stated tolerance it counts as valid, but is still reported as different
    loose = validate_against_reference(reference, wrong, 0.2)
    assert loose["valid"] is True and loose["matches_reference_backend"] is False
    same = validate_against_reference(reference, list(reference), 0.0)
    assert same["valid"] is True and same["matches_reference_backend"] is True
    # a truncated transcript ("41 % of the text") never passes the default tolerance
    assert validate_against_reference(reference, reference[:2], 0.0)["valid"] is False
    # nothing to compare with: validity unknown, not true
    assert validate_against_reference(None, wrong, 0.0)["valid"] is None


def test_peer_is_judged_on_words_not_tokens() -> None:
    verdict = validate_against_reference(
        [1, 2, 3, 4], [1, 2, 3, 5], 0.0, reference_text="the cat sat on the mat",
        text="The cat sat on the mat.", peer=True, peer_tolerance=0.05,
    )
    assert verdict["valid"] is True and verdict["matches_reference_backend"] is False
    bad = validate_against_reference(
        [1, 2, 3, 4], [1, 2], 0.0, reference_text="the cat sat on the mat", text="the cat", peer=True,
    )
    assert bad["valid"] is False and "word difference" in bad["invalid_reason"]


def _worker_out(clips: List[Dict[str, Any]], status: str = "ok", **extra: Any) -> Dict[str, Any]:
    out = {"status": status, "description": {"backend": "x"}, "fp16": False, "load_s": 0.3, "compile_s": None,
           "gpu_peak_mb": None, "peak_rss_mb": 700.0, "worker_wall_s": 5.0, "clips": clips}
    out.update(extra)
    return out


def _clip(tokens: List[int], text: str, totals: List[float]) -> Dict[str, Any]:
    runs = [{"total": t, "mel": 0.05 * t, "encode": 0.2 * t, "decode": 0.6 * t, "other": 0.15 * t} for t in totals]
    return {"audio": "a.flac", "duration_s": 11.0, "status": "ok", "warmup_s": totals[0], "runs": runs,
            "tokens": tokens, "text_tokens": len(text_tokens(tokens)), "deterministic": True, "text": text}


def hand_made_report() -> Dict[str, Any]:
    """A compare report built from fake worker outputs: cpu, a wrong max, an unavailable gpu, the peer."""
    args = argparse.Namespace(
        model="tiny.en", threads=2, beam_size=None, temperature=0.0, language="en",
        condition_on_previous_text=True, peer_tolerance=0.05,
    )
    good = [50363, 400, 401, 402, 50413]
    outputs = {
        "cpu": _worker_out([_clip(good, " the cat sat", [2.0, 2.2, 2.1])]),
        "gpu": {"status": "unavailable", "reason": "no CUDA here"},
        # a "fast" backend that produced a different (shorter) transcript
        "max": _worker_out([_clip(good[:2] + [50413], " the", [0.5, 0.6, 0.55])], compile_s=40.0),
        PEER: _worker_out([_clip(good, " the cat sat", [1.0, 1.1, 1.2])]),
    }
    report: Dict[str, Any] = {
        "schema": benchmark.SCHEMA_ID, "mode": "compare", "created_utc": "2026-11-25T00:00:00Z",
        "options": benchmark._options(args, 0.0, {}, {}, runs=3, warmup=1),
        "environment": bench_report.environment(),
        "backends": [benchmark._backend_entry(n, o, {}) for n, o in outputs.items()],
        "clips": [{
            "audio": "a.flac", "file": "a.flac", "duration_s": 11.0, "reference_text": "The cat sat.",
            "reference_source": None,
            "results": [benchmark._clip_result(n, o, (o.get("clips") or [None])[0]) for n, o in outputs.items()],
        }],
    }
    evaluate(report, 0.0, {}, 0.05)
    return report


def test_evaluate_gates_speedup_on_the_transcript() -> None:
    report = hand_made_report()
    results = {r["backend"]: r for r in report["clips"][0]["results"]}
    cpu, gpu, mx, peer = results["cpu"], results["gpu"], results["max"], results[PEER]
    assert cpu["valid"] is True and cpu["speedup"] == 1.0 and cpu["wer"] == 0.0
    assert cpu["timings"]["total"]["median"] == pytest.approx(2.1)
    assert cpu["timings"]["total"]["min"] == 2.0 and cpu["timings"]["total"]["max"] == 2.2
    assert mx["valid"] is False and mx["speedup"] is None  # faster, but wrong: no speed-up figure
    assert mx["matches_reference_backend"] is False and mx["invalid_reason"]
    assert mx["wer"] == pytest.approx(2 / 3)
    assert gpu["status"] == "unavailable" and gpu["valid"] is None and gpu["speedup"] is None
    assert peer["valid"] is True and peer["speedup"] == pytest.approx(2.1 / 1.1)
    assert all("_tokens" not in r for r in report["clips"][0]["results"])
    validate_schema(json.loads(json.dumps(report, allow_nan=False)))
    assert benchmark.exit_status(report) == 0
    assert benchmark.exit_status(report, fail_on_invalid=True) == 3


def test_report_renders_saves_and_plots(tmp_path: Path) -> None:
    from rich.console import Console

    report = hand_made_report()
    out = io.StringIO()
    bench_report.print_report(report, Console(file=out, width=200))
    text = out.getvalue()
    assert "max is invalid" in text and "no CUDA here" in text and "faster-whisper" in text
    saved = tmp_path / "runs.jsonl"
    bench_report.append_record(report, saved)
    bench_report.append_record(report, saved)
    lines = saved.read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[1])["environment"]["packages"]["openai-whisper"]
    pytest.importorskip("matplotlib")
    png = tmp_path / "stages.png"
    bench_report.write_plot(report, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_option_parsing() -> None:
    assert parse_tolerances(None) == (0.0, {})
    assert parse_tolerances(["1%", "gpu=0.02", "max=0"]) == (0.01, {"gpu": 0.02, "max": 0.0})
    with pytest.raises(MaxWhisperError):
        parse_tolerances(["-1"])
    assert parse_backends(None) == ["cpu", "gpu", "max", PEER]
    assert parse_backends("max") == ["cpu", "max"]  # the reference is always there
    assert parse_backends("peer,max,cpu") == ["cpu", "max", PEER]
    assert parse_backends("gpu", add_reference=False) == ["gpu"]
    with pytest.raises(MaxWhisperError):
        parse_backends("tpu")
    assert benchmark.parse_backend_options(["max.device=cpu", "max.n=2"]) == {"max": {"device": "cpu", "n": 2}}


def test_cli_wires_the_benchmark_and_demo_commands() -> None:
    cli = pytest.importorskip("max_whisper.cli")
    from max_whisper.bench import harness as demo

    args = cli.build_parser("benchmark").parse_args(["benchmark", "--runs", "2", "--backends", "cpu", "--json"])
    assert args.handler == benchmark.run_from_args and args.runs == 2 and args.json
    args = cli.build_parser("demo").parse_args(["demo", "--backends", "cpu"])
    assert args.handler == demo.run_from_args


# --------------------------------------------------------------------------- manifest mode


def test_clip_groups_of_the_shared_manifest() -> None:
    assert clip_group("librispeech_1089-134686-0000.flac") == "librispeech"
    assert clip_group("jfk.flac") == "jfk"
    assert clip_group("ljspeech_LJ001-0001.flac") == "ljspeech"
    assert clip_group("longform_ljspeech_LJ001-0001_to_0032.flac") == "longform"
    assert clip_group("fleurs_en_000.flac") == "fleurs"
    assert clip_group("librivox_sense_and_sensibility_01_0870.flac") == "librivox"
    assert clip_group("mfa_acoustic_corpus.flac") == "spontaneous"
    manifest = Path(SHARED_AUDIO_DIR) / "manifest.tsv"
    if manifest.is_file():
        rows = read_manifest(manifest)
        assert len(rows) == 52
        assert {r["group"] for r in rows} == {
            "librispeech", "jfk", "ljspeech", "longform", "fleurs", "librivox", "spontaneous"}
        assert all(r["reference_transcript"] for r in rows)


HEADER = "file\tduration_s\tsource_repo\tsource_path\tlicense\treference_transcript\tnotes\n"


def write_manifest(tmp_path: Path) -> Path:
    rows = [
        ("librispeech_a.flac", "1.0", "THE CAT SAT"),
        ("librispeech_b.flac", "2.0", "ON THE MAT"),
        ("jfk.flac", "11.0", "ask not"),
        ("longform_x.flac", "3.0", "the cat sat on the mat"),
    ]
    text = HEADER + "".join(f"{f}\t{d}\trepo\tpath\tCC0\t{ref}\t\n" for f, d, ref in rows)
    manifest = tmp_path / "manifest.tsv"
    manifest.write_text(text, encoding="utf-8")
    for f, _, _ in rows:
        (tmp_path / f).write_bytes(b"placeholder")  # the worker is faked: only existence is checked
    return manifest


def test_manifest_mode_groups_and_overall(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = write_manifest(tmp_path)
    hypotheses = {
        "librispeech_a.flac": "the cat sat",        # 0 errors / 3
        "librispeech_b.flac": "on a mat",           # 1 error / 3
        "jfk.flac": "ask not",                      # 0 / 2
        "longform_x.flac": "the cat sat on the hat",  # left out of overall
    }
    seen: Dict[str, Any] = {}

    def fake_worker(spec: Dict[str, Any], timeout: Optional[float] = None) -> Dict[str, Any]:
        seen.update(spec)
        clips = []
        for path in spec["audio"]:
            name = Path(path).name
            if name == "jfk.flac":
                clips.append({"audio": path, "status": "error", "reason": "boom"})
                continue
            clips.append(_clip([1, 2], hypotheses[name], [0.5]))
        return _worker_out(clips)

    monkeypatch.setattr(benchmark, "run_worker", fake_worker)
    parser = argparse.ArgumentParser()
    benchmark.add_arguments(parser)
    args = parser.parse_args(["--manifest", str(manifest), "--backends", "cpu"])
    report = benchmark.run_manifest(args)
    assert seen["backend"] == "cpu" and seen["runs"] == 1 and len(seen["audio"]) == 4
    groups = {g["group"]: g for g in report["groups"]}
    assert list(groups) == ["librispeech", "jfk", "longform"]
    assert groups["librispeech"]["wer"] == pytest.approx(1 / 6)
    assert groups["librispeech"]["clips"] == 2 and groups["librispeech"]["duration_s"] == pytest.approx(22.0)
    assert groups["jfk"]["failed"] == 1 and groups["jfk"]["wer"] is None
    assert groups["longform"]["wer"] == pytest.approx(1 / 6)
    overall = report["overall"]
    assert overall["excluded_groups"] == ["longform"]
    assert overall["clips"] == 3 and overall["scored"] == 2 and overall["wer"] == pytest.approx(1 / 6)
    validate_schema(json.loads(json.dumps(report, allow_nan=False)))

    with pytest.raises(MaxWhisperError, match="one backend"):
        benchmark.run_manifest(parser.parse_args(["--manifest", str(manifest), "--backends", "cpu,max"]))


def test_summarize_manifest_pure() -> None:
    rows = [
        {"group": "a", "reference_text": "x y", "text": "x y", "duration_s": 1.0, "total_s": 0.1},
        {"group": "b", "reference_text": "x y z w", "text": "x", "duration_s": 1.0, "total_s": 0.1},
    ]
    groups, overall = summarize_manifest(rows, excluded=())
    assert [g["wer"] for g in groups] == [0.0, pytest.approx(0.75)]
    assert overall["wer"] == pytest.approx(3 / 6) and overall["excluded_groups"] == []


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def jfk_json() -> Dict[str, Any]:
    """``--json`` of the JFK clip through cpu (1 timed run) and gpu with CUDA hidden (unavailable)."""
    if not JFK.is_file():
        pytest.skip(f"{JFK} not available")
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, "-m", "max_whisper.bench.command", "--backends", "cpu,gpu", "--audio", str(JFK),
           "--runs", "1", "--warmup", "0", "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=PROJECT_ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)  # stdout is one JSON document and nothing else


def test_json_output_matches_the_schema(jfk_json: Dict[str, Any]) -> None:
    validate_schema(jfk_json)
    assert jfk_json["mode"] == "compare"
    options = jfk_json["options"]
    assert options["threads"] == 2 and options["temperature"] == 0.0 and options["language"] == "en"
    assert options["beam_size"] is None and options["runs"] == 1
    backends = {b["name"]: b for b in jfk_json["backends"]}
    assert backends["cpu"]["status"] == "ok" and backends["cpu"]["peak_rss_mb"] > 100
    assert backends["gpu"]["status"] == "unavailable" and "CUDA" in backends["gpu"]["reason"]
    clip = jfk_json["clips"][0]
    assert clip["duration_s"] == pytest.approx(11.0, abs=0.01) and clip["reference_text"]
    results = {r["backend"]: r for r in clip["results"]}
    cpu = results["cpu"]
    assert cpu["valid"] is True and cpu["speedup"] == 1.0
    assert "ask not what your country can do for you" in cpu["text"]
    assert cpu["wer"] == 0.0
    assert cpu["tokens"] > cpu["text_tokens"] > 10 and cpu["tokens_per_second"] > 0
    assert results["gpu"]["status"] == "unavailable" and results["gpu"]["speedup"] is None


def test_stage_times_are_positive_and_sum_within_the_total(jfk_json: Dict[str, Any]) -> None:
    cpu = next(r for r in jfk_json["clips"][0]["results"] if r["backend"] == "cpu")
    timings = cpu["timings"]
    total = timings["total"]["median"]
    assert total > 0
    for stage in STAGES:
        assert timings[stage]["median"] > 0, stage
    parts = sum(timings[s]["median"] for s in ("mel", "encode", "decode"))
    assert parts < total
    assert parts + timings["other"]["median"] == pytest.approx(total, rel=1e-6)
    assert cpu["real_time_factor"] == pytest.approx(total / jfk_json["clips"][0]["duration_s"])
    backend = next(b for b in jfk_json["backends"] if b["name"] == "cpu")
    assert backend["load_s"] > 0


# --------------------------------------------------------------------------- demo


def test_demo_runs_with_the_gpu_backend_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    from rich.console import Console

    from max_whisper.bench import harness as demo

    if not JFK.is_file():
        pytest.skip(f"{JFK} not available")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    # max is left out only to keep the test fast (its graphs take minutes to compile on 2 cores)
    args = parser.parse_args(["--audio", str(JFK), "--backends", "cpu,gpu"])
    out = io.StringIO()
    assert demo.run_from_args(args, console=Console(file=out, width=250)) == 0
    text = out.getvalue()
    assert "unavailable" in text and "torch.cuda.is_available() is False" in text
    assert "ask not what your country can do for you" in text
