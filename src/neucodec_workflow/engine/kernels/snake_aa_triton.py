"""CodecEnc's anti-aliased SnakeBeta (``Activation1d``) in one Triton kernel, for CUDA devices.

The same polyphase formulation as ``snake_aa.c`` (read that file's header for the derivation), in the layout the
GPU convolutions use, ``x[B][C][T]``: each program computes ``BLOCK`` output steps of one channel. Stock eager
torch makes eight passes over memory per activation (replicate pad, a grouped transposed convolution that cuDNN
runs as a slow ``dgrad`` kernel, slice, three elementwise ops, pad, depthwise convolution); this reads ``x`` and
writes ``y`` once. Per output step it re-derives the 12 up-sampled values it needs (72 multiply-adds and 12
sines, from cache), which costs far less than the memory passes it saves.

Sums run in tap order, ``sin`` is the device's single-precision ``sin`` as in stock, so results differ from the
stock module by float ulps (checked by the tests, on the CPU through Triton's interpreter).
"""

from __future__ import annotations

import os
from functools import cache

import torch

BLOCK = 256


@cache
def available() -> bool:
    """Triton importable, and not switched off (``NEUCODEC_WORKFLOW_TRITON=0``)."""
    if os.environ.get("NEUCODEC_WORKFLOW_TRITON") == "0":
        return False
    try:
        import triton  # type: ignore[import-untyped,import-not-found,unused-ignore] # noqa: F401
    except ImportError:
        return False
    return True


@cache
def _kernel():
    import triton  # type: ignore[import-untyped,import-not-found,unused-ignore]
    import triton.language as tl  # type: ignore[import-untyped,import-not-found,unused-ignore]

    @triton.jit
    def snake_aa_kernel(x_ptr, y_ptr, up_ptr, down_ptr, alpha_ptr, inv_beta_ptr, C, T, BLOCK: tl.constexpr):
        row = tl.program_id(0)  # b * C + c
        n = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        inside = n < T
        c = row % C
        x_row = x_ptr + row.to(tl.int64) * T
        alpha = tl.load(alpha_ptr + c)
        inv_beta = tl.load(inv_beta_ptr + c)
        acc = tl.zeros((BLOCK,), dtype=tl.float32)
        for k in tl.static_range(12):  # y[n] = sum_k down[k] * z[clamp(2n + k - 5)]
            p = tl.minimum(tl.maximum(2 * n + (k - 5), 0), 2 * T - 1)
            m = p // 2
            odd = p % 2
            u = tl.zeros((BLOCK,), dtype=tl.float32)
            for i in tl.static_range(6):  # even p: taps 1, 3, .., 11 at m+2 .. m-3; odd p: taps 0, 2, .., 10 at m+3 ..
                w = tl.where(odd == 1, tl.load(up_ptr + 2 * i), tl.load(up_ptr + 2 * i + 1))
                src = tl.minimum(tl.maximum(m + (2 - i) + odd, 0), T - 1)
                u += w * tl.load(x_row + src, mask=inside, other=0.0)
            s = tl.sin(u * alpha)
            acc += tl.load(down_ptr + k) * (u + inv_beta * (s * s))
        tl.store(y_ptr + row.to(tl.int64) * T + n, acc, mask=inside)

    return snake_aa_kernel


def snake_aa(
    x: torch.Tensor, up: torch.Tensor, down: torch.Tensor, alpha: torch.Tensor, inv_beta: torch.Tensor
) -> torch.Tensor:
    """``Activation1d(x)`` for ``x [B, C, T]`` float32; ``up`` = 2 * the up-sampling filter (12 taps), ``down`` the
    low-pass filter (12 taps), ``alpha`` and ``inv_beta`` per channel (already exponentiated)."""
    x = x.contiguous()
    B, C, T = x.shape
    y = torch.empty_like(x)
    grid = (B * C, (T + BLOCK - 1) // BLOCK)
    _kernel()[grid](x, y, up, down, alpha, inv_beta, C, T, BLOCK=BLOCK)
    return y
