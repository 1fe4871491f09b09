"""The one loader: checkpoints, Hub id offline, random weights; strict keys; provenance."""

import re

import numpy as np
import pytest
import torch
import torch.nn as nn
from conftest import clip

from neucodec_workflow.engine.codec import (
    DECODER_ONLY,
    CodecLoadError,
    build_neucodec,
    load_codec,
    load_state_dict_checked,
    make_random_weights,
)
from neucodec_workflow.engine.reference import reference_tokens


@pytest.mark.slow
def test_skeleton_matches_upstream_init(monkeypatch):
    """Our Hub-free builder makes exactly the module tree NeuCodec.__init__ makes (all 24 layers there)."""
    import neucodec.model as upstream
    from transformers import SeamlessM4TFeatureExtractor, Wav2Vec2BertConfig, Wav2Vec2BertModel

    monkeypatch.setattr(
        upstream.Wav2Vec2BertModel,
        "from_pretrained",
        classmethod(lambda cls, *a, **k: Wav2Vec2BertModel(Wav2Vec2BertConfig(output_hidden_states=True))),
    )
    monkeypatch.setattr(upstream.AutoFeatureExtractor, "from_pretrained", lambda *a, **k: SeamlessM4TFeatureExtractor())
    theirs = upstream.NeuCodec(24_000, 480).state_dict()
    ours = build_neucodec(semantic_layers=24).state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}


def test_checkpoint_loads_with_provenance(random_ckpt, codec):
    p = codec.provenance
    assert p["codec_id"] == "checkpoint:random-seed0.pt" and p["random_weights"] is True and p["seed"] == 0
    assert p["semantic_layers"] == 16 and p["precision"] == "fp32" and len(p["weights_sha256"]) == 64
    assert str(random_ckpt.parent) not in str(p)  # no machine paths in provenance
    assert not codec.model.training and len(codec.model.semantic_model.encoder.layers) == 16


@pytest.mark.slow
def test_directory_checkpoint(tmp_path, random_ckpt):
    (tmp_path / "pytorch_model.bin").symlink_to(random_ckpt)
    assert (
        load_codec(str(tmp_path)).provenance["weights_sha256"]
        == load_codec(str(random_ckpt)).provenance["weights_sha256"]
    )


def _save(path, state):
    torch.save(state, path)
    return str(path)


@pytest.mark.slow
def test_missing_key_is_an_error(tmp_path, random_ckpt):
    state = torch.load(random_ckpt, weights_only=True)["state_dict"]
    del state["fc_prior.weight"]
    with pytest.raises(CodecLoadError, match="missing keys.*fc_prior.weight"):
        load_codec(_save(tmp_path / "m.pt", state))


@pytest.mark.slow
def test_unexpected_key_is_an_error(tmp_path, random_ckpt):
    state = torch.load(random_ckpt, weights_only=True)["state_dict"]
    state["CodecEnc.extra.weight"] = torch.zeros(1)
    with pytest.raises(CodecLoadError, match="unexpected keys.*CodecEnc.extra.weight"):
        load_codec(_save(tmp_path / "u.pt", state))


@pytest.mark.slow
def test_upstream_extras_and_later_layers_are_dropped(tmp_path, random_ckpt):
    """The published checkpoint carries fc_post_s/SemanticDecoder and 24 w2v-bert layers: accepted."""
    state = torch.load(random_ckpt, weights_only=True)["state_dict"]
    state["fc_post_s.weight"] = torch.zeros(2)
    state["SemanticDecoder.conv.weight"] = torch.zeros(2)
    state["semantic_model.encoder.layers.20.ffn1.intermediate_dense.weight"] = torch.zeros(2)
    codec = load_codec(_save(tmp_path / "full.pt", state))
    assert codec.provenance["random_weights"] is False  # a plain state dict carries no marker


@pytest.mark.parametrize(
    "key",
    [
        "CodecEnc.fc_post_s.weight",
        "generator.SemanticDecoder.weight",
        "fc_post_sx.weight",
        "semantic_model.encoder.layers.3.extra.weight",
    ],
)
def test_names_of_dropped_modules_elsewhere_are_unexpected(codec, key):
    """Only the top-level training heads and layers past 16 are dropped: the same names elsewhere are errors
    (raised before anything is loaded, so the shared model is untouched)."""
    state = {**codec.model.state_dict(), key: torch.zeros(2)}
    with pytest.raises(CodecLoadError, match=f"unexpected keys.*{re.escape(key)}"):
        load_state_dict_checked(codec.model, state, 16, "test")


@pytest.mark.slow
def test_hub_id_offline_without_cache_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(CodecLoadError, match="HF_HUB_OFFLINE=1"):
        load_codec("neuphonic/neucodec")


def test_unknown_weights_value():
    with pytest.raises(CodecLoadError, match="not a supported Hub id"):
        load_codec("someone/other-codec")
    with pytest.raises(CodecLoadError, match="neither a Hub id"):
        load_codec("./no/such/checkpoint.pt")


@pytest.mark.slow
def test_random_weights_are_seeded_and_not_degenerate(codec):
    tokens = reference_tokens(codec, clip(4.0, seed=3))
    assert len(tokens) == 200
    assert len(np.unique(tokens)) > 120  # default init gives one code (43690) for every frame
    again = make_random_weights(seed=0)
    for (k, a), b in zip(codec.model.state_dict().items(), again.state_dict().values(), strict=True):
        if not k.startswith(DECODER_ONLY):  # not saved in checkpoints: never used to encode
            assert torch.equal(a, b), k


@pytest.mark.slow
def test_truncation_to_16_layers_keeps_tokens(codec):
    """encode_code on a full 24-layer model (same first 16 layers) gives the same tokens."""
    full = build_neucodec(semantic_layers=24)
    state = {k: v for k, v in codec.model.state_dict().items()}
    missing = set(full.state_dict()) - set(state)
    assert all(".layers.1" in k or ".layers.2" in k for k in missing)
    full.load_state_dict(state, strict=False)
    full.eval()
    audio = torch.from_numpy(clip(1.7, seed=4))[None, None]
    with torch.inference_mode():
        assert torch.equal(full.encode_code(audio), codec.model.encode_code(audio))
    assert (
        isinstance(full.semantic_model.encoder.layers, nn.ModuleList) and len(full.semantic_model.encoder.layers) == 24
    )
