"""The CPU plan's decoder products against float16 panels of its matrices (``kernels/half_panels.mojo``).

Every value of openai-whisper's checkpoints (and of the embedded tiny.en) is a float16 number, so a
float16 copy of the token embedding and of the blocks' matrices is the float32 model, in half the
bytes. Checked here: the panel layout (column n at ``panels[n // 16, :, n % 16]``), that the plan takes
the panels only where every copy is exact, and the custom op itself against float64 on seeded
inputs, with row counts that fill the kernel's register block (12 rows with AVX-512, 5 with AVX2),
leave a remainder of each kind (every remainder size has a block of its own), a prompt's 225 rows, and
a width whose last panel is partial. The
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
    """Panels of the embedding and of every matrix the decoder multiplies by per token, none of the cross
    K/V projections or the encoder's; only for the CPU plan's float32 decoder, and only when every one of
    those matrices is float16-exact."""
    from max_whisper.backends.whisper_max.graphs import GraphPlan, plan_arrays, plan_for_checkpoint
    from max_whisper.backends.whisper_max.weights import PANELS_SUFFIX, TOKEN_EMBEDDING, panels_name

    state = checkpoint["model_state_dict"]
    cpu = plan_for_checkpoint(GraphPlan("cpu"), state)
    assert cpu.panels  # the embedded tiny.en: converted from float16
    arrays = plan_arrays(state, cpu)
    held = sorted(name.removesuffix(PANELS_SUFFIX) for name in arrays if name.endswith(PANELS_SUFFIX))
    n_layer = checkpoint["dims"]["n_text_layer"]
    per_block = ["attn.query", "attn.key", "attn.value", "attn.out", "cross_attn.query", "cross_attn.out"]
    per_block += ["mlp.0", "mlp.2"]
    expected = [f"decoder.blocks.{i}.{m}.weight" for i in range(n_layer) for m in per_block] + [TOKEN_EMBEDDING]
    assert held == sorted(expected)
    assert not any(name.endswith(PANELS_SUFFIX) for name in plan_arrays(state, GraphPlan("cpu")))
    assert not plan_for_checkpoint(GraphPlan("gpu", runs_on="cpu"), state).panels
    assert not plan_for_checkpoint(GraphPlan("cpu", "bfloat16"), state).panels

    for name in (TOKEN_EMBEDDING, "decoder.blocks.1.mlp.2.weight"):  # one value between two float16 numbers
        perturbed = dict(state)
        perturbed[name] = state[name].clone()
        perturbed[name][3, 5] += 1e-5
        assert not plan_for_checkpoint(GraphPlan("cpu"), perturbed).panels, name
        with pytest.raises(ValueError, match="not float16-exact"):
            plan_arrays(perturbed, GraphPlan("cpu", panels=True))
    assert panels_name(TOKEN_EMBEDDING) in arrays
    with pytest.raises(ValueError, match="cpu plan"):
        GraphPlan("gpu", panels=True)


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


@pytest.mark.parametrize(("batch", "rows"), [(1, 1), (5, 1), (1, 7), (1, 17), (3, 4), (1, 225)])
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
