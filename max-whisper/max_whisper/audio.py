"""Audio files to waveforms: the one loader for every backend.

``load_audio`` turns a file into the float32 mono 16 kHz waveform Whisper expects. WAV, FLAC, OGG, MP3
and the other formats libsndfile knows are read with ``soundfile`` (no external tools needed); any
other container (m4a, mp4, webm, ...) is decoded with the ``ffmpeg`` binary when it is installed,
exactly as ``whisper.audio.load_audio`` does. Resampling uses ``soxr`` (quality "HQ").

Every failure is reported as one :class:`~max_whisper.errors.AudioError` line that starts with the
file name; no traceback reaches the user. A waveform holding NaN or infinite samples is refused the
same way (:func:`check_waveform`): Whisper's features and logits would be NaN, and no transcript can
come out of them. The log-mel front end lives in :mod:`max_whisper.mel`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Union

import numpy as np
import soundfile
import soxr
from whisper.audio import SAMPLE_RATE

from .errors import AudioError, one_line

__all__ = ["SAMPLE_RATE", "audio_duration", "check_waveform", "load_audio"]

PathLike = Union[str, "os.PathLike[str]"]

#: File extensions libsndfile reads natively. A file with one of these extensions that soundfile cannot
#: open is reported as "not audio / corrupt" rather than "install ffmpeg" when ffmpeg is missing.
_SOUNDFILE_EXTENSIONS = frozenset(
    {
        ".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc", ".au",
        ".snd", ".caf", ".w64", ".rf64", ".voc", ".sd2", ".sds", ".paf", ".htk", ".nist", ".sph",
        ".mat", ".pvf", ".xi", ".avr", ".wve", ".iff", ".svx",
    }
)  # fmt: skip

#: Errors soundfile raises while decoding a damaged file (LibsndfileError is a RuntimeError).
_DECODE_ERRORS = (soundfile.LibsndfileError, RuntimeError, ValueError, EOFError, OSError)


def _soundfile_reason(exc: BaseException) -> str:
    """libsndfile's own message, without the "Error opening '<path>': " prefix soundfile adds."""
    reason = getattr(exc, "error_string", None) if isinstance(exc, soundfile.LibsndfileError) else None
    reason = reason or str(exc) or type(exc).__name__
    return one_line(reason).rstrip(".")


def _looks_like_text(head: bytes) -> bool:
    if not head:
        return False
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _check_file(path: str) -> bytes:
    """Fail early, with one line, on a missing / non-regular / unreadable / empty file; return its head."""
    if not os.path.exists(path):
        if os.path.islink(path):
            raise AudioError(f"{path}: broken symbolic link")
        raise AudioError(f"{path}: no such file")
    if os.path.isdir(path):
        raise AudioError(f"{path}: is a directory, not an audio file")
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except PermissionError:
        raise AudioError(f"{path}: permission denied (cannot read the file)") from None
    except OSError as e:
        raise AudioError(f"{path}: cannot read the file ({one_line(e.strerror or e)})") from None
    if not head:
        raise AudioError(f"{path}: empty file (0 bytes)")
    return head


def _read_soundfile(path: str) -> tuple[np.ndarray, int]:
    """Read with soundfile: (frames, channels) float32 and the file's rate. Raises soundfile's errors."""
    data, rate = soundfile.read(path, dtype="float32", always_2d=True)
    return data, int(rate)


