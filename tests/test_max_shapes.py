"""The MAX graph builders take their dims from the checkpoint: parity on every official model shape.

``test_max_parity.py`` checks the builders of :mod:`max_whisper.backends.whisper_max.layers` against
openai-whisper with tiny.en's weights (384 wide, 6 heads, 80 mels, 51864 tokens). Here the same builders
run on seeded, randomly initialised ``whisper.model.Whisper`` models with the dims of the other official
families, with one or two layers each (a layer is the same graph whatever its index):

* ``base``: 512 wide, 8 heads, 80 mels, the multilingual vocabulary (51865 tokens);
* ``small.en``: 768 wide, 12 heads, 80 mels, the English vocabulary (51864 tokens);
* ``128-mel``: large-v3's mel count and vocabulary (128 mels, 51866 tokens) on two small layers of 320
  (5 heads).

Per shape, a probe returns every activation that depends on the dims: the conv stem with the model's
n_mels, the positional embedding, each encoder block, ``ln_post``; each decoder block's cross-attention
keys/values, self-attention KV cache and output, for a prompt on an empty cache and then one token on the
warm cache (batch 2); ``decoder.ln`` and the logits over the whole vocabulary. The three probes form one
graph, compiled once per session and executed twice (MAX compiles every distinct graph from scratch).
Each is compared with its PyTorch module: ``max |max - torch| / max |torch| <= 1e-4`` (fp32), recorded in
the session summary (``max backend parity``).

The end-to-end check transcribes jfk.flac with ``MaxBackend`` and ``CPUBackend`` on an official checkpoint
found in openai-whisper's cache, if there is one (none can be downloaded in the test environment).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from whisper.model import ModelDimensions, Whisper

from torch_hooks import Recorder

pytestmark = pytest.mark.max

#: fp32 bound on ``max |max - torch| / max |torch|`` for every output compared here.
REL_TOL = 1e-4
#: The seed of every random weight and input (a shape's index is added to it).
SEED = 1127
#: The text context of every official model; the self-attention cache has room for all of it.
N_TEXT_CTX = 448
#: Audio context of the probes: the official 1500 (30 s of mel frames).
N_AUDIO_CTX = 1500
#: Tokens of the first decoder pass (the prompt, empty cache); a second pass feeds one more token.
N_PROMPT = 5
BATCH = 2


def _dims(n_mels: int, n_vocab: int, n_state: int, n_head: int, n_layer: int) -> ModelDimensions:
    return ModelDimensions(
        n_mels=n_mels,
        n_audio_ctx=N_AUDIO_CTX,
        n_audio_state=n_state,
        n_audio_head=n_head,
        n_audio_layer=n_layer,
        n_vocab=n_vocab,
        n_text_ctx=N_TEXT_CTX,
        n_text_state=n_state,
        n_text_head=n_head,
        n_text_layer=n_layer,
    )


#: Official dims with fewer layers.
SHAPES: dict[str, ModelDimensions] = {
    "base": _dims(n_mels=80, n_vocab=51865, n_state=512, n_head=8, n_layer=1),
    "small.en": _dims(n_mels=80, n_vocab=51864, n_state=768, n_head=12, n_layer=1),
    "128-mel": _dims(n_mels=128, n_vocab=51866, n_state=320, n_head=5, n_layer=2),
}


# -- a random checkpoint --------------------------------------------------------------------------------------


def random_whisper(dims: ModelDimensions, seed: int) -> Whisper:
    """``Whisper(dims)`` with seeded weights of a trained model's magnitudes.

    PyTorch's default init leaves ``decoder.positional_embedding`` uninitialised and the token
    embedding at unit variance; here matrices get variance 1/fan_in, layer norms a gain near 1,
    biases and embeddings small values. The encoder's positional embedding stays whisper's sinusoids.
    """
    torch.manual_seed(seed)
    model = Whisper(dims).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            is_norm = "ln" in name.split(".")[-2].split("_")  # attn_ln, mlp_ln, ln, ln_post ...
            if is_norm and name.endswith(".weight"):
                param.copy_(1.0 + 0.1 * torch.randn_like(param))
            elif name.endswith(".bias"):
                param.copy_(0.05 * torch.randn_like(param))
            elif name.endswith("embedding.weight") or name.endswith("positional_embedding"):
                param.copy_(0.1 * torch.randn_like(param))
            else:  # Linear (out, in) and Conv1d (out, in, 3)
                fan_in = param[0].numel()
                param.copy_(torch.randn_like(param) / fan_in**0.5)
    return model


# -- the probe graph ------------------------------------------------------------------------------------------


class Pass(NamedTuple):
    """What one execution of the probe graph returns, in whisper's layouts."""

    encoder: dict[str, np.ndarray]  # conv1+gelu, conv2+gelu, +positional, block i, ln_post
    cross_kv: list[np.ndarray]  # [k_0, v_0, ...], (batch, n_audio_ctx, state)
    blocks: list[np.ndarray]  # decoder block outputs (batch, n_new, state)
    self_kv: list[np.ndarray]  # the cache after the pass, [k_0, v_0, ...] (batch, n_held, state)
    ln: np.ndarray
    logits: np.ndarray


