"""Parity of the ``max`` backend with openai-whisper's PyTorch modules (same tiny.en weights).

Every comparison is a relative error, ``max |max - torch| / max |torch|`` over the whole output, asserted
against :data:`REL_TOL` (fp32). Inputs are random (seeded per test from its name, the seed printed in
every assertion message; set ``MAX_WHISPER_TEST_SEED`` to try another) and real log-mel from
``../shared/audio``.

Whole-model checks go through the backend's public surface (``encode``, ``cross_kv``,
``inference(n).logits`` / ``rearrange_kv_cache``). Per-block checks use one extra *probe* graph per side
(encoder, decoder), built from the :mod:`max_whisper.backends.whisper_max.layers` classes and compiled once per session,
whose outputs are the intermediate activations; the PyTorch twins are read with forward hooks.

The measured errors are printed in the session summary (``max backend parity``).
"""

from __future__ import annotations

import os
import time
import zlib
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from max_whisper.audio import load_audio
from max_whisper.config import SHARED_AUDIO_DIR
from max_whisper.errors import InputShapeError
from max_whisper.mel import N_SAMPLES, log_mel_spectrogram, pad_or_trim
from torch_hooks import Recorder

pytestmark = pytest.mark.max

#: fp32 bound on ``max |max - torch| / max |torch|`` for every output compared here.
REL_TOL = 1e-4
#: bound for the draft decoder's bfloat16 copy of the cross-attention K/V: an 8-bit significand, so the
#: cast moves a value by at most 2^-9 of itself when it rounds and 2^-8 when it truncates; 2^-7 leaves
#: room while a wrong layout or head order (errors of order 1) still fails.
BF16_TOL = 2.0**-7

SEED_ENV = "MAX_WHISPER_TEST_SEED"
JFK_TEXT = " And so my fellow Americans ask not what your country can do for you"


# -- helpers ----------------------------------------------------------------------------------------------


def as_numpy(x: Any) -> np.ndarray:
    """A torch tensor or MAX Buffer as a float64 host array."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy().astype(np.float64)
    if isinstance(x, np.ndarray):
        return x.astype(np.float64)
    if not x.device.is_host:
        from max.driver import CPU

        x = x.to(CPU())
    from max.dtype import DType

    if x.dtype == DType.bfloat16:  # numpy has no bfloat16: widen through torch
        return torch.from_dlpack(x).float().numpy().astype(np.float64)
    return np.asarray(x.to_numpy(), dtype=np.float64)


def whisper_keys(k: Any) -> np.ndarray:
    """Keys as whisper holds them, (batch, ctx, state), from the backend's layout: as they are, or
    :func:`max_model.keys_transposed`'s head layout (batch, head, head_state, ctx)."""
    k = as_numpy(k)
    if k.ndim == 4:
        k = k.transpose(0, 3, 1, 2).reshape(k.shape[0], k.shape[3], -1)
    return k


def whisper_values(v: Any) -> np.ndarray:
    """Values as whisper holds them, (batch, ctx, state), from (batch, ctx, state) or
    :func:`max_model.split_heads`'s layout (batch, head, ctx, head_state)."""
    v = as_numpy(v)
    if v.ndim == 4:
        v = v.transpose(0, 2, 1, 3).reshape(v.shape[0], v.shape[2], -1)
    return v


def rel_err(actual: Any, ref: Any) -> float:
    """``max |actual - ref| / max |ref|`` (inf where ``actual`` has a non-finite value)."""
    a, r = as_numpy(actual), as_numpy(ref)
    assert a.shape == r.shape, f"shape {a.shape} != reference shape {r.shape}"
    if not np.isfinite(a).all():
        return float("inf")
    return float(np.max(np.abs(a - r)) / np.max(np.abs(r)))


class Parity:
    """Computes, records (for the session summary) and asserts one relative error."""

    def __init__(self, report: Any, context: str) -> None:
        self.report = report
        self.context = context

    def check(self, name: str, actual: Any, ref: Any, bound: float = REL_TOL) -> float:
        err = rel_err(actual, ref)
        self.report.record_parity(name, err, bound, self.context)
        assert err <= bound, f"{name}: relative error {err:.3e} > {bound:.0e} ({self.context})"
        return err


@pytest.fixture
def seed(request: pytest.FixtureRequest) -> int:
    """A fixed seed per test (from its name), unless MAX_WHISPER_TEST_SEED sets another."""
    return int(os.environ.get(SEED_ENV, zlib.crc32(request.node.nodeid.encode())))


@pytest.fixture
def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


@pytest.fixture
def random_parity(max_report: Any, seed: int) -> Parity:
    return Parity(max_report, f"[random input, seed {seed}; replay with {SEED_ENV}={seed}]")


