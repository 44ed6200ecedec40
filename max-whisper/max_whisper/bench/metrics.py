"""Accuracy measures: normalized WER and token-level differences, both through ``jiwer``.

* :func:`wer` scores hypotheses against references the way the Whisper paper
  and ``../shared/audio`` do: openai-whisper's ``EnglishTextNormalizer`` on both
  sides, then ``jiwer.wer`` over the whole list (errors summed over clips,
  divided by the total number of reference words).
* :func:`token_diff` compares two token-id sequences (the ``cpu`` backend's and
  another backend's) by their edit distance: ``jiwer.process_words`` over the
  ids written as words.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any

from .records import TokenDiff

__all__ = ["normalize", "wer", "edit_distance", "token_diff", "result_tokens", "text_tokens"]


@lru_cache(maxsize=1)
def _normalizer():
    from whisper.normalizers import EnglishTextNormalizer

    return EnglishTextNormalizer()


def normalize(text: str) -> str:
    """openai-whisper's English normalization (lower case, spelled-out numbers, no punctuation...)."""
    return _normalizer()(text or "")


def wer(references: str | Sequence[str], hypotheses: str | Sequence[str]) -> float | None:
    """Word error rate of ``hypotheses`` against ``references`` after normalization.

    Accepts one string each or two equal-length lists; a list is scored as one
    corpus (``jiwer.wer`` over the lists).  Pairs whose normalized reference is
    empty are left out (WER is undefined for them); returns ``None`` when no
    pair is left.
    """
    import jiwer

    if isinstance(references, str):
        references = [references]
    if isinstance(hypotheses, str):
        hypotheses = [hypotheses]
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    pairs = [(normalize(r), normalize(h)) for r, h in zip(references, hypotheses, strict=True)]
    pairs = [(r, h) for r, h in pairs if r.split()]
    if not pairs:
        return None
    return float(jiwer.wer([r for r, _ in pairs], [h for _, h in pairs]))


def _edits(reference: Sequence[Any], hypothesis: Sequence[Any]) -> tuple[int, int | None]:
    """(edit distance, index in ``reference`` of the first difference) of two sequences."""
    if not reference:
        return len(hypothesis), (0 if hypothesis else None)
    import jiwer

    out = jiwer.process_words(" ".join(map(str, reference)), " ".join(map(str, hypothesis)))
    distance = out.substitutions + out.deletions + out.insertions
    first = next((chunk.ref_start_idx for chunk in out.alignments[0] if chunk.type != "equal"), None)
    return distance, first


def edit_distance(reference: Sequence[Any], hypothesis: Sequence[Any]) -> int:
    """Levenshtein distance (insertions, deletions, substitutions) between two sequences of ids."""
    return _edits(reference, hypothesis)[0]


def token_diff(
    reference: Sequence[int],
    hypothesis: Sequence[int],
    *,
    reference_backend: str = "cpu",
    word_difference: float | None = None,
) -> TokenDiff:
    """How far ``hypothesis`` is from ``reference``, token by token.

    ``token_error_rate`` is the edit distance divided by the reference length
    (when the reference is empty: 0.0 if the hypothesis is empty too, else 1.0).
    """
    reference, hypothesis = list(reference), list(hypothesis)
    distance, first = _edits(reference, hypothesis)
    rate = distance / len(reference) if reference else (0.0 if not hypothesis else 1.0)
    return TokenDiff(
        reference_backend=reference_backend,
        edit_distance=distance,
        reference_tokens=len(reference),
        hypothesis_tokens=len(hypothesis),
        token_error_rate=rate,
        first_difference=first,
        identical=reference == hypothesis,
        word_difference=word_difference,
    )


def result_tokens(result: Mapping[str, Any]) -> list[int]:
    """Every token of a whisper result's segments, in order (text and timestamp tokens)."""
    return [int(t) for segment in result.get("segments") or () for t in segment.get("tokens") or ()]


def text_tokens(tokens: Iterable[int], eot: int = 50256) -> list[int]:
    """The text tokens of ``tokens``: those below end-of-text (timestamps and specials removed).

    ``50256`` is end-of-text for the English-only (``*.en``) vocabulary; pass
    the tokenizer's ``eot`` for multilingual models (50257).
    """
    return [t for t in tokens if t < eot]
