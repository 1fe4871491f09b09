"""Codec fit per language (rule ``codec_fit``, ``snakemake codec_fit``): how well neucodec reconstructs each language.

A seeded sample of up to ``segments_per_language`` stored segments per language (the metadata's language column;
null is ``unknown``) is decoded from its stored tokens with neucodec's own decoder (``NeuCodec.decode_code``, 24 kHz),
resampled to 16 kHz with the resampler the encode path applies to its inputs, and compared with the segment's 16 kHz
input (decoded exactly as the encode job decodes it), both trimmed to the common length. Two measures per segment,
averaged per language: the log-mel spectral distance and SI-SDR.

Reading: every candidate shard's metadata (two columns) to know the languages; then shards in a seeded order, and of
those only the ones that still add a segment to a language that needs one: their token file whole, their tar streamed
only as far as the last picked member. It stops as soon as every language has its sample.

A segment that cannot be decoded or compared is in the report with its reason; a shard whose files cannot be read
is listed with its reason and the sample goes on in the next shards.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch

from neucodec_workflow.record.contract import (
    SAMPLE_RATE,
    candidates,
    pick_column,
    read_provenance,
    tokens_of,
    write_json,
)
from neucodec_workflow.record.records import Clip

log = logging.getLogger(__name__)

UNKNOWN = "unknown"
RANDOM_NOTE = (
    "codec.weights = random: SEEDED RANDOM WEIGHTS. These numbers mean nothing about neucodec; they only show that "
    "the rule runs. Use real weights (codec.weights: neuphonic/neucodec or a checkpoint) to measure the codec."
)
#: The log-mel spectrogram both signals go through (torchaudio.transforms.MelSpectrogram), and the log applied to it.
MEL: dict[str, Any] = {
    "sample_rate": SAMPLE_RATE,
    "n_fft": 1024,
    "win_length": 1024,
    "hop_length": 256,
    "n_mels": 80,
    "f_min": 0.0,
    "f_max": SAMPLE_RATE / 2,
    "power": 1.0,
    "center": True,
    "pad_mode": "constant",  # reflect padding needs more samples than half a window; a segment may be 320 samples
    "mel_scale": "htk",
}
MEL_FLOOR = 1e-5
MEASURES = {
    "log_mel_distance": (
        "mean over mel bins and frames of |ln max(M_input, 1e-5) - ln max(M_decoded, 1e-5)| (M: the magnitude mel "
        "spectrogram of `mel`); 0 for identical signals, lower is better"
    ),
    "si_sdr_db": (
        "scale-invariant signal-to-distortion ratio in dB of the decoded signal against the input, both zero-mean "
        "(Le Roux et al., 2019, 'SDR - half-baked or well done?'); higher is better"
    ),
}


class CodecFitError(RuntimeError):
    """The sample cannot be made at all (no segment anywhere, a codec without decoder weights)."""


# --- the measures --------------------------------------------------------------------------------------------------


def si_sdr(reference: np.ndarray, estimate: np.ndarray, eps: float = 1e-12) -> float:
    """Scale-invariant SDR in dB (Le Roux, Wisdom, Erdogan, Hershey: "SDR - half-baked or well done?", ICASSP 2019).

    Both signals are made zero-mean; the target is the projection of ``estimate`` on ``reference``,
    ``alpha * reference`` with ``alpha = <estimate, reference> / ||reference||^2``, and the ratio is
    ``10 log10(||target||^2 / ||estimate - target||^2)``. A scaled copy of the reference scores the same as the
    reference itself (very large); added noise lowers it. ``eps`` keeps silent inputs finite.
    """
    ref = np.asarray(reference, dtype=np.float64)
    est = np.asarray(estimate, dtype=np.float64)
    if ref.shape != est.shape:
        raise ValueError(f"si_sdr: shapes differ {ref.shape} != {est.shape}")
    ref = ref - ref.mean()
    est = est - est.mean()
    alpha = float(np.dot(est, ref)) / (float(np.dot(ref, ref)) + eps)
    target = alpha * ref
    noise = est - target
    return 10.0 * math.log10((float(np.dot(target, target)) + eps) / (float(np.dot(noise, noise)) + eps))


_mel_transforms: dict[str, Any] = {}


def log_mel(audio: np.ndarray) -> torch.Tensor:
    """``ln max(mel, 1e-5)`` of a 16 kHz signal, ``[n_mels, frames]`` (parameters: ``MEL``)."""
    import torchaudio.transforms as T

    if "mel" not in _mel_transforms:
        _mel_transforms["mel"] = T.MelSpectrogram(**MEL)
    x = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
    with torch.inference_mode():
        return torch.log(_mel_transforms["mel"](x).clamp_min(MEL_FLOOR))


def log_mel_distance(reference: np.ndarray, estimate: np.ndarray) -> float:
    """Mean absolute difference of the two signals' log-mel spectrograms (``MEASURES["log_mel_distance"]``)."""
    if len(reference) != len(estimate):
        raise ValueError(f"log_mel_distance: lengths differ {len(reference)} != {len(estimate)}")
    return float((log_mel(reference) - log_mel(estimate)).abs().mean())


