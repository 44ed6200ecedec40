"""End to end: the ``max`` backend transcribes exactly like the ``cpu`` backend (openai-whisper, PyTorch).

Both backends run through the same decoding wrapper with the same options:

* greedy: temperature 0 with whisper's fallback schedule (0.0, 0.2, ..., 1.0), ``best_of=5`` (what the
  whisper CLI passes, used only if a window falls back to sampling), ``beam_size=None``. The segment
  token ids and the text must be identical on jfk.flac, on every LibriSpeech clip and on the 231-s
  long-form clip;
* beam search: whisper's CLI defaults, ``beam_size=5``, ``best_of=5``, the same temperature schedule. The
  texts must agree on jfk.flac and two LibriSpeech clips;
* sampling, the path of a fallback (none of the clips above falls back): temperature 0.4, ``best_of=5``,
  on jfk.flac; with the same torch seed both backends draw the same tokens.

torch's RNG is reseeded before every transcription so that a fallback to sampling draws the same numbers
on both sides. Each clip is transcribed once per backend and mode (session cache); wall times are listed
in the session summary.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import torch

from max_whisper.audio import load_audio
from max_whisper.config import SHARED_AUDIO_DIR
from max_whisper.decoding import transcribe

pytestmark = pytest.mark.max

#: whisper's fallback schedule (``transcribe``'s default; the CLI's --temperature 0 with increment 0.2).
TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
MODES: dict[str, dict[str, Any]] = {
    "greedy": {"temperature": TEMPERATURES, "beam_size": None, "best_of": 5},
    "beam5": {"temperature": TEMPERATURES, "beam_size": 5, "best_of": 5},
    # what a greedy run falls back to when a window fails a threshold: 5 samples at t > 0
    "sample5": {"temperature": (0.4,), "beam_size": None, "best_of": 5},
}

JFK = SHARED_AUDIO_DIR / "jfk.flac"
LIBRISPEECH = sorted(SHARED_AUDIO_DIR.glob("librispeech_*.flac"))
LONGFORM = SHARED_AUDIO_DIR / "longform_ljspeech_LJ001-0001_to_0032.flac"

GREEDY_CLIPS = (
    [pytest.param(JFK, id=JFK.stem)]
    + [pytest.param(p, id=p.stem) for p in LIBRISPEECH]
    + [pytest.param(LONGFORM, id=LONGFORM.stem, marks=pytest.mark.slow)]
)
BEAM_CLIPS = [pytest.param(JFK, id=JFK.stem)] + [pytest.param(p, id=p.stem) for p in LIBRISPEECH[:2]]


class Transcripts:
    """Each (backend, clip, mode) transcribed once per session."""

    def __init__(self, report: Any) -> None:
        self.report = report
        self.results: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.audio: dict[str, Any] = {}

    def get(self, backend: Any, path: Path, mode: str) -> dict[str, Any]:
        key = (backend.name, str(path), mode)
        if key not in self.results:
            if not path.is_file():
                pytest.skip(f"{path} not available")
            if str(path) not in self.audio:
                self.audio[str(path)] = load_audio(path)
            torch.manual_seed(0)
            start = time.perf_counter()
            self.results[key] = transcribe(backend, self.audio[str(path)], **MODES[mode])
            self.report.record_time(f"{mode:6} {backend.name:3} {path.name}", time.perf_counter() - start)
        return self.results[key]


@pytest.fixture(scope="session")
def transcripts(max_report: Any) -> Transcripts:
    return Transcripts(max_report)


def segment_tokens(result: dict[str, Any]) -> list[list[int]]:
    return [list(segment["tokens"]) for segment in result["segments"]]


def first_difference(ours: dict[str, Any], ref: dict[str, Any]) -> str:
    a, b = ours["segments"], ref["segments"]
    for i, (x, y) in enumerate(zip(a, b, strict=False)):  # the counts are compared after the loop
        if list(x["tokens"]) != list(y["tokens"]):
            return (
                f"segment {i} differs (max t={x['temperature']}, cpu t={y['temperature']}):\n"
                f"  max [{x['start']:.2f}-{x['end']:.2f}] {x['text']!r}\n"
                f"  cpu [{y['start']:.2f}-{y['end']:.2f}] {y['text']!r}"
            )
    return f"segment counts differ: max {len(a)}, cpu {len(b)}"


def test_the_session_backend_reads_float16_panels(max_backend: Any) -> None:
    """The tokens compared in this file come from a decoder whose products read float16 panels (the
    embedded tiny.en is float16-exact) and whose attention runs through the CPU kernels (over the cache
    and over the audio); the float32 products stay covered by test_max_shapes.py's random checkpoints."""
    from max_whisper.backends.whisper_max.weights import TOKEN_EMBEDDING, panels_name

    assert max_backend.plan.panels and panels_name(TOKEN_EMBEDDING) in max_backend.weights.arrays
    decoder = str(max_backend.models.graphs.build("decoder"))
    assert decoder.count("few_query_attention") >= max_backend.dims.n_text_layer
    assert decoder.count("cached_attention") >= max_backend.dims.n_text_layer


@pytest.mark.parametrize("clip", GREEDY_CLIPS)
def test_greedy_token_identical(clip: Path, cpu_backend: Any, max_backend: Any, transcripts: Transcripts) -> None:
    ref = transcripts.get(cpu_backend, clip, "greedy")
    ours = transcripts.get(max_backend, clip, "greedy")
    assert ref["segments"], f"the cpu backend transcribed nothing from {clip.name}"
    assert segment_tokens(ours) == segment_tokens(ref), first_difference(ours, ref)
    assert ours["text"] == ref["text"]


@pytest.mark.parametrize("clip", BEAM_CLIPS)
def test_beam5_same_text(clip: Path, cpu_backend: Any, max_backend: Any, transcripts: Transcripts) -> None:
    ref = transcripts.get(cpu_backend, clip, "beam5")
    ours = transcripts.get(max_backend, clip, "beam5")
    assert ref["text"].strip(), f"the cpu backend transcribed nothing from {clip.name}"
    assert ours["text"] == ref["text"], first_difference(ours, ref)


def test_sampling_best_of5_same_tokens(cpu_backend: Any, max_backend: Any, transcripts: Transcripts) -> None:
    ref = transcripts.get(cpu_backend, JFK, "sample5")
    ours = transcripts.get(max_backend, JFK, "sample5")
    assert segment_tokens(ours) == segment_tokens(ref), first_difference(ours, ref)
    assert ours["text"] == ref["text"]


def test_a_window_decoded_again_is_not_encoded_again(max_backend: Any) -> None:
    """whisper encodes a window again at each fallback temperature: the max backend reuses the
    features of the same log-mel, and encodes any other (even one changed in place)."""
    mel = torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(0))
    runs = max_backend.timer.calls["encode"]
    features = max_backend.encode(mel)
    assert max_backend.encode(mel.clone()) is features  # equal log-mel, another tensor
    assert max_backend.timer.calls["encode"] == runs + 1
    mel[0, 0, 0] += 1.0
    changed = max_backend.encode(mel)
    assert max_backend.timer.calls["encode"] == runs + 2
    assert changed is not features and not torch.equal(changed, features)
