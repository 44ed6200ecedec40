"""The max backend's graphs: their signatures, which of them a device uses, and how they are built.

``encoder``
    (batch, n_mels, 3000) log-mel -> (batch, n_audio_ctx, n_audio_state) audio
    features, and from them each decoder block's cross-attention keys and values,
    computed once per window and kept on the MAX device (with the draft: the same
    again in the draft decoder's bfloat16 layouts).  One graph, not two: MAX
    compiles each graph's kernels anew, so a second graph of the same matmuls
    would cost a cold start about as much again (docs/performance.md, entry 28).
``decoder``
    new tokens + cross K/V -> logits of the rows whisper reads; the keys and
    values of the new tokens are written in place into the self-attention
    cache, mutable buffers that stay on the device for the whole window.  On
    the CPU, where every value of the decoder's matrices is a float16 number, the
    logits and the blocks' products read them as float16 panels through a Mojo
    kernel (``kernels/``): the same matrices in half the bytes
    (:attr:`GraphPlan.panels`).
``decoder_step`` (GPU only)
    one token per row at a position held on the device -> logits, and whisper's greedy
    choice from them (:mod:`.choice`: greedy decoding reads back a token and its
    log-probability a row, not the logits); every shape
    but the batch is fixed (it attends over the whole cache, the positions past
    the token masked), so it is captured once per window as a device graph and
    replayed for each token.  Its products are multiply-and-sum reductions,
    exact float32 on a GPU (MAX's float32 matmul of several rows runs on TF32
    tensor cores there).  The encoder adds the cross K/V in its layouts.
``draft`` (CPU only: MAX's Q4_0 matmul has no GPU kernel)
    one token -> a guess of the next one and its margin, from the same blocks
    with 4-bit matrices (it writes its keys and values into the same cache; the
    ``decoder`` pass overwrites them with exact ones).
``choice`` (CPU only: on a GPU ``decoder_step`` chooses)
    logits rows of the ``decoder`` graph -> whisper's greedy token and its
    log-probability a row (:mod:`.choice`), so that greedy decoding runs no
    tensor operation of whisper's token logic on the host: for a speculative
    burst, one call for all of its rows.
``reorder`` (GPU only: on the CPU the cache lives in host memory and numpy moves its rows)
    gathers the self-attention cache along the batch axis in place, over the held
    positions (beam search; and one prompt row copied to every beam).
``cross_kv`` (loaded only when asked for)
    the encoder's second half alone: the cross K/V of audio features that did
    not come from the ``encoder`` graph (whisper's ``decode`` accepts features).

On a GPU, MAX's float32 matmul runs on TF32 tensor cores; the GPU plan's ``encoder``,
``decoder`` and ``cross_kv`` split each float32 product so that it keeps float32 accuracy
(``layers.SplitProduct``, :attr:`GraphPlan.product`), and ``decoder_step`` has no matmul.

Each graph takes its weights through a weights registry (never as constants),
so MAX's on-disk compile cache, or artifacts exported by ``max-whisper
compile``, serve every later process.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from max.dtype import DType
from max.engine import InferenceSession, MissingArtifactError
from max.graph import BufferType, DeviceRef, Graph, TensorType, TensorValue, ops
from whisper.model import ModelDimensions

from ...errors import MaxWhisperError
from ...timing import StageTimer
from .artifacts import ArtifactStore
from .choice import greedy_choice
from .layers import MATMUL, N_TOTAL, AudioEncoder, KVCache, Product, Span, SplitProduct, TextDecoder, WeightSource
from .weights import (
    DRAFT_EMBEDDING,
    draft_arrays,
    float16_panel_arrays,
    is_float16_exact,
    state_dict_arrays,
    with_float32_panels,
)

DEVICES = ("cpu", "gpu")
#: Decoder weight types (the first is the default): float32 is token-identical to the cpu backend.
DTYPES = ("float32", "bfloat16")
#: The Mojo package of the max backend's custom ops (the CPU plan's: float16-panel products, the
#: decoder's cross-attention, the draft's attention).
KERNELS = Path(__file__).parent / "kernels"

#: Slice bounds (the span of new positions) are int64 scalars on the host, whatever the device.
SCALAR = TensorType(DType.int64, [], DeviceRef.CPU())


@dataclass(frozen=True)
class GraphPlan:
    """Which graphs the max backend builds for a device and decoder weight type.

    On the CPU the greedy decoder is bandwidth-bound and a 4-bit draft decoder pays
    (speculative bursts); on a GPU a decoder step is bound by kernel launches, not bytes,
    and MAX's Q4_0 kernels are CPU-only, so the GPU plan has no draft: one exact pass per
    token through ``decoder_step``, replayed as a captured device graph (docs/performance.md,
    entries 19 and 36).

    ``device`` names the plan (the device it is made for); ``runs_on`` the MAX device its graphs
    are built for and run on, by default the same.  The GPU plan on the CPU runs the GPU's graph
    set (no draft, the cache reordered by the ``reorder`` graph, bfloat16 decoder weights allowed)
    on MAX's CPU device: the check of the GPU plan's graphs and decoding where there is no GPU.
    The CPU plan runs only on the CPU (MAX's Q4_0 kernels are CPU-only).

    ``panels`` (the CPU plan's float32 decoder; :func:`plan_for_checkpoint` sets it where it is exact):
    the decoder's logits and its blocks' products read their matrices as float16 panels
    (``weights.is_panel_matrix``) through the Mojo kernel of ``kernels/half_panels.mojo``, which
    widens each weight to float32 in registers (docs/performance.md, entry 41).
    """

    device: str = "cpu"
    dtype: str = "float32"
    runs_on: str | None = None
    panels: bool = False

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ValueError(f"unknown graph plan {self.device!r}; choose one of {', '.join(DEVICES)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")
        if self.runs_on is not None and self.runs_on not in DEVICES:
            raise ValueError(f"unknown device {self.runs_on!r}; choose one of {', '.join(DEVICES)}")
        if self.device == "cpu" and self.target == "gpu":
            raise ValueError("the cpu plan runs only on the CPU: its 4-bit draft has no GPU kernels")
        if self.panels and (self.device != "cpu" or self.dtype != "float32"):
            raise ValueError("float16 panels are for the cpu plan's float32 decoder (their kernel is a CPU kernel)")

    @property
    def target(self) -> str:
        """The MAX device the graphs run on: ``runs_on``, or the plan's own device."""
        return self.runs_on or self.device

    @property
    def draft(self) -> bool:
        """Whether the speculative draft decoder (4-bit, CPU-only) is part of the plan."""
        return self.device == "cpu"

    @property
    def kernels(self) -> bool:
        """Whether the encoder and the float32 decoder load the Mojo kernels of ``kernels/`` (the CPU
        plan's, whose graphs run only on the CPU): the encoder's self-attention runs through
        ``encoder_attention.mojo`` (docs/performance.md, entry 44), the decoder's self-attention over its cache
        through ``cached_attention.mojo`` (entry 45), its cross-attention through ``few_query_attention.mojo``
        (entry 42), and with ``panels`` its products through ``half_panels.mojo``.
        The draft, part of the CPU plan only, always attends through ``draft_attention.mojo`` and picks
        its guesses through ``draft_choice.mojo`` (entry 44)."""
        return self.device == "cpu"

    @property
    def extensions(self) -> list[Path]:
        """The custom extensions of the graphs that use :attr:`kernels` (the encoder, the decoder)."""
        return [KERNELS] if self.kernels else []

    @property
    def step(self) -> bool:
        """Whether single-token passes run the fixed-shape ``decoder_step`` graph (the GPU plan)."""
        return self.device == "gpu"

    @property
    def transcription_graphs(self) -> tuple[str, ...]:
        """The graphs a transcription may load (what ``max-whisper compile`` compiles by default)."""
        # the CPU plan reorders the cache in host memory (inference.MaxInference._reorder)
        if self.device == "cpu":
            return ("encoder", "decoder", "draft", "choice")
        return ("encoder", "decoder", "decoder_step", "reorder")

    @property
    def graph_names(self) -> tuple[str, ...]:
        """Every graph of the plan: the transcription's, then ``cross_kv`` (for audio features that
        did not come from the ``encoder`` graph)."""
        return self.transcription_graphs + ("cross_kv",)

    @property
    def product(self) -> Product:
        """How the encoder and the decoder pass multiply float32 matrices: on a GPU MAX's float32 matmul
        runs on TF32 tensor cores, too coarse for beam search to choose as the cpu backend does, so
        the GPU plan splits each product into three (:class:`layers.SplitProduct`); the CPU's matmul
        is float32."""
        return SplitProduct() if self.device == "gpu" else MATMUL

    @property
    def device_ref(self) -> DeviceRef:
        return DeviceRef.GPU() if self.target == "gpu" else DeviceRef.CPU()

    @property
    def weight_dtype(self) -> DType:
        return DType.bfloat16 if self.dtype == "bfloat16" else DType.float32


def plan_for_checkpoint(plan: GraphPlan, state_dict: Mapping[str, Any]) -> GraphPlan:
    """``plan`` with float16 panels where they hold the checkpoint's decoder matrices exactly: the CPU
    plan's float32 decoder, and every value a float16 number (openai-whisper's checkpoints are stored
    in float16)."""
    if plan.device != "cpu" or plan.dtype != "float32" or plan.panels:
        return plan
    return replace(plan, panels=True) if is_float16_exact(state_dict) else plan


def plan_arrays(state_dict: Mapping[str, Any], plan: GraphPlan) -> dict[str, Any]:
    """The weights registry of ``plan``: its decoder type, the (vocab, state) embedding where the plan has
    a decoder step, the float16 panels where the plan reads them, the encoder graph's matrices as float32
    panels where its kernels multiply by them, and no draft weights yet
    (:meth:`MaxWhisperGraphs.add_draft_weights` adds them when the draft is first built or loaded)."""
    arrays = state_dict_arrays(state_dict, draft=False, decoder_dtype=plan.dtype, embedding_rows=plan.step)
    if plan.panels:
        arrays.update(float16_panel_arrays(state_dict))
    return with_float32_panels(arrays) if plan.kernels else arrays


def cache_shapes(dims: ModelDimensions, batch: int | str) -> list:
    """Shapes of the self-attention cache [k_0, v_0, k_1, v_1, ...]: room for n_text_ctx positions,
    in the head layouts of :class:`layers.KVCache`."""
    head, head_state, ctx = dims.n_text_head, dims.n_text_state // dims.n_text_head, dims.n_text_ctx
    return [(batch, head, ctx, head_state), (batch, head, head_state, ctx)] * dims.n_text_layer


def cache_types(dims: ModelDimensions, device: DeviceRef) -> list:
    """Graph input types of the self-attention cache: mutable buffers of :func:`cache_shapes`."""
    return [BufferType(DType.float32, list(shape), device) for shape in cache_shapes(dims, "batch")]


def cross_kv_types(dims: ModelDimensions, device: DeviceRef, layout: str = "exact") -> list:
    """Graph input types of the cross-attention K/V [k_0, v_0, ...] (see ``TextDecoder.cross_kv``):
    ``exact``, the exact decoder's layouts, one row per audio (``n_audio``, shared by that audio's
    beams or samples); ``draft``, the draft decoder's (bfloat16, keys and values swapped, one row per
    token row); ``step``, the decoder step's (the draft's layouts in float32, one row per audio)."""
    head, head_state, ctx = dims.n_text_head, dims.n_text_state // dims.n_text_head, dims.n_audio_ctx
    dtype = DType.bfloat16 if layout == "draft" else DType.float32
    rows = "batch" if layout == "draft" else "n_audio"
    k = TensorType(dtype, [rows, head, head_state, ctx], device)
    v = TensorType(dtype, [rows, head, ctx, head_state], device)
    return [k, v] * dims.n_text_layer if layout == "exact" else [v, k] * dims.n_text_layer


class MaxWhisperGraphs:
    """Builds the graphs of one model for one :class:`GraphPlan`, and compiles or loads them."""

    def __init__(self, dims: ModelDimensions, weights: WeightSource, timestamp_begin: int, plan: GraphPlan) -> None:
        self.dims = dims
        self.timestamp_begin = timestamp_begin
        self.weights = weights
        self.plan = plan
        self.device = weights.device
        product = plan.product  # the encoder and the decoder pass multiply alike
        self.encoder = AudioEncoder(weights, dims, product=product, kernels=plan.kernels)
        self.decoder = TextDecoder(weights, dims, product=product, panels=plan.panels, kernels=plan.kernels)
        self.draft_decoder = TextDecoder(weights, dims, quantized=True) if plan.draft else None
        self.step_decoder = TextDecoder(weights, dims, rowwise=True) if plan.step else None
        self.n_kv = 2 * dims.n_text_layer
        self.builders: dict[str, Callable[[], Graph]] = {
            "encoder": self.build_encoder,
            "cross_kv": self.build_cross_kv,
            "decoder": self.build_decoder,
            "decoder_step": self.build_decoder_step,
            "draft": self.build_draft,
            "reorder": self.build_reorder,
            "choice": self.build_choice,
        }

    def _name(self, base: str) -> str:
        """Names of the graphs that read the decoder's per-token matrices say their type where it is
        not float32, or that they are float16 panels (exported artifacts are matched by name and
        signature, and the types are in neither)."""
        name = base if self.plan.dtype == "float32" else f"{base}_{self.plan.dtype}"
        return f"{name}_float16_panels" if self.plan.panels and base == "whisper_decoder" else name

    def build(self, name: str) -> Graph:
        if name not in self.plan.graph_names:
            raise ValueError(f"graph {name!r} is not part of the {self.plan} plan")
        return self.builders[name]()

    def load(self, session: InferenceSession, name: str, store: ArtifactStore | None = None):
        """The graph ``name`` with its weights bound, ready to execute: from its artifact in ``store``
        when there is one, else built and compiled (MAX's compile cache, or the session's
        precompiled artifacts, may serve the compile) and then kept in ``store``."""
        if name not in self.plan.graph_names:
            raise ValueError(f"graph {name!r} is not part of the {self.plan} plan")
        if name == "draft":
            self.add_draft_weights()
        registry = self.weights.registry()
        if store is not None and (model := store.load(session, name, registry)) is not None:
            return model
        compiled = session.compile_reusing_mefs(self.build(name))
        if store is not None:
            store.save(compiled, name)
        return session.init(compiled, weights_registry=registry)

    # -- the graphs ------------------------------------------------------------------------
    def build_encoder(self) -> Graph:
        """log-mel -> (audio features, cross K/V..., draft cross K/V...)."""
        d = self.dims
        mel = TensorType(DType.float32, ["batch", d.n_mels, 2 * d.n_audio_ctx], self.device)
        with Graph("whisper_encoder", input_types=[mel], custom_extensions=self.plan.extensions) as graph:
            audio_features = self.encoder(graph.inputs[0].tensor)
            graph.output(audio_features, *self.cross_kv(audio_features))
        return graph

    def build_cross_kv(self) -> Graph:
        """audio features -> (cross K/V..., draft cross K/V...)."""
        d = self.dims
        features = TensorType(DType.float32, ["batch", d.n_audio_ctx, d.n_audio_state], self.device)
        with Graph("whisper_cross_kv", input_types=[features], custom_extensions=self.plan.extensions) as graph:
            graph.output(*self.cross_kv(graph.inputs[0].tensor))
        return graph

    def cross_kv(self, audio_features: TensorValue) -> list[TensorValue]:
        """Every block's cross-attention [k_0, v_0, ...] in the exact decoder's layouts, then the same
        in the single-row decoder's layouts: with a draft its bfloat16 ones, with a decoder step
        its float32 ones. Each block's keys and values are made once, by the exact decoder's
        matrices; the single-row layouts are the exact ones with their last two axes swapped."""
        exact = self.decoder.cross_kv(audio_features)
        if self.draft_decoder is None and self.step_decoder is None:
            return exact
        rows = [ops.permute(kv, [0, 1, 3, 2]) for kv in exact]
        if self.draft_decoder is not None:
            rows = [ops.cast(kv, DType.bfloat16) for kv in rows]
        return [*exact, *rows]

    def build_decoder(self) -> Graph:
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
        with Graph(self._name("whisper_decoder"), input_types=inputs, custom_extensions=self.plan.extensions) as graph:
            tokens, start, end, mask, rows = (v.tensor for v in graph.inputs[:5])
            caches = KVCache.per_block([v.buffer for v in graph.inputs[5 : 5 + self.n_kv]])
            cross_kv = [v.tensor for v in graph.inputs[5 + self.n_kv :]]
            hidden = self.decoder(tokens, Span(start, end), caches, cross_kv, mask, rows)
            graph.output(self.decoder.logits(hidden))
        return graph

    def build_decoder_step(self) -> Graph:
        """(tokens, position, suppress, ranges, timestamp_rule, cache..., cross K/V...) -> (logits
        (batch, 1, n_vocab), token (batch,), log-probability (batch,)).

        One token per row at ``position``, a (1,) int64 tensor on the device; the cross K/V in the
        step's layouts (``cross_kv_types(layout="step")``).  The new keys and values are written into
        the cache buffers at ``position``.  ``token`` and its log-probability are whisper's greedy
        choice from the logits under the masks ``suppress``, ``ranges`` and ``timestamp_rule``
        (:func:`.choice.greedy_choice`); a caller that reads only the logits passes no masks."""
        d, device = self.dims, self.device
        inputs = [
            TensorType(DType.int64, ["batch", 1], device),  # tokens
            TensorType(DType.int64, [1], device),  # position
            TensorType(DType.float32, [d.n_vocab], device),  # suppress: 0 or -inf
            TensorType(DType.int64, ["batch", "n_ranges", 2], device),  # ranges [lo, hi) masked per row
            TensorType(DType.int64, [1], device),  # timestamp_rule: 1 on, 0 off
        ]
        inputs += cache_types(d, device) + cross_kv_types(d, device, layout="step")
        with Graph(self._name("whisper_decoder_step"), input_types=inputs) as graph:
            tokens, position, suppress, ranges, timestamp_rule = (v.tensor for v in graph.inputs[:5])
            caches = KVCache.per_block([v.buffer for v in graph.inputs[5 : 5 + self.n_kv]])
            cross_kv = [v.tensor for v in graph.inputs[5 + self.n_kv :]]
            logits = self.step_decoder.step(tokens, position, caches, cross_kv)
            choice = greedy_choice(logits, suppress, ranges, timestamp_rule, self.timestamp_begin, device)
            graph.output(logits, *choice)
        return graph

    def add_draft_weights(self) -> None:
        """The draft decoder's 4-bit weights, made from the float32 ones the first time the draft is
        built or loaded (0.3 s here: runs without greedy decoding never pay it)."""
        if DRAFT_EMBEDDING not in self.weights.arrays:
            self.weights.arrays.update(draft_arrays(self.weights.arrays))

    def build_draft(self) -> Graph:
        """(token, start, end, cache..., cross K/V...) -> (guess, margin), each (batch, 1).

        One token through the 4-bit draft blocks; its keys and values go into the cache at start."""
        self.add_draft_weights()
        inputs = [TensorType(DType.int64, ["batch", 1], self.device), SCALAR, SCALAR]
        inputs += cache_types(self.dims, self.device) + cross_kv_types(self.dims, self.device, layout="draft")
        with Graph(self._name("whisper_draft"), input_types=inputs, custom_extensions=[KERNELS]) as graph:
            token, start, end = (v.tensor for v in graph.inputs[:3])
            caches = KVCache.per_block([v.buffer for v in graph.inputs[3 : 3 + self.n_kv]])
            cross_kv = [v.tensor for v in graph.inputs[3 + self.n_kv :]]
            hidden = self.draft_decoder(token, Span(start, end), caches, cross_kv)
            graph.output(*self.draft_decoder.draft(hidden, self.timestamp_begin, self.dims.n_vocab))
        return graph

    def build_choice(self) -> Graph:
        """(logits, suppress, ranges, timestamp_rule) -> (token (rows,), log-probability (rows,)).

        whisper's greedy choice for each row of ``logits`` (rows, 1, n_vocab), each under its own
        ``ranges`` (rows, n_ranges, 2); ``suppress`` and ``timestamp_rule`` as in ``decoder_step``. One op,
        ``kernels/greedy_choice.mojo`` (:func:`.choice.greedy_choice` with ``kernel``)."""
        d, device = self.dims, self.device
        inputs = [
            TensorType(DType.float32, ["rows", 1, d.n_vocab], device),  # logits
            TensorType(DType.float32, [d.n_vocab], device),  # suppress: 0 or -inf
            TensorType(DType.int64, ["rows", "n_ranges", 2], device),  # ranges [lo, hi) masked per row
            TensorType(DType.int64, [1], device),  # timestamp_rule: 1 on, 0 off
        ]
        with Graph("whisper_greedy_choice", input_types=inputs, custom_extensions=[KERNELS]) as graph:
            logits, suppress, ranges, timestamp_rule = (v.tensor for v in graph.inputs)
            choice = greedy_choice(logits, suppress, ranges, timestamp_rule, self.timestamp_begin, device, kernel=True)
            graph.output(*choice)
        return graph

    def build_reorder(self) -> Graph:
        """(index, end, cache...): row i of every cache buffer becomes row index[i], in place, for the
        held positions [0, end) only (beam search's reorder; also copies one prompt row to all rows)."""
        inputs = [TensorType(DType.int64, ["batch"], self.device), SCALAR] + cache_types(self.dims, self.device)
        with Graph("whisper_cache_reorder", input_types=inputs) as graph:
            index, end = graph.inputs[0].tensor, graph.inputs[1].tensor
            held = (slice(0, end), N_TOTAL)
            for i, value in enumerate(graph.inputs[2:]):
                buffer = value.buffer  # keys (batch, head, ctx, head_state), values (batch, head, head_state, ctx)
                where = [slice(None), slice(None), held, slice(None)] if i % 2 == 0 else [slice(None)] * 3 + [held]
                rows = ops.gather(ops.slice_tensor(ops.buffer_load(buffer), where), index, axis=0)
                ops.buffer_store_slice(buffer, rows, where)
            graph.output()
        return graph


class LoadedGraphs(Mapping):
    """The plan's graphs by name, each loaded (or compiled) the first time it is asked for.

    A run needs only some of them: beam search and best-of never run the draft, greedy decoding
    never reorders the cache (the GPU plan's ``reorder``), and ``cross_kv`` serves only audio
    features that the ``encoder`` graph did not make.  Loading is timed as the ``compile`` stage of ``timer``.

    ``compile_in_workers(names, store_root)`` (given a store): compiles graphs the store lacks into it in
    other processes, all at once (:func:`.compile_workers.compile_in_workers` for this backend's
    checkpoint and plan); what it leaves out is compiled here.
    """

    def __init__(
        self,
        graphs: MaxWhisperGraphs,
        session: InferenceSession,
        store: ArtifactStore | None,
        timer: StageTimer,
        compile_in_workers: Callable[[Sequence[str], Path], object] | None = None,
    ) -> None:
        self.graphs, self.session, self.store, self.timer = graphs, session, store, timer
        self.compile_in_workers = compile_in_workers if store is not None else None
        self._models: dict[str, object] = {}
        self._asked_workers: set[str] = set()  # a graph a worker did not compile is not asked for again

    def __getitem__(self, name: str):
        if name not in self._models:
            if name not in self.graphs.plan.graph_names:
                raise KeyError(name)
            self._compile_missing([name])
            with self.timer.stage("compile"):
                try:
                    self._models[name] = self.graphs.load(self.session, name, self.store)
                except MissingArtifactError as exc:  # a session given precompiled artifacts that lack it
                    raise MaxWhisperError(f"the precompiled graphs do not fit this model and plan: {exc}") from exc
        return self._models[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.graphs.plan.graph_names)

    def __len__(self) -> int:
        return len(self.graphs.plan.graph_names)

    def preload(self, *names: str) -> None:
        """Load ``names`` now rather than on first use (those the store lacks compiled side by side)."""
        self._compile_missing(names)
        for name in names:
            self[name]

    def _compile_missing(self, names: Sequence[str]) -> None:
        """Have the workers compile the graphs of ``names`` that are neither loaded nor in the store (once
        per graph)."""
        if self.compile_in_workers is None:  # no workers, or no store for them to fill
            return
        missing = [n for n in names if n not in self._models and n not in self._asked_workers]
        missing = [n for n in missing if not self.store.path(n).is_file()]
        self._asked_workers.update(missing)
        if missing:
            with self.timer.stage("compile"):
                self.compile_in_workers(missing, self.store.folder.parent)

    @property
    def loaded(self) -> list[str]:
        """The graphs loaded so far."""
        return list(self._models)
