"""``stats.json``: what the seed fleet reported at the end, from the shard reports and the SFT dataset."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from neucodec_workflow.sft import SECONDS_PER_TOKEN


def load_reports(paths: list[str | Path]) -> list[dict[str, Any]]:
    return [json.loads(Path(p).read_text()) for p in paths]


def corpus_stats(reports: list[dict[str, Any]], sft_dir: str | Path) -> dict[str, Any]:
    """Totals from the per-shard reports; per-language and per-dataset numbers from the SFT parquet files."""
    rejects: Counter[str] = Counter()
    for r in reports:
        rejects.update(r["rejects_by_reason"])
    wall = sum(r["wall_seconds"] for r in reports)
    audio = sum(r["audio_seconds"] for r in reports)
    stats: dict[str, Any] = {
        "shards": len(reports),
        "segments": sum(r["segments"] for r in reports),
        "encoded": sum(r["encoded"] for r in reports),
        "rejected": sum(r["rejected_count"] for r in reports),
        "rejects_by_reason": dict(sorted(rejects.items())),
        "hours": audio / 3600,
        "tokens": sum(r["tokens"] for r in reports),
        "encode_wall_seconds": wall,
        "audio_seconds_per_wall_second": audio / wall if wall else 0.0,
        "random_weights": any(r["codec"].get("random_weights") for r in reports),
        "audit": audit_totals(reports),
    }
    groups: dict[str, dict[str, dict[str, float]]] = {"language": defaultdict(lambda: defaultdict(float)), "dataset": defaultdict(lambda: defaultdict(float))}
    splits: Counter[str] = Counter()
    for path in sorted(Path(sft_dir, "data").glob("*.parquet")):
        split = path.name.split("-", 1)[0]
        pf = pq.ParquetFile(path)
        for batch in pf.iter_batches(columns=["language", "dataset", "token_count"]):
            cols = batch.to_pydict()
            for lang, ds, n in zip(cols["language"], cols["dataset"], cols["token_count"], strict=True):
                for key, value in (("language", lang), ("dataset", ds)):
                    g = groups[key][value or "unknown"]
                    g["segments"] += 1
                    g["tokens"] += n
                    g["hours"] += n * SECONDS_PER_TOKEN / 3600
            splits[split] += batch.num_rows
    stats["per_language"] = {k: dict(v) for k, v in sorted(groups["language"].items())}
    stats["per_dataset"] = {k: dict(v) for k, v in sorted(groups["dataset"].items())}
    stats["sft_rows_per_split"] = dict(splits)
    return stats


def audit_totals(reports: list[dict[str, Any]]) -> dict[str, Any]:
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
