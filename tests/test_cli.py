"""The ``max-whisper`` command line, run in-process through ``main([...])``.

Each ``main`` call creates its backend once; to keep the suite fast the
backends are memoized for this module (a wrapper around
``max_whisper.backends.create_backend`` that calls through on a miss, so
errors such as an unknown model or a missing GPU still come from the real
code).  One test runs the CLI in a subprocess (``python -m max_whisper``).
Nothing here touches the network: the default tiny.en model is the one
converted from the embedded CTranslate2 weights into the user's cache.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from max_whisper import backends as backend_module
from max_whisper import cli
from max_whisper.config import SHARED_AUDIO_DIR

JFK = SHARED_AUDIO_DIR / "jfk.flac"
JFK_WORDS = "ask not what your country can do for you"
FORMATS = ("txt", "srt", "vtt", "tsv", "json")
GREEDY = ["--beam-size", "None", "--temperature-increment-on-fallback", "None"]

pytestmark = pytest.mark.skipif(not JFK.is_file(), reason=f"shared clip {JFK} not found")


def normalize(text: str) -> str:
    return " ".join(re.sub(r"[^a-z' ]+", " ", text.lower()).split())


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def files_in(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file()) if directory.exists() else []


@pytest.fixture(scope="module")
def _backend_cache():
    """Memoize backends across the module's ``main`` calls (a failed creation is not cached)."""
    real = backend_module.create_backend
    cache: dict = {}

    def create_backend(name, model=None, **options):
        key = (name, model, tuple(sorted(options.items())))
        if key not in cache:
            cache[key] = real(name, model, **options)
        return cache[key]

    mp = pytest.MonkeyPatch()
    mp.setattr(backend_module, "create_backend", create_backend)
    yield cache
    mp.undo()


