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

from ...errors import InputShapeError, MaxWhisperError
from ...token_strategies import GreedyMasks
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
    graph on input buffers that stay put (tokens, position, the greedy choice's masks, the
    self-attention cache, the cross K/V).

    Each call copies the new tokens and the position (and, for a greedy choice, the step's masked
    ranges) into their buffers and runs the graph.  Where the backend captures (a GPU), the first
    call captures the graph as a device graph and every call replays it: one launch per token
    instead of one per kernel (about 100 for tiny, each ~7 µs of host time when launched one by
    one; docs/performance.md, entry 36).  A replay reads the buffers it was captured with, which is
    why the inputs are refreshed in place and the cache is reordered in place.  If MAX refuses to
    capture, the backend stops trying and the step runs eagerly.

    :meth:`__call__` returns the logits (beam search, sampling); :meth:`choose` only whisper's greedy
    token and its log-probability a row, picked on the device (:mod:`.choice`).  On a GPU what is read
    comes back through pinned host buffers made once (0.04 against 0.12 ms a token for the logits on
    an H100; docs/performance.md, entry 37)."""

    def __init__(self, backend: MaxBackend, cache: list[Buffer], cross_kv: list[Buffer], n_batch: int) -> None:
        self.backend = backend
        self.model = backend.models["decoder_step"]
        n_vocab = backend.dims.n_vocab
        # the host arrays the inputs are written to (tokens and position in one: rows tokens..., position)
        self.host = np.zeros((n_batch + 1, 1), dtype=np.int64)
        self.host_ranges = np.zeros((n_batch, GreedyMasks.n_ranges, 2), dtype=np.int64)
        self.host_suppress = np.zeros(n_vocab, dtype=np.float32)
        self.host_rule = np.zeros(1, dtype=np.int64)
        # the graph's inputs before the cache, in order: tokens, position, suppress, ranges, timestamp_rule
        arrays = [self.host[:n_batch], self.host[n_batch], self.host_suppress, self.host_ranges, self.host_rule]
        host = [Buffer.from_numpy(array) for array in arrays]
        self.masks: GreedyMasks | None = None  # the masks the buffers hold
        if backend.device_name == "cpu":
            # MAX's CPU buffers share their arrays' memory: the graph reads the host arrays themselves
            # (a copy into another buffer is not ordered before the next execute on MAX's CPU device)
            step_inputs = host
            self.step_copies = self.choose_copies = self.mask_copies = []
            self.host_outputs: list[Buffer] | None = None
        else:  # copied in on the device's stream, ahead of the launch that reads them
            step_inputs = [backend.to_device(np.zeros_like(array)) for array in arrays]
            pairs = list(zip(step_inputs, host, strict=True))
            # every step: tokens and position, and for a greedy choice its ranges; once a window: the masks
            tokens_in, position_in, suppress_in, ranges_in, rule_in = pairs
            self.step_copies = [tokens_in, position_in]
            self.choose_copies = [tokens_in, position_in, ranges_in]
            self.mask_copies = [suppress_in, rule_in]
            device, staging = backend.driver_device, Usage.STAGING
            self.host_outputs = [  # logits, token, log-probability
                Buffer(DType.float32, [n_batch, 1, n_vocab], device=device, usage=staging),
                Buffer(DType.int64, [n_batch], device=device, usage=staging),
                Buffer(DType.float32, [n_batch], device=device, usage=staging),
            ]
        self.inputs = [*step_inputs, *cache, *cross_kv]
        self.key: int | None = None  # the captured device graph's key
        self.outputs: list[Buffer] | None = None  # its output buffers, rewritten by each replay

    def __call__(self, tokens: np.ndarray, position: int) -> torch.Tensor:
        """The logits (batch, 1, n_vocab) of the next token after ``tokens`` (batch, 1) at ``position``."""
        logits = self._run(tokens, position, self.step_copies)[0]
        if self.host_outputs is None:  # the CPU: the graph's output is in host memory already
            return self.backend.to_torch(logits)
        return torch.from_numpy(self._read([(logits, self.host_outputs[0])])[0])

    def choose(
        self, tokens: np.ndarray, position: int, masks: GreedyMasks, ranges: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """whisper's greedy choice after ``tokens`` (batch, 1) at ``position`` under ``masks`` and this
        step's ``ranges`` (:meth:`GreedyMasks.ranges`): (tokens (batch,) int64, log-probabilities (batch,)
        float32)."""
        if masks is not self.masks:  # once per window: the masks of every step
            self.host_suppress[:] = masks.suppress
            self.host_rule[0] = int(masks.timestamp_rule)
            for buffer, source in self.mask_copies:
                buffer.inplace_copy_from(source)
            self.masks = masks
        self.host_ranges[:] = ranges
        _, token, logprob = self._run(tokens, position, self.choose_copies)
        if self.host_outputs is None:
            return self.backend.to_numpy(token).copy(), self.backend.to_numpy(logprob).copy()
        token, logprob = self._read([(token, self.host_outputs[1]), (logprob, self.host_outputs[2])])
        return token, logprob

    def _run(self, tokens: np.ndarray, position: int, copies: list[tuple[Buffer, Buffer]]) -> list[Buffer]:
        """Write ``tokens`` and ``position`` to the host arrays, queue ``copies`` and run the step: its outputs."""
        # the previous step's outputs were read back, so its copies are done with the host arrays
        self.host[:-1] = tokens
        self.host[-1] = position
        for buffer, source in copies:
            buffer.inplace_copy_from(source)
        if self.key is None and self.backend.capture:
            self._capture()
        if self.key is None:
            return self.model.execute(*self.inputs)
        self.model.replay(self.key, *self.inputs)
        return self.outputs

    def _read(self, pairs: list[tuple[Buffer, Buffer]]) -> list[np.ndarray]:
        """Device outputs copied into their pinned host buffers, then fresh arrays of them."""
        for output, host in pairs:
            host.inplace_copy_from(output)
        self.backend.driver_device.synchronize()
        return [np.array(np.from_dlpack(host), copy=True) for _, host in pairs]

    def _capture(self) -> None:
        key = next(self.backend.capture_keys)
        try:
            self.outputs = self.model.capture(key, *self.inputs)
        except Exception as exc:  # MAX's capture is best-effort: fall back to launching kernels
            logger.warning("the max backend could not capture its decoder step (%s); it runs it eagerly", exc)
            self.backend.capture = False
            return
        self.key = key

    def release(self) -> None:
        """Free the captured device graph (its buffers go back to MAX's allocator)."""
        if self.key is not None:
            self.model.release_captured_graph(self.key)
            self.key = self.outputs = None


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
        self.masks: GreedyMasks | None = None  # the CPU plan's greedy masks, whose buffers are in mask_inputs
        self.mask_inputs: list[Buffer] = []  # suppress, timestamp_rule: the choice graph's inputs
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
            return torch.from_numpy(self.bursts.logits(tokens[0].tolist()).copy())[None, None]
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

    def choose(self, rows: list[list[int]], masks: GreedyMasks) -> tuple[np.ndarray, np.ndarray]:
        """whisper's greedy choice after each history of ``rows`` (the prompt and the tokens chosen so
        far, one list a row) under ``masks``, picked on the device (after the prompt's :meth:`logits`):
        (tokens (batch,) int64, log-probabilities (batch,) float32).

        The GPU plan runs its ``decoder_step`` graph, which chooses too. The CPU plan chooses in its
        ``choice`` graph: for one row with the draft, once per speculative burst for all of the
        burst's rows; otherwise after an exact pass of the newest tokens."""
        if self.cache is None:
            raise MaxWhisperError("a greedy choice on the device follows the prompt's pass")
        if self.backend.plan.step:
            if self.step is None:
                self.step = DecoderStep(self.backend, self.cache, self.row_cross_kv, len(rows))
            newest = np.array([row[-1:] for row in rows], dtype=np.int64)
            chosen = self.step.choose(newest, self.n_past, masks, masks.ranges(rows))
            self.stats.steps += 1
            self.n_past += 1
            return chosen
        if masks is not self.masks:  # once per window
            self._use_masks(masks)
        if len(rows) == 1 and self.bursts is not None:
            token, logprob = self.bursts.choice(rows[0], self._pick)
            return np.array([token], dtype=np.int64), np.array([logprob], dtype=np.float32)
        self.n_past = min(self.n_past, len(rows[0]) - 1)
        self.shared_prefix = min(self.shared_prefix, self.n_past)
        newest = np.array([row[-1:] for row in rows], dtype=np.int64)
        return self._pick(self.backend.to_numpy(self._pass(newest, self.n_past, rows=[0])), rows)

    def _use_masks(self, masks: GreedyMasks) -> None:
        """The CPU plan's greedy choices from now on are made under ``masks``: their buffers, which every
        call of the ``choice`` graph shares, and the graphs loaded (the draft and the choice side by side,
        where the store lacks both)."""
        backend = self.backend
        backend.models.preload(*(("draft", "choice") if self.bursts is not None else ("choice",)))
        self.masks = masks
        self.mask_inputs = [backend.to_device(masks.suppress), backend.to_device(np.array([int(masks.timestamp_rule)]))]

    def _pick(self, logits: np.ndarray, rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        """The ``choice`` graph on ``logits`` (one row of n_vocab per history of ``rows``, in any leading
        shape) under the masks of :meth:`_use_masks`: (tokens (len(rows),), log-probabilities (len(rows),))."""
        backend = self.backend
        suppress, rule = self.mask_inputs
        logits_in = backend.to_device(logits.reshape(len(rows), 1, -1))
        ranges_in = backend.to_device(self.masks.ranges(rows))
        token, logprob = backend.models["choice"].execute(logits_in, suppress, ranges_in, rule)
        return backend.to_numpy(token).copy(), backend.to_numpy(logprob).copy()

    def _verify(self, tokens: list[int], start: int) -> np.ndarray:
        """The burst's exact pass (batch 1): one logits row per token, (len(tokens), n_vocab), in the
        memory of the graph's output (the CPU plan's)."""
        rows = list(range(len(tokens)))
        return self.backend.to_numpy(self._pass(np.array([tokens], dtype=np.int64), start, rows))[0]

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
