"""The workflow on S3: a counting moto server on 127.0.0.1 started here, fake credentials, never AWS.

Every Snakemake run gets an explicit loopback endpoint and NEUCODEC_S3_REQUIRE_ENDPOINT=1, AWS_* variables and config
files are cleared, and the secret key is a sentinel that must not appear in any log, report, output or object.
Snakemake runs as ``python -m snakemake`` (the interpreter running the tests) in a temporary working directory, so
nothing is written into the repository and no virtual environment at a fixed path is needed.
"""

from __future__ import annotations

import inspect
import io
import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

pytestmark = pytest.mark.s3

REPO = Path(__file__).resolve().parents[1]
ACCESS_KEY = "AKIALOOPBACKTEST"
SECRET = "SENTINEL-s3cret-do-not-print-7f3a9c"
BUCKET = "corpus-bucket"
TOKENS = "neucodec_tokens.parquet"
PENDING = re.compile(r"^\s*wildcards: shard=(\S+)", re.M)


@pytest.fixture(scope="module")
def server() -> Iterator[Any]:
    pytest.importorskip("moto")
    from support.loopback_s3 import LoopbackS3

    with LoopbackS3() as s3:
        assert s3.endpoint.startswith("http://127.0.0.1:")
        yield s3


@pytest.fixture(scope="module")
def client(server: Any) -> Any:
    from neucodec_workflow.storage.s3 import S3Settings

    c = S3Settings(endpoint_url=server.endpoint, region="us-east-1", access_key=ACCESS_KEY, secret_key=SECRET).client()
    c.create_bucket(Bucket=BUCKET)
    return c


@pytest.fixture(scope="module")
def checkpoint(random_ckpt: Path) -> Path:
    """Seeded random weights of the real architecture, saved once per session (conftest.py)."""
    return random_ckpt


