"""The max backend on a GPU: float32 token-identical to the cpu backend (greedy and beam search), bfloat16
within 1 % token error.

These run where PyTorch sees CUDA and MAX sees an accelerator, and are skipped elsewhere with the
reason. ``MAX_WHISPER_PRECOMPILED`` (folders from ``max-whisper compile --target ... --export``, one
per ``--dtype``, joined by ``os.pathsep``: both decoder types are built here) lets the GPU backends
load their graphs instead of compiling them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import torch

from max_whisper.audio import load_audio
from max_whisper.config import SHARED_AUDIO_DIR
from max_whisper.decoding import transcribe

JFK = SHARED_AUDIO_DIR / "jfk.flac"
LIBRISPEECH = sorted(SHARED_AUDIO_DIR.glob("librispeech_*.flac"))
LONGFORM = SHARED_AUDIO_DIR / "longform_ljspeech_LJ001-0001_to_0032.flac"
CLIPS = [pytest.param(JFK, id=JFK.stem)] + [pytest.param(p, id=p.stem) for p in LIBRISPEECH]
#: bfloat16 decoder weights: at most this fraction of the cpu backend's tokens may differ (edit distance).
BF16_TOKEN_ERROR = 0.01


def gpu_missing() -> str:
    """Why the GPU tests cannot run here ('' when they can)."""
    if not torch.cuda.is_available():
        return "no CUDA device visible to PyTorch"
    try:
        from max.driver import accelerator_count
    except ImportError as exc:
        return f"the MAX engine is not installed: {exc}"
    if accelerator_count() == 0:
        return "MAX sees no accelerator"
    return ""


_MISSING = gpu_missing()
pytestmark = [
    pytest.mark.max,
    pytest.mark.gpu,
    pytest.mark.skipif(bool(_MISSING), reason=_MISSING or "a GPU is present"),
]


@pytest.fixture(scope="module")
def gpu_backends(max_report: Any) -> dict:
    from max_whisper.backends.whisper_max.backend import MaxBackend

    backends = {}
    for dtype in ("float32", "bfloat16"):
        start = time.perf_counter()
        backends[dtype] = MaxBackend("tiny.en", device="gpu", dtype=dtype)
        max_report.record_time(f"MaxBackend(device=gpu, dtype={dtype}) load + compile", time.perf_counter() - start)
    return backends


def tokens_of(result: dict) -> list:
    return [list(segment["tokens"]) for segment in result["segments"]]


def edit_distance(a: list, b: list) -> int:
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def _transcribe(backend: Any, path: Path, **options: Any) -> dict:
    if not path.is_file():
        pytest.skip(f"{path} not available")
    torch.manual_seed(0)
    return transcribe(backend, load_audio(path), **options)


@pytest.mark.parametrize("clip", [*CLIPS, pytest.param(LONGFORM, id=LONGFORM.stem, marks=pytest.mark.slow)])
def test_float32_greedy_token_identical_to_cpu(clip: Path, cpu_backend: Any, gpu_backends: dict) -> None:
    backend = gpu_backends["float32"]
    assert backend.describe()["device"] == "gpu" and "draft" not in backend.describe()["graphs"]
    ours = _transcribe(backend, clip, temperature=0.0)
    ref = _transcribe(cpu_backend, clip, temperature=0.0)
    assert tokens_of(ours) == tokens_of(ref), f"max gpu {ours['text']!r} != cpu {ref['text']!r}"


def test_the_decoder_step_is_replayed_from_a_captured_device_graph(gpu_backends: dict) -> None:
    backend = gpu_backends["float32"]
    _transcribe(backend, JFK, temperature=0.0)
    info = backend.describe()
    assert "decoder_step" in info["graphs_loaded"] and info["decoder_counters"]["steps"] > 0
    assert info["capture"], "MAX refused to capture the decoder step: it ran eagerly (see the logged warning)"
    # the card's memory in use is reported (with capture nearly all of it: docs/performance.md, entry 37)
    assert 0 < info["gpu_memory_used_bytes"] <= torch.cuda.mem_get_info(0)[1]


def test_bfloat16_token_error_within_one_percent(cpu_backend: Any, gpu_backends: dict, max_report: Any) -> None:
    errors = total = 0
    for clip in [JFK, *LIBRISPEECH]:
        ours = sum(tokens_of(_transcribe(gpu_backends["bfloat16"], clip, temperature=0.0)), [])
        ref = sum(tokens_of(_transcribe(cpu_backend, clip, temperature=0.0)), [])
        errors += edit_distance(ours, ref)
        total += len(ref)
    max_report.record_parity("bfloat16 decoder: token error vs cpu", errors / max(total, 1), BF16_TOKEN_ERROR)
    assert total > 0 and errors / total <= BF16_TOKEN_ERROR, f"{errors} of {total} tokens differ"


BEAM_CLIPS = [pytest.param(JFK, id=JFK.stem)] + [pytest.param(p, id=p.stem) for p in LIBRISPEECH[:2]]


@pytest.mark.parametrize("clip", [*BEAM_CLIPS, pytest.param(LONGFORM, id=LONGFORM.stem, marks=pytest.mark.slow)])
def test_float32_beam_search_token_identical_to_cpu(clip: Path, cpu_backend: Any, gpu_backends: dict) -> None:
    """Beam 5 chooses among near-equal scores, so it needs float32 products throughout: the split
    products of the encoder and the prompt pass (``layers.SplitProduct``), the step's multiply-and-sum."""
    options = {"temperature": 0.0, "beam_size": 5, "best_of": 5}
    ours = _transcribe(gpu_backends["float32"], clip, **options)
    ref = _transcribe(cpu_backend, clip, **options)
    assert tokens_of(ours) == tokens_of(ref), f"max gpu {ours['text']!r} != cpu {ref['text']!r}"
