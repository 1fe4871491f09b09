"""Fast unit tests of the storage package (inventory, shard lists) and the upstream version policy.

The S3 tests use the counting moto server on 127.0.0.1 (support/loopback_s3.py) with fake keys, never AWS.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from neucodec_workflow import upstream
from neucodec_workflow.storage.discovery import ShardListError, discover_local, shard_list
from neucodec_workflow.storage.inventory import Inventory
from neucodec_workflow.storage.s3 import ENV_PREFIX, SETTING_NAMES, S3Error, S3Settings

BUCKET, OTHER = "inventory-bucket", "other-bucket"


# -- S3 inventory ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[Any]:
    pytest.importorskip("moto")
    from support.loopback_s3 import LoopbackS3

    with LoopbackS3() as s3:
        yield s3


@pytest.fixture(scope="module")
def settings(server: Any) -> S3Settings:
    return S3Settings(endpoint_url=server.endpoint, region="us-east-1", access_key="AKIATEST", secret_key="test")


@pytest.fixture(scope="module")
def client(settings: S3Settings) -> Any:
    c = settings.client()
    for b in (BUCKET, OTHER):
        c.create_bucket(Bucket=b)
    return c


def put(client: Any, bucket: str, *keys: str, body: bytes = b"x") -> None:
    for key in keys:
        client.put_object(Bucket=bucket, Key=key, Body=body)


def put_many(bucket: str, keys: list[str]) -> None:
    """Many tiny objects straight into the in-process moto backend (HTTP PUTs would take ~10 ms each)."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    for key in keys:
        backend.put_object(bucket, key, b"x")


class SmallPages:
    """The client with every paginator limited to ``size`` keys per page (the inventory passes no page size)."""

    def __init__(self, client: Any, size: int):
        self._client, self._size = client, size

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def get_paginator(self, name: str) -> Any:
        paginator, size = self._client.get_paginator(name), self._size

        class Limited:
            def paginate(self, **kwargs: Any) -> Any:
                return paginator.paginate(**kwargs, PaginationConfig={"PageSize": size})

        return Limited()


def test_inventory_lists_several_roots_once(server: Any, client: Any, settings: S3Settings) -> None:
    put(client, BUCKET, "roots/corpus/a/shard-0/audio.tar", "roots/corpus/a/shard-0/metadata.parquet")
    put(client, BUCKET, "roots/corpus/b/shard-1/audio.tar", "roots/corpus-other/x/audio.tar", "roots/elsewhere")
    put(client, OTHER, "out/shards/a/shard-0.json")
    inv = Inventory(settings, [f"s3://{BUCKET}/roots/corpus/", f"s3://{OTHER}/out", f"s3://{BUCKET}/roots/corpus"])
    assert inv.roots == [(BUCKET, "roots/corpus"), (OTHER, "out")]  # deduplicated, no trailing slash
    server.reset()
    assert inv.keys(BUCKET, "roots/corpus") == [
        "roots/corpus/a/shard-0/audio.tar",
        "roots/corpus/a/shard-0/metadata.parquet",
        "roots/corpus/b/shard-1/audio.tar",
    ]  # not roots/corpus-other (a sibling that shares the name's start)
    assert inv.keys(OTHER, "out") == ["out/shards/a/shard-0.json"]
    assert inv.requests == 2 and server.counts()["by_method"] == {"LIST": 2}
    inv.load()
    assert inv.exists(BUCKET, "roots/corpus/b/shard-1/audio.tar")
    assert server.counts()["total"] == 2, "listed once per process, then answered from the snapshot"
    assert inv.covers(BUCKET, "roots/corpus/a/shard-0/audio.tar") and inv.covers(BUCKET, "roots/corpus")
    assert not inv.covers(BUCKET, "roots/corpus-other/x/audio.tar") and not inv.covers(OTHER, "roots/corpus/a")
    assert inv.bucket_exists(BUCKET) and inv.bucket_exists(OTHER) and not inv.bucket_exists("never-listed")


