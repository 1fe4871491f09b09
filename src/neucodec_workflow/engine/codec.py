"""Build and load the neucodec encoder: Hub id, local checkpoint, or seeded random weights.

One loader for every source. The model is the real ``neucodec.NeuCodec`` architecture, built
without the Hub (``NeuCodec.__init__`` would download w2v-bert-2.0), with the w2v-bert stack cut
to the 16 layers the encoder reads (``hidden_states[16]`` is bit-identical), in eval mode.

Weights are loaded strictly for every module the encoder uses: a missing or unexpected key is an
error. Decoder-only weights (vocos backbone and head, ``fc_post_a``) may be absent: encoding never
touches them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from neucodec_workflow import upstream
from neucodec_workflow.engine.probe import speech_like

log = logging.getLogger(__name__)

HUB_IDS = ("neuphonic/neucodec",)
W2V_BERT_ID = "facebook/w2v-bert-2.0"
SEMANTIC_LAYERS = 16
RANDOM = "random"

# Top-level modules upstream's own loader drops from the published checkpoint (training-only heads), as key prefixes:
# the same names deeper in the tree (``generator.fc_post_s...``) are unexpected keys, not training heads.
UPSTREAM_IGNORED = ("fc_post_s.", "SemanticDecoder")
# Modules encoding never runs: their weights may be absent from a checkpoint.
DECODER_ONLY = ("generator.backbone.", "generator.head.", "fc_post_a.", "semantic_model.masked_spec_embed")
CHECKPOINT_FILES = ("pytorch_model.bin", "model.safetensors", "model.pt", "neucodec.pt")


class CodecLoadError(RuntimeError):
    """The requested weights cannot be turned into a complete encoder."""


@dataclass
class Codec:
    """A ready-to-encode NeuCodec model plus where its weights came from."""

    model: Any  # neucodec.NeuCodec
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def is_random(self) -> bool:
        return bool(self.provenance.get("random_weights"))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def build_neucodec(semantic_layers: int = SEMANTIC_LAYERS, *, init: bool = True) -> nn.Module:
    """The NeuCodec module tree exactly as ``NeuCodec.__init__`` builds it, minus the Hub calls.

    ``init=True``: torch's default random init. ``init=False``: the large modules are allocated but
    not initialised (built on the meta device, ~10 s faster); only for loading a checkpoint over it.
    """
    upstream.require("neucodec", "transformers", "torch")  # the rebuilt __init__ and the re-implemented internals
    from neucodec.codec_decoder_vocos import CodecDecoderVocos
    from neucodec.codec_encoder import CodecEncoder
    from neucodec.model import NeuCodec
    from neucodec.module import SemanticEncoder
    from transformers import SeamlessM4TFeatureExtractor, Wav2Vec2BertConfig, Wav2Vec2BertModel

    model = NeuCodec.__new__(NeuCodec)
    nn.Module.__init__(model)
    model.sample_rate = 24_000
    model.hop_length = 480
    with torch.device("meta") if not init else contextlib.nullcontext():
        # Wav2Vec2BertConfig() defaults equal facebook/w2v-bert-2.0 for every value the forward uses.
        config = Wav2Vec2BertConfig(num_hidden_layers=semantic_layers, output_hidden_states=True)
        model.semantic_model = Wav2Vec2BertModel(config)
        model.SemanticEncoder_module = SemanticEncoder(1024, 1024, 1024)
        model.CodecEnc = CodecEncoder()
    model.feature_extractor = SeamlessM4TFeatureExtractor(
        feature_size=80,
        num_mel_bins=80,
        padding_value=1,
        stride=2,
        sampling_rate=16_000,
        return_attention_mask=True,
        padding_side="right",
    )
    model.generator = CodecDecoderVocos(hop_length=model.hop_length)  # FSQ computes buffers at init: never meta
    model.fc_prior = nn.Linear(2048, 2048)
    model.fc_post_a = nn.Linear(2048, 1024)
    if not init:
        for module in (model.semantic_model, model.SemanticEncoder_module, model.CodecEnc):
            module.to_empty(device="cpu")
    return model.eval()


# --- reading checkpoints -------------------------------------------------------------------


def _read_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and our own metadata (empty for foreign checkpoints) from one checkpoint file."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path)), {}
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        meta = obj.get("neucodec_workflow") or {}
        return obj["state_dict"], (json.loads(meta) if isinstance(meta, str) else dict(meta))
    if not isinstance(obj, dict):
        raise CodecLoadError(f"checkpoint {path.name} holds {type(obj).__name__}, not a state dict")
    return obj, {}


def _checkpoint_in(path: Path) -> Path:
    if path.is_file():
        return path
    if path.is_dir():
        for name in CHECKPOINT_FILES:
            if (path / name).is_file():
                return path / name
        raise CodecLoadError(f"no checkpoint ({', '.join(CHECKPOINT_FILES)}) in directory {path.name}/")
    raise CodecLoadError(f"codec.weights: {path} is neither a Hub id, 'random', nor an existing file or directory")


def fingerprint(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def _hub_checkpoint(repo_id: str, revision: str | None) -> tuple[Path, str | None]:
    from huggingface_hub import hf_hub_download

    try:
        path = Path(hf_hub_download(repo_id=repo_id, filename="pytorch_model.bin", revision=revision))
    except Exception as exc:  # offline without cache, auth, network: say what to do
        raise CodecLoadError(
            f"cannot get {repo_id} from the Hugging Face Hub or its cache ({type(exc).__name__}: {exc}). "
            "Fill the HF cache once (huggingface-cli download neuphonic/neucodec; facebook/w2v-bert-2.0) and set "
            "HF_HUB_OFFLINE=1, or point codec.weights at a local checkpoint."
        ) from exc
    snapshot = re.search(r"snapshots/([0-9a-f]{40})/", path.as_posix())
    return path, snapshot.group(1) if snapshot else revision


def _w2v_bert_state_dict() -> dict[str, torch.Tensor]:
    """The pretrained w2v-bert-2.0 weights, as upstream's NeuCodec.__init__ takes them from the Hub."""
    from transformers import Wav2Vec2BertModel

    try:
        w2v = Wav2Vec2BertModel.from_pretrained(W2V_BERT_ID)
    except Exception as exc:
        raise CodecLoadError(
            f"the checkpoint has no semantic_model weights and {W2V_BERT_ID} is not reachable or cached: {exc}"
        ) from exc
    return {f"semantic_model.{k}": v for k, v in w2v.state_dict().items()}


