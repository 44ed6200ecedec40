"""Whisper as MAX Graph builders, module for module.

The classes here mirror openai-whisper's ``whisper/model.py`` (``AudioEncoder``,
``TextDecoder``, ``ResidualAttentionBlock``, ``MultiHeadAttention``, ``Linear``,
``LayerNorm``) and keep its attribute names (``encoder.blocks[i].attn``,
``cross_attn``, ``mlp``, ``ln_post`` ...).  They do not hold numbers: called
inside a ``max.graph.Graph`` they add the operations of their PyTorch twin to
that graph, reading weights by their openai-whisper ``state_dict`` name from a
:class:`WeightSource`.  Weights enter each graph as named ``Weight`` values
bound at load time through a weights registry, never as baked-in constants, so
MAX's compile cache serves every later run.

Four graphs are built from these pieces (see :mod:`max_whisper.whisper_max`):
the encoder, the cross-attention K/V projection, the decoder step with its
self-attention KV cache, and the cache reorder used by beam search.
"""

from __future__ import annotations

import math
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from max.dtype import DType
from max.graph import DeviceRef, Graph, TensorValue, Weight, ops
from max.graph.quantization import QuantizationEncoding
from whisper.model import ModelDimensions

from .max_weights import DRAFT_EMBEDDING

#: openai-whisper's LayerNorm epsilon (torch's default).
LN_EPS = 1e-5


class WeightSource:
    """Hands out graph values for openai-whisper ``state_dict`` names.

    ``arrays`` is the weights registry (name -> float32 numpy array) that is
    bound to every compiled graph; :meth:`get` adds the named weight to the
    graph under construction, once per graph.
    """

    def __init__(self, arrays: Mapping[str, np.ndarray], device: DeviceRef) -> None:
        self.arrays = dict(arrays)
        self.device = device
        self._graph_weights: Dict[Tuple[int, str], TensorValue] = {}

    def get(self, name: str) -> TensorValue:
        graph = Graph.current
        key = (id(graph), name)
        if key not in self._graph_weights:
            array = self.arrays[name]
            weight = Weight(name, DType.from_numpy(array.dtype), array.shape, self.device)
            self._graph_weights[key] = graph.add_weight(weight)
        return self._graph_weights[key]

    def registry(self, names: Optional[Sequence[str]] = None) -> Dict[str, np.ndarray]:
        """The arrays to bind when loading a graph (all of them by default)."""
        if names is None:
            return self.arrays
        return {name: self.arrays[name] for name in names}


class Linear:
    """``y = x W^T + b`` (openai-whisper ``Linear``)."""

    def __init__(self, weights: WeightSource, name: str, bias: bool = True) -> None:
        self.weights, self.name, self.bias = weights, name, bias

    def __call__(self, x: TensorValue) -> TensorValue:
        w = self.weights.get(f"{self.name}.weight")
        y = x @ ops.transpose(w, 0, 1)
        if self.bias:
            y = y + self.weights.get(f"{self.name}.bias")
        return y


class LayerNorm:
    def __init__(self, weights: WeightSource, name: str) -> None:
        self.weights, self.name = weights, name

    def __call__(self, x: TensorValue) -> TensorValue:
        return ops.layer_norm(
            x, self.weights.get(f"{self.name}.weight"), self.weights.get(f"{self.name}.bias"), LN_EPS
        )


class MLP:
    """``mlp.0`` (Linear) -> GELU (exact, erf) -> ``mlp.2`` (Linear)."""

    def __init__(self, weights: WeightSource, name: str) -> None:
        self.fc1 = Linear(weights, f"{name}.0")
        self.fc2 = Linear(weights, f"{name}.2")

    def __call__(self, x: TensorValue) -> TensorValue:
        return self.fc2(ops.gelu(self.fc1(x)))


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


def attend(q: TensorValue, k_t: TensorValue, v: TensorValue, n_head: int, mask: Optional[TensorValue] = None) -> TensorValue:
    """softmax(q k^T / sqrt(d_head) + mask) v (whisper's ``qkv_attention``).

    q (batch, ctx, state); k_t (batch, head, head_state, n_keys) from
    :func:`keys_transposed`; v (batch, head, n_keys, head_state) from :func:`split_heads`.
    Caches are kept in these head layouts so a decoder step permutes only its new rows.
    """
    head_state = int(q.shape[-1]) // n_head
    scores = (split_heads(q, n_head) @ k_t) * (1.0 / math.sqrt(head_state))
    if mask is not None:  # (n_new, n_past + n_new): the same length at run time as the keys
        scores = scores + ops.rebind(mask, scores.shape[-2:])
    return merge_heads(ops.softmax(scores, axis=-1) @ v)