def test_inventory_paginates(server: Any, client: Any, settings: S3Settings) -> None:
    keys = [f"many/{i // 100:02d}/obj-{i:05d}" for i in range(1050)]  # more than one page of 1,000 keys
    put_many(BUCKET, keys)
    server.reset()
    inv = Inventory(settings, [f"s3://{BUCKET}/many"])
    assert inv.keys(BUCKET, "many") == sorted(keys)
    assert inv.requests == 2 and server.counts()["total"] == 2

    small = Inventory(settings, [f"s3://{BUCKET}/many/03"])
    small._lister = SmallPages(settings.client(raw_timestamps=True), 7)  # the listing's own client
    server.reset()
    assert small.keys(BUCKET, "many/03") == [k for k in keys if k.startswith("many/03/")]
    assert small.requests == 15 and server.counts()["total"] == 15  # 100 keys, 7 per page


def test_inventory_answers_exists_mtime_size_is_dir(server: Any, client: Any, settings: S3Settings) -> None:
    before = time.time()
    put(client, BUCKET, "answers/a/shard-0/audio.tar", body=b"12345")
    put(client, BUCKET, "answers/a/shard-0/metadata.parquet", "answers/top.txt")
    inv = Inventory(settings, [f"s3://{BUCKET}/answers"])
    info = inv.info(BUCKET, "answers/a/shard-0/audio.tar")
    assert info is not None and info.size == 5
    assert before - 5 < info.mtime < time.time() + 5  # the listing's LastModified (server clock: loopback)
    assert inv.exists(BUCKET, "answers/a/shard-0/audio.tar") and not inv.is_dir(BUCKET, "answers/a/shard-0/audio.tar")
    for d in ("answers/a", "answers/a/shard-0"):
        assert inv.is_dir(BUCKET, d) and inv.exists(BUCKET, d) and inv.info(BUCKET, d) is None
    assert sorted(i.size for i in inv.subobjects(BUCKET, "answers/a/shard-0")) == [1, 5]
    for missing in ("answers/a/shard-1/audio.tar", "answers/a/shard", "answers/a/shard-0/audio", "answers/top"):
        assert not inv.exists(BUCKET, missing) and not inv.is_dir(BUCKET, missing), missing
    assert inv.info(BUCKET, "answers/a/shard-0/missing") is None
    server.reset()
    inv.exists(BUCKET, "answers/nothing"), inv.info(BUCKET, "answers/top.txt"), inv.is_dir(BUCKET, "answers/a")
    assert server.counts()["total"] == 0, "answers come from the listing"


def test_inventory_refresh_after_upload_and_forget_after_delete(server: Any, client: Any, settings: S3Settings) -> None:
    put(client, BUCKET, "fresh/a/shard-0/audio.tar")
    inv = Inventory(settings, [f"s3://{BUCKET}/fresh"])
    inv.load()
    put(client, BUCKET, "fresh/a/shard-0/neucodec_tokens.parquet", body=b"tokens")
    assert not inv.exists(BUCKET, "fresh/a/shard-0/neucodec_tokens.parquet"), "a snapshot until told otherwise"
    server.reset()
    requests, before = inv.requests, time.time()
    inv.refresh(BUCKET, "fresh/a/shard-0/neucodec_tokens.parquet", directory=False, size=len(b"tokens"))
    assert server.counts()["total"] == 0 and inv.requests == requests  # an uploaded file: no HEAD
    info = inv.info(BUCKET, "fresh/a/shard-0/neucodec_tokens.parquet")
    assert info is not None and info.size == len(b"tokens") and before <= info.mtime <= time.time()

    put(client, BUCKET, "fresh/dir/x/1", "fresh/dir/x/2", "fresh/dir/y")
    server.reset()
    inv.refresh(BUCKET, "fresh/dir", directory=True, size=0)  # one LIST for a directory
    assert server.counts()["by_method"] == {"LIST": 1}
    assert inv.is_dir(BUCKET, "fresh/dir") and inv.is_dir(BUCKET, "fresh/dir/x")
    assert inv.keys(BUCKET, "fresh/dir") == ["fresh/dir/x/1", "fresh/dir/x/2", "fresh/dir/y"]

    client.delete_object(Bucket=BUCKET, Key="fresh/a/shard-0/neucodec_tokens.parquet")
    server.reset()
    inv.forget(BUCKET, "fresh/a/shard-0/neucodec_tokens.parquet")
    assert not inv.exists(BUCKET, "fresh/a/shard-0/neucodec_tokens.parquet")
    assert inv.exists(BUCKET, "fresh/a/shard-0/audio.tar")
    inv.forget(BUCKET, "fresh/dir")  # a directory: everything under it
    assert not inv.exists(BUCKET, "fresh/dir") and not inv.exists(BUCKET, "fresh/dir/x/1")
    assert not inv.is_dir(BUCKET, "fresh/dir/x")
    assert server.counts()["total"] == 0, "forgetting sends nothing"


