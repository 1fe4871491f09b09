"""Which shards' derived outputs (report, dataset parts) are made in batches: the shards whose token file exists and
whose derived outputs are missing or older than it (or than the metadata). Adopting a corpus of 5,000 encoded shards
is then ~50 jobs, not 5,000: Snakemake's scheduler costs time per ready job per round (5,000 one-shard jobs: 384 s of
scheduling alone, 1,000: 19 s; docs/record.md) and each job is a Python start-up. A batch's size does not bound its
local disk: with an S3 output its parts are uploaded one at a time by the job (storage/uploads.py). Shards encoded
in this run get one derive job each, right after their encode job."""

from __future__ import annotations

from collections.abc import Callable, Sequence

BATCH_SHARDS = 100


def stale(mtimes: Sequence[float | None], inputs: int) -> bool:
    """``mtimes``: the inputs' (first ``inputs``) then the outputs' modification times, None when missing. True when
    every input exists and an output is missing or older than an input: Snakemake's own rule for rerunning a job."""
    ins, outs = mtimes[:inputs], mtimes[inputs:]
    if any(t is None for t in ins):
        return False
    if any(t is None for t in outs):
        return True
    return min(t for t in outs if t is not None) < max(t for t in ins if t is not None)


def derive_batches(
    shards: Sequence[str],
    mtime: Callable[[str], float | None],
    inputs: Callable[[str], list[str]],
    outputs: Callable[[str], list[str]],
    size: int = BATCH_SHARDS,
) -> list[list[str]]:
    """The stale shards (whose token file exists), in order, cut into batches of at most ``size`` shards."""
    todo = [s for s in shards if stale([mtime(p) for p in [*inputs(s), *outputs(s)]], len(inputs(s)))]
    return [todo[i : i + size] for i in range(0, len(todo), size)]
