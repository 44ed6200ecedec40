"""Compiled graphs kept on disk between processes: a warm start loads them instead of building them.

MAX's own compile cache (``~/.cache/modular``) spares the compiler, but a process still builds each
graph in Python, serialises it and looks it up: about 2.5 s per graph on two cores, 13–15 s for the
CPU plan (docs/performance.md, entry 26).  Loading a compiled artifact (a ``.mef`` file) with its
weights registry takes a few milliseconds and needs no graph at all.

An :class:`ArtifactStore` is one folder per *key*: the hash of everything that decides a graph's
code — the MAX version, the source of the modules that build the graphs, the model's dimensions and
timestamp token, the graph plan (device, decoder dtype) and the device itself (CPU model and
features, or GPU architecture).  Weights are not part of the key: graphs take them through the
weights registry, so every checkpoint with the same dimensions shares the artifacts.  An artifact is
written to a temporary file and renamed into place (never half-written, safe under concurrent
writers); one that fails to load is compiled again and replaced.

``MAX_WHISPER_GRAPH_DIR`` moves the store (default ``~/.cache/max-whisper/graphs``); ``off``
turns it off.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import tempfile
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from whisper.model import ModelDimensions

from ...config import cache_dir, switched_off

logger = logging.getLogger(__name__)

GRAPH_DIR_ENV = "MAX_WHISPER_GRAPH_DIR"
#: The modules whose source decides what the graphs compute (their bytes are part of the key), besides
#: every Mojo kernel in ``kernels/``.
GRAPH_SOURCES = ("layers.py", "choice.py", "graphs.py", "weights.py")


def graph_store_root() -> Path | None:
    """``$MAX_WHISPER_GRAPH_DIR``, or ``<max-whisper cache>/graphs``; None when set to ``off``."""
    override = os.environ.get(GRAPH_DIR_ENV)
    if switched_off(override) or (override is not None and not override.strip()):
        return None
    return Path(override).expanduser() if override else cache_dir() / "graphs"


def device_label(device: Any) -> str:
    """What the compiled code depends on in ``device`` (a ``max.driver`` device): for a GPU its
    architecture and model, for the CPU the machine, the CPU model and its feature flags."""
    if not device.is_host:
        return f"gpu:{device.architecture_name}:{device.model_name}"
    model, flags = "", ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not model:
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = hashlib.sha256(value.strip().encode()).hexdigest()[:16]
    return f"cpu:{platform.machine()}:{model or platform.processor()}:{flags}"


def max_version() -> str:
    """The installed MAX version (the compiled code depends on it)."""
    try:
        return metadata.version("max")
    except metadata.PackageNotFoundError:  # installed under another distribution name
        import max

        return str(getattr(max, "__version__", "unknown"))


def source_digest(here: Path = Path(__file__).parent) -> str:
    """SHA256 over the source of the graph-building modules and kernels in ``here`` (this package)."""
    digest = hashlib.sha256()
    for path in [here / name for name in GRAPH_SOURCES] + sorted((here / "kernels").glob("*.mojo")):
        digest.update(path.relative_to(here).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class ArtifactStore:
    """The compiled graphs of one key, as ``<folder>/<graph name>.mef``."""

    folder: Path

    @classmethod
    def for_graphs(
        cls, dims: ModelDimensions, timestamp_begin: int, plan: Any, device: Any, root: Path | None = None
    ) -> ArtifactStore | None:
        """The store for these graphs on ``device`` (None when the store is turned off)."""
        root = graph_store_root() if root is None else root
        if root is None:
            return None
        key = {
            "max": max_version(),
            "sources": source_digest(),
            "dims": asdict(dims),
            "timestamp_begin": timestamp_begin,
            "plan": [plan.device, plan.dtype, plan.panels],
            "device": device_label(device),
        }
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
        return cls(root / digest)

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.mef"

    def load(self, session: Any, name: str, weights_registry: Any) -> Any | None:
        """The graph ``name`` initialised from its artifact, or None if there is none (or it is unusable)."""
        path = self.path(name)
        if not path.is_file():
            return None
        try:
            return session.load(path, weights_registry=weights_registry)
        except Exception as exc:  # a truncated or foreign file: compile again and replace it
            logger.warning("compiled graph %s is unusable (%s); compiling it again", path, exc)
            return None

    def save(self, compiled: Any, name: str) -> None:
        """Write ``compiled`` (a ``max.engine.CompiledModel``) as the artifact of ``name``; a store that
        cannot be written (read-only, full) is skipped with a log line: the graph still runs."""
        tmp = None
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".mef.tmp", dir=self.folder)
            os.close(fd)
            compiled.export_mef(tmp)
            os.replace(tmp, self.path(name))
            tmp = None
        except Exception as exc:
            logger.info("could not keep the compiled graph %s in %s: %s", name, self.folder, exc)
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
