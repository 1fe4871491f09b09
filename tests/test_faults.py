"""S3 faults: a fault-injecting proxy (support/fault_proxy.py) on 127.0.0.1 in front of the loopback moto server.

HTTP 503 SlowDown, 500 InternalError, connection resets in the middle of a response body, delays of seconds, at a
seeded rate. Our readers (storage/streams.py) retry with botocore's backoff and resume broken bodies by byte range;
real Snakemake runs through the proxy complete with the tokens of a fault-free run (encode_code's, which every
uninterrupted run writes: test_workflow.py), or fail naming the object and complete when run again.
Per run, the faults by kind, our readers' retries and the outcome are printed (``-s``) and recorded in
docs/reliability.md.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from test_s3 import (  # the S3 Snakemake helpers
    ACCESS_KEY,
    BUCKET,
    SECRET,
    assert_no_secret,
    keys,
    put_foreign_shard,
    put_shard,
    run,
    s3_env,
)

from neucodec_workflow.storage import streams
from neucodec_workflow.storage.s3 import S3Error, S3Settings

OBJECT_URL = re.compile(rf"s3://{BUCKET}/\S+")


# --- the resume-by-range reader, without a server -----------------------------------------------------------------


class Body:
    """A response body that breaks (``error``) after ``fail_after`` bytes, or ends early without an error."""

    def __init__(self, payload: bytes, fail_after: int | None, error: BaseException | None = None):
        self.stream, self.fail_after, self.sent, self.error = io.BytesIO(payload), fail_after, 0, error

    def read(self, n: int) -> bytes:
        if self.fail_after is not None and self.sent >= self.fail_after:
            if self.error is None:
                return b""  # the connection closed early: fewer bytes than Content-Length
            raise self.error
        chunk = self.stream.read(min(n, 7_000))
        self.sent += len(chunk)
        return chunk


class FlakyClient:
    """get_object with Range/IfMatch like S3; the n-th answer's body breaks after ``breaks[n]`` bytes."""

    def __init__(self, data: bytes, breaks: list[int | None], error: BaseException | None = None):
        self.data, self.breaks, self.error = data, breaks, error
        self.calls: list[dict[str, str]] = []

    def get_object(self, Bucket: str, Key: str, **kw: str) -> dict[str, Any]:
        self.calls.append(kw)
        start = int(kw["Range"].removeprefix("bytes=").rstrip("-")) if "Range" in kw else 0
        if "IfMatch" in kw:
            assert kw["IfMatch"] == '"etag-1"'
        n = len(self.calls) - 1
        fail_after = self.breaks[n] if n < len(self.breaks) else None
        return {
            "Body": Body(self.data[start:], fail_after, self.error),
            "ContentLength": len(self.data) - start,
            "ETag": '"etag-1"',
        }


