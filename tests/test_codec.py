"""The one loader: checkpoints, Hub id offline, random weights (and their cache); strict keys; provenance."""

import hashlib
import os
import re
import threading

import numpy as np
import pytest
import torch
import torch.nn as nn
from conftest import clip, make_clips

from neucodec_workflow.engine import codec as codec_module
from neucodec_workflow.engine.codec import (
    CACHE_ENV,
    DECODER_ONLY,
    CodecLoadError,
    build_neucodec,
    fingerprint,
    load_codec,
    load_state_dict_checked,
    make_random_weights,
    random_state_dict,
    random_weights_file,
    random_weights_key,
)
from neucodec_workflow.engine.engine import Engine, EngineConfig
from neucodec_workflow.engine.reference import reference_tokens


@pytest.fixture(scope="module")
def in_process_random():
    """The seeded random weights built in this process, as every job built them before the cache."""
    return make_random_weights(seed=0)


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
    assert p["codec_id"] == f"checkpoint:{random_ckpt.name}" and p["random_weights"] is True and p["seed"] == 0
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
def test_random_weights_are_seeded_and_not_degenerate(codec, in_process_random):
    tokens = reference_tokens(codec, clip(4.0, seed=3))
    assert len(tokens) == 200
    assert len(np.unique(tokens)) > 120  # default init gives one code (43690) for every frame
    for (k, a), b in zip(codec.model.state_dict().items(), in_process_random.state_dict().values(), strict=True):
        if not k.startswith(DECODER_ONLY):  # not saved in checkpoints: never used to encode
            assert torch.equal(a, b), k


@pytest.mark.slow
def test_random_weights_from_the_cache_are_the_in_process_build(in_process_random, weights_cache):
    """``codec.weights: random`` loads the weights the session's cache built once: every weight (decoder included:
    codec_fit decodes with it), the tokens of both paths and the provenance are what the in-process build gives."""
    cached = load_codec("random", seed=0)
    assert random_weights_file(0).is_relative_to(weights_cache)
    theirs, ours = in_process_random.state_dict(), cached.model.state_dict()
    assert list(ours) == list(theirs)
    for k in theirs:
        assert torch.equal(ours[k], theirs[k]), k
    assert not any(t.is_meta for t in ours.values())
    assert cached.provenance == {
        "semantic_layers": 16,
        "precision": "fp32",
        "versions": cached.provenance["versions"],
        "codec_id": "random",
        "revision": None,
        "random_weights": True,
        "seed": 0,
        "decoder_weights": "loaded",
    }  # as before the cache: no weights_sha256 (the codec's identity stays random:seed=0), no path
    before = codec_module.Codec(model=in_process_random.eval().requires_grad_(False), provenance=cached.provenance)
    audio = clip(2.3, seed=11)
    assert np.array_equal(reference_tokens(cached, audio), reference_tokens(before, audio))
    clips = make_clips([(1.7, 16_000, 1), (2.9, 24_000, 2)])
    config = EngineConfig(mode="exact", batch_seconds=30.0)
    ours_tokens = [t for _, t in Engine(cached, config).encode(clips)]
    theirs_tokens = [t for _, t in Engine(before, config).encode(clips)]
    for a, b in zip(ours_tokens, theirs_tokens, strict=True):
        assert np.array_equal(a, b)
    with torch.inference_mode():  # the decoder too
        codes = torch.from_numpy(ours_tokens[0].astype(np.int64))[None, None]
        assert torch.equal(cached.model.decode_code(codes), in_process_random.decode_code(codes))


@pytest.mark.slow
def test_checkpoint_without_decoder_keeps_the_seeded_decoder_init(random_ckpt):
    """A checkpoint of encoder weights only: the decoder keeps torch's init, drawn as before (codec_fit seeds it)."""
    torch.manual_seed(7)
    before = build_neucodec(init=False)  # how load_codec built the model before it skipped inits it can
    torch.manual_seed(7)
    loaded = load_codec(str(random_ckpt))
    assert loaded.provenance["decoder_weights"] == "absent"
    theirs = before.state_dict()
    for k, v in loaded.model.state_dict().items():
        if k.startswith(("generator.backbone.", "generator.head.", "fc_post_a.")):
            assert torch.equal(v, theirs[k]), k


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc_prior = nn.Linear(4, 3)


def test_random_weights_are_built_once_by_jobs_that_start_together(tmp_path, monkeypatch):
    """Jobs that start at once: one builds (under a lock), the others wait and load its file; a temp file left by a
    killed build is removed; nobody ever sees a half-written file."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    built = []

    def build(seed, layers):
        built.append(seed)
        torch.manual_seed(seed)
        return Tiny()

    monkeypatch.setattr(codec_module, "make_random_weights", build)
    name = f"seed3-layers16-{random_weights_key(3)}.safetensors"
    stale = tmp_path / "random-weights" / f".{name}.123.abcd.tmp"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half a file")
    older = stale.with_name("seed3-layers16-0123456789abcdef.safetensors")  # built for other versions: removed
    other_seed = stale.with_name("seed4-layers16-0123456789abcdef.safetensors")  # kept
    older.write_bytes(b"")
    other_seed.write_bytes(b"")
    paths, states = [], []

    def job():
        paths.append(random_weights_file(3))
        states.append(random_state_dict(3))

    threads = [threading.Thread(target=job) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert built == [3] and len(set(paths)) == 1 and paths[0].name == name
    assert not stale.exists() and not list(paths[0].parent.glob("*.tmp"))
    assert not older.exists() and other_seed.exists()
    torch.manual_seed(3)
    expected = Tiny().state_dict()
    for state in states:
        assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in expected)


def test_random_weights_key_follows_what_makes_them(monkeypatch):
    key = random_weights_key(0)
    assert key == random_weights_key(0) and key != random_weights_key(1) and key != random_weights_key(0, 17)
    installed = codec_module.upstream.installed
    monkeypatch.setattr(codec_module.upstream, "installed", lambda p: "9.9" if p == "torch" else installed(p))
    assert random_weights_key(0) != key


def test_random_weights_without_a_writable_cache_are_built_in_the_job(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(CACHE_ENV, str(blocker / "cache"))
    monkeypatch.setattr(codec_module.tempfile, "tempdir", str(blocker / "tmp"))
    monkeypatch.setattr(codec_module, "make_random_weights", lambda seed, layers: Tiny())
    assert random_weights_file(0) is None
    assert set(random_state_dict(0)) == {"fc_prior.weight", "fc_prior.bias"}


def test_checkpoint_digest_is_kept_by_the_files_identity(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"weights one")
    assert fingerprint(f) == hashlib.sha256(b"weights one").hexdigest()
    assert not (tmp_path / "cache" / "sha256").exists()  # written just now: not kept (its times may not change)
    os.utime(f, (1e9, 1e9))
    assert fingerprint(f) == hashlib.sha256(b"weights one").hexdigest()
    (entry,) = (tmp_path / "cache" / "sha256").iterdir()
    entry.write_text("0" * 64)  # the kept digest is what a second job reads
    assert fingerprint(f) == "0" * 64
    f.write_bytes(b"weights two")  # same size, new content: new times, new digest
    os.utime(f, (1.1e9, 1.1e9))
    assert fingerprint(f) == hashlib.sha256(b"weights two").hexdigest()


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
