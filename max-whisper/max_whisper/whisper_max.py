"""``--backend max``: the whole Whisper model as Modular MAX graphs.

Four graphs, each built and compiled once per backend instance and reused for
every window and file (weights are bound through a weights registry, so MAX's
on-disk cache serves later processes too):

``encoder``
    (batch, n_mels, 3000) log-mel -> (batch, n_audio_ctx, n_audio_state).
``cross_kv``
    audio features -> each decoder block's cross-attention keys and values,
    computed once per window and kept on the MAX device.
``decoder``
    new tokens + self-attention KV cache + cross K/V -> logits of the rows
    whisper reads, and the grown cache (kept on the device between steps).
``reorder``
    gathers the self-attention cache along the batch axis (beam search).

The token logic (greedy / beam search, timestamp rules, fallbacks) is
openai-whisper's own, run by :mod:`max_whisper.decoding`; no PyTorch module
runs here: torch tensors only carry data across whisper's ``Inference`` seam.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from whisper.decoding import Inference
from whisper.model import ModelDimensions

from .backend import Backend
from .config import DEFAULT_MODEL
from .errors import BackendUnavailableError, InputShapeError, MaxWhisperError
from .models import load_checkpoint

try:  # the MAX engine is an optional dependency: the other backends work without it
    from max.driver import CPU, Accelerator, Buffer, accelerator_count
    from max.dtype import DType
    from max.engine import InferenceSession
    from max.graph import DeviceRef, Graph, TensorType

    from .max_model import AudioEncoder, TextDecoder, WeightSource
except ImportError as exc:  # pragma: no cover - exercised only where max is missing
    _MAX_IMPORT_ERROR: Optional[ImportError] = exc
else:
    _MAX_IMPORT_ERROR = None

DEVICES = ("auto", "cpu", "gpu")


def state_dict_arrays(state_dict: Dict[str, torch.Tensor]) -> Dict[str, np.ndarray]:
    """The weights registry: openai-whisper ``state_dict`` names -> contiguous float32 arrays."""
    return {name: np.ascontiguousarray(t.detach().cpu().float().numpy()) for name, t in state_dict.items()}


def select_device(device: str) -> "tuple[Any, Any]":
    """(driver device, graph DeviceRef) for ``--device auto|cpu|gpu``."""
    if device not in DEVICES:
        raise MaxWhisperError(f"unknown --device {device!r}; choose one of {', '.join(DEVICES)}")
    gpus = accelerator_count()
    if device == "gpu" and gpus == 0:
        raise BackendUnavailableError("--device gpu asks for a MAX accelerator, but none was found on this machine")
    if device == "gpu" or (device == "auto" and gpus > 0):
        return Accelerator(), DeviceRef.GPU()
    return CPU(), DeviceRef.CPU()


class MaxWhisperGraphs:
    """Builds and compiles the four graphs of one model on one device."""

    def __init__(self, dims: ModelDimensions, weights: "WeightSource", session: "InferenceSession") -> None:
        self.dims = dims
        self.weights = weights
        self.session = session
        self.device = weights.device
        self.encoder = AudioEncoder(weights, dims)
        self.decoder = TextDecoder(weights, dims)
        self.n_kv = 2 * dims.n_text_layer

    def _load(self, graph: "Graph"):
        return self.session.load(graph, weights_registry=self.weights.registry())

    def compile_encoder(self):
        d = self.dims
        mel = TensorType(DType.float32, ["batch", d.n_mels, 2 * d.n_audio_ctx], self.device)
        with Graph("whisper_encoder", input_types=[mel]) as graph:
            graph.output(self.encoder(graph.inputs[0].tensor))
        return self._load(graph)

    def compile_cross_kv(self):
        d = self.dims
        features = TensorType(DType.float32, ["batch", d.n_audio_ctx, d.n_audio_state], self.device)
        with Graph("whisper_cross_kv", input_types=[features]) as graph:
            graph.output(*self.decoder.cross_kv(graph.inputs[0].tensor))
        return self._load(graph)

    def compile_decoder(self):
        d = self.dims
        state = d.n_text_state
        inputs = [
            TensorType(DType.int64, ["batch", "n_new"], self.device),  # tokens
            TensorType(DType.int64, ["n_new"], self.device),  # positions
            TensorType(DType.float32, ["n_new", "n_total"], self.device),  # additive causal mask
            TensorType(DType.int64, ["n_rows"], self.device),  # rows whose logits are returned
        ]
        inputs += [TensorType(DType.float32, ["batch", "n_past", state], self.device)] * self.n_kv
        inputs += [TensorType(DType.float32, ["batch", d.n_audio_ctx, state], self.device)] * self.n_kv
        with Graph("whisper_decoder_step", input_types=inputs) as graph:
            values = [v.tensor for v in graph.inputs]
            tokens, positions, mask, rows = values[:4]
            self_kv = values[4 : 4 + self.n_kv]
            cross_kv = values[4 + self.n_kv :]
            logits, new_kv = self.decoder(tokens, positions, mask, rows, self_kv, cross_kv)
            graph.output(logits, *new_kv)
        return self._load(graph)

    def compile_reorder(self):
        state = self.dims.n_text_state
        inputs = [TensorType(DType.int64, ["n_out"], self.device)]
        inputs += [TensorType(DType.float32, ["batch", "n_past", state], self.device)] * self.n_kv
        from max.graph import ops

        with Graph("whisper_kv_reorder", input_types=inputs) as graph:
            index = graph.inputs[0].tensor
            graph.output(*(ops.gather(v.tensor, index, axis=0) for v in graph.inputs[1:]))
        return self._load(graph)


class MaxBackend(Backend):
    """Encoder and decoder (with KV cache) as MAX graphs on MAX's CPU or an accelerator."""

    name = "max"

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        threads: Optional[int] = None,
        device: str = "auto",
    ) -> None:
        if _MAX_IMPORT_ERROR is not None:
            raise BackendUnavailableError(f"the max backend needs the MAX engine (pip install max): {_MAX_IMPORT_ERROR}")
        super().__init__(model, threads=threads)
        with self.timer.stage("load"):
            checkpoint = load_checkpoint(model)
            self.dims = ModelDimensions(**checkpoint["dims"])
            arrays = state_dict_arrays(checkpoint["model_state_dict"])
            self.driver_device, device_ref = select_device(device)
            # MAX 26.7 creates its CPU device at import time with the default thread
            # count (one per core); asking the session for another count aborts the
            # process, so --threads sets PyTorch's threads only (see docs/performance.md).
            self.session = InferenceSession(devices=[self.driver_device])
            self.weights = WeightSource(arrays, device_ref)
        with self.timer.stage("compile"):
            graphs = MaxWhisperGraphs(self.dims, self.weights, self.session)
            self.encoder_model = graphs.compile_encoder()
            self.cross_kv_model = graphs.compile_cross_kv()
            self.decoder_model = graphs.compile_decoder()
            self.reorder_model = graphs.compile_reorder()
        self.device_name = "gpu" if device_ref == DeviceRef.GPU() else "cpu"

    # -- host <-> MAX device ------------------------------------------------------------
    def to_device(self, array: np.ndarray) -> "Buffer":
        buffer = Buffer.from_numpy(np.ascontiguousarray(array))
        return buffer if self.device_name == "cpu" else buffer.to(self.driver_device)

    def to_torch(self, buffer: "Buffer") -> torch.Tensor:
        if self.device_name != "cpu":
            buffer = buffer.to(CPU())
        return torch.from_numpy(np.array(buffer.to_numpy(), copy=True))

    # -- the Backend seam ---------------------------------------------------------------
    def encode(self, mel: torch.Tensor) -> torch.Tensor:
        self.check_mel(mel)
        with self.timer.stage("encode"):
            out = self.encoder_model.execute(self.to_device(mel.float().cpu().numpy()))[0]
            return self.to_torch(out)

    def inference(self, initial_token_length: int) -> Inference:
        return MaxInference(self, initial_token_length)

    def cross_kv(self, audio_features: torch.Tensor) -> List["Buffer"]:
        expected = (self.dims.n_audio_ctx, self.dims.n_audio_state)
        if audio_features.ndim != 3 or tuple(audio_features.shape[1:]) != expected:
            raise InputShapeError(
                f"audio features must have shape (batch, {expected[0]}, {expected[1]}), got {tuple(audio_features.shape)}"
            )
        return list(self.cross_kv_model.execute(self.to_device(audio_features.float().cpu().numpy())))

    def describe(self) -> Dict[str, Any]:
        info = super().describe()
        info["device"] = self.device_name
        return info


