"""Which device an encode job uses.

- One GPU visible (SLURM's ``--gpus=1``, Kubernetes, a single-GPU box): that one.
- Several visible, whether listed by ``CUDA_VISIBLE_DEVICES`` or not (a local multi-GPU box, where Snakemake
  assigns no GPU ids; or a scheduler that gave the job several): claim one of them with an exclusive lock file
  per GPU, held for the life of the job, so that concurrent encode jobs each take a different GPU. Locks are named
  by the GPU's id in ``CUDA_VISIBLE_DEVICES`` (an index or a UUID), so jobs that see different subsets still
  never share a physical GPU.
- No CUDA: the CPU.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import tempfile
import time
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)
_held: list[IO[str]] = []  # lock files stay open (and locked) until the process exits


def lock_dir() -> Path:
    return Path(os.environ.get("NEUCODEC_GPU_LOCK_DIR") or tempfile.gettempdir())


def visible_gpu_ids(count: int) -> list[str]:
    """The ids of the ``count`` GPUs this process sees: the ``CUDA_VISIBLE_DEVICES`` entries, else 0..count-1."""
    listed = [g.strip() for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
    return listed[:count] if len(listed) >= count else [str(i) for i in range(count)]


def claim_gpu(ids: list[str], directory: Path | None = None, wait_seconds: float = 3600.0) -> int:
    """Take the first free GPU among ``ids`` by an exclusive, non-blocking ``flock``; return its index in ``ids``."""
    directory = directory or lock_dir()
    directory.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_seconds
    while True:
        for index, gpu in enumerate(ids):
            f = open(directory / f"neucodec_workflow-gpu-{re.sub(r'[^A-Za-z0-9_.-]', '_', gpu)}.lock", "a+")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                continue
            f.seek(0)
            f.truncate()
            f.write(f"{os.getpid()}\n")
            f.flush()
            _held.append(f)
            return index
        if time.monotonic() > deadline:
            raise TimeoutError(f"all {len(ids)} GPUs stayed claimed for {wait_seconds:.0f} s (locks in {directory})")
        time.sleep(1.0)


def release_gpus() -> None:
    """Drop this process's GPU claims (they are dropped anyway when it exits)."""
    while _held:
        _held.pop().close()


def pick_device(requested: str) -> str:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (``codec.device``) -> the torch device string this job uses."""
    import torch

    if requested == "cpu":
        return "cpu"
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        if requested.startswith("cuda"):
            raise RuntimeError(
                f"codec.device={requested} but no CUDA device is visible "
                f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})"
            )
        return "cpu"
    if requested.startswith("cuda:"):
        return requested
    if count == 1:
        return "cuda:0"
    ids = visible_gpu_ids(count)
    index = claim_gpu(ids)
    log.info("claimed GPU %s (cuda:%d of %d visible; lock in %s)", ids[index], index, count, lock_dir())
    return f"cuda:{index}"


def device_name(device: str) -> str:
    """What the shard's record says about where it was encoded: ``cuda:0 (NVIDIA H200)`` or ``cpu``."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return device
