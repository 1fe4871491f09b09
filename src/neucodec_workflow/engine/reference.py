"""Turning 16 kHz clips into neucodec tokens.

``ReferenceEncoder`` is ``NeuCodec.encode_code`` itself (fp32, batch 1) on the 16-layer model:
the definition of correct tokens that every faster path must agree with.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch

from neucodec_workflow.engine.codec import Codec
from neucodec_workflow.engine.numerics import numerics
from neucodec_workflow.records import Clip


class TokenCountError(RuntimeError):
    """The model returned a number of tokens other than ``n_samples_16k // 320``."""


def check_token_count(clip: Clip, tokens: np.ndarray) -> np.ndarray:
    if len(tokens) != clip.n_tokens:
        raise TokenCountError(
            f"segment {clip.segment_id}: {len(tokens)} tokens for {len(clip.audio)} samples, expected {clip.n_tokens}"
        )
    return tokens


def reference_tokens(codec: Codec, audio: np.ndarray) -> np.ndarray:
    """``NeuCodec.encode_code`` on one clip, in strict fp32 whatever mode the caller runs: ``[1, 1, T]`` float32 in,
    uint16 tokens out."""
    x = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))[None, None].to(codec.device)
    with numerics("exact"), torch.inference_mode():
        codes = codec.model.encode_code(x)
    return codes[0, 0].to("cpu", torch.int64).numpy().astype("<u2")


class ReferenceEncoder:
    name = "reference"

    def __init__(self, codec: Codec):
        self.codec = codec
        self.provenance = {**codec.provenance, "mode": "reference"}

    def encode(self, clips: Iterable[Clip]) -> Iterator[tuple[Clip, np.ndarray | Exception]]:
        for clip in clips:
            try:
                tokens = reference_tokens(self.codec, clip.audio)
            except (RuntimeError, ValueError, MemoryError) as exc:  # e.g. out of memory on one huge clip
                yield clip, exc
                continue
            yield clip, check_token_count(clip, tokens)
