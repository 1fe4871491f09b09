"""The dataset rules' entry points (derive_shard / derive_batch_N, summarize, push_to_hub): each takes plain values,
so scripts stay thin."""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import Any

from neucodec_workflow.record import layout
from neucodec_workflow.record.contract import RANDOM_BANNER, write_json

log = logging.getLogger(layout.JOB_LOGGER)


def derive_job(
    *,
    shards: list[str],
    tokens: list[str],
    local_tokens: list[str],
    metadata: list[str],
    reports: list[str],
    parts: list[str],
    part_keys: list[tuple[str, str]],
    columns: dict[str, Any],
    sft: dict[str, Any],
    staging: list[str] | None = None,
    report_staging: list[str] | None = None,
    receipts: str | None = None,
    digests: str | None = None,
) -> None:
    """Rules derive_shard / derive_batch_N: each shard's report and dataset parts from its token file and metadata.
    ``tokens``/``metadata``: paths or s3:// URLs (each read once, into memory, while the previous shard is derived);
    ``local_tokens``: where a token file made by this run is still on local disk (read instead of the object);
    ``reports``: where each shard's report goes; ``parts``: where each shard's parts go (in the order of
    ``part_keys``, its (format, split) pairs); paths or s3:// URLs. A report or part bound for S3 is written at its
    ``report_staging`` / ``staging`` path, uploaded as soon as it is complete and removed (one file on local disk at
    a time; the upload is recorded in ``receipts``: storage/uploads.py). Then, with ``digests`` (an s3:// folder),
    one digest of the job's reports for summarize (storage/digests.py). A shard whose token file or metadata is
    unreadable gets a report that records why and empty parts (dataset/derive.py: derive_or_record_failure): the
    other shards are derived and sent, and the job logs the failed ones at the end and succeeds, since Snakemake
    removes every output of a failed job; summarize then refuses, naming them."""
    from neucodec_workflow.background import Prefetched
    from neucodec_workflow.dataset.derive import FAILED
    from neucodec_workflow.record.progress import Progress, Tick
    from neucodec_workflow.storage import digests as digest
    from neucodec_workflow.storage.uploads import Uploader

    os.environ.setdefault("RAYON_NUM_THREADS", "1")  # the tokenizer's threads: the job has one core
    files = _ShardFiles(shards, tokens, local_tokens, metadata)
    job = _Derive(shards, reports, parts, part_keys, staging or parts, report_staging or reports, columns, sft)
    derived: list[float] = []  # audio seconds of each shard derived so far
    failed: dict[str, str] = {}  # shard -> why it could not be derived (its report records it)

    def tick() -> Tick:
        return Tick(len(derived), len(shards), sum(derived), unit="shards")

    with Uploader(receipts) as job.uploader, Progress(f"derive {len(shards)} shards", tick):
        # each shard's files are read while the one before is derived (two shards in memory at most)
        with Prefetched(map(files.fetch, range(len(shards))), depth=0, name="derive-fetch") as fetched:
            for i, tokens_in, metadata_in, tokens_mtime in fetched:
                report = job.derive(i, tokens_in, metadata_in, tokens_mtime)
                derived.append(float(report["audio_seconds"]))
                if report["record"] == FAILED:
                    failed[shards[i]] = report["error"]
        if digests and job.sent_reports:
            summary = digest.write(job.uploader.client, digests, job.sent_reports)
            log.info("report digest of %d shards: %s", len(job.sent_reports), summary)
    if failed:  # the job itself succeeds: Snakemake would remove the other shards' reports and parts
        log.error(
            "%d of %d shards could not be derived; their reports record it and summarize refuses them until fixed: %s",
            len(failed),
            len(shards),
            "; ".join(failed.values()),
        )


