"""The batched encode engine used by the encode rule.

exact (default): strict fp32, tokens as ``NeuCodec.encode_code`` (fp32, batch 1) makes them: identical on
CPUs; on a GPU (H200) measured agreement with ``encode_code`` on the same GPU >= 0.9999 (3-9 tokens in 100,000
differ; the cause is not yet found: benchmarks/results/encoder.md). It changes how work is grouped and which
kernels run, never the arithmetic's precision: 16 w2v-bert layers, fbank in
torch on the device (float64), w2v-bert batched across clips with an attention mask and its
relative-position bias built from the 73 distance embeddings (``semantic.py``), CodecEnc batched
only across clips of identical padded length, channels-last with fused activations on CPUs
(``acoustic.py``), SemanticEncoder / fc_prior / quantizer per clip. No TF32, no chunking.

fast (opt-in): TF32 matmuls and bf16 autocast for w2v-bert and CodecEnc; ``fc_prior`` and the
quantizer stay fp32. Everything runs batched: CodecEnc and the SemanticEncoder over the batch padded
to its longest clip (the last few frames of shorter clips see the padding), fc_prior and the
quantizer over all frames at once. It changes tokens: its agreement with exact mode is measured (audit,
bench).

The hot loop never waits for the device inside a batch: feature lengths are computed on the host, a
batch's audio goes to the device in one copy from pinned memory, its tokens come back in one copy, and
batch k+1 is queued on the device before the host waits for batch k's tokens. The next window of clips
is gathered (decoded) on a thread while this one encodes.

Batches are length-sorted within a window of clips and sized by ``batch_seconds`` of padded audio.
A clip that runs out of memory in a batch is retried alone; if it fails alone it is returned as an
error (reported as ``encode_error``), never a crash. So is a clip whose codes are not valid tokens (a count other
than ``n_samples_16k // 320``, a code outside 0..65535: ``reference.checked_tokens``): one segment's reject.
"""

from __future__ import annotations

import contextlib
import logging
from collections import defaultdict, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from neucodec_workflow.background import Prefetched
from neucodec_workflow.engine.acoustic import AcousticEncoder
from neucodec_workflow.engine.codec import Codec
from neucodec_workflow.engine.fbank import TorchFbank, feature_frames
from neucodec_workflow.engine.numerics import numerics
from neucodec_workflow.engine.reference import checked_tokens, is_oom
from neucodec_workflow.engine.semantic import SemanticModel
from neucodec_workflow.record.contract import HOP, SAMPLE_RATE
from neucodec_workflow.record.records import MODES, Clip, Mode

log = logging.getLogger(__name__)
MAX_PAD_RATIO = 1.15  # a batch's longest clip is at most 15 % longer than its shortest


FAST_PRECISION = "bf16 autocast + tf32 (fc_prior and quantizer fp32)"