def cache_shapes(dims: ModelDimensions, batch: Any) -> list[Any]:
    """The self-attention cache per block, in :class:`layers.KVCache`'s layouts: keys
    (batch, head, n_text_ctx, head_state), values (batch, head, head_state, n_text_ctx)."""
    head, head_state, ctx = dims.n_text_head, dims.n_text_state // dims.n_text_head, dims.n_text_ctx
    return [(batch, head, ctx, head_state), (batch, head, head_state, ctx)] * dims.n_text_layer


class ShapeProbe:
    """The probe of one model shape, built from the ``layers`` classes: the encoder on a mel and the decoder
    (on separate audio features) for new tokens after a cache, with every intermediate as an output.

    Its weights are registered under ``<prefix><state_dict name>`` so that the probes of every shape fit in
    one graph (:class:`Probes`): MAX compiles each distinct graph from scratch, at tens of seconds each on
    2 cores, so one graph for all shapes is the cheapest way to cover them.
    """

    def __init__(self, name: str, model: Whisper, device: Any) -> None:
        from max_whisper.backends.whisper_max.layers import WeightSource
        from max_whisper.backends.whisper_max.weights import state_dict_arrays

        class Prefixed(WeightSource):
            def get(self, weight_name: str) -> Any:
                return super().get(prefix + weight_name)

        prefix = name.replace(".", "_").replace("-", "_") + "/"
        self.name, self.dims, self.device = name, model.dims, device
        arrays = {prefix + k: v for k, v in state_dict_arrays(model.state_dict(), draft=False).items()}
        self.weights = Prefixed(arrays, device)
        self.stem_names = ["conv1+gelu", "conv2+gelu", "+positional_embedding"]
        self.stem_names += [f"block {i}" for i in range(self.dims.n_audio_layer)] + ["ln_post"]

    def input_types(self) -> list[Any]:
        """mel, tokens, start, end, mask, audio features, then the self-attention cache buffers."""
        from max.dtype import DType
        from max.graph import BufferType, TensorType

        from max_whisper.backends.whisper_max.layers import N_TOTAL

        d, device = self.dims, self.device
        scalar = TensorType(DType.int64, [], device)
        return [
            TensorType(DType.float32, ["mel_batch", d.n_mels, 2 * d.n_audio_ctx], device),
            TensorType(DType.int64, ["batch", "n_new"], device),  # tokens
            scalar,  # start
            scalar,  # end
            TensorType(DType.float32, ["n_new", N_TOTAL], device),  # additive causal mask
            TensorType(DType.float32, ["batch", d.n_audio_ctx, d.n_audio_state], device),  # audio features
        ] + [BufferType(DType.float32, list(shape), device) for shape in cache_shapes(d, "batch")]

    def outputs(self, inputs: list[Any]) -> list[Any]:
        """The probe's graph outputs (inside the graph under construction), from its :meth:`input_types` values."""
        from max.graph import ops

        from max_whisper.backends.whisper_max.layers import AudioEncoder, KVCache, Span, TextDecoder, merge_heads

        encoder, decoder = AudioEncoder(self.weights, self.dims), TextDecoder(self.weights, self.dims)
        mel, tokens, start, end, mask, features = (v.tensor for v in inputs[:6])
        caches = KVCache.per_block([v.buffer for v in inputs[6:]])
        # the encoder, as AudioEncoder.__call__ with its intermediates
        x = ops.gelu(encoder.conv1(ops.permute(mel, [0, 2, 1])))
        stem = [x, ops.gelu(encoder.conv2(x))]
        x = stem[-1] + self.weights.get("encoder.positional_embedding")
        stem.append(x)
        for block in encoder.blocks:
            x = block(x)
            stem.append(x)
        stem.append(encoder.ln_post(x))
        # the decoder, as TextDecoder.__call__ with its intermediates
        span = Span(start, end)
        cross = decoder.cross_kv(features)
        y = decoder.embed(tokens, span)
        blocks = []
        for i, (block, cache) in enumerate(zip(decoder.blocks, caches, strict=True)):
            y = block.step(y, cache, cross[2 * i], cross[2 * i + 1], span, mask)
            blocks.append(y)
        ln = decoder.ln(y)
        # cross K/V in whisper's layout (batch, ctx, state): keys come as (batch, head, head_state, ctx)
        cross = [merge_heads(ops.permute(c, [0, 1, 3, 2]) if i % 2 == 0 else c) for i, c in enumerate(cross)]
        return [*stem, *cross, *blocks, ln, decoder.logits(ln)]

    def new_cache(self, batch: int) -> list[np.ndarray]:
        return [np.zeros(s, np.float32) for s in cache_shapes(self.dims, batch)]

    def feed(self, mel: torch.Tensor, tokens: torch.Tensor, features: torch.Tensor, n_past: int) -> list[np.ndarray]:
        """The input arrays (before the cache) for new ``tokens`` at positions [n_past, n_past + n_new)."""
        n_new = tokens.shape[-1]
        end = n_past + n_new
        mask = np.triu(np.full((n_new, end), -np.inf, dtype=np.float32), k=n_past + 1)
        return [mel.numpy(), tokens.numpy().astype(np.int64), np.array(n_past), np.array(end), mask, features.numpy()]

    def unpack(self, out: list[np.ndarray], cache: list[np.ndarray], end: int) -> Pass:
        """This probe's outputs, and its cache (written in place) in whisper's (batch, n_held, state)."""
        n_stem, n_kv, d = len(self.stem_names), 2 * self.dims.n_text_layer, self.dims
        self_kv = [  # KVCache's layouts: keys (batch, head, ctx, head_state), values (batch, head, head_state, ctx)
            h[:, :, :end].transpose(0, 2, 1, 3) if i % 2 == 0 else h[..., :end].transpose(0, 3, 1, 2)
            for i, h in enumerate(cache)
        ]
        return Pass(
            encoder=dict(zip(self.stem_names, out[:n_stem], strict=True)),
            cross_kv=out[n_stem : n_stem + n_kv],
            blocks=out[n_stem + n_kv : n_stem + n_kv + d.n_text_layer],
            self_kv=[kv.reshape(kv.shape[0], end, d.n_text_state) for kv in self_kv],
            ln=out[-2],
            logits=out[-1],
        )

    @property
    def n_outputs(self) -> int:
        return len(self.stem_names) + 3 * self.dims.n_text_layer + 2


