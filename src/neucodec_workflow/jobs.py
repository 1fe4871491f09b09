"""Entry points for the Snakemake scripts: each takes plain values, so scripts stay thin."""

from __future__ import annotations

import io
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from neucodec_workflow.record.contract import write_json

log = logging.getLogger("neucodec_workflow")

RANDOM_BANNER = (
    "\n" + "!" * 88 + "\n"
    "!!  codec.weights = random: SEEDED RANDOM WEIGHTS. These tokens are NOT neucodec tokens.\n"
    "!!  Use them to test the workflow only. Real weights: codec.weights=neuphonic/neucodec\n" + "!" * 88
)


def setup_logging(log_file: str | None) -> None:
    """Log to the rule's ``log:`` file (and stderr); call before heavy imports."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="w"))
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", handlers=handlers, force=True
    )
    logging.captureWarnings(True)

    def log_uncaught(kind, value, tb):  # the failure reason lands in the rule's log, not only on stderr
        log.error("job failed: %s", value, exc_info=(kind, value, tb))

    sys.excepthook = log_uncaught


def process_age() -> float | None:
    """Seconds since this process started (the job's start: interpreter, Snakemake's script preamble, imports and
    all), None where the system does not say."""
    try:  # Linux: the process's start in clock ticks after boot (field 22 of /proc/self/stat), the uptime now
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


class StartupNotes:
    """Logs a job's start-up steps, each with the seconds since its process started (``shard S: start-up: STEP at
    N.NN s``: benchmarks/jobs.py reads them)."""

    def __init__(self, shard: str):
        self.shard = shard

    def __call__(self, step: str) -> None:
        age = process_age()
        if age is not None:
            log.info("shard %s: start-up: %s at %.2f s", self.shard, step, age)


class FirstClipNoted:
    """An ``Encoder`` (the protocol in record/records.py) that notes when its first clip is encoded (the end of the
    job's start-up)."""

    def __init__(self, encoder: Any, note: StartupNotes):
        self.encoder, self.note = encoder, note

    @property
    def name(self) -> str:
        return str(self.encoder.name)

    @property
    def provenance(self) -> dict[str, Any]:
        return dict(self.encoder.provenance)

    def encode(self, clips: Any) -> Iterator[Any]:
        encoded = iter(self.encoder.encode(clips))
        for item in encoded:
            self.note("first clip encoded")
            yield item
            break
        yield from encoded


def encode_shard_job(
    *,
    shard: str,
    tar: str,
    metadata: str,
    tokens: str,
    codec: dict[str, Any],
    encode: dict[str, Any],
    columns: dict[str, Any],
    threads: int,
    staging: str | None = None,
    receipts: str | None = None,
) -> None:
    """Rule encode_shard: the token file, with the job's report inside it. ``codec``/``encode``/``columns``: the
    validated config sections (defaults from the schema). ``tokens``: a path, or an s3:// URL: then the file is
    written at ``staging`` (atomically), sent once and removed, and the upload recorded in ``receipts``
    (storage/uploads.py). Its start-up is logged (``start-up: ... at N s``, since its process started)."""
    note = StartupNotes(shard)
    import torch

    from neucodec_workflow.engine.codec import load_codec
    from neucodec_workflow.engine.device import device_name, pick_device
    from neucodec_workflow.engine.engine import Engine, EngineConfig
    from neucodec_workflow.engine.reference import audit_reference
    from neucodec_workflow.shard.encode import encode_shard, read_metadata_ids
    from neucodec_workflow.storage.s3 import is_s3
    from neucodec_workflow.storage.streams import open_source
    from neucodec_workflow.storage.uploads import publish

    note("imports done")
    written = staging if is_s3(tokens) else tokens
    if written is None or is_s3(written):
        raise ValueError(f"shard {shard}: a token file bound for S3 ({tokens}) needs a local staging path")
    torch.set_num_threads(max(1, threads))
    device = pick_device(codec["device"])
    log.info(
        "shard %s: device=%s CUDA_VISIBLE_DEVICES=%s SLURM_JOB_ID=%s",
        shard,
        device,
        os.environ.get("CUDA_VISIBLE_DEVICES"),
        os.environ.get("SLURM_JOB_ID"),
    )
    with open_source(tar) as tar_in, open_source(metadata, seekable=True) as metadata_in:  # s3:// is streamed
        ids = read_metadata_ids(shard, metadata_in, columns["segment_id"])  # fails fast, before the model loads
        loaded = load_codec(codec["weights"], seed=int(codec["seed"]), device=device)
        note("model loaded")
        if loaded.is_random:
            log.warning(RANDOM_BANNER)
        engine = Engine(loaded, EngineConfig(mode=encode["mode"], batch_seconds=float(encode["batch_seconds"])))
        note("engine ready")
        result = encode_shard(
            shard,
            tar_in,
            ids,
            written,
            FirstClipNoted(engine, note),
            max_seconds=float(encode["max_seconds"]),
            decode_workers=int(encode["decode_workers"]),
            reference=audit_reference(loaded),
            audit_segments=int(encode["audit_segments"]),
            device=device_name(device),
        )
    publish({tokens: written}, receipts)
    log.info(
        "shard %s: %d encoded, %d rejected, %.1f s audio, %d tokens, %.2fx real time on %s (%s)",
        shard,
        result.encoded,
        len(result.rejected),
        result.audio_seconds,
        result.tokens,
        result.audio_seconds / result.wall_seconds if result.wall_seconds else 0.0,
        device,
        engine.name,
    )


def audit_job(
    *,
    shard: str,
    tar: str,
    tokens: str,
    out: str,
    codec: dict[str, Any],
    segments: int,
    max_seconds: float,
    threads: int,
) -> None:
    """Rule audit_shard: the stored tokens against the reference path (strict fp32) on a sample."""
    import torch

    from neucodec_workflow.engine.codec import load_codec
    from neucodec_workflow.engine.device import pick_device
    from neucodec_workflow.engine.reference import reference_tokens
    from neucodec_workflow.shard.audit import audit_stored
    from neucodec_workflow.storage.streams import local_copy, open_source

    torch.set_num_threads(max(1, threads))
    loaded = load_codec(codec["weights"], seed=int(codec["seed"]), device=pick_device(codec["device"]))
    with open_source(tar) as tar_in, local_copy(tokens) as tokens_path:  # s3://: tar streamed, tokens fetched
        result = audit_stored(
            shard, tar_in, tokens_path, lambda audio: reference_tokens(loaded, audio), segments, max_seconds
        )
    result["reference_codec"] = loaded.provenance
    write_json(out, result)
    log.info("audit of shard %s: %d segments, token agreement %s", shard, result["segments"], result["token_agreement"])


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
    from collections import deque
    from concurrent.futures import Future, ThreadPoolExecutor

    from neucodec_workflow.dataset.derive import FAILED, derive_or_record_failure
    from neucodec_workflow.dataset.formats import FormatWriter, describe
    from neucodec_workflow.record.progress import Progress, Tick
    from neucodec_workflow.storage import digests as digest
    from neucodec_workflow.storage.s3 import S3Error, S3Settings, is_s3, split_url
    from neucodec_workflow.storage.streams import OneAtATime
    from neucodec_workflow.storage.streams import describe as describe_error
    from neucodec_workflow.storage.uploads import Uploader

    os.environ.setdefault("RAYON_NUM_THREADS", "1")  # the tokenizer's threads: the job has one core
    read = OneAtATime()
    writer = FormatWriter(sft)

    # where each report and part is written: its path, or for a file bound for S3 its staging path (then sent)
    staging = staging or parts
    report_staging = report_staging or reports
    destination = {
        local: url
        for local, url in [*zip(staging, parts, strict=True), *zip(report_staging, reports, strict=True)]
        if is_s3(url)
    }
    if any(is_s3(local) for local in [*staging, *report_staging]):
        raise ValueError("reports and parts bound for S3 need local staging paths")
    sent_reports: list[dict[str, str]] = []  # the digest's entries

    def parts_of(i: int) -> dict[str, dict[str, str]]:
        """Shard i's parts: format -> split -> where the writer writes it."""
        out: dict[str, dict[str, str]] = {}
        for (fmt, split), path in zip(part_keys, staging[i * len(part_keys) : (i + 1) * len(part_keys)], strict=True):
            out.setdefault(fmt, {})[split] = path
        return out

    def written(path: str | Path) -> str | None:
        """Send a finished file bound for S3; its ETag."""
        return uploader.send(path, destination[str(path)]) if str(path) in destination else None

    client: list[Any] = []  # for the HEAD of a token file that has a local copy

    def local_copy(i: int) -> tuple[io.BytesIO, float] | None:
        """Shard i's token file from the local copy the storage plugin left, if that copy is provably the object in
        S3 now (``same_object``; one HEAD, which also gives the object's LastModified), with that time."""
        if not is_s3(tokens[i]) or not os.path.exists(local_tokens[i]):
            return None
        if not client:
            client.append(S3Settings.from_env().client())
        bucket, key = split_url(tokens[i])
        try:
            head = client[0].head_object(Bucket=bucket, Key=key)
        except Exception as exc:
            raise S3Error(f"{tokens[i]}: {describe_error(exc)}") from exc
        data = Path(local_tokens[i]).read_bytes()
        local_mtime = os.stat(local_tokens[i]).st_mtime
        why = same_object(data, local_mtime, head)
        if why is not None:
            log.warning(
                "shard %s: the local copy %s is not the object in S3 (%s): reading the object",
                shards[i],
                local_tokens[i],
                why,
            )
            return None
        return io.BytesIO(data), float(head["LastModified"].timestamp())

    def fetch(i: int) -> tuple[int, Any, Any, float]:
        copy = local_copy(i)
        if copy is not None:
            return i, copy[0], read(metadata[i]), copy[1]
        tokens_in = read(tokens[i])
        # in S3: LastModified, from the GET that read it; a local file's modification time
        return i, tokens_in, read(metadata[i]), read.mtime(tokens[i])

    def fetched() -> Iterator[tuple[int, Any, Any, float]]:
        """Each shard's files, read while the one before is derived (two shards in memory at most)."""
        with ThreadPoolExecutor(1) as pool:
            ahead: deque[Future[tuple[int, Any, Any, float]]] = deque()
            for i in range(len(shards)):
                ahead.append(pool.submit(fetch, i))
                if len(ahead) > 1:
                    yield ahead.popleft().result()
            while ahead:
                yield ahead.popleft().result()

    derived: list[float] = []  # audio seconds of each shard derived so far
    failed: dict[str, str] = {}  # shard -> why it could not be derived (its report records it)

    def tick() -> Tick:
        return Tick(len(derived), len(shards), sum(derived), unit="shards")

    with Uploader(receipts) as uploader, Progress(f"derive {len(shards)} shards", tick):
        for i, tokens_in, metadata_in, tokens_mtime in fetched():
            report = derive_or_record_failure(
                shards[i],
                tokens_in,
                metadata_in,
                columns,
                report_path=report_staging[i],
                parts=parts_of(i),
                validation_fraction=float(sft["validation_fraction"]),
                rows_per_row_group=int(sft["rows_per_row_group"]),
                writer=writer,
                tokens_mtime=tokens_mtime,
                on_part=written,
            )
            log.info(
                "shard %s: %s record, %d rows, dataset rows %s, left out %s",
                shards[i],
                report["record"],
                report["token_file"]["rows"],
                report["sft"]["rows_per_split"],
                report["sft"]["excluded_by_reason"] or "none",
            )
            for fmt, by_split in report["sft"]["formats"].items():
                log.info("shard %s: %s %s", shards[i], fmt, {split: describe(p) for split, p in by_split.items()})
            if is_s3(reports[i]):
                text = Path(report_staging[i]).read_text()
                etag = written(report_staging[i])
                if etag:
                    sent_reports.append(digest.entry(reports[i], etag, text))
            derived.append(float(report["audio_seconds"]))
            if report["record"] == FAILED:
                failed[shards[i]] = report["error"]
        if digests and sent_reports:
            log.info(
                "report digest of %d shards: %s",
                len(sent_reports),
                digest.write(uploader.client, digests, sent_reports),
            )
    if failed:  # the job itself succeeds: Snakemake would remove the other shards' reports and parts
        log.error(
            "%d of %d shards could not be derived; their reports record it and summarize refuses them until fixed: %s",
            len(failed),
            len(shards),
            "; ".join(failed.values()),
        )


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
    loaded = [json.loads(text) for text in texts]
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


def verify_job(*, shards: list[str], tokens: list[str], report: str, full: bool) -> None:
    """Rule verify: every shard's token file checked from its footer (``full``: every row too), the report written to
    ``report`` (a path or an s3:// URL), then ``VerifyError`` naming the bad shards, if any."""
    from neucodec_workflow.commands.verify import run

    run(shards, tokens, report, full=full)
