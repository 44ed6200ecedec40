"""The speculative burst policy (``whisper_max.speculation``) with a fake model: no MAX, milliseconds.

The fake model keeps a KV "cache" of the tokens written at each position, the way the MAX graphs do:
``verify`` and ``draft`` write their tokens at the positions they are given, and a logits row is a
seeded function of the cache contents before it. A stale position (a draft guess left behind after a
rollback) therefore changes the logits, and the exactness checks catch it.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence

import numpy as np
import pytest

from max_whisper.backends.whisper_max.speculation import (
    LOOKAHEAD,
    MIN_DRAFT_MARGIN,
    BurstDecoder,
    DecoderStats,
    SpeculationPolicy,
)

N_VOCAB = 40
EOT = 39
N_CTX = 64
PROMPT = [1, 2, 3]


def true_logits(prefix: Sequence[int], seed: int) -> np.ndarray:
    """The exact model: a seeded row for each prefix; end-of-text gets likelier as the prefix grows."""
    key = zlib.crc32(np.asarray(prefix, dtype=np.int64).tobytes()) ^ seed
    row = np.random.default_rng(key).standard_normal(N_VOCAB)
    row[EOT] += -4.0 + 0.12 * len(prefix)
    return row


def choose(row: np.ndarray) -> int:
    """whisper's greedy choice rule stand-in: argmax, with token 0 suppressed."""
    row = row.copy()
    row[0] = -np.inf
    return int(np.argmax(row))


class FakeModel:
    """A cache of tokens by position, an exact ``verify`` and a scripted ``draft``.

    ``draft_rule(offset, call)`` -> (right?, margin), where ``offset`` counts the draft steps of the
    current burst (0 for the first guess) and ``call`` all draft steps so far.
    """

    def __init__(self, seed: int, draft_rule: Callable[[int, int], tuple[bool, float]]) -> None:
        self.seed = seed
        self.cache: list[int | None] = [None] * N_CTX
        self.draft_rule = draft_rule
        self.draft_calls = 0
        self.burst_offset = 0
        self.verify_calls: list[tuple[int, int]] = []  # (start, n_tokens)

    def _prefix(self, end: int) -> list[int]:
        prefix = self.cache[:end]
        assert None not in prefix, f"a pass read position {prefix.index(None)}, which nothing wrote"
        return prefix  # type: ignore[return-value]

    def verify(self, tokens: list[int], start: int) -> np.ndarray:
        self.verify_calls.append((start, len(tokens)))
        self.burst_offset = 0
        self.cache[start : start + len(tokens)] = tokens
        return np.stack([true_logits(self._prefix(start + j + 1), self.seed) for j in range(len(tokens))])

    def draft(self, token: int, position: int) -> tuple[int, float]:
        self.cache[position] = token
        right, margin = self.draft_rule(self.burst_offset, self.draft_calls)
        self.draft_calls += 1
        self.burst_offset += 1
        best = choose(true_logits(self._prefix(position + 1), self.seed))
        wrong = best + 1 if best + 1 < EOT else 1
        return (best if right else wrong), margin


def step_by_step(seed: int, max_len: int = N_CTX) -> list[int]:
    history = list(PROMPT)
    while len(history) < max_len:
        token = choose(true_logits(history, seed))
        history.append(token)
        if token == EOT:
            break
    return history


DEFAULT_POLICY = SpeculationPolicy()


def speculative(model: FakeModel, policy: SpeculationPolicy = DEFAULT_POLICY, max_len: int = N_CTX):
    """Greedy decoding through a BurstDecoder after an exact prefill: (history, rows served, decoder)."""
    decoder = BurstDecoder(model.draft, model.verify, end_of_text=EOT, n_vocab=N_VOCAB, n_ctx=N_CTX, policy=policy)
    row = model.verify(list(PROMPT), 0)[-1]  # the prompt, as the inference's prefill pass
    decoder.start(len(PROMPT))
    history, rows = list(PROMPT), []
    while True:
        rows.append((list(history), row))
        token = choose(row)
        history.append(token)
        if token == EOT or len(history) >= max_len:
            return history, rows, decoder
        row = decoder.logits(history)


def always(right: bool, margin: float = 10.0) -> Callable[[int, int], tuple[bool, float]]:
    return lambda offset, call: (right, margin)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5, 6, 7])
@pytest.mark.parametrize("p_right", [0.0, 0.5, 0.9, 1.0])
def test_served_tokens_equal_step_by_step_choices(seed: int, p_right: float) -> None:
    rng = np.random.default_rng(1000 + seed)
    script = rng.random(4 * N_CTX) < p_right
    margins = rng.uniform(0.0, 2.0, size=4 * N_CTX)
    model = FakeModel(
        seed, lambda offset, call: (bool(script[call % len(script)]), float(margins[call % len(margins)]))
    )
    history, rows, _ = speculative(model)
    assert history == step_by_step(seed)
    for prefix, row in rows:  # every row served is exactly the row of its history
        assert np.array_equal(row, true_logits(prefix, seed))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("p_right", [0.0, 0.7, 1.0])
