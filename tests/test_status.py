"""Watching a run: ``neucodec-workflow status`` on a local and a loopback-S3 corpus (done, pending, running, failed,
foreign and stale shards; counts exact; S3 requests bounded; footers cached) and the encode job's progress lines
(the helper, encode_shard, and a real Snakemake run)."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO, run_snakemake, simple_shard

from neucodec_workflow.commands import footers
from neucodec_workflow.commands import status as st
from neucodec_workflow.demo.corpus import Member, flac_bytes, write_shard
from neucodec_workflow.engine.probe import speech_like
from neucodec_workflow.record.contract import HOP, SCHEMA, SECONDS_PER_TOKEN
from neucodec_workflow.record.progress import Progress, Tick, line
from neucodec_workflow.record.records import Clip
from neucodec_workflow.shard.encode import encode_shard, read_metadata_ids

JSON_KEYS = {"shards", "done", "pending", "failed", "hours_done", "eta_hours"}
PROGRESS = re.compile(r"INFO neucodec_workflow\.progress: progress shard (\S+): (\d+)/(\d+) segments, .*ETA (\S+)(.*)")


class ZerosEncoder:
    """A stand-in for the engine (status reads records; what the tokens are does not matter): n_samples // 320 zero
    tokens per clip, after ``delay`` seconds."""

    name = "zeros"
    provenance = {"codec_id": "zeros", "random_weights": True}

    def __init__(self, delay: float = 0.0):
        self.delay = delay

    def encode(self, clips: Iterable[Clip]) -> Iterator[tuple[Clip, np.ndarray | Exception]]:
        for clip in clips:
            time.sleep(self.delay)
            yield clip, np.zeros(clip.n_tokens, np.uint16)


def shard_with_reject(corpus: Path, shard: str, seconds: list[float], seed: int) -> Path:
    """FLAC members for ``seconds`` plus one metadata id with no member (rejected: missing_from_tar)."""
    rng = np.random.default_rng(seed)
    ids = [f"{shard.replace('/', '_')}_{i}" for i in range(len(seconds) + 1)]
    members = [
        Member(f"{i}.flac", flac_bytes(speech_like(s, 16_000, rng), 16_000))
        for i, s in zip(ids[:-1], seconds, strict=True)
    ]
    meta = pd.DataFrame({"segment_id": ids, "text": "t", "language": "en", "speaker": "s", "dataset": "d"})
    return write_shard(corpus / shard, members, meta)


def encode(shard_dir: Path, shard: str, device: str, delay: float = 0.0) -> float:
    """encode_shard as the job runs it (real tar, real token file with its report inside); returns audio seconds."""
    ids = read_metadata_ids(shard, shard_dir / "metadata.parquet", ["segment_id"])
    report = encode_shard(
        shard,
        shard_dir / "audio.tar",
        ids,
        shard_dir / "neucodec_tokens.parquet",
        ZerosEncoder(delay),
        max_seconds=60,
        decode_workers=1,
        reference=lambda audio: np.zeros(len(audio) // HOP, np.uint16),
        audit_segments=8,
        device=device,
    )
    return report.audio_seconds


def foreign_tokens(path: Path, ids: list[str], n_tokens: int) -> bytes:
    """A token file made by another tool: the contract's three columns, no key-value metadata."""
    rng = np.random.default_rng(n_tokens)
    blobs = [rng.integers(0, 1 << 16, n_tokens, dtype=np.uint16).astype("<u2").tobytes() for _ in ids]
    table = pa.table([ids, blobs, pa.array([n_tokens] * len(ids), pa.int32())], schema=SCHEMA)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def job_log(path: Path, code: str) -> None:
    """A job log written by the job's own logging (jobs.setup_logging) in a process of its own, then ``code``."""
    prog = (
        f"import sys; from neucodec_workflow.workflow.job_log import setup_logging; setup_logging(sys.argv[1])\n{code}"
    )
    subprocess.run([sys.executable, "-c", prog, str(path)], capture_output=True, timeout=120)
    assert path.exists()


def status_cli(workdir: Path, *config: str, extra: tuple[str, ...] = ()) -> list[str]:
    return [
        "status",
        "--directory",
        str(workdir),
        "--snakefile",
        str(REPO / "Snakefile"),
        "--configfile",
        str(REPO / "config" / "config.yaml"),
        "--config",
        *config,
        *extra,
    ]


