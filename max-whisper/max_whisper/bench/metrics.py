"""Accuracy measures used by the benchmark: normalized WER and token-level differences.

* :func:`wer` scores hypotheses against references the way the Whisper paper
  and ``../shared/audio`` do: openai-whisper's ``EnglishTextNormalizer`` on both
  sides, then ``jiwer.wer`` over the whole list (errors summed over clips,
  divided by the total number of reference words).
* :func:`token_diff` compares two token-id sequences (for example the ``cpu``
  backend's and another backend's) by Levenshtein distance.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

__all__ = [
    "normalize",
    "wer",
    "edit_distance",
    "token_diff",
    "result_tokens",
    "text_tokens",
]


@lru_cache(maxsize=1)
def _normalizer():
    from whisper.normalizers import EnglishTextNormalizer

    return EnglishTextNormalizer()


def normalize(text: str) -> str:
    """openai-whisper's English normalization (lower case, spelled-out numbers, no punctuation...)."""
    return _normalizer()(text or "")


def wer(references: Union[str, Sequence[str]], hypotheses: Union[str, Sequence[str]]) -> Optional[float]:
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
    refs: List[str] = []
    hyps: List[str] = []
    for ref, hyp in zip(references, hypotheses):
        ref_n = normalize(ref)
        if not ref_n.split():
            continue
        refs.append(ref_n)
        hyps.append(normalize(hyp))
    if not refs:
        return None
    return float(jiwer.wer(refs, hyps))


def edit_distance(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Levenshtein distance (insertions, deletions, substitutions) between two sequences."""
    try:
        from rapidfuzz.distance import Levenshtein

        return int(Levenshtein.distance(list(a), list(b)))
    except ImportError:  # pragma: no cover - rapidfuzz comes with jiwer
        pass
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def _first_difference(a: Sequence[Any], b: Sequence[Any]) -> Optional[int]:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def token_diff(reference: Sequence[int], hypothesis: Sequence[int]) -> Dict[str, Any]:
    """How far ``hypothesis`` is from ``reference``, token by token.

    ``token_error_rate`` is the edit distance divided by the reference length
    (0.0 for identical lists; when the reference is empty, 0.0 if the
    hypothesis is empty too, else 1.0).
    """
    reference = list(reference)
    hypothesis = list(hypothesis)
    distance = edit_distance(reference, hypothesis)
    if reference:
        rate = distance / len(reference)
    else:
        rate = 0.0 if not hypothesis else 1.0
    return {
        "edit_distance": distance,
        "reference_tokens": len(reference),
        "hypothesis_tokens": len(hypothesis),
        "token_error_rate": rate,
        "first_difference": _first_difference(reference, hypothesis),
        "identical": reference == hypothesis,
    }


def result_tokens(result: Mapping[str, Any]) -> List[int]:
    """Every token of a whisper result's segments, in order (text and timestamp tokens)."""
    tokens: List[int] = []
    for segment in result.get("segments") or ():
        tokens.extend(int(t) for t in segment.get("tokens") or ())
    return tokens


def text_tokens(tokens: Iterable[int], eot: int = 50256) -> List[int]:
    """The text tokens of ``tokens``: those below end-of-text (timestamps and specials removed).

    ``50256`` is end-of-text for the English-only (``*.en``) vocabulary; pass
    the tokenizer's ``eot`` for multilingual models (50257).
    """
    return [t for t in tokens if t < eot]
