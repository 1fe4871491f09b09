"""Which device an encode job uses.

- CUDA_VISIBLE_DEVICES set (SLURM, Kubernetes, or the user): use the first visible GPU, i.e. exactly
  the one the scheduler gave this job.
- Several GPUs visible and nothing assigned (a local multi-GPU box: Snakemake assigns no GPU ids):
  claim one with an exclusive lock file per GPU, held for the life of the job, so that concurrent
  encode jobs each take a different GPU.
- No CUDA: the CPU.
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)
_held: list[IO[str]] = []  # lock files stay open (and locked) until the process exits


def lock_dir() -> Path:
    return Path(os.environ.get("NEUCODEC_GPU_LOCK_DIR") or tempfile.gettempdir())


def claim_gpu(count: int, directory: Path | None = None, wait_seconds: float = 3600.0) -> int:
    """Take the first free GPU index among ``count`` by an exclusive, non-blocking ``flock``."""
    directory = directory or lock_dir()
    directory.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_seconds
    while True:
        for index in range(count):
            f = open(directory / f"neucodec_workflow-gpu{index}.lock", "a+")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                continue
            f.seek(0), f.truncate(), f.write(f"{os.getpid()}\n"), f.flush()
            _held.append(f)
            return index
        if time.monotonic() > deadline:
            raise TimeoutError(f"all {count} GPUs stayed claimed for {wait_seconds:.0f} s (locks in {directory})")
        time.sleep(1.0)


def pick_device(requested: str = "auto") -> str:
    import torch

    if requested == "cpu":
        return "cpu"
    if not torch.cuda.is_available():
        if requested.startswith("cuda"):
            raise RuntimeError(f"codec.device={requested} but no CUDA device is visible "
                               f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})")
        return "cpu"
    if requested.startswith("cuda:"):
        return requested
    if os.environ.get("CUDA_VISIBLE_DEVICES") or torch.cuda.device_count() == 1:
        return "cuda:0"
    index = claim_gpu(torch.cuda.device_count())
    log.info("claimed GPU %d of %d (lock in %s)", index, torch.cuda.device_count(), lock_dir())
    return f"cuda:{index}"
