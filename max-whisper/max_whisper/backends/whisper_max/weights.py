"""The MAX backend's weights registry, made in one place from an openai-whisper checkpoint.

Every weight keeps its openai-whisper ``state_dict`` name and float32 values
(or, for a ``bfloat16`` decoder, bfloat16 copies of the decoder blocks' matrices under
the same names: :func:`is_decoder_matrix`), except the token embedding, which is
held transposed (:data:`TOKEN_EMBEDDING_T`). Where the plan has a draft decoder
(the CPU's), derived weights are added for it, the cheap model that the
speculative greedy decoder uses to guess the next tokens: a 4-bit (GGML
``Q4_0``) copy of the token embedding (:data:`DRAFT_EMBEDDING`, 11 MB to read
instead of 80 MB) and of every matrix of the decoder blocks (name + ``.q4_0``,
:func:`draft_name`; 4.6 MB instead of 33 MB for tiny), the self-attention's query, key
and value stacked as one (:func:`fused_qkv_name`).  Guesses only decide
what is computed ahead; every logit whisper sees comes from the float32 weights.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

#: openai-whisper's (n_vocab, state) token embedding: the input embedding and the logits matrix.
TOKEN_EMBEDDING = "decoder.token_embedding.weight"
#: Registry name of the token embedding transposed, (state, n_vocab), which the registry holds instead
#: of :data:`TOKEN_EMBEDDING`: MAX's CPU matmul reads a (K, N) right-hand side at twice the rate of a
#: transposed (N, K) one (docs/performance.md, entry 30), and the logits are most of a decoder step.
TOKEN_EMBEDDING_T = "decoder.token_embedding.weight.T"
#: Registry names of float16 panels (:func:`float16_panels`) end with this: the CPU plan's float32 decoder
#: reads its per-token matrices (:func:`is_panel_matrix`) as panels where every value is a float16 number
#: (openai-whisper's checkpoints are stored in float16): the same matrices, in half the bytes
#: (docs/performance.md, entry 41).
PANELS_SUFFIX = ".float16_panels"
#: Columns of a (K, N) matrix per panel: what the ``matmul_float16_panels`` kernel
#: (kernels/half_panels.mojo) holds in two 8-wide float32 registers.
PANEL_WIDTH = 16
#: Registry names of float32 panels (:func:`float32_panels`) end with this: the CPU plan's encoder and
#: cross-attention keys and values multiply by their matrices (:func:`is_float32_panel_matrix`) through
#: the ``linear_float32_panels`` kernel (kernels/float32_panels.mojo) instead of MAX's matmul, which
#: gives the same bits but costs every graph holding one about a minute of compiling
#: (docs/performance.md, entry 48).
FLOAT32_PANELS_SUFFIX = ".float32_panels"
#: Columns of a (K, N) matrix per float32 panel: two 16-wide float32 vectors of that kernel.
FLOAT32_PANEL_WIDTH = 32
#: Registry name of the 4-bit draft copy of the token embedding.
DRAFT_EMBEDDING = "decoder.token_embedding.q4_0"
#: GGML Q4_0 block: 32 weights -> a float16 scale and 16 bytes of 4-bit values.
Q4_0_BLOCK = 32
#: MAX's Q4_0 matmul wants the number of output rows to be a multiple of this.
Q4_0_ROW_MULTIPLE = 32


def draft_name(name: str) -> str:
    """Registry name of the 4-bit draft copy of the weight ``name``."""
    return f"{name}.q4_0"


def is_draft_matrix(name: str) -> bool:
    """Whether the draft decoder reads a 4-bit copy of ``name`` on its own: the matrices of the decoder
    blocks that run for every token (the cross-attention keys and values are computed once per
    window), except the self-attention's query, key and value, which it reads stacked
    (:func:`fused_qkv_name`)."""
    return is_decoder_matrix(name) and not any(f".attn.{m}." in name for m in ("query", "key", "value"))


def fused_qkv_name(attn: str) -> str:
    """Name of the draft's fused projection of the self-attention ``attn`` (``decoder.blocks.0.attn``
    ...): ``<name>.weight`` is its query, key and value matrices stacked, (3 * state, state), held only
    as a 4-bit copy (:func:`draft_name`); ``<name>.bias`` their biases (the key has none: zeros).  One
    product for the three makes a draft step two products and an addition shorter per block
    (docs/performance.md, entry 44)."""
    return f"{attn}.qkv"


def is_decoder_matrix(name: str) -> bool:
    """Whether ``name`` is a matrix of the decoder blocks, multiplied by for every token: the weights a
    ``bfloat16`` decoder holds in bfloat16. The token embedding stays float32: MAX's matmul returns
    its inputs' type, and logits rounded to bfloat16 (a step of 0.125 at 20) change the argmax of
    about one token in 30 (docs/performance.md, entry 34). Layer norms, biases, the positional
    embedding and the cross-attention keys and values (computed once per window, so the ``cross_kv``
    graph is the same for both types) stay float32 too."""
    return (
        name.startswith("decoder.blocks.")
        and name.endswith(".weight")
        and not is_layer_norm(name)
        and ".cross_attn.key." not in name
        and ".cross_attn.value." not in name
    )


def is_layer_norm(name: str) -> bool:
    """Whether ``name`` belongs to one of whisper's layer norms (``attn_ln``, ``cross_attn_ln``, ``mlp_ln``,
    ``ln_post``, the decoder's ``ln``)."""
    layer = name.split(".")[-2]
    return layer == "ln" or layer.endswith("_ln") or layer.startswith("ln_")