@pytest.fixture
def real_parity(max_report: Any) -> Parity:
    return Parity(max_report, "[real mel]")


@pytest.fixture(scope="session")
def torch_model(cpu_backend: Any) -> Any:
    """openai-whisper's ``Whisper`` with the converted tiny.en weights (``models.load_model("tiny.en")``)."""
    return cpu_backend.torch_model


@pytest.fixture(scope="session")
def tokenizer(torch_model: Any) -> Any:
    from whisper.tokenizer import get_tokenizer

    return get_tokenizer(torch_model.is_multilingual, num_languages=torch_model.num_languages)


@pytest.fixture(scope="session")
def real_mel() -> dict[str, Any]:
    """(2, n_mels, 3000) log-mel of the first 30 s of jfk.flac and of the first LibriSpeech clip."""
    paths = [SHARED_AUDIO_DIR / "jfk.flac"] + sorted(SHARED_AUDIO_DIR.glob("librispeech_*.flac"))[:1]
    if len(paths) < 2 or not all(p.is_file() for p in paths):
        pytest.skip(f"real audio not available under {SHARED_AUDIO_DIR}")
    mels = [log_mel_spectrogram(torch.from_numpy(pad_or_trim(load_audio(p), N_SAMPLES))) for p in paths]
    return {"names": [p.name for p in paths], "mel": torch.stack(mels)}


@pytest.fixture(scope="session")
def real_features(torch_model: Any, real_mel: dict[str, Any]) -> torch.Tensor:
    """The reference encoder's output for :func:`real_mel` (the decoder tests' real audio features)."""
    with torch.no_grad():
        return torch_model.encoder(real_mel["mel"])


def check_logits(
    parity: Parity, name: str, got: torch.Tensor, ref: torch.Tensor, tokens: torch.Tensor, sot: int
) -> float:
    """Compare ``Inference.logits`` outputs on every row whisper reads.

    The shape must be whisper's, (batch, n_tokens, n_vocab), since whisper indexes rows by position. whisper
    reads the last row (the next token) and, on the first call, the start-of-transcript row (no-speech
    probability); the ``max`` backend computes only those rows of its first call (the others are zeros).
    """
    assert got.shape == ref.shape, f"{name}: logits shape {tuple(got.shape)} != whisper's {tuple(ref.shape)}"
    n = got.shape[1]
    read = {n - 1}
    if n == tokens.shape[-1]:  # the first call returns a row per token
        read |= {int(i) for i in (tokens[0] == sot).nonzero().flatten()[:1]}
    rows = sorted(read)
    assert torch.isfinite(got[:, rows]).all(), f"{name}: rows {rows} that whisper reads are not finite"
    skipped = "" if len(rows) == n else f" (rows {rows} of {n})"
    return parity.check(name + skipped, got[:, rows], ref[:, rows])


def random_mel(rng: np.random.Generator, batch: int, dims: Any) -> torch.Tensor:
    """Values in the range of whisper's log-mel (about -1.5 .. 1.5)."""
    mel = rng.uniform(-1.5, 1.5, size=(batch, dims.n_mels, 2 * dims.n_audio_ctx))
    return torch.from_numpy(mel.astype(np.float32))


def random_features(rng: np.random.Generator, batch: int, dims: Any) -> torch.Tensor:
    return torch.from_numpy(rng.standard_normal((batch, dims.n_audio_ctx, dims.n_audio_state)).astype(np.float32))


def random_tokens(rng: np.random.Generator, batch: int, n: int, dims: Any) -> torch.Tensor:
    return torch.from_numpy(rng.integers(0, dims.n_vocab, size=(batch, n), dtype=np.int64))


# -- whole model through the backend ----------------------------------------------------------------------


def test_encoder_random_mel(
    max_backend: Any, torch_model: Any, rng: np.random.Generator, random_parity: Parity
) -> None:
    mel = random_mel(rng, 2, max_backend.dims)
    with torch.no_grad():
        ref = torch_model.encoder(mel)
    random_parity.check("encoder output, random mel (batch 2)", max_backend.encode(mel), ref)


def test_encoder_real_mel(
    max_backend: Any, real_mel: dict[str, Any], real_features: torch.Tensor, real_parity: Parity
) -> None:
    out = max_backend.encode(real_mel["mel"])
    real_parity.check(f"encoder output, real mel (batch 2: {', '.join(real_mel['names'])})", out, real_features)
    for i, name in enumerate(real_mel["names"]):  # one window at a time: batch 1 gives the same numbers
        real_parity.check(
            f"encoder output, real mel, batch 1: {name}",
            max_backend.encode(real_mel["mel"][i : i + 1]),
            real_features[i : i + 1],
        )


