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

from collections import Counter
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from whisper.decoding import Inference
from whisper.tokenizer import get_tokenizer
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

    from max.graph import ops

    from .max_model import AudioEncoder, TextDecoder, WeightSource
    from .max_weights import state_dict_arrays
except ImportError as exc:  # pragma: no cover - exercised only where max is missing
    _MAX_IMPORT_ERROR: Optional[ImportError] = exc
else:
    _MAX_IMPORT_ERROR = None

DEVICES = ("auto", "cpu", "gpu")


#: How many tokens a speculative run of the greedy decoder feeds (the real one + guesses).
LOOKAHEAD = 12
#: A burst stops before a guess whose 4-bit margin over the runner-up is below this (logits).
MIN_DRAFT_MARGIN = 1.0


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


def kv_types(dims: ModelDimensions, ctx: "int | str", device: "DeviceRef") -> list:
    """Graph input types of a cache [k_0, v_0, k_1, v_1, ...] holding ``ctx`` positions."""
    head, head_state = dims.n_text_head, dims.n_text_state // dims.n_text_head
    k = TensorType(DType.float32, ["batch", head, head_state, ctx], device)
    v = TensorType(DType.float32, ["batch", head, ctx, head_state], device)
    return [k, v] * dims.n_text_layer


class MaxWhisperGraphs:
    """Builds and compiles the graphs of one model on one device."""

    def __init__(
        self, dims: ModelDimensions, weights: "WeightSource", session: "InferenceSession", timestamp_begin: int
    ) -> None:
        self.dims = dims
        self.timestamp_begin = timestamp_begin
        self.weights = weights
        self.session = session
        self.device = weights.device
        self.encoder = AudioEncoder(weights, dims)
        self.decoder = TextDecoder(weights, dims)
        self.n_kv = 2 * dims.n_text_layer

    def _load(self, graph: "Graph"):
        return self.session.load(graph, weights_registry=self.weights.registry())

    def _kv_types(self, ctx: "int | str") -> list:
        """[k, v] * n_text_layer in head layout: k (batch, head, head_state, ctx), v (batch, head, ctx, head_state)."""
        return kv_types(self.dims, ctx, self.device)

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
        """New tokens + caches -> (hidden rows, draft guesses, their margins, grown self-attention cache)."""
        inputs = [
            TensorType(DType.int64, ["batch", "n_new"], self.device),  # tokens
            TensorType(DType.int64, ["n_new"], self.device),  # positions
            TensorType(DType.float32, ["n_new", "n_total"], self.device),  # additive causal mask
            TensorType(DType.int64, ["n_rows"], self.device),  # rows whose hidden state is returned
        ]
        inputs += self._kv_types("n_past") + self._kv_types(self.dims.n_audio_ctx)
        with Graph("whisper_decoder_step", input_types=inputs) as graph:
            values = [v.tensor for v in graph.inputs]
            tokens, positions, mask, rows = values[:4]
            self_kv, cross_kv = values[4 : 4 + self.n_kv], values[4 + self.n_kv :]
            hidden, new_kv = self.decoder(tokens, positions, mask, rows, self_kv, cross_kv)
            guess, margin = self.decoder.draft(hidden, self.timestamp_begin, self.dims.n_vocab)
            graph.output(hidden, guess, margin, *new_kv)
        return self._load(graph)

    def compile_logits(self):
        hidden = TensorType(DType.float32, ["batch", "n_rows", self.dims.n_text_state], self.device)
        with Graph("whisper_logits", input_types=[hidden]) as graph:
            graph.output(self.decoder.logits(graph.inputs[0].tensor))
        return self._load(graph)

    def compile_kv_select(self):
        """Gathers the self-attention cache: batch rows (beam search) and positions (rollback)."""
        inputs = [TensorType(DType.int64, ["n_batch_out"], self.device), TensorType(DType.int64, ["n_keep"], self.device)]
        inputs += self._kv_types("n_past")
        with Graph("whisper_kv_select", input_types=inputs) as graph:
            batch_index, keep = graph.inputs[0].tensor, graph.inputs[1].tensor
            caches = [v.tensor for v in graph.inputs[2:]]
            # keys hold positions on axis 3, values on axis 2 (see kv_types)
            graph.output(
                *(ops.gather(ops.gather(c, batch_index, axis=0), keep, axis=3 - i % 2) for i, c in enumerate(caches))
            )
        return self._load(graph)


