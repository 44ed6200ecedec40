"""The CPU plan's cross-attention through the few-query kernel (``kernels/few_query_attention.mojo``).

A decoder pass has a few new tokens against the audio's keys; the kernel keeps a running softmax over
chunks of 256 keys, so it is checked against float64 attention with key counts below one vector, one
that ends in a partial vector, one that spans several chunks and ends mid-chunk (the audio's 1500),
with query counts that fill the kernel's five-row block or end in a partial one (whose missing rows
it skips), and with several audio rows. From 64 queries (a prompt's pass) the op scores blocks of one
query a vector lane instead (``kernels/lanes_attention.mojo``): checked at exactly 64, at a prompt's 225
(a last block of one query), with two audio rows and a partial last block, and with fewer keys than one
group of 16. Scores are drawn large enough that the running maximum moves from chunk to chunk.
The end-to-end tests run the session's tiny.en backend, whose float32 decoder attends through it.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.max

N_HEAD, HEAD = 6, 64


@pytest.fixture(scope="module")
def attention_graph(max_report: Any) -> Any:
    pytest.importorskip("max.engine")
    from max.driver import CPU
    from max.dtype import DType
    from max.engine import InferenceSession
    from max.graph import DeviceRef, Graph, TensorType

    from max_whisper.backends.whisper_max.graphs import KERNELS
    from max_whisper.backends.whisper_max.layers import few_query_attention

    device = DeviceRef.CPU()
    types = [
        TensorType(DType.float32, ["audio", "queries", N_HEAD * HEAD], device),
        TensorType(DType.float32, ["audio", N_HEAD, HEAD, "keys"], device),
        TensorType(DType.float32, ["audio", N_HEAD, "keys", HEAD], device),
    ]
    with Graph("few_query_attention", input_types=types, custom_extensions=[KERNELS]) as graph:
        graph.output(few_query_attention(*(value.tensor for value in graph.inputs)))
    start = time.perf_counter()
    model = InferenceSession(devices=[CPU()]).load(graph)
    max_report.record_time("few-query attention graph: compile", time.perf_counter() - start)
    return model


@pytest.mark.parametrize(
    ("n_audio", "n_query", "n_key"),
    [
        (1, 1, 5),
        (1, 5, 37),
        (1, 5, 1500),
        (1, 17, 1500),
        (2, 3, 700),
        (1, 12, 256),
        (1, 64, 1500),
        (1, 225, 1500),
        (2, 70, 300),
        (1, 100, 9),
    ],
)
def test_the_kernel_matches_float64_attention(
    attention_graph: Any, max_report: Any, n_audio: int, n_query: int, n_key: int
) -> None:
    from max.driver import Buffer

    rng = np.random.default_rng(n_audio * 10_000 + n_query * 100 + n_key)
    q = (3 * rng.standard_normal((n_audio, n_query, N_HEAD * HEAD))).astype(np.float32)
    k = rng.standard_normal((n_audio, N_HEAD, n_key, HEAD)).astype(np.float32)
    v = rng.standard_normal((n_audio, N_HEAD, n_key, HEAD)).astype(np.float32)
    k_t = np.ascontiguousarray(k.transpose(0, 1, 3, 2))
    y = attention_graph.execute(*(Buffer.from_numpy(a) for a in (q, k_t, v)))[0].to_numpy()
    assert y.shape == q.shape and y.dtype == np.float32

    heads = q.reshape(n_audio, n_query, N_HEAD, HEAD).transpose(0, 2, 1, 3).astype(np.float64)
    scores = heads @ k.transpose(0, 1, 3, 2).astype(np.float64) / np.sqrt(HEAD)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    exact = (p @ v.astype(np.float64)).transpose(0, 2, 1, 3).reshape(q.shape)
    error = float(np.abs(y - exact).max() / np.abs(v).max())
    bound = 1e-5
    max_report.record_parity("few-query attention vs float64 (relative to max |v|)", error, bound)
    assert error < bound, f"{error:.2e}"
