"""Whisper as MAX Graph builders, module for module.

The classes here mirror openai-whisper's ``whisper/model.py`` (``AudioEncoder``,
``TextDecoder``, ``ResidualAttentionBlock``, ``MultiHeadAttention``, ``Linear``,
``LayerNorm``) and keep its attribute names (``encoder.blocks[i].attn``,
``cross_attn``, ``mlp``, ``ln_post`` ...).  They do not hold numbers: called
inside a ``max.graph.Graph`` they add the operations of their PyTorch twin to
that graph, reading weights by their openai-whisper ``state_dict`` name from a
:class:`WeightSource` (the token embedding is held transposed, under
``weights.TOKEN_EMBEDDING_T``).  Weights enter each graph as named ``Weight`` values
bound at load time through a weights registry, never as baked-in constants, so
MAX's compile cache serves every later run.

The graphs of :mod:`max_whisper.backends.whisper_max.graphs` are built from these pieces: the
encoder, the cross-attention K/V projection, the decoder pass (float32, with its
self-attention KV cache written in place and the logits), the draft decoder step
(the same blocks with 4-bit matrices: a cheap guess of the next token), and the
cache reorder used by beam search.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
from max.dtype import DType
from max.graph import BufferValue, DeviceRef, Graph, TensorType, TensorValue, Weight, ops
from max.graph.quantization import QuantizationEncoding
from whisper.model import ModelDimensions

from .weights import (
    DRAFT_EMBEDDING,
    TOKEN_EMBEDDING,
    TOKEN_EMBEDDING_T,
    draft_name,
    float32_panels_name,
    fused_qkv_name,
    panels_name,
)

#: openai-whisper's LayerNorm epsilon (torch's default).
LN_EPS = 1e-5


class Product:
    """How a graph multiplies two matrices, ``a @ b``: MAX's matmul (float32 on the CPU)."""

    def __call__(self, a: TensorValue, b: TensorValue) -> TensorValue:
        return a @ b


class SplitProduct(Product):
    """float32 ``a @ b`` to within a few 1e-6 relative, on a device whose float32 matmul rounds its
    inputs to TF32 (an NVIDIA GPU's tensor cores: a 10-bit mantissa, ~3.5e-4 relative error in MAX's
    matmul, enough to change beam search's choices; docs/performance.md, entry 36).

    Each operand is split into a bfloat16-exact high part and the float32 rest (``x = hi + lo``, the
    rest under 2^-8 of ``x``); TF32 holds ``hi`` exactly, so ``hi_a hi_b`` is exact and the two
    correction terms lose ~2^-19 of ``|a||b|`` each:
    ``a @ b ~ lo_a @ b + hi_a @ lo_b + hi_a @ hi_b``, computed as one matmul over a contraction axis
    three times as long (``[lo_a, hi_a, hi_a] @ [b; lo_b; hi_b]``): one kernel, and one matmul for
    MAX to compile rather than three.  The small terms come first in the sum: on MAX's CPU that
    keeps the result within 3e-7 of float64 (1.5e-6 with the large terms first, 6e-7 for a plain
    float32 matmul).  Operands of other types multiply as they are."""

    def __call__(self, a: TensorValue, b: TensorValue) -> TensorValue:
        if a.dtype != DType.float32 or b.dtype != DType.float32:
            return a @ b
        a_hi, a_lo = bfloat16_split(a)
        b_hi, b_lo = bfloat16_split(b)
        return ops.concat([a_lo, a_hi, a_hi], axis=-1) @ ops.concat([b, b_lo, b_hi], axis=-2)


def bfloat16_split(x: TensorValue) -> tuple[TensorValue, TensorValue]:
    """float32 ``x`` as ``hi + lo``: ``hi`` rounded to bfloat16 (8 significant bits) and widened back,
    ``lo = x - hi`` exactly.  Casts, not arithmetic tricks, so no compiler contraction changes it."""
    hi = ops.cast(ops.cast(x, DType.bfloat16), DType.float32)
    return hi, x - hi


#: The plain product: every graph of the CPU plan, and what the layers use unless told otherwise.
MATMUL = Product()


class WeightSource:
    """Hands out graph values for openai-whisper ``state_dict`` names.

    ``arrays`` is the weights registry (name -> numpy array, or a torch tensor for
    bfloat16 weights) that is bound to every compiled graph; :meth:`get` adds the
    named weight to the graph under construction, once per graph.
    """

    def __init__(self, arrays: Mapping[str, Any], device: DeviceRef) -> None:
        self.arrays = dict(arrays)
        self.device = device
        self._graph_weights: dict[tuple[int, str], TensorValue] = {}

    def get(self, name: str) -> TensorValue:
        graph = Graph.current
        key = (id(graph), name)
        if key not in self._graph_weights:
            array = self.arrays[name]
            dtype = DType.bfloat16 if str(array.dtype) == "torch.bfloat16" else DType.from_numpy(array.dtype)
            weight = Weight(name, dtype, tuple(array.shape), self.device)
            self._graph_weights[key] = graph.add_weight(weight)
        return self._graph_weights[key]

    def registry(self, names: Sequence[str] | None = None) -> dict[str, Any]:
        """The arrays to bind when loading a graph (all of them by default)."""
        if names is None:
            return self.arrays
        return {name: self.arrays[name] for name in names}