def s3_env(endpoint: str, home: Path) -> dict[str, str]:
    assert endpoint.startswith("http://127.0.0.1:"), "S3 tests must use the loopback server"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SNAKEMAKE_STORAGE_S3_"))}
    env.update(
        SNAKEMAKE_STORAGE_S3_ENDPOINT_URL=endpoint,
        SNAKEMAKE_STORAGE_S3_REGION="us-east-1",
        SNAKEMAKE_STORAGE_S3_ACCESS_KEY=ACCESS_KEY,
        SNAKEMAKE_STORAGE_S3_SECRET_KEY=SECRET,
        NEUCODEC_S3_REQUIRE_ENDPOINT="1",
        AWS_CONFIG_FILE=str(home / "no-aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(home / "no-aws-credentials"),
        AWS_EC2_METADATA_DISABLED="true",
    )
    return env


def put_shard(client: Any, prefix: str, shard: str, *, seed: int, corrupt: bool = False, seconds: float = 1.0) -> int:
    from support.loopback_s3 import shard_bytes

    tar, meta = shard_bytes(2, seconds, seed=seed, corrupt=corrupt)
    client.put_object(Bucket=BUCKET, Key=f"{prefix}/{shard}/audio.tar", Body=tar)
    client.put_object(Bucket=BUCKET, Key=f"{prefix}/{shard}/metadata.parquet", Body=meta)
    return len(tar) + len(meta)


def keys(client: Any, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/")
    return sorted(o["Key"] for p in pages for o in p.get("Contents", []))


def snakemake_args(workdir: Path, prefix: str, checkpoint: Path, *extra: str, probe: Path | None = None) -> list[str]:
    """The real Snakemake CLI; with ``probe``, its storage transfers are recorded there (support/storage_probe.py)."""
    from support.loopback_s3 import snakemake_s3_command

    return snakemake_s3_command(REPO, workdir, f"s3://{BUCKET}/{prefix}", str(checkpoint), *extra, probe=probe)


def run(args: list[str], env: dict[str, str], **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run from the work directory (``--directory``), never from the repository."""
    workdir = Path(args[args.index("--directory") + 1])
    return subprocess.run(args, env=env, capture_output=True, text=True, cwd=workdir, timeout=300, **kw)


class HeldTars:
    """Loopback-server middleware: a GET of an ``audio.tar`` under ``prefix`` is received (and counted) but answered
    only after ``release()``. A job streaming that tar cannot finish, so it is mid-encode for as long as we like."""

    def __init__(self, server: Any, prefix: str):
        self.counting, self.inner = server.app, server.app.app
        self.prefix = f"/{BUCKET}/{prefix}/"
        self.held: list[str] = []
        self._released = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        if environ["REQUEST_METHOD"] == "GET" and path.startswith(self.prefix) and path.endswith("/audio.tar"):
            with self._lock:
                self.held.append(path[len(self.prefix) : -len("/audio.tar")])
            self._released.wait(timeout=600)
        return self.inner(environ, start_response)

    def held_shards(self) -> list[str]:
        with self._lock:
            return list(self.held)

    def release(self) -> None:
        self._released.set()

    @property
    def released(self) -> bool:
        return self._released.is_set()

    def __enter__(self) -> HeldTars:
        self.counting.app = self
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
        self.counting.app = self.inner


def assert_no_secret(workdir: Path, *texts: str, client: Any = None, prefix: str = "") -> None:
    for text in texts:
        assert SECRET not in text
    for f in workdir.rglob("*"):
        if f.is_file():
            assert SECRET.encode() not in f.read_bytes(), f"secret leaked into {f}"
    if client is not None:
        for key in keys(client, prefix):
            assert SECRET.encode() not in client.get_object(Bucket=BUCKET, Key=key)["Body"].read(), (
                f"secret in s3://{BUCKET}/{key}"
            )


def assert_tokens_valid(client: Any, key: str, seconds: float = 1.0) -> None:
    df = pd.read_parquet(io.BytesIO(client.get_object(Bucket=BUCKET, Key=key)["Body"].read()))
    assert len(df) == 2 and (df["token_count"] == int(seconds * 50)).all()


def assert_local_storage_bounded(probe: Path, client: Any, uploaded: list[str], input_bytes: int) -> list[dict]:
    """Local disk of the storage plugin, from every transfer it made and every upload of a job (recorded as they
    happen, so no peak can be missed): no input was downloaded, exactly the token files ``uploaded`` were sent, each
    by its encode job (never by Snakemake) and gone from local disk at the next record, and never more than one token
    file plus one other output at once (one encode job runs at a time; the derive job reads the object)."""
    from support.storage_probe import read

    ops = read(probe)
    assert ops, "the storage probe recorded nothing"
    assert not [o["query"] for o in ops if o["op"] == "retrieve"], "an input was downloaded (it must be streamed)"
    sent = [o for o in ops if o["op"] == "job_store"]
    assert sorted(o["query"] for o in sent) == sorted(uploaded), ops
    assert not [o["query"] for o in ops if o["op"] == "store" and o["query"].endswith(TOKENS)], "Snakemake sent one"
    for o in sent:
        bucket_key = o["query"].removeprefix("s3://").split("/", 1)
        assert o["bytes"] == client.head_object(Bucket=bucket_key[0], Key=bucket_key[1])["ContentLength"]
        later = ops[ops.index(o) + 1 :]
        assert not [x for x in later if any(f.endswith(o["local"]) for f in x["storage_files"])], f"{o['query']} kept"
    stores = [o for o in ops if o["op"] == "store"]
    tokens = max((o["bytes"] for o in sent), default=0)
    others = [o["bytes"] for o in stores]
    peak = max(o["storage_bytes"] for o in ops)
    assert peak <= tokens + max(others, default=0) + 64 * 1024, (peak, tokens, others)
    assert peak < input_bytes, (peak, input_bytes)  # the shard's inputs never touch local disk
    return ops


def part_keys(shard: str) -> list[str]:
    """A shard's parts in the three formats (one split: the tests' shards have one speaker)."""
    return [
        f"sft_dataset/data/train/{shard}.parquet",
        f"multilingual_tts/train/{shard}.mds",
        f"neutts/data/train/{shard}.parquet",
    ]


def assert_sent_one_at_a_time(probe: Path, sent_by_job: list[str]) -> None:
    """The derive job uploaded every report and part itself (never Snakemake), each from a staging file in the local
    storage prefix that was gone before the next one was written: at no record were two of them on local disk."""
    from support.storage_probe import read

    ops = read(probe)
    sent = [o for o in ops if o["op"] == "job_store"]
    assert sorted(o["query"] for o in sent) == sorted(sent_by_job), [o["query"] for o in sent]
    assert all(o["bytes"] > 0 for o in sent), sent
    assert not [o["query"] for o in ops if o["op"] == "store" and o["query"] in sent_by_job], "Snakemake uploaded one"
    for o in ops:  # a substring test: it also catches a file still under its temporary name (.x.parquet.tmp-PID)
        staged = [
            f
            for f in o["storage_files"]
            if "/out/shards/" in f or any(n in f.rsplit("/", 1)[-1] for n in (".parquet", ".mds"))
        ]
        assert len(staged) <= 1, (o["op"], o["query"], staged)


# ------------------------------------------------------------------------------------------------------------------


def test_pinned_versions_and_plugin_internals() -> None:
    """Fails loudly when an upgrade changes what storage/plugin.py patches or relies on (docs/upstream.md)."""
    import snakemake.api  # noqa: F401 (the import order snakemake itself uses; avoids a circular import)
    from snakemake.dag import DAG
    from snakemake.io import _IOFile, get_flag_value, wait_for_files
    from snakemake_interface_storage_plugins.storage_object import StorageObjectRead
    from snakemake_storage_plugin_s3 import StorageObject, StorageProvider

    from neucodec_workflow import upstream
    from neucodec_workflow.storage.plugin import PATCHED_METHODS

    upstream.require("snakemake", "snakemake-storage-plugin-s3")
    for name in PATCHED_METHODS:
        assert callable(getattr(StorageObject, name)), name
    assert inspect.iscoroutinefunction(StorageObject.inventory)
    # the plugin's behaviours the patches replace
    assert "head_bucket" in inspect.getsource(StorageObject.bucket_exists)
    assert ".delete()" in inspect.getsource(StorageObject.remove) and "objects.all()" in inspect.getsource(
        StorageObject.remove
    )
    assert "get_inventory_parent" in inspect.getsource(StorageObject.inventory)
    # rules/common.smk reads the plugin's settings through get_flag_value(storage.s3(url), "storage_object")
    assert list(inspect.signature(get_flag_value).parameters) == ["value", "flag_type"]
    # rules/common.smk::local_copy: a local copy lives at {provider.local_prefix}/{bucket}/{key}
    assert 'return f"{self.bucket}/{key}"' in inspect.getsource(StorageObject._local_suffix_from_key)
    local_path = inspect.getsource(StorageObjectRead.local_path)
    assert "self.provider.local_prefix / self.local_suffix()" in local_path and "_overwrite_local_path" in local_path
    # storage/plugin.py keeps the provider's is_valid_query answers: a classmethod of the query alone
    assert isinstance(inspect.getattr_static(StorageProvider, "is_valid_query"), classmethod)
    assert list(inspect.signature(StorageProvider.is_valid_query).parameters) == ["query"]
    # snakemake asks through managed_exists / managed_mtime / managed_size, which call exists / mtime / size
    src = inspect.getsource(_IOFile)
    for call in (
        "storage_object.managed_exists()",
        "storage_object.managed_mtime()",
        "storage_object.managed_size()",
        "storage_object.inventory(cache)",
    ):
        assert call in src, call
    # local copies of outputs that no pending job needs are removed right after upload (bounded disk)
    assert "Removing local copy of storage file" in inspect.getsource(DAG.handle_storage)
    # a retrieve=False output (a dataset part the derive job uploads itself, storage/uploads.py) is not uploaded by
    # Snakemake, and is checked in storage, not on local disk, after its job
    assert "not f.should_not_be_retrieved_from_storage" in inspect.getsource(DAG.handle_storage)
    waits = inspect.getsource(wait_for_files)
    assert "f.should_not_be_retrieved_from_storage" in waits and "exists_in_storage()" in waits
    # a remote job's processes upload at their end only what is on local disk: an output its job sent and removed
    # (the token file, uploads.publish) is not sent again
    assert "await f.exists_local()" in inspect.getsource(DAG.store_storage_outputs)


def test_missing_endpoint_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from neucodec_workflow.storage.s3 import S3Error, S3Settings

    monkeypatch.setenv("NEUCODEC_S3_REQUIRE_ENDPOINT", "1")
    with pytest.raises(S3Error, match="refusing to use AWS"):
        S3Settings(access_key="x", secret_key="y").client()
    settings = S3Settings(endpoint_url="http://127.0.0.1:1", access_key=ACCESS_KEY, secret_key=SECRET)
    assert SECRET not in repr(settings)
    config = settings.client().meta.config  # the same checksum settings the plugin forces process-wide
    assert (config.request_checksum_calculation, config.response_checksum_validation) == (
        "when_required",
        "when_required",
    )


@pytest.mark.workflow
def test_dry_run_requests_and_pending_list(server: Any, client: Any, checkpoint: Path, tmp_path: Path) -> None:
    """300 shards (tiny objects), 290 with tokens and no other output anywhere: a handful of LISTs, exactly the 10
    shards without tokens pending for encoding; the 290 others are only derived (3 batch jobs), never re-encoded.
    With --forcerun encode_shard (the documented deliberate re-encode) every shard's encode job is listed."""
    prefix, n, pending = "dry", 300, set(range(0, 300, 30))
    for i in range(n):
        shard = f"part-{i // 100}/shard-{i:05d}"
        for name in ("audio.tar", "metadata.parquet") + (() if i in pending else ("neucodec_tokens.parquet",)):
            client.put_object(Bucket=BUCKET, Key=f"{prefix}/{shard}/{name}", Body=b"x")
    server.reset()
    t = time.perf_counter()
    r = run(snakemake_args(tmp_path, prefix, checkpoint, "-n"), s3_env(server.endpoint, tmp_path))
    wall = time.perf_counter() - t
    assert r.returncode == 0, r.stderr[-3000:]
    counts = server.counts()
    assert set(PENDING.findall(r.stdout)) == {f"part-{i // 100}/shard-{i:05d}" for i in pending}
    jobs = {m[0]: int(m[1]) for m in re.findall(r"^(\w+)\s+(\d+)$", r.stdout, re.M)}
    assert jobs["encode_shard"] == 10 and jobs["derive_shard"] == 10, jobs
    assert sum(v for k, v in jobs.items() if k.startswith("derive_batch_")) == 3, jobs  # 290 shards, 100 per batch
    assert counts["total"] <= 5, counts  # 900-1,190 objects: 1-2 listing pages
    assert wall < 60
    forced = run(
        snakemake_args(tmp_path, prefix, checkpoint, "-n", "-R", "encode_shard"), s3_env(server.endpoint, tmp_path)
    )
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert re.search(r"^encode_shard\s+300$", forced.stdout, re.M), forced.stdout[-3000:]
    assert_no_secret(tmp_path, r.stdout, r.stderr)


@pytest.mark.workflow
def test_end_to_end_failure_rerun_requests_and_disk(server: Any, client: Any, checkpoint: Path, tmp_path: Path) -> None:
    """3 shards, one with an unreadable tar: 2 encode, 1 fails; dry-run lists it; fixed, a rerun runs only it."""
    prefix = "e2e/corpus"
    shards = ["en/shard-0", "en/shard-1", "fr/shard-2"]
    sizes = [put_shard(client, prefix, s, seed=i, corrupt=(s == "fr/shard-2")) for i, s in enumerate(shards)]
    env = s3_env(server.endpoint, tmp_path)
    server.reset()
    probe = tmp_path / "storage-probe.jsonl"
    r = run(snakemake_args(tmp_path, prefix, checkpoint, "--keep-going", probe=probe), env)
    assert r.returncode != 0, "the corrupt shard must fail the run"
    first = server.counts()
    tokens = [f"{prefix}/{s}/neucodec_tokens.parquet" for s in shards]
    present = keys(client, prefix)
    assert tokens[0] in present and tokens[1] in present and tokens[2] not in present
    for key in tokens[:2]:
        assert_tokens_valid(client, key)
    assert first["total"] <= 25 * 2, first  # 2 shards encoded (+1 failed)
    assert_local_storage_bounded(probe, client, [f"s3://{BUCKET}/{t}" for t in tokens[:2]], max(sizes))
    assert "shard fr/shard-2: cannot read audio.tar" in r.stdout + r.stderr
    assert (tmp_path / "out/shards/en/shard-0.json").exists() and (tmp_path / "out/shards/en/shard-1.json").exists()

    server.reset()
    dry = run(snakemake_args(tmp_path, prefix, checkpoint, "-n"), env)
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert set(PENDING.findall(dry.stdout)) == {"fr/shard-2"}
    assert server.counts()["total"] <= 3

    put_shard(client, prefix, "fr/shard-2", seed=2)
    server.reset()
    probe.unlink()
    r2 = run(snakemake_args(tmp_path, prefix, checkpoint, probe=probe), env)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert re.search(r"^encode_shard\s+1$", r2.stdout + r2.stderr, re.M), "only the failed shard reruns"
    assert server.counts()["total"] <= 25 + 3  # one shard encoded (its metadata read again by its derive job)
    assert_tokens_valid(client, tokens[2])
    assert_local_storage_bounded(probe, client, [f"s3://{BUCKET}/{tokens[2]}"], max(sizes))
    assert (tmp_path / "out/sft_dataset/README.md").exists() and (tmp_path / "out/stats.json").exists()
    assert not list((tmp_path / ".snakemake/storage").rglob("*.parquet")), "local copies of tokens left behind"

    client.delete_object(Bucket=BUCKET, Key=tokens[0])  # a deleted output is re-made, though its report exists
    dry2 = run(snakemake_args(tmp_path, prefix, checkpoint, "-n"), env)
    assert dry2.returncode == 0 and set(PENDING.findall(dry2.stdout)) == {"en/shard-0"}, dry2.stdout[-3000:]
    assert_no_secret(tmp_path, r.stdout, r.stderr, dry.stdout, r2.stdout, r2.stderr, client=client, prefix=prefix)


@pytest.mark.workflow
def test_sigkill_mid_encode_then_rerun(server: Any, client: Any, checkpoint: Path, tmp_path: Path) -> None:
    """SIGKILL of the whole run while a shard encodes: no partial object; after --unlock a rerun finishes all.

    Deterministic: the loopback server holds the encode job's GET of its audio.tar, so the job cannot finish; the kill
    lands once the model is loaded and the tokens writer has opened its temporary file, and the output does not
    exist."""
    prefix = "killed"
    shards = ["a/shard-0", "a/shard-1"]
    for i, s in enumerate(shards):
        put_shard(client, prefix, s, seed=10 + i, seconds=2.0)
    env = s3_env(server.endpoint, tmp_path)
    local = tmp_path / ".snakemake" / "storage" / "s3" / BUCKET / prefix
    with HeldTars(server, prefix) as hold:
        proc = subprocess.Popen(
            snakemake_args(tmp_path, prefix, checkpoint),
            env=env,
            cwd=tmp_path,
            start_new_session=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

        def encoding() -> str | None:
            """The shard whose job is inside write_tokens, waiting for its held tar, with no output yet."""
            for shard in hold.held_shards():
                log = tmp_path / "out/logs/encode" / f"{shard}.log"
                if (
                    log.exists()
                    and "SEEDED RANDOM" in log.read_text()  # the model is loaded; encode_shard is next
                    and list((local / shard).glob(".neucodec_tokens.parquet.tmp-*"))  # the tokens writer is open
                ):
                    return shard
            return None

        deadline, shard = time.time() + 240, None
        while time.time() < deadline and proc.poll() is None and (shard := encoding()) is None:
            time.sleep(0.2)
        if shard is None:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"no encode job reached the held tar (exit {proc.poll()}):\n{proc.communicate()[0][-3000:]}")
        tokens_key = f"{prefix}/{shard}/neucodec_tokens.parquet"
        assert not (local / shard / "neucodec_tokens.parquet").exists() and tokens_key not in keys(client, prefix)
        assert not hold.released and proc.poll() is None
        os.killpg(proc.pid, signal.SIGKILL)  # mid-encode: the job's tar is still held
        output, _ = proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert tokens_key not in keys(client, prefix), "a killed job's output reached the bucket"
    for key in keys(client, prefix):
        if key.endswith("neucodec_tokens.parquet"):
            assert_tokens_valid(client, key, 2.0)  # whatever exists is complete
    unlock = run(snakemake_args(tmp_path, prefix, checkpoint, "--unlock"), env)
    assert unlock.returncode == 0, unlock.stderr[-3000:]
    r = run(snakemake_args(tmp_path, prefix, checkpoint, "--until", "encode_shard"), env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert re.search(rf"^encode_shard\s+{len(shards)}$", r.stdout + r.stderr, re.M), "both shards encode on the rerun"
    for s in shards:
        assert_tokens_valid(client, f"{prefix}/{s}/neucodec_tokens.parquet", 2.0)
    assert not [k for k in keys(client, prefix) if ".tmp-" in k], "a temporary file was uploaded"
    assert_no_secret(tmp_path, output, r.stdout, r.stderr, client=client, prefix=prefix)


def put_foreign_shard(client: Any, prefix: str, shard: str, rows: int, seed: int) -> None:
    """A shard encoded elsewhere: a token file with the contract's columns only (no key-value metadata), its
    metadata, and a placeholder tar (never read: the shard is not encoded again)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from neucodec_workflow.record.contract import SCHEMA

    rng = np.random.default_rng(seed)
    ids = [f"{shard.replace('/', '_')}_{i}" for i in range(rows)]
    blobs = [rng.integers(0, 65536, 20 + i, dtype="<u2").tobytes() for i in range(rows)]
    buf = io.BytesIO()
    pq.write_table(pa.table([ids, blobs, [len(b) // 2 for b in blobs]], schema=SCHEMA.with_metadata(None)), buf)
    meta = pd.DataFrame({"segment_id": ids, "text": [f"text {i}" for i in range(rows)], "speaker": "s"})
    mbuf = io.BytesIO()
    meta.to_parquet(mbuf)
    for name, body in (
        ("audio.tar", b"x"),
        ("metadata.parquet", mbuf.getvalue()),
        ("neucodec_tokens.parquet", buf.getvalue()),
    ):
        client.put_object(Bucket=BUCKET, Key=f"{prefix}/{shard}/{name}", Body=body)


@pytest.mark.workflow
def test_dataset_in_s3_from_adopted_token_files(server: Any, client: Any, checkpoint: Path, tmp_path: Path) -> None:
    """output: s3://... over shards encoded elsewhere, all three training-data formats: no encode job; reports,
    per-shard parts, cards, indexes and stats are objects; at most 6 requests per shard plus a constant (no HEAD:
    what the job uploads itself is known from its receipt); one report or part on local disk at a time; summarize
    reads the reports from the job's digest; nothing left on local disk; a deleted report is re-derived (that
    shard only), and summarize then reads both digests, no report one by one."""
    from support.loopback_s3 import snakemake_s3_command

    from neucodec_workflow.demo.tokenizer import build_test_tokenizer

    tokenizer = build_test_tokenizer(tmp_path / "tokenizer")
    formats = f"sft={{'formats': [hf, multilingual_tts, neutts], 'multilingual_tts': {{'tokenizer': '{tokenizer}'}}}}"

    prefix, shards = "adopt", ["a/shard-0", "a/shard-1", "b/shard-2"]
    for i, shard in enumerate(shards):
        put_foreign_shard(client, f"{prefix}/corpus", shard, rows=3, seed=i)
    env = s3_env(server.endpoint, tmp_path)
    out = f"s3://{BUCKET}/{prefix}/out"

    def cmd(*extra: str, probe: Path | None = None) -> list[str]:
        return snakemake_s3_command(
            REPO, tmp_path, f"s3://{BUCKET}/{prefix}/corpus", str(checkpoint), formats, *extra, output=out, probe=probe
        )

    server.reset()
    probe = tmp_path / "storage-probe.jsonl"
    r = run(cmd(probe=probe), env)
    assert r.returncode == 0, r.stderr[-3000:]
    counts = server.counts()
    assert not re.search(r"^encode_shard\s+\d", r.stdout + r.stderr, re.M) and re.search(
        r"^derive_batch_0\s+1$", r.stdout + r.stderr, re.M
    )
    # per shard: GET tokens and metadata, PUT report and 3 parts; once: the summary's 7 files, the report's 7
    # figures, the report digest (PUT by the job; LIST of reports and digests, GET by summarize)
    assert counts["total"] <= 6 * len(shards) + 24, counts
    assert "HEAD" not in counts["by_method"], counts
    assert_sent_one_at_a_time(probe, [f"{out}/{p}" for s in shards for p in [f"shards/{s}.json", *part_keys(s)]])
    present = set(keys(client, f"{prefix}/out"))
    digests = sorted(k for k in present if k.startswith(f"{prefix}/out/.report_digests/"))
    assert len(digests) == 1, digests
    summarize_log = tmp_path / "local_output/logs/summarize.log"
    assert "read 3 shard reports: 3 from 1 digests, 0 one by one" in summarize_log.read_text()

    def get(name: str) -> bytes:
        return client.get_object(Bucket=BUCKET, Key=f"{prefix}/out/{name}")["Body"].read()

    for shard in shards:
        assert f"{prefix}/out/shards/{shard}.json" in present
        assert len(pd.read_parquet(io.BytesIO(get(f"sft_dataset/data/train/{shard}.parquet")))) == 3
        assert len(pd.read_parquet(io.BytesIO(get(f"neutts/data/train/{shard}.parquet")))) == 0  # "text 0": a digit
    for name in ("stats.json", "shards.parquet", "sft_dataset/README.md", "sft_dataset/index.json", "neutts/README.md"):
        assert f"{prefix}/out/{name}" in present
    for name in ("corpus.html", "hours_per_language.svg", "throughput.svg", "audit.svg"):
        assert f"{prefix}/out/report/{name}" in present
    for name in ("multilingual_tts/README.md", "multilingual_tts/train/index.json"):
        assert f"{prefix}/out/{name}" in present
    index = json.loads(get("multilingual_tts/train/index.json"))
    assert [e["raw_data"]["basename"] for e in index["shards"]] == [f"{s}.mds" for s in shards]
    for e in index["shards"]:
        assert len(get(f"multilingual_tts/train/{e['raw_data']['basename']}")) == e["raw_data"]["bytes"]
    stats = json.loads(get("stats.json"))
    assert stats["records"] == {"foreign": 3} and stats["sft_rows_per_split"] == {"train": 9}
    mtts = stats["sft_formats"]["multilingual_tts"]["train"]
    assert mtts["rows"] == {"tts": 9, "voice_cloning": 18}  # one speaker per shard, 3 texts: 6 ordered pairs each
    assert stats["sft_formats"]["neutts"]["train"]["dropped_by_reason"] == {"neutts_digit": 9}
    assert not list((tmp_path / ".snakemake/storage").rglob("*.parquet")), "local copies of parts left behind"
    assert not list((tmp_path / ".snakemake/storage").rglob("*.mds")), "local copies of parts left behind"

    client.delete_object(Bucket=BUCKET, Key=f"{prefix}/out/shards/a/shard-1.json")
    dry = run(cmd("-n"), env)
    assert dry.returncode == 0 and not re.search(r"^encode_shard\s+\d", dry.stdout, re.M), dry.stdout[-3000:]
    assert re.search(r"^derive_batch_0\s+1$", dry.stdout, re.M), dry.stdout[-3000:]
    again = run(cmd(), env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert re.search(r"^derive_batch_0\s+1$", again.stdout + again.stderr, re.M), again.stdout[-3000:]
    assert "read 3 shard reports: 3 from 2 digests, 0 one by one" in summarize_log.read_text()
    assert json.loads(get("shards/a/shard-1.json"))["token_file"]["rows"] == 3
    # the HTML report, with its figures in the bucket (Snakemake downloads them)
    report = run(cmd("--report", str(tmp_path / "report.html")), env)
    assert report.returncode == 0, report.stderr[-3000:]
    html = (tmp_path / "report.html").read_text()
    assert "hours_per_language.svg" in html and "3 foreign" in html and "RANDOM WEIGHTS" not in html
    assert_no_secret(tmp_path, r.stdout, r.stderr, report.stderr, client=client, prefix=prefix)


def test_read_ahead_resumes_after_a_broken_connection() -> None:
    """A connection that breaks mid-object is resumed with a Range GET; the bytes come out whole and in order."""
    from neucodec_workflow.storage.streams import ReadAhead

    data = bytes(range(256)) * 4000

    class Body:
        def __init__(self, payload: bytes, fail_after: int | None):
            self.stream, self.fail_after, self.sent = io.BytesIO(payload), fail_after, 0

        def read(self, n: int) -> bytes:
            if self.fail_after is not None and self.sent >= self.fail_after:
                raise ConnectionResetError("connection reset by peer")
            chunk = self.stream.read(min(n, 10_000))
            self.sent += len(chunk)
            return chunk

    class Client:
        calls: list[str] = []

        def get_object(self, Bucket: str, Key: str, Range: str = "bytes=0-") -> dict[str, Any]:
            self.calls.append(Range)
            start = int(Range.removeprefix("bytes=").rstrip("-"))
            return {"Body": Body(data[start:], 300_000 if len(self.calls) == 1 else None)}

    client = Client()
    stream = io.BufferedReader(ReadAhead(client, "b", "k", chunk_size=50_000, depth=2))
    assert stream.read() == data
    assert client.calls == ["bytes=0-", "bytes=300000-"]


@pytest.mark.workflow
@pytest.mark.faults
def test_bad_token_file_in_a_derive_batch_costs_the_others_nothing(
    server: Any, client: Any, checkpoint: Path, tmp_path: Path
) -> None:
    """A derive batch whose second shard's token file is unreadable: the job goes past it, sends every shard's
    report and part (the bad one's report records why, its part is empty), and summarize refuses naming the shard;
    once the file is fixed the plain rerun re-derives that shard alone and completes."""
    from support.loopback_s3 import snakemake_s3_command

    prefix, shards = "failed-derive", ["a/shard-0", "a/shard-1", "a/shard-2"]
    for i, shard in enumerate(shards):
        put_foreign_shard(client, f"{prefix}/corpus", shard, rows=3, seed=i)
    good = client.get_object(Bucket=BUCKET, Key=f"{prefix}/corpus/a/shard-1/neucodec_tokens.parquet")["Body"].read()
    client.put_object(Bucket=BUCKET, Key=f"{prefix}/corpus/a/shard-1/neucodec_tokens.parquet", Body=b"not parquet")
    env = s3_env(server.endpoint, tmp_path)
    out = f"s3://{BUCKET}/{prefix}/out"
    probe = tmp_path / "storage-probe.jsonl"

    def cmd() -> list[str]:
        return snakemake_s3_command(
            REPO, tmp_path, f"s3://{BUCKET}/{prefix}/corpus", str(checkpoint), output=out, probe=probe
        )

    r = run(cmd(), env)
    assert r.returncode != 0, "summarize must refuse a corpus with a shard it could not derive"
    assert "a/shard-1" in r.stdout + r.stderr
    from support.storage_probe import read

    sent = [o["query"] for o in read(probe) if o["op"] == "job_store"]
    for shard in shards:  # each shard's part, then its report
        assert sent.index(f"{out}/sft_dataset/data/train/{shard}.parquet") < sent.index(f"{out}/shards/{shard}.json")
    failed = json.loads(client.get_object(Bucket=BUCKET, Key=f"{prefix}/out/shards/a/shard-1.json")["Body"].read())
    assert failed["record"] == "failed" and failed["error"], failed
    assert f"{prefix}/out/stats.json" not in keys(client, f"{prefix}/out")
    mtimes = {s: client.head_object(Bucket=BUCKET, Key=f"{prefix}/out/shards/{s}.json")["LastModified"] for s in shards}
    probe.unlink()

    client.put_object(Bucket=BUCKET, Key=f"{prefix}/corpus/a/shard-1/neucodec_tokens.parquet", Body=good)
    again = run(cmd(), env)
    assert again.returncode == 0, again.stderr[-3000:]
    resent = [o["query"] for o in read(probe) if o["op"] == "job_store" and "/shards/" in o["query"]]
    assert resent == [f"{out}/shards/a/shard-1.json"], resent
    for shard in ("a/shard-0", "a/shard-2"):
        assert (
            client.head_object(Bucket=BUCKET, Key=f"{prefix}/out/shards/{shard}.json")["LastModified"] == mtimes[shard]
        )
    present = set(keys(client, f"{prefix}/out"))
    for shard in shards:
        assert f"{prefix}/out/shards/{shard}.json" in present
        assert f"{prefix}/out/sft_dataset/data/train/{shard}.parquet" in present
