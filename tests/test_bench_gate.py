"""The accuracy gate on fabricated transcripts: a verdict per backend, clip and mode; nothing mutated."""

from __future__ import annotations

import dataclasses

import pytest

from max_whisper.bench.config import PEER, Tolerances
from max_whisper.bench.gate import Candidate, compare, judge

REFERENCE = (50363, 400, 401, 402, 403, 50413)


def cand(
    backend: str,
    tokens,
    text: str | None = " the cat sat on the mat",
    seconds: float | None = 1.0,
    mode: str = "greedy",
    clip: str = "a.flac",
) -> Candidate:
    return Candidate(clip, mode, backend, None if tokens is None else tuple(tokens), text, seconds)


CPU = cand("cpu", REFERENCE, seconds=2.0)


def test_identical_tokens_pass_with_a_speedup() -> None:
    j = compare(CPU, cand("max", REFERENCE, seconds=0.5), Tolerances())
    assert j.valid is True and j.matches_reference_backend is True and j.invalid_reason is None
    assert j.diff.identical and j.diff.edit_distance == 0 and j.diff.word_difference == 0.0
    assert j.speedup == pytest.approx(4.0) and j.tolerance == 0.0


def test_one_token_mismatch_fails_and_gets_no_speedup() -> None:
    wrong = list(REFERENCE)
    wrong[2] = 999
    j = compare(CPU, cand("max", wrong, seconds=0.5), Tolerances())
    assert j.valid is False and j.matches_reference_backend is False and j.speedup is None
    assert j.diff.edit_distance == 1 and j.diff.first_difference == 2
    assert "token error rate" in j.invalid_reason and "first at token 2" in j.invalid_reason


def test_a_stated_tolerance_admits_a_difference_but_still_reports_it() -> None:
    wrong = list(REFERENCE)
    wrong[2] = 999
    j = compare(CPU, cand("gpu", wrong), Tolerances(per_backend={"gpu": 0.2}))
    assert j.valid is True and j.matches_reference_backend is False and j.tolerance == 0.2
    assert compare(CPU, cand("max", wrong), Tolerances(per_backend={"gpu": 0.2})).valid is False


def test_a_truncated_transcript_never_passes_the_default() -> None:
    assert compare(CPU, cand("max", REFERENCE[:2], text=" the"), Tolerances()).valid is False


def test_peer_is_judged_on_words_within_its_tolerance() -> None:
    close = compare(CPU, cand(PEER, [1, 2, 3], text="The cat sat on the mat."), Tolerances())
    assert close.valid is True and close.matches_reference_backend is False and close.tolerance == 0.05
    far = compare(CPU, cand(PEER, REFERENCE, text="the cat"), Tolerances())
    assert far.valid is False and "word difference" in far.invalid_reason
    assert compare(CPU, cand(PEER, REFERENCE, text="the cat"), Tolerances(peer=0.7)).valid is True


def test_no_reference_means_unknown_not_valid() -> None:
    j = compare(None, cand("max", REFERENCE), Tolerances())
    assert j.valid is None and j.speedup is None and "no cpu transcript" in j.invalid_reason
    assert compare(CPU, cand("max", None), Tolerances()).valid is None  # the candidate did not run


def test_judge_pairs_each_mode_with_the_reference_in_the_same_mode() -> None:
    candidates = [
        CPU,
        cand("cpu", REFERENCE[:3], seconds=8.0, mode="beam5"),
        cand("max", REFERENCE, seconds=1.0),
        cand("max", REFERENCE[:3], seconds=2.0, mode="beam5"),
        cand("gpu", None),
    ]
    before = [dataclasses.replace(c) for c in candidates]
    verdict = judge(candidates, Tolerances())
    assert candidates == before  # nothing mutated
    assert verdict.get("a.flac", "greedy", "max").speedup == pytest.approx(2.0)
    assert verdict.get("a.flac", "beam5", "max").valid is True
    assert verdict.get("a.flac", "beam5", "max").speedup == pytest.approx(4.0)
    assert verdict.get("a.flac", "greedy", "gpu").valid is None
    assert verdict.passed and not verdict.invalid and not verdict.reference_failed


def test_verdict_reports_invalid_backends_and_a_failed_reference() -> None:
    verdict = judge([CPU, cand("max", REFERENCE[:1])], Tolerances())
    assert not verdict.passed and [j.backend for j in verdict.invalid] == ["max"]
    failed = judge([cand("cpu", None), cand("max", REFERENCE)], Tolerances())
    assert failed.reference_failed and not failed.passed