def measure(reference: np.ndarray, decoded: np.ndarray) -> dict[str, Any]:
    """Both measures on the common length of the 16 kHz input and the 16 kHz decoded signal."""
    n = min(len(reference), len(decoded))
    if n == 0:
        raise ValueError("nothing to compare (0 samples in common)")
    ref, est = reference[:n], decoded[:n]
    return {
        "compared_seconds": round(n / SAMPLE_RATE, 4),
        "log_mel_distance": log_mel_distance(ref, est),
        "si_sdr_db": si_sdr(ref, est),
    }


# --- the sample ----------------------------------------------------------------------------------------------------


def _unit(*parts: object) -> float:
    """A deterministic number in [0, 1) from the parts (sha256)."""
    key = "/".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64


def shard_order(shards: Iterable[str], seed: int) -> list[str]:
    """The shards in a seeded order (the same for the same seed and shards)."""
    return sorted(shards, key=lambda s: (_unit("shard", seed, s), s))


def segment_order(shard: str, segment_ids: Iterable[str], seed: int) -> list[str]:
    """A shard's segments in a seeded order."""
    return sorted(segment_ids, key=lambda s: (_unit("segment", seed, shard, s), s))


def read_languages(shard: str, source: str | Path | BinaryIO, columns: dict[str, Any]) -> dict[str, str]:
    """segment_id -> language from a shard's metadata (``columns.segment_id`` and ``columns.language``; a null or
    absent language is ``unknown``). Ids that appear more than once are left out (their language is ambiguous, and
    the dataset leaves them out too)."""
    pf = pq.ParquetFile(source)
    names = pf.schema_arrow.names
    id_col = pick_column(columns["segment_id"], names)
    if id_col is None:
        raise CodecFitError(
            f"shard {shard}: metadata.parquet has none of the columns {candidates(columns['segment_id'])} for "
            f"'segment_id' (columns: {sorted(names)}); set columns.segment_id in the config"
        )
    lang_col = pick_column(columns["language"], names)
    table = pf.read(columns=[id_col] if lang_col is None else [id_col, lang_col])
    ids = table.column(id_col).to_pandas().astype("string")
    langs = (
        pd.Series([None] * len(ids), dtype="string")
        if lang_col is None
        else table.column(lang_col).to_pandas().astype("string")
    )
    frame = pd.DataFrame({"segment_id": ids.to_numpy(), "language": langs.fillna(UNKNOWN).to_numpy()})
    frame = frame[frame["segment_id"].notna()]
    frame = frame[~frame["segment_id"].duplicated(keep=False)]
    return dict(zip(frame["segment_id"].astype(str), frame["language"].astype(str), strict=True))


def pick(
    shard: str,
    languages: dict[str, str],
    stored: Iterable[str],
    needed: dict[str, int],
    seed: int,
) -> dict[str, str]:
    """segment_id -> language: of the shard's stored segments, the first in its seeded order for each language that
    still needs some (at most ``needed[language]``)."""
    stored_ids = set(stored)
    taken: dict[str, str] = {}
    counts: dict[str, int] = {}
    for seg in segment_order(shard, (s for s in languages if s in stored_ids), seed):
        lang = languages[seg]
        if counts.get(lang, 0) < needed.get(lang, 0):
            taken[seg] = lang
            counts[lang] = counts.get(lang, 0) + 1
    return taken


