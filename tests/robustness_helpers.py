"""Helpers for ``test_robustness.py``: text checks, measured subprocesses, the long-audio builder.

Kept out of the test module so that the test file reads as the list of robustness cases.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from max_whisper.bench.metrics import normalize
from max_whisper.config import SHARED_AUDIO_DIR

SAMPLE_RATE = 16000
JFK = SHARED_AUDIO_DIR / "jfk.flac"
MANIFEST = SHARED_AUDIO_DIR / "manifest.tsv"
LONGFORM = SHARED_AUDIO_DIR / "longform_ljspeech_LJ001-0001_to_0032.flac"
JFK_TEXT = (
    "And so, my fellow Americans, ask not what your country can do for you, ask what you can do for your country."
)

#: The CLI's decoding defaults (whisper's CLI: beam search 5, temperature 0 with fallback steps of 0.2, the
#: compression-ratio, log-prob and no-speech thresholds), as ``max_whisper.decoding.transcribe`` options.
CLI_DEFAULTS: dict[str, Any] = {
    "language": "en",
    "temperature": (0.0, 0.2, 0.4, 0.6, 0.8, 1.0),
    "beam_size": 5,
    "best_of": 5,
    "compression_ratio_threshold": 2.4,
    "logprob_threshold": -1.0,
    "no_speech_threshold": 0.6,
    "condition_on_previous_text": True,
    "verbose": None,
}

#: CLI flags for greedy decoding at temperature 0 without fallback (fast, deterministic by construction).
GREEDY_FLAGS = ["--beam-size", "None", "--temperature-increment-on-fallback", "None"]


# --------------------------------------------------------------------------- text


def words(text: str) -> list[str]:
    """openai-whisper's English normalization, split into words (punctuation-only text has none)."""
    return normalize(text).split()


def most_repeated_ngram(tokens: Sequence[str], max_n: int = 4) -> tuple[tuple[str, ...], int]:
    """The n-gram (n <= max_n) that occurs most often in ``tokens`` and its count (longest wins ties)."""
    best: tuple[tuple[str, ...], int] = ((), 0)
    for n in range(1, max_n + 1):
        counts = Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
        for gram, count in counts.items():
            if count >= best[1]:
                best = (gram, count)
    return best


def assert_near_empty(result: Mapping[str, Any], max_words: int = 3) -> None:
    """Silence / noise: at most ``max_words`` words and no phrase said 3 times or more (no loop)."""
    text = result["text"]
    tokens = words(text)
    assert len(tokens) <= max_words, f"expected (near-)empty text, got {len(tokens)} words: {text!r}"
    gram, count = most_repeated_ngram(tokens)
    assert count < 3, f"phrase {' '.join(gram)!r} repeated {count} times: {text!r}"
    segment_texts = [words(s["text"]) for s in result.get("segments", [])]
    repeated = Counter(tuple(t) for t in segment_texts if t).most_common(1)
    assert not repeated or repeated[0][1] < 3, f"segment {repeated[0][0]} repeated: {text!r}"


def fraction_of_words_found(reference: str, hypothesis: str) -> float:
    """Share of the reference's normalized words that the hypothesis has, aligned in order (jiwer)."""
    import jiwer

    ref = " ".join(words(reference))
    hyp = " ".join(words(hypothesis)) or "<empty>"
    out = jiwer.process_words(ref, hyp)
    return out.hits / max(1, len(ref.split()))


# --------------------------------------------------------------------------- subprocesses


def python_cli(*args: Any) -> list[str]:
    """``python -m max_whisper ARGS`` with this interpreter."""
    return [sys.executable, "-m", "max_whisper", *(str(a) for a in args)]


def error_lines(stderr: str) -> list[str]:
    """Non-blank lines of stderr, without tqdm's progress bar refreshes (they end with \\r)."""
    lines = []
    for raw in stderr.splitlines():
        line = raw.rsplit("\r", 1)[-1].strip()
        if line and not ("%|" in line and "frames" in line):
            lines.append(line)
    return lines