def test_uploader_sends_removes_and_leaves_a_receipt_the_inventory_reads(
    server: Any, client: Any, settings: S3Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job's own uploads (uploads.Uploader): each staging file is sent with one PUT and removed; the receipt,
    written when the job ends (also when it fails), lets the run's inventory answer for the new objects without a
    request; uploads outside the inventory's roots and unreadable receipts are ignored."""
    from neucodec_workflow.storage.uploads import Uploader
    from neucodec_workflow.workflow.recovery import receipts_dir

    for name in SETTING_NAMES:  # a job process gets the plugin's settings from the environment
        monkeypatch.setenv(ENV_PREFIX + name.upper(), getattr(settings, name) or "")
    inv = Inventory(settings, [f"s3://{BUCKET}/sent"])
    inv.receipts = receipts = receipts_dir(tmp_path / ".snakemake")
    inv.load()
    staged = [tmp_path / "stage" / f"part-{i}.parquet" for i in range(3)]
    for i, path in enumerate(staged):
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"p" * (10 + i))
    server.reset()
    with pytest.raises(RuntimeError, match="the job failed"), Uploader(receipts) as up:
        up.send(staged[0], f"s3://{BUCKET}/sent/data/train/a.parquet")
        up.send(staged[1], f"s3://{OTHER}/elsewhere/b.parquet")
        raise RuntimeError("the job failed after two uploads")
    assert server.counts()["by_method"] == {"PUT": 2}
    assert not staged[0].exists() and not staged[1].exists(), "a sent staging file is removed"
    got = client.get_object(Bucket=BUCKET, Key="sent/data/train/a.parquet")["Body"].read()
    assert got == b"p" * 10
    (receipts / "broken.json").write_text("{not json")

    server.reset()
    info = inv.info(BUCKET, "sent/data/train/a.parquet")
    assert info is not None and info.size == 10, "the failed job's receipt still names what it sent"
    assert inv.exists(BUCKET, "sent/data/train") and not inv.exists(BUCKET, "sent/data/train/c.parquet")
    assert inv.info(OTHER, "elsewhere/b.parquet") is None  # not under the inventory's roots
    with Uploader(receipts) as up:
        up.send(staged[2], f"s3://{BUCKET}/sent/data/train/c.parquet")
    assert inv.exists(BUCKET, "sent/data/train/c.parquet"), "a later receipt is read too"
    assert server.counts()["by_method"] == {"PUT": 1}, "the inventory sent no request"
    assert receipts.name.endswith(f".{os.getpid()}")


