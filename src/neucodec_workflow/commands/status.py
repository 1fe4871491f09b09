"""``neucodec-workflow status``: where a run over a corpus stands, without running Snakemake (docs/watching.md).

Run from the repo root, it reads the workflow's config the way Snakemake does (``config/config.yaml``, then each
``--configfile``, then ``--config KEY=VALUE``; validated against ``config/config.schema.yaml``, defaults filled in),
lists the corpus once (the workflow's own shard discovery and, for ``s3://``, its ``Inventory``) and reads the footer
of each token file (the record: provenance and the encode job's report, ``contract.records_of``). A shard is

* **done**: its token file exists and is not older than its ``audio.tar`` / ``metadata.parquet`` (Snakemake's rule);
* **failed**: not done, and its encode job's log ends with the job's failure line, or the newest Snakemake log
  reports an error in its ``encode_shard`` job while its job log is quiet; or its token file exists but its footer
  cannot be read (the dataset's derive job would record the shard as failed);
* **pending**: neither (``running`` among them: its job log was written in the last 10 minutes).

A first look takes what it can from the workflow's ``{output}/shards.parquet`` (summarize's row per shard, from the
derived reports, which carry each token file's encode report): a done shard whose token file still has the size and
modification time its row records needs no footer; the others' footers are read. Footers and rows used are cached in
``.snakemake/neucodec_workflow/status_footers.json`` (key: the token file, checked against its size and modification
time), so a refresh reads only the footers of token files that are new or changed: at 5,000 S3 shards a first look is
the listing's ~15 LIST requests plus one GET of shards.parquet, a refresh the listing alone
(benchmarks/results/status.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from neucodec_workflow.commands.footers import (
    CACHE,
    FOOTER_THREADS,
    RECORD_KINDS,
    SUMMARY,
    FooterCache,
    Footers,
    Listing,
    list_corpus,
    read_footers,
    read_summary,
)
from neucodec_workflow.dataset.codecs import codec_label
from neucodec_workflow.dataset.derive import FOREIGN, WORKFLOW
from neucodec_workflow.dataset.stats import audit_totals
from neucodec_workflow.record import layout
from neucodec_workflow.record.contract import METADATA, TAR, TOKENS
from neucodec_workflow.storage.discovery import ShardListError
from neucodec_workflow.storage.s3 import S3Error, S3Settings, is_s3
from neucodec_workflow.workflow.plan import stale

CONFIG = "config/config.yaml"  # the Snakefile's configfile, relative to the working directory
SCHEMA = "config/config.schema.yaml"  # beside the Snakefile
RUNNING_SECONDS = 600  # a pending shard whose job log was written this recently is running
LOG_TAIL = 64 << 10


class StatusError(RuntimeError):
    pass


# --------------------------------------------------------------------------------------------------------- config
def workflow_dir(snakefile: Path | None) -> Path:
    """Where the workflow's source lives: the Snakefile's directory, else this package's source tree."""
    if snakefile is not None:
        return snakefile.resolve().parent
    return Path(__file__).resolve().parents[2]


def load_config(
    directory: Path, configfiles: Iterable[str] = (), overrides: Iterable[str] = (), snakefile: Path | None = None
) -> dict[str, Any]:
    """The workflow's config as Snakemake builds it (same parsers and merge), validated and with defaults filled in
    as rules/common.smk does."""
    from snakemake.cli import parse_config
    from snakemake.common.configfile import load_configfile
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import update_config, validate

    configfiles = list(configfiles)
    config: dict[str, Any] = {}
    base = directory / CONFIG
    if base.exists():
        update_config(config, load_configfile(str(base)))
    elif not configfiles:
        raise StatusError(f"no {CONFIG} in {directory}: run from the repo root, or give --directory / --configfile")
    for path in configfiles:
        update_config(config, load_configfile(path))
    try:
        update_config(config, parse_config(list(overrides)))
        validate(config, schema=str(workflow_dir(snakefile) / SCHEMA))
    except (WorkflowError, ValueError) as exc:
        raise StatusError(f"invalid config: {exc}") from exc
    return config


def local_dir(config: dict[str, Any]) -> str:
    """Where logs and benchmarks go (rules/common.smk: LOCAL)."""
    return layout.logs_root(config["output"], config["local_dir"], is_s3(config["output"]))


# ----------------------------------------------------------------------------------------------------------- logs
def _tail(path: Path, n: int = LOG_TAIL) -> str:
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - n))
        return f.read().decode("utf-8", "replace")


