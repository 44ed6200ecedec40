"""``max-whisper transcribe AUDIO...``: the whisper command, on a chosen backend.

The options are checked and the backend created once (a failure there is a usage error: nothing is
transcribed); then each file is loaded, transcribed and written. A file that fails is reported in one
line and the others still run.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time

from ..errors import ExitCode
from . import PROG, print_warning, report, resume_collection
from .args import add_transcribe_arguments, backend_options, check_arguments, transcription_options, writer_options

DESCRIPTION = """\
Transcribe (or translate into English) one or more audio files.

The text of each file is printed on stdout and written to --output-dir as
<audio name>.<format> for the chosen --output-format. WAV, FLAC, OGG and MP3
are read directly; other containers need ffmpeg. Decoding options follow the
`whisper` command (same names, defaults and meanings); whisper's underscore
spellings (--beam_size) are accepted as well as the dashed ones.
"""

EPILOG = f"""\
examples:
  {PROG} transcribe talk.wav                           # tiny.en on the CPU, writes talk.txt/.srt/.vtt/.tsv/.json
  {PROG} transcribe a.flac b.mp3 -f srt -o subs/       # several files, SRT only, into subs/
  {PROG} transcribe talk.wav --backend max --device cpu --beam-size None --temperature-increment-on-fallback None
  {PROG} transcribe talk.wav --model base.en --word-timestamps --max-line-width 42 -f vtt

exit status: 0 all files transcribed; 1 some file failed (each failure is one line
on stderr, the other files still run); 2 usage error, unknown model or backend not
available on this machine; 130 interrupted (no partial output files are left).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.epilog = EPILOG
    add_transcribe_arguments(parser)


def run_from_args(args: argparse.Namespace) -> int:
    """Set up once, then load, transcribe and write each file; the exit status."""
    from ..backends import backend_class, create_backend
    from ..utils.logging import setup_logger

    logger = setup_logger(
        "max_whisper",
        json_output=args.json_log,
        level=logging.DEBUG if args.verbose else (logging.INFO if args.json_log else logging.WARNING),
    )
    # -- everything that can fail before any file is touched: flags, model, backend
    for warning in check_arguments(args):
        print_warning(warning)
    requested = transcription_options(args)
    backend_kwargs = backend_options(args, backend_class(args.backend).capabilities)
    start = time.perf_counter()
    backend = create_backend(args.backend, args.model, **backend_kwargs)
    resume_collection()  # the imports and the model are loaded (see cli.run)
    logger.info(
        "backend ready",
        extra={"backend": args.backend, "model": args.model, "load_seconds": round(time.perf_counter() - start, 3)},
    )
    options = requested.for_backend(backend).whisper_options()
    writing = writer_options(args)

    from ..audio import audio_duration, load_audio
    from ..decoding import transcribe
    from ..writers import write_result

    failures = 0
    for path in args.audio:
        start = time.perf_counter()
        try:
            audio = load_audio(path)
            duration = audio_duration(audio)
            if args.verbose:
                result = transcribe(backend, audio, verbose=True, **options)
            else:
                # whisper prints "Detected language" etc. on stdout: keep stdout for the transcript.
                with contextlib.redirect_stdout(sys.stderr):
                    result = transcribe(backend, audio, verbose=False if duration > 30.0 else None, **options)
            written = write_result(result, path, args.output_format, args.output_dir, writing)
        except (KeyboardInterrupt, SystemExit, BrokenPipeError):
            raise
        except Exception as exc:  # one line per failed file; the other files still run
            failures += 1
            report(exc, verbose=args.verbose, subject=path)
            continue
        if not args.verbose:
            print(result.get("text", "").strip(), flush=True)
        logger.info(
            "transcribed",
            extra={
                "audio": path,
                "audio_seconds": round(duration, 3),
                "seconds": round(time.perf_counter() - start, 3),
                "language": result.get("language"),
                "outputs": [str(p) for p in written],
            },
        )
    return ExitCode.FAILED if failures else ExitCode.OK