@dataclass
class EngineConfig:
    """``mode`` and ``batch_seconds`` are the config's ``encode.mode`` / ``encode.batch_seconds`` (defaults: the schema)."""

    mode: Mode
    batch_seconds: float  # padded audio seconds per w2v-bert batch
    window_clips: int = 256  # clips gathered and length-sorted before batching
    kernels: str = "auto"  # CodecEnc's activations: auto | native-cpu | triton | torch (acoustic.py)

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
        self.acoustic = AcousticEncoder(m.CodecEnc, self.device, config.kernels)
        self.kernels = self.acoustic.kernels

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

    def _to_device(self, clips: list[Clip]) -> list[torch.Tensor]:
        """The clips, each zero-padded by 1..320 samples as ``encode_code`` pads, in one host-to-device copy (from
        pinned memory on a GPU): views of one device buffer."""
        padded = [len(c.audio) + HOP - len(c.audio) % HOP for c in clips]
        gpu = self.device.type == "cuda"
        host = torch.zeros(sum(padded), dtype=torch.float32, pin_memory=gpu)
        offset = 0
        for clip, n in zip(clips, padded, strict=True):
            host[offset : offset + len(clip.audio)] = torch.from_numpy(clip.audio)
            offset += n
        flat = host.to(self.device, non_blocking=True)
        return list(flat.split(padded))

    def _encode_batch(self, clips: list[Clip]) -> _Pending:
        """Queue one batch on the device; its tokens are read by ``_Pending.tokens`` (the one wait per batch)."""
        waves = self._to_device(clips)
        n_feat = [feature_frames(len(w)) for w in waves]  # on the host: no device round trip
        feats, mask = self.fbank.batch(waves)
        fast = self.config.mode == "fast"
        with self._autocast():
            hidden = self.w2v(feats, mask if len(clips) > 1 else None)
            if fast:  # the whole batch at once, over the padding
                semantic = self.sem(hidden.transpose(1, 2))
                acoustic = self.acoustic(_padded_stack(waves)[:, None, :]).transpose(1, 2)
                sem_i = [semantic[i : i + 1, :, : n_feat[i]] for i in range(len(clips))]
                aco_i = [acoustic[i : i + 1, :, : len(w) // HOP] for i, w in enumerate(waves)]
            else:
                sem_i = [self.sem(hidden[i : i + 1, : n_feat[i]].transpose(1, 2)) for i in range(len(clips))]
                aco_i = self._acoustic_per_length(waves)
        embs = []
        for a, s in zip(aco_i, sem_i, strict=True):
            n = min(a.shape[-1], s.shape[-1])
            embs.append(torch.cat([s[:, :, :n].float(), a[:, :, :n].float()], dim=1).transpose(1, 2))
        if fast:
            _, codes = self.quantizer(self.fc_prior(torch.cat(embs, dim=1)))  # fp32 outside autocast
            flat = codes[0, :, 0]
        else:
            flat = torch.cat([self.quantizer(self.fc_prior(e))[1][0, :, 0] for e in embs])
        return _Pending(clips, [e.shape[1] for e in embs], flat)

    def _acoustic_per_length(self, waves: list[torch.Tensor]) -> list[torch.Tensor]:
        """CodecEnc batched only across clips of identical length: no padding enters it."""
        out: list[torch.Tensor | None] = [None] * len(waves)
        by_len: dict[int, list[int]] = defaultdict(list)
        for i, w in enumerate(waves):
            by_len[w.shape[-1]].append(i)
        for idx in by_len.values():
            result = self.acoustic(torch.stack([waves[i] for i in idx])[:, None, :])
            for j, i in enumerate(idx):
                out[i] = result[j : j + 1].transpose(1, 2)
        return [a for a in out if a is not None]

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

    def _launch(self, batch: list[Clip]) -> Iterator[_Pending | tuple[Clip, Exception]]:
        """Queue ``batch``; on running out of memory retry it clip by clip, and give back the clips that never fit
        as errors."""
        try:
            with numerics(self.config.mode), torch.inference_mode():  # scoped: never held across a yield
                pending = self._encode_batch(batch)
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
                yield from self._launch([clip])
            return
        yield pending

    def encode(self, clips: Iterable[Clip]) -> Iterator[tuple[Clip, np.ndarray | Exception]]:
        # the next window is gathered (its clips decoded) on a thread while this one encodes: one waits, ready, and
        # the one after it is gathered; a broken tar raises here; stopping early stops the thread after its window
        with Prefetched(_windows(clips, self.config.window_clips), depth=1, name="window-prefetch") as windows:
            for window in windows:
                yield from self._window(window)

    def _window(self, window: list[Clip]) -> Iterator[tuple[Clip, np.ndarray | Exception]]:
        done: dict[int, tuple[Clip, np.ndarray | Exception]] = {}
        queued: deque[_Pending] = deque()

        def collect(pending: _Pending) -> None:
            for clip, codes in zip(pending.clips, pending.codes(), strict=True):
                done[id(clip)] = (clip, checked_tokens(clip, codes))  # a bad clip is its own error

        for batch in self._batches(window):
            for item in self._launch(batch):
                if isinstance(item, _Pending):
                    queued.append(item)
                else:
                    done[id(item[0])] = item
            while len(queued) > 1:  # batch k+1 is queued before the host waits for batch k
                collect(queued.popleft())
        while queued:
            collect(queued.popleft())
        for clip in window:  # back in tar order
            yield done[id(clip)]


class _Pending:
    """A batch queued on the device: its codes, one flat tensor, copied to (pinned) host memory without waiting.
    They stay int64 (never narrowed) until ``checked_tokens`` has seen them in range."""

    def __init__(self, clips: list[Clip], lengths: list[int], codes: torch.Tensor):
        self.clips, self.lengths = clips, lengths
        codes = codes.to(torch.int64)
        if codes.is_cuda:
            self.host = torch.empty(codes.shape, dtype=torch.int64, pin_memory=True)
            self.host.copy_(codes, non_blocking=True)
            self.ready: torch.cuda.Event | None = torch.cuda.Event()
            self.ready.record()
        else:
            self.host, self.ready = codes, None

    def codes(self) -> list[np.ndarray]:
        """Each clip's codes (int64, not yet checked or narrowed)."""
        if self.ready is not None:
            self.ready.synchronize()
        return np.split(self.host.numpy(), np.cumsum(self.lengths)[:-1])


def _padded_stack(waves: list[torch.Tensor]) -> torch.Tensor:
    longest = max(len(w) for w in waves)
    return torch.stack([F.pad(w, (0, longest - len(w))) for w in waves])


def _windows(clips: Iterable[Clip], size: int) -> Iterator[list[Clip]]:
    window: list[Clip] = []
    for clip in clips:
        window.append(clip)
        if len(window) >= size:
            yield window
            window = []
    if window:
        yield window
