"""Robustness: bad input, silence, hour-long audio, interrupted runs, concurrency, determinism.

Every case either gives a correct result or a one-line error with a non-zero exit status, never a
traceback.  Cases already covered elsewhere are not repeated here:

* ``test_cli.py``: missing path, directory, text file named ``.wav``, 0-byte file, truncated FLAC,
  NaN or infinite samples, unknown model, gpu without CUDA, one bad file among two, Ctrl-C simulated
  in-process;
* ``test_audio.py``: the loader on each of those, plus resampling, channel mixing, chmod-000 files
  (and the same branch simulated for root), ffmpeg fallbacks;
* ``test_models.py``: damaged caches rebuilt, concurrent builds with a fake converter;
* ``test_writers.py``: a writer failing (or Ctrl-C) midway leaves no output file.

Backends: the decoding cases run on ``cpu`` (the session ``cpu_backend``), ``max`` (the session
``max_backend``: its graphs are compiled once per session; marked ``max``) and ``gpu`` (only where
CUDA exists), all in-process through ``max_whisper.decoding.transcribe``.  The file-format cases go
through the CLI in-process on ``cpu`` (decoding is backend-independent there); interruption,
concurrency and the hour-long file run the real command in subprocesses.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import soxr

from conftest import shared_clip
from max_whisper import backends as backend_module
from max_whisper import cli, models
from max_whisper.audio import load_audio
from max_whisper.decoding import transcribe
from max_whisper.writers import write_result
from robustness_helpers import (
    CLI_DEFAULTS,
    GREEDY_FLAGS,
    JFK,
    JFK_TEXT,
    LONGFORM,
    SAMPLE_RATE,
    StreamWatcher,
    assert_near_empty,
    build_long_audio,
    error_lines,
    fraction_of_words_found,
    interrupt,
    match_sentences_in_order,
    python_cli,
    run_measured,
)

FORMATS = ("txt", "vtt", "srt", "tsv", "json")
PROJECT_ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def gpu_backend() -> Any:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available on this machine")
    return backend_module.create_backend("gpu", "tiny.en")


@pytest.fixture(
    params=[
        pytest.param("cpu"),
        pytest.param("max", marks=pytest.mark.max),
        pytest.param("gpu", marks=pytest.mark.gpu),
    ]
)
def backend(request: pytest.FixtureRequest) -> Any:
    """Each backend in turn, built once per session."""
    return request.getfixturevalue(f"{request.param}_backend")


@pytest.fixture(scope="module")
def jfk() -> np.ndarray:
    return load_audio(shared_clip(JFK.name))


@pytest.fixture(scope="module")
def cli_run(cpu_backend: Any) -> Any:
    """``cli_run(*args)`` -> (exit code, stdout, stderr) of ``max-whisper transcribe args...`` in-process.

    ``--backend cpu`` with tiny.en reuses the session's cpu backend; any other creation calls through to
    the real ``create_backend`` (so its errors are the real ones).
    """
    real = backend_module.create_backend

    def create_backend(name: str, model: Any = None, **options: Any) -> Any:
        if name == "cpu" and model == "tiny.en" and not options.get("threads"):
            return cpu_backend
        return real(name, model, **options)

    mp = pytest.MonkeyPatch()
    mp.setattr(backend_module, "create_backend", create_backend)

    def run(*args: Any) -> tuple[int, str, str]:
        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = cli.main(["transcribe", *(str(a) for a in args)])
        return code, stdout.getvalue(), stderr.getvalue()

    yield run
    mp.undo()


@pytest.fixture(scope="module")
def jfk_reference(cli_run: Any, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The CLI's greedy transcript of the original jfk.flac: what every lossless variant must print."""
    shared_clip(JFK.name)
    out = tmp_path_factory.mktemp("jfk-reference")
    code, stdout, stderr = cli_run(JFK, "-f", "txt", "-o", out, *GREEDY_FLAGS)
    assert code == 0, stderr
    assert fraction_of_words_found(JFK_TEXT, stdout) >= 0.9, stdout
    return stdout


