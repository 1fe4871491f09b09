"""The training-data formats (``sft.formats``) and where each one's files live under ``{output}``.

Every format is built the same way: each shard's rows (``sft.shard_rows``, split by speaker) become that shard's part
of each split, written by the derive job; the summarize step ties the parts together with small files only.

=================  ==========================================  ================================================
format             a shard's part of a split                   written by summarize
=================  ==========================================  ================================================
hf                 sft_dataset/data/{split}/{shard}.parquet    sft_dataset/README.md (card), index.json
multilingual_tts   multilingual_tts/{split}/{shard}.mds        multilingual_tts/{split}/index.json, README.md
neutts             neutts/data/{split}/{shard}.parquet         neutts/README.md (card)
=================  ==========================================  ================================================
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

log = logging.getLogger(__name__)

HF, MULTILINGUAL_TTS, NEUTTS = "hf", "multilingual_tts", "neutts"
FORMATS = (HF, MULTILINGUAL_TTS, NEUTTS)
ROOTS = {HF: "sft_dataset", MULTILINGUAL_TTS: "multilingual_tts", NEUTTS: "neutts"}
SCHEMA = Path(__file__).resolve().parents[3] / "config" / "config.schema.yaml"  # in the source tree


def part_path(fmt: str, split: str, shard: str) -> str:
    """A shard's part of a split, relative to the format's root (nested shard names stay nested)."""
    if fmt == MULTILINGUAL_TTS:
        return f"{split}/{shard}.mds"
    return f"data/{split}/{shard}.parquet"


def summary_files(fmt: str, splits: list[str]) -> dict[str, str]:
    """What summarize writes for a format, relative to its root: name -> path."""
    if fmt == HF:
        return {"card": "README.md", "index": "index.json"}
    if fmt == MULTILINGUAL_TTS:
        return {"card": "README.md", **{f"index_{split}": f"{split}/index.json" for split in splits}}
    return {"card": "README.md"}


# What shaped a part (its fingerprint): the settings that change its rows, under the names a user sets them by, and
# the identity of what else makes them (the tokenizer's vocabulary, espeak-ng). Versions of the workflow's own rules:
# raise one when a change of the code changes the rows it makes (its parts are then re-derived, never mixed).
ROWS_VERSION = 1  # sft.shard_rows: which token rows become dataset rows, and how
FORMAT_VERSIONS = {HF: 1, MULTILINGUAL_TTS: 1, NEUTTS: 1}  # each format's own rows
SETTINGS_KEY = "neucodec_workflow.sft"  # a part's key-value metadata (parquet): its fingerprint


def row_settings(validation_fraction: float, columns: Mapping[str, Any]) -> dict[str, Any]:
    """The settings that shape every format's rows: which metadata columns, which split."""
    out = {
        "workflow.rows_version": ROWS_VERSION,
        "sft.validation_fraction": float(validation_fraction),
        **{f"columns.{k}": columns[k] for k in sorted(columns)},
    }
    return dict(json.loads(json.dumps(out, sort_keys=True)))  # as a report stores them (tuples as lists, ...)


def format_settings(fmt: str, sft: Mapping[str, Any]) -> dict[str, Any]:
    """The settings of one format that shape its rows (``sft`` config names; ``workflow.*``: the code's own)."""
    from dataclasses import asdict

    out: dict[str, Any] = {f"workflow.{fmt}_version": FORMAT_VERSIONS[fmt]}
    if fmt == MULTILINGUAL_TTS:
        out[f"sft.{fmt}.tokenizer"] = str(sft[fmt]["tokenizer"])
        configured = set(sft[fmt])
        for k, v in asdict(mtts_settings(sft)).items():
            out[f"sft.{fmt}.{k}" if k in configured else f"workflow.{fmt}.{k}"] = v
    elif fmt == NEUTTS:
        out.update({f"sft.{fmt}.{k}": v for k, v in asdict(neutts_settings(sft)).items()})
    elif fmt != HF:
        raise ValueError(f"unknown format {fmt!r} (known: {FORMATS})")
    return dict(json.loads(json.dumps(out, sort_keys=True)))


def current_settings(fmt: str, sft: Mapping[str, Any], columns: Mapping[str, Any]) -> dict[str, Any]:
    """What a part of ``fmt`` derived with this config records under ``settings``."""
    return {**row_settings(float(sft["validation_fraction"]), columns), **format_settings(fmt, sft)}


def fingerprint(settings: Mapping[str, Any], environment: Mapping[str, Any]) -> dict[str, Any]:
    """A part's fingerprint: the settings and environment that shaped it, and their sha256."""
    body = {"settings": dict(settings), "environment": dict(environment)}
    return {**body, "sha256": hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()}


def environment(fmt: str, sft: Mapping[str, Any]) -> dict[str, Any]:
    """What shapes a format's rows besides the settings, here and now: the tokenizer's identity (a hash of its
    vocabulary, merges and added tokens, not its name) for ``multilingual_tts``; espeak-ng's and phonemizer's
    versions for ``neutts``. Loads the tokenizer (once per process)."""
    if fmt == MULTILINGUAL_TTS:
        from neucodec_workflow.dataset.mtts import load_tokenizer

        return {"tokenizer_sha256": load_tokenizer(str(sft[fmt]["tokenizer"])).identity}
    if fmt == NEUTTS:
        from neucodec_workflow.dataset.neutts import provenance

        return provenance()
    return {}


