"""The draft decoder's attention through ``kernels/draft_attention.mojo``: one op over the cache, one
over the audio.

``draft_self_attention`` takes the new token's query, key and value side by side, stores the key and
value in the cache buffers at the token's position and attends over every position up to it: checked
at the first and last positions of the cache, at one that ends in a partial vector, and with two rows,
for what it writes (only that position), and against float64 attention. ``draft_cross_attention``
reads bfloat16 keys and values: they are drawn bfloat16-exact, so the float64 reference sees the same
numbers. Scores are drawn large enough that the softmax is far from uniform.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.max

N_HEAD, HEAD, N_CTX = 6, 64, 448
BOUND = 1e-5


def attention64(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    """softmax(q k^T / 8) v per head in float64: q (batch, 1, state), k and v (batch, head, keys, 64)."""
    batch = q.shape[0]
    heads = q.reshape(batch, 1, N_HEAD, HEAD).transpose(0, 2, 1, 3).astype(np.float64)
    scores = heads @ k.transpose(0, 1, 3, 2).astype(np.float64) / np.sqrt(HEAD)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return (p @ v.astype(np.float64)).transpose(0, 2, 1, 3).reshape(q.shape)


def bfloat16_exact(x: np.ndarray) -> np.ndarray:
    """float32 values that bfloat16 holds exactly (the low 16 bits cleared)."""
    return (x.astype(np.float32).view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)


@pytest.fixture(scope="module")
def draft_graphs(max_report: Any) -> Any:
    pytest.importorskip("max.engine")
    from max.driver import CPU
    from max.dtype import DType
    from max.engine import InferenceSession
    from max.graph import BufferType, DeviceRef, Graph, TensorType, ops

    from max_whisper.backends.whisper_max.graphs import KERNELS, SCALAR
    from max_whisper.backends.whisper_max.layers import KVCache, draft_cross_attention, draft_self_attention

    device = DeviceRef.CPU()
    row = TensorType(DType.float32, ["batch", 1, N_HEAD * HEAD], device)
    qkv = TensorType(DType.float32, ["batch", 1, 3 * N_HEAD * HEAD], device)
    cache = [
        BufferType(DType.float32, ["batch", N_HEAD, N_CTX, HEAD], device),
        BufferType(DType.float32, ["batch", N_HEAD, HEAD, N_CTX], device),
    ]
    with Graph("draft_self_attention", input_types=[qkv, SCALAR, *cache], custom_extensions=[KERNELS]) as g:
        rows, position = (value.tensor for value in g.inputs[:2])
        g.output(draft_self_attention(rows, position, KVCache(g.inputs[2].buffer, g.inputs[3].buffer)))
    audio = [
        TensorType(DType.float32, ["batch", N_HEAD, "keys", HEAD], device),
        TensorType(DType.float32, ["batch", N_HEAD, HEAD, "keys"], device),
    ]
    with Graph("draft_cross_attention", input_types=[row, *audio], custom_extensions=[KERNELS]) as cross:
        q, k, v_t = (value.tensor for value in cross.inputs)
        cross.output(draft_cross_attention(q, ops.cast(k, DType.bfloat16), ops.cast(v_t, DType.bfloat16)))
    session = InferenceSession(devices=[CPU()])
    start = time.perf_counter()
    models = session.load(g), session.load(cross)
    max_report.record_time("draft attention graphs: compile", time.perf_counter() - start)
    return models


@pytest.mark.parametrize(("batch", "position"), [(1, 0), (1, 36), (1, 200), (2, 447)])
def test_self_attention_stores_the_token_and_matches_float64(
    draft_graphs: Any, max_report: Any, batch: int, position: int
) -> None:
    from max.driver import Buffer

    rng = np.random.default_rng(batch * 1000 + position)
    q, k, v = ((3 * rng.standard_normal((batch, 1, N_HEAD * HEAD))).astype(np.float32) for _ in range(3))
    keys = rng.standard_normal((batch, N_HEAD, N_CTX, HEAD)).astype(np.float32)
    values_t = rng.standard_normal((batch, N_HEAD, HEAD, N_CTX)).astype(np.float32)
    buffers = [Buffer.from_numpy(keys.copy()), Buffer.from_numpy(values_t.copy())]
    inputs = [Buffer.from_numpy(a) for a in (np.concatenate([q, k, v], axis=-1), np.array(position, dtype=np.int64))]
    y = draft_graphs[0].execute(*inputs, *buffers)[0].to_numpy()

    new_k = k.reshape(batch, N_HEAD, HEAD)
    new_v = v.reshape(batch, N_HEAD, HEAD)
    keys[:, :, position] = new_k
    values_t[:, :, :, position] = new_v
    assert np.array_equal(buffers[0].to_numpy(), keys), "only the new key is written, at its position"
    assert np.array_equal(buffers[1].to_numpy(), values_t), "only the new value is written, at its position"

    held = slice(0, position + 1)
    exact = attention64(q, keys[:, :, held], values_t[:, :, :, held].transpose(0, 1, 3, 2))
    error = float(np.abs(y - exact).max() / np.abs(values_t).max())
    max_report.record_parity("draft self-attention vs float64 (relative to max |v|)", error, BOUND)
    assert error < BOUND, f"{error:.2e}"


@pytest.mark.parametrize(("batch", "n_key"), [(1, 1), (1, 37), (1, 1500), (2, 700)])
def test_cross_attention_over_bfloat16_matches_float64(
    draft_graphs: Any, max_report: Any, batch: int, n_key: int
) -> None:
    from max.driver import Buffer

    rng = np.random.default_rng(batch * 10_000 + n_key)
    q = (3 * rng.standard_normal((batch, 1, N_HEAD * HEAD))).astype(np.float32)
    k = bfloat16_exact(rng.standard_normal((batch, N_HEAD, n_key, HEAD)))
    v = bfloat16_exact(rng.standard_normal((batch, N_HEAD, n_key, HEAD)))
    v_t = np.ascontiguousarray(v.transpose(0, 1, 3, 2))
    y = draft_graphs[1].execute(*(Buffer.from_numpy(a) for a in (q, k, v_t)))[0].to_numpy()
    assert y.shape == q.shape and y.dtype == np.float32
    error = float(np.abs(y - attention64(q, k, v)).max() / np.abs(v).max())
    max_report.record_parity("draft cross-attention vs float64 (relative to max |v|)", error, BOUND)
    assert error < BOUND, f"{error:.2e}"
