"""Entry points for the Snakemake scripts: each takes plain values, so scripts stay thin."""

from __future__ import annotations

import json
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


def pick_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"codec.device={requested} but no CUDA device is visible (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})")
    return requested


def encode_shard_job(*, shard: str, tar: str, metadata: str, tokens: str, report: str, codec: dict[str, Any],
                     encode: dict[str, Any], columns: dict[str, Any], threads: int) -> None:
    import torch

    from neucodec_workflow.codec import load_codec
    from neucodec_workflow.encode import ReferenceEncoder
    from neucodec_workflow.shard import encode_shard, write_report

    torch.set_num_threads(max(1, threads))
    device = pick_device(codec.get("device", "auto"))
    log.info("shard %s: device=%s CUDA_VISIBLE_DEVICES=%s SLURM_JOB_ID=%s", shard, device, os.environ.get("CUDA_VISIBLE_DEVICES"), os.environ.get("SLURM_JOB_ID"))
    loaded = load_codec(codec["weights"], seed=int(codec.get("seed", 0)), device=device)
    if loaded.is_random:
        log.warning(RANDOM_BANNER)
    id_column = columns.get("segment_id", "segment_id")
    result = encode_shard(shard, tar, metadata, tokens, ReferenceEncoder(loaded), loaded.provenance,
                          id_column=id_column, max_seconds=float(encode["max_seconds"]))
    write_report(report, result)
    d = result.as_dict()
    log.info("shard %s: %d encoded, %d rejected, %.1f s audio, %d tokens, %.2fx real time on %s",
             shard, d["encoded"], d["rejected_count"], d["audio_seconds"], d["tokens"], d["audio_seconds_per_wall_second"], device)


def assemble_job(*, shards: list[str], tokens: list[str], metadata: list[str], out_dir: str, columns: dict[str, Any], sft: dict[str, Any]) -> None:
    from neucodec_workflow.sft import assemble_sft

    tokens_of, metadata_of = dict(zip(shards, tokens, strict=True)), dict(zip(shards, metadata, strict=True))
    summary = assemble_sft(shards, tokens_of.__getitem__, metadata_of.__getitem__, out_dir, columns,
                           validation_fraction=float(sft["validation_fraction"]), target_file_mb=float(sft["target_file_mb"]),
                           rows_per_row_group=int(sft["rows_per_row_group"]))
    log.info("SFT dataset: %s", summary)


def stats_job(*, reports: list[str], sft_dir: str, out: str) -> None:
    from neucodec_workflow.stats import corpus_stats, load_reports
    from neucodec_workflow.tokens_io import atomic_path

    stats = corpus_stats(load_reports(reports), sft_dir)
    tmp = atomic_path(Path(out))
    tmp.write_text(json.dumps(stats, indent=2) + "\n")
    os.replace(tmp, out)
    if stats["random_weights"]:
        log.warning(RANDOM_BANNER)
    log.info("%d shards, %d segments (%d encoded, %d rejected), %.3f h, %d tokens", stats["shards"], stats["segments"],
             stats["encoded"], stats["rejected"], stats["hours"], stats["tokens"])
