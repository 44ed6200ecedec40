"""The GPU plan's graphs and decoding, run on MAX's CPU device: the check of ``--device gpu`` that needs no GPU.

``MaxBackend(device="cpu", plan="gpu")`` builds the GPU's graph set (no 4-bit draft, one exact decoder pass
per token, the cache reordered by the ``reorder`` graph, optional bfloat16 decoder weights) for the CPU and
decodes with it exactly as on a GPU. What only a GPU can show (its kernels, the host <-> device copies) is
left to ``tests/test_max_gpu.py``; everything else is asserted here, with the thresholds of that file:
float32 token-identical to the cpu backend in greedy and beam search, bfloat16 within 1 % token error.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import torch

from conftest import shared_clip
from max_whisper.audio import load_audio
from max_whisper.config import SHARED_AUDIO_DIR
from max_whisper.decoding import transcribe
from test_max_gpu import BF16_TOKEN_ERROR, edit_distance, tokens_of

pytestmark = pytest.mark.max

JFK = "jfk.flac"
CLIPS = [JFK, *sorted(p.name for p in SHARED_AUDIO_DIR.glob("librispeech_*.flac"))[:2]]
GREEDY = {"temperature": 0.0, "beam_size": None, "best_of": None}
BEAM5 = {"temperature": 0.0, "beam_size": 5}


@pytest.fixture(scope="module")
def gpu_plan_backends(max_report: Any) -> dict:
    from max_whisper.backends.whisper_max.backend import MaxBackend

    backends = {}
    for dtype in ("float32", "bfloat16"):
        start = time.perf_counter()
        backends[dtype] = MaxBackend("tiny.en", device="cpu", plan="gpu", dtype=dtype)
        label = f"MaxBackend(device=cpu, plan=gpu, dtype={dtype}) load + compile"
        max_report.record_time(label, time.perf_counter() - start)
    return backends


def _transcribe(backend: Any, clip: str, options: dict) -> dict:
    audio = load_audio(shared_clip(clip))
    torch.manual_seed(0)
    return transcribe(backend, audio, language="en", **options)


def test_the_gpu_plan_has_no_draft_and_reorders_with_its_graph(gpu_plan_backends: dict) -> None:
    backend = gpu_plan_backends["float32"]
    info = backend.describe()
    assert (info["device"], info["plan"]) == ("cpu", "gpu")
    assert not backend.speculate and "draft" not in info["graphs"] and "reorder" in info["graphs"]
    assert "decoder_step" in info["graphs_loaded"] and info["capture"] is False  # no device graphs on the CPU


@pytest.mark.parametrize("n_rows", [1, 3])
def test_decoder_step_matches_the_decoder_pass(gpu_plan_backends: dict, n_rows: int) -> None:
    """The fixed-shape ``decoder_step`` (position on the device, the whole cache attended with the later
    positions masked, multiply-and-sum products) against the ``decoder`` pass of the same token at the
    same position: the same logits and the same keys and values written into the cache."""
    import numpy as np
    import whisper

    from max_whisper.backends.whisper_max.inference import DecoderStep

    backend = gpu_plan_backends["float32"]
    audio = torch.from_numpy(load_audio(shared_clip(JFK)))
    mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(audio))[None]
    features = backend.encode(mel)
    prompt = torch.tensor([list(backend.tokenizer.sot_sequence_including_notimestamps)] * n_rows)
    tokens = torch.randint(0, 50000, (n_rows, 4), generator=torch.Generator().manual_seed(n_rows))
    results = []
    for use_step in (False, True, True, True):  # the step three times: a stale input shows up as a flaky mismatch
        inference = backend.inference(prompt.shape[1])
        inference.logits(prompt, features)  # the prompt, by the decoder graph, fills the cache
        logits = []
        for i in range(tokens.shape[1]):
            position = inference.n_past
            if use_step:
                if inference.step is None:
                    inference.step = DecoderStep(backend, inference.cache, inference.row_cross_kv, n_rows)
                logits.append(inference.step(tokens[:, i : i + 1].numpy(), position).numpy())
                inference.n_past += 1
            else:
                out = inference._pass(tokens[:, i : i + 1].numpy(), position, rows=[0])
                logits.append(backend.to_numpy(out).copy())
        held = inference.n_past
        caches = [backend.to_numpy(c)[..., :held, :] if k % 2 == 0 else backend.to_numpy(c)[..., :held]
                  for k, c in enumerate(inference.cache)]  # fmt: skip
        results.append((np.stack(logits), caches))
        inference.cleanup_caching()
    (ref_logits, ref_cache), *steps = results
    scale = np.abs(ref_logits).max()
    for step_logits, step_cache in steps:
        assert np.abs(step_logits - ref_logits).max() <= 1e-4 * scale
        for ref, ours in zip(ref_cache, step_cache, strict=True):
            assert np.abs(ours - ref).max() <= 1e-4 * max(np.abs(ref).max(), 1.0)


@pytest.mark.parametrize("clip", CLIPS)
def test_float32_greedy_token_identical_to_cpu(clip: str, cpu_backend: Any, gpu_plan_backends: dict) -> None:
    ref = _transcribe(cpu_backend, clip, GREEDY)
    ours = _transcribe(gpu_plan_backends["float32"], clip, GREEDY)
    assert tokens_of(ours) == tokens_of(ref)


def test_without_timestamps_greedy_token_identical_to_cpu(cpu_backend: Any, gpu_plan_backends: dict) -> None:
    """Greedy without timestamps: the device's choice has its timestamp rule off."""
    options = GREEDY | {"without_timestamps": True}
    ref = _transcribe(cpu_backend, JFK, options)
    ours = _transcribe(gpu_plan_backends["float32"], JFK, options)
    assert tokens_of(ours) == tokens_of(ref)


