"""Ray: joining a cluster or starting one here, and the streaming dataset of a job.

Each plan shard is read by a zero-CPU task pinned to the driver's node (the file lives there) and
split into one block per file, so Ray Data hands the actors one file at a time and a killed actor costs one
file. The actor pool (``--workers``) asks each actor for ``threads`` CPUs, and one GPU on GPU backends;
an actor that dies is restarted and its file retried (``max_restarts`` / ``max_task_retries``).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import UsageError, one_line
from .options import JobOptions
from .worker import TranscribeWorker

#: How often an actor is restarted, and its file retried, before the job gives up on it.
MAX_RESTARTS = 3


@contextmanager
def ray_session(address: str | None, num_cpus: int) -> Iterator[None]:
    """Ray for the job: the running session if there is one, else ``address``'s cluster, else a local one.

    A local Ray gets ``num_cpus`` logical CPUs, no dashboard and quiet logs; a session this function
    started is shut down on the way out.
    """
    import ray

    if ray.is_initialized():
        yield
        return
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")  # the driver core worker's C++ notes
    quiet = {"logging_level": logging.ERROR, "log_to_driver": False}
    try:
        if address:
            ray.init(address=address, **quiet)
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, **quiet)
    except Exception as exc:  # no cluster at that address, a version mismatch...
        where = f"join the Ray cluster at {address}" if address else "start Ray on this machine"
        raise UsageError(f"cannot {where}: {one_line(exc, limit=300)}") from None
    try:
        yield
    finally:
        ray.shutdown()


def _quiet_ray_data() -> None:
    import ray.data

    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"ray\.")  # Ray's own renames
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)


def shard_rows(shard: Path, files: int, options: JobOptions, workers: int) -> Iterator[Any]:
    """Stream the actors' output rows (``record``, ``result``) for every file of one plan shard."""
    import ray
    import ray.data

    _quiet_ray_data()
    node = ray.get_runtime_context().get_node_id()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Ray's notes on deprecated spellings are not the user's business
        dataset = ray.data.read_text(
            str(shard),
            override_num_blocks=max(1, files),
            num_cpus=0,
            label_selector={"ray.io/node-id": node},
        ).map_batches(
            TranscribeWorker,
            fn_constructor_kwargs={"options": options},
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=workers, max_tasks_in_flight_per_actor=1),
            num_cpus=options.threads,
            num_gpus=1 if options.uses_gpu else 0,
            max_restarts=MAX_RESTARTS,
            max_task_retries=MAX_RESTARTS,
        )
    yield from dataset.iter_rows()


def local_cpus(options: JobOptions, workers: int) -> int:
    """Logical CPUs for a local Ray: the machine's, or more when the pool asks for more."""
    return max(os.cpu_count() or 1, workers * options.threads)
