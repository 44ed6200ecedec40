"""Model resolution, the verified tiny.en cache, official names and loading."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import urllib.error
from pathlib import Path
from typing import Any

import pytest
import torch
import whisper

from max_whisper import models
from max_whisper.config import whisper_download_root
from max_whisper.errors import ModelError
from max_whisper.models import ct2

# --------------------------------------------------------------------------- fixtures


#: A toy whisper small enough that saving, hashing and loading it take milliseconds.
SMALL_DIMS = {
    "n_mels": 80,
    "n_audio_ctx": 8,
    "n_audio_state": 16,
    "n_audio_head": 2,
    "n_audio_layer": 1,
    "n_vocab": 51864,
    "n_text_ctx": 8,
    "n_text_state": 16,
    "n_text_head": 2,
    "n_text_layer": 2,
}


@pytest.fixture(scope="module")
def small_checkpoint() -> dict[str, Any]:
    """A valid checkpoint of a toy whisper (random weights), with alignment heads."""
    torch.manual_seed(0)
    model = whisper.model.Whisper(whisper.model.ModelDimensions(**SMALL_DIMS))
    return {"dims": dict(SMALL_DIMS), "model_state_dict": model.state_dict(), "alignment_heads": [[1, 0], [1, 1]]}


@pytest.fixture
def convert_calls(monkeypatch: pytest.MonkeyPatch, small_checkpoint: dict[str, Any]) -> list[Path]:
    """Replace the CTranslate2 conversion by the toy checkpoint (fast); record each call."""
    calls: list[Path] = []

    def fake_convert(model_dir: Path) -> dict[str, Any]:
        calls.append(Path(model_dir))
        return small_checkpoint

    monkeypatch.setattr(ct2, "convert_ct2_whisper", fake_convert)
    return calls


@pytest.fixture
def small_cache(isolated_cache: Path, convert_calls: list[Path]) -> Path:
    """An isolated cache holding a valid toy tiny.en.pt built by the fake conversion."""
    path = models.resolve_checkpoint("tiny.en")
    convert_calls.clear()
    return path


@pytest.fixture
def small_pt(tmp_path: Path, small_checkpoint: dict[str, Any]) -> Path:
    """The toy checkpoint saved as a user file."""
    path = tmp_path / "small.pt"
    torch.save(small_checkpoint, path)
    return path


@pytest.fixture
def seeded_cache(isolated_cache: Path, checkpoint_path: Path) -> Path:
    """An isolated cache holding a copy of the session's real tiny.en.pt and its sidecar."""
    isolated_cache.mkdir(parents=True)
    target = isolated_cache / "tiny.en.pt"
    shutil.copyfile(checkpoint_path, target)
    shutil.copyfile(models.sidecar_path(checkpoint_path), models.sidecar_path(target))
    return target


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _no_download(url: str, root: str, in_memory: bool) -> str:
    raise urllib.error.URLError("network is unreachable (test)")


# --------------------------------------------------------------------------- embedded tiny.en


def test_default_build_writes_checkpoint_and_sidecar(isolated_cache: Path, convert_calls: list[Path]) -> None:
    path = models.resolve_checkpoint()
    assert path == isolated_cache / "tiny.en.pt"
    assert len(convert_calls) == 1
    sidecar = json.loads(models.sidecar_path(path).read_text())
    assert sidecar["size"] == path.stat().st_size
    assert sidecar["sha256"] == _sha256(path)
    assert sidecar["converter"] == models.CONVERTER_VERSION
    assert not [p.name for p in isolated_cache.iterdir() if p.name.endswith(".tmp")]


def test_session_checkpoint_is_verified(checkpoint_path: Path) -> None:
    sidecar = json.loads(models.sidecar_path(checkpoint_path).read_text())
    assert sidecar["sha256"] == _sha256(checkpoint_path)
    assert models.verify_checkpoint(checkpoint_path) is None


