"""``--backend max``: the whole Whisper model as Modular MAX graphs.

:class:`MaxBackend` fills the seam of :mod:`max_whisper.backends.base`: it loads
the checkpoint into a weights registry, picks the device and the graph plan for
it (:mod:`.graphs`), compiles the graphs once per instance, runs the encoder,
and hands out :class:`.inference.MaxInference` decoders.

The token logic (greedy / beam search, timestamp rules, fallbacks) is
openai-whisper's own, run by :mod:`max_whisper.decoding`; no PyTorch module
runs here: torch tensors only carry data across whisper's ``Inference`` seam.
"""

from __future__ import annotations

import functools
import itertools
import os
from typing import Any, NamedTuple

import numpy as np
import torch
from whisper.model import ModelDimensions
from whisper.tokenizer import get_tokenizer

from ...config import DEFAULT_MODEL
from ...errors import BackendUnavailableError, InputShapeError, UsageError
from ...models import load_checkpoint, resolve_checkpoint
from ..base import Backend, Capabilities

try:  # the MAX engine is an optional dependency: the other backends work without it
    from max.driver import CPU, Accelerator, Buffer, accelerator_count
    from max.engine import InferenceSession

    from .artifacts import ArtifactStore
    from .compile_workers import compile_in_workers, workers_enabled
    from .graphs import DTYPES, GraphPlan, LoadedGraphs, MaxWhisperGraphs, plan_arrays, plan_for_checkpoint
    from .inference import MaxInference
    from .layers import WeightSource
    from .speculation import DecoderStats, SpeculationPolicy
except ImportError as exc:  # pragma: no cover - exercised only where max is missing
    _MAX_IMPORT_ERROR: ImportError | None = exc
    DTYPES = ("float32", "bfloat16")
else:
    _MAX_IMPORT_ERROR = None

DEVICES = ("auto", "cpu", "gpu")
#: Folders of artifacts written by ``max-whisper compile --export`` (several separated by ``os.pathsep``,
#: e.g. one export per dtype): the graphs are loaded from them instead of being compiled (the backend
#: option ``precompiled`` wins over this variable).
PRECOMPILED_ENV = "MAX_WHISPER_PRECOMPILED"


class EncodedWindow(NamedTuple):
    """What the encoder graph made from one log-mel: the audio features (the torch tensor handed to
    whisper) and, kept on the device, every block's cross K/V (exact, and in the layouts of the
    plan's single-row decoder, the CPU's draft or the GPU's decoder step)."""

    mel: torch.Tensor
    features: torch.Tensor
    cross_kv: list[Buffer]
    row_cross_kv: list[Buffer]


def select_device(device: str) -> str:
    """``--device auto|cpu|gpu`` -> "cpu" or "gpu" (auto: a MAX accelerator where there is one)."""
    if device not in DEVICES:
        raise UsageError(f"unknown --device {device!r}; choose one of {', '.join(DEVICES)}")
    gpus = accelerator_count()
    if device == "gpu" and gpus == 0:
        raise BackendUnavailableError("--device gpu asks for a MAX accelerator, but none was found on this machine")
    return "gpu" if device == "gpu" or (device == "auto" and gpus > 0) else "cpu"