def test_report_digests_serve_current_reports_and_fall_back_to_get(server: Any, client: Any) -> None:
    """summarize's report reading (storage/digests.py): an entry whose ETag is the report's current one is used, a
    stale entry (the report changed since), an unreadable digest and a report in no digest cost a GET each; then
    one digest of every report replaces the ones read, and the next reading takes everything from it in 3
    requests. More than KEEP digests are compacted too; a report that is gone is an error naming it."""
    from neucodec_workflow.storage import digests

    root = f"s3://{BUCKET}/dig/out"
    folder = digests.folder(root)
    urls = [f"{root}/shards/{s}.json" for s in ("a/shard-0", "a/shard-1", "b/shard-2")]
    texts = [f'{{"shard": {i}}}' for i in range(3)]
    etags = []
    for url, text in zip(urls, texts, strict=True):
        etags.append(client.put_object(Bucket=BUCKET, Key=url.split("/", 3)[3], Body=text.encode())["ETag"])
    digests.write(client, folder, [digests.entry(urls[0], etags[0], texts[0]), digests.entry(urls[1], etags[1], "old")])
    changed = '{"shard": 1, "changed": true}'  # shard 1's report, rewritten after the digest: its entry is stale
    client.put_object(Bucket=BUCKET, Key=urls[1].split("/", 3)[3], Body=changed.encode())
    put(client, BUCKET, "dig/out/.report_digests/broken.json.gz", body=b"not gzip")

    server.reset()
    progress: list[int] = []
    first = digests.read_reports(client, urls, folder, on_read=progress.append)
    assert first.texts == [texts[0], changed, texts[2]]
    assert progress == [1, 1, 1], "one from the digest, then each GET"
    assert (first.digests_read, first.from_digests, first.fetched, first.compacted) == (2, 1, 2, True)
    # LIST reports and digests, GET 2 digests and 2 reports, PUT the compacted digest, one DELETE of the old two
    assert server.counts()["by_method"] == {"LIST": 2, "GET": 4, "PUT": 1, "POST": 1}, server.counts()
    assert first.requests == server.counts()["total"]
    left = [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix="dig/out/.report_digests/")["Contents"]]
    assert len(left) == 1 and left[0].endswith(".json.gz") and "broken" not in left[0]

    server.reset()
    second = digests.read_reports(client, list(reversed(urls)), folder)
    assert second.texts == [texts[2], changed, texts[0]]
    assert (second.digests_read, second.from_digests, second.fetched, second.compacted) == (1, 3, 0, False)
    assert server.counts()["by_method"] == {"LIST": 2, "GET": 1}

    for _ in range(digests.KEEP):  # one digest per incremental run: compacted once there are more than KEEP
        digests.write(client, folder, [digests.entry(urls[2], etags[2], texts[2])])
    third = digests.read_reports(client, urls, folder)
    assert (third.digests_read, third.fetched, third.compacted) == (digests.KEEP + 1, 0, True)
    assert third.texts == [texts[0], changed, texts[2]]
    assert len(client.list_objects_v2(Bucket=BUCKET, Prefix="dig/out/.report_digests/")["Contents"]) == 1

    client.delete_object(Bucket=BUCKET, Key=urls[0].split("/", 3)[3])
    client.put_object(Bucket=BUCKET, Key=urls[1].split("/", 3)[3], Body=b"{}")  # not current: read one by one
    with pytest.raises(S3Error, match=r"cannot read the shard report s3://inventory-bucket/dig/out/shards/a/shard-0"):
        digests.read_reports(client, urls, folder)


def test_timestamps_as_the_inventory_reads_them() -> None:
    """The inventory's client keeps the server's timestamp strings (no dateutil per key); each form a server may send
    reads as the same instant as botocore's parsed datetime."""
    from datetime import UTC, datetime

    from neucodec_workflow.storage.s3 import timestamp

    when = datetime(2026, 11, 30, 10, 25, 51, 250000, tzinfo=UTC).timestamp()
    assert timestamp(datetime(2026, 11, 30, 10, 25, 51, 250000, tzinfo=UTC)) == when
    assert timestamp("2026-11-30T10:25:51.250Z") == when
    assert timestamp("2026-11-30T10:25:51.250000+00:00") == when
    assert timestamp("Mon, 30 Nov 2026 10:25:51 GMT") == when - 0.25


def test_inventory_missing_bucket_names_the_url(server: Any, settings: S3Settings) -> None:
    inv = Inventory(settings, [f"s3://{BUCKET}/fine", "s3://no-such-bucket/corpus/v1"])
    with pytest.raises(S3Error, match=r"cannot list s3://no-such-bucket/corpus/v1 at http://127\.0\.0\.1:\d+: NoSuch"):
        inv.load()
    with pytest.raises(S3Error, match="no-such-bucket"):  # not cached as an empty listing
        inv.exists(BUCKET, "fine/x")


# -- shard lists -----------------------------------------------------------------------------------------------------


def touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def test_shard_list_explicit_and_file(tmp_path: Path) -> None:
    corpus = str(tmp_path / "no-such-corpus")  # an explicit list needs no discovery
    assert shard_list(corpus, ["b/shard-1", "a/shard-0/", " c "]) == ["b/shard-1", "a/shard-0", "c"]
    listed = tmp_path / "shards.txt"
    listed.write_text("# shards to encode\n\na/shard-0\n  b/shard-1/  \n# b/shard-2\n\n")
    assert shard_list(corpus, None, str(listed)) == ["a/shard-0", "b/shard-1"]
    assert shard_list(corpus, ["x"], str(listed)) == ["x"], "the config list wins over the file"


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["a/shard-0", "b", "a/shard-0/"], r"shards listed twice: \['a/shard-0'\]"),
        (["a/../../etc"], "leaves the corpus"),
        ([".."], "leaves the corpus"),
        (["a/./b"], "not normalised"),
        (["a//b"], "not normalised"),
    ],
)
def test_shard_list_rejects(tmp_path: Path, names: list[str], message: str) -> None:
    with pytest.raises(ShardListError, match=message):
        shard_list(str(tmp_path), names)
    listed = tmp_path / "shards.txt"
    listed.write_text("\n".join(names))
    with pytest.raises(ShardListError, match=message):
        shard_list(str(tmp_path), None, str(listed))


def test_shard_list_discovers_nested_local_shards(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    for shard in ("en/2024/shard-0", "en/2024/shard-1", "fr/shard-0", "de"):
        touch(corpus / shard / "audio.tar")
    touch(corpus / "audio.tar")  # at the corpus root: not a shard
    touch(corpus / "es/shard-0/metadata.parquet")  # no audio.tar: not a shard
    (corpus / "it/shard-0/audio.tar").mkdir(parents=True)  # a directory named audio.tar: not a shard
    expected = ["de", "en/2024/shard-0", "en/2024/shard-1", "fr/shard-0"]
    assert shard_list(str(corpus)) == expected == discover_local(corpus)
    assert shard_list(str(corpus), [], None) == expected, "an empty list means discovery"


def test_shard_list_empty_or_missing_corpus(tmp_path: Path) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(ShardListError, match="no shard .* under corpus"):
        shard_list(str(tmp_path / "empty"))
    with pytest.raises(ShardListError, match="does not exist"):
        shard_list(str(tmp_path / "missing"))
    with pytest.raises(ShardListError, match="needs the run's S3 inventory"):
        shard_list("s3://bucket/corpus")


def test_shard_list_from_the_s3_inventory(server: Any, client: Any, settings: S3Settings) -> None:
    put(client, BUCKET, "disc/corpus/audio.tar")  # at the corpus root: not a shard
    put(client, BUCKET, "disc/corpus/en/shard-0/audio.tar", "disc/corpus/en/shard-0/metadata.parquet")
    put(client, BUCKET, "disc/corpus/en/deep/shard-1/audio.tar", "disc/corpus/fr/shard-2/metadata.parquet")
    put(client, BUCKET, "disc/corpus2/en/shard-9/audio.tar", "disc/corpus/en/shard-3/audio.tar.bak")
    inv = Inventory(settings, [f"s3://{BUCKET}/disc/corpus", f"s3://{BUCKET}/disc/empty"])
    server.reset()
    assert shard_list(f"s3://{BUCKET}/disc/corpus/", inventory=inv) == ["en/deep/shard-1", "en/shard-0"]
    with pytest.raises(ShardListError, match=f"no shard .* under corpus s3://{BUCKET}/disc/empty"):
        shard_list(f"s3://{BUCKET}/disc/empty", inventory=inv)
    assert server.counts()["total"] == 2  # one listing per root, shared by both


# -- upstream versions -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("installed", "tested", "ok"),
    [
        ("2.11.0", "2.11", True),
        ("2.11.0+cu130", "2.11", True),
        ("2.11.0+cu130", "2.11.0", True),
        ("2.11.1", "2.11", True),
        ("2.110.0", "2.11", False),
        ("2.1.0", "2.11", False),
        ("2.12.0+cu130", "2.11", False),
        ("9.27.1", "9.27.1", True),
        ("9.27.10", "9.27.1", False),
        ("not installed", "0.3.6", False),
    ],
)
def test_upstream_matches(installed: str, tested: str, ok: bool) -> None:
    assert upstream.matches(installed, tested) is ok