@pytest.fixture
def run(_backend_cache, capsys):
    """``run(*args)`` -> (exit code, stdout, stderr) of ``max-whisper args...`` in-process."""

    def _run(*args: str):
        code = cli.main([str(a) for a in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return _run


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    return tmp_path / "out"


@pytest.fixture(scope="module")
def jfk_all(_backend_cache, tmp_path_factory):
    """One default run (beam search 5, --output-format all) on the JFK clip, shared by several tests."""
    out = tmp_path_factory.mktemp("jfk_all")
    # capsys is function-scoped: capture this one run by hand.
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = cli.main(["transcribe", str(JFK), "--output-format", "all", "--output-dir", str(out)])
    return code, stdout.getvalue(), stderr.getvalue(), out


# --------------------------------------------------------------------------- help and usage


def test_help_lists_the_flags(run):
    code, out, _ = run("transcribe", "--help")
    assert code == 0
    for flag in (
        "--backend", "--model", "--device", "--output-format", "--output-dir", "--language", "--task",
        "--beam-size", "--best-of", "--patience", "--temperature", "--temperature-increment-on-fallback",
        "--compression-ratio-threshold", "--logprob-threshold", "--no-speech-threshold",
        "--condition-on-previous-text", "--initial-prompt", "--word-timestamps", "--threads", "--verbose",
        "--json-log",
    ):
        assert flag in out, flag
    assert "exit status" in out


def test_top_level_help_lists_the_commands(run):
    code, out, _ = run("--help")
    assert code == 0
    for command in ("transcribe", "benchmark", "demo"):
        assert command in out


def test_no_command_is_a_usage_error(run):
    code, out, err = run()
    assert code == 2
    assert "choose a command" in err


def test_unknown_flag_is_a_usage_error(run):
    code, _, err = run("transcribe", str(JFK), "--no-such-flag")
    assert code == 2
    assert "--no-such-flag" in err


def test_device_needs_the_max_backend(run, out_dir):
    code, _, err = run("transcribe", str(JFK), "--backend", "cpu", "--device", "gpu", "-o", out_dir)
    assert code == 2
    assert "--device applies only to --backend max" in err
    assert files_in(out_dir) == []


def test_word_options_need_word_timestamps(run, out_dir):
    code, _, err = run("transcribe", str(JFK), "--max-line-width", "40", "-o", out_dir)
    assert code == 2
    assert "requires --word-timestamps" in err
    assert files_in(out_dir) == []


def test_whisper_underscore_spellings_are_accepted():
    args = cli.build_parser("transcribe").parse_args(
        ["transcribe", "a.wav", "--beam_size", "None", "--output_format", "srt", "--word_timestamps", "True"]
    )
    assert args.beam_size is None and args.output_format == "srt" and args.word_timestamps is True
    defaults = cli.build_parser("transcribe").parse_args(["transcribe", "a.wav"])
    # whisper's CLI defaults
    assert (defaults.beam_size, defaults.best_of, defaults.temperature) == (5, 5, 0.0)
    assert defaults.output_format == "all" and defaults.output_dir == "."
    assert defaults.condition_on_previous_text is True and defaults.word_timestamps is False
    assert cli._temperatures(0.0, 0.2) == pytest.approx((0.0, 0.2, 0.4, 0.6, 0.8, 1.0))
    assert cli._temperatures(0.3, None) == (0.3,)


def test_language_names_and_codes():
    parse = cli.build_parser("transcribe").parse_args
    assert parse(["transcribe", "a.wav", "--language", "English"]).language == "en"
    assert parse(["transcribe", "a.wav", "--language", "fr"]).language == "fr"
    assert parse(["transcribe", "a.wav", "--language", "None"]).language is None


# --------------------------------------------------------------------------- transcription


def test_jfk_all_formats_written_and_text_printed(jfk_all):
    code, out, err, out_dir = jfk_all
    assert code == 0, err
    assert JFK_WORDS in normalize(out)
    written = sorted(p.name for p in files_in(out_dir))
    assert written == sorted(f"jfk.{ext}" for ext in FORMATS)
    assert JFK_WORDS in normalize((out_dir / "jfk.txt").read_text())
    data = json.loads((out_dir / "jfk.json").read_text())
    assert JFK_WORDS in normalize(data["text"]) and data["segments"] and data["language"] == "en"
    assert "-->" in (out_dir / "jfk.srt").read_text()
    assert (out_dir / "jfk.vtt").read_text().startswith("WEBVTT")
    assert (out_dir / "jfk.tsv").read_text().startswith("start\tend\ttext")


def test_jfk_run_prints_only_the_transcript(jfk_all):
    code, out, err, _ = jfk_all
    assert code == 0
    assert len(error_lines(out)) == 1  # the transcript, nothing else on stdout
    assert "Traceback" not in err and "error" not in err


def test_single_format_and_greedy(run, out_dir):
    code, out, err = run("transcribe", JFK, "-f", "srt", "-o", out_dir, *GREEDY)
    assert code == 0, err
    assert JFK_WORDS in normalize(out)
    assert [p.name for p in files_in(out_dir)] == ["jfk.srt"]


def test_two_files_one_bad(run, out_dir, tmp_path):
    missing = tmp_path / "missing.wav"
    code, out, err = run("transcribe", missing, JFK, "-f", "txt", "-o", out_dir, *GREEDY)
    assert code == 1
    lines = error_lines(err)
    assert len(lines) == 1 and lines[0].startswith("max-whisper: error:") and "missing.wav" in lines[0]
    assert [p.name for p in files_in(out_dir)] == ["jfk.txt"]
    assert JFK_WORDS in normalize(out)


def test_english_only_model_warns_about_other_languages(run, out_dir):
    code, out, err = run("transcribe", JFK, "--language", "fr", "-f", "json", "-o", out_dir, *GREEDY)
    assert code == 0, err
    assert "English-only" in err and "using English" in err
    assert json.loads((out_dir / "jfk.json").read_text())["language"] == "en"
    assert JFK_WORDS in normalize(out)


def test_json_log_records(run, out_dir):
    code, out, err = run("transcribe", JFK, "-f", "txt", "-o", out_dir, "--json-log", *GREEDY)
    assert code == 0
    records = [json.loads(line) for line in error_lines(err)]
    assert records, "expected JSON log records on stderr"
    for record in records:
        assert {"timestamp", "level", "logger", "message"} <= set(record)
    done = [r for r in records if r["message"] == "transcribed"]
    assert len(done) == 1 and done[0]["audio"] == str(JFK) and done[0]["audio_seconds"] == pytest.approx(11.0, abs=0.1)


def test_keyboard_interrupt_exits_130_without_output(run, out_dir, monkeypatch):
    import max_whisper.decoding

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(max_whisper.decoding, "transcribe", interrupted)
    code, _, err = run("transcribe", JFK, "-o", out_dir)
    assert code == 130
    assert "interrupted" in err
    assert files_in(out_dir) == []


def test_unexpected_exception_is_one_line(run, out_dir, monkeypatch):
    import max_whisper.decoding

    def broken(*_args, **_kwargs):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(max_whisper.decoding, "transcribe", broken)
    code, _, err = run("transcribe", JFK, "-o", out_dir)
    assert code == 1
    lines = error_lines(err)
    assert len(lines) == 1
    assert lines[0].startswith("max-whisper: internal error: RuntimeError: boom second line")
    assert "--verbose" in lines[0] and "Traceback" not in err
    assert files_in(out_dir) == []


# --------------------------------------------------------------------------- bad input: one test per case


def assert_one_line_error(code: int, err: str, *fragments: str) -> str:
    assert code != 0
    lines = error_lines(err)
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith("max-whisper: error:"), line
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment.lower() in line.lower(), line
    return line


def test_missing_path(run, out_dir, tmp_path):
    path = tmp_path / "nope.wav"
    code, out, err = run("transcribe", path, "-o", out_dir)
    assert code == 1
    assert_one_line_error(code, err, str(path), "no such file")
    assert out == "" and files_in(out_dir) == []


def test_directory(run, out_dir, tmp_path):
    path = tmp_path / "folder.wav"
    path.mkdir()
    code, _, err = run("transcribe", path, "-o", out_dir)
    assert code == 1
    assert_one_line_error(code, err, str(path), "directory")
    assert files_in(out_dir) == []


def test_text_file_named_wav(run, out_dir, tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("these are meeting notes, not audio\n")
    code, _, err = run("transcribe", path, "-o", out_dir)
    assert code == 1
    assert_one_line_error(code, err, str(path), "not an audio file")
    assert files_in(out_dir) == []


def test_empty_file(run, out_dir, tmp_path):
    path = tmp_path / "empty.wav"
    path.touch()
    code, _, err = run("transcribe", path, "-o", out_dir)
    assert code == 1
    assert_one_line_error(code, err, str(path), "empty")
    assert files_in(out_dir) == []


def test_truncated_flac(run, out_dir, tmp_path):
    data = JFK.read_bytes()
    path = tmp_path / "jfk_half.flac"
    path.write_bytes(data[: len(data) // 2])
    code, _, err = run("transcribe", path, "-o", out_dir)
    assert code == 1
    assert_one_line_error(code, err, str(path), "truncated")
    assert files_in(out_dir) == []


def test_unknown_model(run, out_dir):
    code, _, err = run("transcribe", JFK, "--model", "no-such-model", "-o", out_dir)
    assert code == 2
    assert_one_line_error(code, err, "unknown model", "no-such-model")
    assert files_in(out_dir) == []


def test_gpu_backend_without_cuda(run, out_dir):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here, so --backend gpu does not fail")
    code, _, err = run("transcribe", JFK, "--backend", "gpu", "-o", out_dir)
    assert code == 2
    assert_one_line_error(code, err, "gpu backend", "CUDA")
    assert files_in(out_dir) == []


def test_subprocess_missing_file_exit_code_and_one_line(tmp_path):
    missing = tmp_path / "missing.flac"
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "max_whisper", "transcribe", str(missing), "-o", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = error_lines(proc.stderr)
    assert lines == [f"max-whisper: error: {missing}: no such file"]
    assert proc.stdout == ""
    assert files_in(out) == []


# --------------------------------------------------------------------------- delegated subcommands


@pytest.mark.parametrize("command", ["benchmark", "demo"])
def test_delegated_command_help(run, command):
    code, out, _ = run(command, "--help")
    assert code == 0
    assert command in out