class _ShardFiles:
    """What a derive job reads of each shard: its token file (the local copy a run of this workflow left, when it is
    provably the object in S3 now) and its metadata, each once, into memory."""

    def __init__(self, shards: list[str], tokens: list[str], local_tokens: list[str], metadata: list[str]):
        from neucodec_workflow.storage.streams import OneAtATime

        self.shards, self.tokens, self.local_tokens, self.metadata = shards, tokens, local_tokens, metadata
        self.read = OneAtATime()
        self.client: Any = None  # for the HEAD of a token file that has a local copy

    def fetch(self, i: int) -> tuple[int, Any, Any, float]:
        """Shard i: its token file, its metadata, and the token file's time (S3: LastModified, from the request that
        read it; a local file's modification time)."""
        copy = self.local_copy(i)
        if copy is not None:
            return i, copy[0], self.read(self.metadata[i]), copy[1]
        tokens_in = self.read(self.tokens[i])
        return i, tokens_in, self.read(self.metadata[i]), self.read.mtime(self.tokens[i])

    def local_copy(self, i: int) -> tuple[io.BytesIO, float] | None:
        """Shard i's token file from the local copy the storage plugin left, if that copy is provably the object in
        S3 now (``same_object``; one HEAD, which also gives the object's LastModified), with that time."""
        from neucodec_workflow.storage.s3 import S3Error, S3Settings, is_s3, split_url
        from neucodec_workflow.storage.streams import describe

        url, local = self.tokens[i], self.local_tokens[i]
        if not is_s3(url) or not os.path.exists(local):
            return None
        if self.client is None:
            self.client = S3Settings.from_env().client()
        bucket, key = split_url(url)
        try:
            head = self.client.head_object(Bucket=bucket, Key=key)
        except Exception as exc:
            raise S3Error(f"{url}: {describe(exc)}") from exc
        data = Path(local).read_bytes()
        why = same_object(data, os.stat(local).st_mtime, head)
        if why is not None:
            log.warning(
                "shard %s: the local copy %s is not the object in S3 (%s): reading the object",
                self.shards[i],
                local,
                why,
            )
            return None
        return io.BytesIO(data), float(head["LastModified"].timestamp())


class _Derive:
    """Where a derive job writes each shard's report and parts (its path, or for a file bound for S3 its staging
    path, sent as soon as it is complete), and the digest entries of the reports it sent."""

    def __init__(
        self,
        shards: list[str],
        reports: list[str],
        parts: list[str],
        part_keys: list[tuple[str, str]],
        staging: list[str],
        report_staging: list[str],
        columns: dict[str, Any],
        sft: dict[str, Any],
    ):
        from neucodec_workflow.dataset.formats import FormatWriter
        from neucodec_workflow.storage.s3 import is_s3

        if any(is_s3(local) for local in [*staging, *report_staging]):
            raise ValueError("reports and parts bound for S3 need local staging paths")
        self.shards, self.reports, self.part_keys = shards, reports, part_keys
        self.staging, self.report_staging, self.columns, self.sft = staging, report_staging, columns, sft
        pairs = [*zip(staging, parts, strict=True), *zip(report_staging, reports, strict=True)]
        self.destination = {local: url for local, url in pairs if is_s3(url)}
        self.writer = FormatWriter(sft)
        self.uploader: Any = None  # the job's Uploader, while it runs
        self.sent_reports: list[dict[str, str]] = []  # the digest's entries

    def parts_of(self, i: int) -> dict[str, dict[str, str]]:
        """Shard i's parts: format -> split -> where the writer writes it."""
        n = len(self.part_keys)
        out: dict[str, dict[str, str]] = {}
        for (fmt, split), path in zip(self.part_keys, self.staging[i * n : (i + 1) * n], strict=True):
            out.setdefault(fmt, {})[split] = path
        return out

    def written(self, path: str | Path) -> str | None:
        """Send a finished file bound for S3; its ETag."""
        url = self.destination.get(str(path))
        return self.uploader.send(path, url) if url is not None else None

    def derive(self, i: int, tokens_in: Any, metadata_in: Any, tokens_mtime: float) -> dict[str, Any]:
        """Shard i's report and parts (or its failure's), logged, sent; the report."""
        from neucodec_workflow.dataset.derive import derive_or_record_failure
        from neucodec_workflow.dataset.formats import describe
        from neucodec_workflow.storage import digests as digest
        from neucodec_workflow.storage.s3 import is_s3

        shard = self.shards[i]
        report = derive_or_record_failure(
            shard,
            tokens_in,
            metadata_in,
            self.columns,
            report_path=self.report_staging[i],
            parts=self.parts_of(i),
            validation_fraction=float(self.sft["validation_fraction"]),
            rows_per_row_group=int(self.sft["rows_per_row_group"]),
            writer=self.writer,
            tokens_mtime=tokens_mtime,
            on_part=self.written,
        )
        sft = report["sft"]
        log.info(
            "shard %s: %s record, %d rows, dataset rows %s, left out %s",
            shard,
            report["record"],
            report["token_file"]["rows"],
            sft["rows_per_split"],
            sft["excluded_by_reason"] or "none",
        )
        for fmt, by_split in sft["formats"].items():
            log.info("shard %s: %s %s", shard, fmt, {split: describe(p) for split, p in by_split.items()})
        if is_s3(self.reports[i]):
            text = Path(self.report_staging[i]).read_text()
            etag = self.written(self.report_staging[i])
            if etag:
                self.sent_reports.append(digest.entry(self.reports[i], etag, text))
        return report