@dataclass
class LanguageFit:
    """One language's sample: every segment with its measures, or with the reason it has none."""

    in_metadata: int = 0
    segments: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        measured = [s for s in self.segments if "reason" not in s]

        def mean(key: str) -> float | None:
            return float(np.mean([s[key] for s in measured])) if measured else None

        return {
            "segments": len(self.segments),
            "n": len(measured),
            "failed": len(self.segments) - len(measured),
            "in_metadata": self.in_metadata,
            "shards": sorted({s["shard"] for s in self.segments}),
            "mean_log_mel_distance": mean("log_mel_distance"),
            "mean_si_sdr_db": mean("si_sdr_db"),
            "per_segment": self.segments,
        }


#: A reader of a shard's small file: a local path unchanged, or an s3:// URL as an in-memory stream.
Reader = Callable[[str], str | BinaryIO]
#: Stored tokens (uint16) -> the decoded signal at 16 kHz.
Decoder = Callable[[np.ndarray], np.ndarray]


def sample_fits(
    *,
    shards: list[str],
    tars: list[str],
    metadata: list[str],
    tokens: list[str],
    columns: dict[str, Any],
    segments_per_language: int,
    seed: int,
    max_seconds: float,
    decode: Decoder,
    read: Reader,
    open_tar_source: Callable[[str], Any],
    metadata_workers: int = 8,
) -> dict[str, Any]:
    """The sample and its measures (without the codec's provenance): ``languages``, ``shards_read`` (token files and
    tars read, in order), ``shard_errors``, ``token_files`` (each read token file's provenance).

    ``shards``/``tars``/``metadata``/``tokens``: the candidate shards and their files (paths or s3:// URLs), in the
    same order. ``decode``: stored tokens -> the decoded 16 kHz signal. ``read``: a small file (metadata, token file)
    as a path or an in-memory stream. ``open_tar_source``: a context manager giving a tar as a path or a stream.
    """
    files = {s: (t, m, k) for s, t, m, k in zip(shards, tars, metadata, tokens, strict=True)}
    order = shard_order(shards, seed)
    shard_errors: list[dict[str, str]] = []
    by_shard = _languages_of_shards(order, files, read, columns, metadata_workers, shard_errors)
    fits: dict[str, LanguageFit] = {}
    for counts in by_shard.values():
        for lang, n in counts.items():
            fits.setdefault(lang, LanguageFit()).in_metadata += n
    if not fits:
        raise CodecFitError(f"no segment with metadata in any of the {len(shards)} shards: nothing to sample")
    log.info("%d languages in the metadata of %d shards: %s", len(fits), len(by_shard), sorted(fits))

    shards_read: list[str] = []
    token_files: dict[str, dict[str, Any]] = {}
    for shard in order:
        needed = {lang: segments_per_language - len(f.segments) for lang, f in fits.items()}
        if not any(n > 0 for n in needed.values()):
            break  # every language has its sample: no more shard is read
        if not any(needed.get(lang, 0) > 0 for lang in by_shard.get(shard, ())):
            continue
        tar, metadata_path, tokens_path = files[shard]
        shards_read.append(shard)
        stored = _read_shard(shard, metadata_path, tokens_path, read, columns, token_files, shard_errors)
        if stored is None:
            continue
        langs, blobs = stored
        picked = pick(shard, langs, blobs, needed, seed)
        if not picked:
            continue
        log.info("shard %s: %d segments picked (%s)", shard, len(picked), sorted(set(picked.values())))
        results = _fit_picked(shard, tar, picked, blobs, max_seconds, decode, open_tar_source, shard_errors)
        for seg, lang in picked.items():
            outcome = results.get(seg, {"reason": "missing_from_tar: the token file has it, audio.tar has no member"})
            record = {"shard": shard, "segment_id": seg, **outcome}
            if "reason" in record:
                log.warning("shard %s segment %s: %s", shard, seg, record["reason"])
            fits[lang].segments.append(record)
    return {
        "languages": {lang: fits[lang].as_dict() for lang in sorted(fits)},
        "shards_read": shards_read,
        "shard_errors": shard_errors,
        "token_files": token_files,
    }


