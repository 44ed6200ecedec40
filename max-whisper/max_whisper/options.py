"""The options of one transcription, as a documented dataclass shared by the Python API and the CLI.

This module imports neither torch nor whisper at import time, so the command line can take its
defaults from here and still print ``--help`` at once.
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from .errors import UsageError

if TYPE_CHECKING:
    from .backends.base import Backend

#: whisper's fallback schedule as its command line builds it: ``np.arange(0.0, 1.0 + 1e-6, 0.2)``.
DEFAULT_TEMPERATURES = (0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0)


@dataclass(frozen=True)
class TranscriptionOptions:
    """How a file is transcribed: the ``whisper`` command's options, with its defaults.

    The defaults are those of ``whisper AUDIO`` (beam search of 5, temperature fallback), so the Python
    API and ``max-whisper transcribe`` give the same text for the same audio. Each field means what the
    whisper option of the same name means (``whisper --help``); ``seed`` seeds torch's RNG for each file
    (the sampling fallback then draws the same numbers every run; ``None`` leaves the global RNG).
    """

    task: str = "transcribe"  #: "transcribe", or "translate" into English (multilingual models)
    language: str | None = None  #: language code such as "en"; None detects it
    temperature: float | tuple[float, ...] = DEFAULT_TEMPERATURES  #: one, or the fallback schedule
    best_of: int | None = 5  #: candidates when sampling at a temperature above 0
    beam_size: int | None = 5  #: beams at temperature 0; None decodes greedily
    patience: float | None = None  #: beam search patience (None: 1.0)
    length_penalty: float | None = None  #: alpha of the length penalty (None: length normalization)
    suppress_tokens: str = "-1"  #: comma-separated token ids; "-1" = most special characters
    initial_prompt: str | None = None  #: text given as the prompt of the first window
    carry_initial_prompt: bool = False  #: prepend ``initial_prompt`` to every window's prompt
    condition_on_previous_text: bool = True  #: the previous window's text prompts the next
    compression_ratio_threshold: float | None = 2.4  #: above it a decoding counts as failed
    logprob_threshold: float | None = -1.0  #: below it a decoding counts as failed
    no_speech_threshold: float | None = 0.6  #: with a failed logprob, above it a window is silence
    word_timestamps: bool = False  #: word-level times (backends whose capabilities allow it)
    prepend_punctuations: str = "\"'\u201c\u00bf([{-"  #: merged with the next word
    append_punctuations: str = "\"'.\u3002,\uff0c!\uff01?\uff1f:\uff1a\u201d)]}\u3001"  #: merged with the previous word
    clip_timestamps: str = "0"  #: "start,end,start,end,..." seconds to transcribe
    hallucination_silence_threshold: float | None = None  #: with word timestamps, skip silences this long
    seed: int | None = 0  #: torch's RNG seed for each file

    def for_backend(self, backend: Backend) -> TranscriptionOptions:
        """These options as ``backend``'s model can use them (English-only models get English).

        What is changed is reported with :func:`warnings.warn`; options the backend cannot honour
        raise :class:`~max_whisper.errors.UsageError`.
        """
        if self.word_timestamps and not backend.capabilities.word_timestamps:
            raise UsageError(f"--word-timestamps is not supported by the {backend.name} backend")
        if backend.is_multilingual:
            return self
        if self.language not in (None, "en"):
            warnings.warn(
                f"{backend.model_name} is an English-only model but received '{self.language}'; using English instead",
                stacklevel=2,
            )
        if self.task == "translate":
            warnings.warn(
                f"{backend.model_name} is an English-only model; --task translate has no effect", stacklevel=2
            )
        return replace(self, language="en")

    def whisper_options(self) -> dict[str, Any]:
        """Keyword arguments for :func:`transcribe`: the fields this openai-whisper version knows.

        A field it does not know (``carry_initial_prompt`` is recent) is dropped, with a warning when
        it was set.
        """
        import whisper
        from whisper.decoding import DecodingOptions

        options = asdict(self)
        known = set(inspect.signature(whisper.transcribe).parameters) | set(DecodingOptions.__dataclass_fields__)
        known.add("seed")
        dropped = [k for k, v in options.items() if k not in known and v not in (None, False)]
        if dropped:
            names = ", ".join("--" + k.replace("_", "-") for k in dropped)
            warnings.warn(f"this openai-whisper version ignores {names}", stacklevel=2)
        return {k: v for k, v in options.items() if k in known}
