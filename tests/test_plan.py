"""plan.py: which shards' derived outputs are stale, and how they are cut into derive batches."""

from __future__ import annotations

from neucodec_workflow.plan import derive_batches, stale


def test_stale_follows_snakemakes_rule() -> None:
    assert stale([1.0, 2.0, None], inputs=2), "a missing output"
    assert stale([1.0, 3.0, 2.0], inputs=2), "an output older than an input"
    assert not stale([1.0, 2.0, 5.0, 3.0], inputs=2), "every output newer than every input"
    assert not stale([None, 2.0, None], inputs=2), "a missing input: nothing to derive from"


def test_batches_hold_the_stale_shards_in_order() -> None:
    times = {f"s{i}/tokens": 10.0 for i in range(7)} | {f"s{i}/report": 20.0 for i in range(7)}
    times["s1/report"] = 5.0  # older than its token file
    del times["s3/report"], times["s4/report"], times["s6/report"]  # missing
    del times["s5/tokens"]  # no token file: its encode job makes it, derive_shard follows

    batches = derive_batches(
        [f"s{i}" for i in range(7)],
        times.get,
        inputs=lambda s: [f"{s}/tokens"],
        outputs=lambda s: [f"{s}/report"],
        size=2,
    )
    assert batches == [["s1", "s3"], ["s4", "s6"]]
    assert derive_batches(["s0", "s2"], times.get, lambda s: [f"{s}/tokens"], lambda s: [f"{s}/report"]) == []
