"""The batched engine: exact mode equals NeuCodec.encode_code token for token; fbank; fast mode; devices."""

import numpy as np
import pytest
import torch
from conftest import clip, make_clips

from neucodec_workflow.encode import reference_tokens
from neucodec_workflow.engine import Engine, EngineConfig
from neucodec_workflow.fbank import TorchFbank


@pytest.fixture(scope="module")
def mixed(codec):
    clips = make_clips([(0.3, 16_000, 1), (320 * 40, 16_000, 1), (320 * 40, 16_000, 1), (1.37, 44_100, 2),
                        (320, 16_000, 1), (2.05, 24_000, 1), (0.9, 48_000, 2), (20.5, 16_000, 1)])
    return clips, [reference_tokens(codec, c.audio) for c in clips]


@pytest.mark.parametrize("batch_seconds", [1.0, 6.0, 60.0])
def test_exact_mode_equals_encode_code(codec, mixed, batch_seconds):
    clips, refs = mixed
    if batch_seconds < 60:
        clips, refs = clips[:-1], refs[:-1]  # the 20.5 s clip once, in the large batch
    out = list(Engine(codec, EngineConfig(batch_seconds=batch_seconds)).encode(clips))
    assert [c.segment_id for c, _ in out] == [c.segment_id for c in clips]  # tar order kept
    for (c, tokens), ref in zip(out, refs, strict=True):
        assert len(tokens) == c.n_tokens
        np.testing.assert_array_equal(tokens, ref, err_msg=f"{c.segment_id} ({c.seconds:.2f} s)")


def test_window_smaller_than_input(codec, mixed):
    clips, refs = mixed
    out = list(Engine(codec, EngineConfig(batch_seconds=4.0, window_clips=3)).encode(clips[:5]))
    for (_, tokens), ref in zip(out, refs[:5], strict=True):
        np.testing.assert_array_equal(tokens, ref)


def test_torch_fbank_matches_stock_extractor(codec):
    fb = TorchFbank("cpu")
    for seconds in (0.02, 0.5, 3.3):
        wave = torch.from_numpy(clip(seconds, seed=9))
        wave = torch.nn.functional.pad(wave, (0, 320 - wave.shape[-1] % 320))
        stock = codec.model.feature_extractor(wave, sampling_rate=16_000, return_tensors="pt").input_features[0]
        ours = fb.one(wave)
        assert ours.shape == stock.shape
        assert (ours - stock).abs().max().item() < 1e-4


def test_fast_mode_agreement_is_measured(codec, mixed):
    """No threshold on random weights (tiny rounding margins): the number is computed and reported."""
    clips, refs = mixed
    out = list(Engine(codec, EngineConfig(mode="fast", batch_seconds=60)).encode(clips[:4]))
    agree = np.concatenate([t == r for (_, t), r in zip(out, refs[:4], strict=True)]).mean()
    print(f"fast mode token agreement on random weights (CPU bf16): {agree:.3f}")
    assert 0.0 <= agree <= 1.0 and all(len(t) == c.n_tokens for c, t in out)


def test_oom_in_batch_retries_one_by_one_and_rejects_what_never_fits(codec, monkeypatch):
    clips = make_clips([(0.4, 16_000, 1), (0.5, 16_000, 1), (0.6, 16_000, 1)])
    engine = Engine(codec, EngineConfig(batch_seconds=60))
    real = engine._encode_batch

    def flaky(batch):
        if len(batch) > 1 or batch[0].segment_id == "c2":
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(batch)

    monkeypatch.setattr(engine, "_encode_batch", flaky)
    out = dict((c.segment_id, t) for c, t in engine.encode(clips))
    assert isinstance(out["c2"], torch.OutOfMemoryError)
    np.testing.assert_array_equal(out["c0"], reference_tokens(codec, clips[0].audio))


def test_unknown_mode_is_an_error():
    with pytest.raises(ValueError, match="encode.mode"):
        EngineConfig(mode="turbo")


def test_gpu_claim_locks_are_exclusive(tmp_path):
    import subprocess
    import sys

    from neucodec_workflow.device import claim_gpu

    assert claim_gpu(2, tmp_path) == 0
    code = f"from neucodec_workflow.device import claim_gpu; from pathlib import Path; print(claim_gpu(2, Path({str(tmp_path)!r})))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert other.stdout.strip() == "1"  # another process (another encode job) gets the other GPU


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_exact_mode_on_gpu_equals_encode_code_on_gpu(random_ckpt, mixed):
    from neucodec_workflow.codec import load_codec

    gpu = load_codec(str(random_ckpt), device="cuda")
    clips, _ = mixed
    refs = [reference_tokens(gpu, c.audio) for c in clips]
    for (_, tokens), ref in zip(Engine(gpu, EngineConfig(batch_seconds=60)).encode(clips), refs, strict=True):
        np.testing.assert_array_equal(tokens, ref)
