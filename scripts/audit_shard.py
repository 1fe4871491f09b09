"""Snakemake script for rule audit_shard: thin; the logic is neucodec_workflow.workflow.encode_jobs.audit_job (shard.audit),
run by the node's resident process, which keeps the model loaded between jobs (workflow/resident.py)."""

from neucodec_workflow.workflow.job_log import setup_logging

setup_logging(snakemake.log[0])  # noqa: F821 (snakemake is injected)

from neucodec_workflow.storage.uploads import publish  # noqa: E402
from neucodec_workflow.workflow.resident import run_job  # noqa: E402

run_job(
    "audit_shard",
    dict(
        shard=snakemake.wildcards.shard,  # noqa: F821
        tar=snakemake.params.tar,  # noqa: F821 (a path, or an s3:// URL)
        tokens=snakemake.params.tokens,  # noqa: F821
        out=snakemake.params.staging,  # noqa: F821 (then sent to params.audit when that is in S3)
        codec=dict(snakemake.params.codec),  # noqa: F821
        segments=int(snakemake.params.segments),  # noqa: F821
        max_seconds=float(snakemake.params.max_seconds),  # noqa: F821
        threads=snakemake.threads,  # noqa: F821
    ),
    idle_seconds=float(snakemake.params.keep_loaded_seconds),  # noqa: F821
    log_file=snakemake.log[0],  # noqa: F821
)
publish({snakemake.params.audit: snakemake.params.staging}, snakemake.params.receipts)  # noqa: F821