def state_dict_arrays(
    state_dict: dict[str, torch.Tensor],
    *,
    draft: bool = True,
    decoder_dtype: str = "float32",
    embedding_rows: bool = False,
) -> dict[str, Any]:
    """The registry: openai-whisper names -> contiguous float32 arrays, plus with ``draft`` the draft
    decoder's 4-bit copies; with ``decoder_dtype="bfloat16"`` the decoder blocks' matrices
    (:func:`is_decoder_matrix`) are bfloat16 torch tensors (numpy has no bfloat16; MAX takes any
    DLPack array).  ``embedding_rows`` keeps the (n_vocab, state) token embedding as well, under
    :data:`TOKEN_EMBEDDING`: the GPU's decoder step scores a row against each of its rows."""
    arrays: dict[str, Any] = {
        name: np.ascontiguousarray(t.detach().cpu().float().numpy()) for name, t in state_dict.items()
    }
    if decoder_dtype == "bfloat16":
        for name in [n for n in state_dict if is_decoder_matrix(n)]:
            arrays[name] = state_dict[name].detach().cpu().to(torch.bfloat16).contiguous()
    elif decoder_dtype != "float32":
        raise ValueError(f"unknown decoder dtype {decoder_dtype!r}")
    embedding = arrays[TOKEN_EMBEDDING] if embedding_rows else arrays.pop(TOKEN_EMBEDDING)  # float32 for both types
    # torch's transposing copy: 0.13 s for tiny's 80 MB here, numpy's 0.37 s (docs/performance.md, entry 39)
    arrays[TOKEN_EMBEDDING_T] = torch.from_numpy(embedding).t().contiguous().numpy()
    del embedding  # one copy of the 80 MB (tiny) at a time
    if draft:
        arrays.update(draft_arrays(arrays))
    return arrays


def float16_copy(weight: Any) -> torch.Tensor | None:
    """``weight`` (a torch tensor or numpy array) as a float16 tensor if that is exact (every value a
    float16 number), else None."""
    full = torch.as_tensor(weight).detach().cpu().float()
    half = full.half()
    return half if torch.equal(half.float(), full) else None


def float16_panels(matrix: torch.Tensor) -> np.ndarray:
    """A (N, K) float16 matrix (the (n_vocab, state) embedding, or a ``Linear`` weight (out, in)) as
    (ceil(N / 16), K, 16) panels of its transpose: column n of the (K, N) matrix is
    ``panels[n // 16, :, n % 16]``, so the kernel streams each panel's 16 columns as one block; the
    columns past N are zeros and never stored."""
    return transposed_panels(matrix, PANEL_WIDTH)