@pytest.fixture(scope="session")
def model_env(checkpoint_path: Path) -> dict[str, str]:
    """Environment for subprocesses: the session's converted tiny.en (MAX_WHISPER_MODEL_DIR), the
    user's other caches (MAX's compile cache) untouched."""
    env = dict(os.environ)
    env[models.MODEL_DIR_ENV] = str(checkpoint_path.parent)
    env.pop("PYTHONWARNINGS", None)
    return env


def files_in(directory: Path) -> list[str]:
    """Every entry under ``directory`` (hidden temp dirs included), relative, sorted."""
    if not directory.exists():
        return []
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


def assert_one_line_error(code: int, stderr: str, *fragments: str) -> str:
    assert code != 0
    assert "Traceback" not in stderr, stderr
    lines = error_lines(stderr)
    assert len(lines) == 1, stderr
    line = lines[0]
    assert line.startswith("max-whisper: error:"), line
    for fragment in fragments:
        assert fragment.lower() in line.lower(), line
    return line


# =========================================================================== 1. inputs, on every backend


def test_zero_length_waveform(backend: Any) -> None:
    """No samples at all: an empty transcript, no segment, no error."""
    result = transcribe(backend, np.zeros(0, dtype=np.float32), **CLI_DEFAULTS)
    assert result["text"] == "" and result["segments"] == []