def run_json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict[str, Any]:
    capsys.readouterr()
    assert st.main([*argv, "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1  # one object, one line
    return json.loads(out[0])


# ------------------------------------------------------------------------------------------------------- progress
def test_progress_lines_at_a_steady_cadence(caplog: pytest.LogCaptureFixture) -> None:
    state = {"done": 0}
    with caplog.at_level(logging.INFO, logger="neucodec_workflow.progress"):
        with Progress("shard x", lambda: Tick(state["done"], 10, 2.5 * state["done"]), seconds=0.05, bar=False) as p:
            for _ in range(10):
                time.sleep(0.03)
                state["done"] += 1
    lines = [r.getMessage() for r in caplog.records if getattr(r, "progress", False)]
    assert 3 <= len(lines) == p.lines and lines[-1].endswith("(end)")
    assert lines[-1].startswith("progress shard x: 10/10 segments, 25.0 s audio,") and "ETA 0s" in lines[-1]
    text = line("shard y", Tick(30, 120, 900.0), elapsed=60.0)
    assert text == "shard y: 30/120 segments, 900.0 s audio, 15.0x real time, 60.0 s elapsed, ETA 3m00s"
    assert "ETA ?" in line("s", Tick(0, 5), 1.0)


def test_progress_cadence_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from neucodec_workflow.record.progress import cadence

    assert cadence() == 30.0
    monkeypatch.setenv("NEUCODEC_PROGRESS_SECONDS", "0.5")
    assert cadence() == 0.5 and cadence(2) == 2.0
    monkeypatch.setenv("NEUCODEC_PROGRESS_SECONDS", "often")
    assert cadence() == 30.0


def test_progress_bar_on_a_terminal_keeps_the_log_file_lines(tmp_path: Path) -> None:
    """With stderr on a terminal (a pty), tqdm draws the bar there; the job's log file still gets every line."""
    pty = pytest.importorskip("pty")
    prog = (
        "import sys, time\n"
        "from neucodec_workflow.workflow.job_log import setup_logging\n"
        "from neucodec_workflow.record.progress import Progress, Tick\n"
        "setup_logging(sys.argv[1])\n"
        "n = [0]\n"
        "with Progress('shard t', lambda: Tick(n[0], 20, float(n[0])), seconds=0.2):\n"
        "    for _ in range(20):\n"
        "        time.sleep(0.05); n[0] += 1\n"
    )
    master, slave = pty.openpty()
    log = tmp_path / "job.log"
    proc = subprocess.Popen([sys.executable, "-c", prog, str(log)], stderr=slave, stdout=subprocess.DEVNULL)
    os.close(slave)
    terminal = b""
    while True:  # read while it runs (a full pty would block it); EIO once it exited and all was read
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        terminal += chunk
    os.close(master)
    assert proc.wait(timeout=120) == 0, terminal.decode(errors="replace")
    assert b"20/20" in terminal and b"seg" in terminal  # the bar: 'shard t: 100%|...| 20/20 [..., seg/s, ...]'
    assert terminal.count(b"progress shard t:") == 1  # the bar instead of the lines there; the last line after it
    logged = list(PROGRESS.finditer(log.read_text()))
    assert len(logged) >= 2 and logged[-1].group(2) == "20" and logged[-1].group(5) == " (end)"


def test_encode_shard_logs_progress(tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch) -> None:
    monkeypatch.setenv("NEUCODEC_PROGRESS_SECONDS", "0.05")
    shard = simple_shard(tmp_path, "p/shard", [0.3] * 6)
    with caplog.at_level(logging.INFO, logger="neucodec_workflow.progress"):
        encode(shard, "p/shard", "cpu", delay=0.04)
    lines = [PROGRESS.search(f"INFO neucodec_workflow.progress: {r.getMessage()}") for r in caplog.records]
    lines = [m for m in lines if m]
    assert len(lines) >= 2 and all(m.group(1) == "p/shard" and m.group(3) == "6" for m in lines)
    assert lines[-1].group(2) == "6" and lines[-1].group(5) == " (end)"


# ----------------------------------------------------------------------------------------------- status, local
@pytest.fixture(scope="module")
def local_corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """7 shards: 2 done by the workflow (one with a reject), 1 foreign, 1 pending, 1 running, 1 failed, 1 stale."""
    root = tmp_path_factory.mktemp("status")
    corpus, out = root / "corpus", root / "out"
    audio = encode(shard_with_reject(corpus, "en/a", [0.6, 0.4], seed=1), "en/a", "cuda:0 (Test GPU)")
    audio += encode(simple_shard(corpus, "en/b", [0.5], seed=2), "en/b", "cpu")
    foreign = simple_shard(corpus, "fr/c", [0.5, 0.5], seed=3)
    # 400 rows of 30 s: over the writer's 1 MiB dictionary page, as a real shard's token file is
    foreign_tokens(foreign / "neucodec_tokens.parquet", [f"fr_c_{i:03d}" for i in range(400)], 1500)
    simple_shard(corpus, "de/d", [0.4], seed=4)  # pending, never tried
    simple_shard(corpus, "de/e", [0.4], seed=5)  # running: its log was just written, with a progress line
    job_log(
        out / "logs/encode/de/e.log",
        "from neucodec_workflow.record.progress import Progress, Tick; Progress('shard de/e', lambda: Tick(1, 4, 2.0)).emit()",
    )
    simple_shard(corpus, "fr/f", [0.4], seed=6)  # failed: the job's failure line
    job_log(
        out / "logs/encode/fr/f.log",
        "from neucodec_workflow.shard.audio import ShardError; raise ShardError('fr/f', 'cannot read audio.tar')",
    )
    stale = simple_shard(corpus, "en/g", [0.4], seed=7)  # a token file older than its tar: Snakemake re-encodes
    encode(stale, "en/g", "cpu")
    later = time.time() + 5
    os.utime(stale / "audio.tar", (later, later))
    return {"root": root, "corpus": corpus, "out": out, "audio": audio, "foreign_audio": 400 * 1500 * SECONDS_PER_TOKEN}


def test_status_local_counts(local_corpus: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    root, corpus, out = local_corpus["root"], local_corpus["corpus"], local_corpus["out"]
    argv = status_cli(root, f"corpus={corpus}", f"output={out}")
    s = run_json(capsys, argv)
    assert JSON_KEYS <= set(s)
    assert (s["shards"], s["done"], s["pending"], s["failed"]) == (7, 3, 3, 1)
    assert (s["running"], s["stale"], s["foreign"]) == (1, 1, 1)
    assert s["records"] == {"workflow": 2, "foreign": 1, "workflow_without_report": 0}
    assert s["failed_shards"] == {"fr/f": "shard fr/f: cannot read audio.tar"}
    assert list(s["running_shards"]) == ["de/e"] and s["running_shards"]["de/e"].startswith("1/4 segments, 2.0 s audio")
    # foreign: estimated from the token column's size (page headers and dictionary indices make it a little high)
    assert s["hours_done_estimated"] == pytest.approx(local_corpus["foreign_audio"] / 3600, rel=0.02)
    assert s["hours_done"] - s["hours_done_estimated"] == pytest.approx(local_corpus["audio"] / 3600)
    assert s["hours_left"] > 0 and s["eta_hours"] > 0 and s["eta_basis"] == "rate of the last hour"
    assert s["rejects_by_reason"] == {"missing_from_tar": 1} and s["segments"] == {"encoded": 3, "rejected": 1}
    assert s["audit"]["token_agreement"] == 1.0 and s["audit"]["shards"] == 2
    assert set(s["throughput"]["per_device"]) == {"cpu", "cuda:0 (Test GPU)"}
    assert s["throughput"]["per_device"]["cpu"]["shards"] == 1 and s["random_weights"] is True
    assert s["cost"]["footers_read"] == 3 and s["cost"]["list_requests"] == 0

    assert s["cost"]["summary"] == "absent" and s["cost"]["footers_from_summary"] == 0  # no summarize ran here

    # a refresh reads no footer; a new token file is the only one read
    assert run_json(capsys, argv)["cost"] | {"seconds": 0} == {
        "list_requests": 0,
        "footer_requests": 0,
        "footers_read": 0,
        "footers_cached": 3,
        "footers_from_summary": 0,
        "summary_requests": 0,
        "summary": "not needed",
        "seconds": 0,
    }
    encode(corpus / "de/d", "de/d", "cpu")
    s = run_json(capsys, argv)
    assert (s["done"], s["pending"], s["cost"]["footers_read"], s["cost"]["footers_cached"]) == (4, 2, 1, 3)
    (corpus / "de/d" / "neucodec_tokens.parquet").write_bytes(b"not parquet" * 100)  # unreadable: failed, not done
    s = run_json(capsys, argv)
    assert (s["done"], s["pending"], s["failed"]) == (3, 2, 2) and s["unreadable"].keys() == {"de/d"}
    assert s["failed_shards"]["de/d"].startswith("token file unreadable: ")
    (corpus / "de/d" / "neucodec_tokens.parquet").unlink()  # back to pending, for the other tests

    capsys.readouterr()
    assert st.main(argv) == 0
    text = capsys.readouterr().out
    for want in ("7 shards", "3 done (1 foreign", "1 failed", "fr/f: shard fr/f: cannot read audio.tar", "RANDOM"):
        assert want in text, text


def test_status_config_errors(tmp_path: Path, local_corpus: dict[str, Any], capsys) -> None:
    assert st.main(status_cli(tmp_path, f"corpus={tmp_path / 'nowhere'}", "output=o")) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = status_cli(tmp_path, f"corpus={local_corpus['corpus']}", "output=o", "codec={'device': 'tpu'}")
    assert st.main(bad) == 2 and "invalid config" in capsys.readouterr().err
    assert st.main(["status", "--directory", str(tmp_path)]) == 2  # no config/config.yaml there, none given
    assert "config/config.yaml" in capsys.readouterr().err


def test_console_script(local_corpus: dict[str, Any]) -> None:
    """The installed entry point, run from a working directory like a user does (``--json``)."""
    exe = Path(sys.executable).with_name("neucodec-workflow")
    if not exe.exists():
        pytest.skip(f"{exe.name} is not installed beside {sys.executable}: pip install -e .")
    argv = status_cli(Path("."), f"corpus={local_corpus['corpus']}", f"output={local_corpus['out']}", extra=("--json",))
    proc = subprocess.run([str(exe), *argv], capture_output=True, text=True, cwd=local_corpus["root"], timeout=120)
    assert proc.returncode == 0, proc.stderr
    s = json.loads(proc.stdout)
    assert (s["shards"], s["done"], s["pending"], s["failed"]) == (7, 3, 3, 1)


# --------------------------------------------------------------------------------------------------- status, S3
@pytest.mark.s3
def test_status_s3_counts_and_requests(
    local_corpus: dict[str, Any], tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same corpus in a loopback S3 bucket: same counts; one listing plus one ranged GET per new footer, then a
    refresh is the listing alone."""
    pytest.importorskip("moto")
    from support.loopback_s3 import LoopbackS3

    corpus, out = local_corpus["corpus"], local_corpus["out"]
    with LoopbackS3() as server:
        s3_corpus(server, corpus, monkeypatch)
        # an S3 output: the job logs are in local_dir
        argv = status_cli(tmp_path, "corpus=s3://status-bucket/c", "output=s3://status-bucket/out", f"local_dir={out}")
        server.reset()
        s = run_json(capsys, argv)
        sent = server.counts()
        assert (s["shards"], s["done"], s["pending"], s["failed"], s["foreign"]) == (7, 3, 3, 1, 1)
        assert s["stale"] == 1 and s["records"]["workflow"] == 2 and s["audit"]["token_agreement"] == 1.0
        assert s["cost"]["list_requests"] <= 50 and s["cost"]["footer_requests"] == 3
        # no summarize ran: asking for out/shards.parquet was one GET (a 404), then the 3 footers
        assert s["cost"]["summary_requests"] == 1 and s["cost"]["summary"] == "absent"
        assert sent["total"] == s["cost"]["list_requests"] + 1 + 3 == sent["by_method"].get("LIST", 0) + 4

        server.reset()
        s = run_json(capsys, argv)  # the refresh: footers from the cache
        assert server.counts()["total"] == s["cost"]["list_requests"] <= 50 and s["cost"]["footers_cached"] == 3
        assert (s["done"], s["pending"], s["failed"]) == (3, 3, 1)


def s3_corpus(server: Any, corpus: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``corpus`` in ``s3://status-bucket/c`` of a loopback server (token files last: the newest objects; en/g's tar
    a second later: older than its token file no more), and the environment the status command takes it from."""
    from neucodec_workflow.storage.s3 import S3Settings

    settings = S3Settings(endpoint_url=server.endpoint, access_key="AKIASTATUSTEST", secret_key="status-secret")
    client = settings.client()
    client.create_bucket(Bucket="status-bucket")
    files = sorted(p for p in corpus.rglob("*") if p.is_file())
    for path in sorted(files, key=lambda p: p.name == "neucodec_tokens.parquet"):  # token files last: newest
        if path.parent.name == "g" and path.name == "audio.tar":
            continue
        client.put_object(Bucket="status-bucket", Key=f"c/{path.relative_to(corpus)}", Body=path.read_bytes())
    time.sleep(1.1)  # S3 times have a resolution of 1 s: en/g's tar is newer than its token file
    client.put_object(Bucket="status-bucket", Key="c/en/g/audio.tar", Body=(corpus / "en/g/audio.tar").read_bytes())
    for name, value in (("ENDPOINT_URL", server.endpoint), ("ACCESS_KEY", "AKIASTATUSTEST")):
        monkeypatch.setenv(f"SNAKEMAKE_STORAGE_S3_{name}", value)
    monkeypatch.setenv("SNAKEMAKE_STORAGE_S3_SECRET_KEY", "status-secret")
    monkeypatch.setenv("NEUCODEC_S3_REQUIRE_ENDPOINT", "1")
    return client


@pytest.mark.s3
def test_footer_longer_than_one_ranged_read() -> None:
    """A report with many rejects makes a footer longer than the first 64 KiB tail: exactly one more GET."""
    pytest.importorskip("moto")
    from support.loopback_s3 import LoopbackS3

    from neucodec_workflow.record.contract import REPORT_KEY
    from neucodec_workflow.storage.s3 import S3Settings

    buf = io.BytesIO()
    report = {
        "audio_seconds": 1.0,
        "wall_seconds": 1.0,
        "rejects_by_reason": {"decode_error": 5000},
        "pad": "x" * 200_000,
    }
    schema = SCHEMA.with_metadata({REPORT_KEY: json.dumps(report)})
    pq.write_table(pa.table([["a"], [b"\0\0"], pa.array([1], pa.int32())], schema=schema), buf)
    with LoopbackS3() as server:
        client = S3Settings(endpoint_url=server.endpoint, access_key="AKIAT", secret_key="t").client()
        client.create_bucket(Bucket="footer-bucket")
        client.put_object(Bucket="footer-bucket", Key="t.parquet", Body=buf.getvalue())
        meta, requests = footers.read_footer_s3(client, "s3://footer-bucket/t.parquet", len(buf.getvalue()))
    assert requests == 2 and footers.summarize(meta)["rejects_by_reason"] == {"decode_error": 5000}


# ----------------------------------------------------------------------------- a first look from shards.parquet
DONE = ["en/a", "en/b", "fr/c"]  # local_corpus' done shards: two of the workflow, one foreign
COUNTS = ("shards", "done", "pending", "failed", "running", "stale", "foreign", "records", "unreadable", "segments")
COUNTS += ("rejects_by_reason", "audit", "random_weights", "failed_shards", "running_shards", "hours_left")


def summarize_shards(config: dict[str, Any], corpus: str, out: Path, shards: list[str], local: dict[str, Path]) -> Path:
    """What rules derive_shard and summarize run (``jobs.derive_job``, ``jobs.summarize_job``, as their scripts call
    them) for ``shards`` of ``corpus`` (a directory or an s3:// URL; ``local``: shard -> the local copy of its token
    file, as this run's encode job leaves it): the reports and dataset parts under ``out``, and ``out/shards.parquet``."""
    from neucodec_workflow.dataset import formats
    from neucodec_workflow.workflow.dataset_jobs import derive_job, summarize_job

    sft, splits = config["sft"], ["train"]
    part_keys = [(fmt, split) for fmt in sft["formats"] for split in splits]
    reports = [str(out / "shards" / f"{s}.json") for s in shards]
    tokens = [f"{corpus}/{s}/neucodec_tokens.parquet" for s in shards]
    derive_job(
        shards=shards,
        tokens=tokens,
        local_tokens=[str(local.get(s, t)) for s, t in zip(shards, tokens, strict=True)],
        metadata=[f"{corpus}/{s}/metadata.parquet" for s in shards],
        reports=reports,
        parts=[str(out / formats.ROOTS[f] / formats.part_path(f, x, s)) for s in shards for f, x in part_keys],
        part_keys=part_keys,
        columns=config["columns"],
        sft=sft,
    )
    outputs = {"stats": str(out / "stats.json"), "shards": str(out / footers.SUMMARY)}
    for fmt in sft["formats"]:
        for name, path in formats.summary_files(fmt, splits).items():
            outputs[f"{fmt}_{name}"] = str(out / formats.ROOTS[fmt] / path)
    summarize_job(reports=reports, outputs=outputs, sft=sft, columns=config["columns"])
    return out / footers.SUMMARY


def rewrite_token_files(corpus: Path, work: Path) -> dict[str, Path]:
    """After the summary: en/a encoded again on another device (its token file's size changes), en/b's token file
    written again with the same bytes (only its time changes); the new files, made in a copy under ``work``."""
    shutil.copytree(corpus / "en/a", work / "en/a")
    encode(work / "en/a", "en/a", "cpu")  # was cuda:0 (Test GPU)
    assert (work / "en/a/neucodec_tokens.parquet").stat().st_size != (
        corpus / "en/a/neucodec_tokens.parquet"
    ).stat().st_size
    (work / "en/b").mkdir(parents=True)
    shutil.copy(corpus / "en/b/neucodec_tokens.parquet", work / "en/b/neucodec_tokens.parquet")  # a new mtime
    return {s: work / s / "neucodec_tokens.parquet" for s in ("en/a", "en/b")}


def test_status_first_look_from_shards_parquet_local(local_corpus: dict[str, Any], tmp_path: Path) -> None:
    """After derive and summarize (the jobs' own code), a first look (no cache) reads no footer: the three done
    token files take their rows of shards.parquet; the counts are the footers' own. A token file written again
    (another size, or the same bytes at a later time) has its footer read."""
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    shutil.copytree(local_corpus["corpus"], corpus)  # copy2: times kept (en/g stays older than its tar)
    shutil.copytree(local_corpus["out"], out)  # the job logs: de/e running, fr/f failed
    config = st.load_config(REPO, overrides=[f"corpus={corpus}", f"output={out}"], snakefile=REPO / "Snakefile")
    now = time.time()
    by_footers = st.status(config, tmp_path, cache=footers.FooterCache(None), now=now)
    assert by_footers["cost"]["footers_read"] == 3 and by_footers["cost"]["summary"] == "absent"

    table = pq.read_table(summarize_shards(config, str(corpus), out, DONE, {})).to_pandas().set_index("shard")
    for s in DONE:
        info = os.stat(corpus / s / "neucodec_tokens.parquet")
        assert (table.loc[s, "token_file_bytes"], table.loc[s, "token_file_mtime"]) == (info.st_size, info.st_mtime)
    cache = footers.FooterCache(tmp_path / "cache.json")
    cold = st.status(config, tmp_path, cache=cache, now=now)
    assert cold["cost"] | {"seconds": 0} == {
        "list_requests": 0,
        "footer_requests": 0,
        "footers_read": 0,
        "footers_cached": 0,
        "footers_from_summary": 3,
        "summary_requests": 0,
        "summary": "read",
        "seconds": 0,
    }
    assert {k: cold[k] for k in COUNTS} == {k: by_footers[k] for k in COUNTS}
    assert cold["throughput"] == by_footers["throughput"] and cold["eta_hours"] == by_footers["eta_hours"]
    # the workflow's shards: the same hours; the foreign one's exact from its report, not estimated from its size
    assert cold["hours_done_estimated"] == 0 and by_footers["hours_done_estimated"] > 0
    workflow_hours = by_footers["hours_done"] - by_footers["hours_done_estimated"]
    assert workflow_hours == pytest.approx(local_corpus["audio"] / 3600)
    assert cold["hours_done"] == pytest.approx(workflow_hours + local_corpus["foreign_audio"] / 3600)
    listing = footers.list_corpus(config, tmp_path)
    read = footers.read_footers(listing, DONE, footers.FooterCache(None)).summaries
    rows = footers.read_footers(
        listing, DONE, footers.FooterCache(None), summary=lambda: footers.read_summary(config, tmp_path, listing, cache)
    )
    assert rows.summary == "unchanged" and rows.read == 3  # the table's rows were taken by the look before
    fresh = footers.FooterCache(None)
    rows = footers.read_footers(
        listing, DONE, fresh, summary=lambda: footers.read_summary(config, tmp_path, listing, fresh)
    )
    assert rows.from_summary == 3 and rows.read == 0
    assert {s: rows.summaries[s] for s in DONE[:2]} == {s: read[s] for s in DONE[:2]}  # field by field

    refresh = st.status(config, tmp_path, cache=footers.FooterCache(tmp_path / "cache.json"), now=now)
    assert (refresh["cost"]["footers_cached"], refresh["cost"]["summary"]) == (3, "not needed")

    for s, path in rewrite_token_files(corpus, tmp_path / "new").items():
        os.replace(path, corpus / s / "neucodec_tokens.parquet")
    later = time.time() + 3  # en/b: the same bytes, a later time
    os.utime(corpus / "en/b/neucodec_tokens.parquet", (later, later))
    for cache in (footers.FooterCache(None), footers.FooterCache(tmp_path / "cache.json")):  # a first look, a refresh
        s = st.status(config, tmp_path, cache=cache, now=now)
        assert (s["cost"]["footers_read"], s["cost"]["footers_from_summary"]) == (2, 1 if cache.path is None else 0)
        assert s["cost"]["footers_cached"] == (0 if cache.path is None else 1)
        assert s["cost"]["summary"] == ("read" if cache.path is None else "unchanged")
        assert s["throughput"]["per_device"]["cpu"]["shards"] == 2  # en/a's new footer: encoded on the CPU
        assert {k: s[k] for k in COUNTS} == {k: cold[k] for k in COUNTS}


@pytest.mark.s3
def test_status_first_look_from_shards_parquet_s3(
    local_corpus: dict[str, Any], tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The corpus in loopback S3, derived from its objects (each token file's LastModified from the GET that read
    it; one HEAD for the token file read from this run's local copy) and summarized; out/shards.parquet in S3 beside
    the corpus. A first look: the listing plus one GET of shards.parquet, no footer; a refresh: the listing alone.
    Token files written again: their footers, and one conditional GET ('not modified') of the unchanged table."""
    pytest.importorskip("moto")
    from support.loopback_s3 import LoopbackS3

    with LoopbackS3() as server:
        client = s3_corpus(server, local_corpus["corpus"], monkeypatch)
        config = ["corpus=s3://status-bucket/c", "output=s3://status-bucket/out", f"local_dir={local_corpus['out']}"]
        derived = tmp_path / "derived"
        local = {"en/b": local_corpus["corpus"] / "en/b/neucodec_tokens.parquet"}  # as if encoded by this run
        validated = st.load_config(REPO, overrides=config, snakefile=REPO / "Snakefile")
        server.reset()
        summary = summarize_shards(validated, "s3://status-bucket/c", derived, DONE, local)
        assert server.counts()["by_method"] == {"GET": 5, "HEAD": 1}  # 3 metadata, 2 token files; en/b's time
        listed = {o["Key"]: o for o in client.list_objects_v2(Bucket="status-bucket", Prefix="c/")["Contents"]}
        table = pq.read_table(summary).to_pandas().set_index("shard")
        for s in DONE:
            o = listed[f"c/{s}/neucodec_tokens.parquet"]
            assert table.loc[s, "token_file_mtime"] == o["LastModified"].timestamp()  # to the second, as listed
            assert table.loc[s, "token_file_bytes"] == o["Size"]

        def look(work: Path) -> tuple[dict[str, Any], dict[str, Any]]:
            server.reset()
            s = run_json(capsys, status_cli(work, *config))
            return s, server.counts()

        by_footers, _ = look(tmp_path / "footers")  # shards.parquet not there yet
        assert by_footers["cost"]["footers_read"] == 3 and by_footers["cost"]["summary"] == "absent"
        client.put_object(Bucket="status-bucket", Key="out/shards.parquet", Body=summary.read_bytes())

        cold, sent = look(tmp_path / "w")
        listing = cold["cost"]["list_requests"]
        assert sent == {"total": listing + 1, "by_method": {"LIST": listing, "GET": 1}} and listing <= 2
        assert (cold["cost"]["footers_read"], cold["cost"]["footers_from_summary"]) == (0, 3)
        assert (cold["cost"]["summary_requests"], cold["cost"]["summary"]) == (1, "read")
        assert {k: cold[k] for k in COUNTS} == {k: by_footers[k] for k in COUNTS}
        assert (cold["done"], cold["pending"], cold["failed"], cold["foreign"]) == (3, 3, 1, 1)

        refresh, sent = look(tmp_path / "w")
        assert sent["total"] == listing and refresh["cost"]["footers_cached"] == 3
        assert refresh["cost"]["summary"] == "not needed" and refresh["cost"]["summary_requests"] == 0

        time.sleep(1.1)  # en/b's same bytes get a later LastModified
        for s, path in rewrite_token_files(local_corpus["corpus"], tmp_path / "new").items():
            client.put_object(Bucket="status-bucket", Key=f"c/{s}/neucodec_tokens.parquet", Body=path.read_bytes())
        refresh, sent = look(tmp_path / "w")
        assert sent == {"total": listing + 1 + 2, "by_method": {"LIST": listing, "GET": 3}}
        assert (refresh["cost"]["summary"], refresh["cost"]["footers_read"], refresh["cost"]["footers_cached"]) == (
            "unchanged",  # a conditional GET: 'not modified'
            2,
            1,
        )
        cold, sent = look(tmp_path / "w2")
        assert sent == {"total": listing + 1 + 2, "by_method": {"LIST": listing, "GET": 3}}
        assert (cold["cost"]["footers_read"], cold["cost"]["footers_from_summary"]) == (2, 1)
        assert cold["throughput"]["per_device"]["cpu"]["shards"] == 2  # en/a's new footer: encoded on the CPU
        assert {k: cold[k] for k in COUNTS} == {k: by_footers[k] for k in COUNTS}


# --------------------------------------------------------------------------------------------- a Snakemake run
@pytest.mark.workflow
@pytest.mark.watching
def test_progress_in_job_log_and_status_after_a_run(tmp_path: Path) -> None:
    """A real run (encode with seeded random weights on the CPU, --keep-going): the encode job's log has progress
    lines; the status command then counts the done, foreign and failed shards, and finds the failure in both logs."""
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    simple_shard(corpus, "en/ok", [1.0, 0.8, 1.2], seed=1)
    bad = simple_shard(corpus, "fr/bad", [0.5], seed=2)
    (bad / "audio.tar").write_bytes(b"not a tar at all" * 64)
    foreign = simple_shard(corpus, "de/foreign", [0.5], seed=3)
    foreign_tokens(foreign / "neucodec_tokens.parquet", ["de_foreign_000"], 25)
    config = {"corpus": str(corpus), "output": str(out), "codec": json.dumps({"weights": "random", "device": "cpu"})}
    proc = run_snakemake(tmp_path, "--keep-going", config=config, check=False, env={"NEUCODEC_PROGRESS_SECONDS": "0.2"})
    assert proc.returncode != 0  # fr/bad failed, the others went on

    lines = list(PROGRESS.finditer((out / "logs/encode/en/ok.log").read_text()))
    assert len(lines) >= 2, (out / "logs/encode/en/ok.log").read_text()
    assert any(m.group(5) == "" for m in lines)  # at least one line at the cadence, before the end
    assert lines[-1].group(2) == lines[-1].group(3) == "3" and lines[-1].group(5) == " (end)"
    assert st.snakemake_failures(tmp_path) == {"fr/bad"}

    exe = Path(sys.executable).with_name(
        "neucodec-workflow"
    )  # python -m neucodec_workflow.commands.status: 'status' implied
    cmd = [str(exe), "status"] if exe.exists() else [sys.executable, "-m", "neucodec_workflow.commands.status"]
    argv = status_cli(Path("."), *(f"{k}={v}" for k, v in config.items()), extra=("--json",))[1:]
    run = subprocess.run([*cmd, *argv], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert run.returncode == 0, run.stderr
    s = json.loads(run.stdout)
    assert (s["shards"], s["done"], s["pending"], s["failed"], s["foreign"]) == (3, 2, 0, 1, 1)
    assert s["failed_shards"]["fr/bad"].startswith("shard fr/bad: cannot read audio.tar")
    assert s["hours_left"] > 0 and s["eta_hours"] > 0 and s["random_weights"] is True
    assert s["audit"]["token_agreement"] == 1.0


def test_watch_refreshes_until_interrupted(
    local_corpus: dict[str, Any], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--watch 5``: a look, a pause of 5 s, another look...; Ctrl-C ends it quietly (pauses cut short here)."""
    pauses: list[float] = []

    def pause(seconds: float) -> None:
        pauses.append(seconds)
        if len(pauses) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(st.time, "sleep", pause)
    argv = status_cli(local_corpus["root"], f"corpus={local_corpus['corpus']}", f"output={local_corpus['out']}")
    capsys.readouterr()
    assert st.main([*argv, "--watch", "5", "--json"]) == 0
    looks = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert pauses == [5.0, 5.0] and len(looks) == 2 and all(x["shards"] == 7 for x in looks)
    assert looks[1]["cost"]["footers_read"] == 0  # the refresh came from the cache kept in memory
