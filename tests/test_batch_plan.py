"""The parts of ``max-whisper batch`` that need no Ray: inputs, output names, done-records, the dry run,
the summary's exit codes and the command's usage errors. Milliseconds each."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile

from max_whisper.batch import transcribe_many
from max_whisper.batch.command import main
from max_whisper.batch.inputs import audio_input, expand_inputs
from max_whisper.batch.ledger import Ledger, ResultsTable, read_results
from max_whisper.batch.options import job_options
from max_whisper.batch.plan import make_plan
from max_whisper.batch.summary import BatchSummary
from max_whisper.errors import ExitCode, UsageError


def _wav(path: Path, seconds: float, rate: int = 16000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    soundfile.write(path, rng.normal(0, 0.1, int(seconds * rate)).astype(np.float32), rate)
    return path


def test_folders_are_searched_recursively_and_manifests_read_line_by_line(tmp_path):
    a = _wav(tmp_path / "data" / "x" / "talk.wav", 0.5)
    b = _wav(tmp_path / "data" / "y" / "talk.wav", 0.5)
    (tmp_path / "data" / "y" / "notes.md").write_text("not audio, not picked up")
    _wav(tmp_path / "data" / ".hidden" / "skip.wav", 0.1)
    listing = tmp_path / "list.txt"
    listing.write_text(f"# comment\n\ndata/x/talk.wav\n{b}\nmissing.flac\n")
    table = tmp_path / "table.tsv"
    table.write_text("speaker\tpath\n1\tdata/y/talk.wav\n")
    found = [item.path for item in expand_inputs([tmp_path / "data", listing, table, "nope.wav"])]
    assert found == [
        str(a),
        str(b),
        str(a),
        str(b),
        str(tmp_path / "missing.flac"),
        str(b),
        str(Path("nope.wav").absolute()),
    ]
    stems = {audio_input(p).output_stem for p in (a, b)}
    assert len(stems) == 2 and all(s.startswith("talk-") for s in stems)


def test_tsv_manifest_without_a_path_column_is_a_usage_error(tmp_path):
    table = tmp_path / "t.tsv"
    table.write_text("speaker\tclip\n1\ta.wav\n")
    with pytest.raises(Exception, match="needs a 'path' column"):
        list(expand_inputs([table]))


def test_done_record_verifies_outputs_source_and_options(tmp_path):
    clip = _wav(tmp_path / "clip.wav", 1.0)
    item = audio_input(clip)
    out = tmp_path / "out"
    ledger = Ledger(out, job_options(beam_size=None).fingerprint())
    ledger.create()
    assert ledger.verified(item) is None
    written = out / f"{item.output_stem}.txt"
    written.write_text("hello\n")
    ledger.commit(item, [written], 1.0, "run-1")
    assert ledger.verified(item).duration == 1.0
    assert Ledger(out, job_options(beam_size=3).fingerprint()).verified(item) is None  # other options
    written.write_text("hellO\n")  # same size, other bytes
    assert ledger.verified(item) is None
    written.write_text("hello\n")
    _wav(clip, 1.5)  # the audio changed
    assert ledger.verified(item) is None


def test_results_table_survives_a_row_cut_short(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text('{"path": "a", "status": "ok"}\n{"path": "b", "sta')
    table = ResultsTable(path)
    table.append({"path": "c", "status": "failed"})
    table.close()
    assert [row["path"] for row in read_results(path)] == ["a", "c"]


def test_dry_run_reports_files_hours_and_streams(tmp_path):
    clip = _wav(tmp_path / "clip.wav", 2.0)
    manifest = tmp_path / "big.txt"
    with open(manifest, "w") as f:
        for _ in range(5000):
            f.write(f"{clip}\n")
        f.write("missing.wav\n")
    summary = transcribe_many([manifest], tmp_path / "out", dry_run=True)
    assert (summary.files, summary.pending, summary.done_before) == (5001, 5001, 0)
    assert summary.planned_seconds == pytest.approx(10000.0)
    assert summary.exit_code == ExitCode.OK and "dry run" in summary.render()
    assert not list((tmp_path / "out" / ".max-whisper-batch").glob("plan-*"))  # the plan is removed
    # planning holds no per-file state: what the planner's own code keeps allocated stays flat as the
    # manifest grows (interpreter-wide caches such as the interned-string table are not the planner's)
    small = tmp_path / "small.txt"
    small.write_text(f"{clip}\n" * 500)
    ledger = Ledger(tmp_path / "out", job_options().fingerprint())
    batch_code = tracemalloc.Filter(True, "*max_whisper/batch/*")

    def planner_bytes(path, folder):
        tracemalloc.start()
        try:
            planned = make_plan([path], ledger, tmp_path / folder, shard_files=2000)
            held = tracemalloc.take_snapshot().filter_traces([batch_code])
        finally:
            tracemalloc.stop()
        return planned, sum(stat.size for stat in held.statistics("filename"))

    planner_bytes(small, "warm-up")  # first-use imports and caches are not per-file state
    _, small_bytes = planner_bytes(small, "plan-small")
    plan, big_bytes = planner_bytes(manifest, "plan")
    assert big_bytes < small_bytes + 64_000, (small_bytes, big_bytes)  # 10x the files, no per-file growth
    assert [files for _, files in plan.shards] == [2000, 2000, 1001]
    assert len(plan.shards[-1][0].read_text().splitlines()) == 1001


def test_summary_exit_codes():
    summary = BatchSummary(run_id="r", output_dir="o", results_path="o/results.jsonl", pending=2, ok=2)
    assert summary.exit_code == ExitCode.OK
    summary.failed, summary.ok = 1, 1
    assert summary.exit_code == ExitCode.FAILED
    summary.interrupted = True
    assert summary.exit_code == ExitCode.INTERRUPTED
    unfinished = BatchSummary(run_id="r", output_dir="o", results_path="x", pending=3, ok=1)
    assert unfinished.not_finished == 2 and unfinished.exit_code == ExitCode.FAILED


def test_usage_errors_exit_2_with_one_line(tmp_path, capsys):
    assert main([str(tmp_path), "-o", str(tmp_path / "o"), "--workers", "0"]) == ExitCode.USAGE
    assert main([str(tmp_path), "-o", str(tmp_path / "o"), "--device", "gpu"]) == ExitCode.USAGE
    assert main([str(tmp_path)]) == ExitCode.USAGE  # no --output-dir
    err = capsys.readouterr().err
    assert "--workers must be at least 1" in err and "--device gpu" in err and "Traceback" not in err
    with pytest.raises(UsageError, match="unknown transcription option"):
        job_options(beam=3)


def test_dry_run_json_summary(tmp_path, capsys):
    _wav(tmp_path / "in" / "a.wav", 1.0)
    assert main([str(tmp_path / "in"), "-o", str(tmp_path / "o"), "--dry-run", "--json"]) == ExitCode.OK
    summary = json.loads(capsys.readouterr().out)
    assert summary["files"] == 1 and summary["pending"] == 1 and summary["dry_run"] is True
