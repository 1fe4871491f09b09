"""Which shards' derived outputs (report, dataset parts) are made in batches: the shards whose token file exists and
whose derived outputs are missing or older than it (or than the metadata). Adopting a corpus of 5,000 encoded shards
is then ~50 jobs, not 5,000: Snakemake's scheduler costs time per ready job per round (5,000 one-shard jobs: 384 s of
scheduling alone, 1,000: 19 s; docs/record.md) and each job is a Python start-up. A batch's size does not bound its
local disk: with an S3 output its parts are uploaded one at a time by the job (storage/uploads.py). Shards encoded
in this run get one derive job each, right after their encode job.

Under ``--keep-going``, shards whose last encode job failed (its failure note, ``failure_note``) are left out of the
final steps, which go on for the rest and list them (``failed_encodes``)."""

from __future__ import annotations

import contextlib
import datetime
import functools
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from neucodec_workflow.record import layout

BATCH_SHARDS = 100


def stale(mtimes: Sequence[float | None], inputs: int) -> bool:
    """``mtimes``: the inputs' (first ``inputs``) then the outputs' modification times, None when missing. True when
    every input exists and an output is missing or older than an input: Snakemake's own rule for rerunning a job."""
    ins, outs = mtimes[:inputs], mtimes[inputs:]
    if any(t is None for t in ins):
        return False
    if any(t is None for t in outs):
        return True
    return min(t for t in outs if t is not None) < max(t for t in ins if t is not None)


def derive_batches(
    shards: Sequence[str],
    mtime: Callable[[str], float | None],
    inputs: Callable[[str], list[str]],
    outputs: Callable[[str], list[str]],
    size: int = BATCH_SHARDS,
) -> list[list[str]]:
    """The stale shards (whose token file exists), in order, cut into batches of at most ``size`` shards."""
    todo = [s for s in shards if stale([mtime(p) for p in [*inputs(s), *outputs(s)]], len(inputs(s)))]
    return [todo[i : i + size] for i in range(0, len(todo), size)]


def one_of(names: Iterable[str]) -> str:
    """A regex matching exactly ``names`` (a wildcard constraint), built as a trie: matching costs the length of the
    name, not the number of names (an alternation of 5,000 shard names would be tried one by one). No names: a
    regex that matches nothing."""
    trie: dict[str, Any] = {}
    for name in names:
        node = trie
        for ch in name:
            node = node.setdefault(ch, {})
        node[""] = {}  # the end of a name

    def regex(node: dict[str, Any]) -> str:
        branches = [re.escape(ch) + regex(child) if ch else "" for ch, child in sorted(node.items())]
        if len(branches) == 1:
            return branches[0]
        optional = "" in branches
        alternatives = [b for b in branches if b]
        group = "(?:" + "|".join(alternatives) + ")"
        return group + "?" if optional else group

    return regex(trie) if trie else "(?!)"


#: Snakemake options under which every shard's encode job must be in the DAG, done or not (a forced re-encode,
#: the jobs of a remote executor, listings and deletions of every output).
NEED_EVERY_ENCODE_JOB = (
    "forcerun",
    "forceall",
    "force",
    "touch",
    "summary",
    "detailed_summary",
    "list_changes",
    "delete_all_output",
    "target_jobs",
)


def _snakemake_args(argv: list[str]) -> Any:
    """``argv`` parsed by Snakemake's own parser (profiles included), or None when it is not a Snakemake command line
    (the API, ``python -c``) or does not parse."""
    return _parsed(tuple(argv))


@functools.cache
def _parsed(argv: tuple[str, ...]) -> Any:
    import io

    from snakemake.cli import parse_args

    if not argv or Path(argv[0]).name not in ("snakemake", "__main__.py"):
        return None
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # the profile notice, printed once already
            _, args = parse_args(list(argv[1:]))
    except (SystemExit, Exception):
        return None
    return args


def keep_going(argv: list[str]) -> bool:
    """Whether the Snakemake command line ``argv`` (profiles included: the gpu-cluster and local ones set it) asks
    the run to go on past failed jobs. Snakemake's own setting is not known yet while the Snakefile is parsed."""
    args = _snakemake_args(argv)
    return bool(getattr(args, "keep_going", False))


def every_encode_job_needed(argv: list[str]) -> bool:
    """Whether the Snakemake command line ``argv`` (this process's, profiles included: Snakemake's own parser) sets
    an option of ``NEED_EVERY_ENCODE_JOB``. True too when ``argv`` is not a Snakemake command line (the API, a job):
    the encode rule then matches every shard, as Snakemake alone would."""
    args = _snakemake_args(argv)
    if args is None:
        return True
    return any(getattr(args, name, None) not in (None, False, [], set(), "") for name in NEED_EVERY_ENCODE_JOB)


def job_shards(argv: list[str]) -> list[str] | None:
    """The shards a job's own Snakemake process runs (a cluster job, or a job of a group): the ``shard`` wildcards of
    the target jobs on its command line ``argv`` (``--target-jobs rule:shard=...``, Snakemake's own parser), in order,
    once each. None when a target job has no shard (codec_fit reads the whole corpus), or there is none: plan all."""
    args = _snakemake_args(argv)
    specs = (args.target_jobs if args is not None else None) or []  # TargetSpec(rulename, wildcards_dict) each
    shards: list[str] = []
    for spec in specs:
        shard = dict(spec.wildcards_dict or {}).get("shard")
        if shard is None:
            return None
        if shard not in shards:
            shards.append(shard)
    return shards or None


@contextlib.contextmanager
def failure_note(path: str | Path, shard: str) -> Iterator[None]:
    """Around an encode job: when it raises, its shard and error are noted at ``path`` (the job still fails); when it
    succeeds, an earlier note is removed. The next ``--keep-going`` run plans its final steps without that shard."""
    from neucodec_workflow.record.contract import write_json

    note = Path(path)
    try:
        yield
    except Exception as exc:
        when = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        write_json(note, {"shard": shard, "stage": "encode", "error": f"{type(exc).__name__}: {exc}", "time": when})
        raise
    note.unlink(missing_ok=True)


def failed_encodes(logs: str | Path, done: Callable[[dict[str, Any]], bool]) -> dict[str, dict[str, Any]]:
    """shard -> failure note, for the notes under ``logs`` (one walk) that still hold: not ``done(note)`` (its
    shard's token file exists, a later run made it; or its inputs changed after the note, so the shard is tried
    afresh and the final steps wait for it)."""
    notes = {}
    for folder, _, files in os.walk(logs):
        for name in files:
            if name.endswith(layout.FAILURE_NOTE):
                with contextlib.suppress(OSError, ValueError, KeyError, TypeError):  # a note half-written or not ours
                    note = json.loads(Path(folder, name).read_text())
                    if not done(note):
                        notes[note["shard"]] = note
    return dict(sorted(notes.items()))
