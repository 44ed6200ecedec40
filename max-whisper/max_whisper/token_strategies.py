"""whisper's greedy and beam search steps and timestamp rules, with their tensor work batched and shared.

openai-whisper's ``BeamSearchDecoder.update`` and ``ApplyTimestampRules.apply`` walk
the rows of a step one by one and touch each candidate through 0-d tensors
(``topk`` per row, ``.item()`` per candidate, ``logsumexp`` per row).  With five
beams that host-side work costs 5-6 ms a step on two cores, a fifth of a max
beam step (docs/performance.md, entry 29).  The two classes below are the same
algorithms with one tensor operation per step where whisper has one per row: the
same candidates, scores (float32 sums), stable ordering and finished sets, so the
tokens are whisper's (``tests/test_token_strategies.py`` compares them on seeded
logits with ties, and the end-to-end tests on real speech).

whisper also takes the ``log_softmax`` of a step's logits twice: in the timestamp
rules and again in the token decoder (greedy or beam). :class:`StepLogProbs` computes
it once per step and hands the same tensor to both (docs/performance.md, entry 34).

Two of torch's CPU operations cost far more than the work in them on a row of 51 864
logits (one thread, entry 37): ``argmax`` (0.14 ms, numpy's 7 µs: the same first index
of the maximum) and indexing with a Python list (25 µs, a tensor index 5 µs).
:class:`BatchedGreedyDecoder` and :class:`IndexedSuppressTokens` avoid them.

Backends opt in through ``Backend.batched_token_logic``; the ``cpu`` reference keeps
whisper's own classes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Categorical
from whisper.decoding import (
    ApplyTimestampRules,
    BeamSearchDecoder,
    GreedyDecoder,
    Inference,
    SuppressBlank,
    SuppressTokens,
)


class StepLogProbs:
    """``F.log_softmax(logits.float(), dim=-1)`` of one step's logits, computed once.

    The result is kept with the logits tensor it came from and that tensor's version counter,
    which every in-place change bumps: a later call with the same, unchanged logits gets the same
    tensor back; logits changed since are computed again, unless whoever changed them said which
    rows (:meth:`rows_changed`). Each row's ``log_softmax`` depends on that row alone, so the
    values are those of a fresh call, bit for bit.
    """

    def __init__(self) -> None:
        self._logits: Tensor | None = None
        self._version = -1
        self._logprobs: Tensor | None = None

    def __call__(self, logits: Tensor) -> Tensor:
        if self._logprobs is not None and self._logits is logits and self._version == logits._version:
            return self._logprobs
        self._logprobs = F.log_softmax(logits.float(), dim=-1)
        self._logits, self._version = logits, logits._version
        return self._logprobs

    def rows_changed(self, logits: Tensor, rows: list[int]) -> None:
        """``logits`` (given to the last call) was changed in place in ``rows`` only since."""
        if self._logprobs is None or self._logits is not logits:
            return
        self._logprobs[rows] = F.log_softmax(logits[rows].float(), dim=-1)
        self._version = logits._version


class BatchedGreedyDecoder(GreedyDecoder):
    """whisper's greedy (or sampling) step, taking its log-probabilities from :class:`StepLogProbs`."""

    def __init__(self, temperature: float, eot: int, log_probs: StepLogProbs | None = None) -> None:
        super().__init__(temperature, eot)
        self.log_probs = log_probs or StepLogProbs()

    def update(self, tokens: Tensor, logits: Tensor, sum_logprobs: Tensor) -> tuple[Tensor, bool]:
        if self.temperature == 0:
            next_tokens = first_argmax(logits)
        else:
            next_tokens = Categorical(logits=logits / self.temperature).sample()

        logprobs = self.log_probs(logits)
        current_logprobs = logprobs[torch.arange(logprobs.shape[0]), next_tokens]
        sum_logprobs += current_logprobs * (tokens[:, -1] != self.eot)

        next_tokens[tokens[:, -1] == self.eot] = self.eot
        tokens = torch.cat([tokens, next_tokens[:, None]], dim=-1)

        completed = (tokens[:, -1] == self.eot).all()
        return tokens, completed


