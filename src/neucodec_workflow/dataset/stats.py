"""``stats.json``: what the seed fleet reported at the end, from the shard reports and the SFT dataset."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from neucodec_workflow.contract import SECONDS_PER_TOKEN
from neucodec_workflow.dataset.sft import EXCLUDED
from neucodec_workflow.records import AuditTotals, CorpusStats, GroupTotals


def load_reports(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    return [json.loads(Path(p).read_text()) for p in paths]


def corpus_stats(reports: list[dict[str, Any]], sft_dir: str | Path) -> CorpusStats:
    """Totals from the per-shard reports; per-language and per-dataset numbers from the SFT parquet files."""
    rejects: Counter[str] = Counter()
    for r in reports:
        rejects.update(r["rejects_by_reason"])
    wall = sum(r["wall_seconds"] for r in reports)
    audio = sum(r["audio_seconds"] for r in reports)
    groups: dict[str, dict[str, GroupTotals]] = {"language": {}, "dataset": {}}
    splits: Counter[str] = Counter()
    for path in sorted(Path(sft_dir, "data").glob("*.parquet")):
        split = path.name.split("-", 1)[0]
        pf = pq.ParquetFile(path)
        for batch in pf.iter_batches(columns=["language", "dataset", "token_count"]):
            cols = batch.to_pydict()
            for lang, ds, n in zip(cols["language"], cols["dataset"], cols["token_count"], strict=True):
                for key, value in (("language", lang), ("dataset", ds)):
                    g = groups[key].setdefault(value or "unknown", {"segments": 0, "tokens": 0, "hours": 0.0})
                    g["segments"] += 1
                    g["tokens"] += n
                    g["hours"] += n * SECONDS_PER_TOKEN / 3600
            splits[split] += batch.num_rows
    excluded = Path(sft_dir, EXCLUDED)
    return {
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
        "per_language": dict(sorted(groups["language"].items())),
        "per_dataset": dict(sorted(groups["dataset"].items())),
        "sft_rows_per_split": dict(splits),
        "sft_excluded_by_reason": json.loads(excluded.read_text())["excluded_by_reason"] if excluded.exists() else {},
    }


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
