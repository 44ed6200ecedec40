"""max_whisper.audio and max_whisper.mel: reading, mono mix-down, resampling, the ffmpeg fallback,
one-line errors, and the log-mel that matches openai-whisper's bit for bit."""

from __future__ import annotations

import os
import shutil
import stat
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import whisper.audio

from conftest import shared_clip
from max_whisper import audio, mel
from max_whisper.audio import SAMPLE_RATE, audio_duration, check_waveform, load_audio
from max_whisper.errors import AudioError, MaxWhisperError


def sine(freq: float = 440.0, sr: int = SAMPLE_RATE, seconds: float = 1.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(sr * seconds))) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(x: np.ndarray, sr: int = SAMPLE_RATE) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / sr)[np.argmax(spectrum)])


def assert_audio_error(exc_info: pytest.ExceptionInfo, path: Path, *fragments: str) -> str:
    """The error is an AudioError, one line, starting with the file's name (as given) and saying why."""
    msg = str(exc_info.value)
    assert isinstance(exc_info.value, AudioError)
    assert isinstance(exc_info.value, MaxWhisperError)
    assert "\n" not in msg and "\r" not in msg, msg
    assert msg.startswith(str(path)), msg
    assert path.name in msg
    assert "Traceback" not in msg
    for fragment in fragments:
        assert fragment in msg, msg
    return msg


# --------------------------------------------------------------------------- re-exports


def test_reexports_are_openai_whispers():
    assert SAMPLE_RATE == 16000 == whisper.audio.SAMPLE_RATE == mel.SAMPLE_RATE
    assert mel.N_SAMPLES == whisper.audio.N_SAMPLES == 30 * 16000
    # mel.log_mel_spectrogram is the project's bounded-memory twin (bit-identical, tested below)
    assert mel.pad_or_trim is whisper.audio.pad_or_trim


# --------------------------------------------------------------------------- formats


@pytest.mark.parametrize(
    ("ext", "fmt", "subtype", "tol"),
    [
        ("wav", "WAV", "PCM_16", 1 / 32768),
        ("flac", "FLAC", "PCM_16", 1 / 32768),
        ("wav", "WAV", "PCM_24", 1 / 2**23),
        ("wav", "WAV", "FLOAT", 0.0),
        ("wav", "WAV", "DOUBLE", 1e-7),
        ("flac", "FLAC", "PCM_24", 1 / 2**23),
    ],
)
def test_lossless_formats_round_trip(tmp_path, ext, fmt, subtype, tol):
    x = sine(seconds=0.5)
    path = tmp_path / f"clip_{subtype}.{ext}"
    sf.write(path, x, SAMPLE_RATE, format=fmt, subtype=subtype)
    y = load_audio(path)
    assert y.dtype == np.float32 and y.ndim == 1 and y.flags.c_contiguous
    assert y.shape == x.shape
    np.testing.assert_allclose(y, x, atol=tol, rtol=0)
    # values are soundfile's own (no normalization)
    expected, _ = sf.read(path, dtype="float32")
    np.testing.assert_array_equal(y, expected)


def test_accepts_str_and_pathlike(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, sine(seconds=0.1), SAMPLE_RATE)
    np.testing.assert_array_equal(load_audio(str(path)), load_audio(path))


@pytest.mark.parametrize(
    ("ext", "fmt", "subtype"),
    [("ogg", "OGG", "VORBIS")] + ([("mp3", "MP3", "MPEG_LAYER_III")] if "MP3" in sf.available_formats() else []),
)
def test_lossy_formats(tmp_path, ext, fmt, subtype):
    x = sine(seconds=1.0)
    path = tmp_path / f"clip.{ext}"
    sf.write(path, x, SAMPLE_RATE, format=fmt, subtype=subtype)
    y = load_audio(path)
    assert y.dtype == np.float32 and y.ndim == 1
    # codecs may add priming/padding samples: allow a few hundredths of a second
    assert abs(len(y) - len(x)) < 0.1 * SAMPLE_RATE
    assert abs(peak_hz(y) - 440.0) <= 2.0
    assert 0.3 < np.max(np.abs(y)) < 0.7


def test_stereo_is_mean_of_channels(tmp_path):
    left = sine(440, seconds=0.25, amp=0.6)
    right = sine(1000, seconds=0.25, amp=0.2)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), SAMPLE_RATE, subtype="FLOAT")
    y = load_audio(path)
    assert y.ndim == 1 and y.shape == left.shape
    np.testing.assert_allclose(y, (left + right) / 2, atol=1e-7)


