"""The corpus summary, from the per-shard reports alone: ``stats.json`` (what the seed fleet reported at the end),
the dataset card and the dataset's file index. Reading a report is one small object per shard; nothing here reads
tokens or parts, so this step stays fast at any corpus size."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import pyarrow as pa

from neucodec_workflow.dataset.codecs import codec_identity
from neucodec_workflow.dataset.sft import card_text
from neucodec_workflow.record.records import AuditTotals, CorpusStats, GroupTotals


def _add_groups(into: dict[str, GroupTotals], groups: dict[str, Any]) -> None:
    """The shards' dataset rows per language (or dataset): a shard report's ``hours`` there are its dataset rows'
    (``derive.group_totals``), named ``dataset_hours`` in ``stats.json``."""
    for key, g in groups.items():
        t = into.setdefault(key, {"segments": 0, "tokens": 0, "dataset_hours": 0.0})
        t["segments"] += g["segments"]
        t["tokens"] += g["tokens"]
        t["dataset_hours"] += g["hours"]


def corpus_stats(reports: list[dict[str, Any]], failed: Iterable[dict[str, Any]] = ()) -> CorpusStats:
    """Totals over the shards: segments encoded and rejected by reason, ``audio_hours`` (all encoded audio),
    tokens, speed (shards encoded by this workflow), audit agreement, records by kind, dataset rows per split and
    per language / dataset (``segments``, ``tokens``, ``dataset_hours``: the dataset's rows only, without the
    encoded segments the dataset step left out), and ``failed_shards`` (``failed``): the shards not in the dataset
    because a job failed, each with its stage and error."""
    rejects: Counter[str] = Counter()
    excluded: Counter[str] = Counter()
    splits: Counter[str] = Counter()
    records: Counter[str] = Counter()
    groups: dict[str, dict[str, GroupTotals]] = {"language": {}, "dataset": {}}
    timed = [r for r in reports if r.get("wall_seconds")]
    for r in reports:
        rejects.update(r["rejects_by_reason"])
        excluded.update(r["sft"]["excluded_by_reason"])
        splits.update(r["sft"]["rows_per_split"])
        records[r["record"]] += 1
        _add_groups(groups["language"], r["sft"]["per_language"])
        _add_groups(groups["dataset"], r["sft"]["per_dataset"])
    wall = sum(r["wall_seconds"] for r in timed)
    return {
        "shards": len(reports),
        "records": dict(sorted(records.items())),
        "segments": sum(r["segments"] for r in reports),
        "encoded": sum(r["encoded"] for r in reports),
        "rejected": sum(r["rejected_count"] for r in reports),
        "rejects_by_reason": dict(sorted(rejects.items())),
        "audio_hours": sum(r["audio_seconds"] for r in reports) / 3600,
        "tokens": sum(r["tokens"] for r in reports),
        "token_count_mismatches": sum(r["token_file"]["token_count_mismatches"] for r in reports),
        "encode_wall_seconds": wall,
        "audio_seconds_per_wall_second": sum(r["audio_seconds"] for r in timed) / wall if wall else 0.0,
        "random_weights": any(r["provenance"].get("random_weights") for r in reports),
        "audit": audit_totals(reports),
        "per_language": dict(sorted(groups["language"].items())),
        "per_dataset": dict(sorted(groups["dataset"].items())),
        "sft_rows_per_split": dict(splits),
        "sft_excluded_by_reason": dict(sorted(excluded.items())),
        "sft_formats": format_totals(reports),
        "duration_histogram": duration_totals(reports),
        "provenance": provenance_totals(reports),
        "failed_shards": sorted(failed, key=lambda f: f["shard"]),
    }


def failed_section(stats: Mapping[str, Any]) -> str:
    """What every card says about the shards a job failed on (empty when none): they are not in this dataset."""
    failed = stats["failed_shards"]
    if not failed:
        return ""
    lines = [
        f"\n## Shards not in this dataset\n\n{len(failed)} shard(s) failed and were left out (the run was asked to go "
        "on without them: `--keep-going`). Fix each one and run snakemake again: the dataset is completed then.\n",
        *(f"- `{f['shard']}` ({f['stage']}): {f['error']}" for f in failed),
    ]
    return "\n".join(lines) + "\n"


def duration_totals(reports: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The shards' segment-duration histograms added up (shards derived before histograms existed: ``shards_without``)."""
    counts: list[int] = []
    without = 0
    bin_seconds = None
    for r in reports:
        h = r["sft"].get("duration_histogram")
        if h is None:
            without += 1
            continue
        bin_seconds = h["bin_seconds"]
        counts.extend([0] * (len(h["counts"]) - len(counts)))
        for i, n in enumerate(h["counts"]):
            counts[i] += n
    return {"bin_seconds": bin_seconds, "counts": counts, "shards_without": without}


