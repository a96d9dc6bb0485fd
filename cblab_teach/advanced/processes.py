"""Start P worker processes for a ``torch.distributed`` (gloo) demo, wait for them, never leave one behind.

The process group's rendezvous is a ``file://`` store in a fresh temporary folder that the
caller also uses to hand inputs to the ranks and read results back: no TCP port to pick,
nothing to collide with on a shared machine, and the folder is removed afterwards.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta

import torch.distributed as dist
import torch.multiprocessing as mp


@contextmanager
def scratch_folder(prefix: str) -> Iterator[str]:
    """A temporary folder for the store, the inputs and the results; removed on exit."""
    folder = tempfile.mkdtemp(prefix=prefix)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def init_group(rank: int, world_size: int, folder: str, timeout_s: float) -> None:
    """Join the gloo group whose store lives in ``folder`` (call first thing in a worker)."""
    dist.init_process_group(
        "gloo",
        init_method=f"file://{os.path.join(folder, 'store')}",
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=timeout_s),
    )


def launch(worker: Callable, args: tuple, world_size: int, timeout_s: float, name: str = "ranks") -> None:
    """Run ``worker(rank, *args)`` in ``world_size`` spawned processes; raise if one fails or time runs out."""
    ctx = mp.start_processes(worker, args=args, nprocs=world_size, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout_s
    try:
        while not ctx.join(timeout=1.0):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name}: the processes did not finish within {timeout_s} s")
    finally:
        for p in ctx.processes:  # only the processes started above
            if p.is_alive():
                p.terminate()
                p.join(5)
