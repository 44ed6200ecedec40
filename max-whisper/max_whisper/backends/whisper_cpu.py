"""``--backend cpu``: openai-whisper's PyTorch model, float32 on the CPU — the reference."""

from __future__ import annotations

import torch

from .base import Capabilities
from .pytorch import TorchBackend


class CPUBackend(TorchBackend):
    """The reference every other backend is compared with (``--threads`` sets torch's threads)."""

    name = "cpu"
    capabilities = Capabilities(word_timestamps=True, dtypes=("float32",))
    device = torch.device("cpu")
    fp16 = False


BACKEND = CPUBackend
