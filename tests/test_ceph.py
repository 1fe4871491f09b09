"""The workflow against a real S3 server: Ceph's radosgw (Debian's Ceph 16) on 127.0.0.1, over HTTPS.

moto (test_s3.py) runs over plain HTTP, where boto3 never sends its checksum trailers, so it cannot notice a lost
``request_checksum_calculation = when_required``: radosgw (Ceph 16) over HTTPS rejects uploads sent with those
trailers (``STREAMING-UNSIGNED-PAYLOAD-TRAILER``) with HTTP 411 ``MissingContentLength``. A one-node cluster
(tests/support/ceph.py) starts once for this module (~20 s) from the binaries ``make ceph`` installs; without them
the module is skipped, saying so. The corpus, the tokens and every output are objects in a bucket; the client trusts
the server's self-signed certificate through ``AWS_CA_BUNDLE``; credentials reach Snakemake only through the
environment. Two Snakemake runs encode (the first run, and the rerun of one deleted token file), one audits.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from support.ceph import CephUnavailable, LoopbackCeph, find_binaries
from test_s3 import (  # the S3 Snakemake helpers
    ACCESS_KEY,
    BUCKET,
    PENDING,
    SECRET,
    assert_no_secret,
    assert_tokens_valid,
    keys,
    put_shard,
    run,
)

try:
    find_binaries()
    MISSING = ""
except CephUnavailable as e:  # only a missing install skips; a cluster that does not start fails
    MISSING = f"{e}; where they cannot be (no root, no apt), this real-server test cannot run"

pytestmark = [pytest.mark.workflow, pytest.mark.s3, pytest.mark.ceph, pytest.mark.skipif(bool(MISSING), reason=MISSING)]

REPO = Path(__file__).resolve().parents[1]
PREFIX = "ceph"
CORPUS, OUT = f"{PREFIX}/corpus", f"{PREFIX}/out"
SHARDS = ["en/shard-0", "fr/shard-1"]
SECONDS = 0.5  # per segment, 2 segments per shard: 25 tokens each
CHECKSUM_ENV = ("AWS_REQUEST_CHECKSUM_CALCULATION", "AWS_RESPONSE_CHECKSUM_VALIDATION")


@pytest.fixture(scope="module")
def ceph(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    cluster = LoopbackCeph(tmp_path_factory.mktemp("ceph"), access_key=ACCESS_KEY, secret_key=SECRET)
    with pytest.MonkeyPatch.context() as mp, cluster:
        print(f"\nCeph radosgw up in {cluster.started_in:.1f} s at {cluster.endpoint}; listening: {cluster.listening}")
        assert cluster.endpoint.startswith("https://127.0.0.1:") and cluster.http_endpoint.startswith(
            "http://127.0.0.1:"
        )
        assert cluster.listening and all(addr.startswith("127.0.0.1:") for _, addr in cluster.listening)
        mp.setenv("AWS_CA_BUNDLE", str(cluster.ca_bundle))  # our clients in this process trust the cluster's cert
        yield cluster
    assert not cluster.root.exists(), "the cluster's data was left behind"
    assert all(p.poll() is not None for p in cluster.procs.values()), "a Ceph process outlived the cluster"


@pytest.fixture(scope="module")
def client(ceph: Any) -> Any:
    from neucodec_workflow.storage.s3 import S3Settings

    c = S3Settings(endpoint_url=ceph.endpoint, region="auto", access_key=ACCESS_KEY, secret_key=SECRET).client()
    c.create_bucket(Bucket=BUCKET)
    return c


def ceph_env(ceph: Any, home: Path) -> dict[str, str]:
    """Like test_s3.s3_env, for the HTTPS endpoint: the loopback endpoint, region ``auto`` (as for R2; radosgw
    ignores it), credentials only in the environment, no AWS config files, the cluster's certificate as CA bundle."""
    assert ceph.endpoint.startswith("https://127.0.0.1:"), "Ceph tests must use the loopback cluster"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SNAKEMAKE_STORAGE_S3_"))}
    env.update(
        SNAKEMAKE_STORAGE_S3_ENDPOINT_URL=ceph.endpoint,
        SNAKEMAKE_STORAGE_S3_REGION="auto",
        SNAKEMAKE_STORAGE_S3_ACCESS_KEY=ACCESS_KEY,
        SNAKEMAKE_STORAGE_S3_SECRET_KEY=SECRET,
        NEUCODEC_S3_REQUIRE_ENDPOINT="1",
        AWS_CA_BUNDLE=str(ceph.ca_bundle),
        AWS_CONFIG_FILE=str(home / "no-aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(home / "no-aws-credentials"),
        AWS_EC2_METADATA_DISABLED="true",
    )
    return env


def command(workdir: Path, checkpoint: Path, *extra: str) -> list[str]:
    from support.loopback_s3 import snakemake_s3_command

    return snakemake_s3_command(
        REPO, workdir, f"s3://{BUCKET}/{CORPUS}", str(checkpoint), *extra, output=f"s3://{BUCKET}/{OUT}"
    )


def job_counts(text: str) -> dict[str, int]:
    return {m[0]: int(m[1]) for m in re.findall(r"^(\w+)\s+(\d+)$", text, re.M)}


def get_json(client: Any, key: str) -> Any:
    return json.loads(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ceph-work")


@pytest.fixture(scope="module")
def first_run(ceph: Any, client: Any, random_ckpt: Path, workdir: Path) -> subprocess.CompletedProcess[str]:
    for i, shard in enumerate(SHARDS):
        put_shard(client, CORPUS, shard, seed=40 + i, seconds=SECONDS)
    # both shards encode at once, one thread each: two uploads in flight, and the two model loads overlap
    r = run(command(workdir, random_ckpt, "--set-threads", "encode_shard=1"), ceph_env(ceph, workdir))
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    return r


# ------------------------------------------------------------------------------------------------------------------


def test_checksum_guard(ceph: Any, client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server would catch a lost ``when_required``: boto3's defaults (checksum trailers over HTTPS) are refused
    with 411 MissingContentLength, over plain HTTP they pass (so moto over HTTP cannot catch it); our client passes."""
    import boto3
    from botocore.exceptions import ClientError

    from neucodec_workflow.storage.s3 import S3Settings

    # the storage plugin sets these process-wide once imported; the default client must not inherit them
    for name in CHECKSUM_ENV:
        monkeypatch.setenv(name, "")  # recorded, so the teardown restores whatever was there
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")

    def default(endpoint: str) -> Any:
        return boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET,
        )

    plain = default(ceph.endpoint)
    assert plain.meta.config.request_checksum_calculation == "when_supported"  # boto3's default
    with pytest.raises(ClientError) as refused:
        plain.put_object(Bucket=BUCKET, Key="guard/default-https", Body=b"x" * 1000)
    error = refused.value.response
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 411 and error["Error"]["Code"] == "MissingContentLength"
    default(ceph.http_endpoint).put_object(Bucket=BUCKET, Key="guard/default-http", Body=b"x" * 1000)

    ours = S3Settings(endpoint_url=ceph.endpoint, region="auto", access_key=ACCESS_KEY, secret_key=SECRET).client()
    ours.put_object(Bucket=BUCKET, Key="guard/ours-https", Body=b"y" * 1000)  # a lost setting: 411 right here
    assert ours.get_object(Bucket=BUCKET, Key="guard/ours-https")["Body"].read() == b"y" * 1000
    config = ours.meta.config  # and, at unit level, the setting itself
    assert (config.request_checksum_calculation, config.response_checksum_validation) == (
        "when_required",
        "when_required",
    )
    assert keys(client, "guard") == ["guard/default-http", "guard/ours-https"]

    # the settings the pinned storage plugin forces process-wide, for Snakemake and the jobs it starts
    probe = f"import json, os, snakemake_storage_plugin_s3; print(json.dumps([os.getenv(n) for n in {CHECKSUM_ENV}]))"
    env = {k: v for k, v in os.environ.items() if k not in CHECKSUM_ENV}
    forced = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert json.loads(forced.stdout) == ["when_required", "when_required"], forced.stderr[-2000:]


def test_full_run_in_the_bucket(client: Any, first_run: Any) -> None:
    """Two shards: tokens beside the audio, reports, dataset parts, card, index and stats under the output prefix."""
    out = first_run.stdout + first_run.stderr
    assert job_counts(out)["encode_shard"] == len(SHARDS), out[-3000:]
    present = set(keys(client, PREFIX))
    for shard in SHARDS:
        assert_tokens_valid(client, f"{CORPUS}/{shard}/neucodec_tokens.parquet", SECONDS)
        report = get_json(client, f"{OUT}/shards/{shard}.json")
        assert report["encoded"] == 2 and report["rejected_count"] == 0, report
        part = client.get_object(Bucket=BUCKET, Key=f"{OUT}/sft_dataset/data/train/{shard}.parquet")["Body"].read()
        assert len(pd.read_parquet(io.BytesIO(part))) == 2
    for name in ("stats.json", "sft_dataset/README.md", "sft_dataset/index.json"):
        assert f"{OUT}/{name}" in present, sorted(present)
    stats = get_json(client, f"{OUT}/stats.json")
    assert stats["shards"] == 2 and stats["encoded"] == 4 and stats["sft_rows_per_split"] == {"train": 4}
    assert stats["audit"]["token_agreement"] == 1.0  # the inline audit, exact mode
    assert not [k for k in present if ".tmp-" in k], "a temporary file was uploaded"


def test_deleted_token_object_is_remade_alone(
    ceph: Any, client: Any, first_run: Any, random_ckpt: Path, workdir: Path
) -> None:
    """Nothing to do after the first run; one token object deleted: the dry-run lists that shard alone, the plain
    rerun encodes it alone (the other shard's object untouched)."""
    env = ceph_env(ceph, workdir)
    dry = run(command(workdir, random_ckpt, "-n"), env)
    assert dry.returncode == 0 and "Nothing to be done" in dry.stdout + dry.stderr, (dry.stdout + dry.stderr)[-3000:]

    gone = f"{CORPUS}/{SHARDS[1]}/neucodec_tokens.parquet"
    client.delete_object(Bucket=BUCKET, Key=gone)
    dry = run(command(workdir, random_ckpt, "-n"), env)
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert set(PENDING.findall(dry.stdout)) == {SHARDS[1]}, dry.stdout[-3000:]
    assert job_counts(dry.stdout)["encode_shard"] == 1, dry.stdout[-3000:]

    kept = client.head_object(Bucket=BUCKET, Key=f"{CORPUS}/{SHARDS[0]}/neucodec_tokens.parquet")["ETag"]
    # the rerun sends every file as a multipart upload (this server's CompleteMultipartUpload answers an empty
    # ETag): the token file, the report and the part arrive whole, and summarize reads the report right
    r = run(command(workdir, random_ckpt), {**env, "NEUCODEC_S3_MULTIPART_BYTES": "1000"})
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert job_counts(r.stdout + r.stderr)["encode_shard"] == 1, (r.stdout + r.stderr)[-3000:]
    assert_tokens_valid(client, gone, SECONDS)
    for key in (gone, f"{OUT}/shards/{SHARDS[1]}.json"):
        assert client.head_object(Bucket=BUCKET, Key=key)["ETag"].strip('"').endswith("-1"), f"{key}: not multipart"
    assert client.head_object(Bucket=BUCKET, Key=f"{CORPUS}/{SHARDS[0]}/neucodec_tokens.parquet")["ETag"] == kept
    assert get_json(client, f"{OUT}/stats.json")["encoded"] == 4


def test_audit_agreement(ceph: Any, client: Any, first_run: Any, random_ckpt: Path, workdir: Path) -> None:
    """``snakemake audit`` on one shard: its stored tokens re-encoded with the reference path, agreement 1.0."""
    shard = SHARDS[0]
    selection = "audit=" + json.dumps({"shards": [shard]})  # one more --config value, then the target
    r = run(command(workdir, random_ckpt, selection, "--", "audit"), ceph_env(ceph, workdir))
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    audit = get_json(client, f"{OUT}/audit/{shard}.json")
    assert audit["segments"] == 2 and audit["token_agreement"] == 1.0 and audit["mismatched"] == [], audit
    assert keys(client, f"{OUT}/audit") == [f"{OUT}/audit/{shard}.json"]


def test_no_secret_anywhere(ceph: Any, client: Any, first_run: Any, workdir: Path) -> None:
    """Not in the work directory (logs, Snakemake's metadata), the first run's output, or any object."""
    assert_no_secret(workdir, first_run.stdout, first_run.stderr, client=client, prefix=PREFIX)
