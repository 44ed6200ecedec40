"""Convert CTranslate2 Whisper models to openai-whisper checkpoints.

:func:`convert_ct2_whisper` turns a CTranslate2 ``WhisperSpec`` folder (``model.bin`` +
``config.json``, read by :mod:`.ct2_format`) into ``{"dims": ..., "model_state_dict": ...,
"alignment_heads": ...}``, the format ``whisper.load_model`` reads, with every tensor in float32.
Every CTranslate2 variable must be mapped and every whisper tensor present, or the conversion fails.
"""

from __future__ import annotations

import base64
import gzip
import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelError
from .ct2_format import dequantize, read_model_bin

logger = logging.getLogger(__name__)

#: Scalar settings of ``WhisperSpec`` that must hold for openai-whisper's architecture to apply.
#: ``activation`` 3 is CTranslate2's exact (erf) GELU, the one ``torch.nn.GELU()`` computes.
EXPECTED_SETTINGS: dict[str, int] = {
    "decoder/activation": 3,
    "decoder/alibi": 0,
    "decoder/pre_norm": 1,
    "decoder/scale_embeddings": 0,
    "decoder/start_from_zero_embedding": 0,
}

#: Scalar settings read for information only (they do not change the weights).
INFORMATIONAL_SETTINGS = ("decoder/alignment_heads", "decoder/alignment_layer")

_LAYER_RE = re.compile(r"^(encoder|decoder)/layer_(\d+)/")


def _scalar(variables: dict[str, np.ndarray], name: str) -> int | None:
    """Return an integer scalar variable, or None if absent."""
    value = variables.get(name)
    return None if value is None else int(np.asarray(value).reshape(()))


def _layer_count(variables: dict[str, np.ndarray], side: str) -> int:
    """Count ``<side>/layer_<i>/`` blocks, checking that they are numbered 0..n-1."""
    indices = {int(m.group(2)) for m in map(_LAYER_RE.match, variables) if m and m.group(1) == side}
    if indices != set(range(len(indices))):
        raise ModelError(f"{side} layers are not numbered 0..n-1: {sorted(indices)}")
    return len(indices)


def _num_heads(variables: dict[str, np.ndarray], config: dict[str, Any], side: str, n_state: int) -> int:
    """Attention heads of one side: the ``num_heads`` scalar, else config.json, else n_state // 64."""
    heads = _scalar(variables, f"{side}/num_heads")
    if heads is None:
        for key in (f"{side}_attention_heads", f"{side}_num_heads", "num_heads"):
            if isinstance(config.get(key), int):
                heads = config[key]
                break
    if heads is None:
        heads = n_state // 64
        logger.warning("%s/num_heads not found; assuming %d heads (64 dims each)", side, heads)
    if heads <= 0 or n_state % heads:
        raise ModelError(f"{side}: {heads} heads do not divide the width {n_state}")
    return heads


def _shape(variables: dict[str, np.ndarray], name: str) -> tuple[int, ...]:
    """Shape of a required variable (ModelError if missing)."""
    if name not in variables:
        raise ModelError(f"CTranslate2 model has no variable {name!r}; is it a Whisper model?")
    return variables[name].shape


def derive_dims(variables: dict[str, np.ndarray], config: dict[str, Any]) -> dict[str, int]:
    """Compute openai-whisper's ``ModelDimensions`` fields from tensor shapes and head counts."""
    n_audio_ctx, n_audio_state = _shape(variables, "encoder/position_encodings/encodings")
    n_text_ctx, n_text_state = _shape(variables, "decoder/position_encodings/encodings")
    n_vocab, _ = _shape(variables, "decoder/embeddings/weight")
    return {
        "n_mels": _shape(variables, "encoder/conv1/weight")[1],
        "n_audio_ctx": n_audio_ctx,
        "n_audio_state": n_audio_state,
        "n_audio_head": _num_heads(variables, config, "encoder", n_audio_state),
        "n_audio_layer": _layer_count(variables, "encoder"),
        "n_vocab": n_vocab,
        "n_text_ctx": n_text_ctx,
        "n_text_state": n_text_state,
        "n_text_head": _num_heads(variables, config, "decoder", n_text_state),
        "n_text_layer": _layer_count(variables, "decoder"),
    }


