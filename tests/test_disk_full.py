"""A full disk: the write fails with a message naming the file, what it had written and what is free; nothing
half-written is published; after space is freed, the same command finishes the work. On a real, size-limited tmpfs
(mounted by the test: root), and by an injected ENOSPC where mounting is not allowed."""

import errno
import os
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import run_snakemake, simple_shard

from neucodec_workflow.record.contract import DiskFullError, publishing, write_json, write_tokens


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs (a whole run's outputs fit once the filler is gone: the report's figures are ~250 KiB); skipped
    (with the reason) only where this process may not mount one."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """A filler file that leaves about ``leave`` bytes free on ``disk``."""
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    filler = disk / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, free - leave))
    return filler


def rows(n: int, length: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [(f"seg{i}", rng.integers(0, 65536, length).astype(np.uint16)) for i in range(n)]


def test_token_file_on_a_full_disk(small_disk):
    target = small_disk / "shard" / "neucodec_tokens.parquet"
    filler = fill(small_disk, leave=16 * 1024)
    with pytest.raises(DiskFullError) as err:
        write_tokens(target, rows(40, 1000), {"codec_id": "test"}, rows_per_group=4)  # ~160 KB on disk
    message = str(err.value)
    assert str(target) in message and "no space left on device" in message and "bytes free" in message
    assert "run the same command again" in message
    assert not target.exists() and not list(target.parent.glob(".*tmp-*"))  # nothing half-written, no temp file
    filler.unlink()  # space freed: the same write completes
    assert write_tokens(target, rows(40, 1000), {"codec_id": "test"}, rows_per_group=4) == 40
    assert pq.read_table(target).num_rows == 40


def test_injected_enospc_is_named_too(tmp_path, monkeypatch):
    """Where no tmpfs can be mounted: the same conversion, from an OSError(ENOSPC) raised by the write itself."""

    def no_space(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", no_space)
    with pytest.raises(DiskFullError, match="report.json"):
        write_json(tmp_path / "report.json", {"a": 1})
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError), publishing(tmp_path / "other") as tmp:  # other errors pass through unchanged
        tmp.write_bytes(b"x")
        raise ValueError("not a disk error")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.workflow
def test_output_on_a_full_disk_then_the_plain_rerun(small_disk, tmp_path):
    """`output` on a full filesystem: the derive job fails naming the file, no report or part is half-written, and
    after space is freed the plain rerun completes; nothing is encoded (the token files are the record)."""
    corpus = tmp_path / "corpus"
    for i in range(3):
        d = simple_shard(corpus, f"s{i}", [0.05] * 4, seed=i)
        tokens = rows(4, 3000, seed=i)
        write_tokens(d / "neucodec_tokens.parquet", [(f"s{i}_{k:03d}", t) for k, (_, t) in enumerate(tokens)], {})
        later = os.stat(d / "metadata.parquet").st_mtime + 5
        os.utime(d / "neucodec_tokens.parquet", (later, later))
    out = small_disk / "out"
    config = {"corpus": str(corpus), "output": str(out)}  # logs too: they live under output when it is local
    filler = fill(small_disk, leave=12 * 1024)
    failed = run_snakemake(tmp_path, config=config, check=False)
    text = failed.stdout + failed.stderr
    assert failed.returncode != 0
    assert "no space left on device writing" in text, text[-4000:]
    assert "encode_shard" not in text
    for path in out.rglob("*"):  # whatever is there under a real name is whole
        assert ".tmp-" not in path.name, path
        if path.suffix == ".parquet":
            pq.read_table(path)
    filler.unlink()
    run_snakemake(tmp_path, config=config)
    train = pd.concat(pd.read_parquet(p) for p in sorted((out / "sft_dataset/data/train").rglob("*.parquet")))
    assert len(train) == 12 and (out / "stats.json").is_file()
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