class Probes:
    """The probes of every shape in one compiled graph; each execution runs all of them."""

    def __init__(self, models: dict[str, Whisper]) -> None:
        from max.driver import CPU, Buffer
        from max.engine import InferenceSession
        from max.graph import DeviceRef, Graph

        self.Buffer = Buffer
        self.probes = [ShapeProbe(name, model, DeviceRef.CPU()) for name, model in models.items()]
        types = [probe.input_types() for probe in self.probes]
        with Graph("test_max_shapes_probes", input_types=[t for ts in types for t in ts]) as graph:
            outputs, first = [], 0
            for probe, ts in zip(self.probes, types, strict=True):
                outputs += probe.outputs(list(graph.inputs[first : first + len(ts)]))
                first += len(ts)
            graph.output(*outputs)
        registry = {k: v for probe in self.probes for k, v in probe.weights.registry().items()}
        start = time.perf_counter()
        self.model = InferenceSession(devices=[CPU()]).load(graph, weights_registry=registry)
        self.compile_seconds = time.perf_counter() - start

    def run(self, feeds: dict[str, tuple[list[np.ndarray], list[np.ndarray]]], end: int) -> dict[str, Pass]:
        """One execution: per shape, (input arrays from :meth:`ShapeProbe.feed`, its cache arrays)."""
        buffers = []
        for probe in self.probes:
            arrays, cache = feeds[probe.name]
            buffers += [self.Buffer.from_numpy(a if a.ndim == 0 else np.ascontiguousarray(a)) for a in arrays]
            buffers += [self.Buffer.from_numpy(c) for c in cache]  # shares the arrays' memory: written in place
        out = [o.to_numpy().copy() for o in self.model.execute(*buffers)]
        passes, first = {}, 0
        for probe in self.probes:
            passes[probe.name] = probe.unpack(out[first : first + probe.n_outputs], feeds[probe.name][1], end)
            first += probe.n_outputs
        return passes


