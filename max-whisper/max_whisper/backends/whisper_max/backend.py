"""``--backend max``: the whole Whisper model as Modular MAX graphs.

Five graphs, each built and compiled once per backend instance and reused for
every window and file (weights are bound through a weights registry, so MAX's
on-disk cache serves later processes too):

``encoder``
    (batch, n_mels, 3000) log-mel -> (batch, n_audio_ctx, n_audio_state).
``cross_kv``
    audio features -> each decoder block's cross-attention keys and values,
    computed once per window and kept on the MAX device.
``decoder``
    new tokens + cross K/V -> logits of the rows whisper reads; the keys and
    values of the new tokens are written in place into the self-attention
    cache, mutable buffers that stay on the device for the whole window.
``draft``
    one token -> a guess of the next one and its margin, from the same blocks
    with 4-bit matrices (it writes its keys and values into the same cache; the
    ``decoder`` pass overwrites them with exact ones).
``reorder``
    gathers the self-attention cache along the batch axis in place (beam search).

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

from ..base import Backend, Capabilities
from ...config import DEFAULT_MODEL
from ...errors import BackendUnavailableError, InputShapeError, MaxWhisperError
from ...models import load_checkpoint

try:  # the MAX engine is an optional dependency: the other backends work without it
    from max.driver import CPU, Accelerator, Buffer, accelerator_count
    from max.dtype import DType
    from max.engine import InferenceSession
    from max.graph import BufferType, DeviceRef, Graph, TensorType, ops

    from .layers import N_TOTAL, AudioEncoder, KVCache, Span, TextDecoder, WeightSource
    from .weights import state_dict_arrays
except ImportError as exc:  # pragma: no cover - exercised only where max is missing
    _MAX_IMPORT_ERROR: Optional[ImportError] = exc
else:
    _MAX_IMPORT_ERROR = None

DEVICES = ("auto", "cpu", "gpu")


#: The most tokens one speculative burst feeds the decoder pass (the real one + draft guesses).
LOOKAHEAD = 16
#: A burst ends at a guess whose draft margin over the runner-up is below this (logits): that guess
#: is still verified (it costs the pass almost nothing), but no more guesses are drafted after it.
#: (docs/performance.md, entry 15: lookahead 16 / margin 0.5 needs 81 float32 passes on the
#: long-form clip where 10 / 1.0 needs 122, for 16 % more draft steps.)
MIN_DRAFT_MARGIN = 0.5


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


def cache_shapes(dims: ModelDimensions, batch: "int | str") -> list:
    """Shapes of the self-attention cache [k_0, v_0, k_1, v_1, ...]: room for n_text_ctx positions,
    in the head layouts of :class:`max_model.KVCache`."""
    head, head_state, ctx = dims.n_text_head, dims.n_text_state // dims.n_text_head, dims.n_text_ctx
    return [(batch, head, ctx, head_state), (batch, head, head_state, ctx)] * dims.n_text_layer


def cache_types(dims: ModelDimensions, device: "DeviceRef") -> list:
    """Graph input types of the self-attention cache: mutable buffers of :func:`cache_shapes`."""
    return [BufferType(DType.float32, list(shape), device) for shape in cache_shapes(dims, "batch")]


def cross_kv_types(dims: ModelDimensions, device: "DeviceRef", draft: bool = False) -> list:
    """Graph input types of the cross-attention K/V [k_0, v_0, ...] (see ``TextDecoder.cross_kv``):
    the float32 decoder's layouts, or with ``draft`` the draft decoder's (keys and values swapped)."""
    head, head_state, ctx = dims.n_text_head, dims.n_text_state // dims.n_text_head, dims.n_audio_ctx
    dtype = DType.bfloat16 if draft else DType.float32
    k = TensorType(dtype, ["batch", head, head_state, ctx], device)
    v = TensorType(dtype, ["batch", head, ctx, head_state], device)
    return [v, k] * dims.n_text_layer if draft else [k, v] * dims.n_text_layer


#: Slice bounds (the span of new positions) are int64 scalars on the host, whatever the device.
SCALAR = TensorType(DType.int64, [], DeviceRef.CPU()) if _MAX_IMPORT_ERROR is None else None


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
        self.draft_decoder = TextDecoder(weights, dims, quantized=True)
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
            audio_features = graph.inputs[0].tensor
            draft = [ops.cast(kv, DType.bfloat16) for kv in self.draft_decoder.cross_kv(audio_features)]
            graph.output(*self.decoder.cross_kv(audio_features), *draft)
        return self._load(graph)

    def compile_decoder(self):
        """(tokens, start, end, mask, rows, cache..., cross K/V...) -> logits (batch, n_rows, n_vocab).

        The new tokens' keys and values are written into the cache buffers at [start, end)."""
        inputs = [
            TensorType(DType.int64, ["batch", "n_new"], self.device),  # tokens
            SCALAR,  # start
            SCALAR,  # end
            TensorType(DType.float32, ["n_new", N_TOTAL], self.device),  # additive causal mask
            TensorType(DType.int64, ["n_rows"], self.device),  # rows whose logits are returned
        ]
        inputs += cache_types(self.dims, self.device) + cross_kv_types(self.dims, self.device)
        with Graph("whisper_decoder", input_types=inputs) as graph:
            tokens, start, end, mask, rows = (v.tensor for v in graph.inputs[:5])
            caches = KVCache.per_block([v.buffer for v in graph.inputs[5 : 5 + self.n_kv]])
            cross_kv = [v.tensor for v in graph.inputs[5 + self.n_kv :]]
            hidden = self.decoder(tokens, Span(start, end), caches, cross_kv, mask, rows)
            graph.output(self.decoder.logits(hidden))
        return self._load(graph)

    def compile_draft(self):
        """(token, start, end, cache..., cross K/V...) -> (guess, margin), each (batch, 1).

        One token through the 4-bit draft blocks; its keys and values go into the cache at start."""
        inputs = [TensorType(DType.int64, ["batch", 1], self.device), SCALAR, SCALAR]
        inputs += cache_types(self.dims, self.device) + cross_kv_types(self.dims, self.device, draft=True)
        with Graph("whisper_draft", input_types=inputs) as graph:
            token, start, end = (v.tensor for v in graph.inputs[:3])
            caches = KVCache.per_block([v.buffer for v in graph.inputs[3 : 3 + self.n_kv]])
            cross_kv = [v.tensor for v in graph.inputs[3 + self.n_kv :]]
            hidden = self.draft_decoder(token, Span(start, end), caches, cross_kv)
            graph.output(*self.draft_decoder.draft(hidden, self.timestamp_begin, self.dims.n_vocab))
        return self._load(graph)

    def compile_reorder(self):
        """Gathers every cache buffer along the batch axis, in place (beam search)."""
        inputs = [TensorType(DType.int64, ["batch"], self.device)] + cache_types(self.dims, self.device)
        with Graph("whisper_cache_reorder", input_types=inputs) as graph:
            index = graph.inputs[0].tensor
            for value in graph.inputs[1:]:
                buffer = value.buffer
                ops.buffer_store(buffer, ops.rebind(ops.gather(ops.buffer_load(buffer), index, axis=0), buffer.shape))
            graph.output()
        return self._load(graph)


