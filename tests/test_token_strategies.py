"""The batched twins of whisper's token decoders and timestamp rules give whisper's results exactly.

Seeded logits with ties (values on a coarse grid), token histories with timestamp pairs, single
timestamps and none, several audios per batch and the first beam step (identical rows); each case runs
whisper's class and ours on copies of the same inputs and compares every output bit for bit, alone
and as whole steps (the rules, then the decoder, sharing one log-softmax).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from whisper.decoding import (
    ApplyTimestampRules,
    BeamSearchDecoder,
    DecodingOptions,
    GreedyDecoder,
    Inference,
    SuppressTokens,
)
from whisper.tokenizer import get_tokenizer

from max_whisper.decoding import BackendDecodingTask, ModelAdapter
from max_whisper.token_strategies import (
    BatchedBeamSearchDecoder,
    BatchedGreedyDecoder,
    BatchedTimestampRules,
    GreedyMasks,
    IndexedSuppressTokens,
    StepLogProbs,
)

TOKENIZER = get_tokenizer(multilingual=False)
N_VOCAB = 51864
SAMPLE_BEGIN = 3  # sot, no-speech-free english prompt: <|startoftranscript|> + 2 tokens before sampling


class RecordingInference(Inference):
    """Records the cache reorders a beam decoder asks for."""

    def __init__(self) -> None:
        self.reorders: list[list[int]] = []

    def rearrange_kv_cache(self, source_indices) -> None:
        self.reorders.append(list(source_indices))


def coarse_logits(rng: np.random.Generator, rows: int) -> torch.Tensor:
    """Logits on a grid of 0.25 (many exact ties), a few rows' timestamp range raised."""
    logits = np.round(rng.normal(0.0, 3.0, size=(rows, N_VOCAB)) * 4) / 4
    for row in rng.choice(rows, size=max(1, rows // 2), replace=False):
        logits[row, TOKENIZER.timestamp_begin :] += rng.uniform(0, 8)
    return torch.from_numpy(logits.astype(np.float32))


def history(rng: np.random.Generator, length: int) -> list[int]:
    """Sampled tokens: text, timestamp pairs, and sometimes a single trailing timestamp."""
    tokens, stamp = [], TOKENIZER.timestamp_begin
    while len(tokens) < length:
        kind = rng.integers(0, 4)
        if kind == 0:
            stamp += int(rng.integers(0, 30))
            tokens += [stamp, stamp] if rng.integers(0, 2) else [stamp]
        else:
            tokens.append(int(rng.integers(0, TOKENIZER.eot)))
    return tokens[:length]


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("max_initial", [None, 50])
def test_timestamp_rules_mask_the_same_logits(seed: int, max_initial: int | None) -> None:
    rng = np.random.default_rng(seed)
    rows = int(rng.integers(1, 7))
    length = int(rng.integers(0, 40)) if seed else 0  # seed 0: the first step (no sampled token)
    prompt = [TOKENIZER.sot, TOKENIZER.transcribe, TOKENIZER.no_timestamps][:SAMPLE_BEGIN]
    tokens = torch.tensor([prompt + history(rng, length) for _ in range(rows)], dtype=torch.long)
    logits = coarse_logits(rng, rows)
    theirs, ours = logits.clone(), logits.clone()
    ApplyTimestampRules(TOKENIZER, SAMPLE_BEGIN, max_initial).apply(theirs, tokens)
    BatchedTimestampRules(TOKENIZER, SAMPLE_BEGIN, max_initial).apply(ours, tokens)
    assert torch.equal(theirs, ours)
    assert torch.isinf(ours).any()  # the case masked something


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("n_audio", [1, 2])
def test_beam_search_steps_are_whispers(seed: int, n_audio: int) -> None:
    beam, steps = 5, 12
    rng = np.random.default_rng(100 + seed)
    n = n_audio * beam
    prompt = [TOKENIZER.sot, TOKENIZER.transcribe, TOKENIZER.no_timestamps]
    decoders: list[Any] = []
    states = []
    for cls in (BeamSearchDecoder, BatchedBeamSearchDecoder):
        inference = RecordingInference()
        decoders.append((cls(beam, TOKENIZER.eot, inference, patience=None if seed % 2 else 2.0), inference))
        states.append([torch.tensor([prompt] * n, dtype=torch.long), torch.zeros(n)])
    for step in range(steps):
        logits = coarse_logits(rng, n)
        if step % 3 == 2:  # make the end of text likely for some rows
            logits[rng.choice(n, size=2, replace=False), TOKENIZER.eot] = 30.0
        results = []
        for (decoder, _), state in zip(decoders, states, strict=True):
            tokens, completed = decoder.update(state[0], logits.clone(), state[1])
            state[0] = tokens
            results.append((tokens, completed))
        (theirs, their_done), (ours, our_done) = results
        assert torch.equal(theirs, ours), f"step {step}"
        assert their_done == our_done
        assert torch.equal(states[0][1], states[1][1]), f"sum_logprobs, step {step}"
        if their_done:
            break
    (whisper_decoder, whisper_inference), (our_decoder, our_inference) = decoders
    assert whisper_inference.reorders == our_inference.reorders
    assert [list(f.items()) for f in whisper_decoder.finished_sequences] == [
        list(f.items()) for f in our_decoder.finished_sequences
    ]
    assert any(whisper_decoder.finished_sequences), "no case ended a sequence"
    theirs = whisper_decoder.finalize(states[0][0].reshape(n_audio, beam, -1), states[0][1].reshape(n_audio, beam))
    ours = our_decoder.finalize(states[1][0].reshape(n_audio, beam, -1), states[1][1].reshape(n_audio, beam))
    assert [[t.tolist() for t in audio] for audio in theirs[0]] == [[t.tolist() for t in audio] for audio in ours[0]]
    assert theirs[1] == ours[1]


def test_step_log_probs_are_computed_once_and_follow_in_place_changes() -> None:
    logits = coarse_logits(np.random.default_rng(7), 5)
    log_probs = StepLogProbs()
    first = log_probs(logits)
    assert log_probs(logits) is first  # the same logits, unchanged: no second log_softmax
    assert log_probs(logits.clone()) is not first  # another tensor
    changed = log_probs(logits)
    logits[[1, 3], :100] = -np.inf  # changed in place, rows named
    log_probs.rows_changed(logits, [1, 3])
    assert log_probs(logits) is changed
    assert torch.equal(changed, torch.log_softmax(logits, dim=-1))
    logits[0, 5] = -np.inf  # changed in place, not said: computed again
    again = log_probs(logits)
    assert again is not changed and torch.equal(again, torch.log_softmax(logits, dim=-1))


#: Tokens a step suppresses (whisper's ``SuppressTokens``): some of the best of :func:`coarse_logits` rows too.
SUPPRESSED = [220, 1, 2, 7, 8, 9, 10, 14, 25, 26, 27, 28, 29, 31, 58, 59, 60, 61, 62, 63, 90, 91, 92, 93, 357]


def whisper_and_batched_decoders(kind: str) -> list[tuple[Any, Any]]:
    """(whisper's filters and decoder, ours sharing one StepLogProbs) for ``kind``."""
    pairs = []
    for batched in (False, True):
        log_probs = StepLogProbs()
        if kind == "beam":
            cls = BatchedBeamSearchDecoder if batched else BeamSearchDecoder
            extra = (log_probs,) if batched else ()
            decoder = cls(5, TOKENIZER.eot, RecordingInference(), None, *extra)
        else:
            temperature = 0.0 if kind == "greedy" else 0.8
            decoder = (
                BatchedGreedyDecoder(temperature, TOKENIZER.eot, log_probs)
                if batched
                else GreedyDecoder(temperature, TOKENIZER.eot)
            )
        rules = (
            BatchedTimestampRules(TOKENIZER, SAMPLE_BEGIN, 50, log_probs)
            if batched
            else ApplyTimestampRules(TOKENIZER, SAMPLE_BEGIN, 50)
        )
        suppress = IndexedSuppressTokens(SUPPRESSED) if batched else SuppressTokens(SUPPRESSED)
        pairs.append(([suppress, rules], decoder))
    return pairs


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("kind", ["greedy", "sampling", "beam"])
def test_whole_steps_sharing_one_log_softmax_are_whispers(seed: int, kind: str) -> None:
    """The suppressed tokens and timestamp rules, then the decoder, step after step: tokens and sums bit
    for bit (greedy takes the first of tied maxima, whisper's torch and our numpy alike)."""
    rng = np.random.default_rng(300 + seed)
    n = 5
    prompt = [TOKENIZER.sot, TOKENIZER.transcribe, TOKENIZER.no_timestamps]
    pairs = whisper_and_batched_decoders(kind)
    states = [[torch.tensor([prompt] * n, dtype=torch.long), torch.zeros(n)] for _ in pairs]
    text_masked = 0
    for step in range(10):
        logits = coarse_logits(rng, n)
        results = []
        for (filters, decoder), state in zip(pairs, states, strict=True):
            step_logits = logits.clone()
            for logit_filter in filters:
                logit_filter.apply(step_logits, state[0])
            text_masked += int(torch.isinf(step_logits[:, : TOKENIZER.timestamp_begin]).all(dim=-1).sum())
            torch.manual_seed(seed * 100 + step)  # the sampler draws the same numbers for both
            state[0], completed = decoder.update(state[0], step_logits, state[1])
            results.append(completed)
        assert torch.equal(states[0][0], states[1][0]), f"tokens, step {step}"
        assert torch.equal(states[0][1], states[1][1]), f"sum_logprobs, step {step}"
        assert results[0] == results[1]
        if results[0]:
            break
    assert text_masked, "no step had a row whose text tokens the timestamp rule masked"


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("beam_size", [5, None])
def test_decoding_task_uses_the_strategies_a_backend_asks_for(
    cpu_backend: Any, batched: bool, beam_size: int | None
) -> None:
    backend = cpu_backend
    backend.batched_token_logic = batched  # an instance attribute over the class's False
    try:
        task = BackendDecodingTask(ModelAdapter(backend), DecodingOptions(beam_size=beam_size, fp16=False))
    finally:
        del backend.batched_token_logic
    ours = BatchedBeamSearchDecoder if beam_size else BatchedGreedyDecoder
    assert isinstance(task.decoder, ours) == batched
    if beam_size:
        assert task.decoder.inference is task.inference
    rules = [f for f in task.logit_filters if isinstance(f, ApplyTimestampRules)]
    assert len(rules) == 1 and isinstance(rules[0], BatchedTimestampRules) == batched
    suppress = [f for f in task.logit_filters if isinstance(f, SuppressTokens)]
    assert len(suppress) == 1 and isinstance(suppress[0], IndexedSuppressTokens) == batched
    if batched:  # one log-softmax a step, shared
        assert rules[0].log_probs is task.decoder.log_probs


def greedy_task(backend: Any, **options: Any) -> BackendDecodingTask:
    return BackendDecodingTask(ModelAdapter(backend), DecodingOptions(fp16=False, **options))


@pytest.mark.parametrize("seed", range(10))
def test_greedy_masks_are_what_whispers_filters_mask_after_the_first_token(cpu_backend: Any, seed: int) -> None:
    """Every logit whisper's filters set to -inf at a greedy step after the first, from the history alone,
    is in ``GreedyMasks.suppress`` or the step's ``ranges``, and nothing else is. Two tokens (a word and
    the end of text) get logits far above the rest, so the rule that depends on the values never fires."""
    task = greedy_task(cpu_backend, beam_size=None)
    masks = GreedyMasks.of(task.decoder, task.logit_filters, N_VOCAB, task.sample_begin)
    assert masks is not None and masks.timestamp_rule
    rng = np.random.default_rng(seed)
    length = int(rng.integers(10, 40))
    rows = [list(task.initial_tokens) + history(rng, length) for _ in range(int(rng.integers(1, 6)))]
    logits = torch.zeros((len(rows), N_VOCAB))
    logits[:, [TOKENIZER.encode(" the")[0], TOKENIZER.eot]] = 200.0
    for logit_filter in task.logit_filters:  # whisper's own classes (the cpu backend does not batch)
        logit_filter.apply(logits, torch.tensor(rows))
    ours = np.broadcast_to(np.isinf(masks.suppress), logits.shape).copy()
    for k, row_ranges in enumerate(masks.ranges(rows)):
        for lo, hi in row_ranges:
            ours[k, lo:hi] = True
    assert np.array_equal(torch.isinf(logits).numpy(), ours)
    assert (masks.ranges(rows)[:, :, 1] > masks.ranges(rows)[:, :, 0]).any()  # the case masked a range


def test_greedy_masks_only_where_the_device_can_choose_as_whisper(cpu_backend: Any) -> None:
    """Greedy at temperature 0 only (beam search and sampling keep whisper's loop); without timestamps the
    device's timestamp rule is off and no range is masked; a filter it does not know keeps whisper's loop."""
    task = greedy_task(cpu_backend, beam_size=None)
    assert GreedyMasks.of(greedy_task(cpu_backend, beam_size=5).decoder, task.logit_filters, N_VOCAB, 3) is None
    sampling = greedy_task(cpu_backend, beam_size=None, temperature=0.5)
    assert GreedyMasks.of(sampling.decoder, sampling.logit_filters, N_VOCAB, 3) is None
    unknown = [*task.logit_filters, object()]
    assert GreedyMasks.of(task.decoder, unknown, N_VOCAB, task.sample_begin) is None
    plain = greedy_task(cpu_backend, beam_size=None, without_timestamps=True)
    masks = GreedyMasks.of(plain.decoder, plain.logit_filters, N_VOCAB, plain.sample_begin)
    assert masks is not None and not masks.timestamp_rule
    assert not masks.ranges([[*plain.initial_tokens, 50400, 50400]]).any()
    assert not np.isinf(masks.suppress[TOKENIZER.no_timestamps])


@pytest.mark.parametrize("mel_threads", [None, 1])
def test_the_log_mel_runs_on_the_backends_mel_threads(cpu_backend: Any, mel_threads: int | None) -> None:
    """The token logic may run on ``host_torch_threads``; the log-mel on ``mel_torch_threads`` (the caller's
    count when None): the max backend keeps both at one on the CPU device, where a woken torch pool slows
    MAX's graphs, and gives the log-mel every thread beside a GPU."""
    import importlib

    from max_whisper.decoding import _torch_threads, _whisper_uses

    caller = 2
    seen: list[int] = []

    def fake_mel(*args: Any, **kwargs: Any) -> torch.Tensor:
        seen.append(torch.get_num_threads())
        return torch.zeros(1)

    cpu_backend.mel_torch_threads = mel_threads  # an instance attribute over the class's None
    try:
        with _torch_threads(caller), _whisper_uses(fake_mel, cpu_backend), _torch_threads(1):
            importlib.import_module("whisper.transcribe").log_mel_spectrogram(None)
            logic_threads = torch.get_num_threads()
    finally:
        del cpu_backend.mel_torch_threads
    assert seen == [mel_threads or caller] and logic_threads == 1
