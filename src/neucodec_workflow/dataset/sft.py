"""The SFT / Hugging Face dataset, built per shard: each shard's rows (tokens joined with metadata) are its own parts,
``data/{split}/{shard}.parquet``, and the ``README.md`` card (``dataset_info`` features and splits, ``configs``
whose ``data_files`` glob the parts) ties them together. A new shard adds its parts and a new card; nothing else is
rewritten. Splits are by speaker (hash of dataset + speaker), so no speaker is in both train and validation, and
they are deterministic.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from neucodec_workflow.dataset.codecs import codec_lines
from neucodec_workflow.record.contract import SECONDS_PER_TOKEN, candidates, pick_column, publishing, tokens_of
from neucodec_workflow.record.records import Reason, Reject

log = logging.getLogger(__name__)

FIELDS = ("text", "language", "speaker", "dataset", "duration")
SCHEMA = pa.schema(
    [
        ("segment_id", pa.string()),
        ("text", pa.string()),
        ("language", pa.string()),
        ("speaker", pa.string()),
        ("dataset", pa.string()),
        ("duration", pa.float64()),
        ("neucodec_tokens", pa.list_(pa.uint16())),
        ("token_count", pa.int32()),
        ("shard", pa.string()),
    ]
)


class SftError(RuntimeError):
    pass


def resolve_columns(shard: str, available: Iterable[str], mapping: dict[str, Any]) -> dict[str, str | None]:
    """Map each field to the first configured column present; ``text`` and ``segment_id`` are required."""
    available = list(available)
    resolved: dict[str, str | None] = {}
    for name in ("segment_id", *FIELDS):
        resolved[name] = pick_column(mapping[name], available)
        if resolved[name] is None and name in ("segment_id", "text"):
            raise SftError(
                f"shard {shard}: metadata.parquet has none of the columns {candidates(mapping[name])} for {name!r} "
                f"(columns: {sorted(available)}); set columns.{name} in the config"
            )
    return resolved


def speaker_split(dataset: str | None, speaker: str | None, segment_id: str, validation_fraction: float) -> str:
    """Deterministic split by speaker; rows without a speaker are split by segment id."""
    if validation_fraction <= 0:
        return "train"
    speaker = None if speaker is None or pd.isna(speaker) or speaker == "" else speaker
    dataset = None if dataset is None or pd.isna(dataset) else dataset
    key = f"{dataset}/{speaker}" if speaker else f"segment/{segment_id}"
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
    return "validation" if h < validation_fraction else "train"


def metadata_fields(shard: str, meta: pd.DataFrame, mapping: dict[str, Any]) -> pd.DataFrame:
    """The metadata in SFT field names (``segment_id`` as string; an unmapped optional field is all null)."""
    cols = resolve_columns(shard, meta.columns, mapping)
    fields = pd.DataFrame({"segment_id": meta[cols["segment_id"]].astype("string")})
    for name in FIELDS:
        src = cols[name]
        fields[name] = meta[src] if src else None
    return fields


def shard_rows(shard: str, tokens: pd.DataFrame, fields: pd.DataFrame) -> tuple[pd.DataFrame, list[Reject]]:
    """One shard's token rows joined with its metadata (``metadata_fields``), in SFT columns, and the token rows that
    cannot be a training row, each with its reason: a token count that does not match its bytes, a second row for the
    same id, no metadata row, an ambiguous one, no text, an unparseable duration. A missing duration is the encoded
    length (exact)."""
    tokens = tokens.assign(segment_id=tokens["segment_id"].astype("string"))
    excluded: list[Reject] = []
    joined = tokens  # narrowed by exclude() and the merge below

    def exclude(mask: pd.Series, reason: Reason, detail: Callable[[pd.DataFrame], list[str]] | str = "") -> None:
        nonlocal joined
        rows = joined[mask]
        details = detail(rows) if callable(detail) else [detail] * len(rows)
        excluded.extend(Reject(str(s), reason, d) for s, d in zip(rows["segment_id"], details, strict=True))
        joined = joined[~mask]

    stored = joined["neucodec_tokens"].map(len)
    exclude(
        (stored % 2 != 0) | (joined["token_count"] != stored // 2),
        Reason.TOKEN_COUNT_MISMATCH,
        lambda rows: [
            f"token_count {c}, {len(b)} bytes"
            for c, b in zip(rows["token_count"], rows["neucodec_tokens"], strict=True)
        ],
    )
    exclude(
        joined["segment_id"].duplicated(keep="first"), Reason.DUPLICATE_IN_TOKENS, "a row with this id came earlier"
    )
    ambiguous = set(fields.loc[fields["segment_id"].duplicated(keep=False), "segment_id"])
    exclude(joined["segment_id"].isin(ambiguous), Reason.DUPLICATE_IN_METADATA, "several metadata rows")
    joined = joined.merge(
        fields.drop_duplicates("segment_id"), on="segment_id", how="left", validate="one_to_one", indicator=True
    )
    exclude(joined["_merge"] == "left_only", Reason.NOT_IN_METADATA, "tokens without a metadata row")
    text = joined["text"].astype("string").str.strip()
    exclude(
        text.isna() | (text == ""),
        Reason.NO_TEXT,
        lambda rows: ["null" if pd.isna(v) else repr(v) for v in rows["text"]],
    )
    raw = joined["duration"]
    duration = pd.to_numeric(raw, errors="coerce").astype("float64")
    bad = raw.notna() & ~(np.isfinite(duration) & (duration >= 0))
    exclude(bad, Reason.BAD_DURATION, lambda rows: [f"duration {v!r}" for v in rows["duration"]])
    duration = duration[~bad]
    if excluded:
        by_reason = Counter(str(r.reason) for r in excluded)
        log.warning(
            "shard %s: %d encoded segments left out of the dataset %s, e.g. %s",
            shard,
            len(excluded),
            dict(by_reason),
            [(r.segment_id, str(r.reason)) for r in excluded[:5]],
        )
    encoded_seconds = joined["token_count"].astype("float64") * SECONDS_PER_TOKEN
    rows = pd.DataFrame(
        {
            "segment_id": joined["segment_id"].astype(str),
            "text": joined["text"].astype("string"),
            "language": joined["language"].astype("string"),
            "speaker": joined["speaker"].astype("string"),
            "dataset": joined["dataset"].astype("string"),
            "duration": duration.fillna(encoded_seconds),
            "neucodec_tokens": pd.Series(
                [tokens_of(b) for b in joined["neucodec_tokens"]], index=joined.index, dtype=object
            ),
            "token_count": joined["token_count"].astype("int32"),
            "shard": shard,
        }
    )
    return rows.reset_index(drop=True), excluded


def write_part(
    path: str | Path, rows: pd.DataFrame, rows_per_row_group: int, metadata: dict[str, str] | None = None
) -> dict[str, Any]:
    """One shard's rows of one split as a parquet file of the dataset (zero rows is a valid, empty part), written
    atomically; returns what the dataset's index records about it: rows, bytes, sha256, hours. ``metadata``: the
    file's key-value metadata besides the schema's (what shaped the part: ``formats.FormatWriter.fingerprint``)."""
    with publishing(path) as tmp:
        if len(rows):
            table = pa.Table.from_pandas(rows, schema=SCHEMA, preserve_index=False)
            if metadata:
                table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
            pq.write_table(table, tmp, row_group_size=rows_per_row_group, compression="zstd")
        else:  # no row group at all: datasets' parquet reader takes a 0-row group's size as its batch size
            pq.ParquetWriter(tmp, SCHEMA.with_metadata(metadata) if metadata else SCHEMA, compression="zstd").close()
        digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
        size = tmp.stat().st_size
    return {
        "rows": len(rows),
        "bytes": size,
        "sha256": digest,
        "hours": float(rows["token_count"].sum()) * SECONDS_PER_TOKEN / 3600,
    }


def features():
    from datasets import Features, List, Value

    return Features(
        {
            "segment_id": Value("string"),
            "text": Value("string"),
            "language": Value("string"),
            "speaker": Value("string"),
            "dataset": Value("string"),
            "duration": Value("float64"),
            "neucodec_tokens": List(Value("uint16")),
            "token_count": Value("int32"),
            "shard": Value("string"),
        }
    )


def part_path(split: str, shard: str) -> str:
    """Where a shard's part of a split lives inside the dataset (nested shard names stay nested)."""
    return f"data/{split}/{shard}.parquet"


