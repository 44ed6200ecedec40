"""The ``max-whisper`` command line: parse, dispatch, and turn every exception into one line and an exit code.

Each subcommand lives in its own module, listed in :data:`COMMANDS` and imported only when that
subcommand runs (``max-whisper --help`` imports none of them, nor torch). A subcommand module
exposes ``add_arguments(parser)`` and ``run_from_args(args) -> int`` (an
:class:`~max_whisper.errors.ExitCode`).

This module is the one place where exceptions become exit codes (:func:`main`), where the console
script sets up the garbage collector for a one-shot process (:func:`run`), and where messages are
printed (:func:`print_error`, :func:`print_warning`, :func:`report`): ``max-whisper: error: <one line>``
for anything the user can fix (a :class:`~max_whisper.errors.MaxWhisperError`, exit code from the
error), ``max-whisper: internal error: <Type>: <one line>`` for the rest (exit 1, traceback with
``--verbose``).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import os
import sys
import traceback
import warnings
from collections.abc import Sequence
from types import ModuleType
from typing import NoReturn

from .. import __version__
from ..errors import ExitCode, MaxWhisperError, UsageError, describe, one_line

PROG = "max-whisper"

#: Every subcommand: the module that implements it, and its one-line help.
COMMANDS: dict[str, tuple[str, str]] = {
    "transcribe": (
        "max_whisper.cli.transcribe",
        "transcribe audio files (the whisper command, on a chosen backend)",
    ),
    "benchmark": (
        "max_whisper.bench.command",
        "time the cpu, gpu and max backends on the same audio and compare their transcripts",
    ),
    "demo": ("max_whisper.bench.demo", "transcribe a clip with every available backend, side by side"),
    "compile": (
        "max_whisper.backends.whisper_max.compile",
        "compile the max backend's graphs ahead of time, into MAX's compile cache",
    ),
    "batch": (
        "max_whisper.batch.command",
        "transcribe many files (folders, manifests) on a Ray cluster, resumable",
    ),
}

#: Subcommands whose process compiles MAX graphs: started as a command (:func:`run`), such a process
#: re-executes itself onto the jemalloc MAX ships, on which MAX's compiler runs faster
#: (:mod:`max_whisper.backends.whisper_max.compile_workers`).
COMPILES = frozenset({"compile"})

#: Subcommands that turn the cyclic garbage collector back on themselves once set up
#: (:func:`resume_collection`); :func:`main` does it before running any other.
DEFERS_COLLECTION = frozenset({"transcribe"})


# --------------------------------------------------------------------------- messages


def print_error(message: object) -> None:
    print(f"{PROG}: error: {one_line(message)}", file=sys.stderr, flush=True)


def print_warning(message: object) -> None:
    print(f"{PROG}: warning: {one_line(message)}", file=sys.stderr, flush=True)


def report(exc: BaseException, verbose: bool = False, subject: str | None = None) -> None:
    """Print ``exc`` as one line: an error the user can fix, or an internal error.

    ``subject`` (a file name) starts a user error's line unless the message already names it; an
    internal error gets the traceback too when ``verbose``.
    """
    if isinstance(exc, MaxWhisperError):
        message = describe(exc)
        print_error(message if subject is None or subject in message else f"{subject}: {message}")
        return
    if verbose:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    hint = "" if verbose else " (run with --verbose for the traceback)"
    print(f"{PROG}: internal error: {describe(exc)}{hint}", file=sys.stderr, flush=True)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    print_warning(message)


# --------------------------------------------------------------------------- parser


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows defaults and keeps the description/epilog paragraphs as written."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=36, width=100)


def load_command(name: str) -> ModuleType:
    """Import the module of subcommand ``name`` (a one-line :class:`UsageError` if this install lacks it
    or a package it needs)."""
    module_name = COMMANDS[name][0]
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"the '{name}' command is not available in this install: {describe(exc)}") from exc


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser, with the arguments of ``command`` (only that subcommand's module is imported)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Whisper speech recognition on three backends (cpu = PyTorch, gpu = PyTorch CUDA, "
        "max = Modular MAX Graph), measured against each other.",
        epilog=f"Run '{PROG} COMMAND --help' for the options of a command.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, formatter_class=HelpFormatter)
        if name == command:
            module = load_command(name)
            module.add_arguments(p)
            p.set_defaults(run=module.run_from_args)
    return parser


def _first_command(argv: Sequence[str]) -> str | None:
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


# --------------------------------------------------------------------------- entry point


def resume_collection() -> None:
    """Turn the cyclic garbage collector back on if :func:`run` turned it off, with every object made so
    far frozen: the imported modules and the loaded model live as long as the process, so later
    collections need not walk them again."""
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


def run() -> NoReturn:
    """The ``max-whisper`` console script (and ``python -m max_whisper``): :func:`main` in a process of
    its own, then exit with its status.

    Importing torch, whisper and MAX makes about a million long-lived objects. CPython's cyclic
    collector walks them again and again while they load and once more as the interpreter exits:
    ≈ 0.5 s and ≈ 1 s of a run on the 2-core box (docs/performance.md, entry 39). So the collector is
    off until the command is set up (:func:`resume_collection`), and everything is frozen before exit,
    which the interpreter's last collection then skips. Objects are still freed as their references go.
    """
    if _first_command(sys.argv[1:]) in COMPILES:
        start_on_jemalloc()
    gc.disable()
    try:
        status = main()
    finally:
        gc.freeze()
    sys.exit(status)


def start_on_jemalloc() -> None:
    """Re-execute this process with MAX's jemalloc preloaded (MAX's own ``max`` command does the same),
    unless it already runs on it, ``MODULAR_MAX_ALLOCATOR=system`` asks for glibc's, or this MAX lacks
    the library; nothing has been imported yet that a restart would waste."""
    try:
        from max._entrypoints.allocator import reexec_with_jemalloc
    except ImportError:  # no MAX (the cpu backend's install), or a MAX without it
        return
    reexec_with_jemalloc()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit status (the console script, :func:`run`, exits with it)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = any(a == "--verbose" or a.startswith("--verbose=") for a in argv)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("always", category=UserWarning)  # each file's warnings, every time
            warnings.showwarning = _show_warning
            parser = build_parser(_first_command(argv))
            try:
                args = parser.parse_args(argv)
            except SystemExit as exc:  # --help, --version or a usage error (argparse printed it)
                return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else ExitCode.USAGE)
            if args.command is None:
                parser.print_usage(sys.stderr)
                print_error(f"choose a command: {', '.join(COMMANDS)} (see --help)")
                return ExitCode.USAGE
            if args.command not in DEFERS_COLLECTION:
                resume_collection()
            return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted", file=sys.stderr, flush=True)
        return ExitCode.INTERRUPTED
    except SystemExit as exc:  # a subcommand called sys.exit()
        if isinstance(exc.code, int) or exc.code is None:
            return exc.code or 0
        print_error(exc.code)
        return ExitCode.FAILED
    except BrokenPipeError:  # stdout closed early (| head): stop quietly
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ExitCode.FAILED
    except Exception as exc:
        report(exc, verbose)
        return exc.exit_code if isinstance(exc, MaxWhisperError) else ExitCode.FAILED


if __name__ == "__main__":  # pragma: no cover
    run()
