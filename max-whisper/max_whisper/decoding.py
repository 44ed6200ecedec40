"""The one decoding wrapper every backend runs through.

openai-whisper's ``transcribe`` (sliding 30-s windows, timestamp rules,
temperature fallback, thresholds, prompts, word timestamps) and
``DecodingTask`` (greedy / beam search, logit filters) are reused as they are.
The only thing that changes between backends is the model computation:
``DecodingTask`` is given the backend's encoder and its ``Inference`` (decoder
step + KV cache) instead of the PyTorch ones.  A backend whose model step is
fast enough for whisper's per-row host work to matter (``max``) may also ask for
:mod:`max_whisper.token_strategies`: whisper's token decoders and timestamp rules,
batched and sharing one ``log_softmax`` a step, with the same tokens.  A backend
that picks greedy tokens on its own device (``Backend.device_greedy``: ``max`` on
a GPU) is handed whisper's masks of each step (``GreedyMasks``) and returns the
token and its log-probability, so the logits never come back to the host.

Three things are added around whisper's ``transcribe``, none changing a result:

* **bounded memory on long audio**: whisper's ``log_mel_spectrogram`` holds the
  whole STFT of the file at once (about 1.6 GB for an hour of audio).  During
  :func:`transcribe`, ``whisper.transcribe`` computes its log-mel with
  :func:`max_whisper.mel.log_mel_spectrogram` instead: the same features, bit
  for bit, in 5-minute pieces (timed as the backend's ``mel`` stage).
* **checked input**: a waveform with NaN or infinite samples is refused with a
  one-line :class:`~max_whisper.errors.AudioError` before any model runs.
* **determinism**: torch's RNG (used only when a window falls back to sampling
  at a temperature above 0) is seeded for each call (``seed=0`` by default,
  ``seed=None`` keeps the global RNG), inside ``torch.random.fork_rng`` so the
  caller's RNG state is left as it was. The same audio and options therefore
  give the same result on every run.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from typing import Any

import numpy as np
import torch
import whisper
from whisper.decoding import (
    ApplyTimestampRules,
    BeamSearchDecoder,
    DecodingOptions,
    DecodingResult,
    DecodingTask,
    GreedyDecoder,
    Inference,
    SuppressTokens,
)
from whisper.decoding import detect_language as _whisper_detect_language

from .audio import check_waveform
from .backends.base import Backend
from .errors import UsageError
from .mel import log_mel_spectrogram
from .timing import StageTimer
from .token_strategies import (
    BatchedBeamSearchDecoder,
    BatchedGreedyDecoder,
    BatchedTimestampRules,
    GreedyMasks,
    IndexedSuppressTokens,
    StepLogProbs,
)


class TimedInference(Inference):
    """Wraps a backend's ``Inference`` and books its time under the ``decode`` stage."""

    def __init__(self, inner: Inference, timer: StageTimer) -> None:
        self.inner = inner
        self.timer = timer

    def logits(self, tokens: torch.Tensor, audio_features: torch.Tensor) -> torch.Tensor:
        with self.timer.stage("decode"):
            return self.inner.logits(tokens, audio_features)

    def rearrange_kv_cache(self, source_indices) -> None:
        with self.timer.stage("decode"):
            self.inner.rearrange_kv_cache(source_indices)

    def cleanup_caching(self) -> None:
        self.inner.cleanup_caching()

    def choose(self, rows: list[list[int]], masks: GreedyMasks) -> tuple[np.ndarray, np.ndarray]:
        with self.timer.stage("decode"):
            return self.inner.choose(rows, masks)


class _NoTorchDecoder:
    """Stands in for ``Whisper.decoder`` on backends without PyTorch modules.

    ``DecodingTask.__init__`` builds a ``PyTorchInference`` over
    ``model.decoder.blocks`` before :class:`BackendDecodingTask` replaces it;
    an empty block list makes that constructor a no-op.
    """

    blocks: tuple = ()