def snakemake_failures(directory: Path) -> set[str]:
    """Shards whose encode_shard job failed according to the newest Snakemake log of this working directory."""
    logs = sorted((directory / ".snakemake" / "log").glob("*.snakemake.log"), key=lambda p: p.stat().st_mtime)
    if not logs:
        return set()
    return set(layout.SNAKEMAKE_ERROR.findall(logs[-1].read_text(errors="replace")))


@dataclass
class JobState:
    failed: dict[str, str] = field(default_factory=dict)  # shard -> why (the failure line, or Snakemake's log)
    running: dict[str, str] = field(default_factory=dict)  # shard -> its last progress line ('' before the first)


def job_states(directory: Path, config: dict[str, Any], shards: list[str], now: float) -> JobState:
    """Failed and running shards among ``shards`` (not done), from their encode jobs' logs."""
    logs = Path(local_dir(config))
    logs = logs if logs.is_absolute() else directory / logs
    from_snakemake = snakemake_failures(directory)
    state = JobState()
    for s in shards:
        path = logs / layout.encode_log(s)
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            if s in from_snakemake:
                state.failed[s] = "Snakemake's log: error in encode_shard"
            continue
        text = _tail(path)
        failure = layout.FAILED_LINE.findall(text)
        if failure:
            state.failed[s] = failure[-1].strip()
        elif now - mtime <= RUNNING_SECONDS:
            lines = layout.PROGRESS_LINE.findall(text)
            state.running[s] = lines[-1].strip().removeprefix(f"shard {s}: ") if lines else ""
        elif s in from_snakemake:
            state.failed[s] = "Snakemake's log: error in encode_shard"
    return state


# --------------------------------------------------------------------------------------------------------- status
def _hours(seconds: float) -> float:
    return seconds / 3600


