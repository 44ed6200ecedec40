"""The reference backend: openai-whisper's PyTorch model, float32 on the CPU."""

from __future__ import annotations

from typing import Optional

import torch
from whisper.decoding import Inference, PyTorchInference

from .base import Backend, Capabilities
from ..config import DEFAULT_MODEL
from ..models import load_model


class TorchBackend(Backend):
    """openai-whisper's own modules on a torch device (shared by ``cpu`` and ``gpu``)."""

    capabilities = Capabilities(word_timestamps=True)

    def __init__(self, model: str = DEFAULT_MODEL, *, threads: Optional[int] = None) -> None:
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


class CPUBackend(TorchBackend):
    """``--backend cpu``: the reference every other backend is compared with."""

    name = "cpu"
    device = torch.device("cpu")
    fp16 = False


BACKEND = CPUBackend
