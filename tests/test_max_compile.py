"""``max-whisper compile``: the max backend's graphs compiled ahead of time, for this CPU and for a GPU
this machine does not have (MAX's virtual-device mode), and exported artifacts loaded by the backend.

The GPU compile is the proof, on machines without a GPU (CI's among them), that every graph of the
GPU plan compiles for an H100/H200 (sm_90a). It runs in a subprocess because virtual-device mode must be
set before any device exists. It is not skippable under ``CI=true``; a cold MAX cache makes it slow
(minutes on 2 cores, see docs/performance.md), a warm one takes seconds.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import shared_clip

REPO = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
#: A guard against a hung compile, not a speed limit (compile times are logged in docs/performance.md):
#: a cold compile of the GPU plan for sm_90a took ~5 min on a fast day and over 25 min on the slow,
#: fresh machine of entry 39 (2 cores, empty MAX cache).
GPU_COMPILE_TIMEOUT = 2700


def require_max() -> None:
    try:
        import max.engine  # noqa: F401
    except ImportError as exc:
        if IN_CI:
            pytest.fail(f"the MAX engine must be installed in CI: {exc}")
        pytest.skip(f"the MAX engine is not installed: {exc}")


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO / "max-whisper") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, "-m", "max_whisper", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--target", "sm90"], "is not a GPU architecture"),
        (["--target", "sm_90a", "--device", "cpu"], "cannot be combined with --device cpu"),
        (["--dtype", "float8"], "invalid choice"),
        (["--device", "cpu", "--graphs", "encoder,nope"], "nope not in the cpu plan"),
        (["--device", "cpu", "--model", "no-such-model"], "no-such-model"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list, message: str, tmp_path: Path) -> None:
    if "--graphs" in args or "--model" in args:
        require_max()
    result = run_cli("compile", *args)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and message in lines[-1], result.stderr
    assert "Traceback" not in result.stderr


def test_export_to_a_foreign_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    result = run_cli("compile", "--device", "cpu", "--export", str(tmp_path))
    assert result.returncode == 2 and "holds no earlier export" in result.stderr
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.max
def test_every_gpu_graph_compiles_for_sm_90a(checkpoint_path: Path, tmp_path: Path, max_report: Any) -> None:
    """The GPU plan's transcription graphs (float32, and the two decoders with bfloat16 weights: the
    graphs that differ) compile for sm_90a without a GPU, and export.  (``cross_kv``'s operations are a part
    of the encoder graph's, so they are compiled here too.)"""
    require_max()
    export = tmp_path / "sm_90a"
    start = time.perf_counter()
    result = run_cli(
        "compile", "--target", "sm_90a", "--model", str(checkpoint_path), "--export", str(export),
        timeout=GPU_COMPILE_TIMEOUT,
    )  # fmt: skip
    max_report.record_time("compile GPU plan for virtual sm_90a (subprocess)", time.perf_counter() - start)
    assert result.returncode == 0, result.stderr[-2000:]
    for line in result.stdout.splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[2] == "s":
            max_report.record_time(f"  sm_90a graph {fields[0]}", float(fields[1]))
    manifest = json.loads((export / "manifest.json").read_text())
    text = json.dumps(manifest)
    for graph in ("whisper_encoder", "whisper_decoder", "whisper_decoder_step", "whisper_cache_reorder"):
        assert graph in text, f"{graph} missing from the exported manifest"
    assert "whisper_draft" not in text, "the 4-bit draft (CPU-only kernels) must not be part of the GPU plan"
    assert len(list(export.glob("*.mef"))) == 4

    start = time.perf_counter()
    result = run_cli(
        "compile", "--target", "sm_90a", "--dtype", "bfloat16", "--graphs", "decoder,decoder_step",
        "--model", str(checkpoint_path), timeout=GPU_COMPILE_TIMEOUT,
    )  # fmt: skip
    max_report.record_time("compile bfloat16 decoders for virtual sm_90a (subprocess)", time.perf_counter() - start)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.max
def test_exported_cpu_graphs_are_loaded_instead_of_compiled(
    checkpoint_path: Path, tmp_path: Path, max_backend: Any, max_report: Any
) -> None:
    """``--export`` on the CPU, then a backend with ``precompiled=``: same tokens as the session's backend."""
    require_max()
    from max_whisper.audio import load_audio
    from max_whisper.backends.whisper_max.backend import MaxBackend
    from max_whisper.backends.whisper_max.compile import CompileOptions, compile_graphs
    from max_whisper.decoding import transcribe

    export = tmp_path / "cpu"
    compiled = compile_graphs(CompileOptions(model=str(checkpoint_path), device="cpu", export=export))
    assert [g.name for g in compiled] == ["encoder", "decoder", "draft", "choice"]
    start = time.perf_counter()
    backend = MaxBackend(str(checkpoint_path), device="cpu", precompiled=str(export))
    max_report.record_time("MaxBackend from exported CPU graphs: load + init", time.perf_counter() - start)
    audio = load_audio(shared_clip("jfk.flac"))
    ours = transcribe(backend, audio, temperature=0.0)
    ref = transcribe(max_backend, audio, temperature=0.0)
    assert [s["tokens"] for s in ours["segments"]] == [s["tokens"] for s in ref["segments"]]
    assert backend.describe()["precompiled"] == str(export)


@pytest.mark.max
def test_several_export_folders_are_read_as_one_set(
    checkpoint_path: Path, tmp_path: Path, max_backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An export holds the graphs of one run of ``compile`` (one dtype, say); ``precompiled`` (and
    ``MAX_WHISPER_PRECOMPILED``) take several, separated by ``os.pathsep``. The encoder and the decoder
    exported apart load together and decode beam search as the session's backend does; either folder
    alone lacks a graph the backend loads at start, a one-line error."""
    require_max()
    from max_whisper.audio import load_audio
    from max_whisper.backends.whisper_max.backend import MaxBackend
    from max_whisper.backends.whisper_max.compile import CompileOptions, compile_graphs
    from max_whisper.decoding import transcribe
    from max_whisper.errors import MaxWhisperError

    folders = {name: tmp_path / name for name in ("encoder", "decoder")}
    for name, folder in folders.items():
        compile_graphs(CompileOptions(model=str(checkpoint_path), device="cpu", export=folder, graphs=(name,)))
    both = os.pathsep.join(str(folder) for folder in folders.values())
    for folder in folders.values():
        with pytest.raises(MaxWhisperError, match="do not fit this model and plan"):
            MaxBackend(str(checkpoint_path), device="cpu", precompiled=str(folder))
    monkeypatch.setenv("MAX_WHISPER_PRECOMPILED", both)
    backend = MaxBackend(str(checkpoint_path), device="cpu")
    assert backend.describe()["precompiled"] == both
    audio = load_audio(shared_clip("jfk.flac"))
    ours = transcribe(backend, audio, temperature=0.0, beam_size=5)  # beam search: no draft graph
    ref = transcribe(max_backend, audio, temperature=0.0, beam_size=5)
    assert [s["tokens"] for s in ours["segments"]] == [s["tokens"] for s in ref["segments"]]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_gpu_plan_graphs_hold_no_cpu_only_kernels(checkpoint: dict, dtype: str) -> None:
    """Built (not compiled) for a GPU: five graphs, no Q4_0 matmul (MAX's is CPU-only); with bfloat16
    the decoder reads bfloat16 matrices under its own graph name, and cross K/V stays float32; the
    step has no matmul and every other float32 matmul is split against TF32."""
    require_max()
    from whisper.model import ModelDimensions

    from max_whisper.backends.whisper_max.graphs import GraphPlan, MaxWhisperGraphs, plan_arrays
    from max_whisper.backends.whisper_max.layers import WeightSource
    from max_whisper.backends.whisper_max.weights import state_dict_arrays

    plan = GraphPlan("gpu", dtype)
    assert plan.transcription_graphs == ("encoder", "decoder", "decoder_step", "reorder") and not plan.draft
    assert plan.graph_names == plan.transcription_graphs + ("cross_kv",)
    arrays = state_dict_arrays(
        checkpoint["model_state_dict"], draft=plan.draft, decoder_dtype=dtype, embedding_rows=plan.step
    )
    assert not any(name.endswith(".q4_0") for name in arrays)
    graphs = MaxWhisperGraphs(ModelDimensions(**checkpoint["dims"]), WeightSource(arrays, plan.device_ref), 50363, plan)
    built = {name: graphs.build(name) for name in plan.graph_names}
    for name, graph in built.items():
        text = str(graph)
        assert "qmatmul" not in text, f"{name} uses a CPU-only Q4_0 kernel"
        assert "gpu" in text.lower(), f"{name} is not placed on the GPU"

    def bfloat16_weights(name: str) -> list[str]:
        return [line for line in str(built[name]).splitlines() if "constant.external" in line and "bf16>" in line]

    assert bool(bfloat16_weights("decoder")) == (dtype == "bfloat16")
    assert not bfloat16_weights("cross_kv") and not bfloat16_weights("encoder")
    assert built["decoder"].name == ("whisper_decoder" if dtype == "float32" else "whisper_decoder_bfloat16")
    step = "whisper_decoder_step" + ("" if dtype == "float32" else "_bfloat16")
    assert built["decoder_step"].name == step and bool(bfloat16_weights("decoder_step")) == (dtype == "bfloat16")
    # the step's products are multiply-and-sum reductions: no matmul, which MAX runs on TF32 tensor cores
    assert "matmul" not in str(built["decoder_step"])
    # every product of the others is split (layers.SplitProduct; bfloat16 weights are widened first): each of
    # the CPU plan's products is there once as a matmul, its two operands each cast to bfloat16 for the split,
    # and so are the attention products that the CPU plan runs in its kernels (the encoder's self-attention, the
    # decoder's self-attention over its cache and its cross-attention)
    cpu_plan = GraphPlan("cpu")
    cpu_arrays = plan_arrays(checkpoint["model_state_dict"], cpu_plan)
    cpu_graphs = MaxWhisperGraphs(graphs.dims, WeightSource(cpu_arrays, cpu_plan.device_ref), 50363, cpu_plan)
    kernel_ops = ("few_query_attention", "cached_attention", "encoder_attention")
    gpu_texts = [str(built[name]) for name in ("encoder", "decoder")]
    assert not any(op in text for op in kernel_ops for text in gpu_texts)
    for name in ("encoder", "cross_kv", "decoder"):
        lines = str(built[name]).splitlines()
        matmuls = sum("matmul" in line for line in lines)
        splits = sum("mo.cast" in line and re.search(r"-> !mo\.tensor<[^>]*bf16", line) is not None for line in lines)
        cpu_text = str(cpu_graphs.build(name))
        # scores and values, per attention in a kernel
        in_kernel = 2 * sum(cpu_text.count(op) for op in kernel_ops)
        assert name != "cross_kv" or not in_kernel
        # the CPU plan's products: MAX matmuls, float16-panel ops (named matmul_...) and float32-panel ops
        products = cpu_text.count("matmul") + cpu_text.count("linear_float32_panels")
        assert matmuls == products + in_kernel, f"{name}: matmuls added or lost"
        assert splits == 2 * matmuls, f"{name}: {splits} bfloat16 splits for {matmuls} matmuls"


@pytest.mark.max
def test_compiled_graphs_are_kept_and_loaded_without_building(
    checkpoint_path: Path, tmp_path: Path, max_backend: Any, monkeypatch: pytest.MonkeyPatch, max_report: Any
) -> None:
    """The store of compiled graphs: a first backend has worker processes compile and keep one artifact
    per graph it loads, and builds none itself; a second loads them without building a single graph and
    transcribes to the session backend's tokens; an unusable artifact is compiled again and replaced."""
    require_max()
    from max_whisper.audio import load_audio
    from max_whisper.backends.whisper_max import graphs as graphs_module
    from max_whisper.backends.whisper_max.artifacts import GRAPH_DIR_ENV
    from max_whisper.backends.whisper_max.backend import MaxBackend
    from max_whisper.backends.whisper_max.compile_workers import WORKERS_ENV
    from max_whisper.decoding import transcribe

    monkeypatch.setenv(GRAPH_DIR_ENV, str(tmp_path / "graphs"))
    monkeypatch.delenv(WORKERS_ENV, raising=False)
    built: list[str] = []
    build = graphs_module.MaxWhisperGraphs.build
    monkeypatch.setattr(
        graphs_module.MaxWhisperGraphs, "build", lambda self, name: built.append(name) or build(self, name)
    )
    first = MaxBackend(str(checkpoint_path), device="cpu")
    assert built == []  # the workers compiled both graphs
    folder = first.models.store.folder
    assert folder.parent == tmp_path / "graphs"
    assert sorted(p.name for p in folder.glob("*.mef")) == ["decoder.mef", "encoder.mef"]
    assert not list(folder.glob(".*"))  # no temporary file left behind

    (folder / "encoder.mef").write_bytes(b"not a compiled graph")
    start = time.perf_counter()
    second = MaxBackend(str(checkpoint_path), device="cpu")
    max_report.record_time("MaxBackend from the store of compiled graphs (one rebuilt)", time.perf_counter() - start)
    assert built == ["encoder"], built  # only the unusable artifact was built again
    assert (folder / "encoder.mef").stat().st_size > 1000
    assert second.models.loaded == ["encoder", "decoder"]

    audio = load_audio(shared_clip("jfk.flac"))
    for options in ({"temperature": 0.0}, {"temperature": 0.0, "beam_size": 5}):
        ours = transcribe(second, audio, **options)
        ref = transcribe(max_backend, audio, **options)
        assert [s["tokens"] for s in ours["segments"]] == [s["tokens"] for s in ref["segments"]], options
    # greedy loaded the draft and the greedy choice on first use (workers compiled them), and kept them;
    # beam search needs no other graph on the CPU, and the cross K/V came from the encoder graph
    assert sorted(second.models.loaded) == ["choice", "decoder", "draft", "encoder"]
    assert sorted(p.name for p in folder.glob("*.mef")) == ["choice.mef", "decoder.mef", "draft.mef", "encoder.mef"]
    assert built == ["encoder"]


@pytest.mark.max
def test_graphs_the_workers_left_out_are_compiled_here_once(
    checkpoint_path: Path, tmp_path: Path, max_backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers that compile nothing (all failed, say): the backend asks them once for both graphs, then
    compiles each itself into the store (MAX's compile cache, warm from the session backend, serves it)."""
    require_max()
    from max_whisper.backends.whisper_max import backend as backend_module
    from max_whisper.backends.whisper_max.artifacts import GRAPH_DIR_ENV

    monkeypatch.setenv(GRAPH_DIR_ENV, str(tmp_path / "graphs"))
    asked: list[tuple] = []
    monkeypatch.setattr(
        backend_module, "compile_in_workers", lambda *args: asked.append((*args[:3], list(args[3]))) or {}
    )  # (checkpoint file, plan device, dtype, names), then the store's root
    backend = backend_module.MaxBackend(str(checkpoint_path), device="cpu")
    assert asked == [(checkpoint_path, "cpu", "float32", ["encoder", "decoder"])]
    assert backend.models.loaded == ["encoder", "decoder"]
    assert sorted(p.name for p in backend.models.store.folder.glob("*.mef")) == ["decoder.mef", "encoder.mef"]


def test_compile_workers_are_on_unless_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    from max_whisper.backends.whisper_max.compile_workers import WORKERS_ENV, workers_enabled

    monkeypatch.delenv(WORKERS_ENV, raising=False)
    assert workers_enabled()
    for off in ("0", "off", "No", "false"):
        monkeypatch.setenv(WORKERS_ENV, off)
        assert not workers_enabled(), off
    monkeypatch.setenv(WORKERS_ENV, "1")
    assert workers_enabled()


def test_a_failed_compile_worker_leaves_its_graph_to_the_caller(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker that fails is reported by its own one-line error, and its graph is not in the result."""
    require_max()
    from max_whisper.backends.whisper_max.compile_workers import compile_in_workers

    with caplog.at_level("WARNING"):
        assert compile_in_workers(tmp_path / "none.pt", "cpu", "float32", ["encoder", "decoder"], tmp_path) == {}
    failures = [r.getMessage() for r in caplog.records if "compile worker" in r.getMessage()]
    assert len(failures) == 2 and all("model file not found" in f for f in failures), failures


def test_graph_store_key_and_switch(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The store's folder changes with the plan and the model's dimensions; ``off`` turns it off."""
    require_max()
    from max.driver import CPU
    from whisper.model import ModelDimensions

    from max_whisper.backends.whisper_max.artifacts import GRAPH_DIR_ENV, ArtifactStore, graph_store_root
    from max_whisper.backends.whisper_max.graphs import GraphPlan

    dims = ModelDimensions(80, 1500, 384, 6, 4, 51864, 448, 384, 6, 4)
    other = ModelDimensions(80, 1500, 512, 8, 6, 51864, 448, 512, 8, 6)
    monkeypatch.setenv(GRAPH_DIR_ENV, str(tmp_path))
    a = ArtifactStore.for_graphs(dims, 50363, GraphPlan("cpu"), CPU())
    assert a.folder.parent == tmp_path
    assert a == ArtifactStore.for_graphs(dims, 50363, GraphPlan("cpu"), CPU())
    assert a != ArtifactStore.for_graphs(other, 50363, GraphPlan("cpu"), CPU())
    assert a != ArtifactStore.for_graphs(dims, 50363, GraphPlan("gpu"), CPU())
    assert a != ArtifactStore.for_graphs(dims, 50363, GraphPlan("cpu", panels=True), CPU())
    assert a != ArtifactStore.for_graphs(dims, 50364, GraphPlan("cpu"), CPU())
    monkeypatch.setenv(GRAPH_DIR_ENV, "off")
    assert graph_store_root() is None and ArtifactStore.for_graphs(dims, 50363, GraphPlan("cpu"), CPU()) is None


def test_graph_store_key_covers_every_kernel(tmp_path: Path) -> None:
    """Every Mojo kernel's source is part of the store's key, a kernel added later included."""
    import shutil

    from max_whisper.backends.whisper_max import artifacts

    package = Path(artifacts.__file__).parent
    copy = tmp_path / "whisper_max"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert artifacts.source_digest(copy) == artifacts.source_digest()
    kernels = sorted((copy / "kernels").glob("*.mojo"))
    assert {"half_panels.mojo", "few_query_attention.mojo"} <= {k.name for k in kernels}
    seen = {artifacts.source_digest(copy)}
    for kernel in kernels:
        kernel.write_text(kernel.read_text() + "\n")
        seen.add(artifacts.source_digest(copy))
    (copy / "kernels" / "new_kernel.mojo").write_text("# a kernel added later\n")
    seen.add(artifacts.source_digest(copy))
    assert len(seen) == len(kernels) + 2


@pytest.mark.max
def test_gpu_reorder_graph_moves_the_held_positions_of_each_row(checkpoint: dict) -> None:
    """The GPU plan's cache reorder, compiled and run on the CPU: row i becomes row index[i] for the
    positions before ``end``, in place, and the positions from ``end`` on are left as they were."""
    require_max()
    import numpy as np
    from max.driver import CPU, Buffer
    from max.engine import InferenceSession
    from whisper.model import ModelDimensions

    from max_whisper.backends.whisper_max.graphs import GraphPlan, MaxWhisperGraphs, cache_shapes
    from max_whisper.backends.whisper_max.layers import WeightSource

    dims = ModelDimensions(**checkpoint["dims"])
    graphs = MaxWhisperGraphs(dims, WeightSource({}, GraphPlan("cpu").device_ref), 50363, GraphPlan("cpu"))
    model = InferenceSession(devices=[CPU()]).load(graphs.build_reorder())
    rng = np.random.default_rng(7)
    arrays = [rng.standard_normal(shape).astype(np.float32) for shape in cache_shapes(dims, 5)]
    before = [a.copy() for a in arrays]
    index, end = np.array([1, 1, 0, 4, 2]), 37
    model.execute(Buffer.from_numpy(index), Buffer.from_numpy(np.array(end)), *(Buffer.from_numpy(a) for a in arrays))
    for i, (got, old) in enumerate(zip(arrays, before, strict=True)):
        held = (slice(None), slice(None), slice(0, end)) if i % 2 == 0 else (slice(None),) * 3 + (slice(0, end),)
        rest = (slice(None), slice(None), slice(end, None)) if i % 2 == 0 else (slice(None),) * 3 + (slice(end, None),)
        np.testing.assert_array_equal(got[held], old[index][held])
        np.testing.assert_array_equal(got[rest], old[rest])
