"""The benchmark harness and the demo: WER and token diffs, report assembly, rendering, manifests, end to end.

The gate, the records and the option parsing have their own files (test_bench_*.py).  The end-to-end
tests run real backends in worker processes on the shared JFK clip (``conftest.shared_clip``).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import shared_clip
from max_whisper.bench import command, harness
from max_whisper.bench.config import PEER, BenchmarkOptions, Tolerances, parse_modes
from max_whisper.bench.manifest import clip_group, read_manifest, summarize_manifest
from max_whisper.bench.metrics import edit_distance, normalize, result_tokens, text_tokens, token_diff, wer
from max_whisper.bench.records import ManifestClip, Measurement, Report, RunTiming, WorkerResult
from max_whisper.bench.report import append_record, exit_status, report_json
from max_whisper.bench.schema import SCHEMA_PATH
from max_whisper.config import PROJECT_ROOT, SHARED_AUDIO_DIR
from max_whisper.errors import ExitCode, UsageError

STAGES = ("mel", "encode", "decode", "other")


def validate_schema(document: dict[str, Any]) -> None:
    import jsonschema

    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
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
    assert same.identical and same.edit_distance == 0 and same.token_error_rate == 0.0
    assert same.first_difference is None
    d = token_diff([5, 6, 7, 8], [5, 6, 9, 8, 10])
    assert d.edit_distance == 2 and d.token_error_rate == pytest.approx(0.5)
    assert d.first_difference == 2 and not d.identical
    assert token_diff([1, 2], [1, 2, 3]).first_difference == 2
    assert token_diff([1, 2], []).edit_distance == 2
    assert token_diff([], []).token_error_rate == 0.0
    assert token_diff([], [1]).token_error_rate == 1.0


def test_result_tokens_and_text_tokens() -> None:
    result = {"segments": [{"tokens": [50363, 400, 50413]}, {"tokens": [50413, 500, 50463]}]}
    assert result_tokens(result) == [50363, 400, 50413, 50413, 500, 50463]
    assert text_tokens(result_tokens(result)) == [400, 500]
    assert result_tokens({"segments": []}) == []


# --------------------------------------------------------------------------- a report from fake workers

GOOD = [50363, 400, 401, 402, 50413]


def measurement(audio: str, mode: str, tokens: list[int], text: str, totals: list[float]) -> Measurement:
    runs = [RunTiming(total=t, mel=0.05 * t, encode=0.2 * t, decode=0.6 * t, other=0.15 * t) for t in totals]
    return Measurement(
        audio=audio,
        mode=mode,
        status="ok",
        duration_s=11.0,
        warmup_s=totals[0],
        runs=runs,
        tokens=tokens,
        text_tokens=len(text_tokens(tokens)),
        deterministic=True,
        text=text,
    )


def worker(backend: str, measurements: list[Measurement], **extra: Any) -> WorkerResult:
    return WorkerResult(
        backend=backend,
        status="ok",
        description={"backend": backend},
        device="cpu",
        dtype="float32",
        load_s=0.3,
        peak_rss_mb=700.0,
        worker_wall_s=5.0,
        measurements=measurements,
        **extra,
    )


def fake_outputs(audio: str) -> dict[str, WorkerResult]:
    """cpu; a fast max that is wrong in greedy and right in beam5; an unavailable gpu; the peer."""
    return {
        "cpu": worker(
            "cpu",
            [
                measurement(audio, "greedy", GOOD, " the cat sat", [2.0, 2.2, 2.1]),
                measurement(audio, "beam5", GOOD, " the cat sat", [4.0, 4.0, 4.0]),
            ],
        ),
        "gpu": WorkerResult("gpu", "unavailable", "no CUDA here"),
        "max": worker(
            "max",
            [
                measurement(audio, "greedy", GOOD[:2] + [50413], " the", [0.5, 0.6, 0.55]),
                measurement(audio, "beam5", GOOD, " the cat sat", [1.0, 1.0, 1.0]),
            ],
            compile_s=40.0,
        ),
        PEER: worker(
            PEER,
            [
                measurement(audio, "greedy", GOOD, " the cat sat", [1.0, 1.1, 1.2]),
                measurement(audio, "beam5", GOOD, " the cat sat", [2.0, 2.0, 2.0]),
            ],
        ),
    }


def hand_made_report(tmp_path: Path) -> Report:
    """A compare report (greedy and beam5) assembled by the harness from fake worker results."""
    audio = tmp_path / "a.flac"
    audio.write_bytes(b"placeholder")  # the workers are faked: nothing reads it
    (tmp_path / "a.txt").write_text("The cat sat.", encoding="utf-8")
    outputs = fake_outputs(str(audio))
    options = BenchmarkOptions(
        backends=("cpu", "gpu", "max", PEER),
        audio=(audio,),
        modes=tuple(parse_modes("greedy,beam5")),
        threads=2,
        tolerances=Tolerances(),
    )
    return harness.run_compare(options, run=lambda spec, timeout: outputs[spec.backend])


def test_report_gates_speedup_on_the_transcript_in_each_mode(tmp_path: Path) -> None:
    report = hand_made_report(tmp_path)
    results = {(r.backend, r.mode): r for r in report.clips[0].results}
    assert [(r.mode, r.backend) for r in report.clips[0].results][:4] == [
        ("greedy", "cpu"),
        ("greedy", "gpu"),
        ("greedy", "max"),
        ("greedy", PEER),
    ]
    cpu, mx, peer = results["cpu", "greedy"], results["max", "greedy"], results[PEER, "greedy"]
    assert cpu.valid is True and cpu.speedup == 1.0 and cpu.wer == 0.0
    assert cpu.timings.total.median == pytest.approx(2.1)
    assert cpu.timings.total.min == 2.0 and cpu.timings.total.max == 2.2
    assert mx.valid is False and mx.speedup is None  # faster, but wrong: no speed-up figure
    assert mx.matches_reference_backend is False and mx.invalid_reason
    assert mx.wer == pytest.approx(2 / 3)
    assert results["gpu", "greedy"].status == "unavailable" and results["gpu", "greedy"].speedup is None
    assert peer.valid is True and peer.speedup == pytest.approx(2.1 / 1.1)
    # beam5 is judged against cpu's beam5 run, and its ratio uses cpu's beam5 time
    assert results["max", "beam5"].valid is True and results["max", "beam5"].speedup == pytest.approx(4.0)
    backends = {b.name: b for b in report.backends}
    assert backends["max"].compile_s == 40.0 and backends["max"].device == "cpu"
    assert backends["max"].dtype == "float32" and backends["gpu"].reason == "no CUDA here"
    assert [m.name for m in report.options.modes] == ["greedy", "beam5"]
    validate_schema(json.loads(report_json(report)))
    assert exit_status(report) == ExitCode.OK
    assert exit_status(report, fail_on_invalid=True) == ExitCode.FAILED


def test_reference_failure_is_a_failed_run(tmp_path: Path) -> None:
    audio = tmp_path / "a.flac"
    audio.write_bytes(b"placeholder")
    outputs = {
        "cpu": WorkerResult("cpu", "error", "boom"),
        "max": worker("max", [measurement(str(audio), "greedy", GOOD, " x", [1.0])]),
    }
    options = BenchmarkOptions(backends=("cpu", "max"), audio=(audio,), modes=tuple(parse_modes(None)), threads=2)
    report = harness.run_compare(options, run=lambda spec, timeout: outputs[spec.backend])
    mx = report.clips[0].results[1]
    assert mx.valid is None and mx.speedup is None and "no cpu transcript" in mx.invalid_reason
    assert exit_status(report) == ExitCode.FAILED


def test_report_renders_saves_and_plots(tmp_path: Path) -> None:
    from rich.console import Console

    from max_whisper.bench.plot import write_plot
    from max_whisper.bench.render import print_report

    report = hand_made_report(tmp_path)
    out = io.StringIO()
    print_report(report, Console(file=out, width=250))
    text = out.getvalue()
    assert "max is invalid" in text and "no CUDA here" in text and "faster-whisper" in text
    assert "mode greedy" in text and "mode beam5" in text and "4.00×" in text
    saved = tmp_path / "runs" / "runs.jsonl"
    append_record(report, saved)
    append_record(report, saved)
    lines = saved.read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[1])["environment"]["packages"]["openai-whisper"]
    png = tmp_path / "stages.png"
    write_plot(report, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_wires_the_benchmark_and_demo_commands() -> None:
    from max_whisper import cli
    from max_whisper.bench import demo

    args = cli.build_parser("benchmark").parse_args(["benchmark", "--runs", "2", "--backends", "cpu", "--json"])
    assert args.run == command.run_from_args and args.runs == 2 and args.json
    args = cli.build_parser("demo").parse_args(["demo", "--backends", "cpu"])
    assert args.run == demo.run_from_args


# --------------------------------------------------------------------------- manifest mode


def test_clip_groups_of_the_shared_manifest() -> None:
    assert clip_group("librispeech_1089-134686-0000.flac") == "librispeech"
    assert clip_group("jfk.flac") == "jfk"
    assert clip_group("ljspeech_LJ001-0001.flac") == "ljspeech"
    assert clip_group("longform_ljspeech_LJ001-0001_to_0032.flac") == "longform"
    assert clip_group("fleurs_en_000.flac") == "fleurs"
    assert clip_group("librivox_sense_and_sensibility_01_0870.flac") == "librivox"
    assert clip_group("mfa_acoustic_corpus.flac") == "spontaneous"


def test_the_shared_manifest_lists_every_clip_with_a_reference() -> None:
    rows = read_manifest(shared_clip("manifest.tsv"))
    assert len(rows) == 52
    assert {r.group for r in rows} == {
        "librispeech",
        "jfk",
        "ljspeech",
        "longform",
        "fleurs",
        "librivox",
        "spontaneous",
    }
    assert all(r.reference_transcript for r in rows)


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


def test_manifest_mode_groups_and_overall(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path)
    hypotheses = {
        "librispeech_a.flac": "the cat sat",  # 0 errors / 3
        "librispeech_b.flac": "on a mat",  # 1 error / 3
        "jfk.flac": "ask not",  # 0 / 2
        "longform_x.flac": "the cat sat on the hat",  # left out of overall
    }
    seen = []

    def fake_worker(spec, timeout):
        seen.append(spec)
        out = []
        for path in spec.audio:
            if Path(path).name == "jfk.flac":
                out.append(Measurement(audio=path, mode="greedy", status="error", reason="boom"))
            else:
                out.append(measurement(path, "greedy", [1, 2], hypotheses[Path(path).name], [0.5]))
        return worker(spec.backend, out)

    parser = command.build_parser()
    options = command.options_from_args(parser.parse_args(["--manifest", str(manifest), "--backends", "cpu"]))
    report = harness.run_manifest(options, run=fake_worker)
    assert seen[0].backend == "cpu" and seen[0].runs == 1 and seen[0].warmup == 0 and len(seen[0].audio) == 4
    groups = {g.group: g for g in report.groups}
    assert list(groups) == ["librispeech", "jfk", "longform"]
    assert groups["librispeech"].wer == pytest.approx(1 / 6)
    assert groups["librispeech"].clips == 2 and groups["librispeech"].duration_s == pytest.approx(22.0)
    assert groups["jfk"].failed == 1 and groups["jfk"].wer is None
    assert groups["longform"].wer == pytest.approx(1 / 6)
    overall = report.overall
    assert overall.excluded_groups == ["longform"]
    assert overall.clips == 3 and overall.scored == 2 and overall.wer == pytest.approx(1 / 6)
    validate_schema(json.loads(report_json(report)))

    with pytest.raises(UsageError, match="one backend"):
        command.options_from_args(parser.parse_args(["--manifest", str(manifest), "--backends", "cpu,max"]))


def test_summarize_manifest_pure() -> None:
    def clip(group: str, reference: str, text: str) -> ManifestClip:
        return ManifestClip(
            file="f",
            audio="f",
            group=group,
            status="ok",
            reason=None,
            duration_s=1.0,
            total_s=0.1,
            reference_text=reference,
            text=text,
            wer=None,
        )

    groups, overall = summarize_manifest([clip("a", "x y", "x y"), clip("b", "x y z w", "x")], excluded=())
    assert [g.wer for g in groups] == [0.0, pytest.approx(0.75)]
    assert overall.wer == pytest.approx(3 / 6) and overall.excluded_groups == []


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def jfk_json() -> dict[str, Any]:
    """``--json`` of the JFK clip through cpu (1 timed run) and gpu with CUDA hidden (unavailable)."""
    jfk = shared_clip("jfk.flac")
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    cmd = [
        sys.executable,
        "-m",
        "max_whisper.bench.command",
        "--backends",
        "cpu,gpu",
        "--audio",
        str(jfk),
        "--runs",
        "1",
        "--warmup",
        "0",
        "--threads",
        "2",
        "--json",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=PROJECT_ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "event=benchmark_result" in proc.stderr  # the structured records go to stderr
    return json.loads(proc.stdout)  # stdout is one JSON document and nothing else


def test_json_output_matches_the_schema(jfk_json: dict[str, Any]) -> None:
    validate_schema(jfk_json)
    assert jfk_json["kind"] == "compare"
    options = jfk_json["options"]
    assert options["threads"] == 2 and options["language"] == "en" and options["runs"] == 1
    assert options["modes"] == [{"name": "greedy", "beam_size": None, "best_of": None, "temperatures": [0.0]}]
    backends = {b["name"]: b for b in jfk_json["backends"]}
    cpu_backend = backends["cpu"]
    assert cpu_backend["status"] == "ok" and cpu_backend["peak_rss_mb"] > 100 and cpu_backend["load_s"] > 0
    assert cpu_backend["device"] == "cpu" and cpu_backend["dtype"] == "float32"
    assert cpu_backend["gpu_memory_mb"] is None
    assert backends["gpu"]["status"] == "unavailable" and "CUDA" in backends["gpu"]["reason"]
    clip = jfk_json["clips"][0]
    assert clip["duration_s"] == pytest.approx(11.0, abs=0.01) and clip["reference_text"]
    results = {r["backend"]: r for r in clip["results"]}
    cpu = results["cpu"]
    assert cpu["mode"] == "greedy" and cpu["valid"] is True and cpu["speedup"] == 1.0
    assert "ask not what your country can do for you" in cpu["text"]
    assert cpu["wer"] == 0.0
    assert cpu["tokens"] > cpu["text_tokens"] > 10 and cpu["tokens_per_second"] > 0
    assert results["gpu"]["status"] == "unavailable" and results["gpu"]["speedup"] is None


def test_stage_times_are_positive_and_sum_within_the_total(jfk_json: dict[str, Any]) -> None:
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


# --------------------------------------------------------------------------- demo


def test_demo_runs_with_the_gpu_backend_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    from rich.console import Console

    from max_whisper.bench import demo

    jfk = shared_clip("jfk.flac")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    # max is left out only to keep the test fast (its graphs take minutes to compile on 2 cores)
    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    args = parser.parse_args(["--audio", str(jfk), "--backends", "cpu,gpu", "--threads", "2"])
    out = io.StringIO()
    assert demo.run_from_args(args, console=Console(file=out, width=250)) == ExitCode.OK
    text = out.getvalue()
    assert "unavailable" in text and "torch.cuda.is_available() is False" in text
    assert "ask not what your country can do for you" in text and "reference" in text


def test_default_audio_is_the_long_form_clip_when_present() -> None:
    from max_whisper.bench.config import LONGFORM_CLIP, default_audio
    from max_whisper.config import DEMO_AUDIO

    expected = SHARED_AUDIO_DIR / LONGFORM_CLIP
    assert default_audio() == (expected if expected.is_file() else Path(DEMO_AUDIO))