class MaxBackend(Backend):
    """Encoder and decoder (with KV cache) as MAX graphs on MAX's CPU or an accelerator."""

    name = "max"
    host_torch_threads = 1

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        threads: Optional[int] = None,
        device: str = "auto",
        speculate: bool = True,
    ) -> None:
        if _MAX_IMPORT_ERROR is not None:
            raise BackendUnavailableError(f"the max backend needs the MAX engine (pip install max): {_MAX_IMPORT_ERROR}")
        super().__init__(model, threads=threads)
        self.speculate = speculate
        #: decoder counters: steps run, speculative bursts, logits rows computed / served.
        self.stats: Counter = Counter()
        with self.timer.stage("load"):
            checkpoint = load_checkpoint(model)
            self.dims = ModelDimensions(**checkpoint["dims"])
            self.tokenizer = get_tokenizer(self.is_multilingual, num_languages=self.num_languages)
            arrays = state_dict_arrays(checkpoint["model_state_dict"])
            self.driver_device, device_ref = select_device(device)
            # MAX 26.7 creates its CPU device at import time with the default thread
            # count (one per core); asking the session for another count aborts the
            # process, so --threads sets PyTorch's threads only (see docs/performance.md).
            self.session = InferenceSession(devices=[self.driver_device])
            self.weights = WeightSource(arrays, device_ref)
        self.device_name = "gpu" if device_ref == DeviceRef.GPU() else "cpu"
        with self.timer.stage("compile"):
            graphs = MaxWhisperGraphs(self.dims, self.weights, self.session, self.tokenizer.timestamp_begin)
            self.encoder_model = graphs.compile_encoder()
            self.cross_kv_model = graphs.compile_cross_kv()
            self.decoder_model = graphs.compile_decoder()
            self.logits_model = graphs.compile_logits()
            self.kv_select_model = graphs.compile_kv_select()

    # -- host <-> MAX device ------------------------------------------------------------
    def to_device(self, array: np.ndarray) -> "Buffer":
        buffer = Buffer.from_numpy(np.ascontiguousarray(array))
        return buffer if self.device_name == "cpu" else buffer.to(self.driver_device)

    def to_numpy(self, buffer: "Buffer") -> np.ndarray:
        if self.device_name != "cpu":
            buffer = buffer.to(CPU())
        return buffer.to_numpy()

    def to_torch(self, buffer: "Buffer") -> torch.Tensor:
        return torch.from_numpy(np.array(self.to_numpy(buffer), copy=True))

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
        info.update(
            device=self.device_name,
            speculate=self.speculate,
            lookahead=LOOKAHEAD,
            min_draft_margin=MIN_DRAFT_MARGIN,
            decoder_counters=dict(self.stats),  # since the backend was made, warm-up included
        )
        return info


