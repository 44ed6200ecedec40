"""Compile graphs into the store of compiled graphs in worker processes, all at once, on jemalloc.

A cold compile is MAX's graph compiler at work, and two things about it can be changed from outside
(docs/performance.md, entry 46):

- it allocates heavily, and runs faster on the jemalloc that MAX ships (``modular/lib/libjemalloc_preload.so``,
  which MAX's own ``max`` command runs on) than on glibc's malloc.  The allocator is chosen when a process
  starts, so a process that compiles must start on it: ``max-whisper compile`` started as a command
  re-executes itself onto it (``max._entrypoints.allocator.reexec_with_jemalloc``;
  ``MODULAR_MAX_ALLOCATOR=system`` keeps glibc's);
- MAX compiles one graph at a time per process, leaving part of a second core idle: two processes, one
  graph each, keep both cores busy.

So a graph that the store lacks is compiled by a ``max-whisper compile --graphs NAME`` process of its
own, one per graph, all started together, for the caller's checkpoint file and store; each writes its
artifact into the store (the same folder, since it derives the same key), and the caller loads the
artifacts from there.  A worker that fails leaves its graph to the caller, which compiles it in its own
process as before (and so reports the error, if it is one).  ``MAX_WHISPER_COMPILE_WORKERS=0`` turns the workers off.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from ...config import switched_off
from .artifacts import GRAPH_DIR_ENV

logger = logging.getLogger(__name__)

WORKERS_ENV = "MAX_WHISPER_COMPILE_WORKERS"


def workers_enabled() -> bool:
    """Whether graphs may be compiled in worker processes (``$MAX_WHISPER_COMPILE_WORKERS``, default on);
    a worker itself runs with them off, so it compiles in its own process."""
    return not switched_off(os.environ.get(WORKERS_ENV))


def compile_in_workers(
    checkpoint: str | os.PathLike[str], device: str, dtype: str, names: Sequence[str], store_root: Path
) -> dict[str, float]:
    """Compile ``names`` of the ``device`` plan (``dtype`` decoder) of the checkpoint file ``checkpoint``
    into the store of compiled graphs under ``store_root``, one worker process per graph, all at once;
    return the seconds each successful worker took, from its start to its end (startup, checkpoint load
    and graph build included).  A graph missing from the result is left to the caller.  The workers get
    the caller's environment (MAX's compile cache among it), with the store's root in it."""
    env = dict(os.environ, **{WORKERS_ENV: "0", GRAPH_DIR_ENV: str(store_root)})
    model = os.fspath(checkpoint)
    started = time.perf_counter()
    with contextlib.ExitStack() as logs:
        workers = {}
        for name in names:
            command = [sys.executable, "-m", "max_whisper", "compile", "--model", model, "--device", device]
            command += ["--dtype", dtype, "--graphs", name]
            log = logs.enter_context(tempfile.TemporaryFile(mode="w+"))
            try:
                workers[name] = (
                    subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env),
                    log,
                )
            except OSError as exc:  # no process to start: the caller compiles in its own
                logger.warning("could not start a compile worker for %s: %s", name, exc)
        try:
            return _wait_for(workers, started)
        finally:  # interrupted: no worker outlives the caller
            for process, _ in workers.values():
                process.kill()
                process.wait()


def _wait_for(workers: dict, started: float) -> dict[str, float]:
    """Reap ``workers`` (name -> (process, log), emptied as they end): the seconds since ``started`` of
    each that succeeded; each failure is logged with the worker's own one-line error."""
    seconds = {}
    while workers:
        for name, (process, log) in list(workers.items()):
            status = process.poll()
            if status is None:
                continue
            del workers[name]
            if status == 0:
                seconds[name] = time.perf_counter() - started
                continue
            log.seek(0)
            lines = [line for line in log.read().splitlines() if line.startswith("max-whisper:")]
            reason = lines[-1] if lines else f"exit status {status}"
            logger.warning("the compile worker for %s failed (%s); compiling it here", name, reason)
        if workers:
            time.sleep(0.05)
    return seconds
