"""Read CTranslate2 ``model.bin`` files (pure numpy).

The binary layout (``CURRENT_BINARY_VERSION`` 6 of CTranslate2's ``ModelSpec._serialize``), all
integers little-endian:

- ``uint32`` binary version, string spec name, ``uint32`` spec revision, ``uint32`` variable count;
- per variable: string name, ``uint8`` rank, rank x ``uint32`` dims, ``uint8`` dtype code,
  ``uint32`` byte count, raw bytes;
- ``uint32`` alias count, then (alias, target) string pairs.

A string is a ``uint16`` length (counting a trailing NUL) followed by the UTF-8 bytes and the NUL.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ModelError

logger = logging.getLogger(__name__)

#: Binary versions of ``model.bin`` this reader understands (dtype codes appeared in version 4).
SUPPORTED_BINARY_VERSIONS = range(4, 7)

#: CTranslate2's dtype codes (``_dtype_to_type_id``); bfloat16 is read as raw uint16 bits.
CT2_DTYPES: dict[int, str] = {
    0: "float32",
    1: "int8",
    2: "int16",
    3: "int32",
    4: "float16",
    5: "bfloat16",
}


@dataclass
class CT2Model:
    """The contents of one ``model.bin``: header, variables (numpy arrays) and aliases."""

    binary_version: int
    spec: str
    revision: int
    variables: dict[str, np.ndarray] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)


class _Reader:
    """Sequential little-endian reader over a bytes buffer that raises ModelError when truncated."""

    def __init__(self, data: bytes, source: str) -> None:
        self.data = data
        self.offset = 0
        self.source = source

    def take(self, size: int) -> memoryview:
        """Return the next ``size`` bytes."""
        end = self.offset + size
        if end > len(self.data):
            raise ModelError(f"{self.source} is truncated or corrupt (needed {size} bytes at offset {self.offset})")
        view = memoryview(self.data)[self.offset : end]
        self.offset = end
        return view

    def unpack(self, fmt: str) -> int:
        """Read one integer of struct format ``fmt`` (little-endian)."""
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        """Read a uint16-length, NUL-terminated UTF-8 string."""
        raw = bytes(self.take(self.unpack("H")))
        return raw.rstrip(b"\0").decode("utf-8")


def _decode_array(raw: memoryview, dtype_code: int, shape: tuple[int, ...], name: str) -> np.ndarray:
    """Turn a variable's raw bytes into a numpy array (bfloat16 widened to float32)."""
    dtype_name = CT2_DTYPES.get(dtype_code)
    if dtype_name is None:
        raise ModelError(f"variable {name!r} has unknown CTranslate2 dtype code {dtype_code}")
    stored = np.dtype("<u2" if dtype_name == "bfloat16" else np.dtype(dtype_name).newbyteorder("<"))
    count = int(np.prod(shape, dtype=np.int64))
    if count * stored.itemsize != len(raw):
        raise ModelError(f"variable {name!r}: {len(raw)} bytes do not hold {shape} {dtype_name}")
    array = np.frombuffer(raw, dtype=stored, count=count)
    if dtype_name == "bfloat16":
        array = (array.astype(np.uint32) << 16).view(np.float32)
    return array.reshape(shape)


def read_model_bin(path: str | Path) -> CT2Model:
    """Parse a CTranslate2 ``model.bin`` into a :class:`CT2Model` (arrays share the file's buffer)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read {path}: {exc.strerror or exc}") from exc
    reader = _Reader(data, str(path))
    version = reader.unpack("I")
    if version not in SUPPORTED_BINARY_VERSIONS:
        raise ModelError(f"{path}: unsupported CTranslate2 binary version {version}")
    model = CT2Model(binary_version=version, spec=reader.string(), revision=reader.unpack("I"))
    for _ in range(reader.unpack("I")):
        name = reader.string()
        shape = tuple(reader.unpack("I") for _ in range(reader.unpack("B")))
        dtype_code = reader.unpack("B")
        raw = reader.take(reader.unpack("I"))
        model.variables[name] = _decode_array(raw, dtype_code, shape, name)
    for _ in range(reader.unpack("I")):
        alias = reader.string()
        model.aliases[alias] = reader.string()
    if reader.offset != len(data):
        raise ModelError(f"{path}: {len(data) - reader.offset} unexpected trailing bytes")
    logger.debug("read %s: %s rev %d, %d variables", path, model.spec, model.revision, len(model.variables))
    return model


def dequantize(variables: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Return float32 weights, folding each ``X_scale`` into ``X`` (int8 per row, int16 scalar).

    Non-floating scalars (settings such as ``num_heads``) are kept as they are.
    """
    result: dict[str, np.ndarray] = {}
    for name, value in variables.items():
        if name.endswith("_scale") and name[: -len("_scale")] in variables:
            continue
        scale = variables.get(name + "_scale")
        if scale is not None:
            scale = np.asarray(scale, dtype=np.float32)
            if scale.ndim == 1:
                scale = scale.reshape((-1,) + (1,) * (value.ndim - 1))
            result[name] = value.astype(np.float32) / scale
        elif value.ndim > 0 or np.issubdtype(value.dtype, np.floating):
            result[name] = value.astype(np.float32)
        else:
            result[name] = value
    return result


__all__ = ["CT2Model", "CT2_DTYPES", "SUPPORTED_BINARY_VERSIONS", "dequantize", "read_model_bin"]
