"""The Python API (``import max_whisper as mw``): the README's example, run as written, and each function."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import max_whisper as mw
from conftest import shared_clip

PROJECT_ROOT = Path(__file__).resolve().parents[1]
JFK_WORDS = "ask not what your country can do for you"


def normalize(text: str) -> str:
    return " ".join(re.sub(r"[^a-z' ]+", " ", text.lower()).split())


def readme_example() -> str:
    """The one ``python`` code block of README.md's "Python API" section."""
    readme = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    section = re.search(r"^## Python API\n(.*?)(?=^## )", readme, re.S | re.M)
    assert section, "README.md has no '## Python API' section"
    blocks = re.findall(r"^```python\n(.*?)^```", section.group(1), re.S | re.M)
    assert len(blocks) == 1, blocks
    return blocks[0]


@pytest.fixture(scope="module")
def model_env(checkpoint_path: Path) -> dict[str, str]:
    """A subprocess environment using the session's converted tiny.en."""
    from max_whisper.models import MODEL_DIR_ENV

    return dict(os.environ, **{MODEL_DIR_ENV: str(checkpoint_path.parent)})


def test_readme_example_runs(model_env: dict[str, str], tmp_path: Path) -> None:
    """The README's example as written, from the project root, on the first 12 s of its demo clip (the same
    code, a fifth of the audio): the backends, then the text and the segments."""
    import soundfile as sf

    code = readme_example()
    assert "import max_whisper as mw" in code and '"audio_samples/demo.wav"' in code
    excerpt = tmp_path / "demo-excerpt.wav"
    samples, rate = sf.read(PROJECT_ROOT / "audio_samples" / "demo.wav", dtype="int16")
    sf.write(excerpt, samples[: 12 * rate], rate, subtype="PCM_16")
    code = code.replace('"audio_samples/demo.wav"', repr(str(excerpt)))
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, env=model_env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert "'cpu'" in lines[0]
    assert "single man in possession of a good fortune" in normalize(lines[1]), lines[1]
    segments = lines[2:]
    assert len(segments) >= 2
    assert all(re.match(r"^\s*\d+\.\d\d\s+\d+\.\d\d ", line) for line in segments), segments


def test_import_is_light() -> None:
    code = (
        "import sys, max_whisper as mw\n"
        "assert isinstance(mw.__version__, str) and mw.__version__\n"
        "heavy = [m for m in ('torch', 'whisper', 'numpy', 'max') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_available_backends() -> None:
    import torch

    names = mw.available_backends()
    assert names[0] == "cpu"
    assert ("gpu" in names) == torch.cuda.is_available()
    assert set(names) <= {"cpu", "gpu", "max"}


@pytest.fixture(scope="module")
def cpu(cpu_backend: Any) -> Any:
    return cpu_backend


def test_transcribe_a_path_and_an_array_alike(cpu: Any) -> None:
    path = shared_clip("jfk.flac")
    from_path = mw.transcribe(path, backend=cpu, beam_size=None)
    from_array = mw.transcribe(mw.load_audio(path), backend=cpu, beam_size=None)
    assert JFK_WORDS in normalize(from_path["text"])
    assert from_path == from_array
    assert from_path["language"] == "en" and from_path["segments"]


def test_options_object_and_keywords_agree(cpu: Any) -> None:
    audio = mw.load_audio(shared_clip("jfk.flac"))[: 16000 * 4]
    options = mw.TranscriptionOptions(beam_size=None, temperature=0.0)
    assert mw.transcribe(audio, backend=cpu, options=options) == mw.transcribe(
        audio, backend=cpu, beam_size=None, temperature=0.0
    )


def test_unknown_option_is_a_type_error(cpu: Any) -> None:
    with pytest.raises(TypeError, match="no_such_option"):
        mw.transcribe(np.zeros(16000, np.float32), backend=cpu, no_such_option=1)


def test_bad_inputs_are_one_line_errors(cpu: Any, tmp_path: Path) -> None:
    with pytest.raises(mw.AudioError, match="no such file"):
        mw.transcribe(tmp_path / "missing.wav", backend=cpu)
    samples = np.random.default_rng(6).standard_normal(16000).astype(np.float32)
    samples[100] = np.nan
    with pytest.raises(mw.AudioError, match="1 of 16000 samples are NaN or infinite"):
        mw.transcribe(samples, backend=cpu)
    with pytest.raises(mw.ModelError, match="unknown model 'no-such-model'"):
        mw.load_backend("cpu", model="no-such-model")
    with pytest.raises(mw.UsageError, match="unknown backend 'tpu'"):
        mw.load_backend("tpu")


def test_options_for_a_backend() -> None:
    """English-only models get English (with a warning); word timestamps need a backend that declares them."""
    from max_whisper.backends.base import Capabilities

    class EnglishOnly:
        name = "fake"
        model_name = "tiny.en"
        is_multilingual = False
        capabilities = Capabilities(word_timestamps=False)

    with pytest.warns(UserWarning, match="English-only model but received 'fr'; using English"):
        assert mw.TranscriptionOptions(language="fr").for_backend(EnglishOnly()).language == "en"
    with pytest.raises(mw.UsageError, match="word-timestamps is not supported by the fake backend"):
        mw.TranscriptionOptions(word_timestamps=True).for_backend(EnglishOnly())


@pytest.mark.max
def test_transcribe_on_max(max_backend: Any) -> None:
    """``mw.transcribe(jfk, backend=...)`` on the max backend (the session's, compiled once) gives the JFK
    sentence."""
    path = shared_clip("jfk.flac")
    result = mw.transcribe(path, backend=max_backend)
    assert JFK_WORDS in normalize(result["text"])
