"""Speculative greedy decoding of one sequence: the burst policy, as plain Python.

A *burst* starts at the newest real token.  A cheap draft decoder guesses the
tokens after it one step at a time; then one exact decoder pass computes the
logits of the real token and of every guess together.  Row ``j`` of that pass
is exact for the history it was computed with (the real tokens, then guesses
``1..j``), so it is served to whisper only while whisper's own choices equal
those guesses; at the first difference the next burst starts from whisper's
token.  The tokens chosen are therefore exactly those of step-by-step
decoding, while the exact weights are read once per burst instead of once per
token.

The model is injected as two callables, so this module runs (and is tested)
without MAX:

``draft(token, position) -> (guess, margin)``
    feeds ``token`` at cache ``position`` to the draft decoder; ``margin`` is how
    far (in logits) the guess is ahead of the runner-up.
``verify(tokens, start) -> rows``
    feeds ``tokens`` at positions ``[start, start + len(tokens))`` to the exact
    decoder (overwriting whatever the draft wrote there) and returns one logits
    row per token, shape ``(len(tokens), n_vocab)``.

Both write keys and values into one cache; a position is read only by a later
pass that covers it, so cutting the cache back is only a matter of where the
next pass starts.

Where the caller lets the model pick whisper's greedy token itself (:meth:`BurstDecoder.choice`),
a third callable, ``pick(logits, histories) -> (tokens, log-probabilities)``, picks for every row of
a burst at once, each row under the history it was computed with.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

#: The most tokens one speculative burst feeds the exact pass (the real one + draft guesses).
LOOKAHEAD = 16
#: A burst ends at a guess whose draft margin over the runner-up is below this (logits): that guess
#: is still verified (it costs the pass almost nothing), but no more guesses are drafted after it.
#: (docs/performance.md, entry 15: lookahead 16 / margin 0.5 needs 81 float32 passes on the
#: long-form clip where 10 / 1.0 needs 122, for 16 % more draft steps.)
MIN_DRAFT_MARGIN = 0.5

DraftStep = Callable[[int, int], tuple[int, float]]
VerifyPass = Callable[[list[int], int], Any]
PickRows = Callable[[Any, list[list[int]]], tuple[Any, Any]]


@dataclass(frozen=True)
class SpeculationPolicy:
    """When a burst stops drafting: at ``lookahead`` tokens, at a guess below ``min_margin``, at
    end-of-text, or at the end of the text context."""

    lookahead: int = LOOKAHEAD
    min_margin: float = MIN_DRAFT_MARGIN


@dataclass
class DecoderStats:
    """Counters of one decoder (an ``Inference``): exact passes, draft steps and bursts.

    ``steps``: exact decoder passes; ``draft_steps``: draft decoder steps; ``bursts``: speculative
    bursts; ``burst_rows``: logits rows the bursts computed; ``rows_served``: rows handed to whisper
    from bursts; ``rollbacks``: bursts started before the end of the previous one (a guess was wrong).
    """

    steps: int = 0
    draft_steps: int = 0
    bursts: int = 0
    burst_rows: int = 0
    rows_served: int = 0
    rollbacks: int = 0

    def add(self, other: DecoderStats) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class BurstDecoder:
    """Serves greedy decoding's logits rows for one sequence from speculative bursts.

    ``n_past`` is the number of cache positions that hold the keys and values of real history when
    :meth:`start` is called (the prompt's); each :meth:`logits` call takes the whole history
    (prompt and every token whisper has chosen) and returns the logits row after its last token.
    """

    def __init__(
        self,
        draft: DraftStep,
        verify: VerifyPass,
        *,
        end_of_text: int,
        n_vocab: int,
        n_ctx: int,
        policy: SpeculationPolicy = SpeculationPolicy(),
        stats: DecoderStats | None = None,
    ) -> None:
        self.draft, self.verify = draft, verify
        self.end_of_text, self.n_vocab, self.n_ctx = end_of_text, n_vocab, n_ctx
        self.policy = policy
        self.stats = stats if stats is not None else DecoderStats()
        self.start(0)

    def start(self, n_past: int) -> None:
        """A new sequence whose first ``n_past`` cache positions hold its prompt."""
        self.n_past = n_past  # positions of the cache written by the last pass
        self.burst_start = n_past  # position of the first token of the current burst
        self.burst_tokens: list[int] = []  # input token at each position of the burst
        self.burst_logits: Any | None = None  # (len(burst_tokens), n_vocab)
        self.burst_choices: tuple[Any, Any] | None = None  # pick's (tokens, log-probabilities) of its rows

    def logits(self, history: Sequence[int]) -> Any:
        """The logits row after ``history``, served from the current burst or from a new one."""
        row = self._row(history)  # before reading burst_logits: it may start a burst
        return self.burst_logits[row]

    def choice(self, history: Sequence[int], pick: PickRows) -> tuple[int, float]:
        """whisper's greedy token after ``history`` and its log-probability, served from the current burst
        or from a new one. ``pick`` chooses for all of a burst's rows at once, the first time one of them
        is served."""
        row = self._row(history)
        if self.burst_choices is None:
            before = list(history[: self.burst_start])
            histories = [before + self.burst_tokens[: j + 1] for j in range(len(self.burst_tokens))]
            self.burst_choices = pick(self.burst_logits, histories)
        tokens, logprobs = self.burst_choices
        return int(tokens[row]), float(logprobs[row])

    def _row(self, history: Sequence[int]) -> int:
        """The row of the current burst computed after ``history``, after a new burst if none was."""
        position = len(history) - 1  # where the newest token sits
        offset = position - self.burst_start
        in_burst = self.burst_logits is not None and 0 <= offset < len(self.burst_tokens)
        if in_burst and list(history[self.burst_start : position + 1]) == self.burst_tokens[: offset + 1]:
            self.stats.rows_served += 1
            return offset
        if self.n_past > position:
            self.stats.rollbacks += 1
        self.n_past = min(self.n_past, position)
        self._burst(int(history[-1]))
        self.stats.rows_served += 1
        return 0

    def _burst(self, token: int) -> None:
        """Draft up to ``lookahead - 1`` guesses after ``token``, then one exact pass for all of them."""
        start = self.burst_start = self.n_past
        self.burst_tokens = [token]
        length = min(self.policy.lookahead, self.n_ctx - start)
        while len(self.burst_tokens) < length:
            guess, margin = self.draft(self.burst_tokens[-1], start + len(self.burst_tokens) - 1)
            self.stats.draft_steps += 1
            if guess >= self.n_vocab or guess == self.end_of_text:
                break
            self.burst_tokens.append(guess)
            if margin < self.policy.min_margin:
                break
        self.stats.bursts += 1
        self.stats.burst_rows += len(self.burst_tokens)
        self.burst_logits = self.verify(list(self.burst_tokens), start)
        self.burst_choices = None
        self.n_past = start + len(self.burst_tokens)