def _languages_of_shards(
    order: list[str],
    files: dict[str, tuple[str, str, str]],
    read: Reader,
    columns: dict[str, Any],
    workers: int,
    shard_errors: list[dict[str, str]],
) -> dict[str, Counter[str]]:
    """Segments per language of every shard, its metadata read on ``workers`` threads: only the counts are kept
    (memory stays small for any corpus). A shard whose metadata cannot be read is left out, named in
    ``shard_errors``."""
    from concurrent.futures import ThreadPoolExecutor

    def count_languages(shard: str) -> tuple[str, Counter[str] | Exception]:
        try:
            return shard, Counter(read_languages(shard, read(files[shard][1]), columns).values())
        except Exception as exc:  # an unreadable metadata file: that shard is left out, named
            return shard, exc

    by_shard: dict[str, Counter[str]] = {}
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for shard, result in pool.map(count_languages, order):
            if isinstance(result, Exception):
                shard_errors.append({"shard": shard, "reason": f"metadata.parquet: {type(result).__name__}: {result}"})
                log.error("shard %s: cannot read metadata.parquet: %s", shard, result)
            else:
                by_shard[shard] = result
    return by_shard


def _read_shard(
    shard: str,
    metadata_path: str,
    tokens_path: str,
    read: Reader,
    columns: dict[str, Any],
    token_files: dict[str, dict[str, Any]],
    shard_errors: list[dict[str, str]],
) -> tuple[dict[str, str], dict[str, Any]] | None:
    """A shard the sample needs: its segments' languages (the metadata, again, now with the ids) and its stored tokens
    by id (the first row of an id, as the dataset uses); its token file's provenance goes into ``token_files``. None
    when a file cannot be read (named in ``shard_errors``)."""
    try:
        what = "metadata.parquet"
        langs = read_languages(shard, read(metadata_path), columns)
        what = "neucodec_tokens.parquet"
        source = read(tokens_path)
        token_files[shard] = read_provenance(source)
        if isinstance(source, io.IOBase):
            source.seek(0)  # read_provenance read its footer
        stored = pq.read_table(source, columns=["segment_id", "neucodec_tokens"]).to_pandas()
    except Exception as exc:
        shard_errors.append({"shard": shard, "reason": f"{what}: {type(exc).__name__}: {exc}"})
        log.error("shard %s: cannot read %s: %s", shard, what, exc)
        return None
    stored = stored.drop_duplicates("segment_id", keep="first")  # the dataset uses the first row of an id too
    return langs, dict(zip(stored["segment_id"].astype(str), stored["neucodec_tokens"], strict=True))


def _fit_picked(
    shard: str,
    tar: str,
    picked: dict[str, str],
    blobs: dict[str, Any],
    max_seconds: float,
    decode: Decoder,
    open_tar_source: Callable[[str], Any],
    shard_errors: list[dict[str, str]],
) -> dict[str, dict[str, Any]]:
    """The picked segments of one shard measured, their tar streamed only as far as the last of them. A tar that
    cannot be read gives its reason to the segments not reached, and is named in ``shard_errors``."""
    from neucodec_workflow.shard.audio import iter_flac_members, open_tar, segment_id_of

    results: dict[str, dict[str, Any]] = {}
    try:
        with open_tar_source(tar) as tar_in, open_tar(shard, tar_in) as f:
            for member, data in iter_flac_members(f):
                seg = segment_id_of(member)
                if seg not in picked or seg in results:
                    continue  # a duplicate member: the encode job used the first one as well
                results[seg] = fit_segment(shard, seg, member, data, tokens_of(blobs[seg]), max_seconds, decode)
                if len(results) == len(picked):
                    break  # the rest of the tar is not read
    except Exception as exc:  # an unreadable or broken tar: the segments not reached say why
        reason = f"audio.tar: {type(exc).__name__}: {exc}"
        shard_errors.append({"shard": shard, "reason": reason})
        log.error("shard %s: %s", shard, reason)
        for seg in picked:
            results.setdefault(seg, {"reason": reason})
    return results


