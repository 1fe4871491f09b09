"""transformers' own NeuCodec (``transformers.models.neucodec``) on this project's weights: what a user would pick
instead of the engine, so the number the engine has to beat (``benchmarks/encoder.py`` runs it side by side).

    python benchmarks/transformers_neucodec.py [--weights random|ID|PATH] [--segments N] [--longest S]
                                               [--batch-size B] [--attn sdpa|eager]

Run alone, it compares the two paths stage by stage on a few clips (``diagnose``): fbank features, w2v-bert
hidden states, acoustic encoder output, quantizer input and tokens, at batch size one and in one padded batch.

- ``convert_state_dict``: neucodec's state dict (``NeuCodec``: ``CodecEnc``, ``semantic_model``,
  ``SemanticEncoder_module``, ``fc_prior``, ``generator``, ``fc_post_a``) to ``NeuCodecModel``'s, through an
  explicit key map. Weight norm is folded (``torch._weight_norm``, what the reference computes each forward); the
  anti-aliasing filters and the ISTFT window, persistent buffers in neucodec and computed ones in transformers,
  must be equal to transformers' own; the decoder's fused ``c_attn`` is split into q, k, v. A key that no rule maps
  (unexpected) or a key of ``NeuCodecModel`` that nothing fills (missing) is an error, and the result is loaded
  with ``load_state_dict(strict=True)``.
- ``build_transformers_model``: ``NeuCodecModel`` with 16 w2v-bert layers (as the engine), SDPA, eval mode.
- ``transformers_codes``: its batched, padding-aware encode as a user runs it (``NeuCodecFeatureExtractor``, then
  ``model.encode`` with ``padding_mask`` and ``input_features_mask``), clips sorted by length, batches of B.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from neucodec_workflow.engine.codec import SEMANTIC_LAYERS, Codec

HOP = 320
SAMPLE_RATE = 16_000


class ConversionError(RuntimeError):
    """neucodec's state dict does not map one to one onto ``NeuCodecModel``'s."""


# --- the key map ---------------------------------------------------------------------------------------------------

# CodecEnc.conv_blocks.i (i = 1..5) is EncoderBlock: block.0-2 ResidualUnits, block.3 Activation1d, block.4 WNConv1d;
# a ResidualUnit's block is [Activation1d, WNConv1d k7 (dilated), Activation1d, WNConv1d k1].
_RESIDUAL_PART = {"0": "snake1", "1": "conv1", "2": "snake2", "3": "conv2"}
_BLOCK_PART = {"3": "snake1", "4": "conv1"}


def _codec_enc(m: re.Match) -> str:
    block, rest = int(m["block"]) - 1, m["rest"]
    r = re.fullmatch(r"block\.(?P<unit>[0-2])\.block\.(?P<part>[0-3])\.(?P<leaf>.+)", rest)
    if r:
        return f"acoustic_encoder.block.{block}.res_unit{int(r['unit']) + 1}.{_RESIDUAL_PART[r['part']]}.{r['leaf']}"
    r = re.fullmatch(r"block\.(?P<part>[34])\.(?P<leaf>.+)", rest)
    if r:
        return f"acoustic_encoder.block.{block}.{_BLOCK_PART[r['part']]}.{r['leaf']}"
    raise ConversionError(f"CodecEnc.conv_blocks.{m['block']}.{rest}: no rule")


# (source pattern, target): every source key must match exactly one pattern. Leaves are renamed afterwards
# (``_LEAVES``): weight_g / weight_v are folded, lowpass.filter is transformers' downsample.filter.
RULES: list[tuple[str, str | Callable[[re.Match], str]]] = [
    # w2v-bert: the same Wav2Vec2BertModel class under another name
    (r"semantic_model\.(?P<rest>.+)", r"semantic_encoder.\g<rest>"),
    # SemanticEncoder: initial_conv, residual_blocks = [ReLU, Conv, ReLU, Conv], final_conv
    (r"SemanticEncoder_module\.initial_conv\.(?P<leaf>weight)", r"semantic_adapter.conv1.\g<leaf>"),
    (r"SemanticEncoder_module\.residual_blocks\.1\.(?P<leaf>weight|bias)", r"semantic_adapter.conv2.\g<leaf>"),
    (r"SemanticEncoder_module\.residual_blocks\.3\.(?P<leaf>weight|bias)", r"semantic_adapter.conv3.\g<leaf>"),
    (r"SemanticEncoder_module\.final_conv\.(?P<leaf>weight)", r"semantic_adapter.conv4.\g<leaf>"),
    # CodecEnc: conv_blocks.0 the input conv, 1-5 the encoder blocks, conv_final_block [Activation1d, WNConv1d]
    (r"CodecEnc\.conv_blocks\.0\.(?P<leaf>.+)", r"acoustic_encoder.conv1.\g<leaf>"),
    (r"CodecEnc\.conv_blocks\.(?P<block>[1-5])\.(?P<rest>.+)", _codec_enc),
    (r"CodecEnc\.conv_final_block\.0\.(?P<leaf>.+)", r"acoustic_encoder.snake1.\g<leaf>"),
    (r"CodecEnc\.conv_final_block\.1\.(?P<leaf>.+)", r"acoustic_encoder.conv2.\g<leaf>"),
    # fc_prior and the quantizer (ResidualFSQ with one FSQ: only its projections hold weights)
    (r"fc_prior\.(?P<leaf>weight|bias)", r"fc_encoder.\g<leaf>"),
    (r"generator\.quantizer\.(?P<proj>project_in|project_out)\.(?P<leaf>weight|bias)", r"quantizer.\g<proj>.\g<leaf>"),
    # the decoder (unused by encoding, mapped so that the load is strict)
    (r"fc_post_a\.(?P<leaf>weight|bias)", r"acoustic_decoder.fc.\g<leaf>"),
    (r"generator\.backbone\.embed\.(?P<leaf>weight|bias)", r"acoustic_decoder.embed.\g<leaf>"),
    (r"generator\.backbone\.(?P<net>prior_net|post_net)\.(?P<rest>.+)", r"acoustic_decoder.\g<net>.\g<rest>"),
    (r"generator\.backbone\.transformers\.(?P<i>\d+)\.att_norm\.weight", r"acoustic_decoder.layers.\g<i>.input_layernorm.weight"),
    (r"generator\.backbone\.transformers\.(?P<i>\d+)\.ffn_norm\.weight", r"acoustic_decoder.layers.\g<i>.post_attention_layernorm.weight"),
    (r"generator\.backbone\.transformers\.(?P<i>\d+)\.att\.c_attn\.weight", r"acoustic_decoder.layers.\g<i>.self_attn.qkv_proj.weight"),
    (r"generator\.backbone\.transformers\.(?P<i>\d+)\.att\.c_proj\.weight", r"acoustic_decoder.layers.\g<i>.self_attn.o_proj.weight"),
    (r"generator\.backbone\.transformers\.(?P<i>\d+)\.mlp\.(?P<fc>fc1|fc2)\.weight", r"acoustic_decoder.layers.\g<i>.mlp.\g<fc>.weight"),
    (r"generator\.backbone\.final_layer_norm\.(?P<leaf>weight|bias)", r"acoustic_decoder.norm.\g<leaf>"),
    (r"generator\.head\.out\.(?P<leaf>weight|bias)", r"acoustic_decoder.head.linear.\g<leaf>"),
    (r"generator\.head\.istft\.window", "acoustic_decoder.head.window"),
]  # fmt: skip
_LEAVES = [(r"\.downsample\.lowpass\.filter$", ".downsample.filter")]


def map_key(key: str) -> str:
    """The ``NeuCodecModel`` name of one neucodec key (weight-norm and fused-qkv names still to be resolved)."""
    hits = [(p, t) for p, t in RULES if re.fullmatch(p, key)]
    if len(hits) != 1:
        raise ConversionError(f"{key}: {'no rule' if not hits else f'{len(hits)} rules'} map it")
    pattern, target = hits[0]
    m = re.fullmatch(pattern, key)
    assert m is not None
    out = target(m) if callable(target) else m.expand(target)
    for old, new in _LEAVES:
        out = re.sub(old, new, out)
    return out


def convert_state_dict(state: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """neucodec's ``state`` as ``model``'s (a ``NeuCodecModel``) state dict, complete; see the module docstring.

    Raises ``ConversionError`` on a key no rule maps, a weight-norm half without its pair, a buffer that differs
    from transformers' own, or any key of ``model`` left unfilled (or filled twice).
    """
    buffers = dict(model.named_buffers())
    expected = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    norms: dict[str, dict[str, torch.Tensor]] = {}

    def put(name: str, value: torch.Tensor) -> None:
        if name in out:
            raise ConversionError(f"{name} filled twice")
        out[name] = value

    for key, value in state.items():
        name = map_key(key)
        if name.endswith((".weight_g", ".weight_v")):
            base, half = name.rsplit(".", 1)
            norms.setdefault(base, {})[half] = value
        elif name.endswith(".qkv_proj.weight"):
            base = name.removesuffix(".qkv_proj.weight")
            for part, chunk in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0), strict=True):
                put(f"{base}.{part}.weight", chunk.clone())
        elif name not in expected and name in buffers:
            # computed buffers in transformers (filters, window): the source's must be the same numbers
            if buffers[name].shape != value.shape or not torch.equal(buffers[name].to(value), value):
                raise ConversionError(f"{key}: differs from transformers' {name}")
        else:
            put(name, value)
    for base, halves in norms.items():
        if set(halves) != {"weight_g", "weight_v"}:
            raise ConversionError(f"{base}: weight norm needs weight_g and weight_v, found {sorted(halves)}")
        put(f"{base}.weight", torch._weight_norm(halves["weight_v"], halves["weight_g"], 0))
    missing, unexpected = sorted(set(expected) - set(out)), sorted(set(out) - set(expected))
    if missing or unexpected:
        raise ConversionError(
            f"{len(missing)} missing keys {missing[:5]}, {len(unexpected)} unexpected keys {unexpected[:5]}"
        )
    return out


# --- the model -----------------------------------------------------------------------------------------------------


def build_transformers_model(codec: Codec, device: str | torch.device = "cpu", attn: str = "sdpa") -> Any:
    """``NeuCodecModel`` holding ``codec``'s weights (strict load), 16 w2v-bert layers, ``attn`` attention, eval."""
    from transformers import NeuCodecConfig, NeuCodecModel
    from transformers.initialization import no_init_weights

    layers = codec.provenance.get("semantic_layers", SEMANTIC_LAYERS)
    config = NeuCodecConfig(semantic_model_config={"model_type": "wav2vec2-bert", "num_hidden_layers": layers})
    config._attn_implementation = attn
    config.semantic_model_config._attn_implementation = attn
    with no_init_weights():  # every parameter is overwritten below; buffers are computed in __init__ as usual
        model = NeuCodecModel(config)
    state = convert_state_dict({k: v.detach().cpu() for k, v in codec.model.state_dict().items()}, model)
    model.load_state_dict(state, strict=True)
    assert len(model.semantic_encoder.encoder.layers) == layers == SEMANTIC_LAYERS
    return model.eval().requires_grad_(False).to(device)


