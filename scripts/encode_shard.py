"""Snakemake script for rule encode_shard: thin; the logic is neucodec_workflow.workflow.encode_jobs.encode_shard_job."""

from neucodec_workflow.workflow.job_log import setup_logging

setup_logging(snakemake.log[0])  # noqa: F821 (snakemake is injected)

from neucodec_workflow.workflow.encode_jobs import encode_shard_job  # noqa: E402
from neucodec_workflow.workflow.plan import failure_note  # noqa: E402

with failure_note(snakemake.params.failure_note, snakemake.wildcards.shard):  # noqa: F821
    encode_shard_job(
        shard=snakemake.wildcards.shard,  # noqa: F821
        tar=snakemake.params.tar,  # noqa: F821 (a path, or an s3:// URL that is streamed)
        metadata=snakemake.params.metadata,  # noqa: F821
        tokens=snakemake.params.tokens,  # noqa: F821 (a path, or an s3:// URL the job uploads to)
        staging=snakemake.params.staging,  # noqa: F821 (where the file is written first)
        receipts=snakemake.params.receipts,  # noqa: F821
        codec=dict(snakemake.params.codec),  # noqa: F821
        encode=dict(snakemake.params.encode),  # noqa: F821
        columns=dict(snakemake.params.columns),  # noqa: F821
        threads=snakemake.threads,  # noqa: F821
    )
