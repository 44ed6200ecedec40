"""whisper's greedy choice as MAX graph operations (``whisper_max/choice.py``) against whisper's own filters
and greedy decoder, on seeded synthetic logits that real speech rarely produces: exact ties at the maximum
(the first index wins, as torch's and numpy's argmax; MAX's own argmax may pick any on a GPU), rows where
the timestamps' total probability beats the best text token or nearly does, masked ranges over the best
token, and the timestamp rule switched off. Both forms of the choice: the MAX ops of the GPU plan's decoder step
(one small graph, compiled once per session on MAX's CPU), and the CPU plan's ``choice`` graph, one Mojo op,
which greedy decoding runs on each speculative burst's logits rows.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
import torch
from whisper.decoding import ApplyTimestampRules, GreedyDecoder, SuppressTokens
from whisper.tokenizer import get_tokenizer

from max_whisper.token_strategies import GreedyMasks

pytestmark = pytest.mark.max

TOKENIZER = get_tokenizer(multilingual=False)
N_VOCAB = 51864
SAMPLE_BEGIN = 3


@pytest.fixture(scope="module", params=["ops", "kernel"])
def choice_graph(request: pytest.FixtureRequest, max_report: Any) -> Any:
    """``ops``: ``greedy_choice`` as MAX ops (the GPU plan's, inside its decoder step), in a small graph of its
    own; ``kernel``: the CPU plan's ``choice`` graph, one Mojo op, loaded by the session's backend."""
    if request.param == "kernel":
        return request.getfixturevalue("max_backend").models["choice"]
    pytest.importorskip("max.engine")
    from max.driver import CPU
    from max.dtype import DType
    from max.engine import InferenceSession
    from max.graph import DeviceRef, Graph, TensorType

    from max_whisper.backends.whisper_max.choice import greedy_choice

    device = DeviceRef.CPU()
    types = [
        TensorType(DType.float32, ["batch", 1, N_VOCAB], device),
        TensorType(DType.float32, [N_VOCAB], device),
        TensorType(DType.int64, ["batch", "n_ranges", 2], device),
        TensorType(DType.int64, [1], device),
    ]
    with Graph("greedy_choice", input_types=types) as graph:
        logits, suppress, ranges, rule = (value.tensor for value in graph.inputs)
        graph.output(*greedy_choice(logits, suppress, ranges, rule, TOKENIZER.timestamp_begin, device))
    start = time.perf_counter()
    model = InferenceSession(devices=[CPU()]).load(graph)
    max_report.record_time("greedy choice graph: compile", time.perf_counter() - start)
    return model


def case(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(history (rows, tokens), logits (rows, n_vocab)): logits on a grid of 0.5 (ties at the maximum), and
    per row one of: the timestamps raised far above the text, raised to about the best text token, or left
    low; histories with timestamp pairs, single timestamps and none."""
    rng = np.random.default_rng(seed)
    rows = int(rng.integers(2, 6))
    logits = np.round(rng.normal(0.0, 2.0, size=(rows, N_VOCAB)) * 2) / 2
    begin = TOKENIZER.timestamp_begin
    for row in range(rows):
        kind = rng.integers(0, 3)
        if kind == 0:
            logits[row, begin:] += 6.0
        elif kind == 1:  # the timestamps' total probability within ±0.3 (in log) of the best text token's
            mass = np.log(np.exp(logits[row, begin:] - logits[row, begin:].max()).sum()) + logits[row, begin:].max()
            logits[row, begin:] += logits[row, :begin].max() - mass + rng.uniform(-0.3, 0.3)
        best = int(rng.integers(0, TOKENIZER.eot))
        logits[row, best] = logits[row].max()  # a tie at the maximum with whatever was there
    length = int(rng.integers(1, 12))
    history = []
    for _ in range(rows):
        seq, stamp = [], begin
        while len(seq) < length:
            if rng.integers(0, 3) == 0:
                stamp += int(rng.integers(0, 20))
                seq += [stamp, stamp] if rng.integers(0, 2) else [stamp]
            else:
                seq.append(int(rng.integers(0, TOKENIZER.eot)))
        history.append([TOKENIZER.sot, TOKENIZER.transcribe, TOKENIZER.no_timestamps][:SAMPLE_BEGIN] + seq[:length])
    return torch.tensor(history), torch.from_numpy(logits.astype(np.float32))


@pytest.mark.parametrize("timestamps", [True, False])
@pytest.mark.parametrize("seed", range(8))
def test_the_graphs_greedy_choice_is_whispers(choice_graph: Any, seed: int, timestamps: bool) -> None:
    history, logits = case(seed)
    suppress = SuppressTokens([1, 2, 7, 220, TOKENIZER.eot - 1])
    filters = [suppress] + ([ApplyTimestampRules(TOKENIZER, SAMPLE_BEGIN, None)] if timestamps else [])
    greedy = GreedyDecoder(0.0, TOKENIZER.eot)
    masks = GreedyMasks.of(greedy, filters, N_VOCAB, SAMPLE_BEGIN)
    assert masks is not None and masks.timestamp_rule == timestamps

    expected = logits.clone()
    for f in filters:
        f.apply(expected, history)
    sum_logprobs = torch.zeros(len(history))
    tokens, _ = greedy.update(history, expected, sum_logprobs)

    ranges = masks.ranges(history.tolist())
    rule = np.array([int(masks.timestamp_rule)], dtype=np.int64)
    token, logprob = (o.to_numpy() for o in choice_graph.execute(logits[:, None].numpy(), masks.suppress, ranges, rule))
    assert token.tolist() == tokens[:, -1].tolist()
    # against float64 (torch's CPU log_softmax is itself up to ~3e-5 off; docs/performance.md, entry 40)
    exact = torch.log_softmax(expected.double(), dim=-1)[torch.arange(len(history)), tokens[:, -1]]
    assert np.abs(logprob - exact.numpy()).max() <= 1e-5
    # the case had a tie at the chosen maximum in some row, or a timestamp chosen, or both
    ties = (expected == expected.max(dim=-1, keepdim=True).values).sum(dim=-1)
    assert (ties > 1).any() or (tokens[:, -1] >= TOKENIZER.timestamp_begin).any()
