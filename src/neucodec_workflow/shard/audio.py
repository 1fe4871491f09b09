"""Stream FLAC members out of a shard's tar, decode, downmix, resample to 16 kHz, and classify.

Every member ends as exactly one of: a ``Clip`` ready to encode, or a ``Reject`` with a reason. The members are
decoded on several threads by ``background.ordered_map`` (``shard/encode.py``).
"""

from __future__ import annotations

import io
import re
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from neucodec_workflow.record.contract import HOP, SAMPLE_RATE
from neucodec_workflow.record.records import Clip, Reason, Reject


class ShardError(RuntimeError):
    """The shard as a whole cannot be encoded (unreadable input, nothing valid in it)."""

    def __init__(self, shard: str, message: str):
        super().__init__(f"shard {shard}: {message}")
        self.shard = shard


@contextmanager
def open_tar(shard: str, tar: str | Path | BinaryIO) -> Iterator[BinaryIO]:
    """A binary stream of the shard's ``audio.tar``: a stream passed in as is, or the local file."""
    if not isinstance(tar, (str, Path)):
        yield tar
        return
    try:
        f = open(tar, "rb")
    except OSError as exc:
        raise ShardError(shard, f"cannot open audio.tar: {exc}") from exc
    with f:
        yield f


def segment_id_of(member_name: str) -> str:
    """``a/b/seg-1.flac`` -> ``seg-1`` (members may sit in sub-folders of the tar)."""
    return PurePosixPath(member_name).name[: -len(".flac")]


def iter_flac_members(fileobj: BinaryIO) -> Iterator[tuple[str, bytes]]:
    """Yield ``(member name, bytes)`` for each ``*.flac`` file, streaming (no seeking, nothing on disk)."""
    with tarfile.open(fileobj=fileobj, mode="r|*") as tar:
        for info in tar:
            if info.isfile() and info.name.lower().endswith(".flac"):
                f = tar.extractfile(info)
                assert f is not None
                yield info.name, f.read()


def to_mono_16k(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Downmix ``[frames, channels]`` by averaging channels, then resample to 16 kHz (torchaudio sinc)."""
    mono = audio.mean(axis=1, dtype=np.float32) if audio.ndim == 2 else audio.astype(np.float32)
    if sample_rate == SAMPLE_RATE:
        return np.ascontiguousarray(mono, dtype=np.float32)
    return AF.resample(torch.from_numpy(np.ascontiguousarray(mono)), sample_rate, SAMPLE_RATE).numpy()


def decode_member(segment_id: str, member: str, data: bytes, max_seconds: float) -> Clip | Reject:
    """Decode one FLAC member and apply the per-segment checks."""
    if not data:
        return Reject(segment_id, Reason.EMPTY, "0 bytes", member)
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            rate = f.samplerate
            # a stream that declares 0 frames cannot be seeked/read by libsndfile: it is empty
            audio = f.read(dtype="float32", always_2d=True) if f.frames else np.zeros((0, f.channels), np.float32)
    except Exception as exc:  # soundfile raises LibsndfileError / RuntimeError on corrupt streams
        detail = re.sub(r"<_io\.BytesIO object at 0x[0-9a-f]+>", "FLAC member", str(exc))
        return Reject(segment_id, Reason.DECODE_ERROR, f"{type(exc).__name__}: {detail}", member)
    frames, channels = audio.shape
    if frames == 0:
        return Reject(segment_id, Reason.EMPTY, "0 samples", member)
    if frames / rate > max_seconds:
        return Reject(segment_id, Reason.TOO_LONG, f"{frames / rate:.1f} s > max_seconds {max_seconds:g}", member)
    if not np.isfinite(audio).all():
        bad = int((~np.isfinite(audio)).sum())
        return Reject(segment_id, Reason.NON_FINITE, f"{bad} NaN/inf samples", member)
    mono = to_mono_16k(audio, rate)
    if len(mono) < HOP:
        return Reject(segment_id, Reason.TOO_SHORT, f"{len(mono)} samples at 16 kHz < {HOP} (0 tokens)", member)
    return Clip(segment_id, member, mono, rate, channels)
