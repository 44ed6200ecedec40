"""``max-whisper compile``: compile every graph the max backend uses, ahead of time.

Compiled graphs land in MAX's compile cache (``$XDG_CACHE_HOME/modular``) and, for this
machine's own device, in max-whisper's store of compiled graphs (:mod:`.artifacts`), so a later
``--backend max`` on this machine starts warm (for this machine's device each graph is compiled by a
worker process of its own, all at once, on jemalloc: :mod:`.compile_workers`); with ``--export DIR``
they are also written as artifacts that ``--backend max`` loads on another machine instead of compiling
(backend option ``precompiled=DIR`` or ``MAX_WHISPER_PRECOMPILED=DIR``; an export replaces ``DIR``, and
several folders joined by ``os.pathsep``, one export per ``--dtype`` say, are read as one set).

``--target sm_90a`` (or ``sm_80``, ``gfx942``, ...) compiles for a GPU this machine does not
have, in MAX's virtual-device mode: compilation only, nothing runs.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ...config import DEFAULT_MODEL
from ...errors import ExitCode, UsageError

DTYPE_CHOICES = ("float32", "bfloat16")
#: GPU architectures MAX names: NVIDIA ``sm_NN[a]`` (CUDA), AMD ``gfxNNN`` (HIP).
TARGET_PATTERN = re.compile(r"^(sm_\d{2,3}a?|gfx[0-9a-f]{3,4})$")


@dataclass(frozen=True)
class CompileOptions:
    """What ``max-whisper compile`` compiles, parsed once from the command line."""

    model: str = DEFAULT_MODEL
    device: str = "cpu"  # "cpu" | "gpu"
    dtype: str = "float32"
    target: str | None = None  # a GPU architecture, compiled for in virtual-device mode
    export: Path | None = None
    graphs: tuple[str, ...] | None = None  # None: every graph a transcription may load

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> CompileOptions:
        device = args.device
        if args.target is not None:
            if not TARGET_PATTERN.match(args.target):
                raise UsageError(f"--target {args.target!r} is not a GPU architecture (e.g. sm_90a, sm_80, gfx942)")
            if device == "cpu":
                raise UsageError("--target names a GPU architecture; it cannot be combined with --device cpu")
            device = "gpu"
        if device == "auto":
            device = "gpu" if _accelerators() > 0 else "cpu"
        export = Path(args.export) if args.export else None
        if export is not None and export.exists():
            if not export.is_dir():
                raise UsageError(f"--export {export}: exists and is not a folder")
            if any(export.iterdir()) and not (export / "manifest.json").is_file():
                raise UsageError(f"--export {export}: a non-empty folder that holds no earlier export")
        graphs = tuple(g for g in args.graphs.split(",") if g) if args.graphs else None
        return cls(model=args.model, device=device, dtype=args.dtype, target=args.target, export=export, graphs=graphs)


@dataclass(frozen=True)
class CompiledGraph:
    name: str
    seconds: float


def _accelerators() -> int:
    from max.driver import accelerator_count

    return accelerator_count()


def enter_virtual_device_mode(target: str) -> None:
    """Make the next accelerator a virtual ``target`` GPU (before any accelerator is created)."""
    from max import driver

    driver.set_virtual_device_api("hip" if target.startswith("gfx") else "cuda")
    driver.set_virtual_device_target_arch(target)
    driver.set_virtual_device_count(1)


def compile_graphs(
    options: CompileOptions, on_compiled: Callable[[CompiledGraph], None] | None = None
) -> list[CompiledGraph]:
    """Compile the graphs of ``options`` (without binding weights); export them if asked."""
    if options.target is not None:
        enter_virtual_device_mode(options.target)
    from max.driver import CPU, Accelerator
    from max.engine import InferenceSession
    from whisper.model import ModelDimensions
    from whisper.tokenizer import get_tokenizer

    from ...models import load_checkpoint, resolve_checkpoint
    from .artifacts import ArtifactStore, graph_store_root
    from .compile_workers import compile_in_workers, workers_enabled
    from .graphs import GraphPlan, MaxWhisperGraphs, plan_arrays, plan_for_checkpoint
    from .layers import WeightSource

    plan = GraphPlan(options.device, options.dtype)
    names = options.graphs or plan.transcription_graphs
    unknown = [n for n in names if n not in plan.graph_names]
    if unknown:
        raise UsageError(
            f"--graphs: {', '.join(unknown)} not in the {options.device} plan ({', '.join(plan.graph_names)})"
        )
    if options.device == "gpu" and options.target is None and _accelerators() == 0:
        raise UsageError("--device gpu: no MAX accelerator on this machine (use --target ARCH to compile for one)")
    # for this machine's device the graphs are compiled into the store by worker processes, all at once,
    # once the model is known to resolve (and, if it is the embedded one, is converted: not by each worker)
    checkpoint_path = resolve_checkpoint(options.model)
    by_worker: dict[str, float] = {}
    store_root = graph_store_root()
    if options.target is None and store_root is not None and workers_enabled():
        by_worker = compile_in_workers(checkpoint_path, options.device, options.dtype, names, store_root)
    checkpoint = load_checkpoint(checkpoint_path)
    dims = ModelDimensions(**checkpoint["dims"])
    multilingual = dims.n_vocab >= 51865
    with warnings.catch_warnings():  # whisper's tokenizer leaves its vocabulary file to the collector
        warnings.simplefilter("ignore", ResourceWarning)
        tokenizer = get_tokenizer(multilingual, num_languages=dims.n_vocab - 51765 - int(multilingual))
    plan = plan_for_checkpoint(plan, checkpoint["model_state_dict"])
    arrays = plan_arrays(checkpoint["model_state_dict"], plan)
    graphs = MaxWhisperGraphs(dims, WeightSource(arrays, plan.device_ref), tokenizer.timestamp_begin, plan)
    device = Accelerator() if options.device == "gpu" else CPU()
    # for this machine's device, also into the store the backend loads compiled graphs from
    store = (
        None if options.target is not None else ArtifactStore.for_graphs(dims, tokenizer.timestamp_begin, plan, device)
    )

    staging = None
    if options.export is not None:
        options.export.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{options.export.name}.", dir=options.export.parent))
        umask = os.umask(0)
        os.umask(umask)
        staging.chmod(0o777 & ~umask)
    try:
        session = InferenceSession(devices=[device], export_mefs=staging)
        compiled = []
        for name in names:
            # a worker's graph is done, unless it is to be exported too: then it is compiled again here,
            # which MAX's compile cache (filled by the worker) serves in seconds
            if name in by_worker and staging is None and store is not None and store.path(name).is_file():
                compiled.append(CompiledGraph(name, by_worker[name]))
                if on_compiled is not None:
                    on_compiled(compiled[-1])
                continue
            start = time.perf_counter()
            compiled_model = session.compile_reusing_mefs(graphs.build(name))
            if store is not None:
                store.save(compiled_model, name)
            compiled.append(CompiledGraph(name, time.perf_counter() - start))
            if on_compiled is not None:
                on_compiled(compiled[-1])
        if staging is not None:
            _replace_folder(staging, options.export)
            staging = None
        return compiled
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


def _replace_folder(new: Path, target: Path) -> None:
    """Put ``new`` where ``target`` is (an earlier export is removed only once ``new`` is complete)."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old.{os.getpid()}")
        target.rename(old)
    new.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# -- the subcommand --------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model name or checkpoint path")
    parser.add_argument(
        "--device", choices=("auto", "cpu", "gpu"), default="auto", help="the device whose graph set is compiled"
    )
    parser.add_argument(
        "--target",
        metavar="ARCH",
        help="compile for this GPU architecture (sm_90a, sm_80, gfx942, ...) in MAX's virtual-device mode: "
        "no GPU needed, nothing runs; implies --device gpu%(default).0s",
    )
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, default="float32", help="decoder weight type")
    parser.add_argument(
        "--graphs",
        metavar="NAMES",
        help="comma-separated graphs of the plan (default: those a transcription loads: encoder, decoder, and "
        "draft on the CPU or reorder on a GPU; cross_kv only serves audio features passed in)%(default).0s",
    )
    parser.add_argument(
        "--export",
        metavar="DIR",
        help="also write the compiled graphs to DIR, for --backend-opt max.precompiled=DIR "
        "(or MAX_WHISPER_PRECOMPILED=DIR) on a machine with that device%(default).0s",
    )


def run_from_args(args: argparse.Namespace) -> int:
    options = CompileOptions.from_args(args)
    where = f"virtual {options.target}" if options.target else options.device
    print(f"compiling the max backend's {options.device} graphs ({options.dtype}) of {options.model} for {where}")
    total = time.perf_counter()

    def show(graph: CompiledGraph) -> None:
        print(f"  {graph.name:<10} {graph.seconds:8.2f} s", flush=True)

    compile_graphs(options, show)
    print(f"  {'total':<10} {time.perf_counter() - total:8.2f} s")
    if options.export is not None:
        print(f"exported to {options.export}")
    return ExitCode.OK