def test_tenth_of_a_second(backend: Any, jfk: np.ndarray) -> None:
    """0.1 s (the first 1600 samples of jfk.flac, before the speech): decodes, (near-)empty text."""
    result = transcribe(backend, jfk[: SAMPLE_RATE // 10].copy(), **CLI_DEFAULTS)
    assert_near_empty(result)


def test_digital_silence_60s(backend: Any) -> None:
    """60 s of zeros: (near-)empty text; whisper's no-speech probability is high on every window."""
    result = transcribe(backend, np.zeros(60 * SAMPLE_RATE, dtype=np.float32), **CLI_DEFAULTS)
    assert_near_empty(result)
    assert all(s["no_speech_prob"] > 0.5 for s in result["segments"]), result["segments"]


def test_white_noise_60s(backend: Any) -> None:
    """60 s of white noise: no hallucinated sentences and no repeated-phrase loop — the fallback,
    no-speech and compression-ratio thresholds end in (near-)empty text."""
    noise = np.random.default_rng(0).standard_normal(60 * SAMPLE_RATE).astype(np.float32) * 0.1
    result = transcribe(backend, noise, **CLI_DEFAULTS)
    assert_near_empty(result)
    assert all(s["compression_ratio"] <= 2.4 for s in result["segments"]), result["segments"]


def test_non_finite_waveform(backend: Any) -> None:
    """A waveform with NaN samples: the one-line AudioError, on every backend, before the model runs."""
    from max_whisper.errors import AudioError

    samples = np.random.default_rng(5).standard_normal(SAMPLE_RATE).astype(np.float32) * 0.1
    samples[::4000] = np.nan
    with pytest.raises(AudioError, match=r"^audio: 4 of 16000 samples are NaN or infinite"):
        transcribe(backend, samples, **CLI_DEFAULTS)


def test_clipped_speech(backend: Any, jfk: np.ndarray) -> None:
    """jfk.flac amplified 8x and hard-clipped at +-1 (a third of the samples clipped): still the sentence."""
    clipped = np.clip(jfk * 8.0, -1.0, 1.0)
    assert np.mean(np.abs(clipped) >= 1.0) > 0.05
    result = transcribe(backend, clipped, **CLI_DEFAULTS)
    assert fraction_of_words_found(JFK_TEXT, result["text"]) >= 0.8, result["text"]


# =========================================================================== 1. inputs: files through the CLI


def test_zero_length_wav_file(cli_run: Any, tmp_path: Path) -> None:
    """A valid WAV header with no frames (not a 0-byte file: that one is in test_cli)."""
    path = tmp_path / "nothing.wav"
    sf.write(path, np.zeros(0, dtype=np.float32), SAMPLE_RATE, subtype="PCM_16")
    assert path.stat().st_size > 0
    code, stdout, stderr = cli_run(path, "-o", tmp_path / "out")
    assert code == 1 and stdout == ""
    assert_one_line_error(code, stderr, str(path), "no audio samples")
    assert files_in(tmp_path / "out") == []


@pytest.mark.parametrize("rate", [8000, 48000])
def test_sample_rate(cli_run: Any, tmp_path: Path, jfk: np.ndarray, rate: int) -> None:
    """jfk.flac resampled to 8 kHz (telephone band) or 48 kHz and saved as 16-bit WAV: resampled back to
    16 kHz on load, transcribed."""
    path = tmp_path / f"jfk_{rate}.wav"
    sf.write(path, soxr.resample(jfk, SAMPLE_RATE, rate, quality="HQ"), rate, subtype="PCM_16")
    assert sf.info(path).samplerate == rate
    code, stdout, stderr = cli_run(path, "-f", "txt", "-o", tmp_path / "out", *GREEDY_FLAGS)
    assert code == 0, stderr
    assert fraction_of_words_found(JFK_TEXT, stdout) >= 0.8, stdout
    assert files_in(tmp_path / "out") == [f"jfk_{rate}.txt"]


def test_stereo_with_different_channels(cli_run: Any, tmp_path: Path, jfk: np.ndarray) -> None:
    """Left: the speech; right: quiet noise. Channels are averaged (as whisper/ffmpeg -ac 1 do)."""
    right = np.random.default_rng(1).standard_normal(len(jfk)).astype(np.float32) * 0.01
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([jfk, right], axis=1), SAMPLE_RATE, subtype="PCM_16")
    assert sf.info(path).channels == 2
    code, stdout, stderr = cli_run(path, "-f", "txt", "-o", tmp_path / "out", *GREEDY_FLAGS)
    assert code == 0, stderr
    assert fraction_of_words_found(JFK_TEXT, stdout) >= 0.8, stdout


@pytest.mark.parametrize("subtype", ["PCM_24", "FLOAT", "DOUBLE"])
def test_24_bit_and_float_wav(cli_run: Any, jfk_reference: str, tmp_path: Path, jfk: np.ndarray, subtype: str) -> None:
    """The 16-bit samples of jfk.flac stored as 24-bit / 32-bit float / 64-bit float WAV are the same
    samples: the transcript is identical to the original's."""
    path = tmp_path / f"jfk_{subtype.lower()}.wav"
    sf.write(path, jfk, SAMPLE_RATE, subtype=subtype)
    assert sf.info(path).subtype == subtype
    code, stdout, stderr = cli_run(path, "-f", "txt", "-o", tmp_path / "out", *GREEDY_FLAGS)
    assert code == 0, stderr
    assert stdout == jfk_reference


@pytest.mark.parametrize(
    ("name", "fmt", "subtype"),
    [("flac_data.wav", "FLAC", "PCM_16"), ("wav_data.mp3", "WAV", "PCM_16"), ("ogg_data.flac", "OGG", "VORBIS")],
    ids=["flac-named-wav", "wav-named-mp3", "ogg-named-flac"],
)
def test_misleading_extension(
    cli_run: Any, jfk_reference: str, tmp_path: Path, jfk: np.ndarray, name: str, fmt: str, subtype: str
) -> None:
    """The container is recognised from the file's content, not its name."""
    path = tmp_path / name
    sf.write(path, jfk, SAMPLE_RATE, format=fmt, subtype=subtype)
    assert sf.info(path).format == fmt
    code, stdout, stderr = cli_run(path, "-f", "txt", "-o", tmp_path / "out", *GREEDY_FLAGS)
    assert code == 0, stderr
    if subtype == "VORBIS":  # lossy: the same words, not necessarily the same bytes
        assert fraction_of_words_found(JFK_TEXT, stdout) >= 0.8, stdout
    else:
        assert stdout == jfk_reference
    assert files_in(tmp_path / "out") == [Path(name).stem + ".txt"]


def test_path_with_spaces_and_non_ascii(model_env: dict[str, str], tmp_path: Path) -> None:
    """A real command (subprocess) under the C locale, on a path with spaces, accents, CJK and an
    emoji: the transcript is printed and the outputs carry the same stem."""
    shared_clip(JFK.name)
    folder = tmp_path / "my recordings" / "réunion 会議 🎙"
    folder.mkdir(parents=True)
    audio = folder / "Ansprache – Präsident Kennedy.flac"
    shutil.copyfile(JFK, audio)
    out = tmp_path / "sortie été"
    env = dict(model_env, LC_ALL="C", LANG="C")
    env.pop("PYTHONIOENCODING", None)
    proc = subprocess.run(
        python_cli("transcribe", audio, "-o", out, *GREEDY_FLAGS),
        capture_output=True,
        env=env,
        timeout=600,
        cwd=tmp_path,
    )
    stderr = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert fraction_of_words_found(JFK_TEXT, proc.stdout.decode("utf-8")) >= 0.9
    assert files_in(out) == sorted(f"{audio.stem}.{ext}" for ext in FORMATS)
    data = json.loads((out / f"{audio.stem}.json").read_text(encoding="utf-8"))
    assert fraction_of_words_found(JFK_TEXT, data["text"]) >= 0.9


#: Linux capabilities that let root ignore file permission bits, and prctl's PR_CAPBSET_DROP.
_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH, _PR_CAPBSET_DROP = 1, 2, 24


def _drop_dac_capabilities() -> None:
    """In the child, before exec: remove the two capabilities from the bounding set, so the command
    (still uid 0) is refused files whose mode bits forbid reading them, like any other user."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def test_unreadable_file(model_env: dict[str, str], tmp_path: Path) -> None:
    """A chmod-000 file, as a real command: one line, exit 1, nothing written.

    Root reads anything, so when the tests run as root the command is started without the
    CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH capabilities (prctl PR_CAPBSET_DROP before exec): it stays
    uid 0 (the venv under /root stays usable) but permission bits apply to it.  (test_audio.py also
    simulates the PermissionError for the loader alone.)
    """
    shared_clip(JFK.name)
    secret = tmp_path / "secret.wav"
    shutil.copyfile(JFK, secret)
    secret.chmod(0)
    out = tmp_path / "out"
    preexec = None
    if os.geteuid() == 0:
        probe = subprocess.run([sys.executable, "-c", "pass"], preexec_fn=_drop_dac_capabilities, capture_output=True)
        if probe.returncode != 0:
            pytest.skip("running as root and cannot drop CAP_DAC_OVERRIDE here")
        preexec = _drop_dac_capabilities
    elif os.access(secret, os.R_OK):
        pytest.skip("chmod 000 does not stop reading here")
    try:
        proc = subprocess.run(
            python_cli("transcribe", secret, "-o", out),
            capture_output=True,
            text=True,
            env=model_env,
            timeout=600,
            preexec_fn=preexec,
        )
    finally:
        secret.chmod(0o600)
    assert_one_line_error(proc.returncode, proc.stderr, str(secret), "permission denied")
    assert proc.returncode == 1 and proc.stdout == ""
    assert files_in(out) == []


# =========================================================================== 3. several files in one call


def test_bad_files_do_not_stop_the_good_ones(cli_run: Any, jfk_reference: str, tmp_path: Path) -> None:
    """good, directory, garbage, good, missing: the three bad ones are one line each (in order), the two
    good ones are printed and written, exit status 1.  (test_cli has the two-file case.)"""
    shared_clip(JFK.name)
    good1 = tmp_path / "first.flac"
    shutil.copyfile(JFK, good1)
    folder = tmp_path / "folder.wav"
    folder.mkdir()
    garbage = tmp_path / "garbage.flac"
    garbage.write_bytes(np.random.default_rng(2).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    good2 = tmp_path / "second.wav"
    sf.write(good2, load_audio(JFK), SAMPLE_RATE, subtype="PCM_16")
    missing = tmp_path / "missing.mp3"
    out = tmp_path / "out"
    code, stdout, stderr = cli_run(good1, folder, garbage, good2, missing, "-f", "txt", "-o", out, *GREEDY_FLAGS)
    assert code == 1
    assert "Traceback" not in stderr
    lines = error_lines(stderr)
    assert len(lines) == 3, stderr
    expected = [(folder, "directory"), (garbage, "not"), (missing, "no such file")]
    for line, (path, why) in zip(lines, expected, strict=True):
        assert line.startswith(f"max-whisper: error: {path}") and why in line, line
    assert stdout.splitlines() == [jfk_reference.strip()] * 2
    assert files_in(out) == ["first.txt", "second.txt"]


# =========================================================================== 4. interruption


def as_from_a_terminal() -> None:
    """In the child, before exec: SIGINT unblocked and at its default, as a shell starts a command (the
    test process may have inherited a blocked or ignored SIGINT from an earlier test's libraries)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_leaves_no_partial_output_and_exits_130(model_env: dict[str, str], tmp_path: Path) -> None:
    """``transcribe jfk.flac longform.flac``: SIGINT once the second file's progress bar shows. The first
    file's outputs are complete, the second has none (no temp dir either), exit 130, no traceback."""
    shared_clip(JFK.name)
    shared_clip(LONGFORM.name)
    for attempt in range(2):
        out = tmp_path / f"out{attempt}"
        proc = subprocess.Popen(
            python_cli("transcribe", JFK, LONGFORM, "-o", out, *GREEDY_FLAGS),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=model_env,
            preexec_fn=as_from_a_terminal,
        )
        watcher = StreamWatcher(proc)
        try:
            started = watcher.wait_for(
                lambda w: w.text("stdout").strip() != "" and "%|" in w.text("stderr"), timeout=600
            )
            assert started, f"the second file never started: {watcher.text('stderr')[-2000:]}"
            time.sleep(1.0)
            assert proc.poll() is None, "finished before it could be interrupted"
            interrupt(proc)
            code, stdout, stderr = watcher.finish(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
        # a stalled test process may see the progress bar only as the child ends; a signal that lands
        # after the last window cannot interrupt anything: that attempt proves nothing, run it again
        if not (code == 0 and "100%|" in stderr):
            break
    assert code == 130, stderr
    assert "Traceback" not in stderr
    assert error_lines(stderr)[-1] == "max-whisper: interrupted"
    assert fraction_of_words_found(JFK_TEXT, stdout) >= 0.9
    assert files_in(out) == sorted(f"jfk.{ext}" for ext in FORMATS)
    assert json.loads((out / "jfk.json").read_text())["segments"]


_BUILD_AND_HANG = r"""
import os, sys, time
from max_whisper.models import ct2
from max_whisper import models

phase = sys.argv[1]

def hang():
    print("READY", flush=True)
    time.sleep(600)

if phase == "converting":  # announce, then really convert (several seconds)
    real_convert = ct2.convert_ct2_whisper
    def convert(model_dir):
        print("READY", flush=True)
        return real_convert(model_dir)
    ct2.convert_ct2_whisper = convert
elif phase == "writing":  # the temp file is written and synced, not yet renamed
    import torch
    real_save = torch.save
    def save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.flush()
        os.fsync(f.fileno())
        hang()
    torch.save = save
elif phase == "before-sidecar":  # the checkpoint is in place, its sidecar not written yet
    from max_whisper.models import cache
    real_write = cache.write_atomic
    def write_atomic(target, write):
        if target.name.endswith(".sha256"):
            hang()
        return real_write(target, write)
    cache.write_atomic = write_atomic
models.resolve_checkpoint("tiny.en")
print("DONE", flush=True)
"""


@pytest.mark.parametrize("phase", ["converting", "writing", "before-sidecar"])
def test_killed_model_build_leaves_no_corrupt_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model_env: dict[str, str], phase: str
) -> None:
    """SIGKILL while the default model is being converted / its temp file written / before its sidecar
    is written: nothing half-built is ever taken for valid; the next run cleans up, rebuilds, verifies."""
    xdg = tmp_path / "xdg"
    env = dict(model_env, XDG_CACHE_HOME=str(xdg))
    env.pop(models.MODEL_DIR_ENV, None)
    cache = xdg / "max-whisper"
    target = cache / "tiny.en.pt"
    proc = subprocess.Popen(
        [sys.executable, "-c", _BUILD_AND_HANG, phase], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    watcher = StreamWatcher(proc)
    try:
        assert watcher.wait_for(lambda w: "READY" in w.text("stdout"), timeout=300), watcher.text("stderr")[-2000:]
        if phase == "converting":
            time.sleep(0.5)
        proc.send_signal(signal.SIGKILL)
        code, stdout, _ = watcher.finish(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == -signal.SIGKILL and "DONE" not in stdout

    temps = sorted(p.name for p in cache.glob(".tiny.en.pt.*.tmp"))
    if phase == "converting":
        assert not target.exists() and temps == []
    elif phase == "writing":
        assert not target.exists() and len(temps) == 1  # the full-size temp file, never renamed
    else:
        assert target.is_file() and models.verify_checkpoint(target) == "sidecar missing or unreadable"

    # the next run: resolves in-process against the same cache
    monkeypatch.setenv("XDG_CACHE_HOME", str(xdg))
    monkeypatch.delenv(models.MODEL_DIR_ENV, raising=False)
    assert models.resolve_checkpoint("tiny.en") == target
    assert models.verify_checkpoint(target) is None
    assert sorted(p.name for p in cache.iterdir()) == ["tiny.en.pt", "tiny.en.pt.lock", "tiny.en.pt.sha256"]
    assert models.load_checkpoint("tiny.en")["dims"]["n_vocab"] == 51864


# =========================================================================== 5. concurrency


def test_two_processes_on_an_empty_model_cache(model_env: dict[str, str], tmp_path: Path) -> None:
    """Two ``transcribe`` commands started together on an empty cache: both succeed with byte-identical
    outputs; the default model is converted once (the other process waits on the build lock)."""
    shared_clip(JFK.name)
    xdg = tmp_path / "xdg"
    env = dict(model_env, XDG_CACHE_HOME=str(xdg))
    env.pop(models.MODEL_DIR_ENV, None)
    procs = [
        subprocess.Popen(
            python_cli("transcribe", JFK, "-o", tmp_path / f"out{i}", "--json-log", *GREEDY_FLAGS),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(2)
    ]
    results = [p.communicate(timeout=900) for p in procs]
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err
    assert results[0][0] == results[1][0]
    assert fraction_of_words_found(JFK_TEXT, results[0][0]) >= 0.9
    records = [json.loads(line) for _, err in results for line in err.splitlines() if line.startswith("{")]
    conversions = [r for r in records if r["message"].startswith("converting ")]
    assert len(conversions) == 1, conversions
    target = xdg / "max-whisper" / "tiny.en.pt"
    assert models.verify_checkpoint(target) is None
    for ext in FORMATS:
        assert (tmp_path / "out0" / f"jfk.{ext}").read_bytes() == (tmp_path / "out1" / f"jfk.{ext}").read_bytes()


@pytest.mark.max
def test_two_max_processes_share_the_compile_cache(max_backend: Any, model_env: dict[str, str], tmp_path: Path) -> None:
    """Two ``--backend max`` commands at once on MAX's compile cache (the user's, which the session's
    max_backend has just filled for the current graphs): both compile/load and give the same transcript.
    (An empty compile cache costs ~8 min of compiling per process on a small CPU; see the next test.)"""
    shared_clip(JFK.name)
    procs = [
        subprocess.Popen(
            python_cli("transcribe", JFK, "--backend", "max", "-f", "txt", "-o", tmp_path / f"out{i}", *GREEDY_FLAGS),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=model_env,
        )
        for i in range(2)
    ]
    results = [p.communicate(timeout=1200) for p in procs]
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err
        assert "Traceback" not in err
    assert results[0][0] == results[1][0]
    assert fraction_of_words_found(JFK_TEXT, results[0][0]) >= 0.9


@pytest.mark.max
@pytest.mark.slow
def test_two_processes_compile_into_an_empty_max_cache(tmp_path: Path) -> None:
    """MAX's compile cache itself, empty, written by two processes at once (MODULAR_CACHE_DIR in tmp):
    the small layer_norm -> matmul -> gelu graph of benchmarks/graph_test.py, both runs correct, and
    a third run afterwards still correct (what the two left in the cache is usable)."""
    pytest.importorskip("max.engine", reason="the MAX engine is not installed")
    script = PROJECT_ROOT / "benchmarks" / "graph_test.py"
    env = dict(os.environ, MODULAR_CACHE_DIR=str(tmp_path / "modular"))
    cmd = [sys.executable, str(script)]
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) for _ in range(2)
    ]
    outputs = [p.communicate(timeout=1200)[0] for p in procs]
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0 and "graph-test: OK" in out, out
    third = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1200)
    assert third.returncode == 0 and "graph-test: OK" in third.stdout, third.stdout + third.stderr


# =========================================================================== 6. determinism


@pytest.mark.parametrize(
    "mode",
    [
        pytest.param({}, id="cli-defaults"),
        # every decode "fails" the compression-ratio check, so the window falls back from beam search
        # at T=0 to best-of-5 sampling at T=1.0 (torch's RNG); without timestamps the 11-s clip is one
        # window whatever is sampled (timestamped garbage would make whisper seek in small steps)
        pytest.param(
            {"temperature": (0.0, 1.0), "compression_ratio_threshold": 0.0, "without_timestamps": True},
            id="sampling-fallback",
        ),
    ],
)
def test_same_input_same_bytes(backend: Any, jfk: np.ndarray, tmp_path: Path, mode: dict[str, Any]) -> None:
    """Two transcriptions of the same audio with the same options write byte-identical txt, vtt, srt,
    tsv and json files."""
    options = {**CLI_DEFAULTS, **mode}
    written = []
    for run in range(2):
        result = transcribe(backend, jfk, **options)
        if mode:
            assert result["segments"] and all(s["temperature"] == 1.0 for s in result["segments"])
        written.append(write_result(result, JFK, "all", tmp_path / f"run{run}"))
    assert [p.name for p in written[0]] == [f"jfk.{ext}" for ext in FORMATS]
    for first, second in zip(*written, strict=True):
        assert first.read_bytes() == second.read_bytes(), first.name


# =========================================================================== 2. an hour of audio


@pytest.mark.slow
def test_sixty_minutes_bounded_memory_no_window_dropped(model_env: dict[str, str], tmp_path: Path) -> None:
    """60 minutes made of the 32 LJ Speech clips repeated with 0.3-1 s gaps, transcribed by the command
    (cpu, tiny.en, greedy at temperature 0): peak RSS of that process < 2 GB, and every sentence appears,
    in order (>= 80 % of its words aligned; >= 95 % of sentences, never 3 missing in a row), with no
    gap in the segments' timeline longer than 10 s."""
    long_audio = build_long_audio(tmp_path / "hour.wav", target_seconds=3600.0)
    assert long_audio.seconds > 3590
    out = tmp_path / "out"
    measured = run_measured(
        python_cli("transcribe", long_audio.path, "--backend", "cpu", "-f", "json", "-o", out, *GREEDY_FLAGS),
        tmp_path / "logs",
        timeout=3600,
        env=model_env,
    )
    assert not measured.timed_out, f"still running after {measured.seconds:.0f} s"
    assert measured.returncode == 0, measured.stderr[-3000:]
    assert "Traceback" not in measured.stderr
    result = json.loads((out / "hour.json").read_text())

    match = match_sentences_in_order(long_audio.sentences, result["text"])
    segments = result["segments"]
    starts = [s["start"] for s in segments]
    gaps = [b["start"] - a["end"] for a, b in zip(segments, segments[1:], strict=False)]
    summary = (
        f"60-minute file ({long_audio.seconds / 60:.1f} min, {len(long_audio.sentences)} sentences), "
        "cpu tiny.en greedy: "
        f"peak RSS {measured.max_rss_bytes / 2**20:.0f} MiB, {measured.seconds:.0f} s, "
        f"{match.found_fraction:.1%} of sentences found in order, longest run missing {match.longest_missing_run}, "
        f"{len(segments)} segments, largest gap {max(gaps, default=0):.1f} s"
    )
    print("\n" + summary)
    assert measured.max_rss_bytes < 2 * 2**30, summary
    assert starts == sorted(starts), "segments out of order"
    assert segments[0]["start"] < 10 and segments[-1]["end"] > long_audio.seconds - 10, summary
    assert max(gaps, default=0) <= 10, summary
    assert match.found_fraction >= 0.95, summary
    assert match.longest_missing_run < 3, summary
