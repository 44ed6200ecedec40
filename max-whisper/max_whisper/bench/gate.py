"""The accuracy gate: every transcript against the cpu reference's, in the same mode; a verdict, nothing mutated.

A backend is valid when its token error rate (edit distance over token ids,
timestamps included, divided by the cpu token count) is at most its tolerance
(default 0: the same tokens).  The peer runs other numerics on the same weights,
so it is judged on the normalized word difference of its text instead.  Only a
valid transcript earns a speed-up figure.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from .config import PEER, REFERENCE_BACKEND, Tolerances
from .metrics import token_diff, wer
from .records import TokenDiff


@dataclass(frozen=True)
class Candidate:
    """One backend's transcript of one clip in one mode (``tokens`` None: it did not run)."""

    clip: str
    mode: str
    backend: str
    tokens: tuple[int, ...] | None
    text: str | None
    #: median total seconds of the timed runs.
    seconds: float | None


@dataclass(frozen=True)
class Judgement:
    clip: str
    mode: str
    backend: str
    valid: bool | None
    matches_reference_backend: bool | None
    tolerance: float | None
    invalid_reason: str | None
    diff: TokenDiff | None
    #: reference seconds / these seconds; None unless valid.
    speedup: float | None


@dataclass(frozen=True)
class Verdict:
    judgements: tuple[Judgement, ...]

    def __iter__(self) -> Iterator[Judgement]:
        return iter(self.judgements)

    def get(self, clip: str, mode: str, backend: str) -> Judgement | None:
        return next((j for j in self.judgements if (j.clip, j.mode, j.backend) == (clip, mode, backend)), None)

    @property
    def invalid(self) -> tuple[Judgement, ...]:
        return tuple(j for j in self.judgements if j.valid is False)

    @property
    def reference_failed(self) -> bool:
        """Some clip and mode has no usable cpu transcript."""
        return any(j.backend == REFERENCE_BACKEND and j.valid is not True for j in self.judgements)

    @property
    def passed(self) -> bool:
        return not self.reference_failed and not self.invalid


def compare(reference: Candidate | None, candidate: Candidate, tolerances: Tolerances) -> Judgement:
    """Judge ``candidate`` against the ``reference`` backend's transcript of the same clip and mode."""
    key = dict(clip=candidate.clip, mode=candidate.mode, backend=candidate.backend)
    if candidate.tokens is None:
        return Judgement(
            **key,
            valid=None,
            matches_reference_backend=None,
            tolerance=None,
            invalid_reason=None,
            diff=None,
            speedup=None,
        )
    if candidate.backend == REFERENCE_BACKEND:
        return Judgement(
            **key,
            valid=True,
            matches_reference_backend=True,
            tolerance=0.0,
            invalid_reason=None,
            diff=None,
            speedup=1.0,
        )
    peer = candidate.backend == PEER
    limit = tolerances.for_backend(candidate.backend)
    if reference is None or reference.tokens is None:
        return Judgement(
            **key,
            valid=None,
            matches_reference_backend=None,
            tolerance=limit,
            invalid_reason=f"no {REFERENCE_BACKEND} transcript to check against",
            diff=None,
            speedup=None,
        )
    word_difference = None
    if reference.text is not None and candidate.text is not None:
        word_difference = wer(reference.text, candidate.text)
        if word_difference is None:  # the reference text is empty
            word_difference = 0.0 if not candidate.text.strip() else 1.0
    diff = token_diff(
        reference.tokens, candidate.tokens, reference_backend=REFERENCE_BACKEND, word_difference=word_difference
    )
    if peer:
        measure, what = word_difference, "normalized word difference"
    else:
        measure, what = diff.token_error_rate, "token error rate"
    reason = None
    if measure is None:
        valid, reason = None, f"no {what} to judge by"
    elif measure <= limit + 1e-12:
        valid = True
    else:
        valid = False
        reason = (
            f"{what} vs {REFERENCE_BACKEND} is {measure:.2%} (tolerance {limit:.2%}): "
            f"{diff.edit_distance} of {diff.reference_tokens} tokens differ"
        )
        if diff.first_difference is not None:
            reason += f", first at token {diff.first_difference}"
    speedup = None
    if valid and reference.seconds and candidate.seconds:
        speedup = reference.seconds / candidate.seconds
    return Judgement(
        **key,
        valid=valid,
        matches_reference_backend=diff.identical,
        tolerance=limit,
        invalid_reason=reason,
        diff=diff,
        speedup=speedup,
    )


def judge(candidates: Sequence[Candidate], tolerances: Tolerances) -> Verdict:
    """Judge every candidate against the reference backend's candidate with the same clip and mode."""
    references = {(c.clip, c.mode): c for c in candidates if c.backend == REFERENCE_BACKEND}
    return Verdict(tuple(compare(references.get((c.clip, c.mode)), c, tolerances) for c in candidates))