class FormatWriter:
    """Writes one shard's part of one split in the formats other than ``hf`` (which derive.py writes itself), from
    the ``sft`` config section. The tokenizer and the espeak backends load once per job, on first use."""

    def __init__(self, sft: Mapping[str, Any]) -> None:
        self.sft = sft
        self._environment: dict[str, dict[str, Any]] = {}

    def fingerprint(self, fmt: str, rows: Mapping[str, Any]) -> dict[str, Any]:
        """What shapes a part of ``fmt``: ``rows`` (``row_settings``), the format's settings and its environment."""
        if fmt not in self._environment:
            self._environment[fmt] = environment(fmt, self.sft)
        return fingerprint({**rows, **format_settings(fmt, self.sft)}, self._environment[fmt])

    def write(
        self,
        fmt: str,
        shard: str,
        split: str,
        rows: pd.DataFrame,
        path: str | Path,
        fingerprint: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The part's summary for the shard report (rows, drops by reason, and what summarize needs).
        ``fingerprint``: what shaped it, also in the file where the format has key-value metadata (parquet)."""
        if fmt == MULTILINGUAL_TTS:
            from neucodec_workflow.dataset.mtts import load_tokenizer, mtts_part

            settings = mtts_settings(self.sft)
            tokenizer = load_tokenizer(str(self.sft[MULTILINGUAL_TTS]["tokenizer"]))
            return mtts_part(
                shard, rows, tokenizer, settings, Path(path), part_path(fmt, split, shard).split("/", 1)[1]
            )
        if fmt == NEUTTS:
            from neucodec_workflow.dataset.neutts import neutts_part

            metadata = {SETTINGS_KEY: json.dumps(fingerprint, sort_keys=True)} if fingerprint else None
            return neutts_part(
                shard, rows, neutts_settings(self.sft), Path(path), int(self.sft["rows_per_row_group"]), metadata
            )
        raise ValueError(f"unknown format {fmt!r} (known: {FORMATS})")


def describe(summary: Mapping[str, Any]) -> str:
    """One line for the job's log: rows (and blocks) written, rows left out by reason."""
    blocks = f", {summary['blocks']} blocks" if "blocks" in summary else ""
    return f"rows {summary['rows']}{blocks}, left out {dict(summary['dropped_by_reason']) or 'none'}"


def mtts_settings(sft: Mapping[str, Any]):
    from neucodec_workflow.dataset.mtts_rows import MttsSettings

    return MttsSettings.from_config(sft[MULTILINGUAL_TTS])


def neutts_settings(sft: Mapping[str, Any]):
    from neucodec_workflow.dataset.neutts import NeuttsSettings

    return NeuttsSettings.from_config(sft[NEUTTS])


def schema_defaults(fmt: str) -> dict[str, Any]:
    """The ``sft.<fmt>`` section as the workflow runs it when the config sets none of it: the defaults of
    ``config/config.schema.yaml``, which owns them (Snakemake's ``validate`` fills them in). For code that builds a
    format's settings without the workflow's config (tests, benchmarks); read from the source tree."""
    import yaml  # type: ignore[import-untyped]

    schema = yaml.safe_load(SCHEMA.read_text())
    section = schema["properties"]["sft"]["properties"][fmt]["properties"]
    return {key: spec["default"] for key, spec in section.items()}


def write_summary_files(
    fmt: str,
    reports: list[dict[str, Any]],
    stats: Mapping[str, Any],
    sft: Mapping[str, Any],
    paths: Mapping[str, str],
) -> None:
    """What ties a format's parts together, from the shard reports alone (``sft``: the config section; ``paths``:
    name -> where, as in ``summary_files``)."""
    from neucodec_workflow.dataset.stats import codecs_of, failed_section
    from neucodec_workflow.record.contract import write_json, write_text

    splits = [name.removeprefix("index_") for name in paths if name.startswith("index_")]
    # what shaped the parts: the same for every report (summarize checked it first: consistency.check_reports)
    shaped = next((r["sft"].get("fingerprint", {}).get(fmt) for r in reports), None)

    if fmt == HF:
        from neucodec_workflow.dataset.stats import dataset_card, dataset_index

        write_json(paths["index"], dataset_index(reports))
        card = dataset_card(reports, stats)  # type: ignore[arg-type]
        if shaped:
            card += (
                "\nWhat shaped every part (each shard report's `sft.fingerprint`, each part's parquet key-value "
                f"metadata `{SETTINGS_KEY}`):\n\n```json\n{json.dumps(shaped, indent=2, sort_keys=True)}\n```\n"
            )
    elif fmt == MULTILINGUAL_TTS:
        from neucodec_workflow.dataset.mtts_card import card_text as mtts_card
        from neucodec_workflow.dataset.mtts_mds import merge_index

        for split in splits:
            entries = [r["sft"]["formats"][fmt][split]["mds"] for r in reports]
            write_json(paths[f"index_{split}"], merge_index(entries))
        totals = stats["sft_formats"].get(fmt, {})
        card = mtts_card(totals, len(reports), dict(sft[fmt]), codecs_of(reports), shaped)
    elif fmt == NEUTTS:
        from neucodec_workflow.dataset.neutts import card_text

        totals = stats["sft_formats"].get(fmt, {})
        dropped: dict[str, int] = {}
        for t in totals.values():
            for reason, n in t.get("dropped_by_reason", {}).items():
                dropped[reason] = dropped.get(reason, 0) + n
        card = card_text(totals, len(reports), dropped, codecs_of(reports))
    else:
        raise ValueError(f"unknown format {fmt!r} (known: {FORMATS})")
    write_text(paths["card"], card + failed_section(stats))
