"""The float32 decoder's self-attention over its cache through ``kernels/cached_attention.mojo``.

``layers.cached_attention`` takes a pass's new query, key and value projections, stores the keys and
values in the cache buffers at the pass's positions and attends over every held position under
whisper's causal mask, reading the cache in place. Checked against float64 attention (with the same
mask) for the passes a decoder runs: a prompt from position 0 (one token, and 225), a burst of 17 after
200 held positions, a beam step of one token in each of 5 rows, two rows whose held positions end in a
partial vector, and tokens that reach the cache's last position; and for what it writes (the new
positions only). Each query's scores are drawn large enough that the softmax is far from uniform, so a
mask that is not applied changes the result.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.max

N_HEAD, HEAD, N_CTX = 6, 64, 448
BOUND = 1e-5


@pytest.fixture(scope="module")
def cached_graph(max_report: Any) -> Any:
    pytest.importorskip("max.engine")
    from max.driver import CPU
    from max.dtype import DType
    from max.engine import InferenceSession
    from max.graph import BufferType, DeviceRef, Graph, TensorType

    from max_whisper.backends.whisper_max.graphs import KERNELS, SCALAR
    from max_whisper.backends.whisper_max.layers import KVCache, cached_attention

    device = DeviceRef.CPU()
    rows = TensorType(DType.float32, ["batch", "n_new", N_HEAD * HEAD], device)
    mask = TensorType(DType.float32, ["n_new", "n_total"], device)
    cache = [
        BufferType(DType.float32, ["batch", N_HEAD, N_CTX, HEAD], device),
        BufferType(DType.float32, ["batch", N_HEAD, HEAD, N_CTX], device),
    ]
    types = [rows, rows, rows, SCALAR, mask, *cache]
    with Graph("cached_attention", input_types=types, custom_extensions=[KERNELS]) as g:
        q, k, v, start, additive = (value.tensor for value in g.inputs[:5])
        g.output(cached_attention(q, k, v, start, additive, KVCache(g.inputs[5].buffer, g.inputs[6].buffer)))
    started = time.perf_counter()
    model = InferenceSession(devices=[CPU()]).load(g)
    max_report.record_time("cached attention graph: compile", time.perf_counter() - started)
    return model


@pytest.mark.parametrize(
    ("batch", "start", "n_new"), [(1, 0, 1), (1, 0, 225), (1, 200, 17), (5, 219, 1), (2, 30, 3), (1, 440, 8)]
)
def test_new_tokens_are_stored_and_attend_causally(
    cached_graph: Any, max_report: Any, batch: int, start: int, n_new: int
) -> None:
    from max.driver import Buffer

    rng = np.random.default_rng(batch * 100_000 + start * 1000 + n_new)
    q = (3 * rng.standard_normal((batch, n_new, N_HEAD * HEAD))).astype(np.float32)
    k, v = (rng.standard_normal((batch, n_new, N_HEAD * HEAD)).astype(np.float32) for _ in range(2))
    keys = rng.standard_normal((batch, N_HEAD, N_CTX, HEAD)).astype(np.float32)
    values_t = rng.standard_normal((batch, N_HEAD, HEAD, N_CTX)).astype(np.float32)
    n_total = start + n_new
    mask = np.triu(np.full((n_new, n_total), -np.inf, dtype=np.float32), k=start + 1)  # as MaxInference._pass
    buffers = [Buffer.from_numpy(keys.copy()), Buffer.from_numpy(values_t.copy())]
    inputs = [Buffer.from_numpy(a) for a in (q, k, v, np.array(start, dtype=np.int64), mask)]
    y = cached_graph.execute(*inputs, *buffers)[0].to_numpy()
    assert y.shape == q.shape and y.dtype == np.float32

    new = slice(start, n_total)
    keys[:, :, new] = k.reshape(batch, n_new, N_HEAD, HEAD).transpose(0, 2, 1, 3)
    values_t[:, :, :, new] = v.reshape(batch, n_new, N_HEAD, HEAD).transpose(0, 2, 3, 1)
    assert np.array_equal(buffers[0].to_numpy(), keys), "only the new keys are written, at their positions"
    assert np.array_equal(buffers[1].to_numpy(), values_t), "only the new values are written, at their positions"

    heads = q.reshape(batch, n_new, N_HEAD, HEAD).transpose(0, 2, 1, 3).astype(np.float64)
    held_k = keys[:, :, :n_total].astype(np.float64)
    held_v = values_t[:, :, :, :n_total].transpose(0, 1, 3, 2).astype(np.float64)
    scores = heads @ held_k.transpose(0, 1, 3, 2) / np.sqrt(HEAD) + mask
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    exact = (p @ held_v).transpose(0, 2, 1, 3).reshape(q.shape)
    error = float(np.abs(y - exact).max() / np.abs(values_t).max())
    max_report.record_parity("decoder self-attention over the cache vs float64 (relative to max |v|)", error, BOUND)
    assert error < BOUND, f"{error:.2e}"


def test_a_pass_past_the_cache_is_refused(cached_graph: Any) -> None:
    """Tokens that would be stored past the cache's last position raise instead of writing outside it."""
    from max.driver import Buffer

    q = np.zeros((1, 9, N_HEAD * HEAD), dtype=np.float32)
    mask = np.zeros((9, 449), dtype=np.float32)
    cache = [np.zeros((1, N_HEAD, N_CTX, HEAD), np.float32), np.zeros((1, N_HEAD, HEAD, N_CTX), np.float32)]
    inputs = [Buffer.from_numpy(a) for a in (q, q, q, np.array(440, dtype=np.int64), mask, *cache)]
    with pytest.raises(Exception, match="cache of at most 448"):
        cached_graph.execute(*inputs)