class Linear:
    """``y = x W^T + b`` (openai-whisper ``Linear``).

    ``quantized``: multiply by the 4-bit draft copy of ``W`` (:func:`draft_name`) instead: the
    draft decoder's linear layers (the bias stays float32).  ``rowwise``: each output as a
    multiply-and-sum over a row of ``W`` (:func:`rowwise_product`), exact float32 on a GPU.
    ``panels``: multiply by the float16 panels of ``W`` (:func:`matmul_float16_panels`).
    ``float32_panels``: multiply by the float32 panels of ``W`` where the registry holds them
    (:func:`linear_float32_panels`, which also applies the bias, GELU and residual in one op).
    Otherwise ``product`` multiplies (:class:`Product`).
    """

    def __init__(
        self,
        weights: WeightSource,
        name: str,
        bias: bool = True,
        quantized: bool = False,
        rowwise: bool = False,
        product: Product = MATMUL,
        panels: bool = False,
        float32_panels: bool = False,
    ) -> None:
        self.weights, self.name, self.bias, self.quantized, self.rowwise = weights, name, bias, quantized, rowwise
        self.product, self.panels, self.float32_panels = product, panels, float32_panels

    def __call__(self, x: TensorValue, gelu: bool = False, residual: TensorValue | None = None) -> TensorValue:
        """``residual + gelu(x W^T + b)``, with the GELU and the residual only where asked for."""
        panels = float32_panels_name(f"{self.name}.weight")
        if self.float32_panels and panels in self.weights.arrays:
            bias = self.weights.get(f"{self.name}.bias") if self.bias else None
            return linear_float32_panels(x, self.weights.get(panels), bias, gelu=gelu, residual=residual)
        if self.quantized:
            y = ops.qmatmul(QuantizationEncoding.Q4_0, None, x, self.weights.get(draft_name(f"{self.name}.weight")))
        elif self.rowwise:
            y = rowwise_product(x, self.weights.get(f"{self.name}.weight"))
        elif self.panels:
            n_out = int(self.weights.arrays[f"{self.name}.weight"].shape[0])
            y = matmul_float16_panels(x, self.weights.get(panels_name(f"{self.name}.weight")), n_out)
        else:
            y = matmul_t(x, self.weights.get(f"{self.name}.weight"), self.product)
        if self.bias:
            y = y + self.weights.get(f"{self.name}.bias")
        if gelu:
            y = ops.gelu(y)
        return y if residual is None else residual + y


def matmul_t(x: TensorValue, w: TensorValue, product: Product = MATMUL) -> TensorValue:
    """``x @ w^T`` in ``x``'s type (``w`` in torch's ``Linear`` layout, (out, in))."""
    return matmul(x, ops.transpose(w, 0, 1), product)


def matmul(x: TensorValue, w: TensorValue, product: Product = MATMUL) -> TensorValue:
    """``x @ w`` in ``x``'s type; a weight of another type (a bfloat16 decoder's) is widened to it, so
    only the stored weights are rounded, as in the decoder step's multiply-and-sum products (a
    bfloat16 matmul would round the activations and the result to 8 bits as well)."""
    if w.dtype != x.dtype:
        w = ops.cast(w, x.dtype)
    return product(x, w)


def rowwise_product(x: TensorValue, w: TensorValue) -> TensorValue:
    """``x @ w^T`` (``w`` (out, in)) as an elementwise product and a sum over ``in``, in float32.

    On an NVIDIA GPU MAX runs a float32 matmul of more than one row on tensor cores, which round its
    inputs to TF32 (10-bit mantissa: logits off by ~1e-3 relative, docs/performance.md, entry 36);
    a multiply-and-sum stays float32.  For the few rows of a decoder step it reads ``w`` once per
    row, which is what a matrix-vector product reads anyway."""
    y = ops.sum(ops.unsqueeze(x, -2) * as_float32(w), axis=-1)  # (..., out, 1)
    return ops.squeeze(y, -1)


def matmul_float16_panels(x: TensorValue, panels: TensorValue, n_out: int) -> TensorValue:
    """``x @ w`` for float32 ``x`` (..., K) and ``w`` (K, n_out) held as float16 panels
    (``weights.float16_panels``), in float32: the custom op of ``kernels/half_panels.mojo`` (the graph
    must load that package), which widens each weight in registers and so reads half the bytes.  The
    kernel indexes its tensors as dense row-major arrays: ``x`` goes in reshaped to rows, and a
    registry weight is dense."""
    *lead, k = x.shape
    rows = ops.reshape(x, [-1, k])
    out_type = TensorType(DType.float32, [rows.shape[0], n_out], x.device)
    y = ops.custom("matmul_float16_panels", device=x.device, values=[rows, panels], out_types=[out_type])[0].tensor
    return ops.reshape(y, [*lead, n_out])


def linear_float32_panels(
    x: TensorValue,
    panels: TensorValue,
    bias: TensorValue | None,
    *,
    gelu: bool = False,
    residual: TensorValue | None = None,
    stride: int = 1,
    taps: int = 1,
    n_out: int | None = None,
) -> TensorValue:
    """``residual + gelu(x @ w + bias)`` for float32 ``x`` (batch, rows, C) and ``w`` (taps * C, N) held as
    float32 panels (``weights.float32_panels``), each of ``bias``, the GELU and ``residual`` (batch or 1,
    M, N) only where given: the custom ops of ``kernels/float32_panels.mojo`` (the graph must load that
    package), which give MAX's matmul's bits (docs/performance.md, entry 48). With ``taps`` or ``stride``
    above 1 a convolution over ``x``'s rows (time): output row t reads rows ``stride * t`` to ``stride * t
    + taps - 1``, so ``x`` comes in padded. Returns (batch, M, N), M = (rows - taps) // stride + 1; N is
    ``n_out``, by default every column of the panels."""
    batch, rows, _ = x.shape
    n_out = int(panels.shape[0]) * int(panels.shape[2]) if n_out is None else n_out
    m = (int(rows) - taps) // stride + 1
    if bias is None:
        bias = ops.constant(np.zeros(n_out, np.float32), DType.float32, x.device)
    values = [x, panels, bias]
    name = "linear_float32_panels"
    if residual is not None:
        values.append(residual if residual.rank == 3 else ops.unsqueeze(residual, 0))
        name += "_residual"
    out_type = TensorType(DType.float32, [batch, m, n_out], x.device)
    parameters = {"act": int(gelu), "stride": stride, "taps": taps}
    return ops.custom(name, device=x.device, values=values, out_types=[out_type], parameters=parameters)[0].tensor


