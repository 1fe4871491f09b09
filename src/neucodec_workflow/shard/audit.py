"""The fidelity audit: token agreement of stored or freshly encoded tokens with the reference path on a sample."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd

from neucodec_workflow.record.contract import read_provenance, tokens_of
from neucodec_workflow.record.records import Audit, Clip
from neucodec_workflow.shard.audio import decode_member, iter_flac_members, open_tar, segment_id_of


def audit_pick(segment_id: str, wanted: int, total: int) -> bool:
    """Deterministic sample of about ``wanted`` of ``total`` segments, by a hash of the id."""
    if wanted <= 0 or total <= 0:
        return False
    h = int.from_bytes(hashlib.sha256(segment_id.encode()).digest()[:8], "big") / 2**64
    return h < wanted / total


def audit_stored(
    shard: str,
    tar: str | Path | BinaryIO,
    tokens_path: str | Path,
    reference: Callable[[np.ndarray], np.ndarray],
    segments: int,
    max_seconds: float,
) -> dict[str, Any]:
    """Re-encode a deterministic sample of a shard's stored segments with the reference path and
    compare with the tokens on disk: the audit users run on their own weights and data."""
    stored = pd.read_parquet(tokens_path)
    tokens = dict(zip(stored["segment_id"], stored["neucodec_tokens"], strict=True))
    audit = Audit()
    with open_tar(shard, tar) as f:
        for member, data in iter_flac_members(f):
            seg = segment_id_of(member)
            if audit.segments >= segments:
                break
            if seg in tokens and audit_pick(seg, segments, len(tokens)):
                clip = decode_member(seg, member, data, max_seconds)
                if isinstance(clip, Clip):
                    audit.add(seg, tokens_of(tokens.pop(seg)), reference(clip.audio))
    return {
        "shard": shard,
        "stored": str(Path(tokens_path).name),
        "provenance": read_provenance(tokens_path),
        **audit.as_dict(),
    }