class MaxInference(Inference):
    """whisper's ``Inference`` on MAX: a decoder step with its KV cache on the MAX device."""

    def __init__(self, backend: MaxBackend, initial_token_length: int) -> None:
        self.backend = backend
        self.initial_token_length = initial_token_length
        self.self_kv: Optional[List["Buffer"]] = None
        self.cross_kv: Optional[List["Buffer"]] = None
        self.n_past = 0

    def logits(self, tokens: torch.Tensor, audio_features: torch.Tensor) -> torch.Tensor:
        backend = self.backend
        n_ctx = backend.dims.n_text_ctx
        if self.cross_kv is None:
            self.cross_kv = backend.cross_kv(audio_features)
        if tokens.shape[-1] > self.initial_token_length and self.self_kv is not None:
            tokens = tokens[:, -1:]  # only the newest token once the cache holds the rest
        n_batch, n_new = tokens.shape
        if self.n_past + n_new > n_ctx:
            raise InputShapeError(f"the decoder context holds {n_ctx} tokens; asked for {self.n_past + n_new}")
        if self.self_kv is None:
            empty = np.zeros((n_batch, 0, backend.dims.n_text_state), dtype=np.float32)
            self.self_kv = [backend.to_device(empty) for _ in range(2 * backend.dims.n_text_layer)]
        positions = np.arange(self.n_past, self.n_past + n_new, dtype=np.int64)
        mask = np.triu(np.full((n_new, self.n_past + n_new), -np.inf, dtype=np.float32), k=self.n_past + 1)
        rows = np.arange(n_new, dtype=np.int64)
        inputs = [backend.to_device(a) for a in (tokens.numpy().astype(np.int64), positions, mask, rows)]
        outputs = backend.decoder_model.execute(*inputs, *self.self_kv, *self.cross_kv)
        self.self_kv = list(outputs[1:])
        self.n_past += n_new
        return backend.to_torch(outputs[0])

    def rearrange_kv_cache(self, source_indices: Sequence[int]) -> None:
        if self.self_kv is None or list(source_indices) == list(range(len(source_indices))):
            return
        index = self.backend.to_device(np.asarray(source_indices, dtype=np.int64))
        self.self_kv = list(self.backend.reorder_model.execute(index, *self.self_kv))

    def cleanup_caching(self) -> None:
        self.self_kv = None
        self.cross_kv = None
        self.n_past = 0


BACKEND = MaxBackend