def _check_cross_kv(parity: Parity, label: str, max_backend: Any, torch_model: Any, features: torch.Tensor) -> None:
    buffers, draft = max_backend.cross_kv(features)
    blocks = torch_model.decoder.blocks
    assert len(buffers) == len(draft) == 2 * len(blocks)
    with torch.no_grad():
        for i, block in enumerate(blocks):
            key, value = block.cross_attn.key(features), block.cross_attn.value(features)
            parity.check(f"cross-attn K, block {i}, {label}", whisper_keys(buffers[2 * i]), key)
            parity.check(f"cross-attn V, block {i}, {label}", whisper_values(buffers[2 * i + 1]), value)
            # the draft decoder's bfloat16 copy: keys in the values' head layout and values in the keys'
            parity.check(f"cross-attn K (draft, bf16), block {i}, {label}", whisper_values(draft[2 * i]), key, BF16_TOL)
            parity.check(
                f"cross-attn V (draft, bf16), block {i}, {label}", whisper_keys(draft[2 * i + 1]), value, BF16_TOL
            )


def test_cross_kv_random_features(
    max_backend: Any, torch_model: Any, rng: np.random.Generator, random_parity: Parity
) -> None:
    _check_cross_kv(
        random_parity, "random features", max_backend, torch_model, random_features(rng, 2, max_backend.dims)
    )


def test_cross_kv_real_features(
    max_backend: Any, torch_model: Any, real_features: torch.Tensor, real_parity: Parity
) -> None:
    _check_cross_kv(real_parity, "real features", max_backend, torch_model, real_features)


def test_encoder_graph_makes_the_cross_kv_of_its_features(
    max_backend: Any, torch_model: Any, real_mel: dict[str, Any], real_parity: Parity
) -> None:
    """The encoder graph's own cross K/V (what a transcription uses) against PyTorch's projections of
    the features it returned; they are handed out for that tensor, not computed again."""
    features = max_backend.encode(real_mel["mel"])
    _check_cross_kv(real_parity, "the encoder graph's, real mel", max_backend, torch_model, features)
    assert max_backend.cross_kv(features)[0][0] is max_backend.cross_kv(features)[0][0]
    assert max_backend.cross_kv(features.clone())[0][0] is not max_backend.cross_kv(features)[0][0]


def _decode_and_compare(
    parity: Parity,
    label: str,
    max_backend: Any,
    torch_model: Any,
    sot: int,
    features: torch.Tensor,
    prompt: torch.Tensor,
    continuation: torch.Tensor | None = None,
    n_greedy: int = 0,
) -> None:
    """Feed ``prompt`` (cold cache), then one token a step (warm cache) to MaxInference and to whisper's
    PyTorchInference, comparing the logits of every call; then check the last warm step against an
    uncached pass of the reference decoder over the whole history. The tokens after the prompt are
    ``continuation`` or, with ``n_greedy``, the reference's own greedy choices (the path decoding takes)."""
    from whisper.decoding import PyTorchInference

    n0 = prompt.shape[-1]
    n_steps = continuation.shape[-1] if continuation is not None else n_greedy
    ours, theirs = max_backend.inference(n0), PyTorchInference(torch_model, n0)
    tokens, ref = prompt, None
    try:
        with torch.no_grad():
            for step in range(n_steps + 1):
                if step:
                    nxt = continuation[:, step - 1 : step] if continuation is not None else ref[:, -1:].argmax(-1)
                    tokens = torch.cat([tokens, nxt], dim=-1)
                got, ref = ours.logits(tokens, features), theirs.logits(tokens, features)
                cache = f"no cache, {n0}-token prompt" if step == 0 else f"warm cache, step {step}"
                check_logits(parity, f"decoder logits, {label}, {cache}", got, ref, tokens, sot)
            uncached = torch_model.decoder(tokens, features)[:, -1:]
            parity.check(
                f"decoder logits, {label}, warm step {step} vs uncached pass of {tokens.shape[-1]} tokens",
                got[:, -1:],
                uncached,
            )
    finally:
        ours.cleanup_caching()
        theirs.cleanup_caching()


@pytest.mark.parametrize("batch", [1, 2])
def test_decoder_steps_random(
    batch: int, max_backend: Any, torch_model: Any, tokenizer: Any, rng: np.random.Generator, random_parity: Parity
) -> None:
    dims = max_backend.dims
    features = random_features(rng, batch, dims)
    n0 = int(rng.integers(1, 8))
    _decode_and_compare(
        random_parity,
        f"random tokens + features (batch {batch})",
        max_backend,
        torch_model,
        tokenizer.sot,
        features,
        random_tokens(rng, batch, n0, dims),
        random_tokens(rng, batch, 4, dims),
    )
    prompt = torch.tensor([list(tokenizer.sot_sequence_including_notimestamps)] * batch)
    _decode_and_compare(
        random_parity,
        f"random features, greedy tokens (batch {batch})",
        max_backend,
        torch_model,
        tokenizer.sot,
        features,
        prompt,
        n_greedy=12,
    )


