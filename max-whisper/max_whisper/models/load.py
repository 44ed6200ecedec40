"""Checkpoints to weights: the checkpoint dict, its dimensions, and openai-whisper's ``Whisper`` module."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, BinaryIO

from ..config import DEFAULT_MODEL
from ..errors import ModelError, describe
from . import ct2
from .resolve import resolve_checkpoint

if TYPE_CHECKING:  # whisper is imported lazily: it pulls in numba and tiktoken
    from pathlib import Path

    from whisper.model import ModelDimensions, Whisper


def _torch_load(f: BinaryIO | Path) -> Any:
    """torch.load on CPU with ``weights_only=True`` (tensors and plain containers only)."""
    import torch

    return torch.load(f, map_location="cpu", weights_only=True)


def load_checkpoint(name_or_path: str | os.PathLike[str] = DEFAULT_MODEL) -> dict[str, Any]:
    """Resolve and load a checkpoint dict with ``dims`` and ``model_state_dict`` (ModelError on failure)."""
    path = resolve_checkpoint(name_or_path)
    try:
        checkpoint = _torch_load(path)
    except Exception as exc:
        raise ModelError(f"cannot load checkpoint {path}: {describe(exc)}") from exc
    if (
        not isinstance(checkpoint, dict)
        or not isinstance(checkpoint.get("dims"), dict)
        or not isinstance(checkpoint.get("model_state_dict"), dict)
    ):
        raise ModelError(f"{path} is not a whisper checkpoint (needs 'dims' and 'model_state_dict')")
    return checkpoint


def model_dims(checkpoint: dict[str, Any]) -> ModelDimensions:
    """The checkpoint's ``whisper.model.ModelDimensions`` (ModelError if the dims are malformed)."""
    from whisper.model import ModelDimensions

    try:
        return ModelDimensions(**checkpoint["dims"])
    except (KeyError, TypeError) as exc:
        raise ModelError(f"checkpoint has malformed dims: {describe(exc)}") from exc


def _alignment_heads(name: str, checkpoint: dict[str, Any], dims: ModelDimensions) -> bytes | None:
    """The base85 dump for ``set_alignment_heads``: the checkpoint's pairs, else whisper's table."""
    import whisper

    pairs = checkpoint.get("alignment_heads")
    if pairs:
        return ct2.alignment_heads_dump(pairs, dims.n_text_layer, dims.n_text_head)
    return whisper._ALIGNMENT_HEADS.get(name)


def _build_model(name: str, checkpoint: dict[str, Any], device: str) -> Whisper:
    """Instantiate ``Whisper``, load the weights strictly, set alignment heads, float32, eval, device."""
    from whisper.model import Whisper

    dims = model_dims(checkpoint)
    model = Whisper(dims)
    model.load_state_dict(checkpoint["model_state_dict"], strict=True)
    heads = _alignment_heads(name, checkpoint, dims)
    if heads is not None:
        model.set_alignment_heads(heads)
    return model.float().eval().to(device)


def load_model(name_or_path: str | os.PathLike[str] = DEFAULT_MODEL, device: str = "cpu") -> Whisper:
    """Load a ``whisper.model.Whisper`` in float32 and eval mode, alignment heads set.

    Every failure becomes a ModelError with a one-line message.
    """
    name = os.fspath(name_or_path)
    try:
        checkpoint = load_checkpoint(name)
        return _build_model(name, checkpoint, device)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"cannot load model {name!r}: {describe(exc)}") from exc
