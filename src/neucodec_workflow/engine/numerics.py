"""Floating-point settings for one encode path, scoped: entered around each forward pass, restored afterwards.

torch keeps TF32 and matmul precision as process-wide switches. Setting them once (e.g. in a constructor) lets one
path's settings leak into another: fast mode's TF32 into the reference that audits it. Every path therefore runs
inside ``numerics(mode)``, which sets the switches for that path and puts back what was there before.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from neucodec_workflow.record.records import Mode


def tf32_state() -> tuple[bool, bool, str]:
    """(cuBLAS TF32, cuDNN TF32, float32 matmul precision) as torch has them now."""
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision()


def _set(matmul_tf32: bool, cudnn_tf32: bool, precision: str) -> None:
    torch.set_float32_matmul_precision(precision)
    torch.backends.cuda.matmul.allow_tf32 = matmul_tf32
    torch.backends.cudnn.allow_tf32 = cudnn_tf32


@contextmanager
def numerics(mode: Mode) -> Iterator[None]:
    """``exact``: strict fp32 (no TF32 in matmuls or convolutions). ``fast``: TF32 allowed (bf16 autocast is the
    engine's own, also scoped). The previous settings are restored on exit, also after an exception."""
    saved = tf32_state()
    tf32 = mode == "fast"
    _set(tf32, tf32, "high" if tf32 else "highest")
    try:
        yield
    finally:
        _set(*saved)
