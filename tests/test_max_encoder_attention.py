"""The encoder's self-attention through ``kernels/encoder_attention.mojo``, against float64 attention.

``layers.encoder_attention`` hands the kernel the projections (batch, ctx, state) as they are, each head
in 64 adjacent columns, read in place by the op. Shapes cover a single frame, a block of queries with one
left over, a chunk of keys with a partial one after it (keys scored 16 at a time, then one by one), two
rows, the encoder's 1500 frames, and 20 heads (large-v3's). In the "late peak" case the largest scores lie
in the second chunk of keys, so the running softmax must rescale what the first chunk added.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.max

HEAD = 64
BOUND = 1e-5
HEAD_COUNTS = (6, 20)


def attention64(q: np.ndarray, k: np.ndarray, v: np.ndarray, n_head: int) -> np.ndarray:
    """softmax(q k^T / 8) v per head in float64, for q, k, v (batch, ctx, state)."""

    def heads(x: np.ndarray) -> np.ndarray:
        return x.reshape(x.shape[0], x.shape[1], n_head, HEAD).transpose(0, 2, 1, 3).astype(np.float64)

    scores = heads(q) @ heads(k).transpose(0, 1, 3, 2) / np.sqrt(HEAD)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return (p @ heads(v)).transpose(0, 2, 1, 3).reshape(q.shape)


@pytest.fixture(scope="module")
def encoder_attention_graphs(max_report: Any) -> dict[int, Any]:
    pytest.importorskip("max.engine")
    from max.driver import CPU
    from max.dtype import DType
    from max.engine import InferenceSession
    from max.graph import DeviceRef, Graph, TensorType

    from max_whisper.backends.whisper_max.graphs import KERNELS
    from max_whisper.backends.whisper_max.layers import encoder_attention

    session = InferenceSession(devices=[CPU()])
    models = {}
    start = time.perf_counter()
    for n_head in HEAD_COUNTS:
        rows = TensorType(DType.float32, ["batch", "ctx", n_head * HEAD], DeviceRef.CPU())
        with Graph(f"encoder_attention_{n_head}", input_types=[rows] * 3, custom_extensions=[KERNELS]) as graph:
            q, k, v = (value.tensor for value in graph.inputs)
            graph.output(encoder_attention(q, k, v, n_head))
        models[n_head] = session.load(graph)
    max_report.record_time("encoder attention graphs: compile", time.perf_counter() - start)
    return models


@pytest.mark.parametrize(
    ("n_head", "batch", "ctx", "case"),
    [
        (6, 1, 1, "random"),
        (6, 1, 17, "random"),
        (6, 2, 300, "random"),
        (6, 1, 300, "late peak"),
        (6, 1, 1500, "random"),
        (20, 1, 1500, "random"),
    ],
)
def test_encoder_attention_matches_float64(
    encoder_attention_graphs: dict[int, Any], max_report: Any, n_head: int, batch: int, ctx: int, case: str
) -> None:
    from max.driver import Buffer

    rng = np.random.default_rng(n_head * 100_000 + batch * 10_000 + ctx)
    state = n_head * HEAD
    q, k, v = (rng.standard_normal((batch, ctx, state)).astype(np.float32) for _ in range(3))
    q *= 2  # scores far from uniform
    if case == "late peak":  # key 280 (in the second chunk of 256) lines up with every query
        k[:, 280] = 4 * np.sign(q.mean(axis=1))
    y = encoder_attention_graphs[n_head].execute(*(Buffer.from_numpy(a) for a in (q, k, v)))[0].to_numpy()
    assert y.shape == q.shape and y.dtype == np.float32
    exact = attention64(q, k, v, n_head)
    error = float(np.abs(y - exact).max() / np.abs(v).max())
    max_report.record_parity("encoder attention vs float64 (relative to max |v|)", error, BOUND)
    assert error < BOUND, f"{case}, {n_head} heads, ({batch}, {ctx}): {error:.2e}"