class _Mapper:
    """Collects whisper tensors from CT2 variables and remembers which variables were used."""

    def __init__(self, variables: dict[str, np.ndarray]) -> None:
        self.variables = variables
        self.used: set[str] = set()
        self.state: dict[str, np.ndarray] = {}

    def take(self, name: str) -> np.ndarray:
        """Fetch a CT2 variable and mark it as mapped."""
        _shape(self.variables, name)
        self.used.add(name)
        return self.variables[name]

    def copy(self, target: str, source: str) -> None:
        """Map one CT2 variable to one whisper tensor unchanged."""
        self.state[target] = self.take(source)

    def linear(self, target: str, source: str) -> None:
        """Map a CT2 ``linear`` (weight, bias) to a whisper ``Linear``."""
        self.copy(f"{target}.weight", f"{source}/weight")
        self.copy(f"{target}.bias", f"{source}/bias")

    def layer_norm(self, target: str, source: str) -> None:
        """Map a CT2 ``layer_norm`` (gamma, beta) to a whisper ``LayerNorm``."""
        self.copy(f"{target}.weight", f"{source}/gamma")
        self.copy(f"{target}.bias", f"{source}/beta")

    def split_linear(self, targets: list[str], source: str) -> None:
        """Split a stacked CT2 linear (rows q|k|v or k|v) into whisper's separate projections.

        whisper's ``key`` projection has no bias, so the CT2 key bias must be all zeros and is dropped.
        """
        weight, bias = self.take(f"{source}/weight"), self.take(f"{source}/bias")
        if weight.shape[0] % len(targets):
            raise ModelError(f"{source}/weight has {weight.shape[0]} rows, not {len(targets)} equal parts")
        for target, w, b in zip(targets, np.split(weight, len(targets)), np.split(bias, len(targets)), strict=True):
            self.state[f"{target}.weight"] = w
            if target.endswith(".key"):
                if np.any(b != 0):
                    raise ModelError(f"{source}: the key bias is not zero, whisper's key has no bias")
            else:
                self.state[f"{target}.bias"] = b

    def mlp(self, target: str, source: str) -> None:
        """Map a CT2 ``ffn`` block to whisper's ``mlp_ln`` + ``mlp`` (Linear, GELU, Linear)."""
        self.layer_norm(f"{target}.mlp_ln", f"{source}/layer_norm")
        self.linear(f"{target}.mlp.0", f"{source}/linear_0")
        self.linear(f"{target}.mlp.2", f"{source}/linear_1")

    def self_attention(self, target: str, source: str, name: str = "attn") -> None:
        """Map a CT2 self-attention block (fused q,k,v) to whisper's ``attn`` + ``attn_ln``."""
        self.layer_norm(f"{target}.{name}_ln", f"{source}/layer_norm")
        self.split_linear([f"{target}.{name}.{p}" for p in ("query", "key", "value")], f"{source}/linear_0")
        self.linear(f"{target}.{name}.out", f"{source}/linear_1")

    def cross_attention(self, target: str, source: str) -> None:
        """Map a CT2 cross-attention block (q; fused k,v; out) to whisper's ``cross_attn``."""
        self.layer_norm(f"{target}.cross_attn_ln", f"{source}/layer_norm")
        self.linear(f"{target}.cross_attn.query", f"{source}/linear_0")
        self.split_linear([f"{target}.cross_attn.{p}" for p in ("key", "value")], f"{source}/linear_1")
        self.linear(f"{target}.cross_attn.out", f"{source}/linear_2")


def map_state_dict(variables: dict[str, np.ndarray], dims: dict[str, int]) -> tuple[dict[str, np.ndarray], set[str]]:
    """Build the whisper state_dict (numpy float32) and return it with the set of CT2 names used."""
    m = _Mapper(variables)
    m.copy("encoder.conv1.weight", "encoder/conv1/weight")
    m.copy("encoder.conv1.bias", "encoder/conv1/bias")
    m.copy("encoder.conv2.weight", "encoder/conv2/weight")
    m.copy("encoder.conv2.bias", "encoder/conv2/bias")
    m.copy("encoder.positional_embedding", "encoder/position_encodings/encodings")
    for i in range(dims["n_audio_layer"]):
        m.self_attention(f"encoder.blocks.{i}", f"encoder/layer_{i}/self_attention")
        m.mlp(f"encoder.blocks.{i}", f"encoder/layer_{i}/ffn")
    m.layer_norm("encoder.ln_post", "encoder/layer_norm")
    m.copy("decoder.token_embedding.weight", "decoder/embeddings/weight")
    m.copy("decoder.positional_embedding", "decoder/position_encodings/encodings")
    for i in range(dims["n_text_layer"]):
        m.self_attention(f"decoder.blocks.{i}", f"decoder/layer_{i}/self_attention")
        m.cross_attention(f"decoder.blocks.{i}", f"decoder/layer_{i}/attention")
        m.mlp(f"decoder.blocks.{i}", f"decoder/layer_{i}/ffn")
    m.layer_norm("decoder.ln", "decoder/layer_norm")
    return m.state, m.used


def _check_settings(variables: dict[str, np.ndarray]) -> set[str]:
    """Check the architecture scalars against openai-whisper's; return the names consumed."""
    used = {"encoder/num_heads", "decoder/num_heads"} & variables.keys()
    for name, expected in EXPECTED_SETTINGS.items():
        value = _scalar(variables, name)
        if value is not None and value != expected:
            raise ModelError(f"{name} = {value}, but openai-whisper's architecture needs {expected}")
        if value is not None:
            used.add(name)
    return used | (set(INFORMATIONAL_SETTINGS) & variables.keys())


def _check_aliases(aliases: dict[str, str]) -> None:
    """Accept only the aliases whisper reproduces (the output projection tied to the embedding)."""
    for alias, target in aliases.items():
        if (alias, target) != ("decoder/projection/weight", "decoder/embeddings/weight"):
            raise ModelError(f"unmapped CTranslate2 alias {alias!r} -> {target!r}")


