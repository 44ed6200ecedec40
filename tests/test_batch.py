"""``max-whisper batch`` on a local Ray runtime with 2 CPUs: every good file written once and identical to a
single-process transcription, every bad file a failed row, an actor killed mid-run, Ctrl-C and resume.

One Ray runtime serves the whole module (starting one costs seconds). tiny.en on the cpu backend, greedy
(``beam_size=None``, temperature 0 without fallback), on short real clips.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile

from conftest import shared_clip

try:
    import ray
except ImportError:  # the [ray] extra (which `make install` includes) is missing
    if os.environ.get("CI", "").lower() == "true":
        raise
    pytest.skip("ray[data] is not installed: pip install -e '.[ray]'", allow_module_level=True)

from max_whisper.batch import transcribe_many  # noqa: E402
from max_whisper.batch.inputs import audio_input  # noqa: E402
from max_whisper.batch.ledger import read_results  # noqa: E402
from max_whisper.errors import ExitCode  # noqa: E402

GREEDY = {"beam_size": None, "temperature": 0.0}
SHORT_CLIPS = (
    "ljspeech_LJ001-0008.flac",
    "ljspeech_LJ001-0002.flac",
    "librispeech_1089-134691-0000.flac",
    "ljspeech_LJ001-0013.flac",
    "librivox_sense_and_sensibility_01_0880.flac",
    "librispeech_1089-134686-0001.flac",
    "fleurs_en_004.flac",
    "ljspeech_LJ001-0011.flac",
    "ljspeech_LJ001-0020.flac",
    "librispeech_1221-135766-0002.flac",
    "librispeech_61-70968-0000.flac",
    "ljspeech_LJ001-0004.flac",
    "jfk.flac",
)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ray_runtime():
    """One local Ray runtime with 2 CPUs for the module (quiet, no dashboard)."""
    import logging

    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """20+ inputs: real clips, two with the same base name, a resampled stereo WAV; missing / not audio /
    empty / truncated files. Returns (inputs folder, good paths, {bad path: expected error text})."""
    root = tmp_path_factory.mktemp("corpus")
    good = []
    for name in SHORT_CLIPS:
        target = root / "clips" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shared_clip(name), target)
        good.append(target)
    for folder in ("a", "b"):  # the same base name twice: outputs must not collide
        target = root / "clips" / folder / "jfk.flac"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shared_clip("jfk.flac"), target)
        good.append(target)
    rng = np.random.default_rng(12)
    audio, rate = soundfile.read(shared_clip("ljspeech_LJ001-0002.flac"), dtype="float32")
    stereo = np.stack([audio, audio * 0.5], axis=1)
    noisy = stereo + rng.normal(0, 1e-3, stereo.shape).astype(np.float32)
    resampled = np.interp(np.arange(0, len(audio), rate / 44100), np.arange(len(audio)), noisy[:, 0])
    soundfile.write(root / "clips" / "synth_44k_stereo.wav", np.stack([resampled, resampled], 1), 44100)
    good.append(root / "clips" / "synth_44k_stereo.wav")

    bad = {}
    (root / "clips" / "not_audio.wav").write_text("these are words, not samples\n" * 20)
    bad[root / "clips" / "not_audio.wav"] = "not an audio file"
    (root / "clips" / "empty.wav").write_bytes(b"")
    bad[root / "clips" / "empty.wav"] = "empty file"
    data = shared_clip("ljspeech_LJ001-0013.flac").read_bytes()
    (root / "clips" / "truncated.flac").write_bytes(data[: len(data) // 2])
    bad[root / "clips" / "truncated.flac"] = "corrupt or truncated"
    bad[root / "missing_1.flac"] = "no such file"
    bad[root / "missing_2.wav"] = "no such file"
    assert len(good) + len(bad) >= 20
    return root, good, bad


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    """Each good file transcribed in this process (max_whisper.decoding.transcribe) and written by the writers."""
    import torch

    from max_whisper.audio import load_audio
    from max_whisper.backends import create_backend
    from max_whisper.decoding import transcribe
    from max_whisper.options import TranscriptionOptions
    from max_whisper.writers import write_result

    _, good, _ = corpus
    out = tmp_path_factory.mktemp("reference")
    threads = torch.get_num_threads()
    try:
        backend = create_backend("cpu", "tiny.en", threads=1)
        options = TranscriptionOptions(**GREEDY).for_backend(backend).whisper_options()
        for path in good:
            result = transcribe(backend, load_audio(path), verbose=None, **options)
            write_result(result, audio_input(path).output_name, "all", out)
    finally:
        torch.set_num_threads(threads)
    return out


def _outputs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and p.name != "results.jsonl"}


def _assert_matches_reference(out: Path, reference: Path, good: list[Path]) -> None:
    written, expected = _outputs(out), _outputs(reference)
    for path in good:
        stem = audio_input(path).output_stem
        for ext in ("txt", "vtt", "srt", "tsv", "json"):
            name = f"{stem}.{ext}"
            assert name in written, f"{name} missing"
            assert written[name] == expected[name], f"{name} differs from the single-process transcription"
    assert not [p for p in out.iterdir() if p.name.startswith(".max-whisper-") and p.name != ".max-whisper-batch"]


@pytest.fixture(scope="module")
def first_run(ray_runtime, corpus, tmp_path_factory):
    root, good, bad = corpus
    out = tmp_path_factory.mktemp("out")
    inputs = [root / "clips", *[p for p in bad if not p.exists()]]
    summary = transcribe_many(inputs, out, workers=2, **GREEDY)
    return out, inputs, summary


def test_good_files_written_identical_and_bad_files_are_failed_rows(first_run, corpus, reference):
    out, _, summary = first_run
    _, good, bad = corpus
    assert (summary.files, summary.ok, summary.failed) == (len(good) + len(bad), len(good), len(bad))
    assert summary.exit_code == ExitCode.FAILED
    _assert_matches_reference(out, reference, good)
    rows = read_results(out / "results.jsonl")
    assert len(rows) == len(good) + len(bad)
    by_path = {row["path"]: row for row in rows}
    for path, expected in bad.items():
        row = by_path[str(path)]
        assert row["status"] == "failed" and expected in row["error"] and "\n" not in row["error"]
        assert row["error"].startswith(str(path))
    for path in good:
        row = by_path[str(path)]
        assert row["status"] == "ok" and row["error"] is None and row["backend"] == "cpu"
        assert row["text_chars"] > 0 and row["duration"] > 0
        assert {"load_audio", "mel", "encode", "decode", "transcribe", "write"} <= set(row["stages"])
    a, b = (audio_input(p).output_stem for p in good if p.name == "jfk.flac" and p.parent.name in "ab")
    assert a != b


def test_rerun_skips_verified_files_and_redoes_the_rest(first_run, corpus):
    out, inputs, _ = first_run
    _, good, bad = corpus
    dry = transcribe_many(inputs, out, dry_run=True, **GREEDY)
    assert (dry.files, dry.done_before, dry.pending) == (len(good) + len(bad), len(good), len(bad))
    assert dry.done_seconds > 30
    # An edited output and a deleted output make their files not done; other options make every file not done.
    edited, deleted = audio_input(good[0]).output_stem, audio_input(good[1]).output_stem
    (out / f"{edited}.txt").write_text("edited\n")
    (out / f"{deleted}.srt").unlink()
    assert transcribe_many(inputs, out, dry_run=True, **GREEDY).pending == len(bad) + 2
    assert transcribe_many(inputs, out, dry_run=True, beam_size=None).pending == len(good) + len(bad)
    rows_before = len(read_results(out / "results.jsonl"))
    again = transcribe_many(inputs, out, workers=2, **GREEDY)
    assert (again.done_before, again.ok, again.failed) == (len(good) - 2, 2, len(bad))
    rows = read_results(out / "results.jsonl")[rows_before:]
    assert sorted(r["path"] for r in rows if r["status"] == "ok") == sorted([str(good[0]), str(good[1])])
    assert (out / f"{edited}.txt").read_text() != "edited\n" and (out / f"{deleted}.srt").is_file()


def test_killed_actor_its_file_is_retried_and_written_once(ray_runtime, corpus, reference, tmp_path, monkeypatch):
    _, good, _ = corpus
    marker = tmp_path / "killed"
    monkeypatch.setenv("MAX_WHISPER_BATCH_CRASH", f"{marker}:3")  # the first actor to reach its 3rd file dies
    out = tmp_path / "out"
    summary = transcribe_many(good, out, workers=2, **GREEDY)
    assert marker.exists(), "no actor was killed: the test proved nothing"
    assert (summary.ok, summary.failed, summary.not_finished, summary.duplicates) == (len(good), 0, 0, 0)
    rows = read_results(out / "results.jsonl")
    assert sorted(r["path"] for r in rows) == sorted(str(p) for p in good)  # each file exactly once
    assert len({r["worker"] for r in rows}) >= 3  # the two first actors and the restarted one
    _assert_matches_reference(out, reference, good)
    records = list((out / ".max-whisper-batch" / "done").iterdir())
    assert len(records) == len(good)


def test_interrupted_run_resumes_without_redoing_done_files(ray_runtime, corpus, tmp_path):
    _, good, _ = corpus
    manifest = tmp_path / "list.txt"
    manifest.write_text("".join(f"{p}\n" for p in good))
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "max_whisper.batch.command",
        str(manifest),
        "-o",
        str(out),
        "--workers",
        "1",
        "--address",
        ray_runtime,
        "--beam-size",
        "None",
        "--temperature-increment-on-fallback",
        "None",
        "--no-progress",
    ]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = out / "results.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if results.exists() and len(read_results(results)) >= 3:
            break
        time.sleep(0.2)
    assert process.poll() is None, f"finished before it could be interrupted: {process.communicate()}"
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == ExitCode.INTERRUPTED, stderr
    assert "interrupted" in stdout + stderr and "Traceback" not in stderr
    first = read_results(results)
    done_first = {r["path"] for r in first}
    assert 3 <= len(first) < len(good) and all(r["status"] == "ok" for r in first)

    resumed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == ExitCode.OK, resumed.stderr
    second = read_results(results)[len(first) :]
    assert {r["path"] for r in second}.isdisjoint(done_first)  # nothing redone
    assert sorted(r["path"] for r in first + second) == sorted(str(p) for p in good)  # nothing lost
    for row in first + second:
        for name in row["outputs"]:
            assert (out / name).stat().st_size > 0
