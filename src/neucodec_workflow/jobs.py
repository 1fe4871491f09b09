"""Entry points for the Snakemake scripts: each takes plain values, so scripts stay thin."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("neucodec_workflow")

RANDOM_BANNER = (
    "\n" + "!" * 88 + "\n"
    "!!  codec.weights = random: SEEDED RANDOM WEIGHTS. These tokens are NOT neucodec tokens.\n"
    "!!  Use them to test the workflow only. Real weights: codec.weights=neuphonic/neucodec\n"
    + "!" * 88
)


def setup_logging(log_file: str | None) -> None:
    """Log to the rule's ``log:`` file (and stderr); call before heavy imports."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="w"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", handlers=handlers, force=True)
    logging.captureWarnings(True)

    def log_uncaught(kind, value, tb):  # the failure reason lands in the rule's log, not only on stderr
        log.error("job failed: %s", value, exc_info=(kind, value, tb))

    sys.excepthook = log_uncaught


def encode_shard_job(*, shard: str, tar: str, metadata: str, tokens: str, report: str, codec: dict[str, Any],
                     encode: dict[str, Any], columns: dict[str, Any], threads: int) -> None:
    import torch

    from neucodec_workflow.codec import load_codec
    from neucodec_workflow.device import pick_device
    from neucodec_workflow.encode import reference_tokens
    from neucodec_workflow.engine import Engine, EngineConfig
    from neucodec_workflow.s3 import open_source
    from neucodec_workflow.shard import encode_shard, read_metadata_ids, write_report

    torch.set_num_threads(max(1, threads))
    device = pick_device(codec.get("device", "auto"))
    log.info("shard %s: device=%s CUDA_VISIBLE_DEVICES=%s SLURM_JOB_ID=%s", shard, device,
             os.environ.get("CUDA_VISIBLE_DEVICES"), os.environ.get("SLURM_JOB_ID"))
    with open_source(tar) as tar_in, open_source(metadata, seekable=True) as metadata_in:  # s3:// is streamed
        read_metadata_ids(shard, metadata_in, columns.get("segment_id", "segment_id"))  # fail fast, before the model loads
        if not isinstance(metadata_in, str):
            metadata_in.seek(0)
        loaded = load_codec(codec["weights"], seed=int(codec.get("seed", 0)), device=device)
        if loaded.is_random:
            log.warning(RANDOM_BANNER)
        engine = Engine(loaded, EngineConfig(mode=encode.get("mode", "exact"), batch_seconds=float(encode.get("batch_seconds", 120))))
        provenance = {**loaded.provenance, "mode": engine.config.mode, "kernels": engine.kernels}
        if engine.config.mode == "fast":
            provenance["precision"] = "bf16 autocast + tf32 (fc_prior and quantizer fp32)"
        result = encode_shard(shard, tar_in, metadata_in, tokens, engine, provenance,
                              id_column=columns.get("segment_id", "segment_id"), max_seconds=float(encode["max_seconds"]),
                              decode_workers=int(encode.get("decode_workers", 2)),
                              reference=lambda audio: reference_tokens(loaded, audio), audit_segments=int(encode.get("audit_segments", 0)))
    write_report(report, result)
    d = result.as_dict()
    log.info("shard %s: %d encoded, %d rejected, %.1f s audio, %d tokens, %.2fx real time on %s (%s)",
             shard, d["encoded"], d["rejected_count"], d["audio_seconds"], d["tokens"], d["audio_seconds_per_wall_second"], device, engine.name)


def audit_job(*, shard: str, tar: str, tokens: str, out: str, codec: dict[str, Any], segments: int, max_seconds: float, threads: int) -> None:
    import torch

    from neucodec_workflow.codec import load_codec
    from neucodec_workflow.device import pick_device
    from neucodec_workflow.encode import exact_numerics, reference_tokens
    from neucodec_workflow.s3 import local_copy, open_source
    from neucodec_workflow.shard import audit_stored, write_json

    torch.set_num_threads(max(1, threads))
    exact_numerics()
    loaded = load_codec(codec["weights"], seed=int(codec.get("seed", 0)), device=pick_device(codec.get("device", "auto")))
    with open_source(tar) as tar_in, local_copy(tokens) as tokens_path:  # s3://: tar streamed, tokens fetched
        result = audit_stored(shard, tar_in, tokens_path, lambda audio: reference_tokens(loaded, audio), segments, max_seconds)
    result["reference_codec"] = loaded.provenance
    write_json(out, result)
    log.info("audit of shard %s: %d segments, token agreement %s", shard, result["segments"], result["token_agreement"])


def assemble_job(*, shards: list[str], tokens: list[str], metadata: list[str], out_dir: str, columns: dict[str, Any], sft: dict[str, Any]) -> None:
    from neucodec_workflow.s3 import OneAtATime
    from neucodec_workflow.sft import assemble_sft

    tokens_of, metadata_of = dict(zip(shards, tokens, strict=True)), dict(zip(shards, metadata, strict=True))
    read_tokens, read_metadata = OneAtATime(), OneAtATime()  # s3:// objects: fetched one shard at a time
    summary = assemble_sft(shards, lambda s: read_tokens(tokens_of[s]), lambda s: read_metadata(metadata_of[s]), out_dir, columns,
                           validation_fraction=float(sft["validation_fraction"]), target_file_mb=float(sft["target_file_mb"]),
                           rows_per_row_group=int(sft["rows_per_row_group"]))
    log.info("SFT dataset: %s", summary)


def stats_job(*, reports: list[str], sft_dir: str, out: str) -> None:
    from neucodec_workflow.shard import write_json
    from neucodec_workflow.stats import corpus_stats, load_reports

    stats = corpus_stats(load_reports(reports), sft_dir)
    write_json(out, stats)
    if stats["random_weights"]:
        log.warning(RANDOM_BANNER)
    log.info("%d shards, %d segments (%d encoded, %d rejected), %.3f h, %d tokens", stats["shards"], stats["segments"],
             stats["encoded"], stats["rejected"], stats["hours"], stats["tokens"])
