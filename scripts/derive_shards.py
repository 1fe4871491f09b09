"""Snakemake script for rules derive_shard and derive_batch_N: thin; the logic is neucodec_workflow.workflow.dataset_jobs.derive_job."""

from neucodec_workflow.workflow.job_log import setup_logging

setup_logging(snakemake.log[0])  # noqa: F821 (snakemake is injected)

from neucodec_workflow.workflow.dataset_jobs import derive_job  # noqa: E402

derive_job(
    shards=list(snakemake.params.shards),  # noqa: F821
    tokens=list(snakemake.params.tokens),  # noqa: F821 (paths, or s3:// URLs read one at a time)
    local_tokens=list(snakemake.params.local_tokens),  # noqa: F821 (the local copy, when this run made the token file)
    metadata=list(snakemake.params.metadata),  # noqa: F821
    reports=list(snakemake.params.reports),  # noqa: F821 (paths or s3:// URLs, one per shard)
    report_staging=list(snakemake.params.report_staging),  # noqa: F821 (where a report bound for S3 is written first)
    parts=list(snakemake.params.parts),  # noqa: F821 (paths or s3:// URLs, shard by shard, in the order of part_keys)
    staging=list(snakemake.params.staging),  # noqa: F821 (where a part bound for S3 is written before its upload)
    receipts=snakemake.params.receipts,  # noqa: F821
    digests=snakemake.params.digests,  # noqa: F821 (S3: where the job's report digest goes, for summarize)
    part_keys=[tuple(k) for k in snakemake.params.part_keys],  # noqa: F821 ((format, split) of each part of a shard)
    columns=dict(snakemake.params.columns),  # noqa: F821
    sft=dict(snakemake.params.sft),  # noqa: F821
)