class MaxBackend(Backend):
    """Encoder and decoder (with KV cache) as MAX graphs on MAX's CPU or an accelerator.

    Options: ``device`` (auto | cpu | gpu), ``dtype`` of the decoder weights (float32: token-identical
    to the cpu backend; bfloat16: half the bytes), ``speculate`` (greedy bursts with the 4-bit draft
    decoder; the CPU plan only), ``capture`` (on a GPU, replay each window's decoder step as a
    captured device graph: one launch per token instead of one per kernel), ``device_greedy`` (the
    GPU plan: greedy decoding picks each token on the device, :mod:`.choice`), ``precompiled`` (a
    folder from ``max-whisper compile --export``, or several separated by ``os.pathsep``: MAX reads
    their artifacts as one set),
    ``plan`` (the graph set of another device run on this one: ``plan="gpu"`` with ``device="cpu"``
    runs the GPU plan on MAX's CPU device, which checks it where there is no GPU; see
    :class:`.graphs.GraphPlan`).
    """

    capabilities = Capabilities(word_timestamps=False, devices=DEVICES, dtypes=DTYPES)

    name = "max"
    batched_token_logic = True

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        threads: int | None = None,
        device: str = "auto",
        dtype: str = "float32",
        speculate: bool = True,
        capture: bool = True,
        device_greedy: bool = True,
        precompiled: str | None = None,
        plan: str | None = None,
    ) -> None:
        if _MAX_IMPORT_ERROR is not None:
            raise BackendUnavailableError(
                f"the max backend needs the MAX engine (pip install max): {_MAX_IMPORT_ERROR}"
            )
        if dtype not in DTYPES:
            raise UsageError(f"unknown dtype {dtype!r} for the max backend; choose one of {', '.join(DTYPES)}")
        super().__init__(model, threads=threads)
        self.device_name = select_device(device)
        try:
            self.plan = GraphPlan(plan or self.device_name, dtype, runs_on=self.device_name)
        except ValueError as exc:  # an unknown plan, or the CPU's on a GPU
            raise UsageError(str(exc)) from exc
        self.dtype = dtype
        self.speculate = bool(speculate) and self.plan.draft
        self.speculation = SpeculationPolicy()
        # device graphs exist on a GPU only (MAX: "No graph-capture devices available" on the CPU)
        self.capture = bool(capture) and self.plan.step and self.device_name == "gpu"
        self.capture_keys = itertools.count(1)
        self.device_greedy = bool(device_greedy)
        # whisper's token logic: one torch thread, off MAX's CPU kernels; beside a GPU too, where its
        # small per-step tensors run faster on one thread than on a pool (docs/performance.md, entry 37).
        # The log-mel: one thread on the CPU device (torch's pool, once woken, slows MAX's graphs by
        # 1-3 s on a long beam run here), all of them beside a GPU (0.17 -> 0.03 s on the H100 host)
        self.host_torch_threads = 1
        self.mel_torch_threads = 1 if self.device_name == "cpu" else None
        given = precompiled or os.environ.get(PRECOMPILED_ENV) or ""
        folders = [folder for folder in given.split(os.pathsep) if folder]
        for folder in folders:
            if not os.path.isdir(folder):
                raise UsageError(f"precompiled graphs: {folder} is not a folder")
        self.precompiled = os.pathsep.join(folders) or None
        self._inference_stats: list[DecoderStats] = []
        with self.timer.stage("load"):
            checkpoint_path = resolve_checkpoint(model)
            checkpoint = load_checkpoint(checkpoint_path)
            self.dims = ModelDimensions(**checkpoint["dims"])
            self.tokenizer = get_tokenizer(self.is_multilingual, num_languages=self.num_languages)
            self.plan = plan_for_checkpoint(self.plan, checkpoint["model_state_dict"])
            arrays = plan_arrays(checkpoint["model_state_dict"], self.plan)
            self.driver_device = Accelerator() if self.device_name == "gpu" else CPU()
            # MAX 26.7 creates its CPU device at import time with the default thread
            # count (one per core); asking the session for another count aborts the
            # process, so --threads sets PyTorch's threads only (see docs/performance.md).
            self.session = InferenceSession(devices=[self.driver_device], precompiled_mefs=folders or None)
            self.weights = WeightSource(arrays, self.plan.device_ref)
        graphs = MaxWhisperGraphs(self.dims, self.weights, self.tokenizer.timestamp_begin, self.plan)
        # exported artifacts (precompiled) replace the store of compiled graphs
        store = None
        if self.precompiled is None:
            store = ArtifactStore.for_graphs(self.dims, self.tokenizer.timestamp_begin, self.plan, self.driver_device)
        # graphs the store lacks are compiled by worker processes (compile_workers), which compile the
        # plan of their device: not for the GPU plan run on MAX's CPU
        workers = None
        if workers_enabled() and self.plan.target == self.plan.device:
            workers = functools.partial(compile_in_workers, checkpoint_path, self.plan.device, self.plan.dtype)
        self.models = LoadedGraphs(graphs, self.session, store, self.timer, workers)
        # what every run uses; the draft (greedy, CPU) and the cache reorder (beams and best-of, GPU) on first use
        self.models.preload("encoder", "decoder", *(("decoder_step",) if self.plan.step else ()))
        self._window: EncodedWindow | None = None  # the last window the encoder graph ran on

    # -- host <-> MAX device ------------------------------------------------------------
    def to_device(self, array: np.ndarray) -> Buffer:
        buffer = Buffer.from_numpy(np.ascontiguousarray(array))
        return buffer if self.device_name == "cpu" else buffer.to(self.driver_device)

    def to_numpy(self, buffer: Buffer) -> np.ndarray:
        if self.device_name != "cpu":
            buffer = buffer.to(CPU())
        return buffer.to_numpy()

    def to_torch(self, buffer: Buffer) -> torch.Tensor:
        return torch.from_numpy(np.array(self.to_numpy(buffer), copy=True))

    # -- the Backend seam ---------------------------------------------------------------
    def encode(self, mel: torch.Tensor) -> torch.Tensor:
        """The audio features; the cross K/V the same graph made from them wait on the device for
        :meth:`cross_kv` (whisper hands the decoder this very tensor).

        The same log-mel as the last call's (whisper decodes a window again at each fallback
        temperature, and its language detection encodes the first window before transcribing
        it) gets the same features tensor back, without running the encoder again."""
        self.check_mel(mel)
        if self._window is not None and torch.equal(self._window.mel, mel):
            return self._window.features
        with self.timer.stage("encode"):
            features, *buffers = self.models["encoder"].execute(self.to_device(mel.float().cpu().numpy()))
            self._window = EncodedWindow(mel.detach().clone(), self.to_torch(features), *self._split_cross_kv(buffers))
            return self._window.features

    def inference(self, initial_token_length: int) -> MaxInference:
        inference = MaxInference(self, initial_token_length)
        self._inference_stats.append(inference.stats)
        return inference

    def cross_kv(self, audio_features: torch.Tensor) -> tuple[list[Buffer], list[Buffer]]:
        """Every decoder block's cross-attention keys and values, once per window: ([k_0, v_0, ...] in
        the exact decoder's layouts, the same in the layouts of the plan's single-row decoder: the
        draft's on the CPU, the decoder step's on a GPU)."""
        expected = (self.dims.n_audio_ctx, self.dims.n_audio_state)
        if audio_features.ndim != 3 or tuple(audio_features.shape[1:]) != expected:
            raise InputShapeError(
                f"audio features must have shape (batch, {expected[0]}, {expected[1]}), "
                f"got {tuple(audio_features.shape)}"
            )
        if self._window is not None and self._window.features is audio_features:
            return self._window.cross_kv, self._window.row_cross_kv
        # features from elsewhere (whisper's decode accepts them): the encoder's second half alone
        buffers = list(self.models["cross_kv"].execute(self.to_device(audio_features.float().cpu().numpy())))
        return self._split_cross_kv(buffers)

    def _split_cross_kv(self, buffers: list[Buffer]) -> tuple[list[Buffer], list[Buffer]]:
        """Every plan has a single-row decoder (the draft or the decoder step), so both sets are there."""
        n_kv = 2 * self.dims.n_text_layer
        return buffers[:n_kv], buffers[n_kv:]

    # -- what the decoders counted --------------------------------------------------------
    def decoder_stats(self) -> DecoderStats:
        """The counters of every decoder handed out since the backend was made (or reset)."""
        total = DecoderStats()
        for stats in self._inference_stats:
            total.add(stats)
        return total

    def reset_decoder_stats(self) -> None:
        self._inference_stats = []

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(
            device=self.device_name,
            plan=self.plan.device,
            dtype=self.dtype,
            float16_panels=self.plan.panels,
            graphs=list(self.plan.graph_names),
            graphs_loaded=self.models.loaded,
            graph_store=None if self.models.store is None else str(self.models.store.folder),
            precompiled=self.precompiled,
            speculate=self.speculate,
            capture=self.capture,
            device_greedy=self.device_greedy,
            lookahead=self.speculation.lookahead,
            min_draft_margin=self.speculation.min_margin,
            decoder_counters=self.decoder_stats().as_dict(),  # since the backend was made, warm-up included
        )
        if self.device_name == "gpu" and torch.cuda.is_available():
            # the card's own reading: capturing the decoder step takes nearly all of the free memory,
            # which MAX's counters (driver_device.stats) do not show (docs/performance.md, entry 37)
            info["gpu_name"] = torch.cuda.get_device_name(0)
            free, total = torch.cuda.mem_get_info(0)
            info["gpu_memory_used_bytes"] = int(total - free)  # the whole card's, every process's
        return info


BACKEND = MaxBackend
