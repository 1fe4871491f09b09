"""A speech-like test signal (numpy only). ``codec.probe_signal`` is built from it, so it defines the seeded random
weights: changing it changes every random-weight token. Tests, the demo and the benchmark make their audio with it."""

from __future__ import annotations

import numpy as np


def speech_like(seconds: float, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Voiced harmonics with a wandering pitch, formant-ish weighting and a syllable-rate envelope."""
    n = int(round(seconds * sample_rate))
    t = np.arange(n) / sample_rate
    f0 = 110 + 60 * rng.random() + 25 * np.sin(2 * np.pi * (0.5 + rng.random()) * t)
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    formants = rng.uniform(300, 3000, size=3)
    voiced = np.zeros(n)
    for k in range(1, 25):
        freq = k * f0.mean()
        weight = sum(np.exp(-(((freq - f) / 250) ** 2)) for f in formants) + 0.05 / k
        voiced += weight * np.sin(k * phase)
    syllables = 0.5 * (1 - np.cos(2 * np.pi * (3 + 2 * rng.random()) * t)) ** 2
    noise = rng.standard_normal(n) * 0.05
    x = voiced * syllables + noise * (1 - syllables)
    return (0.3 * x / (np.abs(x).max() + 1e-9)).astype(np.float32)