def test_decoder_steps_real(
    max_backend: Any, torch_model: Any, tokenizer: Any, real_features: torch.Tensor, real_parity: Parity
) -> None:
    sot = list(tokenizer.sot_sequence_including_notimestamps)
    text = tokenizer.encode(JFK_TEXT)[:6]
    batch = len(real_features)
    _decode_and_compare(
        real_parity,
        f"real features, JFK text (batch {batch})",
        max_backend,
        torch_model,
        tokenizer.sot,
        real_features,
        torch.tensor([sot] * batch),
        torch.tensor([text] * batch),
    )
    # one window, the model's own greedy tokens: the path of a real transcription (batch 1)
    _decode_and_compare(
        real_parity,
        "real features of jfk.flac, greedy tokens (batch 1)",
        max_backend,
        torch_model,
        tokenizer.sot,
        real_features[:1],
        torch.tensor([sot]),
        n_greedy=24,
    )
    # a longer prompt, as when the previous window's text is the prompt
    prompt = [tokenizer.sot_prev] + tokenizer.encode(" Fellow citizens, I stand here today.") + sot
    _decode_and_compare(
        real_parity,
        "real features of jfk.flac, prompt + greedy tokens (batch 1)",
        max_backend,
        torch_model,
        tokenizer.sot,
        real_features[:1],
        torch.tensor([prompt]),
        n_greedy=8,
    )


@pytest.mark.parametrize("group", [5])
def test_decoder_features_shared_by_group(
    group: int, max_backend: Any, torch_model: Any, tokenizer: Any, real_features: torch.Tensor, real_parity: Parity
) -> None:
    """Beam search and best-of-n: whisper's ``DecodingTask.run`` repeats the *tokens* ``n_group`` times
    (``repeat_interleave``) but passes the audio features of each window once, so ``logits`` gets tokens
    of batch ``n_audio * n_group`` with features of batch ``n_audio`` (PyTorch broadcasts them)."""
    from whisper.decoding import PyTorchInference

    features = real_features[:1]
    tokens = torch.tensor([list(tokenizer.sot_sequence_including_notimestamps)]).repeat_interleave(group, dim=0)
    ours, theirs = max_backend.inference(tokens.shape[-1]), PyTorchInference(torch_model, tokens.shape[-1])
    try:
        with torch.no_grad():
            for step in range(3):
                got, ref = ours.logits(tokens, features), theirs.logits(tokens, features)
                check_logits(
                    real_parity,
                    f"decoder logits, {group} sequences over 1 window's features, step {step}",
                    got,
                    ref,
                    tokens,
                    tokenizer.sot,
                )
                source = [0] * group  # as after a beam step that keeps one sequence's prefix
                ours.rearrange_kv_cache(source)
                theirs.rearrange_kv_cache(source)
                tokens = torch.cat([tokens[source], ref[:, -1].topk(group, dim=-1).indices[0, :, None]], dim=-1)
    finally:
        ours.cleanup_caching()
        theirs.cleanup_caching()


def test_reorders_after_a_shared_prompt(
    max_backend: Any, torch_model: Any, tokenizer: Any, real_features: torch.Tensor, real_parity: Parity
) -> None:
    """Beam search's reorders after a prompt run once for 5 rows: the CPU plan copies only the positions
    after the prompt (the prompt's keys and values are the same in every row), and the next steps still
    match the reference's, which reorders its whole cache."""
    from whisper.decoding import PyTorchInference

    prompt = list(tokenizer.sot_sequence_including_notimestamps) + tokenizer.encode(JFK_TEXT)[:6]
    tokens = torch.tensor([prompt] * 5)
    features = real_features[:1]
    ours, theirs = max_backend.inference(tokens.shape[-1]), PyTorchInference(torch_model, tokens.shape[-1])
    sources = ([1, 0, 2, 4, 3], [2, 2, 0, 1, 4], [4, 3, 3, 0, 1], [0, 1, 2, 3, 4], [3, 3, 3, 3, 2])
    try:
        with torch.no_grad():
            for step, source in enumerate(sources):
                got, ref = ours.logits(tokens, features), theirs.logits(tokens, features)
                check_logits(real_parity, f"5 rows after a shared prompt, step {step}", got, ref, tokens, tokenizer.sot)
                if step == 0:
                    assert ours.shared_prefix == len(prompt)  # the prompt was run once and shared
                ours.rearrange_kv_cache(source)
                theirs.rearrange_kv_cache(source)
                # a different next token in every row, so the rows' generated positions differ
                next_tokens = ref[:, -1].topk(5, dim=-1).indices[torch.arange(5), torch.arange(5)]
                tokens = torch.cat([tokens[source], next_tokens[:, None]], dim=-1)
            got, ref = ours.logits(tokens, features), theirs.logits(tokens, features)
            check_logits(real_parity, "5 rows after five reorders", got, ref, tokens, tokenizer.sot)
    finally:
        ours.cleanup_caching()
        theirs.cleanup_caching()
    assert ours.shared_prefix == 0


