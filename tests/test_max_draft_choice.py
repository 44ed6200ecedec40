"""The draft decoder's choice of its guess through ``kernels/draft_choice.mojo``, against the rule in numpy.

The op gets the draft's 4-bit scores of every token and its hidden state and returns the guess and
its margin: the two best text tokens (ties: the first) scored again against the float32 embedding,
unless the timestamps' total probability beats the best text token. Each case is drawn so that one
branch of the rule decides it: text, time, a tie at the top, every text score equal, and a rescoring
that reverses the two best. Vocabulary widths that end in a partial vector and the real tiny.en sizes
(with MAX's row padding) are both checked.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.max

STATE = 64
# (n_vocab, timestamp_begin, padded width): a small vocabulary whose parts end mid-vector, and tiny.en's
SIZES = [(300, 203, 320), (51864, 50363, 51872)]


def reference(scores: np.ndarray, hidden: np.ndarray, embedding: np.ndarray, begin: int, n_vocab: int) -> tuple:
    """The draft's rule (``layers.TextDecoder.draft``) for one row, in float64."""
    text, times = scores[:begin].astype(np.float64), scores[begin:n_vocab].astype(np.float64)
    best = text.max()
    first = int(np.argmax(text))
    second = int(np.argmax(np.where(text >= best, -1e30, text)))
    first_exact, second_exact = (
        float(hidden.astype(np.float64) @ embedding[t].astype(np.float64)) for t in (first, second)
    )
    text_guess = second if second_exact > first_exact else first
    top = times.max()
    mass = top + np.log(np.exp(times - top).sum())
    if mass > best:
        return begin + int(np.argmax(times)), mass - best
    return text_guess, min(abs(first_exact - second_exact), best - mass)


@pytest.fixture(scope="module")
def choice_graphs(max_report: Any) -> dict:
    pytest.importorskip("max.engine")
    from max.driver import CPU
    from max.dtype import DType
    from max.engine import InferenceSession
    from max.graph import DeviceRef, Graph, TensorType, ops

    from max_whisper.backends.whisper_max.graphs import KERNELS

    device = DeviceRef.CPU()
    session = InferenceSession(devices=[CPU()])
    graphs = {}
    start = time.perf_counter()
    for n_vocab, begin, width in SIZES:
        types = [
            TensorType(DType.float32, ["batch", 1, width], device),
            TensorType(DType.float32, ["batch", 1, STATE], device),
            TensorType(DType.float32, [STATE, n_vocab], device),
        ]
        with Graph(f"draft_choice_{n_vocab}", input_types=types, custom_extensions=[KERNELS]) as graph:
            out_types = [TensorType(dtype, ["batch", 1], device) for dtype in (DType.int64, DType.float32)]
            parameters = {"timestamp_begin": begin, "n_vocab": n_vocab}
            values = [value.tensor for value in graph.inputs]
            guess, margin = ops.custom("draft_choice", device, values, out_types, parameters=parameters)
            graph.output(guess.tensor, margin.tensor)
        graphs[n_vocab] = session.load(graph)
    max_report.record_time("draft choice graphs: compile", time.perf_counter() - start)
    return graphs


def draw(case: str, embedding: np.ndarray, begin: int, width: int, rng: np.random.Generator) -> tuple:
    """Scores (width,) and hidden (STATE,) for which ``case`` decides (``reversed`` changes two rows of
    ``embedding``, (n_vocab, STATE))."""
    n_vocab = embedding.shape[0]
    scores = rng.standard_normal(width).astype(np.float32)
    scores[begin:n_vocab] -= 8  # the timestamps' mass stays below the best text token
    hidden = rng.standard_normal(STATE).astype(np.float32)
    if case == "time":
        scores[begin:n_vocab] += 12
    elif case == "tie":
        top = rng.choice(begin, size=2, replace=False)
        scores[top] = scores[:begin].max() + 1
    elif case == "flat":
        scores[:begin] = 1.5
    elif case == "reversed":
        order = np.argsort(-scores[:begin], kind="stable")
        first, second = order[0], order[1]
        embedding[first] = 0.0
        embedding[second] = hidden / np.linalg.norm(hidden)
    scores[n_vocab:] = 50  # padding past the vocabulary is never read
    return scores, hidden


@pytest.mark.parametrize("case", ["text", "time", "tie", "flat", "reversed"])
@pytest.mark.parametrize(("n_vocab", "begin", "width"), SIZES, ids=["small", "tiny.en"])
def test_the_choice_follows_the_rule(choice_graphs: dict, case: str, n_vocab: int, begin: int, width: int) -> None:
    from max.driver import Buffer

    rng = np.random.default_rng(sum(map(ord, case)) + n_vocab)
    embedding = (0.1 * rng.standard_normal((n_vocab, STATE))).astype(np.float32)
    rows = [draw(case, embedding, begin, width, rng) for _ in range(2)]
    scores = np.stack([r[0] for r in rows])[:, None, :]
    hidden = np.stack([r[1] for r in rows])[:, None, :]
    inputs = [Buffer.from_numpy(a) for a in (scores, hidden, np.ascontiguousarray(embedding.T))]
    guess, margin = (out.to_numpy() for out in choice_graphs[n_vocab].execute(*inputs))
    assert guess.shape == margin.shape == (2, 1) and guess.dtype == np.int64
    for row in range(2):
        expected_guess, expected_margin = reference(scores[row, 0], hidden[row, 0], embedding, begin, n_vocab)
        assert guess[row, 0] == expected_guess
        assert margin[row, 0] == pytest.approx(expected_margin, rel=1e-5, abs=1e-5)
    best_text = np.argmax(scores[:, 0, :begin], axis=-1)
    if case == "time":
        assert guess.min() >= begin
    elif case == "flat":
        assert not guess.any(), "every text score equal: the first token"
    elif case == "reversed":
        assert guess[1, 0] != best_text[1], "the exact scores reverse the two best"
    elif case == "tie":
        for row in range(2):
            tied = np.flatnonzero(scores[row, 0, :begin] == scores[row, 0, :begin].max())
            assert len(tied) == 2 and guess[row, 0] != tied[1], "of two equal best, the first"
    else:
        assert guess.max() < begin