# --- strict loading ------------------------------------------------------------------------


def load_state_dict_checked(
    model: nn.Module, state: dict[str, torch.Tensor], semantic_layers: int, source: str
) -> list[str]:
    """Load ``state`` into ``model``; every key the encoder needs must be present and no key unknown.

    Returns the decoder-only keys that were absent (allowed: encoding does not use them).
    """
    dropped_layers = re.compile(r"^semantic_model\.encoder\.layers\.(\d+)\.")
    kept: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith(UPSTREAM_IGNORED):
            continue
        m = dropped_layers.match(key)
        if m and int(m.group(1)) >= semantic_layers:
            continue  # layers past the ones the encoder reads
        kept[key] = value
    expected = model.state_dict()
    unexpected = sorted(set(kept) - set(expected))
    missing = sorted(set(expected) - set(kept))
    missing_required = [k for k in missing if not k.startswith(DECODER_ONLY)]
    if unexpected or missing_required:
        raise CodecLoadError(
            f"{source} does not match the neucodec encoder: "
            f"{len(missing_required)} missing keys {missing_required[:5]}, {len(unexpected)} unexpected keys {unexpected[:5]}"
        )
    wrong_shape = [k for k in kept if tuple(kept[k].shape) != tuple(expected[k].shape)]
    if wrong_shape:
        raise CodecLoadError(f"{source}: shape mismatch for {wrong_shape[:5]}")
    result = model.load_state_dict(kept, strict=False)
    assert not result.unexpected_keys and set(result.missing_keys) == set(missing)
    return missing


# --- seeded random weights -----------------------------------------------------------------


def probe_signal(seconds: float = 6.0, seed: int = 1234) -> np.ndarray:
    """A fixed speech-like 16 kHz signal: voiced harmonics with moving pitch and syllable-rate envelope."""
    return speech_like(seconds, 16_000, np.random.default_rng(seed))


def _rescale_linear(layer: nn.Linear, inputs: torch.Tensor, gain: float = 1.0) -> None:
    """LSUV step: make each output channel zero-mean with std ``gain`` over the probe frames."""
    with torch.no_grad():
        out = inputs @ layer.weight.T + layer.bias
        mean, std = out.mean(0), out.std(0).clamp_min(1e-8)
        layer.weight.mul_((gain / std)[:, None])
        layer.bias.copy_((layer.bias - mean) * gain / std)


