"""Shared fixtures: seeded random weights (real architecture) built once per session, tiny real shards."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from neucodec_workflow.demo.corpus import Member, flac_bytes, write_shard
from neucodec_workflow.engine.codec import CACHE_ENV, Codec, load_codec, random_weights_key, save_random_checkpoint
from neucodec_workflow.engine.probe import speech_like
from neucodec_workflow.record.records import Clip
from neucodec_workflow.shard.audio import to_mono_16k

REPO = Path(__file__).resolve().parents[1]
TEST_CACHE = REPO / ".cache" / "tests"  # git-ignored: 2.5 GB of seeded random weights, kept between test sessions

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _no_hub(monkeypatch):
    """Tests never reach the Hub."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session", autouse=True)
def weights_cache() -> Iterator[Path]:
    """The tests' cache of built weights (``TEST_CACHE``), shared by every test session of this checkout and every
    Snakemake job they start (through the environment): the seeded random weights (``codec.weights: random``,
    ``random_ckpt``) are built once (~30-50 s here) while their recipe and versions stay the same (the cache key),
    not once per session or job; a build for other versions is replaced; a user's own cache is never touched."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CACHE_ENV, str(TEST_CACHE))
        yield TEST_CACHE


@pytest.fixture(scope="session")
def random_ckpt(weights_cache) -> Path:
    """Seeded, non-degenerate random weights as a checkpoint file (encoder keys only), loaded like real weights; made
    from the tests' cache, and kept there under the weights' key (read only by the tests)."""
    path = weights_cache / "checkpoints" / f"random-seed0-{random_weights_key(0)}.pt"
    if not path.is_file():
        for older in path.parent.glob("random-seed0-*.pt"):
            older.unlink()
        path.parent.mkdir(parents=True, exist_ok=True)
        save_random_checkpoint(path, seed=0)
    return path


@pytest.fixture(scope="session")
def codec(random_ckpt) -> Codec:
    return load_codec(str(random_ckpt))


def clip(seconds: float, sr: int = 16_000, seed: int = 0, channels: int = 1) -> np.ndarray:
    audio = speech_like(seconds, sr, np.random.default_rng(seed))
    return np.stack([audio, 0.5 * audio], axis=1) if channels == 2 else audio


def make_clips(spec):
    """(seconds or samples, source rate, channels) -> 16 kHz clips as the decoder makes them."""
    out = []
    for i, (length, sr, ch) in enumerate(spec):
        n = length if isinstance(length, int) else int(length * sr)
        audio = clip(n / sr, sr, seed=100 + i, channels=ch)
        out.append(Clip(f"c{i}", f"c{i}.flac", to_mono_16k(audio, sr), sr, ch))
    return out


def float_wav_bytes(audio: np.ndarray, sr: int) -> bytes:
    """A float WAV (can hold NaN/inf, unlike FLAC): a mislabelled member, as found in real corpora."""
    buf = io.BytesIO()
    sf.write(buf, audio, sr, format="WAV", subtype="FLOAT")
    return buf.getvalue()


def simple_shard(
    root: Path, shard: str, durations: list[float], sr: int = 16_000, seed: int = 0, speaker: str = "spk"
) -> Path:
    """A clean shard: one FLAC per duration, metadata with every standard column."""
    members, rows = [], []
    for i, d in enumerate(durations):
        seg = f"{shard.replace('/', '_')}_{i:03d}"
        members.append(Member(f"{seg}.flac", flac_bytes(clip(d, sr, seed + i), sr)))
        rows.append(
            {
                "segment_id": seg,
                "text": f"utterance {i}",
                "language": "en",
                "speaker": f"{speaker}{i % 2}",
                "duration": d,
                "dataset": "unit",
            }
        )
    return write_shard(root / shard, members, pd.DataFrame(rows))


def snakemake_command(
    workdir: Path, *args: str, config: dict[str, str] | None = None, configfiles: tuple[Path, ...] = ()
) -> list[str]:
    """The plain command a user types, on this repo's workflow with ``workdir`` as working directory (``configfiles``
    after config/config.yaml: numbers nested in ``--config`` arrive as strings)."""
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        *args,
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(REPO / "config" / "config.yaml"),
        *map(str, configfiles),
        "--workflow-profile",
        str(REPO / "profiles" / "default"),
        "--cores",
        "2",
        "--resources",
        "gpu=1",
    ]
    if config:
        cmd += ["--config", *[f"{k}={v}" for k, v in config.items()]]
    return cmd


def run_snakemake(
    workdir: Path,
    *args: str,
    config: dict[str, str] | None = None,
    check: bool = True,
    timeout: float = 900,
    env: dict[str, str] | None = None,
    configfiles: tuple[Path, ...] = (),
) -> subprocess.CompletedProcess:
    """Run the real Snakemake CLI on this repo's workflow with ``workdir`` as working directory."""
    cmd = snakemake_command(workdir, *args, config=config, configfiles=configfiles)
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return proc