class ModelAdapter:
    """Presents a :class:`Backend` as the ``Whisper`` model that whisper's code expects.

    It has the attributes ``whisper.transcribe`` and ``whisper.decoding`` read
    (``dims``, ``device``, ``is_multilingual``, ``num_languages``,
    ``encoder``, ``logits``, ``decode``, ``detect_language``) and routes them to
    the backend.
    """

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.dims = backend.dims
        self.device = backend.device
        self.alignment_heads = backend.alignment_heads
        # backends that declare word timestamps run whisper's own torch modules (``torch_model``)
        self._torch_model = backend.torch_model if backend.capabilities.word_timestamps else None
        self.decoder = self._torch_model.decoder if self._torch_model is not None else _NoTorchDecoder()

    @property
    def is_multilingual(self) -> bool:
        return self.backend.is_multilingual

    @property
    def num_languages(self) -> int:
        return self.backend.num_languages

    def encoder(self, mel: torch.Tensor) -> torch.Tensor:
        return self.backend.encode(mel)

    def logits(self, tokens: torch.Tensor, audio_features: torch.Tensor) -> torch.Tensor:
        """One uncached decoder pass (whisper's ``detect_language`` uses this)."""
        inference = self.backend.inference(tokens.shape[-1])
        try:
            return inference.logits(tokens, audio_features)
        finally:
            inference.cleanup_caching()

    def __call__(self, mel: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Full forward pass; whisper's word-timestamp alignment hooks into it."""
        if self._torch_model is None:
            raise UsageError(f"word timestamps are not supported by the {self.backend.name} backend")
        return self._torch_model(mel, tokens)

    detect_language = _whisper_detect_language

    @torch.no_grad()
    def decode(
        self, mel: torch.Tensor, options: DecodingOptions | None = None, **kwargs: Any
    ) -> DecodingResult | list[DecodingResult]:
        """``whisper.decoding.decode`` with the backend's model computation."""
        options = options or DecodingOptions()
        if single := mel.ndim == 2:
            mel = mel.unsqueeze(0)
        if kwargs:
            options = replace(options, **kwargs)
        result = BackendDecodingTask(self, options).run(mel)
        return result[0] if single else result


class BackendDecodingTask(DecodingTask):
    """openai-whisper's ``DecodingTask`` with the backend's ``Inference`` (and, where the backend
    asks for them, the batched twins of whisper's beam search and timestamp rules)."""

    def __init__(self, model: ModelAdapter, options: DecodingOptions) -> None:
        super().__init__(model, options)
        backend = model.backend
        self.inference = TimedInference(backend.inference(len(self.initial_tokens)), backend.timer)
        if backend.batched_token_logic:
            log_probs = StepLogProbs()  # one log_softmax a step, shared by the timestamp rules and the decoder
            if type(self.decoder) is BeamSearchDecoder:
                beams = self.decoder
                self.decoder = BatchedBeamSearchDecoder(
                    beams.beam_size, beams.eot, beams.inference, beams.patience, log_probs
                )
            elif type(self.decoder) is GreedyDecoder:
                self.decoder = BatchedGreedyDecoder(self.decoder.temperature, self.decoder.eot, log_probs)
            self.logit_filters = [_batched_filter(f, log_probs) for f in self.logit_filters]
        if isinstance(self.decoder, BeamSearchDecoder):  # whisper's or the batched one: it reorders our cache
            self.decoder.inference = self.inference
        self.greedy_masks: GreedyMasks | None = None  # set where the backend picks greedy tokens itself
        if backend.device_greedy:
            n_vocab = backend.dims.n_vocab
            self.greedy_masks = GreedyMasks.of(self.decoder, self.logit_filters, n_vocab, self.sample_begin)

    def _main_loop(self, audio_features: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list]:
        """whisper's loop; where the backend picks greedy tokens on its device, :meth:`_device_greedy_loop`."""
        if self.greedy_masks is None:
            return super()._main_loop(audio_features, tokens)
        return self._device_greedy_loop(audio_features, tokens, self.greedy_masks)

    def _device_greedy_loop(
        self, audio_features: torch.Tensor, tokens: torch.Tensor, masks: GreedyMasks
    ) -> tuple[torch.Tensor, torch.Tensor, list]:
        """whisper's ``_main_loop`` for greedy decoding at temperature 0, with every token after the first
        picked by the backend's ``Inference.choose``: the first comes from the prompt's logits through
        whisper's filters and decoder, as in whisper; then per step the host works out the masks of the
        history (:class:`GreedyMasks`) and gets back a token and its log-probability a row."""
        eot = self.tokenizer.eot
        sum_logprobs = torch.zeros(tokens.shape[0], device=audio_features.device)
        no_speech_probs = [np.nan] * tokens.shape[0]
        try:
            logits = self.inference.logits(tokens, audio_features)
            if self.tokenizer.no_speech is not None:  # save no_speech_probs
                probs_at_sot = logits[:, self.sot_index].float().softmax(dim=-1)
                no_speech_probs = probs_at_sot[:, self.tokenizer.no_speech].tolist()
            logits = logits[:, -1]
            for logit_filter in self.logit_filters:
                logit_filter.apply(logits, tokens)
            tokens, completed = self.decoder.update(tokens, logits, sum_logprobs)

            rows = tokens.tolist()
            for _ in range(1, self.sample_len):
                if completed or len(rows[0]) > self.n_ctx:
                    break
                newest = np.array([row[-1:] for row in rows], dtype=np.int64)
                next_tokens, logprobs = self.inference.choose(rows, masks)
                # GreedyDecoder.update: a finished row adds nothing and repeats the end of text
                finished = newest[:, 0] == eot
                sum_logprobs += torch.from_numpy(logprobs) * torch.from_numpy(~finished)
                next_tokens[finished] = eot
                for row, token in zip(rows, next_tokens.tolist(), strict=True):
                    row.append(token)
                completed = bool((next_tokens == eot).all())
            tokens = torch.tensor(rows, dtype=tokens.dtype, device=tokens.device)
        finally:
            self.inference.cleanup_caching()
        return tokens, sum_logprobs, no_speech_probs


def _batched_filter(logit_filter: Any, log_probs: StepLogProbs) -> Any:
    """Our twin of one of whisper's logit filters, which masks the same logits with fewer torch operations
    (``token_strategies``); the filter itself where there is none."""
    if type(logit_filter) is ApplyTimestampRules:
        f = logit_filter
        return BatchedTimestampRules(f.tokenizer, f.sample_begin, f.max_initial_timestamp_index, log_probs)
    if type(logit_filter) is SuppressTokens:
        return IndexedSuppressTokens(logit_filter.suppress_tokens)
    return logit_filter


@contextmanager
def _whisper_uses(mel_function: Any, backend: Backend) -> Iterator[None]:
    """Within the block, ``whisper.transcribe`` computes its log-mel with ``mel_function``, timed as ``mel``,
    on the backend's ``mel_torch_threads`` (by default the caller's; the token logic may run on fewer:
    ``host_torch_threads``)."""
    module = importlib.import_module("whisper.transcribe")
    original = module.log_mel_spectrogram
    threads = backend.mel_torch_threads or torch.get_num_threads()

    def timed(*args: Any, **kwargs: Any) -> torch.Tensor:
        with backend.timer.stage("mel"), _torch_threads(threads):
            return mel_function(*args, **kwargs)

    module.log_mel_spectrogram = timed
    try:
        yield
    finally:
        module.log_mel_spectrogram = original


@contextmanager
def _torch_threads(count: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to ``count`` within the block (unchanged when None)."""
    if count is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def transcribe(backend: Backend, audio: np.ndarray | torch.Tensor, **options: Any) -> dict[str, Any]:
    """Transcribe 16-kHz mono float32 ``audio`` with ``backend``.

    ``options`` are those of ``whisper.transcribe`` (``temperature``,
    ``initial_prompt``, ``word_timestamps``, ``verbose`` ...) and of
    ``DecodingOptions`` (``language``, ``task``, ``beam_size`` ...), plus
    ``seed`` (default 0): torch's RNG is seeded with it for this call, so a
    fallback to sampling draws the same numbers every run (``None``: use the
    global RNG as it is).  Returns whisper's result dict: ``text``,
    ``segments``, ``language``.
    """
    seed = options.pop("seed", 0)
    options.setdefault("fp16", backend.fp16)
    if options.get("word_timestamps") and not backend.capabilities.word_timestamps:
        raise UsageError(f"--word-timestamps is not supported by the {backend.name} backend")
    if isinstance(audio, np.ndarray):
        audio = np.ascontiguousarray(audio, dtype=np.float32)
        check_waveform(audio)
    elif torch.is_tensor(audio):
        check_waveform(audio.detach().cpu().numpy())
    devices: list[int] = []
    if backend.device.type == "cuda":
        devices = [backend.device.index if backend.device.index is not None else torch.cuda.current_device()]
    with ExitStack() as stack:
        stack.enter_context(backend.timer.stage("transcribe"))
        stack.enter_context(torch.random.fork_rng(devices=devices, enabled=seed is not None))
        stack.enter_context(_whisper_uses(log_mel_spectrogram, backend))
        stack.enter_context(_torch_threads(backend.host_torch_threads))
        if seed is not None:
            torch.manual_seed(seed)
        return whisper.transcribe(ModelAdapter(backend), audio, **options)
