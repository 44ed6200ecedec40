"""max_whisper.writers: whisper's output formats, written atomically."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import whisper.utils

from max_whisper.errors import MaxWhisperError
from max_whisper.writers import output_paths, write_result

RESULT = {
    "text": " Hello world. Second line, with a tab\there.",
    "segments": [
        {"id": 0, "start": 0.0, "end": 1.5, "text": " Hello world."},
        {"id": 1, "start": 1.5, "end": 3.25, "text": " Second line, with a tab\there."},
    ],
    "language": "en",
}

EXPECTED = {
    "txt": "Hello world.\nSecond line, with a tab\there.\n",
    "srt": (
        "1\n00:00:00,000 --> 00:00:01,500\nHello world.\n\n"
        "2\n00:00:01,500 --> 00:00:03,250\nSecond line, with a tab\there.\n\n"
    ),
    "vtt": (
        "WEBVTT\n\n00:00.000 --> 00:01.500\nHello world.\n\n00:01.500 --> 00:03.250\nSecond line, with a tab\there.\n\n"
    ),
    "tsv": "start\tend\ttext\n0\t1500\tHello world.\n1500\t3250\tSecond line, with a tab here.\n",
}

ALL = ("txt", "vtt", "srt", "tsv", "json")


def leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.startswith(".max-whisper-")]


@pytest.mark.parametrize("fmt", ["txt", "srt", "vtt", "tsv", "json"])
def test_each_format(tmp_path, fmt):
    out = tmp_path / "out"
    paths = write_result(RESULT, "/somewhere/else/my clip.flac", fmt, out)
    assert paths == [out / f"my clip.{fmt}"]
    assert sorted(p.name for p in out.iterdir()) == [f"my clip.{fmt}"]
    text = paths[0].read_text(encoding="utf-8")
    if fmt == "json":
        assert json.loads(text) == RESULT
    else:
        assert text == EXPECTED[fmt]


def test_all(tmp_path):
    paths = write_result(RESULT, Path("clip.wav"), "all", tmp_path)
    assert paths == [tmp_path / f"clip.{ext}" for ext in ALL]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"clip.{ext}" for ext in ALL)
    for path in paths:
        ext = path.suffix[1:]
        content = path.read_text(encoding="utf-8")
        assert json.loads(content) == RESULT if ext == "json" else content == EXPECTED[ext]
    assert leftovers(tmp_path) == []


def test_matches_whisper_writer_byte_for_byte(tmp_path):
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    theirs.mkdir()
    write_result(RESULT, "a.mp3", "all", ours)
    whisper.utils.get_writer("all", str(theirs))(
        RESULT, "a.mp3", highlight_words=False, max_line_width=None, max_line_count=None, max_words_per_line=None
    )
    for ext in ALL:
        assert (ours / f"a.{ext}").read_bytes() == (theirs / f"a.{ext}").read_bytes()


def test_creates_output_dir_and_overwrites(tmp_path):
    out = tmp_path / "a" / "b" / "c"
    (path,) = write_result(RESULT, "clip.wav", "txt", out)
    assert path.read_text() == EXPECTED["txt"]
    second = dict(RESULT, segments=[{"id": 0, "start": 0.0, "end": 1.0, "text": " Replaced."}])
    write_result(second, "clip.wav", "txt", out)
    assert path.read_text() == "Replaced.\n"
    assert leftovers(out) == []


def test_unicode_text(tmp_path):
    result = {"text": " Café – naïve 日本語", "segments": [{"start": 0.0, "end": 2.0, "text": " Café – naïve 日本語"}]}
    (path,) = write_result(result, "u.wav", "srt", tmp_path)
    assert "Café – naïve 日本語" in path.read_text(encoding="utf-8")


WORD_RESULT = {
    "text": " one two three four",
    "segments": [
        {
            "start": 0.0,
            "end": 2.0,
            "text": " one two three four",
            "words": [
                {"word": " one", "start": 0.0, "end": 0.5},
                {"word": " two", "start": 0.5, "end": 1.0},
                {"word": " three", "start": 1.0, "end": 1.5},
                {"word": " four", "start": 1.5, "end": 2.0},
            ],
        }
    ],
}


def test_writer_options_default_like_whisper_cli(tmp_path):
    (path,) = write_result(WORD_RESULT, "w.wav", "srt", tmp_path)
    assert path.read_text() == "1\n00:00:00,000 --> 00:00:02,000\none two three four\n\n"


def test_writer_options_max_words_per_line(tmp_path):
    (path,) = write_result(WORD_RESULT, "w.wav", "srt", tmp_path, {"max_words_per_line": 2})
    assert path.read_text() == (
        "1\n00:00:00,000 --> 00:00:01,000\none two\n\n2\n00:00:01,000 --> 00:00:02,000\nthree four\n\n"
    )


def test_writer_options_highlight_words(tmp_path):
    (path,) = write_result(WORD_RESULT, "w.wav", "vtt", tmp_path, {"highlight_words": True})
    text = path.read_text()
    assert "<u>one</u> two three four" in text
    assert "one two three <u>four</u>" in text


def test_unknown_format_and_option(tmp_path):
    with pytest.raises(MaxWhisperError, match="unknown output format"):
        write_result(RESULT, "a.wav", "docx", tmp_path)
    with pytest.raises(MaxWhisperError, match="unknown writer option"):
        write_result(RESULT, "a.wav", "txt", tmp_path, {"highlight": True})
    assert list(tmp_path.iterdir()) == []


def test_output_dir_is_a_file(tmp_path):
    blocker = tmp_path / "out"
    blocker.write_text("x")
    with pytest.raises(MaxWhisperError) as exc_info:
        write_result(RESULT, "a.wav", "txt", blocker)
    assert "\n" not in str(exc_info.value)


def test_output_paths():
    assert output_paths("x/y/talk.final.m4a", "all", "o") == [Path("o") / f"talk.final.{e}" for e in ALL]


def _fail_midway(exc: BaseException):
    def write_result(self, result, file, options=None, **kwargs):
        file.write("partial output that must never be seen\n")
        file.flush()
        raise exc

    return write_result


@pytest.mark.parametrize("exc", [RuntimeError("disk on fire"), KeyboardInterrupt()])
@pytest.mark.parametrize(("fmt", "failing"), [("srt", "WriteSRT"), ("all", "WriteJSON"), ("all", "WriteVTT")])
def test_failure_midway_leaves_nothing(tmp_path, monkeypatch, exc, fmt, failing):
    monkeypatch.setattr(getattr(whisper.utils, failing), "write_result", _fail_midway(exc))
    out = tmp_path / "out"
    out.mkdir()
    (out / "clip.txt").write_text("previous run\n")
    with pytest.raises(type(exc)):
        write_result(RESULT, "clip.wav", fmt, out)
    # the earlier file is untouched, no new (or half-written) file appeared, no temp dir is left
    assert sorted(p.name for p in out.iterdir()) == ["clip.txt"]
    assert (out / "clip.txt").read_text() == "previous run\n"


def test_failure_in_fresh_dir_leaves_empty_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(whisper.utils.WriteTXT, "write_result", _fail_midway(OSError(28, "No space left on device")))
    out = tmp_path / "new"
    with pytest.raises(MaxWhisperError, match="No space left on device"):
        write_result(RESULT, "clip.wav", "txt", out)
    assert list(out.iterdir()) == []
