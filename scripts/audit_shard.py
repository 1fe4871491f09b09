"""Snakemake script for rule audit_shard: thin; the logic is neucodec_workflow.workflow.encode_jobs.audit_job (shard.audit)."""

from neucodec_workflow.workflow.job_log import setup_logging

setup_logging(snakemake.log[0])  # noqa: F821 (snakemake is injected)

from neucodec_workflow.storage.uploads import publish  # noqa: E402
from neucodec_workflow.workflow.encode_jobs import audit_job  # noqa: E402

audit_job(
    shard=snakemake.wildcards.shard,  # noqa: F821
    tar=snakemake.params.tar,  # noqa: F821 (a path, or an s3:// URL)
    tokens=snakemake.params.tokens,  # noqa: F821
    out=snakemake.params.staging,  # noqa: F821 (then sent to params.audit when that is in S3)
    codec=dict(snakemake.params.codec),  # noqa: F821
    segments=int(snakemake.params.segments),  # noqa: F821
    max_seconds=float(snakemake.params.max_seconds),  # noqa: F821
    threads=snakemake.threads,  # noqa: F821
)
publish({snakemake.params.audit: snakemake.params.staging}, snakemake.params.receipts)  # noqa: F821