def test_upstream_require_raises_on_an_untested_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(upstream.OVERRIDE_ENV, raising=False)
    monkeypatch.setattr(upstream, "TESTED", {**upstream.TESTED, "snakemake": "0.0.1", "no-such-package-xyz": "1.0"})
    installed = upstream.installed("snakemake")
    with pytest.raises(upstream.UntestedVersionError) as err:
        upstream.require("snakemake", "no-such-package-xyz", "snakemake-storage-plugin-s3")
    message = str(err.value)
    assert f"snakemake {installed} (tested: 0.0.1)" in message
    assert "no-such-package-xyz not installed (tested: 1.0)" in message
    assert "snakemake-storage-plugin-s3" not in message, "only the mismatches are named"
    assert upstream.OVERRIDE_ENV in message and "docs/upstream.md" in message


def test_upstream_override_turns_the_error_into_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(upstream, "TESTED", {**upstream.TESTED, "torch": "0.1"})
    monkeypatch.setenv(upstream.OVERRIDE_ENV, "1")
    with caplog.at_level(logging.WARNING, logger=upstream.__name__):
        upstream.require("torch")
    assert f"torch {upstream.installed('torch')} (tested: 0.1)" in caplog.text and upstream.OVERRIDE_ENV in caplog.text
    monkeypatch.setenv(upstream.OVERRIDE_ENV, "yes")  # only "1" overrides
    with pytest.raises(upstream.UntestedVersionError):
        upstream.require("torch")


def test_upstream_tested_versions_are_installed() -> None:
    """The environment the tests run in is the tested one (requirements.txt); otherwise the guards prove nothing."""
    upstream.require(*upstream.TESTED)


def test_live_inventory_looks_up_outputs_made_elsewhere_once(server: Any, client: Any, settings: S3Settings) -> None:
    """After go_live (the run executes jobs), an expected key the listing lacks gets one HEAD: found, remembered;
    not found, believed for ABSENT_SECONDS. Keys not expected, or outside the roots, never cost a request; a dry-run
    (not live) answers from the listing only."""
    from neucodec_workflow.storage import inventory as inventory_module

    put(client, BUCKET, "live/data/s1/audio.tar")
    inv = Inventory(settings, [f"s3://{BUCKET}/live"])
    inv.load()
    put(client, BUCKET, "live/data/s1/neucodec_tokens.parquet", body=b"tokens")  # a cluster job's upload
    server.reset()
    assert inv.info(BUCKET, "live/data/s1/neucodec_tokens.parquet") is None, "not live: the listing's answer"
    assert server.counts()["total"] == 0

    made = f"s3://{BUCKET}/live/data/s1/neucodec_tokens.parquet"
    pending = f"s3://{BUCKET}/live/data/s2/neucodec_tokens.parquet"
    inv.go_live(expected=[made, pending])
    found = inv.info(BUCKET, "live/data/s1/neucodec_tokens.parquet")
    assert found is not None and found.size == 6
    assert inv.exists(BUCKET, "live/data/s1/neucodec_tokens.parquet") and inv.exists(BUCKET, "live/data/s1")
    assert not inv.exists(BUCKET, "live/data/s2/neucodec_tokens.parquet")
    assert not inv.exists(BUCKET, "live/data/s2/neucodec_tokens.parquet"), "the absent answer holds a moment"
    assert not inv.exists(BUCKET, "live/out/stats.json"), "not expected: this process would know it"
    assert server.counts()["by_method"] == {"HEAD": 2}

    put(client, BUCKET, "live/data/s2/neucodec_tokens.parquet", body=b"later")
    inv._absent = {k: t - inventory_module.ABSENT_SECONDS - 1 for k, t in inv._absent.items()}  # time passes
    assert inv.info(BUCKET, "live/data/s2/neucodec_tokens.parquet") is not None
    assert server.counts()["by_method"] == {"HEAD": 3, "PUT": 1}