def make_random_weights(seed: int, semantic_layers: int = SEMANTIC_LAYERS) -> nn.Module:
    """Seeded, non-degenerate random weights of the real architecture.

    Default init sends every frame to one code (43690). A data-dependent rescale (LSUV-style) of the
    two linear layers feeding the quantizer (``fc_prior`` and the FSQ ``project_in``), computed on a
    fixed probe signal in one forward pass, spreads frames over the codebook so that numerical changes flip tokens.
    """
    torch.manual_seed(seed)
    model: Any = build_neucodec(semantic_layers)  # a neucodec.NeuCodec, untyped like Codec.model
    probe = torch.from_numpy(probe_signal())[None, None]
    captured: list[torch.Tensor] = []
    handle = model.fc_prior.register_forward_hook(
        lambda _m, args, _out: captured.append(args[0].reshape(-1, 2048).clone())
    )
    with torch.inference_mode():
        model.encode_code(probe)
    handle.remove()
    with torch.no_grad():
        _rescale_linear(model.fc_prior, captured[0])
        # fc_prior feeds the FSQ project_in directly (generator.forward only permutes).
        _rescale_linear(model.generator.quantizer.project_in, model.fc_prior(captured[0]), gain=1.5)
    return model


def save_random_checkpoint(path: str | Path, seed: int, semantic_layers: int = SEMANTIC_LAYERS) -> Path:
    """Write seeded random weights as a checkpoint (encoder keys only) that ``load_codec`` reads like real ones."""
    model = make_random_weights(seed, semantic_layers)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(DECODER_ONLY)}
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    meta = {"random_weights": True, "seed": seed, "semantic_layers": semantic_layers}
    torch.save({"state_dict": state, "neucodec_workflow": json.dumps(meta)}, tmp)
    os.replace(tmp, path)
    return path


# --- the one loader ------------------------------------------------------------------------


def package_versions() -> dict[str, str]:
    return {name: upstream.installed(name) for name in ("neucodec-workflow", "neucodec", "torch", "transformers")}


def load_codec(
    weights: str, *, seed: int = 0, semantic_layers: int = SEMANTIC_LAYERS, device: str | torch.device = "cpu"
) -> Codec:
    """Load the encoder from ``neuphonic/neucodec`` (Hub/HF cache), a local checkpoint, or ``random``.

    ``random`` builds seeded random weights in-process (same as ``save_random_checkpoint`` writes).
    """
    provenance: dict[str, Any] = {
        "semantic_layers": semantic_layers,
        "precision": "fp32",
        "versions": package_versions(),
    }
    if weights == RANDOM:
        model = make_random_weights(seed, semantic_layers)
        provenance.update(codec_id="random", revision=None, random_weights=True, seed=seed)
        missing: list[str] = []
    else:
        model = build_neucodec(semantic_layers, init=False)
        if weights in HUB_IDS:
            revision = os.environ.get("NEUCODEC_REVISION") or None
            path, revision = _hub_checkpoint(weights, revision)
            provenance.update(codec_id=weights, revision=revision)
        elif "/" in weights and not Path(weights).exists() and not weights.startswith((".", "/", "~")):
            raise CodecLoadError(
                f"codec.weights: {weights!r} is not a supported Hub id ({', '.join(HUB_IDS)}) nor an existing path"
            )
        else:
            path = _checkpoint_in(Path(weights).expanduser())
            provenance.update(codec_id=f"checkpoint:{path.name}", revision=None)  # no machine paths in outputs
        state, meta = _read_state_dict(path)
        if not any(k.startswith("semantic_model.") for k in state):
            state = {**state, **_w2v_bert_state_dict()}
            provenance["semantic_weights"] = W2V_BERT_ID
        missing = load_state_dict_checked(model, state, semantic_layers, source=provenance["codec_id"])
        provenance["weights_sha256"] = fingerprint(path)
        provenance["random_weights"] = bool(meta.get("random_weights"))
        if meta.get("random_weights"):
            provenance["seed"] = meta.get("seed")
    provenance["decoder_weights"] = "absent" if missing else "loaded"
    model = model.eval().requires_grad_(False).to(device)
    if provenance["random_weights"]:
        log.warning(
            "RANDOM WEIGHTS (seed %s): tokens are for testing only, not real neucodec tokens", provenance.get("seed")
        )
    return Codec(model=model, provenance=provenance)