class MaxInference(Inference):
    """whisper's ``Inference`` on MAX: decoder steps with their KV cache on the MAX device.

    Greedy decoding of one sequence is memory-bound on the vocabulary projection
    (``hidden @ token_embedding.T`` reads the whole embedding for every token).
    So, for a batch of one, each call that finds no prepared answer runs a
    *speculative* burst: it feeds the real newest token, then up to
    ``LOOKAHEAD - 1`` guesses of the following tokens (the draft pass: the best
    token of a small draft vocabulary), keeping every step's exact hidden state
    and cache; then one vocabulary pass turns all those hidden states into
    logits.  Row ``j`` is exact for the token history it was computed with, and
    is returned only when whisper's own choices match that history; at the first
    mismatch the cache is cut back and a new burst starts.  The tokens chosen are
    therefore exactly those of step-by-step decoding.
    """

    def __init__(self, backend: MaxBackend, initial_token_length: int) -> None:
        # initial_token_length (whisper's signature) is not needed: the first call, with an
        # empty cache, is the prompt; every later call feeds the newest token only.
        self.backend = backend
        self.self_kv: Optional[List["Buffer"]] = None
        self.cross_kv: Optional[List["Buffer"]] = None
        self.n_past = 0  # positions held by the self-attention cache
        self.burst_start = 0  # position of the first token of the current burst
        self.burst_tokens: List[int] = []  # input token at each position of the burst
        self.burst_logits: Optional[torch.Tensor] = None  # (len(burst_tokens), n_vocab)
        self.burst_caches: List[List["Buffer"]] = []  # cache holding burst_start + j positions, per j

    # -- whisper's Inference API ------------------------------------------------------
    def logits(self, tokens: torch.Tensor, audio_features: torch.Tensor) -> torch.Tensor:
        backend = self.backend
        n_batch, n_tokens = tokens.shape
        if self.cross_kv is None:
            # whisper repeats the tokens of each window for beam search / best-of, not its features
            if audio_features.shape[0] != n_batch:
                audio_features = audio_features.repeat_interleave(n_batch // audio_features.shape[0], dim=0)
            self.cross_kv = backend.cross_kv(audio_features)
        if n_tokens > backend.dims.n_text_ctx:
            raise InputShapeError(f"the decoder context holds {backend.dims.n_text_ctx} tokens; got {n_tokens}")
        if self.self_kv is None:
            return self._prefill(tokens)
        if n_batch == 1 and backend.speculate:
            return self._speculative_step(tokens[0].tolist())
        self._truncate(n_tokens - 1)
        hidden = self._step(tokens[:, -1:].numpy(), rows=[0])[0]
        return backend.to_torch(backend.logits_model.execute(hidden)[0])

    def rearrange_kv_cache(self, source_indices: Sequence[int]) -> None:
        if self.self_kv is None or list(source_indices) == list(range(len(source_indices))):
            return
        self._select(np.asarray(source_indices, dtype=np.int64), self.n_past)

    def cleanup_caching(self) -> None:
        self.self_kv = None
        self.cross_kv = None
        self.n_past = 0
        self.burst_tokens, self.burst_logits, self.burst_caches = [], None, []

    # -- decoding steps ---------------------------------------------------------------
    def _step(self, tokens: np.ndarray, rows: Sequence[int]) -> "tuple[Buffer, Buffer, Buffer]":
        """Feed (batch, n_new) tokens after the cache; return (hidden rows, guesses, margins)."""
        backend = self.backend
        n_new = tokens.shape[1]
        positions = np.arange(self.n_past, self.n_past + n_new, dtype=np.int64)
        mask = np.triu(np.full((n_new, self.n_past + n_new), -np.inf, dtype=np.float32), k=self.n_past + 1)
        inputs = [tokens.astype(np.int64), positions, mask, np.asarray(rows, dtype=np.int64)]
        outputs = backend.decoder_model.execute(*(backend.to_device(a) for a in inputs), *self.self_kv, *self.cross_kv)
        backend.stats["steps"] += 1
        self.self_kv = list(outputs[3:])
        self.n_past += n_new
        return outputs[0], outputs[1], outputs[2]

    def _prefill(self, tokens: torch.Tensor) -> torch.Tensor:
        """The first call: all initial tokens at once; logits for the rows whisper reads.

        whisper reads the logits of the last token and, for the no-speech
        probability, of the start-of-transcript token; the other rows are NaN.
        """
        backend = self.backend
        d = backend.dims
        n_batch, n_tokens = tokens.shape
        head, head_state = d.n_text_head, d.n_text_state // d.n_text_head
        empty_k = np.zeros((n_batch, head, head_state, 0), dtype=np.float32)
        empty_v = np.zeros((n_batch, head, 0, head_state), dtype=np.float32)
        self.self_kv = [backend.to_device(a) for _ in range(d.n_text_layer) for a in (empty_k, empty_v)]
        self.n_past = 0
        sot = (tokens[0] == backend.tokenizer.sot).nonzero()
        rows = sorted({int(sot[0, 0]) if len(sot) else 0, n_tokens - 1})
        hidden, _, _ = self._step(tokens.numpy(), rows)
        row_logits = backend.to_torch(backend.logits_model.execute(hidden)[0])
        logits = torch.full((n_batch, n_tokens, row_logits.shape[-1]), float("nan"))
        logits[:, rows] = row_logits
        self.burst_tokens, self.burst_logits, self.burst_caches = [], None, []
        return logits

    def _speculative_step(self, history: List[int]) -> torch.Tensor:
        """Logits after ``history`` (one sequence), served from or refilling the burst."""
        position = len(history) - 1  # where the newest token sits
        offset = position - self.burst_start
        if self.burst_logits is not None and 0 <= offset < len(self.burst_tokens):
            if history[self.burst_start : position + 1] == self.burst_tokens[: offset + 1]:
                self.backend.stats["rows_served"] += 1
                return self.burst_logits[offset][None, None]
        self._truncate(position)
        self._burst(history[-1])
        self.backend.stats["rows_served"] += 1
        return self.burst_logits[0][None, None]

    def _burst(self, token: int) -> None:
        """Feed ``token`` and up to LOOKAHEAD - 1 draft guesses; one vocabulary pass for all."""
        backend = self.backend
        self.burst_start = self.n_past
        self.burst_tokens = [token]
        self.burst_caches = [self.self_kv]
        hidden_rows = []
        room = backend.dims.n_text_ctx - self.n_past
        while True:
            hidden, guess, margin = self._step(np.array([[token]]), rows=[0])
            self.burst_caches.append(self.self_kv)
            hidden_rows.append(np.array(backend.to_numpy(hidden), copy=True))
            token = min(int(backend.to_numpy(guess)[0, 0]), backend.dims.n_vocab - 1)
            if (
                len(self.burst_tokens) >= min(LOOKAHEAD, room)
                or token == backend.tokenizer.eot
                or float(backend.to_numpy(margin)[0, 0]) < MIN_DRAFT_MARGIN
            ):
                break
            self.burst_tokens.append(token)
        backend.stats["bursts"] += 1
        backend.stats["burst_rows"] += len(hidden_rows)
        hidden_all = backend.to_device(np.concatenate(hidden_rows, axis=1))
        self.burst_logits = backend.to_torch(backend.logits_model.execute(hidden_all)[0])[0]

    def _truncate(self, n_keep: int) -> None:
        """Cut the self-attention cache back to its first ``n_keep`` positions."""
        if self.n_past > n_keep:
            self.backend.stats["rollbacks"] += 1
            if 0 <= n_keep - self.burst_start < len(self.burst_caches):
                # every step of a burst made a new cache: take the one that ends at n_keep
                self.self_kv = self.burst_caches[n_keep - self.burst_start]
                self.n_past = n_keep
                return
            n_batch = int(self.self_kv[0].shape[0])
            self._select(np.arange(n_batch, dtype=np.int64), n_keep)

    def _select(self, batch_index: np.ndarray, n_keep: int) -> None:
        backend = self.backend
        keep = np.arange(n_keep, dtype=np.int64)
        outputs = backend.kv_select_model.execute(backend.to_device(batch_index), backend.to_device(keep), *self.self_kv)
        self.self_kv = list(outputs)
        self.n_past = n_keep


BACKEND = MaxBackend