def test_multipart_threshold_publish_and_abandoned_uploads(
    server: Any, client: Any, settings: S3Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From NEUCODEC_S3_MULTIPART_BYTES a file goes as a multipart upload; publish() sends each S3 output once and
    removes its local file, leaving local destinations alone; abort_abandoned_uploads() aborts the open multipart
    uploads of our keys only."""
    from neucodec_workflow.storage.uploads import MULTIPART_ENV, abort_abandoned_uploads, multipart_bytes, publish

    for name in SETTING_NAMES:
        monkeypatch.setenv(ENV_PREFIX + name.upper(), getattr(settings, name) or "")
    monkeypatch.setenv(MULTIPART_ENV, "1000")
    assert multipart_bytes() == 1000
    big, small, local = tmp_path / "big.parquet", tmp_path / "small.json", tmp_path / "local.json"
    big.write_bytes(b"b" * 5000)
    small.write_bytes(b"s" * 10)
    local.write_bytes(b"l")
    server.reset()
    publish(
        {f"s3://{BUCKET}/mp/data/s/neucodec_tokens.parquet": str(big), f"s3://{BUCKET}/mp/out/r.json": str(small)},
        None,
    )
    publish({str(local): str(local)}, None)
    kinds = server.counts()["by_method"]
    assert kinds.get("POST") == 2 and kinds.get("PUT") == 2, f"one multipart upload (create, part, complete): {kinds}"
    assert not big.exists() and not small.exists() and local.exists()
    assert client.get_object(Bucket=BUCKET, Key="mp/data/s/neucodec_tokens.parquet")["Body"].read() == b"b" * 5000

    monkeypatch.setenv(MULTIPART_ENV, "0")
    with pytest.raises(S3Error, match=MULTIPART_ENV):
        multipart_bytes()

    ours = client.create_multipart_upload(Bucket=BUCKET, Key="mp/data/t/neucodec_tokens.parquet")["UploadId"]
    theirs = client.create_multipart_upload(Bucket=BUCKET, Key="mp/data/t/audio.tar")["UploadId"]
    aborted = abort_abandoned_uploads(client, [(BUCKET, "mp")], lambda url: url.endswith("/neucodec_tokens.parquet"))
    assert aborted == [f"s3://{BUCKET}/mp/data/t/neucodec_tokens.parquet"]
    left = client.list_multipart_uploads(Bucket=BUCKET, Prefix="mp/").get("Uploads", [])
    assert [(u["Key"], u["UploadId"]) for u in left] == [("mp/data/t/audio.tar", theirs)]
    assert ours != theirs
    client.abort_multipart_upload(Bucket=BUCKET, Key="mp/data/t/audio.tar", UploadId=theirs)


# -- the read-ahead stream (streams.ReadAhead over background.Prefetched) ---------------------------------------------


class _CountingBody:
    """An endless body of ``n``-byte reads, counting them; ``closed`` once the stream lets it go."""

    def __init__(self) -> None:
        self.reads, self.closed = 0, False

    def read(self, n: int) -> bytes:
        self.reads += 1
        return bytes([self.reads % 256]) * n

    def close(self) -> None:
        self.closed = True


def test_read_ahead_is_bounded_and_a_close_stops_the_download() -> None:
    """``depth`` chunks wait and one more is read, no further; closing the stream early ends the download: its
    thread ends and the body is closed, without the reader waiting for it."""
    from neucodec_workflow.storage.streams import ReadAhead

    body = _CountingBody()

    class Client:
        def get_object(self, **kwargs: Any) -> dict[str, Any]:
            return {"Body": body, "ContentLength": 1 << 40}

    stream = ReadAhead(Client(), "b", "k", chunk_size=1000, depth=2)
    deadline = time.monotonic() + 5
    while body.reads < 3 and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(0.05)
    assert body.reads == 3  # two waiting, one being read: then the thread waits for room
    assert stream.read(1500) == bytes([1]) * 1000  # a raw read: one chunk at most
    assert stream.read(200) == bytes([2]) * 200
    stream.close()
    stream._chunks._thread.join(5)
    assert not stream._chunks._thread.is_alive() and body.closed
    assert body.reads <= 5


def test_read_ahead_raises_the_downloads_error_in_the_readers_thread() -> None:
    """An error that stays comes out of ``read`` (after the bytes before it), naming the object; then EOF."""
    from neucodec_workflow.storage.streams import ReadAhead

    class Client:
        def get_object(self, **kwargs: Any) -> dict[str, Any]:
            from botocore.exceptions import ClientError

            raise ClientError({"Error": {"Code": "AccessDenied"}, "ResponseMetadata": {"HTTPStatusCode": 403}}, "Get")

    stream = ReadAhead(Client(), "b", "k")
    with pytest.raises(S3Error, match=r"^s3://b/k: AccessDenied \(HTTP 403\)$"):
        stream.read(10)
    assert stream.read(10) == b""
    stream.close()