def first_argmax(logits: Tensor) -> Tensor:
    """``logits.argmax(dim=-1)``: the first index of each row's maximum (numpy's and torch's rule alike),
    through numpy for host tensors."""
    if logits.device.type != "cpu":
        return logits.argmax(dim=-1)
    return torch.from_numpy(np.asarray(logits.detach().numpy().argmax(axis=-1), dtype=np.int64))


class IndexedSuppressTokens(SuppressTokens):
    """whisper's ``SuppressTokens`` with its token list held as an index tensor, made once."""

    def __init__(self, suppress_tokens: list[int] | tuple[int, ...]) -> None:
        super().__init__(suppress_tokens)
        self.index = torch.tensor(list(self.suppress_tokens), dtype=torch.long)

    def apply(self, logits: Tensor, tokens: Tensor) -> None:
        logits.index_fill_(-1, self.index.to(logits.device), -np.inf)


class BatchedBeamSearchDecoder(BeamSearchDecoder):
    """whisper's beam search step, with one ``topk`` and one host transfer per step."""

    def __init__(
        self,
        beam_size: int,
        eot: int,
        inference: Inference,
        patience: float | None = None,
        log_probs: StepLogProbs | None = None,
    ) -> None:
        super().__init__(beam_size, eot, inference, patience)
        self.log_probs = log_probs or StepLogProbs()

    def update(self, tokens: Tensor, logits: Tensor, sum_logprobs: Tensor) -> tuple[Tensor, bool]:
        if tokens.shape[0] % self.beam_size != 0:
            raise ValueError(f"{tokens.shape}[0] % {self.beam_size} != 0")

        n_audio = tokens.shape[0] // self.beam_size
        if self.finished_sequences is None:  # for the first update
            self.finished_sequences = [{} for _ in range(n_audio)]

        logprobs = self.log_probs(logits)
        top_logprobs, top_tokens = logprobs.topk(self.beam_size + 1)
        # float32 sums, as whisper's (sum_logprobs[idx] + logprob).item()
        candidate_scores = (sum_logprobs.unsqueeze(1) + top_logprobs).tolist()
        candidate_tokens = top_tokens.tolist()
        # whisper keys each candidate by its whole sequence; (the first row with the same prefix, token)
        # is the same key without building and hashing a tuple of the history per candidate
        same = (tokens.unsqueeze(1) == tokens.unsqueeze(0)).all(dim=-1)
        prefix_of = same.to(torch.int8).argmax(dim=1).tolist()
        prefixes: list[list[int]] | None = None  # the histories as lists, only for finished sequences

        next_tokens, source_indices, next_scores, finished_sequences = [], [], [], []
        for i in range(n_audio):
            scores, sources, finished = {}, {}, {}
            # STEP 1: the cumulative log probabilities of the candidates (a sequence met twice keeps
            # its last score and source, as in whisper's dicts)
            for idx in range(i * self.beam_size, (i + 1) * self.beam_size):
                for score, token in zip(candidate_scores[idx], candidate_tokens[idx], strict=True):
                    key = (prefix_of[idx], token)
                    scores[key] = score
                    sources[key] = idx
            # STEP 2: rank the candidates and keep the top beam_size sequences for each audio
            saved = 0
            for key in sorted(scores, key=scores.get, reverse=True):
                if key[1] == self.eot:
                    if prefixes is None:
                        prefixes = tokens.tolist()
                    finished[tuple(prefixes[sources[key]]) + (key[1],)] = scores[key]
                else:
                    next_scores.append(scores[key])
                    next_tokens.append(key[1])
                    source_indices.append(sources[key])
                    saved += 1
                    if saved == self.beam_size:
                        break
            finished_sequences.append(finished)

        sum_logprobs[: len(next_scores)] = torch.tensor(next_scores, dtype=sum_logprobs.dtype)
        new_tokens = torch.tensor(next_tokens, dtype=tokens.dtype, device=tokens.device)
        tokens = torch.cat([tokens[source_indices], new_tokens[:, None]], dim=-1)
        self.inference.rearrange_kv_cache(source_indices)

        # add newly finished sequences to self.finished_sequences
        assert len(self.finished_sequences) == len(finished_sequences)
        for previously_finished, newly_finished in zip(self.finished_sequences, finished_sequences, strict=True):
            for seq in sorted(newly_finished, key=newly_finished.get, reverse=True):
                if len(previously_finished) >= self.max_candidates:
                    break  # the candidate list is full
                previously_finished[seq] = newly_finished[seq]

        # mark as completed if all audio has enough number of samples
        completed = all(len(sequences) >= self.max_candidates for sequences in self.finished_sequences)
        return tokens, completed


