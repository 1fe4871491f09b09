"""Snakemake script for rule encode_shard: thin; the logic is neucodec_workflow.workflow.encode_jobs.encode_shard_job,
run by the node's resident process, which keeps the model loaded between jobs (workflow/resident.py)."""

from neucodec_workflow.workflow.job_log import setup_logging

setup_logging(snakemake.log[0])  # noqa: F821 (snakemake is injected)

from neucodec_workflow.workflow.plan import failure_note  # noqa: E402
from neucodec_workflow.workflow.resident import run_job  # noqa: E402

with failure_note(snakemake.params.failure_note, snakemake.wildcards.shard):  # noqa: F821
    run_job(
        "encode_shard",
        dict(
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
        ),
        idle_seconds=float(snakemake.params.encode["keep_loaded_seconds"]),  # noqa: F821
        log_file=snakemake.log[0],  # noqa: F821
    )
