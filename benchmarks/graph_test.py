#!/usr/bin/env python
"""MAX Graph sanity check: build layer_norm -> matmul -> gelu, run it, compare with NumPy.

This is the smallest end-to-end use of the MAX engine the ``max`` backend relies
on (graph construction, compilation, buffers in and out).  It prints the
MAX version, the device, the compile and run times and the relative error, and
exits 0 when the result matches NumPy within ``--tolerance``.

The first compile on a small CPU takes tens of seconds; MAX caches the compiled
graph in ``~/.cache/modular``, so a second run of the same graph is fast.

Usage::

    python benchmarks/graph_test.py [--device auto|cpu|gpu] [--tolerance 1e-4]
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np

ROWS, D_IN, D_OUT = 8, 384, 1536  # a Whisper tiny MLP's first layer
EPS = 1e-5


def numpy_reference(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, w: np.ndarray) -> np.ndarray:
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=-1, keepdims=True)
    var = x64.var(axis=-1, keepdims=True)
    normed = (x64 - mean) / np.sqrt(var + EPS) * gamma + beta
    h = normed @ w.astype(np.float64)
    erf = np.vectorize(math.erf)
    return 0.5 * h * (1.0 + erf(h / math.sqrt(2.0)))  # exact (erf) GELU, as ops.gelu's default


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "gpu"),
        default="auto",
        help="where to run the graph (auto: a GPU when MAX sees one)",
    )
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest relative error accepted")
    args = parser.parse_args(argv)

    try:
        from max.driver import CPU, Accelerator, Buffer, accelerator_count
        from max.dtype import DType
        from max.engine import InferenceSession
        from max.graph import DeviceRef, Graph, TensorType, ops
    except ImportError as exc:
        print(f"graph-test: error: the MAX engine is not installed ({exc}); run 'make install'", file=sys.stderr)
        return 2

    try:
        from importlib.metadata import version

        max_version = version("max")
    except Exception:  # pragma: no cover
        max_version = "unknown"

    gpus = accelerator_count()
    use_gpu = args.device == "gpu" or (args.device == "auto" and gpus > 0)
    if use_gpu and gpus == 0:
        print("graph-test: error: --device gpu but MAX sees no accelerator on this machine", file=sys.stderr)
        return 2
    driver_device = Accelerator() if use_gpu else CPU()
    device_ref = DeviceRef.GPU() if use_gpu else DeviceRef.CPU()
    print(f"MAX {max_version}; device: {'gpu' if use_gpu else 'cpu'} ({gpus} accelerator(s) visible)")

    f32 = DType.float32
    input_types = [
        TensorType(f32, (ROWS, D_IN), device=device_ref),
        TensorType(f32, (D_IN,), device=device_ref),
        TensorType(f32, (D_IN,), device=device_ref),
        TensorType(f32, (D_IN, D_OUT), device=device_ref),
    ]
    with Graph("graph_test_layernorm_matmul_gelu", input_types=input_types) as graph:
        x, gamma, beta, w = (value.tensor for value in graph.inputs)
        out = ops.gelu(ops.matmul(ops.layer_norm(x, gamma, beta, EPS), w))
        graph.output(out)

    session = InferenceSession(devices=[driver_device])
    start = time.perf_counter()
    model = session.load(graph)
    compile_s = time.perf_counter() - start

    rng = np.random.default_rng(0)
    arrays = [
        rng.standard_normal((ROWS, D_IN), dtype=np.float32),
        (1.0 + 0.1 * rng.standard_normal(D_IN)).astype(np.float32),
        (0.1 * rng.standard_normal(D_IN)).astype(np.float32),
        (rng.standard_normal((D_IN, D_OUT)) / math.sqrt(D_IN)).astype(np.float32),
    ]
    buffers = [Buffer.from_numpy(a).to(driver_device) for a in arrays]
    start = time.perf_counter()
    result = model.execute(*buffers)[0]
    run_s = time.perf_counter() - start
    got = result.to(CPU()).to_numpy()

    expected = numpy_reference(*arrays)
    rel = float(np.linalg.norm(got - expected) / np.linalg.norm(expected))
    ok = got.shape == expected.shape and np.isfinite(got).all() and rel <= args.tolerance
    print(
        f"layer_norm -> matmul -> gelu on ({ROWS}, {D_IN}) x ({D_IN}, {D_OUT}): "
        f"compile {compile_s:.1f} s, run {run_s * 1e3:.2f} ms, relative error vs NumPy {rel:.2e}"
    )
    if not ok:
        print(f"graph-test: FAILED (relative error {rel:.2e} > tolerance {args.tolerance:g})", file=sys.stderr)
        return 1
    print("graph-test: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
