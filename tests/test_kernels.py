"""The engine's CPU kernels against the stock modules they replace: fused anti-aliased SnakeBeta,
channels-last CodecEnc, w2v-bert with the gathered relative-position bias; and the fallback."""

import numpy as np
import pytest
import torch
from conftest import make_clips
from neucodec.activations import SnakeBeta
from neucodec.alias_free_torch import Activation1d

from neucodec_workflow.engine import kernels
from neucodec_workflow.engine.acoustic import AcousticEncoder
from neucodec_workflow.engine.engine import Engine, EngineConfig
from neucodec_workflow.engine.reference import reference_tokens
from neucodec_workflow.engine.semantic import SemanticModel

needs_native = pytest.mark.skipif(
    not kernels.snake_aa_available(), reason="no C compiler: the stock modules run instead"
)


def stock_activation(channels: int, seed: int) -> tuple[Activation1d, tuple[torch.Tensor, ...]]:
    torch.manual_seed(seed)
    act = Activation1d(SnakeBeta(channels, alpha_logscale=True))
    with torch.no_grad():  # trained SnakeBeta parameters are not zero: spread them
        act.act.alpha.normal_(0, 0.5)
        act.act.beta.normal_(0, 0.5)
    s = act.act
    params = (
        2 * act.upsample.filter.flatten(),
        act.downsample.lowpass.filter.flatten(),
        torch.exp(s.alpha.detach()),
        1.0 / (torch.exp(s.beta.detach()) + s.no_div_by_zero),
    )
    return act, params


@needs_native
@pytest.mark.parametrize(
    "batch,channels,length,scale",
    [
        (1, 3, 1, 3),
        (2, 3, 2, 3),
        (3, 16, 7, 3),
        (2, 4, 2049, 3),
        (1, 48, 20_000, 3),
        (2, 768, 300, 3),
        (1, 8, 1000, 3000),
    ],
)
def test_fused_activation_matches_stock_in_both_layouts(batch, channels, length, scale):
    act, params = stock_activation(channels, seed=length)
    x = scale * torch.randn(batch, channels, length)  # scale 3000: sin's argument reduction far from zero
    with torch.inference_mode():
        stock = act(x)
        ncw = kernels.snake_aa(x, *params)
        nwc = kernels.snake_aa(x[:, :, None, :].contiguous(memory_format=torch.channels_last), *params)
    assert nwc.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(ncw, nwc[:, :, 0, :])  # both input shapes run the one channels-last kernel
    assert (ncw - stock).abs().max().item() <= 1e-6 * stock.abs().max().item() + 1e-6  # float ulps, incl. the borders


@needs_native
def test_fused_activation_rejects_what_it_cannot_compute():
    _, params = stock_activation(4, seed=0)
    with pytest.raises(ValueError, match="float32 CPU"):
        kernels.snake_aa(torch.randn(1, 4, 10, dtype=torch.float64), *params)


def test_native_build_is_cached_and_can_be_switched_off(tmp_path, monkeypatch):
    monkeypatch.setenv("NEUCODEC_WORKFLOW_CACHE", str(tmp_path))
    kernels._library.cache_clear()
    try:
        if kernels.snake_aa_available():  # built from source into the given cache, atomically
            assert [p.suffix for p in tmp_path.iterdir()] == [".so"]
            blocker = tmp_path / "not-a-dir"
            blocker.write_text("")
            monkeypatch.setenv(
                "NEUCODEC_WORKFLOW_CACHE", str(blocker / "cache")
            )  # unusable: falls back to the temp dir
            kernels._library.cache_clear()
            assert kernels.snake_aa_available()
        monkeypatch.setenv("NEUCODEC_WORKFLOW_NATIVE", "0")
        kernels._library.cache_clear()
        assert not kernels.snake_aa_available()
    finally:
        monkeypatch.undo()
        kernels._library.cache_clear()


def test_acoustic_encoder_matches_stock_codec_enc(codec):
    x = torch.from_numpy(make_clips([(1.3, 16_000, 1)])[0].audio)
    x = torch.nn.functional.pad(x, (0, 320 - x.shape[-1] % 320))[None, None]
    enc = AcousticEncoder(codec.model.CodecEnc, torch.device("cpu"))
    with torch.inference_mode():
        stock, ours = codec.model.CodecEnc(x), enc(x)
    assert ours.shape == stock.shape == (1, x.shape[-1] // 320, 1024)
    assert (ours - stock).abs().max().item() <= 1e-5 * stock.abs().max().item()


@pytest.mark.slow  # transformers' model beside ours: ~6 s
def test_semantic_model_matches_transformers_with_a_padded_batch(codec):
    w2v = codec.model.semantic_model
    torch.manual_seed(0)
    feats = torch.randn(2, 120, 160)
    mask = torch.ones(2, 120, dtype=torch.long)
    mask[1, 70:] = 0
    with torch.inference_mode():
        stock = w2v(feats, attention_mask=mask, output_hidden_states=True).hidden_states[16]
        ours = SemanticModel(w2v)(feats, mask)
    scale = stock.abs().max().item()
    assert (ours[0] - stock[0]).abs().max().item() <= 1e-5 * scale
    assert (ours[1, :70] - stock[1, :70]).abs().max().item() <= 1e-5 * scale  # padded frames are never read


@pytest.mark.slow  # the stock activations: ~9 s on 2 cores
def test_exact_mode_without_native_kernels_equals_encode_code(codec, monkeypatch):
    """The path GPUs and compiler-less hosts take: stock convolutions and activation modules."""
    monkeypatch.setenv("NEUCODEC_WORKFLOW_NATIVE", "0")
    kernels._library.cache_clear()
    try:
        engine = Engine(codec, EngineConfig(mode="exact", batch_seconds=60))
        assert engine.kernels == "torch" and not engine.acoustic.native
        clips = make_clips([(0.7, 16_000, 1), (320 * 9, 16_000, 1), (1.1, 24_000, 1)])
        for c, tokens in engine.encode(clips):
            np.testing.assert_array_equal(tokens, reference_tokens(codec, c.audio), err_msg=c.segment_id)
    finally:
        monkeypatch.undo()
        kernels._library.cache_clear()


TRITON_CHECK = """
import sys, torch
sys.path.insert(0, {tests!r})
from test_kernels import stock_activation
from neucodec_workflow.engine.kernels.snake_aa_triton import snake_aa
worst = 0.0
for batch, channels, length, scale in [(1, 3, 1, 3), (2, 2, 2, 3), (1, 3, 7, 3), (2, 2, 600, 3), (1, 2, 300, 3000)]:
    act, params = stock_activation(channels, seed=length)
    x = scale * torch.randn(batch, channels, length)
    with torch.inference_mode():
        stock, fused = act(x), snake_aa(x, *params)
    assert fused.shape == stock.shape and fused.dtype == torch.float32
    err = (fused - stock).abs().max().item() / (stock.abs().max().item() + 1.0)
    assert err <= 1e-6, (batch, channels, length, scale, err)
    worst = max(worst, err)
print("worst relative error", worst)
"""


@pytest.mark.slow
def test_triton_activation_matches_stock_through_the_interpreter():
    """The CUDA kernel's arithmetic, run on the CPU by Triton's interpreter (no GPU here): float ulps from stock,
    borders included. tests/test_gpu.py checks the tokens on a device."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    code = TRITON_CHECK.format(tests=str(Path(__file__).parent))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "worst relative error" in proc.stdout
