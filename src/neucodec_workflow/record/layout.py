"""Where the workflow writes what, and the lines its jobs log: the one owner of the paths and line formats that the
rules (``rules/*.smk``), the jobs, ``status``, ``verify`` and ``migrate`` share.

Output paths are relative to ``output``; logs live under the logs root (``logs_root``: the output itself, or
``local_dir`` when the output is in S3, so that no log is uploaded). The token file's own name and its key-value
metadata are the contract's (``record/contract.py``)."""

from __future__ import annotations

import re

# ------------------------------------------------------------------------------------------------- in the output
REPORTS = "shards"  # one report per shard: {output}/shards/{shard}.json
SHARD_TABLE = "shards.parquet"  # summarize's row per shard (dataset/stats.shard_table)
STATS = "stats.json"  # corpus totals (dataset/stats.corpus_stats)
VERIFY = "verify.json"  # snakemake verify's result (commands/verify.py)


def report_path(shard: str) -> str:
    """A shard's report, relative to the output."""
    return f"{REPORTS}/{shard}.json"


# ---------------------------------------------------------------------------------------------------------- logs
def logs_root(output: str, local_dir: str, is_s3: bool) -> str:
    """Where logs and benchmarks go: the output, or ``local_dir`` for an output in S3."""
    return local_dir.rstrip("/") if is_s3 else output.rstrip("/")


def job_log(rule: str, name: str) -> str:
    """A job's log, relative to the logs root: ``logs/{rule}/{name}.log`` (``name``: the shard, or a batch)."""
    return f"logs/{rule}/{name}.log"


def encode_log(shard: str) -> str:
    return job_log("encode", shard)


ENCODE_LOGS = "logs/encode"
FAILURE_NOTE = ".failed.json"  # a failed encode job's note beside its log (workflow/plan.failure_note)


def failure_note(shard: str) -> str:
    """A failed encode job's note (shard, stage, error, time), relative to the logs root."""
    return f"{ENCODE_LOGS}/{shard}{FAILURE_NOTE}"


# ----------------------------------------------------------------------------------------------------- log lines
#: every job's log line: ``2026-11-29 22:13:39,779 INFO neucodec_workflow.progress: progress shard en/a: ...``
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JOB_LOGGER = "neucodec_workflow"  # the jobs' own lines, and their failure line
PROGRESS_LOGGER = "neucodec_workflow.progress"  # the progress lines (record/progress.py)
JOB_FAILED = "job failed: %s"
PROGRESS = "progress %s%s"  # the line, then " (end)" for the last one
FAILED_LINE = re.compile(rf" ERROR {re.escape(JOB_LOGGER)}: job failed: (.*)")
PROGRESS_LINE = re.compile(rf" INFO {re.escape(PROGRESS_LOGGER)}: progress (.*)")
#: Snakemake's own log naming a failed encode job by its log path
SNAKEMAKE_ERROR = re.compile(
    rf"^Error in rule encode_shard:\n(?:    .*\n)*?    log: \S*?{ENCODE_LOGS}/(\S+)\.log", re.M
)