class MultiHeadAttention:
    """whisper's ``MultiHeadAttention``: ``query``, ``key`` (no bias), ``value``, ``out``."""

    def __init__(self, weights: WeightSource, name: str, n_head: int) -> None:
        self.n_head = n_head
        self.query = Linear(weights, f"{name}.query")
        self.key = Linear(weights, f"{name}.key", bias=False)
        self.value = Linear(weights, f"{name}.value")
        self.out = Linear(weights, f"{name}.out")

    def __call__(self, x: TensorValue, mask: Optional[TensorValue] = None) -> TensorValue:
        """Self-attention without a cache (the encoder's)."""
        k_t, v = self.key_value(x)
        return self.out(attend(self.query(x), k_t, v, self.n_head, mask))

    def key_value(self, x: TensorValue) -> Tuple[TensorValue, TensorValue]:
        """Keys and values of ``x`` in the head layouts :func:`attend` takes."""
        return keys_transposed(self.key(x), self.n_head), split_heads(self.value(x), self.n_head)

    def cached(
        self, x: TensorValue, k_past: TensorValue, v_past: TensorValue, mask: TensorValue
    ) -> Tuple[TensorValue, TensorValue, TensorValue]:
        """Self-attention of new tokens over cached + new keys; returns (out, k_all, v_all).

        k_past (batch, head, head_state, n_past), v_past (batch, head, n_past, head_state).
        """
        k_new, v_new = self.key_value(x)
        k = ops.concat([k_past, k_new], axis=3)
        v = ops.concat([v_past, v_new], axis=2)
        return self.out(attend(self.query(x), k, v, self.n_head, mask)), k, v

    def cross(self, x: TensorValue, k_audio: TensorValue, v_audio: TensorValue) -> TensorValue:
        """Cross-attention over the audio keys/values (from :meth:`key_value`, once per window)."""
        return self.out(attend(self.query(x), k_audio, v_audio, self.n_head))


class ResidualAttentionBlock:
    def __init__(self, weights: WeightSource, name: str, n_head: int, cross_attention: bool) -> None:
        self.attn = MultiHeadAttention(weights, f"{name}.attn", n_head)
        self.attn_ln = LayerNorm(weights, f"{name}.attn_ln")
        self.cross_attn = MultiHeadAttention(weights, f"{name}.cross_attn", n_head) if cross_attention else None
        self.cross_attn_ln = LayerNorm(weights, f"{name}.cross_attn_ln") if cross_attention else None
        self.mlp = MLP(weights, f"{name}.mlp")
        self.mlp_ln = LayerNorm(weights, f"{name}.mlp_ln")

    def __call__(self, x: TensorValue) -> TensorValue:
        """The encoder's block: self-attention and MLP, each pre-norm with a residual."""
        x = x + self.attn(self.attn_ln(x))
        return x + self.mlp(self.mlp_ln(x))

    def step(
        self,
        x: TensorValue,
        k_past: TensorValue,
        v_past: TensorValue,
        k_audio: TensorValue,
        v_audio: TensorValue,
        mask: TensorValue,
    ) -> Tuple[TensorValue, TensorValue, TensorValue]:
        """The decoder's block for new tokens; returns (x, k_all, v_all) of the self-attention cache."""
        attended, k_all, v_all = self.attn.cached(self.attn_ln(x), k_past, v_past, mask)
        x = x + attended
        x = x + self.cross_attn.cross(self.cross_attn_ln(x), k_audio, v_audio)
        return x + self.mlp(self.mlp_ln(x)), k_all, v_all


class Conv1d:
    """A 1-D convolution of kernel 3, padding 1, as shifted slices and one matmul.

    Works on (batch, time, channels) values; ``stride`` 1 or 2 (whisper's conv1, conv2).
    """

    def __init__(self, weights: WeightSource, name: str, stride: int) -> None:
        self.weights, self.name, self.stride = weights, name, stride

    def __call__(self, x: TensorValue) -> TensorValue:
        w = self.weights.get(f"{self.name}.weight")  # (out, in, 3)
        out_channels, in_channels, width = (int(d) for d in w.shape)
        batch, time, _ = x.shape
        n_time = int(time)
        zeros = ops.broadcast_to(
            ops.constant(0.0, DType.float32, self.weights.device), [batch, 1, in_channels]
        )
        padded = ops.concat([zeros, x, zeros], axis=1)  # (batch, time + 2, in)
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
        return columns @ kernel + self.weights.get(f"{self.name}.bias")


class AudioEncoder:
    """whisper's ``AudioEncoder``: conv1, conv2, positional embedding, blocks, ``ln_post``."""

    def __init__(self, weights: WeightSource, dims: ModelDimensions) -> None:
        self.weights = weights
        self.conv1 = Conv1d(weights, "encoder.conv1", stride=1)
        self.conv2 = Conv1d(weights, "encoder.conv2", stride=2)
        self.blocks = [
            ResidualAttentionBlock(weights, f"encoder.blocks.{i}", dims.n_audio_head, cross_attention=False)
            for i in range(dims.n_audio_layer)
        ]
        self.ln_post = LayerNorm(weights, "encoder.ln_post")

    def __call__(self, mel: TensorValue) -> TensorValue:
        """(batch, n_mels, 2 * n_audio_ctx) -> (batch, n_audio_ctx, n_audio_state)."""
        x = ops.permute(mel, [0, 2, 1])
        x = ops.gelu(self.conv1(x))
        x = ops.gelu(self.conv2(x))
        x = x + self.weights.get("encoder.positional_embedding")
        for block in self.blocks:
            x = block(x)
        return self.ln_post(x)