def status(
    config: dict[str, Any],
    directory: Path = Path("."),
    *,
    cache: FooterCache | None = None,
    settings: S3Settings | None = None,
    now: float | None = None,
    threads: int = FOOTER_THREADS,
    note: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """One look at the corpus (the listing, footers of new token files, the pending shards' job logs): a JSON-able
    summary. ``cache``: footer summaries kept between calls (default: the one under ``directory/.snakemake``);
    ``note``: told when many footers are to be read (a first look at a large corpus)."""
    t0 = time.perf_counter()
    cache = cache if cache is not None else FooterCache(directory / CACHE)
    listing = list_corpus(config, directory, settings)
    now = time.time() if now is None else now

    with_tokens = [s for s in listing.shards if listing.files[s][TOKENS] is not None]
    # a token file older than its tar or metadata is stale: Snakemake would encode the shard again
    stale_shards = [s for s in with_tokens if stale([listing.mtime(s, n) for n in (TAR, METADATA, TOKENS)], 2)]
    done = [s for s in with_tokens if s not in set(stale_shards)]
    footers = read_footers(
        listing, done, cache, threads, note, summary=lambda: read_summary(config, directory, listing, cache, settings)
    )
    cache.save({f"{listing.corpus}/{s}/{TOKENS}" for s in done if s in footers.summaries})
    done = [s for s in done if s not in footers.unreadable]  # no dataset can be derived from it: failed, not done
    done_set = set(done)
    not_done = [s for s in listing.shards if s not in done_set]
    jobs = job_states(directory, config, not_done, now)
    jobs.failed.update({s: f"token file unreadable: {why}" for s, why in footers.unreadable.items()})
    pending = [s for s in not_done if s not in jobs.failed]

    summaries = footers.summaries
    records = Counter(summaries[s]["record"] for s in done if s in summaries)
    workflow = [s for s in done if s in summaries and summaries[s]["record"] == WORKFLOW]
    audio_done = sum(summaries[s]["audio_seconds"] for s in summaries)
    estimated = sum(summaries[s]["audio_seconds"] for s in summaries if summaries[s]["estimated"])

    seconds_left = _seconds_left(listing, summaries, workflow, not_done)
    eta, basis, throughput = _pace(listing, summaries, workflow, seconds_left, now)
    rejects: Counter[str] = Counter()
    for s in workflow:
        rejects.update(summaries[s]["rejects_by_reason"])
    return {
        "corpus": listing.corpus,
        "generated_at": datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds"),
        "shards": len(listing.shards),
        "done": len(done),
        "pending": len(pending),
        "failed": len(jobs.failed),
        "running": len(jobs.running),
        "stale": len(stale_shards),
        "foreign": records.get(FOREIGN, 0),
        "records": {k: records.get(k, 0) for k in RECORD_KINDS},
        "unreadable": dict(sorted(footers.unreadable.items())),
        "hours_done": _hours(audio_done),
        "hours_done_estimated": _hours(estimated),
        "hours_left": _hours(seconds_left) if seconds_left is not None else None,
        "eta_hours": eta,
        "eta_basis": basis,
        "throughput": throughput,
        "segments": {
            "encoded": sum(summaries[s]["encoded"] for s in workflow),
            "rejected": sum(rejects.values()),
        },
        "rejects_by_reason": dict(sorted(rejects.items())),
        "audit": audit_totals([{"shard": s, "audit": summaries[s]["audit"]} for s in workflow]),
        "random_weights": any(summaries[s]["random_weights"] for s in summaries),
        "codecs": _codecs(summaries, done),
        "codec_unknown": sum(1 for s in done if s in summaries and summaries[s].get("codec") is None),
        "failed_shards": dict(sorted(jobs.failed.items())),
        "running_shards": dict(sorted(jobs.running.items())),
        "cost": _cost(listing, footers, t0),
    }


def _cost(listing: Listing, footers: Footers, t0: float) -> dict[str, Any]:
    """What the look cost: requests, footers read, cached or taken from the summary, seconds."""
    return {
        "list_requests": listing.requests,
        "footer_requests": footers.requests,
        "footers_read": footers.read,
        "footers_cached": footers.cached,
        "footers_from_summary": footers.from_summary,
        "summary_requests": footers.summary_requests,
        "summary": footers.summary,
        "seconds": time.perf_counter() - t0,
    }


def _seconds_left(
    listing: Listing, summaries: dict[str, dict[str, Any]], workflow: list[str], not_done: list[str]
) -> float | None:
    """Audio seconds left: the shards not done, from their tar sizes at the done shards' audio seconds per tar byte."""
    measured = [s for s in workflow if listing.size(s, TAR) > 0]
    tar_bytes = sum(listing.size(s, TAR) for s in measured)
    per_byte = sum(summaries[s]["audio_seconds"] for s in measured) / tar_bytes if tar_bytes else None
    left_bytes = sum(listing.size(s, TAR) for s in not_done)
    return left_bytes * per_byte if per_byte is not None else None


def _pace(
    listing: Listing,
    summaries: dict[str, dict[str, Any]],
    workflow: list[str],
    seconds_left: float | None,
    now: float,
) -> tuple[float | None, str | None, dict[str, Any]]:
    """ETA (hours), its basis, and the throughput: a workflow shard's audio spread over [end - wall, end], end being
    its token file's modification time."""
    spans: list[tuple[float, float, float, float]] = []  # start, end, audio seconds, wall seconds
    for s in workflow:
        end, wall = listing.mtime(s, TOKENS) or now, summaries[s]["wall_seconds"]
        spans.append((end - wall, end, summaries[s]["audio_seconds"], wall))
    window = now - 3600
    last_hour = sum(
        audio * max(0.0, min(end, now) - max(start, window)) / wall if wall > 0 else (audio if end >= window else 0.0)
        for start, end, audio, wall in spans
    )
    first = min((a for a, _, _, _ in spans), default=None)
    last = max((b for _, b, _, _ in spans), default=None)
    span = (last - first) if first is not None and last is not None else 0.0
    rate_overall = sum(a for _, _, a, _ in spans) / span if span > 0 else None  # audio seconds per second
    rate_last_hour = last_hour / 3600
    eta: float | None = None
    basis: str | None = None
    if seconds_left == 0:
        eta, basis = 0.0, "nothing left"
    elif seconds_left is not None and rate_last_hour > 0:
        eta, basis = _hours(seconds_left / rate_last_hour), "rate of the last hour"
    elif seconds_left is not None and rate_overall:
        eta, basis = _hours(seconds_left / rate_overall), "overall rate (no shard finished in the last hour)"
    throughput = {
        "last_hour_audio_hours_per_hour": rate_last_hour,
        "overall_audio_hours_per_hour": rate_overall,
        "shards_finished_last_hour": sum(1 for _, end, _, _ in spans if end >= window),
        "per_device": _per(summaries, workflow, "device"),
        # a report records no host yet: every shard is 'unknown' until the encode job writes one (``host``)
        "per_node": _per(summaries, workflow, "host"),
    }
    return eta, basis, throughput


def _per(summaries: dict[str, dict[str, Any]], workflow: list[str], field: str) -> dict[str, dict[str, float]]:
    """Shards, audio and job hours, x real time, per value of a report field (device, host)."""
    groups: dict[str, dict[str, float]] = {}
    for s in workflow:
        g = groups.setdefault(
            summaries[s].get(field) or "unknown", {"shards": 0, "audio_hours": 0.0, "wall_hours": 0.0}
        )
        g["shards"] += 1
        g["audio_hours"] += _hours(summaries[s]["audio_seconds"])
        g["wall_hours"] += _hours(summaries[s]["wall_seconds"])
    for g in groups.values():
        g["x_real_time"] = g["audio_hours"] / g["wall_hours"] if g["wall_hours"] else 0.0
    return dict(sorted(groups.items()))


def _codecs(summaries: dict[str, dict[str, Any]], done: list[str]) -> list[dict[str, Any]]:
    """The done shards' codecs with their shard counts (a mix: summarize refuses it)."""
    codecs: dict[str, dict[str, Any]] = {}
    for s in done:
        if s in summaries and summaries[s].get("codec") is not None:
            c = codecs.setdefault(summaries[s]["codec"], {"shards": 0, "codec_ids": set()})
            c["shards"] += 1
            c["codec_ids"].add(summaries[s].get("codec_id"))
    return [
        {"codec": k, "label": codec_label(k, c["codec_ids"]), "shards": c["shards"]}
        for k, c in sorted(codecs.items(), key=lambda kc: (-kc[1]["shards"], kc[0]))
    ]


# ------------------------------------------------------------------------------------------------------- printing
def _num(x: float | None, fmt: str = ".1f", unknown: str = "?") -> str:
    return unknown if x is None else format(x, fmt)


def _h(hours: float | None) -> str:
    """Hours for people: ``1234.5 h``, ``2.35 h``, ``12.4 min``, ``?``."""
    if hours is None:
        return "?"
    if hours >= 10:
        return f"{hours:.1f} h"
    return f"{hours:.2f} h" if hours >= 0.1 else f"{hours * 60:.1f} min"


def render(st: dict[str, Any], limit: int = 10) -> str:
    """The human view of ``status()``."""
    t = st["throughput"]
    cost = st["cost"]
    lines = [
        f"corpus   {st['corpus']} at {st['generated_at']}: {st['shards']} shards",
        f"shards   {st['done']} done ({st['foreign']} foreign, {st['records']['workflow_without_report']} without "
        f"report), {st['pending']} pending ({st['running']} running, {st['stale']} older than their tar), "
        f"{st['failed']} failed",
        f"audio    {_h(st['hours_done'])} done"
        + (f" ({_h(st['hours_done_estimated'])} of it estimated: foreign)" if st["hours_done_estimated"] else "")
        + f", {_h(st['hours_left'])} left (from the tar sizes)",
        f"rate     last hour {t['last_hour_audio_hours_per_hour']:.1f}x real time ({t['shards_finished_last_hour']} "
        f"shards finished), overall {_num(t['overall_audio_hours_per_hour'])}x (first start to last finish)",
        "ETA      nothing left"
        if st["eta_basis"] == "nothing left"
        else f"ETA      {_h(st['eta_hours'])}" + (f" at the {st['eta_basis']}" if st["eta_basis"] else ""),
    ]
    nodes = t["per_node"] if set(t["per_node"]) - {"unknown"} else {}
    for title, groups in (("device", t["per_device"]), ("node", nodes)):
        for name, g in list(groups.items())[:limit]:
            lines.append(
                f"{title:8} {name}: {g['shards']} shards, {_h(g['audio_hours'])} audio in {_h(g['wall_hours'])} of "
                f"jobs, {g['x_real_time']:.1f}x real time"
            )
    rejects = ", ".join(f"{k} {v}" for k, v in st["rejects_by_reason"].items()) or "none"
    lines.append(f"segments {st['segments']['encoded']} encoded, {st['segments']['rejected']} rejected: {rejects}")
    a = st["audit"]
    below = a["shards_below_1"]
    lines.append(
        f"audit    token agreement {_num(a['token_agreement'], '.5f', 'n/a')} over {a['segments']} segments of "
        f"{a['shards']} shards"
        + (f"; below 1: {', '.join(below[:limit])}{' ...' if len(below) > limit else ''}" if below else "")
    )
    if st["random_weights"]:
        lines.append("weights  RANDOM (codec.weights: random): these tokens are not neucodec tokens")
    codecs = [f"{c['label']} {c['shards']} shards" for c in st["codecs"]]
    if st["codec_unknown"]:
        codecs.append(f"unknown (foreign, no provenance) {st['codec_unknown']} shards")
    lines.append(
        f"codecs   {'; '.join(codecs) or 'none yet'}"
        + ("  MIXED: summarize refuses to make one dataset of them" if len(st["codecs"]) > 1 else "")
    )
    for title, items in (("failed", st["failed_shards"]), ("running", st["running_shards"])):
        for i, (shard, what) in enumerate(items.items()):
            if i == limit:
                lines.append(f"{title:8} ... and {len(items) - limit} more (--json lists them all)")
                break
            lines.append(f"{title:8} {shard}" + (f": {what}" if what else ""))
    for shard, error in list(st["unreadable"].items())[:limit]:
        lines.append(f"unreadable {shard}: {error}")
    lines.append(
        f"cost     {cost['seconds']:.1f} s; S3 requests: {cost['list_requests']} LIST, {cost['summary_requests']} "
        f"{SUMMARY} GET, {cost['footer_requests']} footer GETs; footers read {cost['footers_read']}, from {SUMMARY} "
        f"{cost['footers_from_summary']} ({cost['summary']}), cached {cost['footers_cached']}"
    )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------------ CLI
def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="neucodec-workflow", description="neucodec tokens workflow: tools.")
    sub = ap.add_subparsers(dest="command", required=True)
    st = sub.add_parser(
        "status",
        help="where a run stands: shards done / pending / failed, hours, throughput, ETA, rejects, audit",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    st.add_argument("-d", "--directory", type=Path, default=Path("."), help="the workflow's working directory (.)")
    st.add_argument("-s", "--snakefile", type=Path, help="the Snakefile (default: ./Snakefile, for the config schema)")
    st.add_argument("--configfile", "--configfiles", nargs="+", action="extend", default=[], help="as for snakemake")
    st.add_argument("-C", "--config", nargs="+", action="extend", default=[], metavar="KEY=VALUE", help="as snakemake")
    st.add_argument("--json", action="store_true", help="print one JSON object")
    st.add_argument("--watch", nargs="?", type=float, const=60.0, metavar="SECONDS", help="refresh every 60 s (or N)")
    st.add_argument("--no-cache", action="store_true", help="read every footer, keep no cache")
    rd = sub.add_parser(
        "rederive",
        help="remove shard reports, so that the next snakemake derives those shards' reports and dataset parts again "
        "(from their token files: no encoding)",
        description="Remove the given shard reports (local paths or s3:// URLs; S3 settings from the environment, "
        "as for status). The next `snakemake` (same arguments) derives those shards again, in batches. summarize "
        "prints this command, with the reports of the parts made otherwise than the run makes them.",
    )
    rd.add_argument("reports", nargs="*", help="report paths or s3:// URLs ({output}/shards/{shard}.json)")
    rd.add_argument("--from", dest="from_file", type=Path, help="a file listing them, one a line")
    return ap


def rederive(opts: argparse.Namespace) -> int:
    from neucodec_workflow.dataset.consistency import forget_reports

    reports = list(opts.reports)
    if opts.from_file is not None:
        reports += [line.strip() for line in opts.from_file.read_text().splitlines() if line.strip()]
    if not reports:
        print("neucodec-workflow rederive: no reports given", file=sys.stderr)
        return 2
    removed = forget_reports(reports)
    print(
        f"removed {len(removed)} of {len(reports)} shard reports: run snakemake again (same arguments) to derive "
        "those shards' reports and dataset parts again (no encoding)"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    opts = parser().parse_args(argv)
    if opts.command == "rederive":
        try:
            return rederive(opts)
        except (OSError, S3Error) as exc:
            print(f"neucodec-workflow rederive: {exc}", file=sys.stderr)
            return 2
    directory: Path = opts.directory
    snakefile = opts.snakefile or (directory / "Snakefile" if (directory / "Snakefile").exists() else None)
    try:
        config = load_config(directory, opts.configfile, opts.config, snakefile)
        cache = FooterCache(None if opts.no_cache else directory / CACHE)
        while True:
            st = status(config, directory, cache=cache, note=lambda m: print(m, file=sys.stderr, flush=True))
            if opts.watch and sys.stdout.isatty() and not opts.json:
                sys.stdout.write("\033[H\033[2J")  # clear the terminal between refreshes
            print(json.dumps(st, sort_keys=True) if opts.json else render(st))
            sys.stdout.flush()
            if not opts.watch:
                return 0
            time.sleep(max(1.0, opts.watch))
    except KeyboardInterrupt:
        return 0
    except (StatusError, ShardListError, S3Error) as exc:
        print(f"neucodec-workflow status: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main(["status", *sys.argv[1:]]))