def fit_segment(
    shard: str,
    segment_id: str,
    member: str,
    data: bytes,
    tokens: np.ndarray,
    max_seconds: float,
    decode: Decoder,
) -> dict[str, Any]:
    """One segment: its input as the encode job decodes it, its stored tokens decoded, both measures; or the reason."""
    from neucodec_workflow.shard.audio import decode_member

    clip = decode_member(segment_id, member, data, max_seconds)
    if not isinstance(clip, Clip):
        return {"member": member, "reason": f"{clip.reason}: {clip.detail}"}
    record: dict[str, Any] = {"seconds": round(clip.seconds, 4), "tokens": len(tokens)}
    if len(tokens) == 0:
        return {**record, "reason": "no_tokens: the stored row has 0 tokens"}
    if len(tokens) != clip.n_tokens:
        record["input_tokens"] = clip.n_tokens  # the stored tokens do not cover this input exactly
    try:
        decoded = decode(tokens)
        if not np.isfinite(decoded).all():
            return {**record, "reason": "non_finite_decoded: the decoder returned NaN or inf"}
        result = {**record, **measure(clip.audio, decoded)}
    except Exception as exc:  # a decode or comparison failure is this segment's, not the job's
        log.warning("shard %s segment %s: %s", shard, segment_id, exc, exc_info=True)
        return {**record, "reason": f"decode_or_compare_error: {type(exc).__name__}: {exc}"}
    if not all(math.isfinite(result[k]) for k in MEASURES):
        return {**record, "reason": f"non_finite_measure: {result}"}
    return result


# --- the codec -----------------------------------------------------------------------------------------------------


def decoder_of(codec: Any) -> Decoder:
    """Stored tokens -> 16 kHz signal: ``NeuCodec.decode_code`` (strict fp32), its 24 kHz output resampled to 16 kHz
    by the function the encode path applies to its inputs (``shard.audio.to_mono_16k``)."""
    from neucodec_workflow.engine.numerics import numerics
    from neucodec_workflow.shard.audio import to_mono_16k

    rate = int(codec.model.sample_rate)

    def decode(tokens: np.ndarray) -> np.ndarray:
        codes = torch.from_numpy(np.asarray(tokens, dtype=np.int64))[None, None].to(codec.device)
        with numerics("exact"), torch.inference_mode():
            recon = codec.model.decode_code(codes)  # [1, 1, T] at 24 kHz
        return to_mono_16k(recon[0, 0].to("cpu", torch.float32).numpy(), rate)

    return decode


def _differs(decoder: dict[str, Any], stored: dict[str, Any]) -> bool:
    """Tokens made by another codec than the decoder's (when the token file says which)."""
    if not stored:
        return False  # a foreign token file: not known
    if decoder.get("weights_sha256") and stored.get("weights_sha256"):
        return bool(decoder["weights_sha256"] != stored["weights_sha256"])
    return bool(decoder.get("codec_id") != stored.get("codec_id") or decoder.get("seed") != stored.get("seed"))


def report(fit: dict[str, Any], provenance: dict[str, Any], parameters: dict[str, Any]) -> dict[str, Any]:
    """The JSON: provenance, parameters, the per-language sample, the notes."""
    notes = []
    random_weights = bool(provenance.get("random_weights"))
    if random_weights:
        notes.append(RANDOM_NOTE)
    other = sorted(s for s, p in fit["token_files"].items() if _differs(provenance, p))
    if other:
        notes.append(
            f"the tokens of {len(other)} shard(s) ({', '.join(other[:5])}) were made by another codec than the one "
            "decoding them (codec_id / weights_sha256 differ): their numbers measure a mismatch, not the codec"
        )
    token_files = {
        s: {k: p.get(k) for k in ("codec_id", "revision", "weights_sha256", "random_weights", "seed")} if p else None
        for s, p in fit["token_files"].items()
    }
    out: dict[str, Any] = {}
    if notes:
        out["note"] = " ".join(notes)
    out.update(
        {
            "provenance": {**provenance, "random_weights": random_weights},
            "parameters": parameters,
            "languages": fit["languages"],
            "shards_read": fit["shards_read"],
            "shard_errors": fit["shard_errors"],
            "token_files": token_files,
        }
    )
    return out


