"""``--backend gpu``: openai-whisper's PyTorch model on CUDA, fp16 compute."""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch

from ..config import DEFAULT_MODEL
from ..errors import BackendUnavailableError
from .whisper_cpu import TorchBackend


def require_cuda() -> None:
    """Raise a one-line :class:`BackendUnavailableError` unless CUDA is usable."""
    if not torch.cuda.is_available():
        raise BackendUnavailableError(
            "the gpu backend needs an NVIDIA GPU with CUDA, but torch.cuda.is_available() is False "
            "on this machine; use --backend cpu or --backend max"
        )


class GPUBackend(TorchBackend):
    name = "gpu"
    device = torch.device("cuda")
    fp16 = True

    def __init__(self, model: str = DEFAULT_MODEL, *, threads: Optional[int] = None) -> None:
        require_cuda()
        super().__init__(model, threads=threads)

    def describe(self) -> Dict[str, Any]:
        info = super().describe()
        info["device_name"] = torch.cuda.get_device_name(0)
        return info


BACKEND = GPUBackend
