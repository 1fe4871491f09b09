"""Turning 16 kHz clips into neucodec tokens.

``ReferenceEncoder`` is ``NeuCodec.encode_code`` itself (fp32, batch 1) on the 16-layer model:
the definition of correct tokens that every faster path must agree with.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol

import numpy as np
import torch

from neucodec_workflow.audio import Clip
from neucodec_workflow.codec import Codec


class TokenCountError(RuntimeError):
    """The model returned a number of tokens other than ``n_samples_16k // 320``."""


class Encoder(Protocol):
    name: str

    def encode(self, clips: Iterable[Clip]) -> Iterator[tuple[Clip, np.ndarray | Exception]]:
        """Yield each clip with its uint16 tokens, or with the exception that stopped it."""
        ...


def exact_numerics() -> None:
    """No TF32 anywhere: the reference is strict fp32."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")


def check_token_count(clip: Clip, tokens: np.ndarray) -> np.ndarray:
    if len(tokens) != clip.n_tokens:
        raise TokenCountError(
            f"segment {clip.segment_id}: {len(tokens)} tokens for {len(clip.audio)} samples, expected {clip.n_tokens}"
        )
    return tokens


def reference_tokens(codec: Codec, audio: np.ndarray) -> np.ndarray:
    """``NeuCodec.encode_code`` on one clip: ``[1, 1, T]`` float32 in, uint16 tokens out."""
    x = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))[None, None].to(codec.device)
    with torch.inference_mode():
        codes = codec.model.encode_code(x)
    return codes[0, 0].to("cpu", torch.int64).numpy().astype("<u2")


class ReferenceEncoder:
    name = "reference"

    def __init__(self, codec: Codec):
        exact_numerics()
        self.codec = codec

    def encode(self, clips: Iterable[Clip]) -> Iterator[tuple[Clip, np.ndarray | Exception]]:
        for clip in clips:
            try:
                tokens = reference_tokens(self.codec, clip.audio)
            except (RuntimeError, ValueError) as exc:  # e.g. out of memory on one huge clip
                yield clip, exc
                continue
            yield clip, check_token_count(clip, tokens)