def test_logits_from_real_mel(
    max_backend: Any, torch_model: Any, tokenizer: Any, real_mel: dict[str, Any], real_parity: Parity
) -> None:
    """mel -> encoder -> decoder entirely on each side: the logits and the greedy token agree."""
    mel = real_mel["mel"]
    tokens = torch.tensor(
        [list(tokenizer.sot_sequence_including_notimestamps) + tokenizer.encode(JFK_TEXT)[:4]] * len(mel)
    )
    inference = max_backend.inference(tokens.shape[-1])
    try:
        got = inference.logits(tokens, max_backend.encode(mel))
    finally:
        inference.cleanup_caching()
    with torch.no_grad():
        ref = torch_model.logits(tokens, torch_model.encoder(mel))
    check_logits(real_parity, "logits, mel -> encoder -> decoder (each side its own)", got, ref, tokens, tokenizer.sot)
    assert torch.equal(got[:, -1].argmax(-1), ref[:, -1].argmax(-1))


def test_rearrange_kv_cache(
    max_backend: Any, torch_model: Any, tokenizer: Any, rng: np.random.Generator, random_parity: Parity
) -> None:
    """Beam search's cache reorder: after it, the next steps match the reference's."""
    from whisper.decoding import PyTorchInference

    dims = max_backend.dims
    features = random_features(rng, 1, dims).repeat(3, 1, 1)
    tokens = random_tokens(rng, 3, 3, dims)
    ours, theirs = max_backend.inference(3), PyTorchInference(torch_model, 3)

    def compare(name: str, tokens: torch.Tensor, features: torch.Tensor) -> None:
        with torch.no_grad():
            got, ref = ours.logits(tokens, features), theirs.logits(tokens, features)
        check_logits(random_parity, name, got, ref, tokens, tokenizer.sot)

    try:
        for step, source in enumerate(([2, 0, 0], [1, 2, 1])):
            compare(f"decoder logits before reorder {step}", tokens, features)
            ours.rearrange_kv_cache(source)
            theirs.rearrange_kv_cache(source)
            tokens = torch.cat([tokens[source], random_tokens(rng, 3, 1, dims)], dim=-1)
        compare("decoder logits after two reorders", tokens, features)
    finally:
        ours.cleanup_caching()
        theirs.cleanup_caching()
    # after cleanup_caching the same inference object starts afresh
    try:
        compare("decoder logits after cleanup_caching", random_tokens(rng, 2, 2, dims), random_features(rng, 2, dims))
    finally:
        ours.cleanup_caching()
        theirs.cleanup_caching()


# -- per block: one probe graph per side ------------------------------------------------------------------


