"""The workflow on S3: a counting moto server on 127.0.0.1 started here, fake credentials, never AWS.

Every Snakemake run gets an explicit loopback endpoint and NEUCODEC_S3_REQUIRE_ENDPOINT=1, AWS_* variables and config
files are cleared, and the secret key is a sentinel that must not appear in any log, report, output or object.
"""

from __future__ import annotations

import inspect
import io
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
SNAKEMAKE = str(Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin" / "snakemake")
ACCESS_KEY = "AKIALOOPBACKTEST"
SECRET = "SENTINEL-s3cret-do-not-print-7f3a9c"
BUCKET = "corpus-bucket"
PENDING = re.compile(r"^\s*wildcards: shard=(\S+)", re.M)


@pytest.fixture(scope="module")
def server() -> Iterator[Any]:
    pytest.importorskip("moto")
    from neucodec_workflow.testing.loopback_s3 import LoopbackS3

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
    from neucodec_workflow.testing.loopback_s3 import shard_bytes

    tar, meta = shard_bytes(2, seconds, seed=seed, corrupt=corrupt)
    client.put_object(Bucket=BUCKET, Key=f"{prefix}/{shard}/audio.tar", Body=tar)
    client.put_object(Bucket=BUCKET, Key=f"{prefix}/{shard}/metadata.parquet", Body=meta)
    return len(tar) + len(meta)


def keys(client: Any, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/")
    return sorted(o["Key"] for p in pages for o in p.get("Contents", []))


def snakemake_args(workdir: Path, prefix: str, checkpoint: Path, *extra: str) -> list[str]:
    return [
        SNAKEMAKE,
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(REPO / "config/config.yaml"),
        "--cores",
        "2",
        "--config",
        f"corpus=s3://{BUCKET}/{prefix}",
        f"output={workdir / 'out'}",
        f"codec={{'weights': '{checkpoint}', 'device': 'cpu'}}",
        *extra,
    ]


def run(args: list[str], env: dict[str, str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=env, capture_output=True, text=True, cwd=REPO, timeout=300, **kw)


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


class DiskPeak:
    """Peak bytes under a directory while a run is going (polled)."""

    def __init__(self, path: Path):
        self.path, self.peak, self._stop = path, 0, threading.Event()
        self._t = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, dir_bytes(self.path))
            except FileNotFoundError:
                pass
            time.sleep(0.05)

    def __enter__(self) -> DiskPeak:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()


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


# ------------------------------------------------------------------------------------------------------------------


def test_pinned_versions_and_plugin_internals() -> None:
    """Fails loudly when an upgrade changes what neucodec_workflow.s3 patches or relies on (docs/s3.md)."""
    import snakemake.api  # noqa: F401 (the import order snakemake itself uses; avoids a circular import)
    from snakemake.dag import DAG
    from snakemake.io import _IOFile
    from snakemake_storage_plugin_s3 import StorageObject

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


def test_dry_run_requests_and_pending_list(server: Any, client: Any, checkpoint: Path, tmp_path: Path) -> None:
    """300 shards (tiny objects), 290 with tokens: a handful of LISTs, exactly the 10 pending shards."""
    prefix, n, pending = "dry", 300, set(range(0, 300, 30))
    out = tmp_path / "out"
    for i in range(n):
        shard = f"part-{i // 100}/shard-{i:05d}"
        for name in ("audio.tar", "metadata.parquet") + (() if i in pending else ("neucodec_tokens.parquet",)):
            client.put_object(Bucket=BUCKET, Key=f"{prefix}/{shard}/{name}", Body=b"x")
    time.sleep(1.1)  # reports strictly newer than the inputs' S3 timestamps
    for i in set(range(n)) - pending:
        report = out / "shards" / f"part-{i // 100}/shard-{i:05d}.json"
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text("{}")
    server.reset()
    t = time.perf_counter()
    r = run(snakemake_args(tmp_path, prefix, checkpoint, "-n"), s3_env(server.endpoint, tmp_path))
    wall = time.perf_counter() - t
    assert r.returncode == 0, r.stderr[-3000:]
    counts = server.counts()
    assert sorted(PENDING.findall(r.stdout)) == sorted(f"part-{i // 100}/shard-{i:05d}" for i in pending)
    assert counts["total"] <= 5, counts  # 900-1,190 objects: 1-2 listing pages
    assert wall < 60
    assert_no_secret(tmp_path, r.stdout, r.stderr)


def test_end_to_end_failure_rerun_requests_and_disk(server: Any, client: Any, checkpoint: Path, tmp_path: Path) -> None:
    """3 shards, one with an unreadable tar: 2 encode, 1 fails; dry-run lists it; fixed, a rerun runs only it."""
    prefix = "e2e/corpus"
    shards = ["en/shard-0", "en/shard-1", "fr/shard-2"]
    sizes = [put_shard(client, prefix, s, seed=i, corrupt=(s == "fr/shard-2")) for i, s in enumerate(shards)]
    env = s3_env(server.endpoint, tmp_path)
    server.reset()
    with DiskPeak(tmp_path / ".snakemake" / "storage") as disk:
        r = run(snakemake_args(tmp_path, prefix, checkpoint, "--keep-going"), env)
    assert r.returncode != 0, "the corrupt shard must fail the run"
    first = server.counts()
    tokens = [f"{prefix}/{s}/neucodec_tokens.parquet" for s in shards]
    present = keys(client, prefix)
    assert tokens[0] in present and tokens[1] in present and tokens[2] not in present
    for key in tokens[:2]:
        assert_tokens_valid(client, key)
    assert first["total"] <= 25 * 2, first  # 2 shards encoded (+1 failed)
    assert disk.peak <= 2 * max(sizes), (disk.peak, sizes)  # bounded: nothing downloaded, tokens removed after upload
    assert "shard fr/shard-2: cannot read audio.tar" in r.stdout + r.stderr

    server.reset()
    dry = run(snakemake_args(tmp_path, prefix, checkpoint, "-n"), env)
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert PENDING.findall(dry.stdout) == ["fr/shard-2"]
    assert server.counts()["total"] <= 3

    put_shard(client, prefix, "fr/shard-2", seed=2)
    server.reset()
    r2 = run(snakemake_args(tmp_path, prefix, checkpoint), env)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert re.search(r"^encode_shard\s+1$", r2.stdout + r2.stderr, re.M), "only the failed shard reruns"
    assert server.counts()["total"] <= 25 + 10  # one shard + reading 3 shards for the SFT assembly
    assert_tokens_valid(client, tokens[2])
    assert (tmp_path / "out/sft_dataset/README.md").exists() and (tmp_path / "out/stats.json").exists()
    assert not list((tmp_path / ".snakemake/storage").rglob("*.parquet")), "local copies of tokens left behind"

    client.delete_object(Bucket=BUCKET, Key=tokens[0])  # a deleted output is re-made, though its report exists
    dry2 = run(snakemake_args(tmp_path, prefix, checkpoint, "-n"), env)
    assert dry2.returncode == 0 and PENDING.findall(dry2.stdout) == ["en/shard-0"], dry2.stdout[-3000:]
    assert_no_secret(tmp_path, r.stdout, r.stderr, dry.stdout, r2.stdout, r2.stderr, client=client, prefix=prefix)


def test_sigkill_mid_encode_then_rerun(server: Any, client: Any, checkpoint: Path, tmp_path: Path) -> None:
    """SIGKILL of the whole run while a shard encodes: no partial object; after --unlock a rerun finishes all."""
    prefix = "killed"
    shards = ["a/shard-0", "a/shard-1"]
    for i, s in enumerate(shards):
        put_shard(client, prefix, s, seed=10 + i, seconds=2.0)
    env = s3_env(server.endpoint, tmp_path)
    proc = subprocess.Popen(
        snakemake_args(tmp_path, prefix, checkpoint),
        env=env,
        cwd=REPO,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    log_dir = tmp_path / "out/logs/encode"
    deadline = time.time() + 180
    while time.time() < deadline and not any("SEEDED RANDOM" in f.read_text() for f in log_dir.rglob("*.log")):
        time.sleep(0.2)  # the model is loaded: the job is encoding
    os.killpg(proc.pid, signal.SIGKILL)
    output, _ = proc.communicate()
    assert time.time() < deadline, output[-3000:]
    for key in keys(client, prefix):
        if key.endswith("neucodec_tokens.parquet"):
            assert_tokens_valid(client, key, 2.0)  # whatever exists is complete
    unlock = run(snakemake_args(tmp_path, prefix, checkpoint, "--unlock"), env)
    assert unlock.returncode == 0, unlock.stderr[-3000:]
    r = run(snakemake_args(tmp_path, prefix, checkpoint, "--until", "encode_shard"), env)
    assert r.returncode == 0, r.stderr[-3000:]
    for s in shards:
        assert_tokens_valid(client, f"{prefix}/{s}/neucodec_tokens.parquet", 2.0)
    assert_no_secret(tmp_path, output, r.stdout, r.stderr, client=client, prefix=prefix)


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
