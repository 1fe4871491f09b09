"""The w2v-bert-2.0 input features (``SeamlessM4TFeatureExtractor``) in torch, batched, on any device.

Same steps as the stock numpy extractor: x * 2**15, 25 ms povey frames every 10 ms, DC removal,
pre-emphasis 0.97, 512-point rFFT, power, 80 Kaldi mel bins from 20 Hz, log with floor, per-clip
mean/variance normalisation per bin (ddof=1), stride-2 stacking to 160 dims, padding value 1.
Computed in float64 (max difference to numpy ~1e-6) so that tokens stay identical on CPUs (on GPUs exact mode
agrees with ``encode_code`` for >= 0.9999 of tokens, cause not yet found; this fbank is one suspect:
benchmarks/results/encoder.md).
"""

from __future__ import annotations

import numpy as np
import torch

FRAME, HOP, NFFT, STRIDE = 400, 160, 512, 2
MEL_FLOOR = 1.192092955078125e-07


def feature_frames(samples: int) -> int:
    """How many feature vectors ``TorchFbank.one`` makes of ``samples`` samples, without computing them."""
    frames = max(0, (samples - FRAME) // HOP + 1)
    return frames // STRIDE


class TorchFbank:
    def __init__(self, device: torch.device | str):
        from transformers.audio_utils import mel_filter_bank, window_function

        self.device = torch.device(device)
        mel = mel_filter_bank(
            num_frequency_bins=257,
            num_mel_filters=80,
            min_frequency=20,
            max_frequency=8000,
            sampling_rate=16_000,
            norm=None,
            mel_scale="kaldi",
            triangularize_in_mel_space=True,
        )
        self.mel = torch.from_numpy(np.asarray(mel, np.float64)).to(self.device)  # [257, 80]
        self.window = torch.from_numpy(window_function(FRAME, "povey", periodic=False).astype(np.float64)).to(
            self.device
        )

    def one(self, wave: torch.Tensor) -> torch.Tensor:
        """``[T]`` padded 16 kHz audio -> ``[frames // 2, 160]`` float32 features."""
        x = wave.to(self.device, torch.float64) * 2**15
        frames = x.unfold(0, FRAME, HOP)  # [n, 400]
        frames = frames - frames.mean(dim=1, keepdim=True)
        frames = torch.cat([frames[:, :1] * (1 - 0.97), frames[:, 1:] - 0.97 * frames[:, :-1]], dim=1)
        spec = torch.fft.rfft(frames * self.window, n=NFFT)
        spec = spec.to(torch.complex64).to(torch.complex128)  # the stock extractor stores complex64
        power = spec.abs() ** 2
        logmel = torch.log(torch.clamp(power @ self.mel, min=MEL_FLOOR)).to(torch.float32)
        normed = (logmel - logmel.mean(0, keepdim=True)) / torch.sqrt(logmel.var(0, correction=1, keepdim=True) + 1e-7)
        n = normed.shape[0] - normed.shape[0] % STRIDE
        return normed[:n].reshape(n // STRIDE, 80 * STRIDE)

    def batch(self, waves: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Features padded with 1.0 to the longest, and the attention mask (1 = real frame)."""
        feats = [self.one(w) for w in waves]
        longest = max(f.shape[0] for f in feats)
        out = torch.ones(len(feats), longest, 80 * STRIDE, dtype=torch.float32, device=self.device)
        mask = torch.zeros(len(feats), longest, dtype=torch.long, device=self.device)
        for i, f in enumerate(feats):
            out[i, : f.shape[0]] = f
            mask[i, : f.shape[0]] = 1
        return out, mask