def test_cache_reused(seeded_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ct2, "convert_ct2_whisper", lambda d: pytest.fail("reconverted a valid cache"))
    mtime = seeded_cache.stat().st_mtime_ns
    assert models.resolve_checkpoint("tiny.en") == seeded_cache
    assert models.resolve_checkpoint("tiny.en") == seeded_cache
    assert seeded_cache.stat().st_mtime_ns == mtime


def test_second_resolve_does_not_reconvert(isolated_cache: Path, convert_calls: list[Path]) -> None:
    first = models.resolve_checkpoint()
    mtime = first.stat().st_mtime_ns
    assert models.resolve_checkpoint() == first
    assert len(convert_calls) == 1
    assert first.stat().st_mtime_ns == mtime


def _truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


def _flip_byte(path: Path) -> None:
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))


def _drop_sidecar(path: Path) -> None:
    models.sidecar_path(path).unlink()


def _garble_sidecar(path: Path) -> None:
    models.sidecar_path(path).write_text("not json")


def _old_converter(path: Path) -> None:
    sidecar = models.sidecar_path(path)
    data = json.loads(sidecar.read_text())
    data["converter"] = -1
    sidecar.write_text(json.dumps(data))


@pytest.mark.parametrize("damage", [_truncate, _flip_byte, _drop_sidecar, _garble_sidecar, _old_converter])
def test_damaged_cache_is_rebuilt(
    small_cache: Path, convert_calls: list[Path], damage: Any, caplog: pytest.LogCaptureFixture
) -> None:
    good_sha = _sha256(small_cache)
    damage(small_cache)
    with caplog.at_level("WARNING", logger="max_whisper.models"):
        path = models.resolve_checkpoint("tiny.en")
    assert path == small_cache
    assert len(convert_calls) == 1
    assert "rebuilding" in caplog.text
    assert _sha256(path) == good_sha
    assert models.verify_checkpoint(path) is None


def test_load_model_never_loads_corrupt_cache(seeded_cache: Path, convert_calls: list[Path]) -> None:
    _flip_byte(seeded_cache)
    model = models.load_model()
    assert len(convert_calls) == 1
    assert model.dims.n_text_layer == SMALL_DIMS["n_text_layer"]  # the rebuilt (toy) model, not the corrupt one


