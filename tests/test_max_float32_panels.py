"""The CPU plan's encoder products against float32 panels of their matrices (``kernels/float32_panels.mojo``).

The encoder's convolutions and blocks, and the cross-attention keys and values, multiply through this op
instead of MAX's matmul (whose kernel library costs every graph that holds one about a minute of
compiling). Checked here: the panel layout (column n at ``panels[n // 32, :, n % 32]``, a convolution's
taps tap-major), which registry matrices the CPU plan holds as panels, and the op itself against float64
on seeded inputs: row counts that fill the kernel's register block and leave a remainder, a width whose
last panel is partial, the bias, the GELU, a residual per batch entry or shared by all, no bias (the
keys), and both of whisper's convolutions (stride 1 and 2, three taps) through ``layers.Conv1d`` against
torch's ``conv1d``. The end-to-end tests run the session's backend, whose encoder graph is made of these
ops: its tokens are compared with the cpu backend's in every decoding mode.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytestmark = pytest.mark.max

BATCH, ROWS, C = 2, 29, 40  # 29 rows: two blocks of 12 (AVX-512) and a remainder of 5
N_PARTIAL = 1003  # 31 full panels and a last one of 11 columns
N = 64
TIME, IN, OUT = 30, 16, 64  # the convolutions' frames and channels
BOUND = 1e-5


def gelu64(x: np.ndarray) -> np.ndarray:
    return F.gelu(torch.from_numpy(x)).numpy()


def relative_error(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(got - ref).max() / np.abs(ref).max())


def test_panels_hold_each_column_and_a_convolutions_taps_tap_major() -> None:
    from max_whisper.backends.whisper_max.weights import FLOAT32_PANEL_WIDTH, float32_panels

    rng = np.random.default_rng(0)
    linear = rng.standard_normal((N_PARTIAL, C)).astype(np.float32)  # (out, in), as torch's Linear holds it
    panels = float32_panels(linear)
    assert panels.shape == (-(-N_PARTIAL // FLOAT32_PANEL_WIDTH), C, FLOAT32_PANEL_WIDTH)
    n = np.arange(N_PARTIAL)
    np.testing.assert_array_equal(panels[n // FLOAT32_PANEL_WIDTH, :, n % FLOAT32_PANEL_WIDTH], linear)
    assert not panels[-1, :, N_PARTIAL % FLOAT32_PANEL_WIDTH :].any()  # the padding columns are zeros

    conv = rng.standard_normal((OUT, IN, 3)).astype(np.float32)  # (out, in, taps)
    panels = float32_panels(conv)
    assert panels.shape == (OUT // FLOAT32_PANEL_WIDTH, 3 * IN, FLOAT32_PANEL_WIDTH)
    column = panels[1, :, 5]  # output channel 37
    np.testing.assert_array_equal(column.reshape(3, IN), conv[37].T)  # row tap * IN + c holds w[37, c, tap]


def test_the_cpu_plan_holds_the_encoder_graphs_matrices_as_float32_panels(checkpoint: dict) -> None:
    """Every matrix of the encoder and the cross-attention keys and values, as panels only: the CPU plan's
    (whose graphs load the kernels); no other plan's."""
    from max_whisper.backends.whisper_max.graphs import GraphPlan, plan_arrays, plan_for_checkpoint
    from max_whisper.backends.whisper_max.weights import FLOAT32_PANELS_SUFFIX

    state = checkpoint["model_state_dict"]
    arrays = plan_arrays(state, plan_for_checkpoint(GraphPlan("cpu"), state))
    held = sorted(name.removesuffix(FLOAT32_PANELS_SUFFIX) for name in arrays if name.endswith(FLOAT32_PANELS_SUFFIX))
    dims = checkpoint["dims"]
    per_block = ["attn.query", "attn.key", "attn.value", "attn.out", "mlp.0", "mlp.2"]
    expected = ["encoder.conv1.weight", "encoder.conv2.weight"]
    expected += [f"encoder.blocks.{i}.{m}.weight" for i in range(dims["n_audio_layer"]) for m in per_block]
    expected += [
        f"decoder.blocks.{i}.cross_attn.{m}.weight" for i in range(dims["n_text_layer"]) for m in ("key", "value")
    ]
    assert held == sorted(expected)
    assert not set(held) & set(arrays)  # the graphs read the panels only: no float32 copy is kept beside them
    assert "encoder.blocks.0.attn_ln.weight" in arrays and "encoder.ln_post.weight" in arrays
    gpu_on_cpu = plan_arrays(state, GraphPlan("gpu", runs_on="cpu"))
    assert not any(name.endswith(FLOAT32_PANELS_SUFFIX) for name in gpu_on_cpu)