def expected_state_shapes(dims: dict[str, int]) -> dict[str, tuple[int, ...]]:
    """The state_dict keys and shapes of ``whisper.model.Whisper(ModelDimensions(**dims))``.

    Built on the meta device (no memory) from the encoder and decoder, whose state_dicts make up
    the whole model's (``alignment_heads`` is a non-persistent buffer).
    """
    import torch
    from whisper.model import AudioEncoder, ModelDimensions, TextDecoder, Whisper

    d = ModelDimensions(**dims)
    try:
        with torch.device("meta"):
            encoder = AudioEncoder(d.n_mels, d.n_audio_ctx, d.n_audio_state, d.n_audio_head, d.n_audio_layer)
            decoder = TextDecoder(d.n_vocab, d.n_text_ctx, d.n_text_state, d.n_text_head, d.n_text_layer)
        parts = {"encoder": encoder.state_dict(), "decoder": decoder.state_dict()}
        return {f"{p}.{k}": tuple(v.shape) for p, sd in parts.items() for k, v in sd.items()}
    except (RuntimeError, NotImplementedError):  # pragma: no cover - older torch without meta context
        return {k: tuple(v.shape) for k, v in Whisper(d).state_dict().items()}


def _check_complete(state: dict[str, np.ndarray], dims: dict[str, int]) -> None:
    """Raise ModelError unless ``state`` has exactly whisper's keys with whisper's shapes."""
    expected = expected_state_shapes(dims)
    missing = sorted(expected.keys() - state.keys())
    extra = sorted(state.keys() - expected.keys())
    if missing or extra:
        raise ModelError(f"converted state_dict does not match whisper: missing {missing[:5]}, extra {extra[:5]}")
    wrong = [k for k, shape in expected.items() if tuple(state[k].shape) != shape]
    if wrong:
        k = wrong[0]
        raise ModelError(f"{len(wrong)} tensors have the wrong shape, e.g. {k}: {state[k].shape} != {expected[k]}")


def alignment_heads_dump(pairs: list[list[int]], n_text_layer: int, n_text_head: int) -> bytes:
    """Encode (layer, head) pairs as whisper's base85(gzip(bool mask)) for ``set_alignment_heads``."""
    mask = np.zeros((n_text_layer, n_text_head), dtype=bool)
    for layer, head in pairs:
        if not (0 <= layer < n_text_layer and 0 <= head < n_text_head):
            raise ModelError(f"alignment head ({layer}, {head}) is outside {n_text_layer} x {n_text_head}")
        mask[layer, head] = True
    return base64.b85encode(gzip.compress(mask.tobytes(), mtime=0))


def _read_config(model_dir: Path) -> dict[str, Any]:
    """Load ``config.json`` (empty dict if absent)."""
    path = model_dir / "config.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read {path}: {exc}") from exc


def _alignment_pairs(config: dict[str, Any], dims: dict[str, int]) -> list[list[int]] | None:
    """The config's alignment heads as validated [layer, head] pairs, or None."""
    pairs = config.get("alignment_heads")
    if not pairs:
        return None
    pairs = [[int(layer), int(head)] for layer, head in pairs]
    alignment_heads_dump(pairs, dims["n_text_layer"], dims["n_text_head"])  # validates the range
    return pairs


def convert_ct2_whisper(model_dir: str | Path) -> dict[str, Any]:
    """Convert a CTranslate2 Whisper folder into an openai-whisper checkpoint dict.

    Returns ``{"dims": {...}, "model_state_dict": {name: float32 tensor}}`` plus
    ``"alignment_heads"`` (a list of [layer, head] pairs) when ``config.json`` has them;
    :func:`alignment_heads_dump` turns those into what ``Whisper.set_alignment_heads`` takes.
    Raises ModelError if a variable is left unmapped or a whisper tensor is missing.
    """
    import torch

    model_dir = Path(model_dir)
    model = read_model_bin(model_dir / "model.bin")
    if model.spec != "WhisperSpec":
        raise ModelError(f"{model_dir} holds a {model.spec!r}, not a CTranslate2 WhisperSpec")
    variables = dequantize(model.variables)
    config = _read_config(model_dir)
    dims = derive_dims(variables, config)
    state, used = map_state_dict(variables, dims)
    used |= _check_settings(variables)
    unmapped = sorted(variables.keys() - used)
    if unmapped:
        raise ModelError(f"{len(unmapped)} CTranslate2 variables left unmapped, e.g. {unmapped[:5]}")
    _check_aliases(model.aliases)
    _check_complete(state, dims)
    checkpoint: dict[str, Any] = {
        "dims": dims,
        "model_state_dict": {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in state.items()},
    }
    pairs = _alignment_pairs(config, dims)
    if pairs is not None:
        checkpoint["alignment_heads"] = pairs
    logger.info("converted %s: %d tensors, dims %s", model_dir, len(state), dims)
    return checkpoint


__all__ = [
    "alignment_heads_dump",
    "convert_ct2_whisper",
    "derive_dims",
    "expected_state_shapes",
    "map_state_dict",
]