def few_query_attention(q: TensorValue, k_t: TensorValue, v: TensorValue) -> TensorValue:
    """softmax(q k^T / 8) v per 64-wide head for float32 q (batch, n_query, state) over k_t (batch, head,
    64, n_keys) and v (batch, head, n_keys, 64): the custom op of ``kernels/few_query_attention.mojo``
    (the graph must load that package), which streams each head's keys and values once per five query
    rows, and from 64 queries (a prompt's pass) once per vector of queries (the encoder attention's
    blocks, ``kernels/lanes_attention.mojo``).  Returns (batch, n_query, state), the heads merged; the
    kernel reads its inputs as dense row-major arrays."""
    out_type = TensorType(DType.float32, q.shape, q.device)
    return ops.custom("few_query_attention", device=q.device, values=[q, k_t, v], out_types=[out_type])[0].tensor


def encoder_attention(q: TensorValue, k: TensorValue, v: TensorValue, n_head: int) -> TensorValue:
    """softmax(q k^T / 8) v per 64-wide head, no mask, for q, k, v (batch, ctx, state): the encoder's
    self-attention as the custom op of ``kernels/encoder_attention.mojo`` (the graph must load that
    package), which keeps each chunk of scores in cache instead of writing every head's scores to
    memory, and reads each head's columns of q, k and v in place.  Returns (batch, ctx, state), the
    heads merged."""
    if int(q.shape[-1]) != 64 * n_head:
        raise ValueError(f"encoder_attention: {n_head} heads of 64 in a width of {q.shape[-1]}")
    out_type = TensorType(DType.float32, q.shape, q.device)
    return ops.custom("encoder_attention", device=q.device, values=[q, k, v], out_types=[out_type])[0].tensor