@dataclass
class Measured:
    """A finished subprocess: exit status, output and resource use of that process alone."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float
    max_rss_bytes: int
    timed_out: bool = False


#: Runs argv[2:] as its child and writes that child's peak RSS (KiB) to argv[1]. A process forked from
#: the (large) pytest process starts with pytest's resident pages as its high-water mark, and ru_maxrss
#: survives exec; forked from this small launcher instead, the measured program's peak is its own.
_LAUNCHER = (
    "import resource, subprocess, sys\n"
    "code = subprocess.call(sys.argv[2:])\n"
    "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))\n"
    "sys.exit(code)\n"
)


def run_measured(cmd: Sequence[str], tmp_dir: Path, timeout: float, env: Mapping[str, str] | None = None) -> Measured:
    """Run ``cmd`` with stdout/stderr in files and measure its own peak RSS (through a small launcher)."""
    tmp_dir.mkdir(parents=True, exist_ok=True)
    out_path, err_path, rss_path = tmp_dir / "stdout.txt", tmp_dir / "stderr.txt", tmp_dir / "maxrss.txt"
    timed_out = threading.Event()
    start = time.monotonic()
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", _LAUNCHER, str(rss_path), *cmd],
            stdout=out,
            stderr=err,
            env=None if env is None else dict(env),
            start_new_session=True,
        )

        def kill() -> None:
            timed_out.set()
            os.killpg(proc.pid, signal.SIGKILL)

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            proc.wait()
        finally:
            timer.cancel()
    max_rss_kib = int(rss_path.read_text()) if rss_path.is_file() else 0
    return Measured(
        returncode=proc.returncode,
        stdout=out_path.read_text(errors="replace"),
        stderr=err_path.read_text(errors="replace"),
        seconds=time.monotonic() - start,
        max_rss_bytes=max_rss_kib * 1024,  # Linux: KiB
        timed_out=timed_out.is_set(),
    )


class StreamWatcher:
    """Collects a running process's stdout and stderr in threads, so a test can wait for some text."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.chunks: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._pump, args=(name, getattr(proc, name)), daemon=True)
            for name in ("stdout", "stderr")
        ]
        for t in self._threads:
            t.start()

    def _pump(self, name: str, stream: Any) -> None:
        while True:
            data = stream.read1(4096) if hasattr(stream, "read1") else stream.read(1)
            if not data:
                return
            with self._lock:
                self.chunks[name].append(data.decode("utf-8", "replace"))

    def text(self, name: str) -> str:
        with self._lock:
            return "".join(self.chunks[name])

    def wait_for(self, predicate: Callable[[StreamWatcher], bool], timeout: float) -> bool:
        """Poll until ``predicate(self)`` or the process ends or ``timeout`` passes; True when it held."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self):
                return True
            if self.proc.poll() is not None:
                return predicate(self)
            time.sleep(0.05)
        return False

    def finish(self, timeout: float) -> tuple[int, str, str]:
        rc = self.proc.wait(timeout=timeout)
        for t in self._threads:
            t.join(10)
        return rc, self.text("stdout"), self.text("stderr")


def interrupt(proc: subprocess.Popen) -> None:
    """Ctrl-C: SIGINT to the process."""
    proc.send_signal(signal.SIGINT)


# --------------------------------------------------------------------------- long audio


def lj_clips() -> list[tuple[Path, str]]:
    """The 32 LJ Speech clips in order, with their reference sentences (from the shared manifest)."""
    from conftest import shared_clip

    clips = []
    with open(shared_clip(MANIFEST.name), encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            if row["file"].startswith("ljspeech_LJ001-"):
                clips.append((SHARED_AUDIO_DIR / row["file"], row["reference_transcript"]))
    return sorted(clips)


@dataclass
class LongAudio:
    """A long file made of LJ clips with short gaps, and the sentence of each clip in order."""

    path: Path
    seconds: float
    sentences: list[str] = field(default_factory=list)


def build_long_audio(path: Path, target_seconds: float, gaps: Sequence[float] = (0.3, 0.6, 1.0, 0.45)) -> LongAudio:
    """Concatenate the LJ clips (repeating the list) with ``gaps`` of silence between them, stopping
    before ``target_seconds`` would be exceeded; written as 16-bit PCM WAV, clip by clip (low memory)."""
    import soundfile as sf

    clips = [(sf.read(p, dtype="int16")[0], text) for p, text in lj_clips()]
    assert clips, f"no LJ Speech clips in {MANIFEST}"
    long_audio = LongAudio(path=path, seconds=0.0)
    total = 0
    limit = int(target_seconds * SAMPLE_RATE)
    with sf.SoundFile(path, "w", samplerate=SAMPLE_RATE, channels=1, subtype="PCM_16", format="WAV") as out:
        i = 0
        while True:
            samples, text = clips[i % len(clips)]
            gap = np.zeros(int(gaps[i % len(gaps)] * SAMPLE_RATE), dtype=np.int16)
            if total + len(samples) + len(gap) > limit:
                break
            out.write(samples)
            out.write(gap)
            total += len(samples) + len(gap)
            long_audio.sentences.append(text)
            i += 1
    long_audio.seconds = total / SAMPLE_RATE
    return long_audio


@dataclass
class SentenceMatch:
    found: list[bool]
    share: list[float]

    @property
    def found_fraction(self) -> float:
        return sum(self.found) / max(1, len(self.found))

    @property
    def longest_missing_run(self) -> int:
        run = longest = 0
        for ok in self.found:
            run = 0 if ok else run + 1
            longest = max(longest, run)
        return longest


def match_sentences_in_order(sentences: Sequence[str], transcript: str, min_share: float = 0.8) -> SentenceMatch:
    """Align all reference words with the transcript (one monotonic Levenshtein alignment, so the
    order is checked) and call a sentence found when ``min_share`` of its words align as hits."""
    import jiwer

    ref_words: list[str] = []
    spans = []
    for sentence in sentences:
        w = words(sentence)
        spans.append((len(ref_words), len(ref_words) + len(w)))
        ref_words.extend(w)
    hyp = " ".join(words(transcript)) or "<empty>"
    alignment = jiwer.process_words(" ".join(ref_words), hyp).alignments[0]
    hit = np.zeros(len(ref_words), dtype=bool)
    for chunk in alignment:
        if chunk.type == "equal":
            hit[chunk.ref_start_idx : chunk.ref_end_idx] = True
    share = [float(hit[a:b].mean()) if b > a else 1.0 for a, b in spans]
    return SentenceMatch(found=[s >= min_share for s in share], share=share)
