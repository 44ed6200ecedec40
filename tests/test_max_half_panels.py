"""The CPU plan's logits against float16 panels of the token embedding (``kernels/half_panels.mojo``).

Every value of openai-whisper's checkpoints (and of the embedded tiny.en) is a float16 number, so a
float16 copy of the embedding is the float32 matrix, in half the bytes. Checked here: the panel layout
(column n at ``panels[n // 16, :, n % 16]``), that the plan takes the panels only where the copy is
exact, and the custom op itself against float64 on seeded inputs, with row counts that fill the
kernel's five-row register block, leave a remainder, and a width whose last panel is partial. The
end-to-end tests (``test_max_e2e.py``, ``test_max_compile.py``) run the session's tiny.en backend,
which reads the panels: its tokens are compared with the cpu backend's in every decoding mode.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.max

K = 384
N = 1003  # 62 full panels and a last one of 11 columns


def float16_valued(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float16).astype(np.float32)


def test_panels_hold_each_column_of_the_transposed_embedding() -> None:
    from max_whisper.backends.whisper_max.weights import PANEL_WIDTH, float16_copy, float16_panels

    embedding = float16_valued(np.random.default_rng(0), (N, K))  # (n_vocab, state), as whisper holds it
    half = float16_copy(embedding)
    assert half is not None and half.dtype == torch.float16
    panels = float16_panels(half)
    assert panels.shape == (-(-N // PANEL_WIDTH), K, PANEL_WIDTH) and panels.dtype == np.float16
    n = np.arange(N)
    np.testing.assert_array_equal(panels[n // PANEL_WIDTH, :, n % PANEL_WIDTH].astype(np.float32), embedding)
    assert not panels[-1, :, N % PANEL_WIDTH :].any()  # the padding columns are zeros


def test_a_float16_copy_is_made_only_when_it_is_exact() -> None:
    from max_whisper.backends.whisper_max.weights import float16_copy

    weight = float16_valued(np.random.default_rng(1), (64, 32))
    assert torch.equal(float16_copy(weight).float(), torch.from_numpy(weight))
    weight[3, 7] += 1e-4  # one value between two float16 numbers
    assert float16_copy(weight) is None


def test_the_cpu_plan_reads_panels_only_where_they_are_exact(checkpoint: dict) -> None:
    from max_whisper.backends.whisper_max.graphs import GraphPlan, plan_arrays, plan_for_checkpoint
    from max_whisper.backends.whisper_max.weights import EMBEDDING_PANELS, TOKEN_EMBEDDING

    state = checkpoint["model_state_dict"]
    cpu = plan_for_checkpoint(GraphPlan("cpu"), state)
    assert cpu.embedding == "float16"  # the embedded tiny.en: converted from float16
    assert EMBEDDING_PANELS in plan_arrays(state, cpu)
    assert EMBEDDING_PANELS not in plan_arrays(state, GraphPlan("cpu"))
    assert plan_for_checkpoint(GraphPlan("gpu", runs_on="cpu"), state).embedding == "float32"

    perturbed = dict(state)
    embedding = state[TOKEN_EMBEDDING].clone()
    embedding[100, 5] += 1e-5
    perturbed[TOKEN_EMBEDDING] = embedding
    assert plan_for_checkpoint(GraphPlan("cpu"), perturbed).embedding == "float32"
    with pytest.raises(ValueError, match="not float16"):
        plan_arrays(perturbed, GraphPlan("cpu", embedding="float16"))
    with pytest.raises(ValueError, match="cpu plan"):
        GraphPlan("gpu", embedding="float16")


@pytest.fixture(scope="module")
def panels_graph(max_report: Any) -> Any:
    pytest.importorskip("max.engine")
    from max.driver import CPU
    from max.dtype import DType
    from max.engine import InferenceSession
    from max.graph import DeviceRef, Graph, TensorType

    from max_whisper.backends.whisper_max.graphs import KERNELS
    from max_whisper.backends.whisper_max.layers import matmul_float16_panels
    from max_whisper.backends.whisper_max.weights import PANEL_WIDTH

    device = DeviceRef.CPU()
    types = [
        TensorType(DType.float32, ["batch", "rows", K], device),
        TensorType(DType.float16, [-(-N // PANEL_WIDTH), K, PANEL_WIDTH], device),
    ]
    with Graph("float16_panels", input_types=types, custom_extensions=[KERNELS]) as graph:
        x, panels = (value.tensor for value in graph.inputs)
        graph.output(matmul_float16_panels(x, panels, N))
    start = time.perf_counter()
    model = InferenceSession(devices=[CPU()]).load(graph)
    max_report.record_time("float16 panels graph: compile", time.perf_counter() - start)
    return model


@pytest.mark.parametrize(("batch", "rows"), [(1, 1), (5, 1), (1, 7), (1, 17), (3, 4)])
def test_the_kernel_multiplies_float32_rows_by_float16_panels(
    panels_graph: Any, max_report: Any, batch: int, rows: int
) -> None:
    """Within a few float32 roundings of float64 (a float32 matmul's own error), every row and column,
    the last partial panel's included."""
    from max.driver import Buffer

    from max_whisper.backends.whisper_max.weights import float16_copy, float16_panels

    rng = np.random.default_rng(batch * 100 + rows)
    embedding = float16_valued(rng, (N, K))
    x = rng.standard_normal((batch, rows, K)).astype(np.float32)
    panels = float16_panels(float16_copy(embedding))
    y = panels_graph.execute(Buffer.from_numpy(x), Buffer.from_numpy(panels))[0].to_numpy()
    assert y.shape == (batch, rows, N) and y.dtype == np.float32
    exact = x.astype(np.float64) @ embedding.T.astype(np.float64)
    scale = np.abs(x).astype(np.float64) @ np.abs(embedding.T).astype(np.float64)  # the sum's magnitude bound
    error = float((np.abs(y - exact) / scale).max())
    float32_error = float((np.abs(x @ embedding.T - exact) / scale).max())
    bound = 2e-7
    max_report.record_parity("float16 panels vs float64 (relative to |x||w|)", error, bound)
    assert error < bound, f"{error:.2e} (numpy's float32 matmul: {float32_error:.2e})"
