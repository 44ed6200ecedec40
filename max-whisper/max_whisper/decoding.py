"""The one decoding wrapper every backend runs through.

openai-whisper's ``transcribe`` (sliding 30-s windows, timestamp rules,
temperature fallback, thresholds, prompts, word timestamps) and
``DecodingTask`` (greedy / beam search, logit filters) are reused as they are.
The only thing that changes between backends is the model computation:
``DecodingTask`` is given the backend's encoder and its ``Inference`` (decoder
step + KV cache) instead of the PyTorch ones.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Dict, List, Union

import numpy as np
import torch
import whisper
from whisper.decoding import BeamSearchDecoder, DecodingOptions, DecodingResult, DecodingTask, Inference
from whisper.decoding import detect_language as _whisper_detect_language

from .backend import Backend
from .errors import MaxWhisperError
from .timing import StageTimer


class TimedInference(Inference):
    """Wraps a backend's ``Inference`` and books its time under the ``decode`` stage."""

    def __init__(self, inner: Inference, timer: StageTimer) -> None:
        self.inner = inner
        self.timer = timer

    def logits(self, tokens: torch.Tensor, audio_features: torch.Tensor) -> torch.Tensor:
        with self.timer.stage("decode"):
            return self.inner.logits(tokens, audio_features)

    def rearrange_kv_cache(self, source_indices) -> None:
        with self.timer.stage("decode"):
            self.inner.rearrange_kv_cache(source_indices)

    def cleanup_caching(self) -> None:
        self.inner.cleanup_caching()


class _NoTorchDecoder:
    """Stands in for ``Whisper.decoder`` on backends without PyTorch modules.

    ``DecodingTask.__init__`` builds a ``PyTorchInference`` over
    ``model.decoder.blocks`` before :class:`BackendDecodingTask` replaces it;
    an empty block list makes that constructor a no-op.
    """

    blocks: tuple = ()


class ModelAdapter:
    """Presents a :class:`Backend` as the ``Whisper`` model that whisper's code expects.

    It has the attributes ``whisper.transcribe`` and ``whisper.decoding`` read
    (``dims``, ``device``, ``is_multilingual``, ``num_languages``,
    ``encoder``, ``logits``, ``decode``, ``detect_language``) and routes them to
    the backend.
    """

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.dims = backend.dims
        self.device = backend.device
        self.alignment_heads = backend.alignment_heads
        torch_model = getattr(backend, "torch_model", None)
        self._torch_model = torch_model
        self.decoder = torch_model.decoder if torch_model is not None else _NoTorchDecoder()

    @property
    def is_multilingual(self) -> bool:
        return self.backend.is_multilingual

    @property
    def num_languages(self) -> int:
        return self.backend.num_languages

    def encoder(self, mel: torch.Tensor) -> torch.Tensor:
        return self.backend.encode(mel)

    def logits(self, tokens: torch.Tensor, audio_features: torch.Tensor) -> torch.Tensor:
        """One uncached decoder pass (whisper's ``detect_language`` uses this)."""
        inference = self.backend.inference(tokens.shape[-1])
        try:
            return inference.logits(tokens, audio_features)
        finally:
            inference.cleanup_caching()

    def __call__(self, mel: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Full forward pass; whisper's word-timestamp alignment hooks into it."""
        if self._torch_model is None:
            raise MaxWhisperError(f"word timestamps are not supported by the {self.backend.name} backend")
        return self._torch_model(mel, tokens)

    detect_language = _whisper_detect_language

    @torch.no_grad()
    def decode(
        self, mel: torch.Tensor, options: DecodingOptions = DecodingOptions(), **kwargs: Any
    ) -> Union[DecodingResult, List[DecodingResult]]:
        """``whisper.decoding.decode`` with the backend's model computation."""
        if single := mel.ndim == 2:
            mel = mel.unsqueeze(0)
        if kwargs:
            options = replace(options, **kwargs)
        result = BackendDecodingTask(self, options).run(mel)
        return result[0] if single else result


class BackendDecodingTask(DecodingTask):
    """openai-whisper's ``DecodingTask`` with the backend's ``Inference``."""

    def __init__(self, model: ModelAdapter, options: DecodingOptions) -> None:
        super().__init__(model, options)
        backend = model.backend
        self.inference = TimedInference(backend.inference(len(self.initial_tokens)), backend.timer)
        if isinstance(self.decoder, BeamSearchDecoder):
            self.decoder.inference = self.inference


def transcribe(backend: Backend, audio: Union[np.ndarray, torch.Tensor], **options: Any) -> Dict[str, Any]:
    """Transcribe 16-kHz mono float32 ``audio`` with ``backend``.

    ``options`` are those of ``whisper.transcribe`` (``temperature``,
    ``initial_prompt``, ``word_timestamps``, ``verbose`` ...) and of
    ``DecodingOptions`` (``language``, ``task``, ``beam_size`` ...).  Returns
    whisper's result dict: ``text``, ``segments``, ``language``.
    """
    options.setdefault("fp16", backend.fp16)
    if options.get("word_timestamps") and getattr(backend, "torch_model", None) is None:
        raise MaxWhisperError(f"--word-timestamps is not supported by the {backend.name} backend")
    if isinstance(audio, np.ndarray):
        audio = np.ascontiguousarray(audio, dtype=np.float32)
    with backend.timer.stage("transcribe"):
        return whisper.transcribe(ModelAdapter(backend), audio, **options)