def test_model_dir_env_overrides_cache(
    tmp_path: Path, isolated_cache: Path, convert_calls: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(models.MODEL_DIR_ENV, str(tmp_path / "models"))
    path = models.resolve_checkpoint()
    assert path == tmp_path / "models" / "tiny.en.pt"
    assert not isolated_cache.exists()


def test_unwritable_cache_is_model_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, convert_calls: list[Path]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv(models.MODEL_DIR_ENV, str(blocker / "sub"))
    with pytest.raises(ModelError, match="cannot prepare model 'tiny.en'"):
        models.resolve_checkpoint()


def _resolve_in_threads(count: int) -> list[Any]:
    """``resolve_checkpoint()`` in ``count`` threads at once: each one's path, or its exception."""
    results: list[Any] = []

    def worker() -> None:
        try:
            results.append(models.resolve_checkpoint())
        except BaseException as exc:  # noqa: BLE001 - reported by the callers' assertions
            results.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def test_concurrent_builds_in_threads_wait_on_the_lock(
    isolated_cache: Path, small_checkpoint: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two threads at once on an empty cache: one converts, the other waits on the lock and reuses it."""
    calls: list[int] = []

    def slow_convert(model_dir: Path) -> dict[str, Any]:
        calls.append(1)
        threading.Event().wait(0.3)  # keep the build window open so that the threads overlap
        return small_checkpoint

    monkeypatch.setattr(ct2, "convert_ct2_whisper", slow_convert)
    assert _resolve_in_threads(2) == [isolated_cache / "tiny.en.pt"] * 2
    assert len(calls) == 1
    assert models.verify_checkpoint(isolated_cache / "tiny.en.pt") is None


_BUILDER = """
import sys, time
import torch, whisper
from max_whisper.models import ct2
from max_whisper import models

dims = {dims!r}

def fake_convert(model_dir):
    print("converting", file=sys.stderr)
    time.sleep(0.5)  # keep the build window open so that the two processes overlap
    torch.manual_seed(0)
    model = whisper.model.Whisper(whisper.model.ModelDimensions(**dims))
    return {{"dims": dims, "model_state_dict": model.state_dict()}}

ct2.convert_ct2_whisper = fake_convert
print(models.resolve_checkpoint())
"""


def test_concurrent_builds_in_processes(tmp_path: Path) -> None:
    """Two processes on an empty cache both succeed, one of them builds, and the file is valid."""
    env = {k: v for k, v in os.environ.items() if k != models.MODEL_DIR_ENV}
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")
    code = _BUILDER.format(dims=SMALL_DIMS)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err
    target = tmp_path / "xdg" / "max-whisper" / "tiny.en.pt"
    assert [out.strip() for out, _ in outputs] == [str(target)] * 2
    assert sum(err.count("converting") for _, err in outputs) == 1  # the lock made the other wait
    assert models.verify_checkpoint(target) is None
    assert models.load_checkpoint(str(target))["dims"] == SMALL_DIMS


# --------------------------------------------------------------------------- names and paths


def test_unknown_name(isolated_cache: Path) -> None:
    with pytest.raises(ModelError, match="unknown model 'tiny-foo'.*available models: tiny.en") as info:
        models.resolve_checkpoint("tiny-foo")
    assert "\n" not in str(info.value)
    assert "base.en" in str(info.value)


def test_missing_pt_path(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        models.resolve_checkpoint(str(tmp_path / "nope.pt"))
    with pytest.raises(ModelError, match="not found"):
        models.load_model(tmp_path / "nope.pt")


def test_directory_is_not_a_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "dir.pt").mkdir()
    with pytest.raises(ModelError, match="not a file"):
        models.resolve_checkpoint(str(tmp_path / "dir.pt"))


def test_text_file_is_not_a_checkpoint(tmp_path: Path) -> None:
    bogus = tmp_path / "x.pt"
    bogus.write_text("hello, I am not a model\n")
    with pytest.raises(ModelError, match="not a PyTorch checkpoint"):
        models.resolve_checkpoint(str(bogus))
    with pytest.raises(ModelError, match="not a PyTorch checkpoint"):
        models.load_model(str(bogus))


def test_torch_file_without_dims_is_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "x.pt"
    torch.save({"weights": torch.zeros(2)}, path)
    assert models.resolve_checkpoint(str(path)) == path
    with pytest.raises(ModelError, match="not a whisper checkpoint"):
        models.load_checkpoint(str(path))


def test_truncated_user_checkpoint(tmp_path: Path, checkpoint_path: Path) -> None:
    path = tmp_path / "x.pt"
    with open(checkpoint_path, "rb") as src:
        path.write_bytes(src.read(4096))
    with pytest.raises(ModelError) as info:
        models.load_model(str(path))
    assert "\n" not in str(info.value)


def test_wrong_state_dict_is_model_error(tmp_path: Path, small_checkpoint: dict[str, Any]) -> None:
    path = tmp_path / "x.pt"
    state = dict(small_checkpoint["model_state_dict"])
    del state["decoder.ln.bias"]
    torch.save({"dims": small_checkpoint["dims"], "model_state_dict": state}, path)
    with pytest.raises(ModelError, match="decoder.ln.bias"):
        models.load_model(str(path))


def test_pickled_code_refused(tmp_path: Path) -> None:
    """weights_only loading: a checkpoint that would run code on load is refused."""
    path = tmp_path / "evil.pt"
    torch.save({"dims": {}, "model_state_dict": {}, "x": threading.Lock}, path)
    with pytest.raises(ModelError, match="cannot load checkpoint"):
        models.load_checkpoint(str(path))


# --------------------------------------------------------------------------- official names


def test_official_name_without_network(isolated_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(whisper, "_download", _no_download)
    with pytest.raises(ModelError, match=r"could not download model 'base.en' \(no network\?\)"):
        models.resolve_checkpoint("base.en")


def _fake_official(monkeypatch: pytest.MonkeyPatch, source: Path, name: str = "base.en") -> Path:
    """Put ``source`` in whisper's cache as ``name`` and point whisper's URL table at its SHA256."""
    root = whisper_download_root()
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{name}.pt"
    shutil.copyfile(source, path)
    monkeypatch.setitem(whisper._MODELS, name, f"https://example.invalid/models/{_sha256(path)}/{name}.pt")
    return path


def test_official_name_from_whisper_cache(
    isolated_cache: Path, small_pt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _fake_official(monkeypatch, small_pt)
    monkeypatch.setattr(whisper, "_download", lambda *a: pytest.fail("downloaded a valid cached model"))
    assert models.resolve_checkpoint("base.en") == path
    model = models.load_model("base.en")
    assert model.dims.n_audio_state == SMALL_DIMS["n_audio_state"]
    assert model.alignment_heads.to_dense().nonzero().tolist() == [[1, 0], [1, 1]]


def test_official_name_uses_whisper_alignment_heads(
    isolated_cache: Path, tmp_path: Path, small_checkpoint: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint without alignment heads (an official one) gets whisper's table for its name."""
    plain = tmp_path / "plain.pt"
    dims = dict(
        small_checkpoint["dims"], n_text_layer=4, n_text_head=6, n_text_state=24, n_audio_state=24, n_audio_head=6
    )
    state = whisper.model.Whisper(whisper.model.ModelDimensions(**dims)).state_dict()
    torch.save({"dims": dims, "model_state_dict": state}, plain)
    _fake_official(monkeypatch, plain, name="tiny.en")
    monkeypatch.setattr(models, "EMBEDDED_MODELS", ())  # treat tiny.en as a plain official name
    model = models.load_model("tiny.en")
    assert model.alignment_heads.to_dense().nonzero().tolist() == [
        [1, 0],
        [2, 0],
        [2, 5],
        [3, 0],
        [3, 1],
        [3, 2],
        [3, 3],
        [3, 4],
    ]


def test_official_cache_with_bad_sha_redownloads(
    isolated_cache: Path, small_pt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _fake_official(monkeypatch, small_pt)
    _flip_byte(path)
    monkeypatch.setattr(whisper, "_download", _no_download)
    with pytest.raises(ModelError, match="could not download model 'base.en'"):
        models.resolve_checkpoint("base.en")


# --------------------------------------------------------------------------- loading


def test_load_model(seeded_cache: Path) -> None:
    model = models.load_model()
    assert isinstance(model, whisper.model.Whisper)
    assert not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model.device == torch.device("cpu")
    heads = model.alignment_heads.to_dense().nonzero().tolist()
    assert heads == [[1, 0], [2, 0], [2, 5], [3, 0], [3, 1], [3, 2], [3, 3], [3, 4]]


def test_load_checkpoint_and_dims(seeded_cache: Path) -> None:
    checkpoint = models.load_checkpoint()
    dims = models.model_dims(checkpoint)
    assert isinstance(dims, whisper.model.ModelDimensions)
    assert (dims.n_mels, dims.n_audio_ctx, dims.n_text_ctx, dims.n_vocab) == (80, 1500, 448, 51864)


def test_model_dims_malformed() -> None:
    with pytest.raises(ModelError, match="malformed dims"):
        models.model_dims({"dims": {"n_mels": 80}})


def test_load_model_bad_device_is_model_error(small_cache: Path) -> None:
    with pytest.raises(ModelError, match="cannot load model 'tiny.en'"):
        models.load_model(device="no-such-device")