# -- the PyTorch reference -----------------------------------------------------------------------------------


def torch_encoder(model: Whisper, mel: torch.Tensor) -> dict[str, torch.Tensor]:
    """whisper's AudioEncoder on ``mel``, with the activations the probe returns, (batch, time, channels)."""
    encoder = model.encoder
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        x = F.gelu(encoder.conv1(mel))
        out["conv1+gelu"] = x.permute(0, 2, 1)
        x = F.gelu(encoder.conv2(x)).permute(0, 2, 1)
        out["conv2+gelu"] = x
        x = x + encoder.positional_embedding
        out["+positional_embedding"] = x
        for i, block in enumerate(encoder.blocks):
            x = block(x)
            out[f"block {i}"] = x
        out["ln_post"] = encoder.ln_post(x)
        out["AudioEncoder.forward"] = encoder(mel)
    return out


def torch_decoder_passes(model: Whisper, features: torch.Tensor, passes: list[torch.Tensor]) -> list[dict[str, Any]]:
    """whisper's TextDecoder with its kv_cache hooks, one call per entry of ``passes``: each block's output,
    the cache (self K/V) after the call, the cross K/V, ``ln`` and the logits."""
    decoder = model.decoder
    cache, cache_hooks = model.install_kv_cache_hooks()
    recorder = Recorder({"ln": decoder.ln, **{f"block {i}": b for i, b in enumerate(decoder.blocks)}})
    results = []
    try:
        with torch.no_grad():
            for tokens in passes:
                logits = decoder(tokens, features, kv_cache=cache)
                results.append(
                    {
                        "blocks": [recorder.outputs[f"block {i}"] for i in range(len(decoder.blocks))],
                        "self_kv": [cache[m].clone() for b in decoder.blocks for m in (b.attn.key, b.attn.value)],
                        "cross_kv": [
                            m(features) for b in decoder.blocks for m in (b.cross_attn.key, b.cross_attn.value)
                        ],
                        "ln": recorder.outputs["ln"],
                        "logits": logits,
                    }
                )
    finally:
        recorder.remove()
        for hook in cache_hooks:
            hook.remove()
    return results


# -- fixtures: every shape's model and probe, one graph for all, both sides run once -------------------------


class ShapeRun(NamedTuple):
    name: str
    dims: ModelDimensions
    seed: int
    ours: list[Pass]  # prompt on an empty cache, then one token on the warm cache
    theirs: list[dict[str, Any]]
    encoder: dict[str, torch.Tensor]


