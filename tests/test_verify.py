"""``snakemake verify``: token files checked from their footers (neucodec_workflow/commands/verify.py), on real token files
written by ``contract.write_tokens`` with a report, then broken: truncated, footer corrupted, spliced, rewritten with
another record, nulls, wrong types, foreign; full mode for a flipped byte inside a page. Then the target itself,
local and in the loopback S3 server, with token files already there (nothing is encoded)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import simple_shard, snakemake_command
from test_s3 import ACCESS_KEY, SECRET, s3_env  # the loopback S3 keys and the Snakemake environment for them

from neucodec_workflow.commands.verify import BAD, ERROR, MISSING, OK, TRUNCATED, failure, verify_file, verify_shards
from neucodec_workflow.record.contract import PROVENANCE_KEY, REPORT_KEY, SCHEMA, TOKENS, write_tokens

PROVENANCE = {"codec": "test", "random_weights": True}


def rows_of(n: int, seed: int, prefix: str = "seg") -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        (f"{prefix}_{i:03d}", rng.integers(0, 65536, int(rng.integers(20, 200))).astype(np.uint16)) for i in range(n)
    ]


def report_of(rows: list[tuple[str, np.ndarray]], rejected: int = 1) -> dict[str, Any]:
    """What the encode job's report says of these rows (the fields verify reads, and a few more)."""
    return {
        "encoded": len(rows),
        "tokens": int(sum(len(t) for _, t in rows)),
        "rejected_count": rejected,
        "segments": len(rows) + rejected,
        "device": "cpu",
    }


def token_file(
    path: Path, n: int = 40, seed: int = 0, *, report: dict[str, Any] | None = None, group: int = 16
) -> Path:
    """A real token file with its report (three row groups at the defaults)."""
    rows = rows_of(n, seed)
    write_tokens(path, rows, PROVENANCE, report=lambda: report or report_of(rows), rows_per_group=group)
    return path


def check(path: Path, **kw: Any) -> dict[str, Any]:
    return verify_file("en/shard-0", str(path), **kw)


def footer_span(data: bytes) -> tuple[int, int]:
    """(start, length) of the thrift footer."""
    length = int.from_bytes(data[-8:-4], "little")
    return len(data) - 8 - length, length


def flip(data: bytes, pos: int) -> bytes:
    out = bytearray(data)
    out[pos] ^= 0xFF
    return bytes(out)


# -------------------------------------------------------------------------------------------- the footer's thrift
def test_the_footers_thrift_as_verify_reads_it(tmp_path: Path) -> None:
    """``parquet_thrift`` on a real token file: the row count and row groups pyarrow sees, the total length of the
    token bytes per row group (size statistics), and byte regions that tile the file between its magic and footer."""
    from neucodec_workflow.commands.parquet_thrift import byte_regions, raw_footer, value_bytes

    rows = rows_of(40, 0)
    metadata = pq.ParquetFile(token_file(tmp_path / TOKENS)).metadata
    raw = raw_footer(metadata)
    assert raw[3] == metadata.num_rows == 40 and len(raw[4]) == metadata.num_row_groups == 3
    sizes = value_bytes(raw, "neucodec_tokens")
    assert sizes == [sum(2 * len(t) for _, t in rows[g : g + 16]) for g in (0, 16, 32)]
    regions, complete = byte_regions(raw)
    assert complete and regions[0][0] == 4
    assert all(start + length <= nxt for (start, length, _), (nxt, _, _) in zip(regions, regions[1:], strict=False))


# ---------------------------------------------------------------------------------------------------- footer only
def test_a_good_token_file_is_ok_from_its_footer_alone(tmp_path: Path) -> None:
    path = token_file(tmp_path / TOKENS)
    rows = rows_of(40, 0)
    r = check(path)
    assert (r["status"], r["ok"], r["problems"], r["notes"]) == (OK, True, [], [])
    assert (r["record"], r["rows"]) == ("workflow", 40)
    assert r["tokens"] == sum(len(t) for _, t in rows)  # from the footer's size statistics, exactly
    assert r["requests"] == 0 and r["bytes_read"] <= 4 + (64 << 10)
    full = check(path, full=True)
    assert (full["status"], full["problems"]) == (OK, []) and full["bytes_read"] == path.stat().st_size