def test_multichannel_is_mean_of_channels(tmp_path):
    chans = np.stack([sine(f, seconds=0.1, amp=0.2) for f in (200, 300, 500, 700)], axis=1)
    path = tmp_path / "quad.flac"
    sf.write(path, chans, SAMPLE_RATE, subtype="PCM_24")
    expected, _ = sf.read(path, dtype="float32", always_2d=True)
    np.testing.assert_allclose(load_audio(path), expected.mean(axis=1), atol=1e-7)


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_resampled_to_16k(tmp_path, rate):
    seconds = 1.0
    path = tmp_path / f"sine_{rate}.wav"
    sf.write(path, sine(440, sr=rate, seconds=seconds), rate)
    y = load_audio(path)
    assert y.dtype == np.float32 and y.ndim == 1
    assert abs(len(y) - int(seconds * SAMPLE_RATE)) <= 1
    assert abs(peak_hz(y) - 440.0) <= 1.0
    # amplitude survives HQ resampling (ignore the filter's edges)
    mid = y[len(y) // 4 : 3 * len(y) // 4]
    assert np.max(np.abs(mid)) == pytest.approx(0.5, abs=0.01)


def test_resample_to_other_target_rate(tmp_path):
    path = tmp_path / "sine.wav"
    sf.write(path, sine(440, sr=16000, seconds=0.5), 16000)
    y = load_audio(path, sr=8000)
    assert len(y) == 4000
    assert abs(peak_hz(y, 8000) - 440.0) <= 2.0


def test_audio_duration():
    assert audio_duration(np.zeros(24000, np.float32)) == 1.5
    assert audio_duration(np.zeros(8000, np.float32), sr=8000) == 1.0
    assert audio_duration(np.zeros(0, np.float32)) == 0.0


# --------------------------------------------------------------------------- real speech


def test_jfk_log_mel_matches_openai_whisper_exactly():
    JFK = shared_clip("jfk.flac")
    y = load_audio(JFK)
    assert audio_duration(y) == pytest.approx(11.0, abs=0.1)
    # openai-whisper's own loader (ffmpeg) yields int16 / 32768 for a 16-bit 16 kHz mono file
    pcm, rate = sf.read(JFK, dtype="int16")
    assert rate == SAMPLE_RATE
    reference_audio = pcm.astype(np.float32) / 32768.0
    np.testing.assert_array_equal(y, reference_audio)
    ours = mel.log_mel_spectrogram(mel.pad_or_trim(y))
    theirs = whisper.audio.log_mel_spectrogram(whisper.audio.pad_or_trim(torch.from_numpy(reference_audio)))
    assert ours.shape == (80, 3000)
    assert torch.equal(ours, theirs)
    if shutil.which("ffmpeg"):
        via_ffmpeg = whisper.audio.load_audio(str(JFK))
        np.testing.assert_array_equal(y, via_ffmpeg)


def test_demo_clip_is_16k_mono_and_loads():
    from max_whisper.config import DEMO_AUDIO

    info = sf.info(DEMO_AUDIO)
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    assert 45 <= info.duration <= 80
    y = load_audio(DEMO_AUDIO)
    assert len(y) == info.frames


# --------------------------------------------------------------------------- errors


def test_missing_file(tmp_path):
    path = tmp_path / "nope.wav"
    with pytest.raises(AudioError) as exc_info:
        load_audio(path)
    assert_audio_error(exc_info, path, "no such file")


def test_directory(tmp_path):
    path = tmp_path / "folder.wav"
    path.mkdir()
    with pytest.raises(AudioError) as exc_info:
        load_audio(path)
    assert_audio_error(exc_info, path, "directory")


def test_text_file_named_wav(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("this is not audio\njust some text\n")
    with pytest.raises(AudioError) as exc_info:
        load_audio(path)
    assert_audio_error(exc_info, path, "not")


def test_text_file_named_wav_without_ffmpeg(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda *a, **k: None)
    path = tmp_path / "notes.wav"
    path.write_text("this is not audio\n")
    with pytest.raises(AudioError) as exc_info:
        load_audio(path)
    msg = assert_audio_error(exc_info, path, "not an audio file")
    assert "ffmpeg" not in msg  # installing ffmpeg would not help


def test_garbage_bytes_named_flac_without_ffmpeg(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda *a, **k: None)
    path = tmp_path / "noise.flac"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(AudioError) as exc_info:
        load_audio(path)
    assert_audio_error(exc_info, path, "not a valid audio file")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    with pytest.raises(AudioError) as exc_info:
        load_audio(path)
    assert_audio_error(exc_info, path, "empty")


def test_zero_samples(tmp_path):
    path = tmp_path / "silent.wav"
    sf.write(path, np.zeros((0,), np.float32), SAMPLE_RATE)
    assert path.stat().st_size > 0  # a header, but no frames
    with pytest.raises(AudioError) as exc_info:
        load_audio(path)
    assert_audio_error(exc_info, path, "contains no audio samples")


def test_truncated_flac(tmp_path):
    data = shared_clip("jfk.flac").read_bytes()
    path = tmp_path / "cut.flac"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(AudioError) as exc_info:
        load_audio(path)
    assert_audio_error(exc_info, path, "corrupt or truncated")


def test_corrupt_flac_made_here(tmp_path):
    good = tmp_path / "good.flac"
    sf.write(good, np.random.default_rng(1).uniform(-0.5, 0.5, SAMPLE_RATE * 2).astype(np.float32), SAMPLE_RATE)
    data = bytearray(good.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 4000] = b"\xff" * 4000
    path = tmp_path / "corrupt.flac"
    path.write_bytes(bytes(data))
    with pytest.raises(AudioError) as exc_info:
        load_audio(path)
    assert_audio_error(exc_info, path)


def test_decode_error_midway_is_one_line(tmp_path, monkeypatch):
    path = tmp_path / "ok.wav"
    sf.write(path, sine(seconds=0.1), SAMPLE_RATE)
    for exc in (sf.LibsndfileError(0, "Error : "), RuntimeError("boom\nsecond line"), ValueError("bad")):

        def fail(*args, _exc=exc, **kwargs):
            raise _exc

        monkeypatch.setattr(sf, "read", fail)
        with pytest.raises(AudioError) as exc_info:
            load_audio(path)
        assert_audio_error(exc_info, path, "corrupt or truncated")


def test_unreadable_file(tmp_path):
    path = tmp_path / "secret.wav"
    sf.write(path, sine(seconds=0.1), SAMPLE_RATE)
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running as root: chmod 000 does not stop reading")
        with pytest.raises(AudioError) as exc_info:
            load_audio(path)
        assert_audio_error(exc_info, path, "permission denied")
    finally:
        path.chmod(stat.S_IRUSR | stat.S_IWUSR)


def test_unreadable_file_simulated(tmp_path, monkeypatch):
    """The same branch, even as root: open() raising PermissionError."""
    path = tmp_path / "secret.wav"
    sf.write(path, sine(seconds=0.1), SAMPLE_RATE)

    def deny(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(audio, "open", deny, raising=False)
    with pytest.raises(AudioError) as exc_info:
        load_audio(path)
    assert_audio_error(exc_info, path, "permission denied")


M4A_HEAD = b"\x00\x00\x00\x20ftypM4A \x00\x00\x02\x00M4A isomiso2\x00\x00\x00\x08free" + bytes(range(256)) * 8


def test_needs_ffmpeg_but_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda *a, **k: None)
    path = tmp_path / "voice memo.m4a"
    path.write_bytes(M4A_HEAD)
    with pytest.raises(AudioError) as exc_info:
        load_audio(path)
    assert_audio_error(
        exc_info, path, "soundfile cannot read this format", "ffmpeg is not installed", "apt-get install ffmpeg"
    )


# --------------------------------------------------------------------------- ffmpeg fallback (fake binary)


def fake_ffmpeg(tmp_path: Path, body: str) -> Path:
    """An executable named ffmpeg that runs ``body`` (Python) with ``args`` = its argv[1:]."""
    script = tmp_path / "bin" / "ffmpeg"
    script.parent.mkdir(exist_ok=True)
    script.write_text(f"#!{sys.executable}\nimport sys\nargs = sys.argv[1:]\n{body}\n")
    script.chmod(0o755)
    return script


def test_ffmpeg_fallback_decodes_s16le_mono(tmp_path, monkeypatch):
    log = tmp_path / "argv.txt"
    script = fake_ffmpeg(
        tmp_path,
        f"open({str(log)!r}, 'w').write('\\n'.join(args))\n"
        "import numpy as np\n"
        "sr = int(args[args.index('-ar') + 1])\n"
        "t = np.arange(sr // 2) / sr\n"
        "sys.stdout.buffer.write((np.sin(2 * np.pi * 440 * t) * 16384).astype('<i2').tobytes())\n",
    )
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: str(script) if name == "ffmpeg" else None)
    path = tmp_path / "clip.m4a"
    path.write_bytes(M4A_HEAD)
    y = load_audio(path)
    assert y.dtype == np.float32 and y.ndim == 1 and len(y) == SAMPLE_RATE // 2
    assert abs(peak_hz(y) - 440.0) <= 2.0
    assert np.max(np.abs(y)) == pytest.approx(0.5, abs=1e-3)
    argv = log.read_text().split("\n")
    assert argv[argv.index("-ar") + 1] == "16000"
    assert argv[argv.index("-ac") + 1] == "1"
    assert argv[argv.index("-f") + 1] == "s16le"
    assert argv[argv.index("-i") + 1].endswith("clip.m4a")
    assert "-nostdin" in argv


def test_ffmpeg_decode_error_keeps_last_stderr_line(tmp_path, monkeypatch):
    script = fake_ffmpeg(
        tmp_path,
        "sys.stderr.write('ffmpeg version 6.0\\n  built with gcc\\n'"
        " + args[args.index('-i') + 1] + ': Invalid data found when processing input\\n\\n')\n"
        "sys.exit(1)",
    )
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: str(script))
    path = tmp_path / "broken.webm"
    path.write_bytes(b"\x1a\x45\xdf\xa3" + bytes(100))
    with pytest.raises(AudioError) as exc_info:
        load_audio(path)
    assert_audio_error(exc_info, path, "ffmpeg", "Invalid data found when processing input")


