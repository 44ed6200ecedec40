"""Models: resolve a name or path to a verified checkpoint, and load it.

- :mod:`.resolve`: names and paths to checkpoint files (the embedded ``tiny.en``, official
  openai-whisper names, ``.pt`` paths);
- :mod:`.cache`: the verified cache of converted checkpoints (atomic writes, SHA256 sidecars, a
  build lock);
- :mod:`.load`: checkpoint dicts, their dimensions and openai-whisper ``Whisper`` modules;
- :mod:`.ct2`: the CTranslate2 reader and the conversion to openai-whisper's layout.

Every failure is a one-line :class:`~max_whisper.errors.ModelError`.
"""

from __future__ import annotations

from .cache import MODEL_DIR_ENV, model_cache_dir, sha256_file, sidecar_path, verify_checkpoint
from .load import load_checkpoint, load_model, model_dims
from .resolve import CONVERTER_VERSION, EMBEDDED_MODELS, available_models, resolve_checkpoint

__all__ = [
    "CONVERTER_VERSION",
    "EMBEDDED_MODELS",
    "MODEL_DIR_ENV",
    "available_models",
    "load_checkpoint",
    "load_model",
    "model_cache_dir",
    "model_dims",
    "resolve_checkpoint",
    "sha256_file",
    "sidecar_path",
    "verify_checkpoint",
]
