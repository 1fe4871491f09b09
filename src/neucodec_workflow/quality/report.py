"""The HTML report's figures (``snakemake --report report.html``, rules/report.smk), from the summary alone:
``stats.json`` (corpus totals) and ``shards.parquet`` (one row per shard). Never the tokens or the parts, so making
them is one cheap job at any corpus size.

matplotlib (Agg, SVG): it is what the dataset's users already have, it needs no browser or JavaScript to render,
and Snakemake's report embeds SVG as it is. The interactive libraries (Altair, Plotly) would add a JavaScript
runtime to a report that Snakemake already builds as a single page, for plots that need no interaction.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from neucodec_workflow.record.contract import publishing, write_text  # noqa: E402

RANDOM_NOTE = "random weights: these tokens are for tests and demos only"
# What each figure shows: the names of rules/report.smk's outputs.
FIGURES = (
    "hours_per_language",
    "hours_per_dataset",
    "durations",
    "throughput",
    "rejects",
    "audit",
)


def _figure(title: str, stats: Mapping[str, Any], height: float = 4.0) -> tuple[Figure, Any]:
    fig, ax = plt.subplots(figsize=(8, height), layout="constrained")
    ax.set_title(f"{title}\n({RANDOM_NOTE})" if stats["random_weights"] else title, color="black")
    if stats["random_weights"]:
        fig.patch.set_edgecolor("#c00000")
        fig.patch.set_linewidth(6)
    return fig, ax


def _empty(ax: Any, what: str) -> None:
    ax.text(0.5, 0.5, what, ha="center", va="center", transform=ax.transAxes, fontsize=12)
    ax.set_xticks([])
    ax.set_yticks([])


def _save(fig: Figure, path: str | Path) -> None:
    with publishing(path) as tmp:
        fig.savefig(tmp, format="svg")
    plt.close(fig)


def _bars(ax: Any, values: Mapping[str, float], xlabel: str, limit: int = 40) -> None:
    """Horizontal bars, largest first; past ``limit`` the rest is one bar ("N others")."""
    items = sorted(values.items(), key=lambda kv: (-kv[1], kv[0]))
    if len(items) > limit:
        rest = items[limit - 1 :]
        items = [*items[: limit - 1], (f"{len(rest)} others", sum(v for _, v in rest))]
    labels = [k for k, _ in items][::-1]
    ax.barh(labels, [v for _, v in items][::-1], color="#3b75af")
    ax.set_xlabel(xlabel)
    for y, (_, v) in enumerate(items[::-1]):
        ax.annotate(f" {v:,.3g}", (v, y), va="center", fontsize=8)


def hours_per_group(stats: Mapping[str, Any], key: str, title: str, path: str | Path) -> None:
    groups = stats[key]
    fig, ax = _figure(title, stats, height=max(3.0, 0.3 * min(len(groups), 40) + 1.5))
    if groups:
        _bars(ax, {k: g["dataset_hours"] for k, g in groups.items()}, "hours of audio in the dataset")
    else:
        _empty(ax, "no dataset rows yet")
    _save(fig, path)


def durations(stats: Mapping[str, Any], path: str | Path) -> None:
    hist = stats["duration_histogram"]
    fig, ax = _figure("Segment durations (dataset rows)", stats)
    counts = hist["counts"]
    if counts:
        width = hist["bin_seconds"]
        ax.bar([i * width for i in range(len(counts))], counts, width=width, align="edge", color="#3b75af")
        ax.set_xlabel("seconds (from the token count)")
        ax.set_ylabel("segments")
    else:
        _empty(ax, "no dataset rows yet")
    if hist["shards_without"]:
        ax.annotate(
            f"{hist['shards_without']} shards derived before histograms: not counted",
            (0.99, 0.97),
            xycoords="axes fraction",
            ha="right",
            va="top",
            fontsize=8,
        )
    _save(fig, path)


def throughput(stats: Mapping[str, Any], shards: pd.DataFrame, path: str | Path) -> None:
    """Each shard encoded by this workflow: x real time of its encode job, at the time it finished, by device."""
    fig, ax = _figure("Encode throughput per shard", stats)
    timed = shards[shards["finished_at"].notna() & (shards["wall_seconds"] > 0)]
    if len(timed):
        for device, group in timed.groupby(timed["device"].fillna("unknown"), sort=True):
            ax.scatter(
                group["finished_at"], group["audio_seconds"] / group["wall_seconds"], s=12, label=str(device), alpha=0.8
            )
        ax.set_ylabel("x real time (audio s / job s)")
        ax.set_xlabel("job finished (UTC)")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8, loc="best")
        fig.autofmt_xdate()
    else:
        _empty(ax, "no shard with timing yet (foreign token files carry none)")
    untimed = len(shards) - len(timed)
    if untimed:
        ax.annotate(
            f"{untimed} of {len(shards)} shards without timing (foreign or older records)",
            (0.01, 0.01),
            xycoords="axes fraction",
            fontsize=8,
        )
    _save(fig, path)


def rejects(stats: Mapping[str, Any], path: str | Path) -> None:
    reasons = stats["rejects_by_reason"]
    fig, ax = _figure(
        f"Rejected segments by reason: {stats['rejected']:,} of {stats['segments']:,}",
        stats,
        height=max(2.5, 0.35 * len(reasons) + 1.5),
    )
    if reasons:
        _bars(ax, reasons, "segments")
    else:
        _empty(ax, "no segment rejected")
    _save(fig, path)


def audit(stats: Mapping[str, Any], shards: pd.DataFrame, path: str | Path) -> None:
    """Token agreement of each audited shard with the reference encoder, in shard order."""
    audited = shards[shards["audit_token_agreement"].notna()].reset_index(drop=True)
    total = stats["audit"]["token_agreement"]
    title = "Audit: token agreement with the reference encoder per shard"
    fig, ax = _figure(title if total is None else f"{title}\n(overall {total:.5f})", stats)
    if len(audited):
        ax.scatter(audited.index, audited["audit_token_agreement"], s=12, color="#3b75af")
        ax.set_xlabel("audited shard (in shard order)")
        ax.set_ylabel("token agreement")
        low = float(audited["audit_token_agreement"].min())
        ax.set_ylim(min(low, 0.999) - 0.0005, 1.0005)
    else:
        _empty(ax, "no shard audited (encode.audit_segments: 0, or foreign token files)")
    _save(fig, path)


def _table(rows: list[tuple[str, str]]) -> str:
    return "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)


def corpus_page(stats: Mapping[str, Any], path: str | Path) -> None:
    """The report's first result: totals and the provenance the token files record, with a banner for random
    weights (read from the records, whatever the config of the run that makes the report says)."""
    banner = (
        '<div style="background:#c00000;color:white;padding:12px;font-size:20px;font-weight:bold">'
        f"RANDOM WEIGHTS: {sum(p['shards'] for p in stats['provenance'] if p['random_weights'])} shards were encoded "
        "with seeded random codec weights. Their tokens are for tests and demos only; do not train on them.</div>"
        if stats["random_weights"]
        else ""
    )
    audit_ = stats["audit"]
    totals = _table(
        [
            ("shards", f"{stats['shards']:,} ({', '.join(f'{n:,} {k}' for k, n in stats['records'].items())})"),
            ("audio", f"{stats['audio_hours']:,.2f} h, {stats['tokens']:,} tokens"),
            ("segments", f"{stats['encoded']:,} encoded, {stats['rejected']:,} rejected of {stats['segments']:,}"),
            (
                "encode speed",
                f"{stats['audio_seconds_per_wall_second']:,.1f}x real time over "
                f"{stats['encode_wall_seconds'] / 3600:,.2f} job hours (shards encoded by this workflow)",
            ),
            (
                "audit",
                "none"
                if audit_["token_agreement"] is None
                else f"token agreement {audit_['token_agreement']:.5f} over {audit_['segments']:,} segments of "
                f"{audit_['shards']:,} shards; {len(audit_['shards_below_1'])} shards below 1",
            ),
            ("dataset rows", ", ".join(f"{k}: {n:,}" for k, n in stats["sft_rows_per_split"].items()) or "none"),
        ]
    )
    provenance = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(p[k]))}</td>" for k in p) + "</tr>" for p in stats["provenance"]
    )
    head = "".join(f"<th>{k}</th>" for k in ("record", "codec", "revision", "random weights", "mode", "shards"))
    # A fragment, not a document: it is also embedded in the report's first page (report/workflow.rst).
    page = f"""<div class="neucodec-corpus">
<style>.neucodec-corpus{{font-family:sans-serif}} .neucodec-corpus table{{border-collapse:collapse;margin:8px 0}}
.neucodec-corpus th,.neucodec-corpus td{{border:1px solid #bbb;padding:3px 8px;text-align:left}}</style>
{banner}
<h3>Corpus</h3><table>{totals}</table>
<h3>Provenance recorded in the token files</h3>
<table><tr>{head}</tr>{provenance}</table>
</div>
"""
    write_text(path, page)


def make_report(stats: Mapping[str, Any], shards: pd.DataFrame, outputs: Mapping[str, str | Path]) -> None:
    """Every figure of rules/report.smk (``outputs``: ``corpus`` and each name of ``FIGURES``)."""
    corpus_page(stats, outputs["corpus"])
    hours_per_group(stats, "per_language", "Hours per language", outputs["hours_per_language"])
    hours_per_group(stats, "per_dataset", "Hours per dataset", outputs["hours_per_dataset"])
    durations(stats, outputs["durations"])
    throughput(stats, shards, outputs["throughput"])
    rejects(stats, outputs["rejects"])
    audit(stats, shards, outputs["audit"])