def draft_self_attention(qkv: TensorValue, position: TensorValue, cache: KVCache) -> TensorValue:
    """The draft's self-attention of one new token per row, one op: ``qkv`` (batch, 1, 3 * state)
    float32 holds its query, key and value side by side; the key and value go into ``cache`` at
    ``position`` (an int64 scalar), then the query attends over the cache's positions
    ``[0, position]``, read in place.  The custom op of ``kernels/draft_attention.mojo`` (the graph
    must load that package).  Returns (batch, 1, state), the heads merged."""
    batch, n_new, width = qkv.shape
    out_type = TensorType(DType.float32, [batch, n_new, int(width) // 3], qkv.device)
    values = [qkv, ops.reshape(position, [1]), cache.keys, cache.values]
    (out,) = ops.inplace_custom("draft_self_attention", device=qkv.device, values=values, out_types=[out_type])
    return out.tensor


def cached_attention(
    q: TensorValue, k: TensorValue, v: TensorValue, start: TensorValue, mask: TensorValue, cache: KVCache
) -> TensorValue:
    """The float32 decoder's self-attention of its new tokens, one op: q, k and v (batch, n_new, state)
    float32 are their projections; the keys and values go into ``cache`` at positions ``[start, start +
    n_new)`` (``start`` an int64 scalar), then each query attends over the cache's positions ``[0, start
    + n_new)`` under the additive ``mask`` (n_new, start + n_new), read in place.  The custom op of
    ``kernels/cached_attention.mojo`` (the graph must load that package).  Returns (batch, n_new, state),
    the heads merged."""
    values = [q, k, v, ops.reshape(start, [1]), mask, cache.keys, cache.values]
    out_type = TensorType(DType.float32, q.shape, q.device)
    (out,) = ops.inplace_custom("cached_attention", device=q.device, values=values, out_types=[out_type])
    return out.tensor


def draft_cross_attention(q: TensorValue, k: TensorValue, v_t: TensorValue) -> TensorValue:
    """The draft's cross-attention of one new token per row, one op: q (batch, 1, state) float32 over
    the audio's bfloat16 keys k (batch, head, n_audio_ctx, 64) and values v_t (batch, head, 64,
    n_audio_ctx), the draft's layouts of the cross K/V.  The custom op of
    ``kernels/draft_attention.mojo`` (the graph must load that package)."""
    out_type = TensorType(DType.float32, q.shape, q.device)
    return ops.custom("draft_cross_attention", device=q.device, values=[q, k, v_t], out_types=[out_type])[0].tensor


def as_float32(x: TensorValue) -> TensorValue:
    return x if x.dtype == DType.float32 else ops.cast(x, DType.float32)


class LayerNorm:
    def __init__(self, weights: WeightSource, name: str) -> None:
        self.weights, self.name = weights, name

    def __call__(self, x: TensorValue) -> TensorValue:
        return ops.layer_norm(x, self.weights.get(f"{self.name}.weight"), self.weights.get(f"{self.name}.bias"), LN_EPS)


class MLP:
    """``mlp.0`` (Linear) -> GELU (exact, erf) -> ``mlp.2`` (Linear)."""

    def __init__(
        self,
        weights: WeightSource,
        name: str,
        quantized: bool = False,
        rowwise: bool = False,
        product: Product = MATMUL,
        panels: bool = False,
        float32_panels: bool = False,
    ) -> None:
        kinds = {"quantized": quantized, "rowwise": rowwise, "product": product, "panels": panels}
        self.fc1 = Linear(weights, f"{name}.0", float32_panels=float32_panels, **kinds)
        self.fc2 = Linear(weights, f"{name}.2", float32_panels=float32_panels, **kinds)

    def __call__(self, x: TensorValue, residual: TensorValue | None = None) -> TensorValue:
        """``residual + mlp(x)``, the residual only where given."""
        return self.fc2(self.fc1(x, gelu=True), residual=residual)


def split_heads(x: TensorValue, n_head: int) -> TensorValue:
    """(batch, ctx, state) -> (batch, head, ctx, state / head)."""
    batch, ctx, state = x.shape
    x = ops.reshape(x, [batch, ctx, n_head, int(state) // n_head])
    return ops.permute(x, [0, 2, 1, 3])


def merge_heads(x: TensorValue) -> TensorValue:
    """(batch, head, ctx, head_state) -> (batch, ctx, head * head_state)."""
    batch, n_head, ctx, head_state = x.shape
    x = ops.permute(x, [0, 2, 1, 3])
    return ops.reshape(x, [batch, ctx, int(n_head) * int(head_state)])


def keys_transposed(k: TensorValue, n_head: int) -> TensorValue:
    """(batch, ctx, state) keys -> (batch, head, head_state, ctx): ready for ``q @ k``."""
    return ops.permute(split_heads(k, n_head), [0, 1, 3, 2])


def attend(
    q: TensorValue,
    k_t: TensorValue,
    v: TensorValue,
    n_head: int,
    mask: TensorValue | None = None,
    product: Product = MATMUL,
) -> TensorValue:
    """softmax(q k^T / sqrt(d_head) + mask) v (whisper's ``qkv_attention``).

    q (batch, ctx, state); k_t (batch, head, head_state, n_keys) from
    :func:`keys_transposed`; v (batch, head, n_keys, head_state) from :func:`split_heads`.
    Caches are kept in these head layouts so a decoder step permutes only its new rows.
    """
    head_state = int(q.shape[-1]) // n_head
    scores = product(split_heads(q, n_head), k_t) * (1.0 / math.sqrt(head_state))
    if mask is not None:  # (n_new, n_past + n_new): the same length at run time as the keys
        scores = scores + ops.rebind(mask, scores.shape[-2:])
    return merge_heads(product(ops.softmax(scores, axis=-1), v))


def attend_rows(
    q: TensorValue, k: TensorValue, v_t: TensorValue, n_head: int, mask: TensorValue | None = None
) -> TensorValue:
    """Attention of one query row per token row as multiply-and-sum reductions over the last axis,
    against keys and values shared by groups of rows (a decoder step of whisper's beams or samples,
    which read their audio's cross K/V).

    q (batch, 1, state); k (n_keys_rows, head, n_keys, head_state) and v_t (n_keys_rows, head,
    head_state, n_keys), with batch = n_keys_rows * group (audio-major, as whisper orders beams);
    mask (n_keys,) additive, or None.  Multiply-and-sum reductions only: no matmul, so no TF32 on a GPU.
    """
    batch, _, state = q.shape
    head_state = int(state) // n_head
    rows, n_keys = k.shape[0], k.shape[2]
    group = batch // rows
    q = ops.reshape(ops.rebind(q, [rows * group, 1, state]), [rows, group, n_head, 1, head_state])
    scores = ops.sum(ops.unsqueeze(k, 1) * q, axis=-1)  # (rows, group, head, n_keys, 1)
    scores = ops.reshape(scores, [rows, group, n_head, 1, n_keys]) * (1.0 / math.sqrt(head_state))
    if mask is not None:
        scores = scores + mask
    out = ops.sum(ops.unsqueeze(v_t, 1) * ops.softmax(scores, axis=-1), axis=-1)  # (rows, group, head, head_state, 1)
    return ops.rebind(ops.reshape(out, [rows * group, 1, state]), [batch, 1, state])


class KVCache(NamedTuple):
    """One block's self-attention cache: two mutable buffers with room for ``n_text_ctx`` positions.

    keys (batch, head, n_text_ctx, head_state), values (batch, head, head_state, n_text_ctx): the
    layouts :func:`draft_self_attention` reads in place (the draft decoder's single query row), which
    the float32 decoder's :func:`attend` reads transposed.  A decoder pass writes the keys and values of its
    new tokens in place at positions ``[start, end)`` and attends over ``[0, end)``; positions from
    ``end`` on are never read, so cutting the cache back is only a matter of where the next pass
    starts.
    """

    keys: BufferValue
    values: BufferValue

    @classmethod
    def per_block(cls, buffers: Sequence[BufferValue]) -> list[KVCache]:
        """[k_0, v_0, k_1, v_1, ...] buffers -> one cache per block."""
        return [cls(buffers[i], buffers[i + 1]) for i in range(0, len(buffers), 2)]


class Span(NamedTuple):
    """Where a decoder pass's new tokens go: positions ``[start, end)``, as int64 scalars."""

    start: TensorValue
    end: TensorValue


#: Symbolic length of the keys a pass attends over (``end``); the mask's second dimension.
N_TOTAL = "n_total"


class MultiHeadAttention:
    """whisper's ``MultiHeadAttention``: ``query``, ``key`` (no bias), ``value``, ``out``.

    ``quantized``: the draft decoder's attention, its products 4-bit: ``out``; in cross-attention
    ``query`` (whose keys and values are computed once per window in float32); in self-attention
    ``qkv``, the query, key and value as one product (``weights.fused_qkv_name``).  The draft feeds
    one token at a time, and each of its attentions is one op: :func:`draft_self_attention` and
    :func:`draft_cross_attention` (CPU kernels).
    ``panels``: the float32 decoder's products by float16 panels, except the cross-attention keys
    and values (computed once per window, in the encoder graph).  ``kernels``: the attention itself
    through CPU kernels (the graph must load ``kernels/``): the encoder's self-attention through
    :func:`encoder_attention`, the float32 decoder's over its cache through :func:`cached_attention`
    and its cross-attention through :func:`few_query_attention`; with ``kernels`` the cross-attention's
    keys and values (made once per window, in the encoder graph) multiply by float32 panels
    (:func:`linear_float32_panels`).  ``float32_panels``: every product does (the encoder's attention).
    """

    def __init__(
        self,
        weights: WeightSource,
        name: str,
        n_head: int,
        quantized: bool = False,
        cross: bool = False,
        rowwise: bool = False,
        product: Product = MATMUL,
        panels: bool = False,
        kernels: bool = False,
        float32_panels: bool = False,
    ) -> None:
        self.n_head = n_head
        self.quantized = quantized
        self.kernels = kernels
        self.one_query = quantized or rowwise
        self.product = product
        kinds = {"rowwise": rowwise, "product": product}
        wide = {"float32_panels": float32_panels}
        self.query = Linear(weights, f"{name}.query", quantized=quantized, panels=panels, **kinds, **wide)
        own_kv = quantized and not cross  # the draft's cross K/V come from the float32 encoder graph
        kv_panels = panels and not cross
        # the cross-attention's keys and values are made once per window, in the encoder graph
        kv_wide = {"float32_panels": float32_panels or (kernels and cross)}
        self.key = Linear(weights, f"{name}.key", bias=False, quantized=own_kv, panels=kv_panels, **kinds, **kv_wide)
        self.value = Linear(weights, f"{name}.value", quantized=own_kv, panels=kv_panels, **kinds, **kv_wide)
        self.out = Linear(weights, f"{name}.out", quantized=quantized, panels=panels, **kinds, **wide)
        # the draft's self-attention projects its token once, onto the three stacked (weights.fused_qkv_name);
        # its query, key and value above are then never called (the draft has no 4-bit copies of them)
        self.qkv = Linear(weights, fused_qkv_name(name), quantized=True) if own_kv else None

    def __call__(
        self, x: TensorValue, mask: TensorValue | None = None, residual: TensorValue | None = None
    ) -> TensorValue:
        """Self-attention without a cache (the encoder's), plus ``residual`` where given."""
        if self.kernels and mask is None:
            out = encoder_attention(self.query(x), self.key(x), self.value(x), self.n_head)
        else:
            k_t, v = self.key_value(x)
            out = attend(self.query(x), k_t, v, self.n_head, mask, self.product)
        return self.out(out, residual=residual)

    def key_value(self, x: TensorValue, one_query: bool | None = None) -> tuple[TensorValue, TensorValue]:
        """Keys and values of ``x`` in the head layouts :func:`attend` takes, or with ``one_query``
        (by default in the draft decoder and the decoder step) the cache's layouts (:class:`KVCache`),
        which the draft's and the step's attention read."""
        if self.one_query if one_query is None else one_query:
            return split_heads(self.key(x), self.n_head), keys_transposed(self.value(x), self.n_head)
        return keys_transposed(self.key(x), self.n_head), split_heads(self.value(x), self.n_head)

    def cached(self, x: TensorValue, cache: KVCache, span: Span, mask: TensorValue | None = None) -> TensorValue:
        """Self-attention of the new tokens ``x`` over the cache: their keys and values are written
        into ``cache`` at ``span`` first, then the queries attend over positions ``[0, span.end)``.

        ``mask`` (n_new, n_total) is additive (causal among the new tokens); None for one new token.
        The draft's one new token is stored and attends in one op (:func:`draft_self_attention`), and
        with ``kernels`` so do the float32 decoder's new tokens (:func:`cached_attention`).
        """
        if self.qkv is not None:
            return self.out(draft_self_attention(self.qkv(x), span.start, cache))
        if self.kernels and mask is not None:
            return self.out(cached_attention(self.query(x), self.key(x), self.value(x), span.start, mask, cache))
        k_new, v_new = self.key_value(x, one_query=True)  # the cache's layouts (see KVCache)
        n_new = x.shape[1]
        new = (slice(span.start, span.end), n_new)
        ops.buffer_store_slice(cache.keys, k_new, [slice(None), slice(None), new, slice(None)])
        ops.buffer_store_slice(cache.values, v_new, [slice(None), slice(None), slice(None), new])
        held = (slice(0, span.end), N_TOTAL)
        k = ops.slice_tensor(ops.buffer_load(cache.keys), [slice(None), slice(None), held, slice(None)])
        v_t = ops.slice_tensor(ops.buffer_load(cache.values), [slice(None), slice(None), slice(None), held])
        k_t, v = ops.transpose(k, 2, 3), ops.transpose(v_t, 2, 3)
        return self.out(attend(self.query(x), k_t, v, self.n_head, mask, self.product))

    def at_position(self, x: TensorValue, cache: KVCache, position: TensorValue, n_ctx: int) -> TensorValue:
        """Self-attention of one new token per row at ``position`` (a (1,) int64 tensor on the device),
        over the whole cache with the positions after it masked: every shape is fixed, so a captured
        device graph of the step replays at any position (:meth:`cached` slices at host scalars).

        The new keys and values go in by rewriting each cache buffer with the new row selected at
        ``position`` (a few MB per row, microseconds on a GPU)."""
        k_new, v_new = self.key_value(x, one_query=True)  # (batch, head, 1, d), (batch, head, d, 1)
        index = ops.range(0, n_ctx, 1, out_dim=n_ctx, dtype=DType.int64, device=position.device)
        at = index == position  # (n_ctx,)
        keys = ops.where(ops.reshape(at, [1, 1, n_ctx, 1]), k_new, ops.buffer_load(cache.keys))
        values_t = ops.where(ops.reshape(at, [1, 1, 1, n_ctx]), v_new, ops.buffer_load(cache.values))
        ops.buffer_store(cache.keys, keys)
        ops.buffer_store(cache.values, values_t)
        floor = ops.constant(-math.inf, DType.float32, position.device)
        zero = ops.constant(0.0, DType.float32, position.device)
        mask = ops.where(index <= position, zero, floor)  # (n_ctx,)
        return self.out(attend_rows(self.query(x), keys, values_t, self.n_head, mask))

    def cross_rows(self, x: TensorValue, k_audio: TensorValue, v_t_audio: TensorValue) -> TensorValue:
        """Cross-attention of one token per row over the audio keys/values in the one-query layouts
        (:meth:`key_value` with ``one_query``), one row per audio shared by that audio's token rows."""
        return self.out(attend_rows(self.query(x), k_audio, v_t_audio, self.n_head))

    def cross(self, x: TensorValue, k_audio: TensorValue, v_audio: TensorValue) -> TensorValue:
        """Cross-attention over the audio keys/values (from :meth:`key_value`, once per window).

        The float32 decoder's keys and values have one row per *audio* (n_audio), shared by the
        rows of ``x`` that decode it: x (n_audio * group, n_new, state), audio-major as whisper's
        ``repeat_interleave`` orders beams and samples.  Each audio's group of rows attends as one
        sequence of group * n_new queries, so beams read the audio's keys and values once.  The
        draft decoder (one query a row, :func:`draft_cross_attention`) takes keys and values with the
        same batch as ``x``.
        """
        if self.quantized:
            return self.out(draft_cross_attention(self.query(x), k_audio, v_audio))
        batch, n_new, state = x.shape
        n_audio = k_audio.shape[0]
        group = batch // n_audio
        q = ops.rebind(self.query(x), [group * n_audio, n_new, state])  # asserts batch = n_audio * group
        queries = ops.reshape(q, [n_audio, group * n_new, state])
        if self.kernels:
            out = few_query_attention(queries, k_audio, v_audio)
        else:
            out = attend(queries, k_audio, v_audio, self.n_head, product=self.product)
        return self.out(ops.rebind(ops.reshape(out, [group * n_audio, n_new, state]), [batch, n_new, state]))


class ResidualAttentionBlock:
    def __init__(
        self,
        weights: WeightSource,
        name: str,
        n_head: int,
        cross_attention: bool,
        quantized: bool = False,
        rowwise: bool = False,
        product: Product = MATMUL,
        panels: bool = False,
        kernels: bool = False,
        float32_panels: bool = False,
    ) -> None:
        kinds = {"rowwise": rowwise, "product": product, "panels": panels}
        self.attn = MultiHeadAttention(
            weights, f"{name}.attn", n_head, quantized, kernels=kernels, float32_panels=float32_panels, **kinds
        )
        self.attn_ln = LayerNorm(weights, f"{name}.attn_ln")
        self.cross_attn = (
            MultiHeadAttention(weights, f"{name}.cross_attn", n_head, quantized, cross=True, kernels=kernels, **kinds)
            if cross_attention
            else None
        )
        self.cross_attn_ln = LayerNorm(weights, f"{name}.cross_attn_ln") if cross_attention else None
        self.mlp = MLP(weights, f"{name}.mlp", quantized, float32_panels=float32_panels, **kinds)
        self.mlp_ln = LayerNorm(weights, f"{name}.mlp_ln")

    def __call__(self, x: TensorValue) -> TensorValue:
        """The encoder's block: self-attention and MLP, each pre-norm with a residual (added by their
        output products)."""
        x = self.attn(self.attn_ln(x), residual=x)
        return self.mlp(self.mlp_ln(x), residual=x)

    def step(
        self,
        x: TensorValue,
        cache: KVCache,
        k_audio: TensorValue,
        v_audio: TensorValue,
        span: Span,
        mask: TensorValue | None = None,
    ) -> TensorValue:
        """The decoder's block for new tokens at ``span``; their self-attention K/V go into ``cache``."""
        x = x + self.attn.cached(self.attn_ln(x), cache, span, mask)
        x = x + self.cross_attn.cross(self.cross_attn_ln(x), k_audio, v_audio)
        return x + self.mlp(self.mlp_ln(x))

    def at_position(
        self, x: TensorValue, cache: KVCache, k_audio: TensorValue, v_t_audio: TensorValue, position: TensorValue
    ) -> TensorValue:
        """The decoder's block for one new token per row at ``position`` (see :meth:`TextDecoder.step`)."""
        n_ctx = int(cache.keys.shape[2])
        x = x + self.attn.at_position(self.attn_ln(x), cache, position, n_ctx)
        x = x + self.cross_attn.cross_rows(self.cross_attn_ln(x), k_audio, v_t_audio)
        return x + self.mlp(self.mlp_ln(x))


class Conv1d:
    """A 1-D convolution of kernel 3, padding 1: as shifted slices and one matmul, or with
    ``float32_panels`` (where the registry holds them) as one op that reads the padded frames in place
    (:func:`linear_float32_panels`).

    Works on (batch, time, channels) values; ``stride`` 1 or 2 (whisper's conv1, conv2).
    """

    def __init__(
        self, weights: WeightSource, name: str, stride: int, product: Product = MATMUL, float32_panels: bool = False
    ) -> None:
        self.weights, self.name, self.stride, self.product = weights, name, stride, product
        self.float32_panels = float32_panels

    def __call__(self, x: TensorValue, gelu: bool = False, residual: TensorValue | None = None) -> TensorValue:
        """``residual + gelu(conv(x))``, with the GELU and the residual only where asked for."""
        batch, time, in_channels = x.shape
        zeros = ops.broadcast_to(ops.constant(0.0, DType.float32, self.weights.device), [batch, 1, in_channels])
        padded = ops.concat([zeros, x, zeros], axis=1)  # (batch, time + 2, in)
        panels = float32_panels_name(f"{self.name}.weight")
        if self.float32_panels and panels in self.weights.arrays:
            w = self.weights.get(panels)  # (out / 32, 3 * in, 32)
            taps = int(w.shape[1]) // int(in_channels)
            bias = self.weights.get(f"{self.name}.bias")
            return linear_float32_panels(padded, w, bias, gelu=gelu, residual=residual, stride=self.stride, taps=taps)
        y = self.columns_product(padded)
        if gelu:
            y = ops.gelu(y)
        return y if residual is None else residual + y

    def columns_product(self, padded: TensorValue) -> TensorValue:
        """The convolution of the padded frames (batch, time + 2, in) as one matmul of their taps' columns."""
        w = self.weights.get(f"{self.name}.weight")  # (out, in, 3)
        out_channels, in_channels, width = (int(d) for d in w.shape)
        batch, padded_time, _ = padded.shape
        n_time = int(padded_time) - 2
        if self.stride == 1:
            taps = [padded[:, k : k + n_time, :] for k in range(width)]
            n_out = n_time
        else:  # stride 2: pairs of frames side by side, then the third tap from the next pair
            n_out = n_time // 2
            pairs = ops.reshape(padded[:, 0:n_time, :], [batch, n_out, 2 * in_channels])
            next_pairs = ops.reshape(padded[:, 2 : n_time + 2, :], [batch, n_out, 2 * in_channels])
            taps = [pairs, next_pairs[:, :, 0:in_channels]]
        columns = ops.concat(taps, axis=2)  # (batch, n_out, width * in), tap-major
        kernel = ops.reshape(ops.permute(w, [2, 1, 0]), [width * in_channels, out_channels])
        return self.product(columns, kernel) + self.weights.get(f"{self.name}.bias")


class AudioEncoder:
    """whisper's ``AudioEncoder``: conv1, conv2, positional embedding, blocks, ``ln_post``;
    ``product`` multiplies its matrices (:class:`Product`); ``kernels``: CPU kernels (the graph must
    load ``kernels/``) for the blocks' self-attention (:func:`encoder_attention`) and, where the registry
    holds its matrices as float32 panels, every product (:func:`linear_float32_panels`)."""

    def __init__(
        self, weights: WeightSource, dims: ModelDimensions, product: Product = MATMUL, kernels: bool = False
    ) -> None:
        self.weights = weights
        wide = {"product": product, "float32_panels": kernels}
        self.conv1 = Conv1d(weights, "encoder.conv1", stride=1, **wide)
        self.conv2 = Conv1d(weights, "encoder.conv2", stride=2, **wide)
        self.blocks = [
            ResidualAttentionBlock(
                weights,
                f"encoder.blocks.{i}",
                dims.n_audio_head,
                cross_attention=False,
                product=product,
                kernels=kernels,
                float32_panels=kernels,
            )
            for i in range(dims.n_audio_layer)
        ]
        self.ln_post = LayerNorm(weights, "encoder.ln_post")

    def __call__(self, mel: TensorValue) -> TensorValue:
        """(batch, n_mels, 2 * n_audio_ctx) -> (batch, n_audio_ctx, n_audio_state)."""
        x = ops.permute(mel, [0, 2, 1])
        x = self.conv1(x, gelu=True)
        x = self.conv2(x, gelu=True, residual=self.weights.get("encoder.positional_embedding"))
        for block in self.blocks:
            x = block(x)
        return self.ln_post(x)


class TextDecoder:
    """whisper's ``TextDecoder`` for one pass of new tokens against a KV cache.

    ``quantized=True`` builds the *draft* decoder: the same blocks with 4-bit copies of their
    matrices (the embeddings, layer norms, biases and cross-attention K/V stay float32).
    ``rowwise=True`` builds the GPU's *decoder step* (:meth:`step`): one token per row at a
    position held on the device, every product a multiply-and-sum (:func:`rowwise_product`).
    Otherwise ``product`` multiplies its matrices (:class:`Product`).  ``panels``: the blocks'
    products and the logits read float16 panels of their matrices (:func:`matmul_float16_panels`).
    ``kernels``: the attention runs through CPU kernels, over the cache through :func:`cached_attention`
    and over the audio through :func:`few_query_attention`.
    """

    def __init__(
        self,
        weights: WeightSource,
        dims: ModelDimensions,
        quantized: bool = False,
        rowwise: bool = False,
        product: Product = MATMUL,
        panels: bool = False,
        kernels: bool = False,
    ) -> None:
        self.weights = weights
        self.product = product
        self.n_vocab = dims.n_vocab
        self.panels = panels
        self.blocks = [
            ResidualAttentionBlock(
                weights,
                f"decoder.blocks.{i}",
                dims.n_text_head,
                cross_attention=True,
                quantized=quantized,
                rowwise=rowwise,
                product=product,
                panels=panels,
                kernels=kernels,
            )
            for i in range(dims.n_text_layer)
        ]
        self.ln = LayerNorm(weights, "decoder.ln")

    def cross_kv(self, audio_features: TensorValue) -> list[TensorValue]:
        """Cross-attention keys and values of every block, [k_0, v_0, k_1, v_1, ...], in head layout:
        k (batch, head, head_state, n_audio_ctx), v (batch, head, n_audio_ctx, head_state); for the
        draft decoder k (batch, head, n_audio_ctx, head_state), v (batch, head, head_state, n_audio_ctx)."""
        out: list[TensorValue] = []
        for block in self.blocks:
            out += list(block.cross_attn.key_value(audio_features))
        return out

    def __call__(
        self,
        tokens: TensorValue,
        span: Span,
        caches: Sequence[KVCache],
        cross_kv: Sequence[TensorValue],
        mask: TensorValue | None = None,
        rows: TensorValue | None = None,
    ) -> TensorValue:
        """Final-norm hidden states of the new tokens (or of the rows ``rows`` of them).

        tokens (batch, n_new) int64, placed at positions ``span`` (end - start == n_new);
        caches: one :class:`KVCache` per block, written in place; cross_kv as
        [k_0, v_0, k_1, v_1, ...] from :meth:`cross_kv`; mask (n_new, n_total) additive, None
        for a single new token; rows (n_rows,) int64 indices into the new tokens.
        Returns hidden (batch, n_rows, n_text_state).  The logits are :meth:`logits` of the
        hidden states (whisper's ``TextDecoder.forward`` does both at once).
        """
        x = self.embed(tokens, span)
        for i, block in enumerate(self.blocks):
            x = block.step(x, caches[i], cross_kv[2 * i], cross_kv[2 * i + 1], span, mask)
        if rows is not None:
            x = ops.gather(x, rows, axis=1)
        return self.ln(x)

    def step(
        self, tokens: TensorValue, position: TensorValue, caches: Sequence[KVCache], cross_kv: Sequence[TensorValue]
    ) -> TensorValue:
        """Logits (batch, 1, n_vocab) of one new token per row, tokens (batch, 1) at ``position``
        ((1,) int64 on the device; every row of a step is at the same position).

        caches: one :class:`KVCache` per block (the new keys and values are written at
        ``position``); cross_kv [k_0, v_t_0, ...] in the one-query layouts of :meth:`cross_kv`.
        All shapes but the batch are fixed, so the step can be captured as a device graph and
        replayed (see :mod:`.inference`)."""
        positional = ops.gather(self.weights.get("decoder.positional_embedding"), position, axis=0)  # (1, state)
        x = self.embedding_rows(tokens) + positional
        for i, block in enumerate(self.blocks):
            x = block.at_position(x, caches[i], cross_kv[2 * i], cross_kv[2 * i + 1], position)
        return rowwise_product(self.ln(x), self.weights.get(TOKEN_EMBEDDING))

    def embed(self, tokens: TensorValue, span: Span) -> TensorValue:
        """Token + positional embedding of tokens (batch, n_new) placed at positions ``span``."""
        positional = ops.slice_tensor(
            self.weights.get("decoder.positional_embedding"),
            [(slice(span.start, span.end), tokens.shape[1]), slice(None)],
        )
        return self.embedding_rows(tokens) + positional

    def embedding_rows(self, tokens: TensorValue) -> TensorValue:
        """float32 rows of the token embedding for int64 ``tokens`` of any shape: shape + (state,).
        (The registry holds the embedding transposed, :data:`TOKEN_EMBEDDING_T`.)"""
        columns = ops.gather(self.weights.get(TOKEN_EMBEDDING_T), tokens, axis=1)  # (state, *tokens.shape)
        rank = len(tokens.shape)
        return as_float32(ops.permute(columns, [*range(1, rank + 1), 0]))

    def logits(self, hidden: TensorValue) -> TensorValue:
        """(batch, n_rows, state) -> (batch, n_rows, n_vocab): against the token embedding."""
        if self.panels:
            return matmul_float16_panels(hidden, self.weights.get(panels_name(TOKEN_EMBEDDING)), self.n_vocab)
        return matmul(hidden, self.weights.get(TOKEN_EMBEDDING_T), self.product)

    def draft(self, hidden: TensorValue, timestamp_begin: int, n_vocab: int) -> tuple[TensorValue, TensorValue]:
        """Guess the token whisper will pick after each row: (guess, margin), each (batch, n_rows).

        Scores against the 4-bit copy of the token embedding (:data:`DRAFT_EMBEDDING`),
        a seventh of the bytes of :meth:`logits`, and follows the rule of whisper's
        ``ApplyTimestampRules`` that decides most choices between text and time: a
        timestamp is picked when the timestamps' total probability beats every text
        token.  The two best text tokens are then scored again against their float32
        embedding rows (two rows: nothing to read), which undoes most of the 4-bit
        rounding's wrong picks.  ``margin`` (in logits) is how far the guess is ahead of
        the runner-up: small margins are where a guess may differ from the float32 choice.
        Everything after the 4-bit scores is one op (``kernels/draft_choice.mojo``; the graph must
        load that package); as MAX ops it would be about thirty, each dispatched on its own.
        """
        scores = ops.qmatmul(QuantizationEncoding.Q4_0, None, hidden, self.weights.get(DRAFT_EMBEDDING))
        batch, n_rows, _ = hidden.shape
        out_types = [TensorType(dtype, [batch, n_rows], hidden.device) for dtype in (DType.int64, DType.float32)]
        values = [scores, hidden, self.weights.get(TOKEN_EMBEDDING_T)]
        parameters = {"timestamp_begin": timestamp_begin, "n_vocab": n_vocab}
        guess, margin = ops.custom("draft_choice", hidden.device, values, out_types, parameters=parameters)
        return guess.tensor, margin.tensor
