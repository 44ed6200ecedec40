"""The one audio loader for every backend.

``load_audio`` turns a file into the float32 mono 16 kHz waveform Whisper expects. WAV, FLAC, OGG, MP3
and the other formats libsndfile knows are read with ``soundfile`` (no external tools needed); any
other container (m4a, mp4, webm, ...) is decoded with the ``ffmpeg`` binary when it is installed,
exactly as ``whisper.audio.load_audio`` does. Resampling uses ``soxr`` (quality "HQ").

Every failure is reported as one :class:`~max_whisper.errors.AudioError` line that starts with the
file name; no traceback reaches the user.

The log-mel front end is openai-whisper's own: :func:`log_mel_spectrogram` gives its features bit for
bit, computing long audio in pieces so an hour of audio does not hold a whole STFT in memory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Optional, Union

import numpy as np
import soundfile
import soxr
import torch
from whisper.audio import HOP_LENGTH, N_FFT, N_SAMPLES, SAMPLE_RATE, mel_filters, pad_or_trim
from whisper.audio import log_mel_spectrogram as whisper_log_mel_spectrogram

from .errors import AudioError

__all__ = [
    "SAMPLE_RATE",
    "N_SAMPLES",
    "log_mel_spectrogram",
    "pad_or_trim",
    "load_audio",
    "audio_duration",
]

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


def _one_line(text: str) -> str:
    """Collapse whitespace (newlines included) so a message stays on one line."""
    return " ".join(str(text).split())


def _soundfile_reason(exc: BaseException) -> str:
    """libsndfile's own message, without the "Error opening '<path>': " prefix soundfile adds."""
    reason = getattr(exc, "error_string", None) if isinstance(exc, soundfile.LibsndfileError) else None
    reason = reason or str(exc) or type(exc).__name__
    return _one_line(reason).rstrip(".")


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
        raise AudioError(f"{path}: cannot read the file ({_one_line(e.strerror or e)})") from None
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
        raise AudioError(f"{path}: cannot run ffmpeg ({_one_line(e)})") from None
    if proc.returncode != 0:
        lines = [ln.strip() for ln in proc.stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
        last = lines[-1] if lines else f"exit status {proc.returncode}"
        raise AudioError(f"{path}: ffmpeg cannot decode this file: {_one_line(last)}")
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
    needs the missing ffmpeg, or a file with no samples.
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
            raise AudioError(
                f"{path}: corrupt or truncated {info.format} audio ({_soundfile_reason(e)})"
            ) from None
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
                raise AudioError(
                    f"{path}: not a valid audio file or corrupt ({_soundfile_reason(open_error)})"
                )
            raise AudioError(
                f"{path}: cannot decode: soundfile cannot read this format and ffmpeg is not installed"
                " (apt-get install ffmpeg)"
            )
        audio = _read_ffmpeg(path, ffmpeg, sr)
        rate = sr
        if audio.size == 0:
            raise AudioError(f"{path}: contains no audio samples")

    if rate != sr:
        audio = soxr.resample(audio, rate, sr, quality="HQ")
    return np.ascontiguousarray(audio, dtype=np.float32).reshape(-1)


def audio_duration(audio: np.ndarray, sr: int = SAMPLE_RATE) -> float:
    """Duration in seconds of a waveform (the last axis is time)."""
    return float(np.shape(audio)[-1]) / float(sr) if np.ndim(audio) else 0.0


#: Log-mel frames computed per piece (5 minutes of audio) by :func:`log_mel_spectrogram`.
MEL_CHUNK_FRAMES = 30_000


def log_mel_spectrogram(
    audio: Union[str, np.ndarray, torch.Tensor],
    n_mels: int = 80,
    padding: int = 0,
    device: Optional[Union[str, torch.device]] = None,
) -> torch.Tensor:
    """``whisper.audio.log_mel_spectrogram``, bit for bit, in bounded memory.

    Audio of up to :data:`MEL_CHUNK_FRAMES` frames (and anything but a 1-D CPU
    waveform) goes to whisper's own function.  Longer audio is framed exactly
    as ``torch.stft(center=True)`` frames it (reflection at both ends, after
    ``padding`` zeros on the right), ``MEL_CHUNK_FRAMES`` frames at a time; the
    log-mel rows are written into one (n_mels, n_frames) tensor, and whisper's
    normalization (floor at the global maximum - 8, then (x + 4) / 4) is
    applied in place at the end.  Peak memory is the result plus one piece
    instead of the whole complex STFT.
    """
    if isinstance(audio, str) or device is not None:
        return whisper_log_mel_spectrogram(audio, n_mels, padding, device)
    if torch.is_tensor(audio):
        if audio.device.type != "cpu" or audio.ndim != 1:
            return whisper_log_mel_spectrogram(audio, n_mels, padding, device)
        samples = audio.detach().numpy()
    else:
        samples = np.asarray(audio)
    n_audio = samples.shape[-1] if samples.ndim else 0
    n_total = n_audio + max(int(padding), 0)
    n_frames = n_total // HOP_LENGTH  # torch.stft makes one more; whisper drops the last
    if samples.ndim != 1 or samples.dtype != np.float32 or n_frames <= MEL_CHUNK_FRAMES or n_audio <= N_FFT // 2:
        return whisper_log_mel_spectrogram(audio, n_mels, padding, device)

    window = torch.hann_window(N_FFT)
    filters = mel_filters("cpu", n_mels)
    log_spec = torch.empty((n_mels, n_frames), dtype=torch.float32)
    half = N_FFT // 2
    for first in range(0, n_frames, MEL_CHUNK_FRAMES):
        last = min(n_frames, first + MEL_CHUNK_FRAMES)
        # sample indices of frames first..last-1 in the zero-padded signal, reflected at its ends
        index = np.arange(first * HOP_LENGTH - half, (last - 1) * HOP_LENGTH + half)
        index = np.abs(index)
        index = np.where(index >= n_total, 2 * (n_total - 1) - index, index)
        piece = np.zeros(index.shape, dtype=np.float32)
        inside = index < n_audio
        piece[inside] = samples[index[inside]]
        stft = torch.stft(torch.from_numpy(piece), N_FFT, HOP_LENGTH, window=window, center=False, return_complex=True)
        log_spec[:, first:last] = torch.clamp(filters @ (stft.abs() ** 2), min=1e-10).log10()
        del stft
    torch.maximum(log_spec, log_spec.max() - 8.0, out=log_spec)
    return log_spec.add_(4.0).div_(4.0)
