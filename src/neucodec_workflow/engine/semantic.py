"""w2v-bert-2.0 as the engine runs it: ``hidden_states[16]`` from the stock modules and weights.

The forward follows ``transformers``' ``Wav2Vec2BertModel`` (feature projection, then each conformer
layer: half FFN, self-attention, convolution module, half FFN, layer norm), calling the same
submodules, with one change in the attention: the relative-key position bias.

Stock, per layer and clip of L frames: look up an ``[L, L, 64]`` tensor of distance embeddings
(246 MB at 20 s) and contract it with the queries. Distances are clamped to [-64, 8], so there are
only 73 embeddings: here the queries meet those 73 (``q @ E.T``, ``[B, H, L, 73]``) and the bias is
gathered from that by distance. Same products, no ``L x L x 64`` tensor; the dot products are
summed by a different kernel, so values differ by float ulps (tests and the audit check the tokens).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from transformers.models.wav2vec2_bert.modeling_wav2vec2_bert import (
        Wav2Vec2BertEncoderLayer,
        Wav2Vec2BertModel,
        Wav2Vec2BertSelfAttention,
    )


def _distance_index(attn: Wav2Vec2BertSelfAttention, length: int, device: torch.device) -> torch.Tensor:
    """``[L, L]``: which distance embedding each (query, key) pair uses."""
    pos = torch.arange(length, device=device)
    distance = (pos[None, :] - pos[:, None]).clamp(
        -attn.left_max_position_embeddings, attn.right_max_position_embeddings
    )
    return distance + attn.left_max_position_embeddings


def _position_bias(attn: Wav2Vec2BertSelfAttention, q: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``[B, H, L, L]``: ``scaling * q[l] . E[clamp(r - l)]``, as ``_apply_relative_key_position_encoding``."""
    length = q.shape[2]
    per_distance = torch.matmul(q, attn.distance_embedding.weight.T) * attn.scaling  # [B, H, L, 73]
    return per_distance.gather(-1, index.expand(*q.shape[:2], length, length))


def _attention(
    attn: Wav2Vec2BertSelfAttention, h: torch.Tensor, key_mask: torch.Tensor | None, index: torch.Tensor
) -> torch.Tensor:
    B, L, _ = h.shape
    shape = (B, L, attn.num_heads, attn.head_size)
    q = attn.linear_q(h).view(shape).transpose(1, 2)
    k = attn.linear_k(h).view(shape).transpose(1, 2)
    v = attn.linear_v(h).view(shape).transpose(1, 2)
    bias = _position_bias(attn, q, index)
    if key_mask is not None:  # padded keys get the dtype's minimum, as transformers' sdpa path does
        bias = bias.masked_fill(~key_mask[:, None, None, :], torch.finfo(bias.dtype).min)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=attn.scaling)
    return attn.linear_out(out.transpose(1, 2).reshape(B, L, -1))


def _layer(
    layer: Wav2Vec2BertEncoderLayer,
    h: torch.Tensor,
    mask: torch.Tensor | None,
    key_mask: torch.Tensor | None,
    index: torch.Tensor,
) -> torch.Tensor:
    h = layer.ffn1(layer.ffn1_layer_norm(h)) * 0.5 + h
    h = _attention(layer.self_attn, layer.self_attn_layer_norm(h), key_mask, index) + h
    h = h + layer.conv_module(h, attention_mask=mask)
    h = layer.ffn2(layer.ffn2_layer_norm(h)) * 0.5 + h
    return layer.final_layer_norm(h)


class SemanticModel:
    """``w2v(feats, attention_mask=mask, output_hidden_states=True).hidden_states[16]`` for a 16-layer model."""

    def __init__(self, w2v: Wav2Vec2BertModel, layers: int = 16):
        config = w2v.config
        if (
            config.position_embeddings_type != "relative_key"
            or config.add_adapter
            or config.use_intermediate_ffn_before_adapter
            or len(w2v.encoder.layers) < layers
        ):
            raise ValueError("SemanticModel expects the w2v-bert-2.0 configuration (relative_key, no adapter)")
        self.w2v = w2v
        # a ModuleList iterates as plain Modules; these are the encoder's conformer layers
        self.layers = cast("list[Wav2Vec2BertEncoderLayer]", list(w2v.encoder.layers[:layers]))

    def __call__(self, feats: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h, _ = self.w2v.feature_projection(feats)
        key_mask = mask.bool() if mask is not None else None
        if key_mask is not None:
            h = h.masked_fill(~key_mask.unsqueeze(-1), 0.0)
        index = _distance_index(self.layers[0].self_attn, h.shape[1], h.device)
        for layer in self.layers:
            h = _layer(layer, h, mask, key_mask, index)
        return h
