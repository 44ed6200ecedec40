"""The ``max-whisper`` command line, run in-process through ``main([...])``.

Each ``main`` call creates its backend once; to keep the suite fast the
backends are memoized for this module (a wrapper around
``max_whisper.backends.create_backend`` that calls through on a miss, so
errors such as an unknown model or a missing GPU still come from the real
code).  One test runs the CLI in a subprocess (``python -m max_whisper``).
Nothing here touches the network: the default tiny.en model is the one
converted from the embedded CTranslate2 weights into the user's cache.
The parser and option checks need no audio; the transcriptions ask for the
shared JFK clip through ``conftest.shared_clip``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import shared_clip
from max_whisper import backends as backend_module
from max_whisper import cli
from max_whisper.backends.base import Capabilities
from max_whisper.cli import args as cli_args
from max_whisper.errors import UsageError
from max_whisper.options import DEFAULT_TEMPERATURES, TranscriptionOptions

JFK_WORDS = "ask not what your country can do for you"
FORMATS = ("txt", "srt", "vtt", "tsv", "json")
GREEDY = ["--beam-size", "None", "--temperature-increment-on-fallback", "None"]
#: An input path for the checks that fail before any file is opened.
UNUSED = "never-opened.wav"


@pytest.fixture
def jfk() -> Path:
    return shared_clip("jfk.flac")


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
    JFK = shared_clip("jfk.flac")
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
        "--backend",
        "--model",
        "--device",
        "--output-format",
        "--output-dir",
        "--language",
        "--task",
        "--beam-size",
        "--best-of",
        "--patience",
        "--temperature",
        "--temperature-increment-on-fallback",
        "--compression-ratio-threshold",
        "--logprob-threshold",
        "--no-speech-threshold",
        "--condition-on-previous-text",
        "--initial-prompt",
        "--word-timestamps",
        "--threads",
        "--verbose",
        "--json-log",
    ):
        assert flag in out, flag
    assert "exit status" in out


def test_top_level_help_lists_the_commands(run):
    code, out, _ = run("--help")
    assert code == 0
    for command in cli.COMMANDS:
        assert command in out


def test_top_level_help_imports_no_command_and_no_torch():
    code = (
        "import sys, contextlib, io\n"
        "from max_whisper.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    assert main(['--help']) == 0\n"
        "heavy = [m for m in ('torch', 'whisper', 'max_whisper.cli.transcribe', 'max_whisper.bench.command') "
        "if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_version_is_the_installed_distributions():
    from importlib import metadata

    import max_whisper

    assert max_whisper.__version__ == metadata.version("max-whisper")
    proc = subprocess.run([sys.executable, "-m", "max_whisper", "--version"], capture_output=True, text=True)
    assert proc.stdout.strip() == f"max-whisper {max_whisper.__version__}"


def test_no_command_is_a_usage_error(run):
    code, out, err = run()
    assert code == 2
    assert "choose a command" in err


def test_unknown_flag_is_a_usage_error(run):
    code, _, err = run("transcribe", UNUSED, "--no-such-flag")
    assert code == 2
    assert "--no-such-flag" in err


def test_device_needs_a_backend_with_a_choice_of_device(run, out_dir):
    code, _, err = run("transcribe", UNUSED, "--backend", "cpu", "--device", "gpu", "-o", out_dir)
    assert_one_line_error(code, err, "--device does not apply to --backend cpu")
    assert code == 2
    assert files_in(out_dir) == []


def test_dtype_the_backend_does_not_offer(run, out_dir):
    code, _, err = run("transcribe", UNUSED, "--backend", "cpu", "--dtype", "bfloat16", "-o", out_dir)
    assert_one_line_error(code, err, "--dtype bfloat16", "cpu backend computes in float32")
    assert code == 2
    assert files_in(out_dir) == []


def test_word_options_need_word_timestamps(run, out_dir):
    code, _, err = run("transcribe", UNUSED, "--max-line-width", "40", "-o", out_dir)
    assert_one_line_error(code, err, "requires --word-timestamps")
    assert code == 2
    assert files_in(out_dir) == []


@pytest.mark.parametrize("flag", ["--beam-size", "--best-of"])
def test_a_count_of_beams_or_candidates_below_one_is_a_usage_error(run, out_dir, flag):
    code, _, err = run("transcribe", UNUSED, flag, "0", "-o", out_dir)
    assert code == 2  # argparse's usage, then one error line
    assert f"argument {flag}: must be at least 1, or None; got 0" in err.splitlines()[-1]
    assert files_in(out_dir) == []


def test_output_dir_that_is_a_file(run, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = run("transcribe", UNUSED, "-o", blocker)
    assert_one_line_error(code, err, "is not a directory")
    assert code == 2


def namespace(**overrides) -> argparse.Namespace:
    parsed = cli.build_parser("transcribe").parse_args(["transcribe", UNUSED])
    return argparse.Namespace(**{**vars(parsed), **overrides})


def test_backend_options_follow_the_declared_capabilities():
    fixed = Capabilities()
    choices = Capabilities(devices=("auto", "cpu", "gpu"), dtypes=("float32", "bfloat16"))
    assert cli_args.backend_options(namespace(threads=3), fixed) == {"threads": 3}
    assert cli_args.backend_options(namespace(), choices) == {"threads": None}
    assert cli_args.backend_options(namespace(device="cpu", dtype="bfloat16"), choices) == {
        "threads": None,
        "device": "cpu",
        "dtype": "bfloat16",
    }
    # the one dtype a backend has is accepted, and not passed on
    assert cli_args.backend_options(namespace(dtype="float32"), fixed) == {"threads": None}
    with pytest.raises(UsageError, match="does not apply"):
        cli_args.backend_options(namespace(device="cpu"), fixed)
    with pytest.raises(UsageError, match="runs on auto, cpu, gpu"):
        cli_args.backend_options(namespace(device="tpu"), choices)
    with pytest.raises(UsageError, match="word-timestamps"):
        cli_args.backend_options(namespace(word_timestamps=True), choices)


def test_registered_backends_declare_their_capabilities():
    from max_whisper.backends import backend_class

    assert backend_class("cpu").capabilities.word_timestamps is True
    assert backend_class("cpu").capabilities.dtypes == ("float32",)
    assert backend_class("gpu").capabilities.word_timestamps is True
    assert backend_class("max").capabilities.word_timestamps is False
    assert "cpu" in backend_class("max").capabilities.devices


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
    assert cli_args.temperature_schedule(0.0, 0.2) == pytest.approx((0.0, 0.2, 0.4, 0.6, 0.8, 1.0))
    assert cli_args.temperature_schedule(0.3, None) == (0.3,)


def test_default_flags_are_the_default_options():
    """The CLI's defaults and TranscriptionOptions' (the Python API's) are the same, bit for bit."""
    assert cli_args.transcription_options(namespace()) == TranscriptionOptions()
    assert cli_args.temperature_schedule(0.0, 0.2) == DEFAULT_TEMPERATURES
    greedy = cli.build_parser("transcribe").parse_args(["transcribe", UNUSED, *GREEDY])
    assert cli_args.transcription_options(greedy) == TranscriptionOptions(beam_size=None, temperature=(0.0,))


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


def test_single_format_and_greedy(jfk, run, out_dir):
    code, out, err = run("transcribe", jfk, "-f", "srt", "-o", out_dir, *GREEDY)
    assert code == 0, err
    assert JFK_WORDS in normalize(out)
    assert [p.name for p in files_in(out_dir)] == ["jfk.srt"]


def test_two_files_one_bad(jfk, run, out_dir, tmp_path):
    missing = tmp_path / "missing.wav"
    code, out, err = run("transcribe", missing, jfk, "-f", "txt", "-o", out_dir, *GREEDY)
    assert code == 1
    lines = error_lines(err)
    assert len(lines) == 1 and lines[0].startswith("max-whisper: error:") and "missing.wav" in lines[0]
    assert [p.name for p in files_in(out_dir)] == ["jfk.txt"]
    assert JFK_WORDS in normalize(out)


def test_english_only_model_warns_about_other_languages(jfk, run, out_dir):
    code, out, err = run("transcribe", jfk, "--language", "fr", "-f", "json", "-o", out_dir, *GREEDY)
    assert code == 0, err
    assert "English-only" in err and "using English" in err
    assert json.loads((out_dir / "jfk.json").read_text())["language"] == "en"
    assert JFK_WORDS in normalize(out)


def test_json_log_records(jfk, run, out_dir):
    code, out, err = run("transcribe", jfk, "-f", "txt", "-o", out_dir, "--json-log", *GREEDY)
    assert code == 0
    records = [json.loads(line) for line in error_lines(err)]
    assert records, "expected JSON log records on stderr"
    for record in records:
        assert {"timestamp", "level", "logger", "message"} <= set(record)
    done = [r for r in records if r["message"] == "transcribed"]
    assert len(done) == 1 and done[0]["audio"] == str(jfk) and done[0]["audio_seconds"] == pytest.approx(11.0, abs=0.1)


def test_keyboard_interrupt_exits_130_without_output(jfk, run, out_dir, monkeypatch):
    import max_whisper.decoding

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(max_whisper.decoding, "transcribe", interrupted)
    code, _, err = run("transcribe", jfk, "-o", out_dir)
    assert code == 130
    assert "interrupted" in err
    assert files_in(out_dir) == []


def test_unexpected_exception_is_one_line(jfk, run, out_dir, monkeypatch):
    import max_whisper.decoding

    def broken(*_args, **_kwargs):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(max_whisper.decoding, "transcribe", broken)
    code, _, err = run("transcribe", jfk, "-o", out_dir)
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


def test_truncated_flac(jfk, run, out_dir, tmp_path):
    data = jfk.read_bytes()
    path = tmp_path / "jfk_half.flac"
    path.write_bytes(data[: len(data) // 2])
    code, _, err = run("transcribe", path, "-o", out_dir)
    assert code == 1
    assert_one_line_error(code, err, str(path), "truncated")
    assert files_in(out_dir) == []


def test_unknown_model(run, out_dir):
    code, _, err = run("transcribe", UNUSED, "--model", "no-such-model", "-o", out_dir)
    assert code == 2
    assert_one_line_error(code, err, "unknown model", "no-such-model")
    assert files_in(out_dir) == []


def test_gpu_backend_without_cuda(run, out_dir):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here, so --backend gpu does not fail")
    code, _, err = run("transcribe", UNUSED, "--backend", "gpu", "-o", out_dir)
    assert code == 2
    assert_one_line_error(code, err, "gpu backend", "CUDA")
    assert files_in(out_dir) == []


def test_subprocess_missing_file_exit_code_and_one_line(tmp_path):
    missing = tmp_path / "missing.flac"
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "max_whisper", "transcribe", str(missing), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = error_lines(proc.stderr)
    assert lines == [f"max-whisper: error: {missing}: no such file"]
    assert proc.stdout == ""
    assert files_in(out) == []


# --------------------------------------------------------------------------- the console script's collector


@pytest.fixture
def collector():
    """Leave CPython's cyclic garbage collector as the suite runs it: on, nothing frozen."""
    yield
    gc.unfreeze()
    gc.enable()


def test_console_script_runs_main_without_the_collector_and_freezes_before_exit(monkeypatch, collector):
    seen = []
    monkeypatch.setattr(sys, "argv", ["max-whisper", "transcribe"])
    monkeypatch.setattr(cli, "main", lambda: seen.append(gc.isenabled()) or 3)
    with pytest.raises(SystemExit) as exit_info:
        cli.run()
    assert exit_info.value.code == 3
    assert seen == [False]
    assert gc.get_freeze_count() > 0


@pytest.mark.parametrize("command, restarts", [("compile", True), ("transcribe", False), ("benchmark", False)])
def test_the_console_script_restarts_only_compile_on_jemalloc(monkeypatch, collector, command, restarts):
    """``max-whisper compile`` runs MAX's compiler: the console script restarts it on jemalloc first."""
    started = []
    monkeypatch.setattr(sys, "argv", ["max-whisper", "--verbose", command, "--help"])
    monkeypatch.setattr(cli, "start_on_jemalloc", lambda: started.append(True))
    monkeypatch.setattr(cli, "main", lambda: 0)
    with pytest.raises(SystemExit):
        cli.run()
    assert started == ([True] if restarts else [])


def test_the_restart_preloads_max_jemalloc_unless_told_not_to(monkeypatch):
    pytest.importorskip("max.engine")

    class Restarted(Exception):
        pass

    def execve(executable, argv, env):
        raise Restarted(executable, argv, env)

    monkeypatch.setattr("os.execve", execve)
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.delenv("MODULAR_MAX_ALLOCATOR_REEXEC", raising=False)
    monkeypatch.setenv("MODULAR_MAX_ALLOCATOR", "system")
    cli.start_on_jemalloc()  # glibc's malloc asked for: no restart
    monkeypatch.delenv("MODULAR_MAX_ALLOCATOR")
    with pytest.raises(Restarted) as restart:
        cli.start_on_jemalloc()
    executable, argv, env = restart.value.args
    assert executable == sys.executable and argv == sys.orig_argv
    assert Path(env["LD_PRELOAD"]).name == "libjemalloc_preload.so" and Path(env["LD_PRELOAD"]).is_file()


def test_transcribe_turns_the_collector_back_on_once_loaded(jfk, run, out_dir, monkeypatch, collector):
    loading = []
    create = backend_module.create_backend

    def create_noting_the_collector(*args, **kwargs):
        loading.append(gc.isenabled())
        return create(*args, **kwargs)

    monkeypatch.setattr(backend_module, "create_backend", create_noting_the_collector)
    gc.disable()
    code, out, err = run("transcribe", jfk, "-f", "txt", "-o", out_dir, *GREEDY)
    assert code == 0, err
    assert JFK_WORDS in normalize(out)
    assert loading == [False]
    assert gc.isenabled() and gc.get_freeze_count() > 0


def test_other_commands_run_with_the_collector_on(run, collector):
    gc.disable()
    code, _, err = run("benchmark", "--modes", "bogus")
    assert code == 2 and "unknown decoding mode" in err
    assert gc.isenabled()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_samples(run, out_dir, tmp_path, bad):
    """A float WAV whose samples include NaN or infinity: one line naming the file, exit 1, no output."""
    samples = np.random.default_rng(3).uniform(-0.5, 0.5, 16000).astype(np.float32)
    samples[[10, 5000, 12000]] = bad
    path = tmp_path / "damaged.wav"
    sf.write(path, samples, 16000, subtype="FLOAT")
    code, out, err = run("transcribe", path, "-o", out_dir)
    assert code == 1
    assert_one_line_error(code, err, str(path), "3 of 16000 samples are NaN or infinite")
    assert out == "" and files_in(out_dir) == []


# --------------------------------------------------------------------------- the subcommand table


@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_every_command_shows_the_flags_its_module_adds(run, command):
    """``COMMAND --help`` is built from the command's own module: every flag it adds is listed."""
    module = importlib.import_module(cli.COMMANDS[command][0])
    probe = argparse.ArgumentParser()
    module.add_arguments(probe)
    flags = [s for action in probe._actions for s in action.option_strings if s not in ("-h", "--help")]
    assert flags, f"{command} adds no flag"
    code, out, _ = run(command, "--help")
    assert code == 0
    missing = [flag for flag in flags if "_" not in flag and flag not in out]  # underscore aliases are hidden
    assert missing == []


def test_a_command_whose_module_is_missing_fails_alone(run, monkeypatch):
    monkeypatch.setitem(cli.COMMANDS, "nothing", ("max_whisper.no_such_module", "a command not installed"))
    code, _, err = run("nothing")
    assert_one_line_error(
        code, err, "'nothing' command is not available in this install", "No module named 'max_whisper.no_such_module'"
    )
    assert code == 2
    code, out, _ = run("--help")
    assert code == 0 and "nothing" in out
