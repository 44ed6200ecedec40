"""Planning a job: stream the inputs once, skip what is done, list the rest with their durations.

The plan is a folder of JSON-lines shards (one ``{"path", "key", "duration"}`` object per file to do,
:data:`SHARD_FILES` files a shard) that Ray Data reads back one shard at a time; nothing about the job
is held in the driver's memory, so planning a manifest of a million files takes the memory of one.
Durations come from the file headers (``soundfile.info``): cheap, and exact for WAV/FLAC; a file whose
header cannot be read is planned with no duration and fails in its worker with the loader's one-line
error.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .inputs import expand_inputs
from .ledger import Ledger

#: Files per plan shard: each shard is one Ray Data execution, so the driver's bookkeeping (a few KB a
#: file while a dataset runs) is bounded by a shard, and a new actor pool per shard costs one model load
#: per actor per this many files.
SHARD_FILES = 1000


@dataclass
class Plan:
    """What a job has to do, and what was done before."""

    folder: Path  #: where the shards are
    shards: list[tuple[Path, int]] = field(default_factory=list)  #: (shard file, files in it)
    files: int = 0  #: inputs found
    pending: int = 0  #: files to transcribe
    done: int = 0  #: files skipped: their outputs are complete and verified
    pending_seconds: float = 0.0  #: audio to transcribe (from the headers)
    done_seconds: float = 0.0  #: audio done before
    unreadable: int = 0  #: pending files whose header could not be read (missing, empty, not audio...)


def header_duration(path: str) -> float | None:
    """Seconds of audio according to the file's header, or None when soundfile cannot read it."""
    import soundfile

    try:
        info = soundfile.info(path)
    except Exception:  # missing, not audio, a format only ffmpeg reads: the worker reports it
        return None
    if not info.samplerate or info.frames < 0:
        return None
    return info.frames / info.samplerate


def make_plan(
    inputs: Iterable[os.PathLike | str], ledger: Ledger, folder: Path, shard_files: int = SHARD_FILES
) -> Plan:
    """Stream ``inputs`` into shards in ``folder``, counting what is pending and what is already done."""
    plan = Plan(folder=folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = None
    try:
        for item in expand_inputs(inputs):
            plan.files += 1
            done = ledger.verified(item)
            if done is not None:
                plan.done += 1
                plan.done_seconds += done.duration
                continue
            duration = header_duration(item.path)
            if duration is None:
                plan.unreadable += 1
            else:
                plan.pending_seconds += duration
            if plan.pending % shard_files == 0:
                if out is not None:
                    out.close()
                plan.shards.append((folder / f"shard-{len(plan.shards):06d}.jsonl", 0))
                out = open(plan.shards[-1][0], "w", encoding="utf-8")  # noqa: SIM115 (closed below)
            plan.pending += 1
            path, count = plan.shards[-1]
            plan.shards[-1] = (path, count + 1)
            out.write(json.dumps({"path": item.path, "key": item.key, "duration": duration}) + "\n")
    finally:
        if out is not None:
            out.close()
    return plan