def feature_extractor() -> Any:
    from transformers import NeuCodecFeatureExtractor

    return NeuCodecFeatureExtractor()


@dataclass
class Batch:
    """One padded batch as the feature extractor makes it, on ``device``."""

    inputs: dict[str, torch.Tensor]

    @classmethod
    def make(cls, fe: Any, audio: Sequence[np.ndarray], device: str | torch.device) -> Batch:
        inputs = fe(list(audio), sampling_rate=SAMPLE_RATE, return_tensors="pt", device=str(device))
        return cls({k: v.to(device) for k, v in inputs.items()})


def transformers_codes(
    model: Any, fe: Any, audio: Sequence[np.ndarray], batch_size: int, device: str | torch.device = "cpu"
) -> tuple[list[np.ndarray], list[int]]:
    """Codes per clip (``n_samples // 320`` of them, the reference's count) from transformers' batched encode, and
    the number of codes ``audio_codes_mask`` marks valid for each clip. Clips go longest first, ``batch_size`` at a
    time (sorting keeps padding small: the best case for a batched encode)."""
    order = sorted(range(len(audio)), key=lambda i: -len(audio[i]))
    codes: list[np.ndarray] = [np.empty(0, np.int64)] * len(audio)
    valid = [0] * len(audio)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = Batch.make(fe, [audio[i] for i in idx], device)
            out = model.encode(**batch.inputs)
            c = out.audio_codes[:, 0].to("cpu", torch.int64).numpy()
            mask = out.audio_codes_mask.reshape(len(idx), -1).sum(-1).cpu().numpy()  # [B, F] from a [B, T] padding_mask
            for row, i in enumerate(idx):
                codes[i] = c[row, : len(audio[i]) // HOP]
                valid[i] = int(mask[row])
    return codes, valid


# --- where the two paths part --------------------------------------------------------------------------------------


def _where(ref: torch.Tensor, got: torch.Tensor, n: int) -> str:
    """Max |difference| of two ``[frames, channels]`` tensors over their first ``n`` frames, and which frames
    differ by more than 1e-3 of the reference's largest value."""
    ref, got = ref[:n].double().cpu(), got[:n].double().cpu()
    if ref.shape != got.shape:
        return f"shapes {tuple(ref.shape)} vs {tuple(got.shape)}"
    d = (ref - got).abs().amax(-1)
    bad = (d > 1e-3 * ref.abs().max()).nonzero().flatten().tolist()
    where = f"frames {bad[0]}..{bad[-1]} ({len(bad)}) of {n} over 1e-3 rel" if bad else "no frame over 1e-3 rel"
    return f"max {d.max().item():.3g}, {where}"


def _codes_where(ref: torch.Tensor, got: torch.Tensor, n: int) -> str:
    ref, got = ref[:n].cpu(), got[:n].cpu()
    bad = (ref != got).nonzero().flatten().tolist()
    return f"{n - len(bad)}/{n}" + (
        f" (differ at {bad if len(bad) <= 6 else bad[:3] + ['...'] + bad[-2:]})" if bad else ""
    )


def _reference_stages(codec: Codec, audio: np.ndarray) -> dict[str, torch.Tensor]:
    """``encode_code``'s own steps on one clip (its code, unrolled), each stage as ``[frames, channels]``."""
    m = codec.model
    y = m._prepare_audio(torch.from_numpy(audio)[None, None].to(codec.device))
    feat = m.feature_extractor(y[0].cpu(), sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
    feat = feat.to(codec.device)
    sem = m.semantic_model(feat).hidden_states[16]
    acoustic = m.CodecEnc(y)[0]  # [T, 1024]
    adapter = m.SemanticEncoder_module(sem.transpose(1, 2))[0].T
    n = min(len(acoustic), len(adapter))
    prior = m.fc_prior(torch.cat([adapter[:n], acoustic[:n]], 1))
    _, codes, _ = m.generator(prior.T[None], vq=True)
    return {"features": feat[0], "semantic": sem[0], "adapter": adapter, "acoustic": acoustic, "prior": prior,
            "codes": codes[0, 0]}  # fmt: skip


def _transformers_stages(model: Any, batch: Batch, ref_features: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """``NeuCodecModel.encode``'s steps (its code, unrolled) on one padded batch, per clip; ``semantic_on_ref``
    runs its w2v-bert on the reference's features, padded like its own (value 1, same mask)."""
    x = batch.inputs
    feat, mask = x["input_features"], x["input_features_mask"]
    ref_feat = torch.stack(
        [torch.nn.functional.pad(f, (0, 0, 0, feat.shape[1] - len(f)), value=1.0) for f in ref_features]
    )
    sem = model.semantic_encoder(feat, attention_mask=mask).last_hidden_state
    sem_on_ref = model.semantic_encoder(ref_feat, attention_mask=mask).last_hidden_state
    acoustic = model.acoustic_encoder(x["input_values"]).mT
    adapter = model.semantic_adapter(sem.transpose(1, 2)).mT
    n = min(acoustic.shape[1], adapter.shape[1])
    prior = model.fc_encoder(torch.cat([adapter[:, :n], acoustic[:, :n]], -1))
    _, codes = model.quantizer(prior)
    out = model.encode(**x)
    assert torch.equal(codes[..., 0], out.audio_codes[:, 0])  # the unrolled steps are encode's
    valid = out.audio_codes_mask.reshape(len(feat), -1).sum(-1)
    return [
        {"features": feat[i], "mask": mask[i], "semantic": sem[i], "semantic_on_ref": sem_on_ref[i],
         "acoustic": acoustic[i], "adapter": adapter[i], "prior": prior[i], "codes": codes[i, :, 0], "valid": valid[i]}
        for i in range(len(feat))
    ]  # fmt: skip


def diagnose(codec: Codec, model: Any, fe: Any, audio: Sequence[np.ndarray], batch_size: int) -> list[str]:
    """Stage-by-stage comparison of ``encode_code`` (the reference; with 16 layers, ``hidden_states[16]`` is
    identical to the 24-layer model's) and transformers' encode, per clip: each clip alone (batch size one) and in
    batches of ``batch_size`` clips sorted longest first. Returns readable lines."""
    device = codec.device
    order = sorted(range(len(audio)), key=lambda i: -len(audio[i]))
    with torch.inference_mode():
        ref = [_reference_stages(codec, a) for a in audio]
        alone = [
            _transformers_stages(model, Batch.make(fe, [a], device), [r["features"]])[0]
            for a, r in zip(audio, ref, strict=True)
        ]
        batched: dict[int, dict[str, torch.Tensor]] = {}
        for s in range(0, len(order), batch_size):
            group = order[s : s + batch_size]
            b = Batch.make(fe, [audio[i] for i in group], device)
            batched.update(zip(group, _transformers_stages(model, b, [ref[i]["features"] for i in group]), strict=True))
    lines = []
    for i, a in enumerate(audio):
        r, n, frames = ref[i], len(a) // HOP, len(ref[i]["features"])
        lines.append(f"clip {i}: {len(a) / SAMPLE_RATE:.2f} s, {n} tokens, {frames} fbank frames (stacked)")
        for label, t in (("alone", alone[i]), (f"in a batch of {batch_size}", batched[i])):
            lines += [
                f"  {label}: padded to {len(t['features'])} frames, input_features_mask {int(t['mask'].sum())};"
                f" audio_codes_mask marks {int(t['valid'])} codes valid",
                f"    fbank features: {_where(r['features'], t['features'], frames)}",
                f"    w2v-bert hidden_states[16], own features: {_where(r['semantic'], t['semantic'], frames)}",
                f"    w2v-bert hidden_states[16], the reference's features: "
                f"{_where(r['semantic'], t['semantic_on_ref'], frames)}",
                f"    semantic adapter (SemanticEncoder): {_where(r['adapter'], t['adapter'], n)}",
                f"    acoustic encoder (CodecEnc): {_where(r['acoustic'], t['acoustic'], n)}",
                f"    quantizer input (fc_prior): {_where(r['prior'], t['prior'], n)}",
                f"    tokens: {_codes_where(r['codes'], t['codes'], n)}",
            ]
    return lines


def main() -> int:
    import encoder  # benchmarks/encoder.py: the same synthetic clips and seeded weights

    from neucodec_workflow.engine.codec import load_codec

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default="random")
    ap.add_argument("--segments", type=int, default=4)
    ap.add_argument("--longest", type=float, default=8.0, help="segment lengths are 2..LONGEST s (default 8)")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    args = ap.parse_args()
    encoder.keep_freed_memory()
    codec = load_codec(args.weights, seed=args.seed)
    clips = encoder.synthetic_clips(args.segments, args.seed, args.longest)
    hf = build_transformers_model(codec, attn=args.attn)
    print(
        f"reference semantic model attention: {codec.model.semantic_model.config._attn_implementation}; "
        f"transformers' NeuCodecModel: {hf.semantic_encoder.config._attn_implementation}"
    )
    for line in diagnose(codec, hf, feature_extractor(), [c.audio for c in clips], args.batch_size):
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