@pytest.fixture(scope="module")
def shape_runs(max_report: Any) -> dict[str, ShapeRun]:
    """Every shape's model, inputs and both sides' outputs; the probe graph is compiled and run here once."""
    pytest.importorskip("max.engine", reason="the MAX engine is not installed")
    seeds = {name: SEED + i for i, name in enumerate(SHAPES)}
    models = {name: random_whisper(dims, seeds[name]) for name, dims in SHAPES.items()}
    probes = Probes(models)
    max_report.record_time(f"compile the shape probe graph ({', '.join(SHAPES)})", probes.compile_seconds)

    by_name = {p.name: p for p in probes.probes}
    inputs, caches, ours = {}, {}, []
    for name, dims in SHAPES.items():
        rng = np.random.default_rng(seeds[name])
        mel = torch.from_numpy(rng.uniform(-1.5, 1.5, (1, dims.n_mels, 2 * dims.n_audio_ctx)).astype(np.float32))
        features = rng.standard_normal((BATCH, dims.n_audio_ctx, dims.n_audio_state)).astype(np.float32)
        tokens = torch.from_numpy(rng.integers(0, dims.n_vocab, (BATCH, N_PROMPT + 1)))
        tokens[0, 1] = dims.n_vocab - 1  # the vocabulary's last token: an embedding or logits row cut short fails
        inputs[name] = (mel, torch.from_numpy(features), [tokens[:, :N_PROMPT], tokens[:, N_PROMPT:]])
        caches[name] = by_name[name].new_cache(BATCH)
    for step, (n_past, end) in enumerate(((0, N_PROMPT), (N_PROMPT, N_PROMPT + 1))):
        feeds = {
            name: (by_name[name].feed(mel, passes[step], features, n_past), caches[name])
            for name, (mel, features, passes) in inputs.items()
        }
        ours.append(probes.run(feeds, end))
    start = time.perf_counter()
    runs = {
        name: ShapeRun(
            name, SHAPES[name], seeds[name], [ours[0][name], ours[1][name]],
            torch_decoder_passes(models[name], features, passes), torch_encoder(models[name], mel),
        )
        for name, (mel, features, passes) in inputs.items()
    }  # fmt: skip
    max_report.record_time("PyTorch references of every shape", time.perf_counter() - start)
    return runs


@pytest.fixture(params=list(SHAPES))
def shape_run(request: pytest.FixtureRequest, shape_runs: dict[str, ShapeRun]) -> ShapeRun:
    return shape_runs[request.param]


def rel_err(actual: Any, ref: Any) -> float:
    """``max |actual - ref| / max |ref|`` (inf where ``actual`` has a non-finite value)."""
    a = np.asarray(actual, dtype=np.float64)
    r = ref.detach().numpy().astype(np.float64) if isinstance(ref, torch.Tensor) else np.asarray(ref, np.float64)
    assert a.shape == r.shape, f"shape {a.shape} != reference shape {r.shape}"
    if not np.isfinite(a).all():
        return float("inf")
    return float(np.max(np.abs(a - r)) / np.max(np.abs(r)))


class Parity:
    """Computes, records (for the session summary) and collects the relative errors of one test."""

    def __init__(self, report: Any, run: ShapeRun) -> None:
        self.report, self.run = report, run
        self.failures: list[str] = []

    def check(self, what: str, actual: Any, ref: Any) -> None:
        err = rel_err(actual, ref)
        name = f"{self.run.name}: {what}"
        self.report.record_parity(name, err, REL_TOL, f"[random {self.run.name} model and input, seed {self.run.seed}]")
        if not err <= REL_TOL:
            self.failures.append(f"{name}: relative error {err:.3e} > {REL_TOL:.0e}")

    def assert_all(self) -> None:
        assert not self.failures, "\n".join(self.failures)


PASS_NAMES = (f"prompt of {N_PROMPT}, empty cache", "1 token, warm cache")


# -- the tests ----------------------------------------------------------------------------------------------------


def test_conv_stem_and_positional_embedding(shape_run: ShapeRun, max_report: Any) -> None:
    """conv1 (n_mels -> state) and conv2 (stride 2), each with GELU, plus the positional embedding."""
    parity = Parity(max_report, shape_run)
    d = shape_run.dims
    assert shape_run.ours[0].encoder["conv1+gelu"].shape == (1, 2 * d.n_audio_ctx, d.n_audio_state)
    for name in ("conv1+gelu", "conv2+gelu", "+positional_embedding"):
        parity.check(f"encoder {name} ({d.n_mels} mels)", shape_run.ours[0].encoder[name], shape_run.encoder[name])
    parity.assert_all()


def test_encoder_blocks_and_ln_post(shape_run: ShapeRun, max_report: Any) -> None:
    parity = Parity(max_report, shape_run)
    ours, theirs = shape_run.ours[0].encoder, shape_run.encoder
    for i in range(shape_run.dims.n_audio_layer):
        parity.check(
            f"encoder block {i} ({shape_run.dims.n_audio_head} heads)", ours[f"block {i}"], theirs[f"block {i}"]
        )
    parity.check("encoder ln_post", ours["ln_post"], theirs["ln_post"])
    parity.check("encoder ln_post vs AudioEncoder.forward", ours["ln_post"], theirs["AudioEncoder.forward"])
    parity.assert_all()