def timestamp_history_ranges(
    seq: list[int], timestamp_begin: int, eot: int, n_vocab: int
) -> tuple[tuple[int, int], tuple[int, int]]:
    """The token ranges [lo, hi) that ``ApplyTimestampRules.apply`` masks in one row from its sampled
    tokens ``seq`` alone: (the pairing rule's, the order rule's), (0, 0) where a rule masks nothing."""
    last_was_timestamp = len(seq) >= 1 and seq[-1] >= timestamp_begin
    penultimate_was_timestamp = len(seq) < 2 or seq[-2] >= timestamp_begin
    pairing = (0, 0)
    if last_was_timestamp:
        # a timestamp pair is followed by text; a lone timestamp by its pair or the end of text
        pairing = (timestamp_begin, n_vocab) if penultimate_was_timestamp else (0, eot)
    order = (0, 0)
    last_timestamp = next((t for t in reversed(seq) if t >= timestamp_begin), None)
    if last_timestamp is not None:
        # timestamps do not decrease, and a segment is not empty (no infinite loop of one timestamp)
        if not (last_was_timestamp and not penultimate_was_timestamp):
            last_timestamp += 1
        order = (timestamp_begin, last_timestamp)
    return pairing, order


class BatchedTimestampRules(ApplyTimestampRules):
    """whisper's timestamp rules, reading the sampled tokens once and deciding every row's
    "timestamp or text" rule with one ``logsumexp`` and one ``max``; their ``log_softmax`` is
    the step's :class:`StepLogProbs`, which the token decoder then reuses."""

    def __init__(
        self,
        tokenizer: Any,
        sample_begin: int,
        max_initial_timestamp_index: int | None,
        log_probs: StepLogProbs | None = None,
    ) -> None:
        super().__init__(tokenizer, sample_begin, max_initial_timestamp_index)
        self.log_probs = log_probs or StepLogProbs()

    def apply(self, logits: Tensor, tokens: Tensor) -> None:
        timestamp_begin, eot = self.tokenizer.timestamp_begin, self.tokenizer.eot
        # suppress <|notimestamps|> which is handled by without_timestamps
        if self.tokenizer.no_timestamps is not None:
            logits[:, self.tokenizer.no_timestamps] = -np.inf

        # timestamps have to appear in pairs, except directly before EOT, and do not decrease
        for k, seq in enumerate(tokens[:, self.sample_begin :].tolist()):
            for lo, hi in timestamp_history_ranges(seq, timestamp_begin, eot, logits.shape[-1]):
                if hi > lo:
                    logits[k, lo:hi] = -np.inf

        if tokens.shape[1] == self.sample_begin:
            # suppress generating non-timestamp tokens at the beginning
            logits[:, :timestamp_begin] = -np.inf
            # apply the `max_initial_timestamp` option
            if self.max_initial_timestamp_index is not None:
                last_allowed = timestamp_begin + self.max_initial_timestamp_index
                logits[:, last_allowed + 1 :] = -np.inf

        # if sum of probability over timestamps is above any other token, sample timestamp
        logprobs = self.log_probs(logits)
        timestamp_logprob = logprobs[:, timestamp_begin:].logsumexp(dim=-1)
        max_text_token_logprob = logprobs[:, :timestamp_begin].amax(dim=-1)
        rows = (timestamp_logprob > max_text_token_logprob).nonzero().flatten().tolist()
        if rows:
            logits[rows, :timestamp_begin] = -np.inf
            self.log_probs.rows_changed(logits, rows)