def test_choices_served_from_bursts_equal_step_by_step_choices(seed: int, p_right: float) -> None:
    """``BurstDecoder.choice``: the model picks for all rows of a burst at once (here ``choose`` on each
    row), once per burst, each row under the history its logits were computed with."""
    rng = np.random.default_rng(2000 + seed)
    script = rng.random(4 * N_CTX) < p_right
    model = FakeModel(seed, lambda offset, call: (bool(script[call % len(script)]), 10.0))
    picks: list[list[list[int]]] = []

    def pick(logits: np.ndarray, histories: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        picks.append([list(h) for h in histories])
        for row, history in zip(logits, histories, strict=True):  # the row of each history, exactly
            assert np.array_equal(row, true_logits(history, seed))
        tokens = np.array([choose(row) for row in logits])
        return tokens, -np.arange(len(tokens), dtype=np.float32)

    decoder = BurstDecoder(model.draft, model.verify, end_of_text=EOT, n_vocab=N_VOCAB, n_ctx=N_CTX)
    history = list(PROMPT) + [choose(model.verify(list(PROMPT), 0)[-1])]
    decoder.start(len(PROMPT))
    while history[-1] != EOT and len(history) < N_CTX:
        token, logprob = decoder.choice(history, pick)
        # the log-probability handed back is pick's for the row served
        assert logprob == -(len(history) - 1 - decoder.burst_start)
        history.append(token)
    assert history == step_by_step(seed)
    assert len(picks) == decoder.stats.bursts == len(model.verify_calls) - 1
    assert [len(histories) for histories in picks] == [n for _, n in model.verify_calls[1:]]


def test_right_k_times_then_wrong_rolls_back_to_whisper_token() -> None:
    k = 3
    model = FakeModel(11, lambda offset, call: (offset != k, 10.0))  # guesses 1..k right, k + 1 wrong
    history, _, decoder = speculative(model, max_len=40)
    assert history == step_by_step(11, max_len=40)
    bursts = model.verify_calls[1:]  # after the prefill
    assert len(bursts) == decoder.stats.bursts >= 3
    for (start, n), (next_start, _) in zip(bursts, bursts[1:], strict=False):
        assert n == LOOKAHEAD  # the draft went on past its wrong guess: nothing told it otherwise
        assert next_start == start + k + 1  # the real token and k right guesses served, then whisper's own
    assert decoder.stats.rollbacks == len(bursts) - 1
    assert decoder.stats.rows_served == len(history) - len(PROMPT) - 1


def test_wrong_guess_is_overwritten_before_it_is_read() -> None:
    model = FakeModel(5, always(False))
    history, rows, decoder = speculative(model, max_len=20)
    assert history == step_by_step(5, max_len=20)
    # only each burst's real token is served; the next burst starts on its first guess's position,
    # whose wrong keys it overwrites (the fake cache would give other logits if it read them)
    bursts = model.verify_calls[1:]
    assert all(next_start == start + 1 for (start, _), (next_start, _) in zip(bursts, bursts[1:], strict=False))
    assert decoder.stats.rollbacks == decoder.stats.bursts - 1 and decoder.stats.rows_served == decoder.stats.bursts


def test_margin_below_threshold_stops_drafting_after_that_guess() -> None:
    model = FakeModel(3, always(True, margin=MIN_DRAFT_MARGIN / 2))
    history, _, decoder = speculative(model, max_len=25)
    assert history == step_by_step(3, max_len=25)
    # one guess per burst: it is still verified, but no more are drafted after it
    assert all(n <= 2 for _, n in model.verify_calls[1:])
    assert decoder.stats.draft_steps == decoder.stats.bursts
    assert decoder.stats.rollbacks == 0  # the guesses were right: served, never rolled back


def test_lookahead_limits_each_burst() -> None:
    lookahead = 5
    model = FakeModel(9, always(True))
    history, _, decoder = speculative(model, SpeculationPolicy(lookahead=lookahead), max_len=40)
    assert history == step_by_step(9, max_len=40)
    lengths = [n for _, n in model.verify_calls[1:]]
    assert max(lengths) == lookahead
    assert decoder.stats.burst_rows == sum(lengths)
    # right guesses: every row of every burst but the last is served
    assert decoder.stats.rows_served == len(history) - len(PROMPT) - 1


def test_bursts_stop_at_end_of_text_and_at_the_context() -> None:
    model = FakeModel(2, always(True))
    history, _, _ = speculative(model)
    assert history == step_by_step(2)
    for start, n in model.verify_calls:
        assert start + n <= N_CTX and n <= LOOKAHEAD
    # near the end of the text context a burst holds only the positions left
    model = FakeModel(2, always(True))
    decoder = BurstDecoder(model.draft, model.verify, end_of_text=EOT, n_vocab=N_VOCAB, n_ctx=len(PROMPT) + 3)
    model.verify(list(PROMPT), 0)
    decoder.start(len(PROMPT))
    decoder.logits(PROMPT + [choose(true_logits(PROMPT, 2))])
    assert model.verify_calls[-1] == (len(PROMPT), 3)


def test_a_guess_of_end_of_text_is_not_fed() -> None:
    model = FakeModel(4, always(True))
    history, _, _ = speculative(model)
    assert history[-1] == EOT, "the fake model must end its text for this test"
    last_start, last_n = model.verify_calls[-1]
    assert EOT not in model.cache[last_start : last_start + last_n]


def test_guess_outside_the_vocabulary_ends_the_burst() -> None:
    calls = []

    def draft(token: int, position: int) -> tuple[int, float]:
        calls.append(position)
        return N_VOCAB + 7, 10.0  # a padding row of a 4-bit embedding, say

    def verify(tokens: list[int], start: int) -> np.ndarray:
        return np.zeros((len(tokens), N_VOCAB))

    decoder = BurstDecoder(draft, verify, end_of_text=EOT, n_vocab=N_VOCAB, n_ctx=N_CTX)
    decoder.start(3)
    decoder.logits([1, 2, 3, 4])
    assert calls == [3] and decoder.burst_tokens == [4]


def test_stats_add_up() -> None:
    a, b = DecoderStats(steps=2, bursts=1), DecoderStats(steps=3, rows_served=4)
    a.add(b)
    assert a.as_dict() == {"steps": 5, "draft_steps": 0, "bursts": 1, "burst_rows": 0, "rows_served": 4, "rollbacks": 0}