def test_ffmpeg_no_samples(tmp_path, monkeypatch):
    script = fake_ffmpeg(tmp_path, "sys.exit(0)")
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: str(script))
    path = tmp_path / "silence.m4a"
    path.write_bytes(M4A_HEAD)
    with pytest.raises(AudioError) as exc_info:
        load_audio(path)
    assert_audio_error(exc_info, path, "contains no audio samples")


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")
def test_real_ffmpeg_decodes_what_soundfile_cannot(tmp_path):
    import subprocess

    wav = tmp_path / "src.wav"
    sf.write(wav, sine(440, seconds=1.0), SAMPLE_RATE)
    m4a = tmp_path / "clip.m4a"
    subprocess.run(["ffmpeg", "-nostdin", "-y", "-loglevel", "error", "-i", str(wav), str(m4a)], check=True)
    y = load_audio(m4a)
    assert abs(len(y) - SAMPLE_RATE) < 0.1 * SAMPLE_RATE
    assert abs(peak_hz(y) - 440.0) <= 2.0


def test_log_mel_in_pieces_is_whispers_bit_for_bit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Long audio is framed in pieces (bounded memory); the features must not change by a bit."""
    import whisper

    monkeypatch.setattr(mel, "MEL_CHUNK_FRAMES", 700)  # several pieces on a 25-s signal
    samples = np.random.default_rng(4).standard_normal(16000 * 25 + 123).astype(np.float32) * 0.1
    for padding in (0, 480000):
        ours = mel.log_mel_spectrogram(samples, 80, padding=padding)
        reference = whisper.audio.log_mel_spectrogram(samples, 80, padding=padding)
        assert torch.equal(ours, reference)


# --------------------------------------------------------------------------- non-finite samples


@pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "inf"])
def test_non_finite_samples_are_an_audio_error(tmp_path, bad):
    samples = sine(seconds=0.5)
    samples[100] = bad
    path = tmp_path / "damaged.wav"
    sf.write(path, samples, SAMPLE_RATE, subtype="FLOAT")
    with pytest.raises(AudioError) as exc_info:
        load_audio(path)
    assert_audio_error(exc_info, path, "1 of 8000 samples are NaN or infinite")


def test_check_waveform_on_arrays():
    check_waveform(sine())
    check_waveform(np.zeros(0, np.float32))
    with pytest.raises(AudioError, match=r"^audio: 2 of 16000 samples are NaN or infinite"):
        samples = sine()
        samples[[0, -1]] = np.nan
        check_waveform(samples)


def test_transcribe_refuses_non_finite_arrays_before_the_model_runs():
    """decoding.transcribe checks the waveform first: a backend that must never run is enough."""
    from max_whisper.decoding import transcribe

    class NeverRuns:
        fp16 = False

        class capabilities:  # noqa: N801 - stands in for a Capabilities instance
            word_timestamps = False

    samples = sine()
    samples[7] = np.inf
    with pytest.raises(AudioError, match="1 of 16000 samples"):
        transcribe(NeverRuns(), samples)
    with pytest.raises(AudioError, match="1 of 16000 samples"):
        transcribe(NeverRuns(), torch.from_numpy(samples))


# --------------------------------------------------------------------------- the shared clips, in CI


def test_a_missing_shared_clip_fails_under_ci_and_skips_elsewhere(tmp_path, monkeypatch):
    import conftest

    monkeypatch.setattr(conftest, "SHARED_AUDIO_DIR", tmp_path)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        shared_clip("jfk.flac")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="not found"):
        shared_clip("jfk.flac")
    (tmp_path / "jfk.flac").write_bytes(b"x")
    assert shared_clip("jfk.flac") == tmp_path / "jfk.flac"