class MaxBackend(Backend):
    """Encoder and decoder (with KV cache) as MAX graphs on MAX's CPU or an accelerator."""

    capabilities = Capabilities(word_timestamps=False, devices=DEVICES)

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
            self.draft_model = graphs.compile_draft()
            self.reorder_model = graphs.compile_reorder()

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

    def cross_kv(self, audio_features: torch.Tensor) -> "tuple[List[Buffer], List[Buffer]]":
        """Every decoder block's cross-attention keys and values, once per window: ([k_0, v_0, ...] in
        the float32 decoder's layouts, the same in the draft decoder's layouts)."""
        expected = (self.dims.n_audio_ctx, self.dims.n_audio_state)
        if audio_features.ndim != 3 or tuple(audio_features.shape[1:]) != expected:
            raise InputShapeError(
                f"audio features must have shape (batch, {expected[0]}, {expected[1]}), got {tuple(audio_features.shape)}"
            )
        buffers = list(self.cross_kv_model.execute(self.to_device(audio_features.float().cpu().numpy())))
        n_kv = 2 * self.dims.n_text_layer
        return buffers[:n_kv], buffers[n_kv:]

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
    """whisper's ``Inference`` on MAX: decoder passes with their KV cache on the MAX device.

    The self-attention cache is a set of mutable buffers with room for the whole
    text context, allocated at the first call of a window; each pass writes its
    new keys and values in place and attends over the positions before its end,
    so cutting the cache back (a rejected guess) only moves where the next pass
    starts.

    Greedy decoding of one sequence (batch 1) is *speculative*: on a call that
    finds no prepared answer, the 4-bit draft decoder guesses up to
    ``LOOKAHEAD - 1`` tokens after the real newest one, one cheap step each
    (stopping at end-of-text, or after a guess whose margin is below
    ``MIN_DRAFT_MARGIN``); then one float32 decoder pass runs the real token and
    the guesses together and returns the logits of every row.  Row ``j`` is exact
    for the history it was computed with, and is returned only when whisper's own
    choices match that history; at the first mismatch the next burst starts from
    whisper's token.  The tokens chosen are therefore exactly those of
    step-by-step decoding, while the float32 weights are read once per burst
    instead of once per token.
    """

    def __init__(self, backend: MaxBackend, initial_token_length: int) -> None:
        # initial_token_length (whisper's signature) is not needed: the first call, with an
        # empty cache, is the prompt; every later call feeds the newest token only.
        self.backend = backend
        self.cache: Optional[List["Buffer"]] = None
        self.cross_kv: Optional[List["Buffer"]] = None  # the float32 decoder's
        self.draft_cross_kv: Optional[List["Buffer"]] = None  # the same, in the draft's layouts
        self.n_past = 0  # positions of the cache that hold the keys/values of the current history
        self.burst_start = 0  # position of the first token of the current burst
        self.burst_tokens: List[int] = []  # input token at each position of the burst
        self.burst_logits: Optional[torch.Tensor] = None  # (len(burst_tokens), n_vocab)

    # -- whisper's Inference API ------------------------------------------------------
    def logits(self, tokens: torch.Tensor, audio_features: torch.Tensor) -> torch.Tensor:
        backend = self.backend
        n_batch, n_tokens = tokens.shape
        if self.cross_kv is None:
            # whisper repeats the tokens of each window for beam search / best-of, not its features
            if audio_features.shape[0] != n_batch:
                audio_features = audio_features.repeat_interleave(n_batch // audio_features.shape[0], dim=0)
            self.cross_kv, self.draft_cross_kv = backend.cross_kv(audio_features)
        if n_tokens > backend.dims.n_text_ctx:
            raise InputShapeError(f"the decoder context holds {backend.dims.n_text_ctx} tokens; got {n_tokens}")
        if self.cache is None:
            return self._prefill(tokens)
        if n_batch == 1 and backend.speculate:
            return self._speculative_step(tokens[0].tolist())
        self.n_past = min(self.n_past, n_tokens - 1)
        return self._pass(tokens[:, -1:].numpy(), rows=[0])

    def rearrange_kv_cache(self, source_indices: Sequence[int]) -> None:
        if self.cache is None or list(source_indices) == list(range(len(source_indices))):
            return
        backend = self.backend
        backend.reorder_model.execute(backend.to_device(np.asarray(source_indices, dtype=np.int64)), *self.cache)
        self.burst_logits = None

    def cleanup_caching(self) -> None:
        self.cache = None
        self.cross_kv = self.draft_cross_kv = None
        self.n_past = 0
        self.burst_tokens, self.burst_logits = [], None

    # -- decoder passes ---------------------------------------------------------------
    @staticmethod
    def _span(start: int, n_new: int) -> "tuple[Buffer, Buffer]":
        """The positions [start, start + n_new) as host scalars (the graphs' slice bounds)."""
        return Buffer.from_numpy(np.array(start, dtype=np.int64)), Buffer.from_numpy(np.array(start + n_new, dtype=np.int64))

    def _pass(self, tokens: np.ndarray, rows: Sequence[int]) -> torch.Tensor:
        """Feed (batch, n_new) tokens after the cache (float32); logits (batch, len(rows), n_vocab)."""
        backend = self.backend
        n_new = tokens.shape[1]
        mask = np.triu(np.full((n_new, self.n_past + n_new), -np.inf, dtype=np.float32), k=self.n_past + 1)
        start, end = self._span(self.n_past, n_new)
        arrays = (tokens.astype(np.int64), mask, np.asarray(rows, dtype=np.int64))
        tokens_in, mask_in, rows_in = (backend.to_device(a) for a in arrays)
        logits = backend.decoder_model.execute(tokens_in, start, end, mask_in, rows_in, *self.cache, *self.cross_kv)[0]
        backend.stats["steps"] += 1
        self.n_past += n_new
        return backend.to_torch(logits)

    def _draft(self, token: int, position: int) -> "tuple[int, float]":
        """Feed ``token`` (batch 1) to the draft decoder at ``position``: (guess, margin).

        The draft's keys and values land in the cache at that position, past the real history;
        the float32 pass of the burst overwrites them."""
        backend = self.backend
        start, end = self._span(position, 1)
        token_in = backend.to_device(np.array([[token]], dtype=np.int64))
        guess, margin = backend.draft_model.execute(token_in, start, end, *self.cache, *self.draft_cross_kv)
        backend.stats["draft_steps"] += 1
        return int(backend.to_numpy(guess)[0, 0]), float(backend.to_numpy(margin)[0, 0])

    def _prefill(self, tokens: torch.Tensor) -> torch.Tensor:
        """The first call: all initial tokens at once; logits for the rows whisper reads.

        whisper reads the logits of the last token and, for the no-speech
        probability, of the start-of-transcript token; the other rows are not computed and
        left as zeros (``torch.zeros`` maps untouched pages, where a NaN fill of the whole
        (batch, n_tokens, n_vocab) tensor cost ~24 ms per window).
        """
        backend = self.backend
        d = backend.dims
        n_batch, n_tokens = tokens.shape
        # one array per buffer: on the CPU a Buffer shares its numpy array's memory
        self.cache = [backend.to_device(np.zeros(shape, dtype=np.float32)) for shape in cache_shapes(d, n_batch)]
        self.n_past = 0
        sot = (tokens[0] == backend.tokenizer.sot).nonzero()
        rows = sorted({int(sot[0, 0]) if len(sot) else 0, n_tokens - 1})
        row_logits = self._pass(tokens.numpy(), rows)
        logits = torch.zeros((n_batch, n_tokens, row_logits.shape[-1]))
        logits[:, rows] = row_logits
        self.burst_tokens, self.burst_logits = [], None
        return logits

    def _speculative_step(self, history: List[int]) -> torch.Tensor:
        """Logits after ``history`` (one sequence), served from or refilling the burst."""
        position = len(history) - 1  # where the newest token sits
        offset = position - self.burst_start
        if self.burst_logits is not None and 0 <= offset < len(self.burst_tokens):
            if history[self.burst_start : position + 1] == self.burst_tokens[: offset + 1]:
                self.backend.stats["rows_served"] += 1
                return self.burst_logits[offset][None, None]
        if self.n_past > position:
            self.backend.stats["rollbacks"] += 1
        self.n_past = min(self.n_past, position)
        self._burst(history[-1])
        self.backend.stats["rows_served"] += 1
        return self.burst_logits[0][None, None]

    def _burst(self, token: int) -> None:
        """Draft up to LOOKAHEAD - 1 guesses after ``token``, then one float32 pass for all of them."""
        backend = self.backend
        start = self.burst_start = self.n_past
        self.burst_tokens = [token]
        length = min(LOOKAHEAD, backend.dims.n_text_ctx - start)
        while len(self.burst_tokens) < length:
            guess, margin = self._draft(self.burst_tokens[-1], start + len(self.burst_tokens) - 1)
            if guess >= backend.dims.n_vocab or guess == backend.tokenizer.eot:
                break
            self.burst_tokens.append(guess)
            if margin < MIN_DRAFT_MARGIN:
                break
        backend.stats["bursts"] += 1
        backend.stats["burst_rows"] += len(self.burst_tokens)
        rows = list(range(len(self.burst_tokens)))
        self.burst_logits = self._pass(np.array([self.burst_tokens], dtype=np.int64), rows)[0]


BACKEND = MaxBackend