class TextDecoder:
    """whisper's ``TextDecoder`` for one step of new tokens against a KV cache."""

    def __init__(self, weights: WeightSource, dims: ModelDimensions) -> None:
        self.weights = weights
        self.blocks = [
            ResidualAttentionBlock(weights, f"decoder.blocks.{i}", dims.n_text_head, cross_attention=True)
            for i in range(dims.n_text_layer)
        ]
        self.ln = LayerNorm(weights, "decoder.ln")

    def cross_kv(self, audio_features: TensorValue) -> List[TensorValue]:
        """Cross-attention keys and values of every block, [k_0, v_0, k_1, v_1, ...], in head layout:
        k (batch, head, head_state, n_audio_ctx), v (batch, head, n_audio_ctx, head_state)."""
        out: List[TensorValue] = []
        for block in self.blocks:
            out += list(block.cross_attn.key_value(audio_features))
        return out

    def __call__(
        self,
        tokens: TensorValue,
        positions: TensorValue,
        mask: TensorValue,
        rows: TensorValue,
        self_kv: Sequence[TensorValue],
        cross_kv: Sequence[TensorValue],
    ) -> Tuple[TensorValue, List[TensorValue]]:
        """Final-norm hidden states of the rows ``rows`` of the new tokens, and the grown cache.

        tokens (batch, n_new) int64; positions (n_new,) int64; mask (n_new, n_past + n_new);
        rows (n_rows,) int64 indices into the new tokens; self_kv / cross_kv as
        [k_0, v_0, k_1, v_1, ...] in the head layouts of :meth:`MultiHeadAttention.key_value`.
        Returns hidden (batch, n_rows, n_text_state) and the self-attention cache grown by
        the new tokens.
        The logits are :meth:`logits` of the hidden states (whisper's ``TextDecoder.forward``
        does both at once; they are split so several steps can share one vocabulary pass).
        """
        embedding = self.weights.get("decoder.token_embedding.weight")  # (n_vocab, state)
        x = ops.gather(embedding, tokens, axis=0)
        x = x + ops.gather(self.weights.get("decoder.positional_embedding"), positions, axis=0)
        new_kv: List[TensorValue] = []
        for i, block in enumerate(self.blocks):
            x, k, v = block.step(x, self_kv[2 * i], self_kv[2 * i + 1], cross_kv[2 * i], cross_kv[2 * i + 1], mask)
            new_kv += [k, v]
        return self.ln(ops.gather(x, rows, axis=1)), new_kv

    def logits(self, hidden: TensorValue) -> TensorValue:
        """(batch, n_rows, state) -> (batch, n_rows, n_vocab): against the token embedding."""
        return hidden @ ops.transpose(self.weights.get("decoder.token_embedding.weight"), 0, 1)

    def draft(self, hidden: TensorValue, timestamp_begin: int, n_vocab: int) -> Tuple[TensorValue, TensorValue]:
        """Guess the token whisper will pick after each row: (guess, margin), each (batch, n_rows).

        Scores against the 4-bit copy of the token embedding (:data:`DRAFT_EMBEDDING`),
        a seventh of the bytes of :meth:`logits`, and follows the rule of whisper's
        ``ApplyTimestampRules`` that decides most choices between text and time: a
        timestamp is picked when the timestamps' total probability beats every text
        token.  ``margin`` (in logits) is how far the guess is ahead of the runner-up:
        small margins are where a 4-bit guess may differ from the float32 choice.
        """
        scores = ops.qmatmul(QuantizationEncoding.Q4_0, None, hidden, self.weights.get(DRAFT_EMBEDDING))
        text, times = scores[:, :, :timestamp_begin], scores[:, :, timestamp_begin:n_vocab]
        best_text = ops.max(text, axis=-1)  # (batch, n_rows, 1)
        # the runner-up as a second max with the best masked out (ops.top_k costs 30x more here)
        floor = ops.constant(-1e30, DType.float32, self.weights.device)
        second_text = ops.max(ops.where(text >= best_text, floor, text), axis=-1)
        best_time = ops.max(times, axis=-1)
        time_mass = best_time + ops.log(ops.sum(ops.exp(times - best_time), axis=-1))
        pick_time = time_mass > best_text
        guess = ops.where(pick_time, ops.argmax(times, axis=-1) + timestamp_begin, ops.argmax(text, axis=-1))
        margin = ops.where(pick_time, time_mass - best_text, best_text - ops.max(second_text, time_mass))
        return ops.squeeze(guess, -1), ops.squeeze(margin, -1)