def test_decoder_blocks_kv_cache_and_cross_attention(shape_run: ShapeRun, max_report: Any) -> None:
    """Each decoder block: cross-attention K/V of the audio features, the self-attention cache after
    each pass (the prompt's keys/values, then one more position), and the block's output."""
    parity = Parity(max_report, shape_run)
    for step, (ours, theirs) in enumerate(zip(shape_run.ours, shape_run.theirs, strict=True)):
        for i in range(shape_run.dims.n_text_layer):
            when = f"decoder block {i}, {PASS_NAMES[step]}"
            if step == 0:
                parity.check(f"{when}: cross-attn K", ours.cross_kv[2 * i], theirs["cross_kv"][2 * i])
                parity.check(f"{when}: cross-attn V", ours.cross_kv[2 * i + 1], theirs["cross_kv"][2 * i + 1])
            parity.check(f"{when}: self-attn K cache", ours.self_kv[2 * i], theirs["self_kv"][2 * i])
            parity.check(f"{when}: self-attn V cache", ours.self_kv[2 * i + 1], theirs["self_kv"][2 * i + 1])
            parity.check(f"{when}: output", ours.blocks[i], theirs["blocks"][i])
    parity.assert_all()


def test_ln_and_logits_over_the_vocabulary(shape_run: ShapeRun, max_report: Any) -> None:
    parity = Parity(max_report, shape_run)
    for step, (ours, theirs) in enumerate(zip(shape_run.ours, shape_run.theirs, strict=True)):
        assert ours.logits.shape[-1] == shape_run.dims.n_vocab
        parity.check(f"decoder ln, {PASS_NAMES[step]}", ours.ln, theirs["ln"])
        parity.check(
            f"decoder logits ({shape_run.dims.n_vocab} tokens), {PASS_NAMES[step]}", ours.logits, theirs["logits"]
        )
    parity.assert_all()


# -- end to end on a real official checkpoint, where one is cached ---------------------------------------------


def official_checkpoints() -> list[Path]:
    """openai-whisper checkpoints (``<name>.pt`` of whisper's model table) in its download cache:
    ``$XDG_CACHE_HOME/whisper`` and ``~/.cache/whisper``; smallest first."""
    import whisper

    names = {os.path.basename(url) for url in whisper._MODELS.values()}
    roots = {Path(os.path.expanduser("~/.cache/whisper"))}
    if os.environ.get("XDG_CACHE_HOME"):
        roots.add(Path(os.environ["XDG_CACHE_HOME"]) / "whisper")
    found = {p for root in roots if root.is_dir() for p in root.glob("*.pt") if p.name in names}
    return sorted(found, key=lambda p: p.stat().st_size)


@pytest.mark.slow
def test_transcribe_jfk_with_an_official_checkpoint(jfk_audio: np.ndarray, max_report: Any) -> None:
    """The smallest official checkpoint in whisper's cache: max and cpu give identical tokens on jfk."""
    found = official_checkpoints()
    if not found:
        pytest.skip(
            "no official openai-whisper checkpoint in ~/.cache/whisper or $XDG_CACHE_HOME/whisper "
            "(none can be downloaded here); the shapes are covered by the random-weight probes above"
        )
    pytest.importorskip("max.engine", reason="the MAX engine is not installed")
    from max_whisper.backends import create_backend
    from max_whisper.decoding import transcribe

    path = found[0]
    results, dims = {}, {}
    for name in ("cpu", "max"):
        start = time.perf_counter()
        backend = create_backend(name, str(path))
        dims[backend.name] = backend.dims
        results[backend.name] = transcribe(backend, jfk_audio, temperature=0.0, language="en")
        max_report.record_time(
            f"{backend.name} {path.name}: load + compile + transcribe jfk", time.perf_counter() - start
        )
        del backend
    assert dims["max"] == dims["cpu"], f"MaxBackend read dims {dims['max']}; the checkpoint has {dims['cpu']}"
    tokens = {name: [s["tokens"] for s in r["segments"]] for name, r in results.items()}
    assert tokens["max"] == tokens["cpu"], (
        f"{path.name}: max {results['max']['text']!r} != cpu {results['cpu']['text']!r}"
    )
    assert "country" in results["cpu"]["text"].lower()