def provenance_totals(reports: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Shards per (record kind, codec, revision, random weights, mode); foreign token files have no provenance."""
    kinds: Counter[tuple[Any, ...]] = Counter()
    for r in reports:
        p = r.get("provenance") or {}
        kinds[(r["record"], p.get("codec_id"), p.get("revision"), bool(p.get("random_weights")), p.get("mode"))] += 1
    keys = ("record", "codec_id", "revision", "random_weights", "mode")
    return [{**dict(zip(keys, k, strict=True)), "shards": n} for k, n in kinds.most_common()]


# One row per shard, from its report: the report's plots, anyone's own analysis (pandas.read_parquet), and the status
# command's first look (status.py: a done shard whose token file still has the size and modification time of its row
# takes its numbers from here instead of its footer).
SHARD_COLUMNS = {
    "shard": pa.string(),
    "record": pa.string(),
    "segments": pa.int64(),
    "encoded": pa.int64(),
    "rejected": pa.int64(),
    "rejects_by_reason": pa.map_(pa.string(), pa.int64()),  # the encode report's (foreign: metadata ids without a row)
    "audio_seconds": pa.float64(),
    "tokens": pa.int64(),
    "token_file_rows": pa.int64(),
    "token_file_bytes": pa.int64(),
    # the token file's modification time (seconds since the epoch) as its derive job saw it: os.stat, or the S3
    # object's LastModified; null for reports derived before it was recorded
    "token_file_mtime": pa.float64(),
    "wall_seconds": pa.float64(),  # the encode job's (null: foreign)
    "device": pa.string(),
    "host": pa.string(),
    "started_at": pa.timestamp("s", tz="UTC"),
    "finished_at": pa.timestamp("s", tz="UTC"),
    "codec_id": pa.string(),
    "codec": pa.string(),  # what makes two shards' tokens the same codec's (consistency.codec_identity; null: foreign)
    "mode": pa.string(),
    "random_weights": pa.bool_(),
    "audit_segments": pa.int64(),  # the encode job's inline audit (null: none)
    "audit_tokens": pa.int64(),
    "audit_matching_tokens": pa.int64(),
    "audit_token_agreement": pa.float64(),
    "dataset_rows": pa.int64(),
}


def shard_table(reports: Iterable[dict[str, Any]]) -> pa.Table:
    def row(r: dict[str, Any]) -> dict[str, Any]:
        p = r.get("provenance") or {}
        audit = r.get("audit") or {}
        token_file = r["token_file"]
        return {
            "shard": r["shard"],
            "record": r["record"],
            "segments": r["segments"],
            "encoded": r["encoded"],
            "rejected": r["rejected_count"],
            "rejects_by_reason": sorted((r.get("rejects_by_reason") or {}).items()),
            "audio_seconds": r["audio_seconds"],
            "tokens": r["tokens"],
            "token_file_rows": token_file.get("rows"),
            "token_file_bytes": token_file["bytes"],
            "token_file_mtime": token_file.get("mtime"),
            "wall_seconds": r.get("wall_seconds") or None,
            "device": r.get("device") or None,
            "host": r.get("host") or None,
            "started_at": _timestamp(r.get("started_at")),
            "finished_at": _timestamp(r.get("finished_at")),
            "codec_id": p.get("codec_id"),
            "codec": codec_identity(p),
            "mode": p.get("mode"),
            "random_weights": bool(p.get("random_weights")),
            "audit_segments": audit.get("segments"),
            "audit_tokens": audit.get("tokens"),
            "audit_matching_tokens": audit.get("matching_tokens"),
            "audit_token_agreement": audit.get("token_agreement"),
            "dataset_rows": sum(r["sft"]["rows_per_split"].values()),
        }

    rows = [row(r) for r in reports]
    return pa.table({name: pa.array([r[name] for r in rows], type) for name, type in SHARD_COLUMNS.items()})


def _timestamp(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _add(into: dict[str, Any], part: Mapping[str, Any]) -> None:
    """Add the numbers of ``part`` into ``into``, recursively; lists, strings and MDS entries are not totals."""
    for key, value in part.items():
        if key == "mds" or isinstance(value, (str, list, bool)) or value is None:
            continue
        if isinstance(value, Mapping):
            _add(into.setdefault(key, {}), value)
        else:
            into[key] = into.get(key, 0) + value


def format_totals(reports: Iterable[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per format (other than hf) and split: the shards' part summaries added up (rows, blocks, tokens, rows left
    out by reason, voice-cloning pairs, ...)."""
    totals: dict[str, dict[str, dict[str, Any]]] = {}
    for r in reports:
        for fmt, by_split in r["sft"].get("formats", {}).items():
            for split, summary in by_split.items():
                _add(totals.setdefault(fmt, {}).setdefault(split, {}), summary)
    return totals


def audit_totals(reports: list[dict[str, Any]]) -> AuditTotals:
    """Overall token agreement of the engine with the reference on the audited samples."""
    audits = [(r["shard"], r["audit"]) for r in reports if r.get("audit")]
    tokens = sum(a["tokens"] for _, a in audits)
    matching = sum(a["matching_tokens"] for _, a in audits)
    return {
        "shards": len(audits),
        "segments": sum(a["segments"] for _, a in audits),
        "tokens": tokens,
        "token_agreement": matching / tokens if tokens else None,
        "shards_below_1": sorted(s for s, a in audits if a["token_agreement"] is not None and a["token_agreement"] < 1),
    }


def dataset_index(reports: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """``index.json``: every part of the dataset (shard, split, path, rows, bytes, sha256), sorted by path."""
    parts = sorted(
        ({"shard": r["shard"], "split": split, **part} for r in reports for split, part in r["sft"]["parts"].items()),
        key=lambda p: p["path"],
    )
    return {"parts": parts}


def codecs_of(reports: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The distinct codecs (id, revision, weights, random or not) that made the shards' tokens, with their shard
    counts (foreign token files: all null): every card shows them (which codec made a dataset is what its users ask
    first)."""
    keys = ("codec_id", "revision", "weights_sha256", "random_weights", "seed")
    found = Counter(json.dumps({k: r["provenance"].get(k) for k in keys}, sort_keys=True) for r in reports)
    return [{**json.loads(c), "shards": n} for c, n in sorted(found.items())]


def dataset_card(reports: list[dict[str, Any]], stats: CorpusStats) -> str:
    """The card's text: features, splits (rows, bytes, hours summed over the parts), codecs, exclusions, stats."""
    splits: dict[str, dict[str, Any]] = {}
    for r in reports:
        for split, part in r["sft"]["parts"].items():
            s = splits.setdefault(split, {"num_examples": 0, "num_bytes": 0, "hours": 0.0})
            s["num_examples"] += part["rows"]
            s["num_bytes"] += part["bytes"]
            s["hours"] += part["hours"]
    splits = {n: s for n, s in splits.items() if s["num_examples"]}  # a split without rows would not load
    codecs = codecs_of(reports)
    records = ", ".join(f"{n} {kind}" for kind, n in stats["records"].items())
    stats_lines = [
        f"Shards: {stats['shards']} ({records}). Segments: {stats['segments']} ({stats['encoded']} encoded, "
        f"{stats['rejected']} rejected: {stats['rejects_by_reason'] or 'none'}). Hours of encoded audio: "
        f"{stats['audio_hours']:.3f}.",
        "",
        "| language | dataset rows | hours |",
        "|---|---|---|",
        *(f"| {k} | {g['segments']} | {g['dataset_hours']:.3f} |" for k, g in stats["per_language"].items()),
    ]
    return card_text(splits, codecs, len(reports), stats["sft_excluded_by_reason"], stats_lines)
