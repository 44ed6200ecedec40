"""The max backend's speculative greedy decoding: the draft decoder's guesses decide what is computed
ahead, never what is chosen."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from max_whisper.audio import load_audio
from max_whisper.backends.whisper_max.weights import (
    DRAFT_EMBEDDING,
    TOKEN_EMBEDDING,
    TOKEN_EMBEDDING_T,
    dequantize_q4_0,
    draft_embedding,
    draft_name,
    fused_qkv_name,
    is_draft_matrix,
    quantize_q4_0,
    state_dict_arrays,
)
from max_whisper.config import SHARED_AUDIO_DIR
from max_whisper.decoding import transcribe

CLIPS = [SHARED_AUDIO_DIR / "jfk.flac", SHARED_AUDIO_DIR / "librispeech_1089-134686-0000.flac"]


def test_q4_0_round_trip_error_is_within_one_step() -> None:
    rng = np.random.default_rng(20261127)
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


@pytest.mark.parametrize("rows_at_once", [1, 7, 64])
def test_q4_0_by_row_chunks_matches_the_whole_matrix_at_once(rows_at_once: int) -> None:
    """The quantizer works ``rows_at_once`` rows at a time (a bound on its temporaries): every chunk
    size, one that leaves a partial last chunk included, packs the same bytes as one chunk."""
    weight = np.random.default_rng(64).standard_normal((50, 96)).astype(np.float32)
    weight[3, 32:64] = 0.0  # a block of zeros: scale 0, every q = 8
    whole = quantize_q4_0(weight, rows_at_once=len(weight))
    assert np.array_equal(quantize_q4_0(weight, rows_at_once=rows_at_once), whole)
    assert np.array_equal(quantize_q4_0(weight.T.copy().T, rows_at_once=rows_at_once), whole), "a strided view"


def test_draft_embedding_pads_rows_with_the_last_token() -> None:
    embedding = np.random.default_rng(70).standard_normal((70, 64)).astype(np.float32)
    packed = draft_embedding(embedding)
    assert packed.shape[0] == 96
    assert np.array_equal(packed[70:], np.repeat(packed[69:70], 26, axis=0))


def test_draft_copies_cover_every_matrix_the_draft_step_reads(checkpoint: dict) -> None:
    """4-bit copies of the decoder blocks' per-token matrices, nothing else (the cross-attention
    keys/values are computed once per window in float32; layer norms and biases stay float32); each
    self-attention's query, key and value as one stacked copy, with their biases (the key's zeros)."""
    state_dict = checkpoint["model_state_dict"]
    arrays = state_dict_arrays(state_dict)
    drafted = sorted(name for name in state_dict if is_draft_matrix(name))
    n_layer = checkpoint["dims"]["n_text_layer"]
    per_block = [
        "attn.out",
        "cross_attn.query",
        "cross_attn.out",
        "mlp.0",
        "mlp.2",
    ]
    assert drafted == sorted(f"decoder.blocks.{i}.{m}.weight" for i in range(n_layer) for m in per_block)
    for name in drafted:
        rows, cols = state_dict[name].shape
        assert arrays[draft_name(name)].shape == (rows, cols // 32 * 18) and arrays[draft_name(name)].dtype == np.uint8
    for i in range(n_layer):
        attn = f"decoder.blocks.{i}.attn"
        parts = [state_dict[f"{attn}.{m}.weight"].float().numpy() for m in ("query", "key", "value")]
        fused = fused_qkv_name(attn)
        assert np.array_equal(arrays[draft_name(f"{fused}.weight")], quantize_q4_0(np.concatenate(parts)))
        assert draft_name(f"{attn}.query.weight") not in arrays
        state = parts[0].shape[0]
        bias = arrays[f"{fused}.bias"]
        assert bias.dtype == np.float32 and bias.shape == (3 * state,)
        assert np.array_equal(bias[:state], state_dict[f"{attn}.query.bias"].float().numpy())
        assert not bias[state : 2 * state].any()
        assert np.array_equal(bias[2 * state :], state_dict[f"{attn}.value.bias"].float().numpy())
    assert DRAFT_EMBEDDING in arrays
    assert not any(name.startswith("encoder.") and name.endswith(".q4_0") for name in arrays)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_registry_holds_the_token_embedding_transposed(checkpoint: dict, dtype: str) -> None:
    """One copy of the embedding, float32 for both decoder types (logits rounded to bfloat16 change
    tokens), (state, n_vocab) and contiguous (the layout the logits matmul reads fastest); the draft's
    4-bit embedding is made from it in whisper's row order. A bfloat16 decoder's block matrices are
    bfloat16."""
    import torch

    state = checkpoint["model_state_dict"]
    embedding = state[TOKEN_EMBEDDING]
    arrays = state_dict_arrays(state, decoder_dtype=dtype)
    assert TOKEN_EMBEDDING not in arrays
    held = arrays[TOKEN_EMBEDDING_T]
    assert held.dtype == np.float32 and held.flags["C_CONTIGUOUS"]
    assert np.array_equal(held, embedding.float().numpy().T)
    assert np.array_equal(
        arrays[DRAFT_EMBEDDING][: embedding.shape[0]],
        draft_embedding(embedding.float().numpy())[: embedding.shape[0]],
    )
    block_matrix = arrays["decoder.blocks.0.mlp.0.weight"]
    if dtype == "bfloat16":
        assert block_matrix.dtype == torch.bfloat16
        assert torch.equal(block_matrix, state["decoder.blocks.0.mlp.0.weight"].to(torch.bfloat16))
    else:
        assert block_matrix.dtype == np.float32


def _tokens(result: dict) -> list[list[int]]:
    return [list(s["tokens"]) for s in result["segments"]]


def _greedy_with(backend: Any, audio: Any, **attributes: bool) -> dict:
    """Greedy transcription with the backend's ``attributes`` set for the call (then restored)."""
    saved = {name: getattr(backend, name) for name in attributes}
    for name, value in attributes.items():
        setattr(backend, name, value)
    try:
        return transcribe(backend, audio, temperature=0.0)
    finally:
        for name, value in saved.items():
            setattr(backend, name, value)


@pytest.mark.max
@pytest.mark.parametrize("clip", CLIPS, ids=lambda p: p.stem)
def test_speculative_and_step_by_step_decoding_choose_the_same_tokens(clip: Any, max_backend: Any) -> None:
    if not clip.is_file():
        pytest.skip(f"{clip} not available")
    audio = load_audio(clip)
    max_backend.reset_decoder_stats()
    fast = transcribe(max_backend, audio, temperature=0.0)
    stats = max_backend.decoder_stats().as_dict()
    slow = _greedy_with(max_backend, audio, speculate=False)
    assert _tokens(fast) == _tokens(slow)
    # the tokens were chosen by the choice graph, from the bursts' rows and from each exact pass; whisper's
    # own filters and greedy decoder on the host, given the bursts' logits rows, choose the same
    assert "choice" in max_backend.models.loaded
    assert _tokens(_greedy_with(max_backend, audio, device_greedy=False)) == _tokens(fast)
    # the bursts did their job: several logits rows served per float32 pass
    assert stats["bursts"] > 0 and stats["rows_served"] >= 2 * stats["bursts"], stats
    # and the 4-bit draft is a good guesser: most guesses it drafted were served
    guesses = stats["burst_rows"] - stats["bursts"]
    assert stats["rows_served"] - stats["bursts"] >= 0.7 * guesses, stats
