"""whisper's ``Inference`` on MAX: decoder passes with their KV cache on the MAX device."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from max.driver import Buffer, Usage
from max.dtype import DType
from whisper.decoding import Inference

from ...errors import InputShapeError
from .graphs import cache_shapes
from .speculation import BurstDecoder, DecoderStats

if TYPE_CHECKING:  # pragma: no cover
    from .backend import MaxBackend

logger = logging.getLogger(__name__)


def scalar(value: int) -> Buffer:
    """An int64 host scalar (the graphs' slice bounds)."""
    return Buffer.from_numpy(np.array(value, dtype=np.int64))


def span(start: int, n_new: int) -> tuple[Buffer, Buffer]:
    """The positions [start, start + n_new) as host scalars."""
    return scalar(start), scalar(start + n_new)


class DecoderStep:
    """The GPU plan's single-token pass for one call of ``DecodingTask.run``: the ``decoder_step``
    graph on input buffers that stay put (tokens, position, the self-attention cache, the cross K/V).

    Each call copies the new tokens and the position into their buffers and runs the graph.  Where
    the backend captures (a GPU), the first call captures the graph as a device graph and every call
    replays it: one launch per token instead of one per kernel (about 100 for tiny, each ~7 µs of
    host time when launched one by one; docs/performance.md, entry 36).  A replay reads the buffers it
    was captured with, which is why the inputs are refreshed in place and the cache is reordered in
    place.  If MAX refuses to capture, the backend stops trying and the step runs eagerly.

    On a GPU the logits come back through a pinned host buffer made once, not a new host buffer per
    token (0.04 against 0.12 ms a token on an H100; docs/performance.md, entry 37)."""

    def __init__(self, backend: MaxBackend, cache: list[Buffer], cross_kv: list[Buffer], n_batch: int) -> None:
        self.backend = backend
        self.model = backend.models["decoder_step"]
        # the host array the new tokens and the position are written to (rows: tokens..., position)
        self.host = np.zeros((n_batch + 1, 1), dtype=np.int64)
        tokens, position = Buffer.from_numpy(self.host[:n_batch]), Buffer.from_numpy(self.host[n_batch])
        if backend.device_name == "cpu":
            # MAX's CPU buffers share their arrays' memory: the graph reads the host array itself (a
            # copy into another buffer is not ordered before the next execute on MAX's CPU device)
            self.tokens, self.position, self.copies = tokens, position, []
            self.host_logits: Buffer | None = None
        else:  # copied in on the device's stream, ahead of the launch that reads them
            self.tokens = backend.to_device(np.zeros((n_batch, 1), dtype=np.int64))
            self.position = backend.to_device(np.zeros(1, dtype=np.int64))
            self.copies = [(self.tokens, tokens), (self.position, position)]
            shape = [n_batch, 1, backend.dims.n_vocab]
            self.host_logits = Buffer(DType.float32, shape, device=backend.driver_device, usage=Usage.STAGING)
        self.inputs = [self.tokens, self.position, *cache, *cross_kv]
        self.key: int | None = None  # the captured device graph's key
        self.logits: Buffer | None = None  # its output buffer, rewritten by each replay

    def __call__(self, tokens: np.ndarray, position: int) -> torch.Tensor:
        """The logits (batch, 1, n_vocab) of the next token after ``tokens`` (batch, 1) at ``position``."""
        # the previous step's logits were read back, so its copies are done with the host array
        self.host[:-1] = tokens
        self.host[-1] = position
        for buffer, source in self.copies:
            buffer.inplace_copy_from(source)
        if self.key is None and self.backend.capture:
            self._capture()
        if self.key is None:
            logits = self.model.execute(*self.inputs)[0]
        else:
            self.model.replay(self.key, *self.inputs)
            logits = self.logits
        if self.host_logits is None:  # the CPU: the graph's output is in host memory already
            return self.backend.to_torch(logits)
        self.host_logits.inplace_copy_from(logits)
        self.backend.driver_device.synchronize()
        return torch.from_numpy(np.array(np.from_dlpack(self.host_logits), copy=True))

    def _capture(self) -> None:
        key = next(self.backend.capture_keys)
        try:
            self.logits = self.model.capture(key, *self.inputs)[0]
        except Exception as exc:  # MAX's capture is best-effort: fall back to launching kernels
            logger.warning("the max backend could not capture its decoder step (%s); it runs it eagerly", exc)
            self.backend.capture = False
            return
        self.key = key

    def release(self) -> None:
        """Free the captured device graph (its buffers go back to MAX's allocator)."""
        if self.key is not None:
            self.model.release_captured_graph(self.key)
            self.key = self.logits = None


class MaxInference(Inference):
    """Decoder passes for one call of whisper's ``DecodingTask.run``.

    The self-attention cache is a set of mutable buffers on the MAX device with
    room for the whole text context, allocated at the first call of a window;
    each pass writes its new keys and values in place and attends over the
    positions before its end, so cutting the cache back only moves where the
    next pass starts.  Per call the host sends the new tokens (and, for a
    prompt, the causal mask) and reads back only the logits rows whisper uses.

    Greedy decoding of one sequence (batch 1) is speculative where the backend's
    plan has a draft decoder (see :mod:`.speculation`); otherwise every call is
    one exact pass of the newest token, in the GPU plan through :class:`DecoderStep`
    (a captured device graph on a GPU).  :attr:`stats` counts this inference's
    passes; the backend reads them.
    """

    def __init__(self, backend: MaxBackend, initial_token_length: int) -> None:
        # initial_token_length (whisper's signature) is not needed: the first call, with an
        # empty cache, is the prompt; every later call feeds the newest token only.
        self.backend = backend
        self.stats = DecoderStats()
        self.cache: list[Buffer] | None = None
        self.host_cache: list[np.ndarray] | None = None  # on the CPU: the arrays the cache buffers share
        self.cross_kv: list[Buffer] | None = None  # the exact decoder's
        self.row_cross_kv: list[Buffer] | None = None  # the same, in the draft's or the decoder step's layouts
        self.n_past = 0  # positions of the cache that hold the keys/values of the current history
        # positions [0, shared_prefix) hold the same keys/values in every row (a prompt run once and
        # copied to every beam or sample): a reorder leaves them alone
        self.shared_prefix = 0
        self.n_audio = 0  # rows of audio features (cross K/V) of the current window
        self.first_row: Buffer | None = None  # rows=[0] on the device, made once (a one-token step's)
        self.step: DecoderStep | None = None  # the GPU plan's single-token pass, made after the prompt's
        self.bursts: BurstDecoder | None = None
        if backend.speculate:
            d = backend.dims
            self.bursts = BurstDecoder(
                self._draft,
                self._verify,
                end_of_text=backend.tokenizer.eot,
                n_vocab=d.n_vocab,
                n_ctx=d.n_text_ctx,
                policy=backend.speculation,
                stats=self.stats,
            )

    # -- whisper's Inference API ------------------------------------------------------
    def logits(self, tokens: torch.Tensor, audio_features: torch.Tensor) -> torch.Tensor:
        backend = self.backend
        n_batch, n_tokens = tokens.shape
        if self.cross_kv is None:
            # whisper repeats the tokens of each audio for beam search / best-of, not its features:
            # the cross K/V stay one row per audio, and the decoder shares them across that audio's rows
            if n_batch % audio_features.shape[0]:
                raise InputShapeError(
                    f"{n_batch} token rows do not divide among {audio_features.shape[0]} audio feature rows"
                )
            self.cross_kv, self.row_cross_kv = backend.cross_kv(audio_features)
            self.n_audio = audio_features.shape[0]
        if n_tokens > backend.dims.n_text_ctx:
            raise InputShapeError(f"the decoder context holds {backend.dims.n_text_ctx} tokens; got {n_tokens}")
        if self.cache is None:
            return self._prefill(tokens)
        if n_batch == 1 and self.bursts is not None:
            return self.bursts.logits(tokens[0].tolist())[None, None]
        self.n_past = min(self.n_past, n_tokens - 1)
        self.shared_prefix = min(self.shared_prefix, self.n_past)
        if backend.plan.step:
            return self._step(tokens[:, -1:].numpy())
        return backend.to_torch(self._pass(tokens[:, -1:].numpy(), self.n_past, rows=[0]))

    def rearrange_kv_cache(self, source_indices: Sequence[int]) -> None:
        if self.cache is None or list(source_indices) == list(range(len(source_indices))):
            return
        self._reorder(source_indices)
        if self.bursts is not None:
            self.bursts.start(self.n_past)

    def cleanup_caching(self) -> None:
        if self.step is not None:
            self.step.release()
            self.step = None
        self.cache = self.host_cache = None
        self.cross_kv = self.row_cross_kv = None
        self.n_past = self.shared_prefix = 0
        if self.bursts is not None:
            self.bursts.start(0)

    # -- decoder passes ---------------------------------------------------------------
    def _reorder(self, source_indices: Sequence[int]) -> None:
        """Row i of the cache becomes row source_indices[i], for the held positions [0, n_past).

        In the CPU plan the cache buffers share memory with host arrays, and only what changes is
        copied, by numpy: the rows whose source is another row (most beam steps keep some beams in
        place), at the positions after the prompt the rows share (:attr:`shared_prefix`; ≈ 170 of
        ≈ 200 held positions on the long-form clip). In the GPU plan the ``reorder`` graph gathers
        every row on the device."""
        backend = self.backend
        if self.host_cache is None:
            index = backend.to_device(np.asarray(source_indices, dtype=np.int64))
            backend.models["reorder"].execute(index, scalar(self.n_past), *self.cache)
            return
        rows = [row for row, source in enumerate(source_indices) if row != source]
        sources = [source_indices[row] for row in rows]
        held = slice(self.shared_prefix, self.n_past)
        for i, array in enumerate(self.host_cache):  # keys (batch, head, ctx, d), values (batch, head, d, ctx)
            if i % 2 == 0:
                array[rows, :, held, :] = array[sources, :, held, :]  # the right side is a copy
            else:
                array[rows, :, :, held] = array[sources, :, :, held]

    def _pass(self, tokens: np.ndarray, start: int, rows: Sequence[int], cache: list[Buffer] | None = None) -> Buffer:
        """Feed (batch, n_new) tokens at positions [start, start + n_new) (exact decoder): the logits
        (batch, len(rows), n_vocab), still on the MAX device.  ``cache``: the buffers to write (by
        default the whole cache; the prompt pass may write a one-row view of it)."""
        backend = self.backend
        n_new = tokens.shape[1]
        mask = np.triu(np.full((n_new, start + n_new), -np.inf, dtype=np.float32), k=start + 1)
        tokens_in, mask_in = backend.to_device(tokens.astype(np.int64)), backend.to_device(mask)
        if list(rows) == [0]:
            if self.first_row is None:
                self.first_row = backend.to_device(np.zeros(1, dtype=np.int64))
            rows_in = self.first_row
        else:
            rows_in = backend.to_device(np.asarray(rows, dtype=np.int64))
        logits = backend.models["decoder"].execute(
            tokens_in, *span(start, n_new), mask_in, rows_in, *(self.cache if cache is None else cache), *self.cross_kv
        )[0]
        self.stats.steps += 1
        self.n_past = start + n_new
        return logits

    def _step(self, tokens: np.ndarray) -> torch.Tensor:
        """The newest token of each row, (batch, 1), through the ``decoder_step`` graph at ``n_past``
        (the GPU plan): the logits (batch, 1, n_vocab)."""
        if self.step is None:
            self.step = DecoderStep(self.backend, self.cache, self.row_cross_kv, tokens.shape[0])
        logits = self.step(tokens, self.n_past)
        self.stats.steps += 1
        self.n_past += 1
        return logits

    def _verify(self, tokens: list[int], start: int) -> torch.Tensor:
        """The burst's exact pass (batch 1): one logits row per token, (len(tokens), n_vocab)."""
        rows = list(range(len(tokens)))
        return self.backend.to_torch(self._pass(np.array([tokens], dtype=np.int64), start, rows))[0]

    def _draft(self, token: int, position: int) -> tuple[int, float]:
        """Feed ``token`` (batch 1) to the draft decoder at ``position``: (guess, margin).

        The draft's keys and values land in the cache at that position, past the real history;
        the exact pass of the burst overwrites them."""
        backend = self.backend
        token_in = backend.to_device(np.array([[token]], dtype=np.int64))
        guess, margin = backend.models["draft"].execute(token_in, *span(position, 1), *self.cache, *self.row_cross_kv)
        return int(backend.to_numpy(guess)[0, 0]), float(backend.to_numpy(margin)[0, 0])

    def _prefill(self, tokens: torch.Tensor) -> torch.Tensor:
        """The first call: all initial tokens at once; logits for the rows whisper reads.

        whisper reads the logits of the last token and, for the no-speech
        probability, of the start-of-transcript token; the other rows are not computed and
        left as zeros.  The zeros are numpy's, whose untouched pages are never written:
        ``torch.zeros`` writes every page, 88 ms for beam search's (5, 200, n_vocab) and
        as many MB of memory (docs/performance.md, entry 32).

        Beam search and best-of give every row of one audio the same prompt: it is then run
        once, in the first row of the cache, and copied to the other rows, which later reorders
        leave alone (:attr:`shared_prefix`).
        """
        backend = self.backend
        n_batch, n_tokens = tokens.shape
        # one array per buffer: on the CPU a Buffer shares its numpy array's memory
        arrays = [np.zeros(shape, dtype=np.float32) for shape in cache_shapes(backend.dims, n_batch)]
        self.shared_prefix = 0
        self.cache = [backend.to_device(array) for array in arrays]
        # a plan without the reorder graph (the CPU's) reorders the cache in host memory
        self.host_cache = None if "reorder" in backend.plan.transcription_graphs else arrays
        sot = (tokens[0] == backend.tokenizer.sot).nonzero()
        rows = sorted({int(sot[0, 0]) if len(sot) else 0, n_tokens - 1})
        shared = n_batch > 1 and self.n_audio == 1 and bool((tokens == tokens[:1]).all())
        if shared:
            first_rows = [buffer[0:1, :, :, :] for buffer in self.cache]  # views of row 0
            row_logits = backend.to_torch(self._pass(tokens[:1].numpy(), 0, rows, cache=first_rows))
            self._reorder([0] * n_batch)
            self.shared_prefix = self.n_past
        else:
            row_logits = backend.to_torch(self._pass(tokens.numpy(), 0, rows))
        logits = torch.from_numpy(np.zeros((n_batch, n_tokens, row_logits.shape[-1]), dtype=np.float32))
        logits[:, rows] = row_logits
        if self.bursts is not None:
            self.bursts.start(self.n_past)
        return logits