def plot(result: dict[str, Any], path: str | Path) -> None:
    """Per language: mean log-mel distance and mean SI-SDR (bars), each segment (dots), n under each language."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    langs = list(result["languages"])
    plt.rcParams["svg.hashsalt"] = "codec_fit"  # the same SVG for the same numbers
    width = min(40.0, max(7.0, 1.0 + 1.8 * len(langs)))  # many languages: wider, up to a point, labels turned
    fig, axes = plt.subplots(1, 2, figsize=(width, 4.2), constrained_layout=True)
    panels = (
        ("log_mel_distance", "log-mel distance (lower is better)"),
        ("si_sdr_db", "SI-SDR, dB (higher is better)"),
    )
    for ax, (key, label) in zip(axes, panels, strict=True):
        for i, lang in enumerate(langs):
            fit = result["languages"][lang]
            values = [s[key] for s in fit["per_segment"] if "reason" not in s]
            if values:
                ax.bar(i, float(np.mean(values)), color="#8fb3d9", width=0.6)
                ax.plot([i] * len(values), values, "o", color="#1f4e79", markersize=3)
        ax.set_xticks(range(len(langs)))
        ax.set_xticklabels(
            [f"{lang}\nn={result['languages'][lang]['n']}" for lang in langs], rotation=90 if len(langs) > 12 else 0
        )
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
        ax.axhline(0, color="black", linewidth=0.6)
    title = f"neucodec fit per language: {result['provenance'].get('codec_id')}"
    if result["provenance"].get("random_weights"):
        title += "\nRANDOM WEIGHTS: these numbers mean nothing"
    fig.suptitle(title, color="#b00000" if result["provenance"].get("random_weights") else "black")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="svg", metadata={"Date": None})
    plt.close(fig)


def codec_fit_job(
    *,
    shards: list[str],
    tars: list[str],
    metadata: list[str],
    tokens: list[str],
    out_json: str,
    out_plot: str,
    codec: dict[str, Any],
    fit: dict[str, Any],
    columns: dict[str, Any],
    max_seconds: float,
    threads: int,
) -> dict[str, Any]:
    """Rule codec_fit: ``codec``/``fit``/``columns``: the validated config sections (``fit`` is ``codec_fit``);
    ``tars``/``metadata``/``tokens``: per shard, a local path or an s3:// URL."""
    from neucodec_workflow.engine.codec import load_codec
    from neucodec_workflow.engine.device import pick_device
    from neucodec_workflow.record.contract import RANDOM_BANNER
    from neucodec_workflow.storage.streams import OneAtATime, open_source

    torch.set_num_threads(max(1, threads))
    seed, per_language = int(fit["seed"]), int(fit["segments_per_language"])
    # A checkpoint of seeded random weights holds no decoder weights: the decoder then keeps torch's init, seeded here.
    torch.manual_seed(int(codec["seed"]))
    loaded = load_codec(codec["weights"], seed=int(codec["seed"]), device=pick_device(codec["device"]))
    if loaded.provenance.get("decoder_weights") == "absent" and not loaded.is_random:
        raise CodecFitError(
            f"codec.weights {loaded.provenance.get('codec_id')}: the checkpoint has no decoder weights "
            "(generator.backbone, generator.head, fc_post_a); codec_fit decodes with them: use the full checkpoint"
        )
    if loaded.is_random:
        log.warning(RANDOM_BANNER)
    parameters = {
        "segments_per_language": per_language,
        "seed": seed,
        "candidate_shards": len(shards),
        "max_seconds": max_seconds,
        "decoder": "NeuCodec.decode_code, fp32, output 24 kHz",
        "resampler": "torchaudio.functional.resample 24 kHz -> 16 kHz (shard.audio.to_mono_16k, as encode inputs)",
        "input": "the segment's FLAC decoded, downmixed and resampled to 16 kHz as the encode job does",
        "compared": "the common length of input and decoded signal",
        "mel": {**MEL, "log": f"ln(max(mel, {MEL_FLOOR:g}))"},
        "measures": MEASURES,
    }
    fits = sample_fits(
        shards=shards,
        tars=tars,
        metadata=metadata,
        tokens=tokens,
        columns=columns,
        segments_per_language=per_language,
        seed=seed,
        max_seconds=max_seconds,
        decode=decoder_of(loaded),
        read=OneAtATime(),
        open_tar_source=open_source,
    )
    result = report(fits, loaded.provenance, parameters)
    write_json(out_json, result)
    plot(result, out_plot)
    for lang, f in result["languages"].items():
        log.info(
            "%s: %d of %d segments measured (shards %s): log-mel distance %s, SI-SDR %s dB",
            lang,
            f["n"],
            f["segments"],
            ", ".join(f["shards"]),
            "n/a" if f["mean_log_mel_distance"] is None else f"{f['mean_log_mel_distance']:.3f}",
            "n/a" if f["mean_si_sdr_db"] is None else f"{f['mean_si_sdr_db']:.2f}",
        )
    if result.get("note"):
        log.warning("%s", result["note"])
    return result
