"""The benchmark's transformers path (benchmarks/transformers_neucodec.py): neucodec's weights converted to
transformers' ``NeuCodecModel`` completely (strict load, every key mapped, no key left over) and correctly (fed the
reference's fbank features, it gives ``encode_code``'s tokens exactly), and its batched encode gives one token per
320 samples for each clip of a padded batch."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from conftest import REPO, make_clips

from neucodec_workflow.engine.reference import reference_codes

sys.path.insert(0, str(REPO / "benchmarks"))
import transformers_neucodec as tn  # noqa: E402  (benchmarks/ is not a package)

pytestmark = pytest.mark.slow  # builds a NeuCodecModel of its own (~3.3 GB, tens of seconds on 2 cores)


@pytest.fixture(scope="module")
def hf_model(codec):
    return tn.build_transformers_model(codec)


def test_conversion_is_strict_and_complete(codec, hf_model):
    state = {k: v.detach() for k, v in codec.model.state_dict().items()}
    converted = tn.convert_state_dict(state, hf_model)
    assert set(converted) == set(hf_model.state_dict())
    hf_model.load_state_dict(converted, strict=True)
    assert len(hf_model.semantic_encoder.encoder.layers) == 16 and not hf_model.training

    with pytest.raises(tn.ConversionError, match="no rule"):
        tn.convert_state_dict({**state, "CodecEnc.extra.weight": torch.zeros(1)}, hf_model)
    with pytest.raises(tn.ConversionError, match="missing"):
        tn.convert_state_dict({k: v for k, v in state.items() if k != "fc_prior.bias"}, hf_model)
    with pytest.raises(tn.ConversionError, match="weight_g and weight_v"):
        tn.convert_state_dict({k: v for k, v in state.items() if k != "CodecEnc.conv_blocks.0.weight_g"}, hf_model)
    bad_filter = "CodecEnc.conv_final_block.0.upsample.filter"
    with pytest.raises(tn.ConversionError, match="differs"):
        tn.convert_state_dict({**state, bad_filter: state[bad_filter] + 1}, hf_model)
    layer16 = {k.replace(".layers.0.", ".layers.16."): v for k, v in state.items() if ".encoder.layers.0." in k}
    with pytest.raises(tn.ConversionError, match="unexpected"):
        tn.convert_state_dict({**state, **layer16}, hf_model)


def test_reference_features_give_reference_tokens(codec, hf_model):
    """The converted model is the reference's arithmetic: given encode_code's own fbank features, every stage is
    the same computation and the tokens are identical (what differs is transformers' fbank; encoder.md)."""
    (clip,) = make_clips([(1.03, 16_000, 1)])
    ref = reference_codes(codec, clip.audio)
    batch = tn.Batch.make(tn.feature_extractor(), [clip.audio], "cpu")
    y = codec.model._prepare_audio(torch.from_numpy(clip.audio)[None, None])
    ref_features = codec.model.feature_extractor(y[0], sampling_rate=16_000, return_tensors="pt").input_features
    assert ref_features.shape == batch.inputs["input_features"].shape
    with torch.inference_mode():
        codes = hf_model.encode(**{**batch.inputs, "input_features": ref_features}).audio_codes[0, 0]
    np.testing.assert_array_equal(codes.numpy(), ref)


def test_batched_encode_gives_one_token_per_hop(hf_model):
    clips = make_clips([(0.61, 16_000, 1), (1.5, 24_000, 1), (16_000, 16_000, 1)])  # 16,000 samples: a multiple of 320
    audio = [c.audio for c in clips]
    codes, valid = tn.transformers_codes(hf_model, tn.feature_extractor(), audio, batch_size=3)
    assert [len(c) for c in codes] == [c.n_tokens for c in clips] == [len(a) // 320 for a in audio]
    assert all(c.dtype == np.int64 and c.min() >= 0 and c.max() < 65_536 for c in codes)
    # audio_codes_mask (transformers 5.23) scales the 16 kHz length by 24/16: it marks more codes valid than the
    # clip has whenever the batch holds them (here: the shorter clips); encoder.md
    assert valid[1] == clips[1].n_tokens  # the longest clip (1.5 s): every code of the batch is its own
    assert valid[0] > clips[0].n_tokens and valid[2] > clips[2].n_tokens