@pytest.mark.parametrize("cut", [1, 100, 2000])
def test_a_truncated_file_is_bad(tmp_path: Path, cut: int) -> None:
    data = token_file(tmp_path / "good.parquet").read_bytes()
    (tmp_path / TOKENS).write_bytes(data[:-cut])
    r = check(tmp_path / TOKENS)
    assert r["status"] == BAD and r["ok"] is False and r["shard"] == "en/shard-0"
    assert r["problems"][0].startswith(TRUNCATED), r["problems"]


def test_an_empty_or_tiny_file_is_bad(tmp_path: Path) -> None:
    for body in (b"", b"PAR1"):
        (tmp_path / TOKENS).write_bytes(body)
        r = check(tmp_path / TOKENS)
        assert r["status"] == BAD and r["problems"] == [f"{TRUNCATED}: {len(body)} bytes"]


@pytest.mark.parametrize("how", ["zeroed", "length", "head"])
def test_a_corrupted_footer_is_bad(tmp_path: Path, how: str) -> None:
    data = token_file(tmp_path / "good.parquet").read_bytes()
    start, length = footer_span(data)
    if how == "zeroed":  # the middle of the thrift footer overwritten
        data = data[: start + length // 2] + bytes(64) + data[start + length // 2 + 64 :]
    elif how == "length":  # the footer's length field
        data = data[:-8] + (len(data) * 2).to_bytes(4, "little") + data[-4:]
    else:  # the leading magic
        data = b"XXXX" + data[4:]
    (tmp_path / TOKENS).write_bytes(data)
    r = check(tmp_path / TOKENS)
    assert r["status"] == BAD, r
    assert any(TRUNCATED in p for p in r["problems"]), r["problems"]


def test_bytes_removed_or_inserted_in_the_middle_are_caught_by_the_sizes(tmp_path: Path) -> None:
    data = token_file(tmp_path / "good.parquet").read_bytes()
    middle = len(data) // 3
    (tmp_path / TOKENS).write_bytes(data[:middle] + data[middle + 512 :])
    r = check(tmp_path / TOKENS)
    assert r["status"] == BAD and "the file was cut or bytes were removed" in r["problems"][0], r["problems"]
    (tmp_path / TOKENS).write_bytes(data[:middle] + b"\0" * 100 + data[middle:])
    r = check(tmp_path / TOKENS)
    assert r["status"] == BAD and "100 bytes unaccounted for" in r["problems"][0], r["problems"]


def test_footer_rows_and_tokens_against_the_record(tmp_path: Path) -> None:
    """The same rows rewritten with another record: the footer's row count and token total disagree with it."""
    rows = rows_of(40, 0)
    wrong = {**report_of(rows), "encoded": 41, "tokens": report_of(rows)["tokens"] + 7, "segments": 42}
    r = check(token_file(tmp_path / TOKENS, report=wrong))
    assert r["status"] == BAD
    assert "rows: the file has 40, the record says 41 encoded" in r["problems"]
    assert any(p.startswith("token counts: the rows hold") and "the record says" in p for p in r["problems"])
    inconsistent = {**report_of(rows), "segments": 99}
    r = check(token_file(tmp_path / TOKENS, report=inconsistent))
    assert r["problems"] == ["record: 99 segments but 40 encoded + 1 rejected"]


def test_token_counts_that_cannot_match_the_bytes_are_caught_by_the_statistics(tmp_path: Path) -> None:
    """Every row holds 100 tokens but says 50: the footer's byte total lies outside rows * [min, max] token_count."""
    blobs = [np.arange(100, dtype="<u2").tobytes()] * 10
    table = pa.table([[f"s{i}" for i in range(10)], blobs, pa.array([50] * 10, pa.int32())], schema=SCHEMA)
    pq.write_table(table, tmp_path / TOKENS)
    r = check(tmp_path / TOKENS)
    assert r["status"] == BAD and r["tokens"] == 1000
    assert any("rows of 50-50" in p for p in r["problems"]), r["problems"]


def test_nulls_are_bad(tmp_path: Path) -> None:
    rows = rows_of(5, 1)
    report = report_of(rows)
    schema = SCHEMA.with_metadata({PROVENANCE_KEY: json.dumps(PROVENANCE), REPORT_KEY: json.dumps(report)})
    blobs: list[bytes | None] = [t.astype("<u2").tobytes() for _, t in rows]
    counts: list[int | None] = [len(t) for _, t in rows]
    blobs[2], counts[3] = None, None
    pq.write_table(
        pa.table([[s for s, _ in rows], blobs, pa.array(counts, pa.int32())], schema=schema), tmp_path / TOKENS
    )
    r = check(tmp_path / TOKENS)
    assert r["status"] == BAD
    assert {p for p in r["problems"] if p.startswith("nulls")} == {
        "nulls: 1 in neucodec_tokens (row group 0)",
        "nulls: 1 in token_count (row group 0)",
    }


@pytest.mark.parametrize(
    "column, values, expected",
    [
        ("token_count", pa.array([3, 4], pa.int64()), "schema: column token_count is INT64 None"),
        (
            "token_count",
            pa.array([3, 4], pa.uint32()),
            "schema: column token_count is INT32 Int(bitWidth=32, isSigned=false)",
        ),
        (
            "neucodec_tokens",
            pa.array([[1, 2, 3], [1, 2, 3, 4]], pa.list_(pa.uint16())),
            "schema: column neucodec_tokens is nested",
        ),
        (
            "neucodec_tokens",
            pa.array(["abcdef", "abcdefgh"], pa.string()),
            "schema: column neucodec_tokens is BYTE_ARRAY String",
        ),
        ("segment_id", None, "schema: no column segment_id"),
    ],
)
def test_wrong_types_are_bad(tmp_path: Path, column: str, values: Any, expected: str) -> None:
    good = {
        "segment_id": pa.array(["a", "b"]),
        "neucodec_tokens": pa.array([b"\0" * 6, b"\0" * 8], pa.binary()),
        "token_count": pa.array([3, 4], pa.int32()),
    }
    if values is None:
        del good[column]
    else:
        good[column] = values
    pq.write_table(pa.table(good), tmp_path / TOKENS)
    r = check(tmp_path / TOKENS)
    assert r["status"] == BAD and any(p.startswith(expected) for p in r["problems"]), r["problems"]


def test_a_foreign_file_is_ok_with_a_note(tmp_path: Path) -> None:
    """A token file made by another tool: no record to compare with; said as a note, not a problem."""
    rows = rows_of(12, 2)
    table = pa.table(
        [[s for s, _ in rows], [t.tobytes() for _, t in rows], pa.array([len(t) for _, t in rows], pa.int32())],
        schema=SCHEMA.with_metadata(None),
    )
    pq.write_table(table, tmp_path / TOKENS)
    r = check(tmp_path / TOKENS)
    assert (r["status"], r["ok"], r["problems"], r["record"]) == (OK, True, [], "foreign")
    assert any(n.startswith("foreign token file (no record)") for n in r["notes"]), r["notes"]
    assert r["tokens"] == sum(len(t) for _, t in rows)


def test_a_missing_file_is_missing_not_bad(tmp_path: Path) -> None:
    for full in (False, True):
        r = check(tmp_path / TOKENS, full=full)
        assert (r["status"], r["ok"], r["problems"]) == (MISSING, None, [])


# ------------------------------------------------------------------------------------------------------ full mode
def test_full_mode_catches_a_flipped_byte_inside_a_data_page(tmp_path: Path) -> None:
    """A byte flipped inside the token_count data page of the middle row group: sizes and footer unchanged, so the
    footer check passes; full mode decodes the page and catches it (a page that does not decode, or a token_count
    that is not len(bytes) // 2). Every position of the page's payload that changes what it decodes to is tried."""
    path = token_file(tmp_path / "good.parquet")
    data = path.read_bytes()
    good = pq.read_table(path)
    chunk = pq.ParquetFile(path).metadata.row_group(1).column(2)
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    end = start + chunk.total_compressed_size
    tried = 0
    for pos in range(chunk.data_page_offset + (end - chunk.data_page_offset) // 3, end):
        broken = flip(data, pos)
        (tmp_path / TOKENS).write_bytes(broken)
        try:
            if pq.read_table(tmp_path / TOKENS).equals(good):
                continue  # a byte the reader does not use (page statistics): nothing to catch
        except Exception:
            pass
        tried += 1
        assert check(tmp_path / TOKENS)["status"] == OK, pos  # the footer cannot see it
        r = check(tmp_path / TOKENS, full=True)
        assert r["status"] == BAD, (pos, r)
        assert any(
            re.match(r"row group 1 does not decode|token counts: \d+ rows with token_count != len", p)
            for p in r["problems"]
        ), r["problems"]
    assert tried >= 10


def test_full_mode_checks_every_row_against_the_record(tmp_path: Path) -> None:
    rows = rows_of(20, 3)
    # the record's tokens off by one: the footer sees it too (size statistics); full mode adds up token_count
    r = check(token_file(tmp_path / TOKENS, 20, 3, report={**report_of(rows), "tokens": 1}), full=True)
    assert (
        "token counts: the rows' token_count add up to " + str(report_of(rows)["tokens"]) + ", the record says 1"
        in r["problems"]
    )


# ------------------------------------------------------------------------------------------------------ a corpus
def test_verify_shards_summary(tmp_path: Path) -> None:
    paths = {s: tmp_path / s / TOKENS for s in ("a/good", "a/cut", "b/missing")}
    token_file(paths["a/good"])
    data = token_file(tmp_path / "x.parquet").read_bytes()
    paths["a/cut"].parent.mkdir(parents=True)
    paths["a/cut"].write_bytes(data[:-10])
    summary = verify_shards(list(paths), [str(p) for p in paths.values()])
    assert (summary["shards"], summary["checked"], summary["ok"], summary["missing"]) == (3, 2, 1, ["b/missing"])
    assert list(summary["bad"]) == ["a/cut"] and summary["errors"] == {}
    assert [r["status"] for r in summary["results"]] == [OK, BAD, MISSING]
    message = failure(summary, "verify.json")
    assert message is not None and message.startswith("1 bad token file(s) of 2 checked: a/cut: truncated or not")
    assert "b/missing" not in message and message.endswith("(every problem: verify.json)")
    many = {**summary, "bad": {f"s{i}": ["broken"] for i in range(25)}}
    assert (failure(many, "v") or "").count("broken") == 20 and "... and 5 more" in (failure(many, "v") or "")
    assert failure({**summary, "bad": {}}, "v") is None


# --------------------------------------------------------------------------------------------------- S3 (unit)
@pytest.fixture(scope="module")
def s3_server() -> Iterator[Any]:
    pytest.importorskip("moto")
    from support.loopback_s3 import LoopbackS3

    with LoopbackS3() as server:
        yield server


BUCKET = "verify-bucket"


@pytest.fixture(scope="module")
def s3_client(s3_server: Any) -> Any:
    from neucodec_workflow.storage.s3 import S3Settings

    client = S3Settings(endpoint_url=s3_server.endpoint, access_key=ACCESS_KEY, secret_key=SECRET).client()
    client.create_bucket(Bucket=BUCKET)
    return client


@pytest.mark.s3
def test_s3_footer_reads_are_ranged_and_few(s3_server: Any, s3_client: Any, tmp_path: Path) -> None:
    """In S3: 2 ranged GETs per token file (its first 4 bytes with the size, its last 64 KiB), 3 for a footer over
    64 KiB, 1 for a missing one; a truncated object is bad; full mode is one GET of the whole object."""
    good = token_file(tmp_path / "good.parquet", 600, 4, group=256).read_bytes()  # over 64 KiB
    rows = rows_of(10, 5)
    big = report_of(rows) | {"pad": "x" * 100_000}  # a report with many rejects: a footer longer than 64 KiB
    long_footer = token_file(tmp_path / "big.parquet", 10, 5, report=big).read_bytes()
    objects = {"good": good, "cut": good[:-300], "big": long_footer, "empty": b""}
    for name, body in objects.items():
        s3_client.put_object(Bucket=BUCKET, Key=f"unit/{name}/{TOKENS}", Body=body)

    def run(name: str, **kw: Any) -> tuple[dict[str, Any], int]:
        s3_server.reset()
        r = verify_file(name, f"s3://{BUCKET}/unit/{name}/{TOKENS}", client=s3_client, **kw)
        sent = s3_server.counts()
        assert sent["total"] == sent["by_method"].get("GET", 0) == r["requests"], (sent, r)
        return r, sent["total"]

    r, n = run("good")
    assert (r["status"], n) == (OK, 2) and r["bytes_read"] <= 4 + min(len(good), 64 << 10) < len(good), r
    r, n = run("cut")
    assert (r["status"], n) == (BAD, 2) and r["problems"][0].startswith(TRUNCATED)
    r, n = run("big")
    assert (r["status"], n) == (OK, 3), r
    r, n = run("empty")
    assert (r["status"], n, r["problems"]) == (BAD, 1, [f"{TRUNCATED}: 0 bytes"])
    r, n = run("missing")
    assert (r["status"], n) == (MISSING, 1)
    r, n = run("good", full=True)
    assert (r["status"], n, r["bytes_read"]) == (OK, 1, len(good))
    r, n = run("missing", full=True)
    assert (r["status"], n) == (MISSING, 1)

    # a bucket that does not exist is not a missing token file: the shard could not be checked (the run fails)
    r = verify_file("x", f"s3://no-such-bucket-verify/{TOKENS}", client=s3_client)
    assert (r["status"], r["ok"]) == (ERROR, False) and "NoSuchBucket" in r["problems"][0], r
    summary = verify_shards(["x"], [f"s3://no-such-bucket-verify/{TOKENS}"], client=s3_client)
    assert list(summary["errors"]) == ["x"] and "1 token file(s) could not be checked: x:" in (
        failure(summary, "v") or ""
    )


# ---------------------------------------------------------------------------------------------- the target itself
SHARDS = ["en/good-0", "en/good-1", "en/cut", "en/spliced", "en/flipped", "en/not-yet"]


def felt_flip(data: bytes) -> int:
    """A byte in the second half of row group 1's token_count data page whose flip changes what the file decodes to
    (or breaks it): sizes and footer stay as they were."""
    chunk = pq.ParquetFile(pa.BufferReader(data)).metadata.row_group(1).column(2)
    end = (chunk.dictionary_page_offset or chunk.data_page_offset) + chunk.total_compressed_size
    good = pq.read_table(pa.BufferReader(data))
    for pos in range((chunk.data_page_offset + end) // 2, end):
        try:
            if not pq.read_table(pa.BufferReader(flip(data, pos))).equals(good):
                return pos
        except Exception:
            return pos
    raise AssertionError("no byte of the page changes what it decodes to")


def corpus_with_token_files(root: Path) -> dict[str, bytes]:
    """Real shards (tar + metadata) whose token files are already there, newer than their inputs: two good, one
    truncated, one with bytes removed in the middle, one with a byte flipped inside a data page (only full mode sees
    it), and one not encoded yet. Returns the token files' bytes by shard."""
    written = {}
    for i, shard in enumerate(SHARDS):
        d = simple_shard(root, shard, [0.05] * 3, seed=i)
        if shard == "en/not-yet":
            continue
        data = token_file(d / "good.parquet", 40, i).read_bytes()
        (d / "good.parquet").unlink()
        if shard == "en/cut":
            data = data[:-200]
        elif shard == "en/spliced":
            data = data[:1000] + data[1600:]
        elif shard == "en/flipped":
            data = flip(data, felt_flip(data))
        (d / TOKENS).write_bytes(data)
        later = os.stat(d / "metadata.parquet").st_mtime + 5
        os.utime(d / TOKENS, (later, later))
        written[shard] = data
    return written


def no_encode_job(output: str) -> bool:
    return not re.search(r"^encode_shard\s+\d", output, re.M) and "rule encode_shard" not in output


@pytest.mark.workflow
def test_snakemake_verify_names_the_bad_shards_and_encodes_nothing(tmp_path: Path) -> None:
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    written = corpus_with_token_files(corpus)
    config = {"corpus": str(corpus), "output": str(out)}
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    def verify(**more: str) -> subprocess.CompletedProcess[str]:
        cmd = snakemake_command(tmp_path, "verify", config={**config, **more})
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)

    r = verify()
    log = r.stdout + r.stderr
    assert r.returncode != 0, log[-3000:]
    assert no_encode_job(log), log[-3000:]
    assert re.search(r"2 bad token file\(s\) of 5 checked: en/cut: truncated or not parquet.*; en/spliced: ", log)
    report = json.loads((out / "verify.json").read_text())
    assert (report["mode"], report["shards"], report["checked"], report["ok"]) == ("footer", 6, 5, 3)
    assert sorted(report["bad"]) == ["en/cut", "en/spliced"] and report["missing"] == ["en/not-yet"]
    status = {r["shard"]: r["status"] for r in report["results"]}
    assert status == {
        "en/good-0": OK,
        "en/good-1": OK,
        "en/flipped": OK,
        "en/cut": BAD,
        "en/spliced": BAD,
        "en/not-yet": MISSING,
    }
    for shard, data in written.items():  # nothing rewritten, nothing encoded
        assert (corpus / shard / TOKENS).read_bytes() == data
    assert not (corpus / "en/not-yet" / TOKENS).exists()

    # full mode from the command line (a nested --config value arrives as the string "true"): the flipped page too
    r = verify(verify="{full: true}")
    log = r.stdout + r.stderr
    assert r.returncode != 0 and no_encode_job(log), log[-3000:]
    report = json.loads((out / "verify.json").read_text())
    assert report["mode"] == "full" and sorted(report["bad"]) == ["en/cut", "en/flipped", "en/spliced"], report["bad"]
    assert "en/flipped" in log


@pytest.mark.workflow
@pytest.mark.s3
def test_snakemake_verify_in_s3_with_few_requests_per_shard(s3_server: Any, s3_client: Any, tmp_path: Path) -> None:
    """Corpus and output in the loopback S3 server: the same verdicts; the report is an object; per token file two
    ranged GETs (one for a missing one), besides the run's listing and the report's PUT."""
    local = tmp_path / "corpus"
    written = corpus_with_token_files(local)
    prefix = "wf"
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        s3_client.put_object(Bucket=BUCKET, Key=f"{prefix}/corpus/{path.relative_to(local)}", Body=path.read_bytes())
    env = {**s3_env(s3_server.endpoint, tmp_path), "HF_HUB_OFFLINE": "1"}  # the keys come only from here
    config = {
        "corpus": f"s3://{BUCKET}/{prefix}/corpus",
        "output": f"s3://{BUCKET}/{prefix}/out",
        "local_dir": str(tmp_path / "local"),
    }
    cmd = snakemake_command(tmp_path, "verify", config=config)
    s3_server.reset()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    sent = s3_server.counts()
    log = r.stdout + r.stderr
    assert r.returncode != 0 and no_encode_job(log), log[-3000:]
    assert "en/cut" in log and "en/spliced" in log
    report = json.loads(s3_client.get_object(Bucket=BUCKET, Key=f"{prefix}/out/verify.json")["Body"].read())
    assert sorted(report["bad"]) == ["en/cut", "en/spliced"] and report["missing"] == ["en/not-yet"]
    assert report["ok"] == 3
    per_shard = {r["shard"]: r["requests"] for r in report["results"]}
    assert per_shard == {s: (1 if s == "en/not-yet" else 2) for s in SHARDS}, per_shard
    gets = sent["by_method"].get("GET", 0)
    assert gets == report["requests"] == 2 * len(written) + 1, sent
    assert sent["by_method"].get("PUT", 0) == 1, sent  # the report
    assert sent["total"] == sent["by_method"].get("LIST", 0) + gets + 1 and sent["by_method"].get("LIST", 0) <= 4, sent
    for shard, data in written.items():  # nothing rewritten, nothing encoded
        body = s3_client.get_object(Bucket=BUCKET, Key=f"{prefix}/corpus/{shard}/{TOKENS}")["Body"].read()
        assert body == data
    assert SECRET not in log
