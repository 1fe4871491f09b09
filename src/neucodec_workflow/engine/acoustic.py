"""CodecEnc (the acoustic CNN) as the engine runs it: the stock module tree and weights.

- Weight norm is resolved once (``torch._weight_norm(v, g)``, what the stock pre-forward hook
  recomputes on every call), so every convolution gets bit-identical weights without the hook.
- On a CPU with the native kernel (the usual case), the whole CNN runs channels-last (``[B, C, 1, T]``
  in ``torch.channels_last``, memory ``[B, T, C]``): oneDNN's convolutions run 1.2-1.8x faster in that
  layout than in ``[B, C, T]``, and each anti-aliased SnakeBeta (``Activation1d``) runs fused in one
  pass (``kernels/snake_aa.c``) instead of pad + transposed conv + five elementwise ops + pad + conv.
  Results differ from the stock module by float ulps; tests and the audit check that tokens do not.
- On a CUDA device with Triton, the convolutions are cuDNN's in ``[B, C, T]`` and each anti-aliased SnakeBeta
  runs fused in one Triton kernel (``kernels/snake_aa_triton.py``): stock, the activations are ~40 % of the
  device's time in exact mode (the grouped transposed convolution alone is the top kernel).
- Elsewhere (no compiler, no Triton, or ``kernels="torch"``) it runs the stock convolutions and activation modules.

The stock modules are not modified: the reference path (audit) keeps running them as shipped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from neucodec_workflow.engine import kernels as native_kernels
from neucodec_workflow.engine.kernels import snake_aa_triton

if TYPE_CHECKING:
    from neucodec.alias_free_torch import Activation1d  # untyped upstream: mypy reads it as Any


def _conv(conv: nn.Conv1d, channels_last: bool):
    if hasattr(conv, "weight_v"):  # torch.nn.utils.weight_norm, as neucodec's WNConv1d applies it
        weight_v, weight_g = cast(torch.Tensor, conv.weight_v), cast(torch.Tensor, conv.weight_g)  # its parameters
        weight = torch._weight_norm(weight_v, weight_g, 0).detach()
    else:
        weight = conv.weight.detach()
    bias = conv.bias.detach() if conv.bias is not None else None
    # neucodec's convolutions all have integer padding, never "same" / "valid"
    (stride,), (padding,), (dilation,) = conv.stride, cast(tuple[int], conv.padding), conv.dilation
    if channels_last:
        weight = weight[:, :, None, :].contiguous(memory_format=torch.channels_last)
        return lambda x: F.conv2d(x, weight, bias, (1, stride), (0, padding), (1, dilation))
    return lambda x: F.conv1d(x, weight, bias, stride, padding, dilation)


def _activation(act: Activation1d, kernels: str):
    if kernels == "torch":
        return act
    snake = act.act
    alpha = torch.exp(snake.alpha.detach()) if snake.alpha_logscale else snake.alpha.detach()
    beta = torch.exp(snake.beta.detach()) if snake.alpha_logscale else snake.beta.detach()
    inv_beta = 1.0 / (beta + snake.no_div_by_zero)
    up = act.upsample.ratio * act.upsample.filter.detach().flatten()  # x2 is exact in floating point
    down = act.downsample.lowpass.filter.detach().flatten()
    # (fast mode's autocast hands it bf16 conv outputs: the kernel computes in float32)
    if kernels == "triton":
        return lambda x: snake_aa_triton.snake_aa(x.float(), up, down, alpha, inv_beta)
    return lambda x: native_kernels.snake_aa(x.float(), up, down, alpha, inv_beta)


def _supported(act: Activation1d) -> bool:
    """The kernel hard-codes CodecEnc's configuration: 2x up/down, 12 taps, SnakeBeta."""
    up, down = act.upsample, act.downsample
    return (
        type(act.act).__name__ == "SnakeBeta"
        and up.ratio == 2
        and up.kernel_size == 12
        and down.ratio == 2
        and down.lowpass.kernel_size == 12
        and down.lowpass.padding_mode == "replicate"
    )


KERNELS = ("auto", "native-cpu", "triton", "torch")


def pick_kernels(requested: str, device: torch.device, supported: bool) -> str:
    """``auto``: the C kernel on a CPU, Triton on a CUDA device, where available; else the stock modules."""
    if requested not in KERNELS:
        raise ValueError(f"kernels must be one of {KERNELS}, not {requested!r}")
    if requested == "torch" or not supported:
        return "torch"
    if device.type == "cpu" and requested in ("auto", "native-cpu") and native_kernels.snake_aa_available():
        return "native-cpu"
    if device.type == "cuda" and requested in ("auto", "triton") and snake_aa_triton.available():
        return "triton"
    return "torch"


class AcousticEncoder:
    """``CodecEnc(x)`` for ``x [B, 1, T]``: returns ``[B, frames, 1024]`` like the stock forward."""

    def __init__(self, codec_enc: nn.Module, device: torch.device, kernels: str = "auto"):
        from neucodec.alias_free_torch import Activation1d
        from neucodec.module import EncoderBlock, ResidualUnit

        acts = [m for m in codec_enc.modules() if isinstance(m, Activation1d)]
        self.kernels = pick_kernels(kernels, device, all(map(_supported, acts)))
        self.native = self.kernels == "native-cpu"
        self.channels_last = self.native

        def build(module: nn.Module):
            if isinstance(module, nn.Conv1d):
                return _conv(module, self.channels_last)
            if isinstance(module, Activation1d):
                return _activation(module, self.kernels)
            if isinstance(module, ResidualUnit):
                inner = build(module.block)

                def residual(x):
                    y = inner(x)
                    return y.add_(x) if y.dtype == x.dtype else x + y  # x + block(x), in place when it can

                return residual
            if isinstance(module, EncoderBlock):
                return build(module.block)
            if isinstance(module, nn.Sequential):
                steps = [build(m) for m in module]

                def run(x):
                    for step in steps:
                        x = step(x)
                    return x

                return run
            raise TypeError(f"unexpected module in CodecEnc: {type(module).__name__}")

        # CodecEncoder builds both as nn.Sequential
        blocks, final = cast(nn.Sequential, codec_enc.conv_blocks), cast(nn.Sequential, codec_enc.conv_final_block)
        self._forward = build(nn.Sequential(blocks, final))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.channels_last:
            return self._forward(x).permute(0, 2, 1)
        out = self._forward(x[:, :, None, :].contiguous(memory_format=torch.channels_last))  # [B, 1024, 1, frames]
        return out[:, :, 0, :].permute(0, 2, 1)  # memory is already [B, frames, 1024]
