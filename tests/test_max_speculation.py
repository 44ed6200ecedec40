"""The max backend's speculative greedy decoding: guesses decide what is computed ahead, never what is chosen."""

from __future__ import annotations

from typing import Any, List

import numpy as np
import pytest

from max_whisper.audio import load_audio
from max_whisper.config import SHARED_AUDIO_DIR
from max_whisper.decoding import transcribe
from max_whisper.max_weights import dequantize_q4_0, draft_embedding, quantize_q4_0

CLIPS = [SHARED_AUDIO_DIR / "jfk.flac", SHARED_AUDIO_DIR / "librispeech_1089-134686-0000.flac"]


def test_q4_0_round_trip_error_is_within_one_step() -> None:
    rng = np.random.default_rng()
    weight = rng.standard_normal((64, 384)).astype(np.float32)
    packed = quantize_q4_0(weight)
    assert packed.shape == (64, 384 // 32 * 18) and packed.dtype == np.uint8
    restored = dequantize_q4_0(packed, 384)
    blocks = np.abs(weight.reshape(64, 12, 32)).max(axis=-1, keepdims=True)
    step = blocks / 8.0  # one quantization step of each block
    error = np.abs(restored - weight).reshape(64, 12, 32)
    # half a step from rounding; a full step where the value opposite the largest one is clipped at 15
    assert np.all(error <= step * 1.001), f"max error {error.max():.4f} above one step"
    assert np.median(error / step) < 0.3


def test_draft_embedding_pads_rows_with_the_last_token() -> None:
    embedding = np.random.default_rng().standard_normal((70, 64)).astype(np.float32)
    packed = draft_embedding(embedding)
    assert packed.shape[0] == 96
    assert np.array_equal(packed[70:], np.repeat(packed[69:70], 26, axis=0))


def _tokens(result: dict) -> List[List[int]]:
    return [list(s["tokens"]) for s in result["segments"]]


@pytest.mark.max
@pytest.mark.parametrize("clip", CLIPS, ids=lambda p: p.stem)
def test_speculative_and_step_by_step_decoding_choose_the_same_tokens(clip: Any, max_backend: Any) -> None:
    if not clip.is_file():
        pytest.skip(f"{clip} not available")
    audio = load_audio(clip)
    max_backend.stats.clear()
    fast = transcribe(max_backend, audio, temperature=0.0)
    stats = dict(max_backend.stats)
    max_backend.speculate = False
    try:
        slow = transcribe(max_backend, audio, temperature=0.0)
    finally:
        max_backend.speculate = True
    assert _tokens(fast) == _tokens(slow)
    # the bursts did their job: several logits rows served per vocabulary pass
    assert stats["bursts"] > 0 and stats["rows_served"] >= 2 * stats["bursts"], stats
