"""Clip manifests (``manifest.tsv``), clip groups, reference transcripts, and WER per group."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..config import SHARED_AUDIO_DIR
from ..errors import MaxWhisperError
from .records import GroupSummary, ManifestClip, OverallSummary

#: Manifest groups left out of the "overall" WER (the long-form clip repeats the LJ Speech clips).
OVERALL_EXCLUDED_GROUPS = ("longform",)

#: File-name prefix -> group name, for manifests such as ../shared/audio/manifest.tsv.
GROUP_PREFIXES = {
    "librispeech": "librispeech",
    "jfk": "jfk",
    "ljspeech": "ljspeech",
    "longform": "longform",
    "fleurs": "fleurs",
    "librivox": "librivox",
    "mfa": "spontaneous",
}


@dataclass(frozen=True)
class ManifestRow:
    """One clip of a manifest."""

    file: str
    #: ``file`` resolved against the manifest's folder (unless it is absolute).
    path: Path
    group: str
    reference_transcript: str | None
    duration_s: float | None


def clip_group(file_name: str) -> str:
    """The group of a clip, from its file-name prefix (``librispeech_1089-...flac`` -> ``librispeech``)."""
    stem = Path(file_name).name.split(".")[0].lower()
    prefix = stem.split("_")[0].split("-")[0]
    return GROUP_PREFIXES.get(prefix, prefix or "other")


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None


def read_manifest(path: os.PathLike) -> list[ManifestRow]:
    """The clips of a ``manifest.tsv`` (tab-separated, header row with ``file``; ``reference_transcript``)."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
    except OSError as e:
        raise MaxWhisperError(f"{path}: cannot read the manifest ({e.strerror or e})") from None
    if rows and "file" not in rows[0]:
        raise MaxWhisperError(f"{path}: not a manifest (no 'file' column in the header)")
    out = []
    for row in rows:
        name = (row.get("file") or "").strip()
        if name:
            clip = Path(name)
            out.append(
                ManifestRow(
                    file=name,
                    path=clip if clip.is_absolute() else path.parent / clip,
                    group=clip_group(name),
                    reference_transcript=row.get("reference_transcript") or None,
                    duration_s=_float(row.get("duration_s")),
                )
            )
    return out


@lru_cache(maxsize=8)
def _manifest_references(manifest: Path) -> dict[str, str | None]:
    try:
        return {Path(r.file).name: r.reference_transcript for r in read_manifest(manifest)}
    except MaxWhisperError:
        return {}


def find_reference(audio: os.PathLike) -> tuple[str | None, str | None]:
    """(reference transcript, where it came from) for a clip, or (None, None).

    Looks in ``manifest.tsv`` beside the clip, then in ``SHARED_AUDIO_DIR/manifest.tsv``
    (by file name), then for a ``<stem>.txt`` beside the clip (as ``audio_samples/demo.txt``).
    """
    audio = Path(audio)
    for manifest in (audio.parent / "manifest.tsv", Path(SHARED_AUDIO_DIR) / "manifest.tsv"):
        if manifest.is_file():
            text = _manifest_references(manifest.resolve()).get(audio.name)
            if text:
                return text, str(manifest)
    sidecar = audio.with_suffix(".txt")
    if sidecar.is_file():
        try:
            text = " ".join(sidecar.read_text(encoding="utf-8").split())
        except (OSError, UnicodeDecodeError):
            text = ""
        if text:
            return text, str(sidecar)
    return None, None


def _block(rows: Sequence[ManifestClip]) -> tuple[int, int, int, float, float, float | None]:
    from .metrics import wer

    scored = [r for r in rows if r.text is not None and r.reference_text]
    return (
        len(rows),
        len(scored),
        sum(1 for r in rows if r.text is None),
        sum(r.duration_s or 0.0 for r in rows),
        sum(r.total_s or 0.0 for r in rows),
        wer([r.reference_text for r in scored], [r.text for r in scored]) if scored else None,
    )


def summarize_manifest(
    clips: Sequence[ManifestClip], excluded: Iterable[str] = OVERALL_EXCLUDED_GROUPS
) -> tuple[list[GroupSummary], OverallSummary]:
    """WER per group and overall (``jiwer`` over each list).

    Failed clips (``text`` None) are counted in ``failed`` and left out of the
    WER.  ``overall`` leaves out the ``excluded`` groups.
    """
    excluded = tuple(excluded)
    groups = [
        GroupSummary(group, *_block([c for c in clips if c.group == group]))
        for group in dict.fromkeys(c.group for c in clips)
    ]
    overall = OverallSummary(
        *_block([c for c in clips if c.group not in excluded]),
        excluded_groups=[g for g in excluded if any(c.group == g for c in clips)],
    )
    return groups, overall
