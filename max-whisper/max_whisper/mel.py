"""The log-mel front end: openai-whisper's features, bit for bit, in bounded memory.

``whisper.audio.log_mel_spectrogram`` holds the whole complex STFT of its input at once (about 1.6 GB
for an hour of audio). :func:`log_mel_spectrogram` gives the same tensor, computing long audio
:data:`MEL_CHUNK_FRAMES` frames at a time. :mod:`max_whisper.decoding` has ``whisper.transcribe``
use it, so every backend sees identical features.
"""

from __future__ import annotations

import numpy as np
import torch
from whisper.audio import HOP_LENGTH, N_FFT, N_SAMPLES, SAMPLE_RATE, mel_filters, pad_or_trim
from whisper.audio import log_mel_spectrogram as whisper_log_mel_spectrogram

__all__ = ["MEL_CHUNK_FRAMES", "N_SAMPLES", "SAMPLE_RATE", "log_mel_spectrogram", "pad_or_trim"]

#: Log-mel frames computed per piece (5 minutes of audio) by :func:`log_mel_spectrogram`.
MEL_CHUNK_FRAMES = 30_000


def log_mel_spectrogram(
    audio: str | np.ndarray | torch.Tensor,
    n_mels: int = 80,
    padding: int = 0,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """``whisper.audio.log_mel_spectrogram``, bit for bit, in bounded memory.

    Audio of up to :data:`MEL_CHUNK_FRAMES` frames (and anything but a 1-D float32 CPU waveform) goes
    to whisper's own function. Longer audio is framed exactly as ``torch.stft(center=True)`` frames it
    (reflection at both ends, after ``padding`` zeros on the right), ``MEL_CHUNK_FRAMES`` frames at a
    time; the log-mel rows are written into one (n_mels, n_frames) tensor, and whisper's normalization
    (floor at the global maximum - 8, then (x + 4) / 4) is applied in place at the end. Peak memory is
    the result plus one piece instead of the whole complex STFT.
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
