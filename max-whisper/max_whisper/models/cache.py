"""The verified model cache: checkpoints converted once, written atomically, checked on every use.

A cached checkpoint ``<cache>/<name>.pt`` has a sidecar ``<name>.pt.sha256`` (JSON: file size,
SHA256, the source it was built from and the converter version). :func:`cached_checkpoint`
returns the file only when it matches its sidecar; otherwise it rebuilds it. One process builds at a
time: the others wait on ``<name>.pt.lock`` (a :class:`filelock.FileLock`, an ``flock`` on POSIX)
and then find the finished file. Files are written into unique temp files and renamed into place,
so a build killed at any moment leaves nothing that verifies; the next build removes its temps.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from filelock import FileLock

from ..config import cache_dir

logger = logging.getLogger(__name__)

#: Environment variable that overrides where converted checkpoints are cached.
MODEL_DIR_ENV = "MAX_WHISPER_MODEL_DIR"

_HASH_CHUNK = 1 << 20


def model_cache_dir() -> Path:
    """Where converted checkpoints live: ``$MAX_WHISPER_MODEL_DIR`` or ``cache_dir()``."""
    override = os.environ.get(MODEL_DIR_ENV)
    return Path(override).expanduser() if override else cache_dir()


def sha256_file(path: Path) -> str:
    """Hex SHA256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sidecar_path(checkpoint: Path) -> Path:
    """The sidecar holding the checkpoint's size and SHA256: ``<name>.pt.sha256``."""
    return checkpoint.with_name(checkpoint.name + ".sha256")


def lock_path(target: Path) -> Path:
    """The file the build lock of ``target`` is held on: ``<name>.pt.lock`` (it stays in place)."""
    return target.with_name(target.name + ".lock")


def write_atomic(target: Path, write: Callable[[BinaryIO], Any]) -> tuple[int, str]:
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


def _remove_stale_temps(target: Path) -> None:
    """Delete the temp files of ``target`` (and its sidecar) that a killed build left behind.

    Called only while holding ``target``'s build lock: every temp file is written under that lock,
    so any that exists then belongs to a process that died before renaming it.
    """
    for stale in target.parent.glob(f".{target.name}.*.tmp"):
        logger.info("removing %s, left by an interrupted build", stale)
        with contextlib.suppress(OSError):
            stale.unlink()


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
    given, the sidecar must also record the same values for each of its keys.
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


def _store(target: Path, build: Callable[[], Any], provenance: dict[str, Any]) -> None:
    """Save ``build()`` with ``torch.save`` into ``target``, then its sidecar, each atomically.

    The checkpoint is built before any file is opened: a build killed while converting leaves nothing.
    """
    import torch

    checkpoint = build()
    size, digest = write_atomic(target, lambda f: torch.save(checkpoint, f))
    sidecar = {"file": target.name, "size": size, "sha256": digest, **provenance}
    write_atomic(sidecar_path(target), lambda f: f.write((json.dumps(sidecar, indent=2) + "\n").encode()))


def cached_checkpoint(target: Path, build: Callable[[], Any], provenance: dict[str, Any]) -> Path:
    """``target`` verified against its sidecar and ``provenance``; built with ``build()`` when it is not.

    ``build`` returns the checkpoint object to save. Invalid files are logged and rebuilt, never
    returned. Raises what ``build`` or the file system raises.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(lock_path(target)):
        _remove_stale_temps(target)
        problem = verify_checkpoint(target, provenance)
        if problem is None:
            return target
        if problem != "missing":
            logger.warning("cached %s is invalid (%s); rebuilding it", target, problem)
        _store(target, build, provenance)
    return target
