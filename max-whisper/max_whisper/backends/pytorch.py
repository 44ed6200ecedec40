"""openai-whisper's own PyTorch modules as a backend, on a torch device (``cpu`` and ``gpu`` use it)."""

from __future__ import annotations

from typing import ClassVar

import torch
from whisper.decoding import Inference, PyTorchInference

from ..config import DEFAULT_MODEL
from ..models import load_model
from .base import Backend, Capabilities


class TorchBackend(Backend):
    """whisper's ``AudioEncoder`` and ``PyTorchInference`` on :attr:`device`.

    ``torch_model`` is the full ``whisper.model.Whisper``: whisper's word alignment runs hooks on it,
    so these backends declare word timestamps.
    """

    capabilities: ClassVar[Capabilities] = Capabilities(word_timestamps=True)

    def __init__(self, model: str = DEFAULT_MODEL, *, threads: int | None = None) -> None:
        super().__init__(model, threads=threads)
        with self.timer.stage("load"):
            self.torch_model = load_model(model, device=str(self.device))
        self.dims = self.torch_model.dims
        self.alignment_heads = self.torch_model.alignment_heads

    @torch.no_grad()
    def encode(self, mel: torch.Tensor) -> torch.Tensor:
        self.check_mel(mel)
        with self.timer.stage("encode"):
            features = self.torch_model.encoder(mel.to(self.device))
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            return features

    def inference(self, initial_token_length: int) -> Inference:
        return PyTorchInference(self.torch_model, initial_token_length)