class Probes:
    """The encoder and decoder probe graphs, built from the max_model classes and compiled once."""

    def __init__(self, torch_model: Any) -> None:
        from max.driver import CPU, Buffer
        from max.dtype import DType
        from max.engine import InferenceSession
        from max.graph import DeviceRef, Graph, TensorType, ops

        from max_whisper.backends.whisper_max.graphs import cache_types
        from max_whisper.backends.whisper_max.layers import (
            N_TOTAL,
            AudioEncoder,
            KVCache,
            Span,
            TextDecoder,
            WeightSource,
            merge_heads,
        )
        from max_whisper.backends.whisper_max.weights import state_dict_arrays

        self.Buffer = Buffer
        self.dims = d = torch_model.dims
        arrays = state_dict_arrays(torch_model.state_dict(), draft=False)
        device = DeviceRef.CPU()
        self.weights = weights = WeightSource(arrays, device)
        session = InferenceSession(devices=[CPU()])
        self.n_layer = d.n_text_layer
        self.compile_seconds: dict[str, float] = {}

        encoder = AudioEncoder(weights, d)
        start = time.perf_counter()
        mel_type = TensorType(DType.float32, ["batch", d.n_mels, 2 * d.n_audio_ctx], device)
        with Graph("test_whisper_encoder_probe", input_types=[mel_type]) as graph:
            x = ops.permute(graph.inputs[0].tensor, [0, 2, 1])
            after_conv1 = ops.gelu(encoder.conv1(x))
            after_conv2 = ops.gelu(encoder.conv2(after_conv1))
            x = after_conv2 + weights.get("encoder.positional_embedding")
            outputs = [after_conv1, after_conv2]
            for block in encoder.blocks:
                x = block(x)
                outputs.append(x)
            outputs.append(encoder.ln_post(x))
            graph.output(*outputs)
        self.encoder = session.load(graph, weights_registry=weights.registry())
        self.compile_seconds["encoder probe"] = time.perf_counter() - start

        decoder = TextDecoder(weights, d)
        start = time.perf_counter()
        scalar = TensorType(DType.int64, [], device)
        inputs = [
            TensorType(DType.int64, ["batch", "n_new"], device),
            scalar,
            scalar,
            TensorType(DType.float32, ["n_new", N_TOTAL], device),
            TensorType(DType.float32, ["batch", d.n_audio_ctx, d.n_audio_state], device),
        ]
        inputs += cache_types(d, device)

        def key_out(k: Any) -> Any:  # max_model's key layout -> whisper's (batch, ctx, state)
            return merge_heads(ops.permute(k, [0, 1, 3, 2]))

        with Graph("test_whisper_decoder_probe", input_types=inputs) as graph:
            tokens, start_pos, end_pos, mask, features = (v.tensor for v in graph.inputs[:5])
            buffers = [v.buffer for v in graph.inputs[5:]]
            span = Span(start_pos, end_pos)
            cross = decoder.cross_kv(features)
            x = decoder.embed(tokens, span)
            block_out: list[Any] = []
            for i, (block, cache) in enumerate(zip(decoder.blocks, KVCache.per_block(buffers), strict=True)):
                x = block.step(x, cache, cross[2 * i], cross[2 * i + 1], span, mask)
                block_out.append(x)
            logits = decoder.logits(decoder.ln(x))
            cross = [key_out(c) if i % 2 == 0 else merge_heads(c) for i, c in enumerate(cross)]
            graph.output(*cross, *block_out, logits)
        self.decoder = session.load(graph, weights_registry=weights.registry())
        self.compile_seconds["decoder probe"] = time.perf_counter() - start

    def run_encoder(self, mel: torch.Tensor) -> dict[str, np.ndarray]:
        out = [o.to_numpy() for o in self.encoder.execute(self.Buffer.from_numpy(np.ascontiguousarray(mel.numpy())))]
        names = ["conv1+gelu", "conv2+gelu"] + [f"block {i}" for i in range(self.dims.n_audio_layer)] + ["ln_post"]
        return dict(zip(names, out, strict=True))

    def new_cache(self, batch: int) -> dict[str, Any]:
        """An empty self-attention cache: the backend's buffers (room for n_text_ctx positions), none used."""
        from max_whisper.backends.whisper_max.graphs import cache_shapes

        shapes = cache_shapes(self.dims, batch)
        return {"buffers": [self.Buffer.from_numpy(np.zeros(s, np.float32)) for s in shapes], "n_past": 0}

    def run_decoder(self, tokens: torch.Tensor, features: torch.Tensor, cache: dict[str, Any]) -> dict[str, Any]:
        """New tokens after the cache (which this pass grows); every block's output, the cache in
        whisper's layout (batch, ctx, state), the cross K/V and the logits."""
        n_past, n_new = cache["n_past"], tokens.shape[-1]
        end = n_past + n_new
        mask = np.triu(np.full((n_new, end), -np.inf, dtype=np.float32), k=n_past + 1)
        arrays = [
            tokens.numpy().astype(np.int64),
            np.array(n_past),
            np.array(end),
            mask,
            np.ascontiguousarray(features.numpy()),
        ]
        out = [
            o.to_numpy() for o in self.decoder.execute(*(self.Buffer.from_numpy(a) for a in arrays), *cache["buffers"])
        ]
        cache["n_past"] = end
        held = [b.to_numpy() for b in cache["buffers"]]
        # the cache's layouts (max_model.KVCache): keys (batch, head, ctx, head_state), values transposed
        self_kv = [
            whisper_values(h[:, :, :end]) if i % 2 == 0 else whisper_keys(h[..., :end]) for i, h in enumerate(held)
        ]
        n = 2 * self.n_layer
        return {"cross_kv": out[:n], "blocks": out[n : n + self.n_layer], "self_kv": self_kv, "logits": out[-1]}


@pytest.fixture(scope="session")
def probes(torch_model: Any, max_report: Any) -> Probes:
    pytest.importorskip("max.engine", reason="the MAX engine is not installed")
    built = Probes(torch_model)
    for name, seconds in built.compile_seconds.items():
        max_report.record_time(f"compile {name} graph", seconds)
    return built


