"""The seam every backend fills: the model computation, and nothing else.

openai-whisper's ``DecodingTask`` drives two things: an encoder forward pass
(mel -> audio features) and an ``Inference`` object (decoder step with its KV
cache: ``logits``, ``rearrange_kv_cache``, ``cleanup_caching``).  A backend
supplies exactly those; every token rule, timestamp rule, fallback and
threshold stays in openai-whisper's code, run by :mod:`max_whisper.decoding`
(a backend may ask for the batched twins of two of whisper's classes,
:mod:`max_whisper.token_strategies`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from whisper.decoding import Inference
from whisper.model import ModelDimensions

from ..config import DEFAULT_MODEL
from ..errors import InputShapeError, MaxWhisperError
from ..timing import StageTimer


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do, declared by the backend instead of probed by its callers.

    The CLI reads it to accept or refuse options before any model is loaded: ``--device`` and
    ``--dtype`` are passed only to backends that offer a choice, ``--word-timestamps`` only to those
    that can align words.
    """

    #: whisper's word alignment runs PyTorch hooks on the cross-attention: it needs ``torch_model``.
    word_timestamps: bool = False
    #: several audio windows (or beams / samples) in one encoder or decoder call.
    batching: bool = True
    #: values of the backend's ``device`` option (empty: the device is fixed).
    devices: tuple = ()
    #: values of the backend's ``dtype`` option (the first is the default).
    dtypes: tuple = ("float32",)


class Backend(ABC):
    """One way of running Whisper's encoder and decoder.

    Subclasses set :attr:`name`, load their weights in ``__init__`` (timed as
    the ``load`` and, where graphs are compiled, ``compile`` stages) and
    implement :meth:`encode` and :meth:`inference`.
    """

    name: ClassVar[str]
    capabilities: ClassVar[Capabilities] = Capabilities()
    #: torch device of the tensors this backend hands to the decoding logic.
    device: torch.device = torch.device("cpu")
    #: whether the decoding logic should ask for fp16 (whisper's ``fp16`` option).
    fp16: bool = False
    #: torch's thread count while this backend transcribes (None: leave it): a backend whose model
    #: runs outside torch keeps torch's token logic on one thread, off the model's cores.
    host_torch_threads: int | None = None
    #: torch's thread count for the log-mel (None: the caller's): on the CPU device the max backend
    #: keeps it on one thread too, because a pool woken for it slows MAX's next graph calls.
    mel_torch_threads: int | None = None
    #: whether whisper's beam search and timestamp rules run as :mod:`max_whisper.token_strategies`
    #: (the same tokens, one tensor operation per step instead of one per row); the cpu reference
    #: keeps whisper's own classes.
    batched_token_logic: bool = False
    #: whether greedy decoding at temperature 0 picks each token after the first on the model's device:
    #: the backend's ``Inference`` then has ``choose(rows, masks)`` (see
    #: ``token_strategies.GreedyMasks``), and the host reads back a token and its log-probability a row.
    device_greedy: bool = False

    def __init__(self, model: str = DEFAULT_MODEL, *, threads: int | None = None) -> None:
        self.model_name = model
        self.threads = threads
        self.timer = StageTimer()
        if threads is not None:
            if threads < 1:
                raise MaxWhisperError(f"--threads must be at least 1, got {threads}")
            torch.set_num_threads(threads)

    # -- what a backend must provide --------------------------------------------------
    dims: ModelDimensions
    #: whisper's sparse (layer, head) mask of cross-attention heads that align with words.
    alignment_heads: torch.Tensor | None = None
    #: the full ``whisper.model.Whisper`` module, set by backends that declare word timestamps (whisper's
    #: word alignment runs hooks on its forward pass).
    torch_model: torch.nn.Module | None = None

    @classmethod
    def is_available(cls) -> bool:
        """Whether this machine can run the backend (its engine installed, its device present)."""
        return True

    @abstractmethod
    def encode(self, mel: torch.Tensor) -> torch.Tensor:
        """(n, n_mels, 2 * n_audio_ctx) log-mel -> (n, n_audio_ctx, n_audio_state) features."""

    @abstractmethod
    def inference(self, initial_token_length: int) -> Inference:
        """A fresh decoder-with-KV-cache for one call of ``DecodingTask.run``."""

    # -- shared helpers --------------------------------------------------------------
    @property
    def is_multilingual(self) -> bool:
        return self.dims.n_vocab >= 51865

    @property
    def num_languages(self) -> int:
        return self.dims.n_vocab - 51765 - int(self.is_multilingual)

    def check_mel(self, mel: torch.Tensor) -> None:
        """Raise :class:`InputShapeError` unless ``mel`` is (n, n_mels, 2 * n_audio_ctx)."""
        expected = (self.dims.n_mels, 2 * self.dims.n_audio_ctx)
        if mel.ndim != 3 or tuple(mel.shape[1:]) != expected:
            raise InputShapeError(
                f"mel must have shape (batch, {expected[0]}, {expected[1]}) for this model, got {tuple(mel.shape)}"
            )

    def describe(self) -> dict[str, Any]:
        """Facts about this backend for logs and benchmark records."""
        return {"backend": self.name, "model": self.model_name, "threads": self.threads}
