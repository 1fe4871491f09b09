"""Which shards' derived outputs (report, dataset parts) are made in batches: the shards whose token file exists and
whose derived outputs are missing or older than it (or than the metadata). Adopting a corpus of 5,000 encoded shards
is then ~50 jobs, not 5,000: Snakemake's scheduler costs time per ready job per round (5,000 one-shard jobs: 384 s of
scheduling alone, 1,000: 19 s; benchmarks/results/record.md) and each job is a Python start-up. Batches are also bounded in bytes,
since a batch's outputs sit on local disk until the job ends. Shards encoded in this run get one derive job each,
right after their encode job."""

from __future__ import annotations

from collections.abc import Callable, Sequence

BATCH_SHARDS = 100
# A batch's parts wait on local disk until the job ends and Snakemake uploads them (with an S3 output): at most about
# this many bytes of parts per batch (estimated from the token files' sizes: formats.parts_per_token_byte).
BATCH_BYTES = 256 << 20


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
    nbytes: Callable[[str], float],
    size: int = BATCH_SHARDS,
    budget: int = BATCH_BYTES,
) -> list[list[str]]:
    """The stale shards (whose token file exists), in order, cut into batches of at most ``size`` shards and about
    ``budget`` bytes of outputs (``nbytes(shard)``; a shard larger than the budget is a batch of its own)."""
    batches: list[list[str]] = []
    held = 0.0
    for s in shards:
        if not stale([mtime(p) for p in [*inputs(s), *outputs(s)]], len(inputs(s))):
            continue
        n = nbytes(s)
        if not batches or len(batches[-1]) >= size or (batches[-1] and held + n > budget):
            batches.append([])
            held = 0.0
        batches[-1].append(s)
        held += n
    return batches
