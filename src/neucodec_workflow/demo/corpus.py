"""Synthetic audio and shards in the contract's layout: the demo corpus; the tests and benchmarks build theirs
with the same functions."""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from neucodec_workflow.engine.probe import speech_like


def flac_bytes(audio: np.ndarray, sample_rate: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio, sample_rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


@dataclass
class Member:
    """One tar member: a FLAC payload (or arbitrary bytes, for corrupt-input tests) under a name."""

    name: str
    data: bytes


def write_shard(shard_dir: Path, members: Iterable[Member], metadata: pd.DataFrame) -> Path:
    """Write ``audio.tar`` + ``metadata.parquet`` for one shard."""
    shard_dir.mkdir(parents=True, exist_ok=True)
    with tarfile.open(shard_dir / "audio.tar", "w") as tar:
        for m in members:
            info = tarfile.TarInfo(m.name)
            info.size = len(m.data)
            tar.addfile(info, io.BytesIO(m.data))
    metadata.to_parquet(shard_dir / "metadata.parquet", index=False)
    return shard_dir


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def espeak(text: str, voice: str) -> tuple[np.ndarray, int]:
    """Real synthetic speech from espeak-ng (22.05 kHz mono)."""
    wav = subprocess.run(["espeak-ng", "-v", voice, "--stdout", text], check=True, capture_output=True).stdout
    audio, sr = sf.read(io.BytesIO(wav), dtype="float32")
    return audio, sr


DEMO_LINES = {
    "en": [
        "The quick brown fox jumps over the lazy dog.",
        "Speech tokens make text to speech models simple.",
        "Every segment is either encoded or reported.",
        "A small corpus for a quick demonstration.",
    ],
    "de": [
        "Der schnelle braune Fuchs springt über den faulen Hund.",
        "Heute ist ein schöner Tag.",
        "Jedes Segment wird kodiert oder gemeldet.",
    ],
    "es": [
        "El rápido zorro marrón salta sobre el perro perezoso.",
        "Hoy hace buen tiempo en la ciudad.",
        "Cada segmento se codifica o se rechaza.",
    ],
    "fr": [
        "Le renard brun rapide saute par-dessus le chien paresseux.",
        "Il fait beau aujourd'hui.",
        "Chaque segment est encodé ou signalé.",
    ],
}
# (shard, language, sample rate, channels): several shards, languages, rates and channel counts.
DEMO_SHARDS = [
    ("en/shard-00000", "en", 16_000, 1),
    ("en/shard-00001", "en", 44_100, 2),
    ("de/shard-00000", "de", 24_000, 1),
    ("es/shard-00000", "es", 48_000, 2),
    ("fr/shard-00000", "fr", 22_050, 1),
]


def _resample_np(audio: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    if sr_in == sr_out:
        return audio
    import torch
    import torchaudio.functional as AF

    return AF.resample(torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)), sr_in, sr_out).numpy()


def make_demo_corpus(root: Path, *, use_espeak: bool | None = None, seed: int = 0) -> dict[str, object]:
    """The embedded default corpus: 5 shards, 4 languages, 16-48 kHz, mono and stereo, one bad segment.

    Uses espeak-ng speech when available, otherwise the speech-like synthetic signal.
    """
    use_espeak = espeak_available() if use_espeak is None else use_espeak
    rng = np.random.default_rng(seed)
    for shard, lang, sr, channels in DEMO_SHARDS:
        members, rows = [], []
        for i, text in enumerate(DEMO_LINES[lang]):
            seg = f"{shard.replace('/', '_')}_{i:04d}"
            if use_espeak:
                audio, src_sr = espeak(text, lang)
                audio = _resample_np(audio, src_sr, sr)
            else:
                audio = speech_like(1.5 + 1.5 * rng.random(), sr, rng)
            if channels == 2:
                audio = np.stack([audio, 0.8 * audio], axis=1)
            members.append(Member(f"{seg}.flac", flac_bytes(audio, sr)))
            rows.append(
                {
                    "segment_id": seg,
                    "text": text,
                    "language": lang,
                    "speaker": f"{lang}_speaker_{i % 2}",
                    "duration": len(audio) / sr,
                    "dataset": "demo-espeak" if use_espeak else "demo-synthetic",
                }
            )
        if shard == "en/shard-00001":  # dirty data, as in real corpora: a corrupt member, reported not lost
            members.append(Member("broken_0001.flac", b"fLaC this is not a flac stream"))
            rows.append(
                {
                    "segment_id": "broken_0001",
                    "text": "corrupt audio",
                    "language": lang,
                    "speaker": f"{lang}_speaker_0",
                    "duration": 1.0,
                    "dataset": "demo",
                }
            )
        write_shard(root / shard, members, pd.DataFrame(rows))
    return {"shards": len(DEMO_SHARDS), "speech": "espeak-ng" if use_espeak else "synthetic speech-like signal"}