def transposed_panels(matrix: torch.Tensor, width: int) -> np.ndarray:
    """A (N, K) matrix as (ceil(N / width), K, width) panels of its transpose, in its own type: column n
    of the (K, N) matrix is ``panels[n // width, :, n % width]``; the columns past N are zeros."""
    n, k = matrix.shape
    n_panels = -(-n // width)
    padded = torch.zeros((n_panels * width, k), dtype=matrix.dtype)
    padded[:n] = matrix
    return padded.view(n_panels, width, k).permute(0, 2, 1).contiguous().numpy()


def panels_name(name: str) -> str:
    """Registry name of the float16 panels of the weight ``name``."""
    return name + PANELS_SUFFIX


def is_panel_matrix(name: str) -> bool:
    """Whether the float32 decoder reads ``name`` as float16 panels where it can: the token embedding
    (the logits) and the blocks' matrices it multiplies by for every token (:func:`is_decoder_matrix`;
    the cross-attention keys and values are computed once per window, in the encoder graph)."""
    return name == TOKEN_EMBEDDING or is_decoder_matrix(name)


def is_float16_exact(state_dict: dict[str, torch.Tensor]) -> bool:
    """Whether every matrix of :func:`is_panel_matrix` holds float16 numbers only."""
    return all(float16_copy(state_dict[name]) is not None for name in filter(is_panel_matrix, state_dict))


def float16_panel_arrays(state_dict: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """The float16 panels of every matrix of :func:`is_panel_matrix`, under :func:`panels_name`
    (whisper's (out, in) layout is the transpose the panels hold: ``x @ W^T``)."""
    panels = {}
    for name in filter(is_panel_matrix, state_dict):
        half = float16_copy(state_dict[name])
        if half is None:
            raise ValueError(f"{name} is not float16-exact: the decoder must read it in float32")
        panels[panels_name(name)] = float16_panels(half)
    return panels


def is_float32_panel_matrix(name: str) -> bool:
    """Whether the CPU plan multiplies by ``name`` as float32 panels: the encoder's matrices (its two
    convolutions and its blocks' products) and the decoder's cross-attention keys and values, the
    products of the encoder graph, each made once per window for 1500 rows."""
    if name.startswith("encoder."):
        return name.endswith(".weight") and not is_layer_norm(name)
    return name.startswith("decoder.blocks.") and name.endswith((".cross_attn.key.weight", ".cross_attn.value.weight"))


def float32_panels(weight: Any) -> np.ndarray:
    """A ``Linear`` weight (out, in) or a ``Conv1d`` weight (out, in, taps) as the (K, N) matrix the
    ``linear_float32_panels`` kernel multiplies by, in (ceil(N / 32), K, 32) panels: N = out, and K = in,
    or for a convolution taps * in, tap-major (row ``tap * in + c``), so that a frame's taps are
    consecutive frames of the input. Column n is ``panels[n // 32, :, n % 32]``; the columns past N
    are zeros."""
    full = torch.as_tensor(weight).detach().cpu().float()
    if full.dim() == 3:  # (out, in, taps) -> (out, taps * in)
        full = full.permute(0, 2, 1).reshape(full.shape[0], -1)
    return transposed_panels(full, FLOAT32_PANEL_WIDTH)


def float32_panels_name(name: str) -> str:
    """Registry name of the float32 panels of the weight ``name``."""
    return name + FLOAT32_PANELS_SUFFIX


def with_float32_panels(arrays: dict[str, Any]) -> dict[str, Any]:
    """The registry ``arrays`` with every matrix of :func:`is_float32_panel_matrix` held as float32 panels
    (:func:`float32_panels_name`) instead, where its output width is a whole number of panels (every
    official Whisper model's: widths are multiples of 64); the graphs read only the panels."""
    out = {}
    for name, array in arrays.items():
        if is_float32_panel_matrix(name) and array.shape[0] % FLOAT32_PANEL_WIDTH == 0:
            out[float32_panels_name(name)] = float32_panels(array)
        else:
            out[name] = array
    return out


def draft_arrays(arrays: dict[str, Any]) -> dict[str, np.ndarray]:
    """The draft decoder's weights made from the registry ``arrays``: the 4-bit copies of the token
    embedding (:data:`DRAFT_EMBEDDING`) and of the blocks' matrices (:func:`draft_name`), each
    self-attention's query, key and value stacked into one with their biases (:func:`fused_qkv_name`)."""

    def float32(value: Any) -> np.ndarray:
        return value.float().numpy() if isinstance(value, torch.Tensor) else value

    draft = {DRAFT_EMBEDDING: draft_embedding(float32(arrays[TOKEN_EMBEDDING_T]).T)}
    for name in [n for n in arrays if is_draft_matrix(n)]:
        draft[draft_name(name)] = quantize_q4_0(float32(arrays[name]))
    for attn in [n.removesuffix(".query.weight") for n in arrays if is_decoder_matrix(n) and ".attn.query." in n]:
        query, key, value = (float32(arrays[f"{attn}.{m}.weight"]) for m in ("query", "key", "value"))
        fused = fused_qkv_name(attn)
        draft[draft_name(f"{fused}.weight")] = quantize_q4_0(np.concatenate([query, key, value]))
        no_bias = np.zeros(key.shape[0], dtype=np.float32)
        biases = [float32(arrays[f"{attn}.query.bias"]), no_bias, float32(arrays[f"{attn}.value.bias"])]
        draft[f"{fused}.bias"] = np.concatenate(biases).astype(np.float32)
    return draft


def draft_embedding(embedding: np.ndarray) -> np.ndarray:
    """Q4_0 copy of the (n_vocab, state) embedding, rows padded with copies of the last row.

    A padded row scores exactly like the last token, and ``argmax`` returns the
    first of equal scores, so a guess never lands on a padding row.
    """
    pad = (-embedding.shape[0]) % Q4_0_ROW_MULTIPLE
    return np.concatenate([quantize_q4_0(embedding), quantize_q4_0(np.repeat(embedding[-1:], pad, axis=0))])


def quantize_q4_0(weight: np.ndarray, rows_at_once: int = 4096) -> np.ndarray:
    """GGML Q4_0 of a (rows, cols) matrix, cols a multiple of 32 -> (rows, cols / 32 * 18) uint8.

    Each block of 32 values x: scale d = (value of largest magnitude) / -8, stored
    as float16, then 16 bytes whose low nibbles hold q[0..15] and high nibbles
    q[16..31], q = clamp(round(x / d) + 8, 0, 15), so x ~= (q - 8) * d.
    Rows are quantized ``rows_at_once`` at a time, so the float32 temporaries stay a few MB
    (the whole token embedding at once would need four of 80 MB each, on top of a loaded process).
    """
    rows, cols = weight.shape
    if cols % Q4_0_BLOCK:
        raise ValueError(f"Q4_0 needs a multiple of {Q4_0_BLOCK} columns, got {cols}")
    n_blocks = cols // Q4_0_BLOCK
    packed = np.empty((rows, n_blocks, 2 + Q4_0_BLOCK // 2), dtype=np.uint8)
    for start in range(0, rows, rows_at_once):
        end = min(start + rows_at_once, rows)
        blocks = weight[start:end].reshape(end - start, n_blocks, Q4_0_BLOCK).astype(np.float32)
        largest = np.take_along_axis(blocks, np.abs(blocks).argmax(axis=-1)[..., None], axis=-1)[..., 0]
        scale = largest / -8.0
        inverse = np.divide(1.0, scale, out=np.zeros_like(scale), where=scale != 0)
        q = np.clip(np.floor(blocks * inverse[..., None] + 8.5), 0, 15).astype(np.uint8)
        packed[start:end, :, :2] = scale.astype(np.float16).view(np.uint8).reshape(end - start, n_blocks, 2)
        packed[start:end, :, 2:] = q[..., :16] | (q[..., 16:] << 4)
    return packed.reshape(rows, n_blocks * (2 + Q4_0_BLOCK // 2))


def dequantize_q4_0(packed: np.ndarray, cols: int) -> np.ndarray:
    """Inverse of :func:`quantize_q4_0` (for tests and inspection)."""
    rows = packed.shape[0]
    blocks = packed.reshape(rows, cols // Q4_0_BLOCK, 2 + Q4_0_BLOCK // 2)
    scale = blocks[..., :2].copy().view(np.float16)[..., 0].astype(np.float32)
    low, high = blocks[..., 2:] & 0x0F, blocks[..., 2:] >> 4
    q = np.concatenate([low, high], axis=-1).astype(np.float32)
    return ((q - 8.0) * scale[..., None]).reshape(rows, cols)