def _check_encoder_blocks(
    parity: Parity, label: str, probes: Probes, max_backend: Any, torch_model: Any, mel: torch.Tensor
) -> None:
    encoder = torch_model.encoder
    modules = {"conv1": encoder.conv1, "conv2": encoder.conv2, "ln_post": encoder.ln_post}
    modules.update({f"block {i}": block for i, block in enumerate(encoder.blocks)})
    recorder = Recorder(modules)
    try:
        with torch.no_grad():
            final = encoder(mel)
    finally:
        recorder.remove()
    ref = dict(recorder.outputs)
    ref["conv1+gelu"] = F.gelu(ref.pop("conv1")).permute(0, 2, 1)  # (batch, channels, time) -> (batch, time, channels)
    ref["conv2+gelu"] = F.gelu(ref.pop("conv2")).permute(0, 2, 1)
    got = probes.run_encoder(mel)
    for name in got:
        parity.check(f"encoder {name}, {label}", got[name], ref[name])
    # the probe is the backend's encoder: same final output
    parity.check(f"encoder probe ln_post vs MaxBackend.encode, {label}", got["ln_post"], max_backend.encode(mel))
    parity.check(f"encoder probe ln_post vs whisper encoder(), {label}", got["ln_post"], final)


def test_encoder_blocks_random(
    probes: Probes, max_backend: Any, torch_model: Any, rng: np.random.Generator, random_parity: Parity
) -> None:
    _check_encoder_blocks(
        random_parity, "random mel", probes, max_backend, torch_model, random_mel(rng, 1, torch_model.dims)
    )


def test_encoder_blocks_real(
    probes: Probes, max_backend: Any, torch_model: Any, real_mel: dict[str, Any], real_parity: Parity
) -> None:
    _check_encoder_blocks(real_parity, "real mel (batch 2)", probes, max_backend, torch_model, real_mel["mel"])


def _check_decoder_blocks(
    parity: Parity,
    label: str,
    probes: Probes,
    torch_model: Any,
    features: torch.Tensor,
    prompt: torch.Tensor,
    next_token: torch.Tensor,
) -> None:
    """The prompt with an empty cache, then one token with the cache the prompt left: every block's
    cross K/V, output and self-attention K/V, and the logits, against whisper's modules (hooks + kv_cache)."""
    decoder = torch_model.decoder
    cache, cache_hooks = torch_model.install_kv_cache_hooks()
    recorder = Recorder({f"block {i}": block for i, block in enumerate(decoder.blocks)})
    past = probes.new_cache(prompt.shape[0])
    try:
        for step, tokens in enumerate((prompt, next_token)):
            when = f"{label}, " + (f"prompt of {prompt.shape[-1]}, no cache" if step == 0 else "1 token, warm cache")
            with torch.no_grad():
                ref_logits = decoder(tokens, features, kv_cache=cache)
            got = probes.run_decoder(tokens, features, past)
            for i, block in enumerate(decoder.blocks):
                if step == 0:
                    with torch.no_grad():
                        parity.check(
                            f"decoder block {i} cross K, {when}", got["cross_kv"][2 * i], block.cross_attn.key(features)
                        )
                        parity.check(
                            f"decoder block {i} cross V, {when}",
                            got["cross_kv"][2 * i + 1],
                            block.cross_attn.value(features),
                        )
                parity.check(f"decoder block {i} self K (cache), {when}", got["self_kv"][2 * i], cache[block.attn.key])
                parity.check(
                    f"decoder block {i} self V (cache), {when}", got["self_kv"][2 * i + 1], cache[block.attn.value]
                )
                parity.check(f"decoder block {i} output, {when}", got["blocks"][i], recorder.outputs[f"block {i}"])
            parity.check(f"decoder logits (probe), {when}", got["logits"], ref_logits)
    finally:
        recorder.remove()
        for hook in cache_hooks:
            hook.remove()


def test_decoder_blocks_random(
    probes: Probes, torch_model: Any, rng: np.random.Generator, random_parity: Parity
) -> None:
    dims = torch_model.dims
    _check_decoder_blocks(
        random_parity,
        "random",
        probes,
        torch_model,
        random_features(rng, 2, dims),
        random_tokens(rng, 2, int(rng.integers(2, 8)), dims),
        random_tokens(rng, 2, 1, dims),
    )


def test_decoder_blocks_real(
    probes: Probes, torch_model: Any, tokenizer: Any, real_features: torch.Tensor, real_parity: Parity
) -> None:
    batch = len(real_features)
    tokens = list(tokenizer.sot_sequence_including_notimestamps) + tokenizer.encode(JFK_TEXT)[:5]
    prompt = torch.tensor([tokens[:-1]] * batch)
    _check_decoder_blocks(
        real_parity,
        "real features, JFK text",
        probes,
        torch_model,
        real_features,
        prompt,
        torch.tensor([tokens[-1:]] * batch),
    )


