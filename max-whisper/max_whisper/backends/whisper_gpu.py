"""``--backend gpu``: openai-whisper's PyTorch model on CUDA, float16 compute."""

from __future__ import annotations

from typing import Any

import torch

from ..config import DEFAULT_MODEL
from ..errors import BackendUnavailableError
from .base import Capabilities
from .pytorch import TorchBackend


def require_cuda() -> None:
    """Raise a one-line :class:`BackendUnavailableError` unless CUDA is usable."""
    if not torch.cuda.is_available():
        raise BackendUnavailableError(
            "the gpu backend needs an NVIDIA GPU with CUDA, but torch.cuda.is_available() is False "
            "on this machine; use --backend cpu or --backend max"
        )


class GPUBackend(TorchBackend):
    """The float32 checkpoint on the first CUDA device; whisper's decoding runs it with ``fp16=True``."""

    name = "gpu"
    capabilities = Capabilities(word_timestamps=True, dtypes=("float16",))
    device = torch.device("cuda")
    fp16 = True

    def __init__(self, model: str = DEFAULT_MODEL, *, threads: int | None = None) -> None:
        require_cuda()
        super().__init__(model, threads=threads)

    @classmethod
    def is_available(cls) -> bool:
        return torch.cuda.is_available()

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["device_name"] = torch.cuda.get_device_name(0)
        return info


BACKEND = GPUBackend