def test_body_that_breaks_mid_stream_is_resumed_by_range(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(streams, "BACKOFF_BASE", 0.001)
    data = bytes(range(256)) * 1000
    flaky = FlakyClient(data, [70_000, 14_000, 0, None], ConnectionResetError("connection reset by peer"))
    assert b"".join(streams.iter_object(flaky, "bkt", "a/audio.tar", chunk_size=20_000)) == data
    assert [c.get("Range") for c in flaky.calls] == [None, "bytes=70000-", "bytes=84000-", "bytes=84000-"]
    assert all(c["IfMatch"] == '"etag-1"' for c in flaky.calls[1:]), "a resumed read must be of the same object"
    # a body that ends early without an error (short read) is resumed too; the read-ahead stream says the same
    short = FlakyClient(data, [105_000])
    reader = io.BufferedReader(streams.ReadAhead(short, "bkt", "a/audio.tar", chunk_size=30_000, depth=2))
    assert reader.read() == data and [c.get("Range") for c in short.calls] == [None, "bytes=105000-"]


def test_read_that_stays_broken_names_the_object(monkeypatch: pytest.MonkeyPatch) -> None:
    from botocore.exceptions import ClientError

    monkeypatch.setattr(streams, "BACKOFF_BASE", 0.001)
    data = b"x" * 50_000
    stuck = FlakyClient(data, [14_000] + [0] * 10, ConnectionResetError("connection reset by peer"))
    with pytest.raises(S3Error, match=r"s3://bkt/a/audio\.tar: read failed 3 times in a row at byte 14000 of 50000"):
        b"".join(streams.iter_object(stuck, "bkt", "a/audio.tar", attempts=3))
    assert len(stuck.calls) == 3  # it broke after 14,000 bytes, then twice more without progress

    class Missing:
        def get_object(self, **kw: Any) -> None:
            raise ClientError(
                {"Error": {"Code": "NoSuchKey"}, "ResponseMetadata": {"HTTPStatusCode": 404}}, "GetObject"
            )

    with pytest.raises(S3Error, match=r"^s3://bkt/k: NoSuchKey \(HTTP 404\)$"):  # not retried
        list(streams.iter_object(Missing(), "bkt", "k"))
    reader = io.BufferedReader(streams.ReadAhead(Missing(), "bkt", "k"))
    with pytest.raises(S3Error, match="s3://bkt/k: NoSuchKey"):
        reader.read()


# --- our readers through the proxy ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def loopback() -> Iterator[Any]:
    pytest.importorskip("moto")
    from support.loopback_s3 import LoopbackS3

    with LoopbackS3() as s3:
        yield s3


@pytest.fixture(scope="module")
def direct(loopback: Any) -> Any:
    """A client straight to the server (setting up and checking: no faults)."""
    c = S3Settings(
        endpoint_url=loopback.endpoint, region="us-east-1", access_key=ACCESS_KEY, secret_key=SECRET
    ).client()
    c.create_bucket(Bucket=BUCKET)
    return c


@pytest.fixture(scope="module")
def proxy(loopback: Any) -> Iterator[Any]:
    from support.fault_proxy import FaultProxy

    with FaultProxy(loopback.endpoint, rate=0.0, seed=13) as p:
        assert p.endpoint.startswith("http://127.0.0.1:")
        yield p


@pytest.mark.s3
def test_readers_through_faults(direct: Any, proxy: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """30 % faults of every kind: every whole read and every read-ahead stream comes out byte for byte; with a store
    that only throttles, the error names the object and no secret."""
    monkeypatch.setattr(streams, "BACKOFF_BASE", 0.02)
    data = np.random.default_rng(0).integers(0, 256, 3 << 20, dtype=np.uint8).tobytes()
    direct.put_object(Bucket=BUCKET, Key="readers/audio.tar", Body=data)
    ours = S3Settings(endpoint_url=proxy.endpoint, region="us-east-1", access_key=ACCESS_KEY, secret_key=SECRET)
    c = ours.client()
    proxy.rate, proxy.delay = 0.3, (0.05, 0.3)
    proxy.reset()
    before = sum(streams.retries.values())
    try:
        for _ in range(25):
            assert streams.read_bytes(f"s3://{BUCKET}/readers/audio.tar", c) == data
        for _ in range(6):
            stream = streams.ReadAhead(c, BUCKET, "readers/audio.tar", chunk_size=256 << 10, depth=2)
            assert io.BufferedReader(stream).read() == data
        counts = proxy.counts()
        print(f"\nreaders at 30 %: {counts}, resumed by range: {sum(streams.retries.values()) - before}")
        assert {"slowdown", "internal_error", "reset_mid_body", "delay"} <= set(counts["faults"]), counts
        assert sum(streams.retries.values()) - before >= counts["faults"]["reset_mid_body"] // 2

        proxy.rate, proxy.kinds = 1.0, ("slowdown",)
        monkeypatch.setenv("NEUCODEC_S3_MAX_ATTEMPTS", "2")
        monkeypatch.setenv("NEUCODEC_S3_READ_ATTEMPTS", "2")
        with pytest.raises(S3Error) as err:
            streams.read_bytes(f"s3://{BUCKET}/readers/audio.tar", ours.client())
        assert str(err.value).startswith(f"s3://{BUCKET}/readers/audio.tar: ") and "SlowDown (HTTP 503)" in str(
            err.value
        )
        assert SECRET not in str(err.value) and ACCESS_KEY not in str(err.value)
    finally:
        proxy.rate, proxy.kinds, proxy.delay = 0.0, ("slowdown", "internal_error", "reset", "delay"), (0.5, 2.0)


# --- real Snakemake runs through the proxy --------------------------------------------------------------------------


def our_retries(workdir: Path) -> int:
    return sum(f.read_text(errors="replace").count("; retrying in ") for f in workdir.rglob("*.log"))


@pytest.mark.workflow
@pytest.mark.faults
@pytest.mark.s3
@pytest.mark.parametrize("rate,seed", [(0.05, 5), (0.20, 20)], ids=["5pct", "20pct"])
def test_workflow_through_faults(
    direct: Any,
    proxy: Any,
    random_ckpt: Path,
    codec: Any,
    tmp_path: Path,
    rate: float,
    seed: int,
) -> None:
    """One shard encoded and 30 adopted ones derived, corpus and output in S3, every request through the proxy: the
    run completes with encode_code's tokens and the same dataset; at 20 % it may instead fail naming the object,
    and then the plain rerun (faults still on) completes."""
    import random

    from support.loopback_s3 import snakemake_s3_command

    from neucodec_workflow.engine.reference import reference_tokens
    from neucodec_workflow.shard.audio import decode_member, iter_flac_members

    prefix = f"faults-{seed}"
    put_shard(direct, f"{prefix}/corpus", "enc/shard-0", seed=30)
    for i in range(30):
        put_foreign_shard(direct, f"{prefix}/corpus", f"adopt/shard-{i:02d}", rows=3, seed=100 + i)
    env = s3_env(proxy.endpoint, tmp_path)
    out = f"s3://{BUCKET}/{prefix}/out"

    def cmd() -> list[str]:
        return snakemake_s3_command(
            Path(__file__).resolve().parents[1],
            tmp_path,
            f"s3://{BUCKET}/{prefix}/corpus",
            str(random_ckpt),
            output=out,
        )

    proxy._rng = random.Random(seed)
    proxy.rate = rate
    proxy.reset()
    try:
        r = run(cmd(), env)
        outcome = "completed"
        texts = [r.stdout, r.stderr]
        if r.returncode != 0:
            assert rate > 0.1, f"a run at {rate:.0%} faults failed:\n{r.stderr[-4000:]}"
            named = OBJECT_URL.findall(r.stdout + r.stderr)
            assert named, f"the failure names no object:\n{r.stderr[-4000:]}"
            again = run(cmd(), env)
            assert again.returncode == 0, again.stderr[-4000:]
            outcome = f"failed naming {named[0]}; plain rerun completed"
            texts += [again.stdout, again.stderr]
        counts = proxy.counts()
    finally:
        proxy.rate = 0.0
    line = {"rate": rate, **counts, "our_retries": our_retries(tmp_path), "outcome": outcome}
    print("\nfault run:", json.dumps(line))

    tokens = pd.read_parquet(
        io.BytesIO(
            direct.get_object(Bucket=BUCKET, Key=f"{prefix}/corpus/enc/shard-0/neucodec_tokens.parquet")["Body"].read()
        )
    )
    tar_bytes = direct.get_object(Bucket=BUCKET, Key=f"{prefix}/corpus/enc/shard-0/audio.tar")["Body"].read()
    for (member, data), row in zip(iter_flac_members(io.BytesIO(tar_bytes)), tokens.itertuples(), strict=True):
        clip = decode_member(row.segment_id, member, data, 60)
        np.testing.assert_array_equal(np.frombuffer(row.neucodec_tokens, "<u2"), reference_tokens(codec, clip.audio))
    stats = json.loads(direct.get_object(Bucket=BUCKET, Key=f"{prefix}/out/stats.json")["Body"].read())
    assert stats["records"] == {"workflow": 1, "foreign": 30} and stats["sft_rows_per_split"] == {"train": 2 + 90}
    assert not [k for k in keys(direct, prefix) if ".tmp-" in k], "a temporary file was uploaded"
    assert_no_secret(tmp_path, *texts)
