"""What one dataset must never mix, checked by ``summarize`` from the shard reports before it writes anything.

* **Parts made with other settings.** Every part records what shaped its rows (its *fingerprint*: the settings under
  their config names, and the identity of the tokenizer or espeak-ng; ``formats.FormatWriter.fingerprint``). With
  ``rerun-triggers: mtime`` a changed setting re-makes no part already written, so after a change the parts of old
  and new shards would differ (a speaker in train in one, in validation in another; two tokenizers under one index).
  A report whose recorded settings differ from this run's, or whose tokenizer or espeak-ng differs from the one of
  this run, is *stale*: summarize fails naming the settings, the shards, and the command that re-derives them
  (``neucodec-workflow rederive``: their reports are removed, so the next ``snakemake`` derives them again in
  batches, from the token files: no encoding, no GPU).
* **Tokens of different codecs.** A codec is its weights: the weights' sha256 (random weights without a file: the
  seed; a file without a recorded sha256: its codec id and revision). Shards of two known codecs are an error
  naming them; foreign token files (no provenance) are counted as *unknown* and included, and the cards say so.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from neucodec_workflow.dataset import formats
from neucodec_workflow.dataset.codecs import codec_identity, codec_label

log = logging.getLogger(__name__)

NAMED = 10  # shards named in a message (the list file has them all)


class MixedDatasetError(RuntimeError):
    """The reports describe parts that one dataset must not hold together (the message says which and what to do)."""


def _named(shards: Sequence[str]) -> str:
    more = f" and {len(shards) - NAMED} more" if len(shards) > NAMED else ""
    return ", ".join(shards[:NAMED]) + more


def codec_problem(reports: Sequence[Mapping[str, Any]]) -> str | None:
    """Why the reports' tokens must not be one dataset (two known codecs), naming the shards of each; None if they
    may (one known codec, with or without foreign files)."""
    by: dict[str, list[str]] = {}
    ids: dict[str, set[str]] = {}
    for r in reports:
        identity = codec_identity(r.get("provenance"))
        if identity is not None:
            by.setdefault(identity, []).append(str(r["shard"]))
            ids.setdefault(identity, set()).add(str((r.get("provenance") or {}).get("codec_id")))
    if len(by) < 2:
        return None
    lines = [f"the token files were made by {len(by)} different codecs; one dataset must hold one codec's tokens:"]
    for identity, shards in sorted(by.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        lines.append(f"  {codec_label(identity, ids[identity])}: {len(shards)} shard(s): {_named(sorted(shards))}")
    lines.append(
        "  Re-encode the shards of the codec you do not want (delete their neucodec_tokens.parquet and run snakemake "
        "with codec.weights set to the one you do), or leave them out of this dataset (config shards / shards_file)."
    )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------- settings
def _show(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def stale_reports(
    reports: Sequence[Mapping[str, Any]],
    sft: Mapping[str, Any],
    columns: Mapping[str, Any],
    environment: Callable[[str], Mapping[str, Any]] = lambda fmt: {},
) -> dict[str, list[str]]:
    """Each report whose parts were not made the way this run makes them (shard -> what differs, as ``setting: what
    its parts hold -> now``), for the formats of ``sft.formats``. The settings are compared with this run's config;
    the environment (tokenizer identity, espeak-ng) is compared among the reports, and only where they differ with
    ``environment(fmt)`` (which may load the tokenizer)."""
    stale: dict[str, list[str]] = {}
    envs: dict[str, dict[str, list[int]]] = {}  # format -> its environment (JSON) -> reports with it
    for fmt in sft["formats"]:
        now = formats.current_settings(fmt, sft, columns)
        for i, r in enumerate(reports):
            recorded = (r.get("sft", {}).get("fingerprint") or {}).get(fmt)
            if recorded is None:
                why = "its parts record no settings (derived by an earlier version of the workflow)"
                if fmt not in (r.get("sft", {}).get("formats") or {}) and fmt != formats.HF:
                    why = f"it has no {fmt} part"
                stale.setdefault(str(r["shard"]), []).append(f"{fmt}: {why}")
                continue
            settings = recorded.get("settings") or {}
            for key in sorted(set(settings) | set(now)):
                if settings.get(key) != now.get(key):
                    stale.setdefault(str(r["shard"]), []).append(
                        f"{key}: {_show(settings.get(key))} -> {_show(now.get(key))}"
                    )
            envs.setdefault(fmt, {}).setdefault(_show(recorded.get("environment") or {}), []).append(i)
    for fmt, groups in envs.items():
        if len(groups) < 2:
            continue
        current = _show(dict(environment(fmt)))
        for env, members in groups.items():
            if env == current:
                continue
            before, after = json.loads(env), json.loads(current)
            for key in sorted(set(before) | set(after)):
                if before.get(key) != after.get(key):
                    for i in members:
                        stale.setdefault(str(reports[i]["shard"]), []).append(
                            f"{fmt} {key}: {_show(before.get(key))} -> {_show(after.get(key))}"
                        )
    return stale


def settings_problem(stale: Mapping[str, list[str]], n_reports: int, command: str) -> str | None:
    """The message for stale reports (``stale_reports``), with the command that re-derives them; None if none."""
    if not stale:
        return None
    shards_by: dict[str, list[str]] = {}
    for shard, whats in stale.items():
        for what in dict.fromkeys(whats):
            shards_by.setdefault(what, []).append(shard)
    lines = [
        f"{len(stale)} of {n_reports} shards' dataset parts were made otherwise than this run makes them "
        "(with rerun-triggers: mtime a changed setting re-makes no part already written); one dataset must not "
        "mix them:"
    ]
    for what, shards in sorted(shards_by.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        lines.append(f"  {what} (parts -> this run): {len(shards)} shard(s): {_named(sorted(shards))}")
    lines += [
        "  Re-derive them from their token files (no encoding, no GPU): remove their reports, then run snakemake as",
        "  before (same --configfile / --config); it derives them again in batches:",
        f"    {command}",
        "  Or run with the settings they were made with. Until then, the dataset folders hold parts of both: do not",
        "  train from them.",
    ]
    return "\n".join(lines)


def check_reports(
    reports: Sequence[Mapping[str, Any]],
    locations: Sequence[str],
    sft: Mapping[str, Any],
    columns: Mapping[str, Any],
    stale_list: str | None = None,
    environment: Callable[[str], Mapping[str, Any]] | None = None,
) -> None:
    """``MixedDatasetError`` when the reports (at ``locations``: paths or s3:// URLs) describe parts one dataset must
    not hold together: two known codecs, or parts made with other settings (their report locations are written to
    ``stale_list``, one a line, for ``neucodec-workflow rederive --from``)."""
    problems = []
    codec = codec_problem(reports)
    if codec:
        problems.append(codec)
    stale = stale_reports(reports, sft, columns, environment or (lambda fmt: formats.environment(fmt, sft)))
    if stale:
        where = dict(zip((str(r["shard"]) for r in reports), locations, strict=True))
        targets = [where[s] for s in sorted(stale)]
        if stale_list and len(targets) > 3:
            Path(stale_list).parent.mkdir(parents=True, exist_ok=True)
            Path(stale_list).write_text("".join(f"{t}\n" for t in targets))
            command = f"neucodec-workflow rederive --from {stale_list}"
        else:
            command = "neucodec-workflow rederive " + " ".join(targets)
        problems.append(settings_problem(stale, len(reports), command) or "")
    if problems:
        raise MixedDatasetError("summarize: nothing was written:\n" + "\n".join(problems))


# ---------------------------------------------------------------------------------------------------- rederive
def forget_reports(locations: Iterable[str], client: Any = None) -> list[str]:
    """Remove shard reports (local paths or s3:// URLs), so that the next ``snakemake`` derives those shards'
        reports and dataset parts again (in batches, from their token files). Returns those removed (in S3: each one
    named; a DELETE of a missing object is no error)."""
    from neucodec_workflow.storage.s3 import S3Settings, is_s3, split_url

    removed = []
    for location in locations:
        if is_s3(location):
            client = client or S3Settings.from_env().client()
            bucket, key = split_url(location)
            client.delete_object(Bucket=bucket, Key=key)  # no error when there is none
            removed.append(location)
        elif Path(location).exists():
            Path(location).unlink()
            removed.append(location)
    return removed