class GreedyMasks:
    """What whisper's logit filters mask in a greedy step after the first, decided from the token
    history alone, for a device that applies them and picks the token itself
    (``backends/whisper_max/choice.py``).

    :attr:`suppress` is a (n_vocab,) float32 row of 0 or -inf, the same every step (``SuppressTokens``,
    and ``<|notimestamps|>`` under the timestamp rules); :meth:`ranges` gives each row's
    [lo, hi) token ranges of this step (the timestamp rules' pairs and order; [0, 0) masks nothing).
    The rule that depends on the logits' values, "a timestamp if the timestamps' total probability
    beats every text token", is the device's, on when :attr:`timestamp_rule`.  ``SuppressBlank`` and
    the timestamp rules' first-step masks act at the first sampled token only, which the host
    decides with whisper's own filters."""

    #: ranges per row: the timestamp pairing rule's, then the order rule's (:func:`timestamp_history_ranges`)
    n_ranges = 2

    def __init__(
        self, n_vocab: int, suppress_tokens: list[int], timestamps: ApplyTimestampRules | None, sample_begin: int
    ) -> None:
        self.sample_begin = sample_begin
        self.timestamp_rule = timestamps is not None
        self.suppress = np.zeros(n_vocab, dtype=np.float32)
        self.suppress[list(suppress_tokens)] = -np.inf
        self.timestamp_begin = self.eot = 0
        if timestamps is not None:
            tokenizer = timestamps.tokenizer
            self.timestamp_begin, self.eot = tokenizer.timestamp_begin, tokenizer.eot
            if tokenizer.no_timestamps is not None:
                self.suppress[tokenizer.no_timestamps] = -np.inf

    @classmethod
    def of(cls, decoder: Any, logit_filters: list[Any], n_vocab: int, sample_begin: int) -> GreedyMasks | None:
        """The masks of a ``DecodingTask``'s greedy decoder at temperature 0 and logit filters, or None
        where the task decodes otherwise or has a filter this class does not reproduce."""
        if type(decoder) not in (GreedyDecoder, BatchedGreedyDecoder) or decoder.temperature != 0:
            return None
        suppress: list[int] = []
        timestamps = None
        for f in logit_filters:
            if type(f) is SuppressBlank:
                continue  # the first sampled token only
            if type(f) in (SuppressTokens, IndexedSuppressTokens):
                suppress += list(f.suppress_tokens)
            elif type(f) in (ApplyTimestampRules, BatchedTimestampRules) and timestamps is None:
                timestamps = f
            else:
                return None
        return cls(n_vocab, suppress, timestamps, sample_begin)

    def ranges(self, tokens: list[list[int]]) -> np.ndarray:
        """(batch, n_ranges, 2) int64: the token ranges [lo, hi) each row masks at this step, from the
        rows' tokens so far (more than ``sample_begin`` of them): ``ApplyTimestampRules.apply``'s masks
        after the first sampled token."""
        out = np.zeros((len(tokens), self.n_ranges, 2), dtype=np.int64)
        if self.timestamp_rule:
            n_vocab = len(self.suppress)
            for k, row in enumerate(tokens):
                seq = row[self.sample_begin :]
                out[k] = timestamp_history_ranges(seq, self.timestamp_begin, self.eot, n_vocab)
        return out