# Part sizes a multipart ETag may come from, after the encode job's own (storage/uploads.py: parts of the multipart
# threshold, at least 8 MiB): boto3's default 8 MiB (the storage plugin's upload_file), then other tools' defaults
MULTIPART_CHUNKS_MIB = (8, 5, 16, 10, 15, 32, 50, 64, 100, 128)


def multipart_etag(data: bytes, parts: int) -> list[str]:
    """The ETags an upload of ``data`` in ``parts`` parts of the encode job's part size or one of
    ``MULTIPART_CHUNKS_MIB`` would have (the MD5 of the parts' MD5s, ``-parts``)."""
    import hashlib

    from neucodec_workflow.storage.uploads import MULTIPART_BYTES, multipart_bytes

    out = []
    for chunk in dict.fromkeys([max(multipart_bytes(), MULTIPART_BYTES), *(mib << 20 for mib in MULTIPART_CHUNKS_MIB)]):
        if -(-len(data) // chunk) != parts:
            continue
        digests = b"".join(hashlib.md5(data[o : o + chunk]).digest() for o in range(0, len(data), chunk))
        out.append(f"{hashlib.md5(digests).hexdigest()}-{parts}")
    return out


def same_object(data: bytes, local_mtime: float, head: dict[str, Any]) -> str | None:
    """Why a local copy (its bytes and modification time) is not provably the S3 object a HEAD described (None: it
    is). The sizes must be equal, and the ETag must be the copy's MD5 (a single-part upload) or the MD5 of its parts'
    MD5s (a multipart upload in parts of the encode job's size or of ``MULTIPART_CHUNKS_MIB``). Where the ETag is no MD5 of the content (SSE-KMS,
    other part sizes), the copy must not be older than the object (then the object was not replaced after the copy
    was written): a copy written before its own upload fails that too, and the object is read (correct, only slower)."""
    import hashlib

    size = int(head.get("ContentLength", -1))
    if size != len(data):
        return f"{len(data)} bytes here, {size} in S3"
    etag = str(head.get("ETag") or "").strip('"')
    if etag:
        _, _, parts = etag.partition("-")
        if not parts and etag == hashlib.md5(data).hexdigest():
            return None
        if parts.isdigit() and etag in multipart_etag(data, int(parts)):
            return None
    modified = head.get("LastModified")
    if modified is not None and local_mtime >= modified.timestamp():
        return None
    return f"same size, but its MD5 is not the object's ETag {etag or '(none)'} and the object is newer"


def summarize_job(
    *,
    reports: list[str],
    outputs: dict[str, str],
    sft: dict[str, Any],
    columns: dict[str, Any],
    digests: str | None = None,
    stale_list: str | None = None,
    keep_going: bool = False,
    failed_encodes: list[dict[str, Any]] | None = None,
) -> None:
    """Rule summarize: stats.json, shards.parquet and each format's small files (outputs: ``stats``, ``shards`` and
    ``{format}_{name}`` as in formats.summary_files) from every shard report: local files, or in S3 through the
    derive jobs' digests (``digests``: storage/digests.py). First, the reports must describe one dataset
    (dataset/consistency.py): parts made with this run's settings (``sft``, ``columns``: the config sections) and
    tokens of one codec; else ``MixedDatasetError`` and nothing is written (the stale reports are listed in
    ``stale_list`` for ``neucodec-workflow rederive``). Shards that failed (a derive job's ``record: failed`` reports;
    ``failed_encodes``: the failure notes of shards left out by planning) make it refuse, naming them, unless
    ``keep_going`` (the user asked the run to go on without them): then stats and cards list them."""
    import json

    import pyarrow.parquet as pq

    from neucodec_workflow.dataset.consistency import check_reports
    from neucodec_workflow.dataset.derive import failed_derives, refuse_failed
    from neucodec_workflow.dataset.formats import write_summary_files
    from neucodec_workflow.dataset.stats import corpus_stats, shard_table
    from neucodec_workflow.record.contract import publishing

    loaded = [json.loads(text) for text in _report_texts(reports, digests)]
    if not keep_going:  # shards whose token file or metadata could not be read: named, nothing written
        refuse_failed(loaded, reports)
    check_reports(loaded, reports, sft, columns, stale_list)  # parts made otherwise, two codecs: named, nothing written
    summary = corpus_stats(loaded, [*(failed_encodes or []), *failed_derives(loaded)])
    write_json(outputs["stats"], summary)
    with publishing(outputs["shards"]) as tmp:
        pq.write_table(shard_table(loaded), tmp, compression="zstd")
    for fmt in sft["formats"]:
        paths = {name[len(fmt) + 1 :]: path for name, path in outputs.items() if name.startswith(f"{fmt}_")}
        write_summary_files(fmt, loaded, summary, sft, paths)
    if summary["random_weights"]:
        log.warning(RANDOM_BANNER)
    for failed in summary["failed_shards"]:
        log.warning("shard %s: left out (%s failed): %s", failed["shard"], failed["stage"], failed["error"])
    log.info(
        "%d shards (%s), %d segments (%d encoded, %d rejected), %.3f h, %d tokens, dataset rows %s",
        summary["shards"],
        summary["records"],
        summary["segments"],
        summary["encoded"],
        summary["rejected"],
        summary["audio_hours"],
        summary["tokens"],
        summary["sft_rows_per_split"],
    )


def _report_texts(reports: list[str], digests: str | None) -> list[str]:
    """Every shard report's text: local files, or in S3 through the derive jobs' digests (storage/digests.py)."""
    from neucodec_workflow.record.progress import Progress, Tick
    from neucodec_workflow.storage import digests as digest
    from neucodec_workflow.storage.s3 import S3Settings, is_s3

    done = [0]  # reports read so far

    def read(n: int) -> None:
        done[0] += n

    with Progress(f"summarize: read {len(reports)} shard reports", lambda: Tick(done[0], len(reports), unit="shards")):
        if any(is_s3(r) for r in reports):
            if not digests:
                raise ValueError("shard reports in S3 are read through the derive jobs' digests: give their folder")
            reading = digest.read_reports(S3Settings.from_env().client(), reports, digests, on_read=read)
            log.info(
                "read %d shard reports: %d from %d digests, %d one by one, %d requests%s",
                len(reports),
                reading.from_digests,
                reading.digests_read,
                reading.fetched,
                reading.requests,
                "; digests compacted into one" if reading.compacted else "",
            )
            texts = reading.texts
        else:
            texts = []
            for r in reports:
                texts.append(Path(r).read_text())
                read(1)
    return texts


def push_job(*, repo_id: str, dataset: str, local_index: str, local_card: str, receipt: str) -> None:
    """Rule push_to_hub: the dataset's parts (from its index) and card to a Hub dataset repo; unchanged parts are not
    re-sent, commits are batched, a rerun resumes. ``dataset``: the dataset's root (a path or an s3:// URL); token
    from HF_TOKEN (huggingface_hub reads it), endpoint from HF_ENDPOINT."""
    import hashlib
    import json

    from neucodec_workflow.dataset.hub import HubFile, push_dataset
    from neucodec_workflow.storage.s3 import is_s3
    from neucodec_workflow.storage.streams import read_bytes

    def read(source: str) -> bytes:
        return read_bytes(source) if is_s3(source) else Path(source).read_bytes()

    index = json.loads(Path(local_index).read_text())
    card = Path(local_card).read_bytes()
    files = [HubFile(p["path"], f"{dataset}/{p['path']}", p["sha256"], p["bytes"]) for p in index["parts"]]
    files.append(HubFile("README.md", local_card, hashlib.sha256(card).hexdigest(), len(card)))
    summary = push_dataset(repo_id, files, read)
    write_json(receipt, summary)
    log.info("pushed to the Hub: %s", summary)
