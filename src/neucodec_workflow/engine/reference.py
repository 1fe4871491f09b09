"""Turning 16 kHz clips into neucodec tokens.

``ReferenceEncoder`` is ``NeuCodec.encode_code`` itself (fp32, batch 1) on the 16-layer model:
the definition of correct tokens that every faster path must agree with.

Every path checks a clip's codes the same way (``checked_tokens``) before they become uint16 tokens: their count
is ``n_samples_16k // 320`` and every code lies in 0..65535 (checked before the narrowing cast, which would
otherwise wrap a bad value into a valid-looking token). A clip that fails either check is that segment's
``encode_error``, never the shard's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch

from neucodec_workflow.engine.codec import Codec
from neucodec_workflow.engine.numerics import numerics
from neucodec_workflow.record.contract import SAMPLE_RATE
from neucodec_workflow.record.records import Clip

log = logging.getLogger(__name__)


class TokenError(RuntimeError):
    """The model's codes for one clip are not valid tokens: the segment is rejected (``encode_error``)."""


class TokenCountError(TokenError):
    """The model returned a number of tokens other than ``n_samples_16k // 320``."""


class TokenRangeError(TokenError):
    """The model returned a code outside the uint16 range 0..65535 (found before narrowing it)."""


# How allocation failures read: CUDA ("CUDA out of memory"), torch's CPU allocator ("DefaultCPUAllocator: can't
# allocate memory"), oneDNN / MKL ("could not allocate"); Python's and the native kernel's MemoryError.
_OOM_MESSAGES = ("out of memory", "can't allocate memory", "cannot allocate memory", "could not allocate")


def is_oom(exc: BaseException) -> bool:
    """An allocation failure on any device: the batch is retried clip by clip, a clip that fails alone is rejected."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in _OOM_MESSAGES)


def check_token_count(clip: Clip, tokens: np.ndarray) -> np.ndarray:
    if len(tokens) != clip.n_tokens:
        raise TokenCountError(
            f"segment {clip.segment_id}: {len(tokens)} tokens for {len(clip.audio)} samples, expected {clip.n_tokens}"
        )
    return tokens


def to_uint16(codes: np.ndarray, what: str) -> np.ndarray:
    """``codes`` (any integer dtype) as little-endian uint16 tokens, once every value is known to fit: a value
    outside 0..65535 raises ``TokenRangeError`` naming ``what`` (the segment) instead of wrapping around."""
    codes = np.asarray(codes)
    if codes.size and (int(codes.min()) < 0 or int(codes.max()) > 0xFFFF):
        bad = codes[(codes < 0) | (codes > 0xFFFF)]
        raise TokenRangeError(
            f"{what}: {len(bad)} code(s) outside the uint16 range 0..65535 (first: {int(bad[0])}), of {codes.size}"
        )
    return codes.astype("<u2")


def checked_tokens(clip: Clip, codes: np.ndarray) -> np.ndarray | TokenError:
    """One clip's codes as its uint16 tokens, or the ``TokenError`` (wrong count, value out of range) that makes
    that clip a reject: returned, not raised, so that one bad clip never stops the others."""
    try:
        return to_uint16(check_token_count(clip, codes), f"segment {clip.segment_id}")
    except TokenError as exc:
        return exc


def reference_codes(codec: Codec, audio: np.ndarray) -> np.ndarray:
    """``NeuCodec.encode_code`` on one clip, in strict fp32 whatever mode the caller runs: ``[1, 1, T]`` float32 in,
    its codes out as int64 (not narrowed)."""
    x = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))[None, None].to(codec.device)
    with numerics("exact"), torch.inference_mode():
        codes = codec.model.encode_code(x)
    return codes[0, 0].to("cpu", torch.int64).numpy()


def reference_tokens(codec: Codec, audio: np.ndarray) -> np.ndarray:
    """``reference_codes`` as uint16 tokens; a code outside 0..65535 raises ``TokenRangeError``."""
    return to_uint16(reference_codes(codec, audio), f"a clip of {len(audio)} samples")


def audit_reference(codec: Codec) -> Callable[[np.ndarray], np.ndarray | None]:
    """``reference_tokens`` for the inline audit: a clip the reference cannot hold in memory is not audited (None,
    logged) instead of failing a job whose tokens are fine."""

    def reference(audio: np.ndarray) -> np.ndarray | None:
        try:
            return reference_tokens(codec, audio)
        except (RuntimeError, MemoryError) as exc:
            if not is_oom(exc):
                raise
            log.warning(
                "audit: the reference ran out of memory on a %.1f s clip; not audited", len(audio) / SAMPLE_RATE
            )
            return None

    return reference


class ReferenceEncoder:
    name = "reference"

    def __init__(self, codec: Codec):
        self.codec = codec
        self.provenance = {**codec.provenance, "mode": "reference"}

    def encode(self, clips: Iterable[Clip]) -> Iterator[tuple[Clip, np.ndarray | Exception]]:
        for clip in clips:
            try:
                codes = reference_codes(self.codec, clip.audio)
            except (RuntimeError, ValueError, MemoryError) as exc:  # e.g. out of memory on one huge clip
                yield clip, exc
                continue
            yield clip, checked_tokens(clip, codes)