CARD = "README.md"
INDEX = "index.json"  # every part: shard, split, rows, bytes, sha256 (what the Hub push compares)


def card_text(
    splits: dict[str, dict[str, Any]],
    codecs: list[dict[str, Any]],
    n_shards: int,
    excluded_by_reason: dict[str, int],
    stats_lines: list[str],
) -> str:
    """README.md with the ``dataset_info`` block (features, splits) and ``configs`` for ``load_dataset``: the data
    files of each split are the glob ``data/{split}/**/*.parquet``, so adding a shard's part needs no other change."""
    from datasets.info import DatasetInfo, DatasetInfosDict
    from datasets.splits import SplitDict, SplitInfo
    from huggingface_hub import DatasetCardData

    split_dict = SplitDict(
        {n: SplitInfo(name=n, num_bytes=s["num_bytes"], num_examples=s["num_examples"]) for n, s in splits.items()}
    )
    card = DatasetCardData(
        configs=[
            {"config_name": "default", "data_files": [{"split": n, "path": f"data/{n}/**/*.parquet"} for n in splits]}
        ],
        tags=["audio", "neucodec", "tts"],
    )
    DatasetInfosDict({"default": DatasetInfo(features=features(), splits=split_dict)}).to_dataset_card_data(card)
    random = any(c.get("random_weights") for c in codecs)
    lines = [
        "---",
        card.to_yaml(),
        "---",
        "",
        "# neucodec tokens SFT dataset",
        "",
        "> **WARNING: encoded with RANDOM test weights: these are not real neucodec tokens.**" if random else "",
        "",
        f"One row per encoded segment from {n_shards} shards, joined with its metadata. `neucodec_tokens` are",
        "50 Hz neucodec FSQ codes (0-65535); `token_count == len(neucodec_tokens) == n_samples_16k // 320`.",
        f"Each shard's rows are its own file, `data/{{split}}/{{shard}}.parquet`; `{INDEX}` lists them.",
        "",
        "| split | rows | hours |",
        "|---|---|---|",
    ]
    lines += [f"| {n} | {s['num_examples']} | {s['hours']:.3f} |" for n, s in splits.items()]
    if excluded_by_reason:
        lines += ["", f"Encoded segments left out (listed per shard in the shard reports): {excluded_by_reason}"]
    lines += ["", *stats_lines]
    lines += ["", "Codec provenance (the codecs that made the tokens, with their shards):", "", *codec_lines(codecs)]
    lines += ["", "```json", json.dumps(codecs, indent=2), "```", ""]
    return "\n".join(lines)