def _read_ffmpeg(path: str, ffmpeg: str, sr: int) -> np.ndarray:
    """Decode anything ffmpeg understands to mono s16le at ``sr`` (as whisper.audio.load_audio does)."""
    # "file:" stops ffmpeg from treating names like "a:b.m4a" as a protocol URL.
    source = "file:" + os.path.abspath(path)
    # fmt: off
    cmd = [
        ffmpeg,
        "-nostdin",
        "-threads", "0",
        "-i", source,
        "-f", "s16le",
        "-ac", "1",
        "-acodec", "pcm_s16le",
        "-ar", str(sr),
        "-",
    ]
    # fmt: on
    try:
        proc = subprocess.run(cmd, capture_output=True, check=False)
    except OSError as e:
        raise AudioError(f"{path}: cannot run ffmpeg ({one_line(e)})") from None
    if proc.returncode != 0:
        lines = [ln.strip() for ln in proc.stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
        last = lines[-1] if lines else f"exit status {proc.returncode}"
        raise AudioError(f"{path}: ffmpeg cannot decode this file: {one_line(last)}")
    out = proc.stdout
    if len(out) % 2:
        out = out[:-1]
    return np.frombuffer(out, np.int16).astype(np.float32) / 32768.0


def load_audio(path: PathLike, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Load an audio file as a float32 mono 1-D waveform at ``sr`` Hz (default 16 kHz).

    Samples are soundfile's float32 values (no normalization); channels are averaged to mono and the
    signal is resampled with soxr ("HQ") when the file's rate differs from ``sr``. Formats libsndfile
    cannot read are decoded with ffmpeg when it is installed.

    Raises :class:`AudioError` (one line, starting with the file name) for a missing path, a directory,
    an unreadable or empty file, something that is not audio, a corrupt/truncated file, a format that
    needs the missing ffmpeg, a file with no samples, or one whose samples include NaN or infinity.
    """
    if int(sr) <= 0:
        raise AudioError(f"{os.fspath(path)}: invalid target sample rate {sr}")
    sr = int(sr)
    path = os.fspath(path)
    head = _check_file(path)
    ext = Path(path).suffix.lower()

    rate: int
    try:
        info = soundfile.info(path)
    except _DECODE_ERRORS as e:
        open_error: BaseException | None = e
    else:
        open_error = None

    if open_error is None:
        try:
            data, rate = _read_soundfile(path)
        except _DECODE_ERRORS as e:
            raise AudioError(f"{path}: corrupt or truncated {info.format} audio ({_soundfile_reason(e)})") from None
        except MemoryError:
            raise AudioError(f"{path}: too large to load into memory") from None
        if data.shape[0] == 0:
            raise AudioError(f"{path}: contains no audio samples")
        audio = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    else:
        ffmpeg = shutil.which("ffmpeg")
        if ffmpeg is None:
            if _looks_like_text(head):
                raise AudioError(f"{path}: not an audio file (it looks like text)")
            if ext in _SOUNDFILE_EXTENSIONS:
                raise AudioError(f"{path}: not a valid audio file or corrupt ({_soundfile_reason(open_error)})")
            raise AudioError(
                f"{path}: cannot decode: soundfile cannot read this format and ffmpeg is not installed"
                " (apt-get install ffmpeg)"
            )
        audio = _read_ffmpeg(path, ffmpeg, sr)
        rate = sr
        if audio.size == 0:
            raise AudioError(f"{path}: contains no audio samples")

    check_waveform(audio, path)
    if rate != sr:
        audio = soxr.resample(audio, rate, sr, quality="HQ")
    return np.ascontiguousarray(audio, dtype=np.float32).reshape(-1)


def check_waveform(samples: np.ndarray, name: str = "audio") -> None:
    """Raise a one-line :class:`AudioError` unless every sample is finite.

    ``name`` starts the message (the file's path, or ``audio`` for an array given directly).
    """
    finite = np.isfinite(samples)
    if not finite.all():
        bad = int(samples.size - np.count_nonzero(finite))
        raise AudioError(
            f"{name}: {bad} of {samples.size} samples are NaN or infinite (damaged audio); cannot transcribe it"
        )


def audio_duration(audio: np.ndarray, sr: int = SAMPLE_RATE) -> float:
    """Duration in seconds of a waveform (the last axis is time)."""
    return float(np.shape(audio)[-1]) / float(sr) if np.ndim(audio) else 0.0
