"""PyTorch-side helpers shared by the MAX parity tests: the outputs of named modules, kept by hooks."""

from __future__ import annotations

from typing import Any

import torch


class Recorder:
    """Forward hooks that keep the outputs of some PyTorch modules."""

    def __init__(self, modules: dict[str, torch.nn.Module]) -> None:
        self.outputs: dict[str, torch.Tensor] = {}
        self.handles = [m.register_forward_hook(self._hook(name)) for name, m in modules.items()]

    def _hook(self, name: str) -> Any:
        def hook(module: Any, args: Any, output: torch.Tensor) -> None:
            self.outputs[name] = output.detach().clone()

        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
