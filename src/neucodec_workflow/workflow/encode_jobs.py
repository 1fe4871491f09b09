"""The encode-side rules' entry points (encode_shard, audit_shard): each takes plain values, so scripts stay thin."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

from neucodec_workflow.record import layout
from neucodec_workflow.record.contract import RANDOM_BANNER, write_json
from neucodec_workflow.workflow.job_log import FirstClipNoted, StartupNotes

log = logging.getLogger(layout.JOB_LOGGER)
_loaded: dict[tuple[Any, ...], Any] = {}  # the last codec this process loaded, by what it was loaded from


def loaded_codec(weights: str, *, seed: int, device: str) -> Any:
    """``load_codec``'s model, loaded once per process for the same weights, seed and device (a resident process
    runs many jobs): a checkpoint by its path and file identity, so a replaced file is loaded again."""
    from neucodec_workflow.engine.codec import load_codec

    where = Path(weights).expanduser()
    identity = (str(where.resolve()), where.stat().st_mtime_ns, where.stat().st_size) if where.exists() else weights
    key = (identity, seed, device, os.environ.get("NEUCODEC_REVISION"))
    if key not in _loaded:
        _loaded.clear()  # one model held at a time
        _loaded[key] = load_codec(weights, seed=seed, device=device)
    return _loaded[key]


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
    started: float | None = None,
    cancel: threading.Event | None = None,
) -> None:
    """Rule encode_shard: the token file, with the job's report inside it. ``codec``/``encode``/``columns``: the
    validated config sections (defaults from the schema). ``tokens``: a path, or an s3:// URL: then the file is
    written at ``staging`` (atomically), sent once and removed, and the upload recorded in ``receipts``
    (storage/uploads.py). Its start-up is logged (``start-up: ... at N s``, since ``started``, else since its
    process started). Run by a resident process (workflow/resident.py), it stops at the next clip once ``cancel`` is
    set, and reuses the model the process loaded for an earlier job."""
    note = StartupNotes(shard, started)
    import torch

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
        loaded = loaded_codec(codec["weights"], seed=int(codec["seed"]), device=device)
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
            FirstClipNoted(engine, note, cancel),
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

    from neucodec_workflow.engine.device import pick_device
    from neucodec_workflow.engine.reference import reference_tokens
    from neucodec_workflow.shard.audit import audit_stored
    from neucodec_workflow.storage.streams import local_copy, open_source

    torch.set_num_threads(max(1, threads))
    loaded = loaded_codec(codec["weights"], seed=int(codec["seed"]), device=pick_device(codec["device"]))
    with open_source(tar) as tar_in, local_copy(tokens) as tokens_path:  # s3://: tar streamed, tokens fetched
        result = audit_stored(
            shard, tar_in, tokens_path, lambda audio: reference_tokens(loaded, audio), segments, max_seconds
        )
    result["reference_codec"] = loaded.provenance
    write_json(out, result)
    log.info("audit of shard %s: %d segments, token agreement %s", shard, result["segments"], result["token_agreement"])