def test_the_device_greedy_choice_is_whispers_on_the_steps_logits(
    gpu_plan_backends: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each step's token and log-probability, picked in the ``decoder_step`` graph, against whisper's own
    filters and greedy decoder applied to the logits the same step returned, with the step's history:
    the same token, the log-probability within 1e-4 (entry 40: torch's CPU log_softmax is itself ~3e-5
    off). The clips' steps include timestamp pairs and steps where the timestamp rules turn a text
    choice into a timestamp."""
    import numpy as np
    from whisper.decoding import ApplyTimestampRules, GreedyDecoder, SuppressTokens

    from max_whisper.backends.whisper_max.inference import DecoderStep
    from max_whisper.decoding import BackendDecodingTask
    from max_whisper.token_strategies import GreedyMasks

    backend = gpu_plan_backends["float32"]
    steps: list[dict] = []
    tasks: list[BackendDecodingTask] = []
    ranges, run, loop = GreedyMasks.ranges, DecoderStep._run, BackendDecodingTask._device_greedy_loop

    def recorded_ranges(self: GreedyMasks, tokens: list[list[int]]) -> np.ndarray:
        steps.append({"task": tasks[-1], "history": [list(row) for row in tokens]})
        return ranges(self, tokens)

    def recorded_run(self: DecoderStep, *args: Any) -> list:
        outputs = run(self, *args)
        steps[-1]["outputs"] = [backend.to_numpy(o).copy() for o in outputs]
        return outputs

    def recorded_loop(self: BackendDecodingTask, *args: Any) -> Any:
        tasks.append(self)
        return loop(self, *args)

    monkeypatch.setattr(GreedyMasks, "ranges", recorded_ranges)
    monkeypatch.setattr(DecoderStep, "_run", recorded_run)
    monkeypatch.setattr(BackendDecodingTask, "_device_greedy_loop", recorded_loop)
    for clip in CLIPS[:2]:
        _transcribe(backend, clip, GREEDY)
    assert len(steps) > 20

    rule_picked_time = 0
    for step in steps:
        task, history = step["task"], torch.tensor(step["history"])
        logits_out, token, logprob = step["outputs"]
        logits = torch.from_numpy(logits_out[:, 0].copy())
        for f in task.logit_filters:  # whisper's own classes for the batched twins
            if isinstance(f, ApplyTimestampRules):
                f = ApplyTimestampRules(f.tokenizer, f.sample_begin, f.max_initial_timestamp_index)
            elif isinstance(f, SuppressTokens):
                f = SuppressTokens(f.suppress_tokens)
            before = logits.clone()
            f.apply(logits, history)
            if isinstance(f, ApplyTimestampRules):
                text_before = before.argmax(-1) < f.tokenizer.timestamp_begin
                rule_picked_time += int((text_before & (logits.argmax(-1) >= f.tokenizer.timestamp_begin)).sum())
        sum_logprobs = torch.zeros(len(history))
        tokens, _ = GreedyDecoder(0.0, task.tokenizer.eot).update(history, logits, sum_logprobs)
        assert token.tolist() == tokens[:, -1].tolist()
        assert np.abs(logprob - sum_logprobs.numpy()).max() <= 1e-4
    assert rule_picked_time > 0, "no step where whisper's timestamp rules turned a text choice into a timestamp"


def test_float32_beam_search_token_identical_to_cpu(cpu_backend: Any, gpu_plan_backends: dict) -> None:
    """Beam search: the prompt run once and copied to the 5 rows, and every reorder, by the ``reorder`` graph."""
    backend = gpu_plan_backends["float32"]
    ref = _transcribe(cpu_backend, JFK, BEAM5)
    loaded_before = "reorder" in backend.describe()["graphs_loaded"]
    ours = _transcribe(backend, JFK, BEAM5)
    assert tokens_of(ours) == tokens_of(ref)
    assert loaded_before or "reorder" in backend.describe()["graphs_loaded"]


def test_bfloat16_token_error_within_one_percent(cpu_backend: Any, gpu_plan_backends: dict) -> None:
    errors = total = 0
    for clip in CLIPS:
        ref = [t for seg in tokens_of(_transcribe(cpu_backend, clip, GREEDY)) for t in seg]
        ours = [t for seg in tokens_of(_transcribe(gpu_plan_backends["bfloat16"], clip, GREEDY)) for t in seg]
        errors += edit_distance(ours, ref)
        total += len(ref)
    assert total > 0
    assert errors / total <= BF16_TOKEN_ERROR, f"{errors} of {total} tokens differ"


def test_a_plan_is_checked_before_anything_loads() -> None:
    from max_whisper.backends.whisper_max.backend import MaxBackend
    from max_whisper.backends.whisper_max.graphs import GraphPlan
    from max_whisper.errors import UsageError

    with pytest.raises(UsageError, match="unknown graph plan 'tpu'; choose one of cpu, gpu"):
        MaxBackend("tiny.en", device="cpu", plan="tpu")
    with pytest.raises(ValueError, match="the cpu plan runs only on the CPU"):
        GraphPlan("cpu", runs_on="gpu")
    plan = GraphPlan("gpu", runs_on="cpu")
    assert (plan.target, plan.draft, str(plan.device_ref.device_type)) == ("cpu", False, "cpu")
    assert "reorder" in plan.transcription_graphs and "draft" not in plan.transcription_graphs
    assert plan.step and "decoder_step" in plan.transcription_graphs and not GraphPlan("cpu").step
