"""The batched encode engine used by the encode rule.

exact (default): tokens identical to ``NeuCodec.encode_code`` (fp32, batch 1). It changes how work
is grouped and which kernels run, never the arithmetic's precision: 16 w2v-bert layers, fbank in
torch on the device (float64), w2v-bert batched across clips with an attention mask and its
relative-position bias built from the 73 distance embeddings (``semantic.py``), CodecEnc batched
only across clips of identical padded length, channels-last with fused activations on CPUs
(``acoustic.py``), SemanticEncoder / fc_prior / quantizer per clip. No TF32, no chunking.

fast (opt-in): TF32 matmuls and bf16 autocast for w2v-bert and CodecEnc; ``fc_prior`` and the
quantizer stay fp32. It changes tokens: its agreement with exact mode is measured (audit, bench).

Batches are length-sorted within a window of clips and sized by ``batch_seconds`` of padded audio.
A clip that runs out of memory in a batch is retried alone; if it fails alone it is returned as an
error (reported as ``encode_error``), never a crash.
"""

from __future__ import annotations

import contextlib
import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from neucodec_workflow.contract import HOP, SAMPLE_RATE
from neucodec_workflow.engine.acoustic import AcousticEncoder
from neucodec_workflow.engine.codec import Codec
from neucodec_workflow.engine.fbank import TorchFbank
from neucodec_workflow.engine.numerics import numerics
from neucodec_workflow.engine.reference import check_token_count, is_oom
from neucodec_workflow.engine.semantic import SemanticModel
from neucodec_workflow.records import MODES, Clip, Mode

log = logging.getLogger(__name__)
MAX_PAD_RATIO = 1.15  # a batch's longest clip is at most 15 % longer than its shortest


FAST_PRECISION = "bf16 autocast + tf32 (fc_prior and quantizer fp32)"


@dataclass
class EngineConfig:
    """``mode`` and ``batch_seconds`` are the config's ``encode.mode`` / ``encode.batch_seconds`` (defaults: the schema)."""

    mode: Mode
    batch_seconds: float  # padded audio seconds per w2v-bert batch
    window_clips: int = 256  # clips gathered and length-sorted before batching

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"encode.mode must be one of {MODES}, not {self.mode!r}")


class Engine:
    """``Encoder`` protocol: ``encode(clips)`` yields ``(clip, tokens | exception)``."""

    def __init__(self, codec: Codec, config: EngineConfig):
        self.codec = codec
        self.config = config
        self.name = f"engine-{self.config.mode}"
        self.device = codec.device
        self.fbank = TorchFbank(self.device)
        m = codec.model
        self.sem, self.fc_prior, self.quantizer = m.SemanticEncoder_module, m.fc_prior, m.generator.quantizer
        self.w2v = SemanticModel(m.semantic_model)
        self.acoustic = AcousticEncoder(m.CodecEnc, self.device)
        self.kernels = "native-cpu" if self.acoustic.native else "torch"

    @property
    def provenance(self) -> dict[str, Any]:
        """What goes into every tokens file this engine writes: the codec's provenance, mode, precision, kernels."""
        precision = FAST_PRECISION if self.config.mode == "fast" else self.codec.provenance["precision"]
        return {**self.codec.provenance, "mode": self.config.mode, "precision": precision, "kernels": self.kernels}

    def _autocast(self):
        if self.config.mode == "fast":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # -- the model, batched ---------------------------------------------------------------

    def _encode_batch(self, clips: list[Clip]) -> list[np.ndarray]:
        dev = self.device
        waves = [torch.from_numpy(c.audio).to(dev, non_blocking=True) for c in clips]
        waves = [F.pad(w, (0, HOP - w.shape[-1] % HOP)) for w in waves]  # as encode_code: 1..320 samples
        feats, mask = self.fbank.batch(waves)
        n_feat = mask.sum(1).tolist()
        with self._autocast():
            hidden = self.w2v(feats, mask if len(clips) > 1 else None)
            semantic = [self.sem(hidden[i : i + 1, : n_feat[i]].transpose(1, 2)) for i in range(len(clips))]
            acoustic: dict[int, torch.Tensor] = {}
            by_len: dict[int, list[int]] = defaultdict(list)
            for i, w in enumerate(waves):
                by_len[w.shape[-1]].append(i)
            for idx in by_len.values():  # CNN only across identical lengths: no padding enters it
                out = self.acoustic(torch.stack([waves[i] for i in idx])[:, None, :])
                for j, i in enumerate(idx):
                    acoustic[i] = out[j : j + 1].transpose(1, 2)
        tokens = []
        for i in range(len(clips)):
            a, s = acoustic[i].float(), semantic[i].float()
            n = min(a.shape[-1], s.shape[-1])
            emb = torch.cat([s[:, :, :n], a[:, :, :n]], dim=1)
            emb = self.fc_prior(emb.transpose(1, 2))  # fp32 outside autocast
            _, codes = self.quantizer(emb)
            tokens.append(codes[0, :, 0].to("cpu", torch.int64).numpy().astype("<u2"))
        return tokens

    def _batches(self, clips: list[Clip]) -> Iterator[list[Clip]]:
        """Length-sorted batches whose padded size stays within ``batch_seconds`` and whose shortest
        clip is at least ``1 / MAX_PAD_RATIO`` of the longest (padding is wasted compute)."""
        budget = self.config.batch_seconds * SAMPLE_RATE
        batch: list[Clip] = []
        for clip in sorted(clips, key=lambda c: len(c.audio)):
            longest = len(clip.audio) + HOP
            if batch and (longest * (len(batch) + 1) > budget or longest > MAX_PAD_RATIO * (len(batch[0].audio) + HOP)):
                yield batch
                batch = []
            batch.append(clip)
        if batch:
            yield batch

    def _run(self, batch: list[Clip]) -> Iterator[tuple[Clip, np.ndarray | Exception]]:
        try:
            with numerics(self.config.mode), torch.inference_mode():  # scoped: never held across a yield
                results = self._encode_batch(batch)
        except (RuntimeError, MemoryError) as exc:
            if not is_oom(exc):
                raise
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            if len(batch) == 1:
                log.warning(
                    "segment %s (%.1f s) does not fit in memory alone: rejected", batch[0].segment_id, batch[0].seconds
                )
                yield batch[0], exc
                return
            log.warning("out of memory on a batch of %d; retrying one by one", len(batch))
            for clip in batch:
                yield from self._run([clip])
            return
        for clip, tokens in zip(batch, results, strict=True):
            yield clip, check_token_count(clip, tokens)

    def encode(self, clips: Iterable[Clip]) -> Iterator[tuple[Clip, np.ndarray | Exception]]:
        window: list[Clip] = []
        for clip in clips:
            window.append(clip)
            if len(window) >= self.config.window_clips:
                yield from self._window(window)
                window = []
        if window:
            yield from self._window(window)

    def _window(self, window: list[Clip]) -> Iterator[tuple[Clip, np.ndarray | Exception]]:
        done: dict[int, tuple[Clip, np.ndarray | Exception]] = {}
        for batch in self._batches(window):
            for clip, result in self._run(batch):
                done[id(clip)] = (clip, result)
        for clip in window:  # back in tar order
            yield done[id(clip)]