@pytest.fixture(scope="module")
def cases(max_report: Any) -> dict[str, Any]:
    """One graph of every case, compiled once; the seeded inputs, weights and the graph's outputs."""
    pytest.importorskip("max.engine")
    from max.driver import CPU, Buffer
    from max.dtype import DType
    from max.engine import InferenceSession
    from max.graph import DeviceRef, Graph, TensorType

    from max_whisper.backends.whisper_max.graphs import KERNELS
    from max_whisper.backends.whisper_max.layers import Conv1d, WeightSource, linear_float32_panels
    from max_whisper.backends.whisper_max.weights import float32_panels, float32_panels_name

    rng = np.random.default_rng(20261208)
    x = rng.standard_normal((BATCH, ROWS, C)).astype(np.float32)
    frames = rng.standard_normal((BATCH, TIME, IN)).astype(np.float32)
    w = {
        "partial": rng.standard_normal((N_PARTIAL, C)).astype(np.float32) / np.sqrt(C),
        "square": rng.standard_normal((N, C)).astype(np.float32) / np.sqrt(C),
    }
    bias = {name: rng.standard_normal(m.shape[0]).astype(np.float32) for name, m in w.items()}
    shared = rng.standard_normal((1, ROWS, N)).astype(np.float32)
    own = rng.standard_normal((BATCH, ROWS, N)).astype(np.float32)
    conv = {f"conv{s}": rng.standard_normal((OUT, IN, 3)).astype(np.float32) / np.sqrt(3 * IN) for s in (1, 2)}
    conv_bias = {name: rng.standard_normal(OUT).astype(np.float32) for name in conv}
    positional = rng.standard_normal((TIME // 2, OUT)).astype(np.float32)

    arrays = {float32_panels_name(f"{name}.weight"): float32_panels(m) for name, m in w.items()}
    arrays.update({f"{name}.bias": b for name, b in bias.items()})
    arrays.update({float32_panels_name(f"{name}.weight"): float32_panels(m) for name, m in conv.items()})
    arrays.update({f"{name}.bias": b for name, b in conv_bias.items()})
    arrays["positional"] = positional
    cpu = DeviceRef.CPU()
    weights = WeightSource(arrays, cpu)
    types = [
        TensorType(DType.float32, x.shape, cpu),
        TensorType(DType.float32, shared.shape, cpu),
        TensorType(DType.float32, own.shape, cpu),
        TensorType(DType.float32, frames.shape, cpu),
    ]
    start = time.perf_counter()
    with Graph("float32_panels_cases", input_types=types, custom_extensions=[KERNELS]) as graph:
        xv, shared_v, own_v, frames_v = (v.tensor for v in graph.inputs)

        def panels(name: str) -> Any:
            return weights.get(float32_panels_name(f"{name}.weight"))

        graph.output(
            linear_float32_panels(xv, panels("partial"), weights.get("partial.bias"), n_out=N_PARTIAL),
            linear_float32_panels(xv, panels("square"), weights.get("square.bias"), gelu=True, residual=shared_v),
            linear_float32_panels(xv, panels("square"), weights.get("square.bias"), residual=own_v),
            linear_float32_panels(xv, panels("square"), None),
            Conv1d(weights, "conv1", stride=1, float32_panels=True)(frames_v, gelu=True),
            Conv1d(weights, "conv2", stride=2, float32_panels=True)(
                frames_v, gelu=True, residual=weights.get("positional")
            ),
        )
    model = InferenceSession(devices=[CPU()]).load(graph, weights_registry=weights.registry())
    max_report.record_time("float32 panels graph: compile", time.perf_counter() - start)
    outputs = model.execute(*(Buffer.from_numpy(a) for a in (x, shared, own, frames)))
    names = ["partial", "gelu_shared", "own", "no_bias", "conv1", "conv2"]
    return {
        "out": dict(zip(names, (o.to_numpy() for o in outputs), strict=True)),
        "x": x.astype(np.float64),
        "w": {name: m.astype(np.float64) for name, m in w.items()},
        "bias": bias,
        "shared": shared,
        "own": own,
        "frames": frames,
        "conv": conv,
        "conv_bias": conv_bias,
        "positional": positional,
    }


def test_a_product_with_a_partial_last_panel(cases: dict[str, Any]) -> None:
    ref = cases["x"] @ cases["w"]["partial"].T + cases["bias"]["partial"]
    got = cases["out"]["partial"]
    assert got.shape == (BATCH, ROWS, N_PARTIAL)
    assert relative_error(got, ref) < BOUND


def test_bias_gelu_and_a_residual_shared_by_the_batch(cases: dict[str, Any]) -> None:
    ref = cases["shared"] + gelu64(cases["x"] @ cases["w"]["square"].T + cases["bias"]["square"])
    assert relative_error(cases["out"]["gelu_shared"], ref) < BOUND


def test_a_residual_per_batch_entry(cases: dict[str, Any]) -> None:
    ref = cases["own"] + (cases["x"] @ cases["w"]["square"].T + cases["bias"]["square"])
    assert relative_error(cases["out"]["own"], ref) < BOUND


def test_no_bias(cases: dict[str, Any]) -> None:
    assert relative_error(cases["out"]["no_bias"], cases["x"] @ cases["w"]["square"].T) < BOUND


@pytest.mark.parametrize("stride", [1, 2])
def test_whispers_convolutions(cases: dict[str, Any], stride: int) -> None:
    """whisper's conv1 (stride 1) and conv2 (stride 2, then the positional embedding), each with its GELU,
    on (batch, time, channels) frames."""
    name = f"conv{stride}"
    frames = torch.from_numpy(cases["frames"]).double().permute(0, 2, 1)  # (batch, channels, time)
    weight = torch.from_numpy(cases["conv"][name]).double()
    bias = torch.from_numpy(cases["conv_bias"][name]).double()
    ref = F.gelu(F.conv1d(frames, weight, bias, stride=stride, padding=1)).permute(0, 2, 1).numpy()
    if stride == 2:
        ref = ref + cases["positional"]
    got = cases["out"][name]
    assert got.shape == ref.shape == (BATCH, TIME // stride, OUT)
    assert relative_error(got, ref) < BOUND
