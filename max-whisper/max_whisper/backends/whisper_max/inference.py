"""whisper's ``Inference`` on MAX: decoder passes with their KV cache on the MAX device."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from max.driver import Buffer
from whisper.decoding import Inference

from ...errors import InputShapeError
from .graphs import cache_shapes
from .speculation import BurstDecoder, DecoderStats

if TYPE_CHECKING:  # pragma: no cover
    from .backend import MaxBackend


def span(start: int, n_new: int) -> tuple[Buffer, Buffer]:
    """The positions [start, start + n_new) as host scalars (the graphs' slice bounds)."""
    return Buffer.from_numpy(np.array(start, dtype=np.int64)), Buffer.from_numpy(
        np.array(start + n_new, dtype=np.int64)
    )


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
    one exact pass of the newest token.  :attr:`stats` counts this inference's
    passes; the backend reads them.
    """

    def __init__(self, backend: MaxBackend, initial_token_length: int) -> None:
        # initial_token_length (whisper's signature) is not needed: the first call, with an
        # empty cache, is the prompt; every later call feeds the newest token only.
        self.backend = backend
        self.stats = DecoderStats()
        self.cache: list[Buffer] | None = None
        self.cross_kv: list[Buffer] | None = None  # the exact decoder's
        self.draft_cross_kv: list[Buffer] | None = None  # the same, in the draft's layouts
        self.n_past = 0  # positions of the cache that hold the keys/values of the current history
        self.first_row: Buffer | None = None  # rows=[0] on the device, made once (a one-token step's)
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
            # whisper repeats the tokens of each window for beam search / best-of, not its features
            if audio_features.shape[0] != n_batch:
                audio_features = audio_features.repeat_interleave(n_batch // audio_features.shape[0], dim=0)
            self.cross_kv, self.draft_cross_kv = backend.cross_kv(audio_features)
        if n_tokens > backend.dims.n_text_ctx:
            raise InputShapeError(f"the decoder context holds {backend.dims.n_text_ctx} tokens; got {n_tokens}")
        if self.cache is None:
            return self._prefill(tokens)
        if n_batch == 1 and self.bursts is not None:
            return self.bursts.logits(tokens[0].tolist())[None, None]
        self.n_past = min(self.n_past, n_tokens - 1)
        return backend.to_torch(self._pass(tokens[:, -1:].numpy(), self.n_past, rows=[0]))

    def rearrange_kv_cache(self, source_indices: Sequence[int]) -> None:
        if self.cache is None or list(source_indices) == list(range(len(source_indices))):
            return
        backend = self.backend
        backend.models["reorder"].execute(backend.to_device(np.asarray(source_indices, dtype=np.int64)), *self.cache)
        if self.bursts is not None:
            self.bursts.start(self.n_past)

    def cleanup_caching(self) -> None:
        self.cache = None
        self.cross_kv = self.draft_cross_kv = None
        self.n_past = 0
        if self.bursts is not None:
            self.bursts.start(0)

    # -- decoder passes ---------------------------------------------------------------
    def _pass(self, tokens: np.ndarray, start: int, rows: Sequence[int]) -> Buffer:
        """Feed (batch, n_new) tokens at positions [start, start + n_new) (exact decoder): the logits
        (batch, len(rows), n_vocab), still on the MAX device."""
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
            tokens_in, *span(start, n_new), mask_in, rows_in, *self.cache, *self.cross_kv
        )[0]
        self.stats.steps += 1
        self.n_past = start + n_new
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
        guess, margin = backend.models["draft"].execute(token_in, *span(position, 1), *self.cache, *self.draft_cross_kv)
        return int(backend.to_numpy(guess)[0, 0]), float(backend.to_numpy(margin)[0, 0])

    def _prefill(self, tokens: torch.Tensor) -> torch.Tensor:
        """The first call: all initial tokens at once; logits for the rows whisper reads.

        whisper reads the logits of the last token and, for the no-speech
        probability, of the start-of-transcript token; the other rows are not computed and
        left as zeros (``torch.zeros`` maps untouched pages, where a NaN fill of the whole
        (batch, n_tokens, n_vocab) tensor cost ~24 ms per window).
        """
        backend = self.backend
        n_batch, n_tokens = tokens.shape
        # one array per buffer: on the CPU a Buffer shares its numpy array's memory
        self.cache = [
            backend.to_device(np.zeros(shape, dtype=np.float32)) for shape in cache_shapes(backend.dims, n_batch)
        ]
        sot = (tokens[0] == backend.tokenizer.sot).nonzero()
        rows = sorted({int(sot[0, 0]) if len(sot) else 0, n_tokens - 1})
        row_logits = backend.to_torch(self._pass(tokens.numpy(), 0, rows))
        logits = torch.zeros((n_batch, n_tokens, row_logits.shape[-1]))
        logits[:, rows] = row_logits
        if self.bursts is not None:
            self.bursts.start(self.n_past)
        return logits
