"""Transcribe thousands of files on a Ray cluster (or on this machine), resumable, nothing lost.

``max-whisper batch INPUTS...`` and :func:`transcribe_many` run one job: Ray Data streams the inputs
to a pool of actors that each load one backend once; the driver writes every file's outputs into the
output folder, with a results table (``results.jsonl``) and a done-record per file, so re-running the
same job skips what is complete and verified. See ``docs/batch.md``.

``ray[data]`` is an optional dependency (``pip install 'max-whisper[ray]'``); importing this package
does not import it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any, Union

from ..config import DEFAULT_BACKEND, DEFAULT_MODEL
from .options import JobOptions, job_options
from .summary import BatchSummary

PathLike = Union[str, "os.PathLike[str]"]


def transcribe_many(
    paths: PathLike | Iterable[PathLike],
    output_dir: PathLike,
    *,
    backend: str = DEFAULT_BACKEND,
    model: str = DEFAULT_MODEL,
    workers: int = 2,
    threads: int = 1,
    device: str | None = None,
    output_format: str = "all",
    address: str | None = None,
    dry_run: bool = False,
    progress: bool = False,
    writer_options: dict | None = None,
    **options: Any,
) -> BatchSummary:
    """Transcribe every audio file in ``paths`` into ``output_dir`` with ``workers`` Ray actors.

    ``paths`` holds audio files, folders (searched recursively) and manifests (``.txt``/``.lst`` with
    one path per line, ``.tsv`` with a ``path`` column), lazily iterated. Each actor loads ``backend``
    (``cpu``, ``gpu``, ``max``) with ``model`` once and uses ``threads`` CPU threads (GPU backends:
    one GPU per actor). ``options`` are :class:`max_whisper.options.TranscriptionOptions` fields
    (``beam_size=None``, ``temperature=0.0``, ``language="en"``...), with whisper's defaults.

    Ray: the running session if ``ray.init`` was called, else the cluster at ``address``, else a
    local one (shut down at the end). A bad file is a failed row in ``output_dir/results.jsonl``,
    never an exception; files already done (outputs complete and verified) are skipped. Ctrl-C stops
    between two files and returns a summary with ``interrupted=True``. Returns the run's
    :class:`BatchSummary` (``summary.exit_code`` follows ``max-whisper transcribe``).
    """
    from .runner import run_job

    inputs = [paths] if isinstance(paths, (str, os.PathLike)) else paths
    job = job_options(
        backend,
        model,
        threads=threads,
        device=device,
        output_format=output_format,
        writer_options=writer_options,
        **options,
    )
    return run_job(inputs, output_dir, job, workers=workers, address=address, dry_run=dry_run, progress=progress)


__all__ = ["BatchSummary", "JobOptions", "transcribe_many"]