# -- bad input ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape", [(80, 3000), (1, 80, 2999), (1, 80, 1500), (1, 81, 3000), (2, 3000, 80), (1, 1, 80, 3000)]
)
def test_encode_rejects_wrong_mel_shape(max_backend: Any, shape: tuple) -> None:
    with pytest.raises(InputShapeError, match=r"mel must have shape"):
        max_backend.encode(torch.zeros(shape))


@pytest.mark.parametrize("shape", [(1500, 384), (1, 1499, 384), (1, 1500, 383)])
def test_cross_kv_rejects_wrong_features_shape(max_backend: Any, shape: tuple) -> None:
    with pytest.raises(InputShapeError):
        max_backend.cross_kv(torch.zeros(shape))


def test_tokens_longer_than_text_context(max_backend: Any, torch_model: Any) -> None:
    n_ctx = max_backend.dims.n_text_ctx
    features = torch.zeros((1, max_backend.dims.n_audio_ctx, max_backend.dims.n_audio_state))
    inference = max_backend.inference(n_ctx + 1)
    try:
        with pytest.raises(InputShapeError, match=str(n_ctx)):
            inference.logits(torch.zeros((1, n_ctx + 1), dtype=torch.long), features)
    finally:
        inference.cleanup_caching()
    # exactly n_text_ctx tokens fit; one more step past them is refused
    inference = max_backend.inference(n_ctx)
    try:
        tokens = torch.zeros((1, n_ctx), dtype=torch.long)
        assert inference.logits(tokens, features).shape == (1, n_ctx, max_backend.dims.n_vocab)
        with pytest.raises(InputShapeError, match=str(n_ctx)):
            inference.logits(torch.zeros((1, n_ctx + 1), dtype=torch.long), features)
    finally:
        inference.cleanup_caching()


# -- the GPU plan's split float32 products ---------------------------------------------------------------


def tf32(x: np.ndarray) -> np.ndarray:
    """float32 ``x`` rounded to TF32 (10 explicit mantissa bits, to nearest): what an NVIDIA GPU's tensor
    cores multiply when MAX runs a float32 matmul on them."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x1000) & 0xFFFFE000
    return bits.astype(np.uint32).view(np.float32)


def test_split_product_is_float32_exact_under_tf32(rng: np.random.Generator, random_parity: Parity) -> None:
    """The GPU plan's :class:`SplitProduct` on MAX's CPU: its parts are what it promises (a bfloat16-exact
    high part, an exact rest), and with every matmul input rounded to TF32 (emulated in float64) its
    three products keep float32 accuracy where one TF32 matmul does not."""
    pytest.importorskip("max.engine", reason="the MAX engine is not installed")
    from max.driver import CPU, Buffer
    from max.dtype import DType
    from max.engine import InferenceSession
    from max.graph import DeviceRef, Graph, TensorType

    from max_whisper.backends.whisper_max.layers import SplitProduct, bfloat16_split

    a = rng.standard_normal((8, 384)).astype(np.float32)
    b = (rng.standard_normal((384, 520)) * 0.05).astype(np.float32)
    device = DeviceRef.CPU()
    types = [TensorType(DType.float32, list(a.shape), device), TensorType(DType.float32, list(b.shape), device)]
    with Graph("test_split_product", input_types=types) as graph:
        x, w = (v.tensor for v in graph.inputs)
        graph.output(*bfloat16_split(x), *bfloat16_split(w), SplitProduct()(x, w))
    model = InferenceSession(devices=[CPU()]).load(graph)
    a_hi, a_lo, b_hi, b_lo, product = (o.to_numpy() for o in model.execute(Buffer.from_numpy(a), Buffer.from_numpy(b)))

    for x, hi, lo in ((a, a_hi, a_lo), (b, b_hi, b_lo)):
        assert not (hi.view(np.uint32) & 0xFFFF).any(), "the high part is not a bfloat16 value"
        assert np.array_equal(hi + lo, x), "high + low part is not the input"
        assert np.all(np.abs(lo) <= 2.0**-8 * np.abs(x)), "the low part is more than 2^-8 of the input"
        assert np.array_equal(tf32(hi), hi), "TF32 does not hold the high part exactly"

    exact = a.astype(np.float64) @ b.astype(np.float64)
    random_parity.check("SplitProduct on MAX's CPU", product, exact, bound=1e-6)
    one_tf32 = tf32(a).astype(np.float64) @ tf32(b).astype(np.float64)
    three_tf32 = (
        a_hi.astype(np.float64) @ b_hi.astype(np.float64)
        + tf32(a_hi).astype(np.float64) @ tf32(b_lo).astype(np.float64)
        + tf32(a_lo).astype(np.float64) @ tf32(b).astype(np.float64)
    )
    assert rel_err(one_tf32, exact) > 1e-4, "the TF32 emulation does not round"
    random_parity.check("SplitProduct with TF32 inputs", three_tf32, exact, bound=1e-5)
