"""The one measuring loop and what a backend reports about itself, with fakes (no model is loaded)."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest
import torch

from max_whisper.backends.base import Capabilities
from max_whisper.bench.config import parse_mode
from max_whisper.bench.records import RunTiming
from max_whisper.bench.runner import Attempt, backend_facts, measure

GREEDY = parse_mode("greedy")


def attempts(*token_lists: list[int]):
    """A ``once`` callable returning the given transcripts in turn, 1 s, 2 s, 3 s ..."""
    counter = itertools.count(1)

    def once() -> Attempt:
        i = next(counter)
        return Attempt(RunTiming(total=float(i), encode=0.1, decode=0.2), token_lists[i - 1], f"text {i}", "en")

    return once


def test_warmup_runs_are_untimed_and_the_last_run_is_kept() -> None:
    m = measure("cpu", "/x/a.flac", 10.0, GREEDY, attempts([1], [2, 50256], [2, 50256]), warmup=1, runs=2, eot=50256)
    assert m.status == "ok" and m.mode == "greedy" and m.duration_s == 10.0
    assert m.warmup_s == 1.0 and [r.total for r in m.runs] == [2.0, 3.0]
    assert m.tokens == [2, 50256] and m.text_tokens == 1 and m.text == "text 3" and m.deterministic is True
    changing = measure("cpu", "a.flac", 1.0, GREEDY, attempts([1], [2]), warmup=0, runs=2, eot=50256)
    assert changing.deterministic is False and changing.warmup_s is None


def test_a_failing_run_is_recorded_not_raised() -> None:
    def once() -> Attempt:
        raise RuntimeError("graph exploded")

    m = measure("max", "a.flac", 1.0, GREEDY, once, warmup=1, runs=1, eot=50256)
    assert m.status == "error" and m.reason == "RuntimeError: graph exploded" and m.runs == []


class FakeBackend:
    def __init__(self, description: dict, *, fp16: bool = False, dtypes: tuple = ("float32",)) -> None:
        self.description = description
        self.fp16 = fp16
        self.device = torch.device("cpu")
        self.capabilities = Capabilities(dtypes=dtypes)

    def describe(self) -> dict:
        return dict(self.description)


def test_backend_facts_read_describe_and_tolerate_missing_keys() -> None:
    plain = backend_facts(FakeBackend({"backend": "cpu"}))
    assert (plain.device, plain.dtype, plain.gpu_memory_mb) == ("cpu", "float32", None)
    max_gpu = backend_facts(FakeBackend({"device": "gpu", "dtype": "bfloat16", "gpu_memory_used_bytes": 3 * 2**20}))
    assert (max_gpu.device, max_gpu.dtype, max_gpu.gpu_memory_mb) == ("gpu", "bfloat16", 3.0)
    max_gpu_unknown = backend_facts(FakeBackend({"device": "gpu"}, dtypes=("float32", "bfloat16")))
    assert (max_gpu_unknown.dtype, max_gpu_unknown.gpu_memory_mb) == ("float32", None)
    assert backend_facts(FakeBackend({}, fp16=True)).dtype == "float16"
    assert backend_facts(FakeBackend({"device": "cpu", "gpu_memory_used_bytes": 5})).gpu_memory_mb is None


def test_attempt_options_follow_the_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    import max_whisper.decoding as decoding
    from max_whisper.bench.runner import backend_attempt

    seen = {}

    def fake_transcribe(backend, audio, **options):
        seen.update(options)
        backend.timer.seconds.update(mel=0.1, encode=0.2, decode=0.3)
        return {"text": " hi", "segments": [{"tokens": [1, 2]}], "language": "en"}

    monkeypatch.setattr(decoding, "transcribe", fake_transcribe)
    backend = SimpleNamespace(timer=SimpleNamespace(seconds={}, reset=lambda *names: None))
    attempt = backend_attempt(backend, None, parse_mode("default"), "en")()
    assert seen["beam_size"] == 5 and seen["best_of"] == 5 and seen["temperature"] == (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    assert seen["language"] == "en" and seen["condition_on_previous_text"] is True
    assert attempt.tokens == [1, 2] and attempt.timing.other >= 0.0 and attempt.timing.mel == 0.1
